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

#[test]
fn limits_beyond_the_kernels_range_are_refused_clearly() {
    let _host = shared_host();
    for (flags, expected) in [
        (
            &["--memory", "9999999T"][..],
            "invalid memory size '9999999T'",
        ),
        (&["--memory", "4M"], "below the smallest workable limit"),
        (&["--pids", "4194305"], "invalid pids limit '4194305'"),
        (&["--cpus", "0.0001"], "invalid CPU count '0.0001'"),
        (&["-e", "MY VAR=1"], "invalid environment entry 'MY VAR=1'"),
        (&["-e", "NOEQUALS"], "expected KEY=VALUE"),
        (&["--workdir", "/"], "invalid path '/'"),
        (&["--workdir", "/usr/local"], "system directory"),
    ] {
        assert_refused(flags, &["true"], expected);
    }
    // The same rules in a config file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agentkernel.toml"),
        "[sandbox]\nmemory = \"9999999T\"\n",
    )
    .unwrap();
    let output = agentkernel(Mode::Root, &["run", "--", "true"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("invalid memory size '9999999T'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn over_long_commands_and_paths_are_refused_clearly() {
    let _host = shared_host();
    // Checked before the sandbox is looked up: no sandbox of this name needs to exist.
    let exec = |extra: &[&str], cmd: &[String]| {
        let mut args = vec!["exec", "t-no-such-sandbox"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend(cmd.iter().map(String::as_str));
        agentkernel(Mode::Root, &args).output().unwrap()
    };
    // Each argument within MAX_ARG_STRLEN (which also binds this test's own execve),
    // together over 1 MiB.
    let mut argv = vec!["echo".to_string()];
    argv.extend(std::iter::repeat_n("a".repeat(120 << 10), 10));
    let output = exec(&[], &argv);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("exceed 1 MiB"),
        "{}",
        stderr(&output)
    );
    // `run` is refused the same way, by the same rule in the service.
    let mut run = vec!["run", "--no-network", "--"];
    run.extend(argv.iter().map(String::as_str));
    let output = agentkernel(Mode::Root, &run).output().unwrap();
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("exceed 1 MiB"),
        "{}",
        stderr(&output)
    );
    let long = format!("/{}", "d".repeat(5000));
    let output = exec(&["--workdir", &long], &["true".to_string()]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("longer than the kernel's limit of 4095 bytes"),
        "{}",
        stderr(&output)
    );
    let output = exec(&["-e", "A B=1"], &["true".to_string()]);
    assert_code(&output, 2);
    assert!(
        stderr(&output).contains("invalid environment entry"),
        "{}",
        stderr(&output)
    );
}
