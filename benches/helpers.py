#!/usr/bin/env python3
"""Small, dependency-free helpers for benches/bench.sh.

They live in Python rather than bash because they either need one long-lived
process (so interpreter start-up does not dominate a per-file loop) or do
arithmetic / formatting that is clumsy in shell.

Subcommands (all print to stdout):
  genfiles DIR N SIZE SEED            write N random SIZE-byte files sNNNNN.bin into DIR
  logstats LOG --from L [--to L] [--uri RE]
                                      "requests body_bytes non_2xx" for access-log lines
                                      L+1..(to), optionally only URIs matching RE
  randread PATH REF N SEED            N seeded random 4 KiB preads of PATH, each compared
                                      with the same range of REF (untimed); prints
                                      "mismatches ms_per_read"
  smallfiles DIR N [--verify REFDIR] [--budget SECONDS]
                                      open+read+close sNNNNN.bin for i<N in one process,
                                      stopping early once the budget is spent; prints
                                      "files_read files_per_s mismatches" (the comparison
                                      with REFDIR happens after the timed loop)
  median V...                         median of the numbers
  render SAMPLES META CHECKS NOTES SYSTEMS MD JSON
                                      print the results tables, write markdown + JSON
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
    d, n, size, seed = args[0], int(args[1]), int(args[2]), int(args[3])
    rng = random.Random(seed)
    for i in range(n):
        with open(os.path.join(d, SMALL_NAME.format(i)), "wb") as f:
            f.write(rng.randbytes(size))


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
    offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(n)]
    got = []
    # Timed: the reads of PATH only; the reference is read afterwards.
    t0 = time.perf_counter()
    for off in offsets:
        got.append(os.pread(fd, 4096, off))
    dt = time.perf_counter() - t0
    bad = sum(1 for off, data in zip(offsets, got) if data != os.pread(rfd, 4096, off))
    os.close(fd)
    os.close(rfd)
    print(bad, f"{dt * 1000 / n:.4f}")


def cmd_smallfiles(args):
    d, n = args[0], int(args[1])
    ref, budget = None, None
    i = 2
    while i < len(args):
        if args[i] == "--verify":
            ref = args[i + 1]
        elif args[i] == "--budget":
            budget = float(args[i + 1])
        else:
            sys.exit(f"smallfiles: unknown arg {args[i]}")
        i += 2
    paths = [os.path.join(d, SMALL_NAME.format(i)) for i in range(n)]
    got = []
    # Timed loop: nothing but open+read+close (and keeping the bytes), identical
    # for every side. The budget is checked every 50 files so that a slow side
    # (httpdirfs costs ~0.1 s a file) stops in bounded time with a valid rate.
    t0 = time.perf_counter()
    deadline = None if budget is None else t0 + budget
    for k, p in enumerate(paths):
        fd = os.open(p, os.O_RDONLY)
        got.append(os.read(fd, 65536))
        os.close(fd)
        if deadline is not None and k % 50 == 49 and time.perf_counter() > deadline:
            break
    dt = time.perf_counter() - t0
    bad = 0
    if ref is not None:
        for k, data in enumerate(got):
            with open(os.path.join(ref, SMALL_NAME.format(k)), "rb") as f:
                if f.read() != data:
                    bad += 1
    print(len(got), f"{len(got) / dt:.1f}", bad)


def cmd_median(args):
    print(statistics.median(float(a) for a in args))


# ---------------------------------------------------------------- rendering
#
# bench.sh appends one line per measurement to SAMPLES:
#     figure-key \t who \t run \t value
# where who is a system name (ston-fs, httpdirfs, rclone) or "baseline", and
# to NOTES "figure-key \t who \t text" and to SYSTEMS "name \t field \t value".
# Everything below (medians, ranges, ratios, best peer, targets, "met") is
# computed here from those samples; nothing is decided in the shell.

SUBJECT = "ston-fs"
MIB = 2 ** 20

# kind: "ratio" = system ÷ same-run baseline; "peer" = ston-fs ÷ best peer in
# the same run; "abs" = the value itself. For ">=" the median is checked; for
# "<=" and "==" (origin traffic) every run must meet it.
#
# Figures are listed in the order they are measured inside a run.


def figure_defs(meta):
    n_random = int(meta.get("n_random", 200))
    bs = int(meta.get("block_size_bytes", MIB))
    bs_h = meta.get("block_size", "1M")
    n_small = meta.get("n_small", "?")
    big_h = meta.get("big_size_h", "?")
    mid_h = meta.get("mid_size_h", "?")
    readers = meta.get("n_readers", "16")
    rand_cap = n_random * bs / MIB
    return [
        dict(key="cold_fresh", id="1", workload=f"cold sequential read, {big_h}, fresh state",
             unit="MB/s", better="higher", baseline="curl (same state)",
             detail="fresh mount, empty cache, dd bs=1M; nothing heavy ran just before, the last "
                    "drop_caches was at least 5 s earlier",
             targets=[("ratio", ">=", 0.9, "≥ 0.9× curl"), ("peer", ">=", 1.2, "≥ 1.2× best peer")]),
        dict(key="cold_fill", id="1b", values_from="cold_fresh",
             workload="cold read (fresh state) against filling a local file",
             unit="MB/s", better="higher", baseline="dd to a new local file",
             detail="the ceiling for a cache that stores what it reads: the same bytes written "
                    "to a new file on the cache's file system (no fsync)", targets=[]),
        dict(key="cold_heavy", id="2", workload=f"cold sequential read, {big_h}, after a memory-heavy workload",
             unit="MB/s", better="higher", baseline="curl (same state)",
             detail="as 1, right after a big local file was read hot, a short fio and drop_caches",
             targets=[("ratio", ">=", 0.9, "≥ 0.9× curl"), ("peer", ">=", 1.2, "≥ 1.2× best peer")]),
        dict(key="cold_traffic", id="3", workload="origin traffic of the fresh cold read",
             unit="B", better="lower", baseline="file size",
             detail="origin body bytes ÷ file size", targets=[("ratio", "==", 1.0, "= 1.00")]),
        dict(key="rand_traffic", id="4",
             workload=f"{n_random} random 4 KiB reads of the cold file: origin data pulled",
             unit="MiB", better="lower", baseline="file size",
             detail=f"fresh mount, empty cache; seed {meta.get('random_seed', '?')}; ratio = share of "
                    f"the file pulled; ston-fs target: at most one {bs_h} block per read",
             targets=[("abs", "<=", rand_cap, f"≤ {n_random} blocks ({rand_cap:g} MiB)")]),
        dict(key="rand_ms", id="5", workload=f"{n_random} random 4 KiB reads of the cold file: latency",
             unit="ms/read", better="lower", baseline="local copy, page cache dropped",
             detail="mean time of one pread", targets=[]),
        dict(key="after_random", id="6", workload="sequential read after the random reads (cold-after-random)",
             unit="MB/s", better="higher", baseline="curl (fresh state)",
             detail="same mount, right after 5, of the same file on purpose: what the random reads "
                    "(and any prefetch they started) left in the cache counts here, and only here (the cold "
                    "reads 1-2 use a fresh daemon on an emptied cache dir); origin MiB 0 = the file was "
                    "already whole after 5, so this was not a cold read", targets=[]),
        dict(key="warm", id="7", workload="warm sequential read (page cache dropped)",
             unit="MB/s", better="higher", baseline="local copy, page cache dropped",
             detail="data in the system's cache dir; the local copy was written in the same run",
             targets=[("ratio", ">=", 0.9, "≥ 0.9× local"), ("peer", ">=", 1.1, "≥ 1.1× best peer")]),
        dict(key="hot", id="8", workload="hot sequential read (third read)",
             unit="MB/s", better="higher", baseline="local copy, page cache",
             detail="page cache kept after 7", targets=[("ratio", ">=", 0.8, "≥ 0.8× local")]),
        dict(key="small_cold", id="9", workload=f"{n_small} cold 4 KiB files",
             unit="files/s", better="higher", baseline="local copies, page cache dropped",
             detail="open+read+close, one process, first access through the mount", targets=[]),
        dict(key="small_cold_reqs", id="10", workload=f"{n_small} cold 4 KiB files: origin requests",
             unit="req/file", better="lower", baseline="",
             detail="requests for the files' URLs ÷ files read (HEADs included); directory "
                    "listings in the notes", targets=[("abs", "<=", 1.0, "≤ 1.0")]),
        dict(key="small_hot", id="11", workload=f"{n_small} 4 KiB files again, hot",
             unit="files/s", better="higher", baseline="local copies, page cache",
             detail="right after 9, page cache kept", targets=[("ratio", ">=", 0.5, "≥ 0.5× local")]),
        dict(key="small_hot_zmo", id="11z", workload=f"{n_small} 4 KiB files again, hot, "
                 "ston-fs with zero_message_opens=true",
             unit="files/s", better="higher", baseline="local copies, page cache",
             detail="remounted with its cache kept; one pass to fill the page cache, then "
                    "the timed pass; opens and closes send nothing to the daemon",
             targets=[("ratio", ">=", 0.5, "≥ 0.5× local")]),
        dict(key="small_warm", id="12", workload=f"{n_small} 4 KiB files, warm (page cache dropped)",
             unit="files/s", better="higher", baseline="local copies, page cache dropped",
             detail="", targets=[("ratio", ">=", 0.5, "≥ 0.5× local")]),
        dict(key="fio_warm", id="13", workload="fio 4 KiB randread, 4 jobs, warm",
             unit="IOPS", better="higher", baseline="local copy, page cache dropped",
             detail=f"psync, direct=0, invalidate=0, {meta.get('fio_runtime', '?')} s",
             targets=[("ratio", ">=", 0.7, "≥ 0.7× local")]),
        dict(key="fio_hot", id="14", workload="fio 4 KiB randread, 4 jobs, hot",
             unit="IOPS", better="higher", baseline="local copy, page cache",
             detail="same job after the whole file was read", targets=[("ratio", ">=", 0.7, "≥ 0.7× local")]),
        dict(key="warm_reqs", id="15", workload="origin requests during the warm and hot passes",
             unit="req", better="lower", baseline="",
             detail="7, 8, 11, 11z, 12, 13 and 14 together", targets=[("abs", "==", 0.0, "= 0")]),
        dict(key="concurrent", id="16", workload=f"{readers} readers of one cold {mid_h} file",
             unit="B", better="lower", baseline="file size",
             detail="origin body bytes ÷ file size", targets=[("ratio", "==", 1.0, "= 1.00")]),
        dict(key="rss_end", id="17", workload="daemon RSS after the run's workloads",
             unit="MiB", better="lower", baseline="", detail="VmRSS; RSS right after mount in the notes",
             targets=[]),
        dict(key="rss_peak", id="17b", workload="daemon peak RSS", unit="MiB", better="lower",
             baseline="", detail="VmHWM", targets=[]),
    ]


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def load_tsv(path, ncols):
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                parts = line.split("\t", ncols - 1)
                parts += [""] * (ncols - len(parts))
                out.append(parts)
    return out


def load_kv(path):
    kv = {}
    for k, v in load_tsv(path, 2):
        if k:
            kv[k] = v
    return kv


def load_checks(path):
    """Aggregated by check name, in first-seen order: a check made 10 times is one line."""
    agg = {}
    for name, status, detail in load_tsv(path, 3):
        if not name:
            continue
        a = agg.setdefault(name, {"check": name, "ok": 0, "fail": 0, "details": []})
        a["ok" if status == "ok" else "fail"] += 1
        if status != "ok" and detail and detail not in a["details"]:
            a["details"].append(detail)
    out = []
    for a in agg.values():
        n = a["ok"] + a["fail"]
        if a["fail"]:
            detail = f"{a['fail']} of {n} failed: " + "; ".join(a["details"][:3])
        else:
            detail = f"{n} of {n} ok"
        out.append({"check": a["check"], "status": "ok" if a["fail"] == 0 else "FAIL",
                    "passed": a["ok"], "total": n, "detail": detail})
    return out


def stats(values):
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def met(kind_stats, op, k):
    """kind_stats: stats of the checked quantity (ratios or values)."""
    if kind_stats is None:
        return None
    if op == ">=":
        return kind_stats["median"] >= k
    if op == "<=":
        return kind_stats["max"] <= k * 1.0005 + 1e-12
    if op == "==":
        # equal when printed to 2 decimals, in every run
        return abs(kind_stats["max"] - k) < 0.005 and abs(kind_stats["min"] - k) < 0.005
    return None


def fmt_num(v, unit):
    if v is None:
        return "—"
    if unit == "B":   # shown in MiB (the unit column says so)
        return f"{v / MIB:.2f}"
    if unit in ("MB/s", "IOPS", "files/s"):
        return f"{v:.0f}"
    if unit == "ms/read":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if unit in ("MiB",):
        return f"{v:.1f}"
    if unit == "req/file":
        return f"{v:.2f}"
    if unit == "req":
        return f"{v:.0f}"
    return f"{v:g}"


def fmt_stats(s, unit):
    if s is None:
        return None
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt_num(s["median"], unit)
    lo, hi = fmt_num(s["min"], unit), fmt_num(s["max"], unit)
    return f"{fmt_num(s['median'], unit)} ({lo}–{hi})"


def fmt_ratio(s, precise=False):
    if s is None:
        return "—"

    def f(x):
        if precise:
            return f"{x:.3f}"
        return f"{x:.2g}" if 0 < abs(x) < 0.1 else f"{x:.2f}"

    if s["n"] == 1 or f(s["min"]) == f(s["max"]):
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"


def cmd_render(args):
    samples_path, meta_path, checks_path, notes_path, systems_path, md_path, json_path = args
    meta = load_kv(meta_path)
    checks = load_checks(checks_path)
    systems_kv = {}
    for name, field, value in load_tsv(systems_path, 3):
        systems_kv.setdefault(name, {"name": name})[field] = value
    order = meta.get("systems", SUBJECT).split()
    systems = [systems_kv.get(s, {"name": s, "status": "unavailable", "reason": "never set up"})
               for s in order]
    for s in systems:
        s.setdefault("status", "unavailable")
    avail = [s["name"] for s in systems if s["status"] == "ok"]
    peers_avail = [s for s in avail if s != SUBJECT]

    # samples[key][who][run] = value; errors[key][who] = [texts]
    samples, errors = {}, {}
    for key, who, run, value in load_tsv(samples_path, 4):
        if value.startswith("error"):
            errors.setdefault(key, {}).setdefault(who, []).append(f"run {run}: {value[6:].strip()}")
            continue
        v = num(value)
        if v is None:
            continue
        samples.setdefault(key, {}).setdefault(who, {})[int(run)] = v
    notes = {}
    for key, who, text in load_tsv(notes_path, 3):
        notes.setdefault(key, []).append((who, text))

    figures = []
    for d in figure_defs(meta):
        src = d.get("values_from", d["key"])
        by_who = samples.get(src, {})
        base_runs = samples.get(d["key"], {}).get("baseline", {})
        fig = {k: d[k] for k in ("id", "key", "workload", "unit", "better", "detail")}
        fig["baseline"] = {"what": d["baseline"], **(stats(list(base_runs.values())) or {}),
                           "runs": base_runs} if d["baseline"] else None
        fig["systems"] = {}
        for s in order:
            runs = by_who.get(s, {})
            entry = {"runs": runs, "stats": stats(list(runs.values())),
                     "errors": errors.get(src, {}).get(s, []) + (
                         errors.get(d["key"], {}).get(s, []) if src != d["key"] else [])}
            if base_runs:
                ratios = [runs[r] / base_runs[r] for r in runs
                          if r in base_runs and base_runs[r] not in (0, None)]
                entry["ratio"] = stats(ratios)
            else:
                entry["ratio"] = None
            fig["systems"][s] = entry
        # Best peer: the best median among the peers measured.
        best = None
        for p in peers_avail:
            st = fig["systems"].get(p, {}).get("stats")
            if st is None:
                continue
            if best is None or (st["median"] > best[1] if d["better"] == "higher" else st["median"] < best[1]):
                best = (p, st["median"])
        fig["best_peer"] = None
        subj = fig["systems"].get(SUBJECT, {})
        if best is not None and subj.get("runs"):
            pruns = fig["systems"][best[0]]["runs"]
            ratios = [subj["runs"][r] / pruns[r] for r in subj["runs"]
                      if r in pruns and pruns[r] not in (0, None)]
            fig["best_peer"] = {"name": best[0], "ratio": stats(ratios)}
        targets = []
        for kind, op, k, text in d["targets"]:
            if kind == "ratio":
                q = subj.get("ratio")
            elif kind == "peer":
                q = fig["best_peer"]["ratio"] if fig["best_peer"] else None
                if fig["best_peer"] is None:
                    text += " (no peer measured)"
            else:
                q = subj.get("stats")
            targets.append({"kind": kind, "op": op, "target": k, "text": text, "met": met(q, op, k)})
        fig["targets"] = targets
        fig["notes"] = [{"system": w, "text": t} for w, t in notes.get(d["key"], [])]
        # Extra series recorded as "key.what" (origin requests, RSS at mount...):
        # median and range per system, in the notes and the JSON.
        fig["extra"] = {}
        for aux in sorted(k for k in samples if k.startswith(d["key"] + ".")):
            what = aux.split(".", 1)[1]
            per = {s: stats(list(samples[aux].get(s, {}).values())) for s in order}
            fig["extra"][what] = {s: st for s, st in per.items() if st}
            cells = [f"{s} {fmt_stats(st, 'x')}" for s, st in per.items() if st]
            if cells:
                fig["notes"].append({"system": "", "text": f"{what.replace('_', ' ')}: " + ", ".join(cells)})
        if d["key"] not in samples and src == d["key"] and not errors.get(d["key"]):
            fig["measured"] = False
        else:
            fig["measured"] = True
        figures.append(fig)

    def cell(fig, s):
        info = next((x for x in systems if x["name"] == s), {})
        if info.get("status") != "ok":
            return "unavailable"
        e = fig["systems"].get(s, {})
        txt = fmt_stats(e.get("stats"), fig["unit"])
        if txt is None:
            return "error" if e.get("errors") else "—"
        if e.get("errors"):
            txt += f" [{len(e['errors'])} failed]"
        return txt

    header = ["#", "workload", "unit", "baseline"] + order + \
             [f"{SUBJECT} ÷ baseline", f"{SUBJECT} ÷ best peer", "target", "met"]
    table = []
    for f in figures:
        if not f["measured"]:
            continue
        b = f["baseline"]
        if b is None:
            base = "—"
        elif "median" in b:
            base = f"{b['what']}: {fmt_stats(b, f['unit'])}"
        else:
            base = f"{b['what']}: error"
        precise = any(t["op"] == "==" and t["kind"] == "ratio" for t in ([] if not f["targets"] else f["targets"]))
        r_base = fmt_ratio(f["systems"].get(SUBJECT, {}).get("ratio"), precise)
        bp = f["best_peer"]
        r_peer = "—" if bp is None or bp["ratio"] is None else f"{fmt_ratio(bp['ratio'])} vs {bp['name']}"
        unit = ("MiB" if f["unit"] == "B" else f["unit"]) + (" ↑" if f["better"] == "higher" else " ↓")
        tg = "; ".join(t["text"] for t in f["targets"]) or "context"
        mt = "; ".join({True: "yes", False: "NO", None: "—"}[t["met"]] for t in f["targets"]) or "—"
        table.append([f["id"], f["workload"], unit, base] + [cell(f, s) for s in order] +
                     [r_base, r_peer, tg, mt])

    rheader = ["#", "workload (÷ same-run baseline)"] + order
    rtable = []
    for f in figures:
        if not f["measured"] or f["baseline"] is None:
            continue
        row = [f["id"], f"{f['workload']} (÷ {f['baseline']['what']})"]
        for s in order:
            info = next((x for x in systems if x["name"] == s), {})
            row.append("unavailable" if info.get("status") != "ok"
                       else fmt_ratio(f["systems"][s].get("ratio"), f["unit"] == "B"))
        rtable.append(row)

    def render_table(hdr, rows):
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(hdr)]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        return [line(hdr), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]

    main_lines = render_table(header, table)
    ratio_lines = render_table(rheader, rtable)
    sys_lines = []
    for s in systems:
        if s["status"] == "ok":
            sys_lines.append(f"{s['name']} ({s.get('version', '?')}): `{s.get('command', '?')}`")
        else:
            sys_lines.append(f"{s['name']}: unavailable — {s.get('reason', 'unknown reason')}")
    note_lines = []
    for f in figures:
        if not f["measured"]:
            continue
        parts = [f["detail"]] if f["detail"] else []
        for s in order:
            e = f["systems"].get(s, {})
            for err in e.get("errors", [])[:3]:
                parts.append(f"{s} failed {err}")
        for n in f["notes"]:
            parts.append(f"{n['system']}: {n['text']}" if n["system"] not in ("", "-") else n["text"])
        if parts:
            note_lines.append(f"[{f['id']}] " + "; ".join(parts))

    print("\n".join(main_lines))
    print("\nratios against the same-run baseline (median, min–max over runs):")
    print("\n".join(ratio_lines))
    print("systems:")
    print("\n".join("  " + x for x in sys_lines))
    if note_lines:
        print("notes:")
        print("\n".join("  " + n for n in note_lines))
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
                f"memory-heavy workload: {meta.get('heavy_desc', '?')}; "
                f"{meta.get('reps', '?')} runs, each starting with a different system\n")
        f.write(f"- origin: nginx {meta.get('nginx_version', '?')} on 127.0.0.1 (sendfile on)\n")
        orders = [f"run {k[len('order_run_'):]}: {v}" for k, v in meta.items() if k.startswith("order_run_")]
        if orders:
            f.write(f"- order of the systems: {'; '.join(orders)}\n")
        f.write(f"- command: `{meta.get('command', 'sudo bash benches/bench.sh')}`\n\n")
        f.write("Systems (each mounts the same nginx with its own fresh cache dir):\n\n")
        f.write("\n".join(f"- {x}" for x in sys_lines) + "\n\n")
        f.write("Every cell is the median over the runs with the range (min–max) in brackets. "
                "Ratios are computed per run against the baseline (or the best peer) measured in "
                "the same run, then the median and range of those are shown. "
                "Targets apply to ston-fs; \"≥\" targets are checked on the median ratio, "
                "\"≤\" and \"=\" (origin traffic) on every run. MB/s = 10^6 bytes/s. "
                "\"fresh state\": nothing heavy ran just before (the last drop_caches was at least 5 s "
                "earlier); \"after a memory-heavy "
                "workload\": a big local file was read hot, fio ran, then the page cache was "
                "dropped. \"warm\" = data in the system's cache dir, page cache dropped; "
                "\"hot\" = page cache kept. ↑: higher is better; ↓: lower is better (then a "
                "ratio below 1 is the better side).\n\n")
        f.write("\n".join(main_lines) + "\n")
        f.write("\nRatios against the same-run baseline, every system (median, min–max):\n\n")
        f.write("\n".join(ratio_lines) + "\n")
        if note_lines:
            f.write("\nNotes:\n\n" + "\n".join(f"- {n}" for n in note_lines) + "\n")
        if checks:
            f.write("\nChecks:\n\n" + "\n".join(
                f"- {c['status']} {c['check']}" + (f" — {c['detail']}" if c["detail"] else "")
                for c in checks) + "\n")
        f.write("\n![ratios](latest.png)\n")

    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "systems": systems, "figures": figures, "checks": checks},
                  f, indent=2)
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
