//! Benchmark: a quiet user's credential releases while another user floods
//! the vault (a "noisy neighbour"), against the same client on the same
//! vault with nobody else on it, alternating in one run.
//!
//! Starts the real `mcplexer-vaultd` in system mode as the packaged unit
//! runs it (through the test harness: dropped to its own uid, the client
//! group as its group, the unit's file limit, the default limits) with
//! root's stdio server `tools`, and an env scope of each user. The quiet
//! user (uid 47301) runs `vault-probe credential --repeat N --pace P`: N
//! `Vault/GetCredential` on one connection, one every P µs (a busy user
//! within its request rate: by default 500 a second, 250 tool calls), each
//! a real audited release, timed by the client. The noisy user (uid 47302) runs `noise`, one
//! process that until the quiet client is done keeps, all at once and each
//! in a loop (see `tests/src/bin/noise.rs`):
//!
//! * connections at its cap: 200 silent connections, each reopened as soon
//!   as the vault closes it (the vault keeps 128 and refuses the rest; the
//!   kept ones never send a preface, so they are also the slow prefaces);
//! * audit at its quota: `SubmitAudit` with 20 KiB of params, back to back;
//! * bad YAML: `Apply` dry runs of a 200,000-deep flow nesting and of an
//!   alias bomb, in turn;
//! * releases of its own, 32 at once (past its request rate, which
//!   SubmitAudit and Apply count against too);
//! * streams past its share: 20 watches, dropped, again.
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
//! `BENCH_PACE_US` (default 2000) the time from one to the next;
//! `BENCH_ROUNDS` (default 3); `BENCH_SLICES=0` runs without CPU groups
//! (see [`Groups`]); `NOISE_ONLY=a,b` runs only those attacks.

// A failed set-up step must abort the benchmark, as in the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use mcplexer_tests::{Vault, VaultOptions, bin};
use serde_json::Value;

const G: u32 = 47301;
/// The vault's own uid.
const SERVICE: u32 = 47300;
const QUIET: (u32, u32) = (47301, G);
const NOISY: (u32, u32) = (47302, G);

/// A command run as `(uid, gid)`, without supplementary groups, in `uid`'s
/// CPU group when there are groups.
fn as_user((uid, gid): (u32, u32), program: &std::path::Path) -> Command {
    let mut cmd = match groups().map(|g| g.procs(&format!("user-{uid}"))) {
        Some(procs) => {
            // Joins the group, then becomes the user's program: the same
            // process, so everything it does is counted there.
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                .arg(procs)
                .arg("setpriv");
            cmd
        }
        None => Command::new("setpriv"),
    };
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
fn measure(vault: &Vault, requests: usize, pace_us: usize) -> (u64, u64, u64) {
    let out = as_user(QUIET, &bin("vault-probe"))
        .arg("--socket")
        .arg(&vault.socket)
        .args(["credential", "quiet-env", "tools", "stdio", "--rule", ""])
        .args(["--repeat", &requests.to_string()])
        .args(["--pace", &pace_us.to_string()])
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

/// The noisy user's flood: `noise` on one vault, until stopped (killed if
/// dropped, so a failed run leaves no flood behind).
struct Noise(Option<(Child, BufReader<ChildStdout>)>);

impl Noise {
    /// Starts the flood; returns once it is under way.
    fn start(vault: &Vault) -> Self {
        let mut child = as_user(NOISY, &bin("noise"))
            .arg("--socket")
            .arg(&vault.socket)
            .args(["--scope", "noisy-env", "--server", "tools"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn noise");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut noise = Self(Some((child, stdout)));
        let ready = noise.line();
        assert_eq!(ready["ready"], true, "noise said {ready}");
        noise
    }

    fn line(&mut self) -> Value {
        let (_, stdout) = self.0.as_mut().expect("running");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read noise");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("noise said {line:?}: {e}"))
    }

    /// Stops the flood; how many iterations each attack ran.
    fn stop(mut self) -> Vec<(String, u64)> {
        // It stops at the end of its stdin.
        drop(self.0.as_mut().expect("running").0.stdin.take());
        let ran = self.line();
        if let Some((mut child, _)) = self.0.take() {
            let _ = child.wait();
        }
        ran.as_object()
            .expect("an object")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect()
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU groups as systemd makes them (its slices): the vault in one, each
/// user in one of their own, all with the default, equal weight. Within
/// one group the scheduler shares the CPU between threads, so a user who
/// runs a busy process competes with the vault's threads one for one;
/// across groups, the vault keeps its share however many processes a user
/// runs. Cgroup v1's `cpu` hierarchy or v2 with the `cpu` controller;
/// `BENCH_SLICES=0` runs without.
struct Groups {
    base: PathBuf,
    made: std::sync::Mutex<Vec<PathBuf>>,
}

static GROUPS: std::sync::OnceLock<Option<Groups>> = std::sync::OnceLock::new();

fn groups() -> Option<&'static Groups> {
    GROUPS.get_or_init(Groups::find).as_ref()
}

impl Groups {
    fn find() -> Option<Self> {
        if std::env::var("BENCH_SLICES").is_ok_and(|v| v == "0") {
            return None;
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let base = if v1.join("cgroup.procs").exists() {
            v1
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
            && std::fs::write(v2.join("cgroup.subtree_control"), "+cpu").is_ok()
        {
            v2
        } else {
            return None;
        };
        let probe = base.join(format!("mcplexer-noisy-{}-probe", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        let _ = std::fs::remove_dir(&probe);
        Some(Self {
            base: base.to_owned(),
            made: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The `cgroup.procs` file of the group `name`, made on first use.
    fn procs(&self, name: &str) -> PathBuf {
        let dir = self
            .base
            .join(format!("mcplexer-noisy-{}-{name}", std::process::id()));
        let mut made = self.made.lock().unwrap();
        if !made.contains(&dir) {
            std::fs::create_dir(&dir).expect("create a CPU group");
            made.push(dir.clone());
        }
        dir.join("cgroup.procs")
    }

    /// Moves process `pid` (all its threads) into the group `name`.
    fn join(&self, name: &str, pid: u32) {
        std::fs::write(self.procs(name), pid.to_string()).expect("join a CPU group");
    }

    /// Removes the groups (each empty once its processes have ended).
    fn remove(&self) {
        for dir in self.made.lock().unwrap().drain(..) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A vault with root's server `tools` and each user's scope, in the CPU
/// group `name` when there are groups.
fn set_up(name: &str) -> Vault {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        run_as: Some(SERVICE),
        ..Default::default()
    });
    if let Some(groups) = groups() {
        groups.join(name, vault.pid());
    }
    vault.create_stdio_server("tools", "Tools");
    for (user, scope) in [(QUIET, "quiet-env"), (NOISY, "noisy-env")] {
        vault.env_scope_as(user, scope, "TOKEN", "tok-0123456789abcdef");
    }
    vault
}

fn main() {
    let requests = env_usize("BENCH_REQUESTS", 2000);
    let pace_us = env_usize("BENCH_PACE_US", 2000);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let vault = set_up("vault");
    // The control: the same flood aimed at another vault on the machine.
    // Against it, the quiet client measures what the machine's busy cores
    // cost; the difference to the flood on its own vault is the vault's.
    let elsewhere = set_up("vault-elsewhere");
    measure(&vault, requests / 4, pace_us); // warm-up
    let mut report = String::new();
    writeln!(
        report,
        "noisy neighbour: {requests} releases by the quiet user per phase, one every {pace_us} µs, {rounds} rounds"
    )
    .ok();
    writeln!(
        report,
        "CPU groups as systemd's slices (the vault, each user its own, equal weights): {}",
        if groups().is_some() {
            "yes"
        } else {
            "no (BENCH_SLICES=0, or no cgroup cpu controller)"
        }
    )
    .ok();
    writeln!(
        report,
        "round  quiet p50  quiet p99  noisy p50  noisy p99  p50 ratio  p99 ratio  refused (quiet/noisy)  control p50  control p99"
    )
    .ok();
    let (mut r50, mut r99, mut refused_total) = (Vec::new(), Vec::new(), 0);
    let (mut c50, mut c99) = (Vec::new(), Vec::new());
    let mut iterations: Vec<(String, u64)> = Vec::new();
    for round in 1..=rounds {
        let (q50, q99, qref) = measure(&vault, requests, pace_us);
        let noise = Noise::start(&vault);
        let (n50, n99, nref) = measure(&vault, requests, pace_us);
        let ran = noise.stop();
        let control = Noise::start(&elsewhere);
        let (k50, k99, kref) = measure(&vault, requests, pace_us);
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
    // The vaults end (and their groups empty) before the groups go.
    drop((vault, elsewhere));
    if let Some(groups) = groups() {
        groups.remove();
    }
}
