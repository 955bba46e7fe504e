"""The operating surface around a pipeline (issue 10): systemd's notification protocol
(READY=1 only once the apply worker streams, WATCHDOG=1 at the configured interval,
STATUS=, RELOADING=1, STOPPING=1) on a datagram socket the test binds; JSON logs of a
full run, every line parsed, and no password anywhere; the deploy/ files: yamllint,
promtool, the Kubernetes ConfigMaps' walrelay.conf accepted by `walrelay check`, and the
alert rules and every Grafana dashboard query evaluated by a real Prometheus scraping a
pipeline with an errored table.
"""

import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import threading
import time

import pytest
import yaml

from pgserver import free_port
from pipeline import SCALE, WaitTimeout, deadline, edit_ini, wait_equal
from prom import METRICS, Prometheus, http_get, parse, value
from workload import create_mixed_table, publish

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


class NotifyListener(threading.Thread):
    """A datagram socket at path, as systemd's $NOTIFY_SOCKET: keeps (time, field, value)
    for every line of every message."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.msgs = []
        self.lock = threading.Lock()
        self.stopped = False

    def run(self):
        while not self.stopped:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.lock:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if "=" in line:
                        k, v = line.split("=", 1)
                        self.msgs.append((now, k, v))

    def stop(self):
        self.stopped = True
        self.join(5)
        self.sock.close()

    def seen(self, key, value=None, after=0.0):
        """Times of key(=value) messages received after `after`."""
        with self.lock:
            return [t for t, k, v in self.msgs
                    if k == key and (value is None or v == value) and t > after]

    def values(self, key):
        with self.lock:
            return [v for _, k, v in self.msgs if k == key]


def test_sd_notify(db, pipelines, monkeypatch, tmp_path):
    """READY=1 only after the apply worker streams (held back by a failpoint before
    START_REPLICATION), WATCHDOG=1 every WATCHDOG_USEC/2, STATUS= with the phases,
    RELOADING=1 then READY=1 on reload, STOPPING=1 on stop."""
    create_mixed_table(db, "t", 500)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    listener = NotifyListener(tmp_path / "notify.sock")
    listener.start()
    fpdir = tmp_path / "fp"
    fpdir.mkdir()
    watchdog_usec = 1000000
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    monkeypatch.setenv("WALRELAY_FAILPOINTS", "apply.before_streaming=sleep(4000)")
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        started = time.monotonic()
        p.start()
        marker = fpdir / "apply.before_streaming"
        p.wait_until(lambda: marker.exists(), 60, "the apply worker at apply.before_streaming")
        at_marker = time.monotonic()
        assert not listener.seen("READY"), "READY=1 before the apply worker streams"
        ready = p.wait_until(lambda: listener.seen("READY", "1"), 60, "READY=1")[0]
        # the failpoint held the apply worker for 4 s before START_REPLICATION
        assert ready - at_marker >= 3.0, (ready - at_marker)
        assert p.log_contains("the apply worker streams", since_start=True)
        assert p.log_contains("apply worker started slot=", since_start=True)
        p.wait_all_ready(["public.t"])
        p.wait_until(lambda: any(v.startswith("running; apply streaming; 1 table: 1 ready")
                                 for v in listener.values("STATUS")), 30,
                     "STATUS= with the table ready")

        # the watchdog: every WATCHDOG_USEC / 2, from the start on
        p.wait_until(lambda: len(listener.seen("WATCHDOG", "1")) >= 12, 60, "12 watchdog pings")
        pings = listener.seen("WATCHDOG", "1")
        assert pings[0] - started < 10 * SCALE, "first ping %.1fs after start" % (pings[0] - started)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        half = watchdog_usec / 2e6
        assert 0.6 * half <= statistics.median(gaps) <= 1.5 * half, gaps
        assert max(gaps) < (watchdog_usec / 1e6) * SCALE, "a gap longer than WatchdogSec: %s" % gaps

        # reload: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again
        before = time.monotonic()
        r = p.cmd("reload", p.dir)
        assert r.rc == 0, r
        p.wait_until(lambda: listener.seen("READY", "1", after=before), 30, "READY=1 after reload")
        reloading = listener.seen("RELOADING", "1", after=before)
        assert reloading and reloading[0] <= listener.seen("READY", "1", after=before)[0]
        assert listener.seen("MONOTONIC_USEC", after=before)

        # stop: STOPPING=1
        before = time.monotonic()
        assert p.stop() == 0
        assert listener.seen("STOPPING", "1", after=before), listener.msgs[-10:]
    finally:
        listener.stop()


def test_notify_without_socket_is_quiet(db, pipelines, monkeypatch):
    """Without $NOTIFY_SOCKET nothing is sent and nothing complains."""
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.t"])
    assert p.stop() == 0
    assert not p.log_contains("service manager"), p.log_tail()


def test_json_logs_and_no_password(db, pipelines):
    """[log] format = json: every line of a full run (copy, stream, kill -9 of the apply
    worker, reload with a changed conninfo, stop) is one JSON object with ts, level, msg,
    pipeline and worker; the conninfo's password appears in no log line, no status and no
    metrics."""
    secret = "Pw-s3cret-%d" % os.getpid()
    secret2 = "Other-s3cret-%d" % os.getpid()
    create_mixed_table(db, "t", 2000)
    publish(db, "pub", ["t"])
    p = pipelines()
    port = free_port()
    p.init(db.conninfo + " password=" + secret, "pub",
           config={"log": {"format": "json", "level": "debug"},
                   "metrics": {"listen": "127.0.0.1:%d" % port, "lag_interval_ms": "1000"},
                   "sync": {"copy_batch_rows": "500"}})
    p.start()
    p.wait_all_ready(["public.t"])
    db.execute("UPDATE t SET qty = qty + 1 WHERE id <= 300")
    p.kill_worker(p.worker("apply")["pid"])
    db.execute("DELETE FROM t WHERE id > 1900")
    wait_equal(db.server, db.name, p, ["public.t"])
    outputs = []
    for args in (("status", p.dir), ("status", p.dir, "--json"), ("metrics", p.dir)):
        r = p.cmd(*args)
        assert r.rc == 0, r
        outputs.append(r.text)
    for path in ("/metrics", "/readyz", "/healthz"):
        outputs.append(http_get("http://127.0.0.1:%d%s" % (port, path))[1])
    # a changed conninfo needs a restart: reported without its value
    edit_ini(p.conf_path, {"source": {"conninfo": db.conninfo + " password=" + secret2}})
    r = p.cmd("reload", p.dir)
    assert r.rc == 0 and "[source] conninfo" in r.out, r
    outputs.append(r.text)
    assert p.stop() == 0

    lines = p.log_text(since_start=True).splitlines()
    assert len(lines) > 50, lines
    workers = set()
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise AssertionError("log line %d is not JSON (%s): %r" % (i + 1, e, line))
        assert isinstance(obj, dict), line
        for k, ty in (("ts", str), ("level", str), ("msg", str), ("pipeline", str),
                      ("worker", str)):
            assert isinstance(obj.get(k), ty), "line %d: %s missing: %r" % (i + 1, k, line)
        assert obj["level"] in ("debug", "info", "warn", "error"), line
        assert obj["pipeline"] == p.name, line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["ts"]), line
        workers.add(obj["worker"].split("-")[0])
    assert {"supervisor", "apply", "sync"} <= workers, workers
    text = "\n".join(lines)
    # fields became members: the kill -9 shows as a warning with its pid and signal
    killed = [json.loads(l) for l in lines if "WORKER KILLED BY SIGNAL" in l]
    assert killed and killed[0]["signal"] == 9 and isinstance(killed[0]["pid"], int), killed
    assert killed[0]["field_worker"] == "apply", killed[0]
    for where, out in [("the log", text)] + [("output %d" % i, o) for i, o in enumerate(outputs)]:
        assert secret not in out and secret2 not in out, "a password in %s" % where


def test_deploy_files(bindir, tmp_path):
    """yamllint --strict on every YAML file of deploy/; systemd-analyze verify on the unit;
    promtool on the alert rules and the Prometheus configuration; the Grafana dashboard is
    JSON whose queries name only metrics walrelay serves; the Kubernetes objects carry the
    probes, annotations, grace period and volumes docs/operations.md describes."""
    # the unit, with ExecStart pointing at the binary under test (verify checks it exists)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    with open(DEPLOY / "walrelay@.service") as f:
        unit = f.read()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "NotifyAccess=main" in unit
    (unit_dir / "walrelay@.service").write_text(
        unit.replace("/usr/bin/walrelay", os.path.join(bindir, "walrelay")))
    os.symlink("walrelay@.service", unit_dir / "walrelay@orders.service")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(unit_dir / "walrelay@orders.service")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    r = subprocess.run(["yamllint", "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(str(f.relative_to(DEPLOY)) for f in DEPLOY.rglob("*")
                   if f.suffix in (".yaml", ".yml"))
    assert {"kubernetes/walrelay-orders.yaml", "kubernetes/walrelay-orders-sqlite.yaml",
            "compose/compose.yaml", "prometheus/walrelay-alerts.yml"} <= set(files), files
    r = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus/walrelay-alerts.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["promtool", "check", "config", "prometheus.yml"],
                       cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(DEPLOY / "grafana/walrelay-dashboard.json") as f:
        dash = json.load(f)
    exprs = [t["expr"] for pnl in dash["panels"] for t in pnl.get("targets", [])]
    assert len(exprs) >= 20, exprs
    used = set()
    for e in exprs:
        for m in re.findall(r"walrelay_[a-z_]+", e):
            used.add(re.sub(r"_(bucket|sum|count)$", "", m))
    assert used <= set(METRICS), used - set(METRICS)
    assert set(METRICS) - used <= {"walrelay_build_info", "walrelay_start_time_seconds"}, \
        set(METRICS) - used
    # the Kubernetes objects: the parts a deployment relies on
    for name, want_pvc in (("walrelay-orders.yaml", False), ("walrelay-orders-sqlite.yaml", True)):
        with open(DEPLOY / "kubernetes" / name) as f:
            docs = {d["kind"]: d for d in yaml.safe_load_all(f) if d}
        sts = docs["StatefulSet"]["spec"]
        pod = sts["template"]["spec"]
        c = pod["containers"][0]
        assert sts["replicas"] == 1, name
        assert pod["terminationGracePeriodSeconds"] >= 60, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert {"name": "PGPASSFILE", "value": "/run/walrelay/pgpass"} in c["env"], name
        ann = sts["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9187"
        assert bool(sts.get("volumeClaimTemplates")) == want_pvc, name
        assert "password=" not in docs["ConfigMap"]["data"]["walrelay.conf"], name
        assert docs["Secret"]["stringData"]["pgpass"].count(":") == 4, name


@pytest.mark.parametrize("manifest", ["walrelay-orders.yaml", "walrelay-orders-sqlite.yaml"])
def test_kubernetes_config_is_valid(db, pipelines, state_db, manifest):
    """The walrelay.conf of each Kubernetes ConfigMap, pointed at the test's servers, passes
    `walrelay check` (its keys and values are the ones walrelay accepts)."""
    create_mixed_table(db, "t", 10)
    publish(db, "orders_pub", ["t"])
    with open(DEPLOY / "kubernetes" / manifest) as f:
        conf = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "ConfigMap")
    text = conf["data"]["walrelay.conf"]
    p = pipelines(name="orders")
    os.makedirs(p.dir)
    with open(p.conf_path, "w") as f:
        f.write(text)
    os.chmod(p.conf_path, 0o600)
    edits = {"source": {"conninfo": db.conninfo}}
    if "backend = postgres" in text:
        edits["state"] = {"conninfo": state_db.conninfo}
    edit_ini(p.conf_path, edits)
    r = p.cmd("check", p.dir)
    assert r.rc == 0, r


def test_alert_rules_and_dashboard_on_prometheus(db, pipelines, tmp_path):
    """A Prometheus loading deploy/prometheus/walrelay-alerts.yml scrapes a pipeline with
    an errored table: every rule evaluates (health ok), WalrelayTableErrored becomes
    pending for that pipeline, WalrelayDown does not, and every Grafana dashboard query
    runs and the main ones return data."""
    create_mixed_table(db, "t", 200)
    db.execute("CREATE TABLE bad (id int, v text)")
    db.execute("ALTER TABLE bad REPLICA IDENTITY NOTHING")
    publish(db, "pub", ["t", "bad"])
    p = pipelines()
    port = free_port()
    p.init(db.conninfo, "pub", config={"metrics": {"listen": "127.0.0.1:%d" % port,
                                                   "lag_interval_ms": "1000"}})
    p.start()
    p.wait_until(lambda: p.tables().get("public.t", {}).get("phase") == "ready"
                 and p.tables().get("public.bad", {}).get("phase") == "errored", 120,
                 "t ready and bad errored")
    p.reached_ready = True
    prom = Prometheus(tmp_path / "prometheus", "127.0.0.1:%d" % port,
                      rule_files=[DEPLOY / "prometheus/walrelay-alerts.yml"]).start()
    try:
        def alerts():
            return {a["labels"]["alertname"]: a for a in prom.api("alerts")["alerts"]
                    if a["labels"].get("pipeline") in (p.name, None)}

        a = prom.wait(lambda: alerts().get("WalrelayTableErrored"), 90,
                      "WalrelayTableErrored pending")
        assert a["state"] in ("pending", "firing") and a["labels"]["pipeline"] == p.name, a
        assert "WalrelayDown" not in alerts(), alerts()
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == 8, rules
        for r in rules:
            assert r["health"] == "ok", r

        with open(DEPLOY / "grafana/walrelay-dashboard.json") as f:
            dash = json.load(f)
        prom.wait(lambda: prom.scalar('walrelay_lag_bytes{pipeline="%s"}' % p.name) is not None,
                  60, "the lag scraped")
        # changes while Prometheus watches: rates are not empty
        ids = iter(range(1000, 100000))

        def events_rate():
            db.execute("INSERT INTO t (id, name) VALUES (%s, 'x')", [next(ids)])
            return prom.query('rate(walrelay_events_total{pipeline="%s"}[1m]) > 0' % p.name)

        prom.wait(events_rate, 60, "a rate of events")
        empty = []
        for pnl in dash["panels"]:
            for t in pnl["targets"]:
                expr = t["expr"].replace("$pipeline", p.name).replace("$__rate_interval", "1m")
                if not prom.query(expr):
                    empty.append((pnl["title"], expr))
        # every query ran; those that may be empty here: no copy under way, no restart yet
        allowed = {"Copy duration", "Worker restarts", "Errors by kind",
                   "Batch duration (first write to commit)", "Destination commit duration",
                   "Rows copied per second", "Transactions per second",
                   "Batches committed per second", "Status updates sent"}
        assert {t for t, _ in empty} <= allowed, empty
    finally:
        prom.stop()
