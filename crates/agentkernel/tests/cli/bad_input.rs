//! Bad input: a clear error, a non-zero exit, and nothing left behind.

use crate::common::{
    Mode, agentkernel, assert_code, assert_no_leaks, exclusive_host, run, shared_host, snapshot,
    stderr,
};

fn assert_refused(flags: &[&str], cmd: &[&str], expected: &str) {
    let output = run(Mode::Root, flags, cmd);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains(expected),
        "expected {expected:?} in: {}",
        stderr(&output)
    );
}

#[test]
fn bad_flags_are_refused_clearly() {
    // Compares the whole host: no other test may run meanwhile.
    let _host = exclusive_host();
    let before = snapshot();
    assert_refused(
        &["--profile", "strict"],
        &["true"],
        "unknown profile 'strict'",
    );
    assert_refused(
        &["--memory", "lots"],
        &["true"],
        "invalid memory size 'lots'",
    );
    assert_refused(&["--memory", "0"], &["true"], "invalid memory size '0'");
    assert_refused(&["--timeout", "soon"], &["true"], "invalid duration 'soon'");
    assert_refused(&["--cpus", "0"], &["true"], "invalid CPU count");
    assert_refused(&["--pids", "0"], &["true"], "invalid pids limit");
    assert_refused(
        &["--image", "/no/such/image/dir"],
        &["true"],
        "/no/such/image/dir does not exist",
    );
    assert_refused(&["--image=--privileged"], &["true"], "invalid image");
    assert_refused(&["-e", "=oops"], &["true"], "invalid environment entry");
    assert_refused(
        &["--workdir", "../escape"],
        &["true"],
        "invalid path '../escape'",
    );
    assert_refused(
        &["--backend", "vmware"],
        &["true"],
        "unknown backend 'vmware'",
    );
    assert_no_leaks(&before);
}

#[test]
fn mount_cwd_of_the_root_is_refused() {
    let _host = shared_host();
    let output = agentkernel(Mode::Root, &["run", "--mount-cwd", "--", "true"])
        .current_dir("/")
        .output()
        .unwrap();
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("whole host root"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_command_is_a_usage_error() {
    let _host = shared_host();
    let output = agentkernel(Mode::Root, &["run"]).output().unwrap();
    assert_code(&output, 2);
    assert!(stderr(&output).contains("CMD"), "{}", stderr(&output));
    let output = agentkernel(Mode::Root, &["run", "--"]).output().unwrap();
    assert_code(&output, 2);
}

#[test]
fn malformed_config_files_are_refused() {
    // Compares the whole host: no other test may run meanwhile.
    let _host = exclusive_host();
    let dir = tempfile::tempdir().unwrap();
    let before = snapshot();
    for (content, expected) in [
        ("[sandbox\n", "invalid config file"),
        (
            "[sandbox]\nprofil = \"moderate\"\n",
            "unknown field `profil`",
        ),
        ("[sandbox]\nmemory = 12\n", "invalid type"),
        (
            "[sandbox]\nprofile = \"strict\"\n",
            "unknown profile 'strict'",
        ),
    ] {
        std::fs::write(dir.path().join("agentkernel.toml"), content).unwrap();
        let output = agentkernel(Mode::Root, &["run", "--", "true"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_code(&output, 2);
        assert!(
            stderr(&output).contains(expected),
            "{content:?}: {}",
            stderr(&output)
        );
    }
    let output = agentkernel(Mode::Root, &["run", "--", "true"])
        .env("AGENTKERNEL_CONFIG", dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("cannot read config file"),
        "{}",
        stderr(&output)
    );
    assert_no_leaks(&before);
}

#[test]
fn valid_project_config_applies() {
    let _host = shared_host();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agentkernel.toml"),
        "[sandbox]\nnetwork = false\nenv = [\"FROM_CONFIG=yes\"]\n",
    )
    .unwrap();
    let output = agentkernel(Mode::Root, &["run", "--", "sh", "-c", "echo $FROM_CONFIG"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_code(&output, 0);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "yes\n");
}
