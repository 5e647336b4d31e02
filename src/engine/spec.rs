//! What to create, decided in pure functions: container specs built from manifests.

use std::collections::BTreeMap;

use crate::manifest::env::{Environment, Health, Service};
use crate::manifest::secret::SecretValue;

use super::{Role, ServiceSnapshot, labels};

/// One environment variable of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretValue),
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The engine-wide container name.
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, EnvValue>,
    pub labels: BTreeMap<String, String>,
    /// The network the container joins, with the names it answers to there.
    pub network: String,
    pub aliases: Vec<String>,
    /// Container ports published on 127.0.0.1 (on a port the engine picks) so rollout can probe them.
    pub probe_ports: Vec<u16>,
    /// Named volumes: (volume name, mount path).
    pub volumes: Vec<(String, String)>,
    /// A health check the engine runs itself (exec probes); `None` keeps the image's HEALTHCHECK.
    pub healthcheck: Option<Health>,
    /// Ports published on a fixed host address and port (the edge proxy's public ports).
    pub publish: Vec<Published>,
    pub restart: Restart,
}

/// A container port published on a fixed host address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub container: u16,
    pub host_ip: String,
    pub host_port: u16,
}

/// What the engine does when a container stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Stay stopped: test versions, whose crashes must be seen, not hidden.
    Never,
    /// Start again after a crash or an engine restart, until rollout stops it: production.
    UnlessStopped,
}

/// The network a production environment's services share.
pub fn production_network(env: &str) -> String {
    format!("rollout-{env}")
}

/// Labels on every object of an environment for a role and run.
pub fn base_labels(env: &Environment, role: Role, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENVIRONMENT.to_string(), env.name.clone()),
        (labels::ROLE.to_string(), role.as_str().to_string()),
        (labels::RUN.to_string(), run.to_string()),
        (labels::CLIENT.to_string(), env.client.clone()),
    ])
}

/// The volume name backing a service volume in production.
pub fn production_volume(env: &str, service: &str, volume: &str) -> String {
    format!("{env}-{service}-{volume}")
}

/// The container that runs `service` in production for run `run`.
pub fn production_container(env: &Environment, service: &Service, run: &str) -> ContainerSpec {
    let mut labels = base_labels(env, Role::Production, run);
    labels.insert(labels::SERVICE.to_string(), service.name.clone());
    labels.insert(
        labels::SPEC.to_string(),
        serde_json::to_string(&ServiceSnapshot::from(service)).expect("snapshot serializes"),
    );
    let mut vars: BTreeMap<String, EnvValue> = service
        .env
        .iter()
        .map(|(k, v)| (k.clone(), EnvValue::Plain(v.clone())))
        .collect();
    for (k, s) in &service.secrets {
        vars.insert(k.clone(), EnvValue::Secret(s.value.clone()));
    }
    ContainerSpec {
        name: format!("{}-{}-{}", env.name, service.name, run),
        image: service.image.clone(),
        command: service.command.clone(),
        env: vars,
        labels,
        network: production_network(&env.name),
        aliases: vec![service.name.clone()],
        probe_ports: service.ports.iter().map(|p| p.container).collect(),
        volumes: service
            .volumes
            .iter()
            .map(|v| {
                (
                    production_volume(&env.name, &service.name, &v.name),
                    v.path.clone(),
                )
            })
            .collect(),
        healthcheck: service.health.clone(),
        publish: Vec::new(),
        restart: Restart::UnlessStopped,
    }
}

/// The network of a test version: its own, so the copy talks only to itself.
pub fn test_network(env: &str, run: &str) -> String {
    format!("{env}-test-{run}")
}

/// The volume backing a service volume in a test version.
pub fn test_volume(env: &str, run: &str, service: &str, volume: &str) -> String {
    format!("{env}-test-{run}-{service}-{volume}")
}

/// Labels of every object of a test version.
pub fn test_labels(
    env: &Environment,
    run: &str,
    expires: jiff::Timestamp,
    owner: Option<&str>,
) -> BTreeMap<String, String> {
    let mut labels = base_labels(env, Role::Test, run);
    labels.insert(labels::EXPIRES.to_string(), expires.as_second().to_string());
    if let Some(owner) = owner {
        labels.insert(labels::OWNER.to_string(), owner.to_string());
    }
    labels
}

/// The container that runs `service` in test version `run`: same image, settings and secrets
/// as production would get, its own name and network, and the service name as its alias there
/// so names resolve inside the copy exactly as in production.
pub fn test_container(
    env: &Environment,
    service: &Service,
    run: &str,
    labels: &BTreeMap<String, String>,
) -> ContainerSpec {
    let mut spec = production_container(env, service, run);
    let mut all = labels.clone();
    all.insert(labels::SERVICE.to_string(), service.name.clone());
    if let Some(snapshot) = spec.labels.get(labels::SPEC) {
        all.insert(labels::SPEC.to_string(), snapshot.clone());
    }
    spec.labels = all;
    spec.name = format!("{}-test-{run}-{}", env.name, service.name);
    spec.restart = Restart::Never;
    spec.network = test_network(&env.name, run);
    spec.volumes = service
        .volumes
        .iter()
        .map(|v| {
            (
                test_volume(&env.name, run, &service.name, &v.name),
                v.path.clone(),
            )
        })
        .collect();
    spec
}

/// The edge proxy container of an environment.
pub fn proxy_name(env: &str) -> String {
    format!("rollout-proxy-{env}")
}

/// The edge proxy of `env`: on the environment's network (it forwards to container addresses
/// there), holding every public port on `bind_ip`, its admin port published on 127.0.0.1 only,
/// its routing table on a volume, restarted by the engine unless stopped.
pub fn proxy_container(env: &Environment, run: &str, bind_ip: &str, image: &str) -> ContainerSpec {
    use super::image::{PROXY_ADMIN_PORT, PROXY_STATE_DIR};
    let name = proxy_name(&env.name);
    ContainerSpec {
        name: name.clone(),
        image: image.to_string(),
        command: None,
        env: BTreeMap::new(),
        labels: base_labels(env, Role::Proxy, run),
        network: production_network(&env.name),
        aliases: Vec::new(),
        probe_ports: vec![PROXY_ADMIN_PORT],
        volumes: vec![(format!("{name}-state"), PROXY_STATE_DIR.to_string())],
        healthcheck: None,
        publish: env
            .services
            .iter()
            .flat_map(|s| s.ports.iter().filter_map(|p| p.public))
            .map(|public| Published {
                container: public,
                host_ip: bind_ip.to_string(),
                host_port: public,
            })
            .collect(),
        restart: Restart::UnlessStopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::source::Source;
    use crate::manifest::{env, yaml};

    fn shop() -> Environment {
        let text = "apiVersion: rollout/v1\nkind: Environment\nname: shop\nclient: acme\nservices:\n  web:\n    image: web:1\n    ports: [ { name: http, container: 8080, public: 18080 }, { name: admin, container: 9090 } ]\n  db:\n    image: db:1\n    ports: [ { container: 5432, public: 15432, protocol: tcp } ]\n";
        let src = Source::new("shop.yaml", text);
        env::resolve(&src, yaml::parse(&src, "m").unwrap(), &|_| None).unwrap()
    }

    #[test]
    fn the_proxy_holds_every_public_port_and_nothing_else() {
        let spec = proxy_container(&shop(), "r1", "127.0.0.1", "rollout-proxy:test");
        assert_eq!(spec.name, "rollout-proxy-shop");
        let mut ports: Vec<u16> = spec.publish.iter().map(|p| p.host_port).collect();
        ports.sort();
        assert_eq!(ports, [15432, 18080]);
        assert!(
            spec.publish
                .iter()
                .all(|p| p.host_ip == "127.0.0.1" && p.container == p.host_port)
        );
        assert_eq!(spec.probe_ports, [crate::engine::image::PROXY_ADMIN_PORT]);
        assert_eq!(spec.labels[labels::ROLE], "proxy");
        assert_eq!(spec.restart, Restart::UnlessStopped);
        assert_eq!(spec.network, "rollout-shop");
    }

    #[test]
    fn test_versions_never_restart_and_production_does() {
        let env = shop();
        let svc = env.service("web").unwrap();
        assert_eq!(
            production_container(&env, svc, "r1").restart,
            Restart::UnlessStopped
        );
        let labels = test_labels(&env, "t1", jiff::Timestamp::UNIX_EPOCH, None);
        let t = test_container(&env, svc, "t1", &labels);
        assert_eq!(t.restart, Restart::Never);
        assert_eq!(t.name, "shop-test-t1-web");
        assert_eq!(t.network, "shop-test-t1");
        assert_eq!(t.aliases, ["web"]);
        assert_eq!(t.labels[labels::ROLE], "test");
    }
}
