//! mcplexer-proxy to a real streamable-HTTP MCP server (the official Python
//! SDK's, in tests/peers/header_server.py), driven by the official Python
//! client through `mcplexer-proxy stdio`.
//!
//! Proves: the header scope's value arrives on every call, in both the SSE
//! and the JSON response modes; a `secret set` reaches the very next call
//! (the credential is fetched per call); nothing else is injected (only the
//! protocol's own headers and the scope's); and every call is a release the
//! vault audits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use mcplexer_tests::peers::HeaderServer;
use mcplexer_tests::{Vault, bin};
use serde_json::{Value, json};

use crate::proxy::{error_message, through_proxy_in};
use crate::proxy_lifecycle::{fifo, rendezvous, rendezvous_step};
use crate::proxy_protocol::RawClient;

fn text(result: &Value) -> &str {
    result["text"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {result:#}"))
}

#[test]
fn header_scope_arrives_on_every_call_over_sse_and_json() {
    let sse = HeaderServer::start(false);
    let plain = HeaderServer::start(true);
    let vault = Vault::start();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: api-key, name: API key, type: header, redaction_hints: [token]}}
  - {{id: env-scope, name: Env scope, type: env}}
downstream_servers:
  - {{id: hdr-sse, name: Headers over SSE, transport: http, url: "{}", tool_namespace: sse}}
  - {{id: hdr-json, name: Headers over JSON, transport: http, url: "{}", tool_namespace: json}}
route_rules:
  - {{name: sse, tool_match: ["sse__*"], downstream_server_id: hdr-sse, auth_scope_id: api-key}}
  - {{name: json, tool_match: ["json__*"], downstream_server_id: hdr-json, auth_scope_id: api-key}}
"#,
        sse.url, plain.url
    );
    let path = vault.write_file("http.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(["secret", "set", "api-key", "X-Api-Key"], b"key-first-6b1f")
        .ok();
    let ctl = bin("mcplexerctl").display().to_string();
    let socket = vault.socket.display().to_string();
    let show = |ns: &str| json!({"op": "call", "name": format!("{ns}__show_header"), "arguments": {"name": "x-api-key"}});
    let script = json!([
        {"op": "list_tools"},
        show("sse"),
        show("sse"),
        show("json"),
        {"op": "exec", "argv": [ctl, "--socket", socket, "secret", "set", "api-key", "X-Api-Key"], "stdin": "key-second-90ac"},
        show("sse"),
        show("json"),
        {"op": "call", "name": "sse__show_headers", "arguments": {}},
        {"op": "call", "name": "json__echo", "arguments": {"message": "token key-second-90ac", "token": "t0ps3cret"}},
    ]);
    let results = through_proxy_in(&vault.socket, None, Path::new("/tmp"), script);

    let tools: BTreeSet<&str> = results[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for tool in [
        "sse__show_header",
        "sse__show_headers",
        "json__show_header",
        "json__echo",
    ] {
        assert!(tools.contains(tool), "{tool} missing from {tools:?}");
    }
    assert_eq!(text(&results[1]), "key-first-6b1f");
    assert_eq!(text(&results[2]), "key-first-6b1f");
    assert_eq!(text(&results[3]), "key-first-6b1f");
    assert_eq!(results[4]["exit"], 0, "{:#}", results[4]);
    assert_eq!(
        text(&results[5]),
        "key-second-90ac",
        "the new value missed the next call"
    );
    assert_eq!(text(&results[6]), "key-second-90ac");

    let seen: serde_json::Map<String, Value> = serde_json::from_str(text(&results[7])).unwrap();
    let names: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "accept",
        "content-length",
        "content-type",
        "host",
        "mcp-protocol-version",
        "mcp-session-id",
        "x-api-key",
    ]
    .into();
    assert_eq!(
        names, expected,
        "unexpected headers reached the server: {seen:#?}"
    );
    assert_eq!(seen["mcp-protocol-version"], "2025-11-25");

    // The echo reached the server unchanged; its audit record is redacted.
    assert_eq!(text(&results[8]), "token key-second-90ac");
    let calls = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let echo = calls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tool"] == "json__echo")
        .unwrap_or_else(|| panic!("{calls:#}"));
    let params: Value = serde_json::from_str(echo["params"].as_str().unwrap()).unwrap();
    assert_eq!(
        params,
        json!({"message": "token [REDACTED]", "token": "[REDACTED]"})
    );

    // Every call and the listing fetched the credential: all audited.
    let releases = vault
        .ctl(["--json", "audit", "--kind", "release", "--limit", "1000"])
        .json();
    let released = releases
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["auth_scope_id"] == "api-key" && r["status"] == "success")
        .count();
    assert!(released >= 7, "{releases:#}");
}

#[test]
fn http_tools_follow_deny_and_no_match_rules() {
    let server = HeaderServer::start(false);
    let vault = Vault::start();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: api-key, name: API key, type: header}}
downstream_servers:
  - {{id: hdr, name: Headers, transport: http, url: "{}", tool_namespace: hdr}}
route_rules:
  - {{name: deny-echo, tool_match: ["hdr__echo"], policy: deny}}
"#,
        server.url
    );
    let path = vault.write_file("http-deny.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let results = through_proxy_in(
        &vault.socket,
        None,
        Path::new("/tmp"),
        json!([
            {"op": "list_tools"},
            {"op": "call", "name": "hdr__echo", "arguments": {"message": "x"}},
            {"op": "call", "name": "hdr__show_headers", "arguments": {}},
        ]),
    );
    assert_eq!(
        results[0]["tools"],
        json!([]),
        "no allow rule: nothing is listed"
    );
    assert!(error_message(&results[1]).contains("denied by route rule deny-echo"));
    assert!(error_message(&results[2]).contains("no route rule allows tool hdr__show_headers"));
}

/// A server that forgets the session (here: restarted on the same port)
/// answers 404; the proxy opens a new session and the call succeeds, in the
/// same client session.
#[test]
fn a_forgotten_http_session_is_reestablished() {
    let server = HeaderServer::start(false);
    let port: u16 = server
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    let vault = Vault::start();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: api-key, name: API key, type: header}}
downstream_servers:
  - {{id: hdr, name: Headers, transport: http, url: "{}", tool_namespace: hdr}}
route_rules:
  - {{name: hdr, tool_match: ["hdr__*"], downstream_server_id: hdr, auth_scope_id: api-key}}
"#,
        server.url
    );
    let path = vault.write_file("http-404.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(["secret", "set", "api-key", "X-Api-Key"], b"key-404-test")
        .ok();
    let (ready, resume) = (
        fifo(vault.root.path(), "ready"),
        fifo(vault.root.path(), "resume"),
    );
    let headers = json!({"op": "call", "name": "hdr__show_headers", "arguments": {}});
    let script = json!([headers, rendezvous_step(&ready, &resume), headers]);
    let socket = vault.socket.clone();
    let session =
        std::thread::spawn(move || through_proxy_in(&socket, None, Path::new("/tmp"), script));
    let mut server = Some(server);
    rendezvous(&ready, &resume, || {
        drop(server.take());
        server = Some(HeaderServer::start_on(false, port));
    });
    let results = session.join().unwrap();
    let seen =
        |r: &Value| -> serde_json::Map<String, Value> { serde_json::from_str(text(r)).unwrap() };
    let (before, after) = (seen(&results[0]), seen(&results[2]));
    assert_eq!(before["x-api-key"], "key-404-test");
    assert_eq!(after["x-api-key"], "key-404-test", "{:#}", results[2]);
    assert_ne!(
        before["mcp-session-id"], after["mcp-session-id"],
        "the old session was reused"
    );
}

/// A `Bearer` header scope: the bare token is scrubbed from the audit
/// record and from a downstream's error on its way to the client; and once
/// the server's URL changes, nothing more goes to the old one.
#[test]
fn a_bearer_token_is_scrubbed_and_a_moved_server_gets_nothing_more() {
    let old = HeaderServer::start(true);
    let new = HeaderServer::start(true);
    let vault = Vault::start();
    // With `two`, a second server whose tools show once the proxy has the
    // new configuration.
    let doc = |url: &str, two: Option<&str>| {
        let (server, route) = match two {
            Some(two) => (
                format!(
                    "\n  - {{id: two, name: Two, transport: http, url: \"{two}\", tool_namespace: two}}"
                ),
                "\n  - {name: two, tool_match: [\"two__*\"], downstream_server_id: two}".to_owned(),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            r#"
auth_scopes:
  - {{id: bearer, name: Bearer, type: header}}
downstream_servers:
  - {{id: api, name: API, transport: http, url: "{url}", tool_namespace: api}}{server}
route_rules:
  - {{name: api, tool_match: ["api__*"], downstream_server_id: api, auth_scope_id: bearer, log_full: true}}{route}
"#
        )
    };
    let path = vault.write_file("bearer.yaml", &doc(&old.url, None));
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let token = "tok-7c1e2a90";
    vault
        .ctl_input(
            ["secret", "set", "bearer", "Authorization"],
            format!("Bearer {token}").as_bytes(),
        )
        .ok();

    let mut client = RawClient::start(&vault);
    let call = |id: u64, name: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}})
    };
    client.send(call(
        1,
        "api__echo",
        json!({"message": format!("bare {token} here")}),
    ));
    let echoed = client.until(|m| m["id"] == 1);
    assert_eq!(
        echoed["result"]["content"][0]["text"],
        format!("bare {token} here")
    );
    // A tool the server does not have: its error names the tool, and with
    // it the token.
    client.send(call(2, &format!("api__x{token}"), json!({})));
    let refused = client.until(|m| m["id"] == 2);
    let answer = refused.to_string();
    assert!(
        !answer.contains(token),
        "the token reached the client: {refused:#}"
    );
    assert!(answer.contains("[REDACTED]"), "{refused:#}");

    let calls = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let text = calls.to_string();
    assert!(
        !text.contains(token),
        "the bare token is in the audit: {calls:#}"
    );
    let echo = calls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tool"] == "api__echo")
        .unwrap_or_else(|| panic!("{calls:#}"));
    assert_eq!(
        serde_json::from_str::<Value>(echo["params"].as_str().unwrap()).unwrap(),
        json!({"message": "bare [REDACTED] here"})
    );
    assert!(
        echo["response"]
            .as_str()
            .unwrap()
            .contains("bare [REDACTED] here"),
        "{echo:#}"
    );

    // The server moves.
    let path = vault.write_file("bearer.yaml", &doc(&new.url, Some(&new.url)));
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let changed = |m: &Value| m["method"] == "notifications/tools/list_changed";
    let mut id = 10;
    loop {
        assert!(id < 20, "the proxy never showed the new configuration");
        client.until(changed);
        id += 1;
        client.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}));
        let listed = client.until(|m| m["id"] == id);
        if listed.to_string().contains("two__echo") {
            break;
        }
    }
    client.send(call(3, "api__show_header", json!({"name": "host"})));
    let host = client.until(|m| m["id"] == 3);
    let port = |url: &str| {
        url.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches("/mcp")
            .to_owned()
    };
    assert_eq!(
        host["result"]["content"][0]["text"],
        format!("127.0.0.1:{}", port(&new.url)),
        "the call went to the old URL: {host:#}"
    );
    client.finish();
}
