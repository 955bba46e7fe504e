/*
 * test_state.c - unit tests of the state store: the same tests run against the SQLite
 * store (a fresh file per test) and the in-memory one; then SQLite-only checks of
 * durability across close/open, pragmas, the schema version and refusal of newer files.
 *
 * NOTES: files go to a mkdtemp() directory under $TMPDIR (or /tmp), removed at the end.
 */
#include "common/state.h"
#include "unit.h"

#include <sqlite3.h>
#include <unistd.h>

static char tmpdir[256];
static int dbseq;

static void
db_path(char *buf, size_t len, int seq)
{
    snprintf(buf, len, "%s/state%d.db", tmpdir, seq);
}

static void
remove_db(const char *path)
{
    char p[512];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

typedef void (*store_test_fn)(state_store_t *s);

static void
run_mem(store_test_fn fn)
{
    state_store_t *s = NULL;
    wr_err_t err;
    int rc = state_open_memory(&s, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc)
        return;
    fn(s);
    state_close(s);
}

static void
run_sqlite(store_test_fn fn)
{
    state_store_t *s = NULL;
    char path[512];
    wr_err_t err;
    int rc;
    db_path(path, sizeof(path), ++dbseq);
    rc = state_open_sqlite(path, &s, &err);
    if (rc)
        fprintf(stderr, "  open: %s\n", err.msg);
    CHECK_INT_EQ(rc, 0);
    if (rc)
        return;
    fn(s);
    state_close(s);
    remove_db(path);
}

/* test_x_mem and test_x_sqlite for a test_x(state_store_t *) */
#define BOTH(fn)                                                                                   \
    static void fn##_mem(void)                                                                     \
    {                                                                                              \
        run_mem(fn);                                                                               \
    }                                                                                              \
    static void fn##_sqlite(void)                                                                  \
    {                                                                                              \
        run_sqlite(fn);                                                                            \
    }

static wr_schema_t *
make_schema(uint32_t relid, const char *name, uint16_t ncols)
{
    wr_schema_t *sc = wr_schema_new(relid, "public", name, ncols);
    uint16_t i;
    if (!sc)
        abort();
    sc->replident = 'd';
    for (i = 0; i < ncols; i++) {
        char cname[32];
        snprintf(cname, sizeof(cname), "c%u", (unsigned)i);
        sc->cols[i].name = wr_strdup(cname);
        sc->cols[i].type_oid = 23 + i;
        sc->cols[i].typmod = i == 1 ? 655366 : -1;
        sc->cols[i].is_key = i == 0;
        sc->cols[i].not_null = i != 2;
    }
    return sc;
}

static void
check_schema_eq(const wr_schema_t *a, const wr_schema_t *b)
{
    uint16_t i;
    CHECK(a && b);
    if (!a || !b)
        return;
    CHECK_INT_EQ(a->relid, b->relid);
    CHECK_STR_EQ(a->nsp, b->nsp);
    CHECK_STR_EQ(a->name, b->name);
    CHECK_INT_EQ(a->replident, b->replident);
    CHECK_INT_EQ(a->ncols, b->ncols);
    for (i = 0; i < a->ncols && i < b->ncols; i++) {
        CHECK_STR_EQ(a->cols[i].name, b->cols[i].name);
        CHECK_INT_EQ(a->cols[i].type_oid, b->cols[i].type_oid);
        CHECK_INT_EQ(a->cols[i].typmod, b->cols[i].typmod);
        CHECK_INT_EQ(a->cols[i].is_key, b->cols[i].is_key);
        CHECK_INT_EQ(a->cols[i].not_null, b->cols[i].not_null);
    }
}

static state_table_t
get_table(state_store_t *s, uint32_t relid, bool want_found)
{
    state_table_t t;
    wr_err_t err;
    bool found = !want_found;
    CHECK_INT_EQ(s->ops->get_table(s, relid, &t, &found, &err), 0);
    CHECK_INT_EQ(found, want_found);
    return t;
}

static size_t
history_len(state_store_t *s, uint32_t relid)
{
    size_t n = 999;
    wr_err_t err;
    CHECK_INT_EQ(s->ops->history_len(s, relid, &n, &err), 0);
    return n;
}

/* ------------------------------------------------------------------------------------ */
/* tests run on both stores                                                             */
/* ------------------------------------------------------------------------------------ */

static void
test_tables(state_store_t *s)
{
    state_table_t *list = NULL, t;
    size_t n = 99;
    wr_err_t err;
    char longname[200];

    CHECK_INT_EQ(s->ops->list_tables(s, &list, &n, &err), 0);
    CHECK_INT_EQ(n, 0);
    free(list);

    CHECK_INT_EQ(s->ops->add_table(s, 30000, "public", "zeta", &err), 0);
    CHECK_INT_EQ(s->ops->add_table(s, 16384, "public", "orders", &err), 0);
    CHECK_INT_EQ(s->ops->add_table(s, 4294967295u, "sales", "big \xc3\xa9", &err), 0);
    /* present: no-op, the first name stays */
    CHECK_INT_EQ(s->ops->add_table(s, 16384, "other", "renamed", &err), 0);

    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK_INT_EQ(s->ops->add_table(s, 5, "public", longname, &err), WR_EINVAL);
    CHECK_INT_EQ(s->ops->add_table(s, 5, NULL, "t", &err), WR_EINVAL);

    CHECK_INT_EQ(s->ops->list_tables(s, &list, &n, &err), 0);
    CHECK_INT_EQ(n, 3);
    if (n == 3) {
        CHECK_INT_EQ(list[0].relid, 16384);
        CHECK_STR_EQ(list[0].nsp, "public");
        CHECK_STR_EQ(list[0].name, "orders");
        CHECK_INT_EQ(list[1].relid, 30000);
        CHECK_INT_EQ(list[2].relid, 4294967295u);
        CHECK_STR_EQ(list[2].name, "big \xc3\xa9");
        CHECK_INT_EQ(list[2].phase, PH_INIT);
    }
    free(list);

    t = get_table(s, 16384, true);
    CHECK_INT_EQ(t.relid, 16384);
    CHECK_STR_EQ(t.nsp, "public");
    CHECK_STR_EQ(t.name, "orders");
    CHECK_INT_EQ(t.phase, PH_INIT);
    CHECK_U64_EQ(t.lsn, 0);
    CHECK_INT_EQ(t.attempts, 0);
    CHECK_STR_EQ(t.err_kind, "");
    CHECK_STR_EQ(t.err_msg, "");
    CHECK(t.updated_at_ms > 1600000000000LL); /* wall clock, ms */
    get_table(s, 1, false);
    CHECK_INT_EQ(history_len(s, 16384), 0);

    /* attempts */
    CHECK_INT_EQ(s->ops->set_attempts(s, 16384, 4, &err), 0);
    CHECK_INT_EQ(get_table(s, 16384, true).attempts, 4);
    CHECK_INT_EQ(s->ops->set_attempts(s, 777, 1, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "777");
    get_table(s, 777, false);
}

static void
test_phases(state_store_t *s)
{
    state_table_t t;
    wr_err_t err;
    char big[2000];

    CHECK_INT_EQ(s->ops->add_table(s, 100, "public", "t", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_DATASYNC, 0, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_FINISHEDCOPY, 0x1000, NULL, NULL, NULL, &err), 0);
    t = get_table(s, 100, true);
    CHECK_INT_EQ(t.phase, PH_FINISHEDCOPY);
    CHECK_U64_EQ(t.lsn, 0x1000);
    CHECK_INT_EQ(history_len(s, 100), 2);

    /* error fields are kept only for Errored */
    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_SYNCWAIT, 0x1000, "kind", "msg", "hint", &err), 0);
    t = get_table(s, 100, true);
    CHECK_INT_EQ(t.phase, PH_SYNCWAIT);
    CHECK_STR_EQ(t.err_kind, "");
    CHECK_STR_EQ(t.err_msg, "");
    CHECK_STR_EQ(t.err_hint, "");

    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_ERRORED, 0x2000, "unsupported",
                                   "column \"x\" has type \"foo\"", "drop it", &err),
                 0);
    t = get_table(s, 100, true);
    CHECK_INT_EQ(t.phase, PH_ERRORED);
    CHECK_U64_EQ(t.lsn, 0x2000);
    CHECK_STR_EQ(t.err_kind, "unsupported");
    CHECK_STR_EQ(t.err_msg, "column \"x\" has type \"foo\"");
    CHECK_STR_EQ(t.err_hint, "drop it");

    /* leaving Errored clears them */
    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_INIT, 0, NULL, NULL, NULL, &err), 0);
    t = get_table(s, 100, true);
    CHECK_INT_EQ(t.phase, PH_INIT);
    CHECK_STR_EQ(t.err_kind, "");
    CHECK_STR_EQ(t.err_msg, "");
    CHECK_INT_EQ(history_len(s, 100), 5);

    /* long error text is cut to the field size, at a character boundary */
    memset(big, 'a', sizeof(big));
    big[508] = '\xc3';
    big[509] = '\xa9';
    big[510] = '\xc3'; /* a 2-byte character across the 511-byte cut: dropped whole */
    big[511] = '\xa9';
    big[sizeof(big) - 1] = '\0';
    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_ERRORED, 1, "a-very-long-error-kind-name-here-x", big,
                                   big, &err),
                 0);
    t = get_table(s, 100, true);
    CHECK_INT_EQ(strlen(t.err_kind), 31);
    CHECK_INT_EQ(strlen(t.err_msg), 510);
    CHECK(memcmp(t.err_msg + 508, "\xc3\xa9", 2) == 0);
    CHECK_INT_EQ(strlen(t.err_hint), 255);

    /* LSNs above 2^63 */
    CHECK_INT_EQ(s->ops->set_phase(s, 100, PH_SYNCDONE, 0xFFFFFFFFFFFFFFF0ull, "", "", "", &err),
                 0);
    CHECK_U64_EQ(get_table(s, 100, true).lsn, 0xFFFFFFFFFFFFFFF0ull);

    /* unknown table: refused, nothing created */
    CHECK_INT_EQ(s->ops->set_phase(s, 101, PH_DATASYNC, 0, NULL, NULL, NULL, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "table 101");
    CHECK_CONTAINS(err.msg, "not in the state store");
    get_table(s, 101, false);
    CHECK_INT_EQ(history_len(s, 101), 0);

    /* an invalid phase value is refused, the row is unchanged */
    CHECK_INT_EQ(s->ops->set_phase(s, 100, (wr_phase_t)PH_COUNT, 0, NULL, NULL, NULL, &err),
                 WR_EINVAL);
    CHECK_INT_EQ(get_table(s, 100, true).phase, PH_SYNCDONE);
    CHECK_INT_EQ(history_len(s, 100), 7);
}

static void
test_rollback(state_store_t *s)
{
    state_table_t t;
    wr_err_t err;

    CHECK_INT_EQ(s->ops->add_table(s, 7, "public", "t", &err), 0);
    CHECK_INT_EQ(s->ops->rollback_phase(s, 7, &err), WR_EINVAL); /* empty history */
    CHECK_CONTAINS(err.msg, "no earlier phase");
    CHECK_INT_EQ(s->ops->rollback_phase(s, 8, &err), WR_EINVAL); /* no table */

    CHECK_INT_EQ(s->ops->set_phase(s, 7, PH_CATCHUP, 0x5000, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 7, PH_ERRORED, 0x6000, "k", "m", "h", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 7, PH_INIT, 0, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(history_len(s, 7), 3);

    /* prev_phase reads what rollback_phase would restore, and changes nothing */
    {
        wr_phase_t ph = PH_READY;
        wr_lsn_t lsn = 1;
        bool found = false;

        CHECK_INT_EQ(s->ops->prev_phase(s, 7, &ph, &lsn, &found, &err), 0);
        CHECK(found);
        CHECK_INT_EQ(ph, PH_ERRORED);
        CHECK_U64_EQ(lsn, 0x6000);
        CHECK_INT_EQ(history_len(s, 7), 3);
        CHECK_INT_EQ(get_table(s, 7, true).phase, PH_INIT);
        CHECK_INT_EQ(s->ops->prev_phase(s, 8, &ph, &lsn, &found, &err), 0); /* no table */
        CHECK(!found);
    }

    CHECK_INT_EQ(s->ops->rollback_phase(s, 7, &err), 0);
    t = get_table(s, 7, true);
    CHECK_INT_EQ(t.phase, PH_ERRORED);
    CHECK_U64_EQ(t.lsn, 0x6000);
    CHECK_STR_EQ(t.err_kind, "k");
    CHECK_STR_EQ(t.err_msg, "m");
    CHECK_STR_EQ(t.err_hint, "h");
    CHECK_INT_EQ(history_len(s, 7), 2);

    CHECK_INT_EQ(s->ops->rollback_phase(s, 7, &err), 0);
    t = get_table(s, 7, true);
    CHECK_INT_EQ(t.phase, PH_CATCHUP);
    CHECK_U64_EQ(t.lsn, 0x5000);
    CHECK_STR_EQ(t.err_kind, "");
    CHECK_STR_EQ(t.err_msg, "");
    CHECK_STR_EQ(t.err_hint, "");

    CHECK_INT_EQ(s->ops->rollback_phase(s, 7, &err), 0);
    t = get_table(s, 7, true);
    CHECK_INT_EQ(t.phase, PH_INIT);
    CHECK_U64_EQ(t.lsn, 0);
    CHECK_INT_EQ(history_len(s, 7), 0);
    {
        wr_phase_t ph = PH_READY;
        wr_lsn_t lsn = 1;
        bool found = true;

        CHECK_INT_EQ(s->ops->prev_phase(s, 7, &ph, &lsn, &found, &err), 0); /* empty history */
        CHECK(!found);
    }
    CHECK_INT_EQ(s->ops->rollback_phase(s, 7, &err), WR_EINVAL);
    CHECK_INT_EQ(get_table(s, 7, true).phase, PH_INIT);

    /* a set after a rollback pushes again */
    CHECK_INT_EQ(s->ops->set_phase(s, 7, PH_DATASYNC, 0, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(history_len(s, 7), 1);
    CHECK_INT_EQ(s->ops->rollback_phase(s, 7, &err), 0);
    CHECK_INT_EQ(get_table(s, 7, true).phase, PH_INIT);
}

static void
test_remove(state_store_t *s)
{
    wr_schema_t *sc = make_schema(50, "gone", 2), *got = (wr_schema_t *)1;
    wr_lsn_t v = 1;
    wr_err_t err;
    char buf[64];

    CHECK_INT_EQ(s->ops->add_table(s, 50, "public", "gone", &err), 0);
    CHECK_INT_EQ(s->ops->add_table(s, 51, "public", "kept", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 50, PH_DATASYNC, 0, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 50, PH_ERRORED, 0, "k", "m", "h", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 51, PH_DATASYNC, 0, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(s->ops->put_schema(s, sc, 10, &err), 0);
    CHECK_INT_EQ(s->ops->put_schema(s, sc, 20, &err), 0);
    sc->relid = 51;
    CHECK_INT_EQ(s->ops->put_schema(s, sc, 10, &err), 0);
    CHECK_INT_EQ(s->ops->put_mapping(s, 50, "dst_gone", &err), 0);
    CHECK_INT_EQ(s->ops->put_mapping(s, 51, "dst_kept", &err), 0);

    CHECK_INT_EQ(s->ops->remove_table(s, 50, &err), 0);
    get_table(s, 50, false);
    CHECK_INT_EQ(history_len(s, 50), 0);
    CHECK_INT_EQ(s->ops->get_schema(s, 50, UINT64_MAX, &got, &v, &err), 0);
    CHECK(got == NULL);
    CHECK_U64_EQ(v, 0);
    CHECK_INT_EQ(s->ops->get_mapping(s, 50, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "");

    /* the other table is untouched */
    CHECK_INT_EQ(get_table(s, 51, true).phase, PH_DATASYNC);
    CHECK_INT_EQ(history_len(s, 51), 1);
    CHECK_INT_EQ(s->ops->get_schema(s, 51, UINT64_MAX, &got, &v, &err), 0);
    CHECK(got != NULL);
    CHECK_U64_EQ(v, 10);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_mapping(s, 51, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "dst_kept");

    /* removing again (or an unknown table) is fine; re-adding starts clean */
    CHECK_INT_EQ(s->ops->remove_table(s, 50, &err), 0);
    CHECK_INT_EQ(s->ops->add_table(s, 50, "public", "gone", &err), 0);
    CHECK_INT_EQ(get_table(s, 50, true).phase, PH_INIT);
    CHECK_INT_EQ(history_len(s, 50), 0);
    CHECK_INT_EQ(s->ops->rollback_phase(s, 50, &err), WR_EINVAL);
    wr_schema_free(sc);
}

static void
test_schemas(state_store_t *s)
{
    wr_schema_t *v1 = make_schema(60, "t", 2), *v2 = make_schema(60, "t", 3);
    wr_schema_t *v3 = make_schema(60, "t_renamed", 4), *v0 = make_schema(60, "t", 0);
    wr_schema_t *other = make_schema(61, "u", 1), *got = NULL;
    const wr_lsn_t hi = 0x8000000000000010ull; /* above 2^63 */
    wr_lsn_t ver = 0;
    wr_err_t err;

    v2->replident = 'f';
    v3->replident = 'i';
    CHECK_INT_EQ(s->ops->get_schema(s, 60, UINT64_MAX, &got, &ver, &err), 0);
    CHECK(got == NULL);

    CHECK_INT_EQ(s->ops->put_schema(s, v2, 200, &err), 0); /* out of order */
    CHECK_INT_EQ(s->ops->put_schema(s, v1, 100, &err), 0);
    CHECK_INT_EQ(s->ops->put_schema(s, other, 150, &err), 0);

    CHECK_INT_EQ(s->ops->get_schema(s, 60, 99, &got, &ver, &err), 0); /* before any */
    CHECK(got == NULL);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, 100, &got, &ver, &err), 0);
    check_schema_eq(v1, got);
    CHECK_U64_EQ(ver, 100);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, 150, &got, &ver, &err), 0); /* between: older */
    check_schema_eq(v1, got);
    CHECK_U64_EQ(ver, 100);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, 200, &got, &ver, &err), 0);
    check_schema_eq(v2, got);
    CHECK_U64_EQ(ver, 200);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, UINT64_MAX, &got, &ver, &err), 0); /* latest */
    check_schema_eq(v2, got);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, 150, &got, NULL, &err), 0); /* version optional */
    check_schema_eq(v1, got);
    wr_schema_free(got);

    /* LSNs above 2^63 order after all smaller ones and round-trip exactly */
    CHECK_INT_EQ(s->ops->put_schema(s, v3, hi, &err), 0);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, UINT64_MAX, &got, &ver, &err), 0);
    check_schema_eq(v3, got);
    CHECK_U64_EQ(ver, hi);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, hi - 1, &got, &ver, &err), 0);
    check_schema_eq(v2, got);
    CHECK_U64_EQ(ver, 200);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, 0x7FFFFFFFFFFFFFFFull, &got, &ver, &err), 0);
    check_schema_eq(v2, got);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->put_schema(s, v0, UINT64_MAX, &err), 0);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, UINT64_MAX - 1, &got, &ver, &err), 0);
    check_schema_eq(v3, got);
    CHECK_U64_EQ(ver, hi);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, UINT64_MAX, &got, &ver, &err), 0);
    check_schema_eq(v0, got); /* zero columns */
    CHECK_U64_EQ(ver, UINT64_MAX);
    wr_schema_free(got);

    /* the same (relid, lsn) is replaced */
    CHECK_INT_EQ(s->ops->put_schema(s, v3, 100, &err), 0);
    CHECK_INT_EQ(s->ops->get_schema(s, 60, 150, &got, &ver, &err), 0);
    check_schema_eq(v3, got);
    CHECK_U64_EQ(ver, 100);
    wr_schema_free(got);

    /* other relids are separate */
    CHECK_INT_EQ(s->ops->get_schema(s, 61, UINT64_MAX, &got, &ver, &err), 0);
    check_schema_eq(other, got);
    CHECK_U64_EQ(ver, 150);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_schema(s, 61, 149, &got, &ver, &err), 0);
    CHECK(got == NULL);

    CHECK_INT_EQ(s->ops->put_schema(s, NULL, 1, &err), WR_EINVAL);
    wr_schema_free(v0);
    wr_schema_free(v1);
    wr_schema_free(v2);
    wr_schema_free(v3);
    wr_schema_free(other);
}

static void
test_mapping(state_store_t *s)
{
    char buf[32], small[4];
    wr_err_t err;

    strcpy(buf, "junk");
    CHECK_INT_EQ(s->ops->get_mapping(s, 70, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "");
    CHECK_INT_EQ(s->ops->put_mapping(s, 70, "public_orders", &err), 0);
    CHECK_INT_EQ(s->ops->get_mapping(s, 70, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "public_orders");
    CHECK_INT_EQ(s->ops->put_mapping(s, 70, "orders_v2", &err), 0);
    CHECK_INT_EQ(s->ops->get_mapping(s, 70, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "orders_v2");
    CHECK_INT_EQ(s->ops->get_mapping(s, 71, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "");
    /* too small a buffer is an error, not a silent cut */
    CHECK_INT_EQ(s->ops->get_mapping(s, 70, small, sizeof(small), &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "needs 10 bytes");
    CHECK_INT_EQ(s->ops->put_mapping(s, 70, NULL, &err), WR_EINVAL);
}

static void
test_progress(state_store_t *s)
{
    state_progress_t p, q;
    bool found = true;
    wr_err_t err;

    CHECK_INT_EQ(s->ops->get_progress(s, &q, &found, &err), 0);
    CHECK(!found);
    memset(&p, 0, sizeof(p));
    strcpy(p.slot_name, "walrelay_main");
    p.confirmed_flush = 0x16B374D848ull;
    CHECK_INT_EQ(s->ops->set_progress(s, &p, &err), 0);
    CHECK_INT_EQ(s->ops->get_progress(s, &q, &found, &err), 0);
    CHECK(found);
    CHECK_STR_EQ(q.slot_name, "walrelay_main");
    CHECK_U64_EQ(q.confirmed_flush, 0x16B374D848ull);

    p.confirmed_flush = 0xFFFFFFFFFFFFFFFFull;
    CHECK_INT_EQ(s->ops->set_progress(s, &p, &err), 0);
    CHECK_INT_EQ(s->ops->get_progress(s, &q, &found, &err), 0);
    CHECK_U64_EQ(q.confirmed_flush, 0xFFFFFFFFFFFFFFFFull);

    memset(p.slot_name, 'x', sizeof(p.slot_name)); /* not terminated */
    CHECK_INT_EQ(s->ops->set_progress(s, &p, &err), WR_EINVAL);
    CHECK_INT_EQ(s->ops->get_progress(s, &q, &found, &err), 0);
    CHECK_STR_EQ(q.slot_name, "walrelay_main");
}

/* Pipeline flags (added with schema version 2). */
static void
test_flags(state_store_t *s)
{
    int64_t v = 99;
    bool found = true;
    wr_err_t err;
    char longname[80];

    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(!found);
    CHECK_INT_EQ(v, 0);
    CHECK_INT_EQ(s->ops->set_flag(s, "paused", 1, &err), 0);
    CHECK_INT_EQ(s->ops->set_flag(s, "slot_lost_recopied", -7, &err), 0);
    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(found);
    CHECK_INT_EQ(v, 1);
    CHECK_INT_EQ(s->ops->get_flag(s, "slot_lost_recopied", &v, &found, &err), 0);
    CHECK(found);
    CHECK_INT_EQ(v, -7);
    /* overwrite, independent names */
    CHECK_INT_EQ(s->ops->set_flag(s, "paused", 0, &err), 0);
    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(found);
    CHECK_INT_EQ(v, 0);
    CHECK_INT_EQ(s->ops->get_flag(s, "slot_lost_recopied", &v, &found, &err), 0);
    CHECK_INT_EQ(v, -7);
    /* bad names */
    CHECK_INT_EQ(s->ops->set_flag(s, "", 1, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "invalid flag name");
    memset(longname, 'f', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    CHECK_INT_EQ(s->ops->set_flag(s, longname, 1, &err), WR_EINVAL);
    CHECK_INT_EQ(s->ops->get_flag(s, longname, &v, &found, &err), WR_EINVAL);
    CHECK(!found);
}

BOTH(test_tables)
BOTH(test_phases)
BOTH(test_rollback)
BOTH(test_remove)
BOTH(test_schemas)
BOTH(test_mapping)
BOTH(test_progress)
BOTH(test_flags)

/* ------------------------------------------------------------------------------------ */
/* SQLite only                                                                          */
/* ------------------------------------------------------------------------------------ */

static int64_t
raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -12345;
    CHECK_INT_EQ(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "  raw \"%s\": %s\n", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void
raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    CHECK_INT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void
test_sqlite_reopen(void)
{
    wr_schema_t *sc = make_schema(80, "durable", 3), *got = NULL;
    state_progress_t p;
    state_store_t *s = NULL;
    state_table_t t, *list = NULL;
    char path[512], buf[64];
    size_t n = 0;
    bool found = false;
    wr_lsn_t ver = 0;
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    memset(&p, 0, sizeof(p));
    strcpy(p.slot_name, "walrelay_p");
    p.confirmed_flush = 0x9000000000000000ull;
    CHECK_INT_EQ(s->ops->set_progress(s, &p, &err), 0);
    CHECK_INT_EQ(s->ops->add_table(s, 80, "public", "durable", &err), 0);
    CHECK_INT_EQ(s->ops->add_table(s, 81, "public", "other", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 80, PH_DATASYNC, 0, NULL, NULL, NULL, &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 80, PH_ERRORED, 0x8000000000000001ull, "k", "m", "h", &err),
                 0);
    CHECK_INT_EQ(s->ops->set_attempts(s, 80, 2, &err), 0);
    CHECK_INT_EQ(s->ops->put_schema(s, sc, 0xA000000000000000ull, &err), 0);
    CHECK_INT_EQ(s->ops->put_mapping(s, 80, "dst", &err), 0);
    state_close(s);
    s = NULL;

    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->get_progress(s, &p, &found, &err), 0);
    CHECK(found);
    CHECK_STR_EQ(p.slot_name, "walrelay_p");
    CHECK_U64_EQ(p.confirmed_flush, 0x9000000000000000ull);
    CHECK_INT_EQ(s->ops->list_tables(s, &list, &n, &err), 0);
    CHECK_INT_EQ(n, 2);
    free(list);
    t = get_table(s, 80, true);
    CHECK_INT_EQ(t.phase, PH_ERRORED);
    CHECK_U64_EQ(t.lsn, 0x8000000000000001ull);
    CHECK_STR_EQ(t.err_msg, "m");
    CHECK_INT_EQ(t.attempts, 2);
    CHECK_INT_EQ(history_len(s, 80), 2);
    CHECK_INT_EQ(s->ops->get_schema(s, 80, UINT64_MAX, &got, &ver, &err), 0);
    check_schema_eq(sc, got);
    CHECK_U64_EQ(ver, 0xA000000000000000ull);
    wr_schema_free(got);
    CHECK_INT_EQ(s->ops->get_mapping(s, 80, buf, sizeof(buf), &err), 0);
    CHECK_STR_EQ(buf, "dst");
    /* the history survived too: rollback works after reopening */
    CHECK_INT_EQ(s->ops->rollback_phase(s, 80, &err), 0);
    CHECK_INT_EQ(get_table(s, 80, true).phase, PH_DATASYNC);
    state_close(s);

    /* and the rollback itself was durable */
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (s) {
        CHECK_INT_EQ(get_table(s, 80, true).phase, PH_DATASYNC);
        CHECK_INT_EQ(history_len(s, 80), 1);
        state_close(s);
    }
    wr_schema_free(sc);
    remove_db(path);
}

static void
test_sqlite_pragmas(void)
{
    state_store_t *s = NULL;
    char path[512];
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->add_table(s, 90, "public", "t", &err), 0);
    CHECK_INT_EQ(s->ops->set_phase(s, 90, PH_ERRORED, 0, "kind", "full message", "", &err), 0);
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = "
                               "'wal'"),
                 1);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name "
                               "IN ('pipeline', 'tables', 'table_phase_history', "
                               "'table_schemas', 'table_schema_columns', 'table_mappings', "
                               "'copy_partitions', 'errors')"),
                 8);
    /* Errored phases are logged */
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM errors WHERE relid = 90 AND kind = 'kind' "
                               "AND message = 'full message'"),
                 1);
    /* phases are stored by name */
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM tables WHERE phase = 'errored'"), 1);
    CHECK_INT_EQ(s->ops->remove_table(s, 90, &err), 0);
    CHECK_INT_EQ(raw_int(path, "SELECT count(*) FROM errors"), 0);
    state_close(s);

    /* reopening a current file does not migrate again */
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    state_close(s);
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION);
    remove_db(path);
}

/* A version 1 file (before pipeline_flags) is migrated, keeping its rows; flags persist. */
static void
test_sqlite_migrate_v1(void)
{
    state_store_t *s = NULL;
    char path[512];
    int64_t v = 0;
    bool found = false;
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->add_table(s, 70, "public", "old", &err), 0);
    state_close(s);
    s = NULL;
    /* make it look like a file written by schema version 1 */
    raw_exec(path, "DROP TABLE pipeline_flags; PRAGMA user_version = 1");
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), 1);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION);
    CHECK_INT_EQ(get_table(s, 70, true).phase, PH_INIT);
    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(!found);
    CHECK_INT_EQ(s->ops->set_flag(s, "paused", 1, &err), 0);
    state_close(s);
    s = NULL;
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    if (!s)
        return;
    CHECK_INT_EQ(s->ops->get_flag(s, "paused", &v, &found, &err), 0);
    CHECK(found);
    CHECK_INT_EQ(v, 1);
    state_close(s);
    remove_db(path);
}

static void
test_sqlite_newer_refused(void)
{
    state_store_t *s = (state_store_t *)1;
    char path[512], sql[64], want[128];
    wr_err_t err;

    db_path(path, sizeof(path), ++dbseq);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), 0);
    state_close(s);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", STATE_SCHEMA_VERSION + 1);
    raw_exec(path, sql);
    wr_err_clear(&err);
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), WR_ESTATE);
    CHECK(s == NULL);
    snprintf(want, sizeof(want),
             "state.db was written by a newer walrelay (schema %d, this build knows %d)",
             STATE_SCHEMA_VERSION + 1, STATE_SCHEMA_VERSION);
    CHECK_CONTAINS(err.msg, want);
    CHECK(err.hint[0] != '\0');
    /* the file was not touched */
    CHECK_INT_EQ(raw_int(path, "PRAGMA user_version"), STATE_SCHEMA_VERSION + 1);
    remove_db(path);
}

static void
test_sqlite_bad_files(void)
{
    state_store_t *s = (state_store_t *)1;
    char path[512];
    wr_err_t err;
    FILE *f;

    /* not a database */
    db_path(path, sizeof(path), ++dbseq);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("this is not an sqlite file, just some text long enough to have a header..."
              "................................................................",
              f);
        fclose(f);
    }
    CHECK_INT_EQ(state_open_sqlite(path, &s, &err), WR_ESTATE);
    CHECK(s == NULL);
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "not a database");
    remove_db(path);

    /* a directory that does not exist */
    CHECK_INT_EQ(state_open_sqlite("/nonexistent-walrelay-dir/state.db", &s, &err), WR_ESTATE);
    CHECK(s == NULL);
    CHECK_CONTAINS(err.msg, "/nonexistent-walrelay-dir/state.db");
}

int
main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/wr_test_state_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_tables_mem);
    RUN(test_tables_sqlite);
    RUN(test_phases_mem);
    RUN(test_phases_sqlite);
    RUN(test_rollback_mem);
    RUN(test_rollback_sqlite);
    RUN(test_remove_mem);
    RUN(test_remove_sqlite);
    RUN(test_schemas_mem);
    RUN(test_schemas_sqlite);
    RUN(test_mapping_mem);
    RUN(test_mapping_sqlite);
    RUN(test_progress_mem);
    RUN(test_progress_sqlite);
    RUN(test_flags_mem);
    RUN(test_flags_sqlite);
    RUN(test_sqlite_migrate_v1);
    RUN(test_sqlite_reopen);
    RUN(test_sqlite_pragmas);
    RUN(test_sqlite_newer_refused);
    RUN(test_sqlite_bad_files);
    rmdir(tmpdir);
    return unit_done();
}
