/*
 * metrics.c - the supervisor's metrics: worker reports added up, the lag read from the
 * source, and the Prometheus text exposition served by http.c (/metrics) and the control
 * socket (`walrelay metrics DIR`).
 *
 * NOTES: runs in the `walrelay run` process, on its libuv loop, except the lag query
 * (lag_work_cb), which runs in libuv's thread pool with its own connection to the source
 * (PGconn owned here, touched only by that job while it runs, and by sup__metrics_free
 * once the loop has ended). Persists nothing: every counter starts at zero with the
 * supervisor. Workers report deltas (proto/wkmetrics.h), which are added here by role, so
 * a worker's restart (or kill -9) never moves a counter back; what a killed worker had
 * not reported yet is lost, at most a second of it. Per table, counts are kept by relid
 * (with the table's last known name) for the life of the process, also after the table
 * left the publication. Every metric is labelled pipeline="<name>"; see
 * docs/operations.md for the list, their meaning and the alert rules built on them.
 *
 * The lag: every [metrics] lag_interval_ms (from the 1 s tick) one query reads
 * pg_current_wal_lsn() and the pipeline's slots (walrelay_<p>, walrelay_<p>_s<relid>):
 *   walrelay_lag_bytes            current WAL position - the apply slot's confirmed_flush
 *   walrelay_slot_retained_bytes  current WAL position - each slot's restart_lsn
 * Both are left out while the last query failed (errors_total{kind="lag_query"} counts
 * the failures, the log says why once per failure streak). walrelay_lag_seconds is now -
 * the commit time of the last source transaction the apply worker processed, 0 while it
 * reports that everything it received is durable (the commit time is the source's clock).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "../common/log.h"
#include "sup_int.h"

enum { MT_APPLY = 0, MT_SYNC = 1, MT_NROLES = 2 };
static const char *const mt_role_names[MT_NROLES] = {"apply", "sync"};
static const char *const mt_op_names[IPC_NOPS] = {"insert", "update", "delete", "truncate"};

/* errors_total kinds always shown (0 until they happen), then those that came up */
static const char *const mt_base_kinds[] = {"worker_exit", "protocol", "lag_query", "slot_lost"};
#define MT_MAX_KINDS 64

typedef struct mt_table_s {
    uint32_t relid;
    char label[300]; /* "nsp.name", as last known */
    uint64_t events[IPC_NOPS];
    uint64_t copy_rows;
    uint64_t copy_seen_rows; /* the current copy's rows as last reported */
    int64_t copy_seen_pid;   /* by this process */
    int64_t copy_start_ms;   /* monotonic: DataSync requested; 0 = no copy seen */
    int64_t copy_end_ms;     /* FinishedCopy; 0 = under way */
} mt_table_t;

typedef struct mt_kind_s {
    char kind[48];
    uint64_t n;
} mt_kind_t;

typedef struct mt_slot_s {
    char name[64];
    bool has_restart, has_confirmed;
    wr_lsn_t restart, confirmed;
} mt_slot_t;

/* The lag query, in the thread pool. One at a time (lag_busy). */
typedef struct mt_lag_job_s {
    uv_work_t req;
    sup_metrics_t *m;
    int rc;
    char err[512];
    wr_lsn_t current;
    mt_slot_t *slots;
    size_t nslots;
} mt_lag_job_t;

struct sup_metrics_s {
    sup_t *sup;
    int64_t start_wall_ms;
    uint64_t transactions[MT_NROLES], batches[MT_NROLES], bytes[MT_NROLES];
    uint64_t status_updates[MT_NROLES], restarts[MT_NROLES];
    ipc_hist_t batch[MT_NROLES], commit[MT_NROLES];
    mt_table_t *tabs; /* sorted by relid */
    size_t ntabs, cap;
    mt_kind_t kinds[MT_MAX_KINDS];
    size_t nkinds;
    /* the apply worker */
    bool apply_streaming;
    bool ever_streamed;
    int64_t last_commit_ts; /* us since the Unix epoch, 0 = none */
    bool caught_up;
    /* the lag */
    char *conninfo; /* a copy: the job reads it off the loop ([source] needs a restart) */
    char app[96];
    char apply_slot[64];
    PGconn *conn;
    bool lag_busy;
    int64_t lag_last_ms;
    bool lag_known;
    bool lag_failing;
    wr_lsn_t wal_current;
    mt_slot_t *slots;
    size_t nslots;
    mt_lag_job_t job;
    char status[512]; /* the last STATUS= sent */
};

/* ---- bookkeeping ---- */

int
sup__metrics_init(sup_t *s, wr_err_t *err)
{
    sup_metrics_t *m = calloc(1, sizeof(*m));

    if (!m || !(m->conninfo = wr_strdup(s->cfg.source_conninfo))) {
        free(m);
        return wr_err_set(err, WR_ENOMEM, "out of memory for the metrics");
    }
    m->sup = s;
    m->start_wall_ms = wr_wall_ms();
    for (size_t i = 0; i < sizeof(mt_base_kinds) / sizeof(mt_base_kinds[0]); i++) {
        snprintf(m->kinds[m->nkinds].kind, sizeof(m->kinds[0].kind), "%s", mt_base_kinds[i]);
        m->nkinds++;
    }
    snprintf(m->app, sizeof(m->app), "walrelay_%s_metrics", s->cfg.pipeline_name);
    cfg_apply_slot_name(&s->cfg, m->apply_slot, sizeof(m->apply_slot));
    m->job.req.data = &m->job;
    m->job.m = m;
    s->metrics = m;
    return 0;
}

void
sup__metrics_free(sup_t *s)
{
    sup_metrics_t *m = s->metrics;

    if (!m)
        return;
    if (m->conn)
        PQfinish(m->conn);
    free(m->job.slots);
    free(m->slots);
    free(m->tabs);
    free(m->conninfo);
    free(m);
    s->metrics = NULL;
}

static int
mt_role(const sup_worker_t *w)
{
    return w->is_apply ? MT_APPLY : MT_SYNC;
}

/* The entry of relid (created, named after the supervisor's table when known); NULL on
 * OOM. */
static mt_table_t *
mt_table(sup_metrics_t *m, uint32_t relid)
{
    size_t lo = 0, hi = m->ntabs;
    const sup_table_t *t;
    mt_table_t *e;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->tabs[mid].relid < relid)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < m->ntabs && m->tabs[lo].relid == relid) {
        e = &m->tabs[lo];
    } else {
        if (m->ntabs == m->cap) {
            size_t cap = m->cap ? m->cap * 2 : 32;
            mt_table_t *tabs = realloc(m->tabs, cap * sizeof(*tabs));
            if (!tabs)
                return NULL;
            m->tabs = tabs;
            m->cap = cap;
        }
        memmove(&m->tabs[lo + 1], &m->tabs[lo], (m->ntabs - lo) * sizeof(*m->tabs));
        m->ntabs++;
        e = &m->tabs[lo];
        memset(e, 0, sizeof(*e));
        e->relid = relid;
        snprintf(e->label, sizeof(e->label), "relid %u", relid);
    }
    t = sup__find_table(m->sup, relid);
    if (t)
        snprintf(e->label, sizeof(e->label), "%s.%s", t->nsp, t->name);
    return e;
}

void
sup__metrics_error(sup_t *s, const char *kind)
{
    sup_metrics_t *m = s->metrics;
    char k[sizeof(m->kinds[0].kind)];
    size_t i;

    if (!m)
        return;
    /* kinds come from the workers: cut, and the last slot collects any beyond the limit */
    snprintf(k, sizeof(k), "%s", kind && *kind ? kind : "unknown");
    for (i = 0; i < m->nkinds; i++)
        if (strcmp(m->kinds[i].kind, k) == 0)
            break;
    if (i == m->nkinds) {
        if (m->nkinds >= MT_MAX_KINDS - 1) {
            i = MT_MAX_KINDS - 1;
            snprintf(k, sizeof(k), "other");
            m->nkinds = MT_MAX_KINDS;
        } else {
            m->nkinds++;
        }
        snprintf(m->kinds[i].kind, sizeof(m->kinds[i].kind), "%s", k);
    }
    m->kinds[i].n++;
}

static void
mt_hist_add(ipc_hist_t *to, const ipc_hist_t *d)
{
    for (int i = 0; i < IPC_HIST_NCOUNTS; i++)
        to->counts[i] += d->counts[i];
    to->sum_us += d->sum_us;
}

void
sup__metrics_worker_report(sup_t *s, const sup_worker_t *w, const ipc_msg_t *msg)
{
    sup_metrics_t *m = s->metrics;
    const __typeof__(msg->u.worker_metrics) *r = &msg->u.worker_metrics;
    int role = mt_role(w);

    if (!m)
        return;
    m->transactions[role] += r->transactions;
    m->batches[role] += r->batches;
    m->bytes[role] += r->bytes_received;
    m->status_updates[role] += r->status_updates;
    mt_hist_add(&m->batch[role], &r->batch);
    mt_hist_add(&m->commit[role], &r->commit);
    for (uint32_t i = 0; i < r->nevents; i++) {
        mt_table_t *e = mt_table(m, r->events[i].relid);
        if (!e) {
            log_warn("out of memory counting events for metrics relid=%u", r->events[i].relid);
            continue;
        }
        for (int k = 0; k < IPC_NOPS; k++)
            e->events[k] += r->events[i].n[k];
    }
    if (w->is_apply) {
        if (r->last_commit_ts > 0)
            m->last_commit_ts = r->last_commit_ts;
        m->caught_up = r->caught_up;
    }
}

void
sup__metrics_streaming(sup_t *s, wr_lsn_t start_lsn)
{
    sup_metrics_t *m = s->metrics;
    char summary[256];

    if (!m)
        return;
    m->apply_streaming = true;
    log_info("the apply worker streams start=" WR_LSN_FMT, WR_LSN_ARGS(start_lsn));
    if (!m->ever_streamed) {
        m->ever_streamed = true;
        sup__metrics_summary(s, summary, sizeof(summary));
        sup__notify_status(s, summary);
        sup__notify_ready(s);
    }
}

void
sup__metrics_copy_progress(sup_t *s, sup_table_t *t, int64_t pid, uint64_t rows)
{
    sup_metrics_t *m = s->metrics;
    mt_table_t *e;

    if (!m || !(e = mt_table(m, t->relid)))
        return;
    /* rows counts from 0 in each copy: a new process, or fewer rows than last time (the
     * same process copying again after a schema change), is a new copy */
    if (pid != e->copy_seen_pid || rows < e->copy_seen_rows)
        e->copy_seen_rows = 0;
    e->copy_rows += rows - e->copy_seen_rows;
    e->copy_seen_rows = rows;
    e->copy_seen_pid = pid;
}

void
sup__metrics_phase(sup_t *s, sup_table_t *t, wr_phase_t to, const char *err_kind)
{
    sup_metrics_t *m = s->metrics;
    mt_table_t *e;

    if (!m)
        return;
    if (to == PH_ERRORED)
        sup__metrics_error(s, err_kind);
    if (to != PH_DATASYNC && to != PH_FINISHEDCOPY)
        return;
    if (!(e = mt_table(m, t->relid)))
        return;
    if (to == PH_DATASYNC) { /* a copy starts (again) */
        e->copy_start_ms = wr_now_ms();
        e->copy_end_ms = 0;
    } else if (e->copy_start_ms) {
        e->copy_end_ms = wr_now_ms();
    }
}

void
sup__metrics_worker_exit(sup_t *s, const sup_worker_t *w, const sup_proc_t *p)
{
    sup_metrics_t *m = s->metrics;

    if (!m)
        return;
    if (w->is_apply) {
        m->apply_streaming = false;
        m->caught_up = false;
    }
    if (s->stopping && !p->term_signal)
        return;
    if (w->is_apply && !p->fatal && !p->term_signal && p->exit_status == WR_EXIT_SLOT_LOST)
        sup__metrics_error(s, "slot_lost");
    else if (p->fatal || p->term_signal || p->exit_status != 0 || (w->is_apply && !w->stop_sent))
        sup__metrics_error(s, "worker_exit");
}

void
sup__metrics_restart(sup_t *s, const sup_worker_t *w)
{
    if (s->metrics)
        s->metrics->restarts[mt_role(w)]++;
}

/* ---- the lag query (thread pool) ---- */

/* Is name one of this pipeline's slots: the apply slot, or its prefix + "_s" + digits? */
static bool
mt_our_slot(const char *apply, const char *name)
{
    size_t n = strlen(apply);
    const char *p;

    if (strcmp(name, apply) == 0)
        return true;
    if (strncmp(name, apply, n) != 0 || strncmp(name + n, "_s", 2) != 0 || !name[n + 2])
        return false;
    for (p = name + n + 2; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

static void
lag_work_cb(uv_work_t *req)
{
    mt_lag_job_t *j = req->data;
    sup_metrics_t *m = j->m;
    /* ours first: the conninfo's own settings (expanded from dbname) override them */
    const char *kw[] = {"connect_timeout", "tcp_user_timeout", "application_name", "dbname", NULL};
    const char *val[] = {"10", "10000", m->app, m->conninfo, NULL};
    const char *params[1] = {m->apply_slot};
    PGresult *res;

    j->rc = 0;
    j->err[0] = '\0';
    j->slots = NULL;
    j->nslots = 0;
    if (m->conn && PQstatus(m->conn) != CONNECTION_OK) {
        PQfinish(m->conn);
        m->conn = NULL;
    }
    if (!m->conn) {
        m->conn = PQconnectdbParams(kw, val, 1);
        if (!m->conn || PQstatus(m->conn) != CONNECTION_OK) {
            snprintf(j->err, sizeof(j->err), "cannot connect to the source: %s",
                     m->conn ? PQerrorMessage(m->conn) : "out of memory");
            j->err[strcspn(j->err, "\n")] = '\0';
            j->rc = WR_ECONN;
            return;
        }
        res = PQexec(m->conn, "SET statement_timeout = '10s'");
        PQclear(res);
    }
    res = PQexecParams(m->conn,
                       "SELECT pg_catalog.pg_current_wal_lsn()::text, s.slot_name::text, "
                       "s.restart_lsn::text, s.confirmed_flush_lsn::text "
                       "FROM (VALUES (1)) AS one LEFT JOIN pg_catalog.pg_replication_slots s "
                       "ON s.database = pg_catalog.current_database() "
                       "AND pg_catalog.starts_with(s.slot_name::text, $1) ORDER BY 2",
                       1, NULL, params, NULL, NULL, 0);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        snprintf(j->err, sizeof(j->err), "reading the WAL position and the slots: %s",
                 res ? PQresultErrorMessage(res) : PQerrorMessage(m->conn));
        j->err[strcspn(j->err, "\n")] = '\0';
        j->rc = WR_ECONN;
        PQclear(res);
        return;
    }
    if (wr_lsn_parse(PQgetvalue(res, 0, 0), &j->current) != 0) {
        snprintf(j->err, sizeof(j->err), "pg_current_wal_lsn() returned \"%.40s\"",
                 PQgetvalue(res, 0, 0));
        j->rc = WR_EPROTO;
        PQclear(res);
        return;
    }
    j->slots = calloc((size_t)PQntuples(res), sizeof(*j->slots));
    if (!j->slots) {
        snprintf(j->err, sizeof(j->err), "out of memory");
        j->rc = WR_ENOMEM;
        PQclear(res);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        mt_slot_t *sl = &j->slots[j->nslots];
        const char *name = PQgetvalue(res, i, 1);
        if (PQgetisnull(res, i, 1) || !mt_our_slot(m->apply_slot, name))
            continue;
        snprintf(sl->name, sizeof(sl->name), "%s", name);
        sl->has_restart =
            !PQgetisnull(res, i, 2) && wr_lsn_parse(PQgetvalue(res, i, 2), &sl->restart) == 0;
        sl->has_confirmed =
            !PQgetisnull(res, i, 3) && wr_lsn_parse(PQgetvalue(res, i, 3), &sl->confirmed) == 0;
        j->nslots++;
    }
    PQclear(res);
}

static void
lag_after_cb(uv_work_t *req, int status)
{
    mt_lag_job_t *j = req->data;
    sup_metrics_t *m = j->m;

    m->lag_busy = false;
    if (status != 0) { /* cancelled */
        free(j->slots);
        j->slots = NULL;
        return;
    }
    if (j->rc != 0) {
        m->lag_known = false;
        sup__metrics_error(m->sup, "lag_query");
        if (!m->lag_failing)
            log_warn("cannot read the replication lag error=\"%s\" hint=\"walrelay_lag_bytes "
                     "and walrelay_slot_retained_bytes are left out until it works again\"",
                     j->err);
        m->lag_failing = true;
        free(j->slots);
        j->slots = NULL;
        return;
    }
    if (m->lag_failing)
        log_info("reading the replication lag works again");
    m->lag_failing = false;
    m->lag_known = true;
    m->wal_current = j->current;
    free(m->slots);
    m->slots = j->slots;
    m->nslots = j->nslots;
    j->slots = NULL;
}

static void
lag_start(sup_t *s, int64_t now)
{
    sup_metrics_t *m = s->metrics;
    int rc;

    m->lag_last_ms = now;
    rc = uv_queue_work(&s->loop, &m->job.req, lag_work_cb, lag_after_cb);
    if (rc != 0) {
        log_warn("cannot queue the lag query error=%s", uv_strerror(rc));
        return;
    }
    m->lag_busy = true;
}

void
sup__metrics_summary(sup_t *s, char *buf, size_t len)
{
    size_t counts[PH_COUNT] = {0}, used;
    bool first = true;
    sup_metrics_t *m = s->metrics;
    const char *state = s->stopping   ? "stopping"
                        : s->paused   ? "paused"
                        : s->degraded ? "degraded"
                                      : "running";

    for (size_t i = 0; i < s->ntables; i++)
        if ((int)s->tables[i]->phase >= 0 && s->tables[i]->phase < PH_COUNT)
            counts[s->tables[i]->phase]++;
    snprintf(buf, len, "%s; apply %s; %zu table%s", state,
             m && m->apply_streaming ? "streaming" : "not streaming", s->ntables,
             s->ntables == 1 ? "" : "s");
    used = strlen(buf);
    for (int p = 0; p < PH_COUNT && used + 1 < len; p++) {
        if (!counts[p])
            continue;
        snprintf(buf + used, len - used, "%s %zu %s", first ? ":" : ",", counts[p],
                 phase_name((wr_phase_t)p));
        first = false;
        used = strlen(buf);
    }
}

void
sup__metrics_tick(sup_t *s, int64_t now)
{
    sup_metrics_t *m = s->metrics;
    char summary[512];

    if (!m)
        return;
    if (!s->stopping && !m->lag_busy && now - m->lag_last_ms >= s->cfg.metrics_lag_interval_ms)
        lag_start(s, now);
    sup__metrics_summary(s, summary, sizeof(summary));
    if (strcmp(summary, m->status) != 0) {
        snprintf(m->status, sizeof(m->status), "%s", summary);
        sup__notify_status(s, summary);
    }
}

/* ---- readiness ---- */

static void why_add(char *why, size_t len, const char *fmt, ...) WR_PRINTF(3, 4);

static void
why_add(char *why, size_t len, const char *fmt, ...)
{
    size_t used = strlen(why);
    va_list ap;

    if (used + 1 >= len)
        return;
    va_start(ap, fmt);
    vsnprintf(why + used, len - used, fmt, ap);
    va_end(ap);
}

bool
sup__ready(sup_t *s, char *why, size_t len)
{
    sup_metrics_t *m = s->metrics;
    size_t shown = 0, notready = 0;

    why[0] = '\0';
    if (s->stopping)
        why_add(why, len, "the pipeline is stopping\n");
    else if (s->paused)
        why_add(why, len, "the pipeline is paused (walrelay resume starts it again)\n");
    else if (s->degraded)
        why_add(why, len, "the pipeline is degraded: %s\n", s->message);
    if (!m || !m->apply_streaming)
        why_add(why, len, "the apply worker is not streaming\n");
    for (size_t i = 0; i < s->ntables; i++) {
        const sup_table_t *t = s->tables[i];
        if (t->phase == PH_READY)
            continue;
        notready++;
        if (shown++ >= 20)
            continue;
        if (t->phase == PH_ERRORED)
            why_add(why, len, "table %s.%s is errored (%s); see walrelay status\n", t->nsp, t->name,
                    t->err_kind[0] ? t->err_kind : "?");
        else
            why_add(why, len, "table %s.%s is in phase %s\n", t->nsp, t->name,
                    phase_name(t->phase));
    }
    if (shown > 20)
        why_add(why, len, "... and %zu more tables not ready\n", notready - 20);
    return why[0] == '\0';
}

/* ---- the exposition ---- */

/* A label value: backslash, double quote and newline escaped. */
static void
mt_esc(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            fputs("\\\\", f);
        else if (*v == '"')
            fputs("\\\"", f);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

static void
mt_head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP walrelay_%s %s\n# TYPE walrelay_%s %s\n", name, help, name, type);
}

/* "walrelay_NAME{pipeline="P"" (the caller adds more labels and the closing brace). */
static void
mt_series(FILE *f, sup_t *s, const char *name)
{
    fprintf(f, "walrelay_%s{pipeline=\"", name);
    mt_esc(f, s->cfg.pipeline_name);
    fputc('"', f);
}

static void
mt_label(FILE *f, const char *key, const char *value)
{
    fprintf(f, ",%s=\"", key);
    mt_esc(f, value);
    fputc('"', f);
}

static void
mt_hist(FILE *f, sup_t *s, const char *name, const char *role, const ipc_hist_t *h)
{
    uint64_t cum = 0;
    char bname[96];

    snprintf(bname, sizeof(bname), "%s_bucket", name);
    for (int i = 0; i < IPC_HIST_NCOUNTS; i++) {
        char le[32];
        cum += h->counts[i];
        if (i < IPC_HIST_NBOUNDS)
            snprintf(le, sizeof(le), "%g", (double)ipc_hist_bounds_us[i] / 1e6);
        else
            snprintf(le, sizeof(le), "+Inf");
        mt_series(f, s, bname);
        mt_label(f, "role", role);
        mt_label(f, "le", le);
        fprintf(f, "} %" PRIu64 "\n", cum);
    }
    snprintf(bname, sizeof(bname), "%s_sum", name);
    mt_series(f, s, bname);
    mt_label(f, "role", role);
    fprintf(f, "} %.6f\n", (double)h->sum_us / 1e6);
    snprintf(bname, sizeof(bname), "%s_count", name);
    mt_series(f, s, bname);
    mt_label(f, "role", role);
    fprintf(f, "} %" PRIu64 "\n", cum);
}

/* Resident set size of pid in bytes (from /proc), 0 if gone. */
static uint64_t
mt_rss(int64_t pid)
{
    char path[64];
    unsigned long size = 0, resident = 0;
    FILE *f;
    long page = sysconf(_SC_PAGESIZE);

    snprintf(path, sizeof(path), "/proc/%lld/statm", (long long)pid);
    f = fopen(path, "re");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (uint64_t)resident * (uint64_t)(page > 0 ? page : 4096);
}

static int64_t
mt_live_pid(const sup_worker_t *w)
{
    return w->p && !w->p->exited ? w->p->pid : 0;
}

static void
mt_render(sup_t *s, FILE *f)
{
    sup_metrics_t *m = s->metrics;
    const char *state = s->stopping   ? "stopping"
                        : s->paused   ? "paused"
                        : s->degraded ? "degraded"
                                      : "running";
    static const char *const states[] = {"running", "paused", "degraded", "stopping"};
    size_t phases[PH_COUNT] = {0};
    int64_t now_ms = wr_now_ms();
    uint64_t rss_sync = 0;

    /* every table of the publication has its series, also before its first change */
    for (size_t i = 0; i < s->ntables; i++) {
        if (!mt_table(m, s->tables[i]->relid))
            log_warn("out of memory listing tables for metrics");
        if ((int)s->tables[i]->phase >= 0 && s->tables[i]->phase < PH_COUNT)
            phases[s->tables[i]->phase]++;
    }

    mt_head(f, "build_info", "gauge", "walrelay's version (always 1).");
    mt_series(f, s, "build_info");
    mt_label(f, "version", WR_VERSION);
    fputs("} 1\n", f);
    mt_head(f, "start_time_seconds", "gauge",
            "When this walrelay run started, in seconds since the Unix epoch.");
    mt_series(f, s, "start_time_seconds");
    fprintf(f, "} %.3f\n", (double)m->start_wall_ms / 1000.0);
    mt_head(f, "up", "gauge",
            "1 while the apply worker streams changes and the pipeline is neither paused, "
            "degraded nor stopping, else 0.");
    mt_series(f, s, "up");
    fprintf(f, "} %d\n", m->apply_streaming && !s->stopping && !s->paused && !s->degraded ? 1 : 0);
    mt_head(f, "pipeline_state", "gauge",
            "1 for the pipeline's state (running, paused, degraded, stopping), 0 for the "
            "others.");
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        mt_series(f, s, "pipeline_state");
        mt_label(f, "state", states[i]);
        fprintf(f, "} %d\n", strcmp(states[i], state) == 0);
    }

    /* lag */
    mt_head(f, "lag_bytes", "gauge",
            "Bytes of WAL between the source's current position and the apply slot's confirmed "
            "flush position (left out while the source cannot be read).");
    for (size_t i = 0; m->lag_known && i < m->nslots; i++) {
        const mt_slot_t *sl = &m->slots[i];
        if (strcmp(sl->name, m->apply_slot) == 0 && sl->has_confirmed) {
            mt_series(f, s, "lag_bytes");
            fprintf(f, "} %" PRIu64 "\n",
                    m->wal_current > sl->confirmed ? m->wal_current - sl->confirmed : 0);
        }
    }
    mt_head(f, "slot_retained_bytes", "gauge",
            "Bytes of WAL the source keeps for each replication slot of the pipeline: its "
            "current position minus the slot's restart_lsn.");
    if (m->lag_known) {
        for (size_t i = 0; i < m->nslots; i++) {
            const mt_slot_t *sl = &m->slots[i];
            if (!sl->has_restart)
                continue;
            mt_series(f, s, "slot_retained_bytes");
            mt_label(f, "slot", sl->name);
            fprintf(f, "} %" PRIu64 "\n",
                    m->wal_current > sl->restart ? m->wal_current - sl->restart : 0);
        }
    }
    mt_head(f, "lag_seconds", "gauge",
            "Seconds between now and the commit time of the last source transaction the "
            "apply worker processed; 0 while everything it received is durable.");
    if ((m->apply_streaming && m->caught_up) || m->last_commit_ts > 0) {
        double lag = 0;
        if (!(m->apply_streaming && m->caught_up)) {
            struct timeval tv;
            gettimeofday(&tv, NULL);
            lag = ((double)tv.tv_sec * 1e6 + (double)tv.tv_usec - (double)m->last_commit_ts) / 1e6;
            if (lag < 0)
                lag = 0;
        }
        mt_series(f, s, "lag_seconds");
        fprintf(f, "} %.3f\n", lag);
    }

    /* throughput */
    mt_head(f, "events_total", "counter",
            "Changes applied to the destination, by source table and operation (by the apply "
            "worker, and by sync workers during a table's catch-up).");
    for (size_t i = 0; i < m->ntabs; i++) {
        for (int k = 0; k < IPC_NOPS; k++) {
            mt_series(f, s, "events_total");
            mt_label(f, "table", m->tabs[i].label);
            mt_label(f, "op", mt_op_names[k]);
            fprintf(f, "} %" PRIu64 "\n", m->tabs[i].events[k]);
        }
    }
#define MT_PER_ROLE(name, type, help, arr)                                                         \
    do {                                                                                           \
        mt_head(f, name, type, help);                                                              \
        for (int r_ = 0; r_ < MT_NROLES; r_++) {                                                   \
            mt_series(f, s, name);                                                                 \
            mt_label(f, "role", mt_role_names[r_]);                                                \
            fprintf(f, "} %" PRIu64 "\n", (arr)[r_]);                                              \
        }                                                                                          \
    } while (0)
    MT_PER_ROLE("transactions_total", "counter",
                "Source transactions whose changes were applied to the destination.",
                m->transactions);
    MT_PER_ROLE("bytes_received_total", "counter",
                "Bytes of replication stream and COPY data received from the source.", m->bytes);
    MT_PER_ROLE("batches_total", "counter",
                "Destination transactions committed (apply batches, copy batches, catch-up "
                "transactions).",
                m->batches);
    mt_head(f, "batch_seconds", "histogram",
            "Time from a destination batch's first write to its commit.");
    for (int r = 0; r < MT_NROLES; r++)
        mt_hist(f, s, "batch_seconds", mt_role_names[r], &m->batch[r]);
    mt_head(f, "destination_commit_seconds", "histogram",
            "Time the destination took to commit a batch.");
    for (int r = 0; r < MT_NROLES; r++)
        mt_hist(f, s, "destination_commit_seconds", mt_role_names[r], &m->commit[r]);

    /* copy */
    mt_head(f, "copy_rows_total", "counter",
            "Rows copied into the destination by the initial copy (a copy done again counts "
            "again).");
    for (size_t i = 0; i < m->ntabs; i++) {
        mt_series(f, s, "copy_rows_total");
        mt_label(f, "table", m->tabs[i].label);
        fprintf(f, "} %" PRIu64 "\n", m->tabs[i].copy_rows);
    }
    mt_head(f, "copy_seconds", "gauge",
            "Duration of the table's last copy (of the one under way: so far), for copies "
            "started while this walrelay run runs.");
    for (size_t i = 0; i < m->ntabs; i++) {
        const mt_table_t *e = &m->tabs[i];
        if (!e->copy_start_ms)
            continue;
        mt_series(f, s, "copy_seconds");
        mt_label(f, "table", e->label);
        fprintf(f, "} %.3f\n",
                (double)((e->copy_end_ms ? e->copy_end_ms : now_ms) - e->copy_start_ms) / 1000.0);
    }
    mt_head(f, "tables", "gauge", "Tables of the publication in each phase.");
    for (int p = 0; p < PH_COUNT; p++) {
        mt_series(f, s, "tables");
        mt_label(f, "phase", phase_name((wr_phase_t)p));
        fprintf(f, "} %zu\n", phases[p]);
    }

    /* health */
    MT_PER_ROLE("worker_restarts_total", "counter",
                "Times a worker process was started again (after a failure, a kill, a pause or "
                "a reload).",
                m->restarts);
    mt_head(f, "errors_total", "counter",
            "Errors by kind: a table's error kind when it became errored, worker_exit (a worker "
            "failed or was killed), protocol (a bad message from a worker), lag_query, "
            "slot_lost.");
    for (size_t i = 0; i < m->nkinds; i++) {
        mt_series(f, s, "errors_total");
        mt_label(f, "kind", m->kinds[i].kind);
        fprintf(f, "} %" PRIu64 "\n", m->kinds[i].n);
    }
    MT_PER_ROLE("status_updates_total", "counter",
                "Standby status updates (feedback) sent to the source's walsender.",
                m->status_updates);
#undef MT_PER_ROLE
    mt_head(f, "resident_memory_bytes", "gauge",
            "Resident memory of walrelay's processes by role (sync: all sync workers).");
    for (size_t i = 0; i < s->ntables; i++) {
        int64_t pid = mt_live_pid(&s->tables[i]->sync);
        if (pid > 0)
            rss_sync += mt_rss(pid);
    }
    {
        const char *roles[] = {"supervisor", "apply", "sync"};
        int64_t apid = mt_live_pid(&s->apply);
        uint64_t vals[] = {mt_rss((int64_t)getpid()), apid > 0 ? mt_rss(apid) : 0, rss_sync};
        for (int r = 0; r < 3; r++) {
            mt_series(f, s, "resident_memory_bytes");
            mt_label(f, "role", roles[r]);
            fprintf(f, "} %" PRIu64 "\n", vals[r]);
        }
    }
}

int
sup__metrics_render(sup_t *s, char **text, size_t *len)
{
    FILE *f;

    *text = NULL;
    *len = 0;
    if (!s->metrics)
        return WR_EINVAL;
    f = open_memstream(text, len);
    if (!f)
        return WR_ENOMEM;
    mt_render(s, f);
    if (fclose(f) != 0 || !*text) {
        free(*text);
        *text = NULL;
        return WR_ENOMEM;
    }
    return 0;
}

int
sup_metrics_text(sup_t *s, char **text, size_t *len, wr_err_t *err)
{
    int rc = sup__metrics_render(s, text, len);
    if (rc != 0)
        return wr_err_set(err, rc, "cannot build the metrics: out of memory");
    return 0;
}
