#!/usr/bin/env python3
"""Small, dependency-free helpers for benches/bench.sh.

They live in Python rather than bash because they either need one long-lived
process (so interpreter start-up does not dominate a per-file loop) or do
arithmetic / formatting that is clumsy in shell.

Subcommands (all print to stdout):
  genfiles DIR LOCALDIR N SIZE SEED   write N random SIZE-byte files sNNNNN.bin into
                                      both DIR (origin docroot) and LOCALDIR (baseline copy)
  logstats LOG --from L [--to L] [--uri RE]
                                      "requests body_bytes non_2xx" for access-log lines
                                      L+1..(to), optionally only URIs matching RE
  randread PATH REF N SEED            N seeded random 4 KiB preads of PATH; each compared
                                      with the same range of REF; prints the mismatch count
  smallfiles DIR N [--verify REFDIR]  open+read+close sNNNNN.bin for i<N in one process;
                                      prints files/s (and checks contents against REFDIR)
  median V...                         median of the numbers
  render TSV META CHECKS MD JSON      print the results table, write markdown + JSON
"""
import json
import os
import random
import re
import statistics
import sys
import time

SMALL_NAME = "s{:05d}.bin"


def cmd_genfiles(args):
    docroot, local, n, size, seed = args[0], args[1], int(args[2]), int(args[3]), int(args[4])
    rng = random.Random(seed)
    for i in range(n):
        data = rng.randbytes(size)
        for d in (docroot, local):
            with open(os.path.join(d, SMALL_NAME.format(i)), "wb") as f:
                f.write(data)


def read_log_lines(path, first, last):
    """Lines first+1 .. last (1-based, like `wc -l` marks); last=None means to EOF."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if lineno <= first:
                continue
            if last is not None and lineno > last:
                break
            yield line.rstrip("\n")


def cmd_logstats(args):
    log, first, last, uri_re = args[0], 0, None, None
    i = 1
    while i < len(args):
        if args[i] == "--from":
            first = int(args[i + 1])
        elif args[i] == "--to":
            last = int(args[i + 1])
        elif args[i] == "--uri":
            uri_re = re.compile(args[i + 1])
        else:
            sys.exit(f"logstats: unknown arg {args[i]}")
        i += 2
    reqs = body = bad = 0
    for line in read_log_lines(log, first, last):
        # msec \t status \t body_bytes_sent \t request \t range \t request_time \t connection
        f = line.split("\t")
        if len(f) < 4:
            continue
        parts = f[3].split(" ")
        uri = parts[1] if len(parts) > 1 else f[3]
        if uri_re is not None and not uri_re.search(uri):
            continue
        reqs += 1
        body += int(f[2]) if f[2].isdigit() else 0
        if not f[1].startswith("2"):
            bad += 1
    print(reqs, body, bad)


def cmd_randread(args):
    path, ref, n, seed = args[0], args[1], int(args[2]), int(args[3])
    fd = os.open(path, os.O_RDONLY)
    rfd = os.open(ref, os.O_RDONLY)
    size = os.fstat(rfd).st_size
    rng = random.Random(seed)
    bad = 0
    for _ in range(n):
        off = rng.randrange(0, size // 4096) * 4096
        if os.pread(fd, 4096, off) != os.pread(rfd, 4096, off):
            bad += 1
    os.close(fd)
    os.close(rfd)
    print(bad)


def cmd_smallfiles(args):
    d, n = args[0], int(args[1])
    ref = args[3] if len(args) > 3 and args[2] == "--verify" else None
    paths = [os.path.join(d, SMALL_NAME.format(i)) for i in range(n)]
    if ref is None:
        # Timed loop: nothing but open+read+close, identical for both sides.
        t0 = time.perf_counter()
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)
        dt = time.perf_counter() - t0
        print(f"{n / dt:.1f}")
        return
    bad = 0
    for i, p in enumerate(paths):
        fd = os.open(p, os.O_RDONLY)
        data = os.read(fd, 65536)
        os.close(fd)
        with open(os.path.join(ref, SMALL_NAME.format(i)), "rb") as f:
            if f.read() != data:
                bad += 1
    print(bad)


def cmd_median(args):
    print(statistics.median(float(a) for a in args))


# ---------------------------------------------------------------- rendering

def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt_value(v, unit):
    if v is None:
        return "error"
    if unit == "B":
        return f"{v / 2**20:.2f} MiB"
    if unit in ("MB/s", "MiB"):
        return f"{v:.1f} {unit}"
    if unit == "blocks":
        return f"{v:.1f} {unit}"
    return f"{v:.0f} {unit}" if unit else f"{v:g}"


def met(ratio, op, target):
    if ratio is None or target is None:
        return None
    if op == ">=":
        return ratio >= target
    if op == "<=":
        return ratio <= target * 1.0005
    if op == "==":
        return abs(ratio - target) < 0.005  # equal when printed to 2 decimals
    return None


def load_rows(tsv):
    """One row per figure, in file order; a later row with the same id wins."""
    rows = {}
    cols = ["id", "workload", "figure", "value", "unit", "baseline", "baseline_unit",
            "target_op", "target", "target_text", "note"]
    if os.path.exists(tsv):
        with open(tsv, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                r = dict(zip(cols, line.split("\t")))
                r.setdefault("note", "")
                rows[r["id"]] = r

    def order(rid):  # "1" < "4" < "5" < "5b" < "10" < "10b"
        m = re.match(r"(\d+)(.*)", rid)
        return (int(m.group(1)), m.group(2)) if m else (10**9, rid)

    return sorted(rows.values(), key=lambda r: order(r["id"]))


def load_kv(path):
    kv = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                if k:
                    kv[k] = v
    return kv


def load_checks(path):
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                name, _, rest = line.rstrip("\n").partition("\t")
                status, _, detail = rest.partition("\t")
                if name:
                    out.append({"check": name, "status": status, "detail": detail})
    return out


def cmd_render(args):
    tsv, meta_path, checks_path, md_path, json_path = args
    meta = load_kv(meta_path)
    checks = load_checks(checks_path)
    rows = []
    for r in load_rows(tsv):
        v, b = num(r["value"]), num(r["baseline"])
        t = num(r["target"])
        ratio = v / b if v is not None and b not in (None, 0) else None
        rows.append({
            "id": r["id"], "workload": r["workload"], "figure": r["figure"],
            "value": v, "unit": r["unit"], "baseline": b, "baseline_unit": r["baseline_unit"],
            "ratio": ratio, "target_op": r["target_op"] or None, "target": t,
            "target_text": r["target_text"], "met": met(ratio, r["target_op"], t),
            "note": r["note"],
        })

    header = ["#", "workload", "figure", "value", "baseline", "ratio", "target", "met"]
    table = []
    for r in rows:
        base = fmt_value(r["baseline"], r["baseline_unit"])
        if r["baseline"] is None and r["baseline_unit"]:
            base = r["baseline_unit"]
        ratio = "—" if r["ratio"] is None else (
            f"{r['ratio']:.3f}" if r["target_op"] == "==" else f"{r['ratio']:.2f}")
        m = {True: "yes", False: "NO", None: "—"}[r["met"]]
        table.append([r["id"], r["workload"], r["figure"], fmt_value(r["value"], r["unit"]),
                      base, ratio, r["target_text"] or "—", m])

    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
              for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [line(header), sep] + [line(row) for row in table]
    print("\n".join(out))
    notes = [f"  [{r['id']}] {r['note']}" for r in rows if r["note"]]
    if notes:
        print("notes:")
        print("\n".join(notes))
    if checks:
        print("checks:")
        for c in checks:
            print(f"  {c['status']:<4} {c['check']}" + (f" — {c['detail']}" if c["detail"] else ""))

    with open(md_path, "w", encoding="utf-8") as f:
        f.write("# ston-fs benchmark — latest run\n\n")
        f.write(f"- date: {meta.get('date', '?')}\n")
        f.write(f"- commit: `{meta.get('commit', '?')}`\n")
        f.write(f"- kernel: {meta.get('kernel', '?')}\n")
        f.write(f"- machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
                f"{meta.get('mem', '?')} RAM\n")
        f.write(f"- mode: {meta.get('mode', '?')} — big file {meta.get('big_size_h', '?')}, "
                f"{meta.get('n_small', '?')} small files, fio {meta.get('fio_runtime', '?')} s, "
                f"median of {meta.get('reps', '?')} runs for throughput figures\n")
        f.write(f"- ston-fs options: `{meta.get('ston_fs_opts', '?')}`; origin: nginx "
                f"{meta.get('nginx_version', '?')} on 127.0.0.1 (sendfile on)\n")
        f.write(f"- command: `{meta.get('command', 'sudo bash benches/bench.sh')}`\n\n")
        f.write("Ratios are ston-fs ÷ baseline measured in the same run; MB/s = 10^6 bytes/s. "
                "\"warm\" = data already in the ston-fs cache dir, page cache dropped before "
                "each side; \"hot\" = data in the page cache.\n\n")
        f.write("\n".join(out) + "\n")
        if notes:
            f.write("\nNotes:\n\n" + "\n".join(f"- {n.strip()}" for n in notes) + "\n")
        if checks:
            f.write("\nChecks:\n\n" + "\n".join(
                f"- {c['status']} {c['check']}" + (f" — {c['detail']}" if c["detail"] else "")
                for c in checks) + "\n")
        f.write("\n![ratios](latest.png)\n")

    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "figures": rows, "checks": checks}, f, indent=2)
        f.write("\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = globals().get("cmd_" + cmd)
    if fn is None:
        sys.exit(f"unknown subcommand {cmd}\n{__doc__}")
    fn(args)


if __name__ == "__main__":
    main()
