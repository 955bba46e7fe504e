/*
 * test_dest_sqlite.c - unit tests of the sqlite and null destinations and the naming
 * helpers of destination.c, against real SQLite files in a temporary directory.
 *
 * NOTES: each test opens its own database file; a second, independent connection reads
 * what the destination wrote (typeof(), table_info) as another process would.
 */
#include "destinations/destination.h"
#include "destinations/registry.h"
#include "destinations/sqlite/sqlite.h"
#include "common/pgtype.h"
#include "unit.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static int dbseq;
static char dbpath[512];
static wr_config_t cfg;

static wr_cfg_item_t path_item;

/* A [destination] of type sqlite with path = path (NULL: no path key). */
static void
set_sqlite(wr_config_t *c, const char *path)
{
    memset(c, 0, sizeof(*c));
    c->dest_type = "sqlite";
    if (path != NULL) {
        path_item.key = "path";
        path_item.value = (char *)path;
        path_item.line = 3;
        c->dest_items = &path_item;
        c->dest_nitems = 1;
    }
}

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
    set_sqlite(&cfg, dbpath);
    rc = dest_open(&cfg, "apply", &d, &err);
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
    int rc = dest_open(&cfg, "apply", &d, &err);

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

/* (issue 11) Ranges: commit_range records a range with its rows atomically (a rolled back
 * one is not recorded), ranges_done reads them for one snapshot lsn, a new handle takes the
 * copy up with copy_resume (the staging table and its rows kept), copy_done ends it and the
 * records stay until the next copy of the table begins. */
static void
test_copy_ranges(void)
{
    static const colspec_t cols[] = {{"k", PGT_TEXT, true}, {"n", PGT_INT4, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(64, "public", "rk", cols, 2);
    wr_err_t err = {0};
    dest_tmeta_t meta;
    wr_val_t v[4][2] = {
        {TV("d"), TV("1")}, {TV("c"), TV("2")}, {TV("b"), TV("3")}, {TV("a"), TV("4")}};
    wr_row_t rows[4] = {{2, v[0]}, {2, v[1]}, {2, v[2]}, {2, v[3]}};
    bool done[3] = {false, false, false};
    uint64_t nrows[3] = {0, 0, 0};

    memset(&meta, 0, sizeof(meta));
    CHECK_INT_EQ(d->ops->range_writers(d), 1);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s, &meta, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 64, rows, 2, &err), 0);
    CHECK_INT_EQ(d->ops->commit_range(d, 64, 0x500, 1, 2, &err), 0);
    /* a range rolled back leaves nothing, not even its record */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 64, rows + 2, 1, &err), 0);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_INT_EQ(d->ops->ranges_done(d, 64, 0x500, done, nrows, 3, &err), 0);
    CHECK(!done[0] && done[1] && !done[2]);
    CHECK_U64_EQ(nrows[1], 2);
    CHECK_STR_EQ(q1("SELECT count(*) FROM _walrelay_copy_64"), "2");
    /* another snapshot's copy knows nothing of it */
    done[1] = false;
    CHECK_INT_EQ(d->ops->ranges_done(d, 64, 0x600, done, nrows, 3, &err), 0);
    CHECK(!done[1]);
    d->ops->close(d); /* the process dies */

    d = reopen();
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->copy_resume(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 64, rows + 2, 2, &err), 0);
    CHECK_INT_EQ(d->ops->commit_range(d, 64, 0x500, 0, 2, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM _walrelay_copy_64"), "4"); /* still staged */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->copy_done(d, 64, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT group_concat(k || n, ',') FROM (SELECT * FROM rk ORDER BY rowid)"),
                 "a4,b3,c2,d1");
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name = '_walrelay_copy_64'"), "0");
    memset(done, 0, sizeof(done));
    CHECK_INT_EQ(d->ops->ranges_done(d, 64, 0x500, done, nrows, 3, &err), 0);
    CHECK(done[0] && done[1] && !done[2]);
    /* the next copy of the table forgets them */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s, &meta, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    memset(done, 0, sizeof(done));
    CHECK_INT_EQ(d->ops->ranges_done(d, 64, 0x500, done, nrows, 3, &err), 0);
    CHECK(!done[0] && !done[1]);
    CHECK_STR_EQ(q1("SELECT count(*) FROM rk"), "0");
    d->ops->close(d);
    wr_schema_free(s);
}

/* (issue 11) A copy: rows through write_rows in multi-row INSERTs (with fewer rows than a
 * statement takes, and a remainder), a staged table (text key) that holds no row until
 * copy_done and then holds them all, sorted by its key, with the staging table gone; an
 * INTEGER key (the rowid) is not staged; two tables copied by one handle at once. */
static void
test_copy_rows(void)
{
    static const colspec_t tcols[] = {
        {"k", PGT_TEXT, true}, {"n", PGT_INT8, false}, {"b", PGT_BYTEA, false}};
    static const colspec_t icols[] = {{"id", PGT_INT8, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *ts = mk_schema(61, "public", "tk", tcols, 3);
    wr_schema_t *is = mk_schema(62, "public", "ik", icols, 2);
    wr_err_t err = {0};
    enum { N = 1000 };
    static char keys[N][16], nums[N][16];
    static wr_val_t vals[N][3];
    static wr_row_t rows[N];
    dest_tmeta_t meta;

    memset(&meta, 0, sizeof(meta));
    for (int i = 0; i < N; i++) {
        /* keys in an order that is not the key's: 7919 is prime to N */
        snprintf(keys[i], sizeof(keys[i]), "k%05d", (i * 7919) % N);
        snprintf(nums[i], sizeof(nums[i]), "%d", (i * 7919) % N);
        vals[i][0] = TV(keys[i]);
        vals[i][1] = TV(nums[i]);
        vals[i][2] = i % 3 == 0 ? NV : TV("\\x0aff");
        rows[i].ncols = 3;
        rows[i].vals = vals[i];
    }
    CHECK(d->ops->copy_done != NULL);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, ts, &meta, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, is, &meta, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 61, rows, 1, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    /* the staging table has the row, the table none yet */
    CHECK_STR_EQ(q1("SELECT count(*) FROM _walrelay_copy_61"), "1");
    CHECK_STR_EQ(q1("SELECT count(*) FROM tk"), "0");
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name = '_walrelay_copy_62'"), "0");
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 61, rows + 1, 700, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 61, rows + 701, N - 701, &err), 0);
    CHECK_INT_EQ(d->ops->copy_done(d, 61, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name = '_walrelay_copy_61'"), "0");
    CHECK_STR_EQ(q1("SELECT count(*) || ' ' || count(DISTINCT k) || ' ' || sum(n) FROM tk"),
                 "1000 1000 499500");
    CHECK_STR_EQ(q1("SELECT typeof(n) || typeof(b) || hex(b) FROM tk WHERE k = 'k00919'"),
                 "integerblob0AFF");
    CHECK_STR_EQ(q1("SELECT typeof(b) FROM tk WHERE k = 'k00000'"), "null");
    /* stored in key order: rowids follow the keys */
    CHECK_STR_EQ(q1("SELECT count(*) FROM tk a JOIN tk b ON b.rowid = a.rowid + 1 WHERE b.k < a.k"),
                 "0");
    CHECK_STR_EQ(q1("SELECT pk FROM pragma_table_info('tk') WHERE name = 'k'"), "1");
    /* table 62 is still being copied */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 62, rows, 0, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    {
        wr_val_t v[2] = {TV("1"), TV("a")};
        wr_row_t r = {2, v};
        CHECK_INT_EQ(d->ops->write_rows(d, 62, &r, 1, &err), 0);
    }
    CHECK_INT_EQ(d->ops->copy_done(d, 62, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT v FROM ik WHERE id = 1"), "a");
    d->ops->close(d);
    wr_schema_free(ts);
    wr_schema_free(is);
}

/* (issue 11) A duplicate key inside a multi-row INSERT (the 40th of 64 rows) is reported
 * for that row's key, and nothing of the statement stays in the transaction; a value that
 * does not convert names its column. A rollback of the transaction that ended a copy makes
 * the handle forget the table: a write without registering it again is refused. */
static void
test_copy_errors(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"v", PGT_INT4, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(63, "public", "dup", cols, 2);
    wr_err_t err = {0};
    static char ids[200][8];
    static wr_val_t vals[200][2];
    static wr_row_t rows[200];
    dest_tmeta_t meta;

    memset(&meta, 0, sizeof(meta));
    for (int i = 0; i < 200; i++) {
        snprintf(ids[i], sizeof(ids[i]), "%d", i == 39 ? 5 : i);
        vals[i][0] = TV(ids[i]);
        vals[i][1] = TV(ids[i]);
        rows[i].ncols = 2;
        rows[i].vals = vals[i];
    }
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s, &meta, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 63, rows, 200, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "(id)=(5)");
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    /* forgotten with the rollback of the transaction that started the copy */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 63, rows, 3, &err), WR_EINVAL);
    CHECK_CONTAINS(err.msg, "not registered");
    CHECK_INT_EQ(d->ops->reset_table(d, s, &meta, &err), 0);
    vals[70][1] = TV("x");
    CHECK_INT_EQ(d->ops->write_rows(d, 63, rows, 39, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 63, rows + 40, 160, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "column \"v\"");
    CHECK_CONTAINS(err.msg, "\"x\"");
    CHECK_INT_EQ(d->ops->copy_done(d, 63, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM dup"), "39");
    d->ops->close(d);
    wr_schema_free(s);
}

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
    CHECK(dest_type_find("sqlite") == &dest_type_sqlite);
    CHECK(dest_type_find("null") == &dest_type_null);
    CHECK(dest_type_find("plugin") == &dest_type_plugin);
    CHECK(dest_type_find("postgres") == &dest_type_postgres);
    CHECK(dest_type_find("kafka") == NULL);
    dest_type_list(buf, sizeof(buf));
    CHECK_STR_EQ(buf, "sqlite, postgres, null, http, jsonl, nats, eventstore, plugin");
}

static void
test_open_unknown_type(void)
{
    wr_config_t c;
    dest_t *d = (dest_t *)&c;
    wr_err_t err = {0};

    memset(&c, 0, sizeof(c));
    c.dest_type = "x";
    c.path = "/p/walrelay.conf";
    c.dest_type_line = 7;
    CHECK_INT_EQ(dest_open(&c, "apply", &d, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "/p/walrelay.conf:7: invalid value \"x\" for [destination] type: no "
                          "such destination type");
    CHECK_CONTAINS(err.hint, "sqlite, postgres, null, http, jsonl, nats, eventstore, plugin");
    CHECK(d == NULL);
}

/* The storage class and declared type of each PostgreSQL type (sqlite/sqlite_type.c). */
static void
test_sqt_class(void)
{
    CHECK_INT_EQ(sqt_class(PGT_INT2), SQT_CLASS_INTEGER);
    CHECK_INT_EQ(sqt_class(PGT_INT4), SQT_CLASS_INTEGER);
    CHECK_INT_EQ(sqt_class(PGT_INT8), SQT_CLASS_INTEGER);
    CHECK_INT_EQ(sqt_class(PGT_OID), SQT_CLASS_INTEGER);
    CHECK_INT_EQ(sqt_class(PGT_BOOL), SQT_CLASS_INTEGER);
    CHECK_INT_EQ(sqt_class(PGT_FLOAT4), SQT_CLASS_REAL);
    CHECK_INT_EQ(sqt_class(PGT_FLOAT8), SQT_CLASS_REAL);
    CHECK_INT_EQ(sqt_class(PGT_BYTEA), SQT_CLASS_BLOB);
    CHECK_INT_EQ(sqt_class(PGT_NUMERIC), SQT_CLASS_TEXT);
    CHECK_INT_EQ(sqt_class(PGT_MONEY), SQT_CLASS_TEXT);
    CHECK_INT_EQ(sqt_class(PGT_TEXT), SQT_CLASS_TEXT);
    CHECK_INT_EQ(sqt_class(PGT_TIMESTAMPTZ), SQT_CLASS_TEXT);
    CHECK_INT_EQ(sqt_class(PGT_JSONB), SQT_CLASS_TEXT);
    CHECK_INT_EQ(sqt_class(PGT_UUID), SQT_CLASS_TEXT);
    CHECK_INT_EQ(sqt_class(123456), SQT_CLASS_TEXT); /* a user type */

    CHECK_STR_EQ(sqt_decl(PGT_INT8), "INTEGER");
    CHECK_STR_EQ(sqt_decl(PGT_BOOL), "INTEGER");
    CHECK_STR_EQ(sqt_decl(PGT_FLOAT4), "REAL");
    CHECK_STR_EQ(sqt_decl(PGT_BYTEA), "BLOB");
    CHECK_STR_EQ(sqt_decl(PGT_NUMERIC), "TEXT");
    CHECK_STR_EQ(sqt_decl(PGT_VARCHAR), "TEXT");
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
    wr_val_t v[6] = {TV("1"), TV("x"), NV, NV, NV, NV};
    wr_row_t row = {6, v};
    dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = 1, .new_row = &row};

    memset(&c, 0, sizeof(c));
    c.dest_type = "null";
    CHECK_INT_EQ(dest_open(&c, "apply", &d, &err), 0);
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

/* A sync worker's handle checkpoints the WAL only past 64 MB (dest_sqlite_set_copy_writer):
 * after a commit of ~8 MB the database file holds none of it yet; an apply handle's same
 * commit (SQLite's 1,000 pages) has been checkpointed into the file. Both read back whole. */
static void
test_copy_writer_checkpoints_late(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"t", PGT_TEXT, false}};
    static char pad[1001];
    const char *roles[2] = {"sync", "apply"};
    wr_schema_t *s = mk_schema(14, "public", "ckpt", cols, 2);
    wr_err_t err = {0};

    memset(pad, 'x', sizeof(pad) - 1);
    for (int r = 0; r < 2; r++) {
        dest_t *d = NULL;
        dest_key_t k = {0x300, 1};
        char id[16];
        struct stat st;

        snprintf(dbpath, sizeof(dbpath), "%s/dest%d.db", tmpdir, ++dbseq);
        set_sqlite(&cfg, dbpath);
        CHECK_INT_EQ(dest_open(&cfg, roles[r], &d, &err), 0);
        if (d == NULL)
            return;
        CHECK_INT_EQ(ensure(d, s, &err), 0);
        CHECK_INT_EQ(d->ops->begin(d, &err), 0);
        for (int i = 0; i < 8000; i++) {
            wr_val_t v[2] = {TV(id), TV(pad)};
            wr_row_t row = {2, v};

            snprintf(id, sizeof(id), "%d", i);
            v[0] = TV(id);
            CHECK_INT_EQ(d->ops->write_rows(d, 14, &row, 1, &err), 0);
        }
        CHECK_INT_EQ(d->ops->commit(d, r == 0 ? "sync_ckpt" : "apply", &k, &err), 0);
        CHECK_INT_EQ(stat(dbpath, &st), 0);
        if (r == 0)
            CHECK(st.st_size < 1024 * 1024); /* all of it still in the WAL */
        else
            CHECK(st.st_size > 6 * 1024 * 1024); /* checkpointed at the commit */
        CHECK_INT_EQ(d->ops->count_rows(d, 14), 8000);
        d->ops->close(d);
    }
    wr_schema_free(s);
}

/* The apply worker's handle commits without an fsync and says on request which commits
 * are durable (sq_durable: one fsync of the WAL); a sync worker's commits are durable when
 * they return. */
static void
test_durable_on_request(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}};
    dest_t *d = open_new(), *sw = NULL;
    wr_schema_t *s = mk_schema(13, "public", "dreq", cols, 1);
    wr_err_t err = {0};
    wr_val_t v[1] = {TV("1")};
    wr_row_t row = {1, v};
    dest_key_t k = {0x200, 1};
    uint64_t n = 99;

    CHECK(d->ops->durable != NULL);
    CHECK_INT_EQ(d->ops->durable(d, &n, &err), 0);
    CHECK(n == 0); /* nothing committed yet */
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    for (int i = 0; i < 3; i++) {
        CHECK_INT_EQ(d->ops->begin(d, &err), 0);
        if (i == 0)
            CHECK_INT_EQ(d->ops->write_rows(d, 13, &row, 1, &err), 0);
        CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), 0);
        k.ordinal++;
    }
    CHECK_INT_EQ(d->ops->durable(d, &n, &err), 0);
    CHECK(n == 3);
    /* asked again with nothing new: the same answer */
    CHECK_INT_EQ(d->ops->durable(d, &n, &err), 0);
    CHECK(n == 3);
    /* asked inside a transaction: the commits that returned before it */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->durable(d, &n, &err), 0);
    CHECK(n == 4);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_INT_EQ(d->ops->durable(d, &n, &err), 0);
    CHECK(n == 4); /* a rollback is no commit */

    /* a sync worker's handle: durable at once */
    CHECK_INT_EQ(dest_open(&cfg, "sync", &sw, &err), 0);
    CHECK_INT_EQ(ensure(sw, s, &err), 0);
    CHECK_INT_EQ(sw->ops->begin(sw, &err), 0);
    CHECK_INT_EQ(sw->ops->commit(sw, "sync_x", &k, &err), 0);
    CHECK_INT_EQ(sw->ops->durable(sw, &n, &err), 0);
    CHECK(n == 1);
    sw->ops->close(sw);
    d->ops->close(d);

    /* what the apply handle committed is there for the next process */
    d = reopen();
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 13), 1);
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
    CHECK_STR_EQ(err.hint, "give the source table a primary key or run ALTER TABLE ... REPLICA "
                           "IDENTITY FULL, then resync the table");
    CHECK_INT_EQ(one_event(d, &del, &err), WR_EUNSUPPORTED);
    CHECK_INT_EQ(one_event(d, &tr, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 17), 0);
    d->ops->close(d);
    wr_schema_free(s);
}

/* Runs sql on an independent connection and returns every row as "a|b;c|d" (NULL as
 * "N"), ordered as the query says. */
static const char *
qall(const char *sql)
{
    static char buf[4096];
    size_t off = 0;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;

    buf[0] = '\0';
    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(buf, sizeof(buf), "(error: %s)", db ? sqlite3_errmsg(db) : "open");
    } else {
        while (sqlite3_step(st) == SQLITE_ROW && off < sizeof(buf) - 64) {
            for (int i = 0; i < sqlite3_column_count(st); i++) {
                const unsigned char *t = sqlite3_column_text(st, i);
                int n = snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? "|" : (off ? ";" : ""),
                                 t ? (const char *)t : "N");
                off += n > 0 ? (size_t)n : 0;
            }
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return buf;
}

/* A table without a primary key under REPLICA IDENTITY FULL, registered as the apply
 * worker does (from a Relation message: every column flagged): no PRIMARY KEY, duplicate
 * rows allowed, UPDATE/DELETE change exactly one row matching every old value, NULLs
 * included. */
static void
test_keyless_full(void)
{
    static const colspec_t cols[] = {
        {"a", PGT_INT4, true}, {"b", PGT_TEXT, true}, {"f", PGT_FLOAT8, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(30, "public", "kl", cols, 3);
    wr_err_t err = {0};
    wr_val_t dup[3] = {TV("1"), TV("x"), TV("0.5")}, withnull[3] = {TV("2"), NV, NV},
             newv[3] = {TV("1"), TV("y"), TV("NaN")}, nanrow[3] = {TV("1"), TV("y"), TV("NaN")},
             gone[3] = {TV("9"), TV("x"), NV}, toast_new[3] = {TV("3"), UV, TV("1")},
             nullnew[3] = {TV("2"), TV("set"), NV};
    wr_row_t orow = {3, dup}, nrow = {3, newv};
    dest_event_t upd = {
        .kind = DEST_EV_UPDATE, .relid = 30, .old_kind = 'O', .old_row = &orow, .new_row = &nrow};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 30, .old_kind = 'O', .old_row = &orow};

    s->replident = 'f';
    for (int i = 0; i < 3; i++)
        s->cols[i].not_null = false;
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_STR_EQ(q1("SELECT sum(pk) FROM pragma_table_info('kl')"), "0");
    CHECK_INT_EQ(ins(d, 30, dup, 3, &err), 0);
    CHECK_INT_EQ(ins(d, 30, dup, 3, &err), 0);
    CHECK_INT_EQ(ins(d, 30, dup, 3, &err), 0);
    CHECK_INT_EQ(ins(d, 30, withnull, 3, &err), 0);
    CHECK_INT_EQ(d->ops->count_rows(d, 30), 4);

    /* one of three identical rows changes */
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(qall("SELECT a, b, f, count(*) FROM kl GROUP BY 1, 2, 3 ORDER BY 1, 2"),
                 "1|x|0.5|2;1|y|NaN|1;2|N|N|1");
    /* one of the two left is deleted */
    CHECK_INT_EQ(one_event(d, &del, &err), 0);
    CHECK_STR_EQ(qall("SELECT a, b, f, count(*) FROM kl GROUP BY 1, 2, 3 ORDER BY 1, 2"),
                 "1|x|0.5|1;1|y|NaN|1;2|N|N|1");
    /* a row with NULLs and a NaN (stored as text) is found by IS */
    orow.vals = withnull;
    nrow.vals = nullnew;
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    orow.vals = nanrow;
    CHECK_INT_EQ(one_event(d, &del, &err), 0);
    CHECK_STR_EQ(qall("SELECT a, b, f FROM kl ORDER BY 1, 2"), "1|x|0.5;2|set|N");
    /* an old row that matches nothing is a divergence */
    orow.vals = gone;
    CHECK_INT_EQ(one_event(d, &del, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "delete of table \"kl\" matched no row for key (a, b, f)=(9, x, NULL)");
    /* unchanged TOAST in the new row keeps the destination's value */
    {
        wr_val_t big[3] = {TV("3"), TV("a big value"), TV("1")};

        CHECK_INT_EQ(ins(d, 30, big, 3, &err), 0);
        orow.vals = big;
        nrow.vals = toast_new;
        CHECK_INT_EQ(one_event(d, &upd, &err), 0);
        CHECK_STR_EQ(qall("SELECT a, b, f FROM kl WHERE a = 3"), "3|a big value|1.0");
    }
    /* without the old row there is nothing to match on */
    upd.old_kind = 0;
    upd.old_row = NULL;
    CHECK_INT_EQ(one_event(d, &upd, &err), WR_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "no key columns and the change carries no old row");
    CHECK_CONTAINS(err.hint, "REPLICA IDENTITY FULL");
    /* nor with an unchanged value in the old row */
    {
        wr_val_t oldu[3] = {TV("3"), UV, TV("1")};

        orow.vals = oldu;
        CHECK_INT_EQ(one_event(d, &del, &err), WR_EDATA);
        CHECK_CONTAINS(err.msg, "(unchanged toast)");
    }
    CHECK_INT_EQ(d->ops->count_rows(d, 30), 3);
    d->ops->close(d);
    wr_schema_free(s);
}

/* Keyless FULL table with a column called rowid: rows are addressed as _rowid_. */
static void
test_keyless_full_rowid_column(void)
{
    static const colspec_t cols[] = {{"rowid", PGT_INT4, true}, {"v", PGT_TEXT, true}};
    static const colspec_t all3[] = {
        {"rowid", PGT_INT4, true}, {"_rowid_", PGT_TEXT, true}, {"oid", PGT_TEXT, true}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(31, "public", "rid", cols, 2);
    wr_schema_t *s3 = mk_schema(32, "public", "rid3", all3, 3);
    wr_err_t err = {0};
    wr_val_t r1[2] = {TV("7"), TV("a")}, r2[2] = {TV("7"), TV("b")};
    wr_row_t orow = {2, r1}, nrow = {2, r2};
    dest_event_t upd = {
        .kind = DEST_EV_UPDATE, .relid = 31, .old_kind = 'O', .old_row = &orow, .new_row = &nrow};

    s->replident = 'f';
    s3->replident = 'f';
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 31, r1, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 31, r1, 2, &err), 0);
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(qall("SELECT rowid, v FROM rid ORDER BY v"), "7|a;7|b");
    CHECK_INT_EQ(ensure(d, s3, &err), WR_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "rowid, _rowid_ and oid");
    d->ops->close(d);
    wr_schema_free(s);
    wr_schema_free(s3);
}

/* FULL with a primary key: the sync worker creates the table from the copy schema (key =
 * the primary key), the apply worker registers the Relation schema (every column
 * flagged). Rows are matched by the table's PRIMARY KEY from the old row. */
static void
test_full_with_primary_key(void)
{
    static const colspec_t copy_cols[] = {
        {"id", PGT_INT4, true}, {"v", PGT_TEXT, false}, {"n", PGT_INT4, false}};
    dest_t *d = open_new();
    wr_schema_t *copy = mk_schema(33, "public", "fpk", copy_cols, 3);
    wr_schema_t *rel = mk_schema(33, "public", "fpk", copy_cols, 3);
    wr_err_t err = {0};
    wr_val_t r[3] = {TV("1"), TV("one"), NV}, oldr[3] = {TV("1"), TV("stale"), TV("5")},
             nv[3] = {TV("2"), UV, TV("6")};
    wr_row_t orow = {3, oldr}, nrow = {3, nv};
    dest_event_t upd = {
        .kind = DEST_EV_UPDATE, .relid = 33, .old_kind = 'O', .old_row = &orow, .new_row = &nrow};

    copy->replident = 'f';
    rel->replident = 'f';
    for (int i = 0; i < 3; i++)
        rel->cols[i].is_key = true;
    CHECK_INT_EQ(ensure(d, copy, &err), 0);
    CHECK_STR_EQ(qall("SELECT name FROM pragma_table_info('fpk') WHERE pk > 0"), "id");
    CHECK_INT_EQ(ins(d, 33, r, 3, &err), 0);
    CHECK_INT_EQ(ensure(d, rel, &err), 0);
    /* the primary key stays, the table is not re-created */
    CHECK_STR_EQ(qall("SELECT name FROM pragma_table_info('fpk') WHERE pk > 0"), "id");
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(qall("SELECT id, v, n FROM fpk"), "2|one|6");
    /* a duplicate key is still refused */
    CHECK_INT_EQ(ins(d, 33, r, 3, &err), 0);
    CHECK_INT_EQ(ins(d, 33, r, 3, &err), WR_EDATA);
    d->ops->close(d);
    wr_schema_free(copy);
    wr_schema_free(rel);
}

/* REPLICA IDENTITY USING INDEX on (code) while the primary key is (id): the table keeps
 * PRIMARY KEY (id) from the copy; changes match on code, from the old key or, when code
 * did not change, from the new row (even if id changed). */
static void
test_identity_index(void)
{
    static const colspec_t copy_cols[] = {
        {"id", PGT_INT4, true}, {"code", PGT_TEXT, false}, {"v", PGT_TEXT, false}};
    static const colspec_t rel_cols[] = {
        {"id", PGT_INT4, false}, {"code", PGT_TEXT, true}, {"v", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *copy = mk_schema(34, "public", "ri", copy_cols, 3);
    wr_schema_t *rel = mk_schema(34, "public", "ri", rel_cols, 3);
    wr_err_t err = {0};
    wr_val_t r[3] = {TV("1"), TV("A"), TV("x")}, r2[3] = {TV("2"), TV("B"), TV("y")},
             idchg[3] = {TV("10"), TV("A"), TV("x2")}, oldk[3] = {NV, TV("B"), NV},
             codechg[3] = {TV("2"), TV("C"), TV("y2")};
    wr_row_t nrow = {3, idchg}, orow = {3, oldk};
    dest_event_t upd = {.kind = DEST_EV_UPDATE, .relid = 34, .new_row = &nrow};
    dest_event_t del = {.kind = DEST_EV_DELETE, .relid = 34, .old_kind = 'K', .old_row = &orow};

    copy->replident = 'i';
    rel->replident = 'i';
    CHECK_INT_EQ(ensure(d, copy, &err), 0);
    CHECK_INT_EQ(ins(d, 34, r, 3, &err), 0);
    CHECK_INT_EQ(ins(d, 34, r2, 3, &err), 0);
    CHECK_INT_EQ(ensure(d, rel, &err), 0);
    CHECK_STR_EQ(qall("SELECT name FROM pragma_table_info('ri') WHERE pk > 0"), "id");
    /* id changes, code does not: no old key, matched by code from the new row */
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    /* code changes: matched by the old key */
    upd.old_kind = 'K';
    upd.old_row = &orow;
    nrow.vals = codechg;
    CHECK_INT_EQ(one_event(d, &upd, &err), 0);
    CHECK_STR_EQ(qall("SELECT id, code, v FROM ri ORDER BY id"), "2|C|y2;10|A|x2");
    oldk[1] = TV("C");
    CHECK_INT_EQ(one_event(d, &del, &err), 0);
    CHECK_STR_EQ(qall("SELECT id, code, v FROM ri ORDER BY id"), "10|A|x2");
    d->ops->close(d);
    wr_schema_free(copy);
    wr_schema_free(rel);
}

/* Float forms: the REAL is the double nearest to PostgreSQL's shortest text (float4
 * "0.1" is 0.1, not 0.100000001490116), extremes survive, -0 reads back as 0.0 (SQLite
 * stores integral REALs as integers), int8 extremes are exact. */
static void
test_float_and_int_forms(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT8, true},
                                     {"f4", PGT_FLOAT4, false},
                                     {"f8", PGT_FLOAT8, false},
                                     {"o", PGT_OID, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(35, "public", "fl", cols, 4);
    wr_err_t err = {0};
    wr_val_t r1[4] = {TV("9223372036854775807"), TV("0.1"), TV("1.7976931348623157e+308"),
                      TV("4294967295")};
    wr_val_t r2[4] = {TV("-9223372036854775808"), TV("-0"), TV("5e-324"), TV("0")};
    wr_val_t r3[4] = {TV("1"), TV("3.4028235e+38"), TV("-0"), NV};
    wr_val_t bad[4] = {TV("9223372036854775808"), NV, NV, NV};

    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(ins(d, 35, r1, 4, &err), 0);
    CHECK_INT_EQ(ins(d, 35, r2, 4, &err), 0);
    CHECK_INT_EQ(ins(d, 35, r3, 4, &err), 0);
    CHECK_STR_EQ(qall("SELECT id, typeof(f4), f4 = 0.1, typeof(f8), f8 = 1.7976931348623157e308, "
                      "o FROM fl WHERE id > 1"),
                 "9223372036854775807|real|1|real|1|4294967295");
    CHECK_STR_EQ(
        qall("SELECT id, typeof(f4), f4, f8 = 4.9406564584124654e-324 FROM fl WHERE id < 0"),
        "-9223372036854775808|real|0.0|1");
    CHECK_STR_EQ(qall("SELECT typeof(f4), f4 = 3.4028235e38, "
                      "typeof(f8), f8 FROM fl WHERE id = 1"),
                 "real|1|real|0.0");
    CHECK_INT_EQ(ins(d, 35, bad, 4, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "9223372036854775808");
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

    set_sqlite(&c, "");
    c.path = "/p/walrelay.conf";
    CHECK_INT_EQ(dest_open(&c, "apply", &d, &err), WR_ECONFIG); /* empty path */
    CHECK_STR_EQ(err.msg, "/p/walrelay.conf:3: empty value for [destination] path");
    /* a key sqlite does not know */
    path_item.key = "paht";
    path_item.value = "x.db";
    CHECK_INT_EQ(dest_open(&c, "apply", &d, &err), WR_ECONFIG);
    CHECK_STR_EQ(
        err.msg,
        "/p/walrelay.conf:3: unknown key \"paht\" in section [destination] (type = sqlite)");
    CHECK_CONTAINS(err.hint, "type, path");
    snprintf(path, sizeof(path), "%s/no/such/dir/dest.db", tmpdir);
    set_sqlite(&c, path);
    CHECK_INT_EQ(dest_open(&c, "apply", &d, &err), WR_EDEST);
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

/* ---- schema changes (issue 3): the planner, versions, alter_table, reset_table ---- */

/* Runs sql on an independent read-write connection; returns SQLite's result code. */
static int
qexec(const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READWRITE, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

/* Catalog facts: attstate by attnum, every xmin = xmin, relfilenode. */
static void
mk_meta(dest_tmeta_t *m, const char *attstate, uint32_t xmin, uint32_t relfilenode)
{
    memset(m, 0, sizeof(*m));
    m->natts = (uint16_t)strlen(attstate);
    m->attstate = wr_strdup(attstate);
    m->attxmin = calloc(m->natts ? m->natts : 1, sizeof(uint32_t));
    if (m->attstate == NULL || m->attxmin == NULL)
        abort();
    for (uint16_t a = 0; a < m->natts; a++)
        m->attxmin[a] = xmin;
    m->relfilenode = relfilenode;
}

/* A catalog view: schema from cols, facts from attstate. */
static void
mk_cat(dest_catalog_t *c, const colspec_t *cols, uint16_t n, const char *attstate, uint32_t xmin,
       uint32_t relfilenode)
{
    memset(c, 0, sizeof(*c));
    c->schema = mk_schema(40, "public", "t", cols, n);
    c->missing = calloc(n ? n : 1, sizeof(char *));
    c->relflags = calloc(n ? n : 1, 1);
    if (c->missing == NULL || c->relflags == NULL)
        abort();
    for (uint16_t i = 0; i < n; i++)
        c->relflags[i] = cols[i].key;
    c->relkind = 'r';
    mk_meta(&c->meta, attstate, xmin, relfilenode);
}

static const colspec_t ddl_d_cols[] = {
    {"id", PGT_INT4, true}, {"a", PGT_INT4, false}, {"b", PGT_TEXT, false}};

/* Plans D (id, a, b; attnums 1..3, xmin 100, relfilenode 5) against cat; returns the
 * action and leaves the plan in *p (caller frees). */
static dest_ddl_action_t
plan_vs(dest_catalog_t *cat, dest_ddl_plan_t *p)
{
    wr_schema_t *ds = mk_schema(40, "public", "t", ddl_d_cols, 3);
    dest_tmeta_t dm;
    wr_err_t err = {0};

    mk_meta(&dm, "lll", 100, 5);
    CHECK_INT_EQ(dest_ddl_plan(ds, &dm, cat, p, &err), 0);
    dest_tmeta_clear(&dm);
    wr_schema_free(ds);
    return p->action;
}

static void
test_ddl_plan_rules(void)
{
    static const colspec_t same[] = {
        {"id", PGT_INT4, true}, {"a", PGT_INT4, false}, {"b", PGT_TEXT, false}};
    static const colspec_t add[] = {{"id", PGT_INT4, true},
                                    {"a", PGT_INT4, false},
                                    {"b", PGT_TEXT, false},
                                    {"c", PGT_INT4, false}};
    static const colspec_t dropped[] = {{"id", PGT_INT4, true}, {"a", PGT_INT4, false}};
    static const colspec_t renamed[] = {
        {"id", PGT_INT4, true}, {"a", PGT_INT4, false}, {"b2", PGT_TEXT, false}};
    static const colspec_t dropadd[] = {
        {"id", PGT_INT4, true}, {"a", PGT_INT4, false}, {"c", PGT_TEXT, false}};
    static const colspec_t retyped[] = {
        {"id", PGT_INT4, true}, {"a", PGT_INT8, false}, {"b", PGT_TEXT, false}};
    static const colspec_t rekeyed[] = {
        {"id", PGT_INT4, true}, {"a", PGT_INT4, true}, {"b", PGT_TEXT, false}};
    dest_catalog_t c;
    dest_ddl_plan_t p;
    wr_err_t err = {0};

    /* nothing changed */
    mk_cat(&c, same, 3, "lll", 100, 5);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_NONE);
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* truncated (new relfilenode), same columns: a new version of the facts */
    mk_cat(&c, same, 3, "lll", 100, 6);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_REFRESH);
    CHECK_CONTAINS(p.summary, "relfilenode 5 to 6");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* ADD COLUMN without default: the rows that existed get NULL */
    mk_cat(&c, add, 4, "llll", 100, 5);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_FOLLOW);
    CHECK_INT_EQ(p.src[0], 0);
    CHECK_INT_EQ(p.src[2], 2);
    CHECK_INT_EQ(p.src[3], -1);
    CHECK_INT_EQ(p.fill[3].kind, WR_VAL_NULL);
    CHECK(!p.key_changed);
    CHECK_STR_EQ(p.summary, "add column \"c\" (rows before it: NULL)");
    dest_ddl_plan_free(&p);
    /* ... with a constant default: they read attmissingval */
    c.missing[3] = wr_strdup("5");
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_FOLLOW);
    CHECK_INT_EQ(p.fill[3].kind, WR_VAL_TEXT);
    CHECK_INT_EQ(p.fill[3].len, 1);
    CHECK(p.fill[3].data != NULL && p.fill[3].data[0] == '5');
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* ... with a volatile default: rewritten (new relfilenode), no missing value */
    mk_cat(&c, add, 4, "llll", 100, 9);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_RECOPY);
    CHECK_CONTAINS(p.summary, "column \"c\" was added while the table was rewritten");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* DROP COLUMN */
    mk_cat(&c, dropped, 2, "lld", 100, 5);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_FOLLOW);
    CHECK_INT_EQ(p.src[0], 0);
    CHECK_INT_EQ(p.src[1], 1);
    CHECK_STR_EQ(p.summary, "drop column \"b\"");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* RENAME COLUMN: same attnum (its xmin changed) */
    mk_cat(&c, renamed, 3, "lll", 100, 5);
    c.meta.attxmin[2] = 200;
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_FOLLOW);
    CHECK_INT_EQ(p.src[2], 2);
    CHECK_CONTAINS(p.summary, "rename column \"b\" to \"b2\"");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* DROP b + ADD c of the same type: looks like a rename in the stream, never taken
     * for one */
    mk_cat(&c, dropadd, 3, "lldl", 100, 5);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_RECOPY);
    CHECK_CONTAINS(p.summary, "dropped (\"b\") and added (\"c\")");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* a column added and dropped again since, plus an add: the same doubt */
    mk_cat(&c, add, 4, "llldl", 100, 5);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_RECOPY);
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* a type change */
    mk_cat(&c, retyped, 3, "lll", 100, 7);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_RECOPY);
    CHECK_CONTAINS(p.summary, "column \"a\" changed type (type 23 typmod -1 to type 20");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* with DEST_DDL_RETYPE (postgres): followed when not rewritten (the values kept) ... */
    {
        wr_schema_t *ds = mk_schema(40, "public", "t", ddl_d_cols, 3);
        dest_tmeta_t dm;

        mk_meta(&dm, "lll", 100, 5);
        mk_cat(&c, retyped, 3, "lll", 100, 5);
        c.meta.attxmin[1] = 300;
        CHECK_INT_EQ(dest_ddl_plan_flags(ds, &dm, &c, DEST_DDL_RETYPE, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_FOLLOW);
        CHECK_INT_EQ(p.src[1], 1);
        CHECK_CONTAINS(p.summary, "change the type of column \"a\"");
        dest_ddl_plan_free(&p);
        /* ... still copied without the flag */
        CHECK_INT_EQ(dest_ddl_plan(ds, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_RECOPY);
        dest_ddl_plan_free(&p);
        /* ... and copied when the table was rewritten (int to bigint, any USING) */
        c.meta.relfilenode = 7;
        CHECK_INT_EQ(dest_ddl_plan_flags(ds, &dm, &c, DEST_DDL_RETYPE, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_RECOPY);
        dest_ddl_plan_free(&p);
        dest_tmeta_clear(&dm);
        wr_schema_free(ds);
    }
    dest_catalog_clear(&c);
    /* a type changed and back: same columns, but rewritten and the column's row changed */
    mk_cat(&c, same, 3, "lll", 100, 7);
    c.meta.attxmin[1] = 300;
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_RECOPY);
    CHECK_CONTAINS(p.summary, "rewritten and column \"a\" was altered");
    dest_ddl_plan_free(&p);
    /* ... the same row change without a rewrite (SET NOT NULL): a refresh */
    c.meta.relfilenode = 5;
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_REFRESH);
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* a new primary key */
    mk_cat(&c, rekeyed, 3, "lll", 100, 5);
    CHECK_INT_EQ(plan_vs(&c, &p), DEST_DDL_FOLLOW);
    CHECK(p.key_changed);
    CHECK_STR_EQ(p.summary, "key (\"id\") to (\"id\", \"a\")");
    dest_ddl_plan_free(&p);
    dest_catalog_clear(&c);
    /* a generated column turned normal: its values are not in the stream */
    mk_cat(&c, same, 3, "lll", 100, 5);
    {
        wr_schema_t *ds = mk_schema(40, "public", "t", ddl_d_cols, 2);
        dest_tmeta_t dm;

        mk_meta(&dm, "llg", 100, 5);
        CHECK_INT_EQ(dest_ddl_plan(ds, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_RECOPY);
        CHECK_CONTAINS(p.summary, "no longer generated");
        dest_ddl_plan_free(&p);
        /* no facts recorded (older registration): identical columns only */
        dest_tmeta_clear(&dm);
        CHECK_INT_EQ(dest_ddl_plan(ds, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_RECOPY);
        dest_ddl_plan_free(&p);
        wr_schema_free(ds);
        ds = mk_schema(40, "public", "t", ddl_d_cols, 3);
        CHECK_INT_EQ(dest_ddl_plan(ds, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_REFRESH);
        dest_ddl_plan_free(&p);
        /* no schema at all */
        CHECK_INT_EQ(dest_ddl_plan(NULL, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_REFRESH);
        dest_ddl_plan_free(&p);
        /* a renamed table */
        free(ds->name);
        ds->name = wr_strdup("old");
        mk_meta(&dm, "lll", 100, 5);
        CHECK_INT_EQ(dest_ddl_plan(ds, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_RECOPY);
        CHECK_CONTAINS(p.summary, "\"public.old\" was renamed to \"public.t\"");
        dest_ddl_plan_free(&p);
        dest_tmeta_clear(&dm);
        wr_schema_free(ds);
    }
    dest_catalog_clear(&c);
    /* an added column of a partitioned table */
    mk_cat(&c, add, 4, "llll", 100, 0);
    c.relkind = 'p';
    {
        wr_schema_t *ds = mk_schema(40, "public", "t", ddl_d_cols, 3);
        dest_tmeta_t dm;

        mk_meta(&dm, "lll", 100, 0);
        CHECK_INT_EQ(dest_ddl_plan(ds, &dm, &c, &p, &err), 0);
        CHECK_INT_EQ(p.action, DEST_DDL_RECOPY);
        CHECK_CONTAINS(p.summary, "partitioned");
        dest_ddl_plan_free(&p);
        dest_tmeta_clear(&dm);
        wr_schema_free(ds);
    }
    dest_catalog_clear(&c);
}

static void
test_ddl_relation_matches(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"a", PGT_INT4, false}};
    dest_catalog_t c;
    wr_schema_t *r = mk_schema(40, "public", "t", cols, 2);
    char why[256];

    mk_cat(&c, cols, 2, "ll", 1, 1);
    CHECK(dest_ddl_relation_matches(r, &c, why, sizeof(why)));
    r->cols[1].typmod = 7;
    CHECK(!dest_ddl_relation_matches(r, &c, why, sizeof(why)));
    CHECK_STR_EQ(why, "column \"a\" has type 23 (typmod -1) now, type 23 (typmod 7) in the stream");
    r->cols[1].typmod = -1;
    r->cols[1].is_key = true; /* e.g. REPLICA IDENTITY FULL in the stream, DEFAULT now */
    CHECK(!dest_ddl_relation_matches(r, &c, why, sizeof(why)));
    CHECK_CONTAINS(why, "replica identity of column \"a\"");
    r->cols[1].is_key = false;
    r->replident = 'f';
    CHECK(!dest_ddl_relation_matches(r, &c, why, sizeof(why)));
    CHECK_STR_EQ(why, "replica identity is 'd' now, 'f' in the stream");
    wr_schema_free(r);
    dest_catalog_clear(&c);
}

/* Versions: reset_table records the copy's, put_version appends, get_version returns the
 * newest; a table registered without facts comes back with natts 0. */
static void
test_schema_versions(void)
{
    static const colspec_t cols[] = {{"id", PGT_INT4, true}, {"t", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s = mk_schema(41, "public", "v", cols, 2), *got = NULL;
    dest_tmeta_t m, gm;
    wr_err_t err = {0};

    /* unknown relid */
    CHECK_INT_EQ(d->ops->get_version(d, 41, &got, &gm, &err), 0);
    CHECK(got == NULL);
    /* registered by ensure_table only: schema, no facts */
    CHECK_INT_EQ(ensure(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->get_version(d, 41, &got, &gm, &err), 0);
    CHECK(got != NULL && wr_schema_equal(got, s));
    CHECK_INT_EQ(gm.natts, 0);
    wr_schema_free(got);
    dest_tmeta_clear(&gm);
    /* the copy's version */
    mk_meta(&m, "ldl", 777, 12345);
    m.attxmin[1] = 4000000000u;
    m.version.commit_lsn = 0x100000010ull;
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s, &m, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->get_version(d, 41, &got, &gm, &err), 0);
    CHECK(got != NULL && wr_schema_equal(got, s));
    CHECK_U64_EQ(gm.version.commit_lsn, 0x100000010ull);
    CHECK_INT_EQ(gm.version.ordinal, 0);
    CHECK_INT_EQ(gm.natts, 3);
    CHECK_STR_EQ(gm.attstate, "ldl");
    CHECK_U64_EQ(gm.attxmin[1], 4000000000u);
    CHECK_U64_EQ(gm.relfilenode, 12345);
    wr_schema_free(got);
    dest_tmeta_clear(&gm);
    CHECK_STR_EQ(q1("SELECT change FROM _walrelay_schemas WHERE relid = 41"), "copy");
    /* a newer version; an older one recorded later does not win */
    m.version.commit_lsn = 0x200000000ull;
    m.version.ordinal = 3;
    m.relfilenode = 99;
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->put_version(d, s, &m, "refresh", &err), 0);
    m.version.commit_lsn = 0x180000000ull;
    m.relfilenode = 55;
    CHECK_INT_EQ(d->ops->put_version(d, s, &m, "older", &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_INT_EQ(d->ops->get_version(d, 41, &got, &gm, &err), 0);
    CHECK_U64_EQ(gm.version.commit_lsn, 0x200000000ull);
    CHECK_INT_EQ(gm.version.ordinal, 3);
    CHECK_U64_EQ(gm.relfilenode, 99);
    wr_schema_free(got);
    dest_tmeta_clear(&gm);
    /* outside a transaction: refused */
    CHECK_INT_EQ(d->ops->put_version(d, s, &m, "x", &err), WR_EINVAL);
    /* a copy again forgets the history */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s, &m, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM _walrelay_schemas WHERE relid = 41"), "1");
    dest_tmeta_clear(&m);
    wr_schema_free(s);
    d->ops->close(d);
}

/* reset_table keeps a matching table (and what the user added to it) but empties it, and
 * creates a table whose columns or key differ again. */
static void
test_reset_table(void)
{
    static const colspec_t c1[] = {{"id", PGT_INT4, true}, {"a", PGT_INT4, false}};
    static const colspec_t c2[] = {{"id", PGT_INT4, true}, {"a", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *s1 = mk_schema(42, "public", "r", c1, 2),
                *s2 = mk_schema(42, "public", "r", c2, 2);
    wr_val_t v1[2] = {TV("1"), TV("10")}, v2[2] = {TV("1"), TV("ten")};
    dest_tmeta_t m;
    wr_err_t err = {0};

    mk_meta(&m, "ll", 1, 1);
    CHECK_INT_EQ(ensure(d, s1, &err), 0);
    CHECK_INT_EQ(ins(d, 42, v1, 2, &err), 0);
    CHECK_INT_EQ(qexec("CREATE INDEX r_a ON r (a)"), SQLITE_OK);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s1, &m, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM r"), "0");
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name = 'r_a'"), "1");
    /* a type change: created again with the new declared type */
    CHECK_INT_EQ(ins(d, 42, v1, 2, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s2, &m, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 42, &(wr_row_t){2, v2}, 1, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(q1("SELECT type FROM pragma_table_info('r') WHERE name = 'a'"), "TEXT");
    CHECK_STR_EQ(q1("SELECT a || ':' || typeof(a) FROM r"), "ten:text");
    /* rolled back: the old table and its registration come back */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->reset_table(d, s1, &m, &err), 0);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_STR_EQ(q1("SELECT a FROM r"), "ten");
    CHECK_INT_EQ(ensure(d, s2, &err), 0);
    CHECK_INT_EQ(ins(d, 42, (wr_val_t[]){TV("2"), TV("two")}, 2, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM r"), "2");
    dest_tmeta_clear(&m);
    wr_schema_free(s1);
    wr_schema_free(s2);
    d->ops->close(d);
}

/* Drops, renames (a swap too), adds with and without a fill, in place; then changes are
 * written with the new schema. Rolled back, nothing of it stays. */
static void
test_alter_in_place(void)
{
    static const colspec_t oc[] = {{"id", PGT_INT4, true},
                                   {"x", PGT_INT4, false},
                                   {"y", PGT_INT4, false},
                                   {"gone", PGT_TEXT, false},
                                   {"b", PGT_BYTEA, false}};
    static const colspec_t nc[] = {{"id", PGT_INT4, true},   {"y", PGT_INT4, false},
                                   {"x", PGT_INT4, false},   {"b", PGT_BYTEA, false},
                                   {"n", PGT_INT8, false},   {"t", PGT_TEXT, false},
                                   {"bb", PGT_BYTEA, false}, {"nul", PGT_TEXT, false}};
    dest_t *d = open_new();
    wr_schema_t *os = mk_schema(43, "public", "alt", oc, 5),
                *ns = mk_schema(43, "public", "alt", nc, 8);
    wr_val_t r1[5] = {TV("1"), TV("10"), TV("-10"), TV("g1"), TV("\\x00ff")},
             r2[5] = {TV("2"), TV("20"), TV("-20"), NV, NV};
    int32_t src[8] = {0, 1, 2, 4, -1, -1, -1, -1};
    wr_val_t fill[8] = {NV, NV, NV, NV, TV("42"), TV("it's"), TV("\\xdead"), NV};
    dest_tmeta_t m;
    dest_alter_t plan = {src, fill, &m, "test change"};
    wr_err_t err = {0};

    mk_meta(&m, "lllll", 1, 1);
    m.version.commit_lsn = 0x500;
    CHECK_INT_EQ(ensure(d, os, &err), 0);
    CHECK_INT_EQ(ins(d, 43, r1, 5, &err), 0);
    CHECK_INT_EQ(ins(d, 43, r2, 5, &err), 0);

    /* rolled back first */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->alter_table(d, os, ns, &plan, &err), 0);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_STR_EQ(qall("SELECT name FROM pragma_table_info('alt') ORDER BY cid"), "id;x;y;gone;b");
    /* the registration made by alter_table went with the rollback: register again */
    CHECK_INT_EQ(ins(d, 43, r2, 5, &err), WR_EINVAL);
    CHECK_INT_EQ(ensure(d, os, &err), 0);
    CHECK_INT_EQ(ins(d, 43, (wr_val_t[]){TV("3"), TV("30"), TV("-30"), NV, NV}, 5, &err), 0);

    /* then for good, with changes in the same transaction */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->alter_table(d, os, ns, &plan, &err), 0);
    {
        wr_val_t nv[8] = {TV("4"), TV("-40"), TV("40"), NV, TV("1"), TV("own"), NV, NV};
        wr_row_t row = {8, nv};
        dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = 43, .new_row = &row};

        CHECK_INT_EQ(d->ops->ensure_table(d, ns, &err), 0);
        CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    }
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(qall("SELECT name || ' ' || type FROM pragma_table_info('alt') ORDER BY cid"),
                 "id INTEGER;y INTEGER;x INTEGER;b BLOB;n INTEGER;t TEXT;bb BLOB;nul TEXT");
    /* the swap kept each value with its attribute (old x is called y now); the rows that
     * existed got the fills */
    CHECK_STR_EQ(qall("SELECT id, y, x, hex(b), n, typeof(n), t, hex(bb), nul FROM alt "
                      "ORDER BY id"),
                 "1|10|-10|00FF|42|integer|it's|DEAD|N;2|20|-20||42|integer|it's|DEAD|N;"
                 "3|30|-30||42|integer|it's|DEAD|N;4|-40|40||1|integer|own||N");
    CHECK_STR_EQ(q1("SELECT change FROM _walrelay_schemas WHERE relid = 43"), "test change");
    CHECK_STR_EQ(q1("SELECT version_lsn FROM _walrelay_schemas WHERE relid = 43"), "1280");
    /* the table's registration is the new schema */
    CHECK_CONTAINS(q1("SELECT columns_json FROM _walrelay_tables WHERE relid = 43"),
                   "\"name\":\"nul\"");
    dest_tmeta_clear(&m);
    wr_schema_free(os);
    wr_schema_free(ns);
    d->ops->close(d);
}

/* A new key: the table is rebuilt (SQLite cannot change a PRIMARY KEY in place), its rows
 * kept; rows that would share a key are refused as WR_EDATA. */
static void
test_alter_new_key(void)
{
    static const colspec_t oc[] = {{"id", PGT_INT4, false}, {"v", PGT_TEXT, false}};
    static const colspec_t nc[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, false}};
    static const colspec_t nc2[] = {{"id", PGT_INT4, true}, {"v", PGT_TEXT, true}};
    dest_t *d = open_new();
    wr_schema_t *os = mk_schema(44, "public", "nk", oc, 2),
                *ns = mk_schema(44, "public", "nk", nc, 2),
                *ns2 = mk_schema(44, "public", "nk", nc2, 2);
    int32_t src[2] = {0, 1};
    wr_val_t fill[2] = {NV, NV};
    dest_tmeta_t m;
    dest_alter_t plan = {src, fill, &m, "key (none) to (id)"};
    wr_err_t err = {0};

    mk_meta(&m, "ll", 1, 1);
    os->replident = ns->replident = ns2->replident = 'f';
    CHECK_INT_EQ(ensure(d, os, &err), 0);
    CHECK_STR_EQ(q1("SELECT sum(pk) FROM pragma_table_info('nk')"), "0");
    CHECK_INT_EQ(ins(d, 44, (wr_val_t[]){TV("1"), TV("a")}, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 44, (wr_val_t[]){TV("2"), TV("b")}, 2, &err), 0);
    CHECK_INT_EQ(ins(d, 44, (wr_val_t[]){TV("2"), TV("c")}, 2, &err), 0);
    /* two rows with id 2: the new key cannot hold */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->alter_table(d, os, ns, &plan, &err), WR_EDATA);
    CHECK_CONTAINS(err.msg, "new key (id)");
    CHECK_CONTAINS(err.hint, "resync the table");
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_STR_EQ(q1("SELECT count(*) FROM nk"), "3");
    CHECK_INT_EQ(qexec("DELETE FROM nk WHERE v = 'c'"), SQLITE_OK);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->alter_table(d, os, ns, &plan, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    CHECK_STR_EQ(qall("SELECT name, pk FROM pragma_table_info('nk') ORDER BY cid"), "id|1;v|0");
    CHECK_STR_EQ(qall("SELECT id, v FROM nk ORDER BY id"), "1|a;2|b");
    CHECK_STR_EQ(q1("SELECT count(*) FROM sqlite_master WHERE name LIKE '_walrelay_rebuild%'"),
                 "0");
    /* and replaced by a wider one */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->alter_table(d, ns, ns2, &plan, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, NULL, NULL, &err), 0);
    /* every column flagged under FULL means "no primary key" for this destination */
    CHECK_STR_EQ(q1("SELECT sum(pk) FROM pragma_table_info('nk')"), "0");
    /* an old schema that is not the table's: refused, nothing changed */
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    {
        static const colspec_t bad[] = {{"zz", PGT_INT4, false}, {"v", PGT_TEXT, false}};
        wr_schema_t *bs = mk_schema(44, "public", "nk", bad, 2);

        CHECK_INT_EQ(d->ops->alter_table(d, bs, ns, &plan, &err), WR_EUNSUPPORTED);
        CHECK_CONTAINS(err.msg, "does not match its recorded schema");
        wr_schema_free(bs);
    }
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    dest_tmeta_clear(&m);
    wr_schema_free(os);
    wr_schema_free(ns);
    wr_schema_free(ns2);
    d->ops->close(d);
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
    RUN(test_sqt_class);
    RUN(test_create_from_schema);
    RUN(test_composite_key);
    RUN(test_insert_update_delete_truncate);
    RUN(test_update_unchanged_toast);
    RUN(test_update_key_change);
    RUN(test_replica_identity_full_old_row);
    RUN(test_value_classes);
    RUN(test_bad_values);
    RUN(test_last_key_durable);
    RUN(test_durable_on_request);
    RUN(test_copy_writer_checkpoints_late);
    RUN(test_rollback_leaves_nothing);
    RUN(test_duplicate_insert);
    RUN(test_missing_row);
    RUN(test_no_key_table);
    RUN(test_keyless_full);
    RUN(test_keyless_full_rowid_column);
    RUN(test_full_with_primary_key);
    RUN(test_identity_index);
    RUN(test_float_and_int_forms);
    RUN(test_outside_transaction);
    RUN(test_existing_table_differs);
    RUN(test_quoting);
    RUN(test_non_public_schema);
    RUN(test_ddl_plan_rules);
    RUN(test_ddl_relation_matches);
    RUN(test_schema_versions);
    RUN(test_reset_table);
    RUN(test_alter_in_place);
    RUN(test_alter_new_key);
    RUN(test_copy_rows);
    RUN(test_copy_errors);
    RUN(test_copy_ranges);
    cleanup();
    return unit_done();
}
