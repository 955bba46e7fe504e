/*
 * test_dest_abi.c - unit tests of the destination ABI adapter (destinations/abi.c): the
 * in-tree dest_ops_t driven the way the workers drive it, over a fake wr_dest_ops_t that
 * records every call; and the checks of an operations table.
 *
 * NOTES: no files, no server. The fake keeps deep copies of what it was handed, so a
 * test can compare after the adapter's buffers are reused.
 */
#include "destinations/abi.h"
#include "destinations/registry.h"
#include "unit.h"

#define TV(s) ((wr_val_t){WR_VAL_TEXT, (uint32_t)strlen(s), (s)})
#define NV    ((wr_val_t){WR_VAL_NULL, 0, NULL})
#define UV    ((wr_val_t){WR_VAL_UNCHANGED, 0, NULL})

/* ---- the fake destination ---- */

typedef struct rec_s {
    char log[16384]; /* one line per call / event */
    size_t nevents, ncalls_write_events, nflush, ndiscard, nrows;
    const wr_dest_row_t *last_rows; /* the pointer write_table_rows got */
    int fail_write_events;          /* code to return from write_events, 0 = none */
    int fail_validate;
    bool found;
    wr_dest_key_t key;
    char role[16];
} rec_t;

static rec_t rec;
static wr_dest_ops_t fake_ops;

static void rec_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
rec_add(const char *fmt, ...)
{
    size_t n = strlen(rec.log);
    va_list ap;

    if (n + 2 >= sizeof(rec.log))
        return;
    va_start(ap, fmt);
    vsnprintf(rec.log + n, sizeof(rec.log) - n - 1, fmt, ap);
    va_end(ap);
    n = strlen(rec.log);
    rec.log[n] = '\n';
    rec.log[n + 1] = '\0';
}

static void
rec_row(char *buf, size_t len, const wr_dest_row_t *r)
{
    size_t off = 0;

    buf[0] = '\0';
    for (uint16_t i = 0; i < r->ncols && off + 8 < len; i++) {
        const wr_dest_value_t *v = &r->values[i];
        int w;

        if (v->kind == WR_DEST_VAL_TEXT)
            w = snprintf(buf + off, len - off, "%s%.*s", i ? "," : "", (int)v->len, v->data);
        else
            w = snprintf(buf + off, len - off, "%s<%c>", i ? "," : "", v->kind);
        off += w > 0 ? (size_t)w : 0;
    }
}

static int
fake_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    const char *u = wr_dest_config_get(cfg, "url");

    if (rec.fail_validate)
        return wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "not a url: \"%s\"", u ? u : "");
    for (size_t i = 0; i < cfg->nitems; i++)
        if (strcmp(cfg->items[i].key, "url") != 0 && strcmp(cfg->items[i].key, "token") != 0) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, cfg->items[i].key, "unknown key");
            wr_dest_error_hint(err, "known keys: url, token");
            return WR_DEST_ECONFIG;
        }
    return WR_DEST_OK;
}

static int
fake_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state,
          wr_dest_error_t *err)
{
    (void)cfg;
    (void)err;
    snprintf(rec.role, sizeof(rec.role), "%s", host->role);
    wr_dest_log(host, WR_DEST_LOG_INFO, "opened with password=hunter2");
    *state = &rec;
    return WR_DEST_OK;
}

static int
fake_check(void *state, wr_dest_error_t *err)
{
    (void)state;
    return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "endpoint unreachable");
}

static int
fake_truncate(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    (void)state;
    (void)err;
    rec_add("truncate_table %s", rel->dest_name);
    return WR_DEST_OK;
}

static int
fake_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows, size_t n,
          wr_dest_error_t *err)
{
    char buf[256];

    (void)state;
    (void)err;
    rec.last_rows = rows;
    rec.nrows += n;
    rec_add("rows %s n=%zu", rel->dest_name, n);
    for (size_t i = 0; i < n; i++) {
        rec_row(buf, sizeof(buf), &rows[i]);
        rec_add("  row %s", buf);
    }
    return WR_DEST_OK;
}

static int
fake_events(void *state, const wr_dest_event_t *evs, size_t n, wr_dest_error_t *err)
{
    char a[256], b[256];

    (void)state;
    rec.ncalls_write_events++;
    if (rec.fail_write_events)
        return wr_dest_error_set(err, rec.fail_write_events, NULL, "refused");
    for (size_t i = 0; i < n; i++) {
        const wr_dest_event_t *e = &evs[i];

        rec.nevents++;
        if (rec.nevents > 20)
            continue; /* the big batches are only counted */
        switch (e->kind) {
        case WR_DEST_EV_BEGIN:
            rec_add("begin %llu/%u xid=%u t=%lld", (unsigned long long)e->key.commit_lsn,
                    e->key.ordinal, e->xid, (long long)e->commit_time_us);
            break;
        case WR_DEST_EV_COMMIT:
            rec_add("commit %llu/%u end=%llu", (unsigned long long)e->key.commit_lsn,
                    e->key.ordinal, (unsigned long long)e->end_lsn);
            break;
        case WR_DEST_EV_RELATION: {
            const wr_dest_relation_t *r = e->relation;
            size_t off = 0;
            a[0] = '\0';
            for (uint16_t c = 0; c < r->ncolumns; c++)
                off += (size_t)snprintf(a + off, sizeof(a) - off, "%s%s:%s%s%s", c ? "," : "",
                                        r->columns[c].name, r->columns[c].type_name,
                                        r->columns[c].key ? ":key" : "",
                                        r->columns[c].not_null ? ":nn" : "");
            rec_add("relation %s.%s->%s ri=%c (%s)", r->schema, r->name, r->dest_name,
                    r->replica_identity, a);
            break;
        }
        case WR_DEST_EV_INSERT:
            rec_row(a, sizeof(a), e->new_row);
            rec_add("insert %s %llu/%u (%s)", e->relation->dest_name,
                    (unsigned long long)e->key.commit_lsn, e->key.ordinal, a);
            break;
        case WR_DEST_EV_UPDATE:
            rec_row(a, sizeof(a), e->new_row);
            if (e->old_row)
                rec_row(b, sizeof(b), e->old_row);
            else
                b[0] = '\0';
            rec_add("update %s old=%c(%s) new=(%s)", e->relation->dest_name,
                    e->old_kind ? e->old_kind : '-', b, a);
            break;
        case WR_DEST_EV_DELETE:
            rec_row(b, sizeof(b), e->old_row);
            rec_add("delete %s old=%c(%s)", e->relation->dest_name, e->old_kind, b);
            break;
        case WR_DEST_EV_TRUNCATE:
            rec_add("truncate %s flags=%u", e->relation->dest_name, e->truncate_flags);
            break;
        default:
            rec_add("?");
        }
    }
    return WR_DEST_OK;
}

static int
fake_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    (void)state;
    (void)err;
    rec.nflush++;
    if (key)
        rec_add("flush %s %llu/%u", stream, (unsigned long long)key->commit_lsn, key->ordinal);
    else
        rec_add("flush %s -", stream);
    return WR_DEST_OK;
}

static int
fake_last_key(void *state, const char *stream, wr_dest_key_t *key, bool *found,
              wr_dest_error_t *err)
{
    (void)state;
    (void)stream;
    (void)err;
    *found = rec.found;
    *key = rec.key;
    return WR_DEST_OK;
}

static int
fake_forget(void *state, const char *stream, wr_dest_error_t *err)
{
    (void)state;
    (void)err;
    rec_add("forget %s", stream);
    return WR_DEST_OK;
}

static int
fake_discard(void *state, wr_dest_error_t *err)
{
    (void)state;
    (void)err;
    rec.ndiscard++;
    rec_add("discard");
    return WR_DEST_OK;
}

static void
fake_close(void *state)
{
    (void)state;
    rec_add("close");
}

static void
fake_reset(uint32_t caps)
{
    memset(&rec, 0, sizeof(rec));
    memset(&fake_ops, 0, sizeof(fake_ops));
    fake_ops.abi_version = WR_DEST_ABI_VERSION;
    fake_ops.struct_size = sizeof(wr_dest_ops_t);
    fake_ops.name = "fake";
    fake_ops.capabilities = caps;
    fake_ops.validate = fake_validate;
    fake_ops.open = fake_open;
    fake_ops.check = fake_check;
    fake_ops.truncate_table = fake_truncate;
    fake_ops.write_table_rows = fake_rows;
    fake_ops.write_events = fake_events;
    fake_ops.flush = fake_flush;
    fake_ops.last_key = fake_last_key;
    fake_ops.forget_stream = fake_forget;
    fake_ops.discard = fake_discard;
    fake_ops.close = fake_close;
}

/* ---- helpers ---- */

static wr_cfg_item_t items[3];

static void
mk_cfg(wr_config_t *c, const char *url)
{
    memset(c, 0, sizeof(*c));
    c->path = "/p/walrelay.conf";
    c->dir = "/p";
    c->pipeline_name = "demo";
    c->dest_type = "plugin";
    c->dest_line = 10;
    c->dest_type_line = 11;
    items[0] = (wr_cfg_item_t){"library", "/p/x.so", 12};
    items[1] = (wr_cfg_item_t){"url", (char *)url, 13};
    c->dest_items = items;
    c->dest_nitems = 2;
}

static wr_schema_t *
mk_schema(uint32_t relid, const char *nsp, const char *name, int ncols)
{
    static const char *names[] = {"id", "amount", "note", "extra"};
    static const uint32_t oids[] = {23, 1700, 25, 16385};
    wr_schema_t *s = wr_schema_new(relid, nsp, name, (uint16_t)ncols);

    s->replident = 'd';
    for (int i = 0; i < ncols; i++) {
        s->cols[i].name = wr_strdup(names[i]);
        s->cols[i].type_oid = oids[i];
        s->cols[i].typmod = i == 1 ? ((10 << 16) | 2) + 4 : -1;
        s->cols[i].is_key = i == 0;
        s->cols[i].not_null = i == 0;
    }
    if (ncols > 3)
        s->cols[3].type_name = wr_strdup("public.mood");
    return s;
}

static dest_t *
open_fake(uint32_t caps, const char *role)
{
    wr_config_t c;
    dest_t *d = NULL;
    wr_err_t err;
    int rc;

    fake_reset(caps);
    mk_cfg(&c, "http://x");
    wr_err_clear(&err);
    rc = dest_abi_open(&fake_ops, NULL, &c, role, &d, &err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0)
        fprintf(stderr, "  open: %s\n", err.msg);
    return d;
}

/* ---- tests ---- */

/* Events are buffered, deep-copied, preceded by RELATION and handed over at commit. */
static void
test_stream_events(void)
{
    dest_t *d = open_fake(WR_DEST_CAP_TRANSACTIONAL, "apply");
    wr_schema_t *s = mk_schema(7, "public", "orders", 3);
    wr_schema_t *s2 = mk_schema(8, "sales", "items", 4);
    char buf[3][8];
    wr_val_t v[3], old[3], v2[4] = {TV("9"), NV, UV, TV("happy")};
    wr_row_t row = {3, v}, orow = {3, old}, row2 = {4, v2};
    dest_event_t ev;
    dest_key_t k = {100, 3};
    wr_err_t err;

    if (d == NULL)
        return;
    CHECK_STR_EQ(rec.role, "apply");
    CHECK_STR_EQ(d->ops->name, "fake");
    CHECK(d->ops->get_version == NULL && d->ops->reset_table == NULL);
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->ensure_table(d, s2, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);

    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_BEGIN;
    ev.key = (dest_key_t){100, 0};
    ev.xid = 5;
    ev.commit_ts = 1700000000000000;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);

    /* the values live in a buffer the producer reuses: the adapter copies them */
    snprintf(buf[0], sizeof(buf[0]), "1");
    snprintf(buf[1], sizeof(buf[1]), "2.50");
    v[0] = (wr_val_t){WR_VAL_TEXT, 1, buf[0]};
    v[1] = (wr_val_t){WR_VAL_TEXT, 4, buf[1]};
    v[2] = NV;
    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_INSERT;
    ev.relid = 7;
    ev.key = (dest_key_t){100, 1};
    ev.new_row = &row;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    snprintf(buf[0], sizeof(buf[0]), "X");
    snprintf(buf[1], sizeof(buf[1]), "YYYY");

    old[0] = TV("1");
    old[1] = NV;
    old[2] = NV;
    v[0] = TV("2");
    v[1] = UV;
    v[2] = TV("n");
    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_UPDATE;
    ev.relid = 7;
    ev.key = (dest_key_t){100, 2};
    ev.old_kind = 'K';
    ev.old_row = &orow;
    ev.new_row = &row;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);

    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_INSERT;
    ev.relid = 8;
    ev.key = (dest_key_t){100, 3};
    ev.new_row = &row2;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);

    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_TRUNCATE;
    ev.relid = 7;
    ev.key = (dest_key_t){100, 4};
    ev.truncate_flags = 3;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);

    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_COMMIT;
    ev.key = (dest_key_t){100, 4};
    ev.end_lsn = 120;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    /* nothing handed over before the commit */
    CHECK_INT_EQ(rec.ncalls_write_events, 0);
    k = (dest_key_t){100, 4};
    CHECK_INT_EQ(d->ops->commit(d, "apply", &k, &err), 0);
    CHECK_INT_EQ(rec.ncalls_write_events, 1);
    CHECK_STR_EQ(rec.log,
                 "begin 100/0 xid=5 t=1700000000000000\n"
                 "relation public.orders->orders ri=d (id:integer:key:nn,amount:numeric(10,2),"
                 "note:text)\n"
                 "insert orders 100/1 (1,2.50,<n>)\n"
                 "update orders old=K(1,<n>,<n>) new=(2,<u>,n)\n"
                 "relation sales.items->sales__items ri=d (id:integer:key:nn,amount:numeric(10,2),"
                 "note:text,extra:public.mood)\n"
                 "insert sales__items 100/3 (9,<n>,<u>,happy)\n"
                 "truncate orders flags=3\n"
                 "commit 100/4 end=120\n"
                 "flush apply 100/4\n");

    /* a second transaction: no RELATION again in this instance */
    rec.log[0] = '\0';
    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_DELETE;
    ev.relid = 7;
    ev.key = (dest_key_t){200, 1};
    ev.old_kind = 'K';
    ev.old_row = &orow;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), 0);
    CHECK_STR_EQ(rec.log, "delete orders old=K(1,<n>,<n>)\nflush apply -\n");

    /* last key only with TRANSACTIONAL (set here) */
    {
        dest_key_t got;
        bool found = false;
        rec.found = true;
        rec.key = (wr_dest_key_t){555, 7};
        CHECK_INT_EQ(d->ops->last_key(d, "apply", &got, &found, &err), 0);
        CHECK(found);
        CHECK_U64_EQ(got.commit_lsn, 555);
        CHECK_INT_EQ(got.ordinal, 7);
    }
    d->ops->close(d);
    CHECK_CONTAINS(rec.log, "close\n");
    wr_schema_free(s);
    wr_schema_free(s2);
}

/* Copied rows pass without a copy; truncate_table and forget_stream map directly. */
static void
test_copy_rows(void)
{
    dest_t *d = open_fake(0, "sync");
    wr_schema_t *s = mk_schema(7, "public", "orders", 3);
    wr_val_t v[2][3] = {{TV("1"), TV("1.00"), NV}, {TV("2"), NV, TV("x")}};
    wr_row_t rows[2] = {{3, v[0]}, {3, v[1]}};
    wr_val_t bad[3] = {TV("1"), {WR_VAL_BINARY, 1, "\x01"}, NV};
    wr_row_t badrow = {3, bad};
    wr_err_t err;
    dest_key_t got;
    bool found = true;

    if (d == NULL)
        return;
    CHECK_STR_EQ(rec.role, "sync");
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->begin(d, &err), 0);
    CHECK_INT_EQ(d->ops->clear_key(d, "sync_7", &err), 0);
    CHECK_INT_EQ(d->ops->truncate_table(d, 7, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 7, rows, 0, &err), 0);
    CHECK_INT_EQ(d->ops->write_rows(d, 7, rows, 2, &err), 0);
    CHECK(rec.last_rows == (const wr_dest_row_t *)(const void *)rows); /* no copy */
    CHECK_INT_EQ(d->ops->commit(d, "sync_7", NULL, &err), 0);
    CHECK_STR_EQ(rec.log, "forget sync_7\ntruncate_table orders\nrows orders n=0\n"
                          "rows orders n=2\n  row 1,1.00,<n>\n  row 2,<n>,x\nflush sync_7 -\n");
    /* binary values are refused, not passed on */
    CHECK_INT_EQ(d->ops->write_rows(d, 7, &badrow, 1, &err), WR_EPROTO);
    CHECK_CONTAINS(err.msg, "column \"amount\" of \"public.orders\" arrived in binary form");
    /* an unregistered table */
    CHECK_INT_EQ(d->ops->write_rows(d, 99, rows, 1, &err), WR_EINVAL);
    /* not transactional: no last key even if the plugin had one */
    rec.found = true;
    CHECK_INT_EQ(d->ops->last_key(d, "sync_7", &got, &found, &err), 0);
    CHECK(!found);
    d->ops->close(d);
    wr_schema_free(s);
}

/* Batches of DEST_ABI_BATCH_EVENTS; rollback discards or warns. */
static void
test_batches_and_rollback(void)
{
    dest_t *d = open_fake(WR_DEST_CAP_TRANSACTIONAL | WR_DEST_CAP_DISCARD, "apply");
    wr_schema_t *s = mk_schema(7, "public", "orders", 3);
    wr_val_t v[3] = {TV("1"), TV("2"), TV("3")};
    wr_row_t row = {3, v};
    dest_event_t ev;
    wr_err_t err;

    if (d == NULL)
        return;
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    memset(&ev, 0, sizeof(ev));
    ev.kind = DEST_EV_INSERT;
    ev.relid = 7;
    ev.new_row = &row;
    for (uint32_t i = 1; i <= 2500; i++) {
        ev.key = (dest_key_t){300, i};
        CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    }
    /* 2500 inserts + 1 relation: two full batches handed over, 501 buffered */
    CHECK_INT_EQ(rec.ncalls_write_events, 2);
    CHECK_INT_EQ(rec.nevents, 2000);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_INT_EQ(rec.ndiscard, 1);
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), 0);
    CHECK_INT_EQ(rec.nevents, 2000); /* the rolled back ones are gone */
    /* after a rollback the relation is announced again */
    ev.key = (dest_key_t){400, 1};
    rec.log[0] = '\0';
    rec.nevents = 0;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), 0);
    CHECK_CONTAINS(rec.log, "relation public.orders");
    d->ops->close(d);

    /* without DISCARD: dropped, nothing called */
    d = open_fake(0, "apply");
    if (d == NULL)
        return;
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->rollback(d, &err), 0);
    CHECK_INT_EQ(rec.ndiscard, 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), 0);
    CHECK_INT_EQ(rec.ncalls_write_events, 0);
    d->ops->close(d);
    wr_schema_free(s);
}

/* A changed column list without SCHEMA_CHANGES is refused for that table; with it, a new
 * RELATION follows. */
static void
test_schema_change(void)
{
    dest_t *d = open_fake(0, "apply");
    wr_schema_t *s = mk_schema(7, "public", "orders", 3);
    wr_schema_t *s4 = mk_schema(7, "public", "orders", 4);
    wr_schema_t *skey = mk_schema(7, "public", "orders", 3);
    wr_val_t v[4] = {TV("1"), NV, NV, NV};
    wr_row_t row = {3, v}, row4 = {4, v};
    dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = 7, .new_row = &row};
    wr_err_t err;

    if (d == NULL)
        return;
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->ensure_table(d, s4, &err), WR_EUNSUPPORTED);
    CHECK_STR_EQ(err.msg, "destination fake does not follow schema changes, and the columns of "
                          "table \"public.orders\" changed");
    CHECK_CONTAINS(err.hint, "walrelay resync DIR public.orders");
    /* the buffered change of the old shape was handed over first */
    CHECK_INT_EQ(rec.ncalls_write_events, 1);
    /* the table is forgotten: after a resync its new schema registers */
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), WR_EINVAL);
    CHECK_INT_EQ(d->ops->ensure_table(d, s4, &err), 0);
    /* a key flag change is not a column change */
    skey->cols[0].is_key = false;
    skey->cols[2].is_key = true;
    d->ops->close(d);

    d = open_fake(WR_DEST_CAP_SCHEMA_CHANGES, "apply");
    if (d == NULL)
        return;
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->ensure_table(d, s4, &err), 0);
    ev.new_row = &row4;
    ev.key.ordinal = 2;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    ev.new_row = &row; /* a row of the wrong width */
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), WR_EPROTO);
    CHECK_INT_EQ(d->ops->ensure_table(d, skey, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), 0);
    CHECK_CONTAINS(rec.log, "relation public.orders->orders ri=d (id:integer:key:nn,amount:"
                            "numeric(10,2),note:text)\ninsert orders 0/0 (1,<n>,<n>)\n"
                            "relation public.orders->orders ri=d (id:integer:key:nn,amount:"
                            "numeric(10,2),note:text,extra:public.mood)\n"
                            "insert orders 0/2 (1,<n>,<n>,<n>)\n");
    d->ops->close(d);
    wr_schema_free(s);
    wr_schema_free(s4);
    wr_schema_free(skey);
}

/* Errors: codes mapped; configuration errors name file, line, key; a table-specific error
 * of a batch that spans tables is not pinned on one table. */
static void
test_errors(void)
{
    wr_config_t c;
    dest_t *d = NULL;
    wr_err_t err;
    char summary[256];
    wr_schema_t *s = mk_schema(7, "public", "orders", 3);
    wr_schema_t *s8 = mk_schema(8, "public", "other", 3);
    wr_val_t v[3] = {TV("1"), NV, NV};
    wr_row_t row = {3, v};
    dest_event_t ev = {.kind = DEST_EV_INSERT, .relid = 7, .new_row = &row};

    CHECK_INT_EQ(dest_abi_code(WR_DEST_ECONFIG), WR_ECONFIG);
    CHECK_INT_EQ(dest_abi_code(WR_DEST_ETRANSIENT), WR_ECONN);
    CHECK_INT_EQ(dest_abi_code(WR_DEST_EIO), WR_EDEST);
    CHECK_INT_EQ(dest_abi_code(WR_DEST_EDATA), WR_EDATA);
    CHECK_INT_EQ(dest_abi_code(WR_DEST_EUNSUPPORTED), WR_EUNSUPPORTED);
    CHECK_INT_EQ(dest_abi_code(WR_DEST_ENOMEM), WR_ENOMEM);
    CHECK_INT_EQ(dest_abi_code(-77), WR_EDEST);

    fake_reset(0);
    mk_cfg(&c, "x");
    rec.fail_validate = 1;
    CHECK_INT_EQ(dest_abi_validate(&fake_ops, &c, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "/p/walrelay.conf:13: [destination] url: not a url: \"x\"");
    rec.fail_validate = 0;
    items[1] = (wr_cfg_item_t){"colour", "red", 14};
    CHECK_INT_EQ(dest_abi_open(&fake_ops, NULL, &c, "apply", &d, &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "/p/walrelay.conf:14: [destination] colour: unknown key");
    CHECK_STR_EQ(err.hint, "known keys: url, token");
    CHECK(d == NULL);
    CHECK(strstr(rec.log, "close") == NULL); /* never opened: not closed */

    /* check(): open with role "check", then check */
    mk_cfg(&c, "http://x");
    CHECK_INT_EQ(dest_abi_preflight(&fake_ops, &c, summary, sizeof(summary), &err), WR_ECONN);
    CHECK_STR_EQ(err.msg, "destination fake: endpoint unreachable");
    CHECK_STR_EQ(rec.role, "check");
    fake_ops.check = NULL;
    CHECK_INT_EQ(dest_abi_preflight(&fake_ops, &c, summary, sizeof(summary), &err), 0);
    CHECK_STR_EQ(summary, "fake (ABI version 1, at least once)");

    d = open_fake(0, "apply");
    if (d == NULL)
        return;
    CHECK_INT_EQ(d->ops->ensure_table(d, s, &err), 0);
    CHECK_INT_EQ(d->ops->ensure_table(d, s8, &err), 0);
    /* one table in the batch: its table-specific error stays table-specific when the batch
     * fills up while writing that table */
    rec.fail_write_events = WR_DEST_EDATA;
    for (uint32_t i = 1; i <= DEST_ABI_BATCH_EVENTS - 2; i++) { /* + its RELATION event */
        ev.key = (dest_key_t){1, i};
        CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    }
    ev.key.ordinal = DEST_ABI_BATCH_EVENTS - 1;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), WR_EDATA);
    CHECK_STR_EQ(err.msg, "destination fake: refused");
    /* a transaction open in the failed batch keeps its BEGIN for what follows */
    {
        dest_event_t b = {.kind = DEST_EV_BEGIN, .key = {2, 0}, .xid = 9};
        rec.fail_write_events = 0;
        rec.log[0] = '\0';
        rec.nevents = 0;
        CHECK_INT_EQ(d->ops->write_event(d, &b, &err), 0);
        ev.key = (dest_key_t){2, 1};
        rec.fail_write_events = WR_DEST_EDATA;
        for (uint32_t i = 1; i < DEST_ABI_BATCH_EVENTS - 2; i++) /* + BEGIN, RELATION */
            CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
        CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), WR_EDATA);
        rec.fail_write_events = 0;
        ev.relid = 8;
        CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
        CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), 0);
        CHECK_STR_EQ(rec.log, "begin 2/0 xid=9 t=0\nrelation public.other->other ri=d "
                              "(id:integer:key:nn,amount:numeric(10,2),note:text)\n"
                              "insert other 2/1 (1,<n>,<n>)\nflush apply -\n");
        ev.relid = 7;
        rec.fail_write_events = WR_DEST_EDATA;
    }
    /* two tables in the batch: not pinned on one */
    ev.relid = 8;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    ev.relid = 7;
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), WR_EDEST);
    CHECK_CONTAINS(err.msg, "several tables");
    rec.fail_write_events = WR_DEST_ETRANSIENT;
    CHECK_INT_EQ(d->ops->write_event(d, &ev, &err), 0);
    CHECK_INT_EQ(d->ops->commit(d, "apply", NULL, &err), WR_ECONN);
    d->ops->close(d);
    wr_schema_free(s);
    wr_schema_free(s8);
}

/* The checks of an operations table, each naming what to fix. */
static void
test_check_ops(void)
{
    wr_err_t err;

    fake_reset(0);
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), 0);
    fake_ops.abi_version = 2;
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "\"x.so\" was built for destination ABI version 2, this walrelay "
                          "implements version 1");
    CHECK_CONTAINS(err.hint, "rebuild the plugin against walrelay's installed "
                             "walrelay/destination.h (ABI version 1)");
    fake_reset(0);
    fake_ops.struct_size = 8;
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "of 8 bytes");
    fake_reset(0);
    fake_ops.flush = NULL;
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), WR_ECONFIG);
    CHECK_STR_EQ(err.msg, "\"x.so\": its operations table has no flush function");
    fake_reset(WR_DEST_CAP_TRANSACTIONAL);
    fake_ops.last_key = NULL;
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "no last_key (required with WR_DEST_CAP_TRANSACTIONAL)");
    fake_reset(WR_DEST_CAP_DISCARD);
    fake_ops.discard = NULL;
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), WR_ECONFIG);
    CHECK_CONTAINS(err.msg, "no discard (required with WR_DEST_CAP_DISCARD)");
    /* the optional ones may be NULL */
    fake_reset(0);
    fake_ops.check = NULL;
    fake_ops.last_key = NULL;
    fake_ops.forget_stream = NULL;
    fake_ops.discard = NULL;
    CHECK_INT_EQ(dest_abi_check_ops(&fake_ops, "\"x.so\"", &err), 0);
    /* the built-in null passes the same checks */
    CHECK_INT_EQ(dest_abi_check_ops(dest_null_abi(), "null", &err), 0);
}

/* Relations: type names from the schema, else formatted; keys under FULL without a key. */
static void
test_relation(void)
{
    wr_schema_t *s = mk_schema(7, "public", "t", 4);
    wr_dest_column_t cols[4];
    char names[4][128];
    wr_dest_relation_t rel;

    free(s->cols[3].type_name);
    s->cols[3].type_name = NULL; /* a user type nobody named */
    s->cols[1].type_name = wr_strdup("numeric(10,2)");
    dest_abi_relation(s, "t", cols, names, &rel);
    CHECK_STR_EQ(rel.columns[0].type_name, "integer");
    CHECK_STR_EQ(rel.columns[1].type_name, "numeric(10,2)");
    CHECK_STR_EQ(rel.columns[3].type_name, "16385");
    CHECK(rel.columns[0].key && !rel.columns[1].key);
    s->cols[0].is_key = false;
    s->replident = 'f';
    dest_abi_relation(s, "t", cols, names, &rel);
    CHECK(rel.columns[0].key && rel.columns[1].key && rel.columns[3].key);
    CHECK_INT_EQ(rel.replica_identity, 'f');
    wr_schema_free(s);
}

int
main(void)
{
    RUN(test_stream_events);
    RUN(test_copy_rows);
    RUN(test_batches_and_rollback);
    RUN(test_schema_change);
    RUN(test_errors);
    RUN(test_check_ops);
    RUN(test_relation);
    return unit_done();
}
