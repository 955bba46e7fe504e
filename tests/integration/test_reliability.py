"""The data-loss defects of issue 12, each reproduced first, then kept fixed.

NOTES: one test (or a few) per defect, named after it (test_d3_..., test_d7_...). Each
was written to fail on the code before its fix; the commit that fixes the defect says
which. Failpoints (common/failpoint.h) script kills at exact instructions, also in the
supervisor (sup.* points). The chaos suite (tests/chaos/) covers the same ground with
random faults; these tests pin each window down deterministically.
"""

import os
import re
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import Db
from pgserver import PgServer
from pipeline import SCALE, WaitTimeout, alive_walrelay_pids, deadline, edit_ini, wait_equal
from workload import create_mixed_table, publish


def sync_slot(p, relid):
    return "walrelay_%s_s%d" % (p.name, relid)


def phase_of(p, table):
    t = p.tables().get(table)
    return t["phase"] if t else None


def wait_phase(p, table, phases, timeout=60, what=None):
    phases = (phases,) if isinstance(phases, str) else tuple(phases)

    def pred():
        t = p.tables().get(table)
        return t if t and t["phase"] in phases else None

    return p.wait_until(pred, timeout, what or "%s in phase %s" % (table, "/".join(phases)))


def start_ready(db, pipelines, tables, config=None, rows=200, name=None):
    for t in tables:
        create_mixed_table(db, t, rows)
    publish(db, "pub", tables)
    p = pipelines(name)
    p.init(db.conninfo, "pub", config=config)
    p.start()
    p.wait_all_ready(["public.%s" % t for t in tables])
    return p


def start_with_failpoints(p, monkeypatch, spec, fpdir, wait_status=True):
    """wait_status=False for a failpoint that may kill the supervisor before it answers."""
    os.makedirs(str(fpdir), exist_ok=True)
    monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start(wait_status=wait_status)
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")


def wait_fired(p, fpdir, name, timeout=90):
    path = os.path.join(str(fpdir), name)

    def fired():
        with open(path) as f:
            txt = f.read().strip()
        assert txt, "marker %s still empty" % path
        return int(txt)

    return p.wait_until(fired, timeout, "failpoint %s to fire" % name)


def run_until_exit(p, db, timeout=120, forbid_slot=None):
    """Starts `walrelay run DIR` and waits for it to exit by itself; returns (exit code,
    log of this run). forbid_slot: a slot whose appearance fails the wait at once."""
    p.start(wait_status=False)
    end = deadline(timeout)
    while p.proc.poll() is None:
        if forbid_slot and forbid_slot in db.slots():
            raise AssertionError("slot %s was created%s" % (forbid_slot, p.log_tail()))
        assert time.monotonic() < end, "walrelay run did not exit%s" % p.log_tail()
        time.sleep(0.2)
    rc = p.proc.returncode
    p.kill()  # closes the log
    return rc, p.log_text(since_start=True)


# -- defect 3: a missing apply slot, a lost-slot re-copy interrupted, slot names -----------

def test_d3_missing_apply_slot_refuses_to_start(db, pipelines):
    """The apply slot disappeared while the pipeline was stopped and its tables were
    ready: every change made meanwhile is gone from the source. walrelay run must refuse
    with a clear message (exit 2), not create a new slot and stream on silently."""
    p = start_ready(db, pipelines, ["t"])
    assert p.stop() == 0
    slot = "walrelay_%s" % p.name
    db.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    db.execute("UPDATE t SET name = 'lost while the slot was missing' WHERE id <= 20")
    rc, log = run_until_exit(p, db, forbid_slot=slot)
    assert rc == 2, log
    assert 'replication slot "%s" is missing' % slot in log, log
    assert "public.t" in log and "walrelay drop" in log, log
    assert slot not in db.slots(), "a new apply slot was created: %s" % db.slots()


def test_d3_missing_apply_slot_recopy(db, pipelines):
    """With on_slot_lost = recopy a missing slot is handled like a lost one: every table is
    copied again, once, and the destination ends equal (nothing silently lost)."""
    p = start_ready(db, pipelines, ["t", "u"], config={"pipeline": {"on_slot_lost": "recopy"}})
    assert p.stop() == 0
    db.execute("SELECT pg_drop_replication_slot(%s)", ["walrelay_%s" % p.name])
    db.execute("UPDATE t SET name = 'lost while the slot was missing' WHERE id <= 20")
    db.execute("DELETE FROM u WHERE id <= 10")
    p.start()
    p.wait_until(lambda: p.log_contains("copying every table again"), 60, "the re-copy")
    p.wait_all_ready(["public.t", "public.u"])
    db.execute("UPDATE t SET qty = 5 WHERE id <= 50")
    wait_equal(db.server, db.name, p, ["public.t", "public.u"])


@pytest.fixture(scope="module")
def lossy_pg():
    """A server that keeps at most 1 MB of WAL for a slot (a slot is lost quickly)."""
    s = PgServer(extra_conf={"max_slot_wal_keep_size": "1MB", "min_wal_size": "32MB",
                             "max_wal_size": "64MB", "wal_keep_size": "0"}).start()
    yield s
    s.stop()


def lose_slot(db, slot):
    """Writes WAL the (stopped) pipeline does not consume until slot is lost."""
    db.execute("CREATE TABLE IF NOT EXISTS junk (id int, pad text)")
    end = deadline(120)
    while True:
        db.execute("INSERT INTO junk SELECT g, repeat(md5(g::text), 32) "
                   "FROM generate_series(1, 40000) g")
        db.execute("SELECT pg_switch_wal()")
        db.execute("CHECKPOINT")
        rows = db.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                          [slot])
        if rows and rows[0][0] == "lost":
            return
        assert time.monotonic() < end, "slot %s is not lost: %r" % (slot, rows)


def test_d3_slot_lost_recopy_supervisor_killed(lossy_pg, pipelines, tmp_path, monkeypatch):
    """kill -9 of the supervisor in the middle of on_slot_lost = recopy (the flag is
    persisted, the tables are not all set to init yet): the next run must finish the
    re-copy, never stream on from a new slot with tables marked as synced."""
    db = Db(lossy_pg, lossy_pg.create_database())
    p = None
    try:
        tables = ["public.a", "public.b", "public.c"]
        p = start_ready(db, pipelines, ["a", "b", "c"],
                        config={"pipeline": {"on_slot_lost": "recopy"}})
        assert p.stop() == 0
        db.execute("UPDATE a SET name = 'lost with the WAL' WHERE id <= 30")
        db.execute("DELETE FROM c WHERE id <= 10")
        lose_slot(db, "walrelay_%s" % p.name)
        fpdir = tmp_path / "fp"
        start_with_failpoints(p, monkeypatch, "sup.slot_lost_recopy=abort", fpdir,
                              wait_status=False)
        wait_fired(p, fpdir, "sup.slot_lost_recopy")
        p.proc.wait(30 * SCALE)
        p.kill()
        p.start()
        p.wait_all_ready(tables)
        db.execute("UPDATE b SET qty = 9 WHERE id <= 50")
        wait_equal(db.server, db.name, p, tables)
        assert p.log_contains("finishing the re-copy"), p.log_tail()
    finally:
        if p is not None and p.running():
            p.stop()
        lossy_pg.drop_database(db.name)


def test_d3_pipeline_name_like_a_sync_slot_refused(db, pipelines):
    """A pipeline named like another pipeline's sync slot (shop_s16390 beside shop) would
    have its apply slot dropped by shop as a leftover (and by walrelay drop shop): such
    names are refused at init and at run."""
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    relid = db.relid("t")
    a = pipelines()
    bad = "%s_s%d" % (a.name, relid)
    b = pipelines(bad)
    r = b.init(db.conninfo, "pub", check=False)
    assert r.rc == 2, r
    assert bad in r.text and "_s" in r.text and "--name" in r.text, r
    # a configuration written by hand (or by an older walrelay) is refused at run
    ok = pipelines()
    ok.init(db.conninfo, "pub")
    edit_ini(ok.conf_path, {"pipeline": {"name": bad}})
    r = ok.cmd("run", ok.dir, timeout=60)
    assert r.rc == 2, r
    assert bad in r.text and "sync slot" in r.text, r
    assert "walrelay_%s" % bad not in db.slots()


# -- defect 7: retry in one commit ---------------------------------------------------------

def test_d7_retry_is_one_commit(db, pipelines, tmp_path, monkeypatch):
    """retry of a table errored while streaming goes to init (its changes while errored
    were skipped). kill -9 of the supervisor right after retry persisted its decision:
    the table must not come back ready with those changes missing."""
    p = start_ready(db, pipelines, ["good", "other"])
    assert p.stop() == 0
    fpdir = tmp_path / "fp"
    start_with_failpoints(p, monkeypatch, "sup.retry_persisted=abort", fpdir)
    # the destination loses a row, then the source updates it: the apply worker errors it
    with sqlite3.connect(p.dest_path, timeout=30) as d:
        d.execute('DELETE FROM "good" WHERE id = 5')
    db.execute("UPDATE good SET name = 'updated' WHERE id = 5")
    t = wait_phase(p, "public.good", "errored", 60, "public.good errored by the apply worker")
    db.execute("UPDATE good SET qty = -1 WHERE id > 50")  # skipped while errored
    db.execute("DELETE FROM good WHERE id BETWEEN 20 AND 25")
    r = p.cmd("retry", p.dir, "public.good")  # the supervisor dies answering it
    wait_fired(p, fpdir, "sup.retry_persisted")
    p.proc.wait(30 * SCALE)
    p.kill()
    p.start()
    p.wait_all_ready(["public.good", "public.other"])
    wait_equal(db.server, db.name, p, ["public.good", "public.other"])


# -- defect 6: resync waits for the apply worker's acknowledgement -------------------------

def test_d6_resync_waits_for_the_apply_worker(db, pipelines, tmp_path, monkeypatch):
    """resync while the apply worker holds changes of the table it is about to write (here:
    it pauses before opening its destination batch, as a busy destination would make it
    wait): the new copy must not start until the apply worker has acknowledged init, or
    the rows it writes after the copy's truncate are there twice (a keyless table)."""
    db.execute("CREATE TABLE k (id int, v text)")
    db.execute("ALTER TABLE k REPLICA IDENTITY FULL")
    db.execute("INSERT INTO k SELECT g % 50, 'v' || g FROM generate_series(1, 500) g")
    create_mixed_table(db, "other", 100)
    publish(db, "pub", ["k", "other"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.k", "public.other"])
    assert p.stop() == 0
    fpdir = tmp_path / "fp"
    start_with_failpoints(p, monkeypatch, "apply.before_batch_begin=sleep(6000)", fpdir)
    with db.connect() as c:
        for i in range(20):
            c.execute("INSERT INTO k VALUES (%s, 'while the apply worker waits')", [1000 + i])
    wait_fired(p, fpdir, "apply.before_batch_begin")
    r = p.cmd("resync", p.dir, "k")
    assert r.rc == 0, r
    p.wait_until(lambda: p.log_contains("copy finished table=public.k", since_start=True), 120,
                 "the copy of k")
    db.execute("INSERT INTO k VALUES (7, 'after the resync')")
    p.wait_all_ready(["public.k", "public.other"], timeout=180)
    wait_equal(db.server, db.name, p, ["public.k", "public.other"], timeout=180)


# -- defect 4: destination names never collide ---------------------------------------------

def test_d4_destination_names_are_unique(db, pipelines):
    """"Users" and users, a.b and public."a__b": each source table gets its own destination
    table (the pipeline records the names it chose), none truncates another's rows."""
    db.execute('CREATE TABLE "Users" (id int PRIMARY KEY, v text)')
    db.execute("CREATE TABLE users (id int PRIMARY KEY, v text)")
    db.execute("CREATE SCHEMA a")
    db.execute("CREATE TABLE a.b (id int PRIMARY KEY, v text)")
    db.execute('CREATE TABLE public."a__b" (id int PRIMARY KEY, v text)')
    for t, n in (('"Users"', 100), ("users", 200), ("a.b", 300), ('public."a__b"', 400)):
        db.execute("INSERT INTO %s SELECT g, '%s ' || g FROM generate_series(1, %d) g"
                   % (t, t.replace("'", "''").replace('"', ""), n))
    db.execute('CREATE PUBLICATION pub FOR TABLE "Users", users, a.b, public."a__b"')
    tables = ["public.Users", "public.users", "a.b", "public.a__b"]
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)
    db.execute('UPDATE "Users" SET v = \'changed\' WHERE id <= 10')
    db.execute("DELETE FROM users WHERE id <= 20")
    db.execute("INSERT INTO a.b VALUES (1000, 'new')")
    db.execute('INSERT INTO public."a__b" VALUES (2000, \'new\')')
    wait_equal(db.server, db.name, p, tables)
    with p.dest() as d:
        names = [r[0] for r in d.execute("SELECT dest_name FROM _walrelay_tables")]
    assert len(names) == 4 and len({n.lower() for n in names}) == 4, names
    # new tables (no name recorded yet) are not taken for colliding ones and copied twice
    assert not p.log_contains("share destination table"), p.log_tail()
    # a table added to the publication while running gets a unique name too
    db.execute("CREATE TABLE \"USERS\" (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO \"USERS\" SELECT g, 'upper ' || g FROM generate_series(1, 50) g")
    db.execute('ALTER PUBLICATION pub ADD TABLE "USERS"')
    assert p.cmd("reload", p.dir).rc == 0
    p.wait_all_ready(tables + ["public.USERS"])
    db.execute('INSERT INTO "USERS" VALUES (51, \'later\')')
    db.execute("INSERT INTO users VALUES (5000, 'later')")
    wait_equal(db.server, db.name, p, tables + ["public.USERS"])


# -- defect 5: a re-copy drops what any process cached about the table ---------------------

def test_d5_stale_key_after_recopy_under_full(db, pipelines):
    """A REPLICA IDENTITY FULL table loses its primary key: it is copied again without it.
    The apply worker (the same process all along) must then match rows by every column,
    not by the key it had cached: a DELETE of one of two rows with the same id deletes
    one."""
    db.execute("CREATE TABLE f (id int PRIMARY KEY, v text)")
    db.execute("ALTER TABLE f REPLICA IDENTITY FULL")
    db.execute("INSERT INTO f SELECT g, 'v' || g FROM generate_series(1, 100) g")
    create_mixed_table(db, "other", 50)
    publish(db, "pub", ["f", "other"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.f", "public.other"])
    db.execute("DELETE FROM f WHERE id = 3")  # applied by key while f has one
    wait_equal(db.server, db.name, p, ["public.f", "public.other"])
    apply_pid = p.worker("apply")["pid"]
    db.execute("ALTER TABLE f DROP CONSTRAINT f_pkey")
    db.execute("INSERT INTO f VALUES (1000, 'x'), (1000, 'y'), (1001, 'z')")
    p.wait_until(lambda: p.log_contains("copy finished table=public.f", since_start=True), 120,
                 "f copied again after its key was dropped")
    p.wait_all_ready(["public.f", "public.other"])
    db.execute("DELETE FROM f WHERE v = 'x'")
    db.execute("UPDATE f SET v = 'y2' WHERE v = 'y'")
    db.execute("DELETE FROM f WHERE id = 5")
    wait_equal(db.server, db.name, p, ["public.f", "public.other"])
    assert p.worker("apply")["pid"] == apply_pid, "the apply worker restarted: test is moot"


# -- defect 8: catch-ups first, never wait on a worker that does not exist ------------------

def test_d8_catchup_without_its_worker_does_not_stop_the_pipeline(db, pipelines, tmp_path,
                                                                   monkeypatch):
    """Table t was granted catch-up when the pipeline was paused; on resume the only sync
    worker slot (max_table_sync_workers = 1) goes to u, a long copy. The apply worker must
    not wait for t's catch-up meanwhile (its worker does not exist): changes of the ready
    table r keep flowing."""
    create_mixed_table(db, "u", 6000)  # created first: the lower relid
    create_mixed_table(db, "r", 200)
    create_mixed_table(db, "t", 100)
    publish(db, "pub", ["r", "t"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"max_table_sync_workers": "1",
                                                "copy_batch_rows": "500"},
                                       "pipeline": {"publication_refresh_ms": "0"}})
    fpdir = tmp_path / "fp"
    # t's worker sleeps right after syncwait (the apply worker grants catch-up meanwhile);
    # u's copy pauses after each batch: 12 batches, about 20 s
    start_with_failpoints(p, monkeypatch,
                          "sync.after_syncwait=sleep(6000);sync.mid_copy=sleep(1700)", fpdir)
    wait_phase(p, "public.t", "catchup", 90, "t granted catch-up")
    r = p.cmd("pause", p.dir)
    assert r.rc == 0, r
    p.wait_until(lambda: not p.worker_pids(), 60, "every worker stopped by the pause")
    db.execute("ALTER PUBLICATION pub ADD TABLE u")
    assert p.cmd("reload", p.dir).rc == 0
    p.wait_until(lambda: "public.u" in p.tables(), 30, "u added")
    assert p.cmd("resume", p.dir).rc == 0
    wait_phase(p, "public.u", "datasync", 90, "u being copied")
    db.execute("UPDATE r SET name = 'while u is copied' WHERE id <= 10")
    lsn = db.current_wal_lsn()
    p.wait_flushed(lsn, timeout=20)
    assert phase_of(p, "public.u") == "datasync", "u's copy ended: the check proves nothing"
    p.wait_all_ready(["public.r", "public.t", "public.u"], timeout=180)
    wait_equal(db.server, db.name, p, ["public.r", "public.t", "public.u"])


# -- defect 1: source outages are waited out; a pipeline that cannot go on exits -----------

OUTAGE_CONFIG = {
    "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "2000", "worker_max_failures": "3",
              "table_error_retry_delay_ms": "1000", "table_error_retry_max_attempts": "2"},
    "sync": {"copy_batch_rows": "500"},
}


@pytest.fixture
def own_pg():
    """A server of its own, to be stopped and started by the test."""
    s = PgServer().start()
    yield s
    s.stop()


def test_d1_source_outage_is_waited_out(own_pg, pipelines, tmp_path, monkeypatch):
    """The source stops for 25 s (several times worker_max_failures' backoff) while the
    apply worker streams and a sync worker copies: both wait for it (status says so, with
    the last error), nothing is errored or degraded, and the pipeline resumes and ends
    equal once the source is back."""
    db = Db(own_pg, own_pg.create_database())
    p = None
    try:
        create_mixed_table(db, "r", 300)
        create_mixed_table(db, "big", 8000)
        publish(db, "pub", ["r"])
        p = pipelines()
        p.init(db.conninfo, "pub", config=OUTAGE_CONFIG)
        fpdir = tmp_path / "fp"
        start_with_failpoints(p, monkeypatch, "sync.mid_copy=sleep(1000)", fpdir)
        p.wait_all_ready(["public.r"])
        db.execute("ALTER PUBLICATION pub ADD TABLE big")
        assert p.cmd("reload", p.dir).rc == 0
        wait_phase(p, "public.big", "datasync", 60, "big being copied")
        db.execute("UPDATE r SET name = 'before the outage' WHERE id <= 10")
        own_pg.halt("fast")
        t0 = time.monotonic()
        seen = p.wait_until(
            lambda: (lambda st: st if st["state"] == "source_unavailable" and st["message"]
                     else None)(p.status()), 30, "status: source_unavailable with the error")
        assert "retrying" in seen["message"], seen
        while time.monotonic() - t0 < 25:
            st = p.status()
            assert st["state"] in ("source_unavailable", "running"), st
            assert all(t["phase"] != "errored" for t in st["tables"]), st
            time.sleep(1)
        own_pg.resume()
        db.execute("UPDATE r SET name = 'after the outage' WHERE id > 290")
        p.wait_all_ready(["public.r", "public.big"], timeout=180)
        wait_equal(db.server, db.name, p, ["public.r", "public.big"])
        st = p.status()
        assert st["state"] == "running" and not st["message"], st
        assert p.log_contains("the source is unavailable"), p.log_tail()
        assert p.log_contains("the source is back"), p.log_tail()
    finally:
        if p is not None and p.running():
            p.stop()


def test_d1_fatal_apply_failure_exits_run(db, pipelines, tmp_path, monkeypatch):
    """The apply worker exits 2 (a problem a person must fix): nothing can make progress
    by itself, so walrelay run exits 2 with the worker's message (a service manager sees
    it), instead of staying up 'degraded'."""
    p = start_ready(db, pipelines, ["t"])
    assert p.stop() == 0
    fpdir = tmp_path / "fp"
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "apply.after_commit=exit(2)")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    os.makedirs(str(fpdir), exist_ok=True)
    p.start(wait_status=False)
    monkeypatch.delenv("WALRELAY_FAILPOINTS")
    monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")
    db.execute("UPDATE t SET name = 'x' WHERE id <= 5")
    end = deadline(60)
    while p.proc.poll() is None:
        assert time.monotonic() < end, "walrelay run did not exit%s" % p.log_tail()
        time.sleep(0.2)
    assert p.proc.returncode == 2, p.log_tail()
    assert p.log_contains("apply worker", since_start=True)
    p.kill()


def test_d1_repeated_apply_failures_exit_run(db, pipelines, monkeypatch):
    """The apply worker fails worker_max_failures times in a row (not for a source
    outage): walrelay run exits 1 so that the service manager restarts it."""
    p = start_ready(db, pipelines, ["t"], config=OUTAGE_CONFIG)
    assert p.stop() == 0
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "apply.after_commit=exit(1)")  # every time
    p.start(wait_status=False)
    monkeypatch.delenv("WALRELAY_FAILPOINTS")
    end = deadline(90)
    while p.proc.poll() is None:
        db.execute("UPDATE t SET qty = qty + 1 WHERE id = 1")
        assert time.monotonic() < end, "walrelay run did not exit%s" % p.log_tail()
        time.sleep(0.3)
    assert p.proc.returncode == 1, p.log_tail()
    assert p.log_contains("failed 3 times in a row", since_start=True), p.log_tail()
    p.kill()


# -- defect 2: no destination transaction stays open while waiting on the network ----------

class LockWatch:
    """Samples every 20 ms whether the SQLite destination's write lock is taken (a
    BEGIN IMMEDIATE that may not wait), in a thread; longest() is the longest stretch it
    was taken without a break, in seconds."""

    def __init__(self, path):
        import threading
        self.path = path
        self.runs = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        start = None
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                c = sqlite3.connect(self.path, timeout=0, isolation_level=None)
                try:
                    c.execute("BEGIN IMMEDIATE")
                    c.execute("ROLLBACK")
                    locked = False
                finally:
                    c.close()
            except sqlite3.OperationalError as e:
                locked = "locked" in str(e) or "busy" in str(e)
            if locked and start is None:
                start = now
            elif not locked and start is not None:
                self.runs.append(now - start)
                start = None
            time.sleep(0.02)
        if start is not None:
            self.runs.append(time.monotonic() - start)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)

    def longest(self):
        return max(self.runs) if self.runs else 0.0


MAX_HOLD = 1.5  # seconds: several times [batch] max_fill_ms (200 ms), far below the 60 s busy timeout


def test_d2_copy_waiting_on_a_lock(db, pipelines, tmp_path, monkeypatch):
    """The COPY of a table waits on a lock held on the source: the sync worker must not
    hold the destination's write lock meanwhile (other processes would fail with
    "database is locked")."""
    create_mixed_table(db, "r", 200)
    create_mixed_table(db, "big", 3000)
    publish(db, "pub", ["r"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    fpdir = tmp_path / "fp"
    # each sync worker pauses with its slot and snapshot taken, before its COPY: the lock
    # is taken in that window
    start_with_failpoints(p, monkeypatch, "sync.before_copy=sleep(3000)", fpdir)
    p.wait_all_ready(["public.r"])
    os.unlink(os.path.join(str(fpdir), "sync.before_copy"))
    db.execute("ALTER PUBLICATION pub ADD TABLE big")
    assert p.cmd("reload", p.dir).rc == 0
    wait_fired(p, fpdir, "sync.before_copy")
    locker = db.connect(autocommit=False)
    try:
        locker.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        time.sleep(3.5)  # the failpoint's sleep ends: the COPY waits on the lock from now on
        with LockWatch(p.dest_path) as watch:
            time.sleep(4 * SCALE)
        assert watch.longest() < MAX_HOLD, (
            "the destination was write-locked for %.1f s while the COPY waited on the source"
            % watch.longest())
    finally:
        locker.rollback()
        locker.close()
    p.wait_all_ready(["public.r", "public.big"])
    wait_equal(db.server, db.name, p, ["public.r", "public.big"])


def test_d2_long_transaction_of_skipped_changes(db, pipelines):
    """A source transaction changes a ready table once, then 300,000 rows of a table the
    apply worker skips (errored): its destination batch must not stay open (write-locked)
    while it reads and decodes them."""
    create_mixed_table(db, "r", 100)
    db.execute("CREATE TABLE e (id int, v text)")
    db.execute("ALTER TABLE e REPLICA IDENTITY NOTHING")  # its updates cannot be replicated
    publish(db, "pub", ["r", "e"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    wait_phase(p, "public.e", "errored", 60)
    wait_phase(p, "public.r", "ready", 60)
    with LockWatch(p.dest_path) as watch:
        with db.connect(autocommit=False) as c:
            c.execute("UPDATE r SET name = 'one change first' WHERE id = 1")
            c.execute("INSERT INTO e SELECT g, repeat('x', 20) FROM generate_series(1, 300000) g")
            c.commit()
        lsn = db.current_wal_lsn()
        p.wait_flushed(lsn, timeout=120)
    assert watch.longest() < MAX_HOLD, (
        "the destination was write-locked for %.1f s while skipped changes were read"
        % watch.longest())
    wait_equal(db.server, db.name, p, ["public.r"])


def test_d2_catchup_of_a_long_transaction(db, pipelines, tmp_path, monkeypatch):
    """The same in a sync worker's catch-up: a transaction with one change of its table
    and then 300,000 changes of another one; the catch-up must not hold one destination
    transaction open while it reads them."""
    create_mixed_table(db, "r", 100)
    create_mixed_table(db, "t", 100)
    db.execute("CREATE TABLE e (id int, v text)")
    db.execute("ALTER TABLE e REPLICA IDENTITY NOTHING")
    publish(db, "pub", ["r", "e"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    wait_phase(p, "public.e", "errored", 60)
    wait_phase(p, "public.r", "ready", 60)
    assert p.stop() == 0
    db.execute("ALTER PUBLICATION pub ADD TABLE t")
    fpdir = tmp_path / "fp"
    # t's copy is done (its snapshot taken) and pauses: the long transaction comes after it
    start_with_failpoints(p, monkeypatch, "sync.before_finishedcopy=sleep(5000)", fpdir)
    wait_fired(p, fpdir, "sync.before_finishedcopy")
    with LockWatch(p.dest_path) as watch:
        with db.connect(autocommit=False) as c:
            c.execute("UPDATE t SET name = 'in the catch-up' WHERE id = 1")
            c.execute("INSERT INTO e SELECT g, repeat('x', 20) FROM generate_series(1, 300000) g")
            c.commit()
        wait_phase(p, "public.t", ("syncdone", "ready"), 180, "t caught up")
    assert p.log_contains("catchup streaming table=public.t"), "no catch-up stream: moot"
    assert watch.longest() < MAX_HOLD, (
        "the destination was write-locked for %.1f s during t's catch-up" % watch.longest())
    wait_equal(db.server, db.name, p, ["public.r", "public.t"])


# -- defect 0: the repeated-kill loss --------------------------------------------------------

def test_d0_supervisor_killed_while_the_apply_worker_commits(db, pipelines, tmp_path,
                                                              monkeypatch):
    """kill -9 of the supervisor while its apply worker is in the middle of a destination
    commit. The orphaned worker only notices the end of its channel after the commit; a
    new `walrelay run` starts a new apply worker at once. If the new one reads the
    destination's resume key before the old one's commit and streams after the old one
    is gone, it applies the committed batch a second time (duplicates in a keyless
    table, an older update re-applied over a newer one). A worker must not start while
    another of the same pipeline and role still runs."""
    db.execute("CREATE TABLE k (id int, v text)")
    db.execute("ALTER TABLE k REPLICA IDENTITY FULL")
    create_mixed_table(db, "r", 100)
    publish(db, "pub", ["k", "r"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.k", "public.r"])
    assert p.stop() == 0
    fp1, fp2 = tmp_path / "fp1", tmp_path / "fp2"
    # run 1: the apply worker sleeps 3 s right before a destination commit, and exits right
    # after it, before any status update (as when it sees its channel's end there)
    start_with_failpoints(p, monkeypatch,
                          "apply.before_commit=sleep(3000);apply.after_commit=abort", fp1)
    with db.connect() as c:
        for i in range(30):
            c.execute("INSERT INTO k VALUES (%s, 'first run')", [i])
    old_pid = wait_fired(p, fp1, "apply.before_commit")
    p.killed_pids.add(old_pid)
    p.kill()  # kill -9 of the supervisor while the apply worker is about to commit
    # run 2 at once: its apply worker pauses 4 s after reading the destination's key
    start_with_failpoints(p, monkeypatch, "apply.after_last_key=sleep(4000)", fp2)
    with db.connect() as c:
        for i in range(30, 40):
            c.execute("INSERT INTO k VALUES (%s, 'second run')", [i])
    p.wait_until(lambda: not alive_walrelay_pids([old_pid]), 60, "the orphaned apply worker gone")
    p.wait_all_ready(["public.k", "public.r"])
    wait_equal(db.server, db.name, p, ["public.k", "public.r"])


SUP_POINTS = ["sup.phase_persisted.%s" % ph
              for ph in ("datasync", "finishedcopy", "syncwait", "catchup", "syncdone", "ready")]


def test_d0_supervisor_killed_at_each_persisted_phase(db, pipelines, tmp_path, monkeypatch):
    """kill -9 of the supervisor right after it persisted each phase of a table's handoff,
    before acting on it (ack, relay, memory), started again each time as a service
    manager would, while two writers change a ready table and the one being copied:
    nothing lost, nothing twice, no sync slot left."""
    from workload import BackgroundWriter
    create_mixed_table(db, "r", 1000)
    create_mixed_table(db, "t", 2000)
    publish(db, "pub", ["r"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"copy_batch_rows": "500"},
                                       "retry": {"backoff_initial_ms": "200",
                                                 "backoff_max_ms": "1000"}})
    p.start()
    p.wait_all_ready(["public.r"])
    assert p.stop() == 0
    db.execute("ALTER PUBLICATION pub ADD TABLE t")
    fpdir = tmp_path / "fp"
    spec = ";".join("%s=abort" % n for n in SUP_POINTS)
    # a little time between the copy's snapshot and the grant: the catch-up has work
    spec += ";sync.before_finishedcopy=sleep(300)"
    ws = [BackgroundWriter(db, ["r", "t"], (1, 900), 1_000_000, per_txn=3, seed=31, pause=0.01),
          BackgroundWriter(db, ["r", "t"], (901, 1900), 2_000_000, per_txn=3, seed=32,
                           pause=0.01)]
    for w in ws:
        w.start()
    kills = 0

    def start():
        os.makedirs(str(fpdir), exist_ok=True)
        monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
        monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
        try:
            p.start(wait_status=False)
        finally:
            monkeypatch.delenv("WALRELAY_FAILPOINTS")
            monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")

    try:
        start()
        end = deadline(240)
        while True:
            fired = [n for n in SUP_POINTS if os.path.exists(os.path.join(str(fpdir), n))]
            if p.proc.poll() is not None:  # killed itself at one of them: as systemd would
                assert p.proc.returncode == -9, p.log_tail()
                kills += 1
                p.kill()
                start()
                continue
            try:
                st = p.status()
            except AssertionError:
                st = {"tables": []}  # starting, or just killed
            if len(fired) == len(SUP_POINTS) and st["tables"] and all(
                    t["phase"] == "ready" for t in st["tables"]):
                break
            assert time.monotonic() < end, "fired %s of %s%s" % (fired, SUP_POINTS, p.log_tail())
            time.sleep(0.2)
        for w in ws:
            w.wait_commits(10)
    finally:
        for w in ws:
            w.stop()
    assert kills == len(SUP_POINTS), kills
    p.wait_all_ready(["public.r", "public.t"])
    wait_equal(db.server, db.name, p, ["public.r", "public.t"])
    p.wait_until(lambda: db.slots("walrelay_%s_s" % p.name) == [], 30, "no sync slot left")


# -- found by the chaos suite: a table that leaves the publication and joins it again -------

def test_publication_drop_and_add_between_reads(db, pipelines):
    """ALTER PUBLICATION ... DROP TABLE t, rows written, ADD TABLE t again, all between two
    reads of the publication (here: while running, with no periodic read, then while
    stopped): the rows of that time were never published, yet t looked as synchronised
    as before and stayed without them. Its membership record (a new pg_publication_rel
    row) changed, so it is copied again: equal at the end."""
    create_mixed_table(db, "t", 200)
    create_mixed_table(db, "u", 100)
    publish(db, "pub", ["t", "u"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"pipeline": {"publication_refresh_ms": "0"}})
    p.start()
    p.wait_all_ready(["public.t", "public.u"])
    tables = ["public.t", "public.u"]

    def gap(tag):
        db.execute("ALTER PUBLICATION pub DROP TABLE t")
        db.execute("UPDATE t SET name = %s WHERE id <= 20", ["while out of the publication " + tag])
        db.execute("DELETE FROM t WHERE id BETWEEN 21 AND 25")
        db.execute("ALTER PUBLICATION pub ADD TABLE t")
        db.execute("UPDATE t SET name = %s WHERE id BETWEEN 26 AND 30", ["back " + tag])
        db.execute("UPDATE u SET name = %s WHERE id <= 5", ["u " + tag])

    # while running: the next read of the publication (reload) finds the new record
    gap("1")
    assert p.cmd("reload", p.dir).rc == 0
    wait_equal(db.server, db.name, p, tables)  # (before the fix: rows of the gap missing)
    assert p.log_contains("left the publication and joined it again", since_start=True)
    p.wait_all_ready(tables)
    # while stopped: the read at start finds it
    assert p.stop() == 0
    gap("2")
    p.start()
    wait_equal(db.server, db.name, p, tables)
    assert p.log_contains("left the publication and joined it again", since_start=True)
    p.wait_all_ready(tables)
    assert not p.log_contains("copy started table=public.u", since_start=True), "u copied again"
