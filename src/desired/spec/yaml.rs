//! The raw layer: YAML bytes → a generic tree of nodes with positions.
//!
//! This is the only file that knows the YAML crate (`serde-saphyr`); everything above it
//! works on [`Node`]. Limits (aliases, depth, size) are enforced here.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

/// A position in the file: 1-based line and column (characters) and a length in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// Length in characters (0 when unknown).
    pub len: u32,
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where the node is used in the file.
    pub pos: Pos,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A string (plain or quoted scalar).
    Str(String),
    /// Bytes (`!!binary`).
    Bytes,
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, entries in file order (duplicate keys are kept).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What a user would call this kind of value, with an article ("a string").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "an empty value",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Bytes => "binary data",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why the YAML could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// The YAML is malformed.
    Syntax {
        /// What the parser said (without position).
        message: String,
        /// Where (line 1, column 1 when unknown).
        pos: Pos,
    },
    /// A safety limit (aliases, depth, size) was exceeded.
    Limit {
        /// What the parser said (without position).
        message: String,
        /// Where (line 1, column 1 when unknown).
        pos: Pos,
    },
}

/// Deepest nesting of collections accepted (`users.yaml` needs 4).
const MAX_DEPTH: usize = 32;

/// Loads every document of `text`. An empty stream gives no document.
pub(crate) fn load(text: &str) -> Result<Vec<Node>, LoadError> {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.with_snippet = false;
    options.strict_booleans = true;
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::AsString;
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.alias_limits.max_alias_expansions_per_anchor = 10_000;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    budget.max_documents = 16;
    budget.max_nodes = 250_000;
    budget.max_events = 1_000_000;
    options.budget = Some(budget);
    match serde_saphyr::from_str_multiple_with_options::<Spanned<RawValue>, Vec<_>>(text, options) {
        Ok(docs) => Ok(docs.into_iter().map(into_node).collect()),
        Err(err) => Err(classify(&err)),
    }
}

fn classify(err: &serde_saphyr::Error) -> LoadError {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach;

    let pos = err.location().map(location_pos).unwrap_or(Pos {
        line: 1,
        column: 1,
        len: 1,
    });
    let mut inner = err.without_snippet();
    if let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let limit = |message: &str| LoadError::Limit {
        message: message.to_owned(),
        pos,
    };
    match inner {
        E::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => {
                limit(&format!("nesting is deeper than {MAX_DEPTH} levels"))
            }
            BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } => {
                limit("too many YAML anchors or aliases")
            }
            BudgetBreach::Documents { .. } => limit("too many YAML documents"),
            other => limit(&format!("the YAML is too large or complex ({other:?})")),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => {
            limit("YAML aliases expand to too much data (an alias bomb?)")
        }
        E::AliasReplayStackDepthExceeded { .. } => limit("YAML aliases are nested too deeply"),
        E::RecursiveReferencesRequireWeakTypes { .. } => {
            limit("a YAML alias refers to the node that contains it")
        }
        E::UnknownAnchor { .. } => LoadError::Syntax {
            message:
                "a YAML alias (`*name`) refers to an anchor (`&name`) that is not defined before it"
                    .to_owned(),
            pos,
        },
        other => LoadError::Syntax {
            message: strip_position(&other.to_string()),
            pos,
        },
    }
}

/// Removes the " at line L, column C" that the parser adds to its messages.
fn strip_position(message: &str) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    let text = match first.find(" at line ") {
        Some(i) => first[..i].trim_end_matches([',', ':', ' ']),
        None => first,
    };
    if text.is_empty() {
        "the YAML is malformed".to_owned()
    } else {
        text.to_owned()
    }
}

fn location_pos(loc: Location) -> Pos {
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Pos {
        line: clamp(loc.line()).max(1),
        column: clamp(loc.column()).max(1),
        len: clamp(loc.span().len()),
    }
}

fn into_node(spanned: Spanned<RawValue>) -> Node {
    let pos = location_pos(spanned.referenced);
    let value = match spanned.value {
        RawValue::Null => Value::Null,
        RawValue::Bool(b) => Value::Bool(b),
        RawValue::Int(i) => Value::Int(i),
        RawValue::Float(f) => Value::Float(f),
        RawValue::Str(s) => Value::Str(s),
        RawValue::Bytes => Value::Bytes,
        RawValue::Seq(items) => Value::Seq(items.into_iter().map(into_node).collect()),
        RawValue::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (into_node(k), into_node(v)))
                .collect(),
        ),
    };
    Node { value, pos }
}

/// The serde-facing tree (children keep their spans).
enum RawValue {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes,
    Seq(Vec<Spanned<RawValue>>),
    Map(Vec<(Spanned<RawValue>, Spanned<RawValue>)>),
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Int(i128::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::Int(i128::from(v)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawValue, E> {
        Ok(RawValue::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawValue, E> {
        Ok(RawValue::Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<RawValue, E> {
        Ok(RawValue::Str(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<RawValue, E> {
        Ok(RawValue::Bytes)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawValue>>()? {
            items.push(item);
        }
        Ok(RawValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<RawValue>>()? {
            let value = map.next_value::<Spanned<RawValue>>()?;
            entries.push((key, value));
        }
        Ok(RawValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_positions_and_keep_duplicate_keys() {
        let docs = load("a: 1\nb:\n  - \"x\"\na: 2\n").expect("valid YAML");
        let [root] = docs.as_slice() else {
            panic!("one document expected: {docs:?}")
        };
        let Value::Map(entries) = &root.value else {
            panic!("a mapping expected: {root:?}")
        };
        let keys: Vec<(String, u32, u32)> = entries
            .iter()
            .map(|(k, _)| (format!("{:?}", k.value), k.pos.line, k.pos.column))
            .collect();
        assert_eq!(
            keys,
            [
                ("Str(\"a\")".to_owned(), 1, 1),
                ("Str(\"b\")".to_owned(), 2, 1),
                ("Str(\"a\")".to_owned(), 4, 1)
            ]
        );
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("a list expected")
        };
        assert_eq!(
            items[0].pos,
            Pos {
                line: 3,
                column: 5,
                len: 3
            }
        );
    }

    #[test]
    fn yes_is_a_string_and_nan_is_text() {
        let docs = load("a: yes\nb: .nan\n").expect("valid YAML");
        let Value::Map(entries) = &docs[0].value else {
            panic!("a mapping expected")
        };
        assert_eq!(entries[0].1.value, Value::Str("yes".into()));
        assert_eq!(entries[1].1.value, Value::Str(".nan".into()));
    }

    #[test]
    fn positions_are_stripped_from_parser_messages() {
        assert_eq!(
            strip_position("unclosed bracket at line 1, column 4"),
            "unclosed bracket"
        );
        assert_eq!(strip_position(""), "the YAML is malformed");
    }
}
