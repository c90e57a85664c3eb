//! A downstream MCP server over streamable HTTP: one session per (server,
//! auth scope), the scope's headers set on every request (marked sensitive,
//! so the HTTP stack never logs them), JSON and SSE responses (the server's
//! requests on a response's stream relayed to the client request it is
//! about, their answers posted back), and a new session when the server no
//! longer knows the old one.
//!
//! Trust: the server is as trusted as its configured URL (https, or http on
//! loopback only; the vault checks that). It receives the scope's headers and
//! nothing of the client's: no client header is forwarded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mcplexer_proto::v1 as pb;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::downstream::{
    Answer, BoxFuture, Call, DOWNSTREAM_PROTOCOL, Downstream, DownstreamError, Event, Hello,
    Inbound, Lists, Sink, ask, cancelled, outcome, sort,
};
use crate::vault::Released;

/// The session header (case-insensitive on the wire).
const SESSION: &str = "mcp-session-id";
/// The protocol version header, sent after initialisation.
const PROTOCOL: &str = "mcp-protocol-version";
/// The largest response body accepted (16 MiB).
const MAX_BODY: usize = 16 << 20;

/// Why a POST did not produce an answer.
enum PostError {
    /// The server no longer knows this session (404, or 400 to a request
    /// that carried it): initialise again.
    SessionGone(String),
    /// Any other failure.
    Failed(DownstreamError),
}

/// A streamable-HTTP downstream session.
pub struct HttpDownstream {
    /// Its server id.
    pub server_id: String,
    /// The server as configured when the session was made: credentials go
    /// to this URL only while the configuration still says so.
    pub spec: pb::DownstreamServer,
    url: reqwest::Url,
    client: reqwest::Client,
    session: Mutex<Option<String>>,
    /// Held while initialising, so that concurrent first requests make one
    /// session, not one each.
    initializing: Mutex<()>,
    next_id: AtomicU64,
    events: mpsc::UnboundedSender<Event>,
    /// What the session declares when it is (re)initialised.
    hello: std::sync::Mutex<Hello>,
    /// Its `initialize` result, from the current session.
    initialized: std::sync::Mutex<Option<Value>>,
    /// Its lists as last read (original names).
    lists: Lists,
}

impl HttpDownstream {
    /// A session for `server` (not yet initialised: that happens with the
    /// first request, when the credential's headers are at hand).
    pub fn new(
        server: &pb::DownstreamServer,
        hello: Hello,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Arc<Self>, DownstreamError> {
        let start_err = |reason: String| DownstreamError::Start {
            server: server.id.clone(),
            reason,
        };
        let url =
            reqwest::Url::parse(&server.url).map_err(|e| start_err(format!("bad url: {e}")))?;
        let client = reqwest::Client::builder()
            // Never route credentials through a proxy from the environment,
            // never follow a redirect with them to another origin.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| start_err(e.to_string()))?;
        Ok(Arc::new(Self {
            server_id: server.id.clone(),
            spec: server.clone(),
            url,
            client,
            session: Mutex::new(None),
            initializing: Mutex::new(()),
            next_id: AtomicU64::new(1),
            events,
            hello: std::sync::Mutex::new(hello),
            initialized: std::sync::Mutex::new(None),
            lists: Lists::default(),
        }))
    }

    fn failed(&self, reason: impl Into<String>) -> PostError {
        PostError::Failed(DownstreamError::Start {
            server: self.server_id.clone(),
            reason: reason.into(),
        })
    }

    /// The scope's values as request headers, each marked sensitive. The
    /// HTTP stack keeps its own copy until the request is written; that copy
    /// is not ours to wipe.
    fn credential_headers(&self, credential: Option<&Released>) -> Result<HeaderMap, PostError> {
        let mut headers = HeaderMap::new();
        for (name, value) in credential.map(|c| c.values.as_slice()).unwrap_or_default() {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.failed(format!("header name {name:?} is not valid")))?;
            let mut value = HeaderValue::from_bytes(value).map_err(|_| {
                self.failed(format!(
                    "the value of header {name} is not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(headers)
    }

    /// On a loopback URL, refuses unless the socket listening there is this
    /// user's or root's: another local user could otherwise listen on the
    /// port (when it is free, say after the server stopped) and receive
    /// the injected headers.
    async fn check_listener(&self) -> Result<(), PostError> {
        let (Some(host), Some(port)) = (self.url.host_str(), self.url.port_or_known_default())
        else {
            return Ok(());
        };
        let host = host.to_owned();
        let me = crate::serve::own_uid();
        let verdict = tokio::task::spawn_blocking(move || {
            mcplexer_proto::sockdiag::check_loopback_listener(&host, port, &[me, 0])
        })
        .await
        .unwrap_or_else(|e| Err(format!("the listener check failed: {e}")));
        verdict.map_err(|why| self.failed(format!("the credential was not sent: {why}")))
    }

    /// POSTs one message; for a request, returns its response. The
    /// server's requests on the response's stream go to `related`'s client
    /// request, and their answers are posted back.
    async fn post(
        &self,
        message: &Value,
        id: Option<u64>,
        credential: Option<&Released>,
        timeout: Duration,
        related: Option<&Sink>,
    ) -> Result<Option<Value>, PostError> {
        if credential.is_some_and(|c| !c.values.is_empty()) {
            self.check_listener().await?;
        }
        let mut headers = self.credential_headers(credential)?;
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let session = self.session.lock().await.clone();
        if let Some(session) = &session {
            if let Ok(value) = HeaderValue::from_str(session) {
                headers.insert(SESSION, value);
            }
            // The version the server chose at initialize (it may be older
            // than the one offered).
            let negotiated = (self as &dyn Downstream)
                .initialized()
                .and_then(|init| init.get("protocolVersion")?.as_str().map(str::to_owned))
                .and_then(|v| HeaderValue::from_str(&v).ok())
                .unwrap_or(HeaderValue::from_static(DOWNSTREAM_PROTOCOL));
            headers.insert(PROTOCOL, negotiated);
        }
        let send = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(message.to_string())
            .timeout(timeout)
            .send();
        let mut response = send
            .await
            .map_err(|e| self.failed(format!("request failed: {}", without_url(&e))))?;
        let status = response.status();
        // 404 is what the specification says; some servers answer 400 ("no
        // valid session") after a restart. Either way the request was not
        // processed, and it is retried once on a new session.
        if matches!(
            status,
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::BAD_REQUEST
        ) && let Some(gone) = session
        {
            return Err(PostError::SessionGone(gone));
        }
        // A session id is adopted only from a successful answer to a
        // request made without one (initialize); servers also attach fresh
        // ids to error answers, which must not replace ours.
        if session.is_none()
            && status.is_success()
            && let Some(new) = response
                .headers()
                .get(SESSION)
                .and_then(|v| v.to_str().ok())
        {
            *self.session.lock().await = Some(new.to_owned());
        }
        if status == reqwest::StatusCode::ACCEPTED || id.is_none() {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.failed(format!("HTTP {status}")));
        }
        let sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut body = Vec::new();
        let mut data = String::new();
        // Answers the client gave to the server's requests, to post back.
        let mut replies = tokio::task::JoinSet::new();
        loop {
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(timeout, response.chunk()) => chunk,
                Some(Ok(reply)) = replies.join_next() => {
                    // A response is answered 202; its failure is the
                    // server's to notice (its request times out).
                    if let Err(PostError::Failed(err)) =
                        Box::pin(self.post(&reply, None, credential, timeout, None)).await
                    {
                        tracing::warn!(server = %self.server_id, error = %err, "cannot send the client's answer");
                    }
                    continue;
                }
            };
            let chunk = chunk
                .map_err(|_| {
                    PostError::Failed(DownstreamError::Timeout {
                        server: self.server_id.clone(),
                        secs: timeout.as_secs(),
                    })
                })?
                .map_err(|e| {
                    self.failed(format!("reading the response failed: {}", without_url(&e)))
                })?;
            let Some(chunk) = chunk else { break };
            body.extend_from_slice(&chunk);
            if body.len() + data.len() > MAX_BODY {
                return Err(self.failed("the response is larger than 16 MiB"));
            }
            if !sse {
                continue;
            }
            // Event stream: dispatch each complete line; a blank line ends
            // an event whose data is one JSON-RPC message. Lines read are
            // dropped from the buffer, so a long stream of progress counts
            // against the cap only one event at a time.
            let mut parsed = 0;
            while let Some(end) = body[parsed..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&body[parsed..parsed + end])
                    .trim_end_matches('\r')
                    .to_owned();
                parsed += end + 1;
                if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
                    data.push('\n');
                } else if line.is_empty() && !data.is_empty() {
                    let event = std::mem::take(&mut data);
                    match self.dispatch(event.trim_end(), id, related) {
                        Dispatched::Answer(answer) => return Ok(Some(answer)),
                        Dispatched::Reply(reply) => {
                            replies.spawn(reply);
                        }
                        Dispatched::Nothing => {}
                    }
                }
            }
            body.drain(..parsed);
        }
        if sse {
            if !data.is_empty()
                && let Dispatched::Answer(answer) = self.dispatch(data.trim_end(), id, related)
            {
                return Ok(Some(answer));
            }
            return Err(self.failed("the event stream ended without a response"));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|_| self.failed("the response is not JSON"))
    }

    /// Handles one message from an event stream: the response to `id`, or
    /// a request of the server's whose answer will come.
    fn dispatch(&self, data: &str, id: Option<u64>, related: Option<&Sink>) -> Dispatched {
        let Ok(message) = serde_json::from_str::<Value>(data) else {
            return Dispatched::Nothing;
        };
        match sort(&self.server_id, message, &self.events) {
            Inbound::Response(got, message) if id.is_some() && got == id => {
                Dispatched::Answer(message)
            }
            Inbound::Response(..) | Inbound::Ignored => Dispatched::Nothing,
            Inbound::Ping(reply) => Dispatched::Reply(Box::pin(async move { reply })),
            Inbound::Ask(request) => Dispatched::Reply(ask(
                &self.server_id,
                request,
                related.cloned(),
                &self.events,
            )),
        }
    }

    async fn initialize(
        &self,
        credential: Option<&Released>,
        timeout: Duration,
    ) -> Result<(), PostError> {
        *self.session.lock().await = None;
        let hello = self
            .hello
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let init =
            json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": hello.params()});
        let answer = self
            .post(&init, Some(id), credential, timeout, None)
            .await?;
        let result = match answer.map(outcome) {
            Some(Ok(result)) => result,
            Some(Err(error)) => return Err(self.failed(format!("initialize failed: {error}"))),
            None => return Err(self.failed("initialize was not answered")),
        };
        *self
            .initialized
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
        self.post(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            None,
            credential,
            timeout,
            None,
        )
        .await?;
        if let Some(level) = hello.log_level
            && (self as &dyn Downstream).declares("logging")
        {
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            let set = json!({"jsonrpc": "2.0", "id": id, "method": "logging/setLevel", "params": {"level": level}});
            // A refusal costs only the server's log messages.
            let _ = self.post(&set, Some(id), credential, timeout, None).await;
        }
        Ok(())
    }

    /// Sends a request with the credential's headers, initialising the
    /// session first (and again if the server forgot it).
    async fn send_request(&self, method: &str, params: Value, call: Call<'_>) -> Answer {
        let Call {
            credential,
            timeout,
            cancel,
            related,
        } = call;
        for _attempt in 0..2 {
            if self.session.lock().await.is_none() {
                let _one = self.initializing.lock().await;
                // Another request may have made the session meanwhile.
                if self.session.lock().await.is_none() {
                    match self.initialize(credential, timeout).await {
                        Ok(()) => {}
                        Err(PostError::Failed(err)) => return Err(err),
                        Err(PostError::SessionGone(_)) => continue,
                    }
                }
            }
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            let posted = tokio::select! {
                posted = self.post(&message, Some(id), credential, timeout, related.as_ref()) => posted,
                () = cancelled(cancel.clone()) => {
                    // Dropping the POST closes its connection, which is not
                    // a cancellation to the server: tell it.
                    self.send_notification(
                        "notifications/cancelled",
                        json!({"requestId": id, "reason": "cancelled by the client"}),
                        credential,
                    )
                    .await;
                    return Err(DownstreamError::Cancelled {
                        server: self.server_id.clone(),
                    });
                }
            };
            match posted {
                Ok(Some(answer)) => return Ok(outcome(answer)),
                Ok(None) => {
                    return Err(DownstreamError::Exited {
                        server: self.server_id.clone(),
                    });
                }
                Err(PostError::SessionGone(gone)) => {
                    tracing::info!(server = %self.server_id, "downstream session expired; initialising a new one");
                    // Only the session that is gone: a concurrent request
                    // may already have made its successor.
                    let mut session = self.session.lock().await;
                    if session.as_deref() == Some(gone.as_str()) {
                        *session = None;
                    }
                }
                Err(PostError::Failed(err)) => {
                    if matches!(err, DownstreamError::Timeout { .. }) {
                        self.send_notification(
                            "notifications/cancelled",
                            json!({"requestId": id, "reason": "timed out in mcplexer-proxy"}),
                            credential,
                        )
                        .await;
                    }
                    return Err(err);
                }
            }
        }
        Err(DownstreamError::Exited {
            server: self.server_id.clone(),
        })
    }

    /// Sends a notification on the current session (none before one
    /// exists: there is nothing yet to tell).
    async fn send_notification(&self, method: &str, params: Value, credential: Option<&Released>) {
        if self.session.lock().await.is_none() {
            return;
        }
        let message = json!({"jsonrpc": "2.0", "method": method, "params": params});
        if let Err(PostError::Failed(err)) = self
            .post(&message, None, credential, Duration::from_secs(10), None)
            .await
        {
            tracing::warn!(server = %self.server_id, error = %err, "cannot send {method}");
        }
    }

    /// Ends the session (DELETE), if the server keeps one.
    pub async fn stop(&self) {
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        let _ = self
            .client
            .delete(self.url.clone())
            .header(SESSION, session)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
    }
}

/// What one message of an event stream is to the request that reads it.
enum Dispatched {
    /// Its response.
    Answer(Value),
    /// An answer to post back, once it comes.
    Reply(BoxFuture<'static, Value>),
    /// Nothing for it.
    Nothing,
}

impl Downstream for HttpDownstream {
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
        self.initialized
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn request<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        call: Call<'a>,
    ) -> BoxFuture<'a, Answer> {
        Box::pin(self.send_request(method, params, call))
    }

    fn notify<'a>(
        &'a self,
        method: &'a str,
        params: Value,
        credential: Option<&'a Released>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.send_notification(method, params, credential))
    }
}

/// A reqwest error's text without its URL (which may carry a query string
/// with secrets in a misconfigured server; never log it).
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}
