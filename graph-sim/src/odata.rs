//! The simulator's own `$filter` evaluator, written from Graph's documented
//! OData semantics rather than from any client's parser, so that a client
//! bug in rendering a filter shows up as a wrong selection or a 400 here.
//!
//! It understands what Graph accepts on `managedDevices` and a little more
//! (a server is more lenient than a client should be):
//! `eq ne lt le gt ge`, `and`, `or`, `not`, parentheses,
//! `startswith(p,'x')`, `endswith(p,'x')`, `contains(p,'x')`, string
//! literals with `''` escapes, `true`/`false`/`null`, numbers, and unquoted
//! date-time literals (`2026-11-22T00:00:00Z`). String comparison ignores
//! case, as Graph's does for these properties. Date-times compare as
//! instants, whatever their offset or precision.

use serde_json::Value;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `p op literal`.
    Cmp(String, Op, Lit),
    /// `startswith`, `endswith` or `contains`.
    Func(Func, String, String),
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// Negation.
    Not(Box<Expr>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `lt`
    Lt,
    /// `le`
    Le,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
}

/// A string function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `startswith`
    StartsWith,
    /// `endswith`
    EndsWith,
    /// `contains`
    Contains,
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `'text'`
    Str(String),
    /// A number.
    Num(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A date-time, as seconds since the epoch.
    DateTime(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
}

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | ':' | '_' | '/') => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '-' | '+' | '.' | ':' | '_' | '/'))
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek_word(&self) -> Option<&str> {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, want: Tok) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            other => Err(format!("expected {want:?}, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_word() == Some("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek_word() == Some("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_word() == Some("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.toks.get(self.at) == Some(&Tok::Open) {
            self.at += 1;
            let e = self.or()?;
            self.expect(Tok::Close)?;
            return Ok(e);
        }
        let Some(Tok::Word(name)) = self.next() else {
            return Err("expected a property or a function".into());
        };
        let func = match name.as_str() {
            "startswith" => Some(Func::StartsWith),
            "endswith" => Some(Func::EndsWith),
            "contains" => Some(Func::Contains),
            _ => None,
        };
        if let Some(func) = func {
            self.expect(Tok::Open)?;
            let Some(Tok::Word(prop)) = self.next() else {
                return Err(format!("{name}: expected a property"));
            };
            self.expect(Tok::Comma)?;
            let Some(Tok::Str(arg)) = self.next() else {
                return Err(format!("{name}: expected a string literal"));
            };
            self.expect(Tok::Close)?;
            return Ok(Expr::Func(func, prop, arg));
        }
        let op = match self.next() {
            Some(Tok::Word(w)) => match w.as_str() {
                "eq" => Op::Eq,
                "ne" => Op::Ne,
                "lt" => Op::Lt,
                "le" => Op::Le,
                "gt" => Op::Gt,
                "ge" => Op::Ge,
                other => return Err(format!("unknown operator {other:?}")),
            },
            other => return Err(format!("expected an operator after {name}, found {other:?}")),
        };
        let lit = match self.next() {
            Some(Tok::Str(s)) => Lit::Str(s),
            Some(Tok::Word(w)) => match w.as_str() {
                "true" => Lit::Bool(true),
                "false" => Lit::Bool(false),
                "null" => Lit::Null,
                _ => match (w.parse::<f64>(), datetime(&w)) {
                    (Ok(n), _) => Lit::Num(n),
                    (_, Some(t)) => Lit::DateTime(t),
                    _ => return Err(format!("{w:?} is not a literal")),
                },
            },
            other => return Err(format!("expected a literal, found {other:?}")),
        };
        Ok(Expr::Cmp(name, op, lit))
    }
}

/// Parses a `$filter` value.
pub fn parse(text: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: tokens(text)?,
        at: 0,
    };
    let e = p.or()?;
    if p.at != p.toks.len() {
        return Err(format!("unexpected {:?} after the expression", p.toks[p.at]));
    }
    Ok(e)
}

/// The properties an expression names, each once, in order.
pub fn properties(e: &Expr) -> Vec<String> {
    fn walk(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::Cmp(p, ..) | Expr::Func(_, p, _) => {
                if !out.iter().any(|o| o.eq_ignore_ascii_case(p)) {
                    out.push(p.clone());
                }
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                walk(a, out);
                walk(b, out);
            }
            Expr::Not(a) => walk(a, out),
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// Seconds since the epoch of an RFC 3339 date-time (`Z` or `±hh:mm`).
pub fn datetime(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &s[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            (format!("0.{}", &r[..n]).parse::<f64>().ok()?, &r[n..])
        }
        None => (0.0, rest),
    };
    let offset = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let m = z[1..3].parse::<i64>().ok()? * 60 + z[4..6].parse::<i64>().ok()?;
            if z.starts_with('-') { -m } else { m }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset * 60) as f64 + frac)
}

fn ordering(op: Op, ord: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    match (op, ord) {
        (Op::Eq, Some(Equal)) => true,
        (Op::Ne, o) => o != Some(Equal),
        (Op::Lt, Some(Less)) | (Op::Le, Some(Less | Equal)) => true,
        (Op::Gt, Some(Greater)) | (Op::Ge, Some(Greater | Equal)) => true,
        _ => false,
    }
}

/// Whether a device (its JSON as Graph lists it) matches.
pub fn matches(e: &Expr, device: &Value) -> bool {
    match e {
        Expr::And(a, b) => matches(a, device) && matches(b, device),
        Expr::Or(a, b) => matches(a, device) || matches(b, device),
        Expr::Not(a) => !matches(a, device),
        Expr::Func(f, prop, arg) => {
            let Some(Value::String(s)) = device.get(prop) else {
                return false;
            };
            let (s, arg) = (s.to_lowercase(), arg.to_lowercase());
            match f {
                Func::StartsWith => s.starts_with(&arg),
                Func::EndsWith => s.ends_with(&arg),
                Func::Contains => s.contains(&arg),
            }
        }
        Expr::Cmp(prop, op, lit) => {
            let actual = device.get(prop).unwrap_or(&Value::Null);
            let ord = match (lit, actual) {
                (Lit::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
                (Lit::Null, _) | (_, Value::Null) => None,
                (Lit::Str(want), Value::String(got)) => Some(got.to_lowercase().cmp(&want.to_lowercase())),
                (Lit::Bool(want), Value::Bool(got)) => Some(got.cmp(want)),
                (Lit::Num(want), Value::Number(got)) => got.as_f64().and_then(|g| g.partial_cmp(want)),
                (Lit::DateTime(want), Value::String(got)) => datetime(got).and_then(|g| g.partial_cmp(want)),
                _ => None,
            };
            ordering(*op, ord)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dev() -> Value {
        json!({"deviceName": "DEV-000042", "operatingSystem": "Windows", "isEncrypted": true,
               "lastSyncDateTime": "2026-11-20T10:00:00Z", "model": "Virtual Machine", "userId": null})
    }

    fn yes(f: &str) -> bool {
        matches(&parse(f).unwrap(), &dev())
    }

    #[test]
    fn documented_forms_evaluate_as_graph_describes() {
        assert!(yes("operatingSystem eq 'windows'"));
        assert!(!yes("operatingSystem ne 'Windows'"));
        assert!(yes("contains(model,'virtual')"));
        assert!(yes("startswith(deviceName,'dev-')") && yes("endswith(deviceName,'42')"));
        assert!(yes("lastSyncDateTime gt 2026-11-19T00:00:00Z"));
        assert!(!yes("lastSyncDateTime lt 2026-11-20T10:00:00Z"));
        assert!(yes("lastSyncDateTime ge 2026-11-20T11:00:00+01:00"));
        assert!(yes(
            "(operatingSystem eq 'macOS' or operatingSystem eq 'Windows') and isEncrypted eq true"
        ));
        assert!(yes("not (operatingSystem eq 'iOS')"));
        assert!(yes("userId eq null") && !yes("userId eq 'x'"));
        assert!(!yes("deviceName eq 'it''s'"));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in [
            "",
            "operatingSystem",
            "operatingSystem eq",
            "a eq 'x",
            "a like 'x'",
            "(a eq 'x'",
            "a eq 'x' b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn datetimes_are_instants() {
        assert_eq!(datetime("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(datetime("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(datetime("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(datetime("1970-01-01T00:00:00.5Z"), Some(0.5));
        assert_eq!(datetime("1970-13-01T00:00:00Z"), None);
    }
}
