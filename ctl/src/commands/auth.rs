//! `auth ...`: OAuth 2 authorization of oauth2 scopes.
//!
//! `auth authorize` (browser): listens on the provider's loopback redirect
//! URI (a free port unless the URI names one), asks the vault for the
//! authorization URL, opens it (or prints it with `--no-browser`), waits
//! for the provider's redirect, checks its `state`, and hands the code (and
//! `iss`) to the vault, which exchanges it. The PKCE verifier and the client
//! secret never reach this process; the code does, briefly, and is wiped.
//!
//! `auth authorize --device`: the vault runs the device grant and streams
//! its progress; this prints the code and the URL.
//!
//! Output: with `--no-browser` the URL is the first line on stdout (for
//! scripts); progress goes to stderr; the result is printed last (JSON with
//! `--json`).

use std::time::{Duration, Instant};

use mcplexer_proto::v1::{
    AuthStatus, AuthStatusRequest, CompleteAuthorizationRequest, DeviceAuthorizationRequest,
    GetRequest, RevokeRequest, StartAuthorizationRequest, device_event,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use zeroize::{Zeroize, Zeroizing};

use super::Ctx;
use crate::cli::{AuthAuthorize, AuthCommand};
use crate::error::Failure;
use crate::output::{self, Fields, Table};
use crate::time::format_ms;

/// The redirect URI when the provider names none.
const DEFAULT_REDIRECT: &str = "http://127.0.0.1/callback";

/// The longest request line and headers read from the browser.
const MAX_REQUEST: usize = 16 << 10;

/// How often the progress line is repeated while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// `auth authorize | status | revoke`.
pub async fn run(ctx: &mut Ctx, cmd: AuthCommand) -> Result<(), Failure> {
    match cmd {
        AuthCommand::Authorize(args) if args.device => device(ctx, args).await,
        AuthCommand::Authorize(args) => browser(ctx, args).await,
        AuthCommand::Status { scope } => {
            let scopes = mcplexer_proto::auth_client(ctx.channel().await?)
                .status(AuthStatusRequest {
                    auth_scope_id: scope.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .scopes;
            if ctx.json {
                return output::json(&scopes);
            }
            if let (Some(_), [one]) = (&scope, scopes.as_slice()) {
                return Ok(fields(one).print()?);
            }
            Ok(table(&scopes).print()?)
        }
        AuthCommand::Revoke { scope, local } => {
            let status = mcplexer_proto::auth_client(ctx.channel().await?)
                .revoke(RevokeRequest {
                    auth_scope_id: scope.clone(),
                    local_only: local,
                })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&status);
            }
            if status.revoked_at_provider {
                eprintln!(
                    "revoked the tokens of auth_scope {scope} at the provider and deleted them"
                );
            } else if !local && !status.message.is_empty() {
                // No revocation endpoint (or nothing was stored): the
                // vault says what to do.
                eprintln!("{}", status.message);
            } else {
                eprintln!("deleted the tokens of auth_scope {scope}");
            }
            Ok(())
        }
    }
}

/// The authorization-code flow through a browser.
async fn browser(ctx: &mut Ctx, args: AuthAuthorize) -> Result<(), Failure> {
    let channel = ctx.channel().await?;
    let redirect = match args.redirect_uri {
        Some(uri) => uri,
        None => provider_redirect(ctx, &args.scope).await?,
    };
    let (listener, redirect) = listen(&redirect).await?;
    let start = mcplexer_proto::auth_client(channel.clone())
        .start_authorization(StartAuthorizationRequest {
            auth_scope_id: args.scope.clone(),
            redirect_uri: redirect.uri.clone(),
        })
        .await?
        .into_inner();
    let url = start.authorization_url;
    if args.no_browser {
        println!("{url}");
        eprintln!(
            "Open the URL above in a browser to authorize auth_scope {}; waiting for the redirect to {}",
            args.scope, redirect.uri
        );
    } else {
        eprintln!(
            "Opening the browser to authorize auth_scope {} (if it does not open, visit this URL):\n{url}",
            args.scope
        );
        open_browser(&url);
    }
    let timeout = Duration::from_secs(args.timeout.min(u64::from(start.expires_in_sec)));
    let callback = wait_for_callback(&listener, &redirect.path, &start.state, timeout).await?;
    let status = mcplexer_proto::auth_client(channel)
        .complete_authorization(CompleteAuthorizationRequest {
            state: start.state,
            code: callback.code.to_string(),
            iss: callback.iss,
        })
        .await?
        .into_inner();
    done(ctx, &status)
}

/// The device authorization grant, run by the vault.
async fn device(ctx: &mut Ctx, args: AuthAuthorize) -> Result<(), Failure> {
    let mut events = mcplexer_proto::auth_client(ctx.channel().await?)
        .device_authorization(DeviceAuthorizationRequest {
            auth_scope_id: args.scope.clone(),
        })
        .await?
        .into_inner();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while let Some(event) = events.next().await {
        match event?.event {
            Some(device_event::Event::Code(code)) => {
                let complete = if code.verification_uri_complete.is_empty() {
                    String::new()
                } else {
                    format!("\n(or open {})", code.verification_uri_complete)
                };
                // The code and URL on stdout, for scripts; the rest on stderr.
                println!("{} {}", code.user_code, code.verification_uri);
                eprintln!(
                    "To authorize auth_scope {}, open {} and enter the code {}{complete}\nThe code expires in {} s.",
                    args.scope, code.verification_uri, code.user_code, code.expires_in_sec
                );
            }
            Some(device_event::Event::Waiting(waiting)) => {
                if waiting.reason == "slow_down" {
                    eprintln!(
                        "the provider asked to poll more slowly: every {} s",
                        waiting.interval_sec
                    );
                }
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    last_progress = Instant::now();
                    eprintln!(
                        "still waiting for the approval ({} s so far, the code expires in {} s)",
                        started.elapsed().as_secs(),
                        waiting.expires_in_sec
                    );
                }
            }
            Some(device_event::Event::Done(status)) => return done(ctx, &status),
            None => {}
        }
    }
    Err(Failure::Local(anyhow::anyhow!(
        "the vault ended the device authorization without a result"
    )))
}

fn done(ctx: &Ctx, status: &AuthStatus) -> Result<(), Failure> {
    if ctx.json {
        return output::json(status);
    }
    let expiry = if status.expires_at_ms == 0 {
        "the token does not expire".to_owned()
    } else {
        format!("the token expires {}", format_ms(status.expires_at_ms))
    };
    println!(
        "authorized auth_scope {}: {} ({expiry}{})",
        status.auth_scope_id,
        status.status,
        if status.has_refresh_token {
            "; refreshed automatically"
        } else {
            ""
        }
    );
    Ok(())
}

/// The provider's redirect URI for `scope` (the default when it has none).
async fn provider_redirect(ctx: &mut Ctx, scope: &str) -> Result<String, Failure> {
    let mut admin = ctx.admin().await?;
    let scope = admin
        .get_scope(GetRequest { id: scope.into() })
        .await?
        .into_inner();
    if scope.oauth_provider_id.is_empty() {
        // The vault says why (not an oauth2 scope) when the flow starts.
        return Ok(DEFAULT_REDIRECT.into());
    }
    let provider = admin
        .get_provider(GetRequest {
            id: scope.oauth_provider_id,
        })
        .await?
        .into_inner();
    Ok(if provider.redirect_uri.is_empty() {
        DEFAULT_REDIRECT.into()
    } else {
        provider.redirect_uri
    })
}

/// Where the listener is.
struct Redirect {
    /// The URI with the port bound.
    uri: String,
    /// Its path, which the redirect must hit.
    path: String,
}

/// Binds the loopback redirect URI: its port, or a free one when it names
/// none.
async fn listen(uri: &str) -> Result<(TcpListener, Redirect), Failure> {
    let bad = |why: &str| Failure::usage(format!("redirect URI {uri:?} {why}"));
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| bad("must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port: u16 = port.parse().map_err(|_| bad("has an invalid port"))?;
            (host, port)
        }
        _ => (authority, 0),
    };
    let bind_host = match host {
        "127.0.0.1" | "localhost" => "127.0.0.1",
        "[::1]" => "::1",
        _ => {
            return Err(bad(
                "must be on a loopback host (127.0.0.1, [::1], localhost)",
            ));
        }
    };
    if path.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    let listener = TcpListener::bind((bind_host, port)).await.map_err(|e| {
        Failure::Local(anyhow::anyhow!(
            "cannot listen on {host}:{port} for the redirect: {e}"
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::Local(anyhow::anyhow!("cannot read the bound port: {e}")))?
        .port();
    Ok((
        listener,
        Redirect {
            uri: format!("http://{host}:{bound}{path}"),
            path: path.to_owned(),
        },
    ))
}

/// What the provider's redirect carried.
struct Callback {
    code: Zeroizing<String>,
    iss: String,
}

/// Serves the redirect: the first request to `path` decides. A request
/// to another path (a favicon) gets 404 and the wait goes on.
async fn wait_for_callback(
    listener: &TcpListener,
    path: &str,
    state: &str,
    timeout: Duration,
) -> Result<Callback, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tokio::time::sleep_until(deadline) => {
                return Err(Failure::Local(anyhow::anyhow!(
                    "no redirect from the provider within {} s; run the command again (--timeout SECS waits longer)",
                    timeout.as_secs()
                )));
            }
            _ = progress.tick() => {
                eprintln!(
                    "still waiting for the browser ({} s so far, {} s left)",
                    started.elapsed().as_secs(),
                    deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs()
                );
                continue;
            }
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let Some(target) = read_target(&mut stream).await else {
            respond(&mut stream, 400, "Bad request.").await;
            continue;
        };
        let (request_path, query) = target.split_once('?').unwrap_or((&target, ""));
        if request_path != path {
            respond(&mut stream, 404, "Not found.").await;
            continue;
        }
        let params = parse_query(query);
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if get("state") != Some(state) {
            respond(
                &mut stream,
                400,
                "The state does not match this authorization. Nothing was done.",
            )
            .await;
            return Err(Failure::Local(anyhow::anyhow!(
                "the redirect's state does not match the one this authorization sent: refused (a forged or stale redirect); nothing was stored"
            )));
        }
        if let Some(error) = get("error") {
            let description = get("error_description").unwrap_or_default();
            respond(
                &mut stream,
                200,
                "The provider refused the authorization. You can close this window.",
            )
            .await;
            return Err(Failure::Local(anyhow::anyhow!(
                "the provider refused the authorization: {error}{}",
                if description.is_empty() {
                    String::new()
                } else {
                    format!(" ({description})")
                }
            )));
        }
        let Some(code) = get("code").filter(|c| !c.is_empty()) else {
            respond(&mut stream, 400, "The redirect has no code.").await;
            return Err(Failure::Local(anyhow::anyhow!(
                "the provider's redirect has neither a code nor an error"
            )));
        };
        respond(
            &mut stream,
            200,
            "Authorization received. You can close this window and return to the terminal.",
        )
        .await;
        return Ok(Callback {
            code: Zeroizing::new(code.to_owned()),
            iss: get("iss").unwrap_or_default().to_owned(),
        });
    }
}

/// The request target of a GET, read within 10 s and 16 KiB.
/// (It carries the code: kept in a buffer that is wiped.)
async fn read_target(stream: &mut TcpStream) -> Option<Zeroizing<String>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(1024));
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() + n > MAX_REQUEST {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(Zeroizing::new(target.to_owned())),
        _ => None,
    }
}

async fn respond(stream: &mut TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let body = format!("<!doctype html><meta charset=utf-8><title>mcplexer</title><p>{text}</p>\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Decodes a query string (`+` is a space, `%XX` a byte).
fn parse_query(query: &str) -> Vec<(String, Zeroizing<String>)> {
    fn decode(s: &str) -> Zeroizing<String> {
        let hex = |b: u8| char::from(b).to_digit(16);
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        let text = Zeroizing::new(String::from_utf8_lossy(&out).into_owned());
        out.zeroize();
        text
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k).to_string(), decode(v))
        })
        .collect()
}

/// Opens `url` with the desktop's opener, if there is one; the URL was
/// printed already, so a failure only means the user opens it.
fn open_browser(url: &str) {
    let opened = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if opened.is_err() {
        eprintln!("(no browser could be opened: visit the URL above)");
    }
}

fn table(scopes: &[AuthStatus]) -> Table {
    let mut t = Table::new(&[
        "SCOPE",
        "PROVIDER",
        "STATUS",
        "EXPIRES",
        "REFRESHED",
        "SCOPES",
    ]);
    for s in scopes {
        t.row(vec![
            s.auth_scope_id.clone(),
            s.oauth_provider_id.clone(),
            s.status.clone(),
            time_or_dash(s.expires_at_ms),
            time_or_dash(s.refreshed_at_ms),
            output::list(&s.granted_scopes),
        ]);
    }
    t
}

fn fields(s: &AuthStatus) -> Fields {
    let mut f = Fields::new();
    f.add("auth_scope", &s.auth_scope_id)
        .add("provider", &s.oauth_provider_id)
        .add("status", &s.status)
        .add("expires", time_or_dash(s.expires_at_ms))
        .add("granted_scopes", output::list(&s.granted_scopes))
        .add("authorized", time_or_dash(s.authorized_at_ms))
        .add("last_refresh", time_or_dash(s.refreshed_at_ms))
        .add("refresh_token", output::yes_no(s.has_refresh_token));
    if !s.message.is_empty() {
        f.add("message", &s.message);
    }
    f
}

fn time_or_dash(ms: i64) -> String {
    if ms == 0 { "-".into() } else { format_ms(ms) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("code=a%2Fb+c&state=xyz&iss=http%3A%2F%2F127.0.0.1%3A9&empty=&bad=%zz");
        let get = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("code"), Some("a/b c"));
        assert_eq!(get("state"), Some("xyz"));
        assert_eq!(get("iss"), Some("http://127.0.0.1:9"));
        assert_eq!(get("empty"), Some(""));
        assert_eq!(get("bad"), Some("%zz"));
    }

    #[tokio::test]
    async fn the_listener_binds_the_redirect_uri() {
        let (_l, r) = listen("http://127.0.0.1/callback").await.unwrap();
        assert!(r.uri.starts_with("http://127.0.0.1:") && r.uri.ends_with("/callback"));
        assert_eq!(r.path, "/callback");
        assert!(listen("http://example.com/callback").await.is_err());
        assert!(listen("https://127.0.0.1/callback").await.is_err());
    }
}
