//! `provider ...`: OAuth 2 providers and their client secrets.
//!
//! The client secret is write-only: `provider set-secret` reads it through
//! [`crate::sensitive`] (stdin or a no-echo prompt, never argv); the vault
//! only ever says whether one is stored. Endpoint rules (https except on
//! loopback) are the vault's to enforce.

use mcplexer_proto::v1::{DeleteRequest, GetRequest, ListRequest, OAuthProvider, ProviderTemplate};

use super::{Ctx, deleted, to_map};
use crate::cli::{ProviderCommand, ProviderCreate};
use crate::error::Failure;
use crate::output::{self, Fields, Table};
use crate::sensitive;

/// `provider list | show | create | delete | set-secret`.
pub async fn run(ctx: &mut Ctx, cmd: ProviderCommand) -> Result<(), Failure> {
    match cmd {
        ProviderCommand::Templates => {
            let templates = ctx
                .admin()
                .await?
                .list_provider_templates(ListRequest {})
                .await?
                .into_inner()
                .templates;
            if ctx.json {
                return output::json(&templates);
            }
            Ok(output::print_text(&templates_text(&templates))?)
        }
        ProviderCommand::List => {
            let providers = ctx
                .admin()
                .await?
                .list_providers(ListRequest {})
                .await?
                .into_inner()
                .providers;
            if ctx.json {
                return output::json(&providers);
            }
            Ok(table(&providers).print()?)
        }
        ProviderCommand::Show { id } => {
            let provider = ctx
                .admin()
                .await?
                .get_provider(GetRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&provider);
            }
            Ok(fields(&provider).print()?)
        }
        ProviderCommand::Create(args) => {
            let provider = new_provider(*args)?;
            let created = ctx
                .admin()
                .await?
                .create_provider(provider)
                .await?
                .into_inner();
            if ctx.json {
                return output::json(&created);
            }
            ctx.note(format_args!(
                "created provider {}",
                output::clean(&created.id)
            ));
            Ok(())
        }
        ProviderCommand::Delete { id } => {
            ctx.admin()
                .await?
                .delete_provider(DeleteRequest { id: id.clone() })
                .await?;
            deleted(ctx, "provider", &id)
        }
        ProviderCommand::SetSecret { id, mut misplaced } => {
            sensitive::refuse_misplaced(&mut misplaced)?;
            // Connect first, so nobody types a secret for an absent vault.
            let channel = ctx.channel().await?;
            let secret = sensitive::read_secret(&format!("the client secret of {id}"))?;
            let response = sensitive::set_provider_secret(channel, id.clone(), secret).await?;
            if ctx.json {
                return output::json(&response);
            }
            ctx.note(format_args!("stored the client secret of provider {id}"));
            Ok(())
        }
    }
}

/// The provider `provider create` asks for.
fn new_provider(args: ProviderCreate) -> Result<OAuthProvider, Failure> {
    Ok(OAuthProvider {
        id: args.id.unwrap_or_default(),
        name: args.name.unwrap_or_default(),
        template: args.template.unwrap_or_default(),
        template_params: to_map(args.template_params, "--template-param")?,
        auth_url: args.auth_url.unwrap_or_default(),
        token_url: args.token_url.unwrap_or_default(),
        device_auth_url: args.device_auth_url.unwrap_or_default(),
        revocation_url: args.revocation_url.unwrap_or_default(),
        issuer: args.issuer.unwrap_or_default(),
        scopes: args.scopes,
        scope_separator: args.scope_separator.unwrap_or_default(),
        client_id: args.client_id,
        client_auth: args.client_auth.unwrap_or_default(),
        token_format: args.token_format.unwrap_or_default(),
        // Unset: the template's choice (or on).
        use_pkce: args.no_pkce.then_some(false),
        redirect_uri: args.redirect_uri.unwrap_or_default(),
        extra_auth_params: to_map(args.params, "--param")?,
        token_headers: to_map(args.token_headers, "--token-header")?,
        ..OAuthProvider::default()
    })
}

/// `provider templates` as text: one block per template.
fn templates_text(templates: &[ProviderTemplate]) -> String {
    let mut text = String::new();
    for template in templates {
        let Some(p) = &template.provider else {
            continue;
        };
        let mut f = Fields::new();
        f.add("template", &p.id)
            .add("name", &p.name)
            .add("auth_url", &p.auth_url)
            .add("token_url", &p.token_url)
            .add("device_auth_url", none_if_empty(&p.device_auth_url))
            .add("revocation_url", none_if_empty(&p.revocation_url))
            .add("scopes", output::list(&p.scopes))
            .add("scope_separator", format!("{:?}", p.scope_separator))
            .add("client_auth", &p.client_auth)
            .add("token_format", &p.token_format)
            .add("use_pkce", output::yes_no(p.use_pkce.unwrap_or(true)));
        if !p.extra_auth_params.is_empty() {
            f.add("extra_auth_params", output::pairs(&p.extra_auth_params));
        }
        if !p.token_headers.is_empty() {
            f.add("token_headers", output::pairs(&p.token_headers));
        }
        for param in &template.params {
            f.add(
                "template_param",
                format!("{}={} ({})", param.name, param.default_value, param.help),
            );
        }
        f.add("notes", &template.notes)
            .add("docs", template.docs.join(" "));
        text.push_str(&f.render());
        text.push('\n');
    }
    text
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

fn table(providers: &[OAuthProvider]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TEMPLATE",
        "CLIENT_ID",
        "PKCE",
        "SECRET",
        "OWNER",
        "SOURCE",
    ]);
    for p in providers {
        t.row(vec![
            p.id.clone(),
            p.name.clone(),
            p.template.clone(),
            p.client_id.clone(),
            output::yes_no(p.use_pkce.unwrap_or(true)).to_owned(),
            output::yes_no(p.has_client_secret).to_owned(),
            output::owner(p.owner),
            p.source.clone(),
        ]);
    }
    t
}

fn fields(p: &OAuthProvider) -> Fields {
    let mut f = Fields::new();
    f.add("id", &p.id)
        .add("name", &p.name)
        .add("template", &p.template)
        .add("owner", output::owner(p.owner))
        .add("source", &p.source)
        .add("auth_url", &p.auth_url)
        .add("token_url", &p.token_url)
        .add("device_auth_url", &p.device_auth_url)
        .add("revocation_url", &p.revocation_url)
        .add("scopes", output::list(&p.scopes))
        .add("client_id", &p.client_id)
        .add("has_client_secret", output::yes_no(p.has_client_secret))
        .add("use_pkce", output::yes_no(p.use_pkce.unwrap_or(true)))
        .add("redirect_uri", &p.redirect_uri)
        .add("extra_auth_params", output::pairs(&p.extra_auth_params))
        .add("issuer", &p.issuer)
        .add("scope_separator", format!("{:?}", p.scope_separator))
        .add("client_auth", &p.client_auth)
        .add("token_format", &p.token_format)
        .add("token_headers", output::pairs(&p.token_headers))
        .add("template_params", output::pairs(&p.template_params));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::error::Exit;
    use clap::Parser;

    fn create(args: &[&str]) -> Result<OAuthProvider, Failure> {
        let base = [
            "mcplexerctl",
            "provider",
            "create",
            "--name",
            "Custom Provider",
            "--auth-url",
            "https://a/authorize",
            "--token-url",
            "https://a/token",
            "--client-id",
            "cid",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(args)).unwrap();
        let Command::Provider(ProviderCommand::Create(c)) = cli.command else {
            panic!("wrong command");
        };
        new_provider(*c)
    }

    #[test]
    fn defaults() {
        let p = create(&[]).unwrap();
        assert_eq!(p.use_pkce, None);
        assert!(p.id.is_empty());
        assert!(p.extra_auth_params.is_empty());
        assert_eq!(p.client_id, "cid");
    }

    #[test]
    fn options() {
        let p = create(&[
            "--no-pkce",
            "--scope",
            "repo",
            "--scope",
            "read:org",
            "--param",
            "access_type=offline",
            "--param",
            "prompt=consent",
        ])
        .unwrap();
        assert_eq!(p.use_pkce, Some(false));
        assert_eq!(p.scopes, ["repo", "read:org"]);
        assert_eq!(p.extra_auth_params["access_type"], "offline");
        let text = fields(&p).render();
        assert!(
            text.contains("extra_auth_params: access_type=offline, prompt=consent\n"),
            "{text}"
        );
        assert!(text.contains("has_client_secret: no\n"), "{text}");
    }

    #[test]
    fn a_template_needs_only_a_client_id() {
        let cli = Cli::try_parse_from([
            "mcplexerctl",
            "provider",
            "create",
            "--template",
            "gitlab",
            "--template-param",
            "base_url=https://git.example.com",
            "--client-id",
            "cid",
        ])
        .unwrap();
        let Command::Provider(ProviderCommand::Create(c)) = cli.command else {
            panic!("wrong command");
        };
        let p = new_provider(*c).unwrap();
        assert_eq!(p.template, "gitlab");
        assert_eq!(p.template_params["base_url"], "https://git.example.com");
        assert!(p.auth_url.is_empty() && p.name.is_empty());
        // Without a template the endpoints are required.
        let err = Cli::try_parse_from(["mcplexerctl", "provider", "create", "--client-id", "c"])
            .unwrap_err();
        assert!(err.to_string().contains("--name"), "{err}");
    }

    #[test]
    fn duplicate_param_is_a_usage_error() {
        let err = create(&["--param", "a=1", "--param", "a=2"]).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
    }
}
