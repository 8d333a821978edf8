//! The `$filter` subset of `GET /users` that works WITHOUT advanced query parameters
//! (`docs/specs/microsoft-graph.md` §2): `eq` on `id`, `userType`, `mail`, `userPrincipalName`,
//! `displayName`, `accountEnabled`, `externalUserState`, `creationType`; `id in (…)`;
//! `startsWith` on `mail`, `userPrincipalName`, `displayName`; `otherMails/any(…)` and
//! `proxyAddresses/any(…)` with `eq` or `startsWith`; `and`, `or`, parentheses and `''` escapes.
//!
//! Everything that needs `ConsistencyLevel: eventual` (`ne`, `not`, `endsWith`, `eq null`, …)
//! is [`FilterError::Unsupported`], answered `400 Request_UnsupportedQuery` like the real service.
//! String comparisons are case-insensitive.

/// Why a `$filter` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// Valid OData that Graph answers with `400 Request_UnsupportedQuery` without advanced queries.
    Unsupported(String),
    /// Not valid OData for `microsoft.graph.user` (`400 Request_BadRequest`).
    Invalid(String),
}

/// A scalar property that can be filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prop {
    /// `id`
    Id,
    /// `userType`
    UserType,
    /// `mail`
    Mail,
    /// `userPrincipalName`
    UserPrincipalName,
    /// `displayName`
    DisplayName,
    /// `accountEnabled`
    AccountEnabled,
    /// `externalUserState`
    ExternalUserState,
    /// `creationType`
    CreationType,
}

/// A string collection that can be filtered with `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionProp {
    /// `otherMails`
    OtherMails,
    /// `proxyAddresses`
    ProxyAddresses,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// `'text'`
    Str(String),
    /// `true` / `false`
    Bool(bool),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `a or b`
    Or(Box<Filter>, Box<Filter>),
    /// `a and b`
    And(Box<Filter>, Box<Filter>),
    /// `prop eq value`
    Eq(Prop, Literal),
    /// `prop in ('a','b')`
    In(Prop, Vec<String>),
    /// `startsWith(prop,'p')`
    StartsWith(Prop, String),
    /// `coll/any(x:x eq 'v')`
    AnyEq(CollectionProp, String),
    /// `coll/any(x:startsWith(x,'p'))`
    AnyStartsWith(CollectionProp, String),
}

/// What a filter is evaluated against.
pub trait Subject {
    /// A string property (`None` when null).
    fn string(&self, prop: Prop) -> Option<&str>;
    /// A boolean property.
    fn boolean(&self, prop: Prop) -> Option<bool>;
    /// A string collection.
    fn collection(&self, prop: CollectionProp) -> &[String];
}

// Case-insensitive comparisons; ASCII text (almost every address) is compared without
// allocating, which keeps a scan of a large directory cheap.
fn eq_ci(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        a.to_lowercase() == b.to_lowercase()
    }
}

fn starts_ci(s: &str, prefix: &str) -> bool {
    if s.is_ascii() && prefix.is_ascii() {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        s.to_lowercase().starts_with(&prefix.to_lowercase())
    }
}

impl Filter {
    /// The address-index keys ([`index_key`], [`guest_upn_key`]) a user must have for the
    /// filter to match it, when the filter is only case-insensitive equalities on address
    /// properties (`mail`, `userPrincipalName`, `otherMails/any`, `proxyAddresses/any`) and
    /// `startsWith(userPrincipalName,'…#EXT#')`, joined by `or`. `None` for any other filter.
    pub fn address_terms(&self) -> Option<Vec<String>> {
        match self {
            Filter::Or(a, b) => {
                let mut terms = a.address_terms()?;
                terms.extend(b.address_terms()?);
                Some(terms)
            }
            Filter::Eq(Prop::Mail | Prop::UserPrincipalName, Literal::Str(v))
            | Filter::AnyEq(CollectionProp::OtherMails | CollectionProp::ProxyAddresses, v) => {
                Some(vec![index_key(v)])
            }
            Filter::In(Prop::Mail | Prop::UserPrincipalName, values) => {
                Some(values.iter().map(|v| index_key(v)).collect())
            }
            Filter::StartsWith(Prop::UserPrincipalName, prefix) => {
                let key = index_key(prefix);
                // Only a prefix whose one `#ext#` ends it names the guest-UPN key exactly.
                (key.find(EXT).map(|at| at + EXT.len()) == Some(key.len()))
                    .then(|| vec![format!("{GUEST_UPN_TAG}{key}")])
            }
            _ => None,
        }
    }

    /// Whether `subject` matches.
    pub fn matches(&self, subject: &impl Subject) -> bool {
        match self {
            Filter::Or(a, b) => a.matches(subject) || b.matches(subject),
            Filter::And(a, b) => a.matches(subject) && b.matches(subject),
            Filter::Eq(prop, Literal::Bool(v)) => subject.boolean(*prop) == Some(*v),
            Filter::Eq(prop, Literal::Str(v)) => subject.string(*prop).is_some_and(|s| eq_ci(s, v)),
            Filter::In(prop, values) => subject
                .string(*prop)
                .is_some_and(|s| values.iter().any(|v| eq_ci(s, v))),
            Filter::StartsWith(prop, p) => subject.string(*prop).is_some_and(|s| starts_ci(s, p)),
            Filter::AnyEq(c, v) => subject.collection(*c).iter().any(|s| eq_ci(s, v)),
            Filter::AnyStartsWith(c, p) => subject.collection(*c).iter().any(|s| starts_ci(s, p)),
        }
    }
}

/// The marker of a guest UPN, lower-cased.
const EXT: &str = "#ext#";

/// Tags the guest-UPN keys of the address index, apart from addresses.
const GUEST_UPN_TAG: char = '\u{1}';

/// The address-index key of an address: lower-cased.
pub fn index_key(address: &str) -> String {
    address.to_lowercase()
}

/// The address-index key of a guest UPN (`local_domain#EXT#@tenant`): its part up to and
/// including the first `#EXT#`, lower-cased and tagged; `None` for another UPN.
pub fn guest_upn_key(upn: &str) -> Option<String> {
    let lower = index_key(upn);
    let end = lower.find(EXT)? + EXT.len();
    Some(format!("{GUEST_UPN_TAG}{}", &lower[..end]))
}

/// Properties of `microsoft.graph.user` the simulator knows (for "could not find a property").
const KNOWN: &[&str] = &[
    "id",
    "accountEnabled",
    "businessPhones",
    "companyName",
    "createdDateTime",
    "creationType",
    "deletedDateTime",
    "displayName",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "givenName",
    "identities",
    "jobTitle",
    "mail",
    "mailNickname",
    "mobilePhone",
    "officeLocation",
    "otherMails",
    "preferredLanguage",
    "proxyAddresses",
    "signInActivity",
    "surname",
    "userPrincipalName",
    "userType",
];

fn unknown_property(name: &str) -> FilterError {
    FilterError::Invalid(format!(
        "Could not find a property named '{name}' on type 'microsoft.graph.user'."
    ))
}

fn unsupported_clause(name: &str) -> FilterError {
    FilterError::Unsupported(format!(
        "Unsupported or invalid query filter clause specified for property '{name}' of resource 'User'."
    ))
}

fn scalar(name: &str) -> Result<Prop, FilterError> {
    Ok(match name {
        "id" => Prop::Id,
        "userType" => Prop::UserType,
        "mail" => Prop::Mail,
        "userPrincipalName" => Prop::UserPrincipalName,
        "displayName" => Prop::DisplayName,
        "accountEnabled" => Prop::AccountEnabled,
        "externalUserState" => Prop::ExternalUserState,
        "creationType" => Prop::CreationType,
        other if KNOWN.contains(&other) => return Err(unsupported_clause(other)),
        other => return Err(unknown_property(other)),
    })
}

fn collection(name: &str) -> Result<CollectionProp, FilterError> {
    match name {
        "otherMails" => Ok(CollectionProp::OtherMails),
        "proxyAddresses" => Ok(CollectionProp::ProxyAddresses),
        other if KNOWN.contains(&other) => Err(unsupported_clause(other)),
        other => Err(unknown_property(other)),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(String),
    LParen,
    RParen,
    Comma,
    Colon,
    Slash,
}

fn tokenize(input: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            ':' => {
                tokens.push(Token::Colon);
                i += 1;
            }
            '/' => {
                tokens.push(Token::Slash);
                i += 1;
            }
            '\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(FilterError::Invalid(
                                "Syntax error: unterminated string literal in $filter.".into(),
                            ));
                        }
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            value.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(other) => {
                            value.push(*other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Str(value));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                tokens.push(Token::Number(chars[start..i].iter().collect()));
            }
            other => {
                return Err(FilterError::Invalid(format!(
                    "Syntax error: character '{other}' is not valid at position {i} in '{input}'."
                )));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

const COMPARISONS: &[&str] = &["eq", "ne", "gt", "ge", "lt", "le", "in", "has"];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_at(&self, offset: usize) -> Option<&Token> {
        self.tokens.get(self.pos + offset)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn expect(&mut self, want: Token, what: &str) -> Result<(), FilterError> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            other => Err(FilterError::Invalid(format!(
                "Syntax error: expected {what} but found {}.",
                describe(other.as_ref())
            ))),
        }
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w == word)
    }

    fn or_expr(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and_expr()?;
        while self.is_keyword("or") {
            self.pos += 1;
            let right = self.and_expr()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.is_keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.is_keyword("not") {
            return Err(FilterError::Unsupported(
                "The 'not' operator is only supported with advanced query parameters \
                 (ConsistencyLevel: eventual and $count=true)."
                    .into(),
            ));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        match self.next() {
            Some(Token::LParen) => {
                let inner = self.or_expr()?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            Some(Token::Ident(name)) => {
                if self.peek() == Some(&Token::LParen) {
                    return self.function(&name);
                }
                if self.peek() == Some(&Token::Slash) {
                    return self.lambda(&name);
                }
                self.comparison(&name)
            }
            other => Err(FilterError::Invalid(format!(
                "Syntax error: expected a property or function but found {}.",
                describe(other.as_ref())
            ))),
        }
    }

    fn function(&mut self, name: &str) -> Result<Filter, FilterError> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "startswith" => {
                self.expect(Token::LParen, "'('")?;
                let prop = match self.next() {
                    Some(Token::Ident(p)) => p,
                    other => {
                        return Err(FilterError::Invalid(format!(
                            "Syntax error: expected a property in startsWith but found {}.",
                            describe(other.as_ref())
                        )));
                    }
                };
                if self.peek() == Some(&Token::Slash) {
                    return Err(unsupported_clause(&prop));
                }
                self.expect(Token::Comma, "','")?;
                let prefix = self.string_literal()?;
                self.expect(Token::RParen, "')'")?;
                let prop = scalar(&prop)?;
                match prop {
                    Prop::Mail | Prop::UserPrincipalName | Prop::DisplayName => {
                        Ok(Filter::StartsWith(prop, prefix))
                    }
                    other => Err(unsupported_clause(prop_name(other))),
                }
            }
            "endswith" | "contains" | "substringof" | "tolower" | "toupper" | "length"
            | "indexof" | "trim" | "concat" => Err(FilterError::Unsupported(format!(
                "The function '{name}' is not supported without advanced query parameters \
                 (ConsistencyLevel: eventual and $count=true)."
            ))),
            _ => Err(FilterError::Invalid(format!(
                "An unknown function with name '{name}' was found."
            ))),
        }
    }

    fn lambda(&mut self, name: &str) -> Result<Filter, FilterError> {
        self.expect(Token::Slash, "'/'")?;
        let operator = match self.next() {
            Some(Token::Ident(op)) => op,
            other => {
                return Err(FilterError::Invalid(format!(
                    "Syntax error: expected 'any' after '{name}/' but found {}.",
                    describe(other.as_ref())
                )));
            }
        };
        if operator == "all" {
            return Err(FilterError::Unsupported(format!(
                "'{name}/all' is not supported."
            )));
        }
        if operator != "any" {
            return Err(FilterError::Invalid(format!(
                "Could not find a property named '{operator}' on type 'Edm.String'."
            )));
        }
        let coll = collection(name)?;
        self.expect(Token::LParen, "'('")?;
        let var = match self.next() {
            Some(Token::Ident(v)) => v,
            other => {
                return Err(FilterError::Invalid(format!(
                    "Syntax error: expected a range variable but found {}.",
                    describe(other.as_ref())
                )));
            }
        };
        self.expect(Token::Colon, "':'")?;
        let test = match (self.next(), self.peek().cloned()) {
            (Some(Token::Ident(v)), Some(Token::Ident(op))) if v == var => {
                self.pos += 1;
                match op.as_str() {
                    "eq" => Filter::AnyEq(coll, self.string_literal()?),
                    other if COMPARISONS.contains(&other) => {
                        return Err(FilterError::Unsupported(format!(
                            "Operator '{other}' is not supported in a lambda over '{name}'."
                        )));
                    }
                    other => {
                        return Err(FilterError::Invalid(format!(
                            "Syntax error: unknown operator '{other}'."
                        )));
                    }
                }
            }
            (Some(Token::Ident(f)), Some(Token::LParen))
                if f.eq_ignore_ascii_case("startswith") =>
            {
                self.expect(Token::LParen, "'('")?;
                match self.next() {
                    Some(Token::Ident(v)) if v == var => {}
                    other => {
                        return Err(FilterError::Invalid(format!(
                            "Syntax error: expected the range variable '{var}' but found {}.",
                            describe(other.as_ref())
                        )));
                    }
                }
                self.expect(Token::Comma, "','")?;
                let prefix = self.string_literal()?;
                self.expect(Token::RParen, "')'")?;
                Filter::AnyStartsWith(coll, prefix)
            }
            (Some(Token::Ident(f)), Some(Token::LParen))
                if ["endswith", "contains"].contains(&f.to_ascii_lowercase().as_str()) =>
            {
                return Err(FilterError::Unsupported(format!(
                    "The function '{f}' is not supported without advanced query parameters."
                )));
            }
            (other, _) => {
                return Err(FilterError::Invalid(format!(
                    "Syntax error: unexpected {} in the lambda expression.",
                    describe(other.as_ref())
                )));
            }
        };
        self.expect(Token::RParen, "')'")?;
        Ok(test)
    }

    fn comparison(&mut self, name: &str) -> Result<Filter, FilterError> {
        let op = match self.next() {
            Some(Token::Ident(op)) => op,
            other => {
                return Err(FilterError::Invalid(format!(
                    "Syntax error: expected an operator after '{name}' but found {}.",
                    describe(other.as_ref())
                )));
            }
        };
        let prop = scalar(name)?;
        match op.as_str() {
            "eq" => {
                let literal = self.literal()?;
                match (prop, literal) {
                    (_, None) => Err(FilterError::Unsupported(format!(
                        "'{name} eq null' is only supported with advanced query parameters."
                    ))),
                    (Prop::AccountEnabled, Some(Literal::Bool(b))) => {
                        Ok(Filter::Eq(prop, Literal::Bool(b)))
                    }
                    (Prop::AccountEnabled, Some(Literal::Str(_))) => {
                        Err(incompatible("Edm.Boolean", "Edm.String"))
                    }
                    (_, Some(Literal::Bool(_))) => Err(incompatible("Edm.String", "Edm.Boolean")),
                    (_, Some(Literal::Str(s))) => Ok(Filter::Eq(prop, Literal::Str(s))),
                }
            }
            "in" => {
                if prop != Prop::Id {
                    return Err(unsupported_clause(name));
                }
                self.expect(Token::LParen, "'('")?;
                let mut values = vec![self.string_literal()?];
                while self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    values.push(self.string_literal()?);
                }
                self.expect(Token::RParen, "')'")?;
                Ok(Filter::In(prop, values))
            }
            other if COMPARISONS.contains(&other) => Err(FilterError::Unsupported(format!(
                "Operator '{other}' is not supported without advanced query parameters \
                 (ConsistencyLevel: eventual and $count=true)."
            ))),
            other => Err(FilterError::Invalid(format!(
                "Syntax error: '{other}' is not a valid operator (operators are lower-case)."
            ))),
        }
    }

    /// A literal; `None` for `null`.
    fn literal(&mut self) -> Result<Option<Literal>, FilterError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Some(Literal::Str(s))),
            Some(Token::Ident(w)) if w == "true" => Ok(Some(Literal::Bool(true))),
            Some(Token::Ident(w)) if w == "false" => Ok(Some(Literal::Bool(false))),
            Some(Token::Ident(w)) if w == "null" => Ok(None),
            Some(Token::Number(n)) => Err(incompatible("Edm.String", &format!("a number ({n})"))),
            other => Err(FilterError::Invalid(format!(
                "Syntax error: expected a literal but found {}.",
                describe(other.as_ref())
            ))),
        }
    }

    fn string_literal(&mut self) -> Result<String, FilterError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            other => Err(FilterError::Invalid(format!(
                "Syntax error: expected a string literal but found {}.",
                describe(other.as_ref())
            ))),
        }
    }
}

fn incompatible(left: &str, right: &str) -> FilterError {
    FilterError::Invalid(format!(
        "A binary operator with incompatible types was detected. Found operand types '{left}' \
         and '{right}' for operator kind 'Equal'."
    ))
}

fn prop_name(prop: Prop) -> &'static str {
    match prop {
        Prop::Id => "id",
        Prop::UserType => "userType",
        Prop::Mail => "mail",
        Prop::UserPrincipalName => "userPrincipalName",
        Prop::DisplayName => "displayName",
        Prop::AccountEnabled => "accountEnabled",
        Prop::ExternalUserState => "externalUserState",
        Prop::CreationType => "creationType",
    }
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "the end of the expression".into(),
        Some(Token::Ident(w)) => format!("'{w}'"),
        Some(Token::Str(s)) => format!("the literal '{s}'"),
        Some(Token::Number(n)) => format!("the number {n}"),
        Some(Token::LParen) => "'('".into(),
        Some(Token::RParen) => "')'".into(),
        Some(Token::Comma) => "','".into(),
        Some(Token::Colon) => "':'".into(),
        Some(Token::Slash) => "'/'".into(),
    }
}

/// Parses a `$filter` value.
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    let tokens = tokenize(input)?;
    if tokens.is_empty() {
        return Err(FilterError::Invalid(
            "The $filter expression is empty.".into(),
        ));
    }
    let mut parser = Parser { tokens, pos: 0 };
    let filter = parser.or_expr()?;
    if let Some(rest) = parser.peek_at(0) {
        return Err(FilterError::Invalid(format!(
            "Syntax error: unexpected {} after a complete expression.",
            describe(Some(rest))
        )));
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct U {
        mail: Option<String>,
        upn: String,
        other: Vec<String>,
        enabled: bool,
    }

    impl Subject for U {
        fn string(&self, prop: Prop) -> Option<&str> {
            match prop {
                Prop::Mail => self.mail.as_deref(),
                Prop::UserPrincipalName => Some(&self.upn),
                Prop::UserType => Some("Guest"),
                _ => None,
            }
        }
        fn boolean(&self, _: Prop) -> Option<bool> {
            Some(self.enabled)
        }
        fn collection(&self, prop: CollectionProp) -> &[String] {
            match prop {
                CollectionProp::OtherMails => &self.other,
                CollectionProp::ProxyAddresses => &[],
            }
        }
    }

    fn user() -> U {
        U {
            mail: Some("O'Brien@Partner.example".into()),
            upn: "o'brien_partner.example#EXT#@sim.onmicrosoft.com".into(),
            other: vec!["obrien@other.example".into()],
            enabled: true,
        }
    }

    #[test]
    fn the_lookup_filter_of_the_client_parses_and_matches() {
        let f = parse(
            "mail eq 'o''brien@partner.example' or otherMails/any(x:x eq 'o''brien@partner.example') \
             or userPrincipalName eq 'o''brien@partner.example' or startsWith(userPrincipalName,'o''brien_partner.example#EXT#')",
        )
        .unwrap();
        assert!(f.matches(&user()));
        let f = parse("otherMails/any(x:x eq 'OBRIEN@other.example')").unwrap();
        assert!(f.matches(&user()));
        let f = parse(
            "userType eq 'Guest' and (accountEnabled eq false or mail eq 'nobody@x.example')",
        )
        .unwrap();
        assert!(!f.matches(&user()));
    }

    #[test]
    fn advanced_queries_are_refused() {
        for q in [
            "endsWith(mail,'@partner.example')",
            "mail ne 'a@b.example'",
            "not(mail eq 'a@b.example')",
            "mail eq null",
            "jobTitle eq 'x'",
            "mail in ('a@b.example')",
        ] {
            assert!(matches!(parse(q), Err(FilterError::Unsupported(_))), "{q}");
        }
        for q in [
            "mail EQ 'a'",
            "nosuch eq 'a'",
            "mail eq 'a",
            "accountEnabled eq 'true'",
            "",
        ] {
            assert!(matches!(parse(q), Err(FilterError::Invalid(_))), "{q}");
        }
    }
}
