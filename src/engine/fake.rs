//! A scripted engine for unit tests of the code above the [`Engine`] seam.
//!
//! [`FakeEngine`] keeps containers, networks, volumes and images in memory and answers like the
//! Docker engine does where callers can tell: [`Engine::observe`] reads containers back from their
//! labels alone (spec from `rollout.spec`, secrets from the container's environment), creating a
//! container needs its network and image, removal goes by labels. Tests script failures with
//! [`FakeEngine::fail_next`], change container state and health by hand, and read the
//! [`FakeEngine::calls`] log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::image::BuildContext;
use super::{
    ContainerSpec, ContainerState, Engine, EngineError, EnvValue, HealthState, Observed,
    ObservedContainer, ObservedService, Outcome, Removed, Role, ServiceSnapshot, labels,
};
use crate::manifest::env::Probe;
use crate::manifest::secret::SecretValue;

/// Creation time of the first container; each later one is a second newer.
const FIRST_CREATED: i64 = 1_700_000_000;
/// First host port handed out for a published probe port.
const FIRST_HOST_PORT: u16 = 40_000;

/// An [`Engine`] operation, to script failures for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FakeOp {
    Observe,
    EnsureNetwork,
    EnsureVolume,
    RunContainer,
    RemoveLabelled,
    BuildImage,
}

/// One call made to the fake, in order, with what identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Observe { environment: String },
    EnsureNetwork { name: String },
    EnsureVolume { name: String },
    RunContainer { name: String },
    RemoveLabelled { selector: BTreeMap<String, String> },
    BuildImage { tag: String },
}

impl FakeCall {
    pub fn op(&self) -> FakeOp {
        match self {
            FakeCall::Observe { .. } => FakeOp::Observe,
            FakeCall::EnsureNetwork { .. } => FakeOp::EnsureNetwork,
            FakeCall::EnsureVolume { .. } => FakeOp::EnsureVolume,
            FakeCall::RunContainer { .. } => FakeOp::RunContainer,
            FakeCall::RemoveLabelled { .. } => FakeOp::RemoveLabelled,
            FakeCall::BuildImage { .. } => FakeOp::BuildImage,
        }
    }
}

/// A container the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    pub id: String,
    /// What it was created from; its name, labels and environment are the spec's.
    pub spec: ContainerSpec,
    pub state: ContainerState,
    pub health: Option<HealthState>,
    pub created: i64,
    /// Container port to 127.0.0.1 host port, for each probe port.
    pub published: BTreeMap<u16, u16>,
}

/// A network or volume the fake holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeObject {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    /// In creation order.
    containers: Vec<FakeContainer>,
    networks: BTreeMap<String, FakeObject>,
    volumes: BTreeMap<String, FakeObject>,
    /// `None`: every image exists. `Some`: only these (built images join them).
    images: Option<BTreeSet<String>>,
    builds: Vec<(String, BuildContext)>,
    failures: VecDeque<(FakeOp, EngineError)>,
    calls: Vec<FakeCall>,
    created: u32,
    next_port: u16,
}

impl State {
    /// Logs the call, then hands back the first failure scripted for its operation.
    fn enter(&mut self, call: FakeCall) -> Result<(), EngineError> {
        let op = call.op();
        self.calls.push(call);
        match self.failures.iter().position(|(o, _)| *o == op) {
            Some(i) => match self.failures.remove(i) {
                Some((_, e)) => Err(e),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    fn image_exists(&self, image: &str) -> bool {
        self.images.as_ref().is_none_or(|set| set.contains(image))
    }

    fn container_mut(&mut self, name: &str) -> Option<&mut FakeContainer> {
        self.containers.iter_mut().find(|c| c.spec.name == name)
    }
}

/// A scripted in-memory [`Engine`]. See the module documentation.
#[derive(Debug)]
pub struct FakeEngine {
    state: Mutex<State>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

fn matches(labels: &BTreeMap<String, String>, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn env_value(v: &EnvValue) -> SecretValue {
    match v {
        EnvValue::Plain(s) => SecretValue::new(s.clone()),
        EnvValue::Secret(s) => s.clone(),
    }
}

impl FakeEngine {
    /// An empty engine on which every image exists.
    pub fn new() -> Self {
        FakeEngine {
            state: Mutex::new(State {
                next_port: FIRST_HOST_PORT,
                ..State::default()
            }),
        }
    }

    /// An empty engine holding only `images` (and what it builds later); running any other
    /// image fails with [`EngineError::ImageMissing`], as on an engine that never pulls.
    pub fn with_images<I, S>(images: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let engine = Self::new();
        engine.lock().images = Some(images.into_iter().map(Into::into).collect());
        engine
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent data: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next call of `op` fail with `error`. Several failures for one operation are
    /// used in the order they were scripted.
    pub fn fail_next(&self, op: FakeOp, error: EngineError) {
        self.lock().failures.push_back((op, error));
    }

    /// Every call made so far, in order, failed ones included.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// Every container, in creation order.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.clone()
    }

    /// The container named `name`, if there is one.
    pub fn container(&self, name: &str) -> Option<FakeContainer> {
        self.lock()
            .containers
            .iter()
            .find(|c| c.spec.name == name)
            .cloned()
    }

    pub fn networks(&self) -> BTreeMap<String, FakeObject> {
        self.lock().networks.clone()
    }

    pub fn volumes(&self) -> BTreeMap<String, FakeObject> {
        self.lock().volumes.clone()
    }

    /// Tags built so far, in order.
    pub fn built(&self) -> Vec<String> {
        self.lock().builds.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The context an image was last built from.
    pub fn build_context(&self, tag: &str) -> Option<BuildContext> {
        self.lock()
            .builds
            .iter()
            .rev()
            .find(|(t, _)| t == tag)
            .map(|(_, c)| c.clone())
    }

    /// Makes an image exist, as `docker load` would.
    pub fn add_image(&self, image: impl Into<String>) {
        if let Some(set) = self.lock().images.as_mut() {
            set.insert(image.into());
        }
    }

    /// Sets a container's state, e.g. to simulate a crash: `Exited { code: 1 }`. Returns whether
    /// the container exists.
    pub fn set_state(&self, name: &str, state: ContainerState) -> bool {
        self.lock()
            .container_mut(name)
            .map(|c| c.state = state)
            .is_some()
    }

    /// Sets the health the engine reports for a container. Returns whether the container exists.
    pub fn set_health(&self, name: &str, health: Option<HealthState>) -> bool {
        self.lock()
            .container_mut(name)
            .map(|c| c.health = health)
            .is_some()
    }

    /// Points a published probe port at a chosen host port (a listener a test runs, say).
    /// Returns whether the container exists.
    pub fn set_published_port(&self, name: &str, container_port: u16, host_port: u16) -> bool {
        self.lock()
            .container_mut(name)
            .map(|c| {
                c.published.insert(container_port, host_port);
            })
            .is_some()
    }

    /// Like [`super::docker::DockerEngine::published_port`]: the 127.0.0.1 host port of a
    /// container's probe port.
    pub async fn published_port(
        &self,
        container: &str,
        container_port: u16,
    ) -> Result<Option<u16>, EngineError> {
        let state = self.lock();
        let c = state
            .containers
            .iter()
            .find(|c| c.spec.name == container)
            .ok_or_else(|| EngineError::Call {
                action: "inspect container",
                object: container.to_string(),
                reason: "no such container".to_string(),
            })?;
        Ok(c.published.get(&container_port).copied())
    }
}

#[async_trait]
impl Engine for FakeEngine {
    fn describe(&self) -> String {
        "fake engine (in memory)".to_string()
    }

    async fn observe(&self, environment: &str) -> Result<Observed, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::Observe {
            environment: environment.to_string(),
        })?;
        let selector = BTreeMap::from([
            (labels::ENVIRONMENT.to_string(), environment.to_string()),
            (
                labels::ROLE.to_string(),
                Role::Production.as_str().to_string(),
            ),
        ]);
        let mut services: BTreeMap<String, ObservedService> = BTreeMap::new();
        // Creation order: the last container of a service is its newest.
        for c in state
            .containers
            .iter()
            .filter(|c| matches(&c.spec.labels, &selector))
        {
            let Some(service) = c.spec.labels.get(labels::SERVICE) else {
                continue;
            };
            let spec = c
                .spec
                .labels
                .get(labels::SPEC)
                .and_then(|json| serde_json::from_str::<ServiceSnapshot>(json).ok());
            let secrets = spec
                .iter()
                .flat_map(|s| s.secret_keys.iter())
                .filter_map(|k| c.spec.env.get(k).map(|v| (k.clone(), env_value(v))))
                .collect();
            let entry = services
                .entry(service.clone())
                .or_insert_with(|| ObservedService {
                    name: service.clone(),
                    containers: Vec::new(),
                    spec: None,
                    secrets: BTreeMap::new(),
                });
            entry.containers.push(ObservedContainer {
                id: c.id.clone(),
                name: c.spec.name.clone(),
                image: c.spec.image.clone(),
                state: c.state.clone(),
                health: c.health,
                run: c.spec.labels.get(labels::RUN).cloned(),
                created: c.created,
            });
            entry.spec = spec;
            entry.secrets = secrets;
        }
        Ok(Observed {
            environment: environment.to_string(),
            services,
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::EnsureNetwork {
            name: name.to_string(),
        })?;
        if state.networks.contains_key(name) {
            return Ok(Outcome::Unchanged);
        }
        state.networks.insert(
            name.to_string(),
            FakeObject {
                labels: labels.clone(),
            },
        );
        Ok(Outcome::Created)
    }

    async fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Outcome, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::EnsureVolume {
            name: name.to_string(),
        })?;
        if state.volumes.contains_key(name) {
            return Ok(Outcome::Unchanged);
        }
        state.volumes.insert(
            name.to_string(),
            FakeObject {
                labels: labels.clone(),
            },
        );
        Ok(Outcome::Created)
    }

    async fn run_container(&self, spec: &ContainerSpec) -> Result<Outcome, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::RunContainer {
            name: spec.name.clone(),
        })?;
        if let Some(c) = state.container_mut(&spec.name) {
            if matches!(
                c.state,
                ContainerState::Created | ContainerState::Exited { .. }
            ) {
                c.state = ContainerState::Running;
            }
            return Ok(Outcome::Unchanged);
        }
        if !state.image_exists(&spec.image) {
            return Err(EngineError::ImageMissing {
                image: spec.image.clone(),
            });
        }
        if !state.networks.contains_key(&spec.network) {
            return Err(EngineError::Call {
                action: "create container",
                object: spec.name.clone(),
                reason: format!("network {} not found", spec.network),
            });
        }
        // Docker creates a named volume that is missing, without labels: so does the fake, so a
        // forgotten ensure_volume shows as an unlabelled volume.
        for (volume, _) in &spec.volumes {
            state.volumes.entry(volume.clone()).or_default();
        }
        let mut published = BTreeMap::new();
        for port in &spec.probe_ports {
            published.insert(*port, state.next_port);
            state.next_port = state.next_port.wrapping_add(1);
        }
        // The engine runs exec probes itself; the fake reports them passing at once.
        let health = spec
            .healthcheck
            .as_ref()
            .filter(|h| matches!(h.probe, Probe::Exec { .. }))
            .map(|_| HealthState::Healthy);
        state.created += 1;
        let created = FIRST_CREATED + i64::from(state.created);
        let id = format!("fake{:060}", state.created);
        state.containers.push(FakeContainer {
            id,
            spec: spec.clone(),
            state: ContainerState::Running,
            health,
            created,
            published,
        });
        Ok(Outcome::Created)
    }

    async fn remove_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Removed, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::RemoveLabelled {
            selector: selector.clone(),
        })?;
        if selector.is_empty() {
            return Err(EngineError::Call {
                action: "remove",
                object: "objects matching no label".to_string(),
                reason: "refusing an empty selector, which would match everything".to_string(),
            });
        }
        let before = state.containers.len();
        state
            .containers
            .retain(|c| !matches(&c.spec.labels, selector));
        let containers = before - state.containers.len();

        let doomed: Vec<String> = state
            .networks
            .iter()
            .filter(|(_, n)| matches(&n.labels, selector))
            .map(|(name, _)| name.clone())
            .collect();
        if let Some(busy) = doomed
            .iter()
            .find(|n| state.containers.iter().any(|c| &c.spec.network == *n))
        {
            return Err(EngineError::Call {
                action: "remove network",
                object: busy.clone(),
                reason: "network has active endpoints".to_string(),
            });
        }
        for n in &doomed {
            state.networks.remove(n);
        }

        let before = state.volumes.len();
        state.volumes.retain(|_, v| !matches(&v.labels, selector));
        let volumes = before - state.volumes.len();
        Ok(Removed {
            containers,
            networks: doomed.len(),
            volumes,
        })
    }

    async fn build_image(&self, tag: &str, context: &BuildContext) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::BuildImage {
            tag: tag.to_string(),
        })?;
        state.builds.push((tag.to_string(), context.clone()));
        if let Some(set) = state.images.as_mut() {
            set.insert(tag.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::engine::spec::{base_labels, production_container, production_network};
    use crate::manifest::env::{Environment, Health, Port, Protocol, Service, Volume};
    use crate::manifest::secret::{Secret, SecretSource};

    fn service(name: &str, image: &str) -> Service {
        Service {
            name: name.into(),
            image: image.into(),
            command: None,
            env: BTreeMap::from([("MODE".into(), "prod".into())]),
            secrets: BTreeMap::from([(
                "TOKEN".into(),
                Secret {
                    source: SecretSource::FromEnv("T".into()),
                    value: SecretValue::new("hunter2"),
                },
            )]),
            ports: vec![Port {
                name: "http".into(),
                container: 8080,
                public: None,
                protocol: Protocol::Http,
            }],
            depends_on: vec![],
            health: None,
            stateful: false,
            volumes: vec![],
            managed_by: None,
        }
    }

    fn env(services: Vec<Service>) -> Environment {
        Environment {
            name: "shop".into(),
            client: "acme".into(),
            self_heal: false,
            services,
            source: PathBuf::from("manifests/shop.yaml"),
        }
    }

    async fn up(engine: &FakeEngine, e: &Environment, run: &str) {
        let labels = base_labels(e, Role::Production, run);
        engine
            .ensure_network(&production_network(&e.name), &labels)
            .await
            .expect("network");
        for s in &e.services {
            engine
                .run_container(&production_container(e, s, run))
                .await
                .expect("run");
        }
    }

    #[tokio::test]
    async fn observe_reads_back_what_ran_from_labels() {
        let engine = FakeEngine::new();
        let e = env(vec![service("web", "web:1"), service("api", "api:1")]);
        up(&engine, &e, "r1").await;

        let seen = engine.observe("shop").await.expect("observe");
        assert_eq!(seen.services.len(), 2);
        let web = &seen.services["web"];
        assert_eq!(web.spec, Some(ServiceSnapshot::from(&e.services[0])));
        assert_eq!(web.secrets["TOKEN"], SecretValue::new("hunter2"));
        assert_eq!(web.secrets.len(), 1, "only secret keys are read back");
        assert_eq!(web.containers.len(), 1);
        assert_eq!(web.containers[0].name, "shop-web-r1");
        assert_eq!(web.containers[0].run.as_deref(), Some("r1"));
        assert!(web.containers[0].state.is_running());
        assert_eq!(
            engine
                .observe("other")
                .await
                .expect("observe")
                .services
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn newest_container_gives_the_spec() {
        let engine = FakeEngine::new();
        up(&engine, &env(vec![service("web", "web:1")]), "r1").await;
        up(&engine, &env(vec![service("web", "web:2")]), "r2").await;
        let seen = engine.observe("shop").await.expect("observe");
        let web = &seen.services["web"];
        assert_eq!(web.containers.len(), 2);
        assert!(web.containers[0].created < web.containers[1].created);
        assert_eq!(web.spec.as_ref().map(|s| s.image.as_str()), Some("web:2"));
    }

    #[tokio::test]
    async fn run_is_idempotent_and_restarts_a_stopped_container() {
        let engine = FakeEngine::new();
        let e = env(vec![service("web", "web:1")]);
        up(&engine, &e, "r1").await;
        let spec = production_container(&e, &e.services[0], "r1");
        assert!(engine.set_state(&spec.name, ContainerState::Exited { code: 137 }));
        assert_eq!(
            engine.run_container(&spec).await.expect("run"),
            Outcome::Unchanged
        );
        assert!(
            engine
                .container(&spec.name)
                .expect("exists")
                .state
                .is_running()
        );
        assert_eq!(engine.containers().len(), 1);
        assert_eq!(
            engine.published_port(&spec.name, 8080).await.expect("port"),
            Some(FIRST_HOST_PORT)
        );
        assert_eq!(
            engine.published_port(&spec.name, 9).await.expect("port"),
            None
        );
    }

    #[tokio::test]
    async fn missing_image_and_network_fail_like_docker() {
        let engine = FakeEngine::with_images(["web:1"]);
        let e = env(vec![service("web", "web:2")]);
        let spec = production_container(&e, &e.services[0], "r1");
        let err = engine.run_container(&spec).await.expect_err("no image");
        assert!(matches!(err, EngineError::ImageMissing { ref image } if image == "web:2"));

        engine
            .build_image("web:2", &BuildContext::default())
            .await
            .expect("build");
        let err = engine.run_container(&spec).await.expect_err("no network");
        assert!(err.to_string().contains("network rollout-shop not found"));
        assert_eq!(engine.built(), vec!["web:2".to_string()]);
    }

    #[tokio::test]
    async fn scripted_failures_fire_once_in_order_and_calls_are_logged() {
        let engine = FakeEngine::new();
        engine.fail_next(
            FakeOp::EnsureNetwork,
            EngineError::Unreachable {
                endpoint: "x".into(),
                reason: "first".into(),
            },
        );
        engine.fail_next(
            FakeOp::EnsureNetwork,
            EngineError::Unreachable {
                endpoint: "x".into(),
                reason: "second".into(),
            },
        );
        let labels = BTreeMap::new();
        assert!(engine.observe("shop").await.is_ok(), "other ops unaffected");
        let first = engine
            .ensure_network("n", &labels)
            .await
            .expect_err("first");
        assert!(first.to_string().contains("first"));
        let second = engine
            .ensure_network("n", &labels)
            .await
            .expect_err("second");
        assert!(second.to_string().contains("second"));
        assert_eq!(
            engine.ensure_network("n", &labels).await.expect("ok"),
            Outcome::Created
        );
        assert_eq!(
            engine.ensure_network("n", &labels).await.expect("ok"),
            Outcome::Unchanged
        );
        let ops: Vec<FakeOp> = engine.calls().iter().map(FakeCall::op).collect();
        assert_eq!(
            ops,
            vec![
                FakeOp::Observe,
                FakeOp::EnsureNetwork,
                FakeOp::EnsureNetwork,
                FakeOp::EnsureNetwork,
                FakeOp::EnsureNetwork
            ]
        );
    }

    #[tokio::test]
    async fn remove_labelled_removes_only_matches_and_is_idempotent() {
        let engine = FakeEngine::new();
        let mut stateful = service("db", "db:1");
        stateful.volumes = vec![Volume {
            name: "data".into(),
            path: "/data".into(),
        }];
        stateful.health = Some(Health {
            probe: Probe::Exec {
                command: vec!["/bin/true".into()],
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            start_period: Duration::from_secs(1),
            retries: 1,
        });
        let e = env(vec![stateful]);
        let labels = base_labels(&e, Role::Production, "r1");
        engine
            .ensure_volume("shop-db-data", &labels)
            .await
            .expect("volume");
        engine
            .ensure_volume("keep", &BTreeMap::new())
            .await
            .expect("volume");
        up(&engine, &e, "r1").await;
        let db = engine.container("shop-db-r1").expect("db");
        assert_eq!(db.health, Some(HealthState::Healthy));

        let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), "shop".to_string())]);
        let removed = engine.remove_labelled(&selector).await.expect("remove");
        assert_eq!(
            removed,
            Removed {
                containers: 1,
                networks: 1,
                volumes: 1
            }
        );
        assert!(engine.containers().is_empty());
        assert!(engine.networks().is_empty());
        assert_eq!(engine.volumes().keys().collect::<Vec<_>>(), vec!["keep"]);
        assert_eq!(
            engine.remove_labelled(&selector).await.expect("again"),
            Removed::default()
        );
        assert!(engine.remove_labelled(&BTreeMap::new()).await.is_err());
    }
}
