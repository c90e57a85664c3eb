//! A hostile member of the client group against everyone else (DESIGN §2:
//! "one user, however hostile, cannot stop the vault from serving the
//! others"). Each test runs one class of attack as MALLORY, a real second
//! uid, and checks both that the attack fails with an error naming the
//! limit and that BOB, another user, is served meanwhile: his `status`
//! answers and his own credential is released.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use mcplexer_tests::{Run, Vault, VaultOptions};
use serde_json::Value;

use crate::probe::probe;

/// The client group: the socket is 0660 root:G.
const G: u32 = 47201;
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
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    });
    vault.create_stdio_server("tools", "Tools");
    let (uid, gid) = BOB;
    let doc = "auth_scopes:\n  - {id: bob-env, name: Bob env, type: env}\n";
    vault
        .ctl_as(uid, gid, ["apply", "-f", "-"], Some(doc.as_bytes()))
        .ok();
    vault
        .ctl_as(
            uid,
            gid,
            ["secret", "set", "bob-env", "BOB_KEY"],
            Some(b"bob-value\n"),
        )
        .ok();
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

/// Half a megabyte whose aliases expand to gigabytes: each level repeats
/// the previous one a hundred times.
fn alias_bomb() -> String {
    let item = format!("\"{}\"", "x".repeat(500));
    let base = vec![item.as_str(); 1000].join(", ");
    let mut doc = format!("auth_scopes: []\nx0: &a0 [{base}]\n");
    for level in 1..4 {
        let refs = vec![format!("*a{}", level - 1); 100].join(", ");
        doc.push_str(&format!("x{level}: &a{level} [{refs}]\n"));
    }
    doc
}

#[test]
fn an_alias_bomb_is_refused_and_others_are_served() {
    let vault = vault();
    let doc = alias_bomb();
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
