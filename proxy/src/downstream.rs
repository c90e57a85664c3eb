//! What every downstream MCP server is to the gateway, whatever its
//! transport: the [`Downstream`] trait that the stdio child
//! ([`crate::child::StdioDownstream`]) and the streamable-HTTP session
//! ([`crate::http::HttpDownstream`]) implement, the [`Event`]s they report,
//! and the handling of a server's own messages that both share.
//!
//! Trust: a downstream is as trusted as its configured command or URL. What
//! it sends on its own (notifications, requests to the client) is passed to
//! the gateway as an [`Event`]; the gateway decides what reaches the client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mcplexer_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::vault::Released;

/// The session-era protocol version the proxy speaks to downstreams.
pub const DOWNSTREAM_PROTOCOL: &str = "2025-11-25";

/// The stateless protocol version the proxy speaks to downstreams that
/// have it.
pub const STATELESS_PROTOCOL: &str = "2026-07-28";

/// How long a request to `server` may take.
pub fn call_timeout(server: &pb::DownstreamServer) -> Duration {
    Duration::from_secs(u64::from(server.call_timeout_sec.max(1)))
}

/// The era of a connection, on either side of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// 2025-11-25 and before: `initialize`, then requests.
    Legacy,
    /// 2026-07-28: stateless requests.
    Modern,
}

/// Pages of one list read from one downstream at most.
const MAX_PAGES: usize = 64;

/// Where messages about one client request go (its own response stream,
/// on streamable HTTP), before its response.
pub type Sink = mpsc::UnboundedSender<Value>;

/// A boxed future, so that [`Downstream`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A downstream's answer to a request: `Ok(Ok(result))`, `Ok(Err(error
/// object))` for a JSON-RPC error, `Err` when no answer came.
pub type Answer = Result<Result<Value, Value>, DownstreamError>;

/// The lists a server serves, each read in pages and cached per downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `tools/list`.
    Tools,
    /// `prompts/list`.
    Prompts,
    /// `resources/list`.
    Resources,
    /// `resources/templates/list`.
    Templates,
}

impl ListKind {
    /// Every list.
    pub const ALL: [Self; 4] = [Self::Tools, Self::Prompts, Self::Resources, Self::Templates];

    /// The method that reads it.
    pub fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::Templates => "resources/templates/list",
        }
    }

    /// The field of the result that holds it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::Templates => "resourceTemplates",
        }
    }

    /// The server capability that says it is served.
    pub fn capability(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources | Self::Templates => "resources",
        }
    }

    /// The notification that says it changed.
    pub fn changed(self) -> &'static str {
        match self {
            Self::Tools => "notifications/tools/list_changed",
            Self::Prompts => "notifications/prompts/list_changed",
            Self::Resources | Self::Templates => "notifications/resources/list_changed",
        }
    }

    /// The list a change notification names.
    fn of_change(method: &str) -> Option<&'static [Self]> {
        match method {
            "notifications/tools/list_changed" => Some(&[Self::Tools]),
            "notifications/prompts/list_changed" => Some(&[Self::Prompts]),
            "notifications/resources/list_changed" => Some(&[Self::Resources, Self::Templates]),
            _ => None,
        }
    }
}

/// A downstream's lists as last read (original names), per list.
#[derive(Default)]
pub struct Lists(std::sync::Mutex<HashMap<ListKind, Vec<Value>>>);

impl Lists {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ListKind, Vec<Value>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The list as last read, if it was.
    pub fn get(&self, kind: ListKind) -> Option<Vec<Value>> {
        self.lock().get(&kind).cloned()
    }

    /// Records a list as read.
    pub fn set(&self, kind: ListKind, items: Vec<Value>) {
        self.lock().insert(kind, items);
    }

    /// Forgets a list, so that the next use reads it again.
    pub fn forget(&self, kind: ListKind) {
        self.lock().remove(&kind);
    }

    /// Whether any list was read (and so shown to the client).
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }
}

/// What the gateway declares to a downstream when it initialises it: the
/// client-side capabilities the client itself declared and the gateway can
/// relay (sampling, elicitation, roots), and the log level the client set.
#[derive(Clone, Debug, Default)]
pub struct Hello {
    /// The capabilities to declare.
    pub capabilities: Value,
    /// The `logging/setLevel` level to send once initialised, if any.
    pub log_level: Option<String>,
}

impl Hello {
    /// The `_meta` every stateless request to a downstream carries: the
    /// proxy's own envelope, never the client's. No client capability is
    /// declared in this era (input requests are not relayed to it yet).
    pub fn envelope(&self) -> serde_json::Map<String, Value> {
        let mut meta = serde_json::Map::new();
        meta.insert(
            "io.modelcontextprotocol/protocolVersion".into(),
            json!(STATELESS_PROTOCOL),
        );
        meta.insert(
            "io.modelcontextprotocol/clientCapabilities".into(),
            json!({}),
        );
        meta.insert(
            "io.modelcontextprotocol/clientInfo".into(),
            json!({"name": "mcplexer-proxy", "version": env!("CARGO_PKG_VERSION")}),
        );
        if let Some(level) = &self.log_level {
            meta.insert("io.modelcontextprotocol/logLevel".into(), json!(level));
        }
        meta
    }

    /// Params of a stateless request: `params` with the envelope in its
    /// `_meta` (beside what else is there, such as a progress token).
    pub fn enveloped(&self, mut params: Value) -> Value {
        if !params.is_object() {
            params = json!({});
        }
        let meta = params
            .as_object_mut()
            .map(|p| p.entry("_meta").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            meta.extend(self.envelope());
        }
        params
    }

    /// The `initialize` params.
    pub fn params(&self) -> Value {
        let capabilities = if self.capabilities.is_object() {
            self.capabilities.clone()
        } else {
            json!({})
        };
        json!({
            "protocolVersion": DOWNSTREAM_PROTOCOL,
            "capabilities": capabilities,
            "clientInfo": {"name": "mcplexer-proxy", "version": env!("CARGO_PKG_VERSION")},
        })
    }
}

/// What a request to a downstream carries besides its message.
pub struct Call<'a> {
    /// The values released for it, sent with it where the transport sends
    /// them per request (HTTP headers); a stdio child got them at start.
    pub credential: Option<&'a Released>,
    /// How long to wait for the answer.
    pub timeout: Duration,
    /// Turns true when the client cancels: the request is abandoned and
    /// the server told.
    pub cancel: Option<watch::Receiver<bool>>,
    /// Where the server's requests about this one go (the client request's
    /// own stream), where the transport tells which request they are about.
    pub related: Option<Sink>,
}

impl<'a> Call<'a> {
    /// A request with no cancellation and no related stream.
    pub fn plain(credential: Option<&'a Released>, timeout: Duration) -> Self {
        Self {
            credential,
            timeout,
            cancel: None,
            related: None,
        }
    }
}

/// A downstream MCP server, whatever its transport.
pub trait Downstream: Send + Sync {
    /// Its server id.
    fn server_id(&self) -> &str;
    /// The server as configured when this downstream was made: credentials
    /// go to it only while the configuration still says so.
    fn spec(&self) -> &pb::DownstreamServer;
    /// Its lists as last read.
    fn lists(&self) -> &Lists;
    /// Its `initialize` result (capabilities, instructions), once it has
    /// been initialised.
    fn initialized(&self) -> Option<Value>;
    /// Sends a request and waits for its answer.
    fn request<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        call: Call<'a>,
    ) -> BoxFuture<'a, Answer>;
    /// Sends a notification.
    fn notify<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        credential: Option<&'a Released>,
    ) -> BoxFuture<'a, ()>;
}

impl dyn Downstream {
    /// Whether its `initialize` result declares `capability`.
    pub fn declares(&self, capability: &str) -> bool {
        self.initialized()
            .and_then(|init| {
                init.pointer(&format!("/capabilities/{capability}"))
                    .cloned()
            })
            .is_some_and(|c| !c.is_null())
    }

    /// Reads every page of a list (at most [`MAX_PAGES`]) and caches it; a
    /// JSON-RPC error ends the listing with what was read.
    pub async fn list(
        &self,
        kind: ListKind,
        credential: Option<&Released>,
        timeout: Duration,
    ) -> Result<Vec<Value>, DownstreamError> {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let result = match self
                .request(kind.method(), params, Call::plain(credential, timeout))
                .await?
            {
                Ok(result) => result,
                Err(error) => {
                    // Its code only: the message is the server's own text
                    // and may echo the credential it was given.
                    let code = error.get("code").and_then(Value::as_i64);
                    tracing::warn!(server = %self.server_id(), ?code, "{} failed", kind.method());
                    break;
                }
            };
            if let Some(list) = result.get(kind.field()).and_then(Value::as_array) {
                items.extend(list.iter().cloned());
            }
            cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
            if cursor.is_none() {
                break;
            }
        }
        self.lists().set(kind, items.clone());
        Ok(items)
    }
}

/// What a downstream tells the gateway on its own.
#[derive(Debug)]
pub enum Event {
    /// It said one of its lists changed.
    Changed {
        /// The server.
        server_id: String,
        /// The lists it named.
        lists: &'static [ListKind],
    },
    /// It sent `notifications/progress` (relayed while its token is live,
    /// and only from the server the call went to).
    Progress {
        /// The server that sent it.
        server_id: String,
        /// The notification as received.
        message: Value,
    },
    /// Another notification for the client: a log message, a resource
    /// update, the end of a URL elicitation.
    Note {
        /// The server that sent it.
        server_id: String,
        /// The notification as received.
        message: Value,
    },
    /// A request for the client (sampling, elicitation, roots): the
    /// gateway relays it and sends the client's answer (a whole JSON-RPC
    /// response with the server's id) on `reply`.
    Ask {
        /// The server that sent it.
        server_id: String,
        /// The request as received.
        request: Value,
        /// The stream of the client request it is about, if known.
        related: Option<Sink>,
        /// Where the answer goes.
        reply: oneshot::Sender<Value>,
    },
    /// A stdio child closed its output: it exited, or will be made to.
    Stopped(std::sync::Arc<crate::child::StdioDownstream>),
    /// What the client can reach of a server changed without the server
    /// saying so: it went away, or it may be started again.
    Reachable {
        /// The server.
        server_id: String,
    },
}

/// A message a downstream sent, sorted.
pub(crate) enum Inbound {
    /// A response to one of our requests (our ids are `u64`).
    Response(Option<u64>, Value),
    /// A request of its own. `ping` is answered here (the answer is in
    /// `reply`); anything else is relayed.
    Ping(Value),
    /// A request to relay.
    Ask(Value),
    /// Nothing to do.
    Ignored,
}

/// Sorts a message from `server_id`, reporting its notifications as events.
pub(crate) fn sort(
    server_id: &str,
    message: Value,
    events: &mpsc::UnboundedSender<Event>,
) -> Inbound {
    let method = message.get("method").and_then(Value::as_str);
    let id = message.get("id");
    match (method, id) {
        (None, Some(id)) => Inbound::Response(id.as_u64(), message),
        (Some("ping"), Some(id)) => {
            Inbound::Ping(json!({"jsonrpc": "2.0", "id": id, "result": {}}))
        }
        (Some(_), Some(_)) => Inbound::Ask(message),
        (Some("notifications/progress"), None) => {
            let _ = events.send(Event::Progress {
                server_id: server_id.to_owned(),
                message,
            });
            Inbound::Ignored
        }
        (Some(method), None) => {
            if let Some(lists) = ListKind::of_change(method) {
                let _ = events.send(Event::Changed {
                    server_id: server_id.to_owned(),
                    lists,
                });
            } else if matches!(
                method,
                "notifications/message"
                    | "notifications/resources/updated"
                    | "notifications/elicitation/complete"
            ) {
                let _ = events.send(Event::Note {
                    server_id: server_id.to_owned(),
                    message,
                });
            }
            Inbound::Ignored
        }
        (None, None) => Inbound::Ignored,
    }
}

/// Hands a server's request to the gateway; the answer to send back (the
/// client's, or an error when it gave none or the gateway is gone).
pub(crate) fn ask(
    server_id: &str,
    request: Value,
    related: Option<Sink>,
    events: &mpsc::UnboundedSender<Event>,
) -> BoxFuture<'static, Value> {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let failed = move |why: &str| json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": why}});
    let (reply, answer) = oneshot::channel();
    let event = Event::Ask {
        server_id: server_id.to_owned(),
        request,
        related,
        reply,
    };
    if events.send(event).is_err() {
        let reply = failed("mcplexer-proxy is shutting down");
        return Box::pin(async move { reply });
    }
    Box::pin(async move {
        answer
            .await
            .unwrap_or_else(|_| failed("the client did not answer"))
    })
}

/// A stateless downstream's result as the proxy passes it on: without the
/// fields of that era (each client gets its own era's), and an error for a
/// result that asks for input, which is not relayed yet.
pub(crate) fn from_stateless(answer: Result<Value, Value>) -> Result<Value, Value> {
    let mut result = answer?;
    let Some(map) = result.as_object_mut() else {
        return Ok(result);
    };
    match map.remove("resultType").as_ref().and_then(Value::as_str) {
        None | Some("complete") => {}
        Some(other) => {
            return Err(json!({"code": -32603, "message": format!(
                "the server answered with a {other:?} result, which mcplexer-proxy does not relay yet")}));
        }
    }
    map.remove("ttlMs");
    map.remove("cacheScope");
    Ok(result)
}

/// A JSON-RPC response split into its result or its error object.
pub(crate) fn outcome(mut response: Value) -> Result<Value, Value> {
    match response.get_mut("error") {
        Some(error) => Err(error.take()),
        None => Ok(response
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null)),
    }
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

impl DownstreamError {
    /// The server it is about.
    pub fn server(&self) -> &str {
        match self {
            Self::Start { server, .. }
            | Self::NotSent { server }
            | Self::Exited { server }
            | Self::Cancelled { server }
            | Self::Timeout { server, .. } => server,
        }
    }
}

/// Waits until `cancel` turns true; forever without one (or once its
/// sender is gone).
pub(crate) async fn cancelled(cancel: Option<watch::Receiver<bool>>) {
    match cancel {
        Some(mut cancel) => {
            if cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
