"""The chaos suite's tools: a write mix that survives outages, a service manager for
`walrelay run`, kills, a TCP proxy whose traffic can be black-holed, small file systems,
and the figures each scenario records.

NOTES: used by tests/chaos/test_chaos.py only. Everything a scenario does to the machine
(tc rules on the loopback device for one port, tmpfs mounts) is undone in a finally.
Figures go to the test's log (printed) and, when WALRELAY_CHAOS_REPORT names a file, as
one JSON object per scenario appended to it (docs/reliability.md quotes them).
"""

import json
import os
import random
import re
import signal
import subprocess
import threading
import time

import psycopg

from walrelay_integration_fixtures import Db
from pgserver import PgServer
from pipeline import SCALE, alive_walrelay_pids, deadline
from netcut import Proxy, tc_usable  # noqa: F401 (test_chaos.py imports them from here)

FULL = os.environ.get("WALRELAY_CHAOS", "") == "full"


def figure(name, **values):
    """Records a scenario's figures: printed, and appended to $WALRELAY_CHAOS_REPORT."""
    rec = {"scenario": name, "full": FULL}
    rec.update(values)
    line = json.dumps(rec, sort_keys=True)
    print("CHAOS FIGURES " + line)
    path = os.environ.get("WALRELAY_CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# -- a server of the scenario's own ---------------------------------------------------------

class OwnServer:
    """A PostgreSQL of one scenario, with one database; stopped and removed at the end."""

    def __init__(self, **conf):
        self.server = PgServer(extra_conf=conf).start()
        self.db = Db(self.server, self.server.create_database())

    def close(self):
        self.server.stop()


# -- the write mix --------------------------------------------------------------------------

MIX_TABLES = ["acct", "items", "big", "toast", "kl", "trunc", "ddl", "pubx"]


def create_mix(db, scale=1):
    """The tables of the mix (every one published in `pub`): balances, multi-row inserts
    (COPY: one WAL record, many changes), large transactions, TOAST, a keyless FULL table,
    TRUNCATE, DDL, and a table that leaves and rejoins the publication."""
    db.execute("CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL)")
    db.execute("INSERT INTO acct SELECT g, 1000 FROM generate_series(1, 100) g")
    db.execute("CREATE TABLE items (id bigint PRIMARY KEY, grp int, v text)")
    db.execute("INSERT INTO items SELECT g, g %% 10, 'seed ' || g FROM generate_series(1, %d) g"
               % (2000 * scale))
    db.execute("CREATE TABLE big (id bigint PRIMARY KEY, v text)")
    db.execute("CREATE TABLE toast (id int PRIMARY KEY, n int NOT NULL, body text)")
    db.execute("""INSERT INTO toast SELECT g, 0, (SELECT string_agg(md5(g::text || x::text), '')
                  FROM generate_series(1, 300) x) FROM generate_series(1, 30) g""")
    db.execute("CREATE TABLE kl (id int, v text)")
    db.execute("ALTER TABLE kl REPLICA IDENTITY FULL")
    db.execute("INSERT INTO kl SELECT g % 20, 'dup' FROM generate_series(1, 200) g")
    db.execute("CREATE TABLE trunc (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO trunc SELECT g, 'first' FROM generate_series(1, 20) g")
    db.execute("CREATE TABLE ddl (id bigint PRIMARY KEY, v text)")
    db.execute("INSERT INTO ddl SELECT g, 'v' FROM generate_series(1, 50) g")
    db.execute("CREATE TABLE pubx (id bigint PRIMARY KEY, v text)")
    db.execute("INSERT INTO pubx SELECT g, 'v' FROM generate_series(1, 100) g")
    db.execute("CREATE PUBLICATION pub FOR TABLE %s" % ", ".join(MIX_TABLES))


class MixWriter(threading.Thread):
    """Writes the mix until stop(), one transaction at a time; waits out source outages
    (a failed transaction is retried from scratch, as an application would). Counts its
    commits. ddl and publication changes only with ddl=True (one writer does them)."""

    def __init__(self, db, seed, ddl=False, pause=0.01):
        super().__init__(daemon=True)
        self.db = db
        self.rng = random.Random(seed)
        self.ddl = ddl
        self.pause = pause
        self.commits = 0
        self.retries = 0
        self.error = None
        self.next_id = 10_000_000 * (seed + 1)
        self.ddl_cols = 0
        self.pubx_in = True
        self._stop_ev = threading.Event()

    def _txn(self, c):
        r = self.rng
        op = r.random()
        with c.transaction():
            if op < 0.25:  # two balance updates: a transfer
                a, b = r.sample(range(1, 101), 2)
                c.execute("UPDATE acct SET balance = balance - 1 WHERE id = %s", [a])
                c.execute("UPDATE acct SET balance = balance + 1 WHERE id = %s", [b])
            elif op < 0.40:  # 50 rows in one COPY (one WAL record, 50 changes), a delete
                first = self.next_id
                self.next_id += 50
                with c.cursor().copy("COPY items (id, grp, v) FROM STDIN") as cp:
                    for i in range(50):
                        cp.write_row((first + i, i % 10, "copy %d" % (first + i)))
                c.execute("DELETE FROM items WHERE id IN (SELECT id FROM items WHERE grp = %s "
                          "ORDER BY id LIMIT 3)", [r.randrange(10)])
            elif op < 0.47:  # a large transaction
                first = self.next_id
                n = 3000 if not FULL else 10000
                self.next_id += n
                c.execute("INSERT INTO big SELECT g, repeat('b', 40) FROM generate_series(%s, %s) g",
                          [first, first + n - 1])
                c.execute("DELETE FROM big WHERE id %% 97 = 0 AND id < %s", [first])
            elif op < 0.62:  # TOAST: the big column unchanged
                c.execute("UPDATE toast SET n = n + 1 WHERE id = %s", [r.randint(1, 30)])
            elif op < 0.80:  # keyless FULL: duplicates in, one of them out
                k = r.randrange(20)
                c.execute("INSERT INTO kl VALUES (%s, 'dup'), (%s, 'dup')", [k, k])
                c.execute("DELETE FROM kl WHERE ctid = (SELECT ctid FROM kl WHERE id = %s "
                          "LIMIT 1)", [r.randrange(20)])
            elif op < 0.84:  # TRUNCATE and refill
                c.execute("TRUNCATE trunc")
                c.execute("INSERT INTO trunc SELECT g, %s FROM generate_series(1, 20) g",
                          ["after truncate %d" % self.commits])
            elif op < 0.92 or not self.ddl:
                c.execute("INSERT INTO ddl (id, v) VALUES (%s, 'x')", [self.next_id])
                c.execute("INSERT INTO pubx VALUES (%s, 'x')", [self.next_id])
                self.next_id += 1
            elif op < 0.96:  # DDL that the destination follows
                n = self.ddl_cols + 1
                c.execute("ALTER TABLE ddl ADD COLUMN c%d int DEFAULT %d" % (n, n))
                if n > 2:
                    c.execute("ALTER TABLE ddl DROP COLUMN c%d" % (n - 2))
            else:  # the publication loses or regains a table
                c.execute("ALTER PUBLICATION pub %s TABLE pubx" % (
                    "DROP" if self.pubx_in else "ADD"))
        # committed: what the catalog now holds (read back, so that a commit whose answer
        # was lost with the connection is counted too)
        if self.ddl and op >= 0.92:
            self._read_state(c)

    def _read_state(self, c):
        """ddl_cols and pubx_in from the catalog."""
        cols = [r[0] for r in c.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'ddl'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attname ~ '^c[0-9]+$'").fetchall()]
        self.ddl_cols = max([int(x[1:]) for x in cols], default=0)
        self.pubx_in = c.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'pub' AND "
            "schemaname = 'public' AND tablename = 'pubx')").fetchone()[0]

    def run(self):
        c = None
        while not self._stop_ev.is_set():
            try:
                if c is None or c.closed:
                    c = self.db.connect(autocommit=True)
                    if self.ddl:
                        self._read_state(c)  # a transaction may have failed mid-way
                self._txn(c)
                self.commits += 1
                if self.pause:
                    time.sleep(self.pause)
            except psycopg.OperationalError:
                self.retries += 1  # the source is away: try again later
                try:
                    if c is not None:
                        c.close()
                except psycopg.Error:
                    pass
                c = None
                time.sleep(0.5)
            except psycopg.Error as e:
                self.error = e
                break
        if c is not None:
            try:
                c.close()
            except psycopg.Error:
                pass

    def wait_commits(self, n, timeout=60):
        target = self.commits + n
        end = time.monotonic() + timeout * SCALE
        while self.commits < target:
            assert self.error is None and self.is_alive(), "writer died: %r" % self.error
            assert time.monotonic() < end, "writer made %d of %d commits" % (
                self.commits - target + n, n)
            time.sleep(0.05)

    def stop(self):
        self._stop_ev.set()
        self.join(120)
        assert self.error is None, "writer failed: %r" % self.error
        if self.ddl and not self.pubx_in:  # every table published at the end
            self.db.execute("ALTER PUBLICATION pub ADD TABLE pubx")
            self.pubx_in = True


# -- `walrelay run` as a service manager runs it ---------------------------------------------

class Service:
    """Keeps `walrelay run DIR` running as systemd's Restart=on-failure would: started again
    whenever it exits with anything but 0 (a stop) and 2 (a problem a person must fix,
    which fails the scenario)."""

    def __init__(self, p):
        self.p = p
        self.starts = 0
        self.exits = []

    def start(self):
        self.p.start(wait_status=False)
        self.starts += 1

    def ensure(self):
        """Starts it again if it exited; returns True if it had."""
        if self.p.proc is not None and self.p.proc.poll() is None:
            return False
        rc = self.p.proc.returncode if self.p.proc is not None else None
        self.exits.append(rc)
        self.p.kill()  # closes its log
        assert rc != 2, "walrelay run exited 2 (it will not be restarted)%s" % self.p.log_tail()
        self.start()
        return True

    def kill(self):
        """kill -9 of the supervisor; its workers see the end of their channel."""
        pid = self.p.proc.pid
        self.p.killed_pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        self.p.proc.wait(30)
        self.p.kill()

    def wait_status(self, timeout=60):
        return self.p.wait_until(lambda: self.p.status(), timeout, "walrelay run answers status")


def worker_pids(p):
    """{pid: "apply" | "sync"} of the pipeline's live workers, from /proc (no status needed:
    the supervisor may be down)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or argv[1].decode(errors="replace") != p.dir:
            continue
        exe = os.path.basename(argv[0].decode(errors="replace"))
        if exe in ("walrelay-apply", "walrelay-sync"):
            out[int(d)] = exe[len("walrelay-"):]
    return out


# -- a TCP proxy whose port can be black-holed: tests/integration/netcut.py ------------------

# -- small file systems ---------------------------------------------------------------------

class Tmpfs:
    """A tmpfs of `size` mounted at path (created), resized with grow(); unmounted at
    close()."""

    def __init__(self, path, size):
        os.makedirs(path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs",
                            path], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("mount tmpfs: %s" % r.stderr.strip())
        self.path = path

    def grow(self, size):
        r = subprocess.run(["mount", "-o", "remount,size=%s" % size, self.path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("remount: %s" % r.stderr.strip())

    def close(self):
        for _ in range(50):
            r = subprocess.run(["umount", self.path], capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        subprocess.run(["umount", "-l", self.path], capture_output=True)


def tmpfs_usable(tmp):
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        t = Tmpfs(os.path.join(str(tmp), "probe-tmpfs"), "1m")
    except (RuntimeError, OSError) as e:
        return str(e)
    t.close()
    return None


def fill(path, chunk=1 << 20):
    """Writes into path until the file system is full; returns the bytes written."""
    n = 0
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * chunk)
                f.flush()
                n += chunk
        except OSError:
            pass
    return n


def slots_of(db, name):
    return db.slots("walrelay_%s" % name)


def log_since(p, offset):
    return p.log_text()[offset:]


def first_match_time(text, pattern):
    """Timestamp (epoch seconds) of the first log line matching pattern, or None."""
    import datetime
    for line in text.splitlines():
        if re.search(pattern, line):
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
            if m:
                return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
    return None


__all__ = ["FULL", "figure", "OwnServer", "MIX_TABLES", "create_mix", "MixWriter", "Service",
           "worker_pids", "Proxy", "tc_usable", "Tmpfs", "tmpfs_usable", "fill", "slots_of",
           "first_match_time", "alive_walrelay_pids", "deadline", "SCALE"]
