"""A throwaway PostgreSQL 15 server for the integration tests.

NOTES: used by conftest.py (session fixtures) and nothing else. Each server lives in its
own temporary directory (data, socket, log) and listens on a free 127.0.0.1 port. When
the tests run as root, initdb and the server run as the "postgres" user (PostgreSQL
refuses to run as root); the superuser is always called "postgres" and trusts local
connections. The settings trade durability for speed: never use them for real data.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg

PG_BIN = os.environ.get("WALRELAY_PG_BIN", "/usr/lib/postgresql/15/bin")


def free_port():
    """A TCP port nobody listens on right now (there is a small race; good enough)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lsn_to_int(lsn):
    """'16/B374D848' -> int; ints pass through; None -> 0."""
    if lsn is None:
        return 0
    if isinstance(lsn, int):
        return lsn
    hi, lo = str(lsn).split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class PgServer:
    """One initdb'ed cluster. start() and stop() are idempotent."""

    def __init__(self, wal_level="logical", extra_conf=None):
        self.wal_level = wal_level
        self.extra_conf = dict(extra_conf or {})
        self.port = None
        self.tmp = None
        self.datadir = None
        self.logfile = None
        self.running = False
        self._as_postgres = os.geteuid() == 0
        self._dbseq = 0

    # -- process control ------------------------------------------------------------

    def _run(self, argv, **kw):
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=kw.pop("timeout", 120),
            **kw,
        )

    def _check(self, what, r):
        if r.returncode != 0:
            raise RuntimeError(
                "%s failed (exit %d):\n%s%s"
                % (what, r.returncode, r.stdout.decode("utf-8", "replace"), self.log_tail())
            )

    def start(self):
        if self.running:
            return self
        self.tmp = tempfile.mkdtemp(prefix="walrelay-pg-")
        os.chmod(self.tmp, 0o755)
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        self.datadir = os.path.join(self.tmp, "data")
        self.logfile = os.path.join(self.tmp, "postgresql.log")
        self._check(
            "initdb",
            self._run(
                [
                    os.path.join(PG_BIN, "initdb"),
                    "-D", self.datadir,
                    "-U", "postgres",
                    "-A", "trust",
                    "-E", "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
        )
        self.port = free_port()
        conf = {
            "wal_level": self.wal_level,
            "max_replication_slots": "64",
            "max_wal_senders": "64",
            "max_connections": "200",
            "fsync": "off",  # test speed only
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "'%s'" % self.tmp,
            "wal_sender_timeout": "60s",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_min_messages": "warning",
            "log_replication_commands": "on",
        }
        conf.update(self.extra_conf)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            f.write("\n# walrelay integration tests\n")
            for k, v in conf.items():
                f.write("%s = %s\n" % (k, v))
        self._check(
            "pg_ctl start",
            self._run(
                [
                    os.path.join(PG_BIN, "pg_ctl"),
                    "-D", self.datadir,
                    "-l", self.logfile,
                    "-w", "-t", "60",
                    "start",
                ]
            ),
        )
        self.running = True
        return self

    def shutdown(self, mode="fast"):
        """Stops the server but keeps its data directory (start_again() brings it back on
        the same port): a database going away under its clients."""
        if self.running:
            self._check("pg_ctl stop", self._run(
                [os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"]))
            self.running = False

    def start_again(self):
        """Starts a server stopped with shutdown()."""
        if not self.running:
            self._check("pg_ctl start", self._run(
                [os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
                 "-w", "-t", "60", "start"]))
            self.running = True

    def stop(self):
        if self.running:
            self._run(
                [os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-m", "immediate", "-w", "stop"]
            )
            self.running = False
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def halt(self, mode="fast"):
        """Stops the server and keeps its data (pg_ctl stop -m mode: smart, fast or
        immediate); resume() starts it again on the same port (the chaos and outage tests)."""
        if self.running:
            self._check("pg_ctl stop -m %s" % mode, self._run(
                [os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "-t", "60",
                 "stop"]))
            self.running = False

    def resume(self):
        if not self.running:
            self._check("pg_ctl start", self._run(
                [os.path.join(PG_BIN, "pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w",
                 "-t", "60", "start"]))
            self.running = True
        return self

    def log_tail(self, n=40):
        try:
            with open(self.logfile, "r", errors="replace") as f:
                lines = f.readlines()
        except (OSError, TypeError):
            return ""
        return "\n--- postgresql.log (last %d lines) ---\n%s" % (n, "".join(lines[-n:]))

    # -- connections ---------------------------------------------------------------

    def conninfo(self, dbname="postgres", **extra):
        parts = ["host=127.0.0.1", "port=%d" % self.port, "user=postgres", "dbname=%s" % dbname]
        parts += ["%s=%s" % kv for kv in extra.items()]
        return " ".join(parts)

    def connect(self, dbname="postgres", autocommit=True):
        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit, connect_timeout=10)

    def execute(self, sql, params=None, dbname="postgres"):
        with self.connect(dbname) as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def create_database(self):
        """CREATE DATABASE test_<n>; returns its name."""
        self._dbseq += 1
        name = "test_%d" % self._dbseq
        self.execute('CREATE DATABASE "%s"' % name)
        return name

    def drop_database(self, name):
        # walrelay slots of that database must be gone first (DROP DATABASE refuses)
        self.drop_slots(dbname=name)
        self.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)

    # -- replication slots ---------------------------------------------------------

    def slots(self, prefix="walrelay_", dbname=None):
        """Names of slots starting with prefix (optionally only those of one database)."""
        sql = "SELECT slot_name FROM pg_replication_slots WHERE starts_with(slot_name, %s)"
        params = [prefix]
        if dbname is not None:
            sql += " AND database = %s"
            params.append(dbname)
        return sorted(r[0] for r in self.execute(sql + " ORDER BY 1", params))

    def drop_slots(self, prefix="walrelay_", dbname=None, timeout=10):
        """Terminates whoever holds them, then drops every matching slot."""
        deadline = time.monotonic() + timeout
        while True:
            names = self.slots(prefix, dbname)
            if not names:
                return
            for n in names:
                try:
                    self.execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                        " WHERE slot_name = %s AND active_pid IS NOT NULL",
                        [n],
                    )
                    self.execute("SELECT pg_drop_replication_slot(%s)", [n])
                except psycopg.Error:
                    pass  # still active for a moment: retry
            if time.monotonic() > deadline:
                raise RuntimeError("could not drop replication slots %s" % self.slots(prefix, dbname))
            time.sleep(0.1)

    def current_wal_lsn(self):
        # the insert position: with synchronous_commit=off the write position can still
        # be behind the commit just made
        return lsn_to_int(self.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0])
