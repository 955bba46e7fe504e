"""History mode of the sqlite destination ([destination] mode = history): every change a
new row with _change_type, _commit_lsn, _seq, _commit_time, append-only, exactly once.

NOTES: the history is compared with what the source changed, read through a pgoutput
slot of the test's own (sinks.ChangeLog): the (_commit_lsn, _seq) of the change rows are
exactly the source's change keys, none twice, also across kill -9 of the apply worker at
a batch boundary (failpoint apply.after_commit) and mid-stream; replaying the history
(the copy's rows, then the changes in order) gives the source table row by row.
"""

import json
import re
import sqlite3

import pytest

from pipeline import SCALE
from sinks import (ChangeLog, check_events, compare_replayed, key_str, start_with_failpoints,
                   wait_fired, wait_pid_gone)
from workload import BackgroundWriter, create_mixed_table, publish

HISTORY = {
    "destination": {"mode": "history"},
    "sync": {"copy_batch_rows": "500"},
    "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "2000"},
    "batch": {"max_fill_ms": "100"},
}

META = ["_change_type", "_commit_lsn", "_seq", "_commit_time", "_old_key"]


def _rows(p, table):
    with p.dest() as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute('SELECT * FROM "%s" ORDER BY rowid' % table)]


def _lsn(v):
    return "%X/%X" % (v >> 32, v & 0xFFFFFFFF)


def test_history_row_updated_three_times(db, pipelines):
    """A row inserted, updated 3 times (once without touching its TOASTed column) and
    deleted: 4 rows with its values in order, then a delete row with the old values; the
    copy's rows are there as 'copy'; a TRUNCATE is one row."""
    db.execute("CREATE TABLE h (id int PRIMARY KEY, n int, note text, body text)")
    db.execute("ALTER TABLE h ALTER COLUMN body SET STORAGE EXTERNAL")
    db.execute("INSERT INTO h SELECT g, g, 'copied', NULL FROM generate_series(1, 20) g")
    publish(db, "pub", ["h"])
    p = pipelines()
    p.init(db.conninfo, "pub", config=HISTORY)
    assert "mode = history" in open(p.conf_path).read()
    p.start()
    p.wait_all_ready(["public.h"])
    big = "x" * 10_000
    db.execute("INSERT INTO h VALUES (100, 0, 'new', %s)", [big])
    db.execute("UPDATE h SET n = 1, note = 'one' WHERE id = 100")  # body unchanged: TOAST
    db.execute("UPDATE h SET n = 2, body = %s WHERE id = 100", [big + "y"])
    db.execute("UPDATE h SET n = 3 WHERE id = 100")
    db.execute("DELETE FROM h WHERE id = 100")
    db.execute("UPDATE h SET id = 200 WHERE id = 1")  # the key changes: _old_key
    db.execute("TRUNCATE h")
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0

    rows = _rows(p, "h")
    assert list(rows[0]) == ["id", "n", "note", "body"] + META, list(rows[0])
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
    keys = [(r["_commit_lsn"], r["_seq"]) for r in mine]
    assert keys == sorted(keys) and len(set(keys)) == 5, keys
    for r in mine:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["_commit_time"]), r
    assert all(r["_old_key"] is None for r in mine), mine
    moved = [r for r in rows if r["id"] == 200]
    assert len(moved) == 1 and moved[0]["_change_type"] == "update", moved
    assert json.loads(moved[0]["_old_key"]) == {"id": 1} and moved[0]["note"] == "copied", moved
    trunc = [r for r in rows if r["_change_type"] == "truncate"]
    assert len(trunc) == 1 and trunc[0]["id"] is None and trunc[0] is rows[-1], rows[-3:]


def _history_events(p, table, nsp="public"):
    """The history rows as events of docs/events.md (for sinks.check_events / replay)."""
    rows = _rows(p, table)
    events = []
    for r in rows:
        vals = {k: v for k, v in r.items() if not k.startswith("_")}
        t = r["_change_type"]
        ev = {"table": "%s.%s" % (nsp, table), "unchanged_toast": []}
        if t == "copy":
            ev.update(key="copy:%d" % r["_seq"], op="insert", phase="copy", new=vals, old=None)
        else:
            old = vals if t == "delete" else None
            if t == "update" and r["_old_key"] is not None:
                old = json.loads(r["_old_key"])
            ev.update(key=key_str(r["_commit_lsn"], r["_seq"]), op=t, phase="stream",
                      new=vals if t in ("insert", "update") else None, old=old)
        events.append(ev)
    return events


def _as_json_values(events):
    """SQLite's storage classes back to the JSON form of sinks.source_rows (int2/int4/bool
    numbers and booleans, everything else text)."""
    for ev in events:
        for part in ("new", "old"):
            row = ev.get(part)
            if not row:
                continue
            for k, v in row.items():
                if k in ("small", "qty") or v is None:
                    continue
                if k == "flag":
                    row[k] = bool(v)
                elif k == "id":
                    row[k] = str(v)
                elif k == "data":
                    row[k] = "\\x" + bytes(v).hex()
                elif k == "score" and not isinstance(v, str):
                    # PostgreSQL's shortest exact form: Python's repr, without a ".0"
                    row[k] = repr(v)[:-2] if repr(v).endswith(".0") else repr(v)
    return events


@pytest.mark.parametrize("crash", ["after_commit", "kill_apply"])
def test_history_exactly_once(db, pipelines, tmp_path, monkeypatch, crash):
    """Writers run while the apply worker dies (a kill -9 at a batch boundary, or at a
    random moment): the history's change rows are exactly the source's changes, none twice,
    and replay into the source's rows."""
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
        if crash == "after_commit":
            fpdir = tmp_path / "fp"
            start_with_failpoints(p, monkeypatch, "apply.after_commit=abort", fpdir)
            pid = wait_fired(p, fpdir, "apply.after_commit")
            p.killed_pids.add(pid)
            wait_pid_gone(pid)
        else:
            p.start()
            for w in ws:
                w.wait_commits(20, 60 * SCALE)
            pid = p.worker("apply")["pid"]
            p.kill_worker(pid)
        p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, 0, pid)
                     and p.worker("apply")["state"] == "running", 60, "apply restarted")
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
    finally:
        for w in ws:
            w.stop()
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0
    events = _as_json_values(_history_events(p, "r"))
    n = check_events(events, log.changes(), ["public.r"])
    assert n > 50, n
    diffs = compare_replayed(db, events, ["public.r"])
    assert not diffs, "\n".join(diffs[:10])


def test_history_mode_is_kept(db, pipelines):
    """A destination made in mirror mode refuses mode = history (and the reverse), with the
    way out; a bad mode value is a configuration error naming the line."""
    create_mixed_table(db, "r", 10)
    publish(db, "pub", ["r"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.r"])
    assert p.stop() == 0
    from pipeline import edit_ini
    edit_ini(p.conf_path, {"destination": {"mode": "history"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and "holds mirror tables, not history ones" in r.text, r
    assert "give path a new file" in r.text, r
    edit_ini(p.conf_path, {"destination": {"mode": "journal"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and re.search(
        r"walrelay\.conf:\d+: \[destination\] mode: invalid value \"journal\": expected mirror or "
        r"history", r.text), r
