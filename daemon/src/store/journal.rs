//! The audit journal: how a release is audited before its values leave the
//! vault without waiting for an SQLite commit.
//!
//! Each release (and each call record a proxy submits) is appended to
//! `audit.journal` in the state directory with one `write(2)` of
//! `[u32 length][u32 CRC-32][AuditRecord]`, whose `id` field carries a
//! journal sequence number. Once `write` returns, the record is in the page
//! cache: it survives a crash or `kill -9` of the daemon, like an SQLite
//! commit with `synchronous=NORMAL`, at a tenth of the cost. A background
//! task moves records into the audit table in batches, noting the last
//! sequence number ingested in the same transaction; the journal is emptied
//! once everything in it is ingested. At start, records the database does
//! not have yet are ingested first; a torn record at the tail (a write cut by
//! power loss) ends the journal.
//!
//! Queries flush the journal first, so a caller always reads its own audit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use mcplexer_proto::v1 as pb;
use prost::Message;

use super::{Durability, Store};
use crate::error::{Result, VaultError};

/// The journal is emptied when it is fully ingested and larger than this.
const TRUNCATE_AT: u64 = 1 << 20;

/// Records ingested per transaction at most.
const INGEST_BATCH: usize = 4096;

/// How long the ingester lets records gather after the first one arrives.
/// A lone release would otherwise cost a commit of its own (about 25 µs of
/// writer CPU); this is off the release path, and queries flush at once.
const INGEST_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

struct State {
    file: File,
    /// Appended, not yet taken for ingestion; in sequence order.
    pending: Vec<pb::AuditRecord>,
    next_seq: u64,
    len: u64,
}

struct Inner {
    state: Mutex<State>,
    store: Store,
    /// One ingestion at a time, so records reach the table in order.
    ingest: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
}

/// Handle to the audit journal; cheap to clone.
#[derive(Clone)]
pub struct AuditJournal(Arc<Inner>);

/// CRC-32 (IEEE 802.3, the polynomial of zlib and PNG) of `data`, with the
/// CPU's carry-less multiply where it has one: a 20 KiB record costs about
/// a microsecond, under the journal's lock.
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn frame(record: &pb::AuditRecord) -> Vec<u8> {
    let body = record.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses the journal; stops at the first incomplete or corrupt frame.
fn parse(bytes: &[u8]) -> Vec<pb::AuditRecord> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((head, tail)) = rest.split_first_chunk::<8>() {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = tail.get(..len) else { break };
        if crc32(body) != crc {
            break;
        }
        let Ok(record) = pb::AuditRecord::decode(body) else {
            break;
        };
        records.push(record);
        rest = &tail[len..];
    }
    records
}

impl AuditJournal {
    /// Opens `dir/audit.journal`, ingests what the database lacks, empties
    /// it, and starts the background ingester.
    pub async fn open(store: Store, dir: &Path) -> Result<Self> {
        let path = dir.join("audit.journal");
        let io = |e| {
            VaultError::io(
                format!("cannot open the audit journal {}", path.display()),
                e,
            )
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let records = parse(&bytes);
        let last_in_file = records.last().map_or(0, |r| r.id);
        let ingested = store
            .write_with(Durability::Disk, move |ctx| {
                let done = ctx.journal_seq()?;
                let mut last = done;
                for record in records.into_iter().filter(|r| r.id > done) {
                    last = record.id;
                    ctx.insert_audit(pb::AuditRecord { id: 0, ..record })?;
                }
                ctx.set_journal_seq(last)?;
                Ok(last)
            })
            .await?;
        if last_in_file > 0 {
            tracing::info!(
                recovered = last_in_file,
                "ingested the audit journal left by the last run"
            );
        }
        file.set_len(0).map_err(io)?;
        let journal = Self(Arc::new(Inner {
            state: Mutex::new(State {
                file,
                pending: Vec::new(),
                next_seq: ingested.max(last_in_file) + 1,
                len: 0,
            }),
            store,
            ingest: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        }));
        let ingester = journal.clone();
        tokio::spawn(async move {
            loop {
                ingester.0.wake.notified().await;
                tokio::time::sleep(INGEST_DELAY).await;
                if let Err(err) = ingester.flush().await {
                    tracing::error!(error = %err, "cannot ingest the audit journal; will retry");
                }
            }
        });
        Ok(journal)
    }

    /// Appends a record (time, uid and pid stamped by the caller); returns
    /// its journal sequence number. When this returns `Ok`, the record
    /// survives a crash of the daemon.
    pub fn append(&self, mut record: pb::AuditRecord) -> Result<u64> {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        record.id = state.next_seq;
        let record_seq = record.id;
        let bytes = frame(&record);
        state
            .file
            .write_all(&bytes)
            .map_err(|e| VaultError::io("cannot append to the audit journal", e))?;
        state.next_seq += 1;
        state.len += bytes.len() as u64;
        let first = state.pending.is_empty();
        state.pending.push(record);
        drop(state);
        if first {
            self.0.wake.notify_one();
        }
        Ok(record_seq)
    }

    /// Moves every appended record into the audit table now.
    pub async fn flush(&self) -> Result<()> {
        let _one = self.0.ingest.lock().await;
        loop {
            let batch: Vec<pb::AuditRecord> = {
                let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
                let take = state.pending.len().min(INGEST_BATCH);
                state.pending.drain(..take).collect()
            };
            let Some(last) = batch.last().map(|r| r.id) else {
                return Ok(());
            };
            let result = self
                .0
                .store
                .write_with(Durability::Process, {
                    let batch = batch.clone();
                    move |ctx| {
                        for record in batch {
                            ctx.insert_audit(pb::AuditRecord { id: 0, ..record })?;
                        }
                        ctx.set_journal_seq(last)
                    }
                })
                .await;
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(err) = result {
                // Still in the journal: put them back in front, in order.
                state.pending.splice(0..0, batch);
                return Err(err);
            }
            if state.pending.is_empty() && state.len > TRUNCATE_AT {
                // Everything written is ingested: start the file afresh.
                state
                    .file
                    .set_len(0)
                    .map_err(|e| VaultError::io("cannot empty the audit journal", e))?;
                state.len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, tool: &str) -> pb::AuditRecord {
        pb::AuditRecord {
            id,
            time_ms: 1,
            kind: "release".into(),
            tool: tool.into(),
            status: "success".into(),
            ..Default::default()
        }
    }

    /// A journal left by a crash is ingested at the next open: records the
    /// database already has (by sequence number) are skipped, a torn tail is
    /// dropped, and sequence numbers continue after the highest seen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_ingests_what_a_crash_left_and_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(
            &dir.path().join("vault.db"),
            crate::vault::Keyring::generate().unwrap(),
            None,
        )
        .unwrap();
        // Records 1-2 were ingested before the crash; 3-4 were not.
        store
            .write(|ctx| {
                ctx.insert_audit(record(0, "one"))?;
                ctx.insert_audit(record(0, "two"))?;
                ctx.set_journal_seq(2)
            })
            .await
            .unwrap();
        let mut bytes = Vec::new();
        for (id, tool) in [(1, "one"), (2, "two"), (3, "three"), (4, "four")] {
            bytes.extend(frame(&record(id, tool)));
        }
        let torn = frame(&record(5, "five"));
        bytes.extend(&torn[..torn.len() - 3]);
        std::fs::write(dir.path().join("audit.journal"), &bytes).unwrap();

        let journal = AuditJournal::open(store.clone(), dir.path()).await.unwrap();
        let tools = |records: Vec<pb::AuditRecord>| -> Vec<String> {
            records.into_iter().map(|r| r.tool).collect()
        };
        let all = super::super::AuditFilter::default();
        assert_eq!(
            tools(store.query_audit(all.clone()).await.unwrap().0),
            ["one", "two", "three", "four"]
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("audit.journal"))
                .unwrap()
                .len(),
            0
        );

        journal.append(record(0, "six")).unwrap();
        journal.flush().await.unwrap();
        let records = store.query_audit(all).await.unwrap().0;
        assert_eq!(tools(records), ["one", "two", "three", "four", "six"]);
        let seq = store.write(|ctx| ctx.journal_seq()).await.unwrap();
        assert_eq!(seq, 5, "sequence numbers continue after the highest seen");
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// Journals written before the CPU-accelerated CRC still read: the
    /// reflected 0xEDB88320 polynomial, bit by bit, agrees on every length
    /// and alignment.
    #[test]
    fn crc32_agrees_with_the_bitwise_definition() {
        fn bitwise(data: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &byte in data {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
                }
            }
            !crc
        }
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (start, len) in [
            (0, 0),
            (0, 1),
            (1, 7),
            (3, 64),
            (5, 1000),
            (0, 5000),
            (17, 4096),
        ] {
            let slice = &data[start..start + len];
            assert_eq!(crc32(slice), bitwise(slice), "{start}+{len}");
        }
    }

    #[test]
    fn parse_stops_at_a_torn_or_corrupt_tail() {
        let a = pb::AuditRecord {
            id: 1,
            tool: "a".into(),
            ..Default::default()
        };
        let b = pb::AuditRecord {
            id: 2,
            tool: "b".into(),
            ..Default::default()
        };
        let mut bytes = frame(&a);
        bytes.extend(frame(&b));
        assert_eq!(parse(&bytes), vec![a.clone(), b.clone()]);
        for cut in 0..bytes.len() {
            let got = parse(&bytes[..cut]);
            assert!(got.len() <= 2 && got.iter().zip([&a, &b]).all(|(x, y)| x == y));
        }
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(parse(&corrupt), vec![a]);
    }
}
