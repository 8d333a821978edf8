//! Parsing and validation of `users.yaml` in two stages: bytes → raw spanned YAML tree
//! (`yaml`) → validated [`DesiredState`](super::DesiredState) plus diagnostics (`validate`).

use super::diagnostic::codes;
use super::yaml::{self, LoadError, Value};
use super::{Diagnostic, ParseOptions, Parsed, SpecPolicy, validate};

/// Largest accepted `users.yaml`, in bytes.
pub const MAX_FILE_SIZE: usize = 1024 * 1024;

/// Parses and validates `users.yaml`, reporting every problem at once. Never panics.
///
/// File-level problems (too large, not UTF-8, malformed YAML) stop at that one diagnostic,
/// since nothing after them can be read reliably; every other rule is checked on every entry.
/// Diagnostics come back sorted by position.
pub fn parse(bytes: &[u8], policy: &SpecPolicy) -> Parsed {
    parse_with(bytes, policy, &ParseOptions::default())
}

/// [`parse`] with what the command knows beyond the bytes ([`ParseOptions`]): the date, for a
/// warning about a past `expires`, and the real size of a file read only in part.
pub fn parse_with(bytes: &[u8], policy: &SpecPolicy, options: &ParseOptions) -> Parsed {
    let mut diagnostics = Vec::new();
    let desired = parse_into(bytes, policy, options, &mut diagnostics);
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    Parsed {
        desired: if has_errors { None } else { desired },
        diagnostics,
    }
}

/// A size in bytes for people: `512 bytes`, `3.5 KiB`, `1.9 MiB`, `1 MiB` (binary units, one
/// decimal, none for an exact multiple).
///
/// ```
/// use guestops::desired::spec::human_size;
/// assert_eq!(human_size(1024 * 1024), "1 MiB");
/// assert_eq!(human_size(2 * 1024 * 1024), "2 MiB");
/// assert_eq!(human_size(2_000_000), "1.9 MiB");
/// assert_eq!(human_size(100), "100 bytes");
/// ```
pub fn human_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    let (unit, name) = match bytes {
        0..KIB => return format!("{bytes} bytes"),
        KIB..MIB => (KIB, "KiB"),
        MIB..GIB => (MIB, "MiB"),
        _ => (GIB, "GiB"),
    };
    if bytes.is_multiple_of(unit) {
        return format!("{} {name}", bytes / unit);
    }
    // One decimal: exact enough for a message, never used for arithmetic.
    #[allow(clippy::cast_precision_loss)]
    let scaled = bytes as f64 / unit as f64;
    format!("{scaled:.1} {name}")
}

/// What GO0001 says of a file of `len` bytes read (more than the limit), `size` when the
/// whole file's size is known.
fn too_large_message(len: usize, size: Option<u64>) -> String {
    let limit = human_size(MAX_FILE_SIZE as u64);
    // A bounded reader stops one byte past the limit: then only "larger" is known.
    let size = size.or_else(|| (len != MAX_FILE_SIZE + 1).then_some(len as u64));
    match size {
        Some(size) => {
            let shown = human_size(size);
            // `1.0 MiB` would read as the limit itself: give the bytes then.
            if shown == "1.0 MiB" {
                format!("the file is {size} bytes, just over the limit of {limit}")
            } else {
                format!("the file is {shown}; the limit is {limit}")
            }
        }
        None => format!("the file is larger than the limit of {limit}"),
    }
}

fn parse_into(
    bytes: &[u8],
    policy: &SpecPolicy,
    options: &ParseOptions,
    diags: &mut Vec<Diagnostic>,
) -> Option<super::DesiredState> {
    if bytes.len() > MAX_FILE_SIZE {
        diags.push(
            Diagnostic::error(
                codes::FILE_TOO_LARGE,
                too_large_message(bytes.len(), options.size),
                1,
                1,
                1,
                "file starts here",
            )
            .with_help("a users.yaml this large is a mistake: check what was committed"),
        );
        return None;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            diags.push(not_utf8(bytes, err.valid_up_to()));
            return None;
        }
    };
    let docs = match yaml::load(text) {
        Ok(docs) => docs,
        Err(err) => {
            diags.push(load_error(text, err));
            return None;
        }
    };
    let Some(first) = docs.first() else {
        diags.push(empty());
        return None;
    };
    for extra in &docs[1..] {
        diags.push(
            Diagnostic::error(
                codes::MULTIPLE_DOCUMENTS,
                "the file holds more than one YAML document",
                extra.pos.line,
                extra.pos.column,
                1,
                "another document starts here",
            )
            .with_help("keep a single document: remove the `---` separator and merge the content"),
        );
    }
    if first.value == Value::Null {
        diags.push(empty());
        return None;
    }
    validate::validate(first, policy, options, diags)
}

fn empty() -> Diagnostic {
    Diagnostic::error(
        codes::EMPTY_FILE,
        "the file is empty",
        1,
        1,
        1,
        "nothing here",
    )
    .with_help("a minimal file is `apiVersion: guestops/v1` followed by `users: []`")
}

fn not_utf8(bytes: &[u8], valid_up_to: usize) -> Diagnostic {
    let prefix = bytes.get(..valid_up_to).unwrap_or_default();
    // The prefix is valid UTF-8 by construction.
    let prefix = std::str::from_utf8(prefix).unwrap_or_default();
    let line = prefix.matches('\n').count() + 1;
    let column = prefix
        .rsplit_once('\n')
        .map_or(prefix, |(_, rest)| rest)
        .chars()
        .count()
        + 1;
    let byte = bytes.get(valid_up_to).copied().unwrap_or_default();
    let utf16 = bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]);
    let help = if utf16 {
        "the file looks UTF-16 encoded; save it as UTF-8"
    } else {
        "save the file as UTF-8 (it may be Latin-1, or binary)"
    };
    Diagnostic::error(
        codes::NOT_UTF8,
        format!("the file is not valid UTF-8: byte 0x{byte:02X} at line {line}, column {column}"),
        to_u32(line),
        to_u32(column),
        1,
        "invalid byte here",
    )
    .with_help(help)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Column (1-based, characters) of the first tab in the indentation of `line` (1-based).
fn indentation_tab(text: &str, line: u32) -> Option<u32> {
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let content = text.lines().nth(index)?;
    content
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t' || *c == '-')
        .position(|c| c == '\t')
        .map(|i| to_u32(i + 1))
}

fn load_error(text: &str, err: LoadError) -> Diagnostic {
    match err {
        LoadError::Syntax { message, pos } => {
            // The parser may notice a tab on the line before or after the one it reports.
            let tab = indentation_tab(text, pos.line)
                .map(|column| (pos.line, column))
                .or_else(|| {
                    if !message.contains("tab") {
                        return None;
                    }
                    [pos.line.saturating_add(1), pos.line.saturating_sub(1)]
                        .into_iter()
                        .find_map(|line| indentation_tab(text, line).map(|column| (line, column)))
                        .or(Some((pos.line, pos.column)))
                });
            match tab {
                Some((line, column)) => tab_diagnostic(line, column),
                None => Diagnostic::error(
                    codes::YAML_SYNTAX,
                    format!("invalid YAML: {message}"),
                    pos.line,
                    pos.column,
                    pos.len,
                    "here",
                )
                .with_help(
                    "fix the YAML syntax; a YAML linter or your editor can show the structure",
                ),
            }
        }
        LoadError::Limit { message, pos } => Diagnostic::error(
            codes::YAML_LIMIT,
            format!("the file exceeds a safety limit: {message}"),
            pos.line,
            pos.column,
            pos.len,
            "limit reached here",
        )
        .with_help("write the users out plainly; users.yaml needs no deep nesting and few aliases"),
    }
}

fn tab_diagnostic(line: u32, column: u32) -> Diagnostic {
    Diagnostic::error(
        codes::TAB_INDENTATION,
        "a tab is used for indentation",
        line,
        column,
        1,
        "tab",
    )
    .with_help("YAML indents with spaces only; replace the tab with spaces")
}
