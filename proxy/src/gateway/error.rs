//! What the gateway answers when a request fails: a JSON-RPC error with
//! what the client needs to act on it, never a released value.

use serde_json::{Value, json};

use crate::downstream::DownstreamError;
use crate::vault::{Released, VaultError};

/// JSON-RPC error codes.
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP: the resource does not exist (or is hidden).
pub const RESOURCE_NOT_FOUND: i64 = -32002;

/// An error answered to the client.
#[derive(Debug)]
pub struct CallError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    /// A policy refusal (route rule, no rule, or the vault's refusal), as
    /// opposed to a failure: audited as `denied`.
    pub denied: bool,
    /// The client cancelled the call: no response is sent.
    pub cancelled: bool,
}

impl CallError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
            denied: false,
            cancelled: false,
        }
    }

    /// A downstream's JSON-RPC error, passed through (code, message, data).
    pub fn from_downstream(error: Value) -> Self {
        Self {
            code: error
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(INTERNAL_ERROR),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("downstream error")
                .to_owned(),
            data: error.get("data").cloned(),
            denied: false,
            cancelled: false,
        }
    }

    /// The error with every released value scrubbed from its message and
    /// data: a downstream may echo its credential in an error, and neither
    /// the client nor a log may see it.
    pub fn scrubbed(mut self, credential: Option<&Released>) -> Self {
        if let Some(credential) = credential {
            let scrub = credential.scrub();
            self.message = scrub.text(&self.message);
            if let Some(data) = &mut self.data {
                scrub.value(data);
            }
        }
        self
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self {
            denied: true,
            ..Self::new(INVALID_PARAMS, message)
        }
    }
}

impl From<VaultError> for CallError {
    fn from(err: VaultError) -> Self {
        let (data, denied) = match &err {
            VaultError::Refused {
                code,
                vault_code,
                fix,
                ..
            } => (
                json!({"vault_code": vault_code, "grpc_code": code, "fix": fix}),
                matches!(
                    vault_code.as_str(),
                    "PERMISSION_DENIED" | "TRANSPORT_MISMATCH"
                ),
            ),
            VaultError::Unreachable { .. } => (json!({"vault_code": "UNAVAILABLE"}), false),
        };
        Self {
            code: INTERNAL_ERROR,
            message: err.to_string(),
            data: Some(data),
            denied,
            cancelled: false,
        }
    }
}

impl From<DownstreamError> for CallError {
    fn from(err: DownstreamError) -> Self {
        let server = err.server().to_owned();
        Self {
            code: INTERNAL_ERROR,
            message: err.to_string(),
            data: Some(json!({"downstream": server})),
            denied: false,
            cancelled: matches!(err, DownstreamError::Cancelled { .. }),
        }
    }
}

pub fn response(id: &Value, result: Result<Value, CallError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            let mut error = json!({"code": e.code, "message": e.message});
            if let Some(data) = e.data {
                error["data"] = data;
            }
            json!({"jsonrpc": "2.0", "id": id, "error": error})
        }
    }
}
