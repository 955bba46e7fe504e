"""The event store outside a pipeline: the C API on PostgreSQL, the installed library,
`walrelay init --destination eventstore:...`, and the error cases of `walrelay events`.

NOTES: the C unit tests (tests/unit/test_eventstore.c) run here once more with
WALRELAY_TEST_ES_PG set to a database of the session's server, so every API case also
runs on PostgreSQL. The library is installed with `meson install --destdir` and a small
C program is built against the installed walrelay/eventstore.h and walrelay-eventstore.pc
alone, then run. The CLI error cases need no running pipeline: a directory with a
walrelay.conf is enough.
"""

import ctypes
import glob
import json
import os
import pathlib
import subprocess

import pytest

from pipeline import run_walrelay
from test_eventstore_helpers import parse_lines

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_c_api_on_postgres(bindir, pg):
    dbname = pg.create_database()
    try:
        exe = os.path.join(bindir, "tests", "unit", "test_eventstore")
        r = subprocess.run([exe], env=dict(os.environ, WALRELAY_TEST_ES_PG=pg.conninfo(dbname)),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "# postgres\n" in r.stdout, r.stdout
        before, after = r.stdout.split("# postgres\n", 1)
        sqlite = before.split("# sqlite\n", 1)[1]
        # every test of the sqlite run ran on postgres too, and passed
        assert after.count("ok - ") == sqlite.count("ok - ") >= 9, r.stdout
        assert "not ok" not in after, r.stdout
    finally:
        pg.drop_database(dbname)


# -- the shared library ----------------------------------------------------------------

def test_shared_library_exports_only_the_api(bindir):
    so = os.path.join(bindir, "libwalrelay-eventstore.so")
    r = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True, text=True,
                       check=True)
    syms = sorted(line.split()[-1] for line in r.stdout.splitlines() if " T " in line)
    assert syms and all(s.startswith("wr_es_") for s in syms), syms
    for want in ("wr_es_open", "wr_es_close", "wr_es_stream_version", "wr_es_append",
                 "wr_es_append_expecting_new", "wr_es_load_each", "wr_es_load_events",
                 "wr_es_event_list_free"):
        assert want in syms, (want, syms)


class EsVersion(ctypes.Structure):
    _fields_ = [("set", ctypes.c_bool), ("position", ctypes.c_int64)]


class EsExpect(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("position", ctypes.c_int64)]


class EsNewEvent(ctypes.Structure):
    _fields_ = [("event_kind", ctypes.c_char_p), ("data", ctypes.c_char_p),
                ("data_len", ctypes.c_size_t), ("metadata", ctypes.c_char_p)]


class EsAppendResult(ctypes.Structure):
    _fields_ = [("first_position", ctypes.c_int64), ("last_position", ctypes.c_int64),
                ("expected", EsVersion), ("actual", EsVersion), ("conflict_reason", ctypes.c_int)]


class EsError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 1024),
                ("hint", ctypes.c_char * 512)]


SANITIZED = os.environ.get("WALRELAY_BUILD", "build").rstrip("/").endswith("build-asan")
NEEDS_PLAIN_BUILD = pytest.mark.skipif(
    SANITIZED, reason="the sanitizer build's libwalrelay-eventstore.so needs the ASan runtime "
    "in the process that loads it; this ABI test runs with the normal build (the library's "
    "own tests run under ASan as asan-test_eventstore)")


def _lib(bindir):
    """libwalrelay-eventstore.so with the prototypes of walrelay/eventstore.h."""
    lib = ctypes.CDLL(os.path.join(bindir, "libwalrelay-eventstore.so"))
    P = ctypes.c_void_p
    lib.wr_es_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(P), P]
    lib.wr_es_close.argtypes = [P]
    lib.wr_es_close.restype = None
    lib.wr_es_head.argtypes = [P, ctypes.POINTER(ctypes.c_int64), P]
    lib.wr_es_append.argtypes = [P, ctypes.c_char_p, ctypes.c_char_p, EsExpect, P,
                                 ctypes.c_size_t, P, P]
    lib.wr_es_append_expecting_new.argtypes = [P, ctypes.c_char_p, ctypes.c_char_p, P,
                                               ctypes.c_size_t, P, P]
    return lib


@NEEDS_PLAIN_BUILD
def test_empty_append_through_the_shared_library(bindir, tmp_path):
    """Called as another language would: an empty append is EMPTY_APPEND and uses no
    position; a conflict reports {expected, actual}."""
    lib = _lib(bindir)
    err = EsError()
    st = ctypes.c_void_p()
    spec = ("sqlite:%s" % (tmp_path / "api.db")).encode()
    assert lib.wr_es_open(spec, 1, ctypes.byref(st), ctypes.byref(err)) == 0, err.message
    res = EsAppendResult()
    ev = EsNewEvent(b"opened", b'{"a":1}', 7, None)
    none = EsExpect(1, 0)
    head = ctypes.c_int64(-1)
    # WR_ES_EMPTY_APPEND = 1, no position used
    assert lib.wr_es_append(st, b"acct", b"1", none, ctypes.byref(ev), 0, ctypes.byref(res),
                            ctypes.byref(err)) == 1
    assert lib.wr_es_head(st, ctypes.byref(head), ctypes.byref(err)) == 0 and head.value == 0
    assert lib.wr_es_append(st, b"acct", b"1", none, ctypes.byref(ev), 1, ctypes.byref(res),
                            ctypes.byref(err)) == 0
    assert (res.first_position, res.last_position) == (1, 1)
    # expecting new again: WR_ES_CONFLICT = 2 with {none, 1}
    assert lib.wr_es_append_expecting_new(st, b"acct", b"1", ctypes.byref(ev), 1,
                                          ctypes.byref(res), ctypes.byref(err)) == 2
    assert (res.expected.set, res.actual.set, res.actual.position) == (False, True, 1)
    lib.wr_es_close(st)


@pytest.fixture(scope="module")
def installed_es(bindir, tmp_path_factory):
    destdir = tmp_path_factory.mktemp("install-es")
    r = subprocess.run(["meson", "install", "-C", bindir, "--no-rebuild", "--quiet",
                        "--destdir", str(destdir)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "meson install failed:\n%s\n%s" % (r.stdout, r.stderr)
    pcs = glob.glob(str(destdir / "**" / "walrelay-eventstore.pc"), recursive=True)
    assert len(pcs) == 1, "meson install wrote no walrelay-eventstore.pc: %r" % pcs
    hdrs = glob.glob(str(destdir / "**" / "include" / "walrelay" / "eventstore.h"), recursive=True)
    assert len(hdrs) == 1, hdrs
    libs = glob.glob(str(destdir / "**" / "libwalrelay-eventstore.so*"), recursive=True)
    assert libs, "meson install did not install libwalrelay-eventstore.so"
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]),
               PKG_CONFIG_SYSROOT_DIR=str(destdir))
    return destdir, env, os.path.dirname(libs[0])


PROGRAM = r"""
#include <walrelay/eventstore.h>
#include <stdio.h>
#include <string.h>

static int
show(void *arg, const wr_es_event_t *ev)
{
    (void)arg;
    printf("%lld %s %s %s %lld %s\n", (long long)ev->position, ev->aggregate_kind,
           ev->aggregate_id, ev->event_kind, (long long)ev->stream_version, ev->data);
    return 0;
}

int
main(int argc, char **argv)
{
    wr_es_store_t *s;
    wr_es_error_t e;
    wr_es_append_result_t r;
    wr_es_new_event_t ev[2] = {{"opened", "{\"owner\":\"ann\"}", 15, NULL},
                               {"deposited", "10", 2, "{\"by\":\"teller\"}"}};
    wr_es_expect_t none = {WR_ES_EXPECT_NONE, 0};
    wr_es_filter_t f[2] = {{"opened", NULL, NULL, false, 0}, {"deposited", "account", "A-1", true, 1}};
    wr_es_version_t v;
    int64_t n;

    if (argc < 2 || wr_es_open(argv[1], WR_ES_OPEN_CREATE, &s, &e) != WR_ES_OK) {
        fprintf(stderr, "open: %s\n", argc < 2 ? "usage" : e.message);
        return 1;
    }
    if (wr_es_append(s, "account", "A-1", none, ev, 2, &r, &e) != WR_ES_OK)
        return 2;
    if (wr_es_stream_version(s, "account", "A-1", &v, &n, &e) != WR_ES_OK || !v.set)
        return 3;
    printf("version %lld count %lld\n", (long long)v.position, (long long)n);
    if (wr_es_load_each(s, f, 2, 0, show, NULL, &e) != WR_ES_OK)
        return 4;
    wr_es_close(s);
    return 0;
}
"""


@NEEDS_PLAIN_BUILD
def test_installed_library_builds_and_runs(installed_es, tmp_path):
    destdir, env, libdir = installed_es
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "walrelay-eventstore"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert str(REPO / "include") not in " ".join(flags), flags
    src = tmp_path / "es.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "es"
    r = subprocess.run(["cc", "-std=c11", "-pedantic", "-Wall", "-Wextra", "-Werror", str(src),
                        "-o", str(exe)] + flags, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "sqlite:%s" % (tmp_path / "lib.db")], capture_output=True,
                       text=True, env=dict(os.environ, LD_LIBRARY_PATH=libdir), timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.splitlines() == [
        "version 2 count 2",
        '1 account A-1 opened 1 {"owner":"ann"}',
        "2 account A-1 deposited 2 10"], r.stdout
    # and the header is also C++
    r = subprocess.run(["g++", "-x", "c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror",
                        "-"] + [f for f in flags if f.startswith("-I")],
                       input="#include <walrelay/eventstore.h>\nint main() { return 0; }\n",
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


# -- walrelay init ---------------------------------------------------------------------

def _conf(d):
    with open(os.path.join(d, "walrelay.conf")) as f:
        return f.read()


def test_init_destination_forms(bindir, db, tmp_path):
    d = tmp_path / "a"
    r = run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                     "--destination", "eventstore:sqlite:%s/ev.db" % tmp_path)
    assert r.rc == 0, r
    conf = _conf(d)
    assert "type = eventstore" in conf and "store = sqlite" in conf, conf
    assert "path = %s/ev.db" % tmp_path in conf
    d = tmp_path / "b"
    r = run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                     "--destination", "eventstore:postgres:host=127.0.0.1 dbname=x password=sekrit")
    assert r.rc == 0, r
    conf = _conf(d)
    assert "store = postgres" in conf and "conninfo = host=127.0.0.1 dbname=x" in conf, conf
    assert "\npath =" not in conf, conf
    assert "sekrit" not in r.text
    for bad, what in (("eventstore:mysql:x", "sqlite or postgres"),
                      ("eventstore:sqlite:", "path is empty"),
                      ("eventstore:postgres:", "conninfo is empty")):
        r = run_walrelay(bindir, "init", tmp_path / "bad", "--source", db.conninfo,
                         "--publication", "pub", "--destination", bad)
        assert r.rc == 2 and what in r.err, r
        assert not (tmp_path / "bad" / "walrelay.conf").exists()


def test_check_names_an_unreachable_store_without_its_password(bindir, db, tmp_path):
    d = tmp_path / "p"
    run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                 "--destination", "eventstore:postgres:host=127.0.0.1 port=1 dbname=x "
                                  "password=sekrit")
    db.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t")
    r = run_walrelay(bindir, "check", d)
    assert r.rc == 2, r
    assert "event store" in r.text and "sekrit" not in r.text, r


# -- walrelay events: error cases ---------------------------------------------------------

@pytest.fixture
def es_dir(bindir, db, tmp_path):
    """A pipeline directory whose destination is a SQLite event store (not created: the
    arguments are checked before the store is opened)."""
    d = tmp_path / "p"
    r = run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                     "--destination", "eventstore:sqlite:%s/events.db" % d)
    assert r.rc == 0, r
    return str(d)


def _ev(bindir, d, *args):
    return run_walrelay(bindir, "events", d, *args)


@pytest.mark.parametrize("flt,msg", [
    ("aggregate_kind=public.t", "event_kind is required"),
    ("event_kind=insert,colour=red", 'unknown key "colour"'),
    ("event_kind", "is not KEY=VALUE"),
    ("event_kind=insert,after=ten", "after=ten is not a position"),
    ("event_kind=insert,after=-1", "negative"),
    ("event_kind=insert,after=1,after=2", "after is given twice"),
    ("event_kind=insert,event_kind=update", "event_kind is given twice"),
    ("event_kind=", "has an empty value"),
    ('event_kind=insert,aggregate_id=["1"', "not a closed JSON array"),
])
def test_bad_filter_syntax(bindir, es_dir, flt, msg):
    for verb in (["load"], ["tail", "--follow"]):
        r = _ev(bindir, es_dir, *verb, "--filter", flt)
        assert r.rc == 2 and msg in r.err and r.out == "", r
        assert "hint: --filter 'event_kind=K" in r.err


def test_cli_usage_errors(bindir, es_dir):
    cases = [
        ((), "missing the subcommand"),
        (("frob",), 'unknown subcommand "frob"'),
        (("load", "--limit", "0", "--filter", "event_kind=x"), "--limit 0"),
        (("load", "--filter"), "needs a value"),
        (("load", "extra"), 'unexpected argument "extra"'),
        (("load", "--expect", "none"), 'unknown option "--expect"'),
        (("tail", "--follow"), "at least one --filter"),
        (("tail", "--filter", "event_kind=x", "--after", "-3"), "--after -3"),
        (("version", "public.t"), "needs AGGREGATE_KIND and AGGREGATE_ID"),
        (("append", "k", "1", "--event", "e", "--data", "{}"), "needs --expect"),
        (("append", "k", "1", "--expect", "maybe", "--event", "e", "--data", "{}"),
         "--expect maybe"),
        (("append", "k", "1", "--expect", "0", "--event", "e", "--data", "{}"), "--expect 0"),
        (("append", "k", "1", "--expect", "none", "--event", "e", "--data", "{x"),
         "--data is not JSON"),
        (("append", "k", "1", "--expect", "none", "--event", "e", "--data", "{}",
          "--metadata", "[1]"), "--metadata must be a JSON object"),
    ]
    for args, msg in cases:
        r = _ev(bindir, es_dir, *args)
        assert r.rc == 2 and msg in r.err and r.out == "", r


def test_cli_unknown_directory_and_missing_stores(bindir, db, tmp_path, pg, pipelines):
    # an unknown directory
    r = _ev(bindir, tmp_path / "nowhere", "load", "--filter", "event_kind=insert")
    assert r.rc == 2 and "nowhere/walrelay.conf" in r.err and r.out == "", r
    # a pipeline whose destination is not an event store
    d = tmp_path / "tables"
    run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub")
    r = _ev(bindir, d, "load", "--filter", "event_kind=insert")
    assert r.rc == 2 and "not an event store" in r.err, r
    # a SQLite store that is not there (the pipeline never ran): nothing is created
    d = tmp_path / "never"
    run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                 "--destination", "eventstore:sqlite:%s/ev.db" % d)
    for args in (("load", "--filter", "event_kind=insert"), ("version", "k", "1"),
                 ("append", "k", "1", "--expect", "any", "--event", "e", "--data", "1")):
        r = _ev(bindir, d, *args)
        assert r.rc == 1 and "ev.db" in r.err and "no such file" in r.err, r
    assert not (d / "ev.db").exists()
    # a PostgreSQL database without the store's tables, and one that cannot be reached
    empty = pg.create_database()
    try:
        d = tmp_path / "pgempty"
        run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                     "--destination", "eventstore:postgres:" + pg.conninfo(empty))
        r = _ev(bindir, d, "version", "k", "1")
        assert r.rc == 1 and "no event store there" in r.err, r
        assert pg.execute("SELECT to_regclass('es_events')", dbname=empty)[0][0] is None
    finally:
        pg.drop_database(empty)
    d = tmp_path / "pgdown"
    run_walrelay(bindir, "init", d, "--source", db.conninfo, "--publication", "pub",
                 "--destination", "eventstore:postgres:host=127.0.0.1 port=1 password=sekrit")
    r = _ev(bindir, d, "load", "--filter", "event_kind=x")
    assert r.rc == 1 and "cannot connect" in r.err and "sekrit" not in r.text, r
    # and a store that is there (made by a pipeline's first run): an empty result, a
    # stream without events, an append
    db.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t")
    p = pipelines()
    p.init(db.conninfo, "pub", destination="eventstore:sqlite:%s/events.db" % p.dir)
    p.start()
    p.wait_all_ready(["public.t"])
    assert p.stop() == 0, p.log_tail()
    es_dir = p.dir
    r = _ev(bindir, es_dir, "load", "--filter", "event_kind=insert")
    assert r.rc == 0 and r.out == "", r
    r = _ev(bindir, es_dir, "version", "public.t", '["1"]')
    assert r.rc == 0 and json.loads(r.out) == {"position": None}, r
    r = _ev(bindir, es_dir, "append", "k", "1", "--expect", "none", "--event", "e", "--data",
            '{ "a" : [1, 2.50] ,\n "b": "x y" }')
    assert r.rc == 0 and json.loads(r.out)["positions"] == [1], r
    evs = parse_lines(_ev(bindir, es_dir, "load", "--filter", "event_kind=e").out)
    assert evs[0]["data"] == {"a": [1, 2.50], "b": "x y"}


def test_help(bindir):
    r = run_walrelay(bindir, "events", "--help")
    assert r.rc == 0 and "walrelay events DIR load --filter" in r.out, r
    r = run_walrelay(bindir, "--help")
    assert "walrelay events DIR append" in r.out
