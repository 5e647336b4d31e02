//! `rollout.yaml`: the project's settings (backend, state directory, proxy, daemon, notifications).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::env::Checker;
use super::raw::{RawConfig, RawDaemon};
use super::source::{Diagnostics, Source};
use super::yaml::{Spanned, pos};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Docker,
    Kubernetes,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    /// The embedded store's directory, relative to the project unless absolute.
    pub state: PathBuf,
    /// A Docker endpoint other than the local default (`DOCKER_HOST` still applies when unset).
    pub docker_host: Option<String>,
    pub proxy: ProxySettings,
    pub daemon: Option<Daemon>,
    pub notify: Vec<Notify>,
    /// `kubernetes.prometheus`: where a canary's figures come from on the kubernetes backend.
    pub prometheus: Option<Prometheus>,
    /// `kubernetes.copyImage`: the image of a data copy's Jobs on a cluster without
    /// VolumeSnapshots (busybox's `sh`, `nc` and `tar`).
    pub copy_image: Option<String>,
}

/// Prometheus as the source of a canary's figures: its base URL and three PromQL queries, each
/// with the placeholders of [`PROMETHEUS_PLACEHOLDERS`] filled in per candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prometheus {
    /// `http://host:port` (and a path prefix, if Prometheus is served under one).
    pub url: String,
    /// The requests the candidate served over the window (one number).
    pub requests: String,
    /// Those of them that failed (one number; no series at all counts as none).
    pub errors: String,
    /// The 99th percentile of their latency, in seconds (needed by an analysis with `maxP99`).
    pub p99: Option<String>,
}

/// What a Prometheus query may name, filled in per candidate: its namespace, its manifest
/// service, its Deployment (its pods are `<deployment>-<hash>-<suffix>`), and the canary's hold
/// as a PromQL duration (`60s`).
pub const PROMETHEUS_PLACEHOLDERS: [&str; 4] = [
    "{{namespace}}",
    "{{service}}",
    "{{deployment}}",
    "{{window}}",
];

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where public ports face the outside (`0.0.0.0` by default; `127.0.0.1` keeps them local).
    pub bind: std::net::IpAddr,
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub listen: SocketAddr,
    pub tokens: Vec<Token>,
    pub gitops: Option<Gitops>,
    pub rehearsals: Vec<Rehearsal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    /// The variable holding the token; its value is read by the daemon only.
    pub from_env: String,
    pub clients: Vec<String>,
    pub may: Vec<Right>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    Read,
    Promote,
    Rollback,
    Rehearse,
    Approve,
}

#[derive(Debug, Clone)]
pub struct Gitops {
    pub repo: String,
    pub branch: String,
    pub path: String,
    pub interval: Duration,
    pub playbook: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Rehearsal {
    pub environment: String,
    pub playbook: Option<String>,
    pub schedule: croner::Cron,
    pub schedule_text: String,
    pub tz: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub webhook: String,
    pub on: Vec<Event>,
}

/// What a webhook can be told about (the `notify` module sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Failed,
    Promoted,
    RolledBack,
    AwaitingApproval,
    RehearsalFailed,
    /// The GitOps controller found an environment drifted from its manifest.
    Drifted,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::Failed,
        Event::Promoted,
        Event::RolledBack,
        Event::AwaitingApproval,
        Event::RehearsalFailed,
        Event::Drifted,
    ];

    /// The name written in rollout.yaml and in webhook bodies.
    pub fn name(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::Promoted => "promoted",
            Event::RolledBack => "rolledBack",
            Event::AwaitingApproval => "awaitingApproval",
            Event::RehearsalFailed => "rehearsalFailed",
            Event::Drifted => "drifted",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: Backend::Docker,
            state: PathBuf::from(".rollout"),
            docker_host: None,
            proxy: ProxySettings {
                bind: std::net::IpAddr::from([0, 0, 0, 0]),
            },
            daemon: None,
            notify: Vec::new(),
            prometheus: None,
            copy_image: None,
        }
    }
}

pub fn resolve(src: &Source, raw: RawConfig) -> Result<Config, Diagnostics> {
    let RawConfig {
        backend,
        state,
        docker,
        proxy,
        daemon,
        notify,
        kubernetes,
    } = raw;
    let mut c = Checker::new(src);
    let defaults = Config::default();
    let backend = c.keyword(
        backend.as_ref(),
        "backend",
        &[
            ("docker", Backend::Docker),
            ("kubernetes", Backend::Kubernetes),
        ],
    );
    let state = state.map_or(defaults.state, |s| PathBuf::from(s.value));
    let docker_host = docker.and_then(|d| d.value.host.map(|h| h.value));
    let proxy = match proxy {
        None => defaults.proxy,
        Some(p) => ProxySettings {
            bind: match &p.value.bind {
                None => defaults.proxy.bind,
                Some(b) => b.value.parse().unwrap_or_else(|_| {
                    c.error(
                        pos(b),
                        format!(
                            "`{}` is not an IP address; expected e.g. 0.0.0.0 or 127.0.0.1",
                            b.value
                        ),
                    );
                    defaults.proxy.bind
                }),
            },
        },
    };
    let daemon = daemon.map(|d| resolve_daemon(&mut c, d.value));
    let mut out_notify = Vec::new();
    for n in notify.iter().flatten() {
        let url = &n.value.webhook;
        if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
            c.error(
                pos(url),
                format!("webhook `{}` must be an http:// or https:// URL", url.value),
            );
        }
        let mut on = Vec::new();
        for e in n.value.on.iter().flatten() {
            match Event::ALL.into_iter().find(|k| k.name() == e.value) {
                Some(k) if on.contains(&k) => {}
                Some(k) => on.push(k),
                None => c.error(pos(e), format!("unknown event `{}`; expected failed, promoted, rolledBack, awaitingApproval, rehearsalFailed or drifted", e.value)),
            }
        }
        if n.value.on.is_none() {
            on = Event::ALL.to_vec();
        }
        out_notify.push(Notify {
            webhook: url.value.clone(),
            on,
        });
    }
    let (prometheus, copy_image) = match kubernetes {
        Some(k) => (k.value.prometheus, k.value.copy_image),
        None => (None, None),
    };
    let prometheus = prometheus.map(|p| resolve_prometheus(&mut c, p.value));
    if let Some(image) = &copy_image
        && let Err(why) = super::env::check_image(&image.value)
    {
        c.error(pos(image), format!("copyImage `{}`: {why}", image.value));
    }
    let copy_image = copy_image.map(|i| i.value);
    c.finish(Config {
        backend,
        state,
        docker_host,
        proxy,
        daemon,
        notify: out_notify,
        prometheus,
        copy_image,
    })
}

fn resolve_prometheus(c: &mut Checker<'_>, raw: super::raw::RawPrometheus) -> Prometheus {
    let super::raw::RawPrometheus {
        url,
        requests,
        errors,
        p99,
    } = raw;
    if url.value.starts_with("https://") {
        c.error(
            pos(&url),
            format!("`{}`: https is not supported, this build of rollout has no TLS; use an http:// URL (a `kubectl port-forward` to Prometheus, for instance)", url.value),
        );
    } else if !url.value.starts_with("http://")
        || url
            .value
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .is_none()
    {
        c.error(
            pos(&url),
            format!("`{}` is not an http:// URL with a host", url.value),
        );
    }
    for q in [Some(&requests), Some(&errors), p99.as_ref()]
        .into_iter()
        .flatten()
    {
        if q.value.trim().is_empty() {
            c.error(pos(q), "the query is empty");
        }
        let mut rest = q.value.as_str();
        while let Some(start) = rest.find("{{") {
            let end = rest[start..]
                .find("}}")
                .map_or(rest.len(), |e| start + e + 2);
            let name = &rest[start..end];
            if !PROMETHEUS_PLACEHOLDERS.contains(&name) {
                c.error(
                    pos(q),
                    format!(
                        "unknown placeholder `{name}`; expected {}",
                        PROMETHEUS_PLACEHOLDERS.join(", ")
                    ),
                );
            }
            rest = &rest[end..];
        }
    }
    Prometheus {
        url: url.value.trim_end_matches('/').to_string(),
        requests: requests.value,
        errors: errors.value,
        p99: p99.map(|p| p.value),
    }
}

fn addr(c: &mut Checker<'_>, v: &Spanned<String>, local_only: bool) -> SocketAddr {
    match v.value.parse::<SocketAddr>() {
        Ok(a) => {
            if local_only && !a.ip().is_loopback() {
                c.error(
                    pos(v),
                    format!(
                        "`{}` is not a loopback address; the admin API listens on 127.0.0.1 only",
                        v.value
                    ),
                );
            }
            a
        }
        Err(_) => {
            c.error(
                pos(v),
                format!(
                    "`{}` is not an address; expected IP:PORT such as 127.0.0.1:7480",
                    v.value
                ),
            );
            "127.0.0.1:0".parse().expect("valid")
        }
    }
}

fn resolve_daemon(c: &mut Checker<'_>, d: RawDaemon) -> Daemon {
    let RawDaemon {
        listen,
        tokens,
        gitops,
        rehearsals,
    } = d;
    let listen = listen.as_ref().map_or_else(
        || "127.0.0.1:7480".parse().expect("valid"),
        |l| addr(c, l, false),
    );
    let mut out_tokens: Vec<Token> = Vec::new();
    for t in tokens.iter().flatten() {
        let name = c.name(&t.value.name, "token name");
        if out_tokens.iter().any(|o| o.name == name) {
            c.error(
                pos(&t.value.name),
                format!("token `{name}` is declared twice"),
            );
        }
        let clients = t
            .value
            .clients
            .iter()
            .map(|cl| c.name(cl, "client name"))
            .collect();
        let mut may = Vec::new();
        for m in &t.value.may {
            match m.value.as_str() {
                "read" => may.push(Right::Read),
                "promote" => may.push(Right::Promote),
                "rollback" => may.push(Right::Rollback),
                "rehearse" => may.push(Right::Rehearse),
                "approve" => may.push(Right::Approve),
                other => c.error(pos(m), format!("unknown right `{other}`; expected read, promote, rollback, rehearse or approve")),
            }
        }
        out_tokens.push(Token {
            name,
            from_env: t.value.from_env.value.clone(),
            clients,
            may,
        });
    }
    let gitops = gitops.map(|g| {
        let g = g.value;
        Gitops {
            repo: g.repo.value.clone(),
            branch: g.branch.map_or_else(|| "main".into(), |b| b.value),
            path: g.path.map_or_else(|| ".".into(), |p| p.value),
            interval: c.duration(&g.interval, Duration::from_secs(30)),
            playbook: g.playbook.map(|p| p.value),
        }
    });
    let mut out_rehearsals = Vec::new();
    for r in rehearsals.iter().flatten() {
        let r = &r.value;
        let tz =
            r.tz.as_ref()
                .map_or_else(|| "UTC".to_string(), |t| t.value.clone());
        if let Some(t) = &r.tz {
            c.time_zone(t);
        }
        match r.schedule.value.parse::<croner::Cron>() {
            Ok(schedule) => out_rehearsals.push(Rehearsal {
                environment: r.environment.value.clone(),
                playbook: r.playbook.as_ref().map(|p| p.value.clone()),
                schedule,
                schedule_text: r.schedule.value.clone(),
                tz,
            }),
            Err(e) => c.error(
                pos(&r.schedule),
                format!("invalid cron schedule `{}`: {e}", r.schedule.value),
            ),
        }
    }
    Daemon {
        listen,
        tokens: out_tokens,
        gitops,
        rehearsals: out_rehearsals,
    }
}
