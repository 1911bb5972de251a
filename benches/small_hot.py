#!/usr/bin/env python3
"""Hot small files: what each kernel-side setting buys, beside local files, in one run.

    sudo python3 benches/small_hot.py [--files 2000] [--reps 5] [--bin target/release/ston-fs]

Programs such as Apache open the same small files again and again while the kernel still
has them. This measures open+read+close of N 4 KiB files that are already in the page
cache, for local copies (the baseline) and for ston-fs mounted with each setting:

  default                   zero_message_opens=auto: opens reach the daemon until small
                            files are opened 1,000 times a second (the first pass does)
  zero_message_opens=true   FUSE_NO_OPEN_SUPPORT from the first open: opens and closes
                            send the daemon nothing
  zero_message_opens=false  passthrough on: every open is an OPEN round trip (and a
                            RELEASE after the close)
  ...,passthrough=false     the kernel's page cache of the FUSE file is kept across opens
                            (FOPEN_KEEP_CACHE), still one OPEN round trip per open

Each setting gets a fresh mount and cache: one pass to fetch the files (checked byte for
byte), one to fill the page cache, then the timed pass; the daemon's own count of OPEN
calls during the timed pass comes from `ston-fs stats --json`. Runs alternate the order
of the settings; every figure is the median of the runs, with its range, and the ratio
is against the local copies measured in the same run. The origin is Python's http.server
on 127.0.0.1 (only the first pass reaches it). Writes benches/results/small_hot.md.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = [
    ("default", ""),
    ("zero_message_opens=true", "zero_message_opens=true"),
    ("zero_message_opens=false", "zero_message_opens=false"),
    ("zero_message_opens=false,passthrough=false", "zero_message_opens=false,passthrough=false"),
]
STEP_TIMEOUT = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_files(www, n):
    os.makedirs(www)
    for i in range(n):
        with open(os.path.join(www, f"s{i:05d}.bin"), "wb") as f:
            f.write(os.urandom(4096))


def names(n):
    return [f"s{i:05d}.bin" for i in range(n)]


def one_pass(directory, n):
    """open+read+close of every file; returns (files/s, the bytes read)."""
    paths = [os.path.join(directory, name) for name in names(n)]
    got = []
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        got.append(os.read(fd, 65536))
        os.close(fd)
    return n / (time.perf_counter() - start), got


def wait_for(check, what, timeout=STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"small_hot: {what} did not happen within {timeout} s")
        time.sleep(0.05)


def opens(binary, mnt):
    out = subprocess.run([binary, "stats", "--json", mnt], capture_output=True, text=True,
                         timeout=STEP_TIMEOUT, check=True).stdout
    for op in json.loads(out).get("ops", []):
        if op.get("op") == "open":
            return int(op.get("count", 0))
    sys.exit(f"small_hot: `ston-fs stats --json` has no open count:\n{out}")


def measure_setting(binary, origin, tmp, opts, n, want):
    mnt, cache = os.path.join(tmp, "mnt"), tempfile.mkdtemp(dir=tmp, prefix="cache-")
    os.makedirs(mnt, exist_ok=True)
    all_opts = ",".join(o for o in ["max_cache_size=1G", opts] if o)
    daemon = subprocess.Popen([binary, "-f", "--cache-dir", cache, "-o", all_opts, origin, mnt],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "daemon.log"), "a"))
    try:
        wait_for(lambda: os.path.ismount(mnt), "the mount")
        _, got = one_pass(mnt, n)
        bad = sum(1 for a, b in zip(got, want) if a != b)
        if bad:
            sys.exit(f"small_hot: {bad} files read through the mount differ from the origin's")
        one_pass(mnt, n)
        before = opens(binary, mnt)
        rate, got = one_pass(mnt, n)
        calls = opens(binary, mnt) - before
        if got != want:
            sys.exit("small_hot: the hot pass read other bytes")
        return rate, calls
    finally:
        subprocess.run(["umount", mnt], timeout=STEP_TIMEOUT)
        daemon.wait(timeout=STEP_TIMEOUT)
        shutil.rmtree(cache, ignore_errors=True)


def summary(values):
    return statistics.median(values), min(values), max(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--bin", default="target/release/ston-fs")
    parser.add_argument("--out", default="benches/results/small_hot.md")
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    tmp = tempfile.mkdtemp(prefix="ston-fs-small-hot-")
    www, local = os.path.join(tmp, "www"), os.path.join(tmp, "local")
    make_files(www, args.files)
    shutil.copytree(www, local)
    _, want = one_pass(local, args.files)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                               str(port), "--directory", www],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    origin = f"http://127.0.0.1:{port}/"
    rates = {name: [] for name, _ in SETTINGS}
    calls = {name: [] for name, _ in SETTINGS}
    ratios = {name: [] for name, _ in SETTINGS}
    local_rates = []
    try:
        time.sleep(0.5)
        for rep in range(args.reps):
            order = SETTINGS[rep % len(SETTINGS):] + SETTINGS[:rep % len(SETTINGS)]
            for name, opts in order:
                rate, n_calls = measure_setting(binary, origin, tmp, opts, args.files, want)
                one_pass(local, args.files)
                local_rate, _ = one_pass(local, args.files)
                local_rates.append(local_rate)
                rates[name].append(rate)
                ratios[name].append(rate / local_rate)
                calls[name].append(n_calls)
                print(f"run {rep + 1}: {name} {rate:.0f} files/s, local {local_rate:.0f}, "
                      f"{n_calls} OPEN calls", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=STEP_TIMEOUT)
        shutil.rmtree(tmp, ignore_errors=True)
    write_report(args, rates, ratios, calls, local_rates)


def write_report(args, rates, ratios, calls, local_rates):
    lines = [
        "# Hot small files",
        "",
        f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
        f"(`sudo python3 benches/small_hot.py`, {args.files} files of 4 KiB, "
        f"median of {args.reps} alternating runs, {os.cpu_count()} cores, "
        f"kernel {os.uname().release}).",
        "",
        "| setting | files/s (range) | ÷ local (range) | OPEN calls to the daemon in the timed pass |",
        "|---|---|---|---|",
    ]
    med, lo, hi = summary(local_rates)
    lines.append(f"| local copies (page cache) | {med:.0f} ({lo:.0f}–{hi:.0f}) | 1.00 | — |")
    for name, _ in SETTINGS:
        med, lo, hi = summary(rates[name])
        rmed, rlo, rhi = summary(ratios[name])
        lines.append(f"| ston-fs `{name}` | {med:.0f} ({lo:.0f}–{hi:.0f}) | "
                     f"{rmed:.2f} ({rlo:.2f}–{rhi:.2f}) | {statistics.median(calls[name]):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
