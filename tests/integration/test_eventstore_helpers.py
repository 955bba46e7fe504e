"""Helpers for the event store tests (test_eventstore*.py): the two stores, reading events
through `walrelay events` and directly, and the checks every case shares.

NOTES: no tests here. `es_store` is parametrised by the test modules over STORES:
"sqlite" (DIR/events.db) and "postgres" (a fresh database on the session's server, dropped
after the test). Reads go through the CLI (`walrelay events DIR load ...`, so the read API
is exercised end to end) except where a test needs the raw table (positions, progress).
"""

import json
import os
import sqlite3
import time

import pytest

from pipeline import SCALE, deadline, run_walrelay

STORES = ["sqlite", "postgres"]
CDC_KINDS = ("insert", "update", "delete", "truncate")


class Store:
    """One event store: where it is, how to name it to `walrelay init`, raw reads."""

    def __init__(self, kind, server=None, dbname=None):
        self.kind = kind
        self.server = server
        self.dbname = dbname
        self.path = None  # sqlite: set by destination()

    def destination(self, p):
        """The --destination argument for pipeline p."""
        if self.kind == "sqlite":
            self.path = os.path.join(p.dir, "events.db")
            return "eventstore:sqlite:" + self.path
        return "eventstore:postgres:" + self.server.conninfo(self.dbname)

    def query(self, sql, params=()):
        """Rows of a query on the store's own tables (? placeholders)."""
        if self.kind == "sqlite":
            with sqlite3.connect("file:%s?mode=ro" % self.path, uri=True, timeout=30) as c:
                return c.execute(sql, params).fetchall()
        with self.server.connect(self.dbname) as c:
            return c.execute(sql.replace("?", "%s"), params).fetchall()

    def positions(self):
        return [r[0] for r in self.query("SELECT position FROM es_events ORDER BY position")]

    def progress(self, slot):
        rows = self.query("SELECT last_commit_lsn, last_seq, last_position FROM es_cdc_progress"
                          " WHERE slot_name = ?", (slot,))
        return tuple(rows[0]) if rows else None

    def staged_rows(self):
        return self.query("SELECT count(*) FROM es_copy_rows")[0][0]


@pytest.fixture(params=STORES)
def es_store(request, pg):
    if request.param == "sqlite":
        yield Store("sqlite")
        return
    name = pg.create_database()
    yield Store("postgres", pg, name)
    pg.drop_database(name)


def es_pipeline(pipelines, db, store, publication="pub", config=None, name=None):
    """A pipeline from db's publication into the store (initialised, not started)."""
    p = pipelines(name) if name else pipelines()
    cfg = {"retry": {"backoff_initial_ms": "200", "backoff_max_ms": "2000"}}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    p.init(db.conninfo, publication, destination=store.destination(p), config=cfg)
    return p


def events_cmd(p, *args, timeout=60):
    return run_walrelay(p.bindir, "events", p.dir, *args, timeout=timeout)


def parse_lines(out):
    evs = []
    for line in out.splitlines():
        assert line.strip(), "an empty line in walrelay events output: %r" % out
        evs.append(json.loads(line))
    return evs


def load(p, *filters, limit=None):
    """`walrelay events DIR load --filter F ...` -> list of event dicts."""
    args = ["load"]
    for f in filters:
        args += ["--filter", f]
    if limit is not None:
        args += ["--limit", str(limit)]
    r = events_cmd(p, *args)
    assert r.rc == 0, "walrelay events load failed: %r" % r
    return parse_lines(r.out)


def load_cdc(p, table=None, after=None):
    """Every CDC event (of one aggregate kind "nsp.name" if given), ascending."""
    fs = []
    for k in CDC_KINDS:
        f = "event_kind=" + k
        if table:
            f += ",aggregate_kind=" + table
        if after is not None:
            f += ",after=%d" % after
        fs.append(f)
    return load(p, *fs)


def version(p, kind, agg_id):
    r = events_cmd(p, "version", kind, agg_id)
    assert r.rc == 0, "walrelay events version failed: %r" % r
    return json.loads(r.out)


def wait_synced(p, db, timeout=120):
    """Everything committed on the source so far is in the store."""
    p.wait_flushed(db.current_wal_lsn(), timeout)


def check_dense(store):
    """Positions are exactly 1..N."""
    pos = store.positions()
    assert pos == list(range(1, len(pos) + 1)), (
        "positions are not dense: %d events, first gaps %s" % (
            len(pos), [(a, b) for a, b in zip(pos, pos[1:]) if b != a + 1][:10]))
    return len(pos)


def wait_events(p, pred, timeout, what):
    """Polls load_cdc(p) until pred(events) is true; returns the events."""
    end = deadline(timeout)
    last = None
    while True:
        last = load_cdc(p)
        if pred(last):
            return last
        if time.monotonic() > end:
            raise AssertionError("timed out after %.0fs waiting for %s; %d events, last: %s%s" % (
                timeout * SCALE, what, len(last), last[-3:], p.log_tail(30)))
        time.sleep(0.3)


def by_id(events, table):
    """{aggregate_id: [events of that stream]} for one table."""
    out = {}
    for e in events:
        if e["aggregate_kind"] == table:
            out.setdefault(e["aggregate_id"], []).append(e)
    return out
