//! The gates a run meets before it may touch production, decided from the plan, the playbook,
//! the grants recorded for the run and `now`: the change window, third parties'
//! authorizations, and the people an `approve` step waits for.
//!
//! Pure: the step loop asks, records what it is told in the run's report, and acts.

use crate::manifest::playbook::{self, Playbook};
use crate::plan::Gate;
use crate::report::run::RunKind;
use crate::store::{Awaited, Grant, GrantKind};

use super::window;

/// What the gates decided for a run before its first step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'g> {
    /// Every gate that holds before the first step is open; these authorizations opened the
    /// third parties' (party, grant).
    Proceed {
        authorized: Vec<(String, &'g Grant)>,
    },
    /// A gate that waiting cannot open (outside the change window, a rollback a third party
    /// has not authorized): the run does nothing.
    Refused { reason: String },
    /// Waiting for recorded grants: the run parks until `rollout approve` records them.
    Await {
        awaiting: Vec<Awaited>,
        reason: String,
    },
}

/// The run's request, as the gates see it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub kind: RunKind,
    pub run: &'a str,
    /// `--emergency --reason`: the change window is overridden.
    pub emergency: Option<&'a str>,
}

/// Decides the gates that hold before anything starts: the window (not for a rollback, which
/// undoes a change), then third parties (without their authorization nothing starts).
pub fn evaluate<'g>(
    gates: &[Gate],
    playbook: &Playbook,
    grants: &'g [Grant],
    now: jiff::Timestamp,
    req: Request<'_>,
) -> Decision<'g> {
    if let Some(reason) = window_closed(playbook, now, req) {
        return Decision::Refused { reason };
    }
    let mut authorized = Vec::new();
    let mut awaiting = Vec::new();
    let mut reasons = Vec::new();
    for g in gates {
        let Gate::ThirdParty { party, services } = g else {
            continue;
        };
        let recorded: Vec<&Grant> = grants
            .iter()
            .filter(|x| x.kind == GrantKind::Authorization && &x.gate == party)
            .collect();
        if let Some(x) = recorded.iter().rev().find(|x| x.valid_at(now)) {
            authorized.push((party.clone(), *x));
            continue;
        }
        if req.kind == RunKind::Rollback {
            return Decision::Refused {
                reason: format!(
                    "{} managed by third party `{party}`: a rollback changes it too and needs its authorization, which only a parked promotion can wait for; promote the previous manifest instead (`rollout promote` parks until `rollout approve RUN --by {party}` records it)",
                    services.join(", ")
                ),
            };
        }
        let expired = recorded
            .last()
            .and_then(|x| x.expires)
            .map(|e| {
                format!(
                    " (its authorization expired at {})",
                    e.strftime("%Y-%m-%d %H:%M UTC")
                )
            })
            .unwrap_or_default();
        reasons.push(format!(
            "{} managed by third party `{party}`: its recorded authorization is required{expired}; record it with `rollout approve {} --by {party} --reference REF [--expires WHEN]`",
            services.join(", "),
            req.run
        ));
        awaiting.push(Awaited {
            kind: GrantKind::Authorization,
            gate: party.clone(),
            services: services.clone(),
        });
    }
    if awaiting.is_empty() {
        Decision::Proceed { authorized }
    } else {
        Decision::Await {
            awaiting,
            reason: reasons.join("; "),
        }
    }
}

/// Why the change window holds the run back, if it does.
fn window_closed(playbook: &Playbook, now: jiff::Timestamp, req: Request<'_>) -> Option<String> {
    if req.kind == RunKind::Rollback || req.emergency.is_some() {
        return None;
    }
    let w = playbook.window.as_ref()?;
    let window::State::Closed { why, next } = window::check(w, now) else {
        return None;
    };
    let next = next
        .map(|n| format!("; it opens next at {}", n.strftime("%a %Y-%m-%d %H:%M %Z")))
        .unwrap_or_default();
    Some(format!(
        "{why} ({} {}-{} {}){next}; use --emergency --reason TEXT to override",
        w.days
            .iter()
            .map(|d| playbook::weekday_name(*d))
            .collect::<Vec<_>>()
            .join(","),
        w.from,
        w.to,
        w.tz
    ))
}

/// The command that resumes a run parked at a gate: with the playbook it was parked with, so
/// that following the hint never runs the change through another playbook that skips the gate
/// (the built-in default is what `rollout promote` picks when the project has no playbook).
pub fn resume_command(environment: &str, playbook: &str) -> String {
    if playbook.is_empty() || playbook == playbook::BUILTIN_NAME {
        format!("rollout promote -e {environment}")
    } else {
        format!("rollout promote -e {environment} -p {playbook}")
    }
}

/// The approval an `approve: { by }` step finds among the run's grants: the newest by that
/// role, never the run's own starter's under the two-person rule.
pub fn approval<'g>(
    by: &str,
    grants: &'g [Grant],
    two_person_rule: bool,
    starter: &str,
) -> Option<&'g Grant> {
    grants.iter().rev().find(|x| {
        x.kind == GrantKind::Approval && x.gate == by && !(two_person_rule && x.who == starter)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(kind: GrantKind, gate: &str, who: &str, expires: Option<jiff::Timestamp>) -> Grant {
        Grant {
            run: "r1".into(),
            environment: "shop".into(),
            kind,
            gate: gate.into(),
            who: who.into(),
            reference: Some("CHG-1".into()),
            note: None,
            expires,
            at: "2026-12-01T10:00:00Z".parse().unwrap(),
        }
    }

    fn third_party() -> Vec<Gate> {
        vec![Gate::ThirdParty {
            party: "hosting-co".into(),
            services: vec!["db".into()],
        }]
    }

    fn request(kind: RunKind) -> Request<'static> {
        Request {
            kind,
            run: "r1",
            emergency: None,
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-12-07T10:00:00Z".parse().unwrap()
    }

    /// The decision at [`now`] on a run of `kind` through the [`third_party`] gate, given
    /// `grants`.
    fn third_party_decision(grants: &[Grant], kind: RunKind) -> Decision<'_> {
        let pb = Playbook::switch_only("t".into());
        evaluate(&third_party(), &pb, grants, now(), request(kind))
    }

    #[test]
    fn a_third_party_without_an_authorization_parks_a_promotion() {
        let d = third_party_decision(&[], RunKind::Promotion);
        let Decision::Await { awaiting, reason } = d else {
            panic!("{d:?}")
        };
        assert_eq!(awaiting[0].gate, "hosting-co");
        assert!(
            reason.contains("rollout approve r1 --by hosting-co --reference REF"),
            "{reason}"
        );
    }

    #[test]
    fn a_rollback_a_third_party_has_not_authorized_is_refused() {
        let d = third_party_decision(&[], RunKind::Rollback);
        assert!(
            matches!(d, Decision::Refused { reason } if reason.contains("a rollback changes it too"))
        );
    }

    #[test]
    fn a_valid_authorization_opens_the_gate_and_an_expired_one_does_not() {
        let valid = [grant(GrantKind::Authorization, "hosting-co", "eve", None)];
        let d = third_party_decision(&valid, RunKind::Promotion);
        let Decision::Proceed { authorized } = d else {
            panic!("{d:?}")
        };
        assert_eq!(authorized[0].0, "hosting-co");
        let expired = [grant(
            GrantKind::Authorization,
            "hosting-co",
            "eve",
            Some("2026-12-06T00:00:00Z".parse().unwrap()),
        )];
        let d = third_party_decision(&expired, RunKind::Promotion);
        let Decision::Await { reason, .. } = d else {
            panic!("{d:?}")
        };
        assert!(
            reason.contains("expired at 2026-12-06 00:00 UTC"),
            "{reason}"
        );
    }

    #[test]
    fn the_resume_command_names_the_playbook_unless_it_is_the_built_in_one() {
        assert_eq!(
            resume_command("shop", "gated"),
            "rollout promote -e shop -p gated"
        );
        assert_eq!(
            resume_command("shop", playbook::BUILTIN_NAME),
            "rollout promote -e shop"
        );
    }

    #[test]
    fn the_two_person_rule_ignores_the_starters_own_approval() {
        let grants = [
            grant(GrantKind::Approval, "client", "alice", None),
            grant(GrantKind::Authorization, "client", "bob", None),
        ];
        assert!(approval("client", &grants, true, "alice").is_none());
        assert_eq!(
            approval("client", &grants, false, "alice").unwrap().who,
            "alice"
        );
        assert!(approval("ops", &grants, false, "alice").is_none());
    }
}
