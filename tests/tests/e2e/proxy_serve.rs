//! `mcplexer-proxy serve`: the streamable-HTTP front end, driven by the
//! official Python client over HTTP, and by raw requests for the checks a
//! browser-reachable local server must make.
//!
//! Proves: a client session over HTTP lists and calls routed tools with the
//! injected credential; a foreign `Origin` is refused (403) and a foreign
//! `Host` too (421); a request without a session id gets 400, an unknown one
//! 404; DELETE ends the session; a client that declares roots is asked for
//! them (on its request's event stream) and its first root picks the
//! workspace, while one without roots gets the `--cwd` workspace; a
//! connection from another uid is closed unanswered; a call's
//! progress comes on its own event stream before its result (and a client
//! that accepts only JSON gets a JSON answer); a session its client has
//! left ends, with its downstream children.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use mcplexer_tests::peers::{mcp_client_http, mcp_client_http_roots};
use mcplexer_tests::{Vault, bin};
use serde_json::json;

use crate::proxy::{FIRST, env_of, error_message, start};
use crate::proxy_lifecycle::two_trees;

struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(socket: &std::path::Path) -> Self {
        Self::start_with(socket, &[])
    }

    fn start_with(socket: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("mcplexer-proxy"))
            .arg("--socket")
            .arg(socket)
            .args(["serve", "--listen", "127.0.0.1:0", "--cwd", "/tmp"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://127.0.0.1:"), "{line:?}");
        Self {
            child,
            url: line.trim().to_owned(),
        }
    }

    /// One raw HTTP/1.1 request; returns the status line and the body.
    fn raw(&self, method: &str, headers: &[(&str, &str)], body: &str) -> (String, String) {
        let (status, _, body) = self.raw_full(method, headers, body);
        (status, body)
    }

    /// One raw HTTP/1.1 request; returns the status line, the header block
    /// and the body.
    fn raw_full(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (String, String, String) {
        let authority = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/mcp");
        let mut stream = TcpStream::connect(authority).unwrap();
        let mut request = format!(
            "{method} /mcp HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("Host: {authority}\r\n"));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (status, head.to_owned(), body.to_owned())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `Mcp-Session-Id` of an initialize answer's header block.
fn session_id(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .expect("no Mcp-Session-Id in the answer")
        .trim()
        .to_owned()
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

#[test]
fn http_clients_are_served_with_injected_credentials() {
    let vault = start();
    let served = Served::start(&vault.socket);
    let out = mcp_client_http(
        &served.url,
        &json!([
            {"op": "list_tools"},
            {"op": "call", "name": "ev__get-env", "arguments": {}},
            {"op": "call", "name": "ev__get-sum", "arguments": {"a": 1, "b": 2}},
        ]),
    );
    let results = out["results"].as_array().unwrap();
    let tools = results[0]["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("ev__get-env")), "{tools:?}");
    assert_eq!(env_of(&results[1])["EV_TOKEN"], FIRST);
    assert!(error_message(&results[2]).contains("denied by route rule no-sums"));
}

#[test]
fn foreign_origins_hosts_and_sessions_are_refused() {
    let vault = start();
    let served = Served::start(&vault.socket);
    let json_headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];

    let (status, _) = served.raw(
        "POST",
        &[json_headers[0], ("Origin", "http://evil.example")],
        INIT,
    );
    assert!(status.contains(" 403 "), "{status}");
    // Another local port is another origin (a page another local user
    // serves, say).
    let (status, _) = served.raw(
        "POST",
        &[json_headers[0], ("Origin", "http://127.0.0.1:1")],
        INIT,
    );
    assert!(status.contains(" 403 "), "{status}");
    // A form or text POST (what a page may send without asking) is refused.
    let (status, _) = served.raw("POST", &[("Content-Type", "text/plain")], INIT);
    assert!(status.contains(" 415 "), "{status}");
    let (status, _) = served.raw(
        "POST",
        &[json_headers[0], ("Host", "evil.example:80")],
        INIT,
    );
    assert!(status.contains(" 421 "), "{status}");
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let (status, _) = served.raw("POST", &json_headers, ping);
    assert!(status.contains(" 400 "), "no session id: {status}");
    let (status, body) = served.raw(
        "POST",
        &[json_headers[0], ("Mcp-Session-Id", "0123456789abcdef")],
        ping,
    );
    assert!(
        status.contains(" 404 ") && body.contains("Session not found"),
        "{status} {body}"
    );

    // A loopback Origin is fine; the session then works until DELETE.
    let authority = served.url.trim_end_matches("/mcp").to_owned();
    let origin = [json_headers[0], ("Origin", authority.as_str())];
    let (status, body) = served.raw("POST", &origin, INIT);
    assert!(status.contains(" 200 "), "{status} {body}");
    let (status, head, _) = served.raw_full("POST", &json_headers, INIT);
    assert!(status.contains(" 200 "), "{status}");
    let session = session_id(&head);
    assert_eq!(session.len(), 32, "{session}");
    let with_session = [json_headers[0], ("Mcp-Session-Id", session.as_str())];
    let (status, body) = served.raw("POST", &with_session, ping);
    assert!(
        status.contains(" 200 ") && body.contains("\"result\":{}"),
        "{status} {body}"
    );
    let (status, _) = served.raw("DELETE", &with_session, "");
    assert!(status.contains(" 200 "), "{status}");
    let (status, _) = served.raw("POST", &with_session, ping);
    assert!(
        status.contains(" 404 "),
        "a deleted session still works: {status}"
    );
}

#[test]
fn an_http_clients_first_root_picks_its_workspace() {
    let vault = Vault::start();
    let (_, dev, prod) = two_trees(&vault);
    let served = Served::start(&vault.socket);
    let script = json!([
        {"op": "list_tools"},
        {"op": "call", "name": "ev__get-env", "arguments": {}},
    ]);
    let dev_uri = format!("file://{}/src", dev.display());
    let prod_uri = format!("file://{}", prod.display());
    // The first root decides.
    let in_dev = mcp_client_http_roots(&served.url, &[&dev_uri, &prod_uri], &script);
    let in_prod = mcp_client_http_roots(&served.url, &[&prod_uri], &script);
    let no_roots = mcp_client_http(&served.url, &script);

    let results = |out: &serde_json::Value| out["results"].as_array().unwrap().clone();
    let (in_dev, in_prod, no_roots) = (results(&in_dev), results(&in_prod), results(&no_roots));
    assert!(
        in_dev[0]["tools"].to_string().contains("ev__get-env"),
        "{:#}",
        in_dev[0]
    );
    assert_eq!(env_of(&in_dev[1])["EV_TOKEN"], "dev-credential-1");
    assert_eq!(env_of(&in_prod[1])["EV_TOKEN"], "prod-credential-2");
    // Without roots, the proxy's --cwd (/tmp) is in neither tree.
    assert_eq!(no_roots[0]["tools"], json!([]), "{:#}", no_roots[0]);
    assert!(
        error_message(&no_roots[1]).contains("no route rule allows tool ev__get-env"),
        "{:#}",
        no_roots[1]
    );
    // The audit names each session's workspace.
    let records = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let workspaces: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "success")
        .map(|r| r["workspace_id"].as_str().unwrap())
        .collect();
    assert!(
        workspaces.contains(&"dev") && workspaces.contains(&"prod"),
        "{records:#}"
    );
}

/// The JSON-RPC messages of an event-stream body (chunked or not).
fn events(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[test]
fn progress_comes_on_the_calls_own_stream_before_its_result() {
    let vault = start();
    let served = Served::start(&vault.socket);
    let accept_both = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let (status, head, _) = served.raw_full("POST", &accept_both, INIT);
    assert!(status.contains(" 200 "), "{status}");
    let session = session_id(&head);
    let call = |id: u32| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": "ev__trigger-long-running-operation",
            "arguments": {"duration": 1, "steps": 3},
            "_meta": {"progressToken": format!("tok-{id}")}}})
        .to_string()
    };
    let headers = [
        accept_both[0],
        accept_both[1],
        ("Mcp-Session-Id", session.as_str()),
    ];
    let (status, head, body) = served.raw_full("POST", &headers, &call(2));
    assert!(status.contains(" 200 "), "{status}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let messages = events(&body);
    let (last, before) = messages.split_last().unwrap();
    assert_eq!(last["id"], 2, "the result is not last: {messages:#?}");
    assert!(last["result"].is_object(), "{last:#}");
    assert!(!before.is_empty(), "no progress: {messages:#?}");
    assert!(
        before
            .iter()
            .all(|m| m["method"] == "notifications/progress"
                && m["params"]["progressToken"] == "tok-2"),
        "{messages:#?}"
    );

    // A client that reads only JSON gets the result alone, as JSON.
    let json_only = [
        accept_both[0],
        ("Accept", "application/json"),
        ("Mcp-Session-Id", session.as_str()),
    ];
    let (status, head, body) = served.raw_full("POST", &json_only, &call(3));
    assert!(status.contains(" 200 "), "{status}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["id"], 3, "{answer:#}");
}

#[test]
fn another_user_cannot_use_the_proxy() {
    let vault = start();
    let served = Served::start(&vault.socket);
    let authority = served
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();
    // A raw initialize from uid 47001.
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{INIT}",
        INIT.len()
    );
    assert!(!mcplexer_tests::answered_as(
        (47001, 47001),
        &authority,
        &request
    ));
    // The proxy's own uid is still served.
    let json_headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let (status, _) = served.raw("POST", &json_headers, INIT);
    assert!(status.contains(" 200 "), "{status}");
}

/// The pids of a process's children.
fn children_of(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut children = Vec::new();
    for task in tasks {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        children.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    children
}

/// Waits (up to 60 s) until `done` holds, checking every 100 ms.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_session_its_client_left_ends_with_its_children() {
    let vault = start();
    let served = Served::start_with(&vault.socket, &["--session-idle-timeout", "2"]);
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let (status, head, _) = served.raw_full("POST", &json, INIT);
    assert!(status.contains("200"), "{status}");
    let id = session_id(&head);
    let mut with_session = json.to_vec();
    with_session.push(("Mcp-Session-Id", &id));
    let (status, body) = served.raw(
        "POST",
        &with_session,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert!(
        status.contains("200") && body.contains("ev__echo"),
        "{status} {body}"
    );
    let proxy = served.child.id();
    let started = children_of(proxy);
    assert!(!started.is_empty(), "the session started no downstream");
    // The client sends nothing more (any message would keep the session):
    // its child stops with it, long before the child's own idle timeout.
    wait_until("the session's downstream to stop", || {
        let now = children_of(proxy);
        started.iter().all(|pid| !now.contains(pid))
    });
    let (status, _) = served.raw(
        "POST",
        &with_session,
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
    );
    assert!(status.contains("404"), "{status}");
}
