//! Sealed identities, end to end: `identity seal` replaces identity.txt by
//! a new identity sealed with a passphrase (no key left in the file, a new
//! recipient, every value re-encrypted); the vault restarted on it
//! is sealed — status says so, a credential release and a secret write fail
//! with VAULT_SEALED and the fix `mcplexerctl unlock`, and the release is
//! audited as an error; a user may not unlock; a wrong passphrase is
//! refused and audited as denied; the right one opens it and releases
//! succeed again. A rotation of a sealed identity needs a passphrase and
//! leaves the new identity sealed with it.
//!
//! Also the systemd way (README, "Sealing the identity"): the identity
//! encrypted with `systemd-creds encrypt --name=vault-identity` and
//! decrypted by systemd into `$CREDENTIALS_DIRECTORY`, which is what
//! `LoadCredentialEncrypted=vault-identity:FILE` does, starts a vault
//! that releases the same secrets, with no identity.txt in its state.

// Test code: a failed step must abort the test, hence unwrap and expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use mcplexer_tests::{Vault, VaultOptions};
use serde_json::Value;

use crate::probe::{audit, probe};

const PASSPHRASE: &str = "correct horse battery staple";
const VALUE: &str = "sealed-value-7c41";
/// The client group of the vault and a user in it (not an admin).
const G: u32 = 47000;
const U1: (u32, u32) = (47001, G);

/// A vault with a stdio server `tools` and an env scope `gh` holding
/// [`VALUE`], granted to everyone in the client group.
fn setup() -> Vault {
    let vault = Vault::start_with(VaultOptions {
        client_group: Some(G),
        ..VaultOptions::default()
    });
    vault.create_stdio_server("tools", "tools");
    vault
        .ctl(["scope", "create", "--name", "gh", "--type", "env"])
        .ok();
    vault
        .ctl_input(["secret", "set", "gh", "GITHUB_TOKEN"], VALUE.as_bytes())
        .ok();
    vault
}

fn released(vault: &Vault) -> String {
    let p = probe(vault, None, &["credential", "gh", "tools", "stdio"]);
    p.values()["GITHUB_TOKEN"].clone()
}

fn status(vault: &Vault) -> Value {
    vault.ctl(["--json", "status"]).json()
}

/// A boolean field of a JSON answer (false when left out).
fn flag(v: &Value, key: &str) -> bool {
    v[key].as_bool().unwrap_or(false)
}

fn identity_text(vault: &Vault) -> String {
    std::fs::read_to_string(vault.state_dir.join("identity.txt")).unwrap()
}

#[test]
fn sealed_vault_refuses_until_unlocked_and_audits_every_attempt() {
    let mut vault = setup();
    assert_eq!(released(&vault), VALUE);
    let open_recipient = status(&vault)["recipient"].as_str().unwrap().to_owned();

    // Too short a passphrase is refused; nothing changes.
    let short = vault.ctl_input(["identity", "seal"], b"short\n");
    assert_eq!(short.code, 4, "{short:#?}");
    assert!(short.stderr.contains("at least 8"), "{short:#?}");
    assert!(identity_text(&vault).contains("AGE-SECRET-KEY-1"));

    let sealed = vault
        .ctl_input(
            ["--json", "identity", "seal"],
            format!("{PASSPHRASE}\n").as_bytes(),
        )
        .json();
    // A new key: the old, open one decrypts nothing any more.
    let recipient = sealed["recipient"].as_str().unwrap().to_owned();
    assert_ne!(recipient, open_recipient);
    assert_eq!(sealed["reencrypted"], 1, "{sealed}");
    assert_eq!(status(&vault)["recipient"], recipient.as_str());
    let text = identity_text(&vault);
    assert!(!text.contains("AGE-SECRET-KEY-1"), "{text}");
    assert!(
        text.contains("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{text}"
    );
    assert!(text.contains(&recipient), "{text}");
    // The running vault stays open; sealing twice is refused.
    assert_eq!(released(&vault), VALUE);
    let s = status(&vault);
    assert!(!flag(&s, "sealed") && flag(&s, "identity_sealed"), "{s}");
    let again = vault.ctl_input(["identity", "seal"], format!("{PASSPHRASE}\n").as_bytes());
    assert_eq!(again.code, 4, "{again:#?}");
    assert!(again.stderr.contains("already sealed"), "{again:#?}");

    // Restarted on the sealed file: sealed.
    vault.stop();
    vault.restart();
    let s = status(&vault);
    assert!(flag(&s, "sealed"), "{s}");
    assert_eq!(s["recipient"], recipient.as_str(), "{s}");
    let refused = probe(&vault, None, &["credential", "gh", "tools", "stdio"]);
    refused.refused(4, "FailedPrecondition");
    assert_eq!(refused.json["vault_code"], "VAULT_SEALED", "{refused:#?}");
    assert_eq!(refused.json["fix"], "mcplexerctl unlock", "{refused:#?}");
    let write = vault.ctl_input(["secret", "set", "gh", "OTHER"], b"x\n");
    assert_eq!(write.code, 4, "{write:#?}");
    assert!(write.stderr.contains("sealed"), "{write:#?}");
    assert!(write.stderr.contains("mcplexerctl unlock"), "{write:#?}");
    assert!(vault.log().contains("mcplexerctl unlock"));

    // A user may not unlock, even with the right passphrase.
    let user = vault.ctl_as(U1.0, U1.1, ["unlock"], Some(PASSPHRASE.as_bytes()));
    assert_eq!(user.code, 3, "{user:#?}");
    // A wrong passphrase is refused; the vault stays sealed.
    let wrong = vault.ctl_input(["unlock"], b"not the passphrase\n");
    assert_eq!(wrong.code, 3, "{wrong:#?}");
    assert!(wrong.stderr.contains("passphrase"), "{wrong:#?}");
    assert!(flag(&status(&vault), "sealed"));

    vault
        .ctl_input(["unlock"], format!("{PASSPHRASE}\n").as_bytes())
        .ok();
    assert!(!flag(&status(&vault), "sealed"));
    assert_eq!(released(&vault), VALUE);
    // Unlocking an open vault changes nothing.
    let open = vault.ctl_input(["--json", "unlock"], b"anything at all\n");
    assert!(!flag(&open.json(), "was_sealed"), "{open:#?}");

    let records = audit(&vault);
    let unlocks: Vec<(&str, u64)> = records
        .iter()
        .filter(|r| r["kind"] == "admin" && r["action"] == "Admin/Unlock")
        .map(|r| {
            (
                r["status"].as_str().unwrap(),
                r["uid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        unlocks,
        [
            ("denied", u64::from(U1.0)),
            ("denied", 0),
            ("success", 0),
            ("success", 0)
        ],
        "{records:#?}"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "release"
            && r["auth_scope_id"] == "gh"
            && r["status"] != "success"
            && r["error"].as_str().unwrap_or("").contains("sealed")),
        "the sealed release is audited: {records:#?}"
    );
    for text in [
        serde_json::to_string(&records).unwrap(),
        vault.log(),
        identity_text(&vault),
    ] {
        assert!(!text.contains(PASSPHRASE), "the passphrase leaked");
    }
}

#[test]
fn rotating_a_sealed_identity_seals_the_new_one() {
    let mut vault = setup();
    vault
        .ctl_input(["identity", "seal"], format!("{PASSPHRASE}\n").as_bytes())
        .ok();
    let old = status(&vault)["recipient"].as_str().unwrap().to_owned();
    const NEXT: &str = "a different passphrase";
    let rotated = vault
        .ctl_input(
            ["--json", "identity", "rotate"],
            format!("{NEXT}\n").as_bytes(),
        )
        .json();
    let new = rotated["recipient"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let text = identity_text(&vault);
    assert!(
        !text.contains("AGE-SECRET-KEY-1") && text.contains(&new),
        "{text}"
    );

    vault.stop();
    vault.restart();
    assert!(flag(&status(&vault), "sealed"));
    let old_pass = vault.ctl_input(["unlock"], format!("{PASSPHRASE}\n").as_bytes());
    assert_eq!(old_pass.code, 3, "{old_pass:#?}");
    vault
        .ctl_input(["unlock"], format!("{NEXT}\n").as_bytes())
        .ok();
    assert_eq!(released(&vault), VALUE);
}

#[test]
fn systemd_encrypted_credential_supplies_the_identity() {
    let mut vault = setup();
    vault.stop();
    let root = vault.root.path();
    // The host key systemd-creds encrypts with (`--with-key=host`), in a
    // private file of the test's: the real one is
    // /var/lib/systemd/credential.secret.
    let host_key = root.join("credential.secret");
    let mut key = [0u8; 256];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .unwrap();
    std::fs::write(&host_key, key).unwrap();
    std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o400)).unwrap();

    // The README's recipe.
    let encrypted = root.join("vault-identity.cred");
    let identity = vault.state_dir.join("identity.txt");
    creds(
        &host_key,
        &[
            "encrypt".as_ref(),
            "--name=vault-identity".as_ref(),
            "--with-key=host".as_ref(),
            identity.as_os_str(),
            encrypted.as_os_str(),
        ],
    );
    let cred_text = std::fs::read(&encrypted).unwrap();
    let plain = std::fs::read_to_string(&identity).unwrap();
    let key_line = plain
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap();
    assert!(!mcplexer_tests::contains_bytes(
        &cred_text,
        key_line.as_bytes()
    ));
    std::fs::remove_file(&identity).unwrap();

    // What systemd does for LoadCredentialEncrypted=: decrypt into a
    // private directory named by $CREDENTIALS_DIRECTORY.
    let credentials = root.join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700)).unwrap();
    let decrypted = credentials.join("vault-identity");
    creds(
        &host_key,
        &[
            "decrypt".as_ref(),
            "--name=vault-identity".as_ref(),
            encrypted.as_os_str(),
            decrypted.as_os_str(),
        ],
    );
    std::fs::set_permissions(&decrypted, std::fs::Permissions::from_mode(0o400)).unwrap();
    // A credential of another name does not decrypt.
    let renamed = Command::new("systemd-creds")
        .env("SYSTEMD_CREDENTIAL_SECRET", &host_key)
        .args(["decrypt", "--name=other"])
        .arg(&encrypted)
        .arg(root.join("other"))
        .output()
        .unwrap();
    assert!(!renamed.status.success(), "{renamed:?}");

    let mut cmd = vault.command();
    cmd.env("CREDENTIALS_DIRECTORY", &credentials)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.join("creds-vault.log")).unwrap());
    let notify = root.join("notify-creds");
    let mut child = mcplexer_tests::spawn_ready(cmd, &notify).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let s = status(&vault);
    assert_eq!(s["recipient"].as_str().map(str::len), Some(62), "{s}");
    assert_eq!(released(&vault), VALUE);
    assert!(
        !identity.exists(),
        "the vault wrote an identity beside the credential"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Runs `systemd-creds ARGS` with `host_key` as the host key.
fn creds(host_key: &Path, args: &[&std::ffi::OsStr]) {
    let out = Command::new("systemd-creds")
        .env("SYSTEMD_CREDENTIAL_SECRET", host_key)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-creds {args:?}: {out:?}");
}
