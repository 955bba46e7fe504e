"""The postgres destination (issue 7) against a second PostgreSQL 15 cluster.

NOTES: the target is the session's pg_target cluster (tests/integration/conftest.py), one
fresh database per test (target_db); the pipelines of this file write there
(`--destination postgres:CONNINFO`). Tables are compared as text, exactly:
SELECT t::text FROM t ORDER BY key on the source and on the target (compare_pg_table).
"""

import json
import re

import pytest

from pipeline import wait_equal
from workload import BackgroundWriter, create_mixed_table, create_toast_table, publish

pytestmark = pytest.mark.parametrize("destination", ["postgres"], indirect=True)


def _running(db, pipelines, tables):
    """A pipeline of publication "pub" (created for tables) started, every table ready."""
    publish(db, "pub", tables)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(tables)
    return p


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
    p = _running(db, pipelines, tables)
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


def test_binary_copy_of_builtin_types_as_text(db, pipelines, target_db):
    """The copy of a table whose columns are all built-in types goes in PostgreSQL's binary
    COPY format (both servers are 15), and is equal to the source as text: every built-in
    type of test_types.py with its edge values (NaN, infinities, BC, -0, every byte, arrays
    with bounds, ranges, values over 1 MB, NULLs). A table with an enum, a domain or a
    composite goes in text, and says why."""
    text_only = ("en", "dom", "domt", "comp", "tsv", "tsq", "x")
    cols = [c for c in _types_setup(db) if c not in text_only]
    db.execute("CREATE TABLE bintypes AS SELECT %s FROM alltypes" % ", ".join(
        '"%s"' % c for c in cols))
    db.execute("ALTER TABLE bintypes ADD PRIMARY KEY (id)")
    # an empty table too: its COPY is the signature and the trailer in one message
    db.execute("CREATE TABLE binempty (id int PRIMARY KEY, v numeric, at timestamptz)")
    tables = ["public.bintypes", "public.binempty", "public.alltypes"]
    p = _running(db, pipelines, tables)
    wait_equal(db.server, db.name, p, tables)
    log = p.log_text()
    rows = db.scalar("SELECT count(*) FROM bintypes")
    assert rows >= 9
    assert re.search(r"copy finished table=public\.bintypes rows=%d .*format=binary" % rows, log), log
    assert re.search(r"copy finished table=public\.binempty rows=0 .*format=binary", log), log
    assert re.search(r"copy finished table=public\.alltypes rows=\d+ .*format=text", log), log
    assert re.search(r"copy in the text format table=public\.alltypes column=en type=mood", log), log
    # the big values arrived whole
    r = target_db.execute("SELECT length(t), length(by), length(jb::text) FROM bintypes "
                          "WHERE id = 9")[0]
    assert min(r) > 1_000_000, r
    # and the table streams on as usual
    db.execute("INSERT INTO bintypes SELECT id + 100, %s FROM bintypes" % ", ".join(
        '"%s"' % c for c in cols[1:]))
    wait_equal(db.server, db.name, p, tables)



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
    p.init(db.conninfo, "pub", config={"batch": {"max_fill_ms": "2000"}})
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


# -- schema changes the postgres destination follows in place ------------------------------

def test_type_change_followed_in_place_or_copied(db, pipelines, target_db):
    """A type change PostgreSQL made without touching the stored values (varchar(10) to
    varchar(40), varchar to text, numeric(8,2) to numeric(12,2)) is followed with ALTER
    COLUMN ... TYPE in the target; one that rewrote the table (int to bigint) copies the
    table again. The target has the source's new types and rows either way."""
    db.execute("""
        CREATE TABLE widen (id int PRIMARY KEY, v varchar(10), w varchar(5), n numeric(8,2),
                            i int);
        INSERT INTO widen SELECT g, 'v' || g, 'w' || (g % 100), g / 3.0, g FROM
            generate_series(1, 300) g;
        CREATE TABLE rewrite (id int PRIMARY KEY, i int, v text);
        INSERT INTO rewrite SELECT g, g, 'r' || g FROM generate_series(1, 300) g;
    """)
    tables = ["public.widen", "public.rewrite"]
    p = _running(db, pipelines, tables)
    db.execute("""
        BEGIN;
        UPDATE widen SET v = 'before' WHERE id = 1;
        ALTER TABLE widen ALTER COLUMN v TYPE varchar(40), ALTER COLUMN w TYPE text,
                          ALTER COLUMN n TYPE numeric(12,2);
        INSERT INTO widen VALUES (1001, repeat('x', 40), repeat('y', 50), 1234567890.12, 1);
        COMMIT;
        ALTER TABLE rewrite ALTER COLUMN i TYPE bigint;
        INSERT INTO rewrite VALUES (1001, 9000000000, 'big');
        UPDATE rewrite SET i = i * 10000000 WHERE id < 10;
    """)
    p.wait_until(lambda: p.log_contains("schema change followed table=public.widen "), 120,
                 "the type changes of widen followed")
    p.wait_flushed(db.current_wal_lsn())
    p.wait_all_ready(tables)
    wait_equal(db.server, db.name, p, tables)
    types = dict(target_db.execute(
        "SELECT attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod) "
        "FROM pg_attribute WHERE attrelid IN ('widen'::regclass, 'rewrite'::regclass) "
        "AND attnum > 0 AND NOT attisdropped"))
    assert types["widen.v"] == "character varying(40)", types
    assert types["widen.w"] == "text", types
    assert types["widen.n"] == "numeric(12,2)", types
    assert types["rewrite.i"] == "bigint", types
    log = p.log_text()
    assert "copying the table again table=public.widen" not in log, p.log_tail(40)
    assert "copying the table again table=public.rewrite" in log, p.log_tail(40)
    assert p.dest_key("widen") == ["id"]


# -- errors ---------------------------------------------------------------------------------------

def _good_and_bad(db, pipelines, target_db, rows):
    """Tables good and bad replicating (ready), and a CHECK on the target's bad that
    refuses qty >= 1e9; returns the running pipeline."""
    create_mixed_table(db, "good", rows)
    create_mixed_table(db, "bad", rows)
    publish(db, "pub", ["good", "bad"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.good", "public.bad"])
    target_db.execute("ALTER TABLE bad ADD CONSTRAINT qty_small CHECK (qty < 1000000000)")
    return p


def _bad_errored(p):
    """Waits for public.bad to go errored with the target's message; its table entry."""
    def errored():
        t = p.tables()["public.bad"]
        return t if t["phase"] == "errored" else None

    t = p.wait_until(errored, 120, "table bad errored")
    assert "qty_small" in t["err_msg"] and "23514" in t["err_msg"], t
    return t


def _retry_bad(db, p, target_db):
    """The constraint dropped, `walrelay retry` copies bad again: both tables equal."""
    target_db.execute("ALTER TABLE bad DROP CONSTRAINT qty_small")
    r = p.cmd("retry", p.dir, "public.bad")
    assert r.rc == 0, r
    p.wait_all_ready(["public.good", "public.bad"])
    wait_equal(db.server, db.name, p, ["public.good", "public.bad"])


def test_target_refusal_errors_only_that_table(db, pipelines, target_db):
    """A constraint added on the target refuses a row: that table goes to errored with the
    target's message and a hint, the other table keeps replicating; once the constraint is
    gone, `walrelay retry` copies the table again and it is equal."""
    p = _good_and_bad(db, pipelines, target_db, 100)
    # both tables change in the same source transactions; the last value of bad's row is
    # one the target refuses (a batch writes each key's net change: a value a later
    # change replaced never reaches the target)
    with db.connect() as conn:
        for i in range(5):
            with conn.transaction():
                conn.execute("UPDATE good SET name = 'g%d' WHERE id = 1" % i)
                conn.execute("UPDATE bad SET qty = %s WHERE id = 2" % (i if i < 4 else 2000000000))
                conn.execute("INSERT INTO good (id, name) VALUES (%s, 'new')" % (1000 + i))
    t = _bad_errored(p)
    assert "walrelay retry" in t["err_hint"], t
    wait_equal(db.server, db.name, p, ["public.good"])
    assert p.tables()["public.good"]["phase"] == "ready"
    _retry_bad(db, p, target_db)


def test_target_refuses_a_live_insert(db, pipelines, target_db):
    """A transaction that only inserts rows into one table is written and committed in one
    round trip, with no savepoint: when the target refuses the INSERT, that table goes to
    errored with the target's message, nothing of that transaction is applied, and the
    other tables go on (their later transactions arrive)."""
    p = _good_and_bad(db, pipelines, target_db, 10)
    db.execute("INSERT INTO bad (id, name, qty) VALUES (100, 'refused', 2000000000), "
               "(101, 'with it', 1)")
    _bad_errored(p)
    # the row the target accepted went with the refused one
    assert target_db.scalar("SELECT count(*) FROM bad WHERE id >= 100") == 0
    for i in range(3):
        before = db.scalar("SELECT pg_current_wal_insert_lsn()::text")
        db.execute("INSERT INTO good (id, name) VALUES (%s, 'after')" % (100 + i))
    after = db.scalar("SELECT pg_current_wal_insert_lsn()::text")
    wait_equal(db.server, db.name, p, ["public.good"])
    assert p.tables()["public.good"]["phase"] == "ready"
    # the key went with the rows (one statement: the upsert of the key is in its WITH)
    key = target_db.scalar("SELECT commit_lsn::text FROM walrelay.progress WHERE stream = 'apply'")
    assert target_db.scalar("SELECT %s::pg_lsn > %s::pg_lsn AND %s::pg_lsn <= %s::pg_lsn",
                            (key, before, key, after)), (before, key, after)
    _retry_bad(db, p, target_db)


def test_target_down_30s_mid_stream(db, pipelines, target_db, pg_target):
    """The target cluster stops for 30 s while writes go on: the apply worker reconnects
    by itself once it is back (no restart by hand, the pipeline never degraded), nothing is
    lost and nothing applied twice."""
    create_mixed_table(db, "a", 1000)
    create_mixed_table(db, "b", 1000)
    publish(db, "pub", ["a", "b"])
    p = pipelines()
    p.init(db.conninfo, "pub", config={"retry": {"backoff_initial_ms": "500"}})
    p.start()
    p.wait_all_ready(["public.a", "public.b"])
    w = BackgroundWriter(db, ["a", "b"], (1, 1000), 1_000_000, per_txn=5, seed=3, pause=0.01)
    w.start()
    try:
        w.wait_commits(20)
        pg_target.shutdown("fast")
        try:
            import time
            down_until = time.monotonic() + 30
            w.wait_commits(50)
            while time.monotonic() < down_until:
                assert p.running(), p.log_tail()
                time.sleep(1)
        finally:
            pg_target.start_again()
        w.wait_commits(50)
    finally:
        w.stop()
    wait_equal(db.server, db.name, p, ["public.a", "public.b"], timeout=180)
    st = p.status()
    assert st["state"] == "running", st
    assert all(t["phase"] == "ready" for t in st["tables"]), st
    assert p.log_contains("destination unreachable, retrying until it answers"), p.log_tail()
    assert p.log_contains("destination reachable again"), p.log_tail()


@pytest.mark.machine_wide
def test_target_network_cut_without_fin(db, pipelines, target_db):
    """The path to the target is black-holed mid-stream (no FIN, no RST: a cable pulled)
    with walrelay's default connection settings (docs/configuration.md "Connection
    defaults", which the destination's connection gets too): the apply worker notices
    within their bounds instead of waiting on the kernel's retransmissions (~15 min), waits
    for the destination, and goes on by itself once the path is back; nothing is lost and
    nothing applied twice."""
    import time
    from netcut import Proxy, tc_usable
    why = tc_usable()
    if why:
        pytest.skip("cannot black-hole a port here: %s" % why)
    proxy = Proxy(target_db.server.port)
    try:
        create_mixed_table(db, "a", 500)
        publish(db, "pub", ["a"])
        p = pipelines()
        via_proxy = "host=127.0.0.1 port=%d user=postgres dbname=%s" % (proxy.port, target_db.name)
        p.init(db.conninfo, "pub", destination="postgres:" + via_proxy,
               config={"retry": {"backoff_initial_ms": "500"}})
        p.start()
        p.wait_all_ready(["public.a"])
        w = BackgroundWriter(db, ["a"], (1, 500), 1_000_000, per_txn=5, seed=4, pause=0.01)
        w.start()
        try:
            w.wait_commits(20)
            offset = len(p.log_text())
            cut = time.monotonic()
            proxy.cut()
            try:
                p.wait_until(lambda: re.search(r"connection to the destination lost|"
                                               r"destination unreachable",
                                               p.log_text()[offset:]), 120,
                             "the apply worker noticing the cut")
                noticed = time.monotonic() - cut
                print("the cut was noticed after %.1f s" % noticed)
                w.wait_commits(20)  # the source goes on meanwhile
            finally:
                proxy.heal()
            w.wait_commits(20)
        finally:
            w.stop()
        # tcp_user_timeout 30 s (a statement waiting for its answer), keepalives 25 s
        assert noticed < 60, "the cut was noticed after %.1f s" % noticed
        wait_equal(db.server, db.name, p, ["public.a"], timeout=180)
        st = p.status()
        assert st["state"] == "running", st
        assert p.tables()["public.a"]["phase"] == "ready"
    finally:
        proxy.close()


# -- configuration, check, secrets --------------------------------------------------------------

def test_check_schema_option_and_no_password_shown(db, pipelines, target_db, pg_target):
    """`walrelay check` reports the target (version, where), a wrong one fails naming it;
    `schema = NAME` puts every table in that schema (nsp.t as t or nsp__t); a password in
    the conninfo is never printed by init, check, status or the log."""
    create_mixed_table(db, "t", 50)
    db.execute("CREATE SCHEMA s")
    create_mixed_table(db, "s.t", 20)
    publish(db, "pub", ["t", "s.t"])
    secret = "s3cr3t-Pw"
    conninfo = target_db.conninfo + " password=" + secret
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="postgres:" + conninfo,
               config={"destination": {"schema": "replica"}})
    assert secret not in r.text, r
    assert "destination  postgres:%s password=***" % target_db.conninfo in r.out, r
    r = p.cmd("check", p.dir)
    assert r.rc == 0, r
    assert "destination: postgres host=127.0.0.1" in r.out and "(PostgreSQL 15." in r.out, r
    assert "schema replica" in r.out and secret not in r.text, r
    p.start()
    p.wait_all_ready(["public.t", "s.t"])
    db.execute("INSERT INTO t (id, name) VALUES (1000, 'x'); UPDATE s.t SET name = 'y'")
    p.wait_flushed(db.current_wal_lsn())
    with db.connect() as src, target_db.connect() as dst:
        from pipeline import compare_pg_table, prepare_compare_conn
        prepare_compare_conn(src)
        prepare_compare_conn(dst)
        assert compare_pg_table(src, dst, "public", "t", target=("replica", "t")) == []
        assert compare_pg_table(src, dst, "s", "t", target=("replica", "s__t")) == []
    assert secret not in p.cmd("status", p.dir).text
    assert secret not in p.cmd("status", p.dir, "--json").text
    assert p.stop() == 0
    assert secret not in p.log_text(), "the password is in the log"
    # a target that does not answer: check fails naming it, and run refuses to start
    q = pipelines()
    q.init(db.conninfo, "pub", destination="postgres:host=127.0.0.1 port=1 dbname=x password=" +
           secret)
    r = q.cmd("check", q.dir)
    assert r.rc == 2, r
    assert "FAILED destination: cannot connect to the destination" in r.out, r
    assert "[destination] conninfo" in r.out and secret not in r.text, r


def test_extension_type_refused_then_resync(db, pipelines, target_db):
    """A column of an extension's type the target lacks (citext): the table is refused
    with a message naming the type and the extension to create; the others replicate;
    after CREATE EXTENSION on the target, `walrelay resync` copies it."""
    db.execute("CREATE EXTENSION citext")
    db.execute("CREATE TABLE ci (id int PRIMARY KEY, name citext)")
    db.execute("INSERT INTO ci SELECT g, 'Name' || g FROM generate_series(1, 10) g")
    create_mixed_table(db, "plain", 10)
    publish(db, "pub", ["ci", "plain"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()

    def errored():
        t = p.tables().get("public.ci")
        return t if t and t["phase"] == "errored" else None

    t = p.wait_until(errored, 120, "table ci errored")
    assert 'type "public.citext"' in t["err_msg"] and "extension" in t["err_msg"], t
    assert 'CREATE EXTENSION "citext"' in t["err_hint"], t
    p.wait_until(lambda: p.tables()["public.plain"]["phase"] == "ready", 120, "plain ready")
    target_db.execute("CREATE EXTENSION citext")
    r = p.cmd("resync", p.dir, "public.ci")
    assert r.rc == 0, r
    p.wait_all_ready(["public.ci", "public.plain"])
    db.execute("UPDATE ci SET name = 'changed' WHERE id = 1")
    wait_equal(db.server, db.name, p, ["public.ci", "public.plain"])


# -- history mode ([destination] mode = history, issue 9) ----------------------------------------

HISTORY = {
    "destination": {"mode": "history"},
    "sync": {"copy_batch_rows": "500"},
    "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "2000"},
    "batch": {"max_fill_ms": "100"},
}
HIST_META = ["_change_type", "_commit_lsn", "_seq", "_commit_time", "_old_key"]
HIST_ORDER = "_commit_lsn NULLS FIRST, (_change_type <> 'copy'), _seq"


def _hist_rows(target_db, table, cols=None):
    """The history rows of the target's public.<table> in history order, as dicts; the
    meta columns as text (jsonb parsed), the source columns in the JSON form of
    sinks.source_rows (int2/int4/bool native, json parsed, everything else its text)."""
    from sinks import _json_select
    with target_db.connect() as c:
        from pipeline import prepare_compare_conn
        prepare_compare_conn(c)
        names = [r[0] for r in c.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum", ["public.%s" % table]).fetchall()]
        types = dict(c.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            ["public.%s" % table]).fetchall())
        src = [n for n in names if not n.startswith("_")] if cols is None else cols
        q = "SELECT %s, _change_type, _commit_lsn::text, _seq, _commit_time, _old_key::text " \
            "FROM public.%s ORDER BY %s" % (_json_select([(n, types[n]) for n in src]), table,
                                           HIST_ORDER)
        out = []
        for r in c.execute(q):
            d = {}
            for n, v in zip(src, r):
                if v is not None and types[n] in ("json", "jsonb"):
                    v = json.loads(v)
                d[n] = v
            t, lsn, seq, when, okey = r[len(src):]
            d.update(_change_type=t, _commit_lsn=lsn, _seq=seq, _commit_time=when,
                     _old_key=json.loads(okey) if okey is not None else None)
            out.append(d)
        return names, out


def test_history_row_updated_three_times(db, pipelines, target_db):
    """mode = history: a row inserted, updated 3 times (once without touching its TOASTed
    column, so the value comes from its earlier row) and deleted (the old values from its
    latest row): 5 rows in order; the copy's rows are 'copy' rows numbered 1..n; a key
    change carries the old key; a TRUNCATE is one row of NULLs; a REPLICA IDENTITY FULL
    table's unchanged TOAST comes from the old row."""
    db.execute("CREATE TABLE h (id int PRIMARY KEY, n int, note text, body text)")
    db.execute("ALTER TABLE h ALTER COLUMN body SET STORAGE EXTERNAL")
    db.execute("INSERT INTO h SELECT g, g, 'copied', NULL FROM generate_series(1, 20) g")
    db.execute("CREATE TABLE hf (id int, body text)")
    db.execute("ALTER TABLE hf REPLICA IDENTITY FULL")
    db.execute("ALTER TABLE hf ALTER COLUMN body SET STORAGE EXTERNAL")
    publish(db, "pub", ["h", "hf"])
    p = pipelines()
    p.init(db.conninfo, "pub", config=HISTORY)
    assert "mode = history" in open(p.conf_path).read()
    r = p.cmd("check", p.dir)
    assert r.rc == 0 and "history mode" in r.out, r
    p.start()
    p.wait_all_ready(["public.h", "public.hf"])
    big = "x" * 10_000
    db.execute("INSERT INTO h VALUES (100, 0, 'new', %s)", [big])
    db.execute("UPDATE h SET n = 1, note = 'one' WHERE id = 100")  # body unchanged: TOAST
    db.execute("UPDATE h SET n = 2, body = %s WHERE id = 100", [big + "y"])
    db.execute("UPDATE h SET n = 3 WHERE id = 100")
    db.execute("DELETE FROM h WHERE id = 100")
    db.execute("UPDATE h SET id = 200 WHERE id = 1")  # the key changes: _old_key
    db.execute("DELETE FROM h WHERE id = 2")  # a copied row: its values from the copy row
    db.execute("TRUNCATE h")
    db.execute("INSERT INTO hf VALUES (1, %s), (1, %s)", [big, big])
    db.execute("UPDATE hf SET id = 2 WHERE ctid = (SELECT ctid FROM hf LIMIT 1)")
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0

    names, rows = _hist_rows(target_db, "h")
    assert names == ["id", "n", "note", "body"] + HIST_META, names
    copy = [r for r in rows if r["_change_type"] == "copy"]
    assert len(copy) == 20 and [r["_seq"] for r in copy] == list(range(1, 21)), copy[:3]
    assert all(r["_commit_time"] is None and r["_commit_lsn"] for r in copy), copy[0]
    mine = [r for r in rows if r["id"] == 100]
    assert [r["_change_type"] for r in mine] == ["insert", "update", "update", "update",
                                                 "delete"], mine
    assert [r["n"] for r in mine] == [0, 1, 2, 3, 3], mine
    assert [r["note"] for r in mine] == ["new", "one", "one", "one", "one"], mine
    # the unchanged TOAST value is the earlier one, never NULL
    assert [r["body"] for r in mine] == [big, big, big + "y", big + "y", big + "y"]
    keys = [(int(r["_commit_lsn"].split("/")[0], 16) << 32 | int(r["_commit_lsn"].split("/")[1], 16),
             r["_seq"]) for r in mine]
    assert keys == sorted(keys) and len(set(keys)) == 5, keys
    assert all(r["_commit_time"] is not None for r in mine), mine
    assert all(r["_old_key"] is None for r in mine), mine
    moved = [r for r in rows if r["id"] == 200]
    assert len(moved) == 1 and moved[0]["_change_type"] == "update", moved
    assert moved[0]["_old_key"] == {"id": 1} and moved[0]["note"] == "copied", moved
    gone = [r for r in rows if r["id"] == 2 and r["_change_type"] == "delete"]
    assert len(gone) == 1 and gone[0]["note"] == "copied" and gone[0]["n"] == 2, gone
    assert rows[-1]["_change_type"] == "truncate" and rows[-1]["id"] is None, rows[-3:]
    assert len([r for r in rows if r["_change_type"] == "truncate"]) == 1, rows
    # no key, REPLICA IDENTITY FULL: the update's unchanged TOAST from the old row
    _, frows = _hist_rows(target_db, "hf")
    assert [(r["_change_type"], r["id"], r["body"] == big) for r in frows] == [
        ("insert", 1, True), ("insert", 1, True), ("update", 2, True)], frows
    # the lookups use the key's index
    idx = [r[0] for r in target_db.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'h' AND indexname LIKE "
        "'\\_walrelay\\_hk\\_h\\_%'")]
    assert len(idx) == 1, idx
    assert target_db.execute("SELECT mode FROM walrelay.pipelines WHERE pipeline = %s",
                             [p.name]) == [("history",)]


def test_history_exactly_once_and_schema_changes(db, pipelines, target_db, tmp_path,
                                                 monkeypatch):
    """Writers run while the apply worker dies at a batch boundary (kill -9 at the failpoint
    apply.after_commit): the history's change rows are exactly the source's changes, none
    twice, and replay into the source's rows. Then a column is added and one renamed: the
    history keeps its rows, the new column reads NULL in earlier ones; mirror mode is
    refused for the pipeline afterwards."""
    from sinks import (ChangeLog, check_events, compare_replayed, key_str, lsn_str_to_int,
                       start_with_failpoints, wait_fired, wait_pid_gone)
    from pipeline import SCALE, edit_ini

    create_mixed_table(db, "r", 1_000)
    publish(db, "pub", ["r"])
    p = pipelines()
    p.init(db.conninfo, "pub", config=HISTORY)
    p.start()
    p.wait_all_ready(["public.r"])
    assert p.stop() == 0
    log = ChangeLog(db, "pub")
    ws = [BackgroundWriter(db, ["r"], (1 + 500 * i, 500 + 500 * i), 1_000_000 * (i + 1), per_txn=3,
                           seed=41 + i, pause=0.003) for i in range(2)]
    for w in ws:
        w.start()
    try:
        for w in ws:
            w.wait_commits(5, 60 * SCALE)
        fpdir = tmp_path / "fp"
        start_with_failpoints(p, monkeypatch, "apply.after_commit=abort", fpdir)
        pid = wait_fired(p, fpdir, "apply.after_commit")
        p.killed_pids.add(pid)
        wait_pid_gone(pid)
        p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, 0, pid)
                     and p.worker("apply")["state"] == "running", 60, "apply restarted")
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
    finally:
        for w in ws:
            w.stop()
    p.wait_flushed(db.current_wal_lsn())

    _, rows = _hist_rows(target_db, "r")
    events = []
    for r in rows:
        vals = {k: v for k, v in r.items() if not k.startswith("_")}
        t = r["_change_type"]
        ev = {"table": "public.r", "unchanged_toast": []}
        if t == "copy":
            ev.update(key="copy:%d" % r["_seq"], op="insert", phase="copy", new=vals, old=None)
        else:
            old = vals if t == "delete" else None
            if t == "update" and r["_old_key"] is not None:
                old = r["_old_key"]
            ev.update(key=key_str(lsn_str_to_int(r["_commit_lsn"]), r["_seq"]), op=t,
                      phase="stream", new=vals if t in ("insert", "update") else None, old=old)
        events.append(ev)
    n = check_events(events, log.changes(), ["public.r"])
    assert n > 50, n
    diffs = compare_replayed(db, events, ["public.r"])
    assert not diffs, "\n".join(diffs[:10])

    # schema changes: nothing of the history is lost
    before = len(rows)
    db.execute("ALTER TABLE r ADD COLUMN extra int")
    db.execute("ALTER TABLE r RENAME COLUMN name TO title")
    db.execute("UPDATE r SET extra = 7 WHERE id = 3")
    p.wait_flushed(db.current_wal_lsn())
    names, rows = _hist_rows(target_db, "r")
    assert "title" in names and "name" not in names and "extra" in names, names
    assert len(rows) == before + 1, (len(rows), before)
    assert rows[-1]["extra"] == 7 and rows[-1]["id"] == "3" and rows[-1]["title"] is not None, \
        rows[-1]
    assert all(r["extra"] is None for r in rows[:-1])
    assert p.stop() == 0

    edit_ini(p.conf_path, {"destination": {"mode": "mirror"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and "holds history tables of pipeline" in r.text, r
    assert "not mirror ones" in r.text and "keep mode = history" in r.text, r
    edit_ini(p.conf_path, {"destination": {"mode": "journal"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and re.search(
        r"walrelay\.conf:\d+: \[destination\] mode: invalid value \"journal\": expected mirror or "
        r"history", r.text), r
