"""Every public method of the published Python SDK (agentkernel-sdk, sync and async clients)
against `agentkernel serve`, for the compatibility table (compat.rs writes
docs/compatibility.md from what this prints).

Methods that map to an endpoint this server has are called with the arguments of the SDK's
README examples (a command is swapped for one that exists here when the README's needs an
image or a file we do not have; the `call` column says what was sent) and must work; the
others must get the documented refusal: 404 saying the endpoint family is not implemented,
or 400 naming the field. A public method without a case here is a failure, so a new SDK
method cannot go unnoticed.

Env: AGENTKERNEL_BASE_URL, AGENTKERNEL_API_KEY, AK_COMPAT_OUT (the JSON file to write).
"""

import asyncio
import importlib.metadata
import inspect
import json
import os
import time

from agentkernel import AgentKernel, AsyncAgentKernel
from agentkernel.async_client import AsyncSandboxSession
from agentkernel.client import SandboxSession
from agentkernel.errors import NotFoundError, ServerError, ValidationError

NOT_IMPLEMENTED = "not implemented in this server"


async def settle(value):
    """The value of a sync call, or of an async one once awaited."""
    return await value if inspect.isawaitable(value) else value


async def events_of(stream):
    stream = await settle(stream)
    if hasattr(stream, "__aiter__"):
        return [event async for event in stream]
    return list(stream)


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


class Ctx:
    """What one case leaves for the next (a uuid, a detached command's id)."""


# --- cases: (method, call as shown in the table, expected, coroutine(client, ctx)) ---

async def c_health(c, ctx):
    expect(await settle(c.health()) == "ok", "health is ok")


async def c_get_backends(c, ctx):
    found = await settle(c.get_backends())
    native = [b for b in found.backends if b.backend == "native"][0]
    expect(native.usable, f"native usable: {native}")
    caps = native.capabilities
    expect(caps.snapshots, f"native snapshots its named sandboxes: {caps}")
    expect(not (caps.resume or caps.full_state_pause_resume or caps.full_state_fork),
           f"no resume or memory-state capability claimed: {caps}")


async def c_run(c, ctx):
    out = await settle(c.run(["echo", "hello"]))
    expect(out.output == "hello\n", f"output {out.output!r}")


async def c_run_stream(c, ctx):
    events = await events_of(c.run_stream(["sh", "-c", "echo one; echo two"]))
    text = "".join(e.data["data"] for e in events if e.type == "output")
    expect(text == "one\ntwo\n", f"stream output {text!r}")
    expect(events[-1].type == "done" and events[-1].data["exit_code"] == 0, f"done: {events[-1]}")


async def c_batch_run(c, ctx):
    out = await settle(c.batch_run([["echo", "a"], ["echo", "b"]]))
    expect([r.output for r in out.results] == ["a\n", "b\n"], f"batch {out}")


async def c_create_sandbox(c, ctx):
    info = await settle(c.create_sandbox("my-sandbox"))
    expect(info.status == "running" and info.name == "my-sandbox", f"created {info}")
    ctx.uuid = info.uuid


async def c_create_with_source(c, ctx):
    """The README's example with a local repository (no github here) and the host image."""
    repo = os.environ["AK_COMPAT_REPO"]
    info = await settle(c.create_sandbox("my-project", source_url=repo, source_ref="main"))
    try:
        out = await settle(c.exec_in_sandbox("my-project", ["cat", "README.md"]))
        expect(out.output == "cloned\n", f"the clone's README: {out.output!r}")
    finally:
        await settle(c.remove_sandbox("my-project"))
    expect(info.status == "running", f"{info}")


async def c_create_with_volumes(c, ctx):
    """The README's example on the host image; the volumes were created with the CLI."""
    await settle(c.create_sandbox("my-project", volumes=["mydata:/data", "cache:/tmp/cache:ro"]))
    try:
        out = await settle(c.exec_in_sandbox("my-project", [
            "sh", "-c", "echo kept > /data/f && cat /data/f && if touch /tmp/cache/x 2>/dev/null; then echo writable; else echo read-only; fi"]))
        expect(out.output == "kept\nread-only\n", f"volumes: {out.output!r}")
    finally:
        await settle(c.remove_sandbox("my-project"))


class Absent(Exception):
    """The case's argument does not exist in this client (the async one lacks some)."""


def refused_by_policy(field, call):
    """A remote caller's secret from the host's store: a 403 naming the [api] setting."""
    async def case(c, ctx):
        if field not in inspect.signature(c.create_sandbox).parameters:
            raise Absent()
        try:
            await settle(call(c))
        except ServerError as e:
            expect("secrets_from_store" in str(e), f"403 names secrets_from_store: {e}")
            return
        raise AssertionError(f"{field} was accepted")
    return case


async def c_list_sandboxes(c, ctx):
    names = [s.name for s in await settle(c.list_sandboxes())]
    expect("my-sandbox" in names, f"listed: {names}")


async def c_get_sandbox(c, ctx):
    info = await settle(c.get_sandbox("my-sandbox"))
    expect(info.status == "running", f"{info}")


async def c_get_sandbox_by_uuid(c, ctx):
    info = await settle(c.get_sandbox_by_uuid(ctx.uuid))
    expect(info.name == "my-sandbox", f"{info}")


async def c_exec_in_sandbox(c, ctx):
    out = await settle(c.exec_in_sandbox(
        "my-sandbox", ["sh", "-c", "echo $NODE_ENV; pwd; id -u"],
        workdir="/app", env=["NODE_ENV=production"], sudo=True))
    expect(out.output == "production\n/app\n0\n", f"output {out.output!r}")


async def c_write_file(c, ctx):
    await settle(c.write_file("my-sandbox", "app/main.py", "print('hello')"))


async def c_read_file(c, ctx):
    file = await settle(c.read_file("my-sandbox", "app/main.py"))
    expect(file.content == "print('hello')", f"{file}")


async def c_delete_file(c, ctx):
    await settle(c.delete_file("my-sandbox", "app/main.py"))
    try:
        await settle(c.read_file("my-sandbox", "app/main.py"))
    except NotFoundError:
        return
    raise AssertionError("the deleted file is still there")


async def c_write_files(c, ctx):
    out = await settle(c.write_files("my-sandbox", {
        "/app/index.js": "console.log('hi')",
        "/app/package.json": '{"name":"app"}',
    }))
    expect(out.written == 2, f"{out}")
    file = await settle(c.read_file("my-sandbox", "app/index.js"))
    expect(file.content == "console.log('hi')", f"read back {file}")


async def c_get_sandbox_logs(c, ctx):
    actions = {e["action"] for e in await settle(c.get_sandbox_logs("my-sandbox"))}
    expect({"create", "exec", "file_write", "file_read"} <= actions, f"audit {actions}")


async def c_exec_detached(c, ctx):
    cmd = await settle(c.exec_detached("my-sandbox", ["sh", "-c", "echo training; echo warn >&2; sleep 30"]))
    expect(cmd.status == "running" and cmd.pid > 0, f"{cmd}")
    ctx.cmd = cmd.id


async def c_detached_status(c, ctx):
    status = await settle(c.detached_status("my-sandbox", ctx.cmd))
    expect(status.status == "running", f"{status}")


async def c_detached_logs(c, ctx):
    # The shell writes "warn" after "training": wait for both, not just the first.
    for _ in range(100):
        logs = await settle(c.detached_logs("my-sandbox", ctx.cmd))
        if logs.stdout == "training\n" and logs.stderr == "warn\n":
            break
        time.sleep(0.05)
    expect(logs.stdout == "training\n" and logs.stderr == "warn\n", f"{logs}")
    stderr = await settle(c.detached_logs("my-sandbox", ctx.cmd, stream="stderr"))
    expect(stderr.stderr == "warn\n" and not stderr.stdout, f"stderr only: {stderr}")


async def c_detached_list(c, ctx):
    ids = [d.id for d in await settle(c.detached_list("my-sandbox"))]
    expect(ids == [ctx.cmd], f"{ids}")


async def c_detached_kill(c, ctx):
    await settle(c.detached_kill("my-sandbox", ctx.cmd))
    for _ in range(100):
        status = await settle(c.detached_status("my-sandbox", ctx.cmd))
        if status.status != "running":
            break
        time.sleep(0.05)
    expect(status.status == "failed", f"killed: {status}")


async def c_extend_ttl(c, ctx):
    expires = await settle(c.extend_ttl("my-sandbox", by="1h"))
    expect(isinstance(expires, str) and expires.endswith("Z"), f"{expires!r}")


async def c_take_snapshot(c, ctx):
    meta = await settle(c.take_snapshot("my-sandbox", snapshot_name="snap"))
    expect(meta.name == "snap" and meta.sandbox == "my-sandbox" and meta.backend == "native",
           f"{meta}")


async def c_list_snapshots(c, ctx):
    names = [s.name for s in await settle(c.list_snapshots())]
    expect("snap" in names, f"listed: {names}")


async def c_get_snapshot(c, ctx):
    meta = await settle(c.get_snapshot("snap"))
    expect(meta.name == "snap" and meta.created_at.endswith("Z"), f"{meta}")


async def c_restore_snapshot(c, ctx):
    info = await settle(c.restore_snapshot("snap"))
    expect(info.status == "running" and info.name.startswith("snap-"), f"{info}")
    # The files the sandbox had when it was snapshotted (write_files above).
    file = await settle(c.read_file(info.name, "app/index.js"))
    expect(file.content == "console.log('hi')", f"restored file: {file}")
    await settle(c.remove_sandbox(info.name))


async def c_delete_snapshot(c, ctx):
    await settle(c.delete_snapshot("snap"))
    try:
        await settle(c.get_snapshot("snap"))
    except NotFoundError:
        return
    raise AssertionError("deleted, yet found")


async def c_remove_sandbox(c, ctx):
    await settle(c.remove_sandbox("my-sandbox"))
    try:
        await settle(c.get_sandbox("my-sandbox"))
    except NotFoundError:
        return
    raise AssertionError("removed, yet found")


async def c_sandbox(c, ctx):
    ctx.session = await settle(c.sandbox("test"))
    expect(ctx.session.name == "test", "session")


async def s_run(c, ctx):
    out = await settle(ctx.session.run(["sh", "-c", "pwd"], workdir="/app", sudo=True))
    expect(out.output == "/app\n", f"{out.output!r}")


async def s_info(c, ctx):
    info = await settle(ctx.session.info())
    expect(info.name == "test" and info.status == "running", f"{info}")


async def s_write_files(c, ctx):
    out = await settle(ctx.session.write_files({"/app/requirements.txt": "numpy\n"}))
    expect(out.written == 1, f"{out}")


async def s_remove(c, ctx):
    await settle(ctx.session.remove())
    await settle(ctx.session.remove())  # idempotent
    names = [s.name for s in await settle(c.list_sandboxes())]
    expect("test" not in names, f"removed: {names}")


async def c_browser(c, ctx):
    # It creates a sandbox from python:3.12-slim and installs Playwright and Chromium in
    # it: the native server pulls that image from Docker Hub, which is out of reach here,
    # and says so (503) without leaving a sandbox.
    try:
        await settle(c.browser("my-browser"))
    except ServerError as e:
        expect("index.docker.io is unreachable" in str(e), f"says why: {e}")
        names = [s.name for s in await settle(c.list_sandboxes())]
        expect("my-browser" not in names, f"nothing left: {names}")
        return
    raise AssertionError("a browser sandbox was made")


async def c_close(c, ctx):
    # No request: ends the HTTP client; the last case, so nothing runs after it.
    await settle(c.close())


def refused_family(call):
    async def case(c, ctx):
        try:
            await settle(call(c))
        except NotFoundError as e:
            expect(NOT_IMPLEMENTED in str(e), f"404 says not implemented: {e}")
            return
        raise AssertionError("answered as if implemented")
    return case


WORKS = "works"
# A secret from the host's store, asked for by a remote caller, under the default [api].
POLICY = "403: needs `secrets_from_store` under [api]"
NOT_HERE = "404: family not implemented"


CASES = [
    ("health", "health()", WORKS, c_health),
    ("get_backends", "get_backends()", WORKS, c_get_backends),
    ("run", 'run(["echo", "hello"])', WORKS, c_run),
    ("run_stream", 'run_stream(["sh", "-c", "echo one; echo two"])', WORKS, c_run_stream),
    ("batch_run", 'batch_run([["echo", "a"], ["echo", "b"]])', WORKS, c_batch_run),
    ("create_sandbox", 'create_sandbox("my-sandbox")', WORKS, c_create_sandbox),
    ("create_sandbox", 'create_sandbox("my-project", source_url="file:///<a local repository>", source_ref="main")',
     WORKS, c_create_with_source),
    ("create_sandbox", 'create_sandbox("my-project", volumes=["mydata:/data", "cache:/tmp/cache:ro"])',
     WORKS, c_create_with_volumes),
    ("create_sandbox", 'create_sandbox("my-project", secrets=["OPENAI_API_KEY:api.openai.com"])',
     POLICY, refused_by_policy("secrets", lambda c: c.create_sandbox(
         "my-project", secrets=["OPENAI_API_KEY:api.openai.com"]))),
    ("create_sandbox", 'create_sandbox("my-project", secret_files=["OPENAI_API_KEY"])',
     POLICY, refused_by_policy("secret_files", lambda c: c.create_sandbox(
         "my-project", secret_files=["OPENAI_API_KEY"]))),
    ("list_sandboxes", "list_sandboxes()", WORKS, c_list_sandboxes),
    ("get_sandbox", 'get_sandbox("my-sandbox")', WORKS, c_get_sandbox),
    ("get_sandbox_by_uuid", "get_sandbox_by_uuid(uuid)", WORKS, c_get_sandbox_by_uuid),
    ("write_file", 'write_file("my-sandbox", "app/main.py", "print(\'hello\')")', WORKS, c_write_file),
    ("read_file", 'read_file("my-sandbox", "app/main.py")', WORKS, c_read_file),
    ("exec_in_sandbox", 'exec_in_sandbox("my-sandbox", ["sh", "-c", "echo $NODE_ENV; pwd; id -u"], workdir="/app", env=["NODE_ENV=production"], sudo=True)',
     WORKS, c_exec_in_sandbox),
    ("delete_file", 'delete_file("my-sandbox", "app/main.py")', WORKS, c_delete_file),
    ("write_files", 'write_files("my-sandbox", {"/app/index.js": …, "/app/package.json": …}), then read_file("my-sandbox", "app/index.js")',
     WORKS, c_write_files),
    ("get_sandbox_logs", 'get_sandbox_logs("my-sandbox")', WORKS, c_get_sandbox_logs),
    ("exec_detached", 'exec_detached("my-sandbox", ["sh", "-c", "echo training; echo warn >&2; sleep 30"])', WORKS, c_exec_detached),
    ("detached_status", 'detached_status("my-sandbox", cmd.id)', WORKS, c_detached_status),
    ("detached_logs", 'detached_logs("my-sandbox", cmd.id), and with stream="stderr"', WORKS, c_detached_logs),
    ("detached_list", 'detached_list("my-sandbox")', WORKS, c_detached_list),
    ("detached_kill", 'detached_kill("my-sandbox", cmd.id)', WORKS, c_detached_kill),
    ("extend_ttl", 'extend_ttl("my-sandbox", by="1h")', WORKS, c_extend_ttl),
    ("take_snapshot", 'take_snapshot("my-sandbox", snapshot_name="snap")', WORKS, c_take_snapshot),
    ("list_snapshots", "list_snapshots()", WORKS, c_list_snapshots),
    ("get_snapshot", 'get_snapshot("snap")', WORKS, c_get_snapshot),
    ("restore_snapshot", 'restore_snapshot("snap"), then read_file(restored, "app/index.js")', WORKS, c_restore_snapshot),
    ("delete_snapshot", 'delete_snapshot("snap")', WORKS, c_delete_snapshot),
    ("remove_sandbox", 'remove_sandbox("my-sandbox")', WORKS, c_remove_sandbox),
    ("sandbox", 'sandbox("test")', WORKS, c_sandbox),
    ("SandboxSession.info", "sb.info()", WORKS, s_info),
    ("SandboxSession.write_files", 'sb.write_files({"/app/requirements.txt": "numpy\\n"})', WORKS, s_write_files),
    ("SandboxSession.run", 'sb.run(["sh", "-c", "pwd"], workdir="/app", sudo=True)', WORKS, s_run),
    ("SandboxSession.remove", "sb.remove() (twice)", WORKS, s_remove),
    ("browser", 'browser("my-browser")', "503: Docker Hub unreachable here", c_browser),
    ("list_orchestrations", "list_orchestrations()", NOT_HERE, refused_family(lambda c: c.list_orchestrations())),
    ("create_orchestration", 'create_orchestration({"name": "o"})', NOT_HERE, refused_family(lambda c: c.create_orchestration({"name": "o"}))),
    ("get_orchestration", 'get_orchestration("o1")', NOT_HERE, refused_family(lambda c: c.get_orchestration("o1"))),
    ("signal_orchestration", 'signal_orchestration("o1", {"name": "go"})', NOT_HERE, refused_family(lambda c: c.signal_orchestration("o1", {"name": "go"}))),
    ("terminate_orchestration", 'terminate_orchestration("o1")', NOT_HERE, refused_family(lambda c: c.terminate_orchestration("o1"))),
    ("list_orchestration_definitions", "list_orchestration_definitions()", NOT_HERE, refused_family(lambda c: c.list_orchestration_definitions())),
    ("upsert_orchestration_definition", 'upsert_orchestration_definition({"name": "d"})', NOT_HERE, refused_family(lambda c: c.upsert_orchestration_definition({"name": "d"}))),
    ("get_orchestration_definition", 'get_orchestration_definition("d")', NOT_HERE, refused_family(lambda c: c.get_orchestration_definition("d"))),
    ("delete_orchestration_definition", 'delete_orchestration_definition("d")', NOT_HERE, refused_family(lambda c: c.delete_orchestration_definition("d"))),
    ("list_objects", "list_objects()", NOT_HERE, refused_family(lambda c: c.list_objects())),
    ("create_object", 'create_object({"class": "Counter"})', NOT_HERE, refused_family(lambda c: c.create_object({"class": "Counter"}))),
    ("get_object", 'get_object("c1")', NOT_HERE, refused_family(lambda c: c.get_object("c1"))),
    ("call_object", 'call_object("Counter", "c1", "increment")', NOT_HERE, refused_family(lambda c: c.call_object("Counter", "c1", "increment"))),
    ("delete_object", 'delete_object("c1")', NOT_HERE, refused_family(lambda c: c.delete_object("c1"))),
    ("patch_object", 'patch_object("c1", status="idle")', NOT_HERE, refused_family(lambda c: c.patch_object("c1", status="idle"))),
    ("list_schedules", "list_schedules()", NOT_HERE, refused_family(lambda c: c.list_schedules())),
    ("create_schedule", 'create_schedule({"cron": "* * * * *"})', NOT_HERE, refused_family(lambda c: c.create_schedule({"cron": "* * * * *"}))),
    ("get_schedule", 'get_schedule("s1")', NOT_HERE, refused_family(lambda c: c.get_schedule("s1"))),
    ("delete_schedule", 'delete_schedule("s1")', NOT_HERE, refused_family(lambda c: c.delete_schedule("s1"))),
    ("list_stores", "list_stores()", NOT_HERE, refused_family(lambda c: c.list_stores())),
    ("create_store", 'create_store({"name": "kv"})', NOT_HERE, refused_family(lambda c: c.create_store({"name": "kv"}))),
    ("get_store", 'get_store("kv")', NOT_HERE, refused_family(lambda c: c.get_store("kv"))),
    ("delete_store", 'delete_store("kv")', NOT_HERE, refused_family(lambda c: c.delete_store("kv"))),
    ("query_store", 'query_store("kv", {"sql": "select 1"})', NOT_HERE, refused_family(lambda c: c.query_store("kv", {"sql": "select 1"}))),
    ("execute_store", 'execute_store("kv", {"sql": "delete from t"})', NOT_HERE, refused_family(lambda c: c.execute_store("kv", {"sql": "delete from t"}))),
    ("command_store", 'command_store("kv", {"command": ["PING"]})', NOT_HERE, refused_family(lambda c: c.command_store("kv", {"command": ["PING"]}))),
    ("close", "close()", "works (no request)", c_close),
]


def public_methods(cls, prefix=""):
    return {prefix + name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


async def drive(sdk, client, methods):
    rows = []
    ctx = Ctx()
    for method, call, expected, case in CASES:
        if method not in methods:
            continue
        try:
            await case(client, ctx)
            result = "pass"
        except Absent:
            continue
        except Exception as e:  # noqa: BLE001 - every failure becomes a row of the table
            result = f"FAIL: {type(e).__name__}: {e}"
        rows.append({"sdk": sdk, "method": method, "call": call, "expected": expected, "result": result})
    covered = {method for method, *_ in CASES}
    for method in sorted(methods - covered):
        rows.append({"sdk": sdk, "method": method, "call": "", "expected": "a case in compat_python.py",
                     "result": "FAIL: a public method this test does not call"})
    return rows


async def main():
    version = importlib.metadata.version("agentkernel-sdk")
    rows = []
    sync_methods = public_methods(AgentKernel) | public_methods(SandboxSession, "SandboxSession.")
    rows += await drive(f"Python {version} (sync)", AgentKernel(timeout=60), sync_methods)
    async_methods = public_methods(AsyncAgentKernel) | public_methods(AsyncSandboxSession, "SandboxSession.")
    async_client = AsyncAgentKernel(timeout=60)
    rows += await drive(f"Python {version} (async)", async_client, async_methods)
    with open(os.environ["AK_COMPAT_OUT"], "w") as out:
        json.dump(rows, out, indent=1)
    failed = [r for r in rows if r["result"] != "pass"]
    for row in failed:
        print(f"{row['sdk']} {row['method']}: {row['result']}")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")


asyncio.run(main())
