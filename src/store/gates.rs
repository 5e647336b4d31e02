//! Gates that wait for people: approvals and third-party authorizations recorded against a run
//! (`rollout approve`), and the run parked at its gate until they arrive (one per environment;
//! the next `rollout promote` of the same change resumes it).

use jiff::Timestamp;
use rusqlite::{OptionalExtension, params};
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
        self.write(|tx| {
            tx.execute(
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
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Every grant recorded for `run`, oldest first.
    pub fn grants(&self, run: &str) -> Result<Vec<Grant>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT run, environment, kind, gate, who, reference, note, expires, at
                     FROM grants WHERE run = ?1 ORDER BY seq",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([run], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                })
                .map_err(|e| self.err(e))?
                .collect::<Result<Vec<RawGrant>, _>>()
                .map_err(|e| self.err(e))?;
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
        })
    }

    /// Parks a run at its gate, replacing any run parked before in its environment.
    pub fn park(&self, p: &Parked) -> Result<(), StoreError> {
        let awaiting = serde_json::to_string(&p.awaiting).expect("serializes");
        self.write(|tx| {
            tx.execute(
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
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Takes the parked run of `env` off its gate (it resumed, or was superseded).
    pub fn unpark(&self, env: &str, run: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM parked WHERE environment = ?1 AND run = ?2",
                params![env, run],
            )
            .map_err(|e| self.err(e))?;
            Ok(())
        })
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
        let row: Option<Row> = self.read(|conn| {
            conn.query_row(
                &format!(
                    "SELECT environment, run, digest, user, two_person, awaiting, gate_step, report, at
                     FROM parked WHERE {clause}"
                ),
                [value],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))
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

    #[test]
    fn grants_and_parked_runs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
            environment: "shop".into(),
            run: "r1".into(),
            digest: "abc".into(),
            user: "ana".into(),
            two_person: true,
            awaiting: vec![Awaited {
                kind: GrantKind::Approval,
                gate: "client".into(),
                services: vec![],
            }],
            gate_step: 2,
            report: serde_json::json!({"steps": []}),
            at: now,
        };
        store.park(&p).unwrap();
        assert_eq!(store.parked("shop").unwrap(), Some(p.clone()));
        assert_eq!(store.parked_run("r1").unwrap(), Some(p));
        store.unpark("shop", "r1").unwrap();
        assert_eq!(store.parked("shop").unwrap(), None);
    }
}
