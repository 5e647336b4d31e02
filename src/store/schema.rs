//! The store's schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Migrations are applied at open, inside one `BEGIN IMMEDIATE` transaction that also bumps the
//! version: when several processes open a store at once, the first to take the write lock
//! migrates and the others, reading the version after it, find nothing to do. A store written
//! by a newer rollout is refused rather than misread.
//!
//! Append only: a released migration never changes; a new table or column is a new entry.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{Stage, StoreError, classify};

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: revision history and runs.
    "
    CREATE TABLE revisions (
        environment    TEXT    NOT NULL,
        number         INTEGER NOT NULL CHECK (number > 0),
        run            TEXT    NOT NULL,
        started        TEXT    NOT NULL,
        finished       TEXT,
        user           TEXT    NOT NULL,
        playbook       TEXT    NOT NULL,
        reason         TEXT,
        changes        TEXT    NOT NULL,   -- JSON
        services       TEXT    NOT NULL,   -- JSON
        images         TEXT    NOT NULL,   -- JSON array of strings
        outcome        TEXT    NOT NULL CHECK (outcome IN
                           ('inProgress', 'promoted', 'failed', 'rolledBack', 'superseded')),
        outcome_reason TEXT,
        PRIMARY KEY (environment, number)
    ) STRICT;
    CREATE INDEX revisions_by_outcome ON revisions (environment, outcome, number);

    CREATE TABLE runs (
        run         TEXT NOT NULL PRIMARY KEY,
        environment TEXT NOT NULL,
        kind        TEXT NOT NULL,
        started     TEXT NOT NULL,
        finished    TEXT,
        user        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        report      TEXT NOT NULL      -- JSON
    ) STRICT;
    CREATE INDEX runs_by_start ON runs (environment, started);
    ",
    // 2: the run journal and the per-environment lock.
    "
    CREATE TABLE journal (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        environment TEXT    NOT NULL,
        run         TEXT    NOT NULL,
        step        TEXT    NOT NULL,
        phase       TEXT    NOT NULL CHECK (phase IN ('intent', 'done')),
        data        TEXT    NOT NULL,   -- JSON
        at          TEXT    NOT NULL
    ) STRICT;
    CREATE INDEX journal_by_run ON journal (run, seq);
    CREATE INDEX journal_by_environment ON journal (environment, step, seq);

    CREATE TABLE locks (
        environment TEXT NOT NULL PRIMARY KEY,
        run         TEXT NOT NULL,
        owner       TEXT NOT NULL,      -- host:pid:start of the holding process
        user        TEXT NOT NULL,
        command     TEXT NOT NULL,
        acquired    TEXT NOT NULL,
        renewed     TEXT NOT NULL,
        expires     TEXT NOT NULL
    ) STRICT;
    ",
    // 3: the audit trail's anchor (the log itself is <state>/audit.log; see src/audit.rs).
    "
    CREATE TABLE audit_head (
        id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL CHECK (seq > 0),
        hash TEXT    NOT NULL
    ) STRICT;
    ",
    // 4: approvals and third-party authorizations, and runs parked at a gate.
    "
    CREATE TABLE grants (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        run         TEXT NOT NULL,
        environment TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('approval', 'authorization')),
        gate        TEXT NOT NULL,     -- the role, or the third party
        who         TEXT NOT NULL,     -- the person who recorded it
        reference   TEXT,
        note        TEXT,
        expires     TEXT,
        at          TEXT NOT NULL
    ) STRICT;
    CREATE INDEX grants_by_run ON grants (run, seq);

    CREATE TABLE parked (
        environment TEXT NOT NULL PRIMARY KEY,
        run         TEXT NOT NULL,
        digest      TEXT NOT NULL,     -- what was asked for: the desired state and playbook
        user        TEXT NOT NULL,     -- who started the run
        two_person  INTEGER NOT NULL,
        awaiting    TEXT NOT NULL,     -- JSON: [{kind, gate, services}]
        gate_step   INTEGER NOT NULL,  -- the step to resume from
        report      TEXT NOT NULL,     -- JSON: the run's report so far
        at          TEXT NOT NULL
    ) STRICT;
    ",
];

/// The schema version this build writes.
pub(super) const VERSION: u32 = MIGRATIONS.len() as u32;

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings the store at `path` up to [`VERSION`].
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |e| classify(path, e, Stage::Open);
    // Fast path: an up-to-date store is opened without taking the write lock.
    let found = user_version(conn).map_err(err)?;
    if found == VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // Read again under the lock: another process may have migrated meanwhile.
    let found = user_version(&tx).map_err(err)?;
    if found > VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::debug!(store = %path.display(), from, to = from + 1, "migrating the store");
        tx.execute_batch(sql).map_err(err)?;
    }
    tx.pragma_update(None, "user_version", VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_is_migrated_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        migrate(&mut conn, path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), VERSION);
        // Again: nothing to do, and no "table already exists".
        migrate(&mut conn, path).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            tables, 8,
            "revisions, runs, journal, locks, sqlite_sequence, audit_head, grants and parked"
        );
    }

    #[test]
    fn the_outcome_column_rejects_unknown_values() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let result = conn.execute(
            "INSERT INTO revisions (environment, number, run, started, user, playbook, changes,
                                    services, images, outcome)
             VALUES ('shop', 1, 'r', 't', 'u', 'p', '{}', '{}', '[]', 'exploded')",
            [],
        );
        assert!(result.is_err());
    }
}
