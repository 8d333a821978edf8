//! The bodies of the three notifier kinds, rendered from one [`Event`]. Pure.
//!
//! - **teams** — what a Teams Workflows webhook ("Post to a channel when a webhook request
//!   is received") posts: a `message` whose one attachment is an Adaptive Card 1.4
//!   (`application/vnd.microsoft.card.adaptive`): a bold title, the text, a fact set of the
//!   users concerned, and a small subtle line naming the tenant, the revision and the time.
//!   The envelope is the one Microsoft documents for cards sent to a Teams webhook
//!   (MicrosoftDocs/msteams-docs, `connectors-using.md`, "Send adaptive cards using an
//!   incoming webhook": `type` must be `message`, `contentType` the adaptive card type,
//!   `content` the card; its example card is version 1.2). The card says 1.4 and uses only
//!   elements that exist since 1.0 (`TextBlock`, `FactSet`), so a host that renders 1.2
//!   shows it too.
//! - **slack** — an incoming webhook's message: `text` (the notification's fallback, plain)
//!   and `blocks` (a header, a `mrkdwn` section of the text, a section listing the users, a
//!   context line). `&`, `<` and `>` are escaped in `mrkdwn` and in `text` (Slack's control
//!   characters, api.slack.com's formatting reference: `<!channel>` would ping everyone), and
//!   each section stays under 3,000 characters, the header under 150 (Block Kit's limits).
//! - **webhook** — guestops' own JSON, schema `guestops.notification/v1` (documented in
//!   `docs/config.md`, `notify`): `schema`, `event`, `time`, `tenant`, `revision` (`id`,
//!   `short`, or `null`), `title`, `text`, `users` (`email`, `detail`, and by event
//!   `pendingSince`, `expires`, `changes`). Signed as [`signature`] says.

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use super::{Event, EventKind, NotifierKind};

/// The `schema` of the webhook JSON.
pub const WEBHOOK_SCHEMA: &str = "guestops.notification/v1";

/// The header of the webhook's signature.
pub const SIGNATURE_HEADER: &str = "X-Guestops-Signature-256";

/// Users listed at most in a Teams card or a Slack message (the webhook JSON lists all).
pub const MAX_LISTED_USERS: usize = 20;

/// The body `kind` posts for `event`.
pub fn body(kind: NotifierKind, event: &Event) -> Value {
    match kind {
        NotifierKind::Teams => teams(event),
        NotifierKind::Slack => slack(event),
        NotifierKind::Webhook => webhook(event),
    }
}

/// The small line under each message: tenant, revision, time.
fn context(event: &Event) -> String {
    let mut parts = vec![format!("tenant {}", event.tenant)];
    if let Some(revision) = &event.revision {
        parts.push(format!("revision {}", revision.short));
    }
    parts.push(event.time.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    format!("guestops · {}", parts.join(" · "))
}

/// `(email, detail)` of the listed users, and how many more there are.
fn listed(event: &Event) -> (Vec<(&str, &str)>, usize) {
    let shown = event
        .users
        .iter()
        .take(MAX_LISTED_USERS)
        .map(|u| (u.email.as_str(), u.detail.as_str()))
        .collect();
    (shown, event.users.len().saturating_sub(MAX_LISTED_USERS))
}

/// The Teams Workflows message (module docs).
pub fn teams(event: &Event) -> Value {
    let color = match event.kind {
        EventKind::Failed | EventKind::Refused | EventKind::Invalid => "Attention",
        EventKind::Recovered => "Good",
        EventKind::Pending | EventKind::Expiring | EventKind::Removed => "Warning",
    };
    let mut body = vec![
        json!({
            "type": "TextBlock",
            "text": event.title,
            "weight": "Bolder",
            "size": "Medium",
            "color": color,
            "wrap": true,
        }),
        json!({"type": "TextBlock", "text": event.text, "wrap": true}),
    ];
    let (shown, more) = listed(event);
    if !shown.is_empty() {
        let facts: Vec<Value> = shown
            .iter()
            .map(|(email, detail)| json!({"title": email, "value": detail}))
            .collect();
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    if more > 0 {
        body.push(json!({"type": "TextBlock", "text": format!("… and {more} more"), "wrap": true}));
    }
    body.push(json!({
        "type": "TextBlock",
        "text": context(event),
        "isSubtle": true,
        "size": "Small",
        "wrap": true,
    }));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
                "msteams": {"width": "Full"},
            },
        }],
    })
}

/// `text` with Slack's control characters escaped (`mrkdwn`).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters of `text`, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack's limit of a section's text, with room to spare.
const SLACK_SECTION: usize = 2900;

/// The Slack incoming-webhook message (module docs).
pub fn slack(event: &Event) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": cut(&event.title, 150), "emoji": false},
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&slack_escape(&event.text), SLACK_SECTION)},
        }),
    ];
    let (shown, more) = listed(event);
    if !shown.is_empty() {
        let mut lines: Vec<String> = shown
            .iter()
            .map(|(email, detail)| format!("• *{}*: {}", slack_escape(email), slack_escape(detail)))
            .collect();
        if more > 0 {
            lines.push(format!("… and {more} more"));
        }
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&lines.join("\n"), SLACK_SECTION)},
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": slack_escape(&context(event))}],
    }));
    json!({
        // Parsed as mrkdwn too.
        "text": cut(&slack_escape(&format!("{}: {}", event.title, event.text)), SLACK_SECTION),
        "blocks": blocks,
    })
}

/// The webhook JSON, schema [`WEBHOOK_SCHEMA`] (module docs).
pub fn webhook(event: &Event) -> Value {
    let users: Vec<Value> = event
        .users
        .iter()
        .map(|u| {
            let mut user = json!({"email": u.email, "detail": u.detail});
            if let Some(since) = u.pending_since {
                user["pendingSince"] =
                    json!(since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            if let Some(expires) = u.expires {
                user["expires"] = json!(expires.to_string());
            }
            if !u.changes.is_empty() {
                user["changes"] = json!(u.changes);
            }
            user
        })
        .collect();
    json!({
        "schema": WEBHOOK_SCHEMA,
        "event": event.kind.as_str(),
        "time": event.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "tenant": event.tenant,
        "revision": event.revision.as_ref().map(|r| json!({"id": r.id, "short": r.short})),
        "title": event.title,
        "text": event.text,
        "users": users,
    })
}

/// The value of [`SIGNATURE_HEADER`]: `sha256=` and the lower-case hex HMAC-SHA256 of the
/// exact body bytes, keyed with the `secretFile`'s content (as GitHub's
/// `X-Hub-Signature-256`).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
