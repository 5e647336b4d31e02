//! What the CLI commands and the daemon both need, below them both: choosing the backend
//! (`connect`), taking an environment's lock and settling interrupted runs ([`lock`]),
//! gathering an environment's status ([`status`]) and recording approvals ([`approve`]).
//!
//! `cmd` drives these for a person at a terminal and `daemon` for an API caller; this module
//! imports neither, so the daemon never reaches into the commands. It prints nothing itself
//! beyond what its functions say through the printer or progress they are given.

pub mod approve;
mod connect;
pub mod lock;
pub mod status;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::output::Printer;
use crate::engine::Engine;
use crate::project::Project;
use crate::store::Store;

pub(crate) use connect::connect;

/// What a command that changes an environment works with once connected: the project, its
/// backend and store, the signal that stops it, and how it reports (`json`: one JSON document
/// on stdout, no text).
#[derive(Clone, Copy)]
pub(crate) struct Session<'a> {
    pub project: &'a Project,
    pub engine: &'a dyn Engine,
    pub store: &'a Arc<Store>,
    pub cancel: &'a CancellationToken,
    pub json: bool,
    pub printer: Printer,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        project: &'a Project,
        engine: &'a dyn Engine,
        store: &'a Arc<Store>,
        cancel: &'a CancellationToken,
        json: bool,
        printer: Printer,
    ) -> Self {
        Session {
            project,
            engine,
            store,
            cancel,
            json,
            printer,
        }
    }
}
