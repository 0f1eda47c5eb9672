//! Builds the wasm guest (`guest/`, for `wasm32-wasip2`) when the `wasm-host` feature is on,
//! so that a plain `cargo build` or `cargo test` of the workspace has the component to serve.
//!
//! The guest is its own Cargo workspace with its own target directory (`target/wasm-guest`):
//! the outer cargo holds the lock on the workspace's build directories while this runs, and the
//! guest needs its own profile (size-optimised, `panic = "abort"`). The artifact's path is
//! handed to the crate as `HELLO_APP_GUEST_WASM`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "src/respond.rs",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    if env::var_os("CARGO_FEATURE_WASM_HOST").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    check_target_installed();

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or one level deeper with --target).
    let target_root = out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("guest-target"));
    let guest_target = target_root.join("wasm-guest");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(manifest_dir.join("guest/Cargo.toml"))
        .arg("--target-dir")
        .arg(&guest_target);
    // The outer build's settings are for the host target (and clippy's wrapper for lints);
    // none of them may leak into the guest's build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let outer = key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_ENCODED_")
            || key.starts_with("CARGO_PROFILE_")
            || matches!(
                key.as_ref(),
                "CARGO_TARGET_DIR"
                    | "CARGO_MAKEFLAGS"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if outer {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("failed to run cargo to build the wasm guest: {e}");
    });
    if !status.success() {
        panic!(
            "building the wasm guest (hello-app/guest) for {TARGET} failed; see the output above"
        );
    }
    let built = guest_target
        .join(TARGET)
        .join("release/hello_app_guest.wasm");
    let wasm = out_dir.join("hello_app_guest.wasm");
    std::fs::copy(&built, &wasm)
        .unwrap_or_else(|e| panic!("failed to copy {}: {e}", built.display()));
    println!("cargo:rustc-env=HELLO_APP_GUEST_WASM={}", wasm.display());
}

/// Installs the wasm target through rustup when it is missing, so that a fresh clone builds
/// with a plain `cargo build`; says exactly what to run when that is not possible.
fn check_target_installed() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else { return };
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return;
    }
    println!("cargo:warning=installing the Rust target {TARGET} (rustup target add {TARGET})");
    let installed = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        panic!(
            "the Rust target {TARGET} is not installed, and `rustup target add {TARGET}` failed; \
             hello-app's wasm host needs it to build its component. Run: rustup target add {TARGET}"
        );
    }
}
