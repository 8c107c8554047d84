#!/usr/bin/env python3
"""How long a restore's QEMU takes to start before it can load a state: what a pool of
QEMUs pre-started with `-incoming defer` would save per restore (an upper bound: the
load itself and everything after it stay).

Takes the command line of a running restored VM's QEMU (PID), moves its sockets and
files to a temporary directory, opens its disks without locks (the VM still runs) and
asks for `-incoming defer`; then, RUNS times, starts it and times until QMP answers
`query-status` with `inmigrate` (QEMU ready to take a state), and ends it.

    scripts/qemu-incoming-start.py PID [RUNS]
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time

pid, runs = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10
argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
argv = [a.decode() for a in argv]
qmp_arg = next(a for a in argv if a.startswith("unix:") and "/qmp.sock," in a)
vm_dir = qmp_arg[len("unix:"):qmp_arg.index("/qmp.sock,")]

def qmp(path):
    for _ in range(10000):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            s.close()
            time.sleep(0.0005)
    f = s.makefile("rw")
    json.loads(f.readline())
    for command in ("qmp_capabilities", "query-status"):
        f.write(json.dumps({"execute": command}) + "\n")
        f.flush()
        while True:
            answer = json.loads(f.readline())
            if "event" not in answer:
                break
    s.close()
    return answer["return"]

times = []
for _ in range(runs):
    with tempfile.TemporaryDirectory(prefix="ak-incoming-") as tmp:
        args, skip = [], False
        for i, a in enumerate(argv):
            if skip:
                skip = False
                continue
            if a == "-incoming":
                skip = True
                continue
            a = a.replace(vm_dir, tmp)
            # A fork maps its forker's memory file (/proc/PID/fd/N), gone with that
            # process: this start needs memory of the same size, not that file.
            if a.startswith("memory-backend-file,"):
                size = next(p for p in a.split(",") if p.startswith("size="))
                a = f"memory-backend-ram,id=mem,{size}"
            if a.startswith("id=") and "format=raw" in a:
                a += ",file.locking=off"
            args.append(a)
        args += ["-incoming", "defer"]
        started = time.monotonic()
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status = qmp(os.path.join(tmp, "qmp.sock"))
        took = time.monotonic() - started
        child.kill()
        child.wait()
        assert status["status"] == "inmigrate", status
        times.append(took * 1000)
print(f"QEMU start until it takes a state (-incoming defer, QMP answers): "
      f"median {statistics.median(times):.1f} ms, mean {statistics.mean(times):.1f} ms, "
      f"min {min(times):.1f}, max {max(times):.1f} ({runs} runs)")
