//! What the podrun binary prints and how it exits: error messages, exit codes of exec,
//! and the shapes of `pods` and `ps` output.

mod common;

use common::Env;

#[test]
fn error_causes_are_printed_once() {
    require_root!();
    let env = Env::new(&[]);
    let missing = env.dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();
    for args in [
        &["run", "-d", missing][..],
        &["down", missing],
        &["image", "load", missing],
    ] {
        let (code, _, stderr) = env.fail(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(missing), "{args:?}: {stderr}");
    }
    env.assert_no_leaks();
}
