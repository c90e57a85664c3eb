//! Every system call the daemon makes beyond std and tokio: peer groups,
//! process hardening, user and group lookups, ownership and mode checks.
//!
//! Trust: the values returned here come from the kernel (SO_PEERCRED,
//! SO_PEERGROUPS) or the system databases (NSS), never from a peer.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `SO_PEERGROUPS` (Linux 4.13+): the supplementary groups of the peer at
/// `connect(2)` time. Its value is 59 on every architecture but MIPS, SPARC
/// and PA-RISC, which this daemon does not target.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the process at the other end of `sock`, as the
/// kernel recorded them when it connected.
pub fn peer_groups(sock: &impl AsRawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("too many peer groups"))?;
        // SAFETY: `groups` is a valid, writable buffer of `len` bytes and
        // `len` is a valid pointer; the kernel writes at most `len` bytes and
        // stores the size it needed in `len`.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// Makes the process non-dumpable (no core dumps, no ptrace by the same uid,
/// /proc/PID/mem unreadable by others) and sets the core-size limit to zero.
pub fn harden_process() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(io::Error::from)?;
    Ok(())
}

/// Sets the process umask so every file the daemon creates is private.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// The daemon's own uid.
pub fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Resolves a group given by name or numeric id.
pub fn resolve_group(spec: &str) -> Option<u32> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(spec)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Resolves a user given by name or numeric id.
pub fn resolve_user(spec: &str) -> Option<u32> {
    if let Ok(uid) = spec.parse::<u32>() {
        return Some(uid);
    }
    nix::unistd::User::from_name(spec)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// Refuses a path that another user could read or write: it must be owned by
/// `uid` and have no group or other permission bits.
pub fn check_private(path: &Path, what: &str, uid: u32) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(format!("cannot inspect {what} {}: {err}", path.display())),
    };
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{what} {} is a symbolic link; refusing to follow it.\n  fix: replace it with a {} owned by uid {uid}",
            path.display(),
            if what == "state directory" {
                "directory"
            } else {
                "file"
            }
        ));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{what} {} is owned by uid {}, not by the vault's uid {uid}.\n  fix: chown {uid} {}",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        let wanted = if meta.is_dir() { "700" } else { "600" };
        return Err(format!(
            "{what} {} has mode {mode:04o}, which lets other users read or write it.\n  fix: chmod {wanted} {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Sets the owner group and mode of the listening socket.
pub fn set_socket_access(path: &Path, gid: Option<u32>, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(io::Error::from)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
