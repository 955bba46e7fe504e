"""The fixtures themselves: the throwaway servers are what the other tests assume."""


def test_server_is_logical(pg, db):
    assert db.scalar("SHOW wal_level") == "logical"
    assert db.scalar("SHOW max_replication_slots") == "64"
    assert db.scalar("SHOW max_wal_senders") == "64"
    assert db.scalar("SELECT current_user") == "postgres"
    assert db.scalar("SELECT current_database()") == db.name
    # a logical slot can be created and dropped in the test database
    db.execute("SELECT pg_create_logical_replication_slot('walrelay_fixture_check', 'pgoutput')")
    assert db.slots("walrelay_fixture_check") == ["walrelay_fixture_check"]
    db.server.drop_slots("walrelay_fixture_check")
    assert db.slots("walrelay_fixture_check") == []


def test_each_test_has_its_own_database(pg, db):
    db.execute("CREATE TABLE only_here (id int PRIMARY KEY)")
    others = [r[0] for r in pg.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%%' AND datname <> %s",
        [db.name])]
    for other in others:
        n = pg.execute("SELECT count(*) FROM pg_class WHERE relname = 'only_here'", dbname=other)
        assert n[0][0] == 0, "table of %s visible in %s" % (db.name, other)


def test_replica_server(pg, db_factory):
    d = db_factory("replica")
    assert d.scalar("SHOW wal_level") == "replica"
    assert d.server.port != pg.port
    assert pg.execute("SHOW wal_level")[0][0] == "logical"
