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
#include <string.h>

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

src_state_t
src_classify(const char *msg)
{
    if (msg == NULL)
        return SRC_DOWN;
    /* the server is there but busy with its own state: wait */
    if (strstr(msg, "starting up") || strstr(msg, "shutting down") || strstr(msg, "in recovery") ||
        strstr(msg, "too many clients") || strstr(msg, "remaining connection slots"))
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
