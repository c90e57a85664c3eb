//! Benchmark: a quiet user's credential releases while another user floods
//! the vault (a "noisy neighbour"), against the same client on the same
//! vault with nobody else on it, alternating in one run.
//!
//! Starts the real `mcplexer-vaultd` (through the test harness, as root,
//! with a client group, the default limits) with root's stdio server
//! `tools`, and an env scope of each user. The quiet user (uid 47301) runs
//! `vault-probe credential --repeat N`: N sequential `Vault/GetCredential`
//! on one connection, each a real audited release, timed by the client.
//! The noisy user (uid 47302) runs, all at once and each in a loop until
//! the quiet client is done:
//!
//! * connections at its cap: `conn-hog` opening 200 silent connections
//!   (the vault keeps 128 and closes the rest; the kept ones never send a
//!   preface, so they are also the slow prefaces);
//! * audit at its quota: `vault-probe submit-audit --repeat 200` with 20 KiB
//!   of params each;
//! * bad YAML: `mcplexerctl apply --dry-run` of a 200,000-deep flow nesting
//!   and of an alias bomb, in turn;
//! * releases of its own: `vault-probe credential --concurrent 32`;
//! * streams past its share: `vault-probe watch 20`.
//!
//! Each round measures the quiet client alone, then under the flood, then
//! (the control) while the same flood hits a second vault on the machine:
//! what the busy cores cost the quiet client whatever the vault does. The
//! report gives, per round and as the median over rounds, the quiet
//! client's p50 and p99 and their ratios to the quiet phase, with the flood
//! and with the control, the quiet client's refusals (there must be none),
//! and how many iterations each attack ran on its own vault.
//!
//! Run: `cargo build --release --workspace && cargo bench -p mcplexer-tests --bench noisy`.
//! Environment: `BENCH_OUT=FILE` also writes the report there;
//! `BENCH_REQUESTS` (default 2000) the quiet client's requests per phase;
//! `BENCH_ROUNDS` (default 3).

// A failed set-up step must abort the benchmark, as in the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use mcplexer_tests::{Vault, VaultOptions, bin};
use serde_json::Value;

const G: u32 = 47301;
const QUIET: (u32, u32) = (47301, G);
const NOISY: (u32, u32) = (47302, G);

/// A command run as `(uid, gid)`, without supplementary groups.
fn as_user((uid, gid): (u32, u32), program: &std::path::Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(program);
    cmd
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The quiet user's client: p50, p99 (µs) and refusals.
fn measure(vault: &Vault, requests: usize) -> (u64, u64, u64) {
    let out = as_user(QUIET, &bin("vault-probe"))
        .arg("--socket")
        .arg(&vault.socket)
        .args(["credential", "quiet-env", "tools", "stdio", "--rule", ""])
        .args(["--repeat", &requests.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run vault-probe");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("vault-probe said {out:?}: {e}"));
    (
        json["p50_us"].as_u64().unwrap(),
        json["p99_us"].as_u64().unwrap(),
        json["refused"].as_u64().unwrap(),
    )
}

/// One attack: a step the noisy user repeats.
type Attack = Box<dyn Fn() + Send>;

/// The noisy user's attacks, each in a loop on its own thread.
struct Noise {
    stop: Arc<AtomicBool>,
    threads: Vec<(&'static str, Arc<AtomicU64>, JoinHandle<()>)>,
    hog: Child,
}

impl Noise {
    fn start(vault: &Vault) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = vault.socket.clone();
        let mut hog = as_user(NOISY, &bin("conn-hog"))
            .arg("--socket")
            .arg(&socket)
            .arg("200")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn conn-hog");
        // conn-hog holds its connections until its stdin closes.
        let _ = hog.stdin.as_mut().map(|s| s.flush());
        let big = format!("{{\"blob\": \"{}\"}}", "z".repeat(20 * 1024));
        let deep = format!("auth_scopes: {}", "[".repeat(200_000));
        let bomb = mcplexer_tests::alias_bomb();
        let probe = |args: Vec<String>| {
            let socket = socket.clone();
            move || {
                as_user(NOISY, &bin("vault-probe"))
                    .arg("--socket")
                    .arg(&socket)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|_| ())
                    .unwrap_or(())
            }
        };
        let yaml = |docs: Vec<String>| {
            let socket = socket.clone();
            let turn = AtomicU64::new(0);
            move || {
                let doc = &docs[turn.fetch_add(1, Ordering::Relaxed) as usize % docs.len()];
                let child = as_user(NOISY, &bin("mcplexerctl"))
                    .arg("--socket")
                    .arg(&socket)
                    .args(["apply", "--dry-run", "-f", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                if let Ok(mut child) = child {
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(doc.as_bytes());
                    }
                    let _ = child.wait();
                }
            }
        };
        let attacks: Vec<(&'static str, Attack)> = vec![
            (
                "audit at its quota (200 records of 20 KiB)",
                Box::new(probe(
                    [
                        "submit-audit",
                        "--tool",
                        "noise__x",
                        "--status",
                        "success",
                        "--params",
                        &big,
                        "--repeat",
                        "200",
                    ]
                    .map(String::from)
                    .to_vec(),
                )),
            ),
            (
                "bad YAML (deep nesting, alias bomb)",
                Box::new(yaml(vec![deep, bomb])),
            ),
            (
                "its own releases (32 at once)",
                Box::new(probe(
                    [
                        "credential",
                        "noisy-env",
                        "tools",
                        "stdio",
                        "--rule",
                        "",
                        "--concurrent",
                        "32",
                    ]
                    .map(String::from)
                    .to_vec(),
                )),
            ),
            (
                "streams past its share (20 watches)",
                Box::new(probe(["watch", "20"].map(String::from).to_vec())),
            ),
        ];
        let threads = attacks
            .into_iter()
            .map(|(name, attack)| {
                let count = Arc::new(AtomicU64::new(0));
                let (stop, counter) = (stop.clone(), count.clone());
                let handle = std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        attack();
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                });
                (name, count, handle)
            })
            .collect();
        Self { stop, threads, hog }
    }

    /// Stops every attack; how many iterations each ran.
    fn stop(mut self) -> Vec<(&'static str, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.hog.kill();
        let _ = self.hog.wait();
        self.threads
            .into_iter()
            .map(|(name, count, handle)| {
                let _ = handle.join();
                (name, count.load(Ordering::SeqCst))
            })
            .collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A vault with root's server `tools` and each user's scope.
fn set_up() -> Vault {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        ..Default::default()
    });
    vault.create_stdio_server("tools", "Tools");
    for (user, scope) in [(QUIET, "quiet-env"), (NOISY, "noisy-env")] {
        vault.env_scope_as(user, scope, "TOKEN", "tok-0123456789abcdef");
    }
    vault
}

fn main() {
    let requests = env_usize("BENCH_REQUESTS", 2000);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let vault = set_up();
    // The control: the same flood aimed at another vault on the machine.
    // Against it, the quiet client measures what the machine's busy cores
    // cost; the difference to the flood on its own vault is the vault's.
    let elsewhere = set_up();
    measure(&vault, requests / 4); // warm-up
    let mut report = String::new();
    writeln!(
        report,
        "noisy neighbour: {requests} sequential releases by the quiet user per phase, {rounds} rounds"
    )
    .ok();
    writeln!(
        report,
        "round  quiet p50  quiet p99  noisy p50  noisy p99  p50 ratio  p99 ratio  refused (quiet/noisy)  control p50  control p99"
    )
    .ok();
    let (mut r50, mut r99, mut refused_total) = (Vec::new(), Vec::new(), 0);
    let (mut c50, mut c99) = (Vec::new(), Vec::new());
    let mut iterations: Vec<(&'static str, u64)> = Vec::new();
    for round in 1..=rounds {
        let (q50, q99, qref) = measure(&vault, requests);
        let noise = Noise::start(&vault);
        let (n50, n99, nref) = measure(&vault, requests);
        let ran = noise.stop();
        let control = Noise::start(&elsewhere);
        let (k50, k99, kref) = measure(&vault, requests);
        control.stop();
        let (ka, kb) = (
            k50 as f64 / q50.max(1) as f64,
            k99 as f64 / q99.max(1) as f64,
        );
        c50.push(ka);
        c99.push(kb);
        refused_total += kref;
        for (name, n) in ran {
            match iterations.iter_mut().find(|(k, _)| *k == name) {
                Some((_, total)) => *total += n,
                None => iterations.push((name, n)),
            }
        }
        let (a, b) = (
            n50 as f64 / q50.max(1) as f64,
            n99 as f64 / q99.max(1) as f64,
        );
        r50.push(a);
        r99.push(b);
        refused_total += qref + nref;
        writeln!(
            report,
            "{round:>5}  {q50:>6} µs  {q99:>6} µs  {n50:>6} µs  {n99:>6} µs  {a:>8.2}×  {b:>8.2}×  {qref}/{nref}                  {ka:>8.2}×  {kb:>8.2}×"
        )
        .ok();
    }
    let (m50, m99) = (median(r50), median(r99));
    writeln!(
        report,
        "median ratio noisy/quiet: p50 {m50:.2}×, p99 {m99:.2}× (targets: 2×, 5×)"
    )
    .ok();
    let (k50, k99) = (median(c50), median(c99));
    writeln!(
        report,
        "median ratio with the same flood on another vault (the machine's share): p50 {k50:.2}×, p99 {k99:.2}×"
    )
    .ok();
    writeln!(report, "quiet user's refusals: {refused_total} (target: 0)").ok();
    writeln!(report, "attack iterations over all rounds:").ok();
    for (name, n) in iterations {
        writeln!(report, "  {name}: {n}").ok();
    }
    print!("{report}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(path, &report).expect("write BENCH_OUT");
    }
}
