//! The gRPC server on the Unix socket: binding, peer credentials of every
//! connection, serving until SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcplexer_proto::MAX_MESSAGE_SIZE;
use mcplexer_proto::v1::admin_server::AdminServer;
use mcplexer_proto::v1::auth_server::AuthServer;
use mcplexer_proto::v1::vault_server::VaultServer;
use tokio::net::{UnixListener, UnixStream};

use crate::conn;
use crate::limits::{InFlightLayer, IsAdmin, USER_IN_FLIGHT};
use crate::service::{AdminService, AuthService, Shared, VaultService};
use crate::sys;

/// Binds the socket at `path`: removes a stale socket (one nobody listens
/// on), refuses if another vault is listening, then sets group and mode.
pub async fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
        if gid.is_some() {
            // The daemon's umask made it private; members of the client group
            // must be able to reach the socket inside (which is 0660).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
                format!(
                    "cannot open the socket directory {} to clients: {e}",
                    dir.display()
                )
            })?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it.\n  fix: remove it, or choose another path with --socket",
                path.display()
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another vault is already listening on {}.\n  fix: stop it, or choose another path with --socket",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    sys::set_socket_access(path, gid, mode)
        .map_err(|e| format!("cannot set owner group and mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// The socket the daemon serves on.
#[derive(Clone, Debug)]
pub enum Socket {
    /// Bound by the daemon: removed when it stops, if the path still names
    /// the socket it bound (device and inode), not a successor's.
    Bound {
        /// Its path.
        path: PathBuf,
        /// Device and inode of the file bound.
        file: Option<(u64, u64)>,
    },
    /// Passed by systemd (socket activation): systemd's to remove.
    Passed(PathBuf),
}

impl Socket {
    /// The socket just bound at `path`.
    pub fn bound(path: PathBuf) -> Self {
        let file = file_id(&path);
        Self::Bound { path, file }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Bound { path, .. } | Self::Passed(path) => path,
        }
    }

    /// Removes a socket file this daemon bound, unless another vault has
    /// since bound its own at the same path (which a restart does while an
    /// old vault is still finishing).
    pub fn remove_if_ours(&self) {
        if let Self::Bound { path, file } = self
            && file.is_some()
            && file_id(path) == *file
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Takes a listening socket systemd passed: it must be a listening Unix
/// stream socket. Returns it with its path.
pub fn adopt(fd: std::os::fd::OwnedFd) -> Result<(UnixListener, PathBuf), String> {
    use nix::sys::socket::{SockType, getsockname, getsockopt, sockopt};
    let unfit = |why: String| format!("the socket systemd passed cannot be used: {why}");
    let kind = getsockopt(&fd, sockopt::SockType).map_err(|e| unfit(e.to_string()))?;
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| unfit(e.to_string()))?;
    let addr: nix::sys::socket::UnixAddr = {
        use std::os::fd::AsRawFd;
        getsockname(fd.as_raw_fd()).map_err(|e| unfit(format!("not a Unix socket ({e})")))?
    };
    if kind != SockType::Stream || !listening {
        return Err(unfit(
            "it is not a listening Unix stream socket (ListenStream=/path in the socket unit)"
                .into(),
        ));
    }
    let path = addr
        .path()
        .map(Path::to_path_buf)
        .ok_or_else(|| unfit("it has no path".into()))?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    std_listener
        .set_nonblocking(true)
        .map_err(|e| unfit(e.to_string()))?;
    let listener = UnixListener::from_std(std_listener).map_err(|e| unfit(e.to_string()))?;
    Ok((listener, path))
}

/// How often the vault pings an HTTP/2 peer, and how long it waits for
/// the answer before closing the connection: a peer that stopped reading
/// (or never reads) does not hold a connection for long.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves both services on `listener` until `shutdown` completes, under the
/// connection `limits` and the per-uid request limits.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    limits: conn::Limits,
    user_request_rate: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let admin_check = shared.clone();
    let is_admin: IsAdmin = Arc::new(move |peer| {
        admin_check
            .authz
            .caller(peer)
            .is_ok_and(|caller| caller.is_admin())
    });
    let gate = Arc::new(conn::Gate::new(limits, is_admin.clone()));
    let incoming = conn::incoming(listener, gate);
    let admin = AdminServer::new(AdminService(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let auth = AuthServer::new(AuthService(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let vault = VaultServer::new(VaultService::new(shared))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let result = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(InFlightLayer::new(
            USER_IN_FLIGHT,
            user_request_rate,
            is_admin,
        ))
        .add_service(admin)
        .add_service(auth)
        .add_service(vault)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    result.map_err(|e| format!("the gRPC server failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_vault_removes_only_the_socket_it_bound() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("no temporary directory")
        };
        let path = dir.path().join("vault.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).ok();
        let old = Socket::bound(path.clone());
        // A successor took the path while the old vault was stopping.
        std::fs::remove_file(&path).ok();
        let second = std::os::unix::net::UnixListener::bind(&path).ok();
        let new = Socket::bound(path.clone());
        old.remove_if_ours();
        assert!(path.exists(), "the successor's socket was removed");
        new.remove_if_ours();
        assert!(!path.exists());
        drop((first, second));
    }
}
