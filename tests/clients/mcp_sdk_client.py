"""An MCP client built on the official MCP Python SDK (`pip install mcp`, 2.x), driven by
tests/integration/clients.rs against `citus-mcp serve --http`.

    python3 mcp_sdk_client.py URL MODE TOOLS_DIR TOOL_FILE

URL is the server's, or `stdio:BINARY` to start citus-mcp over stdio (with `--tools-dirs
TOOLS_DIR`, the rest of its settings from the environment). MODE is the SDK's `mode`:
`legacy` (initialize handshake, a 2025 session) or `2026-07-28` (no handshake, no session).
The client lists the tools, calls `ping`, idles past the server's read timeout and calls
`list_nodes`, and `rows_schema` when the server lists it (a tool whose `output_schema` the
SDK checks its structured content against), then,
when TOOLS_DIR is not `-`, copies TOOL_FILE (a tool named as its file) into TOOLS_DIR, waits
for `notifications/tools/list_changed` (the GET stream of a legacy session, or
`subscriptions/listen` on 2026-07-28), lists again and calls the new tool. It prints one JSON
object with what it saw on stdout; the Rust test judges it. Any failure is an exception
and a non-zero exit.
"""

import asyncio
import json
import os
import pathlib
import sys

import mcp
import mcp_types as types
from mcp.client.stdio import StdioServerParameters

WAIT_SECONDS = 20
# Between two calls the client idles longer than the read timeout the test gives the server
# (2 s): the server closes the kept-alive connection under it, and the SDK must connect again
# on its own. The GET and listen streams are answers, which the server never cuts.
IDLE_SECONDS = 3


def structured(result):
    """The structured content of a tool result, which must not be an error."""
    if result.is_error:
        raise RuntimeError(f"tool call failed: {result.content}")
    return result.structured_content


async def main(url, mode, tools_dir, tool_file):
    changed = asyncio.Event()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    report = {"sdk": mcp.__name__, "mode": mode}
    server = url
    if url.startswith("stdio:"):
        server = StdioServerParameters(
            command=url.removeprefix("stdio:"),
            args=["--tools-dirs", tools_dir],
            env=dict(os.environ),
        )
    async with mcp.Client(server, mode=mode, message_handler=on_message) as client:
        report["protocol"] = client.protocol_version
        report["server"] = client.server_info.name if client.server_info else None
        tools = await client.list_tools()
        report["tools"] = sorted(t.name for t in tools.tools)
        report["ping"] = structured(await client.call_tool("ping", {"message": "from the python sdk"}))
        await asyncio.sleep(IDLE_SECONDS)
        nodes = structured(await client.call_tool("list_nodes", {}))
        report["nodes"] = len(nodes["nodes"])
        if "rows_schema" in report["tools"]:
            result = await client.call_tool("rows_schema", {"n": 5000})
            rows = structured(result)
            report["rows_schema"] = {
                "rows": len(rows["rows"]),
                "first": rows["rows"][0],
                "truncated": rows["truncated"],
                "how_to_get_more": rows.get("how_to_get_more"),
                "text": result.content[0].text.splitlines()[0],
            }
        if tools_dir != "-":
            source = pathlib.Path(tool_file)
            target = pathlib.Path(tools_dir) / source.name
            if mode == "legacy":
                # The session's GET stream carries the notification to message_handler.
                target.write_text(source.read_text())
                await asyncio.wait_for(changed.wait(), WAIT_SECONDS)
            else:
                async with client.listen(tools_list_changed=True) as sub:
                    target.write_text(source.read_text())

                    async def first_event():
                        async for event in sub:
                            return type(event).__name__
                        return None

                    report["event"] = await asyncio.wait_for(first_event(), WAIT_SECONDS)
            report["list_changed"] = True
            tools = await client.list_tools()
            report["tools_after"] = sorted(t.name for t in tools.tools)
            report["added"] = structured(await client.call_tool(source.stem, {}))
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
