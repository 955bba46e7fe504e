/*
 * sqlite.c - the "sqlite" destination: one SQLite file (DIR/dest.db by default) holding a
 * table per source table plus walrelay's own bookkeeping, written exactly once.
 *
 * NOTES: runs in walrelay-apply and in every walrelay-sync; each process opens its own
 * connection to the same file (WAL mode, busy_timeout 60 s, synchronous=FULL so that a
 * COMMIT is durable before the caller confirms the flush LSN to PostgreSQL; NORMAL while a
 * copy runs, see "the copy", and in the apply worker, whose commits become durable when
 * it asks, see sq_durable; a 16 MiB page cache; SQLITE_OPEN_NOMUTEX and no allocation
 * statistics: a handle is used by one thread at a time). It owns and persists:
 *   - _walrelay_progress(stream, commit_lsn, ordinal, updated_at): the resume key of the
 *     last change applied per stream, upserted in the same transaction as the data;
 *     commit_lsn holds the int64 bit pattern of the uint64 LSN.
 *   - _walrelay_tables(relid, nsp, name, dest_name, columns_json, updated_at): which
 *     destination table a source relid maps to, and the schema it was registered with.
 *   - one table per registered source table, named by dest_schema_table_name() (the
 *     pipeline's unique name), columns in the source's order, declared types from
 *     sqt_decl(), PRIMARY KEY(key columns of the schema that created it: the source's
 *     primary key, see sq_in_primary_key).
 *   - (issue 11) during a copy, _walrelay_copy_<relid>: the copied rows of a table whose key
 *     is an index of its own, moved in key order by copy_done (see "the copy");
 *     _walrelay_copy_ranges(relid, lsn, part, rows): the ranges of a table's last parallel
 *     copy committed so far (commit_range), kept until its next copy begins.
 * In memory it keeps relid -> table (schema, per-column storage class, the columns
 * UPDATE/DELETE match on (sq_table_identity: the replica identity's key, or under FULL the
 * table's PRIMARY KEY, or every column NULL-safely for one row of a keyless table), cached
 * INSERT, DELETE-by-key, UPDATE-all-by-key and a few UPDATE statements that leave
 * unchanged TOAST columns out of SET). The per-row path allocates nothing: statements are reused,
 * text binds point at the producer's buffer, bytea is decoded into one scratch buffer. Copied
 * rows (write_rows) go in multi-row INSERTs of up to 64 rows (sq_insert_multi), which share
 * the cost of a statement's execution; a failing one is redone row by row to name the row.
 * With [destination] mode = history (issue 9) each table instead appends every change as a
 * row with _change_type, _commit_lsn, _seq, _commit_time, _old_key (see "history mode" at
 * the end of this file); _walrelay_meta records the mode the file was made with.
 */
#include "sqlite.h"

#include "../../common/json.h"
#include "../../common/pgtype.h"
#include "../registry.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SQ_BUCKETS       256
#define SQ_PARTIAL_SLOTS 4
#define SQ_NAME_MAX      256
#define SQ_SHOW_MAX      64

/* A cached UPDATE that leaves the columns with skip[i] = 1 out of SET. */
typedef struct sq_partial_s {
    uint8_t *skip; /* ncols entries, owned by the table */
    sqlite3_stmt *stmt;
} sq_partial_t;

typedef struct sq_table_s {
    struct sq_table_s *next; /* hash chain */
    uint32_t relid;
    wr_schema_t *schema; /* own copy */
    char dest_name[SQ_NAME_MAX];
    uint8_t *cls;     /* sqt_class_t per column */
    uint8_t *is_bool; /* 1 if the column is bool (INTEGER 0/1) */
    uint16_t *keys;   /* indexes of the columns UPDATE/DELETE match on, in schema order */
    int nkeys;
    bool by_row;         /* keyless REPLICA IDENTITY FULL: match one row by every old value */
    char rowid[8];       /* by_row: the name of the rowid ("rowid", "_rowid_" or "oid") */
    sqlite3_stmt *ins;   /* INSERT, params ?1..?ncols (into the staging table while staged) */
    sqlite3_stmt *multi; /* INSERT of multi_rows rows at once (write_rows); first use */
    int multi_rows;
    sqlite3_stmt *upd;   /* UPDATE SET all = ?i WHERE key = ?(ncols+1+j) */
    sqlite3_stmt *del;   /* DELETE WHERE key = ?(ncols+1+j) */
    sqlite3_stmt *trunc; /* DELETE FROM */
    sq_partial_t partial[SQ_PARTIAL_SLOTS];
    int partial_next;
    bool created_in_txn; /* CREATE TABLE ran inside the caller's open transaction */
    /* (issue 11) the copy: from reset_table to copy_done. staged: the rows go to
     * stage_name (no key) and copy_done moves them in key order (see sq_copy_done) */
    bool copying;
    bool staged;
    char stage_name[40];
    /* history mode (issue 9): ins appends a row with the four _ columns; trunc deletes
     * the copy's rows; hprev finds a key's latest row */
    sqlite3_stmt *hprev;
    wr_lsn_t copy_lsn; /* the copy's consistent point (reset_table), 0 if unknown */
    int64_t copy_seq;  /* copied rows so far in this copy */
} sq_table_t;

typedef struct dest_sqlite_s {
    dest_t base;
    sqlite3 *db;
    char *path; /* absolute; owned */
    bool in_txn;
    sq_table_t *buckets[SQ_BUCKETS];
    sq_table_t *last; /* lookup cache */
    sqlite3_stmt *st_begin;
    sqlite3_stmt *st_commit;
    sqlite3_stmt *st_rollback;
    sqlite3_stmt *st_key_put;
    sqlite3_stmt *st_key_get;
    sqlite3_stmt *st_key_del;
    int copying;        /* tables of this handle in a copy: commits are synchronous=NORMAL */
    int sync_level;     /* PRAGMA synchronous now: 1 NORMAL, 2 FULL (set between transactions) */
    bool sync_wal;      /* commit: fsync the WAL after COMMIT (a copy ended in this txn) */
    bool async;         /* the apply worker's: NORMAL commits, durable on request */
    uint64_t ncommits;  /* commits that returned (async) */
    uint64_t durable_n; /* ... of which this many are durable (sq_durable) */
    int max_params;     /* SQLITE_LIMIT_VARIABLE_NUMBER */
    uint8_t *scratch;   /* decoded bytea of the row being bound */
    size_t scratch_cap;
    size_t scratch_off;
    bool history; /* [destination] mode = history: every change appended as a row */
} dest_sqlite_t;

/* History mode (issue 9), defined at the end of the file. */
static int sq_hist_prepare(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err);
static int sq_hist_ensure(dest_sqlite_t *d, const wr_schema_t *s, const char *dest_name,
                          wr_err_t *err);
static int sq_hist_event(dest_sqlite_t *d, sq_table_t *t, const dest_event_t *ev, wr_err_t *err);
static int sq_hist_copy_row(dest_sqlite_t *d, sq_table_t *t, const wr_row_t *row, wr_err_t *err);
static int sq_hist_alter(dest_sqlite_t *d, const wr_schema_t *os, const wr_schema_t *ns,
                         const dest_alter_t *plan, wr_err_t *err);
static int sq_mode_check(dest_sqlite_t *d, const wr_config_t *cfg, wr_err_t *err);

/* ---- small helpers ---------------------------------------------------------------- */

/* Sets err to WR_EDEST with the message followed by SQLite's own error message. */
static int sq_fail(dest_sqlite_t *d, wr_err_t *err, const char *fmt, ...) WR_PRINTF(3, 4);

static int
sq_fail(dest_sqlite_t *d, wr_err_t *err, const char *fmt, ...)
{
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    wr_err_set(err, WR_EDEST, "%s: %s", msg, d->db ? sqlite3_errmsg(d->db) : "no database");
    if (d->db && (sqlite3_extended_errcode(d->db) & 0xff) == SQLITE_FULL)
        wr_err_hint(err,
                    "free disk space on the file system of %s: the worker is restarted and "
                    "resumes where the destination stopped, nothing is lost meanwhile",
                    d->path);
    return WR_EDEST;
}

/* A growable string for building SQL (not on the per-row path). */
typedef struct sq_buf_s {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
} sq_buf_t;

static void
sb_addn(sq_buf_t *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        char *p;

        while (b->len + n + 1 > cap)
            cap *= 2;
        p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
sb_add(sq_buf_t *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

static void sb_addf(sq_buf_t *b, const char *fmt, ...) WR_PRINTF(2, 3);

static void
sb_addf(sq_buf_t *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        b->oom = true;
        return;
    }
    sb_addn(b, tmp, (size_t)n);
}

/* Appends a double-quoted identifier, embedded quotes doubled. */
static void
sb_ident(sq_buf_t *b, const char *name)
{
    const char *s = name;

    sb_addn(b, "\"", 1);
    for (;;) {
        const char *q = strchr(s, '"');

        if (q == NULL) {
            sb_add(b, s);
            break;
        }
        sb_addn(b, s, (size_t)(q - s) + 1);
        sb_addn(b, "\"", 1);
        s = q + 1;
    }
    sb_addn(b, "\"", 1);
}

/* Appends a JSON string literal. */
static void
sb_json_str(sq_buf_t *b, const char *s)
{
    sb_addn(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_addn(b, e, 2);
        } else if (c < 0x20) {
            sb_addf(b, "\\u%04x", c);
        } else {
            sb_addn(b, s, 1);
        }
    }
    sb_addn(b, "\"", 1);
}

/* Writes a printable, truncated copy of a value for an error message. */
static const char *
sq_show(const wr_val_t *v, char *buf, size_t len)
{
    size_t n, i;

    if (v->kind == WR_VAL_NULL)
        return "NULL";
    if (v->kind == WR_VAL_UNCHANGED)
        return "(unchanged toast)";
    if (v->kind == WR_VAL_BINARY) {
        snprintf(buf, len, "(%u binary bytes)", (unsigned)v->len);
        return buf;
    }
    n = v->len < SQ_SHOW_MAX ? v->len : SQ_SHOW_MAX;
    if (n + 4 > len)
        n = len - 4;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v->data[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (n < v->len) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* Formats "(k1, k2)=(v1, v2)" for the key columns taken from row (every column, at
 * most 8, for a keyless table matched by row). */
static void
sq_show_key(const sq_table_t *t, const wr_row_t *row, char *buf, size_t len)
{
    size_t off = 0;
    char vb[SQ_SHOW_MAX + 8];
    int n = t->by_row ? (t->schema->ncols < 8 ? t->schema->ncols : 8) : t->nkeys;
#define SQ_COL(j) (t->by_row ? (j) : t->keys[j])

    buf[0] = '\0';
#define SQ_APPEND(...)                                                                             \
    do {                                                                                           \
        if (off < len) {                                                                           \
            int _n = snprintf(buf + off, len - off, __VA_ARGS__);                                  \
            off += _n > 0 ? (size_t)_n : 0;                                                        \
        }                                                                                          \
    } while (0)
    SQ_APPEND("(");
    for (int j = 0; j < n; j++)
        SQ_APPEND("%s%s", j ? ", " : "", t->schema->cols[SQ_COL(j)].name);
    SQ_APPEND("%s)=(", n < t->schema->ncols && t->by_row ? ", ..." : "");
    for (int j = 0; j < n; j++) {
        const char *s = "?";

        if (row != NULL && SQ_COL(j) < row->ncols)
            s = sq_show(&row->vals[SQ_COL(j)], vb, sizeof(vb));
        SQ_APPEND("%s%s", j ? ", " : "", s);
    }
    SQ_APPEND("%s)", n < t->schema->ncols && t->by_row ? ", ..." : "");
#undef SQ_APPEND
#undef SQ_COL
}

static const char *
sq_class_name(int cls)
{
    switch (cls) {
    case SQT_CLASS_INTEGER:
        return "INTEGER";
    case SQT_CLASS_REAL:
        return "REAL";
    case SQT_CLASS_BLOB:
        return "BLOB";
    default:
        return "TEXT";
    }
}

static int
sq_prepare(dest_sqlite_t *d, const char *sql, sqlite3_stmt **out, wr_err_t *err)
{
    int rc = sqlite3_prepare_v3(d->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);

    if (rc != SQLITE_OK) {
        *out = NULL;
        return sq_fail(d, err, "preparing \"%.200s\"", sql);
    }
    return 0;
}

/* Steps a statement that returns no row, then resets it. */
static int
sq_step_done(dest_sqlite_t *d, sqlite3_stmt *st, const char *what, wr_err_t *err)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        sq_fail(d, err, "%s", what);
        sqlite3_reset(st);
        return WR_EDEST;
    }
    sqlite3_reset(st);
    return 0;
}

static int
sq_exec(dest_sqlite_t *d, const char *sql, wr_err_t *err)
{
    if (sqlite3_exec(d->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail(d, err, "running \"%.200s\"", sql);
    return 0;
}

static int
sq_need_txn(dest_sqlite_t *d, const char *what, wr_err_t *err)
{
    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "%s outside a transaction (call begin first)", what);
    return 0;
}

/* ---- the table map ---------------------------------------------------------------- */

static sq_table_t *
sq_lookup(dest_sqlite_t *d, uint32_t relid)
{
    sq_table_t *t;

    if (d->last != NULL && d->last->relid == relid)
        return d->last;
    for (t = d->buckets[relid % SQ_BUCKETS]; t != NULL; t = t->next) {
        if (t->relid == relid) {
            d->last = t;
            return t;
        }
    }
    return NULL;
}

static int
sq_get_table(dest_sqlite_t *d, uint32_t relid, sq_table_t **out, wr_err_t *err)
{
    *out = sq_lookup(d, relid);
    if (*out == NULL)
        return wr_err_set(err, WR_EINVAL,
                          "table with relid %u is not registered (call ensure_table first)",
                          (unsigned)relid);
    return 0;
}

static void
sq_table_free(sq_table_t *t)
{
    if (t == NULL)
        return;
    sqlite3_finalize(t->ins);
    sqlite3_finalize(t->multi);
    sqlite3_finalize(t->upd);
    sqlite3_finalize(t->del);
    sqlite3_finalize(t->trunc);
    sqlite3_finalize(t->hprev);
    for (int i = 0; i < SQ_PARTIAL_SLOTS; i++) {
        sqlite3_finalize(t->partial[i].stmt);
        free(t->partial[i].skip);
    }
    wr_schema_free(t->schema);
    free(t->cls);
    free(t->is_bool);
    free(t->keys);
    free(t);
}

static void
sq_unlink(dest_sqlite_t *d, sq_table_t *t)
{
    sq_table_t **pp = &d->buckets[t->relid % SQ_BUCKETS];

    while (*pp != NULL && *pp != t)
        pp = &(*pp)->next;
    if (*pp == t)
        *pp = t->next;
    if (d->last == t)
        d->last = NULL;
}

/* Appends "WHERE k1 = ?(n+1) AND ..." (n = ncols), or for a table matched by row
 * "WHERE rowid = (SELECT rowid FROM t WHERE c1 IS ?(n+1) AND ... LIMIT 1)": one row whose
 * every column equals the old row's, NULL-safely, as PostgreSQL touches one of several
 * identical rows. */
static void
sq_where_keys(sq_buf_t *b, const sq_table_t *t)
{
    if (t->by_row) {
        sb_add(b, " WHERE ");
        sb_add(b, t->rowid);
        sb_add(b, " = (SELECT ");
        sb_add(b, t->rowid);
        sb_add(b, " FROM ");
        sb_ident(b, t->dest_name);
        sb_add(b, " WHERE ");
        for (int i = 0; i < t->schema->ncols; i++) {
            if (i)
                sb_add(b, " AND ");
            sb_ident(b, t->schema->cols[i].name);
            sb_addf(b, " IS ?%d", t->schema->ncols + 1 + i);
        }
        sb_add(b, " LIMIT 1)");
        return;
    }
    sb_add(b, " WHERE ");
    for (int j = 0; j < t->nkeys; j++) {
        if (j)
            sb_add(b, " AND ");
        sb_ident(b, t->schema->cols[t->keys[j]].name);
        sb_addf(b, " = ?%d", t->schema->ncols + 1 + j);
    }
}

/* Builds an UPDATE setting every column whose skip flag is 0 (skip may be NULL). */
static int
sq_prepare_update(dest_sqlite_t *d, const sq_table_t *t, const uint8_t *skip, sqlite3_stmt **out,
                  wr_err_t *err)
{
    sq_buf_t b = {0};
    int nset = 0, rc;

    sb_add(&b, "UPDATE ");
    sb_ident(&b, t->dest_name);
    sb_add(&b, " SET ");
    for (int i = 0; i < t->schema->ncols; i++) {
        if (skip != NULL && skip[i])
            continue;
        if (nset++)
            sb_add(&b, ", ");
        sb_ident(&b, t->schema->cols[i].name);
        sb_addf(&b, " = ?%d", i + 1);
    }
    if (nset == 0) {
        /* every column unchanged: still run the UPDATE so a missing row is noticed */
        sb_ident(&b, t->schema->cols[0].name);
        sb_add(&b, " = ");
        sb_ident(&b, t->schema->cols[0].name);
    }
    sq_where_keys(&b, t);
    if (b.oom) {
        free(b.p);
        return wr_err_set(err, WR_ENOMEM, "out of memory building an update of \"%s\"",
                          t->dest_name);
    }
    rc = sq_prepare(d, b.p, out, err);
    free(b.p);
    return rc;
}

/* INSERT INTO the table (its staging table while staged) of nrows rows, parameters
 * ?1..?(nrows * ncols) row after row. */
static int
sq_prepare_insert(dest_sqlite_t *d, const sq_table_t *t, int nrows, sqlite3_stmt **out,
                  wr_err_t *err)
{
    sq_buf_t b = {0};
    const wr_schema_t *s = t->schema;
    int rc;

    sb_add(&b, "INSERT INTO ");
    sb_ident(&b, t->staged ? t->stage_name : t->dest_name);
    sb_add(&b, " (");
    for (int i = 0; i < s->ncols; i++) {
        if (i)
            sb_add(&b, ", ");
        sb_ident(&b, s->cols[i].name);
    }
    sb_add(&b, ") VALUES ");
    for (int r = 0; r < nrows; r++) {
        sb_add(&b, r ? ", (" : "(");
        for (int i = 0; i < s->ncols; i++)
            sb_addf(&b, "%s?%d", i ? ", " : "", r * s->ncols + i + 1);
        sb_add(&b, ")");
    }
    if (b.oom) {
        free(b.p);
        return wr_err_set(err, WR_ENOMEM, "out of memory preparing an insert into \"%s\"",
                          t->dest_name);
    }
    rc = sq_prepare(d, b.p, out, err);
    free(b.p);
    return rc;
}

/* (Re)prepares the inserts after the target changed (staging on or off). History mode
 * copies without staging: its insert (sq_hist_prepare) stays. */
static int
sq_prepare_inserts(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err)
{
    if (d->history)
        return 0;
    sqlite3_finalize(t->ins);
    sqlite3_finalize(t->multi);
    t->ins = NULL;
    t->multi = NULL;
    return sq_prepare_insert(d, t, 1, &t->ins, err);
}

static int
sq_table_prepare(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err)
{
    sq_buf_t b = {0};
    int rc;

    if (d->history)
        return sq_hist_prepare(d, t, err);
    if ((rc = sq_prepare_inserts(d, t, err)) < 0)
        return rc;
    sb_add(&b, "DELETE FROM ");
    sb_ident(&b, t->dest_name);
    if (b.oom)
        goto oom;
    if ((rc = sq_prepare(d, b.p, &t->trunc, err)) < 0)
        goto out;

    if (t->nkeys > 0 || t->by_row) {
        sq_where_keys(&b, t);
        if (b.oom)
            goto oom;
        if ((rc = sq_prepare(d, b.p, &t->del, err)) < 0)
            goto out;
        if ((rc = sq_prepare_update(d, t, NULL, &t->upd, err)) < 0)
            goto out;
    }
    rc = 0;
    goto out;
oom:
    rc = wr_err_set(err, WR_ENOMEM, "out of memory preparing statements for \"%s\"", t->dest_name);
out:
    free(b.p);
    return rc;
}

/* Allocates a table entry for schema (statements not prepared yet). */
static int
sq_table_new(const wr_schema_t *schema, const char *dest_name, sq_table_t **out, wr_err_t *err)
{
    sq_table_t *t = calloc(1, sizeof(*t));
    uint16_t n = schema->ncols;

    *out = NULL;
    if (t == NULL)
        goto oom;
    t->relid = schema->relid;
    snprintf(t->dest_name, sizeof(t->dest_name), "%s", dest_name);
    t->schema = wr_schema_copy(schema);
    t->cls = calloc(n, 1);
    t->is_bool = calloc(n, 1);
    t->keys = calloc(n, sizeof(*t->keys));
    if (t->schema == NULL || t->cls == NULL || t->is_bool == NULL || t->keys == NULL)
        goto oom;
    for (int i = 0; i < SQ_PARTIAL_SLOTS; i++) {
        t->partial[i].skip = calloc(n, 1);
        if (t->partial[i].skip == NULL)
            goto oom;
    }
    for (uint16_t i = 0; i < n; i++) {
        t->cls[i] = (uint8_t)sqt_class(schema->cols[i].type_oid);
        t->is_bool[i] = schema->cols[i].type_oid == PGT_BOOL;
        if (schema->cols[i].is_key)
            t->keys[t->nkeys++] = i;
    }
    *out = t;
    return 0;
oom:
    sq_table_free(t);
    return wr_err_set(err, WR_ENOMEM, "out of memory registering table \"%s\"", dest_name);
}

/* True if column i of s belongs in the PRIMARY KEY of a table created from s: the key
 * columns, except for a REPLICA IDENTITY FULL schema whose every column is flagged (a
 * Relation message's: it says nothing of the source's primary key, so the table gets
 * none and duplicate rows stay possible, as in PostgreSQL). */
static bool
sq_in_primary_key(const wr_schema_t *s, int i)
{
    if (s->replident == 'f' && wr_schema_nkeys(s) == s->ncols)
        return false;
    return s->cols[i].is_key;
}

/*
 * Decides which columns UPDATE and DELETE match on (the keying rule, docs/destinations.md):
 *   - REPLICA IDENTITY DEFAULT / USING INDEX / NOTHING: the schema's key columns, i.e. what
 *     the Relation message flags (the primary key, the identity index, none). Their values
 *     come from the old key ('K') or, when the key did not change, the new row.
 *   - REPLICA IDENTITY FULL: the key flags are all set and mean nothing. Match by the
 *     destination table's PRIMARY KEY (the source's, from the copy) taken from the old row
 *     ('O'); a table without one is matched by row: every old value, NULL-safely, one row.
 * Reads the table's PRIMARY KEY with pragma_table_info; the table must exist.
 */
static int
sq_table_identity(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err)
{
    static const char *const rowid_names[] = {"rowid", "_rowid_", "oid"};
    sqlite3_stmt *st = NULL;
    int rc, r;

    t->by_row = false;
    if (t->schema->replident != 'f' || d->history)
        return 0; /* history: rows are appended, never matched; keys find earlier rows */
    t->nkeys = 0;
    if ((rc = sq_prepare(d, "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk", &st,
                         err)) < 0)
        return rc;
    sqlite3_bind_text(st, 1, t->dest_name, -1, SQLITE_STATIC);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        int i;

        for (i = 0; name != NULL && i < t->schema->ncols; i++) {
            if (sqlite3_stricmp(name, t->schema->cols[i].name) == 0)
                break;
        }
        if (name == NULL || i == t->schema->ncols) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "primary key column \"%s\" of destination table \"%s\" is not a column "
                       "of the source",
                       name ? name : "", t->dest_name);
            wr_err_hint(err, "drop the destination table, then resync the table");
            sqlite3_finalize(st);
            return WR_EUNSUPPORTED;
        }
        t->keys[t->nkeys++] = (uint16_t)i;
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE)
        return sq_fail(d, err, "reading the primary key of table \"%s\"", t->dest_name);
    if (t->nkeys > 0)
        return 0;
    /* keyless: rows are addressed by SQLite's rowid, under a name no column takes */
    for (size_t k = 0; k < sizeof(rowid_names) / sizeof(rowid_names[0]); k++) {
        bool taken = false;

        for (int i = 0; i < t->schema->ncols && !taken; i++)
            taken = sqlite3_stricmp(t->schema->cols[i].name, rowid_names[k]) == 0;
        if (!taken) {
            snprintf(t->rowid, sizeof(t->rowid), "%s", rowid_names[k]);
            t->by_row = true;
            return 0;
        }
    }
    wr_err_set(err, WR_EUNSUPPORTED,
               "table \"%s\" has no primary key and columns named rowid, _rowid_ and oid: its "
               "rows cannot be addressed in SQLite",
               t->dest_name);
    wr_err_hint(err, "add a primary key to the source table, or rename one of those columns");
    return WR_EUNSUPPORTED;
}

/* ---- value binding ---------------------------------------------------------------- */

/* Bytes of decoded bytea the values of row can need. */
static size_t
sq_blob_need(const sq_table_t *t, const wr_row_t *row)
{
    size_t need = 0;

    if (row == NULL)
        return 0;
    for (uint16_t i = 0; i < row->ncols && i < t->schema->ncols; i++) {
        if (t->cls[i] == SQT_CLASS_BLOB && row->vals[i].kind == WR_VAL_TEXT)
            need += row->vals[i].len / 2;
    }
    return need;
}

/* Makes room for the decoded bytea of one statement; the scratch is reused afterwards. */
static int
sq_scratch_reserve(dest_sqlite_t *d, size_t need, wr_err_t *err)
{
    d->scratch_off = 0;
    if (need > d->scratch_cap || d->scratch == NULL) {
        size_t cap = d->scratch_cap ? d->scratch_cap : 4096;
        uint8_t *p;

        while (cap < need)
            cap *= 2;
        p = realloc(d->scratch, cap);
        if (p == NULL)
            return wr_err_set(err, WR_ENOMEM, "out of memory decoding %zu bytes of bytea", need);
        d->scratch = p;
        d->scratch_cap = cap;
    }
    return 0;
}

static int
sq_bad_value(const sq_table_t *t, int col, const wr_val_t *v, wr_err_t *err)
{
    char vb[SQ_SHOW_MAX + 8];

    return wr_err_set(err, WR_EDATA, "invalid %s value for column \"%s\" of table \"%s\": \"%s\"",
                      t->is_bool[col] ? "boolean" : sq_class_name(t->cls[col]),
                      t->schema->cols[col].name, t->dest_name, sq_show(v, vb, sizeof(vb)));
}

/* Binds value v of column col to parameter idx. Text is bound without a copy: the row's
 * producer keeps it valid until the statement has been stepped. */
static int
sq_bind(dest_sqlite_t *d, const sq_table_t *t, sqlite3_stmt *st, int idx, int col,
        const wr_val_t *v, wr_err_t *err)
{
    int rc;

    switch (v->kind) {
    case WR_VAL_NULL:
        rc = sqlite3_bind_null(st, idx);
        break;
    case WR_VAL_BINARY:
        if (v->len == 0 || v->data == NULL)
            rc = sqlite3_bind_zeroblob(st, idx, 0);
        else
            rc = sqlite3_bind_blob64(st, idx, v->data, v->len, SQLITE_STATIC);
        break;
    case WR_VAL_TEXT: {
        const char *s = v->len > 0 && v->data != NULL ? v->data : "";
        size_t len = v->data != NULL ? v->len : 0;

        switch (t->cls[col]) {
        case SQT_CLASS_INTEGER: {
            int64_t i64;

            if (t->is_bool[col]) {
                bool bv;
                if (pgt_parse_bool(s, len, &bv) < 0)
                    return sq_bad_value(t, col, v, err);
                i64 = bv ? 1 : 0;
            } else if (pgt_parse_int64(s, len, &i64) < 0) {
                return sq_bad_value(t, col, v, err);
            }
            rc = sqlite3_bind_int64(st, idx, i64);
            break;
        }
        case SQT_CLASS_REAL: {
            double dv;
            bool special = false;

            if (pgt_parse_double(s, len, &dv, &special) < 0)
                return sq_bad_value(t, col, v, err);
            if (special) /* NaN, Infinity, -Infinity: kept as PostgreSQL spells them */
                rc = sqlite3_bind_text64(st, idx, s, len, SQLITE_STATIC, SQLITE_UTF8);
            else
                rc = sqlite3_bind_double(st, idx, dv);
            break;
        }
        case SQT_CLASS_BLOB: {
            size_t outlen = 0;
            uint8_t *out = d->scratch + d->scratch_off;

            if (len < 2 || d->scratch_off + (len - 2) / 2 > d->scratch_cap)
                return sq_bad_value(t, col, v, err);
            if (pgt_decode_bytea_hex(s, len, out, &outlen) < 0)
                return sq_bad_value(t, col, v, err);
            d->scratch_off += outlen;
            if (outlen == 0)
                rc = sqlite3_bind_zeroblob(st, idx, 0);
            else
                rc = sqlite3_bind_blob64(st, idx, out, outlen, SQLITE_STATIC);
            break;
        }
        default:
            rc = sqlite3_bind_text64(st, idx, s, len, SQLITE_STATIC, SQLITE_UTF8);
            break;
        }
        break;
    }
    case WR_VAL_UNCHANGED:
        return wr_err_set(
            err, WR_EINVAL,
            "unchanged toast value for column \"%s\" of table \"%s\" where a value is needed",
            t->schema->cols[col].name, t->dest_name);
    default:
        return wr_err_set(err, WR_EINVAL,
                          "value of unknown kind %d for column \"%s\" of table \"%s\"", v->kind,
                          t->schema->cols[col].name, t->dest_name);
    }
    if (rc != SQLITE_OK)
        return sq_fail(d, err, "binding column \"%s\" of table \"%s\"", t->schema->cols[col].name,
                       t->dest_name);
    return 0;
}

static int
sq_check_row(const sq_table_t *t, const wr_row_t *row, const char *what, wr_err_t *err)
{
    if (row == NULL)
        return wr_err_set(err, WR_EINVAL, "%s of table \"%s\" without a row", what, t->dest_name);
    if (row->ncols != t->schema->ncols)
        return wr_err_set(err, WR_EINVAL, "%s of table \"%s\" has %u columns, the schema has %u",
                          what, t->dest_name, (unsigned)row->ncols, (unsigned)t->schema->ncols);
    return 0;
}

/* Binds every value of the old row to ?(ncols+1+i) for a table matched by row (NULLs
 * too: the statement compares with IS). */
static int
sq_bind_old_row(dest_sqlite_t *d, const sq_table_t *t, sqlite3_stmt *st, const wr_row_t *row,
                wr_err_t *err)
{
    for (int i = 0; i < t->schema->ncols; i++) {
        const wr_val_t *v = &row->vals[i];
        int rc;

        if (v->kind == WR_VAL_UNCHANGED)
            return wr_err_set(err, WR_EDATA,
                              "the old row of table \"%s\" has no value for column \"%s\" "
                              "(unchanged toast): the row cannot be found without a key",
                              t->dest_name, t->schema->cols[i].name);
        if ((rc = sq_bind(d, t, st, t->schema->ncols + 1 + i, i, v, err)) < 0)
            return rc;
    }
    return 0;
}

/* Binds the key columns of row to ?(ncols+1+j), or the whole old row for a table matched
 * by row. */
static int
sq_bind_keys(dest_sqlite_t *d, const sq_table_t *t, sqlite3_stmt *st, const wr_row_t *row,
             wr_err_t *err)
{
    if (t->by_row)
        return sq_bind_old_row(d, t, st, row, err);
    for (int j = 0; j < t->nkeys; j++) {
        int col = t->keys[j];
        const wr_val_t *v = &row->vals[col];
        int rc;

        if (v->kind == WR_VAL_NULL || v->kind == WR_VAL_UNCHANGED)
            return wr_err_set(err, WR_EINVAL, "key column \"%s\" of table \"%s\" has no value (%s)",
                              t->schema->cols[col].name, t->dest_name,
                              v->kind == WR_VAL_NULL ? "null" : "unchanged toast");
        if ((rc = sq_bind(d, t, st, t->schema->ncols + 1 + j, col, v, err)) < 0)
            return rc;
    }
    return 0;
}

static int
sq_insert_row(dest_sqlite_t *d, sq_table_t *t, const wr_row_t *row, wr_err_t *err)
{
    sqlite3_stmt *st = t->ins;
    int rc;

    if ((rc = sq_check_row(t, row, "insert", err)) < 0)
        return rc;
    if ((rc = sq_scratch_reserve(d, sq_blob_need(t, row), err)) < 0)
        return rc;
    for (int i = 0; i < t->schema->ncols; i++) {
        if ((rc = sq_bind(d, t, st, i + 1, i, &row->vals[i], err)) < 0) {
            sqlite3_reset(st);
            return rc;
        }
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
        char kb[512];

        sq_show_key(t, row, kb, sizeof(kb));
        int rc = sq_fail(d, err, "insert into table \"%s\" failed%s%s", t->dest_name,
                         t->nkeys ? " for key " : "", t->nkeys ? kb : "");
        if ((sqlite3_extended_errcode(d->db) & 0xff) == SQLITE_CONSTRAINT) {
            /* a duplicate key: the destination diverged from the source */
            rc = WR_EDATA;
            if (err) {
                err->code = WR_EDATA;
                wr_err_hint(err, "the destination no longer matches the source; resync the table");
            }
        }
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);
    return 0;
}

/* Runs a bound UPDATE/DELETE by key and checks that it matched a row. */
static int
sq_step_by_key(dest_sqlite_t *d, const sq_table_t *t, sqlite3_stmt *st, const char *what,
               const wr_row_t *keyrow, wr_err_t *err)
{
    char kb[512];

    if (sqlite3_step(st) != SQLITE_DONE) {
        sq_show_key(t, keyrow, kb, sizeof(kb));
        sq_fail(d, err, "%s of table \"%s\" failed for key %s", what, t->dest_name, kb);
        sqlite3_reset(st);
        return WR_EDEST;
    }
    sqlite3_reset(st);
    if (sqlite3_changes(d->db) == 0) {
        sq_show_key(t, keyrow, kb, sizeof(kb));
        wr_err_set(err, WR_EDATA, "%s of table \"%s\" matched no row for key %s", what,
                   t->dest_name, kb);
        wr_err_hint(err, "the destination no longer matches the source; resync the table");
        return WR_EDATA;
    }
    return 0;
}

static int
sq_no_key(const sq_table_t *t, const char *what, wr_err_t *err)
{
    wr_err_set(err, WR_EUNSUPPORTED, "cannot apply %s to table \"%s\": it has no key columns", what,
               t->dest_name);
    wr_err_hint(err, "give the source table a primary key or run ALTER TABLE ... REPLICA IDENTITY "
                     "FULL, then resync the table");
    return WR_EUNSUPPORTED;
}

/* A table matched by row needs the whole old row (REPLICA IDENTITY FULL sends it). */
static int
sq_need_old_row(const sq_table_t *t, const char *what, char old_kind, wr_err_t *err)
{
    if (!t->by_row || old_kind == 'O')
        return 0;
    wr_err_set(err, WR_EUNSUPPORTED,
               "cannot apply %s to table \"%s\": it has no key columns and the change carries "
               "no old row (old row kind '%c')",
               what, t->dest_name, old_kind ? old_kind : '-');
    wr_err_hint(err, "ALTER TABLE ... REPLICA IDENTITY FULL on the source, then resync the table");
    return WR_EUNSUPPORTED;
}

/* The UPDATE statement for a new row: the full one, or a cached one leaving the unchanged
 * TOAST columns out of SET. */
static int
sq_update_stmt(dest_sqlite_t *d, sq_table_t *t, const wr_row_t *nrow, sqlite3_stmt **out,
               wr_err_t *err)
{
    uint16_t n = t->schema->ncols;
    bool any = false;
    sq_partial_t *p;
    int rc;

    for (uint16_t i = 0; i < n && !any; i++)
        any = nrow->vals[i].kind == WR_VAL_UNCHANGED;
    if (!any) {
        *out = t->upd;
        return 0;
    }
    for (int s = 0; s < SQ_PARTIAL_SLOTS; s++) {
        uint16_t i;

        p = &t->partial[s];
        if (p->stmt == NULL)
            continue;
        for (i = 0; i < n; i++) {
            if (p->skip[i] != (nrow->vals[i].kind == WR_VAL_UNCHANGED))
                break;
        }
        if (i == n) {
            *out = p->stmt;
            return 0;
        }
    }
    /* not cached: replace the oldest slot */
    p = &t->partial[t->partial_next];
    t->partial_next = (t->partial_next + 1) % SQ_PARTIAL_SLOTS;
    sqlite3_finalize(p->stmt);
    p->stmt = NULL;
    for (uint16_t i = 0; i < n; i++)
        p->skip[i] = nrow->vals[i].kind == WR_VAL_UNCHANGED;
    if ((rc = sq_prepare_update(d, t, p->skip, &p->stmt, err)) < 0)
        return rc;
    *out = p->stmt;
    return 0;
}

static int
sq_update(dest_sqlite_t *d, sq_table_t *t, const dest_event_t *ev, wr_err_t *err)
{
    const wr_row_t *nrow = ev->new_row, *keyrow;
    sqlite3_stmt *st;
    int rc;

    if (t->nkeys == 0 && !t->by_row)
        return sq_no_key(t, "an update", err);
    if ((rc = sq_need_old_row(t, "an update", ev->old_kind, err)) < 0)
        return rc;
    if ((rc = sq_check_row(t, nrow, "update", err)) < 0)
        return rc;
    if (ev->old_kind == 'K' || ev->old_kind == 'O') {
        keyrow = ev->old_row;
        if ((rc = sq_check_row(t, keyrow, "old key of update", err)) < 0)
            return rc;
    } else if (ev->old_kind == 0) {
        keyrow = nrow;
    } else {
        return wr_err_set(err, WR_EINVAL, "update of table \"%s\" with unknown old row kind %d",
                          t->dest_name, ev->old_kind);
    }
    if ((rc = sq_update_stmt(d, t, nrow, &st, err)) < 0)
        return rc;
    if ((rc = sq_scratch_reserve(d, sq_blob_need(t, nrow) + sq_blob_need(t, keyrow), err)) < 0)
        return rc;
    for (int i = 0; i < t->schema->ncols; i++) {
        if (nrow->vals[i].kind == WR_VAL_UNCHANGED)
            continue;
        if ((rc = sq_bind(d, t, st, i + 1, i, &nrow->vals[i], err)) < 0)
            goto fail;
    }
    if ((rc = sq_bind_keys(d, t, st, keyrow, err)) < 0)
        goto fail;
    return sq_step_by_key(d, t, st, "update", keyrow, err);
fail:
    sqlite3_reset(st);
    return rc;
}

static int
sq_delete(dest_sqlite_t *d, sq_table_t *t, const dest_event_t *ev, wr_err_t *err)
{
    int rc;

    if (t->nkeys == 0 && !t->by_row)
        return sq_no_key(t, "a delete", err);
    if ((rc = sq_need_old_row(t, "a delete", ev->old_kind, err)) < 0)
        return rc;
    if ((rc = sq_check_row(t, ev->old_row, "delete", err)) < 0)
        return rc;
    if ((rc = sq_scratch_reserve(d, sq_blob_need(t, ev->old_row), err)) < 0)
        return rc;
    if ((rc = sq_bind_keys(d, t, t->del, ev->old_row, err)) < 0) {
        sqlite3_reset(t->del);
        return rc;
    }
    return sq_step_by_key(d, t, t->del, "delete", ev->old_row, err);
}

static int
sq_truncate(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err)
{
    t->copy_seq = 0; /* history: trunc deletes the rows of an earlier copy */
    if (sqlite3_step(t->trunc) != SQLITE_DONE) {
        sq_fail(d, err, "truncating table \"%s\"", t->dest_name);
        sqlite3_reset(t->trunc);
        return WR_EDEST;
    }
    sqlite3_reset(t->trunc);
    return 0;
}

/* ---- ensure_table ------------------------------------------------------------------- */

/* Compares the columns of an existing destination table with the schema, by name and
 * order. Returns 0, 1 if the table does not exist, or an error naming the first
 * differing column. */
static int
sq_verify_table(dest_sqlite_t *d, const wr_schema_t *s, const char *dest_name, wr_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc, n = 0, r;

    if ((rc = sq_prepare(d, "SELECT name FROM pragma_table_info(?1) ORDER BY cid", &st, err)) < 0)
        return rc;
    sqlite3_bind_text(st, 1, dest_name, -1, SQLITE_STATIC);
    rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);

        if (name == NULL)
            name = "";
        if (n >= s->ncols) {
            wr_err_set(
                err, WR_EUNSUPPORTED,
                "destination table \"%s\" does not match the source: it has an extra column \"%s\" (column %d), the source has %u columns",
                dest_name, name, n + 1, (unsigned)s->ncols);
            rc = WR_EUNSUPPORTED;
            break;
        }
        if (strcmp(name, s->cols[n].name) != 0) {
            wr_err_set(
                err, WR_EUNSUPPORTED,
                "destination table \"%s\" does not match the source: column %d is \"%s\" in the destination, \"%s\" in the source",
                dest_name, n + 1, name, s->cols[n].name);
            rc = WR_EUNSUPPORTED;
            break;
        }
        n++;
    }
    if (rc == 0 && r != SQLITE_DONE)
        rc = sq_fail(d, err, "reading the columns of table \"%s\"", dest_name);
    if (rc == 0 && n > 0 && n < s->ncols) {
        wr_err_set(
            err, WR_EUNSUPPORTED,
            "destination table \"%s\" does not match the source: it has no column \"%s\" (column %d of the source)",
            dest_name, s->cols[n].name, n + 1);
        rc = WR_EUNSUPPORTED;
    }
    if (rc == WR_EUNSUPPORTED)
        wr_err_hint(
            err,
            "the destination table was made or changed outside walrelay's schema versions; resync the table (its copy creates it again)");
    sqlite3_finalize(st);
    if (rc == 0 && n == 0)
        return 1;
    return rc;
}

/* CREATE TABLE IF NOT EXISTS dest_name with the schema's columns and, if with_key, its
 * PRIMARY KEY (sq_in_primary_key). */
static int
sq_create_table(dest_sqlite_t *d, const wr_schema_t *s, const char *dest_name, bool with_key,
                wr_err_t *err)
{
    sq_buf_t b = {0};
    int rc, nk = 0;

    sb_add(&b, "CREATE TABLE IF NOT EXISTS ");
    sb_ident(&b, dest_name);
    sb_add(&b, " (");
    for (int i = 0; i < s->ncols; i++) {
        if (i)
            sb_add(&b, ", ");
        sb_ident(&b, s->cols[i].name);
        sb_add(&b, " ");
        sb_add(&b, sqt_decl(s->cols[i].type_oid));
    }
    if (d->history) /* rows are appended: no key, the change's position instead */
        sb_add(&b, ", _change_type TEXT NOT NULL, _commit_lsn INTEGER, _seq INTEGER NOT NULL, "
                   "_commit_time TEXT, _old_key TEXT");
    for (int i = 0; with_key && !d->history && i < s->ncols; i++) {
        if (!sq_in_primary_key(s, i))
            continue;
        sb_add(&b, nk++ ? ", " : ", PRIMARY KEY (");
        sb_ident(&b, s->cols[i].name);
    }
    if (nk)
        sb_add(&b, ")");
    sb_add(&b, ")");
    if (b.oom) {
        free(b.p);
        return wr_err_set(err, WR_ENOMEM, "out of memory creating table \"%s\"", dest_name);
    }
    if (sqlite3_exec(d->db, b.p, NULL, NULL, NULL) != SQLITE_OK)
        rc = sq_fail(d, err, "creating table \"%s\"", dest_name);
    else
        rc = 0;
    free(b.p);
    return rc;
}

static int
sq_record_table(dest_sqlite_t *d, const wr_schema_t *s, const char *dest_name, wr_err_t *err)
{
    static const char sql[] =
        "INSERT INTO _walrelay_tables (relid, nsp, name, dest_name, columns_json, updated_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
        "ON CONFLICT (relid) DO UPDATE SET nsp = excluded.nsp, name = excluded.name, "
        "dest_name = excluded.dest_name, columns_json = excluded.columns_json, "
        "updated_at = excluded.updated_at";
    sq_buf_t b = {0};
    sqlite3_stmt *st = NULL;
    int rc;

    sb_add(&b, "[");
    for (int i = 0; i < s->ncols; i++) {
        const wr_column_t *c = &s->cols[i];

        sb_add(&b, i ? ",{\"name\":" : "{\"name\":");
        sb_json_str(&b, c->name);
        sb_addf(&b, ",\"type_oid\":%u,\"typmod\":%d", (unsigned)c->type_oid, (int)c->typmod);
        sb_addf(&b, ",\"key\":%s,\"not_null\":%s}", c->is_key ? "true" : "false",
                c->not_null ? "true" : "false");
    }
    sb_add(&b, "]");
    if (b.oom) {
        free(b.p);
        return wr_err_set(err, WR_ENOMEM, "out of memory recording table \"%s\"", dest_name);
    }
    if ((rc = sq_prepare(d, sql, &st, err)) < 0) {
        free(b.p);
        return rc;
    }
    sqlite3_bind_int64(st, 1, s->relid);
    sqlite3_bind_text(st, 2, s->nsp ? s->nsp : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, s->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, dest_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, b.p, (int)b.len, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = sq_fail(d, err, "recording table \"%s\" in _walrelay_tables", dest_name);
    sqlite3_finalize(st);
    free(b.p);
    return rc;
}

static int
sq_ensure_table(dest_t *base, const wr_schema_t *s, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    char dest_name[SQ_NAME_MAX];
    sq_table_t *old, *t = NULL;
    bool own_txn = false, created = false;
    int rc;

    if (s == NULL || s->name == NULL)
        return wr_err_set(err, WR_EINVAL, "ensure_table without a schema");
    if (strlen(s->name) + (s->nsp ? strlen(s->nsp) : 0) + 3 > sizeof(dest_name) ||
        (s->dest_name && strlen(s->dest_name) >= sizeof(dest_name)))
        return wr_err_set(err, WR_EINVAL, "table name \"%.64s\" is too long", s->name);
    dest_schema_table_name(s, dest_name, sizeof(dest_name));
    if (s->ncols == 0) {
        wr_err_set(err, WR_EUNSUPPORTED, "table \"%s\" has no columns", dest_name);
        wr_err_hint(err, "add a column to the source table; sqlite tables need at least one");
        return WR_EUNSUPPORTED;
    }
    for (int i = 0; i < s->ncols; i++) {
        if (s->cols[i].name == NULL || s->cols[i].name[0] == '\0')
            return wr_err_set(err, WR_EINVAL, "column %d of table \"%s\" has no name", i + 1,
                              dest_name);
    }
    if (strncmp(dest_name, "_walrelay_", 10) == 0) {
        wr_err_set(err, WR_EUNSUPPORTED, "table name \"%s\" is reserved for walrelay", dest_name);
        wr_err_hint(err, "rename the source table or leave it out of the publication");
        return WR_EUNSUPPORTED;
    }
    old = sq_lookup(d, s->relid);
    if (old != NULL && strcmp(old->dest_name, dest_name) == 0 && wr_schema_equal(old->schema, s))
        return 0;

    if (!d->in_txn) {
        if ((rc = sq_step_done(d, d->st_begin, "beginning a transaction", err)) < 0)
            return rc;
        own_txn = true;
    }
    rc = d->history ? sq_hist_ensure(d, s, dest_name, err) : sq_verify_table(d, s, dest_name, err);
    if (rc == 1) {
        if ((rc = sq_create_table(d, s, dest_name, true, err)) < 0)
            goto fail;
        created = true;
    } else if (rc < 0) {
        goto fail;
    }
    if ((rc = sq_table_new(s, dest_name, &t, err)) < 0)
        goto fail;
    if (old != NULL && strcmp(old->dest_name, dest_name) == 0) {
        /* registered again during its copy: the rows keep going where they went */
        t->copying = old->copying;
        t->staged = old->staged;
        memcpy(t->stage_name, old->stage_name, sizeof(t->stage_name));
    }
    if ((rc = sq_table_identity(d, t, err)) < 0 || (rc = sq_table_prepare(d, t, err)) < 0)
        goto fail;
    if ((rc = sq_record_table(d, s, dest_name, err)) < 0)
        goto fail;
    if (own_txn) {
        if ((rc = sq_step_done(d, d->st_commit, "committing the table definition", err)) < 0)
            goto fail;
        own_txn = false;
    }
    t->created_in_txn = created && d->in_txn;
    if (old != NULL) {
        t->created_in_txn = t->created_in_txn || old->created_in_txn;
        sq_unlink(d, old);
        sq_table_free(old);
    }
    t->next = d->buckets[t->relid % SQ_BUCKETS];
    d->buckets[t->relid % SQ_BUCKETS] = t;
    d->last = t;
    return 0;
fail:
    sq_table_free(t);
    if (own_txn && !sqlite3_get_autocommit(d->db))
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* ---- transactions and keys ---------------------------------------------------------- */

static void sq_sync_mode(dest_sqlite_t *d);

/* After a rollback, forgets tables whose CREATE was rolled back. */
static void
sq_after_txn(dest_sqlite_t *d, bool committed)
{
    for (int b = 0; b < SQ_BUCKETS; b++) {
        sq_table_t *t = d->buckets[b], *next;

        for (; t != NULL; t = next) {
            next = t->next;
            if (!t->created_in_txn)
                continue;
            if (committed) {
                t->created_in_txn = false;
            } else {
                sq_unlink(d, t);
                sq_table_free(t);
            }
        }
    }
}

static int
sq_begin(dest_t *base, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    int rc, want;

    if (d->in_txn)
        return wr_err_set(err, WR_EINVAL, "begin inside a transaction (commit or roll back first)");
    sq_sync_mode(d);
    want = d->copying > 0 || d->async ? 1 : 2;
    if (d->sync_level != want) {
        /* NORMAL while this handle copies a table (see "the copy" below), and always in
         * the apply worker's handle (see sq_durable) */
        if ((rc = sq_exec(d, want == 1 ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL",
                          err)) < 0)
            return rc;
        d->sync_level = want;
    }
    if ((rc = sq_step_done(d, d->st_begin, "beginning a transaction", err)) < 0)
        return rc;
    d->in_txn = true;
    d->sync_wal = false;
    return 0;
}

/* Makes every committed transaction durable after commits with synchronous=NORMAL: fsync
 * of the WAL file (SQLITE_FCNTL_JOURNAL_POINTER gives its file object). The database file
 * holds the rest: NORMAL syncs it after every checkpoint. */
static int
sq_sync_wal(dest_sqlite_t *d, wr_err_t *err)
{
    sqlite3_file *f = NULL;

    if (sqlite3_file_control(d->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &f) != SQLITE_OK)
        return sq_fail(d, err, "finding the WAL file of \"%s\"", d->path);
    if (f == NULL || f->pMethods == NULL)
        return 0; /* no WAL open: nothing was written through it */
    if (f->pMethods->xSync(f, SQLITE_SYNC_FULL) != SQLITE_OK)
        return wr_err_set(err, WR_EDEST, "syncing the WAL file of \"%s\" failed", d->path);
    return 0;
}

static int
sq_rollback(dest_t *base, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    int rc = 0;

    if (!d->in_txn)
        return 0; /* nothing open: error paths may call this unconditionally */
    d->in_txn = false;
    /* SQLite rolls back by itself after some errors (full disk, I/O, busy) */
    if (!sqlite3_get_autocommit(d->db))
        rc = sq_step_done(d, d->st_rollback, "rolling back", err);
    sq_after_txn(d, false);
    return rc;
}

static int
sq_commit(dest_t *base, const char *stream, const dest_key_t *key, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    int rc;

    if ((rc = sq_need_txn(d, "commit", err)) < 0)
        return rc;
    if (key != NULL) {
        if (stream == NULL || stream[0] == '\0') {
            sq_rollback(base, &(wr_err_t){0});
            return wr_err_set(err, WR_EINVAL, "commit with a key but no stream");
        }
        sqlite3_bind_text(d->st_key_put, 1, stream, -1, SQLITE_STATIC);
        sqlite3_bind_int64(d->st_key_put, 2, (int64_t)key->commit_lsn);
        sqlite3_bind_int64(d->st_key_put, 3, key->ordinal);
        if (sqlite3_step(d->st_key_put) != SQLITE_DONE) {
            sq_fail(d, err, "storing the key of stream \"%s\"", stream);
            sqlite3_reset(d->st_key_put);
            sq_rollback(base, &(wr_err_t){0});
            return WR_EDEST;
        }
        sqlite3_reset(d->st_key_put);
    }
    if (sqlite3_step(d->st_commit) != SQLITE_DONE) {
        sq_fail(d, err, "committing");
        sqlite3_reset(d->st_commit);
        sq_rollback(base, &(wr_err_t){0});
        return WR_EDEST;
    }
    sqlite3_reset(d->st_commit);
    d->in_txn = false;
    sq_after_txn(d, true);
    d->ncommits++;
    if (d->sync_wal) {
        d->sync_wal = false;
        if ((rc = sq_sync_wal(d, err)) < 0)
            return rc;
        d->durable_n = d->ncommits;
    } else if (d->sync_level == 2) {
        d->durable_n = d->ncommits; /* FULL: durable when COMMIT returned */
    }
    return 0;
}

/* The apply worker's commits (dest_sqlite_set_async) are synchronous=NORMAL: in WAL mode
 * a COMMIT appends its frames to the WAL file without an fsync, so the change is visible
 * at once and survives the process being killed (the frames are in the kernel's page
 * cache), but not a crash of the machine. durable: one fsync of the WAL file makes every
 * commit that returned before it durable (the WAL is written in order; a checkpoint
 * syncs the WAL before copying it into the database and the database after, and restarts
 * the WAL only once all of it is in the database). The worker asks a few times a second
 * and confirms positions to the source only past durable commits, so a machine crash
 * that loses the last commits replays them from the slot; the progress row that went
 * with them was lost too, so nothing is skipped or applied twice. The fsync leaves the
 * path of every change (a commit took one before), and a busy stream pays one every
 * 200 ms instead of one per batch. */
static int
sq_durable(dest_t *base, uint64_t *n, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    uint64_t upto = d->ncommits;
    int rc;

    if (d->durable_n < upto) {
        if ((rc = sq_sync_wal(d, err)) < 0)
            return rc;
        d->durable_n = upto;
    }
    *n = d->durable_n;
    return 0;
}

void
dest_sqlite_set_async(dest_t *base)
{
    ((dest_sqlite_t *)base)->async = true;
}

/* WAL pages past which a sync worker's commit checkpoints (SQLite's default is 1,000: 4 MB
 * at 4 kB pages). A copy commits a range of up to 128 MB at a time; with the default each
 * commit ran a checkpoint (the WAL fsynced, its pages written into the database file, that
 * file fsynced) before the writer could go on, about a tenth of the copy's time
 * (bench/RESULTS.md 2026-12-04). The WAL now grows to 64 MB plus one transaction before
 * this handle checkpoints; the apply worker's handle keeps the default, so while it commits
 * it checkpoints (concurrently with the copy's writer) as before. Durability is the same:
 * a checkpoint only moves committed pages from the WAL into the database file. */
#define SQ_COPY_CKPT_PAGES "16384"

int
dest_sqlite_set_copy_writer(dest_t *base, wr_err_t *err)
{
    return sq_exec((dest_sqlite_t *)base, "PRAGMA wal_autocheckpoint=" SQ_COPY_CKPT_PAGES, err);
}

static int
sq_last_key(dest_t *base, const char *stream, dest_key_t *out, bool *found, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sqlite3_stmt *st = d->st_key_get;
    int r, rc = 0;

    out->commit_lsn = 0;
    out->ordinal = 0;
    *found = false;
    sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        int64_t ord = sqlite3_column_int64(st, 1);

        if (ord < 0 || ord > (int64_t)UINT32_MAX) {
            rc = wr_err_set(err, WR_EDEST, "stored ordinal %lld of stream \"%s\" is out of range",
                            (long long)ord, stream);
        } else {
            out->commit_lsn = (wr_lsn_t)sqlite3_column_int64(st, 0);
            out->ordinal = (uint32_t)ord;
            *found = true;
        }
    } else if (r != SQLITE_DONE) {
        rc = sq_fail(d, err, "reading the key of stream \"%s\"", stream);
    }
    sqlite3_reset(st);
    return rc;
}

static int
sq_clear_key(dest_t *base, const char *stream, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    char what[160];

    snprintf(what, sizeof(what), "clearing the key of stream \"%s\"", stream);
    sqlite3_bind_text(d->st_key_del, 1, stream, -1, SQLITE_STATIC);
    return sq_step_done(d, d->st_key_del, what, err);
}

/* ---- data ------------------------------------------------------------------------- */

static int
sq_truncate_table(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sq_table_t *t;
    int rc;

    if ((rc = sq_need_txn(d, "truncate_table", err)) < 0)
        return rc;
    if ((rc = sq_get_table(d, relid, &t, err)) < 0)
        return rc;
    return sq_truncate(d, t, err);
}

/* Inserts rows[0..t->multi_rows) with one statement. A failure of the statement (SQLite
 * backs out that statement only) is returned as 1 so that the caller inserts the same rows
 * one by one, which names the row at fault; a value that does not convert is reported
 * here, naming its column. */
static int
sq_insert_multi(dest_sqlite_t *d, sq_table_t *t, const wr_row_t *rows, wr_err_t *err)
{
    sqlite3_stmt *st = t->multi;
    int nc = t->schema->ncols, rc;
    size_t need = 0;

    for (int r = 0; r < t->multi_rows; r++) {
        if ((rc = sq_check_row(t, &rows[r], "insert", err)) < 0)
            return rc;
        need += sq_blob_need(t, &rows[r]);
    }
    if ((rc = sq_scratch_reserve(d, need, err)) < 0)
        return rc;
    for (int r = 0; r < t->multi_rows; r++) {
        for (int i = 0; i < nc; i++) {
            if ((rc = sq_bind(d, t, st, r * nc + i + 1, i, &rows[r].vals[i], err)) < 0) {
                sqlite3_reset(st);
                return rc;
            }
        }
    }
    if (sqlite3_step(st) == SQLITE_DONE) {
        sqlite3_reset(st);
        return 0;
    }
    rc = sq_fail(d, err, "insert into table \"%s\" failed", t->dest_name);
    sqlite3_reset(st);
    /* some errors (I/O, a full disk) end the transaction: nothing may run outside it */
    return sqlite3_get_autocommit(d->db) ? rc : 1;
}

/* Rows per multi-row INSERT: statement overhead (cursor, halt) shared by up to 64 rows,
 * within SQLite's limit on parameters. */
static int
sq_multi_rows(const dest_sqlite_t *d, const sq_table_t *t)
{
    int m = d->max_params / (t->schema->ncols > 0 ? t->schema->ncols : 1);

    return m > 64 ? 64 : m;
}

static int
sq_write_rows(dest_t *base, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sq_table_t *t;
    size_t i = 0;
    int rc;

    if ((rc = sq_need_txn(d, "write_rows", err)) < 0)
        return rc;
    if ((rc = sq_get_table(d, relid, &t, err)) < 0)
        return rc;
    if (d->history) { /* appended one by one, each with its position (history mode) */
        for (; i < n; i++)
            if ((rc = sq_hist_copy_row(d, t, &rows[i], err)) < 0)
                return rc;
        return 0;
    }
    if (t->multi == NULL && n >= 2 && sq_multi_rows(d, t) >= 2) {
        t->multi_rows = sq_multi_rows(d, t);
        if ((rc = sq_prepare_insert(d, t, t->multi_rows, &t->multi, err)) < 0)
            return rc;
    }
    while (t->multi != NULL && n - i >= (size_t)t->multi_rows) {
        if ((rc = sq_insert_multi(d, t, &rows[i], err)) < 0)
            return rc;
        if (rc > 0)
            break; /* the rows from i on, one by one: the failing one says what is wrong */
        i += (size_t)t->multi_rows;
    }
    for (; i < n; i++) {
        if ((rc = sq_insert_row(d, t, &rows[i], err)) < 0)
            return rc;
    }
    return 0;
}

static int
sq_write_event(dest_t *base, const dest_event_t *ev, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sq_table_t *t;
    int rc;

    if ((rc = sq_need_txn(d, "write_event", err)) < 0)
        return rc;
    if (ev->kind == DEST_EV_BEGIN || ev->kind == DEST_EV_COMMIT)
        return 0; /* changes are applied as they come; the key is stored at commit() */
    if ((rc = sq_get_table(d, ev->relid, &t, err)) < 0)
        return rc;
    if (d->history)
        return sq_hist_event(d, t, ev, err);
    switch (ev->kind) {
    case DEST_EV_INSERT:
        return sq_insert_row(d, t, ev->new_row, err);
    case DEST_EV_UPDATE:
        return sq_update(d, t, ev, err);
    case DEST_EV_DELETE:
        return sq_delete(d, t, ev, err);
    case DEST_EV_TRUNCATE:
        return sq_truncate(d, t, err);
    case DEST_EV_BEGIN:
    case DEST_EV_COMMIT:
        break;
    }
    return wr_err_set(err, WR_EINVAL, "event of unknown kind %d for table \"%s\"", (int)ev->kind,
                      t->dest_name);
}

static int64_t
sq_count_rows(dest_t *base, uint32_t relid)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sq_table_t *t = sq_lookup(d, relid);
    sq_buf_t b = {0};
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (t == NULL)
        return -1;
    sb_add(&b, "SELECT count(*) FROM ");
    sb_ident(&b, t->dest_name);
    if (!b.oom && sqlite3_prepare_v2(d->db, b.p, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    free(b.p);
    return n;
}

/* ---- schema versions and alteration (issue 3) ----------------------------------------
 *
 * _walrelay_schemas(relid, version_lsn, version_ordinal, nsp, name, columns_json,
 * relfilenode, attstate, attxmins, change, recorded_at) keeps every schema version of a
 * table with the catalog facts it was derived from (destination.h dest_tmeta_t): the copy
 * writes the first one (the older ones are forgotten), each followed schema change or
 * refresh appends one, in the same transaction as the data. The newest is the table's
 * current schema: never rolled back by a replay, because the apply worker only compares
 * changes it has not applied yet. */

/* The destination table's columns as SQLite has them. */
typedef struct sq_layout_s {
    int ncols;
    char **names; /* ncols */
    char **decl;  /* ncols: declared type */
    int *pk;      /* ncols: position in the PRIMARY KEY (1..), 0 if not in it */
} sq_layout_t;

static void
sq_layout_free(sq_layout_t *l)
{
    for (int i = 0; i < l->ncols; i++) {
        free(l->names[i]);
        free(l->decl[i]);
    }
    free(l->names);
    free(l->decl);
    free(l->pk);
    memset(l, 0, sizeof(*l));
}

/* Reads the columns of dest_name (ncols 0 if the table does not exist). */
static int
sq_layout_read(dest_sqlite_t *d, const char *dest_name, sq_layout_t *l, wr_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc, r, cap = 0;

    memset(l, 0, sizeof(*l));
    if ((rc = sq_prepare(d, "SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid", &st,
                         err)) < 0)
        return rc;
    sqlite3_bind_text(st, 1, dest_name, -1, SQLITE_STATIC);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *decl = (const char *)sqlite3_column_text(st, 1);

        if (l->ncols == cap) {
            int ncap = cap ? cap * 2 : 16;
            char **nn = realloc(l->names, (size_t)ncap * sizeof(*nn));
            char **nd = nn ? realloc(l->decl, (size_t)ncap * sizeof(*nd)) : NULL;
            int *np = nd ? realloc(l->pk, (size_t)ncap * sizeof(*np)) : NULL;

            if (nn)
                l->names = nn;
            if (nd)
                l->decl = nd;
            if (np == NULL) {
                sqlite3_finalize(st);
                sq_layout_free(l);
                return wr_err_set(err, WR_ENOMEM, "out of memory reading table \"%s\"", dest_name);
            }
            l->pk = np;
            cap = ncap;
        }
        l->names[l->ncols] = wr_strdup(name ? name : "");
        l->decl[l->ncols] = wr_strdup(decl ? decl : "");
        l->pk[l->ncols] = sqlite3_column_int(st, 2);
        l->ncols++;
        if (l->names[l->ncols - 1] == NULL || l->decl[l->ncols - 1] == NULL) {
            sqlite3_finalize(st);
            sq_layout_free(l);
            return wr_err_set(err, WR_ENOMEM, "out of memory reading table \"%s\"", dest_name);
        }
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE) {
        sq_layout_free(l);
        return sq_fail(d, err, "reading the columns of table \"%s\"", dest_name);
    }
    return 0;
}

/* True if the table's PRIMARY KEY is exactly what sq_create_table makes for s, where
 * column i of the table is called name_of(i) (the new name after renames). */
static bool
sq_layout_key_is(const sq_layout_t *l, const wr_schema_t *s, const int32_t *src)
{
    int want = 0;

    for (int j = 0; j < s->ncols; j++) {
        if (!sq_in_primary_key(s, j))
            continue;
        want++;
        /* the new key column must be an old column at key position `want` */
        if (src == NULL) {
            if (j >= l->ncols || l->pk[j] != want)
                return false;
        } else if (src[j] < 0 || src[j] >= l->ncols || l->pk[src[j]] != want) {
            return false;
        }
    }
    for (int i = 0; i < l->ncols; i++) {
        if (l->pk[i] > want)
            return false;
        if (l->pk[i] > 0 && src != NULL) {
            bool kept = false;
            for (int j = 0; j < s->ncols && !kept; j++)
                kept = src[j] == i;
            if (!kept)
                return false;
        }
    }
    return true;
}

/* Appends the schema's columns as JSON (the format of _walrelay_tables.columns_json). */
static void
sq_columns_json(sq_buf_t *b, const wr_schema_t *s)
{
    sb_add(b, "[");
    for (int i = 0; i < s->ncols; i++) {
        const wr_column_t *c = &s->cols[i];

        sb_add(b, i ? ",{\"name\":" : "{\"name\":");
        sb_json_str(b, c->name);
        sb_addf(b, ",\"type_oid\":%u,\"typmod\":%d", (unsigned)c->type_oid, (int)c->typmod);
        sb_addf(b, ",\"key\":%s,\"not_null\":%s}", c->is_key ? "true" : "false",
                c->not_null ? "true" : "false");
    }
    sb_add(b, "]");
}

/* Inserts a version row. Inside a transaction. */
static int
sq_version_insert(dest_sqlite_t *d, const wr_schema_t *s, const dest_tmeta_t *m, const char *change,
                  wr_err_t *err)
{
    static const char sql[] =
        "INSERT INTO _walrelay_schemas (relid, version_lsn, version_ordinal, nsp, name, "
        "columns_json, relfilenode, attstate, attxmins, change, recorded_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
        "ON CONFLICT (relid, version_lsn, version_ordinal) DO UPDATE SET nsp = excluded.nsp, "
        "name = excluded.name, columns_json = excluded.columns_json, "
        "relfilenode = excluded.relfilenode, attstate = excluded.attstate, "
        "attxmins = excluded.attxmins, change = excluded.change, "
        "recorded_at = excluded.recorded_at";
    sq_buf_t cols = {0}, xm = {0};
    sqlite3_stmt *st = NULL;
    int rc;

    sq_columns_json(&cols, s);
    sb_add(&xm, "");
    for (uint16_t a = 0; m->attxmin != NULL && a < m->natts; a++)
        sb_addf(&xm, "%s%u", a ? " " : "", (unsigned)m->attxmin[a]);
    if (cols.oom || xm.oom) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory recording a schema version of \"%s\"",
                        s->name);
        goto out;
    }
    if ((rc = sq_prepare(d, sql, &st, err)) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, s->relid);
    sqlite3_bind_int64(st, 2, (int64_t)m->version.commit_lsn);
    sqlite3_bind_int64(st, 3, m->version.ordinal);
    sqlite3_bind_text(st, 4, s->nsp ? s->nsp : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, s->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, cols.p, (int)cols.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, m->relfilenode);
    sqlite3_bind_text(st, 8, m->attstate ? m->attstate : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, xm.p, (int)xm.len, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, change ? change : "", -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = sq_fail(d, err, "recording a schema version of table \"%s\"", s->name);
out:
    sqlite3_finalize(st);
    free(cols.p);
    free(xm.p);
    return rc;
}

/* Parses columns_json into a schema of relid. */
static int
sq_schema_from_json(dest_sqlite_t *d, uint32_t relid, const char *nsp, const char *name,
                    const char *json, wr_schema_t **out, wr_err_t *err)
{
    static const char sql[] =
        "SELECT json_extract(value, '$.name'), json_extract(value, '$.type_oid'), "
        "json_extract(value, '$.typmod'), json_extract(value, '$.key'), "
        "json_extract(value, '$.not_null') FROM json_each(?1) ORDER BY CAST(key AS INTEGER)";
    sqlite3_stmt *st = NULL;
    wr_schema_t *s = NULL;
    int rc, r, n = 0;

    *out = NULL;
    if ((rc = sq_prepare(d, "SELECT json_array_length(?1)", &st, err)) < 0)
        return rc;
    sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (n <= 0 || n > UINT16_MAX)
        return wr_err_set(err, WR_EDEST, "the recorded columns of table \"%s\" cannot be read",
                          name);
    s = wr_schema_new(relid, nsp, name, (uint16_t)n);
    if (s == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of \"%s\"", name);
    if ((rc = sq_prepare(d, sql, &st, err)) < 0) {
        wr_schema_free(s);
        return rc;
    }
    sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
    for (int i = 0; i < n; i++) {
        const char *cn;

        if ((r = sqlite3_step(st)) != SQLITE_ROW ||
            (cn = (const char *)sqlite3_column_text(st, 0)) == NULL) {
            rc = wr_err_set(err, WR_EDEST, "the recorded columns of table \"%s\" cannot be read",
                            name);
            goto fail;
        }
        s->cols[i].name = wr_strdup(cn);
        if (s->cols[i].name == NULL) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of \"%s\"", name);
            goto fail;
        }
        s->cols[i].type_oid = (uint32_t)sqlite3_column_int64(st, 1);
        s->cols[i].typmod = (int32_t)sqlite3_column_int64(st, 2);
        s->cols[i].is_key = sqlite3_column_int(st, 3) != 0;
        s->cols[i].not_null = sqlite3_column_int(st, 4) != 0;
    }
    sqlite3_finalize(st);
    *out = s;
    return 0;
fail:
    sqlite3_finalize(st);
    wr_schema_free(s);
    return rc;
}

/* Parses "attstate" and "attxmins" of a version row into m (natts 0 if malformed). */
static int
sq_meta_parse(const char *attstate, const char *xmins, dest_tmeta_t *m, wr_err_t *err)
{
    size_t n = attstate ? strlen(attstate) : 0;
    const char *p = xmins ? xmins : "";

    if (n == 0 || n > UINT16_MAX)
        return 0;
    m->attstate = malloc(n + 1);
    m->attxmin = calloc(n, sizeof(uint32_t));
    if (m->attstate == NULL || m->attxmin == NULL) {
        dest_tmeta_clear(m);
        return wr_err_set(err, WR_ENOMEM, "out of memory reading a schema version");
    }
    memcpy(m->attstate, attstate, n + 1);
    for (size_t a = 0; a < n; a++) {
        char *end;
        unsigned long v;

        if (attstate[a] != 'l' && attstate[a] != 'd' && attstate[a] != 'g')
            goto bad;
        while (*p == ' ')
            p++;
        v = strtoul(p, &end, 10);
        if (end == p || v > UINT32_MAX)
            goto bad;
        m->attxmin[a] = (uint32_t)v;
        p = end;
    }
    m->natts = (uint16_t)n;
    return 0;
bad:
    /* unreadable facts: as if none were recorded (the planner then only trusts an
     * identical column list) */
    free(m->attstate);
    free(m->attxmin);
    m->attstate = NULL;
    m->attxmin = NULL;
    m->natts = 0;
    return 0;
}

/* Sets s->dest_name to the name the table is registered under (_walrelay_tables), so that
 * alter_table finds it whatever naming chose it (issue 12: names recorded, not derived). */
static int
sq_schema_registered_name(dest_sqlite_t *d, wr_schema_t *s, wr_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc, r;

    if (s == NULL)
        return 0;
    if ((rc = sq_prepare(d, "SELECT dest_name FROM _walrelay_tables WHERE relid = ?1", &st, err)) <
        0)
        return rc;
    sqlite3_bind_int64(st, 1, s->relid);
    r = sqlite3_step(st);
    rc = 0;
    if (r == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL &&
        wr_schema_set_dest_name(s, (const char *)sqlite3_column_text(st, 0)) != 0)
        rc = wr_err_set(err, WR_ENOMEM, "out of memory reading the name of relid %u",
                        (unsigned)s->relid);
    else if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = sq_fail(d, err, "reading the registration of relid %u", (unsigned)s->relid);
    sqlite3_finalize(st);
    return rc;
}

static int
sq_get_version(dest_t *base, uint32_t relid, wr_schema_t **schema, dest_tmeta_t *meta,
               wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sqlite3_stmt *st = NULL;
    int rc, r;

    *schema = NULL;
    memset(meta, 0, sizeof(*meta));
    if ((rc = sq_prepare(d,
                         "SELECT version_lsn, version_ordinal, relfilenode, attstate, attxmins, "
                         "nsp, name, columns_json FROM _walrelay_schemas WHERE relid = ?1 "
                         "ORDER BY version_lsn DESC, version_ordinal DESC LIMIT 1",
                         &st, err)) < 0)
        return rc;
    sqlite3_bind_int64(st, 1, relid);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        meta->version.commit_lsn = (wr_lsn_t)sqlite3_column_int64(st, 0);
        meta->version.ordinal = (uint32_t)sqlite3_column_int64(st, 1);
        meta->relfilenode = (uint32_t)sqlite3_column_int64(st, 2);
        rc = sq_meta_parse((const char *)sqlite3_column_text(st, 3),
                           (const char *)sqlite3_column_text(st, 4), meta, err);
        if (rc == 0)
            rc = sq_schema_from_json(d, relid, (const char *)sqlite3_column_text(st, 5),
                                     (const char *)sqlite3_column_text(st, 6),
                                     (const char *)sqlite3_column_text(st, 7), schema, err);
        sqlite3_finalize(st);
        if (rc == 0)
            rc = sq_schema_registered_name(d, *schema, err);
        if (rc < 0)
            dest_tmeta_clear(meta);
        return rc;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (r != SQLITE_DONE)
        return sq_fail(d, err, "reading the schema version of relid %u", (unsigned)relid);
    /* no version: the table's registration, without catalog facts */
    if ((rc = sq_prepare(d, "SELECT nsp, name, columns_json FROM _walrelay_tables WHERE relid = ?1",
                         &st, err)) < 0)
        return rc;
    sqlite3_bind_int64(st, 1, relid);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW && sqlite3_column_text(st, 2) != NULL)
        rc = sq_schema_from_json(d, relid, (const char *)sqlite3_column_text(st, 0),
                                 (const char *)sqlite3_column_text(st, 1),
                                 (const char *)sqlite3_column_text(st, 2), schema, err);
    else if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = sq_fail(d, err, "reading the registration of relid %u", (unsigned)relid);
    sqlite3_finalize(st);
    if (rc == 0 && *schema != NULL)
        rc = sq_schema_registered_name(d, *schema, err);
    return rc;
}

static int
sq_put_version(dest_t *base, const wr_schema_t *s, const dest_tmeta_t *meta, const char *change,
               wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    int rc;

    if ((rc = sq_need_txn(d, "put_version", err)) < 0)
        return rc;
    return sq_version_insert(d, s, meta, change, err);
}

/* Forgets the in-memory registration of relid (statements of a table about to change). */
static void
sq_forget(dest_sqlite_t *d, uint32_t relid)
{
    sq_table_t *t = sq_lookup(d, relid);

    if (t != NULL) {
        sq_unlink(d, t);
        sq_table_free(t);
    }
}

/* Runs one ALTER/DROP statement built in b; frees b. */
static int
sq_exec_buf(dest_sqlite_t *d, sq_buf_t *b, const char *table, wr_err_t *err)
{
    int rc = 0;

    if (b->oom)
        rc = wr_err_set(err, WR_ENOMEM, "out of memory altering table \"%s\"", table);
    else if (sqlite3_exec(d->db, b->p, NULL, NULL, NULL) != SQLITE_OK)
        rc = sq_fail(d, err, "altering table \"%s\" (%.200s)", table, b->p);
    free(b->p);
    memset(b, 0, sizeof(*b));
    return rc;
}

/* Binds fill values of the added columns (src -1) as parameters ?(j+1) with column j's
 * storage class. */
static int
sq_bind_fills(dest_sqlite_t *d, const sq_table_t *nt, sqlite3_stmt *st, const dest_alter_t *plan,
              int only, wr_err_t *err)
{
    size_t need = 0;
    int rc;

    for (int j = 0; j < nt->schema->ncols; j++) {
        if (plan->src[j] < 0 && (only < 0 || only == j) && plan->fill[j].kind == WR_VAL_TEXT)
            need += plan->fill[j].len / 2 + 1;
    }
    if ((rc = sq_scratch_reserve(d, need, err)) < 0)
        return rc;
    for (int j = 0; j < nt->schema->ncols; j++) {
        if (plan->src[j] >= 0 || (only >= 0 && only != j))
            continue;
        if ((rc = sq_bind(d, nt, st, only >= 0 ? 1 : j + 1, j, &plan->fill[j], err)) < 0)
            return rc;
    }
    return 0;
}

/* Copies the table into a new one created for ns (new key), then replaces it. */
static int
sq_rebuild(dest_sqlite_t *d, const wr_schema_t *os, const sq_table_t *nt, const char *dest_name,
           const dest_alter_t *plan, wr_err_t *err)
{
    const wr_schema_t *ns = nt->schema;
    char tmp[64];
    sq_buf_t b = {0};
    sqlite3_stmt *st = NULL;
    int rc;

    snprintf(tmp, sizeof(tmp), "_walrelay_rebuild_%u", (unsigned)ns->relid);
    sb_add(&b, "DROP TABLE IF EXISTS ");
    sb_ident(&b, tmp);
    if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0)
        return rc;
    if ((rc = sq_create_table(d, ns, tmp, true, err)) < 0)
        return rc;
    sb_add(&b, "INSERT INTO ");
    sb_ident(&b, tmp);
    sb_add(&b, " (");
    for (int j = 0; j < ns->ncols; j++) {
        if (j)
            sb_add(&b, ", ");
        sb_ident(&b, ns->cols[j].name);
    }
    sb_add(&b, ") SELECT ");
    for (int j = 0; j < ns->ncols; j++) {
        if (j)
            sb_add(&b, ", ");
        if (plan->src[j] >= 0)
            sb_ident(&b, os->cols[plan->src[j]].name);
        else
            sb_addf(&b, "?%d", j + 1);
    }
    sb_add(&b, " FROM ");
    sb_ident(&b, dest_name);
    if (b.oom) {
        free(b.p);
        return wr_err_set(err, WR_ENOMEM, "out of memory rebuilding table \"%s\"", dest_name);
    }
    rc = sqlite3_prepare_v2(d->db, b.p, -1, &st, NULL) == SQLITE_OK
             ? 0
             : sq_fail(d, err, "rebuilding table \"%s\"", dest_name);
    free(b.p);
    memset(&b, 0, sizeof(b));
    if (rc == 0)
        rc = sq_bind_fills(d, nt, st, plan, -1, err);
    if (rc == 0 && sqlite3_step(st) != SQLITE_DONE) {
        bool dup = (sqlite3_extended_errcode(d->db) & 0xff) == SQLITE_CONSTRAINT;
        char keys[256] = "";
        size_t off = 0;

        for (int j = 0; j < ns->ncols && off + 8 < sizeof(keys); j++) {
            int w;
            if (!sq_in_primary_key(ns, j))
                continue;
            w = snprintf(keys + off, sizeof(keys) - off, "%s%s", off ? ", " : "", ns->cols[j].name);
            off += w > 0 ? (size_t)w : 0;
        }
        rc = sq_fail(d, err, "copying table \"%s\" to its new key (%s)", dest_name, keys);
        if (dup) {
            err->code = rc = WR_EDATA;
            wr_err_hint(err, "rows of the destination share a value of the new key: the "
                             "destination no longer matches the source; resync the table");
        }
    }
    sqlite3_finalize(st);
    if (rc < 0)
        return rc;
    sb_add(&b, "DROP TABLE ");
    sb_ident(&b, dest_name);
    if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0)
        return rc;
    sb_add(&b, "ALTER TABLE ");
    sb_ident(&b, tmp);
    sb_add(&b, " RENAME TO ");
    sb_ident(&b, dest_name);
    return sq_exec_buf(d, &b, dest_name, err);
}

/* In place: drops, renames (through temporary names, so swaps work), adds with fill. */
static int
sq_alter_in_place(dest_sqlite_t *d, const wr_schema_t *os, const sq_table_t *nt,
                  const char *dest_name, const dest_alter_t *plan, wr_err_t *err)
{
    const wr_schema_t *ns = nt->schema;
    sq_buf_t b = {0};
    int rc;

    for (int i = 0; i < os->ncols; i++) {
        bool kept = false;

        for (int j = 0; j < ns->ncols && !kept; j++)
            kept = plan->src[j] == i;
        if (kept)
            continue;
        sb_add(&b, "ALTER TABLE ");
        sb_ident(&b, dest_name);
        sb_add(&b, " DROP COLUMN ");
        sb_ident(&b, os->cols[i].name);
        if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0) {
            err->code = rc = WR_EUNSUPPORTED;
            wr_err_hint(err, "something in the destination (an index, a view, a trigger) uses "
                             "the column: remove it, then resync the table");
            return rc;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < ns->ncols; j++) {
            char tmpname[48];

            if (plan->src[j] < 0 || strcmp(os->cols[plan->src[j]].name, ns->cols[j].name) == 0)
                continue;
            snprintf(tmpname, sizeof(tmpname), "_walrelay_rename_%d", j);
            sb_add(&b, "ALTER TABLE ");
            sb_ident(&b, dest_name);
            sb_add(&b, " RENAME COLUMN ");
            sb_ident(&b, pass == 0 ? os->cols[plan->src[j]].name : tmpname);
            sb_add(&b, " TO ");
            sb_ident(&b, pass == 0 ? tmpname : ns->cols[j].name);
            if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0)
                return rc;
        }
    }
    for (int j = 0; j < ns->ncols; j++) {
        sqlite3_stmt *st = NULL;

        if (plan->src[j] >= 0)
            continue;
        sb_add(&b, "ALTER TABLE ");
        sb_ident(&b, dest_name);
        sb_add(&b, " ADD COLUMN ");
        sb_ident(&b, ns->cols[j].name);
        sb_add(&b, " ");
        sb_add(&b, sqt_decl(ns->cols[j].type_oid));
        if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0)
            return rc;
        if (plan->fill[j].kind == WR_VAL_NULL)
            continue;
        /* the rows that existed read the column's missing value in the source */
        sb_add(&b, "UPDATE ");
        sb_ident(&b, dest_name);
        sb_add(&b, " SET ");
        sb_ident(&b, ns->cols[j].name);
        sb_add(&b, " = ?1");
        if (b.oom) {
            free(b.p);
            return wr_err_set(err, WR_ENOMEM, "out of memory altering table \"%s\"", dest_name);
        }
        rc = sqlite3_prepare_v2(d->db, b.p, -1, &st, NULL) == SQLITE_OK
                 ? 0
                 : sq_fail(d, err, "filling column \"%s\" of table \"%s\"", ns->cols[j].name,
                           dest_name);
        free(b.p);
        memset(&b, 0, sizeof(b));
        if (rc == 0)
            rc = sq_bind_fills(d, nt, st, plan, j, err);
        if (rc == 0 && sqlite3_step(st) != SQLITE_DONE)
            rc = sq_fail(d, err, "filling column \"%s\" of table \"%s\"", ns->cols[j].name,
                         dest_name);
        sqlite3_finalize(st);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Registers ns for relid as the table's current definition (statements prepared),
 * forgotten again if the transaction rolls back. */
static int
sq_register_altered(dest_sqlite_t *d, sq_table_t *nt, wr_err_t *err)
{
    int rc;

    sq_forget(d, nt->relid);
    if ((rc = sq_table_identity(d, nt, err)) < 0 || (rc = sq_table_prepare(d, nt, err)) < 0 ||
        (rc = sq_record_table(d, nt->schema, nt->dest_name, err)) < 0)
        return rc;
    nt->created_in_txn = true;
    nt->next = d->buckets[nt->relid % SQ_BUCKETS];
    d->buckets[nt->relid % SQ_BUCKETS] = nt;
    d->last = nt;
    return 0;
}

static int
sq_alter_table(dest_t *base, const wr_schema_t *os, const wr_schema_t *ns, const dest_alter_t *plan,
               wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    char dest_name[SQ_NAME_MAX], old_name[SQ_NAME_MAX];
    sq_layout_t l;
    sq_table_t *nt = NULL;
    bool in_order = true, rebuild;
    int rc, last = -1;

    if ((rc = sq_need_txn(d, "alter_table", err)) < 0)
        return rc;
    if (os == NULL || ns == NULL || plan == NULL || plan->src == NULL || plan->fill == NULL ||
        plan->meta == NULL || ns->ncols == 0 || os->relid != ns->relid)
        return wr_err_set(err, WR_EINVAL, "alter_table without both schemas and a plan");
    if (d->history)
        return sq_hist_alter(d, os, ns, plan, err);
    dest_schema_table_name(os, old_name, sizeof(old_name));
    dest_schema_table_name(ns, dest_name, sizeof(dest_name));
    if (strcmp(old_name, dest_name) != 0)
        return wr_err_set(err, WR_EINVAL, "alter_table cannot rename table \"%s\" to \"%s\"",
                          old_name, dest_name);
    for (int j = 0; j < ns->ncols; j++) {
        if (plan->src[j] < -1 || plan->src[j] >= os->ncols)
            return wr_err_set(err, WR_EINVAL, "alter_table: column %d maps to %d of %u", j,
                              (int)plan->src[j], (unsigned)os->ncols);
        /* SQLite adds columns at the end: kept columns in order, then the new ones */
        if (plan->src[j] >= 0 && (plan->src[j] <= last || last == INT32_MAX))
            in_order = false;
        if (plan->src[j] >= 0 && last != INT32_MAX)
            last = plan->src[j];
        if (plan->src[j] < 0)
            last = INT32_MAX;
    }
    if ((rc = sq_layout_read(d, dest_name, &l, err)) < 0)
        return rc;
    rc = 0;
    if (l.ncols != os->ncols)
        rc = -1;
    for (int i = 0; rc == 0 && i < l.ncols; i++)
        rc = strcmp(l.names[i], os->cols[i].name) == 0 ? 0 : -1;
    if (rc != 0) {
        wr_err_set(err, WR_EUNSUPPORTED,
                   "destination table \"%s\" does not match its recorded schema (%d columns, "
                   "%u recorded)",
                   dest_name, l.ncols, (unsigned)os->ncols);
        wr_err_hint(err, "the destination table was changed outside walrelay; resync the table");
        sq_layout_free(&l);
        return WR_EUNSUPPORTED;
    }
    rebuild = !in_order || !sq_layout_key_is(&l, ns, plan->src);
    sq_layout_free(&l);
    if ((rc = sq_table_new(ns, dest_name, &nt, err)) < 0)
        return rc;
    rc = rebuild ? sq_rebuild(d, os, nt, dest_name, plan, err)
                 : sq_alter_in_place(d, os, nt, dest_name, plan, err);
    if (rc == 0)
        rc = sq_register_altered(d, nt, err);
    if (rc < 0) {
        /* nt is linked only when sq_register_altered succeeded */
        sq_table_free(nt);
        return rc;
    }
    return sq_version_insert(d, ns, plan->meta, plan->summary, err);
}

/* ---- the copy (issue 11) -------------------------------------------------------------
 *
 * reset_table starts a table's copy and copy_done ends it. In between:
 *   - Commits of this handle are synchronous=NORMAL (in WAL mode: no fsync per commit, the
 *     WAL synced at each checkpoint, never a corrupt file), because a copy that dies is
 *     done again from its start; the commit that holds copy_done is FULL again, and its
 *     fsync of the WAL makes every earlier batch durable with it.
 *   - A table whose PRIMARY KEY is a separate index (anything but one INTEGER column, which
 *     is SQLite's rowid) is staged: the rows go to _walrelay_copy_<relid>, which has the
 *     same columns and no key, and copy_done moves them into the table sorted by the key
 *     (INSERT ... SELECT ... ORDER BY), so that the key's b-tree is built in order instead
 *     of by a random insert per row (20x faster for 1M text keys in 2 MB of cache).
 * A copy that dies leaves its staging table behind; the next copy of the table drops it.
 * The state is per handle (the sync worker's): a rollback of the transaction that
 * started or ended it makes the handle forget the table (registered again by the next
 * ensure_table or reset_table). */

/* Counts the handle's tables in a copy; sq_begin sets synchronous from it (SQLite refuses
 * to change it inside a transaction). A copy that ends in a transaction begun with NORMAL
 * has the WAL synced after that transaction's COMMIT (sq_commit). */
static void
sq_sync_mode(dest_sqlite_t *d)
{
    int copying = 0;

    for (int b = 0; b < SQ_BUCKETS; b++)
        for (const sq_table_t *t = d->buckets[b]; t != NULL; t = t->next)
            copying += t->copying ? 1 : 0;
    if (copying < d->copying && d->in_txn && d->sync_level < 2)
        d->sync_wal = true;
    d->copying = copying;
}

/* True if the table's PRIMARY KEY is an index of its own: more than one column, or one
 * whose declared type is not INTEGER (the rowid's alias). */
static bool
sq_key_is_index(const sq_table_t *t)
{
    int nk = 0, col = -1;

    for (int i = 0; i < t->schema->ncols; i++) {
        if (sq_in_primary_key(t->schema, i)) {
            nk++;
            col = i;
        }
    }
    return nk > 1 || (nk == 1 && strcmp(sqt_decl(t->schema->cols[col].type_oid), "INTEGER") != 0);
}

/* Forgets the committed ranges of relid's last copy (a new copy begins). */
static int
sq_forget_ranges(dest_sqlite_t *d, uint32_t relid, wr_err_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc;

    if ((rc = sq_prepare(d, "DELETE FROM _walrelay_copy_ranges WHERE relid = ?1", &st, err)) < 0)
        return rc;
    sqlite3_bind_int64(st, 1, relid);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sq_fail(d, err, "forgetting the copied ranges");
    sqlite3_finalize(st);
    return rc;
}

/* The table is empty and its copy begins (reset_table). */
static int
sq_copy_start(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err)
{
    sq_buf_t b = {0};
    int rc;

    snprintf(t->stage_name, sizeof(t->stage_name), "_walrelay_copy_%u", (unsigned)t->relid);
    sb_add(&b, "DROP TABLE IF EXISTS ");
    sb_ident(&b, t->stage_name);
    if ((rc = sq_exec_buf(d, &b, t->dest_name, err)) < 0)
        return rc;
    if ((rc = sq_forget_ranges(d, t->relid, err)) < 0)
        return rc;
    t->staged = false;
    if (sq_key_is_index(t)) {
        if ((rc = sq_create_table(d, t->schema, t->stage_name, false, err)) < 0)
            return rc;
        t->staged = true;
    }
    t->copying = true;
    t->created_in_txn = true; /* a rollback forgets the table (see above) */
    if ((rc = sq_prepare_inserts(d, t, err)) < 0)
        return rc;
    sq_sync_mode(d);
    return 0;
}

/* copy_done: moves a staged table's rows into it in key order, drops the staging table,
 * and makes this transaction's commit durable (synchronous=FULL). A duplicate key among
 * the copied rows is WR_EDATA. Inside a transaction. */
static int
sq_copy_done(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sq_buf_t b = {0};
    sq_table_t *t;
    int rc, nk = 0;

    if ((rc = sq_need_txn(d, "copy_done", err)) < 0)
        return rc;
    if ((rc = sq_get_table(d, relid, &t, err)) < 0)
        return rc;
    if (t->staged) {
        sb_add(&b, "INSERT INTO ");
        sb_ident(&b, t->dest_name);
        sb_add(&b, " SELECT * FROM ");
        sb_ident(&b, t->stage_name);
        for (int i = 0; i < t->schema->ncols; i++) {
            if (!sq_in_primary_key(t->schema, i))
                continue;
            sb_add(&b, nk++ ? ", " : " ORDER BY ");
            sb_ident(&b, t->schema->cols[i].name);
        }
        if (b.oom) {
            free(b.p);
            return wr_err_set(err, WR_ENOMEM, "out of memory ending the copy of \"%s\"",
                              t->dest_name);
        }
        if (sqlite3_exec(d->db, b.p, NULL, NULL, NULL) != SQLITE_OK) {
            bool dup = (sqlite3_extended_errcode(d->db) & 0xff) == SQLITE_CONSTRAINT;

            rc = sq_fail(d, err, "moving the copied rows of \"%s\" into it", t->dest_name);
            free(b.p);
            if (dup) {
                err->code = rc = WR_EDATA;
                wr_err_hint(err, "the source sent a primary key twice; resync the table");
            }
            return rc;
        }
        free(b.p);
        b.p = NULL;
        b.len = b.cap = 0;
        sb_add(&b, "DROP TABLE ");
        sb_ident(&b, t->stage_name);
        if ((rc = sq_exec_buf(d, &b, t->dest_name, err)) < 0)
            return rc;
        t->staged = false;
    }
    /* the ranges' records stay until the next copy of the table (sq_copy_start): a worker
     * that dies between this commit and FinishedCopy is followed by one that finds every
     * range committed and copies nothing again */
    t->copying = false;
    t->created_in_txn = true; /* a rollback forgets the table (see above) */
    if ((rc = sq_prepare_inserts(d, t, err)) < 0)
        return rc;
    sq_sync_mode(d);
    return 0;
}

/* range_writers: one writer, SQLite's. */
static int
sq_range_writers(dest_t *base)
{
    /* history mode numbers the copied rows in one sequence (_seq): one COPY, not by range */
    return ((dest_sqlite_t *)base)->history ? 0 : 1;
}

/* commit_range: the range's record, then the commit, made durable (the copy's commits are
 * NORMAL: the WAL is synced after this one). */
static int
sq_commit_range(dest_t *base, uint32_t relid, wr_lsn_t lsn, uint32_t part, uint64_t rows,
                wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sqlite3_stmt *st = NULL;
    int rc;

    if ((rc = sq_need_txn(d, "commit_range", err)) < 0)
        return rc;
    if ((rc = sq_prepare(d,
                         "INSERT OR REPLACE INTO _walrelay_copy_ranges (relid, lsn, part, rows) "
                         "VALUES (?1, ?2, ?3, ?4)",
                         &st, err)) < 0) {
        sq_rollback(base, &(wr_err_t){0});
        return rc;
    }
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, (int64_t)lsn);
    sqlite3_bind_int64(st, 3, part);
    sqlite3_bind_int64(st, 4, (int64_t)rows);
    rc = sqlite3_step(st) == SQLITE_DONE
             ? 0
             : sq_fail(d, err, "recording range %u of table %u", part, (unsigned)relid);
    sqlite3_finalize(st);
    if (rc < 0) {
        sq_rollback(base, &(wr_err_t){0});
        return rc;
    }
    if (d->sync_level < 2)
        d->sync_wal = true;
    return sq_commit(base, NULL, NULL, err);
}

static int
sq_ranges_done(dest_t *base, uint32_t relid, wr_lsn_t lsn, bool *done, uint64_t *rows, uint32_t n,
               wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sqlite3_stmt *st = NULL;
    int rc, r;

    if ((rc = sq_prepare(d,
                         "SELECT part, rows FROM _walrelay_copy_ranges WHERE relid = ?1 AND "
                         "lsn = ?2",
                         &st, err)) < 0)
        return rc;
    sqlite3_bind_int64(st, 1, relid);
    sqlite3_bind_int64(st, 2, (int64_t)lsn);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t part = sqlite3_column_int64(st, 0);

        if (part >= 0 && part < (int64_t)n) {
            done[part] = true;
            rows[part] = (uint64_t)sqlite3_column_int64(st, 1);
        }
    }
    rc = r == SQLITE_DONE
             ? 0
             : sq_fail(d, err, "reading the copied ranges of table %u", (unsigned)relid);
    sqlite3_finalize(st);
    return rc;
}

/* copy_resume: the table registered, and its copy state as reset_table left it (staged if
 * its staging table is there). */
static int
sq_copy_resume(dest_t *base, const wr_schema_t *s, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    sqlite3_stmt *st = NULL;
    sq_table_t *t;
    int rc;

    if ((rc = sq_need_txn(d, "copy_resume", err)) < 0)
        return rc;
    if ((rc = sq_ensure_table(base, s, err)) < 0 || (rc = sq_get_table(d, s->relid, &t, err)) < 0)
        return rc;
    snprintf(t->stage_name, sizeof(t->stage_name), "_walrelay_copy_%u", (unsigned)t->relid);
    if ((rc = sq_prepare(d, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                         &st, err)) < 0)
        return rc;
    sqlite3_bind_text(st, 1, t->stage_name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = sq_fail(d, err, "looking for the staging table of \"%s\"", t->dest_name);
        sqlite3_finalize(st);
        return rc;
    }
    t->staged = sqlite3_column_int64(st, 0) > 0;
    sqlite3_finalize(st);
    t->copying = true;
    t->created_in_txn = true; /* a rollback forgets the table */
    if ((rc = sq_prepare_inserts(d, t, err)) < 0)
        return rc;
    sq_sync_mode(d);
    return 0;
}

static int
sq_reset_table(dest_t *base, const wr_schema_t *s, const dest_tmeta_t *meta, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    char dest_name[SQ_NAME_MAX];
    sqlite3_stmt *st = NULL;
    sq_layout_t l;
    sq_table_t *t;
    bool same;
    int rc;

    if ((rc = sq_need_txn(d, "reset_table", err)) < 0)
        return rc;
    if (s == NULL || s->name == NULL || s->ncols == 0 ||
        (s->dest_name && strlen(s->dest_name) >= sizeof(dest_name)))
        return sq_ensure_table(base, s, err); /* its error */
    dest_schema_table_name(s, dest_name, sizeof(dest_name));
    if (d->history) {
        /* the history stays: only an earlier copy's rows go (sq_truncate), columns that
         * are new are added (sq_hist_ensure) */
        if ((rc = sq_ensure_table(base, s, err)) < 0 ||
            (rc = sq_get_table(d, s->relid, &t, err)) < 0 || (rc = sq_truncate(d, t, err)) < 0)
            return rc;
        t->copy_lsn = meta ? meta->version.commit_lsn : 0;
        goto versions;
    }
    if ((rc = sq_layout_read(d, dest_name, &l, err)) < 0)
        return rc;
    same = l.ncols == s->ncols && sq_layout_key_is(&l, s, NULL);
    for (int i = 0; same && i < l.ncols; i++)
        same = strcmp(l.names[i], s->cols[i].name) == 0 &&
               sqlite3_stricmp(l.decl[i], sqt_decl(s->cols[i].type_oid)) == 0;
    if (l.ncols > 0 && !same && strncmp(dest_name, "_walrelay_", 10) != 0) {
        sq_buf_t b = {0};

        sq_forget(d, s->relid);
        sb_add(&b, "DROP TABLE ");
        sb_ident(&b, dest_name);
        if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0) {
            sq_layout_free(&l);
            return rc;
        }
    }
    sq_layout_free(&l);
    if ((rc = sq_ensure_table(base, s, err)) < 0 || (rc = sq_get_table(d, s->relid, &t, err)) < 0 ||
        (rc = sq_truncate(d, t, err)) < 0 || (rc = sq_copy_start(d, t, err)) < 0)
        return rc;
versions:
    if (meta == NULL)
        return 0;
    if ((rc = sq_prepare(d, "DELETE FROM _walrelay_schemas WHERE relid = ?1", &st, err)) < 0)
        return rc;
    sqlite3_bind_int64(st, 1, s->relid);
    rc = sqlite3_step(st) == SQLITE_DONE
             ? 0
             : sq_fail(d, err, "forgetting the schema versions of \"%s\"", dest_name);
    sqlite3_finalize(st);
    if (rc < 0)
        return rc;
    return sq_version_insert(d, s, meta, "copy", err);
}

/* ---- open and close ----------------------------------------------------------------- */

static void
sq_close(dest_t *base)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;

    if (d == NULL)
        return;
    if (d->in_txn && d->db != NULL)
        sq_rollback(base, &(wr_err_t){0});
    for (int b = 0; b < SQ_BUCKETS; b++) {
        sq_table_t *t = d->buckets[b], *next;

        for (; t != NULL; t = next) {
            next = t->next;
            sq_table_free(t);
        }
    }
    sqlite3_finalize(d->st_begin);
    sqlite3_finalize(d->st_commit);
    sqlite3_finalize(d->st_rollback);
    sqlite3_finalize(d->st_key_put);
    sqlite3_finalize(d->st_key_get);
    sqlite3_finalize(d->st_key_del);
    if (d->db != NULL)
        sqlite3_close(d->db);
    free(d->scratch);
    free(d->path);
    free(d);
}

static int
sq_open(const wr_config_t *cfg, dest_t **out, wr_err_t *err)
{
    dest_sqlite_t *d;
    sqlite3_stmt *st = NULL;
    char *path = NULL;
    int rc;

    *out = NULL;
    if ((rc = dest_config_path(cfg, "path", &path, err)) < 0)
        return rc;
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        free(path);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the sqlite destination");
    }
    d->base.ops = &dest_sqlite_ops;
    d->path = path;
    d->history = dest_config_value(cfg, "mode") != NULL &&
                 strcmp(dest_config_value(cfg, "mode"), "history") == 0;
    /* No allocation statistics (a global mutex taken for every malloc): only possible
     * before SQLite is initialised in this process, which is the case in the workers;
     * elsewhere (the supervisor's state store came first) it is refused and harmless. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    /* NOMUTEX: a handle is used by one thread at a time (destination.h), so SQLite's
     * per-connection mutex is not needed on every call */
    if (sqlite3_open_v2(d->path, &d->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = sq_fail(d, err, "opening destination database \"%s\"", d->path);
        goto fail;
    }
    /* several processes write this file: wait for each other's transactions */
    sqlite3_busy_timeout(d->db, 60000);
    if ((rc = sq_prepare(d, "PRAGMA journal_mode=WAL", &st, err)) < 0)
        goto fail;
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = sq_fail(d, err, "setting journal_mode=WAL on \"%s\"", d->path);
        goto fail;
    }
    if (sqlite3_column_text(st, 0) == NULL ||
        strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
        rc = wr_err_set(
            err, WR_EDEST, "destination database \"%s\" refused WAL mode (journal_mode is \"%s\")",
            d->path, sqlite3_column_text(st, 0) ? (const char *)sqlite3_column_text(st, 0) : "");
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* a COMMIT must be on disk before its LSN is confirmed to PostgreSQL */
    if ((rc = sq_exec(d, "PRAGMA synchronous=FULL", err)) < 0 ||
        (rc = sq_exec(d, "PRAGMA foreign_keys=OFF", err)) < 0)
        goto fail;
    /* 16 MiB of page cache (2 MiB by default): a copy's b-trees and a stream's working
     * set stay in memory instead of being read back from the file */
    if ((rc = sq_exec(d, "PRAGMA cache_size=-16384", err)) < 0)
        goto fail;
    d->max_params = sqlite3_limit(d->db, SQLITE_LIMIT_VARIABLE_NUMBER, -1);
    d->sync_level = 2;
    if ((rc = sq_exec(d,
                      "CREATE TABLE IF NOT EXISTS _walrelay_progress ("
                      "stream TEXT PRIMARY KEY, commit_lsn INTEGER NOT NULL, "
                      "ordinal INTEGER NOT NULL, updated_at TEXT)",
                      err)) < 0 ||
        (rc = sq_exec(d,
                      "CREATE TABLE IF NOT EXISTS _walrelay_tables ("
                      "relid INTEGER PRIMARY KEY, nsp TEXT NOT NULL, name TEXT NOT NULL, "
                      "dest_name TEXT NOT NULL, columns_json TEXT, updated_at TEXT)",
                      err)) < 0 ||
        (rc = sq_exec(d,
                      "CREATE TABLE IF NOT EXISTS _walrelay_schemas ("
                      "relid INTEGER NOT NULL, version_lsn INTEGER NOT NULL, "
                      "version_ordinal INTEGER NOT NULL, nsp TEXT NOT NULL, name TEXT NOT NULL, "
                      "columns_json TEXT NOT NULL, relfilenode INTEGER NOT NULL, "
                      "attstate TEXT NOT NULL, attxmins TEXT NOT NULL, change TEXT, "
                      "recorded_at TEXT, PRIMARY KEY (relid, version_lsn, version_ordinal))",
                      err)) < 0 ||
        (rc = sq_exec(d,
                      "CREATE TABLE IF NOT EXISTS _walrelay_copy_ranges ("
                      "relid INTEGER NOT NULL, lsn INTEGER NOT NULL, part INTEGER NOT NULL, "
                      "rows INTEGER NOT NULL, PRIMARY KEY (relid, part))",
                      err)) < 0 ||
        (rc = sq_mode_check(d, cfg, err)) < 0)
        goto fail;
    if ((rc = sq_prepare(d, "BEGIN IMMEDIATE", &d->st_begin, err)) < 0 ||
        (rc = sq_prepare(d, "COMMIT", &d->st_commit, err)) < 0 ||
        (rc = sq_prepare(d, "ROLLBACK", &d->st_rollback, err)) < 0 ||
        (rc = sq_prepare(d,
                         "INSERT INTO _walrelay_progress (stream, commit_lsn, ordinal, updated_at) "
                         "VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
                         "ON CONFLICT (stream) DO UPDATE SET commit_lsn = excluded.commit_lsn, "
                         "ordinal = excluded.ordinal, updated_at = excluded.updated_at",
                         &d->st_key_put, err)) < 0 ||
        (rc = sq_prepare(d, "SELECT commit_lsn, ordinal FROM _walrelay_progress WHERE stream = ?1",
                         &d->st_key_get, err)) < 0 ||
        (rc = sq_prepare(d, "DELETE FROM _walrelay_progress WHERE stream = ?1", &d->st_key_del,
                         err)) < 0)
        goto fail;
    *out = &d->base;
    return 0;
fail:
    sqlite3_finalize(st);
    sq_close(&d->base);
    return rc;
}

static int
sq_forget_table(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;

    if (d->in_txn)
        return wr_err_set(err, WR_EINVAL, "forget_table inside a transaction");
    sq_forget(d, relid);
    return 0;
}

/* ---- history mode (issue 9) ------------------------------------------------------------
 *
 * [destination] mode = history: each source table's destination table keeps every change
 * as a new row instead of applying it: the source's columns (no PRIMARY KEY) and
 *   _change_type  'copy' (a row of the table's copy), 'insert', 'update', 'delete',
 *                 'truncate' (a row whose source columns are all NULL)
 *   _commit_lsn   the commit LSN of the source transaction (the uint64 as INTEGER, like
 *                 _walrelay_progress; a copy's rows: its consistent point)
 *   _seq          the change's ordinal in its transaction (its resume key with
 *                 _commit_lsn); a copy's rows: 1, 2, ... in copy order
 *   _commit_time  the commit time, RFC 3339 UTC text; NULL for a copy's rows
 *   _old_key      an update that changed the key: the old key as a JSON object (the JSON
 *                 of docs/events.md, common/json.c); else NULL
 * Rows are appended in commit order, in the same transaction as the stream's resume key,
 * so a replay after a crash appends nothing twice (exactly once). An update's row holds
 * the new values; a column PostgreSQL did not send (unchanged TOAST) takes its value from
 * the old row (REPLICA IDENTITY FULL) or the key's latest row. A delete's row holds the
 * old values: the old row (FULL), or the key's latest row with the key the source sent.
 * The key columns (of REPLICA IDENTITY DEFAULT / USING INDEX) get an index
 * "_walrelay_hk_<table>_<hash>" for those lookups.
 * A copy (first or again: resync, a crash during it) replaces only the rows of an earlier
 * copy (_change_type 'copy'); changes stay. Schema changes never drop anything: new
 * columns are added (the history's earlier rows read NULL there), renames rename, a
 * dropped column stays (NULL in later rows). The mode is recorded in _walrelay_meta at the
 * first open; a file of the other mode is refused.
 */

/* RFC 3339 UTC with microseconds. */
static void
sq_hist_time(int64_t us, char *buf, size_t len)
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    struct tm tm;
    time_t tt;

    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    tt = (time_t)secs;
    if (gmtime_r(&tt, &tm) == NULL) {
        snprintf(buf, len, "?");
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
}

/* The table exists with the history columns: 0 (the schema's columns it lacks are added),
 * 1 if it does not exist, or an error. */
static int
sq_hist_ensure(dest_sqlite_t *d, const wr_schema_t *s, const char *dest_name, wr_err_t *err)
{
    static const char *const meta[] = {"_change_type", "_commit_lsn", "_seq", "_commit_time",
                                       "_old_key"};
    sq_layout_t l;
    int rc;

    if ((rc = sq_layout_read(d, dest_name, &l, err)) < 0)
        return rc;
    if (l.ncols == 0)
        return 1;
    for (size_t m = 0; m < sizeof(meta) / sizeof(meta[0]); m++) {
        bool have = false;

        for (int i = 0; i < l.ncols && !have; i++)
            have = strcmp(l.names[i], meta[m]) == 0;
        if (!have) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "destination table \"%s\" has no column \"%s\": it was not made in history "
                       "mode",
                       dest_name, meta[m]);
            wr_err_hint(err, "rename or drop the table in the destination, then resync the table");
            sq_layout_free(&l);
            return WR_EUNSUPPORTED;
        }
    }
    for (int j = 0; j < s->ncols; j++) {
        bool have = false;
        sq_buf_t b = {0};

        for (int i = 0; i < l.ncols && !have; i++)
            have = strcmp(l.names[i], s->cols[j].name) == 0;
        if (have)
            continue;
        sb_add(&b, "ALTER TABLE ");
        sb_ident(&b, dest_name);
        sb_add(&b, " ADD COLUMN ");
        sb_ident(&b, s->cols[j].name);
        sb_add(&b, " ");
        sb_add(&b, sqt_decl(s->cols[j].type_oid));
        if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0) {
            sq_layout_free(&l);
            return rc;
        }
    }
    sq_layout_free(&l);
    return 0;
}

/* Statements of a history table: the append, the deletion of a copy's rows, the lookup of
 * a key's latest row (and its index). */
static int
sq_hist_prepare(dest_sqlite_t *d, sq_table_t *t, wr_err_t *err)
{
    const wr_schema_t *s = t->schema;
    sq_buf_t b = {0};
    uint32_t h = 2166136261u;
    char idx[SQ_NAME_MAX + 32];
    int rc;

    sb_add(&b, "INSERT INTO ");
    sb_ident(&b, t->dest_name);
    sb_add(&b, " (");
    for (int i = 0; i < s->ncols; i++) {
        sb_ident(&b, s->cols[i].name);
        sb_add(&b, ", ");
    }
    sb_add(&b, "_change_type, _commit_lsn, _seq, _commit_time, _old_key) VALUES (");
    for (int i = 0; i < s->ncols + 5; i++)
        sb_addf(&b, "%s?%d", i ? ", " : "", i + 1);
    sb_add(&b, ")");
    if (b.oom)
        goto oom;
    if ((rc = sq_prepare(d, b.p, &t->ins, err)) < 0)
        goto out;
    b.len = 0;
    sb_add(&b, "DELETE FROM ");
    sb_ident(&b, t->dest_name);
    sb_add(&b, " WHERE _change_type = 'copy'");
    if (b.oom)
        goto oom;
    if ((rc = sq_prepare(d, b.p, &t->trunc, err)) < 0)
        goto out;
    rc = 0;
    /* FULL sends whole old rows: no lookups; NOTHING has no key */
    if (t->nkeys == 0 || s->replident == 'f')
        goto out;
    for (int j = 0; j < t->nkeys; j++)
        for (const char *p = s->cols[t->keys[j]].name; *p; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
    snprintf(idx, sizeof(idx), "_walrelay_hk_%s_%08x", t->dest_name, (unsigned)h);
    b.len = 0;
    sb_add(&b, "CREATE INDEX IF NOT EXISTS ");
    sb_ident(&b, idx);
    sb_add(&b, " ON ");
    sb_ident(&b, t->dest_name);
    sb_add(&b, " (");
    for (int j = 0; j < t->nkeys; j++) {
        if (j)
            sb_add(&b, ", ");
        sb_ident(&b, s->cols[t->keys[j]].name);
    }
    sb_add(&b, ")");
    if (b.oom)
        goto oom;
    if (sqlite3_exec(d->db, b.p, NULL, NULL, NULL) != SQLITE_OK) {
        rc = sq_fail(d, err, "creating the key index of history table \"%s\"", t->dest_name);
        goto out;
    }
    b.len = 0;
    sb_add(&b, "SELECT ");
    for (int i = 0; i < s->ncols; i++) {
        if (i)
            sb_add(&b, ", ");
        sb_ident(&b, s->cols[i].name);
    }
    sb_add(&b, " FROM ");
    sb_ident(&b, t->dest_name);
    sb_add(&b, " WHERE _change_type <> 'truncate'");
    for (int j = 0; j < t->nkeys; j++) {
        sb_add(&b, " AND ");
        sb_ident(&b, s->cols[t->keys[j]].name);
        sb_addf(&b, " = ?%d", j + 1);
    }
    sb_add(&b, " ORDER BY rowid DESC LIMIT 1");
    if (b.oom)
        goto oom;
    rc = sq_prepare(d, b.p, &t->hprev, err);
    goto out;
oom:
    rc = wr_err_set(err, WR_ENOMEM, "out of memory preparing statements for \"%s\"", t->dest_name);
out:
    free(b.p);
    return rc;
}

/* Steps hprev for the key columns of row: 1 with its row current, 0 if the key has no
 * row yet (the statement is then reset). */
static int
sq_hist_lookup(dest_sqlite_t *d, sq_table_t *t, const wr_row_t *row, wr_err_t *err)
{
    int rc, r;

    if (t->hprev == NULL)
        return 0;
    for (int j = 0; j < t->nkeys; j++) {
        const wr_val_t *v = &row->vals[t->keys[j]];

        if (v->kind != WR_VAL_TEXT) {
            sqlite3_reset(t->hprev);
            return 0;
        }
        if ((rc = sq_bind(d, t, t->hprev, j + 1, t->keys[j], v, err)) < 0) {
            sqlite3_reset(t->hprev);
            return rc;
        }
    }
    r = sqlite3_step(t->hprev);
    if (r == SQLITE_ROW)
        return 1;
    sqlite3_reset(t->hprev);
    if (r != SQLITE_DONE)
        return sq_fail(d, err, "reading the history of table \"%s\"", t->dest_name);
    return 0;
}

/* Appends one history row. Column i takes row's value, unless it is UNCHANGED (or, with
 * keys_only, not a key column): then the current row of t->hprev (found), else NULL. */
static int
sq_hist_append(dest_sqlite_t *d, sq_table_t *t, const char *type, bool has_lsn, wr_lsn_t lsn,
               int64_t seq, const char *time, const wr_row_t *row, bool keys_only, bool found,
               const char *old_key, wr_err_t *err)
{
    sqlite3_stmt *st = t->ins;
    int n = t->schema->ncols, rc;

    if ((rc = sq_scratch_reserve(d, sq_blob_need(t, row), err)) < 0)
        return rc;
    for (int i = 0; i < n; i++) {
        const wr_val_t *v = row ? &row->vals[i] : NULL;
        bool mine =
            v != NULL && v->kind != WR_VAL_UNCHANGED && (!keys_only || t->schema->cols[i].is_key);

        if (mine)
            rc = sq_bind(d, t, st, i + 1, i, v, err);
        else if (found)
            rc = sqlite3_bind_value(st, i + 1, sqlite3_column_value(t->hprev, i)) == SQLITE_OK
                     ? 0
                     : sq_fail(d, err, "binding column \"%s\" of table \"%s\"",
                               t->schema->cols[i].name, t->dest_name);
        else if (v != NULL && v->kind == WR_VAL_UNCHANGED)
            rc = wr_err_set(err, WR_EDATA,
                            "the history of table \"%s\" has no earlier row to take the "
                            "unchanged value of column \"%s\" from",
                            t->dest_name, t->schema->cols[i].name);
        else
            rc = sqlite3_bind_null(st, i + 1) == SQLITE_OK ? 0 : WR_EDEST;
        if (rc < 0) {
            if (rc == WR_EDATA)
                wr_err_hint(err, "resync the table: its copy starts the history again");
            sqlite3_reset(st);
            return rc;
        }
    }
    sqlite3_bind_text(st, n + 1, type, -1, SQLITE_STATIC);
    if (has_lsn)
        sqlite3_bind_int64(st, n + 2, (int64_t)lsn);
    else
        sqlite3_bind_null(st, n + 2);
    sqlite3_bind_int64(st, n + 3, seq);
    if (time != NULL)
        sqlite3_bind_text(st, n + 4, time, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, n + 4);
    if (old_key != NULL)
        sqlite3_bind_text(st, n + 5, old_key, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, n + 5);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = sq_fail(d, err, "appending to history table \"%s\"", t->dest_name);
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);
    return 0;
}

/* {"key column": value, ...} of an old key row, in the JSON of docs/events.md. */
static int
sq_hist_old_key(const sq_table_t *t, const wr_row_t *row, jw_buf_t *b, wr_err_t *err)
{
    bool first = true;

    jw_raw(b, "{", 1);
    for (int i = 0; i < t->schema->ncols; i++) {
        const wr_column_t *c = &t->schema->cols[i];
        const wr_val_t *v = &row->vals[i];

        if (!c->is_key)
            continue;
        if (!first)
            jw_raw(b, ",", 1);
        first = false;
        jw_cstr(b, c->name);
        jw_raw(b, ":", 1);
        jw_value(b, c->type_oid, v->kind == WR_VAL_TEXT ? 't' : 'n', v->data, v->len);
    }
    jw_raw(b, "}", 1);
    if (jw_failed(b))
        return wr_err_set(err, WR_ENOMEM, "out of memory writing an old key");
    return 0;
}

static int
sq_hist_copy_row(dest_sqlite_t *d, sq_table_t *t, const wr_row_t *row, wr_err_t *err)
{
    int rc;

    if ((rc = sq_check_row(t, row, "copy", err)) < 0)
        return rc;
    return sq_hist_append(d, t, "copy", t->copy_lsn != 0, t->copy_lsn, ++t->copy_seq, NULL, row,
                          false, false, NULL, err);
}

static int
sq_hist_event(dest_sqlite_t *d, sq_table_t *t, const dest_event_t *ev, wr_err_t *err)
{
    char when[48];
    const wr_row_t *keyrow = NULL;
    bool found = false, any_unchanged = false;
    jw_buf_t okey;
    int rc;

    jw_init(&okey);

    sq_hist_time(ev->commit_ts, when, sizeof(when));
    switch (ev->kind) {
    case DEST_EV_INSERT:
        if ((rc = sq_check_row(t, ev->new_row, "insert", err)) < 0)
            return rc;
        return sq_hist_append(d, t, "insert", true, ev->key.commit_lsn, ev->key.ordinal, when,
                              ev->new_row, false, false, NULL, err);
    case DEST_EV_UPDATE:
        if ((rc = sq_check_row(t, ev->new_row, "update", err)) < 0)
            return rc;
        for (int i = 0; i < t->schema->ncols; i++)
            any_unchanged = any_unchanged || ev->new_row->vals[i].kind == WR_VAL_UNCHANGED;
        if (any_unchanged && ev->old_kind == 'O' && ev->old_row != NULL) {
            /* FULL: the old row has every value; append it merged with the new one */
            wr_val_t *vals = malloc(sizeof(*vals) * (t->schema->ncols ? t->schema->ncols : 1));
            wr_row_t merged = {t->schema->ncols, vals};

            if (vals == NULL)
                return wr_err_set(err, WR_ENOMEM, "out of memory");
            if ((rc = sq_check_row(t, ev->old_row, "old row of update", err)) < 0) {
                free(vals);
                return rc;
            }
            for (int i = 0; i < t->schema->ncols; i++)
                vals[i] = ev->new_row->vals[i].kind == WR_VAL_UNCHANGED ? ev->old_row->vals[i]
                                                                        : ev->new_row->vals[i];
            rc = sq_hist_append(d, t, "update", true, ev->key.commit_lsn, ev->key.ordinal, when,
                                &merged, false, false, NULL, err);
            free(vals);
            return rc;
        }
        if (any_unchanged) {
            keyrow = ev->old_kind == 'K' && ev->old_row ? ev->old_row : ev->new_row;
            if ((rc = sq_hist_lookup(d, t, keyrow, err)) < 0)
                return rc;
            found = rc == 1;
        }
        if (ev->old_kind == 'K' && ev->old_row != NULL &&
            (rc = sq_hist_old_key(t, ev->old_row, &okey, err)) < 0) {
            if (found)
                sqlite3_reset(t->hprev);
            return rc;
        }
        rc = sq_hist_append(d, t, "update", true, ev->key.commit_lsn, ev->key.ordinal, when,
                            ev->new_row, false, found, okey.len ? okey.data : NULL, err);
        if (found)
            sqlite3_reset(t->hprev);
        jw_free(&okey);
        return rc;
    case DEST_EV_DELETE:
        if ((rc = sq_check_row(t, ev->old_row, "delete", err)) < 0)
            return rc;
        if (ev->old_kind != 'O') {
            /* the key only: the other old values from the key's latest row */
            if ((rc = sq_hist_lookup(d, t, ev->old_row, err)) < 0)
                return rc;
            found = rc == 1;
        }
        rc = sq_hist_append(d, t, "delete", true, ev->key.commit_lsn, ev->key.ordinal, when,
                            ev->old_row, ev->old_kind != 'O', found, NULL, err);
        if (found)
            sqlite3_reset(t->hprev);
        return rc;
    case DEST_EV_TRUNCATE:
        return sq_hist_append(d, t, "truncate", true, ev->key.commit_lsn, ev->key.ordinal, when,
                              NULL, false, false, NULL, err);
    case DEST_EV_BEGIN:
    case DEST_EV_COMMIT:
        return 0;
    }
    return wr_err_set(err, WR_EINVAL, "event of unknown kind %d for table \"%s\"", (int)ev->kind,
                      t->dest_name);
}

/* A followed schema change: renames, new columns added; nothing is dropped. */
static int
sq_hist_alter(dest_sqlite_t *d, const wr_schema_t *os, const wr_schema_t *ns,
              const dest_alter_t *plan, wr_err_t *err)
{
    char dest_name[SQ_NAME_MAX];
    sq_table_t *nt = NULL;
    sq_buf_t b = {0};
    int rc;

    dest_schema_table_name(ns, dest_name, sizeof(dest_name));
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < ns->ncols; j++) {
            char tmpname[48];

            if (plan->src[j] < 0 || strcmp(os->cols[plan->src[j]].name, ns->cols[j].name) == 0)
                continue;
            snprintf(tmpname, sizeof(tmpname), "_walrelay_rename_%d", j);
            sb_add(&b, "ALTER TABLE ");
            sb_ident(&b, dest_name);
            sb_add(&b, " RENAME COLUMN ");
            sb_ident(&b, pass == 0 ? os->cols[plan->src[j]].name : tmpname);
            sb_add(&b, " TO ");
            sb_ident(&b, pass == 0 ? tmpname : ns->cols[j].name);
            if ((rc = sq_exec_buf(d, &b, dest_name, err)) < 0) {
                err->code = rc = WR_EUNSUPPORTED;
                wr_err_hint(err, "a column of that name is in the history already (dropped "
                                 "earlier): rename it in the destination, then resync the table");
                return rc;
            }
        }
    }
    /* added columns (and a name dropped earlier that comes back: reused) */
    if ((rc = sq_hist_ensure(d, ns, dest_name, err)) < 0)
        return rc;
    if ((rc = sq_table_new(ns, dest_name, &nt, err)) < 0)
        return rc;
    if ((rc = sq_register_altered(d, nt, err)) < 0) {
        sq_table_free(nt);
        return rc;
    }
    return sq_version_insert(d, ns, plan->meta, plan->summary, err);
}

/* _walrelay_meta(key, value): the destination's mode, recorded at the first open. A file
 * holding tables of the other mode is refused. */
static int
sq_mode_check(dest_sqlite_t *d, const wr_config_t *cfg, wr_err_t *err)
{
    const char *want = d->history ? "history" : "mirror";
    sqlite3_stmt *st = NULL;
    char have[32] = "";
    int64_t ntables = 0;
    int rc;

    if ((rc = sq_exec(d,
                      "CREATE TABLE IF NOT EXISTS _walrelay_meta (key TEXT PRIMARY KEY, "
                      "value TEXT NOT NULL)",
                      err)) < 0)
        return rc;
    if ((rc = sq_prepare(d, "SELECT value FROM _walrelay_meta WHERE key = 'mode'", &st, err)) < 0)
        return rc;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        snprintf(have, sizeof(have), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    if (have[0] == '\0') {
        /* a file from before modes existed holds mirror tables */
        if ((rc = sq_prepare(d, "SELECT count(*) FROM _walrelay_tables", &st, err)) < 0)
            return rc;
        if (sqlite3_step(st) == SQLITE_ROW)
            ntables = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        st = NULL;
        snprintf(have, sizeof(have), "%s", ntables > 0 ? "mirror" : want);
        if ((rc = sq_prepare(
                 d, "INSERT OR IGNORE INTO _walrelay_meta (key, value) VALUES ('mode', ?1)", &st,
                 err)) < 0)
            return rc;
        sqlite3_bind_text(st, 1, have, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sq_fail(d, err, "recording the mode");
        sqlite3_finalize(st);
        if (rc < 0)
            return rc;
    }
    if (strcmp(have, want) != 0) {
        dest_config_error(cfg, "mode", WR_ECONFIG, err,
                          "the destination \"%s\" holds %s tables, not %s ones", d->path, have,
                          want);
        wr_err_hint(err, "a file keeps the mode it was made with: set mode back, or give path a "
                         "new file (and resync every table)");
        return WR_ECONFIG;
    }
    return 0;
}

/* ---- streamed transactions (issue 11) ---------------------------------------------- */

/* Table mode writes changes by key and ignores keys and boundary events; history mode
 * stores each change's commit LSN, which a streamed transaction does not know yet. */
static bool
sq_can_stream(dest_t *base)
{
    return !((dest_sqlite_t *)base)->history;
}

static int
sq_savepoint_sql(dest_sqlite_t *d, const char *verb, const char *name, wr_err_t *err)
{
    char sql[96];
    int rc;

    if ((rc = sq_need_txn(d, verb, err)) < 0)
        return rc;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return wr_err_set(err, WR_EINVAL,
                              "savepoint name \"%s\" has a character other "
                              "than a-z, 0-9 and _",
                              name);
    snprintf(sql, sizeof(sql), "%s %s", verb, name);
    if (sqlite3_exec(d->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail(d, err, "%s", sql);
    return 0;
}

static int
sq_savepoint(dest_t *base, const char *name, wr_err_t *err)
{
    return sq_savepoint_sql((dest_sqlite_t *)base, "SAVEPOINT", name, err);
}

static int
sq_rollback_to(dest_t *base, const char *name, wr_err_t *err)
{
    dest_sqlite_t *d = (dest_sqlite_t *)base;
    int rc = sq_savepoint_sql(d, "ROLLBACK TO SAVEPOINT", name, err);

    if (rc != 0)
        return rc;
    /* a table created after the savepoint is gone again; forgetting every table created
     * in this transaction is more than needed and harmless (ensure_table registers the
     * ones that still exist again) */
    for (int b = 0; b < SQ_BUCKETS; b++) {
        sq_table_t *t = d->buckets[b], *next;

        for (; t != NULL; t = next) {
            next = t->next;
            if (t->created_in_txn) {
                sq_unlink(d, t);
                sq_table_free(t);
            }
        }
    }
    return 0;
}

const dest_ops_t dest_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .ensure_table = sq_ensure_table,
    .begin = sq_begin,
    .truncate_table = sq_truncate_table,
    .write_rows = sq_write_rows,
    .write_event = sq_write_event,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .last_key = sq_last_key,
    .clear_key = sq_clear_key,
    .count_rows = sq_count_rows,
    .close = sq_close,
    .get_version = sq_get_version,
    .put_version = sq_put_version,
    .alter_table = sq_alter_table,
    .reset_table = sq_reset_table,
    .copy_done = sq_copy_done,
    .range_writers = sq_range_writers,
    .commit_range = sq_commit_range,
    .ranges_done = sq_ranges_done,
    .copy_resume = sq_copy_resume,
    .can_stream = sq_can_stream,
    .savepoint = sq_savepoint,
    .rollback_to = sq_rollback_to,
    .forget_table = sq_forget_table,
    .durable = sq_durable,
};
