//! What a change of `users.yaml` grants and revokes: the users added, removed and changed
//! (role, name, expiry) between two desired states. Pure data and its renderings; offline,
//! no credentials (`guestops diff`).

use std::io::{self, Write};

use serde::Serialize;

use crate::spec::{DesiredState, DesiredUser};

/// One side of a diff: a revision and how to show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    /// What the user asked for (`main`, `HEAD~1`, a sha).
    pub rev: String,
    /// The resolved commit id, when known.
    pub commit: Option<String>,
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
}

impl From<&DesiredUser> for DiffUser {
    fn from(user: &DesiredUser) -> Self {
        Self {
            email: user.email.as_str().to_owned(),
            name: user.name.clone(),
            role: user.role.as_str().to_owned(),
            expires: user.expires.map(|d| d.to_string()),
            reason: user.reason.clone(),
        }
    }
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
    /// What changed, in a fixed order (role, name, expires, email).
    pub changes: Vec<FieldChange>,
    /// The `reason` on the `to` side.
    pub reason: Option<String>,
}

/// The difference between two desired states, sorted by normalized email.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// The older side.
    pub from: Side,
    /// The newer side.
    pub to: Side,
    /// Users only on the `to` side: access granted.
    pub added: Vec<DiffUser>,
    /// Users only on the `from` side: access revoked.
    pub removed: Vec<DiffUser>,
    /// Users on both sides whose role, name or expiry changed.
    pub changed: Vec<ChangedUser>,
}

impl Diff {
    /// Whether the two sides grant exactly the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares two desired states.
pub fn diff(from_side: Side, from: &DesiredState, to_side: Side, to: &DesiredState) -> Diff {
    let mut result = Diff {
        from: from_side,
        to: to_side,
        ..Diff::default()
    };
    for (key, new) in &to.users {
        match from.users.get(key) {
            None => result.added.push(new.into()),
            Some(old) => {
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
                        changes,
                        reason: new.reason.clone(),
                    });
                }
            }
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

fn show(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("(none)")
}

fn side_label(side: &Side) -> String {
    match &side.commit {
        Some(commit) if commit.len() >= 12 && !commit.starts_with(&side.rev) => {
            format!("{} ({})", side.rev, &commit[..12])
        }
        _ => side.rev.clone(),
    }
}

/// Writes `diff` in `format`.
pub fn render(diff: &Diff, format: DiffFormat, out: &mut dyn Write) -> io::Result<()> {
    match format {
        DiffFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, diff)?;
            writeln!(out)
        }
        DiffFormat::Text => render_text(diff, out),
        DiffFormat::Markdown => render_markdown(diff, out),
    }
}

fn summary(diff: &Diff) -> String {
    format!(
        "{} added, {} removed, {} changed",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    )
}

fn render_text(diff: &Diff, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "users.yaml {} → {}: {}",
        side_label(&diff.from),
        side_label(&diff.to),
        if diff.is_empty() {
            "no change in access".to_owned()
        } else {
            summary(diff)
        }
    )?;
    for user in &diff.added {
        write!(out, "+ {}  {}  \"{}\"", user.email, user.role, user.name)?;
        if let Some(expires) = &user.expires {
            write!(out, "  expires {expires}")?;
        }
        if let Some(reason) = &user.reason {
            write!(out, "  ({reason})")?;
        }
        writeln!(out)?;
    }
    for user in &diff.changed {
        let parts: Vec<String> = user
            .changes
            .iter()
            .map(|c| format!("{} {} → {}", c.field, show(&c.from), show(&c.to)))
            .collect();
        writeln!(out, "~ {}  {}", user.email, parts.join(", "))?;
    }
    for user in &diff.removed {
        writeln!(out, "- {}  {}  \"{}\"", user.email, user.role, user.name)?;
    }
    Ok(())
}

/// Escapes text for a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn render_markdown(diff: &Diff, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "### guestops: access changes in `users.yaml`")?;
    writeln!(out)?;
    writeln!(
        out,
        "`{}` → `{}`: **{}**",
        side_label(&diff.from),
        side_label(&diff.to),
        if diff.is_empty() {
            "no change in access".to_owned()
        } else {
            summary(diff)
        }
    )?;
    if diff.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "| | user | role | name | details |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for user in &diff.added {
        let mut details = Vec::new();
        if let Some(expires) = &user.expires {
            details.push(format!("expires {expires}"));
        }
        if let Some(reason) = &user.reason {
            details.push(cell(reason));
        }
        writeln!(
            out,
            "| ➕ granted | `{}` | {} | {} | {} |",
            cell(&user.email),
            user.role,
            cell(&user.name),
            details.join("; ")
        )?;
    }
    for user in &diff.changed {
        let parts: Vec<String> = user
            .changes
            .iter()
            .map(|c| {
                format!(
                    "{}: {} → {}",
                    c.field,
                    cell(show(&c.from)),
                    cell(show(&c.to))
                )
            })
            .collect();
        let role = user
            .changes
            .iter()
            .find(|c| c.field == "role")
            .map_or(String::new(), |c| {
                format!("{} → **{}**", show(&c.from), show(&c.to))
            });
        writeln!(
            out,
            "| ✏️ changed | `{}` | {} | | {} |",
            cell(&user.email),
            role,
            parts.join("; ")
        )?;
    }
    for user in &diff.removed {
        writeln!(
            out,
            "| ➖ revoked | `{}` | {} | {} | |",
            cell(&user.email),
            user.role,
            cell(&user.name)
        )?;
    }
    Ok(())
}
