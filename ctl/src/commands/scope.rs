//! `scope ...` and `secret ...`: auth scopes and the secret values they hold.
//!
//! Secret values are write-only: `secret set` reads the value through
//! [`crate::sensitive`] (stdin or a no-echo prompt, never argv) and the
//! vault only ever returns keys. The vault decides who may create, see or
//! change a scope (its owner, admins); the owner defaults to the caller.

use mcplexer_proto::v1::{
    AuthScope, DeleteRequest, DeleteSecretRequest, GetRequest, Grants, ListRequest,
};

use super::{Ctx, deleted};
use crate::cli::{ScopeCommand, ScopeCreate, SecretCommand};
use crate::error::Failure;
use crate::output::{self, Fields, Table};
use crate::sensitive;

/// `scope list | show | create | delete`.
pub async fn scope(ctx: &mut Ctx, cmd: ScopeCommand) -> Result<(), Failure> {
    match cmd {
        ScopeCommand::List => {
            let scopes = ctx
                .admin()
                .await?
                .list_scopes(ListRequest {})
                .await?
                .into_inner()
                .scopes;
            if ctx.json {
                return output::json(&scopes);
            }
            Ok(table(&scopes).print()?)
        }
        ScopeCommand::Show { id } => {
            let scope = ctx
                .admin()
                .await?
                .get_scope(GetRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&scope);
            }
            Ok(fields(&scope).print()?)
        }
        ScopeCommand::Create(args) => {
            let created = ctx
                .admin()
                .await?
                .create_scope(new_scope(args))
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&created);
            }
            ctx.note(format_args!("created scope {}", output::clean(&created.id)));
            Ok(())
        }
        ScopeCommand::Delete { id } => {
            ctx.admin()
                .await?
                .delete_scope(DeleteRequest { id: id.clone() })
                .await?;
            deleted(ctx, "scope", &id)
        }
    }
}

/// `secret set | list | delete`.
pub async fn secret(ctx: &mut Ctx, cmd: SecretCommand) -> Result<(), Failure> {
    match cmd {
        SecretCommand::Set {
            scope,
            key,
            mut misplaced,
        } => {
            sensitive::refuse_misplaced(&mut misplaced)?;
            // Connect first, so nobody types a secret for an absent vault.
            let channel = ctx.channel().await?;
            let value = sensitive::read_secret(&format!("{scope}/{key}"))?;
            let response =
                sensitive::set_secret(channel, scope.clone(), key.clone(), value).await?;
            if ctx.json {
                return output::json(&response);
            }
            ctx.note(format_args!(
                "stored {key} in scope {scope} (version {})",
                response.version
            ));
            Ok(())
        }
        SecretCommand::List { scope } => {
            let keys = ctx
                .admin()
                .await?
                .list_secrets(GetRequest { id: scope })
                .await?
                .into_inner()
                .keys;
            if ctx.json {
                return output::json(&keys);
            }
            let mut t = Table::new(&["KEY"]);
            for key in keys {
                t.row(vec![key]);
            }
            Ok(t.print()?)
        }
        SecretCommand::Delete { scope, key } => {
            let request = DeleteSecretRequest {
                scope_id: scope.clone(),
                key: key.clone(),
            };
            ctx.admin().await?.delete_secret(request).await?;
            deleted(ctx, "secret", &format!("{scope}/{key}"))
        }
    }
}

/// The scope `scope create` asks for; the vault fills in id, owner, source.
fn new_scope(args: ScopeCreate) -> AuthScope {
    let grants = if args.grant_users.is_empty() && args.grant_groups.is_empty() {
        None
    } else {
        Some(Grants {
            users: args.grant_users,
            groups: args.grant_groups,
        })
    };
    AuthScope {
        id: args.id.unwrap_or_default(),
        name: args.name,
        r#type: args.kind,
        redaction_hints: args.redact,
        oauth_provider_id: args.provider.unwrap_or_default(),
        owner: args.owner,
        grants,
        token_env_var: args.token_env_var.unwrap_or_default(),
        ..AuthScope::default()
    }
}

fn table(scopes: &[AuthScope]) -> Table {
    let mut t = Table::new(&[
        "ID", "NAME", "TYPE", "OWNER", "GRANTS", "STATUS", "KEYS", "SOURCE",
    ]);
    for s in scopes {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.r#type.clone(),
            output::owner(s.owner),
            grants(s.grants.as_ref()),
            s.status.clone(),
            output::list(&s.secret_keys),
            s.source.clone(),
        ]);
    }
    t
}

/// Grants in one cell: `user:alice, group:dev`.
fn grants(grants: Option<&Grants>) -> String {
    let Some(g) = grants else {
        return String::new();
    };
    g.users
        .iter()
        .map(|u| format!("user:{u}"))
        .chain(g.groups.iter().map(|g| format!("group:{g}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fields(s: &AuthScope) -> Fields {
    let (users, groups) = s
        .grants
        .as_ref()
        .map(|g| (output::list(&g.users), output::list(&g.groups)))
        .unwrap_or_default();
    let mut f = Fields::new();
    f.add("id", &s.id)
        .add("name", &s.name)
        .add("type", &s.r#type)
        .add("owner", output::owner(s.owner))
        .add("grants.users", users)
        .add("grants.groups", groups)
        .add("source", &s.source)
        .add("oauth_provider_id", &s.oauth_provider_id)
        .add("token_env_var", &s.token_env_var)
        .add("status", &s.status)
        .add("redaction_hints", output::list(&s.redaction_hints))
        .add("secret_keys", output::list(&s.secret_keys))
        .add("version", s.version);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn create(args: &[&str]) -> AuthScope {
        let argv = ["mcplexerctl", "scope", "create"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Scope(ScopeCommand::Create(c)) = cli.command else {
            panic!("wrong command");
        };
        new_scope(c)
    }

    #[test]
    fn minimal_scope_leaves_the_rest_to_the_vault() {
        let s = create(&["--name", "GitHub", "--type", "env"]);
        assert_eq!(s.name, "GitHub");
        assert_eq!(s.r#type, "env");
        assert!(s.id.is_empty());
        assert_eq!(s.owner, None);
        assert_eq!(s.grants, None);
    }

    #[test]
    fn full_scope() {
        let s = create(&[
            "--name",
            "G",
            "--id",
            "g",
            "--type",
            "oauth2",
            "--redact",
            "token",
            "--redact",
            "auth",
            "--provider",
            "github",
            "--token-env-var",
            "GH_TOKEN",
            "--owner",
            "1000",
            "--grant-user",
            "alice",
            "--grant-group",
            "dev",
        ]);
        assert_eq!(s.id, "g");
        assert_eq!(s.redaction_hints, ["token", "auth"]);
        assert_eq!(s.oauth_provider_id, "github");
        assert_eq!(s.token_env_var, "GH_TOKEN");
        assert_eq!(s.owner, Some(1000));
        let g = s.grants.clone().unwrap();
        assert_eq!(g.users, ["alice"]);
        assert_eq!(g.groups, ["dev"]);
        assert_eq!(grants(s.grants.as_ref()), "user:alice, group:dev");
        let text = fields(&s).render();
        assert!(text.contains("type: oauth2\n"), "{text}");
        assert!(text.contains("owner: 1000\n"), "{text}");
        assert!(text.contains("secret_keys: -\n"), "{text}");
    }
}
