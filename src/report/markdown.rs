//! The change document as GitHub-flavoured Markdown: headings, lists and pipe tables.

use std::fmt::Write;

use super::tables::{self, Cell, Table};
use super::*;

/// Text safe inside a table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    let one_line = text
        .split(['\n', '\r'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>();
    one_line.join(" ").replace('\\', "\\\\").replace('|', "\\|")
}

fn opt(text: Option<&str>) -> String {
    text.map_or("—".into(), cell)
}

fn table_cell(c: &Cell) -> String {
    match c {
        Cell::Text(t) | Cell::Code(t) | Cell::Secret(t) => cell(t),
        Cell::Missing => "—".into(),
        Cell::Mark {
            word, rest, strong, ..
        } => {
            let word = if *strong {
                format!("**{}**", cell(word))
            } else {
                cell(word)
            };
            format!("{word}{}", cell(rest))
        }
    }
}

/// A pipe table, or the table's words for having no row.
fn table(out: &mut String, t: &Table) {
    if t.rows.is_empty() {
        let _ = writeln!(out, "{}", t.empty);
        return;
    }
    let names: Vec<&str> = t.columns.iter().map(|c| c.name).collect();
    let _ = writeln!(
        out,
        "| {} |\n|{}",
        names.join(" | "),
        " --- |".repeat(names.len())
    );
    for row in &t.rows {
        let cells: Vec<String> = row.iter().map(table_cell).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

pub fn render(r: &RunReport) -> String {
    let mut out = String::new();
    let (outcome, why) = outcome_words(&r.outcome);
    let _ = writeln!(
        out,
        "# {} {} of {} (client {})\n",
        kind_word(r.kind),
        r.run,
        r.environment,
        r.client
    );
    if let Some(e) = &r.emergency {
        let _ = writeln!(
            out,
            "> **EMERGENCY: the change window was overridden.** Reason: {}\n",
            cell(&e.reason)
        );
    }
    let _ = writeln!(out, "| | |\n| --- | --- |");
    let _ = writeln!(
        out,
        "| Outcome | **{outcome}**{} |",
        why.map(|w| format!(": {}", cell(w))).unwrap_or_default()
    );
    let _ = writeln!(out, "| Why | {} |", opt(r.reason.as_deref()));
    let _ = writeln!(out, "| Started by | {} |", cell(&r.user));
    let _ = writeln!(out, "| Started | {} |", started(r));
    let _ = writeln!(out, "| Duration | {} |", duration_ms(r.elapsed_ms));
    let _ = writeln!(out, "| Playbook | {} |", cell(&r.playbook));
    if let Some(n) = r.revision {
        let _ = writeln!(out, "| Revision | {n} |");
    }
    if let Some(ms) = r.switch_ms {
        let _ = writeln!(out, "| Switch to the new version | {} |", duration_ms(ms));
    }
    if let Some(ms) = r.rollback_ms {
        let _ = writeln!(out, "| Rollback | {} |", duration_ms(ms));
    }

    let _ = writeln!(out, "\n## What changed\n");
    if r.changes.is_empty() {
        let _ = writeln!(
            out,
            "No service setting changed (or none was recorded for this run)."
        );
    }
    for s in &r.changes {
        let tags = tables::service_tags(s);
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!(" ({})", cell(&tags.join(", ")))
        };
        let _ = writeln!(
            out,
            "### {}: {}{tags}\n",
            cell(&s.service),
            action_word(s.action)
        );
        let t = tables::settings(s);
        table(&mut out, &t);
        out.push('\n');
    }

    let _ = writeln!(out, "\n## Approvals\n");
    table(&mut out, &tables::approvals(r));
    let _ = writeln!(out, "\n## Third-party authorizations\n");
    table(&mut out, &tables::authorizations(r));
    let _ = writeln!(out, "\n## Checks\n");
    table(&mut out, &tables::checks(r));
    let canary = tables::canary(r);
    if !canary.rows.is_empty() {
        let _ = writeln!(out, "\n## Canary analysis\n");
        table(&mut out, &canary);
    }

    let _ = writeln!(out, "\n## Outcome\n");
    let _ = writeln!(
        out,
        "**{outcome}**{}",
        why.map(|w| format!(": {}", cell(w))).unwrap_or_default()
    );
    if matches!(r.outcome, Outcome::RolledBack { .. }) || r.rollback_ms.is_some() {
        let _ = writeln!(out, "\n### Rollback evidence\n");
        if let Some(w) = why {
            let _ = writeln!(out, "- why: {}", cell(w));
        }
        if let Some(s) = failed_step(r) {
            let _ = writeln!(
                out,
                "- failed step: {}. {}: {}",
                s.index + 1,
                cell(&s.description),
                cell(&s.detail)
            );
        }
        if let Some(ms) = r.rollback_ms {
            let _ = writeln!(
                out,
                "- traffic back on the previous version in {}",
                duration_ms(ms)
            );
        }
    }

    let _ = writeln!(out, "\n## Timeline\n");
    table(&mut out, &tables::timeline(r));
    if let Some(t) = &r.teardown {
        let _ = writeln!(
            out,
            "\nTest version removed: {}{}.",
            removed(t),
            t.error
                .as_ref()
                .map(|e| format!(" (error: {})", cell(e)))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "\n---\nReport of run {} by rollout {}.",
        r.run,
        env!("CARGO_PKG_VERSION")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn holds_every_section_of_a_rolled_back_promotion() {
        let md = render(&fixture::report());
        for needle in [
            "# Promotion t1abc2def of shop (client acme)",
            "**EMERGENCY: the change window was overridden.** Reason: payment outage <fix>",
            "| Outcome | **rolled back**: web: error rate above 5.00% |",
            "| Started by | marie |",
            "| Revision | 7 |",
            "### web: updated",
            "| image | shop-web:2.5.0 | shop-web:2.7.0 |",
            "| secret SESSION_KEY | set (value hidden) | changed (value hidden) |",
            "| jean.client | client | 2026-03-02 20:55:00 UTC |",
            fixture::APPROVAL_NOTE,
            "| hosting-co | CHG-2291 | ops@hosting-co | 2026-03-03 06:00:00 UTC |",
            "| 2. smoke on test (2 checks) | tcp api:9000 | **FAIL** | connection refused | 3 | 380 ms |",
            "| web | 25% | 2.0 s | 40 | 40 | 100.00% | 5 ms | error rate ≤ 5.00%, p99 ≤ 500 ms, ≥ 5 requests | FAIL: error rate above 5.00% |",
            "### Rollback evidence",
            "- traffic back on the previous version in 38 ms",
            "| 3 | canary: 25% of traffic for 2s | failed | 2026-03-02 21:30:03 UTC | 2.0 s |",
            "| 4 | promote (drain 2s) | not run |",
            "Test version removed: 2 containers, 1 network, 0 volumes.",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

    #[test]
    fn a_pipe_or_newline_in_text_cannot_break_a_table() {
        let md = render(&fixture::report());
        // The reason holds `|`: escaped, so the row keeps its two cells.
        assert!(
            md.contains("| Why | <script>alert('reason')</script> ticket #42 \\| upgrade |"),
            "{md}"
        );
        assert_eq!(cell("a|b\nc\r\nd"), "a\\|b c d");
    }

    #[test]
    fn an_old_report_without_the_new_fields_renders() {
        let mut r = fixture::report();
        r.changes.clear();
        r.approvals.clear();
        r.authorizations.clear();
        r.emergency = None;
        r.reason = None;
        r.revision = None;
        for s in &mut r.steps {
            s.started = None;
            s.canary.clear();
        }
        let md = render(&r);
        assert!(
            md.contains("No approval was recorded for this run."),
            "{md}"
        );
        assert!(
            md.contains("No third-party authorization was recorded"),
            "{md}"
        );
        assert!(md.contains("| Why | — |"), "{md}");
        assert!(!md.contains("EMERGENCY"), "{md}");
        assert!(!md.contains("## Canary analysis"), "{md}");
    }
}
