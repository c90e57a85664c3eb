//! The Vault service (mcplexer-proxy): routing configuration, credential
//! release, audit submission.
//!
//! Decrypted values are kept in memory per scope and version, in zeroizing
//! buffers, so a release costs no asymmetric decryption (an age X25519
//! decryption costs as much as the RPC itself). The cache entry of a scope is
//! replaced when its version changes and dropped (wiped) when the scope goes.
//! The process is non-dumpable, so the cache is not readable by other
//! processes of the same uid either.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use mcplexer_proto::v1 as pb;
use pb::vault_server::Vault;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::SharedRef;
use crate::authz::Caller;
use crate::clock::now_ms;
use crate::error::{Result, VaultError};
use crate::model::{self, ScopeType, enum_name, transport_compatible};
use crate::vault::SecretMap;

/// A scope's decrypted values at one version. No `Debug`.
struct Cached {
    version: u64,
    values: Vec<(String, Zeroizing<Vec<u8>>)>,
}

/// The Vault service.
pub struct VaultService {
    shared: SharedRef,
    cache: Mutex<HashMap<String, Arc<Cached>>>,
}

type Reply<T> = std::result::Result<Response<T>, Status>;

impl VaultService {
    /// A Vault service over `shared`.
    pub fn new(shared: SharedRef) -> Self {
        Self {
            shared,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn values(&self, scope_id: &str, version: u64) -> Result<Arc<Cached>> {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope_id)
            .filter(|c| c.version == version)
        {
            return Ok(hit.clone());
        }
        let keyring = self.shared.store.keyring();
        let id = scope_id.to_owned();
        let loaded = self
            .shared
            .store
            .read(move |conn| {
                let Some((ciphertext, version)) = crate::store::read_scope_ciphertext(conn, &id)?
                else {
                    return Ok(None);
                };
                let map = SecretMap::decode(&keyring.decrypt(&ciphertext)?)?;
                let values = map
                    .iter()
                    .map(|(k, v)| (k.to_owned(), Zeroizing::new(v.to_vec())))
                    .collect();
                Ok(Some(Cached { version, values }))
            })
            .await?;
        let Some(loaded) = loaded else {
            return Err(VaultError::FailedPrecondition {
                message: format!("auth_scope {scope_id} has no secret values yet"),
                fix: Some(format!("mcplexerctl secret set {scope_id} KEY")),
            });
        };
        let loaded = Arc::new(loaded);
        let snap = self.shared.store.snapshot();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|id, _| snap.config.scopes.contains_key(id));
        cache.insert(scope_id.to_owned(), loaded.clone());
        Ok(loaded)
    }

    async fn release(
        &self,
        caller: &Caller,
        req: &pb::CredentialRequest,
    ) -> Result<pb::Credential> {
        let snap = self.shared.store.snapshot();
        let scope_id = &req.auth_scope_id;
        let Some(scope) = snap.config.scopes.get(scope_id) else {
            // Same answer as "not granted": a caller learns nothing about
            // scopes it may not use.
            return Err(not_granted(scope_id, caller));
        };
        if !self.shared.authz.may_use_scope(caller, &snap, scope_id) {
            return Err(not_granted(scope_id, caller));
        }
        // The route the proxy followed: current, visible to the caller,
        // carrying this scope to this server for this tool, and allowed to
        // carry it (a defence against a stale or lying proxy too).
        self.shared.authz.check_release_route(caller, &snap, req)?;
        // A server the caller cannot see (another user's) is answered as a
        // missing one: the answer reveals nothing about it.
        let server = snap
            .config
            .servers
            .get(&req.downstream_server_id)
            .filter(|s| {
                self.shared
                    .authz
                    .may_follow(caller, &snap, s.spec.owner.as_ref())
            });
        let Some(server) = server else {
            return Err(VaultError::not_found(
                "downstream_server",
                &req.downstream_server_id,
                "server",
            ));
        };
        let transport = model::parse_transport(&req.transport).map_err(VaultError::invalid)?;
        if transport != server.spec.transport {
            return Err(VaultError::TransportMismatch {
                message: format!(
                    "downstream_server {} uses transport {}, but the request says {}",
                    server.spec.id,
                    enum_name(&server.spec.transport),
                    req.transport
                ),
            });
        }
        transport_compatible(&scope.spec, &server.spec).map_err(|message| {
            let message = if req.route_rule_id.is_empty() {
                message
            } else {
                format!("route_rule {}: {message}", req.route_rule_id)
            };
            VaultError::TransportMismatch { message }
        })?;
        if scope.spec.kind == ScopeType::Oauth2 {
            return self.release_token(&snap, &scope.spec, &server.spec).await;
        }
        let version = snap.config.secrets.get(scope_id).map_or(0, |m| m.version);
        let cached = self.values(scope_id, version).await?;
        let kind = match scope.spec.kind {
            ScopeType::Header => "header",
            _ => "env",
        };
        // The values are copied into the response message, which tonic
        // encodes and drops; that copy is not wiped (the encoder owns it).
        let values: Vec<pb::CredentialValue> = cached
            .values
            .iter()
            .map(|(name, value)| pb::CredentialValue {
                name: name.clone(),
                value: value.to_vec(),
            })
            .collect();
        let scrub = values.iter().map(|v| v.value.clone()).collect();
        Ok(pb::Credential {
            kind: kind.into(),
            values,
            version: cached.version,
            expires_at_ms: 0,
            scrub,
            redaction_hints: scope.spec.redaction_hints.clone(),
        })
    }

    /// The generation a proxy sees: the configuration's, moved on too by
    /// every change of which scopes have a usable grant (both only grow).
    fn generation(&self, snap: &crate::store::Snapshot) -> u64 {
        snap.generation + self.shared.tokens.grants_epoch()
    }

    /// An oauth2 scope's access token (refreshed if due): in
    /// `token_env_var` for a stdio server, as `Authorization: Bearer` for
    /// an http one.
    async fn release_token(
        &self,
        snap: &crate::store::Snapshot,
        scope: &model::ScopeSpec,
        server: &model::ServerSpec,
    ) -> Result<pb::Credential> {
        let Some(provider) = snap.config.providers.get(&scope.oauth_provider_id) else {
            return Err(VaultError::not_found(
                "oauth_provider",
                &scope.oauth_provider_id,
                "provider",
            ));
        };
        let access = self
            .shared
            .tokens
            .access(&self.shared.store, scope, &provider.spec)
            .await?;
        // As with secret values, these copies go into the response message,
        // which tonic encodes and drops without wiping.
        let (kind, name, value) = match server.transport {
            model::Transport::Http => (
                "header",
                "Authorization".to_owned(),
                format!("Bearer {}", access.token.as_str()).into_bytes(),
            ),
            model::Transport::Stdio => (
                "env",
                if scope.token_env_var.is_empty() {
                    "ACCESS_TOKEN".to_owned()
                } else {
                    scope.token_env_var.clone()
                },
                access.token.as_bytes().to_vec(),
            ),
        };
        Ok(pb::Credential {
            kind: kind.into(),
            values: vec![pb::CredentialValue { name, value }],
            version: access.version,
            expires_at_ms: access.expires_at_ms.unwrap_or(0),
            scrub: vec![access.token.as_bytes().to_vec()],
            redaction_hints: scope.redaction_hints.clone(),
        })
    }

    /// Records a release (or a refused one) in the audit journal; when this
    /// returns `Ok` the record survives a crash of the daemon.
    fn audit_release(
        &self,
        caller: &Caller,
        req: &pb::CredentialRequest,
        status: &str,
        error: String,
    ) -> Result<()> {
        self.shared
            .journal
            .append(pb::AuditRecord {
                time_ms: now_ms(),
                uid: caller.uid(),
                pid: caller.peer.pid,
                kind: "release".into(),
                // What the peer named, cut to the sizes a real name has:
                // a release's record costs the same whatever was sent.
                tool: cap(req.tool.clone(), AUDIT_NAME),
                route_rule_id: cap(req.route_rule_id.clone(), AUDIT_NAME),
                downstream_server_id: cap(req.downstream_server_id.clone(), AUDIT_NAME),
                auth_scope_id: cap(req.auth_scope_id.clone(), AUDIT_NAME),
                status: status.into(),
                error: cap(error, AUDIT_ERROR),
                ..Default::default()
            })
            .map(|_| ())
    }
}

fn not_granted(scope_id: &str, caller: &Caller) -> VaultError {
    VaultError::denied(format!(
        "auth_scope {} does not exist or uid {} is neither its owner nor granted it",
        crate::model::short(scope_id),
        caller.uid()
    ))
}

use crate::limits::{AUDIT_ERROR, AUDIT_NAME, cap_text as cap};

#[tonic::async_trait]
impl Vault for VaultService {
    async fn get_config(&self, request: Request<pb::GetConfigRequest>) -> Reply<pb::RoutingConfig> {
        let caller = self.shared.authorize(&request, "Vault/GetConfig").await?;
        let snap = self.shared.store.snapshot();
        // What the caller's proxy follows: for an admin too, never a
        // user's servers and routes.
        let state = self.shared.authz.followable(&caller, &snap);
        Ok(Response::new(pb::RoutingConfig {
            generation: self.generation(&snap),
            servers: state.servers.values().map(model::server_to_proto).collect(),
            workspaces: state
                .workspaces
                .values()
                .map(model::workspace_to_proto)
                .collect(),
            routes: state
                .routes
                .values()
                .map(|r| {
                    let mut route = model::route_to_proto(r);
                    route.suspended = self
                        .shared
                        .authz
                        .route_suspension(&snap, &r.spec)
                        .unwrap_or_default();
                    route
                })
                .collect(),
            scopes: state
                .scopes
                .values()
                .map(|s| model::scope_to_proto(s, &state))
                .collect(),
        }))
    }

    type WatchConfigStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::ConfigGeneration, Status>> + Send>>;

    async fn watch_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Reply<Self::WatchConfigStream> {
        let caller = self.shared.authorize(&request, "Vault/WatchConfig").await?;
        // A new configuration, or a scope authorized, revoked or in need
        // of re-authorization: either changes what a proxy may call.
        let configs =
            tokio_stream::wrappers::WatchStream::new(self.shared.store.watch()).map(|_| ());
        let grants =
            tokio_stream::wrappers::WatchStream::new(self.shared.tokens.watch_grants()).map(|_| ());
        let shared = self.shared.clone();
        let stream = configs.merge(grants).map(move |()| {
            let snap = shared.store.snapshot();
            Ok(pb::ConfigGeneration {
                generation: snap.generation + shared.tokens.grants_epoch(),
            })
        });
        let stream = self
            .shared
            .streams
            .open(&caller, "configuration watch", stream)?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_credential(
        &self,
        request: Request<pb::CredentialRequest>,
    ) -> Reply<pb::Credential> {
        let caller = self
            .shared
            .authorize(&request, "Vault/GetCredential")
            .await?;
        let req = request.into_inner();
        match self.release(&caller, &req).await {
            Ok(credential) => {
                // Audited before release: no record, no values.
                self.audit_release(&caller, &req, "success", String::new())?;
                Ok(Response::new(credential))
            }
            Err(err) => {
                let status = match err {
                    VaultError::PermissionDenied { .. } | VaultError::TransportMismatch { .. } => {
                        "denied"
                    }
                    _ => "error",
                };
                // A user's refused releases draw on its audit quota (a
                // release that goes ahead is always recorded, first).
                let metered = if caller.is_admin() {
                    Ok(())
                } else {
                    self.shared.audit_quota.take(
                        caller.uid(),
                        (crate::limits::AUDIT_NAME * 4 + crate::limits::AUDIT_ERROR) as u64,
                        std::time::Instant::now(),
                    )
                };
                match metered {
                    Ok(()) => {
                        if let Err(audit_err) =
                            self.audit_release(&caller, &req, status, err.to_string())
                        {
                            tracing::error!(error = %audit_err, "cannot record a refused release");
                        }
                    }
                    Err(refusal) => {
                        if let Some(refused) = refusal.report {
                            let note = format!(
                                "{refused} refused releases not recorded one by one: {}",
                                refusal.message
                            );
                            self.shared
                                .audit_report(&caller.peer, "Vault/GetCredential", &note)
                                .await;
                        }
                    }
                }
                Err(err.into())
            }
        }
    }

    async fn submit_audit(
        &self,
        request: Request<pb::AuditRecord>,
    ) -> Reply<pb::SubmitAuditResponse> {
        let caller = self.shared.authorize(&request, "Vault/SubmitAudit").await?;
        let r = request.into_inner();
        if !matches!(r.status.as_str(), "success" | "error" | "denied") {
            return Err(VaultError::invalid(format!(
                "audit status {:?} is not one of success, error, denied",
                r.status
            ))
            .into());
        }
        // Audit holds redacted excerpts, not payloads: 16 KiB of params,
        // error and response each keeps a record under 50 KiB.
        const FIELD: usize = AUDIT_NAME;
        const BODY: usize = 16 * 1024;
        let record = pb::AuditRecord {
            id: 0,
            time_ms: now_ms(),
            uid: caller.uid(),
            pid: caller.peer.pid,
            kind: "call".into(),
            workspace_id: cap(r.workspace_id, FIELD),
            tool: cap(r.tool, FIELD),
            route_rule_id: cap(r.route_rule_id, FIELD),
            downstream_server_id: cap(r.downstream_server_id, FIELD),
            auth_scope_id: cap(r.auth_scope_id, FIELD),
            params: cap(r.params, BODY),
            status: r.status,
            latency_ms: r.latency_ms,
            error: cap(r.error, BODY),
            response: cap(r.response, BODY),
            // For a call record: the MCP method, when it is not tools/call
            // (prompts/get, resources/read, ...).
            action: mcp_method(r.action),
        };
        if !caller.is_admin() {
            let bytes = prost::Message::encoded_len(&record) as u64;
            if let Err(refusal) =
                self.shared
                    .audit_quota
                    .take(caller.uid(), bytes, std::time::Instant::now())
            {
                if let Some(refused) = refusal.report {
                    let note = format!("{refused} audit records refused: {}", refusal.message);
                    self.shared
                        .audit_report(&caller.peer, "Vault/SubmitAudit", &note)
                        .await;
                }
                return Err(VaultError::limit(refusal.message).into());
            }
        }
        // Journalled like a release: durable against a crash of the vault
        // once appended, and ingested into the audit table in batches.
        let sequence = self.shared.journal.append(record)?;
        Ok(Response::new(pb::SubmitAuditResponse { sequence }))
    }
}

/// A call record's `action`: an MCP method name (lower-case letters, `/`
/// and `_`, at most 64 bytes); anything else is dropped.
fn mcp_method(action: String) -> String {
    let valid = action.len() <= 64
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'/' || b == b'_' || b.is_ascii_uppercase());
    if valid { action } else { String::new() }
}
