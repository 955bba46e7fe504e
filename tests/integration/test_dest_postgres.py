"""The postgres destination (issue 7) against a second PostgreSQL 15 cluster.

NOTES: the target is the session's pg_target cluster (tests/integration/conftest.py), one
fresh database per test (target_db); the pipelines of this file write there
(`--destination postgres:CONNINFO`). Tables are compared as text, exactly:
SELECT t::text FROM t ORDER BY key on the source and on the target (compare_pg_table).
"""

import pytest

from pipeline import wait_equal
from workload import BackgroundWriter, create_mixed_table, create_toast_table, publish

pytestmark = pytest.mark.parametrize("destination", ["postgres"], indirect=True)


def test_copy_and_stream_mixed(db, pipelines, target_db):
    create_mixed_table(db, "a", 5_000)
    create_mixed_table(db, "b", 100)
    db.execute("CREATE SCHEMA s2")
    create_mixed_table(db, "s2.c", 300)
    publish(db, "pub", ["a", "b", "s2.c"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.a", "public.b", "s2.c"])
    wait_equal(db.server, db.name, p, ["public.a", "public.b", "s2.c"])
    w = BackgroundWriter(db, ["a", "b", "s2.c"], (1, 100), 1_000_000, per_txn=7, seed=5)
    w.start()
    try:
        w.wait_commits(100)
    finally:
        w.stop()
    wait_equal(db.server, db.name, p, ["public.a", "public.b", "s2.c"])
    # the bookkeeping sits in the schema walrelay, keyed by pipeline
    streams = [r[0] for r in target_db.execute(
        "SELECT stream FROM walrelay.progress WHERE pipeline = %s", [p.name])]
    assert streams == ["apply"], streams
