//! Routes: the route rules, and a form that links a scope to a route
//! (`auth_scope_id`), with the transport check shown inline: an env scope
//! serves stdio servers, a header scope http servers, an oauth2 scope
//! either. The vault enforces the same rule when the rule is created.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use mcplexer_proto::v1::{DeleteRequest, ListRequest, RouteRule};

use super::guard::{Csrf, Form};
use super::html::{self, Notice, Section, badge, esc, form, input, select, table};
use super::scopes::done_notice;
use super::{Page, Ui, see_other, vault_error};

/// Whether a scope of type `kind` can serve a server on `transport`.
pub fn compatible(kind: &str, transport: &str) -> bool {
    matches!(
        (kind, transport),
        ("env", "stdio") | ("header", "http") | ("oauth2", "stdio" | "http")
    )
}

/// The inline check's text.
fn check_text(kind: &str, transport: &str) -> String {
    if compatible(kind, transport) {
        badge("good", &format!("{kind} scope fits a {transport} server"))
    } else {
        badge(
            "bad",
            &format!(
                "{kind} scope cannot serve a {transport} server (env ↔ stdio, header ↔ http, oauth2 either)"
            ),
        )
    }
}

/// `GET /routes`.
pub async fn list(
    State(ui): State<Arc<Ui>>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    RawQuery(query): RawQuery,
) -> Page {
    let body = body(&ui, &csrf, None).await?;
    Ok(html::page(
        "Routes",
        Section::Routes,
        done_notice(query.as_deref()).as_ref(),
        &body,
    )
    .into_response())
}

async fn body(ui: &Ui, csrf: &str, previous: Option<&Form>) -> Result<String, Response> {
    let mut admin = ui.admin();
    let routes = admin
        .list_routes(ListRequest {})
        .await
        .map_err(vault_error("Routes"))?
        .into_inner()
        .routes;
    let servers = admin
        .list_servers(ListRequest {})
        .await
        .map_err(vault_error("Routes"))?
        .into_inner()
        .servers;
    let scopes = admin
        .list_scopes(ListRequest {})
        .await
        .map_err(vault_error("Routes"))?
        .into_inner()
        .scopes;
    let transport: HashMap<&str, &str> = servers
        .iter()
        .map(|s| (s.id.as_str(), s.transport.as_str()))
        .collect();
    let kind: HashMap<&str, &str> = scopes
        .iter()
        .map(|s| (s.id.as_str(), s.r#type.as_str()))
        .collect();
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let server_transport = transport
                .get(r.downstream_server_id.as_str())
                .copied()
                .unwrap_or("?");
            let scope_cell = if r.auth_scope_id.is_empty() {
                "—".to_owned()
            } else {
                let k = kind.get(r.auth_scope_id.as_str()).copied().unwrap_or("?");
                format!(
                    "<a href=\"/scopes/{}\">{}</a> ({}) {}",
                    html::url_part(&r.auth_scope_id),
                    esc(&r.auth_scope_id),
                    esc(k),
                    check_text(k, server_transport)
                )
            };
            let actions = if r.source == "yaml" {
                String::new()
            } else {
                form(
                    &format!("/routes/{}/delete", html::url_part(&r.id)),
                    csrf,
                    "",
                    "Delete",
                    "inline danger",
                )
            };
            vec![
                format!("{}<br><small>{}</small>", esc(&r.name), esc(&r.id)),
                r.priority.to_string(),
                format!("<code>{}</code>", esc(&r.tool_match.join(", "))),
                format!(
                    "{} ({})",
                    esc(&r.downstream_server_id),
                    esc(server_transport)
                ),
                scope_cell,
                if r.suspended.is_empty() {
                    esc(&r.policy)
                } else {
                    format!(
                        "{}<br><strong>suspended</strong>: <small>{}</small>",
                        esc(&r.policy),
                        esc(&r.suspended)
                    )
                },
                html::source_note(&r.source),
                actions,
            ]
        })
        .collect();
    let mut html = table(
        "Route rules you can see",
        &[
            "Rule", "Priority", "Tools", "Server", "Scope", "Policy", "Source", "",
        ],
        &rows,
        "No route rules yet.",
    );
    let keep = |key: &str| previous.map(|f| f.text(key)).unwrap_or_default();
    let server_options: Vec<(String, String)> = servers
        .iter()
        .map(|s| (s.id.clone(), format!("{} ({})", s.id, s.transport)))
        .collect();
    let mut scope_options = vec![(String::new(), "(no credentials)".to_owned())];
    scope_options.extend(
        scopes
            .iter()
            .map(|s| (s.id.clone(), format!("{} ({})", s.id, s.r#type))),
    );
    html.push_str("<h2>Link a scope to a route</h2>");
    if servers.is_empty() {
        html.push_str("<p class=\"empty\">There is no downstream server to route to yet: add one with <code>mcplexerctl server create</code> or in the YAML configuration.</p>");
        return Ok(html);
    }
    // The compatibility of every pair, for the inline check the script
    // shows as the selection changes (and as a table without script).
    let mut matrix = String::from(
        "<details><summary>Which scopes fit which servers</summary><ul class=\"compat\" id=\"compat\">",
    );
    for s in &servers {
        for sc in &scopes {
            matrix.push_str(&format!(
                "<li data-server=\"{}\" data-scope=\"{}\" data-ok=\"{}\">{} → {}: {}</li>",
                esc(&s.id),
                esc(&sc.id),
                compatible(&sc.r#type, &s.transport),
                esc(&sc.id),
                esc(&s.id),
                check_text(&sc.r#type, &s.transport)
            ));
        }
    }
    matrix.push_str("</ul></details>");
    let fields = format!(
        "{}{}{}{}{}{}<p id=\"route-check\" aria-live=\"polite\"></p>{}{}",
        input(
            "name",
            "Name",
            &keep("name"),
            "required autocomplete=\"off\"",
            ""
        ),
        input(
            "id",
            "ID (optional)",
            &keep("id"),
            "autocomplete=\"off\"",
            ""
        ),
        input(
            "tool_match",
            "Tools",
            &keep("tool_match"),
            "required autocomplete=\"off\" placeholder=\"github__*\"",
            "Comma-separated globs over namespaced tool names."
        ),
        select(
            "downstream_server_id",
            "Server",
            &server_options,
            &keep("downstream_server_id"),
            "required"
        ),
        select(
            "auth_scope_id",
            "Scope",
            &scope_options,
            &keep("auth_scope_id"),
            ""
        ),
        input(
            "priority",
            "Priority",
            &{
                let p = keep("priority");
                if p.is_empty() { "100".to_owned() } else { p }
            },
            "type=\"number\" required",
            "Higher wins."
        ),
        select(
            "policy",
            "Policy",
            &[
                ("allow".to_owned(), "allow".to_owned()),
                ("deny".to_owned(), "deny".to_owned())
            ],
            &keep("policy"),
            "",
        ),
        matrix,
    );
    html.push_str(&form("/routes", csrf, &fields, "Create route", "stack"));
    Ok(html)
}

/// `POST /routes`.
pub async fn create(
    State(ui): State<Arc<Ui>>,
    Extension(Csrf(csrf)): Extension<Csrf>,
    Extension(form_data): Extension<Form>,
) -> Page {
    let priority = match form_data.text("priority").parse::<i32>() {
        Ok(p) => p,
        Err(_) => {
            return Err(failed(
                &ui,
                &csrf,
                Notice::error("The priority must be a whole number."),
                &form_data,
            )
            .await);
        }
    };
    let rule = RouteRule {
        id: form_data.text("id"),
        name: form_data.text("name"),
        priority,
        tool_match: form_data
            .text("tool_match")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        downstream_server_id: form_data.text("downstream_server_id"),
        auth_scope_id: form_data.text("auth_scope_id"),
        policy: form_data.text("policy"),
        ..RouteRule::default()
    };
    match ui.admin().create_route(rule).await {
        Ok(_) => Ok(see_other("/routes?done=created")),
        Err(status) => Err(failed(&ui, &csrf, Notice::vault(&status), &form_data).await),
    }
}

async fn failed(ui: &Ui, csrf: &str, notice: Notice, previous: &Form) -> Response {
    super::page_with(
        axum::http::StatusCode::BAD_REQUEST,
        "Routes",
        Section::Routes,
        &notice,
        body(ui, csrf, Some(previous)).await,
    )
}

/// `POST /routes/{id}/delete`.
pub async fn delete(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Extension(Csrf(csrf)): Extension<Csrf>,
) -> Page {
    match ui.admin().delete_route(DeleteRequest { id }).await {
        Ok(_) => Ok(see_other("/routes?done=deleted")),
        Err(status) => {
            let notice = Notice::vault(&status);
            Err(super::page_with(
                html::http_status(&status),
                "Routes",
                Section::Routes,
                &notice,
                body(&ui, &csrf, None).await,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_rule() {
        assert!(compatible("env", "stdio") && !compatible("env", "http"));
        assert!(compatible("header", "http") && !compatible("header", "stdio"));
        assert!(compatible("oauth2", "stdio") && compatible("oauth2", "http"));
    }
}
