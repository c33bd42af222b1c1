#!/usr/bin/env python3
"""Object-store part of the benchmark: a backlog drained into SeaweedFS.

Run through scripts/bench.sh (WALARCH_BENCH_SUITES contains "s3"). For each
round-trip time, repetition and method (interleaved: rep 1 of every method at
every RTT, then rep 2, ...):

- a fresh SeaweedFS cluster (master with replication 001, three volume
  servers, filer, S3 gateway: scripts/seaweed.sh start DIR PORT cluster) and
  in front of it bench/rtt-proxy, which terminates TLS and delays every chunk
  by RTT/2 in each direction (netem is not available here): every client
  talks https to the proxy, TLS handshakes included;
- a copy of the repetition's template cluster (a backlog of N .ready
  segments of real WAL, built once per repetition with the archiver idle)
  is started with the method's settings, the archiver is pointed at the
  bucket and the time until no .ready file is left is measured (as the
  local drain).

Methods: walarch_ext (copy-ahead on, parallel_copies 1, 4, 16), pgBackRest
archive-push to repo type s3 (sync; async with process-max 4 and 16), and the
store's ceiling on the same path: N parallel plain signed PUTs (curl) of the
same segment files, no PostgreSQL. Peak RSS: walarch's worker and archiver
(VmHWM), pgBackRest's processes (sampled every 50 ms), curl's (sampled).
"""

import json
import os
import re
import signal
import statistics
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import walarch_bench as wb
from walarch_bench import BenchError, Cluster, Method, PsqlSession, chown_pg, log, run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET = "wal"
REGION = "us-east-1"

METHODS = [
    Method("walarch-pc1", "walarch_ext, parallel_copies=1", "walarch", pc=1),
    Method("walarch-pc4", "walarch_ext, parallel_copies=4", "walarch", pc=4),
    Method("walarch-pc16", "walarch_ext, parallel_copies=16", "walarch", pc=16),
    Method("pgbr-sync", "pgBackRest archive-push, sync", "pgbr", asynch=False),
    Method("pgbr-async4", "pgBackRest archive-push, async, process-max=4", "pgbr", asynch=True, pmax=4),
    Method("pgbr-async16", "pgBackRest archive-push, async, process-max=16", "pgbr", asynch=True,
           pmax=16),
    Method("put1", "store ceiling: plain PUTs (curl), 1 at a time", "put", streams=1),
    Method("put4", "store ceiling: plain PUTs (curl), 4 at a time", "put", streams=4),
    Method("put16", "store ceiling: plain PUTs (curl), 16 at a time", "put", streams=16),
]


class RssSampler(threading.Thread):
    """Peak resident set size of the processes whose command line contains a needle."""

    def __init__(self, needle, exe=None):
        super().__init__(daemon=True)
        self.needle, self.exe = needle.encode(), exe
        self.peak_one = self.peak_sum = 0
        self.halt = threading.Event()

    def sample(self):
        total = 0
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
                if self.needle not in cmd or (self.exe and not cmd.split(b"\0")[0].endswith(self.exe)):
                    continue
                with open(f"/proc/{d}/status") as f:
                    rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) * 1024
            except (OSError, StopIteration, ValueError):
                continue
            self.peak_one = max(self.peak_one, rss)
            total += rss
        self.peak_sum = max(self.peak_sum, total)

    def run(self):
        while not self.halt.wait(0.05):
            self.sample()

    def stop(self):
        self.halt.set()
        self.join()


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return None


class Store:
    """A SeaweedFS cluster and the RTT/TLS proxy in front of it, for one run."""

    def __init__(self, h, name, rtt_ms):
        self.h, self.dir = h, h.work / name
        self.base = h.a.s3_port_base
        self.proxy = None
        env = dict(os.environ, S3_BUCKET=BUCKET, S3_REGION=REGION,
                   SEAWEED_PARENT_PID=str(os.getpid()))
        # A port can be taken by someone's outgoing connection: try the next set.
        for attempt in range(4):
            try:
                run(["bash", str(ROOT / "scripts" / "seaweed.sh"), "start", str(self.dir),
                     str(self.base), "cluster"], timeout=180, input="", env=env)
                break
            except BenchError as e:
                run(["bash", str(ROOT / "scripts" / "seaweed.sh"), "stop", str(self.dir), "--purge"],
                    check=False, timeout=60)
                if attempt == 3 or "address already in use" not in str(e):
                    raise
                log(f"   ports {self.base}.. taken, trying the next 20")
                self.base += 20
        self.proxy_port = self.base + 13
        vals = dict(ln.split("=", 1) for ln in (self.dir / "env").read_text().splitlines() if "=" in ln)
        self.access_key, self.secret_key = vals["S3_ACCESS_KEY"], vals["S3_SECRET_KEY"]
        ready = self.dir / "proxy.ready"
        self.proxy = subprocess.Popen(
            [str(h.a.proxy), "--listen", f"127.0.0.1:{self.proxy_port}",
             "--upstream", f"127.0.0.1:{self.base}", "--rtt-ms", str(rtt_ms),
             "--tls-cert", str(h.cert), "--tls-key", str(h.key), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "proxy.log", "w"))
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proxy.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"rtt-proxy did not start: {(self.dir / 'proxy.log').read_text()}")
            time.sleep(0.02)
        self.endpoint = f"https://127.0.0.1:{self.proxy_port}"
        # A fresh SeaweedFS grows the bucket's volumes at its first write, which takes
        # seconds: done here, outside any timing, as a bucket in use has them already.
        warm = self.dir / "warm-up"
        warm.write_text("warm-up\n")
        run(["curl", "-sS", "--fail", "-o", "/dev/null", *self.curl_sig(),
             "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T", str(warm),
             f"{self.endpoint}/{BUCKET}/warm-up/object"], timeout=120)

    def curl_sig(self):
        """curl's signing options; the key is in a config file, not on a command line."""
        conf = self.dir / "curl.conf"
        if not conf.exists():
            conf.write_text(f'user = "{self.access_key}:{self.secret_key}"\n')
            os.chmod(conf, 0o600)
        return ["--cacert", str(self.h.ca), "--aws-sigv4", f"aws:amz:{REGION}:s3", "-K", str(conf)]

    def keys(self, prefix):
        return list(self.objects(prefix))

    def objects(self, prefix):
        """Every key under prefix with its size (ListObjectsV2, following continuation
        tokens)."""
        objs, token = {}, None
        while True:
            q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                q["continuation-token"] = token
            # curl signs the query as given: SigV4 wants it sorted.
            url = f"{self.endpoint}/{BUCKET}?{urllib.parse.urlencode(sorted(q.items()))}"
            body = run(["curl", "-sS", "--fail", *self.curl_sig(), url], timeout=60).stdout
            for c in re.findall(r"<Contents>(.*?)</Contents>", body, re.S):
                k = re.search(r"<Key>([^<]+)</Key>", c)
                s = re.search(r"<Size>(\d+)</Size>", c)
                if k:
                    objs[k.group(1)] = int(s.group(1)) if s else 0
            m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
            if "<IsTruncated>true</IsTruncated>" not in body or not m:
                return objs
            token = m.group(1)

    def stop(self):
        if self.proxy and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
        run(["bash", str(ROOT / "scripts" / "seaweed.sh"), "stop", str(self.dir), "--purge"],
            check=False, timeout=60)


class S3Harness(wb.Harness):
    def __init__(self, args):
        super().__init__(args)
        # A private CA (what clients trust) and the proxy's certificate for
        # 127.0.0.1 signed by it: a self-signed certificate used directly is
        # refused by rustls (a CA certificate used as an end entity).
        w = self.work
        self.ca, self.cert, self.key = w / "ca.pem", w / "proxy-cert.pem", w / "proxy-key.pem"
        (w / "proxy-cert.ext").write_text(
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        for cmd in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=walarch bench CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "proxy-key.pem", "-out",
             "proxy-cert.csr", "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "proxy-cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "proxy-cert.pem", "-days", "2", "-extfile", "proxy-cert.ext"],
        ):
            run(["openssl", *cmd], cwd=w)
        os.chmod(self.ca, 0o644)
        self.store = None

    def prefix(self, m, rep, rtt):
        return f"{m.key}/rtt{rtt}/rep{rep}"

    def template(self, rep):
        """A stopped cluster holding a backlog of N .ready segments, made once per repetition:
        every run of the repetition starts from a copy of it (the same WAL, and no minute of
        inserts per run)."""
        t = Cluster(self, f"template-{rep}")
        t.create(["archive_command = ''"])
        t.start()
        self.pg_version = t.psql("SELECT version()")
        self.seg_size = int(t.psql("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
        names = self.make_backlog(t, self.a.segments)
        t.stop("fast")
        return t, names

    def clone(self, tmpl, name):
        c = Cluster(self, name)
        run(["cp", "-a", str(tmpl.data), str(c.data)])
        with open(c.data / "postgresql.conf", "a") as f:
            f.write(f"\n# this copy\nport = {c.port}\nunix_socket_directories = '{c.sock}'\n")
        return c

    def setup_s3(self, m, c, rep, rtt):
        """Configures and starts c (a copy of the template) for m, its archiver idle."""
        s = self.store
        conf, preload = [], None
        if m.kind == "walarch":
            creds = c.dir / "s3-credentials"
            creds.write_text(f"[default]\naws_access_key_id = {s.access_key}\n"
                             f"aws_secret_access_key = {s.secret_key}\n")
            os.chmod(creds, 0o600)
            chown_pg(creds)
            preload = "walarch_ext"
            conf += ["archive_library = 'walarch_ext'", "walarch.archive_destination = ''",
                     f"walarch.s3_endpoint = '{s.endpoint}'", f"walarch.s3_ca_file = '{self.ca}'",
                     f"walarch.s3_credentials_file = '{creds}'", "walarch.s3_uri_style = 'path'",
                     "walarch.copy_ahead = on", f"walarch.parallel_copies = {m.params['pc']}"]
        else:
            conf += ["archive_command = ''"]
        if m.kind == "pgbr":
            self.write_pgbr_s3_conf(m, c, self.prefix(m, rep, rtt))
        if preload:
            conf.append(f"shared_preload_libraries = '{preload}'")
        with open(c.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        c.start()
        if m.kind == "walarch":
            c.psql("CREATE EXTENSION walarch_ext")
        if m.kind == "pgbr":
            run(["pgbackrest", f"--config={self.pgbr_conf(c)}", f"--stanza={wb.STANZA}",
                 "stanza-create"], as_pg=True, cwd=c.dir, timeout=120)

    def write_pgbr_s3_conf(self, m, c, prefix):
        s = self.store
        self.write_pgbr_conf(m, c, repo=[
            "repo1-type=s3", "repo1-s3-endpoint=127.0.0.1", f"repo1-storage-port={s.proxy_port}",
            f"repo1-s3-bucket={BUCKET}", f"repo1-s3-region={REGION}",
            f"repo1-s3-key={s.access_key}", f"repo1-s3-key-secret={s.secret_key}",
            "repo1-s3-uri-style=path", "repo1-storage-verify-tls=n", f"repo1-path=/{prefix}",
        ])

    def enable_s3_sql(self, m, c, rep, rtt):
        if m.kind == "walarch":
            return f"ALTER SYSTEM SET walarch.archive_destination = 's3://{BUCKET}/{self.prefix(m, rep, rtt)}'"
        return (f"ALTER SYSTEM SET archive_command = 'pgbackrest --config={self.pgbr_conf(c)} "
                f"--stanza={wb.STANZA} archive-push %p'")

    def stored(self, m, rep, rtt):
        keys = self.store.keys(self.prefix(m, rep, rtt) + "/")
        pat = wb.PGBR_SEG_RE if m.kind == "pgbr" else wb.SEG_RE
        return sum(1 for k in keys if pat.match(k.rsplit("/", 1)[-1]))

    def s3_run(self, m, rep, rtt, tmpl, names):
        self.store = Store(self, f"store-{m.key}-{rtt}-{rep}", rtt)
        c = self.clone(tmpl, f"s3-{m.key}-{rtt}-{rep}")
        try:
            nbytes = sum((c.data / "pg_wal" / s).stat().st_size for s in names)
            if m.kind == "put":
                return self.put_run(m, c, names, nbytes, rep, rtt)
            self.setup_s3(m, c, rep, rtt)
            missing = set(names) - set(c.ready())
            if missing:
                raise BenchError(f"the copy lacks .ready files: {sorted(missing)[:3]}")
            sess = PsqlSession(c)
            sess.query(self.enable_s3_sql(m, c, rep, rtt))
            pids = self.cpu_pids(m, c)
            sampler = RssSampler(f"--config={c.dir}/", b"pgbackrest") if m.kind == "pgbr" else None
            if sampler:
                sampler.start()
            elapsed, cpu, logpos = wb.timed_drain(c, sess, pids, 300 + 10 * len(names))
            if sampler:
                sampler.stop()
            extra = {}
            if m.kind == "walarch":
                row = sess.query("SELECT archived_count, copied_ahead_count, mean_transfer_ms "
                                 "FROM walarch_stats()").split("|")
                extra = {"archived_count": int(row[0]), "copied_ahead": int(row[1]),
                         "latency_ms": float(row[2]),
                         "rss": {k: vm_hwm(p) for k, p in pids.items()}}
            else:
                extra = {"rss": {"pgbackrest (largest process)": sampler.peak_one,
                                 "pgbackrest (all processes)": sampler.peak_sum}}
                if not m.params["asynch"]:
                    extra["latency_ms"] = elapsed / len(names) * 1000
            sess.close()
            got = self.stored(m, rep, rtt)
            if got < len(names):
                raise BenchError(f"only {got} of {len(names)} segments are in the bucket")
            problems = [ln for ln in c.log_since(logpos).splitlines() if wb.FAIL_RE.search(ln)]
            return {"segments": len(names), "bytes": nbytes, "seconds": elapsed, "cpu_s": cpu,
                    "cpu_complete": m.kind != "pgbr" or not m.params["asynch"],
                    "log_problems": problems[:5], **extra}
        finally:
            c.destroy()
            self.store.stop()
            self.store = None

    def put_run(self, m, c, names, nbytes, rep, rtt):
        """N parallel curl PUTs of the backlog's files: the path's ceiling without PostgreSQL."""
        src = c.data / "pg_wal"
        os.sync()
        s = self.store
        url = f"{s.endpoint}/{BUCKET}/{self.prefix(m, rep, rtt)}"
        sig = " ".join(f"'{x}'" for x in s.curl_sig())
        cmd = (f"curl -sS --fail -o /dev/null -w '%{{time_total}}\\n' {sig} "
               f"-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T '{src}'/\"$0\" '{url}'/\"$0\"")
        sampler = RssSampler(str(src), b"curl")
        sampler.start()
        t0 = time.monotonic()
        p = run(["xargs", "-P", str(m.params["streams"]), "-n", "1", "sh", "-c", cmd],
                input="".join(n + "\n" for n in names), timeout=600)
        elapsed = time.monotonic() - t0
        sampler.stop()
        times = [float(x) for x in p.stdout.split()]
        got = self.stored(m, rep, rtt)
        if got != len(names):
            raise BenchError(f"{got} of {len(names)} PUTs are in the bucket")
        return {"segments": len(names), "bytes": nbytes, "seconds": elapsed, "cpu_s": {},
                "latency_ms": statistics.mean(times) * 1000,
                "rss": {"curl (largest process)": sampler.peak_one}}

    def main(self):
        a = self.a
        rtts = [int(x) for x in a.rtts.split(",")]
        only = set(a.methods.split(",")) if a.methods else None
        methods = [m for m in METHODS if not only or m.key in only]
        results = {f"{m.key}@{r}": [] for r in rtts for m in methods}
        errors = {}
        for rep in range(1, a.reps + 1):
            log(f"s3 rep {rep}/{a.reps}: a backlog of {a.segments} segments")
            tmpl, names = self.template(rep)
            for rtt in rtts:
                for m in methods:
                    key = f"{m.key}@{rtt}"
                    if m.kind == "pgbr" and any(k.startswith("pgbr") and v.startswith("not run:")
                                                for k, v in errors.items()):
                        continue
                    log(f"s3 rep {rep}/{a.reps}, RTT {rtt} ms: {m.label} ({a.segments} segments)")
                    try:
                        r = self.s3_run(m, rep, rtt, tmpl, names)
                    except BenchError as e:
                        msg = str(e).strip()
                        log(f"   FAILED: {msg}")
                        if "VersionNotSupportedError" in msg:
                            msg = f"not run: {wb.sh('pgbackrest version')} does not support this PostgreSQL\n{msg}"
                        errors.setdefault(key, msg)
                        continue
                    results[key].append(r)
                    log(f"   {r['seconds']:.2f}s, {r['bytes'] / r['seconds'] / 2**20:.0f} MiB/s")
            tmpl.destroy()
        return methods, rtts, results, errors


def summarize(methods, rtts, results):
    rows = []
    for rtt in rtts:
        ceiling = None
        for m in methods:
            runs = results[f"{m.key}@{rtt}"]
            if not runs:
                continue
            tput = [r["bytes"] / r["seconds"] / 2**20 for r in runs]
            med = statistics.median(tput)
            if m.kind == "put":
                ceiling = max(ceiling or 0, med)
            lat = [r["latency_ms"] for r in runs if r.get("latency_ms") is not None]
            cpu = []
            for r in runs:
                vals = list(r["cpu_s"].values())
                if vals and None not in vals and r.get("cpu_complete", True):
                    cpu.append(sum(vals) / r["segments"] * 1000)
            rss = {}
            for r in runs:
                for k, v in (r.get("rss") or {}).items():
                    if v is not None:
                        rss[k] = max(rss.get(k, 0), v)
            rows.append({"rtt": rtt, "key": m.key, "label": m.label, "kind": m.kind, "n": len(runs),
                         "mib_s": med, "min": min(tput), "max": max(tput),
                         "seconds": statistics.median(r["seconds"] for r in runs),
                         "latency_ms": statistics.median(lat) if lat else None,
                         "cpu_ms": statistics.median(cpu) if cpu else None, "rss": rss,
                         "problems": [ln for r in runs for ln in r.get("log_problems", [])][:5]})
        for row in rows:
            if row["rtt"] == rtt:
                row["vs_ceiling"] = row["mib_s"] / ceiling if ceiling else None
    return rows


def markdown(h, rows, errors, mach, png_name, command):
    a = h.a
    out = []
    w = out.append
    w("# walarch_ext benchmark: archiving into object storage\n")
    w("Generated by `scripts/bench.sh` (harness: `bench/s3_bench.py`); every figure below "
      "comes from the run described here.\n")
    w(f"Command: `{command}`\n")
    w(f"Machine: {mach['cpu']}, {mach['mem']}, {mach['virt'] or 'bare metal?'}, {mach['kernel']}, "
      f"{mach['os']}. Work directory: {mach['fs']}.\n")
    w(f"PostgreSQL: {mach['pg']}. pgBackRest: {mach['pgbackrest']}. walarch_ext: {mach['walarch']}. "
      f"SeaweedFS: {wb.sh(str(Path(os.environ.get('WALARCH_S3_PREFIX', '/var/cache/walarch/s3')) / 'bin' / 'weed') + ' version')}.\n")
    w(f"Backlog: {a.segments} segments of {(h.seg_size or 2**24) // 2**20} MiB, {a.reps} "
      f"repetitions, interleaved; round-trip times {', '.join(a.rtts.split(','))} ms.\n")
    w("## Drain into the bucket\n")
    w("| RTT | method | median MiB/s (min–max) | × store ceiling | median s | latency ms/file | "
      "CPU ms/seg | peak RSS |")
    w("|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rss = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in r["rss"].items()) or "–"
        w(f"| {r['rtt']} ms | {r['label']} | {r['mib_s']:.0f} ({r['min']:.0f}–{r['max']:.0f}) | "
          f"{wb.fmt(r.get('vs_ceiling'))} | {r['seconds']:.1f} | {wb.fmt(r['latency_ms'], 0)} | "
          f"{wb.fmt(r['cpu_ms'], 0)} | {rss} |")
    w("")
    w(f"![drain throughput by method and RTT]({png_name})\n")
    w("## How it is measured\n")
    w("- Store: a fresh SeaweedFS cluster per run (`scripts/seaweed.sh start DIR PORT cluster`: "
      "master with `-defaultReplication=001`, three volume servers, filer, S3 gateway, one signing "
      "identity), all on this machine's loopback.")
    w("- Path: every client talks HTTPS to `bench/rtt-proxy`, which terminates TLS (a self-signed "
      "certificate) and forwards to the gateway's plain HTTP port, delaying every chunk by RTT/2 "
      "in each direction before and after TLS, so handshakes pay the round trips too; bandwidth "
      "is not limited. walarch_ext verifies the certificate (`walarch.s3_ca_file`); pgBackRest "
      "runs with `repo1-storage-verify-tls=n`; curl with `--cacert`.")
    w("- Drain: the time from `pg_reload_conf()` (archiver pointed at the bucket) until no `.ready` "
      "file is left; then the bucket is listed and must hold every segment.")
    w("- walarch_ext: copy-ahead worker on, default settings otherwise; every upload is "
      "create-only with `x-amz-checksum-sha256` verified by the store. Latency: "
      "`walarch_stats().mean_transfer_ms` (one upload, start to acknowledged). Peak RSS: "
      "`VmHWM` of the worker and the archiver.")
    w("- pgBackRest: `repo1-type=s3`, `compress-type=none`, its default upload chunk size. "
      "Latency for sync: drain time / segments (one `archive-push` process per file); not "
      "available for async. Peak RSS: its processes sampled every 50 ms.")
    w("- Store ceiling: the same segment files, after the server stopped, PUT by `xargs -P N curl` "
      "(signed, `UNSIGNED-PAYLOAD`, one process and TLS connection per file); × store ceiling "
      "divides by the fastest ceiling at the same RTT.")
    w("- CPU ms/seg: the archiver's and the worker's CPU time over the drain, per segment (not "
      "counted for pgBackRest async, whose work runs in detached processes).\n")
    if errors:
        wb.failures(w, errors)
    probs = [(r["key"], r["rtt"], ln) for r in rows for ln in r["problems"]]
    if probs:
        w("Server log lines that look like problems (first few per run):\n")
        w("```")
        w("\n".join(f"{k} @ {rtt} ms: {ln}" for k, rtt, ln in probs))
        w("```\n")
    return "\n".join(out)


def plot(rows, rtts, segments, png, python, series="rtt", legend="RTT {} ms", title=None):
    """Throughput bars per method, one bar per value of row[series] (the RTTs here; the
    encryption suite's workloads)."""
    title = title or (f"{segments}-segment backlog into a SeaweedFS cluster through a TLS + "
                      "RTT proxy")
    data = json.dumps({"rows": rows, "rtts": rtts, "series": series, "legend": legend,
                       "title": title})
    code = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.loads(sys.stdin.read())
rows, rtts = d["rows"], d["rtts"]
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
fig, ax = plt.subplots(figsize=(11, 5.5))
width = 0.8 / len(rtts)
for i, rtt in enumerate(rtts):
    vals, los, his = [], [], []
    for lab in labels:
        r = next((x for x in rows if x["label"] == lab and x[d["series"]] == rtt), None)
        vals.append(r["mib_s"] if r else 0)
        los.append(r["mib_s"] - r["min"] if r else 0)
        his.append(r["max"] - r["mib_s"] if r else 0)
    xs = [j + (i - (len(rtts) - 1) / 2) * width for j in range(len(labels))]
    ax.barh(xs, vals, height=width, xerr=[los, his], label=d["legend"].format(rtt), capsize=2)
ax.set_yticks(range(len(labels)))
ax.set_yticklabels(labels, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("drain throughput, MiB/s (median, min-max)")
ax.set_title(d["title"])
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=110)
'''
    p = subprocess.run([python, "-c", code, str(png)], input=data, text=True)
    if p.returncode != 0:
        raise SystemExit("plotting failed")


def main():
    ap = wb.arguments(__doc__, 27600)
    ap.add_argument("--rtts", default="0,20")
    ap.add_argument("--s3-port-base", type=int, default=24000)
    ap.add_argument("--proxy", required=True, help="the rtt-proxy binary")
    ap.add_argument("--python", required=True, help="a python with matplotlib, for the plot")
    a = ap.parse_args()
    a.load_seconds = 0
    h = S3Harness(a)
    wb.exit_on_signals()
    try:
        methods, rtts, results, errors = h.main()
    finally:
        h.cleanup()
        if h.store:
            h.store.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(methods, rtts, results)
    mach = wb.machine(h)
    png = out / "benchmark-s3.png"
    md = markdown(h, rows, errors, mach, png.name, a.command)
    (out / "benchmark-s3.md").write_text(md)
    (out / "benchmark-s3.json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1))
    plot(rows, rtts, a.segments, png, a.python)
    log(f"wrote {out / 'benchmark-s3.md'} and {png}")
    print(md.split("## How it is measured")[0])
    real = [k for k, msg in errors.items() if not msg.startswith("not run:")]
    return 1 if real else 0


if __name__ == "__main__":
    raise SystemExit(main())
