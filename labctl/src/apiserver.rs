//! The embedded Kubernetes API server: verbs over the store, HTTP and watches on top, TLS and
//! bearer-token authentication in front.

pub mod admission;
mod exec;
mod http;
mod logs;
pub mod select;
pub mod verbs;
pub mod watch;

use std::sync::{Arc, Mutex, OnceLock};

use crate::cluster::ClusterConfig;
use crate::controllers::PodRuntime;
use crate::store::Store;

pub use http::{ServeOptions, serve};

/// The API: the store plus what the server decides about writes.
pub struct Api {
    /// Every object.
    pub store: Arc<Store>,
    /// The lab's shape (address ranges for the allocators).
    pub cluster: ClusterConfig,
    /// Held from reading the allocated addresses until the Service that takes one is stored.
    alloc: Mutex<()>,
    /// What runs the Pods, which keeps their logs and knows where commands run in them; set
    /// once it exists.
    runtime: OnceLock<Arc<dyn PodRuntime>>,
}

impl Api {
    /// An API over a store.
    pub fn new(store: Arc<Store>, cluster: ClusterConfig) -> Api {
        Api {
            store,
            cluster,
            alloc: Mutex::new(()),
            runtime: OnceLock::new(),
        }
    }

    /// Serves `pods/<name>/log` and `pods/<name>/exec` through `runtime` (before this, both
    /// answer that no runtime runs the Pod).
    pub fn use_runtime(&self, runtime: Arc<dyn PodRuntime>) {
        let _ = self.runtime.set(runtime);
    }

    /// The Pods' runtime, once it runs.
    fn runtime(&self) -> Result<&Arc<dyn PodRuntime>, labapi::ApiError> {
        self.runtime.get().ok_or_else(|| {
            labapi::ApiError::bad_request(
                "the lab's runtime has not started yet; try again in a moment",
            )
        })
    }
}
