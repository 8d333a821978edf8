//! Escaping text that comes from outside (users.yaml, the tenant, the portal) before it reaches a
//! terminal or a GitHub comment: control and bidi characters, Markdown markup, HTML and
//! `@mentions`. Shared by the renderings of plans and diffs.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal or a comment raw (controls, bidi overrides).
pub(crate) fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `1 user`, `2 users`, `0 users`: a count and a noun whose plural takes an `s`.
///
/// ```
/// assert_eq!(guestops::markup::count(1, "user"), "1 user");
/// assert_eq!(guestops::markup::count(0, "error"), "0 errors");
/// assert_eq!(guestops::markup::count(2, "change"), "2 changes");
/// ```
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Escapes control and bidi characters as `\u{…}` (`\n` as `\n`).
pub(crate) fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A name in double quotes, with quotes and controls escaped.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_unsafe_char(c) => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An inline code span safe in a GFM table cell: controls escaped, `|` escaped, a fence longer
/// than any backtick run inside. Code spans also keep `@mentions` and HTML inert.
pub(crate) fn code(s: &str) -> String {
    let cleaned = clean(s);
    let mut longest = 0;
    let mut run = 0;
    for c in cleaned.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest + 1);
    let body = cleaned.replace('|', "\\|");
    let pad = if body.starts_with('`') || body.ends_with('`') || body.is_empty() {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{body}{pad}{fence}")
}

/// Plain text safe in Markdown: punctuation that could start markup is backslash-escaped,
/// `<`, `>`, `&` become entities, `@` cannot start a mention.
pub(crate) fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in clean(s).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '@' => out.push_str("&#64;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}
