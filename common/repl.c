/*
 * repl.c - libpq helpers for the source: connections with fixed session settings,
 * replication slots, the START_REPLICATION stream and standby status updates.
 *
 * NOTES: linked into walrelay-apply, walrelay-sync and the supervisor (preflight). Keeps
 * no state of its own. Never puts a conninfo in an error or a log line: connection errors
 * carry libpq's message only. Every PGresult is cleared on every path. Server errors are
 * mapped to walrelay codes by SQLSTATE (see repl_result_error): connection trouble and
 * "object in use" are transient (WR_ECONN, restart), missing objects, privileges and
 * server settings are WR_ESOURCE (a person must act).
 */
#include "repl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* Session settings that fix the text form of values (postgres-notes (e)). */
#define REPL_SESSION_OPTIONS                                                                       \
    "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC "          \
    "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0 -c bytea_output=hex"

/* libpq settings every connection gets unless its conninfo sets them: connect within
 * 10 s; TCP keepalives after 10 s idle, every 5 s, 3 unanswered = dead (25 s); and data
 * sent but not acknowledged for 30 s = dead (tcp_user_timeout, Linux): the apply worker
 * sends a status update at least every 10 s, so a silent cut is noticed within about
 * 40 s even while it only waits. */
static const char *const repl_conn_defaults[][2] = {
    {"connect_timeout", "10"},    {"keepalives", "1"},       {"keepalives_idle", "10"},
    {"keepalives_interval", "5"}, {"keepalives_count", "3"}, {"tcp_user_timeout", "30000"},
};

size_t
repl_conn_defaults_put(const char **keys, const char **vals)
{
    size_t n = 0;

    for (size_t i = 0; i < sizeof(repl_conn_defaults) / sizeof(repl_conn_defaults[0]); i++) {
        if (strcmp(repl_conn_defaults[i][0], "connect_timeout") == 0 && getenv("PGCONNECT_TIMEOUT"))
            continue; /* the environment's */
        keys[n] = repl_conn_defaults[i][0];
        vals[n++] = repl_conn_defaults[i][1];
    }
    return n;
}

/* Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01). */
#define REPL_PG_EPOCH_OFFSET_US INT64_C(946684800000000)

/* How long repl_drop_slot waits for an active slot to be released. */
#define REPL_DROP_WAIT_MS 5000
#define REPL_DROP_STEP_MS 200

/* Copies s into buf without trailing whitespace (libpq messages end in "\n"). */
static void
repl_trim_copy(const char *s, char *buf, size_t len)
{
    size_t n;

    if (len == 0)
        return;
    if (s == NULL)
        s = "";
    n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    /* one line: each run of whitespace that contains a newline becomes one space */
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < len; i++) {
        if (s[i] == '\n' || s[i] == '\r') {
            while (o > 0 && (buf[o - 1] == ' ' || buf[o - 1] == '\t'))
                o--;
            while (i + 1 < n && (s[i + 1] == ' ' || s[i + 1] == '\t' || s[i + 1] == '\n'))
                i++;
            buf[o++] = ' ';
        } else {
            buf[o++] = s[i];
        }
    }
    buf[o] = '\0';
}

/* Maps a SQLSTATE to a walrelay code. NULL (no server error) -> connection trouble. */
static int
repl_sqlstate_code(const char *state)
{
    if (state == NULL || strlen(state) != 5)
        return WR_ECONN;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57", 2) == 0 ||
        strncmp(state, "40", 2) == 0)
        return WR_ECONN; /* connection, shutdown, serialization: retry */
    if (strcmp(state, "55006") == 0)
        return WR_ECONN; /* object in use (slot active): retry */
    if (strncmp(state, "53", 2) == 0)
        return WR_ECONN; /* insufficient resources (slots, connections in use): retry with backoff
                          */
    if (strncmp(state, "42", 2) == 0 || strcmp(state, "55000") == 0 || strncmp(state, "28", 2) == 0)
        return WR_ESOURCE; /* missing object, privileges, settings, limits, auth */
    return WR_ECONN;
}

/* Fills err from a failed result (res may be NULL) and returns the code. `what` names
 * the command ("creating replication slot \"x\""). */
static int
repl_result_error(PGconn *c, const PGresult *res, const char *what, wr_err_t *err)
{
    char msg[768];
    const char *state = NULL;
    const char *primary = NULL;
    const char *srvhint = NULL;
    int code;

    if (res != NULL) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        srvhint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    }
    if (primary != NULL)
        repl_trim_copy(primary, msg, sizeof(msg));
    else if (res != NULL && PQresultErrorMessage(res)[0] != '\0')
        repl_trim_copy(PQresultErrorMessage(res), msg, sizeof(msg));
    else
        repl_trim_copy(PQerrorMessage(c), msg, sizeof(msg));
    if (msg[0] == '\0')
        snprintf(msg, sizeof(msg), "unexpected result status %s",
                 res != NULL ? PQresStatus(PQresultStatus(res)) : "(none)");

    code = repl_sqlstate_code(state);
    if (PQstatus(c) == CONNECTION_BAD)
        code = WR_ECONN;
    wr_err_set(err, code, "%s: %s", what, msg);
    if (state != NULL && strcmp(state, "55000") == 0 && strstr(msg, "wal_level") != NULL)
        wr_err_hint(err, "set wal_level = logical in postgresql.conf and restart the server");
    else if (state != NULL && strcmp(state, "53400") == 0)
        wr_err_hint(err, "raise max_replication_slots / max_wal_senders on the source, or "
                         "lower [sync] max_table_sync_workers");
    else if (state != NULL && strcmp(state, "42501") == 0)
        wr_err_hint(err, "the source role needs the REPLICATION attribute (or superuser)");
    else if (srvhint != NULL)
        wr_err_hint(err, "%s", srvhint);
    else if (code == WR_ECONN && PQstatus(c) == CONNECTION_BAD)
        wr_err_hint(err, "check [source] conninfo; is the server running and reachable?");
    return code;
}

int
repl_connect(const char *conninfo, bool replication, const char *appname, PGconn **out,
             wr_err_t *err)
{
    PQconninfoOption *opts;
    char *perr = NULL;
    const char *user_options = NULL;
    char *options;
    size_t olen;
    const char *keys[16];
    const char *vals[16];
    int n = 0;
    PGconn *c;
    char msg[768];

    *out = NULL;
    if (conninfo == NULL)
        conninfo = "";

    /* expand_dbname: later parameters override the conninfo's, so read the user's own
     * "options" first and append ours to it instead of replacing it. */
    opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        if (perr != NULL) {
            repl_trim_copy(perr, msg, sizeof(msg));
            PQfreemem(perr);
        } else {
            snprintf(msg, sizeof(msg), "out of memory");
        }
        wr_err_set(err, WR_ECONFIG, "invalid source conninfo: %s", msg);
        wr_err_hint(err, "check [source] conninfo (libpq key=value or postgresql:// URI)");
        return WR_ECONFIG;
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "options") == 0 && o->val != NULL && o->val[0] != '\0')
            user_options = o->val;
    }
    olen = (user_options ? strlen(user_options) + 1 : 0) + sizeof(REPL_SESSION_OPTIONS);
    options = malloc(olen);
    if (options == NULL) {
        PQconninfoFree(opts);
        return wr_err_set(err, WR_ENOMEM, "out of memory building connection options");
    }
    snprintf(options, olen, "%s%s%s", user_options ? user_options : "", user_options ? " " : "",
             REPL_SESSION_OPTIONS);
    PQconninfoFree(opts);

    /* Connection defaults (issue 12): a connection whose peer is gone without a FIN (a
     * network cut, a host that died) is noticed in bounded time. Before dbname, so that
     * the same keys in the conninfo win (expand_dbname: later entries override earlier
     * ones). docs/configuration.md "Connection defaults". */
    n += (int)repl_conn_defaults_put(keys + n, vals + n);
    keys[n] = "dbname";
    vals[n++] = conninfo;
    if (replication) {
        keys[n] = "replication";
        vals[n++] = "database";
    }
    if (appname != NULL && appname[0] != '\0') {
        keys[n] = "application_name";
        vals[n++] = appname;
    }
    keys[n] = "options";
    vals[n++] = options;
    keys[n] = "client_encoding";
    vals[n++] = "UTF8";
    keys[n] = NULL;
    vals[n] = NULL;

    c = PQconnectdbParams(keys, vals, 1);
    free(options);
    if (c == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory connecting to the source");
    if (PQstatus(c) != CONNECTION_OK) {
        repl_trim_copy(PQerrorMessage(c), msg, sizeof(msg));
        PQfinish(c);
        wr_err_set(err, WR_ECONN, "cannot connect to the source: %s", msg);
        wr_err_hint(err, "check [source] conninfo; is the server running and reachable?");
        return WR_ECONN;
    }
    *out = c;
    return 0;
}

int
repl_exec(PGconn *c, const char *sql, wr_err_t *err)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int rc = 0;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char what[128];
        /* name the command by its first word(s), never the whole text */
        snprintf(what, sizeof(what), "running \"%.40s\"", sql);
        rc = repl_result_error(c, res, what, err);
    }
    PQclear(res);
    return rc;
}

int
repl_slot_info(PGconn *c, const char *slot, bool *found, bool *active, wr_lsn_t *confirmed_flush,
               char *wal_status, size_t wal_status_len, wr_err_t *err)
{
    char *lit;
    char sql[512];
    PGresult *res;
    int rc = 0;

    *found = false;
    if (active)
        *active = false;
    if (confirmed_flush)
        *confirmed_flush = 0;
    if (wal_status && wal_status_len > 0)
        wal_status[0] = '\0';

    lit = PQescapeLiteral(c, slot, strlen(slot));
    if (lit == NULL)
        return repl_result_error(c, NULL, "quoting a slot name", err);
    /* simple query protocol: also works on a replication=database connection */
    snprintf(sql, sizeof(sql),
             "SELECT active, confirmed_flush_lsn, wal_status FROM pg_catalog.pg_replication_slots "
             "WHERE slot_name = %s",
             lit);
    PQfreemem(lit);
    res = PQexec(c, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        char what[160];
        snprintf(what, sizeof(what), "looking up replication slot \"%s\"", slot);
        rc = repl_result_error(c, res, what, err);
        PQclear(res);
        return rc;
    }
    if (PQntuples(res) >= 1) {
        *found = true;
        if (active)
            *active = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        if (confirmed_flush && !PQgetisnull(res, 0, 1) &&
            wr_lsn_parse(PQgetvalue(res, 0, 1), confirmed_flush) != 0) {
            rc = wr_err_set(err, WR_EPROTO, "slot \"%s\": malformed confirmed_flush_lsn \"%s\"",
                            slot, PQgetvalue(res, 0, 1));
        }
        if (wal_status && wal_status_len > 0 && !PQgetisnull(res, 0, 2))
            repl_trim_copy(PQgetvalue(res, 0, 2), wal_status, wal_status_len);
    }
    PQclear(res);
    return rc;
}

int
repl_create_slot(PGconn *repl, const char *slot, bool use_snapshot, wr_lsn_t *consistent_point,
                 wr_err_t *err)
{
    char *ident;
    char sql[512];
    char what[160];
    PGresult *res;
    int rc = 0;

    *consistent_point = 0;
    ident = PQescapeIdentifier(repl, slot, strlen(slot));
    if (ident == NULL)
        return repl_result_error(repl, NULL, "quoting a slot name", err);
    /* PostgreSQL 15 syntax */
    snprintf(sql, sizeof(sql), "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT '%s')", ident,
             use_snapshot ? "use" : "nothing");
    PQfreemem(ident);
    snprintf(what, sizeof(what), "creating replication slot \"%s\"", slot);
    res = PQexec(repl, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = repl_result_error(repl, res, what, err);
        PQclear(res);
        return rc;
    }
    /* columns: slot_name, consistent_point, snapshot_name, output_plugin */
    if (PQntuples(res) != 1 || PQnfields(res) < 2 || PQgetisnull(res, 0, 1)) {
        rc = wr_err_set(err, WR_EPROTO, "%s: unexpected reply (%d rows, %d columns)", what,
                        PQntuples(res), PQnfields(res));
    } else if (wr_lsn_parse(PQgetvalue(res, 0, 1), consistent_point) != 0) {
        rc = wr_err_set(err, WR_EPROTO, "%s: malformed consistent_point \"%s\"", what,
                        PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    return rc;
}

int
repl_create_slot_export(PGconn *repl, const char *slot, wr_lsn_t *consistent_point, char *snapshot,
                        size_t snapshot_len, wr_err_t *err)
{
    char *ident;
    char sql[512];
    char what[160];
    PGresult *res;
    int rc = 0;

    *consistent_point = 0;
    if (snapshot_len > 0)
        snapshot[0] = '\0';
    ident = PQescapeIdentifier(repl, slot, strlen(slot));
    if (ident == NULL)
        return repl_result_error(repl, NULL, "quoting a slot name", err);
    snprintf(sql, sizeof(sql), "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'export')",
             ident);
    PQfreemem(ident);
    snprintf(what, sizeof(what), "creating replication slot \"%s\"", slot);
    res = PQexec(repl, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = repl_result_error(repl, res, what, err);
        PQclear(res);
        return rc;
    }
    /* columns: slot_name, consistent_point, snapshot_name, output_plugin */
    if (PQntuples(res) != 1 || PQnfields(res) < 3 || PQgetisnull(res, 0, 1) ||
        PQgetisnull(res, 0, 2)) {
        rc = wr_err_set(err, WR_EPROTO, "%s: unexpected reply (%d rows, %d columns)", what,
                        PQntuples(res), PQnfields(res));
    } else if (wr_lsn_parse(PQgetvalue(res, 0, 1), consistent_point) != 0) {
        rc = wr_err_set(err, WR_EPROTO, "%s: malformed consistent_point \"%s\"", what,
                        PQgetvalue(res, 0, 1));
    } else if (strlen(PQgetvalue(res, 0, 2)) >= snapshot_len) {
        rc = wr_err_set(err, WR_EPROTO, "%s: snapshot name \"%.64s\" is too long", what,
                        PQgetvalue(res, 0, 2));
    } else {
        snprintf(snapshot, snapshot_len, "%s", PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    return rc;
}

static void
repl_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int
repl_drop_slot(PGconn *sql, const char *slot, wr_err_t *err)
{
    char *lit;
    char q[512];
    char what[160];
    int waited = 0;
    int rc = 0;

    lit = PQescapeLiteral(sql, slot, strlen(slot));
    if (lit == NULL)
        return repl_result_error(sql, NULL, "quoting a slot name", err);
    /* the WHERE makes an absent slot a no-op */
    snprintf(q, sizeof(q),
             "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM "
             "pg_catalog.pg_replication_slots WHERE slot_name = %s",
             lit);
    PQfreemem(lit);
    snprintf(what, sizeof(what), "dropping replication slot \"%s\"", slot);

    for (;;) {
        PGresult *res = PQexec(sql, q);
        const char *state;

        if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK) {
            PQclear(res);
            return 0;
        }
        state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (state != NULL && strcmp(state, "42704") == 0) {
            /* dropped by someone else between the lookup and the drop */
            PQclear(res);
            return 0;
        }
        if (state != NULL && strcmp(state, "55006") == 0 && waited < REPL_DROP_WAIT_MS) {
            /* active: its user is probably exiting; wait a little */
            PQclear(res);
            repl_sleep_ms(REPL_DROP_STEP_MS);
            waited += REPL_DROP_STEP_MS;
            continue;
        }
        rc = repl_result_error(sql, res, what, err);
        if (state != NULL && strcmp(state, "55006") == 0)
            wr_err_hint(err, "another process still uses the slot; stop it, or drop the slot "
                             "later with pg_drop_replication_slot()");
        PQclear(res);
        return rc;
    }
}

int
repl_start(PGconn *repl, const char *slot, wr_lsn_t start, const char *publication, wr_err_t *err)
{
    return repl_start_streaming(repl, slot, start, publication, false, err);
}

int
repl_start_streaming(PGconn *repl, const char *slot, wr_lsn_t start, const char *publication,
                     bool streaming, wr_err_t *err)
{
    char *slot_ident = NULL;
    char *pub_ident = NULL;
    char *pub_lit = NULL;
    char *sql = NULL;
    char what[160];
    size_t len;
    PGresult *res;
    int rc = 0;

    snprintf(what, sizeof(what), "starting replication on slot \"%s\"", slot);
    slot_ident = PQescapeIdentifier(repl, slot, strlen(slot));
    /* publication_names is a list of identifiers inside a string literal */
    pub_ident = PQescapeIdentifier(repl, publication, strlen(publication));
    if (pub_ident != NULL)
        pub_lit = PQescapeLiteral(repl, pub_ident, strlen(pub_ident));
    if (slot_ident == NULL || pub_ident == NULL || pub_lit == NULL) {
        rc = repl_result_error(repl, NULL, what, err);
        goto out;
    }
    len = strlen(slot_ident) + strlen(pub_lit) + 128;
    sql = malloc(len);
    if (sql == NULL) {
        rc = wr_err_set(err, WR_ENOMEM, "%s: out of memory", what);
        goto out;
    }
    snprintf(sql, len,
             "START_REPLICATION SLOT %s LOGICAL " WR_LSN_FMT
             " (proto_version '%d', publication_names %s%s)",
             slot_ident, WR_LSN_ARGS(start), streaming ? 2 : 1, pub_lit,
             streaming ? ", streaming 'on'" : "");
    res = PQexec(repl, sql);
    if (res == NULL || PQresultStatus(res) != PGRES_COPY_BOTH) {
        rc = repl_result_error(repl, res, what, err);
        PQclear(res);
        goto out;
    }
    PQclear(res);
out:
    free(sql);
    if (slot_ident)
        PQfreemem(slot_ident);
    if (pub_ident)
        PQfreemem(pub_ident);
    if (pub_lit)
        PQfreemem(pub_lit);
    return rc;
}

int
repl_recv(PGconn *repl, char **buf, wr_err_t *err)
{
    int n;
    PGresult *res;
    int rc;

    *buf = NULL;
    n = PQgetCopyData(repl, buf, 1);
    if (n > 0)
        return n;
    if (n == 0)
        return 0;
    if (n == -2) {
        char msg[768];
        repl_trim_copy(PQerrorMessage(repl), msg, sizeof(msg));
        wr_err_set(err, WR_ECONN, "replication stream broken: %s", msg);
        wr_err_hint(err, "check [source] conninfo; is the server running and reachable?");
        return WR_ECONN;
    }
    /* -1: the COPY ended; the final result says why */
    res = PQgetResult(repl);
    if (res == NULL || PQresultStatus(res) == PGRES_COMMAND_OK ||
        PQresultStatus(res) == PGRES_COPY_OUT) {
        rc = wr_err_set(err, WR_EEOF, "the server ended the replication stream");
    } else {
        rc = repl_result_error(repl, res, "replication stream", err);
    }
    PQclear(res);
    /* drain what is left so the connection can be closed cleanly */
    while ((res = PQgetResult(repl)) != NULL)
        PQclear(res);
    return rc;
}

int
repl_consume(PGconn *repl, wr_err_t *err)
{
    char msg[768];

    if (PQconsumeInput(repl) != 0)
        return 0;
    repl_trim_copy(PQerrorMessage(repl), msg, sizeof(msg));
    wr_err_set(err, WR_ECONN, "replication connection lost: %s", msg);
    wr_err_hint(err, "check [source] conninfo; is the server running and reachable?");
    return WR_ECONN;
}

int
repl_parse_guc_ms(const char *text, int64_t *ms)
{
    static const struct {
        const char *unit;
        int64_t num, den; /* milliseconds = value * num / den */
    } units[] = {
        {"", 1, 1},        {"ms", 1, 1},      {"us", 1, 1000},    {"s", 1000, 1},
        {"min", 60000, 1}, {"h", 3600000, 1}, {"d", 86400000, 1},
    };
    const char *p = text;
    int64_t v = 0;

    if (text == NULL || *p < '0' || *p > '9')
        return WR_EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (INT64_MAX - 9) / 10)
            return WR_EINVAL;
        v = v * 10 + (*p - '0');
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (v > INT64_MAX / units[i].num)
            return WR_EINVAL;
        *ms = v * units[i].num / units[i].den;
        if (*ms == 0 && v > 0)
            *ms = 1;
        return 0;
    }
    return WR_EINVAL;
}

int
repl_wal_sender_timeout(PGconn *c, int64_t *ms, wr_err_t *err)
{
    PGresult *res = PQexec(c, "SHOW wal_sender_timeout");
    int rc = 0;

    *ms = 0;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = repl_result_error(c, res, "reading wal_sender_timeout", err);
    } else if (PQntuples(res) != 1 || PQnfields(res) < 1 || PQgetisnull(res, 0, 0)) {
        rc = wr_err_set(err, WR_EPROTO, "reading wal_sender_timeout: %d rows, expected 1",
                        PQntuples(res));
    } else if (repl_parse_guc_ms(PQgetvalue(res, 0, 0), ms) != 0) {
        rc = wr_err_set(err, WR_EPROTO,
                        "reading wal_sender_timeout: \"%.40s\" is not a time (expected e.g. "
                        "\"60s\")",
                        PQgetvalue(res, 0, 0));
    }
    PQclear(res);
    return rc;
}

static void
repl_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t
repl_get_u64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Now in microseconds since 2000-01-01 (the PostgreSQL epoch). */
static int64_t
repl_pg_now_us(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec - REPL_PG_EPOCH_OFFSET_US;
}

int
repl_send_status(PGconn *repl, wr_lsn_t write, wr_lsn_t flush, wr_lsn_t apply, bool reply_requested,
                 wr_err_t *err)
{
    uint8_t msg[1 + 8 * 4 + 1];
    char emsg[768];

    msg[0] = 'r';
    repl_put_u64(msg + 1, write);
    repl_put_u64(msg + 9, flush);
    repl_put_u64(msg + 17, apply);
    repl_put_u64(msg + 25, (uint64_t)repl_pg_now_us());
    msg[33] = reply_requested ? 1 : 0;
    if (PQputCopyData(repl, (const char *)msg, (int)sizeof(msg)) != 1 || PQflush(repl) != 0) {
        repl_trim_copy(PQerrorMessage(repl), emsg, sizeof(emsg));
        wr_err_set(err, WR_ECONN, "sending standby status update: %s", emsg);
        return WR_ECONN;
    }
    return 0;
}

int
repl_parse_keepalive(const uint8_t *buf, size_t len, wr_lsn_t *wal_end, bool *reply_requested,
                     wr_err_t *err)
{
    /* 'k' Int64 walEnd, Int64 sendTime, Byte1 replyRequested */
    if (buf == NULL || len < 1 || buf[0] != 'k')
        return wr_err_set(err, WR_EPROTO, "primary keepalive: expected message type 'k'");
    if (len < 18)
        return wr_err_set(err, WR_EPROTO, "primary keepalive: %zu bytes, expected at least 18",
                          len);
    *wal_end = repl_get_u64(buf + 1);
    *reply_requested = buf[17] != 0;
    return 0;
}

int
repl_parse_xlogdata(const uint8_t *buf, size_t len, wr_lsn_t *start, wr_lsn_t *wal_end,
                    const uint8_t **payload, size_t *plen, wr_err_t *err)
{
    /* 'w' Int64 dataStart, Int64 walEnd, Int64 sendTime, then the payload */
    if (buf == NULL || len < 1 || buf[0] != 'w')
        return wr_err_set(err, WR_EPROTO, "XLogData: expected message type 'w'");
    if (len <= 25)
        return wr_err_set(err, WR_EPROTO, "XLogData: %zu bytes, expected more than 25", len);
    *start = repl_get_u64(buf + 1);
    *wal_end = repl_get_u64(buf + 9);
    *payload = buf + 25;
    *plen = len - 25;
    return 0;
}

char *
repl_quote_ident(PGconn *c, const char *s)
{
    return PQescapeIdentifier(c, s, strlen(s));
}
