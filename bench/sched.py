"""CPU scheduler benchmark: vmk's scheduler against the thread-per-vCPU baseline
(`[cpu] scheduler = "threads"`, Linux's CFS) with Linux cgroups set from the same shares
and limits (cgroup v1 `cpu.shares` / `cpu.cfs_quota_us` where the v1 cpu controller is
mounted, v2 `cpu.weight` / `cpu.max` otherwise). Each scenario runs a `vmk host start`
with tiny bare-metal guests (no Debian: the figures are the scheduler's) and reads the
vCPUs' CPU time and instructions from the API.

Scenarios:
- fairness 2:1 and 4:2:1: busy 1-vCPU VMs pinned to CPU 0 with those shares; the error is
  the largest relative deviation of a VM's CPU time from its entitlement.
- limit: a busy VM limited to half of one CPU's MHz, alone on CPU 1; error = |used/0.5 - 1|.
- overcommit: 4 busy 1-vCPU VMs on 2 CPUs; total guest MIPS.
- wake-up latency: a guest that sleeps 1 ms on the SBI timer 2000 times, next to a busy VM
  on the same CPU; mean and max lateness of the wake-ups as the guest measures them (its
  `time` CSR, 100 ns ticks).
- idle: 100 idle 1-vCPU VMs whose guests tick at 100 Hz (SBI timer + WFI); the host
  process's CPU use once they are idle, in % of one CPU.
"""

import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

REPO = benchlib.REPO
VMK = REPO / "target/release/vmk"

# ---- a tiny RV64 assembler for the guests ----
ZERO, T0, T1, T2, S1, A0, A1, A6, A7 = 0, 5, 6, 7, 9, 10, 11, 16, 17
S2, S3, S4, S5, T3, T4, T5, T6 = 18, 19, 20, 21, 28, 29, 30, 31
UART, TEST_DEV = 0x1000_0000, 0x10_0000


class Asm:
    def __init__(self):
        self.code = []
        self.fix = []

    def here(self):
        return len(self.code)

    def emit(self, w):
        self.code.append(w & 0xFFFF_FFFF)

    def i(self, op, f3, rd, rs1, imm):
        self.emit(((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op)

    def r(self, f7, rs2, rs1, f3, rd):
        self.emit((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x33)

    def li(self, rd, v):
        upper = (v + 0x800) >> 12
        lower = v - (upper << 12)
        if upper:
            self.emit(((upper & 0xFFFFF) << 12) | (rd << 7) | 0x37)
            self.i(0x13, 0, rd, rd, lower)
        else:
            self.i(0x13, 0, rd, ZERO, lower)

    def addi(self, rd, rs, imm):
        self.i(0x13, 0, rd, rs, imm)

    def csrr(self, rd, csr):
        self.emit((csr << 20) | (2 << 12) | (rd << 7) | 0x73)

    def csrs(self, csr, rs):
        self.emit((csr << 20) | (rs << 15) | (2 << 12) | 0x73)

    def b(self, f3, rs1, rs2, target):
        """Branch to code index `target` (backward or, via label(), forward)."""
        self.fix.append((self.here(), f3, rs1, rs2, target))
        self.emit(0)

    def j(self, target):
        self.fix.append((self.here(), None, 0, 0, target))
        self.emit(0)

    def label(self):
        return [None]

    def bind(self, lab):
        lab[0] = self.here()

    def finish(self):
        for at, f3, rs1, rs2, target in self.fix:
            t = target[0] if isinstance(target, list) else target
            off = (t - at) * 4
            if f3 is None:
                imm = off & 0x1FFFFF
                w = ((imm >> 20) & 1) << 31 | ((imm >> 1) & 0x3FF) << 21 | ((imm >> 11) & 1) << 20
                w |= ((imm >> 12) & 0xFF) << 12 | 0x6F
            else:
                imm = off & 0x1FFF
                w = ((imm >> 12) & 1) << 31 | ((imm >> 5) & 0x3F) << 25 | (rs2 << 20) | (rs1 << 15)
                w |= (f3 << 12) | ((imm >> 1) & 0xF) << 8 | ((imm >> 11) & 1) << 7 | 0x63
            self.code[at] = w
        hdr = bytearray(64)
        hdr[0:4] = struct.pack("<I", 0x0400_006F)  # j +64
        hdr[48:53] = b"RISCV"
        hdr[56:60] = b"RSC\x05"
        return bytes(hdr) + b"".join(struct.pack("<I", w) for w in self.code)


def busy_kernel():
    a = Asm()
    top = a.here()
    a.addi(T0, T0, 1)
    a.addi(T1, T1, 3)
    a.j(top)
    return a.finish()


def print_hex(a, reg):
    """Writes `reg` as 16 hex digits to the UART (T0 holds the UART base)."""
    a.li(T5, 60)
    top = a.here()
    a.r(0, T5, reg, 5, T6)  # srl t6, reg, t5
    a.i(0x13, 7, T6, T6, 15)  # andi t6, t6, 15
    a.li(T2, 10)
    digit = a.label()
    a.b(4, T6, T2, digit)  # blt t6, t2, digit
    a.addi(T6, T6, 39)  # 'a' - '0' - 10
    a.bind(digit)
    a.addi(T6, T6, 48)
    a.emit((T6 << 20) | (T0 << 15) | 0x23)  # sb t6, 0(t0)
    a.addi(T5, T5, -4)
    a.b(5, T5, ZERO, top)  # bge t5, zero, top


def tick_kernel(period_ticks):
    """An idle guest with a periodic tick (as a Linux guest with HZ=100 and no NO_HZ):
    sleeps `period_ticks` on the SBI timer, for ever."""
    a = Asm()
    a.li(T3, 0x20)
    a.csrs(0x104, T3)  # sie.STIE
    loop = a.here()
    a.csrr(A0, 0xC01)
    a.li(T3, period_ticks)
    a.r(0, T3, A0, 0, A0)
    a.li(A7, 0x5449_4D45)
    a.li(A6, 0)
    a.emit(0x0000_0073)  # ecall: set_timer
    a.emit(0x1050_0073)  # wfi
    a.j(loop)
    return a.finish()


def timer_kernel(rounds, period_ticks):
    """Sleeps `period_ticks` on the SBI timer `rounds` times; prints the sum and the max of
    the lateness (ticks past each deadline), then powers off."""
    a = Asm()
    a.li(S1, rounds)
    a.li(S2, 0)
    a.li(S3, 0)
    a.li(T3, 0x20)
    a.csrs(0x104, T3)  # sie.STIE
    loop = a.here()
    a.csrr(S4, 0xC01)  # rdtime
    a.li(T3, period_ticks)
    a.r(0, T3, S4, 0, S5)  # deadline = now + period
    a.addi(A0, S5, 0)
    a.li(A7, 0x5449_4D45)
    a.li(A6, 0)
    a.emit(0x0000_0073)  # ecall: set_timer
    wait = a.here()
    a.emit(0x1050_0073)  # wfi
    a.csrr(T4, 0xC01)
    a.b(6, T4, S5, wait)  # bltu t4, s5: woken early
    a.r(0x20, S5, T4, 0, T4)  # lateness = t4 - deadline
    a.r(0, T4, S2, 0, S2)  # sum
    skip = a.label()
    a.b(7, S3, T4, skip)  # bgeu s3, t4: not a new max
    a.addi(S3, T4, 0)
    a.bind(skip)
    a.addi(S1, S1, -1)
    a.b(1, S1, ZERO, loop)  # bne s1, zero
    a.li(T0, UART)
    for ch in b"lat ":
        a.li(T6, ch)
        a.emit((T6 << 20) | (T0 << 15) | 0x23)
    print_hex(a, S2)
    a.li(T6, ord(" "))
    a.emit((T6 << 20) | (T0 << 15) | 0x23)
    print_hex(a, S3)
    a.li(T6, ord("\n"))
    a.emit((T6 << 20) | (T0 << 15) | 0x23)
    a.li(T0, TEST_DEV)
    a.li(T1, 0x5555)
    a.emit((T1 << 20) | (T0 << 15) | (2 << 12) | 0x23)  # sw t1, 0(t0)
    end = a.here()
    a.j(end)
    return a.finish()


# ---- cgroups for the baseline ----
class Cgroups:
    """Per-VM cpu cgroups for the thread-per-vCPU baseline (v1 cpu controller if mounted,
    else v2)."""

    def __init__(self, name):
        self.v1 = Path("/sys/fs/cgroup/cpu")
        if (self.v1 / "cpu.shares").exists():
            self.root = self.v1 / name
            self.kind = "v1"
        else:
            self.root = Path("/sys/fs/cgroup") / name
            self.kind = "v2"
            try:
                Path("/sys/fs/cgroup/cgroup.subtree_control").write_text("+cpu")
            except OSError:
                pass
        self.root.mkdir(exist_ok=True)
        if self.kind == "v2":
            try:
                (self.root / "cgroup.subtree_control").write_text("+cpu")
            except OSError:
                pass
        self.made = []

    def put(self, vm, tids, shares=None, limit_frac=None):
        g = self.root / vm
        g.mkdir(exist_ok=True)
        self.made.append(g)
        if self.kind == "v1":
            if shares:
                (g / "cpu.shares").write_text(str(max(2, shares * 1024 // 1000)))
            if limit_frac:
                (g / "cpu.cfs_period_us").write_text("100000")
                (g / "cpu.cfs_quota_us").write_text(str(int(100000 * limit_frac)))
            for t in tids:
                (g / "tasks").write_text(str(t))
        else:
            if shares:
                (g / "cpu.weight").write_text(str(max(1, min(10000, shares // 10))))
            if limit_frac:
                (g / "cpu.max").write_text(f"{int(100000 * limit_frac)} 100000")
            try:
                (g / "cgroup.type").write_text("threaded")
            except OSError:
                pass
            for t in tids:
                (g / "cgroup.threads").write_text(str(t))

    def cleanup(self):
        for g in reversed(self.made):
            parent = self.root.parent if self.kind == "v1" else Path("/sys/fs/cgroup")
            tasks = "tasks" if self.kind == "v1" else "cgroup.threads"
            try:
                for t in (g / tasks).read_text().split():
                    try:
                        (parent / tasks).write_text(t)
                    except OSError:
                        pass
                g.rmdir()
            except OSError:
                pass
        try:
            self.root.rmdir()
        except OSError:
            pass


# ---- a host ----
class Host:
    def __init__(self, work, mode):
        self.dir = Path(work) / mode
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "vmk.sock"
        cfg = self.dir / "host.toml"
        cfg.write_text(f'dir = "{self.dir}/inv"\nsocket = "{self.sock}"\n[cpu]\nscheduler = "{mode}"\n')
        self.log = open(self.dir / "host.log", "w")  # noqa: SIM115 (open while the host runs)
        self.proc = subprocess.Popen([str(VMK), "host", "start", "--config", str(cfg)],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        t = time.monotonic()
        while not self.sock.exists():
            if time.monotonic() - t > 30 or self.proc.poll() is not None:
                raise SystemExit(f"the {mode} host did not start; see {self.dir}/host.log")
            time.sleep(0.05)
        self.mhz = self.json(["host", "info", "--json"])["cpu"]["cpu_mhz"]

    def vmk(self, args):
        r = subprocess.run([str(VMK), *args, "--socket", str(self.sock)], check=False, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise SystemExit(f"vmk {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def json(self, args):
        return json.loads(self.vmk(args))

    def vm(self, name, kernel, resources="", memory="64M"):
        f = self.dir / f"{name}.toml"
        f.write_text(f'name = "{name}"\ncpus = 1\nmemory = "{memory}"\n[boot]\nkernel = "{kernel}"\n'
                     f"[resources]\n{resources}\n")
        self.vmk(["vm", "create", str(f)])
        self.vmk(["vm", "start", name])

    def poweroff(self, *names):
        for n in names:
            subprocess.run([str(VMK), "vm", "poweroff", n, "--socket", str(self.sock)], check=False,
                           capture_output=True)

    def metrics(self):
        m = json.loads(subprocess.run(["curl", "-s", "--unix-socket", str(self.sock), "http://vmk/v1/metrics"],
                                      capture_output=True, text=True, check=True).stdout)
        return {v["name"]: v for v in m["vms"]}

    def vcpu_tids(self, name, vcpus=1):
        """The baseline's vCPU threads of VM `name` (named `<vm>/vcpu<i>`), once all exist."""
        t0 = time.monotonic()
        while True:
            tids = []
            for t in Path(f"/proc/{self.proc.pid}/task").iterdir():
                try:
                    if (t / "comm").read_text().strip().startswith(name[:10] + "/vcpu"):
                        tids.append(int(t.name))
                except OSError:
                    pass
            if len(tids) >= vcpus:
                return tids
            if time.monotonic() - t0 > 10:
                raise SystemExit(f"VM {name}: its vCPU threads did not show up")
            time.sleep(0.02)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def used(m0, m1, name):
    def s(m, k):
        return sum(c[k] for c in m[name]["vcpus"])

    return (s(m1, "cpu_time_ns") - s(m0, "cpu_time_ns")) / 1e9, (s(m1, "instret") - s(m0, "instret"))


def window(host, names, secs):
    m0, t0 = host.metrics(), time.monotonic()
    time.sleep(secs)
    m1, wall = host.metrics(), time.monotonic() - t0
    return wall, {n: used(m0, m1, n) for n in names}


def scenario_shares(host, mode, cg, kernel, shares, secs, tag):
    names = [f"{tag}{i}" for i in range(len(shares))]
    for n, s in zip(names, shares):
        host.vm(n, kernel, f"cpu_shares = {s}\ncpu_affinity = [0]")
        if cg:
            cg.put(n, host.vcpu_tids(n), shares=s)
    time.sleep(1)
    _, u = window(host, names, secs)
    host.poweroff(*names)
    total = sum(u[n][0] for n in names)
    err = max(abs(u[n][0] / total / (s / sum(shares)) - 1) for n, s in zip(names, shares))
    return err, [round(u[n][0], 2) for n in names]


def scenario_limit(host, mode, cg, kernel, secs):
    host.vm("lim", kernel, f"cpu_limit_mhz = {host.mhz // 2}\ncpu_affinity = [1]")
    if cg:
        cg.put("lim", host.vcpu_tids("lim"), limit_frac=0.5)
    time.sleep(1)
    wall, u = window(host, ["lim"], secs)
    host.poweroff("lim")
    frac = u["lim"][0] / wall
    return abs(frac / 0.5 - 1), frac


def scenario_overcommit(host, kernel, secs):
    names = [f"oc{i}" for i in range(4)]
    for n in names:
        host.vm(n, kernel)
    time.sleep(1)
    wall, u = window(host, names, secs)
    host.poweroff(*names)
    return sum(u[n][1] for n in names) / wall / 1e6


def process_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def scenario_idle(host, kernel, count, secs):
    """`count` idle VMs with a 100 Hz tick: the host's CPU use once they are idle."""
    names = [f"idle{i}" for i in range(count)]
    for n in names:
        host.vm(n, kernel, memory="16M")
    time.sleep(3)
    c0, t0 = process_cpu(host.proc.pid), time.monotonic()
    time.sleep(secs)
    frac = (process_cpu(host.proc.pid) - c0) / (time.monotonic() - t0)
    host.poweroff(*names)
    return frac


def scenario_latency(host, busy, timer):
    host.vm("spin", busy, "cpu_affinity = [0]")
    host.vm("tick", timer, "cpu_affinity = [0]")
    t = time.monotonic()
    while time.monotonic() - t < 120:
        r = subprocess.run(["curl", "-s", "--unix-socket", str(host.sock), "http://vmk/v1/vms/tick/console/log"],
                           check=False, capture_output=True, text=True)
        log = r.stdout
        if "lat " in log and "\n" in log.split("lat ", 1)[1]:
            break
        time.sleep(0.5)
    host.poweroff("spin", "tick")
    m = re.search(r"lat ([0-9a-f]{16}) ([0-9a-f]{16})", log)
    if not m:
        raise SystemExit(f"the timer guest did not report: {log!r}")
    total, worst = int(m.group(1), 16), int(m.group(2), 16)
    return total / ROUNDS / 10.0, worst / 10.0  # ticks of 100 ns -> us


ROUNDS = 2000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=float, default=6, help="length of each measuring window")
    ap.add_argument("--wait-idle", type=float, default=60)
    ap.add_argument("--idle-vms", type=int, default=100, help="VMs of the idle scenario")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/sched.sh needs root (cgroups for the baseline)")
    waited, busy = benchlib.wait_idle(args.wait_idle)
    print(f"# vmk {benchlib.describe_git()}, load {benchlib.load()}, other processes {busy:.2f} CPUs "
          f"(waited {waited:.0f} s)")
    work = Path(tempfile.mkdtemp(prefix="vmk-sched-bench-"))
    busy_k = work / "busy.Image"
    busy_k.write_bytes(busy_kernel())
    timer_k = work / "timer.Image"
    timer_k.write_bytes(timer_kernel(ROUNDS, 10_000))
    tick_k = work / "tick.Image"
    tick_k.write_bytes(tick_kernel(100_000))
    rows = {}
    for mode in ("vmk", "threads"):
        host = Host(work, mode)
        cg = Cgroups(f"vmk-bench-{os.getpid()}") if mode == "threads" else None
        try:
            r = {}
            r["fair21"], r["fair21_used"] = scenario_shares(host, mode, cg, busy_k, [2000, 1000], args.secs, "f")
            r["fair421"], r["fair421_used"] = scenario_shares(host, mode, cg, busy_k, [4000, 2000, 1000],
                                                              args.secs, "g")
            r["limit_err"], r["limit_frac"] = scenario_limit(host, mode, cg, busy_k, args.secs)
            r["mips"] = scenario_overcommit(host, busy_k, args.secs)
            r["lat_mean"], r["lat_max"] = scenario_latency(host, busy_k, timer_k)
            r["idle"] = scenario_idle(host, tick_k, args.idle_vms, args.secs)
            rows[mode] = r
        finally:
            host.stop()
            if cg:
                cg.cleanup()
    v, t = rows["vmk"], rows["threads"]
    print(f"{'':34} {'vmk':>14} {'threads+cgroups':>16}")
    print(f"{'fairness error, shares 2:1':34} {v['fair21'] * 100:13.2f}% {t['fair21'] * 100:15.2f}%"
          f"   (CPU s: {v['fair21_used']} vs {t['fair21_used']})")
    print(f"{'fairness error, shares 4:2:1':34} {v['fair421'] * 100:13.2f}% {t['fair421'] * 100:15.2f}%"
          f"   (CPU s: {v['fair421_used']} vs {t['fair421_used']})")
    print(f"{'limit error, half a CPU':34} {v['limit_err'] * 100:13.2f}% {t['limit_err'] * 100:15.2f}%"
          f"   (used {v['limit_frac']:.3f} vs {t['limit_frac']:.3f} of a CPU)")
    print(f"{'guest MIPS, 4 busy VMs on 2 CPUs':34} {v['mips']:14.0f} {t['mips']:16.0f}   "
          f"(ratio {v['mips'] / t['mips']:.2f})")
    print(f"{'timer wake-up lateness, mean us':34} {v['lat_mean']:14.1f} {t['lat_mean']:16.1f}")
    print(f"{'timer wake-up lateness, max us':34} {v['lat_max']:14.1f} {t['lat_max']:16.1f}")
    print(f"{f'host CPU, {args.idle_vms} idle VMs (100 Hz tick)':34} {v['idle'] * 100:13.1f}% {t['idle'] * 100:15.1f}%"
          "   (% of one CPU)")


if __name__ == "__main__":
    main()
