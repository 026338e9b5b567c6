//! The safe OData subset accepted in `device_filter`.
//!
//! Grammar (keywords in lower case, as Graph writes them):
//! ```text
//! expr    := and ( "or" and )*
//! and     := term ( "and" term )*
//! term    := "(" expr ")"
//!          | field ("eq" | "ne") literal
//!          | "startswith(" field "," string ")"
//! literal := 'quoted string' ('' escapes a quote) | true | false | integer
//! ```
//! `field` is a property of the Graph `managedDevice` resource from a fixed
//! list. Anything else (functions, lambdas, `$` options, other operators) is
//! refused, and the accepted filter is re-written in a canonical form, so
//! nothing from the payload reaches the URL unparsed.

use std::fmt;

/// The longest filter text accepted.
pub const MAX_FILTER_LEN: usize = 1024;
/// The most comparisons one filter may hold.
pub const MAX_CLAUSES: usize = 32;
/// The deepest parenthesis nesting accepted.
pub const MAX_DEPTH: usize = 8;

/// Properties of `managedDevice` that may be filtered on.
pub const FILTERABLE_FIELDS: &[&str] = &[
    "id",
    "deviceName",
    "operatingSystem",
    "osVersion",
    "managementAgent",
    "managementState",
    "complianceState",
    "deviceEnrollmentType",
    "deviceRegistrationState",
    "managedDeviceOwnerType",
    "ownerType",
    "deviceType",
    "userId",
    "userPrincipalName",
    "userDisplayName",
    "emailAddress",
    "model",
    "manufacturer",
    "serialNumber",
    "azureADDeviceId",
    "azureActiveDirectoryDeviceId",
    "deviceCategoryDisplayName",
    "enrollmentProfileName",
    "joinType",
    "skuFamily",
    "isEncrypted",
    "isSupervised",
    "jailBroken",
    "partnerReportedThreatState",
    "managedDeviceName",
];

/// A literal value in a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A quoted string.
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterExpr {
    /// `field eq|ne literal`
    Compare {
        /// Canonical property name.
        field: &'static str,
        /// The operator.
        op: CompareOp,
        /// The value compared with.
        value: Literal,
    },
    /// `startswith(field,'prefix')`
    StartsWith {
        /// Canonical property name.
        field: &'static str,
        /// The prefix.
        prefix: String,
    },
    /// Both sides hold.
    And(Box<FilterExpr>, Box<FilterExpr>),
    /// Either side holds.
    Or(Box<FilterExpr>, Box<FilterExpr>),
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
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
        }
    }
}

impl fmt::Display for FilterExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterExpr::Compare { field, op, value } => {
                let op = match op {
                    CompareOp::Eq => "eq",
                    CompareOp::Ne => "ne",
                };
                write!(f, "{field} {op} {value}")
            }
            FilterExpr::StartsWith { field, prefix } => {
                write!(f, "startswith({field},{})", Literal::Str(prefix.clone()))
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
    Int(i64),
    Open,
    Close,
    Comma,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Word(w) => write!(f, "{w:?}"),
            Kind::Str(_) => f.write_str("a string"),
            Kind::Int(_) => f.write_str("a number"),
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
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|(_, d)| d.is_ascii_digit()) {
                    i += 1;
                }
                let lit: String = chars[start..i].iter().map(|(_, ch)| ch).collect();
                let n = lit
                    .parse::<i64>()
                    .map_err(|_| FilterError(format!("{lit:?} at character {at} is not a whole number")))?;
                out.push(Token { kind: Kind::Int(n), at });
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
                     properties, eq, ne, startswith(), and, or, parentheses and quoted literals"
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
            self.pos += 1;
            let right = self.and(depth)?;
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
            Kind::Word(w) if w == "startswith" => {
                self.count_clause(at)?;
                self.expect(Kind::Open, "\"(\" after startswith")?;
                let field = self.field()?;
                self.expect(Kind::Comma, "\",\"")?;
                let tok = self.next("a quoted prefix")?;
                let Kind::Str(prefix) = tok.kind.clone() else {
                    return Err(FilterError(format!(
                        "startswith takes a quoted string; found {} at character {}",
                        tok.kind, tok.at
                    )));
                };
                self.expect(Kind::Close, "\")\"")?;
                Ok(FilterExpr::StartsWith { field, prefix })
            }
            Kind::Word(_) => {
                self.count_clause(at)?;
                self.pos -= 1;
                let field = self.field()?;
                let tok = self.next("eq or ne")?;
                let op = match &tok.kind {
                    Kind::Word(w) if w == "eq" => CompareOp::Eq,
                    Kind::Word(w) if w == "ne" => CompareOp::Ne,
                    other => {
                        return Err(FilterError(format!(
                            "found {other} at character {}; only eq and ne compare values",
                            tok.at
                        )));
                    }
                };
                let tok = self.next("a literal")?;
                let value = match &tok.kind {
                    Kind::Str(s) => Literal::Str(s.clone()),
                    Kind::Int(n) => Literal::Int(*n),
                    Kind::Word(w) if w == "true" => Literal::Bool(true),
                    Kind::Word(w) if w == "false" => Literal::Bool(false),
                    other => {
                        return Err(FilterError(format!(
                            "found {other} at character {}; expected a quoted string, true, false or a number",
                            tok.at
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

    fn field(&mut self) -> Result<&'static str, FilterError> {
        let tok = self.next("a property name")?;
        let Kind::Word(name) = &tok.kind else {
            return Err(FilterError(format!(
                "found {} at character {} where a property name was expected",
                tok.kind, tok.at
            )));
        };
        FILTERABLE_FIELDS
            .iter()
            .find(|f| f.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| {
                FilterError(format!(
                    "{name:?} at character {} is not a filterable managedDevice property (for example operatingSystem, deviceName, managementAgent, complianceState)",
                    tok.at
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
    fn accepts_and_canonicalises_the_subset() {
        assert_eq!(
            canonical("operatingSystem eq 'Windows'"),
            "operatingSystem eq 'Windows'"
        );
        assert_eq!(
            canonical(
                "operatingsystem eq 'Windows'  and (managementAgent eq 'mdm' or startswith( deviceName , 'LAB-'))"
            ),
            "operatingSystem eq 'Windows' and (managementAgent eq 'mdm' or startswith(deviceName,'LAB-'))"
        );
        assert_eq!(canonical("deviceName eq 'O''Brien'"), "deviceName eq 'O''Brien'");
        assert_eq!(canonical("isEncrypted ne false"), "isEncrypted ne false");
        assert_eq!(
            canonical("model eq 1 or skuFamily eq 2"),
            "model eq 1 or skuFamily eq 2"
        );
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
            "contains(deviceName,'x')",
            "password eq 'x'",
            "operatingSystem eq 'unterminated",
            "operatingSystem eq Windows",
            "(operatingSystem eq 'Windows'",
            "operatingSystem eq 'Windows')",
            "not operatingSystem eq 'Windows'",
            "operatingSystem eq 'Windows' or/**/1 eq 1",
            "deviceName eq 'a\u{0}b'",
            "startswith(deviceName, 5)",
            "operatingSystem eq 'W' AND deviceName eq 'x'",
        ] {
            assert!(DeviceFilter::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let deep = format!("{}operatingSystem eq 'W'{}", "(".repeat(20), ")".repeat(20));
        assert!(DeviceFilter::parse(&deep).unwrap_err().0.contains("nest"));
        let many = vec!["model eq 'x'"; 40].join(" or ");
        assert!(DeviceFilter::parse(&many).unwrap_err().0.contains("comparisons"));
        assert!(DeviceFilter::parse(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn error_names_the_offending_property() {
        let err = DeviceFilter::parse("secretField eq 'x'").unwrap_err();
        assert!(err.0.contains("secretField"), "{err}");
    }
}
