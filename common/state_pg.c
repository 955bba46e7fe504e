/*
 * state_pg.c - the replication state store in a PostgreSQL database ([state] backend =
 * postgres), for deployments whose local disk does not survive a restart.
 *
 * NOTES: opened by the supervisor (the only writer, for its whole life), by `walrelay
 * drop` (to delete one pipeline's rows) and by `walrelay check` (reachable, privileges).
 * The same semantics as state_sqlite.c, call for call: every write is one transaction,
 * durable when the call returns 0 (the server's synchronous_commit permitting); errors
 * are WR_ESTATE with the server's message.
 *
 * Layout: a schema of its own ([state] schema, default walrelay_state; quoted wherever it
 * is named), created and migrated by walrelay: schema_version holds the version, and each
 * migration runs in one transaction under a transaction-level advisory lock, so two
 * supervisors starting at once migrate once. Every table is keyed by the pipeline's name
 * ([pipeline] name), so several pipelines share one database; LSNs are pg_lsn.
 *
 *   pipelines, tables, table_phase_history, table_schemas, table_schema_columns,
 *   table_mappings, errors, pipeline_flags   (as in state_sqlite.c, plus the pipeline)
 *   copy_ranges                              (version 2, issue 11: as in state_sqlite.c)
 *
 * The lease: the supervisor holds pg_try_advisory_lock(K) on its connection for as long
 * as it runs, K a 64-bit hash of (schema, pipeline name). A second supervisor of the same
 * pipeline on the same store (another directory, another host) does not get the lock and
 * refuses to start (WR_ECONFIG: exit code 2). If the connection is lost, the next call
 * connects again and takes the lock again before it does anything; if another supervisor
 * took it in between, the store is FENCED: that call and every later one fail without
 * sending anything (WR_ECONFIG, "lost the lease"), and check_lease reports it, so the
 * supervisor stops its workers: the pipeline never runs twice. check_lease(probe) is the
 * supervisor's periodic check while nothing else is called: it looks the lock up in
 * pg_locks on the store connection (a round trip, which also finds a dead connection and
 * reconnects as above). Reconnecting happens only before a call sends anything, so a
 * write whose COMMIT was cut off is reported as failed, never replayed.
 *
 * The connection uses repl_connect (session settings, no replication) with search_path
 * set to "<schema>, pg_catalog", so the SQL below names tables without their schema (and
 * CREATE puts them there); every function it calls is qualified with pg_catalog.
 */
#include "state.h"

#include "log.h"
#include "repl.h"

#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PGS_SCHEMA_VERSION 2

/* Migration N brings the schema from version N-1 to N. */
static const char *const pgs_migrations[] = {
    NULL,
    "CREATE TABLE pipelines ("
    "  pipeline text PRIMARY KEY,"
    "  slot_name text NOT NULL,"
    "  confirmed_flush pg_lsn NOT NULL);"
    "CREATE TABLE tables ("
    "  pipeline text NOT NULL,"
    "  relid bigint NOT NULL,"
    "  nsp text NOT NULL,"
    "  name text NOT NULL,"
    "  phase text NOT NULL,"
    "  lsn pg_lsn NOT NULL DEFAULT '0/0',"
    "  attempts bigint NOT NULL DEFAULT 0,"
    "  err_kind text NOT NULL DEFAULT '',"
    "  err_msg text NOT NULL DEFAULT '',"
    "  err_hint text NOT NULL DEFAULT '',"
    "  updated_at bigint NOT NULL,"
    "  PRIMARY KEY (pipeline, relid));"
    "CREATE TABLE table_phase_history ("
    "  id bigserial PRIMARY KEY,"
    "  pipeline text NOT NULL,"
    "  relid bigint NOT NULL,"
    "  phase text NOT NULL,"
    "  lsn pg_lsn NOT NULL,"
    "  err_kind text NOT NULL DEFAULT '',"
    "  err_msg text NOT NULL DEFAULT '',"
    "  err_hint text NOT NULL DEFAULT '',"
    "  at bigint NOT NULL);"
    "CREATE INDEX table_phase_history_relid ON table_phase_history (pipeline, relid, id);"
    "CREATE TABLE table_schemas ("
    "  pipeline text NOT NULL,"
    "  relid bigint NOT NULL,"
    "  lsn pg_lsn NOT NULL,"
    "  nsp text NOT NULL,"
    "  name text NOT NULL,"
    "  replident text NOT NULL,"
    "  PRIMARY KEY (pipeline, relid, lsn));"
    "CREATE TABLE table_schema_columns ("
    "  pipeline text NOT NULL,"
    "  relid bigint NOT NULL,"
    "  lsn pg_lsn NOT NULL,"
    "  attnum int NOT NULL,"
    "  name text NOT NULL,"
    "  type_oid bigint NOT NULL,"
    "  typmod int NOT NULL,"
    "  is_key boolean NOT NULL,"
    "  not_null boolean NOT NULL,"
    "  PRIMARY KEY (pipeline, relid, lsn, attnum));"
    "CREATE TABLE table_mappings ("
    "  pipeline text NOT NULL,"
    "  relid bigint NOT NULL,"
    "  dest_name text NOT NULL,"
    "  PRIMARY KEY (pipeline, relid));"
    "CREATE TABLE errors ("
    "  id bigserial PRIMARY KEY,"
    "  pipeline text NOT NULL,"
    "  relid bigint,"
    "  kind text NOT NULL,"
    "  message text NOT NULL,"
    "  hint text NOT NULL DEFAULT '',"
    "  at bigint NOT NULL);"
    "CREATE TABLE pipeline_flags ("
    "  pipeline text NOT NULL,"
    "  name text NOT NULL,"
    "  value bigint NOT NULL,"
    "  updated_at bigint NOT NULL,"
    "  PRIMARY KEY (pipeline, name));",
    /* 2: the parallel copy's ranges (issue 11) */
    "CREATE TABLE copy_ranges ("
    "  pipeline text NOT NULL,"
    "  relid bigint NOT NULL,"
    "  part int NOT NULL,"
    "  leaf bigint NOT NULL,"
    "  first_page bigint NOT NULL,"
    "  end_page bigint NOT NULL,"
    "  lsn pg_lsn NOT NULL,"
    "  done boolean NOT NULL DEFAULT false,"
    "  rows bigint NOT NULL DEFAULT 0,"
    "  updated_at bigint NOT NULL,"
    "  PRIMARY KEY (pipeline, relid, part));",
};

_Static_assert(sizeof(pgs_migrations) / sizeof(pgs_migrations[0]) == PGS_SCHEMA_VERSION + 1,
               "one migration per schema version");

/* The tables that hold a pipeline's rows (drop deletes from each). */
static const char *const pgs_tables[] = {
    "table_phase_history", "table_schema_columns", "table_schemas", "table_mappings", "errors",
    "copy_ranges",         "pipeline_flags",       "tables",        "pipelines"};

typedef struct pgs_store_s {
    state_store_t base; /* first: the public handle */
    PGconn *c;
    char *conninfo;
    char *schema;
    char *pipeline;
    char lock_key[24]; /* decimal int8 */
    char lock_hi[12];  /* its halves as pg_locks shows them (classid, objid) */
    char lock_lo[12];
    bool lease;     /* hold the pipeline's advisory lock */
    bool had_lease; /* took it once: a refusal now means it was lost */
    bool fenced;    /* lost it: every call fails with fence_err */
    wr_err_t fence_err;
} pgs_store_t;

/* ---- connection ---------------------------------------------------------------------- */

static int pgs_fail(pgs_store_t *s, const PGresult *r, wr_err_t *err, const char *fmt, ...)
    WR_PRINTF(4, 5);

/* Sets err to "state store: <what>: <server message>" (WR_ESTATE). */
static int
pgs_fail(pgs_store_t *s, const PGresult *r, wr_err_t *err, const char *fmt, ...)
{
    char what[512], full[600];
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (!m || !*m)
        m = s->c ? PQerrorMessage(s->c) : "not connected";
    snprintf(full, sizeof(full), "state store (schema \"%s\"): %s", s->schema, what);
    state_err_detail(err, WR_ESTATE, full, m);
    if (s->c && PQstatus(s->c) != CONNECTION_OK)
        wr_err_hint(err, "the state store's server went away; walrelay connects again on the "
                         "next call");
    return WR_ESTATE;
}

/* Runs sql with text parameters; *out = the result (caller clears) when want_rows. */
static int
pgs_exec(pgs_store_t *s, const char *sql, int n, const char *const *vals, PGresult **out,
         wr_err_t *err, const char *what)
{
    PGresult *r = PQexecParams(s->c, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        pgs_fail(s, r, err, "%s", what);
        PQclear(r);
        if (out)
            *out = NULL;
        return WR_ESTATE;
    }
    if (out)
        *out = r;
    else
        PQclear(r);
    return 0;
}

/* The error of a fenced store (it lost the lease): every call returns it. */
static int
pgs_fenced(pgs_store_t *s, wr_err_t *err)
{
    *err = s->fence_err;
    return WR_ECONFIG;
}

/* Another supervisor holds the lease this store held: fence it. */
static int
pgs_fence(pgs_store_t *s, wr_err_t *err)
{
    wr_err_set(&s->fence_err, WR_ECONFIG,
               "lost the lease of pipeline \"%s\" on the state store (schema \"%s\"): another "
               "walrelay took it while this one's store connection was down",
               s->pipeline, s->schema);
    wr_err_hint(&s->fence_err,
                "this walrelay stops and writes nothing more; pipeline \"%s\" goes on where "
                "the other walrelay runs (if it should run here, stop that one first)",
                s->pipeline);
    s->fenced = true;
    if (s->c) {
        PQfinish(s->c);
        s->c = NULL;
    }
    return pgs_fenced(s, err);
}

/* Connects (or connects again), sets the search path, takes the lease. */
static int
pgs_connect_once(pgs_store_t *s, wr_err_t *err)
{
    PGresult *r;
    char *q;
    char path[512];
    int rc;

    if (s->c) {
        PQfinish(s->c);
        s->c = NULL;
    }
    rc = repl_connect(s->conninfo, false, "walrelay state", &s->c, err);
    if (rc != 0) {
        wr_err_prefix(err, "state store ([state] conninfo): ");
        if (rc == WR_ECONN)
            rc = WR_ESTATE;
        return rc;
    }
    q = PQescapeIdentifier(s->c, s->schema, strlen(s->schema));
    if (!q)
        return pgs_fail(s, NULL, err, "quoting the schema name");
    snprintf(path, sizeof(path), "%s, pg_catalog", q);
    PQfreemem(q);
    {
        const char *v[1] = {path};
        if ((rc = pgs_exec(s, "SELECT pg_catalog.set_config('search_path', $1, false)", 1, v, NULL,
                           err, "setting the search path")))
            return rc;
    }
    if (!s->lease)
        return 0;
    {
        const char *v[1] = {s->lock_key};
        if ((rc = pgs_exec(s, "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)", 1, v, &r, err,
                           "taking the pipeline's lease")))
            return rc;
    }
    if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        PQclear(r);
        if (s->had_lease)
            return pgs_fence(s, err);
        wr_err_set(err, WR_ECONFIG,
                   "pipeline \"%s\" is already running on this state store (schema \"%s\"): "
                   "another walrelay holds its lease",
                   s->pipeline, s->schema);
        wr_err_hint(err,
                    "stop the other walrelay of pipeline \"%s\" (another directory or "
                    "host), or give this one another [pipeline] name",
                    s->pipeline);
        return WR_ECONFIG;
    }
    PQclear(r);
    if (s->had_lease)
        log_warn("state store connected again and took the pipeline's lease again schema=%s",
                 s->schema);
    s->had_lease = true;
    return 0;
}

/* pgs_connect_once, and on any failure the connection is closed: a connection that
 * did not get the lease must never carry a later call (pgs_ready would take an open
 * connection for a leased one). */
static int
pgs_connect(pgs_store_t *s, wr_err_t *err)
{
    int rc;

    if (s->fenced)
        return pgs_fenced(s, err);
    rc = pgs_connect_once(s, err);

    if (rc != 0 && s->c) {
        PQfinish(s->c);
        s->c = NULL;
    }
    return rc;
}

/* Before a call: connect again if the connection is gone. */
static int
pgs_ready(pgs_store_t *s, wr_err_t *err)
{
    if (s->fenced)
        return pgs_fenced(s, err);
    if (s->c && PQstatus(s->c) == CONNECTION_OK)
        return 0;
    return pgs_connect(s, err);
}

/* BEGIN; a connection found dead here is made again once (nothing was sent yet). */
static int
pgs_begin(pgs_store_t *s, wr_err_t *err)
{
    int rc = pgs_ready(s, err);

    if (rc)
        return rc;
    rc = pgs_exec(s, "BEGIN", 0, NULL, NULL, err, "starting a transaction");
    if (rc && PQstatus(s->c) != CONNECTION_OK) {
        if ((rc = pgs_connect(s, err)))
            return rc;
        rc = pgs_exec(s, "BEGIN", 0, NULL, NULL, err, "starting a transaction");
    }
    return rc;
}

static int
pgs_commit(pgs_store_t *s, wr_err_t *err)
{
    return pgs_exec(s, "COMMIT", 0, NULL, NULL, err, "committing");
}

/* Rolls back after an error (err set) and returns rc. */
static int
pgs_abort(pgs_store_t *s, int rc)
{
    if (s->c && PQtransactionStatus(s->c) != PQTRANS_IDLE)
        PQclear(PQexec(s->c, "ROLLBACK"));
    return rc;
}

/* A read outside a transaction (one statement is atomic). */
static int
pgs_read(pgs_store_t *s, const char *sql, int n, const char *const *vals, PGresult **out,
         wr_err_t *err, const char *what)
{
    int rc = pgs_ready(s, err);

    if (rc)
        return rc;
    rc = pgs_exec(s, sql, n, vals, out, err, what);
    if (rc && PQstatus(s->c) != CONNECTION_OK) {
        if ((rc = pgs_connect(s, err)))
            return rc;
        rc = pgs_exec(s, sql, n, vals, out, err, what);
    }
    return rc;
}

/* ---- text forms -------------------------------------------------------------------------- */

typedef struct pgs_num_s {
    char b[32];
} pgs_num_t;

static const char *
pgs_u(pgs_num_t *n, uint64_t v)
{
    snprintf(n->b, sizeof(n->b), "%llu", (unsigned long long)v);
    return n->b;
}

static const char *
pgs_i(pgs_num_t *n, int64_t v)
{
    snprintf(n->b, sizeof(n->b), "%lld", (long long)v);
    return n->b;
}

static const char *
pgs_lsn(pgs_num_t *n, wr_lsn_t v)
{
    return wr_lsn_format(v, n->b, sizeof(n->b));
}

static wr_lsn_t
pgs_get_lsn(const PGresult *r, int row, int col)
{
    wr_lsn_t v = 0;

    if (wr_lsn_parse(PQgetvalue(r, row, col), &v) != 0)
        v = 0;
    return v;
}

static int64_t
pgs_get_i(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* ---- operations -------------------------------------------------------------------------- */

static int
pgs_get_progress(state_store_t *base, state_progress_t *out, bool *found, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    const char *v[1] = {s->pipeline};
    PGresult *r;
    int rc;

    memset(out, 0, sizeof(*out));
    *found = false;
    if ((rc = pgs_read(s, "SELECT slot_name, confirmed_flush FROM pipelines WHERE pipeline = $1", 1,
                       v, &r, err, "reading the pipeline progress")))
        return rc;
    if (PQntuples(r) == 1) {
        wr_copy_text(out->slot_name, sizeof(out->slot_name), PQgetvalue(r, 0, 0));
        out->confirmed_flush = pgs_get_lsn(r, 0, 1);
        *found = true;
    }
    PQclear(r);
    return 0;
}

static int
pgs_set_progress(state_store_t *base, const state_progress_t *p, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t l;
    const char *v[3];
    int rc;

    if ((rc = state_check_progress(p, err)))
        return rc;
    v[0] = s->pipeline;
    v[1] = p->slot_name;
    v[2] = pgs_lsn(&l, p->confirmed_flush);
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "INSERT INTO pipelines (pipeline, slot_name, confirmed_flush) "
                       "VALUES ($1, $2, $3) ON CONFLICT (pipeline) DO UPDATE SET "
                       "slot_name = excluded.slot_name, confirmed_flush = excluded.confirmed_flush",
                       3, v, NULL, err, "saving the pipeline progress")))
        return pgs_abort(s, rc);
    return pgs_commit(s, err);
}

static int
pgs_add_table(state_store_t *base, uint32_t relid, const char *nsp, const char *name, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, b;
    const char *v[6];
    int rc;

    if ((rc = state_check_table_names(relid, nsp, name, err)))
        return rc;
    v[0] = s->pipeline;
    v[1] = pgs_u(&a, relid);
    v[2] = nsp;
    v[3] = name;
    v[4] = phase_name(PH_INIT);
    v[5] = pgs_i(&b, wr_wall_ms());
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "INSERT INTO tables (pipeline, relid, nsp, name, phase, updated_at) "
                       "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pipeline, relid) DO NOTHING",
                       6, v, NULL, err, "adding a table")))
        return pgs_abort(s, rc);
    return pgs_commit(s, err);
}

static int
pgs_remove_table(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[2] = {s->pipeline, pgs_u(&a, relid)};
    char sql[128];
    int rc;

    if ((rc = pgs_begin(s, err)))
        return rc;
    for (size_t i = 0; i < sizeof(pgs_tables) / sizeof(pgs_tables[0]); i++) {
        if (strcmp(pgs_tables[i], "pipelines") == 0 || strcmp(pgs_tables[i], "pipeline_flags") == 0)
            continue;
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE pipeline = $1 AND relid = $2",
                 pgs_tables[i]);
        if ((rc = pgs_exec(s, sql, 2, v, NULL, err, "removing a table")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

#define PGS_TABLE_COLS                                                                             \
    "relid, nsp, name, phase, lsn, attempts, err_kind, err_msg, err_hint, updated_at"

static int
pgs_read_table(const PGresult *r, int row, state_table_t *t, wr_err_t *err)
{
    const char *phase = PQgetvalue(r, row, 3);

    memset(t, 0, sizeof(*t));
    t->relid = (uint32_t)pgs_get_i(r, row, 0);
    wr_copy_text(t->nsp, sizeof(t->nsp), PQgetvalue(r, row, 1));
    wr_copy_text(t->name, sizeof(t->name), PQgetvalue(r, row, 2));
    if (phase_parse(phase, &t->phase) != 0)
        return wr_err_set(err, WR_ESTATE,
                          "the state store holds an unknown phase \"%.32s\" for "
                          "table %u",
                          phase, t->relid);
    t->lsn = pgs_get_lsn(r, row, 4);
    t->attempts = (uint32_t)pgs_get_i(r, row, 5);
    wr_copy_text(t->err_kind, sizeof(t->err_kind), PQgetvalue(r, row, 6));
    wr_copy_text(t->err_msg, sizeof(t->err_msg), PQgetvalue(r, row, 7));
    wr_copy_text(t->err_hint, sizeof(t->err_hint), PQgetvalue(r, row, 8));
    t->updated_at_ms = pgs_get_i(r, row, 9);
    return 0;
}

static int
pgs_get_table(state_store_t *base, uint32_t relid, state_table_t *out, bool *found, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[2] = {s->pipeline, pgs_u(&a, relid)};
    PGresult *r;
    int rc;

    *found = false;
    memset(out, 0, sizeof(*out));
    if ((rc =
             pgs_read(s, "SELECT " PGS_TABLE_COLS " FROM tables WHERE pipeline = $1 AND relid = $2",
                      2, v, &r, err, "reading a table")))
        return rc;
    if (PQntuples(r) == 1) {
        rc = pgs_read_table(r, 0, out, err);
        *found = rc == 0;
    }
    PQclear(r);
    return rc;
}

static int
pgs_list_tables(state_store_t *base, state_table_t **out, size_t *n, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    const char *v[1] = {s->pipeline};
    state_table_t *t;
    PGresult *r;
    int rc, rows;

    *out = NULL;
    *n = 0;
    if ((rc =
             pgs_read(s, "SELECT " PGS_TABLE_COLS " FROM tables WHERE pipeline = $1 ORDER BY relid",
                      1, v, &r, err, "listing tables")))
        return rc;
    rows = PQntuples(r);
    t = calloc(rows > 0 ? (size_t)rows : 1, sizeof(*t));
    if (!t) {
        PQclear(r);
        return wr_err_set(err, WR_ENOMEM, "out of memory listing tables");
    }
    for (int i = 0; i < rows; i++) {
        if ((rc = pgs_read_table(r, i, &t[i], err))) {
            PQclear(r);
            free(t);
            return rc;
        }
    }
    PQclear(r);
    *out = t;
    *n = (size_t)rows;
    return 0;
}

static int
pgs_set_phase(state_store_t *base, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
              const char *err_kind, const char *err_msg, const char *err_hint, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    state_table_t t; /* the stored (cut) error fields */
    pgs_num_t a, l, now;
    const char *v[8];
    PGresult *r;
    int rc;

    if ((rc = state_check_phase(relid, phase, err)))
        return rc;
    state_cut_errors(&t, phase, err_kind, err_msg, err_hint);
    v[0] = s->pipeline;
    v[1] = pgs_u(&a, relid);
    v[2] = pgs_i(&now, wr_wall_ms());
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "INSERT INTO table_phase_history "
                       "(pipeline, relid, phase, lsn, err_kind, err_msg, err_hint, at) "
                       "SELECT pipeline, relid, phase, lsn, err_kind, err_msg, err_hint, $3 "
                       "FROM tables WHERE pipeline = $1 AND relid = $2",
                       3, v, &r, err, "setting the phase of a table")))
        return pgs_abort(s, rc);
    if (strcmp(PQcmdTuples(r), "0") == 0) {
        PQclear(r);
        return pgs_abort(s, state_err_no_table(err, "setting phase", relid));
    }
    PQclear(r);
    v[2] = phase_name(phase);
    v[3] = pgs_lsn(&l, lsn);
    v[4] = t.err_kind;
    v[5] = t.err_msg;
    v[6] = t.err_hint;
    v[7] = now.b;
    if ((rc = pgs_exec(s,
                       "UPDATE tables SET phase = $3, lsn = $4, err_kind = $5, err_msg = $6, "
                       "err_hint = $7, updated_at = $8 WHERE pipeline = $1 AND relid = $2",
                       8, v, NULL, err, "setting the phase of a table")))
        return pgs_abort(s, rc);
    if (phase == PH_ERRORED) {
        /* the log keeps the full text */
        v[2] = err_kind ? err_kind : "";
        v[3] = err_msg ? err_msg : "";
        v[4] = err_hint ? err_hint : "";
        v[5] = now.b;
        if ((rc = pgs_exec(s,
                           "INSERT INTO errors (pipeline, relid, kind, message, hint, at) "
                           "VALUES ($1, $2, $3, $4, $5, $6)",
                           6, v, NULL, err, "recording a table error")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

static int
pgs_set_attempts(state_store_t *base, uint32_t relid, uint32_t attempts, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, b, c;
    const char *v[4] = {s->pipeline, pgs_u(&a, relid), pgs_u(&b, attempts),
                        pgs_i(&c, wr_wall_ms())};
    PGresult *r;
    int rc;

    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "UPDATE tables SET attempts = $3, updated_at = $4 "
                       "WHERE pipeline = $1 AND relid = $2",
                       4, v, &r, err, "setting the attempts of a table")))
        return pgs_abort(s, rc);
    if (strcmp(PQcmdTuples(r), "0") == 0) {
        PQclear(r);
        return pgs_abort(s, state_err_no_table(err, "setting attempts", relid));
    }
    PQclear(r);
    return pgs_commit(s, err);
}

static int
pgs_rollback_phase(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, now;
    const char *v[4] = {s->pipeline, pgs_u(&a, relid), NULL, NULL};
    PGresult *r;
    int rc;

    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "SELECT id FROM table_phase_history WHERE pipeline = $1 AND relid = $2 "
                       "ORDER BY id DESC LIMIT 1",
                       2, v, &r, err, "rolling back the phase of a table")))
        return pgs_abort(s, rc);
    if (PQntuples(r) != 1) {
        PQclear(r);
        return pgs_abort(s, state_err_no_history(err, relid));
    }
    {
        char id[32];

        snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        v[2] = id;
        v[3] = pgs_i(&now, wr_wall_ms());
        if ((rc = pgs_exec(s,
                           "UPDATE tables t SET phase = h.phase, lsn = h.lsn, "
                           "err_kind = h.err_kind, err_msg = h.err_msg, err_hint = h.err_hint, "
                           "updated_at = $4 FROM table_phase_history h "
                           "WHERE t.pipeline = $1 AND t.relid = $2 AND h.id = $3",
                           4, v, NULL, err, "rolling back the phase of a table")) ||
            (rc = pgs_exec(s, "DELETE FROM table_phase_history WHERE id = $1", 1, &v[2], NULL, err,
                           "rolling back the phase of a table")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

static int
pgs_prev_phase(state_store_t *base, uint32_t relid, wr_phase_t *phase, wr_lsn_t *lsn, bool *found,
               wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[2] = {s->pipeline, pgs_u(&a, relid)};
    PGresult *r;
    int rc;

    *found = false;
    *phase = PH_INIT;
    *lsn = 0;
    if ((rc = pgs_read(s,
                       "SELECT phase, lsn FROM table_phase_history WHERE pipeline = $1 AND "
                       "relid = $2 ORDER BY id DESC LIMIT 1",
                       2, v, &r, err, "reading the phase history of a table")))
        return rc;
    if (PQntuples(r) == 1) {
        if (phase_parse(PQgetvalue(r, 0, 0), phase) != 0) {
            wr_err_set(err, WR_ESTATE,
                       "the state store holds an unknown phase \"%.32s\" in the history of table "
                       "%u",
                       PQgetvalue(r, 0, 0), relid);
            PQclear(r);
            return WR_ESTATE;
        }
        *lsn = pgs_get_lsn(r, 0, 1);
        *found = true;
    }
    PQclear(r);
    return 0;
}

static int
pgs_history_len(state_store_t *base, uint32_t relid, size_t *n, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[2] = {s->pipeline, pgs_u(&a, relid)};
    PGresult *r;
    int rc;

    *n = 0;
    if ((rc = pgs_read(
             s, "SELECT count(*) FROM table_phase_history WHERE pipeline = $1 AND relid = $2", 2, v,
             &r, err, "counting the phase history of a table")))
        return rc;
    *n = (size_t)pgs_get_i(r, 0, 0);
    PQclear(r);
    return 0;
}

static int
pgs_put_schema(state_store_t *base, const wr_schema_t *schema, wr_lsn_t lsn, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, l, att, oid, mod;
    const char *v[9];
    char rid[2];
    int rc;

    if ((rc = state_check_schema(schema, err)))
        return rc;
    rid[0] = schema->replident ? schema->replident : 'd';
    rid[1] = '\0';
    v[0] = s->pipeline;
    v[1] = pgs_u(&a, schema->relid);
    v[2] = pgs_lsn(&l, lsn);
    v[3] = schema->nsp ? schema->nsp : "";
    v[4] = schema->name ? schema->name : "";
    v[5] = rid;
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "DELETE FROM table_schema_columns WHERE pipeline = $1 AND relid = $2 "
                       "AND lsn = $3",
                       3, v, NULL, err, "saving a schema")) ||
        (rc = pgs_exec(s,
                       "DELETE FROM table_schemas WHERE pipeline = $1 AND relid = $2 AND lsn = $3",
                       3, v, NULL, err, "saving a schema")) ||
        (rc = pgs_exec(s,
                       "INSERT INTO table_schemas (pipeline, relid, lsn, nsp, name, replident) "
                       "VALUES ($1, $2, $3, $4, $5, $6)",
                       6, v, NULL, err, "saving a schema")))
        return pgs_abort(s, rc);
    for (uint16_t i = 0; i < schema->ncols; i++) {
        const wr_column_t *c = &schema->cols[i];

        v[3] = pgs_i(&att, (int64_t)i + 1);
        v[4] = c->name ? c->name : "";
        v[5] = pgs_u(&oid, c->type_oid);
        v[6] = pgs_i(&mod, c->typmod);
        v[7] = c->is_key ? "t" : "f";
        v[8] = c->not_null ? "t" : "f";
        if ((rc = pgs_exec(s,
                           "INSERT INTO table_schema_columns (pipeline, relid, lsn, attnum, name, "
                           "type_oid, typmod, is_key, not_null) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                           9, v, NULL, err, "saving a schema column")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

static int
pgs_get_schema(state_store_t *base, uint32_t relid, wr_lsn_t at, wr_schema_t **out,
               wr_lsn_t *version_lsn, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, l;
    const char *v[3] = {s->pipeline, pgs_u(&a, relid), pgs_lsn(&l, at)};
    wr_schema_t *sc;
    PGresult *r;
    int rc, n;

    *out = NULL;
    if (version_lsn)
        *version_lsn = 0;
    /* one statement: the version and its columns, consistent with each other */
    if ((rc = pgs_read(s,
                       "WITH v AS (SELECT lsn, nsp, name, replident FROM table_schemas "
                       "  WHERE pipeline = $1 AND relid = $2 AND lsn <= $3 "
                       "  ORDER BY lsn DESC LIMIT 1) "
                       "SELECT v.lsn, v.nsp, v.name, v.replident, c.name, c.type_oid, c.typmod, "
                       "  c.is_key, c.not_null, c.attnum IS NULL "
                       "FROM v LEFT JOIN table_schema_columns c ON c.pipeline = $1 "
                       "  AND c.relid = $2 AND c.lsn = v.lsn ORDER BY c.attnum",
                       3, v, &r, err, "reading a schema")))
        return rc;
    n = PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return 0;
    }
    if (n > UINT16_MAX) {
        PQclear(r);
        return wr_err_set(err, WR_ESTATE,
                          "the state store holds more than %u columns for table "
                          "%u",
                          UINT16_MAX, relid);
    }
    /* a version without columns has one row whose column part is NULL */
    bool none = strcmp(PQgetvalue(r, 0, 9), "t") == 0;
    sc = wr_schema_new(relid, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), none ? 0 : (uint16_t)n);
    if (!sc) {
        PQclear(r);
        return wr_err_set(err, WR_ENOMEM, "out of memory reading a schema");
    }
    sc->replident = PQgetvalue(r, 0, 3)[0] ? PQgetvalue(r, 0, 3)[0] : 'd';
    for (int i = 0; !none && i < n; i++) {
        wr_column_t *c = &sc->cols[i];

        if (!(c->name = wr_strdup(PQgetvalue(r, i, 4)))) {
            PQclear(r);
            wr_schema_free(sc);
            return wr_err_set(err, WR_ENOMEM, "out of memory reading a schema");
        }
        c->type_oid = (uint32_t)pgs_get_i(r, i, 5);
        c->typmod = (int32_t)pgs_get_i(r, i, 6);
        c->is_key = strcmp(PQgetvalue(r, i, 7), "t") == 0;
        c->not_null = strcmp(PQgetvalue(r, i, 8), "t") == 0;
    }
    if (version_lsn)
        *version_lsn = pgs_get_lsn(r, 0, 0);
    PQclear(r);
    *out = sc;
    return 0;
}

static int
pgs_add_tables(state_store_t *base, const state_new_table_t *t, size_t n, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, b;
    const char *v[6];
    int rc;

    for (size_t i = 0; i < n; i++) {
        if ((rc = state_check_table_names(t[i].relid, t[i].nsp, t[i].name, err)) ||
            (rc = state_check_mapping(t[i].relid, t[i].dest_name, err)))
            return rc;
    }
    v[0] = s->pipeline;
    v[5] = pgs_i(&b, wr_wall_ms());
    v[4] = phase_name(PH_INIT);
    if ((rc = pgs_begin(s, err)))
        return rc;
    for (size_t i = 0; i < n; i++) {
        v[1] = pgs_u(&a, t[i].relid);
        v[2] = t[i].nsp;
        v[3] = t[i].name;
        if ((rc = pgs_exec(s,
                           "INSERT INTO tables (pipeline, relid, nsp, name, phase, updated_at) "
                           "VALUES ($1, $2, $3, $4, $5, $6) "
                           "ON CONFLICT (pipeline, relid) DO NOTHING",
                           6, v, NULL, err, "adding a table")))
            return pgs_abort(s, rc);
        v[2] = t[i].dest_name;
        if ((rc = pgs_exec(s,
                           "INSERT INTO table_mappings (pipeline, relid, dest_name) "
                           "VALUES ($1, $2, $3) ON CONFLICT (pipeline, relid) DO UPDATE SET "
                           "dest_name = excluded.dest_name",
                           3, v, NULL, err, "saving a mapping")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

static int
pgs_put_copy_plan(state_store_t *base, uint32_t relid, wr_lsn_t lsn, const state_copy_range_t *r,
                  size_t n, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, b, c, d, e, f, g, h;
    const char *v[10];
    int rc;

    if ((rc = state_check_copy_plan(relid, r, n, err)))
        return rc;
    v[0] = s->pipeline;
    v[1] = pgs_u(&a, relid);
    v[6] = pgs_lsn(&b, lsn);
    v[9] = pgs_i(&c, wr_wall_ms());
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s, "DELETE FROM copy_ranges WHERE pipeline = $1 AND relid = $2", 2, v, NULL,
                       err, "replacing a copy plan")))
        return pgs_abort(s, rc);
    for (size_t i = 0; i < n; i++) {
        v[2] = pgs_u(&d, i);
        v[3] = pgs_u(&e, r[i].leaf);
        v[4] = pgs_u(&f, r[i].first_page);
        v[5] = pgs_u(&g, r[i].end_page);
        v[7] = r[i].done ? "true" : "false";
        v[8] = pgs_u(&h, r[i].rows);
        if ((rc = pgs_exec(s,
                           "INSERT INTO copy_ranges (pipeline, relid, part, leaf, first_page, "
                           "end_page, lsn, done, rows, updated_at) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                           10, v, NULL, err, "saving a copy plan")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

static int
pgs_copy_range_done(state_store_t *base, uint32_t relid, uint32_t part, uint64_t rows,
                    wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, b, c, d;
    const char *v[5] = {s->pipeline, pgs_u(&a, relid), pgs_u(&b, part), pgs_u(&c, rows),
                        pgs_i(&d, wr_wall_ms())};
    PGresult *r = NULL;
    int rc;

    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "UPDATE copy_ranges SET done = true, rows = $4, updated_at = $5 "
                       "WHERE pipeline = $1 AND relid = $2 AND part = $3 RETURNING part",
                       5, v, &r, err, "marking a copy range done")))
        return pgs_abort(s, rc);
    rc = PQntuples(r) == 1 ? 0 : state_err_no_range(err, relid, part);
    PQclear(r);
    if (rc)
        return pgs_abort(s, rc);
    return pgs_commit(s, err);
}

static int
pgs_get_copy_plan(state_store_t *base, uint32_t relid, wr_lsn_t *lsn, state_copy_range_t **out,
                  size_t *n, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[2] = {s->pipeline, pgs_u(&a, relid)};
    PGresult *r;
    int rc, k;

    *out = NULL;
    *n = 0;
    *lsn = 0;
    if ((rc = pgs_read(s,
                       "SELECT leaf, first_page, end_page, lsn, done, rows FROM copy_ranges "
                       "WHERE pipeline = $1 AND relid = $2 ORDER BY part",
                       2, v, &r, err, "reading a copy plan")))
        return rc;
    k = PQntuples(r);
    if (k > 0 && !(*out = calloc((size_t)k, sizeof(**out)))) {
        PQclear(r);
        return wr_err_set(err, WR_ENOMEM, "out of memory reading a copy plan");
    }
    for (int i = 0; i < k; i++) {
        (*out)[i].leaf = (uint32_t)pgs_get_i(r, i, 0);
        (*out)[i].first_page = (uint32_t)pgs_get_i(r, i, 1);
        (*out)[i].end_page = (uint32_t)pgs_get_i(r, i, 2);
        *lsn = pgs_get_lsn(r, i, 3);
        (*out)[i].done = strcmp(PQgetvalue(r, i, 4), "t") == 0;
        (*out)[i].rows = (uint64_t)pgs_get_i(r, i, 5);
    }
    *n = (size_t)k;
    PQclear(r);
    return 0;
}

static int
pgs_put_mapping(state_store_t *base, uint32_t relid, const char *dest_name, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[3] = {s->pipeline, pgs_u(&a, relid), dest_name};
    int rc;

    if ((rc = state_check_mapping(relid, dest_name, err)))
        return rc;
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc =
             pgs_exec(s,
                      "INSERT INTO table_mappings (pipeline, relid, dest_name) VALUES ($1, $2, $3) "
                      "ON CONFLICT (pipeline, relid) DO UPDATE SET dest_name = excluded.dest_name",
                      3, v, NULL, err, "saving a mapping")))
        return pgs_abort(s, rc);
    return pgs_commit(s, err);
}

static int
pgs_get_mapping(state_store_t *base, uint32_t relid, char *buf, size_t len, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a;
    const char *v[2] = {s->pipeline, pgs_u(&a, relid)};
    PGresult *r;
    int rc;

    if ((rc = state_check_mapping_buffer(relid, buf, len, err)))
        return rc;
    if ((rc = pgs_read(s, "SELECT dest_name FROM table_mappings WHERE pipeline = $1 AND relid = $2",
                       2, v, &r, err, "reading a mapping")))
        return rc;
    if (PQntuples(r) == 1)
        rc = state_copy_mapping(relid, PQgetvalue(r, 0, 0), buf, len, err);
    PQclear(r);
    return rc;
}

static int
pgs_get_flag(state_store_t *base, const char *name, int64_t *value, bool *found, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    const char *v[2] = {s->pipeline, name};
    PGresult *r;
    int rc;

    *value = 0;
    *found = false;
    if ((rc = state_check_flag_name(name, err)))
        return rc;
    if ((rc = pgs_read(s, "SELECT value FROM pipeline_flags WHERE pipeline = $1 AND name = $2", 2,
                       v, &r, err, "reading a pipeline flag")))
        return rc;
    if (PQntuples(r) == 1) {
        *value = pgs_get_i(r, 0, 0);
        *found = true;
    }
    PQclear(r);
    return 0;
}

static int
pgs_set_flag(state_store_t *base, const char *name, int64_t value, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    pgs_num_t a, b;
    const char *v[4] = {s->pipeline, name, pgs_i(&a, value), pgs_i(&b, wr_wall_ms())};
    int rc;

    if ((rc = state_check_flag_name(name, err)))
        return rc;
    if ((rc = pgs_begin(s, err)))
        return rc;
    if ((rc = pgs_exec(s,
                       "INSERT INTO pipeline_flags (pipeline, name, value, updated_at) "
                       "VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline, name) DO UPDATE SET "
                       "value = excluded.value, updated_at = excluded.updated_at",
                       4, v, NULL, err, "saving a pipeline flag")))
        return pgs_abort(s, rc);
    return pgs_commit(s, err);
}

/* See state.h. The lock is looked up in pg_locks on the store connection: a round trip
 * that also finds a connection the server ended (pgs_read then connects again, which takes
 * the lease again or fences the store). */
static int
pgs_check_lease(state_store_t *base, bool probe, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    const char *v[2] = {s->lock_hi, s->lock_lo};
    PGresult *r;
    int rc;

    if (!s->lease)
        return 0;
    if (s->fenced)
        return pgs_fenced(s, err);
    if (!probe)
        return 0;
    if ((rc = pgs_read(s,
                       "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = "
                       "'advisory' AND pid = pg_catalog.pg_backend_pid() AND granted AND "
                       "classid = $1::oid AND objid = $2::oid AND objsubid = 1)",
                       2, v, &r, err, "verifying the pipeline's lease")))
        return rc;
    if (strcmp(PQgetvalue(r, 0, 0), "t") == 0) {
        PQclear(r);
        return 0;
    }
    PQclear(r);
    /* the session lives but does not hold the lock (nothing walrelay does releases it):
     * take it again, or it is someone else's now */
    {
        const char *k[1] = {s->lock_key};
        if ((rc = pgs_exec(s, "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)", 1, k, &r, err,
                           "taking the pipeline's lease again")))
            return rc;
    }
    rc = strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? 0 : WR_ECONFIG;
    PQclear(r);
    if (rc == 0) {
        log_warn("state store: the pipeline's lease was not held, took it again schema=%s",
                 s->schema);
        return 0;
    }
    return pgs_fence(s, err);
}

/* Deletes every row of the pipeline (walrelay drop), in one transaction. */
static int
pgs_drop_pipeline(state_store_t *base, bool *dropped, wr_err_t *err)
{
    pgs_store_t *s = (pgs_store_t *)base;
    const char *v[1] = {s->pipeline};
    PGresult *r;
    char sql[128];
    int rc;

    *dropped = false;
    if ((rc = pgs_begin(s, err)))
        return rc;
    for (size_t i = 0; i < sizeof(pgs_tables) / sizeof(pgs_tables[0]); i++) {
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE pipeline = $1", pgs_tables[i]);
        if ((rc = pgs_exec(s, sql, 1, v, &r, err, "deleting the pipeline's state")))
            return pgs_abort(s, rc);
        if (strcmp(PQcmdTuples(r), "0") != 0)
            *dropped = true;
        PQclear(r);
    }
    return pgs_commit(s, err);
}

static void
pgs_close(state_store_t *base)
{
    pgs_store_t *s = (pgs_store_t *)base;

    if (!s)
        return;
    PQfinish(s->c); /* ends the session: releases the lease */
    free(s->conninfo);
    free(s->schema);
    free(s->pipeline);
    free(s);
}

static const state_ops_t pgs_ops = {
    .get_progress = pgs_get_progress,
    .set_progress = pgs_set_progress,
    .add_table = pgs_add_table,
    .remove_table = pgs_remove_table,
    .get_table = pgs_get_table,
    .list_tables = pgs_list_tables,
    .set_phase = pgs_set_phase,
    .set_attempts = pgs_set_attempts,
    .rollback_phase = pgs_rollback_phase,
    .history_len = pgs_history_len,
    .prev_phase = pgs_prev_phase,
    .put_schema = pgs_put_schema,
    .get_schema = pgs_get_schema,
    .put_mapping = pgs_put_mapping,
    .get_mapping = pgs_get_mapping,
    .close = pgs_close,
    .get_flag = pgs_get_flag,
    .set_flag = pgs_set_flag,
    .check_lease = pgs_check_lease,
    .drop_pipeline = pgs_drop_pipeline,
    .add_tables = pgs_add_tables,
    .put_copy_plan = pgs_put_copy_plan,
    .copy_range_done = pgs_copy_range_done,
    .get_copy_plan = pgs_get_copy_plan,
};

/* ---- open, migrate, drop ------------------------------------------------------------------ */

/* Creates the schema and its tables, or brings them to PGS_SCHEMA_VERSION. */
static int
pgs_migrate(pgs_store_t *s, wr_err_t *err)
{
    PGresult *r;
    char *q, sql[256];
    int rc, version;

    q = PQescapeIdentifier(s->c, s->schema, strlen(s->schema));
    if (!q)
        return pgs_fail(s, NULL, err, "quoting the schema name");
    snprintf(sql, sizeof(sql), "CREATE SCHEMA IF NOT EXISTS %s", q);
    PQfreemem(q);
    if ((rc = pgs_begin(s, err)))
        return rc;
    /* one migrator at a time, whichever pipeline: the key is the schema's */
    {
        const char *v[1] = {s->schema};
        if ((rc = pgs_exec(s,
                           "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext("
                           "'walrelay_state_migrate:' || $1))",
                           1, v, NULL, err, "locking the state store for its migration")))
            return pgs_abort(s, rc);
    }
    if ((rc = pgs_exec(s, sql, 0, NULL, NULL, err, "creating the state store's schema")) ||
        (rc = pgs_exec(s, "CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)", 0,
                       NULL, NULL, err, "creating the state store's version table")) ||
        (rc = pgs_exec(s, "SELECT version FROM schema_version", 0, NULL, &r, err,
                       "reading the state store's version")))
        return pgs_abort(s, rc);
    version = PQntuples(r) > 0 ? atoi(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    if (version > PGS_SCHEMA_VERSION) {
        wr_err_set(err, WR_ESTATE,
                   "state store (schema \"%s\") has version %d, newer than this walrelay knows "
                   "(%d)",
                   s->schema, version, PGS_SCHEMA_VERSION);
        wr_err_hint(err, "run a walrelay at least as new as the one that last wrote it");
        return pgs_abort(s, WR_ESTATE);
    }
    for (int v = version + 1; v <= PGS_SCHEMA_VERSION; v++) {
        /* several statements: the simple query protocol */
        PGresult *m = PQexec(s->c, pgs_migrations[v]);

        if (PQresultStatus(m) != PGRES_COMMAND_OK) {
            pgs_fail(s, m, err, "migrating the state store to version %d", v);
            PQclear(m);
            return pgs_abort(s, WR_ESTATE);
        }
        PQclear(m);
    }
    if (version < PGS_SCHEMA_VERSION) {
        char vs[16];
        const char *v[1] = {vs};

        snprintf(vs, sizeof(vs), "%d", PGS_SCHEMA_VERSION);
        if ((rc = pgs_exec(s, "DELETE FROM schema_version", 0, NULL, NULL, err,
                           "migrating the state store")) ||
            (rc = pgs_exec(s, "INSERT INTO schema_version (version) VALUES ($1)", 1, v, NULL, err,
                           "migrating the state store")))
            return pgs_abort(s, rc);
    }
    return pgs_commit(s, err);
}

static int
pgs_new(const char *conninfo, const char *schema, const char *pipeline, bool lease,
        pgs_store_t **out, wr_err_t *err)
{
    pgs_store_t *s;
    uint64_t h = 1469598103934665603ull; /* FNV-1a over "schema\0pipeline" */

    *out = NULL;
    if (!conninfo || !*conninfo)
        return wr_err_set(err, WR_ECONFIG, "[state] backend = postgres needs [state] conninfo");
    if (!schema || !*schema || strlen(schema) > 63)
        return wr_err_set(err, WR_ECONFIG, "invalid [state] schema: 1 to 63 bytes expected");
    if (!(s = calloc(1, sizeof(*s))))
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the state store");
    s->base.ops = &pgs_ops;
    s->lease = lease;
    s->conninfo = wr_strdup(conninfo);
    s->schema = wr_strdup(schema);
    s->pipeline = wr_strdup(pipeline ? pipeline : "");
    if (!s->conninfo || !s->schema || !s->pipeline) {
        pgs_close(&s->base);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the state store");
    }
    for (const char *p = schema;; p++) {
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
        if (!*p)
            break;
    }
    for (const char *p = s->pipeline; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    snprintf(s->lock_key, sizeof(s->lock_key), "%lld", (long long)(int64_t)h);
    snprintf(s->lock_hi, sizeof(s->lock_hi), "%u", (unsigned)(h >> 32));
    snprintf(s->lock_lo, sizeof(s->lock_lo), "%u", (unsigned)(h & 0xffffffffu));
    *out = s;
    return 0;
}

int
state_open_postgres(const char *conninfo, const char *schema, const char *pipeline,
                    state_store_t **out, wr_err_t *err)
{
    pgs_store_t *s;
    int rc;

    *out = NULL;
    if ((rc = pgs_new(conninfo, schema, pipeline, true, &s, err)))
        return rc;
    if ((rc = pgs_connect(s, err)) || (rc = pgs_migrate(s, err))) {
        pgs_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}

int
state_check_postgres(const char *conninfo, const char *schema, char *summary, size_t len,
                     wr_err_t *err)
{
    pgs_store_t *s;
    PGresult *r;
    const char *v[1] = {schema};
    int rc;

    if ((rc = pgs_new(conninfo, schema, "", false, &s, err)))
        return rc;
    if ((rc = pgs_connect(s, err)))
        goto out;
    if ((rc = pgs_exec(s,
                       "SELECT CASE WHEN n.oid IS NULL "
                       "  THEN pg_catalog.has_database_privilege(pg_catalog.current_database(), "
                       "    'CREATE') "
                       "  ELSE pg_catalog.has_schema_privilege(n.oid, 'CREATE') "
                       "   AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') END, "
                       "  n.oid IS NOT NULL, pg_catalog.current_database(), "
                       "  pg_catalog.current_setting('server_version') "
                       "FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_namespace n "
                       "  ON n.nspname = $1",
                       1, v, &r, err, "checking privileges")))
        goto out;
    if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        bool exists = strcmp(PQgetvalue(r, 0, 1), "t") == 0;

        rc = wr_err_set(err, WR_ECONFIG,
                        exists ? "state store: the user may not create tables in schema \"%s\""
                               : "state store: the user may not create schema \"%s\" in database "
                                 "\"%s\"",
                        schema, PQgetvalue(r, 0, 2));
        wr_err_hint(err, exists ? "GRANT USAGE, CREATE ON SCHEMA ... TO the [state] user"
                                : "GRANT CREATE ON DATABASE ... TO the [state] user, or create "
                                  "the schema for it");
    } else {
        snprintf(summary, len, "postgres (database \"%s\", schema \"%s\", server %s)",
                 PQgetvalue(r, 0, 2), schema, PQgetvalue(r, 0, 3));
    }
    PQclear(r);
out:
    pgs_close(&s->base);
    return rc;
}
