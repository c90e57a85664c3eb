//! The client side of one session: what the client declared, the
//! directory that picks its workspace, its requests in flight (for
//! cancellation, progress and relayed requests), and the gateway's own
//! requests to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use super::era::Era;
use super::error::CallError;
use crate::downstream::Sink;

/// How long the client has to answer `roots/list` when the gateway asks
/// for its own use.
pub const ROOTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests the gateway may have waiting at the client at once (relayed
/// from downstreams or its own); past this a relayed request is refused.
const MAX_ASKS: usize = 64;

/// A client request in flight that went to one server.
#[derive(Clone)]
pub struct Live {
    /// The server it went to.
    pub server_id: String,
    /// The progress token it carries towards the server (as JSON text),
    /// if the client gave one: the proxy's own, unique among the requests
    /// in flight.
    pub progress: Option<String>,
    /// The client's progress token, which the server's progress is
    /// relayed under.
    pub client_token: Option<Value>,
    /// Its own stream, if it has one.
    pub sink: Option<Sink>,
    /// Turns true when the client cancels it.
    pub cancel: watch::Sender<bool>,
}

/// One client session's own state.
pub struct ClientSession {
    /// The client's working directory: picks the workspace, unless the
    /// client's declared roots do.
    pub cwd: PathBuf,
    /// Whether a client that declares the `roots` capability picks the
    /// workspace with its first root (HTTP clients, per DESIGN §4).
    use_roots: bool,
    /// Set at `initialize` when the client's roots pick the workspace.
    roots_wanted: AtomicBool,
    /// Set when the client says it is initialised: before that, a session
    /// client is sent no notifications of ours.
    ready: AtomicBool,
    /// The directory of the client's first root once asked (`None`: not
    /// asked yet, or its roots changed since). The lock makes concurrent
    /// requests share one `roots/list`.
    root_dir: Mutex<Option<PathBuf>>,
    /// What the client declared at `initialize`.
    capabilities: std::sync::Mutex<Value>,
    /// Requests sent to the client, waiting for its response, by id.
    asked: std::sync::Mutex<HashMap<String, oneshot::Sender<Value>>>,
    next_ask: AtomicU64,
    /// Client requests in flight that went to a server, by request id (as
    /// JSON text, so 1 and "1" stay distinct).
    live: std::sync::Mutex<HashMap<String, Live>>,
    /// The session's own stream.
    out: mpsc::UnboundedSender<Value>,
    /// The era of the connection, set by its first request.
    era: std::sync::Mutex<Option<Era>>,
    /// Open `subscriptions/listen` requests (stateless clients), by
    /// request id: what they asked for and where their stream is.
    listeners: std::sync::Mutex<HashMap<String, Listener>>,
}

/// An open `subscriptions/listen` request.
#[derive(Clone)]
pub struct Listener {
    /// Its request id: every notification on it carries it.
    pub id: Value,
    /// The key it is tracked by.
    pub key: String,
    /// What it asked for and the proxy honours.
    pub filter: Value,
    /// Its own stream, if it has one.
    pub sink: Option<Sink>,
}

impl ClientSession {
    /// A session writing to `out`.
    pub fn new(cwd: PathBuf, use_roots: bool, out: mpsc::UnboundedSender<Value>) -> Self {
        Self {
            cwd,
            use_roots,
            roots_wanted: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            root_dir: Mutex::new(None),
            capabilities: std::sync::Mutex::new(json!({})),
            asked: std::sync::Mutex::new(HashMap::new()),
            next_ask: AtomicU64::new(1),
            live: std::sync::Mutex::new(HashMap::new()),
            out,
            era: std::sync::Mutex::new(None),
            listeners: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A session that speaks only the stateless era (the shared one behind
    /// `serve` for requests without a session).
    pub fn stateless(cwd: PathBuf, out: mpsc::UnboundedSender<Value>) -> Self {
        let session = Self::new(cwd, false, out);
        *session
            .era
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Era::Modern);
        session
    }

    /// Takes a request of `era`: the first request sets the connection's
    /// era; one of the other era is refused.
    pub fn adopt(&self, era: Era) -> Result<(), CallError> {
        let mut current = self
            .era
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *current {
            None => {
                *current = Some(era);
                Ok(())
            }
            Some(locked) if locked == era => Ok(()),
            Some(locked) => Err(super::era::mixed(locked)),
        }
    }

    /// The connection's era, once known.
    pub fn era(&self) -> Option<Era> {
        *self
            .era
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a listen stream (at most [`MAX_ASKS`] per session).
    pub fn listen(&self, listener: Listener) -> bool {
        let mut listeners = self.lock_listeners();
        if listeners.len() >= MAX_ASKS {
            return false;
        }
        listeners.insert(listener.key.clone(), listener);
        true
    }

    /// Closes a listen stream.
    pub fn unlisten(&self, key: &str) {
        self.lock_listeners().remove(key);
    }

    /// The open listen streams.
    pub fn listeners(&self) -> Vec<Listener> {
        self.lock_listeners().values().cloned().collect()
    }

    /// Records what the client declared at `initialize`.
    pub fn declare(&self, capabilities: &Value) {
        if self.use_roots && capabilities.get("roots").is_some() {
            self.roots_wanted.store(true, Ordering::SeqCst);
        }
        *self
            .capabilities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = capabilities.clone();
    }

    /// The client said it is initialised.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether notifications may be sent to a session client.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Whether the client's roots pick its workspace.
    pub fn roots_pick(&self) -> bool {
        self.roots_wanted.load(Ordering::SeqCst)
    }

    /// What the client declared of `capability`, if it did.
    pub fn declared(&self, capability: &str) -> Option<Value> {
        self.capabilities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(capability)
            .filter(|c| !c.is_null())
            .cloned()
    }

    /// Sends a message on `sink`, else on the session's stream.
    pub fn send(&self, message: Value, sink: Option<&Sink>) -> bool {
        match sink {
            Some(sink) => sink.send(message).is_ok(),
            None => self.out.send(message).is_ok(),
        }
    }

    /// Starts tracking a client request, by `key` (its id as JSON text,
    /// unless the transport gives each request a key of its own), that
    /// goes to `server_id`; the guard stops it. `None` when a request with
    /// the same key is already in flight (ids must not be reused while
    /// live).
    pub fn begin(
        &self,
        key: &str,
        server_id: &str,
        progress: Option<(String, Value)>,
        sink: Option<Sink>,
    ) -> Option<(LiveGuard<'_>, watch::Receiver<bool>)> {
        let (progress, client_token) = progress.unzip();
        let key = key.to_owned();
        let (cancel, cancelled) = watch::channel(false);
        let mut live = self.lock_live();
        if live.contains_key(&key) {
            return None;
        }
        live.insert(
            key.clone(),
            Live {
                server_id: server_id.to_owned(),
                progress,
                client_token,
                sink,
                cancel,
            },
        );
        Some((LiveGuard { session: self, key }, cancelled))
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Cancels a live request, if `key` names one.
    pub fn cancel(&self, key: &str) {
        if let Some(live) = self.lock_live().get(key) {
            let _ = live.cancel.send(true);
        }
    }

    /// The live request that carries a progress token, if any.
    pub fn by_progress(&self, token: &str) -> Option<Live> {
        self.lock_live()
            .values()
            .find(|l| l.progress.as_deref() == Some(token))
            .cloned()
    }

    /// The stream of a live request to `server_id` that has one: where a
    /// request of that server's that names no call goes.
    pub fn stream_of(&self, server_id: &str) -> Option<Sink> {
        self.lock_live()
            .values()
            .filter(|l| l.server_id == server_id)
            .find_map(|l| l.sink.clone())
    }

    /// The client's roots changed: when they pick the workspace, the next
    /// request asks again. Returns whether they do.
    pub async fn roots_changed(&self) -> bool {
        if !self.roots_wanted.load(Ordering::SeqCst) {
            return false;
        }
        *self.root_dir.lock().await = None;
        true
    }

    /// The directory that picks this request's workspace: the first root
    /// the client declares, when its roots pick the workspace (asked once,
    /// on `sink` if the request has its own stream, and again after
    /// `notifications/roots/list_changed`); else the proxy's directory.
    pub async fn workspace_dir(&self, sink: Option<&Sink>) -> PathBuf {
        if !self.roots_wanted.load(Ordering::SeqCst) {
            return self.cwd.clone();
        }
        let mut known = self.root_dir.lock().await;
        if let Some(dir) = &*known {
            return dir.clone();
        }
        let dir = match self
            .ask("roots/list", json!({}), sink, ROOTS_TIMEOUT)
            .await
            .and_then(|answer| {
                crate::downstream::outcome(answer).map_err(|e| format!("the client answered {e}"))
            }) {
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

    /// Sends a request to the client (on `sink`, else the session's
    /// stream) and waits `timeout` for its whole response.
    pub async fn ask(
        &self,
        method: &str,
        params: Value,
        sink: Option<&Sink>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let n = self.next_ask.fetch_add(1, Ordering::SeqCst);
        let id = Value::String(format!("mcplexer-{n}"));
        let (tx, rx) = oneshot::channel();
        {
            let mut asked = self
                .asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if asked.len() >= MAX_ASKS {
                return Err(format!(
                    "more than {MAX_ASKS} requests to the client are waiting"
                ));
            }
            asked.insert(id.to_string(), tx);
        }
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let answer = if self.send(request, sink) {
            tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id.to_string());
        answer.ok_or_else(|| format!("no answer within {} s", timeout.as_secs()))
    }

    /// Hands the client's response to the request of ours it answers.
    pub fn answered(&self, response: Value) {
        let waiter = response.get("id").and_then(|id| {
            self.asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id.to_string())
        });
        if let Some(waiter) = waiter {
            let _ = waiter.send(response);
        }
    }
}

/// Tracks a client request while it lives.
pub struct LiveGuard<'a> {
    session: &'a ClientSession,
    key: String,
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.session.lock_live().remove(&self.key);
    }
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
