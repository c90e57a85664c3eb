//! OAuth 2 in the vault: provider templates, the authorization-code (PKCE)
//! and device flows, encrypted tokens and their refresh.

pub mod binding;
pub mod client;
pub mod flows;
pub mod templates;
pub mod tokens;
