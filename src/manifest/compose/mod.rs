//! docker compose files read as an environment (`-m compose.yaml`).
//!
//! This module owns the compose dialect and nothing else: [`load`] parses the file into
//! compose-shaped types that keep every position, converts them into a raw environment whose
//! spans point into the compose file, and hands that to [`env::resolve`]. A compose file is
//! therefore checked by exactly the rules of a native manifest (names, ports, cycles, secrets),
//! and every error names a line and column of the file the user wrote.
//!
//! # Read
//! - top level: `services`, `volumes` (declarations; `external` is fine), `name`, and
//!   `x-rollout: { client, name, selfHeal }`. `client` is required. The environment is named by
//!   `x-rollout.name`, else `name`, else the file's directory (lowercased, other characters
//!   turned into `-`).
//! - per service:
//!   - `image` (required: rollout runs images, it does not build them);
//!   - `command` (a list, or a string split like a shell would);
//!   - `environment` (a map or `KEY=VALUE` list; a bare `KEY` or `KEY:` becomes a secret read from the
//!     host environment and is an error when unset);
//!   - `ports` (`"8080"`, `"18080:8080"`, `"127.0.0.1:18080:8080"`, `"18080:8080/tcp"`, or long
//!     syntax `{target, published, host_ip, protocol, app_protocol, mode, name}`): the published
//!     port becomes `public`, and a port without one (compose would pick a random host port) is
//!     not public. `app_protocol: http` (or none) proxies HTTP; any other value plain TCP;
//!   - `expose` (container ports that are not public);
//!   - `depends_on` (a list, or a map whose `condition` is kept only as ordering);
//!   - `healthcheck` (`test` as `[CMD, ...]`, `[CMD-SHELL, "..."]`, a string, or `NONE`;
//!     `disable`; `interval`, `timeout`, `start_period`, `retries`). Timings left out take
//!     rollout's defaults, not compose's 30 s;
//!   - `volumes` (`name:/path[:ro]` or `{type: volume, source, target}`) of named volumes
//!     declared at the top level; their names are lowercased with other characters turned into
//!     `-` (`db_data` becomes `db-data`), since rollout builds docker volume names from them.
//! - `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR:+alt}`, `$VAR` and
//!   `$$` are interpolated, as compose does, in the strings above (not inside `x-rollout`). A
//!   variable that is unset and has no default is an error, not an empty string.
//! - `x-rollout` per service carries what compose cannot say, with the keys of a native
//!   manifest: `stateful`, `managedBy: { thirdParty }`, `secrets: { KEY: { fromEnv: VAR } }` and
//!   `health: { http | tcp | exec, interval, timeout, startPeriod, retries }`, which replaces
//!   `healthcheck`.
//!
//! # Ignored, with a warning
//! `version` and `networks` (each environment gets its own network); per service `restart`,
//! `container_name`, `labels`, `networks`, `hostname`, `links`, `deploy`, `logging`,
//! `stop_grace_period`, `entrypoint` (the image's own entrypoint runs), `build` when `image` is
//! also given, a port's `host_ip` and `mode`, `:ro`, and the `depends_on` fields `restart` and
//! `required: false`. Other `x-` keys are compose extensions (often YAML anchors) and are skipped
//! silently.
//!
//! # Rejected
//! Any other key, so that a typo is never silently ignored; compose keys rollout cannot honour
//! (`env_file`, `secrets`, `configs`, `profiles`, `extends`, `user`, ...) say why. Also bind
//! mounts, anonymous and undeclared volumes, a volume shared by two services (rollout volumes
//! belong to one service), port ranges, udp, and `build` without `image`.
//!
//! # Where each part lives
//! - `types.rs`: the file as written, position by position; a key rollout reads is a field there.
//! - `keys.rs`: the keys rollout ignores or refuses, with the reason each message gives.
//! - `convert/`: the conversion into a raw environment, one file per concern of a service
//!   (`service.rs`, `variables.rs`, `ports.rs`, `health.rs`, `volumes.rs`, `depends_on.rs`).
//! - `interpolate.rs`: `$` interpolation, and where its variables come from.
//! - `shell.rs`: a `command` string split into words.
//!
//! A compose key that rollout comes to read gets a field in `types`, leaves its rule in `keys`,
//! and is converted in the `convert` file of its concern (a new one for a new concern).

mod convert;
mod interpolate;
mod keys;
mod shell;
#[cfg(test)]
mod testing;
mod types;

use self::convert::Converted;
use self::types::ComposeFile;
use super::env::{self, Environment};
use super::source::{Diagnostic, Diagnostics, Source};
use super::yaml;

/// A compose file read as an environment, with what rollout chose to ignore in it.
#[derive(Debug)]
pub struct Imported {
    pub environment: Environment,
    /// Keys that were accepted but have no effect, each located, for the user to review.
    pub warnings: Vec<Diagnostic>,
}

/// Reads a compose file as an environment. `lookup` reads the host environment: `${VAR}`
/// interpolation, bare `environment` keys and `x-rollout` secrets.
pub fn load(
    src: &Source,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Imported, Diagnostics> {
    let file: ComposeFile = yaml::parse(src, "a docker compose file with `services`")?;
    let Converted {
        raw,
        mut errors,
        mut warnings,
    } = convert::convert(src, lookup, file);
    let resolved = env::resolve(src, raw, lookup);
    sort_by_pos(&mut warnings);
    match resolved {
        Ok(environment) if errors.is_empty() => Ok(Imported {
            environment,
            warnings,
        }),
        Ok(_) => {
            sort_by_pos(&mut errors);
            Err(Diagnostics(errors))
        }
        Err(more) => {
            errors.extend(more.0);
            sort_by_pos(&mut errors);
            Err(Diagnostics(errors))
        }
    }
}

/// Conversion and resolution find problems in two passes; the user reads them top to bottom.
fn sort_by_pos(ds: &mut [Diagnostic]) {
    ds.sort_by_key(|d| d.pos());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::{errors, host_env, load_str, secs, service, strings};
    use super::*;
    use crate::manifest::env::{Health, Port, Probe, Protocol, Volume};
    use crate::manifest::secret::SecretSource;
    use crate::manifest::source::Pos;

    #[test]
    fn shop_fixture_loads_into_the_expected_environment() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/compose/shop.compose.yaml"
        );
        let src = Source::read(std::path::Path::new(path)).unwrap();
        let Imported {
            environment: env,
            warnings,
        } = load(&src, &host_env).unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(env.name, "shop");
        assert_eq!(env.client, "acme");
        assert!(env.self_heal);
        let order: Vec<&str> = env.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["db", "cache", "api", "web", "worker"]);

        let web = service(&env, "web");
        assert_eq!(web.image, "shop-web:2.4.0");
        assert_eq!(web.command, None);
        let env_keys: Vec<(&str, &str)> = web
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env_keys,
            [
                ("API_URL", "http://api:9000"),
                ("LOG_LEVEL", "info"),
                ("TZ", "Europe/Paris"),
                ("WORKERS", "4")
            ]
        );
        assert_eq!(
            web.ports,
            [
                Port {
                    name: "port-8080".into(),
                    container: 8080,
                    public: Some(18080),
                    protocol: Protocol::Http
                },
                Port {
                    name: "https".into(),
                    container: 8443,
                    public: Some(18443),
                    protocol: Protocol::Tcp
                },
            ]
        );
        assert_eq!(web.depends_on, ["api"]);
        assert_eq!(
            web.health,
            Some(Health {
                probe: Probe::Exec {
                    command: strings(&["wget", "-qO-", "http://localhost:8080/healthz"])
                },
                interval: secs(10),
                timeout: secs(2),
                start_period: secs(90),
                retries: 5,
            })
        );
        let session = &web.secrets["SESSION_KEY"];
        assert_eq!(
            session.source,
            SecretSource::FromEnv("SHOP_SESSION_KEY".into())
        );
        assert_eq!(session.value.expose(), "s3ss10n");
        assert!(!web.stateful);
        assert_eq!(web.managed_by, None);

        let api = service(&env, "api");
        assert_eq!(
            api.command,
            Some(strings(&[
                "/app/api",
                "--listen",
                "0.0.0.0:9000",
                "--db",
                "postgres://shop@db/shop"
            ]))
        );
        assert_eq!(api.env["DATABASE_HOST"], "db");
        // A bare key takes the host's value, as a secret: it may well be a password.
        assert!(!api.env.contains_key("FEATURE_FLAGS"));
        assert_eq!(api.secrets["FEATURE_FLAGS"].value.expose(), "new-checkout");
        assert_eq!(
            api.ports,
            [Port {
                name: "port-9000".into(),
                container: 9000,
                public: None,
                protocol: Protocol::Http
            }]
        );
        assert_eq!(api.depends_on, ["db", "cache"]);
        assert_eq!(
            api.health,
            Some(Health {
                probe: Probe::Http {
                    port: 9000,
                    path: "/ready".into()
                },
                interval: Duration::from_millis(500),
                timeout: env::DEFAULT_TIMEOUT,
                start_period: env::DEFAULT_START_PERIOD,
                retries: env::DEFAULT_RETRIES,
            })
        );

        let worker = service(&env, "worker");
        assert_eq!(
            worker.command,
            Some(strings(&["bundle", "exec", "sidekiq", "-c", "5"]))
        );
        assert_eq!(worker.depends_on, ["db", "cache"]);
        assert_eq!(worker.health, None);
        assert!(worker.ports.is_empty());

        let db = service(&env, "db");
        assert!(db.stateful);
        assert_eq!(db.managed_by.as_deref(), Some("hosting-co"));
        assert_eq!(db.secrets["POSTGRES_PASSWORD"].value.expose(), "pg-pass");
        assert!(!db.env.contains_key("POSTGRES_PASSWORD"));
        assert_eq!(
            db.volumes,
            [Volume {
                name: "db-data".into(),
                path: "/var/lib/postgresql/data".into()
            }]
        );
        assert_eq!(db.ports[0].container, 5432);
        assert_eq!(
            db.health,
            Some(Health {
                probe: Probe::Exec {
                    command: strings(&["/bin/sh", "-c", "pg_isready -U ${POSTGRES_USER} -d shop"])
                },
                interval: secs(5),
                timeout: secs(3),
                start_period: env::DEFAULT_START_PERIOD,
                retries: 10,
            })
        );

        let cache = service(&env, "cache");
        assert_eq!(
            cache.command,
            Some(strings(&[
                "redis-server",
                "--appendonly",
                "yes",
                "--save",
                ""
            ]))
        );
        assert_eq!(
            cache.volumes,
            [Volume {
                name: "cache-data".into(),
                path: "/data".into()
            }]
        );
        assert_eq!(
            cache.health.as_ref().map(|h| &h.probe),
            Some(&Probe::Exec {
                command: strings(&["/bin/sh", "-c", "redis-cli ping"])
            })
        );

        let warned: Vec<(Option<Pos>, &str)> =
            warnings.iter().map(|w| (w.pos(), w.message())).collect();
        let at = |l, c| Some(Pos::new(l, c));
        assert_eq!(
            warned.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [
                at(3, 1),
                at(16, 5),
                at(53, 5),
                at(87, 5),
                at(103, 5),
                at(111, 1)
            ],
            "{warned:#?}"
        );
        assert!(warned[0].1.contains("`version` is obsolete"));
        assert!(warned[1].1.starts_with("`restart` is ignored"));
        assert_eq!(
            warned[2].1,
            "`healthcheck` of service `api` is replaced by its `x-rollout.health`"
        );
        assert!(warned[3].1.starts_with("`stop_grace_period` is ignored"));
        assert!(warned[4].1.starts_with("`logging` is ignored"));
        assert!(warned[5].1.starts_with("`networks` is ignored"));
        for w in &warnings {
            assert_eq!(w.path(), src.path());
        }
    }

    #[test]
    fn readme_example_loads() {
        let text = "x-rollout: { name: shop, client: acme }\nservices:\n  db:\n    image: postgres-local:15\n    volumes: [ \"data:/var/lib/postgresql/data\" ]\n    x-rollout: { stateful: true, managedBy: { thirdParty: hosting-co } }\nvolumes: { data: {} }\n";
        let imported = load_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(imported.warnings.is_empty());
        let db = service(&imported.environment, "db");
        assert!(db.stateful);
        assert_eq!(db.managed_by.as_deref(), Some("hosting-co"));
        assert_eq!(db.volumes[0].name, "data");
    }

    #[test]
    fn several_errors_are_reported_in_file_order() {
        let text = "services:\n  web:\n    build: .\n    ports: [\"53:53/udp\"]\n  api:\n    image: a:1\n    env_file: .env\n";
        let es = errors(text);
        let at: Vec<Option<Pos>> = es.iter().map(|d| d.pos()).collect();
        assert_eq!(
            at,
            [
                Some(Pos::new(1, 1)),
                Some(Pos::new(3, 5)),
                Some(Pos::new(4, 13)),
                Some(Pos::new(7, 5))
            ]
        );
    }

    #[test]
    fn odd_inputs_are_errors_not_panics() {
        for text in [
            "services:\n",
            "services: []\n",
            "- a\n",
            "x-rollout: { client: acme }\nservices:\n  web:\n",
            "x-rollout: { client: acme }\nservices:\n  web: 3\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, ports: [{}] }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, volumes: [\"\"] }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, command: \"'\" }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: \"${\" }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: \"$\" }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, ports: [\"[::1\"] }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, depends_on: x }\n",
            "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, healthcheck: { test: [] } }\n",
        ] {
            assert!(load_str(text).is_err(), "{text}");
        }
        let deep = format!(
            "x-rollout: {{ client: acme }}\nservices:\n  web: {{ image: \"{}x{}\" }}\n",
            "${A:-".repeat(5000),
            "}".repeat(5000)
        );
        assert!(load_str(&deep).is_err());
    }
}
