"""End to end: initial copy, streaming, writes during the copy, crashes, stop/resume.

Every test ends with the destination compared to the source row by row (pipeline.py
compare_table) and, through the `pipelines` fixture, with no walrelay process left and
no sync slot left once the tables were ready.
"""

import os
import sqlite3
import re

from pipeline import WaitTimeout, compare_tables, wait_equal
from workload import (BackgroundWriter, MixedWriter, create_mixed_table, create_specials_table,
                      create_toast_table, publish)


def wait_only_apply_slot(p, db, timeout=30):
    """The sync slots go (each sync worker drops its own after SyncDone, which can be a
    moment after the table became ready); the apply slot stays."""
    want = ["walrelay_%s" % p.name]
    p.wait_until(lambda: db.slots() == want, timeout,
                 "only the apply slot %s in pg_replication_slots (now: %s)" % (want[0], db.slots()))


def test_initial_copy_mixed_types(db, pipelines):
    db.execute("CREATE SCHEMA sales")
    create_mixed_table(db, "public.big", 100_000)
    create_specials_table(db, "public.specials")
    create_mixed_table(db, "sales.orders", 1_000, first=500)
    tables = ["public.big", "public.specials", "sales.orders"]
    publish(db, "pub", tables)

    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    st = p.wait_all_ready(tables, timeout=180)

    assert st["pipeline"] == p.name
    assert st["state"] == "running", st
    diffs = compare_tables(db.server, db.name, p, tables)
    assert not diffs, "\n".join(diffs)
    for key, t in p.tables(st).items():
        assert t["relid"] == db.relid(key), t
        assert t["rows_copied"] == db.count(key), t
        assert t["attempts"] == 0, t
    with p.dest() as d:
        names = {r[0] for r in d.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"big", "specials", "sales__orders", "_walrelay_progress"} <= names, names
    # state.db records where each source table lands (read-only: the supervisor owns it)
    st_db = sqlite3.connect("file:%s?mode=ro" % os.path.join(p.dir, "state.db"), uri=True)
    try:
        mappings = dict(st_db.execute("SELECT relid, dest_name FROM table_mappings"))
    finally:
        st_db.close()
    assert mappings == {db.relid("public.big"): "big", db.relid("public.specials"): "specials",
                        db.relid("sales.orders"): "sales__orders"}, mappings
    wait_only_apply_slot(p, db)


def test_streaming_changes(db, pipelines):
    create_mixed_table(db, "a", 2_000)
    create_mixed_table(db, "b", 2_000)
    create_toast_table(db, "docs", 50)
    tables = ["public.a", "public.b", "public.docs"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)
    events_before = p.status().get("events", 0)

    # 200 transactions of 50 mixed statements: 10,000 changes
    with db.connect() as conn:
        w = MixedWriter(conn, ["a", "b"], (1, 2_000), 10_000, seed=7, toast_table="docs")
        for _ in range(200):
            w.transaction(50)
    assert w.statements == 10_000
    # some UPDATEs of docs left the big body unchanged (sent as unchanged TOAST)
    assert db.scalar("SELECT count(*) FROM docs WHERE n > 0") > 0

    wait_equal(db.server, db.name, p, tables, timeout=180)
    st = p.status()
    assert st["events"] > events_before, st
    assert all(t["phase"] == "ready" for t in st["tables"]), st


def test_truncate_is_replicated(db, pipelines):
    create_mixed_table(db, "t", 500)
    create_mixed_table(db, "u", 10)
    publish(db, "pub", ["t", "u"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.t", "public.u"])
    db.execute("BEGIN; INSERT INTO u SELECT id + 100, name FROM u; TRUNCATE t; "
               "INSERT INTO t (id, name) VALUES (1, 'after truncate'); COMMIT")
    wait_equal(db.server, db.name, p, ["public.t", "public.u"])
    with p.dest() as d:
        assert d.execute('SELECT count(*) FROM "t"').fetchone()[0] == 1


def test_writes_during_copy(db, pipelines):
    create_mixed_table(db, "big", 200_000)
    create_mixed_table(db, "small", 100)
    tables = ["public.big", "public.small"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")

    writer = BackgroundWriter(db, ["big", "small"], (1, 200_000), 1_000_000, per_txn=5)
    writer.start()
    try:
        writer.wait_commits(20)
        commits_at_start = writer.commits
        p.start()
        seen = set()

        def big_ready():
            t = p.tables()["public.big"]
            seen.add(t["phase"])
            return t["phase"] == "ready"

        p.wait_until(big_ready, 300, "public.big ready", interval=0.05)
        commits_during_copy = writer.commits - commits_at_start
        writer.wait_commits(20)  # and some more once it is ready
    finally:
        writer.stop()
    assert commits_during_copy > 0, "the writer made no commit while the table was copied"
    assert "datasync" in seen or "finishedcopy" in seen or "syncwait" in seen or "catchup" in seen, (
        "never saw public.big being copied (phases seen: %s)" % sorted(seen))
    p.wait_all_ready(tables)
    wait_equal(db.server, db.name, p, tables, timeout=180)


def test_kill_apply_worker(db, pipelines):
    create_mixed_table(db, "a", 5_000)
    create_mixed_table(db, "b", 5_000)
    tables = ["public.a", "public.b"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)

    writer = BackgroundWriter(db, ["a", "b"], (1, 5_000), 1_000_000, per_txn=10)
    writer.start()
    try:
        writer.wait_commits(50)
        # mid-stream: the apply worker has applied some of the writer's changes
        p.wait_until(lambda: p.status()["events"] > 0, 60, "apply worker applied events")
        apply = p.worker("apply")
        assert apply and apply["pid"], p.last_status
        old_pid, old_restarts = int(apply["pid"]), int(apply["restarts"])
        p.kill_worker(old_pid)

        def restarted():
            w = p.worker("apply")
            return (w and w["pid"] and int(w["pid"]) != old_pid
                    and int(w["restarts"]) > old_restarts and w["state"] == "running") and w

        p.wait_until(restarted, 60, "apply worker restarted after kill -9 of pid %d" % old_pid)
        writer.wait_commits(50)  # writes keep flowing into the new apply worker
    finally:
        writer.stop()
    wait_equal(db.server, db.name, p, tables, timeout=180)
    assert p.status()["state"] == "running"


def test_kill_sync_worker_mid_copy(db, pipelines):
    create_mixed_table(db, "big", 500_000)
    create_mixed_table(db, "small", 100)
    tables = ["public.big", "public.small"]
    publish(db, "pub", tables)
    relid = db.relid("big")
    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"copy_batch_rows": "2000"}})

    writer = BackgroundWriter(db, ["big", "small"], (1, 500_000), 1_000_000, per_txn=5, pause=0.01)
    writer.start()
    try:
        p.start()

        def copying():
            st = p.status()
            t = p.tables(st)["public.big"]
            w = p.worker("sync", relid, st)
            if t["phase"] == "datasync" and t["rows_copied"] > 0 and w and w["pid"]:
                return w
            if t["phase"] not in ("init", "datasync"):
                raise WaitTimeout("the copy finished before the kill: %s" % t)
            return None

        w = p.wait_until(copying, 120, "public.big in datasync with a sync worker", interval=0.05)
        old_pid, old_restarts = int(w["pid"]), int(w["restarts"])
        p.kill_worker(old_pid)

        def restarted():
            w = p.worker("sync", relid)
            return w and w["pid"] and int(w["pid"]) != old_pid and int(w["restarts"]) > old_restarts

        p.wait_until(restarted, 60, "sync worker of public.big restarted after kill -9")
        p.wait_all_ready(tables, timeout=300)
    finally:
        writer.stop()
    wait_equal(db.server, db.name, p, tables, timeout=180)
    # the killed worker's slot too: no walrelay_<pipeline>_s% left
    wait_only_apply_slot(p, db, timeout=60)
    assert db.slots("walrelay_%s_s" % p.name) == []


COPY_STARTED = re.compile(r"copy (started|starting|begins|begin)", re.I)


def test_stop_and_resume_without_recopy(db, pipelines):
    create_mixed_table(db, "a", 20_000)
    create_mixed_table(db, "b", 300)
    tables = ["public.a", "public.b"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)
    with db.connect() as conn:
        MixedWriter(conn, ["a", "b"], (1, 20_000), 100_000, seed=11).transaction(200)
    wait_equal(db.server, db.name, p, tables)
    copied_before = {k: t["rows_copied"] for k, t in p.tables().items()}
    wait_only_apply_slot(p, db)

    assert p.stop() == 0, "walrelay run did not exit 0 after walrelay stop" + p.log_tail()
    # the apply slot survives a stop: it is where the next run resumes
    assert db.slots() == ["walrelay_%s" % p.name]

    with db.connect() as conn:
        w = MixedWriter(conn, ["a", "b"], (1, 20_000), 200_000, seed=12)
        for _ in range(20):
            w.transaction(25)
    p.start()
    phases_seen = set()

    def caught_up_so_far():
        tabs = p.tables()
        for t in tabs.values():
            phases_seen.add(t["phase"])
        return tabs

    caught_up_so_far()
    wait_equal(db.server, db.name, p, tables, timeout=120)
    caught_up_so_far()
    assert phases_seen == {"ready"}, "tables left ready after a restart: %s" % phases_seen
    for k, t in p.tables().items():
        # not copied again: no copy progress in this run (0), or the persisted count
        assert t["rows_copied"] in (0, copied_before[k]), (k, t, copied_before[k])
    assert not COPY_STARTED.search(p.log_text(since_start=True)), (
        "the second run copied again:" + p.log_tail())


def test_schema_change_followed_while_others_flow(db, pipelines):
    """ADD COLUMN while streaming: the destination table gets the column (the rows that
    existed read NULL, as in the source) without leaving Ready, and the other table keeps
    streaming. Every DDL case is in test_ddl.py."""
    create_mixed_table(db, "t", 100)
    create_mixed_table(db, "u", 100)
    tables = ["public.t", "public.u"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)
    db.execute("ALTER TABLE t ADD COLUMN extra int")
    db.execute("INSERT INTO t (id, extra) VALUES (100000, 1)")
    db.execute("UPDATE t SET extra = 2 WHERE id = 5")
    db.execute("INSERT INTO u (id, name) VALUES (100000, 'still flowing')")
    wait_equal(db.server, db.name, p, tables)
    with p.dest() as d:
        cols = [r[0] for r in d.execute("SELECT name FROM pragma_table_info('t') ORDER BY cid")]
        assert cols[-1] == "extra", cols
        assert d.execute("SELECT count(*) FROM t WHERE extra IS NULL").fetchone()[0] == 99
    assert p.log_contains("schema change followed table=public.t "), p.log_tail()
    assert not p.log_contains("copying the table again"), p.log_tail()
    st = p.status()
    assert all(t["phase"] == "ready" for t in p.tables(st).values()), st
    assert st["state"] == "running", st
