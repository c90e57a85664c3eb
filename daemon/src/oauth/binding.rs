//! What a scope's tokens are bound to: the oauth2 scope, its owner and its
//! provider as they were when the authorization or refresh that obtained
//! them started.
//!
//! The provider answers long after that start (a device flow may wait a
//! quarter of an hour for its user), and meanwhile the scope may be deleted,
//! and another user may create one under the same id. Tokens stored then
//! would come back with the id and be released to the new scope's users. So
//! every write of tokens checks its binding inside its write job, where the
//! configuration it sees is the one the write commits against, and a
//! binding that no longer holds refuses the write.

use crate::error::{Result, VaultError};
use crate::model::{ConfigState, OwnerSpec, ScopeSpec, ScopeType};

/// The scope, owner and provider that tokens are obtained for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    scope_id: String,
    provider_id: String,
    owner: Option<OwnerSpec>,
}

impl Binding {
    /// The binding of tokens obtained for `scope` as it is now.
    pub fn of(scope: &ScopeSpec) -> Self {
        Self {
            scope_id: scope.id.clone(),
            provider_id: scope.oauth_provider_id.clone(),
            owner: scope.owner.clone(),
        }
    }

    /// The scope's id.
    pub fn scope_id(&self) -> &str {
        &self.scope_id
    }

    /// Whether `config` still has the scope as an oauth2 scope of the same
    /// provider and owner.
    pub fn holds(&self, config: &ConfigState) -> bool {
        config.scopes.get(&self.scope_id).is_some_and(|s| {
            s.spec.kind == ScopeType::Oauth2
                && s.spec.oauth_provider_id == self.provider_id
                && s.spec.owner == self.owner
        })
    }

    /// Refuses, unless the binding holds in `config`, tokens obtained
    /// while `doing` (e.g. "authorizing it").
    pub fn check(&self, config: &ConfigState, doing: &str) -> Result<()> {
        if self.holds(config) {
            return Ok(());
        }
        let id = &self.scope_id;
        let (what, fix) = if config.scopes.contains_key(id) {
            (
                "was changed (its type, provider or owner)",
                Some(format!("mcplexerctl auth authorize {id}")),
            )
        } else {
            ("was deleted", None)
        };
        Err(VaultError::FailedPrecondition {
            message: format!(
                "auth_scope {id} {what} while {doing}; the tokens the provider issued were not stored"
            ),
            fix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Obj, Source};

    fn scope(provider: &str, owner: Option<u32>, kind: ScopeType) -> Obj<ScopeSpec> {
        Obj {
            spec: ScopeSpec {
                id: "gh".into(),
                name: "gh".into(),
                kind,
                oauth_provider_id: provider.into(),
                owner: owner.map(OwnerSpec::Uid),
                ..ScopeSpec::default()
            },
            source: Source::Api,
            applied_by: None,
        }
    }

    fn config(scope: Option<Obj<ScopeSpec>>) -> ConfigState {
        let mut config = ConfigState::default();
        if let Some(scope) = scope {
            config.scopes.insert("gh".into(), scope);
        }
        config
    }

    #[test]
    fn holds_only_for_the_same_scope_provider_and_owner() {
        let alice = Binding::of(&scope("github", Some(1000), ScopeType::Oauth2).spec);
        assert!(alice.holds(&config(Some(scope(
            "github",
            Some(1000),
            ScopeType::Oauth2
        )))));
        assert!(alice.check(&config(None), "authorizing it").is_err());
        for other in [
            scope("github", Some(1001), ScopeType::Oauth2),
            scope("github", None, ScopeType::Oauth2),
            scope("gitlab", Some(1000), ScopeType::Oauth2),
            scope("github", Some(1000), ScopeType::Env),
        ] {
            let err = alice
                .check(&config(Some(other)), "authorizing it")
                .unwrap_err();
            assert!(err.to_string().contains("was changed"), "{err}");
        }
        let err = alice
            .check(&config(None), "refreshing its token")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("auth_scope gh was deleted while refreshing its token"),
            "{err}"
        );
    }
}
