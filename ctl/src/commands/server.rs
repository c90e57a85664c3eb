//! `server ...`: the downstream MCP servers the proxy connects to.
//!
//! Only non-secret settings live here (`--env` is for plain configuration;
//! credentials belong in an auth scope). Transport rules (`--command` for
//! stdio, `--url` for http) are the vault's to enforce.

use mcplexer_proto::v1::{DeleteRequest, DownstreamServer, GetRequest, ListRequest};

use super::{Ctx, deleted, to_map};
use crate::cli::{ServerCommand, ServerCreate};
use crate::error::Failure;
use crate::output::{self, Fields, Table};

/// `server list | show | create | delete`.
pub async fn run(ctx: &mut Ctx, cmd: ServerCommand) -> Result<(), Failure> {
    match cmd {
        ServerCommand::List => {
            let servers = ctx
                .admin()
                .await?
                .list_servers(ListRequest {})
                .await?
                .into_inner()
                .servers;
            if ctx.json {
                return output::json(&servers);
            }
            Ok(table(&servers).print()?)
        }
        ServerCommand::Show { id } => {
            let server = ctx
                .admin()
                .await?
                .get_server(GetRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&server);
            }
            Ok(fields(&server).print()?)
        }
        ServerCommand::Create(args) => {
            let server = new_server(*args)?;
            let created = ctx.admin().await?.create_server(server).await?.into_inner();
            if ctx.json {
                return output::json(&created);
            }
            ctx.note(format_args!(
                "created server {}",
                output::clean(&created.id)
            ));
            Ok(())
        }
        ServerCommand::Delete { id } => {
            ctx.admin()
                .await?
                .delete_server(DeleteRequest { id: id.clone() })
                .await?;
            deleted(ctx, "server", &id)
        }
    }
}

/// The server `server create` asks for.
fn new_server(args: ServerCreate) -> Result<DownstreamServer, Failure> {
    Ok(DownstreamServer {
        id: args.id.unwrap_or_default(),
        name: args.name,
        transport: args.transport,
        command: args.command.unwrap_or_default(),
        args: args.args,
        env: to_map(args.env, "--env")?,
        url: args.url.unwrap_or_default(),
        tool_namespace: args.namespace.unwrap_or_default(),
        unprefixed: args.unprefixed,
        idle_timeout_sec: args.idle_timeout.unwrap_or_default(),
        call_timeout_sec: args.call_timeout.unwrap_or_default(),
        restart_policy: args.restart_policy.unwrap_or_default(),
        working_dir: args.working_dir.unwrap_or_default(),
        ..DownstreamServer::default()
    })
}

/// What the server is: its URL, or its command line.
fn target(s: &DownstreamServer) -> String {
    if !s.url.is_empty() {
        return s.url.clone();
    }
    std::iter::once(&s.command)
        .chain(&s.args)
        .filter(|part| !part.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(servers: &[DownstreamServer]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TRANSPORT",
        "NAMESPACE",
        "OWNER",
        "SOURCE",
        "TARGET",
    ]);
    for s in servers {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.transport.clone(),
            s.tool_namespace.clone(),
            output::owner(s.owner),
            s.source.clone(),
            target(s),
        ]);
    }
    t
}

fn fields(s: &DownstreamServer) -> Fields {
    let mut f = Fields::new();
    f.add("id", &s.id)
        .add("name", &s.name)
        .add("transport", &s.transport)
        .add("owner", output::owner(s.owner))
        .add("source", &s.source)
        .add("command", &s.command)
        .add("args", output::list(&s.args))
        .add("env", output::pairs(&s.env))
        .add("working_dir", &s.working_dir)
        .add("url", &s.url)
        .add("tool_namespace", &s.tool_namespace)
        .add("unprefixed", if s.unprefixed { "yes" } else { "" })
        .add("idle_timeout_sec", output::nonzero(s.idle_timeout_sec))
        .add("call_timeout_sec", output::nonzero(s.call_timeout_sec))
        .add("restart_policy", &s.restart_policy);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn create(args: &[&str]) -> Result<DownstreamServer, Failure> {
        let base = ["mcplexerctl", "server", "create", "--name", "GitHub"];
        let cli = Cli::try_parse_from(base.iter().chain(args)).unwrap();
        let Command::Server(ServerCommand::Create(c)) = cli.command else {
            panic!("wrong command");
        };
        new_server(*c)
    }

    #[test]
    fn stdio_server() {
        let s = create(&[
            "--transport",
            "stdio",
            "--command",
            "npx",
            "--arg",
            "-y",
            "--arg",
            "@modelcontextprotocol/server-github",
            "--env",
            "LOG=debug",
            "--namespace",
            "github",
            "--idle-timeout",
            "300",
            "--restart-policy",
            "on-failure",
        ])
        .unwrap();
        assert_eq!(s.transport, "stdio");
        assert_eq!(s.env["LOG"], "debug");
        assert_eq!(s.idle_timeout_sec, 300);
        assert_eq!(s.call_timeout_sec, 0);
        assert_eq!(target(&s), "npx -y @modelcontextprotocol/server-github");
        let text = fields(&s).render();
        assert!(text.contains("call_timeout_sec: -\n"), "{text}");
        assert!(text.contains("restart_policy: on-failure\n"), "{text}");
    }

    #[test]
    fn http_server() {
        let s = create(&["--transport", "http", "--url", "https://mcp.example/mcp"]).unwrap();
        assert_eq!(target(&s), "https://mcp.example/mcp");
        assert!(s.command.is_empty());
    }
}
