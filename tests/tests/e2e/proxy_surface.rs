//! The MCP surface beyond tools, through the proxy to a real server
//! (server-everything over stdio), with a raw client that sees every
//! message: prompts and resources listed under the rules and fetched with
//! the credential, resource templates and completion routed, a log level
//! passed on and log messages relayed with the server named, sampling and
//! elicitation requests relayed to a client that declared them (and the
//! sampling tool absent for one that did not), the server's instructions
//! under its namespace, and every forwarded request audited with its
//! method.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcplexer_tests::Vault;
use mcplexer_tests::peers::server_everything;
use serde_json::{Value, json};

use crate::proxy_protocol::RawClient;

fn setup() -> Vault {
    let vault = Vault::start();
    let (program, args) = server_everything();
    let doc = format!(
        r#"
auth_scopes:
  - {{id: ev-token, name: Everything token, type: env, redaction_hints: [secret]}}
downstream_servers:
  - {{id: everything, name: Everything, transport: stdio, command: {}, args: {}, tool_namespace: ev}}
route_rules:
  - {{name: no args prompt, tool_match: ["ev__args-prompt"], downstream_server_id: everything, policy: deny}}
  - {{name: everything, tool_match: ["ev__*"], downstream_server_id: everything, auth_scope_id: ev-token}}
"#,
        program.display(),
        serde_json::to_string(&args).unwrap()
    );
    let path = vault.write_file("surface.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    vault
        .ctl_input(
            ["secret", "set", "ev-token", "EV_TOKEN"],
            b"surface-token-71c",
        )
        .ok();
    vault
}

/// Sends a request and reads until its response; returns the response.
fn request(client: &mut RawClient, id: u64, method: &str, params: Value) -> Value {
    client.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    client.until(|m| m["id"] == id && m.get("method").is_none())
}

fn names(list: &Value, field: &str, key: &str) -> Vec<String> {
    list["result"][field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field}: {list:#}"))
        .iter()
        .map(|item| item[key].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn prompts_resources_completion_and_logging_pass_through_the_rules() {
    let vault = setup();
    let mut client = RawClient::start(&vault);

    let init = client.seen.iter().find(|m| m["id"] == 0).unwrap().clone();
    for capability in ["prompts", "resources", "completions", "logging"] {
        assert!(
            init["result"]["capabilities"][capability].is_object(),
            "{init:#}"
        );
    }
    // The servers' instructions, each under its namespace.
    let instructions = init["result"]["instructions"].as_str().unwrap_or_default();
    assert!(instructions.starts_with("## ev\n\n"), "{init:#}");
    assert!(instructions.len() > 20, "{init:#}");

    // Prompts: named like tools; a deny rule hides one and refuses it.
    let prompts = request(&mut client, 1, "prompts/list", json!({}));
    let prompt_names = names(&prompts, "prompts", "name");
    assert!(
        prompt_names.contains(&"ev__simple-prompt".to_owned()),
        "{prompt_names:?}"
    );
    assert!(
        !prompt_names.contains(&"ev__args-prompt".to_owned()),
        "a denied prompt was listed: {prompt_names:?}"
    );
    let simple = request(
        &mut client,
        2,
        "prompts/get",
        json!({"name": "ev__simple-prompt"}),
    );
    assert!(
        !simple["result"]["messages"].as_array().unwrap().is_empty(),
        "{simple:#}"
    );
    let denied = request(
        &mut client,
        3,
        "prompts/get",
        json!({"name": "ev__args-prompt", "arguments": {"city": "Oslo"}}),
    );
    assert_eq!(denied["error"]["code"], -32602, "{denied:#}");
    let unknown = request(
        &mut client,
        4,
        "prompts/get",
        json!({"name": "zz__nothing"}),
    );
    assert_eq!(unknown["error"]["code"], -32602, "{unknown:#}");

    // Resources: listed, read back by their URIs; templates route reads
    // of the URIs they produce; unknown URIs are "not found".
    let resources = request(&mut client, 5, "resources/list", json!({}));
    let uris = names(&resources, "resources", "uri");
    assert!(!uris.is_empty(), "{resources:#}");
    let first = &uris[0];
    let read = request(&mut client, 6, "resources/read", json!({"uri": first}));
    assert_eq!(read["result"]["contents"][0]["uri"], *first, "{read:#}");
    let templates = request(&mut client, 7, "resources/templates/list", json!({}));
    let shapes = names(&templates, "resourceTemplates", "uriTemplate");
    let text_template = "demo://resource/dynamic/text/{resourceId}";
    assert!(shapes.contains(&text_template.to_owned()), "{shapes:?}");
    let dynamic = request(
        &mut client,
        8,
        "resources/read",
        json!({"uri": "demo://resource/dynamic/text/3"}),
    );
    let text = dynamic["result"]["contents"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(!text.is_empty(), "{dynamic:#}");
    let missing = request(
        &mut client,
        9,
        "resources/read",
        json!({"uri": "nowhere://at/all"}),
    );
    assert_eq!(missing["error"]["code"], -32002, "{missing:#}");

    // Completion of a template argument, routed by the template.
    let completion = request(
        &mut client,
        10,
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": text_template},
               "argument": {"name": "resourceId", "value": "1"}}),
    );
    assert!(
        completion["result"]["completion"]["values"].is_array(),
        "{completion:#}"
    );

    // Logging: the level goes to the server; its messages come back with
    // the server named in the logger.
    let level = request(
        &mut client,
        11,
        "logging/setLevel",
        json!({"level": "debug"}),
    );
    assert_eq!(level["result"], json!({}), "{level:#}");
    let toggled = request(
        &mut client,
        12,
        "tools/call",
        json!({"name": "ev__toggle-simulated-logging", "arguments": {}}),
    );
    assert!(toggled["result"].is_object(), "{toggled:#}");
    let log = client.until(|m| m["method"] == "notifications/message");
    let logger = log["params"]["logger"].as_str().unwrap();
    assert!(logger == "ev" || logger.starts_with("ev/"), "{log:#}");
    let bad_level = request(
        &mut client,
        13,
        "logging/setLevel",
        json!({"level": "loud"}),
    );
    assert_eq!(bad_level["error"]["code"], -32602, "{bad_level:#}");
    // Stop the messages before the session ends.
    request(
        &mut client,
        14,
        "tools/call",
        json!({"name": "ev__toggle-simulated-logging", "arguments": {}}),
    );
    let (_, log) = client.finish();
    assert!(!log.contains("surface-token-71c"));

    // Every forwarded request is audited, with its method.
    let calls = vault.ctl(["--json", "audit", "--kind", "call"]).json();
    let calls = calls.as_array().unwrap();
    let got = calls
        .iter()
        .find(|r| r["action"] == "prompts/get" && r["tool"] == "ev__simple-prompt")
        .unwrap_or_else(|| panic!("no prompts/get record: {calls:#?}"));
    assert_eq!(got["status"], "success");
    assert_eq!(got["auth_scope_id"], "ev-token");
    assert!(
        calls
            .iter()
            .any(|r| r["action"] == "prompts/get" && r["status"] == "denied"),
        "{calls:#?}"
    );
    assert!(
        calls.iter().any(|r| r["action"] == "resources/read"
            && r["tool"] == "demo://resource/dynamic/text/3"
            && r["status"] == "success"),
        "{calls:#?}"
    );
}

#[test]
fn sampling_and_elicitation_reach_a_client_that_declared_them() {
    let vault = setup();

    // A client without sampling: the server does not offer its sampling
    // tool, since the proxy declares only what the client declared.
    let mut plain = RawClient::start(&vault);
    let tools = request(&mut plain, 1, "tools/list", json!({}));
    let plain_tools = names(&tools, "tools", "name");
    assert!(plain_tools.contains(&"ev__echo".to_owned()));
    assert!(
        !plain_tools.contains(&"ev__trigger-sampling-request".to_owned()),
        "{plain_tools:?}"
    );
    plain.finish();

    let mut client =
        RawClient::start_with(&vault, json!({"sampling": {}, "elicitation": {"form": {}}}));
    let tools = request(&mut client, 1, "tools/list", json!({}));
    let tool_names = names(&tools, "tools", "name");
    assert!(
        tool_names.contains(&"ev__trigger-sampling-request".to_owned()),
        "{tool_names:?}"
    );

    // Sampling: the server's request reaches us under an id of the
    // proxy's; our answer reaches the server, whose tool reports it.
    client.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "ev__trigger-sampling-request", "arguments": {"prompt": "hello", "maxTokens": 5}}}),
    );
    let asked = client.until(|m| m["method"] == "sampling/createMessage");
    assert!(asked["id"].is_string(), "{asked:#}");
    client.send(json!({"jsonrpc": "2.0", "id": asked["id"], "result": {
        "role": "assistant",
        "content": {"type": "text", "text": "sampled-by-the-client-5d2"},
        "model": "raw-test-model",
        "stopReason": "endTurn"}}));
    let called = client.until(|m| m["id"] == 2);
    assert!(
        called.to_string().contains("sampled-by-the-client-5d2"),
        "{called:#}"
    );

    // Elicitation: the message says which server asks.
    client.send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "ev__trigger-elicitation-request", "arguments": {}}}),
    );
    let elicit = client.until(|m| m["method"] == "elicitation/create");
    let message = elicit["params"]["message"].as_str().unwrap();
    assert!(message.starts_with("[ev] "), "{elicit:#}");
    client.send(json!({"jsonrpc": "2.0", "id": elicit["id"], "result": {
        "action": "decline"}}));
    let declined = client.until(|m| m["id"] == 3);
    assert!(declined["result"].is_object(), "{declined:#}");
    client.finish();
}

#[test]
fn a_server_mounted_unprefixed_keeps_its_own_names() {
    let vault = Vault::start();
    let (program, args) = server_everything();
    let doc = format!(
        r#"
downstream_servers:
  - {{id: everything, name: Everything, transport: stdio, command: {program}, args: {args}, tool_namespace: ev, unprefixed: true}}
  - {{id: second, name: Second, transport: stdio, command: {program}, args: {args}, tool_namespace: two}}
route_rules:
  - {{name: no sum, tool_match: ["get-sum"], downstream_server_id: everything, policy: deny}}
  - {{name: everything, tool_match: ["*"], downstream_server_id: everything}}
  - {{name: second, tool_match: ["two__*"], downstream_server_id: second}}
"#,
        program = program.display(),
        args = serde_json::to_string(&args).unwrap()
    );
    let path = vault.write_file("unprefixed.yaml", &doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();

    // A real client (the Python SDK) with fixed names: the tools and
    // prompts of the unprefixed server under their own names, the other
    // server's with its prefix.
    let results = crate::proxy::through_proxy(
        &vault,
        None,
        json!([
            {"op": "list_tools"},
            {"op": "call", "name": "echo", "arguments": {"message": "plain name"}},
            {"op": "call", "name": "two__echo", "arguments": {"message": "prefixed"}},
            {"op": "call", "name": "get-sum", "arguments": {"a": 1, "b": 2}},
            {"op": "call", "name": "ev__echo", "arguments": {"message": "no prefix here"}},
            {"op": "list_prompts"},
            {"op": "get_prompt", "name": "simple-prompt"},
            {"op": "list_resources"},
            {"op": "read_resource", "uri": "two+demo://resource/dynamic/text/4"},
        ]),
    );
    let tools: Vec<&str> = results[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tools.contains(&"echo"), "{tools:?}");
    assert!(tools.contains(&"two__echo"), "{tools:?}");
    assert!(
        !tools.contains(&"get-sum"),
        "a denied tool was listed: {tools:?}"
    );
    assert!(!tools.iter().any(|t| t.starts_with("ev__")), "{tools:?}");
    assert_eq!(
        results[1]["text"][0], "Echo: plain name",
        "{:#}",
        results[1]
    );
    assert_eq!(results[2]["text"][0], "Echo: prefixed", "{:#}", results[2]);
    assert!(
        crate::proxy::error_message(&results[3]).contains("denied by route rule no-sum"),
        "{:#}",
        results[3]
    );
    assert_eq!(results[4]["error"]["code"], -32602, "{:#}", results[4]);
    assert!(
        results[5]["prompts"]
            .as_array()
            .unwrap()
            .contains(&json!("simple-prompt")),
        "{:#}",
        results[5]
    );
    assert!(results[6]["messages"].is_array(), "{:#}", results[6]);
    // Both servers have the same resource URIs: each is exposed under its
    // server's namespace, and reads back under that name.
    let uris = results[7]["resources"].as_array().unwrap();
    for uri in [
        "ev+demo://resource/static/document/architecture.md",
        "two+demo://resource/static/document/architecture.md",
    ] {
        assert!(uris.contains(&json!(uri)), "{uris:?}");
    }
    assert!(
        !uris.contains(&json!("demo://resource/static/document/architecture.md")),
        "{uris:?}"
    );
    let read = &results[8]["contents"][0];
    assert_eq!(
        read["uri"], "two+demo://resource/dynamic/text/4",
        "{read:#}"
    );
    assert!(
        read["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Resource 4"),
        "{read:#}"
    );

    // Two servers without a prefix in one workspace: refused at apply,
    // naming both rules.
    let doc = doc.replace(
        "tool_namespace: two}",
        "tool_namespace: two, unprefixed: true}",
    );
    let path = vault.write_file("two-unprefixed.yaml", &doc);
    let refused = vault.ctl(["apply", "-f", path.to_str().unwrap()]);
    assert_ne!(refused.code, 0, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("at most one server without a prefix"),
        "{refused:#?}"
    );
}
