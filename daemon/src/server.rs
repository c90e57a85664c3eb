//! The gRPC server on the Unix socket: binding, peer credentials of every
//! connection, serving until SIGTERM/SIGINT.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mcplexer_proto::MAX_MESSAGE_SIZE;
use mcplexer_proto::v1::admin_server::AdminServer;
use mcplexer_proto::v1::auth_server::AuthServer;
use mcplexer_proto::v1::vault_server::VaultServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;

use crate::authz::PeerInfo;
use crate::service::{AdminService, AuthService, Shared, VaultService};
use crate::sys;

/// A connection with the peer credentials the kernel recorded at connect.
pub struct PeerStream {
    inner: UnixStream,
    peer: PeerInfo,
}

impl PeerStream {
    fn new(inner: UnixStream) -> io::Result<Self> {
        let cred = inner.peer_cred()?;
        let groups = sys::peer_groups(&inner)?;
        let peer = PeerInfo {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            groups,
        };
        Ok(Self { inner, peer })
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

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
    /// Bound by the daemon: removed when it stops.
    Bound(PathBuf),
    /// Passed by systemd (socket activation): systemd's to remove.
    Passed(PathBuf),
}

impl Socket {
    /// Its path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Bound(path) | Self::Passed(path) => path,
        }
    }
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

/// Serves both services on `listener` until `shutdown` completes; removes a
/// socket file it bound afterwards.
pub async fn serve(
    listener: UnixListener,
    socket: Socket,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(|conn| {
        match conn.and_then(PeerStream::new) {
            Ok(stream) => Some(Ok::<_, io::Error>(stream)),
            Err(err) => {
                // Without kernel credentials a connection cannot be
                // authorised: drop it.
                tracing::warn!(error = %err, "dropping a connection without peer credentials");
                None
            }
        }
    });
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
        .add_service(admin)
        .add_service(auth)
        .add_service(vault)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Socket::Bound(path) = &socket {
        let _ = std::fs::remove_file(path);
    }
    result.map_err(|e| format!("the gRPC server failed: {e}"))
}
