//! Unit tests of the Docker backend's translations (no engine needed).

use bollard::models::{
    ContainerInspectResponse, EventMessage, EventMessageTypeEnum, HealthConfig, MountType,
    RestartPolicyNameEnum,
};

use super::containers::*;
use super::events::*;
use super::*;
use crate::engine::{ContainerEvent, EnvValue, EventKind, HealthState};
use crate::manifest::env::{DEFAULT_RETRIES, Health, Probe};
use crate::manifest::secret::SecretValue;

fn spec() -> ContainerSpec {
    ContainerSpec {
        name: "shop-web-r1".into(),
        image: "shop-web:1".into(),
        command: Some(vec!["/bin/web".into()]),
        env: BTreeMap::from([
            ("A".into(), EnvValue::Plain("1".into())),
            ("KEY".into(), EnvValue::Secret(SecretValue::new("s3cret"))),
        ]),
        labels: BTreeMap::from([("rollout.environment".into(), "shop".into())]),
        network: "rollout-shop".into(),
        aliases: vec!["web".into()],
        probe_ports: vec![8080],
        volumes: vec![("shop-web-data".into(), "/data".into())],
        healthcheck: None,
        publish: Vec::new(),
        restart: crate::engine::spec::Restart::Never,
    }
}

#[test]
fn fixed_ports_and_the_restart_policy_reach_the_engine() {
    let mut spec = spec();
    spec.publish = vec![crate::engine::spec::Published {
        container: 18080,
        host_ip: "127.0.0.1".into(),
        host_port: 18080,
    }];
    spec.restart = crate::engine::spec::Restart::UnlessStopped;
    let body = create_body(&spec);
    let host = body.host_config.expect("host config");
    let bindings = host.port_bindings.expect("bindings");
    let b = bindings["18080/tcp"].as_ref().expect("binding");
    assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(b[0].host_port.as_deref(), Some("18080"));
    assert!(bindings.contains_key("8080/tcp"), "probe ports stay");
    assert_eq!(
        host.restart_policy.and_then(|r| r.name),
        Some(RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    assert_eq!(
        create_body(&super::tests::spec())
            .host_config
            .and_then(|h| h.restart_policy),
        None
    );
}

#[test]
fn create_body_publishes_probe_ports_on_loopback_only() {
    let body = create_body(&spec());
    let host = body.host_config.expect("host config");
    let bindings = host.port_bindings.expect("bindings");
    let b = bindings["8080/tcp"].as_ref().expect("binding");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(b[0].host_port.as_deref(), Some(""));
    assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_string()]));
    assert_eq!(host.network_mode.as_deref(), Some("rollout-shop"));
    let mount = &host.mounts.expect("mounts")[0];
    assert_eq!(mount.typ, Some(MountType::VOLUME));
    assert_eq!(mount.source.as_deref(), Some("shop-web-data"));
    let endpoints = body
        .networking_config
        .and_then(|n| n.endpoints_config)
        .expect("endpoints");
    assert_eq!(
        endpoints["rollout-shop"].aliases,
        Some(vec!["web".to_string()])
    );
    assert_eq!(
        body.env,
        Some(vec!["A=1".to_string(), "KEY=s3cret".to_string()])
    );
    assert_eq!(body.healthcheck, None);
}

#[test]
fn only_exec_probes_become_docker_healthchecks() {
    let health = |probe| Health {
        probe,
        interval: Duration::from_millis(1500),
        timeout: Duration::from_secs(2),
        start_period: Duration::from_secs(30),
        retries: DEFAULT_RETRIES,
    };
    let exec = docker_healthcheck(&health(Probe::Exec {
        command: vec!["/bin/check".into(), "-q".into()],
    }))
    .expect("exec becomes a healthcheck");
    assert_eq!(
        exec.test,
        Some(vec!["CMD".into(), "/bin/check".into(), "-q".into()])
    );
    assert_eq!(exec.interval, Some(1_500_000_000));
    assert_eq!(exec.timeout, Some(2_000_000_000));
    assert_eq!(exec.start_period, Some(30_000_000_000));
    assert_eq!(exec.retries, Some(3));
    assert!(docker_healthcheck(&health(Probe::Tcp { port: 1 })).is_none());
    assert!(
        docker_healthcheck(&health(Probe::Http {
            port: 1,
            path: "/".into()
        }))
        .is_none()
    );
}

#[test]
fn secrets_are_read_only_for_the_keys_asked() {
    let env = vec![
        "A=1".to_string(),
        "KEY=a=b".to_string(),
        "PATH=/bin".to_string(),
    ];
    let got = secrets_from_env(&env, &["KEY", "MISSING"]);
    assert_eq!(got.len(), 1);
    assert_eq!(got["KEY"].expose(), "a=b");
}

#[test]
fn label_filters_and_all_labels() {
    let sel = BTreeMap::from([
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "x=y".to_string()),
    ]);
    assert_eq!(
        label_filters(&sel)["label"],
        vec!["a=1".to_string(), "b=x=y".to_string()]
    );
}

fn message(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
    EventMessage {
        typ: Some(EventMessageTypeEnum::CONTAINER),
        action: Some(action.to_string()),
        actor: Some(bollard::models::EventActor {
            id: Some("abc".into()),
            attributes: Some(
                attributes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }),
        ..Default::default()
    }
}

#[test]
fn engine_events_map_to_container_events() {
    let event = |action, attributes: &[(&str, &str)]| {
        container_event(&message(action, attributes)).map(|e| e.kind)
    };
    let name = ("name", "shop-web-r1");
    assert_eq!(
        container_event(&message("start", &[name])),
        Some(ContainerEvent {
            container: "shop-web-r1".into(),
            kind: EventKind::Started
        })
    );
    assert_eq!(
        event("die", &[name, ("exitCode", "3")]),
        Some(EventKind::Died { exit_code: 3 })
    );
    assert_eq!(
        event("die", &[name]),
        Some(EventKind::Died { exit_code: -1 })
    );
    assert_eq!(
        event("health_status: healthy", &[name]),
        Some(EventKind::Health(HealthState::Healthy))
    );
    assert_eq!(
        event("health_status: unhealthy", &[name]),
        Some(EventKind::Health(HealthState::Unhealthy))
    );
    assert_eq!(
        event("health_status", &[name, ("healthStatus", "healthy")]),
        Some(EventKind::Health(HealthState::Healthy))
    );
    assert_eq!(event("oom", &[name]), Some(EventKind::OutOfMemory));
    assert_eq!(event("exec_start: /bin/true", &[name]), None);
    assert_eq!(event("health_status: bogus", &[name]), None);
    assert_eq!(event("start", &[]), None, "no name, no event");
    let mut network = message("start", &[name]);
    network.typ = Some(EventMessageTypeEnum::NETWORK);
    assert_eq!(container_event(&network), None);
}

#[test]
fn event_filters_select_container_lifecycle_events_by_label() {
    let sel = BTreeMap::from([("rollout.environment".to_string(), "shop".to_string())]);
    let filters = event_filters(&sel);
    assert_eq!(filters["type"], vec!["container".to_string()]);
    assert_eq!(
        filters["label"],
        vec!["rollout.environment=shop".to_string()]
    );
    assert_eq!(
        filters["event"],
        vec!["start", "die", "health_status", "oom"]
    );
    let t: jiff::Timestamp = "2024-05-01T10:00:00.000000042Z".parse().expect("ts");
    assert_eq!(since_param(t), "1714557600.000000042");
}

#[test]
fn exec_output_keeps_the_last_bytes_on_a_character_boundary() {
    let mut out = Vec::new();
    for _ in 0..10 {
        push_tail(&mut out, b"0123456789", 8);
    }
    assert!(out.len() <= 16);
    assert_eq!(tail_text(&out, 8), "23456789");
    assert_eq!(tail_text("h\u{e9}llo".as_bytes(), 4), "llo");
    assert_eq!(tail_text("h\u{e9}llo".as_bytes(), 5), "\u{e9}llo");
    assert_eq!(tail_text(b"short", 64), "short");
}

#[test]
fn grace_rounds_up_to_whole_seconds() {
    assert_eq!(grace_seconds(Duration::ZERO), 0);
    assert_eq!(grace_seconds(Duration::from_millis(1)), 1);
    assert_eq!(grace_seconds(Duration::from_secs(15)), 15);
    assert_eq!(grace_seconds(Duration::from_millis(15_001)), 16);
    assert_eq!(grace_seconds(Duration::MAX), i32::MAX);
}

#[test]
fn status_reads_health_check_presence_from_the_config() {
    let inspect = |test: Option<Vec<&str>>| ContainerInspectResponse {
        config: Some(bollard::models::ContainerConfig {
            healthcheck: test.map(|t| HealthConfig {
                test: Some(t.into_iter().map(String::from).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        restart_count: Some(2),
        ..Default::default()
    };
    let status = container_status(&inspect(Some(vec!["CMD", "/bin/true"])));
    assert!(status.has_healthcheck);
    assert_eq!(status.restart_count, 2);
    assert!(!container_status(&inspect(Some(vec!["NONE"]))).has_healthcheck);
    assert!(!container_status(&inspect(None)).has_healthcheck);
}
