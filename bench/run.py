#!/usr/bin/python3
"""walrelay benchmarks, each compared in the same run with what a user would use instead.

  copy:  initial copy of a table of N rows (mixed types) into the `null` destination and
         into `sqlite` once per --copy-connections value ([sync]
         max_copy_connections_per_table: the parallel copy's source connections), against
         `psql -c "COPY t TO STDOUT" > /dev/null`.
  drain: a backlog of N changes (inserts, updates, deletes in 1000-row transactions)
         drained into `null` and into `sqlite` by walrelay, against `pg_recvlogical`
         (pgoutput, proto_version=1) draining the same backlog from another slot;
         --drain-rounds (default 3) rounds of (pg_recvlogical, walrelay -> null) in turn,
         each on its own slot, and the median ratios; then walrelay -> sqlite once, checked
         afterwards (row count and sum).
  scale: --scale-tables tables (default 500) of --scale-rows rows (default 10,000) in one
         publication, copied into `sqlite` with the default [sync] settings: the time until
         every table is ready, the most replication slots and walrelay-sync processes at
         once (sampled), the peak RSS of the supervisor, the apply worker and the largest
         sync worker, and how long `walrelay status --json` takes with every table listed.
         The CPU seconds of walrelay's apply worker (each destination) and of its walsender backend
         (/proc/PID/stat, sampled) are reported per change, and those of pg_recvlogical
         (getrusage) and of its walsender: goal (issue 11) walrelay >= 1.0x
         pg_recvlogical's rate with the apply worker's CPU <= 35% of its walsender's.
  bigtx: ONE transaction updating every row of a --bigtx-rows table (default 2,000,000),
         drained by walrelay into `sqlite` and into `null` (each pipeline copied the table
         first, then stopped, so all of them face the same backlog), against
         `pg_recvlogical` on the same backlog; reports the time and the peak RSS of each
         walrelay process (the goal: bounded memory, <= 64 MB per process, for any size).
         Then "live": the pipeline runs while the UPDATE runs, end to end from the start
         of the UPDATE to confirmed_flush >= its commit, with [source] streaming = 0
         (protocol 1: the server spills the transaction and sends it at its commit) and
         = 1 (streamed, written into sqlite as it arrives); goal: streamed <= 0.6x.
  latency: pgbench -R single-row INSERTs (a clock_timestamp() column) at 2,000/s and
         5,000/s for --latency-seconds each, into walrelay -> sqlite and a native
         subscription (a second database of the same cluster) side by side in the same
         run; a row's latency is from its timestamp to the moment a poller (every 2 ms,
         one process per side, reading only the rows that came since its last poll)
         first sees it on each side; p50/p99. pgbench runs 4 clients at 2,000/s and 16
         above (4 could not go beyond ~2,000 commits/s here); the table's "rows" says
         how many it did commit in the time. Goal: walrelay p99 <= 20 ms at 2,000/s,
         <= 50 ms at 5,000/s, better than native at both.

Times are wall clock, best of --repeat runs for the baselines. walrelay's times
include process start, slot creation and the handoff (what a user waits for); the copy
worker's own figure from its log line is reported beside it. Peak RSS (VmHWM) of every
walrelay process is sampled during each run.

Usage: bench/run.py [--rows 1000000] [--changes 1000000] [--bigtx-rows 2000000] [--build build]
                    [--copy-connections 1,2] [--scale-tables 500] [--scale-rows 10000]
                    [--latency-seconds 20] [--drain-rounds 3] [--only copy|drain|bigtx|bigtx-live|latency|scale]
"""
import argparse
import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgtmp import TmpPostgres, PGBIN  # noqa: E402

import psycopg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Walrelay:
    def __init__(self, build, pg, publication, dest, name, conf=None):
        self.bin = os.path.join(ROOT, build, "walrelay")
        self.dir = tempfile.mkdtemp(prefix=f"walrelay-bench-{name}-")
        self.pg = pg
        self.name = name
        subprocess.run([self.bin, "init", self.dir, "--source", pg.conninfo, "--publication",
                        publication, "--destination", dest, "--name", name], check=True,
                       stdout=subprocess.DEVNULL)
        for (section, key), value in (conf or {}).items():
            set_conf(os.path.join(self.dir, "walrelay.conf"), section, key, value)
        self.proc = None
        self.log = os.path.join(self.dir, "run.log")
        self.peak = {}
        self.nsync = 0

    def start(self):
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen([self.bin, "run", self.dir], stdout=self.logf,
                                     stderr=subprocess.STDOUT)

    def status(self):
        r = subprocess.run([self.bin, "status", self.dir, "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def sample_rss(self):
        pids = [("supervisor", self.proc.pid)]
        try:
            for c in open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split():
                try:
                    exe = os.readlink(f"/proc/{c}/exe")
                except OSError:
                    continue
                pids.append((os.path.basename(exe), int(c)))
        except OSError:
            return
        self.nsync = sum(1 for kind, _ in pids if kind == "walrelay-sync")
        for kind, pid in pids:
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmHWM:"):
                        kb = int(line.split()[1])
                        self.peak[kind] = max(self.peak.get(kind, 0), kb)
            except OSError:
                pass

    def wait(self, pred, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sample_rss()
            if self.proc.poll() is not None:
                raise RuntimeError(f"walrelay exited ({self.proc.returncode}) waiting for {what}; "
                                   f"log: {open(self.log).read()[-3000:]}")
            if pred():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timeout waiting for {what}; log: {open(self.log).read()[-3000:]}")

    def child_pids(self):
        pids = {}
        try:
            for c in open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split():
                try:
                    pids[os.path.basename(os.readlink(f"/proc/{c}/exe"))] = int(c)
                except OSError:
                    pass
        except OSError:
            pass
        return pids

    def all_ready(self):
        """Every table of the pipeline ready, read from DIR/state.db: `walrelay status`
        is a process start (about 23 ms of CPU: 49 shared libraries to relocate); polled
        every 50 ms it was 12% of perf's samples over a copy (bench/RESULTS.md)."""
        path = os.path.join(self.dir, "state.db")
        if not os.path.exists(path):  # not created yet, or a PostgreSQL state store
            st = self.status()
            return bool(st and st["tables"] and all(t["phase"] == "ready" for t in st["tables"]))
        try:
            c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
            try:
                phases = [r[0] for r in c.execute("SELECT phase FROM tables")]
            finally:
                c.close()
        except sqlite3.Error:
            return False
        return bool(phases) and all(ph == "ready" for ph in phases)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            subprocess.run([self.bin, "stop", self.dir], stdout=subprocess.DEVNULL)
            self.proc.wait(timeout=120)
        self.logf.close()

    def copy_seconds_from_log(self):
        m = re.findall(r"copy finished.*? seconds=([0-9.]+)", open(self.log).read())
        return float(m[-1]) if m else None

    def copy_cpu_from_log(self):
        m = re.findall(r"copy finished.*?cpu_seconds=([0-9.]+)", open(self.log).read())
        return float(m[-1]) if m else None

    def cleanup(self):
        with psycopg.connect(self.pg.conninfo, autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE slot_name LIKE %s AND NOT active", (f"walrelay_{self.name}%",))
        shutil.rmtree(self.dir, ignore_errors=True)


def set_conf(path, section, key, value):
    """Sets key = value in [section] of a walrelay.conf (added when absent)."""
    lines = open(path).read().split("\n")
    out, cur, done = [], None, False
    for line in lines:
        st = line.strip()
        if st.startswith("[") and st.endswith("]"):
            if cur == section and not done:
                out.append(f"{key} = {value}")
                done = True
            cur = st[1:-1]
        elif cur == section and re.match(rf"[#;]?\s*{re.escape(key)}\s*=", st):
            if not done:
                out.append(f"{key} = {value}")
                done = True
            continue
        out.append(line)
    if not done:
        if cur != section:
            out.append(f"[{section}]")
        out.append(f"{key} = {value}")
    open(path, "w").write("\n".join(out) + "\n")


def timed(cmd, **kw):
    t = time.monotonic()
    subprocess.run(cmd, check=True, **kw)
    return time.monotonic() - t


def timed_cpu(cmd):
    """Runs cmd; returns (seconds, peak RSS kB, CPU seconds user+system) of that process."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    dt = time.monotonic() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} exited with {os.waitstatus_to_exitcode(status)}")
    return dt, ru.ru_maxrss, ru.ru_utime + ru.ru_stime


def timed_rss(cmd):
    """Runs cmd; returns (seconds, peak RSS in kB) of that process."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    dt = time.monotonic() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
    return dt, ru.ru_maxrss


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / TICK


class CpuWatch(threading.Thread):
    """Samples the CPU seconds of a slot's walsender (active_pid) and of other pids every
    50 ms until stopped; keeps the last value seen of each (a process that exits keeps its
    last sample)."""

    def __init__(self, pg, slot, pids_fn=None):
        super().__init__(daemon=True)
        self.pg, self.slot, self.pids_fn = pg, slot, pids_fn
        self.pids, self.last = {}, {}
        self.ev = threading.Event()

    def run(self):
        with psycopg.connect(self.pg.conninfo, autocommit=True) as c:
            while not self.ev.is_set():
                if "walsender" not in self.pids:
                    r = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                  (self.slot,)).fetchone()
                    if r and r[0]:
                        self.pids["walsender"] = r[0]
                if self.pids_fn:
                    for k, v in self.pids_fn().items():
                        self.pids.setdefault(k, v)
                for k, pid in self.pids.items():
                    v = cpu_seconds(pid)
                    if v is not None:
                        self.last[k] = v
                time.sleep(0.05)

    def stop(self):
        self.ev.set()
        self.join(10)
        return self.last


def mb(kb):
    return f"{kb / 1024:.0f}"


def bench_copy(pg, args, out):
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE bench_copy (id bigint PRIMARY KEY, qty int, price numeric(12,2), "
                  "name text, created timestamptz, active bool)")
        c.execute("INSERT INTO bench_copy SELECT g, g %% 1000, (g %% 100000) / 100.0, "
                  "'name-' || g, '2026-01-01'::timestamptz + g * interval '1 second', g %% 2 = 0 "
                  "FROM generate_series(1, %s) g", (args.rows,))
        c.execute("VACUUM ANALYZE bench_copy")
        c.execute("CREATE PUBLICATION pub_copy FOR TABLE bench_copy")
        size = c.execute("SELECT pg_size_pretty(pg_table_size('bench_copy'))").fetchone()[0]
    psql = [f"{PGBIN}/psql", pg.conninfo, "-X", "-q", "-c", "COPY bench_copy TO STDOUT"]
    base = min(timed(psql, stdout=subprocess.DEVNULL) for _ in range(args.repeat))
    out.append(f"\n### Copy of {args.rows:,} rows ({size}: bigint, int, numeric, text, timestamptz, bool)\n")
    out.append("| what | seconds | rows/s | ratio to COPY | worker copy s (CPU s) | peak RSS MB (supervisor/apply/sync) |")
    out.append("|---|---|---|---|---|---|")
    out.append(f"| `psql -c \"COPY ... TO STDOUT\" > /dev/null` (best of {args.repeat}) | {base:.2f} | "
               f"{args.rows / base:,.0f} | 1.00 | | |")
    runs = [("null", None)] + [("sqlite", c) for c in args.copy_connections.split(",")]
    for dest, conns in runs:
        conf = {("sync", "max_copy_connections_per_table"): conns} if conns else None
        w = Walrelay(args.build, pg, "pub_copy", dest, f"copy_{dest}{conns or ''}", conf)
        try:
            t0 = time.monotonic()
            w.start()
            w.wait(w.all_ready, 1800, "table ready")
            dt = time.monotonic() - t0
            w.stop()
            ws = w.copy_seconds_from_log()
            wc = w.copy_cpu_from_log()
            p = w.peak
            label = f"{dest}, {conns} connection{'s' if conns != '1' else ''}" if conns else dest
            out.append(f"| walrelay → {label} (run until ready) | {dt:.2f} | {args.rows / dt:,.0f} | "
                       f"{dt / base:.2f} | {ws if ws is not None else '?'}{f' ({wc:.2f})' if wc is not None else ''} | "
                       f"{mb(p.get('supervisor', 0))}/{mb(p.get('walrelay-apply', 0))}/{mb(p.get('walrelay-sync', 0))} |")
        finally:
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()
    print("\n".join(out[-(3 + len(runs)):]), flush=True)


def bench_drain(pg, args, out):
    """--drain-rounds rounds of (pg_recvlogical, walrelay -> null) on the same backlog, each
    on its own slot, in turn, then walrelay -> sqlite once: a machine that speeds up or
    slows down during the run moves both sides of a round's ratio alike."""
    rounds = max(1, args.drain_rounds)
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE bench_drain (id bigint PRIMARY KEY, v int, t text)")
        c.execute("CREATE PUBLICATION pub_drain FOR TABLE bench_drain")
    nulls = [Walrelay(args.build, pg, "pub_drain", "null",
                      "drain_null" + (f"_r{r}" if rounds > 1 else "")) for r in range(1, rounds + 1)]
    sq = Walrelay(args.build, pg, "pub_drain", "sqlite", "drain_sqlite")
    pipes = nulls + [sq]
    try:
        # each pipeline copies the (empty) table, then stops: its slot waits before the backlog
        for w in pipes:
            w.start()
            w.wait(w.all_ready, 300, "table ready")
            w.stop()
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            for r in range(1, rounds + 1):
                c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"bench_recv_{r}",))
            n = args.changes
            ins, upd = n // 2, n // 4
            dele = n - ins - upd
            step = 1000
            for lo in range(1, ins + 1, step):
                c.execute("INSERT INTO bench_drain SELECT g, g, 'row-' || g FROM generate_series(%s::bigint, %s::bigint) g",
                          (lo, min(lo + step - 1, ins)))
            for lo in range(1, upd + 1, step):
                c.execute("UPDATE bench_drain SET v = v + 1 WHERE id BETWEEN %s::bigint AND %s::bigint", (lo, min(lo + step - 1, upd)))
            for lo in range(1, dele + 1, step):
                c.execute("DELETE FROM bench_drain WHERE id BETWEEN %s::bigint AND %s::bigint", (lo, min(lo + step - 1, dele)))
            endpos = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            c.execute("CHECKPOINT")
        n = args.changes
        out.append(f"\n### Drain of a {args.changes:,}-change backlog (½ inserts, ¼ updates, ¼ deletes; 1000-row transactions)"
                   f"{f'; {rounds} rounds of (pg_recvlogical, walrelay → null) in turn, each on its own slot' if rounds > 1 else ''}\n")
        out.append("| round | what | seconds | changes/s | ratio to pg_recvlogical (time) | CPU s: consumer / its walsender | "
                   "consumer CPU µs per change | consumer CPU / walsender CPU | peak RSS MB (supervisor/apply) |")
        out.append("|---|---|---|---|---|---|---|---|---|")

        def walrelay_row(w, rnd, base):
            slot = f"walrelay_{w.name}"
            w.peak = {}
            t0 = time.monotonic()
            w.start()
            watch = CpuWatch(pg, slot, lambda: w.child_pids())
            watch.start()
            w.wait(lambda: slot_flushed(pg, slot, endpos), 1800, "slot confirmed past the backlog")
            dt = time.monotonic() - t0
            cpu = watch.stop()
            w.stop()
            p = w.peak
            wr_ws, wr_apply = cpu.get("walsender", 0.0), cpu.get("walrelay-apply", 0.0)
            dest = "null" if w in nulls else "sqlite"
            out.append(f"| {rnd} | walrelay → {dest} (until confirmed_flush ≥ end) | {dt:.2f} | {n / dt:,.0f} | "
                       f"{dt / base:.2f} | {wr_apply:.2f} / {wr_ws:.2f} | {wr_apply * 1e6 / n:.2f} | "
                       f"{(wr_apply / wr_ws if wr_ws else float('nan')):.0%} | "
                       f"{mb(p.get('supervisor', 0))}/{mb(p.get('walrelay-apply', 0))} |")
            print(out[-1], flush=True)
            return dt, (wr_apply / wr_ws if wr_ws else float("nan"))

        ratios, cpus = [], []
        base = None
        for r in range(1, rounds + 1):
            recv = [f"{PGBIN}/pg_recvlogical", "-d", pg.conninfo, "--slot", f"bench_recv_{r}", "--start",
                    "--endpos", endpos, "-o", "proto_version=1", "-o", "publication_names=pub_drain",
                    "--no-loop", "-f", "/dev/null"]
            watch = CpuWatch(pg, f"bench_recv_{r}")
            watch.start()
            base, _, recv_cpu = timed_cpu(recv)
            recv_ws = watch.stop().get("walsender", 0.0)
            out.append(f"| {r} | `pg_recvlogical` pgoutput proto 1 → /dev/null | {base:.2f} | {n / base:,.0f} | 1.00 | "
                       f"{recv_cpu:.2f} / {recv_ws:.2f} | {recv_cpu * 1e6 / n:.2f} | "
                       f"{(recv_cpu / recv_ws if recv_ws else float('nan')):.0%} | |")
            print(out[-1], flush=True)
            dt, cr = walrelay_row(nulls[r - 1], r, base)
            ratios.append(dt / base)
            cpus.append(cr)
        walrelay_row(sq, rounds, base)
        if rounds > 1:
            med = sorted(ratios)[len(ratios) // 2]
            medc = sorted(cpus)[len(cpus) // 2]
            out.append(f"\nwalrelay → null, median over {rounds} rounds: time ratio to pg_recvlogical "
                       f"**{med:.2f}** ({', '.join(f'{x:.2f}' for x in ratios)}; ≤ 1.00 is at least its rate), "
                       f"apply CPU / walsender CPU **{medc:.0%}** ({', '.join(f'{x:.0%}' for x in cpus)})")
        d = sqlite3.connect(os.path.join(sq.dir, "dest.db"))
        got = d.execute("SELECT count(*), sum(v) FROM bench_drain").fetchone()
        d.close()
        keep = range(dele + 1, ins + 1)
        want = (len(keep), sum(g + (1 if g <= upd else 0) for g in keep))
        out.append(f"\nsqlite destination after the drain (rows, sum(v)): {tuple(got)}, expected {want}: "
                   f"{'equal' if tuple(got) == want else 'DIFFERENT'}")
        if tuple(got) != want:
            raise RuntimeError(f"drain: the sqlite destination is wrong: {tuple(got)} != {want}")
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            for r in range(1, rounds + 1):
                c.execute("SELECT pg_drop_replication_slot(%s)", (f"bench_recv_{r}",))
    finally:
        for w in pipes:
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()
    print("\n".join(out[-(6 + 2 * rounds):]), flush=True)


def bench_bigtx(pg, args, out):
    n = args.bigtx_rows
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE bench_bigtx (id bigint PRIMARY KEY, v int NOT NULL, t text)")
        c.execute("INSERT INTO bench_bigtx SELECT g, g %% 1000, 'row ' || g "
                  "FROM generate_series(1, %s) g", (n,))
        c.execute("VACUUM ANALYZE bench_bigtx")
        c.execute("CREATE PUBLICATION pub_bigtx FOR TABLE bench_bigtx")
    pipes = [Walrelay(args.build, pg, "pub_bigtx", dest, f"bigtx_{dest}") for dest in ("sqlite", "null")]
    copy_peak = {}
    try:
        # 1. each pipeline copies the table, then stops: its slot waits before the update
        for w in pipes:
            w.start()
            w.wait(w.all_ready, 1800, "table ready")
            w.stop()
            copy_peak[w.name] = dict(w.peak)
        # 2. the backlog: one transaction
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            c.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
            t = time.monotonic()
            c.execute("UPDATE bench_bigtx SET v = v + 1, t = 'updated ' || id")
            update_s = time.monotonic() - t
            endpos = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            wal = c.execute("SELECT pg_size_pretty(%s::pg_lsn - restart_lsn) FROM pg_replication_slots "
                            "WHERE slot_name = 'bench_recv'", (endpos,)).fetchone()[0]
            c.execute("CHECKPOINT")
        recv = [f"{PGBIN}/pg_recvlogical", "-d", pg.conninfo, "--slot", "bench_recv", "--start",
                "--endpos", endpos, "-o", "proto_version=1", "-o", "publication_names=pub_bigtx",
                "--no-loop", "-f", "/dev/null"]
        base, base_rss = timed_rss(recv)
        out.append(f"\n### One transaction updating {n:,} rows (UPDATE took {update_s:.1f} s, {wal} of WAL)\n")
        out.append("| what | seconds | rows/s | ratio to pg_recvlogical | peak RSS MB "
                   "(supervisor/apply) | total MB | copy before: peak RSS MB (supervisor/apply/sync) |")
        out.append("|---|---|---|---|---|---|---|")
        out.append(f"| `pg_recvlogical` pgoutput proto 1 → /dev/null | {base:.2f} | {n / base:,.0f} | "
                   f"1.00 | {mb(base_rss)} (pg_recvlogical) | | |")
        # 3. each walrelay pipeline drains it
        for w in pipes:
            slot = f"walrelay_{w.name}"

            def flushed():
                return slot_flushed(pg, slot, endpos)
            w.peak = {}
            t0 = time.monotonic()
            w.start()
            w.wait(flushed, 3600, "slot confirmed past the transaction")
            dt = time.monotonic() - t0
            w.sample_rss()
            w.stop()
            p, cp = w.peak, copy_peak[w.name]
            dest = w.name.split("_", 1)[1]
            out.append(f"| walrelay → {dest} (start until confirmed_flush ≥ end) | {dt:.2f} | {n / dt:,.0f} | "
                       f"{dt / base:.2f} | {mb(p.get('supervisor', 0))}/{mb(p.get('walrelay-apply', 0))} | "
                       f"{mb(sum(p.values()))} | {mb(cp.get('supervisor', 0))}/{mb(cp.get('walrelay-apply', 0))}/"
                       f"{mb(cp.get('walrelay-sync', 0))} |")
        # the sqlite destination holds the updated rows
        d = sqlite3.connect(os.path.join(pipes[0].dir, "dest.db"))
        got = tuple(d.execute("SELECT count(*), sum(v), sum(t = 'updated ' || id) FROM bench_bigtx").fetchone())
        d.close()
        want = (n, sum(g % 1000 + 1 for g in range(1, n + 1)), n)
        out.append(f"\nsqlite destination after the drain (rows, sum(v), updated rows): {got}, expected {want}: "
                   f"{'equal' if got == want else 'DIFFERENT'}")
        if got != want:
            raise RuntimeError(f"bigtx: the sqlite destination is wrong: {got} != {want}")
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot('bench_recv')")
    finally:
        for w in pipes:
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()
    print("\n".join(out[-8:]), flush=True)


def bench_scale(pg, args, out):
    n, rows = args.scale_tables, args.scale_rows
    t = time.monotonic()
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("DO $$ BEGIN FOR i IN 1..%s LOOP EXECUTE format("
                  "'CREATE TABLE scale_%%s (id bigint PRIMARY KEY, v int NOT NULL, t text)', i); "
                  "EXECUTE format('INSERT INTO scale_%%s SELECT g, g %%%% 1000, ''row '' || g "
                  "FROM generate_series(1, %s) g', i); END LOOP; END $$" % (n, rows))
        c.execute("CREATE PUBLICATION pub_scale FOR TABLES IN SCHEMA public")
        c.execute("VACUUM ANALYZE")
        size = c.execute("SELECT pg_size_pretty(sum(pg_table_size(relid))) FROM "
                         "pg_get_publication_tables('pub_scale')").fetchone()[0]
    made = time.monotonic() - t
    w = Walrelay(args.build, pg, "pub_scale", "sqlite", "scale")
    slots_max = sync_max = 0
    try:
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            def ready():
                nonlocal slots_max, sync_max
                slots_max = max(slots_max, c.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE "
                    "'walrelay_scale%%'").fetchone()[0])
                sync_max = max(sync_max, w.nsync)
                st = w.status()
                return bool(st and len(st["tables"]) == n and
                            all(x["phase"] == "ready" for x in st["tables"]))
            t0 = time.monotonic()
            w.start()
            w.wait(ready, 7200, f"{n} tables ready")
            dt = time.monotonic() - t0
        t1 = time.monotonic()
        st = w.status()
        status_s = time.monotonic() - t1
        w.sample_rss()
        w.stop()
        p = w.peak
        d = sqlite3.connect(os.path.join(w.dir, "dest.db"))
        got = sum(d.execute(f"SELECT count(*) FROM scale_{i}").fetchone()[0] for i in range(1, n + 1))
        d.close()
        if got != n * rows:
            raise RuntimeError(f"scale: the destination holds {got} rows, expected {n * rows}")
        out.append(f"\n### {n:,} tables of {rows:,} rows ({size} in all; made in {made:.0f} s), "
                   f"into sqlite, default [sync] settings\n")
        out.append("| what | value |")
        out.append("|---|---|")
        out.append(f"| time from `walrelay run` until every table is ready | {dt:.1f} s "
                   f"({n / dt:.1f} tables/s, {n * rows / dt:,.0f} rows/s) |")
        out.append(f"| replication slots of the pipeline at once (most sampled) | {slots_max} |")
        out.append(f"| walrelay-sync processes at once (most sampled) | {sync_max} |")
        out.append(f"| peak RSS MB: supervisor / apply / largest sync | {mb(p.get('supervisor', 0))} / "
                   f"{mb(p.get('walrelay-apply', 0))} / {mb(p.get('walrelay-sync', 0))} |")
        out.append(f"| `walrelay status --json` with {len(st['tables'])} tables | {status_s:.2f} s |")
        out.append(f"| rows in the destination | {got:,} (expected {n * rows:,}) |")
    finally:
        w.stop() if w.proc and w.proc.poll() is None else None
        w.cleanup()
    print("\n".join(out[-9:]), flush=True)


def insert_lsn(c):
    return c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]


_poll_conns = {}


def slot_flushed(pg, slot, endpos):
    """The slot's confirmed_flush at or past endpos, on one connection kept per server: a
    new connection every 50 ms (a backend forked, authenticated) took CPU from the
    pipeline being measured."""
    c = _poll_conns.get(pg.conninfo)
    if c is None or c.closed:
        c = _poll_conns[pg.conninfo] = psycopg.connect(pg.conninfo, autocommit=True)
    try:
        r = c.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                      "WHERE slot_name = %s", (endpos, slot)).fetchone()
    except psycopg.OperationalError:
        c.close()
        raise
    return bool(r and r[0])


def live_table(pg, n):
    """bench_live (n rows) in publication pub_live: the table of the live UPDATE
    (bench_bigtx_live here, bench/bigtx_cpu.py)."""
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE bench_live (id bigint PRIMARY KEY, v int NOT NULL, t text)")
        c.execute("INSERT INTO bench_live SELECT g, g %% 1000, 'row ' || g "
                  "FROM generate_series(1, %s) g", (n,))
        c.execute("VACUUM ANALYZE bench_live")
        c.execute("CREATE PUBLICATION pub_live FOR TABLE bench_live")


def bench_bigtx_live(pg, args, out):
    """The UPDATE of every row while the pipeline runs: protocol 1 vs streamed."""
    n = args.bigtx_rows
    live_table(pg, n)
    out.append(f"\n### Live: one UPDATE of {n:,} rows while the pipeline runs (sqlite), end to end\n")
    out.append("| [source] streaming | UPDATE s | end to end s (UPDATE start → confirmed_flush ≥ commit) | "
               "after the UPDATE returned s | peak RSS MB (supervisor/apply) | sqlite equal |")
    out.append("|---|---|---|---|---|---|")
    res = {}
    for streaming in ("0", "1"):
        w = Walrelay(args.build, pg, "pub_live", "sqlite", f"live_streaming_{streaming}",
                     conf={("source", "streaming"): streaming})
        try:
            w.start()
            w.wait(w.all_ready, 1800, "table ready")
            w.peak = {}
            with psycopg.connect(pg.conninfo, autocommit=True) as c:
                k = c.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
                t0 = time.monotonic()
                c.execute("UPDATE bench_live SET v = v + 1, t = 'updated ' || id")
                upd = time.monotonic() - t0
                endpos = insert_lsn(c)
                want = tuple(c.execute("SELECT count(*), sum(v)::bigint FROM bench_live").fetchone())
            w.wait(lambda: slot_flushed(pg, f"walrelay_{w.name}", endpos), 3600, "flushed past the UPDATE")
            dt = time.monotonic() - t0
            w.sample_rss()
            p = w.peak
            d = sqlite3.connect(os.path.join(w.dir, "dest.db"))
            got = tuple(d.execute("SELECT count(*), sum(v) FROM bench_live").fetchone())
            d.close()
            res[streaming] = dt
            out.append(f"| {streaming} | {upd:.1f} | {dt:.2f} | {dt - upd:.2f} | "
                       f"{mb(p.get('supervisor', 0))}/{mb(p.get('walrelay-apply', 0))} | "
                       f"{'equal' if got == want else f'DIFFERENT {got} != {want}'} |")
            w.stop()
            del k
        finally:
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()
    out.append(f"\nstreamed / protocol 1 end to end: {res['1'] / res['0']:.2f} (goal <= 0.6)")
    print("\n".join(out[-6:]), flush=True)


class Poller:
    """Records when each new row (id > start) first becomes visible, as now - ts in ms.
    Rows commit slightly out of id order (4 pgbench clients): every poll reads the ids
    above (highest seen - WINDOW) and keeps a set of those seen. Each poller is a process
    of its own, so that one poller's fetches never hold the other's up on the GIL (with
    two threads and a window of 2000 rows, each poll waited for the other's)."""

    WINDOW = 500  # 100 ms of out-of-order commits at 5,000/s; a row missed shows in "seen"

    def __init__(self, query, connect, start):
        ctx = multiprocessing.get_context("fork")
        self.query, self.connect, self.start_id = query, connect, start
        self.count = ctx.Value("q", 0)
        self.ev = ctx.Event()
        self.rx, self.tx = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=self._run, daemon=True)
        self.lat = []

    def start(self):
        self.proc.start()

    def seen_count(self):
        return self.count.value

    def _run(self):
        conn = self.connect()
        lat, seen, last, contig = [], set(), self.start_id, self.start_id
        while not self.ev.is_set():
            # from the end of the ids seen without a gap: each poll reads only the rows
            # that came since (and any still out of order), so that the pollers do not
            # take the CPU that pgbench needs for its rate
            lo = max(contig, last - self.WINDOW)
            rows = conn.execute(self.query, (lo,)).fetchall()
            now = time.time()
            for rid, ts in rows:
                if rid in seen:
                    continue
                seen.add(rid)
                lat.append((now - float(ts)) * 1000.0)
                last = max(last, rid)
            while contig + 1 in seen:
                contig += 1
                seen.discard(contig)
            self.count.value = len(lat)
            time.sleep(0.002)
        conn.close()
        self.tx.send(lat)

    def stop(self):
        self.ev.set()
        self.lat = self.rx.recv() if self.rx.poll(30) else []
        self.proc.join(10)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def bench_latency(pg, args, out):
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE lat (id bigserial PRIMARY KEY, ts double precision NOT NULL, pad text)")
        c.execute("CREATE PUBLICATION pub_lat FOR TABLE lat")
        c.execute("CREATE DATABASE sub")
        c.execute("SELECT pg_create_logical_replication_slot('sub_lat', 'pgoutput')")
    subinfo = pg.conninfo.replace("dbname=postgres", "dbname=sub")
    with psycopg.connect(subinfo, autocommit=True) as c:
        c.execute("CREATE TABLE lat (id bigint PRIMARY KEY, ts double precision NOT NULL, pad text)")
        c.execute(f"CREATE SUBSCRIPTION sub_lat CONNECTION '{pg.conninfo}' PUBLICATION pub_lat "
                  "WITH (create_slot = false, slot_name = 'sub_lat', copy_data = false)")
    w = Walrelay(args.build, pg, "pub_lat", "sqlite", "lat")
    script = os.path.join(w.dir, "insert.sql")
    open(script, "w").write("INSERT INTO lat (ts, pad) VALUES (extract(epoch from clock_timestamp()), 'x');\n")
    out.append(f"\n### Latency: pgbench -R single-row INSERTs, {args.latency_seconds} s per rate, "
               "commit-to-visible (ms) from the row's clock_timestamp()\n")
    out.append("| rate/s | rows | walrelay → sqlite p50 | p99 | max | native subscription p50 | p99 | max |")
    out.append("|---|---|---|---|---|---|---|---|")
    try:
        w.start()
        w.wait(w.all_ready, 300, "table ready")
        dest = os.path.join(w.dir, "dest.db")
        for rate in (2000, 5000):
            with psycopg.connect(pg.conninfo, autocommit=True) as c:
                before = c.execute("SELECT count(*) FROM lat").fetchone()[0]
                start = c.execute("SELECT coalesce(max(id), 0) FROM lat").fetchone()[0]
            sq = Poller("SELECT id, ts FROM lat WHERE id > ?",
                        lambda: sqlite3.connect(f"file:{dest}?mode=ro", uri=True, timeout=30,
                                                check_same_thread=False), start)
            nat = Poller("SELECT id, ts FROM lat WHERE id > %s",
                         lambda: psycopg.connect(subinfo, autocommit=True), start)
            sq.start()
            nat.start()
            subprocess.run([f"{PGBIN}/pgbench", "-n", "-f", script, "-c", str(4 if rate <= 2000 else 16), "-j", "2", "-R", str(rate),
                            "-T", str(args.latency_seconds), "-h", "127.0.0.1", "-p", str(pg.port),
                            "-U", "postgres", "postgres"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            with psycopg.connect(pg.conninfo, autocommit=True) as c:
                rows = c.execute("SELECT count(*) FROM lat").fetchone()[0] - before
            end = time.time() + 120
            while (sq.seen_count() < rows or nat.seen_count() < rows) and time.time() < end:
                time.sleep(0.1)
            sq.stop()
            nat.stop()
            out.append(f"| {rate} | {rows:,} (seen {len(sq.lat):,} / {len(nat.lat):,}) | "
                       f"{pct(sq.lat, 50):.1f} | {pct(sq.lat, 99):.1f} | {max(sq.lat or [0]):.0f} | "
                       f"{pct(nat.lat, 50):.1f} | {pct(nat.lat, 99):.1f} | {max(nat.lat or [0]):.0f} |")
            print(out[-1], flush=True)
        w.stop()
        m = re.findall(r"worker=apply", open(w.log).read())
        del m
    finally:
        w.stop() if w.proc and w.proc.poll() is None else None
        w.cleanup()
        with psycopg.connect(subinfo, autocommit=True) as c:
            c.execute("ALTER SUBSCRIPTION sub_lat DISABLE")
            c.execute("ALTER SUBSCRIPTION sub_lat SET (slot_name = NONE)")
            c.execute("DROP SUBSCRIPTION sub_lat")
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot('sub_lat')")
    print("\n".join(out[-5:]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--drain-rounds", type=int, default=3,
                    help="drain: rounds of (pg_recvlogical, walrelay -> null), in turn")
    ap.add_argument("--build", default="build")
    ap.add_argument("--bigtx-rows", type=int, default=2_000_000)
    ap.add_argument("--copy-connections", default="1,2",
                    help="copy into sqlite with each of these max_copy_connections_per_table")
    ap.add_argument("--scale-tables", type=int, default=500)
    ap.add_argument("--scale-rows", type=int, default=10000)
    ap.add_argument("--latency-seconds", type=int, default=20)
    ap.add_argument("--only", choices=["copy", "drain", "bigtx", "bigtx-live", "latency", "scale"])
    args = ap.parse_args()
    pg = TmpPostgres()
    out = [f"## {time.strftime('%Y-%m-%d')} — `bench/run.py {' '.join(sys.argv[1:])}`",
           f"\nmachine: {os.cpu_count()} cores, {os.uname().release}; PostgreSQL 15 (fsync on, "
           "shared_buffers 256MB), source and walrelay on the same machine"]
    try:
        if args.only in (None, "copy"):
            bench_copy(pg, args, out)
        if args.only in (None, "drain"):
            bench_drain(pg, args, out)
        if args.only in (None, "bigtx"):
            bench_bigtx(pg, args, out)
        if args.only in (None, "bigtx", "bigtx-live"):
            bench_bigtx_live(pg, args, out)
        if args.only in (None, "latency"):
            bench_latency(pg, args, out)
        if args.only in (None, "scale"):
            bench_scale(pg, args, out)
    finally:
        pg.stop()
    print("\n===== markdown for bench/RESULTS.md =====\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
