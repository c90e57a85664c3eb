#!/usr/bin/env python3
"""An MCP stdio server that speaks only the stateless 2026-07-28 protocol,
for the end-to-end tests: what a server written for the new revision
alone looks like to the proxy.

Usage:
    stateless_server.py

Reads one JSON-RPC message per line on stdin and answers on stdout; logs
nothing. Every request must carry the 2026-07-28 envelope in its
``params._meta`` (``io.modelcontextprotocol/protocolVersion`` = 2026-07-28
and ``io.modelcontextprotocol/clientCapabilities``); anything else,
``initialize`` included, is answered -32022 (unsupported protocol version)
with ``data.supported = ["2026-07-28"]``, as the revision asks of a server
that does not serve the session protocol.

Methods: ``server/discover``; ``tools/list`` (one tool); ``tools/call`` of
``whoami``, whose text result is a JSON object:
    token     the value of the environment variable STATELESS_TOKEN
    version   the protocolVersion of the request's envelope
    client    the name in its clientInfo
    meta      the sorted keys of the request's _meta
Every result carries ``resultType: "complete"`` (and the cache fields where
the revision requires them). Other methods: -32601.
"""

from __future__ import annotations

import json
import os
import sys

VERSION = "2026-07-28"
META = "io.modelcontextprotocol/"
TOOL = {
    "name": "whoami",
    "description": "What this server was given: its token and the request's envelope.",
    "inputSchema": {"type": "object", "properties": {}},
}


def error(code: int, message: str, data: object = None) -> dict:
    err: dict = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"error": err}


def handle(method: str, params: dict) -> dict:
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    requested = meta.get(META + "protocolVersion")
    if requested != VERSION or not isinstance(meta.get(META + "clientCapabilities"), dict):
        return error(
            -32022,
            "this server speaks only the stateless protocol",
            {"supported": [VERSION], "requested": requested or method},
        )
    cache = {"ttlMs": 0, "cacheScope": "private"}
    if method == "server/discover":
        return {"result": {
            "supportedVersions": [VERSION],
            "capabilities": {"tools": {}},
            "instructions": "Call whoami to see what this server was given.",
            "resultType": "complete",
            **cache,
        }}
    if method == "tools/list":
        return {"result": {"tools": [TOOL], "resultType": "complete", **cache}}
    if method == "tools/call":
        if params.get("name") != "whoami":
            return error(-32602, f"Unknown tool: {params.get('name')}")
        client = meta.get(META + "clientInfo") or {}
        report = {
            "token": os.environ.get("STATELESS_TOKEN", "<absent>"),
            "version": requested,
            "client": client.get("name"),
            "meta": sorted(meta),
        }
        return {"result": {
            "content": [{"type": "text", "text": json.dumps(report)}],
            "resultType": "complete",
        }}
    return error(-32601, f"Method not found: {method}")


def main() -> None:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(message, dict) or "id" not in message or "method" not in message:
            continue  # notifications and responses need no answer
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        answer = {"jsonrpc": "2.0", "id": message["id"], **handle(message["method"], params)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
