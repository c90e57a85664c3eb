//! mcplexer-vaultd: the MCPlexer credential vault.
//!
//! The only process that holds the age identity and decrypted secrets. It
//! serves the Admin and Vault gRPC services on a Unix socket and authorises
//! every call from the peer's kernel credentials.
//!
//! Trust: the daemon trusts the kernel (peer credentials), its own state
//! directory (which it refuses to use if others can read or write it), and
//! nothing a peer sends.

pub mod authz;
pub mod cli;
pub mod clock;
pub mod conn;
pub mod error;
pub mod limits;
pub mod model;
pub mod oauth;
pub mod ops;
pub mod rotate;
pub mod seal;
pub mod server;
pub mod service;
pub mod store;
pub mod sys;
pub mod vault;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authz::{Authorizer, Caller, PeerInfo, Role};
use crate::cli::Cli;
use crate::service::{DaemonInfo, Shared};
use crate::store::Store;

/// A start-up failure, printed as is: it names the path or setting and the
/// fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl From<error::VaultError> for StartError {
    fn from(err: error::VaultError) -> Self {
        let fix = match &err {
            error::VaultError::FailedPrecondition { fix: Some(fix), .. }
            | error::VaultError::Invalid { fix: Some(fix), .. } => format!("\n  fix: {fix}"),
            _ => String::new(),
        };
        Self(format!("{err}{fix}"))
    }
}

/// Resolved paths and settings.
struct Settings {
    user_mode: bool,
    socket: PathBuf,
    state_dir: PathBuf,
    /// The start-up document: given with --config, or the default file if
    /// it exists.
    config: Option<PathBuf>,
    admin_gid: Option<u32>,
    client_gid: Option<u32>,
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn home_dir(sub: &str) -> Result<PathBuf, StartError> {
    env_dir("HOME")
        .map(|h| h.join(sub))
        .ok_or_else(|| StartError("HOME is not set; give --state-dir and --socket".into()))
}

fn group(spec: Option<&str>, default: Option<&str>, flag: &str) -> Result<Option<u32>, StartError> {
    match (spec, default) {
        (Some(spec), _) => sys::resolve_group(spec)
            .map(Some)
            .ok_or_else(|| StartError(format!("{flag} {spec:?} is not a group on this host"))),
        (None, Some(name)) => Ok(sys::resolve_group(name)),
        (None, None) => Ok(None),
    }
}

fn settings(cli: &Cli) -> Result<Settings, StartError> {
    let user_mode = cli.user || (!cli.system && sys::current_uid() != 0);
    let (socket, state_dir, config_dir) = if user_mode {
        let socket = match (&cli.socket, mcplexer_proto::user_socket()) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s,
            (None, None) => {
                return Err(StartError(
                    "neither XDG_RUNTIME_DIR nor HOME is set, so there is no default socket path.\n  fix: pass --socket PATH".into(),
                ));
            }
        };
        let state = match &cli.state_dir {
            Some(s) => s.clone(),
            None => env_dir("XDG_STATE_HOME")
                .map_or_else(|| home_dir(".local/state"), Ok)?
                .join("mcplexer"),
        };
        let config = env_dir("XDG_CONFIG_HOME")
            .map_or_else(|| home_dir(".config"), Ok)
            .map(|c| c.join("mcplexer"))
            .ok();
        (socket, state, config)
    } else {
        (
            cli.socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(mcplexer_proto::SYSTEM_SOCKET)),
            cli.state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/mcplexer")),
            Some(PathBuf::from("/etc/mcplexer")),
        )
    };
    let config = match &cli.config {
        Some(path) => Some(path.clone()),
        None => config_dir
            .map(|d| d.join("config.yaml"))
            .filter(|p| p.exists()),
    };
    let admin_gid = group(
        cli.admin_group.as_deref(),
        (!user_mode).then_some("mcplexer-admin"),
        "--admin-group",
    )?;
    let client_gid = group(cli.client_group.as_deref(), None, "--client-group")?;
    let client_gid = match (client_gid, user_mode) {
        (Some(gid), _) => Some(gid),
        (None, true) => None,
        (None, false) => Some(sys::resolve_group("mcplexer").ok_or_else(|| {
            StartError(
                "the client group \"mcplexer\" does not exist, so no user could be allowed to connect.\n  fix: create it (systemd-sysusers), or pass --client-group GROUP".into(),
            )
        })?),
    };
    Ok(Settings {
        user_mode,
        socket,
        state_dir,
        config,
        admin_gid,
        client_gid,
    })
}

fn prepare_state_dir(dir: &Path, uid: u32) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StartError(format!(
                    "cannot create the state directory {}: {e}",
                    dir.display()
                ))
            })?;
    }
    sys::check_private(dir, "state directory", uid).map_err(StartError)?;
    for (name, what) in [
        ("identity.txt", "identity"),
        ("identity.next.txt", "identity"),
        ("vault.db", "database"),
        ("vault.db-wal", "database"),
        ("vault.db-shm", "database"),
        ("audit.journal", "audit journal"),
    ] {
        sys::check_private(&dir.join(name), what, uid).map_err(StartError)?;
    }
    Ok(())
}

/// Applies the start-up document as the daemon itself.
async fn apply_config(
    store: &Store,
    authz: &Authorizer,
    path: &Path,
    uid: u32,
) -> Result<(), StartError> {
    let yaml = std::fs::read_to_string(path)
        .map_err(|e| StartError(format!("cannot read the config {}: {e}", path.display())))?;
    let mut doc: model::Document = model::yaml::from_str(&yaml, model::yaml::Limits::DOCUMENT)
        .map_err(|e| StartError(format!("the config {} is not valid: {e}", path.display())))?;
    let problems = model::normalize_all(&mut doc, Some(uid));
    if !problems.is_empty() {
        return Err(StartError(format!(
            "the config {} is not valid:\n{}",
            path.display(),
            problems.join("\n")
        )));
    }
    let caller = Caller {
        peer: PeerInfo {
            uid,
            gid: nix::unistd::getgid().as_raw(),
            pid: std::process::id(),
            groups: vec![],
        },
        role: Role::Admin,
    };
    authz
        .check_document(&caller, &store.snapshot(), &doc)
        .map_err(|e| StartError(format!("the config {} is not valid: {e}", path.display())))?;
    let changes = store
        .write(move |ctx| ops::apply(ctx, &caller, ops::Applier::ConfigFile, uid, &doc, false))
        .await
        .map_err(|e| {
            StartError(format!(
                "the config {} was not applied: {e}",
                path.display()
            ))
        })?;
    tracing::info!(path = %path.display(), changes = changes.len(), "applied the config");
    Ok(())
}

/// Tells the service manager `state`, if it listens; a failure is logged
/// (the manager then reports what it missed).
fn notify(notifier: &mcplexer_proto::service_env::Notifier, state: &str) {
    if let Err(err) = notifier.notify(state) {
        tracing::warn!(error = %err, state, "cannot notify the service manager");
    }
}

async fn shutdown_signal(notifier: mcplexer_proto::service_env::Notifier) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the vault with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    notify(&notifier, "STOPPING=1");
}

/// Runs the daemon until SIGTERM or SIGINT, with what systemd passed
/// (taken out of the environment by [`mcplexer_proto::service_env::take`]).
pub async fn run(
    cli: Cli,
    service: mcplexer_proto::service_env::ServiceEnv,
) -> Result<(), StartError> {
    sys::private_umask();
    sys::harden_process()
        .map_err(|e| StartError(format!("cannot make the process non-dumpable: {e}")))?;
    let settings = settings(&cli)?;
    match (&cli.run_as, settings.user_mode, sys::current_uid()) {
        (Some(_), true, _) => {
            return Err(StartError(
                "--run-as applies to system mode only (a user-mode vault runs as its user)".into(),
            ));
        }
        (Some(_), false, uid) if uid != 0 => {
            return Err(StartError(format!(
                "--run-as needs the vault started as root (it runs as uid {uid})"
            )));
        }
        (Some(spec), false, _) => {
            let to = sys::resolve_run_as(spec).ok_or_else(|| {
                StartError(format!("--run-as {spec:?} is not a user on this host"))
            })?;
            if to.uid == 0 {
                return Err(StartError(
                    "--run-as must name a user other than root".into(),
                ));
            }
            sys::drop_privileges(to).map_err(|e| {
                StartError(format!("cannot drop to uid {} gid {}: {e}", to.uid, to.gid))
            })?;
            tracing::info!(
                uid = to.uid,
                gid = to.gid,
                "dropped root: no groups, no capabilities"
            );
        }
        (None, false, 0) => {
            return Err(StartError(
                "refusing to run as root in system mode: the vault holds every secret and runs as its own user.\n  fix: start it as that user (the packaged unit does: User=mcplexer), or pass --run-as mcplexer to drop to it".into(),
            ));
        }
        _ => {}
    }
    // After the drop: the limit that counts is the service user's.
    match vault::locked::lock_all() {
        Ok(()) => tracing::info!("all memory locked against swap"),
        Err(why) => tracing::info!("{why}"),
    }
    let uid = sys::current_uid();
    prepare_state_dir(&settings.state_dir, uid)?;
    if let Some(path) = &cli.identity {
        sys::check_private(path, "identity", uid).map_err(StartError)?;
    }

    let (keyring, origin) = vault::load_or_generate(
        &settings.state_dir,
        cli.identity.as_deref(),
        service.credentials_directory.as_deref(),
    )?;
    let pending_path = rotate::pending_path(&settings.state_dir);
    let pending = match origin {
        vault::IdentityOrigin::StateDir(_) => vault::read_if_exists(&pending_path)?,
        _ => None,
    };
    let (store, adopted) = Store::open(&settings.state_dir.join("vault.db"), keyring, pending)?;
    // Read after a possible adoption: the adopted identity is what the file
    // will hold.
    let sealed = store.keyring().is_sealed();
    if adopted {
        rotate::install(&pending_path, origin.path()).map_err(|e| {
            StartError(format!(
                "cannot finish the interrupted identity rotation ({} → {}): {e}",
                pending_path.display(),
                origin.path().display()
            ))
        })?;
        tracing::warn!("finished an identity rotation that was interrupted after its commit");
    } else if pending_path.exists() {
        let _ = std::fs::remove_file(&pending_path);
    }
    let authz = Authorizer::new(
        uid,
        settings.user_mode,
        settings.admin_gid,
        settings.client_gid,
    );
    if let Some(path) = &settings.config {
        apply_config(&store, &authz, path, uid).await?;
    }
    // Routes made before routes were pinned trust their servers as they
    // are now, as the vault that made them did.
    let pinned = store
        .write(ops::pin_unpinned)
        .await
        .map_err(|e| StartError(format!("cannot pin the routes to their servers: {e}")))?;
    if pinned > 0 {
        tracing::info!(
            routes = pinned,
            "pinned routes to their servers as they are now"
        );
    }

    let journal = store::AuditJournal::open(store.clone(), &settings.state_dir).await?;
    let mut passed = service.listen_fds.into_iter();
    let (listener, socket) = match passed.next() {
        Some(fd) => {
            if passed.next().is_some() {
                tracing::warn!("systemd passed more than one socket; using the first");
            }
            let (listener, path) = server::adopt(fd).map_err(StartError)?;
            tracing::info!(socket = %path.display(), "using the socket passed by systemd");
            (listener, server::Socket::Passed(path))
        }
        None => {
            let listener = server::bind(&settings.socket, settings.client_gid)
                .await
                .map_err(StartError)?;
            (listener, server::Socket::bound(settings.socket.clone()))
        }
    };
    let retention_days = cli.audit_retention_days;
    // Turns true on SIGTERM/SIGINT: ends every long-lived stream, so no
    // proxy keeps this vault (and its configuration) alive after a stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tokens = crate::oauth::tokens::Tokens::load(&store).await?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        journal: journal.clone(),
        authz,
        info: DaemonInfo {
            mode: if settings.user_mode { "user" } else { "system" },
            state_dir: settings.state_dir.clone(),
            identity: origin,
            audit_retention_days: retention_days,
            started: Instant::now(),
        },
        rotation: tokio::sync::Mutex::new(()),
        identity_sealed: std::sync::atomic::AtomicBool::new(sealed),
        tokens,
        flows: crate::oauth::flows::Flows::default(),
        work: limits::WorkGate::for_this_machine(),
        streams: limits::Streams::new(limits::USER_STREAMS, stop_rx.clone()),
        audit_quota: limits::AuditQuota::new(limits::AuditLimits {
            rate: f64::from(cli.audit_rate),
            burst: f64::from(cli.audit_rate) * 10.0,
            daily_bytes: u64::from(cli.audit_daily_mib) * 1024 * 1024,
        }),
    });
    tokio::spawn(prune_audit(store, retention_days));
    tracing::info!(
        socket = %socket.path().display(),
        state_dir = %settings.state_dir.display(),
        mode = shared.info.mode,
        "vault ready"
    );
    if sealed {
        tracing::warn!(
            "the identity is sealed: no secret can be released until an administrator runs `mcplexerctl unlock`"
        );
        notify(
            &service.notifier,
            "READY=1\nSTATUS=sealed: an administrator must run mcplexerctl unlock",
        );
    } else {
        notify(&service.notifier, "READY=1");
    }
    let nofile = conn::raise_descriptor_limit();
    let limits = conn::Limits::for_descriptors(
        nofile,
        cli.max_connections_per_user,
        Duration::from_secs(cli.handshake_timeout_sec),
    );
    tracing::info!(
        descriptors = nofile,
        connections = limits.total,
        per_user = limits.per_user,
        "connection limits"
    );
    let signal = async move {
        shutdown_signal(service.notifier).await;
        let _ = stop_tx.send(true);
    };
    let serving = server::serve(listener, shared, limits, cli.user_request_rate, signal);
    tokio::pin!(serving);
    let mut stopping = stop_rx;
    let grace = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let served = tokio::select! {
        served = &mut serving => served,
        () = grace => {
            tracing::warn!(
                seconds = STOP_GRACE.as_secs(),
                "requests still running after the stop grace period; stopping without them"
            );
            Ok(())
        }
    };
    socket.remove_if_ours();
    // Not required for safety (the next start ingests the journal), but a
    // clean stop leaves the audit table complete.
    if let Err(err) = journal.flush().await {
        tracing::error!(error = %err, "cannot ingest the audit journal at shutdown");
    }
    // After the last write: the database file alone is then complete.
    match store::checkpoint(&settings.state_dir.join("vault.db")) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("the write-ahead log is still in use; it stays next to the database")
        }
        Err(err) => tracing::error!(error = %err, "cannot checkpoint the database at shutdown"),
    }
    served.map_err(StartError)
}

/// How long a stop waits for requests in flight once every stream has
/// been ended; well within the unit's TimeoutStopSec=.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Deletes audit records past retention, now and every hour.
async fn prune_audit(store: Store, days: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let before = clock::now_ms() - i64::from(days) * 86_400_000;
        match store.write(move |ctx| ctx.prune_audit(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, days, "pruned audit records past retention"),
            Err(err) => tracing::error!(error = %err, "cannot prune the audit log"),
        }
    }
}
