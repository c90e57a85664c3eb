//! Command-line flags of mcplexer-vaultd.

use std::path::PathBuf;

use clap::Parser;

/// The MCPlexer credential vault: holds the secrets and releases them, per
/// call and audited, to the processes entitled to them.
#[derive(Debug, Parser)]
#[command(name = "mcplexer-vaultd", version, about, long_about = None)]
pub struct Cli {
    /// User mode: paths under $XDG_RUNTIME_DIR and $XDG_STATE_HOME, and the
    /// daemon's own uid is an admin. Implied when not started as root.
    #[arg(long, conflicts_with = "system")]
    pub user: bool,
    /// System mode (the packaged service): system paths, admins are root
    /// and the admin group. Implied when started as root; needed when the
    /// service is started as its own user.
    #[arg(long)]
    pub system: bool,
    /// In system mode, started as root: drop to this user (NAME, UID or
    /// UID:GID) and every capability before touching any file. Without it
    /// the vault refuses to run as root in system mode.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// The Unix socket to listen on [system: /run/mcplexer/vault.sock;
    /// user: $XDG_RUNTIME_DIR/mcplexer/vault.sock, or vault.sock in the
    /// user state directory when there is no XDG_RUNTIME_DIR].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The state directory (identity, database) [system: /var/lib/mcplexer;
    /// user: $XDG_STATE_HOME/mcplexer].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A YAML document applied at start (source: yaml) [default:
    /// config.yaml in /etc/mcplexer or $XDG_CONFIG_HOME/mcplexer, if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The age identity file [default: $CREDENTIALS_DIRECTORY/vault-identity,
    /// else identity.txt in the state directory, generated on first start].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Group whose members are admins (name or gid) [system default:
    /// mcplexer-admin].
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Group allowed to use the vault; the socket is made mode 0660 with this
    /// group (name or gid) [system default: mcplexer].
    #[arg(long, value_name = "GROUP")]
    pub client_group: Option<String>,
    /// Days audit records are kept.
    #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retention_days: u32,
    /// Connections one user (not an admin) may hold open to the socket at
    /// once; more are closed at accept. The total follows the descriptor
    /// limit (LimitNOFILE=), with room always kept for admins and for
    /// users holding few connections.
    #[arg(long, value_name = "N", default_value_t = crate::conn::Limits::DEFAULT_PER_USER, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16384))]
    pub max_connections_per_user: usize,
    /// Seconds a new connection has to start speaking HTTP/2 (the
    /// preface) before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout_sec: u64,
    /// Requests a user (not an admin) may start per second, in bursts of as
    /// many; more wait their turn (a proxy makes two per tool call). Bounds
    /// the share of the vault's CPU one user can take from the others.
    #[arg(long, value_name = "N", default_value_t = crate::limits::DEFAULT_USER_REQUEST_RATE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub user_request_rate: u32,
    /// Audit records a user's proxies may submit per second (bursts of ten
    /// times as many); more are refused, and counted in one record a
    /// minute.
    #[arg(long, value_name = "N", default_value_t = crate::limits::AuditLimits::DEFAULT_RATE, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub audit_rate: u32,
    /// MiB of audit records a user's proxies may submit per day.
    #[arg(long, value_name = "MIB", default_value_t = crate::limits::AuditLimits::DEFAULT_DAILY_MIB, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub audit_daily_mib: u32,
}
