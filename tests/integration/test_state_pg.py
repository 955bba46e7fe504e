"""The PostgreSQL state store ([state] backend = postgres): a pipeline whose directory holds
no state.db, the lease that refuses a second supervisor of the same pipeline, the lease
lost while running (the store session ended and the lock taken by another session before
the supervisor reconnects: it stops, exit 2, and writes nothing more), drop of one
pipeline's rows, a restart that resumes from the store, and the errors of a bad store.

NOTES: the store lives in the session's state_db database (conftest.py), schema
walrelay_state, shared by every pipeline of the session (rows keyed by pipeline name).
The crash, DDL and ops suites run with this store too (parametrised over state_store).
"""

import os
import threading
import time

from pipeline import SCALE, alive_walrelay_pids, deadline, edit_ini, wait_equal
from workload import create_mixed_table, publish


def store_rows(state_db, pipeline, table):
    return state_db.scalar('SELECT count(*) FROM walrelay_state."%s" WHERE pipeline = %%s' % table,
                           [pipeline])


def make(db, pipelines, state_db, nrows=200, name=None, dirname=None):
    p = pipelines(name=name, dirname=dirname)
    p.init(db.conninfo, "pub", state="postgres:" + state_db.conninfo)
    return p


def test_pipeline_on_the_postgres_store(db, pipelines, state_db):
    create_mixed_table(db, "t", 300)
    publish(db, "pub", ["t"])
    p = make(db, pipelines, state_db)
    with open(p.conf_path) as f:
        conf = f.read()
    sec = conf.split("[state]", 1)[1].split("\n[", 1)[0]
    assert "backend = postgres" in sec and "conninfo = %s" % state_db.conninfo in sec, sec
    chk = p.cmd("check", p.dir)
    assert chk.rc == 0, chk
    assert "state: postgres (database \"%s\", schema \"walrelay_state\"" % state_db.name in chk.out
    p.start()
    p.wait_all_ready(["public.t"])
    db.execute("UPDATE t SET qty = qty + 1 WHERE id <= 50; DELETE FROM t WHERE id > 280")
    wait_equal(db.server, db.name, p, ["public.t"])
    # the state is in the store, none on the local disk
    assert not os.path.exists(os.path.join(p.dir, "state.db"))
    assert store_rows(state_db, p.name, "tables") == 1
    assert state_db.scalar("SELECT phase FROM walrelay_state.tables WHERE pipeline = %s",
                           [p.name]) == "ready"
    assert store_rows(state_db, p.name, "table_phase_history") >= 5
    assert store_rows(state_db, p.name, "table_mappings") == 1
    assert store_rows(state_db, p.name, "pipelines") == 1

    # kill -9 of the supervisor; a new one resumes from the store: no copy again (no
    # phase change at all)
    history = store_rows(state_db, p.name, "table_phase_history")
    schemas = store_rows(state_db, p.name, "table_schemas")
    assert schemas >= 1
    p.kill()
    p.start()
    p.wait_all_ready(["public.t"], timeout=60)
    db.execute("INSERT INTO t (id, name) SELECT g, 'again ' || g FROM generate_series(1000, 1049) g")
    wait_equal(db.server, db.name, p, ["public.t"])
    assert store_rows(state_db, p.name, "table_phase_history") == history
    # the restarted apply worker sent its schema again: the supervisor read the stored
    # version back at start, so the same schema adds no row
    assert p.log_contains("schema_lsn=", since_start=True)
    assert store_rows(state_db, p.name, "table_schemas") == schemas
    assert p.worker("sync") is None
    assert not os.path.exists(os.path.join(p.dir, "state.db"))


def test_second_supervisor_is_refused(db, pipelines, state_db):
    """The same pipeline name on the same store from another directory: exit code 2, a clear
    message; the first keeps replicating."""
    create_mixed_table(db, "t", 50)
    publish(db, "pub", ["t"])
    first = make(db, pipelines, state_db)
    first.start()
    first.wait_all_ready(["public.t"])
    second = pipelines(name=first.name, dirname=first.name + "_other")
    second.init(db.conninfo, "pub", state="postgres:" + state_db.conninfo)
    r = second.cmd("run", second.dir, timeout=60)
    assert r.rc == 2, r
    assert ('pipeline "%s" is already running on this state store (schema "walrelay_state")'
            % first.name) in r.err, r
    assert "hint: stop the other walrelay" in r.err, r
    # drop is refused too while the first holds the lease, and removes nothing
    r = second.cmd("drop", second.dir, timeout=60)
    assert r.rc == 2 and "already running on this state store" in r.err, r
    assert db.slots("walrelay_%s" % first.name), "drop removed the running pipeline's slot"
    db.execute("INSERT INTO t (id, name) VALUES (5000, 'still here')")
    wait_equal(db.server, db.name, first, ["public.t"])
    assert store_rows(state_db, first.name, "tables") == 1


def test_drop_removes_only_its_own_rows(db, pipelines, state_db):
    create_mixed_table(db, "t", 20)
    publish(db, "pub", ["t"])
    a = make(db, pipelines, state_db)
    b = make(db, pipelines, state_db)
    for p in (a, b):
        p.start()
        p.wait_all_ready(["public.t"])
        assert p.stop() == 0
    assert store_rows(state_db, a.name, "tables") == 1
    r = a.cmd("drop", a.dir, timeout=60)
    assert r.rc == 0, r
    assert "removed the state of pipeline %s from the state store" % a.name in r.out, r
    for t in ("tables", "table_phase_history", "table_mappings", "pipelines"):
        assert store_rows(state_db, a.name, t) == 0, t
    assert store_rows(state_db, b.name, "tables") == 1
    assert store_rows(state_db, b.name, "table_phase_history") >= 5
    r = a.cmd("drop", a.dir, timeout=60)
    assert r.rc == 0 and "no state of pipeline %s in the state store" % a.name in r.out, r


def test_bad_store(db, pipelines, state_db):
    """Unreachable store, missing conninfo, a conninfo with a password that is never shown."""
    create_mixed_table(db, "t", 5)
    publish(db, "pub", ["t"])
    p = pipelines()
    secret = "s3cr3t-state-pw"
    r = p.init(db.conninfo, "pub", check=False,
               state="postgres:host=127.0.0.1 port=1 dbname=x password=%s connect_timeout=2"
               % secret)
    assert r.rc == 0, r
    assert secret not in r.out + r.err
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2, chk
    assert "FAILED state: state store ([state] conninfo): " in chk.out, chk
    run = p.cmd("run", p.dir, timeout=60)
    assert run.rc == 2, run
    assert "state store" in run.err, run
    for out in (chk.out, chk.err, run.out, run.err, p.log_text()):
        assert secret not in out
    # backend = postgres without a conninfo: the file and line
    q = pipelines()
    q.init(db.conninfo, "pub", check=False)
    edit_ini(q.conf_path, {"state": {"backend": "postgres"}})
    chk = q.cmd("check", q.dir)
    assert chk.rc == 2, chk
    assert "[state] backend = postgres needs a conninfo" in chk.err + chk.out, chk
    # --state that is neither sqlite nor postgres:...
    z = pipelines()
    r = z.init(db.conninfo, "pub", check=False, state="mysql:password=%s" % secret)
    assert r.rc == 2 and 'invalid state store "mysql"' in r.err, r
    assert secret not in r.out + r.err


def lease_key(pipeline, schema="walrelay_state"):
    """The pipeline's advisory lock key, as state_pg.c computes it (FNV-1a over
    "schema\\0pipeline"), as a signed bigint."""
    h = 1469598103934665603
    for b in schema.encode() + b"\0" + pipeline.encode():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h


def lease_locks(state_db, key):
    """[(pid, granted)] of the sessions holding or waiting for the lease's lock."""
    u = key & 0xFFFFFFFFFFFFFFFF
    return state_db.execute(
        "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
        "AND classid = %s::oid AND objid = %s::oid ORDER BY granted DESC",
        [u >> 32, u & 0xFFFFFFFF])


def store_snapshot(state_db, pipeline):
    """Everything the store holds for the pipeline, to compare before and after."""
    q = state_db.execute
    return {
        "pipelines": q("SELECT slot_name, confirmed_flush::text FROM walrelay_state.pipelines "
                       "WHERE pipeline = %s", [pipeline]),
        "tables": q("SELECT relid, phase, lsn::text, attempts, updated_at FROM "
                    "walrelay_state.tables WHERE pipeline = %s ORDER BY relid", [pipeline]),
        "history": q("SELECT count(*), max(id) FROM walrelay_state.table_phase_history "
                     "WHERE pipeline = %s", [pipeline]),
        "flags": q("SELECT name, value, updated_at FROM walrelay_state.pipeline_flags "
                   "WHERE pipeline = %s ORDER BY name", [pipeline]),
        "schemas": q("SELECT count(*) FROM walrelay_state.table_schemas WHERE pipeline = %s",
                     [pipeline]),
    }


def take_lease_from(p, state_db):
    """Ends the supervisor's store session and takes its lease from another session before
    the supervisor can connect again: the other session queues for the lock first, so the
    lock passes to it the moment the holder's session ends (a later pg_try_advisory_lock
    conflicts with the queued request). Returns the other session (holding the lock)."""
    key = lease_key(p.name)
    locks = lease_locks(state_db, key)
    assert len(locks) == 1 and locks[0][1], "the supervisor does not hold its lease: %r" % locks
    holder = locks[0][0]
    other = state_db.connect()
    taker = threading.Thread(target=lambda: other.execute("SELECT pg_advisory_lock(%s)", [key]),
                             daemon=True)
    taker.start()
    end = deadline(30)
    while not any(not granted for _, granted in lease_locks(state_db, key)):
        assert time.monotonic() < end, "the other session never queued for the lease"
        time.sleep(0.05)
    assert state_db.scalar("SELECT pg_terminate_backend(%s)", [holder])
    taker.join(30 * SCALE)
    assert not taker.is_alive(), "the other session did not get the lease"
    assert [pid for pid, granted in lease_locks(state_db, key) if granted] == [other.info.backend_pid]
    return other


def wait_exit(p, timeout):
    try:
        return p.proc.wait(timeout * SCALE)
    except Exception:
        raise AssertionError("walrelay run did not stop within %ss%s" % (timeout * SCALE,
                                                                          p.log_tail()))


def check_stopped_for_lease(p, db, state_db, workers, before, within):
    """walrelay run exits 2 within `within` seconds with the message, its workers are gone,
    the apply slot is inactive, and the store holds what it held when the lease was lost."""
    t0 = time.monotonic()
    rc = wait_exit(p, 60)
    took = time.monotonic() - t0
    assert rc == 2, (rc, p.log_tail())
    assert took < within * SCALE, (took, p.log_tail())
    log = p.log_text(since_start=True)
    want = ('lost the lease of pipeline "%s" on the state store (schema "walrelay_state"): '
            "another walrelay took it" % p.name)
    assert "walrelay: " + want in log, p.log_tail()
    assert "hint: this walrelay stops and writes nothing more" in log, p.log_tail()
    end = deadline(15)
    while alive_walrelay_pids(workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not alive_walrelay_pids(workers), "workers outlived the supervisor"
    assert not db.scalar("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                         ["walrelay_%s" % p.name])
    assert store_snapshot(state_db, p.name) == before, "the store changed after the lease was lost"
    return log


def test_lease_lost_while_streaming(db, pipelines, state_db):
    """The store session ends and another session takes the lease while changes stream:
    the supervisor stops its workers and exits 2 within a bounded time, and writes nothing
    to the store once the lease is gone (its progress saves fail)."""
    create_mixed_table(db, "t", 50)
    publish(db, "pub", ["t"])
    p = make(db, pipelines, state_db)
    p.start()
    p.wait_all_ready(["public.t"])
    workers = set(p.worker_pids())
    assert workers
    other = take_lease_from(p, state_db)
    try:
        before = store_snapshot(state_db, p.name)
        # changes keep the apply worker reporting progress, which the supervisor would save
        db.execute("INSERT INTO t (id, name) SELECT g, 'x' FROM generate_series(5000, 5099) g")
        check_stopped_for_lease(p, db, state_db, workers, before, 40)
        # the next start is refused while the other holds the lease
        r = p.cmd("run", p.dir, timeout=60)
        assert r.rc == 2 and "already running on this state store" in r.err, r
    finally:
        other.close()
    # with the lease free again, the pipeline resumes where it was
    db.execute("INSERT INTO t (id, name) VALUES (7000, 'after the lease came back')")
    p.start()
    p.wait_all_ready(["public.t"], timeout=60)
    wait_equal(db.server, db.name, p, ["public.t"])


def test_lease_lost_while_quiet(db, pipelines, state_db):
    """A paused pipeline calls its store for nothing, and still holds its lease: the
    periodic check (every 5 s) finds the session ended and the lease taken, and the
    supervisor exits 2."""
    create_mixed_table(db, "t", 20)
    publish(db, "pub", ["t"])
    p = make(db, pipelines, state_db)
    p.start()
    p.wait_all_ready(["public.t"])
    workers = set(p.worker_pids())
    r = p.cmd("pause", p.dir)
    assert r.rc == 0, r
    p.wait_until(lambda: not p.worker_pids(), 60, "no worker runs while paused")
    # the last progress the apply worker reported is saved: nothing is left to write
    p.wait_until(lambda: state_db.scalar(
        "SELECT confirmed_flush::text FROM walrelay_state.pipelines WHERE pipeline = %s",
        [p.name]) == p.status()["flush_lsn"], 30, "the last progress saved")
    other = take_lease_from(p, state_db)
    try:
        before = store_snapshot(state_db, p.name)
        log = check_stopped_for_lease(p, db, state_db, workers, before, 30)
        # found by the check, not by a write that failed
        assert "persisting" not in log.split("paused", 1)[-1], p.log_tail()
    finally:
        other.close()


def test_reconnect_that_finds_the_lease_taken_writes_nothing(db, pipelines, state_db,
                                                              monkeypatch):
    """A call that finds the store connection ended connects again; the lease is taken, so
    that call fails without writing (walrelay pause persists no flag) and the supervisor
    stops at its next tick, although the periodic check is off."""
    monkeypatch.setenv("WALRELAY_LEASE_CHECK_MS", "0")
    create_mixed_table(db, "t", 20)
    publish(db, "pub", ["t"])
    p = make(db, pipelines, state_db)
    p.start()
    p.wait_all_ready(["public.t"])
    wait_equal(db.server, db.name, p, ["public.t"])
    p.wait_until(lambda: state_db.scalar(
        "SELECT confirmed_flush::text FROM walrelay_state.pipelines WHERE pipeline = %s",
        [p.name]) == p.status()["flush_lsn"], 30, "the progress saved")
    other = take_lease_from(p, state_db)
    try:
        before = store_snapshot(state_db, p.name)
        assert not [f for f in before["flags"] if f[0] == "paused"]
        # pause persists its flag first: that write finds the connection gone, connects
        # again, finds the lease taken, and writes nothing
        r = p.cmd("pause", p.dir, timeout=60)
        assert r.rc != 0, r
        assert 'lost the lease of pipeline "%s"' % p.name in r.text, r
        rc = wait_exit(p, 60)
        assert rc == 2, (rc, p.log_tail())
        assert "lost the lease of pipeline \"%s\"" % p.name in p.log_text(since_start=True)
        after = store_snapshot(state_db, p.name)
        assert after == before, "the store changed after the lease was lost"
        assert not [f for f in after["flags"] if f[0] == "paused"]
    finally:
        other.close()
