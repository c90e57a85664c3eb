//! `identity rotate`: re-encrypt every ciphertext under a new identity in one
//! transaction. The new identity is written beside the old one first; the old
//! file is replaced only after the commit, and a start that finds the
//! database encrypted to the new one finishes the rename (see `run`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use zeroize::Zeroizing;

use crate::error::{Result, VaultError};
use crate::service::Shared;
use crate::vault::{IdentityOrigin, Keyring, write_identity_file};

/// The file a rotation writes the next identity to.
pub fn pending_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.next.txt")
}

/// Renames `from` over `to` and syncs the directory.
pub fn install(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Rotates the identity; returns the new recipient and how many ciphertexts
/// were re-encrypted. When the identity file is sealed, the new one is
/// sealed with `passphrase`, which is then required; otherwise a
/// passphrase is refused (`identity seal` seals).
pub async fn rotate(shared: &Shared, passphrase: Zeroizing<Vec<u8>>) -> Result<(String, u64)> {
    let _one_at_a_time = shared.rotation.lock().await;
    let sealed = shared.identity_sealed.load(Ordering::SeqCst);
    match (sealed, passphrase.is_empty()) {
        (true, true) => Err(VaultError::invalid(
            "the identity is sealed, so its successor must be too: give the passphrase to seal it with",
        )),
        (false, false) => Err(VaultError::Invalid {
            message: "the identity is not sealed, so a passphrase has nothing to seal".into(),
            fix: Some("mcplexerctl identity seal (it also rotates)".into()),
        }),
        (true, false) => rotate_locked(shared, Some(passphrase)).await,
        (false, true) => rotate_locked(shared, None).await,
    }
}

/// The rotation itself, with the rotation lock held: a new identity
/// (sealed with `seal_with` when given) written beside the current one,
/// every ciphertext re-encrypted to it in one transaction, then the file
/// renamed into place.
pub(crate) async fn rotate_locked(
    shared: &Shared,
    seal_with: Option<Zeroizing<Vec<u8>>>,
) -> Result<(String, u64)> {
    let IdentityOrigin::StateDir(current) = &shared.info.identity else {
        return Err(VaultError::FailedPrecondition {
            message: format!(
                "the identity is supplied from {}, which the vault does not manage; rotate it there and restart the vault",
                shared.info.identity.path().display()
            ),
            fix: None,
        });
    };
    if let Some(passphrase) = &seal_with {
        crate::seal::check_new_passphrase(passphrase)?;
    }
    // Nothing can be re-encrypted while sealed; say so before any work.
    if shared.store.keyring().is_sealed() {
        return Err(VaultError::Sealed);
    }
    let pending = pending_path(&shared.info.state_dir);
    if pending.exists() {
        // Left by a rotation that failed before its commit: the database is
        // encrypted to the current identity (checked at start), so it is
        // garbage.
        std::fs::remove_file(&pending)
            .map_err(|e| VaultError::io(format!("cannot remove {}", pending.display()), e))?;
    }
    let next = Arc::new(Keyring::generate()?);
    write_identity_file(&next, &pending, seal_with.as_ref().map(|p| p.as_slice()))?;
    let job_keyring = next.clone();
    let result = shared
        .store
        .write(move |ctx| {
            let count = ctx.reencrypt_all(&job_keyring)?;
            ctx.set_keyring(job_keyring);
            Ok(count)
        })
        .await;
    match result {
        Ok(count) => {
            if let Err(err) = install(&pending, current) {
                // The database now needs the new identity, which is safe in
                // `pending`; the next start adopts it.
                tracing::error!(error = %err, pending = %pending.display(), "rotation committed but the identity file could not be replaced; the next start will finish it");
            }
            tracing::info!(recipient = %next.recipient(), count, "identity rotated");
            Ok((next.recipient(), count))
        }
        Err(err) => {
            let _ = std::fs::remove_file(&pending);
            Err(err)
        }
    }
}
