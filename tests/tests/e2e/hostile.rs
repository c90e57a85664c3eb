//! A hostile member of the client group against everyone else (DESIGN §2:
//! "one user, however hostile, cannot stop the vault from serving the
//! others"). The vault runs in system mode as the packaged unit runs it:
//! started as root, dropped to its own uid with the client group as its
//! group, under the unit's file limit. Each test runs one class of attack
//! as MALLORY, a real uid in the client group, and checks both that the attack fails with an error naming the
//! limit and that BOB, another user, is served meanwhile: his `status`
//! answers and his own credential is released.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use mcplexer_tests::{Run, Vault, VaultOptions};
use serde_json::Value;

use crate::probe::probe;

/// The client group: the socket is 0660 SERVICE:G.
const G: u32 = 47201;
/// The vault's own uid.
const SERVICE: u32 = 47200;
/// The attacker.
const MALLORY: (u32, u32) = (47201, G);
/// The bystander, who must be served throughout.
const BOB: (u32, u32) = (47202, G);

/// A vault with BOB's env scope `bob-env` (value `bob-value`) usable with
/// root's stdio server `tools`.
fn vault() -> Vault {
    vault_with(&[])
}

/// [`vault`], with extra daemon flags.
fn vault_with(extra: &[&str]) -> Vault {
    vault_from(VaultOptions {
        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
}

/// [`vault`], with these options (in system mode, with the client group).
fn vault_from(options: VaultOptions) -> Vault {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        run_as: Some(SERVICE),
        ..options
    });
    assert_eq!(vault.ctl(["--json", "status"]).json()["mode"], "system");
    vault.create_stdio_server("tools", "Tools");
    vault.env_scope_as(BOB, "bob-env", "BOB_KEY", "bob-value");
    assert_bob_served(&vault);
    vault
}

/// BOB's `status` answers as a user, and his credential is released.
#[track_caller]
fn assert_bob_served(vault: &Vault) {
    let (uid, gid) = BOB;
    let status = vault.ctl_as(uid, gid, ["--json", "status"], None).json();
    assert_eq!(status["caller_role"], "user", "{status:#}");
    let released = probe(
        vault,
        Some(BOB),
        &["credential", "bob-env", "tools", "stdio"],
    );
    assert_eq!(released.values()["BOB_KEY"], "bob-value");
}

/// Runs `attack` as MALLORY in a loop on another thread while BOB is
/// checked `rounds` times; returns the attack's runs.
fn while_attacking(vault: &Vault, rounds: usize, attack: impl Fn() -> Run + Sync) -> Vec<Run> {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let attacker = s.spawn(|| {
            let mut runs = vec![attack()];
            while !done.load(Ordering::SeqCst) {
                runs.push(attack());
            }
            runs
        });
        for _ in 0..rounds {
            assert_bob_served(vault);
        }
        done.store(true, Ordering::SeqCst);
        attacker.join().unwrap()
    })
}

fn apply_as_mallory(vault: &Vault, doc: &str) -> Run {
    let (uid, gid) = MALLORY;
    vault.ctl_as(
        uid,
        gid,
        ["apply", "--dry-run", "-f", "-"],
        Some(doc.as_bytes()),
    )
}

/// Every run was refused as invalid input (exit 4) with `fragment`.
#[track_caller]
fn assert_all_refused(runs: &[Run], fragment: &str) {
    for run in runs {
        assert_eq!(run.code, 4, "{run:#?}");
        assert!(
            run.stderr.contains(fragment),
            "missing {fragment:?}: {run:#?}"
        );
    }
}

#[test]
fn an_alias_bomb_is_refused_and_others_are_served() {
    let vault = vault();
    let doc = format!("auth_scopes: []\n{}", mcplexer_tests::alias_bomb());
    assert!(doc.len() < 600 * 1024, "{}", doc.len());
    let runs = while_attacking(&vault, 3, || apply_as_mallory(&vault, &doc));
    assert_all_refused(&runs, "the limit is 16777216 bytes of expanded content");
}

#[test]
fn deep_nesting_is_refused_and_others_are_served() {
    let vault = vault();
    let flow = format!("auth_scopes: {}", "[".repeat(200_000));
    let block = format!("auth_scopes:\n{}x\n", "- ".repeat(200_000));
    let runs = while_attacking(&vault, 3, || apply_as_mallory(&vault, &flow));
    assert_all_refused(&runs, "nest deeper than 64 levels at line 1");
    let runs = while_attacking(&vault, 3, || apply_as_mallory(&vault, &block));
    assert_all_refused(&runs, "nest deeper than 64 levels at line 2");
    // Within the limit the document is judged on its content as before.
    let fine = format!("auth_scopes: {}{}", "[".repeat(60), "]".repeat(60));
    let run = apply_as_mallory(&vault, &fine);
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(!run.stderr.contains("nest deeper"), "{run:#?}");
}

/// `conn-hog` holding connections to the vault as a uid.
struct Hog {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Hog {
    /// Opens `count` silent connections as `(uid, gid)`.
    fn start(vault: &Vault, (uid, gid): (u32, u32), count: usize) -> Self {
        let mut child = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(mcplexer_tests::bin("conn-hog"))
            .arg("--socket")
            .arg(&vault.socket)
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn conn-hog");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut hog = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(hog.line()["connected"], count);
        hog
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("conn-hog said {line:?}: {e}"))
    }

    /// Sends a command; its answer.
    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_uid_holds_at_most_its_share_of_connections_and_others_are_served() {
    let vault = vault_with(&[
        "--max-connections-per-user",
        "100",
        "--handshake-timeout-sec",
        "2",
    ]);
    let mut hog = Hog::start(&vault, MALLORY, 300);
    // An answered request of root's, accepted after all of MALLORY's
    // connections, means each of them was admitted or closed.
    vault.ctl(["status"]).ok();
    let held = hog.ask("check");
    assert_eq!(
        (held["open"].as_u64(), held["closed"].as_u64()),
        (Some(100), Some(200)),
        "{held}"
    );
    assert_bob_served(&vault);
    // MALLORY's own next connection is refused while it holds its share.
    let (uid, gid) = MALLORY;
    let refused = vault.ctl_as(uid, gid, ["status"], None);
    assert_ne!(refused.code, 0, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("your uid holds as many connections to it as it allows"),
        "{refused:#?}"
    );
    assert!(
        vault
            .log()
            .contains("refused a connection: the uid holds its share of connections")
    );
    // Silent connections are closed once the handshake time is up; then
    // MALLORY is served again.
    let waited = hog.ask("wait 60");
    assert_eq!(waited["open"], 0, "{waited}");
    vault.ctl_as(uid, gid, ["status"], None).ok();
    assert_bob_served(&vault);
}

#[test]
fn a_uid_holds_at_most_its_share_of_streams_and_others_are_served() {
    let vault = vault();
    let watch = probe(&vault, Some(MALLORY), &["watch", "20"]);
    assert_eq!(watch.code, 0, "{watch:#?}");
    assert_eq!(watch.json["opened"], 16, "{watch:#?}");
    let refusals = watch.json["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 4, "{watch:#?}");
    for refusal in refusals {
        assert_eq!(refusal["code"], "ResourceExhausted", "{watch:#?}");
        assert_eq!(refusal["vault_code"], "RESOURCE_EXHAUSTED", "{watch:#?}");
        let message = refusal["message"].as_str().unwrap();
        assert!(message.contains("the limit is 16 per user"), "{message}");
    }
    assert_bob_served(&vault);
    assert_eq!(
        probe(&vault, Some(BOB), &["watch", "16"]).json["opened"],
        16
    );
    // Admins are not bounded by the user share.
    assert_eq!(probe(&vault, None, &["watch", "20"]).json["opened"], 20);
}

#[tokio::test]
async fn a_stop_ends_open_streams_and_the_vault_exits() {
    let mut vault = vault();
    let mut client = mcplexer_proto::vault_client(vault.channel().await);
    let mut feed = client
        .watch_config(mcplexer_proto::v1::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(feed.message().await, Ok(Some(_))));
    let socket = vault.socket.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let stopper = thread::spawn(move || {
        let code = vault.stop();
        let _ = tx.send(code);
        vault
    });
    // The vault ends the stream itself (after what it had queued), and
    // exits while this client still holds the connection.
    while let Ok(Some(_)) = feed.message().await {}
    let code = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the vault did not exit after SIGTERM");
    assert_eq!(code, Some(0));
    assert!(!socket.exists(), "the socket it bound is left behind");
    drop(client);
    drop(stopper.join());
}

#[test]
fn an_audit_flood_is_refused_counted_once_and_others_are_served() {
    let vault = vault_with(&["--audit-rate", "5", "--audit-daily-mib", "1"]);
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(100_000));
    let flood = |user| {
        probe(
            &vault,
            user,
            &[
                "submit-audit",
                "--tool",
                "t__flood",
                "--status",
                "success",
                "--params",
                &big,
                "--repeat",
                "200",
            ],
        )
    };
    let first = flood(Some(MALLORY));
    let (accepted, refused) = (
        first.json["accepted"].as_u64().unwrap(),
        first.json["refused"].as_u64().unwrap(),
    );
    // A burst of fifty, and what the rate refilled meanwhile.
    assert!((50..120).contains(&accepted), "{first:#?}");
    assert_eq!(accepted + refused, 200);
    assert_eq!(
        first.json["refusal"]["vault_code"], "RESOURCE_EXHAUSTED",
        "{first:#?}"
    );
    let message = first.json["refusal"]["message"].as_str().unwrap();
    // The rate, or (on a machine slow enough to refill past it) the day's
    // megabyte.
    assert!(
        message.contains("faster than 5 a second") || message.contains("for the day"),
        "{message}"
    );
    // Stored records were cut to 16 KiB of params; refusals are one
    // admin record, not one each.
    let records = vault.ctl(["--json", "audit", "--limit", "1000"]).json();
    let records = records.as_array().unwrap();
    let stored: Vec<_> = records.iter().filter(|r| r["tool"] == "t__flood").collect();
    assert_eq!(stored.len() as u64, accepted);
    assert!(
        stored
            .iter()
            .all(|r| r["params"].as_str().unwrap().len() < 17 * 1024)
    );
    let reports: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "Vault/SubmitAudit" && r["uid"] == MALLORY.0)
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(
        reports[0]["error"]
            .as_str()
            .unwrap()
            .contains("audit records refused")
    );
    // BOB's records and releases go on.
    assert_bob_served(&vault);
    let bob = probe(
        &vault,
        Some(BOB),
        &["submit-audit", "--tool", "t__bob", "--status", "success"],
    );
    assert_eq!(bob.code, 0, "{bob:#?}");
}

#[test]
fn audit_answers_are_paged_to_fit_the_message_limit() {
    let vault = vault();
    let big = format!("{{\"blob\": \"{}\"}}", "y".repeat(100_000));
    // Root's records are not rate-bounded; 400 of 16 KiB do not fit in one
    // 4 MiB answer.
    let root = probe(
        &vault,
        None,
        &[
            "submit-audit",
            "--tool",
            "t__big",
            "--status",
            "success",
            "--params",
            &big,
            "--repeat",
            "400",
        ],
    );
    assert_eq!(root.json["accepted"], 400, "{root:#?}");
    let records = vault
        .ctl(["--json", "audit", "--tool", "t__big", "--limit", "400"])
        .json();
    let ids: Vec<u64> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 400);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not oldest first, or repeated"
    );
}

#[tokio::test]
async fn an_audit_tail_that_falls_behind_catches_up_on_every_record() {
    let vault = vault();
    let mut admin = mcplexer_proto::admin_client(vault.channel().await);
    let mut tail = admin
        .follow_audit(mcplexer_proto::v1::AuditQuery {
            tool: "t__lag".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Not read while 2000 records of 16 KiB pass: more than the live feed
    // keeps (1024) and than one answer holds (4 MiB), so the tail must
    // catch up from the log in several pages.
    let big = format!("{{\"blob\": \"{}\"}}", "z".repeat(100_000));
    let sent = tokio::task::spawn_blocking({
        let big = big.clone();
        let socket = vault.socket.clone();
        move || {
            let out = std::process::Command::new(mcplexer_tests::bin("vault-probe"))
                .arg("--socket")
                .arg(&socket)
                .args(["submit-audit", "--tool", "t__lag", "--status", "success"])
                .args(["--params", &big, "--repeat", "2000"])
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(sent["accepted"], 2000, "{sent}");
    let mut ids = Vec::new();
    while ids.len() < 2000 {
        let record = tokio::time::timeout(std::time::Duration::from_secs(60), tail.message())
            .await
            .expect("the tail stalled")
            .unwrap()
            .expect("the tail ended");
        ids.push(record.id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "out of order or repeated"
    );
    assert_eq!(ids[1999] - ids[0], 1999, "records were skipped");
}

/// A stdio server, and a route to all its tools, started through a
/// wrapper that writes the directory it runs in to `seen`; as JSON (which
/// is YAML) for one `apply`.
fn cwd_recording_server(
    vault: &Vault,
    id: &str,
    working_dir: Option<&str>,
    seen: &std::path::Path,
) -> (Value, Value) {
    use std::os::unix::fs::PermissionsExt;
    let (program, args) = mcplexer_tests::peers::server_everything();
    let wrapper = vault.write_file(
        &format!("{id}.sh"),
        &format!("#!/bin/sh\npwd > '{}'\nexec \"$@\"\n", seen.display()),
    );
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut all = vec![program.display().to_string()];
    all.extend(args);
    let server = serde_json::json!({
        "id": id, "name": id, "transport": "stdio",
        "command": wrapper.display().to_string(), "args": all,
        "working_dir": working_dir.unwrap_or(""),
    });
    let route = serde_json::json!({
        "name": format!("{id}-all"),
        "tool_match": [format!("{id}__*")],
        "downstream_server_id": id,
    });
    (server, route)
}

#[test]
fn stdio_servers_never_run_in_the_clients_directory() {
    let vault = vault();
    let project = vault.root.path().join("cloned-repo");
    std::fs::create_dir(&project).unwrap();
    let fixed = vault.root.path().join("fixed");
    std::fs::create_dir(&fixed).unwrap();
    let (home_seen, fixed_seen) = (
        vault.root.path().join("home.seen"),
        vault.root.path().join("fixed.seen"),
    );
    let plain = cwd_recording_server(&vault, "plain", None, &home_seen);
    let fixed_dir = fixed.display().to_string();
    let pinned = cwd_recording_server(&vault, "pinned", Some(&fixed_dir), &fixed_seen);
    let doc = serde_json::json!({
        "downstream_servers": [plain.0, pinned.0],
        "route_rules": [plain.1, pinned.1],
    });
    vault
        .ctl_input(["apply", "-f", "-"], doc.to_string().as_bytes())
        .ok();
    let results = crate::proxy::through_proxy_in(
        &vault.socket,
        None,
        &project,
        serde_json::json!([{"op": "list_tools"}]),
    );
    let tools = results[0]["tools"].as_array().unwrap();
    assert!(
        tools.contains(&serde_json::json!("plain__echo")),
        "{tools:?}"
    );
    assert!(
        tools.contains(&serde_json::json!("pinned__echo")),
        "{tools:?}"
    );
    // The proxy's HOME is "/" in these tests.
    assert_eq!(std::fs::read_to_string(&home_seen).unwrap().trim(), "/");
    assert_eq!(
        std::fs::read_to_string(&fixed_seen).unwrap().trim(),
        fixed.display().to_string()
    );
    // A relative working_dir, or one on an http server, is refused.
    let bad = "downstream_servers:\n  - {id: rel, name: rel, transport: stdio, command: /bin/true, working_dir: repo}\n";
    let run = vault.ctl_input(["apply", "-f", "-"], bad.as_bytes());
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr
            .contains("working_dir \"repo\" must be an absolute path"),
        "{run:#?}"
    );
}

#[test]
fn an_admin_cannot_route_a_users_scope_nor_make_a_users_objects() {
    let vault = vault();
    let marker = vault.root.path().join("payload-ran");
    let payload = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    let payload = vault.write_file("payload.sh", &payload);
    // A system-wide route carrying BOB's scope to the admin's command.
    let system_route = format!(
        "downstream_servers:\n  - {{id: grab, name: Grab, transport: stdio, command: {}}}\nroute_rules:\n  - {{id: grab-all, name: Grab, tool_match: [\"*\"], downstream_server_id: grab, auth_scope_id: bob-env}}\n",
        payload.display()
    );
    let run = vault.ctl_input(["apply", "-f", "-"], system_route.as_bytes());
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr.contains("auth_scope bob-env belongs to uid 47202, and a system-wide route cannot carry a user's scope"),
        "{run:#?}"
    );
    // The same objects made out to BOB.
    let as_bob = format!(
        "downstream_servers:\n  - {{id: grab, name: Grab, transport: stdio, command: {}, owner: \"47202\"}}\n",
        payload.display()
    );
    let run = vault.ctl_input(["apply", "-f", "-"], as_bob.as_bytes());
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr
            .contains("admins do not make or change a user's servers"),
        "{run:#?}"
    );
    let route = [
        "route", "create", "--id", "grab2", "--name", "Grab", "--match", "*", "--server", "tools",
        "--scope", "bob-env",
    ];
    let run = vault.ctl(route);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(!marker.exists());
    assert!(vault.ctl(["route", "show", "grab2"]).code != 0);
    assert_bob_served(&vault);
}

#[test]
fn an_admins_proxy_never_follows_a_users_server_or_route() {
    let vault = vault();
    let (uid, gid) = BOB;
    // BOB's own server and a route to every tool: what his proxy runs
    // (bob-env, from his earlier apply, is kept).
    let bobs = "auth_scopes:
  - {id: bob-env, name: bob-env, type: env}
downstream_servers:
  - {id: bob-tool, name: Bob tool, transport: stdio, command: /bin/true}
route_rules:
  - {id: bob-all, name: Bob all, tool_match: [\"*\"], downstream_server_id: bob-tool}\n";
    vault
        .ctl_as(uid, gid, ["apply", "-f", "-"], Some(bobs.as_bytes()))
        .ok();
    // BOB's proxy follows them; an admin's (root's) does not: it would run
    // BOB's command with the admin's rights.
    let ids = |config: &Value, list: &str| -> Vec<String> {
        config[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let bob = probe(&vault, Some(BOB), &["config"]).json;
    assert!(
        ids(&bob, "servers").contains(&"bob-tool".to_owned()),
        "{bob:#}"
    );
    assert!(
        ids(&bob, "routes").contains(&"bob-all".to_owned()),
        "{bob:#}"
    );
    let admin = probe(&vault, None, &["config"]).json;
    assert!(
        !ids(&admin, "servers").contains(&"bob-tool".to_owned()),
        "{admin:#}"
    );
    assert!(
        !ids(&admin, "routes").contains(&"bob-all".to_owned()),
        "{admin:#}"
    );
    // Root's own server stays.
    assert!(
        ids(&admin, "servers").contains(&"tools".to_owned()),
        "{admin:#}"
    );
    // Nor is the admin's own credential released for BOB's server.
    vault.env_scope_as((0, 0), "root-env", "ROOT_KEY", "root-value");
    let refused = probe(
        &vault,
        None,
        &["credential", "root-env", "bob-tool", "stdio", "--rule", ""],
    );
    assert_eq!(refused.json["vault_code"], "NOT_FOUND", "{refused:#?}");
    let released = probe(
        &vault,
        None,
        &["credential", "root-env", "tools", "stdio", "--rule", ""],
    );
    assert_eq!(released.values()["ROOT_KEY"], "root-value");
    // The admin still administers them.
    vault.ctl(["server", "show", "bob-tool"]).ok();
    assert_bob_served(&vault);
}

#[test]
fn a_users_route_to_an_admins_server_is_suspended_when_the_server_changes() {
    let vault = vault();
    let server = |command: &str| {
        let doc = format!(
            "downstream_servers:\n  - {{id: shared, name: Shared, transport: stdio, command: {command}}}\n"
        );
        vault.ctl_input(["apply", "-f", "-"], doc.as_bytes()).ok();
    };
    server("/bin/true");
    let (uid, gid) = BOB;
    let route = [
        "route",
        "create",
        "--id",
        "bob-shared",
        "--name",
        "Bob shared",
        "--match",
        "shared__*",
        "--server",
        "shared",
        "--scope",
        "bob-env",
    ];
    vault.ctl_as(uid, gid, route, None).ok();
    let release_for = |tool: &str| {
        let args = [
            "credential",
            "bob-env",
            "shared",
            "stdio",
            "--rule",
            "bob-shared",
            "--tool",
            tool,
        ];
        probe(&vault, Some(BOB), &args)
    };
    let release = || release_for("shared__x");
    assert_eq!(release().values()["BOB_KEY"], "bob-value");
    // Another tool than the route's releases nothing.
    let other_tool = release_for("other__x");
    assert!(
        other_tool
            .refused(3, "PermissionDenied")
            .contains("does not match tool")
    );

    // The admin changes what the server runs: BOB's route is suspended.
    server("/bin/false");
    let refused = release();
    let message = refused.refused(4, "FailedPrecondition");
    assert!(
        message.contains("route_rule bob-shared is suspended"),
        "{message}"
    );
    assert_eq!(refused.json["fix"], "mcplexerctl route confirm bob-shared");
    let shown = vault
        .ctl_as(uid, gid, ["--json", "route", "show", "bob-shared"], None)
        .json();
    assert!(
        shown["suspended"]
            .as_str()
            .unwrap()
            .contains("changed after the route was made")
    );
    // Only BOB may confirm it, not the admin who changed the server.
    let run = vault.ctl(["route", "confirm", "bob-shared"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(release().code != 0);
    vault
        .ctl_as(uid, gid, ["route", "confirm", "bob-shared"], None)
        .ok();
    assert_eq!(release().values()["BOB_KEY"], "bob-value");
    let records = vault.ctl(["--json", "audit", "--limit", "1000"]).json();
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "Admin/ConfirmRoute"
                && r["uid"] == BOB.0
                && r["status"] == "success"),
        "{records:#}"
    );
}

#[test]
fn another_users_server_is_answered_as_missing() {
    let vault = vault();
    let (uid, gid) = BOB;
    let doc = "downstream_servers:\n  - {id: bob-tools, name: Bob tools, transport: stdio, command: /bin/true}\n";
    vault
        .ctl_as(uid, gid, ["apply", "-f", "-"], Some(doc.as_bytes()))
        .ok();
    let (m_uid, m_gid) = MALLORY;
    vault.env_scope_as(MALLORY, "mal-env", "K", "v");
    let ask = |server: &str| {
        probe(
            &vault,
            Some(MALLORY),
            &["credential", "mal-env", server, "stdio", "--rule", ""],
        )
    };
    let theirs = ask("bob-tools");
    let missing = ask("no-such-server");
    assert_eq!(
        theirs.refused(4, "NotFound"),
        "downstream_server \"bob-tools\" does not exist"
    );
    assert_eq!(
        missing.refused(4, "NotFound"),
        "downstream_server \"no-such-server\" does not exist"
    );
    assert_eq!(ask("tools").values()["K"], "v");
    // Taking the id of BOB's object says only that it is taken.
    let create = [
        "server",
        "create",
        "--id",
        "bob-tools",
        "--name",
        "x",
        "--transport",
        "stdio",
        "--command",
        "/bin/true",
    ];
    let run = vault.ctl_as(m_uid, m_gid, create, None);
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr
            .contains("downstream_server id bob-tools is taken; choose another id"),
        "{run:#?}"
    );
    assert!(
        !run.stderr.contains("47202") && !run.stderr.contains("source"),
        "{run:#?}"
    );
    let doc = "auth_scopes:\n  - {id: mal-env, name: mal-env, type: env}\ndownstream_servers:\n  - {id: bob-tools, name: x, transport: stdio, command: /bin/true}\n";
    let run = vault.ctl_as(m_uid, m_gid, ["apply", "-f", "-"], Some(doc.as_bytes()));
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr
            .contains("downstream_server id bob-tools is taken"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("47202"), "{run:#?}");
}

#[test]
fn every_field_and_every_users_objects_are_bounded() {
    let vault = vault();
    let (uid, gid) = MALLORY;
    let long = "x".repeat(5000);
    let doc = format!(
        "downstream_servers:\n  - {{id: big, name: Big, transport: stdio, command: /bin/{long}}}\n"
    );
    let run = apply_as_mallory(&vault, &doc);
    assert_all_refused(&[run], "command is 5005 bytes long; the limit is 4096");
    let many: String = (0..300).map(|i| format!("\"a{i}\", ")).collect();
    let doc = format!(
        "downstream_servers:\n  - {{id: big, name: Big, transport: stdio, command: /bin/true, args: [{many}]}}\n"
    );
    assert_all_refused(
        &[apply_as_mallory(&vault, &doc)],
        "args has 300 items; the limit is 256",
    );
    // A huge id comes back cut, and its refusal is recorded cut too.
    let huge_id = "y".repeat(100_000);
    let run = vault.ctl_as(uid, gid, ["scope", "delete", &huge_id], None);
    assert_eq!(run.code, 4, "{}", &run.stderr[..200.min(run.stderr.len())]);
    let records = vault.ctl(["--json", "audit", "--limit", "1000"]).json();
    let refused = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["uid"] == uid && r["action"] == "Admin/DeleteScope")
        .expect("the refusal is audited");
    assert!(
        refused["error"].as_str().unwrap().len() < 1100,
        "{}",
        refused["error"]
    );
    // A user owns at most 1000 objects.
    let scopes: String = (0..1001)
        .map(|i| format!("  - {{id: s{i}, name: s{i}, type: env}}\n"))
        .collect();
    let run = vault.ctl_as(
        uid,
        gid,
        ["apply", "-f", "-"],
        Some(format!("auth_scopes:\n{scopes}").as_bytes()),
    );
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr.contains("a user may own at most 1000"),
        "{run:#?}"
    );
    assert_bob_served(&vault);
}

/// What `status` says was set aside, for `user` (or root): kind, id,
/// reason, sorted.
fn disabled_of(vault: &Vault, user: Option<(u32, u32)>) -> Vec<(String, String, String)> {
    let status = match user {
        Some((uid, gid)) => vault.ctl_as(uid, gid, ["--json", "status"], None).json(),
        None => vault.ctl(["--json", "status"]).json(),
    };
    let mut out: Vec<(String, String, String)> = status["disabled"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["kind"].as_str().unwrap().to_owned(),
                        d["id"].as_str().unwrap().to_owned(),
                        d["reason"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn a_users_objects_never_stop_the_vault_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    // Readable by the vault's uid, as /etc/mcplexer is.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.yaml");
    let write = |servers: &str| {
        std::fs::write(&config, format!("downstream_servers:\n{servers}")).unwrap();
    };
    write("  - {id: cfg-tools, name: Cfg, transport: stdio, command: /bin/true}\n");
    let mut vault = vault_from(VaultOptions {
        config: Some(config.clone()),
        ..Default::default()
    });
    let (uid, gid) = BOB;
    // BOB's earlier apply made bob-env: this one keeps it.
    let bobs = "auth_scopes:
  - {id: bob-env, name: bob-env, type: env}
downstream_servers:
  - {id: taken, name: Taken, transport: stdio, command: /bin/true, tool_namespace: t1}
  - {id: bob-ns, name: Bob ns, transport: stdio, command: /bin/true, tool_namespace: later}
route_rules:
  - {id: bob-on-cfg, name: Bob on cfg, tool_match: [\"cfg__*\"], downstream_server_id: cfg-tools}\n";
    let run = vault.ctl_as(uid, gid, ["apply", "-f", "-"], Some(bobs.as_bytes()));
    run.ok();
    // The file now takes BOB's id and namespace, and drops the server his
    // route is on. The vault starts all the same.
    write(
        "  - {id: taken, name: Taken, transport: stdio, command: /bin/true, tool_namespace: t2}
  - {id: later-file, name: Later, transport: stdio, command: /bin/true, tool_namespace: later}\n",
    );
    vault.restart();
    let bob_sees = disabled_of(&vault, Some(BOB));
    let kinds: Vec<(&str, &str)> = bob_sees
        .iter()
        .map(|(k, i, _)| (k.as_str(), i.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("downstream_server", "bob-ns"),
            ("downstream_server", "taken"),
            ("route_rule", "bob-on-cfg")
        ],
        "{bob_sees:#?}"
    );
    assert!(
        bob_sees[0].2.contains("tool_namespace \"later\""),
        "{bob_sees:#?}"
    );
    assert!(
        bob_sees[1]
            .2
            .contains("the vault's config file defines downstream_server taken")
    );
    assert!(bob_sees[2].2.contains("does not name a downstream_server"));
    assert_eq!(disabled_of(&vault, None), bob_sees);
    assert!(disabled_of(&vault, Some(MALLORY)).is_empty());
    let records = vault.ctl(["--json", "audit", "--limit", "1000"]).json();
    let set_aside = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["uid"] == BOB.0 && r["action"].as_str().unwrap().starts_with("ConfigFile/"))
        .count();
    assert_eq!(set_aside, 3);
    assert_bob_served(&vault);
    // The file gives the id and namespace back: BOB's servers return; his
    // route stays aside while its server is gone.
    write("  - {id: other, name: Other, transport: stdio, command: /bin/true}\n");
    vault.restart();
    let servers = vault
        .ctl_as(uid, gid, ["--json", "server", "list"], None)
        .json();
    let ids: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"taken") && ids.contains(&"bob-ns"), "{ids:?}");
    let left = disabled_of(&vault, Some(BOB));
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].1, "bob-on-cfg");
}

/// A TCP listener on a free loopback port, held by `(uid, gid)`: a user
/// squatting the port of a local server. [`Squatter::connections`] says
/// how many connections reached it, without waiting for any.
struct Squatter {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Squatter {
    fn start((uid, gid): (u32, u32)) -> Self {
        let script = "import socket, sys
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
sys.stdin.read()
s.setblocking(False)
n = 0
while True:
    try:
        s.accept()
        n += 1
    except BlockingIOError:
        break
print(n, flush=True)
";
        let mut child = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(mcplexer_tests::peers::python())
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the squatter");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("squatter said {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            port,
        }
    }

    /// Connections queued so far (the squatter stops listening).
    fn connections(mut self) -> usize {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("squatter said {line:?}"))
    }
}

#[test]
fn no_credential_goes_to_another_users_listener_on_loopback() {
    let vault = vault();
    let squatter = Squatter::start(MALLORY);
    let (uid, gid) = BOB;
    let doc = format!(
        "auth_scopes:
  - {{id: bob-env, name: bob-env, type: env}}
  - {{id: bob-hdr, name: Bob header, type: header}}
downstream_servers:
  - {{id: local-api, name: Local API, transport: http, url: \"http://127.0.0.1:{}/mcp\", tool_namespace: api}}
route_rules:
  - {{id: bob-api, name: Bob API, tool_match: [\"api__*\"], downstream_server_id: local-api, auth_scope_id: bob-hdr}}\n",
        squatter.port
    );
    vault
        .ctl_as(uid, gid, ["apply", "-f", "-"], Some(doc.as_bytes()))
        .ok();
    vault
        .ctl_as(
            uid,
            gid,
            ["secret", "set", "bob-hdr", "Authorization"],
            Some(b"Bearer bob-secret\n"),
        )
        .ok();
    let results = crate::proxy::through_proxy(
        &vault,
        Some(BOB),
        serde_json::json!([{"op": "list_tools"}, {"op": "call", "name": "api__echo", "arguments": {"message": "x"}}]),
    );
    let tools = results[0]["tools"].as_array().unwrap();
    assert!(
        !tools
            .iter()
            .any(|t| t.as_str().is_some_and(|t| t.starts_with("api__"))),
        "{tools:?}"
    );
    let error = results[1].to_string();
    assert!(error.contains("belongs to uid 47201"), "{error}");
    assert_eq!(
        squatter.connections(),
        0,
        "a connection reached the squatter"
    );
    assert_bob_served(&vault);
}
