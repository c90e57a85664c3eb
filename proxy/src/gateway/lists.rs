//! The aggregated lists: every server's tools, prompts, resources and
//! resource templates that the route rules let this client see, under the
//! names it calls them by.
//!
//! * Tools and prompts are named `<namespace>__<name>`, or by their own
//!   name for a server mounted unprefixed; the rule that decides a call
//!   decides whether the name is listed. An unprefixed name that another
//!   listed name equals is not listed (the prefixed one is unambiguous).
//! * Resources and templates keep their URIs, and a server's resource is
//!   listed when the rules allow `<namespace>__<resource name>` (so a rule
//!   `<namespace>__*` covers them). A URI that more than one listed server
//!   has is exposed as `<namespace>+<uri>` for each of them, so that every
//!   exposed URI leads to one server; the index remembers where each leads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mcplexer_proto::v1 as pb;
use serde_json::{Value, json};

use super::Gateway;
use super::error::{CallError, INVALID_PARAMS};
use super::pool::{Target, call_timeout};
use crate::downstream::{Call, Downstream, ListKind, Sink};
use crate::router::Decision;
use crate::vault::Routing;

/// Items per page served to the client.
const PAGE: usize = 100;

/// Where one exposed resource URI or template leads.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The server.
    pub server_id: String,
    /// The URI (or template) at the server.
    pub original: String,
    /// The name the rules decide it by: `<namespace>__<resource name>`.
    pub rule_name: String,
}

/// The name a server's tool or prompt is exposed by.
pub fn exposed_name(server: &pb::DownstreamServer, name: &str) -> String {
    if server.unprefixed {
        name.to_owned()
    } else {
        format!("{}__{name}", server.tool_namespace)
    }
}

/// Exposed resource URIs and templates, as last listed, and the servers
/// of unprefixed tool and prompt names.
#[derive(Default)]
pub struct ResourceIndex {
    /// (list, exposed name) of an unprefixed server's tool or prompt to its
    /// server id.
    pub unprefixed: HashMap<(ListKind, String), String>,
    /// Exposed URI to where it leads.
    pub uris: HashMap<String, Entry>,
    /// Exposed template to where it leads.
    pub templates: HashMap<String, Entry>,
}

impl ResourceIndex {
    /// Where an exposed URI leads: a listed resource, else the template
    /// with the longest literal start that the URI begins with (after the
    /// `<namespace>+` of a rewritten template).
    pub fn find(&self, uri: &str) -> Option<(Entry, String)> {
        if let Some(entry) = self.uris.get(uri) {
            return Some((entry.clone(), entry.original.clone()));
        }
        let mut best: Option<(usize, &String, &Entry)> = None;
        for (exposed, entry) in &self.templates {
            let literal = exposed.split('{').next().unwrap_or(exposed);
            if literal.is_empty() || !uri.starts_with(literal) {
                continue;
            }
            if best.is_none_or(|(len, _, _)| literal.len() > len) {
                best = Some((literal.len(), exposed, entry));
            }
        }
        let (_, exposed, entry) = best?;
        // The URI at the server: without the prefix the exposed template
        // added to the original.
        let added = exposed.len().saturating_sub(entry.original.len());
        let original = uri.get(added..)?.to_owned();
        Some((entry.clone(), original))
    }
}

/// The rule a listing of `server_id`'s items goes by, and its scope: the
/// first allow rule routing to it in the workspace chain; none if no rule
/// could route to it (then nothing of it is listed). The vault releases
/// the scope for the listing through that rule.
pub fn listing_scope(
    routing: &Routing,
    dir: &Path,
    server_id: &str,
) -> Option<(Option<String>, String)> {
    for workspace in routing.table.workspaces(dir) {
        let mut rules: Vec<&pb::RouteRule> = routing
            .routes
            .iter()
            .filter(|r| {
                r.workspace_id == workspace
                    && r.policy == "allow"
                    && r.downstream_server_id == server_id
            })
            .collect();
        rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        if let Some(rule) = rules.first() {
            let scope = Some(rule.auth_scope_id.clone()).filter(|s| !s.is_empty());
            return Some((scope, rule.id.clone()));
        }
    }
    None
}

/// What a server's `initialize` result says to do, if anything.
pub fn instructions_of(downstream: &dyn Downstream) -> Option<String> {
    downstream
        .initialized()?
        .get("instructions")?
        .as_str()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The field of an item that names it for the rules, and the one that
/// the client addresses it by.
fn fields(kind: ListKind) -> (&'static str, &'static str) {
    match kind {
        ListKind::Tools | ListKind::Prompts => ("name", "name"),
        ListKind::Resources => ("name", "uri"),
        ListKind::Templates => ("name", "uriTemplate"),
    }
}

impl Gateway {
    /// One page of an aggregated list.
    pub(super) async fn list(
        self: &Arc<Self>,
        kind: ListKind,
        params: &Value,
        sink: Option<&Sink>,
    ) -> Result<Value, CallError> {
        let dir = self.session.workspace_dir(sink).await;
        let exposed = self.aggregate(kind, &dir).await;
        let start = match params.get("cursor").and_then(Value::as_str) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= exposed.len())
                .ok_or_else(|| CallError::new(INVALID_PARAMS, "invalid cursor"))?,
        };
        let end = (start + PAGE).min(exposed.len());
        let mut result = json!({ kind.field(): exposed[start..end] });
        if end < exposed.len() {
            result["nextCursor"] = Value::String(end.to_string());
        }
        Ok(result)
    }

    /// Every item of a list this client may see, renamed as exposed; for
    /// resources and templates, the index is rebuilt from what is listed.
    pub(super) async fn aggregate(self: &Arc<Self>, kind: ListKind, dir: &Path) -> Vec<Value> {
        let routing = self.vault.routing();
        let mut servers: Vec<&pb::DownstreamServer> = routing.servers.values().collect();
        servers.sort_by(|a, b| a.tool_namespace.cmp(&b.tool_namespace));
        let mut found: Vec<(&pb::DownstreamServer, Value, String)> = Vec::new();
        // Every name of an unprefixed server, listed or not: a call of a
        // name the rules hide is refused (and audited) as a prefixed one is.
        let mut unprefixed: Vec<(String, &str)> = Vec::new();
        for server in servers {
            let Some((scope, rule)) = listing_scope(&routing, dir, &server.id) else {
                continue;
            };
            let target = Target {
                server,
                scope,
                name: "",
                rule: &rule,
            };
            let items = match self.listed(kind, &target).await {
                Ok(items) => items,
                Err(err) => {
                    // One broken downstream costs only its own items.
                    tracing::warn!(server = %server.id, error = %err.message, "cannot read {}", kind.method());
                    continue;
                }
            };
            let (named_by, _) = fields(kind);
            for item in items {
                let Some(name) = item.get(named_by).and_then(Value::as_str) else {
                    continue;
                };
                let rule_name = exposed_name(server, name);
                if server.unprefixed {
                    unprefixed.push((rule_name.clone(), &server.id));
                }
                if let Decision::Allow { .. } = routing.table.decide(dir, &rule_name, &server.id) {
                    found.push((server, item, rule_name));
                }
            }
        }
        match kind {
            ListKind::Tools | ListKind::Prompts => self.name(kind, found, unprefixed),
            ListKind::Resources | ListKind::Templates => self.index(kind, found),
        }
    }

    /// Exposes tools or prompts under their names, each leading to one
    /// server, and records the servers of unprefixed names.
    fn name(
        &self,
        kind: ListKind,
        found: Vec<(&pb::DownstreamServer, Value, String)>,
        unprefixed: Vec<(String, &str)>,
    ) -> Vec<Value> {
        let mut prefixed = std::collections::HashSet::new();
        for (server, _, name) in &found {
            if !server.unprefixed {
                prefixed.insert(name.clone());
            }
        }
        // A name of the form `<namespace>__…` of a prefixed server is that
        // server's, whether or not it listed it just now.
        let routing = self.vault.routing();
        let claimed = |name: &str| {
            crate::router::split_tool(name)
                .is_some_and(|(namespace, _)| routing.by_namespace.contains_key(namespace))
        };
        // The first server (by namespace) that has a name keeps it.
        let mut servers: HashMap<(ListKind, String), String> = HashMap::new();
        for (name, server_id) in unprefixed {
            if !prefixed.contains(&name) && !claimed(&name) {
                servers
                    .entry((kind, name))
                    .or_insert_with(|| server_id.to_owned());
            }
        }
        let mut exposed = Vec::new();
        for (server, mut item, name) in found {
            let leads_here = servers
                .get(&(kind, name.clone()))
                .is_some_and(|owner| *owner == server.id);
            if server.unprefixed && !leads_here {
                tracing::warn!(server = %server.id, name = %name, "an unprefixed name collides with another server's; it is not listed");
                continue;
            }
            item["name"] = Value::String(name);
            exposed.push(item);
        }
        let mut index = self
            .resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index.unprefixed.retain(|(k, _), _| *k != kind);
        index.unprefixed.extend(servers);
        exposed
    }

    /// Exposes resources or templates under URIs that each lead to one
    /// server, and records where they lead.
    fn index(
        &self,
        kind: ListKind,
        found: Vec<(&pb::DownstreamServer, Value, String)>,
    ) -> Vec<Value> {
        let (_, addressed_by) = fields(kind);
        // What could lead to more than one server: the same URI, or for
        // templates the same literal start (the part a read is matched by).
        let collides_by = |uri: &str| -> String {
            match kind {
                ListKind::Templates => uri.split('{').next().unwrap_or(uri).to_owned(),
                _ => uri.to_owned(),
            }
        };
        let mut servers_of: HashMap<String, Vec<&str>> = HashMap::new();
        for (server, item, _) in &found {
            if let Some(uri) = item.get(addressed_by).and_then(Value::as_str) {
                let servers = servers_of.entry(collides_by(uri)).or_default();
                if !servers.contains(&server.id.as_str()) {
                    servers.push(&server.id);
                }
            }
        }
        let mut entries = HashMap::new();
        let mut exposed = Vec::new();
        for (server, mut item, rule_name) in found {
            let Some(uri) = item
                .get(addressed_by)
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let shown = if servers_of
                .get(&collides_by(&uri))
                .is_some_and(|s| s.len() > 1)
            {
                format!("{}+{uri}", server.tool_namespace)
            } else {
                uri.clone()
            };
            item[addressed_by] = Value::String(shown.clone());
            entries.insert(
                shown,
                Entry {
                    server_id: server.id.clone(),
                    original: uri,
                    rule_name,
                },
            );
            exposed.push(item);
        }
        let mut index = self
            .resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kind {
            ListKind::Resources => index.uris = entries,
            _ => index.templates = entries,
        }
        exposed
    }

    /// One server's list, as cached by its downstream or read now. A
    /// server that did not declare the list's capability has it empty.
    async fn listed(&self, kind: ListKind, target: &Target<'_>) -> Result<Vec<Value>, CallError> {
        if let Some(items) = self.pool.cached(target, kind).await {
            return Ok(items);
        }
        let (downstream, credential) = self.pool.acquire(target).await?;
        if let Some(items) = downstream.lists().get(kind) {
            return Ok(items);
        }
        let timeout = call_timeout(target.server);
        if downstream.initialized().is_none() {
            // An HTTP session is initialised by its first request.
            downstream
                .request("ping", json!({}), Call::plain(credential.as_ref(), timeout))
                .await
                .map_err(|e| CallError::from(e).scrubbed(credential.as_ref()))?
                .ok();
        }
        let declared = kind == ListKind::Tools
            || (&*downstream as &dyn Downstream).declares(kind.capability());
        if !declared {
            downstream.lists().set(kind, Vec::new());
            return Ok(Vec::new());
        }
        downstream
            .list(kind, credential.as_ref(), timeout)
            .await
            .map_err(|e| CallError::from(e).scrubbed(credential.as_ref()))
    }
}
