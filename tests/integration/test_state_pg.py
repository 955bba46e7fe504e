"""The PostgreSQL state store ([state] backend = postgres): a pipeline whose directory holds
no state.db, the lease that refuses a second supervisor of the same pipeline, drop of one
pipeline's rows, a restart that resumes from the store, and the errors of a bad store.

NOTES: the store lives in the session's state_db database (conftest.py), schema
walrelay_state, shared by every pipeline of the session (rows keyed by pipeline name).
The crash, DDL and ops suites run with this store too (parametrised over state_store).
"""

import os

from pipeline import edit_ini, wait_equal
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
