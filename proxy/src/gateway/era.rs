//! The two protocol eras a client may speak: the session-based revisions up
//! to 2025-11-25 (`initialize` first) and the stateless 2026-07-28 (every
//! request names its version and the client's capabilities in `_meta`;
//! `server/discover`; `resultType` on every result; list changes only on a
//! `subscriptions/listen` stream). A stdio connection keeps the era of its
//! first request, as the official SDKs do.

use serde_json::{Value, json};

use super::SUPPORTED_VERSIONS;
use super::error::{CallError, INVALID_PARAMS, INVALID_REQUEST};
use super::message::Method;

/// The stateless revisions the proxy serves, newest first.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

/// `_meta` keys of the stateless revision.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The client's capabilities for this request.
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// Who answers.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// The listen request a notification belongs to.
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";

/// 2026-07-28: the version is not one the server supports.
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// 2026-07-28: an HTTP header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;

/// The stateless protocol version a message names in its `_meta`, if any.
pub fn stateless_version(message: &Value) -> Option<&str> {
    message
        .pointer("/params/_meta")
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
}

pub use crate::downstream::Era;

/// Every version the proxy serves, stateless ones first.
pub fn all_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .chain(SUPPORTED_VERSIONS)
        .copied()
        .collect()
}

/// The era a request speaks: modern when its `_meta` names a protocol
/// version (which must be one served, with the client's capabilities
/// beside it).
pub fn of_request(params: &Value) -> Result<Era, CallError> {
    let Some(version) = params.pointer("/_meta").and_then(|m| m.get(META_VERSION)) else {
        return Ok(Era::Legacy);
    };
    let version = version.as_str().unwrap_or_default();
    if !MODERN_VERSIONS.contains(&version) {
        return Err(unsupported(version));
    }
    let declared = params
        .pointer("/_meta")
        .and_then(|m| m.get(META_CAPABILITIES))
        .is_some_and(Value::is_object);
    if !declared {
        return Err(CallError::new(
            INVALID_PARAMS,
            format!("_meta[{META_CAPABILITIES:?}] is required (an object; {{}} for none)"),
        ));
    }
    Ok(Era::Modern)
}

/// A request's params as a downstream in the session era gets them: the
/// envelope is rebuilt per hop, so the client's stateless `_meta` keys (its
/// version, capabilities, identity) and its multi-round-trip fields stay
/// here; what else `_meta` holds (a progress token, trace context) goes on.
pub fn for_downstream(params: &mut Value) {
    let Some(map) = params.as_object_mut() else {
        return;
    };
    map.remove("inputResponses");
    map.remove("requestState");
    let empty = match map.get_mut("_meta").and_then(Value::as_object_mut) {
        Some(meta) => {
            meta.retain(|key, _| !key.starts_with("io.modelcontextprotocol/"));
            meta.is_empty()
        }
        None => false,
    };
    if empty {
        map.remove("_meta");
    }
}

/// The error for a version the proxy does not serve.
pub fn unsupported(requested: &str) -> CallError {
    CallError {
        data: Some(json!({"supported": all_versions(), "requested": requested})),
        ..CallError::new(
            UNSUPPORTED_VERSION,
            format!("protocol version {requested:?} is not supported"),
        )
    }
}

/// The error for a request of the other era on a connection that keeps
/// the era it began with.
pub fn mixed(locked: Era) -> CallError {
    match locked {
        // A late initialize: the client may start over in the stateless era.
        Era::Modern => CallError {
            data: Some(json!({"supported": MODERN_VERSIONS, "requested": "initialize"})),
            ..CallError::new(
                UNSUPPORTED_VERSION,
                "this connection speaks the stateless protocol (2026-07-28); initialize is not used",
            )
        },
        Era::Legacy => CallError::new(
            INVALID_REQUEST,
            "this connection began with initialize and speaks that protocol; send requests without a protocolVersion in _meta",
        ),
    }
}

/// Who the proxy is, for `_meta`.
fn server_info() -> Value {
    json!({"name": "mcplexer-proxy", "version": env!("CARGO_PKG_VERSION")})
}

/// A stateless result: `resultType` and the proxy's `serverInfo`; for the
/// cacheable ones, a lifetime of 0 (what a client may see changes with the
/// vault and the rules at any time) and a private scope (it is this user's).
pub fn complete(mut result: Value, method: &Method) -> Value {
    let Some(map) = result.as_object_mut() else {
        return result;
    };
    map.entry("resultType")
        .or_insert_with(|| Value::String("complete".into()));
    let cacheable = matches!(
        method,
        Method::Discover
            | Method::ToolsList
            | Method::PromptsList
            | Method::ResourcesList
            | Method::ResourceTemplatesList
            | Method::ResourcesRead
    );
    if cacheable {
        map.insert("ttlMs".into(), json!(0));
        map.insert("cacheScope".into(), json!("private"));
    }
    let meta = map.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(META_SERVER_INFO.into(), server_info());
    }
    result
}

/// The `server/discover` answer: every version served, the capabilities
/// a stateless client gets from the aggregate (no subscriptions to single
/// resources, no logging: neither is relayed in this era yet).
pub fn discover() -> Value {
    json!({
        "supportedVersions": all_versions(),
        "capabilities": {
            "tools": {"listChanged": true},
            "prompts": {"listChanged": true},
            "resources": {"listChanged": true},
            "completions": {},
        },
    })
}

/// What a `subscriptions/listen` filter asks for, and the part of it the
/// proxy honours (list changes; not single resources yet).
pub fn honoured(filter: &Value) -> Value {
    let mut honoured = serde_json::Map::new();
    for key in [
        "toolsListChanged",
        "promptsListChanged",
        "resourcesListChanged",
    ] {
        if filter.get(key).and_then(Value::as_bool) == Some(true) {
            honoured.insert(key.into(), Value::Bool(true));
        }
    }
    Value::Object(honoured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_era_is_read_from_meta() {
        assert_eq!(of_request(&json!({"name": "x"})).unwrap(), Era::Legacy);
        assert_eq!(of_request(&Value::Null).unwrap(), Era::Legacy);
        let modern = json!({"_meta": {META_VERSION: "2026-07-28", META_CAPABILITIES: {}}});
        assert_eq!(of_request(&modern).unwrap(), Era::Modern);
        let unknown =
            of_request(&json!({"_meta": {META_VERSION: "2099-01-01", META_CAPABILITIES: {}}}))
                .unwrap_err();
        assert_eq!(unknown.code, UNSUPPORTED_VERSION);
        assert_eq!(unknown.data.unwrap()["requested"], "2099-01-01");
        let no_capabilities =
            of_request(&json!({"_meta": {META_VERSION: "2026-07-28"}})).unwrap_err();
        assert_eq!(no_capabilities.code, INVALID_PARAMS);
    }

    #[test]
    fn the_stateless_envelope_stays_at_the_proxy() {
        let mut params = json!({"name": "t", "_meta": {
            META_VERSION: "2026-07-28", META_CAPABILITIES: {}, "progressToken": 7}});
        for_downstream(&mut params);
        assert_eq!(params, json!({"name": "t", "_meta": {"progressToken": 7}}));
        let mut params = json!({"uri": "a://b", "_meta": {META_VERSION: "2026-07-28"}});
        for_downstream(&mut params);
        assert_eq!(params, json!({"uri": "a://b"}));
    }

    #[test]
    fn stateless_results_are_marked_complete_and_uncached() {
        let list = complete(json!({"tools": []}), &Method::ToolsList);
        assert_eq!(list["resultType"], "complete");
        assert_eq!(list["ttlMs"], 0);
        assert_eq!(list["cacheScope"], "private");
        assert_eq!(list["_meta"][META_SERVER_INFO]["name"], "mcplexer-proxy");
        let call = complete(json!({"content": []}), &Method::ToolsCall);
        assert!(call.get("ttlMs").is_none());
        assert_eq!(call["resultType"], "complete");
    }
}
