//! `identity rotate`: re-encrypt every ciphertext under a new identity in one
//! transaction. The new identity is written beside the old one first; the old
//! file is replaced only after the commit, and a start that finds the
//! database encrypted to the new one finishes the rename (see `run`), as
//! does the next rotation in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mcplexer_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::error::{Result, VaultError};
use crate::service::Shared;
use crate::vault::{IdentityOrigin, Keyring, read_if_exists, write_identity_file};

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

/// Clears the way for a new identity file at `pending`. A file found there
/// is usually left by a rotation that failed before its commit, and is
/// garbage. But a rotation that committed and then failed to rename it
/// over `current` left there the identity the database is encrypted to
/// (`live`), its only copy: that one is installed now, as a start would,
/// and never deleted.
fn clear_pending(pending: &Path, current: &Path, live: &str) -> Result<()> {
    let found = match read_if_exists(pending) {
        Ok(None) => return Ok(()),
        Ok(Some(keyring)) => Some(keyring.recipient()),
        // It cannot be read: whether it holds the live identity is unknown.
        Err(err @ VaultError::Io { .. }) => return Err(err),
        // Not an identity: a write that failed part-way.
        Err(_) => None,
    };
    if found.as_deref() == Some(live) {
        install(pending, current).map_err(|e| VaultError::FailedPrecondition {
            message: format!(
                "{} holds the identity the database is encrypted to (a rotation committed but could not replace {}), and it still cannot be moved there: {e}; no new rotation was started",
                pending.display(),
                current.display()
            ),
            fix: Some(format!(
                "mv {} {} (or restart the vault, which does it), then rotate again",
                pending.display(),
                current.display()
            )),
        })?;
        tracing::warn!(identity = %current.display(), "installed the identity of an earlier rotation whose rename had failed");
        return Ok(());
    }
    std::fs::remove_file(pending)
        .map_err(|e| VaultError::io(format!("cannot remove {}", pending.display()), e))
}

/// Rotates the identity; returns the new recipient and how many ciphertexts
/// were re-encrypted. When the identity file is sealed, the new one is
/// sealed with `passphrase`, which is then required; otherwise a
/// passphrase is refused (`identity seal` seals). `record` is committed
/// with the re-encryption, so a rotation is never without its audit record.
pub async fn rotate(
    shared: &Shared,
    passphrase: Zeroizing<Vec<u8>>,
    record: pb::AuditRecord,
) -> Result<(String, u64)> {
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
        (true, false) => rotate_locked(shared, Some(passphrase), record).await,
        (false, true) => rotate_locked(shared, None, record).await,
    }
}

/// The rotation itself, with the rotation lock held: a new identity
/// (sealed with `seal_with` when given) written beside the current one,
/// every ciphertext re-encrypted to it in one transaction with `record`,
/// then the file renamed into place.
pub(crate) async fn rotate_locked(
    shared: &Shared,
    seal_with: Option<Zeroizing<Vec<u8>>>,
    record: pb::AuditRecord,
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
    clear_pending(&pending, current, &shared.store.keyring().recipient())?;
    let next = Arc::new(Keyring::generate()?);
    write_identity_file(&next, &pending, seal_with.as_ref().map(|p| p.as_slice()))?;
    let job_keyring = next.clone();
    let result = shared
        .store
        .write(move |ctx| {
            let count = ctx.reencrypt_all(&job_keyring)?;
            ctx.set_keyring(job_keyring);
            ctx.insert_audit(record)?;
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
        // The writer went away: whether it committed is unknown, and the
        // next start (or rotation) tells from the database.
        Err(err @ VaultError::Unavailable) => Err(err),
        Err(err) => {
            let _ = std::fs::remove_file(&pending);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
        let keyring = Keyring::generate().unwrap();
        let path = dir.join(name);
        write_identity_file(&keyring, &path, None).unwrap();
        (path, keyring.recipient())
    }

    fn recipient(path: &Path) -> String {
        read_if_exists(path).unwrap().unwrap().recipient()
    }

    #[test]
    fn a_pending_identity_the_database_uses_is_installed_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (current, _) = identity(dir.path(), "identity.txt");
        let (pending, live) = identity(dir.path(), "identity.next.txt");
        clear_pending(&pending, &current, &live).unwrap();
        assert!(!pending.exists());
        assert_eq!(recipient(&current), live);
    }

    #[test]
    fn a_pending_identity_that_cannot_be_installed_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("identity.txt");
        std::fs::create_dir(&current).unwrap();
        std::fs::write(current.join("in-the-way"), "x").unwrap();
        let (pending, live) = identity(dir.path(), "identity.next.txt");
        let err = clear_pending(&pending, &current, &live).unwrap_err();
        assert!(
            matches!(&err, VaultError::FailedPrecondition { fix: Some(fix), .. } if fix.starts_with("mv ")),
            "{err}"
        );
        assert_eq!(recipient(&pending), live);
    }

    #[test]
    fn a_pending_identity_of_a_failed_rotation_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (current, live) = identity(dir.path(), "identity.txt");
        let (pending, _) = identity(dir.path(), "identity.next.txt");
        clear_pending(&pending, &current, &live).unwrap();
        assert!(!pending.exists());
        assert_eq!(recipient(&current), live);
        // A file cut short by a failed write is no identity either.
        std::fs::write(&pending, "# MCPlexer vault identity.\n").unwrap();
        clear_pending(&pending, &current, &live).unwrap();
        assert!(!pending.exists());
        // Nothing there: nothing to do.
        clear_pending(&pending, &current, &live).unwrap();
        assert_eq!(recipient(&current), live);
    }
}
