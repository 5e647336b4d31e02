//! Moving traffic between a service's versions through the platform's own services: a capability
//! ([`crate::engine::Engine::services`]) only some backends offer (kubernetes: a Service's
//! selector, a canary split by HTTPRoute weights or replicas). Where there is none, rollout's
//! edge proxy moves traffic ([`Traffic::EdgeProxy`]), which is no business of the engine's.

use std::time::Duration;

use async_trait::async_trait;

use super::{Engine, EngineError};

/// How traffic reaches a service's versions on a platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Traffic {
    /// rollout's edge proxy holds the public ports and moves traffic by weight (docker).
    #[default]
    EdgeProxy,
    /// The platform routes a service's stable name to one version; rollout moves it with
    /// [`ServiceTraffic::route_service`] (kubernetes Services, by their selector).
    Services,
}

/// How a platform split a service's traffic for a canary ([`ServiceTraffic::split_service`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The share of requests the candidate gets, as the split really is (a replica ratio
    /// cannot give every percentage).
    pub percent: u8,
    /// How, in a few words: the route and weights, or the pods beside each other.
    pub how: String,
}

/// Whether a version still receives traffic through its service, after it was routed away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// No endpoint of the service is the old version any more.
    Done,
    /// Still listed after the wait: this many endpoints.
    StillRouted { endpoints: usize },
}

/// The platform's services, as rollout moves traffic through them. Every call is idempotent.
#[async_trait]
pub trait ServiceTraffic: Send + Sync {
    /// Points the service `service` of `env` at `container`'s replicas, and only at them.
    async fn route_service(
        &self,
        env: &str,
        service: &str,
        container: &str,
    ) -> Result<(), EngineError>;

    /// Waits (up to `limit`) until `container`'s replicas are no longer endpoints of `service`,
    /// so removing them drops no request.
    async fn wait_unrouted(
        &self,
        env: &str,
        service: &str,
        container: &str,
        limit: Duration,
    ) -> Result<Unrouted, EngineError>;

    /// A canary: sends about `percent` (1 to 99) of `service`'s traffic to `candidate`'s
    /// replicas and the rest to `stable`'s, as this platform can split it. Says how, and the
    /// share the candidate really gets.
    async fn split_service(
        &self,
        env: &str,
        service: &str,
        stable: &str,
        candidate: &str,
        percent: u8,
    ) -> Result<Split, EngineError>;

    /// Ends a split [`ServiceTraffic::split_service`] began, once
    /// [`ServiceTraffic::route_service`] has pointed the service at one version: everything the
    /// split made goes, and `kept`, the candidate that now serves alone (if it stays), is back to
    /// its own size. Nothing to end is not an error.
    async fn end_split(
        &self,
        env: &str,
        service: &str,
        kept: Option<&str>,
    ) -> Result<(), EngineError>;

    /// Removes what routes to `service` of `env`, a service no longer in the manifest whose
    /// containers are gone (kubernetes: its Service). Gone already is fine.
    async fn remove_route(&self, env: &str, service: &str) -> Result<(), EngineError>;

    /// Whether [`ServiceTraffic::measure`] has a source to ask.
    fn measures(&self) -> bool;

    /// What the platform's metrics source counted of `candidate`'s requests over the last
    /// `window` (kubernetes: the Prometheus rollout.yaml names); `None` where there is no such
    /// source.
    async fn measure(
        &self,
        env: &str,
        service: &str,
        candidate: &str,
        window: Duration,
    ) -> Result<Option<crate::prometheus::Measured>, EngineError>;
}

/// The engine's services, for a caller that only asks where [`Engine::traffic`] said
/// [`Traffic::Services`]: an engine without them is a bug of the caller's, said plainly.
pub fn services(engine: &dyn Engine) -> Result<&dyn ServiceTraffic, EngineError> {
    engine.services().ok_or_else(|| EngineError::Call {
        action: "route",
        object: "services".to_string(),
        reason: format!(
            "{} moves traffic through rollout's edge proxy, not its own services",
            engine.describe()
        ),
    })
}
