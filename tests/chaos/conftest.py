"""Fixtures of the chaos suite: the integration suite's (one PostgreSQL per session, a
database per test, Pipeline objects with their after-test checks), loaded from
tests/integration/conftest.py, plus the run's size.

NOTES: the chaos tests stop, restart and cut their own servers (chaoslib.own_server), so
the session server of the integration suite is never touched. WALRELAY_CHAOS=full gives
the full run (200 kill points, a 2-minute outage, the default connection timeouts); the
default is the reduced run that ./scripts/test includes.
"""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

_spec = importlib.util.spec_from_file_location(
    "walrelay_integration_fixtures", os.path.join(INTEGRATION, "conftest.py"))
_fixtures = importlib.util.module_from_spec(_spec)
sys.modules["walrelay_integration_fixtures"] = _fixtures  # chaoslib imports Db from it
_spec.loader.exec_module(_fixtures)

# the same fixtures, registered for this directory
bindir = _fixtures.bindir
pg_servers = _fixtures.pg_servers
pg = _fixtures.pg
db = _fixtures.db
state_db = _fixtures.state_db
state_store = _fixtures.state_store
pipelines = _fixtures.pipelines
