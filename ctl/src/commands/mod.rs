//! The commands of `mcplexerctl`, one module per noun, and the [`Ctx`]
//! they share: the socket, the output mode and a lazily opened channel.
//!
//! Each command checks its local input first (an unreadable `-f` file is a
//! usage error even when the vault is down), then makes its Admin calls.
//! The vault decides what the caller's uid may do; nothing here assumes a
//! role.

mod audit;
mod auth;
mod provider;
mod routing;
mod scope;
mod server;
mod vault;

use std::collections::HashMap;
use std::fmt::Display;
use std::path::PathBuf;

use mcplexer_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::cli::{Cli, Command};
use crate::error::Failure;

/// What every command needs: where the vault is, how to print, and the
/// channel once it is open.
pub struct Ctx {
    /// The vault's socket.
    socket: PathBuf,
    /// Print JSON instead of tables and fields.
    pub json: bool,
    /// `-v` count: notes on stderr when non-zero.
    verbose: u8,
    /// The channel, opened on first use.
    channel: Option<Channel>,
}

impl Ctx {
    /// The channel to the vault, connecting on first use.
    pub async fn channel(&mut self) -> Result<Channel, Failure> {
        if let Some(channel) = &self.channel {
            return Ok(channel.clone());
        }
        self.note(format_args!(
            "connecting to the vault at {}",
            self.socket.display()
        ));
        let channel = mcplexer_proto::connect(&self.socket).await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// An Admin client on the channel.
    pub async fn admin(&mut self) -> Result<AdminClient<Channel>, Failure> {
        Ok(mcplexer_proto::admin_client(self.channel().await?))
    }

    /// Prints a note on stderr when `-v` was given.
    pub fn note(&self, message: impl Display) {
        if self.verbose > 0 {
            eprintln!("{message}");
        }
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(mcplexer_proto::default_socket);
    let mut ctx = Ctx {
        socket: socket.clone(),
        json: cli.json,
        verbose: cli.verbose,
        channel: None,
    };
    let result = match cli.command {
        Command::Status => vault::status(&mut ctx).await,
        Command::Apply(args) => vault::apply(&mut ctx, args).await,
        Command::Export => vault::export(&mut ctx).await,
        Command::Identity(cmd) => vault::identity(&mut ctx, cmd).await,
        Command::Unlock => vault::unlock(&mut ctx).await,
        Command::Ui(args) => crate::ui::run(&mut ctx, args).await,
        Command::Scope(cmd) => scope::scope(&mut ctx, cmd).await,
        Command::Secret(cmd) => scope::secret(&mut ctx, cmd).await,
        Command::Provider(cmd) => provider::run(&mut ctx, cmd).await,
        Command::Server(cmd) => server::run(&mut ctx, cmd).await,
        Command::Workspace(cmd) => routing::workspace(&mut ctx, cmd).await,
        Command::Route(cmd) => routing::route(&mut ctx, cmd).await,
        Command::Audit(args) => audit::run(&mut ctx, args).await,
        Command::Auth(cmd) => auth::run(&mut ctx, cmd).await,
    };
    result.map_err(|f| f.with_socket(&socket))
}

/// Turns repeated `K=V` options into a map; a key given twice is a usage
/// error (`flag` names the option in the message).
pub fn to_map(
    pairs: Vec<(String, String)>,
    flag: &str,
) -> Result<HashMap<String, String>, Failure> {
    let mut map = HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        if map.contains_key(&key) {
            return Err(Failure::usage(format!("{flag} {key}=... is given twice")));
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// After a successful delete: `{}` with `--json`, else a note.
fn deleted(ctx: &Ctx, noun: &str, id: &str) -> Result<(), Failure> {
    if ctx.json {
        return crate::output::json(&mcplexer_proto::v1::DeleteResponse {});
    }
    ctx.note(format_args!("deleted {noun} {id}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn key_value_options_become_a_map() {
        let map = to_map(
            vec![("a".into(), "1".into()), ("b".into(), "".into())],
            "--env",
        )
        .unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["b"], "");
        let err = to_map(
            vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            "--env",
        )
        .unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        assert!(err.render(false).contains("--env a=... is given twice"));
    }
}
