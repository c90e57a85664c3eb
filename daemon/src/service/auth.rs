//! The Auth service (`mcplexerctl auth ...`): OAuth authorization of oauth2
//! scopes by the authorization-code flow with PKCE and by the device flow,
//! status, and revocation.
//!
//! Trust: only an admin or the scope's owner may authorize or revoke a
//! scope; a scope the caller cannot see is NOT_FOUND. The verifier, the
//! client secret, the codes and the tokens stay in the vault: the caller
//! gets the authorization URL, the state, the device's user code, and
//! statuses. Every authorization, refresh failure and revocation is
//! audited, without a token.

use std::pin::Pin;
use std::time::{Duration, Instant};

use mcplexer_proto::v1 as pb;
use pb::auth_server::Auth;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::SharedRef;
use crate::authz::Caller;
use crate::clock::now_ms;
use crate::error::{Result, VaultError};
use crate::model::{Obj, ProviderSpec, ScopeSpec, ScopeType};
use crate::oauth::binding::Binding;
use crate::oauth::client::{
    MAX_DEVICE_EXPIRY_SECS, MAX_DEVICE_INTERVAL_SECS, OAuthError, Params, TokenAnswer,
};
use crate::oauth::flows::{FLOW_TTL, PendingSpec};
use crate::oauth::tokens::{TokenMeta, TokenSet};
use crate::store;

/// The Auth service.
pub struct AuthService(pub SharedRef);

type Reply<T> = std::result::Result<Response<T>, Status>;

/// The device grant type (RFC 8628 §3.4).
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A scope and its provider, as the caller may act on them.
struct Target {
    scope: ScopeSpec,
    provider: ProviderSpec,
}

impl AuthService {
    /// The oauth2 scope `scope_id` and its provider, if the caller may
    /// authorize or revoke it.
    fn target(&self, caller: &Caller, scope_id: &str) -> Result<Target> {
        let snap = self.0.store.snapshot();
        let visible = self.0.authz.visible(caller, &snap);
        let Some(scope) = visible.scopes.get(scope_id) else {
            return Err(VaultError::not_found("auth_scope", scope_id, "scope"));
        };
        if !caller.may_manage(scope.spec.owner.as_ref()) {
            return Err(VaultError::denied(format!(
                "only an admin or the owner of auth_scope {scope_id} may authorize or revoke it"
            )));
        }
        if scope.spec.kind != ScopeType::Oauth2 {
            return Err(VaultError::Invalid {
                message: format!(
                    "auth_scope {scope_id} is not an oauth2 scope; its values are set with secret set"
                ),
                fix: Some(format!("mcplexerctl secret set {scope_id} KEY")),
            });
        }
        let provider_id = &scope.spec.oauth_provider_id;
        let Some(provider) = snap.config.providers.get(provider_id) else {
            return Err(VaultError::not_found(
                "oauth_provider",
                provider_id,
                "provider",
            ));
        };
        if provider.spec.client_id.is_empty() {
            return Err(VaultError::FailedPrecondition {
                message: format!("oauth_provider {provider_id} has no client_id"),
                fix: Some(format!(
                    "recreate it with mcplexerctl provider create ... --client-id ID (provider {provider_id})"
                )),
            });
        }
        Ok(Target {
            scope: scope.spec.clone(),
            provider: provider.spec.clone(),
        })
    }

    /// The provider's client secret, if one is stored.
    async fn client_secret(&self, provider_id: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let keyring = self.0.store.keyring();
        let id = provider_id.to_owned();
        self.0
            .store
            .read(move |conn| store::read_provider_secret(conn, &keyring, &id))
            .await
    }

    /// Stores tokens just obtained by an authorization and records it,
    /// unless the scope is no longer the one `target` was when the flow
    /// started (deleted, or changed in type, provider or owner).
    async fn store_authorized(
        &self,
        caller: &Caller,
        rpc: &'static str,
        target: &Target,
        answer: TokenAnswer,
    ) -> Result<pb::AuthStatus> {
        let scope_id = target.scope.id.clone();
        let lock = self.0.tokens.lock(&scope_id);
        let _one = lock.lock().await;
        let tokens = TokenSet {
            access_token: answer.access_token.clone(),
            refresh_token: answer.refresh_token.clone(),
        };
        let mut meta = TokenMeta::from_answer(
            &target.provider,
            &answer,
            None,
            tokens.refresh_token.is_some(),
            now_ms(),
        );
        let record = audit_record(caller, rpc, &scope_id, "success", "");
        let id = scope_id.clone();
        let binding = Binding::of(&target.scope);
        let job_binding = binding.clone();
        let meta = self
            .0
            .store
            .write(move |ctx| {
                job_binding.check(ctx.config(), "it was being authorized")?;
                ctx.store_tokens(&id, &tokens, &mut meta)?;
                ctx.insert_audit(record)?;
                Ok(meta)
            })
            .await?;
        self.0
            .tokens
            .committed_for(&self.0.store, &binding, meta.clone(), None);
        self.0.tokens.grants_changed();
        tracing::info!(scope = %scope_id, version = meta.version, "scope authorized");
        Ok(status_of(&target.scope, Some(&meta)))
    }

    async fn audit_failure(&self, caller: &Caller, rpc: &str, scope_id: &str, err: &VaultError) {
        // A user acting on a scope it may not see gets NOT_FOUND, exactly as
        // for a missing one; like the Admin service, the attempt is audited
        // as denied.
        let status = match err {
            VaultError::PermissionDenied { .. } => "denied",
            VaultError::NotFound { .. } if !caller.is_admin() => "denied",
            _ => "error",
        };
        let record = audit_record(caller, rpc, scope_id, status, &err.to_string());
        if let Err(e) = self
            .0
            .store
            .write(move |ctx| ctx.insert_audit(record))
            .await
        {
            tracing::error!(error = %e, rpc, "cannot record an audit event");
        }
    }

    async fn start(
        &self,
        caller: &Caller,
        req: pb::StartAuthorizationRequest,
    ) -> Result<pb::StartAuthorizationResponse> {
        let target = self.target(caller, &req.auth_scope_id)?;
        let provider = &target.provider;
        let redirect = check_redirect(&req.redirect_uri, &provider.redirect_uri)?;
        let pkce = provider.use_pkce.unwrap_or(true);
        let (state, challenge) = self.0.flows.open(PendingSpec {
            uid: caller.uid(),
            scope_id: target.scope.id.clone(),
            provider_id: provider.id.clone(),
            owner: target.scope.owner.clone(),
            pkce,
            redirect_uri: redirect.clone(),
        })?;
        let mut url = url::Url::parse(&provider.auth_url).map_err(|e| {
            VaultError::invalid(format!(
                "auth_url of oauth_provider {} is not a URL: {e}",
                provider.id
            ))
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &provider.client_id)
                .append_pair("redirect_uri", &redirect)
                .append_pair("state", &state);
            if !provider.scopes.is_empty() {
                query.append_pair("scope", &provider.scopes.join(&provider.scope_separator));
            }
            if let Some(challenge) = &challenge {
                query
                    .append_pair("code_challenge", challenge)
                    .append_pair("code_challenge_method", "S256");
            }
            const RESERVED: &[&str] = &[
                "response_type",
                "client_id",
                "redirect_uri",
                "state",
                "scope",
                "code_challenge",
                "code_challenge_method",
            ];
            for (key, value) in &provider.extra_auth_params {
                if !RESERVED.contains(&key.as_str()) {
                    query.append_pair(key, value);
                }
            }
        }
        Ok(pb::StartAuthorizationResponse {
            authorization_url: url.into(),
            state,
            expires_in_sec: FLOW_TTL.as_secs() as u32,
        })
    }

    /// Completes a flow; returns the scope it was for (empty when the
    /// state named none) with the outcome.
    async fn complete(
        &self,
        caller: &Caller,
        req: pb::CompleteAuthorizationRequest,
    ) -> (String, Result<pb::AuthStatus>) {
        let pending = match self.0.flows.take(&req.state, caller.uid()) {
            Ok(pending) => pending,
            Err(err) => return (String::new(), Err(err)),
        };
        let scope_id = pending.scope_id.clone();
        let result = async {
            let target = self.target(caller, &pending.scope_id)?;
            if target.provider.id != pending.provider_id || target.scope.owner != pending.owner {
                return Err(VaultError::FailedPrecondition {
                    message: format!(
                        "auth_scope {scope_id} changed provider or owner during the authorization"
                    ),
                    fix: Some(format!("mcplexerctl auth authorize {scope_id}")),
                });
            }
            let issuer = &target.provider.issuer;
            if !req.iss.is_empty() && !issuer.is_empty() && req.iss != *issuer {
                return Err(VaultError::FailedPrecondition {
                    message: format!(
                        "the authorization response came from issuer {:?}, not {issuer:?} (oauth_provider {}); the code was not used (RFC 9207)",
                        req.iss, target.provider.id
                    ),
                    fix: None,
                });
            }
            if req.code.is_empty() {
                return Err(VaultError::invalid("the authorization response has no code"));
            }
            let secret = self.client_secret(&target.provider.id).await?;
            let mut params: Params = vec![
                ("grant_type", Zeroizing::new("authorization_code".to_owned())),
                ("code", Zeroizing::new(req.code.clone())),
                ("redirect_uri", Zeroizing::new(pending.redirect_uri.clone())),
            ];
            if let Some(verifier) = &pending.verifier {
                params.push(("code_verifier", verifier.clone()));
            }
            let answer = self
                .0
                .tokens
                .http()
                .token(&target.provider, secret.as_deref().map(Vec::as_slice), params)
                .await
                .map_err(|e| provider_error(&scope_id, "exchanging the code", &e))?;
            self.store_authorized(caller, "Auth/CompleteAuthorization", &target, answer)
                .await
        }
        .await;
        (scope_id, result)
    }

    /// The statuses of the oauth2 scopes the caller can see (or one).
    fn statuses(&self, caller: &Caller, scope_id: &str) -> Result<Vec<pb::AuthStatus>> {
        let snap = self.0.store.snapshot();
        let visible = self.0.authz.visible(caller, &snap);
        let scopes: Vec<&Obj<ScopeSpec>> = if scope_id.is_empty() {
            visible
                .scopes
                .values()
                .filter(|s| s.spec.kind == ScopeType::Oauth2)
                .collect()
        } else {
            let scope = visible
                .scopes
                .get(scope_id)
                .ok_or_else(|| VaultError::not_found("auth_scope", scope_id, "scope"))?;
            if scope.spec.kind != ScopeType::Oauth2 {
                return Err(VaultError::invalid(format!(
                    "auth_scope {scope_id} is not an oauth2 scope"
                )));
            }
            vec![scope]
        };
        Ok(scopes
            .into_iter()
            .map(|s| {
                let meta = self
                    .0
                    .tokens
                    .meta(&s.spec.id)
                    .filter(|m| m.provider_id == s.spec.oauth_provider_id);
                status_of(&s.spec, meta.as_ref())
            })
            .collect())
    }

    async fn revoke(&self, caller: &Caller, req: pb::RevokeRequest) -> Result<pb::AuthStatus> {
        let target = self.target(caller, &req.auth_scope_id)?;
        let scope_id = target.scope.id.clone();
        let lock = self.0.tokens.lock(&scope_id);
        let _one = lock.lock().await;
        let keyring = self.0.store.keyring();
        let id = scope_id.clone();
        let stored = self
            .0
            .store
            .read(move |conn| store::read_tokens(conn, &keyring, &id))
            .await?;
        let mut revoked_at_provider = false;
        // Tokens from other endpoints than the provider has now are never
        // sent to its new ones: they are deleted here only.
        let issued_here = stored
            .as_ref()
            .is_some_and(|(_, meta)| meta.issued_by(&target.provider));
        if let Some((tokens, _)) = &stored
            && issued_here
            && !target.provider.revocation_url.is_empty()
            && !req.local_only
        {
            let secret = self.client_secret(&target.provider.id).await?;
            let secret = secret.as_deref().map(Vec::as_slice);
            let http = self.0.tokens.http();
            // The refresh token first: revoking it ends the grant (and, at
            // most providers, its access tokens); then the access token.
            if let Some(refresh) = &tokens.refresh_token {
                http.revoke(&target.provider, secret, refresh, "refresh_token")
                    .await
                    .map_err(|e| revoke_error(&scope_id, &e))?;
            }
            http.revoke(
                &target.provider,
                secret,
                &tokens.access_token,
                "access_token",
            )
            .await
            .map_err(|e| revoke_error(&scope_id, &e))?;
            revoked_at_provider = true;
        }
        let record = audit_record(caller, "Auth/Revoke", &scope_id, "success", "");
        let id = scope_id.clone();
        self.0
            .store
            .write(move |ctx| {
                ctx.delete_tokens(&id)?;
                ctx.insert_audit(record)?;
                Ok(())
            })
            .await?;
        self.0.tokens.committed(&scope_id, None);
        self.0.tokens.grants_changed();
        let mut status = status_of(&target.scope, None);
        status.revoked_at_provider = revoked_at_provider;
        if stored.is_some() && target.provider.revocation_url.is_empty() {
            status.message = format!(
                "oauth_provider {} has no revocation endpoint: the tokens were deleted here only; revoke the grant at the provider too",
                target.provider.id
            );
        } else if stored.is_some() && !issued_here && !req.local_only {
            status.message = format!(
                "the tokens were not issued by oauth_provider {} as it is now: they were deleted here only; revoke the grant at the provider that issued them",
                target.provider.id
            );
        }
        Ok(status)
    }
}

/// Checks the redirect URI a caller listens on against the provider's:
/// loopback http, same host and path, and the same port when the
/// provider's names one (any port otherwise, RFC 8252 §7.3).
fn check_redirect(given: &str, registered: &str) -> Result<String> {
    let bad = |why: String| VaultError::Invalid {
        message: format!("redirect_uri {given:?} {why}"),
        fix: None,
    };
    let url = url::Url::parse(given).map_err(|e| bad(format!("is not a URL: {e}")))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
    if url.scheme() != "http" || !loopback || url.port().is_none() {
        return Err(bad(
            "must be a loopback http URI with a port (http://127.0.0.1:PORT/PATH)".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment".into()));
    }
    if !registered.is_empty() {
        let want = url::Url::parse(registered).map_err(|e| {
            bad(format!(
                "cannot be checked: the provider's is not a URL: {e}"
            ))
        })?;
        let same_port = want.port().is_none_or(|p| url.port() == Some(p));
        if url.host_str() != want.host_str() || url.path() != want.path() || !same_port {
            return Err(bad(format!(
                "does not match the provider's redirect_uri {registered:?}"
            )));
        }
    }
    Ok(url.into())
}

fn provider_error(scope_id: &str, doing: &str, err: &OAuthError) -> VaultError {
    match err {
        OAuthError::Transient(_) => VaultError::OAuth {
            code: "PROVIDER_UNAVAILABLE",
            message: format!("auth_scope {scope_id}: {doing} failed: {err}"),
            fix: None,
            retryable: true,
        },
        _ => VaultError::OAuth {
            code: "PROVIDER_ERROR",
            message: format!("auth_scope {scope_id}: {doing} failed: {err}"),
            fix: Some(format!("mcplexerctl auth authorize {scope_id}")),
            retryable: false,
        },
    }
}

fn revoke_error(scope_id: &str, err: &OAuthError) -> VaultError {
    VaultError::OAuth {
        code: if matches!(err, OAuthError::Transient(_)) {
            "PROVIDER_UNAVAILABLE"
        } else {
            "PROVIDER_ERROR"
        },
        message: format!(
            "auth_scope {scope_id}: the provider did not revoke the token ({err}); nothing was deleted"
        ),
        fix: Some(format!(
            "retry, or revoke the grant at the provider and run mcplexerctl auth revoke {scope_id} --local"
        )),
        retryable: matches!(err, OAuthError::Transient(_)),
    }
}

/// A scope's status, from what is known of its tokens.
fn status_of(scope: &ScopeSpec, meta: Option<&TokenMeta>) -> pb::AuthStatus {
    let Some(meta) = meta else {
        return pb::AuthStatus {
            auth_scope_id: scope.id.clone(),
            oauth_provider_id: scope.oauth_provider_id.clone(),
            status: "unauthorized".into(),
            message: format!("run mcplexerctl auth authorize {}", scope.id),
            ..Default::default()
        };
    };
    let status = meta.status(now_ms());
    let message = match status {
        "reauthorization_required" => format!(
            "{}; run mcplexerctl auth authorize {}",
            meta.message, scope.id
        ),
        "expired" => format!(
            "the access token expired and there is no refresh token; run mcplexerctl auth authorize {}",
            scope.id
        ),
        _ => String::new(),
    };
    pb::AuthStatus {
        auth_scope_id: scope.id.clone(),
        oauth_provider_id: meta.provider_id.clone(),
        status: status.into(),
        expires_at_ms: meta.expires_at_ms.unwrap_or(0),
        granted_scopes: meta.granted_scopes.clone(),
        authorized_at_ms: meta.authorized_at_ms,
        refreshed_at_ms: meta.refreshed_at_ms,
        has_refresh_token: meta.has_refresh_token,
        message,
        revoked_at_provider: false,
    }
}

/// The status shown for a scope in `scope list` and `scope show`.
pub fn scope_status(tokens: &crate::oauth::tokens::Tokens, scope: &ScopeSpec) -> String {
    let meta = tokens
        .meta(&scope.id)
        .filter(|m| m.provider_id == scope.oauth_provider_id);
    status_of(scope, meta.as_ref()).status
}

fn audit_record(
    caller: &Caller,
    rpc: &str,
    scope_id: &str,
    status: &str,
    error: &str,
) -> pb::AuditRecord {
    pb::AuditRecord {
        time_ms: now_ms(),
        uid: caller.uid(),
        pid: caller.peer.pid,
        kind: "admin".into(),
        auth_scope_id: scope_id.into(),
        status: status.into(),
        error: error.into(),
        action: rpc.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn start_authorization(
        &self,
        request: Request<pb::StartAuthorizationRequest>,
    ) -> Reply<pb::StartAuthorizationResponse> {
        let rpc = "Auth/StartAuthorization";
        let caller = self.0.authorize(&request, rpc).await?;
        let req = request.into_inner();
        let scope_id = req.auth_scope_id.clone();
        let result = self.start(&caller, req).await;
        match result {
            Ok(response) => {
                self.0
                    .store
                    .write({
                        let record = audit_record(&caller, rpc, &scope_id, "success", "");
                        move |ctx| ctx.insert_audit(record)
                    })
                    .await?;
                Ok(Response::new(response))
            }
            Err(err) => {
                self.audit_failure(&caller, rpc, &scope_id, &err).await;
                Err(err.into())
            }
        }
    }

    async fn complete_authorization(
        &self,
        request: Request<pb::CompleteAuthorizationRequest>,
    ) -> Reply<pb::AuthStatus> {
        let rpc = "Auth/CompleteAuthorization";
        let caller = self.0.authorize(&request, rpc).await?;
        match self.complete(&caller, request.into_inner()).await {
            (_, Ok(status)) => Ok(Response::new(status)),
            (scope_id, Err(err)) => {
                self.audit_failure(&caller, rpc, &scope_id, &err).await;
                Err(err.into())
            }
        }
    }

    type DeviceAuthorizationStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::DeviceEvent, Status>> + Send>>;

    async fn device_authorization(
        &self,
        request: Request<pb::DeviceAuthorizationRequest>,
    ) -> Reply<Self::DeviceAuthorizationStream> {
        let rpc = "Auth/DeviceAuthorization";
        let caller = self.0.authorize(&request, rpc).await?;
        let scope_id = request.into_inner().auth_scope_id;
        let target = match self.device_target(&caller, &scope_id) {
            Ok(target) => target,
            Err(err) => {
                self.audit_failure(&caller, rpc, &scope_id, &err).await;
                return Err(err.into());
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let service = AuthService(self.0.clone());
        tokio::spawn(async move {
            let outcome = service.run_device(&caller, &target, &tx).await;
            match outcome {
                Ok(status) => {
                    let _ = tx
                        .send(Ok(pb::DeviceEvent {
                            event: Some(pb::device_event::Event::Done(status)),
                        }))
                        .await;
                }
                Err(err) => {
                    service
                        .audit_failure(&caller, rpc, &target.scope.id, &err)
                        .await;
                    let _ = tx.send(Err(err.into())).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Reply<pb::AuthStatusResponse> {
        let caller = self.0.authorize(&request, "Auth/Status").await?;
        let scopes = self.statuses(&caller, &request.into_inner().auth_scope_id)?;
        Ok(Response::new(pb::AuthStatusResponse { scopes }))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Reply<pb::AuthStatus> {
        let rpc = "Auth/Revoke";
        let caller = self.0.authorize(&request, rpc).await?;
        let req = request.into_inner();
        let scope_id = req.auth_scope_id.clone();
        match AuthService::revoke(self, &caller, req).await {
            Ok(status) => Ok(Response::new(status)),
            Err(err) => {
                self.audit_failure(&caller, rpc, &scope_id, &err).await;
                Err(err.into())
            }
        }
    }
}

type EventSender = tokio::sync::mpsc::Sender<std::result::Result<pb::DeviceEvent, Status>>;

impl AuthService {
    fn device_target(&self, caller: &Caller, scope_id: &str) -> Result<Target> {
        let target = self.target(caller, scope_id)?;
        if target.provider.device_auth_url.is_empty() {
            return Err(VaultError::FailedPrecondition {
                message: format!(
                    "oauth_provider {} has no device authorization endpoint (device_auth_url)",
                    target.provider.id
                ),
                fix: Some(format!(
                    "mcplexerctl auth authorize {scope_id} (the browser flow)"
                )),
            });
        }
        Ok(target)
    }

    /// The device flow: ask for a code, show it, poll until the user
    /// approves, denies, or the code expires, or the caller goes away.
    async fn run_device(
        &self,
        caller: &Caller,
        target: &Target,
        tx: &EventSender,
    ) -> Result<pb::AuthStatus> {
        let scope_id = &target.scope.id;
        let secret = self.client_secret(&target.provider.id).await?;
        let secret = secret.as_deref().map(Vec::as_slice);
        let http = self.0.tokens.http();
        let device = http
            .device(&target.provider, secret)
            .await
            .map_err(|e| provider_error(scope_id, "starting the device authorization", &e))?;
        // The client bounds both already; the arithmetic here must not
        // depend on it.
        let expires_in = device.expires_in.min(MAX_DEVICE_EXPIRY_SECS);
        let started = Instant::now();
        let deadline = started
            .checked_add(Duration::from_secs(expires_in))
            .unwrap_or(started);
        let mut interval = device.interval.clamp(1, MAX_DEVICE_INTERVAL_SECS);
        let code = pb::DeviceEvent {
            event: Some(pb::device_event::Event::Code(pb::DeviceCode {
                user_code: device.user_code.clone(),
                verification_uri: device.verification_uri.clone(),
                verification_uri_complete: device.verification_uri_complete.clone(),
                expires_in_sec: expires_in as u32,
                interval_sec: interval as u32,
            })),
        };
        if tx.send(Ok(code)).await.is_err() {
            return Err(gone());
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(interval)) => {}
                () = tx.closed() => return Err(gone()),
            }
            if Instant::now() >= deadline {
                return Err(VaultError::OAuth {
                    code: "PROVIDER_ERROR",
                    message: format!(
                        "auth_scope {scope_id}: the device code expired before it was approved"
                    ),
                    fix: Some(format!("mcplexerctl auth authorize {scope_id} --device")),
                    retryable: false,
                });
            }
            let params: Params = vec![
                ("grant_type", Zeroizing::new(DEVICE_GRANT.to_owned())),
                ("device_code", device.device_code.clone()),
            ];
            let reason = match http.token(&target.provider, secret, params).await {
                Ok(answer) => {
                    return self
                        .store_authorized(caller, "Auth/DeviceAuthorization", target, answer)
                        .await;
                }
                Err(OAuthError::Refused { error, .. }) if error == "authorization_pending" => {
                    "authorization_pending"
                }
                Err(OAuthError::Refused { error, .. }) if error == "slow_down" => {
                    // RFC 8628 §3.5: 5 s more for this and every later poll
                    // (up to the vault's longest wait).
                    interval = (interval + 5).min(MAX_DEVICE_INTERVAL_SECS);
                    "slow_down"
                }
                // A transient failure: poll again at the same pace.
                Err(OAuthError::Transient(_)) => "authorization_pending",
                Err(err) => {
                    let doing = match err.code() {
                        Some("access_denied") => "the device authorization (denied by the user)",
                        Some("expired_token") => "the device authorization (the code expired)",
                        _ => "the device authorization",
                    };
                    return Err(provider_error(scope_id, doing, &err));
                }
            };
            let waiting = pb::DeviceEvent {
                event: Some(pb::device_event::Event::Waiting(pb::DeviceWaiting {
                    interval_sec: interval as u32,
                    expires_in_sec: deadline.saturating_duration_since(Instant::now()).as_secs()
                        as u32,
                    reason: reason.into(),
                })),
            };
            if tx.send(Ok(waiting)).await.is_err() {
                return Err(gone());
            }
        }
    }
}

fn gone() -> VaultError {
    VaultError::FailedPrecondition {
        message: "the caller went away before the device authorization finished".into(),
        fix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_must_be_loopback_and_match_the_registered_one() {
        let ok = |given, registered| check_redirect(given, registered).is_ok();
        assert!(ok("http://127.0.0.1:4711/callback", ""));
        assert!(ok(
            "http://127.0.0.1:4711/callback",
            "http://127.0.0.1/callback"
        ));
        assert!(ok(
            "http://127.0.0.1:4711/callback",
            "http://127.0.0.1:4711/callback"
        ));
        assert!(!ok(
            "http://127.0.0.1:4712/callback",
            "http://127.0.0.1:4711/callback"
        ));
        assert!(!ok(
            "http://127.0.0.1:4711/other",
            "http://127.0.0.1/callback"
        ));
        assert!(!ok(
            "http://localhost:4711/callback",
            "http://127.0.0.1/callback"
        ));
        assert!(!ok("https://127.0.0.1:4711/callback", ""));
        assert!(!ok("http://example.com:4711/callback", ""));
        assert!(!ok("http://127.0.0.1/callback", ""), "no port");
        assert!(!ok("http://127.0.0.1:4711/callback?x=1", ""));
    }
}
