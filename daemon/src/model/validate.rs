//! Validation: each object on its own (ids, names, URLs, globs, owners), then
//! the configuration as a whole (references, transport compatibility, unique
//! tool namespaces). Every problem names the object and field.

use std::collections::BTreeMap;

use super::{
    ConfigState, Document, Kind, OwnerSpec, Policy, ProviderSpec, RouteSpec, ScopeSpec, ScopeType,
    ServerSpec, Transport, WorkspaceSpec, route_workspace,
};
use crate::sys;

/// The id an object gets from its name: lowercased, every run of characters
/// other than `a-z0-9` turned into one `-`, trimmed ("Custom Provider" →
/// `custom-provider`).
pub fn derive_id(name: &str) -> String {
    let mut id = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    while id.ends_with('-') {
        id.pop();
    }
    id
}

fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id {id:?} is not valid: use 1-64 characters a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        ))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 200 || name.chars().any(char::is_control) {
        return Err("name must be at most 200 characters without control characters".into());
    }
    Ok(())
}

/// Whether `s` is a valid environment variable name.
pub fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `s` is a valid HTTP header name (RFC 9110 token).
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks an endpoint URL: `https`, or `http` on a loopback host (DESIGN §6).
pub fn check_endpoint(field: &str, value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{field} {value:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{field} {value:?} uses plain http to a non-loopback host; use https (http is allowed only for 127.0.0.1, ::1 and localhost)"
        )),
        other => Err(format!("{field} {value:?} has scheme {other:?}; use https")),
    }
}

/// Checks a tool-match glob.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("tool_match has an empty pattern".into());
    }
    if glob.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("tool_match pattern {glob:?} contains whitespace"));
    }
    globset::GlobBuilder::new(glob)
        .literal_separator(false)
        .build()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "tool_match pattern {glob:?} is not a valid glob: {}",
                e.kind()
            )
        })
}

fn resolve_owner(owner: &mut Option<OwnerSpec>, default_owner: Option<u32>) -> Result<(), String> {
    match owner {
        None => *owner = default_owner.map(OwnerSpec::Uid),
        Some(OwnerSpec::Uid(_)) => {}
        Some(OwnerSpec::Name(name)) => match sys::resolve_user(name) {
            Some(uid) => *owner = Some(OwnerSpec::Uid(uid)),
            None => return Err(format!("owner {name:?} is not a user on this host")),
        },
    }
    Ok(())
}

fn fill_id(id: &mut String, name: &str) -> Result<(), String> {
    check_name(name)?;
    if id.is_empty() {
        *id = derive_id(name);
        if id.is_empty() {
            return Err(format!(
                "name {name:?} gives no id (it has no letters or digits); add an `id:`"
            ));
        }
    }
    check_id(id)
}

/// Per-object normalisation: fills ids and defaults, resolves the owner and
/// checks every field that does not depend on other objects.
pub trait Normalize {
    /// The object's kind.
    const KIND: Kind;
    /// Normalises in place.
    fn normalize(&mut self, default_owner: Option<u32>) -> Result<(), String>;
    /// The id (after normalisation).
    fn id(&self) -> &str;
    /// The name, for messages before an id exists.
    fn name(&self) -> &str;
}

impl Normalize for ScopeSpec {
    const KIND: Kind = Kind::Scope;
    fn normalize(&mut self, default_owner: Option<u32>) -> Result<(), String> {
        fill_id(&mut self.id, &self.name)?;
        resolve_owner(&mut self.owner, default_owner)?;
        if self.redaction_hints.iter().any(|h| h.trim().is_empty()) {
            return Err("redaction_hints has an empty entry".into());
        }
        match self.kind {
            ScopeType::Env | ScopeType::Header => {
                if !self.oauth_provider_id.is_empty() {
                    return Err(format!(
                        "oauth_provider_id is set but type is {:?}; only oauth2 scopes use a provider",
                        self.kind
                    ));
                }
                if !self.token_env_var.is_empty() {
                    return Err("token_env_var applies to oauth2 scopes only".into());
                }
            }
            ScopeType::Oauth2 => {
                if self.oauth_provider_id.is_empty() {
                    return Err("an oauth2 scope needs oauth_provider_id".into());
                }
                if self.token_env_var.is_empty() {
                    self.token_env_var = "ACCESS_TOKEN".into();
                }
                if !is_env_name(&self.token_env_var) {
                    return Err(format!(
                        "token_env_var {:?} is not a valid environment variable name",
                        self.token_env_var
                    ));
                }
            }
        }
        for user in &self.grants.users {
            if sys::resolve_user(user).is_none() {
                return Err(format!("grants.users: {user:?} is not a user on this host"));
            }
        }
        for group in &self.grants.groups {
            if sys::resolve_group(group).is_none() {
                return Err(format!(
                    "grants.groups: {group:?} is not a group on this host"
                ));
            }
        }
        Ok(())
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Normalize for ProviderSpec {
    const KIND: Kind = Kind::Provider;
    fn normalize(&mut self, default_owner: Option<u32>) -> Result<(), String> {
        if !self.template.is_empty() {
            let template = crate::oauth::templates::find(&self.template).ok_or_else(|| {
                format!(
                    "template {:?} is not a built-in provider template (there are: {})",
                    self.template,
                    crate::oauth::templates::names()
                )
            })?;
            if self.name.is_empty() {
                template.name.clone_into(&mut self.name);
            }
            template.apply_to(self)?;
        } else if !self.template_params.is_empty() {
            return Err("template_params apply to a provider with a template only".into());
        }
        self.use_pkce.get_or_insert(true);
        if self.scope_separator.is_empty() {
            self.scope_separator = " ".into();
        }
        fill_id(&mut self.id, &self.name)?;
        resolve_owner(&mut self.owner, default_owner)?;
        for (field, value) in [("auth_url", &self.auth_url), ("token_url", &self.token_url)] {
            if value.is_empty() {
                return Err(format!(
                    "{field} is required unless the provider has a template (see `mcplexerctl provider templates`); `mcplexerctl provider create --issuer URL` reads it from the issuer's metadata"
                ));
            }
        }
        check_endpoint("auth_url", &self.auth_url)?;
        check_endpoint("token_url", &self.token_url)?;
        for (field, value) in [
            ("device_auth_url", &self.device_auth_url),
            ("revocation_url", &self.revocation_url),
            ("issuer", &self.issuer),
        ] {
            if !value.is_empty() {
                check_endpoint(field, value)?;
            }
        }
        if !self.redirect_uri.is_empty() {
            let url = url::Url::parse(&self.redirect_uri)
                .map_err(|e| format!("redirect_uri {:?} is not a URL: {e}", self.redirect_uri))?;
            let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
            if url.scheme() != "http" || !loopback {
                return Err(format!(
                    "redirect_uri {:?} must be a loopback http URI (http://127.0.0.1:PORT/PATH), where mcplexerctl listens",
                    self.redirect_uri
                ));
            }
        }
        let separator = self.scope_separator.as_str();
        if let Some(bad) = self
            .scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(char::is_whitespace) || s.contains(separator))
        {
            return Err(format!(
                "scopes entry {bad:?} is empty or contains whitespace or the scope separator"
            ));
        }
        if separator.len() != 1 || !matches!(separator, " " | "," | "+") {
            return Err(format!(
                "scope_separator {separator:?} is not one of \" \", \",\" or \"+\""
            ));
        }
        for (name, value) in &self.token_headers {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name || value.bytes().any(|b| b.is_ascii_control()) {
                return Err(format!(
                    "token_headers entry {name:?} is not a valid HTTP header"
                ));
            }
        }
        Ok(())
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Normalize for ServerSpec {
    const KIND: Kind = Kind::Server;
    fn normalize(&mut self, default_owner: Option<u32>) -> Result<(), String> {
        fill_id(&mut self.id, &self.name)?;
        resolve_owner(&mut self.owner, default_owner)?;
        match self.transport {
            Transport::Stdio => {
                if self.command.trim().is_empty() {
                    return Err("a stdio server needs a command".into());
                }
                if !self.url.is_empty() {
                    return Err("url applies to http servers only".into());
                }
                if let Some(bad) = self.env.keys().find(|k| !is_env_name(k)) {
                    return Err(format!("env key {bad:?} is not a valid variable name"));
                }
                check_path("working_dir", &self.working_dir, true)?;
            }
            Transport::Http => {
                if self.url.is_empty() {
                    return Err("an http server needs a url".into());
                }
                check_endpoint("url", &self.url)?;
                if !self.command.is_empty()
                    || !self.args.is_empty()
                    || !self.env.is_empty()
                    || !self.working_dir.is_empty()
                {
                    return Err(
                        "command, args, env and working_dir apply to stdio servers only".into(),
                    );
                }
            }
        }
        if self.tool_namespace.is_empty() {
            self.tool_namespace = self.id.replace(['-', '.'], "_");
        }
        let ns = &self.tool_namespace;
        if !ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            || ns.contains("__")
            || ns.starts_with('_')
            || ns.ends_with('_')
        {
            return Err(format!(
                "tool_namespace {ns:?} must use a-z, A-Z, 0-9, '_', '-', and must not contain \"__\" (it separates namespace and tool)"
            ));
        }
        Ok(())
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A path field: absolute or `~`/`~/…`, without `..` or NUL; empty only
/// where `empty_ok`.
fn check_path(field: &str, path: &str, empty_ok: bool) -> Result<(), String> {
    if empty_ok && path.is_empty() {
        return Ok(());
    }
    let shaped = path.starts_with('/') || path == "~" || path.starts_with("~/");
    if !shaped || path.split('/').any(|c| c == "..") || path.contains('\0') {
        return Err(format!(
            "{field} {path:?} must be an absolute path (or ~/...) without '..'"
        ));
    }
    Ok(())
}

impl Normalize for WorkspaceSpec {
    const KIND: Kind = Kind::Workspace;
    fn normalize(&mut self, default_owner: Option<u32>) -> Result<(), String> {
        fill_id(&mut self.id, &self.name)?;
        resolve_owner(&mut self.owner, default_owner)?;
        check_path("root_path", &self.root_path, false)
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Normalize for RouteSpec {
    const KIND: Kind = Kind::Route;
    fn normalize(&mut self, default_owner: Option<u32>) -> Result<(), String> {
        fill_id(&mut self.id, &self.name)?;
        resolve_owner(&mut self.owner, default_owner)?;
        if self.tool_match.is_empty() {
            return Err("tool_match is empty; give at least one glob such as \"github__*\"".into());
        }
        for glob in &self.tool_match {
            check_glob(glob)?;
        }
        if self.policy == Policy::Allow && self.downstream_server_id.is_empty() {
            return Err("an allow rule needs downstream_server_id".into());
        }
        Ok(())
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

fn label<T: Normalize>(obj: &T) -> String {
    if obj.id().is_empty() {
        format!("{} named {:?}", T::KIND.name(), short(obj.name()))
    } else {
        format!("{} {}", T::KIND.name(), short(obj.id()))
    }
}

/// At most 64 characters of `text`, for messages that name what a peer
/// sent.
pub fn short(text: &str) -> String {
    match text.char_indices().nth(64) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// Normalises one object, prefixing any problem with the object's label.
pub fn normalize_one<T: Normalize + serde::Serialize>(
    obj: &mut T,
    default_owner: Option<u32>,
) -> Result<(), String> {
    check_bounds(obj)
        .and_then(|()| obj.normalize(default_owner))
        .map_err(|problem| format!("{}: {problem}", label(obj)))
}

/// The longest text of any field of an object (commands, URLs, globs,
/// descriptions); names and ids have tighter rules of their own.
pub const MAX_FIELD_BYTES: usize = 4096;
/// The most items in any list or map of an object (args, env, grants,
/// tool_match, scopes, ...).
pub const MAX_FIELD_ITEMS: usize = 256;

/// Refuses an object with a field past [`MAX_FIELD_BYTES`] or a list or map
/// past [`MAX_FIELD_ITEMS`], naming the field: what a peer sends is
/// bounded field by field, not only by the message size.
fn check_bounds<T: serde::Serialize>(obj: &T) -> Result<(), String> {
    fn walk(path: &str, value: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value;
        match value {
            Value::String(s) if s.len() > MAX_FIELD_BYTES => Err(format!(
                "{path} is {} bytes long; the limit is {MAX_FIELD_BYTES}",
                s.len()
            )),
            Value::Array(items) if items.len() > MAX_FIELD_ITEMS => Err(format!(
                "{path} has {} items; the limit is {MAX_FIELD_ITEMS}",
                items.len()
            )),
            Value::Object(map) if map.len() > MAX_FIELD_ITEMS => Err(format!(
                "{path} has {} entries; the limit is {MAX_FIELD_ITEMS}",
                map.len()
            )),
            Value::Array(items) => items.iter().try_for_each(|v| walk(path, v)),
            Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                if k.len() > MAX_FIELD_BYTES {
                    return Err(format!(
                        "{path} has a key of {} bytes; the limit is {MAX_FIELD_BYTES}",
                        k.len()
                    ));
                }
                if path.is_empty() {
                    walk(k, v)
                } else {
                    walk(path, v)
                }
            }),
            _ => Ok(()),
        }
    }
    let value = serde_json::to_value(obj).map_err(|e| format!("cannot be read: {e}"))?;
    walk("", &value)
}

fn normalize_list<T: Normalize + serde::Serialize>(
    list: &mut [T],
    default_owner: Option<u32>,
    problems: &mut Vec<String>,
) {
    let mut seen = BTreeMap::new();
    for (index, obj) in list.iter_mut().enumerate() {
        if let Err(p) = normalize_one(obj, default_owner) {
            problems.push(p);
            continue;
        }
        if let Some(first) = seen.insert(obj.id().to_owned(), index) {
            problems.push(format!(
                "{}: defined twice in the document (entries {} and {} of {}s)",
                label(obj),
                first + 1,
                index + 1,
                T::KIND.name()
            ));
        }
    }
}

/// Normalises every object of a document; all problems at once.
pub fn normalize_all(doc: &mut Document, default_owner: Option<u32>) -> Vec<String> {
    let mut problems = Vec::new();
    normalize_list(&mut doc.auth_scopes, default_owner, &mut problems);
    normalize_list(&mut doc.oauth_providers, default_owner, &mut problems);
    normalize_list(&mut doc.downstream_servers, default_owner, &mut problems);
    normalize_list(&mut doc.workspaces, default_owner, &mut problems);
    normalize_list(&mut doc.route_rules, default_owner, &mut problems);
    problems
}

/// A problem of the configuration as a whole, and the objects it involves
/// (any one of which, removed, may resolve it).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// What is wrong, naming the objects.
    pub message: String,
    /// The objects involved, by kind and id.
    pub involves: Vec<(Kind, String)>,
}

/// Checks the configuration as a whole; all problems at once.
pub fn validate_state(state: &ConfigState) -> Vec<String> {
    state_problems(state)
        .into_iter()
        .map(|p| p.message)
        .collect()
}

/// [`validate_state`], with the objects each problem involves.
pub fn state_problems(state: &ConfigState) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |message: String, involves: Vec<(Kind, &str)>| {
        problems.push(Problem {
            message,
            involves: involves
                .into_iter()
                .map(|(k, id)| (k, id.to_owned()))
                .collect(),
        });
    };
    for scope in state.scopes.values() {
        let s = &scope.spec;
        if s.kind == ScopeType::Oauth2 && !state.providers.contains_key(&s.oauth_provider_id) {
            problem(
                format!(
                    "auth_scope {}: oauth_provider_id {:?} does not name an oauth_provider",
                    s.id, s.oauth_provider_id
                ),
                vec![(Kind::Scope, &s.id)],
            );
        }
    }
    let mut namespaces: BTreeMap<&str, &str> = BTreeMap::new();
    for server in state.servers.values() {
        let s = &server.spec;
        if let Some(other) = namespaces.insert(&s.tool_namespace, &s.id) {
            problem(
                format!(
                    "downstream_server {}: tool_namespace {:?} is already used by another downstream_server",
                    s.id, s.tool_namespace
                ),
                vec![(Kind::Server, &s.id), (Kind::Server, other)],
            );
        }
    }
    for route in state.routes.values() {
        let r = &route.spec;
        let me = vec![(Kind::Route, r.id.as_str())];
        let ws = route_workspace(r);
        if !state.workspaces.contains_key(ws) {
            problem(
                format!(
                    "route_rule {}: workspace_id {ws:?} does not name a workspace",
                    r.id
                ),
                me.clone(),
            );
        }
        let server = if r.downstream_server_id.is_empty() {
            None
        } else {
            let found = state.servers.get(&r.downstream_server_id);
            if found.is_none() {
                problem(
                    format!(
                        "route_rule {}: downstream_server_id {:?} does not name a downstream_server",
                        r.id, r.downstream_server_id
                    ),
                    me.clone(),
                );
            }
            found
        };
        let scope = if r.auth_scope_id.is_empty() {
            None
        } else {
            let found = state.scopes.get(&r.auth_scope_id);
            if found.is_none() {
                problem(
                    format!(
                        "route_rule {}: auth_scope_id {:?} does not name an auth_scope",
                        r.id, r.auth_scope_id
                    ),
                    me.clone(),
                );
            }
            found
        };
        if let (Some(scope), Some(server)) = (scope, server)
            && let Err(p) = transport_compatible(&scope.spec, &server.spec)
        {
            problem(format!("route_rule {}: {p}", r.id), me);
        }
    }
    // Names without a prefix share one space per workspace: two servers
    // mounted that way could both have a tool `search`, and the gateway
    // could not tell whose a call is.
    let mut unprefixed: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for route in state.routes.values() {
        let r = &route.spec;
        let Some(server) = state.servers.get(&r.downstream_server_id) else {
            continue;
        };
        if !server.spec.unprefixed || r.policy == Policy::Deny {
            continue;
        }
        let ws = route_workspace(r);
        match unprefixed.get(ws) {
            Some((other_server, other_rule)) if *other_server != server.spec.id.as_str() => {
                problem(
                    format!(
                        "route_rule {}: workspace {ws:?} already routes to downstream_server {other_server} (unprefixed) through route_rule {other_rule}; a workspace mounts at most one server without a prefix, since their names would collide",
                        r.id
                    ),
                    vec![(Kind::Route, r.id.as_str()), (Kind::Route, other_rule)],
                );
            }
            Some(_) => {}
            None => {
                unprefixed.insert(ws, (&server.spec.id, &r.id));
            }
        }
    }
    problems
}

/// Whether `scope` can be injected into `server` (DESIGN §3).
pub fn transport_compatible(scope: &ScopeSpec, server: &ServerSpec) -> Result<(), String> {
    match (scope.kind, server.transport) {
        (ScopeType::Env, Transport::Stdio)
        | (ScopeType::Header, Transport::Http)
        | (ScopeType::Oauth2, _) => Ok(()),
        (ScopeType::Env, Transport::Http) => Err(format!(
            "auth_scope {} (type env) cannot be used with downstream_server {} (transport http): env values are injected into the environment of stdio servers only; use a header or oauth2 scope",
            scope.id, server.id
        )),
        (ScopeType::Header, Transport::Stdio) => Err(format!(
            "auth_scope {} (type header) cannot be used with downstream_server {} (transport stdio): headers are injected into http servers only; use an env or oauth2 scope",
            scope.id, server.id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_names() {
        assert_eq!(derive_id("Custom Provider"), "custom-provider");
        assert_eq!(derive_id("GitHub Token"), "github-token");
        assert_eq!(derive_id("  API -- Key!! "), "api-key");
        assert_eq!(derive_id("***"), "");
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("u", "https://auth.example.com/x").is_ok());
        assert!(check_endpoint("u", "http://127.0.0.1:8080/x").is_ok());
        assert!(check_endpoint("u", "http://[::1]:8080/x").is_ok());
        assert!(check_endpoint("u", "http://localhost/x").is_ok());
        assert!(check_endpoint("u", "http://auth.example.com/x").is_err());
        assert!(check_endpoint("u", "ftp://x").is_err());
        assert!(check_endpoint("u", "not a url").is_err());
    }

    #[test]
    fn globs() {
        assert!(check_glob("github__*").is_ok());
        assert!(check_glob("*").is_ok());
        assert!(check_glob("github__[").is_err());
        assert!(check_glob("").is_err());
        assert!(check_glob("a b").is_err());
    }

    #[test]
    fn namespaces_cannot_hold_the_separator() {
        let mut s = ServerSpec {
            name: "x".into(),
            command: "true".into(),
            tool_namespace: "a__b".into(),
            ..Default::default()
        };
        assert!(s.normalize(None).is_err());
        s.tool_namespace.clear();
        s.id = "my-server".into();
        s.normalize(None).unwrap();
        assert_eq!(s.tool_namespace, "my_server");
    }
}
