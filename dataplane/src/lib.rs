//! A kube-proxy-style dataplane: Services and EndpointSlices compiled into rule sets.
//!
//! The core is pure: [`model::Snapshot`] is built from `k8s-openapi` objects,
//! [`compile::compile`] turns it into a [`ruleset::RuleSet`] for one node in kube-proxy's
//! iptables layout (its chain names, comments, probabilities, masquerade marks, REJECT/DROP
//! rules), [`render::iptables`] writes that as `iptables-restore` input, and [`trace`] follows
//! a packet through it. None of that touches the kernel; [`apply`] is the one module that
//! does, programming a rule set into a network namespace with the kernel's own tools.
//!
//! ```
//! use dataplane::{compile::compile, model::{NodeConfig, Snapshot}, render::iptables};
//! let rules = compile(&Snapshot::default(), &NodeConfig::new("lab-worker"));
//! assert!(iptables::render(&rules).contains(":KUBE-SERVICES - [0:0]"));
//! ```

pub mod apply;
pub mod compile;
pub mod manifest;
pub mod model;
pub mod names;
pub mod proxy;
pub mod render;
pub mod ruleset;
pub mod trace;
pub mod watch;
