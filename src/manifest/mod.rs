//! Manifests, playbooks and settings: parsed into raw types with positions, then resolved.
//!
//! `raw` only checks syntax; `env`, `playbook` and `config` resolve into types that cannot be
//! invalid; `compose` reads a docker-compose file as an environment; `source` and `yaml` carry
//! the file positions every error message needs; `suggest` words "did you mean" for every
//! resolver; `json_path` is the path language of a playbook's `expectJson`.
//!
//! This module depends on no other module of the crate: the checks, the engine, notifications
//! and the commands all read what it resolved.

pub mod compose;
pub mod config;
pub mod duration;
pub mod env;
pub mod json_path;
pub mod playbook;
pub mod raw;
pub mod secret;
pub mod source;
pub mod suggest;
pub mod yaml;
