//! The OData subset accepted in `device_filter`: exactly the properties and
//! operators Graph's schema annotations document for `managedDevices`
//! (`$filter` capabilities), so a filter that passes here is one Graph
//! serves:
//!
//! | properties | operators |
//! |---|---|
//! | `deviceName`, `model` | `eq`, `contains()` |
//! | `operatingSystem`, `managementAgent`, `managementState`, `complianceState`, `deviceType`, `ownerType`, `jailBroken`, `deviceCategoryDisplayName`, `serialNumber`, `manufacturer`, `imei`, `exchangeAccessState` | `eq`, and `or` between them |
//! | `userPrincipalName` | `eq`, `ne` |
//! | `azureADDeviceId` | `eq` |
//! | `osVersion`, `emailAddress`, `phoneNumber` | `contains()` |
//! | `enrolledDateTime`, `lastSyncDateTime`, `complianceGracePeriodExpirationDateTime` | `lt`, `gt` with a date-time literal |
//!
//! Grammar (keywords in lower case, as Graph writes them):
//! ```text
//! expr    := and ( "or" and )*          -- every comparison under an "or" on a property that allows it
//! and     := term ( "and" term )*
//! term    := "(" expr ")"
//!          | field ("eq" | "ne") 'string'
//!          | field ("lt" | "gt") datetime   -- 2026-11-22T00:00:00Z
//!          | "contains(" field "," 'string' ")"
//! ```
//! Anything else (other functions, `startswith`, lambdas, `$` options,
//! numbers) is refused with a message that lists what the property allows,
//! and the accepted filter is re-written in a canonical form, so nothing from
//! the payload reaches the URL unparsed.

use std::fmt;

/// The longest filter text accepted.
pub const MAX_FILTER_LEN: usize = 1024;
/// The most comparisons one filter may hold.
pub const MAX_CLAUSES: usize = 32;
/// The deepest parenthesis nesting accepted.
pub const MAX_DEPTH: usize = 8;

/// What a property allows in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allowed {
    eq: bool,
    ne: bool,
    contains: bool,
    order: bool,
    or: bool,
}

const fn allow(eq: bool, ne: bool, contains: bool, order: bool, or: bool) -> Allowed {
    Allowed {
        eq,
        ne,
        contains,
        order,
        or,
    }
}

const EQ_CONTAINS: Allowed = allow(true, false, true, false, false);
const EQ_OR: Allowed = allow(true, false, false, false, true);
const CONTAINS: Allowed = allow(false, false, true, false, false);
const DATES: Allowed = allow(false, false, false, true, false);

/// The `managedDevice` properties Graph documents as filterable, with the
/// operators it documents for each.
const PROPERTIES: &[(&str, Allowed)] = &[
    ("deviceName", EQ_CONTAINS),
    ("model", EQ_CONTAINS),
    ("operatingSystem", EQ_OR),
    ("managementAgent", EQ_OR),
    ("managementState", EQ_OR),
    ("complianceState", EQ_OR),
    ("deviceType", EQ_OR),
    ("ownerType", EQ_OR),
    ("jailBroken", EQ_OR),
    ("deviceCategoryDisplayName", EQ_OR),
    ("serialNumber", EQ_OR),
    ("manufacturer", EQ_OR),
    ("imei", EQ_OR),
    ("exchangeAccessState", EQ_OR),
    ("userPrincipalName", allow(true, true, false, false, false)),
    ("azureADDeviceId", allow(true, false, false, false, false)),
    ("osVersion", CONTAINS),
    ("emailAddress", CONTAINS),
    ("phoneNumber", CONTAINS),
    ("enrolledDateTime", DATES),
    ("lastSyncDateTime", DATES),
    ("complianceGracePeriodExpirationDateTime", DATES),
];

/// The properties that may be filtered on.
pub fn filterable_properties() -> impl Iterator<Item = &'static str> {
    PROPERTIES.iter().map(|(p, _)| *p)
}

fn allowed_text(a: Allowed) -> String {
    let mut ops = Vec::new();
    if a.eq {
        ops.push("eq");
    }
    if a.ne {
        ops.push("ne");
    }
    if a.contains {
        ops.push("contains()");
    }
    if a.order {
        ops.push("lt and gt with a date-time such as 2026-11-22T00:00:00Z");
    }
    if a.or {
        ops.push("or between such comparisons");
    }
    ops.join(", ")
}

/// A literal value in a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A quoted string.
    Str(String),
    /// A date-time, as written (validated RFC 3339).
    DateTime(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `lt`
    Lt,
    /// `gt`
    Gt,
}

impl CompareOp {
    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Lt => "lt",
            CompareOp::Gt => "gt",
        }
    }
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterExpr {
    /// `field op literal`
    Compare {
        /// Canonical property name.
        field: &'static str,
        /// The operator.
        op: CompareOp,
        /// The value compared with.
        value: Literal,
    },
    /// `contains(field,'text')`
    Contains {
        /// Canonical property name.
        field: &'static str,
        /// The text looked for.
        text: String,
    },
    /// Both sides hold.
    And(Box<FilterExpr>, Box<FilterExpr>),
    /// Either side holds.
    Or(Box<FilterExpr>, Box<FilterExpr>),
}

impl FilterExpr {
    /// The first comparison under this expression on a property that does
    /// not allow `or`, if any.
    fn not_or_able(&self) -> Option<&'static str> {
        match self {
            FilterExpr::Compare { field, .. } | FilterExpr::Contains { field, .. } => {
                let allowed = PROPERTIES.iter().find(|(p, _)| p == field).map(|(_, a)| *a);
                (!allowed.is_some_and(|a| a.or)).then_some(*field)
            }
            FilterExpr::And(a, b) | FilterExpr::Or(a, b) => a.not_or_able().or_else(|| b.not_or_able()),
        }
    }
}

/// A validated `device_filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFilter {
    expr: FilterExpr,
}

/// Why a filter was refused; the message says where and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

impl DeviceFilter {
    /// Parses and checks a filter against the safe subset.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError(format!(
                "the filter is {} characters long; at most {MAX_FILTER_LEN} are accepted",
                text.len()
            )));
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            clauses: 0,
        };
        let expr = parser.expr(0)?;
        if let Some(tok) = parser.tokens.get(parser.pos) {
            return Err(FilterError(format!(
                "unexpected {} at character {}; expected \"and\", \"or\" or the end",
                tok.kind, tok.at
            )));
        }
        Ok(Self { expr })
    }

    /// The parsed expression.
    pub fn expr(&self) -> &FilterExpr {
        &self.expr
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::DateTime(t) => f.write_str(t),
        }
    }
}

impl fmt::Display for FilterExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterExpr::Compare { field, op, value } => write!(f, "{field} {} {value}", op.as_str()),
            FilterExpr::Contains { field, text } => {
                write!(f, "contains({field},{})", Literal::Str(text.clone()))
            }
            FilterExpr::And(a, b) => {
                write_operand(f, a, true)?;
                f.write_str(" and ")?;
                write_operand(f, b, true)
            }
            FilterExpr::Or(a, b) => {
                write_operand(f, a, false)?;
                f.write_str(" or ")?;
                write_operand(f, b, false)
            }
        }
    }
}

fn write_operand(f: &mut fmt::Formatter<'_>, e: &FilterExpr, inside_and: bool) -> fmt::Result {
    if inside_and && matches!(e, FilterExpr::Or(..)) {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

/// The canonical text sent to Graph.
impl fmt::Display for DeviceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word(String),
    Str(String),
    DateTime(String),
    Open,
    Close,
    Comma,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Word(w) => write!(f, "{w:?}"),
            Kind::Str(_) => f.write_str("a string"),
            Kind::DateTime(_) => f.write_str("a date-time"),
            Kind::Open => f.write_str("\"(\""),
            Kind::Close => f.write_str("\")\""),
            Kind::Comma => f.write_str("\",\""),
        }
    }
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    at: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            ' ' => i += 1,
            '(' | ')' | ',' => {
                let kind = match c {
                    '(' => Kind::Open,
                    ')' => Kind::Close,
                    _ => Kind::Comma,
                };
                out.push(Token { kind, at });
                i += 1;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(FilterError(format!(
                                "the string starting at character {at} is not closed"
                            )));
                        }
                        Some((_, '\'')) if matches!(chars.get(i + 1), Some((_, '\''))) => {
                            s.push('\'');
                            i += 2;
                        }
                        Some((_, '\'')) => {
                            i += 1;
                            break;
                        }
                        Some((_, ch)) if ch.is_control() => {
                            return Err(FilterError(format!(
                                "control character in the string at character {at}"
                            )));
                        }
                        Some((_, ch)) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Token { kind: Kind::Str(s), at });
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|(_, d)| d.is_ascii_alphanumeric() || matches!(d, ':' | '.' | '-' | '+'))
                {
                    i += 1;
                }
                let lit: String = chars[start..i].iter().map(|(_, ch)| ch).collect();
                if humantime::parse_rfc3339(&lit).is_err() {
                    return Err(FilterError(format!(
                        "{lit:?} at character {at} is not a UTC date-time such as 2026-11-22T00:00:00Z \
                         (no managedDevice property is a number)"
                    )));
                }
                out.push(Token {
                    kind: Kind::DateTime(lit),
                    at,
                });
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while chars.get(i).is_some_and(|(_, d)| d.is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|(_, ch)| ch).collect();
                out.push(Token {
                    kind: Kind::Word(word),
                    at,
                });
            }
            other => {
                return Err(FilterError(format!(
                    "character {other:?} at position {at} is not allowed; the filter accepts \
                     properties, eq, ne, lt, gt, contains(), and, or, parentheses, quoted strings \
                     and date-times"
                )));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    clauses: usize,
}

impl Parser {
    fn peek_word(&self) -> Option<&str> {
        match self.tokens.get(self.pos).map(|t| &t.kind) {
            Some(Kind::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn next(&mut self, expected: &str) -> Result<&Token, FilterError> {
        let pos = self.pos;
        self.pos += 1;
        self.tokens
            .get(pos)
            .ok_or_else(|| FilterError(format!("the filter ends where {expected} was expected")))
    }

    fn expect(&mut self, kind: Kind, expected: &str) -> Result<(), FilterError> {
        let tok = self.next(expected)?;
        if tok.kind == kind {
            Ok(())
        } else {
            Err(FilterError(format!(
                "found {} at character {} where {expected} was expected",
                tok.kind, tok.at
            )))
        }
    }

    fn expr(&mut self, depth: usize) -> Result<FilterExpr, FilterError> {
        let mut left = self.and(depth)?;
        while self.peek_word() == Some("or") {
            let at = self.tokens.get(self.pos).map_or(0, |t| t.at);
            self.pos += 1;
            let right = self.and(depth)?;
            if let Some(field) = left.not_or_able().or_else(|| right.not_or_able()) {
                return Err(FilterError(format!(
                    "\"or\" at character {at} combines a comparison on {field}, which Graph does not allow in \"or\"; \
                     \"or\" is allowed between comparisons on {}",
                    PROPERTIES
                        .iter()
                        .filter(|(_, a)| a.or)
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            left = FilterExpr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<FilterExpr, FilterError> {
        let mut left = self.term(depth)?;
        while self.peek_word() == Some("and") {
            self.pos += 1;
            let right = self.term(depth)?;
            left = FilterExpr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self, depth: usize) -> Result<FilterExpr, FilterError> {
        let tok = self.next("a comparison")?;
        let at = tok.at;
        match tok.kind.clone() {
            Kind::Open => {
                if depth >= MAX_DEPTH {
                    return Err(FilterError(format!(
                        "parentheses nest deeper than {MAX_DEPTH} levels at character {at}"
                    )));
                }
                let inner = self.expr(depth + 1)?;
                self.expect(Kind::Close, "\")\"")?;
                Ok(inner)
            }
            Kind::Word(w) if w == "contains" => {
                self.count_clause(at)?;
                self.expect(Kind::Open, "\"(\" after contains")?;
                let (field, allowed) = self.field()?;
                if !allowed.contains {
                    return Err(FilterError(format!(
                        "contains() is not allowed on {field}; it allows {}",
                        allowed_text(allowed)
                    )));
                }
                self.expect(Kind::Comma, "\",\"")?;
                let tok = self.next("a quoted string")?;
                let Kind::Str(text) = tok.kind.clone() else {
                    return Err(FilterError(format!(
                        "contains takes a quoted string; found {} at character {}",
                        tok.kind, tok.at
                    )));
                };
                self.expect(Kind::Close, "\")\"")?;
                Ok(FilterExpr::Contains { field, text })
            }
            Kind::Word(_) => {
                self.count_clause(at)?;
                self.pos -= 1;
                let (field, allowed) = self.field()?;
                let tok = self.next("an operator")?;
                let op_at = tok.at;
                let op = match &tok.kind {
                    Kind::Word(w) if w == "eq" && allowed.eq => CompareOp::Eq,
                    Kind::Word(w) if w == "ne" && allowed.ne => CompareOp::Ne,
                    Kind::Word(w) if w == "lt" && allowed.order => CompareOp::Lt,
                    Kind::Word(w) if w == "gt" && allowed.order => CompareOp::Gt,
                    other => {
                        return Err(FilterError(format!(
                            "found {other} at character {op_at} after {field}; {field} allows {}",
                            allowed_text(allowed)
                        )));
                    }
                };
                let tok = self.next("a literal")?;
                let value = match (&tok.kind, op) {
                    (Kind::Str(s), CompareOp::Eq | CompareOp::Ne) => Literal::Str(s.clone()),
                    (Kind::DateTime(t), CompareOp::Lt | CompareOp::Gt) => Literal::DateTime(t.clone()),
                    (other, CompareOp::Lt | CompareOp::Gt) => {
                        return Err(FilterError(format!(
                            "found {other} at character {}; {field} {} takes a date-time such as 2026-11-22T00:00:00Z",
                            tok.at,
                            op.as_str()
                        )));
                    }
                    (other, _) => {
                        return Err(FilterError(format!(
                            "found {other} at character {}; {field} {} takes a quoted string",
                            tok.at,
                            op.as_str()
                        )));
                    }
                };
                Ok(FilterExpr::Compare { field, op, value })
            }
            other => Err(FilterError(format!(
                "found {other} at character {at} where a comparison was expected"
            ))),
        }
    }

    fn count_clause(&mut self, at: usize) -> Result<(), FilterError> {
        self.clauses += 1;
        if self.clauses > MAX_CLAUSES {
            return Err(FilterError(format!(
                "more than {MAX_CLAUSES} comparisons (at character {at})"
            )));
        }
        Ok(())
    }

    fn field(&mut self) -> Result<(&'static str, Allowed), FilterError> {
        let tok = self.next("a property name")?;
        let Kind::Word(name) = &tok.kind else {
            return Err(FilterError(format!(
                "found {} at character {} where a property name was expected",
                tok.kind, tok.at
            )));
        };
        PROPERTIES
            .iter()
            .find(|(p, _)| p.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| {
                FilterError(format!(
                    "{name:?} at character {} is not a managedDevice property Graph can filter on; the filterable ones are {}",
                    tok.at,
                    PROPERTIES.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        DeviceFilter::parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .to_string()
    }

    #[test]
    fn accepts_and_canonicalises_what_graph_documents() {
        assert_eq!(
            canonical("operatingSystem eq 'Windows'"),
            "operatingSystem eq 'Windows'"
        );
        assert_eq!(
            canonical(
                "operatingsystem eq 'Windows'  and (managementAgent eq 'mdm' or complianceState eq 'noncompliant')"
            ),
            "operatingSystem eq 'Windows' and (managementAgent eq 'mdm' or complianceState eq 'noncompliant')"
        );
        assert_eq!(canonical("deviceName eq 'O''Brien'"), "deviceName eq 'O''Brien'");
        assert_eq!(
            canonical("contains( deviceName , 'LAB') and contains(osVersion,'19045')"),
            "contains(deviceName,'LAB') and contains(osVersion,'19045')"
        );
        assert_eq!(
            canonical("operatingSystem eq 'Windows' and lastSyncDateTime gt 2026-11-22T00:00:00Z"),
            "operatingSystem eq 'Windows' and lastSyncDateTime gt 2026-11-22T00:00:00Z"
        );
        assert_eq!(
            canonical("userPrincipalName ne 'kiosk@contoso.com'"),
            "userPrincipalName ne 'kiosk@contoso.com'"
        );
    }

    #[test]
    fn refusals_say_what_the_property_allows() {
        let err = DeviceFilter::parse("model ne 'x'").unwrap_err().0;
        assert!(err.contains("model allows eq, contains()"), "{err}");
        let err = DeviceFilter::parse("deviceName eq 'a' or deviceName eq 'b'")
            .unwrap_err()
            .0;
        assert!(err.contains("\"or\"") && err.contains("operatingSystem"), "{err}");
        let err = DeviceFilter::parse("lastSyncDateTime gt '2026-01-01'").unwrap_err().0;
        assert!(err.contains("date-time"), "{err}");
        let err = DeviceFilter::parse("enrolledDateTime eq 2026-01-01T00:00:00Z")
            .unwrap_err()
            .0;
        assert!(err.contains("lt and gt"), "{err}");
    }

    #[test]
    fn refuses_everything_outside_the_subset() {
        for bad in [
            "",
            "operatingSystem",
            "operatingSystem eq",
            "operatingSystem gt 'a'",
            "operatingSystem eq 'Windows' and",
            "operatingSystem eq 'Windows'&$top=1",
            "operatingSystem eq 'Windows'; drop",
            "startswith(deviceName,'x')",
            "contains(operatingSystem,'x')",
            "isEncrypted eq true",
            "model eq 1",
            "lastSyncDateTime gt 2026-13-01T00:00:00Z",
            "lastSyncDateTime gt 2026-11-22",
            "password eq 'x'",
            "operatingSystem eq 'unterminated",
            "operatingSystem eq Windows",
            "(operatingSystem eq 'Windows'",
            "operatingSystem eq 'Windows')",
            "not operatingSystem eq 'Windows'",
            "operatingSystem eq 'Windows' or/**/1 eq 1",
            "deviceName eq 'a\u{0}b'",
            "contains(deviceName, 5)",
            "operatingSystem eq 'W' AND deviceName eq 'x'",
        ] {
            assert!(DeviceFilter::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let deep = format!("{}operatingSystem eq 'W'{}", "(".repeat(20), ")".repeat(20));
        assert!(DeviceFilter::parse(&deep).unwrap_err().0.contains("nest"));
        let many = vec!["imei eq 'x'"; 40].join(" or ");
        assert!(DeviceFilter::parse(&many).unwrap_err().0.contains("comparisons"));
        assert!(DeviceFilter::parse(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn error_names_the_offending_property() {
        let err = DeviceFilter::parse("secretField eq 'x'").unwrap_err();
        assert!(err.0.contains("secretField"), "{err}");
    }
}
