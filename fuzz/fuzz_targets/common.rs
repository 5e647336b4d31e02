// Shared by the manifest, playbook and compose targets: what every rejection must look like.

use rollout::manifest::source::{Diagnostic, Source};

/// A diagnostic names the file, points at a line of it, says something, and renders without
/// panicking.
pub fn check_diagnostic(src: &Source, d: &Diagnostic) {
    assert_eq!(d.path(), src.path(), "a diagnostic names another file: {d}");
    assert!(
        !d.message().trim().is_empty(),
        "a diagnostic says nothing: {d:?}"
    );
    if let Some(pos) = d.pos() {
        // Lines as YAML counts them (LF, CRLF or a lone CR), so the quoted line is the one meant.
        let lines = src.lines().count() as u32;
        assert!(
            pos.line >= 1 && pos.column >= 1,
            "position not 1-based: {d:?}"
        );
        assert!(
            pos.line <= lines,
            "line {} of a {lines}-line file: {d:?}",
            pos.line
        );
    }
    let _ = d.to_string();
}
