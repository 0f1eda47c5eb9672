//! Services and EndpointSlices read from YAML as `kubectl get -o yaml` prints them: one or
//! more documents, each an object or a `List` of objects. Other kinds are counted and skipped.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_yaml::Value;

/// The objects the dataplane uses, from a manifest.
#[derive(Debug, Default)]
pub struct Objects {
    /// The Services.
    pub services: Vec<Service>,
    /// The EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Kinds that were skipped, with how many of each.
    pub skipped: Vec<(String, usize)>,
}

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("document {document}{item}: {reason}", item = .item.map(|i| format!(", item {i}")).unwrap_or_default())]
pub struct ManifestError {
    /// 1-based document number.
    pub document: usize,
    /// 0-based index in a `List`'s items.
    pub item: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// Reads every Service and EndpointSlice in `text`.
pub fn parse(text: &str) -> Result<Objects, ManifestError> {
    let mut objects = Objects::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = serde::Deserialize::deserialize(doc).map_err(|e| ManifestError {
            document,
            item: None,
            reason: e.to_string(),
        })?;
        let value: Value = value;
        if value.is_null() {
            continue;
        }
        if kind(&value) == Some("List") || kind(&value).is_some_and(|k| k.ends_with("List")) {
            let items = value
                .get("items")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for (index, item) in items.into_iter().enumerate() {
                add(&mut objects, item, document, Some(index))?;
            }
        } else {
            add(&mut objects, value, document, None)?;
        }
    }
    Ok(objects)
}

fn kind(value: &Value) -> Option<&str> {
    value.get("kind").and_then(Value::as_str)
}

fn add(
    objects: &mut Objects,
    value: Value,
    document: usize,
    item: Option<usize>,
) -> Result<(), ManifestError> {
    let err = |reason: String| ManifestError {
        document,
        item,
        reason,
    };
    match kind(&value) {
        Some("Service") => objects
            .services
            .push(serde_yaml::from_value(value).map_err(|e| err(format!("Service: {e}")))?),
        Some("EndpointSlice") => objects
            .endpoint_slices
            .push(serde_yaml::from_value(value).map_err(|e| err(format!("EndpointSlice: {e}")))?),
        Some(other) => match objects.skipped.iter_mut().find(|(k, _)| k == other) {
            Some((_, n)) => *n += 1,
            None => objects.skipped.push((other.to_owned(), 1)),
        },
        None => return Err(err("not a Kubernetes object: it has no `kind`".into())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_documents_are_both_read() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nendpoints: []\nmetadata: {name: a-x}\n";
        let objects = parse(text).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.endpoint_slices.len(), 1);
        assert_eq!(objects.skipped, [("Deployment".to_owned(), 1)]);
    }

    #[test]
    fn errors_name_the_document_and_item() {
        let text = "kind: Service\nmetadata: {name: a}\napiVersion: v1\n---\nkind: List\nitems:\n- kind: Service\n  apiVersion: v1\n  spec: {ports: 7}\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("document 2, item 0: Service: "), "{err}");
        let err = parse("just: text\n").unwrap_err().to_string();
        assert_eq!(err, "document 1: not a Kubernetes object: it has no `kind`");
    }
}
