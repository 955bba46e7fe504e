/*
 * pg.h - the postgres destination's parts shared by its files: the handle, the registered
 * tables with their held-back changes, the SQL text buffer, the connection and statement
 * helpers, and the registry entry.
 *
 * NOTES: used in walrelay-apply, walrelay-sync (pg_dest.c, pg_write.c, pg_sql.c,
 * pg_types.c) and in the supervisor (pg_entry.c: keys, init argument, preflight,
 * describe). One handle per process, one libpq connection to the target per handle (and,
 * only to read the definition of a user-defined type the target lacks, one to the
 * source). Every identifier written into SQL is quoted (pgd_buf_ident), every value is a
 * literal (pgd_buf_lit) or COPY text (pgd_buf_copyval): the statements use the simple
 * query protocol, so that one round trip can carry BEGIN, a savepoint, several statements
 * and its release. The session settings (pgd_connect) make the source's text forms read
 * back exactly: DateStyle ISO, IntervalStyle postgres, extra_float_digits 3, TimeZone UTC,
 * UTF8, standard_conforming_strings on.
 */
#ifndef WR_DEST_PG_H
#define WR_DEST_PG_H

#include <libpq-fe.h>

#include "../registry.h"

#define PGD_SCHEMA   "walrelay" /* bookkeeping schema on the target */
#define PGD_BUCKETS  256
#define PGD_SHOW_MAX 64

/* ---- the SQL text buffer (pg_sql.c) ----------------------------------------------------- */

typedef struct pgd_buf_s {
    char *p;
    size_t len;
    size_t cap;
    bool oom;   /* sticky: later appends do nothing */
    int nlead;  /* statements pgd_sql_start put first (BEGIN, RELEASE, SAVEPOINT) */
    bool begin; /* ... among them BEGIN */
    bool sp;    /* ... among them SAVEPOINT */
    bool whole; /* BEGIN ... COMMIT, all of it: its sender handles a failure */
} pgd_buf_t;

void pgd_buf_reset(pgd_buf_t *b);
void pgd_buf_free(pgd_buf_t *b);
void pgd_buf_addn(pgd_buf_t *b, const char *s, size_t n);
void pgd_buf_add(pgd_buf_t *b, const char *s);
void pgd_buf_addf(pgd_buf_t *b, const char *fmt, ...) WR_PRINTF(2, 3);
/* "name" with embedded double quotes doubled. */
void pgd_buf_ident(pgd_buf_t *b, const char *name);
/* "nsp"."name" */
void pgd_buf_qname(pgd_buf_t *b, const char *nsp, const char *name);
/* 'text' with embedded single quotes doubled (standard_conforming_strings is on). */
void pgd_buf_lit(pgd_buf_t *b, const char *s, size_t n);
/* A value in COPY text format: \N for NULL; backslash, newline, CR, tab escaped. */
void pgd_buf_copyval(pgd_buf_t *b, char kind, const char *s, size_t n);
/* An element of an array literal: NULL, or "text" with '"' and '\' escaped. The caller
 * quotes the whole literal with pgd_buf_lit-style doubling: this appends the doubled form
 * of single quotes too, so the result can sit inside '...'. */
void pgd_buf_arrelem(pgd_buf_t *b, char kind, const char *s, size_t n);

/* ---- registered tables and their held-back changes (pg_write.c) --------------------------- */

/* A value held back: its bytes are in the table's arena at off. */
typedef struct pgd_val_s {
    char kind; /* wr_val_kind_t; 'u' = the target row's current value */
    uint32_t len;
    size_t off;
} pgd_val_t;

#define PGD_NONE UINT32_MAX

/* One key touched by the changes held back (folding, see pg_write.c). */
typedef struct pgd_ent_s {
    uint32_t hash;
    uint32_t key; /* index in vals of the key's nkeys values */
    uint32_t row; /* index in vals of the row's ncols values, PGD_NONE: no row at the end */
    uint8_t pre;  /* PGD_PRE_*: what the changes assume about the target's row before */
} pgd_ent_t;

enum { PGD_PRE_EXISTS = 1, PGD_PRE_ABSENT = 2 };

/* One change held back in order (tables that cannot be folded; every change of a table in
 * history mode). */
typedef struct pgd_op_s {
    char kind;    /* 'I', 'U', 'D'; history also 'T' (truncate) */
    uint32_t old; /* index in vals of the match values (nkeys, or ncols when by_row);
                   * history: the key to look the latest row up by (nkeys), PGD_NONE: none */
    uint32_t row; /* index in vals of the new row (I, U); history: the row to append (kind
                   * 'u' values come from the looked-up row), PGD_NONE for 'T' */
    /* history mode only */
    uint8_t lookup; /* PGD_HL_* */
    uint32_t okey;  /* index in vals of the old key as JSON (an update that moved the key), or
                     * PGD_NONE */
    uint32_t seq;   /* the change's ordinal */
    wr_lsn_t lsn;   /* its transaction's commit LSN */
    int64_t ts;     /* its commit time, us since the Unix epoch */
} pgd_op_t;

/* pgd_op_t.lookup (history mode): does the appended row take values from the key's latest
 * row in the history? */
enum {
    PGD_HL_NONE = 0, /* no: every value is in the change */
    PGD_HL_NEED = 1, /* yes, and it must exist (an update's unchanged TOAST value) */
    PGD_HL_OPT = 2   /* if there is one (a delete's non-key columns; NULL without) */
};

typedef struct pgd_pend_s {
    char *arena;
    size_t alen, acap;
    pgd_val_t *vals;
    size_t nvals, vcap;
    pgd_ent_t *ents; /* in order of first touch */
    size_t nents, ecap;
    uint32_t *slots; /* open addressing over ents: index + 1, 0 = empty */
    size_t nslots;
    pgd_op_t *ops;
    size_t nops, ocap;
    uint64_t changes; /* held back since the last flush */
} pgd_pend_t;

typedef struct pgd_table_s {
    struct pgd_table_s *next;       /* hash chain */
    struct pgd_table_s *dirty_next; /* list of tables with changes held back */
    bool dirty;
    uint32_t relid;
    wr_schema_t *schema; /* registered (the stream's key flags); own copy */
    char *nsp, *name;    /* the target table */
    char *label;         /* "nsp"."name" for SQL */
    uint16_t ncols;
    char **ctype;   /* the target column's format_type, for casts */
    uint16_t *keys; /* columns UPDATE/DELETE match on, in schema order */
    int nkeys;
    bool by_row;  /* no key: match every column's text form, one row */
    bool fold;    /* the match key is the target's primary key: fold per key */
    bool ddl_txn; /* changed by DDL in the open transaction: forgotten on rollback */
    /* history mode ([destination] mode = history, issue 9) */
    bool history;
    wr_lsn_t copy_lsn; /* the copy's consistent point (reset_table), 0 if unknown */
    uint64_t copy_seq; /* rows of the copy so far (their _seq) */
    pgd_pend_t pend;
} pgd_table_t;

/* ---- the handle ------------------------------------------------------------------------- */

typedef struct dest_pg_s {
    dest_t base;
    char *conninfo; /* [destination] conninfo: a secret, never printed */
    char *src_conninfo;
    char *pipeline;
    char *schema_opt; /* [destination] schema, or NULL: the source table's own schema */
    char role[16];
    size_t flush_bytes; /* a table's held-back changes are written once this big */
    bool history;       /* [destination] mode = history: every change appended as a row */
    PGconn *conn;
    PGconn *src; /* source connection for type definitions; opened when needed */
    int server_version;
    bool in_txn;         /* begin() was called */
    bool txn_sent;       /* BEGIN reached the server */
    bool sp_open;        /* the savepoint "wr" of the last round trip is open */
    bool txn_copy;       /* the open transaction holds rows of a copy ... */
    bool txn_copy_last;  /* ... and the copy's end (copy_done) */
    uint32_t copy_relid; /* a COPY FROM STDIN is open for this table (0: none) */
    pgd_buf_t copybuf;   /* COPY data not yet handed to libpq, from copyoff on */
    size_t copyoff;
    bool copy_busy;     /* libpq still holds COPY data the socket did not take */
    uint32_t bin_relid; /* copy_binary chose the binary format for this table's copy */
    bool bin_begun;     /* ... and its first message (the signature) was sent */
    pgd_table_t *buckets[PGD_BUCKETS];
    pgd_table_t *last;
    pgd_table_t *dirty_head, *dirty_tail;
    /* commits with synchronous_commit = off (the apply worker, dest_ops_t.durable) */
    bool async;
    uint64_t ncommits; /* commits that returned */
    struct {
        uint64_t seq;
        wr_lsn_t lsn; /* the target's WAL insert position when pgd_durable read it */
    } * dur;          /* marks (pgd_durable): the first seq commits are durable once the
                       * server flushed its WAL up to lsn; oldest first */
    size_t ndur, durcap;
    uint64_t durable_n; /* commits known to be durable */
    pgd_buf_t sql;      /* statements being built (reused) */
    pgd_buf_t data;     /* COPY data of a flush (reused) */
    pgd_buf_t aux;      /* a second buffer for small statements (reused) */
} dest_pg_t;

/* Results of one round trip (pgd_run), one per statement. */
typedef struct pgd_res_s {
    PGresult **r;
    int n, cap;
} pgd_res_t;

/* ---- connection and statements (pg_sql.c) ----------------------------------------------- */

/* Connects to conninfo with walrelay's session settings (application_name appname).
 * Errors: WR_ECONFIG for a conninfo libpq cannot parse, WR_ECONN otherwise, with the
 * server's message (never the conninfo) and a hint. what names the server in messages
 * ("the destination", "the source"), key the setting to check ("[destination] conninfo"). */
int pgd_connect(const char *conninfo, const char *appname, const char *what, const char *key,
                PGconn **out, wr_err_t *err) WR_MUST_CHECK;
/* (Re)connects d->conn when it is missing or broken. In a worker (dest_host_hooked) it
 * retries with backoff while the target cannot be reached, reporting the wait
 * (dest_host_waiting, shown by walrelay status) until the target answers or the worker
 * must stop (dest_host_interrupted: WR_ECONN); without hooks (walrelay check) it fails at
 * once. */
int pgd_ensure_conn(dest_pg_t *d, wr_err_t *err) WR_MUST_CHECK;
/* Starts b for one round trip. Inside a transaction the statements run under the
 * savepoint "wr": b begins with BEGIN (if the transaction has not reached the server),
 * RELEASE SAVEPOINT wr (the previous round trip's, kept open until now so that its row
 * counts could still be refused) and SAVEPOINT wr. Outside a transaction the statements
 * of one round trip run in one implicit transaction. */
void pgd_sql_start(dest_pg_t *d, pgd_buf_t *b);
/* Sends b (one query, simple protocol) and collects one result per statement after the
 * leading ones in out (the caller pgd_res_clear()s it). A COPY FROM STDIN among the
 * statements gets copy/copylen (may be empty). Stops at the first statement that fails:
 * inside a transaction the savepoint is rolled back (the transaction stays usable, none
 * of b's statements took effect), and the error is returned, mapped by SQLSTATE
 * (pgd_fail). what says what was being done, for the message. */
int pgd_run(dest_pg_t *d, const pgd_buf_t *b, const char *copy, size_t copylen, pgd_res_t *out,
            const char *what, wr_err_t *err) WR_MUST_CHECK;
/* Undoes the last round trip (ROLLBACK TO SAVEPOINT wr): a caller refuses what its row
 * counts say. */
int pgd_sp_rollback(dest_pg_t *d, wr_err_t *err) WR_MUST_CHECK;
/* Sends b up to a COPY FROM STDIN that it ends with and leaves the COPY open
 * (d->copy_relid = relid); pgd_copy_put adds data, pgd_copy_end finishes it. */
int pgd_copy_begin(dest_pg_t *d, const pgd_buf_t *b, uint32_t relid, const char *what,
                   wr_err_t *err) WR_MUST_CHECK;
/* pgd_run for statements whose results are not needed. */
int pgd_exec(dest_pg_t *d, const pgd_buf_t *sql, const char *what, wr_err_t *err) WR_MUST_CHECK;
void pgd_res_clear(pgd_res_t *r);
/* Sets err from a failed result: the server's message, detail and hint, the SQLSTATE,
 * and the walrelay code its class means (connection: WR_ECONN; data and constraints:
 * WR_EDATA; a table changed or missing on the target, privileges: WR_EUNSUPPORTED;
 * anything else WR_EDEST). res may be NULL (the connection failed). Returns the code. */
int pgd_fail(dest_pg_t *d, const PGresult *res, const char *what, wr_err_t *err);
/* Ends an open COPY FROM STDIN (sends what d->copybuf holds, then CopyDone) and reads its
 * result; a failure rolls the savepoint back like pgd_run. */
int pgd_copy_end(dest_pg_t *d, wr_err_t *err) WR_MUST_CHECK;
/* Moves buffered COPY data towards the target (the connection is non-blocking during a
 * COPY): block = until all of it is handed over, else what the socket takes now. */
int pgd_copy_pump(dest_pg_t *d, bool block, wr_err_t *err) WR_MUST_CHECK;
/* Hands copy data to libpq in large messages (through d->copybuf). */
int pgd_copy_put(dest_pg_t *d, const char *data, size_t len, wr_err_t *err) WR_MUST_CHECK;
/* Appends one DO block that, under the DDL advisory lock, runs creates[i] unless the SQL
 * condition checks[i] holds, for each i in order: a look and a create that no other
 * worker can come between (the look reads the catalog with a fresh snapshot, unlike a
 * name lookup through the catalog caches). WR_EUNSUPPORTED if a text holds "$walrelay$". */
int pgd_buf_guarded(pgd_buf_t *b, const char *const *checks, const char *const *creates,
                    int n) WR_MUST_CHECK;
/* Shows a value for an error message (printable, cut at PGD_SHOW_MAX bytes). */
const char *pgd_show(char kind, const char *s, size_t n, char *buf, size_t len);
/* A 64-bit hash of a string for pg_advisory_xact_lock. */
int64_t pgd_lock_key(const char *what);

/* ---- writing changes (pg_write.c) -------------------------------------------------------- */

/* One change of t (INSERT, UPDATE, DELETE), held back or, where folding cannot express
 * it, written at once after t's earlier changes. Table-specific errors are WR_EDATA /
 * WR_EUNSUPPORTED / WR_EINVAL; t's held-back changes are then dropped. */
int pgd_write_change(dest_pg_t *d, pgd_table_t *t, const dest_event_t *ev,
                     wr_err_t *err) WR_MUST_CHECK;
/* Writes t's held-back changes in one round trip under a savepoint; on a failure the
 * savepoint is rolled back, the changes dropped and the error returned. */
int pgd_flush_table(dest_pg_t *d, pgd_table_t *t, wr_err_t *err) WR_MUST_CHECK;
/* If t's held-back changes are only new rows (fewer than the COPY threshold), appends
 * the one INSERT that writes them to b and returns how many; 0 otherwise (b unchanged). */
long pgd_append_inserts(pgd_table_t *t, pgd_buf_t *b);
/* History mode: one change (INSERT, UPDATE, DELETE, TRUNCATE) of t held back as a row to
 * append (pg_write.c "HISTORY MODE"). Errors as pgd_write_change. */
int pgd_hist_change(dest_pg_t *d, pgd_table_t *t, const dest_event_t *ev,
                    wr_err_t *err) WR_MUST_CHECK;
/* History mode: appends to b the copied line (COPY text, ending in '\n'; several lines
 * allowed) with the copy's meta columns added (_change_type 'copy', the copy's LSN, the
 * next _seq, NULL time and old key). */
void pgd_hist_copy_lines(pgd_table_t *t, pgd_buf_t *b, const char *data, size_t len);
/* History mode: " (c1, ..., _change_type, _commit_lsn, _seq, _commit_time, _old_key)". */
void pgd_hist_collist(pgd_buf_t *b, const pgd_table_t *t);
/* History mode: the name of the index on the key columns that finds a key's latest row
 * ("_walrelay_hk_<table>_<hash of the key's column names>", at most 63 bytes); false if
 * the table needs none (no key, or REPLICA IDENTITY FULL: whole old rows). */
bool pgd_hist_index_name(const wr_schema_t *s, const char *table, char *buf, size_t len);
#define PGD_HIST_COLS "_change_type, _commit_lsn, _seq, _commit_time, _old_key"

/* Drops t's held-back changes (memory kept for reuse). */
void pgd_pend_clear(dest_pg_t *d, pgd_table_t *t);
void pgd_pend_free(pgd_pend_t *p);

/* ---- user-defined types (pg_types.c) ------------------------------------------------------- */

/* Makes sure the target has the type of every column of s that is not built in (enums,
 * domains, composites, arrays of them): created from the source's definition in the
 * same schema and with the same name, or refused (WR_EUNSUPPORTED naming the type: a base
 * type of an extension, a range, a pseudo-type). Inside the open transaction. */
int pgd_types_ensure(dest_pg_t *d, const wr_schema_t *s, wr_err_t *err) WR_MUST_CHECK;

/* ---- the handle (pg_dest.c) ---------------------------------------------------------------- */

/* Opens a handle for a worker (role "apply", "sync") or a tool; connects (waiting while the
 * target is down, see pgd_ensure_conn) and creates the bookkeeping tables if missing. */
int pgd_open_role(const wr_config_t *cfg, const char *role, dest_t **out,
                  wr_err_t *err) WR_MUST_CHECK;

#endif
