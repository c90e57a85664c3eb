//! The vault's own runtime hardening, outside systemd.
//!
//! Proves: in system mode the vault refuses to run as root unless told to
//! drop to a user; with `--run-as` it drops to that uid and gid, keeps no
//! supplementary group and no capability in any set (/proc/PID/status),
//! sets no_new_privs, and still serves; it is non-dumpable, so even its
//! own uid cannot read its /proc/PID/environ; and SIGABRT kills it without
//! a core dump. Its age identity lies in locked memory: the key's 32 bytes
//! are found in a mapping /proc/PID/smaps shows as locked, and `status`
//! says what is locked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use mcplexer_tests::{Vault, bin, spawn_ready};

/// The uid and gid the vault drops to (no passwd entry needed).
const SERVICE: u32 = 47010;

fn chown(path: &Path, id: u32) {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(id)),
        Some(nix::unistd::Gid::from_raw(id)),
    )
    .unwrap();
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn root_in_system_mode_is_refused_without_run_as() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("mcplexer-vaultd"))
        .args(["--system", "--client-group", "0", "--admin-group", "0"])
        .arg("--socket")
        .arg(dir.path().join("vault.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to run as root in system mode") && err.contains("--run-as"),
        "{err}"
    );
    assert!(
        !dir.path().join("state").exists(),
        "it touched the state dir"
    );
}

#[test]
fn run_as_drops_every_privilege_and_the_vault_stays_undumpable() {
    let dir = tempfile::tempdir().unwrap();
    // Reachable by the service user: the state, the socket's directory and
    // the notification socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    for d in [&state, &run] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(d, SERVICE);
    }
    let socket = run.join("vault.sock");
    let mut cmd = Command::new(bin("mcplexer-vaultd"));
    cmd.args(["--system", "--run-as", &format!("{SERVICE}:{SERVICE}")])
        .args(["--client-group", &SERVICE.to_string()])
        .args(["--admin-group", "0"])
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .current_dir(&state);
    let mut vault = spawn_ready(cmd, &dir.path().join("notify")).unwrap();
    let pid = vault.id();

    let id = SERVICE.to_string();
    assert_eq!(status_field(pid, "Uid"), [id.as_str(); 4].join(" "));
    assert_eq!(status_field(pid, "Gid"), [id.as_str(); 4].join(" "));
    assert_eq!(status_field(pid, "Groups"), "");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    // It serves (root is an admin in system mode).
    let status = Command::new(bin("mcplexerctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["--json", "status"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["mode"], "system");

    // Non-dumpable: not even its own uid may read its environment or memory.
    for file in ["environ", "mem"] {
        let read = Command::new("setpriv")
            .args([
                &format!("--reuid={SERVICE}"),
                &format!("--regid={SERVICE}"),
                "--clear-groups",
                "head",
                "-c1",
            ])
            .arg(format!("/proc/{pid}/{file}"))
            .output()
            .unwrap();
        assert!(!read.status.success(), "{file} was readable");
        assert!(
            String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
            "{file}: {read:?}"
        );
    }

    // SIGABRT: killed by the signal, no core.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGABRT,
    )
    .unwrap();
    let ended = vault.wait().unwrap();
    assert_eq!(ended.signal(), Some(libc::SIGABRT), "{ended:?}");
    assert!(!ended.core_dumped(), "a core was dumped");
    let cores: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "{cores:?}");
}

/// The 32 key bytes of an `AGE-SECRET-KEY-1…` line (bech32, checksum not
/// checked: the vault wrote it).
fn age_key_bytes(line: &str) -> Vec<u8> {
    const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let data = line.to_ascii_lowercase();
    let data = data.strip_prefix("age-secret-key-1").unwrap();
    let data = &data.as_bytes()[..data.len() - 6];
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in data {
        let v = CHARSET.iter().position(|x| x == c).unwrap() as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    assert_eq!(out.len(), 32, "{line}");
    out
}

/// The address ranges of `pid`'s mappings with locked pages.
fn locked_ranges(pid: u32) -> Vec<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut ranges = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            current = Some((start, end));
        } else if let Some(kb) = line.strip_prefix("Locked:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            if kb > 0 {
                ranges.push(current.unwrap());
            }
        }
    }
    ranges
}

#[test]
fn the_identity_lives_in_locked_memory() {
    use std::io::{Read, Seek, SeekFrom};
    let vault = Vault::start();
    let text = std::fs::read_to_string(vault.state_dir.join("identity.txt")).unwrap();
    let key = age_key_bytes(
        text.lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .unwrap(),
    );
    let pid = vault.pid();

    let locked_kb: u64 = status_field(pid, "VmLck")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(locked_kb >= 4, "VmLck {locked_kb} kB");
    let ranges = locked_ranges(pid);
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let found = ranges.iter().any(|&(start, end)| {
        let mut bytes = vec![0u8; (end - start) as usize];
        mem.seek(SeekFrom::Start(start)).unwrap();
        mem.read_exact(&mut bytes).is_ok() && mcplexer_tests::contains_bytes(&bytes, &key)
    });
    assert!(
        found,
        "the key is in none of the locked mappings {ranges:x?}"
    );

    // Under this machine's finite RLIMIT_MEMLOCK only the identity is
    // locked; under an unlimited one, everything.
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap();
    let expected = if soft == nix::sys::resource::RLIM_INFINITY {
        "all"
    } else {
        "identity"
    };
    let status = vault.ctl(["--json", "status"]).json();
    assert_eq!(status["memory_lock"], expected, "{status}");
}
