//! The routing table on disk: `routes.json` in the proxy's state dir, written only after an
//! update passed validation and bound its ports, and restored when the proxy starts.
//!
//! Writes go to a temporary file that is fsynced and renamed over the old one (and the directory
//! fsynced), so a crash or a full disk leaves either the old table or the new one, never a torn
//! file: a restarted proxy always comes back with a table that was once accepted.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::routes::Routes;

const FILE: &str = "routes.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a routing table ({source}); move it away to start with an empty table")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The saved table, or `None` when nothing was saved yet.
pub fn load(dir: &Path) -> Result<Option<Routes>, StateError> {
    let path = path(dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| StateError::Corrupt { path, source })
}

/// Replaces the saved table atomically.
pub fn save(dir: &Path, routes: &Routes) -> Result<(), StateError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let target = path(dir);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut json = serde_json::to_vec_pretty(routes).map_err(|e| StateError::Io {
        action: "encode",
        path: target.clone(),
        source: e.into(),
    })?;
    json.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&json).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &target).map_err(io("replace", &target))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::routes::{Backend, Listener, Protocol, Weight};

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        let mut routes = Routes::default();
        routes.listeners.insert(
            8080,
            Listener {
                protocol: Protocol::Http,
                backends: vec![Backend {
                    id: "web-1".into(),
                    addr: "127.0.0.1:9000".parse().expect("addr"),
                    weight: Weight::FULL,
                }],
            },
        );
        save(dir.path(), &routes).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(routes));
        assert!(!dir.path().join(".routes.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(path(dir.path()), "{not json").expect("write");
        let err = load(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("routes.json"), "{err}");
    }
}
