//! mcplexer-proxy: the per-user MCP gateway.
//!
//! An MCP client starts `mcplexer-proxy stdio`; the proxy lists the tools of
//! every downstream server its route rules allow (as `<namespace>__<tool>`),
//! routes each call by those rules, fetches the credential for that call from
//! the vault, injects it into the downstream it starts, and sends a redacted
//! audit record back.
//!
//! Trust: runs as the user, unprivileged. It holds no secret on disk and no
//! configuration of its own; a credential is fetched per call and wiped once
//! injected. The client is untrusted: what it may reach is decided by the
//! rules, and what credentials exist for it by the vault, from our uid.

pub mod child;
pub mod cli;
pub mod downstream;
pub mod gateway;
pub mod http;
pub mod redact;
pub mod restart;
pub mod router;
pub mod serve;
pub mod stdio;
pub mod vault;

use std::path::{Path, PathBuf};

use router::{Decision, split_tool};
use vault::VaultLink;

/// The directory that picks the workspace: `given`, else the current one;
/// made absolute and canonical.
pub fn resolve_cwd(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let dir = match given {
        Some(dir) => dir,
        None => std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?,
    };
    dir.canonicalize()
        .map_err(|e| format!("cannot resolve the directory {}: {e}", dir.display()))
}

/// Explains the decision for a call of `tool` from `cwd`.
pub async fn dry_run(vault: &VaultLink, tool: &str, cwd: &Path) -> Result<String, String> {
    vault.load().await.map_err(|e| e.to_string())?;
    let routing = vault.routing();
    let prefixed = split_tool(tool).and_then(|(namespace, _)| routing.by_namespace.get(namespace));
    let decision = match prefixed {
        Some(server_id) => routing.table.decide(cwd, tool, server_id),
        None => {
            // Not a prefixed name: the servers mounted unprefixed may have
            // it, the first whose rules allow it.
            let mut unprefixed: Vec<&String> = routing
                .servers
                .values()
                .filter(|s| s.unprefixed)
                .map(|s| &s.id)
                .collect();
            unprefixed.sort();
            let decisions: Vec<Decision> = unprefixed
                .iter()
                .map(|server_id| routing.table.decide(cwd, tool, server_id))
                .collect();
            match decisions.iter().position(Decision::is_allowed) {
                Some(allowed) => decisions[allowed].clone(),
                None => decisions.into_iter().next().ok_or_else(|| {
                    format!(
                        "{tool:?} is not a <namespace>__<tool> name of a server visible to this user, and no such server is mounted unprefixed"
                    )
                })?,
            }
        }
    };
    let verdict = match &decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny { .. } | Decision::NoMatch { .. } => "deny",
    };
    Ok(format!("{verdict}: {}", decision.explain()))
}
