#!/usr/bin/env python3
"""A scripted MCP stdio client for the end-to-end tests, on the official SDK.

Usage:
    mcp_client.py --cwd DIR [--env K=V ...] [--mode MODE] -- COMMAND [ARGS...]
    mcp_client.py --url URL [--mode MODE]      (a streamable-HTTP server)
    either form also takes [--root URI ...]

Starts COMMAND as an MCP server over stdio with the official Python SDK
(``mcp`` 2.3.0: ``mcp.Client`` over ``mcp.StdioServerParameters``), in DIR and
with exactly the environment given by ``--env`` (nothing inherited: pass an
absolute COMMAND, or a PATH), runs the steps of the JSON script read from
stdin in one session, and prints one JSON object on stdout.

Script: a JSON list of steps, each one of
    {"op": "list_tools"}
    {"op": "call", "name": "TOOL", "arguments": {...}}
    {"op": "ping"}
    {"op": "exec", "argv": [PROGRAM, ARGS...], "stdin": "text"}
        runs a program to completion between two steps of the same session
        (e.g. mcplexerctl secret set), with this process's environment as it
        was at start

Output: {"protocol_version": "...", "results": [...]}, one result per step:
    list_tools -> {"tools": [name, ...]}           (every page)
    call       -> {"is_error": bool, "text": [text contents...],
                   "structured": structuredContent or null}
    ping       -> {"ok": true}
    exec       -> {"exit": int, "stdout": str, "stderr": str}
    any step that got a JSON-RPC error -> {"error": {"code": int, "message": str, "data": any}}
    any step the SDK itself refused (e.g. a result that breaks the tool's
    output schema) -> {"client_error": "Type: message"}

--mode is the SDK's connect mode: "auto" (default: probe ``server/discover``,
fall back to ``initialize``), "legacy" (``initialize`` only) or a modern
protocol version such as "2026-07-28" (adopted without a probe). The SDK's
response cache is off, so every step reaches the server.

Exit status: 0 when the session ran (even if steps got errors); 1, with a
message on stderr, when the server could not be started or initialised, or
the whole session outlasted MCP_CLIENT_TIMEOUT seconds (default 60); 2 on a
usage or script error. The server's stderr passes through to this stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.client import stdio as sdk_stdio
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError


def usage_error(message: str) -> None:
    print(f"mcp_client.py: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mcp_client.py",
        description="Run a JSON script of MCP steps (stdin) against a stdio server.",
    )
    parser.add_argument("--cwd", help="working directory of the server")
    parser.add_argument("--url", help="the endpoint of a streamable-HTTP server, instead of a command")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable of the server (repeatable); nothing else is passed",
    )
    parser.add_argument("--mode", default="auto", help='SDK connect mode: auto, legacy or a version')
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="URI",
        help="a root the client declares (repeatable, in order); with none the client "
        "does not declare the roots capability",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args()
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command and not args.url:
        usage_error("missing -- COMMAND [ARGS...] (or --url URL)")
    if args.command and not args.cwd:
        usage_error("--cwd is required with a command")
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            usage_error(f"--env wants K=V, got {item!r}")
        env[key] = value
    args.env = env
    return args


def parse_script(text: str) -> list[dict[str, Any]]:
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as e:
        usage_error(f"the script on stdin is not JSON: {e}")
    if not isinstance(steps, list):
        usage_error("the script must be a JSON list of steps")
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            usage_error(f"step {i} is not an object")
        op = step.get("op")
        if op == "call":
            if not isinstance(step.get("name"), str):
                usage_error(f"step {i}: call needs a string name")
            if not isinstance(step.get("arguments", {}), dict):
                usage_error(f"step {i}: arguments must be an object")
        elif op == "exec":
            argv = step.get("argv")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                usage_error(f"step {i}: exec needs argv, a non-empty list of strings")
        elif op not in ("list_tools", "ping"):
            usage_error(f"step {i}: unknown op {op!r}")
    return steps


def isolate_environment() -> None:
    """Makes the SDK pass the server exactly the env we give it.

    ``stdio_client`` spawns the server with ``get_default_environment() |
    params.env``, where the default copies HOME, LOGNAME, PATH, SHELL, TERM and
    USER from this process's environment. Dropping those names from our own
    environment (which nothing here needs any more) leaves that default empty.
    """
    for key in sdk_stdio.DEFAULT_INHERITED_ENV_VARS:
        os.environ.pop(key, None)
    leaked = sdk_stdio.get_default_environment()
    if leaked:
        print(f"mcp_client.py: the SDK would still inherit {sorted(leaked)}", file=sys.stderr)
        sys.exit(1)


# The environment this process started with, for `exec` steps (the SDK's
# isolation removes variables from os.environ).
ORIGINAL_ENV = dict(os.environ)


async def run_step(client: Client, step: dict[str, Any]) -> dict[str, Any]:
    op = step["op"]
    if op == "exec":
        done = await anyio.run_process(
            step["argv"],
            input=step.get("stdin", "").encode(),
            check=False,
            env=ORIGINAL_ENV,
        )
        return {
            "exit": done.returncode,
            "stdout": done.stdout.decode(errors="replace"),
            "stderr": done.stderr.decode(errors="replace"),
        }
    try:
        if op == "list_tools":
            names: list[str] = []
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                names.extend(tool.name for tool in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    return {"tools": names}
        if op == "call":
            result = await client.call_tool(step["name"], step.get("arguments", {}))
            return {
                "is_error": bool(result.is_error),
                "text": [c.text for c in result.content if getattr(c, "type", None) == "text"],
                "structured": result.structured_content,
            }
        # ping: ClientSession.send_ping (Client.send_ping is marked deprecated
        # because ping is gone from the 2026-07-28 protocol).
        await client.session.send_ping()
        return {"ok": True}
    except MCPError as e:
        return {"error": {"code": e.code, "message": e.message, "data": e.data}}
    except Exception as e:  # noqa: BLE001 - reported as the step's result
        return {"client_error": f"{type(e).__name__}: {e}"}


def roots_callback(uris: list[str]) -> Any:
    """The SDK's roots/list handler answering ``uris`` in order, or None (no
    roots capability declared) when there are none."""
    if not uris:
        return None
    roots = types.ListRootsResult(roots=[types.Root(uri=uri) for uri in uris])

    async def list_roots(_context: Any) -> types.ListRootsResult:
        return roots

    return list_roots


def describe(exc: BaseException) -> str:
    """One line per leaf exception (task groups wrap them in groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def main_async(args: argparse.Namespace, steps: list[dict[str, Any]], timeout: float) -> int:
    params: StdioServerParameters | str
    if args.url:
        params = args.url
    else:
        params = StdioServerParameters(
            command=args.command[0], args=args.command[1:], env=args.env, cwd=args.cwd
        )
    phase = "start"
    out: dict[str, Any] = {"protocol_version": None, "results": []}
    try:
        with anyio.fail_after(timeout):
            async with Client(
                params, mode=args.mode, cache=None, list_roots_callback=roots_callback(args.root)
            ) as client:
                phase = "session"
                out["protocol_version"] = client.protocol_version
                for step in steps:
                    out["results"].append(await run_step(client, step))
                phase = "shutdown"
    except TimeoutError:
        print(
            f"mcp_client.py: session timed out after {timeout:g}s during {phase}; "
            f"results so far: {json.dumps(out)}",
            file=sys.stderr,
        )
        return 1
    except BaseException as e:  # noqa: BLE001 - any failure to start ends the run
        if isinstance(e, KeyboardInterrupt):
            raise
        if phase == "shutdown":
            # Every step ran; a noisy teardown does not void the results.
            print(f"mcp_client.py: error while closing: {describe(e)}", file=sys.stderr)
        else:
            what = "could not start or initialise the server" if phase == "start" else "session failed"
            print(f"mcp_client.py: {what}: {describe(e)}", file=sys.stderr)
            if os.environ.get("MCP_CLIENT_DEBUG"):
                traceback.print_exception(e, file=sys.stderr)
            return 1
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def main() -> int:
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    args = parse_args()
    steps = parse_script(sys.stdin.read())
    try:
        timeout = float(os.environ.get("MCP_CLIENT_TIMEOUT", "60"))
    except ValueError:
        usage_error("MCP_CLIENT_TIMEOUT must be a number of seconds")
    if not (timeout > 0 and math.isfinite(timeout)):
        usage_error("MCP_CLIENT_TIMEOUT must be positive")
    if args.cwd is not None and not os.path.isdir(args.cwd):
        print(f"mcp_client.py: --cwd {args.cwd!r} is not a directory", file=sys.stderr)
        return 1
    isolate_environment()
    return anyio.run(main_async, args, steps, timeout)


if __name__ == "__main__":
    sys.exit(main())
