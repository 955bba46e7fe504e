"""Drives one walrelay pipeline from the tests, and compares source and destination.

NOTES: used by conftest.py and the test_*.py files. A Pipeline owns one config directory
in the test's tmp dir and at most one `walrelay run` process, whose stdout and stderr go
to DIR/../walrelay.log. Tests never sleep and hope: they poll persisted state
(`walrelay status --json`, the destination) until a deadline, and on timeout the error
shows what was waited for, the last status and the tail of the log.
"""

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import time

import psycopg

from pgserver import lsn_to_int

# Deadlines scale on slow machines and sanitizer builds: WALRELAY_TEST_TIMEOUT_SCALE=3
SCALE = float(os.environ.get("WALRELAY_TEST_TIMEOUT_SCALE", "1"))
if os.environ.get("WALRELAY_BUILD", "build").rstrip("/").endswith("build-asan"):
    SCALE = max(SCALE, 3.0)

PHASES = ("init", "datasync", "finishedcopy", "syncwait", "catchup", "syncdone", "ready", "errored")

# `walrelay status --json`: the keys scripts (and these tests) rely on.
STATUS_KEYS = {"pipeline": str, "state": str, "pid": int, "flush_lsn": str, "received_lsn": str,
               "events": int, "workers": list, "tables": list}
WORKER_KEYS = {"role": str, "relid": int, "pid": int, "restarts": int, "state": str}
TABLE_KEYS = {"relid": int, "schema": str, "name": str, "phase": str, "lsn": str,
              "rows_copied": int, "attempts": int, "error": (dict, type(None))}
ERROR_KEYS = {"kind": str, "message": str, "hint": str}
LSN_RE = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")


def _normalize_table(t):
    """Adds short aliases used by the helpers (nsp, err_kind, err_msg, err_hint) to a
    table as docs/cli.md documents it ("schema", and an "error" object or null).
    status_contract_problems() checks the documented keys on the raw JSON."""
    if "nsp" not in t and "schema" in t:
        t["nsp"] = t["schema"]
    if "err_kind" not in t and "error" in t:
        e = t["error"] or {}
        t["err_kind"], t["err_msg"], t["err_hint"] = e.get("kind"), e.get("message"), e.get("hint")


def status_contract_problems(st):
    """What in a parsed `walrelay status --json` breaks the documented shape."""
    problems = []

    def check(obj, keys, where):
        if not isinstance(obj, dict):
            problems.append("%s is not an object: %r" % (where, obj))
            return
        for k, ty in keys.items():
            if k not in obj:
                problems.append("%s has no key \"%s\" (keys: %s)" % (where, k, sorted(obj)))
            elif not isinstance(obj[k], ty) or (ty is int and isinstance(obj[k], bool)):
                problems.append("%s key \"%s\" is %r" % (where, k, obj[k]))

    check(st, STATUS_KEYS, "status")
    for i, w in enumerate(st.get("workers") or []):
        check(w, WORKER_KEYS, "workers[%d]" % i)
    for i, t in enumerate(st.get("tables") or []):
        check(t, TABLE_KEYS, "tables[%d]" % i)
        if isinstance(t, dict) and isinstance(t.get("error"), dict):
            check(t["error"], ERROR_KEYS, "tables[%d].error" % i)
        if isinstance(t, dict) and (t.get("phase") == "errored") != isinstance(t.get("error"), dict):
            problems.append("tables[%d]: error must be an object exactly when errored: %r" % (i, t))
        if isinstance(t, dict) and t.get("phase") not in PHASES:
            problems.append("tables[%d] phase %r is not one of %s" % (i, t.get("phase"), PHASES))
        if isinstance(t, dict) and isinstance(t.get("lsn"), str) and not LSN_RE.match(t["lsn"]):
            problems.append("tables[%d] lsn %r is not X/X" % (i, t["lsn"]))
    for k in ("flush_lsn", "received_lsn"):
        if isinstance(st.get(k), str) and not LSN_RE.match(st[k]):
            problems.append("status %s %r is not X/X" % (k, st[k]))
    return problems


SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error: |"
                          r"SUMMARY: UndefinedBehaviorSanitizer")
KILLED_RE = re.compile(r"killed by signal|dumped core|segmentation fault", re.I)


def deadline(seconds):
    return time.monotonic() + seconds * SCALE


class WaitTimeout(AssertionError):
    """A wait failed for good. Raised by a wait_until predicate, it ends the wait at once
    (any other AssertionError there means "not yet")."""


class CmdResult:
    """Outcome of one walrelay command: rc, out (stdout), err (stderr), text (both)."""

    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err
        self.text = out + err

    def __repr__(self):
        return "%s -> exit %s\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(self.argv), self.rc, self.out, self.err)


def run_walrelay(bindir, *args, timeout=60, env=None):
    argv = [os.path.join(bindir, "walrelay")] + [str(a) for a in args]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout * SCALE, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s did not finish within %ss; output so far:\n%s%s" % (
            " ".join(argv), timeout * SCALE, (e.stdout or b"").decode("utf-8", "replace"),
            (e.stderr or b"").decode("utf-8", "replace")))
    return CmdResult(argv, r.returncode, r.stdout.decode("utf-8", "replace"),
                     r.stderr.decode("utf-8", "replace"))


def edit_ini(path, edits):
    """edits = {"section": {"key": "value" | None}}: sets (None removes) keys in place,
    keeping every other line (and so line numbers before the edits) as it was."""
    with open(path) as f:
        lines = f.read().splitlines()
    for section, kv in edits.items():
        kv = dict(kv)
        start = None
        for i, line in enumerate(lines):
            if line.strip() == "[%s]" % section:
                start = i
                break
        if start is None:
            lines.append("[%s]" % section)
            start = len(lines) - 1
        end = len(lines)
        for i in range(start + 1, len(lines)):
            if lines[i].strip().startswith("["):
                end = i
                break
        for i in range(start + 1, end):
            m = re.match(r"\s*([A-Za-z0-9_]+)\s*=", lines[i])
            if m and m.group(1) in kv:
                v = kv.pop(m.group(1))
                lines[i] = None if v is None else "%s = %s" % (m.group(1), v)
        new = ["%s = %s" % (k, v) for k, v in kv.items() if v is not None]
        lines[end:end] = new
        lines = [l for l in lines if l is not None]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Pipeline:
    """One config directory and the `walrelay run` process on it."""

    def __init__(self, bindir, dir, name, log_path):
        self.bindir = bindir
        self.dir = str(dir)
        self.name = name
        self.log_path = str(log_path)
        self.proc = None
        self.seen_pids = set()   # every walrelay pid status ever showed (leak check)
        self.killed_pids = set()  # pids the test killed on purpose (crash check)
        self.reached_ready = False
        self.last_status = None
        self._log_f = None
        self.state_spec = None  # `walrelay init --state`: None = the default (sqlite)
        self.target = None  # conftest Db of the postgres destination; None = sqlite
        self.state_config = None  # [state] keys init cannot write (a plugin store's)

    # -- commands --------------------------------------------------------------------

    @property
    def conf_path(self):
        return os.path.join(self.dir, "walrelay.conf")

    @property
    def dest_path(self):
        """DIR/dest.db, or what a test set in dest_path_override (a destination elsewhere)."""
        return getattr(self, "dest_path_override", None) or os.path.join(self.dir, "dest.db")

    def cmd(self, *args, timeout=60):
        return run_walrelay(self.bindir, *args, timeout=timeout)

    def init(self, conninfo, publication, config=None, destination=None, name=True, check=True,
             state=None):
        """`walrelay init DIR --source C --publication P [--name N] [--destination D]
        [--state S]`, then applies config edits ({"section": {"key": "value"}}) to
        walrelay.conf. state defaults to the pipelines fixture's state store (the
        state_store parameter of the test, sqlite unless parametrised)."""
        args = ["init", self.dir, "--source", conninfo, "--publication", publication]
        fixture_state = not state
        state = state or self.state_spec
        if state:
            args += ["--state", state]
        if name is True:
            args += ["--name", self.name]
        elif name:
            args += ["--name", name]
        if destination:
            args += ["--destination", destination]
        elif self.target is not None:
            args += ["--destination", "postgres:" + self.target.conninfo]
        r = self.cmd(*args)
        if check:
            assert r.rc == 0, "walrelay init failed: %r" % r
            assert os.path.isfile(self.conf_path), "walrelay init wrote no %s" % self.conf_path
            if fixture_state and self.state_config:
                edit_ini(self.conf_path, self.state_config)
            if config:
                edit_ini(self.conf_path, config)
        return r

    def start(self, wait_status=True):
        """Starts `walrelay run DIR` in the background; waits until it answers status."""
        assert not self.running(), "pipeline already started"
        self._log_f = open(self.log_path, "ab")
        self._log_f.write(b"==== walrelay run started ====\n")
        self._log_f.flush()
        self.run_log_offset = self._log_f.tell()
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "walrelay"), "run", self.dir],
            stdin=subprocess.DEVNULL, stdout=self._log_f, stderr=subprocess.STDOUT)
        if wait_status:
            self.wait_until(lambda: self.status(), 30, "walrelay run answers status")
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=60):
        """`walrelay stop DIR`, then waits for `walrelay run` to exit; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            r = self.cmd("stop", self.dir, timeout=timeout)
            assert r.rc == 0 or self.proc.poll() is not None, "walrelay stop failed: %r" % r
            try:
                self.proc.wait(timeout * SCALE)
            except subprocess.TimeoutExpired:
                raise AssertionError("walrelay run did not exit within %ss of walrelay stop%s"
                                     % (timeout * SCALE, self.log_tail()))
        rc = self.proc.returncode
        self._close_log()
        return rc

    def wait_exit(self, timeout, what):
        """Waits until `walrelay run` exits by itself (a pipeline that cannot go on stops:
        issue 12); returns its exit code, or fails at the deadline with the log."""
        assert self.proc is not None, "walrelay run was not started"
        try:
            self.proc.wait(timeout * SCALE)
        except subprocess.TimeoutExpired:
            raise WaitTimeout("timed out after %.0fs waiting for walrelay run to exit: %s%s" % (
                timeout * SCALE, what, self.log_tail()))
        rc = self.proc.returncode
        self._close_log()
        return rc

    def kill(self):
        """SIGKILL to the supervisor (its workers see EOF on fd 3 and exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    def kill_worker(self, pid):
        """kill -9 of one worker, on purpose: the crash check after the test allows it."""
        self.killed_pids.add(int(pid))
        os.kill(int(pid), signal.SIGKILL)

    def unexpected_crashes(self):
        """Log lines that show a crash the test did not cause: a sanitizer report, or a
        worker killed by a signal other than the test's own kill -9."""
        bad = []
        for line in self.log_text().splitlines():
            if SANITIZER_RE.search(line):
                bad.append(line)
            elif KILLED_RE.search(line):
                # text (pid=N) or [log] format = json ("pid":N)
                m = re.search(r"\bpid=(\d+)|\"pid\":\s*(\d+)", line)
                if not m or int(m.group(1) or m.group(2)) not in self.killed_pids:
                    bad.append(line)
        return bad

    def _close_log(self):
        if self._log_f is not None:
            self._log_f.close()
            self._log_f = None

    def status(self):
        """Parsed `walrelay status DIR --json`; raises AssertionError if it fails."""
        r = self.cmd("status", self.dir, "--json", timeout=30)
        assert r.rc == 0, "walrelay status failed: %r" % r
        try:
            st = json.loads(r.out)
        except ValueError as e:
            raise AssertionError("walrelay status --json printed no JSON (%s): %r" % (e, r))
        if not isinstance(st, dict) or not isinstance(st.get("tables"), list):
            raise WaitTimeout("walrelay status --json printed no status object: %r" % r)
        for t in st["tables"]:
            _normalize_table(t)
        self.last_status = st
        for w in st.get("workers") or []:
            if w.get("pid"):
                self.seen_pids.add(int(w["pid"]))
        if st.get("pid"):
            self.seen_pids.add(int(st["pid"]))
        return st

    # -- waiting -------------------------------------------------------------------

    def wait_until(self, pred, timeout, what, interval=0.1):
        """Polls pred() until it returns something truthy and returns that. An
        AssertionError or OSError inside pred counts as "not yet". Fails at once if
        `walrelay run` has exited, and at the deadline, with the last status and log."""
        end = deadline(timeout)
        last_err = None
        while True:
            try:
                v = pred()
                if v:
                    return v
            except WaitTimeout:
                raise  # pred gave up: no point in waiting
            except (AssertionError, OSError, sqlite3.Error) as e:
                last_err = e
            if self.proc is not None and self.proc.poll() is not None:
                raise WaitTimeout("waiting for %s: walrelay run exited with %s%s%s" % (
                    what, self.proc.returncode, self._last_err_text(last_err), self.log_tail()))
            if time.monotonic() > end:
                raise WaitTimeout("timed out after %.0fs waiting for %s%s\nlast status: %s%s" % (
                    timeout * SCALE, what, self._last_err_text(last_err),
                    json.dumps(self.last_status, indent=1), self.log_tail()))
            time.sleep(interval)

    @staticmethod
    def _last_err_text(e):
        return "\nlast error: %s" % e if e is not None else ""

    def tables(self, st=None):
        st = st or self.status()
        return {"%s.%s" % (t["nsp"], t["name"]): t for t in st.get("tables") or []}

    def wait_all_ready(self, expect_tables, timeout=120):
        """Waits until status lists exactly expect_tables ("nsp.name") and all are
        ready. Fails at once if one is errored. Returns the status."""
        want = sorted(expect_tables)

        def ready():
            st = self.status()
            tabs = self.tables(st)
            for k, t in tabs.items():
                if t["phase"] == "errored":
                    raise WaitTimeout("table %s is errored: %s: %s (hint: %s)%s" % (
                        k, t.get("err_kind"), t.get("err_msg"), t.get("err_hint"), self.log_tail()))
            if sorted(tabs) == want and all(t["phase"] == "ready" for t in tabs.values()):
                return st
            return None

        st = self.wait_until(ready, timeout, "tables %s all ready" % ", ".join(want))
        self.reached_ready = True
        return st

    def wait_flushed(self, lsn, timeout=120):
        """Waits until status flush_lsn >= lsn (an int or 'X/X')."""
        target = lsn_to_int(lsn)
        return self.wait_until(
            lambda: lsn_to_int(self.status().get("flush_lsn")) >= target and self.last_status,
            timeout, "flush_lsn >= %X/%X" % (target >> 32, target & 0xFFFFFFFF))

    def worker(self, role, relid=None, st=None):
        """The first worker of role (and relid) in status, or None."""
        st = st or self.status()
        for w in st.get("workers") or []:
            if w.get("role") == role and (relid is None or int(w.get("relid") or 0) == relid):
                return w
        return None

    def worker_pids(self, st=None):
        st = st or self.status()
        return [int(w["pid"]) for w in st.get("workers") or [] if w.get("pid")]

    # -- the log -------------------------------------------------------------------

    def log_text(self, since_start=False):
        try:
            with open(self.log_path, "rb") as f:
                if since_start:
                    f.seek(getattr(self, "run_log_offset", 0))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_contains(self, text, since_start=False):
        return text in self.log_text(since_start)

    def log_tail(self, n=60):
        lines = self.log_text().splitlines()
        return "\n--- %s (last %d lines) ---\n%s" % (self.log_path, n, "\n".join(lines[-n:]))

    # -- destination ---------------------------------------------------------------

    def dest(self):
        """A read-only connection to the SQLite destination."""
        assert self.target is None, "dest() is the sqlite destination; use dest_query()"
        return sqlite3.connect("file:%s?mode=ro" % self.dest_path, uri=True, timeout=30)

    def dest_tables(self):
        """Names of the tables this pipeline replicated into the destination (postgres:
        those it registered in walrelay.tables and that exist; other pipelines may share
        the database)."""
        if self.target is not None:
            return {r[0] for r in self.target.execute(
                "SELECT name FROM walrelay.tables WHERE pipeline = %s AND "
                "to_regclass(format('%%I.%%I', nsp, name)) IS NOT NULL", [self.name])}
        with self.dest() as d:
            return {r[0] for r in d.execute("SELECT name FROM sqlite_master WHERE type = "
                                            "'table' AND name NOT LIKE '\\_walrelay\\_%' "
                                            "ESCAPE '\\'")}

    def dest_columns(self, table):
        """Column names of a destination table ("name", a table of public), in order."""
        if self.target is not None:
            return [r[0] for r in self.target.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND "
                "attnum > 0 AND NOT attisdropped ORDER BY attnum", ['"public"."%s"' % table])]
        with self.dest() as d:
            return [r[0] for r in d.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid",
                                            [table])]

    def dest_key(self, table):
        """The primary key columns of a destination table, in key order."""
        if self.target is not None:
            return [r[0] for r in self.target.execute(
                "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) "
                "WITH ORDINALITY AS k(att, n) JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = k.att WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
                "ORDER BY k.n", ['"public"."%s"' % table])]
        with self.dest() as d:
            return [r[0] for r in d.execute(
                "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", [table])]

    def dest_versions(self):
        """{table name: number of schema versions the destination recorded}."""
        if self.target is not None:
            return dict(self.target.execute(
                "SELECT name, count(*) FROM walrelay.schemas WHERE pipeline = %s GROUP BY name",
                [self.name]))
        with self.dest() as d:
            return dict(d.execute("SELECT name, count(*) FROM _walrelay_schemas GROUP BY name"
                                  ).fetchall())

    def dest_newest_version(self, table):
        """The columns (JSON text) of the newest schema version of a table."""
        if self.target is not None:
            return self.target.execute(
                "SELECT columns::text FROM walrelay.schemas WHERE pipeline = %s AND name = %s "
                "ORDER BY version_lsn DESC, version_ordinal DESC LIMIT 1",
                [self.name, table])[0][0].replace(" ", "")
        with self.dest() as d:
            return d.execute("SELECT columns_json FROM _walrelay_schemas WHERE name = ? ORDER BY "
                             "version_lsn DESC, version_ordinal DESC LIMIT 1", [table]).fetchone()[0]

    def dest_query(self, sql):
        """Rows of a query on the destination, sqlite or postgres (the same SQL must work in
        both: plain SELECTs on the replicated tables)."""
        if self.target is not None:
            return [tuple(r) for r in self.target.execute(sql)]
        with self.dest() as d:
            return d.execute(sql).fetchall()


def alive_walrelay_pids(pids):
    """The pids of pids that still run a walrelay binary."""
    alive = []
    for pid in pids:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie is dead; its parent just has not reaped it
        except (OSError, IndexError):
            continue
        if b"walrelay" in cmd:
            alive.append(pid)
    return alive


# -- source vs destination comparison ------------------------------------------------

INT_TYPES = {"int2", "int4", "int8", "oid"}
FLOAT_TYPES = {"float4", "float8"}


def dest_table_name(nsp, name):
    return name if nsp == "public" else "%s__%s" % (nsp, name)


def _source_table(conn, nsp, name, need_key=True):
    """[(column, typname)] in attnum order and the primary key columns."""
    cols = conn.execute(
        """SELECT a.attname, t.typname FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass
             AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
           ORDER BY a.attnum""", [nsp, name]).fetchall()
    key = [r[0] for r in conn.execute(
        """SELECT a.attname FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
           WHERE i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND i.indisprimary
           ORDER BY array_position(i.indkey, a.attnum)""", [nsp, name]).fetchall()]
    assert cols, "source table %s.%s has no columns (does it exist?)" % (nsp, name)
    assert key or not need_key, (
        "source table %s.%s has no primary key: the comparison needs one" % (nsp, name))
    return cols, key


def _expected(typname, v):
    """A source value (fetched as noted in _select_list) in the destination's form."""
    if v is None:
        return None
    if typname in INT_TYPES:
        return int(v)
    if typname == "bool":
        return 1 if v else 0
    if typname == "bytea":
        return bytes(v)
    if typname in FLOAT_TYPES:
        f = float(v)
        if math.isnan(f) or math.isinf(f):
            return v  # text form: NaN, Infinity, -Infinity
        return f
    return v  # text form


def _same(typname, want, got):
    if want is None or got is None:
        return want is None and got is None
    if typname in INT_TYPES or typname == "bool":
        return type(got) is int and got == want
    if typname == "bytea":
        return isinstance(got, bytes) and got == want
    if typname in FLOAT_TYPES:
        if isinstance(want, str):  # NaN / Infinity: text, or SQLite's own inf
            if isinstance(got, float) and math.isinf(got):
                return want == ("Infinity" if got > 0 else "-Infinity")
            return got == want
        return type(got) in (int, float) and float(got) == want
    return isinstance(got, str) and got == want


def _select_list(cols):
    """Ints, bool and bytea as psycopg reads them; everything else in its output form
    (format('%s'), not a cast to text: bpchar's cast trims the padding, inet's adds the
    netmask, "char"'s differs for non-ASCII; format gives '' for NULL, hence the CASE).
    Floats are then exact with
    extra_float_digits=3, and keep NaN/Infinity. The query runs without parameters, so
    its % signs are literal."""
    out = []
    for c, t in cols:
        q = '"%s"' % c.replace('"', '""')
        if t in INT_TYPES or t in ("bool", "bytea"):
            out.append(q)
        else:
            # num_nulls, not IS NULL: a composite whose fields are all NULL "IS NULL"
            out.append("CASE WHEN num_nulls(%s) = 0 THEN format('%%s', %s) END" % (q, q))
    return ", ".join(out)


def _canon(typname, got):
    """A destination value in the form _expected gives its source value (for comparing
    tables without a key as multisets)."""
    if got is None:
        return None
    if typname in FLOAT_TYPES:
        if isinstance(got, float) and math.isinf(got):
            return "Infinity" if got > 0 else "-Infinity"
        if isinstance(got, (int, float)):
            return float(got)
    if typname == "bytea" and isinstance(got, (bytes, memoryview)):
        return bytes(got)
    return got


def _row_sort_key(row):
    return [(v is None, type(v).__name__, repr(v)) for v in row]


def _source_query(cols, nsp, name, where):
    sql = 'SELECT %s FROM "%s"."%s"' % (_select_list(cols), nsp, name)
    return sql if where is None else "%s WHERE (%s)" % (sql, where)


def dest_name_of(pgconn, dest, nsp, name):
    """The destination table of source table nsp.name: the name the destination recorded
    for its relid (_walrelay_tables, written when the table was registered: the pipeline
    makes names unique, issue 12), else the naming rule's."""
    try:
        relid = pgconn.execute("SELECT format('%%I.%%I', %s::text, %s::text)::regclass::oid",
                               [nsp, name]).fetchone()[0]
        row = dest.execute("SELECT dest_name FROM _walrelay_tables WHERE relid = ?",
                           (int(relid),)).fetchone()
        if row and row[0]:
            return row[0]
    except sqlite3.Error:
        pass
    return dest_table_name(nsp, name)


def _dest_rows(dest, dname, nsp, name, names):
    """(rows of the SQLite destination table dname, columns names in that order, None),
    or (None, why not). The columns are checked first: SQLite reads a double-quoted name
    that is not a column as a string literal, which would show up as every value of a
    column differing ('c55' instead of its values) rather than as a missing column."""
    try:
        have = {r[0] for r in dest.execute("SELECT name FROM pragma_table_info(?)", (dname,))}
        if not have:
            return None, "destination table \"%s\" (for %s.%s) does not exist" % (dname, nsp, name)
        lacking = [c for c in names if c not in have]
        if lacking:
            return None, ("destination table \"%s\" (for %s.%s) lacks the source's columns %s"
                          " (it has %s)" % (dname, nsp, name, lacking, sorted(have)))
        qcols = ", ".join('"%s"' % c.replace('"', '""') for c in names)
        return dest.execute('SELECT %s FROM "%s"' % (qcols, dname.replace('"', '""'))).fetchall(), None
    except sqlite3.Error as e:
        return None, "destination table \"%s\" (for %s.%s) cannot be read: %s" % (dname, nsp, name, e)


def _compare_keyless(pgconn, dest, nsp, name, cols, max_report, where=None):
    """Tables without a primary key: the same rows, as many times each (multisets)."""
    import collections
    names = [c for c, _ in cols]
    src = collections.Counter()
    for row in pgconn.execute(_source_query(cols, nsp, name, where)):
        src[tuple(_expected(t, v) for (_, t), v in zip(cols, row))] += 1
    dname = dest_name_of(pgconn, dest, nsp, name)
    drows, err = _dest_rows(dest, dname, nsp, name, names)
    if err:
        return [err]
    dst = collections.Counter(tuple(_canon(t, v) for (_, t), v in zip(cols, row)) for row in drows)
    diffs = []
    missing = sorted((src - dst).elements(), key=_row_sort_key)
    extra = sorted((dst - src).elements(), key=_row_sort_key)
    if missing:
        diffs.append("%s (no key): %d source rows missing in the destination, e.g. %r" % (
            dname, len(missing), missing[:max_report]))
    if extra:
        diffs.append("%s (no key): %d destination rows not in the source, e.g. %r" % (
            dname, len(extra), extra[:max_report]))
    return diffs


def compare_table(pgconn, dest, nsp, name, max_report=10, where=None):
    """Compares one table value by value. Returns a list of human-readable differences
    (empty when equal). pgconn must have TimeZone UTC, DateStyle ISO, extra_float_digits 3.
    A table without a primary key is compared as a multiset of rows. where: an SQL
    condition; the destination must then equal SELECT ... FROM the table WHERE (where),
    e.g. a publication's row filter."""
    cols, key = _source_table(pgconn, nsp, name, need_key=False)
    if not key:
        return _compare_keyless(pgconn, dest, nsp, name, cols, max_report, where)
    names = [c for c, _ in cols]
    types = dict(cols)
    kidx = [names.index(k) for k in key]
    src = {}
    for row in pgconn.execute(_source_query(cols, nsp, name, where)):
        vals = [_expected(t, v) for (_, t), v in zip(cols, row)]
        src[tuple(vals[i] for i in kidx)] = vals
    dname = dest_name_of(pgconn, dest, nsp, name)
    drows, err = _dest_rows(dest, dname, nsp, name, names)
    if err:
        return [err]
    diffs = []
    dst = {}
    for row in drows:
        k = tuple(row[i] for i in kidx)
        if k in dst:
            diffs.append("%s: key %r appears twice in the destination" % (dname, k))
        dst[k] = row
    missing = [k for k in src if k not in dst]
    extra = [k for k in dst if k not in src]
    if missing:
        diffs.append("%s: %d source rows missing in the destination, e.g. keys %r" % (
            dname, len(missing), sorted(missing)[:max_report]))
    if extra:
        diffs.append("%s: %d destination rows not in the source, e.g. keys %r" % (
            dname, len(extra), sorted(extra)[:max_report]))
    nbad = 0
    for k, want in src.items():
        got = dst.get(k)
        if got is None:
            continue
        for i, c in enumerate(names):
            if not _same(types[c], want[i], got[i]):
                nbad += 1
                if nbad <= max_report:
                    diffs.append("%s key %r column %s (%s): source %r, destination %r" % (
                        dname, k, c, types[c], want[i], got[i]))
    if nbad > max_report:
        diffs.append("%s: %d more differing values" % (dname, nbad - max_report))
    return diffs


def prepare_compare_conn(pgconn):
    pgconn.execute("SET TimeZone = 'UTC'")
    pgconn.execute("SET DateStyle = 'ISO'")
    pgconn.execute("SET IntervalStyle = 'postgres'")
    pgconn.execute("SET extra_float_digits = 3")
    return pgconn


def _pg_rows_text(conn, table, order, where=None, only=False):
    """[row::text] of a table in the given order (whole rows in PostgreSQL's own text form,
    exact: nothing normalised)."""
    nsp, name = table
    sql = 'SELECT t::text FROM %s"%s"."%s" t' % ("ONLY " if only else "", nsp.replace('"', '""'),
                                                name.replace('"', '""'))
    if where:
        sql += " WHERE (%s)" % where
    return [r[0] for r in conn.execute(sql + " ORDER BY " + order)]


def compare_pg_table(src, dst, nsp, name, max_report=10, where=None, target=None):
    """Compares a source table with its copy in a postgres destination as text: SELECT
    t::text FROM t ORDER BY key on both (keyless tables: ORDER BY t::text, as multisets).
    target: (nsp, name) of the destination table, default the same. Both connections must
    have the same session settings (prepare_compare_conn)."""
    cols, key = _source_table(src, nsp, name, need_key=False)
    if key:
        order = ", ".join('t."%s"' % k.replace('"', '""') for k in key)
    else:
        order = "t::text"
    want = _pg_rows_text(src, (nsp, name), order, where)
    tnsp, tname = target or (nsp, name)
    try:
        got = _pg_rows_text(dst, (tnsp, tname), order)
    except psycopg.Error as e:
        return ["destination table %s.%s cannot be read: %s" % (tnsp, tname, e)]
    if want == got:
        return []
    diffs = ["%s.%s: %d source rows, %d destination rows" % (tnsp, tname, len(want), len(got))]
    ws, gs = set(want), set(got)
    missing = [r for r in want if r not in gs]
    extra = [r for r in got if r not in ws]
    if missing:
        diffs.append("%s.%s: %d source rows missing or different in the destination, e.g. %s" % (
            tnsp, tname, len(missing), [r[:300] for r in missing[:max_report]]))
    if extra:
        diffs.append("%s.%s: %d destination rows not in the source, e.g. %s" % (
            tnsp, tname, len(extra), [r[:300] for r in extra[:max_report]]))
    if not missing and not extra:
        diffs.append("%s.%s: the same rows, but not as many of each (duplicates differ)" % (
            tnsp, tname))
    return diffs


def compare_tables(pg, dbname, pipeline, tables, where=None):
    """Differences between the source tables ("nsp.name") and the destination. where:
    {"nsp.name": SQL condition} for tables whose destination holds only the rows that
    match it (compare_table)."""
    diffs = []
    where = where or {}
    if getattr(pipeline, "target", None) is not None:
        with pg.connect(dbname) as c, pipeline.target.connect() as d:
            prepare_compare_conn(c)
            prepare_compare_conn(d)
            for t in tables:
                nsp, name = t.split(".", 1)
                diffs += compare_pg_table(c, d, nsp, name, where=where.get(t))
        return diffs
    with pg.connect(dbname) as c, pipeline.dest() as d:
        prepare_compare_conn(c)
        for t in tables:
            nsp, name = t.split(".", 1)
            diffs += compare_table(c, d, nsp, name, where=where.get(t))
    return diffs


def wait_equal(pg, dbname, pipeline, tables, timeout=120, where=None):
    """Waits until every table equals its source row by row (only the rows matching
    where[table], if given: compare_tables); the deadline error lists the differences.
    Cheap checks (status, counts) gate the full comparison."""
    target = pg.current_wal_lsn()
    end = deadline(timeout)
    # 1. the apply worker has made everything up to now durable
    pipeline.wait_flushed(target, timeout)
    # 2. row by row, retried until the deadline (a last batch may still be committing)
    while True:
        diffs = compare_tables(pg, dbname, pipeline, tables, where)
        if not diffs:
            return
        if time.monotonic() > end:
            raise AssertionError("destination differs from the source after %.0fs:\n  %s%s" % (
                timeout * SCALE, "\n  ".join(diffs[:40]), pipeline.log_tail(30)))
        time.sleep(1)
