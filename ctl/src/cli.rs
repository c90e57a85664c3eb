//! The command line of `mcplexerctl`, declared with clap's derive API.
//!
//! This module only parses syntax: numbers, `K=V` pairs and times. Every
//! value the vault understands (ids, globs, enumerations such as `--type` or
//! `--policy`) is passed through as written, and the vault validates it and
//! names the offending object in its error. Nothing here reads a secret: the
//! commands that store one take it from stdin or a no-echo prompt, never from
//! the arguments.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::time::{Since, parse_since};

/// The `--help` text that documents the socket and the exit status.
const LONG_ABOUT: &str = "\
Administration and self-service client of the MCPlexer vault.

Talks to mcplexer-vaultd over its Unix socket. The vault authorises every call \
from your uid: admins manage everything, other users the objects they own. \
Secret values are write-only: they are read from stdin or a no-echo prompt, \
never from the command line, and never shown.

The socket is --socket PATH, else $MCPLEXER_VAULT_SOCKET, else \
$XDG_RUNTIME_DIR/mcplexer/vault.sock when it exists, else /run/mcplexer/vault.sock.

Exit status:
  0  success
  1  failure: the vault cannot be reached, an internal or unavailable error,
     a local I/O error
  2  usage error: bad arguments, an unreadable -f file, an empty secret
  3  refused by the vault: PERMISSION_DENIED, UNAUTHENTICATED
  4  input rejected by the vault: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
     FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED";

/// `mcplexerctl [--socket PATH] [--json] [-v] <command>`.
#[derive(Debug, Parser)]
#[command(
    name = "mcplexerctl",
    version,
    about = "Administration and self-service client of the MCPlexer vault",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// The vault's Unix socket [default: $MCPLEXER_VAULT_SOCKET, the user-mode
    /// socket if it exists, else /run/mcplexer/vault.sock].
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub socket: Option<PathBuf>,

    /// Print the vault's answer as JSON (lists as a JSON array).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Say what is being done, on stderr.
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the vault's version, mode, identity and object counts, and who you are to it.
    Status,
    /// Apply a declarative YAML document (auth_scopes, oauth_providers,
    /// downstream_servers, workspaces, route_rules).
    Apply(ApplyArgs),
    /// Print the configuration you can see as a YAML document `apply` accepts.
    Export,
    /// Manage auth scopes (named sets of credentials).
    #[command(subcommand)]
    Scope(ScopeCommand),
    /// Manage the secret values of an auth scope (keys only are ever shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage OAuth 2 providers.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Manage downstream MCP servers.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Manage workspaces (directory trees with their own route rules).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Manage route rules (which tools go to which server with which scope).
    #[command(subcommand)]
    Route(RouteCommand),
    /// Query or follow the audit log.
    Audit(AuditArgs),
    /// OAuth 2 authorization of oauth2 scopes (authorize, status, revoke).
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Manage the vault's age identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Unlock a sealed vault with its identity's passphrase (admins). The
    /// passphrase is asked without echo, or read from stdin when it is not
    /// a terminal; never from the command line.
    Unlock,
    /// Serve the configuration web UI on loopback, for your browser only:
    /// auth scopes, secrets, OAuth authorization, providers, routes, audit.
    /// Prints a sign-in link that works once; runs until Ctrl-C.
    ///
    /// Signed out, or the link used? `kill -USR1 PID` makes it print a
    /// fresh sign-in link on its terminal, without a restart (only the
    /// newest link printed works; signing in with it replaces the previous
    /// session).
    Ui(UiArgs),
}

/// `ui [--listen ADDR:PORT] [--no-browser]`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// The loopback address and port to listen on (port 0: a free one).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Print the sign-in link instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
}

/// `apply -f FILE [--dry-run]`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The YAML document; '-' reads stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Show what would change without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// `scope ...`.
#[derive(Debug, Subcommand)]
pub enum ScopeCommand {
    /// List the auth scopes you can see.
    List,
    /// Show one auth scope.
    Show {
        /// The scope's id.
        id: String,
    },
    /// Create an auth scope (then store its values with `secret set`).
    Create(ScopeCreate),
    /// Delete an auth scope and its secret values.
    Delete {
        /// The scope's id.
        id: String,
    },
}

/// `scope create ...`.
#[derive(Debug, Args)]
pub struct ScopeCreate {
    /// Human name; the id is derived from it unless --id is given.
    #[arg(long)]
    pub name: String,
    /// Explicit id.
    #[arg(long)]
    pub id: Option<String>,
    /// How the values are injected: env | header | oauth2.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// A key to redact from audited params (repeatable).
    #[arg(long = "redact", value_name = "KEY")]
    pub redact: Vec<String>,
    /// The OAuth provider (oauth2 scopes).
    #[arg(long, value_name = "ID")]
    pub provider: Option<String>,
    /// oauth2 on stdio: the variable that receives the access token.
    #[arg(long, value_name = "VAR")]
    pub token_env_var: Option<String>,
    /// Owning uid [default: yours].
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
    /// A user (name or uid) the scope is released to (repeatable).
    #[arg(long = "grant-user", value_name = "USER")]
    pub grant_users: Vec<String>,
    /// A group (name or gid) whose members the scope is released to (repeatable).
    #[arg(long = "grant-group", value_name = "GROUP")]
    pub grant_groups: Vec<String>,
}

/// `secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store one value of a scope, read from stdin or a no-echo prompt.
    #[command(
        after_help = "The value is read from stdin when stdin is not a terminal \
(one trailing newline is removed), else from a no-echo prompt asked twice. \
It is never taken from the command line."
    )]
    Set {
        /// The scope's id.
        scope: String,
        /// The key (environment variable or header name).
        key: String,
        /// Catches a value wrongly given as an argument, to refuse it
        /// without echoing it (zeroized, never used).
        #[arg(hide = true)]
        misplaced: Vec<String>,
    },
    /// List the keys stored in a scope (values are never shown).
    List {
        /// The scope's id.
        scope: String,
    },
    /// Delete one value of a scope.
    Delete {
        /// The scope's id.
        scope: String,
        /// The key.
        key: String,
    },
}

/// `auth ...`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Authorize an oauth2 scope at its provider: in a browser (PKCE), or
    /// with --device on another device.
    Authorize(AuthAuthorize),
    /// Show the authorization state of oauth2 scopes: status, expiry,
    /// granted scopes, last refresh.
    Status {
        /// One scope [default: every oauth2 scope you can see].
        scope: Option<String>,
    },
    /// Revoke a scope's tokens at the provider (RFC 7009, when it has an
    /// endpoint) and delete them from the vault.
    Revoke {
        /// The scope.
        scope: String,
        /// Only delete them from the vault (after revoking the grant at the
        /// provider by other means).
        #[arg(long)]
        local: bool,
    },
}

/// `auth authorize SCOPE ...`.
#[derive(Debug, Args)]
#[command(
    after_help = "The browser flow listens on the provider's loopback redirect URI \
(http://127.0.0.1/callback on a free port unless the provider names a port). With \
--no-browser the URL is printed as the first line on stdout. The PKCE verifier and the \
client secret stay in the vault, which exchanges the code."
)]
pub struct AuthAuthorize {
    /// The oauth2 scope.
    pub scope: String,
    /// Print the URL instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Use the device authorization grant (RFC 8628): a code to enter on
    /// another device.
    #[arg(long, conflicts_with_all = ["no_browser", "redirect_uri"])]
    pub device: bool,
    /// How long to wait for the browser, in seconds (at most 600).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Listen on this loopback URI instead of the provider's redirect_uri.
    #[arg(long, value_name = "URL")]
    pub redirect_uri: Option<String>,
}

/// `provider ...`.
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// List the built-in provider templates (GitHub, GitLab, Google,
    /// Notion, Linear, ClickUp, Microsoft) with their endpoints.
    Templates,
    /// List the OAuth providers you can see.
    List,
    /// Show one OAuth provider.
    Show {
        /// The provider's id.
        id: String,
    },
    /// Create an OAuth provider.
    Create(Box<ProviderCreate>),
    /// Delete an OAuth provider.
    Delete {
        /// The provider's id.
        id: String,
    },
    /// Store the provider's OAuth client secret, read from stdin or a no-echo prompt.
    #[command(
        after_help = "The secret is read from stdin when stdin is not a terminal \
(one trailing newline is removed), else from a no-echo prompt asked twice. \
It is never taken from the command line."
    )]
    SetSecret {
        /// The provider's id.
        id: String,
        /// Catches a secret wrongly given as an argument, to refuse it
        /// without echoing it (zeroized, never used).
        #[arg(hide = true)]
        misplaced: Vec<String>,
    },
}

/// `provider create ...`.
#[derive(Debug, Args)]
#[command(
    after_help = "With --template, only --client-id is needed (then `provider set-secret` \
for a confidential client); the template fills the endpoints, scopes and parameters, and \
any option given here overrides it. Without a template, --name, --auth-url and --token-url \
are required."
)]
pub struct ProviderCreate {
    /// A built-in template (see `provider templates`).
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// A template placeholder, e.g. base_url=https://gitlab.example.com or
    /// tenant=contoso.onmicrosoft.com (repeatable).
    #[arg(long = "template-param", value_name = "K=V", value_parser = parse_key_value)]
    pub template_params: Vec<(String, String)>,
    /// Human name; the id is derived from it unless --id is given
    /// [default with a template: the template's name].
    #[arg(long, required_unless_present = "template")]
    pub name: Option<String>,
    /// Explicit id.
    #[arg(long)]
    pub id: Option<String>,
    /// Authorization endpoint.
    #[arg(long, value_name = "URL", required_unless_present_any = ["template", "issuer"])]
    pub auth_url: Option<String>,
    /// Token endpoint.
    #[arg(long, value_name = "URL", required_unless_present_any = ["template", "issuer"])]
    pub token_url: Option<String>,
    /// Device authorization endpoint (RFC 8628).
    #[arg(long, value_name = "URL")]
    pub device_auth_url: Option<String>,
    /// Token revocation endpoint (RFC 7009).
    #[arg(long, value_name = "URL")]
    pub revocation_url: Option<String>,
    /// The authorization server's issuer: the vault reads its metadata
    /// (RFC 8414, else OpenID discovery) for the endpoints not given, and an
    /// `iss` in the authorization response must equal it (RFC 9207).
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// An OAuth scope to request (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// What joins the scopes in requests: " ", "," or "+".
    #[arg(long, value_name = "SEP")]
    pub scope_separator: Option<String>,
    /// The OAuth client id.
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// How a client with a secret authenticates to the token endpoint.
    #[arg(long, value_name = "METHOD", value_parser = ["client_secret_basic", "client_secret_post"])]
    pub client_auth: Option<String>,
    /// The body of token requests.
    #[arg(long, value_name = "FORMAT", value_parser = ["form", "json"])]
    pub token_format: Option<String>,
    /// Do not use PKCE.
    #[arg(long)]
    pub no_pkce: bool,
    /// Redirect URI registered with the provider (loopback), where
    /// `auth authorize` listens [default: http://127.0.0.1/callback on a free port].
    #[arg(long, value_name = "URL")]
    pub redirect_uri: Option<String>,
    /// An extra authorization parameter, e.g. access_type=offline (repeatable).
    #[arg(long = "param", value_name = "K=V", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// A header for the token endpoints, e.g. Notion-Version=2022-06-28 (repeatable).
    #[arg(long = "token-header", value_name = "K=V", value_parser = parse_key_value)]
    pub token_headers: Vec<(String, String)>,
}

/// `server ...`.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List the downstream servers you can see.
    List,
    /// Show one downstream server.
    Show {
        /// The server's id.
        id: String,
    },
    /// Create a downstream server.
    Create(Box<ServerCreate>),
    /// Delete a downstream server.
    Delete {
        /// The server's id.
        id: String,
    },
}

/// `server create ...`.
#[derive(Debug, Args)]
pub struct ServerCreate {
    /// Human name; the id is derived from it unless --id is given.
    #[arg(long)]
    pub name: String,
    /// Explicit id.
    #[arg(long)]
    pub id: Option<String>,
    /// stdio | http.
    #[arg(long, value_name = "TRANSPORT")]
    pub transport: String,
    /// stdio: the program to run.
    #[arg(long)]
    pub command: Option<String>,
    /// stdio: one argument of the program (repeatable; may start with '-').
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// stdio: a non-secret environment variable (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// http: the server's URL.
    #[arg(long)]
    pub url: Option<String>,
    /// Tool namespace (tools are exposed as NS__tool).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Expose its tools and prompts under their own names, without the
    /// namespace (a workspace routes to at most one such server).
    #[arg(long)]
    pub unprefixed: bool,
    /// Stop an idle stdio server after SEC seconds.
    #[arg(long, value_name = "SEC")]
    pub idle_timeout: Option<u32>,
    /// Fail a call after SEC seconds.
    #[arg(long, value_name = "SEC")]
    pub call_timeout: Option<u32>,
    /// never | on-failure | always.
    #[arg(long, value_name = "POLICY")]
    pub restart_policy: Option<String>,
    /// stdio: the directory the server runs in (absolute, or ~/...)
    /// [default: the proxy user's home; never the client's project].
    #[arg(long, value_name = "DIR")]
    pub working_dir: Option<String>,
}

/// `workspace ...`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// List the workspaces you can see.
    List,
    /// Show one workspace.
    Show {
        /// The workspace's id.
        id: String,
    },
    /// Create a workspace.
    Create(WorkspaceCreate),
    /// Delete a workspace.
    Delete {
        /// The workspace's id.
        id: String,
    },
}

/// `workspace create ...`.
#[derive(Debug, Args)]
pub struct WorkspaceCreate {
    /// Human name; the id is derived from it unless --id is given.
    #[arg(long)]
    pub name: String,
    /// Explicit id.
    #[arg(long)]
    pub id: Option<String>,
    /// The directory tree the workspace covers.
    #[arg(long, value_name = "PATH")]
    pub root: String,
    /// allow | deny: what happens when no rule matches [vault default: deny].
    #[arg(long, value_name = "POLICY")]
    pub default_policy: Option<String>,
}

/// `route ...`.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// List the route rules you can see.
    List,
    /// Show one route rule.
    Show {
        /// The rule's id.
        id: String,
    },
    /// Create a route rule.
    Create(RouteCreate),
    /// Delete a route rule.
    Delete {
        /// The rule's id.
        id: String,
    },
    /// Accept the rule's server as it is now: a route of yours that sends
    /// your scope to a server an admin runs is suspended when that server
    /// changes, until you confirm (see `route show`).
    Confirm {
        /// The rule's id.
        id: String,
    },
}

/// `route create ...`.
#[derive(Debug, Args)]
pub struct RouteCreate {
    /// Human name; the id is derived from it unless --id is given.
    #[arg(long)]
    pub name: String,
    /// Explicit id.
    #[arg(long)]
    pub id: Option<String>,
    /// Higher wins among equally specific rules.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// The workspace the rule belongs to.
    #[arg(long, value_name = "ID", default_value = "default")]
    pub workspace: String,
    /// Tool-name glob, e.g. 'github__*' (one or more; repeatable).
    #[arg(long = "match", value_name = "GLOB", required = true, num_args = 1..)]
    pub matches: Vec<String>,
    /// The downstream server calls go to.
    #[arg(long, value_name = "ID")]
    pub server: Option<String>,
    /// The auth scope injected into those calls.
    #[arg(long, value_name = "ID")]
    pub scope: Option<String>,
    /// allow | deny.
    #[arg(long, value_name = "POLICY", default_value = "allow")]
    pub policy: String,
    /// Also record the (redacted) response of each call in the audit log.
    #[arg(long)]
    pub log_full: bool,
}

/// `audit ...`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only tools matching this glob.
    #[arg(long, value_name = "GLOB")]
    pub tool: Option<String>,
    /// Only records since T: a duration ago (30s, 10m, 2h, 7d, 1h30m), an
    /// RFC 3339 time (2026-11-26T06:00:00Z) or unix seconds.
    #[arg(long, value_name = "T", value_parser = parse_since)]
    pub since: Option<Since>,
    /// At most N records, newest last [vault default: 100].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only records of this auth scope.
    #[arg(long, value_name = "ID")]
    pub scope: Option<String>,
    /// Only records with this status: success | error | denied.
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// Only records of this kind: release | call | admin | oauth (refreshes).
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Admins only: only records of this uid.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Keep printing new records as they are written (until interrupted).
    #[arg(long)]
    pub follow: bool,
}

/// `identity ...`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Generate a new age identity and re-encrypt everything to it. When
    /// the identity is sealed, asks for the passphrase to seal the new one
    /// with (which may differ from the old one).
    Rotate,
    /// Replace the vault's identity with a new one sealed with a passphrase
    /// (age scrypt), re-encrypting everything to it: from its next start
    /// the vault is sealed, releasing nothing until an administrator runs
    /// `mcplexerctl unlock`. The passphrase is asked twice without echo, or
    /// read from stdin.
    Seal,
}

/// Parses `K=V` (split at the first `=`; `V` may be empty or contain `=`).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("'{s}': the key before '=' is empty")),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("'{s}': expected K=V")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value() {
        assert_eq!(parse_key_value("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(parse_key_value("a=").unwrap(), ("a".into(), String::new()));
        assert_eq!(
            parse_key_value("url=http://x/?a=b").unwrap(),
            ("url".into(), "http://x/?a=b".into())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = Cli::try_parse_from(["mcplexerctl", "scope", "list", "--json", "--socket", "/s"])
            .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, Some(PathBuf::from("/s")));
        let cli = Cli::try_parse_from(["mcplexerctl", "--json", "status"]).unwrap();
        assert!(cli.json);
    }

    #[test]
    fn secret_value_given_as_argument_is_caught() {
        let cli = Cli::try_parse_from(["mcplexerctl", "secret", "set", "s", "K", "value"]).unwrap();
        let Command::Secret(SecretCommand::Set { misplaced, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(misplaced, ["value"]);
        let cli = Cli::try_parse_from(["mcplexerctl", "provider", "set-secret", "p", "v"]).unwrap();
        let Command::Provider(ProviderCommand::SetSecret { misplaced, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(misplaced, ["v"]);
    }

    #[test]
    fn route_create_defaults() {
        let cli = Cli::try_parse_from([
            "mcplexerctl",
            "route",
            "create",
            "--name",
            "gh",
            "--match",
            "github__*",
            "github__x",
            "--priority",
            "-5",
        ])
        .unwrap();
        let Command::Route(RouteCommand::Create(r)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(r.workspace, "default");
        assert_eq!(r.policy, "allow");
        assert_eq!(r.priority, Some(-5));
        assert_eq!(r.matches, ["github__*", "github__x"]);
    }

    #[test]
    fn server_args_may_start_with_a_dash() {
        let cli = Cli::try_parse_from([
            "mcplexerctl",
            "server",
            "create",
            "--name",
            "fs",
            "--transport",
            "stdio",
            "--command",
            "npx",
            "--arg",
            "-y",
            "--arg",
            "pkg",
            "--env",
            "A=1",
        ])
        .unwrap();
        let Command::Server(ServerCommand::Create(s)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(s.args, ["-y", "pkg"]);
        assert_eq!(s.env, [("A".to_owned(), "1".to_owned())]);
    }
}
