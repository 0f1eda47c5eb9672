//! Garbage collection of dependents whose owner was deleted (background propagation), and
//! the deletion of a terminating Namespace's contents.

use labapi::{ApiError, Kind};

use super::{Ctx, meta};

/// Deletes every object owned by the (deleted) object with `uid`.
pub fn collect(ctx: &Ctx, uid: &str) -> Result<(), ApiError> {
    for kind in [Kind::ReplicaSet, Kind::Pod, Kind::EndpointSlice] {
        for obj in ctx.api.store.list(kind, None).0 {
            if super::owner_uids(&obj).any(|u| u == uid) {
                match ctx
                    .api
                    .delete_object(kind, meta(&obj, "namespace"), meta(&obj, "name"))
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Deletes what a terminating Namespace holds, then the Namespace.
pub fn finish_namespace(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let mut remaining = 0;
    for info in Kind::all().iter().filter(|i| i.namespaced) {
        for obj in store.list(info.kind, Some(name)).0 {
            remaining += 1;
            if obj["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            // Pods go through graceful termination; everything else is removed at once.
            let result = if info.kind == Kind::Pod {
                ctx.api
                    .delete_object(Kind::Pod, name, meta(&obj, "name"))
                    .map(|_| ())
            } else {
                store
                    .delete(info.kind, name, meta(&obj, "name"), None)
                    .map(|_| ())
                    .map_err(|e| ApiError::internal(e.to_string()))
            };
            match result {
                Ok(()) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    let pods_left = !store.list(Kind::Pod, Some(name)).0.is_empty();
    if remaining == 0 || !pods_left {
        let _ = store.delete(Kind::Namespace, "", name, None);
    }
    Ok(())
}
