//! The vault's age X25519 identity: generated on first start, or supplied by
//! a file or a systemd credential; encryption and decryption with it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::error::{Result, VaultError};

/// Where the identity came from; decides whether it may be rotated in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityOrigin {
    /// The file in the state directory, owned and rotated by the vault.
    StateDir(PathBuf),
    /// A file named with `--identity`, managed by the operator.
    File(PathBuf),
    /// The systemd credential `$CREDENTIALS_DIRECTORY/vault-identity`.
    Credential(PathBuf),
}

impl IdentityOrigin {
    /// The path the identity was read from.
    pub fn path(&self) -> &Path {
        match self {
            Self::StateDir(p) | Self::File(p) | Self::Credential(p) => p,
        }
    }
}

/// The vault's identity and its recipient. Holds the private key: no `Debug`,
/// no `Clone`; the key is wiped when dropped (age's `Identity` zeroizes).
pub struct Keyring {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

impl Keyring {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Self::from_identity(age::x25519::Identity::generate())
    }

    fn from_identity(identity: age::x25519::Identity) -> Self {
        let recipient = identity.to_public();
        Self {
            identity,
            recipient,
        }
    }

    /// Parses an identity file: `#` comment lines and one `AGE-SECRET-KEY-1…`.
    fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let (Some(line), None) = (keys.next(), keys.next()) else {
            return Err(VaultError::FailedPrecondition {
                message: format!(
                    "identity file {} must hold exactly one AGE-SECRET-KEY-1 line",
                    path.display()
                ),
                fix: Some(
                    "age-keygen -o FILE (or remove the file to let the vault generate one)".into(),
                ),
            });
        };
        let identity =
            age::x25519::Identity::from_str(line).map_err(|_| VaultError::FailedPrecondition {
                message: format!(
                    "identity file {} does not hold a valid age X25519 identity",
                    path.display()
                ),
                fix: None,
            })?;
        Ok(Self::from_identity(identity))
    }

    /// The public recipient, `age1…`.
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    /// Encrypts `plaintext` to this keyring's recipient.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let encryptor = age::Encryptor::with_recipients(std::iter::once(
            &self.recipient as &dyn age::Recipient,
        ))
        .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut out = Vec::with_capacity(plaintext.len() + 256);
        let mut writer = encryptor
            .wrap_output(&mut out)
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        writer
            .write_all(plaintext)
            .and_then(|()| writer.finish().map(|_| ()))
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        Ok(out)
    }

    /// Decrypts a ciphertext made by [`Keyring::encrypt`].
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let decryptor =
            age::Decryptor::new(ciphertext).map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut out = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
        reader
            .read_to_end(&mut out)
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        Ok(out)
    }

    /// The identity file's contents (zeroized when dropped).
    fn file_contents(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# MCPlexer vault identity. Keep private: it decrypts every stored secret.\n# public key: {}\n{}\n",
            self.recipient,
            self.identity.to_string().expose_secret()
        ))
    }
}

/// Writes `keyring` to `path` (mode 0600, created new, synced).
pub fn write_identity_file(keyring: &Keyring, path: &Path) -> Result<()> {
    let contents = keyring.file_contents();
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| VaultError::io(format!("cannot write identity {}", path.display()), e))
}

fn read_identity(path: &Path) -> Result<Keyring> {
    let mut text = Zeroizing::new(String::new());
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| VaultError::io(format!("cannot read identity {}", path.display()), e))?;
    Keyring::parse(&text, path)
}

/// Loads the identity: `explicit` (`--identity`) first, then the systemd
/// credential `vault-identity` in `credentials` ($CREDENTIALS_DIRECTORY),
/// then `state_dir/identity.txt`, generating the
/// last on first start.
pub fn load_or_generate(
    state_dir: &Path,
    explicit: Option<&Path>,
    credentials: Option<&Path>,
) -> Result<(Keyring, IdentityOrigin)> {
    if let Some(path) = explicit {
        return Ok((read_identity(path)?, IdentityOrigin::File(path.to_owned())));
    }
    if let Some(dir) = credentials {
        let path = dir.join("vault-identity");
        if path.exists() {
            return Ok((read_identity(&path)?, IdentityOrigin::Credential(path)));
        }
    }
    let path = state_dir.join("identity.txt");
    if path.exists() {
        return Ok((read_identity(&path)?, IdentityOrigin::StateDir(path)));
    }
    if state_dir.join("vault.db").exists() {
        // A database without its identity: a new identity could not read
        // it, and writing one would only hide what is missing.
        return Err(VaultError::FailedPrecondition {
            message: format!(
                "{} exists but its identity {} does not: the stored secrets can only be decrypted with the identity they were encrypted to",
                state_dir.join("vault.db").display(),
                path.display()
            ),
            fix: Some(format!(
                "restore the identity from your backup to {}, or give it with --identity FILE",
                path.display()
            )),
        });
    }
    let keyring = Keyring::generate();
    write_identity_file(&keyring, &path)?;
    tracing::info!(path = %path.display(), recipient = %keyring.recipient(), "generated a new vault identity");
    Ok((keyring, IdentityOrigin::StateDir(path)))
}

/// Reads the identity at `path` if it exists (used to finish an interrupted
/// rotation).
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Keyring>> {
    if path.exists() {
        read_identity(path).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::generate();
        let ct = keyring.encrypt(b"hunter2").unwrap();
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(&keyring.decrypt(&ct).unwrap()[..], b"hunter2");

        let path = dir.path().join("identity.txt");
        write_identity_file(&keyring, &path).unwrap();
        let again = read_identity(&path).unwrap();
        assert_eq!(again.recipient(), keyring.recipient());
        assert_eq!(&again.decrypt(&ct).unwrap()[..], b"hunter2");
        // create_new: never overwrites an identity.
        assert!(write_identity_file(&keyring, &path).is_err());
    }

    #[test]
    fn other_identity_cannot_decrypt() {
        let a = Keyring::generate();
        let b = Keyring::generate();
        let ct = a.encrypt(b"x").unwrap();
        assert!(b.decrypt(&ct).is_err());
    }
}
