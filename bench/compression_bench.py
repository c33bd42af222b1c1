#!/usr/bin/env python3
"""Compression part of the benchmark: one backlog of pgbench WAL drained by
each method into a directory and into SeaweedFS, archive sizes and speeds.

Run through scripts/bench.sh (WALARCH_BENCH_SUITES contains "compression").

- The backlog: a template cluster runs `pgbench -i -s 10`, a checkpoint, then
  the standard TPC-B-like script (4 clients, a checkpoint every 30 s, so
  full-page images come back as on a busy server) until N segments are .ready
  (the initialisation's segments are marked done, so the backlog is the
  workload's WAL only). It is made once; every run starts from a copy.
- Methods: walarch_ext (copy-ahead, parallel_copies 4) with compression off,
  zstd level 1 and zstd level 3; pgBackRest archive-push async
  (process-max 4) with compress-type zst at levels 1 and 3, lz4 and gz (its
  default levels); contrib basic_archive (raw) for the directory only.
- Directory: a fresh directory on the work file system. S3: a fresh
  SeaweedFS cluster per run behind bench/rtt-proxy (TLS, RTT delay), as in
  the s3 suite.
- Drain: from pg_reload_conf() until no .ready file is left. Stored: the
  sizes of the archived segment files or objects (checksum sidecars and
  pgBackRest's archive.info excluded). CPU: the archiver's and the
  worker's CPU time for walarch_ext and basic_archive; for pgBackRest every
  process started with the run's configuration, sampled every 20 ms (CPU
  spent after a process's last sample is missed: an undercount in
  pgBackRest's favour).
"""

import json
import os
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import s3_bench as sb
import walarch_bench as wb
from walarch_bench import BenchError, Cluster, Method, PsqlSession, chown_pg, log, run

ZST_RE = re.compile(r"^[0-9A-F]{24}(\.zst)?$")


def walarch(key, label, level):
    return Method(key, label, "walarch", copy_ahead=True, pc=4, level=level)


def pgbr(key, label, ctype, clevel=None):
    return Method(key, label, "pgbr", asynch=True, pmax=4, ctype=ctype, clevel=clevel)


METHODS = [
    walarch("walarch-raw", "walarch_ext, compression off", None),
    walarch("walarch-zstd1", "walarch_ext, zstd level 1", 1),
    walarch("walarch-zstd3", "walarch_ext, zstd level 3", 3),
    pgbr("pgbr-zst1", "pgBackRest async 4, zst level 1", "zst", 1),
    pgbr("pgbr-zst3", "pgBackRest async 4, zst level 3", "zst", 3),
    pgbr("pgbr-lz4", "pgBackRest async 4, lz4", "lz4"),
    pgbr("pgbr-gz", "pgBackRest async 4, gz", "gz"),
    Method("basic_archive", "contrib basic_archive (raw)", "basic"),
]
DESTS = ["dir", "s3"]


class CpuSampler(threading.Thread):
    """CPU seconds of the processes whose command line contains a needle, summed over every
    process seen (its last sample counts)."""

    def __init__(self, needle, exe):
        super().__init__(daemon=True)
        self.needle, self.exe = needle.encode(), exe
        self.ticks = {}
        self.halt = threading.Event()

    def sample(self):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
                if self.needle not in cmd or not cmd.split(b"\0")[0].endswith(self.exe):
                    continue
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            rest = st[st.rfind(")") + 2:].split()
            # start time tells a reused pid apart
            self.ticks[(d, rest[19])] = int(rest[11]) + int(rest[12])

    def run(self):
        while not self.halt.wait(0.02):
            self.sample()

    def stop(self):
        self.halt.set()
        self.join()
        return sum(self.ticks.values()) / wb.CLK_TCK


class CompressionHarness(sb.S3Harness):
    # the names of archived segments in the store (the encryption suite adds .age)
    stored_re = ZST_RE
    # server log lines that end a drain early (three of them)
    fail_re = wb.FAIL_RE

    def method_conf(self, m):
        """The postgresql.conf lines m adds to the archiver's (its compression)."""
        return compression_conf(m)

    def template(self, n):
        t = Cluster(self, "template")
        # Checkpoints every 30 s, so the WAL has full-page images as a busy server's does.
        t.create(["archive_command = ''", "synchronous_commit = off", "checkpoint_timeout = '30s'"])
        t.start()
        self.pg_version = t.psql("SELECT version()")
        self.seg_size = int(t.psql("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
        pgbench = [str(self.bin / "pgbench"), "-h", str(t.sock), "-p", str(t.port), "-U", "postgres"]
        run([*pgbench, "-i", "-s", "10", "-q", "postgres"], as_pg=True, cwd=t.dir, timeout=600)
        t.psql("SELECT pg_switch_wal()")
        for name in t.ready():
            os.rename(t.archive_status / f"{name}.ready", t.archive_status / f"{name}.done")
        t.psql("CHECKPOINT")
        deadline = time.monotonic() + 1800
        while t.ready_count() < n:
            if time.monotonic() > deadline:
                raise BenchError(f"pgbench made only {t.ready_count()} segments in 30 min")
            run([*pgbench, "-c", "4", "-j", "2", "-T", "5", "postgres"], as_pg=True, cwd=t.dir,
                timeout=120)
        t.stop("fast")
        # Read once stopped: autovacuum may complete more segments after pgbench.
        return t, t.ready()

    def setup_dir(self, m, c):
        conf = []
        if m.kind == "walarch":
            conf += ["shared_preload_libraries = 'walarch_ext'", "archive_library = 'walarch_ext'",
                     "walarch.archive_directory = ''", f"walarch.parallel_copies = {m.params['pc']}"]
        elif m.kind == "basic":
            conf += ["archive_library = 'basic_archive'", "basic_archive.archive_directory = ''"]
        else:
            conf += ["archive_command = ''"]
        conf += self.method_conf(m)
        with open(c.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        dest = self.dest_dir(c)
        dest.mkdir()
        chown_pg(dest)
        if m.kind == "pgbr":
            self.write_pgbr_conf(m, c)
        c.start()
        if m.kind == "walarch":
            c.psql("CREATE EXTENSION walarch_ext")
        if m.kind == "pgbr":
            run(["pgbackrest", f"--config={self.pgbr_conf(c)}", f"--stanza={wb.STANZA}",
                 "stanza-create"], as_pg=True, cwd=c.dir, timeout=120)

    def stored_dir(self, m, c):
        if m.kind == "pgbr":
            root = c.dir / "pgbr" / "repo" / "archive" / wb.STANZA
            files = [p for p in root.rglob("*") if wb.PGBR_SEG_RE.match(p.name)]
        else:
            files = [Path(e.path) for e in os.scandir(self.dest_dir(c)) if ZST_RE.match(e.name)]
        return len(files), sum(p.stat().st_size for p in files)

    def open_store(self, name, rtt):
        """The store of one run into S3: a fresh one per run."""
        self.store = sb.Store(self, name, rtt)

    def close_store(self):
        if self.store:
            self.store.stop()
            self.store = None

    def stored_s3(self, m, rep, rtt):
        objs = self.store.objects(self.prefix(m, rep, rtt) + "/")
        pat = wb.PGBR_SEG_RE if m.kind == "pgbr" else self.stored_re
        sizes = [s for k, s in objs.items() if pat.match(k.rsplit("/", 1)[-1])]
        return len(sizes), sum(sizes)

    def one_run(self, m, dest, rep, rtt, tmpl, names):
        if dest == "s3":
            self.open_store(f"store-{m.key}-{rep}", rtt)
        c = self.clone(tmpl, f"{dest}-{m.key}-{rep}")
        sess = sampler = None
        try:
            nbytes = sum((c.data / "pg_wal" / s).stat().st_size for s in names)
            if m.kind == "put":
                return self.put_run(m, c, names, nbytes, rep, rtt)
            if dest == "s3":
                with open(c.data / "postgresql.conf", "a") as f:
                    f.write("\n".join(self.method_conf(m)) + "\n")
                self.setup_s3(m, c, rep, rtt)
                enable = self.enable_s3_sql(m, c, rep, rtt)
            else:
                self.setup_dir(m, c)
                enable = self.enable_sql(m, c)
            sess = PsqlSession(c)
            sess.query(enable)
            pids = self.cpu_pids(m, c)
            sampler = CpuSampler(f"--config={c.dir}/", b"pgbackrest") if m.kind == "pgbr" else None
            if sampler:
                sampler.start()
            elapsed, cpu, logpos = wb.timed_drain(c, sess, pids, 300 + 10 * len(names),
                                                  self.fail_re)
            if sampler:
                cpu = {"pgbackrest": sampler.stop()}
                sampler = None
            sess.close()
            sess = None
            count, stored = self.stored_s3(m, rep, rtt) if dest == "s3" else self.stored_dir(m, c)
            if count < len(names):
                raise BenchError(f"only {count} of {len(names)} segments are in the archive")
            problems = [ln for ln in c.log_since(logpos).splitlines() if wb.FAIL_RE.search(ln)]
            return {"segments": len(names), "bytes": nbytes, "stored": stored, "seconds": elapsed,
                    "cpu_s": cpu, "log_problems": problems[:5]}
        finally:
            # after a failure too: a sampler left running would take CPU from the next runs
            if sampler:
                sampler.stop()
            if sess:
                sess.close()
            c.destroy()
            self.close_store()

    def main(self):
        a = self.a
        rtt = int(a.rtts.split(",")[0])
        only = set(a.methods.split(",")) if a.methods else None
        methods = [m for m in METHODS if not only or m.key in only]
        results = {f"{m.key}@{d}": [] for d in DESTS for m in methods}
        errors = {}
        log(f"compression: a backlog of {a.segments} segments of pgbench WAL")
        tmpl, names = self.template(a.segments)
        try:
            for rep in range(1, a.reps + 1):
                for dest in DESTS:
                    for m in methods:
                        if dest == "s3" and m.kind == "basic":
                            continue
                        key = f"{m.key}@{dest}"
                        if m.kind == "pgbr" and any(v.startswith("not run:") for v in errors.values()):
                            continue
                        log(f"compression rep {rep}/{a.reps}, {dest}: {m.label} ({len(names)} segments)")
                        try:
                            r = self.one_run(m, dest, rep, rtt, tmpl, names)
                        except BenchError as e:
                            msg = str(e).strip()
                            log(f"   FAILED: {msg}")
                            if "VersionNotSupportedError" in msg:
                                msg = f"not run: {wb.sh('pgbackrest version')} does not support this PostgreSQL\n{msg}"
                            errors.setdefault(key, msg)
                            continue
                        results[key].append(r)
                        log(f"   {r['seconds']:.2f}s, {r['bytes'] / r['seconds'] / 2**20:.0f} MiB/s, "
                            f"stored {r['stored'] / 2**20:.1f} MiB")
        finally:
            tmpl.destroy()
        return methods, rtt, results, errors, len(names)


def compression_conf(m):
    if m.kind == "walarch" and m.params.get("level") is not None:
        return ["walarch.compression = zstd", f"walarch.compression_level = {m.params['level']}"]
    return []


def summarize(methods, results):
    rows = []
    for dest in DESTS:
        for m in methods:
            runs = results.get(f"{m.key}@{dest}") or []
            if not runs:
                continue
            tput = [r["bytes"] / r["seconds"] / 2**20 for r in runs]
            cpu = [sum(r["cpu_s"].values()) / r["segments"] * 1000 for r in runs
                   if r["cpu_s"] and None not in r["cpu_s"].values()]
            stored = statistics.median(r["stored"] for r in runs)
            rows.append({"dest": dest, "key": m.key, "label": m.label, "kind": m.kind,
                         "n": len(runs), "mib_s": statistics.median(tput), "min": min(tput),
                         "max": max(tput), "stored": stored, "wal": runs[0]["bytes"],
                         "ratio": runs[0]["bytes"] / stored if stored else None,
                         "cpu_ms": statistics.median(cpu) if cpu else None,
                         "problems": [ln for r in runs for ln in r["log_problems"]][:5]})
    return rows


def markdown(h, rows, errors, mach, rtt, nseg, png_name, command):
    a = h.a
    out = []
    w = out.append
    w("# walarch_ext benchmark: compression\n")
    w("Generated by `scripts/bench.sh` (harness: `bench/compression_bench.py`); every figure "
      "below comes from the run described here.\n")
    w(f"Command: `{command}`\n")
    w(f"Machine: {mach['cpu']}, {mach['mem']}, {mach['virt'] or 'bare metal?'}, {mach['kernel']}, "
      f"{mach['os']}. Work directory: {mach['fs']}.\n")
    w(f"PostgreSQL: {mach['pg']}. pgBackRest: {mach['pgbackrest']}. walarch_ext: {mach['walarch']}.\n")
    w(f"Backlog: {nseg} segments of {(h.seg_size or 2**24) // 2**20} MiB of pgbench WAL "
      f"(scale 10, TPC-B-like, 4 clients, checkpoints every 30 s), {a.reps} repetitions, "
      f"interleaved. S3: a SeaweedFS cluster through the TLS proxy at {rtt} ms RTT.\n")
    for dest, title in (("dir", "Into a directory"), ("s3", f"Into S3 at {rtt} ms RTT")):
        w(f"## {title}\n")
        w("| method | stored MiB | WAL / stored | × walarch zstd 1 size | median MiB/s of WAL "
          "(min–max) | CPU ms/seg |")
        w("|---|---:|---:|---:|---:|---:|")
        ref = next((r for r in rows if r["dest"] == dest and r["key"] == "walarch-zstd1"), None)
        for r in rows:
            if r["dest"] != dest:
                continue
            rel = r["stored"] / ref["stored"] if ref and ref["stored"] else None
            w(f"| {r['label']} | {r['stored'] / 2**20:.1f} | {wb.fmt(r['ratio'], 1)} | "
              f"{wb.fmt(rel)} | {r['mib_s']:.0f} ({r['min']:.0f}–{r['max']:.0f}) | "
              f"{wb.fmt(r['cpu_ms'], 0)} |")
        w("")
    w(f"![stored size and drain speed by method]({png_name})\n")
    w("## How it is measured\n")
    w(__doc__.split("\n\n", 1)[1].strip() + "\n")
    w("- walarch_ext's stored size counts `X.zst` (or `X`) files only, not their `.sha256` "
      "records; pgBackRest's counts its segment files (`X-SHA1.zst` …), not `archive.info`.")
    w("- MiB/s is of WAL (the backlog's bytes over the drain time), whatever is stored.\n")
    if errors:
        wb.failures(w, errors)
    probs = [(r["key"], r["dest"], ln) for r in rows for ln in r["problems"]]
    if probs:
        w("Server log lines that look like problems (first few per run):\n")
        w("```")
        w("\n".join(f"{k} @ {d}: {ln}" for k, d, ln in probs))
        w("```\n")
    return "\n".join(out)


def plot(rows, png, python):
    code = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = json.loads(sys.stdin.read())
fig, axes = plt.subplots(1, 3, figsize=(14, 5), sharey=True)
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
ys = range(len(labels))
def bars(ax, dest, field, scale, title):
    vals = []
    for lab in labels:
        r = next((x for x in rows if x["label"] == lab and x["dest"] == dest), None)
        vals.append(r[field] / scale if r else 0)
    ax.barh(ys, vals)
    ax.set_title(title, fontsize=9)
bars(axes[0], "dir", "stored", 2**20, "stored MiB (directory)")
bars(axes[1], "dir", "mib_s", 1, "MiB/s of WAL into a directory")
bars(axes[2], "s3", "mib_s", 1, "MiB/s of WAL into S3 (RTT proxy)")
axes[0].set_yticks(list(ys))
axes[0].set_yticklabels(labels, fontsize=8)
axes[0].invert_yaxis()
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
'''
    p = subprocess.run([python, "-c", code, str(png)], input=json.dumps(rows), text=True)
    if p.returncode != 0:
        raise SystemExit("plotting failed")


def main():
    ap = wb.arguments(__doc__, 27700)
    ap.add_argument("--rtts", default="20")
    ap.add_argument("--s3-port-base", type=int, default=24500)
    ap.add_argument("--proxy", required=True, help="the rtt-proxy binary")
    ap.add_argument("--python", required=True, help="a python with matplotlib, for the plot")
    a = ap.parse_args()
    a.load_seconds = 0
    h = CompressionHarness(a)
    wb.exit_on_signals()
    try:
        methods, rtt, results, errors, nseg = h.main()
    finally:
        h.cleanup()
        if h.store:
            h.store.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(methods, results)
    mach = wb.machine(h)
    png = out / "benchmark-compression.png"
    md = markdown(h, rows, errors, mach, rtt, nseg, png.name, a.command)
    (out / "benchmark-compression.md").write_text(md)
    (out / "benchmark-compression.json").write_text(
        json.dumps({"rows": rows, "runs": results}, indent=1))
    plot(rows, png, a.python)
    log(f"wrote {out / 'benchmark-compression.md'} and {png}")
    print(md.split("## How it is measured")[0])
    real = [k for k, msg in errors.items() if not msg.startswith("not run:")]
    return 1 if real else 0


if __name__ == "__main__":
    raise SystemExit(main())
