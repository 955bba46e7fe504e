/*
 * pg_sql.c - the postgres destination's SQL text buffer, its connection to the target
 * (session settings, reconnecting while the target is down) and the one round-trip runner
 * every statement goes through (savepoint, results, errors mapped by SQLSTATE).
 *
 * NOTES: runs in walrelay-apply and walrelay-sync (and in the supervisor for `walrelay
 * check`: pgd_connect only). Persists nothing. A conninfo is never put into a message: libpq's
 * own connection errors name host and port, never the password. Notices of the target go
 * to the debug log instead of libpq's stderr printer.
 */
#include "pg.h"

#include "../../common/log.h"
#include "../../common/repl.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Our session settings: the text forms the source sends read back exactly; statements
 * never time out underneath a long copy; notices stay quiet. After the user's own options,
 * so they win over anything the conninfo sets. synchronous_commit comes before the user's
 * options: commits are durable unless the user deliberately says otherwise there. */
#define PGD_SESSION_FIRST "-c synchronous_commit=on"
#define PGD_SESSION_LAST                                                                           \
    "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c TimeZone=UTC "          \
    "-c standard_conforming_strings=on -c bytea_output=hex -c statement_timeout=0 "                \
    "-c lock_timeout=0 -c idle_in_transaction_session_timeout=0 -c client_min_messages=warning "   \
    "-c search_path=public"

#define PGD_COPY_CHUNK (32 * 1024) /* COPY data handed to libpq in messages this large */

/* ---- the buffer ------------------------------------------------------------------------- */

void
pgd_buf_reset(pgd_buf_t *b)
{
    b->len = 0;
    b->oom = false;
    b->nlead = 0;
    b->begin = false;
    b->sp = false;
    b->whole = false;
    if (b->p != NULL)
        b->p[0] = '\0';
}

void
pgd_buf_free(pgd_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Makes room for n more bytes (and the NUL). */
static bool
pgd_buf_room(pgd_buf_t *b, size_t n)
{
    size_t cap;
    char *p;

    if (b->oom)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    cap = b->cap ? b->cap : 256;
    while (b->len + n + 1 > cap)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void
pgd_buf_addn(pgd_buf_t *b, const char *s, size_t n)
{
    if (!pgd_buf_room(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void
pgd_buf_add(pgd_buf_t *b, const char *s)
{
    pgd_buf_addn(b, s, strlen(s));
}

void
pgd_buf_addf(pgd_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !pgd_buf_room(b, (size_t)n)) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Appends s with every occurrence of the byte q doubled. */
static void
pgd_buf_doubled(pgd_buf_t *b, const char *s, size_t n, char q)
{
    const char *end = s + n;

    while (s < end) {
        const char *x = memchr(s, q, (size_t)(end - s));

        if (x == NULL) {
            pgd_buf_addn(b, s, (size_t)(end - s));
            return;
        }
        pgd_buf_addn(b, s, (size_t)(x - s) + 1);
        pgd_buf_addn(b, &q, 1);
        s = x + 1;
    }
}

void
pgd_buf_ident(pgd_buf_t *b, const char *name)
{
    pgd_buf_addn(b, "\"", 1);
    pgd_buf_doubled(b, name, strlen(name), '"');
    pgd_buf_addn(b, "\"", 1);
}

void
pgd_buf_qname(pgd_buf_t *b, const char *nsp, const char *name)
{
    pgd_buf_ident(b, nsp);
    pgd_buf_addn(b, ".", 1);
    pgd_buf_ident(b, name);
}

void
pgd_buf_lit(pgd_buf_t *b, const char *s, size_t n)
{
    pgd_buf_addn(b, "'", 1);
    pgd_buf_doubled(b, s, n, '\'');
    pgd_buf_addn(b, "'", 1);
}

void
pgd_buf_copyval(pgd_buf_t *b, char kind, const char *s, size_t n)
{
    const char *end, *run;

    if (kind == WR_VAL_NULL) {
        pgd_buf_addn(b, "\\N", 2);
        return;
    }
    if (!pgd_buf_room(b, n + n / 8 + 8))
        return;
    end = s + n;
    run = s;
    for (const char *c = s; c < end; c++) {
        const char *esc;

        switch (*c) {
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            continue;
        }
        pgd_buf_addn(b, run, (size_t)(c - run));
        pgd_buf_addn(b, esc, 2);
        run = c + 1;
    }
    pgd_buf_addn(b, run, (size_t)(end - run));
}

void
pgd_buf_arrelem(pgd_buf_t *b, char kind, const char *s, size_t n)
{
    const char *end, *run;

    if (kind == WR_VAL_NULL) {
        pgd_buf_addn(b, "NULL", 4);
        return;
    }
    if (!pgd_buf_room(b, n + n / 8 + 8))
        return;
    pgd_buf_addn(b, "\"", 1);
    end = s + n;
    run = s;
    for (const char *c = s; c < end; c++) {
        const char *esc;
        size_t elen;

        switch (*c) {
        case '\\':
            esc = "\\\\";
            elen = 2;
            break;
        case '"':
            esc = "\\\"";
            elen = 2;
            break;
        case '\'':
            esc = "''"; /* the literal around the array doubles single quotes */
            elen = 2;
            break;
        default:
            continue;
        }
        pgd_buf_addn(b, run, (size_t)(c - run));
        pgd_buf_addn(b, esc, elen);
        run = c + 1;
    }
    pgd_buf_addn(b, run, (size_t)(end - run));
    pgd_buf_addn(b, "\"", 1);
}

int
pgd_buf_guarded(pgd_buf_t *b, const char *const *checks, const char *const *creates, int n)
{
    pgd_buf_addf(b, "DO $walrelay$ BEGIN PERFORM pg_advisory_xact_lock(%lld); ",
                 (long long)pgd_lock_key("walrelay ddl"));
    for (int i = 0; i < n; i++) {
        if (strstr(checks[i], "$walrelay$") != NULL || strstr(creates[i], "$walrelay$") != NULL)
            return WR_EUNSUPPORTED;
        pgd_buf_add(b, "IF NOT (");
        pgd_buf_add(b, checks[i]);
        pgd_buf_add(b, ") THEN EXECUTE ");
        pgd_buf_lit(b, creates[i], strlen(creates[i]));
        pgd_buf_add(b, "; END IF; ");
    }
    pgd_buf_add(b, "END $walrelay$");
    return 0;
}

const char *
pgd_show(char kind, const char *s, size_t n, char *buf, size_t len)
{
    size_t m, i;

    if (kind == WR_VAL_NULL)
        return "NULL";
    if (kind == WR_VAL_UNCHANGED)
        return "(unchanged toast)";
    m = n < PGD_SHOW_MAX ? n : PGD_SHOW_MAX;
    if (m + 4 > len)
        m = len - 4;
    for (i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (m < n) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

int64_t
pgd_lock_key(const char *what)
{
    uint64_t h = 1469598103934665603ULL;

    for (const unsigned char *p = (const unsigned char *)what; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return (int64_t)h;
}

/* ---- connecting ------------------------------------------------------------------------- */

/* One line of a libpq message (trailing newlines and inner line breaks made spaces). */
static void
pgd_one_line(const char *s, char *buf, size_t len)
{
    size_t o = 0;

    if (s == NULL)
        s = "";
    for (; *s && o + 1 < len; s++) {
        if (*s == '\n' || *s == '\r' || *s == '\t') {
            if (o > 0 && buf[o - 1] != ' ')
                buf[o++] = ' ';
            continue;
        }
        buf[o++] = *s;
    }
    while (o > 0 && buf[o - 1] == ' ')
        o--;
    buf[o] = '\0';
}

static void
pgd_notice(void *arg, const char *message)
{
    char line[512];

    WR_UNUSED(arg);
    pgd_one_line(message, line, sizeof(line));
    log_debug("target notice message=\"%s\"", line);
}

int
pgd_connect(const char *conninfo, const char *appname, const char *what, const char *key,
            PGconn **out, wr_err_t *err)
{
    PQconninfoOption *opts;
    const char *user_options = NULL;
    const char *keys[16], *vals[16];
    char *perr = NULL, *options;
    char msg[768];
    size_t olen;
    PGconn *c;
    int n = 0;

    *out = NULL;
    opts = PQconninfoParse(conninfo ? conninfo : "", &perr);
    if (opts == NULL) {
        pgd_one_line(perr ? perr : "out of memory", msg, sizeof(msg));
        PQfreemem(perr);
        wr_err_set(err, WR_ECONFIG, "invalid conninfo of %s: %s", what, msg);
        wr_err_hint(err, "%s: a libpq connection string (key=value pairs or a postgresql:// URI)",
                    key);
        return WR_ECONFIG;
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, "options") == 0 && o->val != NULL && o->val[0] != '\0')
            user_options = o->val;
    olen = sizeof(PGD_SESSION_FIRST) + (user_options ? strlen(user_options) + 1 : 0) +
           sizeof(PGD_SESSION_LAST) + 2;
    options = malloc(olen);
    if (options == NULL) {
        PQconninfoFree(opts);
        return wr_err_set(err, WR_ENOMEM, "out of memory connecting to %s", what);
    }
    snprintf(options, olen, "%s %s%s%s", PGD_SESSION_FIRST, user_options ? user_options : "",
             user_options ? " " : "", PGD_SESSION_LAST);
    PQconninfoFree(opts);
    /* the source's connection defaults (a target gone without a FIN - a network cut - is
     * noticed in bounded time, not after the kernel's ~15 min of retransmissions); the
     * conninfo's own settings win */
    n += (int)repl_conn_defaults_put(keys + n, vals + n);
    keys[n] = "dbname";
    vals[n++] = conninfo ? conninfo : "";
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
        return wr_err_set(err, WR_ENOMEM, "out of memory connecting to %s", what);
    if (PQstatus(c) != CONNECTION_OK) {
        pgd_one_line(PQerrorMessage(c), msg, sizeof(msg));
        PQfinish(c);
        wr_err_set(err, WR_ECONN, "cannot connect to %s: %s", what, msg);
        wr_err_hint(err,
                    "check %s (host, port, dbname, user; passwords belong in ~/.pgpass or "
                    "PGPASSFILE); is the server running and reachable?",
                    key);
        return WR_ECONN;
    }
    PQsetNoticeProcessor(c, pgd_notice, NULL);
    *out = c;
    return 0;
}

static void pgd_conn_lost(dest_pg_t *d);

/* Sleeps ms in slices of PGD_WAIT_SLICE_MS, asking the worker whether to give up
 * (dest_host_interrupted: a stop, or the supervisor gone). true: give up. */
#define PGD_WAIT_SLICE_MS 100
static bool
pgd_sleep(int ms)
{
    while (ms > 0) {
        int slice = ms < PGD_WAIT_SLICE_MS ? ms : PGD_WAIT_SLICE_MS;

        if (dest_host_interrupted())
            return true;
        usleep((useconds_t)slice * 1000);
        ms -= slice;
    }
    return dest_host_interrupted();
}

int
pgd_ensure_conn(dest_pg_t *d, wr_err_t *err)
{
    char app[96];
    int waited_ms = 0, delay = 250, rc;
    unsigned attempt = 0;
    bool warned = false;

    if (d->conn != NULL && PQstatus(d->conn) == CONNECTION_OK)
        return 0;
    if (d->conn != NULL) {
        PQfinish(d->conn);
        d->conn = NULL;
        log_warn("connection to the destination lost, reconnecting");
        if (d->ncommits > d->durable_n) {
            /* those commits may be lost with the server: the worker must replay them (its
             * flush position never passed them) */
            wr_err_set(err, WR_ECONN,
                       "the connection to the destination was lost while %llu commits were "
                       "not yet durable",
                       (unsigned long long)(d->ncommits - d->durable_n));
            wr_err_hint(err, "walrelay replays from the last position the destination made "
                             "durable");
            d->ndur = 0;
            pgd_conn_lost(d);
            return WR_ECONN;
        }
    }
    d->in_txn = d->txn_sent = d->sp_open = false;
    d->copy_relid = 0;
    snprintf(app, sizeof(app), "walrelay_%s_%s", d->pipeline, d->role);
    for (;;) {
        rc = pgd_connect(d->conninfo, app, "the destination", "[destination] conninfo", &d->conn,
                         err);
        if (rc != WR_ECONN)
            break;
        /* walrelay check and tools have no hooks: they report the failure at once */
        if (!dest_host_hooked())
            return rc;
        attempt++;
        if (!warned) {
            log_warn("destination unreachable, retrying until it answers error=\"%s\"", err->msg);
            warned = true;
        } else if (waited_ms >= 60000) {
            log_warn("destination still unreachable seconds=%d error=\"%s\"", waited_ms / 1000,
                     err->msg);
            waited_ms = 0;
        }
        {
            /* walrelay status shows it (the message never holds the conninfo) */
            char msg[400];

            snprintf(msg, sizeof(msg), "%.300s; attempt %u, next in %.1f s", err->msg, attempt,
                     delay / 1000.0);
            dest_host_waiting("postgres", msg);
        }
        if (pgd_sleep(delay))
            return rc; /* the worker must stop: the batch is delivered again by the next run */
        waited_ms += delay;
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    if (attempt > 0)
        dest_host_waiting("postgres", NULL);
    if (rc != 0)
        return rc;
    if (warned)
        log_info("destination reachable again");
    d->server_version = PQserverVersion(d->conn);
    if (d->async) {
        /* commits return before their WAL is flushed; dest_ops_t.durable says when it is */
        PGresult *r = PQexec(d->conn, "SET synchronous_commit = off");

        rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : pgd_fail(d, r, "setting up", err);
        PQclear(r);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- statements ------------------------------------------------------------------------- */

void
pgd_sql_start(dest_pg_t *d, pgd_buf_t *b)
{
    pgd_buf_reset(b);
    if (!d->in_txn)
        return;
    if (!d->txn_sent) {
        pgd_buf_add(b, "BEGIN; ");
        b->begin = true;
        b->nlead++;
    }
    if (d->sp_open) {
        pgd_buf_add(b, "RELEASE SAVEPOINT wr; ");
        b->nlead++;
    }
    pgd_buf_add(b, "SAVEPOINT wr; ");
    b->sp = true;
    b->nlead++;
}

void
pgd_res_clear(pgd_res_t *r)
{
    for (int i = 0; i < r->n; i++)
        PQclear(r->r[i]);
    free(r->r);
    memset(r, 0, sizeof(*r));
}

static bool
pgd_res_push(pgd_res_t *r, PGresult *res)
{
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 8;
        PGresult **n = realloc(r->r, (size_t)cap * sizeof(*n));

        if (n == NULL)
            return false;
        r->r = n;
        r->cap = cap;
    }
    r->r[r->n++] = res;
    return true;
}

/* The connection broke: forget the transaction (the server rolled it back). */
static void
pgd_conn_lost(dest_pg_t *d)
{
    d->in_txn = d->txn_sent = d->sp_open = false;
    d->copy_relid = 0;
    d->copy_busy = false;
    d->copyoff = 0;
    pgd_buf_reset(&d->copybuf);
}

int
pgd_fail(dest_pg_t *d, const PGresult *res, const char *what, wr_err_t *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    const char *srvhint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
    char msg[600], det[300];
    int code = WR_EDEST;

    if (primary != NULL)
        pgd_one_line(primary, msg, sizeof(msg));
    else
        pgd_one_line(PQerrorMessage(d->conn), msg, sizeof(msg));
    if (msg[0] == '\0')
        snprintf(msg, sizeof(msg), "unexpected result %s",
                 res ? PQresStatus(PQresultStatus(res)) : "(none)");
    det[0] = '\0';
    if (detail != NULL)
        pgd_one_line(detail, det, sizeof(det));
    if (d->conn == NULL || PQstatus(d->conn) != CONNECTION_OK || state == NULL) {
        code = PQstatus(d->conn) != CONNECTION_OK ? WR_ECONN : WR_EDEST;
    } else if (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
               strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 ||
               strcmp(state, "53300") == 0) {
        code = WR_ECONN; /* gone, shutting down, starting up, too many connections */
    } else if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
               strcmp(state, "P0001") == 0) {
        code = WR_EDATA; /* a value or a constraint of the target (or a trigger) refused */
    } else if (strncmp(state, "42", 2) == 0 || strcmp(state, "0A000") == 0) {
        code = WR_EUNSUPPORTED; /* a table or column missing or changed, privileges */
    }
    if (code == WR_ECONN)
        pgd_conn_lost(d);
    wr_err_set(err, code, "%s: %s%s%s%s (SQLSTATE %s)", what, msg, det[0] ? " (" : "", det,
               det[0] ? ")" : "", state ? state : "none");
    if (srvhint != NULL) {
        char h[400];
        pgd_one_line(srvhint, h, sizeof(h));
        wr_err_hint(err, "%s", h);
    } else if (code == WR_ECONN) {
        wr_err_hint(err, "the destination database went away: walrelay reconnects and "
                         "replays from the last committed position");
    } else if (code == WR_EDATA) {
        wr_err_hint(err, "the target refused the change (a constraint, a trigger or a type "
                         "on the target that the source does not have?): fix the target, then "
                         "run \"walrelay retry\" for the table (it is copied again)");
    } else if (code == WR_EUNSUPPORTED && state != NULL && strcmp(state, "42501") == 0) {
        wr_err_hint(err, "grant the destination user the privileges walrelay needs on the "
                         "target (CREATE on the database or schema, ownership of its tables)");
    } else if (code == WR_EUNSUPPORTED) {
        wr_err_hint(err, "was the target table changed outside walrelay? run \"walrelay "
                         "resync\" for the table");
    }
    return code;
}

int
pgd_sp_rollback(dest_pg_t *d, wr_err_t *err)
{
    PGresult *res;
    int rc = 0;

    if (!d->txn_sent)
        return 0;
    res = PQexec(d->conn, "ROLLBACK TO SAVEPOINT wr");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = pgd_fail(d, res, "rolling back to the savepoint", err);
    else
        d->sp_open = true;
    PQclear(res);
    return rc;
}

/* After a failed statement of b: the transaction back to its state before b. */
static void
pgd_after_failure(dest_pg_t *d, const pgd_buf_t *b, int code)
{
    wr_err_t rerr;

    if (code == WR_ECONN || !d->in_txn || b->whole)
        return;
    if (!d->txn_sent)
        return; /* BEGIN itself failed: nothing is open */
    if (b->sp && pgd_sp_rollback(d, &rerr) == 0)
        return;
    /* no savepoint to go back to (or it failed): the transaction is lost; the next
     * commit says so */
    d->sp_open = false;
    log_warn("destination transaction aborted by a failed statement");
}

/* Reads the results of a query sent with PQsendQuery, feeding copy data to a COPY FROM
 * STDIN. Results after b's leading statements go to out. stop_at_copy: return as soon as
 * the COPY is open (pgd_copy_begin). */
/* Waits until a result can be read without blocking; meanwhile the worker's read-ahead
 * fd (dest_set_readahead) is served. A broken connection ends the wait (PQgetResult then
 * reports it). */
static void
pgd_await(dest_pg_t *d)
{
    int rafd = dest_readahead_fd();

    if (rafd < 0)
        return; /* PQgetResult blocks by itself */
    while (PQisBusy(d->conn)) {
        struct pollfd pf[2];

        pf[0].fd = PQsocket(d->conn);
        pf[0].events = POLLIN;
        pf[0].revents = 0;
        pf[1].fd = rafd;
        pf[1].events = POLLIN;
        pf[1].revents = 0;
        if (poll(pf, rafd >= 0 ? 2 : 1, 1000) < 0 && errno != EINTR)
            return;
        if (rafd >= 0 && pf[1].revents != 0 && !dest_readahead())
            rafd = -1; /* left alone until the next wait */
        if (pf[0].revents != 0 && PQconsumeInput(d->conn) == 0)
            return;
    }
}

static int
pgd_collect(dest_pg_t *d, const pgd_buf_t *b, const char *copy, size_t copylen, bool stop_at_copy,
            pgd_res_t *out, const char *what, wr_err_t *err)
{
    PGresult *res, *bad = NULL;
    int idx = 0, rc = 0;
    bool oom = false;

    while (pgd_await(d), (res = PQgetResult(d->conn)) != NULL) {
        ExecStatusType st = PQresultStatus(res);

        if (st == PGRES_COPY_IN) {
            PQclear(res);
            if (bad != NULL) { /* cannot happen: the server stops at the first error */
                PQputCopyEnd(d->conn, "walrelay: an earlier statement failed");
                continue;
            }
            if (stop_at_copy)
                return 0;
            if (copylen > 0 && PQputCopyData(d->conn, copy, (int)copylen) != 1)
                break;
            if (PQputCopyEnd(d->conn, NULL) != 1)
                break;
            continue;
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            if (bad == NULL)
                bad = res;
            else
                PQclear(res);
            continue;
        }
        if (idx == 0 && b->begin)
            d->txn_sent = true;
        if (idx++ < b->nlead || bad != NULL || out == NULL) {
            PQclear(res);
            continue;
        }
        if (!pgd_res_push(out, res)) {
            PQclear(res);
            oom = true;
        }
    }
    if (bad != NULL) {
        rc = pgd_fail(d, bad, what, err);
        PQclear(bad);
    } else if (PQstatus(d->conn) != CONNECTION_OK) {
        rc = pgd_fail(d, NULL, what, err);
    } else if (stop_at_copy) {
        rc = wr_err_set(err, WR_EDEST, "%s: the server did not start the COPY", what);
    } else if (oom) {
        rc = wr_err_set(err, WR_ENOMEM, "%s: out of memory reading results", what);
    }
    if (rc != 0)
        pgd_after_failure(d, b, rc);
    else if (b->sp)
        d->sp_open = true;
    return rc;
}

/* Sends b; an open COPY is ended first (every other statement needs the connection). */
static int
pgd_send(dest_pg_t *d, const pgd_buf_t *b, const char *what, wr_err_t *err)
{
    int rc;

    if (b->oom)
        return wr_err_set(err, WR_ENOMEM, "%s: out of memory building the statements", what);
    if (d->copy_relid != 0 && (rc = pgd_copy_end(d, err)) < 0)
        return rc;
    if (!d->in_txn && (rc = pgd_ensure_conn(d, err)) < 0)
        return rc;
    if (d->conn == NULL || PQstatus(d->conn) != CONNECTION_OK) {
        pgd_conn_lost(d);
        wr_err_set(err, WR_ECONN, "%s: the connection to the destination was lost", what);
        wr_err_hint(err, "walrelay reconnects and replays from the last committed position");
        return WR_ECONN;
    }
    if (PQsendQuery(d->conn, b->p) != 1)
        return pgd_fail(d, NULL, what, err);
    return 0;
}

int
pgd_run(dest_pg_t *d, const pgd_buf_t *b, const char *copy, size_t copylen, pgd_res_t *out,
        const char *what, wr_err_t *err)
{
    int rc;

    if ((rc = pgd_send(d, b, what, err)) < 0)
        return rc;
    return pgd_collect(d, b, copy, copylen, false, out, what, err);
}

int
pgd_exec(dest_pg_t *d, const pgd_buf_t *b, const char *what, wr_err_t *err)
{
    return pgd_run(d, b, NULL, 0, NULL, what, err);
}

int
pgd_copy_begin(dest_pg_t *d, const pgd_buf_t *b, uint32_t relid, const char *what, wr_err_t *err)
{
    int rc;

    if ((rc = pgd_send(d, b, what, err)) < 0)
        return rc;
    if ((rc = pgd_collect(d, b, NULL, 0, true, NULL, what, err)) < 0)
        return rc;
    if (b->sp)
        d->sp_open = true;
    d->copy_relid = relid;
    d->txn_copy = true;
    pgd_buf_reset(&d->copybuf);
    d->copyoff = 0;
    d->copy_busy = false;
    if (PQsetnonblocking(d->conn, 1) != 0)
        return pgd_fail(d, NULL, "starting the COPY", err);
    return 0;
}

/* The copy's data flows through d->copybuf and libpq's output buffer with the connection
 * in non-blocking mode: a write never waits for the target while the source has more to
 * give, so both servers work at the same time (a blocking send of a chunk stalled the
 * source for as long as the target took to make room: the copy ran at the sum of both
 * servers' times instead of the slower one's). The buffer is bounded: past
 * PGD_COPY_HIGH bytes pgd_copy_pump waits for the target. */
#define PGD_COPY_PUMP (32 * 1024)
#define PGD_COPY_HIGH (16 * 1024 * 1024)

/* Moves copy data towards the target: libpq's pending output first, then chunks of
 * d->copybuf. block: until everything is handed over (the copy's end, or the buffer past
 * its bound); else only what the socket takes now. */
int
pgd_copy_pump(dest_pg_t *d, bool block, wr_err_t *err)
{
    for (;;) {
        size_t left = d->copybuf.len - d->copyoff, n;

        if (d->copy_busy) {
            int r = PQflush(d->conn);

            if (r < 0)
                return pgd_fail(d, NULL, "sending COPY data", err);
            if (r == 1) {
                struct pollfd pf;

                if (!block)
                    break;
                /* the socket is full: wait until the target takes more (reading what it
                 * says meanwhile, as libpq's own blocking send does) */
                pf.fd = PQsocket(d->conn);
                pf.events = POLLOUT | POLLIN;
                pf.revents = 0;
                if (poll(&pf, 1, 1000) < 0 && errno != EINTR)
                    return wr_err_set(err, WR_EIO, "poll: %s", strerror(errno));
                if ((pf.revents & POLLIN) && PQconsumeInput(d->conn) == 0)
                    return pgd_fail(d, NULL, "sending COPY data", err);
                continue;
            }
            d->copy_busy = false;
        }
        if (left == 0)
            break;
        n = left < PGD_COPY_CHUNK ? left : PGD_COPY_CHUNK;
        if (PQputCopyData(d->conn, d->copybuf.p + d->copyoff, (int)n) != 1)
            return pgd_fail(d, NULL, "sending COPY data", err);
        d->copyoff += n;
        d->copy_busy = true;
    }
    if (d->copyoff == d->copybuf.len) {
        pgd_buf_reset(&d->copybuf);
        d->copyoff = 0;
    } else if (d->copyoff > d->copybuf.len / 2) {
        memmove(d->copybuf.p, d->copybuf.p + d->copyoff, d->copybuf.len - d->copyoff);
        d->copybuf.len -= d->copyoff;
        d->copyoff = 0;
    }
    return 0;
}

int
pgd_copy_put(dest_pg_t *d, const char *data, size_t len, wr_err_t *err)
{
    size_t before = d->copybuf.len;

    pgd_buf_addn(&d->copybuf, data, len);
    if (d->copybuf.oom)
        return wr_err_set(err, WR_ENOMEM, "out of memory buffering COPY data");
    if (d->copybuf.len - d->copyoff >= PGD_COPY_HIGH) {
        /* the target is behind: wait until half of the buffer is taken, not all of it,
         * so that reading the source resumes while the target still has work */
        while (d->copybuf.len - d->copyoff > PGD_COPY_HIGH / 2) {
            int rc = pgd_copy_pump(d, false, err);
            struct pollfd pf;

            if (rc < 0)
                return rc;
            if (d->copybuf.len - d->copyoff <= PGD_COPY_HIGH / 2)
                break;
            pf.fd = PQsocket(d->conn);
            pf.events = POLLOUT | POLLIN;
            pf.revents = 0;
            if (poll(&pf, 1, 1000) < 0 && errno != EINTR)
                return wr_err_set(err, WR_EIO, "poll: %s", strerror(errno));
            if ((pf.revents & POLLIN) && PQconsumeInput(d->conn) == 0)
                return pgd_fail(d, NULL, "sending COPY data", err);
        }
        return 0;
    }
    /* hand data over in steps of PGD_COPY_PUMP: also while libpq still holds data the
     * socket did not take (copy_busy), which is most of the time when the target is the
     * slower side; trying at every row then cost a send() that failed with EAGAIN per row */
    if (before / PGD_COPY_PUMP != d->copybuf.len / PGD_COPY_PUMP)
        return pgd_copy_pump(d, false, err);
    return 0;
}

int
pgd_copy_end(dest_pg_t *d, wr_err_t *err)
{
    pgd_buf_t none = {0};
    PGresult *res, *bad = NULL;
    int rc = 0;

    if (d->copy_relid == 0)
        return 0;
    d->copy_relid = 0;
    none.sp = d->in_txn;
    rc = pgd_copy_pump(d, true, err);
    pgd_buf_reset(&d->copybuf);
    d->copyoff = 0;
    d->copy_busy = false;
    if (PQsetnonblocking(d->conn, 0) != 0 && rc == 0)
        rc = pgd_fail(d, NULL, "ending the COPY", err);
    if (rc < 0)
        return rc;
    if (PQputCopyEnd(d->conn, NULL) != 1)
        return pgd_fail(d, NULL, "ending the COPY", err);
    while ((res = PQgetResult(d->conn)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && bad == NULL)
            bad = res;
        else
            PQclear(res);
    }
    if (bad != NULL) {
        rc = pgd_fail(d, bad, "copying rows", err);
        PQclear(bad);
    } else if (PQstatus(d->conn) != CONNECTION_OK) {
        rc = pgd_fail(d, NULL, "copying rows", err);
    }
    if (rc != 0)
        pgd_after_failure(d, &none, rc);
    else if (d->in_txn)
        d->sp_open = true;
    return rc;
}
