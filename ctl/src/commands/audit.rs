//! `audit [--tool GLOB] [--since T] [--limit N] ... [--follow]`: query or
//! follow the audit log.
//!
//! The vault filters by the caller's uid (admins see everyone, and may ask
//! for one uid with `--uid`); records hold redacted params and errors only.
//! `--follow` uses the server-streaming `FollowAudit` RPC: the matching
//! existing records first, then each new one as it is written, until the
//! vault closes the stream or the user interrupts.

use mcplexer_proto::v1::{AuditQuery, AuditRecord};

use super::Ctx;
use crate::cli::AuditArgs;
use crate::error::Failure;
use crate::output::{self, Table};
use crate::time::{format_ms, now_ms};

/// `audit ...`.
pub async fn run(ctx: &mut Ctx, args: AuditArgs) -> Result<(), Failure> {
    let follow = args.follow;
    let query = query(args, now_ms());
    let mut admin = ctx.admin().await?;
    if follow {
        let mut stream = admin.follow_audit(query).await?.into_inner();
        while let Some(record) = stream.message().await? {
            if ctx.json {
                output::json_line(&record)?;
            } else {
                output::print_text(&line(&record))?;
            }
        }
        ctx.note("the vault closed the audit stream");
        return Ok(());
    }
    // The vault answers with what fits in one message, newest first;
    // older pages are asked for until the limit is reached.
    let wanted = match query.limit {
        0 => 100,
        n => n.min(10_000),
    } as usize;
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut page = query;
    loop {
        let answer = admin.query_audit(page.clone()).await?.into_inner();
        let (Some(first), true) = (answer.records.first().map(|r| r.id), answer.truncated) else {
            records.splice(0..0, answer.records);
            break;
        };
        records.splice(0..0, answer.records);
        if records.len() >= wanted {
            break;
        }
        page.before_id = first;
        page.limit = u32::try_from(wanted - records.len()).unwrap_or(u32::MAX);
    }
    if ctx.json {
        return output::json(&records);
    }
    Ok(table(&records).print()?)
}

/// The query for these options; `--since` durations count back from `now_ms`.
fn query(args: AuditArgs, now_ms: i64) -> AuditQuery {
    AuditQuery {
        tool: args.tool.unwrap_or_default(),
        since_ms: args.since.map_or(0, |s| s.epoch_ms(now_ms)),
        limit: args.limit.unwrap_or_default(),
        auth_scope_id: args.scope.unwrap_or_default(),
        status: args.status.unwrap_or_default(),
        kind: args.kind.unwrap_or_default(),
        after_id: 0,
        before_id: 0,
        uid: args.uid,
    }
}

/// What a record is about: the tool of a call, or the RPC of an admin record.
/// What a record is about: an admin record's RPC, a call's tool, or for a
/// request that is not a tool call its method and what it named
/// (`prompts/get ev__greet`).
fn subject(r: &AuditRecord) -> String {
    match (r.tool.is_empty(), r.action.is_empty()) {
        (true, _) => r.action.clone(),
        (false, true) => r.tool.clone(),
        (false, false) => format!("{} {}", r.action, r.tool),
    }
}

fn table(records: &[AuditRecord]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "TIME",
        "UID",
        "PID",
        "KIND",
        "STATUS",
        "TOOL",
        "WORKSPACE",
        "RULE",
        "SERVER",
        "SCOPE",
        "LATENCY",
        "ERROR",
    ]);
    for r in records {
        t.row(vec![
            r.id.to_string(),
            format_ms(r.time_ms),
            r.uid.to_string(),
            r.pid.to_string(),
            r.kind.clone(),
            r.status.clone(),
            subject(r),
            r.workspace_id.clone(),
            r.route_rule_id.clone(),
            r.downstream_server_id.clone(),
            r.auth_scope_id.clone(),
            latency(r),
            r.error.clone(),
        ]);
    }
    t
}

fn latency(r: &AuditRecord) -> String {
    if r.kind == "call" || r.latency_ms > 0 {
        format!("{}ms", r.latency_ms)
    } else {
        String::new()
    }
}

/// One followed record as a line of `key=value` fields (empty ones left
/// out), since a stream cannot be aligned in advance.
fn line(r: &AuditRecord) -> String {
    let mut out = format!(
        "{} #{} uid={} pid={}",
        format_ms(r.time_ms),
        r.id,
        r.uid,
        r.pid
    );
    let fields = [
        ("kind", r.kind.clone()),
        ("status", r.status.clone()),
        ("tool", r.tool.clone()),
        ("action", r.action.clone()),
        ("workspace", r.workspace_id.clone()),
        ("rule", r.route_rule_id.clone()),
        ("server", r.downstream_server_id.clone()),
        ("scope", r.auth_scope_id.clone()),
        ("latency", latency(r)),
        ("error", r.error.clone()),
    ];
    for (key, value) in fields {
        if value.is_empty() {
            continue;
        }
        let value = output::clean(&value);
        if value.contains(' ') || value.contains('"') {
            out.push_str(&format!(" {key}={value:?}"));
        } else {
            out.push_str(&format!(" {key}={value}"));
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> AuditArgs {
        let argv = ["mcplexerctl", "audit"].iter().chain(args);
        let Command::Audit(a) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("wrong command");
        };
        a
    }

    #[test]
    fn empty_query() {
        let q = query(parse(&[]), 1_000_000);
        assert_eq!(q, AuditQuery::default());
    }

    #[test]
    fn full_query() {
        let a = parse(&[
            "--tool",
            "github__*",
            "--since",
            "10m",
            "--limit",
            "5",
            "--scope",
            "gh",
            "--status",
            "denied",
            "--kind",
            "call",
            "--uid",
            "1000",
            "--follow",
        ]);
        assert!(a.follow);
        let q = query(a, 1_000_000);
        assert_eq!(q.tool, "github__*");
        assert_eq!(q.since_ms, 1_000_000 - 600_000);
        assert_eq!(q.limit, 5);
        assert_eq!(q.auth_scope_id, "gh");
        assert_eq!(q.status, "denied");
        assert_eq!(q.kind, "call");
        assert_eq!(q.uid, Some(1000));
    }

    #[test]
    fn since_forms() {
        let q = query(parse(&["--since", "2026-11-26T06:00:00Z"]), 0);
        assert_eq!(q.since_ms, 1_795_672_800_000);
        let q = query(parse(&["--since", "1795672800"]), 0);
        assert_eq!(q.since_ms, 1_795_672_800_000);
        let argv = ["mcplexerctl", "audit", "--since", "yesterday"];
        assert_eq!(Cli::try_parse_from(argv).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn follow_line() {
        let r = AuditRecord {
            id: 7,
            time_ms: 1_795_672_800_000,
            uid: 1000,
            pid: 42,
            kind: "call".into(),
            tool: "github__create_issue".into(),
            status: "error".into(),
            latency_ms: 12,
            error: "bad gateway".into(),
            ..AuditRecord::default()
        };
        assert_eq!(
            line(&r),
            "2026-11-26T06:00:00Z #7 uid=1000 pid=42 kind=call status=error \
             tool=github__create_issue latency=12ms error=\"bad gateway\"\n"
        );
        let text = table(&[r]).render();
        assert!(text.contains("github__create_issue"), "{text}");
    }
}
