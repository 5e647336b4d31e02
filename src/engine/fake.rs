//! A scripted engine for unit tests of the code above the [`Engine`] seam.
//!
//! [`FakeEngine`] keeps containers, networks, volumes and images in memory and answers like the
//! Docker engine does where callers can tell: [`Engine::observe`] reads containers back from their
//! labels alone (spec from `rollout.spec`, secrets from the container's environment), creating a
//! container needs its network and image, removal goes by labels. Tests script failures with
//! [`FakeEngine::fail_next`], change container state and health by hand, and read the
//! [`FakeEngine::calls`] log.
//!
//! Events flow as on Docker: subscribers of [`Engine::events`] hear a container start (run,
//! restart) and die (stop, removal while running, [`FakeEngine::set_state`] to `Exited`), its
//! health change ([`FakeEngine::set_health`]), and whatever a test sends with
//! [`FakeEngine::emit`]. Exec output and logs are scripted ([`FakeEngine::script_exec`],
//! [`FakeEngine::set_logs`]); an exec timeout is scripted with
//! `fail_next(FakeOp::Exec, EngineError::ExecTimeout { .. })`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::image::BuildContext;
use super::{
    ContainerEvent, ContainerSpec, ContainerState, ContainerStatus, Copied, Engine, EngineError,
    EnvValue, EventKind, EventStream, ExecOutput, HealthState, LabelledObject, ObjectKind,
    Observed, ObservedContainer, Outcome, Removed, Role, ServiceSnapshot, labels,
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
    Events,
    Status,
    PublishedPort,
    Exec,
    LogsTail,
    Pause,
    Unpause,
    CopyVolume,
    ListLabelled,
    StopContainer,
}

/// One call made to the fake, in order, with what identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Observe {
        environment: String,
    },
    EnsureNetwork {
        name: String,
    },
    EnsureVolume {
        name: String,
    },
    RunContainer {
        name: String,
    },
    RemoveLabelled {
        selector: BTreeMap<String, String>,
    },
    BuildImage {
        tag: String,
    },
    Events {
        selector: BTreeMap<String, String>,
    },
    Status {
        container: String,
    },
    PublishedPort {
        container: String,
        container_port: u16,
    },
    Exec {
        container: String,
        command: Vec<String>,
    },
    LogsTail {
        container: String,
        lines: usize,
    },
    Pause {
        container: String,
    },
    Unpause {
        container: String,
    },
    CopyVolume {
        from: String,
        to: String,
    },
    ListLabelled {
        selector: BTreeMap<String, String>,
    },
    StopContainer {
        container: String,
        grace: Duration,
    },
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
            FakeCall::Events { .. } => FakeOp::Events,
            FakeCall::Status { .. } => FakeOp::Status,
            FakeCall::PublishedPort { .. } => FakeOp::PublishedPort,
            FakeCall::Exec { .. } => FakeOp::Exec,
            FakeCall::LogsTail { .. } => FakeOp::LogsTail,
            FakeCall::Pause { .. } => FakeOp::Pause,
            FakeCall::Unpause { .. } => FakeOp::Unpause,
            FakeCall::CopyVolume { .. } => FakeOp::CopyVolume,
            FakeCall::ListLabelled { .. } => FakeOp::ListLabelled,
            FakeCall::StopContainer { .. } => FakeOp::StopContainer,
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
    /// How often the engine restarted it (set by tests: the fake has no restart policy).
    pub restart_count: i64,
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
    /// Live event subscriptions: the selector and where its events go.
    subscribers: Vec<(BTreeMap<String, String>, Subscriber)>,
    /// Scripted exec results by container and command.
    exec_outputs: BTreeMap<(String, Vec<String>), ExecOutput>,
    /// Scripted output by container name.
    logs: BTreeMap<String, Vec<String>>,
    /// Volume copies made, (from, to), in order.
    copies: Vec<(String, String)>,
}

/// Creates network or volume `name` among `objects`, with `labels`, unless it is there.
fn ensure_object(
    objects: &mut BTreeMap<String, FakeObject>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Outcome {
    if objects.contains_key(name) {
        return Outcome::Unchanged;
    }
    let labels = labels.clone();
    objects.insert(name.to_string(), FakeObject { labels });
    Outcome::Created
}

type Subscriber = mpsc::UnboundedSender<Result<ContainerEvent, EngineError>>;

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

    fn container(&self, name: &str) -> Option<&FakeContainer> {
        self.containers.iter().find(|c| c.spec.name == name)
    }

    /// Sends an event to every subscriber whose selector the container's labels match; an event
    /// about a container the fake does not hold goes to every subscriber. Forgets subscribers
    /// whose stream was dropped.
    fn emit(&mut self, event: ContainerEvent) {
        let labels = self
            .container(&event.container)
            .map(|c| c.spec.labels.clone());
        self.subscribers.retain(|(selector, tx)| {
            if labels.as_ref().is_some_and(|l| !matches(l, selector)) {
                return !tx.is_closed();
            }
            tx.send(Ok(event.clone())).is_ok()
        });
    }

    /// Sets a container's state and emits what Docker would report for the change.
    fn transition(&mut self, name: &str, state: ContainerState) -> bool {
        let Some(c) = self.container_mut(name) else {
            return false;
        };
        let kind = transition_event(&c.state, &state);
        c.state = state;
        if let Some(kind) = kind {
            self.emit(ContainerEvent {
                container: name.to_string(),
                kind,
            });
        }
        true
    }

    /// The error Docker gives for a call on a container that is not there.
    fn missing(action: &'static str, container: &str) -> EngineError {
        EngineError::Call {
            action,
            object: container.to_string(),
            reason: "no such container".to_string(),
        }
    }
}

/// The event Docker reports when a container goes from `old` to `new`, if any.
fn transition_event(old: &ContainerState, new: &ContainerState) -> Option<EventKind> {
    match (old, new) {
        (ContainerState::Running | ContainerState::Paused, ContainerState::Running) => None,
        (_, ContainerState::Running) => Some(EventKind::Started),
        (
            ContainerState::Running | ContainerState::Paused | ContainerState::Restarting,
            ContainerState::Exited { code },
        ) => Some(EventKind::Died { exit_code: *code }),
        _ => None,
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

    /// Pauses (`paused`) or unpauses, as `call`, a container that runs or is paused already.
    fn set_paused(&self, call: FakeCall, container: &str, paused: bool) -> Result<(), EngineError> {
        let (action, now, not) = if paused {
            ("pause container", ContainerState::Paused, "running")
        } else {
            ("unpause container", ContainerState::Running, "paused")
        };
        let mut state = self.lock();
        state.enter(call)?;
        let c = state
            .container_mut(container)
            .ok_or_else(|| State::missing(action, container))?;
        match c.state {
            ContainerState::Running | ContainerState::Paused => {
                c.state = now;
                Ok(())
            }
            ref other => Err(EngineError::Call {
                action,
                object: container.to_string(),
                reason: format!("the container is not {not} (it is {other})"),
            }),
        }
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

    /// Sets a container's state, e.g. to simulate a crash: `Exited { code: 1 }`, and emits the
    /// event Docker would (`Died` for a running container that exits, `Started` for a stopped
    /// one that runs). Returns whether the container exists.
    pub fn set_state(&self, name: &str, state: ContainerState) -> bool {
        self.lock().transition(name, state)
    }

    /// Sets the health the engine reports for a container, emitting a `Health` event when it
    /// changes to a known state. Returns whether the container exists.
    pub fn set_health(&self, name: &str, health: Option<HealthState>) -> bool {
        let mut state = self.lock();
        let Some(c) = state.container_mut(name) else {
            return false;
        };
        let changed = c.health != health;
        c.health = health;
        if let (true, Some(h)) = (changed, health) {
            state.emit(ContainerEvent {
                container: name.to_string(),
                kind: EventKind::Health(h),
            });
        }
        true
    }

    /// Sets how often the engine reports having restarted a container. Returns whether the
    /// container exists.
    pub fn set_restart_count(&self, name: &str, count: i64) -> bool {
        self.lock()
            .container_mut(name)
            .map(|c| c.restart_count = count)
            .is_some()
    }

    /// Sends an event to the subscribers of [`Engine::events`] whose selector the container
    /// matches (every subscriber, for a container the fake does not hold). Changes no state.
    pub fn emit(&self, event: ContainerEvent) {
        self.lock().emit(event);
    }

    /// Ends every event stream, as a lost engine connection would.
    pub fn close_events(&self) {
        self.lock().subscribers.clear();
    }

    /// How many event streams are open (dropped ones are noticed at the next event).
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// What [`Engine::exec`] of `command` in `container` returns from now on (by default: exit
    /// code 0 and no output).
    pub fn script_exec<I, S>(&self, container: &str, command: I, output: ExecOutput)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let command = command.into_iter().map(Into::into).collect();
        self.lock()
            .exec_outputs
            .insert((container.to_string(), command), output);
    }

    /// The lines a container has printed, as [`Engine::logs_tail`] reads them. May be set before
    /// the container exists.
    pub fn set_logs<I, S>(&self, container: &str, lines: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lock().logs.insert(
            container.to_string(),
            lines.into_iter().map(Into::into).collect(),
        );
    }

    /// Volume copies made, (from, to), in order.
    pub fn copies(&self) -> Vec<(String, String)> {
        self.lock().copies.clone()
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
        let mut observed = Observed {
            environment: environment.to_string(),
            services: BTreeMap::new(),
            traffic: self.traffic(),
        };
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
            observed.add(
                service,
                ObservedContainer {
                    id: c.id.clone(),
                    name: c.spec.name.clone(),
                    image: c.spec.image.clone(),
                    state: c.state.clone(),
                    health: c.health,
                    run: c.spec.labels.get(labels::RUN).cloned(),
                    created: c.created,
                },
                spec,
                secrets,
            );
        }
        Ok(observed)
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
        Ok(ensure_object(&mut state.networks, name, labels))
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
        Ok(ensure_object(&mut state.volumes, name, labels))
    }

    async fn run_container(&self, spec: &ContainerSpec) -> Result<Outcome, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::RunContainer {
            name: spec.name.clone(),
        })?;
        if let Some(c) = state.container(&spec.name) {
            if matches!(
                c.state,
                ContainerState::Created | ContainerState::Exited { .. }
            ) {
                state.transition(&spec.name, ContainerState::Running);
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
            restart_count: 0,
        });
        state.emit(ContainerEvent {
            container: spec.name.clone(),
            kind: EventKind::Started,
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
        // A forced removal kills what runs: Docker reports it dying of SIGKILL first.
        let killed: Vec<String> = state
            .containers
            .iter()
            .filter(|c| matches(&c.spec.labels, selector))
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Paused))
            .map(|c| c.spec.name.clone())
            .collect();
        for name in killed {
            state.emit(ContainerEvent {
                container: name,
                kind: EventKind::Died { exit_code: 137 },
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

    async fn events(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<EventStream, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::Events {
            selector: selector.clone(),
        })?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        state.subscribers.push((selector.clone(), tx));
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn status(&self, container: &str) -> Result<Option<ContainerStatus>, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::Status {
            container: container.to_string(),
        })?;
        Ok(state.container(container).map(|c| ContainerStatus {
            state: c.state.clone(),
            health: c.health,
            // The engine runs exec probes; any other reported health comes from the image's.
            has_healthcheck: c.health.is_some()
                || c.spec
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| matches!(h.probe, Probe::Exec { .. })),
            restart_count: c.restart_count,
        }))
    }

    async fn published_port(
        &self,
        container: &str,
        container_port: u16,
    ) -> Result<Option<u16>, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::PublishedPort {
            container: container.to_string(),
            container_port,
        })?;
        let c = state
            .container(container)
            .ok_or_else(|| State::missing("inspect container", container))?;
        Ok(c.published.get(&container_port).copied())
    }

    async fn exec(
        &self,
        container: &str,
        command: &[String],
        _limit: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::Exec {
            container: container.to_string(),
            command: command.to_vec(),
        })?;
        let c = state
            .container(container)
            .ok_or_else(|| State::missing("exec in container", container))?;
        if !c.state.is_running() {
            return Err(EngineError::Call {
                action: "exec in container",
                object: container.to_string(),
                reason: format!("the container is not running (it is {})", c.state),
            });
        }
        Ok(state
            .exec_outputs
            .get(&(container.to_string(), command.to_vec()))
            .cloned()
            .unwrap_or(ExecOutput {
                exit_code: 0,
                output: String::new(),
            }))
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::LogsTail {
            container: container.to_string(),
            lines,
        })?;
        if state.container(container).is_none() {
            return Err(State::missing("read logs of container", container));
        }
        let all = state.logs.get(container).map(Vec::as_slice).unwrap_or(&[]);
        Ok(all[all.len().saturating_sub(lines)..].to_vec())
    }

    async fn pause(&self, container: &str) -> Result<(), EngineError> {
        let call = FakeCall::Pause {
            container: container.to_string(),
        };
        self.set_paused(call, container, true)
    }

    async fn unpause(&self, container: &str) -> Result<(), EngineError> {
        let call = FakeCall::Unpause {
            container: container.to_string(),
        };
        self.set_paused(call, container, false)
    }

    async fn copy_volume(
        &self,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Copied, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::CopyVolume {
            from: from.to_string(),
            to: to.to_string(),
        })?;
        if !state.volumes.contains_key(from) {
            return Err(EngineError::Call {
                action: "copy volume",
                object: format!("{from} -> {to}"),
                reason: format!("there is no volume `{from}`"),
            });
        }
        state
            .volumes
            .entry(to.to_string())
            .or_insert_with(|| FakeObject {
                labels: labels.clone(),
            });
        state.copies.push((from.to_string(), to.to_string()));
        Ok(Copied::Files)
    }

    async fn list_labelled(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<LabelledObject>, EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::ListLabelled {
            selector: selector.clone(),
        })?;
        let object = |kind, name: &String, labels: &BTreeMap<String, String>| LabelledObject {
            kind,
            name: name.clone(),
            labels: labels.clone(),
        };
        let mut found: Vec<LabelledObject> = state
            .containers
            .iter()
            .filter(|c| matches(&c.spec.labels, selector))
            .map(|c| object(ObjectKind::Container, &c.spec.name, &c.spec.labels))
            .chain(
                state
                    .networks
                    .iter()
                    .filter(|(_, n)| matches(&n.labels, selector))
                    .map(|(name, n)| object(ObjectKind::Network, name, &n.labels)),
            )
            .chain(
                state
                    .volumes
                    .iter()
                    .filter(|(_, v)| matches(&v.labels, selector))
                    .map(|(name, v)| object(ObjectKind::Volume, name, &v.labels)),
            )
            .collect();
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(found)
    }

    async fn remove_container(&self, container: &str) -> Result<(), EngineError> {
        self.lock().containers.retain(|c| c.spec.name != container);
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let mut state = self.lock();
        if state.containers.iter().any(|c| c.spec.network == name) {
            return Err(EngineError::Call {
                action: "remove network",
                object: name.to_string(),
                reason: "a container is still attached to it".into(),
            });
        }
        state.networks.remove(name);
        Ok(())
    }

    async fn start_container(&self, container: &str) -> Result<(), EngineError> {
        if self.set_state(container, ContainerState::Running) {
            Ok(())
        } else {
            Err(EngineError::Call {
                action: "start container",
                object: container.to_string(),
                reason: "no such container".into(),
            })
        }
    }

    async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        let state = self.lock();
        Ok(state
            .images
            .as_ref()
            .is_none_or(|known| known.contains(image))
            || state.builds.iter().any(|(tag, _)| tag == image))
    }

    /// Containers get 10.0.0.N on their network, N counting from 2 in creation order.
    async fn address(
        &self,
        container: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, EngineError> {
        let state = self.lock();
        let mut on_network: Vec<&FakeContainer> = state
            .containers
            .iter()
            .filter(|c| c.spec.network == network)
            .collect();
        on_network.sort_by_key(|c| (c.created, c.spec.name.clone()));
        Ok(on_network
            .iter()
            .position(|c| c.spec.name == container)
            .map(|i| std::net::IpAddr::from([10, 0, 0, (i + 2).min(254) as u8])))
    }

    async fn stop_container(&self, container: &str, grace: Duration) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.enter(FakeCall::StopContainer {
            container: container.to_string(),
            grace,
        })?;
        let stops = state.container(container).is_some_and(|c| {
            matches!(
                c.state,
                ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
            )
        });
        if stops {
            state.transition(container, ContainerState::Exited { code: 0 });
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
            requires: Default::default(),
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

    /// The next event, failing the test if none comes at once.
    async fn next_event(events: &mut EventStream) -> ContainerEvent {
        use futures_util::StreamExt;
        tokio::time::timeout(Duration::from_secs(1), events.next())
            .await
            .expect("an event")
            .expect("stream open")
            .expect("no stream error")
    }

    fn assert_no_event(events: &mut EventStream) {
        use futures_util::FutureExt;
        use futures_util::StreamExt;
        assert!(events.next().now_or_never().is_none(), "unexpected event");
    }

    #[tokio::test]
    async fn events_report_starts_deaths_health_and_emitted_events_by_label() {
        let engine = FakeEngine::new();
        let shop = BTreeMap::from([(labels::ENVIRONMENT.to_string(), "shop".to_string())]);
        let other = BTreeMap::from([(labels::ENVIRONMENT.to_string(), "other".to_string())]);
        let mut events = engine.events(&shop).await.expect("events");
        let mut others = engine.events(&other).await.expect("events");
        assert_eq!(engine.subscribers(), 2);

        let e = env(vec![service("web", "web:1")]);
        up(&engine, &e, "r1").await;
        let name = "shop-web-r1".to_string();
        let event = |kind| ContainerEvent {
            container: name.clone(),
            kind,
        };
        assert_eq!(next_event(&mut events).await, event(EventKind::Started));

        assert!(engine.set_health(&name, Some(HealthState::Unhealthy)));
        assert!(
            engine.set_health(&name, Some(HealthState::Unhealthy)),
            "no change, no event"
        );
        assert_eq!(
            next_event(&mut events).await,
            event(EventKind::Health(HealthState::Unhealthy))
        );
        assert!(engine.set_state(&name, ContainerState::Exited { code: 3 }));
        assert_eq!(
            next_event(&mut events).await,
            event(EventKind::Died { exit_code: 3 })
        );
        // Started again by an idempotent run.
        let spec = production_container(&e, &e.services[0], "r1");
        engine.run_container(&spec).await.expect("run");
        assert_eq!(next_event(&mut events).await, event(EventKind::Started));

        engine.emit(event(EventKind::OutOfMemory));
        assert_eq!(next_event(&mut events).await, event(EventKind::OutOfMemory));
        // An unknown container cannot be matched by labels: everyone hears of it.
        let ghost = ContainerEvent {
            container: "ghost".into(),
            kind: EventKind::Started,
        };
        engine.emit(ghost.clone());
        assert_eq!(next_event(&mut events).await, ghost);
        assert_eq!(next_event(&mut others).await, ghost);
        assert_no_event(&mut others);

        // A forced removal kills the running container.
        engine.remove_labelled(&shop).await.expect("remove");
        assert_eq!(
            next_event(&mut events).await,
            event(EventKind::Died { exit_code: 137 })
        );
        assert_no_event(&mut events);

        drop(others);
        engine.emit(ghost.clone());
        assert_eq!(engine.subscribers(), 1, "a dropped stream is forgotten");
        assert_eq!(next_event(&mut events).await, ghost);
        engine.close_events();
        use futures_util::StreamExt;
        assert!(events.next().await.is_none(), "closed streams end");
    }

    #[tokio::test]
    async fn status_exec_logs_and_pause_follow_the_container() {
        let engine = FakeEngine::new();
        assert_eq!(engine.status("shop-web-r1").await.expect("status"), None);
        let e = env(vec![service("web", "web:1")]);
        up(&engine, &e, "r1").await;
        let name = "shop-web-r1";
        assert!(engine.set_restart_count(name, 4));
        assert_eq!(
            engine.status(name).await.expect("status"),
            Some(ContainerStatus {
                state: ContainerState::Running,
                health: None,
                has_healthcheck: false,
                restart_count: 4,
            })
        );

        let check = vec!["/bin/check".to_string(), "-q".to_string()];
        let limit = Duration::from_secs(5);
        assert_eq!(
            engine.exec(name, &check, limit).await.expect("exec"),
            ExecOutput {
                exit_code: 0,
                output: String::new()
            },
            "unscripted commands succeed silently"
        );
        let failing = ExecOutput {
            exit_code: 2,
            output: "db unreachable\n".into(),
        };
        engine.script_exec(name, ["/bin/check", "-q"], failing.clone());
        assert_eq!(
            engine.exec(name, &check, limit).await.expect("exec"),
            failing
        );
        engine.fail_next(
            FakeOp::Exec,
            EngineError::ExecTimeout {
                container: name.into(),
                command: "/bin/check -q".into(),
                limit,
            },
        );
        assert!(matches!(
            engine.exec(name, &check, limit).await,
            Err(EngineError::ExecTimeout { .. })
        ));

        engine.set_logs(name, ["one", "two", "three"]);
        assert_eq!(
            engine.logs_tail(name, 2).await.expect("logs"),
            vec!["two".to_string(), "three".to_string()]
        );
        assert_eq!(engine.logs_tail(name, 10).await.expect("logs").len(), 3);
        assert!(engine.logs_tail("missing", 1).await.is_err());

        engine.pause(name).await.expect("pause");
        engine.pause(name).await.expect("pause is idempotent");
        assert_eq!(
            engine.status(name).await.expect("status").map(|s| s.state),
            Some(ContainerState::Paused)
        );
        let err = engine.exec(name, &check, limit).await.expect_err("paused");
        assert!(err.to_string().contains("not running"), "{err}");
        engine.unpause(name).await.expect("unpause");
        engine.unpause(name).await.expect("unpause is idempotent");
        assert!(engine.container(name).expect("exists").state.is_running());

        engine
            .stop_container(name, Duration::from_secs(1))
            .await
            .expect("stop");
        assert_eq!(
            engine.container(name).expect("exists").state,
            ContainerState::Exited { code: 0 }
        );
        engine
            .stop_container(name, Duration::from_secs(1))
            .await
            .expect("stopping a stopped container is fine");
        engine
            .stop_container("missing", Duration::ZERO)
            .await
            .expect("stopping a missing container is fine");
        assert!(
            engine.pause(name).await.is_err(),
            "a stopped container cannot pause"
        );
        let err = engine.exec(name, &check, limit).await.expect_err("stopped");
        assert!(err.to_string().contains("not running"), "{err}");
    }

    #[tokio::test]
    async fn copy_volume_records_the_copy_and_creates_the_target() {
        let engine = FakeEngine::new();
        let labels = BTreeMap::from([(labels::ROLE.to_string(), "test".to_string())]);
        assert!(
            engine.copy_volume("nope", "copy", &labels).await.is_err(),
            "the source must exist"
        );
        assert!(engine.volumes().is_empty());
        engine
            .ensure_volume("data", &BTreeMap::new())
            .await
            .expect("volume");
        engine
            .copy_volume("data", "copy", &labels)
            .await
            .expect("copy");
        engine
            .copy_volume("data", "copy", &BTreeMap::new())
            .await
            .expect("again");
        assert_eq!(engine.volumes()["copy"].labels, labels);
        assert_eq!(
            engine.copies(),
            vec![
                ("data".to_string(), "copy".to_string()),
                ("data".to_string(), "copy".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn list_labelled_finds_containers_networks_and_volumes() {
        let engine = FakeEngine::new();
        let e = env(vec![service("web", "web:1")]);
        let labels = base_labels(&e, Role::Production, "r1");
        engine
            .ensure_volume("shop-web-data", &labels)
            .await
            .expect("volume");
        engine
            .ensure_volume("unrelated", &BTreeMap::new())
            .await
            .expect("volume");
        up(&engine, &e, "r1").await;
        let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), "shop".to_string())]);
        let found = engine.list_labelled(&selector).await.expect("list");
        let kinds: Vec<(ObjectKind, &str)> =
            found.iter().map(|o| (o.kind, o.name.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (ObjectKind::Container, "shop-web-r1"),
                (ObjectKind::Network, "rollout-shop"),
                (ObjectKind::Volume, "shop-web-data"),
            ]
        );
        assert_eq!(found[1].labels, labels);
        assert_eq!(found[0].labels[labels::SERVICE], "web");
        let none = BTreeMap::from([(labels::ENVIRONMENT.to_string(), "x".to_string())]);
        assert!(engine.list_labelled(&none).await.expect("list").is_empty());
    }
}
