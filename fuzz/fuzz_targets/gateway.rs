//! The proxy's entry for what a client sends. Each line of the input goes
//! through the stdio reader's parsing ([`message_of`]) and then to the
//! gateway, in order, as one client session, with no vault reachable (so
//! no route allows anything and every credential fetch fails). Every
//! request with an id is answered once, with that id, as JSON-RPC 2.0,
//! within a deadline; what the gateway sends to the client on its own is
//! JSON-RPC 2.0 too; nothing panics.
#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mcplexer_proxy::gateway::Gateway;
use mcplexer_proxy::stdio::message_of;
use mcplexer_proxy::vault::VaultLink;
use serde_json::Value;

/// Longer than any answer without a downstream may take.
const DEADLINE: Duration = Duration::from_secs(10);

fn is_jsonrpc(message: &Value) -> bool {
    message.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
}

fuzz_target!(|data: &[u8]| {
    // A fresh runtime per input: whatever the session left running (audit
    // retries towards the absent vault) ends with it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let vault = VaultLink::new(Path::new("/nonexistent/mcplexer-fuzz/vault.sock"));
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel();
        let gateway = Gateway::new(vault, PathBuf::from("/"), false, false, out_tx);
        for line in data.split(|&b| b == b'\n') {
            let message = match message_of(line) {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(answer) => {
                    assert!(is_jsonrpc(&answer), "{answer}");
                    continue;
                }
            };
            let id = message.get("id").cloned();
            let is_request = id.is_some() && message.get("method").is_some_and(Value::is_string);
            let reply = tokio::time::timeout(DEADLINE, gateway.handle(message))
                .await
                .expect("the gateway did not answer in time");
            match (is_request, reply) {
                (true, Some(reply)) => {
                    assert!(is_jsonrpc(&reply), "{reply}");
                    let id = id.expect("a request has an id");
                    let expected = if id.is_null() { &Value::Null } else { &id };
                    assert_eq!(reply.get("id"), Some(expected), "{reply}");
                }
                (true, None) => panic!("a request was not answered"),
                (false, Some(reply)) => panic!("a notification or response was answered: {reply}"),
                (false, None) => {}
            }
        }
        while let Ok(message) = out_rx.try_recv() {
            assert!(is_jsonrpc(&message), "{message}");
        }
    });
});
