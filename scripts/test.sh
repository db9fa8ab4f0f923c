#!/usr/bin/env bash
# Everything that must be green: formatting, lints, unit tests (no root) and the
# integration tests in tests/ (root: real namespaces, cgroups, mounts and images).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Keeps the benchmark harness working: one round against the peers, no timings asserted.
cargo run --locked -p podrun-bench -- --smoke
# A hung test fails the run in bounded time instead of holding the machine; a test that
# cannot run here (not root, a tool missing) fails instead of skipping.
PODRUN_TEST_STRICT=1 timeout 1800 cargo test --locked --workspace --no-fail-fast -- --test-threads=4
