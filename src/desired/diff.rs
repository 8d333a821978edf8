//! What a change of `users.yaml` grants and revokes: the users added, removed and changed
//! (role, name, expiry, letter case of the address) between two desired states. Pure data and
//! its renderings; offline, no credentials, no clock (`guestops diff`).
//!
//! Every string that comes from the file (addresses, names, reasons) is escaped for the
//! target: control and bidi characters never reach a terminal raw, and nothing can break the
//! Markdown table, inject HTML or `@mention` anyone in a pull-request comment. The Markdown
//! stays under [`MARKDOWN_BUDGET`] bytes, truncating rows with a visible notice.

use std::fmt::Write as _;
use std::io::{self, Write};

use chrono::NaiveDate;
use serde::Serialize;

use crate::desired::spec::{DesiredState, DesiredUser};
use crate::markup::{clean, code, md_text, quoted};
use crate::reconcile::plan::MARKDOWN_BUDGET;

/// One side of a diff: a revision and how to show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    /// What the user asked for (`main`, `HEAD~1`, a sha).
    pub rev: String,
    /// The resolved commit id, when known.
    pub commit: Option<String>,
    /// The file does not exist at this revision (the older side of a change that adds it):
    /// compared as an empty file.
    #[serde(skip_serializing_if = "is_false")]
    pub absent: bool,
}

/// A desired user in a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffUser {
    /// The address as written.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Effective role.
    pub role: String,
    /// Expiry date, `YYYY-MM-DD`.
    pub expires: Option<String>,
    /// Free-text reason.
    pub reason: Option<String>,
    /// Whether `expires` is already past (set by [`Diff::mark_expired`]): such a user is
    /// listed but holds no access.
    #[serde(skip_serializing_if = "is_false")]
    pub expired: bool,
}

impl From<&DesiredUser> for DiffUser {
    fn from(user: &DesiredUser) -> Self {
        Self {
            email: user.email.as_str().to_owned(),
            name: user.name.clone(),
            role: user.role.as_str().to_owned(),
            expires: user.expires.map(|d| d.to_string()),
            reason: user.reason.clone(),
            expired: false,
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// One changed field of a user present on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// `role`, `name`, `expires` or `email` (a change of letter case only).
    pub field: &'static str,
    /// Value before (`null` when unset).
    pub from: Option<String>,
    /// Value after.
    pub to: Option<String>,
}

/// A user present on both sides with at least one changed field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedUser {
    /// The address as written on the `to` side.
    pub email: String,
    /// The role on the `to` side.
    pub role: String,
    /// The name on the `to` side.
    pub name: String,
    /// What changed, in a fixed order (role, name, expires, email).
    pub changes: Vec<FieldChange>,
    /// The `reason` on the `to` side.
    pub reason: Option<String>,
    /// Whether the `to` side's `expires` is already past (set by [`Diff::mark_expired`]): the
    /// change revokes access.
    #[serde(skip_serializing_if = "is_false")]
    pub expired: bool,
}

/// The difference between two desired states, each list sorted by normalized email.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Path of the file inside the repository (empty: `users.yaml`).
    pub path: String,
    /// The older side.
    pub from: Side,
    /// The newer side.
    pub to: Side,
    /// Users only on the `to` side: access granted.
    pub added: Vec<DiffUser>,
    /// Users only on the `from` side: access revoked.
    pub removed: Vec<DiffUser>,
    /// Users on both sides whose role, name, expiry or address spelling changed.
    pub changed: Vec<ChangedUser>,
    /// The host's `policy.prune` when known (`diff --config`): whether a removal or an expiry
    /// is acted on. Not part of the JSON document.
    #[serde(skip)]
    pub prune: Option<bool>,
}

impl Diff {
    /// Whether the two sides list exactly the same users with the same fields.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Flags the added and changed users whose `expires` is before `today` (access ends at
    /// the end of the `expires` day, UTC), so that the renderings can say that the entry
    /// grants nothing.
    pub fn mark_expired(&mut self, today: NaiveDate) {
        let past = |expires: &Option<String>| {
            expires
                .as_deref()
                .and_then(|e| NaiveDate::parse_from_str(e, "%Y-%m-%d").ok())
                .is_some_and(|e| e < today)
        };
        for user in &mut self.added {
            user.expired = past(&user.expires);
        }
        for user in &mut self.changed {
            user.expired = user
                .changes
                .iter()
                .any(|c| c.field == "expires" && past(&c.to));
        }
    }

    fn path(&self) -> &str {
        if self.path.is_empty() {
            "users.yaml"
        } else {
            &self.path
        }
    }
}

/// Compares two desired states. Users are matched by normalized email; the lists of the
/// result are sorted by it.
pub fn diff(from_side: Side, from: &DesiredState, to_side: Side, to: &DesiredState) -> Diff {
    let mut result = Diff {
        from: from_side,
        to: to_side,
        ..Diff::default()
    };
    for (key, new) in &to.users {
        let Some(old) = from.users.get(key) else {
            result.added.push(new.into());
            continue;
        };
        let mut changes = Vec::new();
        let mut field = |field, from: Option<String>, to: Option<String>| {
            if from != to {
                changes.push(FieldChange { field, from, to });
            }
        };
        field(
            "role",
            Some(old.role.as_str().into()),
            Some(new.role.as_str().into()),
        );
        field("name", Some(old.name.clone()), Some(new.name.clone()));
        field(
            "expires",
            old.expires.map(|d| d.to_string()),
            new.expires.map(|d| d.to_string()),
        );
        field(
            "email",
            Some(old.email.as_str().into()),
            Some(new.email.as_str().into()),
        );
        if !changes.is_empty() {
            result.changed.push(ChangedUser {
                email: new.email.as_str().to_owned(),
                role: new.role.as_str().to_owned(),
                name: new.name.clone(),
                changes,
                reason: new.reason.clone(),
                expired: false,
            });
        }
    }
    for (key, old) in &from.users {
        if !to.users.contains_key(key) {
            result.removed.push(old.into());
        }
    }
    result
}

/// How a diff is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// One line per user.
    Text,
    /// For a pull-request comment.
    Markdown,
    /// Machine-readable.
    Json,
}

/// Writes `diff` in `format`.
pub fn render(diff: &Diff, format: DiffFormat, out: &mut dyn Write) -> io::Result<()> {
    match format {
        DiffFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, diff)?;
            writeln!(out)
        }
        DiffFormat::Text => out.write_all(text(diff).as_bytes()),
        DiffFormat::Markdown => out.write_all(markdown(diff).as_bytes()),
    }
}

fn show(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("(none)")
}

/// `HEAD~1 (0123456789ab)`, or the revision alone when it already is the commit id;
/// `(no file)` after a revision that does not hold the file.
fn side_label(side: &Side) -> String {
    let mut label = match &side.commit {
        Some(commit) if !commit.starts_with(&side.rev) => {
            let short: String = commit.chars().take(12).collect();
            format!("{} ({short})", side.rev)
        }
        _ => side.rev.clone(),
    };
    if side.absent {
        label.push_str(" (no file)");
    }
    label
}

/// What becomes of a user removed from the file, as the host's pruning decides (design §7):
/// `(short word, explanation)`.
fn removal_words(prune: Option<bool>) -> (&'static str, &'static str) {
    match prune {
        Some(true) => (
            "revoked",
            "removed by guestops (policy.prune is on; only accounts it owns)",
        ),
        Some(false) => ("removed", "left in place: policy.prune is off"),
        None => (
            "removed",
            "revoked only if the host has policy.prune on, and only accounts guestops owns",
        ),
    }
}

/// What a past `expires` on a changed user means, as the host's pruning decides.
fn expiry_words(prune: Option<bool>) -> &'static str {
    match prune {
        Some(true) => "already past: access ends",
        Some(false) => {
            "already past: no longer granted, existing accounts left in place (policy.prune is off)"
        }
        None => {
            "already past: no longer granted; existing accounts are removed only with policy.prune on"
        }
    }
}

fn summary(diff: &Diff) -> String {
    if diff.is_empty() {
        return "no change in access".to_owned();
    }
    format!(
        "{} added, {} removed, {} changed",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    )
}

fn text(diff: &Diff) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} → {}: {}",
        clean(diff.path()),
        clean(&side_label(&diff.from)),
        clean(&side_label(&diff.to)),
        summary(diff)
    );
    for user in &diff.added {
        let _ = write!(
            out,
            "+ {}  {}  {}",
            clean(&user.email),
            user.role,
            quoted(&user.name)
        );
        if let Some(expires) = &user.expires {
            let _ = write!(out, "  expires {}", clean(expires));
            if user.expired {
                out.push_str(" (already past: grants nothing)");
            }
        }
        if let Some(reason) = &user.reason {
            let _ = write!(out, "  — {}", clean(reason));
        }
        out.push('\n');
    }
    for user in &diff.changed {
        let parts: Vec<String> = user
            .changes
            .iter()
            .map(|c| match c.field {
                "name" => format!(
                    "name {} → {}",
                    c.from.as_deref().map_or_else(|| "(none)".into(), quoted),
                    c.to.as_deref().map_or_else(|| "(none)".into(), quoted)
                ),
                "expires" if user.expired => format!(
                    "expires {} → {} ({})",
                    clean(show(&c.from)),
                    clean(show(&c.to)),
                    expiry_words(diff.prune)
                ),
                field => format!("{field} {} → {}", clean(show(&c.from)), clean(show(&c.to))),
            })
            .collect();
        let _ = write!(out, "~ {}  {}", clean(&user.email), parts.join(", "));
        if let Some(reason) = &user.reason {
            let _ = write!(out, "  — {}", clean(reason));
        }
        out.push('\n');
    }
    let (_, removal) = removal_words(diff.prune);
    for user in &diff.removed {
        let _ = writeln!(
            out,
            "- {}  {}  {}  ({removal})",
            clean(&user.email),
            user.role,
            quoted(&user.name)
        );
    }
    out
}

fn md_value(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "(none)".to_owned(), md_text)
}

fn granted_row(user: &DiffUser) -> String {
    let mut details = Vec::new();
    if let Some(expires) = &user.expires {
        if user.expired {
            details.push(format!(
                "expires {} ⚠️ already past: grants nothing",
                md_text(expires)
            ));
        } else {
            details.push(format!("expires {}", md_text(expires)));
        }
    }
    if let Some(reason) = &user.reason {
        details.push(md_text(reason));
    }
    format!(
        "| ➕ granted | {} | **{}** | {} | {} |\n",
        code(&user.email),
        user.role,
        md_text(&user.name),
        details.join("<br>")
    )
}

fn changed_row(user: &ChangedUser, prune: Option<bool>) -> String {
    let find = |field: &str| user.changes.iter().find(|c| c.field == field);
    let role = find("role").map_or_else(
        || user.role.clone(),
        |c| format!("{} → **{}**", md_value(&c.from), md_value(&c.to)),
    );
    let name = find("name").map_or_else(
        || md_text(&user.name),
        |c| format!("{} → {}", md_value(&c.from), md_value(&c.to)),
    );
    let mut details = Vec::new();
    if let Some(c) = find("expires") {
        let mut s = format!("expires {} → {}", md_value(&c.from), md_value(&c.to));
        if user.expired {
            let _ = write!(s, " ⚠️ {}", expiry_words(prune));
        }
        details.push(s);
    }
    if let Some(c) = find("email") {
        details.push(format!(
            "address spelled {} (was {})",
            c.to.as_deref().map_or_else(|| "(none)".to_owned(), code),
            c.from.as_deref().map_or_else(|| "(none)".to_owned(), code)
        ));
    }
    if let Some(reason) = &user.reason {
        details.push(md_text(reason));
    }
    format!(
        "| ✏️ changed | {} | {} | {} | {} |\n",
        code(&user.email),
        role,
        name,
        details.join("<br>")
    )
}

fn removed_row(user: &DiffUser, prune: Option<bool>) -> String {
    let (word, explanation) = removal_words(prune);
    format!(
        "| ➖ {word} | {} | {} | {} | {explanation} |\n",
        code(&user.email),
        user.role,
        md_text(&user.name)
    )
}

/// Room kept for the truncation notice of each group.
const NOTICE_ROOM: usize = 200;

/// Splits `budget` bytes between groups of row sizes: a group that fits in an equal share of
/// what is left gets all it needs, the rest share the remainder equally. Returns the number of
/// rows shown per group.
fn fair_shares(groups: &[Vec<usize>], budget: usize) -> Vec<usize> {
    let totals: Vec<usize> = groups.iter().map(|g| g.iter().sum()).collect();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&i| totals[i]);
    let mut shown = vec![0; groups.len()];
    let mut left = budget;
    for (done, &i) in order.iter().enumerate() {
        let share = left / (groups.len() - done);
        let mut used = 0;
        for size in &groups[i] {
            if used + size > share {
                break;
            }
            used += size;
            shown[i] += 1;
        }
        left -= used;
    }
    shown
}

fn markdown(diff: &Diff) -> String {
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "### guestops diff: access changes in {}\n",
        code(diff.path())
    );
    let _ = writeln!(
        out,
        "{} → {}: **{}**",
        code(&side_label(&diff.from)),
        code(&side_label(&diff.to)),
        summary(diff)
    );
    if diff.is_empty() {
        return out;
    }
    out.push_str("\n| | user | role | name | details |\n|---|---|---|---|---|\n");

    let granted: Vec<String> = diff.added.iter().map(granted_row).collect();
    let changed: Vec<String> = diff
        .changed
        .iter()
        .map(|u| changed_row(u, diff.prune))
        .collect();
    let removed: Vec<String> = diff
        .removed
        .iter()
        .map(|u| removed_row(u, diff.prune))
        .collect();
    let groups = [
        (granted, "granted"),
        (changed, "changed"),
        (removed, removal_words(diff.prune).0),
    ];
    let sizes: Vec<Vec<usize>> = groups
        .iter()
        .map(|(rows, _)| rows.iter().map(String::len).collect())
        .collect();
    let budget = MARKDOWN_BUDGET.saturating_sub(out.len() + groups.len() * NOTICE_ROOM);
    let shown = fair_shares(&sizes, budget);
    let mut hidden = Vec::new();
    for ((rows, what), shown) in groups.iter().zip(shown) {
        for row in &rows[..shown] {
            out.push_str(row);
        }
        if shown < rows.len() {
            hidden.push(format!("{} more {what}", rows.len() - shown));
        }
    }
    if !hidden.is_empty() {
        let _ = write!(
            out,
            "\n> [!NOTE]\n> Too long for a comment: {} not shown. Run `guestops diff --from {} --to {}` \
             for every row.\n",
            hidden.join(", "),
            md_text(&diff.from.rev),
            md_text(&diff.to.rev)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::{self, SpecPolicy};

    fn state(yaml: &str) -> DesiredState {
        let parsed = spec::parse(yaml.as_bytes(), &SpecPolicy::default());
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        parsed.desired.unwrap_or_default()
    }

    fn side(rev: &str) -> Side {
        Side {
            rev: rev.to_owned(),
            commit: None,
            absent: false,
        }
    }

    fn between(from: &str, to: &str) -> Diff {
        diff(side("a"), &state(from), side("b"), &state(to))
    }

    const BASE: &str = "apiVersion: guestops/v1
users:
  - email: ana@partner.example
    name: Ana Silva
  - email: bob@vendor.example
    name: Bob Stone
    role: contributor
    expires: 2027-03-31
";

    #[test]
    fn no_change_is_empty() {
        let d = between(BASE, BASE);
        assert!(d.is_empty());
        assert!(text(&d).contains("no change in access"));
        assert!(markdown(&d).contains("no change in access"));
    }

    #[test]
    fn reordering_users_is_no_change() {
        let reordered = "apiVersion: guestops/v1
users:
  - email: bob@vendor.example
    name: Bob Stone
    role: contributor
    expires: 2027-03-31
  - email: ana@partner.example
    name: Ana Silva
";
        assert!(between(BASE, reordered).is_empty());
    }

    #[test]
    fn added_user_is_granted() {
        let to = format!("{BASE}  - email: carla@partner.example\n    name: Carla\n");
        let d = between(BASE, &to);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].email, "carla@partner.example");
        assert_eq!(d.added[0].role, "administrator");
        assert!(d.removed.is_empty() && d.changed.is_empty());
        assert!(text(&d).contains("+ carla@partner.example  administrator  \"Carla\""));
    }

    #[test]
    fn removed_user_is_revoked() {
        let d = between(
            BASE,
            "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana Silva\n",
        );
        assert_eq!(d.removed.len(), 1);
        assert_eq!(d.removed[0].email, "bob@vendor.example");
        assert_eq!(d.removed[0].role, "contributor");
        assert!(markdown(&d).contains("| ➖ removed | `bob@vendor.example` | contributor |"));
        assert!(markdown(&d).contains("revoked only if the host has policy.prune on"));
    }

    #[test]
    fn a_removal_says_what_the_pruning_policy_does_with_it() {
        let to = "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana Silva\n";
        let mut d = between(BASE, to);
        d.prune = Some(false);
        let md = markdown(&d);
        assert!(!md.contains("revoked"), "{md}");
        assert!(md.contains("| ➖ removed | `bob@vendor.example` | contributor | Bob Stone | left in place: policy.prune is off |"), "{md}");
        assert!(text(&d).contains("left in place: policy.prune is off"));
        d.prune = Some(true);
        assert!(markdown(&d).contains("| ➖ revoked | `bob@vendor.example`"));
    }

    #[test]
    fn role_name_and_expiry_changes_are_listed_in_order() {
        let to = BASE
            .replace("role: contributor", "role: administrator")
            .replace("Bob Stone", "Robert Stone")
            .replace("2027-03-31", "2027-06-30");
        let d = between(BASE, &to);
        assert_eq!(d.changed.len(), 1);
        let fields: Vec<_> = d.changed[0].changes.iter().map(|c| c.field).collect();
        assert_eq!(fields, ["role", "name", "expires"]);
        assert_eq!(d.changed[0].changes[0].from.as_deref(), Some("contributor"));
        assert_eq!(d.changed[0].changes[0].to.as_deref(), Some("administrator"));
        let md = markdown(&d);
        assert!(md.contains("contributor → **administrator**"), "{md}");
        assert!(md.contains("Bob Stone → Robert Stone"), "{md}");
        assert!(md.contains("expires 2027-03-31 → 2027-06-30"), "{md}");
    }

    #[test]
    fn expiry_removed_shows_none() {
        let to = BASE.replace("    expires: 2027-03-31\n", "");
        let d = between(BASE, &to);
        assert_eq!(d.changed[0].changes[0].field, "expires");
        assert_eq!(d.changed[0].changes[0].to, None);
        assert!(text(&d).contains("expires 2027-03-31 → (none)"));
    }

    #[test]
    fn email_case_change_is_the_same_user() {
        let to = BASE.replace("ana@partner.example", "Ana@Partner.example");
        let d = between(BASE, &to);
        assert!(d.added.is_empty() && d.removed.is_empty());
        assert_eq!(d.changed.len(), 1);
        let change = &d.changed[0].changes[0];
        assert_eq!(change.field, "email");
        assert_eq!(change.from.as_deref(), Some("ana@partner.example"));
        assert_eq!(change.to.as_deref(), Some("Ana@Partner.example"));
    }

    #[test]
    fn reason_only_change_is_no_change_in_access() {
        let to = BASE.replace(
            "    expires: 2027-03-31\n",
            "    expires: 2027-03-31\n    reason: CHG-9\n",
        );
        assert!(between(BASE, &to).is_empty());
    }

    #[test]
    fn past_expiry_is_flagged() {
        let to = format!(
            "{BASE}  - email: old@partner.example\n    name: Old\n    expires: 2020-01-01\n"
        )
        .replace("2027-03-31", "2024-12-31");
        let mut d = between(BASE, &to);
        d.mark_expired(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default());
        assert!(d.added[0].expired);
        assert!(d.changed[0].expired);
        assert!(text(&d).contains("already past: grants nothing"));
        assert!(markdown(&d).contains("already past: no longer granted"));
        d.prune = Some(true);
        assert!(markdown(&d).contains("already past: access ends"));
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert!(json.contains("\"expired\":true"));
    }

    #[test]
    fn markdown_neutralises_html_mentions_and_pipes() {
        let to = format!(
            "{BASE}  - email: eve@partner.example\n    name: \"<img src=x> @everyone | *x*\"\n    reason: \"[link](http://x) `y`\"\n"
        );
        let md = markdown(&between(BASE, &to));
        let row = md
            .lines()
            .find(|l| l.contains("eve@partner.example"))
            .unwrap_or_default();
        assert!(!row.contains('<') && !row.contains("@everyone"), "{row}");
        assert!(
            row.contains("&lt;img src=x&gt; &#64;everyone \\| \\*x\\*"),
            "{row}"
        );
        assert!(row.contains("\\[link\\](http://x) \\`y\\`"), "{row}");
        // Five columns need six unescaped pipes: the pipe in the name did not add a cell.
        let unescaped = row
            .char_indices()
            .filter(|&(i, c)| c == '|' && !row[..i].ends_with('\\'))
            .count();
        assert_eq!(unescaped, 6, "{row}");
    }

    #[test]
    fn text_escapes_control_characters() {
        // Validation rejects these in names; the rendering does not rely on it.
        let d = Diff {
            added: vec![DiffUser {
                email: "eve@partner.example".into(),
                name: "Eve\u{1b}[31m\u{202e}".into(),
                role: "administrator".into(),
                expires: None,
                reason: Some("line\nbreak".into()),
                expired: false,
            }],
            ..Diff::default()
        };
        let out = text(&d);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202e}'),
            "{out}"
        );
        assert!(out.contains("Eve\\u{1b}[31m\\u{202e}"), "{out}");
        assert!(out.contains("line\\nbreak"), "{out}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    #[test]
    fn fair_shares_give_small_groups_everything() {
        let groups = vec![vec![10; 1000], vec![10; 3], vec![10; 2]];
        assert_eq!(fair_shares(&groups, 1000), vec![95, 3, 2]);
        assert_eq!(fair_shares(&groups, 100_000), vec![1000, 3, 2]);
    }
}
