#!/usr/bin/env bash
# The project's test command (README: "Running the tests").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
