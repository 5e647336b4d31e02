//! Waiting on the cluster by watching rather than polling: the drain after a switch waits for
//! the old pods to leave the Service's EndpointSlices ([`KubeEngine::wait_out_of_endpoints`]).
//!
//! The wait lists the slices, and if old pods are still endpoints, watches them from the list's
//! `resourceVersion`, updating its copy with every event, until none is left or the time is up.
//! A watch that the API server closes (its timeout, a restart) is opened again from the last
//! version seen. A `410 Gone` (the version is too old: the server's watch cache has moved on),
//! as an `ERROR` event in the stream or as the answer to the watch itself, means events were
//! lost: the slices are listed again and the watch starts over from the new list.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

use super::{KubeEngine, api_error, pod_of};
use crate::engine::{EngineError, Unrouted};

/// The longest watch asked of the API server (it must stay under its 5-minute cap).
const WATCH_SECONDS: u64 = 290;

/// How many endpoints of `slices` are pods of Deployment `deployment`. A pure function.
pub fn routed_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    deployment: &str,
) -> usize {
    slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .filter(|r| r.name.as_deref().is_some_and(|n| pod_of(n, deployment)))
        .count()
}

impl KubeEngine {
    /// Waits (up to `limit`) until no endpoint of Service `service` in `ns` is a pod of
    /// Deployment `deployment`, watching its EndpointSlices.
    pub(super) async fn wait_out_of_endpoints(
        &self,
        ns: &str,
        service: &str,
        deployment: &str,
        limit: Duration,
    ) -> Result<Unrouted, EngineError> {
        let api: Api<EndpointSlice> = self.api(ns);
        let selector = format!("kubernetes.io/service-name={service}");
        let what = || format!("EndpointSlices of Service {service}");
        let deadline = tokio::time::Instant::now() + limit;
        'list: loop {
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| api_error(e, "list", &what()))?;
            let mut version = list.metadata.resource_version.clone().unwrap_or_default();
            let mut slices: BTreeMap<String, EndpointSlice> = list
                .items
                .into_iter()
                .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
                .collect();
            loop {
                let left = routed_endpoints(slices.values(), deployment);
                if left == 0 {
                    return Ok(Unrouted::Done);
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(Unrouted::StillRouted { endpoints: left });
                }
                let secs = (deadline - now).as_secs().clamp(1, WATCH_SECONDS) as u32;
                let params = WatchParams::default().labels(&selector).timeout(secs);
                let stream = match api.watch(&params, &version).await {
                    Ok(stream) => stream,
                    Err(kube::Error::Api(s)) if s.code == 410 => continue 'list,
                    Err(e) => return Err(api_error(e, "watch", &what())),
                };
                let mut stream = std::pin::pin!(stream);
                let mut events = 0;
                loop {
                    let event = match tokio::time::timeout_at(deadline, stream.next()).await {
                        Err(_) => {
                            let left = routed_endpoints(slices.values(), deployment);
                            return Ok(Unrouted::StillRouted { endpoints: left });
                        }
                        // Closed by the server: watched again from the last version seen,
                        // after a pause if it closed at once (no busy loop on a server that
                        // closes every watch).
                        Ok(None) => {
                            if events == 0 {
                                tokio::time::sleep_until(
                                    deadline.min(tokio::time::Instant::now() + super::POLL),
                                )
                                .await;
                            }
                            break;
                        }
                        Ok(Some(event)) => event.map_err(|e| api_error(e, "watch", &what()))?,
                    };
                    events += 1;
                    match event {
                        WatchEvent::Added(s) | WatchEvent::Modified(s) => {
                            version = s.metadata.resource_version.clone().unwrap_or(version);
                            slices.insert(s.metadata.name.clone().unwrap_or_default(), s);
                        }
                        WatchEvent::Deleted(s) => {
                            version = s.metadata.resource_version.clone().unwrap_or(version);
                            slices.remove(s.metadata.name.as_deref().unwrap_or_default());
                        }
                        WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                        WatchEvent::Error(s) if s.code == 410 => continue 'list,
                        WatchEvent::Error(s) => {
                            return Err(api_error(kube::Error::Api(s), "watch", &what()));
                        }
                    }
                    if routed_endpoints(slices.values(), deployment) == 0 {
                        return Ok(Unrouted::Done);
                    }
                }
            }
        }
    }
}
