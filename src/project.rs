//! A project folder: `rollout.yaml`, `manifests/`, `playbooks/`; finding the environment and the
//! playbook a command is about.

use std::path::{Path, PathBuf};

use crate::manifest::config::{self, Config};
use crate::manifest::env::Environment;
use crate::manifest::playbook::{self, Playbook};
use crate::manifest::raw::{RawConfig, RawEnvironment, RawPlaybook};
use crate::manifest::source::{Diagnostic, Diagnostics, Source};
use crate::manifest::{compose, env, suggest, yaml};

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Input(#[from] Diagnostics),
    #[error("project folder `{0}` does not exist")]
    NoDir(PathBuf),
    #[error(
        "no environment found: `{0}` has no manifest (*.yaml); write one or name a file with -m"
    )]
    NoManifests(PathBuf),
    #[error("this project has several environments ({0}); choose one with -e")]
    AmbiguousEnvironment(String),
    #[error("no environment `{name}` in this project (environments: {available})")]
    UnknownEnvironment { name: String, available: String },
    #[error("no playbook `{name}` in this project (playbooks: {available})")]
    UnknownPlaybook { name: String, available: String },
    #[error("several playbooks and none named `default` ({0}); choose one with -p")]
    AmbiguousPlaybook(String),
}

impl From<Diagnostic> for ProjectError {
    fn from(d: Diagnostic) -> Self {
        ProjectError::Input(d.into())
    }
}

/// An opened project: its settings are read and valid.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub config: Config,
}

/// The environment a command works on, and what loading it noticed.
#[derive(Debug)]
pub struct Loaded {
    pub environment: Environment,
    pub source: Source,
    pub warnings: Vec<Diagnostic>,
}

impl Project {
    pub fn open(dir: &Path) -> Result<Self, ProjectError> {
        if !dir.is_dir() {
            return Err(ProjectError::NoDir(dir.to_path_buf()));
        }
        // `ROLLOUT_SETTINGS` names another settings file: the GitOps controller runs promotions
        // in its checkout of a client's repository with the daemon project's settings.
        let path = match std::env::var_os("ROLLOUT_SETTINGS") {
            Some(file) if !file.is_empty() => PathBuf::from(file),
            _ => dir.join("rollout.yaml"),
        };
        let config = if path.exists() {
            let src = Source::read(&path)?;
            let raw: RawConfig =
                yaml::parse(&src, "project settings (backend, state, daemon, ...)")?;
            config::resolve(&src, raw)?
        } else {
            Config::default()
        };
        Ok(Project {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// The state directory, resolved against the project folder. `ROLLOUT_STATE` overrides
    /// it: the GitOps controller runs promotions in its checkout of the repository with the
    /// daemon project's state, so history, locks and reports stay the project's.
    pub fn state_dir(&self) -> PathBuf {
        match std::env::var_os("ROLLOUT_STATE") {
            Some(dir) if !dir.is_empty() => self.dir.join(dir),
            _ => self.dir.join(&self.config.state),
        }
    }

    fn yaml_files(&self, sub: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        files
    }

    /// The manifest files of the project, each parsed but not resolved (no secret is needed).
    fn raw_manifests(&self) -> Result<Vec<(RawEnvironment, PathBuf)>, ProjectError> {
        self.yaml_files("manifests")
            .into_iter()
            .map(|path| {
                let src = Source::read(&path)?;
                Ok((parse_manifest(&src)?, path))
            })
            .collect()
    }

    /// The manifest files of the project, with the environment name each declares.
    fn manifests(&self) -> Result<Vec<(String, PathBuf)>, ProjectError> {
        let all = self.raw_manifests()?;
        Ok(all
            .into_iter()
            .map(|(raw, path)| (raw.name.value, path))
            .collect())
    }

    /// Every environment of the project with its client, read from the manifests' names alone
    /// (no secret is needed): what the daemon's tenants are checked against.
    pub fn catalog(&self) -> Result<Vec<(String, String)>, ProjectError> {
        let all = self.raw_manifests()?;
        Ok(all
            .into_iter()
            .map(|(raw, _)| (raw.name.value, raw.client.value))
            .collect())
    }

    /// The environment `-e` names, or the project's only one, by name alone: for commands that
    /// read what was recorded (reports) and so must not need the manifest's secrets.
    pub fn environment_name(&self, name: Option<&str>) -> Result<String, ProjectError> {
        if let Some(n) = name {
            return Ok(n.to_string());
        }
        let all = self.manifests()?;
        match all.as_slice() {
            [] => Err(ProjectError::NoManifests(self.dir.join("manifests"))),
            [(n, _)] => Ok(n.clone()),
            _ => Err(ProjectError::AmbiguousEnvironment(suggest::listing(
                all.iter().map(|(n, _)| n.as_str()),
            ))),
        }
    }

    /// Loads and resolves the environment named by `-e` (or the only one), or the file named by `-m`.
    pub fn environment(
        &self,
        name: Option<&str>,
        manifest: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ProjectError> {
        let path = match manifest {
            Some(m) => {
                let p = if m.is_absolute() {
                    m.to_path_buf()
                } else {
                    self.dir.join(m)
                };
                if !p.is_file() {
                    return Err(Diagnostic::file(&p, "no such manifest file").into());
                }
                p
            }
            None => {
                let all = self.manifests()?;
                let names = || suggest::listing(all.iter().map(|(n, _)| n.as_str()));
                match name {
                    Some(n) => match all.iter().find(|(en, _)| en == n) {
                        Some((_, p)) => p.clone(),
                        None => {
                            return Err(ProjectError::UnknownEnvironment {
                                name: n.to_string(),
                                available: names(),
                            });
                        }
                    },
                    None => match all.as_slice() {
                        [] => return Err(ProjectError::NoManifests(self.dir.join("manifests"))),
                        [(_, p)] => p.clone(),
                        _ => return Err(ProjectError::AmbiguousEnvironment(names())),
                    },
                }
            }
        };
        let source = Source::read(&path)?;
        let loaded = if is_compose(&source) {
            let imported = compose::load(&source, lookup)?;
            Loaded {
                environment: imported.environment,
                source,
                warnings: imported.warnings,
            }
        } else {
            let raw = parse_manifest(&source)?;
            let environment = env::resolve(&source, raw, lookup)?;
            Loaded {
                environment,
                source,
                warnings: Vec::new(),
            }
        };
        if let (Some(n), Some(_)) = (name, manifest)
            && loaded.environment.name != n
        {
            return Err(ProjectError::UnknownEnvironment {
                name: n.to_string(),
                available: format!("{} declares `{}`", path.display(), loaded.environment.name),
            });
        }
        Ok(loaded)
    }

    /// The playbook for `env`: `-p NAME`; else the only one; else `default`; else the built-in.
    pub fn playbook(
        &self,
        name: Option<&str>,
        env: &Environment,
    ) -> Result<Playbook, ProjectError> {
        let mut all = Vec::new();
        for path in self.yaml_files("playbooks") {
            let src = Source::read(&path)?;
            let raw: RawPlaybook =
                yaml::parse(&src, "a Playbook (apiVersion: rollout/v1, kind: Playbook)")?;
            let pb = playbook::resolve(&src, raw)?;
            all.push((pb, src));
        }
        let names = || suggest::listing(all.iter().map(|(p, _)| p.name.as_str()));
        let chosen = match name {
            Some(n) => match all.iter().position(|(p, _)| p.name == n) {
                Some(i) => i,
                None => {
                    return Err(ProjectError::UnknownPlaybook {
                        name: n.to_string(),
                        available: names(),
                    });
                }
            },
            None => match all.len() {
                0 => return Ok(Playbook::builtin_default().requiring(&env.requires.approvals)),
                1 => 0,
                _ => match all.iter().position(|(p, _)| p.name == "default") {
                    Some(i) => i,
                    None => return Err(ProjectError::AmbiguousPlaybook(names())),
                },
            },
        };
        let (pb, src) = all.swap_remove(chosen);
        pb.check_against(&src, env)?;
        Ok(pb.requiring(&env.requires.approvals))
    }
}

/// A rollout manifest's YAML, syntax checked.
fn parse_manifest(src: &Source) -> Result<RawEnvironment, Diagnostic> {
    yaml::parse(
        src,
        "an Environment manifest (apiVersion: rollout/v1, kind: Environment)",
    )
}

/// A compose file has top-level `services` and no `kind`.
fn is_compose(src: &Source) -> bool {
    let top_level = |key: &str| src.text().lines().any(|l| l.starts_with(key));
    let name = src
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    (name.contains("compose") && !top_level("kind:"))
        || (top_level("services:") && !top_level("kind:"))
}
