//! A hostile member of the client group against everyone else (DESIGN §2:
//! "one user, however hostile, cannot stop the vault from serving the
//! others"). Each test runs one class of attack as MALLORY, a real second
//! uid, and checks both that the attack fails with an error naming the
//! limit and that BOB, another user, is served meanwhile: his `status`
//! answers and his own credential is released.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use mcplexer_tests::{Run, Vault, VaultOptions};

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
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
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
