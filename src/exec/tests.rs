//! The step loop's decisions, driven with the fake engine: what a failed update puts back,
//! where gates stop a run before production is touched, what a rehearsal tears down, and how
//! recovery settles a run the journal left open. The engine's own behaviour is tested against
//! the real Docker engine (`tests/`) and the mock API server (`engine/kube/mock*`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use super::promote::{Options, promote};
use crate::engine::fake::{FakeCall, FakeEngine};
use crate::engine::{ContainerState, Engine};
use crate::manifest::env::{self, Environment};
use crate::manifest::playbook::{self, Playbook};
use crate::manifest::{source::Source, yaml};
use crate::progress::Silent;
use crate::report::run::{Outcome, RunKind, RunReport, StepStatus};
use crate::store::{Grant, GrantKind, RevisionOutcome, Store};

/// db: stateful, a volume, no port (so no edge proxy is involved); `image` is its image.
fn shop(image: &str, managed_by: Option<&str>) -> Environment {
    let managed = managed_by
        .map(|p| format!("    managedBy: {{ thirdParty: {p} }}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  db:\n    image: {image}\n    stateful: true\n    volumes: [ {{ name: data, path: /data }} ]\n{managed}"
    );
    let src = Source::new("shop.yaml", text.as_str());
    let raw = yaml::parse(&src, "a manifest").expect("parses");
    env::resolve(&src, raw, &|_| None).expect("resolves")
}

fn book(steps: &str) -> Playbook {
    let text = format!("apiVersion: rollout/v1\nkind: Playbook\nname: p\nsteps:\n{steps}");
    let src = Source::new("p.yaml", text.as_str());
    let raw = yaml::parse(&src, "a playbook").expect("parses");
    playbook::resolve(&src, raw).expect("resolves")
}

struct Bench {
    engine: FakeEngine,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Bench {
            engine: FakeEngine::with_images(["db:1", "busybox-util"]),
            store: Arc::new(Store::open(dir.path()).unwrap()),
            _dir: dir,
        }
    }

    async fn promote(
        &self,
        env: &Environment,
        pb: &Playbook,
        run: &str,
        grants: Vec<Grant>,
    ) -> RunReport {
        let observed = self.engine.observe(&env.name).await.unwrap();
        let plan = crate::plan::compute(env, &observed, pb);
        let journal = Journal::new(self.store.clone(), &env.name, run);
        let opts = Options {
            bind: "127.0.0.1".parse().unwrap(),
            emergency: None,
            reason: None,
            kind: RunKind::Promotion,
            grants,
            resume: None,
        };
        let now = jiff::Timestamp::now();
        promote(
            &self.engine,
            &journal,
            env,
            pb,
            &plan,
            run,
            now,
            &opts,
            &Silent,
            &CancellationToken::new(),
        )
        .await
    }

    async fn rehearse(&self, env: &Environment, pb: &Playbook) -> RunReport {
        let now = jiff::Timestamp::now();
        super::rehearse(
            &self.engine,
            env,
            pb,
            "r1",
            now,
            &Silent,
            &CancellationToken::new(),
        )
        .await
    }

    fn writes(&self) -> Vec<FakeCall> {
        self.engine
            .calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    FakeCall::RunContainer { .. } | FakeCall::StopContainer { .. }
                )
            })
            .collect()
    }
}

fn approval(run: &str, role: &str, who: &str, kind: GrantKind) -> Grant {
    Grant {
        run: run.into(),
        environment: "shop".into(),
        kind,
        gate: role.into(),
        who: who.into(),
        reference: Some("CHG-7".into()),
        note: Some("ok".into()),
        expires: None,
        at: jiff::Timestamp::now(),
    }
}

#[tokio::test]
async fn a_stateful_update_whose_new_version_cannot_start_puts_the_old_one_back() {
    let b = Bench::new();
    let pb = book("  - promote: {}\n");
    let first = b.promote(&shop("db:1", None), &pb, "r1", vec![]).await;
    assert_eq!(first.outcome, Outcome::Promoted, "{first:#?}");
    let old = b.engine.containers();
    assert_eq!(old.len(), 1);
    // db:2 is not on the engine: the new container cannot be created once the old one stopped.
    let report = b.promote(&shop("db:2", None), &pb, "r2", vec![]).await;
    let Outcome::RolledBack { reason } = &report.outcome else {
        panic!("{report:#?}")
    };
    assert!(reason.contains("db:2"), "{reason}");
    let back = b
        .engine
        .container(&old[0].spec.name)
        .expect("the old container is kept");
    assert_eq!(back.state, ContainerState::Running, "started again");
    let history = b.store.history("shop").unwrap();
    assert!(matches!(
        history.iter().find(|r| r.run == "r2").unwrap().outcome,
        RevisionOutcome::RolledBack { .. }
    ));
    assert_eq!(report.steps[0].status, StepStatus::Failed);
}

#[tokio::test]
async fn an_approve_step_without_an_approval_parks_the_run_before_production_is_touched() {
    let b = Bench::new();
    let pb = book("  - approve: { by: client }\n  - promote: {}\n");
    let report = b.promote(&shop("db:1", None), &pb, "r1", vec![]).await;
    let Outcome::Refused { reason } = &report.outcome else {
        panic!("{report:#?}")
    };
    assert!(
        reason.contains("rollout approve r1 --by client"),
        "{reason}"
    );
    assert_eq!(report.gate_step, Some(0));
    assert_eq!(report.awaiting[0].gate, "client");
    assert_eq!(report.steps[0].status, StepStatus::NotRun);
    assert!(b.writes().is_empty(), "{:?}", b.writes());
    assert!(report.revision.is_none(), "no revision begins at a gate");
    assert!(b.store.history("shop").unwrap().is_empty());
}

#[tokio::test]
async fn a_recorded_approval_opens_the_gate_and_is_reported() {
    let b = Bench::new();
    let pb = book("  - approve: { by: client }\n  - promote: {}\n");
    let grants = vec![approval("r1", "client", "carol", GrantKind::Approval)];
    let report = b.promote(&shop("db:1", None), &pb, "r1", grants).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report:#?}");
    assert_eq!(report.approvals[0].by, "carol");
    assert_eq!(report.steps[0].detail, "approved by carol as `client`: ok");
}

#[tokio::test]
async fn a_third_party_gate_waits_for_its_authorization_and_nothing_starts() {
    let b = Bench::new();
    let pb = book("  - promote: {}\n");
    let env = shop("db:1", Some("hosting-co"));
    let report = b.promote(&env, &pb, "r1", vec![]).await;
    let Outcome::Refused { reason } = &report.outcome else {
        panic!("{report:#?}")
    };
    assert!(reason.contains("third party `hosting-co`"), "{reason}");
    assert_eq!(report.awaiting[0].kind, GrantKind::Authorization);
    assert!(report.steps.is_empty());
    assert!(b.writes().is_empty());
    let grants = vec![approval(
        "r1",
        "hosting-co",
        "dan",
        GrantKind::Authorization,
    )];
    let report = b.promote(&env, &pb, "r1", grants).await;
    assert_eq!(report.outcome, Outcome::Promoted, "{report:#?}");
    assert_eq!(report.authorizations[0].reference, "CHG-7");
}

#[tokio::test]
async fn a_playbook_without_a_promote_step_never_reports_promoted() {
    let b = Bench::new();
    let pb = book("  - smoke: { target: production, checks: [] }\n");
    let report = b.promote(&shop("db:1", None), &pb, "r1", vec![]).await;
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            reason: "the playbook has no promote step: production was not switched".into()
        }
    );
}

#[tokio::test]
async fn a_rehearsal_whose_test_version_fails_tears_down_what_it_made_and_runs_nothing_after() {
    let b = Bench::new();
    let pb = book("  - testEnv: {}\n  - smoke: { target: test, checks: [] }\n  - promote: {}\n");
    let env = shop("db:9", None);
    let report = b.rehearse(&env, &pb).await;
    let Outcome::Failed { reason } = &report.outcome else {
        panic!("{report:#?}")
    };
    assert!(reason.contains("db:9"), "{reason}");
    let statuses: Vec<StepStatus> = report.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [StepStatus::Failed, StepStatus::NotRun, StepStatus::NotRun]
    );
    assert!(
        report.steps[1]
            .detail
            .starts_with("not run: an earlier step failed (")
    );
    assert!(
        report.teardown.is_some(),
        "what the failed test version made is removed"
    );
    assert!(
        b.engine
            .calls()
            .iter()
            .any(|c| matches!(c, FakeCall::RemoveLabelled { .. }))
    );
    assert!(
        b.writes()
            .iter()
            .all(|c| !matches!(c, FakeCall::StopContainer { .. }))
    );
}

#[tokio::test]
async fn a_rehearsal_skips_every_production_step_and_passes_on_the_test_version() {
    let b = Bench::new();
    let pb = book(
        "  - testEnv: {}\n  - smoke: { target: test }\n  - approve: { by: client }\n  - promote: {}\n  - smoke: { target: production, checks: [] }\n",
    );
    let env = shop("db:1", None);
    let report = b.rehearse(&env, &pb).await;
    assert_eq!(report.outcome, Outcome::Passed, "{report:#?}");
    let statuses: Vec<StepStatus> = report.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [
            StepStatus::Ok,
            StepStatus::Ok,
            StepStatus::Skipped,
            StepStatus::Skipped,
            StepStatus::Skipped
        ]
    );
    assert!(
        report.steps[0]
            .detail
            .ends_with("is up: 1 services healthy"),
        "{}",
        report.steps[0].detail
    );
    assert!(
        b.engine.observe("shop").await.unwrap().services.is_empty(),
        "production untouched"
    );
}

#[tokio::test]
async fn recovery_undoes_a_run_that_stopped_a_stateful_service_before_its_switch() {
    let b = Bench::new();
    let pb = book("  - promote: {}\n");
    let env1 = shop("db:1", None);
    assert_eq!(
        b.promote(&env1, &pb, "r1", vec![]).await.outcome,
        Outcome::Promoted
    );
    let old = b.engine.containers()[0].spec.name.clone();
    // What a run killed right after stopping db would have left: its begin and its stop intent.
    let env2 = shop("db:2", None);
    let observed = b.engine.observe("shop").await.unwrap();
    let plan = crate::plan::compute(&env2, &observed, &pb);
    let journal = Journal::new(b.store.clone(), "shop", "r2");
    let d = super::promote::Deployment::new(
        &b.engine,
        &env2,
        &plan,
        "r2",
        "127.0.0.1".parse().unwrap(),
        &journal,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let opts = Options {
        bind: "127.0.0.1".parse().unwrap(),
        emergency: None,
        reason: None,
        kind: RunKind::Promotion,
        grants: vec![],
        resume: None,
    };
    let started = RunReport::new(RunKind::Promotion, "r2", &env2, &pb, jiff::Timestamp::now());
    let n = super::promote::begin_revision(
        &journal,
        &env2,
        &pb,
        &plan,
        "r2",
        jiff::Timestamp::now(),
        &opts,
        &started,
        &d,
    )
    .await
    .unwrap();
    journal
        .intent(
            "stop",
            serde_json::json!({ "service": "db", "container": old }),
        )
        .await
        .unwrap();
    b.engine
        .stop_container(&old, std::time::Duration::ZERO)
        .await
        .unwrap();

    let recovered = super::recover::recover(
        &b.engine,
        &b.store,
        &env2,
        "r2",
        "r3",
        "127.0.0.1".parse().unwrap(),
        &Silent,
    )
    .await
    .unwrap();
    assert_eq!(recovered.action, "undone");
    assert_eq!(recovered.revision, n);
    assert!(
        matches!(recovered.outcome, Outcome::RolledBack { .. }),
        "{recovered:?}"
    );
    assert_eq!(
        b.engine.container(&old).unwrap().state,
        ContainerState::Running
    );
    let history = b.store.history("shop").unwrap();
    assert!(matches!(
        history.iter().find(|r| r.run == "r2").unwrap().outcome,
        RevisionOutcome::RolledBack { .. }
    ));
    // Recovery is idempotent: the run is settled, nothing is left open.
    assert!(b.store.open_runs("shop").unwrap().is_empty());
}
