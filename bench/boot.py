#!/usr/bin/env python3
"""Boot benchmark: a Debian riscv64 guest under vmk and under QEMU TCG, same kernel and initrd.

What it measures, per run, from host timestamps (time.monotonic) taken when each console line
arrives on the VM process's stdout, counted from just before the process is started:

  kernel banner   the line "Linux version ..."     (firmware, loading and the kernel until its
                                                   earlycon is up; QEMU runs OpenSBI first)
  boot to ready   the line "vmk-guest: ready"      (kernel boot + /init: mounts, insmod, NICs)
  banner to ready the difference: kernel init + /init alone, without the firmware and the
                  kernel's work before its earlycon is up (under QEMU 7.2 that stretch takes
                  about 2 s, under vmk about 0.15 s; `nokaslr` does not change it)
  sha256 32 MiB   between the two markers the init script prints around
                  `dd if=/dev/zero bs=1M count=32 | sha256sum` (a CPU-bound guest workload)
  total           until the process has exited (guest poweroff -f, VM torn down)

How: one image is built with `vmk image build --out DIR --init-script S` into
<cache>/bench/boot-<key> (cache = $VMK_CACHE, else $XDG_CACHE_HOME/vmk, else ~/.cache/vmk, the
image builder's own default) and reused while the init script and the vmk-image sources are
unchanged (--rebuild forces a build). Its vmlinux and initrd.img are then booted alternately in

  vmk:  target/release/vmk run --image DIR --memory 512M --cpus N --append A
  QEMU: qemu-system-riscv64 -machine virt -smp N -m 512M -nographic -no-reboot
        -kernel DIR/vmlinux -initrd DIR/initrd.img -append A      (default OpenSBI firmware)

with A = "console=ttyS0 earlycon=sbi", --runs times each. A run fails (loudly; the script
exits 1) if it times out (it is killed), exits non-zero, does not report
`vmk-guest: exit-status 0`, misses a marker, or prints a sha256 other than the one computed
here for 32 MiB of zeros. Each run's console, with the arrival time of every line, is kept in
the log directory (default target/bench-boot/<date-time>/).

Prints medians with min/max of the successful runs for vmk and QEMU, the ratio of medians and
the host load average (before and after; the machine should be otherwise idle). Before each
run it waits (--wait-idle, up to 120 s) until other processes use under 1/4 CPU, and for each
run it reports the CPU the VM process used and what other processes used meanwhile (from
/proc/stat minus the child's rusage), so noisy runs can be spotted.
Only the Python standard library is used. Entry point: bench/boot.sh (builds vmk first).
"""

import argparse
import datetime
import hashlib
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    busy_cores,
    cpu_jiffies,
    describe_git,
    ensure_image,
    load,
    locate_vms,
    run_console,
    wait_idle,
)

APPEND = "console=ttyS0 earlycon=sbi"
READY = "vmk-guest: ready"
EXIT_STATUS = "vmk-guest: exit-status "
START_MARK = "vmk-bench: sha256 start"
END_MARK = "vmk-bench: sha256 end"
BANNER = "Linux version "
ZERO_MIB = 32
EXPECTED_SHA = hashlib.sha256(bytes(ZERO_MIB << 20)).hexdigest()
SHA_RE = re.compile(r"\b([0-9a-f]{64})\b")

INIT_SCRIPT = f"""\
# vmk bench/boot.py workload: the host timestamps the two markers.
echo "{START_MARK}"
dd if=/dev/zero bs=1M count={ZERO_MIB} | sha256sum
echo "{END_MARK}"
exit 0
"""

# (key, label) in table order.
METRICS = [
    ("banner", "kernel banner"),
    ("ready", "boot to ready"),
    ("kboot", "banner to ready"),
    ("sha", f"sha256 {ZERO_MIB} MiB"),
    ("total", "total"),
]


def die(msg):
    print(f"boot.py: error: {msg}", file=sys.stderr)
    sys.exit(2)



class RunError(Exception):
    pass


def boot_once(name, cmd, timeout, log_path):
    """Runs one VM; returns {metric: seconds}. Raises RunError with the reason on failure."""
    lines = []  # (t, text)
    marks = {}
    err_path = log_path.with_suffix(".stderr")

    def take_line(t, raw):
        text = raw.decode("utf-8", "replace").rstrip("\r")
        lines.append((t, text))
        if "banner" not in marks and BANNER in text:
            marks["banner"] = t
        if text.endswith(READY) and "ready" not in marks:
            marks["ready"] = t
        if text.endswith(START_MARK) and "start" not in marks:
            marks["start"] = t
        if text.endswith(END_MARK) and "end" not in marks:
            marks["end"] = t
        if "start" in marks and "end" not in marks and "sha" not in marks:
            m = SHA_RE.search(text)
            if m:
                marks["sha"] = m.group(1)
        i = text.rfind(EXIT_STATUS)
        if i >= 0:
            marks["status"] = text[i + len(EXIT_STATUS):].strip()

    with open(err_path, "wb") as err:
        returncode, t_exit, vm_cpu, others, timed_out = run_console(
            cmd, timeout, err, take_line)

    with open(log_path, "w") as f:
        f.write(f"# {' '.join(cmd)}\n# exit status {returncode}, {t_exit:.3f} s, "
                f"VM process CPU {vm_cpu:.2f} s, other host load {others:.2f} CPUs\n")
        f.writelines(f"[{t:9.3f}] {text}\n" for t, text in lines)

    problems = []
    if timed_out:
        problems.append(f"timed out after {timeout:.0f} s (killed)")
    elif returncode != 0:
        problems.append(f"exit status {returncode}")
    for k, what in (("banner", f"'{BANNER}...'"), ("ready", f"'{READY}'"),
                    ("start", f"'{START_MARK}'"), ("end", f"'{END_MARK}'")):
        if k not in marks:
            problems.append(f"no {what} line")
    if "start" in marks and "end" in marks:
        if "sha" not in marks:
            problems.append("no sha256 printed between the markers")
        elif marks["sha"] != EXPECTED_SHA:
            problems.append(f"WRONG sha256 {marks['sha']} (expected {EXPECTED_SHA})")
    if marks.get("status") != "0" and not timed_out:
        problems.append(f"guest exit-status {marks.get('status', 'missing')}")
    if problems:
        tail = "\n".join(f"    [{t:8.3f}] {s}" for t, s in lines[-15:])
        err_tail = ""
        try:
            e = err_path.read_text(errors="replace").strip().splitlines()[-10:]
            if e:
                err_tail = "\n  stderr:\n" + "\n".join("    " + s for s in e)
        except OSError:
            pass
        raise RunError(
            "; ".join(problems)
            + f"\n  console tail ({log_path}):\n{tail}{err_tail}"
        )
    return {
        "banner": marks["banner"],
        "ready": marks["ready"],
        "kboot": marks["ready"] - marks["banner"],
        "sha": marks["end"] - marks["start"],
        "total": t_exit,
        "vm_cpu": vm_cpu,
        "others": others,
    }



def fmt_s(x):
    return f"{x:.2f} s" if x < 100 else f"{x:.1f} s"


def main():
    ap = argparse.ArgumentParser(
        description="Boot a Debian riscv64 guest under vmk and QEMU and compare the times.")
    ap.add_argument("--runs", type=int, default=5, help="boots per VM (default 5)")
    ap.add_argument("--cpus", type=int, default=1, help="vCPUs for both (default 1)")
    ap.add_argument("--memory", default="512M", help="guest memory (default 512M)")
    ap.add_argument("--timeout", type=float, default=300, help="per run, seconds (default 300)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--vmk-only", action="store_true")
    g.add_argument("--qemu-only", action="store_true")
    ap.add_argument("--vmk", type=Path, default=None,
                    help="vmk binary (default: $CARGO_TARGET_DIR or target, release/vmk)")
    ap.add_argument("--qemu", default="qemu-system-riscv64")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the image even if cached")
    ap.add_argument("--log-dir", type=Path, default=None,
                    help="where console logs go (default target/bench-boot/<date-time>)")
    ap.add_argument("--wait-idle", type=float, default=120, metavar="S",
                    help="before each run, wait up to S seconds until other processes use "
                         "less than 1/4 of a CPU (default 120; 0 = don't wait)")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    args = ap.parse_args()
    if args.runs < 1 or args.cpus < 1:
        die("--runs and --cpus must be at least 1")

    target, vmk, vms = locate_vms(args, "boot.sh")

    load_before = load()
    a = cpu_jiffies()
    time.sleep(1)
    busy = busy_cores(a, cpu_jiffies())
    print(f"host: {os.cpu_count()} cpus, load average {load_before} (1/5/15 min), "
          f"{busy:.2f} CPUs busy now")
    if busy >= 0.25 and args.wait_idle <= 0:
        print("host: WARNING: the machine is busy; timings will be noisy", flush=True)
    image = ensure_image(vmk, "boot", INIT_SCRIPT, rebuild=args.rebuild)
    log_dir = args.log_dir or target / "bench-boot" / datetime.datetime.now().strftime(
        "%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)

    cmds = {
        "vmk": [str(vmk), "run", "--image", str(image), "--memory", args.memory,
                "--cpus", str(args.cpus), "--append", APPEND],
        "qemu": [args.qemu, "-machine", "virt", "-smp", str(args.cpus), "-m", args.memory,
                 "-nographic", "-no-reboot", "-kernel", str(image / "vmlinux"),
                 "-initrd", str(image / "initrd.img"), "-append", APPEND],
    }
    qver = ""
    if "qemu" in vms:
        qver = subprocess.run([args.qemu, "--version"], check=False, capture_output=True,
                              text=True).stdout.splitlines()[0]
    print(f"vmk:  {describe_git()} ({vmk})")
    if qver:
        print(f"qemu: {qver}")
    print(f"runs: {args.runs} each, alternating; {args.cpus} vCPU, {args.memory}; "
          f"timeout {args.timeout:.0f} s; logs in {log_dir}")
    print(f"expected sha256 of {ZERO_MIB} MiB of zeros: {EXPECTED_SHA}\n", flush=True)

    results = {vm: [] for vm in vms}
    failures = []
    for i in range(1, args.runs + 1):
        for vm in vms:
            log = log_dir / f"{vm}-{i}.log"
            if args.wait_idle > 0:
                waited, busy = wait_idle(args.wait_idle)
                if busy >= 0.25:
                    print(f"host: still busy ({busy:.2f} CPUs) after waiting {waited:.0f} s; "
                          "running anyway", flush=True)
                elif waited > 3:
                    print(f"host: waited {waited:.0f} s for other processes", flush=True)
            try:
                r = boot_once(vm, cmds[vm], args.timeout, log)
            except RunError as e:
                failures.append((vm, i, str(e)))
                print(f"{vm:4} run {i}: FAILED: {e}", flush=True)
                if args.fail_fast:
                    break
                continue
            results[vm].append(r)
            print(f"{vm:4} run {i}: " + ", ".join(
                f"{label} {r[k]:.2f} s" for k, label in METRICS)
                + f"; VM process CPU {r['vm_cpu']:.1f} s, others used {r['others']:.2f} CPUs",
                flush=True)
        if failures and args.fail_fast:
            break

    load_after = load()
    print()
    cell = 26
    head = f"{'metric':16}" + "".join(f"{vm + ' median (min-max)':>{cell}}" for vm in vms)
    if len(vms) == 2:
        head += f"{'vmk/qemu':>10}"
    print(head)
    for k, label in METRICS:
        row = f"{label:16}"
        meds = {}
        for vm in vms:
            xs = [r[k] for r in results[vm]]
            if xs:
                meds[vm] = statistics.median(xs)
                c = f"{fmt_s(meds[vm])} ({min(xs):.2f}-{max(xs):.2f})"
            else:
                c = "-"
            row += f"{c:>{cell}}"
        if len(vms) == 2:
            if len(meds) == 2 and meds["qemu"] > 0:
                ratio = meds["vmk"] / meds["qemu"]
                row += f"{ratio:>9.2f}x" if ratio < 1 else f"{ratio:>9.1f}x"
            else:
                row += f"{'-':>10}"
        print(row)
    if any(results.values()):
        print("other host load during the runs (mean CPUs used by other processes): "
              + ", ".join(f"{vm} {statistics.mean(r['others'] for r in results[vm]):.2f}"
                          for vm in vms if results[vm]))
    print("successful runs: " + ", ".join(f"{vm} {len(results[vm])}/{args.runs}" for vm in vms))
    print(f"host load average: before {load_before}, after {load_after} (1/5/15 min, "
          f"{os.cpu_count()} cpus)")
    if failures:
        print(f"\nFAILED: {len(failures)} run(s):", file=sys.stderr)
        for vm, i, e in failures:
            print(f"  {vm} run {i}: {e.splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
