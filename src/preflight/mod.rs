//! Preflight: what an operator runs before trusting guestops with a tenant and a portal.
//!
//! - [`doctor`]: read-only checks of the host setup (config, secrets, the Graph token and its
//!   permissions, the tenant's invitation setting, the portal key, the role mapping, the git
//!   source, the state directory, the clock). The checks are data ([`Report`]); the CLI only
//!   renders them ([`render_text`], [`render_json`]).
//! - [`probe`]: the one-time write probe of the portal's undocumented behaviour
//!   (`docs/specs/power-embedded.md` §6) with a throw-away user that is always deleted again;
//!   the facts go to `state.dir/portal-facts.json`.
//!
//! Must not: change the tenant, change the portal (except the probe's own throw-away user), or
//! print a secret (a check names where a secret comes from, never its value).

use std::io::{self, Write};

use serde::Serialize;

use crate::config::Config;
use crate::remote::portal::{Portal as _, PortalClient};

pub mod doctor;
pub mod probe;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// `✓`: as it should be.
    Ok,
    /// `✗`: guestops will not work (or not safely) until it is fixed.
    Failed,
    /// `!`: works, but should be looked at; or could not be determined (unknown, skipped).
    Warning,
}

impl CheckStatus {
    /// The symbol of the text rendering: `✓`, `✗` or `!`.
    pub fn symbol(self) -> &'static str {
        match self {
            CheckStatus::Ok => "✓",
            CheckStatus::Failed => "✗",
            CheckStatus::Warning => "!",
        }
    }
}

/// One check: what was looked at, how it ended, and (for `✗`/`!`) what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name, e.g. `graph.permissions` (`docs/preflight.md` lists them).
    pub name: String,
    /// How it ended.
    pub status: CheckStatus,
    /// What was found.
    pub message: String,
    /// What to do; `None` for a check that passed.
    pub hint: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn ok(name: &str, message: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Ok,
            message: message.into(),
            hint: None,
        }
    }

    /// A failed check and what to do.
    pub fn failed(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Failed,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A warning (or an unknown) and what to do.
    pub fn warning(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Warning,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A check that could not run because an earlier one failed (`!`, message `skipped: …`).
    pub fn skipped(name: &str, because: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Warning,
            message: format!("skipped: {}", because.into()),
            hint: Some("fix the failed check above, then run guestops doctor again".to_owned()),
        }
    }

    /// Whether the check passed.
    pub fn is_ok(&self) -> bool {
        self.status == CheckStatus::Ok
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed (warnings allowed): exit code 0.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Failed)
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    fn count(&self, status: CheckStatus) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

/// One line per check (`✓ name: message`), the hint of a `✗`/`!` indented below it, and a
/// summary line.
pub fn render_text(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let mut last_hint: Option<&str> = None;
    for check in &report.checks {
        // A message of several lines (the loader lists every problem) stays under its check.
        writeln!(
            out,
            "{} {}: {}",
            check.status.symbol(),
            check.name,
            check.message.replace('\n', "\n    ")
        )?;
        // A hint repeated by the next check (a run of skipped checks) is said once.
        if let Some(hint) = check.hint.as_deref()
            && last_hint != Some(hint)
        {
            writeln!(out, "    → {hint}")?;
        }
        last_hint = check.hint.as_deref();
    }
    writeln!(
        out,
        "\n{} ok, {}, {} failed",
        report.count(CheckStatus::Ok),
        crate::markup::count(report.count(CheckStatus::Warning), "warning"),
        report.count(CheckStatus::Failed)
    )
}

/// One JSON document `{"checks": [{"name", "status", "message", "hint"}], "ok": bool}`
/// (`docs/preflight.md`).
pub fn render_json(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    #[derive(Serialize)]
    struct Document<'a> {
        checks: &'a [Check],
        ok: bool,
    }
    let document = Document {
        checks: &report.checks,
        ok: report.ok(),
    };
    serde_json::to_writer_pretty(&mut *out, &document).map_err(io::Error::other)?;
    writeln!(out)
}

/// The name of the role-code check, shared by the doctor and the probe.
pub const ROLE_CODES_CHECK: &str = "portal.roleCodes";

/// The role-code check (`docs/specs/power-embedded.md` §1.6): the portal must report
/// `portal.knownAdmin` with `portal.roleCodes.administrator`. `✗` when it reports another code
/// or does not list them; `!` when `knownAdmin` is not set.
pub async fn role_code_check(config: &Config, portal: &PortalClient) -> Check {
    let name = ROLE_CODES_CHECK;
    let expected = config.portal.role_codes.administrator;
    let Some(known) = config.portal.known_admin.as_deref() else {
        return Check::warning(
            name,
            "portal.knownAdmin is not set, so the role mapping cannot be checked",
            "set portal.knownAdmin (or GUESTOPS_PORTAL_KNOWN_ADMIN) to the e-mail of an administrator the portal lists, so that a wrong portal.roleCodes mapping is caught before anyone is promoted",
        );
    };
    match portal.find_user(known).await {
        Err(err) => Check::failed(
            name,
            format!(
                "cannot look up portal.knownAdmin {known}: {}",
                crate::error::chain(&err)
            ),
            "fix the portal access (see portal.key above), then run guestops doctor again",
        ),
        Ok(None) => Check::failed(
            name,
            format!("the portal does not list portal.knownAdmin {known}"),
            "set portal.knownAdmin to an administrator the portal lists (Administration Portal → Users)",
        ),
        Ok(Some(user)) => match user.role_code {
            Some(code) if code == expected => Check::ok(
                name,
                format!(
                    "the portal reports {known} as role {code} = roleCodes.administrator: the mapping holds"
                ),
            ),
            code => Check::failed(
                name,
                format!(
                    "the portal reports {known} as role {}; roleCodes.administrator is {expected}: the mapping is wrong",
                    code.map_or_else(|| "(none)".to_owned(), |c| c.to_string())
                ),
                "check that portal.knownAdmin is an administrator in the Administration Portal; if so, set portal.roleCodes to the codes the portal uses (docs/specs/power-embedded.md §1.6) before any apply",
            ),
        },
    }
}

/// The application permissions (`roles` claim) of an access token, read from its JWT payload.
///
/// Diagnostic only: the payload is decoded **without verifying the signature**, and the result
/// is never used for a decision anywhere else (`docs/specs/microsoft-graph.md` §7: Microsoft
/// treats the token format as private; a preflight may read `roles`, with "unknown" when it
/// cannot). `None` when the token is not a readable JWT; `Some(vec![])` when it has no `roles`.
pub fn token_roles(token: &str) -> Option<Vec<String>> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let claims = claims.as_object()?;
    match claims.get("roles") {
        None => Some(Vec::new()),
        Some(serde_json::Value::Array(roles)) => roles
            .iter()
            .map(|r| r.as_str().map(str::to_owned))
            .collect(),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(payload))
    }

    #[test]
    fn roles_are_read_from_the_payload() {
        assert_eq!(
            token_roles(&jwt(r#"{"roles":["User.Invite.All","User.Read.All"]}"#)),
            Some(vec![
                "User.Invite.All".to_owned(),
                "User.Read.All".to_owned()
            ])
        );
        assert_eq!(token_roles(&jwt(r#"{"aud":"x"}"#)), Some(vec![]));
        assert_eq!(token_roles("sim-opaque-token"), None);
        assert_eq!(token_roles("a.!!!.c"), None);
        assert_eq!(token_roles(&jwt(r#"{"roles":"x"}"#)), None);
    }

    #[test]
    fn a_report_fails_only_on_a_failed_check() {
        let mut report = Report::default();
        report.push(Check::ok("a", "fine"));
        report.push(Check::warning("b", "hmm", "look"));
        assert!(report.ok());
        report.push(Check::failed("c", "broken", "fix"));
        assert!(!report.ok());
        let mut text = Vec::new();
        render_text(&report, &mut text).expect("render");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("✓ a: fine\n"), "{text}");
        assert!(text.contains("✗ c: broken\n    → fix\n"), "{text}");
        assert!(text.contains("1 ok, 1 warning, 1 failed"), "{text}");
    }
}
