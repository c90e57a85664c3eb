//! `workspace ...` and `route ...`: where calls come from and where they go.
//!
//! The CLI passes globs, policies and ids through unchanged; the vault
//! checks them, and refuses a rule that links a scope to a server of the
//! wrong transport, naming the scope, the server and the rule.

use mcplexer_proto::v1::{DeleteRequest, GetRequest, ListRequest, RouteRule, Workspace};

use super::{Ctx, deleted};
use crate::cli::{RouteCommand, RouteCreate, WorkspaceCommand, WorkspaceCreate};
use crate::error::Failure;
use crate::output::{self, Fields, Table};

/// `workspace list | show | create | delete`.
pub async fn workspace(ctx: &mut Ctx, cmd: WorkspaceCommand) -> Result<(), Failure> {
    match cmd {
        WorkspaceCommand::List => {
            let workspaces = ctx
                .admin()
                .await?
                .list_workspaces(ListRequest {})
                .await?
                .into_inner()
                .workspaces;
            if ctx.json {
                return output::json(&workspaces);
            }
            Ok(workspace_table(&workspaces).print()?)
        }
        WorkspaceCommand::Show { id } => {
            let w = ctx
                .admin()
                .await?
                .get_workspace(GetRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&w);
            }
            Ok(workspace_fields(&w).print()?)
        }
        WorkspaceCommand::Create(args) => {
            let created = ctx
                .admin()
                .await?
                .create_workspace(new_workspace(args))
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&created);
            }
            ctx.note(format_args!(
                "created workspace {}",
                output::clean(&created.id)
            ));
            Ok(())
        }
        WorkspaceCommand::Delete { id } => {
            ctx.admin()
                .await?
                .delete_workspace(DeleteRequest { id: id.clone() })
                .await?;
            deleted(ctx, "workspace", &id)
        }
    }
}

/// `route list | show | create | delete`.
pub async fn route(ctx: &mut Ctx, cmd: RouteCommand) -> Result<(), Failure> {
    match cmd {
        RouteCommand::List => {
            let routes = ctx
                .admin()
                .await?
                .list_routes(ListRequest {})
                .await?
                .into_inner()
                .routes;
            if ctx.json {
                return output::json(&routes);
            }
            Ok(route_table(&routes).print()?)
        }
        RouteCommand::Show { id } => {
            let r = ctx
                .admin()
                .await?
                .get_route(GetRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&r);
            }
            Ok(route_fields(&r).print()?)
        }
        RouteCommand::Create(args) => {
            let created = ctx
                .admin()
                .await?
                .create_route(new_route(args))
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&created);
            }
            ctx.note(format_args!("created route {}", output::clean(&created.id)));
            Ok(())
        }
        RouteCommand::Delete { id } => {
            ctx.admin()
                .await?
                .delete_route(DeleteRequest { id: id.clone() })
                .await?;
            deleted(ctx, "route", &id)
        }
        RouteCommand::Confirm { id } => {
            let r = ctx
                .admin()
                .await?
                .confirm_route(GetRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&r);
            }
            ctx.note(format_args!(
                "confirmed route {}: it releases credentials to {} as that server is now",
                output::clean(&r.id),
                output::clean(&r.downstream_server_id)
            ));
            Ok(())
        }
    }
}

/// The workspace `workspace create` asks for.
fn new_workspace(args: WorkspaceCreate) -> Workspace {
    Workspace {
        id: args.id.unwrap_or_default(),
        name: args.name,
        root_path: args.root,
        default_policy: args.default_policy.unwrap_or_default(),
        ..Workspace::default()
    }
}

/// The rule `route create` asks for.
fn new_route(args: RouteCreate) -> RouteRule {
    RouteRule {
        id: args.id.unwrap_or_default(),
        name: args.name,
        priority: args.priority.unwrap_or_default(),
        workspace_id: args.workspace,
        tool_match: args.matches,
        downstream_server_id: args.server.unwrap_or_default(),
        auth_scope_id: args.scope.unwrap_or_default(),
        policy: args.policy,
        log_full: args.log_full,
        ..RouteRule::default()
    }
}

fn workspace_table(workspaces: &[Workspace]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "ROOT", "DEFAULT_POLICY", "OWNER", "SOURCE"]);
    for w in workspaces {
        t.row(vec![
            w.id.clone(),
            w.name.clone(),
            w.root_path.clone(),
            w.default_policy.clone(),
            output::owner(w.owner),
            w.source.clone(),
        ]);
    }
    t
}

fn workspace_fields(w: &Workspace) -> Fields {
    let mut f = Fields::new();
    f.add("id", &w.id)
        .add("name", &w.name)
        .add("root_path", &w.root_path)
        .add("default_policy", &w.default_policy)
        .add("owner", output::owner(w.owner))
        .add("source", &w.source);
    f
}

fn route_table(routes: &[RouteRule]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "WORKSPACE",
        "PRIORITY",
        "POLICY",
        "SERVER",
        "SCOPE",
        "OWNER",
        "SOURCE",
        "MATCH",
        "STATE",
    ]);
    for r in routes {
        t.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.workspace_id.clone(),
            r.priority.to_string(),
            r.policy.clone(),
            r.downstream_server_id.clone(),
            r.auth_scope_id.clone(),
            output::owner(r.owner),
            r.source.clone(),
            output::list(&r.tool_match),
            if r.suspended.is_empty() {
                "in force".into()
            } else {
                "suspended".into()
            },
        ]);
    }
    t
}

fn route_fields(r: &RouteRule) -> Fields {
    let mut f = Fields::new();
    f.add("id", &r.id)
        .add("name", &r.name)
        .add("workspace_id", &r.workspace_id)
        .add("priority", r.priority)
        .add("tool_match", output::list(&r.tool_match))
        .add("downstream_server_id", &r.downstream_server_id)
        .add("auth_scope_id", &r.auth_scope_id)
        .add("policy", &r.policy)
        .add("log_full", output::yes_no(r.log_full))
        .add("owner", output::owner(r.owner))
        .add("source", &r.source);
    if !r.suspended.is_empty() {
        f.add("suspended", &r.suspended);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn route_from_flags() {
        let cli = Cli::try_parse_from([
            "mcplexerctl",
            "route",
            "create",
            "--name",
            "GitHub tools",
            "--match",
            "github__*",
            "--server",
            "github",
            "--scope",
            "gh",
            "--log-full",
        ])
        .unwrap();
        let Command::Route(RouteCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        let r = new_route(args);
        assert_eq!(r.workspace_id, "default");
        assert_eq!(r.policy, "allow");
        assert_eq!(r.priority, 0);
        assert_eq!(r.tool_match, ["github__*"]);
        assert_eq!(r.downstream_server_id, "github");
        assert_eq!(r.auth_scope_id, "gh");
        assert!(r.log_full);
        let text = route_table(&[r]).render();
        assert!(text.starts_with("ID  NAME"), "{text}");
        assert!(text.contains("github__*"), "{text}");
    }

    #[test]
    fn route_needs_a_match() {
        let err =
            Cli::try_parse_from(["mcplexerctl", "route", "create", "--name", "x"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn workspace_from_flags() {
        let cli = Cli::try_parse_from([
            "mcplexerctl",
            "workspace",
            "create",
            "--name",
            "Work",
            "--root",
            "/home/a/work",
            "--default-policy",
            "deny",
        ])
        .unwrap();
        let Command::Workspace(WorkspaceCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        let w = new_workspace(args);
        assert_eq!(w.root_path, "/home/a/work");
        assert_eq!(w.default_policy, "deny");
        assert_eq!(
            workspace_fields(&w).render(),
            "id: -\nname: Work\nroot_path: /home/a/work\ndefault_policy: deny\nowner: -\nsource: -\n"
        );
    }
}
