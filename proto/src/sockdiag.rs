//! Who owns a TCP socket on this machine, from the kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`, inet_diag): the owner of a connection's
//! far end, and the owners of the sockets listening on a port.
//!
//! One request answers one question: a connection is looked up by its four
//! addresses (the kernel finds it in its hash table), and listeners are
//! asked for by state, so the cost does not grow with the other sockets
//! anyone holds (reading `/proc/net/tcp` did: ten thousand sockets of one
//! user made another's lookups a thousand times slower).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// TCP states (`include/net/tcp_states.h`).
pub mod state {
    /// A connection both ends may use.
    pub const ESTABLISHED: u8 = 1;
    /// Half-closed by this end after it sent its last bytes.
    pub const FIN_WAIT1: u8 = 4;
    /// Half-closed, the other end acknowledged.
    pub const FIN_WAIT2: u8 = 5;
    /// A listening socket.
    pub const LISTEN: u8 = 10;
}

/// One socket as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    /// Its TCP state (see [`state`]).
    pub state: u8,
    /// Its local address.
    pub local: SocketAddr,
    /// Its remote address (unspecified for a listener).
    pub remote: SocketAddr,
    /// The uid that made it (for an accepted connection, the listener's).
    pub uid: u32,
    /// Its inode; 0 when no process holds a file for it (closed, or not
    /// yet accepted).
    pub inode: u32,
}

/// The socket whose local end is `local` and remote end `remote`, if the
/// kernel has one.
pub fn connection(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<Socket>> {
    let (local, remote) = (canonical(local), canonical(remote));
    if local.is_ipv4() != remote.is_ipv4() {
        return Ok(None);
    }
    let request = request(local.is_ipv4(), 0, Some((local, remote)), false);
    Ok(ask(&request)?.into_iter().next())
}

/// Every TCP socket listening on `port`, IPv4 and IPv6. The kernel
/// filters listeners by the source port of the request, so the answer
/// holds only those.
pub fn listeners(port: u16) -> io::Result<Vec<Socket>> {
    let mut out = Vec::new();
    let on_port = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let anywhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    for v4 in [true, false] {
        let request = request(v4, 1 << state::LISTEN, Some((on_port, anywhere)), true);
        out.extend(
            ask(&request)?
                .into_iter()
                .filter(|s| s.local.port() == port),
        );
    }
    Ok(out)
}

/// The uids owning the sockets that would accept a connection to `target`:
/// those listening on its port on its address or on every address. Empty
/// when nothing listens.
pub fn listener_owners(target: SocketAddr) -> io::Result<Vec<u32>> {
    let target = canonical(target);
    let mut owners: Vec<u32> = listeners(target.port())?
        .into_iter()
        .filter(|s| {
            let ip = canonical(s.local).ip();
            ip == target.ip() || ip.is_unspecified()
        })
        .map(|s| s.uid)
        .collect();
    owners.sort_unstable();
    owners.dedup();
    Ok(owners)
}

/// The loopback addresses a URL host names: an IP literal in 127.0.0.0/8
/// or `::1`, or `localhost` (both families); none for any other host.
pub fn loopback_addrs(host: &str, port: u16) -> Vec<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), port),
        ];
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => vec![canonical(SocketAddr::new(ip, port))],
        _ => Vec::new(),
    }
}

/// Refuses to send a credential to a loopback `host`:`port` unless every
/// socket that would accept the connection belongs to one of `allowed`
/// (on a shared machine any user may listen on a free loopback port and
/// receive what is sent there). Other hosts pass: TLS, or the operator who
/// named them, vouches for them. The error says why, for people.
pub fn check_loopback_listener(host: &str, port: u16, allowed: &[u32]) -> Result<(), String> {
    let targets = loopback_addrs(host, port);
    if targets.is_empty() {
        return Ok(());
    }
    let mut owners = Vec::new();
    for target in targets {
        owners.extend(listener_owners(target).map_err(|e| {
            format!(
                "cannot check who listens on {host}:{port} before sending it a credential ({e}); a vault under systemd needs AF_NETLINK in RestrictAddressFamilies= for loopback endpoints"
            )
        })?);
    }
    owners.sort_unstable();
    owners.dedup();
    if owners.is_empty() {
        return Err(format!("nothing listens on {host}:{port}"));
    }
    if let Some(stranger) = owners.iter().find(|uid| !allowed.contains(uid)) {
        return Err(format!(
            "the socket listening on {host}:{port} belongs to uid {stranger}, not to uid {}; no credential is sent to another user's listener on a loopback port",
            allowed
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" or uid ")
        ));
    }
    Ok(())
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// A SOCK_DIAG_BY_FAMILY request for TCP: a dump of the sockets in
/// `states` (listeners only on the local port of `ends`, if given), or the
/// one socket with `ends` (local, remote).
fn request(v4: bool, states: u32, ends: Option<(SocketAddr, SocketAddr)>, dump: bool) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + 56);
    let len = (NLMSG_HDRLEN + 56) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    // An exact lookup finds its socket in whatever state.
    let states = if dump { states } else { u32::MAX };
    msg.extend_from_slice(&states.to_ne_bytes());
    let (local, remote) = ends.unwrap_or((
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    ));
    // inet_diag_sockid: ports and addresses in network order.
    msg.extend_from_slice(&local.port().to_be_bytes());
    msg.extend_from_slice(&remote.port().to_be_bytes());
    msg.extend_from_slice(&ip_bytes(local.ip()));
    msg.extend_from_slice(&ip_bytes(remote.ip()));
    msg.extend_from_slice(&0u32.to_ne_bytes()); // interface
    msg.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    msg
}

/// An address as inet_diag carries it: 16 bytes, an IPv4 address first.
fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

fn read_u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Sends `request` and reads the answers to the end.
fn ask(request: &[u8]) -> io::Result<Vec<Socket>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(io::Error::from)?;
    // The kernel answers at once; a bound keeps a caller from waiting on
    // a reply that never comes.
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )
    .map_err(io::Error::from)?;
    use std::os::fd::AsRawFd;
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
        if n == 0 {
            return Ok(out);
        }
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed sock_diag answer");
            let len = read_u32_ne(&buf, at).ok_or_else(bad)? as usize;
            let kind = read_u16_ne(&buf, at + 4).ok_or_else(bad)?;
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(bad());
            }
            let body = &buf[at + NLMSG_HDRLEN..at + len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = read_u32_ne(body, 0).ok_or_else(bad)? as i32;
                    return match -errno {
                        0 => Ok(out),
                        libc::ENOENT => Ok(out),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(socket) = parse(body) {
                        out.push(socket);
                    }
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
        // An exact lookup answers with one message and no DONE.
        if request_is_exact(request) {
            return Ok(out);
        }
    }
}

fn request_is_exact(request: &[u8]) -> bool {
    read_u16_ne(request, 6).is_some_and(|flags| flags & NLM_F_DUMP == 0)
}

/// An `inet_diag_msg`.
fn parse(b: &[u8]) -> Option<Socket> {
    if b.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = i32::from(b[0]);
    let state = b[1];
    let sport = u16::from_be_bytes([b[4], b[5]]);
    let dport = u16::from_be_bytes([b[6], b[7]]);
    let ip = |at: usize| -> Option<IpAddr> {
        let raw: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
        Some(if family == libc::AF_INET {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            IpAddr::V6(raw.into())
        })
    };
    Some(Socket {
        state,
        local: SocketAddr::new(ip(8)?, sport),
        remote: SocketAddr::new(ip(24)?, dport),
        uid: read_u32_ne(b, 64)?,
        inode: read_u32_ne(b, 68)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_and_a_connection_name_their_owner() {
        let me = nix::unistd::geteuid().as_raw();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let at = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listener_owners(at).ok(), Some(vec![me]));
        let client = std::net::TcpStream::connect(at).unwrap_or_else(|e| panic!("{e}"));
        let ours = client.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let found = connection(ours, at).ok().flatten();
        let found = found.unwrap_or_else(|| panic!("the connection is not found"));
        assert_eq!((found.uid, found.state), (me, state::ESTABLISHED));
        assert_ne!(found.inode, 0);
        // The server's end, not yet accepted: the listener's uid, no inode.
        let server_end = connection(at, ours).ok().flatten();
        assert_eq!(server_end.map(|s| (s.uid, s.inode)), Some((me, 0)));
        drop(listener);
        assert_eq!(listener_owners(at).ok(), Some(vec![]));
        assert_eq!(
            connection("127.0.0.1:1".parse().unwrap_or(at), at).ok(),
            Some(None)
        );
    }
}
