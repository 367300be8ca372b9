"""Helpers shared by the benchmark scripts (boot.py, disk.py, host.py): host load, git state,
guest images."""

import hashlib
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_dir():
    """The image builder's default cache (vmk_image::default_cache_dir)."""
    for var, sub in (("VMK_CACHE", None), ("XDG_CACHE_HOME", "vmk")):
        v = os.environ.get(var)
        if v:
            return Path(v) / sub if sub else Path(v)
    home = os.environ.get("HOME")
    return Path(home) / ".cache/vmk" if home else Path(".vmk-cache")


def cpu_jiffies():
    """(busy, total) jiffies summed over all host CPUs, from /proc/stat (None if unreadable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # guest time is already counted in user/nice
    return total - idle, total


def busy_cores(a, b):
    """Host CPUs kept busy between two cpu_jiffies() samples."""
    if not a or not b or b[1] <= a[1]:
        return 0.0
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(limit, threshold=0.25):
    """Waits up to `limit` s until other processes use less than `threshold` of a CPU (over
    2 s). Returns (seconds waited, busy cores last seen)."""
    t = time.monotonic()
    while True:
        a = cpu_jiffies()
        time.sleep(2)
        busy = busy_cores(a, cpu_jiffies())
        waited = time.monotonic() - t
        if busy < threshold or waited >= limit:
            return waited, busy


def load():
    try:
        a, b, c = os.getloadavg()
        return f"{a:.2f} {b:.2f} {c:.2f}"
    except OSError:
        return "unknown"


def describe_git():
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               check=False, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_console(cmd, timeout, stderr_file, on_line, on_chunk=None):
    """Runs `cmd` with stdout on a pipe, calling on_line(t, raw_bytes) for each line as it
    arrives (t: seconds since start) and on_chunk() after each read. Kills the process group
    after `timeout` s. Returns (exit status, seconds to exit, the child's CPU s, CPUs used by
    other processes meanwhile, timed out)."""
    buf = b""
    j0, c0 = cpu_jiffies(), children_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr_file, start_new_session=True)
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = t0 + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(min(left, 1.0)):
                continue
            t = time.monotonic() - t0
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                on_line(t, raw)
            if on_chunk:
                on_chunk()
        if buf:
            on_line(time.monotonic() - t0, buf)
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            # stdout closed: the process is exiting (or has closed it). Give it the rest of
            # the timeout to go.
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        t_exit = time.monotonic() - t0
        j1, c1 = cpu_jiffies(), children_cpu()
    finally:
        sel.close()
        proc.stdout.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    cpu = c1 - c0
    others = max(0.0, busy_cores(j0, j1) - cpu / t_exit) if t_exit > 0 else 0.0
    return proc.returncode, t_exit, cpu, others, timed_out


def image_key(script, packages=()):
    """Changes when the init script, the package list or the image builder's sources change."""
    h = hashlib.sha256(script.encode() + b"\0" + "\0".join(packages).encode())
    src = REPO / "crates" / "vmk-image"
    for p in sorted(src.rglob("*")):
        wanted = p.suffix == ".rs" or p.name == "Cargo.toml"
        if wanted and p.is_file() and "target" not in p.parts:
            h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def ensure_image(vmk, name, script, packages=(), rebuild=False, timeout=None):
    """A guest image in <cache>/bench/<name>-<key>, built with `vmk image build` (init
    script `script`, None for an interactive one, and extra Debian `packages`) unless
    a complete one is cached. Exits the benchmark (status 2) if the build fails."""
    key = image_key(script or "", packages)
    out = cache_dir() / "bench" / f"{name}-{key}"
    stamp = out / ".bench-complete"
    files = [out / "vmlinux", out / "initrd.img"]
    if not rebuild and stamp.exists() and all(f.exists() for f in files):
        print(f"image: reusing {out} (initrd {files[1].stat().st_size / (1 << 20):.0f} MiB)")
        return out
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    cmd = [str(vmk), "image", "build", "--out", str(out), "-q"]
    for p in packages:
        cmd += ["--package", p]
    if script is not None:
        path = out / "bench-init.sh"
        path.write_text(script)
        cmd += ["--init-script", str(path)]
    print(f"image: building {out}", flush=True)
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"bench: error: `{' '.join(cmd)}` timed out after {timeout:.0f} s")
    if r.returncode != 0:
        sys.exit(f"bench: error: `{' '.join(cmd)}` failed with status {r.returncode}")
    print(f"image: built in {time.monotonic() - t:.1f} s "
          f"(initrd {files[1].stat().st_size / (1 << 20):.0f} MiB)")
    stamp.write_text(key + "\n")
    return out


def locate_vms(args, script):
    """The vmk binary (--vmk, else target/release/vmk under CARGO_TARGET_DIR or the repo) and
    which VMs to run ("vmk", "qemu") from --vmk-only/--qemu-only. Exits if one is missing."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    vmk = args.vmk or target / "release" / "vmk"
    if not vmk.exists():
        sys.exit(f"bench: error: {vmk} not found; run bench/{script} (it builds vmk) or "
                 "pass --vmk")
    vms = []
    if not getattr(args, "qemu_only", False):
        vms.append("vmk")
    if not getattr(args, "vmk_only", False):
        if not shutil.which(args.qemu):
            sys.exit(f"bench: error: {args.qemu} not found (install qemu-system-misc) or use "
                     "--vmk-only")
        vms.append("qemu")
    return target, vmk, vms
