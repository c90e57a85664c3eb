//! The daemon's `--config` file against objects made through the API or a
//! user's `apply` (DESIGN §2: one user cannot stop the vault for others).
//!
//! The config file is applied at every start. Were a conflict with a user's
//! object an error, a user could keep the system vault from starting: by
//! taking an id or a tool namespace the file defines later, or with a route
//! on a server the file later drops. Instead the file wins, and every
//! object in its way is *disabled*: set aside whole in `disabled_objects`
//! (with why), audited under its owner's uid, shown to its owner and to
//! admins by `status`, and restored by a later start once it fits again.
//! A scope or provider set aside because the file defines its id loses its
//! stored values (the file's object must not inherit them); otherwise
//! nothing of a disabled object is deleted.

use serde::Serialize;

use crate::error::{Result, VaultError};
use crate::model::{
    ConfigState, Document, Kind, Obj, OwnerSpec, ProviderSpec, RouteSpec, ScopeSpec, ServerSpec,
    Source, WorkspaceSpec, state_problems,
};

/// An object set aside, as stored in `disabled_objects`.
#[derive(Clone, Debug, PartialEq)]
pub struct Disabled {
    /// Its row, once stored.
    pub seq: Option<i64>,
    /// A route's pin (see `model::server_pin`), kept while it is aside.
    pub pin: Option<String>,
    /// Its kind.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// Its spec, as JSON (as `objects` holds it).
    pub spec: String,
    /// Where it came from.
    pub source: Source,
    /// For `yaml` objects, the uid whose apply wrote it.
    pub applied_by: Option<u32>,
    /// Its owner.
    pub owner: Option<u32>,
    /// Why it was set aside.
    pub reason: String,
    /// Milliseconds since the epoch when it was set aside.
    pub disabled_ms: i64,
    /// Its stored values (a scope's secrets and tokens, a provider's client
    /// secret) go with it: the config file now defines its id.
    pub material_deleted: bool,
}

/// Whether `obj` comes from the config file itself.
fn from_config<T>(obj: &Obj<T>) -> bool {
    obj.source == Source::Yaml && obj.applied_by.is_none()
}

fn owner_uid(owner: Option<&OwnerSpec>) -> Option<u32> {
    owner.and_then(OwnerSpec::uid)
}

/// Removes a non-config object from `state`, as a [`Disabled`] with
/// `reason`; `None` when it is missing or comes from the config file.
fn take(state: &mut ConfigState, kind: Kind, id: &str, reason: &str) -> Option<Disabled> {
    fn take_from<T: Serialize>(
        map: &mut std::collections::BTreeMap<String, Obj<T>>,
        kind: Kind,
        id: &str,
        reason: &str,
        owner: impl Fn(&T) -> Option<u32>,
    ) -> Option<Disabled> {
        if map.get(id).is_none_or(from_config) {
            return None;
        }
        let obj = map.remove(id)?;
        Some(Disabled {
            seq: None,
            pin: None,
            kind,
            id: id.to_owned(),
            spec: serde_json::to_string(&obj.spec).ok()?,
            source: obj.source,
            applied_by: obj.applied_by,
            owner: owner(&obj.spec),
            reason: reason.to_owned(),
            disabled_ms: crate::clock::now_ms(),
            material_deleted: false,
        })
    }
    let pin = (kind == Kind::Route)
        .then(|| state.pins.get(id).cloned())
        .flatten();
    let taken = match kind {
        Kind::Scope => take_from(&mut state.scopes, kind, id, reason, |s| {
            owner_uid(s.owner.as_ref())
        }),
        Kind::Provider => take_from(&mut state.providers, kind, id, reason, |s| {
            owner_uid(s.owner.as_ref())
        }),
        Kind::Server => take_from(&mut state.servers, kind, id, reason, |s| {
            owner_uid(s.owner.as_ref())
        }),
        Kind::Workspace => take_from(&mut state.workspaces, kind, id, reason, |s| {
            owner_uid(s.owner.as_ref())
        }),
        Kind::Route => take_from(&mut state.routes, kind, id, reason, |s| {
            owner_uid(s.owner.as_ref())
        }),
    };
    taken.map(|d| Disabled { pin, ..d })
}

/// Puts a disabled object back into `state` if its id is free; whether it
/// was put back.
fn put_back(state: &mut ConfigState, d: &Disabled) -> bool {
    fn put<T: serde::de::DeserializeOwned>(
        map: &mut std::collections::BTreeMap<String, Obj<T>>,
        d: &Disabled,
    ) -> bool {
        if map.contains_key(&d.id) {
            return false;
        }
        let Ok(spec) = serde_json::from_str(&d.spec) else {
            return false;
        };
        map.insert(
            d.id.clone(),
            Obj {
                spec,
                source: d.source,
                applied_by: d.applied_by,
            },
        );
        true
    }
    let put = match d.kind {
        Kind::Scope => put::<ScopeSpec>(&mut state.scopes, d),
        Kind::Provider => put::<ProviderSpec>(&mut state.providers, d),
        Kind::Server => put::<ServerSpec>(&mut state.servers, d),
        Kind::Workspace => put::<WorkspaceSpec>(&mut state.workspaces, d),
        Kind::Route => put::<RouteSpec>(&mut state.routes, d),
    };
    if put && d.kind == Kind::Route {
        // Its own pin, or none (then it releases nothing of a user's scope
        // to a system server until confirmed): never another route's.
        match &d.pin {
            Some(pin) => state.pins.insert(d.id.clone(), pin.clone()),
            None => state.pins.remove(&d.id),
        };
    }
    put
}

/// The ids `doc` defines, by kind.
fn wanted(doc: &Document) -> Vec<(Kind, &str)> {
    let mut out = Vec::new();
    out.extend(doc.auth_scopes.iter().map(|o| (Kind::Scope, o.id.as_str())));
    out.extend(
        doc.oauth_providers
            .iter()
            .map(|o| (Kind::Provider, o.id.as_str())),
    );
    out.extend(
        doc.downstream_servers
            .iter()
            .map(|o| (Kind::Server, o.id.as_str())),
    );
    out.extend(
        doc.workspaces
            .iter()
            .map(|o| (Kind::Workspace, o.id.as_str())),
    );
    out.extend(doc.route_rules.iter().map(|o| (Kind::Route, o.id.as_str())));
    out
}

/// What the start-up apply does before planning: sets aside every object
/// that holds an id the file defines.
pub(super) fn before_plan(doc: &Document, next: &mut ConfigState, disabled: &mut Vec<Disabled>) {
    for (kind, id) in wanted(doc) {
        let reason = format!(
            "the vault's config file defines {} {id}, and its objects win; choose another id",
            kind.name()
        );
        if let Some(mut d) = take(next, kind, id, &reason) {
            d.material_deleted = matches!(kind, Kind::Scope | Kind::Provider);
            disabled.push(d);
        }
    }
}

/// What the start-up apply does once the file's objects are planned (its
/// ids taken, the ones it dropped pruned): puts back the objects set aside
/// earlier whose ids are free again. [`after_plan`] sets aside again any
/// that still conflict. Returns the objects put back.
pub(super) fn restore(next: &mut ConfigState, stored: &[Disabled]) -> Vec<Disabled> {
    stored
        .iter()
        .filter(|d| put_back(next, d))
        .cloned()
        .collect()
}

/// What the start-up apply does after planning: while the configuration has
/// problems, sets aside a non-config object each problem involves (a
/// server whose tool namespace the file's server uses, a route whose
/// server or scope the file dropped, ...), one just put back first, so a
/// live object never makes way for one that was aside. Returns the
/// problems left, which involve the file's objects only.
pub(super) fn after_plan(
    next: &mut ConfigState,
    restored: &[Disabled],
    disabled: &mut Vec<Disabled>,
) -> Vec<String> {
    let restored_as = |kind: Kind, id: &str| restored.iter().find(|r| r.kind == kind && r.id == id);
    loop {
        let problems = state_problems(next);
        if problems.is_empty() {
            return Vec::new();
        }
        let mut moved = false;
        for problem in &problems {
            let mut order: Vec<&(Kind, String)> = problem.involves.iter().collect();
            order.sort_by_key(|(kind, id)| restored_as(*kind, id).is_none());
            for (kind, id) in order {
                let reason = format!(
                    "it conflicts with the vault's config file: {}",
                    problem.message
                );
                if let Some(mut d) = take(next, *kind, id, &reason) {
                    if let Some(was) = restored_as(*kind, id) {
                        d.seq = was.seq;
                        d.pin = was.pin.clone();
                    }
                    disabled.push(d);
                    moved = true;
                    break;
                }
            }
        }
        if !moved {
            return problems.into_iter().map(|p| p.message).collect();
        }
    }
}

/// The rows of `disabled_objects`, oldest first.
pub fn read(conn: &rusqlite::Connection) -> Result<Vec<Disabled>> {
    let mut stmt = conn.prepare(
        "SELECT kind, id, spec, source, applied_by, owner, reason, disabled_ms, seq, pin
         FROM disabled_objects ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<u32>>(4)?,
            r.get::<_, Option<u32>>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, Option<String>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (tag, id, spec, source, applied_by, owner, reason, disabled_ms, seq, pin) = row?;
        let bad = |what: &str| VaultError::FailedPrecondition {
            message: format!("disabled object {id} has an unknown {what}"),
            fix: None,
        };
        out.push(Disabled {
            kind: Kind::from_tag(&tag).ok_or_else(|| bad("kind"))?,
            source: Source::parse(&source).ok_or_else(|| bad("source"))?,
            id,
            spec,
            applied_by,
            owner,
            reason,
            disabled_ms,
            material_deleted: false,
            seq: Some(seq),
            pin,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Policy, Transport};

    fn server(id: &str, ns: &str, owner: Option<u32>) -> ServerSpec {
        ServerSpec {
            id: id.into(),
            name: id.into(),
            transport: Transport::Stdio,
            command: "/bin/true".into(),
            tool_namespace: ns.into(),
            owner: owner.map(OwnerSpec::Uid),
            ..Default::default()
        }
    }

    fn obj<T>(spec: T, source: Source, applied_by: Option<u32>) -> Obj<T> {
        Obj {
            spec,
            source,
            applied_by,
        }
    }

    #[test]
    fn the_files_ids_and_namespaces_win_and_dependants_follow() {
        let mut next = ConfigState::default();
        next.workspaces
            .insert("default".into(), ConfigState::default_workspace());
        // A user's server holding the file's namespace, and the user's
        // route on it; the file's own server.
        next.servers.insert(
            "mine".into(),
            obj(server("mine", "shared", Some(1000)), Source::Api, None),
        );
        next.routes.insert(
            "r".into(),
            obj(
                RouteSpec {
                    id: "r".into(),
                    name: "r".into(),
                    tool_match: vec!["*".into()],
                    downstream_server_id: "mine".into(),
                    policy: Policy::Allow,
                    owner: Some(OwnerSpec::Uid(1000)),
                    ..Default::default()
                },
                Source::Api,
                None,
            ),
        );
        next.servers.insert(
            "file".into(),
            obj(server("file", "shared", None), Source::Yaml, None),
        );
        let mut disabled = Vec::new();
        let left = after_plan(&mut next, &[], &mut disabled);
        assert!(left.is_empty(), "{left:?}");
        let ids: Vec<(Kind, &str)> = disabled.iter().map(|d| (d.kind, d.id.as_str())).collect();
        assert_eq!(ids, [(Kind::Server, "mine"), (Kind::Route, "r")]);
        assert_eq!(disabled[0].owner, Some(1000));
        assert!(disabled[0].reason.contains("tool_namespace \"shared\""));
        assert!(next.servers.contains_key("file"));
        // Once the file's server is gone, both fit again.
        next.servers.remove("file");
        for d in &disabled {
            assert!(put_back(&mut next, d));
        }
        assert!(state_problems(&next).is_empty());
    }

    #[test]
    fn a_route_keeps_its_own_pin_while_aside_and_never_takes_another() {
        let mut next = ConfigState::default();
        let route = |owner: u32| {
            obj(
                RouteSpec {
                    id: "r".into(),
                    name: "r".into(),
                    tool_match: vec!["*".into()],
                    downstream_server_id: "s".into(),
                    owner: Some(OwnerSpec::Uid(owner)),
                    ..Default::default()
                },
                Source::Api,
                None,
            )
        };
        next.routes.insert("r".into(), route(1000));
        next.pins.insert("r".into(), "users-pin".into());
        let aside = take(&mut next, Kind::Route, "r", "why").unwrap_or_else(|| panic!("not taken"));
        assert_eq!(aside.pin.as_deref(), Some("users-pin"));
        // The file's route of that id came and went, pinned to its server.
        next.pins.insert("r".into(), "files-pin".into());
        assert!(put_back(&mut next, &aside));
        assert_eq!(next.pins.get("r").map(String::as_str), Some("users-pin"));
        // A route aside without a pin comes back without one (suspended
        // where a pin is required), not with the one left at its id.
        let mut unpinned =
            take(&mut next, Kind::Route, "r", "why").unwrap_or_else(|| panic!("not taken"));
        unpinned.pin = None;
        next.pins.insert("r".into(), "files-pin".into());
        assert!(put_back(&mut next, &unpinned));
        assert!(!next.pins.contains_key("r"));
    }
}
