//! Filter expressions: the small language of `filter:` and of alert `when:` rules.
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | primary
//! primary := "(" expr ")"
//!          | "exists" "(" FIELD ")"
//!          | FIELD ("==" | "!=" | "<" | "<=" | ">" | ">=") LITERAL
//!          | FIELD ("=~" | "!~") STRING
//! LITERAL := STRING | NUMBER | true | false
//! STRING  := "..." | '...'   (escapes: \" \' \\ \n \t)
//! FIELD   := [A-Za-z_@][A-Za-z0-9_.@-]*   (dotted names reach into nested JSON)
//! ```
//!
//! Semantics, chosen so that a filter never fails at run time:
//! - A comparison with a number literal compares numerically; a value that is not a number makes
//!   it false. A comparison with a string literal compares the text.
//! - A comparison on a missing field is false, `!=` included: `level != "debug"` keeps only records
//!   that have a level. Write `not (level == "debug")` to keep records without one too.
//! - `=~` is an unanchored regex search (Rust `regex` syntax), `!~` its negation (false when missing).
//!
//! Parse errors carry the 1-based column in the expression; they are raised while the config is
//! deserialized, so `ferry check` also names the file, line and column of the expression.

use regex::Regex;
use std::cmp::Ordering;
use std::fmt;

/// A value a filter looks at: text from a log record, or a number from a window result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    Str(&'a str),
    Num(f64),
}

/// An expression that did not parse: what was wrong and at which 1-based column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    pub column: usize,
    pub message: String,
}

/// A parsed, validated expression. Fields are numbered in order of first appearance; see
/// [`Filter::fields`].
#[derive(Clone)]
pub struct Filter {
    source: String,
    fields: Vec<String>,
    root: Expr,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({:?})", self.source)
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
enum Literal {
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Exists(usize),
    Cmp(usize, CmpOp, Literal),
    Match(usize, Regex, bool),
}

impl Filter {
    /// Parses `source`. The error's column is 1-based, in characters.
    pub fn parse(source: &str) -> Result<Self, FilterError> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            fields: Vec::new(),
            end_col: source.chars().count() + 1,
        };
        let root = p.expr()?;
        if let Some(t) = p.peek() {
            return Err(FilterError {
                column: t.col,
                message: format!("unexpected {} after a complete expression", t.kind),
            });
        }
        Ok(Filter {
            source: source.to_owned(),
            fields: p.fields,
            root,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field names the expression reads; index `i` is what `lookup(i)` is asked for.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Evaluates the expression; `lookup(i)` returns the value of `self.fields()[i]`, if present.
    pub fn eval<'a>(&self, lookup: &impl Fn(usize) -> Option<Val<'a>>) -> bool {
        eval(&self.root, lookup)
    }
}

fn eval<'a>(e: &Expr, lookup: &impl Fn(usize) -> Option<Val<'a>>) -> bool {
    match e {
        Expr::And(a, b) => eval(a, lookup) && eval(b, lookup),
        Expr::Or(a, b) => eval(a, lookup) || eval(b, lookup),
        Expr::Not(a) => !eval(a, lookup),
        Expr::Exists(f) => lookup(*f).is_some(),
        Expr::Cmp(f, op, lit) => match lookup(*f) {
            None => false,
            Some(v) => compare(v, *op, lit),
        },
        Expr::Match(f, re, negate) => match lookup(*f) {
            None => false,
            Some(Val::Str(s)) => re.is_match(s) != *negate,
            Some(Val::Num(n)) => re.is_match(&n.to_string()) != *negate,
        },
    }
}

fn compare(v: Val<'_>, op: CmpOp, lit: &Literal) -> bool {
    let ord = match (v, lit) {
        (Val::Num(n), Literal::Num(l)) => n.partial_cmp(l),
        (Val::Str(s), Literal::Num(l)) => match s.trim().parse::<f64>() {
            Ok(n) => n.partial_cmp(l),
            Err(_) => None,
        },
        (Val::Str(s), Literal::Str(l)) => Some(s.cmp(l.as_str())),
        (Val::Num(n), Literal::Str(l)) => match l.trim().parse::<f64>() {
            Ok(ln) => n.partial_cmp(&ln),
            Err(_) => Some(n.to_string().as_str().cmp(l.as_str())),
        },
    };
    let Some(ord) = ord else { return false };
    match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    LParen,
    RParen,
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Op(o) => write!(f, "`{o}`"),
        }
    }
}

struct Token {
    kind: Tok,
    col: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |col: usize, message: String| FilterError {
        column: col,
        message,
    };
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push(Token {
                    kind: Tok::LParen,
                    col,
                });
                i += 1;
            }
            ')' => {
                out.push(Token {
                    kind: Tok::RParen,
                    col,
                });
                i += 1;
            }
            '"' | '\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&ch) = chars.get(i) else {
                        return Err(err(col, "unterminated string".into()));
                    };
                    i += 1;
                    if ch == quote {
                        break;
                    }
                    if ch == '\\' {
                        let Some(&e) = chars.get(i) else {
                            return Err(err(col, "unterminated string".into()));
                        };
                        i += 1;
                        match e {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            '\\' | '"' | '\'' => s.push(e),
                            // Keep unknown escapes as written: regexes need `\d`, `\.`, ...
                            other => {
                                s.push('\\');
                                s.push(other);
                            }
                        }
                    } else {
                        s.push(ch);
                    }
                }
                out.push(Token {
                    kind: Tok::Str(s),
                    col,
                });
            }
            '=' | '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('=', Some('=')) => ("==", 2),
                    ('=', Some('~')) => ("=~", 2),
                    ('!', Some('=')) => ("!=", 2),
                    ('!', Some('~')) => ("!~", 2),
                    ('<', Some('=')) => ("<=", 2),
                    ('>', Some('=')) => (">=", 2),
                    ('<', _) => ("<", 1),
                    ('>', _) => (">", 1),
                    ('=', _) => return Err(err(col, "`=` is not an operator; write `==`".into())),
                    _ => {
                        return Err(err(
                            col,
                            "`!` is not an operator; write `not` or `!=`".into(),
                        ));
                    }
                };
                out.push(Token {
                    kind: Tok::Op(op),
                    col,
                });
                i += len;
            }
            '&' | '|' => {
                let word = if c == '&' { "and" } else { "or" };
                return Err(err(col, format!("unexpected `{c}`; write `{word}`")));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || ((chars[i] == '-' || chars[i] == '+')
                            && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n: f64 = text
                    .parse()
                    .map_err(|_| err(col, format!("invalid number `{text}`")))?;
                out.push(Token {
                    kind: Tok::Num(n),
                    col,
                });
            }
            c if c.is_alphabetic() || c == '_' || c == '@' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '@' | '-'))
                {
                    i += 1;
                }
                out.push(Token {
                    kind: Tok::Ident(chars[start..i].iter().collect()),
                    col,
                });
            }
            other => return Err(err(col, format!("unexpected character `{other}`"))),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    fields: Vec<String>,
    end_col: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self, what: &str) -> Result<&Token, FilterError> {
        let col = self.end_col;
        let t = self.tokens.get(self.pos).ok_or_else(|| FilterError {
            column: col,
            message: format!("expected {what}, found the end of the expression"),
        })?;
        self.pos += 1;
        Ok(t)
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Tok::Ident(w), .. }) if w == word)
    }

    fn expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while self.is_keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        while self.is_keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.is_keyword("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn field_index(&mut self, name: &str) -> usize {
        match self.fields.iter().position(|f| f == name) {
            Some(i) => i,
            None => {
                self.fields.push(name.to_owned());
                self.fields.len() - 1
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        let t = self.next("a field, `not`, `exists(...)` or `(`")?;
        let col = t.col;
        match t.kind.clone() {
            Tok::LParen => {
                let e = self.expr()?;
                match self.next("`)`")? {
                    Token {
                        kind: Tok::RParen, ..
                    } => Ok(e),
                    t => Err(FilterError {
                        column: t.col,
                        message: format!("expected `)`, found {}", t.kind),
                    }),
                }
            }
            Tok::Ident(w) if matches!(w.as_str(), "and" | "or" | "true" | "false") => {
                Err(FilterError {
                    column: col,
                    message: format!("expected a field name, found keyword `{w}`"),
                })
            }
            Tok::Ident(w) if w == "exists" => {
                self.expect_paren(true)?;
                let t = self.next("a field name")?;
                let name = match &t.kind {
                    Tok::Ident(n) => n.clone(),
                    other => {
                        return Err(FilterError {
                            column: t.col,
                            message: format!("expected a field name, found {other}"),
                        });
                    }
                };
                self.expect_paren(false)?;
                Ok(Expr::Exists(self.field_index(&name)))
            }
            Tok::Ident(name) => {
                let t = self.next("an operator (== != < <= > >= =~ !~)")?;
                let (op, op_col) = match t.kind {
                    Tok::Op(o) => (o, t.col),
                    ref other => {
                        return Err(FilterError {
                            column: t.col,
                            message: format!(
                                "expected an operator (== != < <= > >= =~ !~) after `{name}`, found {other}"
                            ),
                        });
                    }
                };
                let lit_tok = self.next("a string or number")?;
                let lit_col = lit_tok.col;
                let lit = match &lit_tok.kind {
                    Tok::Str(s) => Literal::Str(s.clone()),
                    Tok::Num(n) => Literal::Num(*n),
                    Tok::Ident(b) if b == "true" || b == "false" => Literal::Str(b.clone()),
                    other => {
                        return Err(FilterError {
                            column: lit_col,
                            message: format!(
                                "expected a string or number after `{op}`, found {other} (quote strings: \"...\")"
                            ),
                        });
                    }
                };
                let field = self.field_index(&name);
                if op == "=~" || op == "!~" {
                    let Literal::Str(pattern) = lit else {
                        return Err(FilterError {
                            column: lit_col,
                            message: format!("`{op}` needs a regex in quotes"),
                        });
                    };
                    let re = Regex::new(&pattern).map_err(|e| FilterError {
                        column: lit_col,
                        message: format!(
                            "invalid regex: {}",
                            e.to_string().lines().last().unwrap_or("")
                        ),
                    })?;
                    return Ok(Expr::Match(field, re, op == "!~"));
                }
                let cmp = match op {
                    "==" => CmpOp::Eq,
                    "!=" => CmpOp::Ne,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    ">=" => CmpOp::Ge,
                    other => {
                        return Err(FilterError {
                            column: op_col,
                            message: format!("unknown operator `{other}`"),
                        });
                    }
                };
                Ok(Expr::Cmp(field, cmp, lit))
            }
            other => Err(FilterError {
                column: col,
                message: format!("expected a field, `not`, `exists(...)` or `(`, found {other}"),
            }),
        }
    }

    fn expect_paren(&mut self, open: bool) -> Result<(), FilterError> {
        let (want, name) = if open {
            (Tok::LParen, "`(`")
        } else {
            (Tok::RParen, "`)`")
        };
        let t = self.next(name)?;
        if t.kind == want {
            Ok(())
        } else {
            Err(FilterError {
                column: t.col,
                message: format!("expected {name}, found {}", t.kind),
            })
        }
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Filter::parse(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid expression {s:?} at column {} of the expression: {}",
                e.column, e.message
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(expr: &str, rec: &[(&str, &str)]) -> bool {
        let f = Filter::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let m: HashMap<&str, &str> = rec.iter().copied().collect();
        f.eval(&|i| m.get(f.fields()[i].as_str()).map(|v| Val::Str(v)))
    }

    #[test]
    fn comparisons_and_logic() {
        let r = [("level", "error"), ("status", "503"), ("path", "/api/v1/x")];
        assert!(run(r#"level == "error""#, &r));
        assert!(!run(r#"level != "error""#, &r));
        assert!(run("status >= 500 and status < 600", &r));
        assert!(!run("status > 503", &r));
        assert!(run("status <= 503", &r));
        assert!(run(r#"level == "info" or status == 503"#, &r));
        assert!(run(r#"not (level == "info")"#, &r));
        assert!(run(r#"path =~ "^/api/v\d+/""#, &r));
        assert!(run(r#"path !~ "^/health""#, &r));
        assert!(run("exists(status) and not exists(user)", &r));
        // `and` binds tighter than `or`.
        assert!(run(
            r#"level == "info" and status == 1 or level == "error""#,
            &r
        ));
        assert!(!run(
            r#"level == "info" and (status == 1 or level == "error")"#,
            &r
        ));
    }

    #[test]
    fn missing_and_non_numeric_values_are_false() {
        let r = [("level", "warn"), ("latency", "n/a")];
        assert!(!run(r#"user == "x""#, &r));
        assert!(!run(r#"user != "x""#, &r));
        assert!(!run("latency > 1", &r));
        assert!(!run("latency <= 1", &r));
        assert!(run(r#"not (user == "x")"#, &r));
        // Strings compare as text.
        assert!(run(r#"level > "info""#, &r));
    }

    #[test]
    fn numbers_from_results() {
        let f = Filter::parse("count > 100 and p99 <= 2.5e2").unwrap();
        let vals = [150.0, 250.0];
        assert!(f.eval(&|i| Some(Val::Num(vals[i]))));
        let vals = [150.0, 250.5];
        assert!(!f.eval(&|i| Some(Val::Num(vals[i]))));
        assert_eq!(f.fields(), ["count", "p99"]);
    }

    #[test]
    fn bad_syntax_names_the_column() {
        let cases = [
            ("level = \"x\"", 7, "write `==`"),
            ("level == ", 10, "end of the expression"),
            ("(level == 1", 12, "expected `)`"),
            ("level == 1 )", 12, "unexpected `)`"),
            ("status > 5xx", 10, "invalid number"),
            ("a == \"unterminated", 6, "unterminated"),
            ("path =~ \"(\"", 9, "invalid regex"),
            ("level && x", 7, "write `and`"),
            ("level == error", 10, "quote strings"),
            ("exists level", 8, "expected `(`"),
            ("a == 1 and", 11, "end of the expression"),
            ("", 1, "end of the expression"),
            ("a =~ 5", 6, "needs a regex"),
            ("a == 1 b == 2", 8, "after a complete expression"),
            ("#", 1, "unexpected character"),
        ];
        for (src, col, msg) in cases {
            let e = Filter::parse(src).expect_err(src);
            assert_eq!(e.column, col, "{src}: {e}");
            assert!(e.message.contains(msg), "{src}: {e}");
        }
    }
}
