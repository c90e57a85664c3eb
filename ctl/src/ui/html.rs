//! HTML for the UI: escaping, the page frame, and the small pieces every
//! page uses. Everything a page shows goes through [`esc`]; nothing is
//! ever interpolated raw. No script or style is inline (the CSP forbids
//! both): the stylesheet and the one script are served from `/static/`.

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for an element body or a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The sections of the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Auth scopes and their secrets.
    Scopes,
    /// OAuth providers.
    Providers,
    /// Route rules.
    Routes,
    /// The audit log.
    Audit,
    /// Pages outside the navigation (sign-in, errors).
    None,
}

/// A whole page: the frame, the navigation with `section` marked, an
/// optional notice, and `body`.
pub fn page(title: &str, section: Section, notice: Option<&Notice>, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (s, href, label) in [
        (Section::Scopes, "/scopes", "Auth Scopes"),
        (Section::Providers, "/providers", "Providers"),
        (Section::Routes, "/routes", "Routes"),
        (Section::Audit, "/audit", "Audit"),
    ] {
        let current = if s == section {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<li><a href=\"{href}\"{current}>{label}</a></li>");
    }
    let notice = notice.map(Notice::render).unwrap_or_default();
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · MCPlexer</title><link rel=\"stylesheet\" href=\"/static/style.css\">\
         <script src=\"/static/app.js\" defer></script></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><span class=\"brand\">MCPlexer · Config</span><nav aria-label=\"Sections\"><ul>{nav}</ul></nav></header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{notice}{body}</main></body></html>\n",
        esc(title),
        esc(title)
    ))
}

/// A message at the top of a page: what just happened, or what failed and
/// how to fix it.
pub struct Notice {
    /// An error (shown as an alert) or a confirmation.
    pub error: bool,
    /// The message.
    pub message: String,
    /// The command or step that fixes it, if any.
    pub fix: String,
}

impl Notice {
    /// A confirmation.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            error: false,
            message: message.into(),
            fix: String::new(),
        }
    }

    /// The vault's answer to a failed call: its message and its fix.
    pub fn vault(status: &tonic::Status) -> Self {
        Self {
            error: true,
            message: status.message().to_owned(),
            fix: mcplexer_proto::error_fix(status).to_owned(),
        }
    }

    /// A local error.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: true,
            message: message.into(),
            fix: String::new(),
        }
    }

    fn render(&self) -> String {
        let (class, role) = if self.error {
            ("notice error", "alert")
        } else {
            ("notice ok", "status")
        };
        let fix = if self.fix.is_empty() {
            String::new()
        } else {
            format!("<p class=\"fix\">Fix: <code>{}</code></p>", esc(&self.fix))
        };
        format!(
            "<div class=\"{class}\" role=\"{role}\"><p>{}</p>{fix}</div>",
            esc(&self.message)
        )
    }
}

/// A page that only says what went wrong, with `status`.
pub fn error_page(status: StatusCode, title: &str, notice: &Notice) -> Response {
    (status, page(title, Section::None, Some(notice), "")).into_response()
}

/// A page that moves on to `to` at once by a `refresh` meta element (the
/// CSP allows no inline script), with a link for a browser that does not.
/// A navigation this page starts is the page's own: the browser counts it
/// as coming from this origin, so the SameSite=Strict session cookie goes
/// with it even when the page itself was reached from another site.
pub fn moving_on(title: &str, section: Section, notice: &Notice, to: &str, link: &str) -> Response {
    let body = format!(
        "<p><a class=\"button\" href=\"{0}\">{1}</a></p>",
        esc(to),
        esc(link)
    );
    let page = page(title, section, Some(notice), &body).0.replacen(
        "<title>",
        &format!(
            "<meta http-equiv=\"refresh\" content=\"0;url={}\"><title>",
            esc(to)
        ),
        1,
    );
    Html(page).into_response()
}

/// The HTTP status for a vault error.
pub fn http_status(status: &tonic::Status) -> StatusCode {
    use tonic::Code;
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The hidden field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A form posting to `action` with the CSRF field, a submit button
/// labelled `label`, and `fields` before it.
pub fn form(action: &str, csrf: &str, fields: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"{class}\">{}{fields}<button type=\"submit\">{}</button></form>",
        esc(action),
        csrf_field(csrf),
        esc(label)
    )
}

/// A labelled text input.
pub fn input(name: &str, label: &str, value: &str, attrs: &str, help: &str) -> String {
    let name = esc(name);
    let help_html = if help.is_empty() {
        String::new()
    } else {
        format!("<small id=\"{name}-help\">{}</small>", esc(help))
    };
    let described = if help.is_empty() {
        String::new()
    } else {
        format!(" aria-describedby=\"{name}-help\"")
    };
    format!(
        "<label for=\"{name}\">{}</label><input id=\"{name}\" name=\"{name}\" value=\"{}\"{described} {attrs}>{help_html}",
        esc(label),
        esc(value)
    )
}

/// A labelled select of `(value, label)` options, `selected` chosen.
pub fn select(
    name: &str,
    label: &str,
    options: &[(String, String)],
    selected: &str,
    attrs: &str,
) -> String {
    let name = esc(name);
    let mut html = format!(
        "<label for=\"{name}\">{}</label><select id=\"{name}\" name=\"{name}\" {attrs}>",
        esc(label)
    );
    for (value, text) in options {
        let sel = if value == selected { " selected" } else { "" };
        let _ = write!(
            html,
            "<option value=\"{}\"{sel}>{}</option>",
            esc(value),
            esc(text)
        );
    }
    html.push_str("</select>");
    html
}

/// A table with `headers` and already-escaped `rows`, or `empty` when
/// there are none.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", esc(empty));
    }
    let mut html = format!(
        "<div class=\"scroll\"><table><caption>{}</caption><thead><tr>",
        esc(caption)
    );
    for h in headers {
        let _ = write!(html, "<th scope=\"col\">{}</th>", esc(h));
    }
    html.push_str("</tr></thead><tbody>");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

/// A status badge.
pub fn badge(kind: &str, text: &str) -> String {
    format!("<span class=\"badge {kind}\">{}</span>", esc(text))
}

/// Where an object comes from, and whether the UI may change it.
pub fn source_note(source: &str) -> String {
    match source {
        "yaml" => badge("ro", "from YAML (read-only)"),
        "seed" => badge("ro", "seed"),
        other => esc(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_markup_needs() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn url_parts_are_encoded() {
        assert_eq!(url_part("a b/c?d"), "a+b%2Fc%3Fd");
    }
}
