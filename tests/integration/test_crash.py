"""kill -9 at every phase boundary, scripted with failpoints, with writers running.

NOTES: every case runs against the sqlite destination (with both state stores) and the
postgres destination (STORE_DEST). Each test_kill_at_failpoint case runs a pipeline once
to make table r Ready, stops it, adds table t to the publication, and starts it again with
WALRELAY_FAILPOINTS="<point>=abort" (common/failpoint.h) and a marker directory, so the
worker that reaches the point SIGKILLs itself exactly there, once: its restarted
incarnation runs through. Two writers change r (Ready) and t (being synced) all along.
Every case ends with both tables ready, the destination equal to the source row by row,
no sync slot left, the failpoint fired exactly once and the supervisor's restart count
up. The supervisor itself is killed -9 mid-copy and mid-stream: its workers must exit
on the channel's EOF and release their slots, and `walrelay run` again must resume.
"""

import os
import re
import time

import pytest

from pipeline import SCALE, alive_walrelay_pids, deadline, wait_equal
from workload import BackgroundWriter, create_mixed_table, publish

# every case runs with the state in state.db, in the PostgreSQL state store and in a
# plugin store (examples/store-onefile through the ABI adapter), with the sqlite
# destination; and with the postgres destination (a second cluster; state in state.db)
STORE_DEST = [("sqlite", "sqlite"), ("postgres", "sqlite"), ("plugin", "sqlite"),
              ("sqlite", "postgres")]
pytestmark = pytest.mark.parametrize("state_store,destination", STORE_DEST, indirect=True)

R_ROWS = 2_000
T_ROWS = 3_000

# (failpoint, worker role whose pid dies there)
FAILPOINTS = [
    ("sync.after_datasync", "sync"),
    ("sync.mid_copy", "sync"),
    ("sync.before_finishedcopy", "sync"),
    ("sync.after_finishedcopy", "sync"),
    ("sync.after_syncwait", "sync"),
    ("sync.catchup_after_commit", "sync"),
    ("sync.before_slot_drop", "sync"),
    ("apply.after_commit", "apply"),
    ("apply.mid_txn_chunk", "apply"),
    ("apply.catchup_granted", "apply"),
    ("apply.before_ready", "apply"),
    ("apply.after_ready", "apply"),
]

BASE_CONFIG = {
    "sync": {"copy_batch_rows": "500"},
    "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "2000"},
}


class Writers:
    """Two background writers on r and t, on disjoint keys (no lock waits between them)."""

    def __init__(self, db):
        self.ws = [
            BackgroundWriter(db, ["r", "t"], (1, 1_000), 1_000_000, per_txn=3, seed=21, pause=0.005),
            BackgroundWriter(db, ["r", "t"], (1_001, 2_000), 2_000_000, per_txn=3, seed=22,
                             pause=0.005),
        ]

    def start(self):
        for w in self.ws:
            w.start()
        return self

    def wait_commits(self, n, timeout=60):
        for w in self.ws:
            w.wait_commits(n, timeout * SCALE)

    def stop(self):
        errors = []
        for w in self.ws:
            try:
                w.stop()
            except AssertionError as e:
                errors.append(str(e))
        assert not errors, "; ".join(errors)


def _setup_r_ready_then_add_t(db, pipelines, config=None):
    """r copied and Ready in a first run; t added to the publication while stopped (the
    next run's start reads the publication and copies t)."""
    create_mixed_table(db, "r", R_ROWS)
    create_mixed_table(db, "t", T_ROWS)
    publish(db, "pub", ["r"])
    p = pipelines()
    cfg = {k: dict(v) for k, v in BASE_CONFIG.items()}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    p.init(db.conninfo, "pub", config=cfg)
    p.start()
    p.wait_all_ready(["public.r"])
    assert p.stop() == 0, "first run did not stop cleanly" + p.log_tail()
    db.execute("ALTER PUBLICATION pub ADD TABLE t")
    return p


def _start_with_failpoints(p, monkeypatch, spec, fpdir):
    """Starts `walrelay run` with the failpoints armed (the workers inherit them); the
    test's own walrelay commands run without them."""
    os.makedirs(fpdir, exist_ok=True)
    monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")


def _wait_fired(p, fpdir, name, timeout=90):
    """Waits for the failpoint's marker file; returns the pid that wrote it."""
    path = os.path.join(str(fpdir), name)

    def fired():
        with open(path) as f:
            txt = f.read().strip()
        assert txt, "marker %s still empty" % path
        return int(txt)

    return p.wait_until(fired, timeout, "failpoint %s to fire (marker %s)" % (name, path))


def _pid_gone(pid, timeout=20):
    end = deadline(timeout)
    while alive_walrelay_pids([pid]):
        assert time.monotonic() < end, "pid %d still alive %.0fs after its failpoint" % (
            pid, timeout * SCALE)
        time.sleep(0.05)


def _sync_restarts_in_log(p, relid):
    """Highest restarts=N the supervisor logged when starting sync-<relid>."""
    best = 0
    for m in re.finditer(r"worker started worker=sync-%d pid=\d+ restarts=(\d+)" % relid,
                         p.log_text()):
        best = max(best, int(m.group(1)))
    return best


def _no_sync_slot(p, db, timeout=30):
    prefix = "walrelay_%s_s" % p.name
    p.wait_until(lambda: db.slots(prefix) == [], timeout,
                 "no sync slot left (now: %s)" % db.slots(prefix))


@pytest.mark.parametrize("failpoint,role", FAILPOINTS, ids=[f for f, _ in FAILPOINTS])
def test_kill_at_failpoint(db, pipelines, tmp_path, monkeypatch, failpoint, role):
    extra = {}
    if failpoint == "apply.mid_txn_chunk":
        extra = {"batch": {"max_bytes": "1024"}}  # the smallest: a few changes fill it
    p = _setup_r_ready_then_add_t(db, pipelines, extra)
    t_relid = db.relid("t")
    apply_restarts_before = 0
    fpdir = tmp_path / "failpoints"

    writers = Writers(db).start()
    try:
        writers.wait_commits(5)
        spec = "%s=abort" % failpoint
        if failpoint == "sync.catchup_after_commit":
            # 0.5 s of writes between the copy's snapshot and the Catchup grant: the
            # catch-up has transactions of t to commit
            spec += ";sync.before_finishedcopy=sleep(500)"
        _start_with_failpoints(p, monkeypatch, spec, fpdir)
        if failpoint == "apply.mid_txn_chunk":
            # one transaction of 500 changes of the Ready table: several chunks of 1 kB (new
            # keys: no lock waits with the writers)
            db.execute("INSERT INTO r (id, name, qty) SELECT g, 'chunk ' || g, g"
                       " FROM generate_series(5000001, 5000500) g")
        pid = _wait_fired(p, fpdir, failpoint)
        p.killed_pids.add(pid)  # its "killed by signal 9" in the log is ours
        _pid_gone(pid)

        if role == "apply":
            def apply_restarted():
                w = p.worker("apply")
                return (w and w["pid"] and int(w["pid"]) != pid and w["state"] == "running"
                        and int(w["restarts"]) > apply_restarts_before) and w
            p.wait_until(apply_restarted, 60, "apply worker restarted after %s" % failpoint)
        elif failpoint != "sync.before_slot_drop":
            # SyncDone is persisted before that point: nothing to restart, the apply worker
            # drops the orphaned slot. Every other phase needs the sync worker again.
            p.wait_until(lambda: _sync_restarts_in_log(p, t_relid) >= 1, 60,
                         "sync worker of t restarted after %s" % failpoint)

        p.wait_all_ready(["public.r", "public.t"], timeout=120)
        writers.wait_commits(10)  # writes keep flowing into the Ready tables
    finally:
        writers.stop()

    wait_equal(db.server, db.name, p, ["public.r", "public.t"], timeout=120)
    _no_sync_slot(p, db)
    fired = re.findall(r"failpoint fired name=%s " % re.escape(failpoint), p.log_text())
    assert len(fired) == 1, "failpoint %s fired %d times (expected once)%s" % (
        failpoint, len(fired), p.log_tail())
    if role == "apply":
        assert int(p.worker("apply", st=p.status())["restarts"]) >= 1, p.last_status
    elif failpoint != "sync.before_slot_drop":
        assert _sync_restarts_in_log(p, t_relid) >= 1
    assert p.status()["state"] == "running", p.last_status


# -- the supervisor killed -9 ---------------------------------------------------------------

def _active_replication(db, name):
    """Slots of the pipeline that are active, and walsenders serving it."""
    like = "walrelay\\_%s%%" % name.replace("_", "\\_")
    slots = [r[0] for r in db.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s AND active", [like])]
    senders = [r[0] for r in db.execute(
        "SELECT application_name FROM pg_stat_replication WHERE application_name LIKE %s", [like])]
    return slots + senders


def _after_supervisor_kill(p, db, worker_pids, timeout=20):
    """kill -9 of `walrelay run`; its workers see EOF on fd 3 and exit, and nothing of the
    pipeline keeps a slot active."""
    p.kill()
    end = deadline(timeout)
    while True:
        alive = alive_walrelay_pids(set(worker_pids) | p.seen_pids)
        active = _active_replication(db, p.name)
        if not alive and not active:
            return
        assert time.monotonic() < end, (
            "%.0fs after kill -9 of the supervisor: walrelay processes alive %s, active slots or "
            "walsenders %s%s" % (timeout * SCALE, alive, active, p.log_tail()))
        time.sleep(0.1)


def test_kill_supervisor_mid_copy(db, pipelines, tmp_path, monkeypatch):
    p = _setup_r_ready_then_add_t(db, pipelines)
    fpdir = tmp_path / "failpoints"
    writers = Writers(db).start()
    try:
        writers.wait_commits(5)
        # t's sync worker pauses 3 s after each committed batch: the kill lands mid-copy
        _start_with_failpoints(p, monkeypatch, "sync.mid_copy=sleep(3000)", fpdir)
        sync_pid = _wait_fired(p, fpdir, "sync.mid_copy")
        st = p.status()
        assert p.tables(st)["public.t"]["phase"] == "datasync", st
        _after_supervisor_kill(p, db, p.worker_pids(st) + [sync_pid])

        p.start()  # without failpoints
        p.wait_all_ready(["public.r", "public.t"], timeout=120)
        writers.wait_commits(10)
    finally:
        writers.stop()
    wait_equal(db.server, db.name, p, ["public.r", "public.t"], timeout=120)
    _no_sync_slot(p, db)


def test_kill_supervisor_mid_stream(db, pipelines):
    create_mixed_table(db, "r", R_ROWS)
    create_mixed_table(db, "t", T_ROWS)
    publish(db, "pub", ["r", "t"])
    p = pipelines()
    p.init(db.conninfo, "pub", config=BASE_CONFIG)
    p.start()
    p.wait_all_ready(["public.r", "public.t"])
    writers = Writers(db).start()
    try:
        writers.wait_commits(10)
        events = p.status()["events"]
        p.wait_until(lambda: p.status()["events"] > events, 60, "the apply worker applying")
        _after_supervisor_kill(p, db, p.worker_pids())
        writers.wait_commits(10)  # changes made while nothing runs
        p.start()
        p.wait_all_ready(["public.r", "public.t"])
        writers.wait_commits(10)
    finally:
        writers.stop()
    wait_equal(db.server, db.name, p, ["public.r", "public.t"], timeout=120)
    assert db.slots() == ["walrelay_%s" % p.name]


def test_graceful_stop_inside_a_large_transaction(db, pipelines, tmp_path, monkeypatch):
    """`walrelay stop` while the apply worker is inside a source transaction whose first
    chunks are already committed to the destination: the open chunk is rolled back, the
    flush position stays before the transaction, and the next run replays it, skipping
    exactly the committed chunks (nothing lost, nothing twice)."""
    create_mixed_table(db, "r", 100)
    publish(db, "pub", ["r"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"batch": {"max_bytes": "1024"}})
    p.start()
    p.wait_all_ready(["public.r"])
    assert p.stop() == 0, p.log_tail()
    fpdir = tmp_path / "fp"
    # the apply worker pauses after a mid-transaction chunk commit: the stop arrives then
    _start_with_failpoints(p, monkeypatch, "apply.mid_txn_chunk=sleep(3000)", fpdir)
    db.execute("INSERT INTO r (id, name, qty) SELECT g, 'big tx ' || g, g"
               " FROM generate_series(7000001, 7002000) g")
    _wait_fired(p, fpdir, "apply.mid_txn_chunk")
    assert p.stop() == 0, "walrelay run did not stop cleanly" + p.log_tail()
    # stopped inside the transaction: the slot must not have been confirmed past it
    assert db.count("public.r") == 2100
    mid = p.dest_query("SELECT count(*) FROM r WHERE id > 7000000")[0][0]
    assert 0 < mid < 2000, "expected a partly applied transaction, found %d of 2000 rows" % mid
    p.start()
    wait_equal(db.server, db.name, p, ["public.r"])
    assert p.unexpected_crashes() == [], p.unexpected_crashes()
