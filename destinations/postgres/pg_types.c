/*
 * pg_types.c - user-defined column types for the postgres destination: a type the target
 * lacks is created from the source's definition, in the same schema and under the same
 * name, or refused naming the type.
 *
 * NOTES: runs where tables are created (walrelay-sync's copy, walrelay-apply's schema
 * changes). Reads the definition on its own connection to the source ([source] conninfo,
 * opened only when a type is missing, simple queries by OID). Creates, in one DO block
 * under the DDL advisory lock that looks again with a fresh snapshot (another worker may
 * be creating the same type), inside the caller's transaction if it reached the server
 * already, else committed at once (a copy's first transaction: pg_dest.c reset_table):
 *   enum        CREATE TYPE s.t AS ENUM (labels in their order)
 *   domain      CREATE DOMAIN s.t AS <base> [NOT NULL] [CONSTRAINT c CHECK (...)]... (the base
 *               type first if it is user-defined too; defaults are not copied: replicated
 *               rows carry their values)
 *   composite   CREATE TYPE s.t AS (attributes), user-defined attribute types first
 *   array       its element type (the array type comes with it)
 * Refused (WR_EUNSUPPORTED, the type's name and what to do): a type of an extension
 * (CREATE EXTENSION on the target), ranges and multiranges, base types, pseudo-types.
 * A type that exists on the target under the name is used as it is: its values are
 * checked by the target when rows arrive (a missing enum label is then a data error).
 */
#include "pg.h"

#include "../../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PGD_FIRST_USER_OID 16384 /* FirstNormalObjectId: below are built-in objects */
#define PGD_TYPE_DEPTH     16

static int
pgd_src_conn(dest_pg_t *d, wr_err_t *err)
{
    char app[96];

    if (d->src != NULL && PQstatus(d->src) == CONNECTION_OK)
        return 0;
    if (d->src != NULL)
        PQfinish(d->src);
    d->src = NULL;
    snprintf(app, sizeof(app), "walrelay_%s_%s_types", d->pipeline, d->role);
    return pgd_connect(d->src_conninfo, app, "the source", "[source] conninfo", &d->src, err);
}

/* Runs a query on the source; *out is a TUPLES_OK result (caller PQclears). */
static int
pgd_src_query(dest_pg_t *d, const char *sql, PGresult **out, wr_err_t *err)
{
    PGresult *r = PQexec(d->src, sql);

    *out = NULL;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *m = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

        wr_err_set(err, WR_ECONN, "reading a type definition on the source: %s",
                   m ? m : PQerrorMessage(d->src));
        PQclear(r);
        return WR_ECONN;
    }
    *out = r;
    return 0;
}

/* True if the target knows a type by this name (as written in a column definition). */
static int
pgd_type_exists(dest_pg_t *d, const char *name, bool *exists, wr_err_t *err)
{
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    int rc;

    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT to_regtype(");
    pgd_buf_lit(b, name, strlen(name));
    pgd_buf_add(b, ") IS NOT NULL");
    rc = pgd_run(d, b, NULL, 0, &res, "looking up a type", err);
    *exists = rc == 0 && res.n > 0 && PQntuples(res.r[res.n - 1]) == 1 &&
              strcmp(PQgetvalue(res.r[res.n - 1], 0, 0), "t") == 0;
    pgd_res_clear(&res);
    return rc;
}

static int pgd_type_create(dest_pg_t *d, uint32_t oid, const char *column, int depth,
                           wr_err_t *err);

/* Creates the user-defined types among the OIDs in the first column of r. */
static int
pgd_type_create_deps(dest_pg_t *d, PGresult *r, int col, const char *column, int depth,
                     wr_err_t *err)
{
    for (int i = 0; i < PQntuples(r); i++) {
        unsigned long oid = strtoul(PQgetvalue(r, i, col), NULL, 10);
        int rc;

        if (oid >= PGD_FIRST_USER_OID &&
            (rc = pgd_type_create(d, (uint32_t)oid, column, depth + 1, err)) < 0)
            return rc;
    }
    return 0;
}

static int
pgd_type_refuse(const char *column, const char *nsp, const char *name, const char *why,
                const char *hint, wr_err_t *err)
{
    wr_err_set(err, WR_EUNSUPPORTED,
               "column \"%s\" has type \"%s.%s\" (%s), which the destination database does not "
               "have and walrelay cannot create",
               column, nsp, name, why);
    wr_err_hint(err, "%s, then run \"walrelay resync\" for the table", hint);
    return WR_EUNSUPPORTED;
}

static int
pgd_type_create(dest_pg_t *d, uint32_t oid, const char *column, int depth, wr_err_t *err)
{
    PGresult *t = NULL, *x = NULL;
    pgd_buf_t q = {0};
    bool exists = false;
    char sql[1024];
    const char *nsp, *name;
    char kind;
    int rc;

    if (depth > PGD_TYPE_DEPTH)
        return wr_err_set(err, WR_EUNSUPPORTED,
                          "column \"%s\": its type nests user-defined types more than %d deep",
                          column, PGD_TYPE_DEPTH);
    if ((rc = pgd_src_conn(d, err)) < 0)
        return rc;
    snprintf(sql, sizeof(sql),
             "SELECT t.typtype, n.nspname, t.typname, t.typelem, t.typcategory, "
             "t.typbasetype, format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typrelid, "
             "(SELECT e.extname FROM pg_catalog.pg_depend dep JOIN pg_catalog.pg_extension e "
             "ON e.oid = dep.refobjid WHERE dep.classid = 'pg_catalog.pg_type'::regclass "
             "AND dep.objid = t.oid AND dep.refclassid = 'pg_catalog.pg_extension'::regclass "
             "AND dep.deptype = 'e' LIMIT 1) "
             "FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
             "WHERE t.oid = %u",
             (unsigned)oid);
    if ((rc = pgd_src_query(d, sql, &t, err)) < 0)
        return rc;
    if (PQntuples(t) != 1) {
        PQclear(t);
        return wr_err_set(err, WR_EUNSUPPORTED,
                          "column \"%s\": type %u no longer exists on the source", column,
                          (unsigned)oid);
    }
    kind = PQgetvalue(t, 0, 0)[0];
    nsp = PQgetvalue(t, 0, 1);
    name = PQgetvalue(t, 0, 2);
    if (PQgetvalue(t, 0, 4)[0] == 'A' && strtoul(PQgetvalue(t, 0, 3), NULL, 10) != 0) {
        /* an array: its element type brings it */
        unsigned long elem = strtoul(PQgetvalue(t, 0, 3), NULL, 10);

        PQclear(t);
        return elem >= PGD_FIRST_USER_OID
                   ? pgd_type_create(d, (uint32_t)elem, column, depth + 1, err)
                   : 0;
    }
    pgd_buf_qname(&q, nsp, name);
    if (q.oom) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory creating a type");
        goto out;
    }
    /* not there under this name? (looked at again under the lock when it is created) */
    if ((rc = pgd_type_exists(d, q.p, &exists, err)) < 0 || exists)
        goto out;
    if (!PQgetisnull(t, 0, 9)) {
        char hint[256];

        snprintf(hint, sizeof(hint), "CREATE EXTENSION \"%s\" in the destination database",
                 PQgetvalue(t, 0, 9));
        rc = pgd_type_refuse(column, nsp, name, "a type of an extension", hint, err);
        goto out;
    }
    if (kind != 'e' && kind != 'd' && kind != 'c') {
        rc =
            pgd_type_refuse(column, nsp, name,
                            kind == 'r'   ? "a range type"
                            : kind == 'm' ? "a multirange type"
                            : kind == 'b' ? "a base type"
                                          : "a pseudo-type",
                            "create the type in the destination database under the same name", err);
        goto out;
    }
    /* what the definition needs first */
    if (kind == 'd') {
        unsigned long base = strtoul(PQgetvalue(t, 0, 5), NULL, 10);

        if (base >= PGD_FIRST_USER_OID &&
            (rc = pgd_type_create(d, (uint32_t)base, column, depth + 1, err)) < 0)
            goto out;
        snprintf(sql, sizeof(sql),
                 "SELECT conname, pg_catalog.pg_get_constraintdef(oid) FROM "
                 "pg_catalog.pg_constraint WHERE contypid = %u AND contype = 'c' ORDER BY conname",
                 (unsigned)oid);
    } else if (kind == 'e') {
        snprintf(sql, sizeof(sql),
                 "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = %u ORDER BY "
                 "enumsortorder",
                 (unsigned)oid);
    } else {
        snprintf(sql, sizeof(sql),
                 "SELECT a.atttypid, a.attname, format_type(a.atttypid, a.atttypmod) FROM "
                 "pg_catalog.pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT "
                 "a.attisdropped ORDER BY a.attnum",
                 PQgetvalue(t, 0, 8));
    }
    if ((rc = pgd_src_query(d, sql, &x, err)) < 0)
        goto out;
    if (kind == 'c' && (rc = pgd_type_create_deps(d, x, 0, column, depth, err)) < 0)
        goto out;

    /* the statement: the schema and the type, each unless it exists, under the DDL lock in
     * one statement (another worker may create the same type at the same time) */
    {
        pgd_buf_t *b = &d->aux, cs = {0}, csch = {0}, ct = {0}, cty = {0};
        const char *checks[2], *creates[2];

        pgd_buf_add(&csch, "EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = ");
        pgd_buf_lit(&csch, nsp, strlen(nsp));
        pgd_buf_add(&csch, ")");
        pgd_buf_add(&cs, "CREATE SCHEMA ");
        pgd_buf_ident(&cs, nsp);
        pgd_buf_add(&cty, "EXISTS (SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace "
                          "n ON n.oid = t.typnamespace WHERE n.nspname = ");
        pgd_buf_lit(&cty, nsp, strlen(nsp));
        pgd_buf_add(&cty, " AND t.typname = ");
        pgd_buf_lit(&cty, name, strlen(name));
        pgd_buf_add(&cty, ")");
        if (kind == 'e') {
            pgd_buf_add(&ct, "CREATE TYPE ");
            pgd_buf_add(&ct, q.p);
            pgd_buf_add(&ct, " AS ENUM (");
            for (int i = 0; i < PQntuples(x); i++) {
                if (i)
                    pgd_buf_add(&ct, ", ");
                pgd_buf_lit(&ct, PQgetvalue(x, i, 0), (size_t)PQgetlength(x, i, 0));
            }
            pgd_buf_add(&ct, ")");
        } else if (kind == 'd') {
            pgd_buf_add(&ct, "CREATE DOMAIN ");
            pgd_buf_add(&ct, q.p);
            pgd_buf_add(&ct, " AS ");
            pgd_buf_add(&ct, PQgetvalue(t, 0, 6));
            if (strcmp(PQgetvalue(t, 0, 7), "t") == 0)
                pgd_buf_add(&ct, " NOT NULL");
            for (int i = 0; i < PQntuples(x); i++) {
                pgd_buf_add(&ct, " CONSTRAINT ");
                pgd_buf_ident(&ct, PQgetvalue(x, i, 0));
                pgd_buf_add(&ct, " ");
                pgd_buf_add(&ct, PQgetvalue(x, i, 1));
            }
        } else {
            pgd_buf_add(&ct, "CREATE TYPE ");
            pgd_buf_add(&ct, q.p);
            pgd_buf_add(&ct, " AS (");
            for (int i = 0; i < PQntuples(x); i++) {
                if (i)
                    pgd_buf_add(&ct, ", ");
                pgd_buf_ident(&ct, PQgetvalue(x, i, 1));
                pgd_buf_add(&ct, " ");
                pgd_buf_add(&ct, PQgetvalue(x, i, 2));
            }
            pgd_buf_add(&ct, ")");
        }
        checks[0] = csch.p ? csch.p : "";
        creates[0] = cs.p ? cs.p : "";
        checks[1] = cty.p ? cty.p : "";
        creates[1] = ct.p ? ct.p : "";
        pgd_sql_start(d, b);
        if (cs.oom || csch.oom || ct.oom || cty.oom)
            rc = wr_err_set(err, WR_ENOMEM, "out of memory creating a type");
        else if (pgd_buf_guarded(b, checks, creates, 2) < 0)
            rc = pgd_type_refuse(column, nsp, name, "its definition holds \"$walrelay$\"",
                                 "create the type in the destination database under the same name",
                                 err);
        else
            rc = pgd_exec(d, b, "creating a type", err);
        pgd_buf_free(&cs);
        pgd_buf_free(&csch);
        pgd_buf_free(&ct);
        pgd_buf_free(&cty);
        if (rc < 0) {
            char m[sizeof(err->msg)];

            /* name the type, keep the target's reason */
            snprintf(m, sizeof(m), "%s", err->msg);
            wr_err_set(err, err->code == WR_ECONN ? WR_ECONN : WR_EUNSUPPORTED,
                       "column \"%s\": cannot create its type \"%s.%s\" in the destination: %s",
                       column, nsp, name, m);
            rc = err->code;
            goto out;
        }
        log_info("type created in the destination type=%s.%s kind=%s", nsp, name,
                 kind == 'e'   ? "enum"
                 : kind == 'd' ? "domain"
                               : "composite");
    }
out:
    PQclear(t);
    PQclear(x);
    pgd_buf_free(&q);
    return rc;
}

int
pgd_types_ensure(dest_pg_t *d, const wr_schema_t *s, wr_err_t *err)
{
    for (uint16_t i = 0; i < s->ncols; i++) {
        const wr_column_t *c = &s->cols[i];
        bool exists = false;
        int rc;

        if (c->type_oid < PGD_FIRST_USER_OID)
            continue;
        if (c->type_name != NULL && c->type_name[0] != '\0' &&
            (rc = pgd_type_exists(d, c->type_name, &exists, err)) < 0)
            return rc;
        if (exists)
            continue;
        if ((rc = pgd_type_create(d, c->type_oid, c->name, 0, err)) < 0)
            return rc;
    }
    return 0;
}
