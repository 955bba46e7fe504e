/*
 * store_db.h - the two backends of the event store behind one small interface: run a
 * statement with parameters and read its rows, on SQLite or PostgreSQL, with the SQL
 * written once ($1, $2 ... placeholders; SQLite gets ?1, ?2 ...).
 *
 * NOTES: internal to destinations/eventstore (store.c). Statements named by an
 * es_q_t are prepared once per connection (SQLite: sqlite3_stmt; PostgreSQL: a named
 * prepared statement); other SQL is run once. Results are read row by row; a
 * PostgreSQL result is held whole (callers page their reads). bytea values are decoded.
 */
#ifndef WR_ES_STORE_DB_H
#define WR_ES_STORE_DB_H

#include <libpq-fe.h>
#include <sqlite3.h>

#include "store.h"

/* The cached statements (store.c has their SQL per backend). */
typedef enum {
    ES_Q_HEAD = 0,
    ES_Q_STREAM_VERSIONS,
    ES_Q_STREAMS_FROM_EVENTS,
    ES_Q_STREAM_GET,
    ES_Q_PROGRESS_GET,
    ES_Q_PROGRESS_PUT,
    ES_Q_PROGRESS_DEL,
    ES_Q_PIPELINE_GET,
    ES_Q_PIPELINE_PUT,
    ES_Q_KIND_GET,
    ES_Q_KIND_PUT,
    ES_Q_KIND_HAS_EVENTS,
    ES_Q_COPY_DEL_ROWS,
    ES_Q_COPY_DEL,
    ES_Q_COPY_PUT,
    ES_Q_COPY_GET,
    ES_Q_COPY_NEXT_N,
    ES_Q_COPY_ROW_INS,
    ES_Q_COPY_PUBLISH,
    ES_Q_EVENT_INS,
    ES_Q_STREAM_INS,
    ES_Q_STREAM_UPD,
    ES_Q_COUNT
} es_q_t;

/* A parameter: 'n' NULL, 'i' int64, 't' text (len bytes, and NUL-terminated at len: libpq's
 * text format needs it), 'b' bytes (bytea / BLOB). */
typedef struct es_param_s {
    char type;
    int64_t i;
    const char *p;
    size_t len;
} es_param_t;

static inline es_param_t
es_pi(int64_t v)
{
    es_param_t p = {'i', v, NULL, 0};
    return p;
}

static inline es_param_t
es_pt(const char *s)
{
    es_param_t p = {s ? 't' : 'n', 0, s, s ? __builtin_strlen(s) : 0};
    return p;
}

static inline es_param_t
es_pb(const char *s, size_t n)
{
    es_param_t p = {'b', 0, s, n};
    return p;
}

static inline es_param_t
es_pnull(void)
{
    es_param_t p = {'n', 0, NULL, 0};
    return p;
}

typedef struct es_db_s {
    int backend;
    sqlite3 *sq;
    PGconn *pg;
    sqlite3_stmt *stmts[ES_Q_COUNT];
    bool pg_prepared[ES_Q_COUNT];
    const char *const (*sql)[2]; /* per es_q_t: [0] SQLite, [1] PostgreSQL */
} es_db_t;

/* A result being read. */
typedef struct es_res_s {
    es_db_t *db;
    sqlite3_stmt *st;
    bool st_own; /* finalize at close (not a cached statement) */
    bool st_row; /* the last step gave a row */
    PGresult *pg;
    int row, nrows;
    unsigned char *blob[4]; /* decoded bytea of the current row (malloc'd), by slot */
    size_t blob_len[4];
    int blob_col[4];
} es_res_t;

/* Runs a cached statement (q >= 0) or the SQL sql (q < 0) with params; the result is
 * read with es_res_next. Errors: WR_ES_ESTORE (message names what). */
int es_db_query(es_db_t *db, int q, const char *sql, const es_param_t *params, int nparams,
                es_res_t *r, wr_es_error_t *err);
/* 1 = a row, 0 = no more rows, < 0 = error. */
int es_res_next(es_res_t *r, wr_es_error_t *err);
bool es_res_null(es_res_t *r, int col);
int64_t es_res_i64(es_res_t *r, int col);
/* Text of a column (NUL-terminated, valid until the next row), len may be NULL. */
const char *es_res_text(es_res_t *r, int col, size_t *len);
/* Bytes of a bytea / BLOB column, NUL-terminated (valid until the next row); NULL if
 * out of memory. */
const char *es_res_blob(es_res_t *r, int col, size_t *len);
void es_res_close(es_res_t *r);

/* Runs a statement that returns no rows; *changes (may be NULL) = rows affected. */
int es_db_exec(es_db_t *db, int q, const char *sql, const es_param_t *params, int nparams,
               int64_t *changes, wr_es_error_t *err);
/* Runs SQL text without parameters (several statements allowed). */
int es_db_script(es_db_t *db, const char *sql, wr_es_error_t *err);
/* PostgreSQL COPY ... FROM STDIN of text-format data. */
int es_db_copy_in(es_db_t *db, const char *copy_sql, const char *data, size_t len,
                  wr_es_error_t *err);
void es_db_close(es_db_t *db);

#endif
