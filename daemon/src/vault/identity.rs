//! The vault's age X25519 identity: generated on first start, or supplied by
//! a file or a systemd credential; encryption and decryption with it.
//!
//! An identity file may be *sealed*: the plain identity file encrypted with
//! a passphrase (age scrypt, ASCII-armored), after `#` comment lines that
//! name its public key. A vault started from a sealed file knows its
//! recipient, so it can check its database, but it cannot decrypt until an
//! administrator unlocks it with the passphrase ([`Keyring::unseal`]). The
//! format is age's own: `grep -v '^#' identity.txt | age -d` opens it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::locked::Locked;
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

/// The first line of an ASCII-armored age file.
const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

/// The highest scrypt work factor (log2 N) an unlock accepts.
const MAX_SCRYPT_LOG_N: u8 = 22;

/// The comment that names a sealed file's public key.
const PUBLIC_KEY_COMMENT: &str = "# public key: ";

/// The vault's identity and its recipient. Holds the private key: no `Debug`,
/// no `Clone`; the key lives in locked pages of its own (see [`Locked`]) and
/// is wiped when dropped (age's `Identity` zeroizes, then the pages are
/// zeroed).
///
/// A keyring read from a sealed file has no private key (`identity` is
/// `None`) until [`Keyring::unseal`] makes an open one from it.
pub struct Keyring {
    identity: Option<Locked<age::x25519::Identity>>,
    recipient: age::x25519::Recipient,
    /// The armored age file the identity is sealed in, while it is.
    sealed: Option<String>,
}

impl Keyring {
    /// A fresh random identity.
    pub fn generate() -> Result<Self> {
        Self::from_identity(age::x25519::Identity::generate())
    }

    fn from_identity(identity: age::x25519::Identity) -> Result<Self> {
        let recipient = identity.to_public();
        let identity = Locked::new(identity)
            .map_err(|e| VaultError::io("cannot map memory for the identity", e))?;
        Ok(Self {
            identity: Some(identity),
            recipient,
            sealed: None,
        })
    }

    /// Parses an identity file: either `#` comment lines and one
    /// `AGE-SECRET-KEY-1…`, or a sealed file (see the module docs).
    fn parse(text: &str, path: &Path) -> Result<Self> {
        if text.lines().any(|l| l.trim() == ARMOR_BEGIN) {
            return Self::parse_sealed(text, path);
        }
        Self::parse_open(text, path)
    }

    fn parse_open(text: &str, path: &Path) -> Result<Self> {
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
        Self::from_identity(identity)
    }

    fn parse_sealed(text: &str, path: &Path) -> Result<Self> {
        let public = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(PUBLIC_KEY_COMMENT.trim_end()))
            .map(str::trim);
        let recipient = public
            .and_then(|p| age::x25519::Recipient::from_str(p).ok())
            .ok_or_else(|| VaultError::FailedPrecondition {
                message: format!(
                    "the sealed identity {} does not name its public key in a '{PUBLIC_KEY_COMMENT}age1…' line",
                    path.display()
                ),
                fix: Some(
                    "add the line with the identity's public key (age-keygen -y on the open identity prints it)".into(),
                ),
            })?;
        let armored: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| [l.trim(), "\n"])
            .collect();
        Ok(Self {
            identity: None,
            recipient,
            sealed: Some(armored),
        })
    }

    /// The public recipient, `age1…`.
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    /// Whether this keyring lacks its private key (read from a sealed file
    /// and not unsealed).
    pub fn is_sealed(&self) -> bool {
        self.identity.is_none()
    }

    /// Opens a sealed keyring with `passphrase`. The identity inside must be
    /// the one the file names. A wrong passphrase is `PermissionDenied`.
    pub fn unseal(&self, passphrase: &[u8]) -> Result<Keyring> {
        let Some(armored) = &self.sealed else {
            return Err(VaultError::FailedPrecondition {
                message: "the vault is not sealed".into(),
                fix: None,
            });
        };
        let passphrase = passphrase_secret(passphrase)?;
        let decryptor =
            age::Decryptor::new_buffered(age::armor::ArmoredReader::new(armored.as_bytes()))
                .map_err(|e| {
                    VaultError::Crypto(format!("the sealed identity is unreadable: {e}"))
                })?;
        if !decryptor.is_scrypt() {
            return Err(VaultError::Crypto(
                "the sealed identity is not passphrase-encrypted".into(),
            ));
        }
        let mut identity = age::scrypt::Identity::new(passphrase);
        // age's own cap (about 16 s of work on this host) would refuse a file
        // sealed on a faster one; the file is the vault's own, in its
        // private state directory, so a fixed cap (2^22, 4 GiB) is enough.
        identity.set_max_work_factor(MAX_SCRYPT_LOG_N);
        let mut reader = match decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)) {
            Ok(reader) => reader,
            Err(age::DecryptError::ExcessiveWork { required, target }) => {
                return Err(VaultError::Crypto(format!(
                    "the sealed identity needs scrypt work factor {required} (this host would choose {target}), over the limit of {MAX_SCRYPT_LOG_N}"
                )));
            }
            Err(_) => {
                return Err(VaultError::denied(
                    "the passphrase does not unlock the vault's identity",
                ));
            }
        };
        let text = read_private(&mut reader)
            .map_err(|e| VaultError::Crypto(format!("the sealed identity is corrupt: {e}")))?;
        let open = Self::parse_open(&text, Path::new("(sealed identity)"))?;
        if open.recipient != self.recipient {
            return Err(VaultError::Crypto(format!(
                "the sealed identity holds {}, not the {} its file names",
                open.recipient, self.recipient
            )));
        }
        Ok(open)
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
        let Some(identity) = &self.identity else {
            return Err(VaultError::Sealed);
        };
        let decryptor =
            age::Decryptor::new(ciphertext).map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(&**identity as &dyn age::Identity))
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let mut out = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
        reader
            .read_to_end(&mut out)
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        Ok(out)
    }

    /// The identity file's contents (zeroized when dropped): open, or
    /// sealed with `passphrase`.
    fn file_contents(&self, passphrase: Option<&[u8]>) -> Result<Zeroizing<String>> {
        let Some(identity) = &self.identity else {
            return Err(VaultError::Sealed);
        };
        let open = Zeroizing::new(format!(
            "# MCPlexer vault identity. Keep private: it decrypts every stored secret.\n{PUBLIC_KEY_COMMENT}{}\n{}\n",
            self.recipient,
            identity.to_string().expose_secret()
        ));
        let Some(passphrase) = passphrase else {
            return Ok(open);
        };
        let encryptor = age::Encryptor::with_user_passphrase(passphrase_secret(passphrase)?);
        let crypto = |e: std::io::Error| VaultError::Crypto(e.to_string());
        let mut armored = Vec::with_capacity(open.len() + 512);
        let armor =
            age::armor::ArmoredWriter::wrap_output(&mut armored, age::armor::Format::AsciiArmor)
                .map_err(crypto)?;
        let mut writer = encryptor.wrap_output(armor).map_err(crypto)?;
        writer.write_all(open.as_bytes()).map_err(crypto)?;
        writer
            .finish()
            .and_then(|armor| armor.finish())
            .map_err(crypto)?;
        let armored = String::from_utf8(armored)
            .map_err(|_| VaultError::Crypto("age armor is not UTF-8".into()))?;
        Ok(Zeroizing::new(format!(
            "# MCPlexer vault identity, sealed with a passphrase (age scrypt).\n\
             # A vault started with it is sealed until: mcplexerctl unlock\n\
             {PUBLIC_KEY_COMMENT}{}\n{armored}",
            self.recipient
        )))
    }
}

/// A passphrase as age takes it. It must be UTF-8 and not empty.
fn passphrase_secret(passphrase: &[u8]) -> Result<age::secrecy::SecretString> {
    let text = std::str::from_utf8(passphrase)
        .map_err(|_| VaultError::invalid("the passphrase is not UTF-8 text"))?;
    if text.is_empty() {
        return Err(VaultError::invalid("the passphrase is empty"));
    }
    Ok(age::secrecy::SecretString::from(text.to_owned()))
}

/// Writes `keyring` to `path` (mode 0600, created new, synced), sealed with
/// `passphrase` if one is given.
pub fn write_identity_file(
    keyring: &Keyring,
    path: &Path,
    passphrase: Option<&[u8]>,
) -> Result<()> {
    let contents = keyring.file_contents(passphrase)?;
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

/// The most an identity file may hold: an identity is under 200 bytes, a
/// sealed one under 1 KiB.
const MAX_IDENTITY_FILE: usize = 64 << 10;

/// Reads all of `reader` (at most [`MAX_IDENTITY_FILE`]) into a buffer
/// reserved up front, so that no partial copy of a key is left behind in
/// memory freed by a growing buffer.
fn read_private(reader: impl Read) -> std::io::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::with_capacity(MAX_IDENTITY_FILE + 1));
    reader
        .take(MAX_IDENTITY_FILE as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > MAX_IDENTITY_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_IDENTITY_FILE} bytes: not an identity file"),
        ));
    }
    Ok(text)
}

fn read_identity(path: &Path) -> Result<Keyring> {
    let text = File::open(path)
        .and_then(read_private)
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
    let keyring = Keyring::generate()?;
    write_identity_file(&keyring, &path, None)?;
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
        let keyring = Keyring::generate().unwrap();
        let ct = keyring.encrypt(b"hunter2").unwrap();
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(&keyring.decrypt(&ct).unwrap()[..], b"hunter2");

        let path = dir.path().join("identity.txt");
        write_identity_file(&keyring, &path, None).unwrap();
        let again = read_identity(&path).unwrap();
        assert_eq!(again.recipient(), keyring.recipient());
        assert_eq!(&again.decrypt(&ct).unwrap()[..], b"hunter2");
        // create_new: never overwrites an identity.
        assert!(write_identity_file(&keyring, &path, None).is_err());
    }

    #[test]
    fn sealed_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::generate().unwrap();
        let ct = keyring.encrypt(b"hunter2").unwrap();
        let path = dir.path().join("identity.txt");
        write_identity_file(&keyring, &path, Some(b"correct horse")).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("AGE-SECRET-KEY-1"));
        assert!(text.contains(&keyring.recipient()));

        let sealed = read_identity(&path).unwrap();
        assert!(sealed.is_sealed());
        assert_eq!(sealed.recipient(), keyring.recipient());
        // Encryption needs only the recipient; decryption needs the key.
        let ct2 = sealed.encrypt(b"x").unwrap();
        assert!(matches!(sealed.decrypt(&ct), Err(VaultError::Sealed)));

        assert!(matches!(
            sealed.unseal(b"wrong horse"),
            Err(VaultError::PermissionDenied { .. })
        ));
        let open = sealed.unseal(b"correct horse").unwrap();
        assert!(!open.is_sealed());
        assert_eq!(&open.decrypt(&ct).unwrap()[..], b"hunter2");
        assert_eq!(&open.decrypt(&ct2).unwrap()[..], b"x");
        assert!(matches!(
            open.unseal(b"correct horse"),
            Err(VaultError::FailedPrecondition { .. })
        ));
    }

    #[test]
    fn sealed_file_must_name_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::generate().unwrap();
        let path = dir.path().join("identity.txt");
        write_identity_file(&keyring, &path, Some(b"pw")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let stripped: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, stripped).unwrap();
        assert!(matches!(
            read_identity(&path),
            Err(VaultError::FailedPrecondition { .. })
        ));
    }

    #[test]
    fn other_identity_cannot_decrypt() {
        let a = Keyring::generate().unwrap();
        let b = Keyring::generate().unwrap();
        let ct = a.encrypt(b"x").unwrap();
        assert!(b.decrypt(&ct).is_err());
    }
}
