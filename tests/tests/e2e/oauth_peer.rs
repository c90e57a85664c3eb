//! The OAuth peer itself behaves like the real authorization server the
//! vault's tests take it for: `oauth_server.mjs` (oidc-provider 9.13.3),
//! driven with raw HTTP from here and through the headless browser
//! `oauth_browser.py`, with no MCPlexer in between. Proves the PKCE code flow
//! for a public client with the RFC 9207 `iss` on a loopback redirect of any
//! port; refresh-token rotation and its reuse detection (replaying a rotated
//! refresh token fails and revokes the grant); code replay and PKCE
//! failures; the device flow approved by the browser; both confidential
//! client authentication methods, each enforced; RFC 7009 revocation;
//! access-token expiry after `ACCESS_TOKEN_TTL`; RFC 8707 resources; denied
//! and refused interactions.

// Test code: a failed step must abort the test, hence expect.
#![allow(clippy::expect_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use mcplexer_tests::oauth::{
    CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET, ClientAuth, DEVICE_CODE_GRANT,
    HttpResponse, Interactions, OAuthOptions, OAuthServer, POST_CLIENT_ID, POST_CLIENT_SECRET,
    PUBLIC_CLIENT_ID, REDIRECT_URI, TEST_USER, browser_approve_device, browser_authorize,
    form_encode, pkce_pair, query_param, try_browser_approve_device, try_browser_authorize,
};
use serde_json::Value;

/// A loopback redirect URI on a port nobody registered: the RFC 8252 rule
/// lets a native client add any port to `http://127.0.0.1/callback`. The
/// listener keeps the port ours; nothing ever connects (the browser stops
/// before following the redirect).
fn loopback_redirect() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local addr").port();
    let uri = REDIRECT_URI.replacen("127.0.0.1", &format!("127.0.0.1:{port}"), 1);
    (listener, uri)
}

/// The result of one authorization through the browser.
struct Authorized {
    code: String,
    verifier: String,
    redirect_uri: String,
    _listener: TcpListener,
}

/// Authorizes `client_id` for `scope` through the browser and checks the
/// redirect: same redirect URI, `state` echoed, `iss` the issuer.
fn authorize(
    server: &OAuthServer,
    client_id: &str,
    scope: &str,
    extra: &[(&str, &str)],
) -> Authorized {
    let (listener, redirect_uri) = loopback_redirect();
    let (verifier, challenge) = pkce_pair();
    let state = format!("state-{}", std::process::id());
    let url = server.authorization_url(client_id, &redirect_uri, scope, &state, &challenge, extra);
    let location = browser_authorize(&url);
    assert!(
        location.starts_with(&format!("{redirect_uri}?")),
        "redirected to {location}, not {redirect_uri}"
    );
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some(state.as_str()),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(server.issuer.as_str()),
        "RFC 9207 iss: {location}"
    );
    assert_eq!(query_param(&location, "error"), None, "{location}");
    let code = query_param(&location, "code").expect("code in the redirect");
    Authorized {
        code,
        verifier,
        redirect_uri,
        _listener: listener,
    }
}

/// The tokens of a successful token response.
struct Tokens {
    access: String,
    refresh: String,
}

#[track_caller]
fn tokens(response: &HttpResponse) -> Tokens {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.field("token_type"), "Bearer", "{response:?}");
    Tokens {
        access: response.field("access_token"),
        refresh: response.field("refresh_token"),
    }
}

#[track_caller]
fn assert_oauth_error(response: &HttpResponse, status: u16, error: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.field("error"), error, "{response:?}");
}

#[test]
fn public_client_code_flow_rotates_refresh_tokens_and_a_replay_revokes_the_grant() {
    let server = OAuthServer::start(3600);
    let auth = authorize(&server, PUBLIC_CLIENT_ID, "openid read write", &[]);

    let issued = server.exchange_code(
        ClientAuth::PUBLIC,
        &auth.code,
        &auth.redirect_uri,
        &auth.verifier,
    );
    let first = tokens(&issued);
    let body = issued.json();
    assert_eq!(body["expires_in"], 3600, "{body}");
    assert_eq!(body["scope"], "openid read write", "{body}");
    assert_eq!(
        issued.header("cache-control"),
        Some("no-store"),
        "{issued:?}"
    );

    let protected = server.protected(&first.access);
    assert_eq!(protected.status, 200, "{protected:?}");
    assert_eq!(protected.json()["sub"], TEST_USER, "{protected:?}");
    assert_eq!(
        protected.json()["client_id"],
        PUBLIC_CLIENT_ID,
        "{protected:?}"
    );
    assert!(!server.is_live("not-a-token"));

    // Refresh: a new access token and a new refresh token.
    let second = tokens(&server.refresh(ClientAuth::PUBLIC, &first.refresh));
    assert_ne!(second.refresh, first.refresh, "the refresh token rotates");
    assert_ne!(second.access, first.access);
    assert!(server.is_live(&second.access));

    // Replaying the rotated refresh token fails ...
    assert_oauth_error(
        &server.refresh(ClientAuth::PUBLIC, &first.refresh),
        400,
        "invalid_grant",
    );
    // ... and revokes the whole grant: the newest refresh token and every
    // access token die with it.
    assert_oauth_error(
        &server.refresh(ClientAuth::PUBLIC, &second.refresh),
        400,
        "invalid_grant",
    );
    assert!(!server.is_live(&second.access), "grant revoked");
    assert!(!server.is_live(&first.access), "grant revoked");
}

#[test]
fn a_code_needs_its_verifier_and_a_replayed_code_revokes_what_it_issued() {
    let server = OAuthServer::start(3600);
    let auth = authorize(&server, PUBLIC_CLIENT_ID, "read", &[]);

    // A wrong verifier, or another redirect URI, is refused without using
    // up the code.
    let (other_verifier, _) = pkce_pair();
    assert_oauth_error(
        &server.exchange_code(
            ClientAuth::PUBLIC,
            &auth.code,
            &auth.redirect_uri,
            &other_verifier,
        ),
        400,
        "invalid_grant",
    );
    assert_oauth_error(
        &server.exchange_code(ClientAuth::PUBLIC, &auth.code, REDIRECT_URI, &auth.verifier),
        400,
        "invalid_grant",
    );
    let issued = tokens(&server.exchange_code(
        ClientAuth::PUBLIC,
        &auth.code,
        &auth.redirect_uri,
        &auth.verifier,
    ));
    assert!(server.is_live(&issued.access));

    // The same code again: refused, and what it issued is revoked.
    assert_oauth_error(
        &server.exchange_code(
            ClientAuth::PUBLIC,
            &auth.code,
            &auth.redirect_uri,
            &auth.verifier,
        ),
        400,
        "invalid_grant",
    );
    assert!(!server.is_live(&issued.access));
    assert_oauth_error(
        &server.refresh(ClientAuth::PUBLIC, &issued.refresh),
        400,
        "invalid_grant",
    );

    // Without PKCE the authorization itself fails, at the redirect URI.
    let (_listener, redirect_uri) = loopback_redirect();
    let url = format!(
        "{}?{}",
        server.authorization_endpoint(),
        form_encode(&[
            ("response_type", "code"),
            ("client_id", PUBLIC_CLIENT_ID),
            ("redirect_uri", &redirect_uri),
            ("scope", "read"),
            ("state", "s"),
        ])
    );
    let location = browser_authorize(&url);
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request"),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(server.issuer.as_str())
    );
}

#[test]
fn device_flow_approved_by_the_browser_yields_tokens() {
    let server = OAuthServer::start(3600);
    let device = server.post_form(
        "/device/auth",
        ClientAuth::PUBLIC,
        &[("scope", "offline_access read")],
    );
    assert_eq!(device.status, 200, "{device:?}");
    let body = device.json();
    assert_eq!(
        body["interval"],
        Value::Null,
        "no interval unless configured: {body}"
    );
    let device_code = device.field("device_code");
    let user_code = device.field("user_code");
    let verification_uri = device.field("verification_uri");
    assert_eq!(verification_uri, server.url("/device"));

    let poll = || {
        server.token(
            ClientAuth::PUBLIC,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", &device_code),
            ],
        )
    };
    assert_oauth_error(&poll(), 400, "authorization_pending");

    browser_approve_device(&verification_uri, &user_code);
    let issued = tokens(&poll());
    assert!(server.is_live(&issued.access));
    // A device code is single-use too: a replay fails and revokes the
    // grant, like a replayed authorization code.
    assert_oauth_error(&poll(), 400, "invalid_grant");
    assert!(!server.is_live(&issued.access));
    // And the user code cannot be approved twice.
    assert!(try_browser_approve_device(&verification_uri, &user_code).is_err());

    // verification_uri_complete works as well, and DEVICE_INTERVAL adds
    // an interval.
    let server = OAuthServer::start_with(&OAuthOptions {
        device_interval_secs: Some(1),
        ..OAuthOptions::default()
    });
    let device = server.post_form(
        "/device/auth",
        ClientAuth::CONFIDENTIAL,
        &[("scope", "read")],
    );
    assert_eq!(device.json()["interval"], 1, "{device:?}");
    browser_approve_device(
        &device.field("verification_uri_complete"),
        &device.field("user_code"),
    );
    let issued = tokens(&server.token(
        ClientAuth::CONFIDENTIAL,
        &[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", &device.field("device_code")),
        ],
    ));
    assert!(server.is_live(&issued.access));
}

#[test]
fn confidential_clients_must_use_their_registered_authentication_method() {
    let server = OAuthServer::start(3600);
    for (good, wrong_method, wrong_secret, no_secret) in [
        (
            ClientAuth::CONFIDENTIAL,
            ClientAuth::Post(CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET),
            ClientAuth::Basic(CONFIDENTIAL_CLIENT_ID, "wrong"),
            ClientAuth::None(CONFIDENTIAL_CLIENT_ID),
        ),
        (
            ClientAuth::POST,
            ClientAuth::Basic(POST_CLIENT_ID, POST_CLIENT_SECRET),
            ClientAuth::Post(POST_CLIENT_ID, "wrong"),
            ClientAuth::None(POST_CLIENT_ID),
        ),
    ] {
        let client_id = match good {
            ClientAuth::Basic(id, _) | ClientAuth::Post(id, _) | ClientAuth::None(id) => id,
        };
        let auth = authorize(&server, client_id, "read", &[]);
        for bad in [wrong_method, wrong_secret, no_secret] {
            assert_oauth_error(
                &server.exchange_code(bad, &auth.code, &auth.redirect_uri, &auth.verifier),
                401,
                "invalid_client",
            );
        }
        let issued =
            tokens(&server.exchange_code(good, &auth.code, &auth.redirect_uri, &auth.verifier));
        let refreshed = tokens(&server.refresh(good, &issued.refresh));
        assert!(server.is_live(&refreshed.access), "{client_id}");
        // A token of one client is not another client's to redeem.
        assert_oauth_error(
            &server.refresh(ClientAuth::PUBLIC, &refreshed.refresh),
            400,
            "invalid_grant",
        );
    }
}

#[test]
fn revocation_kills_the_access_token_and_with_it_the_grant_tokens() {
    let server = OAuthServer::start(3600);

    // Revoking an access token (RFC 7009) ...
    let auth = authorize(&server, CONFIDENTIAL_CLIENT_ID, "read", &[]);
    let issued = tokens(&server.exchange_code(
        ClientAuth::CONFIDENTIAL,
        &auth.code,
        &auth.redirect_uri,
        &auth.verifier,
    ));
    assert!(server.is_live(&issued.access));
    let revoked = server.revoke(ClientAuth::CONFIDENTIAL, &issued.access);
    assert_eq!(
        (revoked.status, revoked.body.as_str()),
        (200, ""),
        "{revoked:?}"
    );
    assert!(!server.is_live(&issued.access));
    // ... also revokes the refresh token of its grant (oidc-provider's
    // choice; RFC 7009 allows it).
    assert_oauth_error(
        &server.refresh(ClientAuth::CONFIDENTIAL, &issued.refresh),
        400,
        "invalid_grant",
    );

    // Revoking a refresh token kills the access tokens of its grant.
    let auth = authorize(&server, PUBLIC_CLIENT_ID, "read", &[]);
    let issued = tokens(&server.exchange_code(
        ClientAuth::PUBLIC,
        &auth.code,
        &auth.redirect_uri,
        &auth.verifier,
    ));
    let revoked = server.revoke(ClientAuth::PUBLIC, &issued.refresh);
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert!(!server.is_live(&issued.access));

    // An unknown token: 200 as well (RFC 7009 section 2.2).
    assert_eq!(server.revoke(ClientAuth::PUBLIC, "unknown").status, 200);
}

#[test]
fn access_tokens_die_after_the_configured_ttl_and_refresh_brings_a_live_one() {
    const TTL: u64 = 3;
    let server = OAuthServer::start(TTL);
    let auth = authorize(&server, PUBLIC_CLIENT_ID, "read", &[]);
    let response = server.exchange_code(
        ClientAuth::PUBLIC,
        &auth.code,
        &auth.redirect_uri,
        &auth.verifier,
    );
    let issued_at = Instant::now();
    let issued = tokens(&response);
    assert_eq!(response.json()["expires_in"], TTL, "{response:?}");
    // Issued with whole-second times, the token lives at least TTL - 1 s.
    assert!(server.is_live(&issued.access));

    // Waiting for the clock is the point here (not synchronisation): one
    // second past the lifetime the token must be dead, with no tolerance.
    let dead_by = issued_at + Duration::from_secs(TTL + 1);
    std::thread::sleep(dead_by.saturating_duration_since(Instant::now()));
    assert!(!server.is_live(&issued.access), "expired");

    let refreshed = tokens(&server.refresh(ClientAuth::PUBLIC, &issued.refresh));
    assert!(server.is_live(&refreshed.access));
}

#[test]
fn a_resource_indicator_binds_the_token_to_that_resource() {
    let server = OAuthServer::start(3600);
    let resource = "https://mcp.example.test/api";
    let auth = authorize(
        &server,
        PUBLIC_CLIENT_ID,
        "openid offline_access read",
        &[("resource", resource)],
    );
    let issued = server.token(
        ClientAuth::PUBLIC,
        &[
            ("grant_type", "authorization_code"),
            ("code", &auth.code),
            ("redirect_uri", &auth.redirect_uri),
            ("code_verifier", &auth.verifier),
            ("resource", resource),
        ],
    );
    let first = tokens(&issued);
    assert_eq!(
        issued.json()["scope"],
        "read",
        "resource scopes only: {issued:?}"
    );
    let seen = server.protected(&first.access).json();
    assert_eq!(seen["aud"], resource, "{seen}");

    // A refresh without `resource` keeps the granted one; another resource
    // is refused.
    let refreshed = tokens(&server.refresh(ClientAuth::PUBLIC, &first.refresh));
    assert_eq!(server.protected(&refreshed.access).json()["aud"], resource);
    assert_oauth_error(
        &server.token(
            ClientAuth::PUBLIC,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refreshed.refresh),
                ("resource", "https://elsewhere.example.test/"),
            ],
        ),
        400,
        "invalid_target",
    );
}

#[test]
fn a_denied_interaction_reaches_the_redirect_and_a_refused_one_stops_the_browser() {
    let deny = OAuthServer::start_with(&OAuthOptions {
        interactions: Interactions::Deny,
        ..OAuthOptions::default()
    });
    let (_listener, redirect_uri) = loopback_redirect();
    let (_, challenge) = pkce_pair();
    let url = deny.authorization_url(
        PUBLIC_CLIENT_ID,
        &redirect_uri,
        "read",
        "s1",
        &challenge,
        &[],
    );
    let location = browser_authorize(&url);
    assert!(
        location.starts_with(&format!("{redirect_uri}?")),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("access_denied"),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("s1"),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(deny.issuer.as_str())
    );
    assert_eq!(query_param(&location, "code"), None, "{location}");

    // A denied device code polls to access_denied.
    let device = deny.post_form("/device/auth", ClientAuth::PUBLIC, &[("scope", "read")]);
    let device_code = device.field("device_code");
    assert!(
        try_browser_approve_device(
            &device.field("verification_uri"),
            &device.field("user_code")
        )
        .is_err()
    );
    assert_oauth_error(
        &deny.token(
            ClientAuth::PUBLIC,
            &[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", &device_code),
            ],
        ),
        400,
        "access_denied",
    );

    let refuse = OAuthServer::start_with(&OAuthOptions {
        interactions: Interactions::Refuse,
        ..OAuthOptions::default()
    });
    let url = refuse.authorization_url(
        PUBLIC_CLIENT_ID,
        &redirect_uri,
        "read",
        "s2",
        &challenge,
        &[],
    );
    let page = try_browser_authorize(&url).expect_err("no way through a refused interaction");
    assert!(page.contains("interaction refused"), "{page}");
}
