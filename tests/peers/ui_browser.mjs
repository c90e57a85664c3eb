#!/usr/bin/env node
/**
 * Drives the configuration UI (`mcplexerctl ui`) in headless Chromium the way
 * a person does, with playwright-core (pinned in package.json) and Debian's
 * /usr/bin/chromium:
 *
 *   1. opens `login`, the page `mcplexerctl ui` wrote for the browser (a
 *      file:// URL), which moves on to the one-time sign-in link and then
 *      to Auth Scopes, where the browser must arrive signed in;
 *   2. Auth Scopes → Add Auth Scope; type oauth2, Choose; template GitHub,
 *      Choose; fills name, token variable, Client ID, Client Secret, the
 *      base_url parameter (= the test authorization server's issuer) and the
 *      scopes; submits;
 *   3. on the new scope's page clicks Authorize, on the provider's consent
 *      page clicks Approve, and lands back on the scope page, whose status
 *      badge must say "valid";
 *   4. Routes: links the scope to a route for an existing stdio server;
 *   5. Add Auth Scope of type env; on its page sets a value through the
 *      write-only field and finds its key listed (the value masked);
 *   6. Providers: the provider made in step 2 shows its client secret as
 *      "stored".
 *
 * Usage:
 *     node ui_browser.mjs ARTIFACTS_DIR  < config.json
 *
 * The configuration comes on stdin, not on the command line (where other
 * users can read it: the sign-in link signs in, the secrets are secrets):
 *     {"ui": "http://127.0.0.1:PORT",              the UI
 *      "login": "file:///…/mcplexer-ui-PID.html",  its page for the browser
 *      "issuer": "http://127.0.0.1:PORT",          the authorization server
 *      "client_id": "…", "client_secret": "…",      its client_secret_post client
 *      "scopes": "openid offline_access read",
 *      "token_var": "…",                            the scope's token variable
 *      "server_id": "…",                            an existing stdio server
 *      "env_key": "…", "env_value": "…"}            the env scope's value
 *
 * ARTIFACTS_DIR (created if missing) receives, for each step, a full-page
 * screenshot `NN-step.png` and the page's HTML as the browser holds it
 * (`NN-step.html`, page.content()), and `documents.json`: every top-level
 * document the browser received (URL without query, status). Every HTML
 * document the UI or the provider answered is also searched for the two
 * secret values of the configuration.
 *
 * On success prints one JSON object on stdout (the ids made, the status
 * seen, the steps and their paths, never a query string) and exits 0. On any
 * unexpected state (a page that is not the expected one, an error notice, a
 * 4xx/5xx document, a console error or script error on a UI page (but for
 * the 404 of the browser's own /favicon.ico request), a secret value in a
 * page) it saves `99-failure.png`/`.html`, prints why on stderr
 * and exits 1; 2 on a usage error or a missing browser.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
/** One page load or wait; a healthy run needs well under a second each. */
const STEP_TIMEOUT_MS = 30_000;
/** The flags PEERS.md prescribes (the fresh --user-data-dir is the
 * persistent context's directory). */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function usage(message) {
  process.stderr.write(`ui_browser: ${message}\n`);
  process.exit(2);
}

class Unexpected extends Error {}

function expect(condition, message) {
  if (!condition) throw new Unexpected(message);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const args = process.argv.slice(2);
if (args.length !== 1) usage('usage: node ui_browser.mjs ARTIFACTS_DIR < config.json');
const artifacts = path.resolve(args[0]);
let config;
try {
  config = JSON.parse(await readStdin());
} catch (err) {
  usage(`stdin is not the JSON configuration: ${err.message}`);
}
for (const key of ['ui', 'login', 'issuer', 'client_id', 'client_secret', 'scopes', 'token_var', 'server_id', 'env_key', 'env_value']) {
  if (typeof config[key] !== 'string' || config[key] === '') usage(`configuration field ${key} is missing`);
}
if (!fs.existsSync(CHROMIUM)) {
  usage(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)`);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (err) {
  usage(`playwright-core is missing (${err.message}): run tests/peers/install.sh`);
}

const uiOrigin = new URL(config.ui).origin;
const issuerOrigin = new URL(config.issuer).origin;
const secrets = [config.client_secret, config.env_value];

fs.mkdirSync(artifacts, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mcplexer-ui-browser-'));

/** Every top-level document received: URL without query, status. */
const documents = [];
/** The bodies of the documents that are not redirects, searched for the
 * secrets once the walk is over. */
const pending = [];
/** Console errors and uncaught script errors on UI pages. */
const pageErrors = [];
/** The steps done: name and the path it ended on. */
const steps = [];

function withoutQuery(url) {
  const u = new URL(url);
  return u.origin === 'null' ? `${u.protocol}${u.pathname}` : `${u.origin}${u.pathname}`;
}

function assertNoSecret(text, where) {
  for (const secret of secrets) {
    expect(!text.includes(secret), `a secret value set by this test is in ${where}`);
  }
}

let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
  });
} catch (err) {
  fs.rmSync(profile, { recursive: true, force: true });
  usage(`cannot start ${CHROMIUM}: ${err.message}`);
}
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(STEP_TIMEOUT_MS);
page.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);

page.on('response', (response) => {
  const request = response.request();
  if (!request.isNavigationRequest() || request.frame() !== page.mainFrame()) return;
  const url = response.url();
  documents.push({ url: withoutQuery(url), status: response.status() });
  const status = response.status();
  if (status >= 300 && status < 400) return;
  pending.push(response.text().then(
    (body) => ({ url: withoutQuery(url), status, body }),
    () => ({ url: withoutQuery(url), status, body: '' }),
  ));
});
page.on('console', (message) => {
  if (message.type() === 'error' && page.url().startsWith(uiOrigin)) {
    const where = message.location()?.url;
    // Chromium asks every origin for /favicon.ico on its own; the UI has
    // none and answers 404. Not something a page of the UI asked for.
    if (where === `${uiOrigin}/favicon.ico`) return;
    pageErrors.push(`console error on ${withoutQuery(page.url())}: ${message.text()}${where ? ` (${withoutQuery(where)})` : ''}`);
  }
});
page.on('pageerror', (err) => {
  pageErrors.push(`script error on ${withoutQuery(page.url())}: ${err.message}`);
});

let stepNumber = 0;

/** Saves the screenshot and HTML of the current page as step `name`, and
 * checks what the page shows so far. */
async function snap(name) {
  stepNumber += 1;
  const base = `${String(stepNumber).padStart(2, '0')}-${name}`;
  await page.screenshot({ path: path.join(artifacts, `${base}.png`), fullPage: true });
  const html = await page.content();
  fs.writeFileSync(path.join(artifacts, `${base}.html`), html);
  steps.push({ step: base, path: new URL(page.url()).pathname });
  assertNoSecret(html, `the page of step ${base}`);
  expect(pageErrors.length === 0, pageErrors.join('\n'));
}

/** Waits until the page is the UI's `pathname` (a RegExp or string) with
 * the query parameter `done` = `done` (when given), and has no error notice;
 * fails at once when a UI page with an error notice comes first. */
async function onUiPage(pathname, what, done) {
  const wanted = (url) => url.origin === uiOrigin
    && (typeof pathname === 'string' ? url.pathname === pathname : pathname.test(url.pathname))
    && (done === undefined || url.searchParams.get('done') === done);
  const error = page.locator('.notice.error').first();
  await Promise.race([
    page.waitForURL(wanted),
    error.waitFor().then(async () => {
      throw new Unexpected(`${what}: the UI shows an error: ${await error.innerText()}`);
    }),
  ]);
  await page.waitForLoadState('load');
  const errors = await page.locator('.notice.error').allInnerTexts();
  expect(errors.length === 0, `${what}: the UI shows an error: ${errors.join(' / ')}`);
}

/** The text of the confirmation notice, which must contain `text`. */
async function confirmed(text, what) {
  const notice = (await page.locator('.notice.ok').allInnerTexts()).join(' ');
  expect(notice.includes(text), `${what}: expected the notice "${text}", saw "${notice}"`);
}

async function navigate(label) {
  await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: label }).click();
}

const summary = {};
let failed;
try {
  // 1. Sign in.
  // The page moves on at once (a refresh meta element): what counts is
  // where the browser ends up.
  await page.goto(config.login, { waitUntil: 'commit' });
  await onUiPage('/scopes', 'sign-in');
  await snap('signed-in');

  // 2. Add an oauth2 scope from the GitHub template.
  await page.getByRole('link', { name: 'Add Auth Scope' }).click();
  await onUiPage('/scopes/new', 'Add Auth Scope');
  await snap('add-scope');
  await page.getByLabel('Type').selectOption('oauth2');
  await page.getByRole('button', { name: 'Choose' }).click();
  await page.waitForURL((url) => url.searchParams.get('type') === 'oauth2');
  await onUiPage('/scopes/new', 'choosing oauth2');
  await page.getByLabel('Provider template').selectOption({ label: 'GitHub' });
  await page.getByRole('button', { name: 'Choose' }).click();
  await page.waitForURL((url) => url.searchParams.get('template') === 'github');
  await onUiPage('/scopes/new', 'choosing the GitHub template');
  const legend = await page.locator('fieldset legend').innerText();
  expect(legend.includes('GitHub'), `the template's fields are missing: legend "${legend}"`);
  const templateScopes = await page.getByLabel('Scopes', { exact: true }).inputValue();
  expect(templateScopes !== '', 'the template did not pre-fill the scopes');
  await snap('github-template');

  await page.getByLabel('Name', { exact: true }).fill('Team GitHub');
  await page.getByLabel('Token variable (stdio)').fill(config.token_var);
  await page.getByLabel('Client ID', { exact: true }).fill(config.client_id);
  await page.getByLabel('Client Secret').fill(config.client_secret);
  await page.getByLabel('base_url').fill(config.issuer);
  await page.getByLabel('Scopes', { exact: true }).fill(config.scopes);
  await snap('oauth-scope-filled');
  await page.getByRole('button', { name: 'Add Auth Scope' }).click();
  await onUiPage(/^\/scopes\/[^/]+$/, 'creating the oauth2 scope', 'created');
  await confirmed('Created.', 'creating the oauth2 scope');
  const oauthScope = decodeURIComponent(new URL(page.url()).pathname.split('/')[2]);
  summary.oauth_scope = oauthScope;
  summary.status_before = (await page.locator('#oauth-status').innerText()).trim();
  expect(summary.status_before === 'not authorized', `a new scope's status is "${summary.status_before}"`);
  await snap('oauth-scope-created');

  // 3. Authorize at the provider.
  await page.getByRole('button', { name: 'Authorize', exact: true }).click();
  await page.waitForURL((url) => url.origin === issuerOrigin && url.pathname.startsWith('/interaction/'));
  await page.waitForLoadState('load');
  const consent = await page.locator('h1').innerText();
  expect(consent.includes(config.client_id), `the provider's page is not the consent page: "${consent}"`);
  const asked = await page.locator('#scopes li').allInnerTexts();
  // oidc-provider drops offline_access from a request without
  // prompt=consent (the test server issues refresh tokens regardless).
  expect(
    config.scopes.split(' ').filter((s) => s !== 'offline_access').every((s) => asked.includes(s)),
    `the provider was asked for [${asked.join(' ')}], not ${config.scopes}`,
  );
  await snap('provider-consent');
  await page.getByRole('button', { name: 'Approve' }).click();
  await onUiPage(`/scopes/${encodeURIComponent(oauthScope)}`, 'back from the provider', 'authorized');
  await confirmed('Authorized', 'back from the provider');
  summary.status = (await page.locator('#oauth-status .badge').innerText()).trim();
  expect(summary.status === 'valid', `the scope's status after Approve is "${summary.status}", not "valid"`);
  const granted = page.locator('dl.facts dt', { hasText: 'Granted scopes' });
  summary.granted_scopes = await granted.count() === 1
    ? (await granted.locator('xpath=following-sibling::dd[1]').innerText()).trim()
    : '';
  await snap('oauth-scope-authorized');

  // 4. Link the scope to a route.
  await navigate('Routes');
  await onUiPage('/routes', 'Routes');
  await snap('routes');
  await page.getByLabel('Name', { exact: true }).fill('GitHub tools');
  await page.getByLabel('Tools').fill('github__*');
  await page.getByLabel('Server').selectOption(config.server_id);
  await page.getByLabel('Scope').selectOption(oauthScope);
  await page.getByLabel('Priority').fill('10');
  await page.getByLabel('Policy').selectOption('allow');
  const check = (await page.locator('#route-check').innerText()).trim();
  expect(check.includes('oauth2 scope fits a stdio server'), `the inline check says "${check}"`);
  await snap('route-filled');
  await page.getByRole('button', { name: 'Create route' }).click();
  await onUiPage('/routes', 'creating the route', 'created');
  await confirmed('Created.', 'creating the route');
  const row = page.locator('tbody tr', { hasText: 'GitHub tools' });
  expect(await row.count() === 1, 'the new route is not listed once');
  const scopeCell = await row.locator('td').nth(4).innerText();
  expect(scopeCell.includes(oauthScope), `the route's scope cell is "${scopeCell}"`);
  summary.route_scope_cell = scopeCell.trim();
  await snap('route-created');

  // 5. An env scope and a write-only value.
  await navigate('Auth Scopes');
  await onUiPage('/scopes', 'Auth Scopes');
  await page.getByRole('link', { name: 'Add Auth Scope' }).click();
  await onUiPage('/scopes/new', 'Add Auth Scope');
  expect(await page.getByLabel('Type').inputValue() === 'env', 'the form does not start with type env');
  await page.getByLabel('Name', { exact: true }).fill('Build env');
  await snap('env-scope-filled');
  await page.getByRole('button', { name: 'Add Auth Scope' }).click();
  await onUiPage(/^\/scopes\/[^/]+$/, 'creating the env scope', 'created');
  await confirmed('Created.', 'creating the env scope');
  const envScope = decodeURIComponent(new URL(page.url()).pathname.split('/')[2]);
  summary.env_scope = envScope;
  await snap('env-scope-created');
  await page.getByLabel('Variable name').fill(config.env_key);
  const valueField = page.getByLabel('Value', { exact: true });
  expect(await valueField.getAttribute('type') === 'password', 'the value field is not a password field');
  await valueField.click();
  await page.keyboard.type(config.env_value);
  await snap('env-secret-filled');
  await page.keyboard.press('Enter');
  await onUiPage(`/scopes/${encodeURIComponent(envScope)}`, 'setting the value', 'secret-set');
  await confirmed('Stored the value', 'setting the value');
  const keys = await page.locator('tbody tr td:first-child code').allInnerTexts();
  expect(keys.includes(config.env_key), `the key is not listed: [${keys.join(', ')}]`);
  const masked = await page.locator('tbody tr .masked').count();
  expect(masked === keys.length, 'a listed value is not masked');
  summary.env_keys = keys;
  await snap('env-secret-set');

  // 6. The provider made with the scope holds its client secret.
  await navigate('Providers');
  await onUiPage('/providers', 'Providers');
  const providerRow = page.locator('tbody tr', { hasText: config.client_id });
  expect(await providerRow.count() === 1, 'the provider is not listed once');
  summary.provider_secret = (await providerRow.locator('td').nth(3).innerText()).trim();
  expect(summary.provider_secret === 'stored', `the client secret is "${summary.provider_secret}"`);
  await snap('providers');

  for (const document of await Promise.all(pending)) {
    assertNoSecret(document.body, `the document ${document.url}`);
    expect(document.status < 400, `${document.url} answered ${document.status}`);
  }
  expect(pageErrors.length === 0, pageErrors.join('\n'));
} catch (err) {
  failed = err;
}

const lastUrl = withoutQuery(page.url());
if (failed) {
  try {
    await page.screenshot({ path: path.join(artifacts, '99-failure.png'), fullPage: true });
    fs.writeFileSync(path.join(artifacts, '99-failure.html'), await page.content());
  } catch {
    // The failure itself is what matters.
  }
}
fs.writeFileSync(path.join(artifacts, 'documents.json'), `${JSON.stringify(documents, null, 2)}\n`);
await context.close();
fs.rmSync(profile, { recursive: true, force: true });

if (failed) {
  const last = steps.length === 0 ? 'none' : steps[steps.length - 1].step;
  process.stderr.write(`ui_browser: FAILED after step ${last}, on ${lastUrl}: ${failed instanceof Unexpected ? failed.message : failed.stack}\n`);
  process.stderr.write(`ui_browser: screenshots and pages so far are in ${artifacts}\n`);
  process.exit(1);
}
process.stdout.write(`${JSON.stringify({ ...summary, steps, artifacts }, null, 2)}\n`);
