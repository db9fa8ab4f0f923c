#!/usr/bin/env bash
# Everything that must be green: formatting, lints, unit tests (no root) and the
# integration tests in tests/ and cni/tests/ (root: real namespaces, cgroups, mounts and
# images), and proof that every integration test really ran.
set -euo pipefail
export LC_ALL=C # one sort order for the lists compared below
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Keeps the benchmark harness working: one round against the peers, no timings asserted.
cargo run --locked -p podrun-bench -- --smoke

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/ran"

# The integration tests that run as root, listed before the run as
# <test binary>::<test>: every test of the binaries built from tests/*.rs and
# cni/tests/*.rs (not the unit tests, the fuzz tests, nor other crates' tests that need
# no root). Tests marked #[ignore] are listed apart: the run below does not run them.
cargo test --locked --workspace --test '*' --no-run --message-format=json-render-diagnostics \
  | grep '"reason":"compiler-artifact"' | grep '"kind":\["test"\]' \
  | sed -n 's/.*"src_path":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' \
  | while read -r src exe; do
      case "${src#"$(pwd -P)"/}" in
        */fuzz.rs) ;; # property tests of parsers (fuzz/README.md): no root, nothing to skip
        tests/*.rs | cni/tests/*.rs) echo "$exe" ;;
      esac
    done | sort -u > "$work/binaries"
[ -s "$work/binaries" ] || { echo "no integration test binaries were built" >&2; exit 1; }
: > "$work/all"
: > "$work/ignored"
while read -r exe; do
  bin=$(basename "$exe")
  bin=${bin%-*} # cargo's <target>-<hash>
  "$exe" --list --format terse | sed -n "s/^\(.*\): test$/$bin::\1/p" >> "$work/all"
  "$exe" --list --format terse --ignored | sed -n "s/^\(.*\): test$/$bin::\1/p" >> "$work/ignored"
done < "$work/binaries"
sort -u -o "$work/all" "$work/all"
sort -u -o "$work/ignored" "$work/ignored"
comm -23 "$work/all" "$work/ignored" > "$work/expected"

# A hung test fails the run in bounded time instead of holding the machine; a test that
# cannot run here (not root, a tool missing) fails instead of skipping. Each integration
# test, once past its checks, leaves <test binary>::<test> in PODRUN_TEST_RAN_DIR
# (tests/common/ran.rs).
status=0
PODRUN_TEST_RAN_DIR="$work/ran" PODRUN_TEST_STRICT=1 \
  timeout 1800 cargo test --locked --workspace --no-fail-fast -- --test-threads=4 || status=$?

find "$work/ran" -mindepth 1 -printf '%f\n' | sort > "$work/ran.list"
comm -23 "$work/expected" "$work/ran.list" > "$work/missing"
expected=$(wc -l < "$work/expected")
missing=$(wc -l < "$work/missing")
ignored=$(wc -l < "$work/ignored")
echo "integration tests: $((expected - missing)) of $expected ran"
if [ "$ignored" -gt 0 ]; then
  echo "integration tests marked #[ignore], not run ($ignored):"
  sed 's/^/  /' "$work/ignored"
fi
if [ "$missing" -gt 0 ]; then
  echo "integration tests that did not run ($missing):" >&2
  sed 's/^/  /' "$work/missing" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
