//! Tests of the registry: round trips, transitions, corruption, concurrency and crashes.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use ak_core::config::{SandboxOptions, resolve};
use ak_core::spec::new_sandbox_id;

use super::*;

/// Set in the child process of the crash test: the registry it writes to.
const CRASH_CHILD_ENV: &str = "AK_REGISTRY_CRASH_CHILD_DB";
const CRASH_TEST: &str = "registry::tests::killed_writer_leaves_a_consistent_registry";
const CRASH_RECORDS: usize = 50;
/// Acknowledged inserts the parent waits for before it kills the child.
const CRASH_AFTER: usize = 10;

fn record(name: &str, created_at: i64) -> SandboxRecord {
    let uuid = new_sandbox_id();
    let options = SandboxOptions {
        memory: Some("256M".into()),
        timeout: Some("90s".into()),
        env: Some(vec!["A=1".into(), "SECRET=x y z".into()]),
        workdir: Some("/work".into()),
        ..SandboxOptions::default()
    };
    let spec = resolve(options, Path::new("/"), uuid.clone()).unwrap();
    SandboxRecord {
        name: name.into(),
        uuid,
        backend: spec.backend,
        state: SandboxState::Creating,
        spec,
        handle: None,
        created_at,
        updated_at: created_at,
        error: None,
        expires_at: None,
    }
}

fn open_temp() -> (tempfile::TempDir, PathBuf, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("state")
        .join("agentkernel")
        .join("registry.db");
    let registry = Registry::open(&path).unwrap();
    (dir, path, registry)
}

#[test]
fn insert_get_list_remove_round_trip() {
    let (_dir, _path, registry) = open_temp();
    let b = record("b", 100);
    let a = record("a", 100);
    let first = record("z-first", 50);
    for r in [&b, &a, &first] {
        registry.insert(r).unwrap();
    }
    assert_eq!(registry.get("a").unwrap().as_ref(), Some(&a));
    assert_eq!(registry.get_by_uuid(&b.uuid).unwrap().as_ref(), Some(&b));
    assert_eq!(registry.get("nope").unwrap(), None);
    assert_eq!(registry.get_by_uuid("nope").unwrap(), None);
    // Ordered by creation time, then name.
    assert_eq!(registry.list().unwrap(), vec![first.clone(), a.clone(), b]);
    assert!(registry.remove("b").unwrap());
    assert!(!registry.remove("b").unwrap());
    assert_eq!(registry.get("b").unwrap(), None);
    assert_eq!(registry.list().unwrap(), vec![first, a]);
}

#[test]
fn a_new_spec_is_kept() {
    let (_dir, path, registry) = open_temp();
    let a = record("a", 100);
    registry.insert(&a).unwrap();
    let mut spec = a.spec.clone();
    spec.policy.allowlist.add_host("pypi").unwrap();
    let updated = registry.set_spec("a", &spec).unwrap();
    assert_eq!(updated.spec, spec);
    // Read back by another connection: it is on disk, not only in this one.
    let again = Registry::open(&path).unwrap();
    assert_eq!(again.get("a").unwrap().unwrap().spec, spec);
    assert!(matches!(
        registry.set_spec("nope", &spec),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn files_are_private() {
    let (dir, path, _registry) = open_temp();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("state")), 0o700);
}

#[test]
fn duplicate_names_and_bad_names_are_refused() {
    let (_dir, _path, registry) = open_temp();
    let original = record("box", 1);
    registry.insert(&original).unwrap();
    match registry.insert(&record("box", 2)) {
        Err(RegistryError::Duplicate(name)) => assert_eq!(name, "box"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(registry.get("box").unwrap(), Some(original));
    assert!(matches!(
        registry.insert(&record("../x", 1)),
        Err(RegistryError::InvalidName(_))
    ));
    assert_eq!(registry.list().unwrap().len(), 1);
}

#[test]
fn transition_is_a_compare_and_set() {
    let (_dir, _path, registry) = open_temp();
    registry.insert(&record("box", 1)).unwrap();
    let running = registry
        .transition(
            "box",
            SandboxState::Creating,
            SandboxState::Running,
            Some(r#"{"pid":42}"#.into()),
            None,
        )
        .unwrap();
    assert_eq!(running.state, SandboxState::Running);
    assert_eq!(running.handle.as_deref(), Some(r#"{"pid":42}"#));
    assert!(running.updated_at >= running.created_at);
    assert_eq!(registry.get("box").unwrap(), Some(running.clone()));

    // A caller that still believes the sandbox is being created loses.
    match registry.transition(
        "box",
        SandboxState::Creating,
        SandboxState::Failed,
        None,
        Some("late".into()),
    ) {
        Err(RegistryError::StateChanged {
            name,
            expected,
            actual,
        }) => {
            assert_eq!(name, "box");
            assert_eq!(expected, SandboxState::Creating);
            assert_eq!(actual, SandboxState::Running);
        }
        other => panic!("expected StateChanged, got {other:?}"),
    }
    assert_eq!(registry.get("box").unwrap(), Some(running));

    let failed = registry
        .transition(
            "box",
            SandboxState::Running,
            SandboxState::Failed,
            None,
            Some("agent died".into()),
        )
        .unwrap();
    assert_eq!(failed.state, SandboxState::Failed);
    assert_eq!(failed.handle, None);
    assert_eq!(failed.error.as_deref(), Some("agent died"));

    assert!(matches!(
        registry.transition(
            "ghost",
            SandboxState::Stopped,
            SandboxState::Running,
            None,
            None
        ),
        Err(RegistryError::NotFound(name)) if name == "ghost"
    ));
}

#[test]
fn invalid_transitions_are_refused() {
    let (_dir, _path, registry) = open_temp();
    registry.insert(&record("box", 1)).unwrap();
    registry
        .transition(
            "box",
            SandboxState::Creating,
            SandboxState::Running,
            None,
            None,
        )
        .unwrap();
    match registry.transition(
        "box",
        SandboxState::Running,
        SandboxState::Removed,
        None,
        None,
    ) {
        Err(RegistryError::InvalidTransition { name, from, to }) => {
            assert_eq!(name, "box");
            assert_eq!(from, SandboxState::Running);
            assert_eq!(to, SandboxState::Removed);
        }
        other => panic!("expected InvalidTransition, got {other:?}"),
    }
    assert_eq!(
        registry.get("box").unwrap().unwrap().state,
        SandboxState::Running
    );
}

#[test]
fn damaged_rows_are_errors_not_panics() {
    let (_dir, path, registry) = open_temp();
    registry.insert(&record("bad-json", 1)).unwrap();
    registry.insert(&record("bad-state", 2)).unwrap();
    registry.insert(&record("bad-backend", 3)).unwrap();
    let raw = Connection::open(&path).unwrap();
    raw.execute_batch(
        "UPDATE sandboxes SET spec = '{\"id\": 12' WHERE name = 'bad-json';
         UPDATE sandboxes SET state = 'zombie' WHERE name = 'bad-state';
         UPDATE sandboxes SET backend = 'qemu' WHERE name = 'bad-backend';",
    )
    .unwrap();
    for name in ["bad-json", "bad-state", "bad-backend"] {
        match registry.get(name) {
            Err(RegistryError::Corrupt(message)) => assert!(message.contains(name)),
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
    }
    assert!(matches!(registry.list(), Err(RegistryError::Corrupt(_))));
    assert!(matches!(
        registry.transition(
            "bad-state",
            SandboxState::Creating,
            SandboxState::Running,
            None,
            None
        ),
        Err(RegistryError::Corrupt(_))
    ));
    // A damaged entry can still be deleted.
    assert!(registry.remove("bad-json").unwrap());
}

#[test]
fn reopening_keeps_the_data() {
    let (_dir, path, registry) = open_temp();
    let original = record("keep", 7);
    registry.insert(&original).unwrap();
    drop(registry);
    let reopened = Registry::open(&path).unwrap();
    assert_eq!(reopened.list().unwrap(), vec![original]);
}

#[test]
fn two_instances_see_each_other() {
    let (_dir, path, first) = open_temp();
    let second = Registry::open(&path).unwrap();
    let created = record("shared", 1);
    first.insert(&created).unwrap();
    assert_eq!(second.get("shared").unwrap(), Some(created));
    second
        .transition(
            "shared",
            SandboxState::Creating,
            SandboxState::Running,
            None,
            None,
        )
        .unwrap();
    assert_eq!(
        first.get("shared").unwrap().unwrap().state,
        SandboxState::Running
    );
    assert!(matches!(
        first.transition(
            "shared",
            SandboxState::Creating,
            SandboxState::Running,
            None,
            None
        ),
        Err(RegistryError::StateChanged { .. })
    ));
    assert!(matches!(
        second.insert(&record("shared", 2)),
        Err(RegistryError::Duplicate(_))
    ));
    assert!(first.remove("shared").unwrap());
    assert_eq!(second.get("shared").unwrap(), None);
}

#[test]
fn registry_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Registry>();
    let (_dir, _path, registry) = open_temp();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let registry = &registry;
            scope.spawn(move || {
                for i in 0..10 {
                    registry.insert(&record(&format!("t{t}-{i}"), i)).unwrap();
                }
            });
        }
    });
    assert_eq!(registry.list().unwrap().len(), 40);
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path, registry) = open_temp();
    drop(registry);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match Registry::open(&path) {
        Err(RegistryError::NewerSchema { found, supported }) => {
            assert_eq!(found, 99);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn not_a_database_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    match Registry::open(&path) {
        Err(RegistryError::Open { path: shown, .. }) => assert_eq!(shown, path),
        other => panic!("expected Open, got {other:?}"),
    }
}

#[test]
fn an_empty_file_is_refused_not_taken_for_a_new_registry() {
    let (dir, path, registry) = open_temp();
    registry.insert(&record("kept", 1)).unwrap();
    drop(registry);
    // Another file, emptied (say by a full disk or a careless `> registry.db`).
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    match Registry::open(&empty) {
        Err(error @ RegistryError::Empty(_)) => {
            let message = error.to_string();
            assert!(message.contains(&empty.display().to_string()), "{message}");
            assert!(message.contains("empty"), "{message}");
        }
        other => panic!("expected Empty, got {other:?}"),
    }
    // Refusing it changed nothing: it is still empty, and nothing was created beside it.
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["empty.db", "state"]);
    // A real registry still opens with its content.
    let reopened = Registry::open(&path).unwrap();
    assert_eq!(reopened.list().unwrap().len(), 1);
}

#[test]
fn a_new_registry_leaves_no_staging_file() {
    let (_dir, path, _registry) = open_temp();
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".new-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}

#[test]
fn concurrent_first_opens_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || Registry::open(&path).map(|r| r.list().map(|l| l.len())))
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap().unwrap().unwrap(), 0);
    }
}

#[test]
fn default_path_is_named_registry_db() {
    let path = Registry::default_path();
    assert!(path.is_absolute(), "{}", path.display());
    assert!(
        path.ends_with("agentkernel/registry.db"),
        "{}",
        path.display()
    );
}

/// The child of the crash test: inserts records and says so after each commit, until
/// the parent kills it.
fn crash_child(path: &Path) {
    let registry = Registry::open(path).unwrap();
    let mut stdout = std::io::stdout();
    for i in 0..CRASH_RECORDS {
        registry
            .insert(&record(&format!("r{i:02}"), i64::try_from(i).unwrap()))
            .unwrap();
        writeln!(stdout, "inserted {i}").unwrap();
        stdout.flush().unwrap();
        // Keeps the child from finishing before the parent's kill lands.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn killed_writer_leaves_a_consistent_registry() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = 0;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("inserted ") {
            acknowledged += 1;
            if acknowledged == CRASH_AFTER {
                break;
            }
        }
    }
    // Child::kill sends SIGKILL: no destructor, no rollback, no clean close.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    drop(lines);
    assert_eq!(
        acknowledged, CRASH_AFTER,
        "the child stopped early: {status}"
    );

    let raw = Connection::open(&path).unwrap();
    let check: String = raw
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(raw);

    let registry = Registry::open(&path).unwrap();
    let records = registry.list().unwrap();
    // Every acknowledged insert survived; nothing beyond what was attempted appeared.
    assert!(
        (CRASH_AFTER..=CRASH_RECORDS).contains(&records.len()),
        "{} records",
        records.len()
    );
    for (i, record) in records.iter().enumerate() {
        // Inserted in order, so what survived is a prefix, each row whole.
        assert_eq!(record.name, format!("r{i:02}"));
        assert_eq!(record.created_at, i64::try_from(i).unwrap());
        assert_eq!(record.spec.id, record.uuid);
        assert_eq!(record.state, SandboxState::Creating);
        assert_eq!(record.spec.env.len(), 2);
        assert_eq!(
            registry.get_by_uuid(&record.uuid).unwrap().as_ref(),
            Some(record)
        );
    }
}

#[test]
fn expiry_is_stored_and_found() {
    let (_dir, _path, registry) = open_temp();
    registry.insert(&record("soon", 1)).unwrap();
    registry.insert(&record("later", 2)).unwrap();
    registry.insert(&record("never", 3)).unwrap();
    registry.set_expiry("soon", Some(100)).unwrap();
    let later = registry.set_expiry("later", Some(200)).unwrap();
    assert_eq!(later.expires_at, Some(200));
    assert_eq!(registry.expired(99).unwrap(), Vec::<String>::new());
    assert_eq!(registry.expired(150).unwrap(), vec!["soon".to_string()]);
    assert_eq!(
        registry.expired(200).unwrap(),
        vec!["soon".to_string(), "later".to_string()]
    );
    registry.set_expiry("soon", None).unwrap();
    assert_eq!(registry.expired(1000).unwrap(), vec!["later".to_string()]);
    assert!(matches!(
        registry.set_expiry("ghost", Some(1)),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn version_1_files_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let spec = serde_json::to_string(&record("x", 1).spec).unwrap();
        conn.execute(
            "INSERT INTO sandboxes (name, uuid, backend, state, spec, handle, created_at, updated_at, error)
             VALUES ('old', 'u1', 'native', 'stopped', ?1, NULL, 1, 1, NULL)",
            [spec],
        )
        .unwrap();
    }
    let registry = Registry::open(&path).unwrap();
    let old = registry.get("old").unwrap().unwrap();
    assert_eq!(old.expires_at, None);
    registry.set_expiry("old", Some(5)).unwrap();
    assert_eq!(registry.expired(5).unwrap(), vec!["old".to_string()]);
}
