//! A service's `environment`: its variables, and the bare keys whose value compose would take
//! from the host, which become secrets.

use std::collections::BTreeSet;

use super::{Converter, like};
use crate::manifest::compose::types::{EnvValue, Form, Strings};
use crate::manifest::raw::{OrderedMap, RawSecret};
use crate::manifest::yaml::{Spanned, Text};

impl Converter<'_> {
    /// The service's variables, and the bare keys (`KEY` with no value) whose value compose would
    /// take from the host: those become secrets read with `fromEnv` (see [`with_bare_keys`]),
    /// because passwords are what users pass that way, and a secret's value is never shown in a
    /// plan or report.
    pub(super) fn variables(
        &mut self,
        name: &str,
        e: &Spanned<Form<Strings, OrderedMap<Spanned<EnvValue>>>>,
    ) -> (OrderedMap<Spanned<Text>>, Vec<Spanned<String>>) {
        let mut bare: Vec<Spanned<String>> = Vec::new();
        let mut out: Vec<(Spanned<String>, Spanned<Text>)> = Vec::new();
        let mut seen = BTreeSet::new();
        match &e.value {
            Form::Null => {}
            Form::Map(m) => {
                for (k, v) in &m.0 {
                    let value = match &v.value {
                        Some(Text(s)) => self.interp(s, v.referenced),
                        None => {
                            seen.insert(k.value.clone());
                            bare.push(k.clone());
                            None
                        }
                    };
                    if let Some(value) = value {
                        seen.insert(k.value.clone());
                        out.push((k.clone(), like(Text(value), v)));
                    }
                }
            }
            Form::List(items) => {
                for item in items {
                    let (k, value) = match item.value.split_once('=') {
                        Some((k, v)) => (k.to_string(), self.interp(v, item.referenced)),
                        None => (item.value.clone(), None),
                    };
                    if !seen.insert(k.clone()) {
                        self.error(
                            item.referenced,
                            format!("`{k}` is set twice in the environment of service `{name}`"),
                        );
                        continue;
                    }
                    match value {
                        Some(value) => out.push((like(k, item), like(Text(value), item))),
                        None if !item.value.contains('=') => bare.push(like(k, item)),
                        None => {}
                    }
                }
            }
            Form::Scalar(_) => self.error(
                e.referenced,
                format!("`environment` of service `{name}` is a single value; expected a mapping (`KEY: value`) or a list (`- KEY=value`)"),
            ),
        }
        (OrderedMap(out), bare)
    }
}

/// The service's `x-rollout.secrets`, with a secret read with `fromEnv` for each bare key that
/// they do not already name.
pub(super) fn with_bare_keys(
    secrets: Option<OrderedMap<Spanned<RawSecret>>>,
    bare_keys: Vec<Spanned<String>>,
) -> Option<OrderedMap<Spanned<RawSecret>>> {
    if bare_keys.is_empty() {
        return secrets;
    }
    let mut all = secrets.unwrap_or_default();
    for k in bare_keys {
        if all.0.iter().any(|(existing, _)| existing.value == k.value) {
            continue;
        }
        let secret = RawSecret {
            from_env: k.clone(),
        };
        let value = like(secret, &k);
        all.0.push((k, value));
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, errors, load_str, service, web};
    use crate::manifest::source::Pos;

    #[test]
    fn unset_bare_environment_variable_is_located() {
        let es = errors(&web(
            "    image: a:1\n    environment:\n      - FEATURE_FLAGS\n      - MISSING_TOKEN\n",
        ));
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].pos(), Some(Pos::new(7, 9)));
        assert_eq!(
            es[0].message(),
            "secret `MISSING_TOKEN` of service `web` reads environment variable `MISSING_TOKEN`, which is not set"
        );
        let d = error_at(
            &web("    image: a:1\n    environment:\n      OTHER_MISSING:\n"),
            6,
            7,
        );
        assert!(
            d.message()
                .starts_with("secret `OTHER_MISSING` of service `web`"),
            "{d}"
        );
    }

    #[test]
    fn environment_list_and_map() {
        let imported = load_str(&web(
            "    image: a:1\n    environment:\n      - A=1=2\n      - B=\n      - FEATURE_FLAGS\n      - C=${MISSING:-fallback}\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let web_service = service(&imported.environment, "web");
        let env = &web_service.env;
        assert_eq!(env["A"], "1=2");
        assert_eq!(env["B"], "");
        assert_eq!(
            web_service.secrets["FEATURE_FLAGS"].value.expose(),
            "new-checkout"
        );
        assert_eq!(env["C"], "fallback");

        let imported = load_str(&web(
            "    image: a:1\n    environment:\n      VERSION: 1.10\n      HEX: 0x1F\n      ON: on\n      EMPTY: \"\"\n      NUM: 010\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let written: Vec<(&str, &str)> = service(&imported.environment, "web")
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            written,
            [
                ("EMPTY", ""),
                ("HEX", "0x1F"),
                ("NUM", "010"),
                ("ON", "on"),
                ("VERSION", "1.10")
            ]
        );

        let d = error_at(&web("    image: a:1\n    environment: [A=1, A=2]\n"), 5, 24);
        assert_eq!(
            d.message(),
            "`A` is set twice in the environment of service `web`"
        );
    }
}
