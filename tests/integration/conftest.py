"""Fixtures for the integration tests, in pgbouncer's style.

NOTES:
  pg_servers  session: a factory of throwaway PostgreSQL 15 servers, one per wal_level,
              started on first use and stopped (pg_ctl stop -m immediate) at the end
  pg          session: the wal_level=logical server most tests use
  pg_target   session: a second cluster, the target of the postgres destination
  target_db   per test: a fresh database on pg_target
  destination per test: None (sqlite) or target_db (postgres), parametrised indirectly
  db          per test: a fresh database test_<n> on pg, dropped afterwards together with
              any replication slot left in it
  installed   session: `meson install --destdir` of the build under test (the public
              headers, their .pc files, the installed walrelay and its workers), for the
              examples built out of tree (test_example_plugin.py, test_example_store.py)
  pipelines   per test: a factory of Pipeline objects (config directories in the test's
              tmp dir). Afterwards every pipeline is stopped, and the test fails if a
              walrelay process outlived it, a sync slot outlived a pipeline whose
              tables all became ready, or its log shows a crash the test did not cause
              (a sanitizer report, a worker killed by a signal other than the test's).
"""

import glob
import os
import pathlib
import subprocess
import time

import psycopg
import pytest

from pgserver import PgServer
from pipeline import Pipeline, alive_walrelay_pids, deadline

REPO = pathlib.Path(__file__).resolve().parents[2]
_BUILD = pathlib.Path(os.environ.get("WALRELAY_BUILD", "build"))
BINDIR = str(_BUILD if _BUILD.is_absolute() else REPO / _BUILD)


@pytest.fixture(scope="session")
def bindir():
    for exe in ("walrelay", "walrelay-apply", "walrelay-sync"):
        path = os.path.join(BINDIR, exe)
        assert os.access(path, os.X_OK), "%s is missing: run scripts/build.sh" % path
    return BINDIR


@pytest.fixture(scope="session")
def installed(bindir, tmp_path_factory):
    """(destdir, bindir of the installed walrelay, env for pkg-config into the destdir)."""
    destdir = tmp_path_factory.mktemp("install")
    r = subprocess.run(["meson", "install", "-C", bindir, "--no-rebuild", "--quiet",
                        "--destdir", str(destdir)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "meson install failed:\n%s\n%s" % (r.stdout, r.stderr)
    for pc in ("walrelay-destination.pc", "walrelay-store.pc"):
        pcs = glob.glob(str(destdir / "**" / pc), recursive=True)
        assert len(pcs) == 1, "meson install wrote no (or several) %s: %r" % (pc, pcs)
    for h in ("destination.h", "store.h"):
        headers = glob.glob(str(destdir / "**" / "include" / "walrelay" / h), recursive=True)
        assert len(headers) == 1, "meson install did not install walrelay/%s: %r" % (h, headers)
    exes = glob.glob(str(destdir / "**" / "bin" / "walrelay"), recursive=True)
    assert len(exes) == 1, "meson install did not install walrelay: %r" % exes
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]),
               PKG_CONFIG_SYSROOT_DIR=str(destdir))
    return destdir, os.path.dirname(exes[0]), env


@pytest.fixture(scope="session")
def pg_servers():
    servers = {}

    def get(wal_level="logical"):
        if wal_level not in servers:
            servers[wal_level] = PgServer(wal_level=wal_level).start()
        return servers[wal_level]

    yield get
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="session")
def pg(pg_servers):
    return pg_servers("logical")


@pytest.fixture(scope="session")
def pg_target():
    """A second PostgreSQL 15 cluster (its own data directory, port and processes) that the
    postgres destination writes into: never the source cluster."""
    s = PgServer(wal_level="replica").start()
    yield s
    s.stop()


class Db:
    """One test database on a server."""

    def __init__(self, server, name):
        self.server = server
        self.name = name

    @property
    def conninfo(self):
        return self.server.conninfo(self.name)

    def connect(self, autocommit=True):
        return self.server.connect(self.name, autocommit=autocommit)

    def execute(self, sql, params=None):
        """One statement (or, without params, several separated by semicolons)."""
        return self.server.execute(sql, params, dbname=self.name)

    def scalar(self, sql, params=None):
        return self.execute(sql, params)[0][0]

    def relid(self, table):
        """Oid of "nsp.name" (or "name" in public)."""
        nsp, name = table.split(".", 1) if "." in table else ("public", table)
        return int(self.scalar("SELECT format('%%I.%%I', %s::text, %s::text)::regclass::oid",
                               [nsp, name]))

    def count(self, table):
        nsp, name = table.split(".", 1) if "." in table else ("public", table)
        return self.scalar('SELECT count(*) FROM "%s"."%s"' % (nsp, name))

    def slots(self, prefix="walrelay_"):
        return self.server.slots(prefix, dbname=self.name)

    def current_wal_lsn(self):
        return self.server.current_wal_lsn()


def _db(server):
    name = server.create_database()
    d = Db(server, name)
    yield d
    server.drop_database(name)


@pytest.fixture
def db(pg):
    yield from _db(pg)


@pytest.fixture
def target_db(pg_target):
    """A fresh database on the target cluster for one test (the postgres destination's)."""
    yield from _db(pg_target)


@pytest.fixture
def destination(request):
    """The destination of the pipelines a test makes: "sqlite" (the default: None) or
    "postgres" (the test's target_db). Suites parametrise it indirectly:
    @pytest.mark.parametrize("destination", ["sqlite", "postgres"], indirect=True)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        return None
    assert kind == "postgres", kind
    return request.getfixturevalue("target_db")


@pytest.fixture
def db_factory(pg_servers):
    """Databases on other servers: db_factory("replica")."""
    made = []

    def make(wal_level="logical"):
        server = pg_servers(wal_level)
        d = Db(server, server.create_database())
        made.append(d)
        return d

    yield make
    for d in made:
        d.server.drop_database(d.name)


_pipeline_seq = [0]


@pytest.fixture(scope="session")
def state_db(pg):
    """A database on the test server that holds PostgreSQL state stores ([state] backend =
    postgres); pipelines share it, keyed by their (session-unique) names."""
    d = Db(pg, pg.create_database())
    yield d
    pg.drop_database(d.name)


@pytest.fixture
def state_store(request, bindir):
    """The state backend of the pipelines a test makes: "sqlite" (the default),
    "postgres", or "plugin" (the example store examples/store-onefile as the build under
    test builds it, with path = state.txt in each pipeline's directory). Suites parametrise
    it indirectly: @pytest.mark.parametrize("state_store", STORES, indirect=True)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        return None
    if backend == "plugin":
        so = os.path.join(bindir, "tests", "unit", "walrelay-onefile.so")
        assert os.path.isfile(so), "%s is missing: run scripts/build.sh" % so
        return "plugin:" + so
    assert backend == "postgres", backend
    return "postgres:" + request.getfixturevalue("state_db").conninfo


@pytest.fixture
def pipelines(bindir, pg, db, tmp_path, state_store, destination):
    """make(name=None) -> Pipeline in tmp_path/<name>; name defaults to wr<n> (unique in
    the session, so slot names never collide)."""
    made = []

    def make(name=None, dirname=None):
        _pipeline_seq[0] += 1
        name = name or "wr%d" % _pipeline_seq[0]
        d = tmp_path / (dirname or name)
        p = Pipeline(bindir, d, name, tmp_path / ("%s.log" % (dirname or name)))
        p.state_spec = state_store
        p.target = destination
        if state_store and state_store.startswith("plugin:"):
            p.state_config = {"state": {"path": "state.txt"}}
        made.append(p)
        return p

    yield make

    problems = []
    for p in made:
        problems += _finish_pipeline(p, db)
    if problems:
        pytest.fail("after the test:\n  " + "\n  ".join(problems), pytrace=False)


def _finish_pipeline(p, db):
    problems = []
    sync_prefix = "walrelay_%s_s" % p.name
    # 1. A pipeline whose tables all became ready keeps no sync slot (the sync worker
    #    drops its own; the apply worker drops those of killed sync workers).
    if p.running() and p.reached_ready:
        end = deadline(20)
        while db.slots(sync_prefix) and time.monotonic() < end:
            time.sleep(0.2)
        left = db.slots(sync_prefix)
        if left:
            problems.append("pipeline %s: sync slots left after all tables were ready: %s"
                            % (p.name, left))
    # 2. Always stop it.
    if p.running():
        try:
            p.status()  # learn the current worker pids for the leak check
        except AssertionError:
            pass
        try:
            rc = p.stop(timeout=60)
            if rc not in (0, None):
                problems.append("pipeline %s: walrelay run exited with %s after walrelay stop%s"
                                % (p.name, rc, p.log_tail(20)))
        except AssertionError as e:
            problems.append("pipeline %s: %s" % (p.name, e))
            p.kill()
    else:
        p.kill()  # closes the log; no-op if it exited
    # 3. No walrelay process of it outlives it (workers exit on EOF from the supervisor).
    end = deadline(15)
    while alive_walrelay_pids(p.seen_pids) and time.monotonic() < end:
        time.sleep(0.1)
    alive = alive_walrelay_pids(p.seen_pids)
    if alive:
        problems.append("pipeline %s: walrelay processes still running after stop: %s"
                        % (p.name, alive))
        for pid in alive:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    # 4. A crash the test did not cause fails it, even if the supervisor restarted the
    #    worker and the data came out right.
    crashes = p.unexpected_crashes()
    if crashes:
        problems.append("pipeline %s: unexpected crash in the log:\n    %s"
                        % (p.name, "\n    ".join(crashes[:10])))
    # 5. Cleanup for the next test (the apply slot survives a stop on purpose).
    try:
        db.server.drop_slots("walrelay_%s" % p.name, dbname=db.name)
    except (RuntimeError, psycopg.Error) as e:
        problems.append("pipeline %s: could not drop its slots: %s" % (p.name, e))
    return problems
