//! Field selectors: the `fieldSelector` query parameter.

use std::fmt;

use serde_json::Value;

use crate::resource::Kind;
use crate::status::ApiError;

/// How a field selector term compares a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOperator {
    /// `f=v` or `f==v`.
    Equals,
    /// `f!=v`.
    NotEquals,
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field, as a dotted path (`metadata.name`).
    pub field: String,
    /// The comparison.
    pub operator: FieldOperator,
    /// The value compared with, unescaped.
    pub value: String,
}

/// A conjunction of field terms. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// The fields each kind can be selected by, as kube-apiserver registers them.
///
/// Every kind takes `metadata.name`, and namespaced kinds `metadata.namespace`. Beyond
/// those: Namespaces `status.phase`; Nodes `spec.unschedulable`; Pods the node, phase, IP
/// and scheduling fields kubelets and kubectl select by; Services `spec.clusterIP` and
/// `spec.type`; Events the `involvedObject.*` fields, `reason`, `reportingComponent`,
/// `source` (the reporting component's `source.component`) and `type`; ReplicaSets
/// `status.replicas`.
pub fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Namespace => &["metadata.name", "status.phase"],
        Kind::Node => &["metadata.name", "spec.unschedulable"],
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Service => &[
            "metadata.name",
            "metadata.namespace",
            "spec.clusterIP",
            "spec.type",
        ],
        Kind::Event => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Kind::ReplicaSet => &["metadata.name", "metadata.namespace", "status.replicas"],
        Kind::Endpoints | Kind::EndpointSlice | Kind::Deployment => {
            &["metadata.name", "metadata.namespace"]
        }
    }
}

/// The value a field selector compares for `field` of `object`.
///
/// Fields are looked up by dotted path; a missing field is the empty string, except the
/// ones Kubernetes renders from a Go zero value. Strings compare as themselves, numbers and
/// booleans as their JSON text.
fn field_value(object: &Value, field: &str) -> String {
    let path = match field {
        "source" => "source.component",
        other => other,
    };
    let found = path.split('.').try_fold(object, |v, name| v.get(name));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => match field {
            "spec.unschedulable" | "spec.hostNetwork" => "false".to_string(),
            "status.replicas" => "0".to_string(),
            _ => String::new(),
        },
    }
}

impl FieldSelector {
    /// The selector that selects everything.
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Parses the `fieldSelector` query syntax: `f=v`, `f==v` and `f!=v` joined by `,`.
    ///
    /// A value may contain `\,`, `\=` and `\\`. Whitespace around fields and values is
    /// dropped (kube-apiserver would keep it and then fail to find the field). Terms that
    /// are not understood are 400 BadRequest with kube-apiserver's message.
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_terms(input) {
            if term.trim().is_empty() {
                continue;
            }
            let not_understood = || {
                ApiError::bad_request(format!(
                    "invalid selector: '{input}'; can't understand '{term}'"
                ))
            };
            let (field, operator, raw) = split_term(term).ok_or_else(not_understood)?;
            let field = field.trim();
            if field.is_empty() {
                return Err(not_understood());
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                operator,
                value: unescape(raw.trim())?,
            });
        }
        requirements.sort_by(|a, b| a.field.cmp(&b.field));
        Ok(FieldSelector { requirements })
    }

    /// Whether the selector has no terms, and so selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The terms, sorted by field.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// The value a `field=value` term requires, if there is one: lets a caller go straight
    /// to a single object for `metadata.name=x`.
    pub fn equality(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }

    /// Rejects fields `kind` cannot be selected by, with 400 BadRequest:
    /// `"spec.foo" is not a known field selector: only "metadata.name", "metadata.namespace"`.
    pub fn validate(&self, kind: Kind) -> Result<(), ApiError> {
        let known = supported_fields(kind);
        match self
            .requirements
            .iter()
            .find(|r| !known.contains(&r.field.as_str()))
        {
            None => Ok(()),
            Some(r) => {
                let only: Vec<String> = known.iter().map(|f| format!("{f:?}")).collect();
                Err(ApiError::bad_request(format!(
                    "{:?} is not a known field selector: only {}",
                    r.field,
                    only.join(", ")
                )))
            }
        }
    }

    /// Whether `object` satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let equal = field_value(object, &r.field) == r.value;
            match r.operator {
                FieldOperator::Equals => equal,
                FieldOperator::NotEquals => !equal,
            }
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match r.operator {
                FieldOperator::Equals => "=",
                FieldOperator::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", r.field, escape(&r.value))?;
        }
        Ok(())
    }
}

/// Splits at commas that are not escaped; escapes stay in the terms.
fn split_terms(input: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in input.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&input[start..]);
    terms
}

/// Splits a term at the first operator, as upstream does: fields have no escapes.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    const OPERATORS: [(&str, FieldOperator); 3] = [
        ("!=", FieldOperator::NotEquals),
        ("==", FieldOperator::Equals),
        ("=", FieldOperator::Equals),
    ];
    term.char_indices().find_map(|(i, _)| {
        OPERATORS.iter().find_map(|(op, operator)| {
            term[i..]
                .strip_prefix(op)
                .map(|rest| (&term[..i], *operator, rest))
        })
    })
}

fn unescape(raw: &str) -> Result<String, ApiError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    )));
                }
                None => {
                    return Err(ApiError::bad_request(
                        "invalid field selector: invalid escape sequence: \\",
                    ));
                }
            },
            ',' | '=' => {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: unescaped {c:?} in value {raw:?}"
                )));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sel(s: &str) -> FieldSelector {
        FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn pod(name: &str, node: Option<&str>, phase: &str) -> Value {
        let mut p = json!({
            "metadata": { "name": name, "namespace": "default" },
            "spec": {},
            "status": { "phase": phase }
        });
        if let Some(node) = node {
            p["spec"]["nodeName"] = json!(node);
        }
        p
    }

    #[test]
    fn each_operator() {
        let a = pod("a", Some("node-1"), "Running");
        let b = pod("b", None, "Pending");
        let cases: &[(&str, [bool; 2])] = &[
            ("metadata.name=a", [true, false]),
            ("metadata.name==a", [true, false]),
            ("metadata.name!=a", [false, true]),
            ("spec.nodeName=", [false, true]),
            ("spec.nodeName!=", [true, false]),
            (
                "status.phase!=Running,metadata.namespace=default",
                [false, true],
            ),
            ("", [true, true]),
        ];
        for (s, expected) in cases {
            let s = sel(s);
            assert_eq!([s.matches(&a), s.matches(&b)], *expected, "{s}");
        }
    }

    #[test]
    fn whitespace_and_order_do_not_matter() {
        let a = sel(" status.phase = Running ,metadata.name==a");
        let b = sel("metadata.name=a,status.phase=Running");
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "metadata.name=a,status.phase=Running");
        assert_eq!(a.equality("metadata.name"), Some("a"));
        assert_eq!(sel("metadata.name!=a").equality("metadata.name"), None);
        assert!(sel(",,").is_empty());
    }

    #[test]
    fn events_by_involved_object() {
        let event = json!({
            "metadata": { "name": "hello.17f", "namespace": "default" },
            "involvedObject": { "kind": "Pod", "name": "hello", "namespace": "default", "uid": "u-1" },
            "reason": "Scheduled",
            "type": "Normal",
            "source": { "component": "default-scheduler" }
        });
        let s = sel(
            "involvedObject.name=hello,involvedObject.namespace=default,involvedObject.kind=Pod,involvedObject.uid=u-1",
        );
        assert!(s.matches(&event));
        s.validate(Kind::Event).unwrap();
        assert!(sel("type=Normal,reason=Scheduled,source=default-scheduler").matches(&event));
        assert!(!sel("type=Warning").matches(&event));
        assert!(!sel("involvedObject.uid=u-2").matches(&event));
    }

    #[test]
    fn zero_values_and_non_strings() {
        let node = json!({ "metadata": { "name": "n" }, "spec": {} });
        assert!(sel("spec.unschedulable=false").matches(&node));
        let cordoned = json!({ "metadata": { "name": "n" }, "spec": { "unschedulable": true } });
        assert!(sel("spec.unschedulable=true").matches(&cordoned));
        let rs = json!({ "metadata": { "name": "r" }, "status": { "replicas": 3 } });
        assert!(sel("status.replicas=3").matches(&rs));
        assert!(sel("status.replicas=0").matches(&json!({ "metadata": {} })));
        let svc = json!({ "spec": { "type": "NodePort" } });
        assert!(sel("spec.type=NodePort").matches(&svc));
    }

    #[test]
    fn escapes() {
        let s = sel(r"metadata.name=a\,b\=c\\d");
        assert_eq!(s.requirements()[0].value, r"a,b=c\d");
        assert!(s.matches(&json!({ "metadata": { "name": r"a,b=c\d" } })));
        assert_eq!(sel(&s.to_string()), s);
    }

    #[test]
    fn syntax_errors() {
        let bad = |s: &str| {
            let e = FieldSelector::parse(s).expect_err(s);
            assert_eq!((e.code, e.reason), (400, "BadRequest"), "{s}");
            e.message
        };
        assert_eq!(
            bad("metadata.name"),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            bad("a=b,=c"),
            "invalid selector: 'a=b,=c'; can't understand '=c'"
        );
        assert!(bad("a=b=c").contains("unescaped '='"));
        assert!(bad(r"a=b\x").contains(r"invalid escape sequence: \x"));
    }

    #[test]
    fn unknown_fields_are_rejected_per_kind() {
        let e = sel("spec.nodeName=n")
            .validate(Kind::Deployment)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(
            e.message,
            r#""spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace""#
        );
        sel("spec.nodeName=n,status.phase=Running")
            .validate(Kind::Pod)
            .unwrap();
        sel("spec.type=ClusterIP").validate(Kind::Service).unwrap();
        let e = sel("metadata.namespace=x")
            .validate(Kind::Node)
            .unwrap_err();
        assert!(
            e.message
                .starts_with(r#""metadata.namespace" is not a known field selector"#)
        );
        for info in Kind::all() {
            let fields = supported_fields(info.kind);
            assert_eq!(fields[0], "metadata.name");
            assert_eq!(
                fields.contains(&"metadata.namespace"),
                info.namespaced,
                "{info:?}"
            );
            FieldSelector::everything().validate(info.kind).unwrap();
        }
    }
}
