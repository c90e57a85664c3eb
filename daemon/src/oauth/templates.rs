//! The built-in OAuth provider templates: each provider's real endpoints,
//! default scopes, scope separator, client authentication and required
//! extra parameters, so an administrator supplies only a client id and
//! secret. Every fact is cited from the provider's own documentation next
//! to it; re-check there before changing one.
//!
//! Placeholders: `{base_url}` (GitLab, GitHub Enterprise) and `{tenant}`
//! (Microsoft), filled from the provider's `template_params`.

use std::collections::BTreeMap;

use mcplexer_proto::v1 as pb;

use crate::model::{ClientAuth, ProviderSpec, TokenFormat};

/// A placeholder of a template.
#[derive(Debug)]
pub struct Param {
    /// Its name in `template_params`.
    pub name: &'static str,
    /// Its value when not given.
    pub default: &'static str,
    /// What it is.
    pub help: &'static str,
}

/// One built-in provider.
#[derive(Debug)]
pub struct Template {
    /// Its name (`template:`), also the provider's default id.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Authorization endpoint.
    pub auth_url: &'static str,
    /// Token endpoint.
    pub token_url: &'static str,
    /// Device authorization endpoint; empty when the provider has none.
    pub device_auth_url: &'static str,
    /// RFC 7009 revocation endpoint; empty when the provider has none.
    pub revocation_url: &'static str,
    /// Issuer identifier, when the provider publishes one.
    pub issuer: &'static str,
    /// Default scopes.
    pub scopes: &'static [&'static str],
    /// What joins scopes in a request.
    pub scope_separator: &'static str,
    /// How a confidential client authenticates.
    pub client_auth: ClientAuth,
    /// Token request body.
    pub token_format: TokenFormat,
    /// Whether the provider supports PKCE (S256).
    pub use_pkce: bool,
    /// Parameters the authorization request needs.
    pub extra_auth_params: &'static [(&'static str, &'static str)],
    /// Headers the token endpoints need.
    pub token_headers: &'static [(&'static str, &'static str)],
    /// Its placeholders.
    pub params: &'static [Param],
    /// What an administrator should know (registration, quirks).
    pub notes: &'static str,
    /// The documentation the facts come from.
    pub docs: &'static [&'static str],
}

const BASE_URL_GITHUB: Param = Param {
    name: "base_url",
    default: "https://github.com",
    help: "GitHub Enterprise Server: https://HOSTNAME",
};

/// The templates, in display order.
pub const TEMPLATES: &[Template] = &[
    Template {
        id: "github",
        name: "GitHub",
        // Endpoints, device code, parameters: "Authorizing OAuth apps",
        // https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps
        // (GHES: the same paths under https://HOSTNAME).
        auth_url: "{base_url}/login/oauth/authorize",
        token_url: "{base_url}/login/oauth/access_token",
        device_auth_url: "{base_url}/login/device/code",
        // GitHub has no RFC 7009 endpoint; tokens are revoked with
        // DELETE /applications/{client_id}/token (REST, JSON body):
        // https://docs.github.com/en/rest/apps/oauth-applications
        revocation_url: "",
        issuer: "",
        // Space-delimited request scopes; suggested set for MCP servers.
        // https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/scopes-for-oauth-apps
        scopes: &["repo", "read:org", "read:user"],
        scope_separator: " ",
        // client_id and client_secret are sent as parameters; the secret is
        // required for the web flow even with PKCE (authorizing-oauth-apps).
        client_auth: ClientAuth::ClientSecretPost,
        token_format: TokenFormat::Form,
        // S256 PKCE since 2025-07-14:
        // https://github.blog/changelog/2025-07-14-pkce-support-for-oauth-and-github-app-authentication
        use_pkce: true,
        extra_auth_params: &[],
        token_headers: &[],
        params: &[BASE_URL_GITHUB],
        notes: "Register the provider's redirect URI as the callback URL: \
                http://127.0.0.1/callback unless it names another (the web UI's providers use \
                http://127.0.0.1/oauth/callback); any loopback port is accepted. The device \
                flow must be enabled in the app's settings. OAuth App tokens do not expire; \
                GitHub App user tokens last 8 h and are refreshed. `auth revoke` deletes the \
                token here only: revoke it at GitHub too.",
        docs: &[
            "https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps",
            "https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens",
            "https://github.blog/changelog/2025-07-14-pkce-support-for-oauth-and-github-app-authentication",
        ],
    },
    Template {
        id: "gitlab",
        name: "GitLab",
        // Every endpoint under the instance's base URL: "OAuth 2.0 identity
        // provider API", https://docs.gitlab.com/api/oauth2/
        auth_url: "{base_url}/oauth/authorize",
        token_url: "{base_url}/oauth/token",
        device_auth_url: "{base_url}/oauth/authorize_device",
        revocation_url: "{base_url}/oauth/revoke",
        issuer: "{base_url}",
        // Space-separated; `api` for read/write MCP use (`read_api` for
        // read-only): https://docs.gitlab.com/integration/oauth_provider/
        scopes: &["api"],
        scope_separator: " ",
        // client_id and client_secret in the body (docs.gitlab.com/api/oauth2).
        client_auth: ClientAuth::ClientSecretPost,
        token_format: TokenFormat::Form,
        // S256 documented and recommended.
        use_pkce: true,
        extra_auth_params: &[],
        token_headers: &[],
        params: &[Param {
            name: "base_url",
            default: "https://gitlab.com",
            help: "a self-managed instance: https://gitlab.example.com",
        }],
        notes: "Register the provider's redirect URI: http://127.0.0.1/callback unless it \
                names another (the web UI's providers use http://127.0.0.1/oauth/callback); \
                loopback IP literals match any port. Access tokens last 2 h and every refresh rotates both tokens. Without a \
                client secret, untick Confidential when registering.",
        docs: &[
            "https://docs.gitlab.com/api/oauth2/",
            "https://docs.gitlab.com/integration/oauth_provider/",
        ],
    },
    Template {
        id: "google",
        name: "Google",
        // Installed-app endpoints and revocation:
        // https://developers.google.com/identity/protocols/oauth2/native-app
        // (the discovery document lists the same:
        // https://accounts.google.com/.well-known/openid-configuration).
        auth_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
        // https://developers.google.com/identity/protocols/oauth2/limited-input-device
        device_auth_url: "https://oauth2.googleapis.com/device/code",
        revocation_url: "https://oauth2.googleapis.com/revoke",
        issuer: "https://accounts.google.com",
        scopes: &["openid", "email"],
        scope_separator: " ",
        // token_endpoint_auth_methods_supported: client_secret_post,
        // client_secret_basic (discovery document).
        client_auth: ClientAuth::ClientSecretPost,
        token_format: TokenFormat::Form,
        use_pkce: true,
        // A refresh token is issued to web clients only with
        // access_type=offline:
        // https://developers.google.com/identity/protocols/oauth2/web-server#offline
        extra_auth_params: &[("access_type", "offline")],
        token_headers: &[],
        params: &[],
        notes: "Create a Desktop app client (its redirect is http://127.0.0.1:PORT) and keep \
                its client secret: the token endpoint wants it even with PKCE. Add the API \
                scopes you need (e.g. https://www.googleapis.com/auth/drive.readonly). The \
                device flow needs a \"TVs and Limited Input devices\" client.",
        docs: &[
            "https://developers.google.com/identity/protocols/oauth2/native-app",
            "https://developers.google.com/identity/protocols/oauth2/web-server#offline",
            "https://developers.google.com/identity/protocols/oauth2/limited-input-device",
        ],
    },
    Template {
        id: "notion",
        name: "Notion",
        // https://developers.notion.com/guides/get-started/authorization
        auth_url: "https://api.notion.com/v1/oauth/authorize",
        // Basic auth and a JSON body:
        // https://developers.notion.com/reference/create-a-token
        token_url: "https://api.notion.com/v1/oauth/token",
        device_auth_url: "",
        // Basic auth, JSON {"token"}: https://developers.notion.com/reference/revoke-token
        revocation_url: "https://api.notion.com/v1/oauth/revoke",
        issuer: "",
        // No scopes: capabilities are set on the integration.
        scopes: &[],
        scope_separator: " ",
        client_auth: ClientAuth::ClientSecretBasic,
        token_format: TokenFormat::Json,
        // PKCE is not documented by Notion.
        use_pkce: false,
        // owner=user is required on the authorization request.
        extra_auth_params: &[("owner", "user")],
        // The reference marks Notion-Version as required on the OAuth
        // endpoints: https://developers.notion.com/reference/revoke-token
        token_headers: &[("Notion-Version", "2022-06-28")],
        params: &[],
        notes: "A public integration; its redirect URI must be registered exactly. Token \
                responses carry no expires_in: the token is used until a refresh or a 401.",
        docs: &[
            "https://developers.notion.com/guides/get-started/authorization",
            "https://developers.notion.com/reference/create-a-token",
            "https://developers.notion.com/reference/refresh-a-token",
            "https://developers.notion.com/reference/revoke-token",
        ],
    },
    Template {
        id: "linear",
        name: "Linear",
        // https://linear.app/developers/oauth-2-0-authentication
        auth_url: "https://linear.app/oauth/authorize",
        token_url: "https://api.linear.app/oauth/token",
        device_auth_url: "",
        revocation_url: "https://api.linear.app/oauth/revoke",
        issuer: "",
        // Comma-separated scopes; `read` is always present.
        scopes: &["read", "write"],
        scope_separator: ",",
        client_auth: ClientAuth::ClientSecretPost,
        token_format: TokenFormat::Form,
        use_pkce: true,
        extra_auth_params: &[],
        token_headers: &[],
        params: &[],
        notes: "Register the callback URL on the app. Access tokens last 24 h and every \
                refresh rotates the refresh token.",
        docs: &["https://linear.app/developers/oauth-2-0-authentication"],
    },
    Template {
        id: "clickup",
        name: "ClickUp",
        // https://developer.clickup.com/docs/authentication
        auth_url: "https://app.clickup.com/api",
        // https://developer.clickup.com/reference/getaccesstoken
        token_url: "https://api.clickup.com/api/v2/oauth/token",
        device_auth_url: "",
        revocation_url: "",
        issuer: "",
        // No scopes: the user picks Workspaces.
        scopes: &[],
        scope_separator: " ",
        // The secret is always required.
        client_auth: ClientAuth::ClientSecretPost,
        token_format: TokenFormat::Form,
        // PKCE is not documented by ClickUp.
        use_pkce: false,
        extra_auth_params: &[],
        token_headers: &[],
        params: &[],
        notes: "Tokens do not expire and there is no refresh token; a 401 means the user \
                revoked access, and `auth authorize` is needed again.",
        docs: &[
            "https://developer.clickup.com/docs/authentication",
            "https://developer.clickup.com/reference/getaccesstoken",
        ],
    },
    Template {
        id: "microsoft",
        name: "Microsoft",
        // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow
        auth_url: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code
        device_auth_url: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        // No revocation endpoint in the metadata.
        revocation_url: "",
        // The issuer depends on the tenant of the signed-in user for the
        // multi-tenant values (common, organizations), so none is pinned.
        issuer: "",
        // offline_access is required for a refresh token.
        scopes: &["openid", "profile", "offline_access", "User.Read"],
        scope_separator: " ",
        client_auth: ClientAuth::ClientSecretPost,
        token_format: TokenFormat::Form,
        use_pkce: true,
        extra_auth_params: &[],
        token_headers: &[],
        params: &[Param {
            name: "tenant",
            default: "common",
            help: "common, organizations, consumers, or a tenant id or domain",
        }],
        notes: "Register a mobile/desktop (public client) redirect http://localhost, or \
                http://127.0.0.1 through the manifest; the port is ignored. A public client \
                must not have a secret stored. Scopes must belong to one resource.",
        docs: &[
            "https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow",
            "https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code",
            "https://learn.microsoft.com/en-us/entra/identity-platform/reply-url",
        ],
    },
];

/// The template named `id`.
pub fn find(id: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.id == id)
}

/// The names of every template, for error messages.
pub fn names() -> String {
    TEMPLATES
        .iter()
        .map(|t| t.id)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Template {
    /// As the API lists it (placeholders unfilled).
    pub fn to_proto(&self) -> pb::ProviderTemplate {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        pb::ProviderTemplate {
            provider: Some(pb::OAuthProvider {
                id: self.id.into(),
                name: self.name.into(),
                template: self.id.into(),
                auth_url: self.auth_url.into(),
                token_url: self.token_url.into(),
                device_auth_url: self.device_auth_url.into(),
                revocation_url: self.revocation_url.into(),
                scopes: self.scopes.iter().map(|s| (*s).to_owned()).collect(),
                use_pkce: Some(self.use_pkce),
                extra_auth_params: pairs(self.extra_auth_params),
                source: "seed".into(),
                issuer: self.issuer.into(),
                scope_separator: self.scope_separator.into(),
                client_auth: self.client_auth.as_str().into(),
                token_format: self.token_format.as_str().into(),
                token_headers: pairs(self.token_headers),
                ..Default::default()
            }),
            params: self
                .params
                .iter()
                .map(|p| pb::TemplateParam {
                    name: p.name.into(),
                    default_value: p.default.into(),
                    help: p.help.into(),
                })
                .collect(),
            notes: self.notes.split_whitespace().collect::<Vec<_>>().join(" "),
            docs: self.docs.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    /// `text` with the placeholders filled from `values` (else defaults).
    fn fill(&self, text: &str, values: &BTreeMap<String, String>) -> String {
        let mut out = text.to_owned();
        for param in self.params {
            let value = values
                .get(param.name)
                .map_or(param.default, String::as_str)
                .trim_end_matches('/');
            out = out.replace(&format!("{{{}}}", param.name), value);
        }
        out
    }

    /// Fills the unset fields of `spec` from this template; what `spec`
    /// sets wins. Fails on a parameter this template does not have.
    pub fn apply_to(&self, spec: &mut ProviderSpec) -> Result<(), String> {
        if let Some(unknown) = spec
            .template_params
            .keys()
            .find(|k| !self.params.iter().any(|p| p.name == k.as_str()))
        {
            let known: Vec<&str> = self.params.iter().map(|p| p.name).collect();
            return Err(format!(
                "template {} has no parameter {unknown:?} (it has: {})",
                self.id,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
        let values = spec.template_params.clone();
        for (field, template) in [
            (&mut spec.auth_url, self.auth_url),
            (&mut spec.token_url, self.token_url),
            (&mut spec.device_auth_url, self.device_auth_url),
            (&mut spec.revocation_url, self.revocation_url),
            (&mut spec.issuer, self.issuer),
        ] {
            if field.is_empty() {
                *field = self.fill(template, &values);
            }
        }
        if spec.scopes.is_empty() {
            spec.scopes = self.scopes.iter().map(|s| (*s).to_owned()).collect();
        }
        if spec.scope_separator.is_empty() {
            self.scope_separator.clone_into(&mut spec.scope_separator);
        }
        spec.client_auth.get_or_insert(self.client_auth);
        spec.token_format.get_or_insert(self.token_format);
        if spec.use_pkce.is_none() {
            spec.use_pkce = Some(self.use_pkce);
        }
        for (key, value) in self.extra_auth_params {
            spec.extra_auth_params
                .entry((*key).to_owned())
                .or_insert_with(|| (*value).to_owned());
        }
        for (key, value) in self.token_headers {
            spec.token_headers
                .entry((*key).to_owned())
                .or_insert_with(|| (*value).to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_fills_valid_https_endpoints() {
        for template in TEMPLATES {
            let mut spec = ProviderSpec {
                name: template.name.into(),
                template: template.id.into(),
                client_id: "client".into(),
                ..Default::default()
            };
            template.apply_to(&mut spec).unwrap();
            for url in [&spec.auth_url, &spec.token_url] {
                assert!(url.starts_with("https://") && !url.contains('{'), "{url}");
            }
            for url in [&spec.device_auth_url, &spec.revocation_url, &spec.issuer] {
                assert!(url.is_empty() || url.starts_with("https://") && !url.contains('{'));
            }
            assert!(!template.docs.is_empty());
        }
    }

    #[test]
    fn parameters_fill_placeholders_and_unknown_ones_are_refused() {
        let mut spec = ProviderSpec {
            template: "gitlab".into(),
            template_params: [("base_url".to_owned(), "https://git.example.com/".to_owned())]
                .into(),
            ..Default::default()
        };
        find("gitlab").unwrap().apply_to(&mut spec).unwrap();
        assert_eq!(spec.token_url, "https://git.example.com/oauth/token");
        assert_eq!(spec.issuer, "https://git.example.com");

        let mut spec = ProviderSpec::default();
        find("microsoft").unwrap().apply_to(&mut spec).unwrap();
        assert!(spec.auth_url.contains("/common/oauth2/v2.0/authorize"));
        assert!(spec.scopes.contains(&"offline_access".to_owned()));

        let mut spec = ProviderSpec {
            template_params: [("tenant".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        };
        let err = find("github").unwrap().apply_to(&mut spec).unwrap_err();
        assert!(err.contains("no parameter \"tenant\""), "{err}");
    }

    #[test]
    fn what_the_provider_sets_wins() {
        let mut spec = ProviderSpec {
            scopes: vec!["read_api".into()],
            use_pkce: Some(false),
            extra_auth_params: [("access_type".to_owned(), "online".to_owned())].into(),
            ..Default::default()
        };
        find("google").unwrap().apply_to(&mut spec).unwrap();
        assert_eq!(spec.scopes, ["read_api"]);
        assert_eq!(spec.use_pkce, Some(false));
        assert_eq!(spec.extra_auth_params["access_type"], "online");

        let mut notion = ProviderSpec::default();
        find("notion").unwrap().apply_to(&mut notion).unwrap();
        assert_eq!(notion.token_format, Some(TokenFormat::Json));
        assert_eq!(notion.extra_auth_params["owner"], "user");
        assert_eq!(notion.use_pkce, Some(false));
        let mut linear = ProviderSpec::default();
        find("linear").unwrap().apply_to(&mut linear).unwrap();
        assert_eq!(linear.scope_separator, ",");
    }
}
