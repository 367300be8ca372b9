#!/usr/bin/env python3
"""Disk benchmarks for GitHub issue 4: vmk against QEMU, medians and ratios from one run.

  disk.py convert   host side, no guest: `vmk disk convert` against `qemu-img convert`
  disk.py fio       fio in a Debian riscv64 guest: `vmk run` against qemu-system-riscv64 TCG

convert
  A source disk is made once per invocation in the log directory's work/: a sparse raw file of
  --size (2 GiB) with --data (512 MiB) of random bytes (seeded) written in --chunk (1 MiB)
  pieces at scattered, distinct, chunk-aligned offsets, turned into a monolithicSparse VMDK by
  `qemu-img convert -O vmdk -o subformat=monolithicSparse` (checked with `qemu-img compare`).
  Then, after --warmup untimed rounds (default 1), --runs times, alternately (the order of
  the two tools flips every round):

    to vmdk  vmk disk convert SRC DST --type monolithicSparse
             qemu-img convert -f vmdk -O vmdk -o subformat=monolithicSparse SRC DST
    to raw   vmk disk convert SRC DST --type raw
             qemu-img convert -f vmdk -O raw SRC DST

  Two times per run: "process", from start to exit of the command, and "+ fsync", that plus
  an fsync of the output done here afterwards, i.e. until the copy is on disk. The second is
  the fair one: `vmk disk convert` fdatasyncs its output before exiting, qemu-img convert
  (cache mode `unsafe` for the output by default) does not. Between runs (untimed) the output
  is checked with `qemu-img compare` against the source (and `qemu-img check` for VMDKs) —
  any difference fails the run loudly — then deleted, and the host's dirty pages are flushed
  (sync) so no run pays for the previous one's write-back. The source stays in the page cache
  for both tools. Also shown: the output's allocated size and each run's CPU time. Both tools
  spend most of their time in the kernel copying into the page cache; on a VM host whose
  memory is backed lazily (e.g. Firecracker) that copy is several times slower into memory
  touched for the first time, which makes single runs noisy: compare the medians.

fio
  One image is built with `vmk image build --package fio --init-script S` into
  <cache>/bench/disk-fio-<key> (cache = $VMK_CACHE, else $XDG_CACHE_HOME/vmk, else
  ~/.cache/vmk, as bench/boot.py) and reused while the script and the vmk-image sources are
  unchanged (--rebuild forces a build). Each run gets a fresh sparse raw disk of --disk-size
  (1 GiB), and boots the image alternately in

    vmk:  vmk run --image DIR --memory 1G --cpus 1 --append A --disk DISK
    QEMU: qemu-system-riscv64 -machine virt -smp 1 -m 1G -nographic -no-reboot
          -kernel DIR/vmlinux -initrd DIR/initrd.img -append A
          -drive file=DISK,format=raw,if=none,id=d0,cache=none -device virtio-blk-device,drive=d0

  where A = "console=ttyS0 earlycon=sbi vmk.fio.seq=256M vmk.fio.seqtime=0 vmk.fio.rand=64M
  vmk.fio.runtime=10" carries the job parameters to the init script. In the guest, on
  /dev/vda, one fio process per job (--direct=1 --ioengine=psync --iodepth=1, in this order
  so that reads read written data):

    seqwrite   --rw=write     --bs=1M --size=256M     (+ --time_based --runtime=S with
    seqread    --rw=read      --bs=1M --size=256M      --seq-runtime S; default one pass)
    randwrite  --rw=randwrite --bs=4k --size=64M --time_based --runtime=10
    randread   --rw=randread  --bs=4k --size=64M --time_based --runtime=10

  Each job's `--output-format=json` is printed on the console between markers and parsed
  here: bandwidth (MiB/s, fio's KiB/s / 1024) for the sequential jobs, IOPS for the random
  ones, and the mean completion latency. A run fails if it times out, exits non-zero, does
  not report `vmk-guest: exit-status 0`, or a job's json is missing, malformed, reports an
  error or moved no data. The guest's clock (fio's runtime) is checked against the host's
  time between a job's markers. Note: QEMU's cache=none opens the disk with O_DIRECT on the
  host; vmk's raw backend uses buffered I/O (fdatasync on a guest FLUSH) — use --qemu-cache
  writeback to compare like with like.

Common: before each timed run it waits (--wait-idle, up to 120 s) until other processes use
under 1/4 CPU, and reports per run the CPU the child used and what other processes used
meanwhile (from /proc/stat minus the child's rusage), plus the load average before and after.
Each command, its output and timings are kept in the log directory (default
target/bench-disk/<date-time>/). Exits 1 if any run failed, 2 on a setup error.
Only the Python standard library is used. Entry point: bench/disk.sh (builds vmk first).
"""

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    REPO,
    busy_cores,
    children_cpu,
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
BANNER = "Linux version "
MIB = 1 << 20


def die(msg):
    print(f"disk.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


class RunError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Host helpers (as in bench/boot.py)



def before_run(args):
    if args.wait_idle <= 0:
        return
    waited, busy = wait_idle(args.wait_idle)
    if busy >= 0.25:
        print(f"host: still busy ({busy:.2f} CPUs) after waiting {waited:.0f} s; "
              "running anyway", flush=True)
    elif waited > 3:
        print(f"host: waited {waited:.0f} s for other processes", flush=True)



def parse_size(s):
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"'{s}' is not a size (examples: 512M, 2G)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def fmt_size(n):
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def version_line(cmd):
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True,
                             timeout=30).stdout
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_host_header(args):
    load_before = load()
    a = cpu_jiffies()
    time.sleep(1)
    busy = busy_cores(a, cpu_jiffies())
    print(f"host: {os.cpu_count()} cpus, load average {load_before} (1/5/15 min), "
          f"{busy:.2f} CPUs busy now", flush=True)
    if busy >= 0.25 and args.wait_idle <= 0:
        print("host: WARNING: the machine is busy; timings will be noisy", flush=True)
    return load_before


def tail_text(path, n=15):
    try:
        lines = path.read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("    " + s for s in lines)


def print_table(title, rows, names, ratio_label, cell=30):
    """rows: [(label, {name: [values]}, fmt(value) -> str, ratio(meds) -> str or None)]."""
    print(title)
    width = max(len(r[0]) for r in rows) + 2
    head = f"{'':{width}}" + "".join(f"{n + ' median (min-max)':>{cell}}" for n in names)
    if ratio_label:
        head += f"{ratio_label:>14}"
    print(head)
    for label, vals, fmt, ratio in rows:
        row = f"{label:{width}}"
        meds = {}
        for n in names:
            xs = vals.get(n, [])
            if xs:
                meds[n] = statistics.median(xs)
                c = f"{fmt(meds[n])} ({fmt(min(xs), False)}-{fmt(max(xs), False)})"
            else:
                c = "-"
            row += f"{c:>{cell}}"
        if ratio_label:
            r = ratio(meds) if len(meds) == len(names) else None
            row += f"{r or '-':>14}"
        print(row)


def fmt_ratio(r):
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


# ---------------------------------------------------------------------------------------------
# convert


def make_source(work, qemu_img, size, data, chunk, seed, timeout):
    """Writes work/src.raw (sparse, `data` bytes of random data in `chunk` pieces) and converts
    it to work/src.vmdk (monolithicSparse) with qemu-img. Returns the VMDK's path."""
    if chunk <= 0 or size % chunk or data % chunk or data > size:
        die(f"--size {size} and --data {data} must be multiples of --chunk {chunk}, "
            "with data <= size")
    raw = work / "src.raw"
    vmdk = work / "src.vmdk"
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(size // chunk), data // chunk))
    t = time.monotonic()
    with open(raw, "wb") as f:
        f.truncate(size)
        for s in slots:
            f.seek(s * chunk)
            f.write(rng.randbytes(chunk))
    cmd = [qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse",
           str(raw), str(vmdk)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        die(f"making the source: `{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}")
    r = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "vmdk", str(raw), str(vmdk)],
                       check=False, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        die(f"making the source: {vmdk} differs from {raw}: {r.stdout.strip()} "
            f"{r.stderr.strip()}")
    raw.unlink()
    alloc = vmdk.stat().st_blocks * 512
    print(f"source: {vmdk}: {fmt_size(size)} monolithicSparse VMDK, {len(slots)} x "
          f"{fmt_size(chunk)} random chunks ({fmt_size(data)}, seed {seed}) at scattered "
          f"offsets; file {alloc / MIB:.0f} MiB allocated; made in "
          f"{time.monotonic() - t:.1f} s", flush=True)
    return vmdk


def convert_once(cmd, dst, timeout, log_path):
    """Runs one conversion; returns (process s, process + fsync s, child CPU s, others CPUs).
    Raises RunError on failure."""
    j0, c0 = cpu_jiffies(), children_cpu()
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"# {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RunError(f"timed out after {timeout:.0f} s (killed); log {log_path}")
        t1 = time.monotonic()
        if rc != 0:
            raise RunError(f"exit status {rc}; log {log_path}:\n{tail_text(log_path)}")
        if not dst.exists():
            raise RunError(f"exit status 0 but no {dst}; log {log_path}")
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        t2 = time.monotonic()
        j1, c1 = cpu_jiffies(), children_cpu()
        cpu = c1 - c0
        others = max(0.0, busy_cores(j0, j1) - cpu / (t2 - t0)) if t2 > t0 else 0.0
        log.write(f"# exit status 0; process {t1 - t0:.3f} s, + fsync {t2 - t0:.3f} s, "
                  f"CPU {cpu:.2f} s, other host load {others:.2f} CPUs\n")
    return t1 - t0, t2 - t0, cpu, others


def verify(qemu_img, src, dst, fmt, timeout, log_path):
    """qemu-img compare (and check for VMDKs) of an output against the source."""
    cmds = []
    if fmt == "vmdk":
        cmds.append([qemu_img, "check", "-f", "vmdk", str(dst)])
    cmds.append([qemu_img, "compare", "-f", "vmdk", "-F", fmt, str(src), str(dst)])
    with open(log_path, "a") as log:
        for cmd in cmds:
            try:
                r = subprocess.run(cmd, check=False, capture_output=True, text=True,
                                   timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RunError(f"VERIFY: `{' '.join(cmd)}` timed out")
            log.write(f"# {' '.join(cmd)} -> {r.returncode}\n{r.stdout}{r.stderr}")
            if r.returncode != 0:
                what = "DIFFERS FROM THE SOURCE" if "compare" in cmd else "FAILS qemu-img check"
                raise RunError(f"VERIFY: output {what}: `{' '.join(cmd)}` exit "
                               f"{r.returncode}: {(r.stdout + r.stderr).strip()}")


def cmd_convert(args):
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    vmk = args.vmk or target / "release" / "vmk"
    if not vmk.exists():
        die(f"{vmk} not found; run bench/disk.sh (it builds vmk) or pass --vmk")
    if not shutil.which(args.qemu_img):
        die(f"{args.qemu_img} not found (install qemu-utils)")
    load_before = print_host_header(args)
    log_dir = args.log_dir or target / "bench-disk" / datetime.datetime.now().strftime(
        "%Y%m%d-%H%M%S")
    work = log_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    print(f"vmk:      {describe_git()} ({vmk})")
    print(f"qemu-img: {version_line([args.qemu_img, '--version'])}")
    print(f"runs: {args.runs} of each conversion per tool after {args.warmup} untimed "
          f"warm-up round(s), alternating; timeout "
          f"{args.timeout:.0f} s; logs in {log_dir}", flush=True)
    src = make_source(work, args.qemu_img, args.size, args.data, args.chunk, args.seed,
                      args.timeout)
    print(flush=True)

    cases = [
        ("vmdk", "to monolithicSparse", {
            "vmk": [str(vmk), "disk", "convert", "{src}", "{dst}", "--type", "monolithicSparse"],
            "qemu-img": [args.qemu_img, "convert", "-f", "vmdk", "-O", "vmdk", "-o",
                         "subformat=monolithicSparse", "{src}", "{dst}"],
        }),
        ("raw", "to raw", {
            "vmk": [str(vmk), "disk", "convert", "{src}", "{dst}", "--type", "raw"],
            "qemu-img": [args.qemu_img, "convert", "-f", "vmdk", "-O", "raw", "{src}", "{dst}"],
        }),
    ]
    tools = ["vmk", "qemu-img"]
    res = {(c, t): [] for c, _, _ in cases for t in tools}
    failures = []
    stop = False
    for i in range(1 - args.warmup, args.runs + 1):
        order = tools if i % 2 else tools[::-1]
        run = f"run {i}" if i > 0 else f"warm-up {i + args.warmup}"
        for case, label, cmds in cases:
            for tool in order:
                dst = work / f"out-{tool}.{case}"
                dst.unlink(missing_ok=True)
                os.sync()
                cmd = [a.format(src=src, dst=dst) for a in cmds[tool]]
                log = log_dir / f"convert-{case}-{tool}-{run.replace(' ', '')}.log"
                before_run(args)
                try:
                    p, d, cpu, others = convert_once(cmd, dst, args.timeout, log)
                    verify(args.qemu_img, src, dst, case, args.timeout, log)
                    alloc = dst.stat().st_blocks * 512
                except RunError as e:
                    failures.append((f"{tool} {label}", run, str(e)))
                    print(f"{tool:8} {label:20} {run}: FAILED: {e}", flush=True)
                    if args.fail_fast:
                        stop = True
                        break
                    continue
                finally:
                    if not args.keep:
                        dst.unlink(missing_ok=True)
                if i > 0:
                    res[(case, tool)].append({"proc": p, "durable": d, "alloc": alloc,
                                              "cpu": cpu, "others": others})
                print(f"{tool:8} {label:20} {run}: {p:6.2f} s, + fsync {d:6.2f} s; "
                      f"CPU {cpu:.2f} s; output {alloc / MIB:.0f} MiB allocated, identical "
                      f"to the source; others used {others:.2f} CPUs", flush=True)
            if stop:
                break
        if stop:
            break
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    load_after = load()
    print()

    def secs(x, unit=True):
        return f"{x:.2f} s" if unit else f"{x:.2f}"

    def mib(x, unit=True):
        return f"{x / MIB:.0f} MiB" if unit else f"{x / MIB:.0f}"

    def time_ratio(m):
        return fmt_ratio(m["vmk"] / m["qemu-img"]) if m["qemu-img"] > 0 else None

    rows = []
    for case, label, _ in cases:
        for key, what in (("proc", "process"), ("durable", "+ fsync")):
            rows.append((f"{label}, {what}",
                         {t: [r[key] for r in res[(case, t)]] for t in tools}, secs,
                         time_ratio))
    for case, label, _ in cases:
        rows.append((f"{label}, allocated",
                     {t: [r["alloc"] for r in res[(case, t)]] for t in tools}, mib,
                     time_ratio))
    print_table(f"convert of a {fmt_size(args.size)} monolithicSparse VMDK with "
                f"{fmt_size(args.data)} of data (time: lower is better; vmk/qemu-img < 1 "
                "means vmk is faster)", rows, tools, "vmk/qemu-img")
    done = [r for v in res.values() for r in v]
    if done:
        print("other host load during the runs (mean CPUs used by other processes): "
              + ", ".join(f"{t} {statistics.mean(r['others'] for c, _, _ in cases for r in res[(c, t)]):.2f}"
                          for t in tools if any(res[(c, t)] for c, _, _ in cases)))
    print("successful runs: " + ", ".join(
        f"{t} {label} {len(res[(c, t)])}/{args.runs}" for c, label, _ in cases for t in tools))
    print(f"host load average: before {load_before}, after {load_after} (1/5/15 min, "
          f"{os.cpu_count()} cpus)")
    report_failures(failures)


def report_failures(failures):
    if failures:
        print(f"\nFAILED: {len(failures)} run(s):", file=sys.stderr)
        for what, i, e in failures:
            print(f"  {what} {i}: {e.splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# fio

FIO_JOBS = [
    # (name, label, direction, unit)
    ("seqwrite", "seq write 1M", "write", "MiB/s"),
    ("seqread", "seq read 1M", "read", "MiB/s"),
    ("randwrite", "rand write 4K", "write", "IOPS"),
    ("randread", "rand read 4K", "read", "IOPS"),
]

FIO_SCRIPT = """\
# vmk bench/disk.py fio workload. Job sizes come from the kernel command line (vmk.fio.*).
seq=256M
seqtime=0
rand=64M
runtime=10
dev=/dev/vda
# Keep kernel messages off the console so they cannot land inside fio's json.
dmesg -n 1 2>/dev/null
for w in $(cat /proc/cmdline); do
    case "$w" in
        vmk.fio.seq=*) seq="${w#*=}" ;;
        vmk.fio.seqtime=*) seqtime="${w#*=}" ;;
        vmk.fio.rand=*) rand="${w#*=}" ;;
        vmk.fio.runtime=*) runtime="${w#*=}" ;;
    esac
done
if ! command -v fio >/dev/null 2>&1; then
    echo "vmk-bench: error: fio is not in the image"
    exit 3
fi
if [ ! -b "$dev" ]; then
    echo "vmk-bench: error: no block device $dev"
    exit 4
fi
echo "vmk-bench: $(fio --version) on $dev ($(cat /sys/block/vda/size) sectors);" \\
    "seq $seq (time ${seqtime}s), rand $rand, runtime ${runtime}s"
job() {
    name=$1
    shift
    echo "vmk-bench: job $name start"
    fio --name="$name" --filename="$dev" --direct=1 --ioengine=psync --iodepth=1 \\
        --output-format=json --output="/tmp/$name.json" "$@" >"/tmp/$name.log" 2>&1
    st=$?
    echo "vmk-bench: job $name end $st"
    echo "vmk-bench: json $name begin"
    cat "/tmp/$name.json"
    echo
    echo "vmk-bench: json $name end"
    if [ "$st" != 0 ]; then
        sed "s/^/vmk-bench: fio $name: /" "/tmp/$name.log"
        return 1
    fi
}
fail=0
seqopt=
if [ "$seqtime" != 0 ]; then
    seqopt="--time_based --runtime=$seqtime"
fi
job seqwrite --rw=write --bs=1M --size="$seq" $seqopt || fail=1
job seqread --rw=read --bs=1M --size="$seq" $seqopt || fail=1
job randwrite --rw=randwrite --bs=4k --size="$rand" --time_based --runtime="$runtime" || fail=1
job randread --rw=randread --bs=4k --size="$rand" --time_based --runtime="$runtime" || fail=1
[ "$fail" = 0 ] || exit 5
exit 0
"""

JOB_RE = re.compile(r"vmk-bench: job (\w+) (start|end)(?: (\d+))?$")
JSON_RE = re.compile(r"vmk-bench: json (\w+) (begin|end)$")
PRINTK_RE = re.compile(r"^\[\s*\d+\.\d+\] ")


def run_vm(cmd, timeout, log_path):
    """Runs one VM with its console on a pipe; returns (lines [(t, text)], exit status,
    seconds, child CPU s, others CPUs, timed out)."""
    lines = []
    err_path = log_path.with_suffix(".stderr")
    with open(err_path, "wb") as err, open(log_path, "w") as log:
        log.write(f"# {' '.join(cmd)}\n")
        log.flush()

        def take(t, raw):
            text = raw.decode("utf-8", "replace").rstrip("\r")
            lines.append((t, text))
            log.write(f"[{t:9.3f}] {text}\n")  # as it comes, for watching a long run

        returncode, t_exit, cpu, others, timed_out = run_console(
            cmd, timeout, err, take, on_chunk=log.flush)
        log.write(f"# exit status {returncode}, {t_exit:.3f} s, VM process CPU "
                  f"{cpu:.2f} s, other host load {others:.2f} CPUs"
                  f"{', TIMED OUT' if timed_out else ''}\n")
    return lines, returncode, t_exit, cpu, others, timed_out


def parse_fio(lines):
    """From a console: {job: {"start": t, "end": t, "status": n, "json": text}}, marks."""
    jobs = {}
    marks = {}
    in_json = None
    for t, text in lines:
        if "banner" not in marks and BANNER in text:
            marks["banner"] = t
        if text.endswith(READY) and "ready" not in marks:
            marks["ready"] = t
        i = text.rfind(EXIT_STATUS)
        if i >= 0:
            marks["status"] = text[i + len(EXIT_STATUS):].strip()
        m = JSON_RE.search(text)
        if m:
            name, what = m.groups()
            if what == "begin":
                in_json = name
                jobs.setdefault(name, {})["json"] = []
            else:
                in_json = None
            continue
        if in_json:
            if not PRINTK_RE.match(text):  # a kernel message, should one get through
                jobs[in_json]["json"].append(text)
            continue
        m = JOB_RE.search(text)
        if m:
            name, what, st = m.groups()
            j = jobs.setdefault(name, {})
            j[what] = t
            if st is not None:
                j["status"] = int(st)
    return jobs, marks


def fio_result(name, direction, job):
    """Bandwidth (bytes/s), IOPS, mean completion latency (us), guest runtime (s) of a job."""
    if "json" not in job:
        raise RunError(f"{name}: no json printed")
    text = "\n".join(job["json"])
    a, b = text.find("{"), text.rfind("}")
    if a < 0 or b < a:
        raise RunError(f"{name}: no json object in its output: {text[:200]!r}")
    try:
        doc = json.loads(text[a:b + 1])
        j = doc["jobs"][0]
        d = j[direction]
        r = {
            "bw": d["bw"] * 1024.0,  # KiB/s
            "iops": float(d["iops"]),
            "lat_us": d["clat_ns"]["mean"] / 1000.0,
            "bytes": int(d["io_bytes"]),
            "runtime": d["runtime"] / 1000.0,
            "error": int(j.get("error", 0)),
        }
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RunError(f"{name}: malformed fio json ({type(e).__name__}: {e}); "
                       f"starts {text[a:a + 200]!r}")
    if r["error"]:
        raise RunError(f"{name}: fio reports error {r['error']}")
    if r["bytes"] <= 0 or r["runtime"] <= 0:
        raise RunError(f"{name}: fio moved no data ({r['bytes']} bytes in {r['runtime']} s)")
    return r


def fio_once(cmd, timeout, log_path):
    lines, rc, t_exit, cpu, others, timed_out = run_vm(cmd, timeout, log_path)
    jobs, marks = parse_fio(lines)
    problems = []
    results = {}
    if timed_out:
        problems.append(f"timed out after {timeout:.0f} s (killed)")
    elif rc != 0:
        problems.append(f"exit status {rc}")
    for k, what in (("banner", f"'{BANNER}...'"), ("ready", f"'{READY}'")):
        if k not in marks:
            problems.append(f"no {what} line")
    for name, _, direction, _ in FIO_JOBS:
        job = jobs.get(name, {})
        if "start" not in job:
            if not timed_out or "ready" in marks:
                problems.append(f"{name}: never started")
            continue
        if "end" not in job:
            problems.append(f"{name}: started but never ended")
            continue
        if job.get("status") != 0:
            problems.append(f"{name}: fio exit status {job.get('status')}")
            continue
        try:
            r = fio_result(name, direction, job)
        except RunError as e:
            problems.append(str(e))
            continue
        r["host"] = job["end"] - job["start"]
        # fio's runtime is measured on the guest's clock and excludes its start-up; it can
        # not be longer than the host's time between the markers (+ console slack).
        if r["runtime"] > r["host"] + 0.5:
            problems.append(f"{name}: guest clock runs fast? fio runtime {r['runtime']:.2f} s "
                            f"but only {r['host']:.2f} s passed on the host")
        results[name] = r
    if marks.get("status") != "0" and not timed_out:
        problems.append(f"guest exit-status {marks.get('status', 'missing')}")
    if problems:
        tail = "\n".join(f"    [{t:8.3f}] {s}" for t, s in lines[-15:])
        err = tail_text(log_path.with_suffix(".stderr"), 10)
        raise RunError("; ".join(problems) + f"\n  console tail ({log_path}):\n{tail}"
                       + (f"\n  stderr:\n{err}" if err else ""))
    return {"jobs": results, "ready": marks["ready"], "total": t_exit, "cpu": cpu,
            "others": others}


def cmd_fio(args):
    target, vmk, vms = locate_vms(args, "disk.sh")
    load_before = print_host_header(args)
    image = ensure_image(vmk, "disk-fio", FIO_SCRIPT, ("fio",), args.rebuild,
                         args.build_timeout)
    log_dir = args.log_dir or target / "bench-disk" / datetime.datetime.now().strftime(
        "%Y%m%d-%H%M%S")
    work = log_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    append = (f"{APPEND} vmk.fio.seq={fmt_size(args.seq_size)} "
              f"vmk.fio.seqtime={args.seq_runtime} vmk.fio.rand={fmt_size(args.rand_size)} vmk.fio.runtime={args.runtime}")
    mem = fmt_size(args.memory)

    def command(vm, disk):
        if vm == "vmk":
            return [str(vmk), "run", "--image", str(image), "--memory", mem, "--cpus",
                    str(args.cpus), "--append", append, "--disk", str(disk)]
        return [args.qemu, "-machine", "virt", "-smp", str(args.cpus), "-m", mem,
                "-nographic", "-no-reboot", "-kernel", str(image / "vmlinux"),
                "-initrd", str(image / "initrd.img"), "-append", append,
                "-drive", f"file={disk},format=raw,if=none,id=d0,cache={args.qemu_cache}",
                "-device", "virtio-blk-device,drive=d0"]

    print(f"vmk:  {describe_git()} ({vmk})")
    if "qemu" in vms:
        print(f"qemu: {version_line([args.qemu, '--version'])}, disk cache={args.qemu_cache}")
    print(f"runs: {args.runs} each, alternating; {args.cpus} vCPU, {mem}; disk: fresh sparse "
          f"raw file of {fmt_size(args.disk_size)} per run; timeout {args.timeout:.0f} s; "
          f"logs in {log_dir}")
    seq_len = (f"{args.seq_runtime} s each" if args.seq_runtime
               else "one pass each")
    print(f"jobs: fio psync, iodepth 1, O_DIRECT on /dev/vda: seqwrite/seqread bs=1M "
          f"size={fmt_size(args.seq_size)} {seq_len}; randwrite/randread bs=4k "
          f"size={fmt_size(args.rand_size)} {args.runtime} s each\n", flush=True)

    results = {vm: [] for vm in vms}
    failures = []
    for i in range(1, args.runs + 1):
        for vm in vms:
            disk = work / f"disk-{vm}-{i}.raw"
            with open(disk, "wb") as f:
                f.truncate(args.disk_size)
            os.sync()
            log = log_dir / f"fio-{vm}-{i}.log"
            before_run(args)
            try:
                r = fio_once(command(vm, disk), args.timeout, log)
            except RunError as e:
                failures.append((vm, f"run {i}", str(e)))
                print(f"{vm:4} run {i}: FAILED: {e}", flush=True)
                if args.fail_fast:
                    break
                continue
            finally:
                if not args.keep:
                    disk.unlink(missing_ok=True)
            results[vm].append(r)
            parts = []
            for name, _, _, unit in FIO_JOBS:
                j = r["jobs"][name]
                v = f"{j['bw'] / MIB:.1f} MiB/s" if unit == "MiB/s" else f"{j['iops']:.0f} IOPS"
                parts.append(f"{name} {v}")
            print(f"{vm:4} run {i}: " + ", ".join(parts)
                  + f"; ready {r['ready']:.1f} s, total {r['total']:.1f} s; VM process CPU "
                  f"{r['cpu']:.1f} s, others used {r['others']:.2f} CPUs", flush=True)
        if failures and args.fail_fast:
            break
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    load_after = load()
    print()

    def rate(x, unit=True):
        return (f"{x:.1f}" if x < 1000 else f"{x:.0f}") + (" MiB/s" if unit else "")

    def iops(x, unit=True):
        return f"{x:.0f}" + (" IOPS" if unit else "")

    def usec(x, unit=True):
        return f"{x:.0f}" + (" us" if unit else "")

    def secs(x, unit=True):
        return f"{x:.1f}" + (" s" if unit else "")

    def ratio(m):
        return fmt_ratio(m["vmk"] / m["qemu"]) if m.get("qemu") else None

    rows = []
    for name, label, _, unit in FIO_JOBS:
        if unit == "MiB/s":
            vals = {vm: [r["jobs"][name]["bw"] / MIB for r in results[vm]] for vm in vms}
            rows.append((label, vals, rate, ratio))
        else:
            vals = {vm: [r["jobs"][name]["iops"] for r in results[vm]] for vm in vms}
            rows.append((label, vals, iops, ratio))
    for name, label, _, _ in FIO_JOBS:
        vals = {vm: [r["jobs"][name]["lat_us"] for r in results[vm]] for vm in vms}
        rows.append((f"{label} mean clat", vals, usec, ratio))
    rows.append(("boot to ready", {vm: [r["ready"] for r in results[vm]] for vm in vms},
                 secs, ratio))
    rows.append(("total", {vm: [r["total"] for r in results[vm]] for vm in vms}, secs, ratio))
    print_table("fio in the guest on /dev/vda (MiB/s and IOPS: higher is better, vmk/qemu > 1 "
                "means vmk is faster; latencies and times: lower is better)",
                rows, vms, "vmk/qemu" if len(vms) == 2 else None)
    if any(results.values()):
        print("other host load during the runs (mean CPUs used by other processes): "
              + ", ".join(f"{vm} {statistics.mean(r['others'] for r in results[vm]):.2f}"
                          for vm in vms if results[vm]))
    print("successful runs: " + ", ".join(f"{vm} {len(results[vm])}/{args.runs}" for vm in vms))
    print(f"host load average: before {load_before}, after {load_after} (1/5/15 min, "
          f"{os.cpu_count()} cpus)")
    report_failures(failures)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description="Disk benchmarks: vmk against qemu-img (convert) and QEMU (fio in a guest).")
    sub = ap.add_subparsers(dest="bench", required=True, metavar="{convert,fio}")

    def common(p, runs, timeout):
        p.add_argument("--runs", type=int, default=runs, help=f"runs per tool (default {runs})")
        p.add_argument("--timeout", type=float, default=timeout,
                       help=f"per run, seconds (default {timeout:.0f})")
        p.add_argument("--vmk", type=Path, default=None,
                       help="vmk binary (default: $CARGO_TARGET_DIR or target, release/vmk)")
        p.add_argument("--log-dir", type=Path, default=None,
                       help="where logs go (default target/bench-disk/<date-time>)")
        p.add_argument("--wait-idle", type=float, default=120, metavar="S",
                       help="before each run, wait up to S seconds until other processes use "
                            "less than 1/4 of a CPU (default 120; 0 = don't wait)")
        p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
        p.add_argument("--keep", action="store_true",
                       help="keep the disk files (in the log directory's work/)")

    c = sub.add_parser("convert", help="vmk disk convert against qemu-img convert (host side)")
    common(c, 5, 600)
    c.add_argument("--size", type=parse_size, default=2 << 30, help="disk size (default 2G)")
    c.add_argument("--data", type=parse_size, default=512 << 20,
                   help="random data in it (default 512M)")
    c.add_argument("--chunk", type=parse_size, default=1 << 20,
                   help="size of each scattered piece of data (default 1M)")
    c.add_argument("--seed", type=int, default=4, help="random seed (default 4)")
    c.add_argument("--qemu-img", default="qemu-img")
    c.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds first (checked all the same; default 1): the first "
                        "writes into memory the host has not touched yet can be much slower")

    f = sub.add_parser("fio", help="fio in a Debian guest, vmk against QEMU TCG")
    common(f, 3, 900)
    g = f.add_mutually_exclusive_group()
    g.add_argument("--vmk-only", action="store_true")
    g.add_argument("--qemu-only", action="store_true")
    f.add_argument("--qemu", default="qemu-system-riscv64")
    f.add_argument("--qemu-cache", default="none",
                   choices=["none", "writeback", "writethrough", "directsync", "unsafe"],
                   help="QEMU's -drive cache= (default none, i.e. O_DIRECT on the host)")
    f.add_argument("--cpus", type=int, default=1, help="vCPUs for both (default 1)")
    f.add_argument("--memory", type=parse_size, default=1 << 30,
                   help="guest memory (default 1G)")
    f.add_argument("--disk-size", type=parse_size, default=1 << 30,
                   help="raw disk size (default 1G)")
    f.add_argument("--seq-size", type=parse_size, default=256 << 20,
                   help="sequential jobs' size (default 256M)")
    f.add_argument("--seq-runtime", type=int, default=0, metavar="S",
                   help="run the sequential jobs for S seconds each, wrapping around "
                        "(default 0: one pass of --seq-size, well under a second)")
    f.add_argument("--rand-size", type=parse_size, default=64 << 20,
                   help="random jobs' region (default 64M)")
    f.add_argument("--runtime", type=int, default=10,
                   help="random jobs' length in seconds (default 10)")
    f.add_argument("--rebuild", action="store_true", help="rebuild the image even if cached")
    f.add_argument("--build-timeout", type=float, default=1800,
                   help="for building the image, seconds (default 1800)")
    args = ap.parse_args()
    if args.runs < 1:
        die("--runs must be at least 1")
    if getattr(args, "warmup", 0) < 0:
        die("--warmup must be at least 0")
    if args.bench == "convert":
        cmd_convert(args)
    else:
        if args.cpus < 1 or args.runtime < 1 or args.seq_runtime < 0:
            die("--cpus and --runtime must be at least 1")
        if max(args.seq_size, args.rand_size) > args.disk_size:
            die("--seq-size and --rand-size must fit in --disk-size")
        cmd_fio(args)


if __name__ == "__main__":
    main()
