//! Sealed identities: `unlock` opens a vault started from a passphrase-sealed
//! identity file, `identity seal` replaces the vault-managed identity by a
//! new, sealed one.
//!
//! While sealed, the store's keyring holds only the recipient: encryption
//! works, every decryption fails with `VAULT_SEALED` and the command that
//! fixes it. Unlocking swaps the open keyring in through the writer, as a
//! rotation does. Key changes (rotate, seal, unlock) take the same lock, so
//! passphrase guesses are served one at a time, each costing age's scrypt
//! work (about a second).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mcplexer_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::error::{Result, VaultError};
use crate::service::Shared;
use crate::vault::IdentityOrigin;

/// The shortest passphrase `identity seal` and `identity rotate` accept.
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// Checks a new passphrase: UTF-8, at least [`MIN_PASSPHRASE_CHARS`]
/// characters.
pub fn check_new_passphrase(passphrase: &[u8]) -> Result<()> {
    let chars = std::str::from_utf8(passphrase)
        .map_err(|_| VaultError::invalid("the passphrase is not UTF-8 text"))?
        .chars()
        .count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(VaultError::invalid(format!(
            "the passphrase has {chars} characters; at least {MIN_PASSPHRASE_CHARS} are needed"
        )));
    }
    Ok(())
}

/// Unseals the vault with `passphrase`. Returns whether it was sealed, and
/// the recipient. A wrong passphrase is `PermissionDenied`. `record` (the
/// success) is committed with the new keyring; an unlock of an open vault
/// changes nothing and records it alone.
pub async fn unlock(
    shared: &Shared,
    passphrase: Zeroizing<Vec<u8>>,
    record: pb::AuditRecord,
) -> Result<(bool, String)> {
    let _one_at_a_time = shared.rotation.lock().await;
    let current = shared.store.keyring();
    if !current.is_sealed() {
        if let Err(err) = shared
            .store
            .write(move |ctx| ctx.insert_audit(record))
            .await
        {
            tracing::error!(error = %err, "cannot record an audit event");
        }
        return Ok((false, current.recipient()));
    }
    // scrypt takes about a second of CPU: off the async workers.
    let open = tokio::task::spawn_blocking(move || current.unseal(&passphrase))
        .await
        .map_err(|_| VaultError::Unavailable)??;
    let open = Arc::new(open);
    let recipient = open.recipient();
    shared
        .store
        .write(move |ctx| {
            ctx.set_keyring(open);
            ctx.insert_audit(record)?;
            Ok(())
        })
        .await?;
    tracing::info!(%recipient, "vault unlocked");
    Ok((true, recipient))
}

/// Seals the vault-managed identity: a new identity, sealed with
/// `passphrase` from the moment it is written, replaces the open one, and
/// every ciphertext is re-encrypted to it (a rotation). Wrapping the old key
/// instead would leave it usable wherever a copy of the open file survives
/// (freed disk blocks, snapshots, backups). The running vault stays open;
/// from its next start it is sealed. Returns the file, the new recipient
/// and how many ciphertexts were re-encrypted. `record` is committed with
/// the re-encryption.
pub async fn seal(
    shared: &Shared,
    passphrase: Zeroizing<Vec<u8>>,
    record: pb::AuditRecord,
) -> Result<(PathBuf, String, u64)> {
    let _one_at_a_time = shared.rotation.lock().await;
    let IdentityOrigin::StateDir(path) = &shared.info.identity else {
        return Err(VaultError::FailedPrecondition {
            message: format!(
                "the identity is supplied from {}, which the vault does not manage; protect it there (a systemd credential is encrypted by systemd-creds)",
                shared.info.identity.path().display()
            ),
            fix: None,
        });
    };
    if shared.identity_sealed.load(Ordering::SeqCst) {
        return Err(VaultError::FailedPrecondition {
            message: format!("the identity {} is already sealed", path.display()),
            fix: Some(
                "to change the passphrase, rotate to a new identity sealed with the new one: mcplexerctl identity rotate".into(),
            ),
        });
    }
    let (recipient, count) = crate::rotate::rotate_locked(shared, Some(passphrase), record).await?;
    shared.identity_sealed.store(true, Ordering::SeqCst);
    tracing::info!(path = %path.display(), %recipient, "identity replaced by a sealed one; the vault starts sealed from now on");
    Ok((path.clone(), recipient, count))
}
