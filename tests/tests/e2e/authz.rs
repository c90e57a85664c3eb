//! What one user's objects can do to another's (DESIGN §2), with real second
//! uids. A user's proxy is shown only routes and servers its own uid or the
//! system owns, never those of a user who granted it a scope, so it never
//! runs another user's command; a user may route only to its own or
//! system-wide servers and workspaces, and its scopes may use only its own or
//! system-wide OAuth providers (any other is NOT_FOUND, exactly as a missing
//! one). A user applies a scope and the route to it in one document. An
//! admin who re-applies a user's scope with a new owner or wider grants
//! deletes its stored values rather than obtaining them; a system scope
//! keeps its values when an admin grants it. OAuth tokens are used only
//! while their provider keeps the endpoints and client that issued them:
//! re-pointed (or, for rows stored before this was recorded, unknown), the
//! scope is `reauthorization_required` and nothing is sent to the new
//! endpoints. A provider with an issuer asks it for nothing before the
//! request is known to be acceptable.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use mcplexer_tests::oauth::{OAuthServer, PUBLIC_CLIENT_ID};
use mcplexer_tests::oauth_vault::authorize;
use mcplexer_tests::{Run, Vault, VaultOptions};
use serde_json::{Value, json};

use crate::probe::{Probe, admin_denied, audit, one, pairs, probe};

/// The client group: the socket is 0660 root:G.
const G: u32 = 47001;
/// A user who is granted a scope by `BOB`.
const ALICE: (u32, u32) = (47001, G);
/// A user who grants `ALICE` a scope.
const BOB: (u32, u32) = (47002, G);

fn vault() -> Vault {
    Vault::start_with(VaultOptions {
        client_group: Some(G),
        ..Default::default()
    })
}

fn apply_as(vault: &Vault, (uid, gid): (u32, u32), doc: &str) -> Run {
    vault.ctl_as(
        uid,
        gid,
        ["--json", "apply", "-f", "-"],
        Some(doc.as_bytes()),
    )
}

/// The ids in a JSON list of objects.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list:#}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect()
}

/// A refusal by mcplexerctl with this exit code; its stderr.
#[track_caller]
fn refused(run: &Run, code: i32) -> &str {
    assert_eq!(run.code, code, "{run:#?}");
    &run.stderr
}

/// A listener nobody is told about but the vault, when a test points an
/// endpoint at it: whether anything connected is read without waiting.
struct Trap(TcpListener);

impl Trap {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self(listener)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.0.local_addr().unwrap())
    }

    #[track_caller]
    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the vault connected to the trap: {other:?}"),
        }
    }
}

#[test]
fn a_users_routes_and_servers_never_reach_another_users_proxy() {
    // Root's shared-host set-up: ev-token granted to ALICE, routed by root.
    let vault = crate::proxy::start();
    let drop_dir = vault.root.path().join("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    std::fs::set_permissions(&drop_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = drop_dir.join("payload-ran");
    let payload = vault.write_file(
        "payload.sh",
        &format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    );
    std::fs::set_permissions(&payload, std::fs::Permissions::from_mode(0o755)).unwrap();
    // BOB grants ALICE a scope and routes every tool to his own command.
    let bait = format!(
        r#"
auth_scopes:
  - {{id: bait, name: Bait, type: env, grants: {{users: ["47001"]}}}}
downstream_servers:
  - {{id: payload, name: Payload, transport: stdio, command: "{}"}}
"#,
        payload.display()
    );
    apply_as(&vault, BOB, &bait).ok();
    let (uid, gid) = BOB;
    vault
        .ctl_as(uid, gid, ["secret", "set", "bait", "BAIT"], Some(b"b\n"))
        .ok();
    let route = [
        "route",
        "create",
        "--id",
        "bait-route",
        "--name",
        "Bait",
        "--match",
        "*",
        "--server",
        "payload",
        "--scope",
        "bait",
    ];
    vault.ctl_as(uid, gid, route, None).ok();

    let alice = probe(&vault, Some(ALICE), &["config"]);
    assert_eq!(alice.code, 0, "{alice:#?}");
    assert_eq!(ids(&alice.json["routes"]), ["everything", "no-sums"]);
    assert_eq!(ids(&alice.json["servers"]), ["everything", "other"]);
    assert_eq!(ids(&alice.json["scopes"]), ["bait", "ev-token"]);
    let bob = probe(&vault, Some(BOB), &["config"]);
    assert!(ids(&bob.json["routes"]).contains(&"bait-route"), "{bob:#?}");
    assert!(ids(&bob.json["servers"]).contains(&"payload"), "{bob:#?}");

    let list = |what: &str| vault.ctl_as(ALICE.0, ALICE.1, ["--json", what, "list"], None);
    assert_eq!(ids(&list("route").json()), ["everything", "no-sums"]);
    assert_eq!(ids(&list("server").json()), ["everything", "other"]);
    let show = vault.ctl_as(ALICE.0, ALICE.1, ["server", "show", "payload"], None);
    assert!(refused(&show, 4).contains("downstream_server \"payload\" does not exist"));

    // ALICE's proxy lists root's tools and never starts BOB's command.
    let results = crate::proxy::through_proxy(&vault, Some(ALICE), json!([{"op": "list_tools"}]));
    let tools = results[0]["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("ev__echo")), "{tools:?}");
    assert!(
        !marker.exists(),
        "another user's command ran in ALICE's proxy"
    );
}

#[test]
fn users_route_only_to_their_own_or_system_servers_and_workspaces() {
    let vault = vault();
    vault.create_stdio_server("tools", "Tools");
    let alice = "downstream_servers:\n  - {id: alice-tools, name: Alice tools, transport: stdio, command: /bin/true}\nworkspaces:\n  - {id: alice-ws, name: Alice ws, root_path: /srv/alice}\n";
    apply_as(&vault, ALICE, alice).ok();
    let bob = "downstream_servers:\n  - {id: bob-tools, name: Bob tools, transport: stdio, command: /bin/true}\n";
    apply_as(&vault, BOB, bob).ok();

    let route = |name: &str, server: &str, workspace: &str| {
        let args = [
            "route",
            "create",
            "--name",
            name,
            "--match",
            "*",
            "--server",
            server,
            "--workspace",
            workspace,
        ];
        vault.ctl_as(BOB.0, BOB.1, args, None)
    };
    route("to-system", "tools", "default").ok();
    route("to-own", "bob-tools", "default").ok();
    // Another user's object, and one that does not exist: the same answer.
    let theirs = route("to-alice", "alice-tools", "default");
    let missing = route("to-nothing", "no-such-tools", "default");
    let message = refused(&theirs, 4);
    assert!(message.contains("downstream_server \"alice-tools\" does not exist"));
    assert_eq!(
        refused(&missing, 4).replace("no-such-tools", "alice-tools"),
        message
    );
    let in_ws = route("in-alice-ws", "bob-tools", "alice-ws");
    assert!(refused(&in_ws, 4).contains("workspace \"alice-ws\" does not exist"));
    let doc = "route_rules:\n  - {id: applied, name: Applied, tool_match: [\"*\"], downstream_server_id: alice-tools}\n";
    let applied = apply_as(&vault, BOB, doc);
    assert!(refused(&applied, 4).contains("downstream_server \"alice-tools\" does not exist"));

    let routes = vault.ctl(["--json", "route", "list"]).json();
    assert_eq!(ids(&routes), ["to-own", "to-system"]);
    let records = audit(&vault);
    let denied = |action: &str, what: &str| {
        records
            .iter()
            .filter(|r| admin_denied(r, BOB.0, action))
            .filter(|r| r["error"].as_str().unwrap().contains(what))
            .count()
    };
    assert_eq!(denied("Admin/CreateRoute", "alice-tools"), 1);
    assert_eq!(denied("Admin/CreateRoute", "alice-ws"), 1);
    assert_eq!(denied("Admin/Apply", "alice-tools"), 1);
}

#[test]
fn a_user_applies_a_scope_and_its_route_in_one_document() {
    let vault = vault();
    vault.create_stdio_server("tools", "Tools");
    let doc = r#"
auth_scopes:
  - {id: gh, name: gh, type: env}
downstream_servers:
  - {id: gh-tools, name: GH tools, transport: stdio, command: /bin/true}
route_rules:
  - {id: gh-own, name: Own, tool_match: ["gh_tools__*"], downstream_server_id: gh-tools, auth_scope_id: gh}
  - {id: gh-system, name: System, tool_match: ["tools__*"], downstream_server_id: tools, auth_scope_id: gh}
"#;
    let changes = apply_as(&vault, ALICE, doc).json();
    assert_eq!(
        changes["changes"].as_array().unwrap().len(),
        4,
        "{changes:#}"
    );
    let routes = vault.ctl_as(ALICE.0, ALICE.1, ["--json", "route", "list"], None);
    assert_eq!(ids(&routes.json()), ["gh-own", "gh-system"]);
    let scope = vault.ctl(["--json", "scope", "show", "gh"]).json();
    assert_eq!(scope["owner"], ALICE.0);
}

/// The fields of the update of `id` in an apply's JSON answer.
fn updated_fields<'a>(answer: &'a Value, id: &str) -> Vec<&'a str> {
    let change = answer["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id && c["action"] == "update")
        .unwrap_or_else(|| panic!("no update of {id}: {answer:#}"));
    change["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect()
}

#[test]
fn an_admin_who_hands_a_users_scope_over_deletes_its_values() {
    let vault = vault();
    vault.create_stdio_server("tools", "Tools");
    let doc = |alice_extra: &str, system_extra: &str| {
        format!(
            "auth_scopes:\n  - {{id: alice-env, name: Alice env, type: env, {alice_extra}}}\n  - {{id: system-env, name: System env, type: env{system_extra}}}\n"
        )
    };
    let root_apply = |doc: String| {
        let run = vault.ctl_input(["--json", "apply", "-f", "-"], doc.as_bytes());
        run.json()
    };
    let set_alice = |value: &str| {
        let value = format!("{value}\n");
        let args = ["secret", "set", "alice-env", "ALICE_KEY"];
        vault
            .ctl_as(ALICE.0, ALICE.1, args, Some(value.as_bytes()))
            .ok();
    };
    let cred = |user, scope| probe(&vault, user, &["credential", scope, "tools", "stdio"]);
    root_apply(doc("owner: 47001", ""));
    set_alice("alice-first");
    vault
        .ctl_input(["secret", "set", "system-env", "SYS_KEY"], b"sys-value\n")
        .ok();

    // Root grants itself ALICE's scope, and the system scope to ALICE.
    let answer = root_apply(doc(
        "owner: 47001, grants: {users: [\"0\"]}",
        ", grants: {users: [\"47001\"]}",
    ));
    assert_eq!(
        updated_fields(&answer, "alice-env"),
        ["grants", "secrets (deleted)"]
    );
    assert_eq!(updated_fields(&answer, "system-env"), ["grants"]);
    let root_gets = cred(None, "alice-env");
    let message = root_gets.refused(4, "FailedPrecondition");
    assert!(message.contains("auth_scope alice-env has no secret values yet"));
    assert!(!root_gets.json.to_string().contains("alice-first"));
    let keys = vault.ctl_as(
        ALICE.0,
        ALICE.1,
        ["--json", "secret", "list", "alice-env"],
        None,
    );
    assert_eq!(keys.json(), json!([]));
    // The system scope's values, set by an admin, reach the granted user.
    assert_eq!(
        cred(Some(ALICE), "system-env").values(),
        pairs(&[("SYS_KEY", "sys-value")])
    );

    // ALICE sets a value again; root makes itself the owner.
    set_alice("alice-second");
    let answer = root_apply(doc("owner: 0", ", grants: {users: [\"47001\"]}"));
    assert_eq!(
        updated_fields(&answer, "alice-env"),
        ["grants", "owner", "secrets (deleted)"]
    );
    let root_gets = cred(None, "alice-env");
    root_gets.refused(4, "FailedPrecondition");
    assert!(!root_gets.json.to_string().contains("alice-second"));
    // Its owner still re-applies its own scope, grants and all, keeping them.
    let answer = root_apply(doc("owner: 0", ", grants: {users: [\"47001\", \"47002\"]}"));
    assert_eq!(updated_fields(&answer, "system-env"), ["grants"]);
    assert_eq!(
        cred(Some(ALICE), "system-env").values(),
        pairs(&[("SYS_KEY", "sys-value")])
    );
}

#[test]
fn a_users_scope_uses_only_its_own_or_system_providers() {
    let vault = vault();
    let provider = |id: &str| {
        format!(
            "  - {{id: {id}, name: {id}, auth_url: \"https://{id}.example/auth\", token_url: \"https://{id}.example/token\", client_id: c}}\n"
        )
    };
    let system = format!("oauth_providers:\n{}", provider("sys-idp"));
    vault
        .ctl_input(["apply", "-f", "-"], system.as_bytes())
        .ok();
    // BOB's providers: one behind a scope granted to ALICE, one private.
    let bob = format!(
        "oauth_providers:\n{}{}auth_scopes:\n  - {{id: bob-team, name: Bob team, type: oauth2, oauth_provider_id: bob-idp, grants: {{users: [\"47001\"]}}}}\n",
        provider("bob-idp"),
        provider("bob-private")
    );
    apply_as(&vault, BOB, &bob).ok();

    let create = |id: &str, provider: &str| {
        let args = [
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
        vault.ctl_as(ALICE.0, ALICE.1, args, None)
    };
    let visible = create("a1", "bob-idp");
    assert!(
        refused(&visible, 3).contains(
            "uid 47001 may use only oauth providers it owns or system-wide ones, and oauth_provider bob-idp is neither"
        ),
        "{visible:#?}"
    );
    let hidden = create("a2", "bob-private");
    let message = refused(&hidden, 4);
    assert!(message.contains("oauth_provider \"bob-private\" does not exist"));
    let missing = create("a3", "no-such-idp");
    assert_eq!(
        refused(&missing, 4).replace("no-such-idp", "bob-private"),
        message
    );
    let doc =
        "auth_scopes:\n  - {id: a4, name: a4, type: oauth2, oauth_provider_id: bob-private}\n";
    assert!(refused(&apply_as(&vault, ALICE, doc), 4).contains("\"bob-private\" does not exist"));

    create("a5", "sys-idp").ok();
    let own = format!(
        "oauth_providers:\n{}auth_scopes:\n  - {{id: a6, name: a6, type: oauth2, oauth_provider_id: alice-idp}}\n",
        provider("alice-idp")
    );
    apply_as(&vault, ALICE, &own).ok();
    let scopes = vault.ctl_as(ALICE.0, ALICE.1, ["--json", "scope", "list"], None);
    assert_eq!(ids(&scopes.json()), ["a5", "a6", "bob-team"]);
    let records = audit(&vault);
    one(&records, "a hidden provider, audited as denied", |r| {
        admin_denied(r, ALICE.0, "Admin/CreateScope")
            && r["error"].as_str().unwrap().contains("bob-private")
    });
}

#[test]
fn a_provider_with_an_issuer_is_checked_before_the_issuer_is_asked() {
    let vault = vault();
    let trap = Trap::new();
    let issuer = trap.url("");
    let args = [
        "provider",
        "create",
        "--name",
        "Discovered",
        "--issuer",
        &issuer,
        "--client-id",
        "c",
        "--redirect-uri",
        "https://outside.example/cb",
    ];
    let run = vault.ctl_as(ALICE.0, ALICE.1, args, None);
    assert!(
        refused(&run, 4).contains("must be a loopback http URI"),
        "{run:#?}"
    );
    trap.assert_untouched();
    let providers = vault.ctl(["--json", "provider", "list"]).json();
    assert!(!ids(&providers).contains(&"discovered"), "{providers:#}");
}

const IDP_SCOPE: &str = "idp-token";

/// Provider `idp` on `server` but with these token and revocation
/// endpoints, and the oauth2 scope on it, both root's.
fn apply_idp(vault: &Vault, server: &OAuthServer, token_url: &str, revocation_url: &str) {
    let issuer = &server.issuer;
    let doc = format!(
        r#"
oauth_providers:
  - id: idp
    name: Test IdP
    auth_url: "{issuer}/auth"
    token_url: "{token_url}"
    revocation_url: "{revocation_url}"
    issuer: "{issuer}"
    client_id: {PUBLIC_CLIENT_ID}
    scopes: [openid, offline_access, read]
auth_scopes:
  - {{id: {IDP_SCOPE}, name: IdP token, type: oauth2, oauth_provider_id: idp}}
"#
    );
    vault.ctl_input(["apply", "-f", "-"], doc.as_bytes()).ok();
}

/// A vault whose `idp-token` scope is authorized at `server`.
fn authorized(server: &OAuthServer) -> Vault {
    let vault = Vault::start();
    vault.create_stdio_server("tools", "Tools");
    let revocation = server.url("/token/revocation");
    apply_idp(&vault, server, &server.token_endpoint(), &revocation);
    authorize(&vault, IDP_SCOPE);
    vault
}

fn idp_credential(vault: &Vault) -> Probe {
    probe(vault, None, &["credential", IDP_SCOPE, "tools", "stdio"])
}

#[track_caller]
fn assert_reauthorization_required(answer: &Probe, why: &str) {
    let message = answer.refused(4, "FailedPrecondition");
    assert_eq!(answer.json["vault_code"], "REAUTHORIZATION_REQUIRED");
    assert!(
        message.contains(&format!("auth_scope {IDP_SCOPE} must be authorized again"))
            && message.contains(why),
        "{answer:#?}"
    );
}

fn idp_status(vault: &Vault) -> Value {
    vault.ctl(["--json", "auth", "status", IDP_SCOPE]).json()[0].clone()
}

#[test]
fn tokens_never_go_to_endpoints_their_provider_was_re_pointed_to() {
    let server = OAuthServer::start(3600);
    let vault = authorized(&server);
    assert_eq!(idp_credential(&vault).code, 0);

    // The provider's owner re-points its token and revocation endpoints.
    let trap = Trap::new();
    apply_idp(&vault, &server, &trap.url("/token"), &trap.url("/revoke"));
    let why = "the tokens were not issued by oauth_provider idp as it is now";
    assert_reauthorization_required(&idp_credential(&vault), why);
    let status = idp_status(&vault);
    assert_eq!(status["status"], "reauthorization_required", "{status:#}");
    // Revoking deletes them here only: the new endpoint gets nothing.
    let revoked = vault.ctl(["--json", "auth", "revoke", IDP_SCOPE]).json();
    assert_eq!(revoked["revoked_at_provider"], false, "{revoked:#}");
    assert!(
        revoked["message"]
            .as_str()
            .unwrap()
            .contains("deleted here only"),
        "{revoked:#}"
    );
    assert_eq!(idp_status(&vault)["status"], "unauthorized");
    trap.assert_untouched();
}

#[test]
fn tokens_stored_without_their_endpoints_need_one_reauthorization() {
    let server = OAuthServer::start(3600);
    let mut vault = authorized(&server);
    // A row as stored before the endpoints were recorded.
    assert_eq!(vault.stop(), Some(0));
    let db = rusqlite::Connection::open(vault.state_dir.join("vault.db")).unwrap();
    let select = "SELECT meta FROM oauth_tokens WHERE scope_id = ?1";
    let meta: String = db.query_row(select, [IDP_SCOPE], |r| r.get(0)).unwrap();
    let mut meta: Value = serde_json::from_str(&meta).unwrap();
    assert!(meta.as_object_mut().unwrap().remove("endpoints").is_some());
    let update = "UPDATE oauth_tokens SET meta = ?2 WHERE scope_id = ?1";
    db.execute(update, [IDP_SCOPE, &meta.to_string()]).unwrap();
    drop(db);
    vault.spawn().unwrap();

    assert_reauthorization_required(&idp_credential(&vault), "not issued by");
    authorize(&vault, IDP_SCOPE);
    assert_eq!(idp_credential(&vault).code, 0);
    assert_eq!(idp_status(&vault)["status"], "valid");
}
