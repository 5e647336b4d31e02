//! The small JSON path language of `expectJson`, and how an expected value matches a found one.
//!
//! Supported: `$` (the document), `.key`, `['key']` or `["key"]` (for keys with dots, spaces or
//! brackets), and `[index]` (from 0). Nothing else: no wildcards, slices or filters, so a path
//! always names at most one value and a check's verdict is never ambiguous.

use serde_json::Value;

/// One step of a parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Why a path does not parse; `at` is a byte offset into the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON path `{path}`: {message} at character {}", at + 1)]
pub struct PathError {
    pub path: String,
    pub at: usize,
    pub message: String,
}

/// Parses a path such as `$.items[0]['content-type']`.
pub fn parse(path: &str) -> Result<Vec<Segment>, PathError> {
    let err = |at: usize, message: &str| PathError {
        path: path.to_string(),
        at,
        message: message.to_string(),
    };
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'$') {
        return Err(err(0, "a path starts with `$`"));
    }
    let mut segments = Vec::new();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                let start = i + 1;
                let end = path[start..]
                    .find(['.', '['])
                    .map_or(path.len(), |n| start + n);
                if end == start {
                    return Err(err(start, "expected a key after `.`"));
                }
                segments.push(Segment::Key(path[start..end].to_string()));
                i = end;
            }
            b'[' => {
                let start = i + 1;
                match bytes.get(start) {
                    Some(&q @ (b'\'' | b'"')) => {
                        let (key, after) = quoted(path, start + 1, q)
                            .ok_or_else(|| err(start, "unterminated quoted key"))?;
                        if bytes.get(after) != Some(&b']') {
                            return Err(err(after, "expected `]` after a quoted key"));
                        }
                        segments.push(Segment::Key(key));
                        i = after + 1;
                    }
                    Some(b'0'..=b'9') => {
                        let end = path[start..]
                            .find(|c: char| !c.is_ascii_digit())
                            .map_or(path.len(), |n| start + n);
                        if bytes.get(end) != Some(&b']') {
                            return Err(err(end, "expected `]` after an index"));
                        }
                        let index = path[start..end]
                            .parse()
                            .map_err(|_| err(start, "index is too large"))?;
                        segments.push(Segment::Index(index));
                        i = end + 1;
                    }
                    _ => {
                        return Err(err(start, "expected an index or a quoted key after `[`"));
                    }
                }
            }
            _ => return Err(err(i, "expected `.` or `[`")),
        }
    }
    Ok(segments)
}

/// Reads a quoted key from `start` (just after the opening quote) to the closing `quote`;
/// a backslash escapes the next character. Returns the key and the offset after the quote.
fn quoted(path: &str, start: usize, quote: u8) -> Option<(String, usize)> {
    let mut key = String::new();
    let mut chars = path[start..].char_indices();
    while let Some((n, c)) = chars.next() {
        match c {
            '\\' => key.push(chars.next()?.1),
            c if c as u32 == u32::from(quote) => return Some((key, start + n + 1)),
            c => key.push(c),
        }
    }
    None
}

/// The value a parsed path names in `doc`, if there is one.
pub fn select<'v>(doc: &'v Value, segments: &[Segment]) -> Option<&'v Value> {
    segments.iter().try_fold(doc, |v, s| match s {
        Segment::Key(k) => v.as_object()?.get(k),
        Segment::Index(i) => v.as_array()?.get(*i),
    })
}

/// Whether a found value is what a playbook expects: equal JSON, except that numbers compare by
/// value, so `200` written in YAML matches `200.0` in a response.
pub fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => {
            // Integers compare exactly: f64 cannot tell large neighbours apart.
            match (e.as_i64(), a.as_i64(), e.as_u64(), a.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => e.as_f64() == a.as_f64(),
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, e)| a.get(k).is_some_and(|a| matches(e, a)))
        }
        _ => expected == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_string())
    }

    #[test]
    fn parses_every_supported_form() {
        assert_eq!(parse("$"), Ok(vec![]));
        assert_eq!(parse("$.status"), Ok(vec![key("status")]));
        assert_eq!(
            parse("$.a.b[2]['c.d'][\"e f\"][0]"),
            Ok(vec![
                key("a"),
                key("b"),
                Segment::Index(2),
                key("c.d"),
                key("e f"),
                Segment::Index(0)
            ])
        );
        assert_eq!(parse(r"$['it\'s']"), Ok(vec![key("it's")]));
        assert_eq!(parse("$[10]"), Ok(vec![Segment::Index(10)]));
        assert_eq!(parse("$.ünï"), Ok(vec![key("ünï")]));
    }

    #[test]
    fn rejects_bad_paths_with_where_and_why() {
        let cases = [
            ("status", 0, "starts with `$`"),
            ("", 0, "starts with `$`"),
            ("$.", 2, "expected a key"),
            ("$..a", 2, "expected a key"),
            ("$[", 2, "expected an index or a quoted key"),
            ("$[*]", 2, "expected an index or a quoted key"),
            ("$[-1]", 2, "expected an index or a quoted key"),
            ("$[1", 3, "expected `]` after an index"),
            ("$['a'", 5, "expected `]` after a quoted key"),
            ("$['a", 2, "unterminated"),
            ("$a", 1, "expected `.` or `[`"),
            ("$[99999999999999999999999]", 2, "too large"),
        ];
        for (path, at, message) in cases {
            let e = parse(path).expect_err(path);
            assert_eq!(e.at, at, "{path}: {e}");
            assert!(e.message.contains(message), "{path}: {e}");
        }
        assert_eq!(
            parse("$.a[x]").expect_err("bad").to_string(),
            "JSON path `$.a[x]`: expected an index or a quoted key after `[` at character 5"
        );
    }

    #[test]
    fn selects_one_value_or_none() {
        let doc = json!({
            "status": "ok",
            "items": [ { "id": 1 }, { "id": 2, "tags": ["a", "b"] } ],
            "odd.key": { "x y": true },
        });
        let get = |p: &str| select(&doc, &parse(p).expect(p)).cloned();
        assert_eq!(get("$"), Some(doc.clone()));
        assert_eq!(get("$.status"), Some(json!("ok")));
        assert_eq!(get("$.items[1].id"), Some(json!(2)));
        assert_eq!(get("$.items[1].tags[1]"), Some(json!("b")));
        assert_eq!(get("$['odd.key']['x y']"), Some(json!(true)));
        assert_eq!(get("$.missing"), None);
        assert_eq!(get("$.items[5]"), None);
        assert_eq!(get("$.status[0]"), None, "a string is not an array");
        assert_eq!(get("$.items.id"), None, "an array has no keys");
    }

    #[test]
    fn numbers_match_by_value_and_the_rest_exactly() {
        assert!(matches(&json!("ok"), &json!("ok")));
        assert!(!matches(&json!("ok"), &json!("OK")));
        assert!(matches(&json!(200), &json!(200.0)));
        assert!(matches(&json!(1.5), &json!(1.50)));
        assert!(matches(&json!(-3), &json!(-3)));
        assert!(matches(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!matches(
            &json!(9007199254740993_i64),
            &json!(9007199254740992_i64)
        ));
        assert!(!matches(&json!(200), &json!("200")), "types must agree");
        assert!(!matches(&json!(true), &json!("true")));
        assert!(matches(&json!(null), &json!(null)));
        assert!(matches(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!matches(&json!([1]), &json!([1, 2])));
        assert!(!matches(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }
}
