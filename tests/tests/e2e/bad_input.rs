//! Bad input gets a non-zero exit, a message that names the problem (object,
//! field, line and column where they exist) and changes nothing: an apply
//! document is taken whole or not at all, so the valid objects of a refused
//! document (here always an `auth_scope canary`) are never created and no
//! object is pruned. Covered: malformed YAML, unknown fields, bad globs,
//! dangling references, transport mismatches (apply and `route create`),
//! duplicate ids, plain-http URLs, deleting a server still in use, a message
//! over the 4 MiB limit, and a state directory or identity file that other
//! users could read (the daemon refuses to start and touches nothing).

// Helpers fail the test on a broken set-up step, like the harness.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mcplexer_proto::v1::admin_client::AdminClient;
use mcplexer_proto::v1::{ApplyRequest, StatusRequest};
use mcplexer_tests::{Run, Vault, bin, files_under, fixture};

/// The valid start of every refused document.
const CANARY: &str = "auth_scopes:\n  - id: canary\n    name: Canary\n    type: env\n";

/// A vault holding the seed examples (yaml) and four CLI objects (api):
/// scopes `env-scope` and `header-scope`, servers `local-tool` (stdio) and
/// `remote-tool` (https).
fn populated_vault() -> Vault {
    let vault = Vault::start();
    let seed = fixture("seed-examples.yaml");
    vault.ctl(["apply", "-f", &seed.display().to_string()]).ok();
    for command in [
        "scope create --id env-scope --name Env --type env",
        "scope create --id header-scope --name Header --type header",
        "server create --id local-tool --name Local --transport stdio --command /bin/true",
        "server create --id remote-tool --name Remote --transport http --url https://mcp.example.com/mcp",
    ] {
        vault.ctl(command.split(' ')).ok();
    }
    vault
}

/// Everything visible, to compare before and after a refused request.
fn snapshot(vault: &Vault) -> String {
    let mut out = vault.ctl(["export"]).ok().to_owned();
    for noun in ["scope", "provider", "server", "workspace", "route"] {
        out.push_str(vault.ctl(["--json", noun, "list"]).ok());
    }
    out
}

#[track_caller]
fn assert_refused(run: &Run, fragments: &[&str]) {
    assert_eq!(run.code, 4, "{run:#?}");
    for fragment in fragments {
        assert!(
            run.stderr.contains(fragment),
            "missing {fragment:?}: {run:#?}"
        );
    }
}

/// Applies `doc`; expects a refusal naming `fragments` and no change at all.
#[track_caller]
fn refused_apply(vault: &Vault, name: &str, doc: &str, fragments: &[&str]) {
    let before = snapshot(vault);
    let path = vault.write_file(name, doc);
    let run = vault.ctl(["apply", "-f", &path.display().to_string()]);
    assert_refused(&run, fragments);
    assert_eq!(snapshot(vault), before, "{name} changed something");
    let canary = vault.ctl(["scope", "show", "canary"]);
    assert_eq!(
        canary.code, 4,
        "{name}: the canary was created: {canary:#?}"
    );
}

#[test]
fn yaml_syntax_and_unknown_fields_name_line_and_column() {
    let vault = populated_vault();
    refused_apply(
        &vault,
        "malformed.yaml",
        &format!("{CANARY}   broken: [\n"),
        &["invalid YAML document", "line 5"],
    );
    refused_apply(
        &vault,
        "unknown-field.yaml",
        &format!("{CANARY}  - name: Colourful\n    type: env\n    colour: red\n"),
        &[
            "unknown field `colour`",
            "auth_scopes[1]",
            "line 7 column 5",
        ],
    );
}

#[test]
fn bad_glob_and_dangling_references_are_refused() {
    let vault = populated_vault();
    refused_apply(
        &vault,
        "bad-glob.yaml",
        &format!(
            "{CANARY}route_rules:\n  - name: Bad Glob\n    tool_match: [\"github__[\"]\n    downstream_server_id: local-tool\n"
        ),
        &["route_rule bad-glob: tool_match pattern \"github__[\" is not a valid glob"],
    );
    refused_apply(
        &vault,
        "dangling-route.yaml",
        &format!(
            "{CANARY}route_rules:\n  - name: Dangling Route\n    tool_match: [\"x__*\"]\n    downstream_server_id: missing-server\n"
        ),
        &[
            "route_rule dangling-route: downstream_server_id \"missing-server\" does not name a downstream_server",
        ],
    );
    refused_apply(
        &vault,
        "dangling-scope.yaml",
        &format!(
            "{CANARY}  - name: Dangling Scope\n    type: oauth2\n    oauth_provider_id: missing-provider\n"
        ),
        &[
            "auth_scope dangling-scope: oauth_provider_id \"missing-provider\" does not name an oauth_provider",
        ],
    );
}

#[test]
fn transport_mismatch_names_scope_server_and_rule() {
    let vault = populated_vault();
    refused_apply(
        &vault,
        "env-to-http.yaml",
        &format!(
            "{CANARY}route_rules:\n  - name: Env To Http\n    tool_match: [\"remote_tool__*\"]\n    downstream_server_id: remote-tool\n    auth_scope_id: env-scope\n"
        ),
        &[
            "route_rule env-to-http",
            "auth_scope env-scope (type env) cannot be used with downstream_server remote-tool (transport http)",
        ],
    );
    refused_apply(
        &vault,
        "header-to-stdio.yaml",
        &format!(
            "{CANARY}route_rules:\n  - name: Header To Stdio\n    tool_match: [\"local_tool__*\"]\n    downstream_server_id: local-tool\n    auth_scope_id: header-scope\n"
        ),
        &[
            "route_rule header-to-stdio",
            "auth_scope header-scope (type header) cannot be used with downstream_server local-tool (transport stdio)",
        ],
    );
    for (name, server, scope, message) in [
        (
            "Cli Env To Http",
            "remote-tool",
            "env-scope",
            "route_rule cli-env-to-http: auth_scope env-scope (type env) cannot be used with downstream_server remote-tool (transport http)",
        ),
        (
            "Cli Header To Stdio",
            "local-tool",
            "header-scope",
            "route_rule cli-header-to-stdio: auth_scope header-scope (type header) cannot be used with downstream_server local-tool (transport stdio)",
        ),
    ] {
        let before = snapshot(&vault);
        let run = vault.ctl([
            "route", "create", "--name", name, "--match", "x__*", "--server", server, "--scope",
            scope,
        ]);
        assert_refused(&run, &[message]);
        assert_eq!(snapshot(&vault), before);
    }
}

#[test]
fn duplicate_ids_and_plain_http_urls_are_refused() {
    let vault = populated_vault();
    refused_apply(
        &vault,
        "duplicate.yaml",
        &format!("{CANARY}  - name: Canary\n    type: header\n"),
        &["auth_scope canary: defined twice in the document (entries 1 and 2 of auth_scopes)"],
    );
    let plain = "downstream_server plain-http: url \"http://mcp.example.com/mcp\" uses plain http to a non-loopback host; use https";
    refused_apply(
        &vault,
        "plain-http.yaml",
        &format!(
            "{CANARY}downstream_servers:\n  - name: Plain Http\n    transport: http\n    url: http://mcp.example.com/mcp\n"
        ),
        &[plain],
    );
    let before = snapshot(&vault);
    let run = vault.ctl([
        "server",
        "create",
        "--name",
        "Plain Http",
        "--transport",
        "http",
        "--url",
        "http://mcp.example.com/mcp",
    ]);
    assert_refused(&run, &[plain]);
    assert_eq!(snapshot(&vault), before);
}

#[test]
fn deleting_a_server_still_routed_names_the_route_and_the_fix() {
    let vault = populated_vault();
    let before = snapshot(&vault);
    let run = vault.ctl(["server", "delete", "github"]);
    assert_refused(
        &run,
        &[
            "downstream_server github is still used by route_rule github-with-personal-token",
            "fix: mcplexerctl route delete github-with-personal-token",
        ],
    );
    assert_eq!(snapshot(&vault), before);
}

/// A valid apply document of more than 5 MiB (a canary and a long comment).
fn oversize_document() -> String {
    let mut doc = CANARY.to_owned();
    let comment = format!("# {}\n", "x".repeat(1022));
    while doc.len() <= 5 << 20 {
        doc.push_str(&comment);
    }
    doc
}

#[tokio::test]
async fn oversize_message_is_refused_and_the_daemon_keeps_serving() {
    let vault = populated_vault();
    let before = snapshot(&vault);
    let mut client = AdminClient::new(vault.channel().await).max_encoding_message_size(8 << 20);
    let err = client
        .apply(ApplyRequest {
            yaml: oversize_document(),
            dry_run: false,
        })
        .await
        .expect_err("a 5 MiB apply was accepted");
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert!(err.message().contains("too large"), "{err:?}");
    let status = client
        .status(StatusRequest {})
        .await
        .expect("status after oversize");
    assert_eq!(status.into_inner().caller_role, "admin");
    drop(client);
    assert_eq!(
        vault.ctl(["--json", "status"]).json()["caller_role"],
        "admin"
    );
    assert_eq!(snapshot(&vault), before);
}

#[test]
fn ctl_refuses_an_oversize_document_with_a_clear_error() {
    let vault = populated_vault();
    let before = snapshot(&vault);
    let path = vault.write_file("oversize.yaml", &oversize_document());
    let run = vault.ctl(["apply", "-f", &path.display().to_string()]);
    // Rejected input (4) or unusable local input (2), never "vault failed" (1).
    assert!(matches!(run.code, 2 | 4), "{run:#?}");
    assert!(
        run.stderr.contains("too large") || run.stderr.contains("limit"),
        "the message does not say the document is too large: {run:#?}"
    );
    assert_eq!(
        vault.ctl(["--json", "status"]).json()["caller_role"],
        "admin"
    );
    assert_eq!(snapshot(&vault), before);
}

/// Runs the daemon until it exits (60 s at most, then kills it and fails).
fn run_to_exit(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mcplexer-vaultd");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("wait mcplexer-vaultd"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("mcplexer-vaultd kept running with an unsafe state directory");
        }
    }
}

/// Every file under `dir` with its contents.
fn state_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read state file");
            (p, bytes)
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn state_dir_open_to_others_is_refused_before_serving() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    std::fs::create_dir(&state).expect("mkdir state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = root.path().join("run").join("vault.sock");
    let mut cmd = Command::new(bin("mcplexer-vaultd"));
    cmd.arg("--user")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("CREDENTIALS_DIRECTORY");
    let out = run_to_exit(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(stderr.contains("mode 0755"), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 700 {}", state.display())),
        "{stderr}"
    );
    assert_eq!(mode(&state), 0o755, "the daemon changed the mode");
    let left: Vec<_> = std::fs::read_dir(&state).expect("read_dir").collect();
    assert!(left.is_empty(), "the daemon wrote into it: {left:?}");
    assert!(!socket.exists() && !root.path().join("run").exists());
}

#[test]
fn identity_readable_by_group_is_refused_and_left_alone() {
    let mut vault = Vault::start();
    vault
        .ctl(["scope", "create", "--name", "Kept Scope", "--type", "env"])
        .ok();
    assert_eq!(vault.stop(), Some(0));
    let identity = vault.state_dir.join("identity.txt");
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let files = state_files(&vault.state_dir);
    assert!(files.contains_key(&identity) && files.contains_key(&vault.state_dir.join("vault.db")));
    let err = vault
        .spawn()
        .expect_err("the daemon started with a group-readable identity");
    assert!(
        err.contains(&format!("identity {} has mode 0640", identity.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("chmod 600 {}", identity.display())),
        "{err}"
    );
    assert_eq!(mode(&identity), 0o640, "the daemon changed the mode");
    assert!(
        state_files(&vault.state_dir) == files,
        "the state directory changed"
    );
    assert!(!vault.socket.exists());
    // Fixed as the message says, the vault starts with its objects intact.
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    vault.spawn().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        vault.ctl(["--json", "scope", "show", "kept-scope"]).json()["source"],
        "api"
    );
}
