//! A playbook from arbitrary text, as a project loads one: parsed, resolved, then checked against
//! the demo environment (the services its steps name). Bad input must be a located diagnostic,
//! never a panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rollout::manifest::env::{self, Environment};
use rollout::manifest::playbook;
use rollout::manifest::raw::RawPlaybook;
use rollout::manifest::source::Source;
use rollout::manifest::yaml;

#[path = "common.rs"]
mod common;

fn shop() -> &'static Environment {
    static SHOP: OnceLock<Environment> = OnceLock::new();
    SHOP.get_or_init(|| {
        let src = Source::new(
            "manifests/shop.yaml",
            include_str!("../../manifests/shop.yaml"),
        );
        let raw = yaml::parse(&src, "a manifest").expect("the demo manifest parses");
        env::resolve(&src, raw, &|_| Some("s3cret".into())).expect("the demo manifest resolves")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = Source::new(Path::new("playbooks/fuzz.yaml"), text);
    let raw: RawPlaybook = match yaml::parse(&src, "a Playbook") {
        Ok(raw) => raw,
        Err(d) => return common::check_diagnostic(&src, &d),
    };
    let pb = match playbook::resolve(&src, raw) {
        Ok(pb) => pb,
        Err(ds) => {
            assert!(!ds.0.is_empty(), "a failed resolution says why");
            return ds.iter().for_each(|d| common::check_diagnostic(&src, d));
        }
    };
    for step in &pb.steps {
        let _ = playbook::describe(step);
    }
    if let Err(ds) = pb.check_against(&src, shop()) {
        assert!(!ds.0.is_empty(), "a failed check says why");
        ds.iter().for_each(|d| common::check_diagnostic(&src, d));
    }
});
