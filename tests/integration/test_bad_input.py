"""Bad input: each fails with exit code 2, a message naming the problem and its fix,
and leaves nothing half-written behind (no state.db, no replication slot)."""

import os

from pgserver import free_port
from workload import create_mixed_table, publish


def assert_nothing_written(p, db=None):
    assert not os.path.exists(os.path.join(p.dir, "state.db")), "state.db was created"
    assert not os.path.exists(os.path.join(p.dir, "control.sock")), "control.sock was left"
    if db is not None:
        assert db.slots("walrelay_%s" % p.name) == [], "a slot was created"


def run_fails(p, timeout=60):
    """`walrelay run DIR` in the foreground; must exit 2 by itself."""
    r = p.cmd("run", p.dir, timeout=timeout)
    assert r.rc == 2, "expected exit code 2: %r" % r
    return r


def test_unreachable_source(db, pipelines):
    port = free_port()  # nobody listens there
    p = pipelines()
    p.init("host=127.0.0.1 port=%d dbname=x user=postgres password=sekrit-pw-123" % port, "pub")
    r = run_fails(p)
    low = r.text.lower()
    assert "connect" in low, r
    assert str(port) in r.text, "the message should name where it tried to connect: %r" % r
    assert "sekrit-pw-123" not in r.text, "the password was printed: %r" % r
    assert "conninfo" in low or "walrelay.conf" in low, "no hint at what to fix: %r" % r
    assert_nothing_written(p, db)


def test_wal_level_replica(db_factory, pipelines, db):
    rdb = db_factory("replica")
    create_mixed_table(rdb, "t", 10)
    publish(rdb, "pub", ["t"])
    p = pipelines()
    p.init(rdb.conninfo, "pub")
    r = run_fails(p)
    assert "wal_level" in r.text, r
    assert "logical" in r.text, "the hint should say wal_level = logical: %r" % r
    assert_nothing_written(p, rdb)


def test_missing_publication(db, pipelines):
    create_mixed_table(db, "t", 10)
    p = pipelines()
    p.init(db.conninfo, "no_such_pub")
    r = run_fails(p)
    assert "no_such_pub" in r.text and "publication" in r.text.lower(), r
    assert "create publication" in r.text.lower() or "walrelay.conf" in r.text, r
    assert_nothing_written(p, db)
    # check reports the same problem
    c = p.cmd("check", p.dir)
    assert c.rc == 2 and "no_such_pub" in c.text, c
    assert_nothing_written(p, db)


def test_malformed_config(db, pipelines):
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    with open(p.conf_path) as f:
        lines = f.read().splitlines()
    idx = next(i for i, l in enumerate(lines) if l.strip().startswith("publication"))
    lines[idx] = lines[idx].replace("publication", "publicaton", 1)
    with open(p.conf_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = run_fails(p)
    assert "walrelay.conf:%d" % (idx + 1) in r.text, "expected FILE:LINE of the typo: %r" % r
    assert "publicaton" in r.text, r
    assert_nothing_written(p, db)


def test_already_running(db, pipelines):
    create_mixed_table(db, "t", 100)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.t"])
    pid = p.status()["pid"]
    r = p.cmd("run", p.dir, timeout=30)
    assert r.rc == 2, r
    assert "already running" in r.text, r
    st = p.status()  # the first one is untouched
    assert st["pid"] == pid and st["state"] == "running", st
    assert os.path.exists(os.path.join(p.dir, "control.sock"))
