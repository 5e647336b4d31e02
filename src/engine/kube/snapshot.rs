//! `copyData` on the kubernetes backend: a test version's claim restored from a VolumeSnapshot of
//! production's ([`KubeEngine::copy_by_snapshot`]).
//!
//! A claim can only be restored from a snapshot in its own namespace, and the test version has a
//! namespace of its own, so the snapshot is moved across the way the CSI snapshotter allows
//! (static provisioning of a `VolumeSnapshotContent`):
//!
//! 1. a VolumeSnapshot of production's claim, in `rollout-<env>`, waited until `readyToUse`;
//! 2. its content's `deletionPolicy` set to `Retain`, then that snapshot and its content object
//!    deleted: the storage's snapshot (its `snapshotHandle`) stays, owned by nothing;
//! 3. a new `VolumeSnapshotContent` for that handle, bound ahead to a VolumeSnapshot of the same
//!    name in the test namespace, with `deletionPolicy: Delete`; that VolumeSnapshot created
//!    from it and waited until `readyToUse`;
//! 4. the test claim applied with the snapshot as its `dataSource`, production's storage class
//!    and at least production's size.
//!
//! Deleting the test namespace at teardown deletes its VolumeSnapshot, and with it the content
//! and the storage's snapshot. The copy is crash-consistent (like a power cut: production is not
//! paused, the platform cannot freeze a pod); databases recover from their journal as after one.
//! On clusters that serve no `snapshot.storage.k8s.io/v1` nothing is done here: the copy is
//! streamed by two Jobs instead ([`super::copyjob`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use super::{ClaimCopy, KubeEngine, POLL, VOLUME_SIZE, api_error, delete_ok, split_labels};
use crate::engine::EngineError;

/// How long a snapshot may take to be ready to use.
pub const SNAPSHOT_LIMIT: Duration = Duration::from_secs(600);

const GROUP: &str = "snapshot.storage.k8s.io";

fn snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

fn content_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshotContent"),
        "volumesnapshotcontents",
    )
}

/// Kubernetes quantities compared by what they mean (`1Gi` > `500Mi`); `None` for a form this
/// does not read. A pure function.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u128 = n.parse().ok()?;
    let factor: u128 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000u128.pow(2),
        "G" => 1000u128.pow(3),
        "T" => 1000u128.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    Some(n * factor)
}

/// The larger of two sizes as written; the first when either cannot be read.
fn larger(a: String, b: Option<String>) -> String {
    match b {
        Some(b)
            if quantity_bytes(&b)
                .zip(quantity_bytes(&a))
                .is_some_and(|(b, a)| b > a) =>
        {
            b
        }
        _ => a,
    }
}

/// How [`KubeEngine::copy_by_snapshot`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotted {
    /// The test claim is restored from a snapshot.
    Done,
    /// The cluster serves no VolumeSnapshots; nothing was done.
    NotServed,
}

fn not_served(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubeEngine {
    /// Makes `copy` through a VolumeSnapshot, as the module says; nothing done, and
    /// [`Snapshotted::NotServed`], where the cluster serves no VolumeSnapshots.
    pub(super) async fn copy_by_snapshot(
        &self,
        copy: &ClaimCopy<'_>,
    ) -> Result<Snapshotted, EngineError> {
        let ClaimCopy {
            from,
            to,
            prod_ns,
            test_ns,
            labels,
            ..
        } = *copy;
        let prod_ns = prod_ns.to_string();
        let (meta_labels, annotations) = split_labels(labels);
        let meta = |name: &str, ns: Option<&str>| {
            json!({
                "name": name,
                "namespace": ns,
                "labels": meta_labels,
                "annotations": annotations,
            })
        };

        // 1. A snapshot of production's claim, beside it.
        let prod_snapshots: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &prod_ns, &snapshot_resource());
        let snapshot: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
            "metadata": meta(to, Some(&prod_ns)),
            "spec": { "source": { "persistentVolumeClaimName": from } },
        }))
        .expect("a VolumeSnapshot");
        match prod_snapshots
            .create(&PostParams::default(), &snapshot)
            .await
        {
            Ok(_) => {}
            Err(e) if not_served(&e) => return Ok(Snapshotted::NotServed),
            Err(e) => {
                return Err(api_error(
                    e,
                    "snapshot",
                    &format!("PersistentVolumeClaim {from}"),
                ));
            }
        }
        let taken = self.wait_ready(&prod_snapshots, to, &prod_ns).await?;
        let content_name = taken.data["status"]["boundVolumeSnapshotContentName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let restore_size = taken.data["status"]["restoreSize"]
            .as_str()
            .map(str::to_string);

        // 2. The storage's snapshot kept, its objects in production's namespace gone.
        let contents: Api<DynamicObject> = Api::all_with(self.client.clone(), &content_resource());
        let what = format!("VolumeSnapshotContent {content_name}");
        let content = contents
            .get(&content_name)
            .await
            .map_err(|e| api_error(e, "read", &what))?;
        let handle = content.data["status"]["snapshotHandle"]
            .as_str()
            .ok_or_else(|| EngineError::Call {
                action: "copy",
                object: what.clone(),
                reason: "it has no snapshotHandle".into(),
            })?
            .to_string();
        let driver = content.data["spec"]["driver"].clone();
        let class = content.data["spec"]["volumeSnapshotClassName"].clone();
        contents
            .patch(
                &content_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "deletionPolicy": "Retain" } })),
            )
            .await
            .map_err(|e| api_error(e, "retain", &what))?;
        delete_ok(
            prod_snapshots.delete(to, &DeleteParams::default()).await,
            &format!("VolumeSnapshot {to} in {prod_ns}"),
        )?;
        delete_ok(
            contents
                .delete(&content_name, &DeleteParams::default())
                .await,
            &what,
        )?;

        // 3. The same storage snapshot bound to a VolumeSnapshot in the test namespace.
        let moved: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotContent",
            "metadata": meta(to, None),
            "spec": {
                "deletionPolicy": "Delete",
                "driver": driver,
                "volumeSnapshotClassName": class,
                "source": { "snapshotHandle": handle },
                "volumeSnapshotRef": { "name": to, "namespace": test_ns },
            },
        }))
        .expect("a VolumeSnapshotContent");
        contents
            .create(&PostParams::default(), &moved)
            .await
            .map_err(|e| api_error(e, "create", &format!("VolumeSnapshotContent {to}")))?;
        let test_snapshots: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), test_ns, &snapshot_resource());
        let restored: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshot",
            "metadata": meta(to, Some(test_ns)),
            "spec": { "source": { "volumeSnapshotContentName": to } },
        }))
        .expect("a VolumeSnapshot");
        test_snapshots
            .create(&PostParams::default(), &restored)
            .await
            .map_err(|e| api_error(e, "create", &format!("VolumeSnapshot {to} in {test_ns}")))?;
        self.wait_ready(&test_snapshots, to, test_ns).await?;

        // 4. The test claim, restored from it.
        let data_source = TypedLocalObjectReference {
            api_group: Some(GROUP.to_string()),
            kind: "VolumeSnapshot".to_string(),
            name: to.to_string(),
        };
        self.apply_test_claim(copy, Some(data_source), restore_size)
            .await?;
        Ok(Snapshotted::Done)
    }

    /// Production's claim `from` in `prod_ns`, which a copy reads; its absence is an error.
    pub(super) async fn production_claim(
        &self,
        from: &str,
        prod_ns: &str,
    ) -> Result<PersistentVolumeClaim, EngineError> {
        self.read_needed(prod_ns, from, "copy").await
    }

    /// Applies the test claim of `copy` as a copy of production's: its access modes, its
    /// storage class and at least its size (or `restore_size`, if larger), filled from
    /// `data_source` if given.
    pub(super) async fn apply_test_claim(
        &self,
        copy: &ClaimCopy<'_>,
        data_source: Option<TypedLocalObjectReference>,
        restore_size: Option<String>,
    ) -> Result<(), EngineError> {
        let ClaimCopy {
            source,
            to,
            test_ns,
            labels,
            ..
        } = *copy;
        let spec = source.spec.clone().unwrap_or_default();
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| VOLUME_SIZE.to_string());
        let (claim_labels, claim_annotations) = split_labels(labels);
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(to.to_string()),
                namespace: Some(test_ns.to_string()),
                labels: Some(claim_labels),
                annotations: (!claim_annotations.is_empty()).then_some(claim_annotations),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: spec
                    .access_modes
                    .or_else(|| Some(vec!["ReadWriteOnce".to_string()])),
                storage_class_name: spec.storage_class_name,
                data_source,
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(larger(size, restore_size)),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let test_claims: Api<PersistentVolumeClaim> = self.api(test_ns);
        self.apply(&test_claims, to, &claim).await?;
        Ok(())
    }

    /// Deletes the VolumeSnapshots (in any namespace) and VolumeSnapshotContents that carry all of
    /// `selector`'s labels: what a copy killed half-way leaves outside the test namespace (a
    /// snapshot beside production's claim, a content not yet bound). Nothing when the cluster
    /// serves no VolumeSnapshots.
    pub(super) async fn remove_snapshots(&self, selector: &str) -> Result<(), EngineError> {
        let lp = kube::api::ListParams::default().labels(selector);
        let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &snapshot_resource());
        let snapshots = match all.list(&lp).await {
            Ok(list) => list.items,
            Err(e) if not_served(&e) => return Ok(()),
            Err(e) => return Err(api_error(e, "list", &format!("VolumeSnapshots {selector}"))),
        };
        for s in snapshots {
            let (Some(name), Some(ns)) = (s.metadata.name, s.metadata.namespace) else {
                continue;
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &snapshot_resource());
            delete_ok(
                api.delete(&name, &DeleteParams::background()).await,
                &format!("VolumeSnapshot {name} in {ns}"),
            )?;
        }
        let contents: Api<DynamicObject> = Api::all_with(self.client.clone(), &content_resource());
        let list = contents
            .list(&lp)
            .await
            .map_err(|e| api_error(e, "list", &format!("VolumeSnapshotContents {selector}")))?;
        for c in list.items {
            let Some(name) = c.metadata.name else {
                continue;
            };
            delete_ok(
                contents.delete(&name, &DeleteParams::background()).await,
                &format!("VolumeSnapshotContent {name}"),
            )?;
        }
        Ok(())
    }

    /// Waits (up to [`SNAPSHOT_LIMIT`]) until VolumeSnapshot `name` is ready to use; its error
    /// ends the wait at once.
    async fn wait_ready(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        ns: &str,
    ) -> Result<DynamicObject, EngineError> {
        let what = format!("VolumeSnapshot {name} in {ns}");
        let t0 = tokio::time::Instant::now();
        loop {
            let s = api
                .get(name)
                .await
                .map_err(|e| api_error(e, "read", &what))?;
            let status: &Value = &s.data["status"];
            if status["readyToUse"] == true {
                return Ok(s);
            }
            if let Some(message) = status["error"]["message"].as_str() {
                return Err(EngineError::Call {
                    action: "snapshot",
                    object: what,
                    reason: message.to_string(),
                });
            }
            if t0.elapsed() + POLL > SNAPSHOT_LIMIT {
                return Err(EngineError::Call {
                    action: "snapshot",
                    object: what,
                    reason: format!("not ready to use after {}s", SNAPSHOT_LIMIT.as_secs()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_compare_by_what_they_mean() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("12"), Some(12));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(larger("1Gi".into(), Some("500Mi".into())), "1Gi");
        assert_eq!(larger("1Gi".into(), Some("2G".into())), "2G");
        assert_eq!(larger("1Gi".into(), Some("lots".into())), "1Gi");
        assert_eq!(larger("1Gi".into(), None), "1Gi");
    }
}
