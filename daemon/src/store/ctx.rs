//! `WriteCtx`: what a write job may do inside its savepoint, and the reads
//! that rebuild the configuration at start.

use std::sync::Arc;

use mcplexer_proto::v1 as pb;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, VaultError};
use crate::model::{ConfigState, Kind, Obj, SecretMeta, Source};
use crate::oauth::tokens::{TokenMeta, TokenSet};
use crate::vault::{Keyring, SecretMap};
use zeroize::Zeroizing;

/// A write job's view of the store: the configuration as of the jobs before
/// it (copied on first change), the keyring, and the SQL it may run.
pub struct WriteCtx<'a> {
    conn: &'a Connection,
    base: Arc<ConfigState>,
    changed: Option<ConfigState>,
    keyring: Arc<Keyring>,
    new_keyring: Option<Arc<Keyring>>,
    audits: Vec<pb::AuditRecord>,
}

/// What a successful job leaves for the writer to publish after the commit.
pub(super) struct Outcome {
    pub config: Option<ConfigState>,
    pub keyring: Option<Arc<Keyring>>,
    pub audits: Vec<pb::AuditRecord>,
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

impl<'a> WriteCtx<'a> {
    pub(super) fn new(conn: &'a Connection, base: Arc<ConfigState>, keyring: Arc<Keyring>) -> Self {
        Self {
            conn,
            base,
            changed: None,
            keyring,
            new_keyring: None,
            audits: Vec::new(),
        }
    }

    pub(super) fn finish(self) -> Outcome {
        Outcome {
            config: self.changed,
            keyring: self.new_keyring,
            audits: self.audits,
        }
    }

    /// The configuration as this job sees it.
    pub fn config(&self) -> &ConfigState {
        self.changed.as_ref().unwrap_or(&self.base)
    }

    /// The configuration, for changing (published after the commit).
    pub fn config_mut(&mut self) -> &mut ConfigState {
        let base = &self.base;
        self.changed.get_or_insert_with(|| (**base).clone())
    }

    /// The keyring in force for this job.
    pub fn keyring(&self) -> &Keyring {
        self.new_keyring.as_deref().unwrap_or(&self.keyring)
    }

    /// Replaces the keyring (published after the commit).
    pub fn set_keyring(&mut self, keyring: Arc<Keyring>) {
        self.new_keyring = Some(keyring);
    }

    /// Inserts or replaces a configuration object.
    pub fn put_object<T: Serialize>(&self, kind: Kind, obj: &Obj<T>, id: &str) -> Result<()> {
        let spec = serde_json::to_string(&obj.spec)
            .map_err(|e| VaultError::invalid(format!("cannot encode {} {id}: {e}", kind.name())))?;
        self.conn
            .prepare_cached(
                "INSERT INTO objects (kind, id, spec, source, applied_by, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kind, id) DO UPDATE SET
                   spec = excluded.spec, source = excluded.source,
                   applied_by = excluded.applied_by, updated_ms = excluded.updated_ms",
            )?
            .execute(params![
                kind.tag(),
                id,
                spec,
                obj.source.as_str(),
                obj.applied_by,
                now_ms()
            ])?;
        Ok(())
    }

    /// Pins route `route_id` to its server as that server is now (nothing
    /// for a route without a server).
    pub fn pin_route(&mut self, route_id: &str) -> Result<()> {
        let Some(pin) = self
            .config()
            .routes
            .get(route_id)
            .and_then(|r| self.config().servers.get(&r.spec.downstream_server_id))
            .map(|s| crate::model::server_pin(&s.spec))
        else {
            return Ok(());
        };
        self.conn
            .prepare_cached(
                "INSERT INTO route_pins (route_id, pin) VALUES (?1, ?2)
                 ON CONFLICT (route_id) DO UPDATE SET pin = excluded.pin",
            )?
            .execute(params![route_id, pin])?;
        self.config_mut().pins.insert(route_id.to_owned(), pin);
        Ok(())
    }

    /// Sets an object aside: a live object's row moves from `objects` to a
    /// new row of `disabled_objects`; one already aside (put back and set
    /// aside again in the same apply) keeps its row, with the new reason.
    pub fn disable_object(&mut self, d: &crate::ops::config_file::Disabled) -> Result<()> {
        if let Some(seq) = d.seq {
            self.conn
                .prepare_cached("UPDATE disabled_objects SET reason = ?1 WHERE seq = ?2")?
                .execute(params![d.reason, seq])?;
            return Ok(());
        }
        self.conn
            .prepare_cached("DELETE FROM objects WHERE kind = ?1 AND id = ?2")?
            .execute(params![d.kind.tag(), d.id])?;
        self.conn
            .prepare_cached(
                "INSERT INTO disabled_objects
                   (kind, id, spec, source, applied_by, owner, pin, reason, disabled_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                d.kind.tag(),
                d.id,
                d.spec,
                d.source.as_str(),
                d.applied_by,
                d.owner,
                d.pin,
                d.reason,
                d.disabled_ms
            ])?;
        Ok(())
    }

    /// Forgets a set-aside object that was put back; writes the pin it
    /// kept (a route's), or none.
    pub fn forget_disabled(&mut self, d: &crate::ops::config_file::Disabled) -> Result<()> {
        if let Some(seq) = d.seq {
            self.conn
                .prepare_cached("DELETE FROM disabled_objects WHERE seq = ?1")?
                .execute(params![seq])?;
        }
        if d.kind == Kind::Route {
            match &d.pin {
                Some(pin) => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO route_pins (route_id, pin) VALUES (?1, ?2)
                             ON CONFLICT (route_id) DO UPDATE SET pin = excluded.pin",
                        )?
                        .execute(params![d.id, pin])?;
                }
                None => {
                    self.conn
                        .prepare_cached("DELETE FROM route_pins WHERE route_id = ?1")?
                        .execute(params![d.id])?;
                }
            }
        }
        Ok(())
    }

    /// A value of the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row(params![key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a value of the `meta` table.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    /// The objects set aside.
    pub fn disabled_objects(&self) -> Result<Vec<crate::ops::config_file::Disabled>> {
        crate::ops::config_file::read(self.conn)
    }

    /// Deletes a configuration object and the secrets stored for it.
    pub fn delete_object(&mut self, kind: Kind, id: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM objects WHERE kind = ?1 AND id = ?2")?
            .execute(params![kind.tag(), id])?;
        self.delete_material(kind, id)
    }

    /// Deletes what is stored for object `kind`/`id` besides its spec: a
    /// scope's values and tokens, a provider's client secret. Run when the
    /// object is deleted, and when one is created under the same id: a new
    /// object must never inherit what a former one under its id left.
    pub fn delete_material(&mut self, kind: Kind, id: &str) -> Result<()> {
        match kind {
            Kind::Scope => {
                self.conn
                    .prepare_cached("DELETE FROM scope_secrets WHERE scope_id = ?1")?
                    .execute(params![id])?;
                self.conn
                    .prepare_cached("DELETE FROM oauth_tokens WHERE scope_id = ?1")?
                    .execute(params![id])?;
                if self.config().secrets.contains_key(id) {
                    self.config_mut().secrets.remove(id);
                }
            }
            Kind::Provider => {
                self.conn
                    .prepare_cached("DELETE FROM provider_secrets WHERE provider_id = ?1")?
                    .execute(params![id])?;
                if self.config().provider_secrets.contains(id) {
                    self.config_mut().provider_secrets.remove(id);
                }
            }
            Kind::Route => {
                self.conn
                    .prepare_cached("DELETE FROM route_pins WHERE route_id = ?1")?
                    .execute(params![id])?;
                if self.config().pins.contains_key(id) {
                    self.config_mut().pins.remove(id);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Deletes the tokens stored for scopes that do not exist; how many.
    pub fn delete_orphan_tokens(&self) -> Result<usize> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM oauth_tokens
                 WHERE scope_id NOT IN (SELECT id FROM objects WHERE kind = ?1)
                   AND scope_id NOT IN (SELECT id FROM disabled_objects WHERE kind = ?1)",
            )?
            .execute(params![Kind::Scope.tag()])?)
    }

    /// Decrypts a scope's stored values (empty when none are stored).
    pub fn load_secrets(&self, scope_id: &str) -> Result<SecretMap> {
        match read_scope_ciphertext(self.conn, scope_id)? {
            None => Ok(SecretMap::default()),
            Some((ciphertext, _)) => SecretMap::decode(&self.keyring().decrypt(&ciphertext)?),
        }
    }

    /// The next version of a scope's material (secrets or tokens): one
    /// counter for both, so a version is never reused.
    fn next_version(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "INSERT INTO meta (key, value) VALUES ('secret_version', '1')
             ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)
             RETURNING CAST(value AS INTEGER)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Encrypts and stores a scope's values under a new version.
    pub fn store_secrets(&mut self, scope_id: &str, map: &SecretMap) -> Result<u64> {
        let ciphertext = self.keyring().encrypt(&map.encode())?;
        let version = self.next_version()?;
        let keys = map.keys();
        let keys_json = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into());
        self.conn
            .prepare_cached(
                "INSERT INTO scope_secrets (scope_id, ciphertext, keys, version)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope_id) DO UPDATE SET
                   ciphertext = excluded.ciphertext, keys = excluded.keys,
                   version = excluded.version",
            )?
            .execute(params![scope_id, ciphertext, keys_json, version])?;
        let version = version as u64;
        self.config_mut()
            .secrets
            .insert(scope_id.to_owned(), SecretMeta { keys, version });
        Ok(version)
    }

    /// Encrypts and stores a provider's client secret.
    pub fn store_provider_secret(&mut self, provider_id: &str, secret: &[u8]) -> Result<()> {
        let ciphertext = self.keyring().encrypt(secret)?;
        self.conn
            .prepare_cached(
                "INSERT INTO provider_secrets (provider_id, ciphertext) VALUES (?1, ?2)
                 ON CONFLICT (provider_id) DO UPDATE SET ciphertext = excluded.ciphertext",
            )?
            .execute(params![provider_id, ciphertext])?;
        self.config_mut()
            .provider_secrets
            .insert(provider_id.to_owned());
        Ok(())
    }

    /// Decrypts a provider's client secret, if one is stored.
    pub fn load_provider_secret(&self, provider_id: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        read_provider_secret(self.conn, self.keyring(), provider_id)
    }

    /// Encrypts and stores an oauth2 scope's tokens with `meta`, under a new
    /// version (set in `meta`, and returned).
    pub fn store_tokens(
        &self,
        scope_id: &str,
        tokens: &TokenSet,
        meta: &mut TokenMeta,
    ) -> Result<u64> {
        let ciphertext = self.keyring().encrypt(&tokens.encode())?;
        meta.version = self.next_version()? as u64;
        self.conn
            .prepare_cached(
                "INSERT INTO oauth_tokens (scope_id, ciphertext, meta) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope_id) DO UPDATE SET
                   ciphertext = excluded.ciphertext, meta = excluded.meta",
            )?
            .execute(params![scope_id, ciphertext, meta.encode()])?;
        Ok(meta.version)
    }

    /// Replaces what is known of a scope's tokens, keeping the tokens.
    pub fn update_token_meta(&self, scope_id: &str, meta: &TokenMeta) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE oauth_tokens SET meta = ?2 WHERE scope_id = ?1")?
            .execute(params![scope_id, meta.encode()])?;
        Ok(())
    }

    /// Deletes a scope's tokens; whether there were any.
    pub fn delete_tokens(&self, scope_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM oauth_tokens WHERE scope_id = ?1")?
            .execute(params![scope_id])?
            > 0)
    }

    /// Appends an audit record (its time must be stamped); returns its id.
    pub fn insert_audit(&mut self, mut record: pb::AuditRecord) -> Result<u64> {
        record.id = super::audit::insert(self.conn, &record)?;
        let id = record.id;
        self.audits.push(record);
        Ok(id)
    }

    /// The sequence number of the last journal record ingested (0 if none).
    pub fn journal_seq(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'journal_seq'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Records that journal records up to `seq` are ingested.
    pub fn set_journal_seq(&self, seq: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('journal_seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![seq.to_string()])?;
        Ok(())
    }

    /// Deletes audit records older than `before_ms`; how many.
    pub fn prune_audit(&self, before_ms: i64) -> Result<usize> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM audit WHERE time_ms < ?1")?
            .execute(params![before_ms])?)
    }

    /// Re-encrypts every ciphertext from the current keyring to `next` and
    /// records `next` as the database's recipient; how many were rewritten.
    pub fn reencrypt_all(&self, next: &Keyring) -> Result<u64> {
        let mut count = 0;
        for (table, key) in [
            ("scope_secrets", "scope_id"),
            ("provider_secrets", "provider_id"),
            ("oauth_tokens", "scope_id"),
        ] {
            let rows: Vec<(String, Vec<u8>)> = self
                .conn
                .prepare(&format!("SELECT {key}, ciphertext FROM {table}"))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut update = self.conn.prepare(&format!(
                "UPDATE {table} SET ciphertext = ?2 WHERE {key} = ?1"
            ))?;
            for (id, ciphertext) in rows {
                let plaintext = self.keyring().decrypt(&ciphertext)?;
                update.execute(params![id, next.encrypt(&plaintext)?])?;
                count += 1;
            }
        }
        self.conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'recipient'",
            params![next.recipient()],
        )?;
        Ok(count)
    }
}

/// A provider's client secret, decrypted, if one is stored.
pub(crate) fn read_provider_secret(
    conn: &Connection,
    keyring: &Keyring,
    provider_id: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let ciphertext: Option<Vec<u8>> = conn
        .prepare_cached("SELECT ciphertext FROM provider_secrets WHERE provider_id = ?1")?
        .query_row(params![provider_id], |r| r.get(0))
        .optional()?;
    ciphertext.map(|c| keyring.decrypt(&c)).transpose()
}

/// A scope's stored tokens, decrypted, and their meta.
pub(crate) fn read_tokens(
    conn: &Connection,
    keyring: &Keyring,
    scope_id: &str,
) -> Result<Option<(TokenSet, TokenMeta)>> {
    let row: Option<(Vec<u8>, String)> = conn
        .prepare_cached("SELECT ciphertext, meta FROM oauth_tokens WHERE scope_id = ?1")?
        .query_row(params![scope_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((ciphertext, meta)) = row else {
        return Ok(None);
    };
    let tokens = TokenSet::decode(&keyring.decrypt(&ciphertext)?)?;
    Ok(Some((tokens, TokenMeta::decode(scope_id, &meta)?)))
}

/// What is known of every scope's tokens (no token), by scope id.
pub(crate) fn read_token_metas(conn: &Connection) -> Result<Vec<(String, TokenMeta)>> {
    let mut stmt = conn.prepare("SELECT scope_id, meta FROM oauth_tokens")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, meta) = row?;
        let meta = TokenMeta::decode(&id, &meta)?;
        out.push((id, meta));
    }
    Ok(out)
}

/// A scope's ciphertext and version, if it has stored values.
pub(crate) fn read_scope_ciphertext(
    conn: &Connection,
    scope_id: &str,
) -> Result<Option<(Vec<u8>, u64)>> {
    Ok(conn
        .prepare_cached("SELECT ciphertext, version FROM scope_secrets WHERE scope_id = ?1")?
        .query_row(params![scope_id], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .optional()?)
}

fn decode_obj<T: DeserializeOwned>(
    kind: Kind,
    id: &str,
    spec: &str,
    source: &str,
    applied_by: Option<u32>,
) -> Result<Obj<T>> {
    let spec = serde_json::from_str(spec).map_err(|e| VaultError::FailedPrecondition {
        message: format!("stored {} {id} cannot be read: {e}", kind.name()),
        fix: None,
    })?;
    let source = Source::parse(source).ok_or_else(|| VaultError::FailedPrecondition {
        message: format!("stored {} {id} has unknown source {source:?}", kind.name()),
        fix: None,
    })?;
    Ok(Obj {
        spec,
        source,
        applied_by,
    })
}

/// Reads the whole configuration.
pub(super) fn load_config(conn: &Connection) -> Result<ConfigState> {
    let mut state = ConfigState::default();
    let mut stmt = conn.prepare("SELECT kind, id, spec, source, applied_by FROM objects")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<u32>>(4)?,
        ))
    })?;
    for row in rows {
        let (tag, id, spec, source, applied_by) = row?;
        let kind = Kind::from_tag(&tag).ok_or_else(|| VaultError::FailedPrecondition {
            message: format!("stored object {id} has unknown kind {tag:?}"),
            fix: None,
        })?;
        match kind {
            Kind::Scope => {
                state.scopes.insert(
                    id.clone(),
                    decode_obj(kind, &id, &spec, &source, applied_by)?,
                );
            }
            Kind::Provider => {
                state.providers.insert(
                    id.clone(),
                    decode_obj(kind, &id, &spec, &source, applied_by)?,
                );
            }
            Kind::Server => {
                state.servers.insert(
                    id.clone(),
                    decode_obj(kind, &id, &spec, &source, applied_by)?,
                );
            }
            Kind::Workspace => {
                state.workspaces.insert(
                    id.clone(),
                    decode_obj(kind, &id, &spec, &source, applied_by)?,
                );
            }
            Kind::Route => {
                state.routes.insert(
                    id.clone(),
                    decode_obj(kind, &id, &spec, &source, applied_by)?,
                );
            }
        }
    }
    state
        .workspaces
        .entry(crate::model::DEFAULT_WORKSPACE.into())
        .or_insert_with(ConfigState::default_workspace);
    let mut stmt = conn.prepare("SELECT scope_id, keys, version FROM scope_secrets")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (scope, keys, version) = row?;
        let keys = serde_json::from_str(&keys).unwrap_or_default();
        state.secrets.insert(
            scope,
            SecretMeta {
                keys,
                version: version as u64,
            },
        );
    }
    let mut stmt = conn.prepare("SELECT provider_id FROM provider_secrets")?;
    for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
        state.provider_secrets.insert(id?);
    }
    let mut stmt = conn.prepare("SELECT route_id, pin FROM route_pins")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (route, pin) = row?;
        state.pins.insert(route, pin);
    }
    Ok(state)
}
