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

from pipeline import SCALE, edit_ini
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


# -- kill -9 at every failpoint ------------------------------------------------------------

# every point of common/failpoint.h a pipeline into jsonl reaches: the workers' phase
# boundaries (as test_crash.py) and the jsonl file protocol's own
FAILPOINTS = [
    "sync.after_datasync", "sync.mid_copy", "sync.before_finishedcopy", "sync.after_finishedcopy",
    "sync.after_syncwait", "sync.catchup_after_commit", "sync.before_slot_drop",
    "apply.after_commit", "apply.mid_txn_chunk", "apply.catchup_granted", "apply.before_ready",
    "apply.after_ready", "jsonl.after_append", "jsonl.after_state", "jsonl.mid_rotate",
    "jsonl.copy_appended", "jsonl.copy_moved",
    # the same three where only the apply worker writes (no table is being copied)
    "jsonl.after_append@apply", "jsonl.after_state@apply", "jsonl.mid_rotate@apply",
]


def _all_events(p):
    """Events of the rotated files (oldest first) and then the current one."""
    path = _events_path(p)
    rotated = sorted(f for f in os.listdir(p.dir) if re.fullmatch(r"events\.jsonl\.\d{6}", f))
    events = []
    for f in rotated:
        events += read_jsonl(os.path.join(p.dir, f))
    return events + read_jsonl(path), len(rotated)


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_jsonl_kill_at_failpoint(db, pipelines, tmp_path, monkeypatch, failpoint):
    """r is copied and Ready in a first run; t joins the publication (not for the
    "@apply" cases); the second run has the point armed (the process that reaches it dies
    there once, as kill -9 would) while two writers change r and t. The files then hold
    every change exactly once, in commit order per table, and replay into exactly the
    source's rows."""
    from sinks import start_with_failpoints, wait_fired, wait_pid_gone
    from workload import create_mixed_table

    failpoint, _, only = failpoint.partition("@")
    tables = ["public.r"] if only == "apply" else ["public.r", "public.t"]
    extra = {}
    if failpoint == "apply.mid_txn_chunk":
        extra = {"batch": {"max_bytes": "1024"}}
    if failpoint == "jsonl.mid_rotate":
        extra = {"destination": {"rotate_bytes": "65536"}}
    create_mixed_table(db, "r", 2_000)
    create_mixed_table(db, "t", 3_000)
    publish(db, "pub", ["r"])
    p = pipelines()
    p.init(db.conninfo, "pub", destination="jsonl:events.jsonl", config=_config(extra))
    p.start()
    p.wait_all_ready(["public.r"])
    assert p.stop() == 0
    if "public.t" in tables:
        db.execute("ALTER PUBLICATION pub ADD TABLE t")
    log = ChangeLog(db, "pub")

    writers = [
        BackgroundWriter(db, ["r", "t"], (1, 1_000), 1_000_000, per_txn=3, seed=21, pause=0.005),
        BackgroundWriter(db, ["r", "t"], (1_001, 2_000), 2_000_000, per_txn=3, seed=22,
                         pause=0.005),
    ]
    for w in writers:
        w.start()
    fpdir = tmp_path / "failpoints"
    try:
        for w in writers:
            w.wait_commits(5, 60 * SCALE)
        spec = "%s=abort" % failpoint
        if failpoint == "sync.catchup_after_commit":
            spec += ";sync.before_finishedcopy=sleep(500)"
        start_with_failpoints(p, monkeypatch, spec, fpdir)
        if failpoint == "apply.mid_txn_chunk":
            db.execute("INSERT INTO r (id, name, qty) SELECT g, 'chunk ' || g, g"
                       " FROM generate_series(5000001, 5000500) g")
        pid = wait_fired(p, fpdir, failpoint)
        p.killed_pids.add(pid)
        wait_pid_gone(pid)
        p.wait_all_ready(tables, timeout=180)
        for w in writers:
            w.wait_commits(10, 60 * SCALE)
    finally:
        for w in writers:
            w.stop()
    _wait_caught_up(p, db)
    assert p.stop() == 0
    fired = re.findall(r"failpoint fired name=%s " % re.escape(failpoint), p.log_text())
    assert len(fired) == 1, "failpoint %s fired %d times" % (failpoint, len(fired))

    events, nrotated = _all_events(p)
    if failpoint == "jsonl.mid_rotate":
        assert nrotated >= 1, "no rotation happened"
    changes = log.changes()
    # r is Ready all along: every change since the log's slot, exactly once
    n_r = check_events(events, changes, ["public.r"])
    assert n_r > 20, n_r
    if "public.t" in tables:
        # t is copied in this run: its stream starts after its copy's snapshot
        t_keys = [e["key"] for e in events if e["table"] == "public.t" and e["phase"] == "stream"]
        assert t_keys, "no change of t was streamed"
        check_events(events, changes, ["public.t"], since_key={"public.t": min(t_keys)})
    else:
        assert re.search(r"failpoint fired name=%s .*worker=apply" % re.escape(failpoint),
                         p.log_text()), "the point did not fire in the apply worker"
    diffs = compare_replayed(db, events, tables)
    assert not diffs, "\n".join(diffs)
    # the file holds each finished copy once: one opening truncate per table, no copy key
    # twice, and no copy still staged beside it
    for t in tables:
        opens = [e for e in events if e["table"] == t and e["phase"] == "copy"
                 and e["op"] == "truncate"]
        assert len(opens) == 1, (t, [e["key"] for e in opens])
    ckeys = [e["key"] for e in events if e["phase"] == "copy"]
    assert len(ckeys) == len(set(ckeys)), "a copied row twice"
    assert not [f for f in os.listdir(p.dir) if ".copy-" in f], os.listdir(p.dir)


# -- standard output, rotation, bad input -----------------------------------------------------

def test_jsonl_stdout(db, pipelines, bindir, tmp_path):
    """jsonl:- writes the events, and nothing else, on walrelay run's standard output."""
    create_mixed_table(db, "r", 300)
    publish(db, "pub", ["r"])
    log = ChangeLog(db, "pub")
    p = pipelines()
    p.init(db.conninfo, "pub", destination="jsonl:-", config=_config())
    out_path = tmp_path / "stdout.jsonl"
    with open(out_path, "wb") as out:
        p._log_f = open(p.log_path, "ab")
        p.run_log_offset = p._log_f.tell()
        p.proc = subprocess.Popen([os.path.join(bindir, "walrelay"), "run", p.dir],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=p._log_f)
        p.wait_until(lambda: p.status(), 30, "walrelay run answers status")
        p.wait_all_ready(["public.r"])
        w = BackgroundWriter(db, ["r"], (1, 300), 1_000_000, per_txn=3, seed=3, pause=0.002)
        w.start()
        try:
            w.wait_commits(60, 60 * SCALE)
        finally:
            w.stop()
        _wait_caught_up(p, db)
        assert p.stop() == 0
    events = read_jsonl(out_path)
    assert sum(1 for e in events if e["phase"] == "copy" and e["op"] == "insert") == 300
    n = check_events(events, log.changes(), ["public.r"])
    assert n > 100, n  # 180 statements, some of which find no row
    assert not compare_replayed(db, events, ["public.r"])
    assert not os.path.exists(os.path.join(p.dir, "-")), "wrote a file named -"


def test_jsonl_bad_input(db, pipelines):
    """Clear errors, exit code 2, for what a person must fix."""
    create_mixed_table(db, "r", 10)
    publish(db, "pub", ["r"])
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="jsonl", check=False)
    assert r.rc == 2 and "jsonl needs a file or -: jsonl:PATH" in r.err, r

    p.init(db.conninfo, "pub", destination="jsonl:events.jsonl",
           config={"destination": {"rotate_bytes": "1GB"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2, r
    assert re.search(r"walrelay\.conf:\d+: \[destination\] rotate_bytes: invalid value \"1GB\"",
                     r.text), r

    # a file another pipeline writes
    edit_ini(p.conf_path, {"destination": {"rotate_bytes": "0"}})
    with open(os.path.join(p.dir, "events.jsonl.walrelay"), "w") as f:
        f.write("walrelay jsonl state 1\npipeline other\ngeneration 0\noffset 0\n")
    r = p.cmd("check", p.dir)
    assert r.rc == 2, r
    assert 'is written by pipeline "other", not "%s"' % p.name in r.text, r
    assert "give each pipeline its own file" in r.text, r

    # a file cut by hand below its confirmed end
    with open(os.path.join(p.dir, "events.jsonl.walrelay"), "w") as f:
        f.write("walrelay jsonl state 1\npipeline %s\ngeneration 0\noffset 100\n" % p.name)
    open(os.path.join(p.dir, "events.jsonl"), "w").close()
    r = p.cmd("check", p.dir)
    assert r.rc != 0 and "has 0 bytes, but 100 are confirmed in it" in r.text, r
