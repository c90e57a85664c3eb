//! Domain operations, run inside store write jobs: create and delete objects,
//! `apply` a document, set and delete secrets. Each checks ownership, then
//! validates the whole resulting configuration before it writes anything, so
//! a refused operation changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::authz::Caller;
use crate::error::{Result, VaultError};
use crate::model::{
    ConfigState, Document, Kind, Normalize, Obj, OwnerSpec, ProviderSpec, RouteSpec, ScopeSpec,
    ScopeType, ServerSpec, Source, WorkspaceSpec, is_env_name, is_header_name, route_workspace,
    validate_state,
};
use crate::store::WriteCtx;

pub mod config_file;

/// The largest secret value accepted (64 KiB).
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// The most objects (of all kinds together) one user may own: every write
/// copies the configuration, so one user's thousands would slow everyone's.
pub const MAX_USER_OBJECTS: usize = 1000;

/// Refuses a change that leaves a user (not an admin) owning more than
/// [`MAX_USER_OBJECTS`] objects.
fn check_object_quota(caller: &Caller, state: &ConfigState) -> Result<()> {
    if caller.is_admin() {
        return Ok(());
    }
    let uid = Some(caller.uid());
    let mine = |owner: Option<&OwnerSpec>| owner.and_then(OwnerSpec::uid) == uid;
    let owned = state
        .scopes
        .values()
        .filter(|o| mine(o.spec.owner.as_ref()))
        .count()
        + state
            .providers
            .values()
            .filter(|o| mine(o.spec.owner.as_ref()))
            .count()
        + state
            .servers
            .values()
            .filter(|o| mine(o.spec.owner.as_ref()))
            .count()
        + state
            .workspaces
            .values()
            .filter(|o| mine(o.spec.owner.as_ref()))
            .count()
        + state
            .routes
            .values()
            .filter(|o| mine(o.spec.owner.as_ref()))
            .count();
    if owned > MAX_USER_OBJECTS {
        return Err(VaultError::limit(format!(
            "uid {} would own {owned} objects; a user may own at most {MAX_USER_OBJECTS} (delete some first)",
            caller.uid()
        )));
    }
    Ok(())
}

/// An object kind's place in the configuration.
pub trait Object: Normalize + Serialize + Clone + PartialEq + Send + 'static {
    /// Its map in the configuration.
    fn map(state: &ConfigState) -> &BTreeMap<String, Obj<Self>>;
    /// Its map, mutable.
    fn map_mut(state: &mut ConfigState) -> &mut BTreeMap<String, Obj<Self>>;
    /// Its owner.
    fn owner(&self) -> Option<&OwnerSpec>;
    /// Its list in a document.
    fn list(doc: &Document) -> &Vec<Self>;
    /// The objects it names, by kind and id: what a user may build on is
    /// checked on these (`Authorizer::check_references`).
    fn references(&self) -> Vec<(Kind, &str)> {
        Vec::new()
    }
}

macro_rules! object {
    ($ty:ty, $field:ident, $doc:ident $(, $references:item)?) => {
        impl Object for $ty {
            $($references)?
            fn map(state: &ConfigState) -> &BTreeMap<String, Obj<Self>> {
                &state.$field
            }
            fn map_mut(state: &mut ConfigState) -> &mut BTreeMap<String, Obj<Self>> {
                &mut state.$field
            }
            fn owner(&self) -> Option<&OwnerSpec> {
                self.owner.as_ref()
            }
            fn list(doc: &Document) -> &Vec<Self> {
                &doc.$doc
            }
        }
    };
}

object!(
    ScopeSpec,
    scopes,
    auth_scopes,
    fn references(&self) -> Vec<(Kind, &str)> {
        non_empty(&[(Kind::Provider, &self.oauth_provider_id)])
    }
);
object!(ProviderSpec, providers, oauth_providers);
object!(ServerSpec, servers, downstream_servers);
object!(WorkspaceSpec, workspaces, workspaces);
object!(
    RouteSpec,
    routes,
    route_rules,
    fn references(&self) -> Vec<(Kind, &str)> {
        non_empty(&[
            (Kind::Scope, &self.auth_scope_id),
            (Kind::Server, &self.downstream_server_id),
            (Kind::Workspace, route_workspace(self)),
        ])
    }
);

fn non_empty<'a>(refs: &[(Kind, &'a str)]) -> Vec<(Kind, &'a str)> {
    refs.iter()
        .copied()
        .filter(|(_, id)| !id.is_empty())
        .collect()
}

fn problems_to_error(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VaultError::Invalid {
            message: problems.join("\n"),
            fix: None,
        })
    }
}

/// Refuses a non-admin whose object would belong to someone else.
pub fn check_owner<T: Object>(caller: &Caller, spec: &T) -> Result<()> {
    if caller.is_admin() || spec.owner().and_then(OwnerSpec::uid) == Some(caller.uid()) {
        Ok(())
    } else {
        Err(VaultError::denied(format!(
            "{} {}: uid {} may create objects owned only by itself",
            T::KIND.name(),
            spec.id(),
            caller.uid()
        )))
    }
}

/// Creates an `api` object; `spec` is already normalised and owner-checked.
pub fn create<T: Object>(ctx: &mut WriteCtx<'_>, caller: &Caller, spec: T) -> Result<T> {
    let kind = T::KIND;
    let id = spec.id().to_owned();
    if let Some(existing) = T::map(ctx.config()).get(&id) {
        return Err(VaultError::AlreadyExists {
            message: if sees_details(caller, existing.spec.owner()) {
                format!(
                    "{} {id} already exists (source {})",
                    kind.name(),
                    existing.source.as_str()
                )
            } else {
                taken(kind, &id)
            },
        });
    }
    let obj = Obj {
        spec: spec.clone(),
        source: Source::Api,
        applied_by: None,
    };
    T::map_mut(ctx.config_mut()).insert(id.clone(), obj.clone());
    problems_to_error(validate_state(ctx.config()))?;
    check_object_quota(caller, ctx.config())?;
    ctx.put_object(kind, &obj, &id)?;
    // Whatever a former object of this id left (tokens an authorization
    // stored as its scope was deleted, by a vault without that check) is
    // not the new one's.
    ctx.delete_material(kind, &id)?;
    if kind == Kind::Route {
        ctx.pin_route(&id)?;
    }
    Ok(spec)
}

/// Whether `caller` may learn about an object owned by `owner` beyond its
/// existence: an admin, or its owner.
fn sees_details(caller: &Caller, owner: Option<&OwnerSpec>) -> bool {
    caller.is_admin() || owner.and_then(OwnerSpec::uid) == Some(caller.uid())
}

/// What a user learns of an id another owner's object holds: that it is
/// taken, and nothing of whose it is or where it came from.
fn taken(kind: Kind, id: &str) -> String {
    format!("{} id {id} is taken; choose another id", kind.name())
}

/// Pins every route that has a server but no pin (routes made before pins
/// were kept) to its server as it is now, once in a database's life; how
/// many. Later, a route without a pin stays without: it is suspended where
/// a pin is required, never trusted anew at a restart.
pub fn pin_unpinned(ctx: &mut WriteCtx<'_>) -> Result<usize> {
    const DONE: &str = "routes_pinned";
    if ctx.meta(DONE)?.is_some() {
        return Ok(0);
    }
    ctx.set_meta(DONE, "1")?;
    let unpinned: Vec<String> = ctx
        .config()
        .routes
        .iter()
        .filter(|(id, r)| {
            !r.spec.downstream_server_id.is_empty() && !ctx.config().pins.contains_key(*id)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &unpinned {
        ctx.pin_route(id)?;
    }
    Ok(unpinned.len())
}

/// The owner of route `id` accepts its server as it is now (DESIGN §2: a
/// route that sends a user's scope to a server someone else runs is
/// suspended when that server changes, until its owner confirms). Only the
/// route's owner may: an admin who changed the server must not be able to
/// vouch for the change.
pub fn confirm_route(ctx: &mut WriteCtx<'_>, caller: &Caller, id: &str) -> Result<()> {
    let Some(route) = ctx.config().routes.get(id) else {
        return Err(VaultError::not_found("route_rule", id, "route"));
    };
    if route.spec.owner.as_ref().and_then(OwnerSpec::uid) != Some(caller.uid()) {
        return Err(VaultError::denied(format!(
            "route_rule {id} is confirmed by its owner only; uid {} is not its owner",
            caller.uid()
        )));
    }
    ctx.pin_route(id)
}

/// Deletes an object the caller may manage and nothing refers to.
pub fn delete<T: Object>(ctx: &mut WriteCtx<'_>, caller: &Caller, id: &str) -> Result<()> {
    let kind = T::KIND;
    let Some(obj) = T::map(ctx.config()).get(id) else {
        return Err(VaultError::not_found(kind.name(), id, kind.noun()));
    };
    if obj.source == Source::Seed {
        return Err(VaultError::FailedPrecondition {
            message: format!("{} {id} is built in and cannot be deleted", kind.name()),
            fix: None,
        });
    }
    if !caller.may_manage(obj.spec.owner()) {
        return Err(VaultError::denied(format!(
            "{} {id} belongs to another user; uid {} may delete only its own objects",
            kind.name(),
            caller.uid()
        )));
    }
    let referrers = ctx.config().referrers(kind, id);
    if let Some(first) = referrers.first() {
        let (ref_kind, ref_id) = first.split_once(' ').unwrap_or(("", first));
        let noun = Kind::from_tag(ref_kind).map_or("route", Kind::noun);
        return Err(VaultError::FailedPrecondition {
            message: format!(
                "{} {id} is still used by {}",
                kind.name(),
                referrers.join(", ")
            ),
            fix: Some(format!("mcplexerctl {noun} delete {ref_id}")),
        });
    }
    ctx.config_mut().remove(kind, id);
    ctx.delete_object(kind, id)
}

/// One change of an `apply`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The kind.
    pub kind: Kind,
    /// The id.
    pub id: String,
    /// `create`, `update` or `delete`.
    pub action: &'static str,
    /// For updates: the top-level fields that differ.
    pub fields: Vec<String>,
    /// A scope's stored secrets and OAuth tokens are deleted with this
    /// update (see [`handed_over`]).
    pub material_deleted: bool,
}

fn changed_fields<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["*".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Plans the part of an apply for one kind: prunes the applier's `yaml`
/// objects that left the document, creates and updates the rest.
fn plan_kind<T: Object>(
    caller: &Caller,
    applier: Option<u32>,
    doc: &Document,
    next: &mut ConfigState,
    changes: &mut Vec<Change>,
    problems: &mut Vec<String>,
) {
    let kind = T::KIND;
    let wanted: BTreeMap<&str, &T> = T::list(doc).iter().map(|o| (o.id(), o)).collect();
    let map = T::map_mut(next);
    let prune: Vec<String> = map
        .values()
        .filter(|o| {
            o.source == Source::Yaml && o.applied_by == applier && !wanted.contains_key(o.spec.id())
        })
        .map(|o| o.spec.id().to_owned())
        .collect();
    for id in prune {
        map.remove(&id);
        changes.push(Change {
            kind,
            id,
            action: "delete",
            fields: vec![],
            material_deleted: false,
        });
    }
    for (id, spec) in wanted {
        let obj = Obj {
            spec: (*spec).clone(),
            source: Source::Yaml,
            applied_by: applier,
        };
        match map.get(id) {
            Some(existing)
                if (existing.source != Source::Yaml
                    || (existing.applied_by != applier && applier.is_some()))
                    && !sees_details(caller, existing.spec.owner()) =>
            {
                problems.push(taken(kind, id))
            }
            Some(existing) if existing.source != Source::Yaml => problems.push(format!(
                "{} {id} exists with source {}; apply never changes objects it did not create. Rename it in the document or delete the existing one (mcplexerctl {} delete {id})",
                kind.name(),
                existing.source.as_str(),
                kind.noun()
            )),
            // A document changes only what it (or the same origin) applied;
            // the daemon's --config file is authoritative and may take over.
            Some(existing) if existing.applied_by != applier && applier.is_some() => {
                problems.push(format!(
                    "{} {id} comes from {}; an apply by uid {} cannot change it. Change it there, or delete it first (mcplexerctl {} delete {id})",
                    kind.name(),
                    existing
                        .applied_by
                        .map_or("the vault's --config file".into(), |u| format!("an apply by uid {u}")),
                    caller.uid(),
                    kind.noun()
                ))
            }
            Some(existing) if existing.spec == obj.spec && existing.applied_by == obj.applied_by => {}
            Some(existing) => {
                let mut fields = changed_fields(&existing.spec, &obj.spec);
                if existing.applied_by != obj.applied_by {
                    fields.push("applied_by".into());
                }
                changes.push(Change {
                    kind,
                    id: id.to_owned(),
                    action: "update",
                    fields,
                    material_deleted: false,
                });
                map.insert(id.to_owned(), obj);
            }
            None => {
                changes.push(Change {
                    kind,
                    id: id.to_owned(),
                    action: "create",
                    fields: vec![],
                    material_deleted: false,
                });
                map.insert(id.to_owned(), obj);
            }
        }
    }
}

/// Writes object `kind`/`id` of `next` as it is there.
fn persist_one(ctx: &mut WriteCtx<'_>, next: &ConfigState, kind: Kind, id: &str) -> Result<()> {
    fn put<T: Serialize>(
        ctx: &mut WriteCtx<'_>,
        map: &BTreeMap<String, Obj<T>>,
        kind: Kind,
        id: &str,
    ) -> Result<()> {
        match map.get(id) {
            Some(obj) => ctx.put_object(kind, obj, id),
            None => Ok(()),
        }
    }
    match kind {
        Kind::Scope => put(ctx, &next.scopes, kind, id),
        Kind::Provider => put(ctx, &next.providers, kind, id),
        Kind::Server => put(ctx, &next.servers, kind, id),
        Kind::Workspace => put(ctx, &next.workspaces, kind, id),
        Kind::Route => put(ctx, &next.routes, kind, id),
    }
}

/// The audit record of an object the config file set aside or put back,
/// under the object's owner's uid so that the owner sees it.
fn config_file_record(
    d: &config_file::Disabled,
    status: &str,
    note: &str,
) -> mcplexer_proto::v1::AuditRecord {
    mcplexer_proto::v1::AuditRecord {
        time_ms: crate::clock::now_ms(),
        uid: d.owner.unwrap_or(0),
        kind: "admin".into(),
        status: status.into(),
        action: format!("ConfigFile/{} {}", d.kind.name(), d.id),
        error: crate::limits::cap_text(note.to_owned(), crate::limits::AUDIT_ERROR),
        ..Default::default()
    }
}

fn persist<T: Object>(
    ctx: &mut WriteCtx<'_>,
    next: &ConfigState,
    changes: &[Change],
) -> Result<()> {
    for change in changes.iter().filter(|c| c.kind == T::KIND) {
        match T::map(next).get(&change.id) {
            Some(obj) => ctx.put_object(T::KIND, obj, &change.id)?,
            None => ctx.delete_object(T::KIND, &change.id)?,
        }
    }
    Ok(())
}

/// Who applied a document: `yaml` objects remember it, and an apply prunes
/// only the objects of the same applier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applier {
    /// The daemon's `--config` file.
    ConfigFile,
    /// `mcplexerctl apply` (or the UI) run by this uid.
    Uid(u32),
}

impl Applier {
    fn stored(self) -> Option<u32> {
        match self {
            Self::ConfigFile => None,
            Self::Uid(uid) => Some(uid),
        }
    }
}

/// Applies a normalised, owner-checked document: one transaction; with
/// `dry_run` only the plan is returned. `daemon_uid` tells which owners are
/// system-wide (see [`handed_over`]).
pub fn apply(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    applier: Applier,
    daemon_uid: u32,
    doc: &Document,
    dry_run: bool,
) -> Result<Vec<Change>> {
    let applier = applier.stored();
    let mut next = ctx.config().clone();
    let servers_before: BTreeMap<String, String> = next
        .routes
        .iter()
        .map(|(id, r)| (id.clone(), r.spec.downstream_server_id.clone()))
        .collect();
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    // The config file's objects win over users' (see `config_file`).
    let config_file = applier.is_none();
    let mut disabled = Vec::new();
    let mut restored = Vec::new();
    if config_file {
        config_file::before_plan(doc, &mut next, &mut disabled);
    }
    plan_kind::<ScopeSpec>(caller, applier, doc, &mut next, &mut changes, &mut problems);
    plan_kind::<ProviderSpec>(caller, applier, doc, &mut next, &mut changes, &mut problems);
    plan_kind::<ServerSpec>(caller, applier, doc, &mut next, &mut changes, &mut problems);
    plan_kind::<WorkspaceSpec>(caller, applier, doc, &mut next, &mut changes, &mut problems);
    plan_kind::<RouteSpec>(caller, applier, doc, &mut next, &mut changes, &mut problems);
    if config_file {
        restored = config_file::restore(&mut next, &ctx.disabled_objects()?);
        problems.extend(config_file::after_plan(&mut next, &restored, &mut disabled));
    } else {
        problems.extend(validate_state(&next));
    }
    problems_to_error(problems)?;
    check_object_quota(caller, &next)?;
    mark_handed_over(caller, daemon_uid, ctx.config(), &next, &mut changes);
    // Put back only what was not set aside again. One put back where the
    // file's object was just pruned takes its place: that object's row is
    // overwritten, not deleted, and what it stored (values, tokens) is
    // deleted, never inherited.
    restored.retain(|r| !disabled.iter().any(|d| d.kind == r.kind && d.id == r.id));
    let mut replaced = Vec::new();
    changes.retain(|c| {
        let takes_place =
            c.action == "delete" && restored.iter().any(|r| r.kind == c.kind && r.id == c.id);
        if takes_place {
            replaced.push((c.kind, c.id.clone()));
        }
        !takes_place
    });
    if dry_run || (changes.is_empty() && disabled.is_empty() && restored.is_empty()) {
        return Ok(changes);
    }
    for d in &disabled {
        ctx.disable_object(d)?;
        if d.material_deleted {
            ctx.delete_material(d.kind, &d.id)?;
            match d.kind {
                Kind::Scope => {
                    next.secrets.remove(&d.id);
                }
                Kind::Provider => {
                    next.provider_secrets.remove(&d.id);
                }
                _ => {}
            }
        }
        ctx.insert_audit(config_file_record(d, "error", &d.reason))?;
    }
    for (kind, id) in replaced.iter().filter(|(kind, _)| *kind != Kind::Route) {
        ctx.delete_material(*kind, id)?;
        match kind {
            Kind::Scope => {
                next.secrets.remove(id);
            }
            Kind::Provider => {
                next.provider_secrets.remove(id);
            }
            _ => {}
        }
    }
    for r in &restored {
        persist_one(ctx, &next, r.kind, &r.id)?;
        ctx.forget_disabled(r)?;
        ctx.insert_audit(config_file_record(
            r,
            "success",
            "put back: it no longer conflicts with the vault's config file",
        ))?;
    }
    for change in changes.iter().filter(|c| c.action == "delete") {
        next.remove(change.kind, &change.id);
    }
    for change in changes.iter().filter(|c| c.material_deleted) {
        ctx.delete_material(Kind::Scope, &change.id)?;
        next.secrets.remove(&change.id);
    }
    persist::<ScopeSpec>(ctx, &next, &changes)?;
    persist::<ProviderSpec>(ctx, &next, &changes)?;
    persist::<ServerSpec>(ctx, &next, &changes)?;
    persist::<WorkspaceSpec>(ctx, &next, &changes)?;
    persist::<RouteSpec>(ctx, &next, &changes)?;
    *ctx.config_mut() = next;
    // A route is pinned to its server when it is made or sent to another
    // server; other updates keep its pin (and a suspension).
    for change in changes.iter().filter(|c| c.kind == Kind::Route) {
        match change.action {
            "delete" => {
                ctx.config_mut().pins.remove(&change.id);
            }
            _ => {
                let server = ctx
                    .config()
                    .routes
                    .get(&change.id)
                    .map(|r| r.spec.downstream_server_id.clone());
                if change.action == "create" || servers_before.get(&change.id) != server.as_ref() {
                    ctx.pin_route(&change.id)?;
                }
            }
        }
    }
    Ok(changes)
}

/// Whether updating scope `old` to `new` hands its stored values to someone
/// its owner did not choose: a new owner, or users or groups added to its
/// grants, by a caller other than its owner. Admins may do everything but
/// read a value back; were the values kept, an admin could re-apply a
/// user's scope granted to itself and obtain them. A system-wide scope's
/// values were set by admins, so every admin counts as its owner.
fn handed_over(caller: &Caller, daemon_uid: u32, old: &ScopeSpec, new: &ScopeSpec) -> bool {
    let owner = |s: &ScopeSpec| s.owner.as_ref().and_then(OwnerSpec::uid);
    let owns = owner(old) == Some(caller.uid())
        || (caller.is_admin() && crate::authz::is_system_owner(owner(old), daemon_uid));
    if owns {
        return false;
    }
    let resolved = |names: &[String], resolve: fn(&str) -> Option<u32>| -> BTreeSet<u32> {
        names.iter().filter_map(|n| resolve(n)).collect()
    };
    let users = |s: &ScopeSpec| resolved(&s.grants.users, crate::sys::resolve_user);
    let groups = |s: &ScopeSpec| resolved(&s.grants.groups, crate::sys::resolve_group);
    owner(old) != owner(new)
        || !users(new).is_subset(&users(old))
        || !groups(new).is_subset(&groups(old))
}

/// Marks the scope updates of an apply that [`handed_over`] their values:
/// those are deleted with the update, and the change says so.
fn mark_handed_over(
    caller: &Caller,
    daemon_uid: u32,
    before: &ConfigState,
    next: &ConfigState,
    changes: &mut [Change],
) {
    for change in changes
        .iter_mut()
        .filter(|c| c.kind == Kind::Scope && c.action == "update")
    {
        let (Some(old), Some(new)) = (before.scopes.get(&change.id), next.scopes.get(&change.id))
        else {
            continue;
        };
        if !handed_over(caller, daemon_uid, &old.spec, &new.spec) {
            continue;
        }
        change.material_deleted = true;
        if before.secrets.contains_key(&change.id) {
            change.fields.push("secrets (deleted)".into());
        }
        if old.spec.kind == ScopeType::Oauth2 {
            change.fields.push("oauth_tokens (deleted)".into());
        }
    }
}

fn managed_scope<'c>(
    ctx: &'c WriteCtx<'_>,
    caller: &Caller,
    scope_id: &str,
) -> Result<&'c ScopeSpec> {
    let Some(scope) = ctx.config().scopes.get(scope_id) else {
        return Err(VaultError::not_found("auth_scope", scope_id, "scope"));
    };
    if !caller.may_manage(scope.spec.owner.as_ref()) {
        return Err(VaultError::denied(format!(
            "auth_scope {scope_id} belongs to another user; uid {} may set secrets only on its own scopes",
            caller.uid()
        )));
    }
    Ok(&scope.spec)
}

/// Checks a key and value against the scope's type.
fn check_secret(scope: &ScopeSpec, key: &str, value: &[u8]) -> Result<()> {
    match scope.kind {
        ScopeType::Env if !is_env_name(key) => Err(VaultError::invalid(format!(
            "auth_scope {} is an env scope: key {key:?} is not a valid environment variable name",
            scope.id
        ))),
        ScopeType::Env if value.contains(&0) => Err(VaultError::invalid(format!(
            "auth_scope {}: the value for {key} contains a NUL byte, which an environment variable cannot hold",
            scope.id
        ))),
        ScopeType::Header if !is_header_name(key) => Err(VaultError::invalid(format!(
            "auth_scope {} is a header scope: key {key:?} is not a valid HTTP header name",
            scope.id
        ))),
        ScopeType::Header if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) => {
            Err(VaultError::invalid(format!(
                "auth_scope {}: the value for header {key} contains CR, LF or NUL, which a header cannot hold",
                scope.id
            )))
        }
        ScopeType::Oauth2 => Err(VaultError::FailedPrecondition {
            message: format!(
                "auth_scope {} is an oauth2 scope: its token comes from the OAuth flow, not from secret set",
                scope.id
            ),
            fix: Some(format!("mcplexerctl auth authorize {}", scope.id)),
        }),
        _ if value.is_empty() => Err(VaultError::invalid(format!(
            "auth_scope {}: the value for {key} is empty",
            scope.id
        ))),
        _ if value.len() > MAX_SECRET_LEN => Err(VaultError::invalid(format!(
            "auth_scope {}: the value for {key} is {} bytes; the limit is {MAX_SECRET_LEN}",
            scope.id,
            value.len()
        ))),
        _ => Ok(()),
    }
}

/// Sets one secret value; returns the scope's new version.
pub fn set_secret(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    scope_id: &str,
    key: String,
    value: Zeroizing<Vec<u8>>,
) -> Result<u64> {
    check_secret(managed_scope(ctx, caller, scope_id)?, &key, &value)?;
    let mut map = ctx.load_secrets(scope_id)?;
    map.insert(key, value);
    ctx.store_secrets(scope_id, &map)
}

/// Deletes one secret value.
pub fn delete_secret(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    scope_id: &str,
    key: &str,
) -> Result<u64> {
    managed_scope(ctx, caller, scope_id)?;
    let mut map = ctx.load_secrets(scope_id)?;
    if !map.remove(key) {
        return Err(VaultError::NotFound {
            message: format!("auth_scope {scope_id} has no secret {key:?}"),
            fix: Some(format!("mcplexerctl secret list {scope_id}")),
        });
    }
    ctx.store_secrets(scope_id, &map)
}

/// Sets a provider's client secret.
pub fn set_provider_secret(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    provider_id: &str,
    secret: &[u8],
) -> Result<()> {
    let Some(provider) = ctx.config().providers.get(provider_id) else {
        return Err(VaultError::not_found(
            "oauth_provider",
            provider_id,
            "provider",
        ));
    };
    if !caller.may_manage(provider.spec.owner.as_ref()) {
        return Err(VaultError::denied(format!(
            "oauth_provider {provider_id} belongs to another user"
        )));
    }
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(VaultError::invalid(format!(
            "the client secret must be 1 to {MAX_SECRET_LEN} bytes"
        )));
    }
    ctx.store_provider_secret(provider_id, secret)
}

/// The document `export` writes: every visible object but built-in ones,
/// without secrets.
pub fn export(state: &ConfigState) -> Document {
    fn list<T: Object>(state: &ConfigState) -> Vec<T> {
        T::map(state)
            .values()
            .filter(|o| o.source != Source::Seed)
            .map(|o| o.spec.clone())
            .collect()
    }
    Document {
        auth_scopes: list(state),
        oauth_providers: list(state),
        downstream_servers: list(state),
        workspaces: list(state),
        route_rules: list(state),
    }
}
