//! Vault-wide commands: `status`, `apply`, `export`, `identity rotate`,
//! `identity seal` and `unlock`.
//!
//! `apply` reads the YAML document locally (a file or stdin) and sends it
//! as is; the vault parses and validates it, and applies it in one
//! transaction or not at all. `identity ...` and `unlock` are admin-only;
//! the vault refuses them to anyone else. Passphrases go through
//! [`sensitive`](crate::sensitive), like secret values.

use std::io::Read;

use mcplexer_proto::v1::{ApplyRequest, ApplyResponse, ExportRequest, StatusRequest};

use super::Ctx;
use crate::cli::{ApplyArgs, IdentityCommand};
use crate::error::Failure;
use crate::output::{self, Fields, Table};
use crate::sensitive;
use crate::time::format_secs;

/// `status`.
pub async fn status(ctx: &mut Ctx) -> Result<(), Failure> {
    let s = ctx
        .admin()
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner();
    if ctx.json {
        return output::json(&s);
    }
    let mut f = Fields::new();
    f.add("version", &s.version)
        .add("mode", &s.mode)
        .add("caller_uid", s.caller_uid)
        .add("caller_pid", s.caller_pid)
        .add("caller_role", &s.caller_role)
        .add("recipient", &s.recipient)
        .add("sealed", s.sealed)
        .add("identity_sealed", s.identity_sealed)
        .add("memory_lock", &s.memory_lock)
        .add("state_dir", &s.state_dir)
        .add("uptime", format_secs(s.uptime_sec))
        .add("scopes", s.scopes)
        .add("providers", s.providers)
        .add("servers", s.servers)
        .add("workspaces", s.workspaces)
        .add("routes", s.routes)
        .add("audit_records", s.audit_records)
        .add("audit_retention_days", s.audit_retention_days);
    for d in &s.disabled {
        f.add(
            "disabled",
            format!(
                "{} {} ({}): {}",
                output::clean(&d.kind),
                output::clean(&d.id),
                output::owner(d.owner),
                output::clean(&d.reason)
            ),
        );
    }
    Ok(f.print()?)
}

/// `apply -f FILE [--dry-run]`.
pub async fn apply(ctx: &mut Ctx, args: ApplyArgs) -> Result<(), Failure> {
    let yaml = read_document(&args.file)?;
    ctx.note(format_args!(
        "applying {} ({} bytes){}",
        args.file.display(),
        yaml.len(),
        if args.dry_run { ", dry run" } else { "" }
    ));
    let request = ApplyRequest {
        yaml,
        dry_run: args.dry_run,
    };
    let response = ctx.admin().await?.apply(request).await?.into_inner();
    if ctx.json {
        return output::json(&response);
    }
    Ok(output::print_text(&render_changes(
        &response,
        args.dry_run,
    ))?)
}

/// The changes of an apply, as a table, or `no changes`; then, for a dry
/// run, that nothing was changed.
fn render_changes(response: &ApplyResponse, requested_dry_run: bool) -> String {
    let mut text = if response.changes.is_empty() {
        "no changes\n".to_owned()
    } else {
        let mut t = Table::new(&["ACTION", "KIND", "ID", "FIELDS"]);
        for c in &response.changes {
            t.row(vec![
                c.action.clone(),
                c.kind.clone(),
                c.id.clone(),
                output::list(&c.fields),
            ]);
        }
        t.render()
    };
    if response.dry_run || requested_dry_run {
        text.push_str("dry run: nothing was changed\n");
    }
    text
}

/// Reads the `-f` document: a file, or stdin for `-`. Unreadable or
/// non-UTF-8 input is a usage error.
fn read_document(path: &std::path::Path) -> Result<String, Failure> {
    let name = path.display();
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::usage(format!("cannot read the document from stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(path).map_err(|e| Failure::usage(format!("cannot read {name}: {e}")))?
    };
    // The vault reads no longer document; saying so here saves sending it.
    let limit = mcplexer_proto::MAX_DOCUMENT_SIZE;
    if bytes.len() > limit {
        return Err(Failure::usage(format!(
            "{name} is too large: {} bytes, over the vault's limit of {limit} bytes per document; split it into several documents",
            bytes.len()
        )));
    }
    String::from_utf8(bytes).map_err(|_| Failure::usage(format!("{name} is not UTF-8 text")))
}

/// `export`.
pub async fn export(ctx: &mut Ctx) -> Result<(), Failure> {
    let response = ctx
        .admin()
        .await?
        .export(ExportRequest {})
        .await?
        .into_inner();
    if ctx.json {
        return output::json(&response);
    }
    let mut yaml = response.yaml;
    if !yaml.is_empty() && !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    Ok(output::print_text(&yaml)?)
}

/// `identity rotate` (prints the new recipient and how much was
/// re-encrypted) and `identity seal`.
pub async fn identity(ctx: &mut Ctx, cmd: IdentityCommand) -> Result<(), Failure> {
    match cmd {
        IdentityCommand::Rotate => {
            let status = ctx
                .admin()
                .await?
                .status(StatusRequest {})
                .await?
                .into_inner();
            // A sealed identity is replaced by a sealed one: ask for its
            // passphrase (the vault refuses the rotation without it).
            let passphrase = if status.identity_sealed {
                sensitive::read_passphrase("New passphrase for the new identity", true)?
            } else {
                Default::default()
            };
            let response = sensitive::rotate_identity(ctx.channel().await?, passphrase).await?;
            if ctx.json {
                return output::json(&response);
            }
            let mut f = Fields::new();
            f.add("recipient", &response.recipient)
                .add("reencrypted", response.reencrypted);
            Ok(f.print()?)
        }
        IdentityCommand::Seal => {
            // Connect first, so nobody types a passphrase for an absent vault.
            let channel = ctx.channel().await?;
            let passphrase = sensitive::read_passphrase("New passphrase", true)?;
            let response = sensitive::seal_identity(channel, passphrase).await?;
            if ctx.json {
                return output::json(&response);
            }
            let mut f = Fields::new();
            f.add("path", &response.path)
                .add("recipient", &response.recipient)
                .add("reencrypted", response.reencrypted);
            f.print()?;
            ctx.note(format_args!(
                "the vault starts sealed from its next start, until `mcplexerctl unlock`"
            ));
            Ok(())
        }
    }
}

/// `unlock`.
pub async fn unlock(ctx: &mut Ctx) -> Result<(), Failure> {
    let channel = ctx.channel().await?;
    let passphrase = sensitive::read_passphrase("Vault passphrase", false)?;
    let response = sensitive::unlock(channel, passphrase).await?;
    if ctx.json {
        return output::json(&response);
    }
    if response.was_sealed {
        ctx.note(format_args!("unlocked the vault ({})", response.recipient));
    } else {
        ctx.note(format_args!("the vault was not sealed; nothing changed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;
    use mcplexer_proto::v1::Change;

    #[test]
    fn no_changes() {
        let r = ApplyResponse::default();
        assert_eq!(render_changes(&r, false), "no changes\n");
        assert_eq!(
            render_changes(&r, true),
            "no changes\ndry run: nothing was changed\n"
        );
    }

    #[test]
    fn changes_table() {
        let r = ApplyResponse {
            changes: vec![
                Change {
                    kind: "auth_scope".into(),
                    id: "github".into(),
                    action: "create".into(),
                    fields: vec![],
                },
                Change {
                    kind: "route_rule".into(),
                    id: "gh".into(),
                    action: "update".into(),
                    fields: vec!["priority".into(), "tool_match".into()],
                },
            ],
            dry_run: true,
        };
        assert_eq!(
            render_changes(&r, false),
            "ACTION  KIND        ID      FIELDS\n\
             create  auth_scope  github  -\n\
             update  route_rule  gh      priority, tool_match\n\
             dry run: nothing was changed\n"
        );
    }

    #[test]
    fn unreadable_document_is_a_usage_error() {
        let err = read_document(std::path::Path::new("/nonexistent/doc.yaml")).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        assert!(err.render(false).contains("/nonexistent/doc.yaml"));
    }
}
