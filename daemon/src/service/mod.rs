//! The gRPC services. Each handler authorises first (peer → caller → RPC
//! table → objects), then calls the domain, then maps the error; denials are
//! audited.
//!
//! Trust: the peer's identity comes only from the connection's kernel
//! credentials (see `authz`); request fields never name the caller.

mod admin;
mod auth;
mod vault;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mcplexer_proto::v1 as pb;
use tonic::Request;

use crate::authz::{Authorizer, Caller, PeerInfo};
use crate::clock::now_ms;
use crate::error::{Result, VaultError};
use crate::store::{AuditJournal, Store, WriteCtx};
use crate::vault::IdentityOrigin;

pub use admin::AdminService;
pub use auth::AuthService;
pub use vault::VaultService;

/// Facts about the running daemon the services report or need.
pub struct DaemonInfo {
    /// `system` or `user`.
    pub mode: &'static str,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Where the identity came from.
    pub identity: IdentityOrigin,
    /// Audit retention in days.
    pub audit_retention_days: u32,
    /// When the daemon started.
    pub started: Instant,
}

/// What every service shares.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The journal that audits releases before their values leave.
    pub journal: AuditJournal,
    /// The authorizer.
    pub authz: Authorizer,
    /// Daemon facts.
    pub info: DaemonInfo,
    /// Serialises identity changes: rotation, sealing, unlocking.
    pub rotation: tokio::sync::Mutex<()>,
    /// Whether the vault-managed identity file is passphrase-sealed (the
    /// vault starts sealed).
    pub identity_sealed: std::sync::atomic::AtomicBool,
    /// OAuth tokens: their state, release and refresh.
    pub tokens: crate::oauth::tokens::Tokens,
    /// Authorization-code flows in progress.
    pub flows: crate::oauth::flows::Flows,
    /// Runs peers' CPU-heavy work (parsing) off the runtime, per uid.
    pub work: crate::limits::WorkGate,
    /// Long-lived streams: bounded per uid, ended at shutdown.
    pub streams: crate::limits::Streams,
    /// Submitted audit records: bounded per uid.
    pub audit_quota: crate::limits::AuditQuota,
}

impl Shared {
    /// Authenticates and authorises a request for `rpc` (`Service/Method`);
    /// a refusal is audited.
    pub async fn authorize<T>(&self, request: &Request<T>, rpc: &'static str) -> Result<Caller> {
        let Some(peer) = request.extensions().get::<PeerInfo>().cloned() else {
            return Err(VaultError::denied(
                "the connection carries no peer credentials",
            ));
        };
        let checked = self
            .authz
            .caller(&peer)
            .and_then(|caller| self.authz.check_rpc(&caller, rpc).map(|()| caller));
        match checked {
            Ok(caller) => Ok(caller),
            Err(err) => {
                self.audit_admin(&peer, rpc, "denied", &err.to_string())
                    .await;
                Err(err)
            }
        }
    }

    /// Records an admin-side event (a mutation or a refusal). Failure to
    /// record is logged, never hidden. A user's refusals and failures count
    /// against its audit quota: past it they are counted into one record a
    /// minute instead of stored one by one.
    pub async fn audit_admin(&self, peer: &PeerInfo, rpc: &str, status: &str, error: &str) {
        let mut record = admin_record(peer, rpc, status, error);
        let admin = self.authz.caller(peer).is_ok_and(|c| c.is_admin());
        if status != "success" && !admin {
            let bytes = prost::Message::encoded_len(&record) as u64;
            if let Err(refusal) = self.audit_quota.take(peer.uid, bytes, Instant::now()) {
                let Some(refused) = refusal.report else {
                    return;
                };
                record.error = crate::limits::cap_text(
                    format!(
                        "{refused} refusals not recorded one by one: {}; the last: {}",
                        refusal.message, record.error
                    ),
                    crate::limits::AUDIT_ERROR,
                );
            }
        }
        if let Err(err) = self.store.write(move |ctx| ctx.insert_audit(record)).await {
            tracing::error!(error = %err, rpc, "cannot record an audit event");
        }
    }

    /// Records the report of a uid's refused audit records: itself never
    /// metered (it is what metering leaves).
    pub async fn audit_report(&self, peer: &PeerInfo, rpc: &str, note: &str) {
        let record = admin_record(peer, rpc, "denied", note);
        if let Err(err) = self.store.write(move |ctx| ctx.insert_audit(record)).await {
            tracing::error!(error = %err, rpc, "cannot record an audit event");
        }
    }

    /// Runs a mutation as one write job that also records its success, so
    /// a committed change never lacks its audit record. A refusal or failure
    /// rolled the job back; it is recorded afterwards.
    pub async fn mutate<T, F>(&self, caller: &Caller, rpc: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        let record = admin_record(&caller.peer, rpc, "success", "");
        let result = self
            .store
            .write(move |ctx| {
                let out = f(ctx)?;
                ctx.insert_audit(record)?;
                Ok(out)
            })
            .await;
        if result.is_err() {
            self.audit_outcome(caller, rpc, &result, true).await;
        } else {
            // A deleted (or pruned) scope took its tokens with it.
            self.tokens.retain_scopes(&self.store.snapshot().config);
        }
        result
    }

    /// Audits the outcome of a call by `caller` that was authorised but may
    /// still have been refused on its objects.
    pub async fn audit_outcome<T>(
        &self,
        caller: &Caller,
        rpc: &str,
        result: &Result<T>,
        mutation: bool,
    ) {
        match result {
            Err(err @ VaultError::PermissionDenied { .. }) => {
                self.audit_admin(&caller.peer, rpc, "denied", &err.to_string())
                    .await;
            }
            Err(err) if mutation => {
                self.audit_admin(&caller.peer, rpc, "error", &err.to_string())
                    .await;
            }
            Ok(_) if mutation => self.audit_admin(&caller.peer, rpc, "success", "").await,
            _ => {}
        }
    }
}

/// The audit record of an admin-side event.
fn admin_record(peer: &PeerInfo, rpc: &str, status: &str, error: &str) -> pb::AuditRecord {
    pb::AuditRecord {
        time_ms: now_ms(),
        uid: peer.uid,
        pid: peer.pid,
        kind: "admin".into(),
        status: status.into(),
        error: crate::limits::cap_text(error.to_owned(), crate::limits::AUDIT_ERROR),
        action: rpc.into(),
        ..Default::default()
    }
}

/// Shorthand for the shared state handed to each service.
pub type SharedRef = Arc<Shared>;
