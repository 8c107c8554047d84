"""Drives `agentkernel mcp` over stdio with the MCP client library (`pip install mcp`):
initialize, tools/list, and each tool, including refusals of bad input.

Run by mcp.rs with AK_BIN (the agentkernel binary) and AK_ENV_* (its environment) set;
any failed check raises, which fails the Rust test with this script's output.
"""

import json
import os
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

TOOLS = {
    "sandbox_run",
    "sandbox_create",
    "sandbox_start",
    "sandbox_stop",
    "sandbox_exec",
    "sandbox_list",
    "sandbox_remove",
    "sandbox_file_read",
    "sandbox_file_write",
}


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


async def call(session, tool, arguments=None):
    result = await session.call_tool(tool, arguments or {})
    text = result.content[0].text if result.content else ""
    return result.is_error, text


async def ok(session, tool, arguments=None):
    result = await session.call_tool(tool, arguments or {})
    text = result.content[0].text if result.content else ""
    check(not result.is_error, f"{tool} succeeds: {text[:300]}")
    # Every tool answers with structured content (its output schema's object), and the
    # same JSON once as text for clients that read only text.
    check(result.structured_content is not None, f"{tool} has structured content")
    check(json.loads(text) == result.structured_content, f"{tool}'s text is its structured content")
    return result.structured_content


async def refused(session, tool, arguments, needle):
    is_error, text = await call(session, tool, arguments)
    check(is_error and needle in text, f"{tool} refuses {arguments}: {text[:200]}")


async def main():
    env = {k[len("AK_ENV_"):]: v for k, v in os.environ.items() if k.startswith("AK_ENV_")}
    params = StdioServerParameters(command=os.environ["AK_BIN"], args=["mcp"], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            check(init.server_info.name == "agentkernel", f"initialize: {init.server_info}")
            tools = await session.list_tools()
            names = {tool.name for tool in tools.tools}
            check(names == TOOLS, f"tools/list: {sorted(names)}")
            run_tool = [t for t in tools.tools if t.name == "sandbox_run"][0]
            props = set(run_tool.input_schema["properties"])
            check(
                {"command", "image", "profile", "network", "workdir", "env", "timeout_ms"} <= props,
                f"sandbox_run's schema: {sorted(props)}",
            )
            for tool in tools.tools:
                check(tool.output_schema is not None and tool.output_schema.get("type") == "object",
                      f"{tool.name} has an output schema")
                check(bool(tool.title) and tool.annotations is not None, f"{tool.name} has a title and annotations")
            by_name = {tool.name: tool for tool in tools.tools}
            check(by_name["sandbox_list"].annotations.read_only_hint is True, "sandbox_list is read-only")
            check(by_name["sandbox_remove"].annotations.destructive_hint is True, "sandbox_remove is destructive")
            check("output" in by_name["sandbox_run"].output_schema["properties"], "sandbox_run's output schema")

            # sandbox_run honours every field.
            out = await ok(session, "sandbox_run", {
                "command": ["sh", "-c", "echo $GREETING; pwd; ls /sys/class/net; exit 3"],
                "image": "host",
                "profile": "restrictive",
                "network": False,
                "cwd": "/tmp",
                "env": ["GREETING=hello mcp"],
                "timeout_ms": 20000,
            })
            check(out["exit_code"] == 3, f"run exit code: {out}")
            check(out["output"] == "hello mcp\n/tmp\nlo\n", f"run env, cwd, no network: {out}")
            begun = time.monotonic()
            out = await ok(session, "sandbox_run", {"command": ["sleep", "30"], "timeout_ms": 500})
            check(out["timed_out"] and out["exit_code"] == 124, f"run timeout: {out}")
            check(time.monotonic() - begun < 10, "the timeout cut the command short")
            await refused(session, "sandbox_run", {"command": ["true"], "image": "--privileged"}, "invalid image")
            await refused(session, "sandbox_run", {"command": ["true"], "profile": "yolo"}, "unknown profile")
            await refused(session, "sandbox_run", {"command": ["true"], "cwd": "../etc"}, "invalid path")
            await refused(session, "sandbox_run", {"command": ["true"], "env": ["NOEQUALS"]}, "invalid environment")
            await refused(session, "sandbox_run", {"command": []}, "no command")

            # The lifecycle of a named sandbox.
            await refused(session, "sandbox_create", {"name": "../x"}, "invalid sandbox name")
            created = await ok(session, "sandbox_create", {"name": "mcp-box", "profile": "restrictive", "memory": "256M"})
            check(created["status"] == "stopped", f"created stopped: {created}")
            await refused(session, "sandbox_create", {"name": "mcp-box"}, "already exists")
            await refused(session, "sandbox_exec", {"name": "mcp-box", "command": ["true"]}, "start it first")
            started = await ok(session, "sandbox_start", {"name": "mcp-box"})
            check(started["status"] == "running", f"started: {started}")
            out = await ok(session, "sandbox_exec", {
                "name": "mcp-box", "command": ["sh", "-c", "echo $A; pwd"],
                "env": ["A=b"], "cwd": "/tmp", "timeout_ms": 10000,
            })
            check(out["output"] == "b\n/tmp\n" and out["exit_code"] == 0, f"exec: {out}")
            # The HTTP API's name for it, and binary output returned faithfully.
            out = await ok(session, "sandbox_exec", {
                "name": "mcp-box", "command": ["printf", "\\377\\376"], "workdir": "/tmp",
            })
            check(out["encoding"] == "base64" and out["output"] == "//4=", f"binary exec output: {out}")
            await ok(session, "sandbox_file_write", {"name": "mcp-box", "path": "notes/n.txt", "content": "written by mcp"})
            read = await ok(session, "sandbox_file_read", {"name": "mcp-box", "path": "/workspace/notes/n.txt"})
            check(read == {"content": "written by mcp", "encoding": "utf8", "size": 14}, f"file read: {read}")
            await refused(session, "sandbox_file_read", {"name": "mcp-box", "path": "../../etc/passwd"}, "invalid path")
            await refused(session, "sandbox_file_write", {"name": "mcp-box", "path": "x", "content": "x", "encoding": "rot13"}, "encoding")
            listed = await ok(session, "sandbox_list")
            check([s["name"] for s in listed["sandboxes"]] == ["mcp-box"], f"list: {listed}")
            stopped = await ok(session, "sandbox_stop", {"name": "mcp-box"})
            check(stopped["status"] == "stopped", f"stopped: {stopped}")
            await ok(session, "sandbox_remove", {"name": "mcp-box"})
            await refused(session, "sandbox_remove", {"name": "mcp-box"}, "no sandbox named")
            check(await ok(session, "sandbox_list") == {"sandboxes": []}, "nothing left")

    print("ALL MCP CHECKS PASSED")


anyio.run(main)
sys.exit(0)
