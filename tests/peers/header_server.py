#!/usr/bin/env python3
"""A small MCP server over streamable HTTP for the end-to-end tests, on the
official SDK (``mcp`` 2.3.0: ``mcp.server.mcpserver.MCPServer``).

Usage:
    header_server.py [--json-response] [--stateless]

Listens on 127.0.0.1 only, on a port the OS picks, at the SDK's default
endpoint path (``/mcp``). Once it accepts connections it prints exactly one
line on stdout, ``URL=http://127.0.0.1:<port>/mcp``, and flushes; everything
else (logs, access log) goes to stderr. SIGTERM or SIGINT stop it cleanly
(exit status 0).

Tools (plain text results, no structured output):
    show_header  {"name": str}     the value of that HTTP request header of the
                                   POST that carried the call (name matched
                                   case-insensitively), or "<absent>"
    show_headers {}                a JSON object, as text, of every HTTP request
                                   header of that POST: lower-case names,
                                   repeated headers joined with ", "
    echo         {"message": str}  the message

Options:
    --json-response  answer each POST with one application/json body (the
                     SDK's json_response=True) instead of an SSE stream
    --stateless      the SDK's stateless_http=True: no Mcp-Session-Id, a
                     fresh transport per request

The SDK's DNS-rebinding protection stays on (its default for 127.0.0.1):
the Host header must be 127.0.0.1:<port>, localhost:<port> or [::1]:<port>,
and an Origin, if any, a loopback http origin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

HOST = "127.0.0.1"
# The SDK's default endpoint path (MCPServer.streamable_http_app's
# streamable_http_path); passed explicitly so the URL line cannot drift.
MCP_PATH = "/mcp"

log = logging.getLogger("header_server")


def request_headers(ctx: Context) -> dict[str, str]:
    """The HTTP request headers of the POST that carried this call, lower-case
    names, repeated headers joined with ", "."""
    headers = ctx.headers
    if headers is None:
        return {}
    seen: dict[str, list[str]] = {}
    for name, value in headers.items():
        seen.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values) for name, values in seen.items()}


def build_server() -> MCPServer:
    mcp = MCPServer("header-server", version="1.0.0", log_level="INFO")

    @mcp.tool(structured_output=False)
    def show_header(name: str, ctx: Context) -> str:
        """Returns the value of the named HTTP request header, or <absent>."""
        return request_headers(ctx).get(name.lower(), "<absent>")

    @mcp.tool(structured_output=False)
    def show_headers(ctx: Context) -> str:
        """Returns every HTTP request header of this call as a JSON object."""
        return json.dumps(request_headers(ctx), sort_keys=True)

    @mcp.tool(structured_output=False)
    def echo(message: str) -> str:
        """Returns the message."""
        return message

    return mcp


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the URL line once it is serving (after
    the app's lifespan, i.e. the SDK's session manager, has started)."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            log.info("serving MCP at %s", self.url)
            sys.stdout.write(f"URL={self.url}\n")
            sys.stdout.flush()


def exit_cleanly(signum: int, _frame: FrameType | None) -> None:
    # While serving, uvicorn handles SIGTERM/SIGINT itself (graceful
    # shutdown), then restores this handler and raises the signal again:
    # this turns that into a normal exit with status 0.
    log.info("stopping on signal %d", signum)
    raise SystemExit(0)


async def serve(args: argparse.Namespace) -> None:
    app = build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=args.json_response,
        stateless_http=args.stateless,
        host=HOST,  # keeps the SDK's loopback Host/Origin checks
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # --port N re-binds the port of a server that was stopped (a test that
    # restarts the server under a client): allow it while old connections
    # linger in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's default sends the access log to stdout
        log_level="info",
        lifespan="on",
        # A safety net: open SSE streams end on shutdown anyway (measured).
        timeout_graceful_shutdown=5,
    )
    server = AnnouncingServer(config, f"http://{HOST}:{port}{MCP_PATH}")
    log.info(
        "json_response=%s stateless=%s port=%d", args.json_response, args.stateless, port
    )
    await server.serve(sockets=[sock])


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="header_server.py",
        description="MCP streamable-HTTP server whose tools show the HTTP request headers.",
    )
    parser.add_argument(
        "--json-response",
        action="store_true",
        help="answer POSTs with application/json instead of an SSE stream",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="the port to listen on (default: one the OS picks)",
    )
    parser.add_argument(
        "--stateless",
        action="store_true",
        help="stateless HTTP: no sessions, a fresh transport per request",
    )
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, exit_cleanly)
    signal.signal(signal.SIGINT, exit_cleanly)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
