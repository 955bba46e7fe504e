/*
 * catalog.c - catalog reads of one source table (see catalog.h).
 *
 * NOTES: every PGresult is cleared on every path; conninfo never appears in an error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/catalog.h"

static bool
cat_bool(const PGresult *res, int row, int col)
{
    return PQgetvalue(res, row, col)[0] == 't';
}

/* The server's message, first line only. */
static void
cat_server_msg(PGconn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s", PQerrorMessage(c));
    buf[strcspn(buf, "\n")] = '\0';
}

int
cat_read(PGconn *c, uint32_t relid, dest_catalog_t *cat, bool *found, wr_err_t *err)
{
    char sql[2048];
    PGresult *res;
    int nrows, nlive = 0;
    bool has_pk = false;
    char replident;

    memset(cat, 0, sizeof(*cat));
    *found = false;
    snprintf(sql, sizeof(sql),
             "SELECT c.relkind, c.relreplident, c.relfilenode, n.nspname, c.relname, a.attnum, "
             "a.attname, a.atttypid, a.atttypmod, a.attnotnull, "
             "CASE WHEN a.attisdropped THEN 'd' WHEN a.attgenerated <> '' THEN 'g' ELSE 'l' END, "
             "a.xmin, "
             "CASE WHEN a.atthasmissing AND NOT a.attisdropped "
             "THEN pg_catalog.array_to_string(a.attmissingval, '') END, "
             "COALESCE(a.attnum = ANY (pk.indkey::pg_catalog.int2[]), false), "
             "COALESCE(a.attnum = ANY (ri.indkey::pg_catalog.int2[]), false), "
             "pg_catalog.format_type(a.atttypid, a.atttypmod) "
             "FROM pg_catalog.pg_class c "
             "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
             "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
             "LEFT JOIN pg_catalog.pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary "
             "LEFT JOIN pg_catalog.pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident "
             "WHERE c.oid = %u ORDER BY a.attnum",
             (unsigned)relid);
    res = PQexec(c, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[512];

        cat_server_msg(c, msg, sizeof(msg));
        PQclear(res);
        return wr_err_set(err, WR_ECONN, "reading the catalog of relid %u: %s", (unsigned)relid,
                          msg);
    }
    nrows = PQntuples(res);
    if (nrows == 0) {
        PQclear(res);
        return 0;
    }
    if (nrows > UINT16_MAX) {
        PQclear(res);
        return wr_err_set(err, WR_EUNSUPPORTED, "relid %u has %d attributes (at most %d)",
                          (unsigned)relid, nrows, UINT16_MAX);
    }
    for (int r = 0; r < nrows; r++) {
        if (atoi(PQgetvalue(res, r, 5)) != r + 1) {
            PQclear(res);
            return wr_err_set(err, WR_EPROTO, "attribute numbers of relid %u are not 1..%d",
                              (unsigned)relid, nrows);
        }
        if (PQgetvalue(res, r, 10)[0] == 'l') {
            nlive++;
            has_pk = has_pk || cat_bool(res, r, 13);
        }
    }
    replident = PQgetvalue(res, 0, 1)[0];
    cat->relkind = PQgetvalue(res, 0, 0)[0];
    cat->meta.relfilenode = (uint32_t)strtoul(PQgetvalue(res, 0, 2), NULL, 10);
    cat->schema =
        wr_schema_new(relid, PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), (uint16_t)nlive);
    cat->missing = calloc(nlive ? (size_t)nlive : 1, sizeof(char *));
    cat->relflags = calloc(nlive ? (size_t)nlive : 1, 1);
    cat->meta.attstate = malloc((size_t)nrows + 1);
    cat->meta.attxmin = calloc((size_t)nrows, sizeof(uint32_t));
    if (cat->schema == NULL || cat->missing == NULL || cat->relflags == NULL ||
        cat->meta.attstate == NULL || cat->meta.attxmin == NULL)
        goto oom;
    cat->schema->replident = replident;
    cat->meta.natts = (uint16_t)nrows;
    cat->meta.attstate[nrows] = '\0';
    for (int r = 0, j = 0; r < nrows; r++) {
        char state = PQgetvalue(res, r, 10)[0];
        bool in_pk = cat_bool(res, r, 13), in_ri = cat_bool(res, r, 14);
        wr_column_t *col;
        char *end = NULL;
        unsigned long oid;
        long typmod;

        cat->meta.attstate[r] = state;
        cat->meta.attxmin[r] = (uint32_t)strtoul(PQgetvalue(res, r, 11), NULL, 10);
        if (state != 'l')
            continue;
        col = &cat->schema->cols[j];
        col->name = wr_strdup(PQgetvalue(res, r, 6));
        col->type_name = wr_strdup(PQgetvalue(res, r, 15));
        if (col->name == NULL || col->type_name == NULL)
            goto oom;
        errno = 0;
        oid = strtoul(PQgetvalue(res, r, 7), &end, 10);
        if (errno != 0 || *end != '\0' || oid > UINT32_MAX) {
            wr_err_set(err, WR_EPROTO, "column \"%s\" of \"%s.%s\" has type oid \"%s\"", col->name,
                       cat->schema->nsp, cat->schema->name, PQgetvalue(res, r, 7));
            PQclear(res);
            dest_catalog_clear(cat);
            return err->code;
        }
        errno = 0;
        typmod = strtol(PQgetvalue(res, r, 8), &end, 10);
        if (errno != 0 || *end != '\0' || typmod < INT32_MIN || typmod > INT32_MAX) {
            wr_err_set(err, WR_EPROTO, "column \"%s\" of \"%s.%s\" has typmod \"%s\"", col->name,
                       cat->schema->nsp, cat->schema->name, PQgetvalue(res, r, 8));
            PQclear(res);
            dest_catalog_clear(cat);
            return err->code;
        }
        col->type_oid = (uint32_t)oid;
        col->typmod = (int32_t)typmod;
        col->not_null = cat_bool(res, r, 9);
        col->is_key = has_pk ? in_pk : in_ri;
        if (!PQgetisnull(res, r, 12) &&
            (cat->missing[j] = wr_strdup(PQgetvalue(res, r, 12))) == NULL)
            goto oom;
        /* what pgoutput flags (logicalrep_write_attrs): every column for FULL, the
         * replica identity index's columns otherwise (the primary key for DEFAULT) */
        cat->relflags[j] = replident == 'f'   ? 1
                           : replident == 'd' ? (in_pk ? 1 : 0)
                           : replident == 'i' ? (in_ri ? 1 : 0)
                                              : 0;
        j++;
    }
    PQclear(res);
    *found = true;
    return 0;
oom:
    PQclear(res);
    dest_catalog_clear(cat);
    return wr_err_set(err, WR_ENOMEM, "out of memory reading the catalog of relid %u",
                      (unsigned)relid);
}

bool
cat_column_list(PGconn *c, const char *publication, uint32_t relid)
{
    char sql[512];
    char *lit;
    PGresult *res;
    bool yes;

    if (c == NULL)
        return false;
    lit = PQescapeLiteral(c, publication, strlen(publication));
    if (lit == NULL)
        return false;
    snprintf(sql, sizeof(sql),
             "SELECT 1 FROM pg_catalog.pg_publication_rel pr "
             "JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid "
             "WHERE p.pubname = %s AND pr.prrelid = %u AND pr.prattrs IS NOT NULL",
             lit, (unsigned)relid);
    PQfreemem(lit);
    res = PQexec(c, sql);
    yes = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0;
    PQclear(res);
    return yes;
}
