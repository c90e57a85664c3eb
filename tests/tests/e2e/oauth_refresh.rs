//! OAuth token refresh end to end, against the real authorization server
//! (oidc-provider, `tests/peers/oauth_server.mjs`, which rotates refresh
//! tokens and revokes a grant whose rotated refresh token is replayed).
//!
//! Proves:
//! - single flight: 200 credential requests, on 200 connections at once,
//!   after the access token expired cause exactly one refresh at the
//!   provider (its `/stats` grant count), and all 200 get the same new
//!   token, which the provider accepts;
//! - kill -9 at every step of a refresh leaves the scope usable or clearly
//!   `reauthorization_required`, never silently broken: killed (a) before
//!   the refresh request reached the provider, the restarted vault
//!   refreshes with the refresh token it still holds; (b) after the
//!   provider answered but before the vault got the answer, the rotated
//!   refresh token is lost, the provider's reuse detection revokes the
//!   grant, and every caller gets REAUTHORIZATION_REQUIRED with the command
//!   that fixes it (which `auth status` repeats, across a restart, and
//!   which works); (c) after the vault committed and released the new
//!   token, the restarted vault has exactly that state, and its committed
//!   refresh token refreshes;
//! - through `mcplexer-proxy` (the official Python MCP client driving it):
//!   a stdio child (server-everything) gets the token in `ACCESS_TOKEN`
//!   (the scope's default `token_env_var`), and after a refresh the next
//!   call of the same client session runs in a child restarted with the new
//!   token; an HTTP server (the SDK's, `tests/peers/header_server.py`) gets
//!   `Authorization: Bearer <current token>` on every call, before and
//!   after a refresh. Each new token is live at the provider.
//!
//! The kill points are made exact by an intercepting HTTP proxy between the
//! vault and the provider's token endpoint ([`Interceptor`]), which holds a
//! refresh request, or the provider's answer to it, until the test says
//! what to do; the proxy sessions meet the test at FIFOs. The only timed
//! waits are for access tokens to expire (the provider's lifetime is whole
//! seconds), which is what triggers a refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcplexer_tests::oauth::{OAuthServer, PUBLIC_CLIENT_ID, http_request};
use mcplexer_tests::oauth_vault::authorize;
use mcplexer_tests::peers::{HeaderServer, server_everything};
use mcplexer_tests::{Vault, bin};
use serde_json::{Value, json};

use crate::proxy::{env_of, error_message, through_proxy_in};
use crate::proxy_lifecycle::{fifo, rendezvous, rendezvous_step};
use crate::proxy_protocol::RawClient;

const PROVIDER: &str = "idp";
const SCOPE: &str = "idp-token";
/// The stdio downstream (server-everything) the credential requests name.
const STDIO_SERVER: &str = "everything";
/// The access-token lifetime of the vault-only tests: the vault refreshes
/// 0.3 s before expiry (a tenth of the lifetime).
const SHORT_TTL: u64 = 3;
/// The lifetime in the proxy tests: a refresh is due 5.4 s after issue,
/// enough for a client session, a child start and a probe to happen well
/// inside one token's life.
const PROXY_TTL: u64 = 6;
/// How long the test waits for the interceptor to hold something.
const HOLD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------
// Set-up and probes
// ---------------------------------------------------------------------

/// A provider on `server` whose token endpoint is `token_url` (the
/// server's, or an interceptor in front of it), the oauth2 scope on it,
/// and `rest` (servers and routes) as one apply document.
fn apply(vault: &Vault, server: &OAuthServer, token_url: &str, rest: &str) {
    let issuer = &server.issuer;
    let doc = format!(
        r#"
oauth_providers:
  - id: {PROVIDER}
    name: Test IdP
    auth_url: "{issuer}/auth"
    token_url: "{token_url}"
    revocation_url: "{issuer}/token/revocation"
    issuer: "{issuer}"
    client_id: {PUBLIC_CLIENT_ID}
    scopes: [openid, offline_access, read]
auth_scopes:
  - {{id: {SCOPE}, name: IdP token, type: oauth2, oauth_provider_id: {PROVIDER}}}
{rest}
"#
    );
    let path = vault.write_file("oauth-refresh.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
}

/// server-everything as a stdio downstream (namespace `ev`), with a route
/// using the scope when `routed`.
fn everything(routed: bool) -> String {
    let (program, args) = server_everything();
    let route = if routed {
        format!(
            "route_rules:\n  - {{name: ev, tool_match: [\"ev__*\"], downstream_server_id: {STDIO_SERVER}, auth_scope_id: {SCOPE}}}\n"
        )
    } else {
        String::new()
    };
    format!(
        "downstream_servers:\n  - {{id: {STDIO_SERVER}, name: Everything, transport: stdio, command: \"{}\", args: {}, tool_namespace: ev}}\n{route}",
        program.display(),
        serde_json::to_string(&args).unwrap()
    )
}

/// A vault with the scope authorized at `server` through `token_url`.
fn authorized_vault(server: &OAuthServer, token_url: &str, rest: &str) -> Vault {
    let vault = Vault::start();
    apply(&vault, server, token_url, rest);
    authorize(&vault, SCOPE);
    vault
}

/// Runs `vault-probe credential SCOPE <downstream> <transport>` (with
/// `--concurrent n`) on `socket`: its exit code and JSON.
fn probe(
    socket: &Path,
    downstream: &str,
    transport: &str,
    concurrent: Option<usize>,
) -> (i32, Value) {
    let mut cmd = Command::new(bin("vault-probe"));
    cmd.arg("--socket")
        .arg(socket)
        .args(["credential", SCOPE, downstream, transport]);
    if let Some(n) = concurrent {
        cmd.args(["--concurrent", &n.to_string()]);
    }
    let out = cmd.output().expect("run vault-probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "vault-probe printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// A released access token.
#[derive(Debug, Clone, PartialEq)]
struct Released {
    token: String,
    version: u64,
    expires_at_ms: i64,
}

/// The token of a credential answer: `ACCESS_TOKEN` (stdio) or the bearer
/// of `Authorization` (http). Panics on a refusal or another shape.
#[track_caller]
fn released(answer: &Value) -> Released {
    let values = answer["values"]
        .as_array()
        .unwrap_or_else(|| panic!("not a credential: {answer:#}"));
    assert_eq!(values.len(), 1, "{answer:#}");
    let value = values[0]["value"].as_str().unwrap();
    let token = match values[0]["name"].as_str().unwrap() {
        "ACCESS_TOKEN" => {
            assert_eq!(answer["kind"], "env", "{answer:#}");
            value.to_owned()
        }
        "Authorization" => {
            assert_eq!(answer["kind"], "header", "{answer:#}");
            value
                .strip_prefix("Bearer ")
                .unwrap_or_else(|| panic!("not a bearer: {answer:#}"))
                .to_owned()
        }
        other => panic!("unexpected value {other}: {answer:#}"),
    };
    assert!(!token.is_empty(), "{answer:#}");
    assert_eq!(
        answer["scrub"],
        json!([token]),
        "the token must be scrubbed: {answer:#}"
    );
    Released {
        token,
        version: answer["version"].as_u64().unwrap(),
        expires_at_ms: answer["expires_at_ms"].as_i64().unwrap(),
    }
}

/// One credential request for the stdio downstream, which must succeed.
#[track_caller]
fn release(vault: &Vault) -> Released {
    let (code, answer) = probe(&vault.socket, STDIO_SERVER, "stdio", None);
    assert_eq!(code, 0, "{answer:#}");
    released(&answer)
}

/// `auth status SCOPE --json`.
fn auth_status(vault: &Vault) -> Value {
    let all = vault.ctl(["--json", "auth", "status", SCOPE]).json();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all:#}");
    all[0].clone()
}

/// The provider's successful token grants by grant type (`GET /stats`).
fn grants(server: &OAuthServer) -> Value {
    let response = http_request("GET", &server.url("/stats"), &[], None);
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["grants"].clone()
}

/// How many refresh-token grants the provider answered.
fn refreshes(server: &OAuthServer) -> u64 {
    grants(server)["refresh_token"].as_u64().unwrap_or(0)
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Waits until the wall clock is past `at_ms` (ms since the epoch): for an
/// access token to expire. This is the one timed wait of these tests, and
/// it is not synchronisation: the expiry is what makes a refresh due.
fn wait_for_expiry(at_ms: i64) {
    loop {
        let left = at_ms + 1 - now_ms();
        if left <= 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(left.unsigned_abs()));
    }
}

/// Asserts the answer of a request the vault died under: a failure, no
/// token.
#[track_caller]
fn assert_died_under(code: i32, answer: &Value) {
    assert_ne!(code, 0, "{answer:#}");
    assert!(answer.get("values").is_none(), "{answer:#}");
}

// ---------------------------------------------------------------------
// The interceptor
// ---------------------------------------------------------------------

/// What the interceptor does with the next refresh request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Forward it and pass the answer back.
    Nothing,
    /// Hold it before forwarding it.
    Request,
    /// Forward it, then hold the provider's answer.
    Answer,
}

/// What the interceptor is holding.
#[derive(Debug)]
enum Held {
    /// A refresh request, not yet forwarded.
    Request,
    /// The provider's answer to a refresh request, not yet passed back.
    Answer { status: u16, body: String },
}

/// What to do with what is held.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// Carry on (forward the request, pass the answer back).
    Pass,
    /// Close the vault's connection without going on.
    Drop,
}

/// A one-thread HTTP proxy (std `TcpListener` on 127.0.0.1:0) in front of
/// the provider's token endpoint. Each connection carries one request,
/// forwarded on a fresh connection, and gets the answer with `Connection:
/// close`. A refresh request (`grant_type=refresh_token`) can be held
/// before or after forwarding ([`Interceptor::hold`]): the interceptor then
/// reports [`Held`] and waits for a [`Verdict`]. Other requests (the code
/// exchange of an authorization) pass.
struct Interceptor {
    /// The token endpoint to configure: `http://127.0.0.1:<port>/token`.
    token_url: String,
    port: u16,
    hold: Arc<Mutex<Hold>>,
    held: mpsc::Receiver<Held>,
    verdicts: mpsc::Sender<Verdict>,
    stop: Arc<AtomicBool>,
}

impl Interceptor {
    fn start(server: &OAuthServer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(Mutex::new(Hold::Nothing));
        let stop = Arc::new(AtomicBool::new(false));
        let (held_tx, held) = mpsc::channel();
        let (verdicts, verdict_rx) = mpsc::channel();
        let upstream = server.issuer.clone();
        let (thread_hold, thread_stop) = (hold.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                serve(stream, &upstream, &thread_hold, &held_tx, &verdict_rx);
            }
        });
        Self {
            token_url: format!("http://127.0.0.1:{port}/token"),
            port,
            hold,
            held,
            verdicts,
            stop,
        }
    }

    /// Holds the next refresh request (or its answer).
    fn hold(&self, what: Hold) {
        *self.hold.lock().unwrap() = what;
    }

    /// Waits until something is held.
    fn held(&self) -> Held {
        self.held
            .recv_timeout(HOLD_TIMEOUT)
            .expect("the interceptor held nothing: no refresh request came")
    }

    /// Decides what happens to what is held.
    fn verdict(&self, verdict: Verdict) {
        self.verdicts.send(verdict).unwrap();
    }
}

impl Drop for Interceptor {
    fn drop(&mut self) {
        // Wakes the accept loop, which sees the flag and ends (a thread
        // waiting for a verdict ends when the sender is dropped next).
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One connection: a request read, perhaps held, forwarded, its answer
/// perhaps held, then passed back.
fn serve(
    mut stream: TcpStream,
    upstream: &str,
    hold: &Mutex<Hold>,
    held: &mpsc::Sender<Held>,
    verdicts: &mpsc::Receiver<Verdict>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let Some(Request {
        method,
        path,
        headers,
        body,
    }) = read_request(&mut stream)
    else {
        return;
    };
    let refresh = String::from_utf8_lossy(&body).contains("grant_type=refresh_token");
    let mode = if refresh {
        std::mem::replace(&mut *hold.lock().unwrap(), Hold::Nothing)
    } else {
        Hold::Nothing
    };
    // A verdict never comes when the test is gone: drop the connection.
    let go_on =
        |what: Held| held.send(what).is_ok() && matches!(verdicts.recv(), Ok(Verdict::Pass));
    if mode == Hold::Request && !go_on(Held::Request) {
        return;
    }
    let forwarded: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(name, _)| {
            ![
                "host",
                "connection",
                "content-length",
                "transfer-encoding",
                "accept-encoding",
            ]
            .contains(&name.to_ascii_lowercase().as_str())
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let answer = http_request(
        &method,
        &format!("{upstream}{path}"),
        &forwarded,
        Some(&body),
    );
    if mode == Hold::Answer
        && !go_on(Held::Answer {
            status: answer.status,
            body: answer.body.clone(),
        })
    {
        return;
    }
    let reply = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        answer.status,
        if answer.status == 200 { "OK" } else { "Answer" },
        answer.header("content-type").unwrap_or("application/json"),
        answer.body.len(),
        answer.body
    );
    let _ = stream.write_all(reply.as_bytes());
}

/// An HTTP request as read by the interceptor.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 request with a `Content-Length` body (as reqwest
/// sends a form). `None` if the peer closed or sent something else.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------
// Single flight
// ---------------------------------------------------------------------

#[test]
fn two_hundred_requests_after_expiry_cause_one_refresh_and_get_one_token() {
    let server = OAuthServer::start(SHORT_TTL);
    let vault = authorized_vault(&server, &server.token_endpoint(), &everything(false));
    let first = release(&vault);
    assert!(server.is_live(&first.token));
    // Normally 0; 1 only if the first release was already due.
    let before = refreshes(&server);

    wait_for_expiry(first.expires_at_ms);
    assert!(
        !server.is_live(&first.token),
        "the provider's token outlived the vault's expiry"
    );
    let (code, answers) = probe(&vault.socket, STDIO_SERVER, "stdio", Some(200));
    assert_eq!(code, 0, "{answers:#}");
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 200);
    let new = released(&answers[0]);
    for answer in answers {
        assert_eq!(released(answer), new, "the answers differ: {answer:#}");
    }
    assert_ne!(new.token, first.token);
    assert!(new.version > first.version, "{new:?} after {first:?}");
    assert!(new.expires_at_ms > first.expires_at_ms);
    assert_eq!(
        refreshes(&server),
        before + 1,
        "200 concurrent requests must cause exactly one refresh: {}",
        grants(&server)
    );
    assert!(
        server.is_live(&new.token),
        "the new token is not live at the provider"
    );

    let status = auth_status(&vault);
    assert_eq!(status["status"], "valid", "{status:#}");
    assert_eq!(status["expires_at_ms"], new.expires_at_ms, "{status:#}");
    assert!(
        status["refreshed_at_ms"].as_i64().unwrap() > 0,
        "{status:#}"
    );
    // The vault audits its refreshes (kind oauth), one per refresh.
    let records = vault.ctl(["--json", "audit", "--kind", "oauth"]).json();
    let refreshed = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "refresh" && r["status"] == "success")
        .count() as u64;
    assert_eq!(refreshed, refreshes(&server), "{records:#}");
}

// ---------------------------------------------------------------------
// kill -9 during a refresh
// ---------------------------------------------------------------------

/// An authorized scope behind an interceptor, with its first access token
/// expired (never released, so never refreshed): the next credential
/// request refreshes. Returns the token's expiry.
fn expired_behind(server: &OAuthServer, interceptor: &Interceptor) -> (Vault, i64) {
    let vault = authorized_vault(server, &interceptor.token_url, &everything(false));
    let status = auth_status(&vault);
    assert_eq!(status["status"], "valid", "{status:#}");
    let expires_at_ms = status["expires_at_ms"].as_i64().unwrap();
    wait_for_expiry(expires_at_ms);
    assert_eq!(grants(server), json!({"authorization_code": 1}));
    (vault, expires_at_ms)
}

/// Starts a credential request in the background (it triggers the refresh).
fn request_in_background(vault: &Vault) -> std::thread::JoinHandle<(i32, Value)> {
    let socket = vault.socket.clone();
    std::thread::spawn(move || probe(&socket, STDIO_SERVER, "stdio", None))
}

#[test]
fn kill9_before_the_refresh_reaches_the_provider_leaves_the_scope_usable() {
    let server = OAuthServer::start(SHORT_TTL);
    let interceptor = Interceptor::start(&server);
    let (mut vault, expired_at) = expired_behind(&server, &interceptor);

    interceptor.hold(Hold::Request);
    let pending = request_in_background(&vault);
    assert!(matches!(interceptor.held(), Held::Request));
    vault.kill9();
    interceptor.verdict(Verdict::Drop);
    let (code, answer) = pending.join().unwrap();
    assert_died_under(code, &answer);
    assert_eq!(refreshes(&server), 0, "the request reached the provider");

    vault.spawn().unwrap();
    // Nothing of the refresh was committed.
    let status = auth_status(&vault);
    assert_eq!(status["status"], "valid", "{status:#}");
    assert_eq!(status["expires_at_ms"], expired_at, "{status:#}");
    assert_eq!(status["refreshed_at_ms"], 0, "{status:#}");
    // The refresh token it still holds was never spent: usable.
    let after = release(&vault);
    assert_eq!(refreshes(&server), 1);
    assert!(after.expires_at_ms > expired_at);
    assert!(
        server.is_live(&after.token),
        "the refreshed token is not live"
    );
    assert_eq!(status_of(&vault), "valid");
}

#[test]
fn kill9_after_the_provider_answered_makes_the_scope_reauthorization_required() {
    let server = OAuthServer::start(SHORT_TTL);
    let interceptor = Interceptor::start(&server);
    let (mut vault, expired_at) = expired_behind(&server, &interceptor);

    interceptor.hold(Hold::Answer);
    let pending = request_in_background(&vault);
    let Held::Answer { status, body } = interceptor.held() else {
        panic!("expected the provider's answer to be held");
    };
    assert_eq!(status, 200, "{body}");
    let lost = access_token_of(&body);
    assert!(
        server.is_live(&lost),
        "the provider's answer is not a live token"
    );
    assert_eq!(refreshes(&server), 1);
    vault.kill9();
    interceptor.verdict(Verdict::Drop);
    let (code, answer) = pending.join().unwrap();
    assert_died_under(code, &answer);

    vault.spawn().unwrap();
    let status = auth_status(&vault);
    assert_eq!(status["expires_at_ms"], expired_at, "{status:#}");
    // The stored refresh token was rotated away: replaying it makes the
    // provider revoke the grant, and every caller is told what to run.
    let (code, answers) = probe(&vault.socket, STDIO_SERVER, "stdio", Some(5));
    assert_eq!(code, 0, "{answers:#}");
    for answer in answers.as_array().unwrap() {
        assert_reauthorization_required(answer);
    }
    assert_eq!(refreshes(&server), 1, "a refresh token was accepted twice");
    assert!(
        !server.is_live(&lost),
        "the grant survived the replay of its rotated refresh token"
    );
    assert_status_says_reauthorize(&vault);

    // It is on disk, not only in memory.
    vault.restart();
    assert_status_says_reauthorize(&vault);
    let (code, answer) = probe(&vault.socket, STDIO_SERVER, "stdio", None);
    assert_eq!(code, 4, "{answer:#}");
    assert_reauthorization_required(&answer);

    // And the fix it names works.
    authorize(&vault, SCOPE);
    let again = release(&vault);
    assert!(server.is_live(&again.token));
    assert_eq!(status_of(&vault), "valid");
}

#[test]
fn kill9_after_the_new_token_was_released_keeps_it() {
    let server = OAuthServer::start(SHORT_TTL);
    let interceptor = Interceptor::start(&server);
    let (mut vault, expired_at) = expired_behind(&server, &interceptor);

    // The refresh passes (seen on its way); once its token is released it
    // was committed.
    interceptor.hold(Hold::Answer);
    let pending = request_in_background(&vault);
    let Held::Answer { status, body } = interceptor.held() else {
        panic!("expected the provider's answer to be held");
    };
    assert_eq!(status, 200, "{body}");
    interceptor.verdict(Verdict::Pass);
    let (code, answer) = pending.join().unwrap();
    assert_eq!(code, 0, "{answer:#}");
    let refreshed = released(&answer);
    assert_eq!(refreshed.token, access_token_of(&body));
    assert_eq!(refreshes(&server), 1);
    assert!(refreshed.expires_at_ms > expired_at);
    vault.kill9();

    vault.spawn().unwrap();
    // The restarted vault has the state it released.
    let status = auth_status(&vault);
    assert_eq!(status["status"], "valid", "{status:#}");
    assert_eq!(
        status["expires_at_ms"], refreshed.expires_at_ms,
        "{status:#}"
    );
    assert!(
        status["refreshed_at_ms"].as_i64().unwrap() > 0,
        "{status:#}"
    );
    // Usable: the released token again, or (if it came due meanwhile) a
    // refresh with the committed refresh token.
    let after = release(&vault);
    assert!(server.is_live(&after.token), "{after:?}");
    assert_eq!(
        after == refreshed,
        refreshes(&server) == 1,
        "neither the released token nor a refresh: {after:?} vs {refreshed:?}"
    );
    // The committed refresh token is the rotated one: it refreshes.
    let count = refreshes(&server);
    wait_for_expiry(after.expires_at_ms);
    let last = release(&vault);
    assert_ne!(last.token, after.token);
    assert_eq!(refreshes(&server), count + 1);
    assert!(server.is_live(&last.token));
    assert_eq!(status_of(&vault), "valid");
}

/// The status word of the scope.
fn status_of(vault: &Vault) -> String {
    auth_status(vault)["status"].as_str().unwrap().to_owned()
}

/// The access token of a token endpoint's answer.
#[track_caller]
fn access_token_of(body: &str) -> String {
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token: {body}"))
        .to_owned()
}

#[track_caller]
fn assert_reauthorization_required(answer: &Value) {
    assert_eq!(answer["code"], "FailedPrecondition", "{answer:#}");
    assert_eq!(
        answer["vault_code"], "REAUTHORIZATION_REQUIRED",
        "{answer:#}"
    );
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("auth_scope {SCOPE} must be authorized again"))
            && message.contains("invalid_grant"),
        "{answer:#}"
    );
    assert_eq!(
        answer["fix"],
        format!("mcplexerctl auth authorize {SCOPE}"),
        "{answer:#}"
    );
    assert!(answer.get("values").is_none(), "{answer:#}");
}

#[track_caller]
fn assert_status_says_reauthorize(vault: &Vault) {
    let status = auth_status(vault);
    assert_eq!(status["status"], "reauthorization_required", "{status:#}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("; run mcplexerctl auth authorize {SCOPE}")),
        "{status:#}"
    );
    let text = vault.ctl(["auth", "status"]).ok().to_owned();
    assert!(
        text.contains(SCOPE) && text.contains("reauthorization_required"),
        "{text}"
    );
}

// ---------------------------------------------------------------------
// Through the proxy
// ---------------------------------------------------------------------

/// Runs `script` through `mcplexer-proxy stdio` on a thread (the test
/// meets it at the rendezvous steps).
fn session(vault: &Vault, script: Value) -> std::thread::JoinHandle<Vec<Value>> {
    let socket = vault.socket.clone();
    std::thread::spawn(move || through_proxy_in(&socket, None, Path::new("/tmp"), script))
}

#[test]
fn stdio_child_gets_the_token_and_is_restarted_with_the_refreshed_one() {
    let server = OAuthServer::start(PROXY_TTL);
    let vault = Vault::start();
    apply(&vault, &server, &server.token_endpoint(), &everything(true));
    let (ready, resume) = (
        fifo(vault.root.path(), "ready"),
        fifo(vault.root.path(), "resume"),
    );
    let get_env = json!({"op": "call", "name": "ev__get-env", "arguments": {}});
    let running = session(
        &vault,
        json!([
            get_env,
            rendezvous_step(&ready, &resume),
            get_env,
            get_env,
            rendezvous_step(&ready, &resume),
            get_env,
            rendezvous_step(&ready, &resume),
        ]),
    );

    // The user authorizes while the client is connected (a call before that
    // fails with the command to run).
    let mut first = None;
    rendezvous(&ready, &resume, || {
        authorize(&vault, SCOPE);
        first = Some(release(&vault));
    });
    let first = first.unwrap();
    assert!(server.is_live(&first.token));
    rendezvous(&ready, &resume, || wait_for_expiry(first.expires_at_ms));
    let mut current = None;
    rendezvous(&ready, &resume, || {
        let now = release(&vault);
        assert!(
            server.is_live(&now.token),
            "the refreshed token is not live"
        );
        current = Some(now);
    });
    let current = current.unwrap();
    let results = running.join().expect("client session");

    let token_in = |i: usize| -> String {
        env_of(&results[i])["ACCESS_TOKEN"]
            .as_str()
            .unwrap_or_else(|| panic!("no ACCESS_TOKEN: {:#}", results[i]))
            .to_owned()
    };
    let before = error_message(&results[0]);
    assert!(
        before.contains("has no OAuth token yet")
            && before.contains(&format!("(to fix: mcplexerctl auth authorize {SCOPE})")),
        "{before}"
    );
    assert_eq!(token_in(2), first.token);
    assert_eq!(token_in(3), first.token);
    // An environment does not change under a running process: a new value
    // is a new child.
    assert_eq!(
        token_in(5),
        current.token,
        "the call after the refresh did not run with the new token"
    );
    assert_ne!(current.token, first.token);
    assert_eq!(refreshes(&server), 1, "{}", grants(&server));
}

#[test]
fn http_server_gets_the_current_bearer_on_every_call() {
    let server = OAuthServer::start(PROXY_TTL);
    let headers = HeaderServer::start(false);
    let vault = Vault::start();
    let rest = format!(
        r#"downstream_servers:
  - {{id: hdr, name: Headers, transport: http, url: "{}", tool_namespace: hdr}}
route_rules:
  - {{name: hdr, tool_match: ["hdr__*"], downstream_server_id: hdr, auth_scope_id: {SCOPE}}}
"#,
        headers.url
    );
    apply(&vault, &server, &server.token_endpoint(), &rest);
    let (ready, resume) = (
        fifo(vault.root.path(), "ready"),
        fifo(vault.root.path(), "resume"),
    );
    let show =
        json!({"op": "call", "name": "hdr__show_header", "arguments": {"name": "authorization"}});
    let running = session(
        &vault,
        json!([
            rendezvous_step(&ready, &resume),
            show,
            show,
            rendezvous_step(&ready, &resume),
            show,
            show,
            rendezvous_step(&ready, &resume),
        ]),
    );

    let http_release = || {
        let (code, answer) = probe(&vault.socket, "hdr", "http", None);
        assert_eq!(code, 0, "{answer:#}");
        released(&answer)
    };
    let mut first = None;
    rendezvous(&ready, &resume, || {
        authorize(&vault, SCOPE);
        first = Some(http_release());
    });
    let first = first.unwrap();
    assert!(server.is_live(&first.token));
    rendezvous(&ready, &resume, || wait_for_expiry(first.expires_at_ms));
    let mut current = None;
    rendezvous(&ready, &resume, || {
        let now = http_release();
        assert!(
            server.is_live(&now.token),
            "the refreshed token is not live"
        );
        current = Some(now);
    });
    let current = current.unwrap();
    let results = running.join().expect("client session");

    let header_in = |i: usize| -> String {
        results[i]["text"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no text: {:#}", results[i]))
            .to_owned()
    };
    let bearer = |token: &str| format!("Bearer {token}");
    assert_eq!(header_in(1), bearer(&first.token));
    assert_eq!(header_in(2), bearer(&first.token));
    assert_eq!(
        header_in(4),
        bearer(&current.token),
        "the call after the refresh did not carry the new token"
    );
    assert_eq!(header_in(5), bearer(&current.token));
    assert_ne!(current.token, first.token);
    assert_eq!(refreshes(&server), 1, "{}", grants(&server));
}

/// The tools a raw client lists (names).
fn listed(client: &mut RawClient, id: u64) -> Vec<String> {
    client.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}));
    let answer = client.until(|m| m["id"] == id);
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer:#}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn authorizing_or_revoking_a_scope_tells_a_connected_client_its_tools_changed() {
    let server = OAuthServer::start(3600);
    let vault = Vault::start();
    apply(&vault, &server, &server.token_endpoint(), &everything(true));
    let mut client = RawClient::start(&vault);
    // Unauthorized: the server's tools cannot be listed, so none show.
    assert!(listed(&mut client, 1).is_empty());

    let changed = |m: &Value| m["method"] == "notifications/tools/list_changed";
    let seen = |client: &RawClient| client.seen.iter().filter(|m| changed(m)).count();
    let before = seen(&client);
    authorize(&vault, SCOPE);
    client.until(changed);
    assert!(seen(&client) > before);
    assert!(
        listed(&mut client, 2).iter().any(|t| t == "ev__get-env"),
        "the authorized scope's tools are not listed"
    );

    let before = seen(&client);
    vault.ctl(["auth", "revoke", SCOPE]).ok();
    client.until(changed);
    assert!(seen(&client) > before);
    let _ = client.finish();
}
