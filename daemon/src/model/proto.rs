//! Conversions between the model and the `mcplexer.v1` messages.

use mcplexer_proto::v1 as pb;

use super::{
    ConfigState, Grants, Obj, OwnerSpec, Policy, ProviderSpec, RestartPolicy, RouteSpec, ScopeSpec,
    ScopeType, ServerSpec, Transport, WorkspaceSpec,
};

fn owner(o: &Option<OwnerSpec>) -> Option<u32> {
    o.as_ref().and_then(OwnerSpec::uid)
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    field: &str,
    value: &str,
    allowed: &str,
) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .map_err(|_| format!("{field} {value:?} is not one of {allowed}"))
}

fn enum_str<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Parses a scope type (`env`, `header`, `oauth2`).
pub fn parse_scope_type(s: &str) -> Result<ScopeType, String> {
    parse_enum("type", s, "env, header, oauth2")
}

/// Parses a transport (`stdio`, `http`).
pub fn parse_transport(s: &str) -> Result<Transport, String> {
    parse_enum("transport", s, "stdio, http")
}

fn parse_policy(field: &str, s: &str, default: Policy) -> Result<Policy, String> {
    if s.is_empty() {
        Ok(default)
    } else {
        parse_enum(field, s, "allow, deny")
    }
}

impl ScopeSpec {
    /// From a create request.
    pub fn from_proto(p: pb::AuthScope) -> Result<Self, String> {
        Ok(Self {
            id: p.id,
            name: p.name,
            kind: parse_scope_type(&p.r#type)?,
            redaction_hints: p.redaction_hints,
            oauth_provider_id: p.oauth_provider_id,
            token_env_var: p.token_env_var,
            owner: p.owner.map(OwnerSpec::Uid),
            grants: p
                .grants
                .map(|g| Grants {
                    users: g.users,
                    groups: g.groups,
                })
                .unwrap_or_default(),
        })
    }
}

impl ProviderSpec {
    /// From a create request.
    pub fn from_proto(p: pb::OAuthProvider) -> Result<Self, String> {
        Ok(Self {
            id: p.id,
            name: p.name,
            template: p.template,
            auth_url: p.auth_url,
            token_url: p.token_url,
            device_auth_url: p.device_auth_url,
            revocation_url: p.revocation_url,
            scopes: p.scopes,
            client_id: p.client_id,
            use_pkce: p.use_pkce,
            redirect_uri: p.redirect_uri,
            extra_auth_params: p.extra_auth_params.into_iter().collect(),
            issuer: p.issuer,
            scope_separator: p.scope_separator,
            client_auth: match p.client_auth.as_str() {
                "" => None,
                other => Some(parse_enum(
                    "client_auth",
                    other,
                    "client_secret_basic, client_secret_post",
                )?),
            },
            token_format: match p.token_format.as_str() {
                "" => None,
                other => Some(parse_enum("token_format", other, "form, json")?),
            },
            token_headers: p.token_headers.into_iter().collect(),
            template_params: p.template_params.into_iter().collect(),
            owner: p.owner.map(OwnerSpec::Uid),
        })
    }
}

impl ServerSpec {
    /// From a create request.
    pub fn from_proto(p: pb::DownstreamServer) -> Result<Self, String> {
        Ok(Self {
            id: p.id,
            name: p.name,
            transport: parse_transport(&p.transport)?,
            command: p.command,
            args: p.args,
            env: p.env.into_iter().collect(),
            working_dir: p.working_dir,
            url: p.url,
            tool_namespace: p.tool_namespace,
            unprefixed: p.unprefixed,
            idle_timeout_sec: p.idle_timeout_sec,
            call_timeout_sec: p.call_timeout_sec,
            restart_policy: if p.restart_policy.is_empty() {
                RestartPolicy::default()
            } else {
                parse_enum(
                    "restart_policy",
                    &p.restart_policy,
                    "never, on-failure, always",
                )?
            },
            owner: p.owner.map(OwnerSpec::Uid),
        })
    }
}

impl WorkspaceSpec {
    /// From a create request.
    pub fn from_proto(p: pb::Workspace) -> Result<Self, String> {
        Ok(Self {
            id: p.id,
            name: p.name,
            root_path: p.root_path,
            default_policy: parse_policy("default_policy", &p.default_policy, Policy::Deny)?,
            owner: p.owner.map(OwnerSpec::Uid),
        })
    }
}

impl RouteSpec {
    /// From a create request.
    pub fn from_proto(p: pb::RouteRule) -> Result<Self, String> {
        Ok(Self {
            id: p.id,
            name: p.name,
            priority: p.priority,
            workspace_id: p.workspace_id,
            tool_match: p.tool_match,
            downstream_server_id: p.downstream_server_id,
            auth_scope_id: p.auth_scope_id,
            policy: parse_policy("policy", &p.policy, Policy::Allow)?,
            log_full: p.log_full,
            owner: p.owner.map(OwnerSpec::Uid),
        })
    }
}

/// The scope as the API shows it: metadata, keys and version, never values.
pub fn scope_to_proto(obj: &Obj<ScopeSpec>, state: &ConfigState) -> pb::AuthScope {
    let s = &obj.spec;
    let meta = state.secrets.get(&s.id);
    pb::AuthScope {
        id: s.id.clone(),
        name: s.name.clone(),
        r#type: enum_str(&s.kind),
        redaction_hints: s.redaction_hints.clone(),
        oauth_provider_id: s.oauth_provider_id.clone(),
        source: obj.source.as_str().into(),
        owner: owner(&s.owner),
        grants: Some(pb::Grants {
            users: s.grants.users.clone(),
            groups: s.grants.groups.clone(),
        }),
        token_env_var: s.token_env_var.clone(),
        status: match s.kind {
            // OAuth flows and tokens arrive with their own RPCs; until a
            // token is stored the scope is unauthorized.
            ScopeType::Oauth2 => "unauthorized".into(),
            _ => String::new(),
        },
        secret_keys: meta.map(|m| m.keys.clone()).unwrap_or_default(),
        version: meta.map_or(0, |m| m.version),
    }
}

/// The provider as the API shows it (no client secret).
pub fn provider_to_proto(obj: &Obj<ProviderSpec>, state: &ConfigState) -> pb::OAuthProvider {
    let p = &obj.spec;
    pb::OAuthProvider {
        id: p.id.clone(),
        name: p.name.clone(),
        template: p.template.clone(),
        auth_url: p.auth_url.clone(),
        token_url: p.token_url.clone(),
        device_auth_url: p.device_auth_url.clone(),
        revocation_url: p.revocation_url.clone(),
        scopes: p.scopes.clone(),
        client_id: p.client_id.clone(),
        use_pkce: p.use_pkce,
        redirect_uri: p.redirect_uri.clone(),
        extra_auth_params: p.extra_auth_params.clone().into_iter().collect(),
        issuer: p.issuer.clone(),
        scope_separator: p.scope_separator.clone(),
        client_auth: p.client_auth.unwrap_or_default().as_str().into(),
        token_format: p.token_format.unwrap_or_default().as_str().into(),
        token_headers: p.token_headers.clone().into_iter().collect(),
        template_params: p.template_params.clone().into_iter().collect(),
        source: obj.source.as_str().into(),
        owner: owner(&p.owner),
        has_client_secret: state.provider_secrets.contains(&p.id),
    }
}

/// The server as the API shows it.
pub fn server_to_proto(obj: &Obj<ServerSpec>) -> pb::DownstreamServer {
    let s = &obj.spec;
    pb::DownstreamServer {
        id: s.id.clone(),
        name: s.name.clone(),
        transport: enum_str(&s.transport),
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone().into_iter().collect(),
        url: s.url.clone(),
        tool_namespace: s.tool_namespace.clone(),
        unprefixed: s.unprefixed,
        idle_timeout_sec: if s.idle_timeout_sec == 0 {
            300
        } else {
            s.idle_timeout_sec
        },
        call_timeout_sec: if s.call_timeout_sec == 0 {
            60
        } else {
            s.call_timeout_sec
        },
        restart_policy: enum_str(&s.restart_policy),
        source: obj.source.as_str().into(),
        owner: owner(&s.owner),
        working_dir: s.working_dir.clone(),
    }
}

/// The workspace as the API shows it.
pub fn workspace_to_proto(obj: &Obj<WorkspaceSpec>) -> pb::Workspace {
    let w = &obj.spec;
    pb::Workspace {
        id: w.id.clone(),
        name: w.name.clone(),
        root_path: w.root_path.clone(),
        default_policy: enum_str(&w.default_policy),
        source: obj.source.as_str().into(),
        owner: owner(&w.owner),
    }
}

/// The route rule as the API shows it.
pub fn route_to_proto(obj: &Obj<RouteSpec>) -> pb::RouteRule {
    let r = &obj.spec;
    pb::RouteRule {
        id: r.id.clone(),
        name: r.name.clone(),
        priority: r.priority,
        workspace_id: super::route_workspace(r).to_owned(),
        tool_match: r.tool_match.clone(),
        downstream_server_id: r.downstream_server_id.clone(),
        auth_scope_id: r.auth_scope_id.clone(),
        policy: enum_str(&r.policy),
        source: obj.source.as_str().into(),
        owner: owner(&r.owner),
        log_full: r.log_full,
        // Set by the caller that knows who is system-wide (the authorizer).
        suspended: String::new(),
    }
}

/// The lowercase name of a serde enum value (`env`, `stdio`, ...).
pub fn enum_name<T: serde::Serialize>(value: &T) -> String {
    enum_str(value)
}
