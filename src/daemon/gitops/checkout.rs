//! The checkout's contents and where the controller keeps things: the manifests under
//! `<path>/manifests/` with the environment, client and `selfHeal` each declares (read leniently,
//! so that a broken manifest still says what it is about), and their [`super::promotion_hash`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Controller, RepoFile, Status, playbooks_used, promotion_hash};
use crate::manifest::raw::RawEnvironment;
use crate::manifest::source::Source;

impl Controller {
    /// The manifest files at the checkout, and errors for files that cannot be read.
    pub(super) fn manifests(&self, status: &Status) -> (Vec<ManifestFile>, Vec<String>) {
        let dir = self.project_dir();
        let playbooks: Vec<RepoFile> = yaml_files(&dir.join("playbooks"))
            .into_iter()
            .filter_map(|p| {
                let bytes = std::fs::read(&p).ok()?;
                let name = p.file_name()?.to_string_lossy().into_owned();
                Some((format!("playbooks/{name}"), bytes))
            })
            .collect();
        let used = playbooks_used(&playbooks, self.settings.playbook.as_deref());
        // The children read the daemon project's settings, or else the checkout's.
        let settings_path = self
            .settings
            .settings_file
            .clone()
            .unwrap_or_else(|| dir.join("rollout.yaml"));
        let settings = std::fs::read_to_string(&settings_path).ok();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for path in yaml_files(&dir.join("manifests")) {
            let rel = format!(
                "manifests/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    // Still there: keep what is known of it.
                    if let Some((n, e)) =
                        status.environments.iter().find(|(_, e)| e.manifest == rel)
                    {
                        out.push(ManifestFile {
                            rel,
                            hash: None,
                            name: n.clone(),
                            client: e.client.clone(),
                            self_heal: e.self_heal,
                        });
                    }
                    continue;
                }
            };
            let hash = promotion_hash(&bytes, &used, settings.as_deref());
            // The name and client, even from a manifest that does not load as a whole (a typo
            // in a service must not hide which environment and client it is about).
            let header = Header::read(&bytes);
            let full = Source::from_bytes(&path, bytes).ok().and_then(|src| {
                crate::manifest::yaml::parse::<RawEnvironment>(&src, "an Environment manifest").ok()
            });
            let known = status.environments.iter().find(|(_, e)| e.manifest == rel);
            let name = match (&full, header.as_ref().and_then(|h| h.name.clone()), known) {
                (Some(raw), _, _) => raw.name.value.clone(),
                (None, Some(n), _) => n,
                // A file that does not parse keeps the name it had; the child reports the error.
                (None, None, Some((n, _))) => n.clone(),
                (None, None, None) => path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            };
            let client = full
                .as_ref()
                .map(|raw| raw.client.value.clone())
                .or_else(|| header.as_ref().and_then(|h| h.client.clone()))
                .or_else(|| known.and_then(|(_, e)| e.client.clone()));
            let self_heal = match &full {
                Some(raw) => raw.self_heal.unwrap_or(false),
                None => header
                    .as_ref()
                    .and_then(|h| h.self_heal)
                    .unwrap_or_else(|| known.is_some_and(|(_, e)| e.self_heal)),
            };
            out.push(ManifestFile {
                rel,
                hash: Some(hash),
                name,
                client,
                self_heal,
            });
        }
        (out, errors)
    }
}

/// A manifest file at the checkout.
pub(super) struct ManifestFile {
    /// Relative to the project folder in the repository (`manifests/NAME.yaml`).
    pub(super) rel: String,
    /// The [`promotion_hash`]; `None` when the file is there but cannot be read (this tick
    /// leaves it alone).
    pub(super) hash: Option<String>,
    /// The environment it declares (or, when it does not parse, the name it had).
    pub(super) name: String,
    pub(super) client: Option<String>,
    pub(super) self_heal: bool,
}

/// The top of an environment manifest, read leniently: what it is about, even when the rest of
/// it does not load.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    name: Option<String>,
    client: Option<String>,
    self_heal: Option<bool>,
}

impl Header {
    pub(super) fn read(bytes: &[u8]) -> Option<Header> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| serde_saphyr::from_str::<Header>(t).ok())
    }
}

/// The manifest under `<dir>/manifests/` that declares environment `name`, relative to `dir`
/// (`manifests/FILE`), so that a command can be given that file alone (`-m`): one manifest of
/// another environment that does not load must not stop this one.
pub fn manifest_of(dir: &Path, name: &str) -> Option<String> {
    yaml_files(&dir.join("manifests"))
        .into_iter()
        .find_map(|p| {
            let header = Header::read(&std::fs::read(&p).ok()?)?;
            let file = p.file_name()?.to_string_lossy();
            (header.name.as_deref() == Some(name)).then(|| format!("manifests/{file}"))
        })
}

/// The `*.yaml` / `*.yml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    files
}

/// The project's rollout.yaml, if it has one (as an absolute path when the project's is).
pub fn settings_file(project: &crate::project::Project) -> Option<PathBuf> {
    let f = project.dir.join("rollout.yaml");
    f.is_file().then_some(f)
}

/// Where the controller keeps its checkout of the repository.
pub fn checkout_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("gitops").join("checkout")
}

pub(super) fn state_file(state_dir: &Path) -> PathBuf {
    let dir = state_dir.join("gitops");
    let _ = std::fs::create_dir_all(&dir);
    dir.join("state.json")
}
