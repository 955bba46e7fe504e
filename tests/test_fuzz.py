"""A short run of each libFuzzer target (tests/fuzz/README.md) as part of the suite.

NOTES: one test per target: `scripts/fuzz.sh TARGET SECONDS`, which builds the target in
build-fuzz/ (clang, ASan + UBSan; FUZZ_BUILD_DIR overrides) on first use and runs it on
the seed corpus plus what earlier runs found. A crash, a sanitizer report or a target
that does not build fails the test with the end of the fuzzer's output (the crashing
input is kept in BUILD/fuzz-artifacts/). Skipped only when clang is not installed.
WALRELAY_FUZZ_SECONDS changes the 10 s per target.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGETS = ["pgoutput", "stream", "copytext", "pgtype", "ipc", "config", "esfilter", "sinkstate"]
SECONDS = int(os.environ.get("WALRELAY_FUZZ_SECONDS", "10"))


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target):
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed: the libFuzzer targets are built with clang "
                    "(scripts/setup.sh installs it)")
    # the first test also configures and builds build-fuzz/: allow for that
    timeout = 900 + SECONDS
    try:
        r = subprocess.run([str(REPO / "scripts" / "fuzz.sh"), target, str(SECONDS)],
                           cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        pytest.fail("scripts/fuzz.sh %s %d did not finish within %d s:\n%s"
                    % (target, SECONDS, timeout, out[-6000:]))
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "scripts/fuzz.sh %s %d exited with %d:\n%s" % (
        target, SECONDS, r.returncode, "\n".join(out.splitlines()[-80:]))
    # it really ran: libFuzzer's final stats name the executions
    assert "stat::number_of_executed_units" in out, (
        "fuzz_%s printed no final stats:\n%s" % (target, out[-3000:]))
    assert "fuzz_%s: ok" % target in out, out[-3000:]
