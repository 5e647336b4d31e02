//! The one integration-test binary: one module per feature, sharing the builder in `support`.
//!
//! Tests that need Docker talk to the real engine and fail (never skip) when it is missing.

mod support;

mod audit;
mod bad_input;
mod checks;
mod cli;
mod crash;
mod daemon_api;
mod down;
mod engine_docker;
mod gates;
pub mod gitops;
mod kube;
mod notify;
mod plan_docker;
mod playbooks;
mod promote;
mod proxy;
mod proxy_container;
mod proxy_http1;
mod report;
mod runs;
mod schedule;
mod store;
mod testenv;
