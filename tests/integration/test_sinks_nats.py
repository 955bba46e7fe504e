"""The nats destination (destinations/nats.c) against a real nats-server -js.

NOTES: natsserver.NatsServer starts Debian's nats-server with JetStream on a free
loopback port and a temporary store; NatsClient reads the stream back message by message
(JetStream's API over the plain protocol). What the stream holds is compared with what
the source changed, read through a pgoutput slot of the test's own (sinks.ChangeLog):
every change exactly once (count and keys: no Nats-Msg-Id twice), in commit order per
table, subjects <prefix>.<schema>.<table>.<op>, replayed equal to the source. Crashes:
kill -9 of the apply worker between publish and acknowledgement and between the
acknowledgement and the checkpoint (failpoints nats.after_publish, nats.after_ack), of
the supervisor, and nats-server killed and restarted under the running pipeline.
"""

import json
import re
import threading
import time

import pytest

from natsserver import NatsServer
from pipeline import SCALE
from sinks import (ChangeLog, check_event_shape, check_events, compare_replayed,
                   start_with_failpoints, wait_fired, wait_pid_gone)
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


@pytest.fixture
def nats():
    s = NatsServer().start()
    yield s
    s.cleanup()


def stream_events(nats, stream, skip=None):
    """The stream's messages as events, checking subject and headers of each (but of
    those whose subject starts with `skip`)."""
    out = []
    with nats.client() as c:
        msgs = c.messages(stream)
    for m in msgs:
        if skip and m["subject"].startswith(skip):
            continue
        ev = m["json"]
        check_event_shape(ev)
        assert m["headers"].get("Nats-Msg-Id") == ev["key"], m
        assert m["headers"].get("Walrelay-Stream") in ("apply",) or \
            m["headers"].get("Walrelay-Stream", "").startswith("sync_"), m
        out.append((m, ev))
    return out


def _writers(db, tables, n=2, pause=0.003, round=0):
    """n writers on their own key ranges; new ids of each round do not meet earlier ones."""
    return [BackgroundWriter(db, tables, (1 + i * 1000, 1000 + i * 1000),
                             1_000_000 * (i + 1) + 100_000 * round,
                             per_txn=3, seed=31 + i + 10 * round, pause=pause) for i in range(n)]


def _run_writers(ws, commits):
    for w in ws:
        w.start()
    try:
        for w in ws:
            w.wait_commits(commits, 60 * SCALE)
    finally:
        for w in ws:
            w.stop()


def _ready_pipeline(db, pipelines, nats, rows=500, config=None):
    """Table r (`rows` rows) published, and a nats pipeline with r ready. Returns (p, log),
    log reading the source's changes from before the pipeline's start."""
    create_mixed_table(db, "r", rows)
    publish(db, "pub", ["r"])
    log = ChangeLog(db, "pub")
    p = pipelines()
    p.init(db.conninfo, "pub", destination="nats:" + nats.url, config=_config(config))
    p.start()
    p.wait_all_ready(["public.r"])
    return p, log


def _check_stream(db, nats, p, tables, log, min_changes=1, skip=None, copied_in_run=False):
    """copied_in_run: the tables were copied while changes were made, so a table's stream
    starts after its copy's snapshot (its first streamed key)."""
    msgs = stream_events(nats, "walrelay_%s" % p.name, skip)
    events = [ev for _, ev in msgs]
    for m, ev in msgs:
        nsp, name = ev["table"].split(".", 1)
        assert m["subject"] == "walrelay.%s.%s.%s.%s" % (p.name, nsp, name, ev["op"]), m
    ids = [m["headers"]["Nats-Msg-Id"] for m, _ in msgs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, "Nats-Msg-Id stored more than once: %s" % dup[:5]
    since = None
    if copied_in_run:
        since = {}
        for ev in events:
            if ev["phase"] == "stream" and ev["key"] < since.get(ev["table"], "~"):
                since[ev["table"]] = ev["key"]
        assert sorted(since) == sorted(tables), "no change streamed for some table: %s" % since
    n = check_events(events, log.changes(), tables, since_key=since)
    assert n >= min_changes, n
    diffs = compare_replayed(db, events, tables)
    assert not diffs, "\n".join(diffs)
    return events


def test_nats_copy_and_stream(db, pipelines, nats):
    """Copy, inserts, updates (key changes, unchanged TOAST), deletes, TRUNCATE: one message
    per change on its subject, exactly once, replayed equal; the stream and walrelay's
    checkpoint bucket were created."""
    create_mixed_table(db, "r", 1_000)
    create_toast_table(db, "big", 10)
    publish(db, "pub", ["r", "big"])
    log = ChangeLog(db, "pub")
    p = pipelines()
    p.init(db.conninfo, "pub", destination="nats:" + nats.url, config=_config())
    conf = open(p.conf_path).read()
    assert "type = nats" in conf and "url = %s" % nats.url in conf, conf
    r = p.cmd("check", p.dir)
    assert r.rc == 0 and "nats %s stream walrelay_%s" % (nats.url, p.name) in r.text, r
    p.start()
    p.wait_all_ready(["public.r", "public.big"])
    _run_writers(_writers(db, ["r"], n=1), 100)
    db.execute("UPDATE big SET n = n + 1 WHERE id <= 3")
    db.execute("TRUNCATE big")
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0
    events = _check_stream(db, nats, p, ["public.r", "public.big"], log, min_changes=100)
    assert sum(1 for e in events if e["phase"] == "copy" and e["op"] == "insert") == 1_010
    toast = [e for e in events if e["table"] == "public.big" and e["op"] == "update"]
    assert len(toast) == 3 and all(e["unchanged_toast"] == ["body"] for e in toast), toast
    with nats.client() as c:
        info = c.stream_info("walrelay_%s" % p.name)
        assert info["config"]["subjects"] == ["walrelay.%s.>" % p.name], info
        # the read-back's ordered consumers are gone (one left would cost every publish)
        assert info["state"]["consumer_count"] == 0, info["state"]
        kv = c.stream_info("KV_walrelay_%s_walrelay" % p.name)
        assert "error" not in kv, kv


@pytest.mark.parametrize("failpoint", ["nats.after_publish", "nats.after_ack"])
def test_nats_kill_apply_between_publish_and_ack(db, pipelines, nats, tmp_path, monkeypatch,
                                                 failpoint):
    """The apply worker dies (kill -9 at the failpoint) after publishing a batch and before
    its acknowledgements are awaited (after_publish), or after them and before the
    checkpoint (after_ack): the restarted worker reads back what the stream holds and
    publishes nothing twice."""
    p, log = _ready_pipeline(db, pipelines, nats)
    assert p.stop() == 0
    ws = _writers(db, ["r"], n=2)
    for w in ws:
        w.start()
    fpdir = tmp_path / "fp"
    try:
        for w in ws:
            w.wait_commits(5, 60 * SCALE)
        start_with_failpoints(p, monkeypatch, "%s=abort" % failpoint, fpdir)
        pid = wait_fired(p, fpdir, failpoint)
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
    assert p.stop() == 0
    assert re.search(r"failpoint fired name=%s .*worker=apply" % re.escape(failpoint),
                     p.log_text())
    _check_stream(db, nats, p, ["public.r"], log, min_changes=50)


def test_nats_kill_supervisor(db, pipelines, nats):
    """kill -9 of the supervisor mid-stream (the workers exit on the channel's EOF), then
    walrelay run again: exactly once."""
    p, log = _ready_pipeline(db, pipelines, nats)
    ws = _writers(db, ["r"], n=2)
    for w in ws:
        w.start()
    try:
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
        p.status()
        pids = p.worker_pids()
        p.kill()
        end = time.monotonic() + 30 * SCALE
        from pipeline import alive_walrelay_pids
        while alive_walrelay_pids(pids):
            assert time.monotonic() < end, "workers outlived their supervisor"
            time.sleep(0.1)
        for w in ws:
            w.wait_commits(10, 60 * SCALE)
        p.start()
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
    finally:
        for w in ws:
            w.stop()
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0
    _check_stream(db, nats, p, ["public.r"], log, min_changes=50)


def test_nats_server_restarted_mid_stream(db, pipelines, nats):
    """nats-server is killed -9 under a running pipeline with writers, stays down a few
    seconds (status shows the wait with the last error), and comes back on the same port
    and store: the pipeline resumes by itself (no worker restart needed), exactly once."""
    p, log = _ready_pipeline(db, pipelines, nats, config={
        "destination": {"timeout_ms": "2000", "max_retry_ms": "1000"}})
    ws = _writers(db, ["r"], n=2)
    for w in ws:
        w.start()
    try:
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
        nats.stop(kill=True)

        def waiting():
            m = p.status().get("message") or ""
            return "waiting on the destination" in m and nats.url in m and m
        msg = p.wait_until(waiting, 60, "status showing the wait on NATS")
        assert "apply worker" in msg, msg
        for w in ws:
            w.wait_commits(10, 60 * SCALE)
        nats.start()
        p.wait_until(lambda: "waiting on the destination" not in (p.status().get("message") or ""),
                     60, "the wait to end")
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
    finally:
        for w in ws:
            w.stop()
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0
    assert "NATS delivery resumed" in p.log_text(), p.log_tail()
    _check_stream(db, nats, p, ["public.r"], log, min_changes=50)


def test_nats_another_writer_in_the_stream(db, pipelines, nats):
    """Another client publishes into walrelay's stream (plain messages, no headers) while
    walrelay drains a backlog and then streams. walrelay asks JetStream to answer only some
    messages and chains the others to their predecessor (Nats-Expected-Last-Msg-Id); the
    other writer's messages break those chains (a backlog's batch takes milliseconds to
    publish, the other writer publishes one message per round trip). walrelay notices,
    reads back what the stream holds and publishes the rest again: every change exactly
    once, and every message of the other writer kept."""
    p, log = _ready_pipeline(db, pipelines, nats, rows=200)
    assert p.stop() == 0
    ws = _writers(db, ["r"], n=2, pause=0)
    _run_writers(ws, 300)
    foreign = "walrelay.%s.other.writer" % p.name
    stop = threading.Event()
    sent = []

    def other_writer():
        with nats.client() as c:
            while not stop.is_set():
                hdrs, data = c.request(foreign + ".insert", b'{"n": %d}' % len(sent))
                assert b'"seq"' in data and b"error" not in data, data
                sent.append(json.loads(data)["seq"])

    th = threading.Thread(target=other_writer, daemon=True)
    th.start()
    try:
        p.start()
        p.wait_flushed(db.current_wal_lsn())
        _run_writers(_writers(db, ["r"], n=2, round=1), 60)
        p.wait_flushed(db.current_wal_lsn())
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive() and len(sent) > 50, len(sent)
    assert p.stop() == 0
    assert re.search(r"NATS stream walrelay_\S+ has another writer", p.log_text()), p.log_tail()
    _check_stream(db, nats, p, ["public.r"], log, min_changes=1000, skip=foreign)
    with nats.client() as c:
        kept = [m["seq"] for m in c.messages("walrelay_%s" % p.name)
                if m["subject"].startswith(foreign)]
    assert kept == sent, (len(kept), len(sent))


def test_nats_parallel_copies_share_the_stream(db, pipelines, nats):
    """Four tables copied by four sync workers at once, with writers on all of them: the
    workers' messages interleave in the one stream, where their acknowledgement chains can
    break each other's and the apply worker's (in 1 run of 2 when this was written; the
    break itself is forced in test_nats_another_writer_in_the_stream). Every copied row and
    every change is there exactly once, and the stream replays equal to the source."""
    tables = ["c1", "c2", "c3", "c4"]
    for t in tables:
        create_mixed_table(db, t, 3_000)
    publish(db, "pub", tables)
    log = ChangeLog(db, "pub")
    p = pipelines()
    p.init(db.conninfo, "pub", destination="nats:" + nats.url,
           config=_config({"sync": {"max_table_sync_workers": "4"}}))
    ws = _writers(db, tables, n=2)
    for w in ws:
        w.start()
    try:
        p.start()
        p.wait_all_ready(["public." + t for t in tables])
        for w in ws:
            w.wait_commits(20, 60 * SCALE)
    finally:
        for w in ws:
            w.stop()
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0
    events = _check_stream(db, nats, p, ["public." + t for t in tables], log, min_changes=40,
                           copied_in_run=True)
    copied = {}
    for e in events:
        if e["phase"] == "copy" and e["op"] == "insert":
            copied[e["table"]] = copied.get(e["table"], 0) + 1
    assert sorted(copied) == ["public." + t for t in tables] and \
        all(n >= 3_000 for n in copied.values()), copied


def test_nats_message_over_max_payload(db, pipelines, nats):
    """A change larger than the server's max_payload (1 MB by default) can never be
    stored: walrelay run stops (exit code 2) with the sizes and what to change, instead of
    retrying forever."""
    db.execute("CREATE TABLE big (id int PRIMARY KEY, body text)")
    publish(db, "pub", ["big"])
    p = pipelines()
    p.init(db.conninfo, "pub", destination="nats:" + nats.url, config=_config())
    p.start()
    p.wait_all_ready(["public.big"])
    db.execute("INSERT INTO big VALUES (1, repeat('x', 1500000))")
    rc = p.wait_exit(60, "the pipeline stopped by the oversized change")
    assert rc == 2, "an oversized change needs a person: exit code 2, got %s%s" % (
        rc, p.log_tail())
    assert "more than the 1048576 bytes the NATS server takes in a message (max_payload)" in \
        p.log_text(), p.log_tail()
    assert "raise max_payload" in p.log_text(), p.log_tail()
