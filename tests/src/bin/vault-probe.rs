//! `vault-probe`: test tooling that calls the Vault service (the RPCs the
//! proxy uses, which have no mcplexerctl command) and prints the answer as
//! JSON on stdout.
//!
//! ```text
//! vault-probe --socket PATH credential SCOPE SERVER TRANSPORT [--tool T] [--rule R]
//!     [--concurrent N | --repeat N [--pace MICROS]]
//! vault-probe --socket PATH config
//! vault-probe --socket PATH watch N
//! vault-probe --socket PATH complete-authorization STATE CODE [--iss ISS]
//! vault-probe --socket PATH submit-audit --tool T --status S [--params JSON]
//!     [--claim-uid N] [--claim-pid N] [--claim-kind K] [--repeat N]
//! ```
//!
//! Without `--rule`, `credential` names the rule a proxy of the same uid
//! would: the first allow rule (by priority, then id) of its configuration
//! that carries SCOPE to SERVER; with none (or no configuration for that
//! uid), it names none. `--rule ''` names none on purpose.
//!
//! `credential --concurrent N` opens N connections, then sends the same
//! request on each at once (after all are connected) and prints a JSON
//! array of the N answers in connection order, each the object a single
//! request prints: the credential, or the refusal (`code`, `message`,
//! `vault_code`, `fix`, `pid`). It exits 0 once every request was answered,
//! whatever the answers (the test reads them), 1 if a connection fails.
//!
//! `credential --repeat N [--pace MICROS]` makes the request N times, one
//! after the other on one connection (with `--pace`, each starting MICROS
//! after the one before, or at once when that one took longer), and prints `{"count": N, "refused": R, "p50_us": …,
//! "p99_us": …, "max_us": …, "refusal": ...}`: each request's latency as
//! this client saw it, and the last refusal (or null).
//!
//! `submit-audit --repeat N` submits the record N times, one after the
//! other on one connection, and prints `{"accepted": A, "refused": R,
//! "refusal": ...}` with the last refusal (or null); it exits 0 whatever
//! the answers.
//!
//! `watch N` opens N configuration watches (WatchConfig streams) on one
//! connection and prints `{"opened": K, "refusals": [...]}`, each refusal
//! as a failed request prints it; the streams close when it exits.
//!
//! The `--claim-*` options put a uid, pid or kind in the submitted record,
//! to check that the vault replaces them with what it knows of the peer.
//!
//! `complete-authorization` calls Auth/CompleteAuthorization directly (as
//! `mcplexerctl auth authorize` does once the browser is back), so a test
//! can hand the vault a made-up or another user's state; it prints the
//! resulting status under `"status"`.
//!
//! Every answer carries `"pid"`, the probe's own pid, so a test can match it
//! against the pid the vault audited. Values are printed as UTF-8 strings
//! (lossy). On error it prints `{"code": "<gRPC code name>", "message": ...,
//! "vault_code": ..., "fix": ..., "pid": ...}` (`fix`: the vault's
//! `mcplexer-error-fix`, empty when it sent none) and exits 3 for
//! PermissionDenied, 4 for the other refusals (invalid argument, not found,
//! already exists, failed precondition, out of range, resource exhausted,
//! unauthenticated), 1 otherwise (including a socket it cannot connect to,
//! code "Unreachable").
//! Usage errors exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use mcplexer_proto::v1::{
    AuditRecord, CompleteAuthorizationRequest, CredentialRequest, GetConfigRequest,
};
use serde_json::{Value, json};
use tonic::Code;

/// What to do.
enum Command {
    Credential(CredentialRequest),
    /// `credential --concurrent N`: N requests at once, one per connection.
    CredentialConcurrent(CredentialRequest, usize),
    Config,
    Watch(usize),
    SubmitAudit(AuditRecord),
    SubmitAuditRepeated(AuditRecord, usize),
    /// `credential --repeat N [--pace MICROS]`.
    CredentialRepeated(CredentialRequest, usize, Option<std::time::Duration>),
    CompleteAuthorization(CompleteAuthorizationRequest),
}

/// Why the probe failed.
enum Failure {
    Usage(String),
    Unreachable(String),
    Status(tonic::Status),
    Local(String),
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// Takes the value of an option whose name was just read.
fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, Failure> {
    args.next()
        .ok_or_else(|| usage(format!("{flag} needs a value")))
}

fn number(text: &str) -> Result<u32, Failure> {
    text.parse()
        .map_err(|_| usage(format!("{text:?} is not a number")))
}

fn parse(argv: Vec<String>) -> Result<(PathBuf, Command), Failure> {
    let mut socket = None;
    let mut positional = Vec::new();
    let mut tool = String::new();
    let mut rule = None;
    let mut status = None;
    let mut params = String::new();
    let mut claim = AuditRecord::default();
    let mut iss = String::new();
    let mut concurrent = None;
    let mut repeat = None;
    let mut pace = None;
    let mut args = argv.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--concurrent" => match number(&value(&mut args, "--concurrent")?)? {
                0 => return Err(usage("--concurrent wants at least 1")),
                n => concurrent = Some(n as usize),
            },
            "--repeat" => repeat = Some(number(&value(&mut args, "--repeat")?)? as usize),
            "--pace" => {
                pace = Some(std::time::Duration::from_micros(u64::from(number(
                    &value(&mut args, "--pace")?,
                )?)));
            }
            "--socket" => socket = Some(PathBuf::from(value(&mut args, "--socket")?)),
            "--tool" => tool = value(&mut args, "--tool")?,
            "--rule" => rule = Some(value(&mut args, "--rule")?),
            "--status" => status = Some(value(&mut args, "--status")?),
            "--params" => params = value(&mut args, "--params")?,
            "--claim-uid" => claim.uid = number(&value(&mut args, "--claim-uid")?)?,
            "--claim-pid" => claim.pid = number(&value(&mut args, "--claim-pid")?)?,
            "--claim-kind" => claim.kind = value(&mut args, "--claim-kind")?,
            "--iss" => iss = value(&mut args, "--iss")?,
            flag if flag.starts_with("--") => return Err(usage(format!("unknown option {flag}"))),
            _ => positional.push(arg),
        }
    }
    let socket = socket.ok_or_else(|| usage("--socket PATH is required"))?;
    let command = match positional
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["credential", scope, server, transport] => Command::Credential(CredentialRequest {
            auth_scope_id: (*scope).to_owned(),
            downstream_server_id: (*server).to_owned(),
            transport: (*transport).to_owned(),
            tool,
            route_rule_id: rule.clone().unwrap_or_else(|| AUTO_RULE.into()),
        }),
        ["config"] => Command::Config,
        ["watch", n] => Command::Watch(number(n)? as usize),
        ["submit-audit"] => Command::SubmitAudit(AuditRecord {
            tool,
            status: status.ok_or_else(|| usage("submit-audit needs --status S"))?,
            params,
            ..claim
        }),
        ["complete-authorization", state, code] => {
            Command::CompleteAuthorization(CompleteAuthorizationRequest {
                state: (*state).to_owned(),
                code: (*code).to_owned(),
                iss,
            })
        }
        _ => {
            return Err(usage(
                "usage: vault-probe --socket PATH (credential SCOPE SERVER TRANSPORT [--tool T] [--rule R] | config | watch N | submit-audit --tool T --status S [--params JSON] | complete-authorization STATE CODE [--iss ISS])",
            ));
        }
    };
    if pace.is_some() && repeat.is_none() {
        return Err(usage("--pace applies to --repeat only"));
    }
    let command = match (command, repeat) {
        (command, None) => command,
        (Command::SubmitAudit(record), Some(n)) => Command::SubmitAuditRepeated(record, n),
        (Command::Credential(request), Some(n)) => Command::CredentialRepeated(request, n, pace),
        (_, Some(_)) => {
            return Err(usage(
                "--repeat applies to credential and submit-audit only",
            ));
        }
    };
    let command = match (command, concurrent) {
        (command, None) => command,
        (Command::Credential(request), Some(n)) => Command::CredentialConcurrent(request, n),
        (_, Some(_)) => return Err(usage("--concurrent applies to credential only")),
    };
    Ok((socket, command))
}

/// Stands for "the rule a proxy would pick" until the configuration is read.
const AUTO_RULE: &str = "\0auto";

/// The rule a proxy of this uid would name for `request`.
async fn pick_rule(
    vault: &mut mcplexer_proto::v1::vault_client::VaultClient<tonic::transport::Channel>,
    request: &mut CredentialRequest,
) -> Result<(), Failure> {
    if request.route_rule_id != AUTO_RULE {
        return Ok(());
    }
    // A peer refused the configuration names no rule: the credential
    // request then shows how the vault refuses it.
    let Ok(config) = vault.get_config(GetConfigRequest {}).await else {
        request.route_rule_id.clear();
        return Ok(());
    };
    let config = config.into_inner();
    let mut rules: Vec<_> = config
        .routes
        .iter()
        .filter(|r| {
            r.policy == "allow"
                && r.auth_scope_id == request.auth_scope_id
                && r.downstream_server_id == request.downstream_server_id
        })
        .collect();
    rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    request.route_rule_id = rules.first().map(|r| r.id.clone()).unwrap_or_default();
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(socket: PathBuf, command: Command) -> Result<Value, Failure> {
    let channel = mcplexer_proto::connect(&socket)
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let mut vault = mcplexer_proto::vault_client(channel);
    let pid = std::process::id();
    match command {
        Command::CredentialConcurrent(mut request, n) => {
            pick_rule(&mut vault, &mut request).await?;
            concurrent_credentials(&socket, request, n).await
        }
        Command::Credential(mut request) => {
            pick_rule(&mut vault, &mut request).await?;
            let c = vault
                .get_credential(request)
                .await
                .map_err(Failure::Status)?
                .into_inner();
            let values: Vec<Value> = c
                .values
                .iter()
                .map(|v| json!({"name": v.name, "value": text(&v.value)}))
                .collect();
            let scrub: Vec<String> = c.scrub.iter().map(|s| text(s)).collect();
            Ok(json!({
                "pid": pid,
                "kind": c.kind,
                "values": values,
                "version": c.version,
                "expires_at_ms": c.expires_at_ms,
                "scrub": scrub,
                "redaction_hints": c.redaction_hints,
            }))
        }
        Command::Config => {
            let config = vault
                .get_config(GetConfigRequest {})
                .await
                .map_err(Failure::Status)?
                .into_inner();
            let mut value =
                serde_json::to_value(&config).map_err(|e| Failure::Local(e.to_string()))?;
            if let Value::Object(map) = &mut value {
                map.insert("pid".into(), json!(pid));
            }
            Ok(value)
        }
        Command::Watch(n) => {
            let mut streams = Vec::new();
            let mut refusals = Vec::new();
            for _ in 0..n {
                match vault.watch_config(GetConfigRequest {}).await {
                    Ok(stream) => streams.push(stream.into_inner()),
                    Err(status) => refusals.push(refusal_json(&status, pid)),
                }
            }
            Ok(json!({"pid": pid, "opened": streams.len(), "refusals": refusals}))
        }
        Command::CredentialRepeated(mut request, n, pace) => {
            pick_rule(&mut vault, &mut request).await?;
            let (mut latencies, mut refused, mut refusal) = (Vec::with_capacity(n), 0, Value::Null);
            let first = tokio::time::Instant::now();
            for i in 0..n {
                if let Some(pace) = pace {
                    tokio::time::sleep_until(first + pace * i as u32).await;
                }
                let started = std::time::Instant::now();
                let answer = vault.get_credential(request.clone()).await;
                latencies.push(started.elapsed().as_micros() as u64);
                if let Err(status) = answer {
                    refused += 1;
                    refusal = refusal_json(&status, pid);
                }
            }
            latencies.sort_unstable();
            let at = |q: f64| {
                let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
                latencies.get(i).copied().unwrap_or(0)
            };
            Ok(json!({
                "pid": pid,
                "count": n,
                "refused": refused,
                "p50_us": at(0.50),
                "p99_us": at(0.99),
                "max_us": latencies.last().copied().unwrap_or(0),
                "refusal": refusal,
            }))
        }
        Command::SubmitAuditRepeated(record, n) => {
            let (mut accepted, mut refused, mut refusal) = (0, 0, Value::Null);
            for _ in 0..n {
                match vault.submit_audit(record.clone()).await {
                    Ok(_) => accepted += 1,
                    Err(status) => {
                        refused += 1;
                        refusal = refusal_json(&status, pid);
                    }
                }
            }
            Ok(json!({"pid": pid, "accepted": accepted, "refused": refused, "refusal": refusal}))
        }
        Command::SubmitAudit(record) => {
            let response = vault
                .submit_audit(record)
                .await
                .map_err(Failure::Status)?
                .into_inner();
            Ok(json!({"pid": pid, "sequence": response.sequence}))
        }
        Command::CompleteAuthorization(request) => {
            // Its own connection: the Vault client above owns the first.
            let channel = mcplexer_proto::connect(&socket)
                .await
                .map_err(|e| Failure::Unreachable(e.to_string()))?;
            let status = mcplexer_proto::auth_client(channel)
                .complete_authorization(request)
                .await
                .map_err(Failure::Status)?
                .into_inner();
            let status =
                serde_json::to_value(&status).map_err(|e| Failure::Local(e.to_string()))?;
            Ok(json!({"pid": pid, "status": status}))
        }
    }
}

/// A credential as `credential` prints it.
fn credential_json(c: &mcplexer_proto::v1::Credential, pid: u32) -> Value {
    let values: Vec<Value> = c
        .values
        .iter()
        .map(|v| json!({"name": v.name, "value": text(&v.value)}))
        .collect();
    let scrub: Vec<String> = c.scrub.iter().map(|s| text(s)).collect();
    json!({
        "pid": pid,
        "kind": c.kind,
        "values": values,
        "version": c.version,
        "expires_at_ms": c.expires_at_ms,
        "scrub": scrub,
        "redaction_hints": c.redaction_hints,
    })
}

/// A refusal as a failed request prints it.
fn refusal_json(status: &tonic::Status, pid: u32) -> Value {
    json!({
        "code": format!("{:?}", status.code()),
        "message": status.message(),
        "vault_code": mcplexer_proto::error_code(status),
        "fix": mcplexer_proto::error_fix(status),
        "pid": pid,
    })
}

/// `credential --concurrent n`: n connections, then n requests at once.
async fn concurrent_credentials(
    socket: &std::path::Path,
    request: CredentialRequest,
    n: usize,
) -> Result<Value, Failure> {
    let pid = std::process::id();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = mcplexer_proto::connect(socket)
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        clients.push(mcplexer_proto::vault_client(channel));
    }
    // Every task waits here until all n are ready, then sends.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (start, request) = (start.clone(), request.clone());
            tokio::spawn(async move {
                start.wait().await;
                client.get_credential(request).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        let answer = task
            .await
            .map_err(|e| Failure::Local(format!("a request task failed: {e}")))?;
        answers.push(match answer {
            Ok(credential) => credential_json(credential.get_ref(), pid),
            Err(status) => refusal_json(&status, pid),
        });
    }
    Ok(Value::Array(answers))
}

fn exit_for(code: Code) -> u8 {
    match code {
        Code::PermissionDenied => 3,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Unauthenticated => 4,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(argv).and_then(|(socket, command)| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Local(format!("cannot start a runtime: {e}")))?
            .block_on(run(socket, command))
    });
    let pid = std::process::id();
    let (out, exit) = match result {
        Ok(value) => (value, 0),
        Err(Failure::Usage(message)) => {
            eprintln!("vault-probe: {message}");
            return ExitCode::from(2);
        }
        Err(Failure::Unreachable(message)) => (
            json!({"code": "Unreachable", "message": message, "vault_code": "", "pid": pid}),
            1,
        ),
        Err(Failure::Local(message)) => (
            json!({"code": "Local", "message": message, "vault_code": "", "pid": pid}),
            1,
        ),
        Err(Failure::Status(status)) => (refusal_json(&status, pid), exit_for(status.code())),
    };
    println!("{out}");
    ExitCode::from(exit)
}
