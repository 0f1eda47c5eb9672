//! Label and field selectors, parsed and matched as kube-apiserver does
//! (`k8s.io/apimachinery/pkg/labels` and `.../pkg/fields`).

mod fields;
mod labels;

pub use fields::{FieldOperator, FieldRequirement, FieldSelector, supported_fields};
pub use labels::{LabelSelector, Operator, Requirement};
