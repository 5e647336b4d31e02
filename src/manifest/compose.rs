//! docker compose files read as an environment (`-m compose.yaml`).
//!
//! This module owns the compose dialect and nothing else: [`load`] parses the file into
//! compose-shaped types that keep every position, converts them into a [`RawEnvironment`] whose
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Location;

use super::env::{self, API_VERSION, Environment};
use super::raw::{
    OrderedMap, RawEnvironment, RawHealth, RawManagedBy, RawPort, RawSecret, RawService, RawVolume,
};
use super::source::{Diagnostic, Diagnostics, Pos, Source};
use super::yaml::{self, Spanned, Text};

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
    let mut cv = Converter {
        src,
        lookup,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let raw = cv.environment(file);
    let Converter {
        mut errors,
        mut warnings,
        ..
    } = cv;
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

// ---------------------------------------------------------------- compose-shaped types

/// A compose value that may be written as a scalar, a list or a mapping.
///
/// Deserialized by hand rather than as an untagged enum: untagged enums buffer the value and
/// lose the positions of everything inside it.
#[derive(Debug)]
enum Form<L, M> {
    Null,
    /// Numbers arrive as values (`1.10` as `1.1`): where the written form matters, read `Text`.
    Scalar(String),
    List(L),
    Map(Box<M>),
}

impl<L, M> Form<L, M> {
    fn shape(&self) -> &'static str {
        match self {
            Form::Null => "nothing",
            Form::Scalar(_) => "a single value",
            Form::List(_) => "a list",
            Form::Map(_) => "a mapping",
        }
    }
}

/// An environment value as written (`1.10` stays `1.10`), or nothing: `KEY:` reads the host's.
type EnvValue = Option<Text>;

impl<'de, L: Deserialize<'de>, M: Deserialize<'de>> Deserialize<'de> for Form<L, M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<L, M>(PhantomData<(L, M)>);
        impl<'de, L: Deserialize<'de>, M: Deserialize<'de>> Visitor<'de> for V<L, M> {
            type Value = Form<L, M>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value, a list or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Form::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Form::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
                L::deserialize(de::value::SeqAccessDeserializer::new(s)).map(Form::List)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                M::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(|m| Form::Map(Box::new(m)))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

type Strings = Vec<Spanned<String>>;

/// The top level. Keys are read by hand so that unknown ones can all be reported, each at its
/// own position, and `x-` extensions skipped.
#[derive(Debug, Default)]
struct ComposeFile {
    /// The first key: "the top of the file" for errors about something missing.
    top: Option<Location>,
    name: Option<Spanned<String>>,
    services: Option<Spanned<OrderedMap<Spanned<ComposeService>>>>,
    volumes: Option<OrderedMap<Spanned<Form<IgnoredAny, VolumeDecl>>>>,
    x_rollout: Option<(Location, Spanned<XRollout>)>,
    other_keys: Strings,
}

#[derive(Debug, Default)]
struct ComposeService {
    image: Option<Spanned<String>>,
    command: Option<Spanned<Form<Strings, IgnoredAny>>>,
    environment: Option<Spanned<Form<Strings, OrderedMap<Spanned<EnvValue>>>>>,
    ports: Option<Vec<Spanned<Form<IgnoredAny, LongPort>>>>,
    expose: Option<Strings>,
    depends_on: Option<Spanned<DependsOn>>,
    /// With the position of its key, which messages about the whole healthcheck point at.
    healthcheck: Option<(Location, Healthcheck)>,
    volumes: Option<Vec<Spanned<Form<IgnoredAny, LongVolume>>>>,
    x_rollout: Option<Spanned<XRolloutService>>,
    other_keys: Strings,
}

type DependsOn = Form<Strings, OrderedMap<Spanned<Form<IgnoredAny, DependsOnCondition>>>>;

macro_rules! keyed_visitor {
    ($ty:ident, $what:literal, |$key:ident, $map:ident, $out:ident| $body:block) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    // `web:` with nothing under it is an empty service: say what it lacks.
                    fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<$ty, A::Error> {
                        let mut $out = $ty::default();
                        while let Some($key) = $map.next_key::<Spanned<String>>()? {
                            $body
                        }
                        Ok($out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

keyed_visitor!(
    ComposeFile,
    "a compose file (`services:` ...)",
    |key, map, out| {
        out.top.get_or_insert(key.referenced);
        match key.value.as_str() {
            "name" => out.name = Some(map.next_value()?),
            "services" => out.services = Some(map.next_value()?),
            "volumes" => out.volumes = Some(map.next_value()?),
            "x-rollout" => out.x_rollout = Some((key.referenced, map.next_value()?)),
            _ => {
                map.next_value::<IgnoredAny>()?;
                out.other_keys.push(key);
            }
        }
    }
);

keyed_visitor!(
    ComposeService,
    "a service (`image:` ...)",
    |key, map, out| {
        match key.value.as_str() {
            "image" => out.image = Some(map.next_value()?),
            "command" => out.command = Some(map.next_value()?),
            "environment" => out.environment = Some(map.next_value()?),
            "ports" => out.ports = map.next_value()?,
            "expose" => out.expose = map.next_value()?,
            "depends_on" => out.depends_on = Some(map.next_value()?),
            "healthcheck" => out.healthcheck = Some((key.referenced, map.next_value()?)),
            "volumes" => out.volumes = map.next_value()?,
            "x-rollout" => out.x_rollout = Some(map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
                out.other_keys.push(key);
            }
        }
    }
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPort {
    target: Spanned<String>,
    #[serde(default)]
    published: Option<Spanned<String>>,
    #[serde(default)]
    host_ip: Option<Spanned<String>>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    app_protocol: Option<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongVolume {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    source: Option<Spanned<String>>,
    target: Spanned<String>,
    #[serde(default)]
    read_only: Option<Spanned<bool>>,
    #[serde(default)]
    volume: Option<Spanned<IgnoredAny>>,
    // Accepted so that a bind or tmpfs mount is told why it is refused, not that a key is unknown.
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be accepted")]
    bind: Option<IgnoredAny>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be accepted")]
    tmpfs: Option<IgnoredAny>,
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be accepted")]
    image: Option<IgnoredAny>,
    #[serde(default)]
    consistency: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DependsOnCondition {
    #[serde(default)]
    condition: Option<Spanned<String>>,
    #[serde(default)]
    restart: Option<Spanned<bool>>,
    #[serde(default)]
    required: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    #[serde(default)]
    test: Option<Spanned<Form<Strings, IgnoredAny>>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    start_period: Option<Spanned<String>>,
    #[serde(default)]
    start_interval: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<i64>>,
    #[serde(default)]
    disable: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeDecl {
    // Where the data of an external volume lives is the engine's business; rollout copies it alike.
    #[serde(default)]
    #[expect(dead_code, reason = "read only to be accepted")]
    external: Option<IgnoredAny>,
    #[serde(default)]
    driver: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    driver_opts: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    labels: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    name: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct XRollout {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    client: Option<Spanned<String>>,
    #[serde(default)]
    self_heal: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct XRolloutService {
    #[serde(default)]
    stateful: Option<bool>,
    #[serde(default)]
    managed_by: Option<Spanned<RawManagedBy>>,
    #[serde(default)]
    secrets: Option<OrderedMap<Spanned<RawSecret>>>,
    #[serde(default)]
    health: Option<Spanned<RawHealth>>,
}

// ---------------------------------------------------------------- what each key means here

/// Compose keys rollout accepts without effect, and why they have none.
enum KeyRule {
    Ignore(&'static str),
    Reject(&'static str),
    /// A compose key with no counterpart in rollout.
    Unsupported,
}

fn top_key_rule(key: &str) -> Option<KeyRule> {
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

fn service_key_rule(key: &str) -> Option<KeyRule> {
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

const TOP_KEYS: &[&str] = &[
    "services",
    "volumes",
    "name",
    "version",
    "networks",
    "x-rollout",
];

const SERVICE_KEYS: &[&str] = &[
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

// ---------------------------------------------------------------- conversion

struct Converter<'a> {
    src: &'a Source,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<Diagnostic>,
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

/// The compose volumes of the file: their rollout names, and which service mounts each.
#[derive(Default)]
struct VolumeTable {
    declared: BTreeMap<String, String>,
    used_by: BTreeMap<String, String>,
}

impl Converter<'_> {
    fn error(&mut self, at: Location, msg: impl Into<String>) {
        self.errors.push(self.src.error_at(Pos::from(at), msg));
    }

    fn error_help(&mut self, at: Location, msg: impl Into<String>, help: impl Into<String>) {
        self.errors
            .push(self.src.error_at(Pos::from(at), msg).with_help(help));
    }

    fn warn(&mut self, at: Location, msg: impl Into<String>) {
        self.warnings.push(self.src.error_at(Pos::from(at), msg));
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

        for key in &other_keys {
            match top_key_rule(&key.value) {
                Some(KeyRule::Ignore(why)) => self.warn(key.referenced, why),
                Some(KeyRule::Reject(why)) => self.error(key.referenced, why),
                Some(KeyRule::Unsupported) | None => {
                    self.unknown_key(key, TOP_KEYS, "at the top level of a compose file")
                }
            }
        }

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
        } = x.unwrap_or(XRollout {
            name: None,
            client: None,
            self_heal: None,
        });
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
            None => match directory_name(self.src.path()) {
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
            services,
        }
    }

    fn unknown_key(&mut self, key: &Spanned<String>, known: &[&str], place: &str) {
        let k = &key.value;
        if k.starts_with("x-") && k != "x-rollout" {
            // Extensions belong to other tools, unless it is our own key misspelt.
            if edit_distance(k, "x-rollout") <= 2 {
                self.error_help(
                    key.referenced,
                    format!("unknown key `{k}` {place}"),
                    "did you mean `x-rollout`?",
                );
            }
            return;
        }
        let help = match known.iter().find(|c| edit_distance(k, c) <= 2) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("rollout reads: {}", known.join(", ")),
        };
        self.error_help(key.referenced, format!("unknown key `{k}` {place}"), help);
    }

    fn volume_table(
        &mut self,
        decls: OrderedMap<Spanned<Form<IgnoredAny, VolumeDecl>>>,
    ) -> VolumeTable {
        let mut table = VolumeTable::default();
        let mut taken: BTreeMap<String, String> = BTreeMap::new();
        for (key, decl) in &decls.0 {
            match &decl.value {
                Form::Null => {}
                Form::Map(d) => {
                    let VolumeDecl {
                        external: _,
                        driver,
                        driver_opts,
                        labels,
                        name,
                    } = d.as_ref();
                    if let Some(n) = name {
                        self.warn(
                            n.referenced,
                            format!("the volume's `name` is ignored: rollout names the docker volume after the environment, the service and `{}`", key.value),
                        );
                    }
                    for (opt, what) in [
                        (driver, "driver"),
                        (driver_opts, "driver_opts"),
                        (labels, "labels"),
                    ] {
                        if let Some(o) = opt {
                            self.warn(
                                o.referenced,
                                format!("the volume's `{what}` is ignored: rollout creates volumes with the engine's defaults"),
                            );
                        }
                    }
                }
                other => self.error(
                    decl.referenced,
                    format!(
                        "volume `{}` is declared as {}; expected a mapping or nothing",
                        key.value,
                        other.shape()
                    ),
                ),
            }
            let name = sanitize(&key.value).unwrap_or_else(|| key.value.clone());
            if let Some(first) = taken.insert(name.clone(), key.value.clone()) {
                self.error(
                    key.referenced,
                    format!(
                        "volumes `{first}` and `{}` would both be named `{name}` in rollout, which allows only lowercase letters, digits and `-`",
                        key.value,
                    ),
                );
            }
            table.declared.insert(key.value.clone(), name);
        }
        table
    }

    fn service(
        &mut self,
        key: &Spanned<String>,
        svc: ComposeService,
        table: &mut VolumeTable,
    ) -> RawService {
        let ComposeService {
            image,
            command,
            environment,
            ports,
            expose,
            depends_on,
            healthcheck,
            volumes,
            x_rollout,
            other_keys,
        } = svc;
        let name = key.value.as_str();

        let mut build = None;
        for k in &other_keys {
            if k.value == "build" {
                build = Some(k.referenced);
                continue;
            }
            match service_key_rule(&k.value) {
                Some(KeyRule::Ignore(why)) => self.warn(k.referenced, why),
                Some(KeyRule::Reject(why)) => self.error(k.referenced, why),
                Some(KeyRule::Unsupported) => self.error_help(
                    k.referenced,
                    format!("`{}` is a docker compose key that rollout does not support", k.value),
                    "ignoring it would make the service run differently than under compose; remove it, or run this service outside rollout",
                ),
                None => self.unknown_key(k, SERVICE_KEYS, &format!("in service `{name}`")),
            }
        }

        let image = match (image, build) {
            (Some(i), b) => {
                if let Some(b) = b {
                    self.warn(
                        b,
                        format!("`build` is ignored: rollout runs the image `{}` and does not build it; build and push it before rolling out", i.value),
                    );
                }
                self.interp_spanned(&i).unwrap_or(i)
            }
            (None, Some(b)) => {
                self.error_help(
                    b,
                    format!("service `{name}` has `build` but no `image`: rollout runs images, it does not build them"),
                    "build the image first (`docker compose build`, or `docker build -t <name>:<tag> .`) and name it in `image:`",
                );
                located("unknown".to_string(), b)
            }
            (None, None) => {
                self.error(key.referenced, format!("service `{name}` has no `image`"));
                located("unknown".to_string(), key.referenced)
            }
        };

        let command = command.as_ref().and_then(|c| self.command(name, c));
        let (env, bare_keys) = match environment.as_ref().map(|e| self.env(name, e)) {
            Some((env, bare)) => (Some(env), bare),
            None => (None, Vec::new()),
        };

        let mut raw_ports = Vec::new();
        for p in ports.iter().flatten() {
            if let Some(rp) = self.port(p) {
                raw_ports.push(like(rp, p));
            }
        }
        for e in expose.iter().flatten() {
            let Some(text) = self.interp(&e.value, e.referenced) else {
                continue;
            };
            let (number, protocol) = match text.split_once('/') {
                Some((n, p)) => (n, Some(p)),
                None => (text.as_str(), None),
            };
            if !self.l4_protocol(protocol, e.referenced) {
                continue;
            }
            let Some(container) = self.port_number(number, e.referenced) else {
                continue;
            };
            // `expose` often repeats a port that `ports` publishes; it adds nothing then.
            if raw_ports
                .iter()
                .any(|p| p.value.container.value == container.value)
            {
                continue;
            }
            raw_ports.push(like(
                RawPort {
                    name: None,
                    container,
                    public: None,
                    protocol: None,
                },
                e,
            ));
        }

        let depends_on = depends_on.as_ref().map(|d| self.depends_on(d));

        let XRolloutService {
            stateful,
            managed_by,
            secrets,
            health: x_health,
        } = match x_rollout {
            Some(x) => x.value,
            None => XRolloutService {
                stateful: None,
                managed_by: None,
                secrets: None,
                health: None,
            },
        };
        let health = match (x_health, &healthcheck) {
            (Some(h), Some((hc_at, _))) => {
                self.warn(
                    *hc_at,
                    format!(
                        "`healthcheck` of service `{name}` is replaced by its `x-rollout.health`"
                    ),
                );
                Some(h)
            }
            (Some(h), None) => Some(h),
            (None, Some((hc_at, hc))) => self.healthcheck(name, *hc_at, hc),
            (None, None) => None,
        };

        let mut raw_volumes = Vec::new();
        for v in volumes.iter().flatten() {
            if let Some(rv) = self.volume(name, v, table) {
                raw_volumes.push(like(rv, v));
            }
        }

        let secrets = if bare_keys.is_empty() {
            secrets
        } else {
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
        };
        RawService {
            image,
            command,
            env,
            secrets,
            ports: Some(raw_ports),
            depends_on,
            health,
            stateful,
            volumes: Some(raw_volumes),
            managed_by,
        }
    }

    fn command(
        &mut self,
        name: &str,
        c: &Spanned<Form<Strings, IgnoredAny>>,
    ) -> Option<Vec<String>> {
        match &c.value {
            Form::Scalar(s) => {
                let text = self.interp(s, c.referenced)?;
                match split_command(&text) {
                    Ok(words) => Some(words),
                    Err(e) => {
                        self.error(
                            c.referenced,
                            format!("cannot split the command of service `{name}`: {e}"),
                        );
                        None
                    }
                }
            }
            Form::List(items) => items
                .iter()
                .map(|i| self.interp(&i.value, i.referenced))
                .collect(),
            other => {
                self.error(
                    c.referenced,
                    format!(
                        "`command` of service `{name}` is {}; expected a string or a list",
                        other.shape()
                    ),
                );
                None
            }
        }
    }

    /// The service's variables, and the bare keys (`KEY` with no value) whose value compose would
    /// take from the host: those become secrets read with `fromEnv`, because passwords are what
    /// users pass that way, and a secret's value is never shown in a plan or report.
    fn env(
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

    fn port(&mut self, p: &Spanned<Form<IgnoredAny, LongPort>>) -> Option<RawPort> {
        match &p.value {
            Form::Scalar(s) => {
                let text = self.interp(s, p.referenced)?;
                let short = match split_short_port(&text) {
                    Ok(short) => short,
                    Err(e) => {
                        self.error_help(
                            p.referenced,
                            format!("invalid port `{text}`: {e}"),
                            "expected `CONTAINER`, `PUBLIC:CONTAINER` or `HOST_IP:PUBLIC:CONTAINER`, optionally followed by `/tcp`",
                        );
                        return None;
                    }
                };
                if !self.l4_protocol(short.protocol, p.referenced) {
                    return None;
                }
                if let Some(ip) = short.host_ip {
                    self.warn(
                        p.referenced,
                        format!("host address `{ip}` is ignored: the edge proxy serves public ports; only ports rollout probes itself are bound to 127.0.0.1"),
                    );
                }
                if short
                    .published
                    .into_iter()
                    .chain([short.container])
                    .any(is_range)
                {
                    self.range(&text, p.referenced);
                    return None;
                }
                let container = self.port_number(short.container, p.referenced);
                let public = match short.published {
                    Some(n) => Some(self.port_number(n, p.referenced)?),
                    None => None,
                };
                Some(RawPort {
                    name: None,
                    container: container?,
                    public,
                    protocol: None,
                })
            }
            Form::Map(long) => {
                let LongPort {
                    target,
                    published,
                    host_ip,
                    protocol,
                    app_protocol,
                    mode,
                    name,
                } = long.as_ref();
                let proto = protocol.as_ref().map(|s| s.value.as_str());
                let at = protocol.as_ref().map_or(p.referenced, |s| s.referenced);
                if !self.l4_protocol(proto, at) {
                    return None;
                }
                if let Some(ip) = host_ip {
                    self.warn(
                        ip.referenced,
                        format!("host address `{}` is ignored: the edge proxy serves public ports; only ports rollout probes itself are bound to 127.0.0.1", ip.value),
                    );
                }
                if let Some(m) = mode {
                    self.warn(
                        m.referenced,
                        "a port's `mode` is ignored: it only concerns swarm",
                    );
                }
                let container = self.port_number(&target.value, target.referenced);
                let public = match published {
                    Some(n) => {
                        let text = self.interp(&n.value, n.referenced)?;
                        Some(self.port_number(&text, n.referenced)?)
                    }
                    None => None,
                };
                // The edge proxy can look inside plain HTTP only; anything else is passed as TCP.
                let protocol = app_protocol.as_ref().map(|a| {
                    let p = if a.value == "http" { "http" } else { "tcp" };
                    like(p.to_string(), a)
                });
                Some(RawPort {
                    name: name.clone(),
                    container: container?,
                    public,
                    protocol,
                })
            }
            other => {
                self.error(
                    p.referenced,
                    format!(
                        "a port is {}; expected `\"18080:8080\"` or a mapping with `target`",
                        other.shape()
                    ),
                );
                None
            }
        }
    }

    /// Compose's transport protocol: rollout carries TCP only.
    fn l4_protocol(&mut self, protocol: Option<&str>, at: Location) -> bool {
        match protocol {
            None | Some("tcp") => true,
            Some("udp") => {
                self.error(
                    at,
                    "udp is not supported: rollout's edge proxy and probes carry TCP only",
                );
                false
            }
            Some(other) => {
                self.error(at, format!("unknown protocol `{other}`; expected `tcp`"));
                false
            }
        }
    }

    fn range(&mut self, text: &str, at: Location) {
        self.error_help(
            at,
            format!("port range `{text}` is not supported"),
            "list each port on its own",
        );
    }

    fn port_number(&mut self, text: &str, at: Location) -> Option<Spanned<i64>> {
        let t = text.trim();
        if is_range(t) {
            self.range(t, at);
            return None;
        }
        match t.parse::<i64>() {
            Ok(n) => Some(Spanned::new(n, at, at)),
            Err(_) => {
                self.error(at, format!("`{t}` is not a port number"));
                None
            }
        }
    }

    fn depends_on(&mut self, d: &Spanned<DependsOn>) -> Vec<Spanned<String>> {
        match &d.value {
            Form::Null => Vec::new(),
            Form::List(names) => names.clone(),
            Form::Map(m) => {
                let mut names = Vec::new();
                for (dep, cond) in &m.0 {
                    match &cond.value {
                        Form::Null => {}
                        Form::Map(c) => self.condition(&dep.value, c),
                        other => self.error(
                            cond.referenced,
                            format!(
                                "dependency `{}` is {}; expected a mapping such as `{{ condition: service_healthy }}`",
                                dep.value,
                                other.shape(),
                            ),
                        ),
                    }
                    names.push(dep.clone());
                }
                names
            }
            Form::Scalar(_) => {
                self.error(
                    d.referenced,
                    "`depends_on` is a single value; expected a list of services or a mapping",
                );
                Vec::new()
            }
        }
    }

    fn condition(&mut self, dep: &str, c: &DependsOnCondition) {
        let DependsOnCondition {
            condition,
            restart,
            required,
        } = c;
        if let Some(cond) = condition {
            match cond.value.as_str() {
                "service_started" | "service_healthy" => {}
                "service_completed_successfully" => self.warn(
                    cond.referenced,
                    format!("`service_completed_successfully` is treated as `service_started`: rollout starts this service after `{dep}` but does not wait for `{dep}` to exit"),
                ),
                other => self.error(
                    cond.referenced,
                    format!("unknown condition `{other}`; expected service_started, service_healthy or service_completed_successfully"),
                ),
            }
        }
        if let Some(r) = restart {
            self.warn(r.referenced, "`restart` of a dependency is ignored");
        }
        if let Some(r) = required
            && !r.value
        {
            self.warn(
                r.referenced,
                format!("`required: false` is ignored: `{dep}` must be a service of this file"),
            );
        }
    }

    fn healthcheck(
        &mut self,
        name: &str,
        hc_at: Location,
        hc: &Healthcheck,
    ) -> Option<Spanned<RawHealth>> {
        let Healthcheck {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
            disable,
        } = hc;
        if disable.as_ref().is_some_and(|d| d.value) {
            return None;
        }
        if let Some(s) = start_interval {
            self.warn(
                s.referenced,
                "`start_interval` is ignored: rollout probes at `interval` from the start",
            );
        }
        let Some(test) = test else {
            self.error_help(
                hc_at,
                format!("the healthcheck of service `{name}` has no `test`: rollout cannot use the image's own HEALTHCHECK"),
                "write the check, e.g. `test: [\"CMD\", \"/bin/check\"]`, or `disable: true`",
            );
            return None;
        };
        let words: Vec<Spanned<String>> = match &test.value {
            Form::Scalar(s) if s == "NONE" => return None,
            Form::Scalar(s) => vec![like("CMD-SHELL".to_string(), test), like(s.clone(), test)],
            Form::List(items) => items.clone(),
            other => {
                self.error(
                    test.referenced,
                    format!("a healthcheck `test` is {}; expected a list such as `[\"CMD\", \"/bin/check\"]`", other.shape()),
                );
                return None;
            }
        };
        let command: Vec<String> = match words.split_first() {
            Some((first, _)) if first.value == "NONE" => return None,
            Some((first, rest)) if first.value == "CMD" && !rest.is_empty() => rest
                .iter()
                .map(|w| self.interp(&w.value, w.referenced))
                .collect::<Option<_>>()?,
            Some((first, [script])) if first.value == "CMD-SHELL" => {
                let script = self.interp(&script.value, script.referenced)?;
                vec!["/bin/sh".into(), "-c".into(), script]
            }
            Some((first, _)) if first.value == "CMD-SHELL" => {
                self.error(
                    test.referenced,
                    "`CMD-SHELL` takes exactly one string, the shell command",
                );
                return None;
            }
            Some((first, _)) if first.value == "CMD" => {
                self.error(test.referenced, "`CMD` needs a command after it");
                return None;
            }
            _ => {
                self.error(
                    test.referenced,
                    "a healthcheck `test` list starts with `CMD`, `CMD-SHELL` or `NONE`",
                );
                return None;
            }
        };
        let mut timing = |t: &Option<Spanned<String>>| {
            t.as_ref()
                .and_then(|t| self.interp_spanned(t))
                .map(|t| like(Text(t.value.clone()), &t))
        };
        let health = RawHealth {
            http: None,
            tcp: None,
            exec: Some(like(command, test)),
            interval: timing(interval),
            timeout: timing(timeout),
            start_period: timing(start_period),
            retries: retries.clone(),
        };
        Some(located(health, hc_at))
    }

    fn volume(
        &mut self,
        service: &str,
        v: &Spanned<Form<IgnoredAny, LongVolume>>,
        table: &mut VolumeTable,
    ) -> Option<RawVolume> {
        let (source, target) = match &v.value {
            Form::Scalar(s) => {
                let text = self.interp(s, v.referenced)?;
                let mut parts = text.splitn(3, ':');
                let first = parts.next().unwrap_or_default().to_string();
                let (source, target) = match parts.next() {
                    Some(t) => (Some(first), t.to_string()),
                    None => (None, first),
                };
                if let Some(mode) = parts.next()
                    && mode.split(',').any(|m| m == "ro")
                {
                    self.warn(
                        v.referenced,
                        "`:ro` is ignored: rollout mounts volumes read-write",
                    );
                }
                (
                    source.map(|s| located(s, v.referenced)),
                    located(target, v.referenced),
                )
            }
            Form::Map(long) => {
                let LongVolume {
                    kind,
                    source,
                    target,
                    read_only,
                    volume,
                    bind: _,
                    tmpfs: _,
                    image: _,
                    consistency,
                } = long.as_ref();
                match kind.value.as_str() {
                    "volume" => {}
                    "bind" => {
                        self.bind_mount(kind.referenced);
                        return None;
                    }
                    other => {
                        self.error(
                            kind.referenced,
                            format!("`{other}` mounts are not supported: rollout mounts named volumes only (`type: volume`)"),
                        );
                        return None;
                    }
                }
                if read_only.as_ref().is_some_and(|r| r.value) {
                    self.warn(
                        v.referenced,
                        "`read_only` is ignored: rollout mounts volumes read-write",
                    );
                }
                if let Some(o) = volume {
                    self.warn(
                        o.referenced,
                        "volume options (`nocopy`, `subpath`) are ignored",
                    );
                }
                if let Some(o) = consistency {
                    self.warn(o.referenced, "`consistency` is ignored");
                }
                let source = match source {
                    Some(s) => Some(self.interp_spanned(s)?),
                    None => None,
                };
                (source, self.interp_spanned(target)?)
            }
            other => {
                self.error(
                    v.referenced,
                    format!("a volume is {}; expected `name:/path` or a mapping with `type`, `source` and `target`", other.shape()),
                );
                return None;
            }
        };
        let Some(source) = source else {
            self.error_help(
                v.referenced,
                format!(
                    "anonymous volume `{}` is not supported: rollout copies named volumes into test versions",
                    target.value,
                ),
                format!(
                    "name it, e.g. `{service}-data:{}`, and declare it under the top-level `volumes:`",
                    target.value,
                ),
            );
            return None;
        };
        let s = source.value.as_str();
        if s.starts_with(['.', '/', '~']) || s.contains(['/', '\\']) {
            self.bind_mount(source.referenced);
            return None;
        }
        let Some(name) = table.declared.get(s).cloned() else {
            self.error_help(
                source.referenced,
                format!("volume `{s}` of service `{service}` is not declared"),
                format!(
                    "declare it under the top-level `volumes:`, e.g.\n      volumes:\n        {s}:"
                ),
            );
            return None;
        };
        let owner = table
            .used_by
            .entry(s.to_string())
            .or_insert_with(|| service.to_string());
        if owner != service {
            let other = owner.clone();
            self.error_help(
                source.referenced,
                format!("volume `{s}` is shared by services `{other}` and `{service}`: rollout gives each service its own volumes, so they would not share data"),
                "give each service its own volume, or let one service own the data and serve it to the other",
            );
            return None;
        }
        Some(RawVolume {
            name: like(name, &source),
            path: target,
        })
    }

    fn bind_mount(&mut self, at: Location) {
        self.error_help(
            at,
            "bind mounts are not supported: rollout copies named volumes into test versions",
            "use a named volume declared under the top-level `volumes:`, and bake fixed files into the image",
        );
    }
}

// ---------------------------------------------------------------- small parsers

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

/// `3000-3005`, as opposed to a negative number, which `resolve` reports as out of range.
fn is_range(port: &str) -> bool {
    port.split_once('-')
        .is_some_and(|(a, b)| !a.trim().is_empty() && !b.trim().is_empty())
}

struct ShortPort<'a> {
    host_ip: Option<&'a str>,
    published: Option<&'a str>,
    container: &'a str,
    protocol: Option<&'a str>,
}

/// `[HOST_IP:][PUBLISHED:]CONTAINER[/PROTOCOL]`, where an IPv6 host is written in brackets.
fn split_short_port(s: &str) -> Result<ShortPort<'_>, String> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let (bracketed, rest) = match addr.strip_prefix('[') {
        Some(r) => match r.split_once("]:") {
            Some((ip, rest)) => (Some(ip), rest),
            None => return Err("an IPv6 host address must be followed by `]:`".into()),
        },
        None => (None, addr),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, container) = match (bracketed, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [p, c]) => (None, Some(*p), *c),
        (None, [ip, p, c]) => (Some(*ip), Some(*p), *c),
        (Some(ip), [p, c]) => (Some(ip), Some(*p), *c),
        _ => return Err("too many `:`".into()),
    };
    Ok(ShortPort {
        host_ip: host_ip.filter(|ip| !ip.is_empty()),
        published: published.filter(|p| !p.is_empty()),
        container,
        protocol,
    })
}

/// Splits a command string into words as a POSIX shell would, without expansions.
fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a `'` is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a `\"` is not closed".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a `\"` is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => return Err("the command ends with a lone `\\`".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

struct InterpError {
    message: String,
    help: String,
}

/// Deep enough for any real default-of-a-default, shallow enough that no input can exhaust the
/// stack.
const MAX_INTERPOLATION_DEPTH: usize = 8;

/// Compose's `$` interpolation.
fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpError> {
    if depth > MAX_INTERPOLATION_DEPTH {
        return Err(InterpError {
            message: "`${...}` defaults are nested too deeply".into(),
            help: format!("nest at most {MAX_INTERPOLATION_DEPTH} levels"),
        });
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = closing_brace(body) else {
                return Err(InterpError {
                    message: format!("`${{` is not closed in `{text}`"),
                    help: "write `${VAR}`, or `$$` for a literal `$`".into(),
                });
            };
            out.push_str(&expand(&body[..end], text, lookup, depth)?);
            rest = &body[end + 1..];
        } else {
            let len = var_name_len(after);
            if len == 0 {
                return Err(InterpError {
                    message: format!("a `$` in `{text}` is not followed by a variable name"),
                    help: "write `$VAR` or `${VAR}`, or `$$` for a literal `$`".into(),
                });
            }
            let name = &after[..len];
            out.push_str(&lookup(name).ok_or_else(|| unset(name))?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn var_name_len(s: &str) -> usize {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return 0;
    }
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// The `}` closing a `${`, skipping nested `${...}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'$' if matches!(bytes.get(i + 1), Some(b'$')) => i += 1,
            b'$' if matches!(bytes.get(i + 1), Some(b'{')) => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn unset(name: &str) -> InterpError {
    InterpError {
        message: format!("variable `{name}` is not set"),
        help: format!(
            "export {name}=... before running rollout, or give a default: `${{{name}:-value}}`"
        ),
    }
}

fn expand(
    body: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpError> {
    let len = var_name_len(body);
    let (name, op) = body.split_at(len);
    if name.is_empty() {
        return Err(InterpError {
            message: format!("`${{{body}}}` in `{text}` does not name a variable"),
            help: "write `${VAR}`, or `$$` for a literal `$`".into(),
        });
    }
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let sub = |t: &str| interpolate(t, lookup, depth + 1);
    let (op, arg) = [":-", ":?", ":+", "-", "?", "+"]
        .iter()
        .find_map(|o| op.strip_prefix(o).map(|arg| (*o, arg)))
        .unwrap_or((op, ""));
    match op {
        "" => value.ok_or_else(|| unset(name)),
        ":-" if set_nonempty => Ok(value.unwrap_or_default()),
        ":-" => sub(arg),
        "-" => value.map_or_else(|| sub(arg), Ok),
        ":+" if set_nonempty => sub(arg),
        "+" if value.is_some() => sub(arg),
        ":+" | "+" => Ok(String::new()),
        ":?" if set_nonempty => Ok(value.unwrap_or_default()),
        "?" if value.is_some() => Ok(value.unwrap_or_default()),
        ":?" | "?" => Err(InterpError {
            message: format!(
                "variable `{name}` is not set: {}",
                sub(arg).unwrap_or_else(|_| arg.to_string()),
            ),
            help: format!("export {name}=... before running rollout"),
        }),
        _ => Err(InterpError {
            message: format!("`${{{body}}}` in `{text}` is not a valid interpolation"),
            help: "expected `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}` or `${VAR:+alternative}`".into(),
        }),
    }
}

/// Levenshtein distance, for "did you mean" on keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::env::{Health, Port, Probe, Protocol, Service, Volume};
    use crate::manifest::secret::SecretSource;

    fn host_env(var: &str) -> Option<String> {
        match var {
            "SHOP_SESSION_KEY" => Some("s3ss10n".into()),
            "SHOP_DB_PASSWORD" => Some("pg-pass".into()),
            "FEATURE_FLAGS" => Some("new-checkout".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn load_str(text: &str) -> Result<Imported, Diagnostics> {
        load(&Source::new("/srv/shop/compose.yaml", text), &host_env)
    }

    /// A compose file with one service `web` whose keys are `body`, starting on line 4.
    fn web(body: &str) -> String {
        format!("x-rollout: {{ client: acme }}\nservices:\n  web:\n{body}")
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match load_str(text) {
            Ok(i) => panic!("expected errors, got {:?}", i.environment),
            Err(d) => d.0,
        }
    }

    fn one_error(text: &str) -> Diagnostic {
        let mut es = errors(text);
        assert_eq!(es.len(), 1, "{}", Diagnostics(es.clone()));
        es.remove(0)
    }

    fn service<'a>(env: &'a Environment, name: &str) -> &'a Service {
        env.service(name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

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
    fn unknown_key_is_located_with_a_suggestion() {
        let d = one_error(&web("    image: shop-web:1\n    imgae: shop-web:2\n"));
        assert_eq!(d.pos(), Some(Pos::new(5, 5)));
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
        let d = one_error(&web(
            "    image: a:1\n    x-rolout: { stateful: true }\n    x-notes: anything\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(5, 5)));
        assert_eq!(d.message(), "unknown key `x-rolout` in service `web`");
    }

    #[test]
    fn unknown_key_inside_x_rollout_is_located() {
        let d = one_error(&web(
            "    image: a:1\n    x-rollout:\n      statful: true\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(6, 7)));
        assert!(d.message().starts_with("unknown key `statful`"), "{d}");
    }

    #[test]
    fn bind_mount_is_rejected() {
        let d = one_error(&web(
            "    image: a:1\n    volumes:\n      - ./data:/var/lib/data\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(6, 9)));
        assert_eq!(
            d.message(),
            "bind mounts are not supported: rollout copies named volumes into test versions"
        );
        let d = one_error(&web(
            "    image: a:1\n    volumes:\n      - type: bind\n        source: /srv\n        target: /data\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(6, 15)));
        assert!(d.message().starts_with("bind mounts are not supported"));
    }

    #[test]
    fn anonymous_undeclared_and_shared_volumes_are_rejected() {
        let d = one_error(&web("    image: a:1\n    volumes: [/var/lib/data]\n"));
        assert_eq!(d.pos(), Some(Pos::new(5, 15)));
        assert!(
            d.message()
                .starts_with("anonymous volume `/var/lib/data` is not supported"),
            "{d}"
        );
        assert!(d.to_string().contains("web-data:/var/lib/data"), "{d}");

        let d = one_error(&web("    image: a:1\n    volumes: [\"data:/d\"]\n"));
        assert_eq!(d.pos(), Some(Pos::new(5, 15)));
        assert_eq!(
            d.message(),
            "volume `data` of service `web` is not declared"
        );

        let text = "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, volumes: [\"up:/u\"] }\n  worker: { image: b:1, volumes: [\"up:/u\"] }\nvolumes: { up: }\n";
        let d = one_error(text);
        assert_eq!(d.pos(), Some(Pos::new(4, 35)));
        assert!(
            d.message()
                .starts_with("volume `up` is shared by services `web` and `worker`"),
            "{d}"
        );
    }

    #[test]
    fn volume_names_become_valid_rollout_names() {
        let text = "x-rollout: { client: acme }\nservices:\n  db:\n    image: pg:16\n    volumes: [\"DB_Data:/data:ro\"]\nvolumes:\n  DB_Data:\n";
        let imported = load_str(text).unwrap();
        let db = service(&imported.environment, "db");
        assert_eq!(db.volumes[0].name, "db-data");
        assert_eq!(imported.warnings.len(), 1);
        assert_eq!(imported.warnings[0].pos(), Some(Pos::new(5, 15)));
        assert!(
            imported.warnings[0]
                .message()
                .starts_with("`:ro` is ignored")
        );
    }

    #[test]
    fn build_without_image_explains_that_rollout_runs_images() {
        let d = one_error(&web("    build: .\n"));
        assert_eq!(d.pos(), Some(Pos::new(4, 5)));
        assert_eq!(
            d.message(),
            "service `web` has `build` but no `image`: rollout runs images, it does not build them"
        );
        assert!(d.to_string().contains("build the image first"));

        let imported = load_str(&web("    build: .\n    image: shop-web:2\n")).unwrap();
        assert_eq!(imported.warnings[0].pos(), Some(Pos::new(4, 5)));
        assert!(
            imported.warnings[0]
                .message()
                .starts_with("`build` is ignored")
        );

        let d = one_error(&web("    command: [x]\n"));
        assert_eq!(d.pos(), Some(Pos::new(3, 3)));
        assert_eq!(d.message(), "service `web` has no `image`");
    }

    #[test]
    fn udp_ports_are_rejected() {
        let d = one_error(&web("    image: a:1\n    ports: [\"5353:53/udp\"]\n"));
        assert_eq!(d.pos(), Some(Pos::new(5, 13)));
        assert_eq!(
            d.message(),
            "udp is not supported: rollout's edge proxy and probes carry TCP only"
        );
        let d = one_error(&web(
            "    image: a:1\n    ports:\n      - { target: 53, protocol: udp }\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(6, 33)));
        assert!(d.message().starts_with("udp is not supported"));
    }

    #[test]
    fn port_forms() {
        let text = web(
            "    image: a:1\n    ports:\n      - 80\n      - \"127.0.0.1:18443:443/tcp\"\n      - \"[::1]::9090\"\n      - target: 8081\n        published: 18081\n        app_protocol: http\n        host_ip: 0.0.0.0\n    expose: [\"80\", 9100/tcp]\n",
        );
        let imported = load_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(u16, Option<u16>, Protocol)> = service(&imported.environment, "web")
            .ports
            .iter()
            .map(|p| (p.container, p.public, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (80, None, Protocol::Http),
                (443, Some(18443), Protocol::Http),
                (9090, None, Protocol::Http),
                (8081, Some(18081), Protocol::Http),
                (9100, None, Protocol::Http),
            ]
        );
        let warned: Vec<Option<Pos>> = imported.warnings.iter().map(|w| w.pos()).collect();
        assert_eq!(
            warned,
            [
                Some(Pos::new(7, 9)),
                Some(Pos::new(8, 9)),
                Some(Pos::new(12, 18))
            ]
        );
        assert!(
            imported.warnings[0]
                .message()
                .starts_with("host address `127.0.0.1` is ignored")
        );
    }

    #[test]
    fn unquoted_short_ports_are_read_as_written() {
        let imported = load_str(&web(
            "    image: a:1\n    ports:\n      - 18081:81\n      - 8080:8080/tcp\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(u16, Option<u16>)> = service(&imported.environment, "web")
            .ports
            .iter()
            .map(|p| (p.container, p.public))
            .collect();
        assert_eq!(ports, [(81, Some(18081)), (8080, Some(8080))]);
    }

    #[test]
    fn port_ranges_and_bad_ports_are_rejected() {
        let es = errors(&web(
            "    image: a:1\n    ports: [\"3000-3005:3000-3005\", \"http\", \"70000:80\"]\n",
        ));
        let found: Vec<(Option<Pos>, &str)> = es.iter().map(|d| (d.pos(), d.message())).collect();
        assert_eq!(
            found,
            [
                (
                    Some(Pos::new(5, 13)),
                    "port range `3000-3005:3000-3005` is not supported"
                ),
                (Some(Pos::new(5, 36)), "`http` is not a port number"),
                (
                    Some(Pos::new(5, 44)),
                    "public port 70000 is out of range; expected a port from 1 to 65535"
                ),
            ]
        );
    }

    #[test]
    fn missing_client_is_reported_at_the_top_of_the_file() {
        let d = one_error("# shop\nname: shop\nservices:\n  web: { image: a:1 }\n");
        assert_eq!(d.pos(), Some(Pos::new(2, 1)));
        assert_eq!(
            d.message(),
            "missing `x-rollout.client`: rollout needs to know which client this environment belongs to"
        );
        let d = one_error("services:\n  web: { image: a:1 }\nx-rollout: { selfHeal: true }\n");
        assert_eq!(d.pos(), Some(Pos::new(3, 1)));
        assert!(d.message().starts_with("missing `x-rollout.client`"));
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
    fn depends_on_cycle_is_reported_by_resolve() {
        let text = "x-rollout: { client: acme }\nservices:\n  api:\n    image: a:1\n    depends_on: [db]\n  db:\n    image: d:1\n    depends_on:\n      api: { condition: service_healthy }\n";
        let d = one_error(text);
        assert_eq!(d.pos(), Some(Pos::new(3, 3)));
        assert_eq!(d.message(), "dependsOn has a cycle: api -> db -> api");
    }

    #[test]
    fn depends_on_conditions() {
        let text = "x-rollout: { client: acme }\nservices:\n  migrate: { image: m:1 }\n  api:\n    image: a:1\n    depends_on:\n      migrate:\n        condition: service_completed_successfully\n        required: false\n";
        let imported = load_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            service(&imported.environment, "api").depends_on,
            ["migrate"]
        );
        let warned: Vec<Option<Pos>> = imported.warnings.iter().map(|w| w.pos()).collect();
        assert_eq!(warned, [Some(Pos::new(8, 20)), Some(Pos::new(9, 19))]);
        assert!(
            imported.warnings[0]
                .message()
                .contains("treated as `service_started`")
        );

        let d = one_error(&format!(
            "{text}  web:\n    image: w:1\n    depends_on: {{ api: {{ condition: service_ready }} }}\n"
        ));
        assert_eq!(d.pos(), Some(Pos::new(12, 37)));
        assert!(d.message().starts_with("unknown condition `service_ready`"));
    }

    #[test]
    fn bad_duration_is_located_in_the_compose_file() {
        let d = one_error(&web(
            "    image: a:1\n    healthcheck:\n      test: [CMD, /bin/check]\n      interval: 10secs\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(7, 17)));
        assert_eq!(
            d.message(),
            "unknown unit `secs` in duration `10secs`; expected one of ms, s, m, h, d"
        );
    }

    #[test]
    fn healthcheck_forms() {
        let probe = |hc: &str| {
            let imported = load_str(&web(&format!("    image: a:1\n    healthcheck:\n{hc}")))
                .unwrap_or_else(|e| panic!("{e}"));
            service(&imported.environment, "web")
                .health
                .clone()
                .map(|h| h.probe)
        };
        assert_eq!(probe("      test: NONE\n"), None);
        assert_eq!(probe("      test: [NONE]\n"), None);
        assert_eq!(
            probe("      test: [CMD, check]\n      disable: true\n"),
            None
        );
        assert_eq!(
            probe("      test: [CMD-SHELL, \"curl -f localhost:$${PORT:-80}\"]\n"),
            Some(Probe::Exec {
                command: strings(&["/bin/sh", "-c", "curl -f localhost:${PORT:-80}"])
            })
        );
        let d = one_error(&web(
            "    image: a:1\n    healthcheck:\n      test: [CURL, x]\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(6, 13)));
        assert_eq!(
            d.message(),
            "a healthcheck `test` list starts with `CMD`, `CMD-SHELL` or `NONE`"
        );
        let d = one_error(&web(
            "    image: a:1\n    healthcheck:\n      interval: 5s\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(5, 5)));
        assert!(d.message().contains("has no `test`"), "{d}");
    }

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
        let d = one_error(&web(
            "    image: a:1\n    environment:\n      OTHER_MISSING:\n",
        ));
        assert_eq!(d.pos(), Some(Pos::new(6, 7)));
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

        let d = one_error(&web("    image: a:1\n    environment: [A=1, A=2]\n"));
        assert_eq!(d.pos(), Some(Pos::new(5, 24)));
        assert_eq!(
            d.message(),
            "`A` is set twice in the environment of service `web`"
        );
    }

    #[test]
    fn unset_interpolated_variable_is_located() {
        let d = one_error(&web("    image: shop-web:${WEB_TAG}\n"));
        assert_eq!(d.pos(), Some(Pos::new(4, 12)));
        assert_eq!(d.message(), "variable `WEB_TAG` is not set");
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

    #[test]
    fn interpolation() {
        let lookup = |v: &str| match v {
            "TAG" => Some("1.2".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let i = |t: &str| interpolate(t, &lookup, 0).map_err(|e| e.message);
        assert_eq!(i("a:$TAG").unwrap(), "a:1.2");
        assert_eq!(i("a:${TAG}-x").unwrap(), "a:1.2-x");
        assert_eq!(i("$${HOME} $$1").unwrap(), "${HOME} $1");
        assert_eq!(i("${NOPE:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY-d}").unwrap(), "");
        assert_eq!(i("${NOPE:-${TAG}}").unwrap(), "1.2");
        assert_eq!(i("${NOPE:--x}").unwrap(), "-x");
        assert_eq!(i("${TAG:+on}").unwrap(), "on");
        assert_eq!(i("${NOPE:+on}").unwrap(), "");
        assert_eq!(
            i("${NOPE:?set the tag}").unwrap_err(),
            "variable `NOPE` is not set: set the tag"
        );
        assert_eq!(i("${NOPE}").unwrap_err(), "variable `NOPE` is not set");
        assert!(i("${TAG").is_err());
        assert!(i("${}").is_err());
        assert!(i("${TAG!x}").is_err());
        assert!(i("5$").is_err());
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_command(r#"sh -c 'echo "a b"' "x \"y\"" c\ d"#).unwrap(),
            strings(&["sh", "-c", "echo \"a b\"", "x \"y\"", "c d"])
        );
        assert_eq!(split_command("  a   ''  ").unwrap(), strings(&["a", ""]));
        assert!(split_command("a 'b").is_err());
        assert!(split_command("a \"b").is_err());
        assert!(split_command("a \\").is_err());
    }

    #[test]
    fn sanitized_names() {
        assert_eq!(sanitize("Acme_Shop").as_deref(), Some("acme-shop"));
        assert_eq!(sanitize("--x--y--").as_deref(), Some("x-y"));
        assert_eq!(sanitize("___"), None);
        assert_eq!(sanitize(&"a".repeat(60)).map(|s| s.len()), Some(40));
    }
}
