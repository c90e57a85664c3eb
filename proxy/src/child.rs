//! A downstream MCP server over stdio: one child process per (server, auth
//! scope), spawned without a shell from a cleared environment plus an
//! allowlist, the server's declared env and the scope's values; initialised
//! once, then shared by every call routed to it.
//!
//! Trust: the child is as trusted as its configured command. It sees only
//! the variables given here; its stdout is parsed as MCP, its stderr goes to
//! ours.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use mcplexer_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use crate::downstream::{
    Answer, BoxFuture, Call, Downstream, DownstreamError, Era, Event, Hello, Inbound, Lists,
    STATELESS_PROTOCOL, ask, call_timeout, cancelled, from_stateless, outcome, sort,
};
use crate::restart::Ending;
use crate::vault::Released;

/// Variables of the proxy's own environment a child inherits; nothing else
/// does.
pub const ENV_ALLOWLIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// The longest line a child may write (16 MiB); a longer one ends it.
const MAX_LINE: usize = 16 << 20;

/// How long one message may take to go into a child's stdin. A child that
/// stops reading for this long is stuck: it is killed, since a partial
/// message may be in the pipe.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new child may take to answer the `server/discover` probe;
/// a server that does not answer in time is taken to speak the session
/// protocol.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests to the client one child may have waiting at once; past this,
/// its requests are refused.
const MAX_ASKS: usize = 16;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running stdio downstream.
pub struct StdioDownstream {
    /// Its server id.
    pub server_id: String,
    /// The auth scope whose values it was started with.
    pub scope: Option<String>,
    /// The credential version it was started with (0: no credential).
    pub version: u64,
    /// The server as configured when it was started.
    pub spec: pb::DownstreamServer,
    started: std::time::Instant,
    /// The proxy is stopping it: its exit is not a failure.
    stopping: AtomicBool,
    /// Its ending has been read (by [`Downstream::ending`]).
    reaped: AtomicBool,
    stdin: Mutex<ChildStdin>,
    child: Mutex<Child>,
    pending: Pending,
    /// Requests sent and not yet finished (answered, failed, timed out or
    /// cancelled), and a wake-up for when that drops to zero.
    in_flight: AtomicUsize,
    drained: Notify,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    /// Its lists as last read (original names).
    lists: Lists,
    /// Its `initialize` result, or for a stateless server its
    /// `server/discover` result.
    initialized: std::sync::OnceLock<Value>,
    /// It speaks the stateless protocol: every request carries the
    /// proxy's envelope, and there is no handshake.
    stateless: AtomicBool,
    /// What it was told (the envelope of a stateless server's requests).
    hello: Hello,
    /// When a request was last sent; with `idle_timeout`, when to stop it.
    last_used: std::sync::Mutex<std::time::Instant>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for StdioDownstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioDownstream")
            .field("server_id", &self.server_id)
            .field("scope", &self.scope)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The directory a stdio server runs in: its `working_dir` (`~` expanded
/// to the proxy user's home), or that home, or `/` when there is none.
pub fn working_dir(server: &pb::DownstreamServer) -> Result<PathBuf, String> {
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
    };
    let dir = match server.working_dir.as_str() {
        "" => {
            return Ok(home()
                .filter(|h| h.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")));
        }
        "~" => home().ok_or("working_dir is ~ but HOME is not set")?,
        rel if rel.starts_with("~/") => home()
            .ok_or("working_dir is under ~ but HOME is not set")?
            .join(&rel[2..]),
        abs => PathBuf::from(abs),
    };
    if !dir.is_dir() {
        return Err(format!(
            "its working_dir {} is not a directory",
            dir.display()
        ));
    }
    Ok(dir)
}

impl StdioDownstream {
    /// Spawns the server with `credential` injected and opens the
    /// protocol in its era: `server/discover` first, unless the server is
    /// known to speak the session protocol (`era`); a server that answers
    /// it with a stateless version is spoken to statelessly, any other
    /// answer (an error, silence, or exiting) means `initialize`, declaring
    /// what `hello` says. Returns the child and the era it speaks.
    pub async fn start(
        server: &pb::DownstreamServer,
        scope: Option<String>,
        credential: Option<&Released>,
        hello: &Hello,
        era: Option<Era>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<(Arc<Self>, Era), DownstreamError> {
        let spawn = || Self::spawn(server, scope.clone(), credential, hello, events.clone());
        let mut this = spawn()?;
        if era != Some(Era::Legacy) {
            let timeout = PROBE_TIMEOUT.min(call_timeout(server));
            let probe = json!({"_meta": hello.envelope()});
            match this
                .request_cancellable("server/discover", probe, timeout, None)
                .await
            {
                Ok(Ok(result))
                    if result
                        .get("supportedVersions")
                        .and_then(Value::as_array)
                        .is_some_and(|v| v.iter().any(|v| v == STATELESS_PROTOCOL)) =>
                {
                    let _ = this.initialized.set(result);
                    this.stateless.store(true, Ordering::SeqCst);
                    tracing::info!(server = %server.id, "downstream speaks {STATELESS_PROTOCOL}");
                    return Ok((this, Era::Modern));
                }
                Ok(_) => {}
                Err(DownstreamError::Timeout { .. }) => {
                    // It may still take the probe late and settle on the
                    // stateless protocol: start afresh.
                    this.stop().await;
                    this = spawn()?;
                }
                Err(_) => {
                    // Some servers exit on any request before initialize.
                    this.stop().await;
                    this = spawn()?;
                }
            }
        }
        this.handshake(server, hello).await?;
        Ok((this, Era::Legacy))
    }

    /// `initialize`, `notifications/initialized` and the log level the
    /// client set, if the server logs.
    async fn handshake(
        &self,
        server: &pb::DownstreamServer,
        hello: &Hello,
    ) -> Result<(), DownstreamError> {
        let timeout = call_timeout(server);
        let failed = match self
            .request_cancellable("initialize", hello.params(), timeout, None)
            .await
        {
            Ok(Ok(result)) => {
                let _ = self.initialized.set(result);
                None
            }
            Ok(Err(error)) => Some(format!("initialize failed: {error}")),
            Err(err) => Some(format!("no answer to initialize: {err}")),
        };
        if let Some(reason) = failed {
            self.stop().await;
            return Err(DownstreamError::Start {
                server: server.id.clone(),
                reason,
            });
        }
        self.send_notification("notifications/initialized", json!({}))
            .await;
        if let Some(level) = &hello.log_level
            && (self as &dyn Downstream).declares("logging")
        {
            // The level the client set before this child started; a
            // refusal costs only the child's log messages.
            let _ = self
                .request_cancellable("logging/setLevel", json!({"level": level}), timeout, None)
                .await;
        }
        Ok(())
    }

    /// Spawns the server with `credential` injected, reading its output.
    fn spawn(
        server: &pb::DownstreamServer,
        scope: Option<String>,
        credential: Option<&Released>,
        hello: &Hello,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Arc<Self>, DownstreamError> {
        let start_err = |reason: String| DownstreamError::Start {
            server: server.id.clone(),
            reason,
        };
        let mut cmd = tokio::process::Command::new(&server.command);
        cmd.args(&server.args).env_clear();
        // Never the client's working directory: that is the project the
        // agent works on, and a program such as npx would run that
        // project's own copy of the server (its node_modules), handing it
        // the credential.
        cmd.current_dir(working_dir(server).map_err(start_err)?);
        for name in ENV_ALLOWLIST {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.envs(&server.env);
        if let Some(released) = credential {
            for (name, value) in &released.values {
                // Command keeps its own copy of each variable until it is
                // dropped below, and the child's environment holds one for
                // its lifetime: neither is ours to wipe. Both live only in
                // this process and the child the value is meant for.
                cmd.env(name, OsStr::from_bytes(value));
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| start_err(format!("cannot run {:?}: {e}", server.command)))?;
        drop(cmd);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(start_err("no stdio pipes".into()));
        };
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let this = Arc::new(Self {
            server_id: server.id.clone(),
            scope,
            version: credential.map_or(0, |c| c.version),
            spec: server.clone(),
            started: std::time::Instant::now(),
            stopping: AtomicBool::new(false),
            reaped: AtomicBool::new(false),
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
            pending: pending.clone(),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            next_id: AtomicU64::new(1),
            alive: alive.clone(),
            lists: Lists::default(),
            initialized: std::sync::OnceLock::new(),
            stateless: AtomicBool::new(false),
            hello: hello.clone(),
            last_used: std::sync::Mutex::new(std::time::Instant::now()),
            idle_timeout: Duration::from_secs(u64::from(if server.idle_timeout_sec == 0 {
                300
            } else {
                server.idle_timeout_sec
            })),
        });
        tokio::spawn(read_loop(
            server.id.clone(),
            BufReader::new(stdout),
            pending,
            alive,
            Arc::downgrade(&this),
            events,
        ));
        Ok(this)
    }

    /// Whether the process is still running and readable.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn write(&self, message: &Value) -> bool {
        let mut line = message.to_string();
        line.push('\n');
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok()
        })
        .await;
        match written {
            Ok(done) => done,
            Err(_) => {
                tracing::warn!(server = %self.server_id, "downstream stopped reading its input; killing it");
                self.alive.store(false, Ordering::SeqCst);
                if let Ok(mut child) = self.child.try_lock() {
                    let _ = child.start_kill();
                }
                false
            }
        }
    }

    /// Sends a notification.
    async fn send_notification(&self, method: &str, params: Value) {
        self.write(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await;
    }

    /// Sends a request; when `cancel` turns true the request is abandoned
    /// and the child is sent `notifications/cancelled`.
    async fn request_cancellable(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Answer {
        *self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        let _in_flight = InFlight::new(self);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let exited = || DownstreamError::Exited {
            server: self.server_id.clone(),
        };
        if !self.is_alive() || !self.write(&message).await {
            // A failed write means the child is gone, whatever the reader
            // has seen so far.
            self.alive.store(false, Ordering::SeqCst);
            self.pending.lock().await.remove(&id);
            return Err(DownstreamError::NotSent {
                server: self.server_id.clone(),
            });
        }
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, rx) => answer,
            () = cancelled(cancel) => {
                self.pending.lock().await.remove(&id);
                self.send_notification(
                    "notifications/cancelled",
                    json!({"requestId": id, "reason": "cancelled by the client"}),
                )
                .await;
                return Err(DownstreamError::Cancelled {
                    server: self.server_id.clone(),
                });
            }
        };
        match answer {
            Ok(Ok(response)) => Ok(outcome(response)),
            Ok(Err(_)) => Err(exited()),
            Err(_) => {
                self.pending.lock().await.remove(&id);
                self.send_notification(
                    "notifications/cancelled",
                    json!({"requestId": id, "reason": "timed out in mcplexer-proxy"}),
                )
                .await;
                Err(DownstreamError::Timeout {
                    server: self.server_id.clone(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Whether it has been unused for its idle timeout, with nothing in
    /// flight.
    pub async fn is_idle(&self) -> bool {
        let since = self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        since >= self.idle_timeout && self.pending.lock().await.is_empty()
    }

    /// Stops the child once the requests it was sent have finished (or
    /// after `grace`): for a child replaced by a new one, whose calls in
    /// flight should still get their answers. Its ending is not a failure.
    pub fn retire(self: Arc<Self>, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::select! {
                    () = drained => {}
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.stop().await;
        });
    }

    /// Stops the child: closes stdin, then kills it if it lingers (or if
    /// stdin cannot be had: a write to a stuck child holds it).
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.alive.store(false, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.stdin.lock().await.shutdown().await;
        })
        .await;
        let mut child = self.child.lock().await;
        if tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

impl StdioDownstream {
    /// How a child that stopped running ended, once: `None` when the proxy
    /// stopped it (or the ending was already read). A child that closed its
    /// output but lingers is killed.
    pub async fn ending(&self) -> Option<(Ending, Duration)> {
        if self.stopping.load(Ordering::SeqCst) || self.reaped.swap(true, Ordering::SeqCst) {
            return None;
        }
        let uptime = self.started.elapsed();
        let mut child = self.child.lock().await;
        let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        };
        Some((Ending::Exited(status), uptime))
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a StdioDownstream);

impl<'a> InFlight<'a> {
    fn new(child: &'a StdioDownstream) -> Self {
        child.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(child)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

async fn read_loop(
    server_id: String,
    mut stdout: BufReader<tokio::process::ChildStdout>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    this: std::sync::Weak<StdioDownstream>,
    events: mpsc::UnboundedSender<Event>,
) {
    let asking = Arc::new(AtomicUsize::new(0));
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut stdout)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => {
                tracing::warn!(server = %server_id, "downstream wrote an over-long line; stopping it");
                break;
            }
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            tracing::warn!(server = %server_id, "downstream wrote a line that is not JSON; ignored");
            continue;
        };
        match sort(&server_id, message, &events) {
            Inbound::Response(id, message) => {
                // Ids are ours (u64). A late or unknown one is dropped.
                let waiter = match id {
                    Some(id) => pending.lock().await.remove(&id),
                    None => None,
                };
                if let Some(tx) = waiter {
                    let _ = tx.send(message);
                }
            }
            Inbound::Ping(reply) => {
                // Written by a task of its own, so that a child that does
                // not read its input cannot stop this loop from reading.
                if let Some(this) = this.upgrade() {
                    tokio::spawn(async move { this.write(&reply).await });
                }
            }
            Inbound::Ask(request) => {
                let Some(this) = this.upgrade() else { continue };
                let id = request.get("id").cloned().unwrap_or(Value::Null);
                if asking.load(Ordering::SeqCst) >= MAX_ASKS {
                    let refusal = json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32603,
                        "message": format!("more than {MAX_ASKS} requests to the client are waiting")}});
                    tokio::spawn(async move { this.write(&refusal).await });
                    continue;
                }
                // A stdio child's requests do not say which call they are
                // about: they go to the client's session.
                let answer = ask(&server_id, request, None, &events);
                let asking = asking.clone();
                asking.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let reply = answer.await;
                    asking.fetch_sub(1, Ordering::SeqCst);
                    this.write(&reply).await;
                });
            }
            Inbound::Ignored => {}
        }
    }
    alive.store(false, Ordering::SeqCst);
    // Fail every waiting call now rather than at its timeout.
    pending.lock().await.clear();
    tracing::info!(server = %server_id, "downstream stopped");
    if let Some(this) = this.upgrade()
        && !this.stopping.load(Ordering::SeqCst)
    {
        let _ = events.send(Event::Stopped(this));
    }
}

impl Downstream for StdioDownstream {
    fn server_id(&self) -> &str {
        &self.server_id
    }

    fn spec(&self) -> &pb::DownstreamServer {
        &self.spec
    }

    fn lists(&self) -> &Lists {
        &self.lists
    }

    fn initialized(&self) -> Option<Value> {
        self.initialized.get().cloned()
    }

    fn request<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        call: Call<'a>,
    ) -> BoxFuture<'a, Answer> {
        // Its credential was injected at start; the call's is the same
        // version (the pool checks), so it is not sent again.
        Box::pin(async move {
            if !self.stateless.load(Ordering::SeqCst) {
                return self
                    .request_cancellable(method, params, call.timeout, call.cancel)
                    .await;
            }
            if method == "ping" || method == "logging/setLevel" {
                // Not in the stateless protocol (the level rides each
                // request's envelope).
                return Ok(Ok(json!({})));
            }
            let params = self.hello.enveloped(params);
            self.request_cancellable(method, params, call.timeout, call.cancel)
                .await
                .map(from_stateless)
        })
    }

    fn notify<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        _credential: Option<&'a Released>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.send_notification(method, params))
    }
}
