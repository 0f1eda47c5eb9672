//! Label and field selection of list and watch requests.

use labapi::query::Query;
use labapi::selector::{FieldSelector, LabelSelector};
use labapi::{ApiError, Kind};
use serde_json::Value;

/// The selectors of one request.
pub struct Selection {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Selection {
    /// From the request's query (namespace comes from the path, see [`Selection::in_namespace`]).
    pub fn from_query(kind: Kind, q: &Query) -> Result<Selection, ApiError> {
        let labels = q
            .label_selector
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(LabelSelector::parse)
            .transpose()?;
        let fields = match q.field_selector.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let f = FieldSelector::parse(s)?;
                f.validate(kind)?;
                Some(f)
            }
        };
        Ok(Selection {
            labels,
            fields,
            namespace: None,
            name: None,
        })
    }

    /// Restricts to one namespace (watches on a namespaced path).
    pub fn in_namespace(mut self, namespace: Option<&str>) -> Selection {
        self.namespace = namespace.map(str::to_string);
        self
    }

    /// Restricts to one object name (a watch on an item path).
    pub fn with_name(mut self, name: &str) -> Selection {
        self.name = Some(name.to_string());
        self
    }

    /// Whether the object is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && obj["metadata"]["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        if let Some(name) = &self.name
            && obj["metadata"]["name"].as_str() != Some(name)
        {
            return false;
        }
        let labels_ok = self.labels.as_ref().is_none_or(|l| l.matches_object(obj));
        labels_ok && self.fields.as_ref().is_none_or(|f| f.matches(obj))
    }
}

/// A `metav1.LabelSelector` in query-string form (`app=hello-world`), for Scale's status.
pub fn selector_string(selector: &Value) -> String {
    LabelSelector::from_match(selector)
        .map(|s| s.to_query_string())
        .unwrap_or_default()
}
