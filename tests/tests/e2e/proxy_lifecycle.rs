//! mcplexer-proxy across failures and workspaces, end to end with the
//! official Python client and server-everything.
//!
//! Proves: a downstream killed mid-session is restarted on the next call; a
//! vault killed while the proxy runs makes calls fail clearly, and once it is
//! back calls succeed in the same session (no proxy restart), with the
//! record of the failed call delivered late rather than lost; and the seed's
//! "one server, two credentials" example: a development and a production
//! tree route the same server with their own scopes, and a client in each
//! gets its own credential from its own child.
//!
//! The test and the client's session meet at FIFOs (an `exec` step writes
//! one and blocks on the other), so nothing waits on a timer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use mcplexer_tests::peers::server_everything;
use mcplexer_tests::{Vault, bin};
use serde_json::{Value, json};

use crate::proxy::{FIRST, env_of, error_message, through_proxy_in};

/// The session's side of a rendezvous: tell the test, wait for it.
pub(crate) fn rendezvous_step(ready: &Path, resume: &Path) -> Value {
    let script = format!(
        "echo ready > '{}'; read _ < '{}'",
        ready.display(),
        resume.display()
    );
    json!({"op": "exec", "argv": ["/bin/sh", "-c", script]})
}

/// The test's side: waits (at most 60 s) for the session to reach the
/// rendezvous, runs `act`, then lets the session go on.
pub(crate) fn rendezvous(ready: &Path, resume: &Path, act: impl FnOnce()) {
    let (tx, rx) = mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&ready));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the client session never reached the rendezvous");
    assert_eq!(got.unwrap().trim(), "ready");
    act();
    std::fs::write(resume, "go\n").unwrap();
}

pub(crate) fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path
}

/// Kills (SIGKILL) the processes whose environment holds `tag`, and waits
/// until each has exited (is a zombie or gone).
fn kill_tagged_step(tag: &str) -> Value {
    let script = format!(
        r#"n=0
for p in /proc/[0-9]*; do
  if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx '{tag}'; then
    kill -9 "${{p##*/}}" && n=$((n+1))
    while s=$(awk '{{print $3}}' "$p/stat" 2>/dev/null) && [ "$s" != Z ]; do sleep 0.01; done
  fi
done
echo "$n""#
    );
    json!({"op": "exec", "argv": ["/bin/sh", "-c", script]})
}

fn config(tag: &str) -> String {
    let (program, args) = server_everything();
    format!(
        r#"
auth_scopes:
  - {{id: ev-token, name: Everything token, type: env}}
downstream_servers:
  - id: everything
    name: Everything
    transport: stdio
    command: {}
    args: {}
    env: {{CHILD_TAG: "{tag}"}}
    tool_namespace: ev
route_rules:
  - {{name: everything, tool_match: ["ev__*"], downstream_server_id: everything, auth_scope_id: ev-token}}
"#,
        program.display(),
        serde_json::to_string(&args).unwrap()
    )
}

#[test]
fn killed_downstream_and_restarted_vault_recover_without_a_proxy_restart() {
    let mut vault = Vault::start();
    let tag = format!("CHILD_TAG=lifecycle-{}", std::process::id());
    let path = vault.write_file(
        "lifecycle.yaml",
        &config(tag.trim_start_matches("CHILD_TAG=")),
    );
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(["secret", "set", "ev-token", "EV_TOKEN"], FIRST.as_bytes())
        .ok();
    let (ready, resume) = (
        fifo(vault.root.path(), "ready"),
        fifo(vault.root.path(), "resume"),
    );
    let get_env = json!({"op": "call", "name": "ev__get-env", "arguments": {}});
    let script = json!([
        get_env,
        kill_tagged_step(&tag),
        get_env,
        rendezvous_step(&ready, &resume),
        get_env,
        rendezvous_step(&ready, &resume),
        get_env,
    ]);
    let socket = vault.socket.clone();
    let session =
        std::thread::spawn(move || through_proxy_in(&socket, None, Path::new("/tmp"), script));

    // First rendezvous: the vault dies under the running proxy.
    rendezvous(&ready, &resume, || vault.kill9());
    // Second: it comes back on the same socket.
    rendezvous(&ready, &resume, || vault.spawn().unwrap());
    let results = session.join().expect("client session");

    assert_eq!(env_of(&results[0])["EV_TOKEN"], FIRST);
    assert_eq!(
        results[1]["stdout"].as_str().unwrap().trim(),
        "1",
        "{:#}",
        results[1]
    );
    assert_eq!(
        env_of(&results[2])["EV_TOKEN"],
        FIRST,
        "the killed child was not replaced"
    );
    let down = error_message(&results[4]);
    assert!(down.contains("the vault is unreachable"), "{down}");
    assert_eq!(
        env_of(&results[6])["EV_TOKEN"],
        FIRST,
        "no recovery after the vault came back"
    );

    // Every call is audited, the one made while the vault was down too.
    let records = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let statuses: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tool"] == "ev__get-env")
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    // At least once: a record may arrive twice if the vault died after
    // storing it but before answering; none may be missing.
    let count = |status: &str| statuses.iter().filter(|s| **s == status).count();
    assert!((3..=4).contains(&count("success")), "{records:#}");
    assert_eq!(count("error"), 1, "{records:#}");
}

/// The seed's "one server, two credentials" example under the vault's
/// directory: workspaces `dev` and `prod` (with `dev/src` inside dev) route
/// server-everything (`ev`) with scopes whose `EV_TOKEN` is
/// `dev-credential-1` and `prod-credential-2`. Returns (root, dev, prod).
pub(crate) fn two_trees(vault: &Vault) -> (PathBuf, PathBuf, PathBuf) {
    let root = vault.root.path().canonicalize().unwrap();
    let (dev, prod) = (root.join("dev"), root.join("prod"));
    std::fs::create_dir_all(dev.join("src")).unwrap();
    std::fs::create_dir_all(&prod).unwrap();
    let (program, args) = server_everything();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: dev-token, name: Dev token, type: env}}
  - {{id: prod-token, name: Prod token, type: env}}
downstream_servers:
  - id: everything
    name: Everything
    transport: stdio
    command: {program}
    args: {args}
    tool_namespace: ev
workspaces:
  - {{id: dev, name: Development, root_path: "{dev}"}}
  - {{id: prod, name: Production, root_path: "{prod}"}}
route_rules:
  - {{name: dev, workspace_id: dev, tool_match: ["ev__*"], downstream_server_id: everything, auth_scope_id: dev-token}}
  - {{name: prod, workspace_id: prod, tool_match: ["ev__*"], downstream_server_id: everything, auth_scope_id: prod-token}}
"#,
        program = program.display(),
        args = serde_json::to_string(&args).unwrap(),
        dev = dev.display(),
        prod = prod.display(),
    );
    let path = vault.write_file("trees.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(
            ["secret", "set", "dev-token", "EV_TOKEN"],
            b"dev-credential-1",
        )
        .ok();
    vault
        .ctl_input(
            ["secret", "set", "prod-token", "EV_TOKEN"],
            b"prod-credential-2",
        )
        .ok();
    (root, dev, prod)
}

#[test]
fn two_trees_route_one_server_with_their_own_credentials() {
    let vault = Vault::start();
    let (root, dev, prod) = two_trees(&vault);
    let script = json!([{"op": "call", "name": "ev__get-env", "arguments": {}}]);
    let in_dev = through_proxy_in(&vault.socket, None, &dev.join("src"), script.clone());
    let in_prod = through_proxy_in(&vault.socket, None, &prod, script.clone());
    assert_eq!(env_of(&in_dev[0])["EV_TOKEN"], "dev-credential-1");
    assert_eq!(env_of(&in_prod[0])["EV_TOKEN"], "prod-credential-2");
    // Outside both trees no rule applies: denied, and no credential used.
    let outside = through_proxy_in(&vault.socket, None, &root, script);
    assert!(
        error_message(&outside[0]).contains("no route rule allows tool ev__get-env"),
        "{:#}",
        outside[0]
    );
    let dry = std::process::Command::new(bin("mcplexer-proxy"))
        .arg("--socket")
        .arg(&vault.socket)
        .args(["dry-run", "ev__echo", "--cwd"])
        .arg(&prod)
        .output()
        .unwrap();
    let dry = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.contains("allow") && dry.contains("\"prod\"") && dry.contains("prod-token"),
        "{dry}"
    );
    // The releases name the scope each tree used.
    let releases = vault.ctl(["--json", "audit", "--kind", "release"]).json();
    let scopes: Vec<&str> = releases
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "success")
        .map(|r| r["auth_scope_id"].as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"dev-token") && scopes.contains(&"prod-token"),
        "{scopes:?}"
    );
}

#[test]
fn the_client_is_told_when_the_vault_goes_away_and_comes_back() {
    let mut vault = Vault::start();
    let path = vault.write_file("outage.yaml", &config("outage"));
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(["secret", "set", "ev-token", "EV_TOKEN"], FIRST.as_bytes())
        .ok();
    let mut client = crate::proxy_protocol::RawClient::start(&vault);
    let listed = |client: &mut crate::proxy_protocol::RawClient, id: u64| {
        client.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}));
        let list = client.until(|m| m["id"] == id);
        list["result"]["tools"].as_array().unwrap().len()
    };
    assert!(listed(&mut client, 1) > 0);

    // Without the vault no credential is released: the credentialed
    // server's tools go, and the client hears that its list changed.
    vault.kill9();
    client.until(|m| m["method"] == "notifications/tools/list_changed");
    assert_eq!(listed(&mut client, 2), 0);

    // Back on the same socket: told again, and the tools return.
    vault.spawn().unwrap();
    client.until(|m| m["method"] == "notifications/tools/list_changed");
    assert!(listed(&mut client, 3) > 0);
    client.finish();
}
