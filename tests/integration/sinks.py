"""Helpers of the streaming-sink tests (test_sinks_*.py): what the source changed, read
independently of walrelay, and what a sink received, in the event encoding of
docs/events.md.

NOTES:
  ChangeLog      a pgoutput slot of the test's own, created before the pipeline starts:
                 pg_logical_slot_peek_binary_changes decodes the publication the way
                 walrelay's slot does, so each change gets the key walrelay must give it
                 ("<commit LSN 16 hex>:<ordinal 10 digits>", ordinal = position of the
                 change in its transaction, a TRUNCATE counting once per table) with its
                 table and op. The expected set of changes, not a re-implementation of
                 walrelay: the same server decodes, the test only counts.
  read_jsonl     the events of a jsonl file (every line must parse; a torn last line is
                 a failure, since the file holds only confirmed batches once walrelay is
                 stopped)
  check_events   the properties every sink must have: keys unique (or, at least once,
                 duplicates identical), changes of a table in commit order, and the set
                 of (key, table, op) equal to the ChangeLog's for the tables given
  replay         applies copy rows and changes to per-table dicts keyed by the primary
                 key, strictly (an insert of a present key, an update or delete of a
                 missing one is a failure), and source_rows() reads the source in the
                 same JSON form, so tables can be compared row by row
"""

import json
import socket
import struct

from pipeline import prepare_compare_conn


# -- the source's changes ------------------------------------------------------------------

def key_str(commit_lsn, ordinal):
    return "%016X:%010d" % (commit_lsn, ordinal)


def lsn_str_to_int(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class ChangeLog:
    """A pgoutput slot (not consumed: peeked) on the test database, for the publication."""

    def __init__(self, db, publication, name=None):
        self.db = db
        self.publication = publication
        self.slot = name or ("chk_%s" % db.name)
        db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [self.slot])

    def changes(self):
        """[{"key", "table", "op", "commit_lsn"}] of every change since the slot was made,
        in commit order."""
        rows = self.db.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', %s)", [self.slot, self.publication])
        rels = {}
        out = []
        final_lsn = None
        ordinal = 0
        for (data,) in rows:
            data = bytes(data)
            t = chr(data[0])
            if t == "B":
                final_lsn = struct.unpack(">Q", data[1:9])[0]
                ordinal = 0
            elif t == "R":
                relid = struct.unpack(">I", data[1:5])[0]
                nsp_end = data.index(b"\0", 5)
                nsp = data[5:nsp_end].decode()
                name_end = data.index(b"\0", nsp_end + 1)
                name = data[nsp_end + 1:name_end].decode()
                rels[relid] = "%s.%s" % (nsp, name)
            elif t in "IUD":
                relid = struct.unpack(">I", data[1:5])[0]
                ordinal += 1
                out.append({"key": key_str(final_lsn, ordinal), "table": rels[relid],
                            "op": {"I": "insert", "U": "update", "D": "delete"}[t],
                            "commit_lsn": final_lsn})
            elif t == "T":
                nrels = struct.unpack(">I", data[1:5])[0]
                for i in range(nrels):
                    relid = struct.unpack(">I", data[6 + 4 * i:10 + 4 * i])[0]
                    ordinal += 1
                    out.append({"key": key_str(final_lsn, ordinal), "table": rels[relid],
                                "op": "truncate", "commit_lsn": final_lsn})
        return out


# -- what a sink received -------------------------------------------------------------------

EVENT_FIELDS = ["key", "op", "phase", "table", "commit_lsn", "xid", "commit_time", "new", "old",
                "unchanged_toast"]


def check_event_shape(ev):
    """The fields of docs/events.md, in their order; raises AssertionError."""
    fields = list(ev)
    assert fields[:len(EVENT_FIELDS)] == EVENT_FIELDS, "event fields %s: %r" % (fields, ev)
    extra = fields[len(EVENT_FIELDS):]
    if ev["op"] == "truncate":
        assert extra == ["cascade", "restart_identity"], ev
    else:
        assert extra == [], ev
    assert ev["op"] in ("insert", "update", "delete", "truncate"), ev
    assert ev["phase"] in ("stream", "copy"), ev
    if ev["phase"] == "stream":
        assert isinstance(ev["xid"], int) and ev["xid"] > 0, ev
        k = ev["key"]
        assert len(k) == 27 and k[16] == ":", ev
        assert int(k[:16], 16) == lsn_str_to_int(ev["commit_lsn"]), ev
        assert ev["commit_time"].endswith("Z") and "T" in ev["commit_time"], ev
    else:
        assert ev["key"].startswith("copy:"), ev
        assert ev["op"] in ("insert", "truncate"), ev
        assert ev["commit_lsn"] is None and ev["xid"] is None and ev["commit_time"] is None, ev
    if ev["op"] in ("insert",):
        assert isinstance(ev["new"], dict) and ev["old"] is None, ev
    if ev["op"] == "update":
        assert isinstance(ev["new"], dict), ev
    if ev["op"] == "delete":
        assert ev["new"] is None and isinstance(ev["old"], dict), ev
    if ev["op"] == "truncate":
        assert ev["new"] is None and ev["old"] is None, ev
    assert isinstance(ev["unchanged_toast"], list), ev
    for c in ev["unchanged_toast"]:
        assert c not in (ev["new"] or {}), "unchanged column %s has a value: %r" % (c, ev)


def read_jsonl(path):
    """Every line of a jsonl file, parsed (in file order)."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    if data:
        assert data.endswith(b"\n"), "%s ends with a torn line: %r" % (path, data[-200:])
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            ev = json.loads(line)
        except ValueError as e:
            raise AssertionError("%s:%d is not JSON (%s): %r" % (path, n, e, line[:300]))
        check_event_shape(ev)
        out.append(ev)
    return out


def check_events(events, log_changes, tables, exactly_once=True, since_key=None):
    """events: what a sink received, in delivery order. log_changes: ChangeLog.changes().
    For the tables given ("nsp.name"), the stream events must be the log's changes (keys,
    tables, ops): exactly once (no key twice), or at least once (a repeated key carries
    the same event). Within a table, keys increase in delivery order (exactly once) or
    never go back past a key not yet seen (at least once: a redelivery repeats a suffix).
    since_key: only log changes and events with a key >= it count (a table copied during
    the run: its changes before the copy are in the copy, not in the stream).
    Returns the number of stream events checked."""
    since = since_key or {}
    seen = {}
    last = {}
    dups = []
    order = []
    for ev in events:
        if ev["phase"] != "stream" or ev["table"] not in tables:
            continue
        if ev["key"] < since.get(ev["table"], ""):
            continue
        k = ev["key"]
        if k in seen:
            if exactly_once:
                dups.append(k)
            else:
                assert seen[k] == ev, "key %s delivered twice with different content:\n%r\n%r" % (
                    k, seen[k], ev)
            continue
        prev = last.get(ev["table"])
        if prev is not None and k < prev:
            order.append("%s: %s after %s" % (ev["table"], k, prev))
        last[ev["table"]] = k
        seen[k] = ev
    assert not dups, "%d keys delivered more than once, e.g. %s" % (len(dups), dups[:5])
    assert not order, "changes out of commit order: %s" % order[:5]
    want = {(c["key"], c["table"], c["op"]) for c in log_changes
            if c["table"] in tables and c["key"] >= since.get(c["table"], "")}
    got = {(k, e["table"], e["op"]) for k, e in seen.items()}
    missing = sorted(want - got)
    extra = sorted(got - want)
    assert not missing and not extra, (
        "the sink's changes differ from the source's: %d missing (e.g. %s), %d extra (e.g. %s); "
        "%d expected" % (len(missing), missing[:5], len(extra), extra[:5], len(want)))
    return len(seen)


# -- replaying into tables ------------------------------------------------------------------

class ReplayError(AssertionError):
    pass


def replay(events, keys, strict=True):
    """keys: {"nsp.name": [pk column, ...]}. Returns {"nsp.name": {pk tuple: row dict}}
    after applying the latest copy of each table and then its stream events."""
    tables = {t: {} for t in keys}
    for ev in events:
        t = ev["table"]
        if t not in tables:
            continue
        rows = tables[t]
        pk = keys[t]
        if ev["op"] == "truncate":
            rows.clear()
        elif ev["op"] == "insert":
            k = tuple(ev["new"][c] for c in pk)
            if strict and k in rows:
                raise ReplayError("%s: insert of key %r that is there (%s)" % (t, k, ev["key"]))
            rows[k] = dict(ev["new"])
        elif ev["op"] == "update":
            old = ev["old"] if ev["old"] is not None else ev["new"]
            ok = tuple(old[c] for c in pk)
            if ok not in rows:
                if strict:
                    raise ReplayError("%s: update of missing key %r (%s)" % (t, ok, ev["key"]))
                continue
            row = rows.pop(ok)
            new = dict(ev["new"])
            for c in ev["unchanged_toast"]:
                new[c] = row[c]
            nk = tuple(new[c] for c in pk)
            if strict and nk in rows:
                raise ReplayError("%s: update onto key %r that is there (%s)" % (t, nk, ev["key"]))
            rows[nk] = new
        elif ev["op"] == "delete":
            k = tuple(ev["old"][c] for c in pk)
            if k not in rows:
                if strict:
                    raise ReplayError("%s: delete of missing key %r (%s)" % (t, k, ev["key"]))
                continue
            del rows[k]
    return tables


def _json_select(cols):
    out = []
    for c, t in cols:
        q = '"%s"' % c.replace('"', '""')
        if t in ("int2", "int4", "bool"):
            out.append(q)
        elif t in ("json", "jsonb"):
            out.append("%s::text" % q)
        else:
            out.append("CASE WHEN num_nulls(%s) = 0 THEN format('%%s', %s) END" % (q, q))
    return ", ".join(out)


def source_rows(db, table):
    """({pk tuple: row dict}, [pk columns]) of a source table in the JSON form of
    docs/events.md (int2/int4 numbers, bool, json parsed, everything else its text)."""
    nsp, name = table.split(".", 1)
    with db.connect() as c:
        prepare_compare_conn(c)
        cols = c.execute(
            """SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass
                 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
               ORDER BY a.attnum""", [nsp, name]).fetchall()
        pk = [r[0] for r in c.execute(
            """SELECT a.attname FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
               WHERE i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass
                 AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)""",
            [nsp, name]).fetchall()]
        rows = {}
        for r in c.execute('SELECT %s FROM "%s"."%s"' % (_json_select(cols), nsp, name)):
            d = {}
            for (col, typ), v in zip(cols, r):
                if v is not None and typ in ("json", "jsonb"):
                    v = json.loads(v)
                d[col] = v
            rows[tuple(d[k] for k in pk)] = d
    return rows, pk


def compare_replayed(db, events, tables, strict=True):
    """Replays events and compares each table with the source; returns the differences."""
    keys = {}
    src = {}
    for t in tables:
        src[t], keys[t] = source_rows(db, t)
    got = replay(events, keys, strict=strict)
    diffs = []
    for t in tables:
        want, have = src[t], got[t]
        missing = sorted(set(want) - set(have), key=repr)
        extra = sorted(set(have) - set(want), key=repr)
        if missing:
            diffs.append("%s: %d rows missing, e.g. %r" % (t, len(missing), missing[:3]))
        if extra:
            diffs.append("%s: %d rows extra, e.g. %r" % (t, len(extra), extra[:3]))
        bad = [k for k in want if k in have and want[k] != have[k]]
        for k in bad[:3]:
            diffs.append("%s: key %r differs:\n    source %r\n    sink   %r" % (
                t, k, want[k], have[k]))
        if len(bad) > 3:
            diffs.append("%s: %d more rows differ" % (t, len(bad) - 3))
    return diffs


# -- failpoints (common/failpoint.h) ---------------------------------------------------------

def start_with_failpoints(p, monkeypatch, spec, fpdir):
    """Starts `walrelay run` with the failpoints armed (its workers inherit them); the
    test's own walrelay commands run without them."""
    import os
    os.makedirs(fpdir, exist_ok=True)
    monkeypatch.setenv("WALRELAY_FAILPOINTS", spec)
    monkeypatch.setenv("WALRELAY_FAILPOINT_DIR", str(fpdir))
    try:
        p.start()
    finally:
        monkeypatch.delenv("WALRELAY_FAILPOINTS")
        monkeypatch.delenv("WALRELAY_FAILPOINT_DIR")


def wait_fired(p, fpdir, name, timeout=90):
    """Waits for the failpoint's marker file; returns the pid that wrote it."""
    import os
    path = os.path.join(str(fpdir), name)

    def fired():
        with open(path) as f:
            txt = f.read().strip()
        assert txt, "marker %s still empty" % path
        return int(txt)

    return p.wait_until(fired, timeout, "failpoint %s to fire (marker %s)" % (name, path))


def wait_pid_gone(pid, timeout=20):
    import time
    from pipeline import SCALE, alive_walrelay_pids, deadline
    end = deadline(timeout)
    while alive_walrelay_pids([pid]):
        assert time.monotonic() < end, "pid %d still alive %.0fs after its failpoint" % (
            pid, timeout * SCALE)
        time.sleep(0.05)


# -- a webhook receiver ------------------------------------------------------------------------

class Receiver:
    """A real HTTP server (http.server, one thread per request) on a free loopback port.
    decide(req) -> (status, headers dict, body bytes, seconds to wait before answering)
    says how to answer each POST; the default is 200. Every request is recorded:
    {"n", "t" (monotonic, when it arrived), "path", "headers" (lowercase names), "raw",
    "json", "status" (what was answered), "answered" (False if the client was gone)}."""

    def __init__(self, decide=None):
        import http.server
        import threading
        import time as _time

        self.decide = decide or (lambda req: (200, {}, b"ok", 0))
        self.requests = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, Nagle's algorithm
                # holds the body until the client's delayed ACK (40 ms per request)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                req = {"t": _time.monotonic(), "path": self.path, "raw": raw, "json": parsed,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "status": None, "answered": False}
                with outer.lock:
                    req["n"] = len(outer.requests)
                    outer.requests.append(req)
                    outer.arrived.notify_all()
                status, headers, body, wait = outer.decide(req)
                req["status"] = status
                if wait:
                    _time.sleep(wait)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    req["answered"] = True
                except OSError:
                    pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d/hook" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def delivered(self):
        """Requests answered 2xx (the batches walrelay may consider acknowledged)."""
        with self.lock:
            return [r for r in self.requests if r["status"] and 200 <= r["status"] < 300]

    def events(self):
        """Events of the acknowledged requests, in arrival order."""
        out = []
        for r in self.delivered():
            for ev in r["json"]["events"]:
                check_event_shape(ev)
                out.append(ev)
        return out

    def wait_requests(self, n, timeout):
        """Waits until n requests have arrived."""
        import time as _time
        end = _time.monotonic() + timeout
        with self.lock:
            while len(self.requests) < n:
                left = end - _time.monotonic()
                assert left > 0, "the receiver got %d of %d requests in %ss" % (
                    len(self.requests), n, timeout)
                self.arrived.wait(left)
