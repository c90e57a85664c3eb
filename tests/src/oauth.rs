//! A real OAuth 2 / OpenID Connect authorization server for the end-to-end
//! tests, and the means to drive it: `tests/peers/oauth_server.mjs` on the
//! OpenID-certified `oidc-provider` (npm, pinned in `tests/peers`), a headless
//! cookie-keeping "browser" (`tests/peers/oauth_browser.py`) that walks its
//! login/consent pages, and a plain HTTP/1.1 client on `std::net::TcpStream`
//! for the token, revocation and device endpoints.
//!
//! The server's clients, scopes and policies are the constants below and the
//! module doc of `oauth_server.mjs`: PKCE (S256) required of every client;
//! every refresh rotates the refresh token and replaying a rotated one (or a
//! used code) revokes the whole grant; each confidential client must use its
//! registered authentication method (stricter than oidc-provider, which
//! takes Basic and body secrets interchangeably); authorization responses
//! carry `iss` (RFC 9207); device responses carry no `interval` unless
//! [`OAuthOptions::device_interval_secs`] asks for one. With
//! [`OAuthOptions::github_routes`] its endpoints sit at GitHub's paths, and
//! with [`Interactions::ConsentPage`] a real browser approves on its page.
//!
//! Trust: test code only. A missing peer or a failed step aborts the test,
//! hence `expect` and panics with the peer's own output.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{node, peers_dir, python};

/// The public client (`token_endpoint_auth_method: none`).
pub const PUBLIC_CLIENT_ID: &str = "public-client";
/// The confidential client that authenticates with HTTP Basic
/// (`client_secret_basic`).
pub const CONFIDENTIAL_CLIENT_ID: &str = "confidential-client";
/// The secret of [`CONFIDENTIAL_CLIENT_ID`].
pub const CONFIDENTIAL_CLIENT_SECRET: &str = "confidential-secret-5f1d0c9a";
/// The confidential client that sends its secret in the form body
/// (`client_secret_post`).
pub const POST_CLIENT_ID: &str = "post-client";
/// The secret of [`POST_CLIENT_ID`].
pub const POST_CLIENT_SECRET: &str = "post-secret-8e2b71d4";
/// The redirect URI every client registered; any port may be added to it
/// (RFC 8252 loopback rule), and the token request must repeat exactly the
/// one the authorization request used.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// The second redirect URI every client registered, the configuration UI's
/// callback (`mcplexerctl ui`); any port may be added to it too.
pub const UI_REDIRECT_URI: &str = "http://127.0.0.1/oauth/callback";
/// The account every approved interaction logs in as (the tokens' `sub`).
pub const TEST_USER: &str = "test-user";
/// The scopes every client may ask for.
pub const SCOPES: &str = "openid offline_access read write";
/// The device-code grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How long `oauth_server.mjs` may take to print its issuer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Read/write timeout of one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server does with a login/consent interaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Interactions {
    /// `AUTO_APPROVE=1`: log in as [`TEST_USER`] and grant every requested
    /// scope and resource at once.
    #[default]
    AutoApprove,
    /// `DENY=1`: finish with `error=access_denied` (to the redirect URI; a
    /// device code polls to `access_denied`).
    Deny,
    /// Neither: the interaction page answers 403 "interaction refused", so
    /// no authorization can complete.
    Refuse,
    /// `CONSENT_PAGE=1`: the interaction page is a real HTML page with an
    /// "Approve" and a "Deny" button (a POST form); Approve finishes as
    /// [`Interactions::AutoApprove`] does, Deny as [`Interactions::Deny`].
    /// For a real browser: the cookie-keeping HTTP client of
    /// [`browser_authorize`] does not press buttons.
    ConsentPage,
}

/// How to start an [`OAuthServer`].
#[derive(Clone, Debug)]
pub struct OAuthOptions {
    /// Access-token lifetime in seconds (exact to the second: the server's
    /// clock tolerance is 0).
    pub access_ttl_secs: u64,
    /// What interactions do.
    pub interactions: Interactions,
    /// `interval` to add to device authorization responses; `None` leaves
    /// oidc-provider's response as it is, without `interval` (RFC 8628's
    /// default of 5 s applies). The server never answers `slow_down`.
    pub device_interval_secs: Option<u64>,
    /// `expires_in` to put in device authorization responses instead of
    /// the server's own (the code still lives 10 minutes there).
    pub device_expires_in_secs: Option<u64>,
    /// The port (0: one the OS picks). The server keeps everything in
    /// memory, so a restart on the same port forgets every grant.
    pub port: u16,
    /// `GITHUB_ROUTES=1`: the authorization, token and device
    /// authorization endpoints at GitHub's paths
    /// (`/login/oauth/authorize`, `/login/oauth/access_token`,
    /// `/login/device/code`) instead of `/auth`, `/token`, `/device/auth`,
    /// so that the `github` provider template with `base_url` = the issuer
    /// reaches this server. The endpoint methods below follow it.
    pub github_routes: bool,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        Self {
            access_ttl_secs: 3600,
            interactions: Interactions::AutoApprove,
            device_interval_secs: None,
            device_expires_in_secs: None,
            port: 0,
            github_routes: false,
        }
    }
}

/// How a request to a client-authenticated endpoint authenticates.
#[derive(Clone, Copy, Debug)]
pub enum ClientAuth<'a> {
    /// A public client: `client_id` in the body.
    None(&'a str),
    /// `Authorization: Basic` with the form-encoded id and secret
    /// (RFC 6749 section 2.3.1).
    Basic(&'a str, &'a str),
    /// `client_id` and `client_secret` in the body.
    Post(&'a str, &'a str),
}

impl ClientAuth<'static> {
    /// The public client.
    pub const PUBLIC: Self = ClientAuth::None(PUBLIC_CLIENT_ID);
    /// The confidential client, with Basic.
    pub const CONFIDENTIAL: Self =
        ClientAuth::Basic(CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET);
    /// The post client, with its secret in the body.
    pub const POST: Self = ClientAuth::Post(POST_CLIENT_ID, POST_CLIENT_SECRET);
}

/// A running `tests/peers/oauth_server.mjs`: an authorization server on
/// 127.0.0.1 whose issuer is `http://127.0.0.1:<port>` (no trailing slash).
/// Endpoints (also in its discovery documents,
/// `/.well-known/openid-configuration` and
/// `/.well-known/oauth-authorization-server`): `/auth`, `/token`,
/// `/token/revocation`, `/token/introspection`, `/device/auth`, `/device`
/// (the user-code page), `/me` (userinfo) and `/protected` (200 with
/// `{"sub", "client_id", "scope", "aud"}` for a live access token, 401
/// otherwise); with [`OAuthOptions::github_routes`], GitHub's paths for
/// the first, second and fifth.
///
/// Its stderr (an access log without query strings, interaction outcomes,
/// token errors with oidc-provider's detail, revoked grants) is forwarded to
/// this process's stderr prefixed `oauth_server:`. Killed and reaped on drop.
pub struct OAuthServer {
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
    /// The port it listens on.
    pub port: u16,
    github_routes: bool,
    child: Child,
}

impl OAuthServer {
    /// Starts a server that auto-approves every interaction and issues
    /// access tokens living `access_ttl_secs` seconds.
    pub fn start(access_ttl_secs: u64) -> Self {
        Self::start_with(&OAuthOptions {
            access_ttl_secs,
            ..OAuthOptions::default()
        })
    }

    /// Starts a server with `options` and waits (without sleeping) for its
    /// `ISSUER=…` line, printed once it accepts connections. Panics with the
    /// server's stderr if it exits, or stays silent for a minute, first.
    pub fn start_with(options: &OAuthOptions) -> Self {
        let peers = peers_dir();
        let package = peers.join("node_modules/oidc-provider/package.json");
        assert!(
            package.is_file(),
            "{} is missing: run tests/peers/install.sh",
            package.display()
        );
        let mut cmd = Command::new(node());
        cmd.arg(peers.join("oauth_server.mjs"))
            .arg("--port")
            .arg(options.port.to_string())
            .current_dir(&peers)
            .env("ACCESS_TOKEN_TTL", options.access_ttl_secs.to_string())
            .env_remove("AUTO_APPROVE")
            .env_remove("DENY")
            .env_remove("CONSENT_PAGE")
            .env_remove("GITHUB_ROUTES")
            .env_remove("DEVICE_INTERVAL")
            .env_remove("DEVICE_EXPIRES_IN");
        match options.interactions {
            Interactions::AutoApprove => {
                cmd.env("AUTO_APPROVE", "1");
            }
            Interactions::Deny => {
                cmd.env("DENY", "1");
            }
            Interactions::Refuse => {}
            Interactions::ConsentPage => {
                cmd.env("CONSENT_PAGE", "1");
            }
        }
        if options.github_routes {
            cmd.env("GITHUB_ROUTES", "1");
        }
        if let Some(interval) = options.device_interval_secs {
            cmd.env("DEVICE_INTERVAL", interval.to_string());
        }
        if let Some(expires_in) = options.device_expires_in_secs {
            cmd.env("DEVICE_EXPIRES_IN", expires_in.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oauth_server.mjs");

        // Drain stderr for the server's whole life (a full pipe would block
        // it), forwarding each line and keeping them for a start-up failure.
        let stderr = child.stderr.take().expect("oauth_server.mjs stderr");
        let stderr_lines = std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("oauth_server: {line}");
                seen.push_str(&line);
                seen.push('\n');
            }
            seen
        });

        // The first stdout line, read on a thread so that it can time out;
        // the thread then keeps draining stdout (forwarding anything else)
        // so that a stray write cannot fail on a closed pipe.
        let stdout = child.stdout.take().expect("oauth_server.mjs stdout");
        let (first_line_tx, first_line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            // The receiver is gone only if start_with() already gave up.
            let _ = first_line_tx.send(read.map(|_| line));
            for line in reader.lines() {
                let Ok(line) = line else { break };
                eprintln!("oauth_server (stdout): {line}");
            }
        });

        let first_line = first_line_rx.recv_timeout(START_TIMEOUT);
        let issuer = match &first_line {
            Ok(Ok(line)) => line.trim_end().strip_prefix("ISSUER=").map(str::to_owned),
            _ => None,
        };
        let port = issuer
            .as_deref()
            .and_then(|issuer| issuer.strip_prefix("http://127.0.0.1:"))
            .and_then(|port| port.parse::<u16>().ok());
        match (issuer, port) {
            (Some(issuer), Some(port)) => OAuthServer {
                issuer,
                port,
                github_routes: options.github_routes,
                child,
            },
            _ => {
                // Exited, or silent too long: stop it so that stderr ends.
                let _ = child.kill();
                let status = child.wait().expect("wait for oauth_server.mjs");
                let stderr = stderr_lines.join().unwrap_or_default();
                panic!(
                    "oauth_server.mjs printed no ISSUER line (first line: {first_line:?}, \
                     status: {status}):\n--- stderr\n{stderr}"
                )
            }
        }
    }

    /// The absolute URL of `path` (which starts with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The authorization endpoint, `<issuer>/auth` (GitHub's
    /// `<issuer>/login/oauth/authorize` with github_routes).
    pub fn authorization_endpoint(&self) -> String {
        self.url(if self.github_routes {
            "/login/oauth/authorize"
        } else {
            "/auth"
        })
    }

    /// The token endpoint, `<issuer>/token` (GitHub's
    /// `<issuer>/login/oauth/access_token` with github_routes).
    pub fn token_endpoint(&self) -> String {
        self.url(self.token_path())
    }

    fn token_path(&self) -> &'static str {
        if self.github_routes {
            "/login/oauth/access_token"
        } else {
            "/token"
        }
    }

    /// The RFC 7009 revocation endpoint, `<issuer>/token/revocation`.
    pub fn revocation_endpoint(&self) -> String {
        self.url("/token/revocation")
    }

    /// The RFC 8628 device authorization endpoint, `<issuer>/device/auth`
    /// (GitHub's `<issuer>/login/device/code` with github_routes).
    pub fn device_authorization_endpoint(&self) -> String {
        self.url(if self.github_routes {
            "/login/device/code"
        } else {
            "/device/auth"
        })
    }

    /// An authorization-code request URL (`response_type=code`, PKCE S256)
    /// for `client_id`, with `extra` parameters (e.g. `resource`) appended.
    pub fn authorization_url(
        &self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        code_challenge: &str,
        extra: &[(&str, &str)],
    ) -> String {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("scope", scope),
            ("state", state),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
        ];
        params.extend_from_slice(extra);
        format!("{}?{}", self.authorization_endpoint(), form_encode(&params))
    }

    /// POSTs the form `fields` to `path`, authenticating as `auth`.
    pub fn post_form(
        &self,
        path: &str,
        auth: ClientAuth<'_>,
        fields: &[(&str, &str)],
    ) -> HttpResponse {
        let mut body: Vec<(&str, &str)> = Vec::with_capacity(fields.len() + 2);
        let mut headers = vec![(
            "Content-Type",
            "application/x-www-form-urlencoded".to_owned(),
        )];
        match auth {
            ClientAuth::None(id) => body.push(("client_id", id)),
            ClientAuth::Basic(id, secret) => headers.push((
                "Authorization",
                format!(
                    "Basic {}",
                    base64(
                        format!("{}:{}", form_encode_one(id), form_encode_one(secret)).as_bytes()
                    )
                ),
            )),
            ClientAuth::Post(id, secret) => {
                body.push(("client_id", id));
                body.push(("client_secret", secret));
            }
        }
        body.extend_from_slice(fields);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http_request(
            "POST",
            &self.url(path),
            &headers,
            Some(form_encode(&body).as_bytes()),
        )
    }

    /// POSTs a token request (to the token endpoint) with `fields`, authenticating as
    /// `auth`. Success: 200 with `access_token`, `token_type` (`Bearer`),
    /// `expires_in`, `refresh_token`, `scope` (and `id_token` with `openid`).
    /// Failure: 400 `{"error", "error_description"}` (`invalid_grant` hides
    /// its reason: the description is always "grant request is invalid"; the
    /// server's stderr has the detail), or 401 `invalid_client`.
    pub fn token(&self, auth: ClientAuth<'_>, fields: &[(&str, &str)]) -> HttpResponse {
        self.post_form(self.token_path(), auth, fields)
    }

    /// Exchanges an authorization code (PKCE `code_verifier`).
    pub fn exchange_code(
        &self,
        auth: ClientAuth<'_>,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> HttpResponse {
        self.token(
            auth,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ],
        )
    }

    /// Redeems a refresh token.
    pub fn refresh(&self, auth: ClientAuth<'_>, refresh_token: &str) -> HttpResponse {
        self.token(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
    }

    /// Revokes a token (RFC 7009; answers 200 with an empty body, also for
    /// an unknown token).
    pub fn revoke(&self, auth: ClientAuth<'_>, token: &str) -> HttpResponse {
        self.post_form("/token/revocation", auth, &[("token", token)])
    }

    /// `GET /protected` with `Authorization: Bearer <access_token>`.
    pub fn protected(&self, access_token: &str) -> HttpResponse {
        let bearer = format!("Bearer {access_token}");
        http_request(
            "GET",
            &self.url("/protected"),
            &[("Authorization", bearer.as_str())],
            None,
        )
    }

    /// Whether `access_token` is a live access token of this server (not
    /// expired, revoked or unknown): `/protected` answers 200 (true) or 401
    /// (false); anything else panics.
    pub fn is_live(&self, access_token: &str) -> bool {
        let response = self.protected(access_token);
        match response.status {
            200 => true,
            401 => false,
            _ => panic!("/protected answered {response:?}"),
        }
    }
}

impl Drop for OAuthServer {
    /// Kills the server (SIGKILL) and reaps it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `oauth_browser.py ARGS`; `Ok(stdout)` on exit 0, `Err(stderr)` on
/// exit 1 (the page that stopped it), panics otherwise.
fn run_browser(args: &[&str]) -> Result<String, String> {
    let out = Command::new(python())
        .arg(peers_dir().join("oauth_browser.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run oauth_browser.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(stderr),
        _ => panic!(
            "oauth_browser.py {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        ),
    }
}

/// Walks an authorization URL like a browser (cookies kept, the issuer's
/// redirects and forms followed) and returns the `Location` of the first
/// redirect off the issuer's origin, not followed: the client's redirect URI
/// with `code`, `state` and `iss`, or `error`, `error_description`, `state`
/// and `iss`. `Err` with the page when the issuer stops at an error page
/// (e.g. an unregistered redirect URI, or [`Interactions::Refuse`]).
pub fn try_browser_authorize(url: &str) -> Result<String, String> {
    run_browser(&["authorize", url]).map(|location| location.trim_end().to_owned())
}

/// [`try_browser_authorize`], panicking on an error page.
pub fn browser_authorize(url: &str) -> String {
    try_browser_authorize(url)
        .unwrap_or_else(|page| panic!("authorization of {url} stopped:\n{page}"))
}

/// Approves a device authorization like a user at `verification_uri` (or
/// `verification_uri_complete`): enters `user_code`, confirms, passes the
/// interaction. `Err` with the page when the server shows an error (a wrong
/// or used code, a denied interaction).
pub fn try_browser_approve_device(verification_uri: &str, user_code: &str) -> Result<(), String> {
    run_browser(&["device", verification_uri, user_code]).map(|_title| ())
}

/// [`try_browser_approve_device`], panicking on an error page.
pub fn browser_approve_device(verification_uri: &str, user_code: &str) {
    try_browser_approve_device(verification_uri, user_code)
        .unwrap_or_else(|page| panic!("device approval of {user_code} stopped:\n{page}"));
}

/// A fresh PKCE pair (RFC 7636, S256): `(code_verifier, code_challenge)`.
pub fn pkce_pair() -> (String, String) {
    let out = run_browser(&["pkce"]).unwrap_or_else(|e| panic!("oauth_browser.py pkce: {e}"));
    let mut lines = out.lines();
    match (lines.next(), lines.next()) {
        (Some(verifier), Some(challenge)) => (verifier.to_owned(), challenge.to_owned()),
        _ => panic!("oauth_browser.py pkce printed {out:?}"),
    }
}

/// One HTTP response, body as text.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (chunked transfer coding undone).
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the response if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The string member `name` of the JSON body; panics if absent.
    #[track_caller]
    pub fn field(&self, name: &str) -> String {
        match self.json().get(name) {
            Some(serde_json::Value::String(value)) => value.clone(),
            _ => panic!("no string {name:?} in {self:?}"),
        }
    }
}

/// One HTTP/1.1 exchange with `Connection: close` over a fresh TCP
/// connection to an `http://host:port/path` URL (no TLS, no redirects
/// followed). `headers` are sent as given; `Content-Length` is added for a
/// body. Panics on a network failure or an unparsable response.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let mut stream =
        TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect to {authority}: {e}"));
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(HTTP_TIMEOUT))
        .expect("write timeout");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream
        .write_all(&bytes)
        .unwrap_or_else(|e| panic!("send {method} {url}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the answer to {method} {url}: {e}"));
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "unparsable answer to {method} {url}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut payload = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let end = payload.windows(2).position(|w| w == b"\r\n")?;
            let size_line = std::str::from_utf8(&payload[..end]).ok()?;
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            payload = &payload[end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(payload.get(..size)?);
            payload = payload.get(size + 2..)?;
        }
        body
    } else if let Some(length) = header("content-length") {
        payload.get(..length.parse::<usize>().ok()?)?.to_vec()
    } else {
        payload.to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `application/x-www-form-urlencoded` encoding of one value: unreserved
/// characters as they are, space as `+`, everything else `%XX`.
pub fn form_encode_one(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode_one(k), form_encode_one(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Undoes [`form_encode_one`] (`+` is a space); `None` for a bad `%` escape
/// or a result that is not UTF-8.
pub fn form_decode_one(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The decoded query parameters of `url`, in order (the fragment ignored).
/// Panics on a malformed escape.
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let without_fragment = url.split('#').next().unwrap_or_default();
    let Some((_, query)) = without_fragment.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode =
                |s: &str| form_decode_one(s).unwrap_or_else(|| panic!("bad escape in {url}"));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first query parameter `name` of `url`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_params(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Standard base64 with padding (RFC 4648 section 4), for Basic credentials.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn form_encoding_round_trips() {
        let value = "a b+c/d?e=f&g%h~é";
        let encoded = form_encode_one(value);
        assert_eq!(encoded, "a+b%2Bc%2Fd%3Fe%3Df%26g%25h~%C3%A9");
        assert_eq!(form_decode_one(&encoded).as_deref(), Some(value));
        let url = format!("http://127.0.0.1:1/cb?code=x&state={encoded}#frag");
        assert_eq!(query_param(&url, "state").as_deref(), Some(value));
        assert_eq!(query_param(&url, "code").as_deref(), Some("x"));
        assert_eq!(query_param(&url, "iss"), None);
    }

    #[test]
    fn chunked_and_sized_bodies_parse() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let response = parse_response(chunked).expect("chunked");
        assert_eq!((response.status, response.body.as_str()), (200, "abcde"));
        let sized = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\nX-A: b\r\n\r\n{}";
        let response = parse_response(sized).expect("sized");
        assert_eq!((response.status, response.body.as_str()), (401, "{}"));
        assert_eq!(response.header("x-a"), Some("b"));
    }
}
