//! Connection settings, versioned migrations and the identity check.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Result, VaultError};
use crate::vault::Keyring;

/// Migrations, applied in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: configuration objects, secrets, audit log.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     ) STRICT;
     CREATE TABLE objects (
         kind       TEXT NOT NULL,
         id         TEXT NOT NULL,
         spec       TEXT NOT NULL,
         source     TEXT NOT NULL,
         applied_by INTEGER,
         updated_ms INTEGER NOT NULL,
         PRIMARY KEY (kind, id)
     ) STRICT;
     CREATE TABLE scope_secrets (
         scope_id   TEXT PRIMARY KEY,
         ciphertext BLOB NOT NULL,
         keys       TEXT NOT NULL,
         version    INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE provider_secrets (
         provider_id TEXT PRIMARY KEY,
         ciphertext  BLOB NOT NULL
     ) STRICT;
     CREATE TABLE audit (
         id            INTEGER PRIMARY KEY AUTOINCREMENT,
         time_ms       INTEGER NOT NULL,
         uid           INTEGER NOT NULL,
         pid           INTEGER NOT NULL,
         kind          TEXT NOT NULL,
         workspace_id  TEXT NOT NULL,
         tool          TEXT NOT NULL,
         route_rule_id TEXT NOT NULL,
         server_id     TEXT NOT NULL,
         scope_id      TEXT NOT NULL,
         params        TEXT NOT NULL,
         status        TEXT NOT NULL,
         latency_ms    INTEGER NOT NULL,
         error         TEXT NOT NULL,
         response      TEXT NOT NULL,
         action        TEXT NOT NULL
     ) STRICT;
     CREATE INDEX audit_time ON audit (time_ms);",
    // 2: OAuth tokens: the tokens encrypted, what is known of them in clear
    // (status, expiry, granted scopes; never a token) as JSON.
    "CREATE TABLE oauth_tokens (
         scope_id   TEXT PRIMARY KEY,
         ciphertext BLOB NOT NULL,
         meta       TEXT NOT NULL
     ) STRICT;",
    // 3: the definition of its server each route was made (or confirmed)
    // with: a route carrying a user's scope to a server someone else runs
    // releases nothing once that server changes, until its owner confirms.
    "CREATE TABLE route_pins (
         route_id TEXT PRIMARY KEY,
         pin      TEXT NOT NULL
     ) STRICT;",
    // 4: objects the config file set aside (its ids and namespaces win over
    // users' objects), kept whole until they fit again.
    // Rows are not keyed by id: two users' objects of one id may both be
    // aside, each kept until it fits. A route keeps its pin.
    "CREATE TABLE disabled_objects (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         kind        TEXT NOT NULL,
         id          TEXT NOT NULL,
         spec        TEXT NOT NULL,
         source      TEXT NOT NULL,
         applied_by  INTEGER,
         owner       INTEGER,
         pin         TEXT,
         reason      TEXT NOT NULL,
         disabled_ms INTEGER NOT NULL
     ) STRICT;",
];

/// Sets the pragmas every connection of the writer uses.
pub fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL: readers never block the writer. FULL: a commit is on disk before
    // its caller is answered, so an acknowledged write survives power loss.
    // The writer lowers this to NORMAL for batches of audit records only.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(VaultError::FailedPrecondition {
            message: format!("the database could not switch to WAL mode (got {mode})"),
            fix: None,
        });
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=ON;
         PRAGMA secure_delete=ON;",
    )?;
    Ok(())
}

/// Applies the migrations not yet applied, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(VaultError::FailedPrecondition {
            message: format!(
                "the database has schema version {applied}, newer than this vault knows ({known})"
            ),
            fix: Some("run the newer mcplexer-vaultd that wrote it".into()),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Checks that the database is encrypted to `keyring`. If it is encrypted to
/// `pending` instead (a rotation committed but its identity file was not yet
/// renamed into place), adopts `pending` and returns `true`.
pub fn check_recipient(
    conn: &Connection,
    keyring: Keyring,
    pending: Option<Keyring>,
) -> Result<(Keyring, bool)> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'recipient'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match stored {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('recipient', ?1)",
                params![keyring.recipient()],
            )?;
            Ok((keyring, false))
        }
        Some(r) if r == keyring.recipient() => Ok((keyring, false)),
        Some(r) => match pending {
            Some(p) if p.recipient() == r => Ok((p, true)),
            _ => Err(VaultError::FailedPrecondition {
                message: format!(
                    "the database is encrypted to {r}, but the identity given is {}; the vault cannot decrypt its secrets with it",
                    keyring.recipient()
                ),
                fix: Some(
                    "start mcplexer-vaultd with the identity that matches (--identity FILE)".into(),
                ),
            }),
        },
    }
}
