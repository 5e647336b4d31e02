//! The resolved environment: what should run, in a form that cannot be invalid.
//!
//! [`resolve`] checks everything the YAML parser cannot: names usable as container and DNS names,
//! ports in range and unique, `dependsOn` naming real services without a cycle, durations, and
//! secrets present in the process environment. All problems are reported at once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use serde::Serialize;

use super::duration;
use super::raw::{OrderedMap, RawEnvironment, RawHealth, RawService};
use super::secret::{Secret, SecretSource, SecretValue};
use super::source::{Diagnostic, Diagnostics, Pos, Source};
use super::suggest;
use super::yaml::{Spanned, Text, pos};

pub const API_VERSION: &str = "rollout/v1";

/// An environment of a client: a set of services that should run.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub client: String,
    pub self_heal: bool,
    /// What every promotion needs, whatever the playbook: the roles whose approval it waits for.
    pub requires: Requires,
    /// Services in dependency order: every service comes after the ones it depends on.
    pub services: Vec<Service>,
    /// Where the environment was declared, for messages.
    pub source: std::path::PathBuf,
}

/// `requires`: gates that belong to the environment, not to the playbook someone picks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requires {
    /// Roles that approve every promotion (`requires.approvals`), in the order written.
    pub approvals: Vec<String>,
}

impl Environment {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
    pub ports: Vec<Port>,
    pub depends_on: Vec<String>,
    pub health: Option<Health>,
    pub stateful: bool,
    pub volumes: Vec<Volume>,
    pub managed_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub name: String,
    pub container: u16,
    /// Served to the outside through the edge proxy.
    pub public: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub probe: Probe,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    #[serde(with = "millis")]
    pub start_period: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Exec { command: Vec<String> },
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http { port, path } => write!(f, "http :{port}{path}"),
            Probe::Tcp { port } => write!(f, "tcp :{port}"),
            Probe::Exec { command } => write!(f, "exec {}", command.join(" ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub path: String,
}

pub(crate) mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_START_PERIOD: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

/// Collects diagnostics while resolving, so every problem in a file is reported at once.
pub(crate) struct Checker<'a> {
    pub src: &'a Source,
    pub errors: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    pub fn new(src: &'a Source) -> Self {
        Self {
            src,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, at: Pos, msg: impl Into<String>) {
        self.errors.push(self.src.error_at(at, msg));
    }

    pub fn error_help(&mut self, at: Pos, msg: impl Into<String>, help: impl Into<String>) {
        self.errors.push(self.src.error_at(at, msg).with_help(help));
    }

    pub fn finish<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(Diagnostics(self.errors))
        }
    }

    /// The head every rollout document starts with: `apiVersion` and `kind`.
    pub fn head(&mut self, api_version: &Spanned<String>, kind: &Spanned<String>, expected: &str) {
        if api_version.value != API_VERSION {
            self.error(
                pos(api_version),
                format!(
                    "unsupported apiVersion `{}`; expected `{API_VERSION}`",
                    api_version.value
                ),
            );
        }
        if kind.value != expected {
            self.error(
                pos(kind),
                format!(
                    "this file declares kind `{}`; expected `{expected}` here",
                    kind.value
                ),
            );
        }
    }

    /// One of a few words, each standing for a value. The first of `words` (never empty) is the
    /// default: for a word left out, and for one not listed, which is reported as an unknown
    /// `what` ("unknown backend `x`; expected `docker` or `kubernetes`").
    pub fn keyword<T: Copy>(
        &mut self,
        v: Option<&Spanned<String>>,
        what: &str,
        words: &[(&str, T)],
    ) -> T {
        let default = words[0].1;
        let Some(v) = v else {
            return default;
        };
        if let Some((_, value)) = words.iter().find(|(w, _)| *w == v.value) {
            return *value;
        }
        let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
        self.error(
            pos(v),
            format!(
                "unknown {what} `{}`; expected {}",
                v.value,
                suggest::one_of(&names)
            ),
        );
        default
    }

    /// An IANA time zone name.
    pub fn time_zone(&mut self, tz: &Spanned<String>) {
        if jiff::tz::TimeZone::get(&tz.value).is_err() {
            self.error(
                pos(tz),
                format!(
                    "unknown time zone `{}`; expected an IANA name such as Europe/Paris",
                    tz.value
                ),
            );
        }
    }

    /// A name that becomes part of container, network and DNS names.
    pub fn name(&mut self, v: &Spanned<String>, what: &str) -> String {
        if let Err(why) = check_dns_label(&v.value) {
            self.error(pos(v), format!("invalid {what} `{}`: {why}", v.value));
        }
        v.value.clone()
    }

    pub fn port(&mut self, v: &Spanned<i64>, what: &str) -> u16 {
        match u16::try_from(v.value) {
            Ok(p) if p > 0 => p,
            _ => {
                self.error(
                    pos(v),
                    format!(
                        "{what} {} is out of range; expected a port from 1 to 65535",
                        v.value
                    ),
                );
                0
            }
        }
    }

    pub fn duration(&mut self, v: &Option<Spanned<Text>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(t) => match duration::parse(&t.value.0) {
                Ok(d) => d,
                Err(e) => {
                    self.error(pos(t), e);
                    default
                }
            },
        }
    }

    pub fn count(&mut self, v: &Option<Spanned<i64>>, what: &str, default: u32) -> u32 {
        match v {
            None => default,
            Some(n) => match u32::try_from(n.value) {
                Ok(n) if n <= 1000 => n,
                _ => {
                    self.error(
                        pos(n),
                        format!(
                            "{what} must be a whole number from 0 to 1000, found {}",
                            n.value
                        ),
                    );
                    default
                }
            },
        }
    }
}

/// Container, network and DNS names are built from environment and service names.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 40 {
        return Err("it is longer than 40 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("use only lowercase letters, digits and `-`".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

pub(super) fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("the image is empty".into());
    }
    if image.chars().any(|c| c.is_whitespace()) {
        return Err("an image reference cannot contain spaces".into());
    }
    let (name, _) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let repo = match name.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => {
            if tag.is_empty() {
                return Err("the tag after `:` is empty".into());
            }
            r
        }
        _ => name,
    };
    let path = repo.split_once('/').map_or(repo, |(first, rest)| {
        if first.contains('.') || first.contains(':') || first == "localhost" {
            rest
        } else {
            repo
        }
    });
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("the repository part of an image reference must be lowercase".into());
    }
    Ok(())
}

/// Resolves a parsed manifest. `lookup` reads the variables that `fromEnv` secrets name.
pub fn resolve(
    src: &Source,
    raw: RawEnvironment,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Environment, Diagnostics> {
    let RawEnvironment {
        api_version,
        kind,
        name,
        client,
        self_heal,
        requires,
        services,
    } = raw;
    let mut c = Checker::new(src);
    c.head(&api_version, &kind, "Environment");
    let env_name = c.name(&name, "environment name");
    let client_name = c.name(&client, "client name");
    if services.value.0.is_empty() {
        c.error(pos(&services), "an environment needs at least one service");
    }

    let known: BTreeSet<&str> = services
        .value
        .0
        .iter()
        .map(|(k, _)| k.value.as_str())
        .collect();
    let mut resolved = Vec::new();
    let mut public_ports: BTreeMap<u16, String> = BTreeMap::new();
    for (key, svc) in &services.value.0 {
        let name = c.name(key, "service name");
        let s = resolve_service(&mut c, &name, svc, &known, lookup);
        for p in &s.ports {
            if let Some(public) = p.public
                && let Some(other) = public_ports.insert(public, name.clone())
            {
                let at = svc
                    .value
                    .ports
                    .iter()
                    .flatten()
                    .find(|rp| {
                        rp.value
                            .public
                            .as_ref()
                            .is_some_and(|x| x.value == i64::from(public))
                    })
                    .and_then(|rp| rp.value.public.as_ref().map(pos))
                    .unwrap_or(pos(svc));
                c.error(at, format!("public port {public} is already used by service `{other}`; public ports must be unique across the environment"));
            }
        }
        resolved.push((pos(key), s));
    }

    let ordered = match topo_order(&resolved) {
        Ok(order) => order,
        Err(cycle) => {
            let at = resolved
                .iter()
                .find(|(_, s)| s.name == cycle[0])
                .map(|(p, _)| *p)
                .unwrap_or(pos(&services));
            c.error(at, format!("dependsOn has a cycle: {}", cycle.join(" -> ")));
            Vec::new()
        }
    };
    let mut approvals: Vec<String> = Vec::new();
    for role in requires
        .iter()
        .flat_map(|r| r.value.approvals.iter().flatten())
    {
        let name = c.name(role, "approval role");
        if approvals.contains(&name) {
            c.error(
                pos(role),
                format!("approval role `{name}` is required twice"),
            );
        } else {
            approvals.push(name);
        }
    }
    let env = Environment {
        name: env_name,
        client: client_name,
        self_heal: self_heal.unwrap_or(false),
        requires: Requires { approvals },
        services: ordered,
        source: src.path().to_path_buf(),
    };
    c.finish(env)
}

fn resolve_service(
    c: &mut Checker<'_>,
    name: &str,
    svc: &Spanned<RawService>,
    known: &BTreeSet<&str>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Service {
    let RawService {
        image,
        command,
        env,
        secrets,
        ports,
        depends_on,
        health,
        stateful,
        volumes,
        managed_by,
    } = &svc.value;
    if let Err(why) = check_image(&image.value) {
        c.error(
            pos(image),
            format!("invalid image `{}`: {why}", image.value),
        );
    }
    if let Some(cmd) = command
        && cmd.is_empty()
    {
        c.error(
            pos(svc),
            format!(
                "service `{name}` has an empty command; leave `command` out to use the image's"
            ),
        );
    }
    let env_map = resolve_env(c, env.as_ref());
    let mut secret_map = BTreeMap::new();
    for (key, s) in secrets.iter().flat_map(|m| m.0.iter()) {
        check_env_key(c, key);
        if env_map.contains_key(&key.value) {
            c.error(
                pos(key),
                format!(
                    "`{}` is both in env and in secrets of service `{name}`",
                    key.value
                ),
            );
        }
        let var = &s.value.from_env;
        match lookup(&var.value) {
            Some(value) => {
                secret_map.insert(
                    key.value.clone(),
                    Secret { source: SecretSource::FromEnv(var.value.clone()), value: SecretValue::new(value) },
                );
            }
            None => c.error_help(
                pos(var),
                format!("secret `{}` of service `{name}` reads environment variable `{}`, which is not set", key.value, var.value),
                format!("export {}=... before running rollout", var.value),
            ),
        }
    }

    let mut resolved_ports = Vec::new();
    let mut seen_container = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    for p in ports.iter().flatten() {
        let container = c.port(&p.value.container, "container port");
        if !seen_container.insert(container) {
            c.error(
                pos(&p.value.container),
                format!("container port {container} is listed twice in service `{name}`"),
            );
        }
        let public = p.value.public.as_ref().map(|v| c.port(v, "public port"));
        let port_name = match &p.value.name {
            Some(n) => c.name(n, "port name"),
            None => format!("port-{container}"),
        };
        if !seen_names.insert(port_name.clone()) {
            let at = p.value.name.as_ref().map(pos).unwrap_or(pos(p));
            c.error(
                at,
                format!("port name `{port_name}` is used twice in service `{name}`"),
            );
        }
        let protocol = c.keyword(
            p.value.protocol.as_ref(),
            "protocol",
            &[("http", Protocol::Http), ("tcp", Protocol::Tcp)],
        );
        resolved_ports.push(Port {
            name: port_name,
            container,
            public,
            protocol,
        });
    }

    let mut deps = Vec::new();
    for d in depends_on.iter().flatten() {
        if d.value == name {
            c.error(pos(d), format!("service `{name}` depends on itself"));
        } else if !known.contains(d.value.as_str()) {
            c.error(pos(d), format!("service `{name}` depends on `{}`, which is not a service of this environment (services: {})", d.value, suggest::listing(known.iter().copied())));
        } else if deps.contains(&d.value) {
            c.error(
                pos(d),
                format!("`{}` is listed twice in dependsOn", d.value),
            );
        } else {
            deps.push(d.value.clone());
        }
    }

    let health = health.as_ref().map(|h| resolve_health(c, h));

    let mut vols = Vec::new();
    let mut seen_vol = BTreeSet::new();
    let mut seen_path = BTreeSet::new();
    for v in volumes.iter().flatten() {
        let vname = c.name(&v.value.name, "volume name");
        if !seen_vol.insert(vname.clone()) {
            c.error(
                pos(&v.value.name),
                format!("volume `{vname}` is listed twice in service `{name}`"),
            );
        }
        let path = v.value.path.value.clone();
        if !path.starts_with('/') {
            c.error(
                pos(&v.value.path),
                format!("volume path `{path}` must be absolute (start with `/`)"),
            );
        } else if !seen_path.insert(path.clone()) {
            c.error(
                pos(&v.value.path),
                format!("two volumes are mounted at `{path}`"),
            );
        }
        vols.push(Volume { name: vname, path });
    }

    let managed = managed_by
        .as_ref()
        .map(|m| c.name(&m.value.third_party, "third party name"));

    Service {
        name: name.to_string(),
        image: image.value.clone(),
        command: command.clone(),
        env: env_map,
        secrets: secret_map,
        ports: resolved_ports,
        depends_on: deps,
        health,
        stateful: stateful.unwrap_or(false),
        volumes: vols,
        managed_by: managed,
    }
}

fn check_env_key(c: &mut Checker<'_>, key: &Spanned<String>) {
    let k = &key.value;
    let ok = !k.is_empty()
        && !k.starts_with(|ch: char| ch.is_ascii_digit())
        && k.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '-');
    if !ok {
        c.error(
            pos(key),
            format!("`{k}` is not a valid environment variable name"),
        );
    }
}

fn resolve_env(
    c: &mut Checker<'_>,
    env: Option<&OrderedMap<Spanned<Text>>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in env.iter().flat_map(|m| m.0.iter()) {
        check_env_key(c, k);
        out.insert(k.value.clone(), v.value.0.clone());
    }
    out
}

fn resolve_health(c: &mut Checker<'_>, h: &Spanned<RawHealth>) -> Health {
    let RawHealth {
        http,
        tcp,
        exec,
        interval,
        timeout,
        start_period,
        retries,
    } = &h.value;
    let given = [http.is_some(), tcp.is_some(), exec.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given != 1 {
        c.error(
            pos(h),
            format!("health needs exactly one of `http`, `tcp` or `exec`, found {given}"),
        );
    }
    let probe = if let Some(p) = http {
        let path = p
            .value
            .path
            .as_ref()
            .map_or_else(|| "/".to_string(), |s| s.value.clone());
        if !path.starts_with('/') {
            c.error(
                pos(p.value.path.as_ref().expect("path given")),
                format!("http path `{path}` must start with `/`"),
            );
        }
        Probe::Http {
            port: c.port(&p.value.port, "health port"),
            path,
        }
    } else if let Some(p) = tcp {
        Probe::Tcp {
            port: c.port(&p.value.port, "health port"),
        }
    } else if let Some(cmd) = exec {
        if cmd.value.is_empty() {
            c.error(pos(cmd), "health exec needs a command, e.g. [/bin/check]");
        }
        Probe::Exec {
            command: cmd.value.clone(),
        }
    } else {
        Probe::Tcp { port: 0 }
    };
    let interval = c.duration(interval, DEFAULT_INTERVAL);
    let timeout = c.duration(timeout, DEFAULT_TIMEOUT);
    let start_period = c.duration(start_period, DEFAULT_START_PERIOD);
    if interval.is_zero() {
        c.error(pos(h), "health interval must be more than zero");
    }
    let retries = c.count(retries, "retries", DEFAULT_RETRIES);
    Health {
        probe,
        interval,
        timeout,
        start_period,
        retries,
    }
}

/// Orders services so each comes after its dependencies; ties keep the order they were written in.
/// On a cycle, returns the services on it, first repeated at the end.
///
/// Kahn's algorithm with the ready services in a min-heap of their written positions: each step
/// takes the first service, in written order, whose dependencies are all placed, in
/// O((services + dependencies) log services). (Scanning for that service each time was cubic
/// when services were written before their dependencies, as the demo writes them: 1000 services
/// took most of a second.)
fn topo_order(services: &[(Pos, Service)]) -> Result<Vec<Service>, Vec<String>> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (s.name.as_str(), i))
        .collect();
    // Dependencies not placed yet; one that names no service is never placed (a cycle error).
    let mut waiting: Vec<usize> = services.iter().map(|(_, s)| s.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); services.len()];
    for (i, (_, s)) in services.iter().enumerate() {
        for d in &s.depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..services.len())
        .filter(|&i| waiting[i] == 0)
        .map(Reverse)
        .collect();
    let mut done = Vec::with_capacity(services.len());
    while let Some(Reverse(i)) = ready.pop() {
        done.push(services[i].1.clone());
        for &k in &dependents[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.push(Reverse(k));
            }
        }
    }
    if done.len() < services.len() {
        let remaining: Vec<&Service> = services
            .iter()
            .zip(&waiting)
            .filter(|(_, w)| **w > 0)
            .map(|((_, s), _)| s)
            .collect();
        return Err(find_cycle(&remaining));
    }
    Ok(done)
}

fn find_cycle(remaining: &[&Service]) -> Vec<String> {
    // Every remaining service waits on another remaining one: walk until a name repeats.
    let by_name: BTreeMap<&str, &Service> =
        remaining.iter().map(|s| (s.name.as_str(), *s)).collect();
    let mut path: Vec<String> = Vec::new();
    let mut cur = remaining[0];
    loop {
        if let Some(i) = path.iter().position(|n| n == &cur.name) {
            let mut cycle = path[i..].to_vec();
            cycle.push(cur.name.clone());
            return cycle;
        }
        path.push(cur.name.clone());
        let next = cur.depends_on.iter().find_map(|d| by_name.get(d.as_str()));
        match next {
            Some(n) => cur = n,
            None => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, deps: &[&str]) -> (Pos, Service) {
        let service = Service {
            name: name.to_string(),
            image: "i:1".into(),
            command: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            ports: Vec::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            health: None,
            stateful: false,
            volumes: Vec::new(),
            managed_by: None,
        };
        (Pos::new(1, 1), service)
    }

    fn names(order: Result<Vec<Service>, Vec<String>>) -> Result<Vec<String>, Vec<String>> {
        order.map(|o| o.into_iter().map(|s| s.name).collect())
    }

    /// The order as it was defined before the heap: the first service in written order whose
    /// dependencies are all placed, again and again.
    fn reference(services: &[(Pos, Service)]) -> Vec<String> {
        let mut done: Vec<String> = Vec::new();
        let mut remaining: Vec<&Service> = services.iter().map(|(_, s)| s).collect();
        while let Some(i) = remaining
            .iter()
            .position(|s| s.depends_on.iter().all(|d| done.contains(d)))
        {
            done.push(remaining.remove(i).name.clone());
        }
        done
    }

    #[test]
    fn dependencies_first_ties_in_written_order() {
        let graphs = [
            vec![svc("web", &["api"]), svc("api", &["db"]), svc("db", &[])],
            vec![
                svc("d", &["b", "c"]),
                svc("c", &["a"]),
                svc("b", &["a"]),
                svc("x", &[]),
                svc("a", &[]),
            ],
            vec![
                svc("a", &[]),
                svc("b", &[]),
                svc("c", &["b"]),
                svc("d", &[]),
            ],
        ];
        for g in graphs {
            assert_eq!(names(topo_order(&g)), Ok(reference(&g)));
        }
        let g = [svc("web", &["api"]), svc("api", &["db"]), svc("db", &[])];
        assert_eq!(
            names(topo_order(&g)),
            Ok(vec!["db".into(), "api".into(), "web".into()])
        );
    }

    #[test]
    fn a_long_graph_written_dependents_first_is_ordered() {
        // The shape of bench/plan-scale.sh, written last service first: the case that was cubic.
        let n = 300;
        let names_of: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let g: Vec<(Pos, Service)> = (0..n)
            .rev()
            .map(|i| {
                let deps: Vec<&str> = if i == 0 {
                    Vec::new()
                } else {
                    let mut d = vec![(i - 1) / 2, (i - 1) / 3];
                    d.dedup();
                    d.into_iter().map(|j| names_of[j].as_str()).collect()
                };
                svc(&names_of[i], &deps)
            })
            .collect();
        let order = names(topo_order(&g)).expect("no cycle");
        assert_eq!(order.len(), n);
        let at: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        for (_, s) in &g {
            for d in &s.depends_on {
                assert!(
                    at[d.as_str()] < at[s.name.as_str()],
                    "{} before {d}",
                    s.name
                );
            }
        }
        assert_eq!(order, reference(&g[..]));
    }

    #[test]
    fn a_cycle_is_named() {
        let g = [
            svc("ok", &[]),
            svc("a", &["b"]),
            svc("b", &["c"]),
            svc("c", &["a"]),
            svc("d", &["a"]),
        ];
        assert_eq!(
            names(topo_order(&g)),
            Err(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }
}
