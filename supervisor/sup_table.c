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
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/repl.h"
#include "../common/state.h"
#include "sup_int.h"
#include "../destinations/destination.h"
#include "../destinations/registry.h"

static int sup_store_mapping(sup_t *s, uint32_t relid, const char *nsp, const char *name,
                             wr_err_t *err);
static int sup_add_tables(sup_t *s, const sup_pub_table_t *const *pub, size_t n, wr_err_t *err);

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
    t->phase = PH_ERRORED;
    snprintf(t->err_kind, sizeof(t->err_kind), "%s", kind);
    t->errored_at = wr_now_ms();
    t->exhausted_logged = false;
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
 * automatic: counts an attempt (transient errors); else the attempts start again from 0.
 * msg says what happened.
 */
int
sup__table_retry(sup_t *s, sup_table_t *t, bool automatic, char *msg, size_t len, wr_err_t *err)
{
    char name[300];
    wr_phase_t back = PH_ERRORED;
    const char *why = NULL;
    state_table_t row;
    bool found = false;
    int rc;

    sup__table_label(t, name, sizeof(name));
    rc = s->st->ops->rollback_phase(s->st, t->relid, err);
    if (rc != 0 && rc != WR_EINVAL)
        return rc;
    if (rc == 0) {
        rc = s->st->ops->get_table(s->st, t->relid, &row, &found, err);
        if (rc != 0)
            return rc;
        if (!found)
            return wr_err_set(err, WR_ESTATE, "table \"%s\" vanished from state.db", name);
        back = row.phase;
        t->phase = row.phase;
        t->lsn = row.lsn;
        t->err_kind[0] = '\0';
    }
    wr_err_clear(err);
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
        if (back == PH_ERRORED)
            snprintf(msg, len, "table \"%s\": %s: copying it again from scratch (phase init)", name,
                     why);
        else
            snprintf(msg, len,
                     "table \"%s\" errored after phase %s; %s: copying it again from scratch "
                     "(phase init)",
                     name, phase_name(back), why);
    } else {
        sup__broadcast_table_state(s, t, NULL);
        snprintf(msg, len, "table \"%s\" rolled back to phase %s: its copy starts again", name,
                 phase_name(back));
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
    dest_table_name(t->nsp, t->name, t->dest_name, sizeof(t->dest_name)); /* as stored */
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
            continue;
        }
        if (pub[i].refused)
            sup__table_set_errored(s, t, "unsupported", pub[i].refused_msg, pub[i].refused_hint);
        if (t->removing) {
            log_info("table published again before its removal ended table=%s.%s relid=%u",
                     pub[i].nsp, pub[i].name, t->relid);
            t->removing = false;
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

/* -- the apply slot lost required WAL (walrelay-apply exited 3) -- */

static void
slot_lost_stop(sup_t *s, sup_worker_t *w, bool dropped)
{
    wr_err_t err;
    wr_err_clear(&err);
    w->state = W_FAILED;
    /* the apply worker dropped the lost slot (on_slot_lost = recopy): a later start must not
     * quietly begin a new stream with the tables still marked as synced */
    if (dropped && s->st->ops->set_flag(s->st, "slot_lost", 1, &err) != 0)
        log_err(LOG_LVL_ERROR, "persisting the lost slot", &err);
    snprintf(s->message, sizeof(s->message),
             "replication slot \"%s\" lost required WAL; the source removed WAL this pipeline "
             "had not consumed%s",
             s->slot_name,
             dropped ? " (again: on_slot_lost = recopy copies every table again only once)" : "");
    if (dropped)
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
    sup__stop_begin(s, "the replication slot lost required WAL");
}

static void
slot_lost_recopy(sup_t *s, sup_worker_t *w)
{
    log_error("replication slot lost required WAL; on_slot_lost = recopy: copying every table "
              "again (only once) slot=%s",
              s->slot_name);
    snprintf(s->message, sizeof(s->message),
             "replication slot \"%s\" lost required WAL; every table is copied again "
             "(on_slot_lost = recopy, used once: a second loss stops the pipeline)",
             s->slot_name);
    /* the new slot is a new stream: the old position means nothing for it */
    s->flush_lsn = 0;
    s->received_lsn = 0;
    sup__save_progress(s);
    for (size_t i = 0; i < s->ntables; i++) {
        sup_table_t *t = s->tables[i];
        wr_err_t err;
        if (t->removing)
            continue;
        if (t->sync.p) {
            t->resync_pending = true;
            sup__stop_worker(&t->sync);
            continue;
        }
        sup__stop_worker(&t->sync);
        wr_err_clear(&err);
        (void)sup__table_do_resync(s, t, &err);
    }
    w->failures = 0;
    w->state = W_IDLE;
    if (!s->paused)
        sup__worker_spawn(w); /* creates a new slot and forgets its destination key */
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

/* Adds newly published tables in Init with their destination table names, in one store
 * transaction where the store can (state.h add_tables: thousands of tables start with one
 * durable write), else one table after another. */
static int
sup_add_tables(sup_t *s, const sup_pub_table_t *const *pub, size_t n, wr_err_t *err)
{
    state_new_table_t *nt;
    char(*names)[300];
    int rc = 0;

    if (n == 0)
        return 0;
    if (!s->st->ops->add_tables) {
        for (size_t i = 0; i < n && rc == 0; i++) {
            rc = s->st->ops->add_table(s->st, pub[i]->relid, pub[i]->nsp, pub[i]->name, err);
            if (rc == 0)
                rc = sup_store_mapping(s, pub[i]->relid, pub[i]->nsp, pub[i]->name, err);
            if (rc == 0)
                log_info("table added table=%s.%s relid=%u", pub[i]->nsp, pub[i]->name,
                         pub[i]->relid);
        }
        return rc;
    }
    nt = calloc(n, sizeof(*nt));
    names = calloc(n, sizeof(*names));
    if (!nt || !names) {
        free(nt);
        free(names);
        return wr_err_set(err, WR_ENOMEM, "out of memory adding %zu tables", n);
    }
    for (size_t i = 0; i < n; i++) {
        dest_table_name(pub[i]->nsp, pub[i]->name, names[i], sizeof(names[i]));
        nt[i].relid = pub[i]->relid;
        nt[i].nsp = pub[i]->nsp;
        nt[i].name = pub[i]->name;
        nt[i].dest_name = names[i];
    }
    rc = s->st->ops->add_tables(s->st, nt, n, err);
    for (size_t i = 0; rc == 0 && i < n; i++)
        log_info("table added table=%s.%s relid=%u", pub[i]->nsp, pub[i]->name, pub[i]->relid);
    free(nt);
    free(names);
    return rc;
}

/* Persists the destination table name of a newly published table (state.db
 * table_mappings), so that operators and later tools can find where a source table
 * lands without knowing the naming rule. */
static int
sup_store_mapping(sup_t *s, uint32_t relid, const char *nsp, const char *name, wr_err_t *err)
{
    char dest_name[300];

    dest_table_name(nsp, name, dest_name, sizeof(dest_name));
    return s->st->ops->put_mapping(s->st, relid, dest_name, err);
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
        /* read back what the store holds: the mapping (written for a table added before
         * mappings existed) and the newest schema version */
        if (s->st->ops->get_mapping(s->st, t->relid, t->dest_name, sizeof(t->dest_name), err) !=
                0 ||
            (!t->dest_name[0] && (sup_store_mapping(s, t->relid, t->nsp, t->name, err) != 0 ||
                                  s->st->ops->get_mapping(s->st, t->relid, t->dest_name,
                                                          sizeof(t->dest_name), err) != 0)) ||
            s->st->ops->get_schema(s->st, t->relid, UINT64_MAX, &t->schema, &t->schema_lsn, err) !=
                0) {
            free(st);
            return err->code ? err->code : WR_ESTATE;
        }
        log_info("table table=%s.%s relid=%u phase=%s lsn=" WR_LSN_FMT
                 " dest=%s schema_lsn=" WR_LSN_FMT,
                 t->nsp, t->name, t->relid, phase_name(t->phase), WR_LSN_ARGS(t->lsn), t->dest_name,
                 WR_LSN_ARGS(t->schema_lsn));
    }
    free(st);
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
                   "replication slot \"%s\" lost required WAL a second time and was dropped; "
                   "walrelay does not start this pipeline over by itself",
                   s->slot_name);
        wr_err_hint(err,
                    "walrelay drop %s and start over (the destination data stays); raise "
                    "max_slot_wal_keep_size on the source",
                    s->cfg.dir);
        return WR_ECONFIG;
    }
    if (s->st->ops->get_flag(s->st, "paused", &v, &found, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    s->paused = v != 0;
    return 0;
}
