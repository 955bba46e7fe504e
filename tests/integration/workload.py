"""Source tables and write workloads for the integration tests.

NOTES: every table has a primary key (the comparison needs one) and mixes the types
walrelay maps: int2/4/8, text (with tabs, newlines, backslashes, quotes, non-ASCII, empty
strings), numeric, timestamptz, bool, bytea, float8, and NULLs in every nullable column.
Bulk loads run inside the server (generate_series); random workloads use a fixed seed so
a failure can be replayed.
"""

import random
import threading
import time

import psycopg

MIXED_DDL = """
CREATE TABLE TABLE_NAME (
    id     bigint PRIMARY KEY,
    name   text,
    amount numeric(16,4),
    at     timestamptz,
    flag   boolean,
    data   bytea,
    score  float8,
    small  int2,
    qty    int4
)"""

# Parameters: first id, last id. Every column has NULLs; text has what COPY must escape
# (tab, newline, backslash, a literal \N) and non-ASCII. "%%" is psycopg's "%".
MIXED_FILL = r"""
INSERT INTO TABLE_NAME
SELECT g,
       CASE WHEN g %% 11 = 0 THEN NULL
            WHEN g %% 37 = 0 THEN ''
            WHEN g %% 7 = 0 THEN E'tab\there\nnew line \\ back\\slash "dq" ''sq'' \u00e9\u2713 \\N ' || g
            ELSE 'name ' || g END,
       CASE WHEN g %% 13 = 0 THEN NULL ELSE (g * 1.3791 - 5000)::numeric(16,4) END,
       CASE WHEN g %% 17 = 0 THEN NULL
            ELSE timestamptz '2024-02-29 23:59:59.5+05:30' + g * interval '1 minute 0.123457 seconds' END,
       CASE WHEN g %% 19 = 0 THEN NULL ELSE g %% 2 = 0 END,
       CASE WHEN g %% 23 = 0 THEN NULL
            WHEN g %% 29 = 0 THEN ''::bytea
            ELSE decode(md5(g::text), 'hex') || decode('005c0aff', 'hex') END,
       CASE WHEN g %% 31 = 0 THEN NULL
            ELSE g / 3.0::float8 * (CASE WHEN g %% 2 = 0 THEN -1 ELSE 1 END) END,
       (g %% 65535 - 32767)::int2,
       ((g * 7919) %% 2147483647)::int4
FROM generate_series(%s::bigint, %s::bigint) g"""


def create_mixed_table(db, table, nrows, first=1):
    db.execute(MIXED_DDL.replace("TABLE_NAME", table))
    if nrows:
        db.execute(MIXED_FILL.replace("TABLE_NAME", table), [first, first + nrows - 1])


def create_specials_table(db, table):
    """Edge values of each type, one row each."""
    db.execute("""
        CREATE TABLE %s (
            id int PRIMARY KEY, f8 float8, f4 float4, n numeric, ts timestamptz,
            tsn timestamp, d date, t text, b bytea, ok boolean, i8 bigint, i2 smallint,
            u uuid, j jsonb, iv interval, vc varchar(20), ch char(5))""" % table)
    db.execute("""
        INSERT INTO %s VALUES
        (1, 'NaN', 'NaN', 'NaN', 'infinity', 'infinity', 'infinity', '', '', true,
            9223372036854775807, 32767, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5, null]}',
            '1 year 2 mons 3 days 04:05:06.789', 'x', 'ab'),
        (2, 'Infinity', 'Infinity', '1e-20', '-infinity', '-infinity', '-infinity', E'\\\\', '\\x00', false,
            -9223372036854775808, -32768, '00000000-0000-0000-0000-000000000000', '"s"',
            '-1 days -00:00:01', '', ''),
        (3, '-Infinity', '-Infinity', '-123456789012345678901234567890.123456789', '0001-01-01 00:00:00+00 BC',
            '2000-02-29 12:00:00.000001', '0044-03-15 BC', E'line1\\r\\nline2\\ttab', '\\xdeadbeef', NULL,
            0, 0, NULL, '{}', '0', NULL, NULL),
        (4, 1.7976931348623157e308, 3.4e38, 0, '2038-01-19 03:14:08+00', '1999-12-31 23:59:59.999999',
            '2024-02-29', repeat('x', 5000), decode(repeat('ab', 3000), 'hex'), true,
            1, 1, NULL, '[]', '00:00:00.000001', 'é✓', 'é'),
        (5, 5e-324, 1.4e-45, -0.0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (6, 0.1, 0.1, 0.1, '2024-06-30 12:34:56.123456-07', '2024-06-30 12:34:56', '2024-06-30',
            'plain', '\\x', false, 42, 42, NULL, 'null', '1 mon', 'v', 'c')
    """ % table)


def create_toast_table(db, table, nrows):
    """Rows with a large incompressible text (stored out of line): an UPDATE that does
    not touch it sends it as 'unchanged TOAST' in pgoutput."""
    db.execute("CREATE TABLE %s (id int PRIMARY KEY, n int NOT NULL, body text)" % table)
    db.execute("""
        INSERT INTO %s SELECT g, 0, (SELECT string_agg(md5(g::text || ':' || x), '')
                                     FROM generate_series(1, 700) x)
        FROM generate_series(1, %%s) g""" % table, [nrows])


def publish(db, publication, tables):
    db.execute("CREATE PUBLICATION %s FOR TABLE %s" % (publication, ", ".join(tables)))


class MixedWriter:
    """Random INSERT/UPDATE/DELETE on mixed tables, in transactions of `per_txn`
    statements. new ids come from next_id upwards (no collisions with bulk loads)."""

    def __init__(self, conn, tables, id_range, next_id, seed=1, toast_table=None):
        self.conn = conn
        self.tables = tables
        self.lo, self.hi = id_range
        self.next_id = next_id
        self.rng = random.Random(seed)
        self.toast_table = toast_table
        self.statements = 0

    def _value_args(self):
        r = self.rng
        name = r.choice([None, "", "upd %d" % r.randrange(10 ** 9),
                         "tab\there\nnl \\ bs 'q' \"dq\" é✓ %d" % r.randrange(1000)])
        amount = r.choice([None, "%d.%04d" % (r.randrange(-10 ** 9, 10 ** 9), r.randrange(10 ** 4))])
        at = r.choice([None, "2025-%02d-%02d %02d:%02d:%02d.%06d+02" % (
            r.randint(1, 12), r.randint(1, 28), r.randrange(24), r.randrange(60),
            r.randrange(60), r.randrange(10 ** 6))])
        flag = r.choice([None, True, False])
        data = r.choice([None, b"", bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))])
        score = r.choice([None, r.uniform(-1e9, 1e9), r.random() / 7.0, 0.0])
        small = r.randrange(-32768, 32768)
        qty = r.randrange(-2 ** 31, 2 ** 31)
        return [name, amount, at, flag, data, score, small, qty]

    def one_statement(self):
        r = self.rng
        t = r.choice(self.tables)
        op = r.random()
        if self.toast_table and op < 0.05:
            self.conn.execute("UPDATE %s SET n = n + 1 WHERE id = %%s" % self.toast_table,
                              [r.randint(1, 50)])
        elif op < 0.40:
            self.conn.execute(
                "INSERT INTO %s VALUES (%%s, %%s, %%s, %%s, %%s, %%s, %%s, %%s, %%s)" % t,
                [self.next_id] + self._value_args())
            self.next_id += 1
        elif op < 0.75:
            self.conn.execute(
                "UPDATE %s SET name = %%s, amount = %%s, at = %%s, flag = %%s, data = %%s,"
                " score = %%s, small = %%s, qty = %%s WHERE id = %%s" % t,
                self._value_args() + [r.randint(self.lo, self.hi)])
        elif op < 0.80:
            # the key changes: pgoutput sends the old key ('K')
            self.conn.execute("UPDATE %s SET id = %%s WHERE id = %%s" % t,
                              [self.next_id, r.randint(self.lo, self.hi)])
            self.next_id += 1
        else:
            self.conn.execute("DELETE FROM %s WHERE id = %%s" % t, [r.randint(self.lo, self.hi)])
        self.statements += 1

    def transaction(self, per_txn):
        with self.conn.transaction():
            for _ in range(per_txn):
                self.one_statement()


class BackgroundWriter(threading.Thread):
    """Runs MixedWriter transactions in a thread until stop(); counts commits. Any
    error ends the thread and is re-raised by stop()."""

    def __init__(self, db, tables, id_range, next_id, per_txn=5, seed=2, pause=0.0):
        super().__init__(daemon=True)
        self.db = db
        self.args = (tables, id_range, next_id, seed)
        self.per_txn = per_txn
        self.pause = pause
        self.commits = 0
        self.error = None
        self._stop_ev = threading.Event()

    def run(self):
        try:
            with self.db.connect(autocommit=True) as conn:
                w = MixedWriter(conn, *self.args)
                while not self._stop_ev.is_set():
                    w.transaction(self.per_txn)
                    self.commits += 1
                    if self.pause:
                        time.sleep(self.pause)
        except (psycopg.Error, OSError) as e:
            self.error = e

    def wait_commits(self, n, timeout=60):
        """Waits until n more transactions committed than now."""
        target = self.commits + n
        end = time.monotonic() + timeout
        while self.commits < target:
            if self.error or not self.is_alive():
                raise AssertionError("background writer died: %r" % self.error)
            if time.monotonic() > end:
                raise AssertionError("background writer made %d of %d commits in %ss"
                                     % (self.commits - (target - n), n, timeout))
            time.sleep(0.05)

    def stop(self):
        self._stop_ev.set()
        self.join(60)
        if self.error:
            raise AssertionError("background writer failed: %r" % self.error)
        return self.commits
