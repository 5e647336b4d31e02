//! The plan: what would change in an environment and the steps that would carry it out.
//!
//! [`compute`] is a pure function of the desired environment, what the engine observed and the
//! playbook; [`render`] turns its result into text. Secret values never enter a [`Plan`]: a
//! secret is only ever reported as added, removed or changed.

pub mod render;

use serde::{Deserialize, Serialize};

use crate::engine::{HealthState, Observed, ObservedService, ServiceSnapshot, Traffic};
use crate::manifest::env::{Environment, Port, Service, Volume};
use crate::manifest::playbook::{self, Playbook, Step};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub environment: String,
    pub client: String,
    pub playbook: PlaybookUsed,
    pub services: Vec<ServicePlan>,
    /// The playbook's steps as they would run; empty when nothing changes.
    pub steps: Vec<PlannedStep>,
    pub gates: Vec<Gate>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.services.iter().any(|s| s.action != Action::Unchanged)
    }

    pub fn count(&self, action: Action) -> usize {
        self.services.iter().filter(|s| s.action == action).count()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookUsed {
    pub name: String,
    /// The file it came from, or `None` for the built-in default.
    pub file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    pub name: String,
    pub action: Action,
    pub changes: Vec<Change>,
    pub stateful: bool,
    pub managed_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Create,
    Update,
    /// Same settings, but not running or not healthy: it would be started again.
    Restart,
    Unchanged,
    /// Runs, but is no longer in the manifest.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "change")]
pub enum Change {
    Image {
        from: String,
        to: String,
    },
    Command {
        from: Option<Vec<String>>,
        to: Option<Vec<String>>,
    },
    EnvAdded {
        key: String,
        value: String,
    },
    EnvRemoved {
        key: String,
    },
    EnvChanged {
        key: String,
        from: String,
        to: String,
    },
    SecretAdded {
        key: String,
    },
    SecretRemoved {
        key: String,
    },
    /// The value differs from the running one. The values themselves are never reported.
    SecretChanged {
        key: String,
    },
    PortAdded {
        port: Port,
    },
    PortRemoved {
        port: Port,
    },
    PortChanged {
        from: Port,
        to: Port,
    },
    VolumeAdded {
        volume: Volume,
    },
    VolumeRemoved {
        volume: Volume,
    },
    Health {
        from: Option<String>,
        to: Option<String>,
    },
    DependsOn {
        from: Vec<String>,
        to: Vec<String>,
    },
    Stateful {
        from: bool,
        to: bool,
    },
    ManagedBy {
        from: Option<String>,
        to: Option<String>,
    },
    /// The service's container is not running.
    NotRunning {
        state: String,
    },
    Unhealthy,
    /// Containers carry rollout's labels but no recorded settings: they will be replaced.
    Unrecorded,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub step: Step,
    pub description: String,
    /// Why the step would do nothing, when it would not.
    pub skipped: Option<String>,
    /// What the step would do to specific services (stop-start of stateful ones, ...).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "gate")]
pub enum Gate {
    Approval {
        by: String,
    },
    ThirdParty {
        party: String,
        services: Vec<String>,
    },
    Window {
        days: Vec<String>,
        from: String,
        to: String,
        tz: String,
    },
}

/// Compares what should run with what runs, and lays out the playbook's steps for the difference.
pub fn compute(desired: &Environment, observed: &Observed, playbook: &Playbook) -> Plan {
    let mut services: Vec<ServicePlan> = desired
        .services
        .iter()
        .map(|s| plan_service(s, observed.services.get(&s.name)))
        .collect();
    for (name, obs) in &observed.services {
        if desired.service(name).is_none() {
            let spec = obs.spec.as_ref();
            services.push(ServicePlan {
                name: name.clone(),
                action: Action::Remove,
                changes: Vec::new(),
                stateful: spec.is_some_and(|s| s.stateful),
                managed_by: spec.and_then(|s| s.managed_by.clone()),
            });
        }
    }

    let changed: Vec<&ServicePlan> = services
        .iter()
        .filter(|s| s.action != Action::Unchanged)
        .collect();
    let mut warnings = Vec::new();
    let mut gates = Vec::new();
    let mut steps = Vec::new();
    if !changed.is_empty() {
        let first_deploy = observed.services.is_empty();
        let stateful_updates: Vec<&str> = changed
            .iter()
            .filter(|s| s.stateful && matches!(s.action, Action::Update | Action::Restart))
            .map(|s| s.name.as_str())
            .collect();
        for name in &stateful_updates {
            warnings.push(format!(
                "`{name}` is stateful: it is never run twice against the same volume, so it is updated by stop-start and is unavailable for the time it takes to restart"
            ));
        }
        for s in &changed {
            if s.action == Action::Remove && s.stateful {
                warnings.push(format!(
                    "`{}` is stateful and no longer in the manifest: its containers are removed but its volumes are kept",
                    s.name
                ));
            }
        }
        if let Some(w) = &playbook.window {
            gates.push(Gate::Window {
                days: w
                    .days
                    .iter()
                    .map(|d| playbook::weekday_name(*d).to_string())
                    .collect(),
                from: w.from.to_string(),
                to: w.to.to_string(),
                tz: w.tz.clone(),
            });
        }
        for step in &playbook.steps {
            if let Step::Approve { by } = step {
                gates.push(Gate::Approval { by: by.clone() });
            }
        }
        let mut parties: Vec<(String, Vec<String>)> = Vec::new();
        for s in &changed {
            if let Some(party) = &s.managed_by {
                match parties.iter_mut().find(|(p, _)| p == party) {
                    Some((_, list)) => list.push(s.name.clone()),
                    None => parties.push((party.clone(), vec![s.name.clone()])),
                }
            }
        }
        for (party, services) in parties {
            gates.push(Gate::ThirdParty { party, services });
        }
        for step in &playbook.steps {
            let mut notes = Vec::new();
            let skipped = match step {
                Step::Canary { .. } if first_deploy => Some(
                    "nothing runs yet: there is no previous version to share traffic with"
                        .to_string(),
                ),
                Step::Canary { .. }
                    if !changed
                        .iter()
                        .any(|s| splittable(desired, observed.traffic, &s.name)) =>
                {
                    Some(match observed.traffic {
                        Traffic::EdgeProxy => {
                            "no changed service has a public port to shift traffic on".to_string()
                        }
                        Traffic::Services => {
                            "no changed service has a port behind a Service to shift traffic on"
                                .to_string()
                        }
                    })
                }
                Step::Smoke { checks, .. } => {
                    notes.extend(checks.iter().map(|c| c.to_string()));
                    None
                }
                Step::Promote { .. } => {
                    notes.extend(changed.iter().map(|s| promote_note(s, first_deploy)));
                    None
                }
                Step::Approve { by } if playbook.required.contains(by) => {
                    notes.push(format!(
                        "added: environment {} requires an approval by `{by}` for every promotion (requires.approvals), and playbook {} has no approve step for it",
                        desired.name, playbook.name
                    ));
                    None
                }
                _ => None,
            };
            steps.push(PlannedStep {
                step: step.clone(),
                description: playbook::describe(step),
                skipped,
                notes,
            });
        }
    }

    Plan {
        environment: desired.name.clone(),
        client: desired.client.clone(),
        playbook: PlaybookUsed {
            name: playbook.name.clone(),
            file: playbook.source.as_ref().map(|p| p.display().to_string()),
        },
        services,
        steps,
        gates,
        warnings,
    }
}

/// Whether a canary can split `service`'s traffic: its public ports behind the edge proxy, or
/// any port behind its Service.
fn splittable(env: &Environment, traffic: Traffic, service: &str) -> bool {
    env.service(service).is_some_and(|s| match traffic {
        Traffic::EdgeProxy => s.ports.iter().any(|p| p.public.is_some()),
        Traffic::Services => !s.ports.is_empty(),
    })
}

fn promote_note(s: &ServicePlan, first_deploy: bool) -> String {
    match s.action {
        Action::Create if first_deploy => format!("{}: start", s.name),
        Action::Create => format!("{}: start (new service)", s.name),
        Action::Update | Action::Restart if s.stateful => {
            format!("{}: stop-start (stateful)", s.name)
        }
        Action::Update | Action::Restart => format!(
            "{}: blue-green: new version beside the old, switch, drain",
            s.name
        ),
        Action::Remove => format!("{}: drain and remove", s.name),
        Action::Unchanged => format!("{}: unchanged", s.name),
    }
}

fn plan_service(desired: &Service, observed: Option<&ObservedService>) -> ServicePlan {
    let want = ServiceSnapshot::from(desired);
    let mut plan = ServicePlan {
        name: desired.name.clone(),
        action: Action::Unchanged,
        changes: Vec::new(),
        stateful: desired.stateful,
        managed_by: desired.managed_by.clone(),
    };
    let Some(obs) = observed.filter(|o| !o.containers.is_empty()) else {
        plan.action = Action::Create;
        return plan;
    };
    let Some(have) = &obs.spec else {
        plan.action = Action::Update;
        plan.changes.push(Change::Unrecorded);
        return plan;
    };
    plan.changes = diff(have, &want);
    for (key, secret) in &desired.secrets {
        if have.secret_keys.contains(key) && obs.secrets.get(key) != Some(&secret.value) {
            plan.changes
                .push(Change::SecretChanged { key: key.clone() });
        }
    }
    if !plan.changes.is_empty() {
        plan.action = Action::Update;
        return plan;
    }
    // Same settings: does the newest container actually run, and is it healthy?
    let newest = obs
        .containers
        .iter()
        .max_by_key(|c| c.created)
        .expect("not empty");
    if !newest.state.is_running() {
        plan.action = Action::Restart;
        plan.changes.push(Change::NotRunning {
            state: newest.state.to_string(),
        });
    } else if newest.health == Some(HealthState::Unhealthy) {
        plan.action = Action::Restart;
        plan.changes.push(Change::Unhealthy);
    }
    plan
}

/// Field-by-field differences between recorded and desired settings (secret values aside).
fn diff(have: &ServiceSnapshot, want: &ServiceSnapshot) -> Vec<Change> {
    let ServiceSnapshot {
        image,
        command,
        env,
        secret_keys,
        ports,
        depends_on,
        health,
        stateful,
        volumes,
        managed_by,
    } = want;
    let mut out = Vec::new();
    if &have.image != image {
        out.push(Change::Image {
            from: have.image.clone(),
            to: image.clone(),
        });
    }
    if &have.command != command {
        out.push(Change::Command {
            from: have.command.clone(),
            to: command.clone(),
        });
    }
    for (k, v) in env {
        match have.env.get(k) {
            None => out.push(Change::EnvAdded {
                key: k.clone(),
                value: v.clone(),
            }),
            Some(old) if old != v => out.push(Change::EnvChanged {
                key: k.clone(),
                from: old.clone(),
                to: v.clone(),
            }),
            Some(_) => {}
        }
    }
    for k in have.env.keys().filter(|k| !env.contains_key(*k)) {
        out.push(Change::EnvRemoved { key: k.clone() });
    }
    for k in secret_keys.difference(&have.secret_keys) {
        out.push(Change::SecretAdded { key: k.clone() });
    }
    for k in have.secret_keys.difference(secret_keys) {
        out.push(Change::SecretRemoved { key: k.clone() });
    }
    for p in ports {
        match have.ports.iter().find(|o| o.name == p.name) {
            None => out.push(Change::PortAdded { port: p.clone() }),
            Some(o) if o != p => out.push(Change::PortChanged {
                from: o.clone(),
                to: p.clone(),
            }),
            Some(_) => {}
        }
    }
    for o in have
        .ports
        .iter()
        .filter(|o| !ports.iter().any(|p| p.name == o.name))
    {
        out.push(Change::PortRemoved { port: o.clone() });
    }
    for v in volumes.iter().filter(|v| !have.volumes.contains(v)) {
        out.push(Change::VolumeAdded { volume: v.clone() });
    }
    for v in have.volumes.iter().filter(|v| !volumes.contains(v)) {
        out.push(Change::VolumeRemoved { volume: v.clone() });
    }
    if &have.health != health {
        out.push(Change::Health {
            from: have.health.as_ref().map(|h| h.probe.to_string()),
            to: health.as_ref().map(|h| h.probe.to_string()),
        });
    }
    if &have.depends_on != depends_on {
        out.push(Change::DependsOn {
            from: have.depends_on.clone(),
            to: depends_on.clone(),
        });
    }
    if have.stateful != *stateful {
        out.push(Change::Stateful {
            from: have.stateful,
            to: *stateful,
        });
    }
    if &have.managed_by != managed_by {
        out.push(Change::ManagedBy {
            from: have.managed_by.clone(),
            to: managed_by.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::FakeEngine;
    use crate::engine::spec::{base_labels, production_container, production_network};
    use crate::engine::{ContainerState, Engine, Role};
    use crate::manifest::source::Source;
    use crate::manifest::{env, yaml};

    fn environment(yaml_text: &str, secret: &str) -> Environment {
        let src = Source::new("shop.yaml", yaml_text);
        let raw = yaml::parse(&src, "a manifest").expect("parses");
        env::resolve(&src, raw, &|_| Some(secret.to_string())).expect("resolves")
    }

    const SHOP: &str = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  web:\n    image: web:1\n    env: { MODE: fast }\n    secrets: { KEY: { fromEnv: K } }\n    ports: [ { name: http, container: 8080, public: 18080 } ]\n    dependsOn: [db]\n  db:\n    image: db:1\n    stateful: true\n    volumes: [ { name: data, path: /data } ]\n    managedBy: { thirdParty: hosting-co }\n";

    /// Runs `env` on the fake engine as production, as a promotion would leave it.
    async fn running(env: &Environment) -> FakeEngine {
        let engine = FakeEngine::new();
        engine
            .ensure_network(
                &production_network(&env.name),
                &base_labels(env, Role::Production, "r1"),
            )
            .await
            .unwrap();
        for s in &env.services {
            engine
                .run_container(&production_container(env, s, "r1"))
                .await
                .unwrap();
        }
        engine
    }

    /// The plan of `desired` against what `engine` runs, with the built-in playbook.
    async fn plan_against(desired: &Environment, engine: &FakeEngine) -> Plan {
        let observed = engine.observe("shop").await.unwrap();
        compute(desired, &observed, &Playbook::builtin_default())
    }

    fn service<'a>(plan: &'a Plan, name: &str) -> &'a ServicePlan {
        plan.services.iter().find(|s| s.name == name).unwrap()
    }

    #[tokio::test]
    async fn nothing_runs_so_everything_is_created_with_its_gates() {
        let env = environment(SHOP, "s1");
        let plan = plan_against(&env, &FakeEngine::new()).await;
        assert!(plan.has_changes());
        assert_eq!(plan.count(Action::Create), 2);
        assert_eq!(
            plan.gates,
            vec![Gate::ThirdParty {
                party: "hosting-co".into(),
                services: vec!["db".into()]
            }]
        );
    }

    /// A canary needs a version to share traffic with and a port to share it on: a public port
    /// behind the edge proxy, any port behind a kubernetes Service.
    #[tokio::test]
    async fn a_canary_is_skipped_without_a_port_to_split_on_as_the_platform_moves_traffic() {
        let private = SHOP.replace(", public: 18080", "");
        let engine = running(&environment(&private, "s1")).await;
        let desired = environment(&private.replace("web:1", "web:2"), "s1");
        let mut pb = Playbook::switch_only("canary".into());
        pb.steps.insert(
            0,
            Step::Canary {
                weight: playbook::Weight::new(10).unwrap(),
                hold: std::time::Duration::from_secs(1),
                analysis: None,
            },
        );
        let mut observed = engine.observe("shop").await.unwrap();
        assert_eq!(observed.traffic, Traffic::EdgeProxy);
        let canary = |plan: &Plan| plan.steps[0].skipped.clone();
        assert_eq!(
            canary(&compute(&desired, &observed, &pb)).as_deref(),
            Some("no changed service has a public port to shift traffic on")
        );
        observed.traffic = Traffic::Services;
        assert_eq!(canary(&compute(&desired, &observed, &pb)), None);
        // Only db changes: no port at all, so no canary on either platform.
        let db_only = environment(&private.replace("db:1", "db:2"), "s1");
        assert_eq!(
            canary(&compute(&db_only, &observed, &pb)).as_deref(),
            Some("no changed service has a port behind a Service to shift traffic on")
        );
    }

    #[tokio::test]
    async fn what_runs_as_declared_is_unchanged() {
        let env = environment(SHOP, "s1");
        let engine = running(&env).await;
        let plan = plan_against(&env, &engine).await;
        assert!(!plan.has_changes(), "{plan:?}");
        assert!(plan.steps.is_empty() && plan.gates.is_empty() && plan.warnings.is_empty());
    }

    #[tokio::test]
    async fn each_kind_of_change_is_reported_and_secrets_only_as_changed() {
        let env = environment(SHOP, "old-secret");
        let engine = running(&env).await;
        let next = SHOP
            .replace("web:1", "web:2")
            .replace("MODE: fast", "MODE: safe, EXTRA: x")
            .replace("container: 8080", "container: 8081");
        let desired = environment(&next, "new-secret");
        let plan = plan_against(&desired, &engine).await;
        let web = service(&plan, "web");
        assert_eq!(web.action, Action::Update);
        assert!(web.changes.contains(&Change::Image {
            from: "web:1".into(),
            to: "web:2".into()
        }));
        assert!(web.changes.contains(&Change::EnvChanged {
            key: "MODE".into(),
            from: "fast".into(),
            to: "safe".into()
        }));
        assert!(web.changes.contains(&Change::EnvAdded {
            key: "EXTRA".into(),
            value: "x".into()
        }));
        assert!(
            web.changes
                .contains(&Change::SecretChanged { key: "KEY".into() })
        );
        assert!(
            web.changes
                .iter()
                .any(|c| matches!(c, Change::PortChanged { .. }))
        );
        let db = service(&plan, "db");
        assert_eq!(db.action, Action::Unchanged);
        // The third party's service is unchanged: no authorization is needed.
        assert!(plan.gates.is_empty(), "{:?}", plan.gates);
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("old-secret") && !json.contains("new-secret"));
        let text = render::text(&plan, render::Paint { color: false });
        assert!(!text.contains("old-secret") && !text.contains("new-secret"));
    }

    #[tokio::test]
    async fn a_stopped_service_is_restarted_and_a_removed_one_removed() {
        let env = environment(SHOP, "s");
        let engine = running(&env).await;
        assert!(engine.set_state("shop-db-r1", ContainerState::Exited { code: 137 }));
        let plan = plan_against(&env, &engine).await;
        let db = service(&plan, "db");
        assert_eq!(db.action, Action::Restart);
        assert_eq!(
            db.changes,
            vec![Change::NotRunning {
                state: "exited (137)".into()
            }]
        );
        assert!(plan.warnings.iter().any(|w| w.contains("`db` is stateful")));

        let only_db = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  db:\n    image: db:1\n    stateful: true\n    volumes: [ { name: data, path: /data } ]\n    managedBy: { thirdParty: hosting-co }\n";
        let plan = plan_against(&environment(only_db, "s"), &engine).await;
        assert!(
            plan.services
                .iter()
                .any(|s| s.name == "web" && s.action == Action::Remove)
        );
    }
}
