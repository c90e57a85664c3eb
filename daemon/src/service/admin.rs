//! The Admin service (mcplexerctl): configuration, secrets, audit, identity.

use std::pin::Pin;

use mcplexer_proto::v1 as pb;
use pb::admin_server::Admin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{Shared, SharedRef};
use crate::authz::Caller;
use crate::error::{Result, VaultError};
use crate::limits::PARSE_DEADLINE;
use crate::model::{
    self, ConfigState, Document, Obj, ProviderSpec, RouteSpec, ScopeSpec, ServerSpec,
    WorkspaceSpec, normalize_all, normalize_one,
};
use crate::ops::{self, Object};
use crate::store::{AuditFilter, WriteCtx};

/// Records read per page when an audit tail that fell behind catches up.
const CATCH_UP_PAGE: u32 = 10_000;

/// The Admin service.
pub struct AdminService(pub SharedRef);

type Reply<T> = std::result::Result<Response<T>, Status>;

impl AdminService {
    /// A scope as the API shows it, with its OAuth status.
    fn scope_p(&self, o: &Obj<ScopeSpec>, s: &ConfigState) -> pb::AuthScope {
        let mut scope = model::scope_to_proto(o, s);
        if o.spec.kind == model::ScopeType::Oauth2 {
            scope.status = super::auth::scope_status(&self.0.tokens, &o.spec);
        }
        scope
    }

    /// Fills a provider's unset endpoints, client authentication and PKCE
    /// from its issuer's metadata (RFC 8414 / OpenID discovery); what the
    /// request sets wins. Only when endpoints are missing.
    async fn discover(&self, mut spec: ProviderSpec) -> std::result::Result<ProviderSpec, String> {
        if !spec.auth_url.is_empty() && !spec.token_url.is_empty() {
            return Ok(spec);
        }
        let metadata = self.0.tokens.http().discover(&spec.issuer).await?;
        for (field, value) in [
            (&mut spec.auth_url, metadata.authorization_endpoint),
            (&mut spec.token_url, metadata.token_endpoint),
            (
                &mut spec.device_auth_url,
                metadata.device_authorization_endpoint,
            ),
            (&mut spec.revocation_url, metadata.revocation_endpoint),
        ] {
            if field.is_empty() {
                *field = value;
            }
        }
        let methods = &metadata.token_endpoint_auth_methods_supported;
        if spec.client_auth.is_none()
            && !methods.is_empty()
            && !methods.iter().any(|m| m == "client_secret_basic")
            && methods.iter().any(|m| m == "client_secret_post")
        {
            spec.client_auth = Some(model::ClientAuth::ClientSecretPost);
        }
        if spec.use_pkce.is_none()
            && let Some(pkce) = &metadata.code_challenge_methods_supported
        {
            spec.use_pkce = Some(pkce.iter().any(|m| m == "S256"));
        }
        Ok(spec)
    }

    fn visible(&self, caller: &Caller) -> ConfigState {
        self.0.authz.visible(caller, &self.0.store.snapshot())
    }

    fn get<T: Object, P>(
        &self,
        caller: &Caller,
        id: &str,
        to_proto: impl Fn(&Obj<T>, &ConfigState) -> P,
    ) -> Result<P> {
        let state = self.visible(caller);
        T::map(&state)
            .get(id)
            .map(|o| to_proto(o, &state))
            .ok_or_else(|| VaultError::not_found(T::KIND.name(), id, T::KIND.noun()))
    }

    fn list<T: Object, P>(
        &self,
        caller: &Caller,
        to_proto: impl Fn(&Obj<T>, &ConfigState) -> P,
    ) -> Vec<P> {
        let state = self.visible(caller);
        T::map(&state)
            .values()
            .map(|o| to_proto(o, &state))
            .collect()
    }

    async fn create<T: Object, P>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        spec: std::result::Result<T, String>,
        to_proto: impl Fn(&Obj<T>, &ConfigState) -> P,
    ) -> Result<P> {
        let id = self.create_inner(caller, rpc, spec).await?;
        self.get(caller, &id, to_proto)
    }

    /// Validates and creates `spec`; every outcome is audited.
    async fn create_inner<T: Object>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        spec: std::result::Result<T, String>,
    ) -> Result<String> {
        let prepared = (|| {
            let mut spec = spec.map_err(VaultError::invalid)?;
            normalize_one(&mut spec, Some(caller.uid())).map_err(VaultError::invalid)?;
            ops::check_owner(caller, &spec)?;
            self.0
                .authz
                .check_admin_owner(caller, T::KIND, spec.id(), spec.owner())?;
            if let Some(route) = (&spec as &dyn std::any::Any).downcast_ref::<RouteSpec>() {
                self.0
                    .authz
                    .check_route_scope(&self.0.store.snapshot(), None, route)?;
            }
            self.check_references(caller, std::iter::once(&spec), None)?;
            Ok(spec)
        })();
        let spec = match prepared {
            Ok(spec) => spec,
            Err(err) => {
                let refused = Err(err);
                self.audit_refused(caller, rpc, &refused, true).await;
                return refused;
            }
        };
        let owned_caller = caller.clone();
        let spec = self
            .0
            .mutate(caller, rpc, move |ctx| {
                ops::create(ctx, &owned_caller, spec)
            })
            .await?;
        Ok(spec.id().to_owned())
    }

    /// Refuses a user's objects that name what the user may not build on
    /// (`Authorizer::check_references`); `doc` is the document they come
    /// in, if any.
    fn check_references<'a, T: Object>(
        &self,
        caller: &Caller,
        specs: impl Iterator<Item = &'a T>,
        doc: Option<&Document>,
    ) -> Result<()> {
        if caller.is_admin() {
            return Ok(());
        }
        let snap = self.0.store.snapshot();
        for spec in specs {
            self.0.authz.check_references(
                caller,
                &snap,
                doc,
                (T::KIND, spec.id()),
                &spec.references(),
            )?;
        }
        Ok(())
    }

    /// Audits a request refused before it reached the store. NOT_FOUND at
    /// that point means the caller named an object it may not see: a
    /// denial, answered as NOT_FOUND so that it reveals nothing.
    async fn audit_refused<T>(
        &self,
        caller: &Caller,
        rpc: &str,
        refused: &Result<T>,
        mutation: bool,
    ) {
        match refused {
            Err(err @ VaultError::NotFound { .. }) => {
                self.0
                    .audit_admin(&caller.peer, rpc, "denied", &err.to_string())
                    .await;
            }
            _ => self.0.audit_outcome(caller, rpc, refused, mutation).await,
        }
    }

    /// Checks what a new provider's name, owner and other fields allow
    /// before its issuer is asked for the rest: a request the vault would
    /// refuse makes no outbound request. The endpoints discovery would fill
    /// stand in as the issuer itself, which is checked like them.
    fn check_before_discovery(&self, caller: &Caller, spec: &ProviderSpec) -> Result<()> {
        let mut trial = spec.clone();
        for endpoint in [&mut trial.auth_url, &mut trial.token_url] {
            if endpoint.is_empty() {
                endpoint.clone_from(&spec.issuer);
            }
        }
        normalize_one(&mut trial, Some(caller.uid())).map_err(VaultError::invalid)?;
        ops::check_owner(caller, &trial)
    }

    /// Answers NOT_FOUND, exactly as for a missing object, when a user acts
    /// on an object it may not see (refusals must not reveal existence); the
    /// attempt is audited as denied.
    async fn require_visible<T: Object>(&self, caller: &Caller, rpc: &str, id: &str) -> Result<()> {
        if caller.is_admin() || T::map(&self.visible(caller)).contains_key(id) {
            return Ok(());
        }
        let err = VaultError::not_found(T::KIND.name(), id, T::KIND.noun());
        self.0
            .audit_admin(&caller.peer, rpc, "denied", &err.to_string())
            .await;
        Err(err)
    }

    async fn delete<T: Object>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        id: String,
    ) -> Result<pb::DeleteResponse> {
        let owned_caller = caller.clone();
        self.require_visible::<T>(caller, rpc, &id).await?;
        self.0
            .mutate(caller, rpc, move |ctx| {
                ops::delete::<T>(ctx, &owned_caller, &id)
            })
            .await
            .map(|()| pb::DeleteResponse {})
    }
}

fn provider_p(o: &Obj<ProviderSpec>, s: &ConfigState) -> pb::OAuthProvider {
    model::provider_to_proto(o, s)
}
fn server_p(o: &Obj<ServerSpec>, _: &ConfigState) -> pb::DownstreamServer {
    model::server_to_proto(o)
}
fn workspace_p(o: &Obj<WorkspaceSpec>, _: &ConfigState) -> pb::Workspace {
    model::workspace_to_proto(o)
}
impl AdminService {
    /// A route as the API shows it, with its suspension if it has one.
    fn route_p(&self) -> impl Fn(&Obj<RouteSpec>, &ConfigState) -> pb::RouteRule + '_ {
        let snap = self.0.store.snapshot();
        move |o, _| {
            let mut route = model::route_to_proto(o);
            route.suspended = self
                .0
                .authz
                .route_suspension(&snap, &o.spec)
                .unwrap_or_default();
            route
        }
    }
}

/// Parses and normalises an apply document off the runtime, within the
/// document limits and the parse deadline; problems name line and column
/// (syntax, unknown fields, the limit hit) or the object (values).
async fn parse_document(shared: &Shared, yaml: String, caller: &Caller) -> Result<Document> {
    let uid = caller.uid();
    shared
        .work
        .run(uid, "parsing the document", PARSE_DEADLINE, move || {
            let mut doc: Document = model::yaml::from_str(&yaml, model::yaml::Limits::DOCUMENT)
                .map_err(|e| VaultError::invalid(format!("invalid YAML document: {e}")))?;
            let problems = normalize_all(&mut doc, Some(uid));
            if !problems.is_empty() {
                return Err(VaultError::invalid(problems.join("\n")));
            }
            Ok(doc)
        })
        .await?
}

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        let caller = self.0.authorize(&request, "Admin/Status").await?;
        let state = self.visible(&caller);
        let audit_records = if caller.is_admin() {
            self.0.journal.flush().await?;
            self.0.store.count_audit().await?
        } else {
            0
        };
        let info = &self.0.info;
        let keyring = self.0.store.keyring();
        let all_disabled = self.0.store.read(crate::ops::config_file::read).await?;
        let disabled = all_disabled
            .into_iter()
            .filter(|d| caller.is_admin() || d.owner == Some(caller.uid()))
            .map(|d| pb::DisabledObject {
                kind: d.kind.name().into(),
                id: d.id,
                owner: d.owner,
                reason: d.reason,
                disabled_ms: d.disabled_ms,
            })
            .collect();
        ok(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: info.mode.into(),
            caller_uid: caller.uid(),
            caller_pid: caller.peer.pid,
            caller_role: caller.role.as_str().into(),
            recipient: keyring.recipient(),
            sealed: keyring.is_sealed(),
            identity_sealed: self
                .0
                .identity_sealed
                .load(std::sync::atomic::Ordering::SeqCst),
            memory_lock: crate::vault::locked::memory_lock().as_str().into(),
            disabled,
            scopes: state.scopes.len() as u64,
            providers: state.providers.len() as u64,
            servers: state.servers.len() as u64,
            workspaces: state.workspaces.len() as u64,
            routes: state.routes.len() as u64,
            audit_records,
            audit_retention_days: info.audit_retention_days,
            uptime_sec: info.started.elapsed().as_secs(),
            state_dir: if caller.is_admin() {
                info.state_dir.display().to_string()
            } else {
                String::new()
            },
        })
    }

    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Reply<pb::ApplyResponse> {
        let caller = self.0.authorize(&request, "Admin/Apply").await?;
        let req = request.into_inner();
        let dry_run = req.dry_run;
        let parsed = parse_document(&self.0, req.yaml, &caller).await;
        let prepared = parsed.and_then(|doc| {
            for_each_owner_check(&caller, &doc)?;
            self.0
                .authz
                .check_document(&caller, &self.0.store.snapshot(), &doc)?;
            self.check_references(&caller, doc.auth_scopes.iter(), Some(&doc))?;
            self.check_references(&caller, doc.route_rules.iter(), Some(&doc))?;
            Ok(doc)
        });
        let result = match prepared {
            Err(err) => {
                let refused = Err(err);
                self.audit_refused(&caller, "Admin/Apply", &refused, !dry_run)
                    .await;
                refused
            }
            Ok(doc) => {
                let c = caller.clone();
                let daemon_uid = self.0.authz.daemon_uid();
                let apply = move |ctx: &mut WriteCtx<'_>| {
                    ops::apply(
                        ctx,
                        &c,
                        ops::Applier::Uid(c.uid()),
                        daemon_uid,
                        &doc,
                        dry_run,
                    )
                };
                if dry_run {
                    self.0.store.write(apply).await
                } else {
                    self.0.mutate(&caller, "Admin/Apply", apply).await
                }
            }
        };
        let changes = result?;
        if !dry_run && changes.iter().any(|c| c.material_deleted) {
            for change in changes.iter().filter(|c| c.material_deleted) {
                self.0.tokens.committed(&change.id, None);
            }
            self.0.tokens.grants_changed();
        }
        let changes = changes
            .into_iter()
            .map(|c| pb::Change {
                kind: c.kind.name().into(),
                id: c.id,
                action: c.action.into(),
                fields: c.fields,
            })
            .collect();
        ok(pb::ApplyResponse { changes, dry_run })
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Reply<pb::ExportResponse> {
        let caller = self.0.authorize(&request, "Admin/Export").await?;
        let doc = ops::export(&self.visible(&caller));
        let yaml = yaml_serde::to_string(&doc)
            .map_err(|e| VaultError::invalid(format!("cannot write YAML: {e}")))?;
        ok(pb::ExportResponse { yaml })
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Reply<pb::ListScopesResponse> {
        let caller = self.0.authorize(&request, "Admin/ListScopes").await?;
        ok(pb::ListScopesResponse {
            scopes: self.list(&caller, |o, s| self.scope_p(o, s)),
        })
    }

    async fn get_scope(&self, request: Request<pb::GetRequest>) -> Reply<pb::AuthScope> {
        let caller = self.0.authorize(&request, "Admin/GetScope").await?;
        ok(self.get(&caller, &request.into_inner().id, |o, s| self.scope_p(o, s))?)
    }

    async fn create_scope(&self, request: Request<pb::AuthScope>) -> Reply<pb::AuthScope> {
        let caller = self.0.authorize(&request, "Admin/CreateScope").await?;
        let spec = ScopeSpec::from_proto(request.into_inner());
        ok(self
            .create(&caller, "Admin/CreateScope", spec, |o, s| {
                self.scope_p(o, s)
            })
            .await?)
    }

    async fn delete_scope(&self, request: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let caller = self.0.authorize(&request, "Admin/DeleteScope").await?;
        ok(self
            .delete::<ScopeSpec>(&caller, "Admin/DeleteScope", request.into_inner().id)
            .await?)
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Reply<pb::SetSecretResponse> {
        let caller = self.0.authorize(&request, "Admin/SetSecret").await?;
        let mut req = request.into_inner();
        // The value moves (no copy) into a zeroizing buffer at once. The
        // transport's receive buffer is outside our reach; it is released
        // once the request is decoded.
        let value = Zeroizing::new(std::mem::take(&mut req.value));
        let c = caller.clone();
        let (scope, key) = (req.scope_id, req.key);
        self.require_visible::<ScopeSpec>(&caller, "Admin/SetSecret", &scope)
            .await?;
        let version = self
            .0
            .mutate(&caller, "Admin/SetSecret", move |ctx| {
                ops::set_secret(ctx, &c, &scope, key, value)
            })
            .await?;
        ok(pb::SetSecretResponse { version })
    }

    async fn list_secrets(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Reply<pb::ListSecretsResponse> {
        let caller = self.0.authorize(&request, "Admin/ListSecrets").await?;
        let id = request.into_inner().id;
        let state = self.visible(&caller);
        if !state.scopes.contains_key(&id) {
            return Err(VaultError::not_found("auth_scope", &id, "scope").into());
        }
        let keys = state
            .secrets
            .get(&id)
            .map(|m| m.keys.clone())
            .unwrap_or_default();
        ok(pb::ListSecretsResponse { scope_id: id, keys })
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Reply<pb::DeleteResponse> {
        let caller = self.0.authorize(&request, "Admin/DeleteSecret").await?;
        let req = request.into_inner();
        let c = caller.clone();
        self.require_visible::<ScopeSpec>(&caller, "Admin/DeleteSecret", &req.scope_id)
            .await?;
        self.0
            .mutate(&caller, "Admin/DeleteSecret", move |ctx| {
                ops::delete_secret(ctx, &c, &req.scope_id, &req.key)
            })
            .await?;
        ok(pb::DeleteResponse {})
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Reply<pb::ListProvidersResponse> {
        let caller = self.0.authorize(&request, "Admin/ListProviders").await?;
        ok(pb::ListProvidersResponse {
            providers: self.list(&caller, provider_p),
        })
    }

    async fn list_provider_templates(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Reply<pb::ListProviderTemplatesResponse> {
        self.0
            .authorize(&request, "Admin/ListProviderTemplates")
            .await?;
        ok(pb::ListProviderTemplatesResponse {
            templates: crate::oauth::templates::TEMPLATES
                .iter()
                .map(crate::oauth::templates::Template::to_proto)
                .collect(),
        })
    }

    async fn get_provider(&self, request: Request<pb::GetRequest>) -> Reply<pb::OAuthProvider> {
        let caller = self.0.authorize(&request, "Admin/GetProvider").await?;
        ok(self.get(&caller, &request.into_inner().id, provider_p)?)
    }

    async fn create_provider(
        &self,
        request: Request<pb::OAuthProvider>,
    ) -> Reply<pb::OAuthProvider> {
        let caller = self.0.authorize(&request, "Admin/CreateProvider").await?;
        let spec = match ProviderSpec::from_proto(request.into_inner()) {
            Ok(spec) if spec.template.is_empty() && !spec.issuer.is_empty() => {
                let checked = self.check_before_discovery(&caller, &spec);
                if checked.is_err() {
                    self.audit_refused(&caller, "Admin/CreateProvider", &checked, true)
                        .await;
                    checked?;
                }
                self.discover(spec).await
            }
            other => other,
        };
        ok(self
            .create(&caller, "Admin/CreateProvider", spec, provider_p)
            .await?)
    }

    async fn delete_provider(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Reply<pb::DeleteResponse> {
        let caller = self.0.authorize(&request, "Admin/DeleteProvider").await?;
        ok(self
            .delete::<ProviderSpec>(&caller, "Admin/DeleteProvider", request.into_inner().id)
            .await?)
    }

    async fn set_provider_secret(
        &self,
        request: Request<pb::SetProviderSecretRequest>,
    ) -> Reply<pb::SetSecretResponse> {
        let caller = self
            .0
            .authorize(&request, "Admin/SetProviderSecret")
            .await?;
        let mut req = request.into_inner();
        let secret = Zeroizing::new(std::mem::take(&mut req.client_secret));
        let c = caller.clone();
        let id = req.provider_id;
        self.require_visible::<ProviderSpec>(&caller, "Admin/SetProviderSecret", &id)
            .await?;
        self.0
            .mutate(&caller, "Admin/SetProviderSecret", move |ctx| {
                ops::set_provider_secret(ctx, &c, &id, &secret)
            })
            .await?;
        ok(pb::SetSecretResponse { version: 0 })
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Reply<pb::ListServersResponse> {
        let caller = self.0.authorize(&request, "Admin/ListServers").await?;
        ok(pb::ListServersResponse {
            servers: self.list(&caller, server_p),
        })
    }

    async fn get_server(&self, request: Request<pb::GetRequest>) -> Reply<pb::DownstreamServer> {
        let caller = self.0.authorize(&request, "Admin/GetServer").await?;
        ok(self.get(&caller, &request.into_inner().id, server_p)?)
    }

    async fn create_server(
        &self,
        request: Request<pb::DownstreamServer>,
    ) -> Reply<pb::DownstreamServer> {
        let caller = self.0.authorize(&request, "Admin/CreateServer").await?;
        let spec = ServerSpec::from_proto(request.into_inner());
        ok(self
            .create(&caller, "Admin/CreateServer", spec, server_p)
            .await?)
    }

    async fn delete_server(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Reply<pb::DeleteResponse> {
        let caller = self.0.authorize(&request, "Admin/DeleteServer").await?;
        ok(self
            .delete::<ServerSpec>(&caller, "Admin/DeleteServer", request.into_inner().id)
            .await?)
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Reply<pb::ListWorkspacesResponse> {
        let caller = self.0.authorize(&request, "Admin/ListWorkspaces").await?;
        ok(pb::ListWorkspacesResponse {
            workspaces: self.list(&caller, workspace_p),
        })
    }

    async fn get_workspace(&self, request: Request<pb::GetRequest>) -> Reply<pb::Workspace> {
        let caller = self.0.authorize(&request, "Admin/GetWorkspace").await?;
        ok(self.get(&caller, &request.into_inner().id, workspace_p)?)
    }

    async fn create_workspace(&self, request: Request<pb::Workspace>) -> Reply<pb::Workspace> {
        let caller = self.0.authorize(&request, "Admin/CreateWorkspace").await?;
        let spec = WorkspaceSpec::from_proto(request.into_inner());
        ok(self
            .create(&caller, "Admin/CreateWorkspace", spec, workspace_p)
            .await?)
    }

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Reply<pb::DeleteResponse> {
        let caller = self.0.authorize(&request, "Admin/DeleteWorkspace").await?;
        ok(self
            .delete::<WorkspaceSpec>(&caller, "Admin/DeleteWorkspace", request.into_inner().id)
            .await?)
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Reply<pb::ListRoutesResponse> {
        let caller = self.0.authorize(&request, "Admin/ListRoutes").await?;
        ok(pb::ListRoutesResponse {
            routes: self.list(&caller, self.route_p()),
        })
    }

    async fn get_route(&self, request: Request<pb::GetRequest>) -> Reply<pb::RouteRule> {
        let caller = self.0.authorize(&request, "Admin/GetRoute").await?;
        ok(self.get(&caller, &request.into_inner().id, self.route_p())?)
    }

    async fn create_route(&self, request: Request<pb::RouteRule>) -> Reply<pb::RouteRule> {
        let caller = self.0.authorize(&request, "Admin/CreateRoute").await?;
        let spec = RouteSpec::from_proto(request.into_inner());
        let id = self
            .create_inner(&caller, "Admin/CreateRoute", spec)
            .await?;
        ok(self.get(&caller, &id, self.route_p())?)
    }

    async fn confirm_route(&self, request: Request<pb::GetRequest>) -> Reply<pb::RouteRule> {
        let caller = self.0.authorize(&request, "Admin/ConfirmRoute").await?;
        let id = request.into_inner().id;
        self.require_visible::<RouteSpec>(&caller, "Admin/ConfirmRoute", &id)
            .await?;
        let owned_caller = caller.clone();
        let route_id = id.clone();
        self.0
            .mutate(&caller, "Admin/ConfirmRoute", move |ctx| {
                ops::confirm_route(ctx, &owned_caller, &route_id)
            })
            .await?;
        ok(self.get(&caller, &id, self.route_p())?)
    }

    async fn delete_route(&self, request: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let caller = self.0.authorize(&request, "Admin/DeleteRoute").await?;
        ok(self
            .delete::<RouteSpec>(&caller, "Admin/DeleteRoute", request.into_inner().id)
            .await?)
    }

    async fn query_audit(&self, request: Request<pb::AuditQuery>) -> Reply<pb::AuditQueryResponse> {
        let caller = self.0.authorize(&request, "Admin/QueryAudit").await?;
        let filter = audit_filter(&caller, request.into_inner())?;
        self.0.journal.flush().await?;
        let (records, truncated) = self.0.store.query_audit(filter).await?;
        ok(pb::AuditQueryResponse { records, truncated })
    }

    type FollowAuditStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::AuditRecord, Status>> + Send>>;

    async fn follow_audit(
        &self,
        request: Request<pb::AuditQuery>,
    ) -> Reply<Self::FollowAuditStream> {
        let caller = self.0.authorize(&request, "Admin/FollowAudit").await?;
        let filter = audit_filter(&caller, request.into_inner())?;
        // The place first: a user past its share costs no query.
        let ticket = self.0.streams.reserve(&caller, "audit tail")?;
        let store = self.0.store.clone();
        // Subscribe before the first query so nothing falls between them.
        let mut feed = store.audit_feed();
        self.0.journal.flush().await?;
        let (backlog, _older_left_out) = store.query_audit(filter.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = 0;
            for record in backlog {
                last = record.id;
                if tx.send(Ok(record)).await.is_err() {
                    return;
                }
            }
            loop {
                let record = match feed.recv().await {
                    Ok(record) => record,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live feed: catch up from the log,
                        // oldest first, one answer's worth at a time, until
                        // a page comes back short.
                        let mut catch_up = filter.clone();
                        catch_up.oldest = true;
                        catch_up.limit = CATCH_UP_PAGE;
                        loop {
                            catch_up.after_id = Some(last);
                            let (records, truncated) =
                                match store.query_audit(catch_up.clone()).await {
                                    Ok(page) => page,
                                    Err(err) => {
                                        let _ = tx.send(Err(err.into())).await;
                                        return;
                                    }
                                };
                            let more = !records.is_empty()
                                && (truncated || records.len() == CATCH_UP_PAGE as usize);
                            for record in records {
                                last = record.id;
                                if tx.send(Ok(record)).await.is_err() {
                                    return;
                                }
                            }
                            if !more {
                                break;
                            }
                        }
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if record.id <= last || !filter.matches(&record) {
                    continue;
                }
                last = record.id;
                if tx.send(Ok(record)).await.is_err() {
                    return;
                }
            }
        });
        let stream = self
            .0
            .streams
            .wrap(ticket, tokio_stream::wrappers::ReceiverStream::new(rx));
        ok(Box::pin(stream))
    }

    async fn rotate_identity(
        &self,
        request: Request<pb::RotateIdentityRequest>,
    ) -> Reply<pb::RotateIdentityResponse> {
        let rpc = "Admin/RotateIdentity";
        let caller = self.0.authorize(&request, rpc).await?;
        let passphrase = Zeroizing::new(request.into_inner().passphrase);
        // The success is recorded in the transaction that re-encrypts.
        let record = super::admin_record(&caller.peer, rpc, "success", "");
        let result = crate::rotate::rotate(&self.0, passphrase, record).await;
        if result.is_err() {
            self.0.audit_outcome(&caller, rpc, &result, true).await;
        }
        let (recipient, reencrypted) = result?;
        ok(pb::RotateIdentityResponse {
            recipient,
            reencrypted,
        })
    }

    async fn unlock(&self, request: Request<pb::UnlockRequest>) -> Reply<pb::UnlockResponse> {
        let rpc = "Admin/Unlock";
        let caller = self.0.authorize(&request, rpc).await?;
        let passphrase = Zeroizing::new(request.into_inner().passphrase);
        // Every attempt is audited: a success in the transaction that
        // swaps the keyring in, a wrong passphrase as denied.
        let record = super::admin_record(&caller.peer, rpc, "success", "");
        let result = crate::seal::unlock(&self.0, passphrase, record).await;
        if result.is_err() {
            self.0.audit_outcome(&caller, rpc, &result, true).await;
        }
        let (was_sealed, recipient) = result?;
        ok(pb::UnlockResponse {
            was_sealed,
            recipient,
        })
    }

    async fn seal_identity(
        &self,
        request: Request<pb::SealIdentityRequest>,
    ) -> Reply<pb::SealIdentityResponse> {
        let rpc = "Admin/SealIdentity";
        let caller = self.0.authorize(&request, rpc).await?;
        let passphrase = Zeroizing::new(request.into_inner().passphrase);
        // The success is recorded in the transaction that re-encrypts.
        let record = super::admin_record(&caller.peer, rpc, "success", "");
        let result = crate::seal::seal(&self.0, passphrase, record).await;
        if result.is_err() {
            self.0.audit_outcome(&caller, rpc, &result, true).await;
        }
        let (path, recipient, reencrypted) = result?;
        ok(pb::SealIdentityResponse {
            path: path.display().to_string(),
            recipient,
            reencrypted,
        })
    }
}

fn for_each_owner_check(caller: &Caller, doc: &Document) -> Result<()> {
    doc.auth_scopes
        .iter()
        .try_for_each(|s| ops::check_owner(caller, s))?;
    doc.oauth_providers
        .iter()
        .try_for_each(|s| ops::check_owner(caller, s))?;
    doc.downstream_servers
        .iter()
        .try_for_each(|s| ops::check_owner(caller, s))?;
    doc.workspaces
        .iter()
        .try_for_each(|s| ops::check_owner(caller, s))?;
    doc.route_rules
        .iter()
        .try_for_each(|s| ops::check_owner(caller, s))
}

/// A query's filter; users only ever see their own records.
fn audit_filter(caller: &Caller, q: pb::AuditQuery) -> Result<AuditFilter> {
    for (field, text) in [
        ("tool", &q.tool),
        ("auth_scope_id", &q.auth_scope_id),
        ("status", &q.status),
        ("kind", &q.kind),
    ] {
        if text.len() > crate::limits::AUDIT_NAME {
            return Err(VaultError::invalid(format!(
                "the audit query's {field} is {} bytes long; the limit is {}",
                text.len(),
                crate::limits::AUDIT_NAME
            )));
        }
    }
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(AuditFilter {
        tool: non_empty(q.tool),
        since_ms: (q.since_ms > 0).then_some(q.since_ms),
        after_id: (q.after_id > 0).then_some(q.after_id),
        before_id: (q.before_id > 0).then_some(q.before_id),
        scope_id: non_empty(q.auth_scope_id),
        status: non_empty(q.status),
        kind: non_empty(q.kind),
        uid: if caller.is_admin() {
            q.uid
        } else {
            Some(caller.uid())
        },
        limit: q.limit,
        oldest: false,
    })
}
