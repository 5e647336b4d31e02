//! Reading back what rollout made, from its labels alone: an environment's production
//! containers ([`Engine::observe`]), and every object a selector matches
//! (listed or removed).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions,
    RemoveVolumeOptions,
};

use super::DockerEngine;
use super::containers::{container_state, health_state, label_filters, secrets_from_env};
use super::failure::{Failure, call};
use crate::engine::{
    Engine, EngineError, LabelledObject, ObjectKind, Observed, ObservedContainer, Role,
    ServiceSnapshot, labels,
};

/// One production container as listed and inspected, before grouping by service.
pub(super) struct Found {
    pub(super) service: String,
    pub(super) container: ObservedContainer,
    /// Creation time with sub-second precision, to order containers created in the same second.
    pub(super) created_precise: Option<jiff::Timestamp>,
    pub(super) spec_label: Option<String>,
    pub(super) env: Vec<String>,
}

impl DockerEngine {
    pub(super) async fn observed(&self, environment: &str) -> Result<Observed, EngineError> {
        let mut found = self.list_production(environment).await?;
        // Oldest first, so the newest container of a service is its last.
        found.sort_by(|a, b| {
            (a.container.created, a.created_precise, &a.container.name).cmp(&(
                b.container.created,
                b.created_precise,
                &b.container.name,
            ))
        });
        let mut observed = Observed {
            environment: environment.to_string(),
            services: BTreeMap::new(),
            traffic: self.traffic(),
        };
        for f in found {
            let spec = f.spec_label.as_deref().and_then(|json| {
                serde_json::from_str::<ServiceSnapshot>(json)
                    .inspect_err(|e| {
                        tracing::debug!(container = %f.container.name, error = %e, "unreadable rollout.spec label");
                    })
                    .ok()
            });
            let secrets = match &spec {
                Some(s) => {
                    let keys: Vec<&str> = s.secret_keys.iter().map(String::as_str).collect();
                    secrets_from_env(&f.env, &keys)
                }
                None => BTreeMap::new(),
            };
            // Later containers are newer: they replace what an older one recorded.
            observed.add(&f.service, f.container, spec, secrets);
        }
        Ok(observed)
    }

    pub(super) async fn labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError> {
        let object = labels::selector(selector);
        let sorted = |map: Option<HashMap<String, String>>| -> BTreeMap<String, String> {
            map.unwrap_or_default().into_iter().collect()
        };
        let mut found = Vec::new();
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(selector)),
            ..Default::default()
        };
        let containers = call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|f| f.call("list containers", &object))?;
        for c in containers {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(c.id)
                .unwrap_or_default();
            found.push(LabelledObject {
                kind: ObjectKind::Container,
                name,
                labels: sorted(c.labels),
            });
        }
        let options = ListNetworksOptions {
            filters: Some(label_filters(selector)),
        };
        let networks = call(self.docker.list_networks(Some(options)))
            .await
            .map_err(|f| f.call("list networks", &object))?;
        for n in networks {
            found.push(LabelledObject {
                kind: ObjectKind::Network,
                name: n.name.or(n.id).unwrap_or_default(),
                labels: sorted(n.labels),
            });
        }
        let options = ListVolumesOptions {
            filters: Some(label_filters(selector)),
        };
        let volumes = call(self.docker.list_volumes(Some(options)))
            .await
            .map_err(|f| f.call("list volumes", &object))?;
        for v in volumes.volumes.unwrap_or_default() {
            found.push(LabelledObject {
                kind: ObjectKind::Volume,
                name: v.name,
                labels: v.labels.into_iter().collect(),
            });
        }
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(found)
    }

    pub(super) async fn list_production(
        &self,
        environment: &str,
    ) -> Result<Vec<Found>, EngineError> {
        let selector = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), environment.to_string()),
            (
                labels::ROLE.to_string(),
                Role::Production.as_str().to_string(),
            ),
        ]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(&selector)),
            ..Default::default()
        };
        let summaries = call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|f| f.call("list containers of environment", environment))?;
        let mut found = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            let mut labels = summary.labels.unwrap_or_default();
            let Some(service) = labels.remove(labels::SERVICE) else {
                continue;
            };
            let inspect = match call(self.docker.inspect_container(&id, None)).await {
                Ok(i) => i,
                // Removed between the list and the inspect: it no longer runs.
                Err(f) if f.is_not_found() => continue,
                Err(f) => return Err(f.call("inspect container", &id)),
            };
            let name = inspect
                .name
                .as_deref()
                .or(summary
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(String::as_str))
                .unwrap_or(&id)
                .trim_start_matches('/')
                .to_string();
            let config = inspect.config.clone().unwrap_or_default();
            let image = config.image.clone().or(summary.image).unwrap_or_default();
            let created_precise = inspect
                .created
                .as_deref()
                .and_then(|c| c.parse::<jiff::Timestamp>().ok());
            let created = summary
                .created
                .or(created_precise.map(|t| t.as_second()))
                .unwrap_or_default();
            found.push(Found {
                service,
                container: ObservedContainer {
                    id,
                    name,
                    image,
                    state: container_state(&inspect),
                    health: health_state(&inspect),
                    run: labels.remove(labels::RUN),
                    created,
                },
                created_precise,
                spec_label: labels.remove(labels::SPEC),
                env: config.env.unwrap_or_default(),
            });
        }
        Ok(found)
    }

    pub(super) async fn remove_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<usize, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(selector)),
            ..Default::default()
        };
        let containers = call(self.docker.list_containers(Some(options)))
            .await
            .map_err(|f| f.call("list containers", &labels::selector(selector)))?;
        let found = containers
            .into_iter()
            .filter_map(|c| c.id)
            .map(|id| (id.clone(), id));
        let remove = |id: String| async move {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            call(self.docker.remove_container(&id, Some(options))).await
        };
        // Already gone, or being removed by a concurrent call: the goal is reached.
        let gone = |f: &Failure| f.is_not_found() || f.status() == Some(409);
        remove_each(found, "remove container", remove, gone).await
    }

    pub(super) async fn remove_networks(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<usize, EngineError> {
        let options = ListNetworksOptions {
            filters: Some(label_filters(selector)),
        };
        let networks = call(self.docker.list_networks(Some(options)))
            .await
            .map_err(|f| f.call("list networks", &labels::selector(selector)))?;
        let found = networks.into_iter().filter_map(|n| {
            let id = n.id?;
            let name = n.name.unwrap_or_else(|| id.clone());
            Some((id, name))
        });
        let remove = |id: String| async move { call(self.docker.remove_network(&id)).await };
        remove_each(found, "remove network", remove, Failure::is_not_found).await
    }

    pub(super) async fn remove_volumes(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<usize, EngineError> {
        let options = ListVolumesOptions {
            filters: Some(label_filters(selector)),
        };
        let volumes = call(self.docker.list_volumes(Some(options)))
            .await
            .map_err(|f| f.call("list volumes", &labels::selector(selector)))?;
        let found =
            (volumes.volumes.unwrap_or_default().into_iter()).map(|v| (v.name.clone(), v.name));
        let remove = |name: String| async move {
            let options = RemoveVolumeOptions { force: false };
            call(self.docker.remove_volume(&name, Some(options))).await
        };
        remove_each(found, "remove volume", remove, Failure::is_not_found).await
    }
}

/// Removes each object found, by its id (the first of the pair; the second names it in
/// messages); one `gone` says is already going counts as done, not as removed. How many it
/// removed.
async fn remove_each<Fut>(
    found: impl IntoIterator<Item = (String, String)>,
    action: &'static str,
    remove: impl Fn(String) -> Fut,
    gone: impl Fn(&Failure) -> bool,
) -> Result<usize, EngineError>
where
    Fut: Future<Output = Result<(), Failure>>,
{
    let mut removed = 0;
    for (id, name) in found {
        match remove(id).await {
            Ok(()) => removed += 1,
            Err(f) if gone(&f) => {}
            Err(f) => return Err(f.call(action, &name)),
        }
    }
    Ok(removed)
}
