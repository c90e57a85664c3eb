//! The socket's connections: who is behind each (kernel credentials), how
//! many each uid may hold, how long a peer may take to start speaking
//! HTTP/2, and an accept loop that backs off instead of spinning when the
//! process is out of descriptors.
//!
//! The caps keep room for others: a user uid may hold [`Limits::per_user`]
//! connections, but only while the vault as a whole is below its total
//! less two reserves. The last [`Limits::admin_reserve`] slots are for
//! admins only; the [`Limits::small_reserve`] before them are for users
//! holding fewer than [`Limits::small`] connections, so a new user (or a
//! proxy's single channel) still gets in when a few hostile uids have
//! taken everything else.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::authz::PeerInfo;
use crate::limits::{IsAdmin, Ration};
use crate::sys;

/// The length of the HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;

/// The connection caps, sized to the descriptors the process may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections in all.
    pub total: usize,
    /// Connections one user uid may hold (admins: up to `total`).
    pub per_user: usize,
    /// The last slots, for admins only.
    pub admin_reserve: usize,
    /// The slots before those, for users holding fewer than `small`.
    pub small_reserve: usize,
    /// What counts as a small holder.
    pub small: usize,
    /// How long a peer has, from accept, to send the HTTP/2 preface.
    pub preface: Duration,
}

/// Descriptors kept for everything but connections: the database and its
/// journal, the audit journal, logs, signals, outgoing OAuth requests.
const OTHER_DESCRIPTORS: u64 = 128;

impl Limits {
    /// The default cap per user uid: far above what a user's proxies and
    /// mcplexerctl hold, far below the total.
    pub const DEFAULT_PER_USER: usize = 128;

    /// Caps for a process that may hold `nofile` descriptors, with
    /// `per_user` connections per user uid.
    pub fn for_descriptors(nofile: u64, per_user: usize, preface: Duration) -> Self {
        let usable = nofile.saturating_sub(OTHER_DESCRIPTORS).clamp(32, 16_384);
        let total = usize::try_from(usable).unwrap_or(16_384);
        let admin_reserve = (total / 16).max(4);
        let small_reserve = (total / 8).max(8);
        Self {
            total,
            per_user: per_user.clamp(1, total - admin_reserve - small_reserve),
            admin_reserve,
            small_reserve,
            small: 4,
            preface,
        }
    }
}

/// Raises the soft descriptor limit to the hard one (the unit's
/// `LimitNOFILE=`) and returns it.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The uid holds its share already.
    PerUser {
        /// Connections it holds.
        held: usize,
    },
    /// The vault is at its total for this kind of peer.
    Full,
}

/// The count of open connections, per uid and in all.
#[derive(Default)]
struct Counts {
    per_uid: HashMap<u32, usize>,
    total: usize,
}

/// Admits connections under [`Limits`].
pub struct Gate {
    limits: Limits,
    counts: Mutex<Counts>,
    is_admin: IsAdmin,
}

impl Gate {
    /// A gate with `limits`; `is_admin` tells admins from users.
    pub fn new(limits: Limits, is_admin: IsAdmin) -> Self {
        Self {
            limits,
            counts: Mutex::new(Counts::default()),
            is_admin,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes a slot for `peer`, or says why not.
    pub fn admit(self: &Arc<Self>, peer: &PeerInfo) -> Result<Slot, Refusal> {
        let admin = (self.is_admin)(peer);
        let l = self.limits;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.per_uid.get(&peer.uid).copied().unwrap_or(0);
        let room = if admin {
            l.total
        } else if held >= l.per_user {
            return Err(Refusal::PerUser { held });
        } else if held < l.small {
            l.total - l.admin_reserve
        } else {
            l.total - l.admin_reserve - l.small_reserve
        };
        if counts.total >= room {
            return Err(Refusal::Full);
        }
        counts.total += 1;
        *counts.per_uid.entry(peer.uid).or_insert(0) += 1;
        Ok(Slot {
            gate: self.clone(),
            uid: peer.uid,
        })
    }

    fn release(&self, uid: u32) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                counts.per_uid.remove(&uid);
            }
        }
    }
}

/// One admitted connection's place; given back when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.uid);
    }
}

/// A connection with the peer credentials the kernel recorded at connect,
/// holding its slot, and closed if the peer does not send the HTTP/2
/// preface in time.
pub struct PeerStream {
    inner: UnixStream,
    peer: PeerInfo,
    /// The preface deadline and the preface bytes still to come; `None`
    /// once the preface is in.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    _slot: Slot,
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
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some((deadline, remaining)) = &mut this.preface {
            match &polled {
                Poll::Ready(Ok(())) => {
                    let read = buf.filled().len() - before;
                    if read >= *remaining {
                        this.preface = None;
                    } else {
                        *remaining -= read;
                    }
                }
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer sent no HTTP/2 preface in time",
                        )));
                    }
                }
                Poll::Ready(Err(_)) => {}
            }
        }
        polled
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

/// The peer of a freshly accepted connection.
fn peer_of(stream: &std::os::unix::net::UnixStream) -> io::Result<PeerInfo> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(PeerInfo {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: u32::try_from(cred.pid()).unwrap_or(0),
        groups: sys::peer_groups(stream)?,
    })
}

/// Refused connections the accept loop turns away per second, past a
/// burst of [`REFUSAL_BURST`]; above that rate it pauses between them. A uid
/// past its share that reconnects in a loop would otherwise keep a core
/// busy accepting and closing (about 10 µs each); rationed, that costs at
/// most a few percent of one. The price is paid by new connections only
/// while such a flood lasts (they wait in the kernel's queue behind the
/// flood's); established ones, such as proxies' channels, are not touched,
/// and a vault that refuses nothing never pauses.
const REFUSALS_PER_SECOND: u32 = 2000;
/// See [`REFUSALS_PER_SECOND`].
const REFUSAL_BURST: u32 = 200;
/// The shortest pause: the loop sleeps rarely and in whole steps rather
/// than waking up for every refusal (each wake-up costs more than the
/// refusal).
const REFUSAL_PAUSE: Duration = Duration::from_millis(10);

/// A log line that repeats at most once per interval, saying how many
/// were held back in between.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(held back since the last line)` when a line may be written.
    fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Whether an accept error means the process or system is out of a
/// resource (descriptors, memory), which only time can fix.
fn is_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts connections on `listener` under `gate` and yields them to the
/// server; ends when the server stops taking them.
///
/// A refused connection is closed at once (its peer sees the connection
/// end) and logged at most every ten seconds per kind; refusals are
/// rationed ([`REFUSALS_PER_SECOND`]). The loop yields to the runtime after
/// each connection. When accept fails
/// for lack of descriptors the loop sleeps, doubling from 10 ms to 1 s,
/// instead of retrying at once: the kernel keeps the pending connections
/// queued meanwhile.
pub fn incoming(listener: UnixListener, gate: Arc<Gate>) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        const FIRST_BACKOFF: Duration = Duration::from_millis(10);
        // Accepted as plain sockets: a refused connection is closed without
        // ever being registered with the runtime's event loop (two epoll
        // calls and an allocation saved on each, which is what a uid
        // reconnecting in a loop makes the vault do).
        let registered = listener.into_std().and_then(|listener| {
            // SAFETY: the AsyncFd owns the listener, which owns its
            // descriptor: it stays open and the same until the AsyncFd is
            // dropped.
            unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)
        });
        let listener = match registered {
            Ok(listener) => listener,
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        let mut refused_log = Throttle::new(Duration::from_secs(10));
        let mut refusals = Ration::new(
            REFUSALS_PER_SECOND,
            REFUSAL_BURST,
            REFUSAL_PAUSE,
            Instant::now(),
        );
        let mut error_log = Throttle::new(Duration::from_secs(10));
        loop {
            // One connection per turn: a uid opening connections as fast as
            // it can (refused past its share) must not hold a worker
            // thread for a burst of accepts while others' requests wait.
            tokio::task::yield_now().await;
            let accepted = tokio::select! {
                () = tx.closed() => break,
                ready = listener.readable() => match ready {
                    Ok(mut guard) => match guard.try_io(|l| l.get_ref().accept()) {
                        Ok(accepted) => accepted,
                        // Not ready after all: wait again.
                        Err(_would_block) => continue,
                    },
                    Err(err) => Err(err),
                },
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff = FIRST_BACKOFF;
                    stream
                }
                Err(err) => {
                    if let Some(held_back) = error_log.pass() {
                        tracing::warn!(error = %err, held_back, "cannot accept a connection");
                    }
                    if is_exhaustion(&err) {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    continue;
                }
            };
            let peer = match peer_of(&stream) {
                Ok(peer) => peer,
                Err(err) => {
                    // Without kernel credentials a connection cannot be
                    // authorised: drop it.
                    if let Some(held_back) = error_log.pass() {
                        tracing::warn!(error = %err, held_back, "dropping a connection without peer credentials");
                    }
                    continue;
                }
            };
            let slot = match gate.admit(&peer) {
                Ok(slot) => slot,
                Err(refusal) => {
                    if let Some(held_back) = refused_log.pass() {
                        let limits = gate.limits();
                        match refusal {
                            Refusal::PerUser { held } => tracing::warn!(
                                uid = peer.uid,
                                pid = peer.pid,
                                held,
                                limit = limits.per_user,
                                held_back,
                                "refused a connection: the uid holds its share of connections"
                            ),
                            Refusal::Full => tracing::warn!(
                                uid = peer.uid,
                                pid = peer.pid,
                                limit = limits.total,
                                held_back,
                                "refused a connection: the vault holds all the connections it keeps room for"
                            ),
                        }
                    }
                    // Closed before the pause, so the peer learns at once.
                    drop(stream);
                    if let Some(pause) = refusals.take(Instant::now()) {
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            };
            let stream = match stream
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(stream))
            {
                Ok(stream) => stream,
                Err(err) => {
                    if let Some(held_back) = error_log.pass() {
                        tracing::warn!(error = %err, held_back, "cannot take an accepted connection");
                    }
                    continue;
                }
            };
            let stream = PeerStream {
                inner: stream,
                peer,
                preface: Some((
                    Box::pin(tokio::time::sleep(gate.limits().preface)),
                    PREFACE_LEN,
                )),
                _slot: slot,
            };
            if tx.send(Ok(stream)).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerInfo {
        PeerInfo {
            uid,
            gid: uid,
            pid: 1,
            groups: vec![],
        }
    }

    #[test]
    fn users_leave_room_for_small_holders_and_admins() {
        let limits = Limits {
            total: 40,
            per_user: 20,
            admin_reserve: 4,
            small_reserve: 8,
            small: 2,
            preface: Duration::from_secs(1),
        };
        let gate = Arc::new(Gate::new(limits, Arc::new(|p: &PeerInfo| p.uid == 0)));
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(gate.admit(&peer(1)).unwrap_or_else(|e| panic!("{e:?}")));
        }
        assert_eq!(
            gate.admit(&peer(1)).err(),
            Some(Refusal::PerUser { held: 20 })
        );
        // A second big holder stops at total - both reserves (28).
        for _ in 0..8 {
            held.push(gate.admit(&peer(2)).unwrap_or_else(|e| panic!("{e:?}")));
        }
        assert_eq!(gate.admit(&peer(2)).err(), Some(Refusal::Full));
        // New small holders fill the small reserve, two each.
        for uid in 3..7 {
            for _ in 0..2 {
                held.push(
                    gate.admit(&peer(uid))
                        .unwrap_or_else(|e| panic!("{uid}: {e:?}")),
                );
            }
        }
        assert_eq!(gate.admit(&peer(7)).err(), Some(Refusal::Full));
        // Admins still get the last four.
        for _ in 0..4 {
            held.push(gate.admit(&peer(0)).unwrap_or_else(|e| panic!("{e:?}")));
        }
        assert_eq!(gate.admit(&peer(0)).err(), Some(Refusal::Full));
        // Closing gives the slots back.
        held.clear();
        let counts = gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(counts.total, 0);
        assert!(counts.per_uid.is_empty());
    }

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let l = Limits::for_descriptors(8192, Limits::DEFAULT_PER_USER, Duration::from_secs(10));
        assert_eq!(l.total, 8064);
        assert_eq!(l.per_user, 128);
        let tiny = Limits::for_descriptors(100, 1000, Duration::from_secs(10));
        assert_eq!(tiny.total, 32);
        assert!(tiny.per_user + tiny.admin_reserve + tiny.small_reserve <= tiny.total);
    }
}
