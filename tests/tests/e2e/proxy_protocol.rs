//! The proxy's protocol duties, with a raw newline-delimited JSON-RPC client
//! (so the test sees every message): progress notifications of a long call
//! relayed under the client's token and never after completion; a call
//! cancelled by the client gets no response, the downstream is told, and the
//! session goes on; full logging records the redacted response; malformed
//! input gets JSON-RPC errors and the session survives; the proxy's own log
//! (at debug level) never holds a released value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use mcplexer_tests::peers::{node, server_everything};
use mcplexer_tests::{Vault, bin};
use serde_json::{Value, json};

pub(crate) struct RawClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Every message read so far.
    pub(crate) seen: Vec<Value>,
    /// The proxy's log (its stderr, at debug level), read to the end.
    log: std::thread::JoinHandle<String>,
}

impl RawClient {
    pub(crate) fn start(vault: &Vault) -> Self {
        Self::start_with(vault, json!({}))
    }

    /// A client that declares `capabilities` at `initialize`.
    pub(crate) fn start_with(vault: &Vault, capabilities: Value) -> Self {
        let mut client = Self::spawn(vault);
        client.send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": capabilities,
            "clientInfo": {"name": "raw", "version": "1"}}}),
        );
        let init = client.until(|m| m["id"] == 0);
        assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init:#}");
        client.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        client
    }

    /// A client that has sent nothing yet (a stateless one starts with
    /// its first request).
    pub(crate) fn spawn(vault: &Vault) -> Self {
        let node_dir = node().parent().unwrap().display().to_string();
        let mut child = Command::new(bin("mcplexer-proxy"))
            .arg("--socket")
            .arg(&vault.socket)
            .arg("stdio")
            .current_dir("/tmp")
            .env_clear()
            .env("PATH", format!("{node_dir}:/usr/bin:/bin"))
            .env("MCPLEXER_LOG", "debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            log,
        }
    }

    pub(crate) fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    pub(crate) fn send(&mut self, message: Value) {
        self.send_line(&message.to_string());
    }

    /// Reads messages until one satisfies `want`; returns it.
    pub(crate) fn until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the proxy closed stdout; seen: {:#?}", self.seen);
            let message: Value = serde_json::from_str(&line).unwrap();
            self.seen.push(message.clone());
            if want(&message) {
                return message;
            }
        }
    }

    /// Closes stdin and reads everything until the proxy exits; returns
    /// every message and the proxy's log.
    pub(crate) fn finish(mut self) -> (Vec<Value>, String) {
        drop(self.stdin.take());
        let mut rest = String::new();
        while self.stdout.read_line(&mut rest).unwrap() > 0 {
            self.seen.push(serde_json::from_str(&rest).unwrap());
            rest.clear();
        }
        assert!(self.child.wait().unwrap().success());
        let log = self.log.join().unwrap();
        // stderr is a pipe here, as for an MCP client: plain text.
        assert!(
            !log.contains('\x1b'),
            "terminal escapes in a log that is not a terminal: {log:?}"
        );
        (self.seen, log)
    }
}

fn setup() -> Vault {
    let vault = Vault::start();
    let (program, args) = server_everything();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: ev-token, name: Everything token, type: env, redaction_hints: [secret]}}
downstream_servers:
  - {{id: everything, name: Everything, transport: stdio, command: {}, args: {}, tool_namespace: ev}}
route_rules:
  - {{name: echo logged, tool_match: ["ev__echo"], downstream_server_id: everything, auth_scope_id: ev-token, log_full: true}}
  - {{name: everything, tool_match: ["ev__*"], downstream_server_id: everything, auth_scope_id: ev-token}}
"#,
        program.display(),
        serde_json::to_string(&args).unwrap()
    );
    let path = vault.write_file("protocol.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(
            ["secret", "set", "ev-token", "EV_TOKEN"],
            b"protocol-token-3e9",
        )
        .ok();
    vault
}

#[test]
fn progress_is_relayed_and_a_cancelled_call_gets_no_response() {
    let vault = setup();
    let mut client = RawClient::start(&vault);
    // A long call with progress: every notification carries our token and
    // comes before the response.
    client.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "ev__trigger-long-running-operation",
        "arguments": {"duration": 1, "steps": 3},
        "_meta": {"progressToken": "tok-1"}}}),
    );
    let done = client.until(|m| m["id"] == 1);
    assert!(done["result"].is_object(), "{done:#}");
    let progress: Vec<&Value> = client
        .seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress relayed: {:#?}",
        client.seen
    );
    assert!(
        progress
            .iter()
            .all(|m| m["params"]["progressToken"] == "tok-1")
    );

    // A long call cancelled after its first progress notification.
    client.send(
        json!({"jsonrpc": "2.0", "id": "7", "method": "tools/call", "params": {
        "name": "ev__trigger-long-running-operation",
        "arguments": {"duration": 60, "steps": 60},
        "_meta": {"progressToken": 77}}}),
    );
    client.until(|m| m["method"] == "notifications/progress" && m["params"]["progressToken"] == 77);
    client.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "7", "reason": "test"}}));
    // The session goes on: a ping and a call are answered.
    client.send(json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}));
    client.until(|m| m["id"] == 8);
    client.send(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "ev__echo", "arguments": {"message": "after cancel protocol-token-3e9", "secret": "s-123"}}}));
    let echo = client.until(|m| m["id"] == 9);
    assert_eq!(
        echo["result"]["content"][0]["text"],
        "Echo: after cancel protocol-token-3e9"
    );

    let (seen, log) = client.finish();
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "the proxy logged nothing: {log}"
    );
    assert!(
        !log.contains("protocol-token-3e9"),
        "a released value reached the proxy's log"
    );
    assert!(
        !seen.iter().any(|m| m["id"] == "7"),
        "a cancelled request was answered: {seen:#?}"
    );
    let calls = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let calls = calls.as_array().unwrap();
    let cancelled = calls
        .iter()
        .filter(|r| r["tool"] == "ev__trigger-long-running-operation")
        .find(|r| r["status"] == "error")
        .unwrap_or_else(|| panic!("{calls:#?}"));
    assert!(
        cancelled["error"]
            .as_str()
            .unwrap()
            .contains("cancelled by the client")
    );
    // Full logging on the echo rule: the response is recorded, redacted.
    let echo = calls.iter().find(|r| r["tool"] == "ev__echo").unwrap();
    assert_eq!(echo["route_rule_id"], "echo-logged");
    let response = echo["response"].as_str().unwrap();
    assert!(
        response.contains("Echo: after cancel [REDACTED]"),
        "{response}"
    );
    assert!(!response.contains("protocol-token-3e9"));
    assert_eq!(
        serde_json::from_str::<Value>(echo["params"].as_str().unwrap()).unwrap(),
        json!({"message": "after cancel [REDACTED]", "secret": "[REDACTED]"})
    );
    let other = calls
        .iter()
        .find(|r| r["tool"] == "ev__trigger-long-running-operation" && r["status"] == "success")
        .unwrap();
    assert_eq!(
        other["response"], "",
        "a rule without log_full logged a response"
    );
}

#[test]
fn malformed_input_gets_json_rpc_errors_and_the_session_survives() {
    let vault = setup();
    let mut client = RawClient::start(&vault);
    client.send_line("this is not json");
    let parse = client.until(|m| m.get("error").is_some());
    assert_eq!(parse["error"]["code"], -32700);
    client.send_line(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
    let batch = client.until(|m| m.get("error").is_some() && m["error"]["code"] == -32600);
    assert!(
        batch["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batches")
    );
    client.send(json!({"jsonrpc": "2.0", "id": 2, "method": "no/such-method"}));
    let unknown = client.until(|m| m["id"] == 2);
    assert_eq!(unknown["error"]["code"], -32601);
    client.send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {}}));
    let no_name = client.until(|m| m["id"] == 3);
    assert_eq!(no_name["error"]["code"], -32602);
    client.send(
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"cursor": "bogus"}}),
    );
    let cursor = client.until(|m| m["id"] == 4);
    assert_eq!(cursor["error"]["code"], -32602);
    client.send(json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}));
    let pong = client.until(|m| m["id"] == 5);
    assert_eq!(pong["result"], json!({}));
    let (_, log) = client.finish();
    assert!(!log.contains("protocol-token-3e9"));
}

/// A new secret value replaces the child for new calls; a call already
/// running on the old child still gets its answer (and its progress).
#[test]
fn a_rotation_does_not_cut_off_a_call_in_flight() {
    let vault = setup();
    let mut client = RawClient::start(&vault);
    client.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "ev__trigger-long-running-operation",
        "arguments": {"duration": 6, "steps": 6},
        "_meta": {"progressToken": "long-1"}}}),
    );
    // The call is running in the child once its first progress arrives.
    client.until(|m| m["method"] == "notifications/progress");
    vault
        .ctl_input(
            ["secret", "set", "ev-token", "EV_TOKEN"],
            b"rotated-token-71c",
        )
        .ok();
    client.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "ev__get-env", "arguments": {}}}),
    );
    let env = client.until(|m| m["id"] == 2);
    assert!(
        env.to_string().contains("rotated-token-71c"),
        "the new value did not reach the new child: {env:#}"
    );
    let long = client.until(|m| m["id"] == 1);
    assert!(
        long["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Long running operation completed")),
        "the call in flight was cut off: {long:#}"
    );
    let (_, log) = client.finish();
    assert!(log.contains("replacing the downstream"), "{log}");
}
