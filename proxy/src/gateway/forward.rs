//! Requests that go to one server: `tools/call` and `prompts/get` (by
//! exposed name), `resources/read`, `resources/subscribe` and
//! `resources/unsubscribe` (by exposed URI) and `completion/complete` (by
//! the prompt or resource template it completes). Each is routed by the
//! route rules, carries the credential released for it, is cancellable
//! and relays its progress, and is audited like a call, redacted.

use std::sync::Arc;
use std::time::Instant;

use mcplexer_proto::v1 as pb;
use serde_json::Value;

use super::Gateway;
use super::error::{CallError, INVALID_PARAMS, INVALID_REQUEST, RESOURCE_NOT_FOUND};
use super::message::Method;
use super::pool::Target;
use crate::downstream::{ListKind, Sink};
use crate::redact::{Scrub, redact};
use crate::router::{Decision, split_tool};
use crate::vault::Released;

/// Resource subscriptions one session keeps at most.
const MAX_SUBSCRIPTIONS: usize = 1024;

/// Where a request is addressed.
enum Address {
    /// A tool or prompt by its exposed name.
    Name(String),
    /// A resource by its exposed URI (or one a template produces).
    Uri(String),
}

/// The request, resolved: where it goes and how it reads at the server.
struct Resolved {
    server_id: String,
    /// The name the rules decide it by.
    rule_name: String,
    /// The params as the server is to get them.
    params: Value,
    /// For subscriptions: the URI at the server.
    original_uri: Option<String>,
}

/// A tool's error result (`isError`) with every released value scrubbed:
/// it is an error message, and the server may echo its credential in it. A
/// successful result is passed on as the server gave it.
fn scrub_tool_error(mut result: Value, credential: Option<&Released>) -> Value {
    if let Some(credential) = credential
        && result.get("isError").and_then(Value::as_bool) == Some(true)
    {
        credential.scrub().value(&mut result);
    }
    result
}

impl Gateway {
    /// Routes, sends and audits one request that goes to one server.
    pub(super) async fn forward(
        self: &Arc<Self>,
        id: &Value,
        key: &str,
        method: &Method,
        params: Value,
        sink: Option<Sink>,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let dir = self.session.workspace_dir(sink.as_ref()).await;
        let address = address(method, &params)?;
        let shown = match &address {
            Address::Name(name) | Address::Uri(name) => name.clone(),
        };
        let resolved = match self.resolve(method, &address, params.clone(), &dir).await {
            Ok(resolved) => resolved,
            Err(err) => {
                // An unknown name is answered, not audited: nothing was
                // routed anywhere.
                return Err(err);
            }
        };
        let routing = self.vault.routing();
        let server = routing
            .servers
            .get(&resolved.server_id)
            .cloned()
            .ok_or_else(|| unknown(method, &shown))?;
        let decision = routing.table.decide(&dir, &resolved.rule_name, &server.id);
        let mut record = pb::AuditRecord {
            tool: shown.clone(),
            downstream_server_id: server.id.clone(),
            action: if *method == Method::ToolsCall {
                String::new()
            } else {
                method.name().to_owned()
            },
            ..Default::default()
        };
        let (rule_id, scope) = match &decision {
            Decision::Allow {
                workspace_id,
                rule_id,
                scope_id,
                ..
            } => {
                record.workspace_id = workspace_id.clone();
                record.route_rule_id = rule_id.clone();
                record.auth_scope_id = scope_id.clone().unwrap_or_default();
                (rule_id.clone(), scope_id.clone())
            }
            Decision::Deny {
                workspace_id,
                rule_id,
            } => {
                record.workspace_id = workspace_id.clone();
                record.route_rule_id = rule_id.clone();
                let err = CallError::denied(format!(
                    "{} {shown} is denied by route rule {rule_id} in workspace {workspace_id}",
                    noun(method)
                ));
                self.audit(record, &params, None, Err(&err), started, false);
                return Err(err);
            }
            Decision::NoMatch { workspaces } => {
                record.workspace_id = workspaces.first().cloned().unwrap_or_default();
                let err = CallError::denied(format!(
                    "no route rule allows {} {shown} (searched workspaces: {}); requests are denied unless a rule allows them",
                    noun(method),
                    workspaces.join(", ")
                ));
                self.audit(record, &params, None, Err(&err), started, false);
                return Err(err);
            }
        };
        let log_full =
            self.log_full || routing.routes.iter().any(|r| r.id == rule_id && r.log_full);
        // Progress is mapped per hop: the server gets a token of the
        // proxy's, unique among the requests in flight (clients that share
        // this gateway may use the same tokens), and the client gets its
        // own back.
        let client_token = params.pointer("/_meta/progressToken").cloned();
        let hop_token = client_token
            .as_ref()
            .map(|_| Value::String(format!("mcplexer-progress-{key}")));
        let progress = hop_token
            .as_ref()
            .zip(client_token)
            .map(|(hop, client)| (hop.to_string(), client));
        let Some((_live, cancel)) = self.session.begin(key, &server.id, progress, sink.clone())
        else {
            return Err(CallError::new(
                INVALID_REQUEST,
                format!("request id {id} is already in use by a request in flight"),
            ));
        };
        // The vault checks the name against the rule it is released
        // through: the name the rule decided, which for a resource is not
        // its URI.
        let target = Target {
            server: &server,
            scope,
            name: &resolved.rule_name,
            rule: &rule_id,
        };
        let mut forwarded = resolved.params;
        super::era::for_downstream(&mut forwarded);
        if let Some(token) = hop_token {
            forwarded["_meta"]["progressToken"] = token;
        }
        let (answer, credential) = self
            .pool
            .request(&target, method.name(), forwarded, Some(cancel), sink)
            .await;
        let outcome = match answer {
            Ok(Ok(result)) if *method == Method::ToolsCall => {
                Ok(scrub_tool_error(result, credential.as_ref()))
            }
            Ok(Ok(mut result)) => {
                if let Some(original) = resolved.original_uri.as_deref()
                    && original != shown
                {
                    // A rewritten URI stays rewritten in what the client
                    // reads back.
                    expose_uri(&mut result, original, &shown);
                }
                Ok(result)
            }
            Ok(Err(error)) => Err(CallError::from_downstream(error).scrubbed(credential.as_ref())),
            Err(err) => Err(err.scrubbed(credential.as_ref())),
        };
        if outcome.is_ok()
            && let Some(original) = &resolved.original_uri
        {
            let mut subscriptions = self
                .subscriptions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (server.id.clone(), original.clone());
            if *method == Method::ResourcesSubscribe {
                // Past the bound the server still has the subscription,
                // but its updates are not relayed (each entry is a
                // client's choice; none may grow the map without end).
                if subscriptions.len() < MAX_SUBSCRIPTIONS || subscriptions.contains_key(&key) {
                    subscriptions.insert(key, shown.clone());
                } else {
                    tracing::warn!(
                        "more than {MAX_SUBSCRIPTIONS} resource subscriptions; {shown} is not relayed"
                    );
                }
            } else {
                subscriptions.remove(&key);
            }
        }
        self.audit(
            record,
            &params,
            credential.as_ref(),
            outcome.as_ref(),
            started,
            log_full,
        );
        outcome
    }

    /// Which server a request goes to and how it reads there.
    async fn resolve(
        self: &Arc<Self>,
        method: &Method,
        address: &Address,
        mut params: Value,
        dir: &std::path::Path,
    ) -> Result<Resolved, CallError> {
        match address {
            Address::Name(name) => {
                let routing = self.vault.routing();
                let prefixed = split_tool(name).and_then(|(namespace, original)| {
                    Some((routing.by_namespace.get(namespace)?.clone(), original))
                });
                let (server_id, original) = match prefixed {
                    Some(found) => found,
                    None => {
                        let kind = if *method == Method::ToolsCall {
                            ListKind::Tools
                        } else {
                            ListKind::Prompts
                        };
                        let server_id = self
                            .unprefixed_server(kind, name, dir)
                            .await
                            .ok_or_else(|| unknown(method, name))?;
                        (server_id, name.as_str())
                    }
                };
                match method {
                    Method::Complete => params["ref"]["name"] = Value::String(original.to_owned()),
                    _ => params["name"] = Value::String(original.to_owned()),
                }
                Ok(Resolved {
                    server_id,
                    rule_name: name.clone(),
                    params,
                    original_uri: None,
                })
            }
            Address::Uri(uri) => {
                let templates = *method == Method::Complete;
                let mut found = self.find_uri(uri, templates);
                if found.is_none() {
                    // Not listed yet in this session (or listed before a
                    // change): list, then look again.
                    self.aggregate(ListKind::Resources, dir).await;
                    self.aggregate(ListKind::Templates, dir).await;
                    found = self.find_uri(uri, templates);
                }
                let (entry, original) = found.ok_or_else(|| unknown(method, uri))?;
                match method {
                    Method::Complete => {
                        params["ref"]["uri"] = Value::String(original.clone());
                    }
                    _ => params["uri"] = Value::String(original.clone()),
                }
                Ok(Resolved {
                    server_id: entry.server_id,
                    rule_name: entry.rule_name,
                    params,
                    original_uri: Some(original),
                })
            }
        }
    }

    /// The server of an unprefixed tool or prompt name, as last listed (or
    /// listed now, when the name is not known yet).
    async fn unprefixed_server(
        self: &Arc<Self>,
        kind: ListKind,
        name: &str,
        dir: &std::path::Path,
    ) -> Option<String> {
        let key = (kind, name.to_owned());
        let known = |gateway: &Self| {
            gateway
                .resources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unprefixed
                .get(&key)
                .cloned()
        };
        if let Some(server_id) = known(self) {
            return Some(server_id);
        }
        if !self.vault.routing().servers.values().any(|s| s.unprefixed) {
            return None;
        }
        self.aggregate(kind, dir).await;
        known(self)
    }

    /// Where an exposed URI leads; for a completion, the template itself.
    fn find_uri(&self, uri: &str, template: bool) -> Option<(super::lists::Entry, String)> {
        let index = self
            .resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if template {
            return index
                .templates
                .get(uri)
                .map(|entry| (entry.clone(), entry.original.clone()));
        }
        index.find(uri)
    }

    /// Sends the request's audit record, redacted with the scope's hints
    /// and scrubbed of every released value, without delaying the answer.
    fn audit(
        &self,
        mut record: pb::AuditRecord,
        params: &Value,
        credential: Option<&Released>,
        outcome: Result<&Value, &CallError>,
        started: Instant,
        log_full: bool,
    ) {
        let hints = credential.map(|c| c.hints.clone()).unwrap_or_default();
        let nothing = Scrub::default();
        let scrub = credential.map_or(&nothing, Released::scrub);
        // What the client passed: a call's or prompt's arguments, else the
        // params without their `_meta`.
        let mut audited = match params.get("arguments") {
            Some(arguments) => arguments.clone(),
            None => {
                let mut rest = params.clone();
                if let Some(map) = rest.as_object_mut() {
                    map.remove("_meta");
                }
                if record.action.is_empty() {
                    Value::Null
                } else {
                    rest
                }
            }
        };
        redact(&mut audited, &hints, scrub);
        // The name is the client's text too.
        record.tool = scrub.text(&record.tool);
        record.params = audited.to_string();
        record.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok(result) => {
                let is_error = result
                    .get("isError")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                record.status = if is_error { "error" } else { "success" }.into();
                if log_full {
                    // Full logging: the response too, redacted the same way.
                    let mut response = result.clone();
                    redact(&mut response, &hints, scrub);
                    record.response = response.to_string();
                }
            }
            Err(err) => {
                record.status = if err.denied { "denied" } else { "error" }.into();
                record.error = scrub.text(&err.message);
            }
        }
        self.submit_audit(record);
    }
}

/// Renames the contents of a read from the URI at the server to the one
/// the client knows.
fn expose_uri(result: &mut Value, original: &str, shown: &str) {
    let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) else {
        return;
    };
    for content in contents {
        if content.get("uri").and_then(Value::as_str) == Some(original) {
            content["uri"] = Value::String(shown.to_owned());
        }
    }
}

/// What a request addresses, for messages.
fn noun(method: &Method) -> &'static str {
    match method {
        Method::ToolsCall => "tool",
        Method::PromptsGet => "prompt",
        Method::Complete => "completion for",
        _ => "resource",
    }
}

/// What a request names, from its params.
fn address(method: &Method, params: &Value) -> Result<Address, CallError> {
    let text = |pointer: &str, what: &str| {
        params
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                CallError::new(INVALID_PARAMS, format!("{} needs {what}", method.name()))
            })
    };
    match method {
        Method::ToolsCall => text("/name", "a tool name").map(Address::Name),
        Method::PromptsGet => text("/name", "a prompt name").map(Address::Name),
        Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
            text("/uri", "a resource uri").map(Address::Uri)
        }
        Method::Complete => match params.pointer("/ref/type").and_then(Value::as_str) {
            Some("ref/prompt") => text("/ref/name", "ref.name").map(Address::Name),
            Some("ref/resource") => text("/ref/uri", "ref.uri").map(Address::Uri),
            _ => Err(CallError::new(
                INVALID_PARAMS,
                "completion/complete needs a ref of type ref/prompt or ref/resource",
            )),
        },
        _ => Err(CallError::new(
            INVALID_PARAMS,
            format!("{} is not routed", method.name()),
        )),
    }
}

/// The answer for a name or URI that leads nowhere (or that the rules
/// hide: the same answer, so hidden names cannot be told from missing
/// ones).
fn unknown(method: &Method, shown: &str) -> CallError {
    match method {
        Method::ToolsCall => CallError::new(INVALID_PARAMS, format!("Unknown tool: {shown}")),
        Method::PromptsGet => CallError::new(INVALID_PARAMS, format!("Unknown prompt: {shown}")),
        Method::Complete if !shown.contains("://") => {
            CallError::new(INVALID_PARAMS, format!("Unknown prompt: {shown}"))
        }
        _ => CallError {
            data: Some(serde_json::json!({"uri": shown})),
            ..CallError::new(RESOURCE_NOT_FOUND, format!("Resource not found: {shown}"))
        },
    }
}
