//! mcplexer-proxy entry point: flags, logging (stderr only: stdout carries
//! MCP), runtime; see the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mcplexer_proxy::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // SAFETY: the first thing the process does, while it has one thread:
    // nothing else reads the environment yet. What systemd passed leaves
    // the environment, so no downstream child could see it either.
    let service = unsafe { mcplexer_proto::service_env::take() };
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("MCPLEXER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only on a terminal: MCP clients and the journal keep
        // stderr as text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("mcplexer-proxy: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let socket = cli.socket.unwrap_or_else(mcplexer_proto::default_socket);
    let result = runtime.block_on(async move {
        let vault = mcplexer_proxy::vault::VaultLink::new(&socket);
        match cli.command {
            Command::Stdio { cwd, log_full } => {
                let cwd = mcplexer_proxy::resolve_cwd(cwd)?;
                mcplexer_proxy::stdio::run(vault, cwd, log_full)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Serve {
                listen,
                cwd,
                log_full,
                session_idle_timeout,
            } => {
                let cwd = mcplexer_proxy::resolve_cwd(cwd)?;
                let passed = service.listen_fds.into_iter().next();
                let idle = std::time::Duration::from_secs(session_idle_timeout);
                mcplexer_proxy::serve::run(vault, cwd, log_full, idle, listen, passed)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::DryRun { tool, cwd } => {
                let cwd = mcplexer_proxy::resolve_cwd(cwd)?;
                mcplexer_proxy::dry_run(&vault, &tool, &cwd)
                    .await
                    .map(|line| println!("{line}"))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mcplexer-proxy: {err}");
            ExitCode::FAILURE
        }
    }
}
