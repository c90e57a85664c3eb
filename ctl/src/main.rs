//! `mcplexerctl`: administration and self-service client of the MCPlexer
//! vault, over the vault's Unix socket.
//!
//! Trust: this process holds no privilege and no key. The vault authorises
//! every call from the socket's peer credentials (our uid). Secret values
//! are read from stdin or a no-echo prompt (never argv), kept in zeroizing
//! buffers, sent once and never printed; see [`sensitive`].
//!
//! Exit status (also in `--help`): 0 success; 1 failure (cannot reach the
//! vault, internal or unavailable errors, local I/O); 2 usage error (clap's
//! errors, an unreadable `-f` file, an empty secret); 3 refused
//! (`PERMISSION_DENIED`, `UNAUTHENTICATED`); 4 rejected input
//! (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `FAILED_PRECONDITION`,
//! `OUT_OF_RANGE`, `RESOURCE_EXHAUSTED`). See [`error::Exit`].

mod cli;
mod commands;
mod error;
mod output;
mod sensitive;
mod time;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use crate::error::{Exit, Failure};

fn main() -> ExitCode {
    // Usage errors exit with 2, --help and --version with 0.
    let cli = cli::Cli::parse();
    let verbose = cli.verbose > 0;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Local(anyhow::Error::new(e).context("cannot start the runtime")))
        .and_then(|runtime| runtime.block_on(commands::run(cli)));
    match result {
        Ok(()) => Exit::Success.into(),
        Err(failure) => {
            eprint!("{}", failure.render(verbose));
            failure.exit().into()
        }
    }
}
