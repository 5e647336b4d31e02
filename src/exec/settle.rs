//! How a run ends: what production needs once the steps stopped (nothing, finishing the switch,
//! or putting the previous version back), and the outcome and revision outcome that follow from
//! what happened and from how that last action went.
//!
//! Pure functions of the run's facts, so every row of the table is unit-tested here without an
//! engine; the step loop ([`super::walk`]) and recovery ([`super::recover`]) act on the answers.

use crate::store::RevisionOutcome;

use crate::report::run::Outcome;

/// What a run knows when its steps stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Why the steps stopped early, if they did.
    pub failed: Option<String>,
    /// Stopped at a gate waiting for people (an approval): nothing of production changed.
    pub parked: bool,
    /// A signal (SIGINT, SIGTERM) stopped the run.
    pub signalled: bool,
    /// The promote step's switch happened: all traffic went to the new version.
    pub switched: bool,
    /// Production was changed in a way that must be put back (routes moved, a stateful
    /// container stopped).
    pub touched: bool,
    /// A rollback: when it goes through, an earlier revision serves again.
    pub restores: bool,
}

impl Facts {
    /// Stopped by a signal after the switch: the new version serves, drained into; finishing
    /// is the safe way out (as recovery does), switching back would be a second change.
    pub fn keep(&self) -> bool {
        self.signalled && self.switched
    }
}

/// What production needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the run waits at a gate, before anything changed production.
    Park,
    /// The new version stays: the old one is removed.
    Finish,
    /// The previous version is put back and the candidates go.
    Undo,
}

/// The action the facts call for.
pub fn action(f: &Facts) -> Action {
    match &f.failed {
        Some(_) if f.parked => Action::Park,
        None => Action::Finish,
        Some(_) if f.keep() => Action::Finish,
        Some(_) => Action::Undo,
    }
}

/// How a run ended, and whether it is settled: an unsettled run stays open in the journal and
/// the next command for the environment finishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub outcome: Outcome,
    pub settled: bool,
}

/// The outcome of a promotion or rollback, from its facts and from how [`action`] went
/// (`Err` with why it failed).
pub fn outcome(f: &Facts, done: Result<(), &str>, environment: &str) -> Settled {
    let unsettled = |what: &str, e: &str| Settled {
        outcome: Outcome::Failed {
            reason: format!(
                "{what}: {e}; the journal keeps the run open, so the next rollout command for {environment} finishes it"
            ),
        },
        settled: false,
    };
    let settled = |outcome| Settled {
        outcome,
        settled: true,
    };
    match (&f.failed, action(f), done) {
        (Some(reason), Action::Park, _) => settled(Outcome::Refused {
            reason: reason.clone(),
        }),
        (None, _, Ok(())) if f.restores => settled(Outcome::Restored),
        (None, _, Ok(())) => settled(Outcome::Promoted),
        (None, _, Err(e)) => unsettled("promoted, but removing the old version failed", e),
        (Some(reason), Action::Finish, Ok(())) => settled(Outcome::Cancelled {
            reason: format!(
                "{reason} after the switch: the new version serves; the steps after it did not run"
            ),
        }),
        (Some(reason), Action::Finish, Err(e)) => unsettled(
            &format!("{reason} after the switch; removing the old version failed"),
            e,
        ),
        (Some(reason), _, Err(e)) => unsettled(
            &format!("{reason}; putting the previous version back failed too"),
            e,
        ),
        (Some(reason), _, Ok(())) => settled(match (f.touched, f.signalled) {
            (false, true) => Outcome::Cancelled {
                reason: reason.clone(),
            },
            (false, false) => Outcome::Failed {
                reason: reason.clone(),
            },
            (true, true) => Outcome::Cancelled {
                reason: format!("{reason}; the previous version was put back"),
            },
            (true, false) => Outcome::RolledBack {
                reason: reason.clone(),
            },
        }),
    }
}

/// What the history records of the run's revision, from its outcome.
pub fn revision_outcome(f: &Facts, outcome: &Outcome) -> RevisionOutcome {
    match outcome {
        // The revision a rollback made serves production as any promoted one does.
        Outcome::Promoted | Outcome::Restored => RevisionOutcome::Promoted,
        Outcome::Cancelled { .. } if f.keep() => RevisionOutcome::Promoted,
        Outcome::RolledBack { reason } => RevisionOutcome::RolledBack {
            reason: reason.clone(),
        },
        Outcome::Cancelled { reason } if f.touched => RevisionOutcome::RolledBack {
            reason: reason.clone(),
        },
        Outcome::Failed { reason } | Outcome::Cancelled { reason } => RevisionOutcome::Failed {
            reason: reason.clone(),
        },
        other => RevisionOutcome::Failed {
            reason: format!("unexpected outcome {other:?}"),
        },
    }
}

/// A rehearsal's outcome: it never touches production.
pub fn rehearsal(failed: Option<String>, signalled: bool) -> Outcome {
    match failed {
        None => Outcome::Passed,
        Some(reason) if signalled => Outcome::Cancelled { reason },
        Some(reason) => Outcome::Failed { reason },
    }
}

/// An interrupted run settled by the next command ([`super::recover`]): finished when the
/// switch had happened, else undone (a rollback if production had been touched).
pub fn recovered(
    switched: bool,
    touched: bool,
    restores: bool,
    reason: String,
) -> (Outcome, RevisionOutcome) {
    if switched && restores {
        (Outcome::Restored, RevisionOutcome::Promoted)
    } else if switched {
        (Outcome::Promoted, RevisionOutcome::Promoted)
    } else if touched {
        (
            Outcome::RolledBack {
                reason: reason.clone(),
            },
            RevisionOutcome::RolledBack { reason },
        )
    } else {
        (
            Outcome::Cancelled {
                reason: reason.clone(),
            },
            RevisionOutcome::Failed { reason },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        failed: Option<&str>,
        parked: bool,
        signalled: bool,
        switched: bool,
        touched: bool,
    ) -> Facts {
        Facts {
            failed: failed.map(str::to_string),
            parked,
            signalled,
            switched,
            touched,
            restores: false,
        }
    }

    #[test]
    fn a_run_that_passed_every_step_finishes_and_is_promoted() {
        let f = facts(None, false, false, true, true);
        assert_eq!(action(&f), Action::Finish);
        let s = outcome(&f, Ok(()), "shop");
        assert_eq!(
            s,
            Settled {
                outcome: Outcome::Promoted,
                settled: true
            }
        );
        assert_eq!(revision_outcome(&f, &s.outcome), RevisionOutcome::Promoted);
    }

    #[test]
    fn a_promoted_run_whose_old_version_cannot_be_removed_stays_open() {
        let f = facts(None, false, false, true, true);
        let s = outcome(&f, Err("engine lost"), "shop");
        assert!(!s.settled);
        let Outcome::Failed { reason } = s.outcome else {
            panic!("{s:?}")
        };
        assert_eq!(
            reason,
            "promoted, but removing the old version failed: engine lost; the journal keeps the run open, so the next rollout command for shop finishes it"
        );
    }

    #[test]
    fn a_parked_run_is_refused_and_touches_nothing() {
        let f = facts(
            Some("waiting for an approval by `client`"),
            true,
            false,
            false,
            false,
        );
        assert_eq!(action(&f), Action::Park);
        let s = outcome(&f, Ok(()), "shop");
        assert_eq!(
            s.outcome,
            Outcome::Refused {
                reason: "waiting for an approval by `client`".into()
            }
        );
        assert!(s.settled);
    }

    #[test]
    fn a_failure_after_production_was_touched_is_a_rollback() {
        let f = facts(Some("error rate above 1.00%"), false, false, false, true);
        assert_eq!(action(&f), Action::Undo);
        let s = outcome(&f, Ok(()), "shop");
        assert_eq!(
            s.outcome,
            Outcome::RolledBack {
                reason: "error rate above 1.00%".into()
            }
        );
        assert_eq!(
            revision_outcome(&f, &s.outcome),
            RevisionOutcome::RolledBack {
                reason: "error rate above 1.00%".into()
            }
        );
    }

    #[test]
    fn a_failure_before_production_was_touched_is_a_failure() {
        let f = facts(
            Some("1 of 2 smoke checks failed"),
            false,
            false,
            false,
            false,
        );
        assert_eq!(action(&f), Action::Undo);
        let s = outcome(&f, Ok(()), "shop");
        assert_eq!(
            s.outcome,
            Outcome::Failed {
                reason: "1 of 2 smoke checks failed".into()
            }
        );
        assert!(matches!(
            revision_outcome(&f, &s.outcome),
            RevisionOutcome::Failed { .. }
        ));
    }

    #[test]
    fn a_signal_before_the_switch_cancels_and_puts_back() {
        let touched = facts(Some("stopped by a signal"), false, true, false, true);
        let s = outcome(&touched, Ok(()), "shop");
        assert_eq!(
            s.outcome,
            Outcome::Cancelled {
                reason: "stopped by a signal; the previous version was put back".into()
            }
        );
        assert!(matches!(
            revision_outcome(&touched, &s.outcome),
            RevisionOutcome::RolledBack { .. }
        ));
        let untouched = facts(Some("stopped by a signal"), false, true, false, false);
        let s = outcome(&untouched, Ok(()), "shop");
        assert_eq!(
            s.outcome,
            Outcome::Cancelled {
                reason: "stopped by a signal".into()
            }
        );
        assert!(matches!(
            revision_outcome(&untouched, &s.outcome),
            RevisionOutcome::Failed { .. }
        ));
    }

    #[test]
    fn a_signal_after_the_switch_keeps_the_new_version() {
        let f = facts(Some("stopped by a signal"), false, true, true, true);
        assert!(f.keep());
        assert_eq!(action(&f), Action::Finish);
        let s = outcome(&f, Ok(()), "shop");
        assert_eq!(
            s.outcome,
            Outcome::Cancelled {
                reason: "stopped by a signal after the switch: the new version serves; the steps after it did not run".into()
            }
        );
        assert_eq!(revision_outcome(&f, &s.outcome), RevisionOutcome::Promoted);
        let s = outcome(&f, Err("gone"), "shop");
        assert!(!s.settled);
    }

    #[test]
    fn a_failed_undo_leaves_the_run_open() {
        let f = facts(Some("candidate exited"), false, false, false, true);
        let s = outcome(&f, Err("engine lost"), "shop");
        assert!(!s.settled);
        let Outcome::Failed { reason } = s.outcome else {
            panic!()
        };
        assert!(reason.starts_with(
            "candidate exited; putting the previous version back failed too: engine lost"
        ));
    }

    #[test]
    fn a_rollback_that_goes_through_reads_as_restored_never_as_promoted() {
        let f = Facts {
            restores: true,
            ..facts(None, false, false, true, true)
        };
        let s = outcome(&f, Ok(()), "shop");
        assert_eq!(s.outcome, Outcome::Restored);
        assert_eq!(revision_outcome(&f, &s.outcome), RevisionOutcome::Promoted);
        assert_eq!(
            recovered(true, true, true, "r".into()).0,
            Outcome::Restored,
            "an interrupted rollback finished by the next command"
        );
        let failed = Facts {
            restores: true,
            ..facts(Some("candidate exited"), false, false, false, true)
        };
        assert!(matches!(
            outcome(&failed, Ok(()), "shop").outcome,
            Outcome::RolledBack { .. }
        ));
    }

    #[test]
    fn rehearsals_pass_fail_or_are_cancelled() {
        assert_eq!(rehearsal(None, false), Outcome::Passed);
        assert_eq!(
            rehearsal(Some("x".into()), false),
            Outcome::Failed { reason: "x".into() }
        );
        assert_eq!(
            rehearsal(Some("x".into()), true),
            Outcome::Cancelled { reason: "x".into() }
        );
    }

    #[test]
    fn recovery_finishes_after_the_switch_and_undoes_before() {
        assert_eq!(
            recovered(true, true, false, "r".into()),
            (Outcome::Promoted, RevisionOutcome::Promoted)
        );
        assert_eq!(
            recovered(false, true, false, "r".into()),
            (
                Outcome::RolledBack { reason: "r".into() },
                RevisionOutcome::RolledBack { reason: "r".into() }
            )
        );
        assert_eq!(
            recovered(false, false, false, "r".into()),
            (
                Outcome::Cancelled { reason: "r".into() },
                RevisionOutcome::Failed { reason: "r".into() }
            )
        );
    }
}
