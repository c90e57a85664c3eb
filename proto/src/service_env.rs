//! What systemd hands a service through its environment: the listening
//! socket (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), the notification
//! socket (`NOTIFY_SOCKET`) and the credentials directory
//! (`CREDENTIALS_DIRECTORY`). [`take`] reads them once and removes them
//! from the environment before anything else runs, so no log line, no
//! library and no child process sees them.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The most sockets taken; systemd passes one per ListenStream= line.
const MAX_FDS: RawFd = 64;

/// The variables this module takes.
const TAKEN: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "CREDENTIALS_DIRECTORY",
];

/// What systemd passed, taken out of the environment.
#[derive(Debug, Default)]
pub struct ServiceEnv {
    /// The sockets passed for this process (`LISTEN_PID` is ours).
    pub listen_fds: Vec<OwnedFd>,
    /// Where to send `READY=1` and `STOPPING=1`.
    pub notifier: Notifier,
    /// The credentials directory (`LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
}

/// Reads and removes the variables.
///
/// # Safety
///
/// Changes the process environment: call it while the process has one
/// thread (first thing in `main`, before the runtime and logging start).
pub unsafe fn take() -> ServiceEnv {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let ours = var("LISTEN_PID")
        .and_then(|pid| pid.to_str()?.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = var("LISTEN_FDS")
        .and_then(|n| n.to_str()?.parse::<RawFd>().ok())
        .unwrap_or(0);
    let listen_fds = if ours && count > 0 {
        (LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count.min(MAX_FDS)))
            // Only descriptors that are open: a wrong LISTEN_FDS must not
            // make this process own (and later close) numbers it never had.
            // SAFETY: F_GETFD only queries the descriptor table.
            .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
            .map(|fd| {
                // SAFETY: systemd passed descriptors LISTEN_FDS_START ..
                // LISTEN_FDS_START + LISTEN_FDS to this very process
                // (LISTEN_PID checked); nothing else in it owns them yet.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // Not inherited by anything this process may start.
                // SAFETY: F_SETFD on a descriptor this process owns; no
                // memory is passed.
                unsafe {
                    libc::fcntl(
                        std::os::fd::AsRawFd::as_raw_fd(&owned),
                        libc::F_SETFD,
                        libc::FD_CLOEXEC,
                    )
                };
                owned
            })
            .collect()
    } else {
        Vec::new()
    };
    let taken = ServiceEnv {
        listen_fds,
        notifier: Notifier {
            socket: var("NOTIFY_SOCKET"),
        },
        credentials_directory: var("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    };
    for name in TAKEN {
        // SAFETY: the caller guarantees the process is single-threaded, so
        // nothing reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    taken
}

/// The service manager's notification socket, if it gave one.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// Sends `state` (`READY=1`, `STOPPING=1`) to systemd, if it asked for
    /// notifications.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        use std::os::unix::net::UnixDatagram;
        let Some(path) = &self.socket else {
            return Ok(());
        };
        UnixDatagram::unbound()
            .and_then(|sock| {
                let bytes = path.as_encoded_bytes();
                match bytes.strip_prefix(b"@") {
                    // An abstract socket: its name after the '@'.
                    Some(name) => {
                        use std::os::linux::net::SocketAddrExt;
                        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                        sock.send_to_addr(state.as_bytes(), &addr)
                    }
                    None => sock.send_to(state.as_bytes(), path),
                }
            })
            .map(|_| ())
    }
}
