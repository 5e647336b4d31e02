//! A Deployment's state as rollout's [`ContainerStatus`]: pure functions of the Deployment and
//! its pods, so every case is tested without a cluster.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::engine::{ContainerState, ContainerStatus, HealthState};

/// Waiting reasons that mean the pod will not come up by itself.
pub(super) const FAILED_WAITING: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The state of the one-replica Deployment `d`, from its own status and its `pods`.
///
/// A crash-looping pod is `Restarting` (and `Unhealthy` when a probe is set); an image that
/// cannot be pulled, or a Deployment past its progress deadline and not ready, is `Other` with
/// the reason; a Deployment scaled to zero is `Exited`.
pub fn from_deployment(d: &Deployment, pods: &[Pod]) -> ContainerStatus {
    let has_healthcheck = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .is_some_and(|c| c.readiness_probe.is_some());
    let wanted = d.spec.replicas.unwrap_or(1);
    let status = d.status.as_ref();
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    // Ready counts only once the controller has seen the current spec and its replicas run it:
    // a Deployment just changed still reports the ready replicas of the old template.
    let observed = match (
        d.metadata.generation,
        status.and_then(|s| s.observed_generation),
    ) {
        (Some(generation), Some(seen)) => seen >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let updated = status
        .and_then(|s| s.updated_replicas)
        .is_none_or(|u| u >= wanted);
    let ready = if observed && updated { ready } else { 0 };
    let mut restart_count = 0i64;
    let mut waiting: Option<String> = None;
    let mut running = false;
    let mut terminated: Option<i64> = None;
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for c in pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
        {
            restart_count += i64::from(c.restart_count);
            let Some(state) = &c.state else { continue };
            if let Some(w) = &state.waiting {
                waiting = waiting.or_else(|| w.reason.clone());
            }
            if state.running.is_some() {
                running = true;
            }
            if let Some(t) = &state.terminated {
                terminated = Some(i64::from(t.exit_code));
            }
        }
    }
    // The Deployment gave up waiting for progress (`progressDeadlineSeconds`).
    let stalled = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.status.as_deref() == Some("False")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    let probe_health = |h: HealthState| has_healthcheck.then_some(h);
    let (state, health) = if wanted == 0 {
        (ContainerState::Exited { code: 0 }, None)
    } else if waiting.as_deref() == Some("CrashLoopBackOff") {
        (
            ContainerState::Restarting,
            probe_health(HealthState::Unhealthy),
        )
    } else if let Some(reason) = waiting.as_deref().filter(|r| FAILED_WAITING.contains(r)) {
        (
            ContainerState::Other {
                name: format!("failing: {reason}"),
            },
            probe_health(HealthState::Unhealthy),
        )
    } else if stalled && ready < wanted {
        (
            ContainerState::Other {
                name: "failing: ProgressDeadlineExceeded".into(),
            },
            probe_health(HealthState::Unhealthy),
        )
    } else if ready >= wanted {
        (ContainerState::Running, probe_health(HealthState::Healthy))
    } else if running {
        (ContainerState::Running, probe_health(HealthState::Starting))
    } else if let Some(code) = terminated {
        (
            ContainerState::Exited { code },
            probe_health(HealthState::Unhealthy),
        )
    } else {
        (ContainerState::Created, probe_health(HealthState::Starting))
    };
    ContainerStatus {
        state,
        health,
        has_healthcheck,
        restart_count,
    }
}

/// Why pod `p` has printed nothing yet, when none of its containers has ever run (so it has no
/// log to read): its false conditions with their messages (but `Ready` and `ContainersReady`) (the scheduler's `0/3 nodes are
/// available: …` is the `PodScheduled` one) and its containers' waiting reasons. `None` for a pod
/// one of whose containers has run. A pure function.
pub fn not_started(p: &Pod) -> Option<Vec<String>> {
    let name = p.metadata.name.as_deref().unwrap_or("?");
    let status = p.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let ran = containers.iter().any(|c| {
        c.restart_count > 0
            || c.last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some())
            || c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    });
    if ran {
        return None;
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let mut lines = Vec::new();
    for c in status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
    {
        // Ready and ContainersReady only repeat that the containers are not ready.
        if c.status != "False" || matches!(c.type_.as_str(), "Ready" | "ContainersReady") {
            continue;
        }
        let Some(message) = c.message.as_deref().filter(|m| !m.is_empty()) else {
            continue;
        };
        let reason = c.reason.as_deref().unwrap_or("no reason");
        lines.push(format!(
            "pod {name} has not started ({phase}): {} is False ({reason}): {message}",
            c.type_
        ));
    }
    for c in containers {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.as_deref().unwrap_or("waiting");
        lines.push(match w.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!("container {} is waiting: {reason}: {m}", c.name),
            None => format!("container {} is waiting: {reason}", c.name),
        });
    }
    if lines.is_empty() {
        lines.push(format!("pod {name} has not started ({phase})"));
    }
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, ready: i32, probe: bool) -> Deployment {
        let mut c = json!({ "name": "web", "image": "web:1" });
        if probe {
            c["readinessProbe"] = json!({ "tcpSocket": { "port": 80 } });
        }
        serde_json::from_value(json!({
            "metadata": { "name": "shop-web-r1" },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "rollout.service": "web" } },
                "template": { "spec": { "containers": [c] } }
            },
            "status": { "readyReplicas": ready }
        }))
        .unwrap()
    }

    fn pod(state: serde_json::Value, restarts: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "shop-web-r1-abc" },
            "status": { "containerStatuses": [ {
                "name": "web", "image": "web:1", "imageID": "", "ready": false,
                "restartCount": restarts, "state": state
            } ] }
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_that_never_ran_says_why_and_one_that_ran_has_a_log() {
        let unschedulable: Pod = serde_json::from_value(json!({
            "metadata": { "name": "shop-web-r2-abc" },
            "status": { "phase": "Pending", "conditions": [
                { "type": "Ready", "status": "False", "reason": "ContainersNotReady",
                  "message": "containers with unready status: [web]" },
                { "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                  "message": "0/3 nodes are available: 3 Insufficient cpu." } ] }
        }))
        .unwrap();
        assert_eq!(
            not_started(&unschedulable).unwrap(),
            vec![
                "pod shop-web-r2-abc has not started (Pending): PodScheduled is False (Unschedulable): 0/3 nodes are available: 3 Insufficient cpu."
            ]
        );
        let pulling = pod(
            json!({ "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"web:2\"" } }),
            0,
        );
        assert_eq!(
            not_started(&pulling).unwrap(),
            vec!["container web is waiting: ImagePullBackOff: Back-off pulling image \"web:2\""]
        );
        let bare: Pod = serde_json::from_value(json!({ "metadata": { "name": "p" } })).unwrap();
        assert_eq!(
            not_started(&bare).unwrap(),
            vec!["pod p has not started (Pending)"]
        );
        assert_eq!(not_started(&pod(json!({ "running": {} }), 0)), None);
        assert_eq!(
            not_started(&pod(
                json!({ "waiting": { "reason": "CrashLoopBackOff" } }),
                2
            )),
            None,
            "a crash loop has its crashed instance's log"
        );
    }

    #[test]
    fn ready_replica_is_running_and_healthy() {
        let s = from_deployment(&deployment(1, 1, true), &[pod(json!({ "running": {} }), 0)]);
        assert_eq!(s.state, ContainerState::Running);
        assert_eq!(s.health, Some(HealthState::Healthy));
        assert!(s.has_healthcheck);
    }

    #[test]
    fn running_but_not_ready_is_starting() {
        let s = from_deployment(&deployment(1, 0, true), &[pod(json!({ "running": {} }), 0)]);
        assert_eq!(s.state, ContainerState::Running);
        assert_eq!(s.health, Some(HealthState::Starting));
    }

    #[test]
    fn crash_loop_is_restarting_and_unhealthy_with_its_restarts() {
        let s = from_deployment(
            &deployment(1, 0, true),
            &[pod(
                json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s" } }),
                4,
            )],
        );
        assert_eq!(s.state, ContainerState::Restarting);
        assert_eq!(s.health, Some(HealthState::Unhealthy));
        assert_eq!(s.restart_count, 4);
    }

    #[test]
    fn image_pull_failure_names_the_reason() {
        let s = from_deployment(
            &deployment(1, 0, false),
            &[pod(
                json!({ "waiting": { "reason": "ImagePullBackOff" } }),
                0,
            )],
        );
        assert_eq!(
            s.state,
            ContainerState::Other {
                name: "failing: ImagePullBackOff".into()
            }
        );
        assert_eq!(s.health, None, "no probe, no health");
    }

    #[test]
    fn scaled_to_zero_is_exited_and_pending_is_created() {
        let s = from_deployment(&deployment(0, 0, false), &[]);
        assert_eq!(s.state, ContainerState::Exited { code: 0 });
        let s = from_deployment(
            &deployment(1, 0, true),
            &[pod(
                json!({ "waiting": { "reason": "ContainerCreating" } }),
                0,
            )],
        );
        assert_eq!(s.state, ContainerState::Created);
        assert_eq!(s.health, Some(HealthState::Starting));
    }

    #[test]
    fn terminated_container_is_exited_with_its_code() {
        let s = from_deployment(
            &deployment(1, 0, false),
            &[pod(json!({ "terminated": { "exitCode": 3 } }), 1)],
        );
        assert_eq!(s.state, ContainerState::Exited { code: 3 });
        assert_eq!(s.restart_count, 1);
    }

    #[test]
    fn ready_replicas_of_an_older_generation_do_not_count() {
        let mut d = deployment(1, 1, true);
        d.metadata.generation = Some(2);
        d.status = serde_json::from_value(
            json!({ "observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1 }),
        )
        .unwrap();
        let running = [pod(json!({ "running": {} }), 0)];
        assert_eq!(
            from_deployment(&d, &running).health,
            Some(HealthState::Starting)
        );
        d.status = serde_json::from_value(
            json!({ "observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 0 }),
        )
        .unwrap();
        assert_eq!(
            from_deployment(&d, &running).health,
            Some(HealthState::Starting),
            "the ready replica runs the old template"
        );
        d.status = serde_json::from_value(
            json!({ "observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 1 }),
        )
        .unwrap();
        assert_eq!(
            from_deployment(&d, &running).health,
            Some(HealthState::Healthy)
        );
    }

    #[test]
    fn past_its_progress_deadline_and_not_ready_is_failing() {
        let mut d = deployment(1, 0, true);
        d.status = serde_json::from_value(json!({
            "readyReplicas": 0,
            "conditions": [ { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded" } ]
        }))
        .unwrap();
        let s = from_deployment(&d, &[pod(json!({ "running": {} }), 0)]);
        assert_eq!(
            s.state,
            ContainerState::Other {
                name: "failing: ProgressDeadlineExceeded".into()
            }
        );
        assert_eq!(s.health, Some(HealthState::Unhealthy));
        // Ready after all: the old condition no longer matters.
        d.status.as_mut().unwrap().ready_replicas = Some(1);
        assert_eq!(from_deployment(&d, &[]).state, ContainerState::Running);
    }
}
