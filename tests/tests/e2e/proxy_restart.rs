//! A stdio downstream that exits on its own, end to end: the official
//! Python client through `mcplexer-proxy stdio` to `tests/peers/exit_server.py`
//! (a real MCP server whose `exit` tool ends it with a chosen status).
//!
//! Proves each `restart_policy`: `never` keeps an exited server stopped,
//! `on-failure` (the default) starts it again after a non-zero status but
//! not after status 0, `always` after any exit; a stopped server's tools are
//! withdrawn from `tools/list`; the errors name the exit and the policy; and
//! a server that cannot start is retried once at once, then not again until
//! its backoff is over (counted from the server's own start log, not timed);
//! the client is told `notifications/tools/list_changed` when a listed
//! server stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mcplexer_tests::Vault;
use mcplexer_tests::peers::{peers_dir, python};
use serde_json::{Value, json};

use crate::proxy::{error_message, through_proxy};
use crate::proxy_protocol::RawClient;

/// One stdio server per policy (`restart_policy: ""` leaves the default),
/// each logging its starts to `<dir>/<id>.log`; `extra_env` adds variables.
fn config(dir: &Path, servers: &[(&str, &str, &str, &str)]) -> String {
    let mut yaml = String::from("downstream_servers:\n");
    let mut routes = String::from("route_rules:\n");
    for (id, namespace, policy, extra_env) in servers {
        let policy = if policy.is_empty() {
            String::new()
        } else {
            format!("\n    restart_policy: {policy}")
        };
        yaml.push_str(&format!(
            r#"  - id: {id}
    name: {id}
    transport: stdio
    command: {python}
    args: ["{script}"]
    env: {{START_LOG: "{log}"{extra_env}}}
    tool_namespace: {namespace}
    call_timeout_sec: 30{policy}
"#,
            python = python().display(),
            script = peers_dir().join("exit_server.py").display(),
            log = dir.join(format!("{id}.log")).display(),
        ));
        routes.push_str(&format!(
            "  - {{name: {id}, tool_match: [\"{namespace}__*\"], downstream_server_id: {id}}}\n"
        ));
    }
    yaml + &routes
}

fn starts(dir: &Path, id: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{id}.log")))
        .map(|log| log.lines().count())
        .unwrap_or(0)
}

fn call(name: &str, arguments: Value) -> Value {
    json!({"op": "call", "name": name, "arguments": arguments})
}

fn pid(result: &Value) -> u32 {
    result["text"][0]
        .as_str()
        .unwrap_or_else(|| panic!("expected a pid: {result:#}"))
        .parse()
        .unwrap()
}

#[test]
fn each_restart_policy_decides_whether_an_exited_server_starts_again() {
    let vault = Vault::start();
    let dir = vault.root.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let path = vault.write_file(
        "restart.yaml",
        &config(
            &dir,
            &[
                ("never", "nv", "never", ""),
                ("onfail", "of", "", ""),
                ("always", "al", "always", ""),
            ],
        ),
    );
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let script = json!([
        call("nv__pid", json!({})),
        call("nv__exit", json!({"code": 3})),
        call("nv__pid", json!({})),
        call("of__pid", json!({})),
        call("of__exit", json!({"code": 5})),
        call("of__pid", json!({})),
        call("of__exit", json!({"code": 0})),
        call("of__pid", json!({})),
        call("al__pid", json!({})),
        call("al__exit", json!({"code": 0})),
        call("al__pid", json!({})),
        {"op": "list_tools"},
    ]);
    let r = through_proxy(&vault, None, script);

    // never: the exit ends the call, and the server stays stopped.
    pid(&r[0]);
    let exited = error_message(&r[1]);
    assert!(exited.contains("exited before answering"), "{exited}");
    let stays = error_message(&r[2]);
    assert!(
        stays.contains("downstream never exited with status 3")
            && stays.contains("restart_policy is never")
            && stays.contains("when its configuration changes"),
        "{stays}"
    );
    assert_eq!(
        r[2]["error"]["data"]["restart_policy"], "never",
        "{:#}",
        r[2]
    );
    assert_eq!(starts(&dir, "never"), 1);

    // on-failure: started again after status 5, not after status 0.
    let first = pid(&r[3]);
    error_message(&r[4]);
    let second = pid(&r[5]);
    assert_ne!(first, second, "the failed server was not started again");
    error_message(&r[6]);
    let clean = error_message(&r[7]);
    assert!(
        clean.contains("exited with status 0") && clean.contains("restart_policy is on-failure"),
        "{clean}"
    );
    assert_eq!(starts(&dir, "onfail"), 2);

    // always: started again even after status 0.
    let before = pid(&r[8]);
    error_message(&r[9]);
    let after = pid(&r[10]);
    assert_ne!(before, after);
    assert_eq!(starts(&dir, "always"), 2);

    // Stopped servers' tools are withdrawn; the running one's stay.
    let names: Vec<&str> = r[11]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{:#}", r[11]))
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(names.contains(&"al__pid"), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("nv__") || n.starts_with("of__")),
        "{names:?}"
    );
}

#[test]
fn a_server_that_cannot_start_is_retried_with_backoff() {
    let vault = Vault::start();
    let dir = vault.root.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let path = vault.write_file(
        "broken.yaml",
        &config(
            &dir,
            &[("broken", "br", "never", r#", EXIT_ON_START: "7""#)],
        ),
    );
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    // Four calls in a row, well within the first 2 s wait; how many
    // processes the first two started is read between them and the rest.
    let log = dir.join("broken.log");
    let script = json!([
        call("br__pid", json!({})),
        call("br__pid", json!({})),
        {"op": "exec", "argv": ["/bin/cat", log.display().to_string()]},
        call("br__pid", json!({})),
        call("br__pid", json!({})),
    ]);
    let mut r = through_proxy(&vault, None, script);
    let after_two = r.remove(2)["stdout"].as_str().unwrap().lines().count();

    // A start failure is retried whatever the policy: the first at once.
    for result in &r[..2] {
        let failed = error_message(result);
        assert!(failed.contains("could not be started"), "{failed}");
    }
    for result in &r[2..] {
        let waiting = error_message(result);
        assert!(
            waiting.contains("(2 failures in a row)")
                && waiting.contains("it will be started again in"),
            "{waiting}"
        );
        let retry = result["error"]["data"]["retry_in_sec"].as_u64().unwrap();
        assert!((1..=2).contains(&retry), "{result:#}");
    }
    // Each attempt ran the command (twice when the server exits on the
    // proxy's protocol probe, as one that cannot start does); the calls
    // held back ran it no more.
    assert!(
        (2..=4).contains(&after_two),
        "{after_two} processes for two attempts"
    );
    assert_eq!(
        starts(&dir, "broken"),
        after_two,
        "a start was not held back"
    );

    // Every call is audited as an error.
    let records = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let errors = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tool"] == "br__pid" && r["status"] == "error")
        .count();
    assert_eq!(errors, 4, "{records:#}");
}

#[test]
fn the_client_is_told_when_a_listed_server_stops() {
    let vault = Vault::start();
    let dir = vault.root.path().join("logs");
    std::fs::create_dir(&dir).unwrap();
    let path = vault.write_file("stops.yaml", &config(&dir, &[("stops", "st", "never", "")]));
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let mut client = RawClient::start(&vault);
    client.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    let listed = client.until(|m| m["id"] == 1);
    assert!(listed.to_string().contains("st__exit"), "{listed:#}");
    client.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "st__exit", "arguments": {"code": 9}}}));
    let failed = client.until(|m| m["id"] == 2);
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{failed:#}"
    );
    // The notification and the error answer come from different tasks:
    // either may be first.
    let changed = |m: &Value| m["method"] == "notifications/tools/list_changed";
    if !client.seen.iter().any(changed) {
        client.until(changed);
    }
    client.send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    let relisted = client.until(|m| m["id"] == 3);
    assert_eq!(relisted["result"]["tools"], json!([]), "{relisted:#}");
    let (_, log) = client.finish();
    assert!(log.contains("downstream exited with status 9"), "{log}");
    assert_eq!(starts(&dir, "stops"), 1);
}
