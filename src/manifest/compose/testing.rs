//! What the tests of every part of the compose reader share: a host environment, a service
//! `web` to write keys into, and ways to read the errors of a file.

use std::time::Duration;

use super::{Imported, load};
use crate::manifest::env::{Environment, Service};
use crate::manifest::source::{Diagnostic, Diagnostics, Pos, Source};

pub(super) fn host_env(var: &str) -> Option<String> {
    match var {
        "SHOP_SESSION_KEY" => Some("s3ss10n".into()),
        "SHOP_DB_PASSWORD" => Some("pg-pass".into()),
        "FEATURE_FLAGS" => Some("new-checkout".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

pub(super) fn load_str(text: &str) -> Result<Imported, Diagnostics> {
    load(&Source::new("/srv/shop/compose.yaml", text), &host_env)
}

/// A compose file with one service `web` whose keys are `body`, starting on line 4.
pub(super) fn web(body: &str) -> String {
    format!("x-rollout: {{ client: acme }}\nservices:\n  web:\n{body}")
}

pub(super) fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str(text) {
        Ok(i) => panic!("expected errors, got {:?}", i.environment),
        Err(d) => d.0,
    }
}

pub(super) fn one_error(text: &str) -> Diagnostic {
    let mut es = errors(text);
    assert_eq!(es.len(), 1, "{}", Diagnostics(es.clone()));
    es.remove(0)
}

/// The one error of `text`, which must point at `line`:`column`.
pub(super) fn error_at(text: &str, line: u32, column: u32) -> Diagnostic {
    let d = one_error(text);
    assert_eq!(d.pos(), Some(Pos::new(line, column)), "{d}");
    d
}

pub(super) fn service<'a>(env: &'a Environment, name: &str) -> &'a Service {
    env.service(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(super) fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}
