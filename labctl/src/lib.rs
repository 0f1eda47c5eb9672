//! Services Lab's command line and its embedded lab cluster: a Kubernetes API server that the
//! real kubectl drives, with the controllers that make Deployments, Pods, Services and
//! EndpointSlices behave as on a real cluster.

pub mod apiserver;
pub mod cluster;
pub mod console;
pub mod controllers;
pub mod kind;
pub mod lab;
pub mod network;
pub mod pki;
pub mod podexec;
pub mod podnet;
pub mod portforward;
pub mod probe;
pub mod provider;
pub mod reach;
pub mod rules;
pub mod runtime;
pub mod store;
pub mod tutorial;
pub mod userns;
pub mod userspace;
pub mod verify;
