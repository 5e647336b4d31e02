//! rollout: staged rollouts for managed-service providers.
//!
//! It builds a test version of a client's environment, checks it, moves production to the new
//! version without dropping a request, and rolls back by itself when anything fails.
//!
//! # Layout
//! - [`manifest`]: the files a user writes, parsed with positions and resolved into valid types.
//! - [`engine`]: the seam to the container platform (Docker through bollard; a fake for tests).

pub mod engine;
pub mod manifest;
