//! Reading YAML into raw types: syntax only, with every error located in the source.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::source::{Diagnostic, Pos, Source};

/// A value with the position of the YAML node it came from.
pub type Spanned<T> = serde_saphyr::Spanned<T>;

/// The position a spanned value was written at.
pub fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos::from(s.referenced)
}

/// Parses one YAML document into `T`, or returns a diagnostic pointing into `src`.
///
/// `expected` names what the file should hold ("an Environment manifest"), for the empty-file case.
pub fn parse<T: DeserializeOwned>(src: &Source, expected: &str) -> Result<T, Diagnostic> {
    precheck(src, expected)?;
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<T>(src.text(), options).map_err(|e| {
        let raw = e.without_snippet().to_string();
        let message = strip_location_suffix(&raw);
        match e.location() {
            Some(loc) if loc.line() > 0 => src.error_at(Pos::from(loc), explain(message)),
            _ => Diagnostic::file(src.path(), explain(message)),
        }
    })
}

/// Rejections that give a clearer message than the YAML parser would.
fn precheck(src: &Source, expected: &str) -> Result<(), Diagnostic> {
    let meaningful = src
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---");
    if !meaningful {
        return Err(Diagnostic::file(
            src.path(),
            format!("the file is empty: expected {expected}"),
        ));
    }
    for (i, line) in src.lines().enumerate() {
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        if let Some(col) = indent.chars().position(|c| c == '\t') {
            return Err(src
                .error_at(
                    Pos::new(i as u32 + 1, col as u32 + 1),
                    "a tab is used for indentation; YAML allows only spaces there",
                )
                .with_help("replace the tab with spaces"));
        }
    }
    Ok(())
}

fn strip_location_suffix(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(", column ") => &msg[..i],
        _ => msg,
    }
}

/// Turns parser jargon into what the user should write.
fn explain(msg: &str) -> String {
    let msg = msg.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        return format!("unknown step or kind {rest}");
    }
    if msg == "expected mapping start" {
        return "expected a mapping (`key: value` lines)".into();
    }
    if msg == "expected sequence start" {
        return "expected a list (`- item` lines or `[a, b]`)".into();
    }
    if let Some(ty) = msg.strip_prefix("invalid ") {
        let what = match ty {
            "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number",
            "i8" | "i16" | "i32" | "i64" => "an integer",
            "f32" | "f64" => "a number",
            "bool" | "boolean" => "true or false",
            _ => return msg,
        };
        return format!("expected {what} here");
    }
    msg
}

/// A YAML scalar read as text, whatever its YAML type (`9000`, `true` and `"x"` all become text).
///
/// Environment values are strings to the container, and users write `PORT: 9000` unquoted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
        }
        // Asking for a string keeps the scalar as written: `on` stays `on`, `1.10` stays `1.10`
        // (YAML 1.1 readers would turn them into `true` and `1.1`).
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: String,
        port: Option<u16>,
        env: Option<BTreeMap<String, Text>>,
    }

    fn err(text: &str) -> Diagnostic {
        parse::<T>(&Source::new("t.yaml", text), "a test document").unwrap_err()
    }

    #[test]
    fn empty_file() {
        for text in ["", "\n\n", "# only a comment\n", "---\n"] {
            let d = err(text);
            assert_eq!(d.pos(), None);
            assert!(d.message().contains("the file is empty"), "{d}");
        }
    }

    #[test]
    fn tab_indentation_points_at_the_tab() {
        let d = err("name: a\nenv:\n\tX: 1\n");
        assert_eq!(d.pos(), Some(Pos::new(3, 1)));
        assert!(d.message().contains("tab"), "{d}");
    }

    #[test]
    fn unknown_key_is_located_and_lists_expected() {
        let d = err("name: a\nprot: 1\n");
        assert_eq!(d.pos(), Some(Pos::new(2, 1)));
        assert_eq!(
            d.message(),
            "unknown key `prot`, expected one of name, port, env"
        );
    }

    #[test]
    fn wrong_type() {
        let d = err("name: a\nport: eighty\n");
        assert_eq!(d.pos(), Some(Pos::new(2, 7)));
        assert_eq!(d.message(), "expected a whole number here");
    }

    #[test]
    fn duplicate_key() {
        let d = err("name: a\nname: b\n");
        assert_eq!(d.pos(), Some(Pos::new(2, 1)));
        assert!(
            d.message().starts_with("duplicate mapping key: name"),
            "{d}"
        );
    }

    #[test]
    fn scalars_become_text() {
        let t: T = parse(
            &Source::new("t.yaml", "name: a\nenv: { A: 1, B: true, C: x }\n"),
            "x",
        )
        .unwrap();
        let env = t.env.unwrap();
        assert_eq!(env["A"].0, "1");
        assert_eq!(env["B"].0, "true");
    }
}
