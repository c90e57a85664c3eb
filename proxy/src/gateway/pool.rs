//! The downstream pool of one client session: stdio children and HTTP
//! sessions, one per (server, auth scope), each made on first use with what
//! the client declared; the credential fetched from the vault for every use
//! and injected the way the transport takes it (a child's environment at
//! start, an HTTP request's headers); children restarted by their policy,
//! replaced when their credential or configuration changes, stopped when
//! idle. What it hands out is a [`Downstream`]: the method handlers never
//! see a transport.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcplexer_proto::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, watch};

use super::error::{CallError, INTERNAL_ERROR};
use crate::child::StdioDownstream;
pub use crate::downstream::call_timeout;
use crate::downstream::{Call, Downstream, DownstreamError, Era, Event, Hello, Sink};
use crate::http::HttpDownstream;
use crate::restart::{Ending, History, Policy, Verdict};
use crate::vault::{Released, VaultLink};

/// One downstream per (server id, scope id).
pub type Key = (String, Option<String>);

/// Where one request goes: the server, the scope whose values it carries,
/// and for the vault's audit of the release, the name it was routed by and
/// the rule that routed it.
pub struct Target<'a> {
    /// The server, as the routing configuration has it now.
    pub server: &'a pb::DownstreamServer,
    /// The scope to release (none: no credential).
    pub scope: Option<String>,
    /// The exposed name the request was routed by (empty for a listing).
    pub name: &'a str,
    /// The deciding rule.
    pub rule: &'a str,
}

/// The downstreams of one client session.
pub struct Pool {
    vault: Arc<VaultLink>,
    events: mpsc::UnboundedSender<Event>,
    /// What a new downstream is told (the client's capabilities, the log
    /// level it set).
    hello: std::sync::Mutex<Hello>,
    children: Mutex<HashMap<Key, Arc<StdioDownstream>>>,
    sessions: Mutex<HashMap<Key, Arc<HttpDownstream>>>,
    /// Serialises starts, so concurrent calls share one child.
    starting: Mutex<()>,
    /// Serialises reading how children ended, so each ending is recorded
    /// once and before anyone decides on a restart.
    reaping: Mutex<()>,
    /// How children that stopped on their own ended: their restart policy
    /// and backoff decide when they start again.
    history: std::sync::Mutex<HashMap<Key, History>>,
    /// The era each stdio server was found to speak, with the
    /// configuration it was found under (a changed server is probed
    /// again).
    eras: std::sync::Mutex<HashMap<String, (pb::DownstreamServer, Era)>>,
}

/// Ends an HTTP session in the background (its DELETE carries no
/// credential).
fn retire_session(session: Arc<HttpDownstream>) {
    tokio::spawn(async move { session.stop().await });
}

impl Pool {
    /// An empty pool whose downstreams report to `events`.
    pub fn new(vault: Arc<VaultLink>, events: mpsc::UnboundedSender<Event>) -> Self {
        Self {
            vault,
            events,
            hello: std::sync::Mutex::new(Hello::default()),
            children: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            starting: Mutex::new(()),
            reaping: Mutex::new(()),
            history: std::sync::Mutex::new(HashMap::new()),
            eras: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Changes what new downstreams are told.
    pub fn update_hello(&self, change: impl FnOnce(&mut Hello)) {
        change(
            &mut self
                .hello
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    fn hello(&self) -> Hello {
        self.hello
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every downstream made so far (running or not), with its key.
    pub async fn all(&self) -> Vec<(Key, Arc<dyn Downstream>)> {
        let mut all: Vec<(Key, Arc<dyn Downstream>)> = Vec::new();
        for (key, child) in self.children.lock().await.iter() {
            if child.is_alive() {
                all.push((key.clone(), child.clone()));
            }
        }
        for (key, session) in self.sessions.lock().await.iter() {
            all.push((key.clone(), session.clone()));
        }
        all
    }

    /// The downstreams of one server, whatever their scope.
    pub async fn of_server(&self, server_id: &str) -> Vec<Arc<dyn Downstream>> {
        self.all()
            .await
            .into_iter()
            .filter(|((server, _), _)| server == server_id)
            .map(|(_, downstream)| downstream)
            .collect()
    }

    /// Fetches the scope's values for one use of the target (none without
    /// a scope). Every fetch is a release the vault audits.
    pub async fn credential(&self, target: &Target<'_>) -> Result<Option<Released>, CallError> {
        let Some(scope_id) = target.scope.clone() else {
            return Ok(None);
        };
        let released = self
            .vault
            .credential(pb::CredentialRequest {
                auth_scope_id: scope_id,
                downstream_server_id: target.server.id.clone(),
                transport: target.server.transport.clone(),
                tool: target.name.to_owned(),
                route_rule_id: target.rule.to_owned(),
            })
            .await?;
        Ok(Some(released))
    }

    /// The downstream for the target, made, started or restarted as
    /// needed, with the credential released for this use.
    pub async fn acquire(
        &self,
        target: &Target<'_>,
    ) -> Result<(Arc<dyn Downstream>, Option<Released>), CallError> {
        if target.server.transport == "http" {
            let credential = self.credential(target).await?;
            let session = self.session(target.server, target.scope.clone()).await?;
            return Ok((session, credential));
        }
        let (child, credential) = self.child(target).await?;
        Ok((child, credential))
    }

    /// An HTTP session's list as cached, read without releasing a
    /// credential (a stdio child is checked against the current credential
    /// version, which takes a release).
    pub async fn cached(
        &self,
        target: &Target<'_>,
        kind: crate::downstream::ListKind,
    ) -> Option<Vec<Value>> {
        if target.server.transport != "http" {
            return None;
        }
        let key = (target.server.id.clone(), target.scope.clone());
        let session = self.sessions.lock().await.get(&key).cloned()?;
        if session.spec != *target.server {
            return None;
        }
        (&*session as &dyn Downstream).lists().get(kind)
    }

    /// The instructions of the target's downstream if one is running and
    /// initialised (nothing is started or released for this).
    pub async fn running_instructions(&self, target: &Target<'_>) -> Option<String> {
        let key = (target.server.id.clone(), target.scope.clone());
        let running: Option<Arc<dyn Downstream>> = match target.server.transport.as_str() {
            "http" => self
                .sessions
                .lock()
                .await
                .get(&key)
                .map(|s| s.clone() as Arc<dyn Downstream>),
            _ => self
                .children
                .lock()
                .await
                .get(&key)
                .filter(|c| c.is_alive())
                .map(|c| c.clone() as Arc<dyn Downstream>),
        };
        let running = running.filter(|d| d.spec() == target.server)?;
        super::lists::instructions_of(&*running)
    }

    /// Sends one request to the target; a stdio child found dead before
    /// the request reached it is replaced once (a request that reached a
    /// downstream is never sent twice). Returns the answer and the
    /// credential it was sent with, for scrubbing and audit.
    pub async fn request(
        &self,
        target: &Target<'_>,
        method: &str,
        params: Value,
        cancel: Option<watch::Receiver<bool>>,
        related: Option<Sink>,
    ) -> (Result<Result<Value, Value>, CallError>, Option<Released>) {
        let mut credential = None;
        let mut outcome = Err(CallError::new(INTERNAL_ERROR, "not attempted"));
        for _attempt in 0..2 {
            let downstream = match self.acquire(target).await {
                Ok((downstream, released)) => {
                    credential = released;
                    downstream
                }
                Err(err) => return (Err(err), credential),
            };
            let call = Call {
                credential: credential.as_ref(),
                timeout: call_timeout(target.server),
                cancel: cancel.clone(),
                related: related.clone(),
            };
            match downstream.request(method, params.clone(), call).await {
                Ok(answer) => outcome = Ok(answer),
                Err(err @ DownstreamError::NotSent { .. }) => {
                    outcome = Err(CallError::from(err));
                    continue;
                }
                Err(err) => outcome = Err(CallError::from(err)),
            }
            break;
        }
        (outcome, credential)
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
        let session = HttpDownstream::new(server, self.hello(), self.events.clone())?;
        sessions.insert(key, session.clone());
        Ok(session)
    }

    /// The child for the target, started or restarted as needed: a new
    /// credential version or a dead process means a fresh child.
    async fn child(
        &self,
        target: &Target<'_>,
    ) -> Result<(Arc<StdioDownstream>, Option<Released>), CallError> {
        let server = target.server;
        let key = (server.id.clone(), target.scope.clone());
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
        let mut credential = self.credential(target).await?;
        let _one_start = self.starting.lock().await;
        let existing = self.children.lock().await.get(&key).cloned();
        if let Some(child) = existing {
            let mut version = credential.as_ref().map_or(0, |c| c.version);
            if child.is_alive() && child.spec == *server && child.version != version {
                // Either the material changed, or this credential was
                // fetched before another call started the child with newer
                // material: ask again, under the lock, for what is current.
                credential = self.credential(target).await?;
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
        let known = self
            .eras
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&server.id)
            .filter(|(spec, _)| spec == server)
            .map(|(_, era)| *era);
        let started = StdioDownstream::start(
            server,
            target.scope.clone(),
            credential.as_ref(),
            &self.hello(),
            known,
            self.events.clone(),
        )
        .await;
        let child = match started {
            Ok((child, era)) => {
                self.eras
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(server.id.clone(), (server.clone(), era));
                child
            }
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

    /// Retires the children and sessions of servers whose configuration
    /// changed or that are gone, so that no credential goes to a command or
    /// URL the configuration no longer names. (A request also checks the
    /// configuration it was routed by before it reuses one.)
    pub async fn retire_changed(&self) {
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
    /// next request starts them again. (Children that stopped on their own
    /// are [`Pool::reap`]ed instead.)
    pub async fn stop_idle(&self) {
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

    /// Records how a child that stopped on its own ended (once) and
    /// withdraws it; reports the change to the gateway when the client had
    /// seen its lists.
    pub async fn reap(&self, child: &Arc<StdioDownstream>) {
        let _one_reap = self.reaping.lock().await;
        let key = (child.server_id.clone(), child.scope.clone());
        // A child not (or no longer) in the map is still being started,
        // which records its own failure, or was replaced.
        let current = |children: &HashMap<Key, Arc<StdioDownstream>>| {
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
        if (&**child as &dyn Downstream).lists().any() {
            let _ = self.events.send(Event::Reachable {
                server_id: child.server_id.clone(),
            });
        }
    }

    /// Adds an ending to the child's history; when the history makes it
    /// wait, reports once the wait is over, so the client lists what
    /// returns.
    fn record_ending(
        &self,
        key: &Key,
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
            let events = self.events.clone();
            let server_id = server.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let _ = events.send(Event::Reachable { server_id });
            });
        }
    }

    /// Whether (server, scope) may be started now, by its history.
    fn may_start(&self, key: &Key, server: &pb::DownstreamServer) -> Result<(), CallError> {
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

    /// Stops every child and ends every HTTP session.
    pub async fn shutdown(&self) {
        let children: Vec<Arc<StdioDownstream>> =
            self.children.lock().await.drain().map(|(_, c)| c).collect();
        for child in children {
            child.stop().await;
        }
        let sessions: Vec<Arc<HttpDownstream>> =
            self.sessions.lock().await.drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.stop().await;
        }
    }
}
