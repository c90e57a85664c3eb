//! THE secret module: the age identity, encryption and decryption, and the
//! in-memory forms of decrypted material.
//!
//! Only this module calls `age::` or holds long-lived key material. Nothing in
//! it derives or implements `Debug` over secret bytes; every buffer that holds
//! plaintext is a `Zeroizing` buffer, wiped when dropped.
//!
//! Trust: runs inside the vault daemon only. Plaintext leaves this module for
//! exactly one purpose, the credential release to a granted peer.

mod identity;
pub mod locked;
mod secrets;

pub(crate) use identity::read_if_exists;
pub use identity::{IdentityOrigin, Keyring, load_or_generate, write_identity_file};
pub use secrets::SecretMap;
