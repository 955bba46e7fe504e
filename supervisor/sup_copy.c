/*
 * sup_copy.c - the supervisor's part of a table's parallel copy (issue 11): the copy plan
 * in the state store, and the copy's snapshot held open so that a sync worker started
 * again after a crash copies only the ranges that were not committed.
 *
 * NOTES: runs in the `walrelay run` process, on its libuv loop; the connection that holds
 * a snapshot is made in libuv's thread pool (libpq blocks). It answers three requests of
 * a sync worker (proto/ipc.h):
 *   copy_plan        persists the plan (state.h put_copy_plan), then, if the worker names
 *                    the snapshot it exported, imports it on a connection of its own
 *                    (BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT) and
 *                    exports it again (pg_export_snapshot): the copy of that snapshot
 *                    lives as long as this connection's transaction, whatever happens to
 *                    the worker. The ack carries the name of the snapshot held.
 *   copy_plan_get    the stored plan and the name of the snapshot held ("" if none).
 *   copy_range_done  marks a range committed (state.h copy_range_done).
 * A held snapshot is let go (the connection closed) as soon as the table is in any phase
 * but DataSync (checked every tick: FinishedCopy, Errored, Init after a resync, a removed
 * table), when the worker sends an empty plan (it starts over), when the sync worker exits
 * with an exit code (it ended its copy itself and dropped its slot: only a worker killed
 * by a signal leaves a copy to resume), or when the supervisor stops; the plan goes from the store with it (or, after a restart of the supervisor, when
 * the worker replaces it or the table is removed: without the snapshot it means nothing).
 * Persists: the copy plan only.
 * A store without the copy plan ops (a plugin store): the plan is not kept, the ack and
 * copy_plan_get say "" and no ranges, and a crash mid-copy copies the table again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/repl.h"
#include "../common/state.h"
#include "sup_int.h"

/* A thread-pool job that imports a worker's snapshot and exports it again. */
typedef struct sup_hold_job_s {
    uv_work_t req;
    sup_t *sup;
    uint32_t relid;
    int64_t pid;  /* the worker that asked: its ack goes only to that process */
    uint32_t ack; /* its request number */
    char *conninfo;
    char app[96];
    char snapshot[64]; /* the worker's */
    PGconn *conn;      /* the holding connection, on success */
    char held[64];     /* pg_export_snapshot() of it */
    int rc;
    wr_err_t err;
} sup_hold_job_t;

static void
send_ack(sup_proc_t *p, uint32_t req, bool ok, const char *msg)
{
    ipc_msg_t a;
    memset(&a, 0, sizeof(a));
    a.type = IPC_ACK;
    a.u.ack.req = req;
    a.u.ack.ok = ok;
    a.u.ack.message = (char *)(msg ? msg : "");
    sup__proc_send(p, &a);
}

/* Lets the table's held snapshot go (closes its connection). */
void
sup__copy_release(sup_table_t *t, const char *why)
{
    if (!t->hold)
        return;
    PQfinish(t->hold);
    t->hold = NULL;
    log_info("copy snapshot released table=%s.%s relid=%u snapshot=%s reason=\"%s\"", t->nsp,
             t->name, t->relid, t->held, why);
    t->held[0] = '\0';
}

/* Every tick: a held snapshot and a plan are only for a copy in progress. */
void
sup__copy_tick(sup_t *s)
{
    for (size_t i = 0; i < s->ntables; i++) {
        sup_table_t *t = s->tables[i];
        wr_err_t err;

        if (t->phase == PH_DATASYNC && !t->removing)
            continue;
        if (t->hold)
            sup__copy_release(t, t->removing ? "table removed" : phase_name(t->phase));
        if (t->plan_stored && !t->removing && s->st->ops->put_copy_plan) {
            wr_err_clear(&err);
            if (s->st->ops->put_copy_plan(s->st, t->relid, 0, NULL, 0, &err) != 0)
                log_err(LOG_LVL_WARN, "forgetting a copy plan", &err);
        }
        t->plan_stored = false;
    }
}

/* A snapshot name as PostgreSQL makes them: hex digits and dashes. */
static bool
snapshot_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F') || s[i] == '-'))
            return false;
    return true;
}

static void
hold_work_cb(uv_work_t *req)
{
    sup_hold_job_t *j = req->data;
    char sql[128];
    PGresult *r;

    wr_err_clear(&j->err);
    j->rc = repl_connect(j->conninfo, false, j->app, &j->conn, &j->err);
    if (j->rc == 0)
        j->rc = repl_exec(j->conn, "SET idle_in_transaction_session_timeout = 0", &j->err);
    if (j->rc == 0)
        j->rc = repl_exec(j->conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", &j->err);
    if (j->rc == 0) {
        /* snapshot_name_ok: nothing in it needs quoting */
        snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", j->snapshot);
        j->rc = repl_exec(j->conn, sql, &j->err);
    }
    if (j->rc == 0) {
        r = PQexec(j->conn, "SELECT pg_catalog.pg_export_snapshot()");
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            snprintf(j->held, sizeof(j->held), "%s", PQgetvalue(r, 0, 0));
        else
            j->rc = wr_err_set(&j->err, WR_ECONN, "exporting the copy's snapshot again: %s",
                               PQerrorMessage(j->conn));
        PQclear(r);
    }
    if (j->rc != 0 && j->conn) {
        PQfinish(j->conn);
        j->conn = NULL;
    }
}

static void
hold_after_cb(uv_work_t *req, int status)
{
    sup_hold_job_t *j = req->data;
    sup_t *s = j->sup;
    sup_table_t *t = sup__find_table(s, j->relid);
    bool keep = status == 0 && j->rc == 0 && t && t->phase == PH_DATASYNC && !t->removing &&
                !s->stopping && !s->shut;

    if (j->rc != 0)
        log_warn("cannot hold the copy's snapshot, a crash of the copy will copy the table "
                 "again relid=%u error=\"%s\"",
                 j->relid, j->err.msg);
    if (keep) {
        sup__copy_release(t, "replaced");
        t->hold = j->conn;
        j->conn = NULL;
        snprintf(t->held, sizeof(t->held), "%s", j->held);
        log_info("copy snapshot held table=%s.%s relid=%u snapshot=%s worker_snapshot=%s", t->nsp,
                 t->name, t->relid, t->held, j->snapshot);
    }
    if (j->conn)
        PQfinish(j->conn);
    if (t && t->sync.p && t->sync.p->pid == j->pid && sup__proc_can_talk(t->sync.p))
        send_ack(t->sync.p, j->ack, true, keep ? t->held : "");
    free(j->conninfo);
    free(j);
}

static bool
copy_request_ok(sup_t *s, sup_proc_t *p, uint32_t req, uint32_t relid, sup_table_t **out)
{
    char msg[300];
    sup_table_t *t = sup__find_table(s, relid);

    *out = t;
    if (p->w->is_apply || relid != p->w->relid || !t) {
        snprintf(msg, sizeof(msg), "the %s worker cannot plan the copy of relid %u",
                 p->w->is_apply ? "apply" : p->w->name, relid);
        log_warn("copy request refused worker=%s reason=\"%s\"", p->w->name, msg);
        send_ack(p, req, false, msg);
        return false;
    }
    return true;
}

static void
on_copy_plan(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    uint32_t req = m->u.copy_plan.req, n = m->u.copy_plan.n;
    const char *snap = m->u.copy_plan.snapshot ? m->u.copy_plan.snapshot : "";
    state_copy_range_t *r = NULL;
    sup_table_t *t;
    wr_err_t err;
    char msg[600];

    if (!copy_request_ok(s, p, req, m->u.copy_plan.relid, &t))
        return;
    if (t->phase != PH_DATASYNC) {
        snprintf(msg, sizeof(msg), "table \"%s.%s\" is in phase %s, not datasync", t->nsp, t->name,
                 phase_name(t->phase));
        send_ack(p, req, false, msg);
        return;
    }
    if (snap[0] && !snapshot_name_ok(snap)) {
        snprintf(msg, sizeof(msg), "invalid snapshot name for table \"%s.%s\"", t->nsp, t->name);
        send_ack(p, req, false, msg);
        return;
    }
    sup__copy_release(t, n == 0 ? "copy started over" : "new plan");
    wr_err_clear(&err);
    if (s->st->ops->put_copy_plan) {
        if (n > 0 && !(r = calloc(n, sizeof(*r)))) {
            send_ack(p, req, false, "out of memory");
            return;
        }
        for (uint32_t i = 0; i < n; i++) {
            r[i].leaf = m->u.copy_plan.ranges[i].leaf;
            r[i].first_page = m->u.copy_plan.ranges[i].first_page;
            r[i].end_page = m->u.copy_plan.ranges[i].end_page;
            r[i].rows = m->u.copy_plan.ranges[i].rows;
            r[i].done = m->u.copy_plan.ranges[i].done;
        }
        int rc = s->st->ops->put_copy_plan(s->st, t->relid, m->u.copy_plan.lsn, r, n, &err);
        free(r);
        if (rc != 0) {
            log_err(LOG_LVL_ERROR, "persisting a copy plan", &err);
            snprintf(msg, sizeof(msg), "cannot persist the copy plan: %.400s", err.msg);
            send_ack(p, req, false, msg);
            return;
        }
        t->plan_stored = n > 0;
        if (n > 0)
            log_info("copy plan stored table=%s.%s relid=%u ranges=%u lsn=" WR_LSN_FMT, t->nsp,
                     t->name, t->relid, n, WR_LSN_ARGS(m->u.copy_plan.lsn));
    }
    if (!snap[0] || n == 0 || !s->st->ops->put_copy_plan) {
        send_ack(p, req, true, "");
        return;
    }
    sup_hold_job_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->conninfo = wr_strdup(s->cfg.source_conninfo))) {
        free(j);
        send_ack(p, req, true, "");
        return;
    }
    j->req.data = j;
    j->sup = s;
    j->relid = t->relid;
    j->pid = p->pid;
    j->ack = req;
    snprintf(j->app, sizeof(j->app), "walrelay_%s_hold_%u", s->cfg.pipeline_name, t->relid);
    snprintf(j->snapshot, sizeof(j->snapshot), "%s", snap);
    int rc = uv_queue_work(&s->loop, &j->req, hold_work_cb, hold_after_cb);
    if (rc != 0) {
        log_warn("cannot queue holding a copy snapshot relid=%u error=%s", t->relid,
                 uv_strerror(rc));
        free(j->conninfo);
        free(j);
        send_ack(p, req, true, "");
    }
}

static void
on_copy_plan_get(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    uint32_t req = m->u.copy_plan_get.req;
    state_copy_range_t *r = NULL;
    ipc_copy_range_t *ir = NULL;
    size_t n = 0;
    wr_lsn_t lsn = 0;
    sup_table_t *t;
    wr_err_t err;
    ipc_msg_t a;

    if (!copy_request_ok(s, p, req, m->u.copy_plan_get.relid, &t))
        return;
    wr_err_clear(&err);
    if (s->st->ops->get_copy_plan &&
        s->st->ops->get_copy_plan(s->st, t->relid, &lsn, &r, &n, &err) != 0) {
        log_err(LOG_LVL_ERROR, "reading a copy plan", &err);
        send_ack(p, req, false, err.msg);
        return;
    }
    if (n > IPC_MAX_COPY_RANGES)
        n = 0; /* never written so (state_check_copy_plan): treated as none */
    if (n > 0 && !(ir = calloc(n, sizeof(*ir)))) {
        free(r);
        send_ack(p, req, false, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        ir[i].leaf = r[i].leaf;
        ir[i].first_page = r[i].first_page;
        ir[i].end_page = r[i].end_page;
        ir[i].rows = r[i].rows;
        ir[i].done = r[i].done;
    }
    free(r);
    memset(&a, 0, sizeof(a));
    a.type = IPC_COPY_PLAN;
    a.u.copy_plan.req = req;
    a.u.copy_plan.relid = t->relid;
    a.u.copy_plan.lsn = lsn;
    a.u.copy_plan.snapshot = t->hold && PQstatus(t->hold) == CONNECTION_OK ? t->held : "";
    a.u.copy_plan.n = (uint32_t)n;
    a.u.copy_plan.ranges = ir;
    sup__proc_send(p, &a);
    free(ir);
}

static void
on_copy_range_done(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    uint32_t req = m->u.copy_range_done.req;
    sup_table_t *t;
    wr_err_t err;
    char msg[600];

    if (!copy_request_ok(s, p, req, m->u.copy_range_done.relid, &t))
        return;
    wr_err_clear(&err);
    if (s->st->ops->copy_range_done &&
        s->st->ops->copy_range_done(s->st, t->relid, m->u.copy_range_done.part,
                                    m->u.copy_range_done.rows, &err) != 0) {
        log_err(LOG_LVL_ERROR, "persisting a copied range", &err);
        snprintf(msg, sizeof(msg), "cannot persist the copied range: %.400s", err.msg);
        send_ack(p, req, false, msg);
        return;
    }
    send_ack(p, req, true, "");
}

bool
sup__copy_on_message(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    switch (m->type) {
    case IPC_COPY_PLAN:
        on_copy_plan(s, p, m);
        return true;
    case IPC_COPY_PLAN_GET:
        on_copy_plan_get(s, p, m);
        return true;
    case IPC_COPY_RANGE_DONE:
        on_copy_range_done(s, p, m);
        return true;
    default:
        return false;
    }
}
