//! The daemon's error type and its mapping onto gRPC statuses.
//!
//! Every error that crosses the socket carries a stable code (metadata
//! `mcplexer-error-code`), a message for people, and where one exists the
//! command that fixes it (metadata `mcplexer-error-fix`). No variant ever holds
//! a secret value: messages name scopes, keys and paths, never what they hold.

use mcplexer_proto::{ERROR_CODE_KEY, ERROR_FIX_KEY};
use tonic::metadata::MetadataValue;

/// An error of the vault, as a caller or an operator sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The caller may not do this (role, ownership or grant).
    #[error("{message}")]
    PermissionDenied {
        /// What was refused and why.
        message: String,
    },
    /// The request itself is malformed or invalid.
    #[error("{message}")]
    Invalid {
        /// What is wrong, naming the object and field.
        message: String,
        /// A command that fixes it, if one exists.
        fix: Option<String>,
    },
    /// A scope was routed to a server whose transport it cannot serve.
    #[error("{message}")]
    TransportMismatch {
        /// Names the scope, the server and (where known) the rule.
        message: String,
    },
    /// The object does not exist (or is not visible to the caller).
    #[error("{message}")]
    NotFound {
        /// Names the kind and id.
        message: String,
        /// A command that fixes it, if one exists.
        fix: Option<String>,
    },
    /// An object with this id already exists.
    #[error("{message}")]
    AlreadyExists {
        /// Names the kind and id.
        message: String,
    },
    /// The request is valid but the current state does not allow it.
    #[error("{message}")]
    FailedPrecondition {
        /// What stands in the way.
        message: String,
        /// A command that fixes it, if one exists.
        fix: Option<String>,
    },
    /// An oauth2 scope cannot give a token now: it was never authorized,
    /// its grant is gone, or its provider failed.
    #[error("{message}")]
    OAuth {
        /// The stable code (`UNAUTHORIZED`, `REAUTHORIZATION_REQUIRED`,
        /// `TOKEN_EXPIRED`, `PROVIDER_ERROR`, `PROVIDER_UNAVAILABLE`).
        code: &'static str,
        /// What happened, naming the scope.
        message: String,
        /// The command that fixes it, if one exists.
        fix: Option<String>,
        /// Whether trying again later may succeed by itself.
        retryable: bool,
    },
    /// The caller went past a bound on what one peer may use (time,
    /// connections, audit records); other callers are not affected.
    #[error("{message}")]
    LimitExceeded {
        /// Names the limit and what to do.
        message: String,
    },
    /// The identity is sealed: nothing can be decrypted until an
    /// administrator unlocks the vault.
    #[error(
        "the vault is sealed: its identity is locked with a passphrase, so no secret can be decrypted until an administrator unlocks it"
    )]
    Sealed,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// Encryption or decryption failed.
    #[error("cryptographic failure: {0}")]
    Crypto(String),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon is shutting down or its writer stopped.
    #[error("the vault is shutting down")]
    Unavailable,
}

impl VaultError {
    /// A permission error.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::PermissionDenied {
            message: message.into(),
        }
    }

    /// An invalid-input error without a fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            fix: None,
        }
    }

    /// A not-found error for `kind` `id`, with the command that lists them.
    pub fn not_found(kind: &str, id: &str, list_cmd: &str) -> Self {
        Self::NotFound {
            // A peer's id at most 64 characters long: a 4 MiB id never
            // comes back whole.
            message: format!("{kind} {:?} does not exist", crate::model::short(id)),
            fix: Some(format!("mcplexerctl {list_cmd} list")),
        }
    }

    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A bound on one peer was reached.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::LimitExceeded {
            message: message.into(),
        }
    }

    /// The stable code sent as `mcplexer-error-code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PermissionDenied { .. } => "PERMISSION_DENIED",
            Self::Invalid { .. } => "INVALID_ARGUMENT",
            Self::TransportMismatch { .. } => "TRANSPORT_MISMATCH",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::FailedPrecondition { .. } => "FAILED_PRECONDITION",
            Self::OAuth { code, .. } => code,
            Self::LimitExceeded { .. } => "RESOURCE_EXHAUSTED",
            Self::Sealed => "VAULT_SEALED",
            Self::Database(_) => "DATABASE",
            Self::Crypto(_) => "CRYPTO",
            Self::Io { .. } => "IO",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    fn fix(&self) -> Option<&str> {
        match self {
            Self::Sealed => Some("mcplexerctl unlock"),
            Self::Invalid { fix, .. }
            | Self::NotFound { fix, .. }
            | Self::FailedPrecondition { fix, .. }
            | Self::OAuth { fix, .. } => fix.as_deref(),
            _ => None,
        }
    }
}

impl From<VaultError> for tonic::Status {
    fn from(err: VaultError) -> Self {
        use tonic::Code;
        let code = match &err {
            VaultError::PermissionDenied { .. } => Code::PermissionDenied,
            VaultError::Invalid { .. } | VaultError::TransportMismatch { .. } => {
                Code::InvalidArgument
            }
            VaultError::NotFound { .. } => Code::NotFound,
            VaultError::AlreadyExists { .. } => Code::AlreadyExists,
            VaultError::FailedPrecondition { .. } | VaultError::Sealed => Code::FailedPrecondition,
            VaultError::OAuth { retryable, .. } => {
                if *retryable {
                    Code::Unavailable
                } else {
                    Code::FailedPrecondition
                }
            }
            VaultError::LimitExceeded { .. } => Code::ResourceExhausted,
            VaultError::Unavailable => Code::Unavailable,
            VaultError::Database(_) | VaultError::Crypto(_) | VaultError::Io { .. } => {
                Code::Internal
            }
        };
        if code == Code::Internal {
            // Internal details stay in the daemon's log; the caller gets a
            // stable code and a pointer to the log.
            tracing::error!(error = %err, "internal error");
        }
        let message = match code {
            Code::Internal => "internal error in the vault; see its log".to_owned(),
            _ => err.to_string(),
        };
        let mut status = tonic::Status::new(code, message);
        status
            .metadata_mut()
            .insert(ERROR_CODE_KEY, MetadataValue::from_static(err.code()));
        if let Some(fix) = err.fix()
            && let Ok(value) = MetadataValue::try_from(fix)
        {
            status.metadata_mut().insert(ERROR_FIX_KEY, value);
        }
        status
    }
}

/// Result of the daemon's domain operations.
pub type Result<T, E = VaultError> = std::result::Result<T, E>;
