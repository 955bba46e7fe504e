/*
 * pg_entry.c - the postgres destination's registry entry: its [destination] keys
 * (conninfo, schema, mode), the argument of `walrelay init --destination postgres:CONNINFO`,
 * validation, the preflight of `walrelay check` (reachable, version, privileges) and a
 * description without secrets.
 *
 * NOTES: runs in the supervisor (init, check, run, reload) and the workers (open).
 * Persists nothing. conninfo is a secret key: its value never appears in a message (it may
 * hold a password; libpq's own errors name host and port only).
 */
#include "pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PGD_MIN_VERSION 100000 /* PostgreSQL 10 */

static const dest_keyspec_t pgd_keys[] = {
    {"conninfo", NULL,
     "libpq connection string of the target database (key=value pairs or a postgresql://\n"
     "URI). Keep the password in ~/.pgpass, PGPASSFILE or a service file; sslmode and\n"
     "the other libpq settings work as for the source.",
     true, true, false},
    {"schema", NULL,
     "Optional: one schema of the target for every table (created if missing); the\n"
     "source table nsp.t is called t there if nsp is public, else nsp__t. Without it each\n"
     "table keeps its source schema (created if missing). walrelay's own bookkeeping\n"
     "is in the schema walrelay.",
     false, false, false},
    {"mode", "mirror",
     "mirror: each table holds the source's rows. history: every change is a new row\n"
     "with _change_type, _commit_lsn, _seq, _commit_time, _old_key (docs/destinations.md).",
     false, false, false},
};

static int
pgd_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg == NULL || arg[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "the postgres destination needs a connection string");
        wr_err_hint(err, "--destination 'postgres:host=db2 dbname=replica user=walrelay'");
        return WR_ECONFIG;
    }
    values[0] = arg;
    values[1] = NULL;
    return 0;
}

static int
pgd_validate(const wr_config_t *cfg, wr_err_t *err)
{
    const char *conninfo = dest_config_value(cfg, "conninfo");
    const char *schema = dest_config_value(cfg, "schema");
    const char *mode = dest_config_value(cfg, "mode");
    PQconninfoOption *opts;
    char *perr = NULL;

    opts = PQconninfoParse(conninfo ? conninfo : "", &perr);
    if (opts == NULL) {
        char msg[300];
        size_t n;

        snprintf(msg, sizeof(msg), "%s", perr ? perr : "out of memory");
        n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
            msg[--n] = '\0';
        PQfreemem(perr);
        /* libpq's message names the offending keyword, never the whole string */
        dest_config_error(cfg, "conninfo", WR_ECONFIG, err,
                          "not a valid libpq connection string: %s", msg);
        wr_err_hint(err, "key=value pairs (host=db2 dbname=replica user=walrelay) or a "
                         "postgresql:// URI");
        return WR_ECONFIG;
    }
    PQconninfoFree(opts);
    if (mode != NULL && strcmp(mode, "mirror") != 0 && strcmp(mode, "history") != 0) {
        dest_config_error(cfg, "mode", WR_ECONFIG, err,
                          "invalid value \"%s\": expected mirror or history", mode);
        wr_err_hint(err, "mode = mirror keeps the source's rows; mode = history appends every "
                         "change as a row");
        return WR_ECONFIG;
    }
    if (schema != NULL && schema[0] != '\0') {
        if (strcmp(schema, PGD_SCHEMA) == 0) {
            dest_config_error(cfg, "schema", WR_ECONFIG, err,
                              "\"walrelay\" is the schema of walrelay's own bookkeeping");
            wr_err_hint(err, "choose another schema, or remove the line to keep each table in its "
                             "source schema");
            return WR_ECONFIG;
        }
        if (strlen(schema) > 63) {
            dest_config_error(cfg, "schema", WR_ECONFIG, err,
                              "\"%s\" is longer than PostgreSQL's 63-byte names", schema);
            wr_err_hint(err, "choose a shorter schema name");
            return WR_ECONFIG;
        }
    }
    return 0;
}

/* "host=h port=p dbname=d user=u" from the parsed conninfo (never the password). */
static void
pgd_describe_conninfo(const char *conninfo, char *buf, size_t len)
{
    static const char *const shown[] = {"service", "host", "hostaddr", "port", "dbname", "user"};
    PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", NULL);
    size_t off = 0;

    buf[0] = '\0';
    if (opts == NULL)
        return;
    for (size_t k = 0; k < sizeof(shown) / sizeof(shown[0]); k++) {
        for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
            int w;

            if (strcmp(o->keyword, shown[k]) != 0 || o->val == NULL || o->val[0] == '\0')
                continue;
            w = snprintf(buf + off, len - off, "%s%s=%s", off ? " " : "", o->keyword, o->val);
            if (w > 0 && (size_t)w < len - off)
                off += (size_t)w;
        }
    }
    PQconninfoFree(opts);
}

static bool
pgd_history(const wr_config_t *cfg)
{
    const char *mode = dest_config_value(cfg, "mode");

    return mode != NULL && strcmp(mode, "history") == 0;
}

static void
pgd_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    char where[384];
    const char *schema = dest_config_value(cfg, "schema");

    pgd_describe_conninfo(dest_config_value(cfg, "conninfo"), where, sizeof(where));
    snprintf(buf, len, "postgres %s%s%s%s", where[0] ? where : "(libpq defaults)",
             schema && schema[0] ? " schema=" : "", schema && schema[0] ? schema : "",
             pgd_history(cfg) ? " (history mode)" : "");
}

static int
pgd_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    const char *schema = dest_config_value(cfg, "schema");
    char app[96], where[384], q[1024];
    PGconn *c = NULL;
    PGresult *r = NULL;
    char *lit = NULL;
    int rc, ver;

    snprintf(app, sizeof(app), "walrelay_%s_check", cfg->pipeline_name ? cfg->pipeline_name : "");
    if ((rc = pgd_connect(dest_config_value(cfg, "conninfo"), app, "the destination",
                          "[destination] conninfo", &c, err)) < 0)
        return rc;
    ver = PQserverVersion(c);
    if (ver < PGD_MIN_VERSION) {
        rc = wr_err_set(err, WR_ECONFIG,
                        "the destination runs PostgreSQL %d.%d; the postgres destination needs 10 "
                        "or later",
                        ver / 10000, ver % 10000 / 100);
        wr_err_hint(err, "upgrade the target server, or use another destination");
        goto out;
    }
    lit = PQescapeLiteral(c, schema && schema[0] ? schema : "", schema ? strlen(schema) : 0);
    if (lit == NULL) {
        rc = wr_err_set(err, WR_ENOMEM, "out of memory checking the destination");
        goto out;
    }
    /* 1: may create schemas; 2: walrelay's tables exist; 3: may write them; 4: the
     * configured schema exists; 5: may create tables in it; 6: current user */
    snprintf(q, sizeof(q),
             "SELECT has_database_privilege(current_database(), 'CREATE'), "
             "to_regclass('walrelay.progress') IS NOT NULL AND to_regclass('walrelay.tables') IS "
             "NOT NULL AND to_regclass('walrelay.schemas') IS NOT NULL, "
             "coalesce(has_table_privilege(to_regclass('walrelay.progress'), 'INSERT, UPDATE, "
             "DELETE, SELECT'), false), "
             "%s <> '' AND to_regnamespace(quote_ident(%s)) IS NOT NULL, "
             "%s <> '' AND to_regnamespace(quote_ident(%s)) IS NOT NULL AND "
             "has_schema_privilege(to_regnamespace(quote_ident(%s)), 'CREATE'), current_user",
             lit, lit, lit, lit, lit);
    r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        const char *m = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

        rc = wr_err_set(err, WR_ECONFIG, "checking privileges on the destination: %s",
                        m ? m : "no result");
        goto out;
    }
#define PGD_T(i) (strcmp(PQgetvalue(r, 0, (i)), "t") == 0)
    if (!PGD_T(1) && !PGD_T(0)) {
        rc = wr_err_set(err, WR_ECONFIG,
                        "the destination user \"%s\" may not create the schema \"walrelay\" for "
                        "walrelay's bookkeeping (no CREATE privilege on the database)",
                        PQgetvalue(r, 0, 5));
        wr_err_hint(err,
                    "GRANT CREATE ON DATABASE ... TO %s on the target, or create the schema "
                    "walrelay owned by that user",
                    PQgetvalue(r, 0, 5));
        goto out;
    }
    if (PGD_T(1) && !PGD_T(2)) {
        rc = wr_err_set(err, WR_ECONFIG,
                        "the destination user \"%s\" may not write walrelay's bookkeeping tables "
                        "(walrelay.progress)",
                        PQgetvalue(r, 0, 5));
        wr_err_hint(err, "connect as the owner of the schema walrelay, or grant that user "
                         "SELECT, INSERT, UPDATE, DELETE on its tables");
        goto out;
    }
    if (schema && schema[0]) {
        if (!PGD_T(3) && !PGD_T(0)) {
            rc = wr_err_set(err, WR_ECONFIG,
                            "the destination schema \"%s\" does not exist and user \"%s\" may not "
                            "create it",
                            schema, PQgetvalue(r, 0, 5));
            wr_err_hint(err, "CREATE SCHEMA \"%s\" on the target, owned by that user", schema);
            goto out;
        }
        if (PGD_T(3) && !PGD_T(4)) {
            rc = wr_err_set(err, WR_ECONFIG,
                            "the destination user \"%s\" may not create tables in the schema "
                            "\"%s\"",
                            PQgetvalue(r, 0, 5), schema);
            wr_err_hint(err, "GRANT CREATE ON SCHEMA \"%s\" TO %s on the target", schema,
                        PQgetvalue(r, 0, 5));
            goto out;
        }
    }
    {
        /* the mode the pipeline's tables were made in (pg_dest.c pgd_mode_check) */
        const char *want = pgd_history(cfg) ? "history" : "mirror";
        char *pl = PQescapeLiteral(c, cfg->pipeline_name ? cfg->pipeline_name : "",
                                   cfg->pipeline_name ? strlen(cfg->pipeline_name) : 0);
        PGresult *m;

        if (pl == NULL) {
            rc = wr_err_set(err, WR_ENOMEM, "out of memory checking the destination");
            goto out;
        }
        snprintf(q, sizeof(q),
                 "SELECT coalesce((SELECT mode FROM walrelay.pipelines WHERE pipeline = %s), "
                 "CASE WHEN EXISTS (SELECT 1 FROM walrelay.tables WHERE pipeline = %s) THEN "
                 "'mirror' END) WHERE to_regclass('walrelay.tables') IS NOT NULL AND "
                 "to_regclass('walrelay.pipelines') IS NOT NULL",
                 pl, pl);
        PQfreemem(pl);
        m = PQexec(c, q);
        if (PQresultStatus(m) == PGRES_TUPLES_OK && PQntuples(m) == 1 && !PQgetisnull(m, 0, 0) &&
            strcmp(PQgetvalue(m, 0, 0), want) != 0) {
            dest_config_error(cfg, "mode", WR_ECONFIG, err,
                              "the destination database holds %s tables of pipeline \"%s\", not "
                              "%s ones",
                              PQgetvalue(m, 0, 0), cfg->pipeline_name ? cfg->pipeline_name : "",
                              want);
            wr_err_hint(err, "keep mode = %s, or give the pipeline another database",
                        PQgetvalue(m, 0, 0));
            PQclear(m);
            rc = WR_ECONFIG;
            goto out;
        }
        PQclear(m);
    }
    pgd_describe_conninfo(dest_config_value(cfg, "conninfo"), where, sizeof(where));
    /* without [destination] schema, tables go into schemas named like the source's: a
     * user who may not create schemas needs them to exist already */
    snprintf(summary, len, "postgres %s (PostgreSQL %d.%d)%s%s%s%s", where, ver / 10000,
             ver % 10000 / 100, schema && schema[0] ? ", schema " : "",
             schema && schema[0] ? schema : "", pgd_history(cfg) ? ", history mode" : "",
             !(schema && schema[0]) && !PGD_T(0)
                 ? ", may not create schemas: the source's schemas must exist on the target"
                 : "");
#undef PGD_T
out:
    PQclear(r);
    if (lit != NULL)
        PQfreemem(lit);
    PQfinish(c);
    return rc;
}

static int
pgd_type_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    return pgd_open_role(cfg, role, out, err);
}

const dest_type_t dest_type_postgres = {
    .name = "postgres",
    .summary = "a PostgreSQL database, written exactly once (transactional)",
    .init_usage = "postgres:CONNINFO",
    .keys = pgd_keys,
    .nkeys = sizeof(pgd_keys) / sizeof(pgd_keys[0]),
    .init_arg = pgd_init_arg,
    .validate = pgd_validate,
    .preflight = pgd_preflight,
    .describe = pgd_describe,
    .open = pgd_type_open,
};
