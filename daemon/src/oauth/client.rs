//! The vault's client for a provider's token, device-authorization and
//! revocation endpoints, written against RFC 6749, 7009 and 8628 and the
//! providers' deviations that the templates name: client authentication by
//! Basic or in the body, form or JSON bodies (Notion), extra headers
//! (Notion-Version), errors answered with HTTP 200 and form-encoded answers
//! (GitHub), and granted scopes as a space- or comma-separated string or an
//! array (GitHub, Linear).
//!
//! Endpoints were checked when the provider was configured (https, or http
//! on a loopback host). Redirects are not followed: a token endpoint that
//! redirects would carry the code or the secret somewhere else.
//!
//! Zeroization: tokens, codes and secrets are held in `Zeroizing` buffers
//! here. reqwest's encoded request body and its received response bytes
//! are its own; they are dropped, not wiped, once the exchange is over.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use zeroize::Zeroizing;

use crate::model::{ClientAuth, ProviderSpec, TokenFormat};

/// The longest answer read from a provider.
const MAX_ANSWER: usize = 1 << 20;

/// The longest a device code is waited for, whatever the provider says
/// (RFC 8628's own example gives 1800 s): a provider's number must neither
/// overflow a deadline nor hold a flow open for days.
pub const MAX_DEVICE_EXPIRY_SECS: u64 = 1800;

/// The longest wait between two polls of a device code, whatever the
/// provider asks for (a wait past the code's life would never poll).
pub const MAX_DEVICE_INTERVAL_SECS: u64 = 60;

/// Why a provider request failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The provider answered with an OAuth error.
    #[error("the provider refused: {error}{}", if description.is_empty() { String::new() } else { format!(" ({description})") })]
    Refused {
        /// The `error` code (`invalid_grant`, `authorization_pending`, ...).
        error: String,
        /// Its `error_description`, if any.
        description: String,
    },
    /// It could not be reached, or failed in a way that may pass.
    #[error("the provider could not be reached or failed: {0}")]
    Transient(String),
    /// It answered something that is not an OAuth answer.
    #[error("the provider's answer is not valid: {0}")]
    Invalid(String),
}

impl OAuthError {
    /// The OAuth error code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A token endpoint's successful answer.
pub struct TokenAnswer {
    /// The access token.
    pub access_token: Zeroizing<String>,
    /// A refresh token, if one was issued.
    pub refresh_token: Option<Zeroizing<String>>,
    /// Seconds until the access token expires, if said.
    pub expires_in: Option<u64>,
    /// The granted scopes, if said.
    pub scopes: Option<Vec<String>>,
}

/// A device authorization endpoint's answer (RFC 8628 §3.2).
pub struct DeviceAnswer {
    /// The device code (secret: it is redeemed for the tokens).
    pub device_code: Zeroizing<String>,
    /// The code the user types.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code in it, if offered.
    pub verification_uri_complete: String,
    /// Seconds the codes live (at most [`MAX_DEVICE_EXPIRY_SECS`]).
    pub expires_in: u64,
    /// Seconds between polls (5 when not said; 1 to
    /// [`MAX_DEVICE_INTERVAL_SECS`]).
    pub interval: u64,
}

/// What an authorization server publishes about itself (RFC 8414 /
/// OpenID Connect Discovery), as far as the vault uses it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Metadata {
    /// Its issuer identifier; must equal the one asked for.
    pub issuer: String,
    /// Authorization endpoint.
    pub authorization_endpoint: String,
    /// Token endpoint.
    pub token_endpoint: String,
    /// Device authorization endpoint, if any.
    #[serde(default)]
    pub device_authorization_endpoint: String,
    /// Revocation endpoint, if any.
    #[serde(default)]
    pub revocation_endpoint: String,
    /// Client authentication methods at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// PKCE methods; absent says nothing.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

/// On a loopback endpoint, refuses unless the socket listening there is the
/// vault's own user's or root's: any local user may listen on a free
/// loopback port, and what goes to a token endpoint (the client secret, a
/// code, a refresh token) must not reach them.
async fn check_listener(url: &str) -> Result<(), OAuthError> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(());
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Ok(());
    };
    let host = host.to_owned();
    let allowed = [nix::unistd::geteuid().as_raw(), 0];
    tokio::task::spawn_blocking(move || {
        mcplexer_proto::sockdiag::check_loopback_listener(&host, port, &allowed)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the listener check failed: {e}")))
    .map_err(|why| OAuthError::Transient(format!("nothing was sent to the provider: {why}")))
}

/// The client: one connection pool for every provider.
pub struct OAuthHttp {
    http: reqwest::Client,
}

/// Parameters of one request; values may be secrets.
pub type Params = Vec<(&'static str, Zeroizing<String>)>;

impl OAuthHttp {
    /// A client with timeouts and no redirects.
    pub fn new() -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("mcplexer-vaultd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { http })
    }

    /// POSTs `params` to `url` with the provider's client authentication,
    /// body format and headers; returns the answer as a JSON object.
    async fn post(
        &self,
        provider: &ProviderSpec,
        secret: Option<&[u8]>,
        url: &str,
        params: Params,
    ) -> Result<BTreeMap<String, Value>, OAuthError> {
        let (status, object) = self.exchange(provider, secret, url, params).await?;
        interpret(status, object)
    }

    /// POSTs `params` to `url`; returns the status and the answer as a JSON
    /// object, if it was one (JSON or form-encoded).
    async fn exchange(
        &self,
        provider: &ProviderSpec,
        secret: Option<&[u8]>,
        url: &str,
        mut params: Params,
    ) -> Result<(reqwest::StatusCode, Option<BTreeMap<String, Value>>), OAuthError> {
        check_listener(url).await?;
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        for (name, value) in &provider.token_headers {
            request = request.header(name, value);
        }
        match secret {
            None => params.push(("client_id", Zeroizing::new(provider.client_id.clone()))),
            Some(secret) => {
                let secret = Zeroizing::new(
                    std::str::from_utf8(secret)
                        .map_err(|_| {
                            OAuthError::Invalid("the stored client secret is not UTF-8".into())
                        })?
                        .to_owned(),
                );
                match provider.client_auth.unwrap_or_default() {
                    ClientAuth::ClientSecretBasic => {
                        // RFC 6749 §2.3.1: both form-encoded, then Basic.
                        let id: String =
                            url::form_urlencoded::byte_serialize(provider.client_id.as_bytes())
                                .collect();
                        let secret: Zeroizing<String> = Zeroizing::new(
                            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
                        );
                        request = request.basic_auth(id, Some(secret.as_str()));
                    }
                    ClientAuth::ClientSecretPost => {
                        params.push(("client_id", Zeroizing::new(provider.client_id.clone())));
                        params.push(("client_secret", secret));
                    }
                }
            }
        }
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request = match provider.token_format.unwrap_or_default() {
            TokenFormat::Form => request.form(&pairs),
            TokenFormat::Json => {
                let object: BTreeMap<&str, &str> = pairs.iter().copied().collect();
                request.json(&object)
            }
        };
        let response = request
            .send()
            .await
            .map_err(|e| OAuthError::Transient(describe(&e)))?;
        let status = response.status();
        let form = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let body = read_limited(response).await?;
        let object: Option<BTreeMap<String, Value>> = if form {
            Some(
                url::form_urlencoded::parse(&body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            )
        } else {
            serde_json::from_slice(&body).ok()
        };
        Ok((status, object))
    }

    /// Reads the metadata of the authorization server `issuer`: RFC 8414
    /// first (`/.well-known/oauth-authorization-server`, inserted before
    /// the issuer's path), then OpenID Connect Discovery
    /// (`/.well-known/openid-configuration`, appended). The metadata's
    /// `issuer` must equal `issuer` (RFC 8414 §3.3).
    pub async fn discover(&self, issuer: &str) -> Result<Metadata, String> {
        let base =
            url::Url::parse(issuer).map_err(|e| format!("issuer {issuer:?} is not a URL: {e}"))?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(format!(
                "issuer {issuer:?} must not have a query or fragment"
            ));
        }
        let loopback = matches!(base.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
        if base.scheme() != "https" && !(base.scheme() == "http" && loopback) {
            return Err(format!(
                "issuer {issuer:?} must be https (http only on a loopback host)"
            ));
        }
        let path = base.path().trim_end_matches('/');
        let origin = base.origin().ascii_serialization();
        let candidates = [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ];
        // What a loopback issuer's metadata names becomes the provider's
        // endpoints: it must come from the vault's own user's or root's
        // listener, as the token requests must.
        check_listener(issuer)
            .await
            .map_err(|e| format!("issuer {issuer:?}: {e}"))?;
        let mut failures = Vec::new();
        for url in candidates {
            let response = match self
                .http
                .get(&url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    failures.push(format!("{url}: {}", describe(&e)));
                    continue;
                }
            };
            let status = response.status();
            if !status.is_success() {
                failures.push(format!("{url}: HTTP {status}"));
                continue;
            }
            let body = read_limited(response).await.map_err(|e| e.to_string())?;
            let metadata: Metadata = serde_json::from_slice(&body)
                .map_err(|e| format!("{url} is not authorization server metadata: {e}"))?;
            if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
                return Err(format!(
                    "{url} names issuer {:?}, not {issuer:?}; refusing it (RFC 8414 §3.3)",
                    metadata.issuer
                ));
            }
            return Ok(metadata);
        }
        Err(format!(
            "no metadata found for issuer {issuer}: {}",
            failures.join("; ")
        ))
    }

    /// A token request (`grant_type` and the rest in `params`).
    pub async fn token(
        &self,
        provider: &ProviderSpec,
        secret: Option<&[u8]>,
        params: Params,
    ) -> Result<TokenAnswer, OAuthError> {
        let mut answer = self
            .post(provider, secret, &provider.token_url, params)
            .await?;
        let access_token = match answer.remove("access_token") {
            Some(Value::String(token)) if !token.is_empty() => Zeroizing::new(token),
            _ => return Err(OAuthError::Invalid("no access_token in the answer".into())),
        };
        let refresh_token = match answer.remove("refresh_token") {
            Some(Value::String(token)) if !token.is_empty() => Some(Zeroizing::new(token)),
            _ => None,
        };
        if let Some(kind) = answer.get("token_type").and_then(Value::as_str)
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(OAuthError::Invalid(format!(
                "token_type {kind:?} is not bearer"
            )));
        }
        Ok(TokenAnswer {
            access_token,
            refresh_token,
            expires_in: answer.get("expires_in").and_then(seconds),
            scopes: answer.get("scope").map(granted_scopes),
        })
    }

    /// Starts a device authorization (RFC 8628 §3.1).
    pub async fn device(
        &self,
        provider: &ProviderSpec,
        secret: Option<&[u8]>,
    ) -> Result<DeviceAnswer, OAuthError> {
        let mut params: Params = Vec::new();
        if !provider.scopes.is_empty() {
            params.push((
                "scope",
                Zeroizing::new(provider.scopes.join(&provider.scope_separator)),
            ));
        }
        let mut answer = self
            .post(provider, secret, &provider.device_auth_url, params)
            .await?;
        let text = |answer: &BTreeMap<String, Value>, key: &str| {
            answer
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let device_code = match answer.remove("device_code") {
            Some(Value::String(code)) if !code.is_empty() => Zeroizing::new(code),
            _ => return Err(OAuthError::Invalid("no device_code in the answer".into())),
        };
        let user_code = text(&answer, "user_code");
        // Google says verification_url (its pre-RFC name).
        let verification_uri = match text(&answer, "verification_uri") {
            uri if uri.is_empty() => text(&answer, "verification_url"),
            uri => uri,
        };
        if user_code.is_empty() || verification_uri.is_empty() {
            return Err(OAuthError::Invalid(
                "no user_code or verification_uri in the answer".into(),
            ));
        }
        let (expires_in, interval) = device_timing(
            answer.get("expires_in").and_then(seconds),
            answer.get("interval").and_then(seconds),
        );
        Ok(DeviceAnswer {
            device_code,
            user_code,
            verification_uri,
            verification_uri_complete: text(&answer, "verification_uri_complete"),
            expires_in,
            interval,
        })
    }

    /// Revokes `token` (RFC 7009) at the provider's revocation endpoint.
    pub async fn revoke(
        &self,
        provider: &ProviderSpec,
        secret: Option<&[u8]>,
        token: &str,
        hint: &'static str,
    ) -> Result<(), OAuthError> {
        let params: Params = vec![
            ("token", Zeroizing::new(token.to_owned())),
            ("token_type_hint", Zeroizing::new(hint.to_owned())),
        ];
        let (status, object) = self
            .exchange(provider, secret, &provider.revocation_url, params)
            .await?;
        // RFC 7009 §2.2: 200 with any (or no) body.
        if status.is_success() {
            return Ok(());
        }
        interpret(status, object).map(|_| ())
    }
}

/// An answer as a JSON object, or the error it says (or is).
fn interpret(
    status: reqwest::StatusCode,
    object: Option<BTreeMap<String, Value>>,
) -> Result<BTreeMap<String, Value>, OAuthError> {
    match object {
        Some(object) if object.contains_key("error") => {
            let text = |key: &str| {
                object
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            };
            let error = text("error");
            if status.is_server_error()
                || matches!(error.as_str(), "temporarily_unavailable" | "server_error")
            {
                return Err(OAuthError::Transient(format!("{status}: {error}")));
            }
            Err(OAuthError::Refused {
                error,
                description: text("error_description"),
            })
        }
        Some(object) if status.is_success() => Ok(object),
        _ if status.is_server_error() || status.as_u16() == 429 => {
            Err(OAuthError::Transient(format!("HTTP {status}")))
        }
        _ => Err(OAuthError::Invalid(format!(
            "HTTP {status} without an OAuth answer"
        ))),
    }
}

/// An error's chain as one line (reqwest hides the cause otherwise).
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, OAuthError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OAuthError::Transient(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(OAuthError::Invalid("the answer is over 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A number of seconds, as a JSON number or a numeric string.
fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A device code's lifetime and poll interval from what the provider said
/// (900 s and RFC 8628's 5 s when it said nothing), within the vault's
/// bounds.
fn device_timing(expires_in: Option<u64>, interval: Option<u64>) -> (u64, u64) {
    (
        expires_in.unwrap_or(900).min(MAX_DEVICE_EXPIRY_SECS),
        interval.unwrap_or(5).clamp(1, MAX_DEVICE_INTERVAL_SECS),
    )
}

/// Granted scopes: a space- or comma-separated string, or an array.
fn granted_scopes(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_and_lifetimes_in_every_shape() {
        assert_eq!(granted_scopes(&json!("repo,gist")), ["repo", "gist"]);
        assert_eq!(granted_scopes(&json!("read write")), ["read", "write"]);
        assert_eq!(granted_scopes(&json!(["read", "write"])), ["read", "write"]);
        assert!(granted_scopes(&json!(null)).is_empty());
        assert_eq!(seconds(&json!(3600)), Some(3600));
        assert_eq!(seconds(&json!("3600")), Some(3600));
        assert_eq!(seconds(&json!(-1)), None);
        assert_eq!(seconds(&json!("soon")), None);
    }

    #[test]
    fn device_timing_is_bounded_whatever_the_provider_says() {
        assert_eq!(device_timing(None, None), (900, 5));
        assert_eq!(device_timing(Some(600), Some(0)), (600, 1));
        assert_eq!(
            device_timing(Some(u64::MAX), Some(u64::MAX)),
            (MAX_DEVICE_EXPIRY_SECS, MAX_DEVICE_INTERVAL_SECS)
        );
        let huge = seconds(&json!(10_000_000_000_000_000_000u64));
        assert_eq!(device_timing(huge, None).0, MAX_DEVICE_EXPIRY_SECS);
    }
}
