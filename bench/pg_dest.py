#!/usr/bin/python3
"""The postgres destination (issue 7) against what a user would use instead, side by side:
two PostgreSQL 15 clusters started by this script (source and target, same settings), and
three scenarios, each run with walrelay and with the baselines, one after the other:

  copy:     initial copy of a --rows table (7 columns: bigint, numeric, jsonb, uuid,
            timestamptz, text, int) by walrelay (start until the table is ready, its
            primary key built) vs `psql COPY ... TO STDOUT | psql COPY ... FROM STDIN`
            (into the table with its primary key, and into one without it plus ADD PRIMARY
            KEY afterwards) vs a native subscription's initial sync (CREATE SUBSCRIPTION
            until the table is ready).
  catchup:  a backlog built while both were stopped (--inserts in 1000-row transactions,
            --updates in one transaction, --deletes in 1000-row transactions, then one
            marker row): time from start (walrelay run / ALTER SUBSCRIPTION ENABLE) until
            the target equals the source (the marker, committed last, is visible on the
            target: both apply in commit order), and until the slot's confirmed flush
            passes the backlog's end (what the source may recycle; feedback timing adds to
            it). CPU seconds of each side's processes are sampled from /proc: the
            walsender (shared work: decoding), walrelay's processes or the native apply
            worker, and the target's backends.
  latency:  pgbench -R inserting single rows at each --rates for --seconds: commit-to-
            visible per row = when a poller on the target (every 2 ms) first saw it minus the source's
            commit timestamp (track_commit_timestamp), p50 / p99 / max.

Peak RSS (VmHWM) of every walrelay process is sampled during all of it. Each target
is checked equal to the source (count and a checksum) after each scenario.

Usage: bench/pg_dest.py [--rows 2000000] [--inserts 1000000] [--updates 200000]
                        [--deletes 100000] [--rates 2000,5000] [--seconds 20]
                        [--build build] [--only copy|catchup|latency]
"""
import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgtmp import TmpPostgres, PGBIN  # noqa: E402
from run import Walrelay, mb  # noqa: E402

import psycopg  # noqa: E402

# the same for both clusters (and so for walrelay and the native subscription)
CONF = """
track_commit_timestamp = on
max_worker_processes = 16
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 2
"""


def conninfo(pg, db):
    return f"host=127.0.0.1 port={pg.port} user=postgres dbname={db}"


def sql(pg, db, q, params=None, fetch=False):
    with psycopg.connect(conninfo(pg, db), autocommit=True) as c:
        cur = c.execute(q, params)
        return cur.fetchall() if fetch else None


def createdb(pg, name):
    sql(pg, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    sql(pg, "postgres", f'CREATE DATABASE "{name}"')


def slot_flushed(src, slot, endpos):
    r = sql(src, "postgres", "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s", (endpos, slot), fetch=True)
    return bool(r and r[0][0])


def wait(pred, timeout, what, sample=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sample:
            sample()
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timeout waiting for {what}")


def fingerprint(pg, db, table):
    return sql(pg, db, f"SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM {table} t",
               fetch=True)[0]


def check_equal(src, dst, db, table, what):
    a, b = fingerprint(src, "postgres", table), fingerprint(dst, db, table)
    if a != b:
        raise RuntimeError(f"{what}: target {b} differs from the source {a}")
    return a[0]


class Pipeline(Walrelay):
    """A walrelay pipeline into a database of the target cluster."""

    def __init__(self, build, src, dst, db, publication, name):
        createdb(dst, db)
        super().__init__(build, src, publication, "postgres:" + conninfo(dst, db), name)


def native_subscribe(src, dst, db, name, publication, copy_data=True):
    sql(dst, db, f"CREATE SUBSCRIPTION {name} CONNECTION '{conninfo(src, 'postgres')}' "
        f"PUBLICATION {publication} WITH (copy_data = {str(copy_data).lower()})")


def native_ready(dst, db, name):
    r = sql(dst, db, "SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel r JOIN "
            "pg_subscription s ON s.oid = r.srsubid WHERE s.subname = %s", (name,), fetch=True)
    return bool(r and r[0][0])


def native_drop(dst, db, name):
    sql(dst, db, f"DROP SUBSCRIPTION IF EXISTS {name}")


def proc_cpu(pid):
    """CPU seconds (user + system) of a process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuTracker:
    """Samples the CPU time of groups of processes while they run: the highest value seen
    per (group, pid) counts (a process that exits keeps its last sample). The pids of a
    group come from a function asked at most once a second (persistent connections: the
    probing itself should cost the machine little). totals() = seconds per group."""

    def __init__(self, groups):
        self.groups = groups  # {group: function returning pids}
        self.pids = {}
        self.last = 0.0
        self.seen = {}

    def sample(self):
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            for g, fn in self.groups.items():
                try:
                    self.pids[g] = [p for p in fn() if p]
                except Exception:  # a process or server going away meanwhile
                    pass
        for g, pids in self.pids.items():
            for pid in pids:
                self.seen[(g, pid)] = max(self.seen.get((g, pid), 0.0), proc_cpu(pid))

    def totals(self):
        t = {}
        for (g, _), v in self.seen.items():
            t[g] = t.get(g, 0.0) + v
        return t


class Probe:
    """Persistent connections for the catch-up's polling: the marker row on the target,
    the slot's position and walsender on the source, the target's backends."""

    def __init__(self, src, dst, db):
        self.src = psycopg.connect(conninfo(src, "postgres"), autocommit=True)
        self.dst = psycopg.connect(conninfo(dst, db), autocommit=True)
        self.db = db

    def marker_seen(self):
        return self.dst.execute("SELECT 1 FROM cu WHERE id = -1").fetchone() is not None

    def slot_flushed(self, slot, endpos):
        r = self.src.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                             "WHERE slot_name = %s", (endpos, slot)).fetchone()
        return bool(r and r[0])

    def walsender(self, slot):
        r = self.src.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                             (slot,)).fetchone()
        return [r[0]] if r and r[0] else []

    def target_backends(self, app_like):
        return [r[0] for r in self.dst.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
            (self.db, app_like)).fetchall()]

    def native_workers(self):
        return [r[0] for r in self.dst.execute("SELECT pid FROM pg_stat_subscription").fetchall()]

    def close(self):
        self.src.close()
        self.dst.close()


def walrelay_pids(w):
    pids = [w.proc.pid]
    try:
        with open(f"/proc/{w.proc.pid}/task/{w.proc.pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return pids


# -- copy -------------------------------------------------------------------------------------

COPY_DDL = ("CREATE TABLE bench (id bigint PRIMARY KEY, amount numeric(12,2), doc jsonb, "
            "uid uuid, at timestamptz, name text, qty int)")
COPY_DDL_NOPK = COPY_DDL.replace(" PRIMARY KEY", "")


def bench_copy(src, dst, args, out, peaks):
    sql(src, "postgres", COPY_DDL)
    sql(src, "postgres", "INSERT INTO bench SELECT g, (g %% 1000000) / 100.0, "
        "jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b', g %% 7), 'ok', g %% 2 = 0), "
        "md5(g::text)::uuid, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1.5 second', "
        "'name ' || g || ' ' || md5(g::text), g %% 1000 FROM generate_series(1, %s) g", (args.rows,))
    sql(src, "postgres", "VACUUM ANALYZE bench")
    sql(src, "postgres", "CREATE PUBLICATION pub_copy FOR TABLE bench")
    size = sql(src, "postgres", "SELECT pg_size_pretty(pg_table_size('bench'))", fetch=True)[0][0]
    res = []

    # 1. the COPY pipe, into the table with its primary key and without it (+ ADD PRIMARY KEY)
    for variant, ddl in (("pk", COPY_DDL), ("nopk", COPY_DDL_NOPK)):
        createdb(dst, f"pipe_{variant}")
        sql(dst, f"pipe_{variant}", ddl)
        t0 = time.monotonic()
        subprocess.run(f"{PGBIN}/psql '{conninfo(src, 'postgres')}' -X -q -c 'COPY bench TO STDOUT' "
                       f"| {PGBIN}/psql '{conninfo(dst, f'pipe_{variant}')}' -X -q "
                       f"-c 'COPY bench FROM STDIN'", shell=True, check=True)
        if variant == "nopk":
            sql(dst, "pipe_nopk", "ALTER TABLE bench ADD PRIMARY KEY (id)")
        res.append((variant, time.monotonic() - t0))
        check_equal(src, dst, f"pipe_{variant}", "bench", f"pipe {variant}")
    pipe_pk, pipe_nopk = res[0][1], res[1][1]

    # 2. walrelay
    w = Pipeline(args.build, src, dst, "wr_copy", "pub_copy", "copy_pg")
    try:
        t0 = time.monotonic()
        w.start()
        w.wait(w.all_ready, 3600, "table ready")
        wr = time.monotonic() - t0
        w.stop()
        ws = w.copy_seconds_from_log()
        peaks["copy"] = dict(w.peak)
    finally:
        w.stop() if w.proc and w.proc.poll() is None else None
        w.cleanup()
    check_equal(src, dst, "wr_copy", "bench", "walrelay copy")

    # 3. the native subscription's initial sync
    createdb(dst, "native_copy")
    sql(dst, "native_copy", COPY_DDL)
    t0 = time.monotonic()
    native_subscribe(src, dst, "native_copy", "sub_copy", "pub_copy")
    wait(lambda: native_ready(dst, "native_copy", "sub_copy"), 3600, "native initial sync")
    nat = time.monotonic() - t0
    native_drop(dst, "native_copy", "sub_copy")
    check_equal(src, dst, "native_copy", "bench", "native copy")

    out.append(f"\n### Copy of {args.rows:,} rows ({size}: bigint, numeric, jsonb, uuid, "
               "timestamptz, text, int)\n")
    out.append("| what | seconds | rows/s | walrelay's speed relative to it |")
    out.append("|---|---|---|---|")
    out.append(f"| `psql COPY TO STDOUT \\| psql COPY FROM STDIN` into the table with its primary key "
               f"| {pipe_pk:.2f} | {args.rows / pipe_pk:,.0f} | {pipe_pk / wr:.2f}× |")
    out.append(f"| the same pipe into the table without its key, then ADD PRIMARY KEY "
               f"| {pipe_nopk:.2f} | {args.rows / pipe_nopk:,.0f} | {pipe_nopk / wr:.2f}× |")
    out.append(f"| native subscription, CREATE SUBSCRIPTION until the table is ready "
               f"| {nat:.2f} | {args.rows / nat:,.0f} | {nat / wr:.2f}× |")
    out.append(f"| **walrelay → postgres**, `walrelay run` until the table is ready (worker's "
               f"copy {ws} s) | {wr:.2f} | {args.rows / wr:,.0f} | 1.00× |")
    print("\n".join(out[-7:]), flush=True)


# -- catch-up ---------------------------------------------------------------------------------

def bench_catchup(src, dst, args, out, peaks):
    sql(src, "postgres", "CREATE TABLE cu (id bigint PRIMARY KEY, v int NOT NULL, t text)")
    sql(src, "postgres", "CREATE PUBLICATION pub_cu FOR TABLE cu")
    w = Pipeline(args.build, src, dst, "wr_cu", "pub_cu", "cu_pg")
    createdb(dst, "native_cu")
    sql(dst, "native_cu", "CREATE TABLE cu (id bigint PRIMARY KEY, v int NOT NULL, t text)")
    try:
        # both set up, then stopped
        w.start()
        w.wait(w.all_ready, 600, "table ready")
        w.stop()
        native_subscribe(src, dst, "native_cu", "sub_cu", "pub_cu")
        wait(lambda: native_ready(dst, "native_cu", "sub_cu"), 600, "native sync")
        sql(dst, "native_cu", "ALTER SUBSCRIPTION sub_cu DISABLE")
        wait(lambda: not sql(src, "postgres", "SELECT active FROM pg_replication_slots WHERE "
                             "slot_name = 'sub_cu'", fetch=True)[0][0], 60, "native worker gone")
        # the backlog (a third slot: pg_recvlogical's decode-only time, the ceiling)
        n_ins, n_upd, n_del = args.inserts, args.updates, args.deletes
        sql(src, "postgres", "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        t0 = time.monotonic()
        with psycopg.connect(conninfo(src, "postgres"), autocommit=True) as c:
            for lo in range(1, n_ins + 1, 1000):
                c.execute("INSERT INTO cu SELECT g, g %% 1000, 'row ' || g FROM "
                          "generate_series(%s::bigint, %s::bigint) g", (lo, min(lo + 999, n_ins)))
            c.execute("UPDATE cu SET v = v + 1, t = 'upd ' || id WHERE id <= %s", (n_upd,))
            for lo in range(n_ins - n_del + 1, n_ins + 1, 1000):
                c.execute("DELETE FROM cu WHERE id BETWEEN %s AND %s", (lo, min(lo + 999, n_ins)))
            c.execute("INSERT INTO cu VALUES (-1, 0, 'marker')")
            endpos = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            c.execute("CHECKPOINT")
        build_s = time.monotonic() - t0
        total = n_ins + n_upd + n_del
        # walrelay
        w.peak = {}
        pw = Probe(src, dst, "wr_cu")
        cpu_w = CpuTracker({"walsender": lambda: pw.walsender("walrelay_cu_pg"),
                            "client": lambda: walrelay_pids(w),
                            "target": lambda: pw.target_backends("walrelay_%")})
        t0 = time.monotonic()
        w.start()
        w.wait(lambda: (cpu_w.sample(), pw.marker_seen())[1], 7200, "walrelay: the marker")
        wr = time.monotonic() - t0
        w.wait(lambda: (cpu_w.sample(), pw.slot_flushed("walrelay_cu_pg", endpos))[1], 600,
               "walrelay caught up")
        wr_flush = time.monotonic() - t0
        w.stop()
        pw.close()
        peaks["catchup"] = dict(w.peak)
        check_equal(src, dst, "wr_cu", "cu", "walrelay catch-up")
        # native
        pn = Probe(src, dst, "native_cu")
        cpu_n = CpuTracker({"walsender": lambda: pn.walsender("sub_cu"),
                            "client": pn.native_workers})
        t0 = time.monotonic()
        sql(dst, "native_cu", "ALTER SUBSCRIPTION sub_cu ENABLE")
        wait(pn.marker_seen, 7200, "native: the marker", sample=cpu_n.sample)
        nat = time.monotonic() - t0
        wait(lambda: pn.slot_flushed("sub_cu", endpos), 600, "native caught up",
             sample=cpu_n.sample)
        nat_flush = time.monotonic() - t0
        pn.close()
        check_equal(src, dst, "native_cu", "cu", "native catch-up")
        t0 = time.monotonic()
        subprocess.run([f"{PGBIN}/pg_recvlogical", "-d", conninfo(src, "postgres"), "--slot",
                        "bench_recv", "--start", "--endpos", endpos, "-o", "proto_version=1",
                        "-o", "publication_names=pub_cu", "--no-loop", "-f", "/dev/null"],
                       check=True)
        recv = time.monotonic() - t0
        sql(src, "postgres", "SELECT pg_drop_replication_slot('bench_recv')")
    finally:
        w.stop() if w.proc and w.proc.poll() is None else None
        w.cleanup()
        native_drop(dst, "native_cu", "sub_cu")
    out.append(f"\n### Catch-up of a backlog built while both were stopped ({n_ins:,} inserts in "
               f"1000-row transactions, {n_upd:,} updates in one transaction, {n_del:,} deletes in "
               f"1000-row transactions; built in {build_s:.0f} s)\n")
    out.append("| what | seconds until the target equals the source | changes/s | walrelay's "
               "rate relative to it | seconds until the slot's confirmed flush passes the end | "
               "CPU s: walsender / apply client / target backend |")
    out.append("|---|---|---|---|---|---|")
    out.append(f"| `pg_recvlogical` (pgoutput, decoding only, to /dev/null): the source's "
               f"ceiling | {recv:.2f} | {total / recv:,.0f} | {recv / wr:.2f}× | - | - |")
    cn, cw = cpu_n.totals(), cpu_w.totals()
    out.append(f"| native subscription, ENABLE until then | {nat:.2f} | {total / nat:,.0f} | "
               f"{nat / wr:.2f}× | {nat_flush:.2f} | {cn.get('walsender', 0):.1f} / "
               f"{cn.get('client', 0):.1f} (apply worker, on the target) / - |")
    out.append(f"| **walrelay → postgres**, `walrelay run` until then | {wr:.2f} | "
               f"{total / wr:,.0f} | 1.00× | {wr_flush:.2f} | {cw.get('walsender', 0):.1f} / "
               f"{cw.get('client', 0):.1f} (walrelay) / {cw.get('target', 0):.1f} |")
    print("\n".join(out[-6:]), flush=True)


# -- latency ----------------------------------------------------------------------------------

def pgbench(src, rate, seconds, sample):
    script = "/tmp/walrelay_bench_lat.sql"
    with open(script, "w") as f:
        f.write("INSERT INTO lat (payload) VALUES ('x');\n")
    cmd = [f"{PGBIN}/pgbench", "-n", "-R", str(rate), "-T", str(seconds), "-c", "8", "-j", "2",
           "-f", script, conninfo(src, "postgres")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        sample()
        time.sleep(0.1)
    text = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {text}")
    done = [ln for ln in text.splitlines() if "actually processed" in ln]
    return int(done[0].split(":")[1].split("/")[0]) if done else None


class Watcher(threading.Thread):
    """Polls max(id) of the target's table every 2 ms: the time each id becomes
    visible there (the midpoint of the first query that saw it). The target's commit
    timestamps cannot serve: a native subscriber's transactions carry the source's."""

    def __init__(self, dst, db):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(conninfo(dst, db), autocommit=True)
        self.seen = []  # (time, max id), increasing
        self.stop_ev = threading.Event()

    def run(self):
        last = -1
        cur = self.conn.cursor()
        while not self.stop_ev.is_set():
            t0 = time.time()
            cur.execute("SELECT coalesce(max(id), 0) FROM lat", prepare=True)
            m = cur.fetchone()[0]
            t1 = time.time()
            if m > last:
                self.seen.append(((t0 + t1) / 2, m))
                last = m
            time.sleep(0.002)  # a busy loop took a core from the 2 that everything shares

    def finish(self):
        self.stop_ev.set()
        self.join(30)
        self.conn.close()


def latencies(src, watcher, lo, hi):
    """Per row: when the target showed it minus the source's commit timestamp."""
    rows = sql(src, "postgres", "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) "
               "FROM lat WHERE id > %s AND id <= %s ORDER BY id", (lo, hi), fetch=True)
    seen, j, d = watcher.seen, 0, []
    for rid, committed in rows:
        while j < len(seen) and seen[j][1] < rid:
            j += 1
        if j == len(seen):
            raise RuntimeError(f"latency: row {rid} never seen on the target")
        d.append(max(0.0, (seen[j][0] - float(committed)) * 1000))
    d.sort()
    return d[len(d) // 2], d[min(len(d) - 1, int(len(d) * 0.99))], d[-1], len(d)


def bench_latency(src, dst, args, out, peaks):
    sql(src, "postgres", "CREATE TABLE lat (id bigserial PRIMARY KEY, payload text, "
        "created timestamptz NOT NULL DEFAULT now())")
    sql(src, "postgres", "CREATE PUBLICATION pub_lat FOR TABLE lat")
    w = Pipeline(args.build, src, dst, "wr_lat", "pub_lat", "lat_pg")
    createdb(dst, "native_lat")
    sql(dst, "native_lat", "CREATE TABLE lat (id bigserial PRIMARY KEY, payload text, "
        "created timestamptz NOT NULL DEFAULT now())")
    rows = []
    try:
        w.start()
        w.wait(w.all_ready, 600, "table ready")
        w.peak = {}
        for rate in args.rates:
            lo = sql(src, "postgres", "SELECT coalesce(max(id), 0) FROM lat", fetch=True)[0][0]
            watcher = Watcher(dst, "wr_lat")
            watcher.start()
            done = pgbench(src, rate, args.seconds, w.sample_rss)
            endpos = sql(src, "postgres", "SELECT pg_current_wal_insert_lsn()::text", fetch=True)[0][0]
            w.wait(lambda: slot_flushed(src, "walrelay_lat_pg", endpos), 600, "walrelay caught up")
            hi = sql(src, "postgres", "SELECT max(id) FROM lat", fetch=True)[0][0]
            watcher.finish()
            rows.append(("walrelay → postgres", rate, done, latencies(src, watcher, lo, hi)))
        w.stop()
        peaks["latency"] = dict(w.peak)
        # native, streaming only what comes after its start
        native_subscribe(src, dst, "native_lat", "sub_lat", "pub_lat", copy_data=False)
        wait(lambda: sql(dst, "native_lat", "SELECT pid IS NOT NULL FROM pg_stat_subscription "
                         "WHERE subname = 'sub_lat'", fetch=True)[0][0], 120, "native streaming")
        for rate in args.rates:
            lo = sql(src, "postgres", "SELECT max(id) FROM lat", fetch=True)[0][0]
            watcher = Watcher(dst, "native_lat")
            watcher.start()
            done = pgbench(src, rate, args.seconds, lambda: None)
            endpos = sql(src, "postgres", "SELECT pg_current_wal_insert_lsn()::text", fetch=True)[0][0]
            wait(lambda: slot_flushed(src, "sub_lat", endpos), 600, "native caught up")
            hi = sql(src, "postgres", "SELECT max(id) FROM lat", fetch=True)[0][0]
            watcher.finish()
            rows.append(("native subscription", rate, done, latencies(src, watcher, lo, hi)))
    finally:
        w.stop() if w.proc and w.proc.poll() is None else None
        w.cleanup()
        native_drop(dst, "native_lat", "sub_lat")
    out.append(f"\n### Latency: single-row inserts at a steady rate (pgbench -R, 8 clients, "
               f"{args.seconds} s each), commit on the source to visible on the target (a "
               "poller on the target reads max(id) every 2 ms)\n")
    out.append("| what | target rate/s | rows inserted | p50 ms | p99 ms | max ms |")
    out.append("|---|---|---|---|---|---|")
    for who, rate, done, (p50, p99, mx, n) in sorted(rows, key=lambda r: (r[1], r[0])):
        out.append(f"| {who} | {rate:,} | {n:,} | {p50:.1f} | {p99:.1f} | {mx:.1f} |")
    print("\n".join(out[-(3 + len(rows)):]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--inserts", type=int, default=1_000_000)
    ap.add_argument("--updates", type=int, default=200_000)
    ap.add_argument("--deletes", type=int, default=100_000)
    ap.add_argument("--rates", default="2000,5000")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--build", default="build")
    ap.add_argument("--only", choices=["copy", "catchup", "latency"])
    args = ap.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    src = TmpPostgres(extra_conf=CONF)
    dst = TmpPostgres(extra_conf=CONF)
    peaks = {}
    load = os.getloadavg()
    out = [f"## {time.strftime('%Y-%m-%d')} — `bench/pg_dest.py {' '.join(sys.argv[1:])}`",
           f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.1f} at the start; two "
           "PostgreSQL 15 clusters (source, target) started by the script with the same settings "
           "(fsync on, shared_buffers 256MB, track_commit_timestamp on); walrelay, both clusters "
           "and the baselines share the machine"]
    try:
        if args.only in (None, "copy"):
            bench_copy(src, dst, args, out, peaks)
        if args.only in (None, "catchup"):
            bench_catchup(src, dst, args, out, peaks)
        if args.only in (None, "latency"):
            bench_latency(src, dst, args, out, peaks)
    finally:
        src.stop()
        dst.stop()
    out.append("\n### Peak RSS of the walrelay processes (VmHWM, MB)\n")
    out.append("| scenario | supervisor | walrelay-apply | walrelay-sync |")
    out.append("|---|---|---|---|")
    for k, p in peaks.items():
        out.append(f"| {k} | {mb(p.get('supervisor', 0))} | {mb(p.get('walrelay-apply', 0))} | "
                   f"{mb(p.get('walrelay-sync', 0)) if p.get('walrelay-sync') else '-'} |")
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
