//! Driving the vault's OAuth side the way a user does, for the end-to-end
//! tests: an oauth2 scope linked to a provider on a running
//! [`OAuthServer`], and `mcplexerctl auth authorize --no-browser` completed
//! by the headless browser ([`browser_authorize`]) and a GET of the
//! loopback redirect the browser stopped at.
//!
//! Trust: test code only; a failed step panics with the tool's output.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

use crate::oauth::{OAuthServer, browser_authorize, http_request};
use crate::{Vault, bin};

/// Which of the server's clients the provider uses.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// `public-client`: no secret, PKCE.
    Public,
    /// `confidential-client`: HTTP Basic with its secret.
    Basic,
    /// `post-client`: the secret in the body.
    Post,
}

/// Creates provider `provider_id` for `server` (every endpoint, its issuer,
/// scopes `openid offline_access read`) with `client` (and its secret), and
/// an oauth2 scope `scope_id` on it, owned by the vault's caller.
pub fn configure(
    vault: &Vault,
    server: &OAuthServer,
    client: Client,
    provider_id: &str,
    scope_id: &str,
) {
    let (client_id, auth, secret) = match client {
        Client::Public => (crate::oauth::PUBLIC_CLIENT_ID, "client_secret_basic", None),
        Client::Basic => (
            crate::oauth::CONFIDENTIAL_CLIENT_ID,
            "client_secret_basic",
            Some(crate::oauth::CONFIDENTIAL_CLIENT_SECRET),
        ),
        Client::Post => (
            crate::oauth::POST_CLIENT_ID,
            "client_secret_post",
            Some(crate::oauth::POST_CLIENT_SECRET),
        ),
    };
    vault
        .ctl([
            "provider",
            "create",
            "--id",
            provider_id,
            "--name",
            provider_id,
            "--auth-url",
            &server.authorization_endpoint(),
            "--token-url",
            &server.token_endpoint(),
            "--device-auth-url",
            &server.device_authorization_endpoint(),
            "--revocation-url",
            &server.revocation_endpoint(),
            "--issuer",
            &server.issuer,
            "--client-id",
            client_id,
            "--client-auth",
            auth,
            "--scope",
            "openid",
            "--scope",
            "offline_access",
            "--scope",
            "read",
        ])
        .ok();
    if let Some(secret) = secret {
        vault
            .ctl_input(["provider", "set-secret", provider_id], secret.as_bytes())
            .ok();
    }
    vault
        .ctl([
            "scope",
            "create",
            "--id",
            scope_id,
            "--name",
            scope_id,
            "--type",
            "oauth2",
            "--provider",
            provider_id,
        ])
        .ok();
}

/// A running `mcplexerctl auth authorize SCOPE --no-browser`, with the
/// authorization URL it printed.
pub struct Authorizing {
    child: std::process::Child,
    /// The URL to open.
    pub url: String,
}

impl Authorizing {
    /// Starts it (with `extra` arguments) and reads the URL line.
    pub fn start(vault: &Vault, scope: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("mcplexerctl"))
            .arg("--socket")
            .arg(&vault.socket)
            .args(["auth", "authorize", scope, "--no-browser"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcplexerctl auth authorize");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the URL line");
        if line.trim().is_empty() {
            let out = child.wait_with_output().expect("wait");
            panic!(
                "auth authorize printed no URL: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self {
            child,
            url: line.trim().to_owned(),
        }
    }

    /// Delivers `redirect` (a loopback URL with code, state, iss) to the
    /// listener, as the browser would; returns the page's status code.
    pub fn deliver(&self, redirect: &str) -> u16 {
        http_request("GET", redirect, &[], None).status
    }

    /// Waits for it to exit; its whole output (stdout after the URL line).
    pub fn finish(mut self) -> Output {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let mut output = self.child.wait_with_output().expect("wait");
        output.stdout = stdout.into_bytes();
        output
    }
}

/// Authorizes `scope` the whole way: `auth authorize --no-browser`, the
/// headless browser at the provider, the redirect delivered. Panics unless
/// it exits 0.
pub fn authorize(vault: &Vault, scope: &str) -> Output {
    let flow = Authorizing::start(vault, scope, &[]);
    let redirect = browser_authorize(&flow.url);
    flow.deliver(&redirect);
    let out = flow.finish();
    assert!(
        out.status.success(),
        "auth authorize failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
