//! Bounded retries over any [`Engine`]: a call that failed because the engine stopped answering
//! or its connection broke (an engine restarting, a socket briefly gone) is asked again with
//! backoff, within a budget; then the last error goes to the caller, clear and never a hang.
//! Every engine call is idempotent (see [`Engine`]), so asking again is safe. Answers from the
//! engine (404, 409, a failed build…) are not retried.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    ContainerSpec, ContainerStatus, Copied, Engine, EngineError, EventStream, ExecOutput,
    LabelledObject, Observed, Outcome, Removed, ServiceTraffic, image,
};

/// The backoff before each retry.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// No retry starts after this long since the first attempt (a call that timed out has used it).
pub const BUDGET: Duration = Duration::from_secs(10);

pub struct Retrying<E> {
    inner: E,
}

impl<E: Engine> Retrying<E> {
    pub fn new(inner: E) -> Self {
        Retrying { inner }
    }
}

fn transient(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Lost { .. }
            | EngineError::LostCluster { .. }
            | EngineError::Unreachable { .. }
    )
}

async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, EngineError>>,
{
    let t0 = Instant::now();
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if transient(&e) && attempt < BACKOFF.len() && t0.elapsed() < BUDGET => {
                tracing::warn!("{what}: {e}; asking again in {:?}", BACKOFF[attempt]);
                tokio::time::sleep(BACKOFF[attempt]).await;
                attempt += 1;
            }
            Err(e) if attempt > 0 => {
                let tried = |reason: String| {
                    format!(
                        "{reason} (tried {} times over {:.1}s)",
                        attempt + 1,
                        t0.elapsed().as_secs_f64()
                    )
                };
                return Err(match e {
                    EngineError::Lost {
                        action,
                        object,
                        reason,
                    } => EngineError::Lost {
                        action,
                        object,
                        reason: tried(reason),
                    },
                    EngineError::LostCluster {
                        action,
                        object,
                        reason,
                    } => EngineError::LostCluster {
                        action,
                        object,
                        reason: tried(reason),
                    },
                    other => other,
                });
            }
            other => return other,
        }
    }
}

#[async_trait]
impl<E: Engine> Engine for Retrying<E> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn observe(&self, environment: &str) -> Result<Observed, EngineError> {
        retry("observe", || self.inner.observe(environment)).await
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        retry("ensure_network", || self.inner.ensure_network(name, labels)).await
    }

    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        retry("ensure_volume", || self.inner.ensure_volume(name, labels)).await
    }

    async fn run_container(&self, spec: &ContainerSpec) -> Result<Outcome, EngineError> {
        retry("run_container", || self.inner.run_container(spec)).await
    }

    async fn remove_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Removed, EngineError> {
        retry("remove_labelled", || self.inner.remove_labelled(selector)).await
    }

    async fn build_image(
        &self,
        tag: &str,
        context: &image::BuildContext,
    ) -> Result<(), EngineError> {
        retry("build_image", || self.inner.build_image(tag, context)).await
    }

    async fn events(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<EventStream, EngineError> {
        retry("events", || self.inner.events(selector)).await
    }

    async fn status(&self, container: &str) -> Result<Option<ContainerStatus>, EngineError> {
        retry("status", || self.inner.status(container)).await
    }

    async fn published_port(
        &self,
        container: &str,
        container_port: u16,
    ) -> Result<Option<u16>, EngineError> {
        retry("published_port", || {
            self.inner.published_port(container, container_port)
        })
        .await
    }

    async fn exec(
        &self,
        container: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<ExecOutput, EngineError> {
        retry("exec", || self.inner.exec(container, command, limit)).await
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        retry("logs_tail", || self.inner.logs_tail(container, lines)).await
    }

    async fn pause(&self, container: &str) -> Result<(), EngineError> {
        retry("pause", || self.inner.pause(container)).await
    }

    async fn unpause(&self, container: &str) -> Result<(), EngineError> {
        retry("unpause", || self.inner.unpause(container)).await
    }

    async fn copy_volume(
        &self,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Copied, EngineError> {
        retry("copy_volume", || self.inner.copy_volume(from, to, labels)).await
    }

    async fn list_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError> {
        retry("list_labelled", || self.inner.list_labelled(selector)).await
    }

    async fn stop_container(&self, container: &str, grace: Duration) -> Result<(), EngineError> {
        retry("stop_container", || {
            self.inner.stop_container(container, grace)
        })
        .await
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        retry("remove_container", || {
            self.inner.remove_container(container)
        })
        .await
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        retry("remove_network", || self.inner.remove_network(name)).await
    }

    async fn start_container(&self, container: &str) -> Result<(), EngineError> {
        retry("start_container", || self.inner.start_container(container)).await
    }

    async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        retry("has_image", || self.inner.has_image(image)).await
    }

    async fn address(
        &self,
        container: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, EngineError> {
        retry("address", || self.inner.address(container, network)).await
    }

    fn probes(&self) -> super::Probes {
        self.inner.probes()
    }

    /// The inner engine's services, each call retried like the core's.
    fn services(&self) -> Option<&dyn ServiceTraffic> {
        self.inner.services().map(|_| self as &dyn ServiceTraffic)
    }

    fn ledger(&self) -> Option<std::sync::Arc<dyn super::RunLedger>> {
        self.inner.ledger()
    }

    fn shared_lock(&self, env: &str, holder: &str) -> Option<Box<dyn super::SharedLock>> {
        self.inner.shared_lock(env, holder)
    }
}

impl<E: Engine> Retrying<E> {
    /// The inner engine's services: [`Engine::services`] offers ours only where it has them.
    fn inner_services(&self) -> &dyn ServiceTraffic {
        self.inner
            .services()
            .expect("Retrying::services answers only for an engine with services")
    }
}

#[async_trait]
impl<E: Engine> ServiceTraffic for Retrying<E> {
    async fn route_service(
        &self,
        env: &str,
        service: &str,
        container: &str,
    ) -> Result<(), EngineError> {
        let inner = self.inner_services();
        retry("route_service", || {
            inner.route_service(env, service, container)
        })
        .await
    }

    async fn wait_unrouted(
        &self,
        env: &str,
        service: &str,
        container: &str,
        limit: Duration,
    ) -> Result<super::Unrouted, EngineError> {
        let inner = self.inner_services();
        retry("wait_unrouted", || {
            inner.wait_unrouted(env, service, container, limit)
        })
        .await
    }

    async fn split_service(
        &self,
        env: &str,
        service: &str,
        stable: &str,
        candidate: &str,
        percent: u8,
    ) -> Result<super::Split, EngineError> {
        let inner = self.inner_services();
        retry("split_service", || {
            inner.split_service(env, service, stable, candidate, percent)
        })
        .await
    }

    async fn end_split(
        &self,
        env: &str,
        service: &str,
        kept: Option<&str>,
    ) -> Result<(), EngineError> {
        let inner = self.inner_services();
        retry("end_split", || inner.end_split(env, service, kept)).await
    }

    async fn remove_route(&self, env: &str, service: &str) -> Result<(), EngineError> {
        let inner = self.inner_services();
        retry("remove_route", || inner.remove_route(env, service)).await
    }

    fn measures(&self) -> bool {
        self.inner.services().is_some_and(|s| s.measures())
    }

    async fn measure(
        &self,
        env: &str,
        service: &str,
        candidate: &str,
        window: Duration,
    ) -> Result<Option<crate::prometheus::Measured>, EngineError> {
        self.inner_services()
            .measure(env, service, candidate, window)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn lost() -> EngineError {
        EngineError::Lost {
            action: "inspect container",
            object: "web".into(),
            reason: "connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_retried_until_it_answers() {
        let calls = AtomicU32::new(0);
        let got = retry("status", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(lost())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_within_the_budget_with_the_count_in_the_error() {
        let calls = AtomicU32::new(0);
        let t0 = tokio::time::Instant::now();
        let got: Result<(), _> = retry("status", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(lost())
        })
        .await;
        let err = got.unwrap_err().to_string();
        assert_eq!(calls.load(Ordering::SeqCst), 6, "one try and five retries");
        assert!(err.contains("tried 6 times"), "{err}");
        assert!(t0.elapsed() <= Duration::from_secs(8), "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_from_the_engine_is_not_retried() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = retry("status", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(EngineError::Call {
                action: "start container",
                object: "web".into(),
                reason: "409 conflict".into(),
            })
        })
        .await;
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// The capabilities of the engine inside are the wrapper's: kubernetes' services (and with
    /// them `traffic()`), ledger and shared lock; an engine without them has none through it.
    #[tokio::test]
    async fn capabilities_are_forwarded_as_the_inner_engine_has_them() {
        let (service, _server) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let cluster =
            super::super::kube::KubeEngine::new(kube::Client::new(service, "default"), "mock");
        let engine = Retrying::new(cluster);
        assert_eq!(engine.traffic(), super::super::Traffic::Services);
        assert!(engine.services().is_some_and(|s| !s.measures()));
        assert!(engine.ledger().is_some());
        assert!(engine.shared_lock("shop", "me").is_some());

        let engine = Retrying::new(super::super::fake::FakeEngine::new());
        assert_eq!(engine.traffic(), super::super::Traffic::EdgeProxy);
        assert!(engine.services().is_none());
        assert!(engine.ledger().is_none());
        assert!(engine.shared_lock("shop", "me").is_none());
    }
}
