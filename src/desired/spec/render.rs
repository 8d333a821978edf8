//! Renderings of diagnostics: human (annotated snippets), GitHub annotations, JSON.
//!
//! All three are deterministic and colourless; the CLI may add colour on a terminal.

use std::io::{self, Write};

use serde::Serialize;

use super::{Diagnostic, Severity};

/// How `guestops validate` prints diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Annotated source snippets, like rustc.
    Human,
    /// `::error file=…,line=…,col=…::` workflow commands.
    Github,
    /// A JSON document with every diagnostic.
    Json,
}

/// Writes `diagnostics` about `source` (named `file_name`) to `out` in `format`.
pub fn render(
    diagnostics: &[Diagnostic],
    source: &[u8],
    file_name: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        OutputFormat::Human => human(diagnostics, source, file_name, out),
        OutputFormat::Github => github(diagnostics, file_name, out),
        OutputFormat::Json => json(diagnostics, file_name, out),
    }
}

/// Writes, in `format`, that `file_name` could not be checked at all (`message`: it cannot be
/// read, or the host configuration given with it is broken): a `::error` workflow command
/// without position, or a JSON document with `valid: false`, an `error` and no diagnostics, so
/// that a machine reading the output always gets the format it asked for. `human` writes
/// `error: message`.
pub fn render_failure(
    file_name: &str,
    message: &str,
    format: OutputFormat,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        OutputFormat::Human => writeln!(out, "error: {message}"),
        OutputFormat::Github => writeln!(
            out,
            "::error file={},title=guestops validate::{}",
            escape_property(file_name),
            escape_data(message)
        ),
        OutputFormat::Json => {
            let report = JsonFailure {
                file: file_name,
                valid: false,
                error: message,
                diagnostics: &[],
            };
            serde_json::to_writer_pretty(&mut *out, &report).map_err(io::Error::from)?;
            writeln!(out)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Human

/// Longest stretch of a source line shown in a snippet, in characters.
const MAX_SHOWN_CHARS: usize = 120;

fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn human(
    diagnostics: &[Diagnostic],
    source: &[u8],
    file_name: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let text = String::from_utf8_lossy(source);
    let lines: Vec<&str> = text.lines().collect();
    for diag in diagnostics {
        human_one(diag, &lines, file_name, out)?;
        writeln!(out)?;
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        let warnings = diagnostics.len() - errors;
        let mut counts = plural(errors, "error");
        if warnings > 0 {
            counts.push_str(", ");
            counts.push_str(&plural(warnings, "warning"));
        }
        writeln!(out, "error: {file_name} is invalid: {counts}")?;
    }
    Ok(())
}

/// A source line prepared for display: control characters made harmless, long lines cut
/// around the column of interest.
struct Shown {
    /// The characters to print.
    text: String,
    /// Index (characters) in the original line of the first shown character.
    start: usize,
    /// Characters printed before it (1 for a leading `…`).
    prefix: usize,
    /// Number of characters in `text`.
    len: usize,
}

impl Shown {
    /// Where (0-based, characters) original column `column` (0-based) is printed.
    fn display_column(&self, column: usize) -> usize {
        (column.saturating_sub(self.start) + self.prefix).min(self.len)
    }
}

fn shown_line(line: &str, focus: usize) -> Shown {
    let chars: Vec<char> = line
        .chars()
        .map(|c| match c {
            '\t' => '→',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect();
    if chars.len() <= MAX_SHOWN_CHARS {
        return Shown {
            len: chars.len(),
            text: chars.into_iter().collect(),
            start: 0,
            prefix: 0,
        };
    }
    let start = focus.saturating_sub(MAX_SHOWN_CHARS / 3);
    let end = (start + MAX_SHOWN_CHARS).min(chars.len());
    let mut text = String::new();
    let mut prefix = 0;
    if start > 0 {
        text.push('…');
        prefix = 1;
    }
    text.extend(&chars[start..end]);
    if end < chars.len() {
        text.push('…');
    }
    Shown {
        len: text.chars().count(),
        text,
        start,
        prefix,
    }
}

fn human_one(
    diag: &Diagnostic,
    lines: &[&str],
    file_name: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(
        out,
        "{}[{}]: {}",
        severity_word(diag.severity),
        diag.code,
        diag.message
    )?;
    let mut labels: Vec<(usize, &super::Label)> = diag.labels.iter().enumerate().collect();
    labels.sort_by_key(|(i, l)| (l.line, l.column, *i));
    let width = labels
        .iter()
        .map(|(_, l)| l.line.to_string().len())
        .max()
        .unwrap_or(1)
        .max(diag.line.to_string().len());
    let pad = " ".repeat(width);
    writeln!(out, "{pad}--> {file_name}:{}:{}", diag.line, diag.column)?;
    writeln!(out, "{pad} |")?;
    let mut previous: Option<u32> = None;
    for (order, label) in labels {
        let line_index = usize::try_from(label.line)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        let line = match lines.get(line_index) {
            Some(line) => *line,
            // An error at the very end of the file, after the last line break.
            None if line_index == lines.len() => "",
            None => continue,
        };
        if previous.is_some_and(|prev| label.line > prev.saturating_add(1)) {
            writeln!(out, "...")?;
        }
        let column = usize::try_from(label.column).unwrap_or(1).max(1) - 1;
        let shown = shown_line(line, column);
        let start = shown.display_column(column);
        let available = shown.len.saturating_sub(start).max(1);
        let len = usize::try_from(label.len).unwrap_or(1).clamp(1, available);
        let mark = if order == 0 { "^" } else { "-" };
        if previous != Some(label.line) {
            writeln!(out, "{:>width$} | {}", label.line, shown.text.trim_end())?;
        }
        writeln!(
            out,
            "{pad} | {}{} {}",
            " ".repeat(start),
            mark.repeat(len),
            label.message
        )?;
        previous = Some(label.line);
    }
    if let Some(help) = &diag.help {
        writeln!(out, "{pad} |")?;
        writeln!(out, "{pad} = help: {help}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GitHub workflow commands

/// Escapes the message part of a workflow command.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value of a workflow command.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn github(diagnostics: &[Diagnostic], file_name: &str, out: &mut dyn Write) -> io::Result<()> {
    for diag in diagnostics {
        let mut message = diag.message.clone();
        if let Some(help) = &diag.help {
            message.push_str(". ");
            message.push_str(help);
        }
        writeln!(
            out,
            "::{} file={},line={},col={},title={}::{}",
            severity_word(diag.severity),
            escape_property(file_name),
            diag.line,
            diag.column,
            escape_property(diag.code),
            escape_data(&message)
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON

#[derive(Serialize)]
struct JsonReport<'a> {
    file: &'a str,
    valid: bool,
    diagnostics: &'a [Diagnostic],
}

#[derive(Serialize)]
struct JsonFailure<'a> {
    file: &'a str,
    valid: bool,
    error: &'a str,
    diagnostics: &'a [Diagnostic],
}

fn json(diagnostics: &[Diagnostic], file_name: &str, out: &mut dyn Write) -> io::Result<()> {
    let report = JsonReport {
        file: file_name,
        valid: !diagnostics.iter().any(Diagnostic::is_error),
        diagnostics,
    };
    // `From` keeps an I/O error (a closed pipe) as it was; `other` would hide its kind.
    serde_json::to_writer_pretty(&mut *out, &report).map_err(io::Error::from)?;
    writeln!(out)
}
