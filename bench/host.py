#!/usr/bin/env python3
"""Host benchmark: memory overhead per idle VM and time from `vm start` to `vmk-guest: ready`,
for 1 and 10 VMs in one `vmk host`, next to as many QEMU TCG processes booting the same guest.

What it measures (guest: the Debian image without init script, i.e. idle at a shell):

  vmk   A `vmk host start` with a fresh host directory. N VMs (1 vCPU, --memory each) are
        defined and started at once through the REST API on the Unix socket; the time from
        each start request to `vmk-guest: ready` in its console log is taken by polling the
        log every 50 ms. After all are ready and SETTLE seconds have passed, /v1/metrics
        gives the host process's RSS and each VM's memory_touched (guest RAM the host backs).
        Overhead per VM = (RSS - sum of memory_touched - RSS of the host with no VM) / N.
  QEMU  N `qemu-system-riscv64 -machine virt` processes with the same kernel, initrd, memory
        and append, started at once; time to the ready line on each console (stdout).
        Overhead per VM = RSS - RSS of the guest-RAM mapping (from /proc/PID/smaps), averaged.

Both: the same kernel, initrd and kernel command line. The machine should be otherwise idle
(the script waits, up to --wait-idle seconds, before each part). Only the Python standard
library is used. Entry point: bench/host.sh (builds vmk first).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import describe_git, ensure_image, load, locate_vms, wait_idle

APPEND = "console=ttyS0 earlycon=sbi"
READY = b"vmk-guest: ready"
MIB = 1 << 20


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def api(sock, method, path, body=None):
    """One request; returns the decoded JSON (or text). Exits on an HTTP error."""
    c = UnixHTTPConnection(str(sock))
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read()
    c.close()
    if r.status >= 400:
        sys.exit(f"host.py: error: {method} {path}: HTTP {r.status}: {raw.decode(errors='replace')}")
    if r.getheader("Content-Type", "").startswith("application/json"):
        return json.loads(raw) if raw else None
    return raw


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mapping_rss(pid, size):
    """Rss of the anonymous mapping(s) of exactly `size` bytes (QEMU's guest RAM)."""
    total, cur = 0, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = hi - lo == size
            elif parts[0] == "Rss:" and cur:
                total += int(parts[1]) * 1024
    return total


def bench_vmk(vmk, image, n, memory, settle, timeout):
    tmp = Path(tempfile.mkdtemp(prefix="vmk-bench-host-"))
    sock = tmp / "vmk.sock"
    cfg = tmp / "host.toml"
    cfg.write_text(f'dir = "{tmp / "host"}"\nsocket = "{sock}"\n')
    # Open for the daemon's whole life; closed with it below.
    log = open(tmp / "host.log", "wb")  # noqa: SIM115
    host = subprocess.Popen([str(vmk), "host", "start", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        t = time.monotonic()
        while not sock.exists():
            if host.poll() is not None or time.monotonic() - t > 30:
                sys.exit(f"host.py: error: vmk host did not start; see {tmp / 'host.log'}")
            time.sleep(0.05)
        time.sleep(0.5)
        base_rss = rss_bytes(host.pid)
        names = [f"idle{i}" for i in range(n)]
        for name in names:
            api(sock, "POST", "/v1/vms", {
                "name": name, "cpus": 1, "memory": memory,
                "boot": {"image": str(image), "append": APPEND},
            })
        started = {}
        for name in names:
            started[name] = time.monotonic()
            api(sock, "POST", f"/v1/vms/{name}/start")
        ready = {}
        while len(ready) < n:
            for name in names:
                if name in ready:
                    continue
                logtext = api(sock, "GET", f"/v1/vms/{name}/console/log?max_bytes=65536")
                if isinstance(logtext, str):
                    logtext = logtext.encode()
                if READY in logtext:
                    ready[name] = time.monotonic() - started[name]
            if time.monotonic() - min(started.values()) > timeout:
                sys.exit(f"host.py: error: not all VMs ready after {timeout:.0f} s "
                         f"(ready: {sorted(ready)}); host dir {tmp}")
            time.sleep(0.05)
        time.sleep(settle)
        m = api(sock, "GET", "/v1/metrics")
        touched = sum(v["memory_touched"] for v in m["vms"])
        rss = m["rss"]
        for name in names:
            api(sock, "POST", f"/v1/vms/{name}/poweroff")
        return {
            "ready": sorted(ready.values()),
            "rss": rss,
            "base_rss": base_rss,
            "touched": touched,
            "overhead": (rss - touched - base_rss) / n,
            "overhead_incl_daemon": (rss - touched) / n,
        }
    finally:
        host.send_signal(signal.SIGTERM)
        try:
            host.wait(timeout=30)
        except subprocess.TimeoutExpired:
            host.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_qemu(qemu, image, n, memory, settle, timeout):
    procs = []
    for i in range(n):
        cmd = [qemu, "-machine", "virt", "-smp", "1", "-m", f"{memory // MIB}M",
               "-nographic", "-no-reboot", "-kernel", str(image / "vmlinux"),
               "-initrd", str(image / "initrd.img"), "-append", APPEND]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        os.set_blocking(p.stdout.fileno(), False)
        procs.append([p, time.monotonic(), b"", None])
    try:
        while any(x[3] is None for x in procs):
            for x in procs:
                if x[3] is not None:
                    continue
                try:
                    chunk = x[0].stdout.read()
                except BlockingIOError:
                    chunk = None
                if chunk:
                    x[2] = (x[2] + chunk)[-4096:]
                    if READY in x[2]:
                        x[3] = time.monotonic() - x[1]
                if x[0].poll() is not None and x[3] is None:
                    sys.exit("host.py: error: a QEMU exited before its guest was ready")
            if time.monotonic() - procs[0][1] > timeout:
                sys.exit(f"host.py: error: QEMU guests not ready after {timeout:.0f} s")
            time.sleep(0.05)
        time.sleep(settle)
        rss = [rss_bytes(x[0].pid) for x in procs]
        ram = [mapping_rss(x[0].pid, memory) for x in procs]
        return {
            "ready": sorted(x[3] for x in procs),
            "rss": sum(rss),
            "touched": sum(ram),
            "overhead": (sum(rss) - sum(ram)) / n,
        }
    finally:
        for x in procs:
            x[0].kill()
            x[0].wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1,10", help="VM counts (default 1,10)")
    ap.add_argument("--memory", default=256, type=int, help="MiB per VM (default 256)")
    ap.add_argument("--settle", type=float, default=5, help="idle seconds before measuring")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--vmk", type=Path, default=None, help="default: target/release/vmk")
    ap.add_argument("--qemu", default="qemu-system-riscv64")
    ap.add_argument("--wait-idle", type=float, default=120, metavar="S")
    args = ap.parse_args()
    memory = args.memory * MIB
    counts = [int(c) for c in args.counts.split(",")]
    _, args.vmk, _ = locate_vms(args, "host.sh")
    image = ensure_image(args.vmk, "host-idle", None)
    print(f"vmk {describe_git()}, load {load()}, {args.memory} MiB per VM, append {APPEND!r}")
    rows = []
    for n in counts:
        for who in ("vmk", "QEMU"):
            _waited, busy = wait_idle(args.wait_idle)
            if busy >= 0.25:
                print(f"  (host still busy: {busy:.2f} CPUs used by others)")
            if who == "vmk":
                r = bench_vmk(args.vmk, image, n, memory, args.settle, args.timeout)
            else:
                r = bench_qemu(args.qemu, image, n, memory, args.settle, args.timeout)
            rows.append((n, who, r))
            extra = ""
            if who == "vmk":
                extra = (f", host alone {r['base_rss'] / MIB:.1f} MiB, incl. it "
                         f"{r['overhead_incl_daemon'] / MIB:.1f} MiB/VM")
            print(f"{n:3} VMs {who:5}: ready median {statistics.median(r['ready']):6.2f} s "
                  f"(max {max(r['ready']):.2f}), RSS {r['rss'] / MIB:7.1f} MiB, guest RAM "
                  f"touched {r['touched'] / MIB:7.1f} MiB, overhead {r['overhead'] / MIB:6.1f} "
                  f"MiB/VM{extra}", flush=True)
    print("\nsummary (vmk / QEMU):")
    for n in counts:
        v = next(r for c, w, r in rows if c == n and w == "vmk")
        q = next(r for c, w, r in rows if c == n and w == "QEMU")
        print(f"  {n:3} VMs: overhead/VM {v['overhead'] / MIB:.1f} vs {q['overhead'] / MIB:.1f} "
              f"MiB ({v['overhead'] / q['overhead']:.2f}x), start->ready median "
              f"{statistics.median(v['ready']):.2f} vs {statistics.median(q['ready']):.2f} s "
              f"({statistics.median(v['ready']) / statistics.median(q['ready']):.2f}x)")


if __name__ == "__main__":
    main()
