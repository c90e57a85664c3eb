//! Auth Scopes: the list with each scope's OAuth status, Add Auth Scope
//! (env, header, or oauth2 with an existing provider or a new one from a
//! template), and a scope's page with its write-only secrets.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use mcplexer_proto::v1::{
    AuthScope, AuthStatus, AuthStatusRequest, DeleteRequest, DeleteSecretRequest, GetRequest,
    Grants, ListRequest,
};
use zeroize::Zeroizing;

use super::guard::{Csrf, Form, field};
use super::html::{self, Notice, Section, badge, esc, form, input, select, table, url_part};
use super::{Page, Ui, providers, see_other, vault_error};
use crate::time::now_ms;

/// How long before expiry a valid token shows as "expires soon".
const SOON_MS: i64 = 10 * 60 * 1000;

/// The confirmations a redirect may ask a page to show (`?done=…`): fixed
/// texts, so a link cannot put words on the page.
pub fn done_notice(query: Option<&str>) -> Option<Notice> {
    let done = field(query.unwrap_or_default().as_bytes(), "done")?;
    let text = match done.as_str() {
        "created" => "Created.",
        "deleted" => "Deleted.",
        "secret-set" => "Stored the value. It is never shown again.",
        "secret-deleted" => "Deleted the value.",
        "authorized" => "Authorized: the vault holds the tokens.",
        "revoked" => "Revoked: the vault no longer holds tokens for this scope.",
        _ => return None,
    };
    Some(Notice::ok(text))
}

/// The badge of an OAuth status, with "expires soon" for a valid token near
/// its end.
pub fn oauth_badge(status: &str, expires_at_ms: i64, now_ms: i64) -> String {
    match status {
        "valid" if expires_at_ms > 0 && expires_at_ms - now_ms < SOON_MS => {
            badge("warn", "expires soon")
        }
        "valid" => badge("good", "valid"),
        "reauthorization_required" => badge("bad", "re-authorisation required"),
        "expired" => badge("warn", "expired"),
        "unauthorized" => badge("idle", "not authorized"),
        other => badge("idle", other),
    }
}

/// The OAuth state of every scope the caller can see, by scope id.
async fn oauth_states(ui: &Ui) -> HashMap<String, AuthStatus> {
    ui.auth()
        .status(AuthStatusRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .scopes
                .into_iter()
                .map(|s| (s.auth_scope_id.clone(), s))
                .collect()
        })
        .unwrap_or_default()
}

fn grants_text(grants: Option<&Grants>) -> String {
    let Some(g) = grants else {
        return "—".into();
    };
    let mut parts: Vec<String> = g.users.iter().map(|u| format!("user {u}")).collect();
    parts.extend(g.groups.iter().map(|g| format!("group {g}")));
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

fn status_cell(scope: &AuthScope, states: &HashMap<String, AuthStatus>, now: i64) -> String {
    if scope.r#type != "oauth2" {
        return match scope.secret_keys.len() {
            0 => badge("idle", "no values"),
            n => badge(
                "good",
                &format!("{n} value{}", if n == 1 { "" } else { "s" }),
            ),
        };
    }
    match states.get(&scope.id) {
        Some(s) => oauth_badge(&s.status, s.expires_at_ms, now),
        None => oauth_badge(&scope.status, 0, now),
    }
}

/// `GET /scopes`.
pub async fn list(State(ui): State<Arc<Ui>>, RawQuery(query): RawQuery) -> Page {
    let scopes = ui
        .admin()
        .list_scopes(ListRequest {})
        .await
        .map_err(vault_error("Auth Scopes"))?
        .into_inner()
        .scopes;
    let states = oauth_states(&ui).await;
    let now = now_ms();
    let rows: Vec<Vec<String>> = scopes
        .iter()
        .map(|s| {
            vec![
                format!(
                    "<a href=\"/scopes/{}\">{}</a><br><small>{}</small>",
                    url_part(&s.id),
                    esc(&s.name),
                    esc(&s.id)
                ),
                esc(&s.r#type),
                html::source_note(&s.source),
                esc(&grants_text(s.grants.as_ref())),
                status_cell(s, &states, now),
            ]
        })
        .collect();
    let body = format!(
        "<p><a class=\"button\" href=\"/scopes/new\">Add Auth Scope</a></p>{}",
        table(
            "Auth scopes you can see",
            &["Scope", "Type", "Source", "Grants", "Status"],
            &rows,
            "No auth scopes yet. Add one to give a downstream server its credentials."
        )
    );
    Ok(html::page(
        "Auth Scopes",
        Section::Scopes,
        done_notice(query.as_deref()).as_ref(),
        &body,
    )
    .into_response())
}

/// `GET /scopes/new[?type=…&template=…]`: the Add Auth Scope form; a
/// template choice pre-fills the new provider's fields.
pub async fn new(
    State(ui): State<Arc<Ui>>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    RawQuery(query): RawQuery,
) -> Page {
    let query = query.unwrap_or_default();
    let kind = field(query.as_bytes(), "type").map_or_else(|| "env".to_owned(), |k| k.to_string());
    let template = field(query.as_bytes(), "template")
        .map(|t| t.to_string())
        .unwrap_or_default();
    // A template is for an oauth2 scope: one "Choose" is enough.
    let kind = if template.is_empty() {
        kind
    } else {
        "oauth2".to_owned()
    };
    let body = new_form(&ui, &csrf, &kind, &template, None, "").await?;
    Ok(html::page("Add Auth Scope", Section::Scopes, None, &body).into_response())
}

/// The Add Auth Scope form; `previous` refills what was typed after an
/// error, `provider` preselects an existing provider.
async fn new_form(
    ui: &Ui,
    csrf: &str,
    kind: &str,
    template: &str,
    previous: Option<&Form>,
    provider: &str,
) -> Result<String, Response> {
    let keep = |key: &str| previous.map(|f| f.text(key)).unwrap_or_default();
    let kinds = [
        (
            "env".to_owned(),
            "env — variables for a stdio server".to_owned(),
        ),
        (
            "header".to_owned(),
            "header — HTTP headers for an http server".to_owned(),
        ),
        (
            "oauth2".to_owned(),
            "oauth2 — tokens from an OAuth 2 provider".to_owned(),
        ),
    ];
    let mut body = String::new();
    // Step 1, a GET form: the type and, for oauth2, the template whose
    // endpoints and scopes pre-fill the provider's fields.
    let templates = providers::templates(ui).await?;
    let mut template_options = vec![(String::new(), "(none: use an existing provider)".to_owned())];
    template_options.extend(templates.iter().map(|t| {
        let p = t.provider.clone().unwrap_or_default();
        (p.template.clone(), p.name.clone())
    }));
    body.push_str(&format!(
        "<form method=\"get\" action=\"/scopes/new\" class=\"inline\">{}{}<button type=\"submit\">Choose</button></form>",
        select("type", "Type", &kinds, kind, ""),
        select(
            "template",
            "Provider template (oauth2)",
            &template_options,
            template,
            ""
        )
    ));
    let mut fields = format!(
        "<input type=\"hidden\" name=\"type\" value=\"{}\">",
        esc(kind)
    );
    fields.push_str(&input(
        "name",
        "Name",
        &keep("name"),
        "required autocomplete=\"off\"",
        "",
    ));
    fields.push_str(&input(
        "id",
        "ID (optional)",
        &keep("id"),
        "autocomplete=\"off\" pattern=\"[a-z0-9][a-z0-9_-]*\"",
        "Lower-case letters, digits, - and _; made from the name when empty.",
    ));
    fields.push_str(&input(
        "redaction_hints",
        "Redaction hints",
        &keep("redaction_hints"),
        "autocomplete=\"off\"",
        "Comma-separated keys the proxy hides in audited call parameters.",
    ));
    fields.push_str(&input(
        "grant_users",
        "Grant to users",
        &keep("grant_users"),
        "autocomplete=\"off\"",
        "Comma-separated user names or uids.",
    ));
    fields.push_str(&input(
        "grant_groups",
        "Grant to groups",
        &keep("grant_groups"),
        "autocomplete=\"off\"",
        "Comma-separated group names or gids.",
    ));
    if kind == "oauth2" {
        fields.push_str(&input(
            "token_env_var",
            "Token variable (stdio)",
            &keep("token_env_var"),
            "autocomplete=\"off\" placeholder=\"ACCESS_TOKEN\"",
            "The variable a stdio server receives the access token in.",
        ));
        match templates
            .iter()
            .find(|t| t.provider.as_ref().is_some_and(|p| p.template == template))
        {
            Some(t) => fields.push_str(&providers::template_fields(t, previous)),
            None => {
                let existing = providers::options(ui).await?;
                if existing.is_empty() {
                    fields.push_str("<p class=\"empty\">No OAuth provider exists yet: choose a template above to create one with this scope.</p>");
                } else {
                    let chosen = if provider.is_empty() {
                        keep("oauth_provider_id")
                    } else {
                        provider.to_owned()
                    };
                    fields.push_str(&select(
                        "oauth_provider_id",
                        "Provider",
                        &existing,
                        &chosen,
                        "required",
                    ));
                }
            }
        }
    }
    body.push_str(&form("/scopes", csrf, &fields, "Add Auth Scope", "stack"));
    Ok(body)
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `POST /scopes`: creates the provider first when a template was chosen,
/// then the scope.
pub async fn create(
    State(ui): State<Arc<Ui>>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    Extension(form_data): Extension<Form>,
) -> Page {
    let kind = form_data.text("type");
    let template = form_data.text("template");
    let mut provider_id = form_data.text("oauth_provider_id");
    // Set once a provider was made here: a second try must not make it again.
    let mut provider_created = String::new();
    let mut notes = Vec::new();
    if kind == "oauth2" && !template.is_empty() {
        match providers::create_from_form(&ui, &form_data).await {
            Ok((id, note)) => {
                notes.push(format!("provider {id} was created"));
                notes.extend(note);
                provider_created.clone_from(&id);
                provider_id = id;
            }
            Err(status) => {
                return Err(create_failed(&ui, &csrf, &form_data, status, &notes, "").await);
            }
        }
    }
    let grant_users = split_list(&form_data.text("grant_users"));
    let grant_groups = split_list(&form_data.text("grant_groups"));
    let grants = (!grant_users.is_empty() || !grant_groups.is_empty()).then_some(Grants {
        users: grant_users,
        groups: grant_groups,
    });
    let scope = AuthScope {
        id: form_data.text("id"),
        name: form_data.text("name"),
        r#type: kind.clone(),
        redaction_hints: split_list(&form_data.text("redaction_hints")),
        oauth_provider_id: provider_id,
        grants,
        token_env_var: form_data.text("token_env_var"),
        ..AuthScope::default()
    };
    match ui.admin().create_scope(scope).await {
        Ok(created) => Ok(see_other(&format!(
            "/scopes/{}?done=created",
            url_part(&created.into_inner().id)
        ))),
        Err(status) => {
            Err(create_failed(&ui, &csrf, &form_data, status, &notes, &provider_created).await)
        }
    }
}

/// The Add Auth Scope form again, with what was typed (never a secret) and
/// the vault's error, and what was already done.
async fn create_failed(
    ui: &Ui,
    csrf: &str,
    form_data: &Form,
    status: tonic::Status,
    done: &[String],
    provider_created: &str,
) -> Response {
    let mut notice = Notice::vault(&status);
    if !done.is_empty() {
        notice.message = format!("{} ({})", notice.message, done.join("; "));
    }
    let kind = form_data.text("type");
    let template = if provider_created.is_empty() {
        form_data.text("template")
    } else {
        String::new()
    };
    let body = new_form(
        ui,
        csrf,
        &kind,
        &template,
        Some(form_data),
        provider_created,
    )
    .await;
    super::page_with(
        html::http_status(&status),
        "Add Auth Scope",
        Section::Scopes,
        &notice,
        body,
    )
}

/// `GET /scopes/{id}`: the scope, its values' keys (never the values), a
/// write-only form to set one, and for oauth2 its authorization.
pub async fn show(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    RawQuery(query): RawQuery,
) -> Page {
    let body = scope_body(&ui, &id, &csrf).await?;
    Ok(html::page(
        "Auth Scope",
        Section::Scopes,
        done_notice(query.as_deref()).as_ref(),
        &body,
    )
    .into_response())
}

/// The scope page's body; also shown under an error after a failed change.
async fn scope_body(ui: &Ui, id: &str, csrf: &str) -> Result<String, Response> {
    let scope = ui
        .admin()
        .get_scope(GetRequest { id: id.to_owned() })
        .await
        .map_err(vault_error("Auth Scope"))?
        .into_inner();
    let read_only = scope.source == "yaml";
    let base = format!("/scopes/{}", url_part(&scope.id));
    let mut body = format!(
        "<dl class=\"facts\"><dt>Name</dt><dd>{}</dd><dt>ID</dt><dd>{}</dd><dt>Type</dt><dd>{}</dd>\
         <dt>Source</dt><dd>{}</dd><dt>Grants</dt><dd>{}</dd><dt>Redaction hints</dt><dd>{}</dd>",
        esc(&scope.name),
        esc(&scope.id),
        esc(&scope.r#type),
        html::source_note(&scope.source),
        esc(&grants_text(scope.grants.as_ref())),
        esc(&if scope.redaction_hints.is_empty() {
            "—".to_owned()
        } else {
            scope.redaction_hints.join(", ")
        }),
    );
    if scope.r#type == "oauth2" {
        let states = oauth_states(ui).await;
        let state = states.get(&scope.id);
        let now = now_ms();
        let (status, expires) = state.map_or((scope.status.as_str(), 0), |s| {
            (s.status.as_str(), s.expires_at_ms)
        });
        body.push_str(&format!(
            "<dt>Provider</dt><dd><a href=\"/providers#{}\">{}</a></dd><dt>Status</dt><dd id=\"oauth-status\">{}</dd>",
            esc(&scope.oauth_provider_id),
            esc(&scope.oauth_provider_id),
            oauth_badge(status, expires, now)
        ));
        if let Some(s) = state {
            if s.expires_at_ms > 0 {
                body.push_str(&format!(
                    "<dt>Access token expires</dt><dd>in {} min</dd>",
                    (s.expires_at_ms - now).max(0) / 60_000
                ));
            }
            if !s.granted_scopes.is_empty() {
                body.push_str(&format!(
                    "<dt>Granted scopes</dt><dd>{}</dd>",
                    esc(&s.granted_scopes.join(" "))
                ));
            }
        }
        body.push_str("</dl>");
        body.push_str(&form(
            &format!("{base}/authorize"),
            csrf,
            "",
            "Authorize",
            "inline",
        ));
        if status != "unauthorized" {
            body.push_str(&form(
                &format!("{base}/revoke"),
                csrf,
                "",
                "Revoke",
                "inline danger",
            ));
        }
    } else {
        body.push_str("</dl><h2>Secrets</h2>");
        let rows: Vec<Vec<String>> = scope
            .secret_keys
            .iter()
            .map(|key| {
                vec![
                    format!("<code>{}</code>", esc(key)),
                    "<span class=\"masked\" aria-label=\"value hidden\">••••••</span>".to_owned(),
                    form(
                        &format!("{base}/secrets/delete"),
                        csrf,
                        &format!(
                            "<input type=\"hidden\" name=\"key\" value=\"{}\">",
                            esc(key)
                        ),
                        "Delete",
                        "inline danger",
                    ),
                ]
            })
            .collect();
        body.push_str(&table(
            "Stored values (write-only)",
            &["Key", "Value", ""],
            &rows,
            "No values yet.",
        ));
        let key_label = if scope.r#type == "header" {
            "Header name"
        } else {
            "Variable name"
        };
        let fields = format!(
            "{}{}",
            input("key", key_label, "", "required autocomplete=\"off\"", ""),
            input(
                "value",
                "Value",
                "",
                "type=\"password\" required autocomplete=\"new-password\" spellcheck=\"false\"",
                "Write-only: the vault stores it encrypted and never shows it again.",
            )
        );
        body.push_str(&form(
            &format!("{base}/secrets"),
            csrf,
            &fields,
            "Set value",
            "stack",
        ));
    }
    if !read_only {
        body.push_str(&form(
            &format!("{base}/delete"),
            csrf,
            "",
            "Delete this scope",
            "inline danger",
        ));
    } else {
        body.push_str("<p class=\"note\">This scope is defined in the YAML configuration; change it there.</p>");
    }
    Ok(body)
}

/// Renders the scope page under the vault's error after a failed change.
async fn failed_on_scope(ui: &Ui, id: &str, csrf: &str, status: tonic::Status) -> Response {
    super::page_with(
        html::http_status(&status),
        "Auth Scope",
        Section::Scopes,
        &Notice::vault(&status),
        scope_body(ui, id, csrf).await,
    )
}

/// `POST /scopes/{id}/secrets`: the value goes to the vault and nowhere
/// else.
pub async fn set_secret(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    Extension(form_data): Extension<Form>,
) -> Page {
    let key = form_data.text("key");
    let value: Zeroizing<Vec<u8>> = form_data
        .get("value")
        .map(|v| Zeroizing::new(v.as_bytes().to_vec()))
        .unwrap_or_default();
    match crate::sensitive::set_secret(ui.channel.clone(), id.clone(), key, value).await {
        Ok(_) => Ok(see_other(&format!(
            "/scopes/{}?done=secret-set",
            url_part(&id)
        ))),
        Err(status) => Err(failed_on_scope(&ui, &id, &csrf, status).await),
    }
}

/// `POST /scopes/{id}/secrets/delete`.
pub async fn delete_secret(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    Extension(form_data): Extension<Form>,
) -> Page {
    let request = DeleteSecretRequest {
        scope_id: id.clone(),
        key: form_data.text("key"),
    };
    match ui.admin().delete_secret(request).await {
        Ok(_) => Ok(see_other(&format!(
            "/scopes/{}?done=secret-deleted",
            url_part(&id)
        ))),
        Err(status) => Err(failed_on_scope(&ui, &id, &csrf, status).await),
    }
}

/// `POST /scopes/{id}/delete`.
pub async fn delete(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
) -> Page {
    match ui
        .admin()
        .delete_scope(DeleteRequest { id: id.clone() })
        .await
    {
        Ok(_) => Ok(see_other("/scopes?done=deleted")),
        Err(status) => Err(failed_on_scope(&ui, &id, &csrf, status).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_name_the_state() {
        let now = 1_000_000_000;
        assert!(oauth_badge("valid", 0, now).contains(">valid<"));
        assert!(oauth_badge("valid", now + 3_600_000, now).contains(">valid<"));
        assert!(oauth_badge("valid", now + 60_000, now).contains("expires soon"));
        assert!(
            oauth_badge("reauthorization_required", 0, now).contains("re-authorisation required")
        );
    }

    #[test]
    fn only_known_notices_are_shown() {
        assert!(done_notice(Some("done=created")).is_some());
        assert!(done_notice(Some("done=<script>")).is_none());
        assert!(done_notice(None).is_none());
    }
}
