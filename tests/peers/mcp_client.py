#!/usr/bin/env python3
"""A scripted MCP stdio client for the end-to-end tests, on the official SDK.

Usage:
    mcp_client.py --cwd DIR [--env K=V ...] [--mode MODE] -- COMMAND [ARGS...]
    mcp_client.py --url URL [--mode MODE]      (a streamable-HTTP server)
    either form also takes [--root URI ...] [--sampling-reply TEXT]
    [--elicit-reply JSON]

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
    {"op": "list_prompts"}
    {"op": "get_prompt", "name": "PROMPT", "arguments": {"ARG": "string", ...}}
    {"op": "list_resources"}
    {"op": "list_templates"}
    {"op": "read_resource", "uri": "URI"}
    {"op": "subscribe", "uri": "URI"}
    {"op": "unsubscribe", "uri": "URI"}
    {"op": "complete", "ref": {"type": "ref/prompt", "name": "PROMPT"}
                           or {"type": "ref/resource", "uri": "URI TEMPLATE"},
     "argument": {"name": "ARG", "value": "partial"},
     "context": {"ARG": "string", ...}}      (context: optional, the
        already-chosen arguments, sent as context.arguments)
    {"op": "set_level", "level": "LEVEL"}   (logging/setLevel: debug, info, ...)
    {"op": "wait", "seconds": S}
        sleeps S seconds inside the session (notifications keep arriving)
    {"op": "wait_for", "kind": KIND, "timeout": S}
        waits until at least one notification of KIND has been received since
        the session began (at once if one already has), for at most S
        seconds; KIND is one of log (notifications/message),
        resource_updated, tools_changed, prompts_changed, resources_changed

Output: {"protocol_version": "...", "results": [...], "log_messages": [...],
"sampling_requests": [...], "elicitation_requests": [...], "notifications": [...]},
one result per step:
    list_tools     -> {"tools": [name, ...]}           (every page)
    call           -> {"is_error": bool, "text": [text contents...],
                       "structured": structuredContent or null}
    ping           -> {"ok": true}
    exec           -> {"exit": int, "stdout": str, "stderr": str}
    list_prompts   -> {"prompts": [name, ...]}         (every page)
    get_prompt     -> {"messages": [{"role": str, "text": str or null}, ...],
                       "description": str or null}     (text: null unless
                       the message's content is text)
    list_resources -> {"resources": [uri, ...]}        (every page)
    list_templates -> {"templates": [uriTemplate, ...]} (every page)
    read_resource  -> {"contents": [{"uri": str, "text": str or null,
                       "blob": bool}, ...]}            (a blob has text null)
    subscribe, unsubscribe, set_level, wait -> {"ok": true}
    complete       -> {"values": [str, ...]}
    wait_for       -> {"ok": true} once one has arrived, {"ok": false} at timeout
    any step that got a JSON-RPC error -> {"error": {"code": int, "message": str, "data": any}}
    any step the SDK itself refused (e.g. a result that breaks the tool's
    output schema) -> {"client_error": "Type: message"}

The other keys record what the server sent during the session (until it
closed), in the order received:
    log_messages         [{"level": str, "logger": str or null, "data": any}, ...]
                         (notifications/message, through the SDK's
                         logging_callback)
    sampling_requests    [params of each sampling/createMessage, as JSON]
    elicitation_requests [params of each elicitation/create, as JSON:
                         mode, message, requestedSchema, ...]
    notifications        [method of each notification, e.g.
                         "notifications/tools/list_changed"; a resources/updated
                         one as "notifications/resources/updated uri=URI"]
                         (every notification the SDK surfaces to its
                         message_handler: not notifications/cancelled)

Client capabilities: --root URI (repeatable) declares roots and answers
roots/list with them, in order. --sampling-reply TEXT declares sampling and
answers every sampling/createMessage with an assistant text message TEXT
(model "mcp-client-test", stopReason "endTurn"). --elicit-reply JSON (an
object) declares elicitation and answers every form-mode elicitation/create
with {"action": "accept", "content": JSON} (the SDK declares both the form
and the url modes; a url-mode request is answered {"action": "decline"}).
Without these options the capability is not declared and the SDK answers
such requests with an error.

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
    parser.add_argument(
        "--sampling-reply",
        metavar="TEXT",
        help="declare sampling; answer every sampling/createMessage with this assistant text",
    )
    parser.add_argument(
        "--elicit-reply",
        metavar="JSON",
        help="declare elicitation; accept every (form) elicitation/create with this JSON object",
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
    if args.elicit_reply is not None:
        try:
            content = json.loads(args.elicit_reply)
        except json.JSONDecodeError as e:
            usage_error(f"--elicit-reply is not JSON: {e}")
        if not isinstance(content, dict):
            usage_error("--elicit-reply must be a JSON object")
        try:
            types.ElicitResult(action="accept", content=content)
        except ValueError as e:
            usage_error(f"--elicit-reply is not valid elicitation content: {e}")
        args.elicit_reply = content
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
        elif op == "get_prompt":
            if not isinstance(step.get("name"), str):
                usage_error(f"step {i}: get_prompt needs a string name")
            if not is_string_map(step.get("arguments", {})):
                usage_error(f"step {i}: get_prompt arguments must be an object of strings")
        elif op in ("read_resource", "subscribe", "unsubscribe"):
            if not isinstance(step.get("uri"), str):
                usage_error(f"step {i}: {op} needs a string uri")
        elif op == "complete":
            ref = step.get("ref")
            if not (
                isinstance(ref, dict)
                and (
                    (ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str))
                    or (ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str))
                )
            ):
                usage_error(
                    f'step {i}: complete needs a ref {{"type": "ref/prompt", "name": ...}} '
                    f'or {{"type": "ref/resource", "uri": ...}}'
                )
            argument = step.get("argument")
            if not (is_string_map(argument) and set(argument) == {"name", "value"}):
                usage_error(f'step {i}: complete needs an argument {{"name": str, "value": str}}')
            if not is_string_map(step.get("context", {})):
                usage_error(f"step {i}: complete context must be an object of strings")
        elif op == "set_level":
            if not isinstance(step.get("level"), str):
                usage_error(f"step {i}: set_level needs a string level")
        elif op == "wait":
            if not is_duration(step.get("seconds")):
                usage_error(f"step {i}: wait needs seconds, a finite number >= 0")
        elif op == "wait_for":
            if step.get("kind") not in WAIT_KINDS:
                usage_error(f"step {i}: wait_for kind must be one of {', '.join(WAIT_KINDS)}")
            if not is_duration(step.get("timeout")):
                usage_error(f"step {i}: wait_for needs timeout, a finite number >= 0")
        elif op not in ("list_tools", "ping", "list_prompts", "list_resources", "list_templates"):
            usage_error(f"step {i}: unknown op {op!r}")
    return steps


def is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def is_duration(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


# wait_for kinds -> the notification method each one waits for.
WAIT_KINDS: dict[str, str] = {
    "log": "notifications/message",
    "resource_updated": "notifications/resources/updated",
    "tools_changed": "notifications/tools/list_changed",
    "prompts_changed": "notifications/prompts/list_changed",
    "resources_changed": "notifications/resources/list_changed",
}


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


async def every_page(fetch: Any, items: Any) -> list[Any]:
    """Everything a paginated list request returns, page after page:
    ``fetch(cursor=...)`` gets a page, ``items(page)`` its entries."""
    found: list[Any] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor=cursor)
        found.extend(items(page))
        cursor = page.next_cursor
        if cursor is None:
            return found


def content_text(content: Any) -> str | None:
    return content.text if getattr(content, "type", None) == "text" else None


async def run_step(client: Client, recorder: Recorder, step: dict[str, Any]) -> dict[str, Any]:
    op = step["op"]
    if op == "wait":
        await anyio.sleep(step["seconds"])
        return {"ok": True}
    if op == "wait_for":
        return {"ok": await recorder.wait_for(step["kind"], step["timeout"])}
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
            return {"tools": await every_page(client.list_tools, lambda p: (t.name for t in p.tools))}
        if op == "list_prompts":
            return {
                "prompts": await every_page(client.list_prompts, lambda p: (x.name for x in p.prompts))
            }
        if op == "get_prompt":
            prompt = await client.get_prompt(step["name"], step.get("arguments", {}))
            return {
                "messages": [
                    {"role": m.role, "text": content_text(m.content)} for m in prompt.messages
                ],
                "description": prompt.description,
            }
        if op == "list_resources":
            return {
                "resources": await every_page(
                    client.list_resources, lambda p: (r.uri for r in p.resources)
                )
            }
        if op == "list_templates":
            return {
                "templates": await every_page(
                    client.list_resource_templates,
                    lambda p: (t.uri_template for t in p.resource_templates),
                )
            }
        if op == "read_resource":
            read = await client.read_resource(step["uri"])
            return {
                "contents": [
                    {
                        "uri": c.uri,
                        "text": getattr(c, "text", None),
                        "blob": isinstance(c, types.BlobResourceContents),
                    }
                    for c in read.contents
                ]
            }
        if op == "subscribe":
            await client.subscribe_resource(step["uri"])
            return {"ok": True}
        if op == "unsubscribe":
            await client.unsubscribe_resource(step["uri"])
            return {"ok": True}
        if op == "complete":
            ref = step["ref"]
            reference: types.PromptReference | types.ResourceTemplateReference = (
                types.PromptReference(type="ref/prompt", name=ref["name"])
                if ref["type"] == "ref/prompt"
                else types.ResourceTemplateReference(type="ref/resource", uri=ref["uri"])
            )
            completed = await client.complete(
                reference, step["argument"], context_arguments=step.get("context")
            )
            return {"values": completed.completion.values}
        if op == "set_level":
            await client.set_logging_level(step["level"])
            return {"ok": True}
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


class Recorder:
    """What the server sends during the session, through the SDK's hooks:
    ``logging_callback`` (log messages), ``message_handler`` (every surfaced
    notification), ``sampling_callback`` and ``elicitation_callback``."""

    def __init__(self, sampling_reply: str | None, elicit_reply: dict[str, Any] | None) -> None:
        self.log_messages: list[dict[str, Any]] = []
        self.sampling_requests: list[dict[str, Any]] = []
        self.elicitation_requests: list[dict[str, Any]] = []
        self.notifications: list[str] = []
        self.sampling_reply = sampling_reply
        self.elicit_reply = elicit_reply
        # Created inside the event loop; set once and never cleared.
        self.seen: dict[str, anyio.Event] = {method: anyio.Event() for method in WAIT_KINDS.values()}

    async def wait_for(self, kind: str, timeout: float) -> bool:
        seen = self.seen[WAIT_KINDS[kind]]
        with anyio.move_on_after(timeout):
            await seen.wait()
        return seen.is_set()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.log_messages.append({"level": params.level, "logger": params.logger, "data": params.data})

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            print(f"mcp_client.py: transport error: {describe(message)}", file=sys.stderr)
            return
        method = message.method
        entry = method
        if isinstance(message, types.ResourceUpdatedNotification):
            entry = f"{method} uri={message.params.uri}"
        self.notifications.append(entry)
        if method in self.seen:
            self.seen[method].set()

    async def on_sampling(self, _context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling_requests.append(dump(params))
        assert self.sampling_reply is not None
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=self.sampling_reply),
            model="mcp-client-test",
            stop_reason="endTurn",
        )

    async def on_elicitation(self, _context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation_requests.append(dump(params))
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content=self.elicit_reply)

    def client_hooks(self) -> dict[str, Any]:
        """Client keyword arguments; a capability is declared only with its reply."""
        return {
            "logging_callback": self.on_log,
            "message_handler": self.on_message,
            "sampling_callback": self.on_sampling if self.sampling_reply is not None else None,
            "elicitation_callback": self.on_elicitation if self.elicit_reply is not None else None,
        }


def dump(params: Any) -> dict[str, Any]:
    """Request params as the JSON the server sent (wire names)."""
    return params.model_dump(by_alias=True, mode="json", exclude_none=True)


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
    recorder = Recorder(args.sampling_reply, args.elicit_reply)
    out: dict[str, Any] = {
        "protocol_version": None,
        "results": [],
        "log_messages": recorder.log_messages,
        "sampling_requests": recorder.sampling_requests,
        "elicitation_requests": recorder.elicitation_requests,
        "notifications": recorder.notifications,
    }
    try:
        with anyio.fail_after(timeout):
            async with Client(
                params,
                mode=args.mode,
                cache=None,
                list_roots_callback=roots_callback(args.root),
                **recorder.client_hooks(),
            ) as client:
                phase = "session"
                out["protocol_version"] = client.protocol_version
                for step in steps:
                    out["results"].append(await run_step(client, recorder, step))
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
