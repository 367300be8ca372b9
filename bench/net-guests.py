#!/usr/bin/env python3
"""Guest-to-guest TCP throughput with iperf3: vmk vs QEMU TCG, in one run.

  vmk   A `vmk host start` with a fresh host directory; through its API: vSwitch sw0, port
        group lan (VLAN 0, no shaping), two VMs (1 vCPU, --memory) with one NIC on lan. The
        server guest runs `iperf3 -s`, the client waits until it can ping the server and runs
        `iperf3 -c SERVER -t SECS`; the rate is the client's "receiver" line (what the
        server got), read from its console log through the API.
  QEMU  Two `qemu-system-riscv64 -machine virt` (TCG, 1 vCPU) with the same kernel, initrd
        and command line, each with `-device virtio-net-device` on a TAP; both TAPs are
        ports of a Linux bridge. QEMU runs inside a private network namespace, so its TAPs
        and the bridge live there and nothing touches the host's network.

The guests are the same image (busybox + iperf3), whose init script reads its role from the
kernel command line (vmk.role=server|client). Each part runs --runs times (fresh guests
each time); medians are printed with vmk/QEMU. Only the Python standard library is used.
Entry point: bench/net-guests.sh (builds vmk first).
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import describe_git, ensure_image, load, locate_vms, wait_idle
from host import api

SCRIPT = r"""
arg() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /proc/cmdline; }
role=$(arg vmk.role); peer=$(arg vmk.peer); secs=$(arg vmk.secs)
if [ "$role" = server ]; then
    echo "bench-net: server up"
    iperf3 -s -1 > /dev/null 2>&1
else
    i=0
    while ! ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -ge 600 ] && { echo "bench-net: peer unreachable"; exit 1; }
    done
    # The server may not listen yet.
    i=0
    until iperf3 -c "$peer" -t "$secs" -f k > /tmp/iperf 2>&1; do
        i=$((i + 1)); [ "$i" -ge 60 ] && { echo "bench-net: iperf3 failed"; cat /tmp/iperf; exit 1; }
        sleep 1
    done
    echo "bench-net: result $(grep -E 'receiver$' /tmp/iperf | tail -1)"
fi
sleep 600
"""
APPEND = "console=ttyS0 earlycon=sbi quiet"
RESULT = re.compile(rb"bench-net: result .*?([0-9.]+) Kbits/sec")
MIB = 1 << 20


def result(text):
    m = RESULT.search(text)
    return float(m.group(1)) / 1000.0 if m else None


def bench_vmk(vmk, image, secs, memory, timeout):
    tmp = Path(tempfile.mkdtemp(prefix="vmk-bench-net-"))
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
                sys.exit(f"net-guests.py: error: vmk host did not start; see {tmp / 'host.log'}")
            time.sleep(0.05)
        api(sock, "POST", "/v1/vswitches", {"name": "sw0"})
        api(sock, "POST", "/v1/portgroups", {"name": "lan", "vswitch": "sw0"})
        roles = {"srv": ("server", "10.77.0.1"), "cli": ("client", "10.77.0.2")}
        for name, (role, ip) in roles.items():
            append = (f"{APPEND} vmk.ip={ip}/24 vmk.role={role} vmk.peer=10.77.0.1 "
                      f"vmk.secs={secs}")
            api(sock, "POST", "/v1/vms", {
                "name": name, "cpus": 1, "memory": memory,
                "boot": {"image": str(image), "append": append},
                "nic": [{"portgroup": "lan"}],
            })
        for name in roles:
            api(sock, "POST", f"/v1/vms/{name}/start")
        t = time.monotonic()
        while True:
            text = api(sock, "GET", "/v1/vms/cli/console/log?max_bytes=65536")
            if isinstance(text, str):
                text = text.encode()
            r = result(text)
            if r is not None:
                break
            if b"bench-net: peer unreachable" in text or b"iperf3 failed" in text:
                sys.exit(f"net-guests.py: error: the vmk client failed:\n{text.decode(errors='replace')}")
            if time.monotonic() - t > timeout:
                sys.exit(f"net-guests.py: error: no vmk result after {timeout:.0f} s; host dir {tmp}")
            time.sleep(0.5)
        m = api(sock, "GET", "/v1/vms/srv/metrics")
        for name in roles:
            api(sock, "POST", f"/v1/vms/{name}/poweroff")
        return r, m["nics"][0]
    finally:
        host.send_signal(signal.SIGTERM)
        try:
            host.wait(timeout=30)
        except subprocess.TimeoutExpired:
            host.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def sh(*cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


# QEMU's virtio-net offers checksum and segmentation offloads (vmk's offers none): the
# `qemu-nooffload` variant turns them off so both guests compute checksums and segment TCP.
NO_OFFLOAD = ",csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,host_ufo=off," \
    "guest_tso4=off,guest_tso6=off,guest_ufo=off"


def bench_qemu(qemu, image, secs, memory, timeout, offload=True):
    ns = f"vmk-bench-net-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
    sh("ip", "netns", "add", ns)
    procs = []
    try:
        sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns, "link", "set", "br0", "up")
        roles = [("server", "10.77.0.1", "52:54:00:00:77:01"),
                 ("client", "10.77.0.2", "52:54:00:00:77:02")]
        for i, (role, ip, mac) in enumerate(roles):
            tap = f"tap{i}"
            sh("ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
            sh("ip", "-n", ns, "link", "set", tap, "master", "br0")
            sh("ip", "-n", ns, "link", "set", tap, "up")
            append = f"{APPEND} vmk.ip={ip}/24 vmk.role={role} vmk.peer=10.77.0.1 vmk.secs={secs}"
            cmd = ["ip", "netns", "exec", ns, qemu, "-machine", "virt", "-smp", "1",
                   "-m", f"{memory // MIB}M", "-nographic", "-no-reboot",
                   "-kernel", str(image / "vmlinux"), "-initrd", str(image / "initrd.img"),
                   "-append", append,
                   "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                   "-device", f"virtio-net-device,netdev=n0,mac={mac}"
                   + ("" if offload else NO_OFFLOAD)]
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            os.set_blocking(p.stdout.fileno(), False)
            procs.append(p)
        out = b""
        t = time.monotonic()
        while True:
            try:
                chunk = procs[1].stdout.read()
            except BlockingIOError:
                chunk = None
            if chunk:
                out = (out + chunk)[-65536:]
                r = result(out)
                if r is not None:
                    return r
                if b"peer unreachable" in out or b"iperf3 failed" in out:
                    sys.exit(f"net-guests.py: error: the QEMU client failed:\n{out.decode(errors='replace')}")
            if any(p.poll() is not None for p in procs):
                sys.exit("net-guests.py: error: a QEMU exited before the result")
            if time.monotonic() - t > timeout:
                sys.exit(f"net-guests.py: error: no QEMU result after {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--secs", type=int, default=10, help="iperf3 duration")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--memory", type=int, default=256, metavar="MIB")
    ap.add_argument("--timeout", type=float, default=900, metavar="S")
    ap.add_argument("--vmk", type=Path)
    ap.add_argument("--qemu", default="qemu-system-riscv64")
    ap.add_argument("--vmk-only", action="store_true")
    ap.add_argument("--qemu-only", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=60, metavar="S")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("net-guests.py: error: needs root (network namespace, TAPs, bridge)")
    _, args.vmk, vms = locate_vms(args, "net-guests.sh")
    image = ensure_image(args.vmk, "net-guests", SCRIPT, packages=("iperf3",))
    memory = args.memory * MIB
    print(f"vmk {describe_git()}, load {load()}, iperf3 -t {args.secs}, {args.runs} run(s), "
          f"{args.memory} MiB per guest, 1 vCPU each")
    if "qemu" in vms:
        vms.append("qemu-nooffload")
    rates = {who: [] for who in vms}
    for i in range(args.runs):
        for who in vms:
            _, busy = wait_idle(args.wait_idle)
            if busy >= 0.25:
                print(f"  (host still busy: {busy:.2f} CPUs used by others)")
            if who == "vmk":
                r, nic = bench_vmk(args.vmk, image, args.secs, memory, args.timeout)
                print(f"run {i + 1} vmk : {r:8.2f} Mbit/s (server NIC: rx {nic['rx_frames']} "
                      f"frames, drops {nic['drops']})", flush=True)
            else:
                offload = who == "qemu"
                r = bench_qemu(args.qemu, image, args.secs, memory, args.timeout, offload)
                label = "QEMU" if offload else "QEMU, offloads off"
                print(f"run {i + 1} {label}: {r:8.2f} Mbit/s", flush=True)
            rates[who].append(r)
    med = {who: statistics.median(r) for who, r in rates.items() if r}
    print()
    names = {"vmk": "vmk", "qemu": "QEMU TCG (csum/TSO offloads on)",
             "qemu-nooffload": "QEMU TCG (offloads off)"}
    print(f"{'':34} {'Mbit/s (median)':>16} {'vmk/this':>9}")
    for who, r in med.items():
        ratio = f"{med['vmk'] / r:9.2f}" if "vmk" in med and r else ""
        print(f"{names[who]:34} {r:16.2f} {ratio}")


if __name__ == "__main__":
    main()
