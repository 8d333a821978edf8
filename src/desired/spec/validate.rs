//! Stage two: the raw YAML tree → a validated [`DesiredState`] plus every diagnostic.
//!
//! Every check runs; a problem in one user never hides a problem in another.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use super::diagnostic::codes;
use super::yaml::{Node, Pos, Value};
use super::{
    DesiredState, DesiredUser, Diagnostic, Email, InvitationDefaults, ParseOptions, Role,
    SpecPolicy,
};

/// The only supported `apiVersion`.
pub(crate) const API_VERSION: &str = "guestops/v1";
/// Longest accepted `name`, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 256;

const TOP_KEYS: &[&str] = &["apiVersion", "defaults", "users"];
const DEFAULTS_KEYS: &[&str] = &["role", "invitation"];
const INVITATION_KEYS: &[&str] = &["sendEmail", "message"];
const USER_KEYS: &[&str] = &["email", "name", "role", "expires", "reason"];
const ROLE_NAMES: &[&str] = &[
    "administrator",
    "contributor",
    "workspace-contributor",
    "viewer",
];
/// Characters Entra ID rejects in `invitedUserEmailAddress` (microsoft-graph.md §1).
const ENTRA_REJECTED: &[char] = &[
    '~', '!', '#', '$', '%', '^', '&', '*', '(', ')', '+', '=', '[', ']', '{', '}', '\\', '/', '|',
    ';', ':', '"', '<', '>', '?', ',',
];

/// Validates one YAML document (the root node) into the desired state.
///
/// Returns `None` when any error was pushed to `diags` by this function.
pub(crate) fn validate(
    root: &Node,
    policy: &SpecPolicy,
    options: &ParseOptions,
    diags: &mut Vec<Diagnostic>,
) -> Option<DesiredState> {
    let errors_before = count_errors(diags);
    report_duplicate_keys(root, diags);

    let top = mapping(
        root,
        "the file",
        "a mapping with `apiVersion` and `users`",
        diags,
    )?;
    let top = Entries::new(top, "the top level", TOP_KEYS, diags);

    match top.get("apiVersion") {
        None => diags.push(
            missing(root.pos, "apiVersion", "the file")
                .with_help(format!("add `apiVersion: {API_VERSION}` as the first line")),
        ),
        Some(node) => check_api_version(node, diags),
    }

    let (default_role, invitation) = match top.get("defaults") {
        Some(node) => defaults(node, diags),
        None => (None, InvitationDefaults::default()),
    };

    let mut users = BTreeMap::new();
    match top.get("users") {
        None => diags.push(
            missing(root.pos, "users", "the file")
                .with_help("add `users:` with a list of users, or `users: []` for none"),
        ),
        Some(node) => {
            if let Some(items) = sequence(node, "users", diags) {
                users = users_list(items, default_role, policy, options, diags);
            }
        }
    }

    if count_errors(diags) > errors_before {
        return None;
    }
    Some(DesiredState { users, invitation })
}

fn count_errors(diags: &[Diagnostic]) -> usize {
    diags.iter().filter(|d| d.is_error()).count()
}

// ---------------------------------------------------------------------------------------------
// Structure helpers

/// The text of a mapping key, when it is a scalar.
fn key_text(key: &Node) -> Option<String> {
    match &key.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".to_owned()),
        Value::Bytes | Value::Seq(_) | Value::Map(_) => None,
    }
}

/// Reports every key that appears twice in a mapping, anywhere in the tree, labelling both.
fn report_duplicate_keys(node: &Node, diags: &mut Vec<Diagnostic>) {
    match &node.value {
        Value::Map(entries) => {
            let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
            for (key, value) in entries {
                if let Some(text) = key_text(key) {
                    if let Some(first) = seen.get(&text) {
                        diags.push(
                            Diagnostic::error(
                                codes::DUPLICATE_KEY,
                                format!(
                                    "key `{text}` appears twice in the same mapping (lines {} and {})",
                                    first.line, key.pos.line
                                ),
                                key.pos.line,
                                key.pos.column,
                                key.pos.len,
                                "defined again here",
                            )
                            .with_label(first.line, first.column, first.len, "first defined here")
                            .with_help("keep one of the two; the file must say one thing once"),
                        );
                    } else {
                        seen.insert(text, key.pos);
                    }
                }
                report_duplicate_keys(value, diags);
            }
        }
        Value::Seq(items) => {
            for item in items {
                report_duplicate_keys(item, diags);
            }
        }
        _ => {}
    }
}

/// The entries of a mapping, after reporting unknown and non-scalar keys.
struct Entries<'a> {
    known: BTreeMap<&'static str, &'a Node>,
}

impl<'a> Entries<'a> {
    /// Indexes `entries` by the known keys (first occurrence wins) and reports every other key.
    ///
    /// An unknown key that is a likely misspelling of a known key the mapping lacks
    /// (`apiversion`, `emial`) is reported once, as unknown with the suggestion, and its value
    /// is read as that key's: the mistake is not reported a second time as a missing key, and
    /// the value is still checked.
    fn new(
        entries: &'a [(Node, Node)],
        context: &str,
        allowed: &[&'static str],
        diags: &mut Vec<Diagnostic>,
    ) -> Self {
        let mut known = BTreeMap::new();
        let mut guesses: Vec<(&'static str, &'a Node)> = Vec::new();
        for (key, value) in entries {
            let Some(text) = key_text(key) else {
                diags.push(
                    Diagnostic::error(
                        codes::WRONG_TYPE,
                        format!("a key in {context} is {}, not a word", key.value.kind()),
                        key.pos.line,
                        key.pos.column,
                        key.pos.len,
                        "expected a key such as `email`",
                    )
                    .with_help(format!("the keys allowed here are {}", list(allowed))),
                );
                continue;
            };
            if let Some(name) = allowed.iter().find(|k| **k == text) {
                known.entry(*name).or_insert(value);
                continue;
            }
            let mut diag = Diagnostic::error(
                codes::UNKNOWN_KEY,
                format!("unknown key `{text}` in {context}"),
                key.pos.line,
                key.pos.column,
                key.pos.len,
                "unknown key",
            );
            diag = match closest(&text, allowed) {
                Some(best) => {
                    guesses.push((best, value));
                    diag.with_help(format!("did you mean `{best}`?"))
                }
                None => diag.with_help(format!("the keys allowed here are {}", list(allowed))),
            };
            diags.push(diag);
        }
        // After every exact key: a key written correctly elsewhere in the mapping wins.
        for (best, value) in guesses {
            known.entry(best).or_insert(value);
        }
        Self { known }
    }

    fn get(&self, key: &str) -> Option<&'a Node> {
        self.known.get(key).copied()
    }
}

/// `a`, `b` and `c`, each in backticks.
fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

fn wrong_type(node: &Node, what: &str, expected: &str) -> Diagnostic {
    let found = node.value.kind();
    let mut diag = Diagnostic::error(
        codes::WRONG_TYPE,
        format!("{what} must be {expected}, found {found}"),
        node.pos.line,
        node.pos.column,
        node.pos.len,
        format!("expected {expected}"),
    );
    let text_expected = expected.starts_with("a string") || expected.starts_with("a date");
    let help = match (&node.value, text_expected) {
        (Value::Int(_) | Value::Float(_) | Value::Bool(_), true) => {
            Some("put the value in quotes so that YAML reads it as text".to_owned())
        }
        (Value::Null, _) => Some("write a value after the colon, or remove the key".to_owned()),
        (Value::Str(s), _) if expected.contains("true or false") => Some(format!(
            "write `true` or `false` without quotes (found \"{}\")",
            preview(s)
        )),
        (Value::Seq(_) | Value::Map(_), true) => {
            Some("write a single value on the same line as the key".to_owned())
        }
        (Value::Map(_), false) if expected == "a list" => {
            Some("start each entry of the list with `- `".to_owned())
        }
        (Value::Seq(_), false) if expected.starts_with("a mapping with `apiVersion`") => Some(
            "start the file with `apiVersion: guestops/v1` and put the users under `users:`"
                .to_owned(),
        ),
        (_, false) if expected.starts_with("a mapping with `email`") => Some(
            "write each user as `- email: …` with `name: …` on the next line, aligned".to_owned(),
        ),
        (Value::Seq(_), false) if expected.starts_with("a mapping") => {
            Some("write `key: value` pairs here, not a list".to_owned())
        }
        _ => None,
    };
    if let Some(help) = help {
        diag = diag.with_help(help);
    }
    diag
}

fn mapping<'a>(
    node: &'a Node,
    what: &str,
    expected: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'a [(Node, Node)]> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        _ => {
            diags.push(wrong_type(node, what, expected));
            None
        }
    }
}

fn sequence<'a>(node: &'a Node, key: &str, diags: &mut Vec<Diagnostic>) -> Option<&'a [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        Value::Null => {
            diags.push(
                wrong_type(node, &format!("`{key}`"), "a list")
                    .with_help(format!("write `{key}: []` for an empty list")),
            );
            None
        }
        _ => {
            diags.push(wrong_type(node, &format!("`{key}`"), "a list"));
            None
        }
    }
}

fn string<'a>(node: &'a Node, key: &str, diags: &mut Vec<Diagnostic>) -> Option<&'a str> {
    match &node.value {
        Value::Str(s) => Some(s),
        _ => {
            diags.push(wrong_type(node, &format!("`{key}`"), "a string"));
            None
        }
    }
}

fn missing(at: Pos, key: &str, context: &str) -> Diagnostic {
    Diagnostic::error(
        codes::MISSING_KEY,
        format!("{context} has no `{key}`"),
        at.line,
        at.column,
        1,
        format!("`{key}` is required here"),
    )
}

/// At most 60 characters of `s`, for messages.
fn preview(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(60)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Suggestions

/// Damerau–Levenshtein (optimal string alignment) distance, case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The known word closest to `input`, when it is close enough to be a likely typo.
fn closest<'a>(input: &str, known: &[&'a str]) -> Option<&'a str> {
    let input = input.trim();
    if input.is_empty() || input.chars().count() > 64 {
        return None;
    }
    let lower = input.to_lowercase().replace('_', "-");
    if let Some(hit) = known
        .iter()
        .find(|k| k.to_lowercase() == lower || k.to_lowercase().replace('-', "") == lower)
    {
        return Some(hit);
    }
    let best = known
        .iter()
        .map(|k| (distance(input, k), *k))
        .min_by_key(|(d, _)| *d)?;
    let limit = (input.chars().count() / 3).max(1);
    if best.0 <= limit {
        return Some(best.1);
    }
    if lower.chars().count() >= 3 {
        return known.iter().copied().find(|k| k.starts_with(&lower));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Sections

fn check_api_version(node: &Node, diags: &mut Vec<Diagnostic>) {
    let Some(text) = string(node, "apiVersion", diags) else {
        return;
    };
    if text == API_VERSION {
        return;
    }
    let help = if closest(text, &[API_VERSION]).is_some() || text.starts_with("guestops/") {
        format!("did you mean `{API_VERSION}`? It is the only version this guestops understands")
    } else {
        format!("write `apiVersion: {API_VERSION}`, the only version this guestops understands")
    };
    diags.push(
        Diagnostic::error(
            codes::UNKNOWN_API_VERSION,
            format!("unknown apiVersion \"{}\"", preview(text)),
            node.pos.line,
            node.pos.column,
            node.pos.len,
            "unknown version",
        )
        .with_help(help),
    );
}

fn defaults(node: &Node, diags: &mut Vec<Diagnostic>) -> (Option<Role>, InvitationDefaults) {
    if node.value == Value::Null {
        return (None, InvitationDefaults::default());
    }
    let Some(entries) = mapping(node, "`defaults`", "a mapping", diags) else {
        return (None, InvitationDefaults::default());
    };
    let entries = Entries::new(entries, "`defaults`", DEFAULTS_KEYS, diags);
    let role = entries
        .get("role")
        .and_then(|n| role(n, "defaults.role", diags));
    let invitation = entries
        .get("invitation")
        .map(|inv| invitation_defaults(inv, diags))
        .unwrap_or_default();
    (role, invitation)
}

fn invitation_defaults(node: &Node, diags: &mut Vec<Diagnostic>) -> InvitationDefaults {
    let mut invitation = InvitationDefaults::default();
    if node.value == Value::Null {
        return invitation;
    }
    let Some(entries) = mapping(node, "`defaults.invitation`", "a mapping", diags) else {
        return invitation;
    };
    let entries = Entries::new(entries, "`defaults.invitation`", INVITATION_KEYS, diags);
    if let Some(send) = entries.get("sendEmail") {
        match send.value {
            Value::Bool(b) => invitation.send_email = b,
            _ => diags.push(wrong_type(send, "`sendEmail`", "true or false")),
        }
    }
    let Some(message) = entries.get("message") else {
        return invitation;
    };
    let Some(text) = string(message, "message", diags) else {
        return invitation;
    };
    if looks_like_html(text) {
        diags.push(
            Diagnostic::warning(
                codes::HTML_MESSAGE,
                "the invitation `message` looks like HTML",
                message.pos.line,
                message.pos.column,
                message.pos.len,
                "sent as plain text",
            )
            .with_help("Entra sends the message as plain text: tags appear literally"),
        );
    }
    invitation.message = Some(text.to_owned());
    invitation
}

/// Whether `text` holds something like `<b>` or `</p>`.
fn looks_like_html(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/') && bytes[i..].contains(&b'>')
    })
}

fn role(node: &Node, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Role> {
    let text = string(node, key, diags)?;
    if let Some(role) = Role::from_name(text) {
        return Some(role);
    }
    let help = match closest(text, ROLE_NAMES) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("the roles are {}", list(ROLE_NAMES)),
    };
    diags.push(
        Diagnostic::error(
            codes::UNKNOWN_ROLE,
            if key == "role" {
                format!("unknown role \"{}\"", preview(text))
            } else {
                format!("unknown role \"{}\" in `{key}`", preview(text))
            },
            node.pos.line,
            node.pos.column,
            node.pos.len,
            "not a role",
        )
        .with_help(help),
    );
    None
}

fn users_list(
    items: &[Node],
    default_role: Option<Role>,
    policy: &SpecPolicy,
    options: &ParseOptions,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, DesiredUser> {
    let mut users = BTreeMap::new();
    let mut first_seen: BTreeMap<String, Pos> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let context = format!("user #{}", index + 1);
        let Some(entries) = mapping(
            item,
            &format!("{context} in `users`"),
            "a mapping with `email` and `name`",
            diags,
        ) else {
            continue;
        };
        let entries = Entries::new(entries, &context, USER_KEYS, diags);

        let email =
            match entries.get("email") {
                None => {
                    diags.push(missing(item.pos, "email", &context).with_help(
                        "add `email: someone@partner.example` with the address to invite",
                    ));
                    None
                }
                Some(node) => email(node, policy, diags).map(|e| (e, node.pos)),
            };
        if let Some((email, pos)) = &email {
            if let Some(first) = first_seen.get(email.normalized()) {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE_EMAIL,
                        format!(
                            "`{}` is listed twice (lines {} and {})",
                            email.as_str(),
                            first.line,
                            pos.line
                        ),
                        pos.line,
                        pos.column,
                        pos.len,
                        "defined again here",
                    )
                    .with_label(first.line, first.column, first.len, "first defined here")
                    .with_help(
                        "emails are compared ignoring case and surrounding spaces; keep one entry",
                    ),
                );
            } else {
                first_seen.insert(email.normalized().to_owned(), *pos);
            }
        }

        let name = match entries.get("name") {
            None => {
                diags.push(
                    missing(item.pos, "name", &context)
                        .with_help("add `name:` with the person's display name"),
                );
                None
            }
            Some(node) => name(node, diags),
        };
        let role = entries.get("role").and_then(|n| role(n, "role", diags));
        let expires_node = entries.get("expires");
        let expires = expires_node.and_then(|n| expires(n, diags));
        let reason = entries
            .get("reason")
            .and_then(|n| string(n, "reason", diags))
            .map(str::to_owned);

        if let (Some((email, _)), Some(name)) = (email, name) {
            if let (Some(node), Some(date), Some(today)) = (expires_node, expires, options.today)
                && date < today
            {
                diags.push(expired(node, &email, date, options.prune));
            }
            let key = email.normalized().to_owned();
            let user = DesiredUser {
                email,
                name,
                role: role.or(default_role).unwrap_or(Role::Administrator),
                expires,
                reason,
                line: item.pos.line,
            };
            users.entry(key).or_insert(user);
        }
    }
    users
}

fn name(node: &Node, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let text = string(node, "name", diags)?;
    let trimmed = text.trim();
    let problem = if trimmed.is_empty() {
        Some((
            "`name` is blank".to_owned(),
            "write the person's display name".to_owned(),
        ))
    } else if trimmed.chars().count() > MAX_NAME_CHARS {
        Some((
            format!(
                "`name` is {} characters long; the limit is {MAX_NAME_CHARS}",
                trimmed.chars().count()
            ),
            "shorten the display name".to_owned(),
        ))
    } else if trimmed.chars().any(char::is_control) {
        Some((
            "`name` must be a single line of text".to_owned(),
            "remove line breaks and control characters from the name".to_owned(),
        ))
    } else {
        None
    };
    match problem {
        None => Some(trimmed.to_owned()),
        Some((message, help)) => {
            diags.push(
                Diagnostic::error(
                    codes::INVALID_NAME,
                    message,
                    node.pos.line,
                    node.pos.column,
                    node.pos.len,
                    "invalid name",
                )
                .with_help(help),
            );
            None
        }
    }
}

/// GO0208: `expires` is already past. What it means is what the plan does with it: no
/// invitation or registration, and the owned accounts removed only with `policy.prune`.
fn expired(node: &Node, email: &Email, date: NaiveDate, prune: Option<bool>) -> Diagnostic {
    let consequence = match prune {
        Some(true) => {
            "guestops does not grant it and removes the accounts it owns for this user (policy.prune is on)"
        }
        Some(false) => {
            "guestops does not grant it; accounts that already exist are left in place because policy.prune is off"
        }
        None => {
            "guestops does not invite or register this user, and removes the accounts it owns for them when the host's policy.prune is on"
        }
    };
    Diagnostic::warning(
        codes::EXPIRED,
        format!("the access of `{email}` expired on {date}: {consequence}"),
        node.pos.line,
        node.pos.column,
        node.pos.len,
        "in the past",
    )
    .with_help("remove the entry once the removal is done, or set a later date to keep the access (access ends at the end of that day, UTC)")
}

fn expires(node: &Node, diags: &mut Vec<Diagnostic>) -> Option<NaiveDate> {
    let Value::Str(text) = &node.value else {
        diags.push(wrong_type(node, "`expires`", "a date written YYYY-MM-DD"));
        return None;
    };
    let text = text.trim();
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    let (message, help) = if shaped {
        match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(date) => return Some(date),
            Err(_) => (
                format!("`expires` is not a real date: {text}"),
                "check the month and the day (e.g. February has 28 or 29 days)".to_owned(),
            ),
        }
    } else {
        (
            format!("`expires` must be a date written YYYY-MM-DD, found \"{}\"", preview(text)),
            "write the last day of access as YYYY-MM-DD, e.g. 2027-03-31 (access ends at the end of that day, UTC)".to_owned(),
        )
    };
    diags.push(
        Diagnostic::error(
            codes::INVALID_DATE,
            message,
            node.pos.line,
            node.pos.column,
            node.pos.len,
            "invalid date",
        )
        .with_help(help),
    );
    None
}

// ---------------------------------------------------------------------------------------------
// Email

/// Why an address is refused: the code, the message and the help.
struct EmailProblem {
    code: &'static str,
    message: String,
    help: String,
}

fn syntax(message: impl Into<String>, help: impl Into<String>) -> EmailProblem {
    EmailProblem {
        code: codes::INVALID_EMAIL,
        message: message.into(),
        help: help.into(),
    }
}

fn entra(message: impl Into<String>, help: impl Into<String>) -> EmailProblem {
    EmailProblem {
        code: codes::EMAIL_REJECTED_BY_ENTRA,
        message: message.into(),
        help: help.into(),
    }
}

/// Checks `address` (already trimmed) against RFC 5322 syntax and Entra's rules.
fn check_email(address: &str) -> Result<(), EmailProblem> {
    const EXAMPLE: &str = "write the address as local-part@domain, e.g. ana.silva@partner.example";
    if address.is_empty() {
        return Err(syntax("`email` is empty", EXAMPLE));
    }
    if let Some(c) = address
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        let what = if c == ' ' {
            "a space".to_owned()
        } else {
            format!("the character U+{:04X}", u32::from(c))
        };
        return Err(syntax(
            format!("`{}` contains {what}", preview(address)),
            "remove spaces and line breaks from the address",
        ));
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(syntax(
            format!("`{}` has no `@`", preview(address)),
            EXAMPLE,
        ));
    };
    if local.is_empty() {
        return Err(syntax(
            format!("`{}` has nothing before the `@`", preview(address)),
            EXAMPLE,
        ));
    }
    if domain.is_empty() {
        return Err(syntax(
            format!("`{}` has no domain after the `@`", preview(address)),
            EXAMPLE,
        ));
    }
    if local.contains('@') {
        return Err(syntax(
            format!("`{}` has more than one `@`", preview(address)),
            EXAMPLE,
        ));
    }
    if !address.is_ascii() {
        return Err(entra(
            format!("`{}` contains non-ASCII characters", preview(address)),
            "Entra invitations need an ASCII address; write an internationalized domain in its punycode form (xn--…)",
        ));
    }
    if let Some(c) = local.chars().find(|c| ENTRA_REJECTED.contains(c)) {
        return Err(entra(
            format!("Entra ID rejects the character `{c}` in an invited address"),
            "Entra refuses ~ ! # $ % ^ & * ( ) + = [ ] { } \\ / | ; : \" < > ? , in the local part; check the address with its owner",
        ));
    }
    for edge in ['.', '-'] {
        if local.starts_with(edge) || local.ends_with(edge) {
            return Err(entra(
                format!(
                    "Entra ID rejects an address whose local part starts or ends with `{edge}`"
                ),
                "`.` and `-` are allowed only inside the part before the `@`",
            ));
        }
    }
    let options = email_address::Options::default()
        .without_display_text()
        .without_domain_literal();
    if let Err(err) = email_address::EmailAddress::parse_with_options(address, options) {
        use email_address::Error as E;
        let message = match err {
            E::LocalPartTooLong => "the part before the `@` is longer than 64 characters",
            E::DomainTooLong => "the domain is longer than 254 characters",
            E::SubDomainEmpty => {
                "the domain has an empty label (two dots in a row, or a dot at an end)"
            }
            E::SubDomainTooLong => "a label of the domain is longer than 63 characters",
            E::UnsupportedDomainLiteral | E::InvalidIPAddress => {
                "the domain is an IP address literal"
            }
            _ => "a misplaced dot or a character not allowed in an address",
        };
        return Err(syntax(
            format!(
                "`{}` is not a valid email address: {message}",
                preview(address)
            ),
            EXAMPLE,
        ));
    }
    if !domain.contains('.') {
        return Err(syntax(
            format!("the domain `{domain}` of `{}` has no dot", preview(address)),
            "an invited guest needs an internet domain such as partner.example",
        ));
    }
    Ok(())
}

fn email(node: &Node, policy: &SpecPolicy, diags: &mut Vec<Diagnostic>) -> Option<Email> {
    let raw = string(node, "email", diags)?;
    let trimmed = raw.trim();
    if let Err(problem) = check_email(trimmed) {
        diags.push(
            Diagnostic::error(
                problem.code,
                problem.message,
                node.pos.line,
                node.pos.column,
                node.pos.len,
                "invalid address",
            )
            .with_help(problem.help),
        );
        return None;
    }
    let email = Email::new(trimmed);
    if !policy.allowed_domains.is_empty()
        && !policy
            .allowed_domains
            .iter()
            .any(|d| d.trim().eq_ignore_ascii_case(email.domain()))
    {
        let allowed: Vec<&str> = policy.allowed_domains.iter().map(String::as_str).collect();
        diags.push(
            Diagnostic::error(
                codes::DOMAIN_NOT_ALLOWED,
                format!(
                    "the domain `{}` of `{}` is not allowed by this host's policy",
                    email.domain(),
                    email.as_str()
                ),
                node.pos.line,
                node.pos.column,
                node.pos.len,
                "domain not allowed",
            )
            .with_help(format!(
                "allowed domains are {}; ask the operator to extend `policy.allowedDomains` if this one is legitimate",
                list(&allowed)
            )),
        );
        return None;
    }
    Some(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_and_prefixes() {
        assert_eq!(closest("emial", USER_KEYS), Some("email"));
        assert_eq!(closest("mail", USER_KEYS), Some("email"));
        assert_eq!(closest("Name", USER_KEYS), Some("name"));
        assert_eq!(closest("expiry", USER_KEYS), Some("expires"));
        assert_eq!(closest("sendemail", INVITATION_KEYS), Some("sendEmail"));
        assert_eq!(closest("admin", ROLE_NAMES), Some("administrator"));
        assert_eq!(
            closest("workspace_contributor", ROLE_NAMES),
            Some("workspace-contributor")
        );
        assert_eq!(closest("owner", ROLE_NAMES), None);
        assert_eq!(closest("x", USER_KEYS), None);
    }

    #[test]
    fn email_rules_follow_entra() {
        assert!(check_email("o'brien@partner.example").is_ok());
        assert!(check_email("first_last@partner.example").is_ok());
        assert!(check_email("a.b-c@sub.partner.example").is_ok());
        for (bad, code) in [
            ("", codes::INVALID_EMAIL),
            ("ana silva@partner.example", codes::INVALID_EMAIL),
            ("ana.partner.example", codes::INVALID_EMAIL),
            ("@partner.example", codes::INVALID_EMAIL),
            ("ana@", codes::INVALID_EMAIL),
            ("ana@localhost", codes::INVALID_EMAIL),
            ("ana..silva@partner.example", codes::INVALID_EMAIL),
            ("ana@[10.0.0.1]", codes::INVALID_EMAIL),
            ("a@b@partner.example", codes::INVALID_EMAIL),
            ("ana+tag@partner.example", codes::EMAIL_REJECTED_BY_ENTRA),
            ("ana#1@partner.example", codes::EMAIL_REJECTED_BY_ENTRA),
            ("\"ana\"@partner.example", codes::EMAIL_REJECTED_BY_ENTRA),
            (".ana@partner.example", codes::EMAIL_REJECTED_BY_ENTRA),
            ("ana-@partner.example", codes::EMAIL_REJECTED_BY_ENTRA),
            ("anä@partner.example", codes::EMAIL_REJECTED_BY_ENTRA),
        ] {
            match check_email(bad) {
                Ok(()) => panic!("{bad:?} was accepted"),
                Err(p) => assert_eq!(p.code, code, "{bad:?}: {}", p.message),
            }
        }
    }

    #[test]
    fn html_detection() {
        assert!(looks_like_html("Hello <b>you</b>"));
        assert!(!looks_like_html("a < b and c > d"));
        assert!(!looks_like_html("plain text"));
    }
}
