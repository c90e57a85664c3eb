// Module-resolution hooks that let the MCP conformance suite's CLI
// (@modelcontextprotocol/conformance, a single bundled file,
// dist/index.js) load on Node 20.
//
// Why: the bundle does `import { globSync, ... } from "fs"` at its top.
// fs.globSync exists from Node 22 on; on Node 20 an ES module that names
// a missing export fails to link, so the whole CLI dies before it parses
// its arguments, although only its `tier-check` subcommand ever calls
// globSync (to collect checks.json files). The package exports no API (its
// bundle ends in `export {}`), so there is no runner to import instead of
// the CLI.
//
// How: conformance.mjs registers this file with module.register() (the
// supported loader-hook API since Node 20.6) only when fs.globSync is
// missing, and then imports the unchanged CLI. The resolve hook below
// sends the bundle's `fs` import, and only that one, to a small module
// that re-exports all of node:fs plus a globSync that throws if anything
// does call it. No file of the package is edited, and nothing changes
// for any other module (the SDK, our server, ...). On Node 22+ this file
// is never registered.

import { fileURLToPath } from 'node:url';
import path from 'node:path';

// The stand-in for `fs`, served by load() below under its own URL.
const SHIM_URL = 'mcplexer-node20-shim:fs';
const SHIM_SOURCE = `
import fs from 'node:fs';
export * from 'node:fs';
export default fs;
export function globSync() {
  throw new Error('fs.globSync needs Node >= 22: the conformance suite\\'s tier-check command is not available on this Node');
}
`;

// The directory of the conformance package: only imports made by its
// files are redirected.
const PACKAGE_SEGMENT = `${path.sep}node_modules${path.sep}@modelcontextprotocol${path.sep}conformance${path.sep}`;

function fromConformancePackage(parentURL) {
  if (!parentURL || !parentURL.startsWith('file:')) return false;
  return fileURLToPath(parentURL).includes(PACKAGE_SEGMENT);
}

export async function resolve(specifier, context, nextResolve) {
  if ((specifier === 'fs' || specifier === 'node:fs') && fromConformancePackage(context.parentURL)) {
    return { url: SHIM_URL, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (url === SHIM_URL) {
    return { format: 'module', source: SHIM_SOURCE, shortCircuit: true };
  }
  return nextLoad(url, context);
}
