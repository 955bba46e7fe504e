"""Replica identities, tables without a primary key, unchanged TOAST, refused tables,
partitioned tables and TRUNCATE variants, end to end.

Every test ends with the destination compared to the source row by row (pipeline.py
compare_table; tables without a primary key as multisets of rows). Every test runs against
the sqlite destination and the postgres destination (compared as text there:
compare_pg_table).
"""

import pytest

from pipeline import compare_tables, wait_equal
from workload import publish

# the sqlite destination, and the postgres destination (a second cluster)
pytestmark = pytest.mark.parametrize("destination", ["sqlite", "postgres"], indirect=True)

# A text value of ~1.3 MB that does not compress: stored out of line (TOAST), so an
# UPDATE that leaves it alone sends it as "unchanged TOAST".
BIG = "(SELECT string_agg(md5(%s::text || ':' || x), '') FROM generate_series(1, 40000) x)"


def big(seed):
    return BIG % ("'%s'" % seed)


def start_with_catchup_window(p, monkeypatch, tmp_path, nsync):
    """Starts p with every sync worker pausing 4 s after FinishedCopy (failpoint
    sync.after_finishedcopy), and returns once all nsync of them are there: changes
    committed now are after their consistent points and before the apply worker grants
    Catchup, so the sync workers' catch-up (not the apply worker) applies them."""
    fpdir = tmp_path / "failpoints"
    fpdir.mkdir()
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "sync.after_finishedcopy=sleep(4000)")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")
    # sleep leaves one marker file for the point; count the workers in the log instead
    p.wait_until(lambda: p.log_text().count("failpoint fired name=sync.after_finishedcopy")
                 >= nsync, 120, "%d sync workers paused after FinishedCopy" % nsync)


def test_replica_identities(db, pipelines, monkeypatch, tmp_path):
    """DEFAULT, FULL with and without a primary key, USING INDEX (whose columns are not
    the primary key): inserts, updates (also of the key, and of the primary key while the
    identity index stays), deletes, duplicate rows and NULLs in the keyless table, and
    unchanged TOAST under DEFAULT and FULL, also right after an INSERT in the same
    transaction."""
    db.execute("""
        CREATE TABLE t_def (id int PRIMARY KEY, v text, n int NOT NULL DEFAULT 0, body text);
        CREATE TABLE t_fullpk (id int PRIMARY KEY, v text, n int NOT NULL DEFAULT 0, body text);
        ALTER TABLE t_fullpk REPLICA IDENTITY FULL;
        CREATE TABLE t_nokey (a int, b text, f float8, body text);
        ALTER TABLE t_nokey REPLICA IDENTITY FULL;
        CREATE TABLE t_idx (id int PRIMARY KEY, code text NOT NULL, v text, body text);
        CREATE UNIQUE INDEX t_idx_code ON t_idx (code);
        ALTER TABLE t_idx REPLICA IDENTITY USING INDEX t_idx_code;
        INSERT INTO t_def SELECT g, 'v' || g, 0, NULL FROM generate_series(1, 50) g;
        INSERT INTO t_fullpk SELECT g, 'v' || g, 0, NULL FROM generate_series(1, 50) g;
        INSERT INTO t_nokey SELECT g % 5, CASE WHEN g % 3 = 0 THEN NULL ELSE 'b' || g % 4 END,
                                   CASE WHEN g % 7 = 0 THEN 'NaN' ELSE g / 4.0 END, NULL
                            FROM generate_series(1, 60) g;
        INSERT INTO t_nokey VALUES (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL);
        INSERT INTO t_idx SELECT g, 'c' || g, 'v' || g, NULL FROM generate_series(1, 50) g;
    """)
    for t in ("t_def", "t_fullpk", "t_idx"):
        db.execute("UPDATE %s SET body = %s WHERE id <= 3" % (t, big(t)))
    db.execute("UPDATE t_nokey SET body = %s WHERE a = 1 AND b = 'b1'" % big("nk"))
    tables = ["public.t_def", "public.t_fullpk", "public.t_nokey", "public.t_idx"]
    publish(db, "pub", tables)

    def during_catchup(conn, i):
        k = 1000 + i
        with conn.transaction():
            conn.execute("INSERT INTO t_def VALUES (%s, 'x', 0, NULL)", [k])
            conn.execute("UPDATE t_def SET n = n + 1 WHERE id = %s", [k])
            conn.execute("INSERT INTO t_fullpk VALUES (%s, 'x', 0, NULL)", [k])
            conn.execute("UPDATE t_fullpk SET v = 'y' WHERE id = %s", [k])
            conn.execute("INSERT INTO t_nokey VALUES (99, 'dup', 1.5, NULL)")
            conn.execute("INSERT INTO t_idx VALUES (%s, %s, 'x', NULL)", [k, "k%d" % k])
            conn.execute("UPDATE t_idx SET id = id + 100000 WHERE id = %s", [k])
            conn.execute("UPDATE t_idx SET code = code || 'z' WHERE id = %s", [k + 100000])
            if i % 3 == 0:
                conn.execute("DELETE FROM t_nokey WHERE ctid = (SELECT ctid FROM t_nokey "
                             "WHERE a = 99 LIMIT 1)")

    p = pipelines()
    p.init(db.conninfo, "pub")
    start_with_catchup_window(p, monkeypatch, tmp_path, len(tables))
    with db.connect() as conn:
        for i in range(30):
            during_catchup(conn, i)
    p.wait_all_ready(tables, timeout=180)
    # each sync worker applied changes of its table in catch-up
    for t in tables:
        assert any("syncdone table=%s " % t in line and "applied=0 " not in line
                   for line in p.log_text().splitlines()), (t, p.log_tail())
    wait_equal(db.server, db.name, p, tables)

    with db.connect() as conn:
        # DEFAULT: plain updates, a key change (old key 'K'), unchanged TOAST, delete
        conn.execute("UPDATE t_def SET v = 'changed', n = n + 1 WHERE id BETWEEN 1 AND 10")
        conn.execute("UPDATE t_def SET id = 500 WHERE id = 2")  # body stays unchanged TOAST
        conn.execute("DELETE FROM t_def WHERE id IN (11, 12)")
        # FULL with a primary key: the old row ('O') comes whole, body unchanged
        conn.execute("UPDATE t_fullpk SET n = n + 5 WHERE id <= 5")
        conn.execute("UPDATE t_fullpk SET id = 600 WHERE id = 3")
        conn.execute("DELETE FROM t_fullpk WHERE id IN (1, 20)")
        # USING INDEX: the primary key changes while code stays (no old key), then code
        conn.execute("UPDATE t_idx SET id = 700, v = 'moved' WHERE code = 'c1'")
        conn.execute("UPDATE t_idx SET code = 'c2-new' WHERE id = 2")
        conn.execute("UPDATE t_idx SET v = 'toast kept' WHERE id = 3")
        conn.execute("DELETE FROM t_idx WHERE code IN ('c4', 'c5')")
        # keyless FULL: one of several identical rows at a time, NULL rows, TOAST
        conn.execute("UPDATE t_nokey SET b = 'one' WHERE ctid = (SELECT ctid FROM t_nokey "
                     "WHERE a = 2 AND b = 'b2' LIMIT 1)")
        conn.execute("DELETE FROM t_nokey WHERE ctid = (SELECT ctid FROM t_nokey "
                     "WHERE a = 3 AND b IS NULL LIMIT 1)")
        conn.execute("UPDATE t_nokey SET a = -1 WHERE ctid = (SELECT ctid FROM t_nokey "
                     "WHERE a IS NULL LIMIT 1)")
        conn.execute("UPDATE t_nokey SET f = 'Infinity' WHERE a = 4")
        conn.execute("UPDATE t_nokey SET f = -0.0 WHERE a = 0 AND b IS NULL")
        conn.execute("UPDATE t_nokey SET a = 11 WHERE a = 1 AND b = 'b1'")  # body unchanged
        conn.execute("DELETE FROM t_nokey WHERE a = 99")
        # an INSERT then UPDATEs of the same row in one transaction: the insert carries
        # the big value, the updates mark it unchanged
        with conn.transaction():
            for t in ("t_def", "t_fullpk"):
                conn.execute("INSERT INTO %s VALUES (900, 'new', 0, %s)" % (t, big(t + "900")))
                conn.execute("UPDATE %s SET n = n + 1 WHERE id = 900" % t)
                conn.execute("UPDATE %s SET v = 'again' WHERE id = 900" % t)
            conn.execute("INSERT INTO t_idx VALUES (900, 'c900', 'new', %s)" % big("idx900"))
            conn.execute("UPDATE t_idx SET v = 'upd' WHERE id = 900")
            conn.execute("INSERT INTO t_nokey VALUES (900, 'new', 1, %s)" % big("nk900"))
            conn.execute("UPDATE t_nokey SET f = 2 WHERE a = 900")
            conn.execute("INSERT INTO t_nokey VALUES (900, 'new', 2, %s)" % big("nk900"))
            conn.execute("UPDATE t_nokey SET b = 'both' WHERE a = 900")
    # the big values really were stored out of line and left alone
    assert db.scalar("SELECT count(*) FROM t_def WHERE length(body) > 1000000") == 4
    wait_equal(db.server, db.name, p, tables)
    assert p.dest_query("SELECT count(*) FROM t_nokey WHERE a = 900 AND b = 'both' "
                        "AND length(body) > 1000000")[0][0] == 2
    assert p.dest_query("SELECT count(*) FROM t_def WHERE body IS NULL AND id IN (2, 500, 900)"
                        )[0][0] == 0
    # keying: the source primary key, none for the keyless table
    pks = {t: p.dest_key(t) for t in ("t_def", "t_fullpk", "t_nokey", "t_idx")}
    assert pks == {"t_def": ["id"], "t_fullpk": ["id"], "t_nokey": [], "t_idx": ["id"]}, pks
    st = p.status()
    assert all(t["phase"] == "ready" for t in st["tables"]), st


def test_refused_tables(db, pipelines):
    """REPLICA IDENTITY NOTHING, and DEFAULT without a primary key, in a publication of
    updates and deletes: `check` fails naming the fix, `run` sets those tables ERRORED
    (unsupported) without copying them and replicates the others. A publication of
    inserts only takes them."""
    db.execute("""
        CREATE TABLE t_ok (id int PRIMARY KEY, v text);
        CREATE TABLE t_nothing (id int PRIMARY KEY, v text);
        ALTER TABLE t_nothing REPLICA IDENTITY NOTHING;
        CREATE TABLE t_nopk (a int, b text);
        INSERT INTO t_ok SELECT g, 'v' || g FROM generate_series(1, 20) g;
        INSERT INTO t_nothing SELECT g, 'v' || g FROM generate_series(1, 20) g;
        INSERT INTO t_nopk SELECT g % 3, 'b' FROM generate_series(1, 20) g;
    """)
    publish(db, "pub", ["t_ok", "t_nothing", "t_nopk"])
    db.execute("CREATE PUBLICATION pub_ins FOR TABLE t_nothing, t_nopk WITH (publish = 'insert')")

    p = pipelines()
    p.init(db.conninfo, "pub")
    r = p.cmd("check", p.dir)
    assert r.rc != 0, r
    assert 'FAILED replica_identity: table "public.t_nothing" has replica identity NOTHING' in r.out, r
    assert 'FAILED replica_identity: table "public.t_nopk" has no primary key and replica ' \
           'identity DEFAULT' in r.out, r
    assert "hint: ALTER TABLE \"public\".\"t_nothing\" REPLICA IDENTITY FULL, or add a primary key" \
        in r.out, r
    assert "hint: ALTER TABLE \"public\".\"t_nopk\" REPLICA IDENTITY FULL, or add a primary key" \
        in r.out, r
    assert "check failed: 2 problems" in r.out, r
    assert "t_ok" not in r.out, r

    p.start()
    p.wait_until(lambda: p.tables().get("public.t_ok", {}).get("phase") == "ready", 120,
                 "public.t_ok ready")
    tabs = p.tables()
    for name in ("public.t_nothing", "public.t_nopk"):
        t = tabs[name]
        assert t["phase"] == "errored", t
        assert t["err_kind"] == "unsupported", t
        assert "publication \"pub\" publishes its updates and deletes" in t["err_msg"], t
        assert "REPLICA IDENTITY FULL, or add a primary key" in t["err_hint"], t
        assert "walrelay resync" in t["err_hint"], t
        assert t["rows_copied"] == 0, t
    assert "cannot start" not in p.log_text()
    # the rest of the pipeline runs; the refused tables are neither copied nor applied
    # (PostgreSQL itself refuses their UPDATEs and DELETEs; their INSERTs still stream)
    db.execute("INSERT INTO t_ok VALUES (100, 'new'); INSERT INTO t_nothing VALUES (100, 'x'); "
               "INSERT INTO t_nopk VALUES (5, 'y'); UPDATE t_ok SET v = 'upd' WHERE id < 5")
    wait_equal(db.server, db.name, p, ["public.t_ok"])
    names = p.dest_tables()
    assert "t_nothing" not in names and "t_nopk" not in names, names
    assert p.running()
    assert p.tables()["public.t_nothing"]["phase"] == "errored"

    # inserts only: any identity is fine
    q = pipelines()
    q.init(db.conninfo, "pub_ins")
    r = q.cmd("check", q.dir)
    assert r.rc == 0, r
    assert "replica_identity" not in r.out, r
    q.start()
    q.wait_all_ready(["public.t_nothing", "public.t_nopk"])
    db.execute("INSERT INTO t_nothing VALUES (200, 'ins'); INSERT INTO t_nopk VALUES (1, 'b'), "
               "(1, 'b'), (NULL, NULL)")
    wait_equal(db.server, db.name, q, ["public.t_nothing", "public.t_nopk"])


PART_DDL = """
    CREATE TABLE meas (id int, region text, v text, n int NOT NULL DEFAULT 0,
                       PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE meas_a PARTITION OF meas FOR VALUES IN ('a');
    CREATE TABLE meas_b PARTITION OF meas FOR VALUES IN ('b');
    CREATE TABLE meas_rest PARTITION OF meas DEFAULT;
    INSERT INTO meas SELECT g, (ARRAY['a', 'b', 'c', 'd'])[g % 4 + 1], 'v' || g
                     FROM generate_series(1, 200) g;
"""


def _part_changes(db):
    db.execute("""
        INSERT INTO meas SELECT g, (ARRAY['a', 'b', 'c'])[g % 3 + 1], 'new' FROM
            generate_series(1000, 1030) g;
        UPDATE meas SET v = 'same partition', n = n + 1 WHERE id <= 20;
        UPDATE meas SET region = 'b' WHERE region = 'a' AND id BETWEEN 21 AND 60;
        UPDATE meas SET region = 'zz', v = 'to default' WHERE region = 'b' AND id > 150;
        UPDATE meas SET region = 'a' WHERE region = 'c' AND id < 100;
        DELETE FROM meas WHERE id BETWEEN 100 AND 110;
    """)


def test_partitioned_tables(db, pipelines):
    """publish_via_partition_root off: the leaves are the published tables, each its own
    destination table; on: the root is (copied with COPY (SELECT ...)) and changes of
    every partition arrive under its relid. Rows move between partitions."""
    db.execute(PART_DDL)
    db.execute("CREATE PUBLICATION pub_leaves FOR TABLE meas")
    db.execute("CREATE PUBLICATION pub_root FOR TABLE meas WITH (publish_via_partition_root)")
    leaves = ["public.meas_a", "public.meas_b", "public.meas_rest"]

    p_leaves = pipelines()
    p_leaves.init(db.conninfo, "pub_leaves")
    p_root = pipelines()
    p_root.init(db.conninfo, "pub_root")
    p_leaves.start()
    p_root.start()
    p_leaves.wait_all_ready(leaves)
    p_root.wait_all_ready(["public.meas"])
    assert sum(t["rows_copied"] for t in p_leaves.status()["tables"]) == 200
    assert p_root.tables()["public.meas"]["rows_copied"] == 200
    assert p_root.tables()["public.meas"]["relid"] == db.relid("meas")

    _part_changes(db)
    wait_equal(db.server, db.name, p_leaves, leaves)
    wait_equal(db.server, db.name, p_root, ["public.meas"])
    names = p_root.dest_tables()
    assert p_root.dest_query("SELECT count(*) FROM meas WHERE region = 'zz'")[0][0] > 0
    assert "meas_a" not in names, names
    names = p_leaves.dest_tables()
    assert "meas" not in names and {"meas_a", "meas_b", "meas_rest"} <= names, names

    # TRUNCATE of the partitioned table: the root's or every leaf's destination empties
    db.execute("TRUNCATE meas; INSERT INTO meas VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'q', 'z')")
    wait_equal(db.server, db.name, p_leaves, leaves)
    wait_equal(db.server, db.name, p_root, ["public.meas"])
    assert p_root.dest_query("SELECT count(*) FROM meas")[0][0] == 3


def test_truncate_several_cascade_restart_identity(db, pipelines):
    """TRUNCATE of several tables in one statement, with CASCADE reaching a published
    foreign-key child, and RESTART IDENTITY: later inserts reuse the ids."""
    db.execute("""
        CREATE TABLE parent (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
        CREATE TABLE child (id serial PRIMARY KEY,
                            parent_id int NOT NULL REFERENCES parent (id), v text);
        CREATE TABLE other (id bigserial PRIMARY KEY, v text);
        CREATE TABLE kept (id int PRIMARY KEY, v text);
        INSERT INTO parent (v) SELECT 'p' || g FROM generate_series(1, 30) g;
        INSERT INTO child (parent_id, v) SELECT g, 'c' || g FROM generate_series(1, 30) g;
        INSERT INTO other (v) SELECT 'o' || g FROM generate_series(1, 30) g;
        INSERT INTO kept SELECT g, 'k' FROM generate_series(1, 30) g;
    """)
    tables = ["public.parent", "public.child", "public.other", "public.kept"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)

    db.execute("""
        BEGIN;
        INSERT INTO other (v) VALUES ('before');
        TRUNCATE parent, other RESTART IDENTITY CASCADE;
        INSERT INTO parent (v) VALUES ('after 1'), ('after 2');
        INSERT INTO child (parent_id, v) VALUES (1, 'after');
        COMMIT;
        INSERT INTO other (v) SELECT 'later' || g FROM generate_series(1, 5) g;
        INSERT INTO kept VALUES (31, 'k');
    """)
    assert db.scalar("SELECT min(id) FROM other") == 1
    assert db.scalar("SELECT count(*) FROM child") == 1
    wait_equal(db.server, db.name, p, tables)
    assert [r[0] for r in p.dest_query("SELECT id FROM other ORDER BY id")] == [1, 2, 3, 4, 5]
    assert p.dest_query("SELECT count(*) FROM kept")[0][0] == 31
    # and a plain TRUNCATE of one table, then more rows
    db.execute("TRUNCATE child; INSERT INTO child (parent_id, v) VALUES (2, 'x')")
    wait_equal(db.server, db.name, p, tables)
    assert not compare_tables(db.server, db.name, p, tables)
