"""The example plugin examples/destination-audit, built out of tree from an installed walrelay.

NOTES: the session fixture `installed` (conftest.py) runs `meson install --destdir` of the
build under test, once; the example is then built with meson from the installed walrelay/destination.h and
walrelay-destination.pc alone (PKG_CONFIG_PATH and PKG_CONFIG_SYSROOT_DIR point into the
destdir; the source tree's include/ is never on its command line), and the pipeline runs
the INSTALLED walrelay, which must find its installed workers. The end-to-end test copies a
table, streams changes while the apply worker is killed with -9, and checks that the audit
log holds every copied row once and every change exactly once, in commit order.
"""

import json
import os
import pathlib
import subprocess
import threading
import time

import pytest

from pipeline import deadline, edit_ini
from workload import create_mixed_table, publish

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "destination-audit"


@pytest.fixture(scope="session")
def audit_plugin(installed, tmp_path_factory):
    destdir, _, env = installed
    build = tmp_path_factory.mktemp("audit-build")
    for argv in (["meson", "setup", str(build), str(EXAMPLE)], ["ninja", "-C", str(build)]):
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, "%s failed:\n%s\n%s" % (" ".join(argv), r.stdout, r.stderr)
    with open(build / "compile_commands.json") as f:
        cmds = json.load(f)
    flags = " ".join(c["command"] for c in cmds)
    assert "-I%s/usr" % destdir in flags, flags  # the installed header ...
    assert str(REPO / "include") not in flags, flags  # ... and never the source tree's
    so = build / "walrelay-audit.so"
    assert so.is_file(), "the example built no %s" % so
    return str(so)


def test_installed_header_compiles_alone(installed, tmp_path):
    """The installed header and .pc compile a trivial C11 program (-pedantic) and C++."""
    _, _, env = installed
    cflags = subprocess.run(["pkg-config", "--cflags", "walrelay-destination"], env=env,
                            capture_output=True, text=True, check=True).stdout.split()
    assert any(f.startswith("-I") and f.endswith("/include") for f in cflags), cflags
    src = tmp_path / "t.c"
    src.write_text(
        "#include <walrelay/destination.h>\n"
        "int main(void) {\n"
        "    wr_dest_key_t a = {1, 2}, b = {1, 3};\n"
        "    return (WR_DEST_ABI_VERSION == 1 && wr_dest_key_cmp(&a, &b) < 0) ? 0 : 1;\n"
        "}\n")
    for cc, extra in (("cc", ["-std=c11", "-pedantic"]), ("g++", ["-x", "c++", "-std=c++17"])):
        out = tmp_path / ("t-" + cc)
        r = subprocess.run([cc] + extra + ["-Wall", "-Wextra", "-Werror"] + cflags +
                           [str(src), "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, "%s: %s" % (cc, r.stderr)
        assert subprocess.run([str(out)]).returncode == 0


class Changes(threading.Thread):
    """Small transactions on t and u with a known count of changes: insert a new row of t,
    update an existing one, delete the row inserted by the transaction before; every 50th
    transaction also inserts 3 rows into u and truncates u in a transaction of its own."""

    def __init__(self, db, ntx):
        super().__init__(daemon=True)
        self.db, self.ntx = db, ntx
        self.done_tx = 0
        self.expected = {"insert": 0, "update": 0, "delete": 0, "truncate": 0}
        self.inserted_t = set()
        self.error = None

    def run(self):
        try:
            with self.db.connect() as conn:
                for i in range(self.ntx):
                    new = 100_000 + i
                    with conn.transaction():
                        conn.execute("INSERT INTO t (id, name, qty) VALUES (%s, %s, %s)",
                                     [new, "row %d" % i, i])
                        conn.execute("UPDATE t SET qty = qty + 1 WHERE id = %s", [i % 300 + 1])
                        if i > 0:
                            conn.execute("DELETE FROM t WHERE id = %s", [new - 1])
                    self.expected["insert"] += 1
                    self.expected["update"] += 1
                    self.inserted_t.add(new)
                    if i > 0:
                        self.expected["delete"] += 1
                    if i % 50 == 49:
                        with conn.transaction():
                            conn.execute("INSERT INTO u SELECT g FROM generate_series(1, 3) g")
                        conn.execute("TRUNCATE u")
                        self.expected["insert"] += 3
                        self.expected["truncate"] += 1
                    self.done_tx = i + 1
        except Exception as e:  # reported by the test
            self.error = e


def audit_rows(p):
    import sqlite3
    con = sqlite3.connect("file:%s?mode=ro" % os.path.join(p.dir, "audit.db"), uri=True,
                          timeout=30)
    try:
        return con.execute("SELECT id, stream, commit_lsn, ordinal, op, table_name, row, "
                           "old_row FROM audit_log ORDER BY id").fetchall()
    finally:
        con.close()


def test_audit_plugin_end_to_end(db, pipelines, installed, audit_plugin):
    """Copy, stream, kill -9 of the apply worker mid-stream: every copied row once and every
    change exactly once, in commit order, through the installed walrelay."""
    _, inst_bindir, _ = installed
    create_mixed_table(db, "t", 300)
    db.execute("CREATE TABLE u (id int PRIMARY KEY)")
    publish(db, "pub", ["t", "u"])
    p = pipelines()
    p.bindir = inst_bindir  # the installed walrelay and its installed workers
    p.init(db.conninfo, "pub", destination="plugin:%s" % audit_plugin,
           config={"batch": {"max_fill_ms": "20"},
                   "retry": {"backoff_initial_ms": "200", "backoff_max_ms": "1000"}})
    edit_ini(p.conf_path, {"destination": {"path": "audit.db"}})
    chk = p.cmd("check", p.dir)
    assert chk.rc == 0, chk
    p.start()
    p.wait_all_ready(["public.t", "public.u"])

    w = Changes(db, 600)
    w.start()
    d = deadline(60)
    while w.done_tx < 150 and w.is_alive():
        assert time.monotonic() < d, "the writer made no progress"
        time.sleep(0.05)
    apply = p.worker("apply")
    assert apply and apply.get("pid"), p.status()
    p.kill_worker(apply["pid"])
    w.join(300)
    assert not w.is_alive() and w.error is None, w.error
    # the apply worker came back and caught up with everything
    p.wait_until(lambda: (p.worker("apply") or {}).get("pid") not in (None, apply["pid"]),
                 60, "the apply worker restarted")
    p.wait_flushed(db.current_wal_lsn(), timeout=120)
    rows = audit_rows(p)
    assert p.stop() == 0

    copies = [r for r in rows if r[4] == "copy"]
    changes = [r for r in rows if r[4] != "copy"]
    # the copy: every row of t once (u was empty)
    assert len(copies) == 300, len(copies)
    assert sorted(int(json.loads(r[6])["id"]) for r in copies) == list(range(1, 301))
    assert all(r[5] == "public.t" and r[1] == "sync_%d" % db.relid("t") for r in copies)
    # the changes: exactly once (unique keys), the counts the writer made, in commit order
    keys = [(r[2], r[3]) for r in changes]
    assert len(set(keys)) == len(keys), "a change is stored twice"
    got = {}
    for r in changes:
        op = "truncate" if r[4].startswith("truncate") else r[4]
        got[op] = got.get(op, 0) + 1
    assert got == w.expected, (got, w.expected)
    assert all(r[1] == "apply" for r in changes), {r[1] for r in changes}
    assert keys == sorted(keys), "changes are not in commit order"
    inserted = {int(json.loads(r[6])["id"]) for r in changes
                if r[4] == "insert" and r[5] == "public.t"}
    assert inserted == w.inserted_t
    # the kill really happened and the log says so
    assert "apply" in p.log_text() and apply["pid"] in p.killed_pids
