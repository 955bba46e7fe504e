"""Destination plugins: loading (type = plugin, library = ...), the refusals with exit code
2 at `walrelay check` and `walrelay run`, a plugin's own key validation, and a pipeline
(copy + stream) through a plugin and through the built-in null destination, which runs on
the same ABI.

NOTES: the plugins are built here from C source with cc -shared -fPIC -I<repo>/include,
from the public header alone: tests/integration/plugins/count_plugin.c (counts what it
receives, one line per call into a file) and tiny broken ones written below. The type
names a Relation event carries are compared with the server's own format_type().
"""

import os
import pathlib
import re
import subprocess
import time

import pytest

from pipeline import edit_ini, run_walrelay
from workload import create_mixed_table, publish

REPO = pathlib.Path(__file__).resolve().parents[2]
INCLUDE = REPO / "include"
COUNT_SRC = REPO / "tests" / "integration" / "plugins" / "count_plugin.c"

GOOD_OPS = r"""
#include <walrelay/destination.h>
static int v(const wr_dest_config_t *c, wr_dest_error_t *e) { (void)c; (void)e; return 0; }
static int o(const wr_dest_config_t *c, const wr_dest_host_t *h, void **s, wr_dest_error_t *e)
{ (void)c; (void)h; (void)e; *s = NULL; return 0; }
static int t(void *s, const wr_dest_relation_t *r, wr_dest_error_t *e)
{ (void)s; (void)r; (void)e; return 0; }
static int w(void *s, const wr_dest_relation_t *r, const wr_dest_row_t *x, size_t n,
             wr_dest_error_t *e) { (void)s; (void)r; (void)x; (void)n; (void)e; return 0; }
static int ev(void *s, const wr_dest_event_t *x, size_t n, wr_dest_error_t *e)
{ (void)s; (void)x; (void)n; (void)e; return 0; }
static int f(void *s, const char *st, const wr_dest_key_t *k, wr_dest_error_t *e)
{ (void)s; (void)st; (void)k; (void)e; return 0; }
static void c(void *s) { (void)s; }
static const wr_dest_ops_t ops = {
    .abi_version = ABI, .struct_size = SIZE, .name = "bad", .capabilities = CAPS,
    .validate = v, .open = o, .truncate_table = t, .write_table_rows = w,
    .write_events = ev, .flush = f, .close = c,
};
const wr_dest_ops_t *walrelay_destination_v1(void) { return &ops; }
"""

# name -> (C source, what the refusal must say)
BROKEN = {
    "wrong_abi": (
        GOOD_OPS.replace("ABI", "2").replace("SIZE", "sizeof(wr_dest_ops_t)")
        .replace("CAPS", "0"),
        ["was built for destination ABI version 2, this walrelay implements version 1",
         "rebuild the plugin against walrelay's installed walrelay/destination.h "
         "(ABI version 1)"]),
    "wrong_size": (
        GOOD_OPS.replace("ABI", "WR_DEST_ABI_VERSION").replace("SIZE", "sizeof(wr_dest_ops_t) - 8")
        .replace("CAPS", "0"),
        ["has an operations table (wr_dest_ops_t) of",
         "rebuild the plugin against walrelay's installed walrelay/destination.h"]),
    "no_last_key": (
        GOOD_OPS.replace("ABI", "WR_DEST_ABI_VERSION").replace("SIZE", "sizeof(wr_dest_ops_t)")
        .replace("CAPS", "WR_DEST_CAP_TRANSACTIONAL"),
        ["its operations table has no last_key (required with WR_DEST_CAP_TRANSACTIONAL)"]),
    "no_symbol": (
        "int walrelay_destination_v2(void) { return 1; }\n",
        ["does not export walrelay_destination_v1",
         "the library must export walrelay_destination_v1"]),
    "undefined_symbol": (
        "extern int walrelay_test_no_such_function(void);\n"
        "int walrelay_destination_v1(void) { return walrelay_test_no_such_function(); }\n",
        ["cannot load", "undefined symbol: walrelay_test_no_such_function"]),
}


def cc_shared(src_text, out, tmp_path):
    src = tmp_path / (pathlib.Path(out).stem + ".c")
    src.write_text(src_text)
    r = subprocess.run(["cc", "-shared", "-fPIC", "-Wall", "-Werror", "-I%s" % INCLUDE,
                        "-o", str(out), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, "cc failed:\n%s%s" % (r.stdout, r.stderr)
    return str(out)


@pytest.fixture
def count_plugin(tmp_path):
    out = tmp_path / "libcount.so"
    cc_shared(COUNT_SRC.read_text(), out, tmp_path)
    return str(out)


def line_of(path, key):
    """Line number of the first "key = ..." line of the file."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if re.match(r"\s*%s\s*=" % re.escape(key), line):
                return n
    raise AssertionError("no %s in %s" % (key, path))


def plugin_pipeline(db, pipelines, library, extra=None):
    create_mixed_table(db, "t", 20)
    publish(db, "pub", ["t"])
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="plugin:%s" % library, check=False)
    return p, r


def test_init_writes_plugin_section(db, pipelines, count_plugin):
    p, r = plugin_pipeline(db, pipelines, count_plugin)
    assert r.rc == 0, r
    with open(p.conf_path) as f:
        conf = f.read()
    sec = conf.split("[destination]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^type = plugin$", sec, re.M), sec
    assert re.search(r"^library = %s$" % re.escape(count_plugin), sec, re.M), sec
    # unknown type: listed choices; plugin without a path: refused
    for spec, want in (("kafka", "registered destination types: sqlite, postgres, null, http, jsonl, nats, eventstore, plugin"),
                       ("plugin", "plugin:PATH"), ("null:x", "takes no argument")):
        q = pipelines()
        r = q.init(db.conninfo, "pub", destination=spec, check=False)
        assert r.rc == 2, r
        assert want in r.err, r
        assert not os.path.exists(q.conf_path)


def test_loader_refusals(db, pipelines, tmp_path):
    """Each broken library is refused at check and at run, exit code 2, with a message that
    names the library and what to fix."""
    create_mixed_table(db, "t", 5)
    publish(db, "pub", ["t"])
    cases = {name: cc_shared(src, tmp_path / ("lib%s.so" % name), tmp_path)
             for name, (src, _) in BROKEN.items()}
    cases["missing_file"] = str(tmp_path / "no" / "such" / "libdest.so")
    wants = {name: w for name, (_, w) in BROKEN.items()}
    wants["missing_file"] = ["cannot load", "No such file or directory",
                             "set library to the path of the plugin's shared object"]
    # init refuses them too (it validates what it writes)
    q = pipelines()
    r = q.init(db.conninfo, "pub", destination="plugin:%s" % cases["wrong_abi"], check=False)
    assert r.rc == 2 and "ABI version 2" in r.err, r
    for name, lib in sorted(cases.items()):
        p = pipelines()
        # write a valid file with sqlite, then point it at the library
        p.init(db.conninfo, "pub")
        edit_ini(p.conf_path, {"destination": {"type": "plugin", "path": None,
                                               "library": lib}})
        line = line_of(p.conf_path, "library")
        prefix = "%s:%d: [destination] library: " % (os.path.realpath(p.conf_path), line)
        chk = p.cmd("check", p.dir)
        assert chk.rc == 2, (name, chk)
        assert "FAILED destination: " + prefix in chk.out, (name, chk)
        assert lib in chk.out, (name, chk)
        for w in wants[name]:
            assert w in chk.out, (name, w, chk)
        run = p.cmd("run", p.dir, timeout=30)
        assert run.rc == 2, (name, run)
        assert prefix in run.err, (name, run)
        for w in wants[name]:
            assert w in run.err, (name, w, run)
        assert not db.slots("walrelay_%s" % p.name), "run created a slot for %s" % name


def test_plugin_validation_errors(db, pipelines, count_plugin):
    """A key the plugin refuses: file:line and the key, at check and run; a relative
    library path resolves against DIR; a failing check() fails walrelay check."""
    p, r = plugin_pipeline(db, pipelines, count_plugin)
    assert r.rc == 0, r
    # init checked that the library loads; the plugin's own keys come afterwards, and
    # until then check (which runs the plugin's validate) refuses the missing one
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2, chk
    conf = os.path.realpath(p.conf_path)
    # a key that is absent: the line of the [destination] header
    with open(p.conf_path) as f:
        dline = next(n for n, l in enumerate(f, 1) if l.strip() == "[destination]")
    assert "FAILED destination: %s:%d: [destination] out: missing key \"out\"" % (
        conf, dline) in chk.out, chk
    # a relative library path, an unknown key
    rel = os.path.relpath(count_plugin, p.dir)
    edit_ini(p.conf_path, {"destination": {"library": rel, "out": "events.txt",
                                           "colour": "red"}})
    line = line_of(p.conf_path, "colour")
    want = "%s:%d: [destination] colour: unknown key \"colour\"" % (conf, line)
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2, chk
    assert want in chk.out, chk
    assert "hint: the count plugin knows the keys out and fail_check" in chk.out, chk
    run = p.cmd("run", p.dir, timeout=30)
    assert run.rc == 2, run
    assert want in run.err, run
    # check() is run and reported
    edit_ini(p.conf_path, {"destination": {"colour": None, "fail_check": "yes"}})
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2, chk
    assert "FAILED destination: destination count: the endpoint does not answer" in chk.out, chk
    edit_ini(p.conf_path, {"destination": {"fail_check": None}})
    chk = p.cmd("check", p.dir)
    assert chk.rc == 0, chk
    assert re.search(r"ok +destination: plugin .*libcount\.so: count \(ABI version 1, at least "
                     r"once, checked\)", chk.out), chk


def read_events(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def test_pipeline_through_plugin(db, pipelines, count_plugin):
    """Copy and stream through type = plugin; Relation events carry format_type()'s names
    for the copy (catalog) and for the stream (walrelay's formatter and pgoutput's Type
    messages); status shows no [destination] value but the type."""
    db.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    db.execute("CREATE SCHEMA other")
    db.execute("CREATE TYPE other.hue AS ENUM ('red', 'blue')")
    cols = [
        ("id", "integer PRIMARY KEY"), ("b", "boolean"), ("i2", "smallint"), ("i8", "bigint"),
        ("n", "numeric"), ("n102", "numeric(10,2)"), ("f4", "real"), ("f8", "double precision"),
        ("t", "text"), ("vc", "varchar"), ("vc20", "varchar(20)"), ("c5", "char(5)"),
        ("bp", "bpchar"), ("by", "bytea"), ("d", "date"), ("tm", "time"), ("tm3", "time(3)"),
        ("ttz", "timetz"), ("ts", "timestamp"), ("ts0", "timestamp(0)"),
        ("tstz", "timestamptz"), ("tstz3", "timestamptz(3)"), ("iv", "interval"),
        ("iv2", "interval(2)"), ("ivym", "interval year to month"),
        ("ivds", "interval day to second(1)"), ("bt", "bit(4)"), ("vb", "varbit(8)"),
        ("u", "uuid"), ("j", "json"), ("jb", "jsonb"), ("ia", "integer[]"),
        ("ta", "text[]"), ("na", "numeric(5,1)[]"), ("inet_", "inet"), ("m", "money"),
        ("mo", "mood"), ("hu", "other.hue"), ("ch", '"char"'), ("x", "xml"), ("o", "oid"),
    ]
    db.execute("CREATE TABLE typed (%s)" % ", ".join("%s %s" % c for c in cols))
    db.execute("INSERT INTO typed (id, mo, hu) VALUES (1, 'ok', 'red'), (2, 'sad', 'blue')")
    create_mixed_table(db, "t", 50)
    publish(db, "pub", ["t", "typed"])
    expected_types = {r[0]: r[1] for r in db.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'typed'::regclass AND attnum > 0 AND NOT attisdropped")}

    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="plugin:%s" % count_plugin, check=False)
    assert r.rc == 0, r
    edit_ini(p.conf_path, {"destination": {"out": "events.txt"}})
    out = os.path.join(p.dir, "events.txt")
    chk = p.cmd("check", p.dir)
    assert chk.rc == 0, chk
    p.start()
    p.wait_all_ready(["public.t", "public.typed"])

    def copied():
        ev = read_events(out)
        rows_t = {l.split()[2] for l in ev if l.startswith("row t ")}
        return len(rows_t) == 50 and len([l for l in ev if l.startswith("row typed ")]) == 2
    p.wait_until(copied, 60, "the copy of both tables reached the plugin")
    ev = read_events(out)
    assert "open sync" in ev and "open apply" in ev, ev[:20]
    assert any(l.startswith("truncate_table t") for l in ev), ev[:20]

    db.execute("INSERT INTO t (id) SELECT g FROM generate_series(1001, 1010) g")
    db.execute("UPDATE t SET id = id WHERE id = 1001")
    db.execute("DELETE FROM t WHERE id = 1002")
    db.execute("INSERT INTO typed (id, n102, mo, hu, ia) VALUES (3, 1.5, 'happy', 'blue', "
               "'{1,2}')")

    def streamed():
        ev = read_events(out)
        ins = {l.split()[3] for l in ev if l.startswith("insert ") and " t " in l}
        return (set(str(i) for i in range(1001, 1011)) <= ins
                and any(l.startswith("delete ") and l.endswith(" 1002") for l in ev)
                and any(re.match(r"insert \S+ typed 3$", l) for l in ev))
    p.wait_until(streamed, 60, "the stream reached the plugin")
    ev = read_events(out)
    # a Relation event precedes the first change of each table, with the key's types
    rels = [l for l in ev if l.startswith("relation ")]
    assert rels, ev
    typed_rel = [l for l in rels if l.split()[2] == "typed"]
    assert typed_rel, rels
    roles = set()
    for l in typed_rel:
        _, role, _, spec = l.split(" ", 3)
        roles.add(role)
        got = dict(c.split(":", 1) for c in spec.split("|"))
        assert got == expected_types, "role %s: %s" % (role, {
            k: (got.get(k), v) for k, v in expected_types.items() if got.get(k) != v})
    assert "apply" in roles, typed_rel
    first_change = next(i for i, l in enumerate(ev)
                        if re.match(r"(insert|update|delete) apply typed ", l))
    assert any(re.match(r"relation apply typed ", l) for l in ev[:first_change]), ev
    assert "begin apply" in ev and "commit apply" in ev
    assert any(l.startswith("flush apply apply") for l in ev), ev[-20:]
    # status shows the destination type only
    st = p.cmd("status", p.dir)
    assert st.rc == 0, st
    assert "events.txt" not in st.text and count_plugin not in st.text, st
    assert p.log_contains("count plugin opened role=apply destination=count")


def test_null_on_the_abi(db, pipelines):
    """The built-in null destination goes through the ABI adapter: a pipeline runs, a key
    it does not take is refused with file:line, check reports it like a plugin."""
    create_mixed_table(db, "t", 30)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub", destination="null")
    chk = p.cmd("check", p.dir)
    assert chk.rc == 0, chk
    assert re.search(r"ok +destination: null \(ABI version 1, at least once, follows schema "
                     r"changes\)", chk.out), chk
    p.start()
    p.wait_all_ready(["public.t"])
    db.execute("INSERT INTO t (id) SELECT g FROM generate_series(1001, 1100) g")
    p.wait_flushed(db.current_wal_lsn(), 60)
    assert p.stop() == 0
    edit_ini(p.conf_path, {"destination": {"path": "x.db"}})
    line = line_of(p.conf_path, "path")
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2, chk
    assert "%s:%d: unknown key \"path\" in section [destination] (type = null)" % (
        os.path.realpath(p.conf_path), line) in chk.out, chk


def test_schema_change_without_capability(db, pipelines, count_plugin):
    """A plugin without WR_DEST_CAP_SCHEMA_CHANGES: a table whose columns change goes to
    Errored with the hint to resync; only that table, the others go on; a resync copies it
    again with its new columns."""
    create_mixed_table(db, "a", 10)
    create_mixed_table(db, "b", 10)
    publish(db, "pub", ["a", "b"])
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="plugin:%s" % count_plugin, check=False)
    assert r.rc == 0, r
    edit_ini(p.conf_path, {"destination": {"out": "events.txt"}})
    out = os.path.join(p.dir, "events.txt")
    p.start()
    p.wait_all_ready(["public.a", "public.b"])
    db.execute("INSERT INTO a (id) VALUES (2001)")
    p.wait_until(lambda: any(re.match(r"insert apply a 2001$", l) for l in read_events(out)),
                 60, "the insert into a reached the plugin")
    db.execute("ALTER TABLE a ADD COLUMN extra int")
    db.execute("INSERT INTO a (id, extra) VALUES (2002, 7)")
    db.execute("INSERT INTO b (id) VALUES (3001)")

    def errored():
        t = p.tables().get("public.a")
        return t if t and t["phase"] == "errored" else None
    t = p.wait_until(errored, 60, "public.a errored")
    assert "does not follow schema changes" in (t["err_msg"] or ""), t
    assert "walrelay resync DIR public.a" in (t["err_hint"] or ""), t
    assert t["err_kind"] == "unsupported", t
    p.wait_until(lambda: any(re.match(r"insert apply b 3001$", l) for l in read_events(out)),
                 60, "b goes on")
    assert p.tables()["public.b"]["phase"] == "ready"
    assert not any(re.match(r"insert apply a 2002$", l) for l in read_events(out))
    r = p.cmd("resync", p.dir, "public.a")
    assert r.rc == 0, r
    p.wait_all_ready(["public.a", "public.b"])
    db.execute("INSERT INTO a (id, extra) VALUES (2003, 8)")

    def recopied():
        ev = read_events(out)
        return (any(l == "row a 2002" for l in ev)
                and any(re.match(r"insert apply a 2003$", l) for l in ev))
    p.wait_until(recopied, 60, "a copied again, then streamed")
    ev = read_events(out)
    rel = [l for l in ev if l.startswith("relation apply a ")]
    assert rel and rel[-1].endswith("|extra:integer"), rel


def test_reload_destination_keys(db, pipelines, count_plugin):
    """Reload: a changed [destination] key needs a restart and is named without its value;
    a key the plugin refuses fails the reload with file:line, the pipeline goes on."""
    create_mixed_table(db, "t", 5)
    publish(db, "pub", ["t"])
    p = pipelines()
    r = p.init(db.conninfo, "pub", destination="plugin:%s" % count_plugin, check=False)
    assert r.rc == 0, r
    edit_ini(p.conf_path, {"destination": {"out": "events.txt"}})
    p.start()
    p.wait_all_ready(["public.t"])
    edit_ini(p.conf_path, {"destination": {"out": "s3cret-elsewhere.txt"}})
    r = p.cmd("reload", p.dir)
    assert r.rc == 0, r
    assert "[destination] keys" in r.text, r
    assert "s3cret" not in r.text and not p.log_contains("s3cret"), r
    edit_ini(p.conf_path, {"destination": {"colour": "red"}})
    line = line_of(p.conf_path, "colour")
    r = p.cmd("reload", p.dir)
    assert r.rc != 0, r
    assert "%s:%d: [destination] colour: unknown key" % (os.path.realpath(p.conf_path), line) \
        in r.text, r
    db.execute("INSERT INTO t (id) VALUES (4001)")
    out = os.path.join(p.dir, "events.txt")
    p.wait_until(lambda: any(re.match(r"insert apply t 4001$", l) for l in read_events(out)),
                 60, "the pipeline goes on with the running configuration")
