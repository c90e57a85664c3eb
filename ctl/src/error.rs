//! How a command fails: the [`Failure`] type, its [`Exit`] status, and the
//! message printed on stderr.
//!
//! The vault's errors are `tonic::Status` values with a human message, the
//! stable code in metadata `mcplexer-error-code` and, when there is one, the
//! command that fixes the problem in `mcplexer-error-fix`. They are printed
//! as `error: <message>` and `fix: <command>`. The exit status follows the
//! gRPC code (see [`Exit`]). No secret ever reaches this module: the vault
//! never puts one in an error, and local errors carry only paths and reasons.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mcplexer_proto::{ConnectError, SOCKET_ENV};
use tonic::{Code, Status};

/// The exit status of `mcplexerctl`.
///
/// * 0 — success;
/// * 1 — failure: the vault cannot be reached, an internal or unavailable
///   error, a local I/O error;
/// * 2 — usage error: clap's own errors, an unreadable `-f` file, an empty
///   secret;
/// * 3 — refused: `PERMISSION_DENIED` or `UNAUTHENTICATED`;
/// * 4 — rejected input: `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`,
///   `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what was asked.
    Success = 0,
    /// The vault could not be reached or failed, or local I/O failed.
    Failure = 1,
    /// The command line or its local input was unusable.
    Usage = 2,
    /// The vault refused the caller.
    Refused = 3,
    /// The vault rejected the input.
    Rejected = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

impl Exit {
    /// The exit status for a gRPC status code.
    pub fn for_code(code: Code) -> Exit {
        match code {
            Code::Ok => Exit::Success,
            Code::PermissionDenied | Code::Unauthenticated => Exit::Refused,
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted => Exit::Rejected,
            _ => Exit::Failure,
        }
    }

    /// The exit status for a status from the vault: its gRPC code, or, when
    /// that is `UNKNOWN`, the gRPC name in the vault's stable error code.
    pub fn for_status(status: &Status) -> Exit {
        if status.code() != Code::Unknown {
            return Exit::for_code(status.code());
        }
        match stable_code(status) {
            Some("PERMISSION_DENIED" | "UNAUTHENTICATED") => Exit::Refused,
            Some(
                "INVALID_ARGUMENT"
                | "NOT_FOUND"
                | "ALREADY_EXISTS"
                | "FAILED_PRECONDITION"
                | "OUT_OF_RANGE"
                | "RESOURCE_EXHAUSTED",
            ) => Exit::Rejected,
            _ => Exit::Failure,
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The local input is unusable (an unreadable `-f` file, an empty or
    /// mistyped secret, a duplicate `K=V` key).
    Usage(anyhow::Error),
    /// The vault's socket could not be reached.
    Unreachable(ConnectError),
    /// The vault answered with an error.
    Vault {
        /// The vault's answer.
        status: Status,
        /// The socket the call went to, for transport errors.
        socket: Option<PathBuf>,
    },
    /// Anything else local: I/O on the terminal or stdout, serialisation.
    Local(anyhow::Error),
}

impl Failure {
    /// A usage error with this message.
    pub fn usage(message: impl std::fmt::Display) -> Failure {
        Failure::Usage(anyhow::anyhow!("{message}"))
    }

    /// Records the socket in a vault error, for the transport-error hint.
    pub fn with_socket(self, path: &Path) -> Failure {
        match self {
            Failure::Vault {
                status,
                socket: None,
            } => Failure::Vault {
                status,
                socket: Some(path.to_owned()),
            },
            other => other,
        }
    }

    /// Whether this is stdout closed under us (`mcplexerctl ... | head`),
    /// which is not worth a message.
    fn is_broken_pipe(&self) -> bool {
        match self {
            Failure::Local(e) => e
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }

    /// The exit status.
    pub fn exit(&self) -> Exit {
        match self {
            _ if self.is_broken_pipe() => Exit::Success,
            Failure::Usage(_) => Exit::Usage,
            Failure::Unreachable(_) | Failure::Local(_) => Exit::Failure,
            Failure::Vault { status, .. } => Exit::for_status(status),
        }
    }

    /// What to print on stderr (empty for a broken pipe); `verbose` adds the
    /// vault's stable error code.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = String::new();
        if self.is_broken_pipe() {
            return out;
        }
        match self {
            Failure::Usage(e) | Failure::Local(e) => {
                let _ = writeln!(out, "error: {e:#}");
            }
            Failure::Unreachable(e) => {
                let _ = writeln!(out, "error: {e}");
                let _ = writeln!(out, "hint: {}", unreachable_hint(e));
            }
            Failure::Vault { status, socket } => {
                let message = if status.message().is_empty() {
                    status.code().description()
                } else {
                    status.message()
                };
                let _ = writeln!(out, "error: {message}");
                let fix = mcplexer_proto::error_fix(status);
                if !fix.is_empty() {
                    let _ = writeln!(out, "fix: {fix}");
                }
                let code = stable_code(status);
                if verbose {
                    let _ = writeln!(out, "code: {} ({:?})", code.unwrap_or("-"), status.code());
                }
                // A status the vault did not write: the connection failed
                // (tonic says Unavailable, Unknown "transport error" or
                // Cancelled when the connection ended before an answer).
                if code.is_none()
                    && matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    )
                {
                    let path = socket
                        .as_deref()
                        .map_or_else(String::new, |p| format!(" at {}", p.display()));
                    let _ = writeln!(
                        out,
                        "hint: lost the connection to the vault{path}: it stopped, or it closed the connection because your uid holds as many connections to it as it allows (its log names the uid; close some clients). {}",
                        start_hint()
                    );
                }
            }
        }
        out
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Vault {
            status,
            socket: None,
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        Failure::Unreachable(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Local(e.into())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Local(e.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Local(e)
    }
}

/// The vault's stable error code, if it sent one.
fn stable_code(status: &Status) -> Option<&str> {
    Some(mcplexer_proto::error_code(status)).filter(|c| !c.is_empty())
}

fn start_hint() -> String {
    format!(
        "Start it with `mcplexer-vaultd --user` (or the system service), \
         or give its socket with --socket PATH or ${SOCKET_ENV}."
    )
}

fn unreachable_hint(e: &ConnectError) -> String {
    match e {
        ConnectError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
            "you may not use this socket: clients must be in the vault's client group \
             (default `mcplexer`; log in again after being added), \
             or give another socket with --socket PATH"
                .to_owned()
        }
        ConnectError::Transport { .. } => "the vault accepted the connection and closed it: it is stopping, or your uid holds as many connections to it as it allows (its log names the uid; close some clients)".to_owned(),
        _ => format!("is the vault running? {}", start_hint()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcplexer_proto::{ERROR_CODE_KEY, ERROR_FIX_KEY};
    use tonic::metadata::MetadataValue;

    fn with_meta(status: Status, code: &'static str, fix: Option<&'static str>) -> Status {
        let mut status = status;
        status
            .metadata_mut()
            .insert(ERROR_CODE_KEY, MetadataValue::from_static(code));
        if let Some(fix) = fix {
            status
                .metadata_mut()
                .insert(ERROR_FIX_KEY, MetadataValue::from_static(fix));
        }
        status
    }

    #[test]
    fn exit_codes_follow_grpc_codes() {
        assert_eq!(Exit::for_code(Code::Ok), Exit::Success);
        for code in [Code::PermissionDenied, Code::Unauthenticated] {
            assert_eq!(Exit::for_code(code), Exit::Refused, "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::ResourceExhausted,
        ] {
            assert_eq!(Exit::for_code(code), Exit::Rejected, "{code:?}");
        }
        for code in [
            Code::Internal,
            Code::Unavailable,
            Code::Unknown,
            Code::Unimplemented,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Aborted,
            Code::DataLoss,
        ] {
            assert_eq!(Exit::for_code(code), Exit::Failure, "{code:?}");
        }
        assert_eq!(Exit::Rejected as u8, 4);
    }

    #[test]
    fn unknown_status_falls_back_to_stable_code() {
        let s = with_meta(Status::unknown("x"), "PERMISSION_DENIED", None);
        assert_eq!(Exit::for_status(&s), Exit::Refused);
        let s = with_meta(Status::unknown("x"), "NOT_FOUND", None);
        assert_eq!(Exit::for_status(&s), Exit::Rejected);
        let s = with_meta(Status::unknown("x"), "VAULT_LOCKED", None);
        assert_eq!(Exit::for_status(&s), Exit::Failure);
        // The gRPC code wins when it is known.
        let s = with_meta(Status::failed_precondition("x"), "TRANSPORT_MISMATCH", None);
        assert_eq!(Exit::for_status(&s), Exit::Rejected);
    }

    #[test]
    fn vault_error_prints_message_and_fix() {
        let s = with_meta(
            Status::failed_precondition("scope github needs authorisation"),
            "REAUTHORIZATION_REQUIRED",
            Some("mcplexerctl auth authorize github"),
        );
        let f = Failure::from(s);
        assert_eq!(
            f.render(false),
            "error: scope github needs authorisation\nfix: mcplexerctl auth authorize github\n"
        );
        assert!(f.render(true).contains("code: REAUTHORIZATION_REQUIRED"));
        assert_eq!(f.exit(), Exit::Rejected);
    }

    #[test]
    fn transport_error_names_the_socket() {
        let f = Failure::from(Status::unavailable("connection reset"))
            .with_socket(Path::new("/run/x.sock"));
        let text = f.render(false);
        assert!(text.starts_with("error: connection reset\n"));
        assert!(text.contains("/run/x.sock"));
        assert!(text.contains("mcplexer-vaultd --user"));
        assert_eq!(f.exit(), Exit::Failure);
    }

    #[test]
    fn local_errors() {
        assert_eq!(Failure::usage("empty").exit(), Exit::Usage);
        assert_eq!(Failure::usage("empty").render(false), "error: empty\n");
        let other = Failure::from(io::Error::other("disk"));
        assert_eq!(other.exit(), Exit::Failure);
        let pipe = Failure::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(pipe.exit(), Exit::Success);
        assert_eq!(pipe.render(false), "");
    }

    #[test]
    fn unreachable_vault_suggests_starting_it() {
        let e = ConnectError::Io {
            path: "/tmp/none.sock".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let f = Failure::from(e);
        let text = f.render(false);
        assert!(text.contains("/tmp/none.sock"), "{text}");
        assert!(text.contains("mcplexer-vaultd --user"), "{text}");
        assert!(text.contains("MCPLEXER_VAULT_SOCKET"), "{text}");
        assert_eq!(f.exit(), Exit::Failure);
    }
}
