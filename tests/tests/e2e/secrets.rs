//! Secret values are write-only and never stored in clear: after `secret set`
//! no byte sequence of the value (the value, any 12-byte run of it, its hex or
//! base64 form) is in any file of the state directory, while the daemon runs
//! and after it stopped; `secret list`, `scope show`, `export`, `audit` and the
//! daemon's log show keys only; `secret delete` removes the key. Values that a
//! scope cannot carry are refused, naming the scope: any value on an oauth2
//! scope (with the `mcplexerctl auth authorize` fix), env keys that are not
//! variable names, header values with CR or LF.

// Helpers fail the test on a broken set-up step, like the harness.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mcplexer_tests::{Run, Vault, base64, contains_bytes, files_under, fixture};

/// A 40-character value unique to this call (time, pid and a counter).
fn unique_value() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let mixed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut x = mixed | 1;
    (0..40)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Every form of the value that must not be found, with a label.
fn needles(value: &str) -> Vec<(String, Vec<u8>)> {
    let v = value.as_bytes();
    let mut out = vec![("the value".to_owned(), v.to_vec())];
    for (i, run) in v.windows(12).enumerate() {
        out.push((format!("bytes {i}..{} of the value", i + 12), run.to_vec()));
    }
    let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("hex".into(), hex.clone().into_bytes()));
    out.push(("HEX".into(), hex.to_uppercase().into_bytes()));
    // Base64 of the value at any alignment contains one of these.
    for offset in 0..3 {
        let chunk = &v[offset..offset + 36];
        out.push((format!("base64 at {offset}"), base64(chunk, false)));
        out.push((format!("base64url at {offset}"), base64(chunk, true)));
    }
    out
}

/// Panics if any form of `value` is in any file under the state directory.
fn assert_not_on_disk(vault: &Vault, value: &str, when: &str) {
    let files = files_under(&vault.state_dir);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for expected in ["identity.txt", "vault.db"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{when}: no {expected} in {names:?}"
        );
    }
    let needles = needles(value);
    for file in &files {
        let bytes = std::fs::read(file).expect("read state file");
        for (label, needle) in &needles {
            assert!(
                !contains_bytes(&bytes, needle),
                "{when}: {label} found in {}",
                file.display()
            );
        }
    }
}

fn assert_no_value(what: &str, text: &str, value: &str) {
    for (label, needle) in needles(value) {
        assert!(
            !contains_bytes(text.as_bytes(), &needle),
            "{label} found in {what}: {text}"
        );
    }
}

fn seeded_vault() -> Vault {
    let vault = Vault::start();
    let path = fixture("seed-examples.yaml");
    vault.ctl(["apply", "-f", &path.display().to_string()]).ok();
    vault
}

fn secret_keys(vault: &Vault, scope: &str) -> serde_json::Value {
    vault.ctl(["--json", "secret", "list", scope]).json()
}

#[track_caller]
fn assert_rejected(run: &Run, fragments: &[&str]) {
    assert_eq!(run.code, 4, "{run:#?}");
    for fragment in fragments {
        assert!(
            run.stderr.contains(fragment),
            "missing {fragment:?}: {run:#?}"
        );
    }
}

#[test]
fn secret_value_never_reaches_disk_or_any_output() {
    let mut vault = seeded_vault();
    let value = unique_value();
    let key = "GITHUB_PERSONAL_ACCESS_TOKEN";
    let set = vault.ctl_input(
        ["secret", "set", "github-token", key],
        format!("{value}\n").as_bytes(),
    );
    set.ok();
    assert_no_value(
        "secret set output",
        &format!("{}{}", set.stdout, set.stderr),
        &value,
    );
    assert_not_on_disk(&vault, &value, "while the daemon runs");

    assert_eq!(
        vault.ctl(["secret", "list", "github-token"]).ok(),
        format!("KEY\n{key}\n")
    );
    assert_eq!(
        secret_keys(&vault, "github-token"),
        serde_json::json!([key])
    );

    let show = vault.ctl(["--json", "scope", "show", "github-token"]);
    let scope = show.json();
    assert_eq!(scope["secret_keys"], serde_json::json!([key]));
    assert_eq!(scope["version"], 1);
    assert_no_value("scope show --json", &show.stdout, &value);

    let export = vault.ctl(["export"]);
    assert!(export.ok().contains("id: github-token"), "{export:#?}");
    assert_no_value("export", &export.stdout, &value);

    let audit = vault.ctl(["--json", "audit"]);
    let records = audit.json();
    assert!(
        records
            .as_array()
            .expect("audit array")
            .iter()
            .any(|r| r["action"] == "Admin/SetSecret" && r["status"] == "success"),
        "the set is not audited: {records:#}"
    );
    assert_no_value("audit --json", &audit.stdout, &value);

    assert_eq!(vault.stop(), Some(0));
    assert_not_on_disk(&vault, &value, "after stop");
    assert_no_value("the daemon's log", &vault.log(), &value);
}

#[test]
fn secret_delete_removes_the_key() {
    let vault = seeded_vault();
    for key in ["FIRST_TOKEN", "SECOND_TOKEN"] {
        vault
            .ctl_input(
                ["secret", "set", "github-personal-token", key],
                unique_value().as_bytes(),
            )
            .ok();
    }
    assert_eq!(
        secret_keys(&vault, "github-personal-token"),
        serde_json::json!(["FIRST_TOKEN", "SECOND_TOKEN"])
    );
    vault
        .ctl(["secret", "delete", "github-personal-token", "FIRST_TOKEN"])
        .ok();
    assert_eq!(
        secret_keys(&vault, "github-personal-token"),
        serde_json::json!(["SECOND_TOKEN"])
    );
    let again = vault.ctl(["secret", "delete", "github-personal-token", "FIRST_TOKEN"]);
    assert_rejected(
        &again,
        &[
            "auth_scope github-personal-token has no secret \"FIRST_TOKEN\"",
            "fix: mcplexerctl secret list github-personal-token",
        ],
    );
    let shown = vault
        .ctl(["--json", "scope", "show", "github-personal-token"])
        .json();
    assert_eq!(shown["secret_keys"], serde_json::json!(["SECOND_TOKEN"]));
}

#[test]
fn oauth2_scope_refuses_secret_set_with_authorize_fix() {
    let vault = seeded_vault();
    let value = unique_value();
    let run = vault.ctl_input(
        ["secret", "set", "custom-oauth", "ACCESS_TOKEN"],
        value.as_bytes(),
    );
    assert_rejected(
        &run,
        &[
            "auth_scope custom-oauth is an oauth2 scope",
            "fix: mcplexerctl auth authorize custom-oauth",
        ],
    );
    assert_no_value("the refusal", &run.stderr, &value);
    let scope = vault
        .ctl(["--json", "scope", "show", "custom-oauth"])
        .json();
    assert_eq!(scope["secret_keys"], serde_json::json!([]));
    assert_eq!(scope["version"], 0);
    assert_not_on_disk(&vault, &value, "after the refused set");
}

#[test]
fn env_keys_must_be_variable_names() {
    let vault = Vault::start();
    vault
        .ctl(["scope", "create", "--name", "Env Scope", "--type", "env"])
        .ok();
    for key in ["1TOKEN", "MY-TOKEN", "MY.TOKEN", "TOKEN="] {
        let run = vault.ctl_input(["secret", "set", "env-scope", key], b"some-value");
        assert_rejected(
            &run,
            &[
                "auth_scope env-scope is an env scope",
                &format!("key {key:?} is not a valid environment variable name"),
            ],
        );
    }
    assert_eq!(secret_keys(&vault, "env-scope"), serde_json::json!([]));
    // The refusal is about the name: a valid one is accepted.
    vault
        .ctl_input(["secret", "set", "env-scope", "_MY_TOKEN1"], b"some-value")
        .ok();
    assert_eq!(
        secret_keys(&vault, "env-scope"),
        serde_json::json!(["_MY_TOKEN1"])
    );
}

#[test]
fn header_values_with_cr_or_lf_are_refused() {
    let vault = Vault::start();
    vault
        .ctl([
            "scope",
            "create",
            "--name",
            "Header Scope",
            "--type",
            "header",
        ])
        .ok();
    // One trailing newline is stripped by the CLI, so each bad byte is inside.
    for value in [&b"abc\rdef"[..], b"abc\ndef", b"abc\r\nX-Injected: 1"] {
        let run = vault.ctl_input(["secret", "set", "header-scope", "X-Api-Key"], value);
        assert_rejected(
            &run,
            &[
                "auth_scope header-scope",
                "the value for header X-Api-Key contains CR, LF or NUL",
            ],
        );
    }
    assert_eq!(secret_keys(&vault, "header-scope"), serde_json::json!([]));
    vault
        .ctl_input(["secret", "set", "header-scope", "X-Api-Key"], b"abc def\n")
        .ok();
    assert_eq!(
        secret_keys(&vault, "header-scope"),
        serde_json::json!(["X-Api-Key"])
    );
}
