//! The vault's OAuth 2 authorization flows (DESIGN §6) against the real
//! authorization server (`oauth_server.mjs`, oidc-provider 9.13.3), driven
//! the way a user does: `mcplexerctl auth authorize SCOPE --no-browser`, the
//! headless browser at the provider, the loopback redirect delivered to the
//! CLI; `--device` approved by the browser; `auth status`; `auth revoke`.
//! The released token is taken from Vault/GetCredential (`vault-probe`).
//!
//! Proves:
//! * the PKCE (S256) code flow for the public client, the confidential
//!   client with HTTP Basic and the one with its secret in the body: the
//!   scope is `valid` with a refresh token and the scopes the token carries
//!   at the provider, and the released access token is live there (and is
//!   the client's), as `ACCESS_TOKEN` (or
//!   the scope's `token_env_var`) for stdio and `Authorization: Bearer` for
//!   http;
//! * a redirect whose `state` was changed is refused by the CLI and a
//!   made-up state by the vault (Auth/CompleteAuthorization), storing
//!   nothing;
//! * a used code delivered with a fresh state is refused by the provider
//!   (`invalid_grant`: the new flow's PKCE verifier is not the code's), which
//!   the CLI says, and the earlier tokens stay the scope's;
//! * an `iss` that is not the provider's issuer (RFC 9207) is refused and
//!   nothing is stored;
//! * the provider's `error=access_denied` (browser and device flows) reaches
//!   the CLI as a clear error;
//! * the device flow (RFC 8628) prints `USER_CODE VERIFICATION_URI` first and
//!   ends `valid` once the user approves;
//! * `auth revoke` revokes at the provider (the token dies there) and
//!   deletes the tokens (`unauthorized`, UNAUTHORIZED on release); `--local`
//!   deletes them here only and says so;
//! * a grant revoked at the provider turns into `reauthorization_required`
//!   at the next refresh, with an error naming the scope and the command to
//!   run, and authorizing again heals it;
//! * another uid can neither authorize, revoke nor see a scope it does not
//!   own (denied, or NOT_FOUND exactly as for a missing scope), cannot
//!   complete a flow another uid started, and every refusal by the Auth
//!   service is audited as denied; an owner that is not an admin may
//!   authorize its own scope;
//! * a scope deleted while its device flow waits for the user gets no
//!   token when the user approves (the CLI says why), and a scope created
//!   under its id, by another owner on the same provider, is
//!   `unauthorized`, also after a restart; token rows of no scope are
//!   deleted at start, and a new scope never inherits its id's old rows;
//! * a provider's device-code lifetime past any clock is bounded (1800 s)
//!   and the flow completes;
//! * no byte of an access token, an authorization code or a client secret
//!   (raw, any 12-byte run of a token or code, hex, base64 at every
//!   alignment) is in any file of the state directory (while the daemon
//!   runs and after it stopped), in the daemon's log or in the audit log.
//!
//! Waits: the only sleeps wait for an access token's expiry time to pass
//! (tokens of a few seconds); everything else waits on a process or an
//! answer.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcplexer_tests::oauth::{
    CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET, ClientAuth, Interactions, OAuthOptions,
    OAuthServer, POST_CLIENT_ID, POST_CLIENT_SECRET, PUBLIC_CLIENT_ID, browser_approve_device,
    browser_authorize, form_encode, query_param, query_params, try_browser_approve_device,
};
use mcplexer_tests::oauth_vault::{Authorizing, Client, authorize, configure};
use mcplexer_tests::{Run, Vault, VaultOptions, base64, contains_bytes, files_under};
use serde_json::Value;

use crate::probe::{Probe, audit, one, probe};

/// The stdio server every release names (never started: the probe only
/// asks the vault).
const STDIO_SERVER: &str = "tool-stdio";
/// The http server every release names (never contacted).
const HTTP_SERVER: &str = "tool-http";
/// What `configure()` asks for.
const REQUESTED_SCOPES: [&str; 3] = ["offline_access", "openid", "read"];
/// What every grant must carry at least. (oidc-provider leaves
/// `offline_access` out of the code flow's token `scope`, and keeps it in the
/// device flow's: the vault reports what the provider said.)
const GRANTED_AT_LEAST: [&str; 2] = ["openid", "read"];

// ---------------------------------------------------------------- helpers

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Sleeps until the wall clock is past `at_ms` (plus a margin). Used only
/// to let an access token's expiry time pass, never to wait for a process.
fn wait_past(at_ms: i64) {
    let left = at_ms + 200 - now_ms();
    if left > 0 {
        std::thread::sleep(Duration::from_millis(left as u64));
    }
}

/// A vault with one stdio and one http downstream server.
fn vault_with_servers(options: VaultOptions) -> Vault {
    let vault = Vault::start_with(options);
    add_servers(&vault);
    vault
}

fn add_servers(vault: &Vault) {
    vault.create_stdio_server(STDIO_SERVER, "Tool over stdio");
    vault
        .ctl([
            "server",
            "create",
            "--id",
            HTTP_SERVER,
            "--name",
            "Tool over http",
            "--transport",
            "http",
            "--url",
            "http://127.0.0.1:9/mcp",
        ])
        .ok();
}

/// An oauth2 scope `id` on `provider`, with `extra` options.
fn create_scope(vault: &Vault, id: &str, provider: &str, extra: &[&str]) {
    let mut args = vec![
        "scope",
        "create",
        "--id",
        id,
        "--name",
        id,
        "--type",
        "oauth2",
        "--provider",
        provider,
    ];
    args.extend_from_slice(extra);
    vault.ctl(args).ok();
}

/// A provider for `server`'s public client whose issuer is `issuer` (the
/// endpoints are given, so the vault reads no metadata).
fn provider_with_issuer(vault: &Vault, server: &OAuthServer, id: &str, issuer: &str) {
    vault
        .ctl([
            "provider",
            "create",
            "--id",
            id,
            "--name",
            id,
            "--auth-url",
            &server.authorization_endpoint(),
            "--token-url",
            &server.token_endpoint(),
            "--revocation-url",
            &server.revocation_endpoint(),
            "--issuer",
            issuer,
            "--client-id",
            PUBLIC_CLIENT_ID,
            "--scope",
            "openid",
            "--scope",
            "offline_access",
            "--scope",
            "read",
        ])
        .ok();
}

/// `auth status SCOPE --json`, the one status in it.
fn status(vault: &Vault, scope: &str) -> Value {
    let all = vault.ctl(["--json", "auth", "status", scope]).json();
    let list = all.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1, "{all:#}");
    assert_eq!(list[0]["auth_scope_id"], scope, "{all:#}");
    list[0].clone()
}

/// The scopes a status says were granted, sorted.
fn granted(status: &Value) -> Vec<String> {
    let mut granted: Vec<String> = status["granted_scopes"]
        .as_array()
        .expect("granted_scopes")
        .iter()
        .map(|v| v.as_str().expect("scope").to_owned())
        .collect();
    granted.sort_unstable();
    granted
}

/// The status reports exactly the scopes the provider put in `token`.
#[track_caller]
fn assert_granted_as_at_provider(server: &OAuthServer, status: &Value, token: &str) {
    let at_provider = server.protected(token).json();
    let mut scopes: Vec<String> = at_provider["scope"]
        .as_str()
        .expect("scope")
        .split(' ')
        .map(str::to_owned)
        .collect();
    scopes.sort_unstable();
    assert_eq!(granted(status), scopes, "{status:#} vs {at_provider}");
}

/// The scope's status is `valid`, with a refresh token, requested scopes
/// granted, and an expiry in the future.
#[track_caller]
fn assert_valid(vault: &Vault, scope: &str, provider: &str) -> Value {
    let s = status(vault, scope);
    assert_eq!(s["status"], "valid", "{s:#}");
    assert_eq!(s["oauth_provider_id"], provider, "{s:#}");
    assert_eq!(s["has_refresh_token"], true, "{s:#}");
    let granted = granted(&s);
    assert!(
        granted
            .iter()
            .all(|g| REQUESTED_SCOPES.contains(&g.as_str()))
            && GRANTED_AT_LEAST
                .iter()
                .all(|w| granted.iter().any(|g| g == w)),
        "{s:#}"
    );
    assert!(s["expires_at_ms"].as_i64().unwrap() > now_ms(), "{s:#}");
    assert!(s["authorized_at_ms"].as_i64().unwrap() > 0, "{s:#}");
    assert_eq!(s["message"], "", "{s:#}");
    s
}

/// The scope has no tokens: `unauthorized`, and a release is refused with
/// UNAUTHORIZED and the authorize fix.
#[track_caller]
fn assert_unauthorized(vault: &Vault, scope: &str) {
    let s = status(vault, scope);
    assert_eq!(s["status"], "unauthorized", "{s:#}");
    assert_eq!(
        s["message"],
        format!("run mcplexerctl auth authorize {scope}"),
        "{s:#}"
    );
    assert_eq!(s["has_refresh_token"], false, "{s:#}");
    let refused = credential(vault, scope, STDIO_SERVER, "stdio");
    assert_oauth_refusal(&refused, "UNAUTHORIZED", scope);
    assert_eq!(
        refused.json["message"],
        format!("auth_scope {scope} has no OAuth token yet"),
        "{refused:#?}"
    );
}

/// A release refused with the vault code `vault_code` and the fix
/// `mcplexerctl auth authorize SCOPE`.
#[track_caller]
fn assert_oauth_refusal(p: &Probe, vault_code: &str, scope: &str) {
    p.refused(4, "FailedPrecondition");
    assert_eq!(p.json["vault_code"], vault_code, "{p:#?}");
    assert_eq!(
        p.json["fix"],
        format!("mcplexerctl auth authorize {scope}"),
        "{p:#?}"
    );
}

/// Vault/GetCredential for `scope` on `server` (as root).
fn credential(vault: &Vault, scope: &str, server: &str, transport: &str) -> Probe {
    probe(vault, None, &["credential", scope, server, transport])
}

/// What a release of an oauth2 scope carried.
struct Released {
    token: String,
    version: u64,
    expires_at_ms: i64,
}

/// Releases `scope` for the stdio and the http server and checks both
/// shapes: `env_var` = token for stdio, `Authorization: Bearer token` for
/// http, the same token, version and expiry, the token in `scrub`.
#[track_caller]
fn release(vault: &Vault, scope: &str, env_var: &str) -> Released {
    let stdio = credential(vault, scope, STDIO_SERVER, "stdio");
    let values = stdio.values();
    assert_eq!(stdio.json["kind"], "env", "{stdio:#?}");
    assert_eq!(values.keys().collect::<Vec<_>>(), [env_var], "{stdio:#?}");
    let token = values[env_var].clone();
    assert!(token.len() >= 20, "{stdio:#?}");

    let http = credential(vault, scope, HTTP_SERVER, "http");
    let values = http.values();
    assert_eq!(http.json["kind"], "header", "{http:#?}");
    assert_eq!(
        values.keys().collect::<Vec<_>>(),
        ["Authorization"],
        "{http:#?}"
    );
    assert_eq!(values["Authorization"], format!("Bearer {token}"));

    for p in [&stdio, &http] {
        assert_eq!(p.json["scrub"], serde_json::json!([token]), "{p:#?}");
    }
    assert_eq!(stdio.json["version"], http.json["version"]);
    assert_eq!(stdio.json["expires_at_ms"], http.json["expires_at_ms"]);
    let expires_at_ms = stdio.json["expires_at_ms"].as_i64().unwrap();
    assert!(expires_at_ms > 0, "{stdio:#?}");
    Released {
        token,
        version: stdio.json["version"].as_u64().unwrap(),
        expires_at_ms,
    }
}

/// A finished `auth authorize` as a [`Run`].
fn run_of(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `url` with query parameter `name` set to `value` (others kept, in order).
fn with_param(url: &str, name: &str, value: &str) -> String {
    let base = url.split('?').next().unwrap();
    let params: Vec<(String, String)> = query_params(url)
        .into_iter()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    format!("{base}?{}", form_encode(&pairs))
}

/// One browser flow through the CLI, up to the redirect (not delivered).
struct Redirected {
    flow: Authorizing,
    /// Where the provider sent the browser back to.
    redirect: String,
}

fn redirected(vault: &Vault, scope: &str) -> Redirected {
    let flow = Authorizing::start(vault, scope, &[]);
    let redirect = browser_authorize(&flow.url);
    Redirected { flow, redirect }
}

/// A whole browser flow; returns the code the provider issued (the CLI
/// must succeed).
fn authorize_keeping_code(vault: &Vault, scope: &str) -> String {
    let Redirected { flow, redirect } = redirected(vault, scope);
    assert_eq!(flow.deliver(&redirect), 200);
    let run = run_of(flow.finish());
    assert_eq!(run.code, 0, "{run:#?}");
    query_param(&redirect, "code").expect("a code in the redirect")
}

/// What an attacker holding `code` would send to `flow`'s listener: the
/// code with the flow's own state and the provider's `iss`.
fn replay(flow: &Authorizing, code: &str, issuer: &str) -> String {
    let state = query_param(&flow.url, "state").expect("state");
    let listener = query_param(&flow.url, "redirect_uri").expect("redirect_uri");
    format!(
        "{listener}?{}",
        form_encode(&[("code", code), ("state", &state), ("iss", issuer)])
    )
}

/// A running `mcplexerctl auth authorize SCOPE --device` (as root or
/// another uid), with the code and URL it printed first.
struct DeviceFlow {
    child: Child,
    stdout: BufReader<ChildStdout>,
    user_code: String,
    verification_uri: String,
}

impl DeviceFlow {
    fn start(vault: &Vault, user: Option<(u32, u32)>, scope: &str) -> Self {
        let mut child = vault
            .ctl_command(user)
            .args(["auth", "authorize", scope, "--device"])
            .env_remove("MCPLEXER_VAULT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcplexerctl auth authorize --device");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the code line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let [user_code, verification_uri] = words[..] else {
            let out = child.wait_with_output().expect("wait");
            panic!(
                "auth authorize --device printed {line:?} first, not `USER_CODE URI`; {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (user_code, verification_uri) = (user_code.to_owned(), verification_uri.to_owned());
        Self {
            child,
            stdout,
            user_code,
            verification_uri,
        }
    }

    /// Waits for it to exit; stdout is what followed the code line.
    fn finish(mut self) -> Run {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stdout");
        let mut out = self.child.wait_with_output().expect("wait");
        out.stdout = rest.into_bytes();
        run_of(out)
    }
}

/// Audit records of `action` on `scope` with `status` by `uid`.
fn audited<'a>(
    records: &'a [Value],
    uid: u32,
    action: &str,
    scope: &str,
    status: &str,
) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["kind"] == "admin"
                && r["uid"] == uid
                && r["action"] == action
                && r["auth_scope_id"] == scope
                && r["status"] == status
        })
        .collect()
}

// ---------------------------------------------------------- 1. full flows

/// Configures `client` on a fresh server and vault, authorizes scope `s`
/// through the CLI and the browser, and checks everything a user sees.
fn full_flow(client: Client, client_id: &str) -> (OAuthServer, Vault) {
    let server = OAuthServer::start(3600);
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, client, "p", "s");
    assert_unauthorized(&vault, "s");

    let Redirected { flow, redirect } = redirected(&vault, "s");
    // The authorization request: code + PKCE S256 for this client, the
    // vault's state, the CLI's loopback listener; never a verifier.
    let url = &flow.url;
    assert!(
        url.starts_with(&format!("{}?", server.authorization_endpoint())),
        "{url}"
    );
    assert_eq!(query_param(url, "response_type").as_deref(), Some("code"));
    assert_eq!(query_param(url, "client_id").as_deref(), Some(client_id));
    assert_eq!(
        query_param(url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(url, "code_challenge").map(|c| c.len()),
        Some(43),
        "{url}"
    );
    assert_eq!(
        query_param(url, "scope").as_deref(),
        Some("openid offline_access read")
    );
    assert_eq!(query_param(url, "code_verifier"), None, "{url}");
    let state = query_param(url, "state").expect("state");
    assert!(state.len() >= 43, "{url}");
    let redirect_uri = query_param(url, "redirect_uri").expect("redirect_uri");
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:") && redirect_uri.ends_with("/callback"),
        "{url}"
    );
    // The provider's answer: back to that listener, same state, its iss.
    assert!(
        redirect.starts_with(&format!("{redirect_uri}?")),
        "{redirect}"
    );
    assert_eq!(query_param(&redirect, "state"), Some(state));
    assert_eq!(
        query_param(&redirect, "iss").as_deref(),
        Some(server.issuer.as_str())
    );

    assert_eq!(flow.deliver(&redirect), 200);
    let run = run_of(flow.finish());
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout
            .starts_with("authorized auth_scope s: valid (the token expires ")
            && run.stdout.contains("; refreshed automatically)"),
        "{run:#?}"
    );

    let s = assert_valid(&vault, "s", "p");
    assert_eq!(s["refreshed_at_ms"], 0, "{s:#}");
    let released = release(&vault, "s", "ACCESS_TOKEN");
    assert!(server.is_live(&released.token), "not live at the provider");
    let whoami = server.protected(&released.token).json();
    assert_eq!(whoami["client_id"], client_id, "{whoami}");
    assert_granted_as_at_provider(&server, &s, &released.token);
    assert_eq!(released.expires_at_ms, s["expires_at_ms"].as_i64().unwrap());

    let records = audit(&vault);
    for action in ["Auth/StartAuthorization", "Auth/CompleteAuthorization"] {
        one(&records, action, |r| {
            r["kind"] == "admin"
                && r["uid"] == 0
                && r["action"] == action
                && r["auth_scope_id"] == "s"
                && r["status"] == "success"
        });
    }
    (server, vault)
}

#[test]
fn public_client_pkce_flow_releases_a_live_token() {
    let (_server, vault) = full_flow(Client::Public, PUBLIC_CLIENT_ID);
    // A deleted scope takes its tokens along: made again under the same id,
    // it starts unauthorized.
    vault.ctl(["scope", "delete", "s"]).ok();
    create_scope(&vault, "s", "p", &[]);
    assert_unauthorized(&vault, "s");
}

#[test]
fn confidential_client_with_basic_auth_releases_a_live_token() {
    full_flow(Client::Basic, CONFIDENTIAL_CLIENT_ID);
}

#[test]
fn post_client_releases_a_live_token_also_under_its_token_env_var() {
    let (server, vault) = full_flow(Client::Post, POST_CLIENT_ID);
    // A second scope on the same provider, releasing under its own variable.
    create_scope(&vault, "s-env", "p", &["--token-env-var", "LINEAR_API_KEY"]);
    authorize(&vault, "s-env");
    assert_valid(&vault, "s-env", "p");
    let env = release(&vault, "s-env", "LINEAR_API_KEY");
    assert!(server.is_live(&env.token));
    // Each scope has its own grant.
    assert_ne!(env.token, release(&vault, "s", "ACCESS_TOKEN").token);
}

// ---------------------------------------------------------- 2. the state

#[test]
fn a_changed_state_is_refused_by_the_cli_and_a_made_up_one_by_the_vault() {
    let server = OAuthServer::start(3600);
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Basic, "p", "s");

    let Redirected { flow, redirect } = redirected(&vault, "s");
    let code = query_param(&redirect, "code").expect("code");
    let forged = with_param(&redirect, "state", "forged-state-0123456789");
    assert_eq!(flow.deliver(&forged), 400, "the listener refuses it");
    let run = run_of(flow.finish());
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.contains(
            "the redirect's state does not match the one this authorization sent: refused (a forged or stale redirect); nothing was stored"
        ),
        "{run:#?}"
    );
    assert!(!run.stderr.contains(&code), "{run:#?}");
    assert_unauthorized(&vault, "s");

    // The vault itself refuses a state it never issued, even with a genuine
    // code and iss.
    let made_up = probe(
        &vault,
        None,
        &[
            "complete-authorization",
            "made-up-state-0123456789",
            &code,
            "--iss",
            &server.issuer,
        ],
    );
    let message = made_up.refused(4, "FailedPrecondition");
    assert!(
        message.starts_with("no authorization in progress has this state"),
        "{made_up:#?}"
    );
    assert!(!message.contains(&code));
    assert_eq!(made_up.json["vault_code"], "FAILED_PRECONDITION");
    assert_eq!(
        made_up.json["fix"],
        "run mcplexerctl auth authorize SCOPE again"
    );
    assert_unauthorized(&vault, "s");
    let records = audit(&vault);
    one(&records, "the made-up state", |r| {
        r["action"] == "Auth/CompleteAuthorization"
            && r["status"] == "error"
            && r["pid"] == made_up.pid()
    });

    // Nothing was wedged: a genuine flow still works.
    authorize(&vault, "s");
    assert_valid(&vault, "s", "p");
    assert!(server.is_live(&release(&vault, "s", "ACCESS_TOKEN").token));
}

// ---------------------------------------------------------- 3. code replay

#[test]
fn a_used_code_with_a_fresh_state_is_refused_by_the_provider() {
    let server = OAuthServer::start(3600);
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Public, "p", "s");

    let Redirected { flow, redirect } = redirected(&vault, "s");
    assert_eq!(flow.deliver(&redirect), 200);
    assert_eq!(run_of(flow.finish()).code, 0);
    let old_code = query_param(&redirect, "code").expect("code");
    let before = status(&vault, "s");
    let first = release(&vault, "s", "ACCESS_TOKEN");

    // A second flow; its listener gets the old code with the new state, as
    // an attacker replaying a leaked redirect would send it.
    let second = Authorizing::start(&vault, "s", &[]);
    assert_eq!(
        second.deliver(&replay(&second, &old_code, &server.issuer)),
        200,
        "state and iss match"
    );
    let run = run_of(second.finish());
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr.contains(
            "error: auth_scope s: exchanging the code failed: the provider refused: invalid_grant"
        ),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("fix: mcplexerctl auth authorize s"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains(&old_code), "{run:#?}");

    // The refused exchange stored nothing: the first tokens are still the
    // scope's.
    let after = status(&vault, "s");
    assert_eq!(after, before);
    let again = release(&vault, "s", "ACCESS_TOKEN");
    assert_eq!((again.token, again.version), (first.token, first.version));
    let records = audit(&vault);
    let refused = audited(&records, 0, "Auth/CompleteAuthorization", "s", "error");
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{refused:#?}"
    );
}

// ------------------------------------------------------------ 4. RFC 9207

#[test]
fn an_iss_other_than_the_providers_issuer_is_refused() {
    let server = OAuthServer::start(3600);
    let vault = vault_with_servers(VaultOptions::default());
    let wrong = "https://issuer.example.com";
    provider_with_issuer(&vault, &server, "p", wrong);
    create_scope(&vault, "s", "p", &[]);

    let Redirected { flow, redirect } = redirected(&vault, "s");
    assert_eq!(
        query_param(&redirect, "iss").as_deref(),
        Some(server.issuer.as_str())
    );
    let code = query_param(&redirect, "code").expect("code");
    assert_eq!(flow.deliver(&redirect), 200);
    let run = run_of(flow.finish());
    assert_eq!(run.code, 4, "{run:#?}");
    let expected = format!(
        "error: the authorization response came from issuer {:?}, not {wrong:?} (oauth_provider p); the code was not used (RFC 9207)",
        server.issuer
    );
    assert!(run.stderr.contains(&expected), "{run:#?}");
    assert!(!run.stderr.contains(&code), "{run:#?}");
    assert_unauthorized(&vault, "s");
    let records = audit(&vault);
    assert_eq!(
        audited(&records, 0, "Auth/CompleteAuthorization", "s", "error").len(),
        1,
        "{records:#?}"
    );
}

// ---------------------------------------------------- 5. access_denied

#[test]
fn access_denied_by_the_provider_is_a_clear_error() {
    let server = OAuthServer::start_with(&OAuthOptions {
        interactions: Interactions::Deny,
        device_interval_secs: Some(1),
        ..OAuthOptions::default()
    });
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Public, "p", "s");

    let Redirected { flow, redirect } = redirected(&vault, "s");
    assert_eq!(
        query_param(&redirect, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(query_param(&redirect, "code"), None);
    assert_eq!(flow.deliver(&redirect), 200);
    let run = run_of(flow.finish());
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr
            .contains("error: the provider refused the authorization: access_denied"),
        "{run:#?}"
    );
    assert_unauthorized(&vault, "s");

    // The device flow: the user denies at the provider.
    let device = DeviceFlow::start(&vault, None, "s");
    assert!(
        try_browser_approve_device(&device.verification_uri, &device.user_code).is_err(),
        "the denied interaction ends on an error page"
    );
    let run = device.finish();
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr.contains("error: auth_scope s: ")
            && run.stderr.contains("denied")
            && run.stderr.contains("access_denied"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("fix: mcplexerctl auth authorize s"),
        "{run:#?}"
    );
    assert_unauthorized(&vault, "s");
}

// ------------------------------------------------------------ 6. device

#[test]
fn the_device_flow_prints_the_code_and_ends_valid_once_approved() {
    let server = OAuthServer::start_with(&OAuthOptions {
        device_interval_secs: Some(1),
        ..OAuthOptions::default()
    });
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Basic, "p", "s");

    let device = DeviceFlow::start(&vault, None, "s");
    assert_eq!(device.verification_uri, server.url("/device"));
    assert!(!device.user_code.is_empty());
    browser_approve_device(&device.verification_uri, &device.user_code);
    let shown = format!(
        "To authorize auth_scope s, open {} and enter the code {}",
        device.verification_uri, device.user_code
    );
    let run = device.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains(&shown), "{run:#?}");
    assert!(
        run.stdout.starts_with("authorized auth_scope s: valid ("),
        "{run:#?}"
    );
    let s = assert_valid(&vault, "s", "p");
    let released = release(&vault, "s", "ACCESS_TOKEN");
    assert!(server.is_live(&released.token));
    assert_granted_as_at_provider(&server, &s, &released.token);
    let records = audit(&vault);
    assert_eq!(
        audited(&records, 0, "Auth/DeviceAuthorization", "s", "success").len(),
        1,
        "{records:#?}"
    );
}

// ------------------------------------------------------------ 7. revoke

#[test]
fn revoke_kills_the_token_at_the_provider_and_deletes_it() {
    let server = OAuthServer::start(3600);
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Post, "p", "s");
    authorize(&vault, "s");
    let token = release(&vault, "s", "ACCESS_TOKEN").token;
    assert!(server.is_live(&token));

    let revoked = vault.ctl(["--json", "auth", "revoke", "s"]).json();
    assert_eq!(revoked["revoked_at_provider"], true, "{revoked:#}");
    assert_eq!(revoked["status"], "unauthorized", "{revoked:#}");
    assert_eq!(revoked["auth_scope_id"], "s", "{revoked:#}");
    assert!(
        !server.is_live(&token),
        "the provider still takes the token"
    );
    assert_unauthorized(&vault, "s");

    // Again: nothing is left to revoke; it still succeeds.
    let again = vault.ctl(["--json", "auth", "revoke", "s"]).json();
    assert_eq!(again["revoked_at_provider"], false, "{again:#}");
    assert_eq!(again["status"], "unauthorized", "{again:#}");

    // Revocation is not the end of the scope: it can be authorized again;
    // `--local` then deletes the tokens here only, and says so.
    authorize(&vault, "s");
    let token = release(&vault, "s", "ACCESS_TOKEN").token;
    let local = vault.ctl(["auth", "revoke", "s", "--local"]);
    local.ok();
    assert!(
        local.stderr.contains("deleted the tokens of auth_scope s"),
        "{local:#?}"
    );
    assert_unauthorized(&vault, "s");
    assert!(server.is_live(&token), "--local leaves the provider alone");

    let records = audit(&vault);
    assert_eq!(
        audited(&records, 0, "Auth/Revoke", "s", "success").len(),
        3,
        "{records:#?}"
    );
}

// ------------------------------------------ 8. reauthorization_required

#[test]
fn a_grant_revoked_at_the_provider_turns_into_reauthorization_required() {
    let server = OAuthServer::start(3);
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Public, "p", "s");
    authorize(&vault, "s");
    let released = release(&vault, "s", "ACCESS_TOKEN");

    // Revoked behind the vault's back: oidc-provider revokes the whole
    // grant, the refresh token the vault holds included.
    let revoked = server.revoke(ClientAuth::PUBLIC, &released.token);
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert!(!server.is_live(&released.token));
    // Not a synchronisation: the token's 3 s lifetime must pass so that the
    // vault has to refresh it.
    wait_past(released.expires_at_ms);

    let refused = credential(&vault, "s", STDIO_SERVER, "stdio");
    assert_oauth_refusal(&refused, "REAUTHORIZATION_REQUIRED", "s");
    let message = refused.json["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "auth_scope s must be authorized again: the provider refused the refresh token (invalid_grant"
        ),
        "{refused:#?}"
    );
    // Every later caller gets the same answer (http too).
    let http = credential(&vault, "s", HTTP_SERVER, "http");
    assert_oauth_refusal(&http, "REAUTHORIZATION_REQUIRED", "s");
    assert_eq!(http.json["message"], message);

    let s = status(&vault, "s");
    assert_eq!(s["status"], "reauthorization_required", "{s:#}");
    let hint = s["message"].as_str().unwrap();
    assert!(
        hint.contains("invalid_grant") && hint.ends_with("; run mcplexerctl auth authorize s"),
        "{s:#}"
    );
    let shown = vault.ctl(["auth", "status", "s"]);
    assert!(
        shown.ok().contains("reauthorization_required")
            && shown.stdout.contains("run mcplexerctl auth authorize s"),
        "{shown:#?}"
    );

    // The fix it names works.
    authorize(&vault, "s");
    assert_valid(&vault, "s", "p");
    let healed = release(&vault, "s", "ACCESS_TOKEN");
    assert_ne!(healed.token, released.token);
    assert!(healed.version > released.version);
    assert!(server.is_live(&healed.token));
}

// -------------------------------------------------------- 9. permissions

/// The vault's client group.
const G: u32 = 47001;
/// A member of G, granted `team` (not its owner).
const U1: (u32, u32) = (47001, G);
/// Another member of G, the owner of `team`; not an admin.
const U2: (u32, u32) = (47002, G);

#[test]
fn only_the_owner_or_an_admin_may_authorize_or_revoke_and_refusals_are_audited() {
    let server = OAuthServer::start_with(&OAuthOptions {
        device_interval_secs: Some(1),
        ..OAuthOptions::default()
    });
    let vault = vault_with_servers(VaultOptions {
        client_group: Some(G),
        ..VaultOptions::default()
    });
    configure(&vault, &server, Client::Public, "p", "hidden");
    create_scope(
        &vault,
        "team",
        "p",
        &["--owner", "47002", "--grant-user", "47001"],
    );

    // The owner, not an admin, authorizes its own scope.
    let device = DeviceFlow::start(&vault, Some(U2), "team");
    browser_approve_device(&device.verification_uri, &device.user_code);
    let run = device.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    let owners = probe(
        &vault,
        Some(U2),
        &["credential", "team", STDIO_SERVER, "stdio"],
    );
    let team_token = owners.values()["ACCESS_TOKEN"].clone();
    assert!(server.is_live(&team_token));

    // Root authorizes `hidden`; U1 tries to finish root's flow with root's
    // state and code: refused exactly as a made-up state, and root's flow
    // is left intact.
    let Redirected { flow, redirect } = redirected(&vault, "hidden");
    let state = query_param(&redirect, "state").expect("state");
    let code = query_param(&redirect, "code").expect("code");
    let stolen = probe(
        &vault,
        Some(U1),
        &[
            "complete-authorization",
            &state,
            &code,
            "--iss",
            &server.issuer,
        ],
    );
    assert!(
        stolen
            .refused(4, "FailedPrecondition")
            .starts_with("no authorization in progress has this state"),
        "{stolen:#?}"
    );
    assert_eq!(flow.deliver(&redirect), 200);
    assert_eq!(run_of(flow.finish()).code, 0);
    let hidden_token = release(&vault, "hidden", "ACCESS_TOKEN").token;
    assert!(server.is_live(&hidden_token));

    // Granted, not owned: U1 sees the status but may not authorize or
    // revoke (PERMISSION_DENIED, exit 3).
    let seen = vault
        .ctl_as(U1.0, U1.1, ["--json", "auth", "status", "team"], None)
        .json();
    assert_eq!(seen[0]["status"], "valid", "{seen:#}");
    let all = vault
        .ctl_as(U1.0, U1.1, ["--json", "auth", "status"], None)
        .json();
    let ids: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["auth_scope_id"])
        .collect();
    assert_eq!(ids, ["team"], "U1 sees only the scope it is granted");
    let denied = "error: only an admin or the owner of auth_scope team may authorize or revoke it";
    for args in [
        &["auth", "authorize", "team", "--no-browser"][..],
        &["auth", "authorize", "team", "--device"],
        &["auth", "revoke", "team"],
        &["auth", "revoke", "team", "--local"],
    ] {
        let run = vault.ctl_as(U1.0, U1.1, args, None);
        assert_eq!(run.code, 3, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(denied), "{args:?}: {run:#?}");
    }

    // Not granted: NOT_FOUND (exit 4), the very answer for a missing scope.
    let missing = "error: auth_scope \"hidden\" does not exist";
    for args in [
        &["auth", "status", "hidden"][..],
        &["auth", "authorize", "hidden", "--no-browser"],
        // Straight to the Auth service, without the CLI's scope lookup.
        &[
            "auth",
            "authorize",
            "hidden",
            "--no-browser",
            "--redirect-uri",
            "http://127.0.0.1/callback",
        ],
        &["auth", "authorize", "hidden", "--device"],
        &["auth", "revoke", "hidden"],
    ] {
        let run = vault.ctl_as(U1.0, U1.1, args, None);
        assert_eq!(run.code, 4, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(missing), "{args:?}: {run:#?}");
        let other: Vec<&str> = args
            .iter()
            .map(|a| if *a == "hidden" { "no-such-scope" } else { a })
            .collect();
        let nothing = vault.ctl_as(U1.0, U1.1, &other, None);
        assert_eq!(nothing.code, 4, "{nothing:#?}");
        assert_eq!(
            nothing.stderr.replace("no-such-scope", "hidden"),
            run.stderr,
            "{args:?}"
        );
    }

    // Nothing changed: both scopes are valid and their tokens live.
    assert_valid(&vault, "hidden", "p");
    assert_valid(&vault, "team", "p");
    assert!(server.is_live(&hidden_token) && server.is_live(&team_token));
    assert_eq!(
        release(&vault, "hidden", "ACCESS_TOKEN").token,
        hidden_token
    );

    // Every refusal by the Auth service is audited as denied, a hidden
    // scope's exactly as a missing one's. (A plain `auth authorize hidden`
    // stops at the CLI's own lookup of the scope, Admin/GetScope, a read,
    // which is not audited: hence one StartAuthorization each, from the
    // `--redirect-uri` run.)
    let records = audit(&vault);
    for (action, scope, count) in [
        ("Auth/StartAuthorization", "team", 1),
        ("Auth/DeviceAuthorization", "team", 1),
        ("Auth/Revoke", "team", 2),
        ("Auth/StartAuthorization", "hidden", 1),
        ("Auth/DeviceAuthorization", "hidden", 1),
        ("Auth/Revoke", "hidden", 1),
        ("Auth/StartAuthorization", "no-such-scope", 1),
        ("Auth/DeviceAuthorization", "no-such-scope", 1),
        ("Auth/Revoke", "no-such-scope", 1),
    ] {
        let found = audited(&records, U1.0, action, scope, "denied");
        assert_eq!(
            found.len(),
            count,
            "{action} on {scope} by {}: {records:#?}",
            U1.0
        );
    }
    one(&records, "the stolen state", |r| {
        r["action"] == "Auth/CompleteAuthorization"
            && r["uid"] == U1.0
            && r["pid"] == stolen.pid()
            && r["status"] == "error"
    });
    assert_eq!(
        audited(
            &records,
            U2.0,
            "Auth/DeviceAuthorization",
            "team",
            "success"
        )
        .len(),
        1
    );
}

// ----------------------------------------------- 10. no secret anywhere

/// Every form of `value` that must not be found, labelled: the value, hex,
/// base64 at each of the three alignments (so any base64 of data holding
/// the value contains one), and, for random tokens and codes (`runs`),
/// every 12-byte run. (Client secrets share words with their client ids,
/// so their runs would match the ids.)
fn needles(what: &str, value: &str, runs: bool) -> Vec<(String, Vec<u8>)> {
    let v = value.as_bytes();
    let mut out = vec![(what.to_owned(), v.to_vec())];
    if runs {
        for (i, run) in v.windows(12).enumerate() {
            out.push((format!("bytes {i}..{} of {what}", i + 12), run.to_vec()));
        }
    }
    let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
    out.push((format!("hex of {what}"), hex.clone().into_bytes()));
    out.push((format!("HEX of {what}"), hex.to_uppercase().into_bytes()));
    for offset in 0..3 {
        let whole = (v.len() - offset) / 3 * 3;
        let chunk = &v[offset..offset + whole];
        out.push((
            format!("base64 of {what} at {offset}"),
            base64(chunk, false),
        ));
        out.push((
            format!("base64url of {what} at {offset}"),
            base64(chunk, true),
        ));
    }
    out
}

/// Panics if any needle is in `haystack`.
#[track_caller]
fn assert_absent(place: &str, haystack: &[u8], needles: &[(String, Vec<u8>)]) {
    for (label, needle) in needles {
        assert!(
            !contains_bytes(haystack, needle),
            "{label} found in {place}"
        );
    }
}

/// Panics if any needle is in any file under the state directory.
fn assert_not_in_state_dir(vault: &Vault, needles: &[(String, Vec<u8>)], when: &str) {
    let files = files_under(&vault.state_dir);
    assert!(
        files.iter().any(|f| f.ends_with("vault.db")),
        "{when}: no vault.db in {files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).expect("read state file");
        assert_absent(&format!("{} ({when})", file.display()), &bytes, needles);
    }
}

#[test]
fn no_token_code_or_client_secret_reaches_disk_log_or_audit() {
    let server = OAuthServer::start_with(&OAuthOptions {
        device_interval_secs: Some(1),
        ..OAuthOptions::default()
    });
    let short = OAuthServer::start(3);
    let mut vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Public, "pub", "s-pub");
    configure(&vault, &server, Client::Basic, "basic", "s-basic");
    configure(&vault, &server, Client::Post, "post", "s-post");
    create_scope(&vault, "s-device", "basic", &[]);
    configure(&vault, &short, Client::Basic, "short", "s-short");
    provider_with_issuer(&vault, &server, "wrong", "https://issuer.example.com");
    create_scope(&vault, "s-wrong", "wrong", &[]);

    let mut tokens = Vec::new();
    let mut codes = Vec::new();
    let mut outputs = String::new();

    for scope in ["s-pub", "s-basic", "s-post"] {
        codes.push(authorize_keeping_code(&vault, scope));
        tokens.push(release(&vault, scope, "ACCESS_TOKEN").token);
    }
    let device = DeviceFlow::start(&vault, None, "s-device");
    browser_approve_device(&device.verification_uri, &device.user_code);
    let run = device.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    outputs.push_str(&format!("{run:?}"));
    tokens.push(release(&vault, "s-device", "ACCESS_TOKEN").token);

    // A refresh through the vault: the rotated tokens pass through it too.
    codes.push(authorize_keeping_code(&vault, "s-short"));
    let first = release(&vault, "s-short", "ACCESS_TOKEN");
    // Not a synchronisation: the 3 s token must expire to be refreshed.
    wait_past(first.expires_at_ms);
    let refreshed = release(&vault, "s-short", "ACCESS_TOKEN");
    assert_ne!(refreshed.token, first.token);
    assert!(short.is_live(&refreshed.token));
    assert!(
        status(&vault, "s-short")["refreshed_at_ms"]
            .as_i64()
            .unwrap()
            > 0
    );
    tokens.extend([first.token, refreshed.token]);

    // Codes the vault refused: a wrong issuer, and a replay.
    let Redirected { flow, redirect } = redirected(&vault, "s-wrong");
    codes.push(query_param(&redirect, "code").expect("code"));
    flow.deliver(&redirect);
    let run = run_of(flow.finish());
    assert_eq!(run.code, 4, "{run:#?}");
    outputs.push_str(&format!("{run:?}"));
    let second = Authorizing::start(&vault, "s-pub", &[]);
    second.deliver(&replay(&second, &codes[0], &server.issuer));
    let run = run_of(second.finish());
    assert_eq!(run.code, 4, "{run:#?}");
    outputs.push_str(&format!("{run:?}"));

    // A revocation sends the tokens to the provider once more.
    vault.ctl(["auth", "revoke", "s-post"]).ok();

    let mut all: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        all.extend(needles(&format!("access token {i}"), token, true));
    }
    for (i, code) in codes.iter().enumerate() {
        all.extend(needles(&format!("code {i}"), code, true));
    }
    all.extend(needles(
        "the Basic client's secret",
        CONFIDENTIAL_CLIENT_SECRET,
        false,
    ));
    all.extend(needles(
        "the post client's secret",
        POST_CLIENT_SECRET,
        false,
    ));

    assert_absent("the CLI's output", outputs.as_bytes(), &all);
    assert_not_in_state_dir(&vault, &all, "while the daemon runs");
    let records = vault.ctl(["--json", "audit", "--limit", "10000"]);
    let list = records.json();
    let list = list.as_array().unwrap();
    for (action, scope, status, count) in [
        ("Auth/CompleteAuthorization", "s-pub", "success", 1),
        ("Auth/CompleteAuthorization", "s-basic", "success", 1),
        ("Auth/CompleteAuthorization", "s-post", "success", 1),
        ("Auth/CompleteAuthorization", "s-short", "success", 1),
        ("Auth/DeviceAuthorization", "s-device", "success", 1),
        ("Auth/CompleteAuthorization", "s-wrong", "error", 1),
        ("Auth/CompleteAuthorization", "s-pub", "error", 1),
        ("Auth/Revoke", "s-post", "success", 1),
    ] {
        assert_eq!(
            audited(list, 0, action, scope, status).len(),
            count,
            "{action} {scope} {status}: {list:#?}"
        );
    }
    assert_absent("audit --json", records.stdout.as_bytes(), &all);
    assert_absent("the daemon's log", vault.log().as_bytes(), &all);

    assert_eq!(vault.stop(), Some(0));
    assert_not_in_state_dir(&vault, &all, "after stop");
    assert_absent("the daemon's log", vault.log().as_bytes(), &all);
}

#[test]
fn needles_find_every_encoding_of_a_value() {
    let value = "Zx8-q_ABCdefGHIjklMNOpqrSTUvwxYZ0123456789a";
    let needles = needles("v", value, true);
    let hex: String = value.bytes().map(|b| format!("{b:02X}")).collect();
    let mut haystacks = vec![
        format!("..{value}.."),
        format!("..{}..", &value[5..17]),
        format!("..{hex}.."),
    ];
    for prefix in ["", "a", "ab"] {
        let data = format!("{prefix}{value}--");
        let whole = data.len() / 3 * 3;
        for url_safe in [false, true] {
            let encoded = base64(&data.as_bytes()[..whole], url_safe);
            haystacks.push(String::from_utf8(encoded).unwrap());
        }
    }
    for haystack in &haystacks {
        assert!(
            needles
                .iter()
                .any(|(_, n)| contains_bytes(haystack.as_bytes(), n)),
            "nothing found in {haystack}"
        );
    }
}

// ------------------------------------------- 11. a scope's id used again

/// The ids of the scopes that have a row of tokens in the vault's database.
fn token_rows(vault: &Vault) -> Vec<String> {
    let db = rusqlite::Connection::open(vault.state_dir.join("vault.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = db
        .prepare("SELECT scope_id FROM oauth_tokens ORDER BY scope_id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn a_scope_deleted_while_its_device_flow_waits_gets_no_token_nor_does_its_successor() {
    let server = OAuthServer::start_with(&OAuthOptions {
        device_interval_secs: Some(1),
        ..OAuthOptions::default()
    });
    let mut vault = vault_with_servers(VaultOptions {
        client_group: Some(G),
        ..VaultOptions::default()
    });
    configure(&vault, &server, Client::Public, "p", "s");

    // The flow waits for the user; meanwhile the scope is deleted, and the
    // user approves at the provider all the same.
    let device = DeviceFlow::start(&vault, None, "s");
    vault.ctl(["scope", "delete", "s"]).ok();
    browser_approve_device(&device.verification_uri, &device.user_code);
    let run = device.finish();
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(
        run.stderr.contains(
            "auth_scope s was deleted while it was being authorized; the tokens the provider issued were not stored"
        ),
        "{run:#?}"
    );
    assert!(token_rows(&vault).is_empty(), "{:?}", token_rows(&vault));

    // Another user's scope under the same id, on the same provider, starts
    // with nothing: for its owner, for root, and after a restart.
    create_scope(&vault, "s", "p", &["--owner", &U2.0.to_string()]);
    let check = |vault: &Vault| {
        let s = status(vault, "s");
        assert_eq!(s["status"], "unauthorized", "{s:#}");
        let owners = probe(vault, Some(U2), &["credential", "s", STDIO_SERVER, "stdio"]);
        assert_oauth_refusal(&owners, "UNAUTHORIZED", "s");
    };
    check(&vault);
    vault.restart();
    check(&vault);
    assert!(token_rows(&vault).is_empty(), "{:?}", token_rows(&vault));

    let records = audit(&vault);
    assert_eq!(
        audited(&records, 0, "Auth/DeviceAuthorization", "s", "error").len(),
        1,
        "{records:#?}"
    );
    assert!(
        audited(&records, 0, "Auth/DeviceAuthorization", "s", "success").is_empty(),
        "{records:#?}"
    );
}

#[test]
fn tokens_of_no_scope_are_dropped_at_start_and_a_new_scope_never_inherits_them() {
    let server = OAuthServer::start(3600);
    let mut vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Public, "p", "s");
    authorize(&vault, "s");
    let token = release(&vault, "s", "ACCESS_TOKEN").token;

    // What a vault that stored tokens for a scope deleted during its
    // authorization left behind: rows under ids that name no scope.
    let db = rusqlite::Connection::open(vault.state_dir.join("vault.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    for ghost in ["early", "late"] {
        db.execute(
            "INSERT INTO oauth_tokens (scope_id, ciphertext, meta)
             SELECT ?1, ciphertext, meta FROM oauth_tokens WHERE scope_id = 's'",
            [ghost],
        )
        .unwrap();
    }
    drop(db);
    assert_eq!(token_rows(&vault), ["early", "late", "s"]);

    // Created while the vault runs: the creation deletes what its id left.
    create_scope(&vault, "early", "p", &[]);
    assert_eq!(token_rows(&vault), ["late", "s"]);
    assert_unauthorized(&vault, "early");

    // A start deletes rows whose scope does not exist.
    vault.restart();
    assert_eq!(token_rows(&vault), ["s"]);
    assert_unauthorized(&vault, "early");
    create_scope(&vault, "late", "p", &[]);
    assert_unauthorized(&vault, "late");
    assert_eq!(release(&vault, "s", "ACCESS_TOKEN").token, token);
    assert!(
        vault
            .log()
            .contains("deleted the stored tokens of scopes that no longer exist")
    );
}

#[test]
fn a_device_code_lifetime_past_any_clock_is_bounded() {
    let server = OAuthServer::start_with(&OAuthOptions {
        device_interval_secs: Some(1),
        device_expires_in_secs: Some(10_000_000_000_000_000_000),
        ..OAuthOptions::default()
    });
    let vault = vault_with_servers(VaultOptions::default());
    configure(&vault, &server, Client::Public, "p", "s");

    let device = DeviceFlow::start(&vault, None, "s");
    browser_approve_device(&device.verification_uri, &device.user_code);
    let run = device.finish();
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.contains("The code expires in 1800 s."),
        "{run:#?}"
    );
    assert_valid(&vault, "s", "p");
    assert!(!vault.log().contains("panicked"), "{}", vault.log());
}
