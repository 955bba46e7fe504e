"""State store plugins ([state] backend = plugin, library = ...): the loader's refusals with
exit code 2 at `walrelay check` and `walrelay run` (and `drop`), each naming the file, the
line and what to fix; `walrelay init --state plugin:PATH`; the store's own key errors with
file, line and key; `walrelay check` of a good store.

NOTES: the broken libraries are built here with cc -shared -fPIC -I<repo>/include from the
public header alone; the good one is the example store (examples/store-onefile) as the
build under test builds it for the unit tests (build/tests/unit/walrelay-onefile.so).
test_example_store.py builds the example out of tree and runs a pipeline on it.
"""

import os
import pathlib
import re
import subprocess

from pipeline import edit_ini
from workload import create_mixed_table, publish

REPO = pathlib.Path(__file__).resolve().parents[2]
INCLUDE = REPO / "include"

STORE_OPS = r"""
#include <walrelay/store.h>
static int v(const wr_store_config_t *c, wr_store_error_t *e) { (void)c; (void)e; return 0; }
static int o(const wr_store_config_t *c, const wr_store_host_t *h, void **s, wr_store_error_t *e)
{ (void)c; (void)h; (void)e; *s = NULL; return 0; }
static void c(void *s) { (void)s; }
static int any(void) { return 0; }
#define F(t) ((t)(void (*)(void))any)
static const wr_store_ops_t ops = {
    .abi_version = ABI, .struct_size = SIZE, .name = "broken",
    .validate = v, .open = o, .close = c,
    .get_progress = F(int (*)(void *, wr_store_progress_t *, bool *, wr_store_error_t *)),
    .set_progress = F(int (*)(void *, const wr_store_progress_t *, wr_store_error_t *)),
    .add_table = F(int (*)(void *, const wr_store_table_t *, wr_store_error_t *)),
    .get_table = F(int (*)(void *, uint32_t, wr_store_table_t *, bool *, wr_store_error_t *)),
    .list_tables = F(int (*)(void *, const wr_store_table_t **, size_t *, wr_store_error_t *)),
    .set_phase = F(int (*)(void *, const wr_store_phase_change_t *, wr_store_error_t *)),
    .rollback_phase = F(int (*)(void *, uint32_t, int64_t, wr_store_error_t *)),
    .history_len = F(int (*)(void *, uint32_t, size_t *, wr_store_error_t *)),
    .set_attempts = F(int (*)(void *, uint32_t, uint32_t, int64_t, wr_store_error_t *)),
    .put_schema = F(int (*)(void *, const wr_store_schema_t *, uint64_t, wr_store_error_t *)),
    .get_schema = F(int (*)(void *, uint32_t, uint64_t, const wr_store_schema_t **, uint64_t *,
                            wr_store_error_t *)),
    .put_mapping = F(int (*)(void *, uint32_t, const char *, wr_store_error_t *)),
    .get_mapping = F(int (*)(void *, uint32_t, const char **, wr_store_error_t *)),
    .get_flag = F(int (*)(void *, const char *, int64_t *, bool *, wr_store_error_t *)),
    .set_flag = F(int (*)(void *, const char *, int64_t, int64_t, wr_store_error_t *)),
    .remove_table = F(int (*)(void *, uint32_t, wr_store_error_t *)),
    .drop = DROP,
};
const wr_store_ops_t *walrelay_store_v1(void) { return &ops; }
"""


def ops_src(abi="WR_STORE_ABI_VERSION", size="sizeof(wr_store_ops_t)",
            drop="F(int (*)(void *, bool *, wr_store_error_t *))"):
    return STORE_OPS.replace("ABI", abi, 1).replace("SIZE", size, 1).replace("DROP", drop, 1)


# name -> (C source, what the refusal must say besides the library's path)
BROKEN = {
    "wrong_abi": (
        ops_src(abi="2"),
        ["was built for state store ABI version 2, this walrelay implements version 1",
         "hint: rebuild the plugin against walrelay's installed walrelay/store.h "
         "(ABI version 1)"]),
    "wrong_size": (
        ops_src(size="sizeof(wr_store_ops_t) - 8"),
        ["has an operations table (wr_store_ops_t) of",
         "hint: rebuild the plugin against walrelay's installed walrelay/store.h"]),
    "no_drop": (
        ops_src(drop="NULL"),
        ["its operations table has no drop function",
         "hint: set it in the wr_store_ops_t that walrelay_store_v1() returns"]),
    "no_symbol": (
        "int walrelay_store_v2(void) { return 1; }\n",
        ["does not export walrelay_store_v1",
         "hint: the library must export walrelay_store_v1"]),
    "undefined_symbol": (
        "extern int walrelay_test_no_such_function(void);\n"
        "int walrelay_store_v1(void) { return walrelay_test_no_such_function(); }\n",
        ["cannot load", "undefined symbol: walrelay_test_no_such_function",
         "against walrelay/store.h"]),
}


def cc_shared(src_text, out, tmp_path):
    src = tmp_path / (pathlib.Path(out).stem + ".c")
    src.write_text(src_text)
    r = subprocess.run(["cc", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror",
                        "-I%s" % INCLUDE, "-o", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, "cc failed:\n%s%s" % (r.stdout, r.stderr)
    return str(out)


def onefile(bindir):
    so = os.path.join(bindir, "tests", "unit", "walrelay-onefile.so")
    assert os.path.isfile(so), "%s is missing: run scripts/build.sh" % so
    return so


def line_of(path, key, section="state"):
    """Line number of the first "key = ..." line of [section]."""
    cur = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            m = re.match(r"\s*\[(\w+)\]", line)
            if m:
                cur = m.group(1)
            elif cur == section and re.match(r"\s*%s\s*=" % re.escape(key), line):
                return n
    raise AssertionError("no %s in [%s] of %s" % (key, section, path))


def test_loader_refusals(db, pipelines, tmp_path):
    """Each broken library, and one that is not there, is refused at check, run and drop
    with exit code 2 and FILE:LINE: [state] library: ... naming it and what to fix; run
    creates no slot."""
    create_mixed_table(db, "t", 5)
    publish(db, "pub", ["t"])
    cases = {name: cc_shared(src, tmp_path / ("lib%s.so" % name), tmp_path)
             for name, (src, _) in BROKEN.items()}
    cases["missing_file"] = str(tmp_path / "no" / "such" / "libstore.so")
    wants = {name: w for name, (_, w) in BROKEN.items()}
    wants["missing_file"] = ["cannot load", "No such file or directory",
                             "hint: set library to the path of the plugin's shared object"]
    # init refuses them too (it loads what it writes)
    q = pipelines()
    r = q.init(db.conninfo, "pub", state="plugin:%s" % cases["wrong_abi"], check=False)
    assert r.rc == 2 and "state store ABI version 2" in r.err, r
    assert not os.path.exists(q.conf_path)
    for name, lib in sorted(cases.items()):
        p = pipelines()
        p.init(db.conninfo, "pub")  # a valid file with sqlite, then pointed at the library
        edit_ini(p.conf_path, {"state": {"backend": "plugin", "schema": None, "library": lib}})
        prefix = "%s:%d: [state] library: " % (os.path.realpath(p.conf_path),
                                                line_of(p.conf_path, "library"))
        chk = p.cmd("check", p.dir)
        assert chk.rc == 2, (name, chk)
        assert "FAILED state: " + prefix in chk.out, (name, chk)
        assert lib in chk.out, (name, chk)
        for w in wants[name]:
            assert w in chk.out, (name, w, chk)
        for cmd in ("run", "drop"):
            r = p.cmd(cmd, p.dir, timeout=30)
            assert r.rc == 2, (name, cmd, r)
            assert prefix in r.err, (name, cmd, r)
            for w in wants[name]:
                assert w in r.err, (name, cmd, w, r)
        assert not db.slots("walrelay_%s" % p.name), "run created a slot for %s" % name
        assert not os.path.exists(os.path.join(p.dir, "state.db")), name


def test_init_and_check_of_a_plugin_store(db, pipelines, bindir):
    """init --state plugin:PATH writes backend and library (postgres's keys as comments),
    loads the library first; the store's own keys: missing, unknown (file, line, key, the
    store's hint) at check and run; a good configuration checks ok with the store's own
    summary; other backends refuse plugin keys."""
    create_mixed_table(db, "t", 5)
    publish(db, "pub", ["t"])
    so = onefile(bindir)
    p = pipelines()
    r = p.init(db.conninfo, "pub", state="plugin:%s" % so)
    assert r.rc == 0, r
    assert "state        plugin %s" % so in r.out, r
    with open(p.conf_path) as f:
        sec = f.read().split("\n[state]\n", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^backend = plugin$", sec, re.M), sec
    assert re.search(r"^library = %s$" % re.escape(so), sec, re.M), sec
    assert re.search(r"^# schema = walrelay_state$", sec, re.M), sec
    assert not re.search(r"^(schema|conninfo) =", sec, re.M), sec
    conf = os.path.realpath(p.conf_path)

    # the store's required key is missing: the line of the [state] header
    with open(p.conf_path) as f:
        sline = next(n for n, l in enumerate(f, 1) if l.strip() == "[state]")
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2, chk
    assert 'FAILED state: %s:%d: [state] path: missing key "path"' % (conf, sline) in chk.out, chk
    run = p.cmd("run", p.dir, timeout=30)
    assert run.rc == 2 and '%s:%d: [state] path: missing key "path"' % (conf, sline) in run.err

    # an unknown key: its own line, and the store's hint
    edit_ini(p.conf_path, {"state": {"path": "state.txt", "colour": "red"}})
    want = '%s:%d: [state] colour: unknown key "colour"' % (conf, line_of(p.conf_path, "colour"))
    chk = p.cmd("check", p.dir)
    assert chk.rc == 2 and want in chk.out, chk
    assert "hint: the onefile store knows the key path" in chk.out, chk
    run = p.cmd("run", p.dir, timeout=30)
    assert run.rc == 2 and want in run.err, run

    # good: the store opened with role check, its own summary; nothing written
    edit_ini(p.conf_path, {"state": {"colour": None}})
    chk = p.cmd("check", p.dir)
    assert chk.rc == 0, chk
    assert re.search(r"ok +state: plugin %s: onefile \(ABI version 1, lease, checked\): file "
                     r"%s \(0 tables\)" % (re.escape(so), re.escape(os.path.join(
                         os.path.realpath(p.dir), "state.txt"))), chk.out), chk
    assert not os.path.exists(os.path.join(p.dir, "state.txt"))

    # a relative library resolves against DIR
    edit_ini(p.conf_path, {"state": {"library": os.path.relpath(so, p.dir)}})
    assert p.cmd("check", p.dir).rc == 0

    # library without backend = plugin, a plugin key with sqlite: refused with the line
    q = pipelines()
    q.init(db.conninfo, "pub")
    edit_ini(q.conf_path, {"state": {"library": so}})
    chk = q.cmd("check", q.dir)
    assert chk.rc == 2, chk
    assert "%s:%d: [state] library is set but backend is not plugin" % (
        os.path.realpath(q.conf_path), line_of(q.conf_path, "library")) in chk.err, chk
    edit_ini(q.conf_path, {"state": {"library": None, "path": "x"}})
    chk = q.cmd("check", q.dir)
    assert chk.rc == 2 and 'unknown key "path" in section [state]' in chk.err, chk
    # --state plugin without a path
    z = pipelines()
    r = z.init(db.conninfo, "pub", state="plugin:", check=False)
    assert r.rc == 2 and "--state plugin needs the library: plugin:PATH" in r.err, r
