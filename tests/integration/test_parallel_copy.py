"""The parallel copy of one table by ranges of its pages (issue 11): resumed by range after
kill -9 of the sync worker, and split across the partitions of a table published through
its root.

NOTES: the sqlite destination copies by range. Each range this process commits is logged
("range copied table=T part=P rows=R"); a sync worker that takes up a copy logs "copy
resumed table=T ... ranges_done=D/N rows_kept=R" first. The tests read those lines and the
state store (state.db copy_ranges), and end with the destination compared to the source
row by row.
"""

import os
import re
import sqlite3
import time

import pytest

from pipeline import WaitTimeout, alive_walrelay_pids, deadline, wait_equal
from workload import BackgroundWriter, create_mixed_table, publish

RANGE_RE = re.compile(r"range copied table=(\S+) part=(\d+) rows=(\d+)")
RESUMED_RE = re.compile(r"copy resumed table=(\S+) .*ranges_done=(\d+)/(\d+) rows_kept=(\d+)")
STARTED_RE = re.compile(r"copy started table=(\S+) .*ranges=(\d+) connections=(\d+)")


def _ranges(text, table):
    """[(part, rows)] of the "range copied" lines of table in text, in order."""
    return [(int(m.group(2)), int(m.group(3))) for m in RANGE_RE.finditer(text)
            if m.group(1) == table]


def _plan_rows(p, state_db, relid):
    """Ranges of relid's copy plan in the pipeline's state store (sqlite or postgres)."""
    if state_db is None:
        con = sqlite3.connect("file:%s?mode=ro" % os.path.join(p.dir, "state.db"), uri=True)
        try:
            return con.execute("SELECT count(*) FROM copy_ranges WHERE relid = ?",
                               (relid,)).fetchone()[0]
        finally:
            con.close()
    return state_db.scalar("SELECT count(*) FROM walrelay_state.copy_ranges "
                           "WHERE pipeline = %s AND relid = %s", [p.name, relid])


@pytest.mark.parametrize("state_store", ["sqlite", "postgres", "plugin"], indirect=True)
def test_kill_sync_worker_mid_range_resumes(db, pipelines, tmp_path, monkeypatch, state_store,
                                            request):
    """kill -9 of the sync worker while a range is being written, writers running: the next
    worker imports the snapshot the supervisor holds, keeps the committed ranges (not one of
    their rows is copied again) and copies the others; the table ends equal. The plan is in
    the state store (sqlite, postgres); a plugin store keeps none (ABI version 1), and there
    the next worker copies the table again from scratch."""
    keeps_plan = not (state_store or "").startswith("plugin:")
    create_mixed_table(db, "big", 300_000)
    publish(db, "pub", ["big"])
    relid = db.relid("big")
    p = pipelines()
    p.init(db.conninfo, "pub", config={
        "sync": {"copy_batch_rows": "5000", "max_copy_connections_per_table": "2"},
        "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "1000"}})
    fpdir = tmp_path / "fp"
    os.makedirs(fpdir, exist_ok=True)
    writer = BackgroundWriter(db, ["big"], (1, 300_000), 1_000_000, per_txn=5, pause=0.01)
    writer.start()
    try:
        writer.wait_commits(5)
        # every batch read (mid_copy) and every batch written that does not end a range
        # (mid_range, inside the range's transaction) sleeps: a range takes a second or so,
        # long enough to kill the worker in the middle of one
        monkeypatch.setenv("WALRELAY_FAILPOINTS",
                           "sync.mid_copy=sleep(100);sync.mid_range=sleep(100)")
        monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
        try:
            p.start()
        finally:
            monkeypatch.delenv("WALRELAY_FAILPOINTS")
            monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")

        def one_range_done():
            text = p.log_text()
            m = STARTED_RE.search(text)
            if not m:
                return None
            n = int(m.group(2))
            if n < 3:
                raise WaitTimeout("the copy was planned in %d ranges, the test needs 3 or more" % n)
            done = _ranges(text, "public.big")
            if len(done) >= n:
                raise WaitTimeout("the copy finished before the kill")
            st = p.status()
            w = p.worker("sync", relid, st)
            t = p.tables(st)["public.big"]
            # a range committed, and rows of the next one written since
            if done and w and w["pid"] and t["rows_copied"] > sum(r for _, r in done):
                return int(w["pid"]), n
            return None

        pid, nranges = p.wait_until(one_range_done, 180, "a range committed and the next begun",
                                    interval=0.05)
        before = _ranges(p.log_text(), "public.big")
        p.kill_worker(pid)

        def resumed():
            text = p.log_text()
            if not keeps_plan:
                started = list(STARTED_RE.finditer(text))
                return started[1] if len(started) > 1 else None
            return RESUMED_RE.search(text)

        m = p.wait_until(resumed, 120, "the restarted sync worker taking the copy up")
        assert m.group(1) == "public.big"
        p.wait_all_ready(["public.big"], timeout=600)
        writer.wait_commits(20)
    finally:
        writer.stop()
    wait_equal(db.server, db.name, p, ["public.big"], timeout=300)
    if not keeps_plan:
        # from scratch: nothing resumed, every range copied again
        assert "copy resumed" not in p.log_text()
        return
    done_at_restart, n, kept = int(m.group(2)), int(m.group(3)), int(m.group(4))

    text = p.log_text()
    first = dict(before)
    after_restart = text[text.index(m.group(0)):]
    second = dict(_ranges(after_restart, "public.big"))
    print("\nranges %d; before the kill %s; after it %s; kept %d rows"
          % (nranges, sorted(first), sorted(second), kept))
    assert n == nranges
    assert first and second, (first, second)
    # nothing the first worker committed is copied again, and every range is copied once
    assert not set(first) & set(second), (first, second)
    # a range committed just before the kill may not have been logged: the destination says
    assert done_at_restart >= len(first)
    assert len(second) == n - done_at_restart
    assert set(first) | set(second) <= set(range(n))
    assert kept >= sum(first.values())
    if done_at_restart == len(first):
        assert kept == sum(first.values())
    fin = re.findall(r"copy finished table=public.big rows=(\d+) rows_this_run=(\d+)", after_restart)
    assert fin, "no copy finished line after the restart"
    total, this_run = map(int, fin[-1])
    assert this_run == sum(second.values()) and total == kept + this_run, (fin, kept, second)
    # the plan is gone from the state store once the copy is over
    state_db = request.getfixturevalue("state_db") if state_store else None
    p.wait_until(lambda: _plan_rows(p, state_db, relid) == 0, 30,
                 "the copy plan removed from the state store")
    assert p.log_contains("copy snapshot held table=public.big")


def test_partitioned_root_by_range(db, pipelines):
    """A table published through its root is copied by range over its partitions, the big
    one split into several ranges, with the publication's row filter; equal at the end."""
    db.execute("CREATE TABLE meas (id bigint, region text, v int, pad text, "
               "PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    db.execute("CREATE TABLE meas_big PARTITION OF meas FOR VALUES IN ('big')")
    db.execute("CREATE TABLE meas_small PARTITION OF meas FOR VALUES IN ('small')")
    db.execute("CREATE TABLE meas_empty PARTITION OF meas FOR VALUES IN ('none')")
    db.execute("CREATE TABLE meas_rest PARTITION OF meas DEFAULT")
    db.execute("INSERT INTO meas SELECT g, 'big', g % 10, repeat('x', 150) "
               "FROM generate_series(1, 200000) g")
    db.execute("INSERT INTO meas SELECT g, 'small', g % 10, 'y' FROM generate_series(1, 500) g")
    db.execute("INSERT INTO meas SELECT g, 'r' || (g % 3), g % 10, NULL "
               "FROM generate_series(1, 300) g")
    db.execute("CREATE PUBLICATION pub FOR TABLE meas WHERE (v <> 3) "
               "WITH (publish_via_partition_root = true)")
    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"max_copy_connections_per_table": "3"}})
    p.start()
    p.wait_all_ready(["public.meas"], timeout=300)
    db.execute("INSERT INTO meas VALUES (900001, 'small', 1, 'after'), (900002, 'big', 3, 'out')")
    wait_equal(db.server, db.name, p, ["public.meas"], timeout=180,
               where={"public.meas": "v <> 3"})
    m = STARTED_RE.search(p.log_text())
    assert m and m.group(1) == "public.meas", m
    done = _ranges(p.log_text(), "public.meas")
    # meas_big's 200,000 rows of ~170 bytes fill more than one range; each partition has one
    assert int(m.group(2)) >= 5 and len(done) == int(m.group(2)), (m.group(0), done)
    assert sum(r for _, r in done) == db.scalar("SELECT count(*) FROM meas WHERE v <> 3") - 1
    assert sum(1 for _, r in done if r == 0) >= 1  # meas_empty


def test_kill_supervisor_mid_range_starts_over(db, pipelines, tmp_path, monkeypatch):
    """kill -9 of the supervisor in the middle of a parallel copy: the snapshot it held is
    gone with it, its sync worker exits on the channel's end (dropping its slot), and the
    next `walrelay run` copies the table again from scratch (no "copy resumed"); equal."""
    create_mixed_table(db, "big", 150_000)
    publish(db, "pub", ["big"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"copy_batch_rows": "5000"}})
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "sync.mid_copy=sleep(200)")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(tmp_path / "fp"))
    os.makedirs(tmp_path / "fp", exist_ok=True)
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")
    p.wait_until(lambda: _ranges(p.log_text(), "public.big"), 120, "a range committed")
    assert p.log_contains("copy snapshot held table=public.big")
    st = p.status()
    pids = p.worker_pids(st)
    p.kill()
    end = deadline(30)
    while alive_walrelay_pids(pids):  # each exits on its channel's end
        assert time.monotonic() < end, "workers %s alive after the supervisor's kill -9" % (
            alive_walrelay_pids(pids))
        time.sleep(0.1)
    offset = len(p.log_text())
    p.start()
    p.wait_all_ready(["public.big"], timeout=300)
    after = p.log_text()[offset:]
    assert "copy resumed" not in after, after[-3000:]
    m = STARTED_RE.search(after)
    assert m and m.group(1) == "public.big", after[-3000:]
    wait_equal(db.server, db.name, p, ["public.big"], timeout=180)
    assert db.slots("walrelay_%s_s" % p.name) == []
