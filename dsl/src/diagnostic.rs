//! Diagnostics a merchandiser can act on: file:line:column, the source line, a caret under the
//! offending text, and a hint when we can guess what was meant.

use std::fmt;

/// A byte range in a rule file. Spans never take part in equality, so trees parsed from
/// differently laid out text compare equal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end: end.max(start) }
    }
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

/// A rule file with an index of its line starts, so locating a diagnostic costs a binary search
/// rather than a scan (checking stays linear however many diagnostics a file has).
pub struct SourceText<'a> {
    pub name: &'a str,
    pub text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    pub fn new(name: &'a str, text: &'a str) -> SourceText<'a> {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceText { name, text, line_starts }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn line_bounds(&self, line: usize) -> (usize, usize) {
        let start = self.line_starts[line - 1];
        let end = self.line_starts.get(line).map_or(self.text.len(), |next| next - 1);
        (start, end)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    /// The source line and the caret under it.
    #[serde(skip)]
    source_line: String,
    #[serde(skip)]
    caret: String,
}

impl Diagnostic {
    pub fn error(source: &SourceText, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Error, source, span, message.into())
    }

    pub fn warning(source: &SourceText, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Warning, source, span, message.into())
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    fn new(severity: Severity, text: &SourceText, span: Span, message: String) -> Diagnostic {
        let (file, source) = (text.name, text.text);
        let start = floor_char_boundary(source, span.start.min(source.len()));
        let line = text.line_of(start);
        let (line_start, line_end) = text.line_bounds(line);
        let source_line = source[line_start..line_end].trim_end_matches('\r').to_string();
        let column = source[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(source, span.end.clamp(start, line_end));
        let width = source[start..end].chars().count().max(1);
        let caret = format!("{}{}", " ".repeat(column - 1), "^".repeat(width));
        Diagnostic { severity, file: file.to_string(), line, column, message, hint: None, source_line, caret }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let gutter = self.line.to_string().len();
        writeln!(f, "{severity}: {}", self.message)?;
        writeln!(f, "{:gutter$}--> {}:{}:{}", "", self.file, self.line, self.column)?;
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        match &self.hint {
            Some(hint) => write!(f, "{:gutter$} | {} {hint}", "", self.caret),
            None => write!(f, "{:gutter$} | {}", "", self.caret),
        }
    }
}

/// The closest known name to a misspelt one, if any is close enough to be a plausible typo.
pub fn suggest<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|name| (strsim::damerau_levenshtein(wrong, name), name))
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 4))
        .min()
        .map(|(_, name)| name)
}
