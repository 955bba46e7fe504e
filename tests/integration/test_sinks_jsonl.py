"""The jsonl destination (destinations/jsonl.c): JSON lines into a file, exactly once.

NOTES: every test checks the file against what the source changed, read independently
through a pgoutput slot of the test's own (sinks.ChangeLog): each change exactly once
(count, keys, tables, ops), in commit order per table, every line in the shape of
docs/events.md, and the file replayed row by row equals the source tables. The kill -9
matrix runs every failpoint of the workers (common/failpoint.h) plus the jsonl ones
(after the append and before the state, after the state, in the middle of a rotation)
with writers running, as test_crash.py does for sqlite.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from pipeline import SCALE, deadline
from sinks import ChangeLog, check_events, compare_replayed, read_jsonl
from workload import BackgroundWriter, create_mixed_table, create_toast_table, publish

BASE_CONFIG = {
    "sync": {"copy_batch_rows": "500"},
    "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "2000"},
    "batch": {"max_fill_ms": "100"},
}


def _config(extra=None):
    cfg = {k: dict(v) for k, v in BASE_CONFIG.items()}
    for k, v in (extra or {}).items():
        cfg.setdefault(k, {}).update(v)
    return cfg


def _events_path(p):
    return os.path.join(p.dir, "events.jsonl")


def _wait_caught_up(p, db):
    p.wait_flushed(db.current_wal_lsn())


def test_jsonl_copy_stream_and_kill(db, pipelines):
    """Copy, then inserts, updates (key changes, unchanged TOAST), deletes and a TRUNCATE
    while the apply worker is killed -9 twice: every change exactly once, replay equal."""
    create_mixed_table(db, "r", 2_000)
    create_toast_table(db, "big", 20)
    publish(db, "pub", ["r", "big"])
    log = ChangeLog(db, "pub")
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="jsonl:events.jsonl", config=_config())
    conf = open(p.conf_path).read()
    assert re.search(r"^type = jsonl$", conf, re.M) and re.search(
        r"^path = events.jsonl$", conf, re.M), conf
    p.start()
    p.wait_all_ready(["public.r", "public.big"])

    w = BackgroundWriter(db, ["r"], (1, 2_000), 1_000_000, per_txn=4, seed=7, pause=0.002)
    w.start()
    try:
        for _ in range(2):
            w.wait_commits(40, 60 * SCALE)
            db.execute("UPDATE big SET n = n + 1 WHERE id <= 5")  # body unchanged: TOAST
            pid = p.worker("apply")["pid"]
            p.kill_worker(pid)
            p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, 0, pid)
                         and p.worker("apply")["state"] == "running", 60, "apply restarted")
        w.wait_commits(40, 60 * SCALE)
    finally:
        w.stop()
    db.execute("TRUNCATE big")
    db.execute("INSERT INTO big SELECT g, g, repeat('z', 10) FROM generate_series(1, 3) g")
    _wait_caught_up(p, db)
    assert p.stop() == 0

    events = read_jsonl(_events_path(p))
    changes = log.changes()
    n = check_events(events, changes, ["public.r", "public.big"])
    assert n == len(changes) and n > 300, (n, len(changes))
    toast = [e for e in events if e["table"] == "public.big" and e["op"] == "update"]
    assert toast and all(e["unchanged_toast"] == ["body"] for e in toast), toast[:2]
    assert any(e["op"] == "truncate" and e["phase"] == "stream" for e in events)
    copies = [e for e in events if e["phase"] == "copy" and e["op"] == "insert"]
    assert len(copies) == 2_020, len(copies)
    diffs = compare_replayed(db, events, ["public.r", "public.big"])
    assert not diffs, "\n".join(diffs)
    # the state file confirms exactly the file
    st = open(_events_path(p) + ".walrelay").read()
    assert "offset %d\n" % os.path.getsize(_events_path(p)) in st, st
    assert re.search(r"^stream apply [0-9A-F]{16}:\d{10}$", st, re.M), st
