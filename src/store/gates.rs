//! Gates that wait for people: approvals and third-party authorizations recorded against a run
//! (`rollout approve`), and the run parked at its gate until they arrive (one per environment;
//! the next `rollout promote` of the same change resumes it).

use jiff::Timestamp;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, ts_from_sql, ts_to_sql};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GrantKind {
    /// A role's approval (`approve: { by: ROLE }`).
    Approval,
    /// A third party's authorization to change what it manages.
    Authorization,
}

impl GrantKind {
    fn as_str(self) -> &'static str {
        match self {
            GrantKind::Approval => "approval",
            GrantKind::Authorization => "authorization",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub run: String,
    pub environment: String,
    pub kind: GrantKind,
    /// The role, or the third party.
    pub gate: String,
    /// The person who recorded it.
    pub who: String,
    pub reference: Option<String>,
    pub note: Option<String>,
    pub expires: Option<Timestamp>,
    pub at: Timestamp,
}

impl Grant {
    /// Whether it counts at `now` (an expired authorization does not).
    pub fn valid_at(&self, now: Timestamp) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// What a parked run waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Awaited {
    pub kind: GrantKind,
    pub gate: String,
    /// For an authorization: the services the third party manages that the run changes.
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parked {
    pub environment: String,
    pub run: String,
    /// Identifies the change asked for: the desired state and the playbook.
    pub digest: String,
    /// Who started the run.
    pub user: String,
    pub two_person: bool,
    pub awaiting: Vec<Awaited>,
    /// The playbook step the run resumes from.
    pub gate_step: usize,
    /// The run's report so far (steps done before the gate).
    pub report: serde_json::Value,
    pub at: Timestamp,
}

impl Parked {
    /// The playbook the run was parked with (from its report); a resume must use it.
    pub fn playbook(&self) -> &str {
        self.report["playbook"].as_str().unwrap_or_default()
    }
}

/// An environment's gates as the platform keeps them for every machine (kubernetes: the
/// ConfigMap `rollout-gates`): the run parked at a gate, if any, and the grants recorded for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatesDoc {
    pub environment: String,
    pub parked: Option<Parked>,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

impl GatesDoc {
    /// Adds the grants of `others` this doc lacks that are for its parked run (those of a run no
    /// longer parked count for nothing).
    pub fn merge_grants(&mut self, others: &[Grant]) {
        let Some(run) = self.parked.as_ref().map(|p| p.run.clone()) else {
            self.grants.clear();
            return;
        };
        self.grants.retain(|g| g.run == run);
        for g in others {
            if g.run == run && !self.grants.contains(g) {
                self.grants.push(g.clone());
            }
        }
        self.grants.sort_by_key(|g| g.at);
    }
}

type RawGrant = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

impl Store {
    /// Records an approval or authorization.
    pub fn record_grant(&self, g: &Grant) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO grants (run, environment, kind, gate, who, reference, note, expires, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                g.run,
                g.environment,
                g.kind.as_str(),
                g.gate,
                g.who,
                g.reference,
                g.note,
                g.expires.map(ts_to_sql),
                ts_to_sql(g.at)
            ],
        )?;
        Ok(())
    }

    /// Every grant recorded for `run`, oldest first.
    pub fn grants(&self, run: &str) -> Result<Vec<Grant>, StoreError> {
        let rows = self.read(|conn| {
            self.rows(
                conn,
                "SELECT run, environment, kind, gate, who, reference, note, expires, at
                 FROM grants WHERE run = ?1 ORDER BY seq",
                [run],
                |r| RawGrant::try_from(r),
            )
        })?;
        rows.into_iter()
            .map(
                |(run, environment, kind, gate, who, reference, note, expires, at)| {
                    Ok(Grant {
                        kind: match kind.as_str() {
                            "approval" => GrantKind::Approval,
                            "authorization" => GrantKind::Authorization,
                            other => return Err(self.decode("grant kind", other)),
                        },
                        expires: expires
                            .as_deref()
                            .map(|t| ts_from_sql(self, t))
                            .transpose()?,
                        at: ts_from_sql(self, &at)?,
                        run,
                        environment,
                        gate,
                        who,
                        reference,
                        note,
                    })
                },
            )
            .collect()
    }

    /// Parks a run at its gate, replacing any run parked before in its environment.
    pub fn park(&self, p: &Parked) -> Result<(), StoreError> {
        let awaiting = serde_json::to_string(&p.awaiting).expect("serializes");
        self.execute(
            "INSERT OR REPLACE INTO parked
                (environment, run, digest, user, two_person, awaiting, gate_step, report, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                p.environment,
                p.run,
                p.digest,
                p.user,
                p.two_person,
                awaiting,
                p.gate_step as i64,
                p.report.to_string(),
                ts_to_sql(p.at)
            ],
        )?;
        Ok(())
    }

    /// Takes the parked run of `env` off its gate (it resumed, or was superseded).
    pub fn unpark(&self, env: &str, run: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM parked WHERE environment = ?1 AND run = ?2",
            params![env, run],
        )?;
        Ok(())
    }

    /// `env`'s gates as this store has them: its parked run and that run's grants.
    pub fn export_gates(&self, env: &str) -> Result<GatesDoc, StoreError> {
        let parked = self.parked(env)?;
        let grants = match &parked {
            Some(p) => self.grants(&p.run)?,
            None => Vec::new(),
        };
        Ok(GatesDoc {
            environment: env.to_string(),
            parked,
            grants,
        })
    }

    /// Takes the platform's gates of an environment as the truth: its parked run replaces this
    /// store's (none there unparks this store's: it was resumed or superseded elsewhere), and
    /// the grants recorded for it that this store lacks are added. Whether anything changed.
    pub fn import_gates(&self, doc: &GatesDoc) -> Result<bool, StoreError> {
        let env = &doc.environment;
        let local = self.parked(env)?;
        let mut changed = false;
        match (&doc.parked, &local) {
            (Some(p), l) if l.as_ref() != Some(p) => {
                self.park(p)?;
                changed = true;
            }
            (None, Some(l)) => {
                self.unpark(env, &l.run)?;
                changed = true;
            }
            _ => {}
        }
        if let Some(p) = &doc.parked {
            let have = self.grants(&p.run)?;
            for g in doc.grants.iter().filter(|g| g.run == p.run) {
                if !have.contains(g) {
                    self.record_grant(g)?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// The run parked in `env`, if any.
    pub fn parked(&self, env: &str) -> Result<Option<Parked>, StoreError> {
        self.parked_where("environment = ?1", env)
    }

    /// The parked run `run`, if it is parked.
    pub fn parked_run(&self, run: &str) -> Result<Option<Parked>, StoreError> {
        self.parked_where("run = ?1", run)
    }

    fn parked_where(&self, clause: &str, value: &str) -> Result<Option<Parked>, StoreError> {
        type Row = (
            String,
            String,
            String,
            String,
            bool,
            String,
            i64,
            String,
            String,
        );
        let row = self.read(|conn| {
            self.row(
                conn,
                &format!(
                    "SELECT environment, run, digest, user, two_person, awaiting, gate_step, report, at
                     FROM parked WHERE {clause}"
                ),
                [value],
                |r| Row::try_from(r),
            )
        })?;
        let Some((environment, run, digest, user, two_person, awaiting, gate_step, report, at)) =
            row
        else {
            return Ok(None);
        };
        Ok(Some(Parked {
            awaiting: serde_json::from_str(&awaiting)
                .map_err(|e| self.decode("parked run's awaited gates", e))?,
            report: serde_json::from_str(&report)
                .map_err(|e| self.decode("parked run's report", e))?,
            at: ts_from_sql(self, &at)?,
            gate_step: gate_step.max(0) as usize,
            environment,
            run,
            digest,
            user,
            two_person,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::store;

    fn parked(run: &str) -> Parked {
        Parked {
            environment: "shop".into(),
            run: run.into(),
            digest: "d".into(),
            user: "alice".into(),
            two_person: true,
            awaiting: vec![Awaited {
                kind: GrantKind::Approval,
                gate: "client".into(),
                services: vec![],
            }],
            gate_step: 2,
            report: serde_json::json!({ "steps": [] }),
            at: "2026-01-01T10:00:00.123456789Z".parse().unwrap(),
        }
    }

    fn grant(run: &str, who: &str) -> Grant {
        Grant {
            run: run.into(),
            environment: "shop".into(),
            kind: GrantKind::Approval,
            gate: "client".into(),
            who: who.into(),
            reference: None,
            note: Some("ok".into()),
            expires: None,
            at: "2026-01-01T10:05:00.5Z".parse().unwrap(),
        }
    }

    /// Another machine's gates come in whole: its parked run, its grants once (importing again
    /// changes nothing), and a doc with no parked run unparks this store's.
    #[test]
    fn gates_from_another_machine_are_imported_once_and_an_empty_doc_unparks() {
        let (_dir, store) = store();
        let doc = GatesDoc {
            environment: "shop".into(),
            parked: Some(parked("r1")),
            grants: vec![grant("r1", "bob"), grant("r0", "carol")],
        };
        assert!(store.import_gates(&doc).unwrap());
        assert_eq!(store.parked("shop").unwrap(), Some(parked("r1")));
        assert_eq!(store.grants("r1").unwrap(), vec![grant("r1", "bob")]);
        assert!(
            store.grants("r0").unwrap().is_empty(),
            "not the parked run's"
        );
        assert!(!store.import_gates(&doc).unwrap(), "nothing new");
        assert_eq!(store.grants("r1").unwrap().len(), 1);
        let mine = store.export_gates("shop").unwrap();
        assert_eq!(mine.parked, doc.parked);
        assert_eq!(mine.grants, vec![grant("r1", "bob")]);

        let resumed = GatesDoc {
            environment: "shop".into(),
            parked: None,
            grants: vec![],
        };
        assert!(store.import_gates(&resumed).unwrap());
        assert_eq!(store.parked("shop").unwrap(), None);
    }

    #[test]
    fn merged_grants_are_the_parked_runs_only_each_once_in_order() {
        let mut doc = GatesDoc {
            environment: "shop".into(),
            parked: Some(parked("r1")),
            grants: vec![grant("r0", "old"), grant("r1", "bob")],
        };
        let mut early = grant("r1", "dave");
        early.at = "2026-01-01T10:01:00Z".parse().unwrap();
        doc.merge_grants(&[grant("r1", "bob"), early.clone(), grant("r2", "x")]);
        assert_eq!(doc.grants, vec![early, grant("r1", "bob")]);
        doc.parked = None;
        doc.merge_grants(&[grant("r1", "bob")]);
        assert!(doc.grants.is_empty());
    }

    #[test]
    fn grants_and_parked_runs_round_trip() {
        let (_dir, store) = store();
        let now = Timestamp::now();
        let g = Grant {
            run: "r1".into(),
            environment: "shop".into(),
            kind: GrantKind::Authorization,
            gate: "hosting-co".into(),
            who: "ana".into(),
            reference: Some("CHG-7".into()),
            note: Some("ok for tonight".into()),
            expires: Some(now + jiff::SignedDuration::from_hours(1)),
            at: now,
        };
        store.record_grant(&g).unwrap();
        let got = store.grants("r1").unwrap();
        assert_eq!(got, vec![g.clone()]);
        assert!(got[0].valid_at(now));
        assert!(!got[0].valid_at(now + jiff::SignedDuration::from_hours(2)));
        assert!(store.grants("r2").unwrap().is_empty());

        let p = Parked {
            at: now,
            ..parked("r1")
        };
        store.park(&p).unwrap();
        assert_eq!(store.parked("shop").unwrap(), Some(p.clone()));
        assert_eq!(store.parked_run("r1").unwrap(), Some(p));
        store.unpark("shop", "r1").unwrap();
        assert_eq!(store.parked("shop").unwrap(), None);
    }
}
