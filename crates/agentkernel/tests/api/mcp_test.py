"""Drives `agentkernel mcp` over stdio with the MCP client library (`pip install mcp`):
initialize, tools/list, and each tool, including refusals of bad input; progress
notifications, cancellation (the command and its one-shot sandbox really end) and a
message over the size limit (an error answer, and the session goes on).

Run by mcp.rs with AK_BIN (the agentkernel binary) and AK_ENV_* (its environment) set;
any failed check raises, which fails the Rust test with this script's output.
"""

import json
import os
import sys
import time
import uuid

import anyio
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

TOOLS = {
    "sandbox_run",
    "sandbox_create",
    "sandbox_start",
    "sandbox_stop",
    "sandbox_pause",
    "sandbox_resume",
    "sandbox_exec",
    "sandbox_list",
    "sandbox_remove",
    "sandbox_file_read",
    "sandbox_file_write",
    "sandbox_snapshot",
    "snapshot_list",
    "snapshot_restore",
    "snapshot_remove",
    "sandbox_fork",
    "sandbox_network_show",
    "sandbox_network_set",
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


def proc_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def start_time(pid):
    """The process's start time (clock ticks since boot), so a reused pid is not taken for it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def marked(marker):
    """The processes whose environment holds AK_MCP_MARK=<marker>."""
    needle = f"AK_MCP_MARK={marker}".encode()
    found = []
    for pid in proc_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            pass
    return found


def sandbox_processes(pid):
    """`pid` and its ancestors up to (not including) the agentkernel server, this script
    or init: the command and the sandbox around it, each with its start time. The server
    runs from ak-server beside AK_BIN (`agentkernel mcp` hands itself to it)."""
    server = os.path.join(os.path.dirname(os.path.realpath(os.environ["AK_BIN"])), "ak-server")
    chain = []
    while pid > 1 and pid != os.getpid():
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == server:
                break
            chain.append((pid, start_time(pid)))
            pid = parent(pid)
        except OSError:
            break
    return chain


def alive(processes):
    return [(pid, t) for pid, t in processes if start_time(pid) == t]


async def wait_for(what, predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def cancel_kills(session, tool, arguments, one_shot):
    """Calls `tool` running `sleep 60` with a marker in its environment, gives up on it
    after 3 s (the client sends notifications/cancelled), and checks the call came back
    promptly and the command (and, for a one-shot run, its sandbox) is gone."""
    marker = uuid.uuid4().hex
    arguments = dict(arguments, command=["sleep", "60"], env=[f"AK_MCP_MARK={marker}"])
    processes = []

    async def watch():
        pids = await wait_for("the sleep to start", lambda: marked(marker))
        # A named sandbox outlives the command: only the command must end.
        processes.extend(sandbox_processes(pids[0]) if one_shot else [(pids[0], start_time(pids[0]))])

    begun = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            await session.call_tool(tool, arguments, read_timeout_seconds=3)
            raise AssertionError(f"{tool} with sleep 60 returned before its timeout")
        except MCPError as error:
            check("timed out" in str(error).lower() or "timeout" in str(error).lower(), f"{tool} gave up: {error}")
    check(time.monotonic() - begun < 8, f"the cancelled {tool} returned promptly")
    check(len(processes) >= (2 if one_shot else 1), f"{tool}'s processes seen: {processes}")
    await wait_for("the cancelled command and its sandbox to end", lambda: not alive(processes))
    check(not marked(marker), f"cancelling {tool} killed its sleep 60")
    check(not alive(processes), f"nothing of the cancelled {tool} is left: {processes}")


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

            # Progress: a client that passes a token hears from a long command.
            heard = []

            async def on_progress(progress, total, message):
                heard.append((progress, total, message))

            out = await session.call_tool("sandbox_run", {
                "command": ["sh", "-c", "echo one; sleep 2.6; echo two"], "timeout_ms": 20000,
            }, progress_callback=on_progress)
            check(not out.is_error and out.structured_content["output"] == "one\ntwo\n", f"run with progress: {out}")
            check(len(heard) >= 2, f"progress notifications arrived: {heard}")
            check(all(a[0] < b[0] for a, b in zip(heard, heard[1:])), f"progress increases: {heard}")
            check(heard[0][1] == 20.0 and "bytes of output" in heard[0][2], f"progress says total and output: {heard}")
            # Cancellation ends the command and releases its one-shot sandbox.
            await cancel_kills(session, "sandbox_run", {"image": "host"}, one_shot=True)
            await refused(session, "sandbox_run", {"command": ["true"], "image": "--privileged"}, "invalid image")
            await refused(session, "sandbox_run", {"command": ["true"], "profile": "yolo"}, "unknown profile")
            await refused(session, "sandbox_run", {"command": ["true"], "cwd": "../etc"}, "invalid path")
            await refused(session, "sandbox_run", {"command": ["true"], "env": ["NOEQUALS"]}, "invalid environment")
            await refused(session, "sandbox_run", {"command": []}, "no command")

            # The lifecycle of a named sandbox.
            await refused(session, "sandbox_create", {"name": "../x"}, "invalid sandbox name")
            # Created running, as the HTTP API's create.
            created = await ok(session, "sandbox_create", {"name": "mcp-box", "profile": "restrictive", "memory": "256M"})
            check(created["status"] == "running", f"created running: {created}")
            await refused(session, "sandbox_create", {"name": "mcp-box"}, "already exists")
            await refused(session, "sandbox_start", {"name": "mcp-box"}, "cannot start")
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
            # A message over the size limit (16 MiB) is answered with an error, and the
            # session goes on.
            try:
                await session.call_tool("sandbox_file_write", {"name": "mcp-box", "path": "big", "content": "x" * (17 << 20)},
                                        read_timeout_seconds=60)
                raise AssertionError("an oversized message was taken")
            except MCPError as error:
                check("over this server's limit" in str(error), f"an oversized message gets an error: {error}")
            # Cancelling an exec kills its command; the sandbox stays.
            await cancel_kills(session, "sandbox_exec", {"name": "mcp-box"}, one_shot=False)
            out = await ok(session, "sandbox_exec", {"name": "mcp-box", "command": ["echo", "still here"]})
            check(out["output"] == "still here\n", f"the sandbox outlives a cancelled exec: {out}")
            listed = await ok(session, "sandbox_list")
            check([s["name"] for s in listed["sandboxes"]] == ["mcp-box"], f"list: {listed}")
            stopped = await ok(session, "sandbox_stop", {"name": "mcp-box"})
            check(stopped["status"] == "stopped", f"stopped: {stopped}")
            started = await ok(session, "sandbox_start", {"name": "mcp-box"})
            check(started["status"] == "running", f"started again: {started}")
            # Snapshots: taken of the running sandbox, restored into another, forked.
            snap = await ok(session, "sandbox_snapshot", {"name": "mcp-box", "snapshot": "mcp-snap"})
            check(snap["name"] == "mcp-snap" and snap["taken_while"] == "running", f"snapshot: {snap}")
            listed = await ok(session, "snapshot_list")
            check([s["name"] for s in listed["snapshots"]] == ["mcp-snap"], f"snapshot list: {listed}")
            await refused(session, "sandbox_snapshot", {"name": "mcp-box", "snapshot": "mcp-snap"}, "already exists")
            await refused(session, "sandbox_snapshot", {"name": "mcp-box", "snapshot": "../x"}, "snapshot name")
            restored = await ok(session, "snapshot_restore", {"snapshot": "mcp-snap", "name": "mcp-copy"})
            check(restored["status"] == "running", f"restored: {restored}")
            read = await ok(session, "sandbox_file_read", {"name": "mcp-copy", "path": "/workspace/notes/n.txt"})
            check(read["content"] == "written by mcp", f"restored file: {read}")
            forked = await ok(session, "sandbox_fork", {"name": "mcp-copy", "new": ["mcp-f1", "mcp-f2"]})
            check([s["name"] for s in forked["sandboxes"]] == ["mcp-f1", "mcp-f2"], f"forked: {forked}")
            for name in ["mcp-copy", "mcp-f1", "mcp-f2"]:
                await ok(session, "sandbox_remove", {"name": name, "force": True})
            await ok(session, "snapshot_remove", {"snapshot": "mcp-snap"})
            await refused(session, "snapshot_remove", {"snapshot": "mcp-snap"}, "no snapshot named")
            # Networks: an allowlist sandbox made, shown and its list changed while it runs.
            net = await ok(session, "sandbox_create", {"name": "mcp-net", "network": "allowlist", "allow_hosts": ["pypi"]})
            check(net["network"] == "allowlist" and "pypi.org" in net["allowlist"]["hosts"], f"allowlist create: {net}")
            shown = await ok(session, "sandbox_network_show", {"name": "mcp-net"})
            check(shown["egress_denied"] == 0, f"nothing refused yet: {shown}")
            changed = await ok(session, "sandbox_network_set", {"name": "mcp-net", "allow_hosts": ["example.org"], "extend": True})
            check(changed["allowlist"]["hosts"] == ["pypi.org", "files.pythonhosted.org", "example.org"], f"extended: {changed}")
            changed = await ok(session, "sandbox_network_set", {"name": "mcp-net", "allow_cidrs": ["192.0.2.0/24"]})
            check(changed["allowlist"] == {"hosts": [], "cidrs": ["192.0.2.0/24"], "ports": []}, f"replaced: {changed}")
            await refused(session, "sandbox_network_set", {"name": "mcp-box", "allow_hosts": ["pypi"]}, "only an allowlist sandbox")
            await refused(session, "sandbox_network_set", {"name": "mcp-net", "allow_hosts": ["*.com"]}, "a wildcard needs")
            await refused(session, "sandbox_create", {"name": "mcp-bad", "allow_hosts": ["*.com"]}, "a wildcard needs")
            await ok(session, "sandbox_remove", {"name": "mcp-net", "force": True})
            stopped = await ok(session, "sandbox_stop", {"name": "mcp-box"})
            await ok(session, "sandbox_remove", {"name": "mcp-box"})
            await refused(session, "sandbox_remove", {"name": "mcp-box"}, "no sandbox named")
            check(await ok(session, "sandbox_list") == {"sandboxes": []}, "nothing left")

    print("ALL MCP CHECKS PASSED")


anyio.run(main)
sys.exit(0)
