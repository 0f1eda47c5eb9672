//! The API verbs over the store: get, list, create, update, patch, delete and the scale
//! subresource. No HTTP here; `http.rs` turns requests into these calls.

use std::sync::Arc;

use labapi::decode::{FieldValidation, decode};
use labapi::patch::{PatchType, apply_patch};
use labapi::path::ResourcePath;
use labapi::query::Query;
use labapi::{ApiError, Kind};
use serde_json::{Value, json};

use super::Api;
use super::admission::{self, stamp_create, stamp_update};
use super::select::Selection;
use crate::store::{ModifyError, StoreError, object_rv};

/// A list answer: the page of items, the resourceVersion it was read at, and paging state.
pub struct ListPage {
    /// Items, sorted by namespace and name.
    pub items: Vec<Arc<Value>>,
    /// The store's resourceVersion when read.
    pub resource_version: u64,
    /// Token for the next page, if there is one.
    pub continue_token: Option<String>,
    /// How many items follow this page.
    pub remaining: Option<usize>,
}

/// A write's answer: the object and warnings for `Warning` headers.
pub struct Written {
    /// The stored (or, for dry runs, the would-be) object.
    pub object: Value,
    /// Warnings (unknown fields under `fieldValidation=Warn`).
    pub warnings: Vec<String>,
    /// Whether the object was created (201) rather than changed (200).
    pub created: bool,
}

fn store_error(e: StoreError, kind: Kind, name: &str) -> ApiError {
    let info = kind.info();
    match e {
        StoreError::NotFound => ApiError::not_found(info, name),
        StoreError::AlreadyExists => ApiError::already_exists(info, name),
        StoreError::Conflict => ApiError::conflict(info, name),
        StoreError::Gone { requested, oldest } => ApiError::gone(requested, oldest),
        other => ApiError::internal(other.to_string()),
    }
}

fn name_of(p: &ResourcePath) -> &str {
    p.name.as_deref().unwrap_or("")
}

fn ns_of(p: &ResourcePath) -> &str {
    if p.kind.info().namespaced {
        p.namespace.as_deref().unwrap_or("default")
    } else {
        ""
    }
}

/// Continue tokens carry the last key of the page and the resourceVersion of the first page.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    format!("{rv}:{ns}:{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .ok_or(())
                .and_then(|h| u8::from_str_radix(h, 16).map_err(|_| ()))
        })
        .collect();
    let text = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ':');
    let (_rv, ns, name) = (
        parts.next(),
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    Ok((ns.to_string(), name.to_string()))
}

impl Api {
    /// GET of one object.
    pub fn get(&self, p: &ResourcePath) -> Result<Arc<Value>, ApiError> {
        self.store
            .get(p.kind, ns_of(p), name_of(p))
            .ok_or_else(|| ApiError::not_found(p.kind.info(), name_of(p)))
    }

    /// LIST with selectors and paging.
    pub fn list(&self, p: &ResourcePath, q: &Query) -> Result<ListPage, ApiError> {
        let selection = Selection::from_query(p.kind, q)?;
        let (all, rv) = self.store.list(
            p.kind,
            p.namespace.as_deref().filter(|_| p.kind.info().namespaced),
        );
        let after = q
            .continue_token
            .as_deref()
            .map(decode_continue)
            .transpose()?;
        let mut items: Vec<Arc<Value>> = all
            .into_iter()
            .filter(|o| match &after {
                None => true,
                Some((ns, name)) => {
                    let key = (
                        o["metadata"]["namespace"].as_str().unwrap_or(""),
                        o["metadata"]["name"].as_str().unwrap_or(""),
                    );
                    key > (ns.as_str(), name.as_str())
                }
            })
            .filter(|o| selection.matches(o))
            .collect();
        let (mut continue_token, mut remaining) = (None, None);
        if q.limit > 0 && items.len() > q.limit {
            remaining = Some(items.len() - q.limit);
            items.truncate(q.limit);
            let last = items.last().expect("limit > 0");
            continue_token = Some(encode_continue(
                rv,
                last["metadata"]["namespace"].as_str().unwrap_or(""),
                last["metadata"]["name"].as_str().unwrap_or(""),
            ));
        }
        Ok(ListPage {
            items,
            resource_version: rv,
            continue_token,
            remaining,
        })
    }

    fn check_namespace(&self, kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
        if !kind.info().namespaced {
            return Ok(());
        }
        let Some(namespace) = self.store.get(Kind::Namespace, "", ns) else {
            return Err(ApiError::namespace_not_found(ns));
        };
        if namespace["status"]["phase"] == "Terminating" {
            return Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    kind.info().qualified_plural()
                ),
                details: None,
            });
        }
        Ok(())
    }

    /// Defaults, validates and (for Services) allocates; the shared tail of every write.
    fn admit(&self, kind: Kind, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        labapi::defaults::apply_defaults(kind, obj);
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        // Update validation includes the object's own validation.
        let causes = match old {
            Some(old) => labapi::validate::validate_update(kind, old, obj),
            None => labapi::validate::validate(kind, obj),
        };
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind.info(), &name, &causes));
        }
        if kind == Kind::Service {
            admission::allocate_service(&self.store, &self.cluster, obj, old)
                .map_err(|causes| ApiError::invalid(kind.info(), &name, &causes))?;
        }
        Ok(())
    }

    /// POST to a collection.
    pub fn create(&self, p: &ResourcePath, q: &Query, body: &[u8]) -> Result<Written, ApiError> {
        let info = p.kind.info();
        if !info.writable {
            return Err(ApiError::method_not_allowed(format!(
                "{} are maintained by the lab's controllers and are read-only",
                info.plural
            )));
        }
        let (mut obj, warnings) = decode(
            p.kind,
            body,
            FieldValidation::from_query(q.field_validation.as_deref())?,
        )?;
        stamp_create(p.kind, p.namespace.as_deref(), &mut obj)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.check_namespace(p.kind, &ns, &name)?;
        // The allocators read the stored Services: hold the lock until this one is stored.
        let _alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        self.admit(p.kind, &mut obj, None)?;
        if self.store.get(p.kind, &ns, &name).is_some() {
            return Err(ApiError::already_exists(info, &name));
        }
        let object = if q.dry_run {
            obj
        } else {
            (*self
                .store
                .create(p.kind, obj)
                .map_err(|e| store_error(e, p.kind, &name))?)
            .clone()
        };
        Ok(Written {
            object,
            warnings,
            created: true,
        })
    }

    /// Creates an object built inside the server (controllers): the same admission as a
    /// POST, without decoding.
    pub fn create_value(&self, kind: Kind, mut obj: Value) -> Result<Value, ApiError> {
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        stamp_create(kind, ns.as_deref(), &mut obj)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.check_namespace(kind, &ns, &name)?;
        let _alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        self.admit(kind, &mut obj, None)?;
        Ok((*self
            .store
            .create(kind, obj)
            .map_err(|e| store_error(e, kind, &name))?)
        .clone())
    }

    /// Deletes an object as a client's DELETE would (Pods gracefully).
    pub fn delete_object(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let p = ResourcePath {
            kind,
            namespace: Some(namespace.to_string()).filter(|n| !n.is_empty()),
            name: Some(name.to_string()),
            subresource: None,
        };
        self.delete(&p, &Query::default(), b"")
    }

    /// PUT of an object (or its status).
    pub fn replace(&self, p: &ResourcePath, q: &Query, body: &[u8]) -> Result<Written, ApiError> {
        if p.subresource.as_deref() == Some("scale") {
            let scale: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "Scale in version \"v1\" cannot be handled as a Scale: {e}"
                ))
            })?;
            return self.set_scale(p, q, &scale);
        }
        let validation =
            FieldValidation::from_query_for(q.field_validation.as_deref(), "UpdateOptions")?;
        let (obj, warnings) = decode(p.kind, body, validation)?;
        let body_name = obj["metadata"]["name"].as_str().unwrap_or("");
        if body_name != name_of(p) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                name_of(p)
            )));
        }
        let expected = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok());
        if expected.is_none() {
            return Err(ApiError::invalid(
                p.kind.info(),
                name_of(p),
                &[labapi::Cause::invalid(
                    "metadata.resourceVersion",
                    &json!(""),
                    "must be specified for an update",
                )],
            ));
        }
        let object = self.write_update(p, obj, expected, q.dry_run)?;
        Ok(Written {
            object,
            warnings,
            created: false,
        })
    }

    /// The shared tail of PUT and PATCH.
    fn write_update(
        &self,
        p: &ResourcePath,
        mut obj: Value,
        expected_rv: Option<u64>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let info = p.kind.info();
        if !info.writable {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only",
                info.plural
            )));
        }
        let name = name_of(p);
        let _alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.get(p)?;
        if expected_rv.is_some_and(|rv| rv != object_rv(&old)) {
            return Err(ApiError::conflict(info, name));
        }
        let status_only = p.subresource.as_deref() == Some("status");
        stamp_update(p.kind, &old, &mut obj, status_only);
        obj["metadata"]["name"] = json!(name);
        self.admit(p.kind, &mut obj, Some(&old))?;
        if dry_run {
            return Ok(obj);
        }
        let stored = self
            .store
            .update(p.kind, obj, Some(object_rv(&old)))
            .map_err(|e| store_error(e, p.kind, name))?;
        Ok((*stored).clone())
    }

    /// PATCH of an object, its status or its scale.
    pub fn patch(
        &self,
        p: &ResourcePath,
        q: &Query,
        content_type: &str,
        body: &[u8],
    ) -> Result<Written, ApiError> {
        let patch_type = PatchType::from_content_type(content_type)?;
        if p.subresource.as_deref() == Some("scale") {
            let current = self.scale(p)?;
            let scale = apply_patch(p.kind, &current, patch_type, body)?;
            return self.set_scale(p, q, &scale);
        }
        let old = self.get(p)?;
        let patched = apply_patch(p.kind, &old, patch_type, body)?;
        // Unknown fields in a patch are checked like those of a full object.
        let validation =
            FieldValidation::from_query_for(q.field_validation.as_deref(), "PatchOptions")?;
        let (patched, warnings) = decode(p.kind, patched.to_string().as_bytes(), validation)?;
        // A resourceVersion in the patch is a precondition; otherwise the patch applies to
        // whatever is stored now.
        let expected = patched["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok());
        let expected = if expected == Some(object_rv(&old)) {
            None
        } else {
            expected
        };
        let object = self.write_update(p, patched, expected, q.dry_run)?;
        Ok(Written {
            object,
            warnings,
            created: false,
        })
    }

    /// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
    pub fn scale(&self, p: &ResourcePath) -> Result<Value, ApiError> {
        let obj = self.get(p)?;
        let selector = super::select::selector_string(&obj["spec"]["selector"]);
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"],
                "uid": obj["metadata"]["uid"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
                "creationTimestamp": obj["metadata"]["creationTimestamp"],
            },
            "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
            "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
        }))
    }

    fn set_scale(&self, p: &ResourcePath, q: &Query, scale: &Value) -> Result<Written, ApiError> {
        let name = name_of(p);
        let replicas = match scale["spec"]["replicas"].as_i64() {
            Some(r) if r >= 0 && r <= i64::from(i32::MAX) => r,
            other => {
                let value = other.map(|r| json!(r)).unwrap_or(Value::Null);
                return Err(ApiError::invalid(
                    &labapi::resource::ResourceInfo {
                        kind_name: "Scale",
                        group: "autoscaling",
                        ..*p.kind.info()
                    },
                    name,
                    &[labapi::Cause::invalid(
                        "spec.replicas",
                        &value,
                        "must be greater than or equal to 0",
                    )],
                ));
            }
        };
        let mut obj = (*self.get(p)?).clone();
        obj["spec"]["replicas"] = json!(replicas);
        let expected = scale["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok());
        let main = ResourcePath {
            subresource: None,
            ..p.clone()
        };
        self.write_update(&main, obj, expected, q.dry_run)?;
        Ok(Written {
            object: self.scale(p)?,
            warnings: Vec::new(),
            created: false,
        })
    }

    /// DELETE of one object. Pods on a node and Namespaces go through graceful termination;
    /// everything else is removed at once and its dependents are collected in the background.
    pub fn delete(&self, p: &ResourcePath, q: &Query, body: &[u8]) -> Result<Value, ApiError> {
        let info = p.kind.info();
        if !info.writable {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only",
                info.plural
            )));
        }
        let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: {e}"
                ))
            })?
        };
        let name = name_of(p);
        let ns = ns_of(p);
        let obj = self.get(p)?;
        if let Some(uid) = opts["preconditions"]["uid"].as_str()
            && uid != obj["metadata"]["uid"].as_str().unwrap_or("")
        {
            return Err(ApiError::conflict(info, name));
        }
        // DeleteOptions may carry dryRun in the body as well as in the query.
        let dry_run_in_body = opts["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"));
        if q.dry_run || dry_run_in_body {
            return Ok((*obj).clone());
        }
        let grace = opts["gracePeriodSeconds"]
            .as_i64()
            .or(q.grace_period_seconds);
        let policy = opts["propagationPolicy"]
            .as_str()
            .or(q.propagation_policy.as_deref())
            .unwrap_or("Background")
            .to_string();
        match p.kind {
            Kind::Namespace => return self.delete_namespace(name),
            Kind::Pod => {
                let default_grace = obj["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30);
                let grace = grace.unwrap_or(default_grace).max(0);
                let on_node = obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
                if on_node && grace > 0 {
                    return self.start_graceful_delete(p, grace);
                }
            }
            _ => {}
        }
        if policy == "Orphan" {
            self.orphan_dependents(obj["metadata"]["uid"].as_str().unwrap_or(""));
        }
        let gone = self
            .store
            .delete(p.kind, ns, name, None)
            .map_err(|e| store_error(e, p.kind, name))?;
        Ok((*gone).clone())
    }

    fn start_graceful_delete(&self, p: &ResourcePath, grace: i64) -> Result<Value, ApiError> {
        let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
        let changed = self
            .store
            .modify(p.kind, ns_of(p), name_of(p), |pod| -> Result<bool, ()> {
                let current = pod["metadata"]["deletionGracePeriodSeconds"].as_i64();
                // A second delete may shorten the grace period, never lengthen it.
                if current.is_some_and(|c| c <= grace) {
                    return Ok(false);
                }
                pod["metadata"]["deletionTimestamp"] = json!(admission::timestamp(deadline));
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                Ok(true)
            })
            .map_err(|e| match e {
                ModifyError::Store(e) => store_error(e, p.kind, name_of(p)),
                ModifyError::Rejected(()) => ApiError::internal("graceful delete refused"),
            })?;
        changed
            .map(|o| (*o).clone())
            .ok_or_else(|| ApiError::not_found(p.kind.info(), name_of(p)))
    }

    fn delete_namespace(&self, name: &str) -> Result<Value, ApiError> {
        if matches!(name, "default" | "kube-system" | "kube-public") {
            return Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "namespaces {name:?} is forbidden: this namespace may not be deleted"
                ),
                details: Some(json!({"name": name, "kind": "namespaces"})),
            });
        }
        let now = admission::now();
        let changed = self
            .store
            .modify(Kind::Namespace, "", name, |ns| -> Result<bool, ()> {
                if ns["metadata"]["deletionTimestamp"].is_string() {
                    return Ok(false);
                }
                ns["metadata"]["deletionTimestamp"] = json!(now);
                ns["status"]["phase"] = json!("Terminating");
                Ok(true)
            })
            .map_err(|_| ApiError::internal("namespace delete failed"))?;
        changed
            .map(|o| (*o).clone())
            .ok_or_else(|| ApiError::not_found(Kind::Namespace.info(), name))
    }

    fn orphan_dependents(&self, owner_uid: &str) {
        for kind in [Kind::ReplicaSet, Kind::Pod, Kind::EndpointSlice] {
            for obj in self.store.list(kind, None).0 {
                let owned = obj["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r["uid"] == owner_uid));
                if !owned {
                    continue;
                }
                let (ns, name) = (
                    obj["metadata"]["namespace"].as_str().unwrap_or(""),
                    obj["metadata"]["name"].as_str().unwrap_or(""),
                );
                let _ = self.store.modify(kind, ns, name, |o| -> Result<bool, ()> {
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != owner_uid);
                    }
                    Ok(true)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "default", "hello-world");
        assert_eq!(
            decode_continue(&t).unwrap(),
            ("default".to_string(), "hello-world".to_string())
        );
        assert_eq!(decode_continue("zz").unwrap_err().code, 400);
    }
}
