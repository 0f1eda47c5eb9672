//! Field errors in Kubernetes' own wording (`k8s.io/apimachinery/pkg/util/validation/field`).

use std::fmt;

use serde_json::Value;

/// What kind of problem a field has; the `reason` of a `metav1.StatusCause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseReason {
    /// The value is malformed or out of range.
    Invalid,
    /// A required value is missing.
    Required,
    /// The value is not one of a fixed set.
    NotSupported,
    /// The value repeats one that must be unique.
    Duplicate,
    /// The field may not be set (or changed) here.
    Forbidden,
    /// The value is longer than allowed.
    TooLong,
}

impl CauseReason {
    /// The string Kubernetes puts in `details.causes[].reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            CauseReason::Invalid => "FieldValueInvalid",
            CauseReason::Required => "FieldValueRequired",
            CauseReason::NotSupported => "FieldValueNotSupported",
            CauseReason::Duplicate => "FieldValueDuplicate",
            CauseReason::Forbidden => "FieldValueForbidden",
            CauseReason::TooLong => "FieldValueTooLong",
        }
    }
}

/// One field error: the path (`spec.ports[0].port`) and the body Kubernetes prints after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The kind of problem.
    pub reason: CauseReason,
    /// The field path, as in `spec.ports[0].port`.
    pub field: String,
    /// The text after the path, as in `Invalid value: 70000: must be between 1 and 65535, inclusive`.
    pub message: String,
}

/// Formats a value the way apimachinery's field errors do: strings quoted, numbers bare.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

impl Cause {
    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl fmt::Display) -> Self {
        Cause {
            reason: CauseReason::Invalid,
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", value_text(value)),
        }
    }

    /// `Required value` (with `: <detail>` when given).
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: CauseReason::Required,
            field: field.into(),
            message,
        }
    }

    /// `Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: CauseReason::NotSupported,
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                value_text(value),
                list.join(", ")
            ),
        }
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Cause {
            reason: CauseReason::Duplicate,
            field: field.into(),
            message: format!("Duplicate value: {}", value_text(value)),
        }
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: impl fmt::Display) -> Self {
        Cause {
            reason: CauseReason::Forbidden,
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    /// `Too long: may not be more than <max> bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause {
            reason: CauseReason::TooLong,
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
