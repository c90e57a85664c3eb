//! The gateway core: the client's JSON-RPC messages in, routed calls out.
//! `initialize`, `ping`, `tools/list` (aggregated, `<namespace>__<tool>`,
//! only callable tools) and `tools/call` (routed, credential fetched from the
//! vault per call, injected, audited with redaction) are served here; the
//! transport (stdio) only moves lines.
//!
//! Trust: the client is untrusted. What it may reach is decided by the route
//! rules and, for credentials, by the vault from our uid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcplexer_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::downstream::{Downstream, DownstreamError, Event};
use crate::http::HttpDownstream;
use crate::redact::{Scrub, redact};
use crate::restart::{Ending, History, Policy, Verdict};
use crate::router::{Decision, split_tool};
use crate::vault::{Released, Routing, VaultError, VaultLink};

/// Protocol versions the proxy speaks to clients, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Tools per `tools/list` page served to the client.
const PAGE: usize = 100;

/// JSON-RPC error codes.
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// One child per (server id, scope id).
type ChildKey = (String, Option<String>);

/// The gateway of one client session.
pub struct Gateway {
    vault: Arc<VaultLink>,
    /// The client's working directory: picks the workspace, unless the
    /// client's declared roots do.
    cwd: PathBuf,
    /// Whether a client that declares the `roots` capability picks the
    /// workspace with its first root (HTTP clients, per DESIGN §4).
    use_roots: bool,
    /// Set at `initialize` when the client's roots pick the workspace.
    roots_wanted: std::sync::atomic::AtomicBool,
    /// The directory of the client's first root once asked (`None`: not
    /// asked yet, or its roots changed since). The lock makes concurrent
    /// requests share one `roots/list`.
    root_dir: Mutex<Option<PathBuf>>,
    /// Requests sent to the client, waiting for its response, by id.
    client_requests: std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<Value>>>,
    next_client_request: std::sync::atomic::AtomicU64,
    /// Record every call's (redacted) response, whatever the rule says.
    log_full: bool,
    children: Mutex<HashMap<ChildKey, Arc<Downstream>>>,
    /// One HTTP session per (server id, scope id).
    sessions: Mutex<HashMap<ChildKey, Arc<HttpDownstream>>>,
    /// Serialises starts, so concurrent calls share one child.
    starting: Mutex<()>,
    /// Serialises reading how children ended, so each ending is recorded
    /// once and before anyone decides on a restart.
    reaping: Mutex<()>,
    /// How children that stopped on their own ended: their restart policy
    /// and backoff decide when they start again.
    history: std::sync::Mutex<HashMap<ChildKey, History>>,
    out: mpsc::UnboundedSender<Value>,
    events: mpsc::UnboundedSender<Event>,
    /// Redacted audit records, sent to the vault in order by one task that
    /// [`Gateway::shutdown`] waits for, so none is lost at exit.
    audit_tx: std::sync::Mutex<Option<mpsc::UnboundedSender<pb::AuditRecord>>>,
    audit_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Calls in flight that the client may cancel, by its request id (as
    /// JSON text, so 1 and "1" stay distinct).
    cancels: std::sync::Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    /// Progress tokens of calls in flight (as JSON text), with the stream
    /// of the request that carries each, if it has its own.
    progress: std::sync::Mutex<HashMap<String, LiveProgress>>,
}

/// Where messages about one client request go (its own response stream,
/// on streamable HTTP), before its response.
pub type Sink = mpsc::UnboundedSender<Value>;

/// A call in flight that carries a progress token.
#[derive(Clone)]
struct LiveProgress {
    /// The tool namespace of the server the call goes to.
    namespace: String,
    /// The request's own stream, if it has one.
    sink: Option<Sink>,
}

/// A tool's error result (`isError`) with every released value scrubbed:
/// it is an error message, and the server may echo its credential in it. A
/// successful result is passed on as the server gave it.
fn scrub_tool_error(mut result: Value, credential: Option<&Released>) -> Value {
    if let Some(credential) = credential
        && result.get("isError").and_then(Value::as_bool) == Some(true)
    {
        credential.scrub().value(&mut result);
    }
    result
}

/// Ends an HTTP session in the background (its DELETE carries no
/// credential).
fn retire_session(session: Arc<HttpDownstream>) {
    tokio::spawn(async move { session.stop().await });
}

/// How long the client has to answer `roots/list`.
const ROOTS_TIMEOUT: Duration = Duration::from_secs(10);

/// An error answered to the client.
struct CallError {
    code: i64,
    message: String,
    data: Option<Value>,
    /// A policy refusal (route rule, no rule, or the vault's refusal), as
    /// opposed to a failure: audited as `denied`.
    denied: bool,
    /// The client cancelled the call: no response is sent.
    cancelled: bool,
}

impl CallError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
            denied: false,
            cancelled: false,
        }
    }

    /// A downstream's JSON-RPC error, passed through (code, message, data).
    fn from_downstream(error: Value) -> Self {
        Self {
            code: error
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(INTERNAL_ERROR),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("downstream error")
                .to_owned(),
            data: error.get("data").cloned(),
            denied: false,
            cancelled: false,
        }
    }

    /// The error with every released value scrubbed from its message and
    /// data: a downstream may echo its credential in an error, and neither
    /// the client nor a log may see it.
    fn scrubbed(mut self, credential: Option<&Released>) -> Self {
        if let Some(credential) = credential {
            let scrub = credential.scrub();
            self.message = scrub.text(&self.message);
            if let Some(data) = &mut self.data {
                scrub.value(data);
            }
        }
        self
    }

    fn denied(message: impl Into<String>) -> Self {
        Self {
            denied: true,
            ..Self::new(INVALID_PARAMS, message)
        }
    }
}

impl From<VaultError> for CallError {
    fn from(err: VaultError) -> Self {
        let (data, denied) = match &err {
            VaultError::Refused {
                code,
                vault_code,
                fix,
                ..
            } => (
                json!({"vault_code": vault_code, "grpc_code": code, "fix": fix}),
                matches!(
                    vault_code.as_str(),
                    "PERMISSION_DENIED" | "TRANSPORT_MISMATCH"
                ),
            ),
            VaultError::Unreachable { .. } => (json!({"vault_code": "UNAVAILABLE"}), false),
        };
        Self {
            code: INTERNAL_ERROR,
            message: err.to_string(),
            data: Some(data),
            denied,
            cancelled: false,
        }
    }
}

impl From<DownstreamError> for CallError {
    fn from(err: DownstreamError) -> Self {
        let server = match &err {
            DownstreamError::Start { server, .. }
            | DownstreamError::NotSent { server }
            | DownstreamError::Exited { server }
            | DownstreamError::Cancelled { server }
            | DownstreamError::Timeout { server, .. } => server.clone(),
        };
        Self {
            code: INTERNAL_ERROR,
            message: err.to_string(),
            data: Some(json!({"downstream": server})),
            denied: false,
            cancelled: matches!(err, DownstreamError::Cancelled { .. }),
        }
    }
}

fn response(id: &Value, result: Result<Value, CallError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            let mut error = json!({"code": e.code, "message": e.message});
            if let Some(data) = e.data {
                error["data"] = data;
            }
            json!({"jsonrpc": "2.0", "id": id, "error": error})
        }
    }
}

impl Gateway {
    /// A gateway writing its messages for the client to `out`.
    /// A gateway writing its messages for the client to `out`; with
    /// `use_roots`, a client that declares roots picks the workspace with
    /// its first root instead of `cwd`.
    pub fn new(
        vault: Arc<VaultLink>,
        cwd: PathBuf,
        use_roots: bool,
        log_full: bool,
        out: mpsc::UnboundedSender<Value>,
    ) -> Arc<Self> {
        let (events, mut rx) = mpsc::unbounded_channel();
        let (audit_tx, mut audit_rx) = mpsc::unbounded_channel::<pb::AuditRecord>();
        let sender = vault.clone();
        let audit_task = tokio::spawn(async move {
            while let Some(record) = audit_rx.recv().await {
                // While the vault is unreachable (restarting), keep the
                // record and retry, in order; a refusal is final. Delivery
                // is at least once: a vault that dies after storing a record
                // but before answering gets it again.
                let mut backoff = Duration::from_millis(100);
                loop {
                    match sender.audit(record.clone()).await {
                        Ok(()) => break,
                        Err(err @ VaultError::Refused { .. }) => {
                            tracing::warn!(error = %err, "the vault refused an audit record");
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot send an audit record yet; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        });
        let gateway = Arc::new(Self {
            vault,
            cwd,
            use_roots,
            roots_wanted: std::sync::atomic::AtomicBool::new(false),
            root_dir: Mutex::new(None),
            client_requests: std::sync::Mutex::new(HashMap::new()),
            next_client_request: std::sync::atomic::AtomicU64::new(1),
            log_full,
            children: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            starting: Mutex::new(()),
            reaping: Mutex::new(()),
            history: std::sync::Mutex::new(HashMap::new()),
            out,
            events,
            audit_tx: std::sync::Mutex::new(Some(audit_tx)),
            audit_task: Mutex::new(Some(audit_task)),
            cancels: std::sync::Mutex::new(HashMap::new()),
            progress: std::sync::Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                gateway.on_event(event).await;
            }
        });
        let weak = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                gateway.stop_idle().await;
            }
        });
        let weak = Arc::downgrade(&gateway);
        let mut routing = gateway.vault.subscribe();
        tokio::spawn(async move {
            while routing.changed().await.is_ok() {
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                gateway.retire_changed().await;
                gateway.notify_tools_changed();
            }
        });
        gateway
    }

    /// Retires the children and sessions of servers whose configuration
    /// changed or that are gone, so that no credential goes to a command or
    /// URL the configuration no longer names. (A call also checks the
    /// configuration it was routed by before it reuses one.)
    async fn retire_changed(&self) {
        let routing = self.vault.routing();
        let current = |id: &str, spec: &pb::DownstreamServer| routing.servers.get(id) == Some(spec);
        {
            let _one_start = self.starting.lock().await;
            let mut children = self.children.lock().await;
            let stale: Vec<_> = children
                .iter()
                .filter(|(key, child)| !current(&key.0, &child.spec))
                .map(|(key, _)| key.clone())
                .collect();
            for key in stale {
                if let Some(child) = children.remove(&key) {
                    tracing::info!(server = %key.0, "retiring a downstream whose configuration changed");
                    let grace = call_timeout(&child.spec);
                    child.retire(grace);
                }
            }
        }
        let mut sessions = self.sessions.lock().await;
        sessions.retain(|key, session| {
            let keep = current(&key.0, &session.spec);
            if !keep {
                retire_session(session.clone());
            }
            keep
        });
    }

    /// Stops children unused for their server's `idle_timeout_sec`; the
    /// next call starts them again. (Children that stopped on their own are
    /// [`Gateway::reap`]ed instead.)
    async fn stop_idle(&self) {
        let _one_start = self.starting.lock().await;
        let mut idle = Vec::new();
        {
            let mut children = self.children.lock().await;
            let mut keys = Vec::new();
            for (key, child) in children.iter() {
                if child.is_alive() && child.is_idle().await {
                    keys.push(key.clone());
                }
            }
            for key in keys {
                if let Some(child) = children.remove(&key) {
                    idle.push(child);
                }
            }
        }
        for child in idle {
            tracing::info!(server = %child.server_id, "stopping an idle downstream");
            child.stop().await;
        }
    }

    fn notify_tools_changed(&self) {
        let _ = self
            .out
            .send(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    }

    /// Records how a child that stopped on its own ended (once), withdraws
    /// it, and tells the client its tools changed.
    async fn reap(self: &Arc<Self>, child: &Arc<Downstream>) {
        let _one_reap = self.reaping.lock().await;
        let key = (child.server_id.clone(), child.scope.clone());
        // A child not (or no longer) in the map is still being started,
        // which records its own failure, or was replaced.
        let current = |children: &HashMap<ChildKey, Arc<Downstream>>| {
            children.get(&key).is_some_and(|c| Arc::ptr_eq(c, child))
        };
        if !current(&*self.children.lock().await) {
            return;
        }
        let Some((ending, uptime)) = child.ending().await else {
            return;
        };
        {
            let mut children = self.children.lock().await;
            if current(&children) {
                children.remove(&key);
            }
        }
        let Some(server) = self.vault.routing().servers.get(&child.server_id).cloned() else {
            return;
        };
        self.record_ending(&key, &server, ending, uptime);
        if child.tools.lock().await.is_some() {
            self.notify_tools_changed();
        }
    }

    /// Adds an ending to the child's history; when the history makes it
    /// wait, tells the client once the wait is over, so it lists the
    /// returning tools.
    fn record_ending(
        self: &Arc<Self>,
        key: &ChildKey,
        server: &pb::DownstreamServer,
        ending: Ending,
        uptime: Duration,
    ) {
        let history = {
            let mut all = self
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let history = History::record(all.get(key), server, ending, uptime, Instant::now());
            all.insert(key.clone(), history.clone());
            history
        };
        tracing::warn!(
            server = %server.id,
            failures = history.failures,
            restart_policy = Policy::of(server).name(),
            "downstream {}",
            history.last.describe()
        );
        if let Some(at) = history.retry_at() {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                if let Some(gateway) = weak.upgrade() {
                    gateway.notify_tools_changed();
                }
            });
        }
    }

    /// Whether (server, scope) may be started now, by its history.
    fn may_start(&self, key: &ChildKey, server: &pb::DownstreamServer) -> Result<(), CallError> {
        let all = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(history) = all.get(key) else {
            return Ok(());
        };
        let policy = Policy::of(server);
        let (message, retry_in) = match history.verdict(server, Instant::now()) {
            Verdict::Start => return Ok(()),
            Verdict::Wait(at) => {
                let secs = at.saturating_duration_since(Instant::now()).as_secs() + 1;
                (
                    format!(
                        "downstream {} {} ({} failures in a row); it will be started again in {secs} s",
                        server.id,
                        history.last.describe(),
                        history.failures
                    ),
                    Some(secs),
                )
            }
            Verdict::Stay(policy) => (
                format!(
                    "downstream {} {} and its restart_policy is {}; it will be started again when its configuration changes",
                    server.id,
                    history.last.describe(),
                    policy.name()
                ),
                None,
            ),
        };
        Err(CallError {
            data: Some(json!({
                "downstream": server.id,
                "restart_policy": policy.name(),
                "failures": history.failures,
                "retry_in_sec": retry_in,
            })),
            ..CallError::new(INTERNAL_ERROR, message)
        })
    }

    async fn on_event(self: &Arc<Self>, event: Event) {
        let server_id = match event {
            Event::Stopped(child) => {
                self.reap(&child).await;
                return;
            }
            Event::ToolsChanged { server_id } => server_id,
            Event::Progress { server_id, message } => {
                // Relayed only while the call that carries its token runs,
                // and only from the server that call went to: never after
                // completion, never a token the client did not send, never
                // one server speaking for another.
                let Some(token) = message.pointer("/params/progressToken") else {
                    return;
                };
                let live = self
                    .progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&token.to_string())
                    .cloned();
                let Some(live) = live else {
                    return;
                };
                let routing = self.vault.routing();
                if routing
                    .servers
                    .get(&server_id)
                    .map(|s| s.tool_namespace.as_str())
                    != Some(live.namespace.as_str())
                {
                    return;
                }
                // Rebuilt from the fields progress has, not passed through.
                let mut params = serde_json::Map::new();
                for field in ["progressToken", "progress", "total", "message"] {
                    if let Some(value) = message.pointer(&format!("/params/{field}")) {
                        params.insert(field.to_owned(), value.clone());
                    }
                }
                let note =
                    json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params});
                let _ = match live.sink {
                    Some(sink) => sink.send(note).is_ok(),
                    None => self.out.send(note).is_ok(),
                };
                return;
            }
        };
        // Re-list every child of that server; tell the client only when a
        // list really changed (servers announce changes they did not make).
        let children = of_server(&*self.children.lock().await, &server_id);
        let sessions = of_server(&*self.sessions.lock().await, &server_id);
        // An HTTP session is re-listed on the next tools/list (its headers
        // come with the next credential).
        for session in sessions {
            *session.tools.lock().await = None;
        }
        let mut changed = false;
        for child in children {
            // A child that was never listed is being listed right now (or
            // will be on first use): nothing the client has seen changed.
            let Some(before) = child.tools.lock().await.clone() else {
                continue;
            };
            if let Ok(after) = child.list_tools(Duration::from_secs(30)).await {
                changed |= before != after;
            }
        }
        if changed {
            self.notify_tools_changed();
        }
    }

    /// Handles one message from the client; returns the response, if any.
    pub async fn handle(self: &Arc<Self>, message: Value) -> Option<Value> {
        self.handle_in(message, None).await
    }

    /// Like [`Gateway::handle`], with the messages about this request
    /// (progress, requests to the client) sent to `sink` rather than to the
    /// session's stream.
    pub async fn handle_in(self: &Arc<Self>, message: Value, sink: Option<Sink>) -> Option<Value> {
        let id = message.get("id").cloned();
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        let (Some(id), Some(method)) = (id, method) else {
            match message.get("method").and_then(Value::as_str) {
                Some("notifications/cancelled") => {
                    if let Some(request) = params.get("requestId") {
                        let cancels = self
                            .cancels
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if let Some(cancel) = cancels.get(&request.to_string()) {
                            let _ = cancel.send(true);
                        }
                    }
                }
                Some("notifications/roots/list_changed") => {
                    if self.roots_wanted.load(std::sync::atomic::Ordering::SeqCst) {
                        // Asked again by the next request that needs it;
                        // the tools it may call can differ.
                        *self.root_dir.lock().await = None;
                        self.notify_tools_changed();
                    }
                }
                None => {
                    // A response to a request of ours.
                    let waiter = message.get("id").and_then(|id| {
                        self.client_requests
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&id.to_string())
                    });
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(message);
                    }
                }
                // Other notifications (initialized, ...) need no answer.
                Some(_) => {}
            }
            return None;
        };
        if id.is_null() {
            return Some(response(
                &Value::Null,
                Err(CallError::new(
                    INVALID_REQUEST,
                    "request id must not be null",
                )),
            ));
        }
        let result = match method.as_str() {
            "initialize" => Ok(self.initialize(&params)),
            "ping" => Ok(json!({})),
            "tools/list" => {
                let dir = self.workspace_dir(sink.as_ref()).await;
                self.tools_list(&params, &dir).await
            }
            "tools/call" => {
                let key = id.to_string();
                let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
                self.cancels
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone(), cancel_tx);
                let token = params.pointer("/_meta/progressToken").map(Value::to_string);
                if let Some(token) = &token {
                    // The server the call goes to is the one its tool's
                    // namespace names.
                    let namespace = params
                        .get("name")
                        .and_then(Value::as_str)
                        .and_then(|n| n.split_once("__"))
                        .map(|(ns, _)| ns.to_owned())
                        .unwrap_or_default();
                    self.progress
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(
                            token.clone(),
                            LiveProgress {
                                namespace,
                                sink: sink.clone(),
                            },
                        );
                }
                let dir = self.workspace_dir(sink.as_ref()).await;
                let result = self.tools_call(params, &dir, cancel_rx).await;
                self.cancels
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&key);
                if let Some(token) = &token {
                    self.progress
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(token);
                }
                // A cancelled request gets no response (MCP cancellation).
                if result.as_ref().is_err_and(|e| e.cancelled) {
                    return None;
                }
                result
            }
            "resources/list" => Ok(json!({"resources": []})),
            "prompts/list" => Ok(json!({"prompts": []})),
            other => Err(CallError::new(
                METHOD_NOT_FOUND,
                format!("method {other} is not served by mcplexer-proxy"),
            )),
        };
        Some(response(&id, result))
    }

    /// The directory that picks this request's workspace: the first root
    /// the client declares, when its roots pick the workspace (asked once,
    /// on `sink` if the request has its own stream, and again after
    /// `notifications/roots/list_changed`); else the proxy's directory.
    async fn workspace_dir(&self, sink: Option<&Sink>) -> PathBuf {
        if !self.roots_wanted.load(std::sync::atomic::Ordering::SeqCst) {
            return self.cwd.clone();
        }
        let mut known = self.root_dir.lock().await;
        if let Some(dir) = &*known {
            return dir.clone();
        }
        let dir = match self.ask_client("roots/list", json!({}), sink).await {
            Ok(result) => match first_root(&result) {
                Ok(dir) => dir,
                Err(why) => {
                    tracing::warn!(
                        "the client's roots pick no workspace ({why}); using {}",
                        self.cwd.display()
                    );
                    self.cwd.clone()
                }
            },
            Err(why) => {
                tracing::warn!("roots/list failed ({why}); using {}", self.cwd.display());
                self.cwd.clone()
            }
        };
        tracing::info!(dir = %dir.display(), "the client's workspace directory");
        *known = Some(dir.clone());
        dir
    }

    /// Sends a request to the client (on `sink`, else the session's stream)
    /// and waits [`ROOTS_TIMEOUT`] for its result.
    async fn ask_client(
        &self,
        method: &str,
        params: Value,
        sink: Option<&Sink>,
    ) -> Result<Value, String> {
        let n = self
            .next_client_request
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = Value::String(format!("mcplexer-{n}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.client_requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string(), tx);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let sent = match sink {
            Some(sink) => sink.send(request).is_ok(),
            None => self.out.send(request).is_ok(),
        };
        let answer = if sent {
            tokio::time::timeout(ROOTS_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.client_requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id.to_string());
        let Some(mut answer) = answer else {
            return Err(format!("no answer within {} s", ROOTS_TIMEOUT.as_secs()));
        };
        if let Some(error) = answer.get("error") {
            return Err(format!("the client answered {error}"));
        }
        Ok(answer
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    fn initialize(&self, params: &Value) -> Value {
        if self.use_roots && params.pointer("/capabilities/roots").is_some() {
            self.roots_wanted
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let asked = params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let version = SUPPORTED_VERSIONS
            .iter()
            .find(|v| **v == asked)
            .unwrap_or(&SUPPORTED_VERSIONS[0]);
        json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": true}},
            "serverInfo": {"name": "mcplexer-proxy", "version": env!("CARGO_PKG_VERSION")},
        })
    }

    /// The rule a listing of `server`'s tools goes by, and its scope: the
    /// first allow rule routing to it in the workspace chain; none if no
    /// rule could route its tools (then it is not listed at all). The vault
    /// releases the scope for the listing through that rule.
    fn listing_scope(
        routing: &Routing,
        dir: &Path,
        server_id: &str,
    ) -> Option<(Option<String>, String)> {
        for workspace in routing.table.workspaces(dir) {
            let mut rules: Vec<&pb::RouteRule> = routing
                .routes
                .iter()
                .filter(|r| {
                    r.workspace_id == workspace
                        && r.policy == "allow"
                        && r.downstream_server_id == server_id
                })
                .collect();
            rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
            if let Some(rule) = rules.first() {
                let scope = Some(rule.auth_scope_id.clone()).filter(|s| !s.is_empty());
                return Some((scope, rule.id.clone()));
            }
        }
        None
    }

    async fn tools_list(self: &Arc<Self>, params: &Value, dir: &Path) -> Result<Value, CallError> {
        let routing = self.vault.routing();
        let mut servers: Vec<&pb::DownstreamServer> = routing.servers.values().collect();
        servers.sort_by(|a, b| a.tool_namespace.cmp(&b.tool_namespace));
        let mut exposed = Vec::new();
        for server in servers {
            let Some((scope, rule)) = Self::listing_scope(&routing, dir, &server.id) else {
                continue;
            };
            let tools = match self.tools_of(server, scope, &rule).await {
                Ok(tools) => tools,
                Err(err) => {
                    // One broken downstream costs only its own tools.
                    tracing::warn!(server = %server.id, error = %err.message, "cannot list tools");
                    continue;
                }
            };
            for mut tool in tools {
                let Some(name) = tool.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let name = format!("{}__{name}", server.tool_namespace);
                if let Decision::Allow { .. } = routing.table.decide(dir, &name, &server.id) {
                    tool["name"] = Value::String(name);
                    exposed.push(tool);
                }
            }
        }
        let start = match params.get("cursor").and_then(Value::as_str) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= exposed.len())
                .ok_or_else(|| CallError::new(INVALID_PARAMS, "invalid cursor"))?,
        };
        let end = (start + PAGE).min(exposed.len());
        let mut result = json!({"tools": exposed[start..end]});
        if end < exposed.len() {
            result["nextCursor"] = Value::String(end.to_string());
        }
        Ok(result)
    }

    async fn tools_of(
        self: &Arc<Self>,
        server: &pb::DownstreamServer,
        scope: Option<String>,
        rule: &str,
    ) -> Result<Vec<Value>, CallError> {
        if server.transport == "http" {
            let session = self.session(server, scope.clone()).await?;
            if let Some(tools) = session.tools.lock().await.clone() {
                return Ok(tools);
            }
            let credential = self.credential(server, scope, "", rule).await?;
            return session
                .list_tools(credential.as_ref(), call_timeout(server))
                .await
                .map_err(|e| CallError::from(e).scrubbed(credential.as_ref()));
        }
        let (child, credential) = self.child(server, scope, "", rule).await?;
        if let Some(tools) = child.tools.lock().await.clone() {
            return Ok(tools);
        }
        child
            .list_tools(call_timeout(server))
            .await
            .map_err(|e| CallError::from(e).scrubbed(credential.as_ref()))
    }

    /// Fetches the scope's values for one use of `server` (none without a
    /// scope). Every fetch is a release the vault audits.
    async fn credential(
        &self,
        server: &pb::DownstreamServer,
        scope: Option<String>,
        tool: &str,
        rule: &str,
    ) -> Result<Option<Released>, CallError> {
        let Some(scope_id) = scope else {
            return Ok(None);
        };
        let released = self
            .vault
            .credential(pb::CredentialRequest {
                auth_scope_id: scope_id,
                downstream_server_id: server.id.clone(),
                transport: server.transport.clone(),
                tool: tool.to_owned(),
                route_rule_id: rule.to_owned(),
            })
            .await?;
        Ok(Some(released))
    }

    /// The HTTP session for (server, scope).
    async fn session(
        &self,
        server: &pb::DownstreamServer,
        scope: Option<String>,
    ) -> Result<Arc<HttpDownstream>, CallError> {
        let mut sessions = self.sessions.lock().await;
        let key = (server.id.clone(), scope);
        if let Some(session) = sessions.get(&key) {
            if session.spec == *server {
                return Ok(session.clone());
            }
            // The server's configuration changed (its URL, say): nothing
            // more goes to the old session.
            retire_session(session.clone());
        }
        let session = HttpDownstream::new(server, self.events.clone())?;
        sessions.insert(key, session.clone());
        Ok(session)
    }

    /// The child for (server, scope), started or restarted as needed: a new
    /// credential version or a dead process means a fresh child.
    async fn child(
        self: &Arc<Self>,
        server: &pb::DownstreamServer,
        scope: Option<String>,
        tool: &str,
        rule: &str,
    ) -> Result<(Arc<Downstream>, Option<Released>), CallError> {
        let key = (server.id.clone(), scope.clone());
        // A child that stopped on its own: how it ended decides whether it
        // may start again (checked before a credential is released for it).
        let stopped = self
            .children
            .lock()
            .await
            .get(&key)
            .filter(|c| !c.is_alive())
            .cloned();
        if let Some(child) = stopped {
            self.reap(&child).await;
        }
        self.may_start(&key, server)?;
        let mut credential = self.credential(server, scope.clone(), tool, rule).await?;
        let _one_start = self.starting.lock().await;
        let existing = self.children.lock().await.get(&key).cloned();
        if let Some(child) = existing {
            let mut version = credential.as_ref().map_or(0, |c| c.version);
            if child.is_alive() && child.spec == *server && child.version != version {
                // Either the material changed, or this credential was
                // fetched before another call started the child with newer
                // material: ask again, under the lock, for what is current.
                credential = self.credential(server, scope.clone(), tool, rule).await?;
                version = credential.as_ref().map_or(0, |c| c.version);
            }
            if child.is_alive() && child.spec == *server && child.version == version {
                return Ok((child, credential));
            }
            if child.is_alive() {
                // Its credential or its configuration changed: new calls go
                // to a new child; the calls in flight keep the old one until
                // they finish.
                tracing::info!(server = %server.id, "replacing the downstream: its credential or configuration changed");
                self.children.lock().await.remove(&key);
                let grace = call_timeout(&child.spec);
                child.retire(grace);
            } else {
                // It stopped since the check above.
                self.reap(&child).await;
                self.may_start(&key, server)?;
            }
        }
        let child = match Downstream::start(server, scope, credential.as_ref(), self.events.clone())
            .await
        {
            Ok(child) => child,
            Err(err) => {
                // What the child said (an initialize error) may echo the
                // values it was started with.
                let mut reason = match &err {
                    DownstreamError::Start { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                if let Some(credential) = &credential {
                    reason = credential.scrub().text(&reason);
                }
                self.record_ending(&key, server, Ending::StartFailed(reason), Duration::ZERO);
                return Err(CallError::from(err).scrubbed(credential.as_ref()));
            }
        };
        self.children.lock().await.insert(key, child.clone());
        Ok((child, credential))
    }

    async fn tools_call(
        self: &Arc<Self>,
        params: Value,
        dir: &Path,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| CallError::new(INVALID_PARAMS, "tools/call needs a tool name"))?
            .to_owned();
        let routing = self.vault.routing();
        let unknown = || CallError::new(INVALID_PARAMS, format!("Unknown tool: {name}"));
        let (namespace, tool) = split_tool(&name).ok_or_else(unknown)?;
        let server_id = routing
            .by_namespace
            .get(namespace)
            .ok_or_else(unknown)?
            .clone();
        let server = routing.servers.get(&server_id).ok_or_else(unknown)?.clone();
        let decision = routing.table.decide(dir, &name, &server_id);
        let mut record = pb::AuditRecord {
            tool: name.clone(),
            downstream_server_id: server_id.clone(),
            ..Default::default()
        };
        let (rule_id, scope) = match &decision {
            Decision::Allow {
                workspace_id,
                rule_id,
                scope_id,
                ..
            } => {
                record.workspace_id = workspace_id.clone();
                record.route_rule_id = rule_id.clone();
                record.auth_scope_id = scope_id.clone().unwrap_or_default();
                (rule_id.clone(), scope_id.clone())
            }
            Decision::Deny {
                workspace_id,
                rule_id,
            } => {
                record.workspace_id = workspace_id.clone();
                record.route_rule_id = rule_id.clone();
                let err = CallError::denied(format!(
                    "tool {name} is denied by route rule {rule_id} in workspace {workspace_id}"
                ));
                self.audit(record, &params, None, Err(&err), started, false);
                return Err(err);
            }
            Decision::NoMatch { workspaces } => {
                record.workspace_id = workspaces.first().cloned().unwrap_or_default();
                let err = CallError::denied(format!(
                    "no route rule allows tool {name} (searched workspaces: {}); calls are denied unless a rule allows them",
                    workspaces.join(", ")
                ));
                self.audit(record, &params, None, Err(&err), started, false);
                return Err(err);
            }
        };
        let log_full =
            self.log_full || routing.routes.iter().any(|r| r.id == rule_id && r.log_full);
        if server.transport == "http" {
            let mut forwarded = params.clone();
            forwarded["name"] = Value::String(tool.to_owned());
            let mut credential = None;
            let outcome = match self
                .credential(&server, scope.clone(), &name, &rule_id)
                .await
            {
                Err(err) => Err(err),
                Ok(released) => {
                    credential = released;
                    match self.session(&server, scope).await {
                        Err(err) => Err(err),
                        Ok(session) => {
                            // Cancelling an HTTP call drops its request; the
                            // server sees the connection close.
                            let mut cancel = cancel.clone();
                            tokio::select! {
                                answer = session.request(
                                    "tools/call",
                                    forwarded,
                                    credential.as_ref(),
                                    call_timeout(&server),
                                ) => answer
                                    .map_err(CallError::from)
                                    .and_then(|answer| answer.map_err(CallError::from_downstream))
                                    .map(|result| scrub_tool_error(result, credential.as_ref()))
                                    .map_err(|e| e.scrubbed(credential.as_ref())),
                                Ok(_) = cancel.wait_for(|c| *c) => Err(CallError::from(DownstreamError::Cancelled {
                                    server: server.id.clone(),
                                })),
                            }
                        }
                    }
                }
            };
            self.audit(
                record,
                &params,
                credential.as_ref(),
                outcome.as_ref(),
                started,
                log_full,
            );
            return outcome;
        }
        let mut forwarded = params.clone();
        forwarded["name"] = Value::String(tool.to_owned());
        let mut credential = None;
        let mut outcome = Err(CallError::new(INTERNAL_ERROR, "not attempted"));
        // A child found dead before the request reached it (it crashed or
        // was killed since the last call) is replaced once; a request that
        // reached a child is never sent twice.
        for _attempt in 0..2 {
            let child = match self.child(&server, scope.clone(), &name, &rule_id).await {
                Ok((child, released)) => {
                    credential = released;
                    child
                }
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            };
            outcome = match child
                .request_cancellable(
                    "tools/call",
                    forwarded.clone(),
                    call_timeout(&server),
                    Some(cancel.clone()),
                )
                .await
            {
                Ok(Ok(result)) => Ok(scrub_tool_error(result, credential.as_ref())),
                Ok(Err(error)) => {
                    Err(CallError::from_downstream(error).scrubbed(credential.as_ref()))
                }
                Err(err @ DownstreamError::NotSent { .. }) => {
                    outcome = Err(CallError::from(err));
                    continue;
                }
                Err(err) => Err(CallError::from(err)),
            };
            break;
        }
        self.audit(
            record,
            &params,
            credential.as_ref(),
            outcome.as_ref(),
            started,
            log_full,
        );
        outcome
    }

    /// Sends the call's audit record, redacted with the scope's hints and
    /// scrubbed of every released value, without delaying the answer.
    fn audit(
        &self,
        mut record: pb::AuditRecord,
        params: &Value,
        credential: Option<&Released>,
        outcome: Result<&Value, &CallError>,
        started: Instant,
        log_full: bool,
    ) {
        let hints = credential.map(|c| c.hints.clone()).unwrap_or_default();
        let nothing = Scrub::default();
        let scrub = credential.map_or(&nothing, Released::scrub);
        let mut arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
        redact(&mut arguments, &hints, scrub);
        // The tool's name is the client's text too.
        record.tool = scrub.text(&record.tool);
        record.params = arguments.to_string();
        record.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok(result) => {
                let is_error = result
                    .get("isError")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                record.status = if is_error { "error" } else { "success" }.into();
                if log_full {
                    // Full logging: the response too, redacted the same way.
                    let mut response = result.clone();
                    redact(&mut response, &hints, scrub);
                    record.response = response.to_string();
                }
            }
            Err(err) => {
                record.status = if err.denied { "denied" } else { "error" }.into();
                record.error = scrub.text(&err.message);
            }
        }
        let sender = self
            .audit_tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = sender.as_ref() {
            let _ = tx.send(record);
        }
    }

    /// Stops every child and delivers the audit records still queued
    /// (waiting at most 10 s for an unreachable vault).
    pub async fn shutdown(&self) {
        let children: Vec<Arc<Downstream>> =
            self.children.lock().await.drain().map(|(_, c)| c).collect();
        for child in children {
            child.stop().await;
        }
        let sessions: Vec<Arc<HttpDownstream>> =
            self.sessions.lock().await.drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.stop().await;
        }
        self.audit_tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = self.audit_task.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
        {
            tracing::warn!("audit records could not all be delivered to the vault before exit");
        }
    }
}

/// The downstreams of one server, whatever their scope.
fn of_server<T>(map: &HashMap<ChildKey, Arc<T>>, server_id: &str) -> Vec<Arc<T>> {
    map.iter()
        .filter(|((server, _), _)| server == server_id)
        .map(|(_, downstream)| downstream.clone())
        .collect()
}

fn call_timeout(server: &pb::DownstreamServer) -> Duration {
    Duration::from_secs(u64::from(server.call_timeout_sec.max(1)))
}

/// The directory of the first `file://` root in a `roots/list` result,
/// canonical when it exists here.
fn first_root(result: &Value) -> Result<PathBuf, String> {
    let roots = result
        .get("roots")
        .and_then(Value::as_array)
        .ok_or("no roots array")?;
    let uri = roots
        .iter()
        .filter_map(|r| r.get("uri").and_then(Value::as_str))
        .find(|uri| uri.starts_with("file://"))
        .ok_or("no file:// root")?;
    let path = file_uri_path(uri).ok_or_else(|| format!("{uri:?} is not a local file URI"))?;
    Ok(path.canonicalize().unwrap_or(path))
}

/// The path of a `file://` URI with an empty or `localhost` host,
/// percent-decoded; `None` for another host, a relative path or a NUL.
fn file_uri_path(uri: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let rest = uri.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let mut bytes = Vec::with_capacity(rest.len());
    let mut input = rest.bytes();
    while let Some(b) = input.next() {
        if b == b'%' {
            let hex = [input.next()?, input.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    if bytes.contains(&0) {
        return None;
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_become_paths() {
        let cases = [
            ("file:///home/a/proj", Some("/home/a/proj")),
            ("file://localhost/srv/x", Some("/srv/x")),
            ("file:///tmp/my%20dir", Some("/tmp/my dir")),
            ("file:///tmp/d?q=1#f", Some("/tmp/d")),
            ("file://otherhost/x", None),
            ("file://relative", None),
            ("file:///bad%2", None),
            ("file:///nul%00x", None),
            ("https://example.com/x", None),
        ];
        for (uri, want) in cases {
            assert_eq!(file_uri_path(uri), want.map(PathBuf::from), "{uri}");
        }
    }

    #[test]
    fn the_first_file_root_is_taken() {
        let result = json!({"roots": [
            {"uri": "https://example.com/"},
            {"uri": "file:///nonexistent-root-for-test/a", "name": "a"},
            {"uri": "file:///nonexistent-root-for-test/b"},
        ]});
        assert_eq!(
            first_root(&result).unwrap(),
            PathBuf::from("/nonexistent-root-for-test/a")
        );
        assert!(first_root(&json!({"roots": []})).is_err());
        assert!(first_root(&json!({})).is_err());
    }
}
