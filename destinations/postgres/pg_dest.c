/*
 * pg_dest.c - the "postgres" destination: a PostgreSQL database holding a table per source
 * table, with the source's column types, plus walrelay's bookkeeping in the schema
 * "walrelay", written exactly once.
 *
 * NOTES: runs in walrelay-apply and in every walrelay-sync; each opens its own connection
 * (pg_sql.c) and writes concurrently with the others (different tables; their bookkeeping
 * rows are keyed by pipeline and stream or relid, so they never wait for each other).
 * It owns and persists, on the target:
 *   - walrelay.progress(pipeline, stream, commit_lsn pg_lsn, ordinal, updated_at): the
 *     resume key of the last change applied per stream, upserted in the same transaction
 *     as the data (commit: one round trip "INSERT ... ON CONFLICT ...; COMMIT");
 *   - walrelay.tables(pipeline, relid, src_nsp, src_name, nsp, name, columns, pk_pending,
 *     updated_at): which target table a source relid maps to, the columns it was registered
 *     with, and whether its primary key is still to be built (a copy in progress);
 *   - walrelay.schemas(pipeline, relid, version_lsn, version_ordinal, nsp, name, columns,
 *     relfilenode, attstate, attxmins, change, recorded_at): the schema versions, as the
 *     sqlite destination keeps them (docs/destinations.md "Schema changes");
 *   - walrelay.pipelines(pipeline, mode, created_at): the mode ([destination] mode, mirror
 *     or history) the pipeline's tables were made in, recorded at the first open; the
 *     other mode is refused (pgd_mode_check);
 *   - one table per source table: "nsp"."name" (the source's own schema, created when
 *     missing), or "<schema>"."name" / "<schema>"."nsp__name" with [destination] schema;
 *     columns in the source's order with its format_type() types and NOT NULL, and the
 *     primary key of the copy's schema (the source's primary key, else the replica
 *     identity index). The bookkeeping tables are created once, under an advisory lock.
 * Transactions: begin() only marks one open; the first statement carries BEGIN. Every
 * round trip inside a transaction runs under the savepoint "wr" (pg_sql.c), so a failure
 * that belongs to one table (a value the target refuses, a key that does not match) is
 * rolled back alone: flush() reports it with the table's relid and the transaction goes
 * on for the others. Changes are held back per table and written in batches (pg_write.c).
 * The copy streams COPY ... FROM STDIN, the source's COPY data passed through untouched
 * (write_copy), into a table created without its primary key, which copy_done() builds
 * once the rows are in (in the copy's last transaction). The data is in the binary format
 * when every column's type is a built-in one that allows it and both servers are of one
 * major version (pgd_copy_binary), else in text.
 * History mode (issue 9): each table is the source's columns (no key, no NOT NULL) plus
 * _change_type, _commit_lsn, _seq, _commit_time, _old_key, and every change is appended
 * (pg_write.c "HISTORY MODE"); a copy deletes only an earlier copy's rows and passes the
 * source's lines through with the five columns appended; a schema change adds, renames and
 * retypes columns, never drops one (pgd_hist_prepare, pgd_hist_alter).
 * Reconnects: a connection lost outside a transaction is opened again at the next begin()
 * (pgd_ensure_conn waits while the target is down); inside one, the error is WR_ECONN and
 * the worker replays from its last committed key.
 */
#include "pg.h"

#include "../../common/json.h"
#include "../../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bookkeeping tables, created once (under the DDL lock, IF NOT EXISTS). */
static const char pgd_bootstrap[] =
    "CREATE SCHEMA IF NOT EXISTS walrelay; "
    "CREATE TABLE IF NOT EXISTS walrelay.progress ("
    "  pipeline text NOT NULL, stream text NOT NULL, commit_lsn pg_lsn NOT NULL,"
    "  ordinal bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (pipeline, stream)); "
    "CREATE TABLE IF NOT EXISTS walrelay.tables ("
    "  pipeline text NOT NULL, relid bigint NOT NULL, src_nsp text NOT NULL,"
    "  src_name text NOT NULL, nsp text NOT NULL, name text NOT NULL, columns jsonb NOT NULL,"
    "  pk_pending boolean NOT NULL DEFAULT false,"
    "  updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, relid)); "
    "CREATE TABLE IF NOT EXISTS walrelay.schemas ("
    "  pipeline text NOT NULL, relid bigint NOT NULL, version_lsn pg_lsn NOT NULL,"
    "  version_ordinal bigint NOT NULL, nsp text NOT NULL, name text NOT NULL,"
    "  columns jsonb NOT NULL, relfilenode bigint NOT NULL, attstate text NOT NULL,"
    "  attxmins text NOT NULL, change text NOT NULL DEFAULT '',"
    "  recorded_at timestamptz NOT NULL DEFAULT now(),"
    "  PRIMARY KEY (pipeline, relid, version_lsn, version_ordinal)); "
    "CREATE TABLE IF NOT EXISTS walrelay.pipelines ("
    "  pipeline text PRIMARY KEY, mode text NOT NULL,"
    "  created_at timestamptz NOT NULL DEFAULT now())";

/* ---- small helpers -------------------------------------------------------------------- */

static int
pgd_need_txn(const dest_pg_t *d, const char *what, wr_err_t *err)
{
    if (!d->in_txn)
        return wr_err_set(err, WR_EINVAL, "%s outside a transaction (call begin first)", what);
    return 0;
}

/* " WHERE pipeline = '...' AND relid = N" */
static void
pgd_where_rel(dest_pg_t *d, pgd_buf_t *b, uint32_t relid)
{
    pgd_buf_add(b, " WHERE pipeline = ");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_addf(b, " AND relid = %u", (unsigned)relid);
}

/* ---- the table map -------------------------------------------------------------------- */

static pgd_table_t *
pgd_lookup(dest_pg_t *d, uint32_t relid)
{
    pgd_table_t *t;

    if (d->last != NULL && d->last->relid == relid)
        return d->last;
    for (t = d->buckets[relid % PGD_BUCKETS]; t != NULL; t = t->next)
        if (t->relid == relid)
            return d->last = t;
    return NULL;
}

static long
pgd_res_count(const PGresult *r)
{
    return atol(PQcmdTuples((PGresult *)r));
}

static int
pgd_get_table(dest_pg_t *d, uint32_t relid, pgd_table_t **out, wr_err_t *err)
{
    *out = pgd_lookup(d, relid);
    if (*out == NULL)
        return wr_err_set(err, WR_EINVAL,
                          "table with relid %u is not registered (call ensure_table first)",
                          (unsigned)relid);
    return 0;
}

static void
pgd_table_free(pgd_table_t *t)
{
    if (t == NULL)
        return;
    if (t->ctype != NULL)
        for (uint16_t i = 0; i < t->ncols; i++)
            free(t->ctype[i]);
    free(t->ctype);
    free(t->keys);
    free(t->nsp);
    free(t->name);
    free(t->label);
    wr_schema_free(t->schema);
    pgd_pend_free(&t->pend);
    free(t);
}

/* Unlinks and frees relid's entry (its held-back changes are dropped). */
static void
pgd_forget(dest_pg_t *d, uint32_t relid)
{
    pgd_table_t **pp = &d->buckets[relid % PGD_BUCKETS], *t;
    pgd_table_t **dp = &d->dirty_head, *prev = NULL;

    while (*pp != NULL && (*pp)->relid != relid)
        pp = &(*pp)->next;
    if ((t = *pp) == NULL)
        return;
    *pp = t->next;
    if (d->last == t)
        d->last = NULL;
    while (*dp != NULL && *dp != t) {
        prev = *dp;
        dp = &(*dp)->dirty_next;
    }
    if (*dp == t) {
        *dp = t->dirty_next;
        if (d->dirty_tail == t)
            d->dirty_tail = prev;
    }
    pgd_table_free(t);
}

static void
pgd_link(dest_pg_t *d, pgd_table_t *t)
{
    t->next = d->buckets[t->relid % PGD_BUCKETS];
    d->buckets[t->relid % PGD_BUCKETS] = t;
    d->last = t;
}

/* The target table of a source table: ("nsp", "name"), or (schema, "name" / "nsp__name"). */
static int
pgd_target_name(const dest_pg_t *d, const wr_schema_t *s, char **nsp, char **name, wr_err_t *err)
{
    char buf[512];

    *nsp = *name = NULL;
    if (d->schema_opt != NULL) {
        dest_table_name(s->nsp, s->name, buf, sizeof(buf));
        *nsp = wr_strdup(d->schema_opt);
        *name = wr_strdup(buf);
    } else {
        *nsp = wr_strdup(s->nsp && s->nsp[0] ? s->nsp : "public");
        *name = wr_strdup(s->name);
    }
    if (*nsp == NULL || *name == NULL) {
        free(*nsp);
        free(*name);
        *nsp = *name = NULL;
        return wr_err_set(err, WR_ENOMEM, "out of memory naming a table");
    }
    if (strcmp(*nsp, PGD_SCHEMA) == 0) {
        wr_err_set(err, WR_EUNSUPPORTED,
                   "table \"%s.%s\" would go into the schema \"walrelay\", which walrelay keeps "
                   "its bookkeeping in",
                   s->nsp, s->name);
        wr_err_hint(err, "set [destination] schema to put the tables elsewhere, or leave the "
                         "table out of the publication");
        free(*nsp);
        free(*name);
        *nsp = *name = NULL;
        return WR_EUNSUPPORTED;
    }
    return 0;
}

/* ---- the target's layout of a table -------------------------------------------------- */

typedef struct pgd_layout_s {
    int ncols;
    char **names;
    char **types; /* format_type */
    bool *notnull;
    int *pk;      /* position in the primary key (1..), 0 = not in it */
    char *pkname; /* the primary key constraint, NULL if none */
    bool registered;
    bool pk_pending; /* walrelay.tables says the copy has not built it yet */
} pgd_layout_t;

static void
pgd_layout_free(pgd_layout_t *l)
{
    for (int i = 0; i < l->ncols; i++) {
        free(l->names[i]);
        free(l->types[i]);
    }
    free(l->names);
    free(l->types);
    free(l->notnull);
    free(l->pk);
    free(l->pkname);
    memset(l, 0, sizeof(*l));
}

/* Reads the columns of nsp.name (ncols 0: no such table) and its registration. */
static int
pgd_layout_read(dest_pg_t *d, uint32_t relid, const char *nsp, const char *name, pgd_layout_t *l,
                wr_err_t *err)
{
    pgd_buf_t *b = &d->aux, q = {0};
    pgd_res_t res = {0};
    PGresult *r;
    int rc, n;

    memset(l, 0, sizeof(*l));
    pgd_buf_qname(&q, nsp, name);
    pgd_sql_start(d, b);
    pgd_buf_add(b,
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "coalesce((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) "
                "WHERE k.att = a.attnum), 0), "
                "(SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid = c.oid AND "
                "contype = 'p') FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a "
                "ON a.attrelid = c.oid LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid "
                "AND i.indisprimary WHERE c.oid = to_regclass(");
    pgd_buf_lit(b, q.p ? q.p : "", q.len);
    pgd_buf_add(b, ") AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum; "
                   "SELECT pk_pending FROM walrelay.tables");
    pgd_where_rel(d, b, relid);
    pgd_buf_free(&q);
    if ((rc = pgd_run(d, b, NULL, 0, &res, "reading a table's columns", err)) < 0)
        goto out;
    if (res.n != 2) {
        rc = wr_err_set(err, WR_EDEST, "reading a table's columns: %d results", res.n);
        goto out;
    }
    r = res.r[0];
    n = PQntuples(r);
    if (n > 0) {
        l->names = calloc((size_t)n, sizeof(*l->names));
        l->types = calloc((size_t)n, sizeof(*l->types));
        l->notnull = calloc((size_t)n, sizeof(*l->notnull));
        l->pk = calloc((size_t)n, sizeof(*l->pk));
        if (l->names == NULL || l->types == NULL || l->notnull == NULL || l->pk == NULL)
            goto oom;
        for (int i = 0; i < n; i++) {
            l->names[i] = wr_strdup(PQgetvalue(r, i, 0));
            l->types[i] = wr_strdup(PQgetvalue(r, i, 1));
            l->ncols = i + 1;
            if (l->names[i] == NULL || l->types[i] == NULL)
                goto oom;
            l->notnull[i] = strcmp(PQgetvalue(r, i, 2), "t") == 0;
            l->pk[i] = atoi(PQgetvalue(r, i, 3));
        }
        if (!PQgetisnull(r, 0, 4) && (l->pkname = wr_strdup(PQgetvalue(r, 0, 4))) == NULL)
            goto oom;
    }
    if (PQntuples(res.r[1]) == 1) {
        l->registered = true;
        l->pk_pending = strcmp(PQgetvalue(res.r[1], 0, 0), "t") == 0;
    }
    goto out;
oom:
    rc = wr_err_set(err, WR_ENOMEM, "out of memory reading the columns of \"%s.%s\"", nsp, name);
    pgd_layout_free(l);
out:
    pgd_res_clear(&res);
    return rc;
}

static int
pgd_layout_npk(const pgd_layout_t *l)
{
    int n = 0;

    for (int i = 0; i < l->ncols; i++)
        n += l->pk[i] > 0;
    return n;
}

/* True if column i of s belongs in the primary key of a table created from s (as sqlite:
 * a FULL schema with every column flagged says nothing of the source's key). */
static bool
pgd_in_pk(const wr_schema_t *s, int i)
{
    if (s->replident == 'f' && wr_schema_nkeys(s) == s->ncols)
        return false;
    return s->cols[i].is_key;
}

/* True if the layout's primary key is exactly the key a table created from s has. */
static bool
pgd_layout_pk_is(const pgd_layout_t *l, const wr_schema_t *s)
{
    int want = 0, have = 0;

    for (int i = 0; i < l->ncols; i++)
        have += l->pk[i] > 0;
    for (int i = 0; i < s->ncols; i++) {
        if (!pgd_in_pk(s, i))
            continue;
        want++;
        if (i >= l->ncols || l->pk[i] != want)
            return false;
    }
    return want == have;
}

/* ---- creating and registering --------------------------------------------------------- */

/* Appends the registration columns as JSON (name, type_oid, typmod, key, not_null,
 * type_name). */
static void
pgd_columns_json(jw_buf_t *j, const wr_schema_t *s)
{
    jw_lit(j, "[");
    for (int i = 0; i < s->ncols; i++) {
        const wr_column_t *c = &s->cols[i];

        jw_lit(j, i ? ",{\"name\":" : "{\"name\":");
        jw_cstr(j, c->name);
        jw_lit(j, ",\"type_oid\":");
        jw_u64(j, c->type_oid);
        jw_lit(j, ",\"typmod\":");
        jw_i64(j, c->typmod);
        jw_lit(j, c->is_key ? ",\"key\":true" : ",\"key\":false");
        jw_lit(j, c->not_null ? ",\"not_null\":true" : ",\"not_null\":false");
        jw_lit(j, ",\"type_name\":");
        jw_cstr(j, c->type_name);
        jw_lit(j, "}");
    }
    jw_lit(j, "]");
}

/* INSERT ... ON CONFLICT into walrelay.tables (appended to b). pk_pending: -1 keeps it. */
static void
pgd_register_sql(dest_pg_t *d, pgd_buf_t *b, const wr_schema_t *s, const char *nsp,
                 const char *name, int pk_pending, jw_buf_t *j)
{
    jw_reset(j);
    pgd_columns_json(j, s);
    pgd_buf_add(b, "INSERT INTO walrelay.tables (pipeline, relid, src_nsp, src_name, nsp, name, "
                   "columns, pk_pending, updated_at) VALUES (");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_addf(b, ", %u, ", (unsigned)s->relid);
    pgd_buf_lit(b, s->nsp ? s->nsp : "", s->nsp ? strlen(s->nsp) : 0);
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, s->name, strlen(s->name));
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, nsp, strlen(nsp));
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, name, strlen(name));
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, j->data ? j->data : "[]", j->len);
    pgd_buf_addf(b,
                 "::jsonb, %s, now()) ON CONFLICT (pipeline, relid) DO UPDATE SET "
                 "src_nsp = excluded.src_nsp, src_name = excluded.src_name, nsp = excluded.nsp, "
                 "name = excluded.name, columns = excluded.columns, %supdated_at = now(); ",
                 pk_pending > 0 ? "true" : "false",
                 pk_pending >= 0 ? "pk_pending = excluded.pk_pending, " : "");
}

/* CREATE TABLE nsp.name (columns [, PRIMARY KEY]) appended to b. false if a column has no
 * type name to create it with. */
static bool
pgd_create_sql(pgd_buf_t *b, const wr_schema_t *s, const char *nsp, const char *name, bool pk,
               bool history, const char **bad)
{
    int nk = 0;

    pgd_buf_add(b, "CREATE TABLE ");
    pgd_buf_qname(b, nsp, name);
    pgd_buf_add(b, " (");
    for (int i = 0; i < s->ncols; i++) {
        const char *ty = s->cols[i].type_name;

        if (ty == NULL || ty[0] == '\0' || (ty[0] >= '0' && ty[0] <= '9')) {
            *bad = s->cols[i].name;
            return false;
        }
        if (i)
            pgd_buf_add(b, ", ");
        pgd_buf_ident(b, s->cols[i].name);
        pgd_buf_add(b, " ");
        pgd_buf_add(b, ty);
        if (s->cols[i].not_null && !history)
            pgd_buf_add(b, " NOT NULL");
    }
    if (history) {
        /* every change a row: no key, no NOT NULL (a truncate's row is all NULL) */
        pgd_buf_add(b, ", _change_type text NOT NULL, _commit_lsn pg_lsn, _seq bigint NOT NULL, "
                       "_commit_time timestamptz, _old_key jsonb); ");
        return true;
    }
    for (int i = 0; pk && i < s->ncols; i++) {
        if (!pgd_in_pk(s, i))
            continue;
        pgd_buf_add(b, nk++ ? ", " : ", PRIMARY KEY (");
        pgd_buf_ident(b, s->cols[i].name);
    }
    if (nk)
        pgd_buf_add(b, ")");
    pgd_buf_add(b, "); ");
    return true;
}

static void
pgd_add_pk_sql(pgd_buf_t *b, const wr_schema_t *s, const char *nsp, const char *name)
{
    int nk = 0;

    for (int i = 0; i < s->ncols; i++) {
        if (!pgd_in_pk(s, i))
            continue;
        if (nk++ == 0) {
            pgd_buf_add(b, "ALTER TABLE ");
            pgd_buf_qname(b, nsp, name);
            pgd_buf_add(b, " ADD PRIMARY KEY (");
        } else {
            pgd_buf_add(b, ", ");
        }
        pgd_buf_ident(b, s->cols[i].name);
    }
    if (nk)
        pgd_buf_add(b, "); ");
}

/* Builds the in-memory entry for s over the layout l of its target table. */
static int
pgd_table_new(const wr_schema_t *s, const char *nsp, const char *name, const pgd_layout_t *l,
              bool history, pgd_table_t **out, wr_err_t *err)
{
    pgd_table_t *t = calloc(1, sizeof(*t));
    pgd_buf_t q = {0};
    int npk = 0;

    *out = NULL;
    if (t == NULL)
        goto oom;
    t->relid = s->relid;
    t->ncols = s->ncols;
    t->schema = wr_schema_copy(s);
    t->nsp = wr_strdup(nsp);
    t->name = wr_strdup(name);
    pgd_buf_qname(&q, nsp, name);
    t->label = q.p;
    t->ctype = calloc(s->ncols ? s->ncols : 1, sizeof(*t->ctype));
    t->keys = calloc(s->ncols ? s->ncols : 1, sizeof(*t->keys));
    if (t->schema == NULL || t->nsp == NULL || t->name == NULL || q.oom || t->label == NULL ||
        t->ctype == NULL || t->keys == NULL)
        goto oom;
    for (uint16_t i = 0; i < s->ncols; i++) {
        /* by name: a history table's columns are not in the source's order */
        const char *ty = "text";

        for (int k = 0; k < l->ncols; k++)
            if (strcmp(l->names[k], s->cols[i].name) == 0) {
                ty = l->types[k];
                break;
            }
        if ((t->ctype[i] = wr_strdup(ty)) == NULL)
            goto oom;
        npk += i < l->ncols && l->pk[i] > 0;
    }
    if (history) {
        /* rows are appended, never matched; the key (not under FULL: whole old rows) finds
         * a key's latest row for the values a change does not carry */
        t->history = true;
        for (uint16_t i = 0; i < s->ncols && s->replident != 'f'; i++)
            if (s->cols[i].is_key)
                t->keys[t->nkeys++] = i;
        *out = t;
        return 0;
    }
    /* the match key (docs/destinations.md, keys): the stream's key columns; under FULL
     * (every column flagged) the target's primary key, else every column */
    if (s->replident == 'f' && wr_schema_nkeys(s) == s->ncols) {
        for (int pos = 1; pos <= npk; pos++)
            for (uint16_t i = 0; i < s->ncols && i < l->ncols; i++)
                if (l->pk[i] == pos)
                    t->keys[t->nkeys++] = i;
        t->by_row = t->nkeys == 0;
    } else {
        for (uint16_t i = 0; i < s->ncols; i++)
            if (s->cols[i].is_key)
                t->keys[t->nkeys++] = i;
    }
    /* folding per key is safe when the key is the target's primary key: UPDATEs in place
     * by it can never collide on another unique key of ours */
    t->fold = !t->by_row && t->nkeys > 0 && t->nkeys == npk;
    for (int j = 0; t->fold && j < t->nkeys; j++)
        t->fold = t->keys[j] < l->ncols && l->pk[t->keys[j]] > 0;
    *out = t;
    return 0;
oom:
    if (t != NULL && t->label == NULL)
        pgd_buf_free(&q);
    pgd_table_free(t);
    return wr_err_set(err, WR_ENOMEM, "out of memory registering table \"%s.%s\"", nsp, name);
}

/* Makes sure the schema nsp exists (inside the open transaction, or on its own). */
static int
pgd_ensure_schema(dest_pg_t *d, const char *nsp, wr_err_t *err)
{
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    bool exists;
    int rc;

    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT to_regnamespace(");
    {
        pgd_buf_t q = {0};

        pgd_buf_ident(&q, nsp);
        pgd_buf_lit(b, q.p ? q.p : "", q.len);
        pgd_buf_free(&q);
    }
    pgd_buf_add(b, ") IS NOT NULL");
    rc = pgd_run(d, b, NULL, 0, &res, "looking up a schema", err);
    exists = rc == 0 && res.n == 1 && strcmp(PQgetvalue(res.r[0], 0, 0), "t") == 0;
    pgd_res_clear(&res);
    if (rc < 0 || exists)
        return rc;
    {
        pgd_buf_t check = {0}, create = {0};
        const char *c1, *c2;

        pgd_buf_add(&check, "EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = ");
        pgd_buf_lit(&check, nsp, strlen(nsp));
        pgd_buf_add(&check, ")");
        pgd_buf_add(&create, "CREATE SCHEMA ");
        pgd_buf_ident(&create, nsp);
        c1 = check.p ? check.p : "";
        c2 = create.p ? create.p : "";
        pgd_sql_start(d, b);
        rc = check.oom || create.oom ? WR_ENOMEM : pgd_buf_guarded(b, &c1, &c2, 1);
        pgd_buf_free(&check);
        pgd_buf_free(&create);
        if (rc < 0)
            return wr_err_set(err, rc, "cannot create the schema \"%s\" (its name)", nsp);
        if ((rc = pgd_exec(d, b, "creating a schema", err)) < 0)
            return rc;
    }
    log_info("schema created in the destination schema=%s", nsp);
    return 0;
}

/* History mode: the existing table nsp.name (layout l) takes s's rows: it must have the
 * history columns (else it was made in mirror mode: refused); s's columns it lacks are
 * added (its earlier rows read NULL there); with retype, columns whose type differs from
 * s's get it (ALTER COLUMN ... TYPE ... USING c::type: a copy after a type change); and the
 * key's lookup index exists (pgd_hist_index_name). Reads l again when it changed. */
static int
pgd_hist_prepare(dest_pg_t *d, const wr_schema_t *s, const char *nsp, const char *name,
                 pgd_layout_t *l, bool retype, wr_err_t *err)
{
    static const char *const meta[] = {"_change_type", "_commit_lsn", "_seq", "_commit_time",
                                       "_old_key"};
    pgd_buf_t *b = &d->sql;
    char idx[96];
    bool changed = false;
    int rc;

    for (size_t m = 0; m < sizeof(meta) / sizeof(meta[0]); m++) {
        bool have = false;

        for (int i = 0; i < l->ncols && !have; i++)
            have = strcmp(l->names[i], meta[m]) == 0;
        if (!have) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "destination table \"%s.%s\" has no column \"%s\": it was not made in "
                       "history mode",
                       nsp, name, meta[m]);
            wr_err_hint(err, "rename or drop the table in the destination, then resync the table");
            return WR_EUNSUPPORTED;
        }
    }
    pgd_sql_start(d, b);
    for (int j = 0; j < s->ncols; j++) {
        const wr_column_t *c = &s->cols[j];
        int have = -1;

        for (int i = 0; i < l->ncols && have < 0; i++)
            if (strcmp(l->names[i], c->name) == 0)
                have = i;
        if (have >= 0 &&
            (!retype || c->type_name == NULL || strcmp(l->types[have], c->type_name) == 0))
            continue;
        if (c->type_name == NULL || c->type_name[0] == '\0') {
            wr_err_set(err, WR_EUNSUPPORTED, "column \"%s\" of \"%s.%s\" has no type name", c->name,
                       s->nsp, s->name);
            return WR_EUNSUPPORTED;
        }
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        if (have < 0) {
            pgd_buf_add(b, " ADD COLUMN ");
            pgd_buf_ident(b, c->name);
            pgd_buf_add(b, " ");
            pgd_buf_add(b, c->type_name);
        } else {
            pgd_buf_add(b, " ALTER COLUMN ");
            pgd_buf_ident(b, c->name);
            pgd_buf_add(b, " TYPE ");
            pgd_buf_add(b, c->type_name);
            pgd_buf_add(b, " USING ");
            pgd_buf_ident(b, c->name);
            pgd_buf_add(b, "::");
            pgd_buf_add(b, c->type_name);
        }
        pgd_buf_add(b, "; ");
        changed = true;
    }
    if (pgd_hist_index_name(s, name, idx, sizeof(idx))) {
        pgd_buf_add(b, "CREATE INDEX IF NOT EXISTS ");
        pgd_buf_ident(b, idx);
        pgd_buf_add(b, " ON ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " (");
        for (int j = 0; j < s->ncols; j++) {
            if (!s->cols[j].is_key)
                continue;
            pgd_buf_ident(b, s->cols[j].name);
            pgd_buf_add(b, ", ");
        }
        pgd_buf_add(b, "_commit_lsn DESC NULLS LAST, _seq DESC); ");
    } else if (!changed) {
        return 0;
    }
    if ((rc = pgd_exec(d, b, "preparing a history table", err)) < 0) {
        if (rc == WR_EDATA || rc == WR_EUNSUPPORTED)
            wr_err_hint(err, "the history's values do not convert to the column's new type: "
                             "rename the table in the destination, then resync the table");
        return rc;
    }
    if (!changed)
        return 0;
    pgd_layout_free(l);
    return pgd_layout_read(d, s->relid, nsp, name, l, err);
}

static int
pgd_ensure_table(dest_t *base, const wr_schema_t *s, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_table_t *old, *t = NULL;
    char *nsp = NULL, *name = NULL;
    pgd_layout_t l;
    jw_buf_t j;
    int rc;

    memset(&l, 0, sizeof(l));
    jw_init(&j);
    if (s == NULL || s->name == NULL)
        return wr_err_set(err, WR_EINVAL, "ensure_table without a schema");
    if (s->ncols == 0) {
        wr_err_set(err, WR_EUNSUPPORTED, "table \"%s.%s\" has no columns", s->nsp, s->name);
        wr_err_hint(err, "add a column to the source table, or leave it out of the publication");
        return WR_EUNSUPPORTED;
    }
    for (int i = 0; i < s->ncols; i++)
        if (s->cols[i].name == NULL || s->cols[i].name[0] == '\0')
            return wr_err_set(err, WR_EINVAL, "column %d of table \"%s.%s\" has no name", i + 1,
                              s->nsp, s->name);
    if ((rc = pgd_target_name(d, s, &nsp, &name, err)) < 0)
        return rc;
    old = pgd_lookup(d, s->relid);
    if (old != NULL && strcmp(old->nsp, nsp) == 0 && strcmp(old->name, name) == 0 &&
        wr_schema_equal(old->schema, s)) {
        rc = 0;
        goto out;
    }
    if (old != NULL && (old->pend.nents > 0 || old->pend.nops > 0) &&
        (rc = pgd_flush_table(d, old, err)) < 0)
        goto out;
    if ((rc = pgd_layout_read(d, s->relid, nsp, name, &l, err)) < 0)
        goto out;
    if (l.ncols == 0) {
        /* the table is gone (or was never made): create it from the stream's schema */
        pgd_buf_t *b = &d->sql;
        const char *bad = NULL;

        if ((rc = pgd_ensure_schema(d, nsp, err)) < 0 || (rc = pgd_types_ensure(d, s, err)) < 0)
            goto out;
        pgd_sql_start(d, b);
        if (!pgd_create_sql(b, s, nsp, name, true, d->history, &bad)) {
            wr_err_set(err, WR_EDATA,
                       "destination table \"%s.%s\" does not exist, and column \"%s\" has no "
                       "type name to create it with",
                       nsp, name, bad);
            wr_err_hint(err, "run \"walrelay resync\" for the table: its copy creates it");
            rc = WR_EDATA;
            goto out;
        }
        pgd_register_sql(d, b, s, nsp, name, 0, &j);
        if ((rc = pgd_exec(d, b, "creating a table", err)) < 0)
            goto out;
        log_info("table created in the destination table=%s.%s", nsp, name);
        if ((rc = pgd_layout_read(d, s->relid, nsp, name, &l, err)) < 0)
            goto out;
    }
    if (d->history) {
        if ((rc = pgd_hist_prepare(d, s, nsp, name, &l, false, err)) < 0)
            goto out;
        goto registered;
    }
    /* the same columns, by name and position */
    for (int i = 0; i < s->ncols || i < l.ncols; i++) {
        if (i >= l.ncols || i >= s->ncols || strcmp(l.names[i], s->cols[i].name) != 0) {
            if (i >= l.ncols)
                wr_err_set(err, WR_EUNSUPPORTED,
                           "destination table \"%s.%s\" does not match the source: it has no "
                           "column \"%s\" (column %d of the source)",
                           nsp, name, s->cols[i].name, i + 1);
            else if (i >= s->ncols)
                wr_err_set(err, WR_EUNSUPPORTED,
                           "destination table \"%s.%s\" does not match the source: it has an "
                           "extra column \"%s\" (column %d), the source has %u columns",
                           nsp, name, l.names[i], i + 1, (unsigned)s->ncols);
            else
                wr_err_set(err, WR_EUNSUPPORTED,
                           "destination table \"%s.%s\" does not match the source: column %d is "
                           "\"%s\" in the destination, \"%s\" in the source",
                           nsp, name, i + 1, l.names[i], s->cols[i].name);
            wr_err_hint(err, "the destination table was made or changed outside walrelay; run "
                             "\"walrelay resync\" for the table (its copy creates it again)");
            rc = WR_EUNSUPPORTED;
            goto out;
        }
    }
    if (l.pk_pending && l.pkname == NULL) {
        /* a copy committed its rows but not its key (it did not finish): build it now */
        pgd_buf_t *b = &d->sql;

        pgd_sql_start(d, b);
        pgd_add_pk_sql(b, s, nsp, name);
        pgd_buf_add(b, "UPDATE walrelay.tables SET pk_pending = false");
        pgd_where_rel(d, b, s->relid);
        if ((rc = pgd_exec(d, b, "building the primary key", err)) < 0)
            goto out;
        pgd_layout_free(&l);
        if ((rc = pgd_layout_read(d, s->relid, nsp, name, &l, err)) < 0)
            goto out;
    }
registered:
    if ((rc = pgd_table_new(s, nsp, name, &l, d->history, &t, err)) < 0)
        goto out;
    {
        pgd_buf_t *b = &d->sql;

        pgd_sql_start(d, b);
        pgd_register_sql(d, b, s, nsp, name, -1, &j);
        if (jw_failed(&j)) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory registering \"%s.%s\"", nsp, name);
            goto out;
        }
        if ((rc = pgd_exec(d, b, "registering a table", err)) < 0)
            goto out;
    }
    t->ddl_txn = d->in_txn;
    log_debug("table registered table=%s.%s relid=%u match_columns=%d by_row=%d fold=%d "
              "target_pk_columns=%d",
              nsp, name, (unsigned)s->relid, t->nkeys, t->by_row, t->fold, pgd_layout_npk(&l));
    pgd_forget(d, s->relid);
    pgd_link(d, t);
    t = NULL;
out:
    pgd_table_free(t);
    pgd_layout_free(&l);
    jw_free(&j);
    free(nsp);
    free(name);
    return rc;
}

/* ---- schema versions ---------------------------------------------------------------------- */

static int
pgd_version_sql(dest_pg_t *d, pgd_buf_t *b, const wr_schema_t *s, const dest_tmeta_t *m,
                const char *change, jw_buf_t *j)
{
    char lsn[32];

    jw_reset(j);
    pgd_columns_json(j, s);
    wr_lsn_format(m->version.commit_lsn, lsn, sizeof(lsn));
    pgd_buf_add(b, "INSERT INTO walrelay.schemas (pipeline, relid, version_lsn, version_ordinal, "
                   "nsp, name, columns, relfilenode, attstate, attxmins, change) VALUES (");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_addf(b, ", %u, '%s', %u, ", (unsigned)s->relid, lsn, (unsigned)m->version.ordinal);
    pgd_buf_lit(b, s->nsp ? s->nsp : "", s->nsp ? strlen(s->nsp) : 0);
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, s->name, strlen(s->name));
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, j->data ? j->data : "[]", j->len);
    pgd_buf_addf(b, "::jsonb, %u, ", (unsigned)m->relfilenode);
    pgd_buf_lit(b, m->attstate ? m->attstate : "", m->attstate ? strlen(m->attstate) : 0);
    pgd_buf_add(b, ", '");
    for (uint16_t a = 0; m->attxmin != NULL && a < m->natts; a++)
        pgd_buf_addf(b, "%s%u", a ? " " : "", (unsigned)m->attxmin[a]);
    pgd_buf_add(b, "', ");
    pgd_buf_lit(b, change ? change : "", change ? strlen(change) : 0);
    pgd_buf_add(b, ") ON CONFLICT (pipeline, relid, version_lsn, version_ordinal) DO UPDATE SET "
                   "nsp = excluded.nsp, name = excluded.name, columns = excluded.columns, "
                   "relfilenode = excluded.relfilenode, attstate = excluded.attstate, "
                   "attxmins = excluded.attxmins, change = excluded.change, recorded_at = now(); ");
    return jw_failed(j) ? WR_ENOMEM : 0;
}

/* Parses "attstate" and "attxmins" into m (natts 0 if malformed, as sqlite does). */
static int
pgd_meta_parse(const char *attstate, const char *xmins, dest_tmeta_t *m, wr_err_t *err)
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
    free(m->attstate);
    free(m->attxmin);
    m->attstate = NULL;
    m->attxmin = NULL;
    m->natts = 0;
    return 0;
}

/* A schema from rows of (name, type_oid, typmod, key, not_null, type_name) starting at
 * column c0 of r. */
static int
pgd_schema_from_rows(uint32_t relid, const char *nsp, const char *name, const char *replident,
                     PGresult *r, int c0, wr_schema_t **out, wr_err_t *err)
{
    int n = PQntuples(r);
    wr_schema_t *s;

    *out = NULL;
    if (n <= 0 || n > UINT16_MAX)
        return wr_err_set(err, WR_EDEST, "the recorded columns of table \"%s.%s\" cannot be read",
                          nsp, name);
    s = wr_schema_new(relid, nsp, name, (uint16_t)n);
    if (s == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of \"%s\"", name);
    s->replident = replident && replident[0] ? replident[0] : 'd';
    for (int i = 0; i < n; i++) {
        s->cols[i].name = wr_strdup(PQgetvalue(r, i, c0));
        s->cols[i].type_oid = (uint32_t)strtoul(PQgetvalue(r, i, c0 + 1), NULL, 10);
        s->cols[i].typmod = (int32_t)strtol(PQgetvalue(r, i, c0 + 2), NULL, 10);
        s->cols[i].is_key = strcmp(PQgetvalue(r, i, c0 + 3), "true") == 0;
        s->cols[i].not_null = strcmp(PQgetvalue(r, i, c0 + 4), "true") == 0;
        if (!PQgetisnull(r, i, c0 + 5))
            s->cols[i].type_name = wr_strdup(PQgetvalue(r, i, c0 + 5));
        if (s->cols[i].name == NULL) {
            wr_schema_free(s);
            return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of \"%s\"", name);
        }
    }
    *out = s;
    return 0;
}

static int
pgd_get_version(dest_t *base, uint32_t relid, wr_schema_t **schema, dest_tmeta_t *meta,
                wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    PGresult *r;
    int rc;

    *schema = NULL;
    memset(meta, 0, sizeof(*meta));
    pgd_sql_start(d, b);
    pgd_buf_add(b, "WITH v AS (SELECT * FROM walrelay.schemas");
    pgd_where_rel(d, b, relid);
    pgd_buf_add(b,
                " ORDER BY version_lsn DESC, version_ordinal DESC LIMIT 1) "
                "SELECT x.e->>'name', x.e->>'type_oid', x.e->>'typmod', x.e->>'key', "
                "x.e->>'not_null', x.e->>'type_name', v.version_lsn::text, v.version_ordinal, "
                "v.relfilenode, v.attstate, v.attxmins, v.nsp, v.name FROM v, "
                "jsonb_array_elements(v.columns) WITH ORDINALITY AS x(e, ord) ORDER BY x.ord; "
                "SELECT x.e->>'name', x.e->>'type_oid', x.e->>'typmod', x.e->>'key', "
                "x.e->>'not_null', x.e->>'type_name', t.src_nsp, t.src_name FROM "
                "walrelay.tables t, jsonb_array_elements(t.columns) WITH ORDINALITY AS x(e, ord)");
    pgd_buf_add(b, " WHERE t.pipeline = ");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_addf(b, " AND t.relid = %u ORDER BY x.ord", (unsigned)relid);
    if ((rc = pgd_run(d, b, NULL, 0, &res, "reading a schema version", err)) < 0)
        goto out;
    if (res.n != 2) {
        rc = wr_err_set(err, WR_EDEST, "reading a schema version: %d results", res.n);
        goto out;
    }
    r = res.r[0];
    if (PQntuples(r) > 0) {
        if (wr_lsn_parse(PQgetvalue(r, 0, 6), &meta->version.commit_lsn) < 0) {
            rc = wr_err_set(err, WR_EDEST, "a recorded schema version of relid %u is unreadable",
                            (unsigned)relid);
            goto out;
        }
        meta->version.ordinal = (uint32_t)strtoul(PQgetvalue(r, 0, 7), NULL, 10);
        meta->relfilenode = (uint32_t)strtoul(PQgetvalue(r, 0, 8), NULL, 10);
        if ((rc = pgd_meta_parse(PQgetvalue(r, 0, 9), PQgetvalue(r, 0, 10), meta, err)) < 0 ||
            (rc = pgd_schema_from_rows(relid, PQgetvalue(r, 0, 11), PQgetvalue(r, 0, 12), "d", r, 0,
                                       schema, err)) < 0)
            dest_tmeta_clear(meta);
        goto out;
    }
    r = res.r[1];
    if (PQntuples(r) > 0)
        rc = pgd_schema_from_rows(relid, PQgetvalue(r, 0, 6), PQgetvalue(r, 0, 7), "d", r, 0,
                                  schema, err);
out:
    pgd_res_clear(&res);
    return rc;
}

/* NOT NULL of the target's columns as the source has them now (a DROP NOT NULL on the
 * source must not leave the target refusing NULLs). Appends ALTERs to b. */
static void
pgd_notnull_sql(pgd_buf_t *b, const wr_schema_t *s, const pgd_layout_t *l, const char *nsp,
                const char *name)
{
    for (int i = 0; i < s->ncols && i < l->ncols; i++) {
        if (s->cols[i].not_null == l->notnull[i] || l->pk[i] > 0)
            continue;
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " ALTER COLUMN ");
        pgd_buf_ident(b, s->cols[i].name);
        pgd_buf_add(b, s->cols[i].not_null ? " SET NOT NULL; " : " DROP NOT NULL; ");
    }
}

static int
pgd_put_version(dest_t *base, const wr_schema_t *s, const dest_tmeta_t *meta, const char *change,
                wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->sql;
    char *nsp = NULL, *name = NULL;
    pgd_table_t *t;
    pgd_layout_t l;
    jw_buf_t j;
    int rc;

    if ((rc = pgd_need_txn(d, "put_version", err)) < 0)
        return rc;
    memset(&l, 0, sizeof(l));
    jw_init(&j);
    if ((rc = pgd_target_name(d, s, &nsp, &name, err)) < 0)
        return rc;
    if ((t = pgd_lookup(d, s->relid)) != NULL && (rc = pgd_flush_table(d, t, err)) < 0)
        goto out;
    if ((rc = pgd_layout_read(d, s->relid, nsp, name, &l, err)) < 0)
        goto out;
    pgd_sql_start(d, b);
    if (l.ncols == s->ncols)
        pgd_notnull_sql(b, s, &l, nsp, name);
    if (pgd_version_sql(d, b, s, meta, change, &j) < 0) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory recording a schema version");
        goto out;
    }
    rc = pgd_exec(d, b, "recording a schema version", err);
out:
    pgd_layout_free(&l);
    jw_free(&j);
    free(nsp);
    free(name);
    return rc;
}

/* ---- alter_table -------------------------------------------------------------------------- */

/* History mode: a followed schema change never drops anything: renames rename (through
 * temporary names, so swaps work), type changes change the column's type, added columns
 * are added (the history's earlier rows read NULL there), a dropped column stays (NULL in
 * later rows), a new key gets its lookup index. */
static int
pgd_hist_alter(dest_pg_t *d, const wr_schema_t *os, const wr_schema_t *ns, const dest_alter_t *plan,
               const char *nsp, const char *name, pgd_layout_t *l, jw_buf_t *j, wr_err_t *err)
{
    pgd_buf_t *b = &d->sql;
    bool any = false;
    int rc;

    for (int i = 0; i < os->ncols; i++) {
        bool have = false;

        for (int k = 0; k < l->ncols && !have; k++)
            have = strcmp(l->names[k], os->cols[i].name) == 0;
        if (!have) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "destination table \"%s.%s\" has no column \"%s\" of its recorded schema",
                       nsp, name, os->cols[i].name);
            wr_err_hint(err, "the destination table was changed outside walrelay; rename it in "
                             "the destination, then run \"walrelay resync\" for the table");
            return WR_EUNSUPPORTED;
        }
    }
    if ((rc = pgd_types_ensure(d, ns, err)) < 0)
        return rc;
    pgd_sql_start(d, b);
    for (int pass = 0; pass < 2; pass++) {
        for (int c = 0; c < ns->ncols; c++) {
            char tmp[48];

            if (plan->src[c] < 0 || strcmp(os->cols[plan->src[c]].name, ns->cols[c].name) == 0)
                continue;
            snprintf(tmp, sizeof(tmp), "_walrelay_rename_%d", c);
            pgd_buf_add(b, "ALTER TABLE ");
            pgd_buf_qname(b, nsp, name);
            pgd_buf_add(b, " RENAME COLUMN ");
            pgd_buf_ident(b, pass == 0 ? os->cols[plan->src[c]].name : tmp);
            pgd_buf_add(b, " TO ");
            pgd_buf_ident(b, pass == 0 ? tmp : ns->cols[c].name);
            pgd_buf_add(b, "; ");
            any = true;
        }
    }
    for (int c = 0; c < ns->ncols; c++) {
        const wr_column_t *oc, *nc = &ns->cols[c];

        if (plan->src[c] < 0)
            continue;
        oc = &os->cols[plan->src[c]];
        if ((oc->type_oid == nc->type_oid && oc->typmod == nc->typmod) || nc->type_name == NULL ||
            nc->type_name[0] == '\0')
            continue;
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " ALTER COLUMN ");
        pgd_buf_ident(b, nc->name);
        pgd_buf_add(b, " TYPE ");
        pgd_buf_add(b, nc->type_name);
        pgd_buf_add(b, " USING ");
        pgd_buf_ident(b, nc->name);
        pgd_buf_add(b, "::");
        pgd_buf_add(b, nc->type_name);
        pgd_buf_add(b, "; ");
        any = true;
    }
    if (any && (rc = pgd_exec(d, b, "altering the history table", err)) < 0) {
        if (rc == WR_EUNSUPPORTED || rc == WR_EDEST)
            wr_err_hint(err, "a column of that name is in the history already (dropped earlier): "
                             "rename it in the destination, then resync the table");
        return rc;
    }
    if (any) {
        pgd_layout_free(l);
        if ((rc = pgd_layout_read(d, os->relid, nsp, name, l, err)) < 0)
            return rc;
    }
    /* added columns (a name dropped earlier that comes back is reused), the key's index */
    if ((rc = pgd_hist_prepare(d, ns, nsp, name, l, false, err)) < 0)
        return rc;
    pgd_sql_start(d, b);
    pgd_register_sql(d, b, ns, nsp, name, 0, j);
    if (pgd_version_sql(d, b, ns, plan->meta, plan->summary, j) < 0)
        return wr_err_set(err, WR_ENOMEM, "out of memory recording a schema version");
    if ((rc = pgd_exec(d, b, "recording the history table's schema", err)) < 0)
        return rc;
    pgd_forget(d, os->relid); /* registered again by the caller's ensure_table */
    log_info("history table altered in the destination table=%s.%s change=\"%s\"", nsp, name,
             plan->summary ? plan->summary : "");
    return 0;
}

static int
pgd_alter_table(dest_t *base, const wr_schema_t *os, const wr_schema_t *ns,
                const dest_alter_t *plan, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->sql;
    char *nsp = NULL, *name = NULL, *onsp = NULL, *oname = NULL;
    bool key_same = true;
    pgd_table_t *t;
    pgd_layout_t l;
    jw_buf_t j;
    int rc;

    memset(&l, 0, sizeof(l));
    jw_init(&j);
    if ((rc = pgd_need_txn(d, "alter_table", err)) < 0)
        return rc;
    if (os == NULL || ns == NULL || plan == NULL || plan->src == NULL || plan->fill == NULL ||
        plan->meta == NULL || ns->ncols == 0 || os->relid != ns->relid)
        return wr_err_set(err, WR_EINVAL, "alter_table without both schemas and a plan");
    if ((rc = pgd_target_name(d, os, &onsp, &oname, err)) < 0 ||
        (rc = pgd_target_name(d, ns, &nsp, &name, err)) < 0)
        goto out;
    if (strcmp(onsp, nsp) != 0 || strcmp(oname, name) != 0) {
        rc = wr_err_set(err, WR_EINVAL, "alter_table cannot rename table \"%s.%s\" to \"%s.%s\"",
                        onsp, oname, nsp, name);
        goto out;
    }
    for (int c = 0; c < ns->ncols; c++)
        if (plan->src[c] < -1 || plan->src[c] >= os->ncols) {
            rc = wr_err_set(err, WR_EINVAL, "alter_table: column %d maps to %d of %u", c,
                            (int)plan->src[c], (unsigned)os->ncols);
            goto out;
        }
    if ((t = pgd_lookup(d, os->relid)) != NULL && (rc = pgd_flush_table(d, t, err)) < 0)
        goto out;
    if ((rc = pgd_layout_read(d, os->relid, nsp, name, &l, err)) < 0)
        goto out;
    if (d->history) {
        rc = pgd_hist_alter(d, os, ns, plan, nsp, name, &l, &j, err);
        goto out;
    }
    rc = l.ncols == os->ncols ? 0 : -1;
    for (int i = 0; rc == 0 && i < l.ncols; i++)
        rc = strcmp(l.names[i], os->cols[i].name) == 0 ? 0 : -1;
    if (rc != 0) {
        wr_err_set(err, WR_EUNSUPPORTED,
                   "destination table \"%s.%s\" does not match its recorded schema (%d columns, "
                   "%u recorded)",
                   nsp, name, l.ncols, (unsigned)os->ncols);
        wr_err_hint(err, "the destination table was changed outside walrelay; run \"walrelay "
                         "resync\" for the table");
        rc = WR_EUNSUPPORTED;
        goto out;
    }
    if ((rc = pgd_types_ensure(d, ns, err)) < 0)
        goto out;
    pgd_sql_start(d, b);
    /* 1. dropped columns */
    for (int i = 0; i < os->ncols; i++) {
        bool kept = false;

        for (int c = 0; c < ns->ncols && !kept; c++)
            kept = plan->src[c] == i;
        if (kept)
            continue;
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " DROP COLUMN ");
        pgd_buf_ident(b, os->cols[i].name);
        pgd_buf_add(b, "; ");
    }
    /* 2. renames, through temporary names so that swaps work */
    for (int pass = 0; pass < 2; pass++) {
        for (int c = 0; c < ns->ncols; c++) {
            char tmp[48];

            if (plan->src[c] < 0 || strcmp(os->cols[plan->src[c]].name, ns->cols[c].name) == 0)
                continue;
            snprintf(tmp, sizeof(tmp), "_walrelay_rename_%d", c);
            pgd_buf_add(b, "ALTER TABLE ");
            pgd_buf_qname(b, nsp, name);
            pgd_buf_add(b, " RENAME COLUMN ");
            pgd_buf_ident(b, pass == 0 ? os->cols[plan->src[c]].name : tmp);
            pgd_buf_add(b, " TO ");
            pgd_buf_ident(b, pass == 0 ? tmp : ns->cols[c].name);
            pgd_buf_add(b, "; ");
        }
    }
    /* 3. type changes (DEST_DDL_RETYPE: the source relabelled the column, values kept) */
    for (int c = 0; c < ns->ncols; c++) {
        const wr_column_t *oc, *nc = &ns->cols[c];

        if (plan->src[c] < 0)
            continue;
        oc = &os->cols[plan->src[c]];
        if (oc->type_oid == nc->type_oid && oc->typmod == nc->typmod)
            continue;
        if (nc->type_name == NULL || nc->type_name[0] == '\0') {
            rc = wr_err_set(err, WR_EUNSUPPORTED,
                            "column \"%s\" of \"%s.%s\" changed type, and its new type has no name",
                            nc->name, nsp, name);
            goto out;
        }
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " ALTER COLUMN ");
        pgd_buf_ident(b, nc->name);
        pgd_buf_add(b, " TYPE ");
        pgd_buf_add(b, nc->type_name);
        pgd_buf_add(b, " USING ");
        pgd_buf_ident(b, nc->name);
        pgd_buf_add(b, "::");
        pgd_buf_add(b, nc->type_name);
        pgd_buf_add(b, "; ");
    }
    /* 4. added columns: rows that existed get the fill, as a default that is dropped again
     * (no rewrite, like the source's own ADD COLUMN ... DEFAULT) */
    for (int c = 0; c < ns->ncols; c++) {
        const wr_column_t *nc = &ns->cols[c];

        if (plan->src[c] >= 0)
            continue;
        if (nc->type_name == NULL || nc->type_name[0] == '\0') {
            rc = wr_err_set(err, WR_EUNSUPPORTED,
                            "column \"%s\" added to \"%s.%s\" has no type name", nc->name, nsp,
                            name);
            goto out;
        }
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " ADD COLUMN ");
        pgd_buf_ident(b, nc->name);
        pgd_buf_add(b, " ");
        pgd_buf_add(b, nc->type_name);
        if (plan->fill[c].kind == WR_VAL_TEXT) {
            pgd_buf_add(b, " DEFAULT ");
            pgd_buf_lit(b, plan->fill[c].data, plan->fill[c].len);
            pgd_buf_add(b, "::");
            pgd_buf_add(b, nc->type_name);
            pgd_buf_add(b, "; ALTER TABLE ");
            pgd_buf_qname(b, nsp, name);
            pgd_buf_add(b, " ALTER COLUMN ");
            pgd_buf_ident(b, nc->name);
            pgd_buf_add(b, " DROP DEFAULT");
        }
        pgd_buf_add(b, "; ");
    }
    /* 5. NOT NULL as the source has it */
    for (int c = 0; c < ns->ncols; c++) {
        bool was = plan->src[c] >= 0 && plan->src[c] < l.ncols ? l.notnull[plan->src[c]] : false;
        bool inpk = plan->src[c] >= 0 && l.pk[plan->src[c]] > 0;

        if (ns->cols[c].not_null == was || (inpk && !ns->cols[c].not_null))
            continue;
        pgd_buf_add(b, "ALTER TABLE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " ALTER COLUMN ");
        pgd_buf_ident(b, ns->cols[c].name);
        pgd_buf_add(b, ns->cols[c].not_null ? " SET NOT NULL; " : " DROP NOT NULL; ");
    }
    /* 6. the primary key */
    {
        int want = 0, have = 0;

        for (int i = 0; i < l.ncols; i++)
            have += l.pk[i] > 0;
        for (int c = 0; c < ns->ncols; c++) {
            if (!pgd_in_pk(ns, c))
                continue;
            want++;
            if (plan->src[c] < 0 || l.pk[plan->src[c]] != want)
                key_same = false;
        }
        if (want != have)
            key_same = false;
        if (!key_same) {
            if (l.pkname != NULL) {
                pgd_buf_add(b, "ALTER TABLE ");
                pgd_buf_qname(b, nsp, name);
                pgd_buf_add(b, " DROP CONSTRAINT ");
                pgd_buf_ident(b, l.pkname);
                pgd_buf_add(b, "; ");
            }
            pgd_add_pk_sql(b, ns, nsp, name);
        }
    }
    pgd_register_sql(d, b, ns, nsp, name, 0, &j);
    if (pgd_version_sql(d, b, ns, plan->meta, plan->summary, &j) < 0) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory recording a schema version");
        goto out;
    }
    if ((rc = pgd_exec(d, b, "altering the table", err)) < 0) {
        if (rc == WR_EDATA && !key_same)
            wr_err_hint(err, "rows of the destination share a value of the new key: the "
                             "destination no longer matches the source; run \"walrelay resync\" "
                             "for the table");
        goto out;
    }
    pgd_forget(d, os->relid); /* registered again by the caller's ensure_table */
    log_info("table altered in the destination table=%s.%s change=\"%s\"", nsp, name,
             plan->summary ? plan->summary : "");
out:
    pgd_layout_free(&l);
    jw_free(&j);
    free(nsp);
    free(name);
    free(onsp);
    free(oname);
    return rc;
}

/* ---- reset_table (a copy) -------------------------------------------------------------------- */

static int
pgd_reset_table(dest_t *base, const wr_schema_t *s, const dest_tmeta_t *meta, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->sql;
    char *nsp = NULL, *name = NULL;
    pgd_table_t *t = NULL;
    const char *bad = NULL;
    bool same, has_key;
    pgd_layout_t l;
    jw_buf_t j;
    int rc;

    memset(&l, 0, sizeof(l));
    jw_init(&j);
    if ((rc = pgd_need_txn(d, "reset_table", err)) < 0)
        return rc;
    if (s == NULL || s->name == NULL || s->ncols == 0)
        return pgd_ensure_table(base, s, err); /* its error */
    if ((rc = pgd_target_name(d, s, &nsp, &name, err)) < 0)
        return rc;
    pgd_forget(d, s->relid);
    /* a schema or type this copy needs is created and committed at once, outside the copy's
     * transaction when nothing of it reached the server yet: other workers that need it
     * too wait for that, not for the whole copy */
    if (!d->txn_sent) {
        d->in_txn = false;
        rc = pgd_ensure_schema(d, nsp, err);
        if (rc == 0)
            rc = pgd_types_ensure(d, s, err);
        if (rc != WR_ECONN)
            d->in_txn = true;
    } else if ((rc = pgd_ensure_schema(d, nsp, err)) == 0) {
        rc = pgd_types_ensure(d, s, err);
    }
    if (rc < 0 || (rc = pgd_layout_read(d, s->relid, nsp, name, &l, err)) < 0)
        goto out;
    has_key = false;
    for (int i = 0; i < s->ncols && !d->history; i++)
        has_key = has_key || pgd_in_pk(s, i);
    same = l.ncols == s->ncols && (pgd_layout_pk_is(&l, s) || l.pkname == NULL);
    for (int i = 0; same && i < l.ncols; i++)
        same = strcmp(l.names[i], s->cols[i].name) == 0 && s->cols[i].type_name != NULL &&
               strcmp(l.types[i], s->cols[i].type_name) == 0 &&
               l.notnull[i] == (s->cols[i].not_null || l.pk[i] > 0);
    /* history: the history stays; the columns this copy has are added or retyped, and
     * only an earlier copy's rows go */
    if (d->history && l.ncols > 0 && (rc = pgd_hist_prepare(d, s, nsp, name, &l, true, err)) < 0)
        goto out;
    pgd_sql_start(d, b);
    if (d->history && l.ncols > 0) {
        pgd_buf_add(b, "DELETE FROM ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, " WHERE _change_type = 'copy'; ");
        same = true;
    } else if (same && !d->history) {
        /* the same table: emptied, its primary key built again once the rows are in */
        pgd_buf_add(b, "TRUNCATE ");
        pgd_buf_qname(b, nsp, name);
        pgd_buf_add(b, "; ");
        if (l.pkname != NULL) {
            pgd_buf_add(b, "ALTER TABLE ");
            pgd_buf_qname(b, nsp, name);
            pgd_buf_add(b, " DROP CONSTRAINT ");
            pgd_buf_ident(b, l.pkname);
            pgd_buf_add(b, "; ");
        }
    } else {
        if (l.ncols > 0) {
            pgd_buf_add(b, "DROP TABLE ");
            pgd_buf_qname(b, nsp, name);
            pgd_buf_add(b, "; ");
        }
        if (!pgd_create_sql(b, s, nsp, name, false, d->history, &bad)) {
            wr_err_set(err, WR_EUNSUPPORTED,
                       "column \"%s\" of \"%s.%s\" has no type name to create the table with", bad,
                       s->nsp, s->name);
            rc = WR_EUNSUPPORTED;
            goto out;
        }
    }
    pgd_register_sql(d, b, s, nsp, name, has_key ? 1 : 0, &j);
    if (meta != NULL) {
        pgd_buf_add(b, "DELETE FROM walrelay.schemas");
        pgd_where_rel(d, b, s->relid);
        pgd_buf_add(b, "; ");
        if (pgd_version_sql(d, b, s, meta, "copy", &j) < 0) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory recording a schema version");
            goto out;
        }
    }
    if ((rc = pgd_exec(d, b, same ? "emptying the table" : "creating the table", err)) < 0) {
        if (rc == WR_EUNSUPPORTED && !same)
            wr_err_hint(err, "something in the destination depends on the table (a view, a "
                             "foreign key): drop it, then run \"walrelay resync\" for the table");
        goto out;
    }
    log_info("table %s in the destination for a copy table=%s.%s",
             same ? (d->history ? "kept (an earlier copy's rows deleted)" : "emptied") : "created",
             nsp, name);
    pgd_layout_free(&l);
    if ((rc = pgd_layout_read(d, s->relid, nsp, name, &l, err)) < 0 ||
        (rc = pgd_table_new(s, nsp, name, &l, d->history, &t, err)) < 0)
        goto out;
    t->ddl_txn = true;
    t->copy_lsn = meta != NULL ? meta->version.commit_lsn : 0;
    t->copy_seq = 0;
    pgd_link(d, t);
out:
    pgd_layout_free(&l);
    jw_free(&j);
    free(nsp);
    free(name);
    return rc;
}

/* ---- the copy -------------------------------------------------------------------------------- */

/* The built-in types (and their arrays) whose binary form carries nothing that differs
 * between two clusters of one major version: no OIDs (reg* types, oidvector), no locale
 * or encoding of its own (xml, tsvector). Their binary send and receive functions are
 * exact, as text is, and cost both servers less (timestamptz, numeric, uuid above all). */
static const uint32_t pgd_binary_oids[] = {
    16,   17,   18,   19,   20,   21,   23,   25,   26,   114,  199,  600,  601,  602,  603,
    604,  628,  629,  650,  651,  700,  701,  718,  719,  774,  775,  790,  791,  829,  869,
    1000, 1001, 1002, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1017, 1018, 1019, 1020, 1021,
    1022, 1027, 1028, 1040, 1041, 1042, 1043, 1082, 1083, 1114, 1115, 1182, 1183, 1184, 1185,
    1186, 1187, 1231, 1266, 1270, 1560, 1561, 1562, 1563, 1700, 2950, 2951, 3220, 3221, 3802,
    3807, 3904, 3905, 3906, 3907, 3908, 3909, 3910, 3911, 3912, 3913, 3926, 3927, 4451, 4532,
    4533, 4534, 4535, 4536, 6150, 6151, 6152, 6153, 6155, 6157};

static bool
pgd_binary_type(uint32_t oid)
{
    for (size_t i = 0; i < sizeof(pgd_binary_oids) / sizeof(pgd_binary_oids[0]); i++)
        if (pgd_binary_oids[i] == oid)
            return true;
    return false;
}

/* The copy goes in the binary format when the source's rows can pass through untouched in
 * it: every column of a type above, both servers of the same major version (the binary
 * forms are PostgreSQL's own, not promised across versions), and not in history mode
 * (whose copy appends columns to each text line). */
static int
pgd_copy_binary(dest_t *base, const wr_schema_t *s, int source_version, bool *binary, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    int rc;

    *binary = false;
    d->bin_relid = 0;
    if (d->history || s == NULL || s->ncols == 0)
        return 0;
    for (uint16_t i = 0; i < s->ncols; i++)
        if (!pgd_binary_type(s->cols[i].type_oid)) {
            log_info("copy in the text format table=%s.%s column=%s type=%s reason=\"a type "
                     "without a binary form that is the same on both servers\"",
                     s->nsp, s->name, s->cols[i].name,
                     s->cols[i].type_name != NULL ? s->cols[i].type_name : "?");
            return 0;
        }
    if (!d->in_txn && (rc = pgd_ensure_conn(d, err)) < 0)
        return rc;
    if (source_version < 100000 || d->server_version / 10000 != source_version / 10000) {
        log_info("copy in the text format table=%s.%s reason=\"the source (%d) and the "
                 "destination (%d) differ in major version\"",
                 s->nsp, s->name, source_version, d->server_version);
        return 0;
    }
    *binary = true;
    d->bin_relid = s->relid;
    d->bin_begun = false;
    return 0;
}

/* Opens COPY t FROM STDIN unless it is open already; in the binary format for the copy
 * that copy_binary said so of. */
static int
pgd_copy_open(dest_pg_t *d, pgd_table_t *t, bool binary, wr_err_t *err)
{
    pgd_buf_t *b = &d->aux;
    int rc;

    if (d->copy_relid == t->relid)
        return 0;
    if (binary && d->bin_begun)
        /* the signature went with the first COPY: a second one would refuse the rest */
        return wr_err_set(err, WR_EINVAL,
                          "the binary COPY of \"%s.%s\" was ended before its last row", t->nsp,
                          t->name);
    if (d->copy_relid != 0 && (rc = pgd_copy_end(d, err)) < 0)
        return rc;
    pgd_sql_start(d, b);
    pgd_buf_add(b, "COPY ");
    pgd_buf_add(b, t->label);
    if (t->history) {
        pgd_hist_collist(b, t);
    } else {
        pgd_buf_add(b, " (");
        for (int c = 0; c < t->ncols; c++) {
            if (c)
                pgd_buf_add(b, ", ");
            pgd_buf_ident(b, t->schema->cols[c].name);
        }
        pgd_buf_add(b, ")");
    }
    pgd_buf_add(b, binary ? " FROM STDIN (FORMAT binary)" : " FROM STDIN");
    return pgd_copy_begin(d, b, t->relid, "copying rows", err);
}

static int
pgd_write_copy(dest_t *base, uint32_t relid, const char *data, size_t len, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_table_t *t;
    int rc;

    bool binary = d->bin_relid == relid && relid != 0;

    if ((rc = pgd_need_txn(d, "write_copy", err)) < 0 ||
        (rc = pgd_get_table(d, relid, &t, err)) < 0 || (rc = pgd_copy_open(d, t, binary, err)) < 0)
        return rc;
    if (binary) {
        d->bin_begun = true;
        return pgd_copy_put(d, data, len, err);
    }
    if (t->history) {
        /* each line with the copy's meta columns added */
        pgd_buf_reset(&d->data);
        pgd_hist_copy_lines(t, &d->data, data, len);
        if (d->data.oom)
            return wr_err_set(err, WR_ENOMEM, "out of memory copying rows");
        return pgd_copy_put(d, d->data.p, d->data.len, err);
    }
    return pgd_copy_put(d, data, len, err);
}

static int
pgd_write_rows(dest_t *base, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->data;
    pgd_table_t *t;
    int rc;

    if ((rc = pgd_need_txn(d, "write_rows", err)) < 0 ||
        (rc = pgd_get_table(d, relid, &t, err)) < 0)
        return rc;
    if (n == 0)
        return 0;
    if ((rc = pgd_copy_open(d, t, false, err)) < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        const wr_row_t *r = &rows[i];

        if (r->ncols != t->ncols)
            return wr_err_set(err, WR_EINVAL, "copied row of \"%s.%s\" has %u columns, expected %u",
                              t->nsp, t->name, (unsigned)r->ncols, (unsigned)t->ncols);
        pgd_buf_reset(b);
        for (int c = 0; c < t->ncols; c++) {
            if (r->vals[c].kind != WR_VAL_TEXT && r->vals[c].kind != WR_VAL_NULL)
                return wr_err_set(err, WR_EINVAL,
                                  "copied value of column \"%s\" of \"%s.%s\" is not text",
                                  t->schema->cols[c].name, t->nsp, t->name);
            if (c)
                pgd_buf_addn(b, "\t", 1);
            pgd_buf_copyval(b, r->vals[c].kind, r->vals[c].data, r->vals[c].len);
        }
        pgd_buf_addn(b, "\n", 1);
        if (t->history && !b->oom) {
            /* the same line with the copy's meta columns (through aux: b is the input) */
            pgd_buf_reset(&d->aux);
            pgd_hist_copy_lines(t, &d->aux, b->p, b->len);
            if (d->aux.oom)
                return wr_err_set(err, WR_ENOMEM, "out of memory copying rows");
            if ((rc = pgd_copy_put(d, d->aux.p, d->aux.len, err)) < 0)
                return rc;
            continue;
        }
        if (b->oom)
            return wr_err_set(err, WR_ENOMEM, "out of memory copying rows");
        if ((rc = pgd_copy_put(d, b->p, b->len, err)) < 0)
            return rc;
    }
    return 0;
}

static int
pgd_copy_done(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->sql;
    pgd_table_t *t;
    pgd_layout_t l;
    int rc;

    if ((rc = pgd_need_txn(d, "copy_done", err)) < 0 || (rc = pgd_get_table(d, relid, &t, err)) < 0)
        return rc;
    d->txn_copy_last = true; /* this transaction's commit is synchronous */
    if (d->bin_relid == relid)
        d->bin_relid = 0;
    if (d->copy_relid != 0 && (rc = pgd_copy_end(d, err)) < 0)
        return rc;
    if ((rc = pgd_layout_read(d, relid, t->nsp, t->name, &l, err)) < 0)
        return rc;
    if (t->history) {
        /* no primary key; the key's lookup index, built once the rows are in */
        rc = pgd_hist_prepare(d, t->schema, t->nsp, t->name, &l, false, err);
    } else if (l.pk_pending && l.pkname == NULL) {
        int64_t t0 = wr_now_ms();

        pgd_sql_start(d, b);
        pgd_add_pk_sql(b, t->schema, t->nsp, t->name);
        pgd_buf_add(b, "UPDATE walrelay.tables SET pk_pending = false");
        pgd_where_rel(d, b, relid);
        if ((rc = pgd_exec(d, b, "building the primary key", err)) == 0)
            log_info("primary key built after the copy table=%s.%s ms=%lld", t->nsp, t->name,
                     (long long)(wr_now_ms() - t0));
    }
    pgd_layout_free(&l);
    pgd_forget(d, relid); /* registered again with the stream's schema */
    return rc;
}

/* ---- transactions and keys ------------------------------------------------------------------- */

static int
pgd_begin(dest_t *base, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    int rc;

    if (d->in_txn)
        return wr_err_set(err, WR_EINVAL, "begin inside a transaction (commit or roll back first)");
    if ((rc = pgd_ensure_conn(d, err)) < 0)
        return rc;
    d->in_txn = true;
    d->txn_sent = false;
    d->sp_open = false;
    d->txn_copy = d->txn_copy_last = false;
    return 0;
}

/* After the transaction ended: forget what it did to tables if it rolled back. */
static void
pgd_after_txn(dest_pg_t *d, bool committed)
{
    for (int k = 0; k < PGD_BUCKETS; k++) {
        pgd_table_t *t = d->buckets[k], *next;

        for (; t != NULL; t = next) {
            next = t->next;
            pgd_pend_clear(d, t);
            t->dirty = false;
            t->dirty_next = NULL;
            if (!t->ddl_txn)
                continue;
            if (committed)
                t->ddl_txn = false;
            else
                pgd_forget(d, t->relid);
        }
    }
    d->dirty_head = d->dirty_tail = NULL;
    d->in_txn = d->txn_sent = d->sp_open = false;
    d->copy_relid = 0;
}

static int
pgd_rollback(dest_t *base, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    int rc = 0;

    if (!d->in_txn)
        return 0;
    if (d->conn != NULL && d->copy_relid != 0) {
        PGresult *r;

        wr_err_t perr;

        /* libpq must hold no output before it goes back to blocking mode */
        wr_err_clear(&perr);
        pgd_buf_reset(&d->copybuf);
        d->copyoff = 0;
        if (pgd_copy_pump(d, true, &perr) < 0 ||
            (PQsetnonblocking(d->conn, 0) != 0 &&
             wr_err_set(&perr, WR_EDEST, "libpq kept unsent data") < 0))
            log_err(LOG_LVL_WARN, "ending the COPY", &perr);
        d->copy_busy = false;
        PQputCopyEnd(d->conn, "walrelay: the transaction is rolled back");
        while ((r = PQgetResult(d->conn)) != NULL)
            PQclear(r);
    }
    if (d->txn_sent && d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK) {
        PGresult *r = PQexec(d->conn, "ROLLBACK");

        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = pgd_fail(d, r, "rolling back", err);
        PQclear(r);
    }
    pgd_after_txn(d, false);
    return rc;
}

static int
pgd_flush(dest_t *base, uint32_t *relid, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    int rc;

    *relid = 0;
    if (!d->in_txn)
        return 0;
    if (d->copy_relid != 0) {
        uint32_t r = d->copy_relid;

        if ((rc = pgd_copy_end(d, err)) < 0) {
            *relid = r;
            return rc;
        }
    }
    while (d->dirty_head != NULL) {
        pgd_table_t *t = d->dirty_head;

        if ((rc = pgd_flush_table(d, t, err)) < 0) {
            *relid = t->relid;
            return rc;
        }
    }
    return 0;
}

/* Appends the upsert of the stream's key (no ';'). */
static void
pgd_key_sql(dest_pg_t *d, pgd_buf_t *b, const char *stream, const dest_key_t *key)
{
    char lsn[32];

    wr_lsn_format(key->commit_lsn, lsn, sizeof(lsn));
    pgd_buf_add(b, "INSERT INTO walrelay.progress (pipeline, stream, commit_lsn, ordinal, "
                   "updated_at) VALUES (");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_add(b, ", ");
    pgd_buf_lit(b, stream, strlen(stream));
    pgd_buf_addf(b,
                 ", '%s', %u, now()) ON CONFLICT (pipeline, stream) DO UPDATE SET "
                 "commit_lsn = excluded.commit_lsn, ordinal = excluded.ordinal, "
                 "updated_at = excluded.updated_at",
                 lsn, (unsigned)key->ordinal);
}

/* Appends the key's upsert and COMMIT. */
static void
pgd_commit_sql(dest_pg_t *d, pgd_buf_t *b, const char *stream, const dest_key_t *key)
{
    if (d->txn_copy && !d->txn_copy_last && !d->async) {
        /* a copy's batch before its last: a crash redoes the copy from scratch anyway,
         * and the last batch's synchronous commit flushes the WAL of all of them (its
         * result is counted among the leading statements: append it first) */
        pgd_buf_add(b, "SET LOCAL synchronous_commit = off; ");
        b->nlead++;
    }
    if (key != NULL) {
        pgd_key_sql(d, b, stream, key);
        pgd_buf_add(b, "; ");
    }
    pgd_buf_add(b, "COMMIT");
}

/* After the round trip that ended with pgd_commit_sql: checks that it committed, records
 * the commit, ends the transaction either way. */
static int
pgd_commit_done(dest_pg_t *d, int rc, pgd_res_t *res, wr_err_t *err)
{
    if (rc == 0 && (res->n < 1 || strcmp(PQcmdStatus(res->r[res->n - 1]), "COMMIT") != 0)) {
        rc = wr_err_set(err, WR_EDEST,
                        "committing: the destination rolled the transaction back "
                        "(an earlier statement failed)");
        wr_err_hint(err, "walrelay replays the transaction");
    }
    if (rc == 0) {
        d->ncommits++;
        pgd_after_txn(d, true);
        return 0;
    }
    if (d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK &&
        PQtransactionStatus(d->conn) != PQTRANS_IDLE) {
        PGresult *r = PQexec(d->conn, "ROLLBACK");
        PQclear(r);
    }
    pgd_after_txn(d, false);
    if (rc == WR_EDATA || rc == WR_EUNSUPPORTED)
        rc = err->code = WR_EDEST; /* not one table's: the transaction as a whole */
    return rc;
}

static int
pgd_commit(dest_t *base, const char *stream, const dest_key_t *key, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->sql;
    pgd_res_t res = {0};
    uint32_t relid;
    int rc;

    if ((rc = pgd_need_txn(d, "commit", err)) < 0)
        return rc;
    if (key != NULL && (stream == NULL || stream[0] == '\0')) {
        pgd_rollback(base, &(wr_err_t){0});
        return wr_err_set(err, WR_EINVAL, "commit with a key but no stream");
    }
    if ((rc = pgd_flush(base, &relid, err)) < 0) {
        pgd_rollback(base, &(wr_err_t){0});
        return rc;
    }
    if (!d->txn_sent && key == NULL) {
        pgd_after_txn(d, true); /* nothing reached the server */
        return 0;
    }
    pgd_buf_reset(b);
    if (!d->txn_sent) {
        pgd_buf_add(b, "BEGIN; ");
        b->begin = true;
        b->nlead = 1;
    }
    pgd_commit_sql(d, b, stream, key);
    rc = pgd_run(d, b, NULL, 0, &res, "committing", err);
    rc = pgd_commit_done(d, rc, &res, err);
    pgd_res_clear(&res);
    return rc;
}

/* dest_ops_t.flush_commit: a batch whose only held-back changes are a few new rows of one
 * table (a live stream of inserts) is written and committed in one round trip:
 * [BEGIN;] SAVEPOINT wr; INSERT ...; RELEASE SAVEPOINT wr; <key>; COMMIT. If the INSERT is
 * refused, the savepoint is rolled back and the table reported (*relid), the transaction
 * still open. Anything else: flush, then commit. */
static int
pgd_flush_commit(dest_t *base, const char *stream, const dest_key_t *key, uint32_t *relid,
                 wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_table_t *t = d->dirty_head;
    pgd_buf_t *b = &d->sql;
    pgd_res_t res = {0};
    bool whole;
    long n;
    int rc;

    *relid = 0;
    if ((rc = pgd_need_txn(d, "flush_commit", err)) < 0)
        return rc;
    if (t == NULL || t != d->dirty_tail || d->copy_relid != 0 || key == NULL || stream == NULL)
        goto separately;
    /* whole: the transaction begins in this round trip and holds nothing else. It goes
     * as one statement, WITH walrelay_key AS (<the key's upsert>) INSERT ..., which the
     * server runs and commits as a transaction of its own: no BEGIN, savepoint, COMMIT,
     * or second statement, which cost the target three quarters of the round trip. A
     * refused INSERT rolls all of it back, which leaves what rolling back to a savepoint
     * would: our transaction open, with nothing in it. */
    whole = !d->txn_sent && !(d->txn_copy && !d->async);
    if (whole) {
        pgd_buf_reset(b);
        b->whole = true;
        pgd_buf_add(b, "WITH walrelay_key AS (");
        pgd_key_sql(d, b, stream, key);
        pgd_buf_add(b, ") ");
    } else {
        pgd_sql_start(d, b);
    }
    if ((n = pgd_append_inserts(t, b)) == 0)
        goto separately;
    if (!whole) {
        pgd_buf_add(b, "RELEASE SAVEPOINT wr; ");
        pgd_commit_sql(d, b, stream, key);
    }
    rc = pgd_run(d, b, NULL, 0, &res, "writing changes and committing", err);
    if (rc < 0 && res.n == 0 && (rc == WR_EDATA || rc == WR_EUNSUPPORTED || rc == WR_EINVAL) &&
        d->in_txn && (d->sp_open || (whole && !d->txn_sent))) {
        /* the INSERT was refused and rolled back (to the savepoint): that table's problem */
        char what[160];

        snprintf(what, sizeof(what), "writing changes of \"%s.%s\": ", t->nsp, t->name);
        wr_err_prefix(err, "%s", what);
        *relid = t->relid;
        pgd_pend_clear(d, t);
        t->dirty = false;
        d->dirty_head = d->dirty_tail = NULL;
        pgd_res_clear(&res);
        return rc;
    }
    if (rc == 0 && (res.n < 1 || pgd_res_count(res.r[0]) != n))
        rc = wr_err_set(err, WR_EDEST,
                        "writing changes of \"%s.%s\": the INSERT wrote %ld of %ld "
                        "rows",
                        t->nsp, t->name, res.n ? pgd_res_count(res.r[0]) : -1L, n);
    if (whole && rc == 0 && res.n != 1)
        rc = wr_err_set(err, WR_EDEST, "committing: %d results instead of 1", res.n);
    if (whole && rc == 0) {
        /* the statement succeeded: its transaction committed */
        d->ncommits++;
        pgd_after_txn(d, true);
        pgd_res_clear(&res);
        return 0;
    }
    rc = pgd_commit_done(d, rc, &res, err);
    pgd_res_clear(&res);
    return rc;
separately:
    if ((rc = pgd_flush(base, relid, err)) < 0)
        return rc;
    return pgd_commit(base, stream, key, err);
}

/* Records that the first seq commits are durable once the server's WAL is flushed up to
 * lsn (its insert position when they had all returned). */
static int
pgd_dur_push(dest_pg_t *d, uint64_t seq, wr_lsn_t lsn, wr_err_t *err)
{
    if (d->ndur == d->durcap) {
        size_t cap = d->durcap ? d->durcap * 2 : 64;
        void *n = realloc(d->dur, cap * sizeof(*d->dur));

        if (n == NULL)
            return wr_err_set(err, WR_ENOMEM, "out of memory tracking commits");
        d->dur = n;
        d->durcap = cap;
    }
    d->dur[d->ndur].seq = seq;
    d->dur[d->ndur].lsn = lsn;
    d->ndur++;
    return 0;
}

/* Moves durable_n over the marks whose position the server flushed. */
static void
pgd_dur_pop(dest_pg_t *d, wr_lsn_t flushed)
{
    size_t k = 0;

    while (k < d->ndur && d->dur[k].lsn <= flushed) {
        if (d->dur[k].seq > d->durable_n)
            d->durable_n = d->dur[k].seq;
        k++;
    }
    if (k == 0)
        return; /* also: no marks yet, d->dur may be NULL */
    memmove(d->dur, d->dur + k, (d->ndur - k) * sizeof(*d->dur));
    d->ndur -= k;
}

static int
pgd_durable(dest_t *base, uint64_t *n, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    wr_lsn_t flushed, inserted;
    uint64_t marked;
    int rc;

    if (d->durable_n >= d->ncommits) {
        *n = d->ncommits;
        return 0;
    }
    /* every commit counted in ncommits has returned, so its commit record lies before the
     * insert position read now: they are durable once the flush position passes it */
    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_insert_lsn()::text");
    if ((rc = pgd_run(d, b, NULL, 0, &res, "reading the WAL flush position", err)) < 0)
        return rc;
    if (res.n != 1 || PQntuples(res.r[0]) != 1 ||
        wr_lsn_parse(PQgetvalue(res.r[0], 0, 0), &flushed) < 0 ||
        wr_lsn_parse(PQgetvalue(res.r[0], 0, 1), &inserted) < 0) {
        pgd_res_clear(&res);
        return wr_err_set(err, WR_EDEST, "reading the WAL flush position: no usable answer");
    }
    pgd_res_clear(&res);
    pgd_dur_pop(d, flushed);
    marked = d->ndur > 0 ? d->dur[d->ndur - 1].seq : d->durable_n;
    if (d->ncommits > marked && (rc = pgd_dur_push(d, d->ncommits, inserted, err)) < 0)
        return rc;
    pgd_dur_pop(d, flushed);
    *n = d->durable_n;
    return 0;
}

static int
pgd_last_key(dest_t *base, const char *stream, dest_key_t *out, bool *found, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    int rc;

    out->commit_lsn = 0;
    out->ordinal = 0;
    *found = false;
    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT commit_lsn::text, ordinal FROM walrelay.progress WHERE pipeline = ");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_add(b, " AND stream = ");
    pgd_buf_lit(b, stream, strlen(stream));
    if ((rc = pgd_run(d, b, NULL, 0, &res, "reading a resume key", err)) < 0)
        goto out;
    if (res.n == 1 && PQntuples(res.r[0]) == 1) {
        long long ord = atoll(PQgetvalue(res.r[0], 0, 1));

        if (wr_lsn_parse(PQgetvalue(res.r[0], 0, 0), &out->commit_lsn) < 0 || ord < 0 ||
            ord > (long long)UINT32_MAX) {
            rc = wr_err_set(err, WR_EDEST, "the stored key of stream \"%s\" is unreadable", stream);
            goto out;
        }
        out->ordinal = (uint32_t)ord;
        *found = true;
    }
out:
    pgd_res_clear(&res);
    return rc;
}

static int
pgd_clear_key(dest_t *base, const char *stream, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_buf_t *b = &d->aux;

    pgd_sql_start(d, b);
    pgd_buf_add(b, "DELETE FROM walrelay.progress WHERE pipeline = ");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_add(b, " AND stream = ");
    pgd_buf_lit(b, stream, strlen(stream));
    return pgd_exec(d, b, "clearing a resume key", err);
}

/* ---- data ------------------------------------------------------------------------------------ */

static int
pgd_truncate(dest_pg_t *d, pgd_table_t *t, uint8_t flags, wr_err_t *err)
{
    pgd_buf_t *b = &d->aux;
    int rc;

    /* what came before it is emptied anyway, but its refusals (a key that does not match)
     * would have happened first */
    if ((rc = pgd_flush_table(d, t, err)) < 0)
        return rc;
    pgd_sql_start(d, b);
    if (t->history) {
        /* a copy again (truncate_table): only an earlier copy's rows go */
        pgd_buf_add(b, "DELETE FROM ");
        pgd_buf_add(b, t->label);
        pgd_buf_add(b, " WHERE _change_type = 'copy'");
        t->copy_seq = 0;
        return pgd_exec(d, b, "deleting an earlier copy's rows", err);
    }
    pgd_buf_add(b, "TRUNCATE ");
    pgd_buf_add(b, t->label);
    if (flags & 2)
        pgd_buf_add(b, " RESTART IDENTITY");
    if (flags & 1)
        pgd_buf_add(b, " CASCADE");
    return pgd_exec(d, b, "truncating", err);
}

static int
pgd_truncate_table(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_table_t *t;
    int rc;

    if ((rc = pgd_need_txn(d, "truncate_table", err)) < 0 ||
        (rc = pgd_get_table(d, relid, &t, err)) < 0)
        return rc;
    return pgd_truncate(d, t, 0, err);
}

static int
pgd_write_event(dest_t *base, const dest_event_t *ev, wr_err_t *err)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_table_t *t;
    int rc;

    if ((rc = pgd_need_txn(d, "write_event", err)) < 0)
        return rc;
    if (ev->kind == DEST_EV_BEGIN || ev->kind == DEST_EV_COMMIT)
        return 0; /* the key is stored at commit() */
    if ((rc = pgd_get_table(d, ev->relid, &t, err)) < 0)
        return rc;
    if (d->copy_relid != 0 && (rc = pgd_copy_end(d, err)) < 0)
        return rc;
    if (t->history) /* every change a row, TRUNCATE too */
        return pgd_hist_change(d, t, ev, err);
    if (ev->kind == DEST_EV_TRUNCATE)
        return pgd_truncate(d, t, ev->truncate_flags, err);
    return pgd_write_change(d, t, ev, err);
}

static int64_t
pgd_count_rows(dest_t *base, uint32_t relid)
{
    dest_pg_t *d = (dest_pg_t *)base;
    pgd_table_t *t = pgd_lookup(d, relid);
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    int64_t n = -1;
    wr_err_t err;

    if (t == NULL)
        return -1;
    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT count(*) FROM ");
    pgd_buf_add(b, t->label);
    if (pgd_run(d, b, NULL, 0, &res, "counting rows", &err) == 0 && res.n == 1 &&
        PQntuples(res.r[0]) == 1)
        n = atoll(PQgetvalue(res.r[0], 0, 0));
    pgd_res_clear(&res);
    return n;
}

/* ---- open and close -------------------------------------------------------------------------- */

static void
pgd_close(dest_t *base)
{
    dest_pg_t *d = (dest_pg_t *)base;

    if (d == NULL)
        return;
    if (d->in_txn)
        pgd_rollback(base, &(wr_err_t){0});
    for (int k = 0; k < PGD_BUCKETS; k++) {
        pgd_table_t *t = d->buckets[k], *next;

        for (; t != NULL; t = next) {
            next = t->next;
            pgd_table_free(t);
        }
    }
    if (d->conn != NULL)
        PQfinish(d->conn);
    if (d->src != NULL)
        PQfinish(d->src);
    pgd_buf_free(&d->sql);
    pgd_buf_free(&d->data);
    pgd_buf_free(&d->aux);
    pgd_buf_free(&d->copybuf);
    free(d->dur);
    free(d->conninfo);
    free(d->src_conninfo);
    free(d->pipeline);
    free(d->schema_opt);
    free(d);
}

/* Creates the bookkeeping tables if one is missing. */
static int
pgd_bootstrap_tables(dest_pg_t *d, wr_err_t *err)
{
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    bool ok;
    int rc;

    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT to_regclass('walrelay.progress') IS NOT NULL AND "
                   "to_regclass('walrelay.tables') IS NOT NULL AND "
                   "to_regclass('walrelay.schemas') IS NOT NULL AND "
                   "to_regclass('walrelay.pipelines') IS NOT NULL");
    if ((rc = pgd_run(d, b, NULL, 0, &res, "looking for walrelay's tables", err)) < 0)
        return rc;
    ok = res.n == 1 && PQntuples(res.r[0]) == 1 && strcmp(PQgetvalue(res.r[0], 0, 0), "t") == 0;
    pgd_res_clear(&res);
    if (ok)
        return 0;
    /* one statement under the DDL lock that looks again with a fresh snapshot (another
     * worker may have created them while this one waited for the lock) */
    pgd_sql_start(d, b);
    pgd_buf_addf(b,
                 "DO $walrelay$ BEGIN PERFORM pg_advisory_xact_lock(%lld); IF NOT EXISTS ("
                 "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON "
                 "n.oid = c.relnamespace WHERE n.nspname = 'walrelay' AND c.relname = "
                 "'pipelines') THEN ",
                 (long long)pgd_lock_key("walrelay ddl"));
    pgd_buf_add(b, pgd_bootstrap);
    pgd_buf_add(b, "; END IF; END $walrelay$");
    if ((rc = pgd_exec(d, b, "creating walrelay's tables in the schema \"walrelay\"", err)) < 0)
        return rc;
    log_info("bookkeeping tables created in the destination schema=walrelay");
    return 0;
}

/* walrelay.pipelines(pipeline, mode): the mode a pipeline's tables were made in, recorded
 * at its first open (mirror for a pipeline with tables from before modes were recorded).
 * A configuration of the other mode is refused: a mirror copy would drop a history table,
 * and history rows do not fit a mirror table. */
static int
pgd_mode_check(dest_pg_t *d, const wr_config_t *cfg, wr_err_t *err)
{
    const char *want = d->history ? "history" : "mirror";
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    char have[32] = "";
    int rc;

    pgd_sql_start(d, b);
    pgd_buf_add(b, "INSERT INTO walrelay.pipelines (pipeline, mode) SELECT ");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_add(b, ", CASE WHEN EXISTS (SELECT 1 FROM walrelay.tables WHERE pipeline = ");
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    pgd_buf_addf(b,
                 ") THEN 'mirror' ELSE '%s' END ON CONFLICT (pipeline) DO NOTHING; "
                 "SELECT mode FROM walrelay.pipelines WHERE pipeline = ",
                 want);
    pgd_buf_lit(b, d->pipeline, strlen(d->pipeline));
    if ((rc = pgd_run(d, b, NULL, 0, &res, "recording the destination's mode", err)) < 0)
        return rc;
    if (res.n == 2 && PQntuples(res.r[1]) == 1)
        snprintf(have, sizeof(have), "%s", PQgetvalue(res.r[1], 0, 0));
    pgd_res_clear(&res);
    if (strcmp(have, want) == 0)
        return 0;
    dest_config_error(cfg, "mode", WR_ECONFIG, err,
                      "the destination database holds %s tables of pipeline \"%s\", not %s "
                      "ones",
                      have[0] ? have : "?", d->pipeline, want);
    wr_err_hint(err,
                "keep mode = %s, or give the pipeline another database (or drop its tables "
                "and its rows in walrelay.pipelines, walrelay.tables, walrelay.schemas and "
                "walrelay.progress there)",
                have[0] ? have : "mirror");
    return WR_ECONFIG;
}

int
pgd_open_role(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    const char *conninfo = dest_config_value(cfg, "conninfo");
    const char *schema = dest_config_value(cfg, "schema");
    dest_pg_t *d;
    int rc;

    *out = NULL;
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the postgres destination");
    d->base.ops = &dest_postgres_ops;
    snprintf(d->role, sizeof(d->role), "%s", role ? role : "apply");
    d->conninfo = wr_strdup(conninfo ? conninfo : "");
    d->src_conninfo = wr_strdup(cfg->source_conninfo ? cfg->source_conninfo : "");
    d->pipeline = wr_strdup(cfg->pipeline_name ? cfg->pipeline_name : "walrelay");
    d->schema_opt = schema != NULL && schema[0] != '\0' ? wr_strdup(schema) : NULL;
    d->flush_bytes = cfg->batch_max_bytes > 256 * 1024 ? (size_t)cfg->batch_max_bytes : 256 * 1024;
    d->history = dest_config_value(cfg, "mode") != NULL &&
                 strcmp(dest_config_value(cfg, "mode"), "history") == 0;
    /* the apply worker tracks durability (dest_ops_t.durable); the sync worker and tools
     * commit synchronously */
    d->async = strcmp(d->role, "apply") == 0;
    if (d->conninfo == NULL || d->src_conninfo == NULL || d->pipeline == NULL ||
        (schema != NULL && schema[0] != '\0' && d->schema_opt == NULL)) {
        pgd_close(&d->base);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the postgres destination");
    }
    if ((rc = pgd_ensure_conn(d, err)) < 0 || (rc = pgd_bootstrap_tables(d, err)) < 0 ||
        (rc = pgd_mode_check(d, cfg, err)) < 0) {
        if (rc != WR_ECONFIG)
            wr_err_prefix(err, "opening the postgres destination: ");
        pgd_close(&d->base);
        return rc;
    }
    *out = &d->base;
    return 0;
}

static int
pgd_open(const wr_config_t *cfg, dest_t **out, wr_err_t *err)
{
    return pgd_open_role(cfg, "apply", out, err);
}

const dest_ops_t dest_postgres_ops = {
    .name = "postgres",
    .open = pgd_open,
    .ensure_table = pgd_ensure_table,
    .begin = pgd_begin,
    .truncate_table = pgd_truncate_table,
    .write_rows = pgd_write_rows,
    .write_event = pgd_write_event,
    .commit = pgd_commit,
    .rollback = pgd_rollback,
    .last_key = pgd_last_key,
    .clear_key = pgd_clear_key,
    .count_rows = pgd_count_rows,
    .close = pgd_close,
    .get_version = pgd_get_version,
    .put_version = pgd_put_version,
    .alter_table = pgd_alter_table,
    .reset_table = pgd_reset_table,
    .write_copy = pgd_write_copy,
    .copy_binary = pgd_copy_binary,
    .copy_done = pgd_copy_done,
    .flush = pgd_flush,
    .flush_commit = pgd_flush_commit,
    .ddl_flags = DEST_DDL_RETYPE,
    .durable = pgd_durable,
};
