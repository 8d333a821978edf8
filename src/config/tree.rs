//! Stage one of loading: YAML text → a tree with positions → a flat map of known keys.
//!
//! The config file is parsed into [`Node`]s (every key and value carries its line and
//! column), walked against [`SCHEMA`] so that every unknown key and every wrong shape is
//! reported with its position, and flattened into `dotted.key → Leaf`. Environment overrides
//! are applied on the flat map, so a value is a value wherever it came from.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::Problem;

/// The shape of a configuration key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A scalar (string, number).
    Leaf,
    /// A boolean: only the plain words `true` and `false` (no YAML 1.1 `yes`, `on`, `y`, nor
    /// `True`), as from the environment.
    Bool,
    /// A list of scalars (`[a, b]`; from the environment: comma-separated).
    List,
    /// A mapping of further keys.
    Section(&'static [(&'static str, Kind)]),
    /// A list of mappings, each with these keys (`notify`). Set in the file only: no
    /// environment variable overrides it. Item `i`'s keys are flattened as `key[i].name`,
    /// and `key[i]` itself marks the item (its position, for problems about it as a whole).
    Records(&'static [(&'static str, Kind)]),
}

/// Every key of the host configuration (design §5), by section.
pub(crate) const SCHEMA: &[(&str, Kind)] = &[
    (
        "source",
        Kind::Section(&[
            ("repo", Kind::Leaf),
            ("branch", Kind::Leaf),
            ("path", Kind::Leaf),
            ("pollInterval", Kind::Leaf),
            ("resyncInterval", Kind::Leaf),
            ("credentialFile", Kind::Leaf),
            (
                "verify",
                Kind::Section(&[
                    ("mode", Kind::Leaf),
                    ("allowedSignersFile", Kind::Leaf),
                    ("keyringFile", Kind::Leaf),
                ]),
            ),
        ]),
    ),
    (
        "tenant",
        Kind::Section(&[
            ("tenantId", Kind::Leaf),
            ("clientId", Kind::Leaf),
            (
                "credential",
                Kind::Section(&[
                    ("kind", Kind::Leaf),
                    ("secretFile", Kind::Leaf),
                    ("certificateFile", Kind::Leaf),
                    ("passwordFile", Kind::Leaf),
                    ("sendCertificateChain", Kind::Bool),
                    ("assertionAlgorithm", Kind::Leaf),
                    ("tokenFile", Kind::Leaf),
                    ("audience", Kind::Leaf),
                    ("clientId", Kind::Leaf),
                ]),
            ),
            ("cloud", Kind::Leaf),
            ("authorityHost", Kind::Leaf),
            ("graphEndpoint", Kind::Leaf),
            ("inviteRedirectUrl", Kind::Leaf),
            ("concurrency", Kind::Leaf),
            ("deltaQuery", Kind::Leaf),
            ("fullResyncInterval", Kind::Leaf),
            ("replicationGrace", Kind::Leaf),
        ]),
    ),
    (
        "portal",
        Kind::Section(&[
            ("baseUrl", Kind::Leaf),
            ("apiKeyFile", Kind::Leaf),
            ("concurrency", Kind::Leaf),
            ("maxWritesPerSecond", Kind::Leaf),
            ("knownAdmin", Kind::Leaf),
            (
                "writeOnlyFlags",
                Kind::Section(&[
                    ("bypassFirewall", Kind::Bool),
                    ("canExportReportOtherPages", Kind::Bool),
                ]),
            ),
            (
                "roleCodes",
                Kind::Section(&[
                    ("administrator", Kind::Leaf),
                    ("contributor", Kind::Leaf),
                    ("viewer", Kind::Leaf),
                    ("workspace-contributor", Kind::Leaf),
                ]),
            ),
        ]),
    ),
    (
        "policy",
        Kind::Section(&[
            ("allowedDomains", Kind::List),
            ("prune", Kind::Bool),
            ("guestOnRemoval", Kind::Leaf),
            ("maxDeletions", Kind::Leaf),
            ("resendAfter", Kind::Leaf),
            ("pendingAlertAfter", Kind::Leaf),
            ("expiryNoticeBefore", Kind::Leaf),
        ]),
    ),
    ("state", Kind::Section(&[("dir", Kind::Leaf)])),
    (
        "server",
        Kind::Section(&[("listen", Kind::Leaf), ("webhookSecretFile", Kind::Leaf)]),
    ),
    (
        "notify",
        Kind::Records(&[
            ("kind", Kind::Leaf),
            ("urlFile", Kind::Leaf),
            ("secretFile", Kind::Leaf),
            ("events", Kind::List),
        ]),
    ),
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    /// The config file, 1-based line and column (0 when unknown).
    File { line: u64, column: u64 },
    /// An environment variable.
    Env(String),
}

impl At {
    fn from_location(location: &serde_saphyr::Location) -> At {
        At::File {
            line: location.line(),
            column: location.column(),
        }
    }

    /// A problem about `key` at this place.
    pub(crate) fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        let (line, column, env_var) = match self {
            At::File { line, column } => (
                (*line > 0).then_some(*line),
                (*column > 0).then_some(*column),
                None,
            ),
            At::Env(var) => (None, None, Some(var.clone())),
        };
        Problem {
            key: key.to_owned(),
            line,
            column,
            env_var,
            message: message.into(),
        }
    }
}

/// A value before it is interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Raw {
    /// A scalar, as text (`null`/`~`/empty variable: see [`Leaf`] absence).
    Text(String),
    /// A list of scalars, each with its place.
    List(Vec<(String, At)>),
}

/// A known key's value and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    /// The value.
    pub raw: Raw,
    /// Its place.
    pub at: At,
}

/// A parsed YAML node (scalars kept as their text).
#[derive(Debug)]
pub(crate) enum Node {
    /// `null`, `~` or nothing.
    Null,
    /// A string or number.
    Scalar(String),
    /// A boolean, in any spelling YAML accepts (`true`, `True`, `yes`, `on`, …); the spelling
    /// is in the source text at the node's position.
    Bool(bool),
    /// A sequence.
    Seq(Vec<Spanned<Node>>),
    /// A mapping, in file order.
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// Parses `text` and flattens it against [`SCHEMA`]. Unknown keys and wrong shapes become
/// problems and the keys that could be read are returned; a YAML syntax error is the only
/// problem reported and gives `None` (nothing after it can be trusted).
pub(crate) fn flatten(text: &str, problems: &mut Vec<Problem>) -> Option<BTreeMap<String, Leaf>> {
    let mut out = BTreeMap::new();
    let root: Spanned<Node> = match serde_saphyr::from_str(text) {
        Ok(root) => root,
        Err(err) => {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = err.without_snippet().to_string();
            // The position is part of the problem already.
            let message = match message.rfind(" at line ") {
                Some(i) if line > 0 => message[..i].to_owned(),
                _ => message,
            };
            let message = match message.strip_prefix("duplicate mapping key: ") {
                Some(rest) => {
                    let key = rest.split(',').next().unwrap_or(rest).trim();
                    format!("the key `{key}` appears twice in the same mapping; keep only one")
                }
                None => format!("is not valid YAML: {message}"),
            };
            problems.push(At::File { line, column }.problem("(file)", message));
            return None;
        }
    };
    match &root.value {
        Node::Null => {}
        Node::Map(entries) => walk_map(text, entries, SCHEMA, "", &mut out, problems),
        _ => problems.push(At::from_location(&root.referenced).problem(
            "(file)",
            "must be a mapping with the sections source, tenant, portal, policy, state, server, notify",
        )),
    }
    Some(out)
}

/// The text of a scalar as written in `text` at `location`, when the parser knows its span.
fn literal<'t>(text: &'t str, location: &serde_saphyr::Location) -> Option<&'t str> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    text.get(start..start.checked_add(len)?)
}

fn walk_map(
    text: &str,
    entries: &[(Spanned<String>, Spanned<Node>)],
    schema: &'static [(&'static str, Kind)],
    prefix: &str,
    out: &mut BTreeMap<String, Leaf>,
    problems: &mut Vec<Problem>,
) {
    for (key, value) in entries {
        let path = join(prefix, &key.value);
        let Some((_, kind)) = schema.iter().find(|(name, _)| *name == key.value) else {
            let known: Vec<&str> = schema.iter().map(|(name, _)| *name).collect();
            let hint = suggestion(&key.value, &known)
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            let place = if prefix.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `{prefix}`")
            };
            problems.push(At::from_location(&key.referenced).problem(
                &path,
                format!(
                    "unknown key {place}; {hint}known keys: {}",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let at = At::from_location(&value.referenced);
        match (kind, &value.value) {
            (_, Node::Null) => {}
            (Kind::Leaf | Kind::Bool, Node::Scalar(scalar)) => {
                out.insert(
                    path,
                    Leaf {
                        raw: Raw::Text(scalar.clone()),
                        at,
                    },
                );
            }
            (Kind::Leaf, Node::Bool(b)) => {
                out.insert(
                    path,
                    Leaf {
                        raw: Raw::Text(b.to_string()),
                        at,
                    },
                );
            }
            // As written, so that `yes`, `on` or `True` is refused by the boolean parser
            // rather than read as `true`.
            (Kind::Bool, Node::Bool(b)) => {
                let written = literal(text, &value.referenced)
                    .map_or_else(|| b.to_string(), |l| l.trim().to_owned());
                out.insert(
                    path,
                    Leaf {
                        raw: Raw::Text(written),
                        at,
                    },
                );
            }
            (Kind::List, Node::Seq(items)) => {
                let mut list = Vec::new();
                for item in items {
                    let item_at = At::from_location(&item.referenced);
                    match &item.value {
                        Node::Scalar(scalar) => list.push((scalar.clone(), item_at)),
                        Node::Bool(b) => list.push((b.to_string(), item_at)),
                        _ => {
                            problems.push(item_at.problem(&path, "list items must be plain values"))
                        }
                    }
                }
                out.insert(
                    path,
                    Leaf {
                        raw: Raw::List(list),
                        at,
                    },
                );
            }
            (Kind::Section(inner), Node::Map(entries)) => {
                walk_map(text, entries, inner, &path, out, problems);
            }
            (Kind::Records(inner), Node::Seq(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let item_at = At::from_location(&item.referenced);
                    match &item.value {
                        Node::Map(entries) => {
                            out.insert(
                                item_path.clone(),
                                Leaf {
                                    raw: Raw::Text(String::new()),
                                    at: item_at,
                                },
                            );
                            walk_map(text, entries, inner, &item_path, out, problems);
                        }
                        _ => {
                            let known: Vec<&str> = inner.iter().map(|(name, _)| *name).collect();
                            problems.push(item_at.problem(
                                &item_path,
                                format!(
                                    "each item must be a mapping with the keys {}, e.g. {{ kind: teams, urlFile: /run/credentials/guestops.service/teams-url }}",
                                    known.join(", ")
                                ),
                            ));
                        }
                    }
                }
            }
            (Kind::Leaf | Kind::Bool, _) => {
                problems.push(at.problem(&path, "expected a single value"))
            }
            (Kind::List, _) => problems.push(at.problem(
                &path,
                "expected a list, e.g. [partner.example, vendor.example]",
            )),
            (Kind::Section(inner), _) => {
                let known: Vec<&str> = inner.iter().map(|(name, _)| *name).collect();
                problems.push(at.problem(
                    &path,
                    format!("expected a mapping with the keys {}", known.join(", ")),
                ));
            }
            (Kind::Records(inner), _) => {
                let known: Vec<&str> = inner.iter().map(|(name, _)| *name).collect();
                problems.push(at.problem(
                    &path,
                    format!(
                        "expected a list of mappings with the keys {}, e.g. [{{ kind: teams, urlFile: /run/credentials/guestops.service/teams-url }}]",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
}

/// Every leaf key of the schema as `(dotted.key, kind)`, in schema order: the keys an
/// environment variable overrides (not the items of a [`Kind::Records`] list, which is set
/// in the file only).
pub(crate) fn leaf_keys() -> Vec<(String, Kind)> {
    fn collect(schema: &[(&str, Kind)], prefix: &str, out: &mut Vec<(String, Kind)>) {
        for (name, kind) in schema {
            let path = join(prefix, name);
            match kind {
                Kind::Section(inner) => collect(inner, &path, out),
                Kind::Records(_) => {}
                _ => out.push((path, *kind)),
            }
        }
    }
    let mut out = Vec::new();
    collect(SCHEMA, "", &mut out);
    out
}

/// The environment variable that overrides `dotted.key`: `GUESTOPS_` + each segment in
/// SCREAMING_SNAKE_CASE (`tenant.clientId` → `GUESTOPS_TENANT_CLIENT_ID`).
pub(crate) fn env_var_name(key: &str) -> String {
    let mut name = String::from("GUESTOPS");
    for segment in key.split('.') {
        name.push('_');
        let mut previous_lower = false;
        for c in segment.chars() {
            if c == '-' || c == '_' {
                name.push('_');
                previous_lower = false;
            } else if c.is_ascii_uppercase() {
                if previous_lower {
                    name.push('_');
                }
                name.push(c);
                previous_lower = false;
            } else {
                name.push(c.to_ascii_uppercase());
                previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            }
        }
    }
    name
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The known key closest to `unknown` (case-insensitive, small edit distance), if any.
fn suggestion<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase().replace(['_', '-'], "");
    known
        .iter()
        .map(|k| {
            let candidate = k.to_ascii_lowercase().replace(['_', '-'], "");
            (edit_distance(&unknown, &candidate), *k)
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_names_follow_screaming_snake_case() {
        assert_eq!(env_var_name("tenant.clientId"), "GUESTOPS_TENANT_CLIENT_ID");
        assert_eq!(
            env_var_name("tenant.credential.secretFile"),
            "GUESTOPS_TENANT_CREDENTIAL_SECRET_FILE"
        );
        assert_eq!(
            env_var_name("portal.roleCodes.workspace-contributor"),
            "GUESTOPS_PORTAL_ROLE_CODES_WORKSPACE_CONTRIBUTOR"
        );
        assert_eq!(env_var_name("state.dir"), "GUESTOPS_STATE_DIR");
    }

    #[test]
    fn unknown_key_gets_a_suggestion_and_its_line() {
        let mut problems = Vec::new();
        let _ = flatten("tenant:\n  clientID: x\n", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "tenant.clientID");
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.contains("did you mean `clientId`"));
    }

    #[test]
    fn booleans_keep_their_spelling_and_other_keys_read_them_as_before() {
        for (written, expected) in [
            ("true", "true"),
            ("false", "false"),
            ("yes", "yes"),
            ("y", "y"),
            ("on", "on"),
            ("True", "True"),
            ("FALSE", "FALSE"),
            ("\"true\"", "true"),
            ("yes   # a comment", "yes"),
        ] {
            let mut problems = Vec::new();
            let out = flatten(&format!("policy:\n  prune: {written}\n"), &mut problems)
                .expect("valid YAML");
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(
                out["policy.prune"].raw,
                Raw::Text(expected.into()),
                "`prune: {written}`"
            );
            if !written.contains('#') {
                let flow = flatten(&format!("policy: {{ prune: {written} }}\n"), &mut problems)
                    .expect("valid YAML");
                assert_eq!(flow["policy.prune"].raw, Raw::Text(expected.into()));
            }
        }
        // A key that is not a boolean sees a YAML boolean as before.
        let mut problems = Vec::new();
        let out = flatten("source:\n  branch: yes\n", &mut problems).expect("valid YAML");
        assert_eq!(out["source.branch"].raw, Raw::Text("true".into()));
    }

    #[test]
    fn flow_mappings_and_lists_flatten() {
        let mut problems = Vec::new();
        let out = flatten(
            "tenant:\n  credential: { kind: clientSecret, secretFile: /s }\npolicy:\n  allowedDomains: [a.example, b.example]\n",
            &mut problems,
        )
        .expect("valid YAML");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            out["tenant.credential.secretFile"].raw,
            Raw::Text("/s".into())
        );
        match &out["policy.allowedDomains"].raw {
            Raw::List(items) => assert_eq!(items.len(), 2),
            other => panic!("expected a list, got {other:?}"),
        }
    }
}
