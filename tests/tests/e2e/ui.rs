//! `mcplexerctl ui`, over HTTP as a browser speaks it.
//!
//! Proves the guard: without the sign-in cookie every page, asset and
//! stream is refused (401), and so is every form post; the one-time token
//! buys one cookie (HttpOnly, SameSite=Strict) and is then spent; a post
//! with a foreign or missing `Origin`, or without the session's CSRF token,
//! is refused and changes nothing; a request naming another host (DNS
//! rebinding) is refused; another uid's connection is closed unanswered;
//! every answer carries the CSP and its companions. A browser whose session
//! is gone is told how to get a fresh link, and SIGUSR1 prints one. The
//! OAuth callback completes a flow only for the request carrying the flow
//! cookie Authorize set, never on the state alone. And the pages: a scope
//! made with the form, a value set through it (never shown again: the
//! value is in no response), a route linking the scope with the transport
//! check shown, and a refused change showing the vault's message and fix.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use mcplexer_tests::oauth::{
    HttpResponse, OAuthServer, browser_authorize, form_encode, http_request,
};
use mcplexer_tests::oauth_vault::{Client, configure};
use mcplexer_tests::{Vault, VaultOptions, bin};

const VALUE: &str = "ui-secret-value-5e0c2b";
/// The vault's client group and a user in it.
const G: u32 = 47000;

/// A running `mcplexerctl ui` against `vault`.
pub struct UiProcess {
    child: Child,
    /// What it prints: the sign-in link first, then each fresh one.
    output: BufReader<ChildStdout>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The one-time sign-in link it printed.
    pub login: String,
}

impl UiProcess {
    /// Starts it with `--no-browser` and reads the sign-in link it prints.
    pub fn start(vault: &Vault) -> Self {
        let mut cmd = Self::command(vault);
        cmd.arg("--no-browser");
        Self::spawn(cmd)
    }

    /// Starts it as a person does, opening a browser: the first `xdg-open`
    /// on its `PATH` is the one in `opener_dir`, and the page it hands that
    /// opener is written in `runtime_dir` (its `XDG_RUNTIME_DIR`).
    pub fn start_opening(vault: &Vault, opener_dir: &Path, runtime_dir: &Path) -> Self {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![opener_dir.to_owned()];
        dirs.extend(std::env::split_paths(&path));
        let mut cmd = Self::command(vault);
        cmd.env("PATH", std::env::join_paths(dirs).unwrap())
            .env("XDG_RUNTIME_DIR", runtime_dir);
        Self::spawn(cmd)
    }

    fn command(vault: &Vault) -> Command {
        let mut cmd = Command::new(bin("mcplexerctl"));
        cmd.arg("--socket").arg(&vault.socket).arg("ui");
        cmd
    }

    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let mut ui = Self {
            child,
            output,
            base: String::new(),
            login: String::new(),
        };
        ui.login = ui.next_link();
        ui.base = ui.login.split("/login").next().unwrap().to_owned();
        ui
    }

    /// The next sign-in link it prints (blocks until it does).
    pub fn next_link(&mut self) -> String {
        let mut line = String::new();
        let n = self.output.read_line(&mut line).unwrap();
        assert!(n > 0, "mcplexerctl ui ended its output");
        line.split_whitespace()
            .find(|w| w.contains("/login?token="))
            .unwrap_or_else(|| panic!("no sign-in link in {line:?}"))
            .to_owned()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it for a fresh sign-in link (SIGUSR1) and reads the link it
    /// prints.
    pub fn fresh_link(&mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
        self.next_link()
    }

    /// Signs in; returns the `Cookie` header value.
    pub fn sign_in(&self) -> String {
        sign_in_with(&self.login)
    }
}

/// Signs in with the one-time link `login`; returns the `Cookie` header
/// value.
fn sign_in_with(login: &str) -> String {
    let r = http_request("GET", login, &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.header("set-cookie").unwrap().to_owned();
    cookie.split(';').next().unwrap().to_owned()
}

impl Drop for UiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(ui: &UiProcess, path: &str, cookie: Option<&str>) -> HttpResponse {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    http_request("GET", &format!("{}{path}", ui.base), &headers, None)
}

fn post(
    ui: &UiProcess,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    fields: &[(&str, &str)],
) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        headers.push(("Cookie", c));
    }
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    let body = form_encode(fields);
    http_request(
        "POST",
        &format!("{}{path}", ui.base),
        &headers,
        Some(body.as_bytes()),
    )
}

/// The CSRF token in a page's forms.
fn csrf(page: &HttpResponse) -> String {
    let at = page
        .body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no form in {page:?}"));
    let rest = &page.body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn assert_hardened(r: &HttpResponse) {
    let csp = r.header("content-security-policy").unwrap_or_default();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{part} missing in {r:?}");
    }
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
}

fn scope_ids(vault: &Vault) -> Vec<String> {
    vault
        .ctl(["--json", "scope", "list"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn nothing_is_served_without_the_session_and_the_token_works_once() {
    let vault = Vault::start();
    let ui = UiProcess::start(&vault);
    for path in [
        "/",
        "/scopes",
        "/scopes/new",
        "/scopes/x",
        "/providers",
        "/routes",
        "/audit",
        "/audit/stream",
        "/static/app.js",
        "/static/style.css",
        "/nowhere",
    ] {
        let r = get(&ui, path, None);
        assert_eq!(r.status, 401, "GET {path}: {r:?}");
        assert_hardened(&r);
        let forged = get(&ui, path, Some("mcplexer_ui=0123456789abcdef"));
        assert_eq!(
            forged.status, 401,
            "GET {path} with a made-up cookie: {forged:?}"
        );
    }
    let r = post(
        &ui,
        "/scopes",
        None,
        Some(&ui.base),
        &[("type", "env"), ("name", "x")],
    );
    assert_eq!(r.status, 401, "{r:?}");
    // The callback completes nothing without a state the vault issued.
    let r = get(&ui, "/oauth/callback?state=made-up&code=abc", None);
    assert_eq!(r.status, 400, "{r:?}");

    let wrong = get(&ui, "/login?token=0000", None);
    assert_eq!(wrong.status, 403, "{wrong:?}");
    // A page that moves on, not a redirect: a browser sent here from
    // another site (or a file) sends the cookie only on a navigation of
    // this origin's own page.
    let r = http_request("GET", &ui.login, &[], None);
    assert_eq!((r.status, r.header("location")), (200, None), "{r:?}");
    assert_hardened(&r);
    assert!(
        r.body
            .contains("<meta http-equiv=\"refresh\" content=\"0;url=/scopes\">")
            && r.body.contains("href=\"/scopes\""),
        "{r:?}"
    );
    let set_cookie = r.header("set-cookie").unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap();
    let again = http_request("GET", &ui.login, &[], None);
    assert_eq!(again.status, 403, "the token was reused: {again:?}");
    assert!(again.header("set-cookie").is_none());

    let page = get(&ui, "/scopes", Some(cookie));
    assert_eq!(page.status, 200, "{page:?}");
    assert_hardened(&page);
    assert!(page.body.contains("No auth scopes yet"), "{page:?}");
    let js = get(&ui, "/static/app.js", Some(cookie));
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
}

#[test]
fn changes_need_this_origin_and_the_csrf_token() {
    let vault = Vault::start();
    let ui = UiProcess::start(&vault);
    let cookie = ui.sign_in();
    let token = csrf(&get(&ui, "/scopes/new", Some(&cookie)));
    let wrong = "0".repeat(64);
    let cases = [
        (
            Some("http://evil.example"),
            Some(token.as_str()),
            "a foreign Origin",
        ),
        (None, Some(token.as_str()), "no Origin"),
        (
            Some(ui.base.as_str()),
            Some(wrong.as_str()),
            "a wrong CSRF token",
        ),
        (Some(ui.base.as_str()), None, "no CSRF token"),
    ];
    for (origin, csrf_value, what) in cases {
        let mut pairs = vec![("type", "env"), ("name", "Forged")];
        pairs.extend(csrf_value.map(|c| ("csrf", c)));
        let r = post(&ui, "/scopes", Some(&cookie), origin, &pairs);
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(r.body.contains("Nothing was changed"), "{what}: {r:?}");
    }
    assert!(
        scope_ids(&vault).is_empty(),
        "a refused post changed something"
    );

    // DNS rebinding: a page of another name resolving to 127.0.0.1.
    let authority = ui.base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    write!(
        stream,
        "GET /scopes HTTP/1.1\r\nHost: rebind.example:80\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");

    // With both, the post goes through.
    let pairs = [
        ("type", "env"),
        ("name", "Forged"),
        ("csrf", token.as_str()),
    ];
    let r = post(&ui, "/scopes", Some(&cookie), Some(&ui.base), &pairs);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(scope_ids(&vault), ["forged"]);
}

#[test]
fn another_users_connection_is_closed_unanswered() {
    let vault = Vault::start();
    let ui = UiProcess::start(&vault);
    let authority = ui.base.strip_prefix("http://").unwrap();
    let request = format!("GET /login?token=x HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert!(!mcplexer_tests::answered_as(
        (47001, 47001),
        authority,
        &request
    ));
    // The UI still serves its own user.
    assert_eq!(get(&ui, "/scopes", None).status, 401);
}

#[test]
fn scopes_secrets_and_routes_through_the_forms_never_show_a_value() {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        ..VaultOptions::default()
    });
    vault.create_stdio_server("tools", "tools");
    let ui = UiProcess::start(&vault);
    let cookie = ui.sign_in();
    let token = csrf(&get(&ui, "/scopes/new", Some(&cookie)));
    let mut responses = Vec::new();
    let mut send = |path: &str, fields: &[(&str, &str)]| {
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        let r = post(&ui, path, Some(&cookie), Some(&ui.base), &all);
        responses.push(r.clone());
        r
    };

    let r = send(
        "/scopes",
        &[
            ("type", "env"),
            ("name", "Team GitHub"),
            ("grant_groups", "47000"),
        ],
    );
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/scopes/team-github?done=created")),
        "{r:?}"
    );
    let r = send(
        "/scopes/team-github/secrets",
        &[("key", "GITHUB_TOKEN"), ("value", VALUE)],
    );
    assert_eq!(r.status, 303, "{r:?}");
    // An invalid key: the vault's message on the scope's page.
    let bad = send(
        "/scopes/team-github/secrets",
        &[("key", "NOT VALID"), ("value", VALUE)],
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("notice error"), "{bad:?}");

    let page = get(&ui, "/scopes/team-github?done=secret-set", Some(&cookie));
    assert!(page.body.contains("<code>GITHUB_TOKEN</code>"), "{page:?}");
    assert!(page.body.contains("Stored the value"), "{page:?}");
    let list = get(&ui, "/scopes", Some(&cookie));
    assert!(
        list.body.contains("Team GitHub") && list.body.contains("group 47000"),
        "{list:?}"
    );
    assert!(list.body.contains("1 value"), "{list:?}");

    // A header scope cannot serve a stdio server: the vault says so, and
    // the form says which pairs fit.
    send("/scopes", &[("type", "header"), ("name", "Api")]);
    let routes = get(&ui, "/routes", Some(&cookie));
    assert!(routes.body.contains("team-github → tools"), "{routes:?}");
    assert!(
        routes
            .body
            .contains("header scope cannot serve a stdio server"),
        "{routes:?}"
    );
    let refused = send(
        "/routes",
        &[
            ("name", "Api route"),
            ("tool_match", "api__*"),
            ("downstream_server_id", "tools"),
            ("auth_scope_id", "api"),
            ("priority", "10"),
            ("policy", "allow"),
        ],
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains("notice error") && refused.body.contains("api"),
        "{refused:?}"
    );
    let linked = send(
        "/routes",
        &[
            ("name", "GitHub tools"),
            ("tool_match", "github__*"),
            ("downstream_server_id", "tools"),
            ("auth_scope_id", "team-github"),
            ("priority", "10"),
            ("policy", "allow"),
        ],
    );
    assert_eq!(linked.status, 303, "{linked:?}");
    let rules = vault.ctl(["--json", "route", "list"]).json();
    assert_eq!(rules[0]["auth_scope_id"], "team-github", "{rules}");
    let routes = get(&ui, "/routes", Some(&cookie));
    assert!(
        routes.body.contains("env scope fits a stdio server"),
        "{routes:?}"
    );

    let audit = get(&ui, "/audit?kind=admin", Some(&cookie));
    assert!(audit.body.contains("Admin/SetSecret"), "{audit:?}");

    responses.extend([page, list, routes, audit]);
    for path in [
        "/scopes",
        "/scopes/team-github",
        "/providers",
        "/routes",
        "/audit",
    ] {
        responses.push(get(&ui, path, Some(&cookie)));
    }
    for r in &responses {
        assert!(!r.body.contains(VALUE), "the value is in a response: {r:?}");
        assert!(
            r.headers.iter().all(|(_, v)| !v.contains(VALUE)),
            "the value is in a header: {r:?}"
        );
    }
}

#[test]
fn the_audit_tail_streams_new_records() {
    let vault = Vault::start();
    let ui = UiProcess::start(&vault);
    let cookie = ui.sign_in();
    let page = get(&ui, "/audit?kind=admin", Some(&cookie));
    assert!(
        page.body.contains("data-follow=\"/audit/stream?after_id="),
        "{page:?}"
    );

    let authority = ui.base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /audit/stream?kind=admin HTTP/1.1\r\nHost: {authority}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A record written after the stream opened arrives on it.
    vault
        .ctl(["scope", "create", "--name", "Tailed", "--type", "env"])
        .ok();
    let mut seen = String::new();
    while !seen.contains("Admin/CreateScope") {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.contains("event: record"), "{seen}");
}

#[test]
fn objects_from_yaml_are_shown_read_only_with_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "auth_scopes:\n  - {id: from-yaml, name: From YAML, type: env}\n",
    )
    .unwrap();
    let vault = Vault::start_with(VaultOptions {
        config: Some(config),
        ..VaultOptions::default()
    });
    let ui = UiProcess::start(&vault);
    let cookie = ui.sign_in();
    let list = get(&ui, "/scopes", Some(&cookie));
    assert!(list.body.contains("from YAML (read-only)"), "{list:?}");
    let page = get(&ui, "/scopes/from-yaml", Some(&cookie));
    assert!(
        page.body.contains("defined in the YAML configuration"),
        "{page:?}"
    );
    assert!(!page.body.contains("/scopes/from-yaml/delete"), "{page:?}");
    // Its values are not part of the YAML: they are set here.
    assert!(page.body.contains("/scopes/from-yaml/secrets"), "{page:?}");
}

#[test]
fn a_lost_session_is_recovered_with_a_fresh_link_from_sigusr1() {
    let vault = Vault::start();
    let mut ui = UiProcess::start(&vault);
    let cookie = ui.sign_in();
    let hint = format!("kill -USR1 {}", ui.pid());
    // Another local server replaced the cookie: signed out, and told how
    // to get back in without restarting.
    let name = cookie.split('=').next().unwrap();
    let lost = get(&ui, "/scopes", Some(&format!("{name}=replaced")));
    assert_eq!(lost.status, 401, "{lost:?}");
    assert!(lost.body.contains(&hint), "{lost:?}");
    let spent = http_request("GET", &ui.login, &[], None);
    assert_eq!(spent.status, 403, "{spent:?}");
    assert!(spent.body.contains(&hint), "{spent:?}");

    let fresh = ui.fresh_link();
    assert!(
        fresh.starts_with(&format!("{}/login?token=", ui.base)) && fresh != ui.login,
        "{fresh}"
    );
    // Asking for a link signs nobody out.
    assert_eq!(get(&ui, "/scopes", Some(&cookie)).status, 200);
    let again = sign_in_with(&fresh);
    assert_eq!(get(&ui, "/scopes", Some(&again)).status, 200);
    assert_eq!(http_request("GET", &fresh, &[], None).status, 403);

    // Only the newest link printed works.
    let older = ui.fresh_link();
    let newest = ui.fresh_link();
    assert_eq!(http_request("GET", &older, &[], None).status, 403);
    let last = sign_in_with(&newest);
    assert_eq!(get(&ui, "/scopes", Some(&last)).status, 200);
}

#[test]
fn the_oauth_callback_completes_only_in_the_browser_that_started_it() {
    let server = OAuthServer::start(3600);
    let vault = Vault::start();
    configure(&vault, &server, Client::Public, "idp", "gh");
    let ui = UiProcess::start(&vault);
    let cookie = ui.sign_in();
    let token = csrf(&get(&ui, "/scopes/gh", Some(&cookie)));
    let started = post(
        &ui,
        "/scopes/gh/authorize",
        Some(&cookie),
        Some(&ui.base),
        &[("csrf", token.as_str())],
    );
    assert_eq!(started.status, 200, "{started:?}");
    let set_cookie = started.header("set-cookie").unwrap();
    for part in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/oauth/callback",
        "Max-Age=600",
    ] {
        assert!(set_cookie.contains(part), "{part} missing in {set_cookie}");
    }
    let flow_cookie = set_cookie.split(';').next().unwrap();
    let marker = "content=\"0;url=";
    let at = started.body.find(marker).unwrap() + marker.len();
    let rest = &started.body[at..];
    let url = rest[..rest.find('"').unwrap()].replace("&amp;", "&");
    let redirect = browser_authorize(&url);
    assert!(
        redirect.starts_with(&format!("{}/oauth/callback?", ui.base)),
        "{redirect}"
    );

    // The provider's real code and state, delivered by a request without
    // the flow cookie (another browser, or a page with a leaked state):
    // refused, nothing stored, the flow kept for its own browser.
    let name = flow_cookie.split('=').next().unwrap();
    let forged = format!("{name}={}", "0".repeat(64));
    for (cookie, what) in [
        (None, "no cookie"),
        (Some(forged.as_str()), "a wrong flow cookie"),
        (Some(cookie.as_str()), "the session cookie alone"),
    ] {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        let r = http_request("GET", &redirect, &headers, None);
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert!(
            r.body.contains("did not come back to the browser"),
            "{what}: {r:?}"
        );
        assert_hardened(&r);
    }
    let status = vault.ctl(["--json", "auth", "status", "gh"]).json();
    assert_eq!(status[0]["status"], "unauthorized", "{status:#}");

    // The browser that started it completes it, and its cookie is cleared.
    let done = http_request("GET", &redirect, &[("Cookie", flow_cookie)], None);
    assert_eq!(done.status, 200, "{done:?}");
    assert!(done.body.contains("Authorized"), "{done:?}");
    let cleared = done.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with(&format!("{name}=;")) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let status = vault.ctl(["--json", "auth", "status", "gh"]).json();
    assert_eq!(status[0]["status"], "valid", "{status:#}");
    let replay = http_request("GET", &redirect, &[("Cookie", flow_cookie)], None);
    assert_eq!(replay.status, 400, "{replay:?}");
    assert!(
        replay.body.contains("does not belong to an authorization"),
        "{replay:?}"
    );
}
