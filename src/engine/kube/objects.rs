//! What rollout's objects become on a cluster, and back: a [`ContainerSpec`] as a Deployment,
//! its Secret and its Service; labels Kubernetes cannot hold as annotations; a Deployment read
//! back as an [`ObservedContainer`]. Pure functions, no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretKeySelector, Service as KService, ServicePort, ServiceSpec, TCPSocketAction,
    Volume as KVolume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::status;
use crate::engine::{ContainerSpec, EnvValue, ObservedContainer, ServiceSnapshot, labels};
use crate::manifest::env::{Health, Probe as HealthProbe};

/// The labels that pick the pods of one service's Deployment for one run.
pub fn pod_selector(env: &str, service: &str, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::ENVIRONMENT.to_string(), env.to_string()),
        (labels::SERVICE.to_string(), service.to_string()),
        (labels::RUN.to_string(), run.to_string()),
    ])
}

/// Whether `value` may be a Kubernetes label value: at most 63 characters of `[A-Za-z0-9-_.]`,
/// beginning and ending with a letter or digit (or empty).
pub fn valid_label_value(value: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(ok)
            && value.ends_with(ok)
            && value.chars().all(|c| ok(c) || matches!(c, '-' | '_' | '.')))
}

/// rollout's labels split into what Kubernetes takes as labels and the rest, kept under the same
/// keys as annotations: the JSON spec, and any value a label cannot hold (a client name with a
/// space, an owner `host:pid:start`). [`found_labels`] puts them back together.
pub fn split_labels(
    all: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    all.iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, v)| k != labels::SPEC && valid_label_value(v))
}

/// An object's rollout labels as written: its labels with rollout's annotations put back.
pub(super) fn found_labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    let mut out = meta.labels.clone().unwrap_or_default();
    for (k, v) in meta.annotations.iter().flatten() {
        if k.starts_with("rollout.") && k != labels::SPEC {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// `Some(map)` unless it is empty.
pub(super) fn some(map: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then_some(map)
}

pub(super) fn probe(health: &Health) -> Probe {
    let mut p = Probe {
        period_seconds: Some(health.interval.as_secs().max(1) as i32),
        timeout_seconds: Some(health.timeout.as_secs().max(1) as i32),
        initial_delay_seconds: None,
        ..Default::default()
    };
    match &health.probe {
        HealthProbe::Http { port, path } => {
            p.http_get = Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(*port)),
                path: Some(path.clone()),
                ..Default::default()
            })
        }
        HealthProbe::Tcp { port } => {
            p.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(*port)),
                ..Default::default()
            })
        }
        HealthProbe::Exec { command } => {
            p.exec = Some(ExecAction {
                command: Some(command.clone()),
            })
        }
    }
    p
}

/// The namespace, Secret (if any), and Deployment that run `spec`: a pure function.
pub fn objects(spec: &ContainerSpec) -> (String, Option<Secret>, Deployment) {
    let ns = spec.network.clone();
    let (labels, annotations) = split_labels(&spec.labels);
    let env_name = labels.get(labels::ENVIRONMENT).cloned().unwrap_or_default();
    let service = labels
        .get(labels::SERVICE)
        .cloned()
        .unwrap_or_else(|| "main".into());
    let run = labels.get(labels::RUN).cloned().unwrap_or_default();
    let mut secret_data = BTreeMap::new();
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| match v {
            EnvValue::Plain(value) => EnvVar {
                name: k.clone(),
                value: Some(value.clone()),
                value_from: None,
            },
            EnvValue::Secret(s) => {
                secret_data.insert(k.clone(), s.expose().to_string());
                EnvVar {
                    name: k.clone(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: spec.name.clone(),
                            key: k.clone(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                }
            }
        })
        .collect();
    let secret = (!secret_data.is_empty()).then(|| Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        string_data: Some(secret_data),
        ..Default::default()
    });
    let selector = pod_selector(&env_name, &service, &run);
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    let container = Container {
        name: service.clone(),
        image: Some(spec.image.clone()),
        args: spec.command.clone(),
        env: (!env.is_empty()).then_some(env),
        ports: (!spec.probe_ports.is_empty()).then(|| {
            spec.probe_ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: i32::from(*p),
                    ..Default::default()
                })
                .collect()
        }),
        readiness_probe: spec.healthcheck.as_ref().map(probe),
        volume_mounts: (!spec.volumes.is_empty()).then(|| {
            spec.volumes
                .iter()
                .map(|(claim, path)| VolumeMount {
                    name: claim.clone(),
                    mount_path: path.clone(),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!spec.volumes.is_empty()).then(|| {
                        spec.volumes
                            .iter()
                            .map(|(claim, _)| KVolume {
                                name: claim.clone(),
                                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                    claim_name: claim.clone(),
                                    read_only: None,
                                }),
                                ..Default::default()
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    (ns, secret, deployment)
}

/// The Service of a manifest service, selecting the pods of `run`.
pub fn service_object(spec: &ContainerSpec) -> Option<(String, KService)> {
    let service = spec.labels.get(labels::SERVICE)?.clone();
    let env = spec.labels.get(labels::ENVIRONMENT)?.clone();
    let run = spec.labels.get(labels::RUN).cloned().unwrap_or_default();
    let (mut labels, _) = split_labels(&spec.labels);
    // A production Service outlives the run that created it; a test version's goes with it.
    if labels.get(labels::ROLE).map(String::as_str) != Some("test") {
        labels.remove(labels::RUN);
    }
    let svc = service_with(
        &service,
        &spec.network,
        labels,
        pod_selector(&env, &service, &run),
        &spec.probe_ports,
    )?;
    Some((service, svc))
}

/// The Service `service` as it must be to send its traffic to Deployment `d`'s pods, and only
/// to them: the whole object (a server-side apply of only the selector would drop the ports
/// rollout applied before). `None` when the Deployment exposes no port. A pure function.
pub fn service_for(service: &str, d: &Deployment) -> Option<KService> {
    let ns = d.metadata.namespace.clone()?;
    let selector = d.spec.selector.match_labels.clone()?;
    let ports: Vec<u16> = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let mut labels = d.metadata.labels.clone().unwrap_or_default();
    labels.remove(labels::RUN);
    service_with(service, &ns, labels, selector, &ports)
}

pub(super) fn service_with(
    service: &str,
    ns: &str,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    ports: &[u16],
) -> Option<KService> {
    if ports.is_empty() {
        return None;
    }
    Some(KService {
        metadata: ObjectMeta {
            name: Some(service.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(format!("p{p}")),
                        port: i32::from(*p),
                        target_port: Some(IntOrString::Int(i32::from(*p))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Whether `pod` is a pod of Deployment `deployment`: its ReplicaSet's pods are named
/// `<deployment>-<template hash>-<suffix>`.
pub fn pod_of(pod: &str, deployment: &str) -> bool {
    pod.strip_prefix(deployment)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(hash, suffix)| {
            !hash.is_empty() && !suffix.is_empty() && !suffix.contains('-')
        })
}

/// One observed Deployment as the planner sees a container: a pure function.
/// `pods` may hold pods of other Deployments: those its selector picks are used.
pub fn observed_container(
    d: &Deployment,
    pods: &[Pod],
) -> Option<(String, ObservedContainer, Option<ServiceSnapshot>)> {
    let labels = d.metadata.labels.as_ref()?;
    let service = labels.get(labels::SERVICE)?.clone();
    let spec = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::SPEC))
        .and_then(|json| serde_json::from_str::<ServiceSnapshot>(json).ok());
    let image = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let own: Vec<Pod> = pods.iter().filter(|p| selects(d, p)).cloned().collect();
    let st = status::from_deployment(d, &own);
    Some((
        service,
        ObservedContainer {
            id: d.metadata.uid.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
            image,
            state: st.state,
            health: st.health,
            run: labels.get(labels::RUN).cloned(),
            created: d
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or_default(),
        },
        spec,
    ))
}

/// Whether `d`'s selector picks `pod` (rollout's Deployments select by labels only).
pub(super) fn selects(d: &Deployment, pod: &Pod) -> bool {
    let Some(want) = d.spec.selector.match_labels.as_ref() else {
        return false;
    };
    let have = pod.metadata.labels.as_ref();
    want.iter()
        .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
}

/// The label selector of Deployment `d`'s pods, as the API's list calls take it; `None` where
/// it selects by no labels (rollout's Deployments always do).
pub(super) fn pods_of(d: &Deployment) -> Option<String> {
    d.spec.selector.match_labels.as_ref().map(labels::selector)
}
