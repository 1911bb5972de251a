#!/usr/bin/env python3
"""Origin load and parent disk use of a cache tier, for N = 1..8 ston-fs edges.

Run by benches/tiers.sh (as root), which installs nginx and matplotlib and builds ston-fs.
Everything is on loopback and started here: a private nginx origin whose access log counts
every request, three nginx parents from benches/tier-parent.conf.in, and N ston-fs edges
(foreground daemons, each with its own mount and cache). For every N and every mode
(balance=hash, balance=round_robin, and "direct": no tier, edges straight to the origin),
the N edges read the same objects at once, each in its own order: whole reads of objects up
to --whole-max, the same random ranges of the bigger ones. Every byte read is compared with
the origin's file; a wrong or failed read fails the run.

Figures (the same definitions as tests/tiers.rs):
  slice fetches per slice = sum over origin requests of the 1 MiB slices each covers,
                            / distinct slices read        (1.00: each slice sent once)
  parent disk ÷ data read = bytes of the parents' cache files / bytes of those slices
Writes RESULTS/tiers.{json,md,png}.
"""
import argparse
import datetime
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

SLICE = 1 << 20
MODES = ("hash", "round_robin", "direct")
EDGE_OPTS = "block_size=1M,max_cache_size=16G,fuse_threads=4"


def log(msg):
    print(f"[tiers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, bound=15.0):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {bound} s")


def nginx_path():
    return "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"


class Processes:
    """Every process this run starts, recorded in TMP/pids for the shell's clean-up."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "pids")

    def started(self, proc):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{proc.pid}\n")
        return proc


class Nginx:
    """A private nginx in its own directory: the origin, or a parent."""

    def __init__(self, procs, directory, config, port, what):
        os.makedirs(os.path.join(directory, "tmp"), exist_ok=True)
        self.dir, self.port, self.what = directory, port, what
        conf = os.path.join(directory, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(config)
        self.proc = procs.started(subprocess.Popen(
            [nginx_path(), "-p", directory, "-c", conf], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port, self.proc, what)

    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def origin_config(directory, port, docroot):
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {directory}/tmp;
    proxy_temp_path {directory}/tmp;
    fastcgi_temp_path {directory}/tmp;
    uwsgi_temp_path {directory}/tmp;
    scgi_temp_path {directory}/tmp;
    log_format origin '$status $body_bytes_sent "$request" "$http_range"';
    access_log {directory}/access.log origin;
    server {{ listen 127.0.0.1:{port}; root {docroot}; }}
}}
"""


def parent_config(template, directory, port, name, origin_port):
    for key, value in {"@DIR@": directory, "@PORT@": str(port), "@NAME@": name,
                       "@ORIGIN@": f"127.0.0.1:{origin_port}", "@MAX_SIZE@": "64g"}.items():
        template = template.replace(key, value)
    return template


def mounted(path):
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split(" ")[4] == path for line in f)


class Edge:
    """One ston-fs edge: a foreground daemon with its own mount point and cache."""

    def __init__(self, procs, binary, directory, origins, options):
        self.mnt = os.path.join(directory, "mnt")
        cache = os.path.join(directory, "cache")
        os.makedirs(self.mnt)
        self.log = open(os.path.join(directory, "daemon.log"), "wb")
        self.proc = procs.started(subprocess.Popen(
            [binary, "-f", "-o", options, "--cache-dir", cache, origins, self.mnt],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log))
        deadline = time.monotonic() + 30
        while not mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edge at {self.mnt} did not mount; see {self.log.name}")
            time.sleep(0.05)

    def stop(self):
        deadline = time.monotonic() + 30
        while mounted(self.mnt) and time.monotonic() < deadline:
            if subprocess.run(["umount", self.mnt], capture_output=True).returncode != 0:
                time.sleep(0.2)
        if mounted(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def make_data_set(docroot, count, max_size, seed):
    """`count` objects with sizes spread geometrically from 4 KiB to `max_size`, each a
    little off its nominal size so last blocks are partial; random bytes."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(docroot, "objects"))
    objects = []
    for i in range(count):
        nominal = 4096 * (max_size / 4096) ** (i / max(count - 1, 1))
        size = max(1, int(nominal) - rng.randrange(0, 4096))
        name = f"/objects/obj-{i:03d}.bin"
        with open(docroot + name, "wb") as f:
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        objects.append({"path": name, "size": size})
    return objects


def plan_reads(objects, whole_max, ranges, seed):
    """What every edge reads of each object: whole, or the same random ranges."""
    rng = random.Random(seed)
    plan = []
    for obj in objects:
        if obj["size"] <= whole_max:
            plan.append((obj, None))
            continue
        picks = []
        for _ in range(ranges):
            length = rng.randrange(1, 256 << 10)
            picks.append((rng.randrange(0, obj["size"]), length))
        plan.append((obj, picks))
    return plan


def read_edge(mnt, docroot, plan, seed, errors):
    """One edge's client: the plan in its own order, every byte compared."""
    order = list(range(len(plan)))
    random.Random(seed).shuffle(order)
    try:
        for i in order:
            obj, picks = plan[i]
            with open(mnt + obj["path"], "rb", buffering=0) as got, \
                    open(docroot + obj["path"], "rb", buffering=0) as want:
                if picks is None:
                    offset = 0
                    while True:
                        chunk = got.read(1 << 20)
                        if not chunk:
                            break
                        if chunk != os.pread(want.fileno(), len(chunk), offset):
                            raise RuntimeError(f"{obj['path']}: wrong bytes at {offset}")
                        offset += len(chunk)
                    if offset != obj["size"]:
                        raise RuntimeError(f"{obj['path']}: {offset} of {obj['size']} bytes")
                    continue
                os.posix_fadvise(got.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
                for offset, length in picks:
                    chunk = os.pread(got.fileno(), length, offset)
                    if chunk != os.pread(want.fileno(), length, offset):
                        raise RuntimeError(f"{obj['path']}: wrong bytes at {offset}")
    except Exception as e:  # noqa: BLE001 - every failure of a reader fails the run
        errors.append(f"{mnt}: {e}")


RANGE = re.compile(r"bytes=(\d+)-(\d*)")
LINE = re.compile(r'^(\d+) (\d+) "(\S+) (\S+) [^"]*" "([^"]*)"')


def origin_requests(log_path, offset, sizes):
    """The origin's data requests logged after `offset`: (path, first slice, end slice)."""
    deadline, last = time.monotonic() + 10, -1
    while time.monotonic() < deadline:  # nginx logs just after the last byte
        size = os.path.getsize(log_path)
        if size == last:
            break
        last = size
        time.sleep(0.3)
    requests = []
    with open(log_path, encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        for line in f:
            m = LINE.match(line)
            if not m or m.group(4) not in sizes:
                continue
            path, size = m.group(4), sizes[m.group(4)]
            first, last_byte = 0, size - 1
            r = RANGE.match(m.group(5))
            if r:
                first = int(r.group(1))
                last_byte = min(int(r.group(2)) if r.group(2) else size - 1, size - 1)
            if first <= last_byte:
                requests.append((path, int(m.group(2)), first // SLICE, last_byte // SLICE + 1))
    return requests


def cache_usage(directory):
    entries = apparent = allocated = 0
    for root, _, files in os.walk(directory):
        for name in files:
            if len(name) == 32:
                st = os.stat(os.path.join(root, name))
                entries += 1
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return entries, apparent, allocated


def one_run(args, procs, origin, plan, sizes, mode, n, template):
    run_dir = os.path.join(args.tmp, f"run-{mode}-{n}")
    os.makedirs(run_dir)
    parents = []
    if mode != "direct":
        for i in range(3):
            directory = os.path.join(run_dir, f"parent-{i}")
            port = free_port()
            config = parent_config(template, directory, port, f"parent-{i}", origin.port)
            parents.append(Nginx(procs, directory, config, port, f"parent-{i}"))
        origins = ",".join(p.url() for p in parents)
        options = f"{EDGE_OPTS},balance={mode}"
    else:
        origins, options = origin.url(), EDGE_OPTS
    log_offset = os.path.getsize(os.path.join(origin.dir, "access.log"))
    edges = []
    try:
        for i in range(n):
            edges.append(Edge(procs, args.bin, os.path.join(run_dir, f"edge-{i}"), origins,
                              f"{options},via=edge-{i}"))
        errors = []
        readers = [threading.Thread(target=read_edge,
                                    args=(e.mnt, args.docroot, plan, 1000 * n + i, errors))
                   for i, e in enumerate(edges)]
        began = time.monotonic()
        for t in readers:
            t.start()
        for t in readers:
            t.join(timeout=max(1.0, began + 1800 - time.monotonic()))
        seconds = time.monotonic() - began
        if any(t.is_alive() for t in readers):
            errors.append("readers still running after 1800 s")
        if errors:
            raise RuntimeError("; ".join(errors[:5]))
    finally:
        for e in edges:
            e.stop()
        for p in parents:
            p.stop()
    requests = origin_requests(os.path.join(origin.dir, "access.log"), log_offset, sizes)
    slices = {(path, s) for path, _, first, end in requests for s in range(first, end)}
    slice_bytes = sum(min(SLICE, sizes[path] - s * SLICE) for path, s in slices)
    fetches = sum(end - first for _, _, first, end in requests)
    entries = apparent = allocated = 0
    for p in parents:
        e, a, b = cache_usage(os.path.join(p.dir, "cache"))
        entries, apparent, allocated = entries + e, apparent + a, allocated + b
    subprocess.run(["rm", "-rf", run_dir], check=True)
    row = {
        "mode": mode, "edges": n, "seconds": round(seconds, 1),
        "origin_requests": len(requests),
        "origin_bytes": sum(b for _, b, _, _ in requests),
        "objects": len(plan),
        "origin_requests_per_object": len(requests) / len(plan),
        "distinct_slices": len(slices), "distinct_slice_bytes": slice_bytes,
        "fetches_per_slice": fetches / len(slices),
        "origin_bytes_per_byte_read": sum(b for _, b, _, _ in requests) / slice_bytes,
        "parent_entries": entries, "parent_bytes": apparent, "parent_allocated": allocated,
        "parent_copies": (apparent / slice_bytes) if parents else None,
    }
    disk = "no tier" if not parents else f"parent disk {apparent / slice_bytes:.2f} x data read"
    log(f"{mode:>11} N={n}: {row['fetches_per_slice']:.2f} fetches per slice, {disk}, "
        f"{seconds:.1f} s")
    return row


def git_commit(repo):
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(results, rows, meta):
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "tiers.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "runs": rows}, f, indent=2)
    by = {(r["mode"], r["edges"]): r for r in rows}
    edges = sorted({r["edges"] for r in rows})

    def cell(mode, n, key):
        r = by.get((mode, n))
        return "–" if r is None or r[key] is None else f"{r[key]:.2f}"

    lines = [
        "# Cache tier: origin load and parent disk use",
        "",
        f"Run {meta['date']} (commit {meta['commit']}, `{meta['command']}`): "
        f"{meta['objects']} objects of 4 KiB–{meta['max_size_h']} "
        f"({meta['data_set_mib']:.0f} MiB), 3 nginx {meta['nginx']} parents "
        "(`benches/tier-parent.conf.in`: proxy_cache, proxy_cache_lock, slice 1m), "
        f"edges with `{EDGE_OPTS}`. Each edge reads objects up to "
        f"{meta['whole_max_h']} whole and {meta['ranges']} random ranges (the same on every "
        "edge) of each bigger one, in its own order, all edges at once; every byte is checked.",
        "",
        "Slice fetches per slice: how many times the origin sent each 1 MiB slice that was "
        "read (1.00 is the least possible). Parent disk: the parents' cache files ÷ the bytes "
        "of those slices (1.00 is one copy). Direct: no tier, every edge asks the origin.",
        "",
        "| edges | hash: fetches per slice | round robin | direct (no tier) "
        "| hash: parent disk ÷ data read | round robin |",
        "|---|---|---|---|---|---|",
    ]
    for n in edges:
        lines.append(
            f"| {n} | {cell('hash', n, 'fetches_per_slice')} "
            f"| {cell('round_robin', n, 'fetches_per_slice')} "
            f"| {cell('direct', n, 'fetches_per_slice')} "
            f"| {cell('hash', n, 'parent_copies')} | {cell('round_robin', n, 'parent_copies')} |")
    lines += ["", "Every run:", "",
              "| mode | edges | origin requests | per object | distinct slices | origin MiB "
              "| parent cache MiB | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['edges']} | {r['origin_requests']} "
            f"| {r['origin_requests_per_object']:.2f} | {r['distinct_slices']} "
            f"| {r['origin_bytes'] / 2**20:.0f} | {r['parent_bytes'] / 2**20:.0f} "
            f"| {r['seconds']} |")
    with open(os.path.join(results, "tiers.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, rows, edges, meta)


def plot(results, rows, edges, meta):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"hash": ("#3a923a", "o", "balance=hash"),
              "round_robin": ("#c83c3c", "s", "balance=round_robin"),
              "direct": ("#777777", "^", "no tier (edges → origin)")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    for mode, (color, marker, label) in styles.items():
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["edges"])
        if not mine:
            continue
        xs = [r["edges"] for r in mine]
        left.plot(xs, [r["fetches_per_slice"] for r in mine], color=color, marker=marker,
                  label=label)
        if mode != "direct":
            right.plot(xs, [r["parent_copies"] for r in mine], color=color, marker=marker,
                       label=label)
    model = [3 * (1 - (2 / 3) ** n) for n in edges]
    left.plot(edges, model, color="#c83c3c", linestyle=":", linewidth=1,
              label="model: round robin, P(1-(1-1/P)^N), P=3")
    left.set_title("Origin: fetches of each slice read")
    left.set_ylabel("origin slice fetches ÷ distinct slices")
    right.set_title("Parents: disk used")
    right.set_ylabel("parent cache bytes ÷ data read")
    for ax in (left, right):
        ax.set_xlabel("edges")
        ax.set_xticks(edges)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"3 parents, {meta['objects']} objects of 4 KiB–{meta['max_size_h']} "
                 f"({meta['date'][:10]}, commit {meta['commit']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "tiers.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--objects", type=int, default=300)
    ap.add_argument("--max-size", default="64M")
    ap.add_argument("--whole-max", default="2M")
    ap.add_argument("--ranges", type=int, default=2)
    ap.add_argument("--edges", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--command", default="sudo bash benches/tiers.sh")
    args = ap.parse_args()
    max_size, whole_max = parse_size(args.max_size), parse_size(args.whole_max)
    edge_counts = [int(n) for n in args.edges.split(",")]
    with open(args.template, encoding="utf-8") as f:
        template = f.read()
    procs = Processes(args.tmp)
    args.docroot = os.path.join(args.tmp, "www")
    log(f"generating {args.objects} objects of 4 KiB–{args.max_size}")
    objects = make_data_set(args.docroot, args.objects, max_size, seed=7)
    sizes = {o["path"]: o["size"] for o in objects}
    plan = plan_reads(objects, whole_max, args.ranges, seed=11)
    origin_dir = os.path.join(args.tmp, "origin")
    port = free_port()
    origin = Nginx(procs, origin_dir, origin_config(origin_dir, port, args.docroot), port,
                   "origin")
    rows = []
    try:
        for mode in MODES:
            for n in edge_counts:
                rows.append(one_run(args, procs, origin, plan, sizes, mode, n, template))
    finally:
        origin.stop()
    nginx_version = subprocess.run([nginx_path(), "-v"], capture_output=True, text=True).stderr
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "mode": args.mode, "command": args.command,
        "objects": args.objects, "max_size_h": args.max_size,
        "data_set_mib": sum(sizes.values()) / 2**20,
        "whole_max_h": args.whole_max, "ranges": args.ranges,
        "nginx": nginx_version.strip().rsplit("/", 1)[-1],
        "kernel": os.uname().release, "cores": os.cpu_count(),
    }
    write_report(args.results, rows, meta)


if __name__ == "__main__":
    main()
