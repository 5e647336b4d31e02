//! Who calls: bearer tokens from rollout.yaml's `daemon.tokens`, their values read from the
//! variables their `fromEnv` names. A token sees and acts only on the environments of its
//! `clients`, with its `may` rights.
//!
//! Values are compared in constant time: both sides are hashed with SHA-256 and the digests
//! compared byte by byte without an early exit, so neither the length nor a matching prefix of
//! a token shows in the time an answer takes; every configured token is compared every time.
//! Token values are never logged, printed, or kept anywhere but in memory.

use sha2::{Digest, Sha256};

use crate::manifest::config::{Right, Token};

/// One usable token: its name (for logs and the history's "who"), the SHA-256 of its value, its
/// clients and rights.
#[derive(Clone)]
pub struct Resolved {
    pub name: String,
    digest: [u8; 32],
    pub clients: Vec<String>,
    pub may: Vec<Right>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("clients", &self.clients)
            .field("may", &self.may)
            .finish_non_exhaustive()
    }
}

impl Resolved {
    pub fn may(&self, right: Right) -> bool {
        self.may.contains(&right)
    }

    pub fn sees(&self, client: &str) -> bool {
        self.clients.iter().any(|c| c == client)
    }
}

#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<Resolved>,
}

impl Tokens {
    /// The tokens whose variable is set and not empty; the others are returned by (name,
    /// variable) so the daemon can say they are disabled.
    pub fn resolve(
        configured: &[Token],
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> (Tokens, Vec<(String, String)>) {
        let mut tokens = Vec::new();
        let mut unset = Vec::new();
        for t in configured {
            match lookup(&t.from_env).filter(|v| !v.is_empty()) {
                Some(value) => tokens.push(Resolved {
                    name: t.name.clone(),
                    digest: digest(value.as_bytes()),
                    clients: t.clients.clone(),
                    may: t.may.clone(),
                }),
                None => unset.push((t.name.clone(), t.from_env.clone())),
            }
        }
        (Tokens { tokens }, unset)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token whose value is `presented`, comparing against every token in constant time.
    pub fn find(&self, presented: &str) -> Option<&Resolved> {
        let d = digest(presented.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(&t.digest, &d) && found.is_none() {
                found = Some(t);
            }
        }
        found
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal slices of the same length, in a time that depends on the length only.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // `black_box` keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, var: &str) -> Token {
        Token {
            name: name.into(),
            from_env: var.into(),
            clients: vec!["acme".into()],
            may: vec![Right::Read],
        }
    }

    #[test]
    fn finds_the_token_whose_value_matches_and_skips_unset_ones() {
        let lookup = |v: &str| (v == "A").then(|| "secret-a".to_string());
        let (tokens, unset) = Tokens::resolve(&[token("a", "A"), token("b", "B")], &lookup);
        assert_eq!(unset, vec![("b".to_string(), "B".to_string())]);
        assert_eq!(tokens.find("secret-a").map(|t| t.name.as_str()), Some("a"));
        assert!(tokens.find("secret-b").is_none());
        assert!(tokens.find("secret-").is_none());
        assert!(tokens.find("").is_none());
        assert!(!format!("{tokens:?}").contains("secret"));
    }

    #[test]
    fn parses_bearer_headers_and_cookies() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(
            cookie("a=1; rollout_token=xyz", "rollout_token"),
            Some("xyz")
        );
        assert_eq!(cookie("a=1", "rollout_token"), None);
    }
}
