//! Renderings of a plan: text, markdown, json (placeholder: the plan work fills this in).

use std::io::{self, Write};

use super::Plan;

/// How a plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// For a terminal: a summary line and one line per change.
    Text,
    /// For a pull-request comment.
    Markdown,
    /// Stable machine-readable schema (`docs/plan-json.md`).
    Json,
}

/// Writes `plan` to `out`; `color` only when `out` is a terminal.
pub fn render(plan: &Plan, format: PlanFormat, color: bool, out: &mut dyn Write) -> io::Result<()> {
    let _ = (plan, format, color, out);
    Ok(())
}
