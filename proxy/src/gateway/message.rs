//! A client's JSON-RPC message, parsed once into what it is: a request of a
//! method the gateway knows (or not), a notification, or a response to one
//! of the gateway's own requests.

use serde_json::Value;

/// A client's message.
#[derive(Debug)]
pub enum Incoming {
    /// A request: answered exactly once (unless the client cancels it).
    Request {
        /// Its id (never null).
        id: Value,
        /// What it asks.
        method: Method,
        /// Its params (`null` when absent).
        params: Value,
    },
    /// A notification: never answered.
    Notification {
        /// What it says.
        method: Notification,
        /// Its params (`null` when absent).
        params: Value,
    },
    /// A response to one of the gateway's requests to the client.
    Response(Value),
}

/// The methods a client may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `initialize`.
    Initialize,
    /// `ping`.
    Ping,
    /// `tools/list`.
    ToolsList,
    /// `tools/call`.
    ToolsCall,
    /// `prompts/list`.
    PromptsList,
    /// `prompts/get`.
    PromptsGet,
    /// `resources/list`.
    ResourcesList,
    /// `resources/templates/list`.
    ResourceTemplatesList,
    /// `resources/read`.
    ResourcesRead,
    /// `resources/subscribe`.
    ResourcesSubscribe,
    /// `resources/unsubscribe`.
    ResourcesUnsubscribe,
    /// `completion/complete`.
    Complete,
    /// `logging/setLevel`.
    SetLevel,
    /// `server/discover` (2026-07-28).
    Discover,
    /// `subscriptions/listen` (2026-07-28).
    Listen,
    /// Anything else: answered "method not found".
    Unknown(String),
}

impl Method {
    fn of(name: &str) -> Self {
        match name {
            "initialize" => Self::Initialize,
            "ping" => Self::Ping,
            "tools/list" => Self::ToolsList,
            "tools/call" => Self::ToolsCall,
            "prompts/list" => Self::PromptsList,
            "prompts/get" => Self::PromptsGet,
            "resources/list" => Self::ResourcesList,
            "resources/templates/list" => Self::ResourceTemplatesList,
            "resources/read" => Self::ResourcesRead,
            "resources/subscribe" => Self::ResourcesSubscribe,
            "resources/unsubscribe" => Self::ResourcesUnsubscribe,
            "completion/complete" => Self::Complete,
            "logging/setLevel" => Self::SetLevel,
            "server/discover" => Self::Discover,
            "subscriptions/listen" => Self::Listen,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// Its name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Self::Initialize => "initialize",
            Self::Ping => "ping",
            Self::ToolsList => "tools/list",
            Self::ToolsCall => "tools/call",
            Self::PromptsList => "prompts/list",
            Self::PromptsGet => "prompts/get",
            Self::ResourcesList => "resources/list",
            Self::ResourceTemplatesList => "resources/templates/list",
            Self::ResourcesRead => "resources/read",
            Self::ResourcesSubscribe => "resources/subscribe",
            Self::ResourcesUnsubscribe => "resources/unsubscribe",
            Self::Complete => "completion/complete",
            Self::SetLevel => "logging/setLevel",
            Self::Discover => "server/discover",
            Self::Listen => "subscriptions/listen",
            Self::Unknown(name) => name,
        }
    }
}

/// The notifications a client may send that the gateway acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// `notifications/cancelled`.
    Cancelled,
    /// `notifications/roots/list_changed`.
    RootsChanged,
    /// `notifications/initialized`.
    Initialized,
    /// Anything else (`notifications/initialized`, ...): nothing to do.
    Other,
}

/// Why a message is not one the gateway can take.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A request whose id is null.
    NullId,
    /// Neither a request, a notification nor a response.
    Shapeless,
}

impl Incoming {
    /// Sorts a message (already known to be a JSON object or not).
    pub fn parse(mut message: Value) -> Result<Self, Invalid> {
        let params = message
            .get_mut("params")
            .map(Value::take)
            .unwrap_or(Value::Null);
        let method = message.get("method").and_then(Value::as_str);
        match (message.get("id"), method) {
            (Some(Value::Null), Some(_)) => Err(Invalid::NullId),
            (Some(id), Some(method)) => Ok(Self::Request {
                id: id.clone(),
                method: Method::of(method),
                params,
            }),
            (None, Some(method)) => Ok(Self::Notification {
                method: match method {
                    "notifications/cancelled" => Notification::Cancelled,
                    "notifications/roots/list_changed" => Notification::RootsChanged,
                    "notifications/initialized" => Notification::Initialized,
                    _ => Notification::Other,
                },
                params,
            }),
            (Some(_), None)
                if message.get("result").is_some() || message.get("error").is_some() =>
            {
                Ok(Self::Response(message))
            }
            _ => Err(Invalid::Shapeless),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_sorted_once() {
        let request = Incoming::parse(
            json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "a"}}),
        )
        .unwrap();
        assert!(matches!(
            request,
            Incoming::Request { method: Method::PromptsGet, ref params, .. } if params["name"] == "a"
        ));
        assert!(matches!(
            Incoming::parse(json!({"id": "x", "method": "nope/nothing"})).unwrap(),
            Incoming::Request { method: Method::Unknown(ref m), .. } if m == "nope/nothing"
        ));
        assert_eq!(
            Incoming::parse(json!({"id": null, "method": "ping"})).unwrap_err(),
            Invalid::NullId
        );
        assert!(matches!(
            Incoming::parse(
                json!({"method": "notifications/cancelled", "params": {"requestId": 3}})
            )
            .unwrap(),
            Incoming::Notification {
                method: Notification::Cancelled,
                ..
            }
        ));
        assert!(matches!(
            Incoming::parse(json!({"id": "mcplexer-1", "result": {}})).unwrap(),
            Incoming::Response(_)
        ));
        assert_eq!(
            Incoming::parse(json!({"id": 1})).unwrap_err(),
            Invalid::Shapeless
        );
        for name in [
            "tools/call",
            "resources/templates/list",
            "logging/setLevel",
            "server/discover",
            "subscriptions/listen",
        ] {
            assert_eq!(Method::of(name).name(), name);
        }
    }
}
