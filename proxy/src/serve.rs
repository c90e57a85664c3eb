//! The streamable-HTTP front end (`mcplexer-proxy serve`): one endpoint,
//! `/mcp`, on loopback TCP or a Unix socket. POST carries one JSON-RPC
//! message: a notification or response gets 202; a request gets its
//! response as `application/json`, or as an event stream when messages about
//! it come first (progress, or `roots/list` to learn the client's
//! workspace). GET opens the session's event stream for the proxy's own
//! notifications (list changes); DELETE ends the session. Sessions are
//! named by a random `Mcp-Session-Id`.
//!
//! Trust: only the proxy's own uid may connect (the kernel's peer
//! credentials on a Unix socket; the owner of the client's socket from the
//! kernel's socket diagnostics on loopback TCP). Every request is checked before it is
//! read: a present `Origin`
//! must be a loopback origin (403 otherwise, against DNS rebinding from a
//! browser), on TCP the `Host` must be loopback too (421), and the session
//! id must be one this process issued. The session id is a handle, not an
//! authentication: what a session may reach is decided by the rules and by
//! the vault, from the proxy's uid.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::gateway::{
    Gateway, HEADER_MISMATCH, MODERN_VERSIONS, UNSUPPORTED_VERSION, all_versions, stateless_version,
};
use crate::vault::VaultLink;

/// The session header.
const SESSION: &str = "mcp-session-id";
/// The protocol version header.
const PROTOCOL: &str = "mcp-protocol-version";
/// Messages kept for a session's stream while it is not open.
const NOTES: usize = 64;
/// The largest request body accepted (16 MiB).
const MAX_BODY: usize = 16 << 20;

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Listen {
    /// A loopback TCP address (`127.0.0.1:PORT`, port 0 for any).
    Tcp(std::net::SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let addr: std::net::SocketAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is neither HOST:PORT nor unix:PATH"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{s} is not a loopback address; the proxy serves only 127.0.0.1, ::1 or a Unix socket"
            ));
        }
        Ok(Self::Tcp(addr))
    }
}

struct Session {
    gateway: Arc<Gateway>,
    /// The proxy's notifications for this client; held by its open stream.
    notes: Arc<Mutex<mpsc::Receiver<Value>>>,
    /// When it began: the oldest session makes room for a new one past
    /// [`MAX_SESSIONS`].
    began: std::time::Instant,
    /// When the client last sent it a message.
    last_seen: std::sync::Mutex<std::time::Instant>,
    /// Its requests not yet fully answered.
    busy: Arc<AtomicUsize>,
}

impl Session {
    fn touch(&self) {
        *self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
    }

    /// Whether the client has left it: no message for `idle`, no request
    /// being answered, no stream open.
    fn is_abandoned(&self, idle: std::time::Duration) -> bool {
        let quiet = self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
            >= idle;
        quiet && self.busy.load(Ordering::SeqCst) == 0 && self.notes.try_lock().is_ok()
    }
}

/// Counts a request of a session until its answer is sent.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sessions kept at once. Each holds its own downstream children, so a
/// client that never ends its sessions (a new one per run) would otherwise
/// pile them up; past the cap, the oldest session is ended.
const MAX_SESSIONS: usize = 32;

struct Served {
    vault: Arc<VaultLink>,
    cwd: PathBuf,
    log_full: bool,
    tcp: bool,
    /// The TCP port listened on: a present `Origin` must name it.
    port: Option<u16>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// How long a session the client has left is kept, with its children.
    idle: std::time::Duration,
    /// What answers stateless (2026-07-28) requests, which belong to no
    /// session.
    stateless: Arc<Gateway>,
}

/// A stateless request's HTTP headers checked against its body, which is
/// what counts: the protocol version, the method and, for a request that
/// names a tool, prompt or resource, that name (`Mcp-Name`, plain or
/// `=?base64?…?=`).
fn check_stateless(headers: &HeaderMap, message: &Value, version: &str) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header(PROTOCOL) {
        Some(given) if given == version => {}
        Some(given) => {
            return Err(format!(
                "MCP-Protocol-Version {given:?} differs from the body's protocolVersion {version:?}"
            ));
        }
        None => return Err("the MCP-Protocol-Version header is required".into()),
    }
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let is_request = message.get("id").is_some();
    match header("mcp-method") {
        Some(given) if given == method => {}
        Some(given) => {
            return Err(format!(
                "Mcp-Method {given:?} differs from the body's method {method:?}"
            ));
        }
        None if is_request => return Err("the Mcp-Method header is required".into()),
        None => {}
    }
    let named = match method {
        "tools/call" | "prompts/get" => message.pointer("/params/name"),
        "resources/read" => message.pointer("/params/uri"),
        _ => None,
    };
    if let Some(named) = named.and_then(Value::as_str) {
        let given = header("mcp-name").ok_or("the Mcp-Name header is required")?;
        if header_text(given).as_deref() != Some(named) {
            return Err(format!("Mcp-Name differs from the body's {named:?}"));
        }
    }
    Ok(())
}

/// A header value as text: as sent, or decoded from `=?base64?…?=`.
fn header_text(value: &str) -> Option<String> {
    use base64::Engine as _;
    match value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(value.to_owned()),
    }
}

/// A 400 answer carrying a JSON-RPC error (the stateless revision's header
/// and version errors).
fn rejected(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    let body = json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error});
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn is_loopback_host(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A refusal: the status and the message of its JSON-RPC error body.
type Refusal = (StatusCode, &'static str);

/// Checks Origin, Host and the protocol version header. A present
/// `Origin` must be this listener's own (a loopback host and, on TCP, its
/// port): a page served from another local port is another origin.
fn check(served: &Served, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or_default();
        let port_ok = served.port.is_none_or(|port| {
            host.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().ok() == Some(port))
        });
        if !is_loopback_host(host) || !port_ok {
            return Err((StatusCode::FORBIDDEN, "Origin not allowed"));
        }
    }
    if served.tcp {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return Err((StatusCode::MISDIRECTED_REQUEST, "Invalid Host header"));
        }
    }
    Ok(())
}

/// Refuses a request whose `MCP-Protocol-Version` names a version the
/// proxy does not serve: 400 with -32022 and the versions it does.
fn check_version(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(version) = headers.get(PROTOCOL) else {
        return Ok(());
    };
    let version = version.to_str().unwrap_or_default();
    if all_versions().contains(&version) {
        return Ok(());
    }
    let data = json!({"supported": all_versions(), "requested": version});
    Err(Box::new(rejected(
        None,
        UNSUPPORTED_VERSION,
        "unsupported MCP-Protocol-Version",
        Some(data),
    )))
}

async fn session_of(
    served: &Served,
    headers: &HeaderMap,
) -> Result<(String, Arc<Session>), Refusal> {
    let Some(id) = headers.get(SESSION).and_then(|v| v.to_str().ok()) else {
        return Err((StatusCode::BAD_REQUEST, "Mcp-Session-Id header is required"));
    };
    match served.sessions.lock().await.get(id) {
        Some(session) => Ok((id.to_owned(), session.clone())),
        None => Err((StatusCode::NOT_FOUND, "Session not found")),
    }
}

/// A session id of 128 random bits, as hex; none (rather than a guessable
/// one) when the kernel gives no randomness.
fn new_session_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    mcplexer_proto::random_bytes(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn post_message(
    State(served): State<Arc<Served>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, message)) = check(&served, &headers) {
        return error(status, message);
    }
    if let Err(refused) = check_version(&headers) {
        return *refused;
    }
    if body.len() > MAX_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "message too large");
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST a JSON-RPC message with Content-Type: application/json",
        );
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "send one JSON-RPC message per POST; batches are not supported",
            );
        }
        Err(_) => {
            let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}});
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    };
    // A stateless request (its _meta names a protocol version) belongs to
    // no session, whatever headers come with it.
    if let Some(version) = stateless_version(&message) {
        let id = message.get("id");
        if !MODERN_VERSIONS.contains(&version) {
            let data = json!({"supported": all_versions(), "requested": version});
            return rejected(
                id,
                UNSUPPORTED_VERSION,
                "unsupported protocol version",
                Some(data),
            );
        }
        if let Err(why) = check_stateless(&headers, &message, version) {
            return rejected(id, HEADER_MISMATCH, &why, None);
        }
        let streams = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        return answer(served.stateless.clone(), message, streams, None, true).await;
    }
    let initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
    let (id, session) = if initialize {
        let Some(id) = new_session_id() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no randomness for a session id",
            );
        };
        let (tx, mut from_gateway) = mpsc::unbounded_channel();
        // The session's stream may never be opened (it is optional): keep
        // at most NOTES of the gateway's messages for it and drop the
        // rest, which are notifications a client can do without (a lost
        // tools/list_changed is followed by another on the next change).
        let (keep, rx) = mpsc::channel(NOTES);
        tokio::spawn(async move {
            while let Some(note) = from_gateway.recv().await {
                if let Err(mpsc::error::TrySendError::Closed(_)) = keep.try_send(note) {
                    return;
                }
            }
        });
        let session = Arc::new(Session {
            gateway: Gateway::new(
                served.vault.clone(),
                served.cwd.clone(),
                true,
                served.log_full,
                tx,
            ),
            notes: Arc::new(Mutex::new(rx)),
            began: std::time::Instant::now(),
            last_seen: std::sync::Mutex::new(std::time::Instant::now()),
            busy: Arc::new(AtomicUsize::new(0)),
        });
        let evicted = {
            let mut sessions = served.sessions.lock().await;
            let oldest = (sessions.len() >= MAX_SESSIONS)
                .then(|| {
                    sessions
                        .iter()
                        .min_by_key(|(_, s)| s.began)
                        .map(|(id, _)| id.clone())
                })
                .flatten();
            sessions.insert(id.clone(), session.clone());
            oldest.and_then(|old| sessions.remove(&old))
        };
        if let Some(old) = evicted {
            tracing::info!(
                max = MAX_SESSIONS,
                "ending the oldest session to make room for a new one"
            );
            tokio::spawn(async move { old.gateway.shutdown().await });
        }
        (id, session)
    } else {
        match session_of(&served, &headers).await {
            Ok(found) => found,
            Err((status, message)) => return error(status, message),
        }
    };
    // A client that cannot read an event stream gets the messages about
    // its request on the session's GET stream instead.
    let streams = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    session.touch();
    let busy = Busy::new(&session.busy);
    let mut response = answer(session.gateway.clone(), message, streams, Some(busy), false).await;
    if initialize && let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(SESSION, value);
    }
    response
}

/// Answers one message: 202 for a notification or response; for a request,
/// its response as `application/json`, or, once the gateway has something
/// to send about it first (a request to the client, progress), an event
/// stream carrying those messages and then the response.
/// A stateless request is cancelled when its client closes the stream
/// (`cancel_on_close`); a session's request goes on (that takes
/// `notifications/cancelled`).
async fn answer(
    gateway: Arc<Gateway>,
    message: Value,
    streams: bool,
    busy: Option<Busy>,
    cancel_on_close: bool,
) -> Response {
    let is_request = message.get("method").is_some() && message.get("id").is_some();
    // A stateless request is tracked by a key of its own: requests of
    // different clients share the stateless gateway, and their ids may be
    // the same.
    let key = (cancel_on_close && is_request).then(|| {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        format!("http-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    });
    let cancel_key = key.clone();
    let canceller = gateway.clone();
    // A client that goes away before anything was streamed drops this
    // future: its stateless request is cancelled then too. (Once done,
    // cancelling its key does nothing; once streaming, the stream's task
    // holds it.)
    let gone = CancelOnDrop {
        gateway: gateway.clone(),
        key: key.clone(),
    };
    let (sink, mut about) = mpsc::unbounded_channel();
    let sink = streams.then_some(sink);
    let mut handling = tokio::spawn(async move { gateway.handle_keyed(message, sink, key).await });
    let mut first = tokio::select! {
        biased;
        Some(note) = about.recv() => Some(note),
        reply = &mut handling => {
            // Whatever it sent before finishing still goes first.
            let first = about.try_recv().ok();
            if first.is_none() {
                return match reply.ok().flatten() {
                    Some(reply) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/json")],
                        reply.to_string(),
                    )
                        .into_response(),
                    None if is_request => error(StatusCode::INTERNAL_SERVER_ERROR, "the request was not answered"),
                    None => StatusCode::ACCEPTED.into_response(),
                };
            }
            first
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let _gone = gone;
        let event =
            |message: &Value| Ok(Bytes::from(format!("event: message\ndata: {message}\n\n")));
        // A client that goes away does not cancel the request (that takes
        // notifications/cancelled): it still runs, and is audited.
        let mut open = true;
        loop {
            let note = match first.take() {
                Some(note) => Some(note),
                None => tokio::select! {
                    note = about.recv() => note,
                    () = tx.closed(), if open && cancel_on_close => {
                        open = false;
                        if let Some(key) = &cancel_key {
                            canceller.cancel(key);
                        }
                        continue;
                    }
                },
            };
            let Some(note) = note else { break };
            open = open && tx.send(event(&note)).await.is_ok();
        }
        if let Ok(Some(reply)) = handling.await
            && open
        {
            let _ = tx.send(event(&reply)).await;
        }
        drop(busy);
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn open_stream(State(served): State<Arc<Served>>, headers: HeaderMap) -> Response {
    if let Err((status, message)) = check(&served, &headers) {
        return error(status, message);
    }
    if let Err(refused) = check_version(&headers) {
        return *refused;
    }
    let (_, session) = match session_of(&served, &headers).await {
        Ok(found) => found,
        Err((status, message)) => return error(status, message),
    };
    session.touch();
    // One stream per session: it takes the session's notifications.
    let Ok(mut notes) = session.notes.clone().try_lock_owned() else {
        return error(StatusCode::CONFLICT, "the session's stream is already open");
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        while let Some(note) = notes.recv().await {
            let event = format!("event: message\ndata: {note}\n\n");
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                break;
            }
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn end_session(State(served): State<Arc<Served>>, headers: HeaderMap) -> Response {
    if let Err((status, message)) = check(&served, &headers) {
        return error(status, message);
    }
    if let Err(refused) = check_version(&headers) {
        return *refused;
    }
    let (id, session) = match session_of(&served, &headers).await {
        Ok(found) => found,
        Err((status, message)) => return error(status, message),
    };
    served.sessions.lock().await.remove(&id);
    session.gateway.close_streams();
    session.gateway.shutdown().await;
    StatusCode::OK.into_response()
}

/// Cancels a stateless request when dropped.
struct CancelOnDrop {
    gateway: Arc<Gateway>,
    key: Option<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.gateway.cancel(key);
        }
    }
}

/// Ends the sessions clients have left (most never send DELETE), with
/// their children, checking a few times per idle period.
async fn end_abandoned(served: std::sync::Weak<Served>) {
    let Some(idle) = served.upgrade().map(|s| s.idle) else {
        return;
    };
    let mut tick = tokio::time::interval((idle / 4).clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(30),
    ));
    loop {
        tick.tick().await;
        let Some(served) = served.upgrade() else {
            return;
        };
        let abandoned: Vec<Arc<Session>> = {
            let mut sessions = served.sessions.lock().await;
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.is_abandoned(idle))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for session in abandoned {
            tracing::info!(
                idle_sec = idle.as_secs(),
                "ending a session its client has left"
            );
            session.gateway.shutdown().await;
        }
    }
}

/// The proxy's uid.
pub(crate) fn own_uid() -> u32 {
    // SAFETY: getuid(2) takes no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// A listener that accepts only connections from the proxy's own uid: every
/// call it serves is made with that uid's credentials, and the session id
/// is a handle, not an authentication. Other connections are closed at
/// once (and logged).
struct OwnUidOnly<L>(L);

impl<L> OwnUidOnly<L> {
    fn refuse(uid: Option<u32>, from: &str) {
        match uid {
            Some(uid) => tracing::warn!(uid, from, "refused a connection from another user"),
            None => tracing::warn!(from, "refused a connection whose owner is unknown"),
        }
    }
}

impl axum::serve::Listener for OwnUidOnly<tokio::net::TcpListener> {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        mcplexer_proto::peer::accept_own(&self.0, own_uid(), |uid, addr| {
            Self::refuse(uid, &addr.to_string());
        })
        .await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::serve::Listener for OwnUidOnly<tokio::net::UnixListener> {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let me = own_uid();
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
            let owner = io.peer_cred().ok().map(|c| c.uid());
            if owner == Some(me) {
                return (io, addr);
            }
            Self::refuse(owner, "unix socket");
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A listening socket to serve on.
enum Bound {
    Tcp(tokio::net::TcpListener),
    /// With the path to remove at exit, when this process made it.
    Unix(tokio::net::UnixListener, Option<PathBuf>),
}

impl Bound {
    /// Binds `listen`.
    async fn bind(listen: Listen) -> std::io::Result<Self> {
        Ok(match listen {
            Listen::Tcp(addr) => Self::Tcp(tokio::net::TcpListener::bind(addr).await?),
            Listen::Unix(path) => Self::Unix(tokio::net::UnixListener::bind(&path)?, Some(path)),
        })
    }

    /// Takes a listening socket systemd passed: a Unix socket, or a TCP one
    /// on a loopback address.
    fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<Self> {
        let unix = std::os::unix::net::UnixListener::from(fd);
        if unix.local_addr().is_ok() {
            unix.set_nonblocking(true)?;
            return Ok(Self::Unix(tokio::net::UnixListener::from_std(unix)?, None));
        }
        let tcp = std::net::TcpListener::from(std::os::fd::OwnedFd::from(unix));
        let addr = tcp.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other(format!(
                "the socket systemd passed listens on {addr}, which is not a loopback address; the proxy serves only 127.0.0.1, ::1 or a Unix socket"
            )));
        }
        tcp.set_nonblocking(true)?;
        Ok(Self::Tcp(tokio::net::TcpListener::from_std(tcp)?))
    }
}

/// Serves clients until SIGTERM/SIGINT on the socket systemd passed
/// (`passed`), else on `listen`; prints the endpoint on stdout once
/// listening (`http://127.0.0.1:PORT/mcp` or `unix:PATH`).
pub async fn run(
    vault: Arc<VaultLink>,
    cwd: PathBuf,
    log_full: bool,
    idle: std::time::Duration,
    listen: Option<Listen>,
    passed: Option<std::os::fd::OwnedFd>,
) -> std::io::Result<()> {
    let bound = match (passed, listen) {
        (Some(fd), _) => Bound::adopt(fd)?,
        (None, Some(listen)) => Bound::bind(listen).await?,
        (None, None) => {
            return Err(std::io::Error::other(
                "give --listen ADDR (127.0.0.1:PORT or unix:PATH), or start the proxy with a socket passed by systemd (mcplexer-proxy.socket)",
            ));
        }
    };
    if let Err(err) = vault.load().await {
        tracing::warn!(error = %err, "no routing configuration yet; calls fail until the vault answers");
    }
    tokio::spawn(vault.clone().follow());
    // Nothing is sent unasked in the stateless era: whatever the stateless
    // gateway has no request stream for goes nowhere.
    let (unasked, mut dropped) = mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move { while dropped.recv().await.is_some() {} });
    let stateless = Gateway::stateless(vault.clone(), cwd.clone(), log_full, unasked);
    let served = Arc::new(Served {
        vault,
        cwd,
        log_full,
        tcp: matches!(bound, Bound::Tcp(_)),
        port: match &bound {
            Bound::Tcp(listener) => listener.local_addr().ok().map(|a| a.port()),
            Bound::Unix(..) => None,
        },
        sessions: Mutex::new(HashMap::new()),
        idle,
        stateless,
    });
    tokio::spawn(end_abandoned(Arc::downgrade(&served)));
    let app = Router::new()
        .route(
            "/mcp",
            post(post_message).get(open_stream).delete(end_session),
        )
        .with_state(served.clone());
    let closing = served.clone();
    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        } else {
            std::future::pending::<()>().await;
        }
        // Listen streams stay open until ended: end them, so the server
        // can finish its connections.
        closing.stateless.close_streams();
        for session in closing.sessions.lock().await.values() {
            session.gateway.close_streams();
        }
    };
    match bound {
        Bound::Tcp(listener) => {
            println!("http://{}/mcp", listener.local_addr()?);
            axum::serve(OwnUidOnly(listener), app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        Bound::Unix(listener, made) => {
            let path = listener
                .local_addr()?
                .as_pathname()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            println!("unix:{}", path.display());
            axum::serve(OwnUidOnly(listener), app)
                .with_graceful_shutdown(shutdown)
                .await?;
            if let Some(made) = made {
                let _ = std::fs::remove_file(&made);
            }
        }
    }
    let sessions: Vec<Arc<Session>> = served
        .sessions
        .lock()
        .await
        .drain()
        .map(|(_, s)| s)
        .collect();
    for session in sessions {
        session.gateway.shutdown().await;
    }
    served.stateless.shutdown().await;
    Ok(())
}
