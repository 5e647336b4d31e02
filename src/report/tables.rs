//! The tables of a change document as data: which columns, which rows, what each cell holds,
//! decided once here so the Markdown and HTML documents cannot say different things. Each
//! renderer only formats a [`Table`] (escaping every cell's text its own way).

use super::*;
use crate::check::Verdict;

/// How a column's cells are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Align {
    Text,
    /// Figures, right-aligned.
    Num,
    /// Points in time, kept on one line.
    When,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Column {
    pub name: &'static str,
    pub align: Align,
    /// A share of the table's width, where the column asks for one (HTML only).
    pub width: Option<&'static str>,
}

const fn col(name: &'static str, align: Align) -> Column {
    Column {
        name,
        align,
        width: None,
    }
}

/// One cell, as plain text plus what the text is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Text(String),
    /// A name or setting key, set in code type where the format has one.
    Code(String),
    /// Nothing recorded: a dash.
    Missing,
    /// A value a secret hides (`set (value hidden)`).
    Secret(String),
    /// A result word (pass, FAIL, a step's status) with the rest of its sentence; `class` is the
    /// HTML class that colours it, `strong` whether plain-text formats stress the word.
    Mark {
        word: String,
        rest: String,
        class: String,
        strong: bool,
    },
}

fn text(t: impl Into<String>) -> Cell {
    Cell::Text(t.into())
}

fn or_missing(t: Option<&str>) -> Cell {
    t.map_or(Cell::Missing, text)
}

fn when(t: Option<Timestamp>) -> Cell {
    t.map_or(Cell::Missing, |t| Cell::Text(time(t)))
}

/// A before/after setting value.
fn value(v: Option<&str>) -> Cell {
    match v {
        Some(t) if t.contains("value hidden") => Cell::Secret(t.into()),
        other => or_missing(other),
    }
}

pub(super) struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
    /// What to say instead of an empty table.
    pub empty: &'static str,
}

/// One service's changed settings.
pub(super) fn settings(s: &crate::report::run::ServiceChange) -> Table {
    Table {
        columns: vec![
            Column {
                width: Some("22%"),
                ..col("setting", Align::Text)
            },
            col("before", Align::Text),
            col("after", Align::Text),
        ],
        rows: s
            .changes
            .iter()
            .map(|c| {
                vec![
                    Cell::Code(c.field.clone()),
                    value(c.before.as_deref()),
                    value(c.after.as_deref()),
                ]
            })
            .collect(),
        empty: "No setting recorded.",
    }
}

/// The words after a changed service's name: `stateful`, `managed by third party X`.
pub(super) fn service_tags(s: &crate::report::run::ServiceChange) -> Vec<String> {
    let mut tags = Vec::new();
    if s.stateful {
        tags.push("stateful".to_string());
    }
    if let Some(p) = &s.managed_by {
        tags.push(format!("managed by third party {p}"));
    }
    tags
}

pub(super) fn approvals(r: &RunReport) -> Table {
    Table {
        columns: vec![
            col("approved by", Align::Text),
            col("role", Align::Text),
            col("at", Align::When),
            col("note", Align::Text),
        ],
        rows: r
            .approvals
            .iter()
            .map(|a| {
                vec![
                    text(&a.by),
                    text(&a.role),
                    when(Some(a.at)),
                    or_missing(a.note.as_deref()),
                ]
            })
            .collect(),
        empty: "No approval was recorded for this run.",
    }
}

pub(super) fn authorizations(r: &RunReport) -> Table {
    Table {
        columns: vec![
            col("third party", Align::Text),
            col("reference", Align::Text),
            col("recorded by", Align::Text),
            col("expires", Align::When),
            col("note", Align::Text),
        ],
        rows: r
            .authorizations
            .iter()
            .map(|a| {
                vec![
                    text(&a.party),
                    text(&a.reference),
                    text(&a.by),
                    when(a.expires),
                    or_missing(a.note.as_deref()),
                ]
            })
            .collect(),
        empty: "No third-party authorization was recorded for this run.",
    }
}

fn step_name(s: &crate::report::run::StepReport) -> Cell {
    text(format!("{}. {}", s.index + 1, s.description))
}

pub(super) fn checks(r: &RunReport) -> Table {
    let rows = r
        .steps
        .iter()
        .flat_map(|s| s.checks.iter().map(move |c| (s, c)))
        .map(|(s, c)| {
            let (class, word, rest, detail) = match &c.verdict {
                Verdict::Pass { detail } => ("v-pass", "pass", "", detail),
                Verdict::Fail { reason } => ("v-fail", "FAIL", "", reason),
                Verdict::Inconclusive { reason } => ("v-fail", "FAIL", " (inconclusive)", reason),
            };
            vec![
                step_name(s),
                Cell::Code(c.description.clone()),
                Cell::Mark {
                    word: word.into(),
                    rest: rest.into(),
                    class: class.into(),
                    strong: class == "v-fail",
                },
                text(detail),
                text(c.attempts.to_string()),
                text(duration_ms(c.elapsed.as_millis() as u64)),
            ]
        })
        .collect();
    Table {
        columns: vec![
            col("step", Align::Text),
            col("check", Align::Text),
            col("result", Align::Text),
            col("detail", Align::Text),
            col("attempts", Align::Num),
            col("time", Align::Num),
        ],
        rows,
        empty: "No check ran.",
    }
}

/// The canary steps' figures; an empty table when no canary step ran (the section is left out).
pub(super) fn canary(r: &RunReport) -> Table {
    let rows = r
        .steps
        .iter()
        .flat_map(|s| s.canary.iter().map(move |f| (s, f)))
        .map(|(s, f)| {
            let (word, why) = analysis_words(&f.analysis);
            let class = match f.analysis {
                Analysis::Pass => "v-pass",
                Analysis::Fail { .. } => "v-fail",
                Analysis::NotAnalysed => "none",
            };
            vec![
                step_name(s),
                text(&f.service),
                text(format!("{}%", f.weight)),
                text(duration_ms(f.hold_ms)),
                text(f.requests.to_string()),
                text(f.errors.to_string()),
                text(percent(f.error_rate)),
                text(millis(f.p99_ms)),
                text(thresholds(f)),
                Cell::Mark {
                    word: word.into(),
                    rest: why.map(|w| format!(": {w}")).unwrap_or_default(),
                    class: class.into(),
                    strong: false,
                },
            ]
        })
        .collect();
    Table {
        columns: vec![
            col("step", Align::Text),
            col("service", Align::Text),
            col("weight", Align::Num),
            col("hold", Align::Num),
            col("requests", Align::Num),
            col("errors", Align::Num),
            col("error rate", Align::Num),
            col("p99", Align::Num),
            col("thresholds", Align::Text),
            col("analysis", Align::Text),
        ],
        rows,
        empty: "No canary step ran.",
    }
}

pub(super) fn timeline(r: &RunReport) -> Table {
    Table {
        columns: vec![
            col("#", Align::Num),
            col("step", Align::Text),
            col("status", Align::Text),
            col("started", Align::When),
            col("elapsed", Align::Num),
            col("detail", Align::Text),
        ],
        rows: r
            .steps
            .iter()
            .map(|s| {
                let status = status_word(s.status);
                vec![
                    text((s.index + 1).to_string()),
                    text(&s.description),
                    Cell::Mark {
                        word: status.into(),
                        rest: String::new(),
                        class: format!("st-{}", status.replace(' ', "")),
                        strong: false,
                    },
                    when(s.started),
                    text(duration_ms(s.elapsed_ms)),
                    text(s.detail.lines().next().unwrap_or_default()),
                ]
            })
            .collect(),
        empty: "No step ran.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn every_row_has_a_cell_per_column() {
        let r = fixture::report();
        let mut tables = vec![
            approvals(&r),
            authorizations(&r),
            checks(&r),
            canary(&r),
            timeline(&r),
        ];
        tables.extend(r.changes.iter().map(settings));
        for t in tables {
            assert!(!t.rows.is_empty(), "the fixture fills every table");
            for row in &t.rows {
                assert_eq!(row.len(), t.columns.len(), "{row:?}");
            }
        }
    }

    #[test]
    fn a_failed_check_is_stressed_and_a_hidden_secret_is_marked() {
        let r = fixture::report();
        let failed = checks(&r)
            .rows
            .into_iter()
            .find(|row| matches!(&row[2], Cell::Mark { word, .. } if word == "FAIL"))
            .expect("the fixture has a failed check");
        assert!(matches!(&failed[2], Cell::Mark { strong: true, class, .. } if class == "v-fail"));
        let secret = r
            .changes
            .iter()
            .flat_map(|s| settings(s).rows)
            .find(|row| row[0] == Cell::Code("secret SESSION_KEY".into()))
            .expect("the fixture changes a secret");
        assert_eq!(secret[2], Cell::Secret("changed (value hidden)".into()));
    }
}
