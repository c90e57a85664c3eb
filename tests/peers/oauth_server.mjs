#!/usr/bin/env node
/**
 * An OAuth 2 / OpenID Connect authorization server for the end-to-end tests,
 * on the OpenID-certified `oidc-provider` (9.13.3, pinned in package.json).
 * Everything lives in memory (the provider's default adapter): a restart
 * forgets every code, token and grant.
 *
 * Usage:
 *     node oauth_server.mjs [--port N]
 *
 * Listens on 127.0.0.1 only, on a port the OS picks (or N). Once it accepts
 * connections it prints exactly one line on stdout,
 * `ISSUER=http://127.0.0.1:<port>`, and that URL is the issuer; everything
 * else (an access log without query strings, provider events) goes to
 * stderr. SIGTERM or SIGINT stop it with exit status 0.
 *
 * Environment:
 *     ACCESS_TOKEN_TTL  access-token lifetime in seconds (default 3600).
 *                       Expiry is exact to the second: clockTolerance is 0.
 *     AUTO_APPROVE=1    finish every login/consent interaction at once as the
 *                       account `test-user`, granting every requested scope
 *                       (plus offline_access) and every requested resource.
 *     DENY=1            finish every interaction with error=access_denied
 *                       (wins over AUTO_APPROVE): the authorization response
 *                       carries the error to the redirect URI, a device code
 *                       polls to access_denied.
 *     CONSENT_PAGE=1    a person decides (wins over AUTO_APPROVE and DENY):
 *                       GET /interaction/:uid answers a real HTML page naming
 *                       the client and the requested scopes, with an
 *                       "Approve" and a "Deny" button (one POST form back to
 *                       /interaction/:uid, field `decision`). Approve finishes
 *                       the interaction as AUTO_APPROVE does, Deny as DENY
 *                       does; then 303 on to the authorization resume.
 *                       With none of the three, /interaction/:uid answers 403
 *                       "interaction refused" (no way to log in).
 *     GITHUB_ROUTES=1   serve the authorization, token and device
 *                       authorization endpoints at GitHub's paths instead of
 *                       oidc-provider's (see Endpoints), so that a provider
 *                       made from a GitHub template with base_url = the
 *                       issuer talks to this server.
 *     DEVICE_INTERVAL   if set (seconds), added as `interval` to device
 *                       authorization responses. oidc-provider itself never
 *                       sends `interval` (so RFC 8628's default of 5 s applies)
 *                       and never answers slow_down.
 *     DEVICE_EXPIRES_IN if set (seconds), replaces `expires_in` in device
 *                       authorization responses (the code itself still lives
 *                       oidc-provider's 10 minutes): a provider that claims
 *                       an absurd lifetime, e.g. 10000000000000000000.
 *
 * Clients (all `application_type: 'native'`, redirect URIs
 * `http://127.0.0.1/callback` and `http://127.0.0.1/oauth/callback` (the
 * configuration UI's), each with any port (RFC 8252 loopback rule),
 * response type `code`, grant types authorization_code, refresh_token and
 * device_code, scope `openid offline_access read write`):
 *     public-client        token_endpoint_auth_method none
 *     confidential-client  client_secret_basic, secret confidential-secret-5f1d0c9a
 *     post-client          client_secret_post,  secret post-secret-8e2b71d4
 * Stricter than oidc-provider, which takes a Basic header and body
 * credentials interchangeably: confidential-client must authenticate with
 * `Authorization: Basic` (RFC 6749 2.3.1: id and secret form-encoded, then
 * base64) and post-client with client_id + client_secret in the body, at
 * the token, revocation, introspection and device authorization endpoints;
 * the other way answers 401 invalid_client.
 *
 * Endpoints (also in the discovery documents): authorization /auth, token
 * /token, device authorization /device/auth; with GITHUB_ROUTES=1 these are
 * /login/oauth/authorize, /login/oauth/access_token and /login/device/code
 * instead (and the old paths answer 404). Revocation /token/revocation,
 * introspection /token/introspection, the device user pages /device and
 * userinfo /me are the same either way.
 *
 * Policy: PKCE (S256, the only method oidc-provider 9 knows) is required of
 * every client; every refresh rotates the refresh token, and replaying a
 * rotated one (or a used code) revokes the whole grant; a refresh token is
 * issued whenever the client may use the refresh_token grant (no need for
 * offline_access + prompt=consent); tokens never expire with the login
 * session. Revoking an access or a refresh token (or replaying a code or
 * rotated refresh token) revokes every token of its grant. Authorization
 * responses carry `iss` (RFC 9207). Revocation (RFC 7009), introspection
 * and the device flow are on; discovery at /.well-known/openid-configuration
 * and /.well-known/oauth-authorization-server.
 *
 * Access tokens are opaque. Without a `resource` parameter the token is for
 * the userinfo endpoint and carries the requested OIDC scopes (openid,
 * offline_access, read, write are all registered as such). With `resource`
 * (RFC 8707; any absolute URI without a fragment is accepted as a resource
 * server with scopes `read write`) the token is for that resource and carries only
 * `read`/`write`; a later token request without `resource` keeps using the
 * granted one.
 *
 * GET /protected: 200 `{"sub", "client_id", "scope", "aud"}` when the
 * `Authorization: Bearer <token>` is a live access token of this server
 * (found by provider.AccessToken.find: not expired, revoked or unknown), 401
 * with `WWW-Authenticate: Bearer error="invalid_token"` otherwise.
 *
 * GET /stats: 200 `{"grants": {"<grant_type>": <count>, ...}}`, the number of
 * successful token-endpoint grants (oidc-provider's `grant.success` event:
 * answers that issued tokens) by grant_type since the server started, e.g.
 * `{"grants": {"authorization_code": 1, "refresh_token": 2}}`; a grant type
 * never granted is absent. Refused requests (invalid_grant, a pending
 * device code, ...) are not counted. Tests count refreshes with it.
 */

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const TEST_USER = 'test-user';
const SCOPES = ['openid', 'offline_access', 'read', 'write'];
const RESOURCE_SCOPES = 'read write';
const GRANT_TYPES = [
  'authorization_code',
  'refresh_token',
  'urn:ietf:params:oauth:grant-type:device_code',
];

// stdout carries the ISSUER line only; oidc-provider's notices (console.log
// and console.info in its helpers) go to stderr with everything else.
console.log = console.error;
console.info = console.error;

function log(...args) {
  process.stderr.write(`${args.join(' ')}\n`);
}

function fail(message) {
  log(`oauth_server: ${message}`);
  process.exit(2);
}

function parseArgs(argv) {
  let port = 0;
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--port' && i + 1 < argv.length) {
      port = Number(argv[i + 1]);
      i += 1;
    } else {
      fail(`unknown argument ${JSON.stringify(argv[i])}; usage: oauth_server.mjs [--port N]`);
    }
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail('--port wants 0..65535');
  return { port };
}

function positiveIntFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) fail(`${name} wants a positive integer, not ${JSON.stringify(raw)}`);
  return value;
}

const { port: requestedPort } = parseArgs(process.argv.slice(2));
const accessTokenTtl = positiveIntFromEnv('ACCESS_TOKEN_TTL', 3600);
const deviceInterval = positiveIntFromEnv('DEVICE_INTERVAL', undefined);
const deviceExpiresIn = positiveIntFromEnv('DEVICE_EXPIRES_IN', undefined);
const deny = process.env.DENY === '1';
const autoApprove = process.env.AUTO_APPROVE === '1';
const consentPage = process.env.CONSENT_PAGE === '1';
const githubRoutes = process.env.GITHUB_ROUTES === '1';

/** oidc-provider's paths, with GitHub's for the three endpoints GitHub has. */
const ROUTES = {
  authorization: githubRoutes ? '/login/oauth/authorize' : '/auth',
  token: githubRoutes ? '/login/oauth/access_token' : '/token',
  device_authorization: githubRoutes ? '/login/device/code' : '/device/auth',
  revocation: '/token/revocation',
  introspection: '/token/introspection',
};

function client(clientId, authMethod, secret) {
  return {
    client_id: clientId,
    ...(secret === undefined ? {} : { client_secret: secret }),
    token_endpoint_auth_method: authMethod,
    application_type: 'native',
    redirect_uris: ['http://127.0.0.1/callback', 'http://127.0.0.1/oauth/callback'],
    grant_types: GRANT_TYPES,
    response_types: ['code'],
    scope: SCOPES.join(' '),
  };
}

const CLIENTS = [
  client('public-client', 'none'),
  client('confidential-client', 'client_secret_basic', 'confidential-secret-5f1d0c9a'),
  client('post-client', 'client_secret_post', 'post-secret-8e2b71d4'),
];
const AUTH_METHODS = new Map(CLIENTS.map((c) => [c.client_id, c.token_endpoint_auth_method]));

function configuration() {
  return {
    clients: CLIENTS,
    scopes: SCOPES,
    responseTypes: ['code'],
    routes: ROUTES,
    // Fresh per run: nothing of a previous run's cookies is accepted.
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub };
        },
      };
    },
    pkce: { required: () => true },
    rotateRefreshToken: () => true,
    async issueRefreshToken(_ctx, c) {
      return c.grantTypeAllowed('refresh_token');
    },
    expiresWithSession: async () => false,
    clockTolerance: 0,
    ttl: { AccessToken: accessTokenTtl },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
      deviceFlow: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // No `resource` parameter: a token for userinfo (and /protected).
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        async getResourceServerInfo() {
          return {
            scope: RESOURCE_SCOPES,
            accessTokenFormat: 'opaque',
            accessTokenTTL: accessTokenTtl,
          };
        },
      },
    },
  };
}

/** Finishes the interaction `details` of this request: approved as the test
 * user with every requested scope and resource, or denied (`why` is the
 * error_description). */
async function finishInteraction(provider, ctx, details, approve, why) {
  let result;
  if (approve) {
    const { params, session } = details;
    const accountId = session?.accountId ?? TEST_USER;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    const requested = new Set(String(params.scope ?? '').split(' ').filter(Boolean));
    requested.add('offline_access');
    grant.addOIDCScope([...requested].join(' '));
    const resources = params.resource === undefined ? [] : [params.resource].flat();
    for (const resource of resources) {
      grant.addResourceScope(resource, [...requested].join(' '));
    }
    const grantId = await grant.save();
    result = { login: { accountId }, consent: { grantId } };
  } else {
    result = { error: 'access_denied', error_description: why };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: approve,
  });
  log(`interaction ${details.uid} (${details.prompt.name}): ${approve ? `approved as ${TEST_USER}` : 'denied'}`);
  ctx.redirect(returnTo);
  ctx.status = 303;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The page of CONSENT_PAGE=1: what is asked, and the two buttons. */
function consentHtml(details) {
  const { uid, params } = details;
  const scopes = String(params.scope ?? '').split(' ').filter(Boolean);
  const items = scopes.map((s) => `<li><code>${escapeHtml(s)}</code></li>`).join('');
  return '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    + '<title>Authorize access</title></head><body>'
    + `<h1>Authorize ${escapeHtml(params.client_id)}</h1>`
    + `<p>The application <strong id="client">${escapeHtml(params.client_id)}</strong> asks to act as `
    + `<strong>${TEST_USER}</strong> with these scopes:</p><ul id="scopes">${items}</ul>`
    + `<form method="post" action="/interaction/${escapeHtml(uid)}">`
    + '<button type="submit" name="decision" value="approve">Approve</button> '
    + '<button type="submit" name="decision" value="deny">Deny</button>'
    + '</form></body></html>';
}

/** The `decision` field of a form-encoded POST body. */
async function postedDecision(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > BODY_LIMIT) return undefined;
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('decision') ?? undefined;
}

/** GET /interaction/:uid: the page (CONSENT_PAGE), or the configured outcome
 * at once (DENY, AUTO_APPROVE), or 403. */
async function interaction(provider, ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (consentPage) {
    ctx.status = 200;
    ctx.type = 'text/html';
    ctx.set('Cache-Control', 'no-store');
    ctx.body = consentHtml(details);
    log(`interaction ${details.uid} (${details.prompt.name}): consent page shown`);
    return;
  }
  if (deny || autoApprove) {
    await finishInteraction(provider, ctx, details, !deny, 'the test server denies every request (DENY=1)');
    return;
  }
  ctx.status = 403;
  ctx.type = 'text/html';
  ctx.body = '<!DOCTYPE html><html><head><title>interaction refused</title></head>'
    + '<body><h1>interaction refused</h1><p>start oauth_server.mjs with AUTO_APPROVE=1, DENY=1 or CONSENT_PAGE=1</p></body></html>';
  log(`interaction ${details.uid} (${details.prompt.name}): refused`);
}

/** POST /interaction/:uid (CONSENT_PAGE only): the person's decision. */
async function interactionDecision(provider, ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const decision = await postedDecision(ctx);
  if (decision !== 'approve' && decision !== 'deny') {
    ctx.status = 400;
    ctx.type = 'text/html';
    ctx.body = '<!DOCTYPE html><html><head><title>bad decision</title></head>'
      + '<body><h1>bad decision</h1><p>decision must be approve or deny</p></body></html>';
    return;
  }
  await finishInteraction(provider, ctx, details, decision === 'approve', 'the user denied the request');
}

/** Successful token-endpoint grants by grant_type, for GET /stats. */
const grantCounts = new Map();

function countGrant(ctx) {
  const grantType = String(ctx.oidc?.params?.grant_type ?? 'unknown');
  grantCounts.set(grantType, (grantCounts.get(grantType) ?? 0) + 1);
}

/** GET /stats: the grant counts. */
function statsRoute(ctx) {
  ctx.status = 200;
  ctx.type = 'application/json';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = { grants: Object.fromEntries(grantCounts) };
}

/** GET /protected: 200 with the token's subject for a live access token. */
async function protectedRoute(provider, ctx) {
  const match = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/.exec(ctx.get('authorization'));
  const token = match ? await provider.AccessToken.find(match[1]) : undefined;
  ctx.type = 'application/json';
  if (!token || token.isExpired) {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
    ctx.body = { error: 'invalid_token' };
    return;
  }
  ctx.status = 200;
  ctx.body = {
    sub: token.accountId,
    client_id: token.clientId,
    scope: token.scope ?? '',
    aud: token.aud ?? null,
  };
}

/** The endpoints where clients authenticate. */
const CLIENT_AUTH_PATHS = new Set([
  ROUTES.token,
  ROUTES.revocation,
  ROUTES.introspection,
  ROUTES.device_authorization,
]);
const BODY_LIMIT = 56 * 1024;

/** The client_id of an `Authorization: Basic` header (RFC 6749 2.3.1
 * form-encoding undone), or undefined. */
function basicClientId(header) {
  const match = /^basic\s+(\S+)$/i.exec(header);
  if (!match) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon === -1) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

/**
 * oidc-provider accepts client_secret_basic and client_secret_post
 * interchangeably for a client registered with either. This peer is strict:
 * a client_secret_basic client must send its secret in the Authorization
 * header only, a client_secret_post client in the body only. Reads the form
 * body here and hands it to oidc-provider as an already parsed body (which
 * it supports); returns why the request breaks the rule, or undefined.
 */
async function registeredAuthMethodBroken(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > BODY_LIMIT) return 'request body too large';
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks).toString('utf8');
  ctx.req.body = raw;
  const body = new URLSearchParams(raw);
  const header = ctx.get('authorization');
  const clientId = header ? basicClientId(header) : body.get('client_id');
  const method = AUTH_METHODS.get(clientId);
  if (method === 'client_secret_basic' && body.has('client_secret')) {
    return `${clientId} is registered with client_secret_basic but sent client_secret in the body`;
  }
  if (method === 'client_secret_post' && header) {
    return `${clientId} is registered with client_secret_post but sent an Authorization header`;
  }
  return undefined;
}

function routes(provider) {
  return async (ctx, next) => {
    try {
      if (
        ctx.method === 'POST'
        && CLIENT_AUTH_PATHS.has(ctx.path)
        && ctx.is('application/x-www-form-urlencoded')
      ) {
        const broken = await registeredAuthMethodBroken(ctx);
        if (broken) {
          log(`client authentication refused: ${broken}`);
          ctx.status = 401;
          ctx.set('Cache-Control', 'no-store');
          if (ctx.get('authorization')) {
            ctx.set('WWW-Authenticate', `Basic realm="${provider.issuer}", error="invalid_client", error_description="client authentication failed"`);
          }
          ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
          return;
        }
      }
      if (ctx.path === '/stats' && ctx.method === 'GET') {
        statsRoute(ctx);
        return;
      }
      if (ctx.path === '/protected' && ctx.method === 'GET') {
        await protectedRoute(provider, ctx);
        return;
      }
      if (/^\/interaction\/[^/]+$/.test(ctx.path) && ctx.method === 'GET') {
        await interaction(provider, ctx);
        return;
      }
      if (/^\/interaction\/[^/]+$/.test(ctx.path) && ctx.method === 'POST' && consentPage) {
        await interactionDecision(provider, ctx);
        return;
      }
      await next();
      if (
        ctx.path === ROUTES.device_authorization
        && ctx.status === 200
        && ctx.body
        && typeof ctx.body === 'object'
      ) {
        if (deviceInterval !== undefined) {
          ctx.body = { ...ctx.body, interval: deviceInterval };
        }
        if (deviceExpiresIn !== undefined) {
          ctx.body = { ...ctx.body, expires_in: deviceExpiresIn };
        }
      }
    } finally {
      // Paths only: query strings carry codes and states.
      log(`${ctx.method} ${ctx.path} -> ${ctx.status}`);
    }
  };
}

const server = http.createServer();
server.on('error', (err) => fail(`listen: ${err.message}`));
server.listen(requestedPort, HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  const provider = new Provider(issuer, configuration());
  provider.use(routes(provider));
  for (const event of [
    'server_error',
    'authorization.error',
    'grant.error',
    'introspection.error',
    'revocation.error',
    'userinfo.error',
    'code_verification.error',
  ]) {
    provider.on(event, (_ctx, err) => log(`${event}: ${err?.name}: ${err?.error_description ?? err?.message}${err?.error_detail ? ` (${err.error_detail})` : ''}`));
  }
  provider.on('grant.revoked', (_ctx, grantId) => log(`grant.revoked ${grantId}`));
  provider.on('grant.success', countGrant);
  server.on('request', provider.callback());
  log(`issuer ${issuer}, access token ttl ${accessTokenTtl}s, `
    + `interactions ${consentPage ? 'on a consent page' : deny ? 'denied' : autoApprove ? 'auto-approved' : 'refused'}`
    + `${githubRoutes ? ', GitHub paths' : ''}`
    + `${deviceInterval === undefined ? '' : `, device interval ${deviceInterval}s`}`
    + `${deviceExpiresIn === undefined ? '' : `, device expires_in ${deviceExpiresIn}s`}`);
  process.stdout.write(`ISSUER=${issuer}\n`);
});

function stop(signal) {
  log(`stopping on ${signal}`);
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
