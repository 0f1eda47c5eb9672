//! Snapshots built again and again from the same watched objects, reusing what did not
//! change: a Service whose object and EndpointSlices have the same resourceVersions as at the
//! last build keeps its entries, the same `Arc`s, so building costs little for it and
//! [`crate::render::nft::NftSync`] tells it unchanged by pointer. Without this, every sync
//! re-read every endpoint of every Service (250,000 at kube-proxy's published scale) to find
//! the one that moved.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{ModelError, Protocol, SERVICE_NAME_LABEL, ServiceEntry, Snapshot};

/// A Service's entries and the versions they were built from.
type Built = (String, Vec<((String, Protocol), Arc<ServiceEntry>)>);

/// Builds [`Snapshot`]s like [`Snapshot::from_objects`], reusing the entries of Services
/// whose objects did not change since the last build.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    services: HashMap<(String, String), Built>,
}

impl SnapshotCache {
    /// The snapshot of `services` and `slices`; the same as [`Snapshot::from_objects`] would
    /// make.
    pub fn build<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Result<Snapshot, ModelError> {
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let label = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = label {
                let key = (namespace(&slice.metadata), service.clone());
                by_service.entry(key).or_default().push(slice);
            }
        }
        let mut snapshot = Snapshot::default();
        let mut built = HashMap::new();
        for svc in services {
            let key = (
                namespace(&svc.metadata),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            let mut slices = by_service.remove(&key).unwrap_or_default();
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let version = version(svc, &slices);
            let entries = match (self.services.remove(&key), &version) {
                (Some((was, entries)), Some(now)) if &was == now => entries,
                _ => Snapshot::from_objects([svc], slices.iter().copied())?
                    .services
                    .into_iter()
                    .collect(),
            };
            snapshot.services.extend(entries.iter().cloned());
            if let Some(version) = version {
                built.insert(key, (version, entries));
            }
        }
        self.services = built;
        Ok(snapshot)
    }
}

fn namespace(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// The resourceVersions of a Service and its slices (in name order), or `None` if one has
/// none (objects that did not come from an API server are never reused).
fn version(svc: &Service, slices: &[&EndpointSlice]) -> Option<String> {
    let mut version = svc.metadata.resource_version.clone()?;
    for slice in slices {
        version.push(' ');
        version.push_str(slice.metadata.name.as_deref().unwrap_or(""));
        version.push('@');
        version.push_str(slice.metadata.resource_version.as_deref()?);
    }
    Some(version)
}
