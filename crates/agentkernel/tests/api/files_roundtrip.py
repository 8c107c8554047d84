"""The SDKs' README file examples against `agentkernel serve`, on one backend.

Run with AGENTKERNEL_BASE_URL, AGENTKERNEL_API_KEY and AK_BACKEND (AK_IMAGE optional):
write_file("app/main.py"), write_files({"/app/index.js": ...}) and read_file("app/index.js")
must name the same absolute files, which commands in the sandbox see. Any failed check
raises, which fails the Rust test with this script's output.
"""

import os

from agentkernel import AgentKernel
from agentkernel.errors import AgentKernelError, NotFoundError

BACKEND = os.environ["AK_BACKEND"]
IMAGE = os.environ.get("AK_IMAGE")
NAME = f"files-{BACKEND}-{os.getpid()}"


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


with AgentKernel(timeout=180) as client:
    info = client.create_sandbox(NAME, backend=BACKEND, image=IMAGE)
    check(info.status == "running" and info.backend == BACKEND, f"created on {BACKEND}: {info}")
    try:
        client.write_file(NAME, "app/main.py", "print('hello')")
        check(client.read_file(NAME, "app/main.py").content == "print('hello')", "write_file/read_file app/main.py")
        written = client.write_files(NAME, {
            "/app/index.js": "console.log('hi')",
            "/app/package.json": '{"name":"app"}',
        })
        check(written.written == 2, f"write_files: {written}")
        read = client.read_file(NAME, "app/index.js")
        check((read.content, read.encoding, read.size) == ("console.log('hi')", "utf8", 17), f"read_file app/index.js: {read}")
        out = client.exec_in_sandbox(NAME, ["cat", "/app/main.py", "/app/index.js", "/app/package.json"])
        check(out.output == "print('hello')console.log('hi'){\"name\":\"app\"}", f"commands see /app: {out.output!r}")
        # The same absolute path with its leading slash (the URL gets `//tmp/...`).
        client.write_file(NAME, "/tmp/abs.txt", "abs")
        check(client.read_file(NAME, "tmp/abs.txt").content == "abs", "leading slash or not, one file")
        client.delete_file(NAME, "app/main.py")
        try:
            client.read_file(NAME, "app/main.py")
            check(False, "deleted")
        except NotFoundError:
            check(True, "delete_file app/main.py")
        # A mount point is refused as the caller's error (403), never as a fault.
        try:
            client.delete_file(NAME, "proc")
            check(False, "/proc removed")
        except AgentKernelError as e:
            check("internal error" not in str(e), f"removing /proc is refused: {e}")
    finally:
        client.remove_sandbox(NAME)

print("FILES ROUND TRIP PASSED")
