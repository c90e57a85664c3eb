//! Who may use the UI, checked on every request before any handler runs.
//!
//! * The listener accepts only connections from this process's own uid
//!   (the owner of the client's loopback socket, from the kernel), since
//!   every call the UI makes to the vault is made with that uid.
//! * `Host` must name this listener (127.0.0.1, [::1] or localhost with its
//!   port): a page of another site resolving its name to 127.0.0.1 (DNS
//!   rebinding) is refused.
//! * `/login?token=…` trades the one-time token that `mcplexerctl ui`
//!   printed for a session cookie (HttpOnly, SameSite=Strict); the token is
//!   then spent. Its answer is a page that moves on to the UI, not a
//!   redirect: a browser that came from elsewhere (the file page the UI
//!   opens it through, another site) would count a redirect as part of that
//!   cross-site navigation and withhold the new cookie from the page it
//!   lands on. A fresh token is printed on the UI's terminal on SIGUSR1
//!   ([`Guard::fresh_login`]), for a browser whose session is gone.
//! * Every other path needs that cookie, except the OAuth callback, which
//!   the provider's redirect reaches without it (SameSite=Strict withholds
//!   it on a cross-site navigation). The callback only completes a flow the
//!   vault started for this uid, by its unguessable single-use state, and
//!   only for the browser that started it (see [`super::oauth`]).
//! * A request that changes anything (any method but GET and HEAD) must
//!   carry `Origin` equal to this listener's origin and the session's CSRF
//!   token in its form.
//! * Every response forbids framing, inline script and style, and caching.
//!
//! Browsers do not keep cookies apart by port: a cookie of 127.0.0.1 goes
//! to every port there, so other local servers the browser visits see the
//! session cookie too. It is useless to them, since only this uid's
//! connections are served; but any of them can also set a cookie of the
//! same name and so replace it, which signs the browser out (see
//! [`COOKIE`]).

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use zeroize::Zeroizing;

use super::Ui;
use super::html::{Notice, Section, error_page, moving_on};

/// The session cookie's name, before the port. Cookies of 127.0.0.1 are
/// shared by every port there, so the port in the name only keeps two
/// `mcplexerctl ui` listeners from replacing each other's session; when a
/// browser sends several values under the name, each is tried. It does not
/// protect the session from other local servers: any of them can set a
/// cookie of this name and replace it. That cannot sign anyone in (the
/// value is checked), only out, and a fresh sign-in link
/// ([`Guard::fresh_login`]) recovers without restarting.
const COOKIE: &str = "mcplexer_ui_";

/// The largest form accepted (secret values are at most 1 MiB).
pub const MAX_FORM: usize = 2 << 20;

/// The response headers every answer carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The signed-in browser's session.
struct Session {
    id: Zeroizing<String>,
    csrf: Zeroizing<String>,
}

/// The token, the session and the names this listener answers to.
pub struct Guard {
    /// The session cookie's name.
    cookie: String,
    hosts: Vec<String>,
    origins: Vec<String>,
    login: Mutex<Option<Zeroizing<String>>>,
    session: Mutex<Option<Session>>,
}

/// The session's CSRF token, for the forms a handler renders.
#[derive(Clone)]
pub struct Csrf(pub Arc<str>);

/// A posted form, read and checked by the guard and parsed once: every
/// value, the secret ones included, is held in a wiping buffer and wiped
/// when the last handler lets go of it. (Hyper's own receive buffers are
/// beyond reach.)
#[derive(Clone)]
pub struct Form(Arc<Vec<(String, Zeroizing<String>)>>);

impl Form {
    /// Parses a form body; each decoded value goes straight into its wiping
    /// buffer.
    fn parse(body: &[u8]) -> Self {
        Self(Arc::new(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
                .collect(),
        ))
    }

    /// The value of `key`, if the form has it.
    pub fn get(&self, key: &str) -> Option<Zeroizing<String>> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The value of `key`, trimmed, or empty. For fields that hold no
    /// secret: the copy is not wiped.
    pub fn text(&self, key: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    }

    /// The fields named `prefix` + NAME, as (NAME, value trimmed).
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix)
                    .map(|name| (name.to_owned(), v.trim().to_owned()))
            })
            .collect()
    }
}

impl Guard {
    /// A guard for a listener on `addr`, with a fresh one-time token.
    pub fn new(addr: std::net::SocketAddr) -> std::io::Result<(Self, Zeroizing<String>)> {
        let port = addr.port();
        let mut hosts = vec![format!("localhost:{port}")];
        hosts.push(match addr {
            std::net::SocketAddr::V4(v4) => format!("{}:{port}", v4.ip()),
            std::net::SocketAddr::V6(v6) => format!("[{}]:{port}", v6.ip()),
        });
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        let token = random_token()?;
        Ok((
            Self {
                cookie: format!("{COOKIE}{port}"),
                hosts,
                origins,
                login: Mutex::new(Some(token.clone())),
                session: Mutex::new(None),
            },
            token,
        ))
    }

    /// A new one-time token, in place of any earlier one not yet used (only
    /// the newest link printed works). The session, if any, stays until the
    /// new token is used to sign in.
    pub fn fresh_login(&self) -> std::io::Result<Zeroizing<String>> {
        let token = random_token()?;
        *self.login.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(token)
    }

    /// The session cookie's name, which the OAuth flow cookies' names
    /// start with.
    pub fn cookie_name(&self) -> &str {
        &self.cookie
    }

    /// The host this listener is reached at, as URLs should name it.
    pub fn host(&self) -> &str {
        &self.hosts[1]
    }

    /// Spends the one-time token: a new session in place of any earlier
    /// one, or `None` if `token` is wrong or already used.
    fn sign_in(&self, token: &str) -> Option<(Zeroizing<String>, Zeroizing<String>)> {
        let mut login = self.login.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = login.as_ref()?;
        if !same(expected.as_bytes(), token.as_bytes()) {
            return None;
        }
        *login = None;
        let id = random_token().ok()?;
        let csrf = random_token().ok()?;
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(Session {
            id: id.clone(),
            csrf: csrf.clone(),
        });
        Some((id, csrf))
    }

    /// The CSRF token of the session `cookie` names, if it is the session.
    fn session_csrf(&self, cookie: &str) -> Option<Arc<str>> {
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let session = session.as_ref()?;
        same(session.id.as_bytes(), cookie.as_bytes()).then(|| Arc::from(session.csrf.as_str()))
    }
}

/// 32 random bytes from the kernel, as hex.
pub fn random_token() -> std::io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    mcplexer_proto::random_bytes(&mut bytes[..])?;
    let mut hex = Zeroizing::new(String::with_capacity(64));
    for b in bytes.iter() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Ok(hex)
}

/// Compares in time that depends on the lengths only (`subtle`, whose
/// comparison the optimiser cannot turn into an early exit).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Every value of cookie `name` in the request's `Cookie` headers.
pub fn cookies<'a>(
    headers: &'a axum::http::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of `key` in a query string or form body.
pub fn field(encoded: &[u8], key: &str) -> Option<Zeroizing<String>> {
    url::form_urlencoded::parse(encoded)
        .find(|(k, _)| k == key)
        .map(|(_, v)| Zeroizing::new(v.into_owned()))
}

/// The middleware: refuses what the module docs say, passes the rest on
/// with the session's [`Csrf`], and adds the security headers.
pub async fn check(State(ui): State<Arc<Ui>>, request: Request, next: Next) -> Response {
    let mut response = decide(&ui, request, next).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not no-referrer: Chromium then sends `Origin: null` on the UI's
        // own form posts, which the Origin check must refuse. Same-origin
        // still sends nothing to the provider or any other site.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn decide(ui: &Ui, request: Request, next: Next) -> Response {
    let guard = &ui.guard;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !guard.hosts.iter().any(|h| h == host) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "This address is not the UI's",
            "The request named another host. Open the UI at the address mcplexerctl ui printed.",
        );
    }
    let path = request.uri().path();
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if path == "/login" {
        if !reads {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "Sign-in",
                "Sign in with the link mcplexerctl ui printed.",
            );
        }
        let query = request.uri().query().unwrap_or_default().as_bytes();
        let signed_in = field(query, "token").and_then(|token| guard.sign_in(&token));
        let Some((id, _)) = signed_in else {
            return refuse(
                StatusCode::FORBIDDEN,
                "This sign-in link is spent",
                &format!(
                    "A sign-in link works once, and only the newest one printed works. {}",
                    fresh_link_hint()
                ),
            );
        };
        let mut response = moving_on(
            "Signed in",
            Section::None,
            &Notice::ok("Signed in. Taking you to the Auth Scopes…"),
            "/scopes",
            "Continue to the Auth Scopes",
        );
        if let Ok(value) = HeaderValue::from_str(&format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            guard.cookie,
            id.as_str()
        )) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    if path == "/oauth/callback" && reads {
        return next.run(request).await;
    }
    let Some(csrf) = cookies(request.headers(), &guard.cookie).find_map(|c| guard.session_csrf(c))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            &format!(
                "Open the sign-in link mcplexerctl ui printed (it works once); without it, nothing here is served. {}",
                fresh_link_hint()
            ),
        );
    };
    if reads {
        let mut request = request;
        request.extensions_mut().insert(Csrf(csrf));
        return next.run(request).await;
    }
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or_default();
    if !guard.origins.iter().any(|o| o == origin) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Refused",
            "The request did not come from this UI's own pages (its Origin is missing or foreign). Nothing was changed.",
        );
    }
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let Some(bytes) = read_body(body, declared).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Refused",
            "The form is too large or was cut short. Nothing was changed.",
        );
    };
    let form = Form::parse(&bytes);
    drop(bytes);
    let sent = form.get("csrf");
    if !sent.is_some_and(|s| same(s.as_bytes(), csrf.as_bytes())) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's token does not match this session. Reload the page and try again. Nothing was changed.",
        );
    }
    let mut request = Request::from_parts(parts, Body::empty());
    request.extensions_mut().insert(Csrf(csrf));
    request.extensions_mut().insert(form);
    next.run(request).await
}

/// Reads a body of at most [`MAX_FORM`] bytes into a wiping buffer sized
/// from its `Content-Length`; a buffer that must grow anyway is copied by
/// hand, so no stale copy of a secret is left in freed memory.
async fn read_body(body: Body, declared: usize) -> Option<Zeroizing<Vec<u8>>> {
    use tokio_stream::StreamExt;
    let mut buf = Zeroizing::new(Vec::with_capacity(declared.min(MAX_FORM)));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.ok()?;
        let needed = buf.len() + chunk.len();
        if needed > MAX_FORM {
            return None;
        }
        if needed > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(2 * buf.capacity())));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk);
    }
    Some(buf)
}

/// How to get a new sign-in link from this very process.
fn fresh_link_hint() -> String {
    format!(
        "For a fresh link, run `kill -USR1 {}`: mcplexerctl ui prints one on its terminal.",
        std::process::id()
    )
}

fn refuse(status: StatusCode, title: &str, message: &str) -> Response {
    error_page(status, title, &Notice::error(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_spent_once() {
        let (guard, token) = Guard::new("127.0.0.1:4000".parse().unwrap()).unwrap();
        assert_eq!(token.len(), 64);
        assert!(guard.sign_in("not-the-token").is_none());
        let (id, csrf) = guard.sign_in(&token).unwrap();
        assert!(guard.sign_in(&token).is_none());
        assert_eq!(&*guard.session_csrf(&id).unwrap(), csrf.as_str());
        assert!(guard.session_csrf("forged").is_none());
        assert_eq!(guard.host(), "127.0.0.1:4000");
    }

    #[test]
    fn same_is_equality_of_bytes() {
        assert!(same(b"", b""));
        assert!(same(b"token-1", b"token-1"));
        assert!(!same(b"token-1", b"token-2"));
        assert!(!same(b"token", b"token-1"));
        assert!(!same(b"token-1", b"token"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn a_fresh_token_replaces_an_unused_one_and_keeps_the_session() {
        let (guard, first) = Guard::new("127.0.0.1:4000".parse().unwrap()).unwrap();
        let (id, _) = guard.sign_in(&first).unwrap();
        let second = guard.fresh_login().unwrap();
        assert!(guard.session_csrf(&id).is_some());
        let third = guard.fresh_login().unwrap();
        assert_ne!(second.as_str(), third.as_str());
        assert!(guard.sign_in(&second).is_none());
        let (new_id, _) = guard.sign_in(&third).unwrap();
        assert!(guard.session_csrf(&new_id).is_some());
        assert!(guard.session_csrf(&id).is_none());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("mcplexer_ui_1=tossed; a=1; mcplexer_ui_1=xyz"),
        );
        let found: Vec<&str> = cookies(&headers, "mcplexer_ui_1").collect();
        assert_eq!(found, ["tossed", "xyz"]);
        assert_eq!(cookies(&headers, "b").next(), None);
    }
}
