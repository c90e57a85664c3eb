//! mcplexer-proxy end to end: the official Python MCP client drives
//! `mcplexer-proxy stdio`, which routes to a real `server-everything` child
//! with the credential the real vault releases for each call.
//!
//! Proves: tools are listed as `<namespace>__<tool>`, only when callable;
//! the child's environment holds the scope's value and nothing of the
//! proxy's environment beyond the allowlist; a `secret set` between two
//! calls of one session reaches the next call (the child is restarted); a
//! deny rule and a call no rule allows fail with errors naming the rule or
//! saying no rule matched, audited as denied; audit records carry neither
//! hinted keys' values nor released values; a uid the scope is not granted
//! to gets PERMISSION_DENIED from the vault through the proxy.

// Test code: a failed step must abort the test, hence unwrap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use mcplexer_tests::peers::{mcp_client, node, server_everything};
use mcplexer_tests::{Vault, VaultOptions, bin};
use serde_json::{Value, json};

pub(crate) const FIRST: &str = "ev-first-7d1c9a";
const SECOND: &str = "ev-second-52be04";
/// In the proxy's environment only: must never reach a child.
const MARKER: (&str, &str) = ("PROXY_ONLY_MARKER", "proxy-env-must-not-leak");

pub(crate) fn config() -> String {
    let (program, args) = server_everything();
    let args = serde_json::to_string(&args).unwrap();
    let program = program.display();
    format!(
        r#"
auth_scopes:
  - id: ev-token
    name: Everything token
    type: env
    redaction_hints: ["password"]
    grants: {{users: ["47001"]}}
downstream_servers:
  - id: everything
    name: Everything
    transport: stdio
    command: {program}
    args: {args}
    tool_namespace: ev
  - id: other
    name: Other
    transport: stdio
    command: {program}
    args: {args}
    tool_namespace: ot
route_rules:
  - name: everything
    tool_match: ["ev__*"]
    downstream_server_id: everything
    auth_scope_id: ev-token
  - name: no sums
    tool_match: ["ev__get-sum"]
    policy: deny
"#
    )
}

pub(crate) fn start() -> Vault {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(47001),
        ..Default::default()
    });
    let path = vault.write_file("proxy.yaml", &config());
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(["secret", "set", "ev-token", "EV_TOKEN"], FIRST.as_bytes())
        .ok();
    vault
}

/// The proxy's environment: the allowlisted PATH and HOME, plus a marker.
pub(crate) fn proxy_env() -> Vec<(&'static str, String)> {
    let node_dir = node().parent().unwrap().display().to_string();
    vec![
        ("PATH", format!("{node_dir}:/usr/bin:/bin")),
        ("HOME", "/".into()),
        (MARKER.0, MARKER.1.into()),
    ]
}

/// Runs `script` through the proxy, as `user` (uid, gid) or as root.
pub(crate) fn through_proxy(vault: &Vault, user: Option<(u32, u32)>, script: Value) -> Vec<Value> {
    through_proxy_in(&vault.socket, user, Path::new("/tmp"), script)
}

/// Runs `script` through a proxy on the vault socket `socket`, started in
/// `cwd` (which picks the workspace).
pub(crate) fn through_proxy_in(
    socket: &Path,
    user: Option<(u32, u32)>,
    cwd: &Path,
    script: Value,
) -> Vec<Value> {
    let proxy = bin("mcplexer-proxy");
    let mut args = vec![
        "--socket".to_owned(),
        socket.display().to_string(),
        "stdio".to_owned(),
    ];
    let command = match user {
        None => proxy,
        Some((uid, gid)) => {
            let mut wrapped = vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
                proxy.display().to_string(),
            ];
            wrapped.append(&mut args);
            args = wrapped;
            "/usr/bin/setpriv".into()
        }
    };
    let env = proxy_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = mcp_client(cwd, &env, &command, &args, &script);
    out["results"].as_array().unwrap().clone()
}

pub(crate) fn env_of(result: &Value) -> serde_json::Map<String, Value> {
    let text = result["text"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{result:#}"));
    serde_json::from_str(text).unwrap()
}

pub(crate) fn error_message(result: &Value) -> &str {
    result["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error: {result:#}"))
}

pub(crate) fn call_records(vault: &Vault) -> Vec<Value> {
    let records = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    records.as_array().unwrap().clone()
}

#[test]
fn stdio_injects_the_scope_follows_secret_set_and_fails_closed() {
    let vault = start();
    let ctl = bin("mcplexerctl").display().to_string();
    let socket = vault.socket.display().to_string();
    let results = through_proxy(
        &vault,
        None,
        json!([
            {"op": "list_tools"},
            {"op": "call", "name": "ev__get-env", "arguments": {}},
            {"op": "exec", "argv": [ctl, "--socket", socket, "secret", "set", "ev-token", "EV_TOKEN"], "stdin": SECOND},
            {"op": "call", "name": "ev__get-env", "arguments": {}},
            {"op": "call", "name": "ev__get-sum", "arguments": {"a": 1, "b": 2}},
            {"op": "call", "name": "ot__echo", "arguments": {"message": "x"}},
            {"op": "call", "name": "nope__echo", "arguments": {"message": "x"}},
        ]),
    );
    let tools: BTreeSet<&str> = results[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains("ev__get-env") && tools.contains("ev__echo"),
        "{tools:?}"
    );
    assert!(
        !tools.contains("ev__get-sum"),
        "a denied tool is listed: {tools:?}"
    );
    assert!(
        tools.iter().all(|t| t.starts_with("ev__")),
        "uncallable tools listed: {tools:?}"
    );

    let env = env_of(&results[1]);
    assert_eq!(env["EV_TOKEN"], FIRST);
    let allowed: BTreeSet<&str> = [
        "EV_TOKEN", "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
    ]
    .into();
    let keys: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    assert!(
        keys.is_subset(&allowed),
        "the child saw more than the allowlist: {keys:?}"
    );
    assert!(
        !env.values().any(|v| v == MARKER.1),
        "the proxy's environment leaked"
    );

    assert_eq!(results[2]["exit"], 0, "{:#}", results[2]);
    assert_eq!(
        env_of(&results[3])["EV_TOKEN"],
        SECOND,
        "the new value did not reach the next call"
    );

    assert!(
        error_message(&results[4]).contains("denied by route rule no-sums in workspace default"),
        "{:#}",
        results[4]
    );
    assert!(
        error_message(&results[5]).contains("no route rule allows tool ot__echo"),
        "{:#}",
        results[5]
    );
    assert!(
        error_message(&results[6]).contains("Unknown tool: nope__echo"),
        "{:#}",
        results[6]
    );

    let records = call_records(&vault);
    let status_of = |tool: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["tool"] == tool)
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(status_of("ev__get-env"), ["success", "success"]);
    assert_eq!(status_of("ev__get-sum"), ["denied"]);
    assert_eq!(status_of("ot__echo"), ["denied"]);
    let denied = records.iter().find(|r| r["tool"] == "ev__get-sum").unwrap();
    assert_eq!(denied["route_rule_id"], "no-sums");
    assert_eq!(denied["uid"], 0);
}

#[test]
fn audit_records_carry_neither_hinted_values_nor_released_values() {
    let vault = start();
    let results = through_proxy(
        &vault,
        None,
        json!([
            {"op": "call", "name": "ev__echo", "arguments": {"message": format!("token is {FIRST}"), "password": "hunter2-hinted"}},
        ]),
    );
    // The downstream got the arguments untouched.
    assert_eq!(results[0]["text"][0], format!("Echo: token is {FIRST}"));
    let records = call_records(&vault);
    let echo = records.iter().find(|r| r["tool"] == "ev__echo").unwrap();
    assert_eq!(echo["status"], "success");
    let params: Value = serde_json::from_str(echo["params"].as_str().unwrap()).unwrap();
    assert_eq!(
        params,
        json!({"message": "token is [REDACTED]", "password": "[REDACTED]"})
    );
    let all = vault.ctl(["--json", "audit"]).ok().to_owned();
    assert!(
        !all.contains(FIRST),
        "a released value reached the audit log"
    );
    assert!(
        !all.contains("hunter2-hinted"),
        "a hinted value reached the audit log"
    );
}

#[test]
fn a_uid_not_granted_the_scope_gets_permission_denied_through_the_proxy() {
    let vault = start();
    // 47002 is in the client group but not granted ev-token.
    let results = through_proxy(
        &vault,
        Some((47002, 47001)),
        json!([
            {"op": "list_tools"},
            {"op": "call", "name": "ev__echo", "arguments": {"message": "x"}},
        ]),
    );
    assert_eq!(
        results[0]["tools"],
        json!([]),
        "tools listed without a credential"
    );
    let message = error_message(&results[1]);
    assert!(
        message.contains(
            "auth_scope ev-token does not exist or uid 47002 is neither its owner nor granted it"
        ),
        "{message}"
    );
    let records = vault.ctl(["--json", "audit", "--kind", "release"]).json();
    assert!(
        records.as_array().unwrap().iter().any(|r| r["uid"] == 47002
            && r["status"] == "denied"
            && r["auth_scope_id"] == "ev-token"),
        "{records:#}"
    );
    let calls = call_records(&vault);
    assert!(
        calls
            .iter()
            .any(|r| r["uid"] == 47002 && r["tool"] == "ev__echo" && r["status"] == "denied"),
        "{calls:#?}"
    );
    // The granted user is served by the same configuration.
    let granted = through_proxy(
        &vault,
        Some((47001, 47001)),
        json!([{"op": "call", "name": "ev__get-env", "arguments": {}}]),
    );
    assert_eq!(env_of(&granted[0])["EV_TOKEN"], FIRST);
}
