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
    ("Admin/ConfirmRoute", Access::Any),
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

/// What one configuration generation resolves once: every scope's grants,
/// whether each owner is system-wide, every route's tool globs. User and
/// group lookups (NSS) are too slow for every release.
#[derive(Default)]
struct Index {
    scopes: HashMap<String, ScopeAccess>,
    system: HashMap<Option<u32>, bool>,
    tools: HashMap<String, globset::GlobSet>,
}

type AccessIndex = Arc<Index>;

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
        let config = &snap.config;
        let scopes = config
            .scopes
            .values()
            .map(|s| (s.spec.id.clone(), resolve_access(&s.spec)))
            .collect();
        let owners = config
            .scopes
            .values()
            .map(|o| o.spec.owner.as_ref())
            .chain(config.servers.values().map(|o| o.spec.owner.as_ref()))
            .chain(config.routes.values().map(|o| o.spec.owner.as_ref()))
            .map(|o| o.and_then(OwnerSpec::uid));
        let mut system = HashMap::new();
        for owner in owners {
            system
                .entry(owner)
                .or_insert_with(|| self.is_system_owner(owner));
        }
        let tools = config
            .routes
            .values()
            .map(|r| (r.spec.id.clone(), tool_set(&r.spec.tool_match)))
            .collect();
        let index = Arc::new(Index {
            scopes,
            system,
            tools,
        });
        *cached = Some((snap.generation, index.clone()));
        index
    }

    /// Whether `caller` may obtain the values of scope `scope_id`: its owner
    /// or a grantee. Being an admin is not enough.
    pub fn may_use_scope(&self, caller: &Caller, snap: &Snapshot, scope_id: &str) -> bool {
        let index = self.access_index(snap);
        index.scopes.get(scope_id).is_some_and(|a| {
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

    /// Whether objects of `owner` are system-wide, from the generation's
    /// index where it knows the owner.
    fn is_system(&self, snap: &Snapshot, owner: Option<&OwnerSpec>) -> bool {
        let owner = owner.and_then(OwnerSpec::uid);
        let index = self.access_index(snap);
        index
            .system
            .get(&owner)
            .copied()
            .unwrap_or_else(|| self.is_system_owner(owner))
    }

    /// Whether a proxy of `caller` may follow (run, send a credential to)
    /// an object owned by `owner`: its own and system-wide ones, admin or
    /// not (see [`Self::followable`]).
    pub fn may_follow(&self, caller: &Caller, snap: &Snapshot, owner: Option<&OwnerSpec>) -> bool {
        owner.and_then(OwnerSpec::uid) == Some(caller.uid()) || self.is_system(snap, owner)
    }

    /// DESIGN §2: a user's servers, workspaces and routes are the user's to
    /// make. An admin may not create or change one owned by another user:
    /// its route would send that user's scope to where the admin chose, and
    /// its server would run what the admin chose with the user's values.
    pub fn check_admin_owner(
        &self,
        caller: &Caller,
        kind: Kind,
        id: &str,
        owner: Option<&OwnerSpec>,
    ) -> Result<()> {
        if !caller.is_admin() || !matches!(kind, Kind::Server | Kind::Workspace | Kind::Route) {
            return Ok(());
        }
        let uid = owner.and_then(OwnerSpec::uid);
        if uid == Some(caller.uid()) || self.is_system_owner(uid) {
            return Ok(());
        }
        Err(VaultError::denied(format!(
            "{} {id}: owner uid {} is a user; admins do not make or change a user's servers, workspaces or routes, so that a user's credential goes only where that user sent it. Leave out owner (the object is then system-wide), or let uid {} make it",
            kind.name(),
            uid.unwrap_or_default(),
            uid.unwrap_or_default(),
        )))
    }

    /// The checks of [`Self::check_admin_owner`] and
    /// [`Self::check_route_scope`] on every object of an apply document.
    pub fn check_document(&self, caller: &Caller, snap: &Snapshot, doc: &Document) -> Result<()> {
        for s in &doc.downstream_servers {
            self.check_admin_owner(caller, Kind::Server, &s.id, s.owner.as_ref())?;
        }
        for w in &doc.workspaces {
            self.check_admin_owner(caller, Kind::Workspace, &w.id, w.owner.as_ref())?;
        }
        for r in &doc.route_rules {
            self.check_admin_owner(caller, Kind::Route, &r.id, r.owner.as_ref())?;
            self.check_route_scope(snap, Some(doc), r)?;
        }
        Ok(())
    }

    /// Refuses a system-wide route that carries a user's scope: a user's
    /// scope is released only through a route of a user allowed to use it.
    /// `doc` (the document being applied) is consulted for the scope
    /// first.
    pub fn check_route_scope(
        &self,
        snap: &Snapshot,
        doc: Option<&Document>,
        route: &crate::model::RouteSpec,
    ) -> Result<()> {
        if route.auth_scope_id.is_empty() || !self.is_system(snap, route.owner.as_ref()) {
            return Ok(());
        }
        let in_doc = doc.and_then(|d| d.auth_scopes.iter().find(|s| s.id == route.auth_scope_id));
        let owner = match in_doc {
            Some(scope) => scope.owner.clone(),
            None => match snap.config.scopes.get(&route.auth_scope_id) {
                Some(scope) => scope.spec.owner.clone(),
                None => return Ok(()),
            },
        };
        if self.is_system(snap, owner.as_ref()) {
            return Ok(());
        }
        Err(VaultError::denied(format!(
            "route_rule {}: auth_scope {} belongs to uid {}, and a system-wide route cannot carry a user's scope (a user's credential goes only through routes of users allowed to use it). Let the scope's owner or a grantee make the route",
            route.id,
            route.auth_scope_id,
            owner.as_ref().and_then(OwnerSpec::uid).unwrap_or_default(),
        )))
    }

    /// Why `route` releases nothing now, if it does not: it sends a user's
    /// scope to a system-wide server (which admins run) whose definition
    /// changed since the route was made or last confirmed.
    pub fn route_suspension(
        &self,
        snap: &Snapshot,
        route: &crate::model::RouteSpec,
    ) -> Option<String> {
        let config = &snap.config;
        let scope = config.scopes.get(&route.auth_scope_id)?;
        let server = config.servers.get(&route.downstream_server_id)?;
        if self.is_system(snap, scope.spec.owner.as_ref())
            || !self.is_system(snap, server.spec.owner.as_ref())
        {
            return None;
        }
        let pin = crate::model::server_pin(&server.spec);
        if config.pins.get(&route.id) == Some(&pin) {
            return None;
        }
        Some(format!(
            "route_rule {} is suspended: it sends auth_scope {} to downstream_server {}, which is run by an admin and changed after the route was made; nothing is released through it until its owner confirms the server as it is now (mcplexerctl route confirm {})",
            route.id, route.auth_scope_id, route.downstream_server_id, route.id
        ))
    }

    /// Checks, at release, the route the proxy names (DESIGN §2, §5): it
    /// exists and the caller may follow it (its own or system-wide), it
    /// allows calls, it carries this scope to this server, it matches the
    /// tool (when one is named), a user's scope goes only through the
    /// caller's own route, and the route is not suspended. Refusals name
    /// the rule; a route the caller cannot see is "does not exist".
    ///
    /// mcplexer-proxy always names the rule a call (or a listing) follows.
    /// A release that names none is not on a proxy's behalf: it goes to the
    /// calling process itself, which runs as the scope's owner or a
    /// grantee (checked before), so no route decides where it goes.
    pub fn check_release_route(
        &self,
        caller: &Caller,
        snap: &Snapshot,
        req: &mcplexer_proto::v1::CredentialRequest,
    ) -> Result<()> {
        let rule = &req.route_rule_id;
        if rule.is_empty() {
            return Ok(());
        }
        let config = &snap.config;
        let route = match config.routes.get(rule) {
            Some(r)
                if r.spec.owner.as_ref().and_then(OwnerSpec::uid) == Some(caller.uid())
                    || self.is_system(snap, r.spec.owner.as_ref()) =>
            {
                &r.spec
            }
            _ => return Err(VaultError::not_found("route_rule", rule, "route")),
        };
        let short = crate::model::short;
        let mismatch = |what: String| {
            VaultError::denied(format!(
                "route_rule {rule} {what}; its credential is not released for this request"
            ))
        };
        if route.policy != crate::model::Policy::Allow {
            return Err(mismatch("denies calls".into()));
        }
        if route.auth_scope_id != req.auth_scope_id {
            return Err(mismatch(format!(
                "does not carry auth_scope {}",
                req.auth_scope_id
            )));
        }
        if route.downstream_server_id != req.downstream_server_id {
            return Err(mismatch(format!(
                "does not send to downstream_server {}",
                short(&req.downstream_server_id)
            )));
        }
        if !req.tool.is_empty() {
            let index = self.access_index(snap);
            if !index
                .tools
                .get(rule)
                .is_some_and(|set| set.is_match(&req.tool))
            {
                return Err(mismatch(format!(
                    "does not match tool {:?}",
                    short(&req.tool)
                )));
            }
        }
        let scope_owner = config
            .scopes
            .get(&req.auth_scope_id)
            .and_then(|s| s.spec.owner.as_ref());
        if !self.is_system(snap, scope_owner)
            && route.owner.as_ref().and_then(OwnerSpec::uid) != Some(caller.uid())
        {
            return Err(mismatch(format!(
                "is system-wide, and auth_scope {} is a user's: it goes only through the routes of users allowed to use it",
                req.auth_scope_id
            )));
        }
        if let Some(why) = self.route_suspension(snap, route) {
            return Err(VaultError::FailedPrecondition {
                message: why,
                fix: Some(format!("mcplexerctl route confirm {rule}")),
            });
        }
        Ok(())
    }

    /// Whether a user may build on an object owned by `owner`: its own, or
    /// a system-wide one.
    fn mine_or_system(&self, caller: &Caller, owner: Option<&OwnerSpec>) -> bool {
        let owner = owner.and_then(OwnerSpec::uid);
        owner == Some(caller.uid()) || self.is_system_owner(owner)
    }

    /// The subset of the configuration `caller` may see (DESIGN §2): admins
    /// see all, to administer it; users see what [`Self::followable`] gives.
    pub fn visible(&self, caller: &Caller, snap: &Snapshot) -> ConfigState {
        if caller.is_admin() {
            return (*snap.config).clone();
        }
        self.followable(caller, snap)
    }

    /// The configuration a proxy of `caller` follows, admin or not: the
    /// caller's own scopes and the ones granted to it (with their
    /// providers), and only its own or system-wide servers, workspaces and
    /// routes. Being granted a scope does not bring in its owner's routes or
    /// servers, and being an admin does not bring in a user's: the proxy
    /// runs what it is shown, as the caller, so anything another user wrote
    /// there would run as the caller (for an admin, a user's command would
    /// run with the admin's rights). A route is shown only with its server
    /// and workspace, so the proxy never holds a route it cannot follow.
    pub fn followable(&self, caller: &Caller, snap: &Snapshot) -> ConfigState {
        let config = &snap.config;
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

/// A route's tool globs, matched as the proxy matches them.
fn tool_set(globs: &[String]) -> globset::GlobSet {
    let mut set = globset::GlobSetBuilder::new();
    for glob in globs {
        if let Ok(glob) = globset::GlobBuilder::new(glob)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
        {
            set.add(glob);
        }
    }
    set.build().unwrap_or_else(|_| globset::GlobSet::empty())
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
