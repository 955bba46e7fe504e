"""The postgres destination (issue 7) against a second PostgreSQL 15 cluster.

NOTES: the target is the session's pg_target cluster (tests/integration/conftest.py), one
fresh database per test (target_db); the pipelines of this file write there
(`--destination postgres:CONNINFO`). Tables are compared as text, exactly:
SELECT t::text FROM t ORDER BY key on the source and on the target (compare_pg_table).
"""

import pytest

from pipeline import wait_equal
from workload import BackgroundWriter, create_mixed_table, create_toast_table, publish

pytestmark = pytest.mark.parametrize("destination", ["postgres"], indirect=True)


def test_copy_and_stream_mixed(db, pipelines, target_db):
    create_mixed_table(db, "a", 5_000)
    create_mixed_table(db, "b", 100)
    db.execute("CREATE SCHEMA s2")
    create_mixed_table(db, "s2.c", 300)
    publish(db, "pub", ["a", "b", "s2.c"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.a", "public.b", "s2.c"])
    wait_equal(db.server, db.name, p, ["public.a", "public.b", "s2.c"])
    w = BackgroundWriter(db, ["a", "b", "s2.c"], (1, 100), 1_000_000, per_txn=7, seed=5)
    w.start()
    try:
        w.wait_commits(100)
    finally:
        w.stop()
    wait_equal(db.server, db.name, p, ["public.a", "public.b", "s2.c"])
    # the bookkeeping sits in the schema walrelay, keyed by pipeline
    streams = [r[0] for r in target_db.execute(
        "SELECT stream FROM walrelay.progress WHERE pipeline = %s", [p.name])]
    assert streams == ["apply"], streams


# -- every type, as text ------------------------------------------------------------------

def _types_setup(db):
    from test_types import ROWS, TYPES_DDL

    db.execute(TYPES_DDL)
    db.execute(ROWS)
    # the same table under REPLICA IDENTITY FULL (old rows come whole, TOAST included)
    db.execute("CREATE TABLE alltypes_full (LIKE alltypes INCLUDING ALL)")
    db.execute("ALTER TABLE alltypes_full REPLICA IDENTITY FULL")
    db.execute("INSERT INTO alltypes_full SELECT * FROM alltypes")
    cols = [r[0] for r in db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'alltypes'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
    assert len(cols) == 50
    return cols


def test_all_types_as_text(db, pipelines, target_db):
    """Every type of test_types.py, copied and streamed (inserts, updates of every column,
    unchanged TOAST under DEFAULT and FULL, a key change that keeps a TOASTed value),
    equal to the source as text: SELECT t::text FROM t ORDER BY id on both sides. The
    enum, domains and composite are created on the target from the source's definition."""
    cols = _types_setup(db)
    tables = ["public.alltypes", "public.alltypes_full"]
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)
    # 1. the copy (COPY text passed through)
    wait_equal(db.server, db.name, p, tables)
    # the user-defined types exist on the target with the source's definition
    assert target_db.execute("SELECT enum_range(NULL::mood)::text")[0][0] == \
        db.execute("SELECT enum_range(NULL::mood)::text")[0][0]
    assert target_db.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                             "WHERE attrelid = 'alltypes'::regclass AND attname = 'num2'"
                             )[0][0] == "numeric(12,3)"

    # 2. the same rows again as streamed INSERTs (ids + 100)
    collist = ", ".join('"%s"' % c for c in cols[1:])
    for t in ("alltypes", "alltypes_full"):
        db.execute("INSERT INTO %s (id, %s) SELECT id + 100, %s FROM %s"
                   % (t, collist, collist, t))
    wait_equal(db.server, db.name, p, tables)

    # 3. updates of every column (values move between rows), then of one column only in
    #    the row with the big values (unchanged TOAST), then its key changes
    for t in ("alltypes", "alltypes_full"):
        db.execute("""
            BEGIN;
            CREATE TEMP TABLE snap ON COMMIT DROP AS SELECT * FROM %(t)s;
            UPDATE %(t)s a SET (%(c)s) = (SELECT %(c)s FROM snap s
                WHERE s.id = CASE WHEN a.id %% 100 = 9 THEN a.id - 8 ELSE a.id + 1 END)
            WHERE a.id < 100;
            COMMIT;
            UPDATE %(t)s SET i4 = i4 + 1 WHERE id = 109;
            UPDATE %(t)s SET t = t || 'x', i2 = 2 WHERE id = 109;
            UPDATE %(t)s SET id = 1000 WHERE id = 109;
            BEGIN;
            UPDATE %(t)s SET i8 = 1 WHERE id = 1000;
            UPDATE %(t)s SET id = 1001 WHERE id = 1000;
            UPDATE %(t)s SET i8 = 2 WHERE id = 1001;
            COMMIT;
        """ % {"t": t, "c": collist})
    assert db.scalar("SELECT length(by) FROM alltypes WHERE id = 1001") > 1_000_000
    wait_equal(db.server, db.name, p, tables)
    for t in ("alltypes", "alltypes_full"):
        r = target_db.execute("SELECT length(t), length(by), length(jb::text), i4, i8 FROM %s "
                              "WHERE id = 1001" % t)[0]
        assert r[0] > 1_000_000 and r[1] > 1_000_000 and r[2] > 1_000_000, (t, r[:3])
        assert r[3:] == (2, 2), (t, r)


# -- batched apply = applying every change in order ----------------------------------------

FOLD_DDL = """
CREATE TABLE k_def (id int PRIMARY KEY, v text, n int, body text);
CREATE TABLE k_full (id int PRIMARY KEY, v text, n int, body text);
ALTER TABLE k_full REPLICA IDENTITY FULL;
CREATE TABLE k_nokey (a int, b text, n int, body text);
ALTER TABLE k_nokey REPLICA IDENTITY FULL;
CREATE TABLE k_idx (id int PRIMARY KEY, code int NOT NULL, v text, body text);
CREATE UNIQUE INDEX k_idx_code ON k_idx (code);
ALTER TABLE k_idx REPLICA IDENTITY USING INDEX k_idx_code;
"""
FOLD_TABLES = ["public.k_def", "public.k_full", "public.k_nokey", "public.k_idx"]
# incompressible, stored out of line: an UPDATE that leaves it sends "unchanged TOAST"
BIGV = "(SELECT string_agg(md5(%s::text || x), '') FROM generate_series(1, 200) x)"


def _fold_sequence(conn):
    """One transaction per block, each touching the same keys again and again: any change
    applied out of order (or folded wrongly) leaves a different table."""
    for t in ("k_def", "k_full"):
        with conn.transaction():
            conn.execute("INSERT INTO %s VALUES (1, 'a', 1, NULL)" % t)
            conn.execute("UPDATE %s SET v = 'b' WHERE id = 1" % t)
            conn.execute("DELETE FROM %s WHERE id = 1" % t)
            conn.execute("INSERT INTO %s VALUES (1, 'c', 3, %s)" % (t, BIGV % 1))
            conn.execute("UPDATE %s SET n = 4 WHERE id = 1" % t)          # body unchanged
            conn.execute("UPDATE %s SET id = 2 WHERE id = 1" % t)         # key change
            conn.execute("INSERT INTO %s VALUES (1, 'd', 5, NULL)" % t)   # the old key again
            # swap 1 and 2 through a third key
            conn.execute("UPDATE %s SET id = 3 WHERE id = 1" % t)
            conn.execute("UPDATE %s SET id = 1 WHERE id = 2" % t)
            conn.execute("UPDATE %s SET id = 2 WHERE id = 3" % t)
            conn.execute("UPDATE %s SET v = NULL WHERE id = 2" % t)
            conn.execute("INSERT INTO %s SELECT g, 'bulk', g, NULL FROM generate_series(10, 80) g"
                         % t)
            conn.execute("DELETE FROM %s WHERE id BETWEEN 20 AND 30" % t)
            conn.execute("UPDATE %s SET n = -n WHERE id BETWEEN 25 AND 40" % t)
            conn.execute("INSERT INTO %s SELECT g, 'again', g, NULL FROM generate_series(20, 24) g"
                         % t)
        # a row of the target (not of this batch) whose key changes while a TOASTed value
        # stays: the new key's row needs the target's value
        conn.execute("UPDATE %s SET body = %s WHERE id = 50" % (t, BIGV % 50))
        with conn.transaction():
            conn.execute("UPDATE %s SET n = 0 WHERE id = 50" % t)
            conn.execute("UPDATE %s SET id = 500 WHERE id = 50" % t)
            conn.execute("UPDATE %s SET v = 'moved' WHERE id = 500" % t)
            conn.execute("DELETE FROM %s WHERE id = 51" % t)
            conn.execute("INSERT INTO %s VALUES (51, 'back', 51, NULL)" % t)
    with conn.transaction():
        # keyless: duplicates, NULLs, one of several identical rows at a time
        conn.execute("INSERT INTO k_nokey VALUES (1, 'x', 1, NULL), (1, 'x', 1, NULL), "
                     "(1, 'x', 1, NULL), (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL)")
        conn.execute("UPDATE k_nokey SET n = 2 WHERE ctid = (SELECT ctid FROM k_nokey "
                     "WHERE a = 1 LIMIT 1)")
        conn.execute("DELETE FROM k_nokey WHERE ctid = (SELECT ctid FROM k_nokey "
                     "WHERE a IS NULL LIMIT 1)")
        conn.execute("UPDATE k_nokey SET b = 'y' WHERE ctid = (SELECT ctid FROM k_nokey "
                     "WHERE a = 1 AND n = 1 LIMIT 1)")
        conn.execute("INSERT INTO k_nokey VALUES (2, 'big', 1, %s)" % BIGV % 2)
        conn.execute("UPDATE k_nokey SET n = 7 WHERE a = 2")  # body unchanged in the new row
        conn.execute("DELETE FROM k_nokey WHERE a = 1 AND b = 'x' AND n = 1")
    with conn.transaction():
        # USING INDEX whose columns are not the primary key: matched by code
        conn.execute("INSERT INTO k_idx VALUES (1, 1, 'a', NULL), (2, 2, 'b', NULL)")
        conn.execute("UPDATE k_idx SET id = 3 WHERE code = 1")      # primary key moves
        conn.execute("UPDATE k_idx SET id = 1 WHERE code = 2")
        conn.execute("UPDATE k_idx SET code = 5 WHERE id = 3")      # the identity moves
        conn.execute("UPDATE k_idx SET code = 1 WHERE id = 1")
        conn.execute("DELETE FROM k_idx WHERE code = 5")
        conn.execute("INSERT INTO k_idx VALUES (3, 2, 'c', NULL)")


def _fold_random(conn, rng, ntx):
    """Random transactions of 30 statements over 12 keys (and duplicates in the keyless
    table): inserts, updates (with and without the TOASTed column), key changes, swaps,
    deletes."""
    for _ in range(ntx):
        with conn.transaction():
            for _ in range(30):
                t = rng.choice(["k_def", "k_full"])
                k, k2 = rng.randint(1, 12), rng.randint(1, 12)
                op = rng.random()
                if op < 0.25:
                    conn.execute("INSERT INTO %s VALUES (%%s, %%s, %%s, NULL) ON CONFLICT DO "
                                 "NOTHING" % t, [k, "i%d" % rng.randrange(100), k])
                elif op < 0.45:
                    conn.execute("UPDATE %s SET v = %%s, n = n + 1 WHERE id = %%s" % t,
                                 [rng.choice([None, "", "u%d" % rng.randrange(100)]), k])
                elif op < 0.5:
                    conn.execute("UPDATE %s SET body = %s WHERE id = %%s" % (t, BIGV % k), [k])
                elif op < 0.65:
                    conn.execute("UPDATE %s SET id = %%s WHERE id = %%s AND NOT EXISTS "
                                 "(SELECT 1 FROM %s WHERE id = %%s)" % (t, t), [k2, k, k2])
                elif op < 0.75 and k != k2:
                    conn.execute("UPDATE %s SET id = -1 WHERE id = %%s AND EXISTS (SELECT 1 "
                                 "FROM %s WHERE id = %%s)" % (t, t), [k, k2])
                    conn.execute("UPDATE %s SET id = %%s WHERE id = %%s AND EXISTS (SELECT 1 "
                                 "FROM %s WHERE id = -1)" % (t, t), [k, k2])
                    conn.execute("UPDATE %s SET id = %%s WHERE id = -1" % t, [k2])
                else:
                    conn.execute("DELETE FROM %s WHERE id = %%s" % t, [k])
                r = rng.random()
                if r < 0.3:
                    conn.execute("INSERT INTO k_nokey VALUES (%s, %s, %s, NULL)",
                                 [rng.randint(1, 3), rng.choice([None, "d"]), rng.randint(1, 2)])
                elif r < 0.45:
                    conn.execute("UPDATE k_nokey SET n = n + 10 WHERE ctid = (SELECT ctid FROM "
                                 "k_nokey WHERE a = %s LIMIT 1)", [rng.randint(1, 3)])
                elif r < 0.6:
                    conn.execute("DELETE FROM k_nokey WHERE ctid = (SELECT ctid FROM k_nokey "
                                 "WHERE a IS NOT DISTINCT FROM %s LIMIT 1)",
                                 [rng.choice([None, 1, 2, 3])])


def test_batched_apply_equals_changes_in_order(db, pipelines, target_db):
    """Changes of the same keys inserted, updated, deleted and re-keyed again and again
    within transactions, many transactions per destination batch, under REPLICA IDENTITY
    DEFAULT, FULL with a key, FULL without one (duplicates, NULLs) and USING INDEX: the
    target equals the source as text after every round."""
    import random

    db.execute(FOLD_DDL)
    publish(db, "pub", FOLD_TABLES)
    p = pipelines()
    p.init(db.conninfo, "pub", config={"batch": {"max_fill_ms": "2000"}, "log": {"level": "debug"}})
    p.start()
    p.wait_all_ready(FOLD_TABLES)
    with db.connect() as conn:
        _fold_sequence(conn)
    wait_equal(db.server, db.name, p, FOLD_TABLES)
    rng = random.Random(7)
    with db.connect() as conn:
        for _ in range(3):
            _fold_random(conn, rng, 40)
    wait_equal(db.server, db.name, p, FOLD_TABLES)
    # the TOASTed value that moved with its key is there in full
    assert target_db.scalar("SELECT length(body) FROM k_def WHERE id = 500") == 6400
    assert target_db.scalar("SELECT length(body) FROM k_full WHERE id = 500") == 6400
    assert p.unexpected_crashes() == []
