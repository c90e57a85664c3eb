//! `mcplexerctl ui` in a real browser: headless Chromium (Debian's
//! `/usr/bin/chromium`) driven by playwright-core through
//! `tests/peers/ui_browser.mjs`, clicking and typing as a person does.
//!
//! Proves, end to end with the real vault, the real UI and a real
//! authorization server (`oauth_server.mjs` with GitHub's endpoint paths and
//! a consent page a person must approve):
//! * signing in the way `mcplexerctl ui` does it when it opens the browser
//!   itself works: it hands `xdg-open` (here a stand-in first on its `PATH`
//!   that records what it was given) the path of a private page, not the
//!   link; the browser opens that page as a `file://` URL, follows it to
//!   the one-time link and lands signed in on Auth Scopes;
//! * an oauth2 scope made from the GitHub template (base_url = the test
//!   server's issuer, its client_secret_post client, scopes replaced) is
//!   authorized through the UI's Authorize button and the provider's Approve
//!   button, and the browser lands back on the scope with status `valid`
//!   (the callback completes only with the flow cookie Authorize set, so
//!   the browser sent it back on the provider's cross-site redirect);
//!   the vault agrees (`auth status`), and the access token it releases is
//!   live at the provider;
//! * the scope is linked to a route of a stdio server through the Routes
//!   form (`route list` shows its `auth_scope_id`);
//! * an env scope's value is set through the write-only field and its key is
//!   listed (`secret list` agrees);
//! * no secret value — the client secret, the env value, the access token —
//!   is in any page the browser held (saved HTML), any document it received,
//!   or anything the script printed.
//!
//! Screenshots and HTML of every step are kept in
//! `<CARGO_TARGET_TMPDIR>/ui-browser/` (`target/tmp/ui-browser/`), made anew
//! on each run.
//!
//! Waits: on processes and on the browser's own waits for pages; the one
//! poll, for the file the stand-in `xdg-open` writes, has a deadline.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcplexer_tests::oauth::{
    Interactions, OAuthOptions, OAuthServer, POST_CLIENT_ID, POST_CLIENT_SECRET,
};
use mcplexer_tests::peers::{node, peers_dir};
use mcplexer_tests::{Vault, contains_bytes, files_under};
use serde_json::{Value, json};

use crate::probe::probe;
use crate::ui::UiProcess;

/// Debian's Chromium (package `chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
/// The stdio server the route sends tools to (never started).
const SERVER: &str = "tools";
/// What the scope asks for: the test server knows none of GitHub's scopes.
const SCOPES: &str = "openid offline_access read";
/// The variable the browser names for the token (Token variable field).
const TOKEN_VAR: &str = "GITHUB_TOKEN";
/// The env scope's value, typed into the write-only field.
const ENV_KEY: &str = "DEPLOY_TOKEN";
const ENV_VALUE: &str = "env-secret-value-7c41d09e3b";

/// How long `mcplexerctl ui` may take to call `xdg-open`.
const OPENER_DEADLINE: Duration = Duration::from_secs(30);

/// Writes into `dir` an executable `xdg-open` that records its argument in
/// the file `opened` next to it (whole, by a rename); returns that file.
fn fake_opener(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let opened = dir.join("opened");
    let script = dir.join("xdg-open");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" > '{0}.part' && mv '{0}.part' '{0}'\n",
            opened.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    opened
}

/// What the stand-in `xdg-open` was given, once it has run.
fn wait_for_opener(opened: &Path) -> String {
    let deadline = Instant::now() + OPENER_DEADLINE;
    loop {
        match std::fs::read_to_string(opened) {
            Ok(text) => return text.trim_end_matches('\n').to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot read {}: {e}", opened.display()),
        }
        assert!(
            Instant::now() < deadline,
            "mcplexerctl ui did not run xdg-open within {OPENER_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the screenshots and pages go, emptied first.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-browser");
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot empty {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The browser and its driver must be installed: missing, the test fails
/// and says how to install them (a skipped browser test proves nothing).
fn require_browser() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)"
    );
    let driver = peers_dir().join("node_modules/playwright-core/package.json");
    assert!(
        driver.is_file(),
        "{} is missing: run tests/peers/install.sh",
        driver.display()
    );
}

#[test]
fn a_person_authorizes_links_and_sets_secrets_in_a_real_browser() {
    require_browser();
    let started = Instant::now();
    let server = OAuthServer::start_with(&OAuthOptions {
        interactions: Interactions::ConsentPage,
        github_routes: true,
        ..OAuthOptions::default()
    });
    let vault = Vault::start();
    vault.create_stdio_server(SERVER, "Tools");
    let opener_dir = tempfile::tempdir().unwrap();
    let runtime_dir = tempfile::tempdir().unwrap();
    let opened = fake_opener(opener_dir.path());
    let ui = UiProcess::start_opening(&vault, opener_dir.path(), runtime_dir.path());
    let artifacts = artifacts_dir();

    // The opener gets a page of this user's, never the link itself
    // (command lines are readable by every user).
    let page = wait_for_opener(&opened);
    assert!(
        Path::new(&page).starts_with(runtime_dir.path()) && !page.contains("token="),
        "xdg-open was given {page:?}"
    );
    let config = json!({
        "ui": ui.base,
        "login": format!("file://{page}"),
        "issuer": server.issuer,
        "client_id": POST_CLIENT_ID,
        "client_secret": POST_CLIENT_SECRET,
        "scopes": SCOPES,
        "server_id": SERVER,
        "token_var": TOKEN_VAR,
        "env_key": ENV_KEY,
        "env_value": ENV_VALUE,
    });
    let browser = Instant::now();
    let mut child = Command::new(node())
        .arg(peers_dir().join("ui_browser.mjs"))
        .arg(&artifacts)
        .current_dir(peers_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node ui_browser.mjs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let browser_took = browser.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "ui_browser.mjs failed ({}); screenshots and pages in {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        artifacts.display()
    );
    let summary: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ui_browser.mjs printed no JSON ({e}): {stdout}"));
    let scope = summary["oauth_scope"].as_str().expect("oauth_scope");
    let env_scope = summary["env_scope"].as_str().expect("env_scope");
    assert_eq!(summary["status"], "valid", "{summary:#}");

    // The vault agrees with what the pages showed.
    let status = vault.ctl(["--json", "auth", "status", scope]).json();
    assert_eq!(status.as_array().map(Vec::len), Some(1), "{status:#}");
    assert_eq!(status[0]["auth_scope_id"], scope, "{status:#}");
    assert_eq!(status[0]["status"], "valid", "{status:#}");
    let routes = vault.ctl(["--json", "route", "list"]).json();
    let linked: Vec<&Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["auth_scope_id"] == scope)
        .collect();
    assert_eq!(linked.len(), 1, "{routes:#}");
    assert_eq!(linked[0]["downstream_server_id"], SERVER, "{routes:#}");
    let keys = vault.ctl(["--json", "secret", "list", env_scope]).json();
    assert_eq!(keys, json!([ENV_KEY]), "{keys:#}");
    let providers = vault.ctl(["--json", "provider", "list"]).json();
    let provider = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["client_id"] == POST_CLIENT_ID)
        .unwrap_or_else(|| panic!("no provider with {POST_CLIENT_ID}: {providers:#}"));
    assert_eq!(provider["template"], "github", "{provider:#}");
    assert_eq!(
        provider["token_url"],
        format!("{}/login/oauth/access_token", server.issuer),
        "{provider:#}"
    );

    // The token the vault releases for the route's server is the
    // provider's, live.
    let released = probe(&vault, None, &["credential", scope, SERVER, "stdio"]).values();
    let token = released
        .get(TOKEN_VAR)
        .unwrap_or_else(|| panic!("no {TOKEN_VAR} released: {released:?}"))
        .clone();
    assert!(server.is_live(&token), "the released token is not live");

    // No secret value anywhere the browser or the script put anything.
    let files = files_under(&artifacts);
    let pages = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "html"))
        .count();
    let shots = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "png"))
        .count();
    assert!(
        pages >= 10 && shots == pages,
        "{pages} pages and {shots} screenshots saved in {}",
        artifacts.display()
    );
    let secrets = [
        ("the client secret", POST_CLIENT_SECRET),
        ("the env value", ENV_VALUE),
        ("the access token", token.as_str()),
    ];
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for (what, value) in secrets {
            assert!(
                !contains_bytes(&bytes, value.as_bytes()),
                "{what} is in {}",
                file.display()
            );
        }
    }
    for (what, value) in secrets {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "{what} is in the script's output"
        );
    }
    eprintln!(
        "ui_browser: {pages} steps in {:.1} s (whole test {:.1} s); artifacts in {}",
        browser_took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
}
