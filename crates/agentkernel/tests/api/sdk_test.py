"""Drives `agentkernel serve` with the published Python SDK (agentkernel-sdk).

Run by python.rs with AGENTKERNEL_BASE_URL and AGENTKERNEL_API_KEY set; any failed check
raises, which fails the Rust test with this script's output.
"""

import asyncio
import time

from agentkernel import AgentKernel, AsyncAgentKernel
from agentkernel.errors import AuthError, NotFoundError, ValidationError


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


def main():
    client = AgentKernel(timeout=60)

    check(client.health() == "ok", "health")
    backends = client.get_backends()
    native = [b for b in backends.backends if b.backend == "native"][0]
    check(native.usable and native.capabilities.attach, "backends: native usable")

    result = client.run(["echo", "hello from the sdk"])
    check(result.output == "hello from the sdk\n", f"run output: {result.output!r}")
    result = client.run(["sh", "-c", "echo out; echo err >&2; exit 3"], profile="restrictive")
    check(result.output == "out\nerr\n", f"run with a failing command: {result.output!r}")

    # Streaming: the first output arrives while the command still sleeps.
    begun = time.monotonic()
    first_output = None
    done = None
    chunks = []
    for event in client.run_stream(["sh", "-c", "echo first; sleep 3; echo second"]):
        if event.type == "output":
            chunks.append(event.data["data"])
            if first_output is None:
                first_output = time.monotonic() - begun
        if event.type == "done":
            done = (time.monotonic() - begun, event.data["exit_code"])
    check("".join(chunks) == "first\nsecond\n", f"stream output: {chunks!r}")
    check(done is not None and done[1] == 0, f"stream done: {done}")
    check(done[0] - first_output > 2.0, f"first output at {first_output:.2f}s, done at {done[0]:.2f}s")

    batch = client.batch_run([["echo", "a"], ["echo", "b"]])
    check([r.output for r in batch.results] == ["a\n", "b\n"], f"batch: {batch}")

    with client.sandbox("sdk-box", profile="restrictive", memory_mb=256) as sb:
        info = sb.info()
        check(info.status == "running" and info.name == "sdk-box", f"sandbox info: {info}")
        check(client.get_sandbox_by_uuid(info.uuid).name == "sdk-box", "by uuid")
        check(any(s.name == "sdk-box" for s in client.list_sandboxes()), "listed")

        out = sb.run(["sh", "-c", "echo $GREETING; pwd"], env=["GREETING=hi"], workdir="/tmp")
        check(out.output == "hi\n/tmp\n", f"exec with env and workdir: {out.output!r}")
        out = sb.run(["id", "-u"], sudo=True)
        check(out.output == "0\n", f"exec with sudo: {out.output!r}")
        out = sb.run(["sh", "-c", "exit 4"])
        check(out.output == "", "a failing exec is an answer, not an error")

        client.write_file("sdk-box", "tmp/notes/hello.txt", "héllo")
        read = client.read_file("sdk-box", "tmp/notes/hello.txt")
        check((read.content, read.encoding, read.size) == ("héllo", "utf8", 6), f"read: {read}")
        written = sb.write_files({"workspace/a.txt": "A", "/workspace/dir/b.txt": "B"})
        check(written.written == 2, f"write_files: {written}")
        out = sb.run(["cat", "/workspace/a.txt", "/workspace/dir/b.txt"])
        check(out.output == "AB", f"files visible to commands: {out.output!r}")
        client.delete_file("sdk-box", "workspace/a.txt")
        try:
            client.read_file("sdk-box", "workspace/a.txt")
            check(False, "a deleted file is gone")
        except NotFoundError:
            check(True, "a deleted file is gone")
        # httpx resolves a plain "../" itself, so the traversal travels encoded.
        try:
            client.read_file("sdk-box", "..%2F..%2Fetc%2Fpasswd")
            check(False, "traversal refused")
        except ValidationError:
            check(True, "traversal refused")

        detached = client.exec_detached("sdk-box", ["sh", "-c", "echo bg; sleep 30"])
        check(detached.status == "running" and detached.pid > 0, f"detached: {detached}")
        for _ in range(100):
            logs = client.detached_logs("sdk-box", detached.id)
            if logs.stdout == "bg\n":
                break
            time.sleep(0.05)
        check(logs.stdout == "bg\n", f"detached logs: {logs}")
        check([d.id for d in client.detached_list("sdk-box")] == [detached.id], "detached list")
        client.detached_kill("sdk-box", detached.id)
        for _ in range(100):
            status = client.detached_status("sdk-box", detached.id)
            if status.status != "running":
                break
            time.sleep(0.05)
        check(status.status == "failed" and status.exit_code == 137, f"killed: {status}")

        expires = client.extend_ttl("sdk-box", by="30m")
        check(isinstance(expires, str) and expires.endswith("Z"), f"extend_ttl: {expires!r}")
        check(client.get_sandbox("sdk-box").status == "running", "still running after extend")

        # Snapshots: taken of the running sandbox, restored into a new one that has its
        # files and goes its own way; removing the snapshot leaves the copy as it is.
        caps = [b for b in client.get_backends().backends if b.backend == "native"][0].capabilities
        check(caps.snapshots and not (caps.resume or caps.full_state_pause_resume or caps.full_state_fork),
              f"capabilities: filesystem snapshots only: {caps}")
        meta = client.take_snapshot("sdk-box", snapshot_name="sdk-snap")
        check((meta.name, meta.sandbox, meta.backend) == ("sdk-snap", "sdk-box", "native"), f"take_snapshot: {meta}")
        check(meta.memory_mb and meta.created_at.endswith("Z"), f"snapshot meta: {meta}")
        auto = client.take_snapshot("sdk-box")
        check(auto.name.startswith("sdk-box-"), f"a default snapshot name: {auto}")
        check({"sdk-snap", auto.name} <= {s.name for s in client.list_snapshots()}, "list_snapshots")
        check(client.get_snapshot("sdk-snap") == meta, "get_snapshot")
        restored = client.restore_snapshot("sdk-snap")
        check(restored.status == "running" and restored.name != "sdk-box", f"restore_snapshot: {restored}")
        check(client.read_file(restored.name, "workspace/dir/b.txt").content == "B", "the restored sandbox has the files")
        sb.run(["sh", "-c", "echo changed > /workspace/dir/b.txt"])
        check(client.read_file(restored.name, "workspace/dir/b.txt").content == "B", "and goes its own way")
        for name in ("sdk-snap", auto.name):
            client.delete_snapshot(name)
        try:
            client.get_snapshot("sdk-snap")
            check(False, "a deleted snapshot is gone")
        except NotFoundError:
            check(True, "a deleted snapshot is gone")
        check(client.read_file(restored.name, "workspace/dir/b.txt").content == "B", "the copy outlives its snapshot")
        client.remove_sandbox(restored.name)
        for bad in ("../x", "no-such-snapshot"):
            try:
                client.restore_snapshot(bad)
                check(False, f"restore of {bad} refused")
            except (ValidationError, NotFoundError):
                check(True, f"restore of {bad} refused")

        logs = client.get_sandbox_logs("sdk-box")
        actions = {entry["action"] for entry in logs}
        check({"create", "start", "exec", "file_write", "file_read", "extend"} <= actions, f"audit: {actions}")

    try:
        client.get_sandbox("sdk-box")
        check(False, "the session removed its sandbox")
    except NotFoundError:
        check(True, "the session removed its sandbox")

    try:
        client.create_sandbox("../escape")
        check(False, "bad name refused")
    except ValidationError:
        check(True, "bad name refused")

    try:
        AgentKernel(api_key="wrong-token").list_sandboxes()
        check(False, "wrong token refused")
    except AuthError:
        check(True, "wrong token refused")

    asyncio.run(async_checks())
    print("ALL SDK CHECKS PASSED")


async def async_checks():
    """The SDK's async client: concurrent runs and a stream."""
    async with AsyncAgentKernel(timeout=60) as client:
        results = await asyncio.gather(*(client.run(["echo", str(i)]) for i in range(4)))
        check([r.output for r in results] == ["0\n", "1\n", "2\n", "3\n"], f"async runs: {results}")
        # This SDK's async run_stream is a coroutine that returns the event iterator.
        stream = await client.run_stream(["sh", "-c", "echo a; echo b >&2"])
        events = [e async for e in stream]
        kinds = [e.type for e in events]
        check(kinds[0] == "started" and kinds[-1] == "done", f"async stream: {kinds}")
        streams = {e.data["stream"] for e in events if e.type == "output"}
        check(streams == {"stdout", "stderr"}, f"async stream carries both streams: {streams}")


main()
