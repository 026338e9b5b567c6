//! The OData subset accepted in `device_filter`: the properties and
//! operators Graph's property annotations list for `managedDevices`
//! (`$filter` capabilities). Graph applies only part of them (see
//! [`DeviceFilter::graph_filter`]): the rest, and a check of every listed
//! device against the whole filter, happen on the client
//! ([`DeviceFilter::classify`]), because Graph is reported to ignore a
//! `$filter` it does not support and answer with every device.
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

/// OData functions and operators a caller may try that this filter does
/// not support (Graph's `managedDevice` listing does not apply them all
/// either): refused by name rather than taken for a property.
const ODATA_FUNCTIONS: &[&str] = &[
    "startswith",
    "endswith",
    "substringof",
    "tolower",
    "toupper",
    "trim",
    "length",
    "indexof",
    "substring",
    "concat",
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "date",
    "time",
    "now",
    "round",
    "floor",
    "ceiling",
    "cast",
    "isof",
    "any",
    "all",
    "not",
    "in",
    "has",
];

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

/// The comparisons Graph is sent: those Microsoft's generated model
/// documentation for `managedDevice` names (`deviceName` eq and contains,
/// `deviceCategoryDisplayName` and `jailBroken` eq, `enrolledDateTime` and
/// `lastSyncDateTime` lt and gt), and `operatingSystem eq`, which Microsoft's
/// own examples use. Graph is reported to ignore a `$filter` on other
/// properties silently (answering with every device), so everything else is
/// applied on the client, to every device the listing returns.
fn graph_applies(e: &FilterExpr) -> bool {
    match e {
        FilterExpr::Compare { field, op, .. } => matches!(
            (*field, op),
            (
                "deviceName" | "deviceCategoryDisplayName" | "jailBroken" | "operatingSystem",
                CompareOp::Eq
            ) | ("enrolledDateTime" | "lastSyncDateTime", CompareOp::Lt | CompareOp::Gt)
        ),
        FilterExpr::Contains { field, .. } => *field == "deviceName",
        FilterExpr::And(..) | FilterExpr::Or(..) => false,
    }
}

impl FilterExpr {
    /// The part of this expression Graph can be sent: a superset of its
    /// answer (every device this expression matches, the part matches too),
    /// or `None` when no part can be sent. `or` is never sent: the model
    /// documentation says combinations must use `and`.
    fn graph_part(&self) -> Option<FilterExpr> {
        match self {
            FilterExpr::And(a, b) => match (a.graph_part(), b.graph_part()) {
                (Some(a), Some(b)) => Some(FilterExpr::And(Box::new(a), Box::new(b))),
                (one, other) => one.or(other),
            },
            FilterExpr::Or(..) => None,
            leaf => graph_applies(leaf).then(|| leaf.clone()),
        }
    }

    /// The comparisons only the client applies, in the filter's order.
    fn client_only(&self, under_or: bool, out: &mut Vec<String>) {
        match self {
            FilterExpr::And(a, b) => {
                a.client_only(under_or, out);
                b.client_only(under_or, out);
            }
            FilterExpr::Or(a, b) => {
                a.client_only(true, out);
                b.client_only(true, out);
            }
            leaf => {
                if under_or || !graph_applies(leaf) {
                    out.push(leaf.to_string());
                }
            }
        }
    }

    fn fields(&self, out: &mut Vec<&'static str>) {
        match self {
            FilterExpr::Compare { field, .. } | FilterExpr::Contains { field, .. } => {
                if !out.contains(field) {
                    out.push(field);
                }
            }
            FilterExpr::And(a, b) | FilterExpr::Or(a, b) => {
                a.fields(out);
                b.fields(out);
            }
        }
    }

    /// Whether a device matches, given its properties' values as Graph
    /// listed them (`None` for a property that is absent or null). Strings
    /// compare without regard to case, as Graph's do; date-times compare as
    /// instants; a comparison on an absent property holds only for `ne`.
    fn matches(&self, value: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            FilterExpr::And(a, b) => a.matches(value) && b.matches(value),
            FilterExpr::Or(a, b) => a.matches(value) || b.matches(value),
            FilterExpr::Contains { field, text } => {
                value(field).is_some_and(|v| v.to_lowercase().contains(&text.to_lowercase()))
            }
            FilterExpr::Compare { field, op, value: lit } => {
                let got = value(field);
                match (op, lit) {
                    (CompareOp::Eq, Literal::Str(want)) => got.is_some_and(|g| g.to_lowercase() == want.to_lowercase()),
                    (CompareOp::Ne, Literal::Str(want)) => got.is_none_or(|g| g.to_lowercase() != want.to_lowercase()),
                    (CompareOp::Lt | CompareOp::Gt, Literal::DateTime(want)) => {
                        match (got.as_deref().and_then(instant), instant(want)) {
                            (Some(g), Some(w)) if *op == CompareOp::Lt => g < w,
                            (Some(g), Some(w)) => g > w,
                            _ => false,
                        }
                    }
                    _ => false,
                }
            }
        }
    }
}

/// Seconds (and nanoseconds) since 1970 of an RFC 3339 date-time with `Z`
/// or a `±hh:mm` offset, any year from 0001 (Graph writes
/// `0001-01-01T00:00:00Z` for "never").
fn instant(text: &str) -> Option<(i64, u32)> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (
        num(0, 4)?,
        num(5, 7)?,
        num(8, 10)?,
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = text.get(19..)?;
    let (nanos, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            let digits: String = r[..n].chars().chain(std::iter::repeat('0')).take(9).collect();
            (digits.parse::<u32>().ok()?, &r[n..])
        }
        None => (0, rest),
    };
    let offset_min = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let m = z.get(1..3)?.parse::<i64>().ok()? * 60 + z.get(4..6)?.parse::<i64>().ok()?;
            if z.starts_with('-') { -m } else { m }
        }
        _ => return None,
    };
    // Days from the civil date.
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60, nanos))
}

/// How one listed device stands against a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// It matches the whole filter.
    Matches,
    /// It does not match the `$filter` Graph was sent.
    NotAppliedByGraph,
    /// It matches what Graph was sent, not the client-only parts.
    LeftOutByClient,
}

/// Which parts of a filter Graph applies and which the client applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPlan {
    /// The `$filter` sent to Graph, or `None` when the whole listing is read.
    pub graph: Option<String>,
    /// The comparisons only the client applies (it checks every listed
    /// device against the whole filter in any case).
    pub client_only: Vec<String>,
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

    /// The `$filter` text sent to Graph: the documented part, a superset of
    /// the answer, or `None` when nothing can be sent.
    pub fn graph_filter(&self) -> Option<String> {
        self.expr.graph_part().map(|e| e.to_string())
    }

    /// Which parts Graph applies and which the client applies.
    pub fn plan(&self) -> FilterPlan {
        let mut client_only = Vec::new();
        self.expr.client_only(false, &mut client_only);
        FilterPlan {
            graph: self.graph_filter(),
            client_only,
        }
    }

    /// The properties the filter names, for the listing's `$select`.
    pub fn properties(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        self.expr.fields(&mut out);
        out
    }

    /// Whether a listed device matches the whole filter; `value` gives a
    /// property's value as Graph listed it (`None` when absent or null).
    pub fn matches(&self, value: &dyn Fn(&str) -> Option<String>) -> bool {
        self.expr.matches(value)
    }

    /// How a listed device stands against the filter: matching, outside
    /// what Graph was sent (Graph did not apply it), or outside only the
    /// parts the client applies.
    pub fn classify(&self, value: &dyn Fn(&str) -> Option<String>) -> Listed {
        if self.expr.matches(value) {
            Listed::Matches
        } else if self.expr.graph_part().is_some_and(|g| !g.matches(value)) {
            Listed::NotAppliedByGraph
        } else {
            Listed::LeftOutByClient
        }
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
            Kind::Word(w) if ODATA_FUNCTIONS.contains(&w.to_ascii_lowercase().as_str()) => Err(FilterError(format!(
                "{w} at character {at} is OData not supported here; supported are contains(field,'text'), eq, ne, lt, gt, and, or and parentheses"
            ))),
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

    fn plan(text: &str) -> FilterPlan {
        DeviceFilter::parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .plan()
    }

    #[test]
    fn graph_is_sent_only_the_documented_comparisons_joined_by_and() {
        let p = plan("operatingSystem eq 'Windows' and model eq 'Surface Laptop 5'");
        assert_eq!(p.graph.as_deref(), Some("operatingSystem eq 'Windows'"));
        assert_eq!(p.client_only, ["model eq 'Surface Laptop 5'"]);
        let p = plan("model eq 'Surface Laptop 5'");
        assert_eq!((p.graph, p.client_only.len()), (None, 1));
        let p = plan(
            "contains(deviceName,'LAB') and lastSyncDateTime gt 2026-11-22T00:00:00Z and contains(osVersion,'19045')",
        );
        assert_eq!(
            p.graph.as_deref(),
            Some("contains(deviceName,'LAB') and lastSyncDateTime gt 2026-11-22T00:00:00Z")
        );
        assert_eq!(p.client_only, ["contains(osVersion,'19045')"]);
        let p = plan("operatingSystem eq 'Windows' and (jailBroken eq 'False' or deviceCategoryDisplayName eq 'Lab')");
        assert_eq!(p.graph.as_deref(), Some("operatingSystem eq 'Windows'"));
        assert_eq!(
            p.client_only,
            ["jailBroken eq 'False'", "deviceCategoryDisplayName eq 'Lab'"]
        );
        let p = plan("userPrincipalName ne 'kiosk@contoso.com' and enrolledDateTime lt 2026-01-01T00:00:00Z");
        assert_eq!(p.graph.as_deref(), Some("enrolledDateTime lt 2026-01-01T00:00:00Z"));
        for documented in [
            "deviceName eq 'A'",
            "contains(deviceName,'A')",
            "deviceCategoryDisplayName eq 'A'",
            "jailBroken eq 'True'",
            "enrolledDateTime gt 2026-01-01T00:00:00Z",
            "lastSyncDateTime lt 2026-01-01T00:00:00Z",
            "operatingSystem eq 'Windows'",
        ] {
            let p = plan(documented);
            assert_eq!(p.graph.as_deref(), Some(documented));
            assert!(p.client_only.is_empty(), "{documented}");
        }
    }

    #[test]
    fn the_client_evaluates_the_whole_filter() {
        let device = |name: &str| -> Option<String> {
            match name {
                "operatingSystem" => Some("Windows".into()),
                "model" => Some("Surface Laptop 5".into()),
                "deviceName" => Some("LAB-0042".into()),
                "lastSyncDateTime" => Some("2026-11-23T08:00:00.1234567Z".into()),
                "enrolledDateTime" => Some("0001-01-01T00:00:00Z".into()),
                "userPrincipalName" => Some("Kiosk@Contoso.com".into()),
                _ => None,
            }
        };
        let yes = |text: &str| DeviceFilter::parse(text).unwrap().matches(&device);
        assert!(yes("operatingSystem eq 'windows' and model eq 'Surface Laptop 5'"));
        assert!(!yes("operatingSystem eq 'Windows' and model eq 'Surface Laptop 4'"));
        assert!(yes(
            "contains(deviceName,'lab') and lastSyncDateTime gt 2026-11-23T07:59:59Z"
        ));
        assert!(!yes("lastSyncDateTime gt 2026-11-23T08:00:01Z"));
        assert!(yes("lastSyncDateTime lt 2026-11-23T08:00:01Z"));
        assert!(yes("enrolledDateTime lt 1990-01-01T00:00:00Z"));
        assert!(!yes("userPrincipalName ne 'kiosk@contoso.com'"));
        assert!(yes("userPrincipalName ne 'other@contoso.com'"));
        assert!(
            DeviceFilter::parse("userPrincipalName ne 'x'")
                .unwrap()
                .matches(&|_| None)
        );
        assert!(!yes("serialNumber eq 'x'") && !yes("contains(osVersion,'1')"));
        assert!(yes("manufacturer eq 'Dell' or operatingSystem eq 'Windows'"));
        assert!(!yes("managementAgent eq 'mdm' or complianceState eq 'compliant'"));
        assert_eq!(
            DeviceFilter::parse("model eq 'x' and (operatingSystem eq 'Windows' or imei eq '1')")
                .unwrap()
                .properties(),
            ["model", "operatingSystem", "imei"]
        );
    }

    #[test]
    fn instants_read_every_form_graph_writes() {
        assert_eq!(instant("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(instant("1970-01-01T01:00:00+01:00"), Some((0, 0)));
        assert_eq!(instant("1970-01-01T00:00:00.5Z"), Some((0, 500_000_000)));
        assert!(instant("0001-01-01T00:00:00Z").is_some_and(|(s, _)| s < 0));
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-22",
            "2026-11-22T00:00:00",
            "2026-11-22T00:00:00.Z",
        ] {
            assert_eq!(instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn known_odata_functions_are_refused_as_unsupported_not_as_properties() {
        for text in [
            "startswith(deviceName,'LAB')",
            "endswith(deviceName,'x')",
            "not (model eq 'x')",
        ] {
            let err = DeviceFilter::parse(text).unwrap_err();
            assert!(err.0.contains("not supported here"), "{text}: {err}");
            assert!(err.0.contains("contains(field,'text')"), "{text}: {err}");
            assert!(!err.0.contains("not a managedDevice property"), "{text}: {err}");
        }
    }

    #[test]
    fn error_names_the_offending_property() {
        let err = DeviceFilter::parse("secretField eq 'x'").unwrap_err();
        assert!(err.0.contains("secretField"), "{err}");
    }
}
