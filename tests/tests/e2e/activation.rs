//! Socket activation and the systemd units, end to end.
//!
//! Proves: under `systemd-socket-activate` the socket exists before the
//! vault runs, the vault is started by the first connection and serves on
//! the socket it was passed (it binds none of its own), and leaves that
//! socket in place when it stops (it is the service manager's); a
//! `LISTEN_FDS` meant for another process (`LISTEN_PID`) is ignored and the
//! vault binds its own socket; `mcplexer-proxy serve` likewise serves
//! streamable HTTP on a passed Unix socket and leaves it in place; the packaged units pass `systemd-analyze
//! verify` (with ExecStart pointed at the built binary) and the vault's
//! unit scores an exposure of at most 1.5 (the proxy's user units verify
//! too) in `systemd-analyze security`,
//! with nothing on stderr; the sysusers.d and tmpfiles.d files make the
//! `mcplexer` user and group, the `mcplexer-admin` group and the state,
//! runtime and configuration directories with their owners and modes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mcplexer_tests::{bin, spawn_ready};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .canonicalize()
        .unwrap()
}

fn ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("mcplexerctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_vault_serves_on_the_socket_systemd_passes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vault.sock");
    let state = dir.path().join("state");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(bin("mcplexer-vaultd"))
        .args(["--user", "--state-dir"])
        .arg(&state)
        // Its own default socket would be here: it must not bind it.
        .env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (systemd) is needed");
    let mut stderr = BufReader::new(activator.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("Listening on"), "{line:?}");
    // The socket is there; the vault has not run yet.
    assert!(socket.exists());
    assert!(!state.exists(), "the vault started before a connection");

    let status = ctl(&socket, &["--json", "status"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["mode"], "user");
    assert!(state.exists());
    assert!(
        !dir.path().join("mcplexer/vault.sock").exists(),
        "the vault bound a socket of its own"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(activator.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(activator.wait().unwrap().success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("using the socket passed by systemd"), "{log}");
    assert!(
        socket.exists(),
        "the vault removed the socket it was passed"
    );
}

#[test]
fn sockets_passed_to_another_process_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("own.sock");
    let mut cmd = Command::new(bin("mcplexer-vaultd"));
    cmd.args(["--user", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1");
    let mut vault = spawn_ready(cmd, &dir.path().join("notify")).unwrap();
    let status = ctl(&socket, &["status"]);
    assert!(status.status.success(), "{status:?}");
    vault.kill().unwrap();
    vault.wait().unwrap();
}

/// Runs `systemd-analyze verify` (`--user` for user units) on the socket
/// and service units `<name>.socket` and `<name>.service` from `units`,
/// with ExecStart pointed at the built `program` (verify wants it to
/// exist); asserts success with nothing on stderr.
fn verify_units(units: &Path, name: &str, program: &str, user: bool) {
    let dir = tempfile::tempdir().unwrap();
    let copies: Vec<PathBuf> = ["socket", "service"]
        .iter()
        .map(|kind| {
            let file = format!("{name}.{kind}");
            let text = std::fs::read_to_string(units.join(&file)).unwrap().replace(
                &format!("ExecStart=/usr/bin/{program}"),
                &format!("ExecStart={}", bin(program).display()),
            );
            std::fs::write(dir.path().join(&file), text).unwrap();
            dir.path().join(file)
        })
        .collect();
    // A user manager's runtime directory (%t), private as systemd wants it.
    let runtime = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]).args(&copies);
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
    }
    let verify = cmd.output().unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn the_units_verify_and_the_vault_scores_at_most_1_5() {
    let units = units_dir();
    verify_units(&units, "mcplexer-vaultd", "mcplexer-vaultd", false);

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=15"])
        .arg(units.join("mcplexer-vaultd.service"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure over 1.5:\n{stdout}");
    assert!(
        security.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&security.stderr)
    );
    let score: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for mcplexer-vaultd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{stdout}"));
    assert!(score <= 1.5, "{score}");
}

#[test]
fn sysusers_and_tmpfiles_make_the_users_groups_and_directories() {
    let packaging = units_dir().join("..");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    for (kind, tool) in [
        ("sysusers.d", "systemd-sysusers"),
        ("tmpfiles.d", "systemd-tmpfiles"),
    ] {
        let dir = r.join("usr/lib").join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            packaging.join(kind).join("mcplexer.conf"),
            dir.join("mcplexer.conf"),
        )
        .unwrap();
        let mut cmd = Command::new(tool);
        cmd.arg(format!("--root={}", r.display()));
        if tool == "systemd-tmpfiles" {
            cmd.arg("--create");
        }
        let out = cmd.arg("mcplexer.conf").output().unwrap();
        assert!(out.status.success(), "{tool}: {out:?}");
    }
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    let field = |text: &str, name: &str, i: usize| -> String {
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f[0] == name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))[i]
            .to_owned()
    };
    let uid: u32 = field(&passwd, "mcplexer", 2).parse().unwrap();
    let gid: u32 = field(&group, "mcplexer", 2).parse().unwrap();
    assert_eq!(
        field(&passwd, "mcplexer", 3),
        gid.to_string(),
        "primary group"
    );
    assert_eq!(field(&passwd, "mcplexer", 5), "/var/lib/mcplexer");
    assert_eq!(field(&passwd, "mcplexer", 6), "/usr/sbin/nologin");
    field(&group, "mcplexer-admin", 2);
    use std::os::unix::fs::MetadataExt;
    for (path, mode, owner, group) in [
        ("var/lib/mcplexer", 0o700, uid, gid),
        ("run/mcplexer", 0o755, uid, gid),
        ("etc/mcplexer", 0o755, 0, 0),
    ] {
        let meta = std::fs::metadata(r.join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
        assert_eq!((meta.uid(), meta.gid()), (owner, group), "{path}");
    }
}

#[test]
fn the_proxy_serves_on_the_socket_systemd_passes() {
    use std::io::{Read, Write};
    let vault = mcplexer_tests::Vault::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(bin("mcplexer-proxy"))
        .arg("--socket")
        .arg(&vault.socket)
        .args(["serve", "--cwd", "/tmp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(activator.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("Listening on"), "{line:?}");

    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        conn,
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("mcp-session-id: "), "{answer}");
    assert!(answer.contains("\"serverInfo\""), "{answer}");

    let mut endpoint = String::new();
    BufReader::new(activator.stdout.take().unwrap())
        .read_line(&mut endpoint)
        .unwrap();
    assert_eq!(endpoint.trim(), format!("unix:{}", socket.display()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(activator.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(activator.wait().unwrap().success());
    assert!(
        socket.exists(),
        "the proxy removed the socket it was passed"
    );
}

#[test]
fn the_proxy_user_units_verify() {
    verify_units(
        &units_dir().join("user"),
        "mcplexer-proxy",
        "mcplexer-proxy",
        true,
    );
}
