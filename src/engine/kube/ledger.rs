//! Run records in the cluster: one ConfigMap per run, `rollout-run-<run>` in `rollout-<env>`,
//! labelled `rollout.environment`, `rollout.run` and `rollout.state=run`, holding the run's
//! revision (`revision.json`) and journal (`journal.json`). Written whole by server-side apply
//! (field manager `rollout`) after every journal entry, by the one process that holds the
//! environment's Lease; read by listing them by label. A journal is a few dozen entries, far
//! under a ConfigMap's 1 MiB.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::{FIELD_MANAGER, api_error, namespace};
use crate::engine::{EngineError, RunLedger, labels};
use crate::store::{GatesDoc, LedgerEntry, Revision, RunDoc};

/// The ConfigMap of an environment's gates (`gates.json`: the run parked at a gate and its
/// grants), in `rollout-<env>`.
pub const GATES: &str = "rollout-gates";

/// How many times a gates write is tried again after another writer's came first.
const GATES_TRIES: usize = 5;

/// An environment's gates read from their ConfigMap; the error says what is wrong with it.
pub fn gates_from_config_map(cm: &ConfigMap) -> Result<GatesDoc, String> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("gates.json"))
        .ok_or("it has no gates.json")?;
    serde_json::from_str(text).map_err(|e| format!("gates.json: {e}"))
}

/// [`gates_from_config_map`] of the ConfigMap `what` names, its error an [`EngineError`].
fn read_gates(cm: &ConfigMap, what: &str) -> Result<GatesDoc, EngineError> {
    gates_from_config_map(cm).map_err(|reason| EngineError::Call {
        action: "read",
        object: what.to_string(),
        reason,
    })
}

/// The label value that marks a ConfigMap as a run record.
pub const STATE_LABEL: &str = "rollout.state";

/// The ConfigMap of run `run`.
pub fn config_map_name(run: &str) -> String {
    format!("rollout-run-{run}")
}

/// A run's record as its ConfigMap. A pure function.
pub fn to_config_map(doc: &RunDoc) -> ConfigMap {
    let r = &doc.revision;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&r.run)),
            namespace: Some(namespace(&r.environment)),
            labels: Some(BTreeMap::from([
                (labels::ENVIRONMENT.to_string(), r.environment.clone()),
                (labels::RUN.to_string(), r.run.clone()),
                (STATE_LABEL.to_string(), "run".to_string()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "revision.json".to_string(),
                serde_json::to_string(&doc.revision).expect("a revision serializes"),
            ),
            (
                "journal.json".to_string(),
                serde_json::to_string(&doc.entries).expect("entries serialize"),
            ),
        ])),
        ..Default::default()
    }
}

/// A run's record read back from its ConfigMap; the error says what is wrong with it.
pub fn from_config_map(cm: &ConfigMap) -> Result<RunDoc, String> {
    let data = cm.data.as_ref().ok_or("it has no data")?;
    let field = |key: &str| data.get(key).ok_or(format!("it has no {key}"));
    let revision: Revision =
        serde_json::from_str(field("revision.json")?).map_err(|e| format!("revision.json: {e}"))?;
    let entries: Vec<LedgerEntry> =
        serde_json::from_str(field("journal.json")?).map_err(|e| format!("journal.json: {e}"))?;
    Ok(RunDoc { revision, entries })
}

/// [`RunLedger`] on ConfigMaps.
pub struct ConfigMaps {
    client: Client,
}

impl ConfigMaps {
    pub fn new(client: Client) -> Self {
        ConfigMaps { client }
    }
}

#[async_trait]
impl RunLedger for ConfigMaps {
    async fn push(&self, doc: &RunDoc) -> Result<(), EngineError> {
        let cm = to_config_map(doc);
        let name = config_map_name(&doc.revision.run);
        let api: Api<ConfigMap> =
            Api::namespaced(self.client.clone(), &namespace(&doc.revision.environment));
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(|e| api_error(e, "record", &format!("ConfigMap {name}")))?;
        Ok(())
    }

    async fn pull(&self, env: &str) -> Result<Vec<RunDoc>, EngineError> {
        let ns = namespace(env);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let selector = format!("{}={env},{STATE_LABEL}=run", labels::ENVIRONMENT);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error(e, "list", &format!("run records in {ns}")))?;
        let mut docs = list
            .items
            .iter()
            .map(|cm| {
                from_config_map(cm).map_err(|reason| EngineError::Call {
                    action: "read",
                    object: format!(
                        "run record ConfigMap {} in {ns}",
                        cm.metadata.name.as_deref().unwrap_or("?")
                    ),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        docs.sort_by_key(|d| d.revision.number);
        Ok(docs)
    }

    fn describe(&self, env: &str) -> String {
        format!("ConfigMaps rollout-run-* in {}", namespace(env))
    }

    fn describe_gates(&self, env: &str) -> String {
        format!("ConfigMap {GATES} in {}", namespace(env))
    }

    async fn pull_gates(&self, env: &str) -> Result<Option<GatesDoc>, EngineError> {
        let ns = namespace(env);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let what = format!("ConfigMap {GATES} in {ns}");
        let current = api
            .get_opt(GATES)
            .await
            .map_err(|e| api_error(e, "read", &what))?;
        current.as_ref().map(|cm| read_gates(cm, &what)).transpose()
    }

    /// Read, changed, and written back with the `resourceVersion` read (a replace, or a create
    /// when there was none): the API server refuses the write with a 409 if another writer's
    /// came in between, and the whole is done again.
    async fn update_gates(
        &self,
        env: &str,
        change: &(dyn for<'d> Fn(Option<&'d GatesDoc>) -> Option<GatesDoc> + Send + Sync),
    ) -> Result<Option<GatesDoc>, EngineError> {
        let ns = namespace(env);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let what = format!("ConfigMap {GATES} in {ns}");
        for _ in 0..GATES_TRIES {
            let current = api
                .get_opt(GATES)
                .await
                .map_err(|e| api_error(e, "read", &what))?;
            let read = current
                .as_ref()
                .map(|cm| read_gates(cm, &what))
                .transpose()?;
            let Some(doc) = change(read.as_ref()) else {
                return Ok(None);
            };
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(GATES.to_string()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (labels::ENVIRONMENT.to_string(), env.to_string()),
                        (STATE_LABEL.to_string(), "gates".to_string()),
                    ])),
                    resource_version: current
                        .as_ref()
                        .and_then(|c| c.metadata.resource_version.clone()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "gates.json".to_string(),
                    serde_json::to_string(&doc).expect("gates serialize"),
                )])),
                ..Default::default()
            };
            let written = match current {
                Some(_) => api.replace(GATES, &PostParams::default(), &cm).await,
                None => api.create(&PostParams::default(), &cm).await,
            };
            match written {
                Ok(_) => return Ok(Some(doc)),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(api_error(e, "record", &what)),
            }
        }
        Err(EngineError::Call {
            action: "record",
            object: what,
            reason: format!("other writers came first {GATES_TRIES} times in a row"),
        })
    }
}
