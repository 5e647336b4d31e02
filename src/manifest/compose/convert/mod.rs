//! A compose file converted into a [`RawEnvironment`] whose spans point into the compose file.
//!
//! This file holds the [`Converter`] (which collects errors and warnings and interpolates
//! values) and the top level of the file: its keys, `x-rollout` and the environment's name. Each
//! concern of a service has its own file: `service.rs` assembles a service (image, build,
//! command, `x-rollout`), `variables.rs` its `environment`, `ports.rs` its `ports` and `expose`,
//! `health.rs` its `healthcheck`, `volumes.rs` its `volumes` and the top-level declarations, and
//! `depends_on.rs` its `depends_on`.

mod depends_on;
mod health;
mod ports;
mod service;
mod variables;
mod volumes;

use serde::Deserialize;
use serde::de;
use serde_saphyr::Location;

use super::interpolate::interpolate;
use super::keys::{self, KeyRule};
use super::types::{ComposeFile, XRollout};
use crate::manifest::env::{API_VERSION, Checker};
use crate::manifest::raw::{OrderedMap, RawEnvironment};
use crate::manifest::source::{Diagnostic, Pos, Source};
use crate::manifest::suggest;
use crate::manifest::yaml::Spanned;

/// What conversion made of a compose file: the environment for [`crate::manifest::env::resolve`],
/// and the problems it found on the way.
pub(super) struct Converted {
    pub(super) raw: RawEnvironment,
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
}

/// Converts a parsed compose file. `lookup` reads the host environment for interpolation.
pub(super) fn convert(
    src: &Source,
    lookup: &dyn Fn(&str) -> Option<String>,
    file: ComposeFile,
) -> Converted {
    let mut cv = Converter {
        check: Checker::new(src),
        lookup,
        warnings: Vec::new(),
    };
    let raw = cv.environment(file);
    Converted {
        raw,
        errors: cv.check.errors,
        warnings: cv.warnings,
    }
}

struct Converter<'a> {
    /// Collects the errors, as resolving a native manifest does.
    check: Checker<'a>,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<Diagnostic>,
}

/// A value carrying the position of another, so that `resolve` points into the compose file.
fn like<T, U>(value: T, at: &Spanned<U>) -> Spanned<T> {
    Spanned::new(value, at.referenced, at.defined)
}

fn located<T>(value: T, loc: Location) -> Spanned<T> {
    Spanned::new(value, loc, loc)
}

/// `Location` has no public constructor; its `Deserialize` impl is the supported way to make one.
fn location(line: u32, column: u32) -> Location {
    let fields = [("line", line), ("column", column)];
    let d = de::value::MapDeserializer::<_, de::value::Error>::new(fields.into_iter());
    Location::deserialize(d).unwrap_or(Location::UNKNOWN)
}

impl Converter<'_> {
    fn error(&mut self, at: Location, msg: impl Into<String>) {
        self.check.error(Pos::from(at), msg);
    }

    fn error_help(&mut self, at: Location, msg: impl Into<String>, help: impl Into<String>) {
        self.check.error_help(Pos::from(at), msg, help);
    }

    fn warn(&mut self, at: Location, msg: impl Into<String>) {
        self.warnings
            .push(self.check.src.error_at(Pos::from(at), msg));
    }

    /// Compose interpolates `$` in values before reading them; so do we.
    fn interp(&mut self, text: &str, at: Location) -> Option<String> {
        match interpolate(text, self.lookup, 0) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error_help(at, e.message, e.help);
                None
            }
        }
    }

    fn interp_spanned(&mut self, s: &Spanned<String>) -> Option<Spanned<String>> {
        self.interp(&s.value, s.referenced).map(|v| like(v, s))
    }

    fn environment(&mut self, file: ComposeFile) -> RawEnvironment {
        let ComposeFile {
            top,
            name,
            services,
            volumes,
            x_rollout,
            other_keys,
        } = file;
        let top = top.unwrap_or_else(|| location(1, 1));

        self.other_keys(
            &other_keys,
            keys::top_key_rule,
            keys::TOP_KEYS,
            "at the top level of a compose file",
        );

        let (x_at, x) = match x_rollout {
            Some((loc, x)) => (loc, Some(x.value)),
            None => (top, None),
        };
        let client_help = if x.is_some() {
            "add `client: <client name>` under `x-rollout`"
        } else {
            "add at the top level:\n      x-rollout:\n        client: <client name>"
        };
        let XRollout {
            name: x_name,
            client,
            self_heal,
            requires,
        } = x.unwrap_or_default();
        let client = match client {
            Some(c) => c,
            None => {
                self.error_help(
                    x_at,
                    "missing `x-rollout.client`: rollout needs to know which client this environment belongs to",
                    client_help,
                );
                // Keeps resolving, so the other problems of the file are reported together.
                located("unknown".to_string(), x_at)
            }
        };
        let env_name = match x_name.or(name) {
            Some(n) => self.interp_spanned(&n).unwrap_or(n),
            None => match directory_name(self.check.src.path()) {
                Some(n) => located(n, top),
                None => {
                    self.error_help(
                        top,
                        "cannot name the environment after the file's directory",
                        "add `name: <environment>` or `x-rollout.name`",
                    );
                    located("unknown".to_string(), top)
                }
            },
        };

        let mut table = self.volume_table(volumes.unwrap_or_default());
        let services = services.unwrap_or_else(|| located(OrderedMap::default(), top));
        let mut raw_services = Vec::new();
        for (key, svc) in services.value.0 {
            let (referenced, defined) = (svc.referenced, svc.defined);
            let raw = self.service(&key, svc.value, &mut table);
            raw_services.push((key, Spanned::new(raw, referenced, defined)));
        }
        let services = Spanned::new(
            OrderedMap(raw_services),
            services.referenced,
            services.defined,
        );

        RawEnvironment {
            api_version: located(API_VERSION.to_string(), top),
            kind: located("Environment".to_string(), top),
            name: env_name,
            client,
            self_heal,
            requires,
            services,
        }
    }

    /// The keys of a mapping that no field reads: each is ignored with a warning, refused, or
    /// unknown, by the rules of [`keys`]. `place` says where they are, for messages.
    fn other_keys(
        &mut self,
        other_keys: &[Spanned<String>],
        rule: fn(&str) -> Option<KeyRule>,
        known: &[&str],
        place: &str,
    ) {
        for key in other_keys {
            match rule(&key.value) {
                Some(KeyRule::Ignore(why)) => self.warn(key.referenced, why),
                Some(KeyRule::Reject(why)) => self.error(key.referenced, why),
                Some(KeyRule::Unsupported) => self.error_help(
                    key.referenced,
                    format!("`{}` is a docker compose key that rollout does not support", key.value),
                    "ignoring it would make the service run differently than under compose; remove it, or run this service outside rollout",
                ),
                None => self.unknown_key(key, known, place),
            }
        }
    }

    fn unknown_key(&mut self, key: &Spanned<String>, known: &[&str], place: &str) {
        let k = &key.value;
        if k.starts_with("x-") && k != "x-rollout" {
            // Extensions belong to other tools, unless it is our own key misspelt.
            if suggest::closest(k, ["x-rollout"]).is_some() {
                self.error_help(
                    key.referenced,
                    format!("unknown key `{k}` {place}"),
                    "did you mean `x-rollout`?",
                );
            }
            return;
        }
        let help = match suggest::closest(k, known.iter().copied()) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("rollout reads: {}", suggest::listing(known.iter().copied())),
        };
        self.error_help(key.referenced, format!("unknown key `{k}` {place}"), help);
    }
}

/// The environment name compose itself would use: the file's directory.
fn directory_name(path: &std::path::Path) -> Option<String> {
    let dir = match path.parent()? {
        p if p.as_os_str().is_empty() => std::env::current_dir().ok()?,
        p => p.to_path_buf(),
    };
    let name = match dir.file_name() {
        Some(n) => n.to_os_string(),
        // `.` or `..`: only the file system knows what they name.
        None => std::fs::canonicalize(&dir)
            .ok()?
            .file_name()?
            .to_os_string(),
    };
    sanitize(&name.to_string_lossy())
}

/// Lowercases and turns anything but letters and digits into single `-`, within 40 characters.
fn sanitize(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(40);
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::compose::load;
    use crate::manifest::compose::testing::{error_at, host_env};

    #[test]
    fn sanitized_names() {
        assert_eq!(sanitize("Acme_Shop").as_deref(), Some("acme-shop"));
        assert_eq!(sanitize("--x--y--").as_deref(), Some("x-y"));
        assert_eq!(sanitize("___"), None);
        assert_eq!(sanitize(&"a".repeat(60)).map(|s| s.len()), Some(40));
    }

    #[test]
    fn environment_name_comes_from_x_rollout_then_name_then_directory() {
        let body = "services:\n  web: { image: a:1 }\n";
        let named = |text: &str, path: &str| {
            load(&Source::new(path, text), &host_env)
                .unwrap_or_else(|e| panic!("{e}"))
                .environment
                .name
        };
        let x = format!("name: shop\nx-rollout: {{ client: acme, name: shop-eu }}\n{body}");
        assert_eq!(named(&x, "/srv/a/compose.yaml"), "shop-eu");
        let n = format!("name: shop\nx-rollout: {{ client: acme }}\n{body}");
        assert_eq!(named(&n, "/srv/a/compose.yaml"), "shop");
        let d = format!("x-rollout: {{ client: acme }}\n{body}");
        assert_eq!(named(&d, "/srv/Acme_Shop.v2/compose.yaml"), "acme-shop-v2");
        let here = std::env::current_dir().unwrap();
        let expected = sanitize(&here.file_name().unwrap().to_string_lossy()).unwrap();
        assert_eq!(named(&d, "compose.yaml"), expected);
        assert_eq!(named(&d, "./compose.yaml"), expected);
    }

    #[test]
    fn missing_client_is_reported_at_the_top_of_the_file() {
        let d = error_at(
            "# shop\nname: shop\nservices:\n  web: { image: a:1 }\n",
            2,
            1,
        );
        assert_eq!(
            d.message(),
            "missing `x-rollout.client`: rollout needs to know which client this environment belongs to"
        );
        let d = error_at(
            "services:\n  web: { image: a:1 }\nx-rollout: { selfHeal: true }\n",
            3,
            1,
        );
        assert!(d.message().starts_with("missing `x-rollout.client`"));
    }
}
