//! An oauth2 scope's tokens: stored age-encrypted, released as a valid
//! access token, refreshed ahead of expiry.
//!
//! Refresh is single-flight per scope: callers that find the token due
//! queue on the scope's lock, and the first one refreshes while the others
//! then find the fresh token. A rotated refresh token is committed (on
//! disk) before the new access token is released, so a crash loses at most
//! an answer the provider gave, never a token the vault handed out. If the
//! vault dies between the provider's answer and the commit, the old refresh
//! token was already spent: the next refresh gets `invalid_grant` and the
//! scope turns `reauthorization_required`, which says what to run.
//!
//! A transient failure (network, 5xx, 429) is retried after a backoff
//! (1 s doubling to 60 s) while the old access token is still valid; until
//! then callers get the old token. `invalid_grant` marks the scope
//! `reauthorization_required` and every caller gets an error naming the
//! scope and the command to run. Tokens without `expires_in` never expire.
//!
//! Memory: the decrypted access token of each scope is kept, at its
//! version, in a zeroizing buffer (as released values are), so a release
//! costs no decryption; the refresh token is decrypted only to refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcplexer_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::binding::Binding;
use super::client::{OAuthError, OAuthHttp, Params, TokenAnswer};
use crate::clock::now_ms;
use crate::error::{Result, VaultError};
use crate::model::{ProviderSpec, ScopeSpec};
use crate::store::{self, Store};

/// The longest a refresh happens before expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// The longest wait between refresh attempts after transient failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A scope's tokens (the secret part). No `Debug`.
pub struct TokenSet {
    /// The access token.
    pub access_token: Zeroizing<String>,
    /// The refresh token, if the provider issued one.
    pub refresh_token: Option<Zeroizing<String>>,
}

#[derive(Serialize, Deserialize)]
struct TokenSetWire<'a> {
    access_token: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

impl TokenSet {
    /// The plaintext that is encrypted.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let wire = TokenSetWire {
            access_token: &self.access_token,
            refresh_token: self.refresh_token.as_deref().map(String::as_str),
        };
        Zeroizing::new(serde_json::to_vec(&wire).unwrap_or_default())
    }

    /// From decrypted plaintext.
    pub fn decode(plaintext: &[u8]) -> Result<Self> {
        let wire: TokenSetWire<'_> = serde_json::from_slice(plaintext)
            .map_err(|_| VaultError::Crypto("stored OAuth tokens cannot be read".into()))?;
        Ok(Self {
            access_token: Zeroizing::new(wire.access_token.to_owned()),
            refresh_token: wire.refresh_token.map(|t| Zeroizing::new(t.to_owned())),
        })
    }
}

/// Whether a scope's grant is usable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// The tokens are usable (or refreshable).
    #[default]
    Valid,
    /// The provider refused the grant: `auth authorize` again.
    ReauthorizationRequired,
}

/// What the vault knows of a scope's tokens, stored in clear: never a
/// token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenMeta {
    /// The provider the tokens are from.
    pub provider_id: String,
    /// Changes whenever the tokens change (not stored: the row's).
    #[serde(default)]
    pub version: u64,
    /// Whether the grant is usable.
    pub grant: Grant,
    /// When the access token expires (ms since the epoch); none: never.
    pub expires_at_ms: Option<i64>,
    /// Its lifetime when issued, in ms.
    pub lifetime_ms: Option<i64>,
    /// The scopes granted, as the provider said.
    pub granted_scopes: Vec<String>,
    /// When the user authorized.
    pub authorized_at_ms: i64,
    /// When the tokens were last refreshed (0: never).
    pub refreshed_at_ms: i64,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Why the grant needs attention.
    pub message: String,
    /// The endpoints that issued the tokens ([`endpoints_of`] the provider
    /// then). Tokens are used only while their provider still has these,
    /// so re-pointing a provider never sends them anywhere new. Empty in
    /// rows stored before it was recorded: such tokens cannot be tied to an
    /// endpoint, so they need one re-authorization.
    #[serde(default)]
    pub endpoints: String,
}

impl TokenMeta {
    /// As stored.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From the stored text.
    pub fn decode(scope_id: &str, text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| VaultError::FailedPrecondition {
            message: format!("the stored token state of auth_scope {scope_id} cannot be read: {e}"),
            fix: None,
        })
    }

    /// The status shown for the scope at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        match self.grant {
            Grant::ReauthorizationRequired => "reauthorization_required",
            Grant::Valid if self.expired(now) && !self.has_refresh_token => "expired",
            Grant::Valid => "valid",
        }
    }

    fn expired(&self, now: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| now >= at)
    }

    /// Whether a refresh is due at `now`: within min(60 s, a tenth of the
    /// token's lifetime) of expiry.
    fn due(&self, now: i64) -> bool {
        let Some(at) = self.expires_at_ms else {
            return false;
        };
        let ahead = self
            .lifetime_ms
            .map_or(REFRESH_AHEAD.as_millis() as i64, |l| {
                (l / 10).min(REFRESH_AHEAD.as_millis() as i64)
            });
        now >= at - ahead
    }

    /// Whether the tokens came from `provider` as it is now: the same
    /// provider, with the same token and revocation endpoints and client.
    pub fn issued_by(&self, provider: &ProviderSpec) -> bool {
        self.provider_id == provider.id
            && !self.endpoints.is_empty()
            && self.endpoints == endpoints_of(provider)
    }

    /// The meta of tokens just obtained from `provider`'s `answer`, keeping
    /// what an answer without a field leaves unchanged (`before`).
    pub fn from_answer(
        provider: &ProviderSpec,
        answer: &TokenAnswer,
        before: Option<&Self>,
        has_refresh_token: bool,
        now: i64,
    ) -> Self {
        let lifetime_ms = answer
            .expires_in
            .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
        Self {
            provider_id: provider.id.clone(),
            version: 0,
            grant: Grant::Valid,
            expires_at_ms: lifetime_ms.map(|l| now.saturating_add(l)),
            lifetime_ms,
            granted_scopes: answer
                .scopes
                .clone()
                .or_else(|| before.map(|b| b.granted_scopes.clone()))
                .unwrap_or_default(),
            authorized_at_ms: before.map_or(now, |b| b.authorized_at_ms),
            refreshed_at_ms: if before.is_some() { now } else { 0 },
            has_refresh_token,
            message: String::new(),
            endpoints: endpoints_of(provider),
        }
    }
}

/// A digest of where a provider's tokens go (token endpoint, revocation
/// endpoint) and whose they are (client id).
pub fn endpoints_of(provider: &ProviderSpec) -> String {
    let mut digest = Sha256::new();
    for part in [
        &provider.token_url,
        &provider.client_id,
        &provider.revocation_url,
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(digest.finalize())
}

/// A released access token, at its version. No `Debug`.
pub struct Access {
    /// The meta's version.
    pub version: u64,
    /// The token.
    pub token: Zeroizing<String>,
    /// When it expires (ms), if it does.
    pub expires_at_ms: Option<i64>,
}

struct Backoff {
    until: Instant,
    failures: u32,
    error: String,
}

/// The tokens of every oauth2 scope: their meta (loaded at start, kept in
/// step with every commit), the decrypted access tokens, and refresh.
pub struct Tokens {
    http: OAuthHttp,
    /// Bumped whenever a scope gains or loses a usable grant (not on a
    /// refresh): proxies re-list what they may call.
    grants: tokio::sync::watch::Sender<u64>,
    metas: Mutex<HashMap<String, TokenMeta>>,
    cache: Mutex<HashMap<String, Arc<Access>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
}

/// The error for a scope that was never authorized (or whose tokens came
/// from another provider than the one it names now).
fn unauthorized(scope_id: &str) -> VaultError {
    VaultError::OAuth {
        code: "UNAUTHORIZED",
        message: format!("auth_scope {scope_id} has no OAuth token yet"),
        fix: Some(format!("mcplexerctl auth authorize {scope_id}")),
        retryable: false,
    }
}

/// The error for a scope whose grant the provider refused.
pub fn reauthorization_required(scope_id: &str, why: &str) -> VaultError {
    VaultError::OAuth {
        code: "REAUTHORIZATION_REQUIRED",
        message: format!("auth_scope {scope_id} must be authorized again: {why}"),
        fix: Some(format!("mcplexerctl auth authorize {scope_id}")),
        retryable: false,
    }
}

impl Tokens {
    /// The tokens' state as stored. Tokens of scopes that no longer exist
    /// are deleted first: a vault that did not check a scope's binding
    /// could store them for a scope deleted during its authorization, and
    /// a scope created later under that id must not inherit them.
    pub async fn load(store: &Store) -> Result<Self> {
        let orphans = store.write(|ctx| ctx.delete_orphan_tokens()).await?;
        if orphans > 0 {
            tracing::warn!(
                count = orphans,
                "deleted the stored tokens of scopes that no longer exist"
            );
        }
        let metas = store.read(store::read_token_metas).await?;
        let http = OAuthHttp::new()
            .map_err(|message| VaultError::FailedPrecondition { message, fix: None })?;
        Ok(Self {
            http,
            grants: tokio::sync::watch::Sender::new(0),
            metas: Mutex::new(metas.into_iter().collect()),
            cache: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
        })
    }

    /// How many times scopes gained or lost a usable grant.
    pub fn grants_epoch(&self) -> u64 {
        *self.grants.borrow()
    }

    /// A receiver that sees every such change.
    pub fn watch_grants(&self) -> tokio::sync::watch::Receiver<u64> {
        self.grants.subscribe()
    }

    /// Records that a scope gained or lost a usable grant (authorized,
    /// revoked, refused by its provider).
    pub fn grants_changed(&self) {
        self.grants.send_modify(|epoch| *epoch += 1);
    }

    /// The HTTP client for the provider's endpoints.
    pub fn http(&self) -> &OAuthHttp {
        &self.http
    }

    /// What is known of a scope's tokens.
    pub fn meta(&self, scope_id: &str) -> Option<TokenMeta> {
        self.metas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope_id)
            .cloned()
    }

    /// Records a committed change of a scope's tokens (`None`: deleted),
    /// and forgets its cached token and backoff.
    pub fn committed(&self, scope_id: &str, meta: Option<TokenMeta>) {
        let mut metas = self.metas.lock().unwrap_or_else(PoisonError::into_inner);
        match meta {
            Some(meta) => metas.insert(scope_id.to_owned(), meta),
            None => metas.remove(scope_id),
        };
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope_id);
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope_id);
    }

    /// Records tokens just committed for `binding`'s scope, with the
    /// access token to cache (from a refresh), unless the binding no longer
    /// holds in the published configuration: the scope was deleted or
    /// changed since the commit, its rows went with it, and memory must not
    /// bring them back. Checked under the lock [`Tokens::retain_scopes`]
    /// takes first, and a deletion is published before that runs, so one of
    /// the two always sees the other.
    pub fn committed_for(
        &self,
        store: &Store,
        binding: &Binding,
        meta: TokenMeta,
        access: Option<Arc<Access>>,
    ) {
        let scope_id = binding.scope_id();
        let mut metas = self.metas.lock().unwrap_or_else(PoisonError::into_inner);
        let holds = binding.holds(&store.snapshot().config);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match access {
            Some(access) if holds => cache.insert(scope_id.to_owned(), access),
            _ => cache.remove(scope_id),
        };
        if holds {
            metas.insert(scope_id.to_owned(), meta);
        } else {
            metas.remove(scope_id);
        }
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope_id);
    }

    /// Forgets the tokens of scopes that no longer exist in `config` (their
    /// rows went with the scope, in the same transaction).
    pub fn retain_scopes(&self, config: &crate::model::ConfigState) {
        let keep = |id: &String| config.scopes.contains_key(id);
        self.metas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep(id));
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep(id));
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep(id));
    }

    /// The per-scope lock that serialises refreshes, authorizations and
    /// revocations of one scope.
    pub fn lock(&self, scope_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(scope_id.to_owned())
            .or_default()
            .clone()
    }

    /// A valid access token for `scope` (of `provider`), refreshing it
    /// first when it is due.
    pub async fn access(
        &self,
        store: &Store,
        scope: &ScopeSpec,
        provider: &ProviderSpec,
    ) -> Result<Arc<Access>> {
        let scope_id = scope.id.as_str();
        self.check_endpoints(store, scope_id, provider).await?;
        let meta = self.usable_meta(scope_id, provider)?;
        if !meta.due(now_ms()) {
            return self.cached(store, scope_id, &meta).await;
        }
        let lock = self.lock(scope_id);
        let _one_refresh = lock.lock().await;
        // Whoever held the lock may have refreshed it.
        let meta = self.usable_meta(scope_id, provider)?;
        let now = now_ms();
        if !meta.due(now) {
            return self.cached(store, scope_id, &meta).await;
        }
        if !meta.has_refresh_token {
            if meta.expired(now) {
                return Err(VaultError::OAuth {
                    code: "TOKEN_EXPIRED",
                    message: format!(
                        "the access token of auth_scope {scope_id} expired and the provider gave no refresh token"
                    ),
                    fix: Some(format!("mcplexerctl auth authorize {scope_id}")),
                    retryable: false,
                });
            }
            return self.cached(store, scope_id, &meta).await;
        }
        let waiting = self
            .backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope_id)
            .filter(|b| Instant::now() < b.until)
            .map(|b| (b.until - Instant::now(), b.error.clone()));
        if let Some((wait, error)) = waiting {
            if meta.expired(now) {
                return Err(refresh_failed(scope_id, &error, wait));
            }
            return self.cached(store, scope_id, &meta).await;
        }
        match self
            .refresh(store, &Binding::of(scope), provider, &meta)
            .await
        {
            Ok(access) => Ok(access),
            Err(Refresh::Grant(why)) => {
                self.mark_reauthorization(store, scope_id, &meta, &why)
                    .await?;
                Err(reauthorization_required(scope_id, &why))
            }
            Err(Refresh::Failed(error)) => {
                let wait = {
                    let mut all = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
                    let failures = all.get(scope_id).map_or(0, |b| b.failures) + 1;
                    let wait = (Duration::from_secs(1) * 2u32.saturating_pow(failures - 1))
                        .min(MAX_BACKOFF);
                    all.insert(
                        scope_id.to_owned(),
                        Backoff {
                            until: Instant::now() + wait,
                            failures,
                            error: error.clone(),
                        },
                    );
                    wait
                };
                tracing::warn!(scope = scope_id, %error, retry_in_sec = wait.as_secs(), "token refresh failed");
                let record = oauth_record(scope_id, "refresh", "error", &error);
                if let Err(err) = store.write(move |ctx| ctx.insert_audit(record)).await {
                    tracing::error!(error = %err, "cannot record an audit event");
                }
                if meta.expired(now_ms()) {
                    return Err(refresh_failed(scope_id, &error, wait));
                }
                self.cached(store, scope_id, &meta).await
            }
            Err(Refresh::Vault(err)) => Err(err),
        }
    }

    /// The scope's meta if its tokens are usable (else the error to give).
    fn usable_meta(&self, scope_id: &str, provider: &ProviderSpec) -> Result<TokenMeta> {
        let meta = self
            .meta(scope_id)
            .filter(|m| m.provider_id == provider.id)
            .ok_or_else(|| unauthorized(scope_id))?;
        if meta.grant == Grant::ReauthorizationRequired {
            return Err(reauthorization_required(scope_id, &meta.message));
        }
        if !meta.issued_by(provider) {
            return Err(reauthorization_required(scope_id, &moved(provider)));
        }
        Ok(meta)
    }

    /// Records that a scope's tokens came from other endpoints than its
    /// provider has now (so `auth status` says so too); they are never
    /// sent to the new ones.
    async fn check_endpoints(
        &self,
        store: &Store,
        scope_id: &str,
        provider: &ProviderSpec,
    ) -> Result<()> {
        let stale = |m: &TokenMeta| {
            m.provider_id == provider.id && m.grant == Grant::Valid && !m.issued_by(provider)
        };
        if !self.meta(scope_id).is_some_and(|m| stale(&m)) {
            return Ok(());
        }
        let lock = self.lock(scope_id);
        let _one = lock.lock().await;
        match self.meta(scope_id).filter(stale) {
            Some(meta) => {
                self.mark_reauthorization(store, scope_id, &meta, &moved(provider))
                    .await
            }
            None => Ok(()),
        }
    }

    /// The decrypted access token at `meta`'s version.
    async fn cached(&self, store: &Store, scope_id: &str, meta: &TokenMeta) -> Result<Arc<Access>> {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(scope_id)
            .filter(|a| a.version == meta.version)
        {
            return Ok(hit.clone());
        }
        let keyring = store.keyring();
        let id = scope_id.to_owned();
        let stored = store
            .read(move |conn| store::read_tokens(conn, &keyring, &id))
            .await?;
        let Some((tokens, stored_meta)) = stored else {
            return Err(unauthorized(scope_id));
        };
        // The row may be newer than `meta` (a refresh committed since it
        // was read): label the token with the row's own version, and never
        // let it replace a newer cached one.
        let access = Arc::new(Access {
            version: stored_meta.version,
            token: tokens.access_token,
            expires_at_ms: stored_meta.expires_at_ms,
        });
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(scope_id) {
            Some(newer) if newer.version > access.version => Ok(newer.clone()),
            _ => {
                cache.insert(scope_id.to_owned(), access.clone());
                Ok(access)
            }
        }
    }

    /// One refresh: the provider's answer committed, then cached; refused
    /// if the scope is no longer `binding`'s.
    async fn refresh(
        &self,
        store: &Store,
        binding: &Binding,
        provider: &ProviderSpec,
        meta: &TokenMeta,
    ) -> std::result::Result<Arc<Access>, Refresh> {
        let scope_id = binding.scope_id();
        let keyring = store.keyring();
        let (id, provider_id) = (scope_id.to_owned(), provider.id.clone());
        let (tokens, secret) = store
            .read(move |conn| {
                let tokens = store::read_tokens(conn, &keyring, &id)?;
                let secret = store::read_provider_secret(conn, &keyring, &provider_id)?;
                Ok((tokens, secret))
            })
            .await
            .map_err(Refresh::Vault)?;
        let Some((tokens, _)) = tokens else {
            return Err(Refresh::Vault(unauthorized(scope_id)));
        };
        let Some(refresh_token) = tokens.refresh_token else {
            return Err(Refresh::Vault(unauthorized(scope_id)));
        };
        let params: Params = vec![
            ("grant_type", Zeroizing::new("refresh_token".to_owned())),
            ("refresh_token", refresh_token.clone()),
        ];
        let answer = match self
            .http
            .token(provider, secret.as_deref().map(Vec::as_slice), params)
            .await
        {
            Ok(answer) => answer,
            Err(OAuthError::Refused { error, description }) if error == "invalid_grant" => {
                let why = if description.is_empty() {
                    "the provider refused the refresh token (invalid_grant)".to_owned()
                } else {
                    format!("the provider refused the refresh token (invalid_grant: {description})")
                };
                return Err(Refresh::Grant(why));
            }
            Err(err) => return Err(Refresh::Failed(err.to_string())),
        };
        // Providers that do not rotate (Google) send no new refresh token:
        // the old one stays.
        let next = TokenSet {
            access_token: answer.access_token.clone(),
            refresh_token: Some(answer.refresh_token.clone().unwrap_or(refresh_token)),
        };
        let mut meta = TokenMeta::from_answer(provider, &answer, Some(meta), true, now_ms());
        let id = scope_id.to_owned();
        let record = oauth_record(scope_id, "refresh", "success", "");
        let job_binding = binding.clone();
        let meta = store
            .write(move |ctx| {
                job_binding.check(ctx.config(), "its token was being refreshed")?;
                ctx.store_tokens(&id, &next, &mut meta)?;
                ctx.insert_audit(record)?;
                Ok(meta)
            })
            .await
            .map_err(Refresh::Vault)?;
        let access = Arc::new(Access {
            version: meta.version,
            token: answer.access_token,
            expires_at_ms: meta.expires_at_ms,
        });
        self.committed_for(store, binding, meta.clone(), Some(access.clone()));
        tracing::info!(scope = scope_id, version = meta.version, "token refreshed");
        Ok(access)
    }

    async fn mark_reauthorization(
        &self,
        store: &Store,
        scope_id: &str,
        meta: &TokenMeta,
        why: &str,
    ) -> Result<()> {
        let mut meta = meta.clone();
        meta.grant = Grant::ReauthorizationRequired;
        meta.message = why.to_owned();
        let (id, stored) = (scope_id.to_owned(), meta.clone());
        let record = oauth_record(scope_id, "refresh", "error", why);
        store
            .write(move |ctx| {
                ctx.update_token_meta(&id, &stored)?;
                ctx.insert_audit(record)?;
                Ok(())
            })
            .await?;
        tracing::warn!(scope = scope_id, %why, "the scope needs authorizing again");
        self.committed(scope_id, Some(meta));
        self.grants_changed();
        Ok(())
    }
}

/// Why a refresh failed.
enum Refresh {
    /// The provider refused the grant: re-authorization is needed.
    Grant(String),
    /// It may work later.
    Failed(String),
    /// The vault itself failed.
    Vault(VaultError),
}

/// The audit record of something the vault did with a scope's tokens on
/// its own (a refresh): its own uid and pid, kind `oauth`. Never a token.
fn oauth_record(scope_id: &str, action: &str, status: &str, error: &str) -> pb::AuditRecord {
    pb::AuditRecord {
        time_ms: now_ms(),
        uid: nix::unistd::getuid().as_raw(),
        pid: std::process::id(),
        kind: "oauth".into(),
        auth_scope_id: scope_id.into(),
        status: status.into(),
        error: error.into(),
        action: action.into(),
        ..Default::default()
    }
}

/// Why tokens from other endpoints than `provider`'s are not used.
fn moved(provider: &ProviderSpec) -> String {
    format!(
        "the tokens were not issued by oauth_provider {} as it is now (its token endpoint, revocation endpoint or client changed)",
        provider.id
    )
}

fn refresh_failed(scope_id: &str, error: &str, wait: Duration) -> VaultError {
    VaultError::OAuth {
        code: "PROVIDER_UNAVAILABLE",
        message: format!(
            "the access token of auth_scope {scope_id} expired and refreshing it failed ({error}); the vault tries again in {} s",
            wait.as_secs().max(1)
        ),
        fix: None,
        retryable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(expires_at_ms: Option<i64>, lifetime_ms: Option<i64>, refresh: bool) -> TokenMeta {
        TokenMeta {
            expires_at_ms,
            lifetime_ms,
            has_refresh_token: refresh,
            ..Default::default()
        }
    }

    #[test]
    fn refresh_is_due_ahead_of_expiry() {
        // A one-hour token: 60 s ahead.
        let hour = meta(Some(3_600_000), Some(3_600_000), true);
        assert!(!hour.due(3_540_000 - 1));
        assert!(hour.due(3_540_000));
        // A three-second token: a tenth of its life ahead.
        let short = meta(Some(3_000), Some(3_000), true);
        assert!(!short.due(2_699));
        assert!(short.due(2_700));
        // No expiry: never due, never expired.
        let forever = meta(None, None, false);
        assert!(!forever.due(i64::MAX) && forever.status(i64::MAX) == "valid");
        // Expired without a refresh token.
        assert_eq!(meta(Some(10), Some(10), false).status(10), "expired");
        assert_eq!(meta(Some(10), Some(10), true).status(10), "valid");
    }

    #[test]
    fn token_sets_round_trip_without_debug_output() {
        let set = TokenSet {
            access_token: Zeroizing::new("at".into()),
            refresh_token: Some(Zeroizing::new("rt".into())),
        };
        let back = TokenSet::decode(&set.encode()).unwrap();
        assert_eq!(back.access_token.as_str(), "at");
        assert_eq!(
            back.refresh_token.as_deref().map(String::as_str),
            Some("rt")
        );
        assert!(TokenSet::decode(b"not json").is_err());
    }
}
