#!/usr/bin/python3
"""The event store destination against the table destinations on the same backlog.

  A backlog of N changes (½ inserts, ¼ updates, ¼ deletes, in 1000-row transactions, the
  same workload as `bench/run.py --only drain`) waits in one slot per pipeline; each
  pipeline then drains it, one after the other, timed from `walrelay run` until its slot's
  confirmed_flush passes the end of the backlog:

    sqlite            the table destination, a SQLite file
    eventstore:sqlite every change an event, in a SQLite file
    postgres          the table destination into a PostgreSQL database, if this build has it
    eventstore:postgres  every change an event, in a PostgreSQL database (same server)

  After each event store run the store is checked: exactly N events, positions dense
  1..N, stream versions consistent with es_streams. The goal (issue 8): the event store
  drains at >= 0.7x the rate of the table destination on the same store.

  --store-locale L creates the two PostgreSQL store databases with LC_COLLATE/LC_CTYPE L
  (e.g. C.utf8, as many installations have) instead of the cluster's C locale.

Usage: bench/eventstore.py [--changes 1000000] [--build build] [--only sqlite|postgres] [--repeat R]
                           [--store-locale L]
"""
import argparse
import os
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgtmp import TmpPostgres  # noqa: E402
from run import Walrelay, mb, slot_flushed  # noqa: E402

import psycopg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def apply_cpu(w):
    """CPU seconds (user + system) the pipeline's apply worker has used so far, or None."""
    try:
        for c in open(f"/proc/{w.proc.pid}/task/{w.proc.pid}/children").read().split():
            if os.path.basename(os.readlink(f"/proc/{c}/exe")) == "walrelay-apply":
                f = open(f"/proc/{c}/stat").read().rsplit(")", 1)[1].split()
                return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return None


def has_destination(build, name):
    """Is name a registered destination type of this build? (asked through the error of
    an unknown one, which lists them)."""
    r = subprocess.run([os.path.join(ROOT, build, "walrelay"), "init", "/nonexistent/x",
                        "--source", "x", "--publication", "x", "--destination", "no-such-type"],
                       capture_output=True, text=True)
    for line in r.stderr.splitlines():
        if "registered destination types:" in line:
            types = line.split("registered destination types:", 1)[1].split("(")[0]
            return name in [t.strip() for t in types.split(",")]
    return False


def backlog(pg, n):
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        ins, upd = n // 2, n // 4
        dele = n - ins - upd
        step = 1000
        for lo in range(1, ins + 1, step):
            c.execute("INSERT INTO bench_es SELECT g, g, 'row-' || g "
                      "FROM generate_series(%s::bigint, %s::bigint) g", (lo, min(lo + step - 1, ins)))
        for lo in range(1, upd + 1, step):
            c.execute("UPDATE bench_es SET v = v + 1 WHERE id BETWEEN %s::bigint AND %s::bigint",
                      (lo, min(lo + step - 1, upd)))
        for lo in range(1, dele + 1, step):
            c.execute("DELETE FROM bench_es WHERE id BETWEEN %s::bigint AND %s::bigint",
                      (lo, min(lo + step - 1, dele)))
        endpos = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        c.execute("CHECKPOINT")
    return endpos


def check_store(kind, where, n):
    """(events, dense, streams consistent) of an event store after the drain."""
    q_count = "SELECT count(*), min(position), max(position) FROM es_events"
    q_streams = ("SELECT count(*) FROM es_streams s WHERE s.last_version <> "
                 "(SELECT count(*) FROM es_events e WHERE e.aggregate_kind = s.aggregate_kind "
                 "AND e.aggregate_id = s.aggregate_id) OR s.last_position <> "
                 "(SELECT max(position) FROM es_events e WHERE e.aggregate_kind = s.aggregate_kind "
                 "AND e.aggregate_id = s.aggregate_id)")
    if kind == "sqlite":
        with sqlite3.connect(where) as d:
            cnt, lo, hi = d.execute(q_count).fetchone()
            bad = d.execute(q_streams).fetchone()[0]
    else:
        with psycopg.connect(where, autocommit=True) as d:
            cnt, lo, hi = d.execute(q_count).fetchone()
            bad = d.execute(q_streams).fetchone()[0]
    dense = cnt == n and lo == 1 and hi == n
    return cnt, dense, bad == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--build", default="build")
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; each drains the same backlog through a fresh pipeline of "
                    "every kind, in turn (table destination, then event store), so that a "
                    "machine that speeds up or slows down during the run moves both sides of "
                    "a round's ratio alike; the median ratio is reported")
    ap.add_argument("--store-locale", help="LC_COLLATE and LC_CTYPE of the PostgreSQL store "
                    "databases (default: the cluster's, C)")
    args = ap.parse_args()
    n = args.changes
    pg = TmpPostgres()
    load = os.getloadavg()[0]
    out = [f"## {time.strftime('%Y-%m-%d')} — `bench/eventstore.py {' '.join(sys.argv[1:])}`",
           f"\nmachine: {os.cpu_count()} cores, {os.uname().release}; PostgreSQL 15 (fsync on, "
           f"shared_buffers 256MB), source, stores and walrelay on the same machine; load average "
           f"{load:.1f} at the start"]
    pipes = []
    try:
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            c.execute("CREATE TABLE bench_es (id bigint PRIMARY KEY, v int, t text)")
            c.execute("CREATE PUBLICATION pub_es FOR TABLE bench_es")
            loc = ""
            if args.store_locale:
                lit = args.store_locale.replace("'", "''")
                loc = f" TEMPLATE template0 LC_COLLATE '{lit}' LC_CTYPE '{lit}'"
            # a database of each kind per round: a second pipeline into the same store
            # would be refused (its aggregate kinds belong to the first one's slot)
            for r in range(1, args.repeat + 1):
                c.execute(f"CREATE DATABASE es_store_r{r}" + loc)
                c.execute(f"CREATE DATABASE table_store_r{r}" + loc)

        def store_ci(r):
            return pg.conninfo.replace("dbname=postgres", f"dbname=es_store_r{r}")

        def table_ci(r):
            return pg.conninfo.replace("dbname=postgres", f"dbname=table_store_r{r}")
        runs = []
        for r in range(1, args.repeat + 1):
            if args.only in (None, "sqlite"):
                runs += [("sqlite", "sqlite", None, r), ("eventstore:sqlite", None, "sqlite", r)]
            if args.only in (None, "postgres"):
                if has_destination(args.build, "postgres"):
                    runs.append(("postgres", "postgres:" + table_ci(r), None, r))
                runs.append(("eventstore:postgres", "eventstore:postgres:" + store_ci(r),
                             "postgres", r))
        for label, dest, es, rnd in runs:
            name = "es_" + label.replace(":", "_")
            if args.repeat > 1:
                name += "_r%d" % rnd
            if es == "sqlite":
                dest = "eventstore:sqlite:EVENTS"
            w = Walrelay(args.build, pg, "pub_es", dest if dest != "eventstore:sqlite:EVENTS"
                         else "eventstore", name)
            w.label, w.es, w.round = label, es, rnd
            pipes.append(w)
            # copy the (empty) table, then stop: the slot waits before the backlog
            w.start()
            w.wait(w.all_ready, 600, "table ready")
            w.stop()
        t = time.monotonic()
        endpos = backlog(pg, n)
        gen = time.monotonic() - t
        out.append(f"\n### Drain of a {n:,}-change backlog (½ inserts, ¼ updates, ¼ deletes; "
                   f"1000-row transactions; generated in {gen:.0f} s)\n")
        out.append("| round | destination | seconds | changes/s | ratio to the table destination on the "
                   "same store | apply worker CPU s | peak RSS MB (supervisor/apply) | store check |")
        out.append("|---|---|---|---|---|---|---|---|")
        rates = {}
        ratios = {}
        for w in pipes:
            slot = f"walrelay_{w.name}"

            def flushed():
                return slot_flushed(pg, slot, endpos)
            w.peak = {}
            cpu = [None]

            def flushed_cpu():
                c = apply_cpu(w)
                if c is not None:
                    cpu[0] = c
                return flushed()
            t0 = time.monotonic()
            w.start()
            w.wait(flushed_cpu, 7200, "slot confirmed past the backlog")
            dt = time.monotonic() - t0
            c = apply_cpu(w)
            cpu[0] = c if c is not None else cpu[0]
            w.stop()
            rates[(w.label, w.round)] = n / dt
            ratio = ""
            check = ""
            if w.es:
                base = rates.get((w.es, w.round))
                ratio = f"{(n / dt) / base:.2f}" if base else "(no table destination)"
                if base:
                    ratios.setdefault(w.label, []).append((n / dt) / base)
                where = (os.path.join(w.dir, "events.db") if w.es == "sqlite"
                         else store_ci(w.round))
                cnt, dense, streams_ok = check_store(w.es, where, n)
                check = (f"{cnt:,} events, positions {'dense 1..N' if dense else 'NOT DENSE'}, "
                         f"es_streams {'consistent' if streams_ok else 'INCONSISTENT'}")
                if not dense or not streams_ok or cnt != n:
                    raise RuntimeError(f"{w.label}: {check}")
            else:
                ratio = "1.00"
            p = w.peak
            cpu_s = f"{cpu[0]:.1f}" if cpu[0] is not None else "?"
            out.append(f"| {w.round} | {w.label} | {dt:.2f} | {n / dt:,.0f} | {ratio} | {cpu_s} | "
                       f"{mb(p.get('supervisor', 0))}/{mb(p.get('walrelay-apply', 0))} | {check} |")
            print(out[-1], flush=True)
        if args.repeat > 1:
            out.append("")
            for label, rs in ratios.items():
                rs = sorted(rs)
                med = rs[len(rs) // 2] if len(rs) % 2 else (rs[len(rs) // 2 - 1] + rs[len(rs) // 2]) / 2
                out.append(f"- {label}: median ratio **{med:.2f}** over {len(rs)} rounds "
                           f"({', '.join(f'{r:.2f}' for r in rs)})")
    finally:
        for w in pipes:
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()
        pg.stop()
    print("\n===== markdown for bench/RESULTS.md =====\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
