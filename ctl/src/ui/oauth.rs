//! Authorize: the PKCE authorization-code flow with the UI's own
//! `/oauth/callback` as the loopback redirect. The vault makes the state
//! and the verifier and exchanges the code; the UI only carries the
//! browser to the provider and the code back.
//!
//! Both hops are navigations the UI's own page starts (a `refresh` meta
//! element), never redirects of a form post: the CSP's `form-action 'self'`
//! stays strict, and the return trip lands on a page of this origin, so
//! the SameSite=Strict session cookie is sent again when it moves on to the
//! scope.
//!
//! The callback needs no session (the provider's redirect is cross-site),
//! so the state alone would let anyone holding it deliver a code of their
//! own into this scope, where the provider does not require PKCE. Authorize
//! therefore also gives the browser a flow cookie (random, HttpOnly,
//! SameSite=Lax so that the provider's top-level redirect back carries it,
//! path `/oauth/callback`, 10 minutes), and the callback completes a flow
//! only for a request that carries it: the code must come back through the
//! browser that went out. A page open in that same browser could still
//! navigate it to the callback with the cookie; the state stays the
//! secret that stops that.

use std::sync::{Arc, PoisonError};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcplexer_proto::v1::{CompleteAuthorizationRequest, RevokeRequest, StartAuthorizationRequest};
use zeroize::Zeroizing;

use super::guard::{cookies, field, random_token, same};
use super::html::{self, Notice, Section, esc, moving_on, url_part};
use super::{Page, Ui, see_other};

/// Flows in flight kept at most (a browser abandoned on the provider's
/// page leaves one behind; the vault forgets its state after 10 minutes).
const MAX_FLOWS: usize = 64;

/// How long the flow cookie lives, in seconds: as long as the vault keeps
/// the flow's state.
const FLOW_COOKIE_SECS: u32 = 600;

/// An authorization started here and not yet back.
pub struct Flow {
    /// The scope page to return to.
    scope: String,
    /// The name of the flow cookie given to the browser that started it:
    /// one per flow, so flows in several tabs do not replace each other's.
    cookie: String,
    /// Its value, which the callback must be sent.
    binding: Zeroizing<String>,
}

/// The `Set-Cookie` value for the flow cookie `name`: `value` for
/// [`FLOW_COOKIE_SECS`], or, with `None`, its removal.
fn flow_cookie(name: &str, value: Option<&str>) -> Option<HeaderValue> {
    let (value, age) = value.map_or(("", 0), |v| (v, FLOW_COOKIE_SECS));
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Lax; Path=/oauth/callback; Max-Age={age}"
    ))
    .ok()
}

/// `POST /scopes/{id}/authorize`.
pub async fn authorize(State(ui): State<Arc<Ui>>, Path(id): Path<String>) -> Page {
    let redirect_uri = format!("http://{}/oauth/callback", ui.guard.host());
    let started = ui
        .auth()
        .start_authorization(StartAuthorizationRequest {
            auth_scope_id: id.clone(),
            redirect_uri,
        })
        .await;
    let start = match started {
        Ok(start) => start.into_inner(),
        Err(status) => {
            let back = format!("/scopes/{}", url_part(&id));
            let body = format!(
                "<p><a class=\"button\" href=\"{}\">Back to the scope</a></p>",
                esc(&back)
            );
            return Err((
                html::http_status(&status),
                html::page(
                    "Authorize",
                    Section::Scopes,
                    Some(&Notice::vault(&status)),
                    &body,
                ),
            )
                .into_response());
        }
    };
    let made = random_token().and_then(|name| Ok((name, random_token()?)));
    let Ok((name, binding)) = made else {
        return Err(html::error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Authorize",
            &Notice::error("Cannot read random bytes for the flow cookie. Nothing was started."),
        ));
    };
    let cookie = format!("{}_flow_{}", ui.guard.cookie_name(), &name[..16]);
    let set_cookie = flow_cookie(&cookie, Some(&binding));
    {
        let mut flows = ui.flows.lock().unwrap_or_else(PoisonError::into_inner);
        if flows.len() >= MAX_FLOWS {
            flows.clear();
        }
        flows.insert(
            start.state.clone(),
            Flow {
                scope: id,
                cookie,
                binding,
            },
        );
    }
    let mut response = moving_on(
        "Authorize",
        Section::Scopes,
        &Notice::ok("Taking you to the provider to authorize this scope…"),
        &start.authorization_url,
        "Continue to the provider",
    );
    if let Some(value) = set_cookie {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `GET /oauth/callback?code=…&state=…[&iss=…]` or `?error=…`, from the
/// browser holding the flow's cookie.
pub async fn callback(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Page {
    let query = Zeroizing::new(query.unwrap_or_default());
    let state = field(query.as_bytes(), "state")
        .map(|s| s.to_string())
        .unwrap_or_default();
    let flow = {
        let mut flows = ui.flows.lock().unwrap_or_else(PoisonError::into_inner);
        match flows.get(&state) {
            None => Err(UNKNOWN_FLOW),
            // Left in place: a request that only knows the state must not
            // be able to cancel the flow the right browser completes.
            Some(flow)
                if !cookies(&headers, &flow.cookie)
                    .any(|v| same(v.as_bytes(), flow.binding.as_bytes())) =>
            {
                Err(OTHER_BROWSER)
            }
            Some(_) => flows.remove(&state).ok_or(UNKNOWN_FLOW),
        }
    };
    let flow = flow.map_err(|why| {
        html::error_page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            &Notice::error(why),
        )
    })?;
    let mut result = complete(&ui, &flow.scope, state, &query).await;
    let page = match &mut result {
        Ok(page) | Err(page) => page,
    };
    if let Some(value) = flow_cookie(&flow.cookie, None) {
        page.headers_mut().insert(header::SET_COOKIE, value);
    }
    result
}

const UNKNOWN_FLOW: &str = "This redirect does not belong to an authorization started here (a stale, repeated or forged one). Nothing was stored.";

const OTHER_BROWSER: &str = "This redirect did not come back to the browser that started the authorization (its flow cookie is missing). Nothing was stored. Click Authorize again in the browser you want to use.";

/// Completes the flow of `scope` with the provider's answer in `query`.
async fn complete(ui: &Ui, scope: &str, state: String, query: &str) -> Page {
    let get = |key: &str| field(query.as_bytes(), key);
    let back = format!("/scopes/{}", url_part(scope));
    if let Some(error) = get("error") {
        let description = get("error_description")
            .map(|d| d.to_string())
            .unwrap_or_default();
        let message = if description.is_empty() {
            format!("The provider refused the authorization: {}", error.as_str())
        } else {
            format!(
                "The provider refused the authorization: {} ({description})",
                error.as_str()
            )
        };
        return Err(failure(&back, &Notice::error(message)));
    }
    let Some(code) = get("code").filter(|c| !c.is_empty()) else {
        return Err(failure(
            &back,
            &Notice::error(
                "The provider's redirect carries neither a code nor an error. Nothing was stored.",
            ),
        ));
    };
    let request = CompleteAuthorizationRequest {
        state,
        code: code.to_string(),
        iss: get("iss").map(|i| i.to_string()).unwrap_or_default(),
    };
    let completed = ui.auth().complete_authorization(request).await;
    drop(code);
    match completed {
        Ok(_) => Ok(moving_on(
            "Authorized",
            Section::Scopes,
            &Notice::ok("Authorized: the vault holds the tokens."),
            &format!("{back}?done=authorized"),
            "Back to the scope",
        )),
        Err(status) => Err(failure(&back, &Notice::vault(&status))),
    }
}

fn failure(back: &str, notice: &Notice) -> Response {
    let body = format!(
        "<p><a class=\"button\" href=\"{}\">Back to the scope</a></p>",
        esc(back)
    );
    (
        StatusCode::BAD_REQUEST,
        html::page("Authorization failed", Section::Scopes, Some(notice), &body),
    )
        .into_response()
}

/// `POST /scopes/{id}/revoke`.
pub async fn revoke(State(ui): State<Arc<Ui>>, Path(id): Path<String>) -> Page {
    let back = format!("/scopes/{}", url_part(&id));
    match ui
        .auth()
        .revoke(RevokeRequest {
            auth_scope_id: id,
            ..RevokeRequest::default()
        })
        .await
    {
        Ok(_) => Ok(see_other(&format!("{back}?done=revoked"))),
        Err(status) => Err(failure(&back, &Notice::vault(&status))),
    }
}
