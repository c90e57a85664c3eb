//! Authorization-code flows in progress: the PKCE verifier and the state
//! the vault made, bound to the uid that started the flow, kept 10 minutes,
//! used once. Memory only: a restart forgets them (the user runs
//! `auth authorize` again).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Result, VaultError};
use crate::model::OwnerSpec;

/// How long a flow may take.
pub const FLOW_TTL: Duration = Duration::from_secs(600);

/// Flows one uid may have open at once.
const MAX_PER_UID: usize = 16;

/// One flow in progress. No `Debug`.
pub struct Pending {
    /// Who started it.
    pub uid: u32,
    /// The scope being authorized.
    pub scope_id: String,
    /// The provider, as it was when the flow started.
    pub provider_id: String,
    /// The scope's owner, as it was when the flow started.
    pub owner: Option<OwnerSpec>,
    /// The PKCE code verifier (none when the provider does not use PKCE).
    pub verifier: Option<Zeroizing<String>>,
    /// The redirect URI sent in the authorization request.
    pub redirect_uri: String,
    started: Instant,
}

/// The open flows, by state.
#[derive(Default)]
pub struct Flows {
    open: Mutex<HashMap<String, Pending>>,
}

/// `n` random bytes from the kernel, base64url without padding.
pub fn random_token(n: usize) -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    mcplexer_proto::random_bytes(&mut bytes)
        .map_err(|e| VaultError::io("cannot read random bytes", e))?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(&*bytes)))
}

/// The S256 code challenge of a verifier (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Flows {
    /// Opens a flow; returns its state.
    pub fn open(&self, pending: PendingSpec) -> Result<(String, Option<String>)> {
        let state = random_token(32)?;
        let verifier = if pending.pkce {
            Some(random_token(32)?)
        } else {
            None
        };
        let challenge = verifier.as_ref().map(|v| challenge(v));
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, p| p.started.elapsed() < FLOW_TTL);
        if open.values().filter(|p| p.uid == pending.uid).count() >= MAX_PER_UID {
            return Err(VaultError::FailedPrecondition {
                message: format!(
                    "uid {} has {MAX_PER_UID} authorizations in progress already",
                    pending.uid
                ),
                fix: Some("finish or abandon them; they expire after 10 minutes".into()),
            });
        }
        open.insert(
            state.to_string(),
            Pending {
                uid: pending.uid,
                scope_id: pending.scope_id,
                provider_id: pending.provider_id,
                owner: pending.owner,
                verifier,
                redirect_uri: pending.redirect_uri,
                started: Instant::now(),
            },
        );
        Ok((state.to_string(), challenge))
    }

    /// Takes the flow of `state` for `uid`: once, within its lifetime.
    /// A flow of another uid is left in place and refused like an unknown
    /// one.
    pub fn take(&self, state: &str, uid: u32) -> Result<Pending> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let unknown = || VaultError::FailedPrecondition {
            message: "no authorization in progress has this state: it was never issued to this \
                      user, was already used, or expired (10 minutes)"
                .into(),
            fix: Some("run mcplexerctl auth authorize SCOPE again".into()),
        };
        match open.get(state) {
            Some(p) if p.uid == uid => {}
            _ => return Err(unknown()),
        }
        let pending = open.remove(state).ok_or_else(unknown)?;
        if pending.started.elapsed() >= FLOW_TTL {
            return Err(unknown());
        }
        Ok(pending)
    }
}

/// What a new flow is for.
pub struct PendingSpec {
    /// Who starts it.
    pub uid: u32,
    /// The scope.
    pub scope_id: String,
    /// Its provider.
    pub provider_id: String,
    /// Its owner.
    pub owner: Option<OwnerSpec>,
    /// Whether to use PKCE.
    pub pkce: bool,
    /// The redirect URI.
    pub redirect_uri: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: u32) -> PendingSpec {
        PendingSpec {
            uid,
            scope_id: "s".into(),
            provider_id: "p".into(),
            owner: None,
            pkce: true,
            redirect_uri: "http://127.0.0.1:1/callback".into(),
        }
    }

    #[test]
    fn the_rfc_7636_example_challenge() {
        // RFC 7636 Appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let a = random_token(32).unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(*a, *random_token(32).unwrap());
    }

    #[test]
    fn a_flow_is_taken_once_and_only_by_its_uid() {
        let flows = Flows::default();
        let (state, challenge) = flows.open(spec(1000)).unwrap();
        assert!(challenge.is_some());
        assert!(flows.take(&state, 1001).is_err(), "another uid");
        let pending = flows.take(&state, 1000).unwrap();
        assert_eq!(pending.scope_id, "s");
        assert!(flows.take(&state, 1000).is_err(), "used twice");
        assert!(flows.take("made-up", 1000).is_err());
    }

    #[test]
    fn a_uid_cannot_open_unbounded_flows() {
        let flows = Flows::default();
        for _ in 0..MAX_PER_UID {
            flows.open(spec(7)).unwrap();
        }
        assert!(flows.open(spec(7)).is_err());
        assert!(flows.open(spec(8)).is_ok());
    }
}
