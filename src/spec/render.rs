//! Renderings of diagnostics: human (annotated snippets), GitHub annotations, JSON.

use std::io::{self, Write};

use super::Diagnostic;

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
    let _ = (diagnostics, source, file_name, format, out);
    Ok(())
}
