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
}

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

/// What a webhook can be told about (see [`crate::notify`]).
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
    } = raw;
    let mut c = Checker::new(src);
    let defaults = Config::default();
    let backend = match backend.as_ref().map(|b| (b.value.as_str(), pos(b))) {
        None | Some(("docker", _)) => Backend::Docker,
        Some(("kubernetes", _)) => Backend::Kubernetes,
        Some((other, at)) => {
            c.error(
                at,
                format!("unknown backend `{other}`; expected `docker` or `kubernetes`"),
            );
            Backend::Docker
        }
    };
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
    c.finish(Config {
        backend,
        state,
        docker_host,
        proxy,
        daemon,
        notify: out_notify,
    })
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
        if let Some(t) = &r.tz
            && jiff::tz::TimeZone::get(&t.value).is_err()
        {
            c.error(
                pos(t),
                format!(
                    "unknown time zone `{}`; expected an IANA name such as Europe/Paris",
                    t.value
                ),
            );
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
