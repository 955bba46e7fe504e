"""Schema changes while streaming: each DDL case mid-stream, with writes before and after.

NOTES: the destination either follows a change exactly (ADD COLUMN with no default or a
constant one, DROP COLUMN, RENAME COLUMN, a new or replaced primary key) or the table is
copied again (a type change, a volatile default, a drop together with an add, which looks
like a rename in the stream); docs/destinations.md "Schema changes". Every case ends with
the destination equal to the source row by row, with the same column names in the same
order. Every test runs with the sqlite destination (both state stores) and the postgres
destination. test_ddl_cases runs all cases on one pipeline (one table each) to stay fast; the
others cover a schema change during a sync worker's catch-up and a kill -9 of the apply
worker right after it altered a table (the replayed, older Relation must not roll the
destination back).
"""

import os
import re

import pytest

from pipeline import compare_tables
from workload import publish

# every case runs with the state in state.db and in the PostgreSQL state store (sqlite
# destination), and with the postgres destination (state in state.db)
STORE_DEST = [("sqlite", "sqlite"), ("postgres", "sqlite"), ("sqlite", "postgres")]
pytestmark = pytest.mark.parametrize("state_store,destination", STORE_DEST, indirect=True)

# table -> (DDL, expected outcome): "followed" or "recopied"
CASES = {
    "add_null": "followed",
    "add_const": "followed",
    "add_volatile": "recopied",
    "drop_col": "followed",
    "ren_col": "followed",
    "ren_swap": "followed",
    "drop_add": "recopied",
    "type_int": "recopied",
    "type_num": "recopied",
    "new_pk": "recopied",  # a key added under REPLICA IDENTITY FULL: not visible in the stream
    "re_pk": "followed",
}

BASE = "CREATE TABLE %s (id int PRIMARY KEY, a int, b text, n numeric(10,2))"
FILL = """INSERT INTO %s SELECT g, g * 10, 'row ' || g || E' \\t\u00e9', g / 4.0
          FROM generate_series(1, 200) g"""


def _create(db):
    for t in ("add_null", "add_const", "add_volatile", "drop_col", "ren_col", "type_int",
              "type_num"):
        db.execute(BASE % t)
        db.execute(FILL % t)
    db.execute("CREATE TABLE ren_swap (id int PRIMARY KEY, x int, y int)")
    db.execute("INSERT INTO ren_swap SELECT g, g, -g FROM generate_series(1, 200) g")
    # c is the last column: dropping it and adding d of the same type looks like a rename
    db.execute("CREATE TABLE drop_add (id int PRIMARY KEY, a int, b text, c int)")
    db.execute("INSERT INTO drop_add SELECT g, g, 'b' || g, g * 3 FROM generate_series(1, 200) g")
    # keyless under REPLICA IDENTITY FULL, with duplicate rows until the key comes
    db.execute("CREATE TABLE new_pk (id int NOT NULL, v text)")
    db.execute("ALTER TABLE new_pk REPLICA IDENTITY FULL")
    db.execute("INSERT INTO new_pk SELECT g, 'v' || g FROM generate_series(1, 200) g")
    db.execute("CREATE TABLE re_pk (id int PRIMARY KEY, k int NOT NULL, v text)")
    db.execute("INSERT INTO re_pk SELECT g, g % 3, 'v' || g FROM generate_series(1, 200) g")


def _writes_before(db):
    for t in ("add_null", "add_const", "add_volatile", "drop_col", "ren_col", "type_int",
              "type_num"):
        db.execute("INSERT INTO %s VALUES (1001, 1, 'before', 1.25)" % t)
        db.execute("UPDATE %s SET b = 'upd before', n = 3.5 WHERE id = 10" % t)
        db.execute("DELETE FROM %s WHERE id = 11" % t)
    db.execute("UPDATE ren_swap SET x = 1000 WHERE id = 1")
    db.execute("UPDATE drop_add SET c = 77 WHERE id = 2")
    db.execute("INSERT INTO new_pk VALUES (201, 'dup'), (201, 'dup')")
    db.execute("DELETE FROM new_pk WHERE id = 201")
    db.execute("INSERT INTO new_pk VALUES (201, 'one')")
    db.execute("UPDATE new_pk SET v = 'full upd' WHERE id = 3")
    db.execute("UPDATE re_pk SET v = 'before' WHERE id = 4")


def _ddl(db):
    # in the middle of a transaction, with changes before and after it in the same one
    db.execute("""BEGIN;
        INSERT INTO add_null VALUES (1002, 2, 'same tx before', 2.5);
        ALTER TABLE add_null ADD COLUMN c int;
        INSERT INTO add_null VALUES (1003, 3, 'same tx after', 3.5, 33);
        UPDATE add_null SET c = 7 WHERE id = 3;
        COMMIT""")
    db.execute(r"""ALTER TABLE add_const ADD COLUMN c text DEFAULT E'it''s \\ d\u00e9f',
                   ADD COLUMN d int DEFAULT 42, ADD COLUMN e timestamptz DEFAULT now(),
                   ADD COLUMN f bytea DEFAULT '\x00ff'""")
    db.execute("ALTER TABLE add_volatile ADD COLUMN r float8 DEFAULT random()")
    db.execute("ALTER TABLE drop_col DROP COLUMN b")
    db.execute("ALTER TABLE ren_col RENAME COLUMN b TO b2")
    db.execute("""ALTER TABLE ren_swap RENAME COLUMN x TO t;
                  ALTER TABLE ren_swap RENAME COLUMN y TO x;
                  ALTER TABLE ren_swap RENAME COLUMN t TO y""")
    db.execute("ALTER TABLE drop_add DROP COLUMN c; ALTER TABLE drop_add ADD COLUMN d int")
    db.execute("ALTER TABLE type_int ALTER COLUMN a TYPE bigint")
    db.execute("ALTER TABLE type_num ALTER COLUMN n TYPE numeric(10,3)")
    db.execute("ALTER TABLE new_pk ADD PRIMARY KEY (id)")
    db.execute("ALTER TABLE re_pk DROP CONSTRAINT re_pk_pkey, ADD PRIMARY KEY (id, k)")


def _writes_after(db):
    db.execute("INSERT INTO add_null VALUES (1004, 4, 'after', 4.5, 44)")
    db.execute("UPDATE add_null SET b = 'upd after' WHERE id = 5")
    db.execute("DELETE FROM add_null WHERE id = 6")
    db.execute("INSERT INTO add_const (id, a, b, n) VALUES (1004, 4, 'after', 4.5)")
    db.execute("INSERT INTO add_const VALUES (1005, 5, 'after', 5.5, 'own', 1, "
               "'2020-01-01 00:00:00+00', '\\x01')")
    db.execute("UPDATE add_const SET d = d + 1 WHERE id = 7")
    db.execute("DELETE FROM add_const WHERE id = 8")
    db.execute("INSERT INTO add_volatile VALUES (1004, 4, 'after', 4.5, 0.5)")
    db.execute("UPDATE add_volatile SET r = 0.25 WHERE id = 5")
    db.execute("INSERT INTO drop_col VALUES (1004, 4, 4.5)")
    db.execute("UPDATE drop_col SET a = -1 WHERE id = 5")
    db.execute("DELETE FROM drop_col WHERE id = 6")
    db.execute("INSERT INTO ren_col (id, a, b2, n) VALUES (1004, 4, 'after', 4.5)")
    db.execute("UPDATE ren_col SET b2 = 'renamed upd' WHERE id = 5")
    db.execute("DELETE FROM ren_col WHERE id = 6")
    db.execute("INSERT INTO ren_swap (id, x, y) VALUES (1004, 4, 40)")
    db.execute("UPDATE ren_swap SET x = 555 WHERE id = 5")
    db.execute("INSERT INTO drop_add VALUES (1004, 4, 'after', 400)")
    db.execute("UPDATE drop_add SET d = 9 WHERE id = 5")
    db.execute("INSERT INTO type_int VALUES (1004, 9000000000, 'after', 4.5)")
    db.execute("UPDATE type_int SET a = 8000000000 WHERE id = 5")
    db.execute("INSERT INTO type_num VALUES (1004, 4, 'after', 4.125)")
    db.execute("UPDATE type_num SET n = 9.999 WHERE id = 5")
    db.execute("INSERT INTO new_pk VALUES (1004, 'after')")
    db.execute("UPDATE new_pk SET v = 'by key' WHERE id = 5")
    db.execute("DELETE FROM new_pk WHERE id = 6")
    db.execute("INSERT INTO re_pk VALUES (4, 99, 'same id, other k')")
    db.execute("UPDATE re_pk SET v = 'by new key' WHERE id = 4 AND k = 99")
    db.execute("DELETE FROM re_pk WHERE id = 5")


def src_columns(db, table):
    return [r[0] for r in db.execute(
        """SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
           AND NOT attisdropped AND attgenerated = '' ORDER BY attnum""", [table])]


def dest_columns(p, table):
    return p.dest_columns(table)


def dest_key(p, table):
    return p.dest_key(table)


def wait_same(db, p, tables, timeout=180):
    """Waits until every table is ready and equals its source row by row, with the same
    column names in the same order. Returns nothing; the error lists what differs."""
    target = db.current_wal_lsn()
    # the apply worker has read everything up to now: each Relation was handled (a table
    # it sends back to Init is no longer ready)
    p.wait_flushed(target, timeout)
    p.wait_all_ready(["public.%s" % t for t in tables], timeout)

    def same():
        diffs = []
        for t in tables:
            sc, dc = src_columns(db, t), dest_columns(p, t)
            if sc != dc:
                diffs.append("%s: source columns %s, destination columns %s" % (t, sc, dc))
        diffs += compare_tables(db.server, db.name, p, ["public.%s" % t for t in tables])
        assert not diffs, "\n  ".join(diffs)
        return True

    p.wait_until(same, timeout, "destination equal to the source with the same columns")


def test_ddl_cases(db, pipelines):
    """Every DDL case on its own table, in one pipeline: followed exactly or copied again,
    never silently wrong."""
    _create(db)
    tables = sorted(CASES)
    publish(db, "pub", ["public.%s" % t for t in tables])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"max_table_sync_workers": "4"}})
    p.start()
    p.wait_all_ready(["public.%s" % t for t in tables])
    _writes_before(db)
    _ddl(db)
    _writes_after(db)
    wait_same(db, p, tables)

    log = p.log_text()
    for t, outcome in CASES.items():
        followed = "schema change followed table=public.%s " % t in log
        recopied = re.search(r"copying the table again table=public\.%s .*reason=" % t, log)
        if outcome == "followed":
            assert followed and not recopied, "%s: expected the change to be followed%s" % (
                t, p.log_tail(80))
        else:
            assert recopied and not followed, "%s: expected a copy again%s" % (t, p.log_tail(80))
    # the new keys are the destination's keys
    assert dest_key(p, "new_pk") == ["id"], dest_key(p, "new_pk")
    assert dest_key(p, "re_pk") == ["id", "k"], dest_key(p, "re_pk")
    # the drop + add was not taken for a rename: the old values of c are gone
    assert p.dest_query("SELECT count(*) FROM drop_add WHERE d IS NOT NULL")[0][0] == 2
    # rows that predate ADD COLUMN ... DEFAULT read the default
    hexf = "upper(encode(f, 'hex'))" if p.target is not None else "hex(f)"
    assert p.dest_query("SELECT c, d, %s FROM add_const WHERE id = 1" % hexf)[0] == (
        "it's \\ d\u00e9f", 42, "00FF")
    # every followed change is a schema version of its table, by LSN
    versions = p.dest_versions()
    for t, outcome in CASES.items():
        assert versions.get(t, 0) >= (2 if outcome == "followed" else 1), (t, versions)

    # writes keep flowing into the changed tables
    db.execute("INSERT INTO add_null VALUES (2000, 1, 'later', 1, 1)")
    db.execute("INSERT INTO type_int VALUES (2000, 1, 'later', 1)")
    db.execute("UPDATE new_pk SET v = 'later' WHERE id = 7")
    wait_same(db, p, tables)


def test_ddl_during_catchup_copies_again(db, pipelines, monkeypatch, tmp_path):
    """A column added between the copy's snapshot and the end of the sync worker's
    catch-up: the Relation message of catch-up differs from the copied schema and the
    sync worker copies the table again (it does not alter the destination itself)."""
    db.execute(BASE % "t")
    db.execute(FILL % "t")
    publish(db, "pub", ["public.t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    fpdir = tmp_path / "fp"
    os.makedirs(fpdir)
    # the sync worker pauses after its copy (FinishedCopy), every time
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "sync.after_finishedcopy=sleep(2000)")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")
    p.wait_until(lambda: os.path.exists(fpdir / "sync.after_finishedcopy"), 60,
                 "the sync worker to finish its copy")
    db.execute("INSERT INTO t VALUES (1001, 1, 'before', 1)")
    db.execute("ALTER TABLE t ADD COLUMN c int DEFAULT 5")
    db.execute("INSERT INTO t VALUES (1002, 2, 'after', 2, 6)")
    db.execute("UPDATE t SET c = 9 WHERE id = 1")
    p.wait_until(lambda: p.log_contains("schema changed during catch-up, copying the table again"),
                 60, "the sync worker to notice the schema change")
    wait_same(db, p, ["t"])
    st = p.tables()["public.t"]
    assert st["phase"] == "ready" and st["error"] is None, st


def test_crash_after_schema_change_does_not_roll_back(db, pipelines, monkeypatch, tmp_path):
    """kill -9 of the apply worker right after the destination transaction that altered a
    table committed, before the slot confirmed it: the restarted worker replays the
    transaction, with the Relation message of the old schema first, and the destination
    keeps the new schema."""
    db.execute(BASE % "t")
    db.execute(FILL % "t")
    publish(db, "pub", ["public.t"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"retry": {"backoff_initial_ms": "200"}})
    fpdir = tmp_path / "fp"
    os.makedirs(fpdir)
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "apply.after_schema_change=abort")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")
    p.wait_all_ready(["public.t"])
    # the old schema's Relation comes first in this transaction, then the new one
    db.execute("""BEGIN;
        INSERT INTO t VALUES (1001, 1, 'old schema', 1);
        ALTER TABLE t ADD COLUMN c int DEFAULT 7;
        INSERT INTO t VALUES (1002, 2, 'new schema', 2, 8);
        COMMIT""")

    marker = fpdir / "apply.after_schema_change"

    def fired():
        txt = marker.read_text().strip()
        assert txt, "marker still empty"
        return int(txt)

    pid = p.wait_until(fired, 60, "the apply worker to die right after the schema change")
    p.killed_pids.add(pid)
    # the restarted apply worker replays from before the transaction
    p.wait_until(lambda: re.search(r"relation of an applied transaction, destination not "
                                   r"altered table=public\.t .*columns=4",
                                   p.log_text()), 60,
                 "the restarted apply worker to replay the old Relation")
    assert dest_columns(p, "t") == ["id", "a", "b", "n", "c"], dest_columns(p, "t")
    db.execute("INSERT INTO t VALUES (1003, 3, 'after restart', 3, 9)")
    db.execute("UPDATE t SET c = 10 WHERE id = 1")
    wait_same(db, p, ["t"])
    assert p.dest_query("SELECT c FROM t WHERE id = 2")[0] == (7,)
    newest = p.dest_newest_version("t")
    assert '"name":"c"' in newest, newest
    assert p.log_text().count("schema change followed table=public.t ") == 1, p.log_tail(60)

