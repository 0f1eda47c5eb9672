//! The Kubernetes tutorial's sample app, `gcr.io/google-samples/hello-app`, in Rust.
//!
//! Every request is answered with `Hello, world!`, the app's version and the host name, exactly
//! as the Go original does. The answer is decided by one pure function, [`respond::respond`],
//! which both builds share:
//!
//! - the native server ([`server`], the `hello-app` binary and its container image), and
//! - the WebAssembly component (`hello-app/guest`, `wasm32-wasip2`, `wasi:http`), served by the
//!   embedded wasmtime host in [`wasm_host`], where one process serves many Pods, each with its
//!   own host name, from one compiled component.
//!
//! With default features off only [`respond`] remains, which is what the guest links.

pub mod respond;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "wasm-host")]
pub mod wasm_host;
