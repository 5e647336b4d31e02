//! An environment manifest from arbitrary bytes, as `rollout plan` reads one: the bytes are
//! checked as text, parsed, resolved. Bad input must be a located diagnostic, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rollout::manifest::env;
use rollout::manifest::raw::RawEnvironment;
use rollout::manifest::source::Source;
use rollout::manifest::yaml;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("manifests/fuzz.yaml");
    let src = match Source::from_bytes(path, data.to_vec()) {
        Ok(src) => src,
        Err(d) => {
            assert!(d.pos().is_some(), "a binary file is located: {d:?}");
            let _ = d.to_string();
            return;
        }
    };
    let raw: RawEnvironment = match yaml::parse(&src, "an Environment manifest") {
        Ok(raw) => raw,
        Err(d) => return common::check_diagnostic(&src, &d),
    };
    // Secrets named `UNSET...` are missing from the host environment, the others are set.
    let lookup = |name: &str| (!name.starts_with("UNSET")).then(|| "s3cret".to_string());
    match env::resolve(&src, raw, &lookup) {
        Ok(environment) => {
            // Resolved means valid: every dependency comes before its dependent.
            for (i, s) in environment.services.iter().enumerate() {
                for d in &s.depends_on {
                    let j = environment.services.iter().position(|t| &t.name == d);
                    assert!(
                        matches!(j, Some(j) if j < i),
                        "{} before its dependency {d}",
                        s.name
                    );
                }
            }
        }
        Err(ds) => {
            assert!(!ds.0.is_empty(), "a failed resolution says why");
            for d in ds.iter() {
                common::check_diagnostic(&src, d);
            }
        }
    }
});
