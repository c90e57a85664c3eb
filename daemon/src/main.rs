//! mcplexer-vaultd entry point: flags, logging, runtime; see the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn init_logging() {
    let filter = EnvFilter::try_from_env("MCPLEXER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    // Colours only on a terminal, not in log files.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
    }
}

fn main() -> ExitCode {
    // SAFETY: the first thing the process does, while it has one thread:
    // nothing else reads the environment yet.
    let service = unsafe { mcplexer_proto::service_env::take() };
    let cli = mcplexer_vaultd::cli::Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("mcplexer-vaultd: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mcplexer_vaultd::run(cli, service)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mcplexer-vaultd: {err}");
            ExitCode::FAILURE
        }
    }
}
