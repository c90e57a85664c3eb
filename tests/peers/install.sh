#!/usr/bin/env bash
# Installs the real peers the end-to-end tests drive, at the versions pinned
# here: the npm packages of package-lock.json (MCP server-everything, the
# oidc-provider authorization server, playwright-core, which drives the
# browser of the UI test, the official MCP conformance suite that
# conformance.mjs runs, and the MCP TypeScript SDK that our reference
# server conformance_server.mjs is built on) into node_modules/, and
# the Python packages of requirements.txt into .venv/. Idempotent and fast on
# a re-run: each half is skipped while a stamp of its inputs (pins, tool
# versions) matches. Run from anywhere; needs node + npm and python3 >= 3.10.
# The browser itself is Debian's chromium (/usr/bin/chromium), an apt
# package this script does not install: playwright-core downloads no
# browser.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

stamp_of() {
    # The inputs' hash plus the versions of the tools that install them.
    { cat "$@"; printf '\n%s\n' "$STAMP_TOOLS"; } | sha256sum | cut -d' ' -f1
}

# --- npm peers ---------------------------------------------------------------
STAMP_TOOLS="node $(node --version) npm $(npm --version)"
npm_stamp=$(stamp_of package.json package-lock.json)
npm_stamp_file=node_modules/.mcplexer-peers-stamp
# The entry points the tests run: server-everything's CLI, the
# authorization server that oauth_server.mjs builds on, the browser
# driver of ui_browser.mjs, the conformance suite's CLI (run by
# conformance.mjs) and the SDK server of conformance_server.mjs.
entries=(
    node_modules/@modelcontextprotocol/server-everything/dist/index.js
    node_modules/oidc-provider/lib/index.js
    node_modules/playwright-core/index.mjs
    node_modules/@modelcontextprotocol/conformance/dist/index.js
    node_modules/@modelcontextprotocol/sdk/dist/esm/server/index.js
)
all_present() {
    local entry
    for entry in "${entries[@]}"; do [ -f "$entry" ] || return 1; done
}
if all_present && [ "$(cat "$npm_stamp_file" 2>/dev/null)" = "$npm_stamp" ]; then
    echo "peers: node_modules up to date"
else
    echo "peers: npm ci"
    npm ci --no-audit --no-fund
    for entry in "${entries[@]}"; do
        test -f "$entry" || { echo "peers: $entry missing after npm ci" >&2; exit 1; }
    done
    echo "$npm_stamp" >"$npm_stamp_file"
fi

# --- Python peers ------------------------------------------------------------
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "peers: python3 >= 3.10 is needed (mcp 2.x)" >&2; exit 1; }
STAMP_TOOLS="$(python3 --version 2>&1)"
venv_stamp=$(stamp_of requirements.txt)
venv_stamp_file=.venv/.mcplexer-peers-stamp
if [ -x .venv/bin/python ] && [ "$(cat "$venv_stamp_file" 2>/dev/null)" = "$venv_stamp" ]; then
    echo "peers: .venv up to date"
else
    echo "peers: creating .venv"
    # A fresh venv each time the pins change: no stale packages left over.
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --no-input -r requirements.txt
    .venv/bin/python -c 'import mcp; from mcp import Client, StdioServerParameters'
    echo "$venv_stamp" >"$venv_stamp_file"
fi
