/*
 * store_db.c - statements and results on SQLite or PostgreSQL for the event store
 * (store_db.h).
 *
 * NOTES: internal to destinations/eventstore; runs wherever the store is open (the
 * workers, the walrelay command, programs linked with libwalrelay-eventstore). Persists
 * nothing itself. PGresults are cleared and SQLite statements reset on every path.
 * Error messages carry the server's or SQLite's message, never a conninfo.
 */
#include "store_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ES_SQL_MAX 4096

/* SQLite wants ?N where the SQL says $N. */
static int
es_sqlite_sql(const char *in, char *out, size_t cap)
{
    size_t o = 0;

    for (const char *p = in; *p; p++) {
        if (o + 2 >= cap)
            return -1;
        out[o++] = (*p == '$' && p[1] >= '0' && p[1] <= '9') ? '?' : *p;
    }
    out[o] = '\0';
    return 0;
}

static int
es_sq_fail(es_db_t *db, wr_es_error_t *err, const char *what)
{
    int ext = sqlite3_extended_errcode(db->sq);

    es_err(err, WR_ES_ESTORE, "%s: %s", what, sqlite3_errmsg(db->sq));
    if ((ext & 0xff) == SQLITE_BUSY)
        es_hint(err, "another process held the event store's write lock for more than the "
                     "busy timeout; retry");
    else if ((ext & 0xff) == SQLITE_CONSTRAINT)
        es_hint(err, "a uniqueness backstop of the event store refused a duplicate (see "
                     "docs/eventstore.md, \"What it promises\")");
    return WR_ES_ESTORE;
}

static int
es_pg_fail(es_db_t *db, PGresult *res, wr_es_error_t *err, const char *what)
{
    const char *m = res ? PQresultErrorMessage(res) : PQerrorMessage(db->pg);
    char msg[900];
    size_t n;

    snprintf(msg, sizeof(msg), "%s", m && m[0] ? m : "unknown error");
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    es_err(err, WR_ES_ESTORE, "%s: %s", what, msg);
    if (PQstatus(db->pg) != CONNECTION_OK)
        es_hint(err, "the connection to the event store's database was lost");
    if (res)
        PQclear(res);
    return WR_ES_ESTORE;
}

static int
es_sq_bind(es_db_t *db, sqlite3_stmt *st, const es_param_t *params, int n, wr_es_error_t *err)
{
    for (int i = 0; i < n; i++) {
        int rc;

        switch (params[i].type) {
        case 'i':
            rc = sqlite3_bind_int64(st, i + 1, params[i].i);
            break;
        case 't':
            rc = sqlite3_bind_text(st, i + 1, params[i].p, (int)params[i].len, SQLITE_STATIC);
            break;
        case 'b':
            rc = sqlite3_bind_blob(st, i + 1, params[i].len ? params[i].p : "", (int)params[i].len,
                                   SQLITE_STATIC);
            break;
        default:
            rc = sqlite3_bind_null(st, i + 1);
            break;
        }
        if (rc != SQLITE_OK)
            return es_sq_fail(db, err, "binding a parameter");
    }
    return 0;
}

int
es_db_query(es_db_t *db, int q, const char *sql, const es_param_t *params, int nparams, es_res_t *r,
            wr_es_error_t *err)
{
    memset(r, 0, sizeof(*r));
    r->db = db;
    for (int k = 0; k < 4; k++)
        r->blob_col[k] = -1;
    if (q >= 0)
        sql = db->sql[q][db->backend == ES_BACKEND_PG ? 1 : 0];
    if (db->backend == ES_BACKEND_SQLITE) {
        sqlite3_stmt *st = q >= 0 ? db->stmts[q] : NULL;
        char buf[ES_SQL_MAX];
        char *big = NULL;
        const char *text = buf;

        if (st == NULL) {
            size_t cap = strlen(sql) + 1;

            if (cap > sizeof(buf)) {
                big = malloc(cap);
                if (big == NULL)
                    return es_err(err, WR_ES_ENOMEM, "out of memory preparing a statement");
                text = big;
            }
            if (es_sqlite_sql(sql, (char *)text, cap > sizeof(buf) ? cap : sizeof(buf)) < 0) {
                free(big);
                return es_err(err, WR_ES_EINVAL, "statement too long");
            }
            if (sqlite3_prepare_v3(db->sq, text, -1, q >= 0 ? SQLITE_PREPARE_PERSISTENT : 0, &st,
                                   NULL) != SQLITE_OK) {
                free(big);
                return es_sq_fail(db, err, "preparing a statement");
            }
            free(big);
            if (q >= 0)
                db->stmts[q] = st;
            else
                r->st_own = true;
        }
        r->st = st;
        if (es_sq_bind(db, st, params, nparams, err) < 0) {
            es_res_close(r);
            return WR_ES_ESTORE;
        }
        return 0;
    }
    /* PostgreSQL */
    {
        const char *vals[64];
        int lens[64], fmts[64];
        char nums[64][24];
        char name[16];
        PGresult *res;

        if (nparams > 64)
            return es_err(err, WR_ES_EINVAL, "too many parameters (%d, at most 64)", nparams);
        for (int i = 0; i < nparams; i++) {
            fmts[i] = 0;
            lens[i] = 0;
            switch (params[i].type) {
            case 'i':
                snprintf(nums[i], sizeof(nums[i]), "%lld", (long long)params[i].i);
                vals[i] = nums[i];
                break;
            case 't':
                /* text format: the caller's text is NUL-terminated at len (store_db.h) */
                vals[i] = params[i].p;
                break;
            case 'b':
                vals[i] = params[i].len ? params[i].p : "";
                lens[i] = (int)params[i].len;
                fmts[i] = 1;
                break;
            default:
                vals[i] = NULL;
                break;
            }
        }
        if (q >= 0) {
            snprintf(name, sizeof(name), "es_q%d", q);
            if (!db->pg_prepared[q]) {
                res = PQprepare(db->pg, name, sql, 0, NULL);
                if (PQresultStatus(res) != PGRES_COMMAND_OK)
                    return es_pg_fail(db, res, err, "preparing a statement");
                PQclear(res);
                db->pg_prepared[q] = true;
            }
            res = PQexecPrepared(db->pg, name, nparams, vals, lens, fmts, 0);
        } else {
            res = PQexecParams(db->pg, sql, nparams, NULL, vals, lens, fmts, 0);
        }
        if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
            return es_pg_fail(db, res, err, "running a statement");
        r->pg = res;
        r->row = -1;
        r->nrows = PQntuples(res);
        return 0;
    }
}

static void
es_res_free_blobs(es_res_t *r)
{
    for (int k = 0; k < 4; k++) {
        free(r->blob[k]);
        r->blob[k] = NULL;
        r->blob_col[k] = -1;
    }
}

int
es_res_next(es_res_t *r, wr_es_error_t *err)
{
    if (r->st != NULL) {
        int rc = sqlite3_step(r->st);

        r->st_row = rc == SQLITE_ROW;
        if (rc == SQLITE_ROW)
            return 1;
        if (rc == SQLITE_DONE)
            return 0;
        return es_sq_fail(r->db, err, "reading the event store");
    }
    if (r->pg == NULL)
        return 0;
    es_res_free_blobs(r);
    if (r->row + 1 >= r->nrows)
        return 0;
    r->row++;
    return 1;
}

bool
es_res_null(es_res_t *r, int col)
{
    if (r->st)
        return sqlite3_column_type(r->st, col) == SQLITE_NULL;
    return PQgetisnull(r->pg, r->row, col);
}

int64_t
es_res_i64(es_res_t *r, int col)
{
    if (r->st)
        return sqlite3_column_int64(r->st, col);
    return PQgetisnull(r->pg, r->row, col) ? 0 : strtoll(PQgetvalue(r->pg, r->row, col), NULL, 10);
}

const char *
es_res_text(es_res_t *r, int col, size_t *len)
{
    if (r->st) {
        const char *t = (const char *)sqlite3_column_text(r->st, col);
        if (len)
            *len = (size_t)sqlite3_column_bytes(r->st, col);
        return t ? t : "";
    }
    if (len)
        *len = (size_t)PQgetlength(r->pg, r->row, col);
    return PQgetvalue(r->pg, r->row, col);
}

const char *
es_res_blob(es_res_t *r, int col, size_t *len)
{
    if (r->st) {
        /* sqlite3_column_text gives the bytes NUL-terminated */
        const char *t = (const char *)sqlite3_column_text(r->st, col);
        *len = (size_t)sqlite3_column_bytes(r->st, col);
        return t ? t : "";
    }
    for (int k = 0; k < 4; k++) {
        if (r->blob_col[k] == col && r->blob[k] != NULL) {
            *len = r->blob_len[k];
            return (const char *)r->blob[k];
        }
    }
    for (int k = 0; k < 4; k++) {
        size_t n = 0;
        unsigned char *raw, *z;

        if (r->blob_col[k] >= 0)
            continue;
        raw = PQunescapeBytea((const unsigned char *)PQgetvalue(r->pg, r->row, col), &n);
        if (raw == NULL)
            break;
        /* a NUL-terminated copy, so JSON text can be used as a string */
        z = malloc(n + 1);
        if (z != NULL) {
            memcpy(z, raw, n);
            z[n] = '\0';
        }
        PQfreemem(raw);
        if (z == NULL)
            break;
        r->blob[k] = z;
        r->blob_len[k] = n;
        r->blob_col[k] = col;
        *len = n;
        return (const char *)z;
    }
    *len = 0;
    return NULL;
}

void
es_res_close(es_res_t *r)
{
    es_res_free_blobs(r);
    if (r->st) {
        if (r->st_own)
            sqlite3_finalize(r->st);
        else {
            sqlite3_reset(r->st);
            sqlite3_clear_bindings(r->st);
        }
        r->st = NULL;
    }
    if (r->pg) {
        PQclear(r->pg);
        r->pg = NULL;
    }
}

int
es_db_exec(es_db_t *db, int q, const char *sql, const es_param_t *params, int nparams,
           int64_t *changes, wr_es_error_t *err)
{
    es_res_t r;
    int rc;

    if ((rc = es_db_query(db, q, sql, params, nparams, &r, err)) < 0)
        return rc;
    if (db->backend == ES_BACKEND_SQLITE) {
        while ((rc = es_res_next(&r, err)) > 0)
            ;
        if (rc == 0 && changes)
            *changes = sqlite3_changes64(db->sq);
    } else {
        rc = 0;
        if (changes) {
            const char *t = PQcmdTuples(r.pg);
            *changes = t && t[0] ? strtoll(t, NULL, 10) : 0;
        }
    }
    es_res_close(&r);
    return rc < 0 ? rc : 0;
}

int
es_db_script(es_db_t *db, const char *sql, wr_es_error_t *err)
{
    if (db->backend == ES_BACKEND_SQLITE) {
        if (sqlite3_exec(db->sq, sql, NULL, NULL, NULL) != SQLITE_OK)
            return es_sq_fail(db, err, "running a statement");
        return 0;
    } else {
        PGresult *res = PQexec(db->pg, sql);

        if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
            return es_pg_fail(db, res, err, "running a statement");
        PQclear(res);
        return 0;
    }
}

int
es_db_copy_in(es_db_t *db, const char *copy_sql, const char *data, size_t len, wr_es_error_t *err)
{
    PGresult *res = PQexec(db->pg, copy_sql);

    if (PQresultStatus(res) != PGRES_COPY_IN)
        return es_pg_fail(db, res, err, "starting a COPY");
    PQclear(res);
    while (len > 0) {
        size_t chunk = len > (1u << 20) ? (1u << 20) : len;

        if (PQputCopyData(db->pg, data, (int)chunk) != 1)
            return es_pg_fail(db, NULL, err, "sending COPY data");
        data += chunk;
        len -= chunk;
    }
    if (PQputCopyEnd(db->pg, NULL) != 1)
        return es_pg_fail(db, NULL, err, "ending a COPY");
    while ((res = PQgetResult(db->pg)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            return es_pg_fail(db, res, err, "writing with COPY");
        PQclear(res);
    }
    return 0;
}

void
es_db_close(es_db_t *db)
{
    for (int q = 0; q < ES_Q_COUNT; q++) {
        if (db->stmts[q])
            sqlite3_finalize(db->stmts[q]);
        db->stmts[q] = NULL;
    }
    if (db->sq)
        sqlite3_close(db->sq);
    db->sq = NULL;
    if (db->pg)
        PQfinish(db->pg);
    db->pg = NULL;
}
