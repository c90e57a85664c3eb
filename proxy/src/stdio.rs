//! The stdio front end: newline-delimited JSON-RPC on stdin/stdout (logs go
//! to stderr). Each request is served on its own task, so a slow downstream
//! delays only its own calls; one writer task owns stdout.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
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
        let mut stdout = output();
        while let Some(message) = out_rx.recv().await {
            // serde_json escapes newlines inside strings: one message, one line.
            let mut line = message.to_string();
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let gateway = Gateway::new(vault, cwd, false, log_full, out_tx.clone());
    let mut stdin = BufReader::new(input());
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
        let message = match message_of(&line) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(answer) => {
                let _ = out_tx.send(answer);
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
    // Listen streams last until cancelled: the client is gone, so they end
    // (again while requests still finish, in case one opened since).
    while !in_flight.is_empty() {
        gateway.close_streams();
        tokio::select! {
            _ = in_flight.join_next() => {}
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
    gateway.shutdown().await;
    drop(gateway);
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

/// The message on one line from the client: `None` for a blank line, the
/// error to answer for anything but one JSON object.
pub fn message_of(line: &[u8]) -> Result<Option<Value>, Value> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => Ok(Some(Value::Object(map))),
        Ok(Value::Array(_)) => Err(error(
            -32600,
            "batches are not supported; send one message per line",
        )),
        Ok(_) | Err(_) => Err(error(-32700, "parse error: not a JSON-RPC message")),
    }
}

/// Standard input. A pipe (what MCP clients give) is read through the
/// runtime's event loop; anything else (a terminal, a file) through tokio's
/// blocking reader. The event loop saves a thread hand-off on every message.
fn input() -> Box<dyn AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd;
    // `from_owned_fd` accepts only a FIFO and makes the descriptor
    // non-blocking; children never inherit our stdin (theirs are piped).
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok());
    match pipe {
        Some(pipe) => Box::new(pipe),
        None => Box::new(tokio::io::stdin()),
    }
}

/// Standard output, as [`input`]: a pipe through the event loop, anything
/// else through tokio's blocking writer.
fn output() -> Box<dyn AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd;
    let pipe = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
    match pipe {
        Some(pipe) => Box::new(pipe),
        None => Box::new(tokio::io::stdout()),
    }
}

fn error(code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}})
}
