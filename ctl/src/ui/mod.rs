//! `mcplexerctl ui`: the configuration UI, served on loopback to the
//! browser of the user who starts it.
//!
//! It holds no privilege of its own: every page is made from the vault's
//! answers to this process's uid over the vault's socket, exactly as the
//! CLI's would be, and every change is an Admin or Auth call the vault
//! authorises and audits. Secret values go one way, from a form to the
//! vault (`sensitive`); no page or response ever carries one, because the
//! vault never returns one. [`guard`] decides who may use it.
//!
//! Pages are plain HTML forms rendered here (one stylesheet and one small
//! script, embedded in the binary; nothing is loaded from the network), so
//! they work with the keyboard and without script; the script only adds
//! the live audit tail and the inline transport check on the routes page.

mod audit;
mod guard;
mod html;
mod oauth;
mod providers;
mod routes;
mod scopes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mcplexer_proto::v1::admin_client::AdminClient;
use mcplexer_proto::v1::auth_client::AuthClient;
use tonic::transport::Channel;

use crate::cli::UiArgs;
use crate::commands::Ctx;
use crate::error::Failure;

/// What every handler shares.
pub struct Ui {
    channel: Channel,
    guard: guard::Guard,
    /// Authorizations started here and not yet back, by state: the scope
    /// page to return to and the browser that may come back.
    flows: Mutex<HashMap<String, oauth::Flow>>,
}

impl Ui {
    fn admin(&self) -> AdminClient<Channel> {
        mcplexer_proto::admin_client(self.channel.clone())
    }

    fn auth(&self) -> AuthClient<Channel> {
        mcplexer_proto::auth_client(self.channel.clone())
    }
}

/// `ui [--listen ADDR:PORT] [--no-browser]`: serves until interrupted.
pub async fn run(ctx: &mut Ctx, args: UiArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() {
        return Err(Failure::usage(format!(
            "--listen {}: the UI listens on loopback only (127.0.0.1 or [::1])",
            args.listen
        )));
    }
    let channel = ctx.channel().await?;
    // Fail here, not in the browser, when the vault does not answer.
    mcplexer_proto::admin_client(channel.clone())
        .status(mcplexer_proto::v1::StatusRequest {})
        .await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Local(anyhow::anyhow!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Local(anyhow::Error::new(e)))?;
    let (guard, token) = guard::Guard::new(addr)
        .map_err(|e| Failure::Local(anyhow::anyhow!("cannot make a sign-in token: {e}")))?;
    let url = zeroize::Zeroizing::new(format!(
        "http://{}/login?token={}",
        guard.host(),
        token.as_str()
    ));
    let ui = Arc::new(Ui {
        channel,
        guard,
        flows: Mutex::new(HashMap::new()),
    });
    // Before the link is printed: until a handler is installed, SIGUSR1
    // ends the process.
    let fresh = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| Failure::Local(anyhow::anyhow!("cannot handle SIGUSR1: {e}")))?;
    // The link goes to this terminal only: anyone holding it could sign in
    // once, as this user.
    println!(
        "MCPlexer UI at http://{}/ — sign in (works once): {}",
        ui.guard.host(),
        url.as_str()
    );
    eprintln!(
        "Stop it with Ctrl-C. For a fresh sign-in link: kill -USR1 {}",
        std::process::id()
    );
    let opened = if args.no_browser {
        None
    } else {
        Some(open_browser(url.as_str()))
    };
    if let Some(Err(why)) = &opened {
        eprintln!("cannot open a browser ({why}); open the link above yourself");
    }
    drop(token);
    drop(url);
    let printer = tokio::spawn(print_fresh_links(ui.clone(), fresh));
    let served = axum::serve(OwnUidOnly(listener), router(ui))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    printer.abort();
    if let Some(Ok(file)) = opened {
        let _ = std::fs::remove_file(file);
    }
    served.map_err(|e| Failure::Local(anyhow::anyhow!("the UI server failed: {e}")))
}

/// Prints a fresh one-time sign-in link on each SIGUSR1, for a browser
/// whose session is gone (a local server replaced its cookie, or it was
/// closed) without restarting the UI. Like the first, the link goes to this
/// terminal only.
async fn print_fresh_links(ui: Arc<Ui>, mut signals: tokio::signal::unix::Signal) {
    use std::io::Write;
    while signals.recv().await.is_some() {
        let token = match ui.guard.fresh_login() {
            Ok(token) => token,
            Err(e) => {
                eprintln!("cannot make a sign-in token: {e}");
                continue;
            }
        };
        let line = zeroize::Zeroizing::new(format!(
            "Fresh sign-in link (works once): http://{}/login?token={}\n",
            ui.guard.host(),
            token.as_str()
        ));
        // Not println!, which panics when the terminal is gone.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }
}

fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/scopes") }))
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
        // Browsers ask for it on every page; there is none.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/scopes", get(scopes::list).post(scopes::create))
        .route("/scopes/new", get(scopes::new))
        .route("/scopes/{id}", get(scopes::show))
        .route("/scopes/{id}/delete", post(scopes::delete))
        .route("/scopes/{id}/secrets", post(scopes::set_secret))
        .route("/scopes/{id}/secrets/delete", post(scopes::delete_secret))
        .route("/scopes/{id}/authorize", post(oauth::authorize))
        .route("/scopes/{id}/revoke", post(oauth::revoke))
        .route("/oauth/callback", get(oauth::callback))
        .route("/providers", get(providers::list).post(providers::create))
        .route("/providers/{id}/secret", post(providers::set_secret))
        .route("/providers/{id}/delete", post(providers::delete))
        .route("/routes", get(routes::list).post(routes::create))
        .route("/routes/{id}/delete", post(routes::delete))
        .route("/audit", get(audit::page))
        .route("/audit/stream", get(audit::stream))
        .fallback(|| async {
            html::error_page(
                axum::http::StatusCode::NOT_FOUND,
                "Not found",
                &html::Notice::error("There is no such page."),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            guard::check,
        ))
        .with_state(ui)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// Opens the sign-in link in the user's browser without putting the token
/// on a command line (other users can read those): `xdg-open` gets a file
/// of this user's, mode 0600, that redirects to the link. Returns the
/// file, removed at exit.
fn open_browser(url: &str) -> Result<std::path::PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_absolute())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("mcplexer-ui-{}.html", std::process::id()));
    let escaped = zeroize::Zeroizing::new(html::esc(url));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            writeln!(
                f,
                "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={0}\"><a href=\"{0}\">Open the MCPlexer UI</a>",
                escaped.as_str()
            )
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::process::Command::new("xdg-open")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            let _ = std::fs::remove_file(&path);
            format!("xdg-open: {e}")
        })?;
    Ok(path)
}

/// A listener that accepts only connections from this process's own uid
/// (see [`guard`]); others are closed at once.
struct OwnUidOnly(tokio::net::TcpListener);

impl axum::serve::Listener for OwnUidOnly {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // SAFETY: getuid(2) takes no arguments and cannot fail.
        let me = unsafe { libc::getuid() };
        mcplexer_proto::peer::accept_own(&self.0, me, |owner, addr| {
            let who = owner.map_or("its owner is unknown".to_owned(), |uid| {
                format!("uid {uid} is not this user")
            });
            eprintln!("refused a connection from {addr}: {who}");
        })
        .await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The result of a handler that may fail with the vault's error.
type Page = Result<Response, Response>;

/// Turns a failed vault call into its error page.
fn vault_error(title: &str) -> impl FnOnce(tonic::Status) -> Response + '_ {
    move |status| {
        html::error_page(
            html::http_status(&status),
            title,
            &html::Notice::vault(&status),
        )
    }
}

/// The page `body` under `notice`, with `status`; or, when the body could
/// not be made, the error page that says why.
fn page_with(
    status: axum::http::StatusCode,
    title: &str,
    section: html::Section,
    notice: &html::Notice,
    body: Result<String, Response>,
) -> Response {
    match body {
        Ok(body) => (status, html::page(title, section, Some(notice), &body)).into_response(),
        Err(page) => page,
    }
}

/// A 303 to `to` after a change.
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}
