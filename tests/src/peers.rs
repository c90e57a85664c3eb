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

/// Runs `tests/peers/mcp_client.py --url URL`: connects to a
/// streamable-HTTP MCP endpoint, runs the steps of `script` in one session
/// and returns the driver's JSON (see [`mcp_client`]).
pub fn mcp_client_http(url: &str, script: &serde_json::Value) -> serde_json::Value {
    mcp_client_http_roots(url, &[], script)
}

/// Like [`mcp_client_http`], with a client that declares the `roots`
/// capability and answers `roots/list` with `roots` (URIs, in order). With
/// roots it speaks the session protocol (`--mode legacy`): only a session
/// lets the proxy ask the client for its roots.
pub fn mcp_client_http_roots(
    url: &str,
    roots: &[&str],
    script: &serde_json::Value,
) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("mcp_client.py"))
        .arg("--url")
        .arg(url);
    if !roots.is_empty() {
        cmd.args(["--mode", "legacy"]);
    }
    for root in roots {
        cmd.arg("--root").arg(root);
    }
    run_driver(cmd, script)
}

/// Runs `tests/peers/mcp_client.py ARGS` (its options, then `-- COMMAND
/// …` or `--url URL`) with `script`; returns the driver's JSON.
pub fn mcp_client_args(args: &[String], script: &serde_json::Value) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(peers_dir().join("mcp_client.py")).args(args);
    run_driver(cmd, script)
}

/// Runs a prepared `mcp_client.py` command with `script` on stdin; returns
/// its JSON, panicking with its stdout and stderr unless it exits 0 with
/// JSON.
fn run_driver(mut cmd: Command, script: &serde_json::Value) -> serde_json::Value {
    cmd.stdin(Stdio::piped())
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
    cmd.arg("--").arg(command).args(args);
    run_driver(cmd, script)
}

/// How long `tests/peers/header_server.py` may take to print its URL.
const HEADER_SERVER_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A running `tests/peers/header_server.py`: a real MCP server on the
/// official Python SDK, serving streamable HTTP on 127.0.0.1 (a port the OS
/// picked) at `/mcp`, whose tools report the HTTP request headers of the
/// POST that carried the call: `show_header {"name"}` (the value, or
/// `<absent>`), `show_headers {}` (a JSON object of every header, lower-case
/// names) and `echo {"message"}`. The SDK's DNS-rebinding check is on: the
/// Host header must be `127.0.0.1:<port>` (or `localhost:<port>`).
///
/// The server's stderr (its log, including an access log) is forwarded to
/// this process's stderr, prefixed `header_server:`, so a failing test shows
/// it. Killed and reaped on drop.
pub struct HeaderServer {
    /// The MCP endpoint, `http://127.0.0.1:<port>/mcp`.
    pub url: String,
    child: std::process::Child,
}

impl HeaderServer {
    /// Starts the server with the venv's Python and waits (without sleeping)
    /// for its `URL=…` line on stdout, printed once it accepts connections.
    /// `json_response` makes it answer each POST with one `application/json`
    /// body instead of the SDK's default `text/event-stream`. Panics with the
    /// server's stderr if it exits, or stays silent for a minute, first.
    pub fn start(json_response: bool) -> HeaderServer {
        Self::start_on(json_response, 0)
    }

    /// Like [`HeaderServer::start`], on `port` (0: one the OS picks); a
    /// test restarts a server on its old port this way.
    pub fn start_on(json_response: bool, port: u16) -> HeaderServer {
        use std::io::BufRead as _;

        let mut cmd = Command::new(python());
        cmd.arg(peers_dir().join("header_server.py"))
            .arg("--port")
            .arg(port.to_string());
        if json_response {
            cmd.arg("--json-response");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn header_server.py");

        // Drain stderr for the server's whole life (a full pipe would block
        // it), forwarding each line and keeping them for a start-up failure.
        let stderr = child.stderr.take().expect("header_server.py stderr");
        let stderr_lines = std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("header_server: {line}");
                seen.push_str(&line);
                seen.push('\n');
            }
            seen
        });

        // The first stdout line, read on a thread so that it can time out.
        let stdout = child.stdout.take().expect("header_server.py stdout");
        let (first_line_tx, first_line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = std::io::BufReader::new(stdout).read_line(&mut line);
            // The receiver is gone only if start() already gave up.
            let _ = first_line_tx.send(read.map(|_| line));
        });

        let first_line = first_line_rx.recv_timeout(HEADER_SERVER_START_TIMEOUT);
        let url = match &first_line {
            Ok(Ok(line)) => line.trim_end().strip_prefix("URL=").map(str::to_owned),
            _ => None,
        };
        match url {
            Some(url) => HeaderServer { url, child },
            None => {
                // Exited, or silent too long: stop it so that stderr ends.
                let _ = child.kill();
                let status = child.wait().expect("wait for header_server.py");
                let stderr = stderr_lines.join().unwrap_or_default();
                panic!(
                    "header_server.py printed no URL line (first line: {first_line:?}, \
                     status: {status}):\n--- stderr\n{stderr}"
                )
            }
        }
    }
}

impl Drop for HeaderServer {
    /// Kills the server (SIGKILL) and reaps it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
