#!/usr/bin/python3
"""What the PostgreSQL event store's writes cost the server, against the table
destination's, with nothing else running: a floor for `bench/eventstore.py --only postgres`.

The drain backlog of bench/eventstore.py (500k inserts, 250k updates, 250k deletes of
bench_drain(id, v, t)) written set-based, in single statements, on a throwaway server:

  table        INSERT 500k rows into a table with its primary key, UPDATE 250k, DELETE 250k
               (what the `postgres` table destination makes the target do)
  event store  INSERT the 1M events into es_events (the schema of the event store, read
               from destinations/eventstore/store.c: a heap, a primary key, two UNIQUE keys,
               two indexes), then es_streams: 500k new streams and 500k updated ones

No walrelay, no walsender, no protocol: only the server's work. If the event store's
floor is above the time the whole table-destination drain takes divided by 0.7, issue 8's
goal (>= 0.7x) cannot be met on this machine whatever walrelay does.

Usage: bench/eventstore_floor.py [--rounds 3]
"""
import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgtmp import TmpPostgres  # noqa: E402

import psycopg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def store_schema():
    """es_events and es_streams as the event store creates them (PostgreSQL)."""
    src = open(os.path.join(ROOT, "destinations/eventstore/store.c")).read()
    i = src.index("static const char es_schema_pg[] =")
    body = src[i:src.index(";\n", i)]
    sql = "".join(p.replace('\\"', '"') for p in re.findall(r'"((?:[^"\\]|\\.)*)"', body))
    return sql.split("CREATE TABLE IF NOT EXISTS es_cdc_progress")[0]


EVENTS = """
INSERT INTO es_events (position, aggregate_kind, aggregate_id, event_kind, stream_version,
                       data, metadata, src_lsn, src_seq, src_sub)
SELECT g, 'public.bench_drain',
       '[' || (CASE WHEN g <= 500000 THEN g ELSE (g - 500000) % 250000 + 1 END) || ']',
       CASE WHEN g <= 500000 THEN 'insert' WHEN g <= 750000 THEN 'update' ELSE 'delete' END,
       CASE WHEN g <= 500000 THEN 1 WHEN g <= 750000 THEN 2 ELSE 3 END,
       convert_to('{"id":' || g || ',"v":' || g || ',"t":"row-' || g || '"}', 'UTF8'),
       ('{"commit_lsn":"0/' || to_hex(g * 100) || '","xid":' || (1000 + g / 1000) ||
        ',"commit_ts":"2026-12-04T04:00:00.123456Z","seq":' || (g % 1000) ||
        ',"sub":0,"relid":16384,"phase":"stream"}')::jsonb,
       g * 100, g % 1000, 0
FROM generate_series(1, 1000000) g"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    schema = store_schema()
    pg = TmpPostgres()
    try:
        con = psycopg.connect(host=pg.dir, port=pg.port, user="postgres", dbname="postgres",
                              autocommit=True)

        def timed(sql):
            t0 = time.monotonic()
            con.execute(sql)
            return time.monotonic() - t0

        rows = []
        for r in range(args.rounds):
            con.execute("DROP TABLE IF EXISTS bd, es_events, es_streams")
            con.execute("CHECKPOINT")
            con.execute("CREATE TABLE bd (id bigint PRIMARY KEY, v bigint, t text)")
            a = timed("INSERT INTO bd SELECT g, g, 'row-' || g FROM generate_series(1, 500000) g")
            a += timed("UPDATE bd SET v = v + 1 WHERE id <= 250000")
            a += timed("DELETE FROM bd WHERE id <= 250000")
            con.execute(schema)
            con.execute("CHECKPOINT")
            e = timed(EVENTS)
            s = timed("INSERT INTO es_streams SELECT 'public.bench_drain', '[' || g || ']', g, 1, "
                      "'insert' FROM generate_series(1, 500000) g")
            s += timed("UPDATE es_streams SET last_position = last_position + 500000, "
                       "last_version = last_version + 1, last_event_kind = 'update' "
                       "WHERE aggregate_id <= '[4'")
            rows.append((a, e, s))
            print(f"round {r + 1}: table {a:.2f} s; event store {e + s:.2f} s "
                  f"(es_events {e:.2f}, es_streams {s:.2f}); ratio {a / (e + s):.2f}", flush=True)
        med = [statistics.median(x[i] for x in rows) for i in range(3)]
        print(f"median: table {med[0]:.2f} s, event store {med[1] + med[2]:.2f} s "
              f"(es_events {med[1]:.2f}, es_streams {med[2]:.2f})")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
