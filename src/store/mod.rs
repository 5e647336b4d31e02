//! The embedded store, `<state dir>/state.db`: what must outlive a process (revision history and
//! runs here; the journal, locks and approvals join it later, each in its own file).
//!
//! # Several processes at once
//! CLI commands run side by side and the daemon writes while they do, so the store is one SQLite
//! file in WAL mode: readers never wait for a writer and see the last committed state; writers
//! take the write lock at the start of their transaction (`BEGIN IMMEDIATE`) and queue behind each
//! other for up to [`BUSY_TIMEOUT`] instead of failing with "database is locked". Every logical
//! write is one transaction, committed with `synchronous=FULL`, so a process killed at any moment
//! leaves either all of a write or none of it. The schema is versioned with `PRAGMA user_version`
//! and migrated at open under the write lock, so processes opening a fresh store together agree.
//!
//! # From async code
//! Every method blocks the calling thread: usually for well under a millisecond plus one fsync
//! per write, but up to [`BUSY_TIMEOUT`] when another process is writing. Code that shares its
//! runtime with other work (the executor during a run, the daemon, the proxy) goes through
//! [`Store::call`], which runs the closure on tokio's blocking pool. A command may call directly
//! at its start or end, where nothing else is waiting on the runtime.
//!
//! A `Store` is `Send + Sync`: share one behind an `Arc`. Its calls are serialized on one
//! connection; open a second `Store` for real parallelism (the tests do, to act as two processes).

mod audit;
mod gates;
mod history;
mod journal;
mod ledger;
mod lock;
mod runs;
mod schema;

pub use audit::AuditHead;
pub use gates::{Awaited, GatesDoc, Grant, GrantKind, Parked};
pub use history::{NewRevision, Revision, RevisionOutcome};
pub use journal::{BEGIN, END, JournalEntry, Phase};
pub use ledger::{Imported, LedgerEntry, RunDoc};
pub use lock::{Acquired, Claim, LockHolder};
pub use runs::RunRecord;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Params, Row, Transaction,
    TransactionBehavior,
};

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "state.db";

/// How long a write waits for another process's write before giving up with
/// [`StoreError::Busy`]. Writes are single short transactions, so reaching it means a process
/// is stuck holding the lock, not ordinary contention.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "the store {} is read-only: rollout must write there (check the permissions of the file \
         and its directory, and that the filesystem is mounted read-write)",
        path.display()
    )]
    ReadOnly { path: PathBuf },
    #[error(
        "the disk holding the store {} is full: nothing was written, and what was committed \
         before is intact; free some space and run the command again",
        path.display()
    )]
    DiskFull { path: PathBuf },
    #[error(
        "the store {} stayed locked by another rollout process for more than {}s",
        path.display(),
        BUSY_TIMEOUT.as_secs()
    )]
    Busy { path: PathBuf },
    #[error("the store {} is damaged or is not a rollout store: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the store {} was written by a newer rollout (schema version {found}; this rollout knows \
         up to {supported}): upgrade rollout",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot open the store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store {}: unreadable {what}: {detail}", path.display())]
    Decode {
        path: PathBuf,
        what: String,
        detail: String,
    },
    #[error("store {}: environment `{environment}` has no revision {number}", path.display())]
    UnknownRevision {
        path: PathBuf,
        environment: String,
        number: u64,
    },
    #[error("store {}: the call was cancelled because the runtime is shutting down", path.display())]
    Cancelled { path: PathBuf },
}

/// The embedded store of one state directory. See the module docs for the concurrency story.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/state.db` and brings its schema up to date.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(FILE_NAME);
        std::fs::create_dir_all(state_dir).map_err(|source| match io_problem(&source) {
            Some(Problem::ReadOnly) => StoreError::ReadOnly { path: path.clone() },
            Some(Problem::Full) => StoreError::DiskFull { path: path.clone() },
            None => StoreError::CreateDir {
                path: state_dir.to_path_buf(),
                source,
            },
        })?;
        let open_err = |e| classify(&path, e, Stage::Open);
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        // SQLite quietly falls back to read-only when the file is not writable; every later write
        // would then fail far from the cause.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(open_err)? {
            return Err(StoreError::ReadOnly { path });
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        enable_wal(&conn).map_err(open_err)?;
        // Per connection: WAL makes NORMAL crash-consistent but may lose the last commits on
        // power loss; history and journal must not.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        schema::migrate(&mut conn, &path)?;
        Ok(Store {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The store file, `<state dir>/state.db`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on tokio's blocking pool, so a call waiting for another process's write does not
    /// hold up the async runtime. Panics in `f` are passed on.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Cancelled {
                path: self.path.clone(),
            }),
        }
    }

    /// One logical write: `f` runs inside a transaction that holds the write lock from its start
    /// (so it never fails half-way for a lock another process took after its first read), and
    /// commits only if `f` succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }

    /// A read of the last committed state. Several statements that must agree go in one call.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means a panic elsewhere; an unfinished transaction was rolled
        // back when its guard dropped, so the connection is still sound.
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn)
    }

    /// One statement as one logical write ([`Store::write`]); how many rows it changed.
    fn execute(&self, sql: &str, params: impl Params) -> Result<usize, StoreError> {
        self.write(|tx| tx.execute(sql, params).map_err(|e| self.err(e)))
    }

    /// Every row `sql` selects on `conn`, each read by `from_row`.
    fn rows<T>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl Params,
        from_row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map(params, from_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// The first row `sql` selects on `conn`, if any, read by `from_row`.
    fn row<T>(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl Params,
        from_row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        conn.query_row(sql, params, from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e, Stage::Use)
    }

    fn decode(&self, what: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Decode {
            path: self.path.clone(),
            what: what.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// Switches the file to WAL (a property of the file, kept across opens). Two processes doing so
/// on a fresh file race for an exclusive lock, and SQLite may answer BUSY without calling the
/// busy handler, so retry here within the same budget.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        let result = conn
            .pragma_query_value(None, "journal_mode", |row| row.get::<_, String>(0))
            .and_then(|mode| {
                if mode.eq_ignore_ascii_case("wal") {
                    Ok(mode)
                } else {
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| {
                        row.get::<_, String>(0)
                    })
                }
            });
        match result {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                // e.g. a filesystem without shared memory: multi-process safety would be gone.
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!(
                        "the store needs WAL journaling, but SQLite kept `{mode}` on this filesystem"
                    )),
                ));
            }
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

#[derive(Clone, Copy)]
enum Stage {
    Open,
    Use,
}

enum Problem {
    ReadOnly,
    Full,
}

fn io_problem(e: &io::Error) -> Option<Problem> {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            Some(Problem::ReadOnly)
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(Problem::Full),
        _ => None,
    }
}

/// SQLite reports some failures vaguely ("unable to open database file", "disk I/O error")
/// without the OS error; writing a small file next to the store tells a read-only or full disk
/// apart from other causes. Only called on an error path.
fn probe_dir(dir: &Path) -> Option<Problem> {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let result = std::fs::write(&probe, [0u8; 4096]);
    let _ = std::fs::remove_file(&probe);
    result.err().as_ref().and_then(io_problem)
}

/// Turns a SQLite error into the error a user can act on, naming the store file.
fn classify(path: &Path, e: rusqlite::Error, stage: Stage) -> StoreError {
    let path_buf = path.to_path_buf();
    let dir = path.parent().unwrap_or(Path::new("."));
    match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path: path_buf },
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { path: path_buf },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy { path: path_buf }
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path_buf,
            source: e,
        },
        Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::PermissionDenied) => {
            match probe_dir(dir) {
                Some(Problem::ReadOnly) => StoreError::ReadOnly { path: path_buf },
                Some(Problem::Full) => StoreError::DiskFull { path: path_buf },
                None => unexplained(path_buf, e, stage),
            }
        }
        _ => unexplained(path_buf, e, stage),
    }
}

/// A SQLite error nothing more specific explains, as SQLite gave it.
fn unexplained(path: PathBuf, source: rusqlite::Error, stage: Stage) -> StoreError {
    match stage {
        Stage::Open => StoreError::Open { path, source },
        Stage::Use => StoreError::Sqlite { path, source },
    }
}

/// Timestamps are kept as RFC 3339 text in UTC with all nine fractional digits: readable with
/// the `sqlite3` shell, and fixed width so text order is time order.
fn ts_to_sql(ts: Timestamp) -> String {
    jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(9))
        .timestamp_to_string(&ts)
}

fn ts_from_sql(store: &Store, text: &str) -> Result<Timestamp, StoreError> {
    text.parse()
        .map_err(|e| store.decode("timestamp", format!("`{text}`: {e}")))
}

/// What the store's tests share.
#[cfg(test)]
mod fixtures {
    use jiff::Timestamp;

    use super::Store;

    /// A new store in its own temporary directory, removed when the `TempDir` drops.
    pub(super) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// `secs` seconds after a fixed instant.
    pub(super) fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + secs).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_the_directory_and_sets_up_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested/.rollout");
        let store = Store::open(&state).unwrap();
        assert_eq!(store.path(), state.join("state.db"));
        assert!(store.path().is_file());
        store
            .read(|conn| {
                let mode: String = conn
                    .pragma_query_value(None, "journal_mode", |r| r.get(0))
                    .unwrap();
                assert_eq!(mode, "wal");
                let sync: i64 = conn
                    .pragma_query_value(None, "synchronous", |r| r.get(0))
                    .unwrap();
                assert_eq!(sync, 2, "synchronous=FULL");
                let fk: bool = conn
                    .pragma_query_value(None, "foreign_keys", |r| r.get(0))
                    .unwrap();
                assert!(fk);
                let version: u32 = conn
                    .pragma_query_value(None, "user_version", |r| r.get(0))
                    .unwrap();
                assert_eq!(version, schema::VERSION);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let a = Store::open(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        assert_eq!(a.path(), b.path());
    }

    #[test]
    fn a_newer_schema_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = Store::open(dir.path()).unwrap().path().to_path_buf();
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, supported, .. }
                if found == schema::VERSION + 1 && supported == schema::VERSION),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![b'x'; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("state.db"), "{err}");
    }

    /// What a statement failing with SQLite's result `code` on `/srv/x/.rollout/state.db` gives.
    fn classify_code(code: std::ffi::c_int) -> StoreError {
        let path = Path::new("/srv/x/.rollout/state.db");
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        classify(path, e, Stage::Use)
    }

    #[test]
    fn sqlite_full_maps_to_disk_full_naming_the_file() {
        let err = classify_code(rusqlite::ffi::SQLITE_FULL);
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("/srv/x/.rollout/state.db") && text.contains("full"),
            "{text}"
        );
    }

    #[test]
    fn sqlite_readonly_maps_to_read_only_naming_the_file() {
        let err = classify_code(rusqlite::ffi::SQLITE_READONLY);
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
        assert!(err.to_string().contains("/srv/x/.rollout/state.db"));
    }

    #[test]
    fn timestamps_round_trip_and_sort_as_text() {
        let a: Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        let b: Timestamp = "2026-03-01T10:00:00.5Z".parse().unwrap();
        let c: Timestamp = "2026-03-01T10:00:01Z".parse().unwrap();
        let (ta, tb, tc) = (ts_to_sql(a), ts_to_sql(b), ts_to_sql(c));
        assert!(ta < tb && tb < tc, "{ta} {tb} {tc}");
        assert_eq!(ta.parse::<Timestamp>().unwrap(), a);
        assert_eq!(tb.parse::<Timestamp>().unwrap(), b);
    }

    #[tokio::test]
    async fn call_runs_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let history = store.call(|s| s.history("shop")).await.unwrap();
        assert!(history.is_empty());
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }
}
