//! Label selectors: the `labelSelector` query parameter, `metav1.LabelSelector` objects
//! (Deployments, ReplicaSets) and a Service's `spec.selector` map.

use std::fmt;

use serde_json::{Map, Value};

use crate::field::Cause;
use crate::status::ApiError;

/// How a requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `k=v` or `k==v`: the label is set to the value.
    Equals,
    /// `k!=v`: the label is absent or set to something else.
    NotEquals,
    /// `k in (a,b)`: the label is set to one of the values.
    In,
    /// `k notin (a,b)`: the label is absent or set to none of the values.
    NotIn,
    /// `k`: the label is set.
    Exists,
    /// `!k`: the label is absent.
    DoesNotExist,
}

/// One term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The comparison.
    pub operator: Operator,
    /// The values compared with, sorted and without duplicates; empty for `Exists` and
    /// `DoesNotExist`, one value for `Equals` and `NotEquals`.
    pub values: Vec<String>,
}

impl Requirement {
    fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, String> {
        validate_key(key)?;
        for (i, v) in values.iter().enumerate() {
            validate_value(v, i)?;
        }
        let mut values = values;
        values.sort();
        values.dedup();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => Err(
                "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
                    .to_string(),
            ),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => Err(
                "values: Invalid value: values set must be empty for exists and does not exist"
                    .to_string(),
            ),
            _ => Ok(Requirement {
                key: key.to_string(),
                operator,
                values,
            }),
        }
    }

    /// Whether labels (a `metadata.labels` map) satisfy this requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let label = labels.get(&self.key);
        let is_one_of = || {
            label
                .and_then(Value::as_str)
                .is_some_and(|v| self.values.iter().any(|w| w == v))
        };
        match self.operator {
            Operator::Equals | Operator::In => is_one_of(),
            Operator::NotEquals | Operator::NotIn => !is_one_of(),
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let values = self.values.join(",");
        match self.operator {
            Operator::Equals => write!(f, "{key}={values}"),
            Operator::NotEquals => write!(f, "{key}!={values}"),
            Operator::In => write!(f, "{key} in ({values})"),
            Operator::NotIn => write!(f, "{key} notin ({values})"),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A conjunction of label requirements. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that selects everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Parses the `labelSelector` query syntax: comma-separated `k=v`, `k==v`, `k!=v`,
    /// `k in (a,b)`, `k notin (a,b)`, `k` and `!k`, with any whitespace between tokens.
    ///
    /// Bad syntax, keys and values are 400 BadRequest, worded like kube-apiserver:
    /// `unable to parse requirement: found 'x', expected: '('`.
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        Parser::new(input)
            .selector()
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels` and `matchExpressions` with
    /// operators `In`, `NotIn`, `Exists`, `DoesNotExist`). `{}` selects everything.
    pub fn from_match(selector: &Value) -> Result<Self, String> {
        let Value::Object(selector) = selector else {
            return Err(format!(
                "a label selector must be an object, not {selector}"
            ));
        };
        let mut requirements = Vec::new();
        match selector.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Some(value) = value.as_str() else {
                        return Err(format!("matchLabels[{key}]: must be a string, not {value}"));
                    };
                    requirements.push(Requirement::new(
                        key,
                        Operator::Equals,
                        vec![value.to_string()],
                    )?);
                }
            }
            Some(other) => return Err(format!("matchLabels must be an object, not {other}")),
        }
        match selector.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(expressions)) => {
                for (i, e) in expressions.iter().enumerate() {
                    requirements
                        .push(expression(e).map_err(|m| format!("matchExpressions[{i}].{m}"))?);
                }
            }
            Some(other) => return Err(format!("matchExpressions must be a list, not {other}")),
        }
        Ok(LabelSelector::new(requirements))
    }

    /// The selector of a Service's `spec.selector`: every label must equal its value.
    ///
    /// An empty map gives the empty selector, which selects everything; a Service with no
    /// selector selects no Pods, so callers check [`LabelSelector::is_empty`] first.
    /// Values that are not strings, which Service validation rejects, compare as JSON text.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        let requirements = map
            .iter()
            .map(|(key, value)| Requirement {
                key: key.clone(),
                operator: Operator::Equals,
                values: vec![
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_string),
                ],
            })
            .collect();
        LabelSelector::new(requirements)
    }

    fn new(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector { requirements }
    }

    /// Whether the selector has no requirements, and so selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether labels (a `metadata.labels` map) satisfy every requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether an object's `metadata.labels` (none counting as empty) satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        // Not `Value::pointer`: it splits and unescapes the path on every call, and this runs
        // for every Pod event against every Service.
        match object.get("metadata").and_then(|m| m.get("labels")) {
            Some(Value::Object(labels)) => self.matches(labels),
            _ => self.matches(&Map::new()),
        }
    }

    /// The selector in query syntax, requirements sorted by key, as kube-apiserver renders
    /// it for the Scale subresource's `status.selector`: `app=hello-world,tier in (a,b)`.
    pub fn to_query_string(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// One `matchExpressions` entry.
fn expression(e: &Value) -> Result<Requirement, String> {
    let Some(key) = e.get("key").and_then(Value::as_str) else {
        return Err("key: Required value".to_string());
    };
    let operator = match e.get("operator").and_then(Value::as_str) {
        Some("In") => Operator::In,
        Some("NotIn") => Operator::NotIn,
        Some("Exists") => Operator::Exists,
        Some("DoesNotExist") => Operator::DoesNotExist,
        Some(other) => {
            return Err(format!(
                "operator: {other:?} is not a valid label selector operator"
            ));
        }
        None => return Err("operator: Required value".to_string()),
    };
    let values = match e.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("values: must be a list of strings")?,
        Some(_) => return Err("values: must be a list of strings".to_string()),
    };
    Requirement::new(key, operator, values)
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn validate_key(key: &str) -> Result<(), String> {
    let invalid = |detail: &str| Err(Cause::invalid("key", &Value::from(key), detail).to_string());
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return invalid("prefix part must be non-empty");
        }
        if !is_dns_subdomain(prefix) {
            return invalid(
                "prefix part must be a lowercase RFC 1123 subdomain: alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character",
            );
        }
    }
    if name.is_empty() {
        return invalid("name part must be non-empty");
    }
    if name.len() > 63 {
        return invalid("name part must be no more than 63 characters");
    }
    if !is_label_name(name) {
        return invalid(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// A label value: empty, or like a key's name part.
fn validate_value(value: &str, index: usize) -> Result<(), String> {
    let field = format!("values[{index}]");
    if value.len() > 63 {
        return Err(Cause::invalid(
            field,
            &Value::from(value),
            "must be no more than 63 characters",
        )
        .to_string());
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(Cause::invalid(
            field,
            &Value::from(value),
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        )
        .to_string());
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Open,
    Close,
    Comma,
    Greater,
    Less,
    End,
}

impl Token {
    /// The token as the user wrote it, for messages.
    fn text(&self) -> &str {
        match self {
            Token::Ident(s) => s,
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::Bang => "!",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
            Token::Greater => ">",
            Token::Less => "<",
            Token::End => "",
        }
    }

    /// The token where a value is expected, where `in` and `notin` are plain words.
    fn value(&self) -> Option<&str> {
        match self {
            Token::Ident(_) | Token::In | Token::NotIn => Some(self.text()),
            _ => None,
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(input: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if is_special(c) {
            chars.next();
            let token = match (c, chars.peek()) {
                ('=', Some('=')) => Token::DoubleEquals,
                ('!', Some('=')) => Token::NotEquals,
                ('=', _) => Token::Equals,
                ('!', _) => Token::Bang,
                ('(', _) => Token::Open,
                (')', _) => Token::Close,
                (',', _) => Token::Comma,
                ('>', _) => Token::Greater,
                _ => Token::Less,
            };
            if matches!(token, Token::DoubleEquals | Token::NotEquals) {
                chars.next();
            }
            tokens.push(token);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || is_special(c) {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push(match word.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Ident(word),
            });
        }
    }
    tokens.push(Token::End);
    tokens
}

/// The recursive-descent parser of apimachinery's `labels.Parse`, with its messages.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn new(input: &str) -> Self {
        Parser {
            tokens: lex(input),
            pos: 0,
        }
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    fn next(&mut self) -> Token {
        let token = self.tokens[self.pos].clone();
        if token != Token::End {
            self.pos += 1;
        }
        token
    }

    fn selector(&mut self) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        loop {
            match self.peek() {
                Token::End => break,
                t if t.value().is_some() || *t == Token::Bang => {}
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.text()
                    ));
                }
            }
            requirements.push(self.requirement()?);
            match self.next() {
                Token::End => break,
                Token::Comma => {
                    let t = self.peek();
                    if t.value().is_none() && *t != Token::Bang {
                        return Err(format!(
                            "found '{}', expected: identifier after ','",
                            t.text()
                        ));
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        t.text()
                    ));
                }
            }
        }
        Ok(LabelSelector::new(requirements))
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = *self.peek() == Token::Bang;
        if negated {
            self.next();
        }
        let key = match self.next() {
            t @ (Token::Ident(_) | Token::In | Token::NotIn) => t.text().to_string(),
            t => return Err(format!("found '{}', expected: identifier", t.text())),
        };
        if negated {
            return Requirement::new(&key, Operator::DoesNotExist, Vec::new());
        }
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Requirement::new(&key, Operator::Exists, Vec::new());
        }
        let (operator, values) = match self.next() {
            Token::Equals | Token::DoubleEquals => (Operator::Equals, self.exact_value()?),
            Token::NotEquals => (Operator::NotEquals, self.exact_value()?),
            Token::In => (Operator::In, self.value_set()?),
            Token::NotIn => (Operator::NotIn, self.value_set()?),
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=",
                    t.text()
                ));
            }
        };
        Requirement::new(&key, operator, values)
    }

    /// The value after `=`, `==` or `!=`; nothing there means the empty value.
    fn exact_value(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let t = self.next();
        match t.value() {
            Some(v) => Ok(vec![v.to_string()]),
            None => Err(format!("found '{}', expected: identifier", t.text())),
        }
    }

    /// `( v, v, ... )`, where an empty slot is the empty value.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        let t = self.next();
        if t != Token::Open {
            return Err(format!("found '{}', expected: '('", t.text()));
        }
        let mut values = Vec::new();
        let mut slot_filled = false;
        loop {
            let t = self.next();
            match (&t, t.value()) {
                (_, Some(v)) if !slot_filled => {
                    values.push(v.to_string());
                    slot_filled = true;
                }
                (Token::Comma, _) => {
                    if !slot_filled {
                        values.push(String::new());
                    }
                    slot_filled = false;
                }
                (Token::Close, _) => {
                    if !slot_filled {
                        values.push(String::new());
                    }
                    return Ok(values);
                }
                (Token::End, _) => return Err("found '', expected: ')'".to_string()),
                _ if slot_filled => {
                    return Err(format!("found '{}', expected: ',' or ')'", t.text()));
                }
                _ => {
                    return Err(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        t.text()
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn parse_error(s: &str) -> String {
        let e = LabelSelector::parse(s).expect_err(s);
        assert_eq!((e.code, e.reason), (400, "BadRequest"), "{s}");
        assert!(
            e.message.starts_with("unable to parse requirement: "),
            "{}",
            e.message
        );
        e.message
    }

    #[test]
    fn each_operator() {
        let web = labels(json!({ "app": "hello", "tier": "web" }));
        let db = labels(json!({ "app": "hello", "tier": "db" }));
        let bare = labels(json!({}));
        let cases: &[(&str, [bool; 3])] = &[
            ("tier=web", [true, false, false]),
            ("tier==web", [true, false, false]),
            ("tier!=web", [false, true, true]),
            ("tier in (web,cache)", [true, false, false]),
            ("tier notin (web,cache)", [false, true, true]),
            ("tier", [true, true, false]),
            ("!tier", [false, false, true]),
            ("app=hello,tier=db", [false, true, false]),
            ("", [true, true, true]),
        ];
        for (s, expected) in cases {
            let s = sel(s);
            assert_eq!(
                [s.matches(&web), s.matches(&db), s.matches(&bare)],
                *expected,
                "{s}"
            );
        }
    }

    #[test]
    fn whitespace_and_order_do_not_matter() {
        let a = sel("  tier in ( web , cache ) ,app = hello, ! gone ");
        let b = sel("!gone,app=hello,tier in (cache,web)");
        assert_eq!(a, b);
        assert_eq!(a.to_query_string(), "app=hello,!gone,tier in (cache,web)");
        // `in` and `notin` are ordinary words where a value is expected.
        let s = sel("mode in (in,notin),x=in");
        assert!(s.matches(&labels(json!({ "mode": "notin", "x": "in" }))));
    }

    #[test]
    fn empty_values() {
        let s = sel("a=,b in (,x)");
        assert!(s.matches(&labels(json!({ "a": "", "b": "" }))));
        assert!(s.matches(&labels(json!({ "a": "", "b": "x" }))));
        assert!(!s.matches(&labels(json!({ "a": "y", "b": "x" }))));
        assert_eq!(sel("k in ()").requirements()[0].values, [""]);
    }

    #[test]
    fn syntax_errors_name_the_bad_part() {
        assert!(parse_error("app in web").ends_with("found 'web', expected: '('"));
        assert!(parse_error("app in (a b)").ends_with("found 'b', expected: ',' or ')'"));
        assert!(parse_error("app in (a").ends_with("expected: ')'"));
        assert!(parse_error("app=a b=c").ends_with("found 'b', expected: ',' or 'end of string'"));
        assert!(parse_error("app=a,").ends_with("found '', expected: identifier after ','"));
        assert!(parse_error("=a").contains("found '=', expected: !, identifier"));
        assert!(parse_error("app>3").contains("found '>', expected: in, notin, =, ==, !="));
        assert!(parse_error("!app=x").contains("found '=', expected: ',' or 'end of string'"));
        assert!(parse_error("app=(x)").contains("found '(', expected: identifier"));
    }

    #[test]
    fn bad_keys_and_values() {
        let m = parse_error("-app=x");
        assert!(
            m.contains(r#"key: Invalid value: "-app": name part must"#),
            "{m}"
        );
        let m = parse_error("Example.com/app=x");
        assert!(m.contains("prefix part"), "{m}");
        let m = parse_error("app=x@y");
        assert!(m.contains(r#"values[0]: Invalid value: "x@y""#), "{m}");
        let long = "v".repeat(64);
        let m = parse_error(&format!("app={long}"));
        assert!(m.contains("no more than 63"), "{m}");
        assert!(LabelSelector::parse("app.kubernetes.io/name=x_y.z-1").is_ok());
    }

    #[test]
    fn from_match_expressions() {
        let s = LabelSelector::from_match(&json!({
            "matchLabels": { "app": "hello-world" },
            "matchExpressions": [
                { "key": "tier", "operator": "In", "values": ["web", "api"] },
                { "key": "canary", "operator": "DoesNotExist" },
                { "key": "env", "operator": "NotIn", "values": ["dev"] },
                { "key": "team", "operator": "Exists", "values": [] }
            ]
        }))
        .unwrap();
        assert_eq!(
            s.to_query_string(),
            "app=hello-world,!canary,env notin (dev),team,tier in (api,web)"
        );
        assert!(s.matches(&labels(
            json!({ "app": "hello-world", "tier": "web", "team": "a" })
        )));
        assert!(!s.matches(&labels(
            json!({ "app": "hello-world", "tier": "web", "team": "a", "canary": "1" })
        )));
        assert!(LabelSelector::from_match(&json!({})).unwrap().is_empty());

        let err = |v: Value| LabelSelector::from_match(&v).unwrap_err();
        assert!(
            err(json!({ "matchExpressions": [{ "key": "a", "operator": "Gt", "values": ["1"] }] }))
                .contains("\"Gt\" is not a valid label selector operator")
        );
        assert!(
            err(json!({ "matchExpressions": [{ "key": "a", "operator": "In" }] }))
                .contains("values set can't be empty")
        );
        assert!(err(json!({ "matchExpressions": [{ "key": "a", "operator": "Exists", "values": ["x"] }] }))
            .contains("must be empty"));
        assert!(err(json!({ "matchLabels": { "a": 1 } })).contains("must be a string"));
        assert!(err(json!(null)).contains("must be an object"));
    }

    #[test]
    fn service_selector_map() {
        let s = LabelSelector::from_map(&labels(json!({ "tier": "web", "app": "hello-world" })));
        assert_eq!(s.to_query_string(), "app=hello-world,tier=web");
        assert!(s.matches_object(&json!({ "metadata": {
            "labels": { "app": "hello-world", "tier": "web", "pod-template-hash": "abc" }
        }})));
        assert!(!s.matches_object(&json!({ "metadata": { "labels": { "app": "hello-world" } } })));
        assert!(!s.matches_object(&json!({ "metadata": {} })));
        assert!(LabelSelector::from_map(&Map::new()).is_empty());
    }

    #[test]
    fn query_string_round_trips() {
        for s in ["app=hello-world", "a!=b,c,!d,e in (f,g),h notin (i)"] {
            let parsed = sel(s);
            assert_eq!(sel(&parsed.to_query_string()), parsed);
        }
        assert_eq!(sel("b=2,a==1").to_query_string(), "a=1,b=2");
    }
}
