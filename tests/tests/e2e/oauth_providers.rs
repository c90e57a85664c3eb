//! OAuth providers from templates and from discovery, end to end.
//!
//! Proves: `provider templates` lists the seven built-in providers with
//! https endpoints and their citations; a provider made from a template
//! needs only a client id (CLI) or `template:` and `client_id` (YAML), with
//! placeholders filled from `template_params`; an unknown template or
//! parameter is refused with the list of what exists; `provider create
//! --issuer` reads the endpoints from a real authorization server's
//! metadata (oidc-provider), and an issuer whose metadata names another
//! issuer is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcplexer_tests::Vault;
use mcplexer_tests::oauth::OAuthServer;
use serde_json::Value;

#[test]
fn templates_fill_providers_from_a_client_id() {
    let vault = Vault::start();
    let templates = vault.ctl(["--json", "provider", "templates"]).json();
    let ids: Vec<&str> = templates
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["provider"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "github",
            "gitlab",
            "google",
            "notion",
            "linear",
            "clickup",
            "microsoft"
        ]
    );
    for t in templates.as_array().unwrap() {
        assert!(!t["docs"].as_array().unwrap().is_empty(), "{t:#}");
        let token = t["provider"]["token_url"].as_str().unwrap();
        assert!(
            token.starts_with("https://") || token.starts_with("{base_url}"),
            "{t:#}"
        );
    }

    // CLI: a template and a client id.
    vault
        .ctl([
            "provider",
            "create",
            "--template",
            "gitlab",
            "--template-param",
            "base_url=https://gitlab.example.com",
            "--client-id",
            "abc",
        ])
        .ok();
    let gitlab = vault.ctl(["--json", "provider", "show", "gitlab"]).json();
    assert_eq!(
        gitlab["token_url"],
        "https://gitlab.example.com/oauth/token"
    );
    assert_eq!(gitlab["issuer"], "https://gitlab.example.com");
    assert_eq!(gitlab["client_auth"], "client_secret_post");

    // YAML: the same, and what the document sets wins.
    let doc = r#"
oauth_providers:
  - {name: Linear, template: linear, client_id: lin-1}
  - {name: Work Microsoft, template: microsoft, client_id: ms-1, template_params: {tenant: contoso.onmicrosoft.com}, scopes: ["User.Read"]}
  - {name: Notion, template: notion, client_id: no-1}
"#;
    let path = vault.write_file("providers.yaml", doc);
    vault.ctl(["apply", "-f", path.to_str().unwrap()]).ok();
    let linear = vault.ctl(["--json", "provider", "show", "linear"]).json();
    assert_eq!(linear["scope_separator"], ",");
    assert_eq!(linear["scopes"], serde_json::json!(["read", "write"]));
    let ms = vault
        .ctl(["--json", "provider", "show", "work-microsoft"])
        .json();
    assert_eq!(
        ms["auth_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    );
    assert_eq!(ms["scopes"], serde_json::json!(["User.Read"]));
    let notion = vault.ctl(["--json", "provider", "show", "notion"]).json();
    assert_eq!(notion["token_format"], "json");
    assert_eq!(notion["use_pkce"], false);
    assert_eq!(notion["extra_auth_params"]["owner"], "user");
    assert_eq!(notion["token_headers"]["Notion-Version"], "2022-06-28");

    // Unknown templates and parameters are refused, naming what exists.
    let bad = vault.ctl([
        "provider",
        "create",
        "--template",
        "gitbucket",
        "--client-id",
        "x",
    ]);
    assert_eq!(bad.code, 4, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("github, gitlab, google"),
        "{}",
        bad.stderr
    );
    let bad = vault.ctl([
        "provider",
        "create",
        "--template",
        "github",
        "--template-param",
        "tenant=x",
        "--client-id",
        "x",
    ]);
    assert_eq!(bad.code, 4, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("has no parameter \"tenant\" (it has: base_url)"),
        "{}",
        bad.stderr
    );
}

#[test]
fn an_issuer_fills_the_endpoints_from_its_metadata() {
    let vault = Vault::start();
    let server = OAuthServer::start(3600);
    vault
        .ctl([
            "provider",
            "create",
            "--name",
            "Discovered",
            "--issuer",
            &server.issuer,
            "--client-id",
            "public-client",
        ])
        .ok();
    let p: Value = vault
        .ctl(["--json", "provider", "show", "discovered"])
        .json();
    assert_eq!(p["auth_url"], server.authorization_endpoint());
    assert_eq!(p["token_url"], server.token_endpoint());
    assert_eq!(p["revocation_url"], server.revocation_endpoint());
    assert_eq!(p["device_auth_url"], server.device_authorization_endpoint());
    assert_eq!(p["use_pkce"], true);

    // Metadata that names another issuer is refused, and nothing is made.
    let wrong = format!("{}/other", server.issuer);
    let bad = vault.ctl([
        "provider",
        "create",
        "--name",
        "Wrong",
        "--issuer",
        &wrong,
        "--client-id",
        "x",
    ]);
    assert_ne!(bad.code, 0, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("no metadata found for issuer"),
        "{}",
        bad.stderr
    );
    let list = vault.ctl(["--json", "provider", "list"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
}
