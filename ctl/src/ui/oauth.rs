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

use std::sync::{Arc, PoisonError};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use mcplexer_proto::v1::{CompleteAuthorizationRequest, RevokeRequest, StartAuthorizationRequest};
use zeroize::Zeroizing;

use super::guard::field;
use super::html::{self, Notice, Section, esc, url_part};
use super::{Page, Ui, see_other};

/// Flows in flight kept at most (a browser abandoned on the provider's
/// page leaves one behind; the vault forgets its state after 10 minutes).
const MAX_FLOWS: usize = 64;

/// A page that moves on to `to` at once (and says where, for a browser
/// that does not).
fn moving_on(title: &str, notice: &Notice, to: &str, link: &str) -> axum::response::Response {
    let body = format!(
        "<p><a class=\"button\" href=\"{0}\">{1}</a></p>",
        esc(to),
        esc(link)
    );
    let page = html::page(title, Section::Scopes, Some(notice), &body)
        .0
        .replacen(
            "<title>",
            &format!(
                "<meta http-equiv=\"refresh\" content=\"0;url={}\"><title>",
                esc(to)
            ),
            1,
        );
    Html(page).into_response()
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
    {
        let mut flows = ui.flows.lock().unwrap_or_else(PoisonError::into_inner);
        if flows.len() >= MAX_FLOWS {
            flows.clear();
        }
        flows.insert(start.state.clone(), id);
    }
    Ok(moving_on(
        "Authorize",
        &Notice::ok("Taking you to the provider to authorize this scope…"),
        &start.authorization_url,
        "Continue to the provider",
    ))
}

/// `GET /oauth/callback?code=…&state=…[&iss=…]` or `?error=…`.
pub async fn callback(State(ui): State<Arc<Ui>>, RawQuery(query): RawQuery) -> Page {
    let query = Zeroizing::new(query.unwrap_or_default());
    let get = |key: &str| field(query.as_bytes(), key);
    let state = get("state").map(|s| s.to_string()).unwrap_or_default();
    let scope = ui
        .flows
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&state);
    let Some(scope) = scope else {
        return Err(html::error_page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            &Notice::error(
                "This redirect does not belong to an authorization started here (a stale, repeated or forged one). Nothing was stored.",
            ),
        ));
    };
    let back = format!("/scopes/{}", url_part(&scope));
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
            &Notice::ok("Authorized: the vault holds the tokens."),
            &format!("{back}?done=authorized"),
            "Back to the scope",
        )),
        Err(status) => Err(failure(&back, &Notice::vault(&status))),
    }
}

fn failure(back: &str, notice: &Notice) -> axum::response::Response {
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
