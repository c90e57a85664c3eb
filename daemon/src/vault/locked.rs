//! Key material in locked memory.
//!
//! [`Locked`] keeps one value in pages of its own: mapped privately,
//! excluded from core dumps (`MADV_DONTDUMP`), not inherited by a child
//! (`MADV_WIPEONFORK`), locked into RAM with `mlock` where `RLIMIT_MEMLOCK`
//! allows, and zeroed before they are unmapped. The vault keeps its age
//! identity in one.
//!
//! [`lock_all`] goes further where the limit is unlimited (the packaged
//! unit sets `LimitMEMLOCK=infinity`): every page of the process, present
//! and future, is locked as it is touched, so decrypted values and tokens
//! cannot reach swap either.
//!
//! Not covered: copies the age crate makes while parsing or using a key
//! (its API builds keys by value) live briefly on the stack and in freed
//! heap memory; the process is non-dumpable and its core limit is zero, so
//! those copies leave only through swap, which `lock_all` closes.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

/// How much of the vault's memory is locked, as `status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every page of the process (`mlockall`).
    All,
    /// The identity's pages only; others may be swapped.
    Identity,
    /// Nothing: the kernel refused even the identity's page.
    Unlocked,
}

impl MemoryLock {
    /// The word `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Identity => "identity",
            Self::Unlocked => "none",
        }
    }
}

static ALL_LOCKED: AtomicBool = AtomicBool::new(false);
/// Set once an `mlock` of a [`Locked`] value failed.
static LOCK_REFUSED: AtomicBool = AtomicBool::new(false);

/// What is locked now.
pub fn memory_lock() -> MemoryLock {
    if ALL_LOCKED.load(Ordering::Relaxed) {
        MemoryLock::All
    } else if LOCK_REFUSED.load(Ordering::Relaxed) {
        MemoryLock::Unlocked
    } else {
        MemoryLock::Identity
    }
}

/// Locks every page of the process, present and future (as each is first
/// touched), if `RLIMIT_MEMLOCK` is unlimited. Under a finite limit it does
/// nothing and says why: with `MCL_FUTURE`, an allocation past the limit
/// would fail, and the vault would abort.
pub fn lock_all() -> Result<(), String> {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map_err(|e| format!("cannot read RLIMIT_MEMLOCK: {e}"))?;
    let infinity = nix::sys::resource::RLIM_INFINITY;
    if soft != infinity {
        return Err(format!(
            "RLIMIT_MEMLOCK is {soft} bytes (hard {}), not unlimited; only the identity is locked (set LimitMEMLOCK=infinity to lock everything)",
            if hard == infinity {
                "unlimited".to_owned()
            } else {
                hard.to_string()
            }
        ));
    }
    // SAFETY: mlockall(2) takes flags only and changes no memory contents.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 {
        return Err(format!("mlockall: {}", io::Error::last_os_error()));
    }
    ALL_LOCKED.store(true, Ordering::Relaxed);
    Ok(())
}

/// A value in pages of its own, locked where the kernel allows and zeroed
/// when dropped. Deliberately not `Debug` or `Clone`.
pub struct Locked<T> {
    value: NonNull<T>,
    /// The mapping's length (whole pages).
    len: usize,
    locked: bool,
}

// SAFETY: `Locked<T>` owns its `T` exclusively, like a `Box<T>`.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: shared access only hands out `&T`, like a `Box<T>`.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    /// Moves `value` into fresh locked pages. Fails only if the pages cannot
    /// be mapped; a refused `mlock` is logged (once) and leaves them
    /// unlocked.
    pub fn new(value: T) -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        // Pages are at least 4096 bytes and aligned to their size.
        const { assert!(std::mem::align_of::<T>() <= 4096) };
        let len = std::mem::size_of::<T>().max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; nothing else refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Advice only: a kernel without it leaves the pages as they are,
        // which non-dumpability and the zero core limit already cover.
        // SAFETY: `addr..addr+len` is the mapping made above.
        unsafe {
            libc::madvise(addr, len, libc::MADV_DONTDUMP);
            libc::madvise(addr, len, libc::MADV_WIPEONFORK);
        }
        // SAFETY: as above.
        let locked = unsafe { libc::mlock(addr, len) } == 0;
        if !locked && !LOCK_REFUSED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "cannot lock the identity's memory (RLIMIT_MEMLOCK); it may be swapped out"
            );
        }
        let value_ptr = addr.cast::<T>();
        // SAFETY: the mapping is writable, page-aligned (so aligned for `T`,
        // checked above) and at least `size_of::<T>()` long.
        unsafe { value_ptr.write(value) };
        Ok(Self {
            // SAFETY: mmap succeeded, so `addr` is not null.
            value: unsafe { NonNull::new_unchecked(value_ptr) },
            len,
            locked,
        })
    }

    /// Whether `mlock` succeeded for these pages.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<T> std::ops::Deref for Locked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `value` was written in `new` and lives until `drop`.
        unsafe { self.value.as_ref() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        let addr = self.value.as_ptr().cast::<u8>();
        // SAFETY: `value` is initialised and dropped exactly once, here;
        // then the whole mapping (ours alone) is zeroed, unlocked and
        // unmapped.
        unsafe {
            std::ptr::drop_in_place(self.value.as_ptr());
            std::slice::from_raw_parts_mut(addr, self.len).zeroize();
            if self.locked {
                libc::munlock(addr.cast(), self.len);
            }
            libc::munmap(addr.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noisy(std::sync::Arc<std::sync::atomic::AtomicUsize>, [u8; 32]);

    impl Drop for Noisy {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn holds_and_drops_its_value_once() {
        let drops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let locked = Locked::new(Noisy(drops.clone(), [7; 32])).unwrap();
        assert_eq!(locked.1, [7; 32]);
        assert_eq!(locked.len % 4096, 0);
        drop(locked);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_page_fits_under_the_default_limit() {
        // 8 MiB is the usual hard limit for unprivileged processes.
        let locked = Locked::new([1u8; 64]).unwrap();
        assert!(locked.is_locked(), "mlock of one page failed");
    }
}
