/*
 * test_srcprobe.c - common/srcprobe.c: which connection errors are an outage to wait for
 * and which a refusal a person must fix (issue 12, defect 1), and a probe of a source
 * that is not there.
 *
 * NOTES: the messages are libpq's and PostgreSQL 15's own texts.
 */
#include "../../common/srcprobe.h"

#include "unit.h"

static void
test_outages(void)
{
    /* nothing listens, the host does not answer, the server is not ready */
    CHECK_INT_EQ(src_classify("cannot connect to the source: connection to server at "
                              "\"127.0.0.1\", port 5432 failed: Connection refused Is the server "
                              "running on that host and accepting TCP/IP connections?"),
                 SRC_DOWN);
    CHECK_INT_EQ(src_classify("connection to server at \"db\" (10.0.0.5), port 5432 failed: "
                              "timeout expired"),
                 SRC_DOWN);
    CHECK_INT_EQ(src_classify("connection to server on socket \"/tmp/.s.PGSQL.5432\" failed: No "
                              "such file or directory"),
                 SRC_DOWN);
    CHECK_INT_EQ(src_classify("FATAL:  the database system is starting up"), SRC_DOWN);
    CHECK_INT_EQ(src_classify("FATAL:  the database system is shutting down"), SRC_DOWN);
    CHECK_INT_EQ(src_classify("FATAL:  the database system is not yet accepting connections "
                              "DETAIL:  Consistent recovery state has not been yet reached."),
                 SRC_DOWN);
    CHECK_INT_EQ(src_classify("FATAL:  sorry, too many clients already"), SRC_DOWN);
    CHECK_INT_EQ(src_classify("FATAL:  remaining connection slots are reserved for non-"
                              "replication superuser connections"),
                 SRC_DOWN);
    CHECK_INT_EQ(src_classify("server closed the connection unexpectedly"), SRC_DOWN);
    CHECK_INT_EQ(src_classify("SSL SYSCALL error: EOF detected"), SRC_DOWN);
    CHECK_INT_EQ(src_classify(NULL), SRC_DOWN);
    CHECK_INT_EQ(src_classify("something nobody has seen yet"), SRC_DOWN);
    /* the server's own state: an outage even if the probe after it finds the server up */
    CHECK(src_was_away("preparing the copy: cannot connect to the source: connection to "
                       "server at \"127.0.0.1\", port 58465 failed: FATAL:  the database "
                       "system is starting up"));
    CHECK(src_was_away("FATAL:  the database system is shutting down"));
    CHECK(src_was_away("FATAL:  the database system is not yet accepting connections"));
    CHECK(src_was_away("FATAL:  sorry, too many clients already"));
    CHECK(!src_was_away("server closed the connection unexpectedly"));
    CHECK(!src_was_away("ERROR:  relation \"t\" does not exist"));
    CHECK(!src_was_away(NULL));
}

static void
test_refusals(void)
{
    CHECK_INT_EQ(src_classify("FATAL:  password authentication failed for user \"walrelay\""),
                 SRC_REFUSED);
    CHECK_INT_EQ(src_classify("FATAL:  role \"walrelay\" does not exist"), SRC_REFUSED);
    CHECK_INT_EQ(src_classify("FATAL:  database \"shop\" does not exist"), SRC_REFUSED);
    CHECK_INT_EQ(src_classify("FATAL:  no pg_hba.conf entry for replication connection from "
                              "host \"10.0.0.7\", user \"walrelay\", no encryption"),
                 SRC_REFUSED);
    CHECK_INT_EQ(src_classify("FATAL:  role \"walrelay\" is not permitted to log in"), SRC_REFUSED);
    CHECK_INT_EQ(src_classify("fe_sendauth: no password supplied"), SRC_REFUSED);
}

/* A port nobody listens on: the probe says "down" and never "up". */
static void
test_probe_nobody_there(void)
{
    wr_config_t cfg;
    wr_err_t err;

    cfg_defaults(&cfg);
    cfg.pipeline_name = "t";
    cfg.source_conninfo = "host=127.0.0.1 port=1 dbname=x connect_timeout=2";
    wr_err_clear(&err);
    CHECK_INT_EQ(src_probe(&cfg, &err), SRC_DOWN);
    CHECK_CONTAINS(err.msg, "cannot connect");
    cfg.source_conninfo = "host=127.0.0.1 port=1 dbname=x badoption=1";
    wr_err_clear(&err);
    CHECK_INT_EQ(src_probe(&cfg, &err), SRC_REFUSED); /* not a conninfo: a person must fix it */
}

int
main(void)
{
    RUN(test_outages);
    RUN(test_refusals);
    RUN(test_probe_nobody_there);
    return unit_done();
}
