"""Runs each C unit test executable (BUILD/tests/unit/test_*) as one pytest test.

NOTES: the executables come from tests/unit/meson.build; each prints "ok - name" per
test and exits non-zero if any failed. Their whole output is shown when one fails.
"""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("WALRELAY_BUILD", "build"))
UNIT_DIR = (BUILD if BUILD.is_absolute() else REPO / BUILD) / "tests" / "unit"


def _executables():
    if not UNIT_DIR.is_dir():
        return []
    return sorted(
        p
        for p in UNIT_DIR.glob("test_*")
        if p.is_file() and os.access(p, os.X_OK)
    )


_EXES = _executables()


@pytest.mark.parametrize("exe", _EXES or [None], ids=[p.name for p in _EXES] or ["missing"])
def test_unit(exe):
    assert exe is not None, (
        "no unit test executables in %s: run scripts/build.sh (or set WALRELAY_BUILD)" % UNIT_DIR
    )
    try:
        r = subprocess.run(
            [str(exe)],
            cwd=str(UNIT_DIR),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        pytest.fail("%s did not finish within 120 s; output so far:\n%s" % (exe.name, out))
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "%s exited with %d; output:\n%s" % (exe.name, r.returncode, out)
    # A unit executable that ran no test at all is a broken harness, not a pass.
    assert "ok - " in out, "%s ran no test; output:\n%s" % (exe.name, out)
