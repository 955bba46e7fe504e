"""The http (webhook) destination (destinations/http.c) against a real HTTP receiver.

NOTES: sinks.Receiver is a Python http.server on a free loopback port whose answers each
test scripts. What the receiver acknowledged is compared with what the source changed,
read through a pgoutput slot of the test's own (sinks.ChangeLog): every change at least
once, the union by key equal to the source's changes, changes of a table in commit
order, every event in the shape of docs/events.md. Scenarios: signed batches (each
signature verified), 503 for 20 s then 429 with Retry-After then 200 (status shows the
wait), kill -9 of the apply worker with a batch in flight, a 400 that stops the pipeline
with the receiver's answer in the error and is delivered after the restart, and a
receiver that hangs past timeout_ms.
"""

import hashlib
import hmac
import os
import re
import threading
import time

import pytest

from pipeline import SCALE
from sinks import ChangeLog, Receiver, check_events, compare_replayed
from workload import BackgroundWriter, create_mixed_table, publish

SECRET = "s3cr3t-for-the-test"

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
def receiver():
    made = []

    def make(decide=None):
        r = Receiver(decide)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _write(db, n_commits, seed, tables=("r",), id_range=(1, 500), next_id=1_000_000):
    w = BackgroundWriter(db, list(tables), id_range, next_id, per_txn=3, seed=seed, pause=0.002)
    w.start()
    try:
        w.wait_commits(n_commits, 60 * SCALE)
    finally:
        w.stop()


def _caught_up(p, db):
    p.wait_flushed(db.current_wal_lsn())


def test_http_signed_batches(db, pipelines, receiver):
    """Copy and stream into a receiver that verifies every signature; batches are at
    most max_batch_events, carry the configured header, and every change arrives exactly
    once (nothing failed) in commit order."""
    create_mixed_table(db, "r", 500)
    publish(db, "pub", ["r"])
    log = ChangeLog(db, "pub")
    rcv = receiver()
    p = pipelines()
    p.init(db.conninfo, "pub", destination="http:" + rcv.url,
           config=_config({"destination": {"secret": SECRET, "max_batch_events": "50",
                                           "headers": 'X-Tenant: t-7, X-Team:  cdc '}}))
    conf = open(p.conf_path).read()
    assert "type = http" in conf and "url = %s" % rcv.url in conf, conf
    p.start()
    p.wait_all_ready(["public.r"])
    _write(db, 100, seed=5)
    _caught_up(p, db)
    r = p.cmd("status", p.dir)
    assert SECRET not in r.text and "t-7" not in r.text, r
    assert p.stop() == 0

    reqs = rcv.delivered()
    assert reqs, "nothing was posted"
    for q in reqs:
        h = q["headers"]
        assert q["path"] == "/hook" and h["content-type"] == "application/json", h
        assert h.get("x-tenant") == "t-7" and h.get("x-team") == "cdc", h
        want = "sha256=" + hmac.new(SECRET.encode(), q["raw"], hashlib.sha256).hexdigest()
        assert h.get("x-walrelay-signature") == want, (h, q["raw"][:200])
        assert abs(int(h["x-walrelay-timestamp"]) - time.time()) < 600, h
        assert list(q["json"]) == ["events"] and 1 <= len(q["json"]["events"]) <= 50, q["json"]
    events = rcv.events()
    assert sum(1 for e in events if e["phase"] == "copy" and e["op"] == "insert") == 500
    n = check_events(events, log.changes(), ["public.r"], exactly_once=True)
    assert n > 150, n
    assert not compare_replayed(db, events, ["public.r"])
    assert SECRET not in p.log_text()


def test_http_503_then_429_then_200(db, pipelines, receiver):
    """The receiver answers 503 for 20 s, then 429 with Retry-After: 2 three times, then
    200: status shows the wait with the last error meanwhile, the 429s are honoured, and
    nothing is lost."""
    create_mixed_table(db, "r", 100)
    publish(db, "pub", ["r"])
    state = {"start": None, "n429": 0}
    lock = threading.Lock()

    def decide(req):
        with lock:
            evs = (req["json"] or {}).get("events") or []
            if not any(e["phase"] == "stream" for e in evs):
                return 200, {}, b"ok", 0  # the copy goes through
            if state["start"] is None:
                state["start"] = time.monotonic()
            if time.monotonic() - state["start"] < 20:
                return 503, {}, b"receiver restarting", 0
            if state["n429"] < 3:
                state["n429"] += 1
                return 429, {"Retry-After": "2"}, b"slow down", 0
            return 200, {}, b"ok", 0

    log = ChangeLog(db, "pub")
    rcv = receiver(decide)
    p = pipelines()
    p.init(db.conninfo, "pub", destination="http:" + rcv.url,
           config=_config({"destination": {"max_retry_ms": "2000"}}))
    p.start()
    p.wait_all_ready(["public.r"])
    _write(db, 30, seed=9, id_range=(1, 100))

    def waiting_503():
        st = p.status()
        m = st.get("message") or ""
        return st["state"] == "running" and "waiting on the destination" in m and \
            "HTTP 503: receiver restarting" in m and m
    msg = p.wait_until(waiting_503, 30, "status showing the wait on the 503")
    assert "apply worker" in msg and rcv.url in msg, msg
    _caught_up_deadline = 120
    p.wait_flushed(db.current_wal_lsn(), timeout=_caught_up_deadline)
    st = p.status()
    assert "waiting on the destination" not in (st.get("message") or ""), st
    assert p.stop() == 0

    reqs = rcv.requests
    stream = [q for q in reqs if any(e["phase"] == "stream" for e in (q["json"] or {})["events"])]
    codes = [q["status"] for q in stream]
    assert codes.count(503) >= 3 and codes.count(429) == 3 and codes[-1] == 200, codes
    # each 429 said Retry-After: 2; the next attempt came no sooner than that
    for i, q in enumerate(stream[:-1]):
        if q["status"] == 429:
            gap = stream[i + 1]["t"] - q["t"]
            assert gap >= 1.9, "retried %.2fs after a 429 with Retry-After: 2" % gap
    events = rcv.events()
    check_events(events, log.changes(), ["public.r"], exactly_once=False)
    assert not compare_replayed(db, events, ["public.r"], strict=False)
    assert re.search(r"destination waiting destination=http message=\"POST .*HTTP 503",
                     p.log_text()), p.log_tail()


def test_http_kill_apply_mid_batch(db, pipelines, receiver):
    """kill -9 of the apply worker while the receiver holds a batch: every change is
    received at least once, the union by key equals the source's changes, and a key
    received twice carries the same event."""
    create_mixed_table(db, "r", 200)
    publish(db, "pub", ["r"])
    holding = threading.Event()
    release = threading.Event()
    state = {"held": 0}

    def decide(req):
        evs = (req["json"] or {}).get("events") or []
        if state["held"] < 2 and any(e["phase"] == "stream" for e in evs):
            state["held"] += 1
            holding.set()
            release.wait(60)
            release.clear()
            return 200, {}, b"ok", 0.0
        return 200, {}, b"ok", 0

    log = ChangeLog(db, "pub")
    rcv = receiver(decide)
    p = pipelines()
    p.init(db.conninfo, "pub", destination="http:" + rcv.url, config=_config())
    p.start()
    p.wait_all_ready(["public.r"])
    w = BackgroundWriter(db, ["r"], (1, 200), 1_000_000, per_txn=3, seed=11, pause=0.002)
    w.start()
    try:
        for _ in range(2):
            assert holding.wait(60 * SCALE), "no batch reached the receiver"
            holding.clear()
            pid = p.worker("apply")["pid"]
            p.kill_worker(pid)
            release.set()  # the receiver takes the batch, the sender is gone
            p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, 0, pid)
                         and p.worker("apply")["state"] == "running", 60, "apply restarted")
        w.wait_commits(30, 60 * SCALE)
    finally:
        release.set()
        w.stop()
    _caught_up(p, db)
    assert p.stop() == 0
    events = rcv.events()
    n = check_events(events, log.changes(), ["public.r"], exactly_once=False)
    assert n > 50, n
    keys = [e["key"] for e in events if e["phase"] == "stream"]
    assert len(keys) > len(set(keys)), "the held batches were not delivered again"
    assert not compare_replayed(db, events, ["public.r"], strict=False)


def test_http_400_stops_the_pipeline(db, pipelines, receiver):
    """A 400 stops the pipeline (degraded, exit 2 of the apply worker) with the status
    and the receiver's answer in status and the log; the refused batch is never skipped:
    once the receiver accepts, walrelay run sends it again and nothing is lost."""
    create_mixed_table(db, "r", 50)
    publish(db, "pub", ["r"])
    refuse = {"on": True}

    def decide(req):
        evs = (req["json"] or {}).get("events") or []
        if refuse["on"] and any(e["phase"] == "stream" for e in evs):
            return 400, {"Content-Type": "text/plain"}, b"event 17: column \"qty\" unknown", 0
        return 200, {}, b"ok", 0

    log = ChangeLog(db, "pub")
    rcv = receiver(decide)
    p = pipelines()
    p.init(db.conninfo, "pub", destination="http:" + rcv.url, config=_config())
    p.start()
    p.wait_all_ready(["public.r"])
    db.execute("UPDATE r SET qty = qty + 1 WHERE id <= 5")
    rc = p.wait_exit(60, "the pipeline stopped by the 400")
    assert rc == 2, "a refused batch needs a person: exit code 2, got %s%s" % (rc, p.log_tail())
    msg = p.log_text()
    assert "HTTP 400" in msg and 'event 17: column "qty" unknown' in msg, msg
    assert re.search(r"the receiver refused a batch of 5 events \(keys [0-9A-F]{16}:0000000001 "
                     r"to [0-9A-F]{16}:0000000005\): POST %s answered HTTP 400"
                     % re.escape(rcv.url), p.log_text()), p.log_tail()
    assert "never skipped" in p.log_text()
    refused = [q for q in rcv.requests if q["status"] == 400]
    assert len(refused) == 1, "a 400 is not retried: %d attempts" % len(refused)

    refuse["on"] = False
    p.start()
    p.wait_flushed(db.current_wal_lsn())
    assert p.stop() == 0
    events = rcv.events()
    got = check_events(events, log.changes(), ["public.r"], exactly_once=True)
    assert got == 5, got
    assert [e["key"] for e in events if e["phase"] == "stream"] == \
        [e["key"] for e in refused[0]["json"]["events"]]


def test_http_hanging_receiver(db, pipelines, receiver):
    """A receiver that does not answer within timeout_ms: the request is abandoned and
    sent again until it is answered; nothing is lost."""
    create_mixed_table(db, "r", 50)
    publish(db, "pub", ["r"])
    hung = {"n": 0}

    def decide(req):
        evs = (req["json"] or {}).get("events") or []
        if hung["n"] < 2 and any(e["phase"] == "stream" for e in evs):
            hung["n"] += 1
            return 200, {}, b"late", 4.0  # past timeout_ms: the client is gone
        return 200, {}, b"ok", 0

    log = ChangeLog(db, "pub")
    rcv = receiver(decide)
    p = pipelines()
    p.init(db.conninfo, "pub", destination="http:" + rcv.url,
           config=_config({"destination": {"timeout_ms": "1000"}}))
    p.start()
    p.wait_all_ready(["public.r"])
    db.execute("UPDATE r SET name = 'hang ' || id WHERE id <= 10")
    p.wait_until(lambda: "Timeout was reached" in (p.status().get("message") or "")
                 or "timed out" in (p.last_status.get("message") or "").lower(), 30,
                 "status showing the timeout")
    p.wait_flushed(db.current_wal_lsn(), timeout=60)
    assert p.stop() == 0
    stream = [q for q in rcv.requests if any(e["phase"] == "stream" for e in q["json"]["events"])]
    assert len(stream) >= 3 and not stream[0]["answered"] and stream[-1]["answered"], \
        [(q["status"], q["answered"]) for q in stream]
    events = rcv.events()
    assert check_events(events, log.changes(), ["public.r"], exactly_once=False) == 10
    assert not compare_replayed(db, events, ["public.r"], strict=False)


def test_http_bad_config(db, pipelines):
    create_mixed_table(db, "r", 5)
    publish(db, "pub", ["r"])
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="http", check=False)
    assert r.rc == 2 and "--destination http needs the URL: http:URL" in r.err, r
    r = p.init(db.conninfo, "pub", destination="http:ftp://example.com/x", check=False)
    assert r.rc == 2 and re.search(
        r"walrelay\.conf:\d+: \[destination\] url: the scheme \"ftp\" is not http or https",
        r.text), r
    assert not os.path.exists(p.conf_path)
    p.init(db.conninfo, "pub", destination="http:http://127.0.0.1:9/x",
           config={"destination": {"headers": '{"Content-Type": "text/plain"}',
                                   "secret": "hunter2"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and 'header "Content-Type" is set by walrelay' in r.text, r
    assert "hunter2" not in r.text
    from pipeline import edit_ini
    edit_ini(p.conf_path, {"destination": {"headers": "X-Ok: 1, no colon here"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and "entry 2 (separated by commas) is not Name: value" in r.text, r
    assert "colon" not in r.text, r
    edit_ini(p.conf_path, {"destination": {"headers": '{"X-A": "a, b", "X-B": 7}'}})
    r = p.cmd("check", p.dir)
    assert r.rc == 2 and 'header "X-B" needs a string value' in r.text, r


def test_http_stop_while_waiting(db, pipelines):
    """walrelay stop while the receiver is unreachable ends the wait at once (the host's
    interrupted()): the workers exit 0, nothing is killed, and the next run sends the batch
    again."""
    import socket
    create_mixed_table(db, "r", 20)
    publish(db, "pub", ["r"])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = "http://127.0.0.1:%d/hook" % port
    p = pipelines()
    p.init(db.conninfo, "pub", destination="http:" + url, config=_config())
    p.start()
    msg = p.wait_until(lambda: "waiting on the destination" in (p.status().get("message") or "")
                       and p.last_status["message"], 60, "the copy waiting on the receiver")
    assert "Couldn't connect to server" in msg, msg
    t0 = time.monotonic()
    assert p.stop(timeout=30) == 0
    assert time.monotonic() - t0 < 20 * SCALE, "walrelay stop took %.1fs" % (time.monotonic() - t0)
    assert "stop timeout" not in p.log_text(), p.log_tail()
    rcv = Receiver()
    try:
        from pipeline import edit_ini  # the same directory, a receiver that answers
        edit_ini(p.conf_path, {"destination": {"url": rcv.url}})
        p.start()
        p.wait_all_ready(["public.r"])
        assert sum(1 for e in rcv.events() if e["phase"] == "copy" and e["op"] == "insert") == 20
    finally:
        p.stop()
        rcv.close()
