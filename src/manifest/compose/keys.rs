//! What each compose key means to rollout: the tables of keys it reads, ignores (with a
//! warning saying why) and refuses (with an error saying why).
//!
//! A key that is in none of these tables is unknown: a typo, reported with a "did you mean". A
//! compose key that rollout comes to honour moves from a rule here to a field of
//! [`super::types`] and a name in [`TOP_KEYS`] or [`SERVICE_KEYS`].

/// What rollout does with a compose key it does not read.
pub(super) enum KeyRule {
    /// Accepted without effect: a warning says why it has none.
    Ignore(&'static str),
    /// Refused: an error says why.
    Reject(&'static str),
    /// A compose key with no counterpart in rollout.
    Unsupported,
}

/// The rule for a top-level key, `None` for an unknown one.
pub(super) fn top_key_rule(key: &str) -> Option<KeyRule> {
    use KeyRule::*;
    Some(match key {
        "version" => Ignore("`version` is obsolete in compose files and is ignored"),
        "networks" => Ignore(
            "`networks` is ignored: rollout gives each environment (and each test version) its own network, on which services reach each other by name",
        ),
        "secrets" => Reject(
            "compose `secrets` are files, which rollout does not read; declare secrets per service under `x-rollout.secrets` with `fromEnv`",
        ),
        "configs" => Reject(
            "compose `configs` are not supported: rollout reads no files besides the manifest; bake the file into the image",
        ),
        "include" => {
            Reject("`include` is not supported: put every service of the environment in this file")
        }
        "models" => Reject("`models` is not supported by rollout"),
        _ => return None,
    })
}

/// The rule for a service key, `None` for an unknown one.
pub(super) fn service_key_rule(key: &str) -> Option<KeyRule> {
    use KeyRule::*;
    Some(match key {
        "restart" => Ignore(
            "`restart` is ignored: rollout supervises the service itself (see `x-rollout.selfHeal`)",
        ),
        "container_name" => Ignore(
            "`container_name` is ignored: rollout names containers after the environment and the service, so that test versions can run beside production",
        ),
        "labels" => Ignore(
            "`labels` is ignored: rollout sets its own labels (`rollout.environment`, `rollout.role`, `rollout.run`)",
        ),
        "networks" => Ignore(
            "`networks` is ignored: rollout gives each environment its own network, on which services reach each other by name",
        ),
        "hostname" => Ignore("`hostname` is ignored: services reach each other by service name"),
        "links" => Ignore(
            "`links` is ignored: services reach each other by name on the environment's network",
        ),
        "deploy" => Ignore(
            "`deploy` is ignored: rollout runs one container per service, without the resource limits, replicas or placement written here",
        ),
        "logging" => Ignore("`logging` is ignored: the engine's default logging driver is used"),
        "stop_grace_period" => Ignore(
            "`stop_grace_period` is ignored: rollout drains traffic before it stops a container (the playbook's `promote: { drain }`)",
        ),
        "entrypoint" => Ignore(
            "`entrypoint` is not supported and is ignored: the image's own entrypoint runs, so the service may start differently than under docker compose",
        ),
        "env_file" => Reject(
            "`env_file` is not supported: rollout reads no files besides the manifest, so that what runs is all in the reviewed file; list the variables under `environment`, and secret ones under `x-rollout.secrets`",
        ),
        "secrets" => Reject(
            "compose `secrets` are files, which rollout does not read; use `x-rollout.secrets: { KEY: { fromEnv: VAR } }`",
        ),
        "configs" => Reject(
            "`configs` is not supported: rollout reads no files besides the manifest; bake the file into the image",
        ),
        "profiles" => Reject(
            "`profiles` is not supported: every service of the file is part of the environment; remove the services that should not run",
        ),
        "extends" => Reject(
            "`extends` is not supported: write the service out in full, or share keys with a YAML anchor (`<<: *base`)",
        ),
        "volumes_from" => Reject(
            "`volumes_from` is not supported: rollout volumes belong to one service; mount a named volume instead",
        ),
        "network_mode" => Reject(
            "`network_mode` is not supported: rollout attaches every service to the environment's own network",
        ),
        "scale" => Reject("`scale` is not supported: rollout runs one container per service"),
        _ if COMPOSE_SERVICE_KEYS.contains(&key) => Unsupported,
        _ => return None,
    })
}

/// Every other service key of the compose specification, so that `user:` is told it is not
/// supported while `imgae:` is told it is a typo.
const COMPOSE_SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "driver_opts",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "post_start",
    "pre_stop",
    "privileged",
    "provider",
    "pull_policy",
    "read_only",
    "runtime",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "working_dir",
];

/// The top-level keys rollout reads or ignores: what the help of an unknown key lists.
pub(super) const TOP_KEYS: &[&str] = &[
    "services",
    "volumes",
    "name",
    "version",
    "networks",
    "x-rollout",
];

/// The service keys rollout reads or ignores: what the help of an unknown key lists.
pub(super) const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "volumes",
    "restart",
    "container_name",
    "labels",
    "networks",
    "hostname",
    "links",
    "deploy",
    "logging",
    "stop_grace_period",
    "x-rollout",
];

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, errors, web};
    use crate::manifest::source::Pos;

    #[test]
    fn unknown_key_is_located_with_a_suggestion() {
        let d = error_at(&web("    image: shop-web:1\n    imgae: shop-web:2\n"), 5, 5);
        assert_eq!(d.message(), "unknown key `imgae` in service `web`");
        assert_eq!(
            d.to_string(),
            "/srv/shop/compose.yaml:5:5: unknown key `imgae` in service `web`\n  |\n5 |     imgae: shop-web:2\n  |     ^\n  = help: did you mean `image`?"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_at_once() {
        let text = "x-rollout: { client: acme }\nservics:\n  web: {}\nfoo: 1\nservices:\n  web: { image: a:1, colour: red }\n";
        let es = errors(text);
        let found: Vec<(Option<Pos>, &str)> = es.iter().map(|d| (d.pos(), d.message())).collect();
        assert_eq!(
            found,
            [
                (
                    Some(Pos::new(2, 1)),
                    "unknown key `servics` at the top level of a compose file"
                ),
                (
                    Some(Pos::new(4, 1)),
                    "unknown key `foo` at the top level of a compose file"
                ),
                (
                    Some(Pos::new(6, 22)),
                    "unknown key `colour` in service `web`"
                ),
            ]
        );
    }

    #[test]
    fn unsupported_compose_keys_say_why() {
        let es = errors(&web(
            "    image: a:1\n    env_file: .env\n    user: \"1000\"\n",
        ));
        assert_eq!(es[0].pos(), Some(Pos::new(5, 5)));
        assert!(
            es[0]
                .message()
                .starts_with("`env_file` is not supported: rollout reads no files"),
            "{}",
            es[0]
        );
        assert_eq!(es[1].pos(), Some(Pos::new(6, 5)));
        assert_eq!(
            es[1].message(),
            "`user` is a docker compose key that rollout does not support"
        );
    }

    #[test]
    fn a_misspelt_x_rollout_is_an_error_other_extensions_are_not() {
        let d = error_at(
            &web("    image: a:1\n    x-rolout: { stateful: true }\n    x-notes: anything\n"),
            5,
            5,
        );
        assert_eq!(d.message(), "unknown key `x-rolout` in service `web`");
    }

    #[test]
    fn unknown_key_inside_x_rollout_is_located() {
        let d = error_at(
            &web("    image: a:1\n    x-rollout:\n      statful: true\n"),
            6,
            7,
        );
        assert!(d.message().starts_with("unknown key `statful`"), "{d}");
    }
}
