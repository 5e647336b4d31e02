//! The change document as one HTML file: inline CSS, no script, no external resource, so it
//! reads the same offline, attached to a mail or printed (`@media print`).
//!
//! Every piece of text from a run (reasons, notes, check output, names) goes through
//! [`escape`]; nothing else is interpolated into the markup.

use std::fmt::Write;

use super::tables::{self, Align, Cell, Table};
use super::*;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt(text: Option<&str>) -> String {
    text.map_or("<span class=\"none\">—</span>".into(), escape)
}

const STYLE: &str = r#"
:root { --ink: #1d2430; --muted: #5b6575; --line: #d8dde5; --soft: #f4f6f9;
        --good: #1f7a3a; --good-bg: #e5f4ea; --bad: #b42318; --bad-bg: #fdecea;
        --neutral: #8a5a00; --neutral-bg: #fff4dc; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 14px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 32px 40px 48px; }
header { border-bottom: 3px solid var(--ink); padding-bottom: 16px; margin-bottom: 8px; }
.eyebrow { color: var(--muted); text-transform: uppercase; letter-spacing: .08em; font-size: 12px; margin: 0; }
h1 { font-size: 26px; margin: 4px 0 10px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.badge { display: inline-block; padding: 3px 12px; border-radius: 999px; font-weight: 700;
         font-size: 13px; border: 1px solid currentColor; }
.good { color: var(--good); background: var(--good-bg); }
.bad { color: var(--bad); background: var(--bad-bg); }
.neutral { color: var(--neutral); background: var(--neutral-bg); }
.why { margin-left: 8px; }
.alert { border: 2px solid var(--bad); background: var(--bad-bg); color: var(--bad);
         padding: 10px 14px; border-radius: 6px; margin: 16px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 20px; margin: 16px 0 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { width: 100%; border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line);
         overflow-wrap: anywhere; }
th { background: var(--soft); font-weight: 600; border-bottom: 2px solid var(--line);
     white-space: nowrap; overflow-wrap: normal; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.when { white-space: nowrap; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.tag { color: var(--muted); font-weight: 400; font-size: 13px; }
.none { color: var(--muted); }
.empty { color: var(--muted); font-style: italic; }
.st-ok, .v-pass { color: var(--good); font-weight: 600; }
.st-failed, .v-fail { color: var(--bad); font-weight: 600; }
.st-skipped, .st-notrun { color: var(--muted); }
td[class^="st-"] { white-space: nowrap; }
.hidden-secret { color: var(--muted); font-style: italic; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print {
  @page { size: A4; margin: 14mm; }
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; }
  table, .alert, dl.facts { break-inside: auto; }
  tr { break-inside: avoid; }
  .badge, .good, .bad, .neutral, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

fn tone_class(t: Tone) -> &'static str {
    match t {
        Tone::Good => "good",
        Tone::Bad => "bad",
        Tone::Neutral => "neutral",
    }
}

fn table_cell(c: &Cell, align: Align) -> String {
    let mut class = match align {
        Align::Text => None,
        Align::Num => Some("num".to_string()),
        Align::When => Some("when".to_string()),
    };
    let content = match c {
        Cell::Text(t) => escape(t),
        Cell::Code(t) => format!("<code>{}</code>", escape(t)),
        Cell::Missing => "<span class=\"none\">—</span>".into(),
        Cell::Secret(t) => format!("<span class=\"hidden-secret\">{}</span>", escape(t)),
        Cell::Mark {
            word,
            rest,
            class: c,
            ..
        } => {
            class = Some(c.clone());
            format!("{}{}", escape(word), escape(rest))
        }
    };
    match class {
        Some(class) => format!("<td class=\"{class}\">{content}</td>"),
        None => format!("<td>{content}</td>"),
    }
}

/// A table, or the table's words for having no row.
fn table(out: &mut String, t: &Table) {
    if t.rows.is_empty() {
        let _ = writeln!(out, "<p class=\"empty\">{}</p>", t.empty);
        return;
    }
    let head: String = t
        .columns
        .iter()
        .map(|c| match (c.align, c.width) {
            (Align::Num, _) => format!("<th class=\"num\">{}</th>", escape(c.name)),
            (_, Some(w)) => format!("<th style=\"width:{w}\">{}</th>", escape(c.name)),
            _ => format!("<th>{}</th>", escape(c.name)),
        })
        .collect();
    let _ = writeln!(out, "<table>\n<thead><tr>{head}</tr></thead>\n<tbody>");
    for row in &t.rows {
        let cells: String = row
            .iter()
            .zip(&t.columns)
            .map(|(c, col)| table_cell(c, col.align))
            .collect();
        let _ = writeln!(out, "<tr>{cells}</tr>");
    }
    let _ = writeln!(out, "</tbody>\n</table>");
}

pub fn render(r: &RunReport) -> String {
    let mut out = String::new();
    let (outcome, why) = outcome_words(&r.outcome);
    let tone = tone_class(outcome_tone(&r.outcome));
    let title = format!(
        "{} {} of {} (client {})",
        kind_word(r.kind),
        r.run,
        r.environment,
        r.client
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"rollout {}\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        env!("CARGO_PKG_VERSION"),
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<header>\n<p class=\"eyebrow\">Change report · client {}</p>\n<h1>{}</h1>\n\
         <span class=\"badge {tone}\" id=\"outcome\">{outcome}</span>{}",
        escape(&r.client),
        escape(&title),
        why.map(|w| format!("<span class=\"why\">{}</span>", escape(w)))
            .unwrap_or_default()
    );
    if let Some(e) = &r.emergency {
        let _ = writeln!(
            out,
            "<div class=\"alert\" id=\"emergency\"><strong>EMERGENCY: the change window was overridden.</strong> Reason: {}</div>",
            escape(&e.reason)
        );
    }
    let _ = writeln!(out, "<dl class=\"facts\">");
    let mut fact = |k: &str, v: String| {
        let _ = writeln!(out, "<dt>{k}</dt><dd>{v}</dd>");
    };
    fact("Why", opt(r.reason.as_deref()));
    fact("Started by", escape(&r.user));
    fact("Started", escape(&started(r)));
    fact("Duration", escape(&duration_ms(r.elapsed_ms)));
    fact("Environment", escape(&r.environment));
    fact("Playbook", escape(&r.playbook));
    if let Some(n) = r.revision {
        fact("Revision", n.to_string());
    }
    if let Some(ms) = r.switch_ms {
        fact("Switch to the new version", escape(&duration_ms(ms)));
    }
    if let Some(ms) = r.rollback_ms {
        fact("Rollback", escape(&duration_ms(ms)));
    }
    let _ = writeln!(out, "</dl>\n</header>");

    // What changed.
    let _ = writeln!(out, "<section id=\"changes\">\n<h2>What changed</h2>");
    if r.changes.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"empty\">No service setting changed (or none was recorded for this run).</p>"
        );
    }
    for s in &r.changes {
        let tags = tables::service_tags(s);
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"tag\">({})</span>", escape(&tags.join(", ")))
        };
        let _ = writeln!(
            out,
            "<h3>{}: {}{tags}</h3>",
            escape(&s.service),
            action_word(s.action)
        );
        table(&mut out, &tables::settings(s));
    }
    let _ = writeln!(out, "</section>");

    // Approvals and authorizations.
    let _ = writeln!(out, "<section id=\"approvals\">\n<h2>Approvals</h2>");
    table(&mut out, &tables::approvals(r));
    let _ = writeln!(out, "<h3>Third-party authorizations</h3>");
    table(&mut out, &tables::authorizations(r));
    let _ = writeln!(out, "</section>");

    let _ = writeln!(out, "<section id=\"checks\">\n<h2>Checks</h2>");
    table(&mut out, &tables::checks(r));
    let _ = writeln!(out, "</section>");

    let canary = tables::canary(r);
    if !canary.rows.is_empty() {
        let _ = writeln!(out, "<section id=\"canary\">\n<h2>Canary analysis</h2>");
        table(&mut out, &canary);
        let _ = writeln!(out, "</section>");
    }

    // Outcome and rollback evidence.
    let _ = writeln!(
        out,
        "<section id=\"result\">\n<h2>Outcome</h2>\n<p><span class=\"badge {tone}\">{outcome}</span>{}</p>",
        why.map(|w| format!("<span class=\"why\">{}</span>", escape(w)))
            .unwrap_or_default()
    );
    if matches!(r.outcome, Outcome::RolledBack { .. }) || r.rollback_ms.is_some() {
        let _ = writeln!(out, "<h3>Rollback evidence</h3>\n<ul id=\"rollback\">");
        if let Some(w) = why {
            let _ = writeln!(out, "<li>Why: {}</li>", escape(w));
        }
        if let Some(s) = failed_step(r) {
            let _ = writeln!(
                out,
                "<li>Failed step: {}. {}: {}</li>",
                s.index + 1,
                escape(&s.description),
                escape(&s.detail)
            );
        }
        if let Some(ms) = r.rollback_ms {
            let _ = writeln!(
                out,
                "<li>Traffic back on the previous version in {}</li>",
                escape(&duration_ms(ms))
            );
        }
        let _ = writeln!(out, "</ul>");
    }
    let _ = writeln!(out, "</section>");

    let _ = writeln!(out, "<section id=\"timeline\">\n<h2>Timeline</h2>");
    table(&mut out, &tables::timeline(r));
    if let Some(t) = &r.teardown {
        let _ = writeln!(
            out,
            "<p>Test version removed: {}{}.</p>",
            removed(t),
            t.error
                .as_ref()
                .map(|e| format!(" (error: {})", escape(e)))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "</section>\n<footer>Report of run {} by rollout {}.</footer>\n</main>\n</body>\n</html>",
        escape(&r.run),
        env!("CARGO_PKG_VERSION")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn escape_neutralises_markup_and_attribute_breakouts() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            escape("\" onmouseover=\"x' &amp;"),
            "&quot; onmouseover=&quot;x&#39; &amp;amp;"
        );
        assert_eq!(escape("plain text, é ü ✓"), "plain text, é ü ✓");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn text_from_a_run_cannot_inject_markup() {
        let html = render(&fixture::report());
        assert!(
            !html.contains("<script"),
            "a reason became a script:\n{html}"
        );
        assert!(
            html.contains(
                "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt; ticket #42 | upgrade"
            )
        );
        assert!(
            html.contains(
                "Go ahead &lt;b&gt;after&lt;/b&gt; the &quot;backup&quot; &amp; not before"
            )
        );
        assert!(html.contains("payment outage &lt;fix&gt;"));
        // Only the document's own tags: no <b> from the note.
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn is_self_contained_and_printable() {
        let html = render(&fixture::report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("@media print"));
        for external in ["<script", "<link", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "found {external:?}");
        }
    }

    #[test]
    fn holds_every_section() {
        let html = render(&fixture::report());
        for needle in [
            "<span class=\"badge bad\" id=\"outcome\">rolled back</span>",
            "id=\"emergency\"",
            "<td><code>image</code></td><td>shop-web:2.5.0</td><td>shop-web:2.7.0</td>",
            "<span class=\"hidden-secret\">changed (value hidden)</span>",
            "<td>jean.client</td><td>client</td><td class=\"when\">2026-03-02 20:55:00 UTC</td>",
            "<td>hosting-co</td><td>CHG-2291</td>",
            "<code>tcp api:9000</code></td><td class=\"v-fail\">FAIL</td><td>connection refused</td>",
            "<td class=\"num\">100.00%</td><td class=\"num\">5 ms</td>",
            "Traffic back on the previous version in 38 ms",
            "<td class=\"st-notrun\">not run</td>",
            "<dt>Revision</dt><dd>7</dd>",
        ] {
            assert!(html.contains(needle), "missing {needle:?}");
        }
    }
}
