//! Helpers shared by the modules that call the Vault service through the
//! `vault-probe` test binary (the credential RPC has no mcplexerctl
//! command): run it as root or as another uid, and read the audit log.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use mcplexer_tests::Vault;
use serde_json::Value;

/// A finished `vault-probe` run: exit code and its JSON answer.
#[derive(Debug)]
pub struct Probe {
    /// Exit code: 0 ok, 3 permission denied, 4 other refusals, 1 otherwise.
    pub code: i32,
    /// The JSON it printed.
    pub json: Value,
}

impl Probe {
    /// The probe's pid, as it reported it.
    pub fn pid(&self) -> u64 {
        self.json["pid"].as_u64().expect("pid in probe output")
    }

    /// The released values as name → value (panics unless it succeeded).
    #[track_caller]
    pub fn values(&self) -> BTreeMap<String, String> {
        assert_eq!(self.code, 0, "release failed: {self:#?}");
        let mut out = BTreeMap::new();
        for v in self.json["values"].as_array().expect("values") {
            let name = v["name"].as_str().expect("name").to_owned();
            let value = v["value"].as_str().expect("value").to_owned();
            assert!(
                out.insert(name, value).is_none(),
                "duplicate name: {self:#?}"
            );
        }
        out
    }

    /// Asserts a refusal with this exit code and gRPC code name.
    #[track_caller]
    pub fn refused(&self, exit: i32, code: &str) -> &str {
        assert_eq!(self.code, exit, "{self:#?}");
        assert_eq!(self.json["code"], code, "{self:#?}");
        assert!(
            self.json.get("values").is_none(),
            "a refusal carries no values: {self:#?}"
        );
        self.json["message"].as_str().expect("message")
    }
}

/// Runs `vault-probe --socket <vault> ARGS`, as root (`user` None) or as
/// `uid:gid` without supplementary groups.
pub fn probe(vault: &Vault, user: Option<(u32, u32)>, args: &[&str]) -> Probe {
    run(vault, user.map(|u| (u, Vec::new())), args)
}

/// Runs `vault-probe` as `uid:gid` with exactly these supplementary groups.
pub fn probe_in_groups(vault: &Vault, user: (u32, u32), groups: &[u32], args: &[&str]) -> Probe {
    run(vault, Some((user, groups.to_vec())), args)
}

fn run(vault: &Vault, user: Option<((u32, u32), Vec<u32>)>, args: &[&str]) -> Probe {
    let bin = mcplexer_tests::bin("vault-probe");
    let mut cmd = match user {
        None => Command::new(bin),
        Some(((uid, gid), groups)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"));
            if groups.is_empty() {
                cmd.arg("--clear-groups");
            } else {
                let list: Vec<String> = groups.iter().map(u32::to_string).collect();
                cmd.arg(format!("--groups={}", list.join(",")));
            }
            cmd.arg(bin);
            cmd
        }
    };
    let out = cmd
        .arg("--socket")
        .arg(&vault.socket)
        .args(args)
        .output()
        .expect("run vault-probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "vault-probe printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Probe {
        code: out.status.code().unwrap_or(-1),
        json,
    }
}

/// Name → value pairs as the map [`Probe::values`] returns.
pub fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Every audit record (as root, up to 10,000), oldest first.
pub fn audit(vault: &Vault) -> Vec<Value> {
    let run = vault.ctl(["--json", "audit", "--limit", "10000"]);
    run.json().as_array().expect("audit array").clone()
}

/// The one audit record matching `pred`; panics on none or several.
#[track_caller]
pub fn one<'a>(records: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = records.iter().filter(|r| pred(r)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\nall: {records:#?}");
    found[0]
}

/// A refused release of `scope` to `uid` from process `pid`.
pub fn release_denied(r: &Value, uid: u32, scope: &str, pid: u64) -> bool {
    r["kind"] == "release"
        && r["status"] == "denied"
        && r["uid"] == uid
        && r["auth_scope_id"] == scope
        && r["pid"] == pid
}

/// A refused admin-side call `action` by `uid`.
pub fn admin_denied(r: &Value, uid: u32, action: &str) -> bool {
    r["kind"] == "admin" && r["status"] == "denied" && r["uid"] == uid && r["action"] == action
}
