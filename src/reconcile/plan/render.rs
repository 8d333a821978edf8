//! Renderings of a plan: `text` for a terminal, `markdown` for a pull-request comment, `json`
//! for machines (schema in `docs/plan-json.md`).
//!
//! Every string that comes from outside (names, addresses, ids, reasons) is escaped for the
//! target: control characters never reach a terminal, and nothing can break a Markdown table or
//! inject HTML or mentions into a comment.

use std::fmt::Write as _;
use std::io::{self, Write};

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Action, Change, Notice, Plan, Refusal, System};
use crate::desired::spec::Role;
use crate::markup::{clean, code, md_text, quoted};

/// GitHub's limit on the body of a comment, in characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_535;

/// The Markdown rendering stays under this many bytes (a byte count is never below the
/// character count GitHub applies), leaving room for text a caller adds around it.
pub const MARKDOWN_BUDGET: usize = 60_000;

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

/// The revision of `users.yaml` a plan was computed for, as its renderings name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanRevision {
    /// Commit id, or `sha256:<hex>` of a plain file's content.
    pub id: String,
    /// The abbreviated id shown to people.
    pub short: String,
    /// The branch followed, when the revision came from git.
    pub branch: Option<String>,
    /// The commit's first line (for a plain file: its path).
    pub subject: Option<String>,
}

impl PlanRevision {
    /// `Revision 1a2b3c4 on main: Add Ana` (text and Markdown mark the parts up differently).
    fn describe(&self, id: impl Fn(&str) -> String, text: impl Fn(&str) -> String) -> String {
        let mut s = format!("Revision {}", id(&self.short));
        if let Some(branch) = &self.branch {
            let _ = write!(s, " on {}", id(branch));
        }
        if let Some(subject) = self.subject.as_deref().filter(|t| !t.is_empty()) {
            let _ = write!(s, ": {}", text(subject));
        }
        s
    }
}

/// Context for a rendering beyond the plan itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// The revision of `users.yaml` the plan was computed for; named in every format.
    pub revision: Option<PlanRevision>,
    /// ANSI colours (text format only); set it only when the output is a terminal.
    pub color: bool,
}

/// Counts of a plan, by kind of change (the `summary` of the JSON schema).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Users in `users.yaml`.
    pub desired_users: usize,
    /// Desired (non-expired) users that need no change.
    pub in_sync: usize,
    /// All changes.
    pub changes: usize,
    /// `invite` changes.
    pub invite: usize,
    /// `restore-guest` changes.
    pub restore: usize,
    /// `enable-guest` changes.
    pub enable: usize,
    /// `resend-invitation` changes.
    pub resend: usize,
    /// `register` changes.
    pub register: usize,
    /// `update-portal` changes.
    pub update: usize,
    /// `adopt-guest` and `adopt-portal` changes.
    pub adopt: usize,
    /// Removals: `unregister`, `disable-guest`, `delete-guest`.
    pub remove: usize,
    /// `release-guest` changes.
    pub release: usize,
    /// Policy refusals (plan-wide and per-user).
    pub refusals: usize,
    /// Changes not made because their user is refused by policy.
    pub refused_changes: usize,
    /// Notices.
    pub notices: usize,
    /// Whether policy refuses the plan (nothing will be applied).
    pub refused: bool,
}

impl Summary {
    /// Counts the changes of `plan`.
    pub fn of(plan: &Plan) -> Self {
        let mut s = Summary {
            desired_users: plan.desired_users,
            in_sync: plan.in_sync,
            changes: plan.changes.len(),
            refusals: plan.refusals.len(),
            refused_changes: plan.refused_changes.len(),
            notices: plan.notices.len(),
            refused: plan.is_refused(),
            ..Summary::default()
        };
        for c in &plan.changes {
            match c.action {
                Action::Invite { .. } => s.invite += 1,
                Action::RestoreGuest { .. } => s.restore += 1,
                Action::EnableGuest { .. } => s.enable += 1,
                Action::ResendInvitation { .. } => s.resend += 1,
                Action::Register { .. } => s.register += 1,
                Action::UpdatePortal { .. } => s.update += 1,
                Action::AdoptGuest { .. } | Action::AdoptPortal { .. } => s.adopt += 1,
                Action::Unregister { .. }
                | Action::DisableGuest { .. }
                | Action::DeleteGuest { .. } => s.remove += 1,
                Action::ReleaseGuest { .. } => s.release += 1,
            }
        }
        s
    }

    /// Non-zero change counts, in display order, as `(count, verb)`.
    fn parts(&self) -> Vec<(usize, &'static str)> {
        [
            (self.invite, "invite"),
            (self.restore, "restore"),
            (self.enable, "enable"),
            (self.resend, "resend"),
            (self.register, "register"),
            (self.update, "update"),
            (self.remove, "remove"),
            (self.release, "release"),
            (self.adopt, "adopt"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .collect()
    }

    /// `Plan: 2 to invite, 1 to register; 5 in sync.` or `No changes: 5 users in sync.`
    pub fn line(&self) -> String {
        let parts = self.parts();
        if parts.is_empty() {
            return format!(
                "No changes: {} user{} in sync.",
                self.in_sync,
                if self.in_sync == 1 { "" } else { "s" }
            );
        }
        let mut s = String::from("Plan: ");
        for (i, (n, verb)) in parts.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{n} to {verb}");
        }
        let _ = write!(s, "; {} in sync.", self.in_sync);
        s
    }
}

/// Writes `plan` to `out`; `color` only when `out` is a terminal.
pub fn render(plan: &Plan, format: PlanFormat, color: bool, out: &mut dyn Write) -> io::Result<()> {
    let options = RenderOptions {
        revision: None,
        color,
    };
    render_with(plan, format, &options, out)
}

/// Writes `plan` to `out` in `format`, with the context in `options`.
pub fn render_with(
    plan: &Plan,
    format: PlanFormat,
    options: &RenderOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        PlanFormat::Text => {
            out.write_all(text(plan, options.revision.as_ref(), options.color).as_bytes())
        }
        PlanFormat::Markdown => out.write_all(markdown(plan, options.revision.as_ref()).as_bytes()),
        PlanFormat::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &json_document(plan, options.revision.as_ref()),
            )
            // `From` keeps an I/O error (a closed pipe) as it was; `other` would hide its kind.
            .map_err(io::Error::from)?;
            out.write_all(b"\n")
        }
    }
}

/// `+` creates, `~` changes or adopts, `-` removes or releases.
fn marker(action: &Action) -> char {
    match action {
        Action::Invite { .. }
        | Action::RestoreGuest { .. }
        | Action::EnableGuest { .. }
        | Action::Register { .. } => '+',
        Action::AdoptGuest { .. }
        | Action::AdoptPortal { .. }
        | Action::ResendInvitation { .. }
        | Action::UpdatePortal { .. } => '~',
        Action::Unregister { .. }
        | Action::DisableGuest { .. }
        | Action::DeleteGuest { .. }
        | Action::ReleaseGuest { .. } => '-',
    }
}

fn role_name(role: Option<crate::desired::spec::Role>) -> &'static str {
    role.map_or("unknown", |r| r.as_str())
}

/// How the details of a change mark up ids, names and the new role.
struct DetailStyle {
    id: fn(&str) -> String,
    name: fn(&str) -> String,
    role: fn(Role) -> String,
}

/// Plain text for a terminal (not escaped further).
const TEXT_DETAILS: DetailStyle = DetailStyle {
    id: |s| clean(s).into_owned(),
    name: quoted,
    role: |r| r.to_string(),
};

/// Markdown for a pull-request comment.
const MARKDOWN_DETAILS: DetailStyle = DetailStyle {
    id: code,
    name: code,
    role: |r| format!("**{r}**"),
};

/// What a change does beyond its verb and user.
fn details(action: &Action, style: &DetailStyle) -> String {
    let id = style.id;
    match action {
        Action::AdoptGuest { guest_id } => format!("guest {}", id(guest_id)),
        Action::RestoreGuest { guest_id } => {
            format!("deleted guest {} from deleted items", id(guest_id))
        }
        Action::EnableGuest { guest_id } => {
            format!("guest {}, disabled by guestops at a removal", id(guest_id))
        }
        Action::AdoptPortal { portal_id } => format!("portal user {}", id(portal_id)),
        Action::Invite {
            display_name,
            send_email,
            ..
        } => {
            let mut s = (style.name)(display_name);
            if !send_email {
                s.push_str(" (no invitation email)");
            }
            s
        }
        Action::ResendInvitation {
            guest_id,
            pending_since,
            ..
        } => match pending_since {
            Some(t) => format!(
                "guest {}, pending since {}",
                id(guest_id),
                t.format("%Y-%m-%d")
            ),
            None => format!("guest {}", id(guest_id)),
        },
        Action::Register { name, role } => {
            format!("{} as {}", (style.name)(name), (style.role)(*role))
        }
        Action::UpdatePortal {
            from_name,
            to_name,
            from_role,
            to_role,
            ..
        } => {
            let mut parts = Vec::new();
            if *from_role != Some(*to_role) {
                parts.push(format!(
                    "role {} → {}",
                    role_name(*from_role),
                    (style.role)(*to_role)
                ));
            }
            if from_name != to_name {
                parts.push(format!(
                    "name {} → {}",
                    (style.name)(from_name),
                    (style.name)(to_name)
                ));
            }
            parts.join(", ")
        }
        Action::Unregister { portal_id } => format!("portal user {}", id(portal_id)),
        Action::DisableGuest { guest_id } => format!("guest {} (sign-in blocked)", id(guest_id)),
        Action::DeleteGuest { guest_id } => format!("guest {}", id(guest_id)),
        Action::ReleaseGuest { guest_id } => {
            format!("guest {} (kept, no longer managed)", id(guest_id))
        }
    }
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const BOLD_RED: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";

fn paint(s: &str, colour: &str, color: bool) -> String {
    if color {
        format!("{colour}{s}{RESET}")
    } else {
        s.to_owned()
    }
}

/// One text line for a change (no newline, no colour).
fn change_line(c: &Change) -> String {
    // The action's stable name, as in the JSON (`docs/plan-json.md`) and `apply`'s report.
    let mut line = format!(
        "{} {:<17} {}",
        marker(&c.action),
        c.action.name(),
        clean(&c.email)
    );
    let details = details(&c.action, &TEXT_DETAILS);
    if !details.is_empty() {
        line.push(' ');
        line.push_str(&details);
    }
    if let Some(reason) = &c.reason {
        let _ = write!(line, " — {}", clean(reason));
    }
    line
}

fn text(plan: &Plan, revision: Option<&PlanRevision>, color: bool) -> String {
    let summary = Summary::of(plan);
    let mut out = String::new();
    if let Some(revision) = revision {
        out.push_str(&revision.describe(|s| clean(s).into_owned(), |s| clean(s).into_owned()));
        out.push('\n');
    }
    out.push_str(&summary.line());
    out.push('\n');
    if !plan.changes.is_empty() {
        out.push('\n');
    }
    for c in &plan.changes {
        let colour = match marker(&c.action) {
            '+' => GREEN,
            '~' => YELLOW,
            _ => RED,
        };
        out.push_str(&paint(&change_line(c), colour, color));
        out.push('\n');
    }
    if !plan.refused_changes.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "{}",
            paint(
                "Refused by policy (these changes are not made; the others are):",
                BOLD_RED,
                color
            )
        );
        for c in &plan.refused_changes {
            let _ = writeln!(out, "  {}", change_line(c));
        }
    }
    if !plan.refusals.is_empty() {
        out.push('\n');
        for r in &plan.refusals {
            let head = format!("refused [{}]:", r.code);
            let _ = writeln!(
                out,
                "{} {}\n  help: {}",
                paint(&head, BOLD_RED, color),
                clean(&r.message),
                clean(&r.help)
            );
        }
        if plan.is_refused() {
            let _ = writeln!(
                out,
                "{}",
                paint(
                    "Refused by policy: nothing will be applied.",
                    BOLD_RED,
                    color
                )
            );
        }
    }
    if !plan.notices.is_empty() {
        out.push('\n');
        for n in &plan.notices {
            let _ = writeln!(out, "note [{}]: {}", n.code, clean(&n.message));
        }
    }
    out
}

fn markdown_change_row(c: &Change) -> String {
    let reason = c.reason.as_deref().map(md_text).unwrap_or_default();
    format!(
        "| `{}` | {} | {} | {} | {} |\n",
        marker(&c.action),
        code(&c.email),
        c.action.name(),
        details(&c.action, &MARKDOWN_DETAILS),
        reason
    )
}

fn markdown_refusal(r: &Refusal) -> String {
    format!(
        "- **{}**: {}<br>help: {}\n",
        md_text(&r.code),
        md_text(&r.message),
        md_text(&r.help)
    )
}

fn markdown_notice(n: &Notice) -> String {
    format!("- **{}**: {}\n", md_text(&n.code), md_text(&n.message))
}

/// Appends `rows` to `out` while `out` stays under `end` bytes (keeping room for the
/// truncation line); then a visible "… N more … not shown" line.
fn push_limited<T>(
    out: &mut String,
    items: &[T],
    row: impl Fn(&T) -> String,
    end: usize,
    what: &str,
) {
    const TRUNCATION_ROOM: usize = 160;
    for (shown, item) in items.iter().enumerate() {
        let line = row(item);
        if out.len() + line.len() + TRUNCATION_ROOM > end {
            let _ = write!(
                out,
                "\n… {} more {what} not shown; run `guestops plan` for all\n",
                items.len() - shown
            );
            return;
        }
        out.push_str(&line);
    }
}

fn markdown(plan: &Plan, revision: Option<&PlanRevision>) -> String {
    let summary = Summary::of(plan);
    let mut out = String::with_capacity(4096);
    out.push_str("## guestops plan\n\n");
    match revision {
        Some(rev) => {
            let _ = writeln!(
                out,
                "{} · generated {}\n",
                rev.describe(code, md_text),
                plan.generated_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Generated {}\n",
                plan.generated_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
        }
    }
    let _ = writeln!(out, "**{}**\n", summary.line());
    if plan.is_refused() {
        out.push_str("> [!CAUTION]\n> Refused by policy: nothing will be applied until the refusals below are resolved.\n\n");
    } else if plan.has_refusals() {
        out.push_str("> [!WARNING]\n> Refused by policy for some users: their changes are not made until the refusals below are resolved; the other changes are.\n\n");
    }

    out.push_str("| action | count |\n|---|---:|\n");
    for (n, verb) in summary.parts() {
        let _ = writeln!(out, "| {verb} | {n} |");
    }
    let _ = writeln!(out, "| in sync | {} |", summary.in_sync);
    out.push('\n');

    if !plan.refusals.is_empty() {
        out.push_str("### Refused by policy\n\n");
        let end = MARKDOWN_BUDGET
            .saturating_sub(30_000)
            .max(out.len() + 2_000);
        push_limited(&mut out, &plan.refusals, markdown_refusal, end, "refusals");
        out.push('\n');
    }

    if !plan.changes.is_empty() {
        out.push_str(
            "### Changes\n\n|  | user | action | details | reason |\n|---|---|---|---|---|\n",
        );
        let end = MARKDOWN_BUDGET.saturating_sub(6_000).max(out.len() + 1_000);
        push_limited(&mut out, &plan.changes, markdown_change_row, end, "changes");
        out.push('\n');
    }

    if !plan.refused_changes.is_empty() {
        out.push_str(
            "### Refused changes (not made)\n\n|  | user | action | details | reason |\n|---|---|---|---|---|\n",
        );
        let end = MARKDOWN_BUDGET.saturating_sub(3_000).max(out.len() + 1_000);
        push_limited(
            &mut out,
            &plan.refused_changes,
            markdown_change_row,
            end,
            "refused changes",
        );
        out.push('\n');
    }

    if !plan.notices.is_empty() {
        let _ = write!(
            out,
            "<details>\n<summary>{} notice{}</summary>\n\n",
            plan.notices.len(),
            if plan.notices.len() == 1 { "" } else { "s" }
        );
        let end = MARKDOWN_BUDGET.saturating_sub(200);
        push_limited(&mut out, &plan.notices, markdown_notice, end, "notices");
        out.push_str("\n</details>\n");
    }
    out
}

/// One change in the JSON schema.
#[derive(Serialize)]
struct JsonChange<'a> {
    user: &'a str,
    key: &'a str,
    system: System,
    action: &'static str,
    details: Value,
    reason: Option<&'a str>,
}

/// The JSON document (`docs/plan-json.md`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonPlan<'a> {
    version: u32,
    generated_at: String,
    revision: Option<&'a str>,
    branch: Option<&'a str>,
    subject: Option<&'a str>,
    summary: Summary,
    changes: Vec<JsonChange<'a>>,
    refused_changes: Vec<JsonChange<'a>>,
    refusals: &'a [Refusal],
    notices: &'a [Notice],
}

fn json_details(action: &Action) -> Value {
    match action {
        Action::AdoptGuest { guest_id }
        | Action::RestoreGuest { guest_id }
        | Action::EnableGuest { guest_id }
        | Action::DisableGuest { guest_id }
        | Action::DeleteGuest { guest_id }
        | Action::ReleaseGuest { guest_id } => json!({ "guestId": guest_id }),
        Action::AdoptPortal { portal_id } | Action::Unregister { portal_id } => {
            json!({ "portalId": portal_id })
        }
        Action::Invite {
            display_name,
            send_email,
            message,
        } => json!({ "displayName": display_name, "sendEmail": send_email, "message": message }),
        Action::ResendInvitation {
            guest_id,
            display_name,
            message,
            pending_since,
        } => json!({
            "guestId": guest_id,
            "displayName": display_name,
            "message": message,
            "pendingSince": pending_since.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        }),
        Action::Register { name, role } => json!({ "name": name, "role": role }),
        Action::UpdatePortal {
            portal_id,
            from_name,
            to_name,
            from_role,
            to_role,
        } => json!({
            "portalId": portal_id,
            "from": { "name": from_name, "role": from_role },
            "to": { "name": to_name, "role": to_role },
        }),
    }
}

/// The version of the JSON schema (`docs/plan-json.md`).
pub const PLAN_JSON_VERSION: u32 = 2;

fn json_change(c: &Change) -> JsonChange<'_> {
    JsonChange {
        user: &c.email,
        key: &c.key,
        system: c.action.system(),
        action: c.action.name(),
        details: json_details(&c.action),
        reason: c.reason.as_deref(),
    }
}

/// The JSON document of `plan` (`docs/plan-json.md`), for embedding in a larger document.
pub(crate) fn json_document<'a>(
    plan: &'a Plan,
    revision: Option<&'a PlanRevision>,
) -> JsonPlan<'a> {
    JsonPlan {
        version: PLAN_JSON_VERSION,
        generated_at: plan.generated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        revision: revision.map(|r| r.id.as_str()),
        branch: revision.and_then(|r| r.branch.as_deref()),
        subject: revision.and_then(|r| r.subject.as_deref()),
        summary: Summary::of(plan),
        changes: plan.changes.iter().map(json_change).collect(),
        refused_changes: plan.refused_changes.iter().map(json_change).collect(),
        refusals: &plan.refusals,
        notices: &plan.notices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_span_survives_pipes_and_backticks() {
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
    }

    #[test]
    fn md_text_neutralises_html_and_mentions() {
        let s = md_text("<script>@everyone *x*");
        assert!(!s.contains('<'));
        assert!(!s.contains('@'));
        assert!(s.contains("\\*x\\*"));
    }

    #[test]
    fn clean_escapes_terminal_controls() {
        assert_eq!(clean("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(clean("line\nbreak"), "line\\nbreak");
        assert!(matches!(clean("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
