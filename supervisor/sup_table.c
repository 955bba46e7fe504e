/*
 * sup_table.c - the supervisor's table layer: the table list, phases and their
 * persistence, retry / resync mechanics, the publication refresh (in libuv's thread pool:
 * libpq blocks), dropped slots, a lost apply slot, and reading the state back at start.
 *
 * NOTES: runs in the `walrelay run` process, on its libuv loop. Owns the sup_table_t list
 * (sorted by relid) and is the only code that writes the state store (state.h: DIR/state.db
 * or the PostgreSQL store): every phase change is persisted here, then relayed to the
 * workers (persist, then act). At start it reconciles the stored tables with the
 * publication, reads back each table's mapping and newest schema version (a cache,
 * written through by on_schema), the progress and the pipeline flags. While running it
 * watches the store's lease (sup__lease_tick): a store that lost it to another supervisor
 * stops the pipeline (exit code 2), so one pipeline never runs twice.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/failpoint.h"
#include "../common/log.h"
#include "../common/repl.h"
#include "../common/state.h"
#include "sup_int.h"
#include "../destinations/destination.h"
#include "../destinations/registry.h"

static int sup_add_tables(sup_t *s, const sup_pub_table_t *const *pub, size_t n, wr_err_t *err);
static bool dest_name_taken(const sup_t *s, const sup_table_t *t, const char *name);
static int sup_assign_mapping(sup_t *s, sup_table_t *t, wr_err_t *err);

/* ---- tables ---- */

sup_table_t *
sup__find_table(sup_t *s, uint32_t relid)
{
    size_t lo = 0, hi = s->ntables;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->tables[mid]->relid == relid)
            return s->tables[mid];
        if (s->tables[mid]->relid < relid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* A table entry from its state row (not inserted anywhere); NULL on OOM. */
static sup_table_t *
table_new(sup_t *s, const state_table_t *row)
{
    sup_table_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->relid = row->relid;
    snprintf(t->nsp, sizeof(t->nsp), "%s", row->nsp);
    snprintf(t->name, sizeof(t->name), "%s", row->name);
    t->phase = row->phase;
    t->lsn = row->lsn;
    t->sync.sup = s;
    t->sync.relid = t->relid;
    t->sync.table = t;
    t->sync.failures = row->attempts;
    snprintf(t->sync.name, sizeof(t->sync.name), "sync-%u", t->relid);
    if (t->phase == PH_ERRORED) {
        snprintf(t->err_kind, sizeof(t->err_kind), "%s", row->err_kind);
        t->errored_at = wr_now_ms(); /* an automatic retry waits the full delay after a start */
    }
    return t;
}

/* Inserts t in relid order. Returns 0 or WR_ENOMEM. */
static int
table_insert(sup_t *s, sup_table_t *t)
{
    sup_table_t **tabs = realloc(s->tables, (s->ntables + 1) * sizeof(*tabs));
    size_t i = 0;
    if (!tabs)
        return WR_ENOMEM;
    s->tables = tabs;
    while (i < s->ntables && s->tables[i]->relid < t->relid)
        i++;
    memmove(&s->tables[i + 1], &s->tables[i], (s->ntables - i) * sizeof(*tabs));
    s->tables[i] = t;
    s->ntables++;
    return 0;
}

void
sup__table_free(sup_table_t *t)
{
    if (t) {
        sup__copy_release(t, "supervisor exiting or table removed");
        wr_schema_free(t->schema);
        free(t);
    }
}

static void
table_timer_closed_cb(uv_handle_t *h)
{
    sup_worker_t *w = h->data;
    sup__table_free(w->table);
}

/* Takes t out of the list and frees it (after its backoff timer is closed). The caller
 * made sure no process of it is left. */
static void
table_unlink_free(sup_t *s, sup_table_t *t)
{
    for (size_t i = 0; i < s->ntables; i++) {
        if (s->tables[i] == t) {
            memmove(&s->tables[i], &s->tables[i + 1], (s->ntables - i - 1) * sizeof(*s->tables));
            s->ntables--;
            break;
        }
    }
    if (t->sync.timer_ok) {
        uv_timer_stop(&t->sync.timer);
        t->sync.timer_ok = false;
        uv_close((uv_handle_t *)&t->sync.timer, table_timer_closed_cb);
        return;
    }
    sup__table_free(t);
}

bool
sup__proc_can_talk(const sup_proc_t *p)
{
    return p && p->hello && !p->chan_done;
}

void
sup__proc_send(sup_proc_t *p, const ipc_msg_t *m)
{
    if (!p || p->chan_done)
        return;
    if (sup_stream_send((uv_stream_t *)&p->chan, m) != 0)
        log_warn("cannot send to worker worker=%s type=%s", p->w ? p->w->name : "?",
                 ipc_type_name(m->type));
}

void
sup__proc_send_error(sup_proc_t *p, const char *msg)
{
    ipc_msg_t e;
    memset(&e, 0, sizeof(e));
    e.type = IPC_ERROR;
    e.u.error.message = (char *)msg;
    sup__proc_send(p, &e);
}

/* table_state to the apply worker and the table's sync worker, except `except`. */
void
sup__broadcast_table_state(sup_t *s, const sup_table_t *t, const sup_proc_t *except)
{
    ipc_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = IPC_TABLE_STATE;
    m.u.table_state.relid = t->relid;
    m.u.table_state.phase = t->phase;
    m.u.table_state.lsn = t->lsn;
    m.u.table_state.dest_name = (char *)t->dest_name;
    if (sup__proc_can_talk(s->apply.p) && s->apply.p != except)
        sup__proc_send(s->apply.p, &m);
    if (sup__proc_can_talk(t->sync.p) && t->sync.p != except)
        sup__proc_send(t->sync.p, &m);
}

void
sup__persist_attempts(sup_t *s, sup_table_t *t)
{
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->set_attempts(s->st, t->relid, t->sync.failures, &err) != 0)
        log_err(LOG_LVL_ERROR, "persisting the failure count", &err);
}

/* Persists Errored for t (if not already), then tells the workers. */
void
sup__table_set_errored(sup_t *s, sup_table_t *t, const char *kind, const char *msg,
                       const char *hint)
{
    if (t->phase == PH_ERRORED)
        return;
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->set_phase(s->st, t->relid, PH_ERRORED, t->lsn, kind, msg, hint, &err) != 0) {
        log_err(LOG_LVL_ERROR, "persisting the errored phase", &err);
        return;
    }
    log_error("table errored table=%s.%s relid=%u kind=%s message=\"%s\"", t->nsp, t->name,
              t->relid, kind, msg);
    sup__metrics_phase(s, t, PH_ERRORED, kind);
    t->phase = PH_ERRORED;
    snprintf(t->err_kind, sizeof(t->err_kind), "%s", kind);
    t->errored_at = wr_now_ms();
    t->exhausted_logged = false;
    sup__broadcast_table_state(s, t, NULL);
}

/*
 * A table in SyncWait(X) or Catchup(L) whose sync worker is gone (exited, killed, stopped,
 * or not started yet after a restart of walrelay run) goes back to FinishedCopy(X or L),
 * persisted and told to the apply worker (issue 12, defect 8). The apply worker grants
 * catch-up only to a table in SyncWait, which only its running sync worker asks for, and
 * stops waiting on one that leaves Catchup: it never waits on a worker that does not
 * exist, and WAL does not pile up behind an unrelated copy. The handoff stays exact: the
 * next sync worker asks for SyncWait again, the apply worker grants Catchup at its
 * position then (never below L), and the sync slot covers everything from its confirmed
 * position on.
 */
void
sup__table_handoff_paused(sup_t *s, sup_table_t *t)
{
    wr_err_t err;
    wr_phase_t was = t->phase;

    if ((was != PH_SYNCWAIT && was != PH_CATCHUP) || t->sync.p || t->removing)
        return;
    wr_err_clear(&err);
    if (s->st->ops->set_phase(s->st, t->relid, PH_FINISHEDCOPY, t->lsn, NULL, NULL, NULL, &err) !=
        0) {
        log_err(LOG_LVL_ERROR, "persisting finishedcopy for a handoff without its worker", &err);
        return;
    }
    FAILPOINT("sup.handoff_paused");
    t->phase = PH_FINISHEDCOPY;
    log_info("handoff paused until the table's sync worker runs again table=%s.%s relid=%u "
             "was=%s lsn=" WR_LSN_FMT,
             t->nsp, t->name, t->relid, phase_name(was), WR_LSN_ARGS(t->lsn));
    sup__broadcast_table_state(s, t, NULL);
}

/* ---- lifecycle: retry, resync, pause, reload, publication changes, a lost slot ---- */

const char *
sup__table_label(const sup_table_t *t, char *buf, size_t len)
{
    snprintf(buf, len, "%s.%s", t->nsp, t->name);
    return buf;
}

int
sup__refuse_stopping(wr_err_t *err)
{
    return wr_err_set(err, WR_EINVAL, "the pipeline is stopping");
}

/* The table named spec: "nsp.name", or "name" for a table in public. NULL with err set
 * (listing the pipeline's tables) when there is none. */
sup_table_t *
sup__table_lookup(sup_t *s, const char *spec, wr_err_t *err)
{
    char full[300], list[640];
    size_t used = 0;

    if (!spec || !spec[0]) {
        wr_err_set(err, WR_EINVAL, "no table given");
        wr_err_hint(err, "name a table as schema.name (or name for a table in public)");
        return NULL;
    }
    for (size_t i = 0; i < s->ntables; i++) {
        sup_table_t *t = s->tables[i];
        if (!t->removing && strcmp(sup__table_label(t, full, sizeof(full)), spec) == 0)
            return t;
    }
    if (!strchr(spec, '.')) {
        for (size_t i = 0; i < s->ntables; i++) {
            sup_table_t *t = s->tables[i];
            if (!t->removing && strcmp(t->nsp, "public") == 0 && strcmp(t->name, spec) == 0)
                return t;
        }
    }
    list[0] = '\0';
    for (size_t i = 0; i < s->ntables && used < sizeof(list); i++) {
        sup_table_t *t = s->tables[i];
        int n;
        if (t->removing)
            continue;
        if (used + strlen(t->nsp) + strlen(t->name) + 8 > sizeof(list)) {
            snprintf(list + used, sizeof(list) - used, ", ...");
            break;
        }
        n = snprintf(list + used, sizeof(list) - used, "%s%s.%s", used ? ", " : "", t->nsp,
                     t->name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    wr_err_set(err, WR_EINVAL, "unknown table \"%s\"; the pipeline replicates: %s", spec,
               list[0] ? list : "no tables");
    wr_err_hint(err, "name a table as schema.name (or name for a table in public)");
    return NULL;
}

/* Persists phase for t as an operator's decision and tells the workers. */
static int
table_force_phase(sup_t *s, sup_table_t *t, wr_phase_t phase, wr_lsn_t lsn, wr_err_t *err)
{
    if (s->st->ops->set_phase(s->st, t->relid, phase, lsn, NULL, NULL, NULL, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    t->phase = phase;
    t->lsn = lsn;
    t->err_kind[0] = '\0';
    if (phase == PH_INIT)
        t->init_unacked = sup__proc_can_talk(s->apply.p); /* its copy waits for ["table_ack"] */
    sup__broadcast_table_state(s, t, NULL);
    return 0;
}

static void
table_reset_failures(sup_t *s, sup_table_t *t)
{
    if (t->sync.state == W_FAILED)
        t->sync.state = W_IDLE;
    if (t->sync.failures > 0) {
        t->sync.failures = 0;
        sup__persist_attempts(s, t);
    }
    t->exhausted_logged = false;
}

/* ---- publication membership (issue 12) ----
 *
 * ALTER PUBLICATION ... DROP TABLE t, then ADD TABLE t, between two reads of the
 * publication (or while the supervisor was down): the changes of t made in between were
 * never published, yet t would look as synchronised as before. Each read gives the
 * table's membership record (sup_pub_table_t.member, a catalog oid that such a drop and
 * add renews); it is kept in the state store as the flag "pubmember_<relid>" (flags need
 * no new table, so every store, plugins included, keeps it). A record that changed sends
 * the table back to Init: it is copied again, as for walrelay resync. */

static void
member_flag_name(const sup_table_t *t, char *buf, size_t len)
{
    snprintf(buf, len, "pubmember_%u", t->relid);
}

static int
member_record(sup_t *s, const sup_table_t *t, int64_t member, wr_err_t *err)
{
    char name[64];

    member_flag_name(t, name, sizeof(name));
    return s->st->ops->set_flag(s->st, name, member, err);
}

/*
 * Compares t's membership record with the one recorded. Nothing recorded yet (a new
 * table, or one from before this was kept): records it. Changed: the table is copied
 * again; running = the supervisor's loop runs (a sync worker is stopped first, as for
 * walrelay resync), else (at start, no worker yet) Init is persisted at once. The new
 * record is persisted only once Init is.
 */
void
sup__table_member_check(sup_t *s, sup_table_t *t, int64_t member, bool running)
{
    char name[64];
    int64_t have = 0;
    bool found = false;
    wr_err_t err;

    wr_err_clear(&err);
    member_flag_name(t, name, sizeof(name));
    if (member == 0 || t->removing || t->member_pending == member)
        return;
    if (s->st->ops->get_flag(s->st, name, &have, &found, &err) != 0) {
        log_err(LOG_LVL_WARN, "reading the table's publication membership", &err);
        return;
    }
    if (found && have == member)
        return;
    if (!found || have == 0 || t->phase == PH_INIT) {
        if (member_record(s, t, member, &err) != 0)
            log_err(LOG_LVL_WARN, "recording the table's publication membership", &err);
        return;
    }
    log_warn("table left the publication and joined it again: its changes in between were not "
             "published, copying it again table=%s.%s relid=%u phase=%s",
             t->nsp, t->name, t->relid, phase_name(t->phase));
    t->member_pending = member;
    if (!running) {
        if (s->st->ops->set_phase(s->st, t->relid, PH_INIT, 0, NULL, NULL, NULL, &err) != 0) {
            log_err(LOG_LVL_ERROR, "persisting phase init for a re-copy", &err);
            t->member_pending = 0;
            return;
        }
        t->phase = PH_INIT;
        t->lsn = 0;
        t->err_kind[0] = '\0';
        if (member_record(s, t, member, &err) != 0)
            log_err(LOG_LVL_WARN, "recording the table's publication membership", &err);
        t->member_pending = 0;
        return;
    }
    if (t->sync.p) {
        t->resync_pending = true;
        sup__stop_worker(&t->sync);
        return; /* Init once it has exited (sup__table_do_resync) */
    }
    sup__stop_worker(&t->sync); /* a pending backoff */
    (void)sup__table_do_resync(s, t, &err);
}

/* Init for t, whose sync worker is gone: copied again from scratch (the copy empties the
 * destination table first). */
int
sup__table_do_resync(sup_t *s, sup_table_t *t, wr_err_t *err)
{
    int rc;
    t->resync_pending = false;
    rc = table_force_phase(s, t, PH_INIT, 0, err);
    if (rc != 0) {
        log_err(LOG_LVL_ERROR, "persisting phase init for a resync", err);
        return rc;
    }
    if (t->member_pending != 0) {
        /* after Init: a crash before this write re-copies again, never skips the copy */
        if (member_record(s, t, t->member_pending, err) != 0)
            log_err(LOG_LVL_WARN, "recording the table's publication membership", err);
        t->member_pending = 0;
    }
    table_reset_failures(s, t);
    log_info("table set to init, copying it again table=%s.%s relid=%u", t->nsp, t->name, t->relid);
    sup__schedule(s);
    return 0;
}

/*
 * Rolls an Errored table back one phase so that it is tried again. Back in Init or
 * DataSync the copy starts again. A table that errored later goes to Init instead, copied
 * again from scratch: in FinishedCopy, SyncWait or Catchup its sync slot was dropped with
 * the error, and in SyncDone or Ready the changes made while it was errored were skipped.
 * The decision is taken first (the history is read) and persisted in ONE write, so that a
 * crash can never leave the table rolled back to Ready with those changes skipped (issue
 * 12, defect 7: it used to roll back, then set Init, in two commits).
 * automatic: counts an attempt (transient errors); else the attempts start again from 0.
 * msg says what happened.
 */
int
sup__table_retry(sup_t *s, sup_table_t *t, bool automatic, char *msg, size_t len, wr_err_t *err)
{
    char name[300];
    wr_phase_t back = PH_ERRORED;
    wr_lsn_t back_lsn = 0;
    const char *why = NULL;
    state_table_t row;
    bool found = false;
    int rc;

    sup__table_label(t, name, sizeof(name));
    if (s->st->ops->prev_phase) {
        rc = s->st->ops->prev_phase(s->st, t->relid, &back, &back_lsn, &found, err);
        if (rc != 0)
            return rc;
    }
    if (!found)
        back = PH_ERRORED; /* unknown (or a store that cannot tell): from scratch */
    switch (back) {
    case PH_INIT:
    case PH_DATASYNC:
        break;
    case PH_FINISHEDCOPY:
    case PH_SYNCWAIT:
    case PH_CATCHUP:
        why = "its sync slot was dropped when it errored, so the handoff cannot resume";
        break;
    case PH_SYNCDONE:
    case PH_READY:
        why = "it was streaming when it errored, so rolling back would skip the changes made "
              "since";
        break;
    default:
        why = "no earlier phase is recorded";
        break;
    }
    if (why) {
        rc = table_force_phase(s, t, PH_INIT, 0, err);
        if (rc != 0)
            return rc;
        FAILPOINT("sup.retry_persisted");
        if (back == PH_ERRORED)
            snprintf(msg, len, "table \"%s\": %s: copying it again from scratch (phase init)", name,
                     why);
        else
            snprintf(msg, len,
                     "table \"%s\" errored after phase %s; %s: copying it again from scratch "
                     "(phase init)",
                     name, phase_name(back), why);
    } else {
        rc = s->st->ops->rollback_phase(s->st, t->relid, err);
        if (rc != 0)
            return rc;
        FAILPOINT("sup.retry_persisted");
        rc = s->st->ops->get_table(s->st, t->relid, &row, &found, err);
        if (rc != 0)
            return rc;
        if (!found)
            return wr_err_set(err, WR_ESTATE, "table \"%s\" vanished from the state store", name);
        t->phase = row.phase;
        t->lsn = row.lsn;
        t->err_kind[0] = '\0';
        sup__broadcast_table_state(s, t, NULL);
        snprintf(msg, len, "table \"%s\" rolled back to phase %s: its copy starts again", name,
                 phase_name(row.phase));
    }
    if (automatic) {
        t->sync.failures++;
        sup__persist_attempts(s, t);
        if (t->sync.state == W_FAILED)
            t->sync.state = W_IDLE;
    } else {
        table_reset_failures(s, t);
    }
    sup__schedule(s);
    return 0;
}

/* An Errored table of kind "transient" is retried after table_error_retry_delay_ms, up to
 * table_error_retry_max_attempts times (the attempts are persisted). */
void
sup__tick_table_retry(sup_t *s, sup_table_t *t, int64_t now)
{
    char msg[1024];
    wr_err_t err;

    if (t->phase != PH_ERRORED || strcmp(t->err_kind, "transient") != 0 || t->removing ||
        t->resync_pending || t->sync.p || s->paused || s->stopping)
        return;
    if ((int)t->sync.failures >= s->cfg.table_error_retry_max_attempts) {
        if (!t->exhausted_logged)
            log_warn("automatic retries exhausted, the table waits for walrelay retry "
                     "table=%s.%s relid=%u attempts=%u",
                     t->nsp, t->name, t->relid, t->sync.failures);
        t->exhausted_logged = true;
        return;
    }
    if (now - t->errored_at < s->cfg.table_error_retry_delay_ms)
        return;
    wr_err_clear(&err);
    if (sup__table_retry(s, t, true, msg, sizeof(msg), &err) != 0) {
        log_err(LOG_LVL_ERROR, "retrying a table after a transient error", &err);
        t->errored_at = now; /* try again after another delay */
        return;
    }
    log_info("retrying after a transient error table=%s.%s relid=%u attempt=%u max=%d: %s", t->nsp,
             t->name, t->relid, t->sync.failures, s->cfg.table_error_retry_max_attempts, msg);
}

/* -- reading the publication and dropping slots, in libuv's thread pool: libpq blocks -- */

typedef struct sup_job_s {
    uv_work_t req;
    sup_t *sup;
    wr_config_t cfg; /* the fields the job reads, copied: the loop may reload meanwhile */
    int rc;
    wr_err_t err;
    sup_pub_table_t *pub; /* publication read */
    size_t npub;
    char slot[64]; /* slot drop */
} sup_job_t;

static sup_job_t *
job_new(sup_t *s)
{
    sup_job_t *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->sup = s;
    j->req.data = j;
    cfg_defaults(&j->cfg);
    j->cfg.dir = wr_strdup(s->cfg.dir);
    j->cfg.path = wr_strdup(s->cfg.path);
    j->cfg.pipeline_name = wr_strdup(s->cfg.pipeline_name);
    j->cfg.source_conninfo = wr_strdup(s->cfg.source_conninfo);
    j->cfg.publication = wr_strdup(s->cfg.publication);
    j->cfg.max_table_sync_workers = s->cfg.max_table_sync_workers;
    if (!j->cfg.dir || !j->cfg.path || !j->cfg.pipeline_name || !j->cfg.source_conninfo ||
        !j->cfg.publication || cfg_dest_copy(&j->cfg, &s->cfg) != 0) {
        cfg_free(&j->cfg);
        free(j);
        return NULL;
    }
    return j;
}

static void
job_free(sup_job_t *j)
{
    free(j->pub);
    cfg_free(&j->cfg);
    free(j);
}

static void
pub_quiet_report(void *arg, int level, const char *check, const char *msg, const char *hint)
{
    WR_UNUSED(arg);
    WR_UNUSED(level);
    WR_UNUSED(check);
    WR_UNUSED(msg);
    WR_UNUSED(hint);
}

static void
pub_work_cb(uv_work_t *req)
{
    sup_job_t *j = req->data;
    wr_err_clear(&j->err);
    /* the same checks and table list as at start; the results are applied on the loop */
    j->rc = sup_preflight(&j->cfg, pub_quiet_report, NULL, &j->pub, &j->npub, NULL, &j->err);
}

static void
drop_work_cb(uv_work_t *req)
{
    sup_job_t *j = req->data;
    PGconn *c = NULL;
    char app[96];
    wr_err_clear(&j->err);
    snprintf(app, sizeof(app), "walrelay_%s_supervisor", j->cfg.pipeline_name);
    j->rc = repl_connect(j->cfg.source_conninfo, false, app, &c, &j->err);
    if (j->rc == 0)
        j->rc = repl_drop_slot(c, j->slot, &j->err);
    if (c)
        PQfinish(c);
}

static void
drop_after_cb(uv_work_t *req, int status)
{
    sup_job_t *j = req->data;
    if (status != 0)
        log_warn("dropping a slot was cancelled slot=%s", j->slot);
    else if (j->rc != 0)
        log_warn("cannot drop the sync slot of a removed table slot=%s error=\"%s\" "
                 "hint=\"drop it by hand: SELECT pg_drop_replication_slot('%s')\"",
                 j->slot, j->err.msg, j->slot);
    else
        log_info("sync slot of a removed table is gone slot=%s", j->slot);
    job_free(j);
}

static void
slot_drop_start(sup_t *s, uint32_t relid)
{
    sup_job_t *j = job_new(s);
    if (!j) {
        log_error("out of memory dropping a sync slot relid=%u", relid);
        return;
    }
    cfg_sync_slot_name(&s->cfg, relid, j->slot, sizeof(j->slot));
    int rc = uv_queue_work(&s->loop, &j->req, drop_work_cb, drop_after_cb);
    if (rc != 0) {
        log_error("cannot queue a slot drop slot=%s error=%s", j->slot, uv_strerror(rc));
        job_free(j);
    }
}

/* Removes t now (its sync worker is gone): state, schemas and mapping in state.db, the
 * apply worker's entry, the sync slot (in the thread pool). The destination data stays. */
void
sup__table_remove_now(sup_t *s, sup_table_t *t)
{
    wr_err_t err;
    uint32_t relid = t->relid;
    wr_err_clear(&err);
    if (s->st->ops->remove_table(s->st, relid, &err) != 0)
        log_err(LOG_LVL_ERROR, "removing the state of a table no longer published", &err);
    if (sup__proc_can_talk(s->apply.p)) {
        ipc_msg_t m;
        memset(&m, 0, sizeof(m));
        m.type = IPC_TABLE_REMOVED;
        m.u.table_removed.relid = relid;
        sup__proc_send(s->apply.p, &m);
    }
    slot_drop_start(s, relid);
    log_info("table no longer published: state and sync slot removed, destination data kept "
             "table=%s.%s relid=%u",
             t->nsp, t->name, relid);
    table_unlink_free(s, t);
}

static void
table_begin_remove(sup_t *s, sup_table_t *t)
{
    if (t->removing)
        return;
    t->removing = true;
    t->resync_pending = false;
    if (t->sync.p) {
        log_info("table no longer published, stopping its sync worker table=%s.%s relid=%u", t->nsp,
                 t->name, t->relid);
        sup__stop_worker(&t->sync);
        return; /* sup__worker_exited removes it */
    }
    sup__stop_worker(&t->sync); /* a pending backoff */
    sup__table_remove_now(s, t);
}

/* A table the store holds now (sup_add_tables): its entry, and the workers are told. */
static void
table_add_published(sup_t *s, const sup_pub_table_t *pt)
{
    state_table_t row;
    bool found = false;
    sup_table_t *t;
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->get_table(s->st, pt->relid, &row, &found, &err) != 0 || !found) {
        log_err(LOG_LVL_ERROR, "adding a table that is now published", &err);
        return;
    }
    t = table_new(s, &row);
    if (!t || table_insert(s, t) != 0) {
        free(t);
        log_error("out of memory adding a table relid=%u", pt->relid);
        return;
    }
    if (s->st->ops->get_mapping(s->st, t->relid, t->dest_name, sizeof(t->dest_name), &err) != 0 ||
        (!t->dest_name[0] && sup_assign_mapping(s, t, &err) != 0)) {
        /* no copy without a recorded name: it could take another table's */
        log_err(LOG_LVL_ERROR, "choosing the destination name of a table", &err);
        sup__table_set_errored(s, t, "dest_name", err.msg,
                               "see the log; walrelay resync DIR TABLE tries again");
    }
    log_info("table added to the publication table=%s.%s relid=%u phase=%s", t->nsp, t->name,
             t->relid, phase_name(t->phase));
    sup__broadcast_table_state(s, t, NULL);
}

/* pub is in relid order (the preflight's query sorts it). */
static bool
pub_has(const sup_pub_table_t *pub, size_t npub, uint32_t relid)
{
    size_t lo = 0, hi = npub;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pub[mid].relid == relid)
            return true;
        if (pub[mid].relid < relid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* Applies a fresh read of the publication: new tables are added (Init: copied), tables no
 * longer published are removed once their sync worker stopped, renames are noted. */
static void
pub_apply(sup_t *s, const sup_pub_table_t *pub, size_t npub)
{
    uint32_t *gone = NULL;
    size_t ngone = 0, nnew = 0;
    const sup_pub_table_t **fresh = calloc(npub ? npub : 1, sizeof(*fresh));
    wr_err_t err;

    wr_err_clear(&err);
    for (size_t i = 0; fresh && i < npub; i++)
        if (!sup__find_table(s, pub[i].relid))
            fresh[nnew++] = &pub[i];
    if (!fresh || sup_add_tables(s, fresh, nnew, &err) != 0) {
        if (fresh)
            log_err(LOG_LVL_ERROR, "adding the tables that are now published", &err);
        else
            log_error("out of memory adding the tables that are now published");
        free(fresh);
        return;
    }
    free(fresh);
    for (size_t i = 0; i < npub; i++) {
        sup_table_t *t = sup__find_table(s, pub[i].relid);
        if (!t) {
            table_add_published(s, &pub[i]);
            t = sup__find_table(s, pub[i].relid);
            /* as at start: a table whose replica identity cannot carry its published
             * updates/deletes is not copied (the preflight flagged it) */
            if (t && pub[i].refused)
                sup__table_set_errored(s, t, "unsupported", pub[i].refused_msg,
                                       pub[i].refused_hint);
            if (t)
                sup__table_member_check(s, t, pub[i].member, true);
            continue;
        }
        sup__table_member_check(s, t, pub[i].member, true);
        if (pub[i].refused)
            sup__table_set_errored(s, t, "unsupported", pub[i].refused_msg, pub[i].refused_hint);
        if (t->removing) {
            log_info("table published again before its removal ended table=%s.%s relid=%u",
                     pub[i].nsp, pub[i].name, t->relid);
            t->removing = false;
            /* its changes since it left were not published: copied again */
            if (t->phase != PH_INIT && !t->resync_pending) {
                wr_err_t rerr;
                wr_err_clear(&rerr);
                if (t->sync.p) {
                    t->resync_pending = true;
                } else if (sup__table_do_resync(s, t, &rerr) != 0) {
                    log_err(LOG_LVL_ERROR, "copying a table published again", &rerr);
                }
            }
        }
        if (strcmp(t->nsp, pub[i].nsp) != 0 || strcmp(t->name, pub[i].name) != 0) {
            log_info("table renamed table=%s.%s was=%s.%s relid=%u", pub[i].nsp, pub[i].name,
                     t->nsp, t->name, t->relid);
            snprintf(t->nsp, sizeof(t->nsp), "%s", pub[i].nsp);
            snprintf(t->name, sizeof(t->name), "%s", pub[i].name);
        }
    }
    if (s->ntables > 0)
        gone = calloc(s->ntables, sizeof(*gone));
    for (size_t i = 0; gone && i < s->ntables; i++)
        if (!s->tables[i]->removing && !pub_has(pub, npub, s->tables[i]->relid))
            gone[ngone++] = s->tables[i]->relid;
    for (size_t k = 0; k < ngone; k++) {
        sup_table_t *t = sup__find_table(s, gone[k]);
        if (t)
            table_begin_remove(s, t);
    }
    free(gone);
    sup__schedule(s);
}

static void
pub_after_cb(uv_work_t *req, int status)
{
    sup_job_t *j = req->data;
    sup_t *s = j->sup;
    s->refresh_busy = false;
    if (status == 0 && !s->stopping && !s->shut) {
        if (j->rc != 0)
            log_warn("cannot read the publication, keeping the current tables error=\"%s\"%s%s%s",
                     j->err.msg, j->err.hint[0] ? " hint=\"" : "", j->err.hint,
                     j->err.hint[0] ? "\"" : "");
        else
            pub_apply(s, j->pub, j->npub);
    }
    job_free(j);
    if (s->refresh_again && !s->stopping && !s->shut) {
        s->refresh_again = false;
        sup__refresh_start(s);
    }
}

/* Reads the publication's tables again, off the loop. */
void
sup__refresh_start(sup_t *s)
{
    sup_job_t *j;
    int rc;
    if (s->stopping || s->shut)
        return;
    s->last_refresh_ms = wr_now_ms();
    if (s->refresh_busy) {
        s->refresh_again = true;
        return;
    }
    if (!(j = job_new(s))) {
        log_error("out of memory reading the publication");
        return;
    }
    rc = uv_queue_work(&s->loop, &j->req, pub_work_cb, pub_after_cb);
    if (rc != 0) {
        log_error("cannot queue a read of the publication error=%s", uv_strerror(rc));
        job_free(j);
        return;
    }
    s->refresh_busy = true;
}

/* -- the apply slot lost required WAL, or is missing (walrelay-apply exited 3) --
 *
 * The flag "slot_lost_recopied" makes on_slot_lost = recopy happen once: 1 while the
 * tables are being set to Init (a crash there is finished at the next start,
 * sup__load_flags), 2 once they all are. The apply worker never replaces a lost or
 * missing slot while a table is past SyncWait, so a crash anywhere here leaves either the
 * old slot with synced tables (the apply worker exits 3 again) or tables in Init and a
 * slot it may replace: never a new stream under tables that look synchronised. */

/* The apply worker said why (["worker_error", "slot_missing", ...]): else "lost". */
static bool
slot_missing(const sup_worker_t *w)
{
    return strcmp(w->err_kind, "slot_missing") == 0;
}

static void
slot_lost_stop(sup_t *s, sup_worker_t *w, bool recopy)
{
    wr_err_t err;
    wr_err_clear(&err);
    w->state = W_FAILED;
    /* after the one re-copy: a later start must not begin a new stream with the tables
     * still marked as synced (the slot may be dropped by hand meanwhile) */
    if (recopy && s->st->ops->set_flag(s->st, "slot_lost", 1, &err) != 0)
        log_err(LOG_LVL_ERROR, "persisting the lost slot", &err);
    if (slot_missing(w))
        snprintf(s->message, sizeof(s->message),
                 "replication slot \"%s\" is missing while tables were already synchronised; "
                 "the changes made since it disappeared cannot be read from the source%s",
                 s->slot_name,
                 recopy ? " (again: on_slot_lost = recopy copies every table again only once)"
                        : "");
    else
        snprintf(s->message, sizeof(s->message),
                 "replication slot \"%s\" lost required WAL; the source removed WAL this "
                 "pipeline had not consumed%s",
                 s->slot_name,
                 recopy ? " (again: on_slot_lost = recopy copies every table again only once)"
                        : "");
    if (recopy)
        snprintf(s->fatal_hint, sizeof(s->fatal_hint),
                 "walrelay drop %s and start over (the destination data stays); raise "
                 "max_slot_wal_keep_size on the source",
                 s->cfg.dir);
    else
        snprintf(s->fatal_hint, sizeof(s->fatal_hint),
                 "set [pipeline] on_slot_lost = recopy to copy every table again, or walrelay "
                 "drop %s and start over; raise max_slot_wal_keep_size on the source",
                 s->cfg.dir);
    log_error("%s hint=\"%s\"", s->message, s->fatal_hint);
    s->exit_code = WR_EXIT_CONFIG;
    sup__stop_begin(s, slot_missing(w) ? "the replication slot is missing"
                                       : "the replication slot lost required WAL");
}

/* Every table to Init (persisted), sync workers stopped: they start again on the new
 * phase once gone. Returns 0, or the first error (the rest are still tried). */
static int
recopy_all_tables(sup_t *s)
{
    int first = 0;

    for (size_t i = 0; i < s->ntables; i++) {
        sup_table_t *t = s->tables[i];
        wr_err_t err;
        int rc;

        if (t->removing)
            continue;
        wr_err_clear(&err);
        if (t->sync.p) {
            /* a copy or handoff of the old stream: worthless now; persist Init at once
             * (its requests are refused from here on) and copy again once it is gone */
            rc = table_force_phase(s, t, PH_INIT, 0, &err);
            t->resync_pending = true;
            sup__stop_worker(&t->sync);
        } else {
            sup__stop_worker(&t->sync); /* a pending backoff */
            rc = sup__table_do_resync(s, t, &err);
        }
        if (rc != 0) {
            log_err(LOG_LVL_ERROR, "setting a table to init for the re-copy", &err);
            if (first == 0)
                first = rc;
        }
    }
    return first;
}

static void
slot_lost_recopy(sup_t *s, sup_worker_t *w)
{
    wr_err_t err;

    wr_err_clear(&err);
    log_error("replication slot %s; on_slot_lost = recopy: copying every table again (only "
              "once) slot=%s",
              slot_missing(w) ? "is missing" : "lost required WAL", s->slot_name);
    snprintf(s->message, sizeof(s->message),
             "replication slot \"%s\" %s; every table is copied again (on_slot_lost = "
             "recopy, used once: a second loss stops the pipeline)",
             s->slot_name, slot_missing(w) ? "was missing" : "lost required WAL");
    /* the new slot is a new stream: the old position means nothing for it */
    s->flush_lsn = 0;
    s->received_lsn = 0;
    sup__save_progress(s);
    FAILPOINT("sup.slot_lost_recopy");
    if (recopy_all_tables(s) != 0) {
        /* flag 1 stays: the next start finishes the re-copy */
        snprintf(s->fatal_hint, sizeof(s->fatal_hint), "see the log; walrelay run again");
        s->exit_code = WR_EXIT_ERROR;
        w->state = W_FAILED;
        sup__stop_begin(s, "the re-copy after a lost slot could not be persisted");
        return;
    }
    if (s->st->ops->set_flag(s->st, "slot_lost_recopied", 2, &err) != 0)
        log_err(LOG_LVL_ERROR, "persisting the end of the re-copy", &err);
    w->failures = 0;
    w->state = W_IDLE;
    if (!s->paused)
        sup__worker_spawn(w); /* replaces the slot: no table is past SyncWait now */
    sup__schedule(s);
}

void
sup__apply_slot_lost(sup_t *s, sup_worker_t *w)
{
    bool recopy = s->cfg.on_slot_lost == CFG_SLOT_LOST_RECOPY;
    int64_t used = 0;
    bool found = false;
    wr_err_t err;
    wr_err_clear(&err);
    if (recopy) {
        if (s->st->ops->get_flag(s->st, "slot_lost_recopied", &used, &found, &err) != 0) {
            log_err(LOG_LVL_ERROR, "reading the lost-slot flag", &err);
            used = 1; /* when in doubt, stop: never a loop */
        }
        if (!used) {
            if (s->st->ops->set_flag(s->st, "slot_lost_recopied", 1, &err) == 0) {
                slot_lost_recopy(s, w);
                return;
            }
            log_err(LOG_LVL_ERROR, "persisting the lost-slot flag", &err);
        }
    }
    slot_lost_stop(s, w, recopy);
}

/*
 * A state store with no progress row is a new one. If the source still has this
 * pipeline's apply slot, the pipeline ran before and its state is gone (state.db deleted,
 * or another directory or store): starting over would copy every table again over the
 * destination's data without a word, and the slot's position would mean nothing. Refuses
 * (WR_ECONFIG, exit 2) with what to do; created: the sqlite file that opening just
 * created, removed again (nothing written). conn: the preflight's connection. (issue 12)
 */
int
sup__state_lost_check(sup_t *s, PGconn *conn, const char *created, wr_err_t *err)
{
    state_progress_t pr;
    bool found = false, slot = false, active = false;
    char slot_name[64];
    wr_lsn_t confirmed = 0;

    memset(&pr, 0, sizeof(pr));
    if (s->st->ops->get_progress(s->st, &pr, &found, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    if (found || conn == NULL)
        return 0;
    cfg_apply_slot_name(&s->cfg, slot_name, sizeof(slot_name));
    if (repl_slot_info(conn, slot_name, &slot, &active, &confirmed, NULL, 0, err) != 0)
        return err->code ? err->code : WR_ECONN;
    if (!slot)
        return 0;
    if (s->cfg.state_backend == CFG_STATE_POSTGRES)
        wr_err_set(err, WR_ECONFIG,
                   "the state of pipeline \"%s\" is missing from the PostgreSQL state store "
                   "(schema \"%s\"), but its replication slot \"%s\" exists on the source: "
                   "the pipeline ran before and its state is lost",
                   s->cfg.pipeline_name, s->cfg.state_schema, slot_name);
    else if (s->cfg.state_backend == CFG_STATE_PLUGIN)
        wr_err_set(err, WR_ECONFIG,
                   "the state of pipeline \"%s\" is missing from the plugin state store (%s), "
                   "but its replication slot \"%s\" exists on the source: the pipeline ran "
                   "before and its state is lost",
                   s->cfg.pipeline_name, s->cfg.state_library, slot_name);
    else
        wr_err_set(err, WR_ECONFIG,
                   "%s/state.db is missing, but replication slot \"%s\" exists on the source: "
                   "this pipeline ran before and its state is lost (deleted?); walrelay does not "
                   "start over by itself, which would copy every table again over the "
                   "destination's data",
                   s->cfg.dir, slot_name);
    wr_err_hint(err,
                "restore the state (state.db with its -wal file) from a backup; or walrelay "
                "drop %s, which removes the slots, and run again to copy every table again",
                s->cfg.dir);
    if (created) {
        char path[PATH_MAX + 8];
        state_close(s->st);
        s->st = NULL;
        unlink(created);
        snprintf(path, sizeof(path), "%s-wal", created);
        unlink(path);
        snprintf(path, sizeof(path), "%s-shm", created);
        unlink(path);
    }
    return WR_ECONFIG;
}

int
sup_state_open(const wr_config_t *cfg, state_store_t **out, wr_err_t *err)
{
    char path[PATH_MAX];
    int rc;

    if (cfg->state_backend == CFG_STATE_POSTGRES) {
        rc = state_open_postgres(cfg->state_conninfo, cfg->state_schema, cfg->pipeline_name, out,
                                 err);
        if (rc == 0)
            log_info("state store opened backend=postgres schema=%s", cfg->state_schema);
        return rc;
    }
    if (cfg->state_backend == CFG_STATE_PLUGIN) {
        rc = state_open_plugin(cfg, "supervisor", out, err);
        if (rc == 0)
            log_info("state store opened backend=plugin library=%s", cfg->state_library);
        return rc;
    }
    rc = sup_path(cfg->dir, SUP_STATE_FILE, path, sizeof(path), err);
    if (rc == 0)
        rc = state_open_sqlite(path, out, err);
    return rc;
}

/* The probe interval: SUP_LEASE_CHECK_MS, or WALRELAY_LEASE_CHECK_MS (0 = never probe). */
static int64_t
lease_interval(void)
{
    const char *e = getenv("WALRELAY_LEASE_CHECK_MS");
    char *end = NULL;
    long long v;

    if (!e || !*e)
        return SUP_LEASE_CHECK_MS;
    v = strtoll(e, &end, 10);
    if (*end != '\0' || v < 0 || v > 86400000LL) {
        log_warn("ignoring WALRELAY_LEASE_CHECK_MS=\"%.32s\": expected 0 to 86400000 "
                 "(milliseconds); using %d",
                 e, SUP_LEASE_CHECK_MS);
        return SUP_LEASE_CHECK_MS;
    }
    return v;
}

/*
 * Called every tick. A store with a lease (state.h check_lease) is asked what it already
 * knows every tick (a call that reconnected and found the lease taken fenced it), and is
 * probed (a round trip) every lease_check_ms, which finds a connection the server ended
 * while nothing else was called. Lost: the message, exit code 2, the graceful stop (the
 * store is fenced: nothing is written to it any more). A probe that cannot reach the
 * store is logged once and tried again: the server keeps the lock for as long as it
 * believes the session is alive, so nobody else holds it without the next probe seeing it.
 */
void
sup__lease_tick(sup_t *s, int64_t now)
{
    wr_err_t err;
    bool probe;
    int rc;

    if (!s->st || !s->st->ops->check_lease || s->lease_lost)
        return;
    if (!s->lease_ready) {
        s->lease_ready = true;
        s->lease_check_ms = lease_interval();
        s->lease_checked_at = now;
    }
    probe = s->lease_check_ms > 0 && now - s->lease_checked_at >= s->lease_check_ms;
    if (probe)
        s->lease_checked_at = now;
    wr_err_clear(&err);
    rc = s->st->ops->check_lease(s->st, probe, &err);
    if (rc == 0) {
        if (probe && s->lease_unverified) {
            s->lease_unverified = false;
            log_info("the state store's lease is verified again");
        }
        return;
    }
    if (rc != WR_ECONFIG) {
        if (!s->lease_unverified)
            log_err(LOG_LVL_WARN, "cannot verify the state store's lease (trying again)", &err);
        s->lease_unverified = true;
        return;
    }
    s->lease_lost = true;
    snprintf(s->message, sizeof(s->message), "%s", err.msg);
    snprintf(s->fatal_hint, sizeof(s->fatal_hint), "%s", err.hint);
    log_error("%s hint=\"%s\"", s->message, s->fatal_hint);
    s->exit_code = WR_EXIT_CONFIG;
    sup__stop_begin(s, "the state store's lease was lost");
}

/* True if cand is the destination name of a table of the pipeline (dest_name_taken) or
 * of one of the first n names chosen for new tables, compared without case. */
static bool
dest_name_taken_new(const sup_t *s, char (*names)[300], size_t n, const char *cand)
{
    if (dest_name_taken(s, NULL, cand))
        return true;
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(names[i], cand) == 0)
            return true;
    return false;
}

/* Adds newly published tables in Init with their destination table names, in one store
 * transaction where the store can (state.h add_tables: thousands of tables start with one
 * durable write), else one table after another. Each name is unique among the pipeline's
 * tables and the other new ones, as sup_assign_mapping chooses it (issue 12, defect 4);
 * names recorded by the store but not loaded yet (at start) are checked by
 * fix_colliding_mappings afterwards. */
static int
sup_add_tables(sup_t *s, const sup_pub_table_t *const *pub, size_t n, wr_err_t *err)
{
    state_new_table_t *nt;
    char(*names)[300];
    int rc = 0;

    if (n == 0)
        return 0;
    nt = calloc(n, sizeof(*nt));
    names = calloc(n, sizeof(*names));
    if (!nt || !names) {
        free(nt);
        free(names);
        return wr_err_set(err, WR_ENOMEM, "out of memory adding %zu tables", n);
    }
    for (size_t i = 0; i < n; i++) {
        char natural[256];

        dest_table_name(pub[i]->nsp, pub[i]->name, natural, sizeof(natural));
        snprintf(names[i], sizeof(names[i]), "%s", natural);
        for (unsigned k = 1; dest_name_taken_new(s, names, i, names[i]); k++) {
            if (k == 1)
                snprintf(names[i], sizeof(names[i]), "%.240s_%u", natural, pub[i]->relid);
            else
                snprintf(names[i], sizeof(names[i]), "%.240s_%u_%u", natural, pub[i]->relid, k);
        }
        if (strcmp(names[i], natural) != 0)
            log_warn("destination name taken by another table, using another table=%s.%s "
                     "relid=%u dest=%s taken=%s",
                     pub[i]->nsp, pub[i]->name, pub[i]->relid, names[i], natural);
        nt[i].relid = pub[i]->relid;
        nt[i].nsp = pub[i]->nsp;
        nt[i].name = pub[i]->name;
        nt[i].dest_name = names[i];
    }
    if (s->st->ops->add_tables) {
        rc = s->st->ops->add_tables(s->st, nt, n, err);
    } else {
        for (size_t i = 0; i < n && rc == 0; i++) {
            rc = s->st->ops->add_table(s->st, nt[i].relid, nt[i].nsp, nt[i].name, err);
            if (rc == 0)
                rc = s->st->ops->put_mapping(s->st, nt[i].relid, nt[i].dest_name, err);
        }
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        log_info("table added table=%s.%s relid=%u", pub[i]->nsp, pub[i]->name, pub[i]->relid);
    free(nt);
    free(names);
    return rc;
}

/* True if a table of the pipeline other than t has the destination name `name`, compared
 * without case (SQLite's identifiers and those of most destinations are). */
static bool
dest_name_taken(const sup_t *s, const sup_table_t *t, const char *name)
{
    for (size_t i = 0; i < s->ntables; i++) {
        const sup_table_t *o = s->tables[i];
        if (o != t && o->dest_name[0] && strcasecmp(o->dest_name, name) == 0)
            return true;
    }
    return false;
}

/*
 * Chooses and records (state store mappings) the destination table name of t: the naming
 * rule's (dest_table_name: "name", "nsp__name"), unless another table of the pipeline has
 * it, compared without case ("Users" and users; a.b and public."a__b": issue 12, defect
 * 4); then "<name>_<relid>", then "<name>_<relid>_2", ... The workers receive the name
 * with the table (tables, table_state) and every destination uses it
 * (dest_schema_table_name), so two source tables never share a destination table.
 */
static int
sup_assign_mapping(sup_t *s, sup_table_t *t, wr_err_t *err)
{
    char natural[256], cand[300];
    int rc;

    dest_table_name(t->nsp, t->name, natural, sizeof(natural));
    snprintf(cand, sizeof(cand), "%s", natural);
    for (unsigned n = 1; dest_name_taken(s, t, cand); n++) {
        if (n == 1)
            snprintf(cand, sizeof(cand), "%.240s_%u", natural, t->relid);
        else
            snprintf(cand, sizeof(cand), "%.240s_%u_%u", natural, t->relid, n);
    }
    rc = s->st->ops->put_mapping(s->st, t->relid, cand, err);
    if (rc != 0)
        return err->code ? err->code : WR_ESTATE;
    snprintf(t->dest_name, sizeof(t->dest_name), "%s", cand);
    if (strcmp(cand, natural) != 0)
        log_warn("destination name taken by another table, using another table=%s.%s relid=%u "
                 "dest=%s taken=%s",
                 t->nsp, t->name, t->relid, cand, natural);
    return 0;
}

/* Two tables of a pipeline mapped to one destination table (names recorded before issue
 * 12 made them unique): their rows are mixed there. The later one gets a name of its
 * own and both are copied again (Init), with a warning. */
static int
fix_colliding_mappings(sup_t *s, wr_err_t *err)
{
    for (size_t i = 0; i < s->ntables; i++) {
        sup_table_t *t = s->tables[i];
        for (size_t j = 0; j < i; j++) {
            sup_table_t *o = s->tables[j];
            /* a table without a recorded name yet (new) is named after this */
            if (!t->dest_name[0] || strcasecmp(o->dest_name, t->dest_name) != 0)
                continue;
            log_warn("two tables share destination table %s: giving the second a name of its "
                     "own and copying both again table=%s.%s relid=%u other=%s.%s other_relid=%u",
                     t->dest_name, t->nsp, t->name, t->relid, o->nsp, o->name, o->relid);
            t->dest_name[0] = '\0';
            if (sup_assign_mapping(s, t, err) != 0)
                return err->code ? err->code : WR_ESTATE;
            for (int k = 0; k < 2; k++) {
                sup_table_t *x = k ? o : t;
                if (x->phase == PH_INIT)
                    continue;
                if (s->st->ops->set_phase(s->st, x->relid, PH_INIT, 0, NULL, NULL, NULL, err) != 0)
                    return err->code ? err->code : WR_ESTATE;
                x->phase = PH_INIT;
                x->lsn = 0;
                x->err_kind[0] = '\0';
            }
            break;
        }
    }
    return 0;
}

/* Adds published tables that are new, removes tables that are no longer published (their
 * state, schemas and sync slot; destination data stays), then loads the table list. */
int
sup__reconcile_tables(sup_t *s, const sup_pub_table_t *pub, size_t npub, PGconn *conn,
                      wr_err_t *err)
{
    state_table_t *st = NULL;
    size_t nst = 0;
    if (s->st->ops->list_tables(s->st, &st, &nst, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    size_t i = 0, j = 0, nadd = 0;
    int rc = 0;
    sup_pub_table_t **added = calloc(npub ? npub : 1, sizeof(*added));
    if (!added) {
        free(st);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    while (rc == 0 && (i < npub || j < nst)) {
        if (j >= nst || (i < npub && pub[i].relid < st[j].relid)) {
            added[nadd++] = (sup_pub_table_t *)&pub[i]; /* added below, all at once */
            i++;
        } else if (i >= npub || st[j].relid < pub[i].relid) {
            rc = s->st->ops->remove_table(s->st, st[j].relid, err);
            if (rc == 0) {
                log_info("table no longer published, state removed (destination data kept) "
                         "table=%s.%s relid=%u",
                         st[j].nsp, st[j].name, st[j].relid);
                char slot[64];
                cfg_sync_slot_name(&s->cfg, st[j].relid, slot, sizeof(slot));
                wr_err_t serr;
                wr_err_clear(&serr);
                if (conn && repl_drop_slot(conn, slot, &serr) != 0)
                    log_err(LOG_LVL_WARN, "dropping the sync slot of a removed table", &serr);
            }
            j++;
        } else {
            if (strcmp(pub[i].nsp, st[j].nsp) != 0 || strcmp(pub[i].name, st[j].name) != 0)
                log_info("table renamed table=%s.%s was=%s.%s relid=%u", pub[i].nsp, pub[i].name,
                         st[j].nsp, st[j].name, pub[i].relid);
            i++;
            j++;
        }
    }
    free(st);
    if (rc == 0)
        rc = sup_add_tables(s, (const sup_pub_table_t *const *)added, nadd, err);
    free(added);
    if (rc != 0)
        return rc;

    st = NULL;
    nst = 0;
    if (s->st->ops->list_tables(s->st, &st, &nst, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    s->tables = calloc(nst ? nst : 1, sizeof(*s->tables));
    if (!s->tables) {
        free(st);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < nst; k++) {
        sup_table_t *t = table_new(s, &st[k]);
        if (!t) {
            free(st);
            return wr_err_set(err, WR_ENOMEM, "out of memory");
        }
        s->tables[s->ntables++] = t;
        /* the publication's current name wins (renames) */
        for (size_t q = 0; q < npub; q++) {
            if (pub[q].relid == t->relid) {
                snprintf(t->nsp, sizeof(t->nsp), "%s", pub[q].nsp);
                snprintf(t->name, sizeof(t->name), "%s", pub[q].name);
                break;
            }
        }
        /* read back what the store holds: the mapping and the newest schema version */
        if (s->st->ops->get_mapping(s->st, t->relid, t->dest_name, sizeof(t->dest_name), err) !=
                0 ||
            s->st->ops->get_schema(s->st, t->relid, UINT64_MAX, &t->schema, &t->schema_lsn, err) !=
                0) {
            free(st);
            return err->code ? err->code : WR_ESTATE;
        }
    }
    free(st);
    /* names for the tables that have none yet (new ones, or added before mappings
     * existed), unique among those recorded */
    if (fix_colliding_mappings(s, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    for (size_t k = 0; k < s->ntables; k++) {
        sup_table_t *t = s->tables[k];
        if (!t->dest_name[0] && sup_assign_mapping(s, t, err) != 0)
            return err->code ? err->code : WR_ESTATE;
        sup__table_handoff_paused(s, t); /* no sync worker runs yet */
        for (size_t q = 0; q < npub; q++)
            if (pub[q].relid == t->relid)
                sup__table_member_check(s, t, pub[q].member, false);
        log_info("table table=%s.%s relid=%u phase=%s lsn=" WR_LSN_FMT
                 " dest=%s schema_lsn=" WR_LSN_FMT,
                 t->nsp, t->name, t->relid, phase_name(t->phase), WR_LSN_ARGS(t->lsn), t->dest_name,
                 WR_LSN_ARGS(t->schema_lsn));
    }
    return 0;
}

/* Sets ERRORED "unsupported" on every table the preflight refused (its published
 * updates/deletes cannot be replicated with its replica identity), so that it is not
 * copied and its changes are not applied; the rest of the pipeline runs. A table already
 * ERRORED keeps its error. */
void
sup__refuse_tables(sup_t *s, const sup_pub_table_t *pub, size_t npub)
{
    for (size_t i = 0; i < npub; i++) {
        sup_table_t *t = pub[i].refused ? sup__find_table(s, pub[i].relid) : NULL;
        if (t)
            sup__table_set_errored(s, t, "unsupported", pub[i].refused_msg, pub[i].refused_hint);
    }
}

int
sup__init_progress(sup_t *s, wr_err_t *err)
{
    cfg_apply_slot_name(&s->cfg, s->slot_name, sizeof(s->slot_name));
    state_progress_t pr;
    bool found = false;
    memset(&pr, 0, sizeof(pr));
    if (s->st->ops->get_progress(s->st, &pr, &found, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    if (found) {
        s->flush_lsn = pr.confirmed_flush;
        if (strcmp(pr.slot_name, s->slot_name) == 0)
            return 0;
    }
    snprintf(pr.slot_name, sizeof(pr.slot_name), "%s", s->slot_name);
    if (s->st->ops->set_progress(s->st, &pr, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    return 0;
}

/* Pipeline flags: "paused" (walrelay pause), "slot_lost" (the slot was lost and dropped
 * after the one re-copy: refuse to start over silently). */
int
sup__load_flags(sup_t *s, wr_err_t *err)
{
    int64_t v = 0;
    bool found = false;
    if (s->st->ops->get_flag(s->st, "slot_lost", &v, &found, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    if (v) {
        wr_err_set(err, WR_ECONFIG,
                   "replication slot \"%s\" lost required WAL a second time (or went missing "
                   "again) after its one re-copy; walrelay does not start this pipeline over by "
                   "itself",
                   s->slot_name);
        wr_err_hint(err,
                    "walrelay drop %s and start over (the destination data stays); raise "
                    "max_slot_wal_keep_size on the source",
                    s->cfg.dir);
        return WR_ECONFIG;
    }
    if (s->st->ops->get_flag(s->st, "slot_lost_recopied", &v, &found, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    if (v == 1) {
        /* a re-copy after a lost slot was interrupted (kill -9): the apply worker would
         * otherwise find tables past SyncWait beside a slot it cannot use */
        log_warn("finishing the re-copy of every table after a lost replication slot (it was "
                 "interrupted) slot=%s",
                 s->slot_name);
        for (size_t i = 0; i < s->ntables; i++) {
            sup_table_t *t = s->tables[i];
            if (t->phase == PH_INIT)
                continue;
            if (s->st->ops->set_phase(s->st, t->relid, PH_INIT, 0, NULL, NULL, NULL, err) != 0)
                return err->code ? err->code : WR_ESTATE;
            t->phase = PH_INIT;
            t->lsn = 0;
            t->err_kind[0] = '\0';
        }
        if (s->st->ops->set_flag(s->st, "slot_lost_recopied", 2, err) != 0)
            return err->code ? err->code : WR_ESTATE;
    }
    if (s->st->ops->get_flag(s->st, "paused", &v, &found, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    s->paused = v != 0;
    return 0;
}
