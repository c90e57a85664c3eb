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

use crate::restart::Ending;
use crate::vault::Released;

/// Variables of the proxy's own environment a child inherits; nothing else
/// does.
pub const ENV_ALLOWLIST: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// The longest line a child may write (16 MiB); a longer one ends it.
const MAX_LINE: usize = 16 << 20;

/// The protocol version the proxy speaks to downstreams.
pub const DOWNSTREAM_PROTOCOL: &str = "2025-11-25";

/// Pages of `tools/list` read from one downstream at most.
const MAX_PAGES: usize = 64;

/// How long one message may take to go into a child's stdin. A child that
/// stops reading for this long is stuck: it is killed, since a partial
/// message may be in the pipe.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a downstream tells the gateway on its own.
#[derive(Debug)]
pub enum Event {
    /// It sent `notifications/tools/list_changed`.
    ToolsChanged {
        /// The server.
        server_id: String,
    },
    /// It sent `notifications/progress` (relayed while its token is live,
    /// and only from the server the call went to).
    Progress {
        /// The server that sent it.
        server_id: String,
        /// The notification as received.
        message: Value,
    },
    /// It closed its output: it exited, or will be made to.
    Stopped(Arc<Downstream>),
}

/// Why a request to a downstream failed.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// It could not be started or initialised.
    #[error("downstream {server} could not be started: {reason}")]
    Start {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// It was not running when the request was to be sent: the request
    /// never reached it, so it may be sent again to a fresh child.
    #[error("downstream {server} is not running")]
    NotSent {
        /// The server.
        server: String,
    },
    /// It exited (or closed stdout) before answering.
    #[error("downstream {server} exited before answering")]
    Exited {
        /// The server.
        server: String,
    },
    /// The client cancelled the call; the downstream was told.
    #[error("the call to downstream {server} was cancelled by the client")]
    Cancelled {
        /// The server.
        server: String,
    },
    /// It did not answer within the call timeout.
    #[error("downstream {server} did not answer within {secs} s")]
    Timeout {
        /// The server.
        server: String,
        /// The timeout.
        secs: u64,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running stdio downstream.
pub struct Downstream {
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
    /// Its tools as last listed (original names).
    pub tools: Mutex<Option<Vec<Value>>>,
    /// When a request was last sent; with `idle_timeout`, when to stop it.
    last_used: std::sync::Mutex<std::time::Instant>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downstream")
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

impl Downstream {
    /// Spawns and initialises the server with `credential` injected.
    pub async fn start(
        server: &pb::DownstreamServer,
        scope: Option<String>,
        credential: Option<&Released>,
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
            tools: Mutex::new(None),
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
        let init = json!({
            "protocolVersion": DOWNSTREAM_PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "mcplexer-proxy", "version": env!("CARGO_PKG_VERSION")},
        });
        let timeout = Duration::from_secs(u64::from(server.call_timeout_sec.max(1)));
        let failed = match this.request("initialize", init, timeout).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(format!("initialize failed: {error}")),
            Err(err) => Some(format!("no answer to initialize: {err}")),
        };
        if let Some(reason) = failed {
            this.stop().await;
            return Err(start_err(reason));
        }
        this.notify("notifications/initialized", json!({})).await;
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
    pub async fn notify(&self, method: &str, params: Value) {
        self.write(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await;
    }

    /// Sends a request; `Ok(Ok(result))`, `Ok(Err(error object))` for a
    /// JSON-RPC error, `Err` when no answer came.
    pub async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Result<Value, Value>, DownstreamError> {
        self.request_cancellable(method, params, timeout, None)
            .await
    }

    /// Like [`Downstream::request`]; when `cancel` turns true the request is
    /// abandoned and the child is sent `notifications/cancelled`.
    pub async fn request_cancellable(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Result<Value, Value>, DownstreamError> {
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
        let cancelled = async move {
            match cancel {
                Some(mut cancel) => {
                    if cancel.wait_for(|c| *c).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, rx) => answer,
            () = cancelled => {
                self.pending.lock().await.remove(&id);
                self.notify(
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
            Ok(Ok(mut response)) => Ok(match response.get_mut("error") {
                Some(error) => Err(error.take()),
                None => Ok(response
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or(Value::Null)),
            }),
            Ok(Err(_)) => Err(exited()),
            Err(_) => {
                self.pending.lock().await.remove(&id);
                self.notify(
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

    /// Lists every tool (all pages) and caches the list.
    pub async fn list_tools(&self, timeout: Duration) -> Result<Vec<Value>, DownstreamError> {
        let tools = all_tools(&self.server_id, |params| {
            self.request("tools/list", params, timeout)
        })
        .await?;
        *self.tools.lock().await = Some(tools.clone());
        Ok(tools)
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

impl Downstream {
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
struct InFlight<'a>(&'a Downstream);

impl<'a> InFlight<'a> {
    fn new(child: &'a Downstream) -> Self {
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

/// Reads every page of `tools/list` through `request` (at most
/// [`MAX_PAGES`]); a JSON-RPC error ends the listing with what was read.
pub(crate) async fn all_tools<F, Fut>(
    server_id: &str,
    mut request: F,
) -> Result<Vec<Value>, DownstreamError>
where
    F: FnMut(Value) -> Fut,
    Fut: std::future::Future<Output = Result<Result<Value, Value>, DownstreamError>>,
{
    let mut tools = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let result = match request(params).await? {
            Ok(result) => result,
            Err(error) => {
                // Its code only: the message is the server's own text and
                // may echo the credential it was given.
                let code = error.get("code").and_then(Value::as_i64);
                tracing::warn!(server = %server_id, ?code, "tools/list failed");
                break;
            }
        };
        if let Some(list) = result.get("tools").and_then(Value::as_array) {
            tools.extend(list.iter().cloned());
        }
        cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
        if cursor.is_none() {
            break;
        }
    }
    Ok(tools)
}

async fn read_loop(
    server_id: String,
    mut stdout: BufReader<tokio::process::ChildStdout>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    this: std::sync::Weak<Downstream>,
    events: mpsc::UnboundedSender<Event>,
) {
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
        let method = message.get("method").and_then(Value::as_str);
        let id = message.get("id");
        match (method, id) {
            (None, Some(id)) => {
                // A response; ids are ours (u64). A late or unknown one is
                // dropped.
                let waiter = match id.as_u64() {
                    Some(id) => pending.lock().await.remove(&id),
                    None => None,
                };
                if let Some(tx) = waiter {
                    let _ = tx.send(message);
                }
            }
            (Some(method), Some(id)) => {
                // A request from the server. Only ping is served: the proxy
                // declares no client capabilities to downstreams.
                let reply = if method == "ping" {
                    json!({"jsonrpc": "2.0", "id": id, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("{method} is not supported by mcplexer-proxy")}})
                };
                // Written by a task of its own, so that a child that does
                // not read its input cannot stop this loop from reading.
                if let Some(this) = this.upgrade() {
                    tokio::spawn(async move { this.write(&reply).await });
                }
            }
            (Some("notifications/progress"), None) => {
                let _ = events.send(Event::Progress {
                    server_id: server_id.clone(),
                    message,
                });
            }
            (Some("notifications/tools/list_changed"), None) => {
                let _ = events.send(Event::ToolsChanged {
                    server_id: server_id.clone(),
                });
            }
            _ => {}
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
