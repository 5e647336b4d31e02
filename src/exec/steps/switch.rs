//! `promote`: the switch. Candidates up, stateful services stop-started, all traffic on the
//! new version, the old version drained (its removal waits for the end of the run).

use std::time::Duration;

use super::super::walk::{Mode, Walk};
use crate::exec::Stop;

pub(super) async fn run(w: &mut Walk<'_>, drain: Duration) -> Result<String, Stop> {
    let progress = w.progress;
    // A rollback's candidates are an earlier revision: say so, not "the new version".
    let serving = if w.mode == Mode::Rollback {
        "the restored version"
    } else {
        "the new version"
    };
    super::production(w)?
        .deployment
        .switch(drain, serving, progress)
        .await
}
