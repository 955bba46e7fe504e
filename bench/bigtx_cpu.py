#!/usr/bin/python3
"""Where a streamed large transaction spends its CPU (issue 11, item 4).

  One UPDATE of every row of an N-row table (the `bigtx-live` scenario of bench/run.py)
  while a reader streams it with pgoutput protocol 2 and streaming on, and the CPU seconds
  (/proc/PID/stat) of the UPDATE's backend, the walsender and the reader, sampled at the
  UPDATE's start, at its end, and when the reader is past it:

    walrelay         walrelay → sqlite, [source] streaming = 1; done when the slot's
                     confirmed_flush passes the UPDATE's commit
    pg_recvlogical   -o proto_version=2 -o streaming=on -f /dev/null; done when the
                     walsender's sent_lsn passes it

  --rounds R alternates the two R times, each on a fresh server.

Usage: bench/bigtx_cpu.py [--rows 1000000] [--rounds 2] [--build build]
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgtmp import TmpPostgres, PGBIN  # noqa: E402
from run import Walrelay, insert_lsn, live_table, slot_flushed  # noqa: E402

import psycopg  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / HZ
    except (OSError, TypeError):
        return float("nan")


def one(reader, args):
    pg = TmpPostgres()
    w = rv = None
    try:
        live_table(pg, args.rows)
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            if reader == "walrelay":
                w = Walrelay(args.build, pg, "pub_live", "sqlite", "bigtx_cpu",
                             conf={("source", "streaming"): "1"})
                w.start()
                w.wait(w.all_ready, 600, "table ready")
                rpid = w.child_pids()["walrelay-apply"]
            else:
                c.execute("SELECT pg_create_logical_replication_slot('bigtx_cpu', 'pgoutput')")
                rv = subprocess.Popen([f"{PGBIN}/pg_recvlogical", "-d", pg.conninfo, "--slot",
                                       "bigtx_cpu", "--start", "-f", "/dev/null",
                                       "-o", "proto_version=2", "-o", "streaming=on",
                                       "-o", "publication_names=pub_live"])
                rpid = rv.pid
            wsp = None
            while wsp is None:
                r = c.execute("SELECT pid FROM pg_stat_replication").fetchone()
                wsp = r and r[0]
                time.sleep(0.05)
            pids = {"update": c.execute("SELECT pg_backend_pid()").fetchone()[0],
                    "walsender": wsp, "reader": rpid}
            s0 = {k: cpu(p) for k, p in pids.items()}
            t0 = time.monotonic()
            c.execute("UPDATE bench_live SET v = v + 1, t = 'updated ' || id")
            t1 = time.monotonic()
            s1 = {k: cpu(p) for k, p in pids.items()}
            end = insert_lsn(c)
            while True:
                if reader == "walrelay":
                    w.sample_rss()
                    if slot_flushed(pg, "walrelay_bigtx_cpu", end):
                        break
                elif c.execute("SELECT sent_lsn >= %s::pg_lsn FROM pg_stat_replication",
                               (end,)).fetchone()[0]:
                    break
                time.sleep(0.05)
            t2 = time.monotonic()
            s2 = {k: cpu(p) for k, p in pids.items()}
        d = {k: (s1[k] - s0[k], s2[k] - s1[k], s2[k] - s0[k]) for k in pids}
        return (t1 - t0, t2 - t1, d)
    finally:
        if w:
            w.stop()
            w.cleanup()
        if rv:
            rv.terminate()
            rv.wait()
        pg.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    print(f"## {time.strftime('%Y-%m-%d')} — `bench/bigtx_cpu.py {' '.join(sys.argv[1:])}`\n")
    print("| reader | UPDATE s | after s | walsender CPU s: during / after / total | "
          "UPDATE backend CPU s | reader CPU s |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for reader in ("pg_recvlogical", "walrelay"):
            upd, after, d = one(reader, args)
            ws = d["walsender"]
            print(f"| {reader} | {upd:.2f} | {after:.2f} | {ws[0]:.2f} / {ws[1]:.2f} / {ws[2]:.2f} | "
                  f"{d['update'][0]:.2f} | {d['reader'][2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
