//! SQL of the audit log.

use mcplexer_proto::v1 as pb;
use rusqlite::{Connection, Row, params, params_from_iter, types::Value};

use crate::error::Result;

/// Which audit records a query returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// SQLite GLOB over the tool name.
    pub tool: Option<String>,
    /// Records at or after this time.
    pub since_ms: Option<i64>,
    /// Records with a larger id.
    pub after_id: Option<u64>,
    /// Records with a smaller id.
    pub before_id: Option<u64>,
    /// Records of this scope.
    pub scope_id: Option<String>,
    /// Records with this status.
    pub status: Option<String>,
    /// Records of this kind.
    pub kind: Option<String>,
    /// Records of this uid.
    pub uid: Option<u32>,
    /// At most this many (the newest, or with `oldest` the oldest),
    /// returned oldest first.
    pub limit: u32,
    /// The oldest matching records rather than the newest: how a reader
    /// pages forward through everything after `after_id`.
    pub oldest: bool,
}

impl AuditFilter {
    /// Whether `r` passes the filter (for records streamed live).
    pub fn matches(&self, r: &pb::AuditRecord) -> bool {
        self.tool.as_ref().is_none_or(|g| glob_match(g, &r.tool))
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.after_id.is_none_or(|id| r.id > id)
            && self.before_id.is_none_or(|id| r.id < id)
            && self.scope_id.as_ref().is_none_or(|s| *s == r.auth_scope_id)
            && self.status.as_ref().is_none_or(|s| *s == r.status)
            && self.kind.as_ref().is_none_or(|k| *k == r.kind)
            && self.uid.is_none_or(|u| u == r.uid)
    }
}

/// `*` and `?` glob, the subset `--tool` documents.
fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ti;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

pub(super) fn insert(conn: &Connection, r: &pb::AuditRecord) -> Result<u64> {
    conn.prepare_cached(
        "INSERT INTO audit (time_ms, uid, pid, kind, workspace_id, tool, route_rule_id,
                            server_id, scope_id, params, status, latency_ms, error, response, action)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        r.time_ms,
        r.uid,
        r.pid,
        r.kind,
        r.workspace_id,
        r.tool,
        r.route_rule_id,
        r.downstream_server_id,
        r.auth_scope_id,
        r.params,
        r.status,
        r.latency_ms as i64,
        r.error,
        r.response,
        r.action
    ])?;
    Ok(conn.last_insert_rowid() as u64)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<pb::AuditRecord> {
    Ok(pb::AuditRecord {
        id: row.get::<_, i64>(0)? as u64,
        time_ms: row.get(1)?,
        uid: row.get(2)?,
        pid: row.get(3)?,
        kind: row.get(4)?,
        workspace_id: row.get(5)?,
        tool: row.get(6)?,
        route_rule_id: row.get(7)?,
        downstream_server_id: row.get(8)?,
        auth_scope_id: row.get(9)?,
        params: row.get(10)?,
        status: row.get(11)?,
        latency_ms: row.get::<_, i64>(12)? as u64,
        error: row.get(13)?,
        response: row.get(14)?,
        action: row.get(15)?,
    })
}

pub(super) fn query(conn: &Connection, f: &AuditFilter) -> Result<(Vec<pb::AuditRecord>, bool)> {
    let mut sql = String::from(
        "SELECT id, time_ms, uid, pid, kind, workspace_id, tool, route_rule_id, server_id,
                scope_id, params, status, latency_ms, error, response, action
         FROM audit WHERE 1 = 1",
    );
    let mut args: Vec<Value> = Vec::new();
    let mut add = |clause: &str, value: Value| {
        args.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(g) = &f.tool {
        add("tool GLOB", Value::Text(g.clone()));
    }
    if let Some(t) = f.since_ms {
        add("time_ms >=", Value::Integer(t));
    }
    if let Some(id) = f.after_id {
        add("id >", Value::Integer(id as i64));
    }
    if let Some(id) = f.before_id {
        add("id <", Value::Integer(id as i64));
    }
    if let Some(s) = &f.scope_id {
        add("scope_id =", Value::Text(s.clone()));
    }
    if let Some(s) = &f.status {
        add("status =", Value::Text(s.clone()));
    }
    if let Some(k) = &f.kind {
        add("kind =", Value::Text(k.clone()));
    }
    if let Some(u) = f.uid {
        add("uid =", Value::Integer(i64::from(u)));
    }
    let limit = if f.limit == 0 {
        100
    } else {
        f.limit.min(10_000)
    };
    let order = if f.oldest { "ASC" } else { "DESC" };
    sql.push_str(&format!(" ORDER BY id {order} LIMIT {limit}"));
    // Newest (or oldest) first, stopping at the answer's budget: what is
    // read is never more than one answer holds, whatever the limit and the
    // records' size.
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let (mut out, mut used, mut truncated) = (Vec::new(), 0usize, false);
    while let Some(row) = rows.next()? {
        let record = from_row(row)?;
        // The record, its tag and its length prefix.
        let size = prost::Message::encoded_len(&record) + 8;
        if used + size > ANSWER_BUDGET {
            truncated = true;
            break;
        }
        used += size;
        out.push(record);
    }
    if !f.oldest {
        out.reverse();
    }
    Ok((out, truncated))
}

/// What one audit answer may hold: the message limit, less room for
/// framing and the answer's own fields.
pub const ANSWER_BUDGET: usize = mcplexer_proto::MAX_MESSAGE_SIZE - 64 * 1024;

pub(super) fn count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0))? as u64)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("github__*", "github__create_issue"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("github__*", "gitlab__x"));
        assert!(glob_match("*__get-*", "ev__get-env"));
    }
}
