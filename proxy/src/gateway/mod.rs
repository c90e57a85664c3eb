//! The gateway core of one client session: the client's JSON-RPC messages
//! in, routed requests out.
//!
//! * [`message`] parses each client message once into a typed method.
//! * [`session`] is the client side: what it declared, its workspace
//!   directory, its requests in flight, the gateway's requests to it.
//! * [`pool`] is the downstream side: a [`Downstream`] per (server, scope),
//!   credentials released per use and injected, restarts.
//! * [`lists`] aggregates the servers' tools, prompts, resources and
//!   resource templates under exposed names; [`forward`] routes one request
//!   by those names through the route rules and audits it.
//!
//! Server→client traffic (progress, log messages, resource updates, list
//! changes, sampling, elicitation and roots requests) comes back as
//! [`Event`]s and is relayed only to this session, and only what the
//! session's calls and subscriptions make its own.
//!
//! Trust: the client is untrusted. What it may reach is decided by the
//! route rules and, for credentials, by the vault from our uid.

mod era;
mod error;
mod forward;
mod lists;
mod message;
mod pool;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcplexer_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

pub use crate::downstream::Sink;
use crate::downstream::{Downstream, Event, ListKind};
use crate::vault::{VaultError, VaultLink};
use era::Era;
pub use era::{
    HEADER_MISMATCH, MODERN_VERSIONS, UNSUPPORTED_VERSION, all_versions, stateless_version,
};
use error::{CallError, INVALID_REQUEST, METHOD_NOT_FOUND, response};
use message::{Incoming, Invalid, Method, Notification};
use pool::{Pool, call_timeout};
use session::{ClientSession, Listener};

/// Protocol versions the proxy speaks to clients, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// How long `initialize` waits for the servers' instructions (each
/// server is started as the first listing would start it).
const INSTRUCTIONS_WAIT: Duration = Duration::from_secs(5);

/// Log messages relayed per server per second at most; the rest are
/// dropped (a chatty server cannot flood the client).
const LOG_RATE: u32 = 100;

/// The gateway of one client session.
pub struct Gateway {
    vault: Arc<VaultLink>,
    session: ClientSession,
    pool: Pool,
    /// Record every call's (redacted) response, whatever the rule says.
    log_full: bool,
    /// Where the exposed resource URIs and templates lead.
    resources: std::sync::Mutex<lists::ResourceIndex>,
    /// Resources the client subscribed to: (server id, URI at the server)
    /// to the URI the client knows.
    subscriptions: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    /// Log messages relayed per server in the current second.
    log_budget: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
    /// Redacted audit records, sent to the vault in order by one task that
    /// [`Gateway::shutdown`] waits for, so none is lost at exit.
    audit_tx: std::sync::Mutex<Option<mpsc::UnboundedSender<pb::AuditRecord>>>,
    audit_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Gateway {
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
        Self::with_session(vault, ClientSession::new(cwd, use_roots, out), log_full)
    }

    /// A gateway for stateless (2026-07-28) requests only: what `serve`
    /// answers requests without a session with.
    pub fn stateless(
        vault: Arc<VaultLink>,
        cwd: PathBuf,
        log_full: bool,
        out: mpsc::UnboundedSender<Value>,
    ) -> Arc<Self> {
        Self::with_session(vault, ClientSession::stateless(cwd, out), log_full)
    }

    fn with_session(vault: Arc<VaultLink>, session: ClientSession, log_full: bool) -> Arc<Self> {
        let (events, mut rx) = mpsc::unbounded_channel();
        let (audit_tx, audit_rx) = mpsc::unbounded_channel::<pb::AuditRecord>();
        let audit_task = tokio::spawn(deliver_audit(vault.clone(), audit_rx));
        let gateway = Arc::new(Self {
            pool: Pool::new(vault.clone(), events),
            vault,
            session,
            log_full,
            resources: std::sync::Mutex::default(),
            subscriptions: std::sync::Mutex::default(),
            log_budget: std::sync::Mutex::default(),
            audit_tx: std::sync::Mutex::new(Some(audit_tx)),
            audit_task: Mutex::new(Some(audit_task)),
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
                gateway.pool.stop_idle().await;
            }
        });
        let weak = Arc::downgrade(&gateway);
        let mut routing = gateway.vault.subscribe();
        tokio::spawn(async move {
            while routing.changed().await.is_ok() {
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                gateway.pool.retire_changed().await;
                gateway.notify_changed(&ListKind::ALL);
            }
        });
        // While the vault is away no credential is released, so what the
        // client can list shrinks; it is told (and told again when the
        // vault is back, by the configuration reloaded above).
        let weak = Arc::downgrade(&gateway);
        let mut reachable = gateway.vault.watch_reachable();
        tokio::spawn(async move {
            while reachable.changed().await.is_ok() {
                let Some(gateway) = weak.upgrade() else {
                    return;
                };
                if !*reachable.borrow_and_update() {
                    gateway.notify_changed(&ListKind::ALL);
                }
            }
        });
        gateway
    }

    /// Tells the client that lists it may have read changed: on the
    /// session's stream, or for a stateless client on each of its listen
    /// streams that asked for that list.
    fn notify_changed(&self, kinds: &[ListKind]) {
        let mut methods: Vec<(&str, &str)> = Vec::new();
        for kind in kinds {
            let asked = match kind {
                ListKind::Tools => "toolsListChanged",
                ListKind::Prompts => "promptsListChanged",
                ListKind::Resources | ListKind::Templates => "resourcesListChanged",
            };
            if !methods.iter().any(|(m, _)| *m == kind.changed()) {
                methods.push((kind.changed(), asked));
            }
        }
        if self.session.era() != Some(Era::Modern) {
            // Not before the client is initialised (it lists what there is
            // then); not at all to one that has not begun.
            if !self.session.is_ready() {
                return;
            }
            for (method, _) in methods {
                self.session
                    .send(json!({"jsonrpc": "2.0", "method": method}), None);
            }
            return;
        }
        for listener in self.session.listeners() {
            for (method, asked) in &methods {
                if listener.filter.get(*asked).and_then(Value::as_bool) == Some(true) {
                    let note = json!({"jsonrpc": "2.0", "method": method, "params": {
                        "_meta": {era::META_SUBSCRIPTION: listener.id}}});
                    self.session.send(note, listener.sink.as_ref());
                }
            }
        }
    }

    /// Ends every open listen stream (its client is going away).
    pub fn close_streams(&self) {
        for listener in self.session.listeners() {
            self.session.cancel(&listener.key);
        }
    }

    /// Cancels a request handled with [`Gateway::handle_keyed`], as
    /// `notifications/cancelled` would (a stateless HTTP client cancels by
    /// closing the request's stream).
    pub fn cancel(&self, key: &str) {
        self.session.cancel(key);
    }

    /// `subscriptions/listen`: acknowledges what is honoured on the
    /// request's stream, then keeps it open for list changes until the
    /// client cancels it (it then gets no response).
    async fn listen(
        &self,
        id: &Value,
        key: &str,
        params: &Value,
        sink: Option<Sink>,
    ) -> Result<Value, CallError> {
        let filter = era::honoured(params.get("notifications").unwrap_or(&Value::Null));
        let Some((_live, mut cancel)) = self.session.begin(key, "", None, sink.clone()) else {
            return Err(CallError::new(
                INVALID_REQUEST,
                format!("request id {id} is already in use by a request in flight"),
            ));
        };
        let listener = Listener {
            id: id.clone(),
            key: key.to_owned(),
            filter: filter.clone(),
            sink: sink.clone(),
        };
        if !self.session.listen(listener) {
            return Err(CallError::new(
                error::INTERNAL_ERROR,
                "too many listen streams are open in this session",
            ));
        }
        let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": filter, "_meta": {era::META_SUBSCRIPTION: id}}});
        self.session.send(ack, sink.as_ref());
        let _ = cancel.wait_for(|c| *c).await;
        self.session.unlisten(key);
        Err(CallError {
            cancelled: true,
            ..CallError::new(error::INTERNAL_ERROR, "cancelled")
        })
    }

    async fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Stopped(child) => self.pool.reap(&child).await,
            Event::Reachable { .. } => self.notify_changed(&ListKind::ALL),
            Event::Changed { server_id, lists } => self.relist(&server_id, lists).await,
            Event::Progress { server_id, message } => self.relay_progress(&server_id, &message),
            Event::Note { server_id, message } => self.relay_note(&server_id, message),
            Event::Ask {
                server_id,
                request,
                related,
                reply,
            } => {
                let gateway = self.clone();
                tokio::spawn(async move {
                    let answer = gateway.relay_ask(&server_id, request, related).await;
                    let _ = reply.send(answer);
                });
            }
        }
    }

    /// A server said some of its lists changed: re-list what the client
    /// has seen, and tell it only when a list really changed (servers
    /// announce changes they did not make).
    async fn relist(&self, server_id: &str, kinds: &[ListKind]) {
        let mut changed = Vec::new();
        for downstream in self.pool.of_server(server_id).await {
            for &kind in kinds {
                // A list never read is being read right now (or will be on
                // first use): nothing the client has seen changed.
                let Some(before) = downstream.lists().get(kind) else {
                    continue;
                };
                if downstream.spec().transport == "http" {
                    // Its headers come with the next credential: read again
                    // on the next listing.
                    downstream.lists().forget(kind);
                    changed.push(kind);
                    continue;
                }
                match downstream.list(kind, None, Duration::from_secs(30)).await {
                    Ok(after) if after != before => changed.push(kind),
                    _ => {}
                }
            }
        }
        self.notify_changed(&changed);
    }

    /// Relays a progress notification while the request that carries its
    /// token runs, and only from the server that request went to: never
    /// after completion, never a token the client did not send, never one
    /// server speaking for another.
    fn relay_progress(&self, server_id: &str, message: &Value) {
        let Some(token) = message.pointer("/params/progressToken") else {
            return;
        };
        let Some(live) = self.session.by_progress(&token.to_string()) else {
            return;
        };
        if live.server_id != server_id {
            return;
        }
        // Rebuilt from the fields progress has, not passed through, under
        // the client's own token.
        let mut params = serde_json::Map::new();
        if let Some(token) = live.client_token {
            params.insert("progressToken".into(), token);
        }
        for field in ["progress", "total", "message"] {
            if let Some(value) = message.pointer(&format!("/params/{field}")) {
                params.insert(field.to_owned(), value.clone());
            }
        }
        let note = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params});
        self.session.send(note, live.sink.as_ref());
    }

    /// The name a server goes by towards the client: its tool namespace.
    fn label(&self, server_id: &str) -> String {
        self.vault
            .routing()
            .servers
            .get(server_id)
            .map_or_else(|| server_id.to_owned(), |s| s.tool_namespace.clone())
    }

    /// Relays a log message (its logger named after the server, at most
    /// [`LOG_RATE`] a second per server), a resource update the client
    /// subscribed to (under the URI the client knows), or the end of a URL
    /// elicitation.
    fn relay_note(&self, server_id: &str, mut message: Value) {
        // A stateless client gets log messages only on the stream of a
        // request that asked for them, and resource updates only on a
        // listen stream that asked for them: neither is relayed in this era
        // yet, and nothing is sent unasked.
        if self.session.era() == Some(Era::Modern) {
            return;
        }
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match method.as_str() {
            "notifications/message" => {
                if !self.log_allowed(server_id) {
                    return;
                }
                let label = self.label(server_id);
                let logger = match message.pointer("/params/logger").and_then(Value::as_str) {
                    Some(logger) => format!("{label}/{logger}"),
                    None => label,
                };
                if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
                    params.insert("logger".into(), Value::String(logger));
                } else {
                    return;
                }
            }
            "notifications/resources/updated" => {
                let Some(uri) = message.pointer("/params/uri").and_then(Value::as_str) else {
                    return;
                };
                let known = self
                    .subscriptions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&(server_id.to_owned(), uri.to_owned()))
                    .cloned();
                let Some(exposed) = known else { return };
                message["params"]["uri"] = Value::String(exposed);
            }
            "notifications/elicitation/complete" => {}
            _ => return,
        }
        message["jsonrpc"] = Value::String("2.0".into());
        self.session.send(message, None);
    }

    fn log_allowed(&self, server_id: &str) -> bool {
        let now = std::time::Instant::now();
        let mut budget = self
            .log_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (since, count) = budget.entry(server_id.to_owned()).or_insert((now, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *count = 0;
        }
        *count += 1;
        if *count == LOG_RATE + 1 {
            tracing::warn!(server = %server_id, "more than {LOG_RATE} log messages a second; dropping the rest of this second's");
        }
        *count <= LOG_RATE
    }

    /// Relays a server's request to the client and returns the response
    /// for the server (with the server's own id). The client must have
    /// declared what the request needs; an elicitation says which server
    /// asks, and a sampling request sees no other server's context.
    async fn relay_ask(&self, server_id: &str, request: Value, related: Option<Sink>) -> Value {
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut params = request.get("params").cloned().unwrap_or_else(|| json!({}));
        let refuse = |code: i64, message: String| json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
        let needs = match method.as_str() {
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            "roots/list" => "roots",
            _ => {
                return refuse(
                    METHOD_NOT_FOUND,
                    format!("{method} is not relayed by mcplexer-proxy"),
                );
            }
        };
        // Only a session client that declared the capability, once it is
        // initialised; a stateless client has no server-initiated requests.
        if self.session.era() != Some(Era::Legacy) || self.session.declared(needs).is_none() {
            return refuse(
                METHOD_NOT_FOUND,
                format!("the client does not support {needs}"),
            );
        }
        if !self.session.is_ready() {
            return refuse(
                error::INTERNAL_ERROR,
                "the client is not initialised yet".to_owned(),
            );
        }
        let context = params.get("includeContext").and_then(Value::as_str);
        match method.as_str() {
            "sampling/createMessage" if context.is_some_and(|c| c != "none") => {
                params["includeContext"] = Value::String("none".into());
            }
            "elicitation/create" => {
                let label = self.label(server_id);
                if let Some(text) = params.get("message").and_then(Value::as_str) {
                    params["message"] = Value::String(format!("[{label}] {text}"));
                }
            }
            _ => {}
        }
        let timeout = self
            .vault
            .routing()
            .servers
            .get(server_id)
            .map_or(Duration::from_secs(60), call_timeout);
        let sink = related.or_else(|| self.session.stream_of(server_id));
        match self
            .session
            .ask(&method, params, sink.as_ref(), timeout)
            .await
        {
            Ok(mut answer) => {
                let mut reply = json!({"jsonrpc": "2.0", "id": id});
                if let Some(error) = answer.get_mut("error") {
                    reply["error"] = error.take();
                } else {
                    reply["result"] = answer
                        .get_mut("result")
                        .map_or_else(|| json!({}), Value::take);
                }
                reply
            }
            Err(why) => refuse(error::INTERNAL_ERROR, why),
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
        self.handle_keyed(message, sink, None).await
    }

    /// Like [`Gateway::handle_in`], tracking a request by `key` instead of
    /// its id: for requests of different clients that share this gateway
    /// (stateless HTTP requests), whose ids may be the same. Such a request
    /// is cancelled with [`Gateway::cancel`].
    pub async fn handle_keyed(
        self: &Arc<Self>,
        message: Value,
        sink: Option<Sink>,
        key: Option<String>,
    ) -> Option<Value> {
        let (id, method, params) = match Incoming::parse(message) {
            Ok(Incoming::Request { id, method, params }) => (id, method, params),
            Ok(Incoming::Notification { method, params }) => {
                self.on_notification(method, &params).await;
                return None;
            }
            Ok(Incoming::Response(response)) => {
                self.session.answered(response);
                return None;
            }
            Err(Invalid::NullId) => {
                return Some(response(
                    &Value::Null,
                    Err(CallError::new(
                        INVALID_REQUEST,
                        "request id must not be null",
                    )),
                ));
            }
            // Neither a request nor a notification: nothing to answer.
            Err(Invalid::Shapeless) => return None,
        };
        let era = match era::of_request(&params).and_then(|era| {
            self.session.adopt(era)?;
            Ok(era)
        }) {
            Ok(era) => era,
            Err(err) => return Some(response(&id, Err(err))),
        };
        // Methods of one era only: the stateless revision has no handshake,
        // ping, log level or resource subscriptions (and a stateless gateway
        // is shared, so none of them may change it); listen streams are the
        // stateless revision's, and one over HTTP needs the request's own
        // stream.
        let removed = match era {
            Era::Modern => matches!(
                method,
                Method::Initialize
                    | Method::Ping
                    | Method::SetLevel
                    | Method::ResourcesSubscribe
                    | Method::ResourcesUnsubscribe
            ),
            Era::Legacy => method == Method::Listen,
        };
        if removed {
            let err = CallError::new(
                METHOD_NOT_FOUND,
                format!(
                    "{} is not part of the protocol revision this request speaks",
                    method.name()
                ),
            );
            return Some(response(&id, Err(err)));
        }
        if method == Method::Listen && key.is_some() && sink.is_none() {
            let err = CallError::new(
                INVALID_REQUEST,
                "subscriptions/listen needs its own event stream (Accept: text/event-stream)",
            );
            return Some(response(&id, Err(err)));
        }
        let key = key.unwrap_or_else(|| id.to_string());
        let result = match &method {
            Method::Initialize => {
                let mut result = self.initialize(&params);
                // A client whose roots pick its workspace cannot be asked
                // for them before it is initialised: its servers are not
                // known yet.
                if !self.session.roots_pick() {
                    let dir = self.session.cwd.clone();
                    if let Some(text) = self.instructions(&dir, true).await {
                        result["instructions"] = Value::String(text);
                    }
                }
                Ok(result)
            }
            Method::Ping => Ok(json!({})),
            Method::Discover => {
                // Answered at once (a slow answer reads as "no stateless
                // support" to a probing client): only what running servers
                // said.
                let mut result = era::discover();
                let dir = self.session.cwd.clone();
                if let Some(text) = self.instructions(&dir, false).await {
                    result["instructions"] = Value::String(text);
                }
                Ok(result)
            }
            Method::Listen => {
                let result = self.listen(&id, &key, &params, sink).await;
                if result.as_ref().is_err_and(|e| e.cancelled) {
                    return None;
                }
                result
            }
            Method::ToolsList => self.list(ListKind::Tools, &params, sink.as_ref()).await,
            Method::PromptsList => self.list(ListKind::Prompts, &params, sink.as_ref()).await,
            Method::ResourcesList => self.list(ListKind::Resources, &params, sink.as_ref()).await,
            Method::ResourceTemplatesList => {
                self.list(ListKind::Templates, &params, sink.as_ref()).await
            }
            Method::SetLevel => self.set_level(&params, sink.as_ref()).await,
            Method::ToolsCall
            | Method::PromptsGet
            | Method::ResourcesRead
            | Method::ResourcesSubscribe
            | Method::ResourcesUnsubscribe
            | Method::Complete => {
                let result = self.forward(&id, &key, &method, params, sink).await;
                // A cancelled request gets no response (MCP cancellation).
                if result.as_ref().is_err_and(|e| e.cancelled) {
                    return None;
                }
                result
            }
            Method::Unknown(other) => Err(CallError::new(
                METHOD_NOT_FOUND,
                format!("method {other} is not served by mcplexer-proxy"),
            )),
        };
        let result = match era {
            // The stateless revision retired -32002: a missing resource is
            // invalid params there.
            Era::Modern => result.map(|r| era::complete(r, &method)).map_err(|mut e| {
                if e.code == error::RESOURCE_NOT_FOUND {
                    e.code = error::INVALID_PARAMS;
                }
                e
            }),
            Era::Legacy => result,
        };
        Some(response(&id, result))
    }

    async fn on_notification(&self, method: Notification, params: &Value) {
        match method {
            Notification::Cancelled => {
                if let Some(request) = params.get("requestId") {
                    self.session.cancel(&request.to_string());
                }
            }
            Notification::RootsChanged => {
                if self.session.roots_changed().await {
                    // The rules that apply may differ.
                    self.notify_changed(&ListKind::ALL);
                }
                // Servers that were told the client has roots ask again.
                if self.session.declared("roots").is_some() {
                    for (_, downstream) in self.pool.all().await {
                        if downstream.initialized().is_some()
                            && downstream.spec().transport != "http"
                        {
                            downstream
                                .notify("notifications/roots/list_changed", json!({}), None)
                                .await;
                        }
                    }
                }
            }
            Notification::Initialized => self.session.set_ready(),
            Notification::Other => {}
        }
    }

    fn initialize(&self, params: &Value) -> Value {
        let capabilities = params.get("capabilities").cloned().unwrap_or(Value::Null);
        self.session.declare(&capabilities);
        // Declared to downstreams: only what the client declared and the
        // gateway relays.
        let mut relayed = serde_json::Map::new();
        for name in ["sampling", "elicitation", "roots"] {
            if let Some(value) = capabilities.get(name).filter(|v| v.is_object()) {
                relayed.insert(name.to_owned(), value.clone());
            }
        }
        self.pool
            .update_hello(|hello| hello.capabilities = Value::Object(relayed));
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
            "capabilities": {
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"subscribe": true, "listChanged": true},
                "completions": {},
                "logging": {},
            },
            "serverInfo": {"name": "mcplexer-proxy", "version": env!("CARGO_PKG_VERSION")},
        })
    }

    /// The instructions of the servers this client may reach from `dir`,
    /// each under a heading with its namespace; with `start`, servers not
    /// running yet are started (within [`INSTRUCTIONS_WAIT`] in all).
    async fn instructions(self: &Arc<Self>, dir: &std::path::Path, start: bool) -> Option<String> {
        let routing = self.vault.routing();
        let mut tasks = tokio::task::JoinSet::new();
        for server in routing.servers.values() {
            let Some((scope, rule)) = lists::listing_scope(&routing, dir, &server.id) else {
                continue;
            };
            let (gateway, server) = (self.clone(), server.clone());
            tasks.spawn(async move {
                let target = pool::Target {
                    server: &server,
                    scope,
                    name: "",
                    rule: &rule,
                };
                let text = if start {
                    gateway.started_instructions(&target).await
                } else {
                    gateway.pool.running_instructions(&target).await
                };
                text.map(|text| (server.tool_namespace.clone(), text))
            });
        }
        let mut found = Vec::new();
        let deadline = tokio::time::Instant::now() + INSTRUCTIONS_WAIT;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
            if let Ok(Some(one)) = done {
                found.push(one);
            }
        }
        found.sort();
        let text: Vec<String> = found
            .into_iter()
            .map(|(namespace, text)| format!("## {namespace}\n\n{text}"))
            .collect();
        (!text.is_empty()).then(|| text.join("\n\n"))
    }

    /// A server's instructions, starting (or initialising) it if need be.
    async fn started_instructions(&self, target: &pool::Target<'_>) -> Option<String> {
        let (downstream, credential) = self.pool.acquire(target).await.ok()?;
        if downstream.initialized().is_none() {
            let call =
                crate::downstream::Call::plain(credential.as_ref(), call_timeout(target.server));
            let _ = downstream.request("ping", json!({}), call).await;
        }
        lists::instructions_of(&*downstream)
    }

    /// `logging/setLevel`: remembered for downstreams made later, and sent
    /// to every running one that declares logging.
    async fn set_level(&self, params: &Value, sink: Option<&Sink>) -> Result<Value, CallError> {
        const LEVELS: [&str; 8] = [
            "debug",
            "info",
            "notice",
            "warning",
            "error",
            "critical",
            "alert",
            "emergency",
        ];
        let level = params
            .get("level")
            .and_then(Value::as_str)
            .filter(|l| LEVELS.contains(l))
            .ok_or_else(|| {
                CallError::new(
                    error::INVALID_PARAMS,
                    format!("level must be one of {}", LEVELS.join(", ")),
                )
            })?;
        self.pool
            .update_hello(|hello| hello.log_level = Some(level.to_owned()));
        let dir = self.session.workspace_dir(sink).await;
        for (key, downstream) in self.pool.all().await {
            if !downstream.declares("logging") {
                continue;
            }
            if downstream.spec().transport == "http" {
                // Its request needs the scope's headers: released through
                // the rule that lists the server, as a listing is.
                self.set_level_http(&key, &*downstream, &dir, level).await;
            } else {
                let timeout = call_timeout(downstream.spec());
                let call = crate::downstream::Call::plain(None, timeout);
                let _ = downstream
                    .request("logging/setLevel", json!({"level": level}), call)
                    .await;
            }
        }
        Ok(json!({}))
    }

    async fn set_level_http(
        &self,
        key: &pool::Key,
        downstream: &dyn Downstream,
        dir: &std::path::Path,
        level: &str,
    ) {
        let routing = self.vault.routing();
        let Some((scope, rule)) = lists::listing_scope(&routing, dir, &key.0) else {
            return;
        };
        if scope != key.1 {
            return;
        }
        let target = pool::Target {
            server: downstream.spec(),
            scope,
            name: "",
            rule: &rule,
        };
        let Ok(credential) = self.pool.credential(&target).await else {
            return;
        };
        let call = crate::downstream::Call::plain(credential.as_ref(), call_timeout(target.server));
        let _ = downstream
            .request("logging/setLevel", json!({"level": level}), call)
            .await;
    }

    /// Sends an audit record to the vault without delaying the answer.
    fn submit_audit(&self, record: pb::AuditRecord) {
        let sender = self
            .audit_tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = sender.as_ref() {
            let _ = tx.send(record);
        }
    }

    /// Stops every downstream and delivers the audit records still queued
    /// (waiting at most 10 s for an unreachable vault).
    pub async fn shutdown(&self) {
        self.pool.shutdown().await;
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

/// Sends the audit records to the vault in order. While the vault is
/// unreachable (restarting), keeps the record and retries; a refusal is
/// final. Delivery is at least once: a vault that dies after storing a
/// record but before answering gets it again.
async fn deliver_audit(
    vault: Arc<VaultLink>,
    mut records: mpsc::UnboundedReceiver<pb::AuditRecord>,
) {
    while let Some(record) = records.recv().await {
        let mut backoff = Duration::from_millis(100);
        loop {
            match vault.audit(record.clone()).await {
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
}
