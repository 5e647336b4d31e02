//! Manifests, playbooks and settings: parsed into raw types with positions, then resolved.
//!
//! `raw` only checks syntax; `env`, `playbook` and `config` resolve into types that cannot be
//! invalid; `compose` reads a docker-compose file as an environment; `source` and `yaml` carry
//! the file positions every error message needs.

pub mod compose;
pub mod config;
pub mod duration;
pub mod env;
pub mod playbook;
pub mod raw;
pub mod secret;
pub mod source;
pub mod yaml;
