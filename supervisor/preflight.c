/*
 * preflight.c - checks that the source can be replicated before anything is written:
 * reachable, wal_level, publication, REPLICATION privilege, free slots and walsenders,
 * replica identity of every published table; and the destination's own preflight
 * (destinations/registry.h: its keys, and what its type checks).
 *
 * NOTES: runs in the supervisor before its loop starts (`walrelay run`) and in
 * `walrelay check`, over one normal (non-replication) libpq connection. Blocking.
 * Persists nothing. Returns the publication's tables to the supervisor.
 *
 * Per-table refusals. A table whose updates or deletes the publication publishes but
 * whose replica identity cannot carry them (NOTHING; DEFAULT without a primary key;
 * USING INDEX whose index is gone) is reported as a FAILED check, with the fix as hint,
 * and flagged in the returned list (sup_pub_table_t.refused). Such a failure does not
 * fail the preflight: `walrelay check` counts it and exits non-zero, `walrelay run` goes
 * on and the supervisor sets that table ERRORED (kind "unsupported") before anything is
 * copied. A publication that publishes only INSERTs (and TRUNCATEs) takes any identity.
 * A table published with a column list (PostgreSQL 15, FOR TABLE t (a, b)) is refused
 * the same way (check "column_list"): walrelay replicates whole tables. Row filters are
 * fine: the sync worker copies only the rows the filter accepts (worker_sync/sync.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/repl.h"
#include "../destinations/registry.h"
#include "sup.h"
#include "../common/state.h"

typedef struct pf_s {
    const wr_config_t *cfg;
    sup_check_report_fn report;
    void *arg;
    PGconn *conn;
    int first_fail_code;
    wr_err_t *err; /* the first failure */
} pf_t;

static void pf_report(pf_t *pf, int level, const char *check, const char *hint, const char *fmt,
                      ...) WR_PRINTF(5, 6);

static void
pf_report(pf_t *pf, int level, const char *check, const char *hint, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (pf->report)
        pf->report(pf->arg, level, check, msg, hint);
}

/* Records a failure: reported, and kept as the function's error if it is the first. */
static void pf_fail(pf_t *pf, int code, const char *check, const char *hint, const char *fmt, ...)
    WR_PRINTF(5, 6);

static void
pf_fail(pf_t *pf, int code, const char *check, const char *hint, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (pf->report)
        pf->report(pf->arg, SUP_CHECK_FAIL, check, msg, hint);
    if (pf->first_fail_code == 0) {
        pf->first_fail_code = code;
        wr_err_set(pf->err, code, "%s", msg);
        if (hint)
            wr_err_hint(pf->err, "%s", hint);
    }
}

/*
 * Runs a query with text parameters; returns the result when its status is TUPLES_OK,
 * else records a failure for check (naming what) and returns NULL.
 */
static PGresult *
pf_query(pf_t *pf, const char *check, const char *what, const char *sql, int nparams,
         const char *const *params)
{
    PGresult *r = PQexecParams(pf->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
        size_t l = strlen(msg);
        while (l > 0 && (msg[l - 1] == '\n' || msg[l - 1] == ' '))
            msg[--l] = '\0';
        PQclear(r);
        bool lost = PQstatus(pf->conn) != CONNECTION_OK;
        pf_fail(pf, lost ? WR_ECONN : WR_ESOURCE, check,
                lost ? "check that the source server is up and reachable" : NULL, "%s failed: %s",
                what, msg[0] ? msg : "no error message");
        return NULL;
    }
    return r;
}

/* A single text value of a one-row query, or NULL (failure recorded). */
static int
pf_query_value(pf_t *pf, const char *check, const char *what, const char *sql, int nparams,
               const char *const *params, char *buf, size_t len)
{
    PGresult *r = pf_query(pf, check, what, sql, nparams, params);
    if (!r)
        return -1;
    if (PQntuples(r) != 1 || PQnfields(r) < 1 || PQgetisnull(r, 0, 0)) {
        PQclear(r);
        pf_fail(pf, WR_ESOURCE, check, NULL, "%s returned no value", what);
        return -1;
    }
    snprintf(buf, len, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

static void
check_wal_level(pf_t *pf)
{
    char v[64];
    if (pf_query_value(pf, "wal_level", "SHOW wal_level", "SHOW wal_level", 0, NULL, v,
                       sizeof(v)) != 0)
        return;
    if (strcmp(v, "logical") != 0) {
        pf_fail(pf, WR_ESOURCE, "wal_level",
                "set wal_level = logical in postgresql.conf and restart PostgreSQL",
                "wal_level is \"%s\" on the source, logical replication needs \"logical\"", v);
        return;
    }
    pf_report(pf, SUP_CHECK_OK, "wal_level", NULL, "logical");
}

static bool
check_publication(pf_t *pf)
{
    const char *params[1] = {pf->cfg->publication};
    PGresult *r = pf_query(pf, "publication", "looking up the publication",
                           "SELECT puballtables FROM pg_publication WHERE pubname = $1", 1, params);
    if (!r)
        return false;
    if (PQntuples(r) == 0) {
        PQclear(r);
        char *q = repl_quote_ident(pf->conn, pf->cfg->publication);
        char hint[600];
        snprintf(hint, sizeof(hint),
                 "CREATE PUBLICATION %s FOR TABLE ... on the source, or set [source] "
                 "publication in %s",
                 q ? q : pf->cfg->publication, pf->cfg->path ? pf->cfg->path : "walrelay.conf");
        if (q)
            PQfreemem(q);
        pf_fail(pf, WR_ESOURCE, "publication", hint, "publication \"%s\" does not exist",
                pf->cfg->publication);
        return false;
    }
    bool all = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    pf_report(pf, SUP_CHECK_OK, "publication", NULL, "\"%s\" exists%s", pf->cfg->publication,
              all ? " (FOR ALL TABLES)" : "");
    return true;
}

static void
check_role(pf_t *pf)
{
    PGresult *r = pf_query(pf, "privileges", "looking up the role",
                           "SELECT current_user, rolreplication, rolsuper FROM pg_roles "
                           "WHERE rolname = current_user",
                           0, NULL);
    if (!r)
        return;
    if (PQntuples(r) != 1) {
        PQclear(r);
        pf_fail(pf, WR_ESOURCE, "privileges", NULL, "cannot find the current role in pg_roles");
        return;
    }
    char user[128];
    snprintf(user, sizeof(user), "%s", PQgetvalue(r, 0, 0));
    bool repl = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    bool super = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
    PQclear(r);
    if (!repl && !super) {
        char *q = repl_quote_ident(pf->conn, user);
        char hint[300];
        snprintf(hint, sizeof(hint), "ALTER ROLE %s REPLICATION; (as a superuser on the source)",
                 q ? q : user);
        if (q)
            PQfreemem(q);
        pf_fail(pf, WR_ESOURCE, "privileges", hint,
                "role \"%s\" has neither REPLICATION nor SUPERUSER, it cannot create "
                "replication_slots",
                user);
        return;
    }
    pf_report(pf, SUP_CHECK_OK, "privileges", NULL, "role \"%s\" has %s", user,
              super ? "SUPERUSER" : "REPLICATION");
}

/* Slots and walsenders: we need 1 (apply) + max_table_sync_workers. Our own existing
 * slots (walrelay_<pipeline> and walrelay_<pipeline>_s<relid>) count as free. */
static void
check_capacity(pf_t *pf)
{
    char slot[64];
    cfg_apply_slot_name(pf->cfg, slot, sizeof(slot));
    char pattern[128];
    snprintf(pattern, sizeof(pattern), "^%s(_s[0-9]+)?$", slot); /* slot is [a-z0-9_] */
    const char *params[1] = {pattern};
    PGresult *r = pf_query(
        pf, "capacity", "counting replication slots and walsenders",
        "SELECT current_setting('max_replication_slots')::int, "
        "       current_setting('max_wal_senders')::int, "
        "       (SELECT count(*) FROM pg_replication_slots)::int, "
        "       (SELECT count(*) FROM pg_replication_slots WHERE slot_name ~ $1)::int, "
        "       (SELECT count(*) FROM pg_stat_replication)::int, "
        "       (SELECT count(*) FROM pg_replication_slots WHERE slot_name ~ $1 AND active)::int",
        1, params);
    if (!r)
        return;
    int max_slots = atoi(PQgetvalue(r, 0, 0));
    int max_senders = atoi(PQgetvalue(r, 0, 1));
    int slots_all = atoi(PQgetvalue(r, 0, 2));
    int slots_ours = atoi(PQgetvalue(r, 0, 3));
    int senders_all = atoi(PQgetvalue(r, 0, 4));
    int senders_ours = atoi(PQgetvalue(r, 0, 5));
    PQclear(r);

    int need = 1 + pf->cfg->max_table_sync_workers;
    int free_slots = max_slots - (slots_all - slots_ours);
    int free_senders = max_senders - (senders_all - senders_ours);
    char hint[512];

    if (free_slots < 2) {
        snprintf(hint, sizeof(hint),
                 "raise max_replication_slots to at least %d in postgresql.conf and restart "
                 "PostgreSQL, or drop unused slots (pg_drop_replication_slot)",
                 slots_all - slots_ours + need);
        pf_fail(pf, WR_ESOURCE, "replication_slots", hint,
                "only %d of max_replication_slots = %d are free, walrelay needs %d (1 apply + "
                "%d table sync)",
                free_slots < 0 ? 0 : free_slots, max_slots, need, pf->cfg->max_table_sync_workers);
    } else if (free_slots < need) {
        snprintf(hint, sizeof(hint),
                 "raise max_replication_slots to at least %d, or set [sync] "
                 "max_table_sync_workers = %d",
                 slots_all - slots_ours + need, free_slots - 1);
        pf_report(pf, SUP_CHECK_WARN, "replication_slots", hint,
                  "%d of max_replication_slots = %d are free, walrelay wants %d; table copies "
                  "beyond %d at a time will fail and be retried",
                  free_slots, max_slots, need, free_slots - 1);
    } else {
        pf_report(pf, SUP_CHECK_OK, "replication_slots", NULL,
                  "%d of %d free (%d of them ours), %d needed", free_slots, max_slots, slots_ours,
                  need);
    }

    if (free_senders < 2) {
        snprintf(hint, sizeof(hint),
                 "raise max_wal_senders to at least %d in postgresql.conf and restart PostgreSQL",
                 senders_all - senders_ours + need);
        pf_fail(pf, WR_ESOURCE, "wal_senders", hint,
                "only %d of max_wal_senders = %d are free, walrelay needs %d",
                free_senders < 0 ? 0 : free_senders, max_senders, need);
    } else if (free_senders < need) {
        snprintf(hint, sizeof(hint),
                 "raise max_wal_senders to at least %d, or set [sync] max_table_sync_workers = %d",
                 senders_all - senders_ours + need, free_senders - 1);
        pf_report(pf, SUP_CHECK_WARN, "wal_senders", hint,
                  "%d of max_wal_senders = %d are free, walrelay wants %d", free_senders,
                  max_senders, need);
    } else {
        pf_report(pf, SUP_CHECK_OK, "wal_senders", NULL, "%d of %d free, %d needed", free_senders,
                  max_senders, need);
    }
}

/* Why a table's updates/deletes cannot be replicated, or NULL if they can (or are not
 * published). */
static const char *
pf_identity_problem(char ri, bool has_pk, bool has_ri_index, bool pub_upd_del)
{
    if (!pub_upd_del)
        return NULL;
    if (ri == 'n')
        return "has replica identity NOTHING";
    if (ri == 'd' && !has_pk)
        return "has no primary key and replica identity DEFAULT";
    if (ri == 'i' && !has_ri_index)
        return "has replica identity USING INDEX but that index no longer exists";
    return NULL;
}

/* A table the publication sends with a column list (FOR TABLE t (a, b), PostgreSQL 15):
 * reported as FAILED "column_list", and refused (t->refused with message and hint) if
 * first is true (no other refusal recorded yet). Returns true if the table is newly
 * refused. See the header and docs/destinations.md "Publication row filters and column
 * lists". */
static bool
pf_refuse_column_list(pf_t *pf, sup_pub_table_t *t, const char *qual, bool first)
{
    char *qp = repl_quote_ident(pf->conn, pf->cfg->publication);
    char hint[900], msg[512];
    int n1, n2;

    n1 = snprintf(msg, sizeof(msg),
                  "table \"%s.%s\" is published by \"%s\" with a column list, which walrelay "
                  "does not replicate",
                  t->nsp, t->name, pf->cfg->publication);
    n2 = snprintf(hint, sizeof(hint),
                  "in one transaction, ALTER PUBLICATION %s DROP TABLE %s and ADD it again "
                  "without a column list (keep its WHERE clause, if any)",
                  qp ? qp : pf->cfg->publication, qual);
    if (qp)
        PQfreemem(qp);
    if (n1 < 0 || n2 < 0)
        msg[0] = hint[0] = '\0';
    pf_report(pf, SUP_CHECK_FAIL, "column_list", hint, "%s", msg);
    if (!first)
        return false;
    n1 = snprintf(t->refused_msg, sizeof(t->refused_msg), "%s", msg);
    n2 = snprintf(t->refused_hint, sizeof(t->refused_hint),
                  "%s; then run \"walrelay resync DIR %s.%s\"", hint, t->nsp, t->name);
    if (n1 < 0 || n2 < 0)
        t->refused_msg[0] = t->refused_hint[0] = '\0';
    t->refused = true;
    return true;
}

/* Lists the publication's tables; refuses those whose published updates/deletes cannot
 * be replicated (see the header) and warns about those we cannot read. */
static int
list_tables(pf_t *pf, sup_pub_table_t **out, size_t *nout)
{
    const char *params[1] = {pf->cfg->publication};
    /* column 8: the publication's column list of the table (attrs, PostgreSQL 15);
     * column 9: its membership record (sup_pub_table_t.member): the newest
     * pg_publication_rel row of the table or of an ancestor (partition root, inheritance
     * parent), else the pg_publication_namespace row of their schema (PostgreSQL 15) */
    const bool pg15 = PQserverVersion(pf->conn) >= 150000;
    char sql[3072];
    snprintf(sql, sizeof(sql),
             "SELECT c.oid, n.nspname, c.relname, c.relreplident, "
             "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
             "i.indisprimary), "
             "       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
             "i.indisreplident), "
             "       has_table_privilege(c.oid, 'SELECT'), "
             "       (SELECT p.pubupdate OR p.pubdelete FROM pg_publication p WHERE p.pubname = "
             "$1), "
             "       %s, "
             "       (WITH RECURSIVE up(anc) AS (SELECT c.oid UNION "
             "          SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.anc) "
             "        SELECT COALESCE("
             "          (SELECT max(pr.oid::int8) FROM pg_publication_rel pr "
             "             JOIN pg_publication pb ON pb.oid = pr.prpubid "
             "            WHERE pb.pubname = $1 AND pr.prrelid IN (SELECT anc FROM up)), "
             "          %s 0)) "
             "FROM pg_get_publication_tables($1::text) g "
             "JOIN pg_class c ON c.oid = g.relid "
             "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1",
             pg15 ? "g.attrs IS NOT NULL" : "false",
             pg15 ? "(SELECT max(pn.oid::int8) FROM pg_publication_namespace pn "
                    "   JOIN pg_publication pb ON pb.oid = pn.pnpubid "
                    "   JOIN pg_class k ON k.relnamespace = pn.pnnspid "
                    "  WHERE pb.pubname = $1 AND k.oid IN (SELECT anc FROM up)), "
                  : "");
    PGresult *r = pf_query(pf, "tables", "listing the publication's tables", sql, 1, params);
    if (!r)
        return -1;
    int n = PQntuples(r);
    sup_pub_table_t *tabs = calloc(n > 0 ? (size_t)n : 1, sizeof(*tabs));
    if (!tabs) {
        PQclear(r);
        pf_fail(pf, WR_ENOMEM, "tables", NULL, "out of memory");
        return -1;
    }
    int nwarn = 0, nrefused = 0;
    for (int i = 0; i < n; i++) {
        sup_pub_table_t *t = &tabs[i];
        t->relid = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        snprintf(t->nsp, sizeof(t->nsp), "%s", PQgetvalue(r, i, 1));
        snprintf(t->name, sizeof(t->name), "%s", PQgetvalue(r, i, 2));
        char ri = PQgetvalue(r, i, 3)[0];
        bool has_pk = strcmp(PQgetvalue(r, i, 4), "t") == 0;
        bool has_ri_index = strcmp(PQgetvalue(r, i, 5), "t") == 0;
        bool can_read = strcmp(PQgetvalue(r, i, 6), "t") == 0;
        bool pub_upd_del = strcmp(PQgetvalue(r, i, 7), "f") != 0;
        bool column_list = strcmp(PQgetvalue(r, i, 8), "t") == 0;
        t->member = strtoll(PQgetvalue(r, i, 9), NULL, 10);

        char *qn = repl_quote_ident(pf->conn, t->nsp);
        char *qt = repl_quote_ident(pf->conn, t->name);
        char qual[600];
        snprintf(qual, sizeof(qual), "%s.%s", qn ? qn : t->nsp, qt ? qt : t->name);
        if (qn)
            PQfreemem(qn);
        if (qt)
            PQfreemem(qt);

        const char *why = pf_identity_problem(ri, has_pk, has_ri_index, pub_upd_del);
        if (why) {
            char hint[1400];
            snprintf(hint, sizeof(hint),
                     "ALTER TABLE %s REPLICA IDENTITY FULL, or add a primary key", qual);
            /* the return values are used (truncation is fine: nsp and name are short) */
            int n1 = snprintf(t->refused_msg, sizeof(t->refused_msg),
                              "table \"%s.%s\" %s, and publication \"%s\" publishes its updates "
                              "and deletes: they cannot be replicated",
                              t->nsp, t->name, why, pf->cfg->publication);
            int n2 = snprintf(t->refused_hint, sizeof(t->refused_hint),
                              "%s; then run \"walrelay resync DIR %s.%s\"", hint, t->nsp, t->name);
            if (n1 < 0 || n2 < 0)
                t->refused_msg[0] = t->refused_hint[0] = '\0';
            t->refused = true;
            pf_report(pf, SUP_CHECK_FAIL, "replica_identity", hint, "%s", t->refused_msg);
            nrefused++;
        }
        if (column_list && pf_refuse_column_list(pf, t, qual, !t->refused))
            nrefused++;
        if (!can_read) {
            char hint[1400];
            snprintf(hint, sizeof(hint), "GRANT SELECT ON %s TO the role in [source] conninfo",
                     qual);
            pf_report(pf, SUP_CHECK_WARN, "privileges", hint,
                      "the role cannot SELECT from table \"%s.%s\": its initial copy will fail",
                      t->nsp, t->name);
            nwarn++;
        }
    }
    PQclear(r);
    if (n == 0) {
        char *q = repl_quote_ident(pf->conn, pf->cfg->publication);
        char hint[600];
        snprintf(hint, sizeof(hint), "ALTER PUBLICATION %s ADD TABLE ...",
                 q ? q : pf->cfg->publication);
        if (q)
            PQfreemem(q);
        pf_report(pf, SUP_CHECK_WARN, "tables", hint,
                  "publication \"%s\" has no tables: nothing will be replicated",
                  pf->cfg->publication);
    } else {
        pf_report(pf, SUP_CHECK_OK, "tables", NULL, "%d table%s published%s%s", n,
                  n == 1 ? "" : "s", nwarn ? " (see the warnings)" : "",
                  nrefused ? " (some cannot be replicated, see above)" : "");
    }
    if (out) {
        *out = tabs;
        *nout = (size_t)n;
    } else {
        free(tabs);
    }
    return 0;
}

/* The destination's own checks (destinations/registry.c): its [destination] keys, and
 * whatever its type checks (a file it can write, a plugin that loads and says it is
 * ready). */
static void
check_destination(pf_t *pf)
{
    char summary[512];
    wr_err_t derr;

    wr_err_clear(&derr);
    if (dest_preflight(pf->cfg, summary, sizeof(summary), &derr) != 0) {
        pf_fail(pf, derr.code == WR_ENOMEM ? WR_ENOMEM : WR_ECONFIG, "destination",
                derr.hint[0] ? derr.hint : NULL, "%s", derr.msg);
        return;
    }
    pf_report(pf, SUP_CHECK_OK, "destination", NULL, "%s", summary);
}

/* [state] backend = postgres: the store is reachable and the user may create its schema
 * and tables; backend = plugin: the library loads, accepts its keys, opens (role "check")
 * and passes its own check() (state.db needs no check: the directory was checked with the
 * config). */
static void
check_state(pf_t *pf)
{
    char summary[768];
    wr_err_t serr;
    int rc;

    if (pf->cfg->state_backend == CFG_STATE_SQLITE)
        return;
    wr_err_clear(&serr);
    if (pf->cfg->state_backend == CFG_STATE_PLUGIN)
        rc = state_check_plugin(pf->cfg, summary, sizeof(summary), &serr);
    else
        rc = state_check_postgres(pf->cfg->state_conninfo, pf->cfg->state_schema, summary,
                                  sizeof(summary), &serr);
    if (rc != 0) {
        pf_fail(pf, WR_ECONFIG, "state", serr.hint[0] ? serr.hint : NULL, "%s", serr.msg);
        return;
    }
    pf_report(pf, SUP_CHECK_OK, "state", NULL, "%s", summary);
}

int
sup_preflight(const wr_config_t *cfg, sup_check_report_fn report, void *arg,
              sup_pub_table_t **tables, size_t *ntables, PGconn **keep, wr_err_t *err)
{
    pf_t pf = {.cfg = cfg, .report = report, .arg = arg, .err = err};
    /* The publication refresh (tables wanted, no connection kept) leaves the destination
     * out: it was checked at start, its keys are restart-only, and a plugin's check()
     * need not run every publication_refresh_ms. */
    bool dest = !(tables != NULL && keep == NULL);
    if (tables) {
        *tables = NULL;
        *ntables = 0;
    }
    if (keep)
        *keep = NULL;

    wr_err_t cerr;
    wr_err_clear(&cerr);
    if (repl_connect(cfg->source_conninfo, false, "walrelay-preflight", &pf.conn, &cerr) != 0) {
        pf.conn = NULL;
        const char *hint = cerr.hint[0] ? cerr.hint
                                        : "check [source] conninfo in walrelay.conf and that "
                                          "the server is running and accepts connections";
        /* repl_connect's message already says "cannot connect to the source: ..." */
        pf_fail(&pf, WR_ECONN, "connection", hint, "%s",
                cerr.msg[0] ? cerr.msg : "cannot connect to the source");
        if (dest) {
            check_destination(&pf);
            check_state(&pf);
        }
        return pf.first_fail_code;
    }
    pf_report(&pf, SUP_CHECK_OK, "connection", NULL, "connected to PostgreSQL %d.%d",
              PQserverVersion(pf.conn) / 10000, PQserverVersion(pf.conn) % 10000);
    if (PQserverVersion(pf.conn) < 150000)
        pf_report(&pf, SUP_CHECK_WARN, "connection",
                  "walrelay is developed and tested against PostgreSQL 15",
                  "server version %d is older than 15", PQserverVersion(pf.conn));

    check_wal_level(&pf);
    check_role(&pf);
    check_capacity(&pf);
    sup_pub_table_t *tabs = NULL;
    size_t ntabs = 0;
    if (check_publication(&pf))
        (void)list_tables(&pf, &tabs, &ntabs);
    if (dest) {
        check_destination(&pf);
        check_state(&pf);
    }

    if (pf.first_fail_code != 0) {
        free(tabs);
        PQfinish(pf.conn);
        return pf.first_fail_code;
    }
    if (tables) {
        *tables = tabs;
        *ntables = ntabs;
    } else {
        free(tabs);
    }
    if (keep)
        *keep = pf.conn;
    else
        PQfinish(pf.conn);
    return 0;
}
