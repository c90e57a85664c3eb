//! Authorisation: the peer's kernel credentials → a [`Caller`], the
//! deny-by-default table of which role may call which RPC, and the object
//! rules of DESIGN §2 (owners manage their objects; credentials go to the
//! owner and the grantees of a scope, and to nobody else — admins included;
//! a user sees, and builds on, only its own and system-wide objects).
//!
//! Trust: only SO_PEERCRED and SO_PEERGROUPS, read by the kernel when the
//! peer connected, decide who a caller is. Nothing a peer sends does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Result, VaultError};
use crate::model::{ConfigState, Document, Kind, OwnerSpec, ScopeSpec};
use crate::store::Snapshot;
use crate::sys;

/// The peer of a connection, as the kernel saw it at `connect(2)`.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id (0 if the kernel did not report one).
    pub pid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// What a caller may do in general; objects narrow it further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// uid 0, the admin group, or (user mode) the daemon's own uid.
    Admin,
    /// Any other peer allowed to connect.
    User,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The peer's credentials.
    pub peer: PeerInfo,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The caller's uid.
    pub fn uid(&self) -> u32 {
        self.peer.uid
    }

    fn in_group(&self, gid: u32) -> bool {
        self.peer.gid == gid || self.peer.groups.contains(&gid)
    }

    /// Whether the caller may change or delete an object owned by `owner`.
    pub fn may_manage(&self, owner: Option<&OwnerSpec>) -> bool {
        self.is_admin() || owner.and_then(OwnerSpec::uid) == Some(self.uid())
    }
}

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Admins only.
    Admin,
    /// Any caller; the handler checks ownership and grants.
    Any,
}

/// Every RPC the daemon serves and who may call it. An RPC that is not listed
/// is refused for everyone.
const RPC_TABLE: &[(&str, Access)] = &[
    ("Admin/Status", Access::Any),
    ("Admin/Apply", Access::Any),
    ("Admin/Export", Access::Any),
    ("Admin/ListScopes", Access::Any),
    ("Admin/GetScope", Access::Any),
    ("Admin/CreateScope", Access::Any),
    ("Admin/DeleteScope", Access::Any),
    ("Admin/SetSecret", Access::Any),
    ("Admin/ListSecrets", Access::Any),
    ("Admin/DeleteSecret", Access::Any),
    ("Admin/ListProviders", Access::Any),
    ("Admin/GetProvider", Access::Any),
    ("Admin/CreateProvider", Access::Any),
    ("Admin/DeleteProvider", Access::Any),
    ("Admin/SetProviderSecret", Access::Any),
    ("Admin/ListProviderTemplates", Access::Any),
    ("Admin/ListServers", Access::Any),
    ("Admin/GetServer", Access::Any),
    ("Admin/CreateServer", Access::Any),
    ("Admin/DeleteServer", Access::Any),
    ("Admin/ListWorkspaces", Access::Any),
    ("Admin/GetWorkspace", Access::Any),
    ("Admin/CreateWorkspace", Access::Any),
    ("Admin/DeleteWorkspace", Access::Any),
    ("Admin/ListRoutes", Access::Any),
    ("Admin/GetRoute", Access::Any),
    ("Admin/CreateRoute", Access::Any),
    ("Admin/DeleteRoute", Access::Any),
    ("Admin/QueryAudit", Access::Any),
    ("Admin/FollowAudit", Access::Any),
    ("Admin/RotateIdentity", Access::Admin),
    ("Admin/Unlock", Access::Admin),
    ("Admin/SealIdentity", Access::Admin),
    ("Auth/StartAuthorization", Access::Any),
    ("Auth/CompleteAuthorization", Access::Any),
    ("Auth/DeviceAuthorization", Access::Any),
    ("Auth/Status", Access::Any),
    ("Auth/Revoke", Access::Any),
    ("Vault/GetConfig", Access::Any),
    ("Vault/WatchConfig", Access::Any),
    ("Vault/GetCredential", Access::Any),
    ("Vault/SubmitAudit", Access::Any),
];

/// Resolved grants of one scope.
#[derive(Debug, Default)]
struct ScopeAccess {
    owner: Option<u32>,
    users: HashSet<u32>,
    groups: HashSet<u32>,
}

/// Resolved grants of every scope, by scope id.
type AccessIndex = Arc<HashMap<String, ScopeAccess>>;

/// Turns peers into callers and answers access questions.
pub struct Authorizer {
    daemon_uid: u32,
    user_mode: bool,
    admin_gid: Option<u32>,
    client_gid: Option<u32>,
    /// Grants resolved to ids, for one configuration generation. Name lookups
    /// (NSS) are too slow for every release, so they run once per change.
    access: Mutex<Option<(u64, AccessIndex)>>,
}

impl Authorizer {
    /// An authorizer for a daemon running as `daemon_uid`.
    pub fn new(
        daemon_uid: u32,
        user_mode: bool,
        admin_gid: Option<u32>,
        client_gid: Option<u32>,
    ) -> Self {
        Self {
            daemon_uid,
            user_mode,
            admin_gid,
            client_gid,
            access: Mutex::new(None),
        }
    }

    /// The caller behind `peer`, or PERMISSION_DENIED if it may not use the
    /// vault at all.
    pub fn caller(&self, peer: &PeerInfo) -> Result<Caller> {
        let mut caller = Caller {
            peer: peer.clone(),
            role: Role::User,
        };
        let admin = peer.uid == 0
            || (self.user_mode && peer.uid == self.daemon_uid)
            || self.admin_gid.is_some_and(|g| caller.in_group(g));
        if admin {
            caller.role = Role::Admin;
            return Ok(caller);
        }
        if let Some(gid) = self.client_gid
            && !caller.in_group(gid)
        {
            return Err(VaultError::denied(format!(
                "uid {} is not a member of the vault's client group (gid {gid})",
                peer.uid
            )));
        }
        Ok(caller)
    }

    /// Checks the RPC table: `rpc` is `Service/Method`.
    pub fn check_rpc(&self, caller: &Caller, rpc: &str) -> Result<()> {
        match RPC_TABLE.iter().find(|(name, _)| *name == rpc) {
            Some((_, Access::Any)) => Ok(()),
            Some((_, Access::Admin)) if caller.is_admin() => Ok(()),
            Some((_, Access::Admin)) => Err(VaultError::denied(format!(
                "{rpc} is for administrators; uid {} is not one (root, the admin group, or the vault's own user in user mode)",
                caller.uid()
            ))),
            None => Err(VaultError::denied(format!(
                "{rpc} is not an RPC this vault serves"
            ))),
        }
    }

    fn access_index(&self, snap: &Snapshot) -> AccessIndex {
        let mut cached = self.access.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((generation, index)) = cached.as_ref()
            && *generation == snap.generation
        {
            return index.clone();
        }
        let index: HashMap<String, ScopeAccess> = snap
            .config
            .scopes
            .values()
            .map(|s| (s.spec.id.clone(), resolve_access(&s.spec)))
            .collect();
        let index = Arc::new(index);
        *cached = Some((snap.generation, index.clone()));
        index
    }

    /// Whether `caller` may obtain the values of scope `scope_id`: its owner
    /// or a grantee. Being an admin is not enough.
    pub fn may_use_scope(&self, caller: &Caller, snap: &Snapshot, scope_id: &str) -> bool {
        let index = self.access_index(snap);
        index.get(scope_id).is_some_and(|a| {
            a.owner == Some(caller.uid())
                || a.users.contains(&caller.uid())
                || a.groups.contains(&caller.peer.gid)
                || caller.peer.groups.iter().any(|g| a.groups.contains(g))
        })
    }

    /// The uid the daemon runs as.
    pub fn daemon_uid(&self) -> u32 {
        self.daemon_uid
    }

    /// Whether objects of `owner` apply to everyone: nobody's (built in),
    /// root's, the daemon's, or an admin's (a member of the admin group, as
    /// the user database says now: admins administer for every user, and a
    /// server an admin sets up for a granted scope must reach its grantees).
    fn is_system_owner(&self, owner: Option<u32>) -> bool {
        is_system_owner(owner, self.daemon_uid)
            || owner
                .zip(self.admin_gid)
                .is_some_and(|(uid, gid)| sys::uid_in_group(uid, gid))
    }

    /// Whether a user may build on an object owned by `owner`: its own, or
    /// a system-wide one.
    fn mine_or_system(&self, caller: &Caller, owner: Option<&OwnerSpec>) -> bool {
        let owner = owner.and_then(OwnerSpec::uid);
        owner == Some(caller.uid()) || self.is_system_owner(owner)
    }

    /// The subset of the configuration `caller` may see (DESIGN §2): admins
    /// see all; users see their own scopes and the ones granted to them
    /// (with their providers), and only their own or system-wide servers,
    /// workspaces and routes. Being granted a scope does not bring in its
    /// owner's routes or servers: the proxy runs what it is shown, as the
    /// caller, so anything another user wrote there would run as the caller.
    /// A route is shown only with its server and workspace, so the proxy
    /// never holds a route it cannot follow.
    pub fn visible(&self, caller: &Caller, snap: &Snapshot) -> ConfigState {
        let config = &snap.config;
        if caller.is_admin() {
            return (**config).clone();
        }
        let uid = caller.uid();
        // Each owner's standing looked up once (a user database lookup for
        // each uid, not for each object).
        let mut standing: HashMap<Option<u32>, bool> = HashMap::new();
        let mut mine = |o: &Option<OwnerSpec>| {
            let owner = o.as_ref().and_then(OwnerSpec::uid);
            *standing
                .entry(owner)
                .or_insert_with(|| owner == Some(uid) || self.is_system_owner(owner))
        };
        let mut out = ConfigState::default();
        for (id, s) in &config.scopes {
            let owned = s.spec.owner.as_ref().and_then(OwnerSpec::uid) == Some(uid);
            if owned || self.may_use_scope(caller, snap, id) {
                out.scopes.insert(id.clone(), s.clone());
                if let Some(meta) = config.secrets.get(id) {
                    out.secrets.insert(id.clone(), meta.clone());
                }
            }
        }
        for (id, s) in &config.servers {
            if mine(&s.spec.owner) {
                out.servers.insert(id.clone(), s.clone());
            }
        }
        for (id, w) in &config.workspaces {
            if mine(&w.spec.owner) {
                out.workspaces.insert(id.clone(), w.clone());
            }
        }
        for (id, r) in &config.routes {
            let server = &r.spec.downstream_server_id;
            let followable = (server.is_empty() || out.servers.contains_key(server))
                && out
                    .workspaces
                    .contains_key(crate::model::route_workspace(&r.spec));
            if mine(&r.spec.owner) && followable {
                out.routes.insert(id.clone(), r.clone());
            }
        }
        let wanted_providers: HashSet<&str> = out
            .scopes
            .values()
            .map(|s| s.spec.oauth_provider_id.as_str())
            .collect();
        for (id, p) in &config.providers {
            if mine(&p.spec.owner) || wanted_providers.contains(id.as_str()) {
                out.providers.insert(id.clone(), p.clone());
                if config.provider_secrets.contains(id) {
                    out.provider_secrets.insert(id.clone());
                }
            }
        }
        out
    }

    /// Refuses a user's object `kind`/`id` that refers (`refs`) to objects
    /// the user may not build on: a route may name only scopes the user owns
    /// or is granted, and servers and workspaces it owns or that are
    /// system-wide; a scope only providers it owns or that are system-wide
    /// (a provider's owner can re-point its endpoints, and with them where
    /// the scope's tokens go). Objects of `doc`, the document being applied,
    /// count as the caller's: they are owner-checked already. An object the
    /// caller cannot see is NOT_FOUND, exactly as a missing one, so a
    /// refusal does not reveal that it exists. Admins may refer to anything.
    pub fn check_references(
        &self,
        caller: &Caller,
        snap: &Snapshot,
        doc: Option<&Document>,
        (kind, id): (Kind, &str),
        refs: &[(Kind, &str)],
    ) -> Result<()> {
        if caller.is_admin() {
            return Ok(());
        }
        let config = &snap.config;
        for &(ref_kind, ref_id) in refs {
            if doc.is_some_and(|d| in_document(d, ref_kind, ref_id)) {
                continue;
            }
            if ref_kind == Kind::Scope {
                let owned = config
                    .scopes
                    .get(ref_id)
                    .and_then(|s| s.spec.owner.as_ref())
                    .and_then(OwnerSpec::uid)
                    == Some(caller.uid());
                if owned || self.may_use_scope(caller, snap, ref_id) {
                    continue;
                }
                return Err(VaultError::denied(format!(
                    "{} {id}: uid {} may route only auth scopes it owns or is granted, and auth_scope {ref_id} is neither",
                    kind.name(),
                    caller.uid(),
                )));
            }
            match owner_of(config, ref_kind, ref_id) {
                Some(owner) if self.mine_or_system(caller, owner) => continue,
                Some(_)
                    if ref_kind == Kind::Provider
                        && self.visible(caller, snap).providers.contains_key(ref_id) =>
                {
                    return Err(VaultError::denied(format!(
                        "{} {id}: uid {} may use only oauth providers it owns or system-wide ones, and oauth_provider {ref_id} is neither",
                        kind.name(),
                        caller.uid(),
                    )));
                }
                _ => {
                    return Err(VaultError::not_found(
                        ref_kind.name(),
                        ref_id,
                        ref_kind.noun(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `owner` is root or the daemon's own uid, or nobody (built-in
/// objects): such objects are system-wide, managed by admins alike.
pub fn is_system_owner(owner: Option<u32>, daemon_uid: u32) -> bool {
    owner.is_none_or(|uid| uid == 0 || uid == daemon_uid)
}

/// The owner of object `kind`/`id`, if the object exists.
fn owner_of<'a>(config: &'a ConfigState, kind: Kind, id: &str) -> Option<Option<&'a OwnerSpec>> {
    match kind {
        Kind::Scope => config.scopes.get(id).map(|o| o.spec.owner.as_ref()),
        Kind::Provider => config.providers.get(id).map(|o| o.spec.owner.as_ref()),
        Kind::Server => config.servers.get(id).map(|o| o.spec.owner.as_ref()),
        Kind::Workspace => config.workspaces.get(id).map(|o| o.spec.owner.as_ref()),
        Kind::Route => config.routes.get(id).map(|o| o.spec.owner.as_ref()),
    }
}

/// Whether `doc` holds object `kind`/`id`.
fn in_document(doc: &Document, kind: Kind, id: &str) -> bool {
    match kind {
        Kind::Scope => doc.auth_scopes.iter().any(|o| o.id == id),
        Kind::Provider => doc.oauth_providers.iter().any(|o| o.id == id),
        Kind::Server => doc.downstream_servers.iter().any(|o| o.id == id),
        Kind::Workspace => doc.workspaces.iter().any(|o| o.id == id),
        Kind::Route => doc.route_rules.iter().any(|o| o.id == id),
    }
}

fn resolve_access(scope: &ScopeSpec) -> ScopeAccess {
    let mut access = ScopeAccess {
        owner: scope.owner.as_ref().and_then(OwnerSpec::uid),
        ..Default::default()
    };
    for user in &scope.grants.users {
        match sys::resolve_user(user) {
            Some(uid) => {
                access.users.insert(uid);
            }
            None => {
                tracing::warn!(scope = %scope.id, user = %user, "granted user no longer exists; ignoring")
            }
        }
    }
    for group in &scope.grants.groups {
        match sys::resolve_group(group) {
            Some(gid) => {
                access.groups.insert(gid);
            }
            None => {
                tracing::warn!(scope = %scope.id, group = %group, "granted group no longer exists; ignoring")
            }
        }
    }
    access
}
