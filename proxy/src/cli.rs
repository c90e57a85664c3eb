//! Command-line flags of mcplexer-proxy.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The MCPlexer MCP gateway: aggregates downstream MCP servers, routes each
/// tool call by route rules and injects the credential the vault releases
/// for it.
#[derive(Debug, Parser)]
#[command(name = "mcplexer-proxy", version, about)]
pub struct Cli {
    /// The vault's socket [default: $MCPLEXER_VAULT_SOCKET, else the user
    /// vault's socket if present, else /run/mcplexer/vault.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one MCP client on stdin/stdout.
    Stdio {
        /// The directory that picks the workspace [default: the current one].
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// Record every call's response in the audit log (redacted like the
        /// params), not only for rules with `log_full`.
        #[arg(long)]
        log_full: bool,
    },
    /// Serve MCP clients over streamable HTTP on loopback or a Unix socket.
    Serve {
        /// `127.0.0.1:PORT` (port 0: any free port), `[::1]:PORT`, or
        /// `unix:PATH`. The endpoint is printed on stdout once listening.
        /// Not needed when systemd passes the socket (mcplexer-proxy.socket).
        #[arg(long, value_name = "ADDR")]
        listen: Option<crate::serve::Listen>,
        /// The directory that picks the workspace of a client that declares
        /// no roots (one that does is placed by its first root) [default:
        /// the current one].
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
        /// Record every call's response in the audit log (redacted).
        #[arg(long)]
        log_full: bool,
        /// End a session, and stop its downstreams, once its client has
        /// sent nothing for SEC seconds and has no request or stream open
        /// (clients rarely end their sessions).
        #[arg(long, value_name = "SEC", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
        session_idle_timeout: u64,
    },
    /// Explain which rule, server and scope a call of TOOL would use, and why.
    DryRun {
        /// The exposed tool name, `<namespace>__<tool>`.
        tool: String,
        /// The directory that picks the workspace [default: the current one].
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
    },
}
