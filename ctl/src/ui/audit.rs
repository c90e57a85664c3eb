//! Audit: the records the caller may see, filtered, newest last, and a
//! live tail (the script follows `/audit/stream`, an event stream of the
//! records written after the last one shown). Records never hold a secret
//! value: the vault and the proxy redact before they write.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mcplexer_proto::v1::{AuditQuery, AuditRecord};
use tokio_stream::{Stream, StreamExt};

use super::guard::field;
use super::html::{self, Section, esc, input, select, table};
use super::{Page, Ui, vault_error};
use crate::time::format_ms;

/// How many records the page shows.
const SHOWN: u32 = 200;

/// The filters of a query string.
fn query_of(raw: Option<&str>) -> AuditQuery {
    let raw = raw.unwrap_or_default().as_bytes();
    let get = |key: &str| {
        field(raw, key)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    AuditQuery {
        tool: get("tool"),
        auth_scope_id: get("scope"),
        status: get("status"),
        kind: get("kind"),
        after_id: get("after_id").parse().unwrap_or(0),
        limit: SHOWN,
        ..AuditQuery::default()
    }
}

/// One record as table cells (escaped).
pub fn cells(r: &AuditRecord) -> Vec<String> {
    let what = if r.kind == "admin" {
        &r.action
    } else {
        &r.tool
    };
    vec![
        esc(&format_ms(r.time_ms)),
        r.id.to_string(),
        r.uid.to_string(),
        esc(&r.kind),
        html::badge(
            match r.status.as_str() {
                "success" => "good",
                "denied" => "bad",
                _ => "warn",
            },
            &r.status,
        ),
        esc(what),
        esc(&r.auth_scope_id),
        esc(&r.downstream_server_id),
        esc(&r.error),
    ]
}

/// `GET /audit`.
pub async fn page(State(ui): State<Arc<Ui>>, RawQuery(raw): RawQuery) -> Page {
    let query = query_of(raw.as_deref());
    let records = ui
        .admin()
        .query_audit(AuditQuery {
            after_id: 0,
            ..query.clone()
        })
        .await
        .map_err(vault_error("Audit"))?
        .into_inner()
        .records;
    let last = records.iter().map(|r| r.id).max().unwrap_or(0);
    let option = |v: &str| {
        (
            v.to_owned(),
            if v.is_empty() {
                "any".to_owned()
            } else {
                v.to_owned()
            },
        )
    };
    let kinds: Vec<(String, String)> = ["", "release", "call", "admin", "oauth"]
        .iter()
        .map(|v| option(v))
        .collect();
    let statuses: Vec<(String, String)> = ["", "success", "error", "denied"]
        .iter()
        .map(|v| option(v))
        .collect();
    let filters = format!(
        "<form method=\"get\" action=\"/audit\" class=\"inline\">{}{}{}{}<button type=\"submit\">Filter</button></form>",
        select("kind", "Kind", &kinds, &query.kind, ""),
        select("status", "Status", &statuses, &query.status, ""),
        input(
            "tool",
            "Tool",
            &query.tool,
            "autocomplete=\"off\" placeholder=\"github__*\"",
            ""
        ),
        input(
            "scope",
            "Scope",
            &query.auth_scope_id,
            "autocomplete=\"off\"",
            ""
        ),
    );
    let rows: Vec<Vec<String>> = records.iter().map(cells).collect();
    let mut follow = format!("/audit/stream?after_id={last}");
    for (key, value) in [
        ("kind", &query.kind),
        ("status", &query.status),
        ("tool", &query.tool),
        ("scope", &query.auth_scope_id),
    ] {
        if !value.is_empty() {
            follow.push_str(&format!("&{key}={}", html::url_part(value)));
        }
    }
    let headers = [
        "Time",
        "#",
        "UID",
        "Kind",
        "Status",
        "Tool / action",
        "Scope",
        "Server",
        "Error",
    ];
    // The table is always there (the tail appends to it), its caption says
    // when nothing matched yet.
    let mut tbl = table("Audit records, newest last", &headers, &rows, "");
    if rows.is_empty() {
        tbl = format!(
            "<div class=\"scroll\"><table><caption>No records match yet; new ones appear here.</caption><thead><tr>{}</tr></thead><tbody></tbody></table></div>",
            headers
                .iter()
                .map(|h| format!("<th scope=\"col\">{h}</th>"))
                .collect::<String>()
        );
    }
    let tbl = tbl.replacen(
        "<tbody>",
        &format!("<tbody id=\"audit-rows\" data-follow=\"{}\">", esc(&follow)),
        1,
    );
    let body = format!(
        "{filters}<p class=\"note\" id=\"tail-state\" aria-live=\"polite\">Live: new records are added as they are written.</p>{tbl}"
    );
    Ok(html::page("Audit", Section::Audit, None, &body).into_response())
}

/// `GET /audit/stream`: each record after `after_id` that matches, as an
/// event whose data is the row's cells (escaped HTML) in JSON.
pub async fn stream(
    State(ui): State<Arc<Ui>>,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    let query = query_of(raw.as_deref());
    let records = ui
        .admin()
        .follow_audit(query)
        .await
        .map_err(vault_error("Audit"))?
        .into_inner();
    let events = records
        .take_while(Result::is_ok)
        .filter_map(Result::ok)
        .map(|record| {
            let data = serde_json::to_string(&cells(&record)).unwrap_or_else(|_| "[]".into());
            Ok(Event::default().event("record").data(data))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
