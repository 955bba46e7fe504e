#!/usr/bin/python3
"""Benchmarks of the streaming sinks (issue 9): nats (JetStream) and http (webhook).

  drain:   a backlog of N changes (½ inserts, ¼ updates, ¼ deletes in 1000-row
           transactions, as bench/run.py's drain) drained by walrelay into `nats` (a local
           nats-server -js, file storage) and into `http` (a local receiver that only counts
           the events it gets), against `pg_recvlogical` (pgoutput, proto_version=1)
           draining the same backlog from a third slot. Every pipeline copied the (empty)
           table and stopped before the backlog was written, so all face the same WAL.
           Goal: >= 0.7x pg_recvlogical's rate for nats, >= 0.5x for http.
  latency: 2,000 changes/s (20-row INSERT transactions every 10 ms) for --seconds into each
           sink; the latency of a change is the time it reaches the consumer (a plain NATS
           subscriber on the stream's subjects; the HTTP receiver when the request arrives)
           minus its source commit time (the event's commit_time). Goal: p99 <= 50 ms.
           Runs with [batch] max_fill_ms = --fill-ms (default 10; walrelay's default is
           200, which bounds how long a change waits for its batch's commit).

The receiver, the subscriber, PostgreSQL, nats-server and walrelay share the machine.

Usage: bench/sinks.py [--changes 1000000] [--seconds 20] [--fill-ms 10] [--build build]
                      [--only drain|latency]
"""
import argparse
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))
from pgtmp import TmpPostgres, PGBIN  # noqa: E402
from run import Walrelay, slot_flushed  # noqa: E402
from natsserver import NatsServer  # noqa: E402

import psycopg  # noqa: E402


# -- consumers ------------------------------------------------------------------------------

class CountingReceiver:
    """A webhook receiver that counts events (and, with timing on, records each event's
    latency from its commit_time to the request's arrival)."""

    def __init__(self):
        self.events = 0
        self.requests = 0
        self.timing = False
        self.latencies = []
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, Nagle's algorithm
                # holds the body until the client's delayed ACK (40 ms per request)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.timing:
                    lat = [arrived - commit_ts(e) for e in json.loads(body)["events"]
                           if e["phase"] == "stream"]
                    n = None
                else:
                    lat = None
                    n = body.count(b'"key":')
                with outer.lock:
                    outer.requests += 1
                    if lat is not None:
                        outer.latencies += lat
                        outer.events += len(lat)
                    else:
                        outer.events += n
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        class S(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.server = S(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def commit_ts(ev):
    return datetime.strptime(ev["commit_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


class Subscriber(threading.Thread):
    """A core NATS subscription on a subject: records each message's latency."""

    def __init__(self, port, subject):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n'
                          b"SUB " + subject.encode() + b" 1\r\nPING\r\n")
        self.latencies = []
        self.stop_ev = threading.Event()
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise OSError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise OSError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def run(self):
        try:
            while not self.stop_ev.is_set():
                line = self._line()
                if line == b"PING":
                    self.sock.sendall(b"PONG\r\n")
                    continue
                parts = line.split()
                if not parts or parts[0] not in (b"MSG", b"HMSG"):
                    continue
                raw = self._take(int(parts[-1]))
                arrived = time.time()
                hlen = int(parts[-2]) if parts[0] == b"HMSG" else 0
                ev = json.loads(raw[hlen:])
                if ev["phase"] == "stream":
                    self.latencies.append(arrived - commit_ts(ev))
        except OSError:
            pass

    def close(self):
        self.stop_ev.set()
        self.sock.close()


# -- helpers --------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / TICK


class CpuSampler:
    """CPU seconds used during a drain by the apply worker, the slot's walsender and
    nats-server (sampled until each exits or the drain ends)."""

    def __init__(self, pg, w, slot, nats):
        self.pg, self.w, self.slot, self.nats = pg, w, slot, nats
        self.pids = {}
        self.last = {}
        self.nats0 = cpu_seconds(nats.proc.pid) if nats else None

    def sample(self):
        if "apply" not in self.pids:
            st = self.w.status()
            for x in (st or {}).get("workers") or []:
                if x["role"] == "apply" and x["pid"]:
                    self.pids["apply"] = x["pid"]
        if "walsender" not in self.pids:
            with psycopg.connect(self.pg.conninfo, autocommit=True) as c:
                r = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                              (self.slot,)).fetchone()
                if r and r[0]:
                    self.pids["walsender"] = r[0]
        for k, pid in self.pids.items():
            v = cpu_seconds(pid)
            if v is not None:
                self.last[k] = v
        if self.nats:
            self.last["nats-server"] = cpu_seconds(self.nats.proc.pid) - self.nats0

    def text(self):
        return "/".join("%.1f" % self.last.get(k, 0) for k in ("walsender", "apply", "nats-server"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def edit_conf(w, section, key, value):
    path = os.path.join(w.dir, "walrelay.conf")
    lines = open(path).read().splitlines()
    out, in_sec, done = [], False, False
    for line in lines:
        s = line.strip()
        if s.startswith("["):
            if in_sec and not done:
                out.append("%s = %s" % (key, value))
                done = True
            in_sec = s == "[%s]" % section
        elif in_sec and s.split("=")[0].strip() == key:
            line, done = "%s = %s" % (key, value), True
        out.append(line)
    if not done:
        if not in_sec:
            out.append("[%s]" % section)
        out.append("%s = %s" % (key, value))
    open(path, "w").write("\n".join(out) + "\n")


# -- the benchmarks -------------------------------------------------------------------------

def bench_drain(pg, nats, rcv, args, out):
    n = args.changes
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE bench_sink (id bigint PRIMARY KEY, v int, t text)")
        c.execute("CREATE PUBLICATION pub_sink FOR TABLE bench_sink")
    pipes = {"nats": Walrelay(args.build, pg, "pub_sink", "nats:" + nats.url, "drain_nats"),
             "http": Walrelay(args.build, pg, "pub_sink", "http:" + rcv.url, "drain_http")}
    try:
        for w in pipes.values():
            w.start()
            w.wait(w.all_ready, 300, "table ready")
            w.stop()
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            c.execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
            ins, upd = n // 2, n // 4
            dele = n - ins - upd
            for lo in range(1, ins + 1, 1000):
                c.execute("INSERT INTO bench_sink SELECT g, g, 'row-' || g FROM "
                          "generate_series(%s::bigint, %s::bigint) g", (lo, min(lo + 999, ins)))
            for lo in range(1, upd + 1, 1000):
                c.execute("UPDATE bench_sink SET v = v + 1 WHERE id BETWEEN %s AND %s",
                          (lo, min(lo + 999, upd)))
            for lo in range(1, dele + 1, 1000):
                c.execute("DELETE FROM bench_sink WHERE id BETWEEN %s AND %s",
                          (lo, min(lo + 999, dele)))
            endpos = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            c.execute("CHECKPOINT")
        recv = [f"{PGBIN}/pg_recvlogical", "-d", pg.conninfo, "--slot", "bench_recv", "--start",
                "--endpos", endpos, "-o", "proto_version=1", "-o", "publication_names=pub_sink",
                "--no-loop", "-f", "/dev/null"]
        t = time.monotonic()
        subprocess.run(recv, check=True)
        base = time.monotonic() - t
        out.append(f"\n### Drain of a {n:,}-change backlog into the sinks (½ inserts, ¼ updates, "
                   "¼ deletes; 1000-row transactions)\n")
        out.append("| what | seconds | changes/s | rate / pg_recvlogical's | goal | met | "
                   "delivered | peak RSS MB (supervisor/apply) | CPU s (walsender/apply/nats-server) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        out.append(f"| `pg_recvlogical` pgoutput proto 1 → /dev/null | {base:.2f} | {n / base:,.0f} "
                   "| 1.00 | | | | | |")
        goals = {"nats": 0.7, "http": 0.5}
        for dest, w in pipes.items():
            before_rcv = rcv.events
            w.peak = {}
            cs = CpuSampler(pg, w, "walrelay_" + w.name, nats if dest == "nats" else None)

            def done():
                cs.sample()
                return slot_flushed(pg, "walrelay_" + w.name, endpos)
            t0 = time.monotonic()
            w.start()
            w.wait(done, 3600, "slot confirmed past the backlog")
            dt = time.monotonic() - t0
            w.stop()
            if dest == "nats":
                with nats.client() as c:
                    got = c.stream_info("walrelay_" + w.name)["state"]["messages"]
                got -= 1  # the copy's opening truncate
            else:
                got = rcv.events - before_rcv
            rel = base / dt
            p = w.peak
            out.append(f"| walrelay → {dest} (start until confirmed_flush ≥ end) | {dt:.2f} | "
                       f"{n / dt:,.0f} | {rel:.2f} | ≥ {goals[dest]} | "
                       f"{'yes' if rel >= goals[dest] else 'NO'} | {got:,} | "
                       f"{p.get('supervisor', 0) / 1024:.0f}/{p.get('walrelay-apply', 0) / 1024:.0f} | "
                       f"{cs.text()} |")
            if got < n:
                raise RuntimeError(f"{dest}: delivered {got} of {n} changes")
            print(out[-1], flush=True)
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot('bench_recv')")
    finally:
        for w in pipes.values():
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()


def bench_latency(pg, nats, rcv, args, out):
    rate, per_tx = 2000, 20
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        c.execute("CREATE TABLE bench_lat (id bigserial PRIMARY KEY, v int, t text)")
        c.execute("CREATE PUBLICATION pub_lat FOR TABLE bench_lat")
    out.append(f"\n### Latency at {rate:,} changes/s for {args.seconds} s "
               f"({per_tx}-row transactions every {1000 * per_tx // rate} ms; "
               f"[batch] max_fill_ms = {args.fill_ms})\n")
    out.append("| sink | changes measured | p50 ms | p99 ms | max ms | goal p99 | met |")
    out.append("|---|---|---|---|---|---|---|")
    for dest in ("nats", "http"):
        spec = "nats:" + nats.url if dest == "nats" else "http:" + rcv.url
        w = Walrelay(args.build, pg, "pub_lat", spec, "lat_" + dest)
        edit_conf(w, "batch", "max_fill_ms", str(args.fill_ms))
        sub = None
        try:
            w.start()
            w.wait(w.all_ready, 300, "table ready")
            if dest == "nats":
                sub = Subscriber(nats.port, "walrelay.lat_nats.>")
                sub.start()
                lats = sub.latencies
            else:
                rcv.timing = True
                rcv.latencies = []
                lats = rcv.latencies
            time.sleep(1)
            with psycopg.connect(pg.conninfo, autocommit=True) as c:
                t_next = time.monotonic()
                t_end = t_next + args.seconds
                while t_next < t_end:
                    c.execute("INSERT INTO bench_lat (v, t) SELECT g, 'x' FROM generate_series(1, %s) g",
                              (per_tx,))
                    t_next += per_tx / rate
                    delay = t_next - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                endpos = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            w.wait(lambda: slot_flushed(pg, "walrelay_" + w.name, endpos), 300, "caught up")
            time.sleep(0.5)
            lats = list(sub.latencies if dest == "nats" else rcv.latencies)
            want = rate * args.seconds
            p50, p99, mx = pct(lats, 50) * 1000, pct(lats, 99) * 1000, max(lats) * 1000
            out.append(f"| {dest} | {len(lats):,} of {want:,} | {p50:.1f} | {p99:.1f} | {mx:.1f} | "
                       f"≤ 50 | {'yes' if p99 <= 50 else 'NO'} |")
            print(out[-1], flush=True)
            if len(lats) < want:
                raise RuntimeError(f"{dest}: measured {len(lats)} of {want} changes")
        finally:
            rcv.timing = False
            if sub:
                sub.close()
            w.stop() if w.proc and w.proc.poll() is None else None
            w.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--fill-ms", type=int, default=10)
    ap.add_argument("--build", default="build")
    ap.add_argument("--only", choices=["drain", "latency"])
    args = ap.parse_args()
    if shutil.which("nats-server") is None:
        sys.exit("bench/sinks.py: nats-server is not installed (scripts/setup.sh)")
    pg = TmpPostgres()
    nats = NatsServer().start()
    rcv = CountingReceiver()
    load = os.getloadavg()
    out = [f"## {time.strftime('%Y-%m-%d')} — `bench/sinks.py {' '.join(sys.argv[1:])}`",
           f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.1f} at the start; "
           "PostgreSQL 15 (fsync on), nats-server -js (file store), the receiver and walrelay "
           "on the same machine"]
    try:
        if args.only in (None, "drain"):
            bench_drain(pg, nats, rcv, args, out)
        if args.only in (None, "latency"):
            bench_latency(pg, nats, rcv, args, out)
    finally:
        rcv.close()
        nats.cleanup()
        pg.stop()
    print("\n===== markdown for bench/RESULTS.md =====\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
