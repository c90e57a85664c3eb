//! Who is on the other end of a loopback connection. The proxy's `serve`
//! and `mcplexerctl ui` accept only their own uid: every call they make is
//! made with that uid's credentials.
//!
//! On a Unix socket the kernel says (`SO_PEERCRED`). On loopback TCP it
//! does not, so the client's socket is looked up in `/proc/net/tcp` and
//! `/proc/net/tcp6`, where the kernel lists each socket with its owner: the
//! entry whose local end is the client's address and whose remote end is
//! ours. A connection whose owner cannot be found is refused.
//!
//! A listed uid names an owner only while a process still holds the
//! socket. Once the client closes it, accept() still hands over the
//! connection and the bytes it sent, but the kernel lists what is left
//! (an orphan, a TIME_WAIT placeholder) with inode 0 and, for the
//! placeholder, uid 0: taken at its word, any user could connect, send a
//! request, close, and pass as root. Such an entry counts as no owner.

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
            match find_owner(&text, peer, local) {
                Some(Listed::Owner(uid)) => return Ok(Some(uid)),
                // The connection cannot come back to life: no point in
                // reading again.
                Some(Listed::Gone) => return Ok(None),
                None => {}
            }
        }
    }
    Ok(None)
}

/// How many times the tables are read before an owner counts as unknown.
const READS: usize = 4;

/// What a table lists for a socket.
#[derive(Debug, PartialEq, Eq)]
enum Listed {
    /// A socket a process holds, owned by this uid.
    Owner(u32),
    /// What is left of a socket no process holds any more (or an entry
    /// that cannot be read): its uid names nobody.
    Gone,
}

/// The states (`st`, hex) in which a client's end of a connection just
/// accepted can be while its process still holds it: ESTABLISHED (01), or
/// FIN_WAIT1 (04) and FIN_WAIT2 (05) when it half-closed after sending
/// (`shutdown(SHUT_WR)`, as `nc -N` does), which keeps it able to read the
/// answer. CLOSE_WAIT (08) is not among them: that is the state of the end
/// that received the first FIN, which here is ours; the client's end gets
/// there only after the server closes, never before its connection is
/// accepted. A process that closed its socket in any state leaves inode 0,
/// which is refused whatever the state.
const LIVE_STATES: [&str; 3] = ["01", "04", "05"];

/// In a `/proc/net/tcp{,6}` table, the entry of the socket whose local end
/// is `local` and remote end `remote`, if there is one.
fn find_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<Listed> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        let (here, there) = (fields.get(1)?, fields.get(2)?);
        if !(same(here, local) && same(there, remote)) {
            return None;
        }
        let live = fields.get(3).is_some_and(|st| LIVE_STATES.contains(st))
            && fields
                .get(9)
                .and_then(|inode| inode.parse::<u64>().ok())
                .is_some_and(|inode| inode != 0);
        let uid = fields.get(7).and_then(|uid| uid.parse().ok());
        Some(match uid {
            Some(uid) if live => Listed::Owner(uid),
            _ => Listed::Gone,
        })
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

/// A table IP: 8 hex digits (one word) for IPv4, 32 (four words) for
/// IPv6. The kernel prints each 32-bit word of the address as a number in
/// the machine's own byte order, so its bytes in address order are that
/// number's native-endian bytes (on x86, the digits' pairs reversed).
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address as the kernel prints it on this machine.
    fn hex(ip: IpAddr) -> String {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        octets
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    }

    /// A table entry: `local` to `remote` in state `st`, of `uid`, inode
    /// `inode`.
    fn row(local: &str, remote: &str, st: &str, uid: u32, inode: u64) -> String {
        let end = |s: &str| {
            let a: SocketAddr = s.parse().unwrap();
            format!("{}:{:04X}", hex(a.ip()), a.port())
        };
        format!(
            "   0: {} {} {st} 00000000:00000000 00:00000000 00000000 {uid:5}        0 {inode} 1 0000000000000000 20 4 30 10 -1",
            end(local),
            end(remote)
        )
    }

    fn table(rows: &[String]) -> String {
        let mut text = String::from(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        text
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_socket_names_its_owner() {
        let tcp = table(&[
            row("127.0.0.1:8080", "0.0.0.0:0", "0A", 0, 1),
            row("127.0.0.1:54321", "127.0.0.1:8080", "01", 1000, 2),
            row("127.0.0.1:8080", "127.0.0.1:54321", "01", 0, 3),
        ]);
        assert_eq!(
            find_owner(&tcp, at("127.0.0.1:54321"), at("127.0.0.1:8080")),
            Some(Listed::Owner(1000))
        );
        // The server's end of the same connection is the proxy's own.
        assert_eq!(
            find_owner(&tcp, at("127.0.0.1:8080"), at("127.0.0.1:54321")),
            Some(Listed::Owner(0))
        );
        assert_eq!(
            find_owner(&tcp, at("127.0.0.1:1"), at("127.0.0.1:8080")),
            None
        );
    }

    #[test]
    fn a_socket_no_process_holds_names_no_owner() {
        let tcp = table(&[
            // Closed by its client: the TIME_WAIT placeholder, uid 0.
            row("127.0.0.1:40001", "127.0.0.1:8080", "06", 0, 0),
            // Closed before the server accepted: an orphan in FIN_WAIT2.
            row("127.0.0.1:40002", "127.0.0.1:8080", "05", 0, 0),
            // Established yet listed without an inode.
            row("127.0.0.1:40003", "127.0.0.1:8080", "01", 0, 0),
            // A held socket in a state no accepted client is in.
            row("127.0.0.1:40004", "127.0.0.1:8080", "08", 0, 9),
            // Half-closed after sending, still held: a real owner.
            row("127.0.0.1:40005", "127.0.0.1:8080", "05", 1000, 7),
            row("127.0.0.1:40006", "127.0.0.1:8080", "04", 1001, 8),
        ]);
        let server = at("127.0.0.1:8080");
        for port in [40001, 40002, 40003, 40004] {
            let client = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(
                find_owner(&tcp, client, server),
                Some(Listed::Gone),
                "{port}"
            );
        }
        assert_eq!(
            find_owner(&tcp, at("127.0.0.1:40005"), server),
            Some(Listed::Owner(1000))
        );
        assert_eq!(
            find_owner(&tcp, at("127.0.0.1:40006"), server),
            Some(Listed::Owner(1001))
        );
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let tcp6 = table(&[
            row("[::1]:54322", "[::1]:8081", "01", 1001, 4),
            row(
                "[::ffff:127.0.0.1]:54323",
                "[::ffff:127.0.0.1]:8082",
                "01",
                1002,
                5,
            ),
        ]);
        assert_eq!(
            find_owner(&tcp6, at("[::1]:54322"), at("[::1]:8081")),
            Some(Listed::Owner(1001))
        );
        assert_eq!(
            find_owner(&tcp6, at("127.0.0.1:54323"), at("127.0.0.1:8082")),
            Some(Listed::Owner(1002))
        );
        assert_eq!(parse_ip("zz"), None);
    }

    #[test]
    fn addresses_round_trip_in_native_order() {
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("2001:db8::1:2:3".parse().unwrap()),
        ] {
            assert_eq!(parse_ip(&hex(ip)), Some(ip), "{ip}");
        }
    }

    /// What x86's and arm64's tables say (taken from real ones).
    #[cfg(target_endian = "little")]
    #[test]
    fn little_endian_tables() {
        assert_eq!(parse_ip("0100007F"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(
            parse_ip("00000000000000000000000001000000"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(
            parse_ip("0000000000000000FFFF00000100007F"),
            Some(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()))
        );
    }

    /// What a big-endian machine's (s390x) tables say: the words as read.
    #[cfg(target_endian = "big")]
    #[test]
    fn big_endian_tables() {
        assert_eq!(parse_ip("7F000001"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(
            parse_ip("00000000000000000000000000000001"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }
}
