/*
 * eventstore.c - the "eventstore" destination: every replicated change becomes an event in
 * an event store (store.h; SQLite or PostgreSQL), durably, exactly once, in commit order.
 *
 * NOTES: runs in walrelay-apply and in every walrelay-sync; each process opens its own
 * store handle, so several write at once and the store's write lock orders them
 * (positions are dense and become visible in order, store.h). It persists, through the
 * store: the events, each slot's resume key in es_cdc_progress (apply: walrelay_<p>,
 * sync: walrelay_<p>_s<relid>) in the same transaction as the events, the pipeline's
 * ownership of its slot names (es_pipelines, checked at open: a second pipeline on the
 * same store and slot is refused with a configuration error), the aggregate kinds it
 * writes (es_cdc_kinds, claimed when a table is registered: another pipeline, or events
 * appended by an application, make the table Errored) and staged copies.
 *
 * MAPPING (docs/eventstore.md)
 *
 *   aggregate_kind  "schema.table"
 *   aggregate_id    canonical JSON array of the primary key's values in key order, as
 *                   text: ["42"], ["eu","1001"]. The key is read from pg_index on the
 *                   source (a separate SQL connection, at each registration), so REPLICA
 *                   IDENTITY FULL or USING INDEX still key by the primary key. A table
 *                   without one is refused (WR_EUNSUPPORTED: the table goes Errored).
 *   event_kind      insert | update | delete | truncate
 *   data            the new row as a JSON object (common/json.c's value mapping); for a
 *                   delete the old key (identity DEFAULT) or old row (FULL). An unchanged
 *                   TOAST value is left out and listed in metadata.unchanged_toast.
 *   metadata        {commit_lsn, xid, commit_ts, seq, sub, relid, phase} (+
 *                   unchanged_toast, moved_to / moved_from); seq = ordinal - 1 of the
 *                   change in its transaction, sub = index within the change
 *   src             (commit LSN, seq, sub): the UNIQUE backstop against a replay
 *   key change      a delete in the old stream (moved_to) and an insert in the new one
 *                   (moved_from), same transaction, sub 0 and 1
 *   TRUNCATE        one truncate event per table, aggregate_id "[]", data {cascade,
 *                   restart_identity}
 *   copy            reset_table starts a staged copy (store.h COPIES); write_rows stages
 *                   `insert` events with metadata.phase "copy"; the next registration of
 *                   the table (ensure_table: the sync worker's catch-up, or the apply
 *                   worker's first change) publishes it at the end of the log, before any
 *                   streamed change of the table. Copy events have no src.
 *
 * Transaction boundaries (BEGIN / COMMIT events) are not stored: events of a source
 * transaction are contiguous when it fits one destination transaction ([batch]
 * max_bytes), the log's order is the commit order, and commit_lsn groups them.
 *
 * FAILPOINT eventstore.mid_batch: in commit(), after the batch's events were written into
 * the store's open transaction and before its progress row and COMMIT (tests: a failure
 * mid-batch leaves nothing of the batch and no progress).
 */
#include "eventstore.h"

#include "../../common/failpoint.h"
#include "../../common/json.h"
#include "../../common/log.h"
#include "../../common/repl.h"
#include "../registry.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DES_BUCKETS 64

typedef struct des_table_s {
    struct des_table_s *next;
    uint32_t relid;
    wr_schema_t *schema; /* own copy of the registered schema */
    char kind[600];      /* aggregate kind: "nsp.name" */
    uint16_t *keys;      /* schema column indexes of the primary key, in key order */
    int nkeys;
    bool claimed;      /* the kind is claimed (in a committed or the open transaction) */
    bool claim_in_txn; /* ... by the open transaction */
    wr_lsn_t copy_lsn; /* the copy's consistent point (reset_table) */
    int64_t copy_seq;  /* rows staged by this process in the current copy */
} des_table_t;

typedef struct dest_es_s {
    dest_t base;
    wr_es_store_t *st;
    char role[8];
    char pipeline[64];
    char apply_slot[80];
    char owner[600];
    char *source_conninfo;
    PGconn *src; /* the source, for pg_index */
    bool in_txn;
    des_table_t *buckets[DES_BUCKETS];
    jw_buf_t data, meta, id, id2;
} dest_es_t;

/* ---- errors -------------------------------------------------------------------------- */

int
dest_es_err(const wr_es_error_t *e, int code, wr_err_t *err)
{
    wr_err_set(err, code, "%s", e->message);
    if (e->hint[0])
        wr_err_hint(err, "%s", e->hint);
    return code;
}

/* A store error as the workers understand it: the store failed (retry) or refused. */
static int
des_store_fail(const wr_es_error_t *e, wr_err_t *err)
{
    switch (e->code) {
    case WR_ES_ENOMEM:
        return dest_es_err(e, WR_ENOMEM, err);
    case WR_ES_EINVAL:
        return dest_es_err(e, WR_EINVAL, err);
    default:
        return dest_es_err(e, WR_EDEST, err);
    }
}

/* ---- opening ------------------------------------------------------------------------ */

int
dest_es_path(const wr_config_t *cfg, char **out, wr_err_t *err)
{
    const char *dir = cfg->dir ? cfg->dir : ".";
    size_t n;

    if (cfg_dest_item(cfg, "path") != NULL)
        return dest_config_path(cfg, "path", out, err);
    n = strlen(dir) + strlen(DEST_ES_DEFAULT_PATH) + 2;
    if ((*out = malloc(n)) == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    snprintf(*out, n, "%s/%s", dir, DEST_ES_DEFAULT_PATH);
    return 0;
}

void
dest_es_owner(const wr_config_t *cfg, char *buf, size_t len)
{
    char host[256];

    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    snprintf(buf, len, "%s:%s", host, cfg->dir ? cfg->dir : "?");
}

int
dest_es_store_open(const wr_config_t *cfg, int flags, wr_es_store_t **out, int *es_code,
                   wr_err_t *err)
{
    const char *store = dest_config_value(cfg, "store");
    wr_es_error_t e;
    int rc;

    *out = NULL;
    if (es_code)
        *es_code = 0;
    memset(&e, 0, sizeof(e));
    if (store == NULL || strcmp(store, "sqlite") == 0) {
        char *path = NULL;

        if ((rc = dest_es_path(cfg, &path, err)) < 0)
            return rc;
        rc = es_open_sqlite(path, flags, out, &e);
        free(path);
    } else if (strcmp(store, "postgres") == 0) {
        const char *ci = dest_config_value(cfg, "conninfo");

        if (ci == NULL || ci[0] == '\0') {
            dest_config_error(cfg, "conninfo", WR_ECONFIG, err,
                              "store = postgres needs a connection string");
            wr_err_hint(err, "set conninfo = 'host=... dbname=...' below [destination]");
            return WR_ECONFIG;
        }
        rc = es_open_pg(ci, flags, out, &e);
    } else {
        dest_config_error(cfg, "store", WR_ECONFIG, err, "invalid value \"%s\"", store);
        wr_err_hint(err, "store = sqlite (a file, key path) or store = postgres (key conninfo)");
        return WR_ECONFIG;
    }
    if (rc < 0) {
        if (es_code)
            *es_code = rc;
        return des_store_fail(&e, err);
    }
    return 0;
}

/* ---- tables ------------------------------------------------------------------------- */

static des_table_t *
des_table(dest_es_t *d, uint32_t relid)
{
    for (des_table_t *t = d->buckets[relid % DES_BUCKETS]; t; t = t->next)
        if (t->relid == relid)
            return t;
    return NULL;
}

static void
des_table_free(des_table_t *t)
{
    wr_schema_free(t->schema);
    free(t->keys);
    free(t);
}

/* The source's primary key of relid, column names in key order (*names: one malloc'd
 * block of NUL-separated names). *exists=false if the relation is gone. */
static int
des_source_pk(dest_es_t *d, uint32_t relid, char **names, int *n, bool *exists, wr_err_t *err)
{
    char sql[512], app[96];
    PGresult *res;
    size_t total = 0;
    int rc;

    *names = NULL;
    *n = 0;
    *exists = false;
    if (d->src == NULL || PQstatus(d->src) != CONNECTION_OK) {
        if (d->src)
            PQfinish(d->src);
        d->src = NULL;
        snprintf(app, sizeof(app), "walrelay_%s_eventstore", d->pipeline);
        if ((rc = repl_connect(d->source_conninfo, false, app, &d->src, err)) < 0) {
            wr_err_prefix(err, "reading the primary key of relation %u: ", (unsigned)relid);
            return rc;
        }
    }
    snprintf(sql, sizeof(sql),
             "SELECT a.attname, (SELECT count(*) FROM pg_class WHERE oid = %u) "
             "FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY "
             "AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = "
             "k.attnum WHERE i.indrelid = %u AND i.indisprimary ORDER BY k.n",
             (unsigned)relid, (unsigned)relid);
    res = PQexec(d->src, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        wr_err_set(err, WR_ECONN, "reading the primary key of relation %u on the source: %s",
                   (unsigned)relid, PQerrorMessage(d->src));
        PQclear(res);
        return WR_ECONN;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        snprintf(sql, sizeof(sql), "SELECT 1 FROM pg_class WHERE oid = %u", (unsigned)relid);
        res = PQexec(d->src, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            wr_err_set(err, WR_ECONN, "reading relation %u on the source: %s", (unsigned)relid,
                       PQerrorMessage(d->src));
            PQclear(res);
            return WR_ECONN;
        }
        *exists = PQntuples(res) > 0;
        PQclear(res);
        return 0;
    }
    *exists = true;
    for (int i = 0; i < PQntuples(res); i++)
        total += strlen(PQgetvalue(res, i, 0)) + 1;
    if ((*names = malloc(total)) == NULL) {
        PQclear(res);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    total = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        size_t l = strlen(PQgetvalue(res, i, 0)) + 1;
        memcpy(*names + total, PQgetvalue(res, i, 0), l);
        total += l;
    }
    *n = PQntuples(res);
    PQclear(res);
    return 0;
}

/* Registers (or registers again) the table with schema: aggregate kind, key columns. */
static int
des_register(dest_es_t *d, const wr_schema_t *schema, des_table_t **out, wr_err_t *err)
{
    des_table_t *t = des_table(d, schema->relid);
    char *names = NULL;
    int npk = 0, rc;
    bool exists;
    uint16_t *keys = NULL;
    int nkeys = 0;
    wr_schema_t *copy;

    *out = NULL;
    if ((rc = des_source_pk(d, schema->relid, &names, &npk, &exists, err)) < 0)
        return rc;
    if (npk == 0 && exists) {
        wr_err_set(err, WR_EUNSUPPORTED,
                   "table \"%s.%s\" has no primary key: the event store keys each stream "
                   "(aggregate_id) by it",
                   schema->nsp, schema->name);
        wr_err_hint(err, "add a primary key to the table, then walrelay resync DIR %s.%s",
                    schema->nsp, schema->name);
        return WR_EUNSUPPORTED;
    }
    if ((keys = calloc(schema->ncols ? schema->ncols : 1, sizeof(*keys))) == NULL) {
        free(names);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    if (npk > 0) {
        const char *nm = names;

        for (int k = 0; k < npk; k++, nm += strlen(nm) + 1) {
            int found = -1;

            for (uint16_t c = 0; c < schema->ncols; c++)
                if (strcmp(schema->cols[c].name, nm) == 0)
                    found = c;
            if (found < 0) {
                wr_err_set(err, WR_EUNSUPPORTED,
                           "the primary key column \"%s\" of \"%s.%s\" is not replicated", nm,
                           schema->nsp, schema->name);
                wr_err_hint(err, "publish every column of the primary key");
                free(names);
                free(keys);
                return WR_EUNSUPPORTED;
            }
            keys[nkeys++] = (uint16_t)found;
        }
    } else {
        /* the relation is gone on the source (a replayed change of a dropped table): key
         * by what the Relation message marks */
        for (uint16_t c = 0; c < schema->ncols; c++)
            if (schema->cols[c].is_key)
                keys[nkeys++] = c;
        if (nkeys == 0) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "table \"%s.%s\" (relid %u) no longer exists on the source and its "
                       "changes carry no key",
                       schema->nsp, schema->name, (unsigned)schema->relid);
            wr_err_hint(err, "the event store keys each stream by the primary key");
            free(keys);
            return WR_EUNSUPPORTED;
        }
    }
    free(names);
    if ((copy = wr_schema_copy(schema)) == NULL) {
        free(keys);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    if (t == NULL) {
        if ((t = calloc(1, sizeof(*t))) == NULL) {
            free(keys);
            wr_schema_free(copy);
            return wr_err_set(err, WR_ENOMEM, "out of memory");
        }
        t->relid = schema->relid;
        t->next = d->buckets[t->relid % DES_BUCKETS];
        d->buckets[t->relid % DES_BUCKETS] = t;
    }
    wr_schema_free(t->schema);
    free(t->keys);
    t->schema = copy;
    t->keys = keys;
    t->nkeys = nkeys;
    snprintf(t->kind, sizeof(t->kind), "%s.%s", schema->nsp, schema->name);
    *out = t;
    return 0;
}

/* Claims the table's aggregate kind for this pipeline (once per process). */
static int
des_claim(dest_es_t *d, des_table_t *t, wr_err_t *err)
{
    wr_es_error_t e;
    int rc;

    if (t->claimed)
        return 0;
    rc = es_kind_claim(d->st, t->kind, d->apply_slot, t->relid, &e);
    if (rc == WR_ES_CONFLICT)
        return dest_es_err(&e, WR_EUNSUPPORTED, err);
    if (rc < 0)
        return des_store_fail(&e, err);
    t->claimed = true;
    t->claim_in_txn = es_tx_open(d->st);
    return 0;
}

static int
des_ensure_table(dest_t *base, const wr_schema_t *schema, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    des_table_t *t;
    wr_es_error_t e;
    int64_t published = 0;
    int rc;

    if ((rc = des_register(d, schema, &t, err)) < 0 || (rc = des_claim(d, t, err)) < 0)
        return rc;
    /* a complete staged copy of the table goes into the log before any of its changes */
    if ((rc = es_copy_publish(d->st, d->apply_slot, t->relid, &published, &e)) < 0)
        return des_store_fail(&e, err);
    if (published > 0)
        log_info("eventstore copy published table=%s rows=%" PRId64 " last_position=%" PRId64,
                 t->kind, published, es_tx_last_position(d->st));
    return 0;
}

static int
des_reset_table(dest_t *base, const wr_schema_t *schema, const dest_tmeta_t *meta, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    des_table_t *t;
    wr_es_error_t e;
    int rc;

    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "reset_table outside a transaction");
    if ((rc = des_register(d, schema, &t, err)) < 0 || (rc = des_claim(d, t, err)) < 0)
        return rc;
    t->copy_lsn = meta ? meta->version.commit_lsn : 0;
    t->copy_seq = 0;
    if ((rc = es_copy_reset(d->st, d->apply_slot, t->relid, t->kind, (int64_t)t->copy_lsn, &e)) < 0)
        return des_store_fail(&e, err);
    return 0;
}

static int
des_truncate_table(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    des_table_t *t = des_table(d, relid);
    wr_es_error_t e;
    int rc;

    /* a re-copy without reset_table: a new staged copy (events are never deleted) */
    if (t == NULL)
        return wr_err_set(err, WR_EINVAL, "truncate of relid %u before its registration",
                          (unsigned)relid);
    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "truncate_table outside a transaction");
    t->copy_seq = 0;
    if ((rc = es_copy_reset(d->st, d->apply_slot, relid, t->kind, (int64_t)t->copy_lsn, &e)) < 0)
        return des_store_fail(&e, err);
    return 0;
}

/* ---- JSON of rows ------------------------------------------------------------------ */

/* A value of column c as JSON (kind 'b': the bytes as a string). */
static void
des_value(jw_buf_t *b, const wr_column_t *c, const wr_val_t *v)
{
    if (v->kind == WR_VAL_BINARY)
        jw_str(b, v->data, v->len);
    else
        jw_value(b, c->type_oid, v->kind, v->data, v->len);
}

/* The aggregate id of a row: ["v1","v2"]. 0, or WR_EUNSUPPORTED when a key value is
 * missing (NULL, unchanged, or a column the row does not carry). alt: another row to take
 * an unchanged key value from (the old key of an update), or NULL. */
static int
des_agg_id(const des_table_t *t, const wr_row_t *row, const wr_row_t *alt, jw_buf_t *b,
           wr_err_t *err)
{
    jw_reset(b);
    jw_lit(b, "[");
    for (int k = 0; k < t->nkeys; k++) {
        uint16_t c = t->keys[k];
        const wr_val_t *v = c < row->ncols ? &row->vals[c] : NULL;

        if ((v == NULL || v->kind == WR_VAL_UNCHANGED) && alt && c < alt->ncols)
            v = &alt->vals[c];
        if (v == NULL || (v->kind != WR_VAL_TEXT && v->kind != WR_VAL_BINARY)) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "a change of \"%s\" does not carry its primary key column \"%s\"", t->kind,
                       t->schema->cols[c].name);
            wr_err_hint(err, "use REPLICA IDENTITY DEFAULT or FULL (or an identity index that "
                             "holds the primary key), then walrelay resync the table");
            return WR_EUNSUPPORTED;
        }
        if (k)
            jw_lit(b, ",");
        jw_str(b, v->data, v->len);
    }
    jw_lit(b, "]");
    return jw_failed(b) ? WR_ENOMEM : 0;
}

/* True if a row carries the primary key (no NULL / unchanged key value). */
static bool
des_row_has_key(const des_table_t *t, const wr_row_t *row)
{
    for (int k = 0; k < t->nkeys; k++) {
        uint16_t c = t->keys[k];

        if (c >= row->ncols ||
            (row->vals[c].kind != WR_VAL_TEXT && row->vals[c].kind != WR_VAL_BINARY))
            return false;
    }
    return true;
}

/* The row as a JSON object into d->data; only_keys: the identity columns (an old key,
 * 'K'). Unchanged TOAST values are left out and listed (JSON array) into toast. */
static void
des_row_json(const des_table_t *t, const wr_row_t *row, bool only_keys, jw_buf_t *b,
             jw_buf_t *toast)
{
    bool first = true;

    jw_reset(b);
    jw_lit(b, "{");
    for (uint16_t c = 0; c < row->ncols && c < t->schema->ncols; c++) {
        const wr_column_t *col = &t->schema->cols[c];
        const wr_val_t *v = &row->vals[c];

        if (only_keys && !col->is_key)
            continue;
        if (v->kind == WR_VAL_UNCHANGED) {
            if (toast) {
                jw_lit(toast, toast->len ? "," : "[");
                jw_cstr(toast, col->name);
            }
            continue;
        }
        if (!first)
            jw_lit(b, ",");
        first = false;
        jw_cstr(b, col->name);
        jw_lit(b, ":");
        des_value(b, col, v);
    }
    jw_lit(b, "}");
    if (toast && toast->len)
        jw_lit(toast, "]");
}

/* metadata of a streamed change; extra: more members ("\"moved_to\":...") or NULL */
static void
des_meta(dest_es_t *d, const dest_event_t *ev, int sub, const jw_buf_t *toast,
         const char *extra_key, const char *extra_val)
{
    jw_buf_t *m = &d->meta;

    jw_reset(m);
    jw_lit(m, "{\"commit_lsn\":");
    jw_lsn(m, ev->key.commit_lsn);
    jw_lit(m, ",\"xid\":");
    jw_u64(m, ev->xid);
    jw_lit(m, ",\"commit_ts\":");
    jw_time(m, ev->commit_ts);
    jw_lit(m, ",\"seq\":");
    jw_u64(m, ev->key.ordinal > 0 ? ev->key.ordinal - 1 : 0);
    jw_lit(m, ",\"sub\":");
    jw_i64(m, sub);
    jw_lit(m, ",\"relid\":");
    jw_u64(m, ev->relid);
    jw_lit(m, ",\"phase\":\"stream\"");
    if (toast && toast->len) {
        jw_lit(m, ",\"unchanged_toast\":");
        jw_raw(m, toast->data, toast->len);
    }
    if (extra_key) {
        jw_lit(m, ",");
        jw_cstr(m, extra_key);
        jw_lit(m, ":");
        jw_cstr(m, extra_val);
    }
    jw_lit(m, "}");
}

static int
des_add(dest_es_t *d, const des_table_t *t, const char *agg_id, const char *kind,
        const dest_event_t *ev, int sub, wr_err_t *err)
{
    es_src_t src;
    wr_es_error_t e;

    if (jw_failed(&d->data) || jw_failed(&d->meta))
        return wr_err_set(err, WR_ENOMEM, "out of memory building an event");
    src.set = true;
    src.lsn = (int64_t)ev->key.commit_lsn;
    src.seq = (int32_t)(ev->key.ordinal > 0 ? ev->key.ordinal - 1 : 0);
    src.sub = (int16_t)sub;
    if (es_tx_add(d->st, t->kind, agg_id, kind, d->data.data, d->data.len, d->meta.data,
                  d->meta.len, &src, &e) < 0)
        return des_store_fail(&e, err);
    return 0;
}

/* ---- dest_ops_t ------------------------------------------------------------------- */

static int
des_begin(dest_t *base, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    wr_es_error_t e;

    if (d->in_txn)
        return wr_err_set(err, WR_EINVAL, "begin inside an open transaction");
    if (es_tx_begin(d->st, &e) < 0)
        return des_store_fail(&e, err);
    d->in_txn = true;
    return 0;
}

static int
des_write_rows(dest_t *base, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    des_table_t *t = des_table(d, relid);
    jw_buf_t toast;
    wr_es_error_t e;
    int rc = 0;

    if (t == NULL)
        return wr_err_set(err, WR_EINVAL, "copied rows of relid %u before its registration",
                          (unsigned)relid);
    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "write_rows outside a transaction");
    jw_init(&toast);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if ((rc = des_agg_id(t, &rows[i], NULL, &d->id, err)) < 0)
            break;
        des_row_json(t, &rows[i], false, &d->data, NULL);
        jw_reset(&d->meta);
        jw_lit(&d->meta, "{\"commit_lsn\":");
        jw_lsn(&d->meta, t->copy_lsn);
        jw_lit(&d->meta, ",\"xid\":null,\"commit_ts\":null,\"seq\":");
        jw_i64(&d->meta, t->copy_seq);
        jw_lit(&d->meta, ",\"sub\":0,\"relid\":");
        jw_u64(&d->meta, relid);
        jw_lit(&d->meta, ",\"phase\":\"copy\"}");
        if (jw_failed(&d->data) || jw_failed(&d->meta)) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory building a copied event");
            break;
        }
        if (es_copy_add(d->st, d->apply_slot, relid, d->id.data, d->data.data, d->data.len,
                        d->meta.data, d->meta.len, &e) < 0) {
            rc = des_store_fail(&e, err);
            break;
        }
        t->copy_seq++;
    }
    jw_free(&toast);
    return rc;
}

static int
des_write_event(dest_t *base, const dest_event_t *ev, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    des_table_t *t;
    jw_buf_t toast;
    int rc = 0;

    if (ev->kind == DEST_EV_BEGIN || ev->kind == DEST_EV_COMMIT)
        return 0;
    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "write_event outside a transaction");
    if ((t = des_table(d, ev->relid)) == NULL)
        return wr_err_set(err, WR_EPROTO, "change of relid %u before its registration",
                          (unsigned)ev->relid);
    jw_init(&toast);
    switch (ev->kind) {
    case DEST_EV_INSERT:
        if ((rc = des_agg_id(t, ev->new_row, NULL, &d->id, err)) < 0)
            break;
        des_row_json(t, ev->new_row, false, &d->data, &toast);
        des_meta(d, ev, 0, &toast, NULL, NULL);
        rc = des_add(d, t, d->id.data, "insert", ev, 0, err);
        break;
    case DEST_EV_UPDATE: {
        const wr_row_t *old = ev->old_row;
        bool moved = false;

        if ((rc = des_agg_id(t, ev->new_row, old, &d->id, err)) < 0)
            break;
        if (old != NULL && des_row_has_key(t, old)) {
            if ((rc = des_agg_id(t, old, NULL, &d->id2, err)) < 0)
                break;
            moved = strcmp(d->id.data, d->id2.data) != 0;
        }
        if (!moved) {
            des_row_json(t, ev->new_row, false, &d->data, &toast);
            des_meta(d, ev, 0, &toast, NULL, NULL);
            rc = des_add(d, t, d->id.data, "update", ev, 0, err);
            break;
        }
        /* a key change: the row leaves its stream and enters another */
        des_row_json(t, old, ev->old_kind == 'K', &d->data, NULL);
        des_meta(d, ev, 0, NULL, "moved_to", d->id.data);
        if ((rc = des_add(d, t, d->id2.data, "delete", ev, 0, err)) < 0)
            break;
        des_row_json(t, ev->new_row, false, &d->data, &toast);
        des_meta(d, ev, 1, &toast, "moved_from", d->id2.data);
        rc = des_add(d, t, d->id.data, "insert", ev, 1, err);
        break;
    }
    case DEST_EV_DELETE:
        if (ev->old_row == NULL) {
            rc =
                wr_err_set(err, WR_EUNSUPPORTED, "a delete of \"%s\" without its old key", t->kind);
            break;
        }
        if ((rc = des_agg_id(t, ev->old_row, NULL, &d->id, err)) < 0)
            break;
        des_row_json(t, ev->old_row, ev->old_kind == 'K', &d->data, NULL);
        des_meta(d, ev, 0, NULL, NULL, NULL);
        rc = des_add(d, t, d->id.data, "delete", ev, 0, err);
        break;
    case DEST_EV_TRUNCATE:
        jw_reset(&d->data);
        jw_lit(&d->data, (ev->truncate_flags & 1) ? "{\"cascade\":true" : "{\"cascade\":false");
        jw_lit(&d->data, (ev->truncate_flags & 2) ? ",\"restart_identity\":true}"
                                                  : ",\"restart_identity\":false}");
        des_meta(d, ev, 0, NULL, NULL, NULL);
        rc = des_add(d, t, "[]", "truncate", ev, 0, err);
        break;
    default:
        rc = wr_err_set(err, WR_EPROTO, "unknown event kind %d", (int)ev->kind);
        break;
    }
    jw_free(&toast);
    return rc;
}

/* The slot whose progress a stream is: "apply" -> walrelay_<p>, "sync_<r>" -> its slot. */
static void
des_slot(dest_es_t *d, const char *stream, char *buf, size_t len)
{
    if (strncmp(stream, "sync_", 5) == 0)
        snprintf(buf, len, "%s_s%s", d->apply_slot, stream + 5);
    else if (strcmp(stream, "apply") == 0)
        snprintf(buf, len, "%s", d->apply_slot);
    else
        snprintf(buf, len, "%s_%s", d->apply_slot, stream);
}

static void
des_txn_over(dest_es_t *d, bool rolled_back)
{
    d->in_txn = false;
    for (int b = 0; b < DES_BUCKETS; b++)
        for (des_table_t *t = d->buckets[b]; t; t = t->next) {
            if (rolled_back && t->claim_in_txn)
                t->claimed = false;
            t->claim_in_txn = false;
        }
}

static int
des_commit(dest_t *base, const char *stream, const dest_key_t *key, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    char slot[128];
    wr_es_error_t e;
    int rc;

    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "commit outside a transaction");
    if ((rc = es_tx_flush(d->st, &e)) < 0) {
        es_tx_rollback(d->st);
        des_txn_over(d, true);
        return des_store_fail(&e, err);
    }
    FAILPOINT("eventstore.mid_batch");
    des_slot(d, stream, slot, sizeof(slot));
    rc = key ? es_tx_commit(d->st, slot, (int64_t)key->commit_lsn,
                            key->ordinal > 0 ? (int32_t)(key->ordinal - 1) : -1, &e)
             : es_tx_commit(d->st, NULL, 0, 0, &e);
    des_txn_over(d, rc < 0);
    return rc < 0 ? des_store_fail(&e, err) : 0;
}

static int
des_rollback(dest_t *base, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;

    WR_UNUSED(err);
    es_tx_rollback(d->st);
    des_txn_over(d, true);
    return 0;
}

static int
des_last_key(dest_t *base, const char *stream, dest_key_t *out, bool *found, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    char slot[128];
    wr_es_error_t e;
    int64_t lsn = 0;
    int32_t seq = 0;

    des_slot(d, stream, slot, sizeof(slot));
    if (es_progress_get(d->st, slot, found, &lsn, &seq, &e) < 0)
        return des_store_fail(&e, err);
    out->commit_lsn = *found ? (wr_lsn_t)lsn : 0;
    out->ordinal = *found ? (uint32_t)(seq + 1) : 0;
    return 0;
}

static int
des_clear_key(dest_t *base, const char *stream, wr_err_t *err)
{
    dest_es_t *d = (dest_es_t *)base;
    char slot[128];
    wr_es_error_t e;

    des_slot(d, stream, slot, sizeof(slot));
    if (es_progress_clear(d->st, slot, &e) < 0)
        return des_store_fail(&e, err);
    return 0;
}

static int64_t
des_count_rows(dest_t *base, uint32_t relid)
{
    WR_UNUSED(base);
    WR_UNUSED(relid);
    return -1;
}

static void
des_close(dest_t *base)
{
    dest_es_t *d = (dest_es_t *)base;

    if (d == NULL)
        return;
    if (d->in_txn)
        es_tx_rollback(d->st);
    wr_es_close(d->st);
    if (d->src)
        PQfinish(d->src);
    for (int b = 0; b < DES_BUCKETS; b++) {
        des_table_t *t = d->buckets[b], *next;

        for (; t; t = next) {
            next = t->next;
            des_table_free(t);
        }
    }
    jw_free(&d->data);
    jw_free(&d->meta);
    jw_free(&d->id);
    jw_free(&d->id2);
    free(d->source_conninfo);
    free(d);
}

/* es_set_busy: the store's flush lets the worker read ahead */
static void
des_busy(void *arg)
{
    (void)arg;
    dest_readahead_poll();
}

int
dest_es_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    dest_es_t *d;
    wr_es_error_t e;
    int rc;

    *out = NULL;
    if ((d = calloc(1, sizeof(*d))) == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the event store");
    d->base.ops = &dest_eventstore_ops;
    snprintf(d->role, sizeof(d->role), "%s", role ? role : "apply");
    snprintf(d->pipeline, sizeof(d->pipeline), "%s", cfg->pipeline_name ? cfg->pipeline_name : "");
    cfg_apply_slot_name(cfg, d->apply_slot, sizeof(d->apply_slot));
    dest_es_owner(cfg, d->owner, sizeof(d->owner));
    jw_init(&d->data);
    jw_init(&d->meta);
    jw_init(&d->id);
    jw_init(&d->id2);
    if (cfg->source_conninfo && (d->source_conninfo = wr_strdup(cfg->source_conninfo)) == NULL) {
        des_close(&d->base);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the event store");
    }
    /* No allocation statistics (a global mutex taken for every malloc of SQLite's): as in
     * the sqlite destination, possible only before SQLite is initialised in this process,
     * which is the case in the workers; elsewhere it is refused and harmless. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if ((rc = dest_es_store_open(cfg, WR_ES_OPEN_CREATE, &d->st, NULL, err)) < 0) {
        des_close(&d->base);
        return rc;
    }
    /* a full buffer keeps the SQLite writer busy for tens of milliseconds: the worker
     * reads its stream ahead meanwhile (destination.h dest_readahead_poll) */
    es_set_busy(d->st, des_busy, NULL);
    /* the apply worker is the store's writer: its checkpoints go to a thread */
    if (strcmp(d->role, "apply") == 0 && (rc = es_ckpt_start(d->st, &e)) < 0)
        log_warn("%s; the writer checkpoints the store itself", e.message);
    /* one pipeline per slot name and store */
    rc = es_pipeline_register(d->st, d->apply_slot, d->owner, strcmp(d->role, "check") == 0, &e);
    if (rc == WR_ES_CONFLICT) {
        des_close(&d->base);
        return dest_es_err(&e, WR_ECONFIG, err);
    }
    if (rc < 0) {
        des_close(&d->base);
        return des_store_fail(&e, err);
    }
    *out = &d->base;
    return 0;
}

static int
des_open_plain(const wr_config_t *cfg, dest_t **out, wr_err_t *err)
{
    return dest_es_open(cfg, "apply", out, err);
}

const dest_ops_t dest_eventstore_ops = {
    .name = "eventstore",
    .open = des_open_plain,
    .ensure_table = des_ensure_table,
    .begin = des_begin,
    .truncate_table = des_truncate_table,
    .write_rows = des_write_rows,
    .write_event = des_write_event,
    .commit = des_commit,
    .rollback = des_rollback,
    .last_key = des_last_key,
    .clear_key = des_clear_key,
    .count_rows = des_count_rows,
    .close = des_close,
    .reset_table = des_reset_table,
};
