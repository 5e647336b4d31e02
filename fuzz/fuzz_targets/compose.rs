//! A docker compose file from arbitrary text, as `-m compose.yaml` reads one: parsed,
//! interpolated, converted and resolved. Bad input must be a located diagnostic (warnings too),
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rollout::manifest::compose;
use rollout::manifest::source::Source;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = Source::new(Path::new("shop/compose.yaml"), text);
    // Variables named `UNSET...` are missing from the host environment; `EMPTY...` are empty.
    let lookup = |name: &str| {
        if name.starts_with("UNSET") {
            None
        } else if name.starts_with("EMPTY") {
            Some(String::new())
        } else {
            Some(format!("v-{}", name.to_ascii_lowercase()))
        }
    };
    match compose::load(&src, &lookup) {
        Ok(imported) => {
            for w in &imported.warnings {
                common::check_diagnostic(&src, w);
            }
        }
        Err(ds) => {
            assert!(!ds.0.is_empty(), "a failed import says why");
            ds.iter().for_each(|d| common::check_diagnostic(&src, d));
        }
    }
});
