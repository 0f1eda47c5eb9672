#!/usr/bin/env bash
# The project's test command once the machine has what the tests need (README: "Tests").
# `bash .ci/run` installs that first, then runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Integration tests start servers on loopback; they must not inherit a backtrace setting
# that makes wasmtime capture a backtrace for every error it builds.
export RUST_BACKTRACE=0
cargo test --workspace --locked --no-fail-fast
