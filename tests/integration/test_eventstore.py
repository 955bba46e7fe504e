"""The event store destination: the fifteen cases of docs/eventstore.md ("What it
promises"), each on both stores (SQLite file and PostgreSQL database), against a real
PostgreSQL source.

NOTES: each test makes its own tables and pipeline (`--destination eventstore:sqlite:PATH`
or `eventstore:postgres:CONNINFO`) and reads the events back through `walrelay events DIR
load` (and the raw tables where it needs positions or progress). Crashes are scripted with
failpoints (common/failpoint.h): apply.after_commit (after the destination commit, before
the slot is confirmed), eventstore.mid_batch (the batch written into the store's open
transaction, before its progress and COMMIT), sync.mid_copy. Every test ends with the
store's positions dense from 1.
"""

import datetime
import os
import re
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from pipeline import SCALE, deadline
from pgserver import lsn_to_int
from test_eventstore_helpers import (Store, by_id, check_dense, es_pipeline, es_store,  # noqa: F401
                                     events_cmd, load, load_cdc, parse_lines, version, wait_events,
                                     wait_synced)
from workload import create_toast_table, publish


def _start_with_failpoints(p, monkeypatch, spec, fpdir=None):
    if fpdir is not None:
        os.makedirs(fpdir, exist_ok=True)
        monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        if fpdir is not None:
            monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")


def _marker_pid(p, fpdir, name, timeout=90):
    path = os.path.join(str(fpdir), name)

    def fired():
        with open(path) as f:
            txt = f.read().strip()
        assert txt, "marker %s still empty" % path
        return int(txt)

    return p.wait_until(fired, timeout, "failpoint %s to fire" % name)


def _ready(db, es_store, pipelines, ddl, tables, config=None, rows_sql=None):
    """Tables created (and filled), published, a pipeline running with all of them ready."""
    db.execute(ddl)
    if rows_sql:
        db.execute(rows_sql)
    publish(db, "pub", tables)
    p = es_pipeline(pipelines, db, es_store, config=config)
    p.start()
    p.wait_all_ready(["public." + t if "." not in t else t for t in tables])
    return p


# 1 ------------------------------------------------------------------------------------

def test_01_one_insert_round_trips(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, """
        CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric(10,2), ok boolean,
                        tags jsonb, at timestamptz, small int2, big int8, nothing text)""",
               ["t"])
    before = db.current_wal_lsn()
    with db.connect(autocommit=False) as c:
        xid = c.execute("SELECT txid_current()").fetchone()[0]
        c.execute("INSERT INTO t VALUES (42, %s, 12.5, true, '{\"a\": [1, 2]}',"
                  " '2024-01-02 03:04:05+00', -3, 9007199254740993, NULL)",
                  ["h\u00e9llo \"q\"\n\ttab"])
        c.commit()
    after = db.current_wal_lsn()
    wait_synced(p, db)
    evs = load_cdc(p)
    assert len(evs) == 1, evs
    e = evs[0]
    assert e["position"] == 1
    assert e["aggregate_kind"] == "public.t"
    assert e["aggregate_id"] == '["42"]'
    assert e["event_kind"] == "insert"
    assert e["stream_version"] == 1
    assert e["data"] == {"id": 42, "name": "h\u00e9llo \"q\"\n\ttab", "amount": "12.50",
                         "ok": True, "tags": {"a": [1, 2]}, "at": "2024-01-02 03:04:05+00",
                         "small": -3, "big": "9007199254740993", "nothing": None}, e["data"]
    m = e["metadata"]
    assert before < lsn_to_int(m["commit_lsn"]) <= after, (m, before, after)
    assert m["xid"] == xid % (1 << 32)
    ts = datetime.datetime.strptime(m["commit_ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    now = datetime.datetime.utcnow()
    assert abs((now - ts).total_seconds()) < 300 * SCALE, (m, now)
    assert (m["seq"], m["sub"], m["phase"]) == (0, 0, "stream"), m
    assert m["relid"] == db.relid("t")
    assert "unchanged_toast" not in m
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", e["created_at"]), e
    # the stream's version is the position of its last event
    assert version(p, "public.t", '["42"]') == {"position": 1, "version": 1}
    assert version(p, "public.t", '["43"]') == {"position": None}
    assert check_dense(es_store) == 1


# 2 ------------------------------------------------------------------------------------

def test_02_insert_update_delete_in_one_transaction(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY, v int)", ["t"])
    db.execute("INSERT INTO t VALUES (1, 0)")  # position 1, another transaction
    with db.connect(autocommit=False) as c:
        c.execute("INSERT INTO t VALUES (7, 1)")
        c.execute("UPDATE t SET v = 2 WHERE id = 7")
        c.execute("DELETE FROM t WHERE id = 7")
        c.commit()
    wait_synced(p, db)
    evs = [e for e in load_cdc(p) if e["aggregate_id"] == '["7"]']
    assert [e["event_kind"] for e in evs] == ["insert", "update", "delete"], evs
    assert [e["position"] for e in evs] == [2, 3, 4]
    assert len({e["metadata"]["commit_lsn"] for e in evs}) == 1, evs
    assert [e["metadata"]["seq"] for e in evs] == [0, 1, 2]
    assert [e["stream_version"] for e in evs] == [1, 2, 3]
    assert [e["data"] for e in evs] == [{"id": 7, "v": 1}, {"id": 7, "v": 2}, {"id": 7}]
    assert version(p, "public.t", '["7"]') == {"position": 4, "version": 3}
    check_dense(es_store)


# 3 ------------------------------------------------------------------------------------

class Counter(threading.Thread):
    """Transactions that each insert a new row of t (ids 1, 2, ...) and add 1 to c's
    only row: every change has a known, unique effect."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.db = db
        self.n = 0
        self.error = None
        self.halt = threading.Event()

    def run(self):
        try:
            with self.db.connect(autocommit=True) as c:
                while not self.halt.is_set():
                    with c.transaction():
                        c.execute("INSERT INTO t VALUES (%s, 'row')", [self.n + 1])
                        c.execute("UPDATE c SET v = v + 1 WHERE id = 1")
                    self.n += 1
                    time.sleep(0.005)
        except psycopg.Error as e:
            self.error = e

    def stop(self):
        self.halt.set()
        self.join(60)
        assert self.error is None, self.error
        return self.n


def _check_exactly_once(p, n):
    evs = load_cdc(p)
    ins = [int(e["aggregate_id"][2:-2]) for e in evs
           if e["aggregate_kind"] == "public.t" and e["event_kind"] == "insert"]
    assert sorted(ins) == list(range(1, n + 1)), (
        "inserts of t: %d events for %d rows; duplicates %s, missing %s" % (
            len(ins), n, sorted({i for i in ins if ins.count(i) > 1})[:10],
            sorted(set(range(1, n + 1)) - set(ins))[:10]))
    assert ins == sorted(ins), "inserts out of commit order"
    vs = [e["data"]["v"] for e in evs
          if e["aggregate_kind"] == "public.c" and e["event_kind"] == "update"]
    assert vs == list(range(1, n + 1)), "updates of c: %s ... %s (%d)" % (vs[:5], vs[-5:], len(vs))


@pytest.mark.parametrize("failpoint", ["apply.after_commit", "eventstore.mid_batch"])
def test_03_crash_around_the_commit(db, es_store, pipelines, tmp_path, monkeypatch, failpoint):
    """kill -9 of the apply worker after the destination commit but before the slot is
    confirmed (apply.after_commit): nothing twice; before the commit (eventstore.mid_batch,
    the batch written into the store's transaction): each change exactly once."""
    p = _ready(db, es_store, pipelines, """
        CREATE TABLE t (id int PRIMARY KEY, s text);
        CREATE TABLE c (id int PRIMARY KEY, v int)""", ["t", "c"],
               rows_sql="INSERT INTO c VALUES (1, 0)")
    assert p.stop() == 0, p.log_tail()
    fpdir = tmp_path / "fp"
    w = Counter(db)
    w.start()
    try:
        while w.n < 20:
            time.sleep(0.05)
        _start_with_failpoints(p, monkeypatch, "%s=abort" % failpoint, fpdir)
        pid = _marker_pid(p, fpdir, failpoint)
        p.killed_pids.add(pid)
        p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, 0, pid)
                     and p.worker("apply")["state"] == "running", 60, "apply worker restarted")
        target = w.n + 30
        while w.n < target:
            assert w.is_alive(), w.error
            time.sleep(0.05)
    finally:
        n = w.stop()
    wait_synced(p, db)
    _check_exactly_once(p, n)
    assert len(re.findall("failpoint fired name=%s " % re.escape(failpoint), p.log_text())) == 1
    check_dense(es_store)


# 4 ------------------------------------------------------------------------------------

def test_04_commit_order_not_begin_order(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY)", ["t"])
    with db.connect(autocommit=False) as t1, db.connect(autocommit=False) as t2:
        t1.execute("INSERT INTO t VALUES (1)")  # T1 begins first
        t2.execute("INSERT INTO t VALUES (2)")
        t2.execute("INSERT INTO t VALUES (3)")
        t2.commit()  # T2 commits first
        t1.execute("INSERT INTO t VALUES (4)")
        t1.commit()
    wait_synced(p, db)
    evs = load_cdc(p)
    assert [(e["position"], e["aggregate_id"]) for e in evs] == [
        (1, '["2"]'), (2, '["3"]'), (3, '["1"]'), (4, '["4"]')], evs
    assert evs[0]["metadata"]["commit_lsn"] == evs[1]["metadata"]["commit_lsn"]
    assert evs[2]["metadata"]["commit_lsn"] == evs[3]["metadata"]["commit_lsn"]
    assert lsn_to_int(evs[0]["metadata"]["commit_lsn"]) < lsn_to_int(evs[2]["metadata"]["commit_lsn"])
    check_dense(es_store)


# 5 ------------------------------------------------------------------------------------

class RawReader(threading.Thread):
    """Loops "events after the last position I saw" on the store's tables, as a service
    would, and records every position; fails on a gap inside one read."""

    def __init__(self, store):
        super().__init__(daemon=True)
        self.store = store
        self.seen = []
        self.reads = 0
        self.error = None
        self.halt = threading.Event()

    def run(self):
        try:
            last = 0
            while not self.halt.is_set():
                rows = self.store.query(
                    "SELECT position FROM es_events WHERE position > ? ORDER BY position"
                    " LIMIT 2000", (last,))
                self.reads += 1
                for (pos,) in rows:
                    if pos != last + 1:
                        raise AssertionError("after %d the reader saw %d: a skipped position"
                                             % (last, pos))
                    self.seen.append(pos)
                    last = pos
                if not rows:
                    time.sleep(0.01)
        except Exception as e:  # reported by the test
            self.error = e


def test_05_reader_sees_every_position_once_during_10k_transactions(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY, w int, n int)",
               ["t"])
    reader = RawReader(es_store)
    reader.start()
    tail = subprocess.Popen(
        [os.path.join(p.bindir, "walrelay"), "events", p.dir, "tail", "--filter",
         "event_kind=insert", "--filter", "event_kind=update", "--after", "0", "--follow"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tailed_lines = []
    tail_reader = threading.Thread(target=lambda: tailed_lines.extend(tail.stdout), daemon=True)
    tail_reader.start()
    total = 10_000
    errors = []

    def writer(k):
        try:
            with db.connect(autocommit=True) as c:
                for i in range(total // 2):
                    if i % 4 == 3:
                        c.execute("UPDATE t SET n = n + 1 WHERE id = %s", [k * 1_000_000 + i - 1])
                    else:
                        c.execute("INSERT INTO t VALUES (%s, %s, 0)", [k * 1_000_000 + i, k])
        except psycopg.Error as e:
            errors.append(e)

    appended = []

    def appender():
        # a second writer of the store at the same time: an application appending
        while any(w.is_alive() for w in ws):
            r = events_cmd(p, "append", "app", "x", "--expect", "any", "--event", "noted",
                           "--data", "{}")
            if r.rc != 0:
                errors.append(r)
                return
            appended.append(parse_lines(r.out)[0]["positions"][0])

    ws = [threading.Thread(target=writer, args=(k,), daemon=True) for k in (1, 2)]
    ap = threading.Thread(target=appender, daemon=True)
    try:
        for w in ws:
            w.start()
        ap.start()
        for w in ws:
            w.join(900 * SCALE)
        ap.join(120 * SCALE)
        assert not errors, errors
        assert appended, "no append ran while the pipeline wrote"
        total_all = total + len(appended)
        wait_synced(p, db, timeout=300)
        p.wait_until(lambda: reader.error or len(reader.seen) >= total_all, 120,
                     "the reader to see %d events (saw %d)" % (total_all, len(reader.seen)))
        p.wait_until(lambda: len(tailed_lines) >= total, 120,
                     "tail --follow to print %d events" % total)
    finally:
        reader.halt.set()
        reader.join(30)
        tail.send_signal(signal.SIGINT)
        try:
            tail.wait(60 * SCALE)
        except subprocess.TimeoutExpired:
            tail.kill()
            raise AssertionError("walrelay events tail did not stop on SIGINT")
        tail_reader.join(30)
        err = tail.stderr.read()
    assert reader.error is None, reader.error
    assert reader.seen == list(range(1, total_all + 1)), (len(reader.seen), reader.seen[-5:])
    assert reader.reads > 10, "the reader did not loop while the writers ran"
    assert tail.returncode == 0, (tail.returncode, err)
    tailed = [e["position"] for e in parse_lines(b"".join(tailed_lines).decode())]
    want = sorted(set(range(1, total_all + 1)) - set(appended))
    assert tailed == want, (
        "tail --follow printed %d events (want %d), first problems %s" % (
            len(tailed), len(want), [(a, b) for a, b in zip(tailed, tailed[1:]) if b <= a][:5]))
    assert check_dense(es_store) == total_all


# 6 ------------------------------------------------------------------------------------

def test_06_filters(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, """
        CREATE TABLE a (id int PRIMARY KEY, v int);
        CREATE TABLE b (id int PRIMARY KEY, v int)""", ["a", "b"])
    # 1 a[1] ins, 2 b[1] ins, 3 a[1] upd, 4 a[2] ins, 5 b[1] del, 6 a[1] del
    for sql in ("INSERT INTO a VALUES (1, 0)", "INSERT INTO b VALUES (1, 0)",
                "UPDATE a SET v = 1 WHERE id = 1", "INSERT INTO a VALUES (2, 0)",
                "DELETE FROM b WHERE id = 1", "DELETE FROM a WHERE id = 1"):
        db.execute(sql)
    wait_synced(p, db)

    def pos(*filters, limit=None):
        evs = load(p, *filters, limit=limit)
        ps = [e["position"] for e in evs]
        assert ps == sorted(ps) and len(ps) == len(set(ps)), ps
        return ps

    assert pos("event_kind=insert") == [1, 2, 4]                       # a kind across tables
    assert pos("event_kind=delete,aggregate_kind=public.b") == [5]     # by aggregate kind
    assert pos("event_kind=insert,aggregate_kind=public.a,aggregate_id=[\"1\"]",
               "event_kind=update,aggregate_kind=public.a,aggregate_id=[\"1\"]",
               "event_kind=delete,aggregate_kind=public.a,aggregate_id=[\"1\"]") == [1, 3, 6]
    assert pos("event_kind=insert,after=1", "event_kind=delete,after=5") == [2, 4, 6]  # per filter
    assert pos("event_kind=insert", "event_kind=insert,aggregate_kind=public.a",
               "event_kind=delete") == [1, 2, 4, 5, 6]                  # overlap, once each
    assert pos("event_kind=insert", "event_kind=delete", limit=2) == [1, 2]
    assert pos() == []                                                  # no filter: nothing
    r = events_cmd(p, "load", "--filter", "event_kind=insert,after=-1")
    assert r.rc == 2 and "negative" in r.err and r.out == "", r
    check_dense(es_store)


# 7 ------------------------------------------------------------------------------------

def _append(p, kind, agg, expect, event, data, meta=None):
    args = ["append", kind, agg, "--expect", str(expect), "--event", event, "--data", data]
    if meta is not None:
        args += ["--metadata", meta]
    r = events_cmd(p, *args)
    out = parse_lines(r.out) if r.out else []
    return r, (out[0] if out else None)


def test_07_optimistic_appends(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY)", ["t"])
    db.execute("INSERT INTO t VALUES (1)")  # position 1 from the pipeline
    wait_synced(p, db)
    r, out = _append(p, "account", "A-1", "none", "opened", '{"owner": "ann"}', '{"by": "test"}')
    assert r.rc == 0 and out["positions"] == [2], r
    r, out = _append(p, "account", "A-1", 2, "deposited", '{"amount": 10}')  # current: ok
    assert r.rc == 0 and out["positions"] == [3], r
    r, out = _append(p, "account", "A-1", 2, "deposited", '{"amount": 5}')   # stale
    assert r.rc == 3 and out == {"conflict": {"expected": 2, "actual": 3}}, r
    assert "conflict" in r.err
    r, out = _append(p, "account", "A-1", "none", "opened", '{}')            # not new
    assert r.rc == 3 and out == {"conflict": {"expected": None, "actual": 3}}, r
    r, out = _append(p, "account", "B-2", 3, "opened", '{}')                 # empty stream
    assert r.rc == 3 and out == {"conflict": {"expected": 3, "actual": None}}, r
    r, out = _append(p, "account", "A-1", "any", "withdrawn", '{"amount": 1}')
    assert r.rc == 0 and out["positions"] == [4], r
    assert version(p, "account", "A-1") == {"position": 4, "version": 3}
    # refused appends used no position: the pipeline's next event is 5
    db.execute("INSERT INTO t VALUES (2)")
    wait_synced(p, db)
    assert [e["position"] for e in load_cdc(p)] == [1, 5]
    evs = load(p, "event_kind=opened", "event_kind=deposited", "event_kind=withdrawn")
    assert [(e["position"], e["event_kind"], e["stream_version"]) for e in evs] == [
        (2, "opened", 1), (3, "deposited", 2), (4, "withdrawn", 3)]
    assert evs[0]["data"] == {"owner": "ann"} and evs[0]["metadata"] == {"by": "test"}
    check_dense(es_store)


# 8 ------------------------------------------------------------------------------------

def test_08_failure_mid_batch_leaves_nothing(db, es_store, pipelines, monkeypatch):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY, v int)", ["t"],
               config={"retry": {"worker_max_failures": "100"}})
    db.execute("INSERT INTO t VALUES (1, 1)")
    wait_synced(p, db)
    slot = "walrelay_%s" % p.name
    progress = es_store.progress(slot)
    assert progress is not None and progress[2] == 1, progress
    assert p.stop() == 0, p.log_tail()
    # every batch the apply worker commits now fails in its middle (exit 1, each time)
    _start_with_failpoints(p, monkeypatch, "eventstore.mid_batch=exit(1)")
    with db.connect(autocommit=False) as c:
        for i in range(2, 7):
            c.execute("INSERT INTO t VALUES (%s, %s)", [i, i])
        c.commit()
    p.wait_until(lambda: p.log_text(since_start=True).count(
        "failpoint fired name=eventstore.mid_batch") >= 2, 90,
        "the batch to fail twice in its middle")
    # nothing of the transaction, no progress
    assert es_store.positions() == [1]
    assert es_store.progress(slot) == progress
    assert p.stop() == 0, p.log_tail()
    p.start()
    wait_synced(p, db)
    evs = load_cdc(p)
    assert [(e["position"], e["aggregate_id"]) for e in evs] == [
        (i, '["%d"]' % i) for i in range(1, 7)], evs
    assert es_store.progress(slot)[2] == 6
    check_dense(es_store)


# 9 ------------------------------------------------------------------------------------

def test_09_key_change_moves_the_row(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY, v text)", ["t"])
    db.execute("INSERT INTO t VALUES (1, 'a')")
    db.execute("UPDATE t SET id = 2 WHERE id = 1")
    db.execute("INSERT INTO t VALUES (1, 'again')")
    wait_synced(p, db)
    s = by_id(load_cdc(p), "public.t")
    one, two = s['["1"]'], s['["2"]']
    assert [(e["event_kind"], e["stream_version"]) for e in one] == [
        ("insert", 1), ("delete", 2), ("insert", 3)], one
    assert [(e["event_kind"], e["stream_version"]) for e in two] == [("insert", 1)], two
    delete, insert = one[1], two[0]
    assert insert["position"] == delete["position"] + 1
    assert delete["metadata"]["commit_lsn"] == insert["metadata"]["commit_lsn"]
    assert delete["metadata"]["moved_to"] == '["2"]' and delete["data"] == {"id": 1}
    assert insert["metadata"]["moved_from"] == '["1"]'
    assert insert["data"] == {"id": 2, "v": "a"}
    assert (delete["metadata"]["sub"], insert["metadata"]["sub"]) == (0, 1)
    assert one[2]["data"] == {"id": 1, "v": "again"}
    check_dense(es_store)


# 10 -----------------------------------------------------------------------------------

def test_10_truncate_one_event_per_table(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, """
        CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)""",
               ["a", "b"])
    db.execute("INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1)")
    db.execute("TRUNCATE a, b RESTART IDENTITY")
    db.execute("INSERT INTO a VALUES (1)")
    wait_synced(p, db)
    evs = load_cdc(p)
    tr = [e for e in evs if e["event_kind"] == "truncate"]
    assert [(e["aggregate_kind"], e["aggregate_id"]) for e in tr] == [
        ("public.a", "[]"), ("public.b", "[]")], tr
    assert tr[1]["position"] == tr[0]["position"] + 1
    assert tr[0]["data"] == {"cascade": False, "restart_identity": True}
    assert tr[0]["metadata"]["commit_lsn"] == tr[1]["metadata"]["commit_lsn"]
    again = by_id(evs, "public.a")['["1"]']
    assert [(e["event_kind"], e["stream_version"]) for e in again] == [
        ("insert", 1), ("insert", 2)], again
    assert again[1]["position"] > tr[1]["position"]
    assert version(p, "public.a", "[]") == {"position": tr[0]["position"], "version": 1}
    check_dense(es_store)


# 11 -----------------------------------------------------------------------------------

def test_11_unchanged_toast_is_omitted_and_listed(db, es_store, pipelines):
    create_toast_table(db, "docs", 3)
    publish(db, "pub", ["docs"])
    p = es_pipeline(pipelines, db, es_store)
    p.start()
    p.wait_all_ready(["public.docs"])
    db.execute("UPDATE docs SET n = n + 1 WHERE id = 2")
    db.execute("UPDATE docs SET body = 'short' WHERE id = 3")
    wait_synced(p, db)
    s = by_id(load_cdc(p), "public.docs")
    copied, upd = s['["2"]']
    assert copied["metadata"]["phase"] == "copy" and len(copied["data"]["body"]) > 20000
    assert upd["event_kind"] == "update"
    assert upd["data"] == {"id": 2, "n": 1}, upd["data"]  # body left out, not null
    assert upd["metadata"]["unchanged_toast"] == ["body"]
    three = s['["3"]'][-1]
    assert three["data"] == {"id": 3, "n": 0, "body": "short"}
    assert "unchanged_toast" not in three["metadata"]
    check_dense(es_store)


# 12 -----------------------------------------------------------------------------------

def test_12_composite_keys_and_replica_identity_full(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, """
        CREATE TABLE c (id int, region text, v int, PRIMARY KEY (region, id));
        CREATE TABLE f (id int PRIMARY KEY, v text, w int);
        ALTER TABLE f REPLICA IDENTITY FULL""", ["c", "f"])
    db.execute("INSERT INTO c VALUES (1001, 'eu', 1); UPDATE c SET v = 2 WHERE id = 1001")
    db.execute("INSERT INTO f VALUES (5, 'x', 1); UPDATE f SET w = 2 WHERE id = 5;"
               " DELETE FROM f WHERE id = 5")
    wait_synced(p, db)
    evs = load_cdc(p)
    c = [e for e in evs if e["aggregate_kind"] == "public.c"]
    # key order is the primary key's (region, id), not the columns' (id, region)
    assert [e["aggregate_id"] for e in c] == ['["eu","1001"]'] * 2, c
    assert [e["stream_version"] for e in c] == [1, 2]
    f = [e for e in evs if e["aggregate_kind"] == "public.f"]
    assert [(e["event_kind"], e["aggregate_id"]) for e in f] == [
        ("insert", '["5"]'), ("update", '["5"]'), ("delete", '["5"]')], f
    assert f[2]["data"] == {"id": 5, "v": "x", "w": 2}  # FULL: the old row
    assert version(p, "public.f", '["5"]')["version"] == 3
    check_dense(es_store)


# 13 -----------------------------------------------------------------------------------

def test_13_rolled_back_subtransaction_in_a_large_transaction(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY, s text)", ["t"],
               config={"batch": {"max_bytes": "16384"}})  # several chunks
    with db.connect(autocommit=False) as c:
        c.execute("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 3000) g")
        c.execute("SAVEPOINT s1")
        c.execute("INSERT INTO t SELECT g, 'gone' FROM generate_series(3001, 4000) g")
        c.execute("UPDATE t SET s = 'gone' WHERE id <= 10")
        c.execute("ROLLBACK TO SAVEPOINT s1")
        c.execute("SAVEPOINT s2")
        c.execute("INSERT INTO t SELECT g, 'b' FROM generate_series(4001, 5000) g")
        c.execute("RELEASE SAVEPOINT s2")
        c.commit()
    wait_synced(p, db)
    evs = load_cdc(p)
    ids = [int(e["aggregate_id"][2:-2]) for e in evs]
    assert ids == list(range(1, 3001)) + list(range(4001, 5001)), (len(ids), ids[2995:3005])
    assert all(e["event_kind"] == "insert" and e["data"]["s"] in ("a", "b") for e in evs)
    assert len({e["metadata"]["commit_lsn"] for e in evs}) == 1
    assert [e["metadata"]["seq"] for e in evs] == list(range(4000))
    assert check_dense(es_store) == 4000


# 14 -----------------------------------------------------------------------------------

def test_14_copy_precedes_stream_and_a_crash_mid_copy_leaves_no_partial_copy(
        db, es_store, pipelines, tmp_path, monkeypatch):
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 3000) g")
    publish(db, "pub", ["t"])
    p = es_pipeline(pipelines, db, es_store, config={"sync": {"copy_batch_rows": "500"}})
    fpdir = tmp_path / "fp"
    stop = threading.Event()
    errors = []

    def writer():
        try:
            with db.connect(autocommit=True) as c:
                i = 0
                while not stop.is_set():
                    c.execute("UPDATE t SET v = v + 1 WHERE id = %s", [i % 3000 + 1])
                    c.execute("INSERT INTO t VALUES (%s, 0)", [100000 + i])
                    i += 1
                    time.sleep(0.01)
        except psycopg.Error as e:
            errors.append(e)

    wt = threading.Thread(target=writer, daemon=True)
    wt.start()
    try:
        # the sync worker pauses after its first committed batch (the staged rows are in
        # the store, not visible), then dies there
        _start_with_failpoints(p, monkeypatch, "sync.mid_copy=sleep(1500)", fpdir)
        _marker_pid(p, fpdir, "sync.mid_copy")
        assert es_store.staged_rows() > 0
        assert load_cdc(p) == [], "copy events visible before the copy is complete"
        pid = p.worker("sync")["pid"]
        p.kill_worker(pid)
        p.wait_all_ready(["public.t"], timeout=180)
        time.sleep(1)
    finally:
        stop.set()
        wt.join(30)
    assert not errors, errors
    wait_synced(p, db)
    evs = load_cdc(p)
    copy = [e for e in evs if e["metadata"]["phase"] == "copy"]
    stream = [e for e in evs if e["metadata"]["phase"] == "stream"]
    copied_ids = [e["aggregate_id"] for e in copy]
    assert len(copied_ids) == len(set(copied_ids)), "a row copied twice"
    assert {'["%d"]' % i for i in range(1, 3001)} <= set(copied_ids)
    assert all(e["event_kind"] == "insert" for e in copy)
    assert stream, "no streamed change"
    assert max(e["position"] for e in copy) < min(e["position"] for e in stream), (
        "a streamed change of the table precedes its copy")
    assert [e["metadata"]["seq"] for e in copy] == list(range(len(copy)))
    assert es_store.staged_rows() == 0
    # the source's state equals the stream folded over the copy
    rows = {}
    for e in evs:
        key = e["aggregate_id"]
        if e["event_kind"] in ("insert", "update"):
            rows[key] = e["data"]["v"]
        elif e["event_kind"] == "delete":
            rows.pop(key, None)
    src = {'["%d"]' % i: v for i, v in db.execute("SELECT id, v FROM t")}
    assert rows == src
    check_dense(es_store)


# 15 -----------------------------------------------------------------------------------

def test_15_second_pipeline_and_foreign_writer_are_conflicts(db, es_store, pipelines):
    p = _ready(db, es_store, pipelines, "CREATE TABLE t (id int PRIMARY KEY)", ["t"])
    db.execute("INSERT INTO t VALUES (1)")
    wait_synced(p, db)
    # a foreign writer on the pipeline's stream
    r, out = _append(p, "public.t", '["1"]', 1, "insert", '{"id": 1}')
    assert r.rc == 3 and out == {"conflict": {"expected": 1, "actual": 1}}, r
    assert "pipeline" in r.err
    r, out = _append(p, "public.t", '["2"]', "none", "insert", '{"id": 2}')
    assert r.rc == 3 and out["conflict"]["actual"] is None, r
    # a second pipeline on the same store and slot (same name, another directory)
    q = pipelines(p.name, dirname=p.name + "_second")
    q.init(db.conninfo, "pub", destination=es_store.destination(q) if es_store.kind == "postgres"
           else "eventstore:sqlite:" + es_store.path)
    r = q.cmd("check", q.dir)
    assert r.rc == 2 and "conflict" in r.text and p.dir in r.text, r
    q.start(wait_status=False)
    q.proc.wait(60 * SCALE)
    assert q.proc.returncode == 2, q.log_tail()
    assert q.log_contains("conflict"), q.log_tail()
    # a second pipeline (another name) publishing the same table into the same store
    s = pipelines()
    s.init(db.conninfo, "pub", destination=es_store.destination(s) if es_store.kind == "postgres"
           else "eventstore:sqlite:" + es_store.path)
    s.start()

    def errored():
        t = s.tables().get("public.t")
        return t and t["phase"] == "errored" and t
    t = s.wait_until(errored, 90, "public.t errored in the second pipeline")
    assert "conflict" in t["err_msg"] and p.name in t["err_msg"], t
    assert s.stop() == 0
    # the first pipeline is untouched
    db.execute("INSERT INTO t VALUES (2)")
    wait_synced(p, db)
    assert [e["aggregate_id"] for e in load_cdc(p)] == ['["1"]', '["2"]']
    check_dense(es_store)


# a table the event store cannot key ---------------------------------------------------

def test_table_without_primary_key_is_refused(db, es_store, pipelines):
    """No primary key: the table goes errored with the reason and the fix; the others go on."""
    db.execute("CREATE TABLE k (id int PRIMARY KEY); CREATE TABLE nk (a int, b text);"
               " ALTER TABLE nk REPLICA IDENTITY FULL; INSERT INTO nk VALUES (1, 'x')")
    publish(db, "pub", ["k", "nk"])
    p = es_pipeline(pipelines, db, es_store)
    p.start()

    def errored():
        t = p.tables().get("public.nk")
        return t and t["phase"] == "errored" and t
    t = p.wait_until(errored, 120, "public.nk errored")
    assert "no primary key" in t["err_msg"] and "resync" in (t["err_hint"] or ""), t
    p.wait_until(lambda: p.tables()["public.k"]["phase"] == "ready", 120, "public.k ready")
    db.execute("INSERT INTO k VALUES (1); INSERT INTO nk VALUES (2, 'y')")
    wait_synced(p, db)
    assert [(e["aggregate_kind"], e["aggregate_id"]) for e in load_cdc(p)] == [
        ("public.k", '["1"]')]
    check_dense(es_store)


def test_postgres_store_keys_compare_bytes_in_a_locale_database(db, pg, pipelines):
    """A PostgreSQL store in a database whose collation is a locale (C.utf8, as many
    installations have): the kinds and ids are created `COLLATE "C"` (docs/eventstore.md,
    "The schema"), so every text index of the store compares bytes, and the store works
    there as in a C database: events in, a stream loaded by its id, versions right."""
    name = "es_locale_%d" % os.getpid()
    pg.execute('CREATE DATABASE "%s" TEMPLATE template0 LC_COLLATE \'C.utf8\' '
               "LC_CTYPE 'C.utf8'" % name)
    store = Store("postgres", pg, name)
    try:
        assert store.query("SELECT datcollate FROM pg_database WHERE datname = ?",
                           (name,)) == [("C.utf8",)]
        db.execute("CREATE TABLE t (id text PRIMARY KEY, v int)")
        db.execute("INSERT INTO t VALUES ('b', 1), ('B', 2), ('\u00e9', 3)")
        publish(db, "pub", ["t"])
        p = es_pipeline(pipelines, db, store)
        p.start()
        p.wait_all_ready(["public.t"])
        db.execute("UPDATE t SET v = v + 10 WHERE id = 'B'; DELETE FROM t WHERE id = 'b'")
        wait_synced(p, db)
        # every text key column of the store, and every index over one, compares bytes
        cols = store.query(
            "SELECT c.relname || '.' || a.attname, co.collname FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_collation co ON co.oid = a.attcollation"
            " WHERE c.relname IN ('es_events', 'es_streams', 'es_cdc_kinds', 'es_copy_rows')"
            " AND a.attname IN ('aggregate_kind', 'aggregate_id', 'event_kind', 'last_event_kind')"
            " ORDER BY 1")
        assert cols == [(c, "C") for c in (
            "es_cdc_kinds.aggregate_kind", "es_copy_rows.aggregate_id",
            "es_events.aggregate_id", "es_events.aggregate_kind", "es_events.event_kind",
            "es_streams.aggregate_id", "es_streams.aggregate_kind",
            "es_streams.last_event_kind")], cols
        other = store.query(
            "SELECT i.indexrelid::regclass::text, co.collname FROM pg_index i,"
            " unnest(i.indcollation::oid[]) AS k(coll) JOIN pg_collation co ON co.oid = k.coll"
            " WHERE i.indrelid IN ('es_events'::regclass, 'es_streams'::regclass)"
            " AND co.collname <> 'C'")
        assert other == [], other
        evs = load(p, "event_kind=update,aggregate_kind=public.t,aggregate_id=[\"B\"]")
        assert [(e["aggregate_id"], e["stream_version"], e["data"]["v"]) for e in evs] == [
            ('["B"]', 2, 12)], evs
        assert version(p, "public.t", '["b"]')["version"] == 2
        assert version(p, "public.t", '["\u00e9"]')["version"] == 1
        assert check_dense(store) == 5
        p.stop()
    finally:
        pg.drop_database(name)
