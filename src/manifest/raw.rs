//! Raw manifest, playbook and settings types: exactly what the YAML says, syntax checked only.
//!
//! Every struct denies unknown keys so a typo is an error, and keeps the position of values that
//! a later check may need to point at. [`super::env`], [`super::playbook`] and [`super::config`]
//! resolve these into types that cannot be invalid.

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
    #[serde(default)]
    pub self_heal: Option<bool>,
    pub services: Spanned<OrderedMap<Spanned<RawService>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawService {
    pub image: Spanned<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<OrderedMap<Spanned<Text>>>,
    #[serde(default)]
    pub secrets: Option<OrderedMap<Spanned<RawSecret>>>,
    #[serde(default)]
    pub ports: Option<Vec<Spanned<RawPort>>>,
    #[serde(default)]
    pub depends_on: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    pub stateful: Option<bool>,
    #[serde(default)]
    pub volumes: Option<Vec<Spanned<RawVolume>>>,
    #[serde(default)]
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
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub container: Spanned<i64>,
    #[serde(default)]
    pub public: Option<Spanned<i64>>,
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHealth {
    #[serde(default)]
    pub http: Option<Spanned<RawHttpProbe>>,
    #[serde(default)]
    pub tcp: Option<Spanned<RawTcpProbe>>,
    #[serde(default)]
    pub exec: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub interval: Option<Spanned<Text>>,
    #[serde(default)]
    pub timeout: Option<Spanned<Text>>,
    #[serde(default)]
    pub start_period: Option<Spanned<Text>>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttpProbe {
    pub port: Spanned<i64>,
    #[serde(default)]
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
    #[serde(default)]
    pub window: Option<Spanned<RawWindow>>,
    pub steps: Spanned<Vec<Spanned<RawStep>>>,
    #[serde(default)]
    pub on_failure: Option<Spanned<String>>,
    #[serde(default)]
    pub two_person_rule: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWindow {
    pub days: Vec<Spanned<String>>,
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    pub tz: Spanned<String>,
    #[serde(default)]
    pub freezes: Option<Vec<Spanned<RawFreeze>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFreeze {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    #[serde(default)]
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
    #[serde(default)]
    pub ttl: Option<Spanned<Text>>,
    #[serde(default)]
    pub copy_data: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSmoke {
    #[serde(default)]
    pub target: Option<Spanned<String>>,
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
    #[serde(default)]
    pub hold: Option<Spanned<Text>>,
    #[serde(default)]
    pub analysis: Option<Spanned<RawAnalysis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAnalysis {
    #[serde(default)]
    pub max_error_rate: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_p99: Option<Spanned<Text>>,
    #[serde(default)]
    pub min_requests: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPromote {
    #[serde(default)]
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
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub expect_status: Option<Spanned<i64>>,
    #[serde(default)]
    pub expect_body: Option<String>,
    #[serde(default)]
    pub expect_header: Option<OrderedMap<Spanned<Text>>>,
    #[serde(default)]
    pub expect_json: Option<Spanned<RawJsonExpect>>,
    #[serde(default)]
    pub timeout: Option<Spanned<Text>>,
    #[serde(default)]
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
    #[serde(default)]
    pub timeout: Option<Spanned<Text>>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawExecCheck {
    pub service: Spanned<String>,
    pub command: Spanned<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<Text>>,
    #[serde(default)]
    pub retries: Option<Spanned<i64>>,
    #[serde(default)]
    pub expect_exit: Option<Spanned<i64>>,
    #[serde(default)]
    pub expect_output: Option<String>,
}

// ---------------------------------------------------------------- rollout.yaml

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    #[serde(default)]
    pub backend: Option<Spanned<String>>,
    #[serde(default)]
    pub state: Option<Spanned<String>>,
    #[serde(default)]
    pub docker: Option<Spanned<RawDocker>>,
    #[serde(default)]
    pub proxy: Option<Spanned<RawProxy>>,
    #[serde(default)]
    pub daemon: Option<Spanned<RawDaemon>>,
    #[serde(default)]
    pub notify: Option<Vec<Spanned<RawNotify>>>,
    #[serde(default)]
    pub kubernetes: Option<Spanned<RawKubernetes>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubernetes {
    #[serde(default)]
    pub prometheus: Option<Spanned<RawPrometheus>>,
    #[serde(default)]
    pub copy_image: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPrometheus {
    pub url: Spanned<String>,
    pub requests: Spanned<String>,
    pub errors: Spanned<String>,
    #[serde(default)]
    pub p99: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDocker {
    #[serde(default)]
    pub host: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawProxy {
    #[serde(default)]
    pub bind: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDaemon {
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub tokens: Option<Vec<Spanned<RawToken>>>,
    #[serde(default)]
    pub gitops: Option<Spanned<RawGitops>>,
    #[serde(default)]
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
    #[serde(default)]
    pub branch: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub interval: Option<Spanned<Text>>,
    #[serde(default)]
    pub playbook: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRehearsal {
    pub environment: Spanned<String>,
    #[serde(default)]
    pub playbook: Option<Spanned<String>>,
    pub schedule: Spanned<String>,
    #[serde(default)]
    pub tz: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNotify {
    pub webhook: Spanned<String>,
    #[serde(default)]
    pub on: Option<Vec<Spanned<String>>>,
}
