//! The real MCP peers the end-to-end tests drive, installed at pinned
//! versions by `tests/peers/install.sh` (run by `.ci/run`): the reference
//! server `@modelcontextprotocol/server-everything` (npm) and the official
//! Python SDK (`mcp`, PyPI) behind `tests/peers/mcp_client.py`, a scripted
//! stdio client.
//!
//! Trust: test code only. A missing peer or a failed run aborts the test,
//! hence `expect` and panics with the peer's own output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `tests/peers` directory: pins, install script, `node_modules/`, `.venv/`.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The `node` executable found on `PATH`.
pub fn node() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("node"))
        .find(|candidate| candidate.is_file())
        .expect("node is not on PATH (the MCP peers need Node 20)")
}

/// Program and arguments that run server-everything as an MCP stdio server
/// (`node …/server-everything/dist/index.js stdio`), with absolute paths so
/// that it starts under an empty environment.
pub fn server_everything() -> (PathBuf, Vec<String>) {
    let entry =
        peers_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        entry.is_file(),
        "{} is missing: run tests/peers/install.sh",
        entry.display()
    );
    (
        node(),
        vec![entry.display().to_string(), "stdio".to_owned()],
    )
}

/// The Python interpreter of `tests/peers/.venv`, which has the MCP SDK.
pub fn python() -> PathBuf {
    let python = peers_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run tests/peers/install.sh",
        python.display()
    );
    python
}

/// Runs `tests/peers/mcp_client.py`: starts `command args` as an MCP stdio
/// server in `cwd` with exactly the environment `env` (nothing inherited),
/// runs the steps of `script` (see the driver's doc) in one session and
/// returns the driver's JSON, `{"protocol_version": …, "results": […]}`.
/// Panics with the driver's stdout and stderr unless it exits 0 with JSON.
pub fn mcp_client(
    cwd: &Path,
    env: &[(&str, &str)],
    command: &Path,
    args: &[String],
    script: &serde_json::Value,
) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("mcp_client.py"))
        .arg("--cwd")
        .arg(cwd);
    for (key, value) in env {
        cmd.arg("--env").arg(format!("{key}={value}"));
    }
    cmd.arg("--")
        .arg(command)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn mcp_client.py");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(script.to_string().as_bytes())
            .expect("write the script to mcp_client.py");
    }
    let out = child.wait_with_output().expect("wait for mcp_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mcp_client.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("mcp_client.py printed no JSON ({e}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    })
}
