/*
 * test_eventstore.c - the event store's C API (walrelay/eventstore.h) and the engine the
 * destination drives (destinations/eventstore/store.h), without a pipeline.
 *
 * NOTES: every test runs on a fresh SQLite file in a temporary directory; when
 * WALRELAY_TEST_ES_PG names a PostgreSQL database (conninfo), each also runs there on a
 * freshly dropped schema (tests/integration/test_eventstore_api.py runs this executable
 * that way against the test server). Checks print both values on failure.
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "destinations/eventstore/store.h"
#include "unit.h"

static char tmpdir[512];
static char spec[1024];
static int ntest;

/* A fresh store: a new SQLite file, or the PostgreSQL database with its es_* tables
 * dropped. */
static wr_es_store_t *
fresh(void)
{
    wr_es_store_t *s = NULL;
    wr_es_error_t e;

    if (strncmp(spec, "postgres:", 9) == 0) {
        PGconn *c = PQconnectdb(spec + 9);
        PGresult *r = PQexec(c, "SET client_min_messages = warning");

        PQclear(r);
        r = PQexec(c, "DROP TABLE IF EXISTS es_events, es_streams, es_cdc_progress, "
                      "es_pipelines, es_cdc_kinds, es_copies, es_copy_rows, es_meta");
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            fprintf(stderr, "  dropping the schema: %s", PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
    } else {
        snprintf(spec, sizeof(spec), "sqlite:%s/es%d.db", tmpdir, ++ntest);
    }
    if (wr_es_open(spec, WR_ES_OPEN_CREATE, &s, &e) != 0) {
        fprintf(stderr, "  opening %s: %s\n", spec, e.message);
        exit(1);
    }
    return s;
}

static wr_es_new_event_t
ev(const char *kind, const char *data)
{
    wr_es_new_event_t e = {kind, data, strlen(data), NULL};
    return e;
}

static int64_t
head(wr_es_store_t *s)
{
    int64_t h = -1;
    wr_es_error_t e;

    CHECK_INT_EQ(wr_es_head(s, &h, &e), 0);
    return h;
}

static wr_es_expect_t
at(int64_t p)
{
    wr_es_expect_t x = {WR_ES_EXPECT_AT, p};
    return x;
}

static const wr_es_expect_t any = {WR_ES_EXPECT_ANY, 0};
static const wr_es_expect_t none = {WR_ES_EXPECT_NONE, 0};

/* ---- opening ---- */

static void
test_open_errors(void)
{
    wr_es_store_t *s = NULL;
    wr_es_error_t e;
    char path[700];

    snprintf(path, sizeof(path), "sqlite:%s/missing.db", tmpdir);
    CHECK_INT_EQ(wr_es_open(path, 0, &s, &e), WR_ES_ENOSTORE);
    CHECK(s == NULL);
    CHECK_CONTAINS(e.message, "missing.db");
    CHECK(access(path + 7, F_OK) != 0); /* not created */

    CHECK_INT_EQ(wr_es_open("mysql:x", 0, &s, &e), WR_ES_EINVAL);
    CHECK_CONTAINS(e.message, "sqlite:PATH or postgres:CONNINFO");
    CHECK_INT_EQ(wr_es_open("postgres:host=/nonexistent-dir port=1 password=sekrit", 0, &s, &e),
                 WR_ES_ESTORE);
    CHECK(strstr(e.message, "sekrit") == NULL);

    /* a SQLite file that is not an event store */
    snprintf(path, sizeof(path), "%s/other.db", tmpdir);
    {
        sqlite3 *db;
        sqlite3_open(path, &db);
        sqlite3_exec(db, "CREATE TABLE x (a int)", NULL, NULL, NULL);
        sqlite3_close(db);
    }
    snprintf(path, sizeof(path), "sqlite:%s/other.db", tmpdir);
    CHECK_INT_EQ(wr_es_open(path, 0, &s, &e), WR_ES_ENOSTORE);
    CHECK_CONTAINS(e.message, "no event store");
}

/* ---- appends ---- */

static void
test_append_versions(void)
{
    wr_es_store_t *s = fresh();
    wr_es_append_result_t r;
    wr_es_version_t v;
    wr_es_error_t e;
    int64_t count = -1;
    wr_es_new_event_t two[2] = {ev("opened", "{\"owner\":\"ann\"}"), ev("deposited", "10")};

    CHECK_INT_EQ(head(s), 0);
    CHECK_INT_EQ(wr_es_stream_version(s, "account", "A-1", &v, &count, &e), 0);
    CHECK(!v.set);
    CHECK_INT_EQ(count, 0);

    /* a new stream: consecutive positions from 1 */
    CHECK_INT_EQ(wr_es_append(s, "account", "A-1", none, two, 2, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(r.first_position, 1);
    CHECK_INT_EQ(r.last_position, 2);
    CHECK_INT_EQ(wr_es_stream_version(s, "account", "A-1", &v, &count, &e), 0);
    CHECK(v.set);
    CHECK_INT_EQ(v.position, 2); /* the version is the last event's position */
    CHECK_INT_EQ(count, 2);

    /* expected = the current version: ok */
    two[0] = ev("withdrawn", "3");
    CHECK_INT_EQ(wr_es_append(s, "account", "A-1", at(2), two, 1, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(r.first_position, 3);
    CHECK_INT_EQ(r.last_position, 3);

    /* stale: conflict {2, 3}, nothing written */
    CHECK_INT_EQ(wr_es_append(s, "account", "A-1", at(2), two, 1, &r, &e), WR_ES_CONFLICT);
    CHECK(r.expected.set);
    CHECK_INT_EQ(r.expected.position, 2);
    CHECK(r.actual.set);
    CHECK_INT_EQ(r.actual.position, 3);
    CHECK_INT_EQ(r.conflict_reason, WR_ES_CONFLICT_VERSION);
    CHECK_INT_EQ(head(s), 3);

    /* expecting new on an existing stream: conflict {none, last} */
    CHECK_INT_EQ(wr_es_append_expecting_new(s, "account", "A-1", two, 1, &r, &e), WR_ES_CONFLICT);
    CHECK(!r.expected.set);
    CHECK(r.actual.set);
    CHECK_INT_EQ(r.actual.position, 3);

    /* expecting a position on an empty stream: conflict {P, none} */
    CHECK_INT_EQ(wr_es_append(s, "account", "B-2", at(3), two, 1, &r, &e), WR_ES_CONFLICT);
    CHECK(r.expected.set);
    CHECK_INT_EQ(r.expected.position, 3);
    CHECK(!r.actual.set);

    /* unchecked never conflicts */
    CHECK_INT_EQ(wr_es_append(s, "account", "A-1", any, two, 1, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(r.first_position, 4);
    CHECK_INT_EQ(wr_es_append(s, "account", "B-2", any, two, 1, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(r.first_position, 5);

    /* an empty append consumes no position */
    CHECK_INT_EQ(wr_es_append(s, "account", "A-1", any, two, 0, &r, &e), WR_ES_EMPTY_APPEND);
    CHECK_INT_EQ(wr_es_append_expecting_new(s, "account", "C-3", two, 0, &r, &e),
                 WR_ES_EMPTY_APPEND);
    CHECK_INT_EQ(head(s), 5);
    CHECK_INT_EQ(wr_es_append(s, "account", "C-3", none, two, 1, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(r.first_position, 6);
    CHECK_INT_EQ(wr_es_stream_version(s, "account", "C-3", &v, &count, &e), 0);
    CHECK_INT_EQ(v.position, 6);
    CHECK_INT_EQ(count, 1);
    wr_es_close(s);
}

static void
test_append_invalid(void)
{
    wr_es_store_t *s = fresh();
    wr_es_append_result_t r;
    wr_es_error_t e;
    wr_es_new_event_t bad = ev("x", "{not json");
    wr_es_new_event_t meta = ev("x", "{}");

    CHECK_INT_EQ(wr_es_append(s, "k", "1", any, &bad, 1, &r, &e), WR_ES_EINVAL);
    CHECK_CONTAINS(e.message, "data is not JSON");
    meta.metadata = "[1]";
    CHECK_INT_EQ(wr_es_append(s, "k", "1", any, &meta, 1, &r, &e), WR_ES_EINVAL);
    CHECK_CONTAINS(e.message, "metadata must be a JSON object");
    meta.metadata = NULL;
    meta.event_kind = "";
    CHECK_INT_EQ(wr_es_append(s, "k", "1", any, &meta, 1, &r, &e), WR_ES_EINVAL);
    meta.event_kind = "x";
    CHECK_INT_EQ(wr_es_append(s, "", "1", any, &meta, 1, &r, &e), WR_ES_EINVAL);
    CHECK_INT_EQ(wr_es_append(s, "k", "1", at(0), &meta, 1, &r, &e), WR_ES_EINVAL);
    CHECK_INT_EQ(head(s), 0); /* nothing written, no position used */
    CHECK_INT_EQ(wr_es_append(s, "k", "1", any, &meta, 1, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(r.first_position, 1);
    wr_es_close(s);
}

/* ---- loads ---- */

typedef struct got_s {
    int64_t pos[4096];
    size_t n;
} got_t;

static int
collect(void *arg, const wr_es_event_t *ev)
{
    got_t *g = arg;

    if (g->n < sizeof(g->pos) / sizeof(g->pos[0]))
        g->pos[g->n] = ev->position;
    g->n++;
    return 0;
}

static size_t
load(wr_es_store_t *s, const wr_es_filter_t *f, size_t n, int64_t limit, got_t *g)
{
    wr_es_error_t e;

    memset(g, 0, sizeof(*g));
    CHECK_INT_EQ(wr_es_load_each(s, f, n, limit, collect, g, &e), 0);
    return g->n;
}

static void
test_load_filters(void)
{
    wr_es_store_t *s = fresh();
    wr_es_append_result_t r;
    wr_es_error_t e;
    got_t g;
    wr_es_new_event_t x;

    /* 1 public.t ["1"] insert; 2 public.u ["1"] insert; 3 public.t ["1"] update;
     * 4 public.t ["2"] insert; 5 public.u ["1"] delete; 6 public.t ["1"] delete */
    x = ev("insert", "{\"id\":1}");
    CHECK_INT_EQ(wr_es_append(s, "public.t", "[\"1\"]", any, &x, 1, &r, &e), 0);
    CHECK_INT_EQ(wr_es_append(s, "public.u", "[\"1\"]", any, &x, 1, &r, &e), 0);
    x = ev("update", "{\"id\":1}");
    CHECK_INT_EQ(wr_es_append(s, "public.t", "[\"1\"]", any, &x, 1, &r, &e), 0);
    x = ev("insert", "{\"id\":2}");
    CHECK_INT_EQ(wr_es_append(s, "public.t", "[\"2\"]", any, &x, 1, &r, &e), 0);
    x = ev("delete", "{\"id\":1}");
    CHECK_INT_EQ(wr_es_append(s, "public.u", "[\"1\"]", any, &x, 1, &r, &e), 0);
    CHECK_INT_EQ(wr_es_append(s, "public.t", "[\"1\"]", any, &x, 1, &r, &e), 0);

    {
        /* by kind across aggregate kinds */
        wr_es_filter_t f[1] = {{"insert", NULL, NULL, false, 0}};
        CHECK_INT_EQ(load(s, f, 1, 0, &g), 3);
        CHECK_INT_EQ(g.pos[0], 1);
        CHECK_INT_EQ(g.pos[1], 2);
        CHECK_INT_EQ(g.pos[2], 4);
    }
    {
        /* by aggregate kind */
        wr_es_filter_t f[1] = {{"delete", "public.u", NULL, false, 0}};
        CHECK_INT_EQ(load(s, f, 1, 0, &g), 1);
        CHECK_INT_EQ(g.pos[0], 5);
    }
    {
        /* by aggregate: one stream's events of three kinds, in order */
        wr_es_filter_t f[3] = {{"insert", "public.t", "[\"1\"]", false, 0},
                               {"update", "public.t", "[\"1\"]", false, 0},
                               {"delete", "public.t", "[\"1\"]", false, 0}};
        CHECK_INT_EQ(load(s, f, 3, 0, &g), 3);
        CHECK_INT_EQ(g.pos[0], 1);
        CHECK_INT_EQ(g.pos[1], 3);
        CHECK_INT_EQ(g.pos[2], 6);
    }
    {
        /* after applies per filter: inserts after 1, deletes after 5 */
        wr_es_filter_t f[2] = {{"insert", NULL, NULL, true, 1}, {"delete", NULL, NULL, true, 5}};
        CHECK_INT_EQ(load(s, f, 2, 0, &g), 3);
        CHECK_INT_EQ(g.pos[0], 2);
        CHECK_INT_EQ(g.pos[1], 4);
        CHECK_INT_EQ(g.pos[2], 6);
    }
    {
        /* overlapping filters: each event once, sorted */
        wr_es_filter_t f[3] = {{"insert", NULL, NULL, false, 0},
                               {"insert", "public.t", NULL, false, 0},
                               {"delete", NULL, NULL, false, 0}};
        CHECK_INT_EQ(load(s, f, 3, 0, &g), 5);
        for (size_t i = 1; i < g.n; i++)
            CHECK(g.pos[i] > g.pos[i - 1]);
        /* and a limit */
        CHECK_INT_EQ(load(s, f, 3, 2, &g), 2);
        CHECK_INT_EQ(g.pos[1], 2);
    }
    {
        /* the empty list gives nothing; a negative after is an error */
        wr_es_filter_t f[1] = {{"insert", NULL, NULL, true, -1}};
        CHECK_INT_EQ(load(s, NULL, 0, 0, &g), 0);
        memset(&g, 0, sizeof(g));
        CHECK_INT_EQ(wr_es_load_each(s, f, 1, 0, collect, &g, &e), WR_ES_EINVAL);
        CHECK_CONTAINS(e.message, "negative");
        CHECK_INT_EQ(g.n, 0);
        f[0].event_kind = NULL;
        f[0].has_after = false;
        CHECK_INT_EQ(wr_es_load_each(s, f, 1, 0, collect, &g, &e), WR_ES_EINVAL);
    }
    {
        /* the list form */
        wr_es_filter_t f[1] = {{"insert", "public.t", NULL, false, 0}};
        wr_es_event_list_t l;

        CHECK_INT_EQ(wr_es_load_events(s, f, 1, 0, &l, &e), 0);
        CHECK_INT_EQ(l.n, 2);
        if (l.n == 2) {
            CHECK_INT_EQ(l.events[0].position, 1);
            CHECK_STR_EQ(l.events[0].aggregate_kind, "public.t");
            CHECK_STR_EQ(l.events[0].aggregate_id, "[\"1\"]");
            CHECK_STR_EQ(l.events[0].event_kind, "insert");
            CHECK_INT_EQ(l.events[0].stream_version, 1);
            CHECK_STR_EQ(l.events[0].data, "{\"id\":1}");
            CHECK_INT_EQ(l.events[0].data_len, 8);
            CHECK_STR_EQ(l.events[0].metadata, "{}");
            CHECK_INT_EQ(strlen(l.events[0].created_at), 27);
            CHECK_INT_EQ(l.events[1].position, 4);
        }
        wr_es_event_list_free(&l);
    }
    wr_es_close(s);
}

/* More than one page (1000): every event once, in order. */
static void
test_load_pages(void)
{
    wr_es_store_t *s = fresh();
    wr_es_new_event_t evs[500];
    wr_es_append_result_t r;
    wr_es_error_t e;
    wr_es_filter_t f[2] = {{"a", NULL, NULL, false, 0}, {"b", NULL, NULL, true, 1000}};
    got_t g;

    for (int i = 0; i < 500; i++)
        evs[i] = ev(i % 2 ? "b" : "a", "1");
    for (int k = 0; k < 5; k++)
        CHECK_INT_EQ(wr_es_append(s, "k", "1", any, evs, 500, &r, &e), 0);
    CHECK_INT_EQ(head(s), 2500);
    /* all a (1250) + b after 1000 (750) */
    CHECK_INT_EQ(load(s, f, 2, 0, &g), 2000);
    for (size_t i = 1; i < g.n; i++)
        if (g.pos[i] <= g.pos[i - 1]) {
            CHECK(g.pos[i] > g.pos[i - 1]);
            break;
        }
    CHECK_INT_EQ(load(s, f, 2, 1500, &g), 1500);
    wr_es_close(s);
}

/* ---- the writer's transaction ---- */

static void
test_tx_progress(void)
{
    wr_es_store_t *s = fresh();
    wr_es_error_t e;
    es_src_t src = {true, 0x1000, 0, 0};
    bool found = true;
    int64_t lsn = 0;
    int32_t seq = 0;
    got_t g;
    wr_es_filter_t f[1] = {{"insert", NULL, NULL, false, 0}};

    CHECK_INT_EQ(es_progress_get(s, "walrelay_p", &found, &lsn, &seq, &e), 0);
    CHECK(!found);
    /* a rolled back transaction leaves nothing and uses no position */
    CHECK_INT_EQ(es_tx_begin(s, &e), 0);
    CHECK_INT_EQ(es_tx_add(s, "public.t", "[\"1\"]", "insert", "{}", 2, "{}", 2, &src, &e), 0);
    CHECK_INT_EQ(es_tx_flush(s, &e), 0); /* in the store's transaction, not committed */
    CHECK_INT_EQ(es_tx_last_position(s), 1);
    es_tx_rollback(s);
    CHECK_INT_EQ(head(s), 0);
    CHECK_INT_EQ(es_progress_get(s, "walrelay_p", &found, &lsn, &seq, &e), 0);
    CHECK(!found);

    /* events and progress in one transaction */
    CHECK_INT_EQ(es_tx_begin(s, &e), 0);
    for (int i = 0; i < 3; i++) {
        src.seq = i;
        CHECK_INT_EQ(es_tx_add(s, "public.t", "[\"1\"]", "insert", "{}", 2, "{}", 2, &src, &e), 0);
    }
    CHECK_INT_EQ(es_tx_commit(s, "walrelay_p", 0x1000, 2, &e), 0);
    CHECK_INT_EQ(head(s), 3);
    CHECK_INT_EQ(es_progress_get(s, "walrelay_p", &found, &lsn, &seq, &e), 0);
    CHECK(found);
    CHECK_INT_EQ(lsn, 0x1000);
    CHECK_INT_EQ(seq, 2);

    /* the (src_lsn, src_seq, src_sub) backstop refuses a replayed change */
    CHECK_INT_EQ(es_tx_begin(s, &e), 0);
    src.seq = 1;
    CHECK_INT_EQ(es_tx_add(s, "public.t", "[\"1\"]", "insert", "{}", 2, "{}", 2, &src, &e), 0);
    CHECK_INT_EQ(es_tx_commit(s, "walrelay_p", 0x1000, 2, &e), WR_ES_ESTORE);
    CHECK_INT_EQ(head(s), 3);
    CHECK_INT_EQ(load(s, f, 1, 0, &g), 3);

    /* a progress-only commit, then clearing it */
    CHECK_INT_EQ(es_tx_begin(s, &e), 0);
    CHECK_INT_EQ(es_tx_commit(s, "walrelay_p_s1", 0x2000, 0, &e), 0);
    CHECK_INT_EQ(es_progress_get(s, "walrelay_p_s1", &found, &lsn, &seq, &e), 0);
    CHECK(found);
    CHECK_INT_EQ(es_progress_clear(s, "walrelay_p_s1", &e), 0);
    CHECK_INT_EQ(es_progress_get(s, "walrelay_p_s1", &found, &lsn, &seq, &e), 0);
    CHECK(!found);
    wr_es_close(s);
}

/* Two handles writing by turns: positions stay dense. */
static void
test_two_writers(void)
{
    wr_es_store_t *a = fresh(), *b = NULL;
    wr_es_error_t e;
    wr_es_append_result_t r;
    wr_es_new_event_t x = ev("e", "1");
    got_t g;
    wr_es_filter_t f[1] = {{"e", NULL, NULL, false, 0}};

    CHECK_INT_EQ(wr_es_open(spec, 0, &b, &e), 0);
    if (b == NULL) {
        wr_es_close(a);
        return;
    }
    for (int i = 0; i < 20; i++) {
        es_src_t src = {true, 0x3000 + i, 0, 0};

        CHECK_INT_EQ(es_tx_begin(a, &e), 0);
        CHECK_INT_EQ(es_tx_add(a, "public.t", "[\"1\"]", "e", "1", 1, "{}", 2, &src, &e), 0);
        CHECK_INT_EQ(es_tx_add(a, "public.t", "[\"2\"]", "e", "1", 1, "{}", 2,
                               &(es_src_t){true, 0x3000 + i, 1, 0}, &e),
                     0);
        CHECK_INT_EQ(es_tx_commit(a, "walrelay_p", 0x3000 + i, 1, &e), 0);
        CHECK_INT_EQ(wr_es_append(b, "app", "x", any, &x, 1, &r, &e), 0);
        CHECK_INT_EQ(r.first_position, 3 * (i + 1));
    }
    CHECK_INT_EQ(load(a, f, 1, 0, &g), 60);
    for (size_t i = 0; i < g.n; i++)
        if (g.pos[i] != (int64_t)i + 1) {
            CHECK_INT_EQ(g.pos[i], i + 1);
            break;
        }
    wr_es_close(b);
    wr_es_close(a);
}

/* ---- pipelines and claims ---- */

static void
test_claims(void)
{
    wr_es_store_t *s = fresh();
    wr_es_error_t e;
    wr_es_append_result_t r;
    wr_es_new_event_t x = ev("insert", "{}");

    CHECK_INT_EQ(es_pipeline_register(s, "walrelay_a", "h:/srv/a", false, &e), 0);
    CHECK_INT_EQ(es_pipeline_register(s, "walrelay_a", "h:/srv/a", false, &e), 0);
    CHECK_INT_EQ(es_pipeline_register(s, "walrelay_a", "h:/srv/b", true, &e), WR_ES_CONFLICT);
    CHECK_CONTAINS(e.message, "h:/srv/a");
    CHECK_INT_EQ(es_pipeline_register(s, "walrelay_a", "h:/srv/b", false, &e), WR_ES_CONFLICT);
    CHECK_INT_EQ(es_pipeline_register(s, "walrelay_b", "h:/srv/b", true, &e), 0);

    CHECK_INT_EQ(es_kind_claim(s, "public.t", "walrelay_a", 100, &e), 0);
    CHECK_INT_EQ(es_kind_claim(s, "public.t", "walrelay_a", 101, &e), 0); /* relid changed */
    CHECK_INT_EQ(es_kind_claim(s, "public.t", "walrelay_b", 100, &e), WR_ES_CONFLICT);
    CHECK_CONTAINS(e.message, "walrelay_a");

    /* appends into a pipeline's stream are conflicts, whatever the expectation */
    CHECK_INT_EQ(wr_es_append(s, "public.t", "[\"1\"]", any, &x, 1, &r, &e), WR_ES_CONFLICT);
    CHECK_INT_EQ(r.conflict_reason, WR_ES_CONFLICT_PIPELINE);
    CHECK_INT_EQ(wr_es_append(s, "public.t", "[\"9\"]", none, &x, 1, &r, &e), WR_ES_CONFLICT);
    CHECK_INT_EQ(head(s), 0);

    /* a kind an application wrote first cannot be claimed */
    CHECK_INT_EQ(wr_es_append(s, "public.app", "[\"1\"]", any, &x, 1, &r, &e), WR_ES_OK);
    CHECK_INT_EQ(es_kind_claim(s, "public.app", "walrelay_a", 102, &e), WR_ES_CONFLICT);
    CHECK_CONTAINS(e.message, "no pipeline wrote");
    wr_es_close(s);
}

/* ---- copies ---- */

static void
test_copy_staging(void)
{
    wr_es_store_t *s = fresh();
    wr_es_error_t e;
    wr_es_append_result_t r;
    wr_es_new_event_t x = ev("insert", "{\"id\":1}");
    wr_es_version_t v;
    int64_t pub = -1, count = 0;
    got_t g;
    wr_es_filter_t f[1] = {{"insert", "public.t", NULL, false, 0}};
    char id[32];

    CHECK_INT_EQ(wr_es_append(s, "other", "1", any, &x, 1, &r, &e), 0); /* position 1 */

    /* an attempt that is reset: its rows never appear */
    CHECK_INT_EQ(es_tx_begin(s, &e), 0);
    CHECK_INT_EQ(es_copy_reset(s, "walrelay_p", 7, "public.t", 0x5000, &e), 0);
    CHECK_INT_EQ(es_copy_add(s, "walrelay_p", 7, "[\"99\"]", "{}", 2, "{}", 2, &e), 0);
    CHECK_INT_EQ(es_tx_commit(s, NULL, 0, 0, &e), 0);

    /* the real attempt, in three transactions */
    for (int t = 0; t < 3; t++) {
        CHECK_INT_EQ(es_tx_begin(s, &e), 0);
        if (t == 0)
            CHECK_INT_EQ(es_copy_reset(s, "walrelay_p", 7, "public.t", 0x5000, &e), 0);
        for (int i = 0; i < 10; i++) {
            snprintf(id, sizeof(id), "[\"%d\"]", t * 10 + i);
            CHECK_INT_EQ(
                es_copy_add(s, "walrelay_p", 7, id, "{}", 2, "{\"phase\":\"copy\"}", 16, &e), 0);
        }
        CHECK_INT_EQ(es_tx_commit(s, NULL, 0, 0, &e), 0);
        /* nothing of an incomplete copy is visible */
        CHECK_INT_EQ(load(s, f, 1, 0, &g), 0);
        CHECK_INT_EQ(head(s), 1);
    }
    /* a stream that already has an event: the copy's insert continues it */
    CHECK_INT_EQ(es_tx_begin(s, &e), 0);
    CHECK_INT_EQ(es_tx_add(s, "public.t", "[\"5\"]", "delete", "{}", 2, "{}", 2,
                           &(es_src_t){true, 0x4000, 0, 0}, &e),
                 0);
    CHECK_INT_EQ(es_tx_commit(s, NULL, 0, 0, &e), 0); /* position 2 */

    CHECK_INT_EQ(es_copy_publish(s, "walrelay_p", 7, &pub, &e), 0);
    CHECK_INT_EQ(pub, 30);
    CHECK_INT_EQ(head(s), 32);
    CHECK_INT_EQ(load(s, f, 1, 0, &g), 30);
    CHECK_INT_EQ(g.pos[0], 3);
    CHECK_INT_EQ(g.pos[29], 32);
    CHECK_INT_EQ(wr_es_stream_version(s, "public.t", "[\"0\"]", &v, &count, &e), 0);
    CHECK_INT_EQ(v.position, 3);
    CHECK_INT_EQ(count, 1);
    CHECK_INT_EQ(wr_es_stream_version(s, "public.t", "[\"5\"]", &v, &count, &e), 0);
    CHECK_INT_EQ(v.position, 8);
    CHECK_INT_EQ(count, 2);
    CHECK_INT_EQ(wr_es_stream_version(s, "public.t", "[\"99\"]", &v, &count, &e), 0);
    CHECK(!v.set);
    /* published once: the staging is gone */
    CHECK_INT_EQ(es_copy_publish(s, "walrelay_p", 7, &pub, &e), 0);
    CHECK_INT_EQ(pub, 0);
    CHECK_INT_EQ(head(s), 32);
    wr_es_close(s);
}

static long
file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Writes ntx transactions of 1,000 events of ~1 KB each, numbered from *next. */
static void
write_kb_events(wr_es_store_t *s, int ntx, int *next)
{
    static char data[1100];
    wr_es_error_t e;

    if (data[0] == '\0') {
        memset(data, 'x', 1000);
        data[0] = '"';
        data[999] = '"';
    }
    for (int t = 0; t < ntx; t++) {
        es_src_t src = {true, 0x10000 + *next, 0, 0};

        CHECK_INT_EQ(es_tx_begin(s, &e), 0);
        for (int i = 0; i < 1000; i++) {
            char id[32];

            snprintf(id, sizeof(id), "[\"%d\"]", (*next)++);
            src.seq = i;
            CHECK_INT_EQ(es_tx_add(s, "public.big", id, "insert", data, 1000, "{}", 2, &src, &e),
                         0);
        }
        CHECK_INT_EQ(es_tx_commit(s, "walrelay_ck", src.lsn, 999, &e), 0);
    }
}

/* SQLite: the checkpoint thread (es_ckpt_start) copies the WAL into the database file
 * before the writer's own limit, and the WAL stays bounded by that limit. */
static void
test_ckpt_thread(void)
{
    wr_es_store_t *s;
    wr_es_error_t e;
    char db[1024], wal[1040];
    long before;
    int next = 1, waited = 0;

    if (strncmp(spec, "postgres:", 9) == 0) {
        s = fresh();
        CHECK_INT_EQ(es_ckpt_start(s, &e), 0); /* nothing to do there */
        wr_es_close(s);
        return;
    }
    s = fresh();
    snprintf(db, sizeof(db), "%s", spec + 7);
    snprintf(wal, sizeof(wal), "%s-wal", db);
    CHECK_INT_EQ(es_ckpt_start(s, &e), 0);
    before = file_size(db);
    /* ~24 MB of WAL: past ES_CKPT_WAKE_PAGES, under ES_CKPT_LIMIT_PAGES (the writer does
     * not checkpoint itself yet): only the thread can have grown the database file */
    write_kb_events(s, 24, &next);
    while (file_size(db) < before + (8L << 20) && waited++ < 500)
        usleep(10000);
    CHECK(file_size(db) >= before + (8L << 20));
    /* ~100 MB more: the WAL never holds much more than the limit */
    for (int k = 0; k < 10; k++) {
        write_kb_events(s, 10, &next);
        CHECK(file_size(wal) <= (long)(ES_CKPT_LIMIT_PAGES + 2048) * 4096L);
    }
    CHECK_INT_EQ(head(s), next - 1);
    wr_es_close(s);
}

static void
run_all(void)
{
    RUN(test_append_versions);
    RUN(test_append_invalid);
    RUN(test_load_filters);
    RUN(test_load_pages);
    RUN(test_tx_progress);
    RUN(test_two_writers);
    RUN(test_claims);
    RUN(test_copy_staging);
    RUN(test_ckpt_thread);
}

int
main(void)
{
    const char *base = getenv("TMPDIR"), *pg = getenv("WALRELAY_TEST_ES_PG");

    snprintf(tmpdir, sizeof(tmpdir), "%s/wr_test_es_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_open_errors);
    printf("# sqlite\n");
    run_all();
    if (pg && *pg) {
        printf("# postgres\n");
        snprintf(spec, sizeof(spec), "postgres:%s", pg);
        run_all();
    } else {
        printf("# postgres: not run (WALRELAY_TEST_ES_PG unset; "
               "tests/integration/test_eventstore_api.py sets it)\n");
    }
    for (int i = 1; i <= ntest; i++) {
        char p[700];
        const char *sfx[] = {"", "-wal", "-shm"};

        for (int k = 0; k < 3; k++) {
            snprintf(p, sizeof(p), "%s/es%d.db%s", tmpdir, i, sfx[k]);
            unlink(p);
        }
    }
    {
        char p[700];
        snprintf(p, sizeof(p), "%s/other.db", tmpdir);
        unlink(p);
    }
    rmdir(tmpdir);
    return unit_done();
}
