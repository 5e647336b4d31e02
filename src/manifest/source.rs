//! Source files and the compiler-style diagnostics that point into them.
//!
//! Every error about user input goes through [`Diagnostic`]: it names the file, the line and the
//! column, says what was expected, and quotes the offending line with a caret under the column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file the user wrote, kept whole so diagnostics can quote it.
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
    text: Arc<str>,
}

impl Source {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Reads a file, refusing binary content with a diagnostic that points at the first bad byte.
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        let bytes = std::fs::read(path)
            .map_err(|e| Diagnostic::file(path, format!("cannot read file: {e}")))?;
        Self::from_bytes(path, bytes)
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, Diagnostic> {
        if let Some(pos) = bytes.iter().position(|b| *b == 0) {
            return Err(binary(path, &bytes, pos));
        }
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Self::new(path, text)),
            Err(e) => {
                let pos = e.utf8_error().valid_up_to();
                Err(binary(path, e.as_bytes(), pos))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text of a 1-based line, without its line ending.
    pub fn line(&self, line: u32) -> Option<&str> {
        self.lines().nth(line.checked_sub(1)? as usize)
    }

    /// The lines of the file as YAML counts them, without their endings: a line ends at LF, CRLF
    /// or a lone CR (YAML 1.2 section 5.4), so positions the parser reports and the lines
    /// diagnostics quote agree. A final line ending starts one more, empty, line.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        let mut rest = Some(&*self.text);
        std::iter::from_fn(move || {
            let text = rest?;
            match text.find(['\r', '\n']) {
                Some(i) => {
                    let after = if text[i..].starts_with("\r\n") {
                        i + 2
                    } else {
                        i + 1
                    };
                    rest = Some(&text[after..]);
                    Some(&text[..i])
                }
                None => {
                    rest = None;
                    Some(text)
                }
            }
        })
    }

    /// A diagnostic at a 1-based line and column of this file.
    pub fn error_at(&self, pos: Pos, message: impl Into<String>) -> Diagnostic {
        let snippet = self.line(pos.line).map(|l| Snippet {
            line_text: l.to_string(),
            column: pos.column,
        });
        Diagnostic {
            path: self.path.clone(),
            pos: Some(pos),
            message: message.into(),
            snippet,
            help: None,
        }
    }
}

fn binary(path: &Path, bytes: &[u8], pos: usize) -> Diagnostic {
    let before = &bytes[..pos];
    let line = before.iter().filter(|b| **b == b'\n').count() as u32 + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&bytes[line_start..pos])
        .chars()
        .count() as u32
        + 1;
    Diagnostic {
        path: path.to_path_buf(),
        pos: Some(Pos { line, column }),
        message: format!(
            "this is not a text file (byte 0x{:02x} at offset {pos}); expected UTF-8 YAML",
            bytes[pos]
        ),
        snippet: None,
        help: None,
    }
}

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const fn new(line: u32, column: u32) -> Self {
        Self { line, column }
    }
}

impl From<serde_saphyr::Location> for Pos {
    fn from(l: serde_saphyr::Location) -> Self {
        Pos {
            line: l.line().max(1) as u32,
            column: l.column().max(1) as u32,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snippet {
    line_text: String,
    column: u32,
}

/// An error in a user's file: where, what, and the line it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    path: PathBuf,
    pos: Option<Pos>,
    message: String,
    snippet: Option<Snippet>,
    help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic about a whole file (it cannot be read, it is empty, ...).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            pos: None,
            message: message.into(),
            snippet: None,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pos(&self) -> Option<Pos> {
        self.pos
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(pos) => write!(f, "{}:{}: {}", self.path.display(), pos, self.message)?,
            None => write!(f, "{}: {}", self.path.display(), self.message)?,
        }
        if let (Some(snippet), Some(pos)) = (&self.snippet, self.pos) {
            let gutter = pos.line.to_string();
            let pad = " ".repeat(gutter.len());
            // Tabs are shown as one space so the caret stays under the right character.
            let shown: String = snippet
                .line_text
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let caret_at = (snippet.column as usize)
                .saturating_sub(1)
                .min(shown.chars().count());
            write!(
                f,
                "\n{pad} |\n{gutter} | {shown}\n{pad} | {}^",
                " ".repeat(caret_at)
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Several diagnostics from one resolution pass, reported together so the user fixes them at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n\n{} errors", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_column() {
        let src = Source::new("m.yaml", "name: shop\nports: x\n");
        let d = src.error_at(Pos::new(2, 8), "expected a list of ports");
        assert_eq!(
            d.to_string(),
            "m.yaml:2:8: expected a list of ports\n  |\n2 | ports: x\n  |        ^"
        );
    }

    /// Found by the `manifest` fuzz target: YAML ends a line at a lone CR too, so the parser's
    /// line 4 of `\r\r\rlo\x02V` had no line to quote (lines were split at LF only).
    #[test]
    fn lines_end_where_yaml_ends_them() {
        let src = Source::new("m.yaml", "a\r\nb\rc\nd\r\r");
        assert_eq!(
            src.lines().collect::<Vec<_>>(),
            ["a", "b", "c", "d", "", ""]
        );
        let src = Source::new("m.yaml", "\r\r\rlo\u{2}V");
        let raw = crate::manifest::yaml::parse::<crate::manifest::raw::RawEnvironment>(&src, "m");
        let d = raw.expect_err("not a manifest");
        assert_eq!(d.pos().map(|p| p.line), Some(4), "{d}");
        assert!(d.to_string().contains("4 | lo"), "the line is quoted: {d}");
    }

    #[test]
    fn binary_is_located() {
        let err = Source::from_bytes(Path::new("b.yaml"), b"a: 1\nb: \x00".to_vec()).unwrap_err();
        assert_eq!(err.pos(), Some(Pos::new(2, 4)));
        assert!(err.message().contains("not a text file"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_binary() {
        let err = Source::from_bytes(Path::new("b.yaml"), b"a: \xff\xfe".to_vec()).unwrap_err();
        assert_eq!(err.pos(), Some(Pos::new(1, 4)));
    }
}
