//! Secret values: held in a type that never prints, serializes or logs its content.

use std::fmt;

/// The value of a secret. `Debug` and `Display` print a redaction marker; there is no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it: the container's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretSource {
    /// An environment variable of the process running rollout.
    FromEnv(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::FromEnv(var) => write!(f, "${var}"),
        }
    }
}

/// A resolved secret: where it comes from, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub source: SecretSource,
    pub value: SecretValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret {
            source: SecretSource::FromEnv("K".into()),
            value: SecretValue::new("hunter2"),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{}", s.value).contains("hunter2"));
        assert!(!format!("{:#?}", s).contains("hunter2"));
    }
}
