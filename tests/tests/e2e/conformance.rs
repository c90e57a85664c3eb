//! The official MCP conformance suite (`@modelcontextprotocol/conformance`,
//! pinned in tests/peers, server mode, `--suite all`) against our reference
//! server (tests/peers/conformance_server.mjs) directly, and through
//! `mcplexer-proxy serve` with that server mounted unprefixed as a stdio
//! downstream and as a streamable-HTTP downstream: every scenario that
//! passes directly passes through the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use mcplexer_tests::peers::{node, peers_dir};
use mcplexer_tests::{Vault, bin};

/// A running process, killed and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and reads its first stdout line (the address it serves).
fn start_announcing(mut cmd: Command) -> (Running, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Running(child), line.trim().to_owned())
}

/// The reference server over streamable HTTP; returns it and its URL.
fn reference_over_http() -> (Running, String) {
    let mut cmd = Command::new(node());
    cmd.arg(peers_dir().join("conformance_server.mjs"))
        .arg("http");
    let (server, line) = start_announcing(cmd);
    let url = line
        .strip_prefix("URL=")
        .unwrap_or_else(|| panic!("no URL line: {line:?}"))
        .to_owned();
    (server, url)
}

/// Runs the whole server suite against `url`.
fn suite(url: &str) -> Output {
    Command::new(node())
        .arg(peers_dir().join("conformance.mjs"))
        .arg(url)
        .args(["--suite", "all"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn assert_passes(url: &str, what: &str) {
    let out = suite(url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("conformance ({what}):\n{stdout}");
    assert!(
        out.status.success(),
        "the conformance suite failed {what}:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("scenarios: 32 passed, 0 failed"),
        "{stdout}"
    );
}

/// A vault whose configuration mounts the reference server unprefixed
/// (`server` is the YAML of its transport), with one rule routing every
/// name to it; and `mcplexer-proxy serve` on it, with its URL.
fn gateway(server: &str) -> (Vault, Running, String) {
    let vault = Vault::start();
    let doc = format!(
        r#"
downstream_servers:
  - {{id: reference, name: Reference, {server}, tool_namespace: ref, unprefixed: true}}
route_rules:
  - {{name: everything, tool_match: ["*"], downstream_server_id: reference}}
"#
    );
    let path = vault.write_file("conformance.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let mut cmd = Command::new(bin("mcplexer-proxy"));
    cmd.arg("--socket").arg(&vault.socket).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cwd",
        "/tmp",
    ]);
    let (proxy, url) = start_announcing(cmd);
    (vault, proxy, url)
}

#[test]
fn the_reference_server_passes_the_whole_suite_directly() {
    let (_server, url) = reference_over_http();
    assert_passes(&url, "directly");
}

#[test]
fn the_whole_suite_passes_through_the_gateway_to_a_stdio_downstream() {
    let server = format!(
        "transport: stdio, command: {}, args: [{}, stdio]",
        node().display(),
        peers_dir().join("conformance_server.mjs").display()
    );
    let (_vault, _proxy, url) = gateway(&server);
    assert_passes(&url, "through the gateway to a stdio downstream");
}

#[test]
fn the_whole_suite_passes_through_the_gateway_to_an_http_downstream() {
    let (_server, downstream) = reference_over_http();
    let (_vault, _proxy, url) = gateway(&format!("transport: http, url: {downstream}"));
    assert_passes(&url, "through the gateway to an HTTP downstream");
}
