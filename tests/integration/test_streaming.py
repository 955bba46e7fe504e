"""Large transactions streamed with pgoutput protocol version 2 (issue 11, item 4).

NOTES: the server's logical_decoding_work_mem is set to its minimum (64kB) for these
tests, so a transaction of a few thousand rows is streamed in many blocks while it runs.
The apply worker writes a streamed transaction into the open destination transaction as
it arrives (sqlite), with a destination savepoint per subtransaction; it spools one to
DIR/spool when that cannot be exact (a second streamed transaction at the same time, an
abort after other transactions were written behind it: then it restarts the stream).
worker_apply/apply.c "STREAMED TRANSACTIONS" has the design. Every test ends with the
destination equal to the source row by row, and checks from the log which path ran.
"""

import os
import re
import threading
import time

import pytest

from pipeline import SCALE, alive_walrelay_pids, deadline, wait_equal
from workload import BackgroundWriter, create_mixed_table, publish


@pytest.fixture
def small_decoding_mem(pg):
    """logical_decoding_work_mem = 64kB on the shared server for one test (walsenders read
    it at the reload)."""
    pg.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    pg.execute("SELECT pg_reload_conf()")
    yield
    pg.execute("ALTER SYSTEM RESET logical_decoding_work_mem")
    pg.execute("SELECT pg_reload_conf()")


def _setup(db, pipelines, config=None, tables=("s",)):
    for t in tables:
        db.execute("CREATE TABLE %s (id bigint PRIMARY KEY, v int NOT NULL, t text)" % t)
        db.execute("INSERT INTO %s SELECT g, g, 'row ' || g FROM generate_series(1, 100) g" % t)
    publish(db, "pub", list(tables))
    p = pipelines()
    p.init(db.conninfo, "pub", config=config)
    p.start()
    p.wait_all_ready(["public.%s" % t for t in tables])
    return p


def _insert(cur, table, first, last, tag="big"):
    cur.execute("INSERT INTO %s SELECT g, g %% 97, '%s ' || g || repeat('x', 40)"
                " FROM generate_series(%d, %d) g" % (table, tag, first, last))


def _small_commits(db, table, first, n):
    """n single-row transactions that commit at once (between the big one's blocks)."""
    for i in range(n):
        db.execute("INSERT INTO %s VALUES (%d, 1, 'small')" % (table, first + i))


def _count(p, text):
    return len(re.findall(re.escape(text), p.log_text()))


def _wait_log(p, text, timeout=60):
    p.wait_until(lambda: text in p.log_text(), timeout, "%r in the log" % text)


def test_savepoints_rolled_back_inside_a_streamed_transaction(db, pipelines, small_decoding_mem):
    p = _setup(db, pipelines)
    with db.connect(autocommit=False) as c:
        cur = c.cursor()
        _insert(cur, "s", 1_000, 4_000)
        cur.execute("SAVEPOINT a")
        _insert(cur, "s", 4_001, 7_000, "gone")
        cur.execute("UPDATE s SET v = -1 WHERE id <= 2000")
        cur.execute("ROLLBACK TO SAVEPOINT a")
        cur.execute("SAVEPOINT b")
        _insert(cur, "s", 7_001, 9_000)
        cur.execute("SAVEPOINT c")
        cur.execute("DELETE FROM s WHERE id <= 3000")
        cur.execute("ROLLBACK TO SAVEPOINT c")
        cur.execute("RELEASE SAVEPOINT b")
        cur.execute("UPDATE s SET t = 'updated' WHERE id % 7 = 0")
        cur.execute("SAVEPOINT d")
        cur.execute("DELETE FROM s WHERE id % 5 = 0")
        cur.execute("RELEASE SAVEPOINT d")
        c.commit()
    wait_equal(db.server, db.name, p, ["public.s"])
    assert _count(p, "written as it arrives") >= 1, p.log_tail(40)
    assert _count(p, "streamed transaction committed") >= 1, p.log_tail(40)
    assert _count(p, "restarting the stream") == 0, p.log_tail(40)
    # the rolled-back rows never reached the destination for good
    with p.dest() as d:
        assert d.execute("SELECT count(*) FROM s WHERE t LIKE 'gone%' OR v = -1").fetchone()[0] == 0


def test_aborted_streamed_transaction(db, pipelines, small_decoding_mem):
    p = _setup(db, pipelines)
    with db.connect(autocommit=False) as c:
        cur = c.cursor()
        _insert(cur, "s", 1_000, 6_000, "gone")
        cur.execute("UPDATE s SET v = -1")
        _wait_log(p, "written as it arrives")
        c.rollback()
    _small_commits(db, "s", 500, 3)
    wait_equal(db.server, db.name, p, ["public.s"])
    assert _count(p, "streamed transaction aborted, rolled back") == 1, p.log_tail(40)
    with p.dest() as d:
        assert d.execute("SELECT count(*) FROM s").fetchone()[0] == 103


@pytest.mark.parametrize("end", ["commit", "abort", "savepoint_rollback"])
def test_small_transactions_commit_between_the_chunks(db, pipelines, small_decoding_mem, end):
    """Other transactions commit between the blocks of the streamed one: they are written
    into the same open destination transaction behind it, in stream order. A commit
    commits them together; an abort (or a subtransaction's) behind them cannot be undone
    in place, so the stream restarts with the big transaction spooled."""
    p = _setup(db, pipelines, tables=("s", "r"))
    with db.connect(autocommit=False) as c:
        cur = c.cursor()
        _insert(cur, "s", 1_000, 4_000)
        _wait_log(p, "written as it arrives")
        _small_commits(db, "r", 1_000, 5)
        _small_commits(db, "s", 100_000, 5)
        cur.execute("SAVEPOINT a")
        _insert(cur, "s", 4_001, 8_000, "sp")
        _small_commits(db, "r", 2_000, 5)
        if end == "savepoint_rollback":
            cur.execute("ROLLBACK TO SAVEPOINT a")
        _insert(cur, "s", 8_001, 10_000)
        _small_commits(db, "r", 3_000, 5)
        if end == "abort":
            c.rollback()
        else:
            c.commit()
    _small_commits(db, "r", 4_000, 2)
    wait_equal(db.server, db.name, p, ["public.s", "public.r"])
    restarts = _count(p, "restarting the stream")
    if end == "commit":
        assert restarts == 0, p.log_tail(40)
        m = re.search(r"streamed transaction committed .* other_changes=(\d+)", p.log_text())
        assert m and int(m.group(1)) > 0, "no other transaction was written behind it" + \
            p.log_tail(40)
    else:
        assert restarts == 1, p.log_tail(40)
        if end == "savepoint_rollback":
            assert _count(p, "applying a spooled streamed transaction") >= 1, p.log_tail(40)
    with p.dest() as d:
        assert d.execute("SELECT count(*) FROM r").fetchone()[0] == 117


def test_two_streamed_transactions_at_once(db, pipelines, small_decoding_mem):
    """The second of two concurrent large transactions is spooled (one at a time is written
    as it arrives); the spool loses a rolled-back subtransaction's tail, an aborted one is
    dropped whole."""
    p = _setup(db, pipelines)
    c1 = db.connect(autocommit=False)
    c2 = db.connect(autocommit=False)
    c3 = db.connect(autocommit=False)
    try:
        k1, k2, k3 = c1.cursor(), c2.cursor(), c3.cursor()
        _insert(k1, "s", 10_000, 13_000, "one")
        _wait_log(p, "written as it arrives")
        _insert(k2, "s", 20_000, 23_000, "two")
        k2.execute("SAVEPOINT a")
        _insert(k2, "s", 23_001, 26_000, "gone")
        _insert(k3, "s", 30_000, 33_000, "three")
        _wait_log(p, "spooled until its commit")
        k2.execute("ROLLBACK TO SAVEPOINT a")
        _insert(k2, "s", 26_001, 27_000, "two")
        _insert(k1, "s", 13_001, 14_000, "one")
        c3.rollback()
        c2.commit()
        c1.commit()
    finally:
        for c in (c1, c2, c3):
            c.close()
    wait_equal(db.server, db.name, p, ["public.s"])
    assert _count(p, "applying a spooled streamed transaction") >= 1, p.log_tail(40)
    assert _count(p, "spooled streamed transaction aborted") >= 1, p.log_tail(40)
    with p.dest() as d:
        assert d.execute("SELECT count(*) FROM s WHERE t LIKE 'gone%' OR t LIKE 'three%'"
                         ).fetchone()[0] == 0
    assert not os.listdir(os.path.join(p.dir, "spool")), "spool files left behind"


def _start_with_failpoints(p, monkeypatch, spec, fpdir):
    os.makedirs(fpdir, exist_ok=True)
    monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")


def _wait_apply_restarted(p, old_pid):
    def restarted():
        w = p.worker("apply")
        return w and w["pid"] and int(w["pid"]) != old_pid and w["state"] == "running" and w
    p.wait_until(restarted, 60, "apply worker restarted")


@pytest.mark.parametrize("where", ["mid_stream", "apply.stream_commit",
                                   "apply.stream_committed"])
def test_kill9_in_the_middle_of_a_streamed_transaction(db, pipelines, tmp_path, monkeypatch,
                                                       small_decoding_mem, where):
    """kill -9 of the apply worker while a streamed transaction is half written into the
    open destination transaction, just before it commits, and just after (before the slot
    heard of it: the replay must skip it by the key). Small transactions keep committing
    all along. Equal at the end, no row twice (primary keys), no spool left."""
    create_mixed_table(db, "r", 200)
    db.execute("CREATE TABLE s (id bigint PRIMARY KEY, v int NOT NULL, t text)")
    publish(db, "pub", ["r", "s"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"retry": {"backoff_initial_ms": "200"}})
    fpdir = tmp_path / "fp"
    if where == "mid_stream":
        p.start()
    else:
        _start_with_failpoints(p, monkeypatch, "%s=abort" % where, fpdir)
    p.wait_all_ready(["public.r", "public.s"])
    writer = BackgroundWriter(db, ["r"], (1, 200), 1_000_000, per_txn=2, seed=5, pause=0.01)
    writer.start()
    try:
        writer.wait_commits(5, 60 * SCALE)
        old = int(p.worker("apply")["pid"])
        with db.connect(autocommit=False) as c:
            cur = c.cursor()
            _insert(cur, "s", 1, 3_000)
            cur.execute("SAVEPOINT a")
            _insert(cur, "s", 3_001, 5_000, "sp")
            if where == "mid_stream":
                _wait_log(p, "written as it arrives")
                p.killed_pids.add(old)
                os.kill(old, 9)
                end = deadline(20)
                while alive_walrelay_pids([old]):
                    assert time.monotonic() < end, "apply worker survived kill -9"
                    time.sleep(0.05)
                # rolled back after the crash: the replay never writes it
                cur.execute("ROLLBACK TO SAVEPOINT a")
            else:
                # the writer's transactions are written behind it: a rollback here would
                # restream (spool), not reach the failpoint of the direct path
                cur.execute("RELEASE SAVEPOINT a")
            _insert(cur, "s", 5_001, 8_000)
            c.commit()
        if where != "mid_stream":
            marker = os.path.join(str(fpdir), where)
            pid = p.wait_until(lambda: int(open(marker).read().strip()), 90,
                               "failpoint %s fired" % where)
            assert pid == old
            p.killed_pids.add(pid)
        _wait_apply_restarted(p, old)
        writer.wait_commits(10, 60 * SCALE)
    finally:
        writer.stop()
    wait_equal(db.server, db.name, p, ["public.r", "public.s"], timeout=180)
    if where == "apply.stream_committed":
        # the replay came before the slot confirmed it: spooled and skipped by its key
        assert _count(p, 'reason="replaying after a restart"') >= 1, p.log_tail(60)
    spool = os.path.join(p.dir, "spool")
    assert not os.path.isdir(spool) or not os.listdir(spool), os.listdir(spool)


def test_streaming_off_still_applies_large_transactions(db, pipelines, small_decoding_mem):
    """[source] streaming = 0: protocol version 1, the server spills and sends at commit."""
    p = _setup(db, pipelines, config={"source": {"streaming": "0"}})
    with db.connect(autocommit=False) as c:
        cur = c.cursor()
        _insert(cur, "s", 1_000, 6_000)
        cur.execute("SAVEPOINT a")
        _insert(cur, "s", 6_001, 7_000, "gone")
        cur.execute("ROLLBACK TO SAVEPOINT a")
        c.commit()
    wait_equal(db.server, db.name, p, ["public.s"])
    assert "proto_version=1" in p.log_text(), p.log_tail(40)
    assert _count(p, "large transaction streamed") == 0, p.log_tail(40)
