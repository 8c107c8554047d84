#!/usr/bin/env python3
"""Where a microVM's boot goes, beyond a bare boot of the same kernel: QEMU runs directly
(no agentkernel CLI), alternating in one run between

- bare:      the kernel with a one-file initramfs whose /init prints CLOCK_BOOTTIME and exits
             (what scripts/bench-microvm.py compares against);
- bare+dev:  the same /init with our devices and memory (virtio-blk base disk, vhost-user
             vsock with its daemon, memfd memory): what the devices cost before /init;
- ours:      our agent as /init (`--guest --vsock-connect`, as a one-shot VM), until its
             connection reaches the host; with AK_AGENT_LOG=debug on the kernel command line
             it logs, once connected, the time since boot of each of its start-up steps.

Host times run from QEMU's (and the vsock daemon's) launch; "boottime" is the guest's own
clock. Usage: scripts/microvm-boot-steps.py [N]   (root, release build, `agentkernel setup`,
gcc, cpio, vhost-device-vsock). Prints means and medians; writes nothing.
"""
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release")
CACHE = "/var/cache/agentkernel/microvm"
READY_PORT = 1025
# crates/ak-microvm: KERNEL_ARGS + tsc_early_khz + qemu::CMDLINE, and the declarations of
# our two devices (the disk, then vsock).
DEVICES = "virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11"
MARKER_INIT = r"""
#include <stdio.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_BOOTTIME, &t);
    char line[80];
    int n = snprintf(line, sizeof line, "AK-BARE-MARKER boottime %.1f\n",
                     t.tv_sec * 1e3 + t.tv_nsec / 1e6);
    write(1, line, n);
    reboot(RB_AUTOBOOT);
    return 0;
}
"""


def tsc_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    sys.exit("no cpu MHz in /proc/cpuinfo")


def newest(pattern_dir, suffix):
    found = [os.path.join(dp, f) for dp, _, fs in os.walk(pattern_dir) for f in fs
             if f.endswith(suffix)]
    if not found:
        sys.exit(f"nothing ending in {suffix} under {pattern_dir}: run `agentkernel setup`")
    return max(found, key=os.path.getmtime)


def initramfs(work, name, program):
    tree = os.path.join(work, name)
    os.makedirs(tree)
    shutil.copy(program, os.path.join(tree, "init"))
    out = os.path.join(work, name + ".cpio")
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"init\n", cwd=tree,
                       stdout=f, check=True)
    return out


def boot(kernel, base, cpio, devices, agent_args=None):
    """One boot; returns (host ms until the marker or the agent's connection, console)."""
    work = tempfile.mkdtemp(dir="/run")
    vhost, uds = os.path.join(work, "vhost.sock"), os.path.join(work, "vsock.sock")
    args = f"console=ttyS0 quiet loglevel=4 i8042.nokbd i8042.noaux i8042.nopnp " \
           f"8250.nr_uarts=1 panic=-1 tsc_early_khz={tsc_khz()} reboot=t"
    procs, ready = [], None
    start = time.perf_counter()
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256M",
           "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-serial", "stdio", "-kernel", kernel, "-initrd", cpio]
    if devices:
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ready.bind(f"{uds}_{READY_PORT}")
        ready.listen(1)
        procs.append(subprocess.Popen(
            ["vhost-device-vsock", "--guest-cid", "3", "--socket", vhost, "--uds-path", uds],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while not os.path.exists(vhost):
            time.sleep(0.0005)
        args += " " + DEVICES
        cmd += ["-M", "microvm,acpi=off,auto-kernel-cmdline=off,memory-backend=mem",
                "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
                "-drive", f"id=base,file={base},format=raw,if=none,readonly=on",
                "-device", "virtio-blk-device,drive=base",
                "-chardev", f"socket,id=vsock,path={vhost}",
                "-device", "vhost-user-vsock-device,chardev=vsock"]
    else:
        cmd += ["-M", "microvm,acpi=off,auto-kernel-cmdline=off"]
    if agent_args:
        args += " AK_AGENT_LOG=debug -- " + agent_args
    cmd += ["-append", args]
    qemu = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    procs.append(qemu)
    console, done = b"", None
    try:
        watched = [qemu.stdout] + ([ready] if agent_args else [])
        while done is None:
            readable, _, _ = select.select(watched, [], [], 30)
            if not readable:
                sys.exit(f"no marker nor connection in 30 s: {console[-500:]!r}")
            for f in readable:
                if f is ready:
                    ready.accept()[0].close()
                    done = (time.perf_counter() - start) * 1000
                    continue
                chunk = os.read(qemu.stdout.fileno(), 4096)
                if not chunk:
                    sys.exit(f"the VM ended early: {console[-500:]!r}")
                console += chunk
                if (done is None and not agent_args
                        and re.search(rb"AK-BARE-MARKER boottime [0-9.]+\r?\n", console)):
                    done = (time.perf_counter() - start) * 1000
        if agent_args:
            # The agent logs its steps right after connecting.
            deadline = time.time() + 2
            while time.time() < deadline and not re.search(rb"guest start-up.*\n", console):
                if select.select([qemu.stdout], [], [], 0.05)[0]:
                    console += os.read(qemu.stdout.fileno(), 4096)
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)
    return done, console.decode(errors="replace")


def steps(console):
    """[(step, boottime ms)] from the agent's debug line, or the marker's boottime."""
    marker = re.search(r"AK-BARE-MARKER boottime ([0-9.]+)", console)
    if marker:
        return [("/init (marker) runs", float(marker.group(1)))]
    line = re.search(r"guest start-up, ms since boot: (.*)", console)
    if not line:
        sys.exit(f"no start-up line from the agent: {console[-800:]!r}")
    return [(m.group(1), float(m.group(2))) for m in
            re.finditer(r"(.+?) (\d+\.\d)(?: \(\+\d+\.\d\))?(?:; |$)", line.group(1).strip())]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    agent = os.path.join(RELEASE, "ak-agent")
    if not os.access(agent, os.X_OK):
        sys.exit("build first: cargo build --release -p agentkernel --bins")
    kernel = newest(os.path.join(CACHE, "kernel"), "vmlinux")
    base = newest(os.path.join(CACHE, "images"), ".ext4")
    work = tempfile.mkdtemp()
    try:
        src = os.path.join(work, "init.c")
        with open(src, "w") as f:
            f.write(MARKER_INIT)
        marker = os.path.join(work, "marker")
        subprocess.run(["gcc", "-static", "-O2", "-o", marker, src], check=True)
        bare_cpio = initramfs(work, "bare", marker)
        ours_cpio = initramfs(work, "ours", agent)
        variants = {
            "bare": lambda: boot(kernel, base, bare_cpio, devices=False),
            "bare+dev": lambda: boot(kernel, base, bare_cpio, devices=True),
            "ours": lambda: boot(kernel, base, ours_cpio, devices=True, agent_args=(
                f"--guest --vsock-connect {READY_PORT} --workdir /workspace")),
        }
        host = {name: [] for name in variants}
        guest = {name: {} for name in variants}
        for _ in range(n):
            for name, run in variants.items():
                took, console = run()
                host[name].append(took)
                previous = None
                for step, at in steps(console):
                    key = step if previous is None else f"+ {step}"
                    guest[name].setdefault(key, []).append(at if previous is None
                                                           else at - previous)
                    previous = at
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'(ms, n=' + str(n) + ')':<52}{'mean':>8}{'p50':>8}")
    for name in variants:
        print(f"{name}: host, launch -> marker or connection"
              f"{'':<{max(0, 12 - len(name))}}"
              f"{statistics.fmean(host[name]):>8.1f}{statistics.median(host[name]):>8.1f}")
        for step, values in guest[name].items():
            label = f"  guest boottime at {step}" if not step.startswith("+") else f"    {step}"
            print(f"{label:<52}{statistics.fmean(values):>8.1f}{statistics.median(values):>8.1f}")


if __name__ == "__main__":
    main()
