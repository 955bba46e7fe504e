"""The operating surface from the tests' side: HTTP requests to walrelay's [metrics]
listener, the Prometheus text exposition parsed with prometheus_client (Debian's
python3-prometheus-client), and a real Prometheus server (Debian's prometheus) started on
a free loopback port that scrapes a pipeline.

NOTES: used by test_metrics.py and test_operations.py. A Prometheus is started with its
own config and TSDB directory in the test's tmp dir, a 1 s scrape interval, and stopped
(SIGTERM, SIGKILL after 20 s) by the fixture; its log is shown when a wait fails. Waits
poll real state until a deadline (pipeline.deadline); nothing sleeps and hopes.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from pgserver import free_port
from pipeline import SCALE, WaitTimeout, deadline

PROMETHEUS = os.environ.get("WALRELAY_PROMETHEUS", "/usr/bin/prometheus")

# Every metric docs/operations.md lists, with its type (issue 10).
METRICS = {
    "walrelay_build_info": "gauge",
    "walrelay_start_time_seconds": "gauge",
    "walrelay_up": "gauge",
    "walrelay_pipeline_state": "gauge",
    "walrelay_lag_bytes": "gauge",
    "walrelay_lag_seconds": "gauge",
    "walrelay_slot_retained_bytes": "gauge",
    "walrelay_events_total": "counter",
    "walrelay_transactions_total": "counter",
    "walrelay_bytes_received_total": "counter",
    "walrelay_batches_total": "counter",
    "walrelay_batch_seconds": "histogram",
    "walrelay_destination_commit_seconds": "histogram",
    "walrelay_copy_rows_total": "counter",
    "walrelay_copy_seconds": "gauge",
    "walrelay_tables": "gauge",
    "walrelay_worker_restarts_total": "counter",
    "walrelay_errors_total": "counter",
    "walrelay_status_updates_total": "counter",
    "walrelay_resident_memory_bytes": "gauge",
}


def http_get(url, timeout=10):
    """(status, body text, headers) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout * SCALE) as r:
            return r.status, r.read().decode("utf-8"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)


def parse(text):
    """{family name: Metric} from an exposition (names without _total, as the parser gives
    them for counters, are mapped back to the exposed name)."""
    fams = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name
        if fam.type == "counter" and not name.endswith("_total"):
            name += "_total"
        fams[name] = fam
    return fams


def samples(fams, name, **labels):
    """The samples of family name whose labels include labels (sample name, labels, value)."""
    fam = fams.get(name)
    if fam is None:
        return []
    return [s for s in fam.samples
            if all(s.labels.get(k) == v for k, v in labels.items())]


def value(fams, name, sample=None, **labels):
    """The sum of the matching samples' values (sample: the sample name, e.g. "..._count";
    default: the family's own name, or name_total for a counter)."""
    want = sample or name
    return sum(s.value for s in samples(fams, name, **labels) if s.name == want)


def counter_samples(fams):
    """{(sample name, sorted labels): value} of every counter and histogram sample."""
    out = {}
    for fam in fams.values():
        if fam.type not in ("counter", "histogram"):
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def write_prometheus_config(path, target, rule_files=()):
    with open(path, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "  evaluation_interval: 1s\n")
        if rule_files:
            f.write("rule_files:\n")
            for r in rule_files:
                f.write("  - %s\n" % json.dumps(str(r)))
        f.write("scrape_configs:\n  - job_name: walrelay\n    static_configs:\n"
                "      - targets: [%s]\n" % json.dumps(target))


class Prometheus:
    """A Prometheus server in dir scraping target ("HOST:PORT") every second."""

    def __init__(self, dir, target, rule_files=()):
        self.dir = str(dir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.config = os.path.join(self.dir, "prometheus.yml")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        write_prometheus_config(self.config, target, rule_files)
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + self.config,
             "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        end = deadline(60)
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited with %s%s" % (self.proc.returncode,
                                                                      self.log_tail()))
            try:
                if http_get(self.url + "/-/ready", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > end:
                raise AssertionError("prometheus not ready within 60s%s" % self.log_tail())
            time.sleep(0.2)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
            self.proc = None

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n--- %s (last %d lines) ---\n%s" % (self.log_path, n, "\n".join(lines[-n:]))

    def api(self, path, **params):
        url = "%s/api/v1/%s?%s" % (self.url, path, urllib.parse.urlencode(params))
        status, body, _ = http_get(url)
        assert status == 200, "prometheus %s -> %s: %s" % (url, status, body)
        data = json.loads(body)
        assert data.get("status") == "success", data
        return data["data"]

    def query(self, expr):
        """Instant query: [(labels, float value)]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def scalar(self, expr):
        """The single value of an instant query, or None when it has no result."""
        res = self.query(expr)
        assert len(res) <= 1, "%s gave %d series: %r" % (expr, len(res), res)
        return res[0][1] if res else None

    def wait(self, pred, timeout, what, interval=0.5):
        """Polls pred() until truthy; on timeout shows what and the last exception."""
        end = deadline(timeout)
        last = None
        while True:
            try:
                v = pred()
                if v:
                    return v
            except WaitTimeout:
                raise
            except (AssertionError, OSError, ValueError, KeyError) as e:
                last = e
            if self.proc is None or self.proc.poll() is not None:
                raise WaitTimeout("prometheus exited while waiting for %s%s" % (what,
                                                                             self.log_tail()))
            if time.monotonic() > end:
                raise WaitTimeout("timed out after %.0fs waiting for %s%s%s" % (
                    timeout * SCALE, what, "\nlast error: %s" % last if last else "",
                    self.log_tail()))
            time.sleep(interval)
