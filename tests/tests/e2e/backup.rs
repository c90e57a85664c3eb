//! Backup and restore of a stopped vault, as the README describes it.
//!
//! Proves: after a clean stop the database file alone holds everything
//! (the write-ahead log was checkpointed away), so the identity and
//! `vault.db` copied to a new state directory make a vault that lists and
//! decrypts the same secrets; and a database whose identity is missing is
//! refused with the fix, without a new identity written next to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use mcplexer_tests::{bin, spawn_ready};

/// Starts a user-mode vault on `state` and `socket`; returns once ready.
fn start(dir: &Path, state: &Path, socket: &Path) -> Child {
    let notify = dir.join(format!(
        "notify-{}",
        socket.file_name().unwrap().to_string_lossy()
    ));
    let mut cmd = Command::new(bin("mcplexer-vaultd"));
    cmd.args(["--user", "--state-dir"])
        .arg(state)
        .arg("--socket")
        .arg(socket);
    spawn_ready(cmd, &notify).unwrap()
}

fn stop(mut vault: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vault.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(vault.wait().unwrap().success());
}

fn ctl(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(bin("mcplexerctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn private_dir(path: &Path) {
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn identity_and_database_copied_after_a_clean_stop_restore_the_vault() {
    let dir = tempfile::tempdir().unwrap();
    let (state, socket) = (dir.path().join("state"), dir.path().join("a.sock"));
    let vault = start(dir.path(), &state, &socket);
    let created = ctl(
        &socket,
        &["scope", "create", "--name", "Backed up", "--type", "env"],
        None,
    );
    assert!(created.status.success(), "{created:?}");
    let set = ctl(
        &socket,
        &["secret", "set", "backed-up", "API_KEY"],
        Some(b"backup-secret-1"),
    );
    assert!(set.status.success(), "{set:?}");
    stop(vault);

    // Checkpointed: no log left beside the database.
    let wal = state.join("vault.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "{} still holds data after a clean stop",
        wal.display()
    );

    // Restore: the identity and the database file only.
    let restored = dir.path().join("restored");
    private_dir(&restored);
    for file in ["identity.txt", "vault.db"] {
        std::fs::copy(state.join(file), restored.join(file)).unwrap();
        std::fs::set_permissions(restored.join(file), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let socket = dir.path().join("b.sock");
    let vault = start(dir.path(), &restored, &socket);
    let keys = ctl(&socket, &["secret", "list", "backed-up"], None);
    assert!(
        String::from_utf8_lossy(&keys.stdout).contains("API_KEY"),
        "{keys:?}"
    );
    // Adding a value re-encrypts the stored map: it decrypts with the
    // restored identity.
    let more = ctl(
        &socket,
        &["secret", "set", "backed-up", "OTHER"],
        Some(b"backup-secret-2"),
    );
    assert!(more.status.success(), "{more:?}");
    stop(vault);

    // The database without its identity is refused, and nothing is made.
    let lost = dir.path().join("lost");
    private_dir(&lost);
    std::fs::copy(state.join("vault.db"), lost.join("vault.db")).unwrap();
    std::fs::set_permissions(
        lost.join("vault.db"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = Command::new(bin("mcplexer-vaultd"))
        .args(["--user", "--state-dir"])
        .arg(&lost)
        .arg("--socket")
        .arg(dir.path().join("c.sock"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exists but its identity") && err.contains("restore the identity"),
        "{err}"
    );
    assert!(
        !lost.join("identity.txt").exists(),
        "a new identity was written"
    );
}
