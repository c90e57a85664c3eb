//! The proxy's link to the vault: the routing configuration visible to our
//! uid (followed live through WatchConfig), credentials fetched per call, and
//! audit records sent back.
//!
//! Trust: the vault authorises us by our uid; we hold nothing it did not
//! release for a call, and hold that only in zeroizing buffers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcplexer_proto::v1 as pb;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::redact::Scrub;
use crate::router::RouteTable;

/// The routing configuration the proxy works from.
pub struct Routing {
    /// The vault's configuration generation (0: none loaded yet).
    pub generation: u64,
    /// Route rules and workspaces, compiled.
    pub table: RouteTable,
    /// Downstream servers by id.
    pub servers: HashMap<String, pb::DownstreamServer>,
    /// Server id by tool namespace (servers mounted with a prefix).
    pub by_namespace: HashMap<String, String>,
    /// The raw rules, for choosing a listing scope.
    pub routes: Vec<pb::RouteRule>,
}

impl Routing {
    fn new(config: &pb::RoutingConfig) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let table = RouteTable::new(config, home.as_deref());
        for problem in table.problems() {
            tracing::warn!(problem = %problem, "routing configuration problem");
        }
        Self {
            generation: config.generation,
            table,
            servers: config
                .servers
                .iter()
                .map(|s| (s.id.clone(), s.clone()))
                .collect(),
            by_namespace: config
                .servers
                .iter()
                .filter(|s| !s.unprefixed)
                .map(|s| (s.tool_namespace.clone(), s.id.clone()))
                .collect(),
            routes: config.routes.clone(),
        }
    }

    fn empty() -> Self {
        Self::new(&pb::RoutingConfig::default())
    }
}

/// Values released for one call. No `Debug`; every buffer is wiped on drop.
pub struct Released {
    /// `env` or `header`.
    pub kind: String,
    /// Variable or header name, and value.
    pub values: Vec<(String, Zeroizing<Vec<u8>>)>,
    /// Changes whenever the material changes.
    pub version: u64,
    /// Keys to redact from audited params.
    pub hints: Vec<String>,
    /// What to scrub from anything recorded or passed on about the call.
    scrub: Scrub,
}

impl Released {
    fn from_proto(c: pb::Credential) -> Self {
        // Moved, not copied, into zeroizing buffers. The transport's receive
        // buffer that prost decoded from is freed by tonic, not wiped: it is
        // outside this process's reach, like the vault's own send buffer.
        let values: Vec<(String, Zeroizing<Vec<u8>>)> = c
            .values
            .into_iter()
            .map(|mut v| (v.name, Zeroizing::new(std::mem::take(&mut v.value))))
            .collect();
        // Besides the values, what the vault names (for an OAuth token sent
        // as `Bearer TOKEN`, the bare token).
        let extra: Vec<Zeroizing<Vec<u8>>> = c.scrub.into_iter().map(Zeroizing::new).collect();
        let scrub = Scrub::new(
            values
                .iter()
                .map(|(_, v)| v.as_slice())
                .chain(extra.iter().map(|v| v.as_slice())),
            c.kind == "header",
        );
        Self {
            kind: c.kind,
            values,
            version: c.version,
            hints: c.redaction_hints,
            scrub,
        }
    }

    /// What to scrub from anything recorded or passed on about the call:
    /// the values, what the vault named, and the forms they take.
    pub fn scrub(&self) -> &Scrub {
        &self.scrub
    }
}

/// Why the vault could not answer.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The socket could not be reached.
    #[error("the vault is unreachable at {path}: {reason}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// The transport's reason.
        reason: String,
    },
    /// The vault refused or failed the call.
    #[error("the vault refused: {message}{}", if fix.is_empty() { String::new() } else { format!(" (to fix: {fix})") })]
    Refused {
        /// gRPC code name.
        code: String,
        /// The vault's stable error code, if any.
        vault_code: String,
        /// The vault's message.
        message: String,
        /// The command that fixes it, if the vault named one.
        fix: String,
    },
}

/// The link to the vault.
pub struct VaultLink {
    socket: PathBuf,
    channel: tokio::sync::Mutex<Option<Channel>>,
    routing: watch::Sender<Arc<Routing>>,
    /// Whether the configuration feed is up (false until it first is, and
    /// while the vault is away).
    reachable: watch::Sender<bool>,
}

impl VaultLink {
    /// A link to the vault at `socket`; nothing is connected yet.
    pub fn new(socket: &Path) -> Arc<Self> {
        Arc::new(Self {
            socket: socket.to_owned(),
            channel: tokio::sync::Mutex::new(None),
            routing: watch::channel(Arc::new(Routing::empty())).0,
            reachable: watch::channel(false).0,
        })
    }

    async fn channel(&self) -> Result<Channel, VaultError> {
        let mut guard = self.channel.lock().await;
        if let Some(channel) = guard.as_ref() {
            return Ok(channel.clone());
        }
        let channel =
            mcplexer_proto::connect(&self.socket)
                .await
                .map_err(|e| VaultError::Unreachable {
                    path: self.socket.clone(),
                    reason: e.to_string(),
                })?;
        *guard = Some(channel.clone());
        Ok(channel)
    }

    /// Forgets the channel after a transport failure, so the next call
    /// reconnects (the vault may have restarted).
    async fn reset(&self) {
        *self.channel.lock().await = None;
    }

    async fn map_status(&self, status: tonic::Status) -> VaultError {
        let vault_code = mcplexer_proto::error_code(&status).to_owned();
        // Every refusal of the vault carries its error code; a status
        // without one comes from the transport (the vault went away
        // mid-call, or is not there), except the size checks tonic makes.
        if vault_code.is_empty()
            && !matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
                    | tonic::Code::ResourceExhausted
            )
        {
            self.reset().await;
            return VaultError::Unreachable {
                path: self.socket.clone(),
                reason: status.message().to_owned(),
            };
        }
        let fix = mcplexer_proto::error_fix(&status).to_owned();
        VaultError::Refused {
            code: format!("{:?}", status.code()),
            vault_code,
            message: status.message().to_owned(),
            fix,
        }
    }

    /// The routing configuration in force.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.borrow().clone()
    }

    /// A receiver that sees each new routing configuration.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Routing>> {
        self.routing.subscribe()
    }

    /// A receiver that sees the vault go away (false) and come back.
    pub fn watch_reachable(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// Loads the configuration once.
    pub async fn load(&self) -> Result<(), VaultError> {
        let channel = self.channel().await?;
        let config = match mcplexer_proto::vault_client(channel)
            .get_config(pb::GetConfigRequest {})
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(self.map_status(status).await),
        };
        self.routing.send_replace(Arc::new(Routing::new(&config)));
        Ok(())
    }

    /// Follows configuration changes until the process ends, reconnecting
    /// with backoff when the vault goes away.
    pub async fn follow(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.follow_once().await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(err) => {
                    tracing::warn!(error = %err, "lost the vault's configuration feed; retrying")
                }
            }
            self.reachable
                .send_if_modified(|up| std::mem::replace(up, false));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_once(&self) -> Result<(), VaultError> {
        let channel = self.channel().await?;
        let mut stream = match mcplexer_proto::vault_client(channel)
            .watch_config(pb::GetConfigRequest {})
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(self.map_status(status).await),
        };
        // The first answer of a new feed always re-reads the configuration:
        // the feed may be a restarted vault's, whose generation numbers
        // need not follow the old one's.
        let mut fresh = true;
        while let Some(item) = stream.next().await {
            let generation = match item {
                Ok(g) => g.generation,
                Err(status) => return Err(self.map_status(status).await),
            };
            if std::mem::take(&mut fresh) || generation != self.routing().generation {
                self.load().await?;
                tracing::info!(generation, "routing configuration updated");
            }
            self.reachable
                .send_if_modified(|up| !std::mem::replace(up, true));
        }
        self.reset().await;
        Ok(())
    }

    /// Fetches the credential for one call.
    pub async fn credential(&self, request: pb::CredentialRequest) -> Result<Released, VaultError> {
        let channel = self.channel().await?;
        match mcplexer_proto::vault_client(channel)
            .get_credential(request)
            .await
        {
            Ok(r) => Ok(Released::from_proto(r.into_inner())),
            Err(status) => Err(self.map_status(status).await),
        }
    }

    /// Sends one audit record (already redacted).
    pub async fn audit(&self, record: pb::AuditRecord) -> Result<(), VaultError> {
        let channel = self.channel().await?;
        match mcplexer_proto::vault_client(channel)
            .submit_audit(record)
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(self.map_status(status).await),
        }
    }
}
