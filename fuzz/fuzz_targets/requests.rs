//! Request messages as the vault decodes them: every byte string a peer
//! may send for an object-creating RPC is decoded with prost, converted to
//! the vault's object and normalised (what `create_*` does before it
//! touches the store). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplexer_proto::v1 as pb;
use mcplexer_vaultd::model::{self, ProviderSpec, RouteSpec, ScopeSpec, ServerSpec, WorkspaceSpec};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(m) = pb::AuthScope::decode(bytes)
                && let Ok(mut spec) = ScopeSpec::from_proto(m)
            {
                let _ = model::normalize_one(&mut spec, Some(1000));
            }
        }
        1 => {
            if let Ok(m) = pb::OAuthProvider::decode(bytes)
                && let Ok(mut spec) = ProviderSpec::from_proto(m)
            {
                let _ = model::normalize_one(&mut spec, Some(1000));
            }
        }
        2 => {
            if let Ok(m) = pb::DownstreamServer::decode(bytes)
                && let Ok(mut spec) = ServerSpec::from_proto(m)
            {
                let _ = model::normalize_one(&mut spec, Some(1000));
            }
        }
        3 => {
            if let Ok(m) = pb::Workspace::decode(bytes)
                && let Ok(mut spec) = WorkspaceSpec::from_proto(m)
            {
                let _ = model::normalize_one(&mut spec, Some(1000));
            }
        }
        4 => {
            if let Ok(m) = pb::RouteRule::decode(bytes)
                && let Ok(mut spec) = RouteSpec::from_proto(m)
            {
                let _ = model::normalize_one(&mut spec, Some(1000));
            }
        }
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
