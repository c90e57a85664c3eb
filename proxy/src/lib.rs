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
    let Some((namespace, _)) = split_tool(tool) else {
        return Err(format!("{tool:?} is not a <namespace>__<tool> name"));
    };
    let Some(server_id) = routing.by_namespace.get(namespace) else {
        return Err(format!(
            "no downstream server visible to this user has the namespace {namespace:?}"
        ));
    };
    let decision = routing.table.decide(cwd, tool, server_id);
    let verdict = match &decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny { .. } | Decision::NoMatch { .. } => "deny",
    };
    Ok(format!("{verdict}: {}", decision.explain()))
}
