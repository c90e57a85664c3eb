//! Who is on the other end of a loopback connection. The proxy's `serve`
//! and `mcplexerctl ui` accept only their own uid: every call they make is
//! made with that uid's credentials.
//!
//! On a Unix socket the kernel says (`SO_PEERCRED`). On loopback TCP it
//! does not, so the client's socket is looked up in the kernel's socket
//! diagnostics ([`crate::sockdiag`]): the socket whose local end is the
//! client's address and whose remote end is ours. A connection whose owner
//! cannot be found is refused.

use std::io;
use std::net::SocketAddr;

/// Accepts the next connection on `listener` whose client socket uid `me`
/// owns. Every other one is closed at once and handed to `refused` with
/// its owner (when the kernel lists it) and address. An accept error of one
/// connection (reset, aborted) skips it; any other (no file descriptors
/// left) is retried after a second rather than spun on.
pub async fn accept_own(
    listener: &tokio::net::TcpListener,
    me: u32,
    refused: impl Fn(Option<u32>, SocketAddr),
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        let (io, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        // One netlink round trip, a blocking call: off the async workers.
        let owner = match io.local_addr() {
            Ok(local) => tokio::task::spawn_blocking(move || tcp_peer_uid(local, addr))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
            Err(_) => None,
        };
        if owner == Some(me) {
            return (io, addr);
        }
        refused(owner, addr);
    }
}

/// The uid that owns the client end of the loopback TCP connection from
/// `peer` to `local`, if a process holds it: the kernel's socket
/// diagnostics look the connection up by its four addresses.
///
/// A socket counts only in a state in which the client end of a
/// connection just accepted can be while its process still holds it:
/// ESTABLISHED, or FIN_WAIT1 and FIN_WAIT2 when it half-closed after
/// sending (`shutdown(SHUT_WR)`, as `nc -N` does), and only with an inode.
/// What is left of a socket its process closed (an orphan, a TIME_WAIT
/// placeholder listed as uid 0) names nobody: taken at its word, any user
/// could connect, send a request, close, and pass as root.
pub fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u32>> {
    use crate::sockdiag::{connection, state};
    Ok(connection(peer, local)?.and_then(|s| {
        let live = matches!(
            s.state,
            state::ESTABLISHED | state::FIN_WAIT1 | state::FIN_WAIT2
        ) && s.inode != 0;
        live.then_some(s.uid)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_socket_names_its_owner_and_a_closed_one_nobody() {
        let me = nix::unistd::geteuid().as_raw();
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(any) else {
                continue; // no IPv6 here
            };
            let server = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let client = std::net::TcpStream::connect(server).unwrap_or_else(|e| panic!("{e}"));
            let from = client.local_addr().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tcp_peer_uid(server, from).ok(), Some(Some(me)), "{any}");
            // The server's own end is not the client's.
            let (accepted, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
            drop(client);
            assert_eq!(tcp_peer_uid(server, from).ok(), Some(None), "{any}");
            drop(accepted);
        }
    }
}
