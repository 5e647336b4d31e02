//! The controller's pure decisions and helpers: whether a manifest is to be promoted or its
//! drift healed, what a promotion depends on ([`promotion_hash`]), and how commits, addresses
//! and child output are shown. No I/O, so each is unit-tested here.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Drift, EnvStatus};

/// Whether an environment's manifest (with content hash `hash` at `commit`) is to be promoted.
pub fn should_promote(env: &EnvStatus, commit: &str, hash: &str, retry: bool) -> bool {
    if env.promoted_hash.as_deref() == Some(hash) {
        return false;
    }
    retry || !env.failed_on(commit)
}

/// Whether drift is to be healed: `selfHeal` is on and the manifest at this commit did not
/// already fail (a failed run is not retried on the same commit).
pub fn should_heal(env: &EnvStatus, commit: &str) -> bool {
    env.self_heal && env.drift == Drift::Drifted && !env.failed_on(commit)
}

/// A file of the checkout: its path relative to the project folder, and its content.
pub type RepoFile = (String, Vec<u8>);

/// The playbook files (relative path, content) a promotion with `chosen` (`-p`, or none) may
/// read, following `rollout promote`'s choice: the files declaring `chosen`; without it the only
/// file, else those declaring `default`. A file whose name cannot be read counts too (it may be
/// the one), and when nothing matches every file counts: when in doubt, a change counts.
pub fn playbooks_used<'a>(files: &'a [RepoFile], chosen: Option<&str>) -> Vec<&'a RepoFile> {
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    let name_of = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| serde_saphyr::from_str::<Named>(t).ok())
            .and_then(|n| n.name)
    };
    let named: Vec<(&RepoFile, Option<String>)> =
        files.iter().map(|f| (f, name_of(&f.1))).collect();
    let wanted = match chosen {
        Some(n) => n,
        None if files.len() <= 1 => return files.iter().collect(),
        None => "default",
    };
    if !named.iter().any(|(_, n)| n.as_deref() == Some(wanted)) {
        return files.iter().collect();
    }
    named
        .into_iter()
        .filter(|(_, n)| n.is_none() || n.as_deref() == Some(wanted))
        .map(|(f, _)| f)
        .collect()
}

/// A settings file's text without its top-level `daemon:` block (tokens, listen address and
/// schedules change no promotion).
pub fn without_daemon_section(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#']);
        if top_level {
            skipping = line.starts_with("daemon:");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// SHA-256 of everything a promotion of `manifest` depends on: the manifest, the playbook files
/// it uses ([`playbooks_used`]) and the settings the child reads (`daemon:` aside). A change to
/// any of them is a change to promote.
pub fn promotion_hash(manifest: &[u8], playbooks: &[&RepoFile], settings: Option<&str>) -> String {
    let mut h = Sha256::new();
    let mut part = |label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part("manifest", manifest);
    for (rel, bytes) in playbooks {
        part(rel, bytes);
    }
    if let Some(text) = settings {
        part("settings", without_daemon_section(text).as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// A repository address fit for messages and the API: credentials in a URL
/// (`https://user:token@host/...`) are replaced by `***`.
pub fn redact(repo: &str) -> String {
    if let Some((scheme, rest)) = repo.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    repo.to_string()
}

/// Keeps the last `MAX` bytes' worth of lines of a child's stderr.
pub fn tail(text: &str) -> String {
    const MAX: usize = 4000;
    let t = text.trim();
    if t.len() <= MAX {
        return t.to_string();
    }
    let mut start = t.len() - MAX;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &t[start..])
}

/// A commit as people read it: its first twelve characters.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::gitops::{Attempt, Outcome, Trigger};
    use jiff::Timestamp;

    fn attempt(commit: &str, outcome: Outcome) -> Attempt {
        Attempt {
            commit: commit.into(),
            manifest_hash: "h2".into(),
            trigger: Trigger::Commit,
            outcome,
            run: None,
            exit: Some(1),
            at: Timestamp::UNIX_EPOCH,
            error: None,
        }
    }

    #[test]
    fn a_changed_manifest_is_promoted_once_and_a_failure_waits_for_a_new_commit_or_a_retry() {
        let mut env = EnvStatus::default();
        assert!(should_promote(&env, "c1", "h1", false), "never promoted");
        env.promoted_hash = Some("h1".into());
        assert!(!should_promote(&env, "c2", "h1", false), "unchanged");
        assert!(should_promote(&env, "c2", "h2", false), "changed");
        env.last = Some(attempt("c2", Outcome::Failed));
        assert!(!should_promote(&env, "c2", "h2", false), "failed here");
        assert!(should_promote(&env, "c2", "h2", true), "manual retry");
        assert!(should_promote(&env, "c3", "h2", false), "new commit");
        env.last = Some(attempt("c2", Outcome::Invalid));
        assert!(!should_promote(&env, "c2", "h2", false), "invalid here");
        env.last = Some(attempt("c2", Outcome::Refused));
        assert!(should_promote(&env, "c2", "h2", false), "refusals retry");
    }

    #[test]
    fn only_a_promoted_attempt_changes_what_runs() {
        let mut env = EnvStatus::default();
        assert!(!env.record_attempt(attempt("c1", Outcome::Failed)));
        assert_eq!(
            (env.commit.as_deref(), env.promoted_hash.as_deref()),
            (None, None)
        );
        assert!(env.failed_on("c1") && !env.failed_on("c2"));
        assert!(env.record_attempt(attempt("c2", Outcome::Promoted)));
        assert_eq!(
            (env.commit.as_deref(), env.promoted_hash.as_deref()),
            (Some("c2"), Some("h2"))
        );
        assert!(!env.record_attempt(attempt("c3", Outcome::Refused)));
        assert_eq!(env.commit.as_deref(), Some("c2"), "a refusal leaves it");
        assert_eq!(env.last.as_ref().map(|a| a.commit.as_str()), Some("c3"));
    }

    #[test]
    fn drift_is_healed_only_with_self_heal_and_not_over_a_failure() {
        let mut env = EnvStatus {
            drift: Drift::Drifted,
            ..EnvStatus::default()
        };
        assert!(!should_heal(&env, "c1"));
        env.self_heal = true;
        assert!(should_heal(&env, "c1"));
        env.last = Some(attempt("c1", Outcome::Failed));
        assert!(!should_heal(&env, "c1"));
        assert!(should_heal(&env, "c2"));
        env.drift = Drift::InSync;
        assert!(!should_heal(&env, "c2"));
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        assert_eq!(Outcome::from_exit(Some(0), true), Outcome::Promoted);
        assert_eq!(Outcome::from_exit(Some(3), true), Outcome::Refused);
        assert_eq!(Outcome::from_exit(Some(1), true), Outcome::Failed);
        assert_eq!(Outcome::from_exit(Some(1), false), Outcome::Invalid);
        assert_eq!(Outcome::from_exit(None, false), Outcome::Failed);
    }

    #[test]
    fn credentials_in_a_repository_url_are_never_shown() {
        assert_eq!(
            redact("https://bot:s3cr3t@git.example/acme/infra.git"),
            "https://***@git.example/acme/infra.git"
        );
        assert_eq!(
            redact("https://git.example/acme/infra@v2.git"),
            "https://git.example/acme/infra@v2.git"
        );
        assert_eq!(
            redact("git@git.example:acme/infra.git"),
            "git@git.example:acme/infra.git"
        );
        assert_eq!(redact("/srv/git/infra.git"), "/srv/git/infra.git");
    }

    fn pb(rel: &str, name: &str, steps: &str) -> (String, Vec<u8>) {
        (
            rel.to_string(),
            format!("apiVersion: rollout/v1\nkind: Playbook\nname: {name}\nsteps: {steps}\n")
                .into_bytes(),
        )
    }

    fn rels(used: &[&(String, Vec<u8>)]) -> Vec<String> {
        used.iter().map(|(r, _)| r.clone()).collect()
    }

    #[test]
    fn the_playbook_a_promotion_uses_is_chosen_like_rollout_promote_chooses_it() {
        let quick = pb("playbooks/quick.yaml", "quick", "[]");
        let other = pb("playbooks/x.yaml", "other", "[]");
        let default = pb("playbooks/d.yaml", "default", "[]");
        let broken = ("playbooks/broken.yaml".to_string(), b"name: [\n".to_vec());
        let files = vec![quick.clone(), other.clone(), default.clone()];
        // -p quick: the file that declares it, whatever the file is called.
        assert_eq!(
            rels(&playbooks_used(&files, Some("quick"))),
            ["playbooks/quick.yaml"]
        );
        assert_eq!(
            rels(&playbooks_used(&files, Some("other"))),
            ["playbooks/x.yaml"]
        );
        // No -p: `default` among several; the only one; all of them when nothing matches.
        assert_eq!(rels(&playbooks_used(&files, None)), ["playbooks/d.yaml"]);
        assert_eq!(
            rels(&playbooks_used(std::slice::from_ref(&other), None)),
            ["playbooks/x.yaml"]
        );
        assert_eq!(playbooks_used(&files, Some("nosuch")).len(), 3);
        assert_eq!(
            playbooks_used(&[quick.clone(), other.clone()], None).len(),
            2
        );
        // A file whose name cannot be read may be the one: it counts.
        let with_broken = vec![quick, other, broken];
        assert_eq!(
            rels(&playbooks_used(&with_broken, Some("quick"))),
            ["playbooks/quick.yaml", "playbooks/broken.yaml"]
        );
    }

    #[test]
    fn the_promotion_hash_changes_with_the_manifest_its_playbook_and_settings_only() {
        let files = vec![
            pb("playbooks/quick.yaml", "quick", "[]"),
            pb("playbooks/x.yaml", "other", "[]"),
        ];
        let base = promotion_hash(b"m1", &playbooks_used(&files, Some("quick")), None);
        assert_eq!(
            base,
            promotion_hash(b"m1", &playbooks_used(&files, Some("quick")), None)
        );
        assert_ne!(
            base,
            promotion_hash(b"m2", &playbooks_used(&files, Some("quick")), None)
        );
        let quick_changed = vec![
            pb("playbooks/quick.yaml", "quick", "[ { promote: {} } ]"),
            files[1].clone(),
        ];
        assert_ne!(
            base,
            promotion_hash(b"m1", &playbooks_used(&quick_changed, Some("quick")), None),
            "a change to the playbook used is a change"
        );
        let other_changed = vec![files[0].clone(), pb("playbooks/x.yaml", "other", "[ {} ]")];
        assert_eq!(
            base,
            promotion_hash(b"m1", &playbooks_used(&other_changed, Some("quick")), None),
            "a change to another playbook is not"
        );
        let settings =
            "backend: docker\ndaemon:\n  listen: 127.0.0.1:1\n  tokens: []\nnotify: []\n";
        let with_settings = |settings: &str| {
            promotion_hash(
                b"m1",
                &playbooks_used(&files, Some("quick")),
                Some(settings),
            )
        };
        let with = with_settings(settings);
        assert_ne!(base, with);
        let tokens_changed = settings.replace("127.0.0.1:1", "127.0.0.1:2");
        assert_eq!(
            with,
            with_settings(&tokens_changed),
            "the daemon: section changes no promotion"
        );
        let notify_changed = settings.replace(
            "notify: []",
            "notify: [ { webhook: \"http://127.0.0.1:9/\" } ]",
        );
        assert_ne!(with, with_settings(&notify_changed));
        assert_eq!(
            without_daemon_section(settings),
            "backend: docker\nnotify: []\n"
        );
    }

    #[test]
    fn a_failed_commit_waits_only_at_the_current_commit_and_until_promoted() {
        let mut env = EnvStatus {
            last: Some(attempt("c2", Outcome::Failed)),
            ..EnvStatus::default()
        };
        assert!(env.failed_at(Some("c2")).is_some());
        assert!(
            env.failed_at(Some("c3")).is_none(),
            "a newer commit is followed"
        );
        env.last = Some(attempt("c2", Outcome::Invalid));
        assert!(env.failed_at(Some("c2")).is_some());
        env.last = Some(attempt("c2", Outcome::Refused));
        assert!(
            env.failed_at(Some("c2")).is_none(),
            "a refusal retries by itself"
        );
        env.last = Some(attempt("c2", Outcome::Failed));
        env.promoted_hash = Some("h2".into());
        assert!(
            env.failed_at(Some("c2")).is_none(),
            "what failed runs already"
        );
    }

    #[test]
    fn tail_keeps_the_end() {
        let long = "x".repeat(5000) + "END";
        let t = tail(&long);
        assert!(t.ends_with("END") && t.len() < 4100);
        assert_eq!(tail("  short \n"), "short");
    }
}
