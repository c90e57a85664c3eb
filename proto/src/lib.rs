//! Protocol of the MCPlexer vault: the generated prost messages and tonic
//! services of `mcplexer/v1`, [`connect`], the client-side helper that
//! opens a channel over the vault's Unix socket, [`service_env`], what
//! systemd passes the vault and the proxy (sockets, notification socket,
//! credentials), and [`peer`], the owner of a loopback TCP client.
//!
//! Trust: nothing here authenticates anyone. The vault authorises each call
//! from the socket's peer credentials; clients only need to reach the socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod peer;
pub mod service_env;
pub mod sockdiag;

/// Generated code of the `mcplexer.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("mcplexer.v1");
}

/// The largest gRPC message either side accepts (4 MiB).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The longest YAML document the vault reads (apply, dry-run, the config
/// file): 1 MiB, far beyond any real configuration.
pub const MAX_DOCUMENT_SIZE: usize = 1024 * 1024;

/// Metadata key carrying the vault's stable error code (e.g. `NOT_FOUND`).
pub const ERROR_CODE_KEY: &str = "mcplexer-error-code";

/// Metadata key carrying the command that fixes an error, when there is one.
pub const ERROR_FIX_KEY: &str = "mcplexer-error-fix";

/// Fills `buf` from the kernel's CSPRNG (getrandom(2), through the
/// `getrandom` crate): the one source of every token, OAuth state, PKCE
/// verifier and session id the programs make.
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    // Callers say what the bytes were for; this names the source.
    getrandom::fill(buf).map_err(|e| std::io::Error::other(format!("getrandom: {e}")))
}

/// The vault's stable error code in `status` (empty when it sent none: the
/// status then came from the transport).
pub fn error_code(status: &tonic::Status) -> &str {
    metadata(status, ERROR_CODE_KEY)
}

/// The command that fixes the error in `status` (empty when there is none).
pub fn error_fix(status: &tonic::Status) -> &str {
    metadata(status, ERROR_FIX_KEY)
}

fn metadata<'a>(status: &'a tonic::Status, key: &str) -> &'a str {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Environment variable naming the vault socket for clients.
pub const SOCKET_ENV: &str = "MCPLEXER_VAULT_SOCKET";

/// Socket of a system-mode vault.
pub const SYSTEM_SOCKET: &str = "/run/mcplexer/vault.sock";

/// Why a channel to the vault could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket could not be reached (missing, refused, no permission).
    #[error("cannot connect to the vault at {path}: {source}")]
    Io {
        /// The socket path that was tried.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/2 channel could not be set up over the socket.
    #[error("cannot open a gRPC channel to the vault at {path}: {source}")]
    Transport {
        /// The socket path that was tried.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: tonic::transport::Error,
    },
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The socket of a user-mode vault for the current user:
/// `$XDG_RUNTIME_DIR/mcplexer/vault.sock`, or, where there is no runtime
/// directory (a root shell, a container), `vault.sock` in the user-mode state
/// directory (`$XDG_STATE_HOME/mcplexer`, default `~/.local/state/mcplexer`),
/// which is private to the user.
pub fn user_socket() -> Option<PathBuf> {
    if let Some(runtime) = env_dir("XDG_RUNTIME_DIR") {
        return Some(runtime.join("mcplexer").join("vault.sock"));
    }
    env_dir("XDG_STATE_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local").join("state")))
        .map(|state| state.join("mcplexer").join("vault.sock"))
}

/// The socket a client uses when none is given: `$MCPLEXER_VAULT_SOCKET`, else
/// the user-mode socket if it exists, else the system socket.
pub fn default_socket() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    user_socket()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(SYSTEM_SOCKET))
}

/// Opens a channel to the vault listening on the Unix socket `path`.
///
/// The connection is made eagerly, so a missing socket or a permission
/// problem is reported here rather than on the first call.
pub async fn connect(path: &Path) -> Result<Channel, ConnectError> {
    // Probe once so the error names the socket and the OS reason.
    UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Io {
            path: path.to_owned(),
            source,
        })?;
    let socket = path.to_owned();
    // The URI is required by the API but never used: the connector below
    // always dials the Unix socket.
    Endpoint::from_static("http://vault.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ConnectError::Transport {
            path: path.to_owned(),
            source,
        })
}

/// An Admin client with the vault's message size limits.
pub fn admin_client(channel: Channel) -> v1::admin_client::AdminClient<Channel> {
    v1::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// A Vault client with the vault's message size limits.
pub fn vault_client(channel: Channel) -> v1::vault_client::VaultClient<Channel> {
    v1::vault_client::VaultClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// An Auth client with the vault's message size limits.
pub fn auth_client(channel: Channel) -> v1::auth_client::AuthClient<Channel> {
    v1::auth_client::AuthClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_bytes_fill_the_whole_buffer_and_differ() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        super::random_bytes(&mut a).unwrap_or_else(|e| panic!("{e}"));
        super::random_bytes(&mut b).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        // All 64 bytes written: the chance of 8 zero bytes at the end of
        // both is 2^-128.
        assert!(a[56..] != [0; 8] || b[56..] != [0; 8]);
        super::random_bytes(&mut []).unwrap_or_else(|e| panic!("{e}"));
    }
}
