/*
 * srcprobe.c - is the source away, refusing us, or fine? (see srcprobe.h)
 *
 * NOTES: linked into both workers (wr_repl). libpq gives no SQLSTATE for a failed
 * connection, so the refusals a person must fix are recognised by the server's (stable,
 * English-only in the C locale the source may not use) message texts and by libpq's own;
 * anything not recognised counts as an outage: waiting costs less than stopping for good.
 */
#include "srcprobe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "repl.h"

/* Server or libpq messages of a refusal that waiting cannot cure. */
static const char *const src_refusals[] = {
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects",
    "does not exist", /* role, database */
    "permission denied",
    "is not permitted to log in",
    "must be superuser or replication role",
    "password is required",
    "no password supplied",
    "invalid connection option",
    "invalid sslmode",
    "certificate",
    "server does not support SSL",
};

bool
src_was_away(const char *msg)
{
    return msg != NULL &&
           (strstr(msg, "starting up") || strstr(msg, "shutting down") ||
            strstr(msg, "in recovery") || strstr(msg, "not yet accepting connections") ||
            strstr(msg, "too many clients") || strstr(msg, "remaining connection slots"));
}

src_state_t
src_classify(const char *msg)
{
    if (msg == NULL)
        return SRC_DOWN;
    /* the server is there but busy with its own state: wait */
    if (src_was_away(msg))
        return SRC_DOWN;
    for (size_t i = 0; i < sizeof(src_refusals) / sizeof(src_refusals[0]); i++)
        if (strstr(msg, src_refusals[i]))
            return SRC_REFUSED;
    return SRC_DOWN;
}

src_state_t
src_probe(const wr_config_t *cfg, wr_err_t *err)
{
    char app[96];
    PGconn *c = NULL;
    src_state_t st;

    snprintf(app, sizeof(app), "walrelay_%s_probe", cfg->pipeline_name ? cfg->pipeline_name : "");
    if (repl_connect(cfg->source_conninfo, false, app, &c, err) == 0) {
        PQfinish(c);
        return SRC_UP;
    }
    if (err->code == WR_ECONFIG) /* the conninfo does not parse */
        return SRC_REFUSED;
    st = src_classify(err->msg);
    if (st == SRC_REFUSED)
        wr_err_hint(err, "the source answers but refuses walrelay: fix [source] conninfo, the "
                         "role or pg_hba.conf, then walrelay run again");
    return st;
}

/* active_pid of the slot: > 0 held, 0 free, -1 gone; < -1 on a query error (err set). */
static long
src_slot_holder(PGconn *sql, const char *slot, wr_err_t *err)
{
    const char *v[1] = {slot};
    PGresult *r =
        PQexecParams(sql,
                     "SELECT coalesce(active_pid, 0) FROM pg_catalog.pg_replication_slots "
                     "WHERE slot_name = $1",
                     1, NULL, v, NULL, NULL, 0);
    long pid;

    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        wr_err_set(err, WR_ECONN, "reading slot \"%s\": %s", slot, PQerrorMessage(sql));
        PQclear(r);
        return -2;
    }
    pid = PQntuples(r) == 0 ? -1 : strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return pid;
}

int
src_take_slot(PGconn *sql, const char *slot, wr_err_t *err)
{
    long pid = src_slot_holder(sql, slot, err);
    bool told = false;

    for (int i = 0; pid > 0 && i < 100; i++) {
        if (!told) {
            char arg[32];
            const char *v[1] = {arg};
            PGresult *r;

            snprintf(arg, sizeof(arg), "%ld", pid);
            log_warn("replication slot held by a walsender whose client is gone, terminating it "
                     "slot=%s walsender_pid=%ld",
                     slot, pid);
            r = PQexecParams(sql, "SELECT pg_catalog.pg_terminate_backend($1::int)", 1, NULL, v,
                             NULL, NULL, 0);
            if (PQresultStatus(r) != PGRES_TUPLES_OK)
                log_warn("cannot terminate the walsender slot=%s walsender_pid=%ld error=\"%s\"",
                         slot, pid, PQresultErrorMessage(r));
            PQclear(r);
            told = true;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        long now = src_slot_holder(sql, slot, err);
        if (now != pid)
            told = false; /* another holder (or none): look again */
        pid = now;
    }
    if (pid < -1)
        return err->code;
    if (pid > 0)
        return wr_err_set(err, WR_ECONN, "replication slot \"%s\" is still in use by pid %ld", slot,
                          pid);
    return 0;
}
