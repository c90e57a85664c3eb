//! The configuration objects of DESIGN §3 (auth scopes, OAuth providers,
//! downstream servers, workspaces, route rules), as written in YAML documents
//! and stored in the database, and the whole configuration they form.
//!
//! Field names follow the MCPlexer documentation so its YAML examples apply
//! unchanged; additions (owner, grants, token_env_var, ...) are optional.
//! Nothing here holds a secret value: only the keys of stored secrets.

mod proto;

pub use proto::{
    enum_name, parse_scope_type, parse_transport, provider_to_proto, route_to_proto,
    scope_to_proto, server_to_proto, workspace_to_proto,
};
mod validate;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};

pub use validate::{
    Normalize, Problem, check_glob, derive_id, is_env_name, is_header_name, normalize_all,
    normalize_one, short, state_problems, transport_compatible, validate_state,
};

/// The id of the built-in workspace whose root is `/`.
pub const DEFAULT_WORKSPACE: &str = "default";

/// The five kinds of configuration object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `auth_scopes`
    Scope,
    /// `oauth_providers`
    Provider,
    /// `downstream_servers`
    Server,
    /// `workspaces`
    Workspace,
    /// `route_rules`
    Route,
}

impl Kind {
    /// The singular name used in messages and diffs (`auth_scope`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Scope => "auth_scope",
            Self::Provider => "oauth_provider",
            Self::Server => "downstream_server",
            Self::Workspace => "workspace",
            Self::Route => "route_rule",
        }
    }

    /// The mcplexerctl noun (`scope`, `provider`, ...).
    pub fn noun(self) -> &'static str {
        match self {
            Self::Scope => "scope",
            Self::Provider => "provider",
            Self::Server => "server",
            Self::Workspace => "workspace",
            Self::Route => "route",
        }
    }

    /// The storage tag.
    pub fn tag(self) -> &'static str {
        self.name()
    }

    /// Parses a storage tag.
    pub fn from_tag(tag: &str) -> Option<Self> {
        [
            Self::Scope,
            Self::Provider,
            Self::Server,
            Self::Workspace,
            Self::Route,
        ]
        .into_iter()
        .find(|k| k.tag() == tag)
    }
}

/// How an auth scope's values reach a downstream server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeType {
    /// Environment variables of a stdio server.
    #[default]
    Env,
    /// HTTP headers of an http server.
    Header,
    /// An OAuth 2 access token (env var on stdio, bearer header on http).
    Oauth2,
}

/// A downstream server's transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A child process speaking MCP on stdin/stdout.
    #[default]
    Stdio,
    /// A streamable-HTTP MCP endpoint.
    Http,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Route the call.
    #[default]
    Allow,
    /// Refuse the call.
    Deny,
}

/// When the proxy restarts a stdio server that exited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    Never,
    /// When it exited with an error (the default).
    #[default]
    OnFailure,
    /// Whenever it exited.
    Always,
}

/// Where an object came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A YAML document (`apply`, `--config`); pruned when it leaves the file.
    Yaml,
    /// Created by mcplexerctl or the UI; never touched by `apply`.
    Api,
    /// Built into the vault.
    Seed,
}

impl Source {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Yaml => "yaml",
            Self::Api => "api",
            Self::Seed => "seed",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "yaml" => Some(Self::Yaml),
            "api" => Some(Self::Api),
            "seed" => Some(Self::Seed),
            _ => None,
        }
    }
}

/// An owner as written: a uid or a user name. Stored objects always hold a uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OwnerSpec {
    /// A numeric uid.
    Uid(u32),
    /// A user name, resolved when the object is validated.
    Name(String),
}

impl OwnerSpec {
    /// The uid, once resolved.
    pub fn uid(&self) -> Option<u32> {
        match self {
            Self::Uid(uid) => Some(*uid),
            Self::Name(_) => None,
        }
    }
}

/// Who besides the owner may obtain a scope's values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// User names or uids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Group names or gids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Grants {
    /// Whether nobody is granted.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Accepts a string or a list of strings (the seed wrote `tool_match` both ways).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// An auth scope (`auth_scopes`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    /// Derived from `name` when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// `env`, `header` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: ScopeType,
    /// Keys redacted from audited params at any depth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redaction_hints: Vec<String>,
    /// oauth2: the provider.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oauth_provider_id: String,
    /// oauth2 on stdio: the variable receiving the token (default ACCESS_TOKEN).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_env_var: String,
    /// Owning user; defaults to the creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerSpec>,
    /// Users and groups the values are also released to.
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub grants: Grants,
}

/// An OAuth 2 provider (`oauth_providers`). The client secret is stored apart,
/// encrypted, and never appears here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Derived from `name` when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// The built-in template this provider was made from, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
    /// Authorization endpoint (with a template: the template's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_url: String,
    /// Token endpoint (with a template: the template's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_url: String,
    /// Device authorization endpoint (RFC 8628).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_auth_url: String,
    /// Revocation endpoint (RFC 7009).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revocation_url: String,
    /// Scopes requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// OAuth client id (may be set later).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Use PKCE (S256). Unset: the template's choice, else on. Always set
    /// once normalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_pkce: Option<bool>,
    /// Loopback redirect URI the CLI listens on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redirect_uri: String,
    /// Extra authorization parameters (e.g. `access_type: offline`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_auth_params: BTreeMap<String, String>,
    /// (+) The authorization server's issuer identifier: an `iss` in the
    /// authorization response must equal it (RFC 9207).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// (+) What joins `scopes` in requests: a space unless the provider
    /// wants another (Linear: `,`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope_separator: String,
    /// (+) How a client with a secret authenticates to the token endpoint
    /// (unset: the template's, else `client_secret_basic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// (+) The body of token and revocation requests (unset: the
    /// template's, else `form`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_format: Option<TokenFormat>,
    /// (+) Non-secret headers for the token, device and revocation
    /// endpoints (Notion: `Notion-Version`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub token_headers: BTreeMap<String, String>,
    /// (+) Values for a template's placeholders: `base_url` (GitLab,
    /// GitHub Enterprise), `tenant` (Microsoft).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template_params: BTreeMap<String, String>,
    /// Owning user; defaults to the creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerSpec>,
}

/// How a confidential client authenticates to the token endpoint (a
/// client without a stored secret sends only its `client_id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost,
}

impl ClientAuth {
    /// Its configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }
}

/// The body of a token or revocation request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// A JSON object (Notion).
    Json,
}

impl TokenFormat {
    /// Its configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Form => "form",
            Self::Json => "json",
        }
    }
}

/// A downstream MCP server (`downstream_servers`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Derived from `name` when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// `stdio` or `http`.
    pub transport: Transport,
    /// stdio: the program (no shell).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// stdio: its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// stdio: non-secret environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// stdio: the directory it runs in (absolute, or `~/…` in the proxy
    /// user's home); empty = that home, never the client's directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// http: the endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Prefix of the exposed tools (`<namespace>__<tool>`); defaults to the id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool_namespace: String,
    /// Expose its tools and prompts under their own names, without the
    /// namespace (for clients with fixed names). A workspace mounts at most
    /// one such server.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unprefixed: bool,
    /// Seconds an unused stdio server is kept (0 = default 300).
    #[serde(default)]
    pub idle_timeout_sec: u32,
    /// Seconds a call may take (0 = default 60).
    #[serde(default)]
    pub call_timeout_sec: u32,
    /// Restart policy of a stdio server.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Owning user; defaults to the creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerSpec>,
}

/// A workspace (`workspaces`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Derived from `name` when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// Absolute path, or `~/…` relative to the proxy user's home.
    pub root_path: String,
    /// What happens when no rule matches in this workspace (deny by default).
    #[serde(default = "default_deny")]
    pub default_policy: Policy,
    /// Owning user; defaults to the creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerSpec>,
}

fn default_deny() -> Policy {
    Policy::Deny
}

/// A route rule (`route_rules`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Derived from `name` when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// Higher first among rules of equal specificity.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// The workspace (default `default`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workspace_id: String,
    /// Tool-name globs (`github__*`).
    #[serde(deserialize_with = "one_or_many")]
    pub tool_match: Vec<String>,
    /// Where allowed calls go.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub downstream_server_id: String,
    /// The credentials injected into allowed calls, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_scope_id: String,
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub policy: Policy,
    /// Record redacted responses in the audit log.
    #[serde(default, skip_serializing_if = "is_false")]
    pub log_full: bool,
    /// Owning user; defaults to the creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerSpec>,
}

/// What every stored object carries besides its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Obj<T> {
    /// The object as configured (owner resolved to a uid).
    pub spec: T,
    /// Where it came from.
    pub source: Source,
    /// For `yaml` objects: the uid whose `apply` wrote it, or none for the
    /// daemon's `--config` file; only applies of the same origin prune it.
    pub applied_by: Option<u32>,
}

/// Non-secret facts about a scope's stored secret values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretMeta {
    /// Keys of the stored values, sorted.
    pub keys: Vec<String>,
    /// Bumped on every change of the values.
    pub version: u64,
}

/// The whole configuration, as committed.
#[derive(Clone, Debug, Default)]
pub struct ConfigState {
    /// Auth scopes by id.
    pub scopes: BTreeMap<String, Obj<ScopeSpec>>,
    /// OAuth providers by id.
    pub providers: BTreeMap<String, Obj<ProviderSpec>>,
    /// Downstream servers by id.
    pub servers: BTreeMap<String, Obj<ServerSpec>>,
    /// Workspaces by id (always holds `default`).
    pub workspaces: BTreeMap<String, Obj<WorkspaceSpec>>,
    /// Route rules by id.
    pub routes: BTreeMap<String, Obj<RouteSpec>>,
    /// Secret metadata by scope id.
    pub secrets: BTreeMap<String, SecretMeta>,
    /// Providers that have a stored client secret.
    pub provider_secrets: BTreeSet<String>,
    /// Each route's pin: [`server_pin`] of its server when the route was
    /// made or last confirmed.
    pub pins: BTreeMap<String, String>,
}

/// A digest of what a server runs or where it sends requests (transport,
/// command, args, env, working directory, URL): a route's pin.
pub fn server_pin(server: &ServerSpec) -> String {
    use sha2::Digest;
    let what = serde_json::json!([
        enum_name(&server.transport),
        server.command,
        server.args,
        server.env,
        server.working_dir,
        server.url,
    ]);
    let digest = sha2::Sha256::digest(what.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ConfigState {
    /// The built-in `default` workspace.
    pub fn default_workspace() -> Obj<WorkspaceSpec> {
        Obj {
            spec: WorkspaceSpec {
                id: DEFAULT_WORKSPACE.into(),
                name: "Default".into(),
                root_path: "/".into(),
                default_policy: Policy::Deny,
                owner: None,
            },
            source: Source::Seed,
            applied_by: None,
        }
    }

    /// Removes object `kind`/`id` (and a scope's secret metadata).
    pub fn remove(&mut self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Scope => {
                self.secrets.remove(id);
                self.scopes.remove(id).is_some()
            }
            Kind::Provider => {
                self.provider_secrets.remove(id);
                self.providers.remove(id).is_some()
            }
            Kind::Server => self.servers.remove(id).is_some(),
            Kind::Workspace => self.workspaces.remove(id).is_some(),
            Kind::Route => self.routes.remove(id).is_some(),
        }
    }

    /// The objects that refer to `kind`/`id`, as "kind id" strings.
    pub fn referrers(&self, kind: Kind, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        match kind {
            Kind::Provider => {
                for s in self.scopes.values() {
                    if s.spec.oauth_provider_id == id {
                        out.push(format!("auth_scope {}", s.spec.id));
                    }
                }
            }
            Kind::Scope | Kind::Server | Kind::Workspace => {
                for r in self.routes.values() {
                    let hit = match kind {
                        Kind::Scope => r.spec.auth_scope_id == id,
                        Kind::Server => r.spec.downstream_server_id == id,
                        _ => route_workspace(&r.spec) == id,
                    };
                    if hit {
                        out.push(format!("route_rule {}", r.spec.id));
                    }
                }
            }
            Kind::Route => {}
        }
        out
    }
}

/// The workspace a rule belongs to (`default` when unset).
pub fn route_workspace(route: &RouteSpec) -> &str {
    if route.workspace_id.is_empty() {
        DEFAULT_WORKSPACE
    } else {
        &route.workspace_id
    }
}

/// A YAML document of `apply` and `export`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Auth scopes.
    #[serde(default)]
    pub auth_scopes: Vec<ScopeSpec>,
    /// OAuth providers.
    #[serde(default)]
    pub oauth_providers: Vec<ProviderSpec>,
    /// Downstream servers.
    #[serde(default)]
    pub downstream_servers: Vec<ServerSpec>,
    /// Workspaces.
    #[serde(default)]
    pub workspaces: Vec<WorkspaceSpec>,
    /// Route rules.
    #[serde(default)]
    pub route_rules: Vec<RouteSpec>,
}
