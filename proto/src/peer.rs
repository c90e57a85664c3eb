//! Who is on the other end of a loopback connection. The proxy's `serve`
//! and `mcplexerctl ui` accept only their own uid: every call they make is
//! made with that uid's credentials.
//!
//! On a Unix socket the kernel says (`SO_PEERCRED`). On loopback TCP it
//! does not, so the client's socket is looked up in `/proc/net/tcp` and
//! `/proc/net/tcp6`, where the kernel lists each socket with its owner: the
//! entry whose local end is the client's address and whose remote end is
//! ours. A connection whose owner cannot be found is refused.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
        // Reading /proc/net/tcp{,6} is blocking file I/O (a few tables,
        // read again on a miss): off the async workers.
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
/// `peer` to `local`, if the kernel lists it.
///
/// The tables are not read as one snapshot: a socket opened or closed
/// meanwhile can make a read skip another entry, so a miss is read again a
/// few times before the owner counts as unknown.
pub fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u32>> {
    for _ in 0..READS {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = match std::fs::read_to_string(table) {
                Ok(text) => text,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if let Some(uid) = find_owner(&text, peer, local) {
                return Ok(Some(uid));
            }
        }
    }
    Ok(None)
}

/// How many times the tables are read before an owner counts as unknown.
const READS: usize = 4;

/// In a `/proc/net/tcp{,6}` table, the uid of the socket whose local end
/// is `local` and remote end `remote`.
fn find_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        let (here, there, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (same(here, local) && same(there, remote))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// Whether a table address (`HEXIP:HEXPORT`) is `addr`; an IPv4 address
/// also matches its IPv4-mapped IPv6 form.
fn same(field: &str, addr: SocketAddr) -> bool {
    let Some((ip, port)) = field.split_once(':') else {
        return false;
    };
    if u16::from_str_radix(port, 16).ok() != Some(addr.port()) {
        return false;
    }
    let Some(listed) = parse_ip(ip) else {
        return false;
    };
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    canonical(listed) == canonical(addr.ip())
}

/// A table IP: 8 hex digits (one little-endian word) for IPv4, 32 (four
/// little-endian words) for IPv6.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?.to_be_bytes()))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?.to_be_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D432 00000000000000000000000001000000:1F91 01 00000000:00000000 00:00000000 00000000  1001        0 4 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:D433 0000000000000000FFFF00000100007F:1F92 01 00000000:00000000 00:00000000 00000000  1002        0 5 1 0000000000000000 20 4 30 10 -1
";

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_socket_names_its_owner() {
        // Client 127.0.0.1:54321 (0xD431) to the server on 127.0.0.1:8080.
        assert_eq!(
            find_owner(TCP, at("127.0.0.1:54321"), at("127.0.0.1:8080")),
            Some(1000)
        );
        // The server's end of the same connection is the proxy's own.
        assert_eq!(
            find_owner(TCP, at("127.0.0.1:8080"), at("127.0.0.1:54321")),
            Some(0)
        );
        assert_eq!(
            find_owner(TCP, at("127.0.0.1:1"), at("127.0.0.1:8080")),
            None
        );
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        assert_eq!(
            find_owner(TCP6, at("[::1]:54322"), at("[::1]:8081")),
            Some(1001)
        );
        assert_eq!(
            find_owner(TCP6, at("127.0.0.1:54323"), at("127.0.0.1:8082")),
            Some(1002)
        );
        assert_eq!(parse_ip("0100007F"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(parse_ip("zz"), None);
    }
}
