//! `noise`: test tooling, the noisy neighbour of the `noisy` benchmark. One
//! process floods the vault as its caller's uid, with every attack at once,
//! until its stdin closes. It prints `{"ready": true}` once its connections
//! are open and the attacks start, and at the end one JSON object: how many
//! iterations each attack ran.
//!
//! ```text
//! noise --socket PATH --scope SCOPE --server SERVER
//! ```
//!
//! The attacks, each a loop on its own connections (one process and no
//! process spawns, as an attacker would write it, so the machine's share of
//! the cost stays small beside the vault's):
//!
//! * `connections`: 200 silent connections, each reopened as soon as the
//!   vault closes it (refused past the uid's share, or at the handshake
//!   deadline): connections at the cap and slow prefaces;
//! * `audit`: `SubmitAudit` with 20 KiB of params, back to back (past the
//!   quota each is a refusal);
//! * `yaml`: `Apply` dry runs of a 200,000-deep flow nesting and of an alias
//!   bomb, in turn;
//! * `releases`: 32 `GetCredential` of SCOPE for SERVER (stdio) at once, on
//!   32 connections, again as soon as all are answered;
//! * `streams`: 20 `WatchConfig` streams on one connection (past the share
//!   of 16), then all dropped, again.
//!
//! It runs on one thread: one user's flood, however written, meets the same
//! per-uid caps. `NOISE_ONLY=yaml,audit` runs only the attacks named (to
//! see what each costs). Exit 1 if the vault cannot be reached at the
//! start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mcplexer_proto::v1::{ApplyRequest, AuditRecord, CredentialRequest, GetConfigRequest};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

/// Silent connections held.
const HELD: usize = 200;
/// Releases in flight at once.
const RELEASES: usize = 32;
/// Watches opened per round.
const WATCHES: usize = 20;

struct Args {
    socket: PathBuf,
    scope: String,
    server: String,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut socket, mut scope, mut server) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} wants a value"))?;
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value)),
            "--scope" => scope = Some(value),
            "--server" => server = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        scope: scope.ok_or("--scope is required")?,
        server: server.ok_or("--server is required")?,
    })
}

/// One silent connection, reopened whenever the vault closes it; `opened`
/// counts the first attempt.
async fn hold(socket: PathBuf, count: Arc<AtomicU64>, opened: Arc<AtomicU64>) {
    let mut buf = [0u8; 1024];
    let mut first = true;
    loop {
        let conn = tokio::net::UnixStream::connect(&socket).await;
        if std::mem::take(&mut first) {
            opened.fetch_add(1, Ordering::SeqCst);
        }
        if let Ok(mut conn) = conn {
            // Whatever the vault sends, until it closes.
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        count.fetch_add(1, Ordering::Relaxed);
        // A refusal the vault answered at once: yield, then again.
        tokio::task::yield_now().await;
    }
}

async fn audit(channel: Channel, count: Arc<AtomicU64>) {
    let mut vault = mcplexer_proto::vault_client(channel);
    let record = AuditRecord {
        tool: "noise__x".into(),
        status: "success".into(),
        params: json!({"blob": "z".repeat(20 * 1024)}).to_string(),
        ..Default::default()
    };
    loop {
        let _ = vault.submit_audit(record.clone()).await;
        count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn yaml(channel: Channel, count: Arc<AtomicU64>) {
    let mut admin = mcplexer_proto::admin_client(channel);
    let docs = [
        format!("auth_scopes: {}", "[".repeat(200_000)),
        mcplexer_tests::alias_bomb(),
    ];
    for doc in docs.iter().cycle() {
        let _ = admin
            .apply(ApplyRequest {
                yaml: doc.clone(),
                dry_run: true,
            })
            .await;
        count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn releases(channels: Vec<Channel>, request: CredentialRequest, count: Arc<AtomicU64>) {
    loop {
        let mut calls = tokio::task::JoinSet::new();
        for channel in &channels {
            let mut client = mcplexer_proto::vault_client(channel.clone());
            let request = request.clone();
            calls.spawn(async move { client.get_credential(request).await.is_ok() });
        }
        calls.join_all().await;
        count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn streams(channel: Channel, count: Arc<AtomicU64>) {
    let mut vault = mcplexer_proto::vault_client(channel);
    loop {
        let mut open = Vec::with_capacity(WATCHES);
        for _ in 0..WATCHES {
            if let Ok(stream) = vault.watch_config(GetConfigRequest {}).await {
                open.push(stream);
            }
        }
        drop(open);
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Until stdin ends (the benchmark closes it).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn connect(socket: &Path) -> Result<Channel, String> {
    mcplexer_proto::connect(socket)
        .await
        .map_err(|e| e.to_string())
}

async fn flood(args: Args) -> Result<serde_json::Value, String> {
    let only = std::env::var("NOISE_ONLY").ok();
    let runs = |name: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|n| n == name))
    };
    let names = ["connections", "audit", "yaml", "releases", "streams"];
    let counts: Vec<Arc<AtomicU64>> = names.iter().map(|_| Arc::default()).collect();
    let socket: &Path = &args.socket;
    // The attacks' own connections first, so that the held ones cannot
    // take their place within the uid's share.
    let audit_channel = connect(socket).await?;
    let yaml_channel = connect(socket).await?;
    let streams_channel = connect(socket).await?;
    let mut release_channels = Vec::with_capacity(RELEASES);
    for _ in 0..RELEASES {
        release_channels.push(connect(socket).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    if runs("connections") {
        let opened = Arc::new(AtomicU64::new(0));
        for _ in 0..HELD {
            tasks.spawn(hold(socket.to_owned(), counts[0].clone(), opened.clone()));
        }
        while opened.load(Ordering::SeqCst) < HELD as u64 {
            tokio::task::yield_now().await;
        }
    }
    // Under way: the benchmark starts measuring now.
    println!("{}", json!({"ready": true}));
    if runs("audit") {
        tasks.spawn(audit(audit_channel, counts[1].clone()));
    }
    if runs("yaml") {
        tasks.spawn(yaml(yaml_channel, counts[2].clone()));
    }
    if runs("releases") {
        let request = CredentialRequest {
            auth_scope_id: args.scope.clone(),
            downstream_server_id: args.server.clone(),
            transport: "stdio".into(),
            ..Default::default()
        };
        tasks.spawn(releases(release_channels, request, counts[3].clone()));
    }
    if runs("streams") {
        tasks.spawn(streams(streams_channel, counts[4].clone()));
    }
    stdin_closed().await;
    tasks.abort_all();
    let ran: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(&counts)
        .map(|(name, n)| ((*name).to_owned(), json!(n.load(Ordering::Relaxed))))
        .collect();
    Ok(ran.into())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("noise: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(why) => {
            eprintln!("noise: cannot start a runtime: {why}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flood(args)) {
        Ok(ran) => {
            println!("{ran}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("noise: cannot reach the vault: {why}");
            ExitCode::FAILURE
        }
    }
}
