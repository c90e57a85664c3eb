//! The stdio front end: newline-delimited JSON-RPC on stdin/stdout (logs go
//! to stderr). Each request is served on its own task, so a slow downstream
//! delays only its own calls; one writer task owns stdout.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::vault::VaultLink;

/// The longest line accepted from the client (16 MiB).
const MAX_LINE: usize = 16 << 20;

/// Serves one client on stdin/stdout until stdin closes.
pub async fn run(vault: Arc<VaultLink>, cwd: PathBuf, log_full: bool) -> std::io::Result<()> {
    if let Err(err) = vault.load().await {
        tracing::warn!(error = %err, "no routing configuration yet; calls fail until the vault answers");
    }
    tokio::spawn(vault.clone().follow());
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(message) = out_rx.recv().await {
            // serde_json escapes newlines inside strings: one message, one line.
            let mut line = message.to_string();
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let gateway = Gateway::new(vault, cwd, log_full, out_tx.clone());
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        line.clear();
        let n = (&mut stdin)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            let _ = out_tx.send(error(-32600, "message too large"));
            // Skip the rest of the over-long line.
            let mut rest = Vec::new();
            stdin.read_until(b'\n', &mut rest).await?;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message = match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(Value::Array(_)) => {
                let _ = out_tx.send(error(
                    -32600,
                    "batches are not supported; send one message per line",
                ));
                continue;
            }
            Ok(_) | Err(_) => {
                let _ = out_tx.send(error(-32700, "parse error: not a JSON-RPC message"));
                continue;
            }
        };
        let gateway = gateway.clone();
        let out = out_tx.clone();
        in_flight.spawn(async move {
            if let Some(reply) = gateway.handle(message).await {
                let _ = out.send(reply);
            }
        });
        // Reap finished requests so the set does not grow with the session.
        while in_flight.try_join_next().is_some() {}
    }
    // stdin closed: answer what is in flight (each call has its own
    // timeout), then stop the children and deliver the audit records.
    while in_flight.join_next().await.is_some() {}
    gateway.shutdown().await;
    drop(gateway);
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

fn error(code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
}
