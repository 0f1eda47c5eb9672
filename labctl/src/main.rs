//! labctl.
mod store;
fn main() {}
