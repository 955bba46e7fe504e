/*
 * test_dest_sqlite.c - unit tests of the sqlite and null destinations and the naming
 * helpers of destination.c, against real SQLite files in a temporary directory.
 *
 * NOTES: each test opens its own database file; a second, independent connection reads
 * what the destination wrote (typeof(), table_info) as another process would.
 */
#include "destinations/destination.h"
#include "common/pgtype.h"
#include "unit.h"

#include <sqlite3.h>
#include <unistd.h>

static char tmpdir[256];
static int dbseq;
static char dbpath[512];
static wr_config_t cfg;

#define TV(s) ((wr_val_t){WR_VAL_TEXT, (uint32_t)strlen(s), (s)})
#define NV    ((wr_val_t){WR_VAL_NULL, 0, NULL})
#define UV    ((wr_val_t){WR_VAL_UNCHANGED, 0, NULL})

typedef struct colspec_s {
    const char *name;
    uint32_t oid;
    bool key;
} colspec_t;

static wr_schema_t *
mk_schema(uint32_t relid, const char *nsp, const char *name, const colspec_t *cols, uint16_t n)
{
    wr_schema_t *s = wr_schema_new(relid, nsp, name, n);

    if (s == NULL)
        abort();
    for (uint16_t i = 0; i < n; i++) {
        s->cols[i].name = wr_strdup(cols[i].name);
        s->cols[i].type_oid = cols[i].oid;
        s->cols[i].typmod = -1;
        s->cols[i].is_key = cols[i].key;
        s->cols[i].not_null = cols[i].key;
    }
    return s;
}

/* A fresh database path and an open destination on it. */
static dest_t *
open_new(void)
{
    dest_t *d = NULL;
    wr_err_t err = {0};
    int rc;

    snprintf(dbpath, sizeof(dbpath), "%s/dest%d.db", tmpdir, ++dbseq);
    memset(&cfg, 0, sizeof(cfg));
    cfg.dest_type = "sqlite";
    cfg.dest_path = dbpath;
    rc = dest_open(&cfg, &d, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  open: %s\n", err.msg);
        exit(1);
    }
    return d;
}

/* Reopens the current database path. */
static dest_t *
reopen(void)
{
    dest_t *d = NULL;
    wr_err_t err = {0};
    int rc = dest_open(&cfg, &d, &err);

    CHECK_INT_EQ(rc, 0);
    if (rc != 0) {
        fprintf(stderr, "  reopen: %s\n", err.msg);
        exit(1);
    }
    return d;
}

/* First column of the first row of sql on an independent connection, as text
 * ("NULL", or "(none)" when there is no row). */
static const char *
q1(const char *sql)
{
    static char buf[1024];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int r;

    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(buf, sizeof(buf), "(open failed)");
    } else if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(buf, sizeof(buf), "(error: %s)", sqlite3_errmsg(db));
    } else if ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, sizeof(buf), "%s", t ? (const char *)t : "NULL");
    } else {
        snprintf(buf, sizeof(buf), r == SQLITE_DONE ? "(none)" : "(step error)");
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return buf;
}

static int
ensure(dest_t *d, const wr_schema_t *s, wr_err_t *err)
{
    return d->ops->ensure_table(d, s, err);
}

/* Writes one event in its own transaction; returns the write's result (commit only on
 * success, rollback otherwise). */
static int
one_event(dest_t *d, const dest_event_t *ev, wr_err_t *err)
{
    wr_err_t e2 = {0};
    int rc;

    CHECK_INT_EQ(d->ops->begin(d, &e2), 0);
    rc = d->ops->write_event(d, ev, err);
    if (rc == 0)
        CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &e2), 0);
    else
        CHECK_INT_EQ(d->ops->rollback(d, &e2), 0);
    return rc;
}

static int
ins(dest_t *d, uint32_t relid, wr_val_t *vals, uint16_t n, wr_err_t *err)
{
    wr_row_t row = {n, vals};
    dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = relid, .new_row = &row};

    return one_event(d, &ev, err);
}

static const colspec_t items_cols[] = {
    {"id", PGT_INT4, true},     {"name", PGT_TEXT, false}, {"price", PGT_NUMERIC, false},
    {"data", PGT_BYTEA, false}, {"flag", PGT_BOOL, false}, {"score", PGT_FLOAT8, false},
};

/* ---- tests ------------------------------------------------------------------------ */

static void
test_naming(void)
{
    char buf[128];

    dest_table_name("public", "orders", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "orders");
    dest_table_name("sales", "orders", buf, sizeof(buf));
    CHECK_STR_EQ(buf, "sales__orders");
    dest_sync_stream(16384, buf, sizeof(buf));
    CHECK_STR_EQ(buf, "sync_16384");
    CHECK(dest_lookup("sqlite") == &dest_sqlite_ops);
    CHECK(dest_lookup("null") == &dest_null_ops);
    CHECK(dest_lookup("postgres") == NULL);
}

static void
test_open_unknown_type(void)
{
    wr_config_t c;
    dest_t *d = (dest_t *)&c;
    wr_err_t err = {0};

    memset(&c, 0, sizeof(c));
    c.dest_type = "x";
    CHECK_INT_EQ(dest_open(&c, &d, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "unknown destination type \"x\" (choose sqlite or null)");
    CHECK(d == NULL);
}

static void
test_null_destination(void)
{
    wr_config_t c;
    dest_t *d = NULL;
    wr_err_t err = {0};
    dest_key_t k = {1, 1}, got;
    bool found = true;
    wr_schema_t *s = mk_schema(1, "public", "t", items_cols, 6);
    wr_val_t v[1] = {TV("x")};
    wr_row_t row = {1, v};
    dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = 1, .new_row = &row};

    memset(&c, 0, sizeof(c));
    c.dest_type = "null";
    CHECK_INT_EQ(dest_open(&c, &d, &err), 0);
    if (d == NULL)
        return;
    CHECK_STR_EQ(d->ops->name, "null");
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 1, &row, 1, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), 0);
    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK(!found);
    CHECK_INT_EQ(d->ops->count_rows(d, 1), -1);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_create_from_schema(void)
{
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(100, "public", "items", items_cols, 6);
    wr_err_t err = {0};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_STR_EQ(q1("SELECT group_concat(name || ':' || type || ':' || pk, ',') FROM "
                    "(SELECT * FROM pragma_table_info('items') ORDER BY cid)"),
                 "id:INTEGER:1,name:TEXT:0,price:TEXT:0,data:BLOB:0,flag:INTEGER:0,score:REAL:0");
    CHECK_STR_EQ(q1("PRAGMA journal_mode"), "wal");
    CHECK_STR_EQ(q1("SELECT dest_name || '|' || nsp || '|' || name FROM _walrelay_tables "
                    "WHERE relid = 100"),
                 "items|public|items");
    CHECK_CONTAINS(q1("SELECT columns_json FROM _walrelay_tables WHERE relid = 100"),
                   "{\"name\":\"id\",\"type_oid\":23,\"typmod\":-1,\"key\":true");
    CHECK_INT_EQ(d->ops->count_rows(d, 100), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 999), -1);
    /* same schema again: no-op; and a second handle sees an existing matching table */
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    d->ops->close(d);
    d = reopen();
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 100), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_composite_key(void)
{
    static const colspec_t cols[] = {
        {"a", PGT_INT4, false}, {"k2", PGT_TEXT, true}, {"k1", PGT_INT8, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(7, "public", "ck", cols, 3);
    wr_err_t err = {0};
    wr_val_t v[3] = {TV("1"), TV("x"), TV("2")};
    wr_val_t nv[3] = {TV("9"), TV("x"), TV("2")};
    wr_row_t nrow = {3, nv};
    dest_event_t ev = {.kind = DEST_EV_UPDATE, .relid = 7, .new_row = &nrow};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_STR_EQ(q1("SELECT group_concat(name || ':' || pk, ',') FROM "
                    "(SELECT * FROM pragma_table_info('ck') ORDER BY cid)"),
                 "a:0,k2:1,k1:2");
    CHECK_INT_EQ(ins(d, 7, v, 3, &err), 0);
    CHECK_INT_EQ(one_event(d, &ev, &err), 0);
    CHECK_STR_EQ(q1("SELECT a FROM ck WHERE k1 = 2 AND k2 = 'x'"), "9");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_insert_update_delete_truncate(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(5, "public", "t", cols, 2);
    wr_err_t err = {0};
    wr_val_t r1[2] = {TV("1"), TV("one")}, r2[2] = {TV("2"), TV("two")}, r3[2] = {TV("3"), NV};
    wr_val_t u1[2] = {TV("1"), TV("uno")}, k2[2] = {TV("2"), NV};
    wr_row_t nrow = {2, u1}, orow = {2, k2};
    dest_event_t upd = {.kind = DEST_EV_UPDATE, .relid = 5, .new_row = &nrow};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 5, .old_kind = 'K', .old_row = &orow};
    dest_event_t tr = {.kind = DEST_EV_TRUNCATE, .relid = 5};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 5, r1, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 5, r2, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 5, r3, 2, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 5), 3);
    CHECK_STR_EQ(q1("SELECT typeof(v) FROM t WHERE id = 3"), "null");

    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(q1("SELECT v FROM t WHERE id = 1"), "uno");
    CHECK_STR_EQ(q1("SELECT v FROM t WHERE id = 2"), "two");

    CHECK_INT_EQ(one_event(d, &del, &err), 0);
    CHECK_STR_EQ(q1("SELECT group_concat(id, ',') FROM (SELECT id FROM t ORDER BY id)"), "1,3");

    CHECK_INT_EQ(one_event(d, &tr, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 5), 0);

    /* truncate_table + write_rows, the copy path */
    {
        wr_row_t rows[2] = {{2, r1}, {2, r2}};

        CHECK_INT_EQ(d->ops->begin(d, &err), 0);
        CHECK_INT_EQ(d->ops->write_rows(d, 5, rows, 2, &err), 0);
        CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
        CHECK_INT_EQ(d->ops->count_rows(d, 5), 2);
        CHECK_INT_EQ(d->ops->begin(d, &err), 0);
        CHECK_INT_EQ(d->ops->truncate_table(d, 5, &err), 0);
        CHECK_INT_EQ(d->ops->write_rows(d, 5, rows, 1, &err), 0);
        CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
        CHECK_STR_EQ(q1("SELECT group_concat(id, ',') FROM t"), "1");
    }
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_update_unchanged_toast(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true},
                                     {"big", PGT_TEXT, false},
                                     {"n", PGT_INT4, false},
                                     {"doc", PGT_JSONB, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(6, "public", "toasty", cols, 4);
    wr_err_t err = {0};
    wr_val_t r[4] = {TV("1"), TV("a very long value"), TV("1"), TV("{\"a\": 1}")};
    wr_val_t u1[4] = {TV("1"), UV, TV("2"), TV("{\"a\": 2}")};
    wr_val_t u2[4] = {TV("1"), UV, TV("3"), UV};
    wr_val_t u3[4] = {TV("1"), TV("short"), TV("4"), UV};
    wr_row_t nrow = {4, u1};
    dest_event_t ev = {.kind = DEST_EV_UPDATE, .relid = 6, .new_row = &nrow};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 6, r, 4, &err), 0);
    CHECK_INT_EQ(one_event(d, &ev, &err), 0);
    CHECK_STR_EQ(q1("SELECT big || '|' || n || '|' || doc FROM toasty"),
                 "a very long value|2|{\"a\": 2}");
    nrow.vals = u2; /* a second pattern */
    CHECK_INT_EQ(one_event(d, &ev, &err), 0);
    CHECK_STR_EQ(q1("SELECT big || '|' || n || '|' || doc FROM toasty"),
                 "a very long value|3|{\"a\": 2}");
    nrow.vals = u3;
    CHECK_INT_EQ(one_event(d, &ev, &err), 0);
    CHECK_STR_EQ(q1("SELECT big || '|' || n || '|' || doc FROM toasty"), "short|4|{\"a\": 2}");
    nrow.vals = u1; /* first pattern again, from the cache */
    CHECK_INT_EQ(one_event(d, &ev, &err), 0);
    CHECK_STR_EQ(q1("SELECT big || '|' || n || '|' || doc FROM toasty"), "short|2|{\"a\": 2}");
    /* an unchanged value in an insert is an error */
    CHECK_INT_EQ(ins(d, 6, u1, 4, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "\"big\"");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_update_key_change(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(8, "public", "kc", cols, 2);
    wr_err_t err = {0};
    wr_val_t r[2] = {TV("1"), TV("one")}, oldk[2] = {TV("1"), NV}, nv[2] = {TV("10"), TV("ten")};
    wr_row_t orow = {2, oldk}, nrow = {2, nv};
    dest_event_t ev = {
        .kind = DEST_EV_UPDATE, .relid = 8, .old_kind = 'K', .old_row = &orow, .new_row = &nrow};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 8, r, 2, &err), 0);
    CHECK_INT_EQ(one_event(d, &ev, &err), 0);
    CHECK_STR_EQ(q1("SELECT group_concat(id || '=' || v) FROM kc"), "10=ten");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_replica_identity_full_old_row(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(9, "public", "rif", cols, 2);
    wr_err_t err = {0};
    /* the old row's non-key value differs from the destination's: only the key counts */
    wr_val_t r[2] = {TV("1"), TV("one")}, oldr[2] = {TV("1"), TV("something else")},
             nv[2] = {TV("1"), TV("uno")};
    wr_row_t orow = {2, oldr}, nrow = {2, nv};
    dest_event_t upd = {
        .kind = DEST_EV_UPDATE, .relid = 9, .old_kind = 'O', .old_row = &orow, .new_row = &nrow};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 9, .old_kind = 'O', .old_row = &orow};

    s->replident = 'f';
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 9, r, 2, &err), 0);
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(q1("SELECT v FROM rif WHERE id = 1"), "uno");
    CHECK_INT_EQ(one_event(d, &del, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 9), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_value_classes(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT8, true},      {"b", PGT_BOOL, false},
                                     {"f8", PGT_FLOAT8, false},   {"f4", PGT_FLOAT4, false},
                                     {"num", PGT_NUMERIC, false}, {"by", PGT_BYTEA, false},
                                     {"i2", PGT_INT2, false},     {"ts", PGT_TIMESTAMPTZ, false},
                                     {"t", PGT_TEXT, false},      {"raw", PGT_INT4, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(10, "public", "vals", cols, 10);
    wr_err_t err = {0};
    wr_val_t r1[10] = {TV("-9223372036854775808"),
                       TV("t"),
                       TV("1.5"),
                       TV("NaN"),
                       TV("12345678901234567890.123456789"),
                       TV("\\x00ff41"),
                       TV("-32768"),
                       TV("2024-01-02 03:04:05+00"),
                       TV(""),
                       {WR_VAL_BINARY, 4, "\x01\x02\x03\x04"}};
    wr_val_t r2[10] = {
        TV("2"),  TV("f"), TV("Infinity"), TV("-Infinity"), TV("0.10"), TV("\\x"), NV, NV,
        TV("12"), NV};
    wr_val_t r3[10] = {TV("3"),           NV, TV("-0.25"), TV("3e+38"), NV,
                       TV("\\xDEADbeef"), NV, NV,          NV,          NV};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 10, r1, 10, &err), 0);
    if (err.msg[0])
        fprintf(stderr, "  %s\n", err.msg);
    CHECK_INT_EQ(ins(d, 10, r2, 10, &err), 0);
    CHECK_INT_EQ(ins(d, 10, r3, 10, &err), 0);

    CHECK_STR_EQ(q1("SELECT typeof(id) || ':' || id FROM vals WHERE id < 0"),
                 "integer:-9223372036854775808");
    CHECK_STR_EQ(q1("SELECT typeof(b) || ':' || b FROM vals WHERE id < 0"), "integer:1");
    CHECK_STR_EQ(q1("SELECT typeof(b) || ':' || b FROM vals WHERE id = 2"), "integer:0");
    CHECK_STR_EQ(q1("SELECT typeof(f8) || ':' || f8 FROM vals WHERE id < 0"), "real:1.5");
    CHECK_STR_EQ(q1("SELECT typeof(f4) || ':' || f4 FROM vals WHERE id < 0"), "text:NaN");
    CHECK_STR_EQ(q1("SELECT typeof(f8) || ':' || f8 FROM vals WHERE id = 2"), "text:Infinity");
    CHECK_STR_EQ(q1("SELECT typeof(f4) || ':' || f4 FROM vals WHERE id = 2"), "text:-Infinity");
    CHECK_STR_EQ(q1("SELECT typeof(f8) || ':' || f8 FROM vals WHERE id = 3"), "real:-0.25");
    CHECK_STR_EQ(q1("SELECT typeof(num) || ':' || num FROM vals WHERE id < 0"),
                 "text:12345678901234567890.123456789");
    CHECK_STR_EQ(q1("SELECT typeof(num) || ':' || num FROM vals WHERE id = 2"), "text:0.10");
    CHECK_STR_EQ(q1("SELECT typeof(by) || ':' || hex(by) FROM vals WHERE id < 0"), "blob:00FF41");
    CHECK_STR_EQ(q1("SELECT typeof(by) || ':' || length(by) FROM vals WHERE id = 2"), "blob:0");
    CHECK_STR_EQ(q1("SELECT typeof(by) || ':' || hex(by) FROM vals WHERE id = 3"), "blob:DEADBEEF");
    CHECK_STR_EQ(q1("SELECT typeof(i2) || ':' || i2 FROM vals WHERE id < 0"), "integer:-32768");
    CHECK_STR_EQ(q1("SELECT typeof(ts) || ':' || ts FROM vals WHERE id < 0"),
                 "text:2024-01-02 03:04:05+00");
    CHECK_STR_EQ(q1("SELECT typeof(t) || ':' || length(t) FROM vals WHERE id < 0"), "text:0");
    CHECK_STR_EQ(q1("SELECT typeof(t) || ':' || t FROM vals WHERE id = 2"), "text:12");
    CHECK_STR_EQ(q1("SELECT typeof(raw) || ':' || hex(raw) FROM vals WHERE id < 0"),
                 "blob:01020304");
    CHECK_STR_EQ(q1("SELECT typeof(i2) FROM vals WHERE id = 2"), "null");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_bad_values(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true},
                                     {"b", PGT_BOOL, false},
                                     {"by", PGT_BYTEA, false},
                                     {"f", PGT_FLOAT8, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(11, "public", "bad", cols, 4);
    wr_err_t err = {0};
    char longv[200];
    wr_val_t r1[4] = {TV("12abc"), NV, NV, NV};
    wr_val_t r2[4] = {TV("1"), TV("maybe"), NV, NV};
    wr_val_t r3[4] = {TV("1"), NV, TV("\\001\\002"), NV}; /* escape format, not hex */
    wr_val_t r4[4] = {TV("1"), NV, NV, TV("one point five")};
    wr_val_t r5[4] = {TV("1"), NV, NV, NV};

    memset(longv, '7', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    longv[150] = 'x';
    r5[0] = TV(longv);

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 11, r1, 4, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "\"id\"");
    CHECK_CONTAINS(err.msg, "\"bad\"");
    CHECK_CONTAINS(err.msg, "\"12abc\"");
    CHECK_INT_EQ(ins(d, 11, r2, 4, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "\"b\"");
    CHECK_CONTAINS(err.msg, "\"maybe\"");
    CHECK_INT_EQ(ins(d, 11, r3, 4, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "\"by\"");
    CHECK_INT_EQ(ins(d, 11, r4, 4, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "one point five");
    CHECK_INT_EQ(ins(d, 11, r5, 4, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "7777777777777777777777777777777777777777777777777777777777777777...");
    CHECK(strstr(err.msg, "77777777777777777777777777777777777777777777777777777777777777777") ==
          NULL);
    CHECK_INT_EQ(d->ops->count_rows(d, 11), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_last_key_durable(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(12, "public", "dur", cols, 1);
    wr_err_t err = {0};
    wr_val_t v[1] = {TV("1")}, v2[1] = {TV("2")};
    wr_row_t row = {1, v}, row2 = {1, v2};
    dest_key_t k = {0xFFFFFFFF00000010ULL, 7}, k2 = {0x16B374D848ULL, 4294967295U}, got;
    dest_key_t ks = {0x100, 1};
    bool found = true;
    char stream[32];

    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK(!found);
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 12, &row, 1, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), 0);
    dest_sync_stream(12, stream, sizeof(stream));
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, stream, &ks, &err), 0);
    d->ops->close(d);

    d = reopen();
    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK(found);
    CHECK_U64_EQ(got.commit_lsn, k.commit_lsn);
    CHECK_INT_EQ(got.ordinal, 7);
    CHECK_INT_EQ(dest_key_cmp(&got, &k), 0);
    CHECK_STR_EQ(q1("SELECT commit_lsn FROM _walrelay_progress WHERE stream = 'apply'"),
                 "-4294967280");                 /* int64 bit pattern of FFFFFFFF/10 */
    CHECK_INT_EQ(d->ops->count_rows(d, 12), -1); /* not registered in this handle yet */
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 12), 1);

    /* a commit without a key leaves the stored key alone; a new key replaces it */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 12, &row2, 1, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK_U64_EQ(got.commit_lsn, k.commit_lsn);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k2, &err), 0);
    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK(found);
    CHECK_U64_EQ(got.commit_lsn, k2.commit_lsn);
    CHECK_U64_EQ(got.ordinal, 4294967295U);

    /* streams are separate; clear_key forgets one, outside or inside a transaction */
    CHECK_INT_EQ(d->ops->last_key(d, stream, &got, &found, &err), 0);
    CHECK(found);
    CHECK_U64_EQ(got.commit_lsn, 0x100);
    CHECK_INT_EQ(d->ops->clear_key(d, stream, &err), 0);
    CHECK_INT_EQ(d->ops->last_key(d, stream, &got, &found, &err), 0);
    CHECK(!found);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->clear_key(d, "apply", &err), 0);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK(found);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_rollback_leaves_nothing(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(13, "public", "rb", cols, 1);
    wr_schema_t *s2 = mk_schema(14, "public", "rb_new", cols, 1);
    wr_err_t err = {0};
    wr_val_t v[1] = {TV("1")}, v2[1] = {TV("2")};
    wr_row_t row = {1, v}, row2 = {1, v2};
    dest_key_t k = {0x10, 1}, got;
    bool found = false;

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 13, &row, 1, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), 0);

    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 13, &row2, 1, &err), 0);
    CHECK_INT_EQ(d->ops->truncate_table(d, 13, &err), 0);
    CHECK_INT_EQ(ensure(d, s2, &err), 0); /* a table created inside the transaction */
    CHECK_INT_EQ(d->ops->write_rows(d, 14, &row2, 1, &err), 0);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);

    CHECK_INT_EQ(d->ops->count_rows(d, 13), 1);
    CHECK_STR_EQ(q1("SELECT id FROM rb"), "1");
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name = 'rb_new'"), "0");
    CHECK_STR_EQ(q1("SELECT count(*) FROM _walrelay_tables WHERE relid = 14"), "0");
    CHECK_INT_EQ(d->ops->count_rows(d, 14), -1); /* forgotten with its table */
    CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
    CHECK(found);
    CHECK_U64_EQ(got.commit_lsn, 0x10);
    /* and it can be registered again */
    CHECK_INT_EQ(ensure(d, s2, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name = 'rb_new'"), "1");
    /* rollback with nothing open is harmless */
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    d->ops->close(d);
    wr_schema_free(s);
    wr_schema_free(s2);
}

static void
test_duplicate_insert(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(15, "public", "dup", cols, 2);
    wr_err_t err = {0};
    wr_val_t r[2] = {TV("1"), TV("one")}, r2[2] = {TV("1"), TV("again")};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 15, r, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 15, r2, 2, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "\"dup\"");
    CHECK_CONTAINS(err.msg, "(id)=(1)");
    CHECK_CONTAINS(err.msg, "UNIQUE constraint failed"); /* sqlite3_errmsg */
    CHECK_STR_EQ(q1("SELECT v FROM dup"), "one");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_missing_row(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(16, "public", "miss", cols, 2);
    wr_err_t err = {0};
    wr_val_t nv[2] = {TV("42"), TV("x")};
    wr_row_t nrow = {2, nv};
    dest_event_t upd = {.kind = DEST_EV_UPDATE, .relid = 16, .new_row = &nrow};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 16, .old_kind = 'K', .old_row = &nrow};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(one_event(d, &upd, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "update of table \"miss\" matched no row for key (id)=(42)");
    CHECK(err.hint[0] != '\0');
    CHECK_INT_EQ(one_event(d, &del, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "delete of table \"miss\" matched no row for key (id)=(42)");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_no_key_table(void)
{
    static const colspec_t cols[] = {{"a", PGT_INT4, false}, {"b", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(17, "public", "nokey", cols, 2);
    wr_err_t err = {0};
    wr_val_t r[2] = {TV("1"), TV("x")};
    wr_row_t row = {2, r};
    dest_event_t upd = {.kind = DEST_EV_UPDATE, .relid = 17, .new_row = &row};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 17, .old_kind = 'O', .old_row = &row};
    dest_event_t tr = {.kind = DEST_EV_TRUNCATE, .relid = 17};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_STR_EQ(q1("SELECT sum(pk) FROM pragma_table_info('nokey')"), "0");
    CHECK_INT_EQ(ins(d, 17, r, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 17, r, 2, &err), 0); /* no key: duplicates are legal */
    CHECK_INT_EQ(one_event(d, &upd, &err), WR_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "\"nokey\"");
    CHECK_STR_EQ(err.hint, "give the table a primary key, or REPLICA IDENTITY FULL support arrives "
                           "in a later release");
    CHECK_INT_EQ(one_event(d, &del, &err), WR_EUNSUPPORTED);
    CHECK_INT_EQ(one_event(d, &tr, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 17), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_outside_transaction(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(18, "public", "otx", cols, 1);
    wr_err_t err = {0};
    wr_val_t v[1] = {TV("1")};
    wr_row_t row = {1, v};
    dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = 18, .new_row = &row};
    dest_key_t k = {1, 1};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 18, &row, 1, &err), WR_EINVAL);
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), WR_EINVAL);
    CHECK_INT_EQ(d->ops->truncate_table(d, 18, &err), WR_EINVAL);
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), WR_EINVAL);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), WR_EINVAL);
    /* unregistered relid inside a transaction */
    CHECK_INT_EQ(d->ops->truncate_table(d, 999, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "999");
    /* a row with the wrong column count */
    row.ncols = 0;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), WR_EINVAL);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 18), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_existing_table_differs(void)
{
    static const colspec_t c1[] = {{"id", PGT_INT4, true}, {"b", PGT_TEXT, false}};
    static const colspec_t c2[] = {{"id", PGT_INT4, true}, {"c", PGT_TEXT, false}};
    static const colspec_t c3[] = {
        {"id", PGT_INT4, true}, {"b", PGT_TEXT, false}, {"extra", PGT_TEXT, false}};
    static const colspec_t c4[] = {{"id", PGT_INT4, true}};
    static const colspec_t c5[] = {{"id", PGT_INT4, true}, {"b", PGT_VARCHAR, false}};
    dest_t *d = open_new();
    wr_schema_t *s1 = mk_schema(19, "public", "ex", c1, 2);
    wr_schema_t *s2 = mk_schema(19, "public", "ex", c2, 2);
    wr_schema_t *s3 = mk_schema(20, "public", "ex", c3, 3);
    wr_schema_t *s4 = mk_schema(21, "public", "ex", c4, 1);
    wr_schema_t *s5 = mk_schema(19, "public", "ex", c5, 2);
    wr_err_t err = {0};
    wr_val_t r[2] = {TV("1"), TV("x")};

    CHECK_INT_EQ(ensure(d, s1, &err), 0);
    d->ops->close(d);
    d = reopen();
    CHECK(ensure(d, s2, &err) < 0);
    CHECK_CONTAINS(err.msg, "\"ex\"");
    CHECK_CONTAINS(err.msg, "\"c\"");
    CHECK_CONTAINS(err.msg, "\"b\"");
    CHECK(err.hint[0] != '\0');
    CHECK(ensure(d, s3, &err) < 0);
    CHECK_CONTAINS(err.msg, "\"extra\"");
    CHECK(ensure(d, s4, &err) < 0);
    CHECK_CONTAINS(err.msg, "\"b\"");
    /* the same handle: a registered table whose schema changes columns */
    CHECK_INT_EQ(ensure(d, s1, &err), 0);
    CHECK(ensure(d, s2, &err) < 0);
    CHECK_CONTAINS(err.msg, "\"c\"");
    /* still registered with the old schema */
    CHECK_INT_EQ(ins(d, 19, r, 2, &err), 0);
    /* same column names, another type: accepted */
    CHECK_INT_EQ(ensure(d, s5, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 19), 1);
    d->ops->close(d);
    wr_schema_free(s1);
    wr_schema_free(s2);
    wr_schema_free(s3);
    wr_schema_free(s4);
    wr_schema_free(s5);
}

static void
test_quoting(void)
{
    static const colspec_t cols[] = {
        {"my \"id\"", PGT_INT4, true}, {"a column", PGT_TEXT, false}, {"select", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(22, "public", "we\"ird table", cols, 3);
    wr_err_t err = {0};
    wr_val_t r[3] = {TV("1"), TV("x"), TV("y")}, nv[3] = {TV("1"), TV("z"), UV};
    wr_row_t nrow = {3, nv};
    dest_event_t upd = {.kind = DEST_EV_UPDATE, .relid = 22, .new_row = &nrow};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 22, .old_kind = 'K', .old_row = &nrow};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_STR_EQ(q1("SELECT group_concat(name, '|') FROM pragma_table_info('we\"ird table')"),
                 "my \"id\"|a column|select");
    CHECK_INT_EQ(ins(d, 22, r, 3, &err), 0);
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(q1("SELECT \"my \"\"id\"\"\" || \"a column\" || \"select\" FROM "
                    "\"we\"\"ird table\""),
                 "1zy");
    CHECK_INT_EQ(one_event(d, &del, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 22), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_non_public_schema(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(23, "sales", "orders", cols, 1);
    wr_err_t err = {0};
    wr_val_t r[1] = {TV("5")};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 23, r, 1, &err), 0);
    CHECK_STR_EQ(q1("SELECT id FROM sales__orders"), "5");
    CHECK_STR_EQ(q1("SELECT dest_name || '|' || nsp || '|' || name FROM _walrelay_tables"),
                 "sales__orders|sales|orders");
    d->ops->close(d);
    wr_schema_free(s);
}

static void
test_open_errors(void)
{
    wr_config_t c;
    dest_t *d = NULL;
    wr_err_t err = {0};
    char path[600];

    memset(&c, 0, sizeof(c));
    c.dest_type = "sqlite";
    CHECK_INT_EQ(dest_open(&c, &d, &err), WR_ECONFIG); /* no path */
    snprintf(path, sizeof(path), "%s/no/such/dir/dest.db", tmpdir);
    c.dest_path = path;
    CHECK_INT_EQ(dest_open(&c, &d, &err), WR_EDEST);
    CHECK_CONTAINS(err.msg, "no/such/dir");
    CHECK_CONTAINS(err.msg, "unable to open database file"); /* sqlite3_errmsg */
    CHECK(d == NULL);
}

static void
cleanup(void)
{
    char path[600];

    for (int i = 1; i <= dbseq; i++) {
        snprintf(path, sizeof(path), "%s/dest%d.db", tmpdir, i);
        unlink(path);
        snprintf(path, sizeof(path), "%s/dest%d.db-wal", tmpdir, i);
        unlink(path);
        snprintf(path, sizeof(path), "%s/dest%d.db-shm", tmpdir, i);
        unlink(path);
    }
    rmdir(tmpdir);
}

int
main(void)
{
    const char *base = getenv("TMPDIR");

    snprintf(tmpdir, sizeof(tmpdir), "%s/wr_dest_XXXXXX", base && base[0] ? base : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_naming);
    RUN(test_open_unknown_type);
    RUN(test_open_errors);
    RUN(test_null_destination);
    RUN(test_create_from_schema);
    RUN(test_composite_key);
    RUN(test_insert_update_delete_truncate);
    RUN(test_update_unchanged_toast);
    RUN(test_update_key_change);
    RUN(test_replica_identity_full_old_row);
    RUN(test_value_classes);
    RUN(test_bad_values);
    RUN(test_last_key_durable);
    RUN(test_rollback_leaves_nothing);
    RUN(test_duplicate_insert);
    RUN(test_missing_row);
    RUN(test_no_key_table);
    RUN(test_outside_transaction);
    RUN(test_existing_table_differs);
    RUN(test_quoting);
    RUN(test_non_public_schema);
    cleanup();
    return unit_done();
}
