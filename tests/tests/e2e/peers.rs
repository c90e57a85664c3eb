//! Peer authorisation with real second uids (DESIGN §2): the vault decides
//! from SO_PEERCRED alone. A granted user gets exactly the granted scope's
//! values and its own scope's; it is refused (PERMISSION_DENIED, same answer
//! as for a scope that does not exist) everything else, and so is root for a
//! scope it neither owns nor is granted. Users cannot call admin-only RPCs or
//! change root's objects (exit 3), see only their scopes, and a uid outside
//! the client group cannot connect — nor is it served if the socket mode is
//! loosened. Group grants follow the peer's primary and supplementary
//! groups. Every refusal is in the audit log with the refused uid. A user's
//! routing configuration holds only the scopes it may use, without values,
//! and the audit records it submits carry its uid and pid, whatever they
//! claim. (Transport mismatches are in `release`.)

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use mcplexer_tests::{Vault, VaultOptions};
use serde_json::Value;

use crate::probe::{
    Probe, admin_denied, audit, one, pairs, probe, probe_in_groups, release_denied,
};

/// The client group: the socket is 0660 root:G.
const G: u32 = 47001;
/// A member of G, granted `s1`, owner of `s3`.
const U1: (u32, u32) = (47001, G);
/// Another member of G, granted nothing but, as a member of G, `team`.
const U2: (u32, u32) = (47002, G);
/// Not in G.
const OUTSIDER: (u32, u32) = (47003, 47003);

const SETUP: &str = r#"
downstream_servers:
  - id: tools
    name: Tools
    transport: stdio
    command: /bin/true
auth_scopes:
  - id: s1
    name: Shared with 47001
    type: env
    grants: {users: ["47001"]}
  - id: s2
    name: Root only
    type: env
  - id: team
    name: Team
    type: env
    grants: {groups: ["47001"]}
"#;

/// Root sets up `tools`, `s1` (granted to U1, two values), `s2`
/// (no grants, one value) and `team` (granted to group G); U1 creates `s3`
/// (with `apply`) and stores one value in it.
fn setup() -> Vault {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        ..Default::default()
    });
    let doc = vault.write_file("setup.yaml", SETUP);
    vault.ctl(["apply", "-f", doc.to_str().unwrap()]).ok();
    for (scope, key, value) in [
        ("s1", "API_TOKEN", "tok-s1-alpha"),
        ("s1", "REGION", "eu-west-1"),
        ("s2", "S2_KEY", "root-only-value"),
        ("team", "TEAM_KEY", "team-value"),
    ] {
        let value = format!("{value}\n");
        vault
            .ctl_input(["secret", "set", scope, key], value.as_bytes())
            .ok();
    }
    let (uid, gid) = U1;
    let mine = b"auth_scopes: [{id: s3, name: Mine, type: env}]\n";
    vault
        .ctl_as(uid, gid, ["apply", "-f", "-"], Some(mine))
        .ok();
    let value = Some(&b"mine-47001\n"[..]);
    vault
        .ctl_as(uid, gid, ["secret", "set", "s3", "S3_KEY"], value)
        .ok();
    let s3 = vault.ctl(["--json", "scope", "show", "s3"]).json();
    assert_eq!(s3["owner"], 47001, "{s3:#}");
    vault
}

#[test]
fn granted_and_owned_scopes_are_released_and_nothing_else() {
    let vault = setup();
    let cred = |user, scope| probe(&vault, user, &["credential", scope, "tools", "stdio"]);

    let s1 = cred(Some(U1), "s1");
    let want = pairs(&[("API_TOKEN", "tok-s1-alpha"), ("REGION", "eu-west-1")]);
    assert_eq!(s1.values(), want);
    assert_eq!(s1.json["kind"], "env");
    let s3 = cred(Some(U1), "s3");
    assert_eq!(s3.values(), pairs(&[("S3_KEY", "mine-47001")]));
    // A group grant reaches U2 through its primary gid.
    let team = pairs(&[("TEAM_KEY", "team-value")]);
    assert_eq!(cred(Some(U2), "team").values(), team);

    // Not granted, and not existing: the same answer, naming only the id.
    let s2 = cred(Some(U1), "s2");
    let msg_s2 = s2.refused(3, "PermissionDenied").to_owned();
    assert_eq!(
        msg_s2,
        "auth_scope s2 does not exist or uid 47001 is neither its owner nor granted it"
    );
    let nope = cred(Some(U1), "no-such-scope");
    let msg_nope = nope.refused(3, "PermissionDenied");
    assert_eq!(msg_nope.replace("no-such-scope", "s2"), msg_s2);
    assert!(!msg_s2.contains("root-only-value"));

    let u2 = cred(Some(U2), "s1");
    assert!(
        u2.refused(3, "PermissionDenied")
            .contains("uid 47002 is neither its owner nor granted it")
    );

    // Root owns s2, so it is released; s3 is U1's, and admin is not enough.
    let s2_values = pairs(&[("S2_KEY", "root-only-value")]);
    assert_eq!(cred(None, "s2").values(), s2_values);
    let root_s3 = cred(None, "s3");
    assert_eq!(
        root_s3.refused(3, "PermissionDenied"),
        "auth_scope s3 does not exist or uid 0 is neither its owner nor granted it"
    );

    let records = audit(&vault);
    for (uid, scope, pid) in [
        (47001, "s2", s2.pid()),
        (47001, "no-such-scope", nope.pid()),
        (47002, "s1", u2.pid()),
        (0, "s3", root_s3.pid()),
    ] {
        let r = one(&records, &format!("denied {scope} to {uid}"), |r| {
            release_denied(r, uid, scope, pid)
        });
        assert_eq!(r["downstream_server_id"], "tools");
        assert!(r["error"].as_str().unwrap().contains("neither its owner"));
    }
    for (uid, scope, pid) in [(47001, "s1", s1.pid()), (47001, "s3", s3.pid())] {
        one(&records, &format!("released {scope} to {uid}"), |r| {
            r["kind"] == "release"
                && r["status"] == "success"
                && r["uid"] == uid
                && r["auth_scope_id"] == scope
                && r["pid"] == pid
        });
    }
    // A user reads only its own records, its refusals included.
    let mine = vault
        .ctl_as(U1.0, U1.1, ["--json", "audit", "--limit", "1000"], None)
        .json();
    let mine = mine.as_array().unwrap();
    assert!(mine.iter().all(|r| r["uid"] == 47001), "{mine:#?}");
    one(mine, "U1 sees its s2 denial", |r| {
        release_denied(r, 47001, "s2", s2.pid())
    });
}

/// A call a user must be refused (exit 3), and how it is audited.
struct Refusal {
    user: (u32, u32),
    args: &'static [&'static str],
    stdin: Option<&'static [u8]>,
    action: &'static str,
    /// 3 (denied) on an object the user can see; 4 (not found, exactly as
    /// for a missing object) on one it cannot.
    code: i32,
    message: &'static str,
}

#[test]
fn users_cannot_administer_or_touch_others_objects() {
    let vault = setup();
    for (uid, gid) in [U1, U2] {
        let run = vault.ctl_as(uid, gid, ["identity", "rotate"], None);
        assert_eq!(run.code, 3, "{run:#?}");
        assert!(
            run.stderr
                .contains("Admin/RotateIdentity is for administrators"),
            "{run:#?}"
        );
    }
    let refused = [
        Refusal {
            user: U1,
            args: &["scope", "delete", "s1"],
            stdin: None,
            action: "Admin/DeleteScope",
            code: 3,
            message: "auth_scope s1 belongs to another user",
        },
        Refusal {
            user: U1,
            args: &["secret", "set", "s1", "API_TOKEN"],
            stdin: Some(b"hijacked\n"),
            action: "Admin/SetSecret",
            code: 3,
            message: "uid 47001 may set secrets only on its own scopes",
        },
        Refusal {
            user: U2,
            args: &["secret", "set", "s1", "REGION"],
            stdin: Some(b"hijacked\n"),
            action: "Admin/SetSecret",
            code: 4,
            message: "auth_scope \"s1\" does not exist",
        },
        Refusal {
            user: U1,
            args: &["scope", "delete", "team"],
            stdin: None,
            action: "Admin/DeleteScope",
            code: 3,
            message: "auth_scope team belongs to another user",
        },
        Refusal {
            user: U2,
            args: &["secret", "delete", "s2", "S2_KEY"],
            stdin: None,
            action: "Admin/DeleteSecret",
            code: 4,
            message: "auth_scope \"s2\" does not exist",
        },
        // ...the very same answer as for a scope that does not exist.
        Refusal {
            user: U2,
            args: &["secret", "delete", "zzz", "S2_KEY"],
            stdin: None,
            action: "Admin/DeleteSecret",
            code: 4,
            message: "auth_scope \"zzz\" does not exist",
        },
        Refusal {
            user: U2,
            args: &["server", "delete", "tools"],
            stdin: None,
            action: "Admin/DeleteServer",
            code: 3,
            message: "downstream_server tools belongs to another user",
        },
    ];
    for r in &refused {
        let run = vault.ctl_as(r.user.0, r.user.1, r.args, r.stdin);
        assert_eq!(run.code, r.code, "{:?}: {run:#?}", r.args);
        assert!(run.stderr.contains(r.message), "{:?}: {run:#?}", r.args);
    }

    // Users see their own and granted scopes only; nothing changed.
    let ids = |run: mcplexer_tests::Run| -> Vec<String> {
        let list = run.json();
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(vault.ctl_as(U1.0, U1.1, ["--json", "scope", "list"], None)),
        ["s1", "s3", "team"]
    );
    assert_eq!(
        ids(vault.ctl_as(U2.0, U2.1, ["--json", "scope", "list"], None)),
        ["team"]
    );
    assert_eq!(
        ids(vault.ctl(["--json", "scope", "list"])),
        ["s1", "s2", "s3", "team"]
    );
    let keys = vault.ctl(["--json", "secret", "list", "s2"]).json();
    assert_eq!(keys, serde_json::json!(["S2_KEY"]));
    let s1 = probe(&vault, Some(U1), &["credential", "s1", "tools", "stdio"]).values();
    assert_eq!(
        s1,
        pairs(&[("API_TOKEN", "tok-s1-alpha"), ("REGION", "eu-west-1")])
    );

    let records = audit(&vault);
    for (uid, _) in [U1, U2] {
        one(&records, "rotate refused", |r| {
            admin_denied(r, uid, "Admin/RotateIdentity")
        });
    }
    for refusal in &refused {
        let what = format!("{:?}", refusal.args);
        one(&records, &what, |r| {
            admin_denied(r, refusal.user.0, refusal.action)
                && r["error"].as_str().unwrap().contains(refusal.message)
        });
    }
}

#[test]
fn outsiders_cannot_connect_nor_be_served() {
    let vault = setup();
    let (uid, gid) = OUTSIDER;
    let run = vault.ctl_as(uid, gid, ["status"], None);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("Permission denied"), "{run:#?}");
    assert!(run.stderr.contains("client group"), "{run:#?}");
    let s1 = ["credential", "s1", "tools", "stdio"];
    let p = probe(&vault, Some(OUTSIDER), &s1);
    assert!(p.refused(1, "Unreachable").contains("Permission denied"));

    // With G as a supplementary group it may connect, and the group grant
    // (not s1's user grant) applies to it.
    let team = ["credential", "team", "tools", "stdio"];
    let member = probe_in_groups(&vault, OUTSIDER, &[47999, G], &team);
    assert_eq!(member.values(), pairs(&[("TEAM_KEY", "team-value")]));
    let other = probe_in_groups(&vault, OUTSIDER, &[47999, G], &s1);
    other.refused(3, "PermissionDenied");
    let p = probe_in_groups(&vault, OUTSIDER, &[47999], &team);
    p.refused(1, "Unreachable");

    // Defence in depth: with the socket opened to everyone, the vault itself
    // still refuses a peer outside the client group.
    std::fs::set_permissions(&vault.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = vault.ctl_as(uid, gid, ["status"], None);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr
            .contains("uid 47003 is not a member of the vault's client group (gid 47001)"),
        "{run:#?}"
    );
    let p = probe(&vault, Some(OUTSIDER), &s1);
    let message = p.refused(3, "PermissionDenied");
    assert!(message.contains("uid 47003 is not a member"), "{message}");

    let records = audit(&vault);
    one(&records, "status refused", |r| {
        admin_denied(r, 47003, "Admin/Status")
    });
    let r = one(&records, "credential refused", |r| {
        admin_denied(r, 47003, "Vault/GetCredential")
    });
    assert_eq!(r["pid"], p.pid());
    let released: Vec<&Value> = records
        .iter()
        .filter(|r| r["uid"] == 47003 && r["status"] != "denied")
        .collect();
    assert_eq!(released.len(), 1, "{released:#?}");
    assert_eq!(released[0]["auth_scope_id"], "team");
    assert_eq!(released[0]["pid"], member.pid());
    one(&records, "s1 refused to the group member", |r| {
        release_denied(r, 47003, "s1", other.pid())
    });
}

#[test]
fn config_shows_usable_scopes_only_and_submitted_audit_is_stamped_by_the_vault() {
    let vault = setup();
    let ids = |p: &Probe| -> Vec<String> {
        assert_eq!(p.code, 0, "{p:#?}");
        let scopes = p.json["scopes"].as_array().unwrap();
        scopes
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let u1 = probe(&vault, Some(U1), &["config"]);
    assert_eq!(ids(&u1), ["s1", "s3", "team"]);
    let s1 = &u1.json["scopes"][0];
    assert_eq!(
        s1["secret_keys"],
        serde_json::json!(["API_TOKEN", "REGION"])
    );
    let text = u1.json.to_string();
    for value in [
        "tok-s1-alpha",
        "mine-47001",
        "team-value",
        "root-only-value",
    ] {
        assert!(!text.contains(value), "config holds a value: {text}");
    }
    assert_eq!(ids(&probe(&vault, Some(U2), &["config"])), ["team"]);

    // Whatever a record claims, the vault stamps the peer's uid and pid.
    let claims = [
        "--claim-uid",
        "0",
        "--claim-pid",
        "1",
        "--claim-kind",
        "release",
    ];
    let record = ["submit-audit", "--tool", "gh__x", "--status", "error"];
    let args: Vec<&str> = record.iter().chain(&claims).copied().collect();
    let sub = probe(&vault, Some(U1), &args);
    assert_eq!(sub.code, 0, "{sub:#?}");
    let records = audit(&vault);
    assert!(sub.json["sequence"].as_u64().unwrap() > 0, "{sub:#?}");
    let r = one(&records, "submitted", |r| {
        r["tool"] == "gh__x" && r["kind"] != "release"
    });
    assert_eq!(
        (&r["uid"], &r["pid"]),
        (&Value::from(47001), &Value::from(sub.pid()))
    );
    assert_eq!(
        (&r["kind"], &r["tool"], &r["status"]),
        (&"call".into(), &"gh__x".into(), &"error".into())
    );
    let bad = ["submit-audit", "--tool", "gh__x", "--status", "maybe"];
    let refused = probe(&vault, Some(U1), &bad);
    let message = refused.refused(4, "InvalidArgument");
    assert!(
        message.contains("audit status \"maybe\" is not one of"),
        "{message}"
    );
}

/// A user may route only scopes it owns or is granted; a scope it may not
/// use gets the same refusal whether or not it exists.
#[test]
fn users_route_only_scopes_they_may_use() {
    let vault = setup();
    let route = |(uid, gid): (u32, u32), id: &str, scope: &str| {
        let args = [
            "route", "create", "--name", id, "--match", "tools__*", "--server", "tools", "--scope",
            scope,
        ];
        vault.ctl_as(uid, gid, args, None)
    };
    route(U1, "u1-granted", "s1").ok();
    route(U1, "u1-own", "s3").ok();
    for (who, scope) in [(U2, "s1"), (U2, "s3"), (U1, "s2"), (U2, "no-such-scope")] {
        let run = route(who, "refused", scope);
        assert_eq!(run.code, 3, "{scope}: {run:#?}");
        assert!(
            run.stderr.contains(&format!(
                "may route only auth scopes it owns or is granted, and auth_scope {scope} is neither"
            )),
            "{run:#?}"
        );
    }
    let routes = vault.ctl(["--json", "route", "list"]).json();
    let ids: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u1-granted", "u1-own"]);
}
