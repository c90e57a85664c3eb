//! The seed documentation's YAML examples (`tests/fixtures/seed-examples.yaml`)
//! apply unchanged: ids are derived from names, the env scope keeps its
//! redaction hints and the oauth2 scope links the provider named "Custom
//! Provider". `apply` is declarative: `--dry-run` changes nothing, a second
//! apply is a no-op, `export` round-trips, objects that leave the file are
//! pruned (exactly those), and objects created with the CLI (`source: api`)
//! are never touched, pruned or overwritten by a document. The daemon's
//! `--config FILE` applies the same document at start.

// Helpers fail the test on a broken set-up step, like the harness.
#![allow(clippy::expect_used)]

use mcplexer_tests::{Run, Vault, VaultOptions, fixture};
use serde_json::Value;

const SCOPES: [&str; 4] = [
    "api-key",
    "custom-oauth",
    "github-personal-token",
    "github-token",
];

/// Every change the seed document makes on a fresh vault, as (action, kind, id).
const SEED_CREATES: [(&str, &str, &str); 7] = [
    ("create", "auth_scope", "api-key"),
    ("create", "auth_scope", "custom-oauth"),
    ("create", "auth_scope", "github-personal-token"),
    ("create", "auth_scope", "github-token"),
    ("create", "oauth_provider", "custom-provider"),
    ("create", "downstream_server", "github"),
    ("create", "route_rule", "github-with-personal-token"),
];

fn seed_path() -> String {
    fixture("seed-examples.yaml").display().to_string()
}

fn seed_text() -> String {
    std::fs::read_to_string(fixture("seed-examples.yaml")).expect("read seed fixture")
}

/// `--json apply -f PATH [extra...]`.
fn apply_json(vault: &Vault, path: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--json", "apply", "-f", path];
    args.extend_from_slice(extra);
    vault.ctl(args)
}

/// The changes of an apply answer as sorted (action, kind, id) triples.
fn changes(answer: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = answer["changes"]
        .as_array()
        .expect("changes array")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().expect("action").to_owned(),
                c["kind"].as_str().expect("kind").to_owned(),
                c["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn triples(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = list
        .iter()
        .map(|(a, k, i)| ((*a).to_owned(), (*k).to_owned(), (*i).to_owned()))
        .collect();
    out.sort();
    out
}

/// `--json <noun> list`.
fn list(vault: &Vault, noun: &str) -> Vec<Value> {
    vault
        .ctl(["--json", noun, "list"])
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("{noun} list is not an array"))
        .clone()
}

/// The ids of `<noun> list`, sorted.
fn ids(vault: &Vault, noun: &str) -> Vec<String> {
    let mut out: Vec<String> = list(vault, noun)
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    out.sort();
    out
}

fn find<'a>(objects: &'a [Value], id: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["id"] == id)
        .unwrap_or_else(|| panic!("no object {id} in {objects:#?}"))
}

/// Everything a user can see, as one comparable value.
fn state(vault: &Vault) -> Value {
    serde_json::json!({
        "export": vault.ctl(["export"]).ok(),
        "scopes": list(vault, "scope"),
        "providers": list(vault, "provider"),
        "servers": list(vault, "server"),
        "workspaces": list(vault, "workspace"),
        "routes": list(vault, "route"),
    })
}

/// Checks the objects the seed document defines, as listed by the CLI.
fn assert_seed_objects(vault: &Vault) {
    assert_eq!(ids(vault, "scope"), SCOPES);
    let scopes = list(vault, "scope");
    for s in &scopes {
        assert_eq!(s["source"], "yaml", "{s:#}");
    }
    let gh = find(&scopes, "github-token");
    assert_eq!(gh["name"], "GitHub Token");
    assert_eq!(gh["type"], "env");
    assert_eq!(
        gh["redaction_hints"],
        serde_json::json!(["GITHUB_PERSONAL_ACCESS_TOKEN", "password", "secret"])
    );
    assert_eq!(find(&scopes, "api-key")["type"], "header");
    let oauth = find(&scopes, "custom-oauth");
    assert_eq!(oauth["type"], "oauth2");
    assert_eq!(oauth["oauth_provider_id"], "custom-provider");
    assert_eq!(oauth["status"], "unauthorized");
    assert_eq!(find(&scopes, "github-personal-token")["type"], "env");

    assert_eq!(ids(vault, "provider"), ["custom-provider"]);
    let provider = &list(vault, "provider")[0];
    assert_eq!(provider["name"], "Custom Provider");
    assert_eq!(provider["auth_url"], "https://auth.example.com/authorize");
    assert_eq!(provider["token_url"], "https://auth.example.com/token");
    assert_eq!(provider["scopes"], serde_json::json!(["read", "write"]));
    assert_eq!(provider["source"], "yaml");

    assert_eq!(ids(vault, "server"), ["github"]);
    let server = &list(vault, "server")[0];
    assert_eq!(server["transport"], "stdio");
    assert_eq!(server["command"], "npx");
    assert_eq!(
        server["args"],
        serde_json::json!(["-y", "@modelcontextprotocol/server-github"])
    );
    assert_eq!(server["tool_namespace"], "github");

    assert_eq!(ids(vault, "route"), ["github-with-personal-token"]);
    let route = &list(vault, "route")[0];
    assert_eq!(route["workspace_id"], "default");
    assert_eq!(route["tool_match"], serde_json::json!(["github__*"]));
    assert_eq!(route["downstream_server_id"], "github");
    assert_eq!(route["auth_scope_id"], "github-personal-token");
    assert_eq!(route["policy"], "allow");
    assert_eq!(route["source"], "yaml");

    // `workspaces: []` adds nothing; the built-in `default` is still there.
    assert_eq!(ids(vault, "workspace"), ["default"]);
}

#[test]
fn seed_examples_apply_unchanged_with_derived_ids() {
    let vault = Vault::start();
    let answer = apply_json(&vault, &seed_path(), &[]).json();
    assert_eq!(answer["dry_run"], false);
    assert_eq!(changes(&answer), triples(&SEED_CREATES));
    assert_seed_objects(&vault);
}

#[test]
fn dry_run_on_a_fresh_vault_shows_the_creates_and_changes_nothing() {
    let vault = Vault::start();
    let before = state(&vault);
    let answer = apply_json(&vault, &seed_path(), &["--dry-run"]).json();
    assert_eq!(answer["dry_run"], true);
    assert_eq!(changes(&answer), triples(&SEED_CREATES));
    let text = vault.ctl(["apply", "-f", &seed_path(), "--dry-run"]);
    let lines: Vec<Vec<&str>> = text
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (action, kind, id) in SEED_CREATES {
        assert!(
            lines.iter().any(|l| l[..] == [action, kind, id, "-"]),
            "{id} missing: {text:#?}"
        );
    }
    assert!(
        text.stdout.ends_with("dry run: nothing was changed\n"),
        "{text:#?}"
    );
    assert_eq!(state(&vault), before);
    assert!(ids(&vault, "scope").is_empty());
    assert_eq!(vault.ctl(["--json", "status"]).json()["scopes"], 0);
}

#[test]
fn second_apply_of_the_same_file_reports_no_changes() {
    let vault = Vault::start();
    vault.ctl(["apply", "-f", &seed_path()]).ok();
    let before = state(&vault);
    let again = vault.ctl(["apply", "-f", &seed_path()]);
    assert_eq!(again.ok(), "no changes\n");
    assert!(changes(&apply_json(&vault, &seed_path(), &[]).json()).is_empty());
    assert_eq!(state(&vault), before);
}

#[test]
fn export_reapplied_to_a_fresh_vault_gives_the_same_objects() {
    let first = Vault::start();
    first.ctl(["apply", "-f", &seed_path()]).ok();
    let exported = first.ctl(["export"]).ok().to_owned();
    assert!(exported.contains("id: custom-provider"), "{exported}");

    let second = Vault::start();
    let path = second.write_file("exported.yaml", &exported);
    let answer = apply_json(&second, &path.display().to_string(), &[]).json();
    assert_eq!(changes(&answer), triples(&SEED_CREATES));
    assert_eq!(state(&second), state(&first));
    assert_seed_objects(&second);

    // The export is a fixed point: applying it where it came from is a no-op.
    let path = first.write_file("exported.yaml", &exported);
    let again = first.ctl(["apply", "-f", &path.display().to_string()]);
    assert_eq!(again.ok(), "no changes\n");
}

#[test]
fn removing_an_object_from_the_file_prunes_exactly_it() {
    let vault = Vault::start();
    vault.ctl(["apply", "-f", &seed_path()]).ok();
    let before = state(&vault);
    let full = seed_text();
    let api_key = "  - name: \"API Key\"\n    type: header\n";
    let without = full.replacen(api_key, "", 1);
    assert_ne!(
        without, full,
        "the fixture no longer holds the API Key scope"
    );
    let path = vault.write_file("without-api-key.yaml", &without);
    let answer = apply_json(&vault, &path.display().to_string(), &[]).json();
    assert_eq!(
        changes(&answer),
        triples(&[("delete", "auth_scope", "api-key")])
    );
    assert_eq!(
        ids(&vault, "scope"),
        ["custom-oauth", "github-personal-token", "github-token"]
    );
    let after = state(&vault);
    for key in ["providers", "servers", "workspaces", "routes"] {
        assert_eq!(after[key], before[key], "{key} changed");
    }
    // Putting it back recreates exactly it.
    let answer = apply_json(&vault, &seed_path(), &[]).json();
    assert_eq!(
        changes(&answer),
        triples(&[("create", "auth_scope", "api-key")])
    );
}

#[test]
fn api_objects_are_never_touched_or_pruned_by_apply() {
    let vault = Vault::start();
    let created = vault
        .ctl([
            "--json",
            "scope",
            "create",
            "--name",
            "Manual Scope",
            "--type",
            "env",
        ])
        .json();
    assert_eq!(created["id"], "manual-scope");
    assert_eq!(created["source"], "api");
    vault
        .ctl_input(
            ["secret", "set", "manual-scope", "TOKEN"],
            b"manual-value-1\n",
        )
        .ok();
    let show = || {
        vault
            .ctl(["--json", "scope", "show", "manual-scope"])
            .json()
    };
    let manual = show();
    assert_eq!(manual["secret_keys"], serde_json::json!(["TOKEN"]));

    let answer = apply_json(&vault, &seed_path(), &[]).json();
    assert_eq!(changes(&answer), triples(&SEED_CREATES));
    assert_eq!(show(), manual);

    // An empty document prunes every yaml object, and only those.
    let empty = vault.write_file("empty.yaml", "");
    let answer = apply_json(&vault, &empty.display().to_string(), &[]).json();
    let deletes: Vec<_> = SEED_CREATES
        .iter()
        .map(|(_, kind, id)| ("delete", *kind, *id))
        .collect();
    assert_eq!(changes(&answer), triples(&deletes));
    assert_eq!(ids(&vault, "scope"), ["manual-scope"]);
    assert_eq!(show(), manual);

    // A document naming the api object's id is refused as a whole.
    let before = state(&vault);
    let doc = "auth_scopes:\n  - name: Extra Scope\n    type: env\n  - id: manual-scope\n    name: Taken Over\n    type: header\n";
    let path = vault.write_file("takeover.yaml", doc);
    let refused = vault.ctl(["apply", "-f", &path.display().to_string()]);
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("auth_scope manual-scope exists with source api"),
        "{refused:#?}"
    );
    assert!(
        refused
            .stderr
            .contains("mcplexerctl scope delete manual-scope"),
        "{refused:#?}"
    );
    assert_eq!(state(&vault), before);
    assert_eq!(show(), manual);
    assert_eq!(
        vault.ctl(["scope", "show", "extra-scope"]).code,
        4,
        "the valid part of a refused document was created"
    );
}

#[test]
fn daemon_config_applies_the_file_at_start() {
    let mut vault = Vault::start_with(VaultOptions {
        config: Some(fixture("seed-examples.yaml")),
        ..VaultOptions::default()
    });
    assert_seed_objects(&vault);
    let before = state(&vault);
    // Objects of the --config file belong to it: an apply of the same
    // document by a user (even root) is refused, naming the origin, and
    // changes nothing.
    let refused = vault.ctl(["apply", "-f", &seed_path()]);
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("comes from the vault's --config file"),
        "{refused:#?}"
    );
    assert_eq!(state(&vault), before);
    // Each start applies it again, to the same result.
    vault.restart();
    assert_eq!(state(&vault), before);
}
