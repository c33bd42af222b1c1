#!/usr/bin/env python3
"""Benchmark harness for walarch_ext: WAL archiving methods side by side.

Run through scripts/bench.sh, which installs what is needed and passes the
settings. This program only measures and reports:

A. Backlog drain. For each method and repetition a fresh cluster builds a
   backlog of N .ready segments of real WAL while its archiver is configured
   but idle (its directory/command setting empty); then the setting is made
   (ALTER SYSTEM, then pg_reload_conf() on an already open session, the
   timer starting right before it) and the time until no .ready file is left
   in pg_wal/archive_status is measured. The physical floor copies the same
   kind of backlog with dd conv=fsync, no PostgreSQL involved. Repetitions
   are interleaved (rep 1 of every method, then rep 2, ...).
B. Sustained load. For each archiving method a fresh cluster with the
   archiver enabled runs an insert-heavy pgbench for a fixed time; the
   backlog (.ready count and bytes) is sampled every second, and the
   per-segment archive latency (.ready created -> .done) is taken from
   inotify events on pg_wal/archive_status.

Standard library only; the plot (bench/plot.py) needs matplotlib.
"""

import argparse
import ctypes
import datetime
import json
import os
import re
import select
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEG_RE = re.compile(r"^[0-9A-F]{24}$")
PGBR_SEG_RE = re.compile(r"^[0-9A-F]{24}-[0-9a-f]{40}(\.\w+)?$")
FAIL_RE = re.compile(r"archive command failed|failed to archive|could not |ERROR:|FATAL:|PANIC:")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STANZA = "bench"


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def run(cmd, *, as_pg=False, check=True, timeout=None, cwd=None, input=None, env=None):
    if as_pg:
        cmd = ["runuser", "-u", "postgres", "--"] + list(cmd)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, cwd=cwd, input=input, env=env)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out after {timeout}s: {shlex.join(map(str, cmd))}") from e
    if check and p.returncode != 0:
        out = (p.stderr.strip() or p.stdout.strip())[-3000:]
        raise BenchError(f"command failed (exit {p.returncode}): {shlex.join(map(str, cmd))}\n{out}")
    return p


def chown_pg(path):
    shutil.chown(path, "postgres", "postgres")


# ---------------------------------------------------------------- methods

class Method:
    def __init__(self, key, label, kind, **params):
        self.key, self.label, self.kind, self.params = key, label, kind, params

    @property
    def archiver(self):
        return self.kind != "dd"


METHODS = [
    Method("walarch-off", "walarch_ext, copy-ahead off", "walarch", copy_ahead=False),
    Method("walarch-ca1", "walarch_ext, copy-ahead, parallel_copies=1", "walarch", copy_ahead=True, pc=1),
    Method("walarch-ca2", "walarch_ext, copy-ahead, parallel_copies=2", "walarch", copy_ahead=True, pc=2),
    Method("walarch-ca4", "walarch_ext, copy-ahead, parallel_copies=4", "walarch", copy_ahead=True, pc=4),
    Method("walarch-ca8", "walarch_ext, copy-ahead, parallel_copies=8", "walarch", copy_ahead=True, pc=8),
    Method("basic_archive", "contrib basic_archive", "basic"),
    Method("cp", "archive_command test/cp", "cp"),
    Method("pgbr-sync", "pgBackRest archive-push, sync", "pgbr", asynch=False),
    Method("pgbr-async2", "pgBackRest archive-push, async, process-max=2", "pgbr", asynch=True, pmax=2),
    Method("pgbr-async4", "pgBackRest archive-push, async, process-max=4", "pgbr", asynch=True, pmax=4),
    Method("dd1", "dd conv=fsync, 1 stream (floor)", "dd", streams=1),
    Method("dd4", "dd conv=fsync, 4 streams (floor)", "dd", streams=4),
]


# ---------------------------------------------------------------- clusters

class PsqlSession:
    """One open psql connection, so that timed statements pay no connection set-up."""

    MARK = "__walarch_bench_done__"

    def __init__(self, cluster):
        self.p = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(cluster.bin / "psql"), "-X", "-At", "-q",
             "-v", "ON_ERROR_STOP=0", "-h", str(cluster.sock), "-p", str(cluster.port),
             "-U", "postgres", "-d", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=cluster.dir)
        self.query("SELECT 1")

    def send(self, sql):
        self.p.stdin.write(sql.rstrip().rstrip(";") + ";\n")
        self.p.stdin.flush()

    def wait(self, sql="?"):
        self.p.stdin.write(f"\\echo {self.MARK}\n")
        self.p.stdin.flush()
        out = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise BenchError(f"psql session ended unexpectedly after: {sql}\n{''.join(out)}")
            if line.strip() == self.MARK:
                break
            out.append(line)
        text = "".join(out)
        if "ERROR:" in text or "FATAL:" in text:
            raise BenchError(f"SQL failed: {sql}\n{text.strip()}")
        return text.strip()

    def query(self, sql):
        self.send(sql)
        return self.wait(sql)

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=10)
        except Exception:
            self.p.kill()


class Cluster:
    def __init__(self, h, name):
        self.h = h
        self.bin = h.bin
        self.dir = h.work / name
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.logfile = self.dir / "server.log"
        self.port = h.next_port()
        self.running = False
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.sock.mkdir()
        for p in (self.dir, self.sock):
            chown_pg(p)
        os.chmod(self.dir, 0o755)

    @property
    def archive_status(self):
        return self.data / "pg_wal" / "archive_status"

    def create(self, conf_lines, preload=None):
        run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--no-sync"], as_pg=True, cwd=self.dir)
        lines = [
            "listen_addresses = ''",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.sock}'",
            "archive_mode = on",
            # keep every segment: no checkpoint may recycle the backlog
            "max_wal_size = '64GB'",
            "checkpoint_timeout = '1h'",
            "log_checkpoints = on",
        ]
        if preload:
            lines.append(f"shared_preload_libraries = '{preload}'")
        lines += conf_lines
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# walarch benchmark\n" + "\n".join(lines) + "\n")

    def start(self):
        self.h.live.append(self)
        self.running = True
        try:
            run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                 "-t", "120", "start"], as_pg=True, cwd=self.dir)
        except BenchError as e:
            raise BenchError(f"{e}\nserver log:\n{self.log_tail()}") from None

    def stop(self, mode="immediate"):
        if not self.running:
            return
        run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop"],
            as_pg=True, check=False, cwd=self.dir)
        self.running = False
        if self in self.h.live:
            self.h.live.remove(self)

    def destroy(self):
        self.stop()
        self.h.kill_pgbackrest(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql, timeout=600):
        p = run([str(self.bin / "psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1",
                 "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                 "-c", sql], as_pg=True, timeout=timeout, cwd=self.dir)
        return p.stdout.strip()

    def psql_file(self, path, timeout=3600):
        run([str(self.bin / "psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-f", str(path)], as_pg=True, timeout=timeout, cwd=self.dir)

    def ready(self):
        return sorted(e.name[:-6] for e in os.scandir(self.archive_status) if e.name.endswith(".ready"))

    def ready_count(self):
        return sum(1 for e in os.scandir(self.archive_status) if e.name.endswith(".ready"))

    def log_size(self):
        try:
            return self.logfile.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, pos):
        try:
            with open(self.logfile, errors="replace") as f:
                f.seek(pos)
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, n=30):
        text = self.log_since(0)
        return "\n".join(text.splitlines()[-n:])

    def postmaster_pid(self):
        with open(self.data / "postmaster.pid") as f:
            return int(f.readline())

    def child_pids(self, title_prefix):
        """Children of the postmaster whose process title starts with title_prefix."""
        pm = self.postmaster_pid()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rfind(")") + 2:].split()[1])
                if ppid != pm:
                    continue
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            if title.startswith(title_prefix):
                found.append(int(d))
        return found


def proc_cpu_ticks(pid):
    """utime+stime (all threads, live and exited) plus cutime+cstime (waited-for children)."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    rest = st[st.rfind(")") + 2:].split()
    return int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])


# ---------------------------------------------------------------- inotify

IN_CREATE, IN_MOVED_FROM, IN_MOVED_TO, IN_DELETE = 0x100, 0x40, 0x80, 0x200


class StatusWatcher(threading.Thread):
    """Timestamps X.ready creation and X.done appearance in archive_status."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = str(path)
        self.ready_t, self.done_t = {}, {}
        self.stop_flag = threading.Event()
        self.method = "inotify"
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, self.path.encode(),
                                                 IN_CREATE | IN_MOVED_TO) < 0:
            self.method = "polling every 20 ms"
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = -1

    def note(self, name, now):
        if name.endswith(".ready"):
            self.ready_t.setdefault(name[:-6], now)
        elif name.endswith(".done"):
            self.done_t.setdefault(name[:-5], now)

    def run(self):
        if self.fd < 0:
            while not self.stop_flag.is_set():
                now = time.monotonic()
                for e in os.scandir(self.path):
                    self.note(e.name, now)
                time.sleep(0.02)
            return
        try:
            while not self.stop_flag.is_set():
                r, _, _ = select.select([self.fd], [], [], 0.2)
                if not r:
                    continue
                now = time.monotonic()
                try:
                    buf = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    continue
                i = 0
                while i + 16 <= len(buf):
                    _wd, _mask, _cookie, ln = struct.unpack_from("iIII", buf, i)
                    name = buf[i + 16:i + 16 + ln].split(b"\0", 1)[0].decode(errors="replace")
                    self.note(name, now)
                    i += 16 + ln
        finally:
            os.close(self.fd)

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=5)

    def latencies(self):
        return [self.done_t[s] - self.ready_t[s] for s in self.ready_t if s in self.done_t]


# ---------------------------------------------------------------- harness

def timed_drain(c, sess, pids, limit_s, fail_re=FAIL_RE):
    """Starts archiving (pg_reload_conf() on the open session, the setting already made) and
    waits until no .ready file is left: (seconds, CPU seconds of each of pids, log position).
    Three log lines matching fail_re end it early."""
    os.sync()  # the backlog's dirty pages must not be written back during the timing
    cpu0 = {k: proc_cpu_ticks(p) for k, p in pids.items()}
    logpos = c.log_size()
    t0 = time.monotonic()
    sess.send("SELECT pg_reload_conf()")
    deadline = t0 + limit_s
    next_check = t0 + 0.5
    while c.ready_count() > 0:
        now = time.monotonic()
        if now > next_check:
            next_check = now + 0.5
            bad = [ln for ln in c.log_since(logpos).splitlines() if fail_re.search(ln)]
            if len(bad) >= 3:
                raise BenchError("archiving fails:\n" + "\n".join(bad[-8:]))
            if now > deadline:
                raise BenchError(f"drain did not finish in {limit_s:.0f}s, "
                                 f"{c.ready_count()} .ready left\n{c.log_tail()}")
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    cpu = {}
    for k, p in pids.items():
        try:
            cpu[k] = (proc_cpu_ticks(p) - cpu0[k]) / CLK_TCK
        except FileNotFoundError:
            cpu[k] = None  # the process died: no figure
    sess.wait("SELECT pg_reload_conf()")
    return elapsed, cpu, logpos


class Harness:
    def __init__(self, args):
        self.a = args
        self.bin = Path(args.pg_bin)
        self.work = Path(args.workdir)
        self.live = []
        self.port_i = 0
        self.pg_version = None
        self.seg_size = None
        self.gen_sql = (HERE / "gen_segment.sql").read_text()
        self.load_sql = (HERE / "load.sql").read_text()

    def next_port(self):
        self.port_i += 1
        return self.a.port_base + self.port_i % 50

    def kill_pgbackrest(self, under):
        """pgBackRest async processes started for a run: found by their config path, ended by id."""
        needle = f"--config={under}/".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if needle in cmd and cmd.split(b"\0")[0].endswith(b"pgbackrest"):
                try:
                    os.kill(int(d), signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def cleanup(self):
        for c in list(self.live):
            try:
                c.stop()
            except Exception as e:  # keep cleaning the others
                log(f"cleanup: could not stop {c.dir}: {e}")
        self.kill_pgbackrest(self.work)

    # -- per-method configuration

    def dest_dir(self, c):
        return c.dir / "archive"

    def setup_method(self, m, c):
        """Creates the cluster for method m with its archiver configured but idle."""
        conf, preload = [], None
        if m.kind == "walarch":
            preload = "walarch_ext"
            conf += ["archive_library = 'walarch_ext'", "walarch.archive_directory = ''",
                     f"walarch.copy_ahead = {'on' if m.params['copy_ahead'] else 'off'}"]
            if m.params.get("pc"):
                conf.append(f"walarch.parallel_copies = {m.params['pc']}")
        elif m.kind == "basic":
            conf += ["archive_library = 'basic_archive'", "basic_archive.archive_directory = ''"]
        else:  # cp, pgbr, dd: the shell archiver with an empty command is idle
            conf += ["archive_command = ''"]
        dest = self.dest_dir(c)
        dest.mkdir()
        chown_pg(dest)
        if m.kind == "pgbr":
            self.write_pgbr_conf(m, c)
        c.create(conf, preload)
        c.start()
        if c.h.pg_version is None:
            c.h.pg_version = c.psql("SELECT version()")
            c.h.seg_size = int(c.psql("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
        if m.kind == "walarch":
            c.psql("CREATE EXTENSION walarch_ext")
        if m.kind == "pgbr":
            run(["pgbackrest", f"--config={self.pgbr_conf(c)}", f"--stanza={STANZA}", "stanza-create"],
                as_pg=True, cwd=c.dir, timeout=120)

    def pgbr_conf(self, c):
        return c.dir / "pgbr" / "pgbackrest.conf"

    def write_pgbr_conf(self, m, c, repo=None):
        """pgBackRest's configuration for method m on cluster c; `repo`: the repo1-* lines
        (default: a repository in the cluster's directory)."""
        base = c.dir / "pgbr"
        for d in ("", "repo", "spool", "lock", "log"):
            (base / d).mkdir(exist_ok=True)
            chown_pg(base / d)
        lines = [
            "[global]",
            *(repo or [f"repo1-path={base / 'repo'}"]),
            f"spool-path={base / 'spool'}",
            f"lock-path={base / 'lock'}",
            f"log-path={base / 'log'}",
            "log-level-console=warn",
            "log-level-stderr=warn",
            "log-level-file=info",
            f"compress-type={m.params.get('ctype', 'none')}",
            f"archive-async={'y' if m.params['asynch'] else 'n'}",
        ]
        if m.params.get("clevel") is not None:
            lines.append(f"compress-level={m.params['clevel']}")
        if m.params["asynch"]:
            lines.append(f"process-max={m.params['pmax']}")
        lines += ["", f"[{STANZA}]", f"pg1-path={c.data}", f"pg1-socket-path={c.sock}",
                  f"pg1-port={c.port}", "pg1-user=postgres", ""]
        conf = self.pgbr_conf(c)
        conf.write_text("\n".join(lines))
        os.chmod(conf, 0o600)  # it may hold a secret key
        chown_pg(conf)

    def enable_sql(self, m, c):
        d = self.dest_dir(c)
        if m.kind == "walarch":
            return f"ALTER SYSTEM SET walarch.archive_directory = '{d}'"
        if m.kind == "basic":
            return f"ALTER SYSTEM SET basic_archive.archive_directory = '{d}'"
        if m.kind == "cp":
            return f"ALTER SYSTEM SET archive_command = 'test ! -f {d}/%f && cp %p {d}/%f'"
        if m.kind == "pgbr":
            return (f"ALTER SYSTEM SET archive_command = 'pgbackrest --config={self.pgbr_conf(c)} "
                    f"--stanza={STANZA} archive-push %p'")
        raise AssertionError(m.kind)

    def archived(self, m, c):
        if m.kind == "pgbr":
            root = c.dir / "pgbr" / "repo" / "archive" / STANZA
            return sum(1 for p in root.rglob("*") if PGBR_SEG_RE.match(p.name))
        return sum(1 for e in os.scandir(self.dest_dir(c)) if SEG_RE.match(e.name))

    def cpu_pids(self, m, c):
        pids = {"archiver": c.child_pids("postgres: archiver")}
        if m.kind == "walarch":
            pids["worker"] = c.child_pids("postgres: walarch_ext copy-ahead")
        return {k: v[0] for k, v in pids.items() if v}

    # -- backlog

    def make_backlog(self, c, n):
        c.psql("CREATE TABLE bench_fill (id int, pad text)")
        f = c.dir / "gen.sql"
        f.write_text(self.gen_sql * n)
        chown_pg(f)
        c.psql_file(f)
        deadline = time.monotonic() + 10
        while c.ready_count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        names = c.ready()
        if len(names) < n:
            raise BenchError(f"backlog has {len(names)} .ready segments, wanted {n}\n{c.log_tail()}")
        return names

    # -- A: drain

    def drain_run(self, m, rep):
        c = Cluster(self, f"drain-{m.key}-{rep}")
        try:
            self.setup_method(m, c)
            names = self.make_backlog(c, self.a.segments)
            nbytes = sum((c.data / "pg_wal" / s).stat().st_size for s in names)
            if m.kind == "dd":
                return self.dd_run(m, c, names, nbytes)
            sess = PsqlSession(c)
            sess.query(self.enable_sql(m, c))
            pids = self.cpu_pids(m, c)
            elapsed, cpu, logpos = timed_drain(c, sess, pids, 120 + 5 * len(names))
            extra = {}
            if m.kind == "walarch":
                row = sess.query("SELECT archived_count, copied_ahead_count, copy_ahead_failures "
                                 "FROM walarch_stats()").split("|")
                extra = {"archived_count": int(row[0]), "copied_ahead": int(row[1]),
                         "copy_ahead_failures": int(row[2])}
            sess.close()
            got = self.archived(m, c)
            if got < len(names):
                raise BenchError(f"only {got} of {len(names)} segments are in the archive")
            warnings = [ln for ln in c.log_since(logpos).splitlines() if FAIL_RE.search(ln)]
            return {"segments": len(names), "bytes": nbytes, "seconds": elapsed,
                    "cpu_s": cpu, "cpu_complete": m.kind != "pgbr" or not m.params["asynch"],
                    "log_problems": warnings[:5], **extra}
        finally:
            c.destroy()

    def dd_run(self, m, c, names, nbytes):
        c.stop("fast")
        src = c.data / "pg_wal"
        dst = self.dest_dir(c)
        os.sync()
        listing = "".join(n + "\n" for n in names)
        k = m.params["streams"]
        t0 = time.monotonic()
        run(["xargs", "-P", str(k), "-I{}", "dd", f"if={src}/{{}}", f"of={dst}/{{}}", "bs=1M",
             "conv=fsync", "status=none"], input=listing)
        elapsed = time.monotonic() - t0
        got = sum(1 for e in os.scandir(dst) if SEG_RE.match(e.name))
        if got != len(names):
            raise BenchError(f"dd copied {got} of {len(names)} files")
        return {"segments": len(names), "bytes": nbytes, "seconds": elapsed, "cpu_s": {}}

    # -- B: sustained load

    def backlog_sample(self, c):
        n, b = 0, 0
        for e in os.scandir(c.archive_status):
            if e.name.endswith(".ready"):
                n += 1
                try:
                    b += (c.data / "pg_wal" / e.name[:-6]).stat().st_size
                except FileNotFoundError:
                    pass
        return n, b

    def load_run(self, m):
        c = Cluster(self, f"load-{m.key}")
        watcher = None
        try:
            self.setup_method(m, c)
            c.psql("CREATE TABLE bench_load (aid int, n int, filler text)")
            script = c.dir / "load.sql"
            script.write_text(self.load_sql)
            chown_pg(script)
            c.psql(self.enable_sql(m, c))
            c.psql("SELECT pg_reload_conf()")
            time.sleep(1)
            logpos = c.log_size()
            lsn0 = c.psql("SELECT pg_current_wal_insert_lsn()")
            watcher = StatusWatcher(c.archive_status)
            watcher.start()
            secs = self.a.load_seconds
            cmd = ["runuser", "-u", "postgres", "--", str(self.bin / "pgbench"), "-n",
                   "-h", str(c.sock), "-p", str(c.port), "-U", "postgres",
                   "-f", str(script), "-c", "4", "-j", "2", "-T", str(secs), "postgres"]
            t0 = time.monotonic()
            pgb = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=c.dir)
            samples = []
            k = 0
            while pgb.poll() is None:
                n, b = self.backlog_sample(c)
                samples.append((round(time.monotonic() - t0, 3), n, b))
                k += 1
                time.sleep(max(0.0, t0 + k - time.monotonic()))
            t_end = time.monotonic() - t0
            out, err = pgb.communicate()
            if pgb.returncode != 0:
                raise BenchError(f"pgbench failed (exit {pgb.returncode}):\n{err.strip()[-2000:]}")
            n_end, b_end = self.backlog_sample(c)
            samples.append((round(t_end, 3), n_end, b_end))
            lsn1 = c.psql("SELECT pg_current_wal_insert_lsn()")
            wal_bytes = int(float(c.psql(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")))
            tps = re.search(r"^tps = ([0-9.]+)", out, re.M)
            # after the load: keep sampling until the backlog is gone (bounded wait)
            drained_after = None
            limit = time.monotonic() + max(120, secs)
            while time.monotonic() < limit:
                n, b = self.backlog_sample(c)
                now = time.monotonic() - t0
                samples.append((round(now, 3), n, b))
                if n == 0:
                    drained_after = max(0.0, now - t_end)
                    break
                k += 1
                time.sleep(max(0.0, t0 + k - time.monotonic()))
            time.sleep(0.3)  # let the watcher see the last .done
            watcher.stop()
            lat = watcher.latencies()
            problems = [ln for ln in c.log_since(logpos).splitlines() if FAIL_RE.search(ln)]
            return {"samples": samples, "load_end": t_end, "tps": float(tps.group(1)) if tps else None,
                    "wal_bytes": wal_bytes, "segments": len(watcher.ready_t),
                    "latencies": lat, "latency_method": watcher.method,
                    "backlog_end": n_end, "backlog_end_bytes": b_end,
                    "peak": max(s[1] for s in samples), "peak_bytes": max(s[2] for s in samples),
                    "drained_after": drained_after, "log_problems": problems[:5]}
        finally:
            if watcher is not None and watcher.is_alive():
                watcher.stop()
            c.destroy()

    # -- the whole run

    def main(self):
        a = self.a
        results = {"drain": {m.key: [] for m in METHODS}, "drain_errors": {}, "load": {},
                   "load_errors": {}}
        only = set(a.methods.split(",")) if a.methods else None
        methods = [m for m in METHODS if not only or m.key in only]
        started = datetime.datetime.now(datetime.timezone.utc)
        # pgBackRest refuses a PostgreSQL release newer than it knows (Debian 12 has 2.45,
        # which stops at 15): once seen, the other pgBackRest runs are skipped, not retried.
        unsupported = None

        def attempt(m, fn, errors):
            nonlocal unsupported
            if m.kind == "pgbr" and unsupported:
                errors.setdefault(m.key, unsupported)
                log(f"   skipped: {unsupported.splitlines()[0]}")
                return None
            try:
                return fn()
            except BenchError as e:
                msg = str(e).strip()
                log(f"   FAILED: {msg}")
                if m.kind == "pgbr" and "VersionNotSupportedError" in msg:
                    unsupported = (f"not run: {sh('pgbackrest version')} does not support "
                                   f"this PostgreSQL version\n{msg}")
                    msg = unsupported
                errors.setdefault(m.key, msg)
                return None

        for rep in range(1, a.reps + 1):
            for m in methods:
                log(f"drain rep {rep}/{a.reps}: {m.label} ({a.segments} segments)")
                r = attempt(m, lambda: self.drain_run(m, rep), results["drain_errors"])
                if r:
                    results["drain"][m.key].append(r)
                    log(f"   {r['seconds']:.2f}s, {r['bytes'] / r['seconds'] / 2**20:.0f} MiB/s")
        if a.load_seconds > 0:
            for m in methods:
                if not m.archiver:
                    continue
                log(f"sustained load {a.load_seconds}s: {m.label}")
                r = attempt(m, lambda: self.load_run(m), results["load_errors"])
                if r:
                    results["load"][m.key] = r
                    log(f"   tps {r['tps']}, WAL {r['wal_bytes'] / r['load_end'] / 2**20:.1f} MiB/s, "
                        f"peak backlog {r['peak']}, at end {r['backlog_end']}")
        finished = datetime.datetime.now(datetime.timezone.utc)
        results["started"], results["finished"] = started.isoformat(timespec="seconds"), \
            finished.isoformat(timespec="seconds")
        return methods, results


# ---------------------------------------------------------------- report

def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return None
    k = max(1, -(-p * len(v) // 100))
    return v[int(k) - 1]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def machine(h):
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    fs = " ".join(sh(f"findmnt -no SOURCE,FSTYPE,OPTIONS -T {shlex.quote(str(h.work))}").split())
    src = fs.split()[0] if fs else ""
    disk = ""
    if src.startswith("/dev/"):
        disk = sh(f"lsblk -dno NAME,SIZE,ROTA,MODEL {shlex.quote(src)} 2>/dev/null "
                  f"|| lsblk -sno NAME,SIZE,ROTA,MODEL {shlex.quote(src)} | tail -1")
        disk = " ".join(disk.split())
    lib = Path(sh(f"{h.bin}/pg_config --pkglibdir")) / "walarch_ext.so"
    libinfo = "not found"
    if lib.exists():
        dbg = sh(f"readelf -S {shlex.quote(str(lib))} | grep -c '\\.debug_info'")
        st = lib.stat()
        libinfo = (f"`{lib}`, {st.st_size / 2**20:.1f} MiB, modified "
                   f"{datetime.datetime.fromtimestamp(st.st_mtime).strftime('%Y-%m-%d %H:%M')}, "
                   + ("**has debug info: probably a debug build, not representative**"
                      if dbg not in ("", "0") else "no debug info (release build)"))
    return {
        "cpu": f"{os.cpu_count()} cores ({cpu})" if cpu else f"{os.cpu_count()} cores",
        "mem": mem,
        "virt": sh("systemd-detect-virt 2>/dev/null"),
        "kernel": sh("uname -srm"),
        "os": sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        "fs": f"`{h.work}` on {fs}" + (f" (device {disk}; ROTA is the kernel's rotational flag, often 1 for virtual disks)" if disk else ""),
        "pg": h.pg_version or "?",
        "pgbackrest": sh("pgbackrest version"),
        "walarch": libinfo,
        "loadavg": sh("cut -d' ' -f1-3 /proc/loadavg"),
    }


def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def summarize(h, methods, results):
    seg = h.seg_size or 16 * 2**20
    rows, summary = [], {}
    for m in methods:
        runs = results["drain"][m.key]
        if not runs:
            continue
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        nseg = statistics.median(r["segments"] for r in runs)
        nbytes = statistics.median(r["bytes"] for r in runs)
        tput = [r["bytes"] / r["seconds"] / 2**20 for r in runs]
        cpu = None
        if m.kind in ("walarch", "basic", "cp", "pgbr"):
            per = []
            for r in runs:
                vals = list(r["cpu_s"].values())
                if vals and None not in vals:
                    per.append(sum(vals) / r["segments"] * 1000)
            cpu = statistics.median(per) if per else None
        summary[m.key] = {"median": med, "min": min(secs), "max": max(secs), "n": len(runs),
                          "seg_s": nseg / med, "mib_s": nbytes / med / 2**20,
                          "tput_min": min(tput), "tput_max": max(tput), "cpu_ms": cpu,
                          "cpu_complete": all(r.get("cpu_complete", True) for r in runs),
                          "cpu_parts": runs[0]["cpu_s"],
                          "copied_ahead": [r.get("copied_ahead") for r in runs],
                          "segments": nseg}
    return summary


def failures(w, errors):
    """The first lines of each method's error, under a "Failures" heading."""
    if errors:
        w("Failures:\n")
        for k, msg in errors.items():
            first = "\n".join(msg.splitlines()[:6])
            w(f"- **{k}**:\n\n```\n{first}\n```\n")


def markdown(h, methods, results, summary, mach, png_name):
    a = h.a
    out = []
    w = out.append
    seg_mib = (h.seg_size or 16 * 2**20) / 2**20
    w("# walarch_ext benchmark\n")
    w("Generated by `scripts/bench.sh` (harness: `bench/walarch_bench.py`); every figure below "
      "comes from the run described here, nothing is typed in by hand.\n")
    if "debug build" in mach["walarch"]:
        w("> **Warning:** the installed `walarch_ext.so` carries debug info, so this run probably "
          "measured a debug build. Run without `WALARCH_BENCH_SKIP_INSTALL=1` to measure the "
          "release build.\n")
    w("## Machine and run\n")
    w(f"- Command: `{a.command}`")
    w(f"- Date: {results['started']} to {results['finished']} (UTC)")
    w(f"- CPU: {mach['cpu']}; memory {mach['mem']}" + (f"; virtualization: {mach['virt']}" if mach['virt'] else ""))
    w(f"- Kernel: {mach['kernel']}; {mach['os']}")
    w(f"- Archive directory, data directory and pgBackRest repo: {mach['fs']}")
    w(f"- PostgreSQL: {mach['pg']}")
    w(f"- {mach['pgbackrest']}")
    w(f"- walarch_ext: {mach['walarch']}")
    w(f"- Load average when the report was written: {mach['loadavg']} "
      "(other work on the machine during the run is not controlled)")
    w(f"- Backlog: {a.segments} segments of {seg_mib:.0f} MiB ({a.segments * seg_mib:.0f} MiB) per "
      f"drain; {a.reps} repetition(s) per method, interleaved; sustained load {a.load_seconds}s per method.\n")

    w("## A. Backlog drain\n")
    w(f"Time from `pg_reload_conf()` (enabling the archiver) until no `.ready` file is left, for a "
      f"backlog of {a.segments} segments. Median of {a.reps} run(s); spread is min–max. "
      "Throughput ratios compare median throughputs: \"vs basic_archive\" above 1 is faster than "
      "basic_archive, \"vs dd 1-stream\" is the fraction of the single-stream physical floor. "
      "CPU is per archived segment, median over runs.\n")
    basic = summary.get("basic_archive")
    dd1 = summary.get("dd1")
    w("| method | median drain (s) | spread (s) | segments/s | MiB/s | MiB/s spread | vs basic_archive | vs dd 1-stream | CPU ms/segment |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        s = summary.get(m.key)
        if not s:
            why = "not run" if results["drain_errors"].get(m.key, "").startswith("not run:") else "failed"
            w(f"| {m.label} | {why} (below) | | | | | | | |")
            continue
        vb = fmt(basic["median"] / s["median"]) + "×" if basic else "–"
        vd = fmt(dd1["median"] / s["median"]) + "×" if dd1 else "–"
        if s["cpu_ms"] is None:
            cpu = "–"
        else:
            cpu = f"{s['cpu_ms']:.0f}" + ("" if s["cpu_complete"] else " (partial)")
        w(f"| {m.label} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} | {s['seg_s']:.1f} | "
          f"{s['mib_s']:.0f} | {s['tput_min']:.0f}–{s['tput_max']:.0f} | {vb} | {vd} | {cpu} |")
    w("")
    ca = [(m.label, summary[m.key]["copied_ahead"]) for m in methods
          if m.kind == "walarch" and m.key in summary]
    if ca:
        w("Segments copied by the copy-ahead worker (rather than inline by the archiver), per run: " +
          "; ".join(f"{lbl}: {', '.join(str(x) for x in v)}" for lbl, v in ca) + ".\n")
    caf = sum(r.get("copy_ahead_failures", 0) for rs in results["drain"].values() for r in rs)
    if caf:
        w(f"The copy-ahead worker reported {caf} failed copies in all (left to the archiver).\n")
    failures(w, results["drain_errors"])

    w("## B. Sustained load\n")
    if a.load_seconds == 0:
        w("Skipped (`WALARCH_BENCH_LOAD_SECONDS=0`).\n")
    else:
        w(f"A fresh cluster per method with the archiver enabled; `pgbench -n -c 4 -j 2 -T {a.load_seconds}` "
          "running `bench/load.sql` (each transaction inserts 100 rows of about 200 bytes; the WAL "
          "rate it reached is in the table). The backlog is the number of `.ready` files, sampled every second; after the "
          "load the harness keeps sampling until it is 0 (at most max(120 s, load time)). \"Kept up\" "
          "means at most 2 segments were waiting when the load stopped. Latency is per segment, from "
          "the creation of its `.ready` file to the appearance of its `.done` file (PostgreSQL "
          "considers it archived), both timestamped from inotify events on `pg_wal/archive_status`. "
          "pgbench and the archiver share the machine's CPUs, so an archiver that needs more CPU "
          "also lowers TPS and the WAL rate: read the WAL MiB/s column with the backlog.\n")
        w("| method | TPS | WAL MiB/s | segments | peak backlog (segs / MiB) | backlog at end of load | drained after load (s) | kept up | latency p50 (ms) | latency p99 (ms) |")
        w("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
        for m in methods:
            if not m.archiver:
                continue
            r = results["load"].get(m.key)
            if not r:
                if m.key in results["load_errors"]:
                    why = "not run" if results["load_errors"][m.key].startswith("not run:") else "failed"
                    w(f"| {m.label} | {why} (below) | | | | | | | | |")
                continue
            lat = r["latencies"]
            p50, p99 = pct(lat, 50), pct(lat, 99)
            kept = "yes" if r["backlog_end"] <= 2 and r["drained_after"] is not None else "no"
            w(f"| {m.label} | {fmt(r['tps'], 0)} | {r['wal_bytes'] / r['load_end'] / 2**20:.1f} | "
              f"{r['segments']} | {r['peak']} / {r['peak_bytes'] / 2**20:.0f} | {r['backlog_end']} | "
              f"{fmt(r['drained_after'], 1) if r['drained_after'] is not None else 'not drained'} | {kept} | "
              f"{fmt(p50 * 1000 if p50 is not None else None, 0)} | "
              f"{fmt(p99 * 1000 if p99 is not None else None, 0)} (n={len(lat)}) |")
        w("")
        meths = {r["latency_method"] for r in results["load"].values()}
        if meths and meths != {"inotify"}:
            w(f"Latency timestamps were taken by: {', '.join(sorted(meths))}.\n")
        failures(w, results["load_errors"])

    w(f"![drain throughput and backlog under load]({png_name})\n")

    w("## How it is measured\n")
    w("- **Backlog.** Each drain run uses a fresh cluster (`initdb`, default 16 MiB segments, "
      "`max_wal_size = 64GB`, `checkpoint_timeout = 1h`, so no checkpoint recycles anything) and a "
      "fresh, empty archive directory. The archiver is configured but idle: "
      "`walarch.archive_directory = ''`, `basic_archive.archive_directory = ''` or "
      "`archive_command = ''`. `bench/gen_segment.sql` then completes exactly one segment of real "
      "WAL (batches of heap INSERTs up to just before the segment end, then `pg_switch_wal()`), "
      f"repeated {a.segments} times. The harness checks that the `.ready` files are there, runs "
      "`sync`, opens a psql session, runs `ALTER SYSTEM SET <setting> = <dir or command>`, "
      "starts the clock and sends `SELECT pg_reload_conf()` on that session, then polls "
      "`pg_wal/archive_status` every 10 ms until no `.ready` file is left. It then checks that "
      "every segment is in the archive and destroys the cluster.")
    w("- **Methods.** walarch_ext runs with `shared_preload_libraries = 'walarch_ext'` "
      "(copy-ahead worker on or off, `walarch.parallel_copies` as named); the other methods run "
      "without it. basic_archive and walarch_ext fsync each file and its directory; "
      "`test ! -f DIR/%f && cp %p DIR/%f` does not fsync at all, so it is not durable and is "
      "shown only as a reference. pgBackRest (repo on the same file system, `compress-type=none`) "
      "is set up with its own config file, repo, spool, lock and log paths, `stanza-create` "
      "against the running cluster, and `archive_command = 'pgbackrest --config=... "
      "--stanza=bench archive-push %p'`; async mode adds `archive-async=y`, `spool-path` and "
      "`process-max`.")
    w("- **Physical floor.** The same kind of backlog (built the same way, cluster then stopped) "
      "is copied from `pg_wal` with `dd bs=1M conv=fsync` into an empty directory, one file at "
      "a time (`xargs -P1`) and four at a time (`xargs -P4`). No directory fsync.")
    w("- **Page cache.** In every method the segments were just written, so reads come mostly "
      "from the page cache; the writes go to disk through each method's fsyncs.")
    w("- **CPU.** `utime+stime+cutime+cstime` from `/proc/PID/stat` of the archiver (children it "
      "waited for, such as the shell, `cp` or a synchronous `pgbackrest`, are included) and, for "
      "walarch_ext, of the copy-ahead worker (its copy threads are part of its process), sampled "
      "right before the reload and right after the drain, divided by the number of segments. "
      f"Resolution {1000 / CLK_TCK:.0f} ms. pgBackRest async is marked partial: its archive-push "
      "server detaches from the archiver and is not counted.")
    w("- **Repetitions.** Rep 1 of every method, then rep 2, and so on.\n")

    w("## Every run\n")
    w("| method | rep | segments | drain (s) | MiB/s | CPU (s) by process |")
    w("|---|---:|---:|---:|---:|---|")
    for m in methods:
        for i, r in enumerate(results["drain"][m.key], 1):
            cpu = ", ".join(f"{k} {fmt(v)}" for k, v in r["cpu_s"].items()) or "–"
            w(f"| {m.label} | {i} | {r['segments']} | {r['seconds']:.3f} | "
              f"{r['bytes'] / r['seconds'] / 2**20:.0f} | {cpu} |")
    w("")
    probs = [(k, r["log_problems"]) for k, rs in results["drain"].items() for r in rs if r.get("log_problems")]
    probs += [(k, r["log_problems"]) for k, r in results["load"].items() if r.get("log_problems")]
    if probs:
        w("Server log lines that look like problems (first few per run):\n")
        w("```")
        for k, lines in probs:
            for ln in lines:
                w(f"{k}: {ln}")
        w("```\n")
    return "\n".join(out)


def arguments(doc, port_base):
    """The arguments both suites take; a suite adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-bin", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--port-base", type=int, default=port_base)
    ap.add_argument("--methods", default="", help="comma-separated method keys (default: all)")
    ap.add_argument("--command", default="bash scripts/bench.sh")
    return ap


def exit_on_signals():
    """SIGTERM and SIGHUP end the run through the cleanup (finally) blocks."""
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


def main():
    ap = arguments(__doc__, 27500)
    ap.add_argument("--load-seconds", type=int, default=60)
    a = ap.parse_args()
    h = Harness(a)
    exit_on_signals()
    try:
        methods, results = h.main()
    finally:
        h.cleanup()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(h, methods, results)
    mach = machine(h)
    png = out / "benchmark.png"
    md = markdown(h, methods, results, summary, mach, png.name)
    (out / "benchmark.md").write_text(md)
    # the plot's data, for bench/plot.py
    data = {"methods": [{"key": m.key, "label": m.label, "kind": m.kind} for m in methods],
            "summary": summary,
            "load": {k: {"samples": v["samples"], "load_end": v["load_end"]}
                     for k, v in results["load"].items()},
            "segments": a.segments, "reps": a.reps, "pg": h.pg_version}
    plotdata = h.work / "plot.json"
    plotdata.write_text(json.dumps(data))
    p = subprocess.run([sys.executable, str(HERE / "plot.py"), str(plotdata), str(png)])
    if p.returncode != 0:
        raise SystemExit("plotting failed")
    log(f"wrote {out / 'benchmark.md'} and {png}")
    # the tables, on stdout
    text = md.split("## How it is measured")[0]
    print(text)
    errors = {**results["drain_errors"], **results["load_errors"]}
    real = [k for k, msg in errors.items() if not msg.startswith("not run:")]
    if errors:
        log(f"methods that failed or were not run: {', '.join(sorted(errors))} (see the report)")
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main())
