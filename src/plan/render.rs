//! A plan as text, for a terminal (with colour) or a pipe (without).

use std::fmt::Write;

use super::{Action, Change, Gate, Plan};
use crate::manifest::env::Port;

/// ANSI styling that is a no-op when colour is off.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    pub color: bool,
}

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    pub fn bold(self, t: &str) -> String {
        self.wrap("1", t)
    }
    pub fn green(self, t: &str) -> String {
        self.wrap("32", t)
    }
    pub fn yellow(self, t: &str) -> String {
        self.wrap("33", t)
    }
    pub fn red(self, t: &str) -> String {
        self.wrap("31", t)
    }
    pub fn dim(self, t: &str) -> String {
        self.wrap("2", t)
    }
}

pub(crate) fn port_text(p: &Port) -> String {
    let proto = match p.protocol {
        crate::manifest::env::Protocol::Http => "http",
        crate::manifest::env::Protocol::Tcp => "tcp",
    };
    match p.public {
        Some(public) => format!("{} {}/{proto} (public {public})", p.name, p.container),
        None => format!("{} {}/{proto}", p.name, p.container),
    }
}

fn change_text(c: &Change) -> String {
    match c {
        Change::Image { from, to } => format!("image: {from} -> {to}"),
        Change::Command { from, to } => format!(
            "command: {} -> {}",
            from.as_ref()
                .map_or("(image default)".into(), |c| c.join(" ")),
            to.as_ref()
                .map_or("(image default)".into(), |c| c.join(" "))
        ),
        Change::EnvAdded { key, value } => format!("env {key}: added ({value:?})"),
        Change::EnvRemoved { key } => format!("env {key}: removed"),
        Change::EnvChanged { key, from, to } => format!("env {key}: {from:?} -> {to:?}"),
        Change::SecretAdded { key } => format!("secret {key}: added (value hidden)"),
        Change::SecretRemoved { key } => format!("secret {key}: removed"),
        Change::SecretChanged { key } => format!("secret {key}: changed (value hidden)"),
        Change::PortAdded { port } => format!("port {}: added", port_text(port)),
        Change::PortRemoved { port } => format!("port {}: removed", port_text(port)),
        Change::PortChanged { from, to } => {
            format!("port {} -> {}", port_text(from), port_text(to))
        }
        Change::VolumeAdded { volume } => {
            format!("volume {} at {}: added", volume.name, volume.path)
        }
        Change::VolumeRemoved { volume } => format!(
            "volume {} at {}: removed (its data is kept)",
            volume.name, volume.path
        ),
        Change::Health { from, to } if from == to => "health: timing settings changed".to_string(),
        Change::Health { from, to } => format!(
            "health: {} -> {}",
            from.as_deref().unwrap_or("(none)"),
            to.as_deref().unwrap_or("(none)")
        ),
        Change::DependsOn { from, to } => {
            format!("dependsOn: [{}] -> [{}]", from.join(", "), to.join(", "))
        }
        Change::Stateful { from, to } => format!("stateful: {from} -> {to}"),
        Change::ManagedBy { from, to } => format!(
            "managed by: {} -> {}",
            from.as_deref().unwrap_or("(us)"),
            to.as_deref().unwrap_or("(us)")
        ),
        Change::NotRunning { state } => format!("not running ({state}): will be started again"),
        Change::Unhealthy => "running but unhealthy: will be started again".to_string(),
        Change::Unrecorded => {
            "its containers carry no recorded settings: will be replaced".to_string()
        }
    }
}

/// Renders the plan as the text `rollout plan` prints.
pub fn text(plan: &Plan, paint: Paint) -> String {
    let mut out = String::new();
    let playbook = match &plan.playbook.file {
        Some(f) => format!("{} ({f})", plan.playbook.name),
        None => plan.playbook.name.clone(),
    };
    let _ = writeln!(
        out,
        "{} {} {}",
        paint.bold(&format!("Environment {}", plan.environment)),
        paint.dim(&format!("(client {})", plan.client)),
        format_args!("- playbook {playbook}")
    );
    let _ = writeln!(out);
    let width = plan
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    for s in &plan.services {
        let (sign, word) = match s.action {
            Action::Create => (paint.green("+"), paint.green("create")),
            Action::Update => (paint.yellow("~"), paint.yellow("update")),
            Action::Restart => (paint.yellow("~"), paint.yellow("restart")),
            Action::Remove => (paint.red("-"), paint.red("remove")),
            Action::Unchanged => (paint.dim("="), paint.dim("unchanged")),
        };
        let mut tags = Vec::new();
        if s.stateful {
            tags.push("stateful".to_string());
        }
        if let Some(p) = &s.managed_by {
            tags.push(format!("managed by {p}"));
        }
        let tags = if tags.is_empty() {
            String::new()
        } else {
            paint.dim(&format!("  [{}]", tags.join(", ")))
        };
        let _ = writeln!(out, "  {sign} {:<width$}  {word}{tags}", s.name);
        for c in &s.changes {
            let _ = writeln!(out, "      {}", change_text(c));
        }
    }
    if !plan.has_changes() {
        let _ = writeln!(out, "\nNo changes: {} is up to date.", plan.environment);
        return out;
    }
    let _ = writeln!(out, "\n{}", paint.bold("Steps"));
    for (i, s) in plan.steps.iter().enumerate() {
        match &s.skipped {
            Some(why) => {
                let _ = writeln!(
                    out,
                    "  {}. {}",
                    i + 1,
                    paint.dim(&format!("{} - skipped: {why}", s.description))
                );
            }
            None => {
                let _ = writeln!(out, "  {}. {}", i + 1, s.description);
            }
        }
        for n in &s.notes {
            let _ = writeln!(out, "       {n}");
        }
    }
    if !plan.gates.is_empty() {
        let _ = writeln!(out, "\n{}", paint.bold("Gates"));
        for g in &plan.gates {
            let line = match g {
                Gate::Approval { by } => {
                    format!("approval by `{by}` (rollout approve RUN --by {by})")
                }
                Gate::ThirdParty { party, services } => format!(
                    "authorization by third party `{party}`, which manages {} (rollout approve RUN --by {party})",
                    services.join(", ")
                ),
                Gate::Window { days, from, to, tz } => {
                    format!("change window: {} {from}-{to} {tz}", days.join(","))
                }
            };
            let _ = writeln!(out, "  - {line}");
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(out);
        for w in &plan.warnings {
            let _ = writeln!(out, "{} {w}", paint.yellow("warning:"));
        }
    }
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to update, {} to restart, {} to remove, {} unchanged.",
        plan.count(Action::Create),
        plan.count(Action::Update),
        plan.count(Action::Restart),
        plan.count(Action::Remove),
        plan.count(Action::Unchanged)
    );
    out
}
