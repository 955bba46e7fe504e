"""Lifecycle and operations: retry, resync, pause/resume, reload (and SIGHUP), drop,
publication changes at runtime, the automatic retry of transient errors, a lost slot,
and bad input on the control socket.

Every test ends with the destination compared to the source row by row (or, for drop
and a lost slot that stops, with what was left behind checked), and the pipeline still
answering after each bad input.
"""

import os
import signal
import socket
import sqlite3
import time

import psycopg
import pytest

from conftest import Db
from pgserver import PgServer
from pipeline import WaitTimeout, deadline, edit_ini, wait_equal
from workload import create_mixed_table, publish

# these operations also run with the state in the PostgreSQL state store
BOTH_STORES = pytest.mark.parametrize("state_store", ["sqlite", "postgres"], indirect=True)


def sync_slot(p, relid):
    return "walrelay_%s_s%d" % (p.name, relid)


def waiting_walsender(db, app):
    """pid of the active walsender of a sync worker (application_name = its slot)."""
    rows = db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                      "AND backend_type = 'walsender' AND state = 'active'", [app])
    return rows[0][0] if rows else None


def phase_of(p, table):
    t = p.tables().get(table)
    return t["phase"] if t else None


def wait_phase(p, table, phases, timeout=60, what=None):
    """Waits until table's phase is one of phases; returns its status entry."""
    phases = (phases,) if isinstance(phases, str) else tuple(phases)

    def pred():
        t = p.tables().get(table)
        return t if t and t["phase"] in phases else None

    return p.wait_until(pred, timeout, what or "%s in phase %s" % (table, "/".join(phases)))


def start_ready(db, pipelines, tables, config=None, rows=200):
    """Tables (mixed, `rows` rows each) in publication pub, a pipeline that copied them."""
    for t in tables:
        create_mixed_table(db, t, rows)
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub", config=config)
    p.start()
    p.wait_all_ready(["public.%s" % t for t in tables])
    return p


# -- bad input on the control socket ------------------------------------------------------

def control_exchange(p, payload, timeout=10):
    """Sends raw bytes to DIR/control.sock, returns what comes back until the supervisor
    closes the connection or a short quiet period passes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(os.path.join(p.dir, "control.sock"))
    s.sendall(payload)
    got = b""
    s.settimeout(1.0)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if got:
                break
            continue
        if not chunk:
            break
        got += chunk
    s.close()
    return got


def mp_str(text):
    b = text.encode()
    assert len(b) < 32
    return bytes([0xA0 | len(b)]) + b


def test_control_socket_bad_input(db, pipelines):
    p = start_ready(db, pipelines, ["t"])
    pid = p.status()["pid"]

    # bytes that are not msgpack at all: an error, then the connection is closed
    got = control_exchange(p, b"\xc1\xc1 this is not msgpack")
    assert b"error" in got and b"malformed" in got, got
    # a well-formed message of an unknown type
    got = control_exchange(p, bytes([0x91]) + mp_str("launch_missiles"))
    assert b"error" in got and b"unknown type" in got and b"launch_missiles" in got, got
    # a known message type that is not a command
    got = control_exchange(p, bytes([0x93]) + mp_str("welcome") + b"\x01" + mp_str("x"))
    assert b"unknown command" in got and b"welcome" in got, got
    # a command with a wrong element
    got = control_exchange(p, bytes([0x92]) + mp_str("retry") + b"\x05")
    assert b"element 1 (table) must be a string" in got, got
    # the pipeline is untouched
    st = p.status()
    assert st["pid"] == pid and st["state"] == "running", st

    # the commands with bad arguments: a clear error, exit 1, nothing changes
    r = p.cmd("retry", p.dir, "no_such_table")
    assert r.rc == 1, r
    assert 'unknown table "no_such_table"' in r.err and "public.t" in r.err, r
    r = p.cmd("retry", p.dir, "public.t")
    assert r.rc == 1 and 'table "public.t" is not errored (phase ready)' in r.err, r
    assert "resync" in r.err, "the hint should name resync: %r" % r
    r = p.cmd("resync", p.dir, "other.t")
    assert r.rc == 1 and "unknown table" in r.err, r
    r = p.cmd("retry", p.dir)
    assert r.rc == 2 and "missing argument TABLE" in r.err, r
    r = p.cmd("frobnicate", p.dir)
    assert r.rc == 2 and 'unknown command "frobnicate"' in r.err, r
    for cmd in ("retry", "resync", "pause", "resume", "reload", "drop"):
        h = p.cmd(cmd, "--help")
        assert h.rc == 0 and h.out.startswith("usage: walrelay %s DIR" % cmd), h
    st = p.status()
    assert st["pid"] == pid and st["state"] == "running", st
    assert p.tables(st)["public.t"]["phase"] == "ready", st

    # and it still replicates
    db.execute("UPDATE t SET name = 'after bad input' WHERE id <= 10")
    wait_equal(db.server, db.name, p, ["public.t"])


# -- retry ---------------------------------------------------------------------------------

@BOTH_STORES
def test_retry(db, pipelines):
    """retry of a table errored before its copy (its cause fixed), and of a table errored
    while streaming (copied again from scratch: rolling back would skip changes)."""
    create_mixed_table(db, "good", 100)
    create_mixed_table(db, "bad", 300)
    # its updates and deletes are published, but replica identity NOTHING cannot carry them
    db.execute("ALTER TABLE bad REPLICA IDENTITY NOTHING")
    publish(db, "pub", ["good", "bad"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    t = wait_phase(p, "public.bad", "errored", 60, "public.bad errored (replica identity)")
    assert t["err_kind"] == "unsupported" and "NOTHING" in t["err_msg"], t
    wait_phase(p, "public.good", "ready")
    # an operator error does not come back by itself
    time.sleep(1.5)
    assert phase_of(p, "public.bad") == "errored"

    # fix the cause, then retry: back to where it was before the error (init), copied
    db.execute("ALTER TABLE bad REPLICA IDENTITY DEFAULT")
    db.execute("INSERT INTO bad (id, name) SELECT g, 'while errored ' || g "
               "FROM generate_series(1001, 1050) g")
    r = p.cmd("retry", p.dir, "bad")
    assert r.rc == 0, r
    assert 'table "public.bad"' in r.out and "init" in r.out, r
    st = p.wait_all_ready(["public.good", "public.bad"])
    assert p.tables(st)["public.bad"]["attempts"] == 0, st
    db.execute("UPDATE bad SET qty = qty + 1 WHERE id % 7 = 0")
    db.execute("DELETE FROM bad WHERE id % 11 = 0")
    wait_equal(db.server, db.name, p, ["public.good", "public.bad"])

    # errored while streaming: the destination lost a row, then the source updates it
    with sqlite3.connect(p.dest_path, timeout=30) as d:
        d.execute('DELETE FROM "good" WHERE id = 5')
    db.execute("UPDATE good SET name = 'updated' WHERE id = 5")
    t = wait_phase(p, "public.good", "errored", 60, "public.good errored by the apply worker")
    assert "no row" in t["err_msg"], t
    db.execute("UPDATE good SET qty = -1 WHERE id > 50")  # skipped while errored
    r = p.cmd("retry", p.dir, "public.good")
    assert r.rc == 0, r
    assert "was streaming when it errored" in r.out and "from scratch" in r.out, r
    p.wait_all_ready(["public.good", "public.bad"])
    wait_equal(db.server, db.name, p, ["public.good", "public.bad"])


# -- resync --------------------------------------------------------------------------------

@BOTH_STORES
def test_resync(db, pipelines):
    p = start_ready(db, pipelines, ["a", "b"], rows=500)
    wait_equal(db.server, db.name, p, ["public.a", "public.b"])
    # somebody changes the destination by hand
    with sqlite3.connect(p.dest_path, timeout=30) as d:
        d.execute('DELETE FROM "a" WHERE id % 3 = 0')
        d.execute("UPDATE \"a\" SET name = 'tampered' WHERE id % 5 = 0")
        d.execute("INSERT INTO \"a\" (id, name) VALUES (999999, 'extra')")
    r = p.cmd("resync", p.dir, "public.a")
    assert r.rc == 0, r
    assert "public.a" in r.out and "init" in r.out, r
    # the log shows it went through a new copy
    p.wait_until(lambda: p.log_contains("resync requested table=public.a"), 10, "resync logged")
    db.execute("UPDATE a SET qty = 7 WHERE id <= 50")
    p.wait_all_ready(["public.a", "public.b"])
    wait_equal(db.server, db.name, p, ["public.a", "public.b"])
    # "name" means public.name
    r = p.cmd("resync", p.dir, "b")
    assert r.rc == 0 and "public.b" in r.out, r
    p.wait_all_ready(["public.a", "public.b"])
    wait_equal(db.server, db.name, p, ["public.a", "public.b"])

    # while its sync worker runs: it is stopped first, then the table is copied again
    create_mixed_table(db, "c", 3000)
    db.execute("CREATE TABLE z (id int)")  # not published
    blocker = db.connect(autocommit=False)
    try:
        # an open transaction with an xid holds c's sync worker in its slot creation
        blocker.execute("INSERT INTO z VALUES (1)")
        db.execute("ALTER PUBLICATION pub ADD TABLE c")
        assert p.cmd("reload", p.dir).rc == 0
        p.wait_until(lambda: waiting_walsender(db, sync_slot(p, db.relid("c"))), 30,
                     "c's sync worker creating its slot")
        r = p.cmd("resync", p.dir, "c")
        assert r.rc == 0 and "stopping its sync worker" in r.out, r
    finally:
        blocker.rollback()
        blocker.close()
    p.wait_until(lambda: p.log_contains("table set to init, copying it again table=public.c"),
                 30, "c set to init once its worker stopped")
    db.execute("UPDATE c SET qty = 3 WHERE id % 2 = 0")
    tables = ["public.a", "public.b", "public.c"]
    p.wait_all_ready(tables)
    wait_equal(db.server, db.name, p, tables)


# -- pause / resume ------------------------------------------------------------------------

@BOTH_STORES
def test_pause_resume(db, pipelines):
    p = start_ready(db, pipelines, ["t"])
    r = p.cmd("pause", p.dir)
    assert r.rc == 0 and "paused" in r.out, r

    def workers_gone():
        st = p.status()
        return st if st["state"] == "paused" and not p.worker_pids(st) else None

    st = p.wait_until(workers_gone, 60, "paused with no worker running")
    assert "walrelay resume" in (st.get("message") or ""), st
    with p.dest() as d:
        before = d.execute('SELECT count(*) FROM "t"').fetchone()[0]
    db.execute("INSERT INTO t (id, name) SELECT g, 'during pause' FROM generate_series(5001, 5100) g")
    db.execute("UPDATE t SET name = 'updated during pause' WHERE id <= 20")
    time.sleep(2)  # nothing may arrive while paused
    with p.dest() as d:
        assert d.execute('SELECT count(*) FROM "t"').fetchone()[0] == before

    # a paused pipeline stays paused across a restart of walrelay run
    assert p.stop() == 0
    p.start()
    st = p.status()
    assert st["state"] == "paused" and not p.worker_pids(st), st
    r = p.cmd("pause", p.dir)
    assert r.rc == 0 and "already paused" in r.out, r

    r = p.cmd("resume", p.dir)
    assert r.rc == 0 and "resumed" in r.out, r
    st = p.status()
    assert st["state"] == "running", st
    wait_equal(db.server, db.name, p, ["public.t"])
    r = p.cmd("resume", p.dir)
    assert r.rc == 0 and "not paused" in r.out, r

    # paused in the middle of a copy: the copy stops, and starts again after resume
    create_mixed_table(db, "c", 3000)
    db.execute("CREATE TABLE z (id int)")  # not published
    blocker = db.connect(autocommit=False)
    try:
        blocker.execute("INSERT INTO z VALUES (1)")  # holds c's slot creation
        db.execute("ALTER PUBLICATION pub ADD TABLE c")
        assert p.cmd("reload", p.dir).rc == 0
        p.wait_until(lambda: waiting_walsender(db, sync_slot(p, db.relid("c"))), 30,
                     "c's sync worker creating its slot")
        r = p.cmd("pause", p.dir)
        assert r.rc == 0 and "2 workers asked to stop" in r.out, r
    finally:
        blocker.rollback()
        blocker.close()
    p.wait_until(workers_gone, 60, "paused with no worker running, during a copy")
    assert phase_of(p, "public.c") in ("init", "datasync"), p.last_status
    db.execute("UPDATE c SET qty = 9 WHERE id <= 100")
    r = p.cmd("resume", p.dir)
    assert r.rc == 0, r
    p.wait_all_ready(["public.t", "public.c"])
    wait_equal(db.server, db.name, p, ["public.t", "public.c"])


# -- reload and SIGHUP ---------------------------------------------------------------------

@BOTH_STORES
def test_reload(db, pipelines):
    p = start_ready(db, pipelines, ["t"])
    assert not p.log_contains("DEBUG control request")

    # live keys
    edit_ini(p.conf_path, {"sync": {"max_table_sync_workers": "1"}, "log": {"level": "debug"}})
    r = p.cmd("reload", p.dir)
    assert r.rc == 0, r
    assert "[sync] max_table_sync_workers 4 -> 1" in r.out, r
    assert "[log] level info -> debug" in r.out, r
    assert "needs a restart" not in r.out, r
    p.status()
    p.wait_until(lambda: p.log_contains("DEBUG control request type=status"), 10,
                 "debug lines in the log after the reload")

    # at most one table copied at a time now: three new tables, re-read on reload
    for name in ("n1", "n2", "n3"):
        create_mixed_table(db, name, 2000)
    db.execute("ALTER PUBLICATION pub ADD TABLE n1, n2, n3")
    r = p.cmd("reload", p.dir)
    assert r.rc == 0 and "no changes" in r.out and "publication is read again" in r.out, r
    tables = ["public.t", "public.n1", "public.n2", "public.n3"]
    most = [0]

    def all_ready():
        st = p.status()
        most[0] = max(most[0], len([w for w in st["workers"] if w["role"] == "sync" and w["pid"]]))
        tabs = p.tables(st)
        return st if sorted(tabs) == sorted(tables) and all(
            t["phase"] == "ready" for t in tabs.values()) else None

    p.wait_until(all_ready, 120, "the three new tables ready")
    assert most[0] <= 1, "max_table_sync_workers = 1 after the reload, saw %d" % most[0]

    # a key that needs a restart: reported, the old value stays in use
    edit_ini(p.conf_path, {"source": {"publication": "other_pub"}})
    r = p.cmd("reload", p.dir)
    assert r.rc == 0, r
    assert "needs a restart of walrelay run" in r.out and "[source] publication" in r.out, r
    edit_ini(p.conf_path, {"source": {"publication": "pub"}})

    # a broken file: refused with FILE:LINE, the pipeline keeps running as before
    with open(p.conf_path) as f:
        good = f.read()
    lines = good.splitlines()
    idx = next(i for i, l in enumerate(lines) if l.startswith("max_table_sync_workers"))
    lines[idx] = "max_table_sync_workers = lots"
    with open(p.conf_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = p.cmd("reload", p.dir)
    assert r.rc == 1, r
    assert "walrelay.conf:%d" % (idx + 1) in r.err and "max_table_sync_workers" in r.err, r
    assert "running configuration is kept" in r.err, r
    st = p.status()
    assert st["state"] == "running", st
    db.execute("UPDATE t SET name = 'after a broken reload' WHERE id <= 30")
    wait_equal(db.server, db.name, p, tables)

    # SIGHUP: the same, logged
    with open(p.conf_path, "w") as f:
        f.write(good)
    edit_ini(p.conf_path, {"log": {"level": "info"}})
    os.kill(st["pid"], signal.SIGHUP)
    p.wait_until(lambda: p.log_contains("[log] level debug -> info"), 15, "SIGHUP reload logged")
    with open(p.conf_path, "w") as f:
        f.write("[pipeline]\nname = %s\nbogus line\n" % p.name)
    os.kill(st["pid"], signal.SIGHUP)
    p.wait_until(lambda: p.log_contains("walrelay.conf:3: syntax error"), 15,
                 "SIGHUP with a broken file logs FILE:LINE")
    assert p.status()["state"] == "running"
    with open(p.conf_path, "w") as f:
        f.write(good)
    db.execute("UPDATE t SET name = 'after SIGHUP' WHERE id <= 30")
    wait_equal(db.server, db.name, p, tables)


# -- drop ----------------------------------------------------------------------------------

def test_drop(db, pipelines):
    p = start_ready(db, pipelines, ["t"])
    # a leftover sync slot (as a crash could leave), and a slot that is not ours
    db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
               [sync_slot(p, 4242)])
    other = "walrelay_%s_s12_x" % p.name
    db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [other])
    state_db = os.path.join(p.dir, "state.db")

    r = p.cmd("drop", p.dir)
    assert r.rc == 2, r
    assert "is running" in r.err and "walrelay stop" in r.err, r
    assert os.path.exists(state_db)
    assert "walrelay_%s" % p.name in db.slots()
    assert p.status()["state"] == "running"
    assert p.stop() == 0

    # an unreachable source: nothing is removed
    with open(p.conf_path) as f:
        conf = f.read()
    edit_ini(p.conf_path, {"source": {"conninfo": "host=127.0.0.1 port=1 dbname=x user=postgres"}})
    r = p.cmd("drop", p.dir)
    assert r.rc == 2, r
    assert "nothing was removed" in r.err, r
    assert os.path.exists(state_db)
    assert "walrelay_%s" % p.name in db.slots()

    with open(p.conf_path, "w") as f:
        f.write(conf)
    r = p.cmd("drop", p.dir)
    assert r.rc == 0, r
    assert "dropped replication slot walrelay_%s\n" % p.name in r.out, r
    assert "dropped replication slot %s\n" % sync_slot(p, 4242) in r.out, r
    assert "kept" in r.out and "dest.db" in r.out, r
    assert sorted(db.slots("walrelay_%s" % p.name)) == [other], db.slots()
    assert not os.path.exists(state_db)
    assert not os.path.exists(state_db + "-wal")
    assert os.path.exists(p.conf_path) and os.path.exists(p.dest_path)
    with p.dest() as d:
        assert d.execute('SELECT count(*) FROM "t"').fetchone()[0] == 200
    db.execute("SELECT pg_drop_replication_slot(%s)", [other])

    # the pipeline starts over: copied again, equal
    db.execute("UPDATE t SET name = 'after drop' WHERE id <= 40")
    p.start()
    p.wait_all_ready(["public.t"])
    wait_equal(db.server, db.name, p, ["public.t"])


# -- publication changes at runtime --------------------------------------------------------

@BOTH_STORES
def test_publication_add_drop(db, pipelines):
    p = start_ready(db, pipelines, ["keep", "gone"],
                    config={"pipeline": {"publication_refresh_ms": "1000"}})
    gone_relid = db.relid("gone")
    st = p.status()
    apply_pid = p.worker(role="apply", st=st)["pid"]

    # ALTER PUBLICATION ... ADD TABLE: copied and streaming, no restart
    create_mixed_table(db, "added", 1000)
    db.execute("ALTER PUBLICATION pub ADD TABLE added")
    p.wait_all_ready(["public.keep", "public.gone", "public.added"], timeout=60)
    db.execute("INSERT INTO added (id, name) SELECT g, 'new ' || g FROM generate_series(2001, 2100) g")
    db.execute("UPDATE added SET qty = 1 WHERE id <= 100")
    wait_equal(db.server, db.name, p, ["public.keep", "public.added"])

    # DROP TABLE: its state goes, its data stays in the destination
    with p.dest() as d:
        kept_rows = d.execute('SELECT count(*) FROM "gone"').fetchone()[0]
    db.execute("DROP TABLE gone")
    p.wait_until(lambda: "public.gone" not in p.tables(), 30, "public.gone removed from status")
    assert sync_slot(p, gone_relid) not in db.slots()
    with p.dest() as d:
        assert d.execute('SELECT count(*) FROM "gone"').fetchone()[0] == kept_rows

    # ALTER PUBLICATION ... DROP TABLE while it is being copied: worker stopped, slot gone
    create_mixed_table(db, "big", 200_000)
    big_relid = db.relid("big")
    db.execute("ALTER PUBLICATION pub ADD TABLE big")
    wait_phase(p, "public.big", ("datasync", "finishedcopy", "syncwait", "catchup", "syncdone",
                                 "ready"), 30)
    db.execute("ALTER PUBLICATION pub DROP TABLE big")
    p.wait_until(lambda: "public.big" not in p.tables(), 30, "public.big removed")
    p.wait_until(lambda: sync_slot(p, big_relid) not in db.slots(), 30, "its sync slot dropped")
    p.wait_until(lambda: not p.worker("sync", big_relid), 30, "its sync worker gone")

    # the others go on, without an apply restart
    db.execute("UPDATE keep SET name = 'still streaming' WHERE id <= 50")
    db.execute("UPDATE added SET name = 'still streaming' WHERE id <= 50")
    wait_equal(db.server, db.name, p, ["public.keep", "public.added"])
    st = p.status()
    assert p.worker(role="apply", st=st)["pid"] == apply_pid, st
    assert sorted(p.tables(st)) == ["public.added", "public.keep"], st
    assert p.log_contains("state and sync slot removed, destination data kept")


# -- automatic retry of a transient error --------------------------------------------------

@BOTH_STORES
def test_transient_error_retried(db, pipelines):
    p = start_ready(db, pipelines, ["a"],
                    config={"retry": {"table_error_retry_delay_ms": "2000"}})
    create_mixed_table(db, "b", 500)
    db.execute("CREATE TABLE z (id int)")  # not published
    relid = db.relid("b")
    app = sync_slot(p, relid)

    # an open transaction with an xid: creating b's sync slot waits for it
    blocker = db.connect(autocommit=False)
    try:
        blocker.execute("INSERT INTO z VALUES (1)")
        db.execute("ALTER PUBLICATION pub ADD TABLE b")
        r = p.cmd("reload", p.dir)
        assert r.rc == 0, r
        pid = p.wait_until(lambda: waiting_walsender(db, app), 30,
                           "b's sync worker creating its slot")
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
        t = wait_phase(p, "public.b", "errored", 30, "public.b errored (transient)")
        assert t["err_kind"] == "transient", t
        # retried after the delay (and blocked again on the same transaction)
        t = p.wait_until(lambda: (lambda t: t if t and t["phase"] != "errored" and
                                  t["attempts"] >= 1 else None)(p.tables().get("public.b")),
                         30, "public.b retried with attempts >= 1")
        assert t["attempts"] == 1, t
        assert p.log_contains("retrying after a transient error table=public.b")
    finally:
        blocker.rollback()
        blocker.close()
    p.wait_all_ready(["public.a", "public.b"])
    db.execute("UPDATE b SET qty = qty + 1")
    wait_equal(db.server, db.name, p, ["public.a", "public.b"])


def test_transient_retries_exhausted(db, pipelines):
    """With table_error_retry_max_attempts = 0 a transient error waits for walrelay retry,
    and status says so."""
    p = start_ready(db, pipelines, ["a"],
                    config={"retry": {"table_error_retry_delay_ms": "100",
                                      "table_error_retry_max_attempts": "0"}})
    create_mixed_table(db, "b", 100)
    db.execute("CREATE TABLE z (id int)")
    app = sync_slot(p, db.relid("b"))
    blocker = db.connect(autocommit=False)
    try:
        blocker.execute("INSERT INTO z VALUES (1)")
        db.execute("ALTER PUBLICATION pub ADD TABLE b")
        assert p.cmd("reload", p.dir).rc == 0
        pid = p.wait_until(lambda: waiting_walsender(db, app), 30,
                           "b's sync worker creating its slot")
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
        t = wait_phase(p, "public.b", "errored", 30)
    finally:
        blocker.rollback()
        blocker.close()
    assert t["err_kind"] == "transient", t
    assert "retries exhausted" in t["err_msg"], t
    time.sleep(1)
    assert phase_of(p, "public.b") == "errored"
    r = p.cmd("retry", p.dir, "b")
    assert r.rc == 0, r
    p.wait_all_ready(["public.a", "public.b"])
    wait_equal(db.server, db.name, p, ["public.a", "public.b"])


# -- a lost slot ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lossy_pg():
    """A server that keeps at most 1 MB of WAL for a slot."""
    s = PgServer(extra_conf={"max_slot_wal_keep_size": "1MB", "min_wal_size": "32MB",
                             "max_wal_size": "64MB", "wal_keep_size": "0"}).start()
    yield s
    s.stop()


def lose_slot(db, slot):
    """Writes ~64 MB of WAL the (stopped) pipeline does not consume, until slot is lost."""
    end = deadline(120)
    while True:
        db.execute("INSERT INTO junk SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 40000) g")
        db.execute("SELECT pg_switch_wal()")
        db.execute("CHECKPOINT")
        rows = db.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", [slot])
        if rows and rows[0][0] == "lost":
            return
        if time.monotonic() > end:
            raise AssertionError("slot %s is not lost: %r" % (slot, rows))


def test_lost_slot(lossy_pg, pipelines):
    db = Db(lossy_pg, lossy_pg.create_database())
    p = pipelines()
    try:
        _lost_slot(db, p)
    finally:
        if p.running():  # before its database goes
            p.stop()
        lossy_pg.drop_database(db.name)


def _lost_slot(db, p):
    create_mixed_table(db, "t", 500)
    create_mixed_table(db, "u", 100)
    db.execute("CREATE TABLE junk (id int, pad text)")  # not published
    publish(db, "pub", ["t", "u"])
    p.init(db.conninfo, "pub")
    p.start()
    tables = ["public.t", "public.u"]
    p.wait_all_ready(tables)
    slot = "walrelay_%s" % p.name
    assert p.stop() == 0

    # changes the pipeline will never see through the slot, then the slot loses its WAL
    db.execute("UPDATE t SET name = 'lost with the WAL' WHERE id <= 100")
    db.execute("INSERT INTO u (id, name) SELECT g, 'lost too' FROM generate_series(1001, 1010) g")
    lose_slot(db, slot)

    # on_slot_lost = stop (default): exit 2 with the message, the slot is kept
    r = p.cmd("run", p.dir, timeout=120)
    assert r.rc == 2, r
    assert 'replication slot "%s" lost required WAL' % slot in r.text, r
    assert "the source removed WAL this pipeline had not consumed" in r.text, r
    assert "on_slot_lost = recopy" in r.text and "max_slot_wal_keep_size" in r.text, r
    assert slot in db.slots()

    # on_slot_lost = recopy: every table copied again, once
    edit_ini(p.conf_path, {"pipeline": {"on_slot_lost": "recopy"}})
    p.start()
    p.wait_until(lambda: p.log_contains("copying every table again", since_start=True), 60,
                 "the re-copy starts")
    st = p.wait_all_ready(tables)
    assert "lost required WAL" in (st.get("message") or ""), st
    wait_equal(db.server, db.name, p, tables)
    db.execute("UPDATE u SET qty = 5")
    wait_equal(db.server, db.name, p, tables)
    assert p.stop() == 0

    # a second loss stops, and the pipeline does not start over by itself
    lose_slot(db, slot)
    r = p.cmd("run", p.dir, timeout=120)
    assert r.rc == 2, r
    assert "lost required WAL" in r.text and "only once" in r.text, r
    assert "walrelay drop" in r.text and "on_slot_lost = recopy to copy" not in r.text, r
    # the flag slot_lost: the next run refuses instead of starting over
    r = p.cmd("run", p.dir, timeout=120)
    assert r.rc == 2, r
    assert "lost required WAL a second time" in r.text and "walrelay drop" in r.text, r
    # drop gives a clean start
    r = p.cmd("drop", p.dir)
    assert r.rc == 0, r
    p.start()
    p.wait_all_ready(tables)
    wait_equal(db.server, db.name, p, tables)
    assert p.stop() == 0


def test_restarted_worker_runs_the_accepted_config(db, pipelines):
    """Workers read the configuration the supervisor accepted (walrelay.conf.active), not
    the file an operator is editing: a walrelay.conf broken while running never reaches
    a restarted worker (it used to exit 2 and leave the pipeline degraded)."""
    p = start_ready(db, pipelines, ["t"])
    with open(p.conf_path) as f:
        good = f.read()
    with open(os.path.join(p.dir, "walrelay.conf.active")) as f:
        assert f.read() == good
    with open(p.conf_path, "w") as f:
        f.write("this is [not a config\n")
    (apply,) = [w for w in p.status()["workers"] if w["role"] == "apply"]
    p.killed_pids.add(apply["pid"])
    os.kill(apply["pid"], signal.SIGKILL)

    def apply_back():
        st = p.status()
        assert st["state"] == "running", st
        w = [w for w in st["workers"] if w["role"] == "apply"]
        return w and w[0]["pid"] not in (0, apply["pid"]) and w[0]["state"] == "running"

    p.wait_until(apply_back, 60, "the apply worker restarted on the accepted configuration")
    db.execute("INSERT INTO t (id, name) VALUES (900001, 'after the restart')")
    wait_equal(db.server, db.name, p, ["public.t"])
    assert p.status()["state"] == "running"
    # a reload of the broken file is refused and changes nothing for the workers
    r = p.cmd("reload", p.dir)
    assert r.rc == 1 and "walrelay.conf:1" in r.err, r
    with open(os.path.join(p.dir, "walrelay.conf.active")) as f:
        assert f.read() == good
    with open(p.conf_path, "w") as f:
        f.write(good)
