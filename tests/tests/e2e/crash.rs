//! `kill -9` during 1,000 concurrent writes loses no acknowledged write and
//! leaves a sound database (DESIGN §8: every write is one transaction; the
//! store answers only after the commit). The 1,000 writes are concurrent
//! tasks with a window of requests in flight, so that writes are still
//! arriving and being committed when the daemon dies: with all 1,000 sent at
//! once the vault commits every one of them before the first answer leaves
//! (each answer waits for its audit record's commit), and the kill would
//! land after the last write. Two kinds of write: workspace
//! creates (one row each) and secret sets on one env scope, which are
//! read-modify-writes of one encrypted map, so a lost update or a torn map
//! would show. After the restart every acknowledged write is present with
//! the value written, nothing that was not requested appears, and
//! `PRAGMA integrity_check` says "ok".

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcplexer_proto::v1 as pb;
use mcplexer_tests::Vault;
use tokio::sync::{Notify, Semaphore};
use tonic::transport::Channel;

use crate::probe::probe;

/// Writes started at once.
const WRITES: usize = 1000;
/// Requests in flight at any time.
const WINDOW: usize = 64;
/// The daemon is killed once this many writes are acknowledged.
const KILL_AFTER: usize = 300;
/// Connections the writes are spread over.
const CHANNELS: usize = 8;

/// Starts `WRITES` concurrent `write(channel, i)` (`WINDOW` in flight), SIGKILLs the daemon as
/// soon as `KILL_AFTER` are acknowledged, waits for every write to finish,
/// and returns the acknowledged ones with what they returned.
async fn write_and_kill<F, Fut>(vault: &mut Vault, write: F) -> BTreeMap<usize, u64>
where
    F: Fn(Channel, usize) -> Fut,
    Fut: Future<Output = Result<u64, tonic::Status>> + Send + 'static,
{
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(vault.channel().await);
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let kill_now = Arc::new(Notify::new());
    let window = Arc::new(Semaphore::new(WINDOW));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let write = write(channels[i % CHANNELS].clone(), i);
        let (acked, finished, kill_now) = (acked.clone(), finished.clone(), kill_now.clone());
        let window = window.clone();
        tasks.spawn(async move {
            let permit = window.acquire_owned().await.expect("semaphore");
            let result = write.await;
            drop(permit);
            // Wake the killer at the threshold, or when everything is done
            // (so a daemon that fails every write cannot hang the test).
            if result.is_ok() && acked.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                kill_now.notify_one();
            }
            if finished.fetch_add(1, Ordering::SeqCst) + 1 == WRITES {
                kill_now.notify_one();
            }
            (i, result)
        });
    }
    kill_now.notified().await;
    vault.kill9();
    let mut ok = BTreeMap::new();
    let mut errors = BTreeMap::<String, usize>::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("write task") {
            (i, Ok(value)) => {
                ok.insert(i, value);
            }
            (_, Err(status)) => *errors.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }
    eprintln!(
        "{} of {WRITES} writes acknowledged before SIGKILL; failed by code: {errors:?}",
        ok.len()
    );
    assert!(
        ok.len() >= KILL_AFTER,
        "only {} acknowledged; {errors:?}\n{}",
        ok.len(),
        vault.log()
    );
    assert_eq!(ok.len() + errors.values().sum::<usize>(), WRITES);
    assert!(
        ok.len() < WRITES,
        "every write was acknowledged before the kill: nothing was in flight"
    );
    ok
}

/// Every acknowledged write is present; the kill landed before the vault
/// had written everything.
fn check_acknowledged_present(acked: &BTreeMap<usize, u64>, present: &BTreeSet<usize>) {
    let missing: Vec<&usize> = acked.keys().filter(|i| !present.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost after kill -9: {missing:?}"
    );
    eprintln!(
        "{} present after restart, {} of them committed but not acknowledged",
        present.len(),
        present.len() - acked.len()
    );
    assert!(
        present.len() < WRITES,
        "the kill landed after the last write"
    );
}

/// Stops the daemon and checks the database with SQLite's own checker.
fn stop_and_check_integrity(vault: &mut Vault) {
    assert_eq!(vault.stop(), Some(0), "{}", vault.log());
    let db = rusqlite::Connection::open(vault.state_dir.join("vault.db")).unwrap();
    let rows: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, ["ok"]);
}

fn workspace_id(i: usize) -> String {
    format!("crash-{i:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_workspace_creates_loses_no_acknowledged_create() {
    let mut vault = Vault::start();
    let acked = write_and_kill(&mut vault, |channel, i| async move {
        let workspace = pb::Workspace {
            id: workspace_id(i),
            name: format!("Crash {i}"),
            root_path: format!("/srv/crash/{i}"),
            ..Default::default()
        };
        mcplexer_proto::admin_client(channel)
            .create_workspace(workspace)
            .await
            .map(|_| 0)
    })
    .await;

    vault.restart();
    let list = vault.ctl(["--json", "workspace", "list"]).json();
    let mut present = BTreeSet::new();
    for w in list.as_array().unwrap() {
        let (id, root) = (w["id"].as_str().unwrap(), &w["root_path"]);
        if id == "default" {
            assert_eq!(root, "/");
            continue;
        }
        // Only requested workspaces, each whole.
        let i: usize = id.strip_prefix("crash-").unwrap().parse().unwrap();
        assert!(
            i < WRITES && id == workspace_id(i),
            "unexpected workspace {id}"
        );
        assert_eq!(root, &format!("/srv/crash/{i}"), "{w:#}");
        present.insert(i);
    }
    check_acknowledged_present(&acked, &present);
    // The restarted vault takes new writes.
    vault
        .ctl([
            "workspace",
            "create",
            "--name",
            "After",
            "--root",
            "/srv/after",
        ])
        .ok();
    stop_and_check_integrity(&mut vault);
}

fn secret_key(i: usize) -> String {
    format!("K_{i:04}")
}

fn secret_value(i: usize) -> String {
    format!("value-{i}-{}", i * 7919)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_secret_sets_loses_no_acknowledged_value() {
    let mut vault = Vault::start();
    vault
        .ctl([
            "scope", "create", "--name", "Bulk", "--id", "bulk", "--type", "env",
        ])
        .ok();
    let server = ["server", "create", "--name", "Tools", "--id", "tools"];
    vault
        .ctl(
            server
                .iter()
                .chain(&["--transport", "stdio", "--command", "/bin/true"]),
        )
        .ok();
    let acked = write_and_kill(&mut vault, |channel, i| async move {
        let request = pb::SetSecretRequest {
            scope_id: "bulk".into(),
            key: secret_key(i),
            value: secret_value(i).into_bytes(),
        };
        mcplexer_proto::admin_client(channel)
            .set_secret(request)
            .await
            .map(|r| r.into_inner().version)
    })
    .await;
    // One serialised writer: every acknowledged set got its own version.
    let versions: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(versions.len(), acked.len(), "two sets shared a version");

    vault.restart();
    let keys = vault.ctl(["--json", "secret", "list", "bulk"]).json();
    let keys: BTreeSet<String> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let released = probe(&vault, None, &["credential", "bulk", "tools", "stdio"]);
    let values = released.values();
    assert_eq!(values.keys().cloned().collect::<BTreeSet<_>>(), keys);
    let mut present = BTreeSet::new();
    for (key, value) in &values {
        // Only requested keys, each with the value written.
        let i: usize = key.strip_prefix("K_").unwrap().parse().unwrap();
        assert!(i < WRITES && key == &secret_key(i), "unexpected key {key}");
        assert_eq!(value, &secret_value(i), "{key}");
        present.insert(i);
    }
    check_acknowledged_present(&acked, &present);
    let version = released.json["version"].as_u64().unwrap();
    let last_acked = *versions.last().unwrap();
    assert!(
        version >= last_acked,
        "version {version} < acknowledged {last_acked}"
    );
    let scope = vault.ctl(["--json", "scope", "show", "bulk"]).json();
    assert_eq!(scope["version"], version);
    stop_and_check_integrity(&mut vault);
}

/// Releases are audited in the journal before their values leave: after
/// `kill -9` in the middle of 1,000 concurrent releases, every release that
/// returned values has its audit record once the vault is back, even those
/// not yet moved into the audit table when it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_releases_loses_no_audit_record_of_a_release() {
    let mut vault = Vault::start();
    let setup = "auth_scopes:\n  - {id: relscope, name: Rel, type: env}\n\
                 downstream_servers:\n  - {id: tools, name: Tools, transport: stdio, command: /bin/true}\n";
    let path = vault.write_file("release.yaml", setup);
    vault.ctl(["apply", "-f", &path.display().to_string()]).ok();
    vault
        .ctl_input(["secret", "set", "relscope", "TOKEN"], b"released-value\n")
        .ok();
    let acked = write_and_kill(&mut vault, |channel, i| async move {
        let request = pb::CredentialRequest {
            auth_scope_id: "relscope".into(),
            downstream_server_id: "tools".into(),
            transport: "stdio".into(),
            tool: format!("tools__call_{i:04}"),
            route_rule_id: String::new(),
        };
        let credential = mcplexer_proto::vault_client(channel)
            .get_credential(request)
            .await?
            .into_inner();
        assert_eq!(credential.values.len(), 1);
        Ok(0)
    })
    .await;

    vault.restart();
    eprintln!(
        "journal recovered at restart: {}",
        vault
            .log()
            .contains("ingested the audit journal left by the last run")
    );
    let records = vault
        .ctl(["--json", "audit", "--kind", "release", "--limit", "5000"])
        .json();
    let mut audited = BTreeMap::<usize, usize>::new();
    for r in records.as_array().unwrap() {
        assert_eq!(r["auth_scope_id"], "relscope", "{r:#}");
        assert_eq!(r["status"], "success", "{r:#}");
        let i: usize = r["tool"]
            .as_str()
            .unwrap()
            .strip_prefix("tools__call_")
            .unwrap()
            .parse()
            .unwrap();
        *audited.entry(i).or_default() += 1;
    }
    let unaudited: Vec<&usize> = acked.keys().filter(|i| !audited.contains_key(i)).collect();
    assert!(
        unaudited.is_empty(),
        "released without an audit record: {unaudited:?}"
    );
    assert!(
        audited.values().all(|&n| n == 1),
        "a release was recorded twice after recovery"
    );
    stop_and_check_integrity(&mut vault);
}
