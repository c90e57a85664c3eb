//! The credential RPC for a granted caller (root, owning the scopes),
//! DESIGN §5: the values released are exactly those set, the version moves
//! with `secret set` and the next release carries the new value, `scrub`
//! holds every value and the redaction hints come through; a header scope on
//! an http server is released as kind "header". Every release is audited
//! (kind, scope, server, tool, rule, uid 0, the probe's pid) and no value
//! reaches the audit log or the daemon's log. A scope requested for a
//! server of the wrong transport, either way, or a request whose transport
//! is not the server's, is refused with INVALID_ARGUMENT naming scope and
//! server, and audited as denied. `identity rotate` re-encrypts to a new
//! identity that replaces identity.txt (no identity.next.txt left), and
//! values are still released after a restart; an identity a rotation left
//! in identity.next.txt, because it could not replace identity.txt, is
//! installed by the next rotation, never deleted. `audit --follow --json`
//! streams a record written after it started, and only the kind asked for.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mcplexer_tests::Vault;
use serde_json::Value;

use crate::probe::{Probe, audit, one, pairs, probe, release_denied};

const GH_FIRST: &str = "ghp_first_0001";
const GH_SECOND: &str = "ghp_second_0002";
const NOTE: &str = "a $HOME `id` value; \"quoted\"";
const AUTH: &str = "Bearer hdr-token-1";
const API_KEY: &str = "key-42";

/// Servers `tools` (stdio) and `api` (http); env scope `gh` and header scope
/// `hdr`, both owned by root, with their values.
fn setup() -> Vault {
    let vault = Vault::start();
    let stdio = ["--transport", "stdio", "--command", "/bin/true"];
    let http = ["--transport", "http", "--url", "http://127.0.0.1:9/mcp"];
    for (id, rest) in [("tools", &stdio), ("api", &http)] {
        let args = ["server", "create", "--name", id, "--id", id];
        vault.ctl(args.iter().chain(rest.iter())).ok();
    }
    let scopes = "auth_scopes:
  - {id: gh, name: GitHub, type: env, redaction_hints: [GITHUB_TOKEN, password]}
  - {id: hdr, name: Header, type: header, redaction_hints: [authorization]}
route_rules:
  - {id: gh-rule, name: GitHub, tool_match: [\"github__*\"], downstream_server_id: tools, auth_scope_id: gh}\n";
    vault
        .ctl_input(["apply", "-f", "-"], scopes.as_bytes())
        .ok();
    for (scope, key, value) in [
        ("gh", "GITHUB_TOKEN", GH_FIRST),
        ("gh", "NOTE", NOTE),
        ("hdr", "Authorization", AUTH),
        ("hdr", "X-Api-Key", API_KEY),
    ] {
        set(&vault, scope, key, value);
    }
    vault
}

/// `secret set` from stdin; returns the new version.
fn set(vault: &Vault, scope: &str, key: &str, value: &str) -> u64 {
    let run = vault.ctl_input(
        ["--json", "secret", "set", scope, key],
        format!("{value}\n").as_bytes(),
    );
    run.json()["version"].as_u64().expect("version")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn scope_version(vault: &Vault, id: &str) -> u64 {
    vault.ctl(["--json", "scope", "show", id]).json()["version"]
        .as_u64()
        .unwrap()
}

fn release_gh(vault: &Vault, extra: &[&str]) -> Probe {
    let args: Vec<&str> = ["credential", "gh", "tools", "stdio"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    probe(vault, None, &args)
}

fn release_hdr(vault: &Vault) -> Probe {
    probe(vault, None, &["credential", "hdr", "api", "http"])
}

#[test]
fn released_values_follow_secret_set_and_every_release_is_audited() {
    let vault = setup();
    let first = release_gh(
        &vault,
        &["--tool", "github__create_issue", "--rule", "gh-rule"],
    );
    assert_eq!(
        first.values(),
        pairs(&[("GITHUB_TOKEN", GH_FIRST), ("NOTE", NOTE)])
    );
    assert_eq!(first.json["kind"], "env");
    assert_eq!(first.json["expires_at_ms"], 0);
    let mut scrub = strings(&first.json["scrub"]);
    scrub.sort();
    assert_eq!(scrub, [NOTE, GH_FIRST]);
    assert_eq!(
        strings(&first.json["redaction_hints"]),
        ["GITHUB_TOKEN", "password"]
    );
    let v1 = first.json["version"].as_u64().unwrap();
    assert!(v1 > 0);
    assert_eq!(v1, scope_version(&vault, "gh"));

    let v2 = set(&vault, "gh", "GITHUB_TOKEN", GH_SECOND);
    assert_ne!(v2, v1);
    assert_eq!(scope_version(&vault, "gh"), v2);
    let second = release_gh(&vault, &[]);
    assert_eq!(second.json["version"], v2);
    assert_eq!(
        second.values(),
        pairs(&[("GITHUB_TOKEN", GH_SECOND), ("NOTE", NOTE)])
    );
    let scrub = strings(&second.json["scrub"]);
    assert!(scrub.contains(&GH_SECOND.to_owned()) && !scrub.contains(&GH_FIRST.to_owned()));

    let header = release_hdr(&vault);
    assert_eq!(header.json["kind"], "header");
    assert_eq!(
        header.values(),
        pairs(&[("Authorization", AUTH), ("X-Api-Key", API_KEY)])
    );
    assert_eq!(strings(&header.json["redaction_hints"]), ["authorization"]);
    assert_eq!(strings(&header.json["scrub"]).len(), 2);

    let releases: Vec<Value> = audit(&vault)
        .into_iter()
        .filter(|r| r["kind"] == "release")
        .collect();
    let expected = [
        (&first, "gh", "tools", "github__create_issue", "gh-rule"),
        // Without --rule the probe names the rule a proxy would follow.
        (&second, "gh", "tools", "", "gh-rule"),
        (&header, "hdr", "api", "", ""),
    ];
    assert_eq!(releases.len(), expected.len(), "{releases:#?}");
    for (r, (p, scope, server, tool, rule)) in releases.iter().zip(expected) {
        assert_eq!(
            (
                &r["auth_scope_id"],
                &r["downstream_server_id"],
                &r["tool"],
                &r["route_rule_id"]
            ),
            (
                &Value::from(scope),
                &Value::from(server),
                &Value::from(tool),
                &Value::from(rule)
            ),
            "{r:#}"
        );
        assert_eq!(
            (&r["uid"], &r["pid"], &r["status"]),
            (
                &Value::from(0),
                &Value::from(p.pid()),
                &Value::from("success")
            )
        );
        assert_eq!(r["error"], "");
    }

    // No value ever reaches the audit log (any field) or the daemon's log.
    let fields: Vec<String> = audit(&vault)
        .iter()
        .flat_map(|r| r.as_object().unwrap().values())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let log = vault.log();
    for value in [GH_FIRST, GH_SECOND, NOTE, AUTH, "hdr-token-1", API_KEY] {
        assert!(
            !fields.iter().any(|f| f.contains(value)),
            "audit holds {value:?}"
        );
        assert!(!log.contains(value), "daemon log holds {value:?}");
    }
}

#[test]
fn a_scope_for_a_server_of_the_wrong_transport_is_refused_and_audited() {
    let vault = setup();
    // No route can carry an env scope to an http server (the vault refuses
    // to make one), so only a release that names no route can ask.
    let env_on_http = ["credential", "gh", "api", "http", "--rule", ""];
    let p = probe(&vault, None, &env_on_http);
    let message = p.refused(4, "InvalidArgument");
    let want =
        "auth_scope gh (type env) cannot be used with downstream_server api (transport http)";
    assert!(message.starts_with(want), "{message}");
    assert_eq!(p.json["vault_code"], "TRANSPORT_MISMATCH");
    let q = probe(&vault, None, &["credential", "hdr", "tools", "stdio"]);
    let message = q.refused(4, "InvalidArgument");
    let want = "auth_scope hdr (type header) cannot be used with downstream_server tools (transport stdio)";
    assert!(message.starts_with(want), "{message}");
    // The request's transport must be the server's own.
    let r = probe(&vault, None, &["credential", "gh", "api", "stdio"]);
    let message = r.refused(4, "InvalidArgument");
    let want = "downstream_server api uses transport http, but the request says stdio";
    assert_eq!(message, want);

    let records = audit(&vault);
    for (p, scope, server, rule) in [
        (&p, "gh", "api", ""),
        (&q, "hdr", "tools", ""),
        (&r, "gh", "api", ""),
    ] {
        let record = one(&records, scope, |r| release_denied(r, 0, scope, p.pid()));
        assert_eq!(record["downstream_server_id"], server);
        assert_eq!(record["route_rule_id"], rule);
        assert_eq!(record["error"], p.json["message"]);
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r["status"] == "success" && r["kind"] == "release")
            .count(),
        0
    );
}

/// The `# public key:` line of an identity file.
fn public_key(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("# public key: "));
    line.unwrap_or_else(|| panic!("no public key line in {text}"))
        .to_owned()
}

#[test]
fn identity_rotate_reencrypts_and_values_survive_a_restart() {
    let mut vault = setup();
    let identity = vault.state_dir.join("identity.txt");
    let old = vault.ctl(["--json", "status"]).json()["recipient"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(old.starts_with("age1"), "{old}");
    assert_eq!(public_key(&identity), old);
    let old_file = std::fs::read_to_string(&identity).unwrap();

    let rotated = vault.ctl(["--json", "identity", "rotate"]).json();
    let new = rotated["recipient"].as_str().unwrap().to_owned();
    assert!(new.starts_with("age1") && new != old, "{rotated:#}");
    assert_eq!(
        rotated["reencrypted"], 2,
        "two scopes hold secrets: {rotated:#}"
    );
    assert_eq!(
        vault.ctl(["--json", "status"]).json()["recipient"],
        new.as_str()
    );
    assert_eq!(public_key(&identity), new);
    let mode = std::os::unix::fs::PermissionsExt::mode(&identity.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "identity.txt mode {mode:o}");
    assert_ne!(std::fs::read_to_string(&identity).unwrap(), old_file);
    assert!(!vault.state_dir.join("identity.next.txt").exists());
    let gh = pairs(&[("GITHUB_TOKEN", GH_FIRST), ("NOTE", NOTE)]);
    let hdr = pairs(&[("Authorization", AUTH), ("X-Api-Key", API_KEY)]);
    assert_eq!(release_gh(&vault, &[]).values(), gh);

    vault.restart();
    assert_eq!(
        vault.ctl(["--json", "status"]).json()["recipient"],
        new.as_str()
    );
    assert_eq!(release_gh(&vault, &[]).values(), gh);
    assert_eq!(release_hdr(&vault).values(), hdr);
    // New values are encrypted to the new identity too.
    set(&vault, "gh", "GITHUB_TOKEN", GH_SECOND);
    assert_eq!(release_gh(&vault, &[]).values()["GITHUB_TOKEN"], GH_SECOND);
    let records = audit(&vault);
    let rotations: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "Admin/RotateIdentity")
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:#?}");
    assert_eq!(
        (&rotations[0]["status"], &rotations[0]["uid"]),
        (&Value::from("success"), &Value::from(0))
    );

    assert_eq!(vault.stop(), Some(0));
    let db = rusqlite::Connection::open(vault.state_dir.join("vault.db")).unwrap();
    let stored: String = db
        .query_row("SELECT value FROM meta WHERE key = 'recipient'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, new);
    assert!(!vault.state_dir.join("identity.next.txt").exists());
}

/// A rotation that committed but could not replace identity.txt leaves
/// the identity the database is encrypted to in identity.next.txt. The
/// next rotation installs it before it starts, so that one failing in its
/// transaction loses nothing: the vault starts again on the live identity.
#[test]
fn a_rotation_left_pending_is_installed_by_the_next_even_when_that_one_fails() {
    let mut vault = setup();
    let identity = vault.state_dir.join("identity.txt");
    let pending = vault.state_dir.join("identity.next.txt");
    // identity.txt cannot be replaced while a non-empty directory stands
    // in its place.
    let saved = vault.root.path().join("identity.saved");
    std::fs::rename(&identity, &saved).unwrap();
    std::fs::create_dir(&identity).unwrap();
    std::fs::write(identity.join("in-the-way"), "").unwrap();
    let first = vault.ctl(["--json", "identity", "rotate"]).json();
    let live = first["recipient"].as_str().unwrap().to_owned();
    assert_eq!(public_key(&pending), live, "{first:#}");
    std::fs::remove_dir_all(&identity).unwrap();
    std::fs::rename(&saved, &identity).unwrap();
    assert_ne!(public_key(&identity), live);

    // The next rotation fails in its transaction: a stored value no longer
    // decrypts.
    let db = rusqlite::Connection::open(vault.state_dir.join("vault.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE scope_secrets SET ciphertext = x'00' WHERE scope_id = 'hdr'",
        [],
    )
    .unwrap();
    drop(db);
    let failed = vault.ctl(["identity", "rotate"]);
    assert_ne!(failed.code, 0, "{failed:#?}");
    assert_eq!(public_key(&identity), live, "{failed:#?}");
    assert!(!pending.exists());

    vault.restart();
    assert_eq!(
        vault.ctl(["--json", "status"]).json()["recipient"],
        live.as_str()
    );
    assert_eq!(
        release_gh(&vault, &[]).values(),
        pairs(&[("GITHUB_TOKEN", GH_FIRST), ("NOTE", NOTE)])
    );
    let records = audit(&vault);
    for status in ["success", "error"] {
        one(&records, status, |r| {
            r["action"] == "Admin/RotateIdentity" && r["status"] == status
        });
    }
}

/// Reads JSON lines from `lines` until one satisfies `pred`; returns the
/// lines read, that one last. A generous deadline keeps a broken stream
/// from hanging the test (it is not used for synchronisation).
#[track_caller]
fn read_until(
    lines: &mpsc::Receiver<String>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no {what} on the followed stream ({e}); got {seen:#?}"));
        let record: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let done = pred(&record);
        seen.push(record);
        if done {
            return seen;
        }
    }
}

#[test]
fn audit_follow_streams_records_written_after_it_started() {
    let vault = setup();
    release_gh(&vault, &["--tool", "before__follow", "--rule", ""]).values();
    let last = audit(&vault)
        .iter()
        .filter(|r| r["kind"] == "release")
        .map(|r| r["id"].as_u64().unwrap())
        .max()
        .unwrap();

    let mut child = Command::new(mcplexer_tests::bin("mcplexerctl"))
        .arg("--socket")
        .arg(&vault.socket)
        .args(["--json", "audit", "--follow", "--kind", "release"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The backlog ends with the last release: the stream is subscribed.
    let backlog = read_until(&lines, "backlog", |r| r["id"] == last);
    assert_eq!(backlog.last().unwrap()["tool"], "before__follow");

    // Written after the follow started: an admin record (filtered out by
    // --kind) and then a release.
    set(&vault, "gh", "NOTE", "changed");
    let marker = release_gh(&vault, &["--tool", "follow__marker", "--rule", ""]);
    assert_eq!(marker.values()["NOTE"], "changed");
    let streamed = read_until(&lines, "the new release", |r| r["tool"] == "follow__marker");
    let record = streamed.last().unwrap();
    assert!(record["id"].as_u64().unwrap() > last, "{record:#}");
    assert_eq!(
        (&record["kind"], &record["status"]),
        (&Value::from("release"), &Value::from("success"))
    );
    assert_eq!(
        (&record["auth_scope_id"], &record["uid"]),
        (&Value::from("gh"), &Value::from(0))
    );
    assert_eq!(record["pid"], marker.pid());
    assert!(
        streamed.iter().all(|r| r["kind"] == "release"),
        "{streamed:#?}"
    );
    assert_eq!(streamed.len(), 1, "{streamed:#?}");

    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
}
