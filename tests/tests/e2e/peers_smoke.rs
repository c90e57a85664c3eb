//! The MCP peers themselves work: the official Python SDK client, through
//! `mcp_client.py`, drives server-everything over stdio directly (no
//! MCPlexer in between), and the server sees exactly the environment given.

// Test code: a failed step must abort the test, hence expect.
#![allow(clippy::expect_used)]

use mcplexer_tests::peers::{mcp_client, server_everything};
use serde_json::{Value, json};

#[test]
fn sdk_client_drives_server_everything_with_exactly_the_given_env() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let env = [
        ("PATH", "/usr/bin:/bin"),
        ("FOO", "bar"),
        ("SPACED", "a b=c \"q\""),
    ];
    let (program, args) = server_everything();
    let out = mcp_client(
        cwd.path(),
        &env,
        &program,
        &args,
        &json!([
            {"op": "list_tools"},
            {"op": "call", "name": "echo", "arguments": {"message": "hi"}},
            {"op": "call", "name": "get-env", "arguments": {}},
        ]),
    );
    let results = out["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{out:#}");

    let tools: Vec<&str> = results[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t.as_str().expect("tool name"))
        .collect();
    for name in ["echo", "get-env", "get-sum"] {
        assert!(tools.contains(&name), "{name} missing from {tools:?}");
    }

    assert_eq!(results[1]["is_error"], false, "{out:#}");
    assert_eq!(results[1]["text"], json!(["Echo: hi"]), "{out:#}");

    assert_eq!(results[2]["is_error"], false, "{out:#}");
    let text = results[2]["text"][0].as_str().expect("get-env text");
    let seen: Value = serde_json::from_str(text).expect("get-env prints JSON");
    let expected: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    assert_eq!(
        seen,
        Value::Object(expected),
        "server env is exactly the given one"
    );
}
