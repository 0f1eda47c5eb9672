//! The lab cluster's Kubernetes API rules, without I/O.
//!
//! Everything the embedded API server decides about an object (which resources exist,
//! whether an object is valid, what the server fills in, how a patch applies, which objects
//! a selector picks, what `kubectl get` prints) is a function here over `serde_json::Value`
//! objects. The server in `labctl` only moves bytes and stores results.

pub mod decode;
pub mod defaults;
pub mod discovery;
pub mod field;
pub mod patch;
pub mod path;
pub mod query;
pub mod resource;
pub mod selector;
pub mod status;
pub mod table;
pub mod validate;

pub use decode::{FieldValidation, decode};
pub use defaults::apply_defaults;
pub use field::{Cause, CauseReason};
pub use patch::{PatchType, apply_patch};
pub use resource::{Kind, ResourceInfo};
pub use selector::{FieldSelector, LabelSelector};
pub use status::ApiError;
pub use table::IncludeObject;
pub use validate::{validate, validate_update};
