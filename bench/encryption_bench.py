#!/usr/bin/env python3
"""Encryption part of the benchmark (issue 22): what encrypting the archive
costs walarch_ext and pgBackRest, into SeaweedFS through bench/rtt-proxy.

Run through scripts/bench.sh (WALARCH_BENCH_SUITES contains "encryption").

- Two backlogs of N segments (WALARCH_BENCH_SEGMENTS, default 64), each made
  once, every run starting from a copy of it: the s3 suite's (real heap
  inserts of md5 text, bench/gen_segment.sql, one segment at a time) and the
  compression suite's pgbench WAL (scale 10, TPC-B-like, 4 clients, a
  checkpoint every 30 s). Each is drained into a SeaweedFS cluster behind
  the proxy at the RTT (the first of WALARCH_BENCH_RTTS, default 20 ms), as
  in the s3 suite, but one cluster per backlog and repetition, each method
  writing under its own prefix (a cluster's start and stop cost about 10 s).
- Methods: walarch_ext with its defaults (copy-ahead, parallel_copies 4),
  walarch.compression = zstd at the default level 1, without and with
  walarch.encryption_recipients (a recipients file holding one X25519 age
  recipient made for the run: openssl makes the key pair, the harness writes
  it in age's encoding; the identity stays with root, unreadable by the
  server's user); pgBackRest 2.45 archive-push async (process-max 4, repo
  type s3) with compress-type=zst at level 1, without and with
  repo1-cipher-type=aes-256-cbc (repo1-cipher-pass random for the run); the
  store's ceiling: the same segment files PUT by 4 parallel curl processes,
  no PostgreSQL, no compression.
- Repetitions interleaved: repetition k runs every method once, starting
  one method further on than repetition k-1 (rotated), first on one backlog,
  then on the other.
- Drain: from pg_reload_conf() until no .ready file is left; then the
  bucket must hold every segment, in the method's form: walarch_ext's
  objects named X.zst (unencrypted) or X.zst.age (encrypted), and the first
  and last segment object of each run must begin with the form's magic
  bytes (walarch_ext's zstd skippable frame, pgBackRest's zstd frame, age's
  "age-encryption.org/v1", the "Salted__" of pgBackRest's cipher), so a
  run that stored plaintext cannot pass as encrypted.
- CPU per segment: walarch_ext's archiver and copy-ahead worker (utime +
  stime, its copy threads included) over the drain; pgBackRest's processes
  started with the run's configuration, sampled every 20 ms (CPU spent
  after a process's last sample is missed: an undercount in pgBackRest's
  favour).
- Targets (the issue's), on each backlog's medians: walarch_ext encrypted at
  least as fast (MiB/s of WAL) as pgBackRest encrypted, and its drain time
  at most 1.10 × walarch_ext unencrypted.
"""

import json
import os
import re
import secrets
import statistics
import time
from pathlib import Path

import compression_bench as cb
import s3_bench as sb
import walarch_bench as wb
from backup_bench import rotated
from walarch_bench import BenchError, Method, chown_pg, log, run

ZST_AGE_RE = re.compile(r"^[0-9A-F]{24}(\.zst)?(\.age)?$")
# The first bytes of a stored segment by (kind, encrypted): walarch's .zst opens with its
# skippable frame (magic 0x184D2A57), pgBackRest's with a zstd frame; age's header; the
# "Salted__" of the OpenSSL format pgBackRest's cipher writes.
MAGIC = {("walarch", False): b"\x57\x2a\x4d\x18", ("pgbr", False): b"\x28\xb5\x2f\xfd",
         ("walarch", True): b"age-encryption.org/v1\n", ("pgbr", True): b"Salted__"}


def walarch(key, label, encrypt):
    return Method(key, label, "walarch", copy_ahead=True, pc=4, level=1, encrypt=encrypt)


def pgbr(key, label, encrypt):
    return Method(key, label, "pgbr", asynch=True, pmax=4, ctype="zst", clevel=1, encrypt=encrypt)


METHODS = [
    walarch("walarch-zstd", "walarch_ext, zstd 1", False),
    walarch("walarch-zstd-age", "walarch_ext, zstd 1 + age (X25519)", True),
    pgbr("pgbr-zst", "pgBackRest async 4, zst 1", False),
    pgbr("pgbr-zst-aes", "pgBackRest async 4, zst 1 + aes-256-cbc", True),
    Method("put4", "store ceiling: plain PUTs (curl), 4 at a time", "put", streams=4),
]
WORKLOADS = {"backlog": "heap-insert backlog (gen_segment.sql)",
             "pgbench": "pgbench WAL (TPC-B-like)"}
ENCRYPTED, PLAIN, PGBR_ENCRYPTED = "walarch-zstd-age", "walarch-zstd", "pgbr-zst-aes"
SLOWER_AT_MOST = 1.10


# ---------------------------------------------------------------- age keys

BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def bech32(hrp, data):
    """BIP 173 bech32 (not bech32m) of data under hrp, without the 90-character limit, as age
    encodes its keys."""
    acc = bits = 0
    words = []
    for byte in data:
        acc, bits = (acc << 8) | byte, bits + 8
        while bits >= 5:
            bits -= 5
            words.append((acc >> bits) & 31)
    if bits:
        words.append((acc << (5 - bits)) & 31)
    chk = 1
    for v in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + words + [0] * 6:
        top, chk = chk >> 25, ((chk & 0x1FFFFFF) << 5) ^ v
        for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= g if (top >> i) & 1 else 0
    chk ^= 1
    return hrp + "1" + "".join(BECH32[w] for w in words + [(chk >> 5 * (5 - i)) & 31 for i in range(6)])


def age_key_pair(d):
    """An X25519 key pair in age's encoding, made by openssl: (recipients file, identity
    file). The raw keys are the last 32 bytes of the DER forms (PKCS#8 and
    SubjectPublicKeyInfo)."""
    d.mkdir()
    pem, der, pub = d / "x25519.pem", d / "x25519.der", d / "x25519.pub.der"
    run(["openssl", "genpkey", "-algorithm", "X25519", "-out", str(pem)])
    run(["openssl", "pkey", "-in", str(pem), "-outform", "DER", "-out", str(der)])
    run(["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER", "-out", str(pub)])
    secret, public = der.read_bytes()[-32:], pub.read_bytes()[-32:]
    for f in (pem, der, pub):
        f.unlink()
    identity = d / "identity.txt"
    fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# public key: {bech32('age', public)}\n"
                f"{bech32('age-secret-key-', secret).upper()}\n")
    recipients = d / "recipients.txt"
    recipients.write_text(f"# made by bench/encryption_bench.py for one run\n{bech32('age', public)}\n")
    os.chmod(recipients, 0o644)
    chown_pg(recipients)
    return recipients, identity


# ---------------------------------------------------------------- harness

class EncryptionHarness(cb.CompressionHarness):
    stored_re = ZST_AGE_RE
    # and the DETAIL of walarch_ext's WARNING for a failed attempt, and PostgreSQL's line
    # after three: a destination that refuses every attempt in words the common pattern does
    # not know (one that cannot keep encrypted files) fails the run in seconds, not at the
    # drain's time limit
    fail_re = re.compile(wb.FAIL_RE.pattern + r"|DETAIL:  While archiving|failed too many times")

    def __init__(self, args):
        super().__init__(args)
        self.recipients, self.identity = age_key_pair(self.work / "age")
        self.cipher_pass = secrets.token_urlsafe(32)
        self.minutes = None

    def open_store(self, name, rtt):
        """One store per backlog and repetition (closed by main), each method in its own
        prefix."""
        if not self.store:
            super().open_store(f"store-{self.wl}-{self.rep}", rtt)

    def close_store(self):
        pass

    def method_conf(self, m):
        conf = super().method_conf(m)
        if m.kind == "walarch" and m.params["encrypt"]:
            conf.append(f"walarch.encryption_recipients = '{self.recipients}'")
        return conf

    def setup_s3(self, m, c, rep, rtt):
        super().setup_s3(m, c, rep, rtt)
        if m.kind == "walarch" and m.params["encrypt"]:
            # A walarch_ext without the setting starts with a WARNING and stores plaintext.
            got = c.psql("SELECT current_setting('walarch.encryption_recipients', true)")
            if got != str(self.recipients):
                raise BenchError("not run: the installed walarch_ext has no setting "
                                 f"walarch.encryption_recipients (current_setting: {got or 'NULL'})")

    def write_pgbr_s3_conf(self, m, c, prefix):
        super().write_pgbr_s3_conf(m, c, prefix)
        if m.params["encrypt"]:
            conf = self.pgbr_conf(c)
            conf.write_text(conf.read_text().replace(
                "[global]\n", "[global]\nrepo1-cipher-type=aes-256-cbc\n"
                f"repo1-cipher-pass={self.cipher_pass}\n", 1))

    def stored_s3(self, m, rep, rtt):
        """The count and bytes of m's segment objects, once their form is checked: names and
        the first bytes of the first and last object."""
        objs = self.store.objects(self.prefix(m, rep, rtt) + "/")
        pat = wb.PGBR_SEG_RE if m.kind == "pgbr" else self.stored_re
        segs = sorted(k for k in objs if pat.match(k.rsplit("/", 1)[-1]))
        if m.kind in ("walarch", "pgbr") and segs:
            suffix = ".zst.age" if m.kind == "walarch" and m.params["encrypt"] else ".zst"
            wrong = [k for k in segs if not k.endswith(suffix)]
            if wrong:
                raise BenchError(f"{len(wrong)} segment objects not named *{suffix}: {wrong[:3]}")
            magic = MAGIC[(m.kind, m.params["encrypt"])]
            for k in {segs[0], segs[-1]}:
                head = self.head_bytes(k, len(magic))
                if head != magic:
                    raise BenchError(f"{k} begins with {head!r}, not {magic!r}")
        return len(segs), sum(objs[k] for k in segs)

    def head_bytes(self, key, n):
        out = self.work / "head.bin"
        run(["curl", "-sS", "--fail", "-r", f"0-{n - 1}", "-o", str(out), *self.store.curl_sig(),
             f"{self.store.endpoint}/{sb.BUCKET}/{key}"], timeout=60)
        data = out.read_bytes()[:n]
        out.unlink()
        return data

    def workload(self, wl):
        """The stopped template cluster of a workload and its .ready segments."""
        if wl == "backlog":
            return sb.S3Harness.template(self, "backlog")
        return self.template(self.a.segments)

    def measure(self, m, wl, rep, rtt, tmpl, names, errors):
        key = f"{m.key}@{wl}"
        # not run once, not run again: pgBackRest's PostgreSQL versions, walarch_ext's setting
        for k, v in errors.items():
            if v.startswith("not run:") and (k.startswith(f"{m.key}@") or
                                             (m.kind == "pgbr" and k.startswith("pgbr-"))):
                return None
        log(f"encryption rep {rep}/{self.a.reps}, {wl}: {m.label} ({len(names)} segments)")
        t0 = time.monotonic()
        try:
            r = self.one_run(m, "s3", rep, rtt, tmpl, names)
        except BenchError as e:
            msg = str(e).strip()
            log(f"   FAILED: {msg}")
            if "VersionNotSupportedError" in msg:
                msg = f"not run: {wb.sh('pgbackrest version')} does not support this PostgreSQL\n{msg}"
            errors.setdefault(key, msg)
            return None
        r.setdefault("stored", r["bytes"])  # the ceiling PUTs the segments as they are
        r.setdefault("log_problems", [])
        log(f"   {r['seconds']:.2f}s, {r['bytes'] / r['seconds'] / 2**20:.0f} MiB/s, "
            f"stored {r['stored'] / 2**20:.1f} MiB ({time.monotonic() - t0:.0f}s with set-up)")
        return r

    def main(self):
        a = self.a
        rtt = int(a.rtts.split(",")[0])
        only = set(a.methods.split(",")) if a.methods else None
        methods = [m for m in METHODS if not only or m.key in only]
        results = {f"{m.key}@{wl}": [] for wl in WORKLOADS for m in methods}
        errors, nseg = {}, {}
        t0 = time.monotonic()
        for wl in WORKLOADS:
            log(f"encryption: {WORKLOADS[wl]}, {a.segments} segments")
            tmpl, names = self.workload(wl)
            nseg[wl] = len(names)
            try:
                for rep in range(1, a.reps + 1):
                    self.wl, self.rep = wl, rep
                    for m in rotated(methods, rep):
                        r = self.measure(m, wl, rep, rtt, tmpl, names, errors)
                        if r:
                            results[f"{m.key}@{wl}"].append(r)
                    super().close_store()
            finally:
                tmpl.destroy()
        self.minutes = (time.monotonic() - t0) / 60
        return methods, rtt, results, errors, nseg


# ---------------------------------------------------------------- report

def spread(values):
    return statistics.median(values), min(values), max(values)


def summarize(methods, results):
    rows = []
    for wl in WORKLOADS:
        for m in methods:
            runs = results[f"{m.key}@{wl}"]
            if not runs:
                continue
            secs = spread([r["seconds"] for r in runs])
            tput = spread([r["bytes"] / r["seconds"] / 2**20 for r in runs])
            cpu = [sum(r["cpu_s"].values()) / r["segments"] * 1000 for r in runs
                   if r["cpu_s"] and None not in r["cpu_s"].values()]
            rows.append({"workload": wl, "key": m.key, "label": m.label, "kind": m.kind,
                         "n": len(runs), "segments": runs[0]["segments"], "wal": runs[0]["bytes"],
                         "seconds": secs[0], "s_min": secs[1], "s_max": secs[2],
                         "mib_s": tput[0], "min": tput[1], "max": tput[2],
                         "stored": statistics.median(r["stored"] for r in runs),
                         "cpu_ms": statistics.median(cpu) if cpu else None,
                         "problems": [ln for r in runs for ln in r["log_problems"]][:5]})
    for r in rows:
        ceiling = row_of(rows, r["workload"], "put4")
        plain = row_of(rows, r["workload"], PLAIN)
        r["vs_ceiling"] = r["mib_s"] / ceiling["mib_s"] if ceiling else None
        r["vs_plain_time"] = r["seconds"] / plain["seconds"] if plain else None
    return rows


def row_of(rows, wl, key):
    return next((r for r in rows if r["workload"] == wl and r["key"] == key), None)


def checks(rows):
    """The issue's two targets on each workload: (workload, target, figures, verdict)."""
    out = []
    for wl in WORKLOADS:
        enc, pg, plain = (row_of(rows, wl, k) for k in (ENCRYPTED, PGBR_ENCRYPTED, PLAIN))
        if enc and pg:
            out.append((wl, "walarch_ext encrypted at least as fast as pgBackRest encrypted",
                        f"{enc['mib_s']:.0f} vs {pg['mib_s']:.0f} MiB/s "
                        f"({enc['mib_s'] / pg['mib_s']:.2f}×)",
                        "met" if enc["mib_s"] >= pg["mib_s"] else "NOT met"))
        else:
            out.append((wl, "walarch_ext encrypted at least as fast as pgBackRest encrypted",
                        "not measured", "–"))
        if enc and plain:
            ratio = enc["seconds"] / plain["seconds"]
            out.append((wl, f"walarch_ext encrypted within 10% of unencrypted (time ≤ "
                            f"{SLOWER_AT_MOST:.2f}×)",
                        f"{enc['seconds']:.2f} vs {plain['seconds']:.2f} s ({ratio:.3f}×)",
                        "met" if ratio <= SLOWER_AT_MOST else "NOT met"))
        else:
            out.append((wl, "walarch_ext encrypted within 10% of unencrypted", "not measured", "–"))
    return out


def markdown(h, rows, found, errors, mach, rtt, nseg, png_name):
    a = h.a
    out = []
    w = out.append
    w("# walarch_ext benchmark: encryption\n")
    w("Generated by `scripts/bench.sh` (harness: `bench/encryption_bench.py`); every figure "
      "below comes from the run described here.\n")
    w(f"Command: `{a.command}`\n")
    w(f"Machine: {mach['cpu']}, {mach['mem']}, {mach['virt'] or 'bare metal?'}, {mach['kernel']}, "
      f"{mach['os']}. Work directory: {mach['fs']}. Load average at the end: {mach['loadavg']}.\n")
    w(f"PostgreSQL: {mach['pg']}. pgBackRest: {mach['pgbackrest']}. walarch_ext: {mach['walarch']}.\n")
    w(f"Backlogs: {', '.join(f'{WORKLOADS[k]}, {n} segments' for k, n in nseg.items())}, of "
      f"{(h.seg_size or 2**24) // 2**20} MiB; {a.reps} repetitions, interleaved and rotated. "
      f"Store: a SeaweedFS cluster through the TLS proxy at {rtt} ms RTT, one per backlog and "
      "repetition. "
      f"The suite took {h.minutes:.1f} min.\n")
    w("## Targets\n")
    w("| backlog | target | figures (medians) | |")
    w("|---|---|---|---|")
    for wl, what, figures, verdict in found:
        w(f"| {wl} | {what} | {figures} | **{verdict}** |")
    w("")
    for wl, title in WORKLOADS.items():
        w(f"## {title} into S3 at {rtt} ms RTT\n")
        w("| method | median s (min–max) | × walarch zstd time | median MiB/s of WAL (min–max) | "
          "× store ceiling | stored MiB | CPU ms/seg |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if r["workload"] == wl:
                w(f"| {r['label']} | {r['seconds']:.2f} ({r['s_min']:.2f}–{r['s_max']:.2f}) | "
                  f"{wb.fmt(r['vs_plain_time'])} | {r['mib_s']:.0f} ({r['min']:.0f}–{r['max']:.0f}) | "
                  f"{wb.fmt(r['vs_ceiling'])} | {r['stored'] / 2**20:.1f} | {wb.fmt(r['cpu_ms'], 0)} |")
        w("")
    w(f"![drain speed by method and backlog]({png_name})\n")
    w("## How it is measured\n")
    w(__doc__.split("\n\n", 1)[1].strip())
    w("- Stored: the segment objects' sizes (walarch_ext's `.sha256` records and pgBackRest's "
      "`archive.info` excluded); the ceiling stores the segments as they are. MiB/s is of WAL "
      "(the backlog's bytes over the drain time), whatever is stored.\n")
    wb.failures(w, errors)
    probs = [(r["key"], r["workload"], ln) for r in rows for ln in r["problems"]]
    if probs:
        w("Server log lines that look like problems (first few per run):\n")
        w("```")
        w("\n".join(f"{k} @ {wl}: {ln}" for k, wl, ln in probs))
        w("```\n")
    return "\n".join(out)


def main():
    ap = wb.arguments(__doc__, 28150)
    ap.add_argument("--rtts", default="20")
    ap.add_argument("--s3-port-base", type=int, default=26000)
    ap.add_argument("--proxy", required=True, help="the rtt-proxy binary")
    ap.add_argument("--python", required=True, help="a python with matplotlib, for the plot")
    a = ap.parse_args()
    a.load_seconds = 0
    wb.exit_on_signals()
    h = EncryptionHarness(a)
    try:
        methods, rtt, results, errors, nseg = h.main()
    finally:
        h.cleanup()
        if h.store:
            h.store.stop()
    rows = summarize(methods, results)
    found = checks(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "benchmark-encryption.png"
    md = markdown(h, rows, found, errors, wb.machine(h), rtt, nseg, png.name)
    (out / "benchmark-encryption.md").write_text(md)
    (out / "benchmark-encryption.json").write_text(json.dumps(
        {"rows": rows, "targets": found, "runs": results, "errors": errors}, indent=1))
    sb.plot(rows, list(WORKLOADS), a.segments, png, a.python, series="workload",
            legend="{}", title=f"Into SeaweedFS at {rtt} ms RTT: zstd 1 with and without "
                               "encryption (MiB/s of WAL)")
    log(f"wrote {out / 'benchmark-encryption.md'} and {png}")
    print(md.split("## How it is measured")[0])
    real = [k for k, msg in errors.items() if not msg.startswith("not run:")]
    return 1 if real else 0


if __name__ == "__main__":
    raise SystemExit(main())
