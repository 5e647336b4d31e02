//! Compose's `$` interpolation: `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, `${VAR:+alt}`, `$VAR` and `$$`, expanded from the variables `lookup` gives
//! (the host environment). A variable that is unset and has no default is an error, not an empty
//! string. Where the variables come from besides the host (a `.env` file) belongs here too.

/// Why a value cannot be interpolated, and what to write instead.
pub(super) struct InterpError {
    pub(super) message: String,
    pub(super) help: String,
}

/// Deep enough for any real default-of-a-default, shallow enough that no input can exhaust the
/// stack.
const MAX_INTERPOLATION_DEPTH: usize = 8;

/// Compose's `$` interpolation; `depth` counts the defaults this text is nested in (0 for a
/// value as written).
pub(super) fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpError> {
    if depth > MAX_INTERPOLATION_DEPTH {
        return Err(InterpError {
            message: "`${...}` defaults are nested too deeply".into(),
            help: format!("nest at most {MAX_INTERPOLATION_DEPTH} levels"),
        });
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = closing_brace(body) else {
                return Err(InterpError {
                    message: format!("`${{` is not closed in `{text}`"),
                    help: "write `${VAR}`, or `$$` for a literal `$`".into(),
                });
            };
            out.push_str(&expand(&body[..end], text, lookup, depth)?);
            rest = &body[end + 1..];
        } else {
            let len = var_name_len(after);
            if len == 0 {
                return Err(InterpError {
                    message: format!("a `$` in `{text}` is not followed by a variable name"),
                    help: "write `$VAR` or `${VAR}`, or `$$` for a literal `$`".into(),
                });
            }
            let name = &after[..len];
            out.push_str(&lookup(name).ok_or_else(|| unset(name))?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn var_name_len(s: &str) -> usize {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return 0;
    }
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// The `}` closing a `${`, skipping nested `${...}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'$' if matches!(bytes.get(i + 1), Some(b'$')) => i += 1,
            b'$' if matches!(bytes.get(i + 1), Some(b'{')) => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn unset(name: &str) -> InterpError {
    InterpError {
        message: format!("variable `{name}` is not set"),
        help: format!(
            "export {name}=... before running rollout, or give a default: `${{{name}:-value}}`"
        ),
    }
}

fn expand(
    body: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpError> {
    let len = var_name_len(body);
    let (name, op) = body.split_at(len);
    if name.is_empty() {
        return Err(InterpError {
            message: format!("`${{{body}}}` in `{text}` does not name a variable"),
            help: "write `${VAR}`, or `$$` for a literal `$`".into(),
        });
    }
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let sub = |t: &str| interpolate(t, lookup, depth + 1);
    let (op, arg) = [":-", ":?", ":+", "-", "?", "+"]
        .iter()
        .find_map(|o| op.strip_prefix(o).map(|arg| (*o, arg)))
        .unwrap_or((op, ""));
    match op {
        "" => value.ok_or_else(|| unset(name)),
        ":-" if set_nonempty => Ok(value.unwrap_or_default()),
        ":-" => sub(arg),
        "-" => value.map_or_else(|| sub(arg), Ok),
        ":+" if set_nonempty => sub(arg),
        "+" if value.is_some() => sub(arg),
        ":+" | "+" => Ok(String::new()),
        ":?" if set_nonempty => Ok(value.unwrap_or_default()),
        "?" if value.is_some() => Ok(value.unwrap_or_default()),
        ":?" | "?" => Err(InterpError {
            message: format!(
                "variable `{name}` is not set: {}",
                sub(arg).unwrap_or_else(|_| arg.to_string()),
            ),
            help: format!("export {name}=... before running rollout"),
        }),
        _ => Err(InterpError {
            message: format!("`${{{body}}}` in `{text}` is not a valid interpolation"),
            help: "expected `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}` or `${VAR:+alternative}`".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::compose::testing::error_at;
    use crate::manifest::compose::testing::web;

    #[test]
    fn interpolation() {
        let lookup = |v: &str| match v {
            "TAG" => Some("1.2".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let i = |t: &str| interpolate(t, &lookup, 0).map_err(|e| e.message);
        assert_eq!(i("a:$TAG").unwrap(), "a:1.2");
        assert_eq!(i("a:${TAG}-x").unwrap(), "a:1.2-x");
        assert_eq!(i("$${HOME} $$1").unwrap(), "${HOME} $1");
        assert_eq!(i("${NOPE:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY-d}").unwrap(), "");
        assert_eq!(i("${NOPE:-${TAG}}").unwrap(), "1.2");
        assert_eq!(i("${NOPE:--x}").unwrap(), "-x");
        assert_eq!(i("${TAG:+on}").unwrap(), "on");
        assert_eq!(i("${NOPE:+on}").unwrap(), "");
        assert_eq!(
            i("${NOPE:?set the tag}").unwrap_err(),
            "variable `NOPE` is not set: set the tag"
        );
        assert_eq!(i("${NOPE}").unwrap_err(), "variable `NOPE` is not set");
        assert!(i("${TAG").is_err());
        assert!(i("${}").is_err());
        assert!(i("${TAG!x}").is_err());
        assert!(i("5$").is_err());
    }

    #[test]
    fn unset_interpolated_variable_is_located() {
        let d = error_at(&web("    image: shop-web:${WEB_TAG}\n"), 4, 12);
        assert_eq!(d.message(), "variable `WEB_TAG` is not set");
    }
}
