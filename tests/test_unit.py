"""Runs each C unit test executable (BUILD/tests/unit/test_*) as one pytest test.

NOTES: the executables come from tests/unit/meson.build; each prints "ok - name" per
test and exits non-zero if any failed. Their whole output is shown when one fails.
When WALRELAY_UNIT_SANITIZE_BUILD names a sanitizer build (scripts/test sets it to
build-asan), its unit executables run too, as "asan-<name>", with leak detection on
and any ASan/UBSan report fatal.
"""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("WALRELAY_BUILD", "build"))
UNIT_DIR = (BUILD if BUILD.is_absolute() else REPO / BUILD) / "tests" / "unit"


SAN_BUILD = os.environ.get("WALRELAY_UNIT_SANITIZE_BUILD", "")
SAN_DIR = (REPO / SAN_BUILD / "tests" / "unit") if SAN_BUILD else None
SAN_ENV = dict(os.environ,
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")


def _executables(d):
    if d is None or not d.is_dir():
        return []
    return sorted(
        p
        for p in d.glob("test_*")
        if p.is_file() and os.access(p, os.X_OK)
    )


_EXES = _executables(UNIT_DIR)
_SAN_EXES = _executables(SAN_DIR)


@pytest.mark.skipif(not SAN_BUILD, reason="WALRELAY_UNIT_SANITIZE_BUILD not set")
@pytest.mark.parametrize("exe", _SAN_EXES or [None],
                         ids=["asan-" + p.name for p in _SAN_EXES] or ["asan-missing"])
def test_unit_sanitized(exe):
    assert exe is not None, "no unit test executables in %s: run scripts/build.sh --sanitize" % SAN_DIR
    _run(exe, SAN_ENV)


@pytest.mark.parametrize("exe", _EXES or [None], ids=[p.name for p in _EXES] or ["missing"])
def test_unit(exe):
    assert exe is not None, (
        "no unit test executables in %s: run scripts/build.sh (or set WALRELAY_BUILD)" % UNIT_DIR
    )
    _run(exe, None)


def _run(exe, env):
    try:
        r = subprocess.run(
            [str(exe)],
            cwd=str(exe.parent),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        pytest.fail("%s did not finish within 120 s; output so far:\n%s" % (exe.name, out))
    out = r.stdout.decode("utf-8", "replace")
    assert "Sanitizer" not in out and "runtime error:" not in out, out
    assert r.returncode == 0, "%s exited with %d; output:\n%s" % (exe.name, r.returncode, out)
    # A unit executable that ran no test at all is a broken harness, not a pass.
    assert "ok - " in out, "%s ran no test; output:\n%s" % (exe.name, out)
