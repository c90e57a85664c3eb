//! Both protocol eras through the proxy, with the official Python SDK
//! client in each of its modes: `legacy` (initialize, sessions), `auto`
//! (probes `server/discover`, which the proxy answers, so it goes
//! stateless) and pinned `2026-07-28` (stateless from the first request),
//! over stdio and over `serve`, to a legacy downstream (server-everything):
//! tools, prompts and resources work in every mode, results carry what the
//! stateless revision requires, and the stateless HTTP requests' headers
//! are checked against their bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use mcplexer_tests::bin;
use mcplexer_tests::peers::mcp_client_args;
use serde_json::{Value, json};

use crate::proxy::{FIRST, env_of, proxy_env, start};

fn script() -> Value {
    json!([
        {"op": "list_tools"},
        {"op": "call", "name": "ev__get-env", "arguments": {}},
        {"op": "call", "name": "ev__get-sum", "arguments": {"a": 1, "b": 2}},
        {"op": "list_prompts"},
        {"op": "get_prompt", "name": "ev__simple-prompt"},
        {"op": "list_resources"},
        {"op": "read_resource", "uri": "demo://resource/dynamic/text/5"},
    ])
}

/// The results are the same in every mode.
fn check(out: &Value, mode: &str) {
    let results = out["results"].as_array().unwrap();
    let tools = results[0]["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("ev__get-env")), "{mode}: {out:#}");
    assert_eq!(env_of(&results[1])["EV_TOKEN"], FIRST, "{mode}");
    assert!(
        crate::proxy::error_message(&results[2]).contains("denied by route rule no-sums"),
        "{mode}: {:#}",
        results[2]
    );
    assert!(
        results[3]["prompts"]
            .as_array()
            .unwrap()
            .contains(&json!("ev__simple-prompt")),
        "{mode}: {out:#}"
    );
    assert!(
        results[4]["messages"].is_array(),
        "{mode}: {:#}",
        results[4]
    );
    assert!(
        !results[5]["resources"].as_array().unwrap().is_empty(),
        "{mode}: {out:#}"
    );
    let text = results[6]["contents"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.starts_with("Resource 5"), "{mode}: {:#}", results[6]);
}

fn over_stdio(vault: &mcplexer_tests::Vault, mode: &str, script: &Value) -> Value {
    let mut args = vec!["--cwd".to_owned(), "/tmp".to_owned()];
    for (key, value) in proxy_env() {
        args.push("--env".into());
        args.push(format!("{key}={value}"));
    }
    args.extend(["--mode".into(), mode.into(), "--".into()]);
    args.push(bin("mcplexer-proxy").display().to_string());
    args.extend([
        "--socket".into(),
        vault.socket.display().to_string(),
        "stdio".into(),
    ]);
    mcp_client_args(&args, script)
}

#[test]
fn every_client_mode_works_over_stdio() {
    let vault = start();
    for (mode, version) in [
        ("legacy", "2025-11-25"),
        ("auto", "2026-07-28"),
        ("2026-07-28", "2026-07-28"),
    ] {
        let out = over_stdio(&vault, mode, &script());
        assert_eq!(out["protocol_version"], version, "{mode}: {out:#}");
        check(&out, mode);
    }
}

#[test]
fn every_client_mode_works_over_serve_and_stateless_headers_are_checked() {
    let vault = start();
    let proxy = Command::new(bin("mcplexer-proxy"))
        .arg("--socket")
        .arg(&vault.socket)
        .args(["serve", "--listen", "127.0.0.1:0", "--cwd", "/tmp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut proxy = Killed(proxy);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line.trim().to_owned();
    for (mode, version) in [
        ("legacy", "2025-11-25"),
        ("auto", "2026-07-28"),
        ("2026-07-28", "2026-07-28"),
    ] {
        let args = vec![
            "--url".to_owned(),
            url.clone(),
            "--mode".into(),
            mode.into(),
        ];
        let out = mcp_client_args(&args, &script());
        assert_eq!(out["protocol_version"], version, "{mode}: {out:#}");
        check(&out, mode);
    }

    // Raw stateless requests: a result carries resultType and the cache
    // fields; a header that disagrees with the body is refused with 400
    // and -32020; an unknown version with 400 and -32022.
    let authority = url.trim_start_matches("http://").trim_end_matches("/mcp");
    let post = |headers: &[(&str, &str)], body: &Value| {
        let body = body.to_string();
        let mut request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let mut stream = std::net::TcpStream::connect(authority).unwrap();
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let list =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}});
    let (status, body) = post(
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/list"),
        ],
        &list,
    );
    assert!(status.contains("200"), "{status} {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"]["resultType"], "complete", "{answer:#}");
    assert_eq!(answer["result"]["cacheScope"], "private", "{answer:#}");
    assert_eq!(
        answer["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "mcplexer-proxy"
    );
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "ev__echo", "arguments": {"message": "x"}, "_meta": meta}});
    let (status, body) = post(
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "ev__get-env"),
        ],
        &call,
    );
    assert!(
        status.contains("400") && body.contains("-32020"),
        "{status} {body}"
    );
    let (status, body) = post(
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "=?base64?ZXZfX2VjaG8=?="),
        ],
        &call,
    );
    assert!(
        status.contains("200") && body.contains("Echo: x"),
        "{status} {body}"
    );
    // Stateless requests of different clients may carry the same id at
    // the same time: each is answered.
    let slow = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "ev__trigger-long-running-operation", "arguments": {"duration": 1, "steps": 2},
        "_meta": meta}});
    let headers = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "ev__trigger-long-running-operation"),
    ];
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| post(&headers, &slow));
        let second = scope.spawn(|| post(&headers, &slow));
        (first.join().unwrap(), second.join().unwrap())
    });
    for (status, body) in [first, second] {
        assert!(
            status.contains("200") && body.contains("Long running operation completed"),
            "{status} {body}"
        );
    }
    // Two clients with the same progress token at the same time: each
    // hears its own call's progress, all of it, under its token.
    let with_progress = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
        "name": "ev__trigger-long-running-operation", "arguments": {"duration": 1, "steps": 2},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": "p"}}});
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| post(&headers, &with_progress));
        let second = scope.spawn(|| post(&headers, &with_progress));
        (first.join().unwrap(), second.join().unwrap())
    });
    for (status, body) in [first, second] {
        assert!(status.contains("200"), "{status} {body}");
        assert_eq!(
            body.matches("notifications/progress").count(),
            2,
            "each stream has its own call's progress: {body}"
        );
        assert!(body.contains(r#""progressToken":"p""#), "{body}");
        assert!(!body.contains("mcplexer-progress"), "{body}");
    }
    // A missing resource is invalid params in the stateless revision;
    // a handshake is not part of it.
    let missing = json!({"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {
        "uri": "nowhere://x", "_meta": meta}});
    let (_, body) = post(
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "resources/read"),
            ("Mcp-Name", "nowhere://x"),
        ],
        &missing,
    );
    assert!(
        body.contains("-32602") && !body.contains("-32002"),
        "{body}"
    );
    let init = json!({"jsonrpc": "2.0", "id": 10, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
        "clientInfo": {"name": "x", "version": "1"}, "_meta": meta}});
    let (_, body) = post(
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "initialize"),
        ],
        &init,
    );
    assert!(body.contains("-32601"), "{body}");
    let future = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2099-01-01",
        "io.modelcontextprotocol/clientCapabilities": {}}}});
    let (status, body) = post(
        &[
            ("MCP-Protocol-Version", "2099-01-01"),
            ("Mcp-Method", "tools/list"),
        ],
        &future,
    );
    assert!(
        status.contains("400") && body.contains("-32022"),
        "{status} {body}"
    );
}

/// A child killed and reaped on drop (also when an assertion fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stateless_client_hears_of_list_changes_on_its_listen_stream() {
    let vault = start();
    let mut client = crate::proxy_protocol::RawClient::spawn(&vault);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    client.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}),
    );
    let discovered = client.until(|m| m["id"] == 1);
    let versions = discovered["result"]["supportedVersions"]
        .as_array()
        .unwrap();
    assert_eq!(versions[0], "2026-07-28", "{discovered:#}");
    assert!(versions.contains(&json!("2025-11-25")), "{discovered:#}");
    assert_eq!(discovered["result"]["resultType"], "complete");

    // Listen for tool changes only: the acknowledgement says what is
    // honoured, and names the stream.
    client.send(json!({"jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen",
        "params": {"_meta": meta, "notifications": {"toolsListChanged": true, "resourceSubscriptions": ["x://y"]}}}));
    let ack = client.until(|m| m["method"] == "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "{ack:#}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );

    // A configuration change reaches the stream, tagged; nothing the
    // stream did not ask for comes.
    let path = vault.write_file(
        "more.yaml",
        "workspaces:\n  - {name: elsewhere, root_path: /srv/elsewhere}\n",
    );
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let changed = client.until(|m| m["method"] == "notifications/tools/list_changed");
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "listen-1"
    );

    // A handshake on a stateless connection is refused with the versions
    // to use; the stream ends when cancelled, with no response.
    client.send(json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}));
    let refused = client.until(|m| m["id"] == 2);
    assert_eq!(refused["error"]["code"], -32022, "{refused:#}");
    client.send(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "listen-1"}}));
    client.send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": meta}}),
    );
    let listed = client.until(|m| m["id"] == 3);
    assert_eq!(listed["result"]["resultType"], "complete", "{listed:#}");
    let (seen, _) = client.finish();
    assert!(
        !seen.iter().any(|m| m["id"] == "listen-1"),
        "a cancelled listen got a response: {seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| m["method"] == "notifications/prompts/list_changed"),
        "a notification nobody asked for was sent: {seen:#?}"
    );
}

#[test]
fn a_server_that_speaks_only_the_stateless_protocol_is_a_downstream() {
    let vault = mcplexer_tests::Vault::start();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: st-token, name: Stateless token, type: env}}
downstream_servers:
  - {{id: stateless, name: Stateless, transport: stdio, command: {}, args: [{}], tool_namespace: st}}
route_rules:
  - {{name: stateless, tool_match: ["st__*"], downstream_server_id: stateless, auth_scope_id: st-token}}
"#,
        mcplexer_tests::peers::python().display(),
        mcplexer_tests::peers::peers_dir()
            .join("stateless_server.py")
            .display()
    );
    let path = vault.write_file("stateless.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(
            ["secret", "set", "st-token", "STATELESS_TOKEN"],
            b"stateless-secret-5b1",
        )
        .ok();
    let script = json!([
        {"op": "list_tools"},
        {"op": "call", "name": "st__whoami", "arguments": {}},
    ]);
    for mode in ["legacy", "2026-07-28"] {
        let out = over_stdio(&vault, mode, &script);
        let results = out["results"].as_array().unwrap();
        assert_eq!(
            results[0]["tools"],
            json!(["st__whoami"]),
            "{mode}: {out:#}"
        );
        let text = results[1]["text"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{mode}: {out:#}"));
        let seen: Value = serde_json::from_str(text).unwrap();
        // The credential is injected; the request carries the proxy's own
        // envelope in the stateless protocol, whatever the client spoke.
        assert_eq!(seen["token"], "stateless-secret-5b1", "{mode}");
        assert_eq!(seen["version"], "2026-07-28", "{mode}");
        assert_eq!(seen["client"], "mcplexer-proxy", "{mode}: {seen}");
        assert_eq!(
            seen["meta"],
            json!([
                "io.modelcontextprotocol/clientCapabilities",
                "io.modelcontextprotocol/clientInfo",
                "io.modelcontextprotocol/protocolVersion"
            ]),
            "{mode}"
        );
    }
}
