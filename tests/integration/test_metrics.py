"""Metrics (issue 10): a real Prometheus scraping a running pipeline, the exposition parsed
with prometheus_client, counters across a kill -9 of the apply worker, /healthz and
/readyz through a copy, an errored table and its retry, and `walrelay metrics DIR`.
"""

import os

import pytest

from pgserver import free_port
from pipeline import WaitTimeout, wait_equal
from prom import METRICS, Prometheus, counter_samples, http_get, parse, samples, value
from workload import create_mixed_table, publish


@pytest.fixture
def prometheus(tmp_path):
    """start(target) -> a Prometheus scraping target every second; stopped afterwards."""
    made = []

    def start(target, rule_files=()):
        p = Prometheus(tmp_path / ("prometheus%d" % len(made)), target, rule_files).start()
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop()


def metrics_pipeline(db, pipelines, tables, rows=500, config=None):
    """Tables in publication pub (tables=None: the caller makes both) and a pipeline
    serving [metrics] listen on a free port."""
    if tables is not None:
        for t in tables:
            create_mixed_table(db, t, rows)
        publish(db, "pub", tables)
    p = pipelines()
    port = free_port()
    conf = {"metrics": {"listen": "127.0.0.1:%d" % port, "lag_interval_ms": "1000"},
            "sync": {"copy_batch_rows": "200"}}
    for k, v in (config or {}).items():
        conf.setdefault(k, {}).update(v)
    p.init(db.conninfo, "pub", config=conf)
    p.metrics_url = "http://127.0.0.1:%d" % port
    p.metrics_target = "127.0.0.1:%d" % port
    return p


def scrape(p):
    status, body, headers = http_get(p.metrics_url + "/metrics")
    assert status == 200, (status, body)
    assert headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), headers
    return parse(body)


def write_changes(db, table, first_id):
    """300 inserts, 100 updates, 50 deletes in 5 transactions: 450 changes."""
    with db.connect(autocommit=False) as c:
        for k in range(3):
            c.execute("INSERT INTO %s (id, name, qty) SELECT g, 'new ' || g, g FROM "
                      "generate_series(%%s::bigint, %%s::bigint) g" % table,
                      [first_id + 100 * k, first_id + 100 * k + 99])
            c.commit()
        c.execute("UPDATE %s SET qty = qty + 1 WHERE id BETWEEN %%s AND %%s" % table,
                  [first_id, first_id + 99])
        c.commit()
        c.execute("DELETE FROM %s WHERE id BETWEEN %%s AND %%s" % table,
                  [first_id + 200, first_id + 249])
        c.commit()
    return {"insert": 300, "update": 100, "delete": 50}


def test_prometheus_sees_events_and_lag(db, pipelines, prometheus):
    """A real Prometheus scrapes the pipeline: walrelay_events_total grows by exactly the
    changes made (per operation too) and walrelay_lag_bytes falls back near zero."""
    p = metrics_pipeline(db, pipelines, ["t"])
    p.start()
    p.wait_all_ready(["public.t"])
    prom = prometheus(p.metrics_target)
    sel = '{pipeline="%s"}' % p.name
    prom.wait(lambda: prom.scalar("walrelay_up" + sel) == 1, 60,
              "Prometheus scraped walrelay_up == 1")
    # the copy makes no events; what Prometheus holds matches the listener
    before = value(scrape(p), "walrelay_events_total")
    prom.wait(lambda: prom.scalar("sum(walrelay_events_total%s)" % sel) == before, 30,
              "Prometheus has events_total == %d" % before)

    made = write_changes(db, "t", 100000)
    total = sum(made.values())
    p.wait_flushed(db.current_wal_lsn())
    prom.wait(lambda: prom.scalar("sum(walrelay_events_total%s)" % sel) == before + total, 60,
              "Prometheus sees events_total grow by %d" % total)
    by_op = {m["op"]: v for m, v in prom.query("sum by (op) (walrelay_events_total%s)" % sel)}
    for op, n in made.items():
        assert by_op.get(op) == n, (op, by_op)
    assert by_op.get("truncate") == 0, by_op
    # and it stays exactly there (nothing counted twice later)
    fams = scrape(p)
    assert value(fams, "walrelay_events_total") == before + total
    assert value(fams, "walrelay_events_total", table="public.t", op="insert") == 300
    assert value(fams, "walrelay_transactions_total", role="apply") >= 5
    assert value(fams, "walrelay_batches_total", role="apply") >= 1
    assert value(fams, "walrelay_batch_seconds", "walrelay_batch_seconds_count", role="apply") \
        == value(fams, "walrelay_batches_total", role="apply")

    # the lag falls back near zero once the pipeline has caught up
    lagsel = 'walrelay_lag_bytes{pipeline="%s"}' % p.name
    prom.wait(lambda: prom.scalar(lagsel) is not None and prom.scalar(lagsel) <= 65536, 60,
              "Prometheus sees walrelay_lag_bytes <= 64 KiB")
    assert prom.scalar("max_over_time(%s[5m])" % lagsel) >= prom.scalar(lagsel)
    prom.wait(lambda: prom.scalar('walrelay_lag_seconds{pipeline="%s"}' % p.name) == 0, 60,
              "walrelay_lag_seconds back to 0")
    retained = prom.query('walrelay_slot_retained_bytes{pipeline="%s"}' % p.name)
    assert [m["slot"] for m, _ in retained] == ["walrelay_%s" % p.name], retained
    wait_equal(db.server, db.name, p, ["public.t"])


def test_exposition_has_every_metric(db, pipelines, bindir):
    """Every metric docs/operations.md lists is present with its TYPE and HELP, parses with
    prometheus_client, escapes label values, and `walrelay metrics DIR` prints the same."""
    create_mixed_table(db, "t", 300)
    db.execute('CREATE TABLE "we""ird\\name" (id int PRIMARY KEY, v text)')
    db.execute('INSERT INTO "we""ird\\name" SELECT g, g::text FROM generate_series(1, 50) g')
    publish(db, "pub", ["t", '"we""ird\\name"'])
    p = metrics_pipeline(db, pipelines, None)
    p.start()
    p.wait_all_ready(["public.t", 'public.we"ird\\name'])
    db.execute('UPDATE "we""ird\\name" SET v = v || \'!\' WHERE id <= 7')
    p.wait_flushed(db.current_wal_lsn())

    def complete():
        fams = scrape(p)
        return fams if samples(fams, "walrelay_lag_bytes") and value(
            fams, "walrelay_events_total", table='public.we"ird\\name', op="update") == 7 \
            else None

    fams = p.wait_until(complete, 60, "the lag is known and the 7 updates are counted")
    for name, typ in METRICS.items():
        assert name in fams, "%s missing from /metrics (have %s)" % (name, sorted(fams))
        assert fams[name].type == typ, (name, fams[name].type, typ)
        assert fams[name].documentation, "%s has no HELP" % name
        assert fams[name].samples, "%s has no sample" % name
        for s in fams[name].samples:
            assert s.labels.get("pipeline") == p.name, (name, s)
    assert value(fams, "walrelay_copy_rows_total", table="public.t") == 300
    assert value(fams, "walrelay_copy_rows_total", table='public.we"ird\\name') == 50
    assert value(fams, "walrelay_tables", phase="ready") == 2
    assert value(fams, "walrelay_up") == 1
    assert value(fams, "walrelay_pipeline_state", state="running") == 1
    assert value(fams, "walrelay_resident_memory_bytes", role="supervisor") > 1 << 20
    assert value(fams, "walrelay_resident_memory_bytes", role="apply") > 1 << 20
    assert value(fams, "walrelay_copy_seconds", table="public.t") > 0
    assert value(fams, "walrelay_bytes_received_total", role="sync") > 0
    assert value(fams, "walrelay_bytes_received_total", role="apply") > 0
    # a histogram's buckets are cumulative and end in +Inf == _count
    for s in samples(fams, "walrelay_destination_commit_seconds", role="sync"):
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf":
            assert s.value == value(fams, "walrelay_destination_commit_seconds",
                                    "walrelay_destination_commit_seconds_count", role="sync")

    # the same text over the control socket
    r = p.cmd("metrics", p.dir)
    assert r.rc == 0, r
    cli = parse(r.out)
    assert set(cli) == set(fams), set(cli) ^ set(fams)
    assert value(cli, "walrelay_events_total") == value(fams, "walrelay_events_total")
    # other paths and methods
    assert http_get(p.metrics_url + "/healthz")[:2] == (200, "ok\n")
    assert http_get(p.metrics_url + "/nope")[0] == 404
    r = p.cmd("metrics")
    assert r.rc == 2 and "usage" in r.err, r
    assert p.stop() == 0
    r = p.cmd("metrics", p.dir)
    assert r.rc == 1 and "not running" in r.err, r


def test_counters_survive_apply_kill(db, pipelines):
    """No counter (nor histogram sample) goes backwards across a kill -9 of the apply
    worker; events counted after its restart are exact; the restart and the failure are
    counted."""
    p = metrics_pipeline(db, pipelines, ["t"])
    p.start()
    p.wait_all_ready(["public.t"])
    first = write_changes(db, "t", 100000)
    p.wait_flushed(db.current_wal_lsn())
    p.wait_until(lambda: value(scrape(p), "walrelay_events_total") == sum(first.values()), 30,
                 "the first changes counted")
    before = counter_samples(scrape(p))
    restarts = before[("walrelay_worker_restarts_total",
                       (("pipeline", p.name), ("role", "apply")))]

    old = p.worker("apply")["pid"]
    p.kill_worker(old)
    p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, 0, old)
                 and value(scrape(p), "walrelay_up") == 1, 60,
                 "a new apply worker that streams")
    mid = counter_samples(scrape(p))
    second = write_changes(db, "t", 200000)
    p.wait_flushed(db.current_wal_lsn())
    want = sum(first.values()) + sum(second.values())
    p.wait_until(lambda: value(scrape(p), "walrelay_events_total") == want, 60,
                 "events_total == %d after the restart" % want)
    after = counter_samples(scrape(p))
    for snap in (mid, after):
        for key, v in before.items():
            assert key in snap, "%s disappeared after the kill" % (key,)
            assert snap[key] >= v, "%s went backwards: %s -> %s" % (key, v, snap[key])
    assert after[("walrelay_worker_restarts_total",
                  (("pipeline", p.name), ("role", "apply")))] == restarts + 1
    assert after[("walrelay_errors_total", (("kind", "worker_exit"), ("pipeline", p.name)))] >= 1
    wait_equal(db.server, db.name, p, ["public.t"])


def test_healthz_and_readyz(db, pipelines, monkeypatch, tmp_path):
    """/readyz: 503 while a table is copied (the body names it), 200 when all are ready,
    503 with an errored table, 200 again after its retry; /healthz 200 throughout."""
    p = metrics_pipeline(db, pipelines, ["t"], rows=3000,
                         config={"pipeline": {"publication_refresh_ms": "0"}})
    fpdir = tmp_path / "fp"
    fpdir.mkdir()
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "sync.mid_copy=sleep(400)")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    p.start()
    monkeypatch.delenv("WALRELAY_FAILPOINTS")
    p.wait_until(lambda: os.path.exists(fpdir / "sync.mid_copy"), 60, "the copy under way")

    def copying_503():
        status, body, _ = http_get(p.metrics_url + "/readyz")
        if p.tables()["public.t"]["phase"] == "ready":
            raise WaitTimeout("the copy ended before /readyz was seen during it")
        return status == 503 and "table public.t is in phase" in body and (status, body)

    status, body = p.wait_until(copying_503, 30, "/readyz 503 during the copy")
    assert body.startswith("not ready:\n"), body
    assert http_get(p.metrics_url + "/healthz")[:2] == (200, "ok\n")
    p.wait_all_ready(["public.t"])
    p.wait_until(lambda: http_get(p.metrics_url + "/readyz")[:2] == (200, "ready\n"), 30,
                 "/readyz 200 when all tables are ready")

    # a table that cannot be replicated joins the publication: errored
    db.execute("CREATE TABLE bad (id int, v text)")
    db.execute("ALTER TABLE bad REPLICA IDENTITY NOTHING")
    db.execute("INSERT INTO bad VALUES (1, 'x')")
    db.execute("ALTER PUBLICATION pub ADD TABLE bad")
    r = p.cmd("reload", p.dir)
    assert r.rc == 0, r
    p.wait_until(lambda: (p.tables().get("public.bad") or {}).get("phase") == "errored", 60,
                 "table bad errored")
    status, body, _ = http_get(p.metrics_url + "/readyz")
    assert status == 503 and "table public.bad is errored (unsupported)" in body, (status, body)
    fams = scrape(p)
    assert value(fams, "walrelay_tables", phase="errored") == 1
    assert value(fams, "walrelay_errors_total", kind="unsupported") >= 1
    assert value(fams, "walrelay_up") == 1  # the pipeline itself still replicates
    assert http_get(p.metrics_url + "/healthz")[0] == 200

    db.execute("ALTER TABLE bad REPLICA IDENTITY FULL")
    r = p.cmd("retry", p.dir, "bad")
    assert r.rc == 0, r
    p.wait_all_ready(["public.t", "public.bad"])
    p.wait_until(lambda: http_get(p.metrics_url + "/readyz")[:2] == (200, "ready\n"), 30,
                 "/readyz 200 after the retry")
    # paused: not ready, and says why
    r = p.cmd("pause", p.dir)
    assert r.rc == 0, r
    status, body, _ = http_get(p.metrics_url + "/readyz")
    assert status == 503 and "paused" in body, (status, body)
    r = p.cmd("resume", p.dir)
    assert r.rc == 0, r
    p.wait_until(lambda: http_get(p.metrics_url + "/readyz")[0] == 200, 60,
                 "/readyz 200 after resume")
