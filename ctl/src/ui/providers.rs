//! Providers: the OAuth 2 providers the caller can see, a form that makes
//! one from a built-in template (also part of Add Auth Scope), and the
//! write-only client secret.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use mcplexer_proto::v1::{DeleteRequest, ListRequest, OAuthProvider, ProviderTemplate};
use zeroize::Zeroizing;

use super::guard::{Csrf, Form};
use super::html::{self, Notice, Section, esc, form, input, select, table};
use super::scopes::done_notice;
use super::{Page, Ui, see_other, vault_error};

/// The redirect URI of providers made here: the UI's own callback, on any
/// loopback port (RFC 8252), so both the UI and `auth authorize` can
/// serve it.
pub const UI_REDIRECT: &str = "http://127.0.0.1/oauth/callback";

/// The built-in templates.
pub async fn templates(ui: &Ui) -> Result<Vec<ProviderTemplate>, Response> {
    Ok(ui
        .admin()
        .list_provider_templates(ListRequest {})
        .await
        .map_err(vault_error("Providers"))?
        .into_inner()
        .templates)
}

/// The providers the caller can see, as `(id, label)` options.
pub async fn options(ui: &Ui) -> Result<Vec<(String, String)>, Response> {
    Ok(ui
        .admin()
        .list_providers(ListRequest {})
        .await
        .map_err(vault_error("Providers"))?
        .into_inner()
        .providers
        .into_iter()
        .map(|p| {
            let label = format!("{} ({})", p.name, p.id);
            (p.id, label)
        })
        .collect())
}

/// The fields of a new provider from template `t`, pre-filled with its
/// scopes and parameters' defaults (or what `previous` had).
pub fn template_fields(t: &ProviderTemplate, previous: Option<&Form>) -> String {
    let p = t.provider.clone().unwrap_or_default();
    let keep = |key: &str, default: &str| {
        previous
            .map(|f| f.text(key))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let mut html = format!(
        "<fieldset><legend>New provider from the {} template</legend>\
         <input type=\"hidden\" name=\"template\" value=\"{}\">\
         <dl class=\"facts\"><dt>Authorization endpoint</dt><dd><code>{}</code></dd>\
         <dt>Token endpoint</dt><dd><code>{}</code></dd></dl>",
        esc(&p.name),
        esc(&p.template),
        esc(&p.auth_url),
        esc(&p.token_url),
    );
    if !t.notes.is_empty() {
        html.push_str(&format!("<p class=\"note\">{}</p>", esc(&t.notes)));
    }
    html.push_str(&input(
        "provider_id",
        "Provider ID (optional)",
        &keep("provider_id", ""),
        "autocomplete=\"off\"",
        "Made from the template's name when empty.",
    ));
    html.push_str(&input(
        "client_id",
        "Client ID",
        &keep("client_id", ""),
        "required autocomplete=\"off\" spellcheck=\"false\"",
        "From the OAuth app you registered at the provider.",
    ));
    html.push_str(&input(
        "client_secret",
        "Client Secret",
        "",
        "type=\"password\" autocomplete=\"new-password\" spellcheck=\"false\"",
        "Write-only; leave empty for a public (PKCE-only) client.",
    ));
    for param in &t.params {
        html.push_str(&input(
            &format!("param_{}", param.name),
            &param.name,
            &keep(&format!("param_{}", param.name), &param.default_value),
            "autocomplete=\"off\"",
            &param.help,
        ));
    }
    html.push_str(&input(
        "scopes",
        "Scopes",
        &keep("scopes", &p.scopes.join(" ")),
        "autocomplete=\"off\"",
        "Space-separated; pre-filled from the template.",
    ));
    html.push_str(&input(
        "redirect_uri",
        "Redirect URI",
        &keep("redirect_uri", UI_REDIRECT),
        "autocomplete=\"off\"",
        "Register exactly this at the provider; the UI and mcplexerctl auth authorize listen on it (any port).",
    ));
    html.push_str("</fieldset>");
    html
}

/// Creates a provider from the template fields of `form`, then stores its
/// client secret when one was given. Returns its id, and a note when the
/// secret could not be stored (the provider exists then).
pub async fn create_from_form(
    ui: &Ui,
    form: &Form,
) -> Result<(String, Option<String>), tonic::Status> {
    let template = form.text("template");
    let params: HashMap<String, String> = form
        .with_prefix("param_")
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let provider = OAuthProvider {
        id: form.text("provider_id"),
        template,
        template_params: params,
        client_id: form.text("client_id"),
        scopes: form
            .text("scopes")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        redirect_uri: form.text("redirect_uri"),
        ..OAuthProvider::default()
    };
    let created = ui.admin().create_provider(provider).await?.into_inner();
    let secret: Zeroizing<Vec<u8>> = form
        .get("client_secret")
        .map(|v| Zeroizing::new(v.as_bytes().to_vec()))
        .unwrap_or_default();
    if secret.is_empty() {
        return Ok((created.id, None));
    }
    match crate::sensitive::set_provider_secret(ui.channel.clone(), created.id.clone(), secret)
        .await
    {
        Ok(_) => Ok((created.id, None)),
        Err(status) => Ok((
            created.id.clone(),
            Some(format!(
                "its client secret was not stored: {}",
                status.message()
            )),
        )),
    }
}

/// `GET /providers`.
pub async fn list(
    State(ui): State<Arc<Ui>>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    RawQuery(query): RawQuery,
) -> Page {
    let notice = done_notice(query.as_deref());
    let template = html_field(query.as_deref(), "template");
    let body = body(&ui, &csrf, &template, None).await?;
    Ok(html::page("Providers", Section::Providers, notice.as_ref(), &body).into_response())
}

fn html_field(query: Option<&str>, key: &str) -> String {
    super::guard::field(query.unwrap_or_default().as_bytes(), key)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

async fn body(
    ui: &Ui,
    csrf: &str,
    template: &str,
    previous: Option<&Form>,
) -> Result<String, Response> {
    let providers = ui
        .admin()
        .list_providers(ListRequest {})
        .await
        .map_err(vault_error("Providers"))?
        .into_inner()
        .providers;
    let rows: Vec<Vec<String>> = providers
        .iter()
        .map(|p| {
            let secret = if p.has_client_secret { "stored" } else { "none" };
            let mut actions = String::new();
            if p.source != "yaml" {
                actions.push_str(&form(
                    &format!("/providers/{}/secret", html::url_part(&p.id)),
                    csrf,
                    &format!(
                        "<label for=\"secret-{0}\">New client secret</label>\
                         <input id=\"secret-{0}\" name=\"client_secret\" type=\"password\" required autocomplete=\"new-password\">",
                        esc(&p.id)
                    ),
                    "Set secret",
                    "inline",
                ));
                actions.push_str(&form(&format!("/providers/{}/delete", html::url_part(&p.id)), csrf, "", "Delete", "inline danger"));
            }
            vec![
                format!("<span id=\"{}\">{}</span><br><small>{}</small>", esc(&p.id), esc(&p.name), esc(&p.id)),
                esc(if p.template.is_empty() { "—" } else { &p.template }),
                format!("<code>{}</code>", esc(&p.client_id)),
                esc(secret),
                format!("<code>{}</code>", esc(&p.redirect_uri)),
                html::source_note(&p.source),
                actions,
            ]
        })
        .collect();
    let mut html = table(
        "OAuth providers you can see",
        &[
            "Provider",
            "Template",
            "Client ID",
            "Client secret",
            "Redirect URI",
            "Source",
            "",
        ],
        &rows,
        "No providers yet. Add one from a template below.",
    );
    let templates = templates(ui).await?;
    let mut options = vec![(String::new(), "(choose a template)".to_owned())];
    options.extend(templates.iter().map(|t| {
        let p = t.provider.clone().unwrap_or_default();
        (p.template, p.name)
    }));
    html.push_str(&format!(
        "<h2>Add a provider</h2><form method=\"get\" action=\"/providers\" class=\"inline\">{}<button type=\"submit\">Choose</button></form>",
        select("template", "Template", &options, template, "")
    ));
    if let Some(t) = templates
        .iter()
        .find(|t| t.provider.as_ref().is_some_and(|p| p.template == template))
    {
        html.push_str(&form(
            "/providers",
            csrf,
            &template_fields(t, previous),
            "Add provider",
            "stack",
        ));
    }
    Ok(html)
}

/// `POST /providers`.
pub async fn create(
    State(ui): State<Arc<Ui>>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    Extension(form_data): Extension<Form>,
) -> Page {
    match create_from_form(&ui, &form_data).await {
        Ok((_, None)) => Ok(see_other("/providers?done=created")),
        Ok((_, Some(note))) => Err(failed(
            &ui,
            &csrf,
            Notice::error(format!("The provider was created, but {note}")),
            None,
        )
        .await),
        Err(status) => Err(failed(&ui, &csrf, Notice::vault(&status), Some(&form_data)).await),
    }
}

async fn failed(ui: &Ui, csrf: &str, notice: Notice, previous: Option<&Form>) -> Response {
    let template = previous.map(|f| f.text("template")).unwrap_or_default();
    super::page_with(
        axum::http::StatusCode::BAD_REQUEST,
        "Providers",
        Section::Providers,
        &notice,
        body(ui, csrf, &template, previous).await,
    )
}

/// `POST /providers/{id}/secret`.
pub async fn set_secret(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    Extension(form_data): Extension<Form>,
) -> Page {
    let secret: Zeroizing<Vec<u8>> = form_data
        .get("client_secret")
        .map(|v| Zeroizing::new(v.as_bytes().to_vec()))
        .unwrap_or_default();
    match crate::sensitive::set_provider_secret(ui.channel.clone(), id, secret).await {
        Ok(_) => Ok(see_other("/providers?done=secret-set")),
        Err(status) => Err(failed(&ui, &csrf, Notice::vault(&status), None).await),
    }
}

/// `POST /providers/{id}/delete`.
pub async fn delete(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
) -> Page {
    match ui.admin().delete_provider(DeleteRequest { id }).await {
        Ok(_) => Ok(see_other("/providers?done=deleted")),
        Err(status) => Err(failed(&ui, &csrf, Notice::vault(&status), None).await),
    }
}
