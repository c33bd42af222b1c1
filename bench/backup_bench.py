#!/usr/bin/env python3
"""Backup part of the benchmark: a pgbench database backed up and restored,
into a directory and into SeaweedFS through bench/rtt-proxy, by walarch_ext's
base backup target and by pgBackRest, with pg_basebackup as the floor.

Run through scripts/bench.sh (WALARCH_BENCH_SUITES contains "backup").

- Setup, once per run, outside any timing: one SeaweedFS cluster behind
  bench/rtt-proxy at the RTT (--rtt, the first of WALARCH_BENCH_RTTS, default
  20 ms), as in the s3 suite; one primary (PostgreSQL as given, default 15)
  with `pgbench -i -s SCALE` (WALARCH_BENCH_BACKUP_SCALE, default 135: about
  2 GB), walarch_ext in shared_preload_libraries when a walarch method runs.
  pgBackRest gets one stanza per destination: a repository in a directory and
  one of type s3 (repo1-path=/pgbr in the bucket), each with
  repo1-retention-full=100 (nothing expires during the run).
- Backups, the clock around the one command: `pg_basebackup --target=
  walarch:LABEL -X none -c fast` (walarch.compression = zstd at
  walarch.compression_level 1 and 3, walarch.archive_destination the
  directory or s3://BUCKET/walarch); `pgbackrest backup --type=full
  --start-fast --compress-type=zst --compress-level=1|3 --process-max=1|4`;
  the floor `pg_basebackup -D DIR -Ft -z -X none -c fast` and `-Ft` without
  compression, into a local directory only. Every method waits, as it
  should, until the backup's last WAL segment is archived, by its own
  archiver: walarch_ext (archive_library) into the same destination for the
  walarch methods, `pgbackrest archive-push` into the same repository for
  pgBackRest, a cp archive_command for the floor. Before each backup the
  archiver's settings are switched (an included file and pg_reload_conf()),
  the archiver is drained (no .ready left), one segment is sent through the
  new archiver (a WAL switch) and drained, a CHECKPOINT runs and sync, all
  untimed.
- CPU: the client's user + system time from wait4() (pg_basebackup, or
  pgbackrest with every local process it started), and the server's: the
  CPU time (own and waited-for children) gained during the backup by every
  child of the postmaster (the walsender, or pgBackRest's backend; the
  checkpointer; the archiver and the archive_command it runs), sampled
  every 50 ms and once right after the command (a process that ends between
  two samples loses at most 50 ms). Peak RSS: the walsender's VmHWM (its
  last sample) and the largest VmHWM among the client's processes (runuser
  left out), sampled the same way (wait4's maximum RSS would carry the
  harness's own, inherited across exec); the client processes' summed RSS
  (pgBackRest and its local processes) is in the JSON.
- Stored: the sizes of the backup's files or objects: walarch's
  backups/LABEL/*, pgBackRest's backup/bench/LABEL/* (its manifest
  included), pg_basebackup's output directory. WAL is not counted.
- Restores, each into a fresh empty directory, the clock around the one
  command: `walarch backup restore DEST LABEL PGDATA --jobs 4` of the
  walarch zstd level 1 backup; `pgbackrest restore --set=LABEL
  --process-max=1|4` of the pgBackRest zst level 1 (process-max 4) backup;
  the floor: `tar -xf` (`-xzf`) of pg_basebackup's tar followed by
  `sync -f` (tar does not fsync; the other two do). Once per restore method
  and destination (the first repetition), untimed: the restored directory
  is started (port, socket, archive_mode = off, no preloaded library
  appended to its configuration), recovers from its archive to the end,
  must leave recovery and must hold SCALE × 100000 rows in
  pgbench_accounts.
- Repetitions interleaved: for each repetition every backup method at each
  destination, then every restore method, each repetition starting one
  method further on in both lists (rotated); the restored directories are
  deleted after each run, pg_basebackup's outputs after the repetition.
"""

import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import s3_bench as sb
import walarch_bench as wb
from walarch_bench import BenchError, Cluster, Method, chown_pg, log, run

PGBR_PREFIX = "pgbr"
WALARCH_PREFIX = "walarch"
DESTS = ["dir", "s3"]

BACKUPS = [
    Method("walarch-zstd1", "walarch target, zstd 1", "walarch", level=1),
    Method("walarch-zstd3", "walarch target, zstd 3", "walarch", level=3),
    Method("pgbr-zst1-p1", "pgBackRest full, zst 1, process-max 1", "pgbr", level=1, pmax=1),
    Method("pgbr-zst1-p4", "pgBackRest full, zst 1, process-max 4", "pgbr", level=1, pmax=4),
    Method("pgbr-zst3-p1", "pgBackRest full, zst 3, process-max 1", "pgbr", level=3, pmax=1),
    Method("pgbr-zst3-p4", "pgBackRest full, zst 3, process-max 4", "pgbr", level=3, pmax=4),
    Method("pgbb-tar-gz", "floor: pg_basebackup -Ft -z (local directory)", "pgbb", gz=True),
    Method("pgbb-tar", "floor: pg_basebackup -Ft, no compression (local directory)", "pgbb",
           gz=False),
]
# Each restore method restores the backup of the first of its sources that ran.
RESTORES = [
    Method("restore-walarch-j4", "walarch backup restore --jobs 4", "walarch", jobs=4,
           sources=["walarch-zstd1", "walarch-zstd3"]),
    Method("restore-pgbr-p1", "pgBackRest restore, process-max 1", "pgbr", pmax=1,
           sources=["pgbr-zst1-p4", "pgbr-zst1-p1", "pgbr-zst3-p4", "pgbr-zst3-p1"]),
    Method("restore-pgbr-p4", "pgBackRest restore, process-max 4", "pgbr", pmax=4,
           sources=["pgbr-zst1-p4", "pgbr-zst1-p1", "pgbr-zst3-p4", "pgbr-zst3-p1"]),
    Method("restore-tar-gz", "floor: tar -xzf + sync -f (local directory)", "tar",
           sources=["pgbb-tar-gz"]),
    Method("restore-tar", "floor: tar -xf + sync -f (local directory)", "tar",
           sources=["pgbb-tar"]),
]
PGBR_LABEL_RE = re.compile(r"^\d{8}-\d{6}F$")
# the first word of the auxiliary processes' titles
AUX = {"checkpointer", "background", "walwriter", "autovacuum", "archiver", "logical",
       "walsender", "startup", "walreceiver", "stats"}


def dests_of(m):
    """Where a method runs: the floor only into (from) a local directory."""
    return ["dir"] if m.kind in ("pgbb", "tar") else DESTS


def key_of(m_key, dest):
    return f"{m_key}@{dest}"


# ---------------------------------------------------------------- measuring

def rotated(methods, rep):
    """The methods in the order of repetition `rep`: each repetition starts one further on,
    so no method always runs first after the other suite's step (a machine's state then,
    such as memory the kernel has not reused yet, favours or hurts whoever comes first)."""
    k = (rep - 1) % len(methods) if methods else 0
    return methods[k:] + methods[:k]


def proc_stat(pid):
    """(ppid, start time, CPU ticks incl. waited-for children, title) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    rest = st[st.rfind(")") + 2:].split()
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return int(rest[1]), rest[19], ticks


def proc_mem(pid):
    """(VmHWM, RssAnon) in bytes, or Nones."""
    hwm = anon = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    hwm = int(ln.split()[1]) * 1024
                elif ln.startswith("RssAnon:"):
                    anon = int(ln.split()[1]) * 1024
    except OSError:
        pass
    return hwm, anon


class ServerSampler(threading.Thread):
    """CPU and memory of the postmaster's children while a command runs: per process (pid and
    start time), the CPU ticks at the first and last sample (0 at the first for a process
    born after the baseline), the largest VmHWM and RssAnon seen, and its title."""

    def __init__(self, pm_pid, interval=0.05):
        super().__init__(daemon=True)
        self.pm, self.interval = pm_pid, interval
        self.procs = {}
        # the client: the command's processes (descendants of root, runuser left out). wait4()'s
        # maximum RSS would not do: a child keeps the high-water mark of the python it was
        # forked from across exec.
        self.root = None
        self.client_hwm = self.client_sum = 0
        self.baseline = True
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.sample()
        self.baseline = False

    def sample(self):
        parents, mine = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                ppid, start, ticks = proc_stat(d)
                parents[int(d)] = ppid
                if ppid != self.pm:
                    continue
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, IndexError, ValueError):
                continue
            hwm, anon = proc_mem(d)
            with self.lock:
                p = self.procs.get((d, start))
                if p is None:
                    p = self.procs[(d, start)] = {"pid": int(d), "title": title,
                                                  "first": ticks if self.baseline else 0,
                                                  "last": ticks, "hwm": 0, "anon": 0,
                                                  "new": not self.baseline}
                p["last"] = max(p["last"], ticks)
                p["title"] = title or p["title"]
                p["hwm"] = max(p["hwm"], hwm or 0)
                p["anon"] = max(p["anon"], anon or 0)
        if self.root is None:
            return
        total = 0
        for pid in parents:
            a, seen = pid, 0
            while a > 1 and a != self.root and seen < 64:
                a, seen = parents.get(a, 0), seen + 1
            if a != self.root or pid == self.root:
                continue
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "runuser":
                        continue
                hwm, _ = proc_mem(pid)
                with open(f"/proc/{pid}/statm") as f:
                    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
            self.client_hwm = max(self.client_hwm, hwm or 0)
            total += rss
        self.client_sum = max(self.client_sum, total)

    def run(self):
        while not self.halt.wait(self.interval):
            self.sample()

    def stop(self):
        self.halt.set()
        self.join()
        self.sample()
        return self.summary()

    def summary(self):
        procs = list(self.procs.values())
        busy = [p for p in procs if p["last"] > p["first"] or p["new"]]
        cpu = sum(p["last"] - p["first"] for p in procs) / wb.CLK_TCK
        ws = [p for p in procs if p["title"].startswith("postgres: walsender")]
        by = {}
        for p in busy:
            # "postgres: walsender postgres [local] sending backup ..." -> "walsender"
            title = p["title"].removeprefix("postgres: ")
            name = (title.split() or ["?"])[0]
            if "walarch" in title:
                name = " ".join(title.split()[:2])  # its title changes with what it does
            elif name not in AUX:
                name = "backend"  # a session, such as pgBackRest's
            b = by.setdefault(name, {"cpu_s": 0.0, "hwm": 0, "anon": 0, "n": 0})
            b["cpu_s"] += (p["last"] - p["first"]) / wb.CLK_TCK
            b["hwm"] = max(b["hwm"], p["hwm"])
            b["anon"] = max(b["anon"], p["anon"])
            b["n"] += 1
        return {"cpu_s": cpu, "client_hwm": self.client_hwm or None,
                "client_rss_sum": self.client_sum or None,
                "walsender_hwm": max((p["hwm"] for p in ws), default=None),
                "walsender_anon": max((p["anon"] for p in ws), default=None),
                "walsender_cpu_s": sum(p["last"] - p["first"] for p in ws) / wb.CLK_TCK
                if ws else None,
                "by_process": by}


def timed(cmd, *, env=None, cwd=None, timeout=3600, logdir=None, name="cmd", sampler=None):
    """Runs cmd as postgres with its output into files: (seconds, rusage of it and every
    process it waited for, its output). Fails on a non-zero exit."""
    full = ["runuser", "-u", "postgres", "--", *map(str, cmd)]
    out = Path(logdir) / f"{name}.out"
    with open(out, "w") as fo:
        t0 = time.monotonic()
        p = subprocess.Popen(full, stdout=fo, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        if sampler:
            sampler.root = p.pid
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                p.returncode = -9
                raise BenchError(f"timed out after {timeout}s: {shlex.join(full)}")
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text(errors="replace")
    if p.returncode != 0:
        raise BenchError(f"command failed (exit {p.returncode}): {shlex.join(full)}\n"
                         f"{text.strip()[-3000:]}")
    return elapsed, {"cpu_s": ru.ru_utime + ru.ru_stime}, text


def tree_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------- the harness

class BackupHarness(sb.S3Harness):
    def __init__(self, args):
        super().__init__(args)
        self.walarch = args.walarch
        self.primary = None
        self.facts = {}
        self.backups = {}  # (rep, method key, dest) -> what a restore needs
        self.verified = set()
        self.current = None  # the archiver settings in force

    # ------------------------------------------------------------ setup

    def dirs(self):
        w = self.work
        return {"walarch": w / "walarch-archive", "pgbr": w / "pgbr-repo",
                "floor_wal": w / "floor-wal", "pgbb": w / "pgbb", "restore": w / "restore",
                "logs": w / "logs"}

    def setup(self, need_walarch, need_pgbr, dests):
        a, d = self.a, self.dirs()
        for p in d.values():
            p.mkdir(exist_ok=True)
            chown_pg(p)
        phases = {}
        if "s3" in dests:
            t = time.monotonic()
            self.store = sb.Store(self, "store", a.rtt)
            phases["store"] = time.monotonic() - t
        t = time.monotonic()
        p = self.primary = Cluster(self, "primary")
        # last: what it sets wins
        conf = ["archive_command = ''", "include_if_exists = 'bench_method.conf'"]
        p.create(conf, preload="walarch_ext" if need_walarch else None)
        (p.data / "bench_method.conf").write_text("")
        chown_pg(p.data / "bench_method.conf")
        p.start()
        self.pg_version = p.psql("SELECT version()")
        log(f"backup setup: pgbench -i -s {a.scale}")
        run([str(self.bin / "pgbench"), "-h", str(p.sock), "-p", str(p.port), "-U", "postgres",
             "-i", "-s", str(a.scale), "-q", "postgres"], as_pg=True, cwd=p.dir, timeout=7200)
        p.psql("CHECKPOINT")
        # the initialisation's segments are no backup's: nobody archives them
        p.psql("SELECT pg_switch_wal()")
        time.sleep(1)
        for name in p.ready():
            os.rename(p.archive_status / f"{name}.ready", p.archive_status / f"{name}.done")
        phases["pgbench -i"] = time.monotonic() - t
        self.facts["db_bytes"] = int(p.psql("SELECT pg_database_size('postgres')"))
        self.facts["cluster_bytes"] = int(p.psql(
            "SELECT sum(pg_database_size(oid)) FROM pg_database"))
        self.facts["accounts"] = a.scale * 100000
        self.facts["sysid"] = p.psql("SELECT system_identifier FROM pg_control_system()")
        if need_walarch:
            self.walarch_creds = p.dir / "s3-credentials"
            s = self.store
            self.walarch_creds.write_text("" if s is None else
                                          f"[default]\naws_access_key_id = {s.access_key}\n"
                                          f"aws_secret_access_key = {s.secret_key}\n")
            os.chmod(self.walarch_creds, 0o600)
            chown_pg(self.walarch_creds)
        if need_pgbr:
            t = time.monotonic()
            for dest in dests:
                self.write_pgbr(dest)
                run(["pgbackrest", f"--config={self.pgbr_conf_of(dest)}", f"--stanza={wb.STANZA}",
                     "stanza-create"], as_pg=True, cwd=p.dir, timeout=300)
            phases["pgBackRest stanzas"] = time.monotonic() - t
        self.facts["setup_phases_s"] = {k: round(v, 1) for k, v in phases.items()}

    def pgbr_conf_of(self, dest):
        return self.work / f"pgbr-{dest}" / "pgbackrest.conf"

    def write_pgbr(self, dest):
        """pgBackRest's configuration for one destination: its own spool, lock and log paths;
        zst level 1 for archive-push (a backup names its own level)."""
        base = self.work / f"pgbr-{dest}"
        for sub in ("", "spool", "lock", "log"):
            (base / sub).mkdir(exist_ok=True)
            chown_pg(base / sub)
        s, p = self.store, self.primary
        if dest == "s3":
            repo = ["repo1-type=s3", "repo1-s3-endpoint=127.0.0.1",
                    f"repo1-storage-port={s.proxy_port}", f"repo1-s3-bucket={sb.BUCKET}",
                    f"repo1-s3-region={sb.REGION}", f"repo1-s3-key={s.access_key}",
                    f"repo1-s3-key-secret={s.secret_key}", "repo1-s3-uri-style=path",
                    "repo1-storage-verify-tls=n", f"repo1-path=/{PGBR_PREFIX}"]
        else:
            repo = [f"repo1-path={self.dirs()['pgbr']}"]
        lines = ["[global]", *repo, "repo1-retention-full=100",
                 f"spool-path={base / 'spool'}", f"lock-path={base / 'lock'}",
                 f"log-path={base / 'log'}", "log-level-console=warn", "log-level-stderr=warn",
                 "log-level-file=info", "compress-type=zst", "compress-level=1", "",
                 f"[{wb.STANZA}]", f"pg1-path={p.data}", f"pg1-socket-path={p.sock}",
                 f"pg1-port={p.port}", "pg1-user=postgres", ""]
        conf = self.pgbr_conf_of(dest)
        conf.write_text("\n".join(lines))
        os.chmod(conf, 0o600)  # it holds a secret key
        chown_pg(conf)

    def walarch_dest(self, dest):
        if dest == "s3":
            return f"s3://{sb.BUCKET}/{WALARCH_PREFIX}"
        return str(self.dirs()["walarch"])

    def archiver_conf(self, m, dest):
        """The primary's archiving settings for a backup by m into dest."""
        if m.kind == "walarch":
            lines = ["archive_library = 'walarch_ext'", "archive_command = ''",
                     f"walarch.archive_destination = '{self.walarch_dest(dest)}'",
                     "walarch.compression = zstd",
                     f"walarch.compression_level = {m.params['level']}"]
            if dest == "s3":
                lines += [f"walarch.s3_endpoint = '{self.store.endpoint}'",
                          f"walarch.s3_ca_file = '{self.ca}'",
                          f"walarch.s3_credentials_file = '{self.walarch_creds}'",
                          "walarch.s3_uri_style = 'path'"]
            return lines
        if m.kind == "pgbr":
            cmd = (f"pgbackrest --config={self.pgbr_conf_of(dest)} --stanza={wb.STANZA} "
                   f"archive-push %p")
        else:
            d = self.dirs()["floor_wal"]
            cmd = f"test ! -f {d}/%f && cp %p {d}/%f"
        return ["archive_library = ''", f"archive_command = '{cmd}'"]

    def wait_archived(self, limit=600):
        p = self.primary
        deadline = time.monotonic() + limit
        logpos = p.log_size()
        while p.ready_count() > 0:
            if time.monotonic() > deadline:
                raise BenchError(f"the archiver left {p.ready_count()} .ready files for "
                                 f"{limit}s\n{p.log_since(logpos)[-3000:]}")
            time.sleep(0.05)

    def switch_archiver(self, m, dest):
        """Drains the archiver, then points it at m's archive in dest (reload), untimed."""
        p = self.primary
        lines = self.archiver_conf(m, dest)
        if lines == self.current:
            return
        self.wait_archived()
        (p.data / "bench_method.conf").write_text("\n".join(lines) + "\n")
        p.psql("SELECT pg_reload_conf()")
        want = dict(ln.split(" = ", 1) for ln in lines[:2])
        want = [want["archive_library"].strip("'"), want["archive_command"].strip("'")]
        deadline = time.monotonic() + 30
        while True:
            got = p.psql("SELECT current_setting('archive_library') || '|' || "
                         "current_setting('archive_command')").split("|", 1)
            if got == want:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"archive_library, archive_command are {got} after the reload, "
                                 f"not {want}\n{p.log_tail()}")
            time.sleep(0.1)
        time.sleep(0.5)  # the archiver restarts when archive_library changes
        # One segment through the new archiver, untimed: the first file after a switch has been
        # seen to take 30-40 s (a restarted archiver, a fresh archive), which must not land in
        # the next backup's time.
        t = time.monotonic()
        p.psql("SELECT pg_logical_emit_message(false, 'walarch-bench', 'switch') IS NOT NULL, "
               "pg_switch_wal() IS NOT NULL")
        self.wait_archived()
        self.facts.setdefault("archiver_warmup_s", []).append(round(time.monotonic() - t, 1))
        self.current = lines

    # ------------------------------------------------------------ backups

    def backup_cmd(self, m, dest, label, out):
        p = self.primary
        conn = ["-h", str(p.sock), "-p", str(p.port), "-U", "postgres"]
        if m.kind == "walarch":
            return [self.bin / "pg_basebackup", *conn, f"--target=walarch:{label}", "-X", "none",
                    "-c", "fast"]
        if m.kind == "pgbr":
            return ["pgbackrest", f"--config={self.pgbr_conf_of(dest)}", f"--stanza={wb.STANZA}",
                    "--type=full", "--start-fast", "--compress-type=zst",
                    f"--compress-level={m.params['level']}", f"--process-max={m.params['pmax']}",
                    "backup"]
        return [self.bin / "pg_basebackup", *conn, "-D", out, "-Ft", *(["-z"] if m.params["gz"]
                                                                      else []),
                "-X", "none", "-c", "fast"]

    def pgbr_labels(self, dest):
        out = run(["pgbackrest", f"--config={self.pgbr_conf_of(dest)}", f"--stanza={wb.STANZA}",
                   "--output=json", "info"], as_pg=True, cwd=self.primary.dir, timeout=300).stdout
        info = json.loads(out)
        return [b["label"] for st in info for b in st.get("backup", [])]

    def stored(self, m, dest, label, out):
        """(count, bytes) of the backup's files or objects."""
        if m.kind == "pgbb":
            files = [f for f in Path(out).rglob("*") if f.is_file()]
            return len(files), sum(f.stat().st_size for f in files)
        if dest == "s3":
            prefix = (f"{WALARCH_PREFIX}/backups/{label}/" if m.kind == "walarch"
                      else f"{PGBR_PREFIX}/backup/{wb.STANZA}/{label}/")
            objs = self.store.objects(prefix)
            return len(objs), sum(objs.values())
        root = (self.dirs()["walarch"] / "backups" / label if m.kind == "walarch"
                else self.dirs()["pgbr"] / "backup" / wb.STANZA / label)
        files = [f for f in root.rglob("*") if f.is_file()]
        return len(files), sum(f.stat().st_size for f in files)

    def backup(self, m, dest, rep):
        p = self.primary
        self.switch_archiver(m, dest)
        label = f"bench-{m.key}-{dest}-r{rep}"
        out = self.dirs()["pgbb"] / f"{m.key}-r{rep}"
        before = self.pgbr_labels(dest) if m.kind == "pgbr" else None
        p.psql("CHECKPOINT")
        os.sync()
        cmd = self.backup_cmd(m, dest, label, out)
        sampler = ServerSampler(p.postmaster_pid())
        sampler.start()
        try:
            secs, ru, text = timed(cmd, cwd=p.dir, logdir=self.dirs()["logs"],
                                   name=f"backup-{m.key}-{dest}-{rep}", sampler=sampler)
        finally:
            server = sampler.stop()
        if m.kind == "pgbr":
            new = [x for x in self.pgbr_labels(dest) if x not in before]
            if len(new) != 1 or not PGBR_LABEL_RE.match(new[0]):
                raise BenchError(f"pgBackRest's new backups: {new}, expected one full backup")
            label = new[0]
        count, size = self.stored(m, dest, label, out)
        if count == 0:
            raise BenchError(f"no backup stored under {label}\n{text[-2000:]}")
        self.backups[(rep, m.key, dest)] = {"label": label, "out": str(out)}
        return {"seconds": secs, "label": label, "client_cpu_s": ru["cpu_s"],
                "client_maxrss": server["client_hwm"], "server_cpu_s": server["cpu_s"],
                "cpu_s": ru["cpu_s"] + server["cpu_s"],
                "walsender_cpu_s": server["walsender_cpu_s"],
                "walsender_hwm": server["walsender_hwm"],
                "walsender_anon": server["walsender_anon"],
                "server_by_process": server["by_process"],
                "client_rss_sum": server["client_rss_sum"],
                "stored_bytes": size, "stored_files": count,
                "command": shlex.join(map(str, cmd)),
                "output_tail": text.strip().splitlines()[-5:]}

    # ------------------------------------------------------------ restores

    def walarch_env(self):
        s = self.store
        return dict(os.environ, AWS_ACCESS_KEY_ID=s.access_key, AWS_SECRET_ACCESS_KEY=s.secret_key,
                    AWS_REGION=sb.REGION)

    def restore_cmd(self, m, dest, src, target):
        if m.kind == "walarch":
            cmd = [self.walarch, "backup", "restore", self.walarch_dest(dest), src["label"],
                   target, "--jobs", str(m.params["jobs"])]
            if dest == "s3":
                cmd += ["--endpoint", self.store.endpoint, "--ca-file", str(self.ca)]
            return cmd
        if m.kind == "pgbr":
            return ["pgbackrest", f"--config={self.pgbr_conf_of(dest)}", f"--stanza={wb.STANZA}",
                    f"--set={src['label']}", f"--pg1-path={target}",
                    f"--process-max={m.params['pmax']}", "restore"]
        tar = next(Path(src["out"]).glob("base.tar*"))
        flags = "-xzf" if tar.name.endswith(".gz") else "-xf"
        return ["sh", "-c", f"tar {flags} {shlex.quote(str(tar))} -C {shlex.quote(str(target))} "
                            f"&& sync -f {shlex.quote(str(target))}"]

    def restore(self, m, dest, rep, source_key):
        src = self.backups[(rep, source_key, dest)]
        c = Cluster(self, f"{m.key}-{dest}-{rep}")
        target = c.data
        target.mkdir(mode=0o700)
        chown_pg(target)
        os.sync()
        env = self.walarch_env() if m.kind == "walarch" and dest == "s3" else None
        cmd = self.restore_cmd(m, dest, src, target)
        sampler = ServerSampler(-1)  # the client's processes only
        sampler.start()
        try:
            secs, ru, text = timed(cmd, env=env, cwd=c.dir, logdir=self.dirs()["logs"],
                                   name=f"restore-{m.key}-{dest}-{rep}", sampler=sampler)
        finally:
            client = sampler.stop()
        restored = tree_size(target)
        r = {"seconds": secs, "source": source_key, "label": src["label"],
             "cpu_s": ru["cpu_s"], "maxrss": client["client_hwm"],
             "client_rss_sum": client["client_rss_sum"],
             "restored_bytes": restored, "command": shlex.join(map(str, cmd)),
             "output_tail": text.strip().splitlines()[-5:], "verified": None}
        try:
            if (m.key, dest) not in self.verified:
                r["verified"] = self.verify(m, dest, c, env)
                self.verified.add((m.key, dest))
        finally:
            c.destroy()
        return r

    def verify(self, m, dest, c, env):
        """The restored directory starts, recovers to the end of its archive, leaves recovery
        and holds every row: untimed, once per method and destination."""
        t0 = time.monotonic()
        if m.kind == "tar":
            (c.data / "recovery.signal").touch()
            chown_pg(c.data / "recovery.signal")
            d = self.dirs()["floor_wal"]
            extra = [f"restore_command = 'cp {d}/%f \"%p\"'"]
        else:
            extra = []
        # the primary's archiver settings came with the backup: emptied, then overridden
        (c.data / "bench_method.conf").write_text("")
        with open(c.data / "postgresql.conf", "a") as f:
            f.write("\n# restored copy\n" + "\n".join([
                f"port = {c.port}", f"unix_socket_directories = '{c.sock}'",
                "listen_addresses = ''", "archive_mode = off", "archive_library = ''",
                "shared_preload_libraries = ''", *extra]) + "\n")
        run(["chown", "-R", "postgres:postgres", str(c.data)])
        auto = (c.data / "postgresql.auto.conf")
        recovery_conf = auto.read_text() if auto.exists() else ""
        self.live.append(c)
        c.running = True
        run([str(self.bin / "pg_ctl"), "-D", str(c.data), "-l", str(c.logfile), "-w", "-t", "900",
             "start"], as_pg=True, cwd=c.dir, env=env, timeout=960)
        deadline = time.monotonic() + 900
        while True:
            try:
                if c.psql("SELECT pg_is_in_recovery()", timeout=30) == "f":
                    break
            except BenchError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the restored cluster is still in recovery\n{c.log_tail()}")
            time.sleep(0.2)
        rows = int(c.psql("SELECT count(*) FROM pgbench_accounts"))
        if rows != self.facts["accounts"]:
            raise BenchError(f"the restored cluster has {rows} rows in pgbench_accounts, "
                             f"expected {self.facts['accounts']}")
        sysid = c.psql("SELECT system_identifier FROM pg_control_system()")
        if sysid != self.facts["sysid"]:
            raise BenchError(f"the restored cluster's system identifier is {sysid}")
        c.stop("fast")
        settings = [ln for ln in recovery_conf.splitlines() if ln and not ln.startswith("#")]
        if m.kind == "tar":
            settings = ["recovery.signal and " + extra[0] + " written by the harness"]
        return {"rows": rows, "seconds": round(time.monotonic() - t0, 1),
                "restore_settings": settings[-6:]}

    # ------------------------------------------------------------ probes

    def probe_walarch(self):
        """None if the walarch target and `walarch backup restore` exist, else why not."""
        p = self.primary
        r = run([str(self.bin / "psql"), "-h", str(p.sock), "-p", str(p.port), "-U", "postgres",
                 "-XAtc", "SELECT 1 FROM pg_settings WHERE name = 'walarch.archive_destination'"],
                as_pg=True, check=False, cwd=p.dir)
        if r.stdout.strip() != "1":
            return "not run: walarch_ext is not loaded in the primary"
        if not os.access(self.walarch, os.X_OK):
            return f"not run: {self.walarch} is not an executable"
        r = run([self.walarch, "backup", "restore", "--help"], check=False, timeout=60)
        said = (r.stderr + r.stdout).strip()
        if 'unknown command "backup"' in said:
            return f"not run: `{self.walarch}` has no `backup restore` command: {said[:200]}"
        return None

    # ------------------------------------------------------------ the whole run

    def save_partial(self, results, errors):
        """Every run so far into the JSON, so a run cut short still leaves its numbers (the
        report at the end replaces it)."""
        out = Path(self.a.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "benchmark-backup.json.tmp"
        tmp.write_text(json.dumps({"partial": True, "runs": results, "errors": errors,
                                   "facts": self.facts, "command": self.a.command}, indent=1))
        tmp.replace(out / "benchmark-backup.json")

    def main(self):
        a = self.a
        started = time.monotonic()
        only = set(a.methods.split(",")) if a.methods else None
        dests = a.dests.split(",")
        backups = [m for m in BACKUPS if not only or m.key in only]
        restores = [m for m in RESTORES if not only or m.key in only]
        if not backups:
            raise SystemExit(f"no backup method among {a.methods}")
        results, errors = {}, {}
        for m in backups + restores:
            for d in dests_of(m):
                if d in dests:
                    results[key_of(m.key, d)] = []
        need_walarch = any(m.kind == "walarch" for m in backups)
        need_pgbr = any(m.kind == "pgbr" for m in backups)
        self.setup(need_walarch, need_pgbr, dests)
        why_walarch = self.probe_walarch() if need_walarch else None
        if why_walarch:
            log(f"   walarch methods: {why_walarch}")
        self.facts["setup_s"] = time.monotonic() - started
        run_s = []
        for rep in range(1, a.reps + 1):
            for dest in dests:
                for m in rotated(backups, rep):
                    if dest not in dests_of(m):
                        continue
                    key = key_of(m.key, dest)
                    if m.kind == "walarch" and why_walarch:
                        errors.setdefault(key, why_walarch)
                        continue
                    log(f"backup rep {rep}/{a.reps}, {dest}: {m.label}")
                    t = time.monotonic()
                    try:
                        r = self.backup(m, dest, rep)
                    except BenchError as e:
                        msg = str(e).strip()
                        log(f"   FAILED: {msg}")
                        if m.kind == "walarch" and "unrecognized target" in msg:
                            msg = f"not run: this walarch_ext has no backup target\n{msg}"
                        errors.setdefault(key, msg)
                        continue
                    run_s.append(time.monotonic() - t)
                    results[key].append(r)
                    self.save_partial(results, errors)
                    log(f"   {r['seconds']:.2f}s, CPU {r['cpu_s']:.1f}s (server "
                        f"{r['server_cpu_s']:.1f}s, client {r['client_cpu_s']:.1f}s), stored "
                        f"{r['stored_bytes'] / 2**20:.1f} MiB in {r['stored_files']} files")
            for dest in dests:
                for m in rotated(restores, rep):
                    if dest not in dests_of(m):
                        continue
                    key = key_of(m.key, dest)
                    src = next((s for s in m.params["sources"]
                                if (rep, s, dest) in self.backups), None)
                    if src is None:
                        errors.setdefault(key, "not run: none of its source backups ("
                                          + ", ".join(m.params["sources"]) + ") succeeded")
                        continue
                    log(f"restore rep {rep}/{a.reps}, {dest}: {m.label} (of {src})")
                    t = time.monotonic()
                    try:
                        r = self.restore(m, dest, rep, src)
                    except BenchError as e:
                        msg = str(e).strip()
                        log(f"   FAILED: {msg}")
                        errors.setdefault(key, msg)
                        continue
                    run_s.append(time.monotonic() - t)
                    results[key].append(r)
                    self.save_partial(results, errors)
                    v = r["verified"]
                    log(f"   {r['seconds']:.2f}s, CPU {r['cpu_s']:.1f}s, "
                        f"{r['restored_bytes'] / 2**20:.0f} MiB restored"
                        + (f"; started and checked: {v['rows']} rows ({v['seconds']:.0f}s)"
                           if v else ""))
            # the floor's outputs are big (an uncompressed tar is the database's size)
            for m in backups:
                if m.kind == "pgbb" and (rep, m.key, "dir") in self.backups:
                    shutil.rmtree(self.backups[(rep, m.key, "dir")]["out"], ignore_errors=True)
        self.facts["total_s"] = time.monotonic() - started
        self.facts["run_wall_s"] = [min(run_s or [0]), max(run_s or [0])]
        return backups, restores, dests, results, errors


# ---------------------------------------------------------------- report

def med(runs, k):
    vals = [r[k] for r in runs if r.get(k) is not None]
    return statistics.median(vals) if vals else None


def summarize(backups, restores, dests, results):
    rows = []
    for kind, methods in (("backup", backups), ("restore", restores)):
        for dest in dests:
            for m in methods:
                runs = results.get(key_of(m.key, dest)) or []
                if not runs:
                    continue
                secs = [r["seconds"] for r in runs]
                row = {"op": kind, "dest": dest, "key": m.key, "label": m.label, "kind": m.kind,
                       "n": len(runs), "seconds": statistics.median(secs), "min": min(secs),
                       "max": max(secs), "cpu_s": med(runs, "cpu_s")}
                if kind == "backup":
                    row.update({
                        "server_cpu_s": med(runs, "server_cpu_s"),
                        "client_cpu_s": med(runs, "client_cpu_s"),
                        "stored": med(runs, "stored_bytes"),
                        "walsender_hwm": max((r["walsender_hwm"] or 0 for r in runs), default=0)
                        or None,
                        "client_maxrss": max(r["client_maxrss"] or 0 for r in runs) or None,
                        "client_rss_sum": max((r["client_rss_sum"] or 0 for r in runs),
                                              default=0) or None,
                        "level": m.params.get("level"), "pmax": m.params.get("pmax")})
                else:
                    row.update({"source": runs[0]["source"],
                                "client_maxrss": max(r["maxrss"] or 0 for r in runs) or None,
                                "client_rss_sum": max((r["client_rss_sum"] or 0 for r in runs),
                                                      default=0) or None,
                                "verified": next((r["verified"] for r in runs if r["verified"]),
                                                 None)})
                rows.append(row)
    return rows


def verdicts(rows, dests):
    """The issue's targets, from the medians, per destination."""
    out = []
    for dest in dests:
        sel = {r["key"]: r for r in rows if r["dest"] == dest}
        where = "directory" if dest == "dir" else "S3"
        for level in (1, 3):
            w = sel.get(f"walarch-zstd{level}")
            pg = [r for r in sel.values() if r["op"] == "backup" and r["kind"] == "pgbr"
                  and r["level"] == level]
            head = f"- Backup, {where}, zstd level {level}:"
            if not w or not pg:
                out.append(f"{head} not measured (walarch-zstd{level} or pgBackRest zst "
                           f"{level} has no result).")
                continue
            best = min(pg, key=lambda r: r["seconds"])
            met = w["seconds"] <= best["seconds"]
            out.append(f"{head} walarch {w['seconds']:.2f} s against pgBackRest's best, "
                       f"{best['key']}, {best['seconds']:.2f} s: "
                       f"{'met' if met else 'not met'} ({best['seconds'] / w['seconds']:.2f}×).")
            ref = min(pg, key=lambda r: r["pmax"])  # sizes barely depend on process-max
            ratio = w["stored"] / ref["stored"]
            out.append(f"- Stored size, {where}, zstd level {level}: walarch "
                       f"{w['stored'] / 2**20:.1f} MiB against {ref['key']} "
                       f"{ref['stored'] / 2**20:.1f} MiB, {(ratio - 1) * 100:+.1f}%: "
                       f"{'met' if ratio <= 1.05 else 'not met'} (at most +5%).")
        w = sel.get("restore-walarch-j4")
        pg = [r for r in sel.values() if r["op"] == "restore" and r["kind"] == "pgbr"]
        if not w or not pg:
            out.append(f"- Restore, {where}: not measured (walarch or pgBackRest restore has no "
                       f"result).")
        else:
            best = min(pg, key=lambda r: r["seconds"])
            met = w["seconds"] <= best["seconds"]
            out.append(f"- Restore, {where}: walarch {w['seconds']:.2f} s against pgBackRest's "
                       f"best, {best['key']}, {best['seconds']:.2f} s: "
                       f"{'met' if met else 'not met'} ({best['seconds'] / w['seconds']:.2f}×).")
    ws = [r for r in rows if r["op"] == "backup" and r["kind"] == "walarch" and r["walsender_hwm"]]
    if ws:
        out.append("- Peak memory (reported, no target): " + "; ".join(
            f"{r['key']} into {r['dest']}: walsender {r['walsender_hwm'] / 2**20:.0f} MiB"
            for r in ws) + ".")
    return out


def mib(x):
    return "–" if x is None else f"{x / 2**20:.1f}"


def markdown(h, backups, restores, dests, rows, errors, mach, png_name, command):
    a, f = h.a, h.facts
    out = []
    w = out.append
    w("# walarch_ext benchmark: base backups and restores\n")
    w("Generated by `scripts/bench.sh` (harness: `bench/backup_bench.py`); every figure below "
      "comes from the run described here.\n")
    w(f"Command: `{command}`\n")
    w(f"Machine: {mach['cpu']}, {mach['mem']}, {mach['virt'] or 'bare metal?'}, {mach['kernel']}, "
      f"{mach['os']}. Work directory: {mach['fs']}. Load average when the report was written: "
      f"{mach['loadavg']} (other work on the machine is not controlled).\n")
    weed = Path(os.environ.get("WALARCH_S3_PREFIX", "/var/cache/walarch/s3")) / "bin" / "weed"
    w(f"PostgreSQL: {mach['pg']}. pgBackRest: {mach['pgbackrest']}. walarch_ext: "
      f"{mach['walarch']}. walarch: `{h.walarch}`"
      + (f" ({wb.sh(f'stat -c %y {shlex.quote(str(h.walarch))}')[:16]})"
         if Path(h.walarch).exists() else "")
      + f". SeaweedFS: {wb.sh(str(weed) + ' version')}.\n")
    w(f"Database: `pgbench -i -s {a.scale}`, {f['db_bytes'] / 2**20:.0f} MiB "
      f"(the cluster {f['cluster_bytes'] / 2**20:.0f} MiB), {f['accounts']} rows in "
      f"pgbench_accounts. "
      + (f"S3: a SeaweedFS cluster (three volume servers, replication 001) through the TLS + "
         f"RTT proxy at {a.rtt} ms. " if "s3" in dests else "")
      + f"{a.reps} repetition(s), interleaved, rotated. Setup "
      f"{f['setup_s']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in
                                           f["setup_phases_s"].items())
      + f"); the whole suite {f['total_s'] / 60:.1f} min; the first segment through the "
      f"archiver after each switch of its settings (untimed) "
      + (f"{min(f['archiver_warmup_s']):.1f}–{max(f['archiver_warmup_s']):.1f} s"
         if f.get("archiver_warmup_s") else "–") + "; one run (backup or restore, with its "
      f"untimed preparation and checks) {f['run_wall_s'][0]:.1f}–{f['run_wall_s'][1]:.1f} s.\n")
    w("## Targets\n")
    w("From the medians; \"×\" is the pgBackRest time over walarch's.\n")
    for line in verdicts(rows, dests):
        w(line)
    w("")
    w("## Results\n")
    w("Median of the repetitions (min–max). CPU: user + system seconds, the server's "
      "(postmaster's children) plus the client's. Peak RSS: the walsender's VmHWM / the largest "
      "client process (pg_basebackup, pgbackrest or a local process of it, tar).\n")
    w("| method | destination | backup s (min–max) | CPU s (server + client) | stored MiB | "
      "peak RSS MiB (walsender / client) | restore | restore s (min–max) | restore CPU s | "
      "restore peak RSS MiB |")
    w("|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for dest in dests:
        for m in backups:
            key = key_of(m.key, dest)
            if key not in h.results:
                continue
            r = next((x for x in rows if x["op"] == "backup" and x["key"] == m.key
                      and x["dest"] == dest), None)
            rs = [x for x in rows if x["op"] == "restore" and x["dest"] == dest
                  and x["source"] == m.key]
            where = "directory" if dest == "dir" else f"S3, {a.rtt} ms"
            if not r:
                why = "not run" if errors.get(key, "").startswith("not run:") else "failed"
                w(f"| {m.label} | {where} | {why} (below) | | | | | | | |")
                continue
            first = True
            for x in rs or [None]:
                cells = ([f"{r['seconds']:.2f} ({r['min']:.2f}–{r['max']:.2f})",
                          f"{r['cpu_s']:.1f} ({r['server_cpu_s']:.1f} + {r['client_cpu_s']:.1f})",
                          mib(r["stored"]),
                          f"{mib(r['walsender_hwm'])} / {mib(r['client_maxrss'])}"]
                         if first else ["", "", "", ""])
                if x:
                    cells += [x["label"], f"{x['seconds']:.2f} ({x['min']:.2f}–{x['max']:.2f})",
                              f"{x['cpu_s']:.1f}", mib(x["client_maxrss"])]
                else:
                    cells += ["–", "", "", ""]
                w(f"| {m.label if first else ''} | {where if first else ''} | " + " | ".join(cells)
                  + " |")
                first = False
    for dest in dests:
        for m in restores:
            key = key_of(m.key, dest)
            if key in errors and not h.results.get(key):
                why = "not run" if errors[key].startswith("not run:") else "failed"
                w(f"| | {dest} | | | | | {m.label} | {why} (below) | | |")
    w("")
    w(f"![backup and restore times, stored sizes]({png_name})\n")
    w("## Server CPU by process (backups)\n")
    w("CPU seconds gained during the backup by the postmaster's children, by kind (the "
      "archiver's figure includes the archive_command it ran), and their largest VmHWM, over "
      "every repetition: median CPU, largest VmHWM.\n")
    w("| method | destination | by process |")
    w("|---|---|---|")
    for key, runs in h.results.items():
        if not runs or "stored_bytes" not in runs[0]:
            continue
        agg = {}
        for r in runs:
            for name, b in r["server_by_process"].items():
                g = agg.setdefault(name, {"cpu": [], "hwm": 0})
                g["cpu"].append(b["cpu_s"])
                g["hwm"] = max(g["hwm"], b["hwm"])
        mk, dest = key.split("@")
        w(f"| {mk} | {dest} | " + "; ".join(
            f"{n}: {statistics.median(g['cpu']):.2f} s, {g['hwm'] / 2**20:.0f} MiB"
            for n, g in sorted(agg.items(), key=lambda kv: -statistics.median(kv[1]["cpu"])))
          + " |")
    w("")
    w("## Restored clusters checked\n")
    for r in rows:
        if r["op"] == "restore":
            v = r["verified"]
            w(f"- {r['key']} ({r['dest']}, of {r['source']}): " +
              (f"started, left recovery, {v['rows']} rows in pgbench_accounts "
               f"({v['seconds']:.0f} s, untimed); its recovery settings: "
               + "; ".join(f"`{s}`" for s in v["restore_settings"]) if v else "not checked"))
    w("")
    w("## Commands\n")
    w("As run in the first repetition (LABEL, paths and ports are the run's):\n")
    seen = set()
    for key, runs in h.results.items():
        if runs and key not in seen:
            seen.add(key)
            w(f"- {key}: `{runs[0]['command']}`")
    w("")
    w("## How it is measured\n")
    w(__doc__.split("\n\n", 1)[1].strip() + "\n")
    w("## Every run\n")
    w("| method | destination | rep | s | CPU s | stored or restored MiB | label |")
    w("|---|---|---:|---:|---:|---:|---|")
    for key, runs in h.results.items():
        mk, dest = key.split("@")
        for i, r in enumerate(runs, 1):
            size = r.get("stored_bytes", r.get("restored_bytes"))
            w(f"| {mk} | {dest} | {i} | {r['seconds']:.2f} | {r['cpu_s']:.2f} | {mib(size)} | "
              f"{r['label']} |")
    w("")
    if errors:
        wb.failures(w, errors)
    return "\n".join(out)


def plot(rows, png, python, title):
    code = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.loads(sys.stdin.read())
rows = d["rows"]
panels = [("backup", "seconds", "backup, s (median, min-max)"),
          ("restore", "seconds", "restore, s (median, min-max)"),
          ("backup", "stored", "stored, MiB (median; log scale)")]
fig, axes = plt.subplots(1, 3, figsize=(16, 6))
colors = {"dir": "#4c72b0", "s3": "#dd8452"}
for ax, (op, field, xlabel) in zip(axes, panels):
    sel = [r for r in rows if r["op"] == op]
    labels = list(dict.fromkeys(r["key"] for r in sel))
    dests = list(dict.fromkeys(r["dest"] for r in sel))
    width = 0.8 / max(1, len(dests))
    for i, dest in enumerate(dests):
        xs, vals, lo, hi = [], [], [], []
        for j, lab in enumerate(labels):
            r = next((x for x in sel if x["key"] == lab and x["dest"] == dest), None)
            if not r:
                continue
            xs.append(j + (i - (len(dests) - 1) / 2) * width)
            if field == "stored":
                vals.append(r["stored"] / 2**20); lo.append(0); hi.append(0)
            else:
                vals.append(r["seconds"]); lo.append(r["seconds"] - r["min"])
                hi.append(r["max"] - r["seconds"])
        ax.barh(xs, vals, height=width, xerr=[lo, hi], capsize=2, color=colors.get(dest),
                label="directory" if dest == "dir" else "S3 (" + d["rtt"] + " ms RTT)")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    if field == "stored":
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
fig.suptitle(d["title"], fontsize=11)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=110)
'''
    p = subprocess.run([python, "-c", code, str(png)], text=True,
                       input=json.dumps({"rows": rows, "title": title["text"],
                                         "rtt": str(title["rtt"])}))
    if p.returncode != 0:
        raise SystemExit("plotting failed")


def main():
    ap = wb.arguments(__doc__, 28000)
    ap.add_argument("--scale", type=int, default=135, help="pgbench scale (135: about 2 GB)")
    ap.add_argument("--rtt", type=int, default=20, help="the proxy's round-trip time, ms")
    ap.add_argument("--dests", default="dir,s3", help="dir, s3 or both, comma-separated")
    ap.add_argument("--s3-port-base", type=int, default=25500)
    ap.add_argument("--proxy", required=True, help="the rtt-proxy binary")
    ap.add_argument("--walarch", default="/usr/local/bin/walarch", help="the walarch command")
    ap.add_argument("--python", required=True, help="a python with matplotlib, for the plot")
    a = ap.parse_args()
    a.load_seconds = 0
    if a.scale < 1 or a.reps < 1:
        raise SystemExit("--scale and --reps must be at least 1")
    ds = a.dests.split(",")
    if not ds or not set(ds) <= set(DESTS) or len(set(ds)) != len(ds):
        raise SystemExit(f"--dests: {a.dests!r} is not a list of distinct destinations among "
                         f"{', '.join(DESTS)}")
    h = BackupHarness(a)
    wb.exit_on_signals()
    try:
        backups, restores, dests, results, errors = h.main()
    finally:
        h.cleanup()
        if h.store:
            h.store.stop()
    h.results = results
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(backups, restores, dests, results)
    mach = wb.machine(h)
    png = out / "benchmark-backup.png"
    md = markdown(h, backups, restores, dests, rows, errors, mach, png.name, a.command)
    (out / "benchmark-backup.md").write_text(md)
    (out / "benchmark-backup.json").write_text(json.dumps(
        {"rows": rows, "runs": results, "errors": errors, "facts": h.facts,
         "machine": mach, "command": a.command}, indent=1))
    if rows:
        plot(rows, png, a.python, {
            "text": f"pgbench -i -s {a.scale} ({h.facts['db_bytes'] / 2**30:.1f} GiB): backup and "
                    f"restore, directory and SeaweedFS through a TLS + {a.rtt} ms RTT proxy",
            "rtt": a.rtt})
    log(f"wrote {out / 'benchmark-backup.md'} and {png}")
    print(md.split("## Server CPU by process")[0])
    real = [k for k, msg in errors.items() if not msg.startswith("not run:")]
    return 1 if real else 0


if __name__ == "__main__":
    raise SystemExit(main())
