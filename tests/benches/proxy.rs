//! Benchmark: a `tools/call` of `echo` on the real `server-everything`
//! through `mcplexer-proxy` (credential fetched from the vault per call)
//! against the same call made directly to the same server, measured in the
//! same run by the same client code.
//!
//! Starts the real `mcplexer-vaultd` (through the test harness, as root, in
//! `--user` mode) with an env scope holding one value, a stdio server running
//! server-everything (`tool_namespace: ev`, rule `ev__*` with the scope) and,
//! as a control, the same server without a scope (`nc`, rule `nc__*`: the
//! same proxy path without the per-call vault round trip; its child gets the
//! same variable from the server's plain `env`). One minimal MCP stdio client
//! (newline-delimited JSON-RPC over a child's stdin/stdout: `initialize`,
//! `notifications/initialized`, then sequential `tools/call`s matched by id)
//! drives three sessions:
//!
//! * **direct** (the baseline): `node …/dist/index.js stdio` spawned by the
//!   client with the variable the proxy would inject, calling `echo`;
//! * **proxy**: `mcplexer-proxy --socket <vault socket> stdio`, calling
//!   `ev__echo` (each call is a real, audited release, then the forward);
//! * **proxy, no credential** (control): the same proxy process, `nc__echo`;
//! * **prompts/get** of `simple-prompt` and **resources/read** of
//!   `demo://resource/dynamic/text/1` (a template's URI), each direct and
//!   through the proxy (`ev__simple-prompt`; `ev+<uri>`, since both servers
//!   of the run have that URI), each a release
//!   and an audit record through the proxy like a call.
//!
//! As a component it also times `Vault/GetCredential` made by this process
//! itself, as the proxy makes it. After a warm-up of each, blocks of calls
//! of the systems alternate; the report gives p50, p99 and calls/s of each,
//! the added latency (proxy − direct), the CPU time and thread runs per call
//! of client, proxy, vault and server (from /proc/PID/task/*/schedstat, by
//! thread name for the proxy and the vault), the audit records added, and
//! how much CPU other processes took meanwhile (a busy machine says so).
//!
//! A second phase applies five stdio servers (server-everything each, with
//! namespaces ev1..ev5 and a rule each), starts a fresh proxy, makes it start
//! all five (one call to each, then `tools/list` and more calls), and reads
//! the proxy's VmHWM and VmRSS from /proc/PID/status.
//!
//! Run: `cargo build --release --workspace && cargo bench -p mcplexer-tests --bench proxy`.
//! Needs the MCP peers (`bash tests/peers/install.sh`) and Node on PATH.
//! Environment: `BENCH_OUT=FILE` also writes the report there;
//! `BENCH_CALLS` (default 10000) measured calls per system,
//! `BENCH_WARMUP_CALLS` (default 500) warm-up calls per system,
//! `BENCH_BLOCK` (default 1000) calls per alternating block.

// A failed set-up step or a failed call must abort the benchmark, as in the
// harness: unwrap/expect are the intended error handling here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mcplexer_proto::v1::{CredentialRequest, StatusRequest};
use mcplexer_tests::bench::{ThreadRow, load_average, machine_cpu, met, status_kb, thread_table};
use mcplexer_tests::peers::{node, server_everything};
use mcplexer_tests::{Vault, bin};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The protocol version the client asks for.
const PROTOCOL: &str = "2025-11-25";
/// The env scope, its one variable and value.
const SCOPE: &str = "bench-ev";
const TOKEN_NAME: &str = "BENCH_EV_TOKEN";
const TOKEN_VALUE: &str = "tok-0123456789abcdef0123456789abcdef";
/// The message every call echoes.
const MESSAGE: &str = "hello through mcplexer";
/// How long one response may take before the benchmark gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Downstreams of the memory phase.
const DOWNSTREAMS: usize = 5;
/// Round-robin rounds over the five after each was started once.
const MEMORY_ROUNDS: usize = 100;

/// The systems of the latency phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Direct,
    Proxy,
    Control,
    Release,
    DirectPrompt,
    ProxyPrompt,
    DirectRead,
    ProxyRead,
}

const SYSTEMS: [System; 8] = [
    System::Direct,
    System::Proxy,
    System::Control,
    System::Release,
    System::DirectPrompt,
    System::ProxyPrompt,
    System::DirectRead,
    System::ProxyRead,
];

/// The prompt and the resource of the prompts/get and resources/read rows.
const PROMPT: &str = "simple-prompt";
const RESOURCE: &str = "demo://resource/dynamic/text/1";

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Direct => "direct (baseline)",
            System::Proxy => "proxy, credential per call",
            System::Control => "proxy, no credential (control)",
            System::Release => "vault GetCredential alone (component)",
            System::DirectPrompt => "prompts/get direct",
            System::ProxyPrompt => "prompts/get through the proxy, credential per request",
            System::DirectRead => "resources/read direct",
            System::ProxyRead => "resources/read through the proxy, credential per request",
        }
    }
}

/// A minimal MCP client over a child's stdio: newline-delimited JSON-RPC,
/// one request at a time, responses matched by id. The same code drives
/// server-everything directly and the proxy.
struct McpClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    next_id: u64,
    /// Where the child's stderr goes; shown when a call fails.
    log: PathBuf,
}

impl McpClient {
    /// Spawns `program args` in `cwd` with exactly `env` (nothing
    /// inherited), stderr to `log`, and initialises the session.
    async fn start(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        cwd: &Path,
        log: PathBuf,
    ) -> Self {
        let stderr = std::fs::File::create(&log).expect("create log");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let mut client = Self {
            stdin: child.stdin.take().expect("stdin"),
            stdout: BufReader::new(child.stdout.take().expect("stdout")),
            child,
            line: Vec::with_capacity(4096),
            next_id: 1,
            log,
        };
        let init = client
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "mcplexer-bench", "version": "0"},
                }),
            )
            .await;
        assert_eq!(init["protocolVersion"], PROTOCOL, "{init}");
        client
            .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        client
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("child running")
    }

    async fn send(&mut self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            self.fail(&format!("write: {e}"));
        }
    }

    /// Sends a request and returns its `result`; panics on an error.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        match tokio::time::timeout(CALL_TIMEOUT, self.response(id)).await {
            Ok(mut message) => {
                if let Some(error) = message.get("error") {
                    self.fail(&format!("{method} failed: {error}"));
                }
                message
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or(Value::Null)
            }
            Err(_) => self.fail(&format!("{method}: no response within {CALL_TIMEOUT:?}")),
        }
    }

    /// Reads until the response to `id`; ignores notifications and answers
    /// the peer's own requests (no client capability is declared).
    async fn response(&mut self, id: u64) -> Value {
        loop {
            self.line.clear();
            match self.stdout.read_until(b'\n', &mut self.line).await {
                Ok(0) => self.fail("the peer closed its stdout"),
                Ok(_) => {}
                Err(e) => self.fail(&format!("read: {e}")),
            }
            let message: Value = match serde_json::from_slice(&self.line) {
                Ok(m) => m,
                Err(e) => self.fail(&format!(
                    "not JSON ({e}): {}",
                    String::from_utf8_lossy(&self.line)
                )),
            };
            match (message.get("method"), message.get("id")) {
                (None, Some(got)) if got.as_u64() == Some(id) => return message,
                (Some(method), Some(peer_id)) => {
                    let reply = if method == "ping" {
                        json!({"jsonrpc": "2.0", "id": peer_id, "result": {}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": peer_id, "error": {"code": -32601, "message": "not supported"}})
                    };
                    self.send(&reply).await;
                }
                _ => {} // a notification, or a stale response
            }
        }
    }

    /// One `tools/call` of an echo tool; checks the echoed text.
    async fn echo(&mut self, tool: &str) {
        let result = self
            .request(
                "tools/call",
                json!({"name": tool, "arguments": {"message": MESSAGE}}),
            )
            .await;
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
        if is_error || text.strip_prefix("Echo: ") != Some(MESSAGE) {
            self.fail(&format!("unexpected echo result: {result}"));
        }
    }

    /// One `prompts/get` of a prompt without arguments; checks it has a
    /// message.
    async fn prompt(&mut self, name: &str) {
        let result = self.request("prompts/get", json!({"name": name})).await;
        if result["messages"].as_array().is_none_or(Vec::is_empty) {
            self.fail(&format!("unexpected prompts/get result: {result}"));
        }
    }

    /// One `resources/read`; checks the contents name the URI read.
    async fn read(&mut self, uri: &str) {
        let result = self.request("resources/read", json!({"uri": uri})).await;
        if result["contents"][0]["uri"] != uri {
            self.fail(&format!("unexpected resources/read result: {result}"));
        }
    }

    /// Panics with `what` and the end of the child's stderr.
    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(4000)..];
        panic!("{what}\n--- {}:\n{tail}", self.log.display())
    }

    /// Closes stdin (a proxy then stops its children and delivers its audit
    /// records) and reaps the child; kills it after 20 s.
    async fn close(self) -> ExitStatus {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                let _ = child.kill().await;
                child.wait().await.expect("wait")
            }
        }
    }
}

/// The environment of the proxy, and of the direct server before the token:
/// PATH (with node) and HOME, both on the proxy's allowlist for children.
fn base_env() -> Vec<(&'static str, String)> {
    let node_dir = node().parent().expect("node dir").display().to_string();
    vec![
        ("PATH", format!("{node_dir}:/usr/bin:/bin")),
        ("HOME", "/".into()),
    ]
}

/// Spawns `mcplexer-proxy --socket SOCKET stdio` as a client would.
async fn start_proxy(vault: &Vault, log: &str) -> McpClient {
    let env = base_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = vec![
        "--socket".to_owned(),
        vault.socket.display().to_string(),
        "stdio".to_owned(),
    ];
    McpClient::start(
        &bin("mcplexer-proxy"),
        &args,
        &env,
        vault.root.path(),
        vault.root.path().join(log),
    )
    .await
}

/// A stdio server entry running server-everything.
fn server_yaml(id: &str, namespace: &str, env: Option<(&str, &str)>) -> String {
    let (program, args) = server_everything();
    let args = serde_json::to_string(&args).unwrap();
    let mut yaml = format!(
        "  - id: {id}\n    name: \"{id}\"\n    transport: stdio\n    command: \"{}\"\n    args: {args}\n    tool_namespace: {namespace}\n",
        program.display()
    );
    if let Some((k, v)) = env {
        writeln!(yaml, "    env: {{{k}: \"{v}\"}}").unwrap();
    }
    yaml
}

fn rule_yaml(name: &str, namespace: &str, server: &str, scope: Option<&str>) -> String {
    let mut yaml = format!(
        "  - name: {name}\n    tool_match: [\"{namespace}__*\"]\n    downstream_server_id: {server}\n"
    );
    if let Some(scope) = scope {
        writeln!(yaml, "    auth_scope_id: {scope}").unwrap();
    }
    yaml
}

fn scope_yaml() -> String {
    format!("auth_scopes:\n  - id: {SCOPE}\n    name: \"Bench scope\"\n    type: env\n")
}

/// Phase 1: the scope, `everything` (ev, with the scope) and `nocred` (nc,
/// no scope, the same variable in its plain env).
fn latency_config() -> String {
    let mut yaml = scope_yaml();
    yaml.push_str("downstream_servers:\n");
    yaml.push_str(&server_yaml("everything", "ev", None));
    yaml.push_str(&server_yaml(
        "nocred",
        "nc",
        Some((TOKEN_NAME, TOKEN_VALUE)),
    ));
    yaml.push_str("route_rules:\n");
    yaml.push_str(&rule_yaml("everything", "ev", "everything", Some(SCOPE)));
    yaml.push_str(&rule_yaml("nocred", "nc", "nocred", None));
    yaml
}

/// Phase 2: the scope and five servers ev1..ev5, each with its rule (an
/// apply prunes phase 1's servers and rules).
fn memory_config() -> String {
    let mut yaml = scope_yaml();
    yaml.push_str("downstream_servers:\n");
    for i in 1..=DOWNSTREAMS {
        yaml.push_str(&server_yaml(
            &format!("everything{i}"),
            &format!("ev{i}"),
            None,
        ));
    }
    yaml.push_str("route_rules:\n");
    for i in 1..=DOWNSTREAMS {
        yaml.push_str(&rule_yaml(
            &format!("everything{i}"),
            &format!("ev{i}"),
            &format!("everything{i}"),
            Some(SCOPE),
        ));
    }
    yaml
}

fn apply(vault: &Vault, name: &str, yaml: &str) {
    let file = vault.write_file(name, yaml);
    vault.ctl([Path::new("apply"), Path::new("-f"), &file]).ok();
}

// ---- /proc helpers (the /proc/stat ones as in benches/release.rs) ----

/// CPU time and scheduling count of a process.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    /// Times its threads were scheduled in: about one per wake-up.
    runs: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu: self.cpu + o.cpu,
            runs: self.runs + o.runs,
        }
    }
}

impl std::ops::Sub for Usage {
    type Output = Usage;
    fn sub(self, o: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(o.cpu),
            runs: self.runs.saturating_sub(o.runs),
        }
    }
}

/// CPU time (ns precision, unlike the tick counts of /proc/PID/stat) and
/// run count of every live thread of `pid`, from
/// /proc/PID/task/*/{schedstat,comm}, summed by thread name; also the
/// thread ids seen.
fn usage(pid: &str) -> (BTreeMap<String, Usage>, Vec<u32>) {
    let mut by_name: BTreeMap<String, Usage> = BTreeMap::new();
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let (Ok(text), Ok(name)) = (
            std::fs::read_to_string(entry.path().join("schedstat")),
            std::fs::read_to_string(entry.path().join("comm")),
        ) else {
            continue; // the thread exited meanwhile
        };
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().expect("schedstat"));
        let (Some(ns), Some(_wait), Some(runs)) = (fields.next(), fields.next(), fields.next())
        else {
            panic!("schedstat format: {text:?}");
        };
        let slot = by_name.entry(name.trim_end().to_owned()).or_default();
        *slot = *slot
            + Usage {
                cpu: Duration::from_nanos(ns),
                runs,
            };
        if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
            tids.push(tid);
        }
    }
    (by_name, tids)
}

fn total(by_name: &BTreeMap<String, Usage>) -> Usage {
    by_name.values().fold(Usage::default(), |a, &b| a + b)
}

/// `after − before`, name by name.
fn delta(
    before: &BTreeMap<String, Usage>,
    after: &BTreeMap<String, Usage>,
) -> BTreeMap<String, Usage> {
    after
        .iter()
        .map(|(name, &a)| {
            (
                name.clone(),
                a - before.get(name).copied().unwrap_or_default(),
            )
        })
        .collect()
}

/// Adds `more` into `into`, name by name.
fn accumulate(into: &mut BTreeMap<String, Usage>, more: BTreeMap<String, Usage>) {
    for (name, u) in more {
        let slot = into.entry(name).or_default();
        *slot = *slot + u;
    }
}

/// The processes whose parent is `pid`, with their command names.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push((child, stat[open + 1..close].to_owned()));
        }
    }
    out.sort_unstable();
    out
}

// ---- the latency phase ----

/// CPU use of every process of the run at one instant.
#[derive(Clone)]
struct Cpu {
    client: Usage,
    /// The proxy's and the vault's threads, by name.
    proxy: BTreeMap<String, Usage>,
    vault: BTreeMap<String, Usage>,
    /// server-everything: the direct child, and the proxy's children.
    direct_server: Usage,
    proxied_servers: Usage,
    machine_busy: Duration,
    steal: Duration,
    /// Every thread id seen, to notice threads that exit mid-block (their
    /// CPU time would be lost).
    tids: Vec<u32>,
}

impl Cpu {
    fn ours(&self) -> Usage {
        self.client
            + total(&self.proxy)
            + total(&self.vault)
            + self.direct_server
            + self.proxied_servers
    }
}

/// The pids CPU is read from.
struct Pids {
    vault: u32,
    proxy: u32,
    direct: u32,
    proxied: Vec<u32>,
}

impl Pids {
    fn cpu(&self) -> Cpu {
        let machine = machine_cpu();
        let mut tids = Vec::new();
        let mut read = |pid: &str| {
            let (u, t) = usage(pid);
            tids.extend(t);
            u
        };
        let proxy = read(&self.proxy.to_string());
        let vault = read(&self.vault.to_string());
        let direct_server = total(&read(&self.direct.to_string()));
        let proxied_servers = self
            .proxied
            .iter()
            .map(|p| total(&read(&p.to_string())))
            .fold(Usage::default(), |a, b| a + b);
        let client = total(&read("self"));
        tids.sort_unstable();
        Cpu {
            client,
            proxy,
            vault,
            direct_server,
            proxied_servers,
            machine_busy: machine.busy,
            steal: machine.steal,
            tids,
        }
    }
}

/// What one system accumulated over its blocks.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    warmup: usize,
    wall: Duration,
    client: Usage,
    proxy: BTreeMap<String, Usage>,
    vault: BTreeMap<String, Usage>,
    server: Usage,
}

/// One measured system, summarised.
struct Row {
    system: System,
    calls: usize,
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
    client_us: f64,
    proxy_us: f64,
    vault_us: f64,
    server_us: Option<f64>,
    /// Threads scheduled in per call, all processes of the run.
    runs: f64,
    /// CPU µs and thread runs per call of the proxy's and the vault's
    /// threads, by `proxy: NAME` / `vault: NAME`.
    threads: Vec<(String, f64, f64)>,
}

impl Tally {
    fn row(mut self, system: System) -> Row {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            f64::from(self.latencies[rank - 1]) / 1000.0
        };
        let per_call = |u: Usage| u.cpu.as_secs_f64() * 1e6 / n as f64;
        let runs = |u: Usage| u.runs as f64 / n as f64;
        let all = self.client + total(&self.proxy) + total(&self.vault) + self.server;
        let threads = (self.proxy.iter().map(|(k, &u)| (format!("proxy: {k}"), u)))
            .chain(self.vault.iter().map(|(k, &u)| (format!("vault: {k}"), u)))
            .map(|(k, u)| (k, per_call(u), runs(u)))
            .collect();
        Row {
            system,
            calls: n,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            per_sec: n as f64 / self.wall.as_secs_f64(),
            client_us: per_call(self.client),
            proxy_us: per_call(total(&self.proxy)),
            vault_us: per_call(total(&self.vault)),
            server_us: (system != System::Release).then(|| per_call(self.server)),
            runs: runs(all),
            threads,
        }
    }
}

/// The sessions of the latency phase.
struct Sessions {
    direct: McpClient,
    proxy: McpClient,
    vault: mcplexer_proto::v1::vault_client::VaultClient<tonic::transport::Channel>,
    release: CredentialRequest,
}

impl Sessions {
    async fn call(&mut self, system: System) {
        match system {
            System::Direct => self.direct.echo("echo").await,
            System::Proxy => self.proxy.echo("ev__echo").await,
            System::Control => self.proxy.echo("nc__echo").await,
            System::DirectPrompt => self.direct.prompt(PROMPT).await,
            System::ProxyPrompt => self.proxy.prompt(&format!("ev__{PROMPT}")).await,
            System::DirectRead => self.direct.read(RESOURCE).await,
            // Both servers of the run have this URI: the proxy exposes
            // each server's under its namespace.
            System::ProxyRead => self.proxy.read(&format!("ev+{RESOURCE}")).await,
            System::Release => {
                let credential = self
                    .vault
                    .get_credential(self.release.clone())
                    .await
                    .expect("GetCredential")
                    .into_inner();
                assert_eq!(credential.values.len(), 1, "released values");
            }
        }
    }
}

struct Latency {
    rows: Vec<Row>,
    took: Duration,
    foreign: Duration,
    steal: Duration,
    /// Calls made through the proxy, warm-up included.
    proxied_with_credential: usize,
    proxied_without: usize,
    releases_direct: usize,
    audit_added: u64,
    /// The phase-1 proxy's memory and children.
    proxy_hwm_kb: u64,
    proxy_rss_kb: u64,
    proxy_children: usize,
    proxy_exit: ExitStatus,
    /// Threads that exited during a block: their CPU time is missing.
    exited_threads: usize,
}

async fn latency_phase(vault: &Vault, warmup: usize, calls: usize, block: usize) -> Latency {
    let mut admin = mcplexer_proto::admin_client(vault.channel().await);

    let (program, args) = server_everything();
    let mut env = base_env();
    env.push((TOKEN_NAME, TOKEN_VALUE.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let direct = McpClient::start(
        &program,
        &args,
        &env,
        vault.root.path(),
        vault.root.path().join("direct.log"),
    )
    .await;
    let mut proxy = start_proxy(vault, "proxy.log").await;
    // The proxy lists resources and templates once, to know where a URI
    // leads; each listing of a server with a scope is a release. Done
    // before counting, so that the count below is of requests only.
    for method in ["resources/list", "resources/templates/list"] {
        proxy.request(method, json!({})).await;
    }
    let audit_before = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .audit_records;
    let mut s = Sessions {
        direct,
        proxy,
        vault: mcplexer_proto::vault_client(vault.channel().await),
        release: CredentialRequest {
            auth_scope_id: SCOPE.into(),
            downstream_server_id: "everything".into(),
            transport: "stdio".into(),
            tool: "ev__echo".into(),
            route_rule_id: "everything".into(),
        },
    };

    let mut tallies: Vec<Tally> = SYSTEMS.iter().map(|_| Tally::default()).collect();
    // Warm-up: starts the proxy's two children and warms every path.
    for (i, &system) in SYSTEMS.iter().enumerate() {
        for _ in 0..warmup {
            s.call(system).await;
        }
        tallies[i].warmup = warmup;
    }
    let proxied: Vec<u32> = children_of(s.proxy.pid()).iter().map(|c| c.0).collect();
    assert_eq!(proxied.len(), 2, "the proxy's downstream children");
    let pids = Pids {
        vault: vault.pid(),
        proxy: s.proxy.pid(),
        direct: s.direct.pid(),
        proxied,
    };

    let started = Instant::now();
    let first = pids.cpu();
    let mut exited_threads = 0;
    let mut done = 0;
    while done < calls {
        let n = block.min(calls - done);
        for (i, &system) in SYSTEMS.iter().enumerate() {
            let tally = &mut tallies[i];
            let c0 = pids.cpu();
            let t0 = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                s.call(system).await;
                let ns = t.elapsed().as_nanos();
                tally.latencies.push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
            tally.wall += t0.elapsed();
            let c1 = pids.cpu();
            tally.client = tally.client + (c1.client - c0.client);
            accumulate(&mut tally.proxy, delta(&c0.proxy, &c1.proxy));
            accumulate(&mut tally.vault, delta(&c0.vault, &c1.vault));
            tally.server = tally.server
                + match system {
                    System::Direct | System::DirectPrompt | System::DirectRead => {
                        c1.direct_server - c0.direct_server
                    }
                    _ => c1.proxied_servers - c0.proxied_servers,
                };
            exited_threads += c0
                .tids
                .iter()
                .filter(|t| c1.tids.binary_search(t).is_err())
                .count();
        }
        done += n;
    }
    let last = pids.cpu();
    let took = started.elapsed();
    let foreign = (last.machine_busy.saturating_sub(first.machine_busy))
        .saturating_sub((last.ours() - first.ours()).cpu);
    let steal = last.steal.saturating_sub(first.steal);

    let proxy_pid = s.proxy.pid();
    let proxy_hwm_kb = status_kb(proxy_pid, "VmHWM");
    let proxy_rss_kb = status_kb(proxy_pid, "VmRSS");
    let proxy_children = children_of(proxy_pid).len();
    let Sessions { direct, proxy, .. } = s;
    direct.close().await;
    // The proxy delivers its queued audit records before it exits.
    let proxy_exit = proxy.close().await;
    let audit_after = admin
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .audit_records;

    let count = |i: usize| tallies[i].warmup + tallies[i].latencies.len();
    // Every request through the proxy with a scope is a release and a
    // call record: the echo, the prompt and the read.
    let (with, without, releases) = (count(1) + count(5) + count(7), count(2), count(3));
    Latency {
        rows: SYSTEMS
            .iter()
            .zip(tallies)
            .map(|(&system, t)| t.row(system))
            .collect(),
        took,
        foreign,
        steal,
        proxied_with_credential: with,
        proxied_without: without,
        releases_direct: releases,
        audit_added: audit_after - audit_before,
        proxy_hwm_kb,
        proxy_rss_kb,
        proxy_children,
        proxy_exit,
        exited_threads,
    }
}

// ---- the memory phase ----

struct MemoryPhase {
    idle_rss_kb: u64,
    hwm_kb: u64,
    rss_kb: u64,
    children: Vec<(u32, String)>,
    children_rss_kb: u64,
    tools: usize,
    calls: usize,
    exit: ExitStatus,
}

async fn memory_phase(vault: &Vault) -> MemoryPhase {
    apply(vault, "memory.yaml", &memory_config());
    let mut proxy = start_proxy(vault, "proxy-memory.log").await;
    let pid = proxy.pid();
    let idle_rss_kb = status_kb(pid, "VmRSS");
    // One call to each starts all five, one after the other.
    let mut calls = 0;
    for i in 1..=DOWNSTREAMS {
        proxy.echo(&format!("ev{i}__echo")).await;
        calls += 1;
    }
    // What a client does next: list the tools, then use them.
    let listed = proxy.request("tools/list", json!({})).await;
    let tools = listed["tools"].as_array().map_or(0, Vec::len);
    for _ in 0..MEMORY_ROUNDS {
        for i in 1..=DOWNSTREAMS {
            proxy.echo(&format!("ev{i}__echo")).await;
            calls += 1;
        }
    }
    let hwm_kb = status_kb(pid, "VmHWM");
    let rss_kb = status_kb(pid, "VmRSS");
    let children = children_of(pid);
    let children_rss_kb = children.iter().map(|(p, _)| status_kb(*p, "VmRSS")).sum();
    let exit = proxy.close().await;
    MemoryPhase {
        idle_rss_kb,
        hwm_kb,
        rss_kb,
        children,
        children_rss_kb,
        tools,
        calls,
        exit,
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default)
        .max(1)
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to parse.
    let calls = env_count("BENCH_CALLS", 10_000);
    let warmup = env_count("BENCH_WARMUP_CALLS", 500);
    let block = env_count("BENCH_BLOCK", 1_000);

    let load_before = load_average();
    let vault = Vault::start();
    apply(&vault, "latency.yaml", &latency_config());
    vault
        .ctl_input(
            ["secret", "set", SCOPE, TOKEN_NAME],
            format!("{TOKEN_VALUE}\n").as_bytes(),
        )
        .ok();

    // The same client runtime as benches/release.rs: one thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let latency = runtime.block_on(latency_phase(&vault, warmup, calls, block));
    let memory = runtime.block_on(memory_phase(&vault));
    let took = started.elapsed();
    drop(runtime);

    let setup = Setup {
        calls,
        warmup,
        block,
        took,
        load_before,
    };
    let report = render(&setup, &latency, &memory);
    print!("{report}");
    if let Some(path) = std::env::var_os("BENCH_OUT") {
        std::fs::write(&path, &report).expect("write BENCH_OUT");
    }
    drop(vault);
}

struct Setup {
    calls: usize,
    warmup: usize,
    block: usize,
    took: Duration,
    load_before: String,
}

fn render(setup: &Setup, l: &Latency, m: &MemoryPhase) -> String {
    let mut out = String::new();
    let w = &mut out;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mib = |kb: u64| kb as f64 / 1024.0;
    writeln!(
        w,
        "### A tool call through the proxy vs the same call direct\n"
    )
    .unwrap();
    writeln!(
        w,
        "`tools/call` of `echo` (message {:?}) on server-everything; one MCP stdio client \
         (tokio current-thread), sequential calls; {cpus} CPUs. {} warm-up calls per system, \
         then {} measured calls per system in alternating blocks of {} \
         ({:.1} s measured, {:.0} s in all with the memory phase). \
         Direct: the client spawns `node …/dist/index.js stdio` with {TOKEN_NAME} set. \
         Proxy: the client spawns `mcplexer-proxy --socket <vault socket> stdio` and calls \
         `ev__echo`; each call is a GetCredential release, then the forward, then an \
         audit record sent asynchronously. Control: the same proxy, `nc__echo`, a rule \
         without a scope (no vault round trip; same variable from the server's env). \
         Component: GetCredential from the client process itself. CPU is per process \
         from /proc/PID/task/*/schedstat; server = server-everything. \
         Load average before the run: {}.\n",
        MESSAGE,
        setup.warmup,
        setup.calls,
        setup.block,
        l.took.as_secs_f64(),
        setup.took.as_secs_f64(),
        setup.load_before
    )
    .unwrap();
    writeln!(
        w,
        "| system | calls | p50 µs | p99 µs | calls/s | client CPU µs/call | proxy CPU µs/call | vault CPU µs/call | server CPU µs/call | all CPU µs/call | thread runs/call |"
    )
    .unwrap();
    writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    for r in &l.rows {
        let server = r.server_us.map_or("–".to_owned(), |s| format!("{s:.1}"));
        let all = r.client_us + r.proxy_us + r.vault_us + r.server_us.unwrap_or(0.0);
        writeln!(
            w,
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {server} | {all:.1} | {:.2} |",
            r.system.name(),
            r.calls,
            r.p50_us,
            r.p99_us,
            r.per_sec,
            r.client_us,
            r.proxy_us,
            r.vault_us,
            r.runs
        )
        .unwrap();
    }
    let row = |s: System| l.rows.iter().find(|r| r.system == s).expect("row");
    let (direct, proxy, control, release) = (
        row(System::Direct),
        row(System::Proxy),
        row(System::Control),
        row(System::Release),
    );
    writeln!(w, "\n| difference | p50 µs | p99 µs |\n|---|---:|---:|").unwrap();
    for (name, a, b) in [
        ("added by the proxy (proxy − direct)", proxy, direct),
        (
            "of which without the credential fetch (control − direct)",
            control,
            direct,
        ),
        (
            "of which the credential fetch (proxy − control)",
            proxy,
            control,
        ),
    ] {
        writeln!(
            w,
            "| {name} | {:+.1} | {:+.1} |",
            a.p50_us - b.p50_us,
            a.p99_us - b.p99_us
        )
        .unwrap();
    }
    writeln!(
        w,
        "| for comparison: one GetCredential from this client | {:.1} | {:.1} |",
        release.p50_us, release.p99_us
    )
    .unwrap();
    for (name, a, b) in [
        (
            "prompts/get: added by the proxy",
            row(System::ProxyPrompt),
            row(System::DirectPrompt),
        ),
        (
            "resources/read: added by the proxy",
            row(System::ProxyRead),
            row(System::DirectRead),
        ),
    ] {
        writeln!(
            w,
            "| {name} | {:+.1} | {:+.1} |",
            a.p50_us - b.p50_us,
            a.p99_us - b.p99_us
        )
        .unwrap();
    }

    // Where the proxy's and the vault's CPU goes, by thread name.
    let thread_rows: Vec<ThreadRow<'_>> = l
        .rows
        .iter()
        .map(|r| (vec![r.system.name().to_owned()], r.threads.as_slice()))
        .collect();
    thread_table(
        w,
        "Proxy and vault CPU µs / thread runs per call, by thread name:",
        &[("system", "---")],
        &thread_rows,
    );

    let cpus_f = cpus.max(1) as f64;
    let measured = l.took.as_secs_f64();
    writeln!(
        w,
        "\nOther processes used {:.2} CPU-s during the measured blocks ({:.1}% of the machine; \
         hypervisor steal {:.2} CPU-s): {}.",
        l.foreign.as_secs_f64(),
        100.0 * l.foreign.as_secs_f64() / (measured * cpus_f),
        l.steal.as_secs_f64(),
        if l.foreign.as_secs_f64() < 0.02 * measured * cpus_f {
            "a quiet machine"
        } else {
            "NOT a quiet machine, rerun when nothing else runs"
        }
    )
    .unwrap();
    if l.exited_threads > 0 {
        writeln!(
            w,
            "{} thread(s) exited during a block: their CPU time is missing from the tables.",
            l.exited_threads
        )
        .unwrap();
    }
    let expected = 2 * l.proxied_with_credential + l.proxied_without + l.releases_direct;
    writeln!(
        w,
        "Audit: {} records added; expected {expected} = {} proxied calls with a credential \
         (a release and a call record each) + {} without (a call record each) + {} \
         GetCredential calls of the component row (warm-up included): {}.",
        l.audit_added,
        l.proxied_with_credential,
        l.proxied_without,
        l.releases_direct,
        if l.audit_added == expected as u64 {
            "equal"
        } else {
            "NOT equal"
        }
    )
    .unwrap();
    writeln!(
        w,
        "Latency-phase proxy: VmHWM {:.1} MiB, VmRSS {:.1} MiB with {} downstream children; it ended with {}.",
        mib(l.proxy_hwm_kb),
        mib(l.proxy_rss_kb),
        l.proxy_children,
        l.proxy_exit
    )
    .unwrap();

    let names: Vec<&str> = m.children.iter().map(|(_, n)| n.as_str()).collect();
    writeln!(
        w,
        "\nMemory phase: a fresh proxy with {DOWNSTREAMS} stdio downstreams (server-everything, \
         namespaces ev1..ev{DOWNSTREAMS}, one rule each); one call to each, `tools/list` \
         ({} tools), then {MEMORY_ROUNDS} round-robin rounds ({} calls in all).\n",
        m.tools, m.calls
    )
    .unwrap();
    writeln!(w, "| proxy memory | MiB |\n|---|---:|").unwrap();
    writeln!(
        w,
        "| VmRSS after initialize, no downstream yet | {:.1} |",
        mib(m.idle_rss_kb)
    )
    .unwrap();
    writeln!(
        w,
        "| VmHWM (peak) with {} downstreams | {:.1} |",
        m.children.len(),
        mib(m.hwm_kb)
    )
    .unwrap();
    writeln!(
        w,
        "| VmRSS with {} downstreams | {:.1} |",
        m.children.len(),
        mib(m.rss_kb)
    )
    .unwrap();
    writeln!(
        w,
        "\nDownstream children of the proxy: {} ({}), together VmRSS {:.1} MiB (not the proxy's). The proxy ended with {}.",
        m.children.len(),
        names.join(", "),
        mib(m.children_rss_kb),
        m.exit
    )
    .unwrap();

    let added = proxy.p50_us - direct.p50_us;
    writeln!(w, "\n| target | measured | |\n|---|---|---|").unwrap();
    writeln!(
        w,
        "| added p50 ≤ 250 µs | {added:.1} µs ({:.1} vs {:.1} µs) | {} |",
        proxy.p50_us,
        direct.p50_us,
        met(added <= 250.0)
    )
    .unwrap();
    writeln!(
        w,
        "| proxy RSS < 32 MiB with {DOWNSTREAMS} downstreams | VmHWM {:.1} MiB, {} children | {} |",
        mib(m.hwm_kb),
        m.children.len(),
        met(m.hwm_kb < 32 * 1024 && m.children.len() == DOWNSTREAMS)
    )
    .unwrap();
    out
}
