//! Benchmark: credential release over the vault socket against an
//! `ssh-agent` request-identities round trip, measured in the same run.
//!
//! Starts the real `mcplexer-vaultd` (through the test harness, as root) with
//! one stdio server and one env scope holding two values, and a real
//! `ssh-agent -D` holding one ed25519 key. For 1, 8 and 64 concurrent
//! clients, each client is one connection driven by one tokio task doing
//! sequential requests: `Vault/GetCredential` (a real release, audited by the
//! daemon) or SSH agent message 11 → 12; as a control, `Vault/GetConfig` on
//! the same socket and stack, which neither releases nor audits. After a
//! warm-up, every latency of a fixed-duration window is kept; the report
//! gives p50, p99, requests per second, the CPU and context switches each
//! side spent per request (by daemon thread), the vault/ssh-agent ratios,
//! the daemon's peak RSS (VmHWM), and how much CPU other processes took
//! meanwhile (a run on a busy machine says so).
//!
//! Run: `cargo build --release --workspace && cargo bench -p mcplexer-tests --bench release`.
//! Environment: `BENCH_OUT=FILE` also writes the report there;
//! `BENCH_RUNTIME=current|multi` picks the client runtime (default
//! `current`); `BENCH_SECS` / `BENCH_WARMUP_SECS` set the window lengths
//! (default 6 s / 1 s); `BENCH_LEVELS=1,8,64` the client counts.

// A failed set-up step or a failed request must abort the benchmark, as in
// the harness: unwrap/expect are the intended error handling here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcplexer_proto::v1::{CredentialRequest, GetConfigRequest, StatusRequest};
use mcplexer_tests::Vault;
use mcplexer_tests::bench::{
    ThreadRow, load_average, machine_cpu, met, status_kb, thread_table, ticks_to_duration,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::Channel;

/// Concurrent client counts.
const LEVELS: [usize; 3] = [1, 8, 64];
/// Scope, server and values the daemon is set up with.
const SCOPE: &str = "bench-scope";
const SERVER: &str = "bench-server";
const VALUES: [(&str, &str); 2] = [
    ("BENCH_API_TOKEN", "tok-0123456789abcdef0123456789abcdef"),
    ("BENCH_API_SECRET", "sec-fedcba9876543210fedcba9876543210"),
];
/// SSH agent protocol: request identities, and its answer.
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;

/// Which tokio runtime drives the clients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    CurrentThread,
    MultiThread,
}

impl Flavour {
    fn describe(self) -> &'static str {
        match self {
            Flavour::CurrentThread => "current-thread (one client thread for all clients)",
            Flavour::MultiThread => "multi-thread (one worker per core)",
        }
    }
}

/// One client: a connection doing one request at a time.
trait Client: Send + 'static {
    fn call(&mut self) -> impl Future<Output = ()> + Send;
}

/// A vault client on its own HTTP/2 connection.
struct VaultClient {
    client: mcplexer_proto::v1::vault_client::VaultClient<Channel>,
    request: CredentialRequest,
}

impl VaultClient {
    async fn connect(socket: &Path) -> Self {
        let channel = mcplexer_proto::connect(socket).await.expect("connect");
        Self {
            client: mcplexer_proto::vault_client(channel),
            request: CredentialRequest {
                auth_scope_id: SCOPE.into(),
                downstream_server_id: SERVER.into(),
                transport: "stdio".into(),
                tool: "bench__release".into(),
                route_rule_id: String::new(),
            },
        }
    }
}

impl Client for VaultClient {
    async fn call(&mut self) {
        let credential = self
            .client
            .get_credential(self.request.clone())
            .await
            .expect("GetCredential")
            .into_inner();
        assert_eq!(credential.values.len(), VALUES.len(), "released values");
    }
}

/// A control client: `Vault/GetConfig` on its own connection, i.e. the same
/// socket, HTTP/2, gRPC and peer-credential path as a release, without the
/// release and without its audit write.
struct ConfigClient {
    client: mcplexer_proto::v1::vault_client::VaultClient<Channel>,
}

impl ConfigClient {
    async fn connect(socket: &Path) -> Self {
        let channel = mcplexer_proto::connect(socket).await.expect("connect");
        Self {
            client: mcplexer_proto::vault_client(channel),
        }
    }
}

impl Client for ConfigClient {
    async fn call(&mut self) {
        let config = self
            .client
            .get_config(GetConfigRequest {})
            .await
            .expect("GetConfig")
            .into_inner();
        assert_eq!(config.servers.len(), 1, "configured servers");
    }
}

/// An ssh-agent client on its own Unix stream.
struct AgentClient {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl AgentClient {
    async fn connect(socket: &Path) -> Self {
        Self {
            stream: UnixStream::connect(socket)
                .await
                .expect("connect ssh-agent"),
            buf: Vec::with_capacity(1024),
        }
    }

    /// One request-identities round trip; returns the number of keys.
    async fn identities(&mut self) -> u32 {
        const REQUEST: [u8; 5] = [0, 0, 0, 1, SSH_AGENTC_REQUEST_IDENTITIES];
        self.stream.write_all(&REQUEST).await.expect("write");
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.expect("read length");
        let len = u32::from_be_bytes(len) as usize;
        assert!((5..=256 * 1024).contains(&len), "answer length {len}");
        self.buf.resize(len, 0);
        self.stream
            .read_exact(&mut self.buf)
            .await
            .expect("read body");
        assert_eq!(self.buf[0], SSH_AGENT_IDENTITIES_ANSWER, "answer type");
        u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"))
    }
}

impl Client for AgentClient {
    async fn call(&mut self) {
        self.identities().await;
    }
}

/// A foreground `ssh-agent` on a temporary socket; killed when dropped.
struct SshAgent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl SshAgent {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mcplexer-bench-ssh-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ssh-agent (install openssh-client)");
        // In the foreground it prints `SSH_AUTH_SOCK=...` once it listens.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read ssh-agent output");
        let agent = Self {
            child,
            socket,
            _dir: dir,
        };
        assert!(
            line.starts_with("SSH_AUTH_SOCK="),
            "ssh-agent did not start: {line:?}"
        );
        let key = agent._dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
            .arg(&key));
        run(Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent.socket));
        agent
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion; panics with its output unless it succeeded.
fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
}

/// Creates the server and the scope and stores its two values.
fn set_up_vault(vault: &Vault) {
    let yaml = format!(
        "auth_scopes:\n  - id: {SCOPE}\n    name: \"Bench scope\"\n    type: env\n\
         downstream_servers:\n  - id: {SERVER}\n    name: \"Bench server\"\n    transport: stdio\n    command: \"true\"\n"
    );
    let file = vault.write_file("bench.yaml", &yaml);
    vault.ctl([Path::new("apply"), Path::new("-f"), &file]).ok();
    for (key, value) in VALUES {
        vault
            .ctl_input(
                ["secret", "set", SCOPE, key],
                format!("{value}\n").as_bytes(),
            )
            .ok();
    }
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    ticks(&stat)
}

/// utime + stime of a `/proc/.../stat` line.
fn ticks(stat: &str) -> Duration {
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let t: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks_to_duration(t)
}

/// CPU time and context switches of one thread name's threads.
#[derive(Clone, Copy, Default)]
struct ThreadStat {
    cpu: Duration,
    switches: u64,
}

/// CPU time and context switches (voluntary + involuntary) of every thread
/// of `pid`, summed by thread name.
fn thread_stats(pid: u32) -> BTreeMap<String, ThreadStat> {
    let mut by_name: BTreeMap<String, ThreadStat> = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(entry.path().join("stat")),
            std::fs::read_to_string(entry.path().join("status")),
        ) else {
            continue; // the thread exited meanwhile
        };
        let name = stat[stat.find('(').expect("(") + 1..stat.rfind(')').expect(")")].to_owned();
        let switches: u64 = status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .map(|v| v.trim().parse::<u64>().expect("ctxt switches"))
            .sum();
        let slot = by_name.entry(name).or_default();
        slot.cpu += ticks(&stat);
        slot.switches += switches;
    }
    by_name
}

/// What each thread name gained from `before` to `after`.
fn thread_deltas(
    before: &BTreeMap<String, ThreadStat>,
    after: &BTreeMap<String, ThreadStat>,
) -> BTreeMap<String, ThreadStat> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let delta = ThreadStat {
                cpu: a.cpu.saturating_sub(b.cpu),
                switches: a.switches.saturating_sub(b.switches),
            };
            (name.clone(), delta)
        })
        .collect()
}

/// A `/proc/PID/status` field in kB.
/// One measured level of one system.
struct Level {
    clients: usize,
    requests: usize,
    warmup_requests: usize,
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    /// Server context switches per request, all threads.
    server_switches: f64,
    /// Server CPU µs and context switches per request, by thread name.
    threads: Vec<(String, f64, f64)>,
}

/// Drives `clients` concurrently: warm-up until `warmup` has passed, then
/// every latency of the next `window`.
async fn measure<C: Client>(
    clients: Vec<C>,
    warmup: Duration,
    window: Duration,
    server_pid: u32,
) -> Level {
    let n = clients.len();
    let start = Instant::now();
    let measure_from = start + warmup;
    let measure_until = measure_from + window;
    let mut tasks = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let (mark_tx, mut mark_rx) = tokio::sync::mpsc::channel::<()>(n);
    for mut client in clients {
        let mark_tx = mark_tx.clone();
        let mut ready_rx = ready_rx.clone();
        tasks.push(tokio::spawn(async move {
            ready_rx.wait_for(|r| *r).await.expect("start");
            let mut warm = 0usize;
            while Instant::now() < measure_from {
                client.call().await;
                warm += 1;
            }
            // Tell the driver this client's warm-up is over.
            mark_tx.send(()).await.expect("mark");
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut end = Instant::now();
            while end < measure_until {
                let t0 = Instant::now();
                client.call().await;
                end = Instant::now();
                latencies.push(u32::try_from((end - t0).as_nanos()).unwrap_or(u32::MAX));
            }
            (warm, latencies, end)
        }));
    }
    drop(mark_tx);
    ready_tx.send(true).expect("go");
    // CPU counters are read once every client has left its warm-up.
    for _ in 0..n {
        mark_rx.recv().await.expect("mark");
    }
    let server = server_pid.to_string();
    let (server0, client0) = (cpu_time(&server), cpu_time("self"));
    let threads0 = thread_stats(server_pid);
    let mut all = Vec::new();
    let mut warmup_requests = 0;
    let mut last = measure_from;
    for task in tasks {
        let (warm, latencies, end) = task.await.expect("client task");
        warmup_requests += warm;
        all.extend(latencies);
        last = last.max(end);
    }
    let (server1, client1) = (cpu_time(&server), cpu_time("self"));
    let threads1 = thread_stats(server_pid);
    let elapsed = last.saturating_duration_since(measure_from);
    all.sort_unstable();
    let requests = all.len();
    let pct = |p: f64| {
        let rank = ((p * requests as f64).ceil() as usize).clamp(1, requests);
        f64::from(all[rank - 1]) / 1000.0
    };
    let per_req = |d: Duration| d.as_secs_f64() * 1e6 / requests as f64;
    let threads = thread_deltas(&threads0, &threads1);
    let switches = |n: u64| n as f64 / requests as f64;
    Level {
        clients: n,
        requests,
        warmup_requests,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        per_sec: requests as f64 / elapsed.as_secs_f64(),
        server_cpu_us: per_req(server1 - server0),
        client_cpu_us: per_req(client1 - client0),
        server_switches: switches(threads.values().map(|t| t.switches).sum()),
        threads: threads
            .into_iter()
            .map(|(name, t)| (name, per_req(t.cpu), switches(t.switches)))
            .collect(),
    }
}

fn env_secs(name: &str, default: f64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .map(|v| v.parse::<f64>().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default);
    Duration::from_secs_f64(secs)
}

struct Results {
    vault: Vec<Level>,
    control: Vec<Level>,
    agent: Vec<Level>,
    audit_added: u64,
}

/// Connects `n` clients, one connection each, one after the other.
async fn connect_all<C, F, Fut>(n: usize, connect: F) -> Vec<C>
where
    F: Fn() -> Fut,
    Fut: Future<Output = C>,
{
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect().await);
    }
    clients
}

async fn run_all(
    vault: &Vault,
    agent: &SshAgent,
    levels: &[usize],
    warmup: Duration,
    window: Duration,
) -> Results {
    // Sanity: both servers answer as expected before anything is timed.
    let keys = AgentClient::connect(&agent.socket).await.identities().await;
    assert_eq!(keys, 1, "keys in ssh-agent");
    let mut admin = mcplexer_proto::admin_client(vault.channel().await);
    let audit_before = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .audit_records;
    let mut results = Results {
        vault: Vec::new(),
        control: Vec::new(),
        agent: Vec::new(),
        audit_added: 0,
    };
    let (socket, agent_socket) = (&vault.socket, &agent.socket);
    for &n in levels {
        let clients = connect_all(n, || AgentClient::connect(agent_socket)).await;
        let level = measure(clients, warmup, window, agent.pid()).await;
        results.agent.push(level);
        let clients = connect_all(n, || VaultClient::connect(socket)).await;
        let level = measure(clients, warmup, window, vault.pid()).await;
        results.vault.push(level);
        let clients = connect_all(n, || ConfigClient::connect(socket)).await;
        let level = measure(clients, warmup, window, vault.pid()).await;
        results.control.push(level);
    }
    let audit_after = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .audit_records;
    results.audit_added = audit_after - audit_before;
    results
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to parse.
    let flavour = match std::env::var("BENCH_RUNTIME").as_deref() {
        Err(_) | Ok("current") | Ok("") => Flavour::CurrentThread,
        Ok("multi") => Flavour::MultiThread,
        Ok(other) => panic!("BENCH_RUNTIME={other:?}: use current or multi"),
    };
    let warmup = env_secs("BENCH_WARMUP_SECS", 1.0);
    let window = env_secs("BENCH_SECS", 6.0);
    let levels: Vec<usize> = match std::env::var("BENCH_LEVELS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("BENCH_LEVELS: comma-separated counts")
            })
            .collect(),
        Err(_) => LEVELS.to_vec(),
    };

    // The 1-client latencies depend on whether the other CPU is idle: note
    // the load the run started under.
    let load_before = load_average();
    let vault = Vault::start();
    set_up_vault(&vault);
    let agent = SshAgent::start();
    let pid = vault.pid();
    let rss_idle_kb = status_kb(pid, "VmRSS");

    let runtime = match flavour {
        Flavour::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavour::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("runtime");
    let (agent_pid, self_pid) = (agent.pid().to_string(), "self");
    let ours = || cpu_time(&pid.to_string()) + cpu_time(&agent_pid) + cpu_time(self_pid);
    let (machine0, ours0) = (machine_cpu(), ours());
    let started = Instant::now();
    let results = runtime.block_on(run_all(&vault, &agent, &levels, warmup, window));
    let took = started.elapsed();
    let (machine1, ours1) = (machine_cpu(), ours());
    drop(runtime);
    let foreign = Foreign {
        cpu: (machine1.busy.saturating_sub(machine0.busy)).saturating_sub(ours1 - ours0),
        steal: machine1.steal.saturating_sub(machine0.steal),
    };

    let memory = Memory {
        idle_kb: rss_idle_kb,
        rss_kb: status_kb(pid, "VmRSS"),
        hwm_kb: status_kb(pid, "VmHWM"),
    };
    let setup = Setup {
        flavour,
        warmup,
        window,
        took,
        load_before,
    };
    let report = render(&setup, &results, &memory, &foreign);
    print!("{report}");
    if let Some(path) = std::env::var_os("BENCH_OUT") {
        std::fs::write(&path, &report).expect("write BENCH_OUT");
    }
    drop(agent);
    drop(vault);
}

struct Setup {
    flavour: Flavour,
    warmup: Duration,
    window: Duration,
    took: Duration,
    load_before: String,
}

/// CPU used during the run by processes other than the benchmark's own.
struct Foreign {
    cpu: Duration,
    steal: Duration,
}

struct Memory {
    idle_kb: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn render(setup: &Setup, results: &Results, memory: &Memory, foreign: &Foreign) -> String {
    let mut out = String::new();
    let w = &mut out;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(w, "### Credential release vs ssh-agent round trip\n").unwrap();
    writeln!(
        w,
        "Client runtime: tokio {} for every system; one connection per client, \
         one task per client, sequential requests; {cpus} CPUs. Per level and system: \
         {:.0} s warm-up, then every latency of a {:.0} s window ({:.0} s in all). \
         Load average before the run: {}.\n",
        setup.flavour.describe(),
        setup.warmup.as_secs_f64(),
        setup.window.as_secs_f64(),
        setup.took.as_secs_f64(),
        setup.load_before
    )
    .unwrap();
    writeln!(
        w,
        "| clients | system | requests | p50 µs | p99 µs | requests/s | server CPU µs/req | server ctx switches/req | client CPU µs/req |"
    )
    .unwrap();
    writeln!(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    let rows = results
        .vault
        .iter()
        .zip(&results.agent)
        .zip(&results.control);
    for ((v, a), c) in rows.clone() {
        for (name, l) in [
            ("vault GetCredential", v),
            ("ssh-agent identities", a),
            ("vault GetConfig (control)", c),
        ] {
            writeln!(
                w,
                "| {} | {name} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.2} | {:.1} |",
                l.clients,
                l.requests,
                l.p50_us,
                l.p99_us,
                l.per_sec,
                l.server_cpu_us,
                l.server_switches,
                l.client_cpu_us
            )
            .unwrap();
        }
    }
    writeln!(
        w,
        "\n| clients | vault p50 / ssh-agent p50 | vault p99 / ssh-agent p99 | vault req/s / ssh-agent req/s | GetCredential p50 / GetConfig p50 |"
    )
    .unwrap();
    writeln!(w, "|---:|---:|---:|---:|---:|").unwrap();
    for ((v, a), c) in rows.clone() {
        writeln!(
            w,
            "| {} | {:.2}× | {:.2}× | {:.3}× | {:.2}× |",
            v.clients,
            v.p50_us / a.p50_us,
            v.p99_us / a.p99_us,
            v.per_sec / a.per_sec,
            v.p50_us / c.p50_us
        )
        .unwrap();
    }

    // Where the daemon's CPU goes, per request, by thread.
    let thread_rows: Vec<ThreadRow<'_>> = rows
        .flat_map(|((v, _), c)| {
            [("GetCredential", v), ("GetConfig", c)].map(|(rpc, l)| {
                (
                    vec![l.clients.to_string(), rpc.to_owned()],
                    l.threads.as_slice(),
                )
            })
        })
        .collect();
    thread_table(
        w,
        "Daemon CPU µs / context switches per request, by thread:",
        &[("clients", "---:"), ("RPC", "---")],
        &thread_rows,
    );

    let cpus_f = cpus.max(1) as f64;
    writeln!(
        w,
        "\nOther processes used {:.1} CPU-s during the runs ({:.1}% of the machine; \
         hypervisor steal {:.1} CPU-s): {}.",
        foreign.cpu.as_secs_f64(),
        100.0 * foreign.cpu.as_secs_f64() / (setup.took.as_secs_f64() * cpus_f),
        foreign.steal.as_secs_f64(),
        if foreign.cpu.as_secs_f64() < 0.02 * setup.took.as_secs_f64() * cpus_f {
            "a quiet machine"
        } else {
            "NOT a quiet machine, rerun when nothing else runs"
        }
    )
    .unwrap();
    let mib = |kb: u64| kb as f64 / 1024.0;
    writeln!(
        w,
        "\nDaemon memory: peak RSS (VmHWM) {:.1} MiB; VmRSS {:.1} MiB after the runs, {:.1} MiB before them.",
        mib(memory.hwm_kb),
        mib(memory.rss_kb),
        mib(memory.idle_kb)
    )
    .unwrap();
    let releases: usize = results
        .vault
        .iter()
        .map(|l| l.requests + l.warmup_requests)
        .sum();
    writeln!(
        w,
        "Audit: {} records added for {releases} releases (warm-up included).",
        results.audit_added
    )
    .unwrap();

    // Targets of the issue.
    writeln!(w, "\n| target | measured | |\n|---|---|---|").unwrap();
    for (v, a) in results.vault.iter().zip(&results.agent) {
        let ratio = v.p50_us / a.p50_us;
        writeln!(
            w,
            "| p50 within 3× of ssh-agent, {} client(s) | {ratio:.2}× ({:.1} vs {:.1} µs) | {} |",
            v.clients,
            v.p50_us,
            a.p50_us,
            met(ratio <= 3.0)
        )
        .unwrap();
    }
    let best = results
        .vault
        .iter()
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    if let Some(b) = best {
        writeln!(
            w,
            "| ≥ 10,000 releases/s | {:.0}/s (best level: {} clients) | {} |",
            b.per_sec,
            b.clients,
            met(b.per_sec >= 10_000.0)
        )
        .unwrap();
    }
    writeln!(
        w,
        "| peak RSS < 32 MiB | {:.1} MiB | {} |",
        mib(memory.hwm_kb),
        met(memory.hwm_kb < 32 * 1024)
    )
    .unwrap();
    out
}
