#!/usr/bin/env python3
"""A small MCP server over stdio for the end-to-end tests of restart
policies, on the official SDK (``mcp`` 2.3.0: ``mcp.server.mcpserver``).

Environment:
    START_LOG      if set, a file to which one line ("<pid>") is appended
                   each time the server starts, before anything else
    EXIT_ON_START  if set to an integer, exit with that status right after
                   logging the start, without serving (a server that cannot
                   start)

Tools (plain text results):
    pid  {}              this process's pid
    exit {"code": int}   exits the process at once with that status, without
                         answering the call
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer


def main() -> None:
    log = os.environ.get("START_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    exit_on_start = os.environ.get("EXIT_ON_START")
    if exit_on_start is not None:
        sys.exit(int(exit_on_start))

    server = MCPServer("exit-server")

    @server.tool()
    def pid() -> str:
        """This process's pid."""
        return str(os.getpid())

    @server.tool()
    def exit(code: int) -> str:
        """Exits at once with the given status, without answering."""
        sys.stdout.flush()
        os._exit(code)

    server.run("stdio")


if __name__ == "__main__":
    main()
