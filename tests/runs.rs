//! `rollout runs` (issue 23): every run of an environment, newest first, the failed ones
//! included, which `history` (revisions only) leaves out.

use crate::support::{Project, one_service, unique};

#[test]
fn runs_lists_a_failed_rehearsal_that_history_does_not() {
    let env = unique("runs");
    let p = Project::new().manifest(&env, &one_service(&env, "rollout-no-such-image:0"));
    p.run(&["runs"]).code(0).stdout_has("has no runs yet");
    // The image is on no engine and no registry is used: the test version fails at once.
    let failed = p.run(&["rehearse"]).code(1);
    let run = failed.run_id();
    let listed = p.run(&["runs"]).code(0);
    let line = listed
        .stdout
        .lines()
        .find(|l| l.starts_with(&run))
        .unwrap_or_else(|| panic!("run {run} is listed\n{listed}"));
    assert!(line.contains("rehearsal"), "{listed}");
    assert!(line.trim_end().ends_with("failed"), "{listed}");
    assert!(
        listed.stdout.contains("rollout-no-such-image:0"),
        "says why: {listed}"
    );
    let json = p.run(&["runs", "-o", "json"]).code(0).json();
    assert_eq!(json["environment"], env.as_str());
    assert_eq!(json["runs"][0]["run"], run.as_str(), "{json}");
    assert_eq!(json["runs"][0]["outcome"], "failed", "{json}");
    assert_eq!(json["runs"][0]["waiting"], false, "{json}");
    p.run(&["history"])
        .code(0)
        .stdout_has("has no revisions yet");
}
