//! Every system call the daemon makes beyond std and tokio: peer groups,
//! process hardening, user and group lookups, ownership and mode checks.
//!
//! Trust: the values returned here come from the kernel (SO_PEERCRED,
//! SO_PEERGROUPS) or the system databases (NSS), never from a peer.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

// SO_PEERGROUPS (Linux 4.13+): the supplementary groups of the peer at
// connect(2) time; libc has its value for each architecture.
use libc::SO_PEERGROUPS;

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

/// Who the daemon drops to (`--run-as`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// Resolves `--run-as`: `NAME` or `UID` (the primary group from the user
/// database; a uid without an entry gets the gid of the same number), or
/// `UID:GID`.
pub fn resolve_run_as(spec: &str) -> Option<RunAs> {
    if let Some((uid, gid)) = spec.split_once(':') {
        return Some(RunAs {
            uid: resolve_user(uid)?,
            gid: resolve_group(gid)?,
        });
    }
    let uid = resolve_user(spec)?;
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid, |u| u.gid.as_raw());
    Some(RunAs { uid, gid })
}

/// Drops from root to `to`: the capability bounding set (while root may),
/// the supplementary groups, then gid and uid (real, effective, saved),
/// every remaining capability set, and sets no_new_privs; then checks that
/// the kernel agrees on each, since a half-dropped daemon must not run.
pub fn drop_privileges(to: RunAs) -> io::Result<()> {
    use caps::CapSet;
    let err = |what: &str, e: &dyn std::fmt::Display| io::Error::other(format!("{what}: {e}"));
    caps::clear(None, CapSet::Bounding).map_err(|e| err("clearing the bounding set", &e))?;
    nix::unistd::setgroups(&[]).map_err(|e| err("setgroups", &e))?;
    let gid = nix::unistd::Gid::from_raw(to.gid);
    let uid = nix::unistd::Uid::from_raw(to.uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| err("setresgid", &e))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| err("setresuid", &e))?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| err("clearing the capabilities", &e))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| err("no_new_privs", &e))?;
    // setuid re-evaluates dumpability: make sure.
    nix::sys::prctl::set_dumpable(false).map_err(|e| err("set_dumpable", &e))?;

    let ids = nix::unistd::getresuid().map_err(|e| err("getresuid", &e))?;
    let gids = nix::unistd::getresgid().map_err(|e| err("getresgid", &e))?;
    let groups = nix::unistd::getgroups().map_err(|e| err("getgroups", &e))?;
    let same_uid = [ids.real, ids.effective, ids.saved]
        .iter()
        .all(|u| *u == uid);
    let same_gid = [gids.real, gids.effective, gids.saved]
        .iter()
        .all(|g| *g == gid);
    let no_groups = groups.iter().all(|g| *g == gid);
    let mut left = Vec::new();
    for set in [
        CapSet::Ambient,
        CapSet::Bounding,
        CapSet::Effective,
        CapSet::Inheritable,
        CapSet::Permitted,
    ] {
        let held = caps::read(None, set).map_err(|e| err("reading the capabilities", &e))?;
        if !held.is_empty() {
            left.push(format!("{set:?}: {held:?}"));
        }
    }
    if !same_uid || !same_gid || !no_groups || !left.is_empty() {
        return Err(io::Error::other(format!(
            "the privileges were not all dropped (uids {ids:?}, gids {gids:?}, groups {groups:?}, capabilities {left:?})"
        )));
    }
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

/// Whether user `uid` is a member of group `gid`, by its primary group or
/// a supplementary one, as the user database says now. An unknown user is a
/// member of nothing.
pub fn uid_in_group(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == gid {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
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
