//! Whether an integration test can run here, and a record that it did. Shared by the
//! root crate's tests (tests/common) and the CNI tests (cni/tests/common).
//!
//! A test that cannot run (not root, a tool missing) returns early; under CI or
//! `PODRUN_TEST_STRICT=1` it fails instead. A test that returned early without saying
//! so would still pass, so each test also leaves a record once it has really started,
//! and scripts/test.sh compares those records with the list of integration tests.

use std::path::Path;

/// Whether a test that cannot run here must fail rather than skip: under CI, and when
/// `PODRUN_TEST_STRICT=1` asks for it (scripts/test.sh does).
pub fn strict() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("PODRUN_TEST_STRICT").is_some_and(|v| v == "1")
}

/// A test cannot run here because `reason`: it fails when [`strict`], and otherwise
/// says so and is skipped by its caller.
pub fn cannot_run(test: &str, reason: &str) {
    assert!(!strict(), "{test} cannot run: {reason}");
    eprintln!("skipped {test}: {reason}");
}

/// Records that the calling test has started, past its checks for root and tools: an
/// empty file `<test binary>::<test>` in `$PODRUN_TEST_RAN_DIR` (nothing when that is
/// unset). Must be called on the test's own thread, which libtest names after the test.
pub fn mark_ran() {
    let Some(dir) = std::env::var_os("PODRUN_TEST_RAN_DIR") else {
        return;
    };
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        other => panic!("mark_ran is called on a test's own thread, not on {other:?}"),
    };
    let file = Path::new(&dir).join(format!("{}::{test}", env!("CARGO_CRATE_NAME")));
    if let Err(e) = std::fs::write(&file, b"") {
        panic!("recording that {test} ran in {}: {e}", file.display());
    }
}
