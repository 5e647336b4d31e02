//! Raw manifest, playbook and settings types: exactly what the YAML says, syntax checked only.
//!
//! Every struct denies unknown keys so a typo is an error, and keeps the position of values that
//! a later check may need to point at. [`super::env`], [`super::playbook`] and [`super::config`]
//! resolve these into types that cannot be invalid.
//!
//! A field of type `Option` may be left out (serde reads a missing `Option` as `None`, so no
//! `#[serde(default)]` is needed); every other field is required.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::yaml::{Spanned, Text};

/// A YAML mapping kept in the order it was written, keys with their positions.
#[derive(Debug, Clone)]
pub struct OrderedMap<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = map.next_key::<Spanned<String>>()? {
                    let v = map.next_value::<V>()?;
                    entries.push((k, v));
                }
                Ok(OrderedMap(entries))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedMap(Vec::new()))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

// ---------------------------------------------------------------- Environment

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEnvironment {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub name: Spanned<String>,
    pub client: Spanned<String>,
    pub self_heal: Option<bool>,
    pub requires: Option<Spanned<RawRequires>>,
    pub services: Spanned<OrderedMap<Spanned<RawService>>>,
}

/// `requires`: what every promotion of the environment needs, whatever its playbook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRequires {
    pub approvals: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawService {
    pub image: Spanned<String>,
    pub command: Option<Vec<String>>,
    pub env: Option<OrderedMap<Spanned<Text>>>,
    pub secrets: Option<OrderedMap<Spanned<RawSecret>>>,
    pub ports: Option<Vec<Spanned<RawPort>>>,
    pub depends_on: Option<Vec<Spanned<String>>>,
    pub health: Option<Spanned<RawHealth>>,
    pub stateful: Option<bool>,
    pub volumes: Option<Vec<Spanned<RawVolume>>>,
    pub managed_by: Option<Spanned<RawManagedBy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSecret {
    pub from_env: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPort {
    pub name: Option<Spanned<String>>,
    pub container: Spanned<i64>,
    pub public: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHealth {
    pub http: Option<Spanned<RawHttpProbe>>,
    pub tcp: Option<Spanned<RawTcpProbe>>,
    pub exec: Option<Spanned<Vec<String>>>,
    pub interval: Option<Spanned<Text>>,
    pub timeout: Option<Spanned<Text>>,
    pub start_period: Option<Spanned<Text>>,
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttpProbe {
    pub port: Spanned<i64>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTcpProbe {
    pub port: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawVolume {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawManagedBy {
    pub third_party: Spanned<String>,
}

// ---------------------------------------------------------------- Playbook

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPlaybook {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub name: Spanned<String>,
    pub window: Option<Spanned<RawWindow>>,
    pub steps: Spanned<Vec<Spanned<RawStep>>>,
    pub on_failure: Option<Spanned<String>>,
    pub two_person_rule: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWindow {
    pub days: Vec<Spanned<String>>,
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    pub tz: Spanned<String>,
    pub freezes: Option<Vec<Spanned<RawFreeze>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFreeze {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum RawStep {
    TestEnv(RawTestEnv),
    Smoke(Box<RawSmoke>),
    Approve(RawApprove),
    Canary(Box<RawCanary>),
    Promote(RawPromote),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTestEnv {
    pub ttl: Option<Spanned<Text>>,
    pub copy_data: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSmoke {
    pub target: Option<Spanned<String>>,
    /// Without checks, the step runs every service's own health check.
    #[serde(default)]
    pub checks: Vec<Spanned<RawCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawApprove {
    pub by: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCanary {
    pub weight: Spanned<i64>,
    pub hold: Option<Spanned<Text>>,
    pub analysis: Option<Spanned<RawAnalysis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAnalysis {
    /// A fraction (`0.01`) or a percentage (`1%`).
    pub max_error_rate: Option<Spanned<Text>>,
    pub max_p99: Option<Spanned<Text>>,
    pub min_requests: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPromote {
    pub drain: Option<Spanned<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum RawCheck {
    Http(Box<RawHttpCheck>),
    Tcp(Box<RawTcpCheck>),
    Exec(Box<RawExecCheck>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttpCheck {
    pub service: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<i64>>,
    pub expect_body: Option<String>,
    pub expect_header: Option<OrderedMap<Spanned<Text>>>,
    pub expect_json: Option<Spanned<RawJsonExpect>>,
    pub timeout: Option<Spanned<Text>>,
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawJsonExpect {
    pub path: Spanned<String>,
    pub equals: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTcpCheck {
    pub service: Spanned<String>,
    pub port: Spanned<i64>,
    pub timeout: Option<Spanned<Text>>,
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawExecCheck {
    pub service: Spanned<String>,
    pub command: Spanned<Vec<String>>,
    pub timeout: Option<Spanned<Text>>,
    pub retries: Option<Spanned<i64>>,
    pub expect_exit: Option<Spanned<i64>>,
    pub expect_output: Option<String>,
}

// ---------------------------------------------------------------- rollout.yaml

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    pub backend: Option<Spanned<String>>,
    pub state: Option<Spanned<String>>,
    pub docker: Option<Spanned<RawDocker>>,
    pub proxy: Option<Spanned<RawProxy>>,
    pub daemon: Option<Spanned<RawDaemon>>,
    pub notify: Option<Vec<Spanned<RawNotify>>>,
    pub kubernetes: Option<Spanned<RawKubernetes>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubernetes {
    pub prometheus: Option<Spanned<RawPrometheus>>,
    pub copy_image: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPrometheus {
    pub url: Spanned<String>,
    pub requests: Spanned<String>,
    pub errors: Spanned<String>,
    pub p99: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDocker {
    pub host: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawProxy {
    pub bind: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDaemon {
    pub listen: Option<Spanned<String>>,
    pub tokens: Option<Vec<Spanned<RawToken>>>,
    pub gitops: Option<Spanned<RawGitops>>,
    pub rehearsals: Option<Vec<Spanned<RawRehearsal>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawToken {
    pub name: Spanned<String>,
    pub from_env: Spanned<String>,
    pub clients: Vec<Spanned<String>>,
    pub may: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawGitops {
    pub repo: Spanned<String>,
    pub branch: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<Text>>,
    pub playbook: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRehearsal {
    pub environment: Spanned<String>,
    pub playbook: Option<Spanned<String>>,
    pub schedule: Spanned<String>,
    pub tz: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNotify {
    pub webhook: Spanned<String>,
    pub on: Option<Vec<Spanned<String>>>,
}
