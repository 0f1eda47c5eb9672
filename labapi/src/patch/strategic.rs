//! Strategic merge patch, following `k8s.io/apimachinery/pkg/util/strategicpatch`.
//!
//! Maps merge key by key and `null` deletes a key. Lists follow [`list_strategy`]: replaced,
//! merged by a key, or merged as a set. The patch's `$` directives steer the merge and never
//! reach the result:
//!
//! - `$patch: replace` in a map replaces the map; as a list element it replaces the list;
//! - `$patch: delete` in a map empties it; in a keyed list it deletes the entries with the
//!   element's key;
//! - `$retainKeys: [..]` drops the map's keys that are not listed;
//! - `$deleteFromPrimitiveList/<list>: [..]` removes those values from the list;
//! - `$setElementOrder/<list>: [..]` orders the merged list (see [`reorder`]).
//!
//! Upstream takes a patch value verbatim where the object has no such field yet, directives
//! and all, and relies on decoding into Go types to drop them. Objects here stay JSON, so
//! such values are merged into an empty map or list instead, which strips the directives and
//! the `null`s the same way decoding would.

use serde_json::{Map, Value};

use super::list_strategy::{ListStrategy, list_strategy};
use crate::resource::Kind;
use crate::status::ApiError;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge `patch` (a JSON object) to `target`.
pub(super) fn apply(kind: Kind, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let (Value::Object(original), Value::Object(patch)) = (target, patch) else {
        return Err(ApiError::bad_request(
            "strategic merge patch: the object and the patch must both be JSON objects",
        ));
    };
    let mut merger = Merger {
        kind,
        path: Vec::new(),
    };
    Ok(Value::Object(
        merger.merge_map(original.clone(), patch.clone())?,
    ))
}

struct Merger {
    kind: Kind,
    /// Field names from the root to the value being merged, `*` for a list element.
    path: Vec<String>,
}

impl Merger {
    fn merge_map(
        &mut self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
    ) -> Result<Map<String, Value>, ApiError> {
        if let Some(directive) = patch.remove(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => self.merge_map(Map::new(), patch),
                Some("delete") => Ok(Map::new()),
                _ => Err(self.error(format!("unknown patch type {directive} in a map"))),
            };
        }
        if let Some(keys) = patch.remove(RETAIN_KEYS) {
            self.retain_keys(&mut original, &patch, &keys)?;
        }

        let order_keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ORDER))
            .cloned()
            .collect();
        for key in order_keys {
            let order = patch.remove(&key).unwrap_or_default();
            let field = self.directive_target(&key, SET_ORDER)?;
            let list_patch = match patch.remove(&field) {
                // A null list is a deletion, left to the loop below.
                Some(Value::Null) => {
                    patch.insert(field, Value::Null);
                    continue;
                }
                other => other,
            };
            self.path.push(field.clone());
            let merged = self.ordered_list(original.get(&field), list_patch, &order);
            self.path.pop();
            if let Some(list) = merged? {
                original.insert(field, Value::Array(list));
            }
        }

        let delete_keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(DELETE_FROM))
            .cloned()
            .collect();
        for key in delete_keys {
            let field = self.directive_target(&key, DELETE_FROM)?;
            let Some(Value::Array(doomed)) = patch.remove(&key) else {
                return Err(self.error(format!("{key} must be a list of values")));
            };
            if let Some(Value::Array(list)) = original.get_mut(&field) {
                list.retain(|v| !doomed.contains(v));
            }
        }

        for (key, value) in patch {
            if key.starts_with('$') {
                return Err(self.error(format!("unknown directive {key:?}")));
            }
            if value.is_null() {
                original.remove(&key);
                continue;
            }
            self.path.push(key.clone());
            let merged = match (original.remove(&key), value) {
                (Some(Value::Object(o)), Value::Object(p)) => {
                    self.merge_map(o, p).map(Value::Object)
                }
                (Some(Value::Array(o)), Value::Array(p)) => self.merge_list(o, p).map(Value::Array),
                (_, value) => self.fresh(value),
            };
            self.path.pop();
            original.insert(key, merged?);
        }
        Ok(original)
    }

    /// A patch value for a field the object lacks (or holds with another JSON type).
    fn fresh(&mut self, value: Value) -> Result<Value, ApiError> {
        match value {
            Value::Object(p) => self.merge_map(Map::new(), p).map(Value::Object),
            Value::Array(p) => self.merge_list(Vec::new(), p).map(Value::Array),
            other => Ok(other),
        }
    }

    /// `fresh` for an element of the list at the current path.
    fn fresh_element(&mut self, value: Value) -> Result<Value, ApiError> {
        self.path.push("*".to_string());
        let value = self.fresh(value);
        self.path.pop();
        value
    }

    fn merge_list(
        &mut self,
        original: Vec<Value>,
        patch: Vec<Value>,
    ) -> Result<Vec<Value>, ApiError> {
        match self.strategy() {
            ListStrategy::Replace => patch.into_iter().map(|v| self.fresh_element(v)).collect(),
            ListStrategy::MergeSet => {
                if original.iter().chain(&patch).any(Value::is_object) {
                    return Err(self.error("objects in a list that has no merge key"));
                }
                Ok(merge_set(original, patch))
            }
            ListStrategy::MergeByKey(key) => {
                let objects = original
                    .iter()
                    .chain(&patch)
                    .filter(|v| v.is_object())
                    .count();
                if objects == 0 {
                    // Upstream merges a keyed list of primitives as a set.
                    Ok(merge_set(original, patch))
                } else if objects == original.len() + patch.len() {
                    self.merge_keyed(original, patch, key)
                } else {
                    Err(self.error("list elements are not all objects"))
                }
            }
        }
    }

    fn merge_keyed(
        &mut self,
        original: Vec<Value>,
        patch: Vec<Value>,
        key: &'static str,
    ) -> Result<Vec<Value>, ApiError> {
        let mut base = original;
        let mut plain = Vec::with_capacity(patch.len());
        let mut replace = false;
        for item in patch {
            let Some(directive) = item.get(DIRECTIVE) else {
                plain.push(item);
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    let Some(id) = item.get(key) else {
                        return Err(self.no_merge_key(&item, key));
                    };
                    base.retain(|o| o.get(key) != Some(id));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(self.error("merging lists cannot yet be specified in the patch"));
                }
                _ => {
                    return Err(self.error(format!("unknown patch type {directive} in a list")));
                }
            }
        }
        if replace {
            return plain.into_iter().map(|v| self.fresh_element(v)).collect();
        }

        let mut merged = base.clone();
        for item in plain.iter().cloned() {
            let Some(id) = item.get(key).cloned() else {
                return Err(self.no_merge_key(&item, key));
            };
            match merged.iter().position(|o| o.get(key) == Some(&id)) {
                Some(i) => {
                    let (Value::Object(existing), Value::Object(patch)) = (merged[i].take(), item)
                    else {
                        unreachable!("elements were checked to be objects");
                    };
                    self.path.push("*".to_string());
                    let element = self.merge_map(existing, patch);
                    self.path.pop();
                    merged[i] = Value::Object(element?);
                }
                None => merged.push(self.fresh_element(item)?),
            }
        }
        Ok(reorder(merged, &plain, &base, Some(key)))
    }

    /// Merges a list the patch orders with `$setElementOrder/<list>`. `None` when neither the
    /// object nor the patch has the list.
    fn ordered_list(
        &mut self,
        original: Option<&Value>,
        patch: Option<Value>,
        order: &Value,
    ) -> Result<Option<Vec<Value>>, ApiError> {
        let Value::Array(order) = order else {
            return Err(self.error("$setElementOrder must be a list"));
        };
        let original = match original {
            Some(Value::Array(list)) => Some(list.clone()),
            _ => None,
        };
        let patch = match patch {
            None => None,
            Some(Value::Array(list)) => Some(list),
            Some(_) => return Err(self.error("a list ordered by $setElementOrder must be a list")),
        };
        let key = match self.strategy() {
            ListStrategy::MergeByKey(key) => Some(key),
            _ => None,
        };
        if let Some(patch) = &patch {
            self.check_order(patch, order, key)?;
        }
        let base = original.clone().unwrap_or_default();
        let merged = match (original, patch) {
            (None, None) => return Ok(None),
            (Some(original), None) => original,
            (original, Some(patch)) => self.merge_list(original.unwrap_or_default(), patch)?,
        };
        Ok(Some(reorder(merged, order, &base, key)))
    }

    /// Upstream's check that the patch list names its elements in the order
    /// `$setElementOrder` gives and names no element that list leaves out.
    fn check_order(
        &self,
        patch: &[Value],
        order: &[Value],
        key: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut expected = order.iter();
        for item in patch.iter().filter(|v| v.get(DIRECTIVE).is_none()) {
            let id = identity(item, key);
            if id.is_none() || !expected.any(|o| identity(o, key) == id) {
                return Err(self.error(format!(
                    "the order in patch list {} doesn't match $setElementOrder list {}",
                    Value::from(patch.to_vec()),
                    Value::from(order.to_vec())
                )));
            }
        }
        Ok(())
    }

    fn retain_keys(
        &self,
        original: &mut Map<String, Value>,
        patch: &Map<String, Value>,
        keys: &Value,
    ) -> Result<(), ApiError> {
        let keys: Vec<&str> = match keys {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => return Err(self.error("$retainKeys must be a list of field names")),
        };
        let directive = |k: &str| k.starts_with(SET_ORDER) || k.starts_with(DELETE_FROM);
        if let Some((k, _)) = patch
            .iter()
            .find(|(k, v)| !v.is_null() && !directive(k) && !keys.contains(&k.as_str()))
        {
            return Err(self.error(format!(
                "field {k:?} is in the patch but not in $retainKeys"
            )));
        }
        original.retain(|k, _| keys.contains(&k.as_str()));
        Ok(())
    }

    fn directive_target(&self, key: &str, prefix: &str) -> Result<String, ApiError> {
        match key.strip_prefix(prefix) {
            Some(field) if !field.is_empty() => Ok(field.to_string()),
            _ => Err(self.error(format!("{key:?} names no field"))),
        }
    }

    fn strategy(&self) -> ListStrategy {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        list_strategy(self.kind, &path)
    }

    fn no_merge_key(&self, item: &Value, key: &str) -> ApiError {
        self.error(format!(
            "map: {item} does not contain declared merge key: {key}"
        ))
    }

    fn error(&self, message: impl std::fmt::Display) -> ApiError {
        let mut at = String::new();
        for segment in &self.path {
            if segment == "*" {
                at.push_str("[*]");
            } else {
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(segment);
            }
        }
        if at.is_empty() {
            ApiError::bad_request(format!("strategic merge patch: {message}"))
        } else {
            ApiError::bad_request(format!("strategic merge patch at {at}: {message}"))
        }
    }
}

/// Appends the patch's values that the list lacks, dropping duplicates, then orders the
/// result as upstream does.
fn merge_set(original: Vec<Value>, patch: Vec<Value>) -> Vec<Value> {
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for v in original.iter().chain(&patch) {
        if !merged.contains(v) {
            merged.push(v.clone());
        }
    }
    reorder(merged, &patch, &original, None)
}

/// Upstream's `normalizeElementOrder`: the elements `order` names come in that order; the
/// others keep the order they had in `server`, and go before a named element only where
/// `server` had them before it. So new elements come first unless an order is given, and
/// `$setElementOrder` puts the server-only elements that preceded its elements first.
fn reorder(merged: Vec<Value>, order: &[Value], server: &[Value], key: Option<&str>) -> Vec<Value> {
    let (mut named, mut rest): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| position(order, v, key).is_some());
    named.sort_by_key(|v| position(order, v, key));
    rest.sort_by_key(|v| position(server, v, key).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(named.len() + rest.len());
    let mut named = named.into_iter().peekable();
    let mut rest = rest.into_iter().peekable();
    while let (Some(r), Some(n)) = (rest.peek(), named.peek()) {
        let rest_first = matches!(
            (position(server, r, key), position(server, n, key)),
            (Some(ri), Some(ni)) if ri < ni
        );
        out.extend(if rest_first {
            rest.next()
        } else {
            named.next()
        });
    }
    out.extend(rest);
    out.extend(named);
    out
}

/// What identifies a list element: its merge key's value, or the value itself.
fn identity<'a>(value: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match (key, value) {
        (Some(key), Value::Object(map)) => map.get(key),
        _ => Some(value),
    }
}

fn position(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let id = identity(item, key)?;
    list.iter().position(|v| identity(v, key) == Some(id))
}
