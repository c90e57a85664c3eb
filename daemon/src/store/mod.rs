//! The store: one SQLite database (WAL) holding the configuration, the age
//! ciphertext of every secret, and the audit log. Configuration and secret
//! changes commit with `synchronous=FULL`; per-call audit records with
//! `synchronous=NORMAL` (see [`Durability`]).
//!
//! Only this module runs SQL. All writes go through one writer thread that
//! groups the jobs waiting for it into one transaction (group commit), with a
//! savepoint per job: each job is atomic on its own, a failing job changes
//! nothing, and a job's caller is answered only after the commit that made
//! its change durable. One serialised writer also means a read-modify-write
//! (a secret set, an apply) can never lose a concurrent update.
//!
//! Trust: runs inside the vault daemon only; values cross this module as
//! ciphertext, except inside a write job that decrypts, edits and
//! re-encrypts a scope's map in zeroizing buffers.

mod audit;
mod ctx;
mod journal;
mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use mcplexer_proto::v1 as pb;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::error::{Result, VaultError};
use crate::model::ConfigState;
use crate::vault::Keyring;

pub use audit::AuditFilter;
pub use ctx::WriteCtx;
pub(crate) use ctx::{read_provider_secret, read_scope_ciphertext, read_token_metas, read_tokens};
pub use journal::AuditJournal;

/// Moves every committed page from the write-ahead log into the database
/// file and empties the log (`wal_checkpoint(TRUNCATE)`), on a connection
/// of its own: after a clean stop the database file alone holds
/// everything, so a copy of it (with the identity) is a whole backup.
/// Returns whether the log was emptied (not when another process still
/// reads it).
pub fn checkpoint(path: &Path) -> Result<bool> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let (busy, _log, _moved): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0)
}

/// How many queued jobs one transaction takes at most.
const MAX_BATCH: usize = 512;

/// A committed configuration, as readers see it.
pub struct Snapshot {
    /// Bumped on every committed configuration change.
    pub generation: u64,
    /// The configuration.
    pub config: Arc<ConfigState>,
}

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type JobFn = Box<dyn FnOnce(&mut WriteCtx<'_>) -> (bool, Completion) + Send>;

/// How far a commit must reach before its caller is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk (`synchronous=FULL`): survives power loss. For configuration,
    /// secrets and identity changes.
    Disk,
    /// In the WAL in the OS page cache (`synchronous=NORMAL`): survives a
    /// crash or `kill -9` of the daemon, not of the machine. For audit
    /// records on the release path, where a 300 µs fsync per release would
    /// cost more than the release itself; the next durable commit (or WAL
    /// checkpoint) puts them on disk too.
    Process,
}

struct Job {
    run: JobFn,
    durability: Durability,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    /// Read-only connection for ciphertext and other short reads. WAL lets
    /// it read while the writer writes.
    reader: Arc<Mutex<Connection>>,
    /// Read-only connection for audit queries, which can be long: a user's
    /// query never holds up another's credential read.
    audit_reader: Arc<Mutex<Connection>>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    audit_tx: broadcast::Sender<pb::AuditRecord>,
    keyring: Arc<std::sync::RwLock<Arc<Keyring>>>,
}

impl Store {
    /// Opens (creating and migrating) the database at `path`, checks that
    /// `keyring` is the identity it is encrypted to, and starts the writer.
    ///
    /// `pending` is the identity written by a rotation that may have
    /// committed before its file was renamed into place; if the database is
    /// encrypted to it, it is adopted and the returned flag is `true`, which
    /// tells the caller to finish the rename.
    pub fn open(path: &Path, keyring: Keyring, pending: Option<Keyring>) -> Result<(Self, bool)> {
        let mut conn = Connection::open(path)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
        let (keyring, adopted) = schema::check_recipient(&conn, keyring, pending)?;
        let config = ctx::load_config(&conn)?;
        let open_reader = || -> Result<Connection> {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            reader.busy_timeout(std::time::Duration::from_secs(10))?;
            Ok(reader)
        };
        let reader = open_reader()?;
        let audit_reader = open_reader()?;

        let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot {
            generation: 1,
            config: Arc::new(config),
        }));
        let (audit_tx, _) = broadcast::channel(1024);
        let keyring = Arc::new(std::sync::RwLock::new(Arc::new(keyring)));
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(4096);
        let writer = Writer {
            conn,
            jobs: jobs_rx,
            snapshot: snap_tx,
            audit: audit_tx.clone(),
            keyring: keyring.clone(),
            durability: Durability::Disk,
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| VaultError::io("cannot start the store writer", e))?;
        Ok((
            Self {
                jobs: jobs_tx,
                reader: Arc::new(Mutex::new(reader)),
                audit_reader: Arc::new(Mutex::new(audit_reader)),
                snapshot: snap_rx,
                audit_tx,
                keyring,
            },
            adopted,
        ))
    }

    /// Runs `f` in the writer, in its own savepoint of a group-committed
    /// transaction; returns once the change is durable (or rolled back).
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.write_with(Durability::Disk, f).await
    }

    /// Like [`Store::write`], with the given durability.
    pub async fn write_with<T, F>(&self, durability: Durability, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let run: JobFn = Box::new(move |ctx| match f(ctx) {
            Ok(value) => (
                true,
                Box::new(move |committed: Result<()>| {
                    let _ = tx.send(committed.map(|()| value));
                }),
            ),
            Err(err) => (
                false,
                Box::new(move |_| {
                    let _ = tx.send(Err(err));
                }),
            ),
        });
        self.jobs
            .send(Job { run, durability })
            .await
            .map_err(|_| VaultError::Unavailable)?;
        rx.await.map_err(|_| VaultError::Unavailable)?
    }

    /// Runs `f` with the read-only connection on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|_| VaultError::Unavailable)?
    }

    /// The current configuration.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every new configuration.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// A receiver of every committed audit record.
    pub fn audit_feed(&self) -> broadcast::Receiver<pb::AuditRecord> {
        self.audit_tx.subscribe()
    }

    /// The keyring in force.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Queries the audit log, on the audit reader: the newest matching
    /// records (oldest first) that fit in one answer, and whether older
    /// ones within the limit were left out (see [`audit::ANSWER_BUDGET`]).
    pub async fn query_audit(&self, filter: AuditFilter) -> Result<(Vec<pb::AuditRecord>, bool)> {
        let reader = self.audit_reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            audit::query(&conn, &filter)
        })
        .await
        .map_err(|_| VaultError::Unavailable)?
    }

    /// Counts audit records.
    pub async fn count_audit(&self) -> Result<u64> {
        self.read(audit::count).await
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    audit: broadcast::Sender<pb::AuditRecord>,
    keyring: Arc<std::sync::RwLock<Arc<Keyring>>>,
    /// The `synchronous` setting in force.
    durability: Durability,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.jobs.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>) {
        let current = self.snapshot.borrow().clone();
        let keyring = self
            .keyring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let durability = if batch.iter().any(|j| j.durability == Durability::Disk) {
            Durability::Disk
        } else {
            Durability::Process
        };
        if durability != self.durability {
            let pragma = match durability {
                Durability::Disk => "PRAGMA synchronous=FULL",
                Durability::Process => "PRAGMA synchronous=NORMAL",
            };
            match self.conn.execute_batch(pragma) {
                Ok(()) => self.durability = durability,
                Err(err) => {
                    tracing::error!(error = %err, "cannot set the sync mode");
                    batch.clear();
                    return;
                }
            }
        }
        if let Err(err) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let err = VaultError::from(err);
            tracing::error!(error = %err, "cannot begin a transaction");
            // Dropping the jobs drops their answer channels: every caller
            // gets `Unavailable` and nothing was changed.
            batch.clear();
            return;
        }
        let mut completions = Vec::with_capacity(batch.len());
        let mut config = current.config.clone();
        let mut config_changed = false;
        let mut keyring_now = keyring.clone();
        let mut keyring_changed = false;
        let mut audits = Vec::new();
        for job in batch.drain(..) {
            if let Err(err) = self.conn.execute_batch("SAVEPOINT job") {
                // Dropping the job drops its answer channel: the caller gets
                // `Unavailable` and nothing was changed.
                tracing::error!(error = %err, "cannot open a savepoint");
                drop(job);
                continue;
            }
            let job = job.run;
            let mut ctx = WriteCtx::new(&self.conn, config.clone(), keyring_now.clone());
            let (ok, done) = job(&mut ctx);
            let step = if ok {
                self.conn.execute_batch("RELEASE job")
            } else {
                self.conn
                    .execute_batch("ROLLBACK TO job")
                    .and_then(|()| self.conn.execute_batch("RELEASE job"))
            };
            match (ok, step) {
                (true, Ok(())) => {
                    let outcome = ctx.finish();
                    if let Some(next) = outcome.config {
                        config = Arc::new(next);
                        config_changed = true;
                    }
                    if let Some(next) = outcome.keyring {
                        keyring_now = next;
                        keyring_changed = true;
                    }
                    audits.extend(outcome.audits);
                    completions.push((true, done));
                }
                (false, Ok(())) => completions.push((false, done)),
                (_, Err(err)) => {
                    tracing::error!(error = %err, "savepoint failed");
                    completions.push((false, done));
                }
            }
        }
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                if keyring_changed {
                    *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = keyring_now;
                }
                if config_changed {
                    self.snapshot.send_replace(Arc::new(Snapshot {
                        generation: current.generation + 1,
                        config,
                    }));
                }
                for (_, done) in completions {
                    done(Ok(()));
                }
                for record in audits {
                    let _ = self.audit.send(record);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "commit failed; every job of the batch is rolled back");
                let _ = self.conn.execute_batch("ROLLBACK");
                for (ok, done) in completions {
                    if ok {
                        done(Err(VaultError::FailedPrecondition {
                            message: "the change could not be committed; nothing was changed"
                                .into(),
                            fix: None,
                        }));
                    } else {
                        done(Ok(()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Obj, Policy, Source, WorkspaceSpec};

    fn workspace(id: &str) -> Obj<WorkspaceSpec> {
        Obj {
            spec: WorkspaceSpec {
                id: id.into(),
                name: id.into(),
                root_path: format!("/srv/{id}"),
                default_policy: Policy::Deny,
                owner: None,
            },
            source: Source::Api,
            applied_by: None,
        }
    }

    /// Jobs grouped into one transaction stay independent: a failing job
    /// changes nothing (neither rows nor the published configuration) and
    /// does not take its batch-mates down; what was acknowledged survives a
    /// reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_keeps_jobs_independent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let keyring = Keyring::generate().unwrap();
        let recipient = keyring.recipient();
        let (store, _) = Store::open(&path, keyring, None).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("ws-{i}");
                store
                    .write(move |ctx| {
                        let obj = workspace(&id);
                        ctx.put_object(Kind::Workspace, &obj, &id)?;
                        ctx.config_mut().workspaces.insert(id.clone(), obj);
                        if i % 3 == 0 {
                            return Err(VaultError::invalid(format!("job {i} refuses")));
                        }
                        Ok(())
                    })
                    .await
                    .is_ok()
            }));
        }
        let mut acked = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if task.await.unwrap() {
                acked.push(format!("ws-{i}"));
            }
        }
        assert_eq!(acked.len(), 200 - 67);
        let published = store.snapshot();
        for i in 0..200 {
            let id = format!("ws-{i}");
            assert_eq!(
                published.config.workspaces.contains_key(&id),
                i % 3 != 0,
                "{id}"
            );
        }
        drop(store);

        // The rows on disk match what was acknowledged.
        let conn = Connection::open(&path).unwrap();
        let stored: Vec<String> = conn
            .prepare("SELECT id FROM objects WHERE kind = 'workspace' ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        acked.sort();
        assert_eq!(stored, acked);
        let stored_recipient: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'recipient'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stored_recipient, recipient);
    }

    /// A database encrypted to one identity refuses another, and adopts a
    /// pending identity that it is encrypted to.
    #[test]
    fn identity_must_match_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let first = Keyring::generate().unwrap();
        let first_recipient = first.recipient();
        drop(Store::open(&path, first, None).unwrap());
        let err = Store::open(&path, Keyring::generate().unwrap(), None)
            .err()
            .unwrap();
        assert!(err.to_string().contains(&first_recipient), "{err}");
        // The identity that matches, offered as pending, is adopted.
        let mut conn = Connection::open(&path).unwrap();
        let replacement = Keyring::generate().unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'recipient'",
            [replacement.recipient()],
        )
        .unwrap();
        tx.commit().unwrap();
        drop(conn);
        let (_, adopted) =
            Store::open(&path, Keyring::generate().unwrap(), Some(replacement)).unwrap();
        assert!(adopted);
    }
}
