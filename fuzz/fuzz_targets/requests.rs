//! Request messages as the vault decodes them: every byte string a peer
//! may send for an object-creating RPC is decoded with prost, converted to
//! the vault's object and normalised (what `create_*` does before it
//! touches the store). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplexer_proto::v1 as pb;
use mcplexer_vaultd::model::{
    self, Normalize, ProviderSpec, RouteSpec, ScopeSpec, ServerSpec, WorkspaceSpec,
};
use prost::Message;

/// Decodes `bytes` as `M`, converts it with `from` and normalises the
/// object, as a create RPC does.
fn object<M, S>(bytes: &[u8], from: fn(M) -> Result<S, String>)
where
    M: Message + Default,
    S: Normalize + serde::Serialize,
{
    if let Ok(m) = M::decode(bytes)
        && let Ok(mut spec) = from(m)
    {
        let _ = model::normalize_one(&mut spec, Some(1000));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => object(bytes, ScopeSpec::from_proto),
        1 => object(bytes, ProviderSpec::from_proto),
        2 => object(bytes, ServerSpec::from_proto),
        3 => object(bytes, WorkspaceSpec::from_proto),
        4 => object(bytes, RouteSpec::from_proto),
        5 => {
            let _ = pb::CredentialRequest::decode(bytes);
        }
        6 => {
            let _ = pb::AuditRecord::decode(bytes);
        }
        _ => {
            if let Ok(m) = pb::ApplyRequest::decode(bytes) {
                let _ = model::yaml::from_str::<model::Document>(
                    &m.yaml,
                    model::yaml::Limits::DOCUMENT,
                );
            }
        }
    }
});
