//! What one peer may use of the vault, so that no user, however hostile,
//! stops it from serving the others (DESIGN §2, "every peer is bounded").
//!
//! * [`WorkGate`]: CPU-heavy work a peer asks for (parsing its documents)
//!   runs off the async runtime, one job per uid at a time, under a
//!   deadline.
//!
//! The socket's connection caps live in `server` and the audit quotas in
//! `service::vault`; both take their numbers from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::{Result, VaultError};

/// How long the parse of one document may take, queueing included.
pub const PARSE_DEADLINE: Duration = Duration::from_secs(5);

/// Runs blocking jobs for peers: at most one per uid at a time, at most
/// `total` at a time in all, each under a deadline.
///
/// A job that passes its deadline is answered with RESOURCE_EXHAUSTED at
/// once; its thread runs on to the end (blocking work cannot be cancelled)
/// but keeps its uid's permit until then, so a uid never has more than one
/// job on a CPU. Jobs are bounded in size by their callers, so "runs on"
/// is bounded too.
pub struct WorkGate {
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
    total: Arc<Semaphore>,
}

impl WorkGate {
    /// A gate running at most `total` jobs at once.
    pub fn new(total: usize) -> Self {
        Self {
            per_uid: Mutex::new(HashMap::new()),
            total: Arc::new(Semaphore::new(total.max(1))),
        }
    }

    /// A gate sized to the machine: one job per core, leaving the async
    /// runtime a core where there is more than one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores.saturating_sub(1).max(1))
    }

    /// Runs `job` for `uid` on a blocking thread; `what` names it in the
    /// error when it is not done within `deadline`.
    pub async fn run<T, F>(&self, uid: u32, what: &str, deadline: Duration, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let mine = self.semaphore(uid);
        let result = tokio::time::timeout(deadline, async {
            let uid_permit = mine.clone().acquire_owned().await;
            let total_permit = self.total.clone().acquire_owned().await;
            let (Ok(uid_permit), Ok(total_permit)) = (uid_permit, total_permit) else {
                return Err(VaultError::Unavailable);
            };
            tokio::task::spawn_blocking(move || {
                let out = job();
                drop((uid_permit, total_permit));
                out
            })
            .await
            .map_err(|_| VaultError::Unavailable)
        })
        .await;
        drop(mine);
        self.forget_idle(uid);
        match result {
            Ok(out) => out,
            Err(_elapsed) => Err(VaultError::limit(format!(
                "{what} took longer than {} s (counting the wait for your earlier requests); the vault stopped waiting for it",
                deadline.as_secs()
            ))),
        }
    }

    fn semaphore(&self, uid: u32) -> Arc<Semaphore> {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }

    /// Drops `uid`'s entry when nothing holds or waits on it, so the map
    /// holds only uids with work in flight.
    fn forget_idle(&self, uid: u32) {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&uid).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_job_per_uid_and_a_deadline() {
        let gate = Arc::new(WorkGate::new(2));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // uid 1's first job blocks until told; its second waits behind it
        // and passes its deadline, while uid 2 is served at once.
        let blocked = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.run(1, "job", Duration::from_secs(30), move || rx.recv().is_ok())
                    .await
            })
        };
        let held = |gate: &WorkGate| {
            let map = gate.per_uid.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&1).is_some_and(|s| s.available_permits() == 0)
        };
        while !held(&gate) {
            tokio::task::yield_now().await;
        }
        let second = gate
            .run(1, "second job", Duration::from_millis(50), || ())
            .await;
        match second {
            Err(VaultError::LimitExceeded { message }) => {
                assert!(message.contains("second job took longer"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            gate.run(2, "job", Duration::from_secs(30), || 7).await.ok(),
            Some(7)
        );
        tx.send(()).ok();
        assert!(matches!(blocked.await, Ok(Ok(true))));
        assert!(gate.per_uid.lock().map(|m| m.is_empty()).unwrap_or(false));
    }
}
