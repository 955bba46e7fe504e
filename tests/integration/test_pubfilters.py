"""Publication row filters and column lists (PostgreSQL 15), end to end.

Row filters: the destination holds exactly the rows the filter accepts, after the copy,
after the sync workers' catch-up and after the apply worker's stream, while rows move
into and out of the filter (pgoutput sends those UPDATEs as INSERT / DELETE). Column
lists: refused at start like a table whose replica identity cannot be replicated (`check`
fails, `run` sets the table ERRORED "unsupported" and replicates the others); a list
added while running is caught by the publication refresh.
"""

from pipeline import wait_equal
from test_identity import start_with_catchup_window

COLS = "id int, region text NOT NULL, v text, n int NOT NULL DEFAULT 0"

# table -> (regions inside the filter (2), the region outside, "ONLY " for plain tables)
REGIONS = {
    "orders": ("eu", "eu", "us", "ONLY "),      # PRIMARY KEY (id), REPLICA IDENTITY FULL
    "orders_old": ("eu", "eu", "us", "ONLY "),  # inherits orders, same filter (its own row)
    "acct": ("eu", "uk", "us", ""),             # PRIMARY KEY (id, region), identity DEFAULT
    "meas": ("a", "b", "c", ""),                # partitioned, published via its root
}

# The destination must equal SELECT * FROM <table> WHERE <this>. orders: its copy and
# stream do not include the rows of orders_old, which inherits from it (ONLY).
FILTERS = {
    "public.orders": "tableoid = 'public.orders'::regclass AND region = 'eu'",
    "public.orders_old": "region = 'eu'",
    "public.acct": "region IN ('eu', 'uk')",
    "public.meas": "region IN ('a', 'b')",
}
TABLES = ["public.orders", "public.orders_old", "public.acct", "public.meas", "s.x"]

SETUP = """
    CREATE TABLE orders (%(c)s, PRIMARY KEY (id));
    ALTER TABLE orders REPLICA IDENTITY FULL;
    CREATE TABLE orders_old () INHERITS (orders);
    ALTER TABLE orders_old ADD PRIMARY KEY (id);
    ALTER TABLE orders_old REPLICA IDENTITY FULL;
    CREATE TABLE acct (%(c)s, PRIMARY KEY (id, region));
    CREATE TABLE meas (%(c)s, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE meas_a PARTITION OF meas FOR VALUES IN ('a');
    CREATE TABLE meas_b PARTITION OF meas FOR VALUES IN ('b');
    CREATE TABLE meas_rest PARTITION OF meas DEFAULT;
    CREATE SCHEMA s;
    CREATE TABLE s.x (id int PRIMARY KEY, v int);
    ALTER TABLE s.x REPLICA IDENTITY FULL;
    INSERT INTO s.x SELECT g, g %% 10 FROM generate_series(1, 50) g;
""" % {"c": COLS}

# one publication: a filter on plain tables (inherited by orders_old), on a partitioned
# root (publish_via_partition_root), and one on s.x that pgoutput ignores because the
# publication also publishes its schema: s.x is copied and streamed whole
PUBLICATION = """
    CREATE PUBLICATION pub FOR TABLE orders WHERE (region = 'eu'),
        acct WHERE (region IN ('eu', 'uk')), meas WHERE (region IN ('a', 'b')),
        TABLES IN SCHEMA s, TABLE s.x WHERE (v > 5)
        WITH (publish_via_partition_root)
"""


def seed(db):
    for t, (in1, in2, out, _) in REGIONS.items():
        db.execute("INSERT INTO %s (id, region, v) SELECT g, CASE g %% 3 WHEN 0 THEN '%s' "
                   "WHEN 1 THEN '%s' ELSE '%s' END, 'seed' FROM generate_series(1, 100) g"
                   % (t, in1, in2, out))


def changes(conn, r):
    """Round r: inserts inside and outside the filter, updates inside, outside, moving
    rows out and in (also out and back in within one transaction), deletes on both
    sides. New ids from 1000 * (r + 1); seeded ids 20r+1 .. 20r+20 are touched."""
    b, lo = 1000 * (r + 1), 20 * r + 1
    for t, (in1, in2, out, only) in REGIONS.items():
        u = "UPDATE %s%s SET " % (only, t)
        conn.execute("INSERT INTO %s (id, region, v) VALUES (%d, '%s', 'in'), (%d, '%s', 'out'), "
                     "(%d, '%s', 'in'), (%d, '%s', 'out'), (%d, '%s', 'in')"
                     % (t, b + 1, in1, b + 2, out, b + 3, in2, b + 4, out, b + 5, in1))
        conn.execute(u + "v = 'in->in' WHERE id = %d" % (b + 1))
        conn.execute(u + "v = 'out->out' WHERE id = %d" % (b + 2))
        conn.execute(u + "region = '%s', v = 'in->out' WHERE id = %d" % (out, b + 3))
        conn.execute(u + "region = '%s', v = 'out->in' WHERE id = %d" % (in2, b + 4))
        conn.execute(u + "region = '%s', v = 'in->in' WHERE id = %d" % (in2, b + 5))
        conn.execute(u + "region = '%s', v = 'moved out' WHERE id BETWEEN %d AND %d "
                     "AND region <> '%s'" % (out, lo, lo + 4, out))
        conn.execute(u + "region = '%s', v = 'moved in' WHERE id BETWEEN %d AND %d "
                     "AND region = '%s'" % (in1, lo + 5, lo + 9, out))
        conn.execute(u + "n = n + 1 WHERE id BETWEEN %d AND %d" % (lo + 10, lo + 14))
        conn.execute("DELETE FROM %s%s WHERE id BETWEEN %d AND %d" % (only, t, lo + 15, lo + 19))
        conn.execute("DELETE FROM %s%s WHERE id = %d" % (only, t, b + 2))
        with conn.transaction():
            conn.execute(u + "region = '%s', v = 'out' WHERE id = %d" % (out, b + 1))
            conn.execute(u + "region = '%s', v = 'back in' WHERE id = %d" % (in1, b + 1))
            conn.execute(u + "region = '%s', v = 'in, then out' WHERE id = %d" % (in1, b + 3))
            conn.execute(u + "region = '%s', v = 'in, then out' WHERE id = %d" % (out, b + 3))
    conn.execute("INSERT INTO s.x VALUES (%d, 1), (%d, 9)" % (b + 1, b + 2))
    conn.execute("UPDATE s.x SET v = 2 WHERE id = %d" % (b + 2))
    conn.execute("UPDATE s.x SET v = 8 WHERE id = %d" % (lo + 1))
    conn.execute("DELETE FROM s.x WHERE id IN (%d, %d)" % (lo + 2, lo + 6))


def test_row_filters(db, pipelines, monkeypatch, tmp_path):
    db.execute(SETUP)
    seed(db)
    db.execute(PUBLICATION)
    copied = {t: db.scalar("SELECT count(*) FROM %s WHERE %s" % (t, w)) for t, w in FILTERS.items()}
    copied["s.x"] = 50
    assert 0 < copied["public.orders"] < 100, copied

    p = pipelines()
    p.init(db.conninfo, "pub", config={"sync": {"max_table_sync_workers": str(len(TABLES))}})
    r = p.cmd("check", p.dir)
    assert r.rc == 0, r
    # every sync worker pauses after its copy: round 0 is applied by their catch-up
    start_with_catchup_window(p, monkeypatch, tmp_path, len(TABLES))
    with db.connect() as conn:
        changes(conn, 0)
    p.wait_all_ready(TABLES, timeout=180)
    tabs = p.tables()
    assert {t: tabs[t]["rows_copied"] for t in TABLES} == copied, tabs
    log = p.log_text()
    assert "copy applies the publication's row filter table=public.orders " \
           "filter=\"(region = 'eu'::text)\"" in log, p.log_tail()
    assert "row filter table=public.meas " in log, p.log_tail()
    assert "row filter table=s.x " not in log, p.log_tail()
    for t in ("public.orders", "public.acct", "public.meas"):
        assert any("syncdone table=%s " % t in line and "applied=0 " not in line
                   for line in log.splitlines()), (t, p.log_tail())
    wait_equal(db.server, db.name, p, TABLES, where=FILTERS)

    # round 1 through the apply worker
    with db.connect() as conn:
        changes(conn, 1)
    wait_equal(db.server, db.name, p, TABLES, where=FILTERS)
    with p.dest() as d:
        assert d.execute("SELECT count(*) FROM orders WHERE region <> 'eu'").fetchone()[0] == 0
        assert d.execute("SELECT count(*) FROM orders WHERE v = 'out->in'").fetchone()[0] == 2
        assert d.execute("SELECT count(*) FROM meas WHERE region = 'c'").fetchone()[0] == 0
        assert d.execute("SELECT count(*) FROM s__x WHERE v <= 5").fetchone()[0] > 0
    assert db.scalar("SELECT count(*) FROM ONLY orders WHERE region = 'us'") > 0
    assert all(t["phase"] == "ready" for t in p.status()["tables"])


def test_column_list_refused(db, pipelines):
    db.execute("""
        CREATE TABLE t_cols (id int PRIMARY KEY, a text, b text);
        CREATE TABLE t_plain (id int PRIMARY KEY, v text);
        INSERT INTO t_cols SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 20) g;
        INSERT INTO t_plain SELECT g, 'v' || g FROM generate_series(1, 20) g;
        CREATE PUBLICATION pub FOR TABLE t_cols (id, a), t_plain;
    """)
    p = pipelines()
    p.init(db.conninfo, "pub", config={"pipeline": {"publication_refresh_ms": "500"}})
    r = p.cmd("check", p.dir)
    assert r.rc != 0, r
    assert 'FAILED column_list: table "public.t_cols" is published by "pub" with a column ' \
           'list, which walrelay does not replicate' in r.out, r
    assert 'hint: in one transaction, ALTER PUBLICATION "pub" DROP TABLE "public"."t_cols" ' \
           'and ADD it again without a column list' in r.out, r
    assert "check failed: 1 problem" in r.out, r
    assert "t_plain" not in r.out, r

    p.start()
    p.wait_until(lambda: p.tables().get("public.t_plain", {}).get("phase") == "ready", 120,
                 "public.t_plain ready")
    t = p.tables()["public.t_cols"]
    assert t["phase"] == "errored" and t["err_kind"] == "unsupported", t
    assert "with a column list, which walrelay does not replicate" in t["err_msg"], t
    assert 'then run "walrelay resync DIR public.t_cols"' in t["err_hint"], t
    assert t["rows_copied"] == 0, t
    db.execute("INSERT INTO t_plain VALUES (100, 'new'); INSERT INTO t_cols VALUES (100, 'x', 'y')")
    wait_equal(db.server, db.name, p, ["public.t_plain"])
    with p.dest() as d:
        names = {r[0] for r in d.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "t_cols" not in names, names

    # the hint's fix, then resync: the whole table
    db.execute("BEGIN; ALTER PUBLICATION pub DROP TABLE t_cols; "
               "ALTER PUBLICATION pub ADD TABLE t_cols; COMMIT")
    r = p.cmd("resync", p.dir, "public.t_cols")
    assert r.rc == 0, r
    p.wait_all_ready(["public.t_cols", "public.t_plain"])
    db.execute("UPDATE t_cols SET b = 'changed' WHERE id <= 5")
    wait_equal(db.server, db.name, p, ["public.t_cols", "public.t_plain"])

    # a column list added while running: the publication refresh refuses the table
    db.execute("BEGIN; ALTER PUBLICATION pub DROP TABLE t_cols; "
               "ALTER PUBLICATION pub ADD TABLE t_cols (id, b); COMMIT")
    p.wait_until(lambda: p.tables()["public.t_cols"]["phase"] == "errored", 60,
                 "public.t_cols errored after its column list")
    t = p.tables()["public.t_cols"]
    assert t["err_kind"] == "unsupported", t
    assert "with a column list" in t["err_msg"], t
    db.execute("UPDATE t_cols SET a = 'later' WHERE id = 1; INSERT INTO t_plain VALUES (101, 'x')")
    wait_equal(db.server, db.name, p, ["public.t_plain"])
    assert p.running()
    with p.dest() as d:
        assert d.execute("SELECT a FROM t_cols WHERE id = 1").fetchone()[0] == "a1"
