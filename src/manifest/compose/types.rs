//! The compose file as written: compose-shaped types that keep the position of every value.
//!
//! Only syntax is checked here. Keys rollout reads have a field; the top level and a service
//! collect every other key in `other_keys`, for [`super::keys`] to tell ignored, refused and
//! misspelt ones apart, each at its own position. A field left out of a mapping is `None`.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Location;

use crate::manifest::raw::{OrderedMap, RawHealth, RawManagedBy, RawSecret};
use crate::manifest::yaml::{Spanned, Text};

/// A compose value that may be written as a scalar, a list or a mapping.
///
/// Deserialized by hand rather than as an untagged enum: untagged enums buffer the value and
/// lose the positions of everything inside it.
#[derive(Debug)]
pub(super) enum Form<L, M> {
    Null,
    /// Numbers arrive as values (`1.10` as `1.1`): where the written form matters, read `Text`.
    Scalar(String),
    List(L),
    Map(Box<M>),
}

impl<L, M> Form<L, M> {
    pub(super) fn shape(&self) -> &'static str {
        match self {
            Form::Null => "nothing",
            Form::Scalar(_) => "a single value",
            Form::List(_) => "a list",
            Form::Map(_) => "a mapping",
        }
    }
}

/// An environment value as written (`1.10` stays `1.10`), or nothing: `KEY:` reads the host's.
pub(super) type EnvValue = Option<Text>;

impl<'de, L: Deserialize<'de>, M: Deserialize<'de>> Deserialize<'de> for Form<L, M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<L, M>(PhantomData<(L, M)>);
        impl<'de, L: Deserialize<'de>, M: Deserialize<'de>> Visitor<'de> for V<L, M> {
            type Value = Form<L, M>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value, a list or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Form::Scalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Form::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Form::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
                L::deserialize(de::value::SeqAccessDeserializer::new(s)).map(Form::List)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                M::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(|m| Form::Map(Box::new(m)))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

pub(super) type Strings = Vec<Spanned<String>>;

/// The top level. Keys are read by hand so that unknown ones can all be reported, each at its
/// own position, and `x-` extensions skipped.
#[derive(Debug, Default)]
pub(super) struct ComposeFile {
    /// The first key: "the top of the file" for errors about something missing.
    pub(super) top: Option<Location>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) services: Option<Spanned<OrderedMap<Spanned<ComposeService>>>>,
    pub(super) volumes: Option<OrderedMap<Spanned<Form<IgnoredAny, VolumeDecl>>>>,
    pub(super) x_rollout: Option<(Location, Spanned<XRollout>)>,
    pub(super) other_keys: Strings,
}

#[derive(Debug, Default)]
pub(super) struct ComposeService {
    pub(super) image: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Form<Strings, IgnoredAny>>>,
    pub(super) environment: Option<Spanned<Form<Strings, OrderedMap<Spanned<EnvValue>>>>>,
    pub(super) ports: Option<Vec<Spanned<Form<IgnoredAny, LongPort>>>>,
    pub(super) expose: Option<Strings>,
    pub(super) depends_on: Option<Spanned<DependsOn>>,
    /// With the position of its key, which messages about the whole healthcheck point at.
    pub(super) healthcheck: Option<(Location, Healthcheck)>,
    pub(super) volumes: Option<Vec<Spanned<Form<IgnoredAny, LongVolume>>>>,
    pub(super) x_rollout: Option<Spanned<XRolloutService>>,
    pub(super) other_keys: Strings,
}

pub(super) type DependsOn =
    Form<Strings, OrderedMap<Spanned<Form<IgnoredAny, DependsOnCondition>>>>;

macro_rules! keyed_visitor {
    ($ty:ident, $what:literal, |$key:ident, $map:ident, $out:ident| $body:block) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    // `web:` with nothing under it is an empty service: say what it lacks.
                    fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<$ty, A::Error> {
                        let mut $out = $ty::default();
                        while let Some($key) = $map.next_key::<Spanned<String>>()? {
                            $body
                        }
                        Ok($out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

keyed_visitor!(
    ComposeFile,
    "a compose file (`services:` ...)",
    |key, map, out| {
        out.top.get_or_insert(key.referenced);
        match key.value.as_str() {
            "name" => out.name = Some(map.next_value()?),
            "services" => out.services = Some(map.next_value()?),
            "volumes" => out.volumes = Some(map.next_value()?),
            "x-rollout" => out.x_rollout = Some((key.referenced, map.next_value()?)),
            _ => {
                map.next_value::<IgnoredAny>()?;
                out.other_keys.push(key);
            }
        }
    }
);

keyed_visitor!(
    ComposeService,
    "a service (`image:` ...)",
    |key, map, out| {
        match key.value.as_str() {
            "image" => out.image = Some(map.next_value()?),
            "command" => out.command = Some(map.next_value()?),
            "environment" => out.environment = Some(map.next_value()?),
            "ports" => out.ports = map.next_value()?,
            "expose" => out.expose = map.next_value()?,
            "depends_on" => out.depends_on = Some(map.next_value()?),
            "healthcheck" => out.healthcheck = Some((key.referenced, map.next_value()?)),
            "volumes" => out.volumes = map.next_value()?,
            "x-rollout" => out.x_rollout = Some(map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
                out.other_keys.push(key);
            }
        }
    }
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongPort {
    pub(super) target: Spanned<String>,
    pub(super) published: Option<Spanned<String>>,
    pub(super) host_ip: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) app_protocol: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongVolume {
    #[serde(rename = "type")]
    pub(super) kind: Spanned<String>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) target: Spanned<String>,
    pub(super) read_only: Option<Spanned<bool>>,
    pub(super) volume: Option<Spanned<IgnoredAny>>,
    // Accepted so that a bind or tmpfs mount is told why it is refused, not that a key is unknown.
    #[expect(dead_code, reason = "read only to be accepted")]
    pub(super) bind: Option<IgnoredAny>,
    #[expect(dead_code, reason = "read only to be accepted")]
    pub(super) tmpfs: Option<IgnoredAny>,
    #[expect(dead_code, reason = "read only to be accepted")]
    pub(super) image: Option<IgnoredAny>,
    pub(super) consistency: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DependsOnCondition {
    pub(super) condition: Option<Spanned<String>>,
    pub(super) restart: Option<Spanned<bool>>,
    pub(super) required: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Healthcheck {
    pub(super) test: Option<Spanned<Form<Strings, IgnoredAny>>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) start_period: Option<Spanned<String>>,
    pub(super) start_interval: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) disable: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VolumeDecl {
    // Where the data of an external volume lives is the engine's business; rollout copies it alike.
    #[expect(dead_code, reason = "read only to be accepted")]
    pub(super) external: Option<IgnoredAny>,
    pub(super) driver: Option<Spanned<IgnoredAny>>,
    pub(super) driver_opts: Option<Spanned<IgnoredAny>>,
    pub(super) labels: Option<Spanned<IgnoredAny>>,
    pub(super) name: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct XRollout {
    pub(super) name: Option<Spanned<String>>,
    pub(super) client: Option<Spanned<String>>,
    pub(super) self_heal: Option<bool>,
    /// `x-rollout.requires`: the environment's own gates, as in a rollout manifest.
    pub(super) requires: Option<Spanned<crate::manifest::raw::RawRequires>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct XRolloutService {
    pub(super) stateful: Option<bool>,
    pub(super) managed_by: Option<Spanned<RawManagedBy>>,
    pub(super) secrets: Option<OrderedMap<Spanned<RawSecret>>>,
    pub(super) health: Option<Spanned<RawHealth>>,
}
