"""Suite-wide pytest configuration: where the build is, and the one-line summary.

NOTES: loaded for every test under tests/. scripts/test relies on the last line this
prints ("N passed, N failed", plus ", N skipped" when some were); CI greps it.
"""

import pytest

# Outcome of each test id: "failed" wins over "skipped", which wins over "passed", so a
# test that passes but whose teardown fails (a leaked process, a leftover slot) counts as
# failed once, not as one pass and one error.
_outcomes = {}
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def _record(nodeid, outcome):
    if _RANK[outcome] >= _RANK.get(_outcomes.get(nodeid), -1):
        _outcomes[nodeid] = outcome


def pytest_runtest_logreport(report):
    if report.failed:
        _record(report.nodeid, "failed")
    elif report.skipped:
        _record(report.nodeid, "skipped")
    elif report.when == "call":
        _record(report.nodeid, "passed")


def pytest_collectreport(report):
    if report.failed:  # a file that does not import is a failure, not silence
        _record(report.nodeid or "<collection>", "failed")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # Outermost wrapper: runs after the terminal reporter printed its own summary, so
    # this line is the very last one.
    yield
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in _outcomes.values():
        counts[outcome] += 1
    line = "%d passed, %d failed" % (counts["passed"], counts["failed"])
    if counts["skipped"]:
        line += ", %d skipped" % counts["skipped"]
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(line)
    else:
        print(line, flush=True)


# Parallel runs (pytest-xdist, scripts/test -n N): tests that share something outside
# their worker's session run on one worker, one after another. The chaos suite and the
# postgres destination's network cut both replace the loopback device's root qdisc
# (netcut.py); the fuzz targets all configure and build build-fuzz/ (meson refuses a
# second setup of a directory in use). Every other test has its own servers, ports and
# directories per worker session. tryfirst: xdist's own hook turns the marker into the
# node id's "@group" suffix, so the marker must be there before it runs.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path.startswith("tests/chaos/") or item.get_closest_marker("machine_wide"):
            item.add_marker(pytest.mark.xdist_group("machine-wide"))
        elif path == "tests/test_fuzz.py":
            item.add_marker(pytest.mark.xdist_group("build-fuzz"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "machine_wide: changes machine-wide state (the loopback qdisc); "
        "a parallel run keeps such tests on one worker")
