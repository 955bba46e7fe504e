"""The command line around a pipeline: init, status of a stopped pipeline, the control
socket, and the example configuration in deploy/."""

import json
import os
import pathlib
import shutil
import stat

from pipeline import edit_ini, run_walrelay, status_contract_problems, wait_equal
from workload import create_mixed_table, publish

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_status_of_stopped_pipeline(db, pipelines):
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    r = p.cmd("status", p.dir)
    assert r.rc != 0, r
    assert "not running" in r.text.lower(), r
    r = p.cmd("status", p.dir, "--json")
    assert r.rc != 0, r
    # a directory that is not a pipeline at all
    r = p.cmd("status", os.path.join(p.dir, "nope"))
    assert r.rc != 0 and "nope" in r.text, r


def test_control_socket_mode(db, pipelines):
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    st = os.stat(os.path.join(p.dir, "control.sock"))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(stat.S_IMODE(st.st_mode))
    assert p.stop() == 0
    assert not os.path.exists(os.path.join(p.dir, "control.sock")), "control.sock left after stop"


def test_init(db, pipelines):
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    # the pipeline name defaults to the directory's basename, sanitized
    p = pipelines(name="my_pipe_2", dirname="My-Pipe.2")
    r = p.init(db.conninfo, "pub", name=False)
    assert r.rc == 0, r
    assert stat.S_IMODE(os.stat(p.conf_path).st_mode) == 0o600
    with open(p.conf_path) as f:
        conf = f.read()
    assert "my_pipe_2" in conf, conf
    # refuses to overwrite
    again = p.init(db.conninfo, "other", name=False, check=False)
    assert again.rc != 0, again
    with open(p.conf_path) as f:
        assert f.read() == conf
    p.start()
    st = p.wait_all_ready(["public.t"])
    assert st["pipeline"] == "my_pipe_2", st
    assert os.path.isfile(p.dest_path), "default destination DIR/dest.db missing"
    assert "walrelay_my_pipe_2" in db.slots()


def test_example_config_is_valid(db, pipelines):
    """deploy/example.conf stays loadable: same keys as the code accepts."""
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    p = pipelines()
    os.makedirs(p.dir)
    shutil.copy(REPO / "deploy" / "example.conf", p.conf_path)
    os.chmod(p.conf_path, 0o600)
    edit_ini(p.conf_path, {"pipeline": {"name": p.name},
                           "source": {"conninfo": db.conninfo, "publication": "pub"},
                           "destination": {"path": "dest.db"}})
    r = p.cmd("check", p.dir)
    assert r.rc == 0, r
    p.start()
    p.wait_all_ready(["public.t"])


def test_status_json(db, pipelines):
    """The keys and types of `walrelay status --json` that scripts rely on (pipeline.py
    STATUS_KEYS, WORKER_KEYS, TABLE_KEYS), and the human form."""
    create_mixed_table(db, "t", 10)
    publish(db, "pub", ["t"])
    p = pipelines()
    p.init(db.conninfo, "pub")
    p.start()
    p.wait_all_ready(["public.t"])
    r = p.cmd("status", p.dir, "--json")
    assert r.rc == 0, r
    st = json.loads(r.out)
    problems = status_contract_problems(st)
    assert not problems, "\n".join(problems + ["output: " + r.out])
    assert st["pipeline"] == p.name and st["state"] == "running"
    assert st["pid"] == p.proc.pid
    apply = [w for w in st["workers"] if w["role"] == "apply"]
    assert len(apply) == 1 and apply[0]["relid"] == 0 and apply[0]["pid"] > 0, st["workers"]
    (t,) = st["tables"]
    assert (t["schema"], t["name"], t["relid"], t["phase"]) == ("public", "t", db.relid("t"), "ready")
    assert t["error"] is None, t
    human = p.cmd("status", p.dir)
    assert human.rc == 0 and "public.t" in human.out and "ready" in human.out, human


def test_usage_errors(bindir, tmp_path):
    r = run_walrelay(bindir)
    assert r.rc == 2 and "usage" in r.text.lower(), r
    r = run_walrelay(bindir, "frobnicate", str(tmp_path))
    assert r.rc == 2 and "frobnicate" in r.text, r
    r = run_walrelay(bindir, "init", str(tmp_path / "x"), "--publication", "p")
    assert r.rc == 2 and "--source" in r.text, r
    assert not (tmp_path / "x" / "walrelay.conf").exists()
    r = run_walrelay(bindir, "run", str(tmp_path / "missing"))
    assert r.rc == 2 and "missing" in r.text, r


def test_password_never_shown(db, pipelines):
    """A password in the source conninfo reaches no log line (at debug level), no
    command's output, and no file walrelay writes besides walrelay.conf and its 0600
    copy for the workers (walrelay.conf.active)."""
    secret = "Wr-pw-9f3e1c-sekrit"
    create_mixed_table(db, "t", 50)
    publish(db, "pub", ["t"])
    p = pipelines()
    # the test server trusts local connections, so the password is accepted and unused
    p.init(db.conninfo + " password=" + secret, "pub", config={"log": {"level": "debug"}})
    outputs = [p.cmd("check", p.dir)]
    assert outputs[0].rc == 0, outputs[0]
    p.start()
    p.wait_all_ready(["public.t"])
    db.execute("INSERT INTO t (id, name) VALUES (1000001, 'after ready')")
    wait_equal(db.server, db.name, p, ["public.t"])
    outputs += [p.cmd("status", p.dir), p.cmd("status", p.dir, "--json"),
                p.cmd("reload", p.dir), p.cmd("retry", p.dir, "t")]  # the last one fails
    assert outputs[-1].rc != 0, outputs[-1]
    p.stop()
    for r in outputs:
        assert secret not in r.text, "the password was printed by %s: %r" % (r.argv, r)
    assert secret not in p.log_text(), "the password reached the log"
    for name in os.listdir(p.dir):
        path = os.path.join(p.dir, name)
        if name in ("walrelay.conf", "walrelay.conf.active"):
            # the configuration and the supervisor's copy of it for the workers: the only
            # files that may hold it, readable by their owner only
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (name, oct(os.stat(path).st_mode))
            continue
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            assert secret.encode() not in f.read(), "the password was written to %s" % name
