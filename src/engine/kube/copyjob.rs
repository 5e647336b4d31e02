//! `copyData` on a cluster that serves no VolumeSnapshots: production's claim streamed into the
//! test claim by two Jobs ([`KubeEngine::copy_by_job`]).
//!
//! A pod can only mount a claim of its own namespace, so the copy has two ends:
//!
//! 1. the **sink**, a Job in the test namespace mounting the (fresh, empty) test claim, listens
//!    once on port [`COPY_PORT`] and unpacks the tar stream it receives ([`SINK_SCRIPT`]);
//! 2. once the sink's pod runs and has an address, the **source**, a Job in `rollout-<env>`
//!    mounting production's claim read-only, on the node of the production pod that mounts it
//!    (a `ReadWriteOnce` claim can be mounted by several pods of one node, not of two), connects
//!    to the sink and sends `tar c` of the claim ([`SOURCE_SCRIPT`]); it tries again while the
//!    sink refuses, never after it has connected;
//! 3. both Jobs are waited to completion (`backoffLimit: 0`, a deadline of [`COPY_LIMIT`]): the
//!    copy is good only when both succeeded, which means the sink read a whole archive and the
//!    source's `tar` read every file. Both Jobs are deleted afterwards, whatever happened; a run
//!    killed half-way leaves them labelled with the run, and the teardown (or the garbage
//!    collection after a crash) deletes them by those labels, the source in production's
//!    namespace included.
//!
//! The data flows from production's namespace to the test namespace, pod to pod: a
//! NetworkPolicy must let the source's pods (label `rollout.copy`) reach port [`COPY_PORT`] in
//! `<env>-test-<run>`. The image (`kubernetes.copyImage`, [`DEFAULT_COPY_IMAGE`] by default) needs
//! a busybox-compatible `sh`, `nc` with `-e`, and `tar`. Production keeps running during the copy
//! (a pod cannot be frozen), so unlike a snapshot the copy is not even crash-consistent: a file
//! written while it is read may arrive torn. The run says so.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvVar, Event, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, Pod, PodSpec,
    PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams};

use super::{
    ClaimCopy, KubeEngine, POLL, api_error, delete_ok, split_labels, status::FAILED_WAITING,
};
use crate::engine::EngineError;

/// The image of both ends of a copy unless `kubernetes.copyImage` names another.
pub const DEFAULT_COPY_IMAGE: &str = "busybox:1.36";

/// The port the sink listens on.
pub const COPY_PORT: u16 = 7000;

/// How long a copy may take, both Jobs' `activeDeadlineSeconds`.
pub const COPY_LIMIT: Duration = Duration::from_secs(3600);

/// How long a copy pod may take to start (scheduled, image pulled, running).
pub const START_LIMIT: Duration = Duration::from_secs(300);

/// The label on both copy pods, naming their Job (so each Job's pod is found).
pub const COPY_LABEL: &str = "rollout.copy";

/// How many of a failed copy pod's last lines the error quotes.
const LOG_LINES: i64 = 20;

/// The sink's command (`sh -c`): one connection, unpacked into the claim at `/data`, owners kept
/// by number (the image's user names mean nothing for production's files). An empty or cut
/// stream is an error of `tar`, and with `pipefail` of the Job.
pub const SINK_SCRIPT: &str =
    "set -o pipefail; nc -l -p 7000 | tar -x -f - --numeric-owner -C /data";

/// The source's command (`sh -c`, the sink's address in `$SINK`): `tar c` of `/data` sent to the
/// sink. A refused connection (the sink not listening yet) is tried again, for up to a minute;
/// once connected (the marker in `/tmp` tells) the exit code is `tar`'s own.
pub const SOURCE_SCRIPT: &str = r#"n=0
until nc -w 10 "$SINK" 7000 -e sh -c 'touch /tmp/connected; exec tar -c -f - -C /data .'; do
  [ -e /tmp/connected ] && exit 1
  n=$((n+1))
  if [ "$n" -ge 60 ]; then echo "rollout copy: the sink at $SINK:7000 never answered" >&2; exit 1; fi
  sleep 1
done"#;

/// One end of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Sink,
    Source,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Sink => "sink",
            End::Source => "source",
        }
    }
}

/// The Job name of one end of the copy into claim `to`: `<to>-sink` or `<to>-source`, shortened
/// (with a hash of the whole, so two long names stay apart) to fit the 63 characters a label
/// value, and so a Job's name, may have.
pub fn job_name(to: &str, end: &str) -> String {
    let full = format!("{to}-{end}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let keep = 63 - 1 - 8 - 1 - end.len();
    let head: String = to.chars().take(keep).collect();
    format!("{}-{:08x}-{end}", head.trim_end_matches('-'), hash as u32)
}

/// What one end of a copy is: its Job's name and namespace, its claim and how it mounts it.
struct Plan<'a> {
    end: End,
    name: String,
    namespace: &'a str,
    claim: &'a str,
    image: &'a str,
    labels: &'a BTreeMap<String, String>,
    /// The source's: the sink's pod address.
    sink: Option<String>,
    /// The source's: the node of the production pod that mounts the claim.
    node: Option<String>,
}

/// The Job of one end ([`SINK_SCRIPT`] or [`SOURCE_SCRIPT`]). A pure function.
fn job(p: &Plan<'_>) -> Job {
    let (labels, annotations) = split_labels(p.labels);
    let mut pod_labels = labels.clone();
    pod_labels.insert(COPY_LABEL.to_string(), p.name.clone());
    let read_only = p.end == End::Source;
    let script = match p.end {
        End::Sink => SINK_SCRIPT,
        End::Source => SOURCE_SCRIPT,
    };
    let affinity = p.node.as_ref().map(|node| Affinity {
        // As a DaemonSet pins its pods: through the scheduler, by the node's name.
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".to_string(),
                        operator: "In".to_string(),
                        values: Some(vec![node.clone()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    Job {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.to_string()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(COPY_LIMIT.as_secs() as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    affinity,
                    containers: vec![Container {
                        name: p.end.as_str().to_string(),
                        image: Some(p.image.to_string()),
                        command: Some(vec!["sh".into(), "-c".into(), script.to_string()]),
                        env: p.sink.as_ref().map(|ip| {
                            vec![EnvVar {
                                name: "SINK".to_string(),
                                value: Some(ip.clone()),
                                ..Default::default()
                            }]
                        }),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "data".to_string(),
                                mount_path: "/data".to_string(),
                                read_only: Some(read_only),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "scratch".to_string(),
                                mount_path: "/tmp".to_string(),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "data".to_string(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: p.claim.to_string(),
                                read_only: Some(read_only),
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "scratch".to_string(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How a Job ended, from its status: `Some(true)` succeeded, `Some(false)` failed (its pod
/// failed, or its deadline passed), `None` still running. A pure function.
fn finished(j: &Job) -> Option<bool> {
    let status = j.status.as_ref()?;
    if status.succeeded.unwrap_or(0) > 0 {
        return Some(true);
    }
    let failed_condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    (status.failed.unwrap_or(0) > 0 || failed_condition).then_some(false)
}

/// The node of the running pod (in `pods`) that mounts claim `claim`, if one does. A pure
/// function.
fn node_mounting(pods: &[Pod], claim: &str) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim)
                    })
                })
        })
        .and_then(|p| p.spec.as_ref()?.node_name.clone())
}

/// What stops a copy pod from ever starting, read off its status: a waiting reason of
/// [`FAILED_WAITING`] (with its message), or, for the sink, the pod ended already (a source may
/// end as soon as it has sent a small claim). A pure function.
fn stuck(p: &Pod, end: End) -> Option<String> {
    let status = p.status.as_ref()?;
    if let (End::Sink, Some(phase @ ("Failed" | "Succeeded"))) = (end, status.phase.as_deref()) {
        return Some(format!("it ended ({phase}) before the copy began"));
    }
    status.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FAILED_WAITING
            .contains(&reason)
            .then(|| match &waiting.message {
                Some(m) => format!("{reason}: {m}"),
                None => reason.to_string(),
            })
    })
}

impl KubeEngine {
    /// Makes `copy` with two Jobs, as the module says. The test claim is created here, fresh, with
    /// production's storage class and size.
    pub(super) async fn copy_by_job(&self, copy: &ClaimCopy<'_>) -> Result<(), EngineError> {
        let modes = copy
            .source
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default();
        if modes.iter().any(|m| m == "ReadWriteOncePod") {
            return Err(EngineError::Call {
                action: "copy",
                object: format!("PersistentVolumeClaim {}", copy.from),
                reason: "it is ReadWriteOncePod, so no pod but production's may mount it, and the cluster serves no VolumeSnapshots to copy it by".into(),
            });
        }
        let pods: Vec<Pod> = self.list_in(copy.prod_ns, &ListParams::default()).await?;
        let node = node_mounting(&pods, copy.from);
        let image = self.copy_image.as_deref().unwrap_or(DEFAULT_COPY_IMAGE);
        let sink = Plan {
            end: End::Sink,
            name: job_name(copy.to, "sink"),
            namespace: copy.test_ns,
            claim: copy.to,
            image,
            labels: copy.labels,
            sink: None,
            node: None,
        };
        let mut source_end = Plan {
            end: End::Source,
            name: job_name(copy.to, "source"),
            namespace: copy.prod_ns,
            claim: copy.from,
            image,
            labels: copy.labels,
            sink: None,
            node,
        };
        // A copy tried again (after a lost connection) finds its own Jobs of the first try.
        self.remove_job(&sink).await?;
        self.remove_job(&source_end).await?;
        self.apply_test_claim(copy, None, None).await?;
        let copied = self.stream(&sink, &mut source_end).await;
        let removed_source = self.remove_job(&source_end).await;
        let removed_sink = self.remove_job(&sink).await;
        copied.and(removed_source).and(removed_sink)
    }

    /// Steps 1 to 3 of the module: the sink, its address, the source, both to completion (a
    /// failed end ends the wait at once: a sink whose source gave up would listen until its
    /// deadline).
    async fn stream(&self, sink: &Plan<'_>, source: &mut Plan<'_>) -> Result<(), EngineError> {
        let sinks: Api<Job> = self.api(sink.namespace);
        self.apply(&sinks, &sink.name, &job(sink)).await?;
        source.sink = self.started(sink).await?;
        let sources: Api<Job> = self.api(source.namespace);
        self.apply(&sources, &source.name, &job(source)).await?;
        self.started(source).await?;
        let t0 = tokio::time::Instant::now();
        let mut done = [false, false];
        loop {
            for (i, (api, end)) in [(&sinks, sink), (&sources, &*source)]
                .into_iter()
                .enumerate()
            {
                if done[i] {
                    continue;
                }
                let what = format!("Job {} in {}", end.name, end.namespace);
                let j = api
                    .get(&end.name)
                    .await
                    .map_err(|e| api_error(e, "read", &what))?;
                match finished(&j) {
                    Some(true) => done[i] = true,
                    Some(false) => {
                        return Err(EngineError::Call {
                            action: "copy",
                            object: format!(
                                "PersistentVolumeClaim {} -> {}",
                                source.claim, sink.claim
                            ),
                            reason: format!(
                                "its {} {what} failed; the sink said: {}; the source said: {}",
                                end.end.as_str(),
                                self.copy_log(sink).await,
                                self.copy_log(source).await
                            ),
                        });
                    }
                    None => {}
                }
            }
            if done == [true, true] {
                return Ok(());
            }
            // The Jobs' own deadline ends them; this bound only guards against a cluster that
            // never says so.
            if t0.elapsed() > COPY_LIMIT + START_LIMIT {
                return Err(EngineError::Call {
                    action: "copy",
                    object: format!("PersistentVolumeClaim {} -> {}", source.claim, sink.claim),
                    reason: format!("not finished after {}s", t0.elapsed().as_secs()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (up to [`START_LIMIT`]) until an end's pod has started: the sink's running with an
    /// address (which is returned), the source's running or already done. A pod that will never
    /// start (its image cannot be pulled...), or a Job whose pod cannot even be created (a Pod
    /// Security level refusing it...), ends the wait at once, naming why.
    async fn started(&self, end: &Plan<'_>) -> Result<Option<String>, EngineError> {
        let pods: Api<Pod> = self.api(end.namespace);
        let events: Api<Event> = self.api(end.namespace);
        let lp = ListParams::default().labels(&format!("{COPY_LABEL}={}", end.name));
        let refused = ListParams::default().fields(&format!(
            "involvedObject.kind=Job,involvedObject.name={},reason=FailedCreate",
            end.name
        ));
        let what = format!("Job {} in {}", end.name, end.namespace);
        let fail = |reason: String| EngineError::Call {
            action: "copy",
            object: what.clone(),
            reason,
        };
        let t0 = tokio::time::Instant::now();
        loop {
            let list = pods
                .list(&lp)
                .await
                .map_err(|e| api_error(e, "list", &format!("Pods of {what}")))?
                .items;
            let mut last = "no pod yet".to_string();
            if list.is_empty() {
                let said = events
                    .list(&refused)
                    .await
                    .map_err(|e| api_error(e, "list", &format!("events of {what}")))?
                    .items;
                if let Some(message) = said.iter().filter_map(|e| e.message.clone()).next_back() {
                    return Err(fail(format!("its pod cannot be created: {message}")));
                }
            }
            for p in &list {
                if let Some(reason) = stuck(p, end.end) {
                    return Err(fail(format!(
                        "its pod cannot start ({reason}; image {})",
                        end.image
                    )));
                }
                let status = p.status.as_ref();
                let phase = status.and_then(|s| s.phase.as_deref());
                let ip = status
                    .and_then(|s| s.pod_ip.clone())
                    .filter(|ip| !ip.is_empty());
                match (end.end, phase, ip) {
                    (End::Sink, Some("Running"), Some(ip)) => return Ok(Some(ip)),
                    (End::Source, Some("Running" | "Succeeded" | "Failed"), _) => return Ok(None),
                    _ => {
                        last = format!(
                            "its pod is {}",
                            phase.unwrap_or("not scheduled yet").to_lowercase()
                        );
                        if let Some(c) = status
                            .and_then(|s| s.conditions.as_ref())
                            .and_then(|cs| cs.iter().find(|c| c.status == "False"))
                            .and_then(|c| c.message.clone())
                        {
                            last = format!("{last}: {c}");
                        }
                    }
                }
            }
            if t0.elapsed() + POLL > START_LIMIT {
                return Err(fail(format!(
                    "its pod was not running after {}s ({last})",
                    START_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last lines of an end's pod, for an error: never an error itself.
    async fn copy_log(&self, end: &Plan<'_>) -> String {
        let pods: Api<Pod> = self.api(end.namespace);
        let lp = ListParams::default().labels(&format!("{COPY_LABEL}={}", end.name));
        let Some(name) = pods
            .list(&lp)
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next())
            .and_then(|p| p.metadata.name)
        else {
            return "(no pod)".to_string();
        };
        let params = LogParams {
            tail_lines: Some(LOG_LINES),
            ..Default::default()
        };
        match pods.logs(&name, &params).await {
            Ok(text) if text.trim().is_empty() => "(printed nothing)".to_string(),
            Ok(text) => text.trim().lines().collect::<Vec<_>>().join(" | "),
            Err(e) => format!("(its log could not be read: {e})"),
        }
    }

    /// Deletes an end's Job and its pod, and waits until the Job is gone (a Job of the same name
    /// cannot be created before). Gone already is fine.
    async fn remove_job(&self, end: &Plan<'_>) -> Result<(), EngineError> {
        let api: Api<Job> = self.api(end.namespace);
        let what = format!("Job {} in {}", end.name, end.namespace);
        match api.delete(&end.name, &DeleteParams::background()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            r => delete_ok(r, &what)?,
        }
        let t0 = tokio::time::Instant::now();
        loop {
            let left = api
                .get_opt(&end.name)
                .await
                .map_err(|e| api_error(e, "read", &what))?;
            if left.is_none() {
                return Ok(());
            }
            if t0.elapsed() + POLL > START_LIMIT {
                return Err(EngineError::Call {
                    action: "delete",
                    object: what,
                    reason: format!("still there {}s after its deletion", t0.elapsed().as_secs()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_names_fit_a_label_value_and_long_ones_stay_apart() {
        assert_eq!(
            job_name("shop-test-r9-db-data", "sink"),
            "shop-test-r9-db-data-sink"
        );
        let long = "a-very-long-environment-name-test-20261203-154000-database-data";
        let a = job_name(long, "source");
        let b = job_name(&format!("{long}2"), "source");
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert!(a.ends_with("-source"));
        assert_ne!(a, b);
        assert_eq!(a, job_name(long, "source"), "the same every time");
    }

    #[test]
    fn a_job_ends_by_success_failure_or_its_deadline() {
        let j = |status: serde_json::Value| -> Job {
            serde_json::from_value(json!({ "metadata": {}, "status": status })).unwrap()
        };
        assert_eq!(finished(&j(json!({ "active": 1 }))), None);
        assert_eq!(finished(&j(json!({ "succeeded": 1 }))), Some(true));
        assert_eq!(finished(&j(json!({ "failed": 1 }))), Some(false));
        assert_eq!(
            finished(&j(
                json!({ "conditions": [ { "type": "Failed", "status": "True", "reason": "DeadlineExceeded" } ] })
            )),
            Some(false)
        );
        let none: Job = serde_json::from_value(json!({ "metadata": {} })).unwrap();
        assert_eq!(finished(&none), None);
    }

    #[test]
    fn the_source_goes_to_the_node_of_the_running_pod_that_mounts_the_claim() {
        let pod = |name: &str, claim: &str, node: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": { "name": name },
                "spec": { "nodeName": node, "containers": [],
                    "volumes": [ { "name": "d", "persistentVolumeClaim": { "claimName": claim } } ] },
                "status": { "phase": phase },
            }))
            .unwrap()
        };
        let pods = vec![
            pod("web", "other", "node-a", "Running"),
            pod("db-old", "shop-db-data", "node-b", "Failed"),
            pod("db", "shop-db-data", "node-c", "Running"),
        ];
        assert_eq!(
            node_mounting(&pods, "shop-db-data").as_deref(),
            Some("node-c")
        );
        assert_eq!(node_mounting(&pods, "nobody"), None);
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_is_stuck_and_so_is_a_sink_that_ended() {
        let pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({ "metadata": {}, "status": status })).unwrap()
        };
        let pull = json!({ "phase": "Pending", "containerStatuses": [ { "name": "sink", "image": "", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "ErrImagePull", "message": "not found" } } } ] });
        assert_eq!(
            stuck(&pod(pull), End::Source),
            Some("ErrImagePull: not found".into())
        );
        assert_eq!(stuck(&pod(json!({ "phase": "Pending" })), End::Sink), None);
        assert!(
            stuck(&pod(json!({ "phase": "Failed" })), End::Sink)
                .unwrap()
                .contains("ended (Failed)")
        );
        assert_eq!(
            stuck(&pod(json!({ "phase": "Succeeded" })), End::Source),
            None,
            "a small claim is sent at once"
        );
    }

    #[test]
    fn the_source_mounts_production_read_only_on_its_node_and_knows_the_sink() {
        let labels = BTreeMap::from([("rollout.run".to_string(), "r9".to_string())]);
        let j = job(&Plan {
            end: End::Source,
            name: "x-source".into(),
            namespace: "rollout-shop",
            claim: "shop-db-data",
            image: "busybox:1.36",
            labels: &labels,
            sink: Some("10.0.0.7".into()),
            node: Some("node-c".into()),
        });
        let v = serde_json::to_value(&j).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"],
            json!({ "claimName": "shop-db-data", "readOnly": true })
        );
        assert_eq!(
            pod["containers"][0]["env"],
            json!([ { "name": "SINK", "value": "10.0.0.7" } ])
        );
        assert_eq!(
            pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0],
            json!({ "key": "metadata.name", "operator": "In", "values": ["node-c"] })
        );
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"][COPY_LABEL],
            "x-source"
        );
        assert_eq!(v["spec"]["backoffLimit"], 0);
        assert_eq!(pod["restartPolicy"], "Never");
    }
}
