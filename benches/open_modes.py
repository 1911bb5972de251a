#!/usr/bin/env python3
"""What the open mode costs a big file: cold, warm and hot reads with each setting, in one run.

    sudo python3 benches/open_modes.py [--size-mib 1024] [--rounds 5] [--bin target/release/ston-fs]

`zero_message_opens=true` sends the daemon no OPEN, so it cannot hand the kernel a
passthrough backing file or ask for direct I/O; `auto` (the default) does so only once
small files are opened fast, which reading one big file never does. This reads one big
file through a fresh mount with each setting, rounds alternating which goes first:

  cold   page cache dropped, empty ston-fs cache         ÷ curl of the same file, same state
  warm   page cache dropped, the file in ston-fs's cache  ÷ the origin's file read from disk
  hot    right after, the page cache kept                 ÷ the origin's file read again

Every phase drops the page cache first (the hot one excepted), so no phase warms the next
beyond what it measures, and the origin's own page cache is cold for the cold read and its
curl baseline alike. The origin is a private nginx on 127.0.0.1; its access log gives the
bytes each phase pulled (the cold read must pull the file once, the others nothing). The
file read through the mount is compared with the origin's byte for byte after the hot read.
Every figure is the median of the rounds with its range; each ratio is against the
baseline of its own round. Writes benches/results/open_modes.md.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = [
    ("default (zero_message_opens=auto)", ""),
    ("zero_message_opens=true", "zero_message_opens=true"),
    ("zero_message_opens=false", "zero_message_opens=false"),
]
STEP_TIMEOUT = 300
CHUNK = 1 << 20
NGINX_CONF = """daemon off; master_process off; worker_processes 1;
pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
  types {{ }} default_type application/octet-stream;
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  log_format bytes "$body_bytes_sent";
  access_log {tmp}/access.log bytes;
  client_body_temp_path {tmp}/t-body; proxy_temp_path {tmp}/t-proxy;
  fastcgi_temp_path {tmp}/t-fcgi; uwsgi_temp_path {tmp}/t-uwsgi; scgi_temp_path {tmp}/t-scgi;
  server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drop_caches():
    subprocess.run(["sync"], check=True, timeout=STEP_TIMEOUT)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_rate(path):
    """Reads `path` whole in 1 MiB reads; MB/s."""
    size, start = 0, time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
    return size / (time.perf_counter() - start) / 1e6


def curl_rate(url):
    start = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True, timeout=STEP_TIMEOUT)
    return os.path.getsize(WWW_FILE) / (time.perf_counter() - start) / 1e6


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


class Origin:
    def __init__(self, tmp, www):
        self.tmp, self.port = tmp, free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, port=self.port, www=www))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/"
        wait_for(lambda: subprocess.run(["curl", "-sfI", self.url + "big.bin"],
                                        capture_output=True).returncode == 0, "nginx")

    def bytes_sent(self):
        """Body bytes nginx has sent so far (its log is written per request)."""
        try:
            with open(os.path.join(self.tmp, "access.log")) as f:
                return sum(int(line) for line in f if line.strip().isdigit())
        except FileNotFoundError:
            return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=STEP_TIMEOUT)


def wait_for(check, what, timeout=STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"open_modes: {what} did not happen within {timeout} s")
        time.sleep(0.05)


def measure(binary, origin, tmp, opts):
    """One setting on a fresh mount and cache: the three phases and their origin bytes."""
    mnt, cache = os.path.join(tmp, "mnt"), tempfile.mkdtemp(dir=tmp, prefix="cache-")
    os.makedirs(mnt, exist_ok=True)
    all_opts = ",".join(o for o in ["max_cache_size=8G", opts] if o)
    daemon = subprocess.Popen([binary, "-f", "--cache-dir", cache, "-o", all_opts, origin.url, mnt],
                              stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "daemon.log"), "a"))
    path, got = os.path.join(mnt, "big.bin"), {}
    try:
        wait_for(lambda: os.path.ismount(mnt), "the mount")
        for phase in ("cold", "warm", "hot"):
            if phase != "hot":
                drop_caches()
            before = origin.bytes_sent()
            got[phase] = read_rate(path)
            time.sleep(1)  # nginx logs a request when it ends
            got[phase + " origin"] = (origin.bytes_sent() - before) / os.path.getsize(WWW_FILE)
            if phase == "cold":
                time.sleep(2)  # the last blocks reach the cache file
        if not same_bytes(path, WWW_FILE):
            sys.exit("open_modes: the mount's bytes differ from the origin's")
        return got
    finally:
        subprocess.run(["umount", mnt], timeout=STEP_TIMEOUT)
        daemon.wait(timeout=STEP_TIMEOUT)
        shutil.rmtree(cache, ignore_errors=True)


def baselines(origin):
    drop_caches()
    cold = curl_rate(origin.url + "big.bin")
    drop_caches()
    warm = read_rate(WWW_FILE)
    return {"cold": cold, "warm": warm, "hot": read_rate(WWW_FILE)}


def main():
    global WWW_FILE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bin", default="target/release/ston-fs")
    parser.add_argument("--out", default="benches/results/open_modes.md")
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    tmp = tempfile.mkdtemp(prefix="ston-fs-open-modes-", dir="/var/tmp")
    os.chmod(tmp, 0o755)
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    os.chmod(www, 0o755)
    WWW_FILE = os.path.join(www, "big.bin")
    with open(WWW_FILE, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(CHUNK))
    os.chmod(WWW_FILE, 0o644)
    loads = [os.getloadavg()[0]]
    results = {name: [] for name, _ in SETTINGS}
    origin = Origin(tmp, www)
    try:
        for round_no in range(args.rounds):
            shift = round_no % len(SETTINGS)
            for name, opts in SETTINGS[shift:] + SETTINGS[:shift]:
                got = measure(binary, origin, tmp, opts)
                base = baselines(origin)
                results[name].append((got, base))
                print(f"round {round_no + 1}: {name}: " + ", ".join(
                    f"{p} {got[p]:.0f} MB/s ÷ {base[p]:.0f} = {got[p] / base[p]:.2f}"
                    for p in ("cold", "warm", "hot")), flush=True)
    finally:
        origin.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    write_report(args, results, loads)


def cell(values, digits=2):
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def write_report(args, results, loads):
    lines = [
        "# What the open mode costs a big file",
        "",
        f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
        f"(`sudo python3 benches/open_modes.py --rounds {args.rounds}`), one {args.size_mib} MiB "
        f"file, {args.rounds} alternating rounds, {os.cpu_count()} cores, kernel "
        f"{os.uname().release}, load average {loads[0]:.1f} at the start and {loads[1]:.1f} "
        "at the end. Medians [ranges] of the rounds; every ratio is against its own round's "
        "baseline.",
        "",
        "| setting | cold ÷ curl | warm ÷ local disk | hot ÷ local page cache "
        "| cold MB/s | origin bytes ÷ file: cold, warm, hot |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        ratio = {p: [g[p] / b[p] for g, b in runs] for p in ("cold", "warm", "hot")}
        origin = " / ".join(cell([g[p + " origin"] for g, _ in runs]) for p in ("cold", "warm", "hot"))
        lines.append(f"| {name} | {cell(ratio['cold'])} | {cell(ratio['warm'])} | "
                     f"{cell(ratio['hot'])} | {cell([g['cold'] for g, _ in runs], 0)} | {origin} |")
    base = [b for runs in results.values() for _, b in runs]
    lines += ["", "Baselines (MB/s, all rounds): curl " + cell([b["cold"] for b in base], 0)
              + ", local disk " + cell([b["warm"] for b in base], 0)
              + ", local page cache " + cell([b["hot"] for b in base], 0) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)


WWW_FILE = ""

if __name__ == "__main__":
    main()
