//! Compiled components cached on disk by content hash.
//!
//! Compiling the hello-app component takes about 60 ms with an optimised cranelift (seconds in
//! an unoptimised build); loading a precompiled artifact takes under 1 ms. The file name holds
//! the SHA-256 of the component and a hash of the engine's compatibility settings, because an
//! artifact loads only into the exact wasmtime build and configuration that made it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::HostError;

/// `$XDG_CACHE_HOME/services-lab/wasm`, or `~/.cache/services-lab/wasm`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("services-lab").join("wasm"))
}

/// The cache file for `wasm` under `dir` for this engine.
pub fn artifact_path(engine: &Engine, wasm: &[u8], dir: &Path) -> PathBuf {
    let content = hex::encode(Sha256::digest(wasm));
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{content}-{:016x}.cwasm", hasher.finish()))
}

/// Loads `wasm` from the cache in `dir`, or compiles it and stores the result there.
///
/// A cache that cannot be read or written only costs the compilation; it is never an error.
pub fn load(engine: &Engine, wasm: &[u8], dir: Option<&Path>) -> Result<Component, HostError> {
    let Some(dir) = dir else {
        return Component::new(engine, wasm).map_err(HostError::Compile);
    };
    let path = artifact_path(engine, wasm, dir);
    // Read into memory rather than mapped: a mapped file truncated by another process would
    // kill this one with SIGBUS, and the artifact is only a few hundred KB.
    if let Ok(bytes) = std::fs::read(&path) {
        // SAFETY: wasmtime trusts a precompiled artifact to be one it produced. This file is
        // named after the SHA-256 of the component and this engine's compatibility hash, and
        // only `store` below writes such names (atomically, by rename), so it holds what this
        // engine compiled from these bytes; wasmtime also checks the artifact's header.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => return Ok(component),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "ignoring an unusable cached component"
            ),
        }
    }
    let component = Component::new(engine, wasm).map_err(HostError::Compile)?;
    if let Err(e) = store(&component, &path) {
        tracing::debug!(path = %path.display(), error = %e, "could not cache the compiled component");
    }
    Ok(component)
}

fn store(component: &Component, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let dir = path.parent().expect("artifact paths have a directory");
    std::fs::create_dir_all(dir)?;
    // Written aside and renamed into place, so a reader never sees a partial artifact.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
