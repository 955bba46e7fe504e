"""Status feedback never lets the walsender time out (issue 12, defect 9).

NOTES: a dedicated PostgreSQL with wal_sender_timeout = 2s (module fixture `short_pg`),
so that a worker silent for 2 s loses its walsender ("terminating walsender process due
to replication timeout" in the server's log, then a connection error and a restart).
Each test holds a worker away from its stream loop for several timeouts with a `sleep`
failpoint (common/failpoint.h):

  - apply.dest_commit: every destination commit of the apply worker blocks for HOLD_MS
    (a destination whose commit blocks);
  - sync.catchup_streaming: the sync worker, its catch-up stream just started, sleeps
    HOLD_MS while the apply worker waits for that catch-up without reading its stream.

While a worker sleeps, pg_stat_replication must show its walsender (same pid) receiving
replies (reply_time moving): the engine's status keeper (common/stream.h) sends them.
Each test ends with the destination equal to the source, the walsenders of the
pipeline never replaced, no worker restarted, and no replication timeout in the
server's log. Before the keeper (status every 10 s, none during destination calls) both
tests failed on every one of those checks.
"""

import os
import time

import pytest

from conftest import Db
from pgserver import PgServer
from pipeline import SCALE, deadline, wait_equal
from workload import BackgroundWriter, create_mixed_table, publish

SENDER_TIMEOUT = "2s"
HOLD_MS = 7000  # 3.5 timeouts
TIMEOUT_LINE = "terminating walsender process due to replication timeout"


@pytest.fixture(scope="module")
def short_pg():
    """A server whose walsenders give up after 2 s without a message from the client."""
    s = PgServer(extra_conf={"wal_sender_timeout": SENDER_TIMEOUT}).start()
    yield s
    s.stop()


@pytest.fixture
def short_db(short_pg):
    d = Db(short_pg, short_pg.create_database())
    yield d
    short_pg.drop_database(d.name)


def server_log(server):
    with open(server.logfile, errors="replace") as f:
        return f.read()


def walsender(db, app):
    """(pid, reply_time) of the walsender serving application_name app, or None."""
    rows = db.execute(
        "SELECT pid, reply_time FROM pg_stat_replication WHERE application_name = %s", [app])
    return rows[0] if rows else None


def start_with_failpoint(p, monkeypatch, spec, fpdir):
    os.makedirs(fpdir, exist_ok=True)
    monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")


def wait_marker(p, fpdir, name, timeout=120):
    path = os.path.join(str(fpdir), name)
    p.wait_until(lambda: os.path.exists(path), timeout, "failpoint %s reached" % name)
    return time.monotonic()


def watch_replies(db, apps, until):
    """Samples pg_stat_replication until the monotonic time `until`: per application
    name, the walsender pids seen (None when it had none) and the distinct reply_times.
    A walsender that is replaced or gone, or whose client goes silent, shows here."""
    pids = {a: set() for a in apps}
    replies = {a: set() for a in apps}
    while time.monotonic() < until:
        for a in apps:
            row = walsender(db, a)
            pids[a].add(row[0] if row is not None else None)
            if row is not None and row[1] is not None:
                replies[a].add(row[1])
        time.sleep(0.2)
    return pids, replies


def check_no_timeout(server, log_start, p):
    text = server_log(server)[log_start:]
    assert TIMEOUT_LINE not in text, (
        "the walsender timed out:\n%s" % "\n".join(
            ln for ln in text.splitlines() if "walsender" in ln or "replication" in ln)[-3000:])
    assert not p.log_contains("worker restart scheduled"), (
        "a worker was restarted" + p.log_tail(40))
    st = p.status()
    restarts = [(w.get("role"), w.get("restarts")) for w in st.get("workers", [])
                if w.get("restarts")]
    assert not restarts, "workers restarted: %r" % restarts


def test_feedback_while_destination_commit_blocks(short_db, pipelines, monkeypatch, tmp_path):
    """Every destination commit of the apply worker blocks for 3.5 walsender timeouts: its
    walsender keeps receiving status updates from the keeper, the changes arrive once."""
    db = short_db
    p = pipelines()
    try:
        create_mixed_table(db, "t", 300)
        publish(db, "pub", ["t"])
        p.init(db.conninfo, "pub")
        fpdir = tmp_path / "fp"
        log_start = len(server_log(db.server))
        start_with_failpoint(p, monkeypatch, "apply.dest_commit=sleep(%d)" % HOLD_MS, fpdir)
        p.wait_all_ready(["public.t"])
        app = "walrelay_%s_apply" % p.name
        first = walsender(db, app)
        assert first is not None, "no walsender for %s" % app

        db.execute("UPDATE t SET qty = qty + 1 WHERE id <= 100")
        db.execute("DELETE FROM t WHERE id > 290")
        db.execute("INSERT INTO t (id, name) SELECT g, 'new ' || g FROM generate_series(1001, 1050) g")
        t0 = wait_marker(p, fpdir, "apply.dest_commit")
        # inside the first blocked commit: the walsender must keep getting replies
        pids, replies = watch_replies(db, [app], t0 + (HOLD_MS - 1500) / 1000.0)
        assert pids[app] == {first[0]}, "apply walsender replaced or gone: %r" % pids
        assert len(replies[app]) >= 3, (
            "apply worker silent while its destination commit blocked: reply_time %r"
            % sorted(replies[app]))

        wait_equal(db.server, db.name, p, ["public.t"], timeout=180)
        assert walsender(db, app)[0] == first[0], "apply walsender replaced"
        check_no_timeout(db.server, log_start, p)
        assert p.log_contains("failpoint fired name=apply.dest_commit")
        # the engine read this connection's timeout and reports well inside it
        assert p.log_contains("wal_sender_timeout_ms=2000 status_interval_ms=666"), p.log_tail()
    finally:
        if p.running():
            p.stop(timeout=120)


def test_feedback_while_catchup_held(short_db, pipelines, monkeypatch, tmp_path):
    """A sync worker held in catch-up for 3.5 walsender timeouts, its stream open, while
    the apply worker waits for it without reading its own: both walsenders live on."""
    db = short_db
    p = pipelines()
    writer = None
    try:
        create_mixed_table(db, "t", 2000)
        publish(db, "pub", ["t"])
        p.init(db.conninfo, "pub", config={"sync": {"copy_batch_rows": "500"}})
        fpdir = tmp_path / "fp"
        log_start = len(server_log(db.server))
        # changes during the copy: the catch-up has something to stream (L > X)
        writer = BackgroundWriter(db, ["t"], (1, 2000), 10_000, per_txn=3, seed=7, pause=0.01)
        writer.start()
        writer.wait_commits(5, 30 * SCALE)
        # the copy held a second (mid_copy): by its syncwait the apply worker has read past
        # the copy's consistent point X, so the catch-up has changes to stream (a copy of
        # 2000 rows alone takes under 0.1 s, and a catch-up granted at X streams nothing)
        start_with_failpoint(p, monkeypatch, "sync.mid_copy=sleep(1000);"
                             "sync.catchup_streaming=sleep(%d)" % HOLD_MS, fpdir)
        t0 = wait_marker(p, fpdir, "sync.catchup_streaming")
        relid = db.relid("t")
        apply_app = "walrelay_%s_apply" % p.name
        sync_app = "walrelay_%s_s%d" % (p.name, relid)
        st = p.status()
        phase = [t.get("phase") for t in st.get("tables", []) if t.get("relid") == relid]
        assert phase == ["catchup"], "table not in catch-up while the sync worker is held: %r" % st
        pids, replies = watch_replies(db, [apply_app, sync_app],
                                      t0 + (HOLD_MS - 1500) / 1000.0)
        for app in (apply_app, sync_app):
            assert len(pids[app]) == 1 and None not in pids[app], (
                "walsender of %s replaced or gone: %r" % (app, pids))
            assert len(replies[app]) >= 3, (
                "%s silent while the catch-up was held: reply_time %r"
                % (app, sorted(replies[app])))

        p.wait_all_ready(["public.t"], timeout=180)
        writer.stop()
        writer = None
        wait_equal(db.server, db.name, p, ["public.t"], timeout=180)
        assert walsender(db, apply_app)[0] in pids[apply_app], "apply walsender replaced"
        check_no_timeout(db.server, log_start, p)
    finally:
        if writer is not None:
            writer.stop()
        if p.running():
            p.stop(timeout=120)
