/*
 * sup_cmd.c - the supervisor's command layer: retry, resync, pause, resume, reload and the
 * status reply, as called by the control server (control.c) and SIGHUP.
 *
 * NOTES: runs in the `walrelay run` process, on its libuv loop. Each command validates,
 * acts through the table and process layers and returns what it did for the operator, or
 * an error that changed nothing (sup.h: the command API, the only part of the supervisor
 * control.c calls). Reload parses the new file aside and swaps in only the keys that can
 * change live; the rest are reported as needing a restart. Persists through the table
 * layer only.
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

static const char *const wstate_names[] = {"idle",    "starting", "running",
                                           "backoff", "stopping", "failed"};
void
sup_cmd_stop(sup_t *s, const char *why)
{
    sup__stop_begin(s, why);
}

int
sup_cmd_retry(sup_t *s, const char *spec, char *msg, size_t len, wr_err_t *err)
{
    char name[300];
    sup_table_t *t;
    int rc;

    if (s->stopping)
        return sup__refuse_stopping(err);
    if (!(t = sup__table_lookup(s, spec, err)))
        return WR_EINVAL;
    sup__table_label(t, name, sizeof(name));
    if (t->phase != PH_ERRORED) {
        wr_err_set(err, WR_EINVAL, "table \"%s\" is not errored (phase %s)", name,
                   phase_name(t->phase));
        wr_err_hint(err, "walrelay resync DIR %s copies it again from scratch", name);
        return WR_EINVAL;
    }
    if (t->sync.p) {
        wr_err_set(err, WR_EINVAL, "the sync worker of table \"%s\" is still exiting", name);
        wr_err_hint(err, "try again in a moment");
        return WR_EINVAL;
    }
    sup__stop_worker(&t->sync); /* a pending backoff */
    rc = sup__table_retry(s, t, false, msg, len, err);
    if (rc != 0) {
        log_err(LOG_LVL_ERROR, "walrelay retry", err);
        return rc;
    }
    log_info("retry requested table=%s relid=%u: %s", name, t->relid, msg);
    if (s->paused) {
        size_t used = strlen(msg);
        snprintf(msg + used, len - used,
                 "; the pipeline is paused: it starts after walrelay resume");
    }
    return 0;
}

int
sup_cmd_resync(sup_t *s, const char *spec, char *msg, size_t len, wr_err_t *err)
{
    char name[300];
    sup_table_t *t;
    wr_phase_t was;

    if (s->stopping)
        return sup__refuse_stopping(err);
    if (!(t = sup__table_lookup(s, spec, err)))
        return WR_EINVAL;
    sup__table_label(t, name, sizeof(name));
    if (t->sync.p) {
        t->resync_pending = true;
        sup__stop_worker(&t->sync);
        log_info("resync requested, stopping the sync worker first table=%s relid=%u", name,
                 t->relid);
        snprintf(msg, len,
                 "table \"%s\": stopping its sync worker, then copying it again from scratch "
                 "(the copy empties the destination table first)",
                 name);
        return 0;
    }
    sup__stop_worker(&t->sync); /* a pending backoff */
    was = t->phase;
    if (sup__table_do_resync(s, t, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    log_info("resync requested table=%s relid=%u was=%s", name, t->relid, phase_name(was));
    snprintf(msg, len,
             "table \"%s\" (phase %s) set to init: it is copied again from scratch (the copy "
             "empties the destination table first)%s",
             name, phase_name(was),
             s->paused ? "; the pipeline is paused: the copy starts after walrelay resume" : "");
    return 0;
}

int
sup_cmd_pause(sup_t *s, char *msg, size_t len, wr_err_t *err)
{
    int n = 0;
    if (s->stopping)
        return sup__refuse_stopping(err);
    if (s->paused) {
        snprintf(msg, len, "already paused");
        return 0;
    }
    if (s->st->ops->set_flag(s->st, "paused", 1, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    s->paused = true;
    snprintf(s->message, sizeof(s->message),
             "paused by walrelay pause; walrelay resume starts the workers again");
    if (s->apply.p)
        n++;
    sup__stop_worker(&s->apply);
    for (size_t i = 0; i < s->ntables; i++) {
        if (s->tables[i]->sync.p)
            n++;
        sup__stop_worker(&s->tables[i]->sync);
    }
    log_info("paused workers_stopping=%d", n);
    snprintf(msg, len,
             "paused: %d worker%s asked to stop (each finishes the write in flight and confirms "
             "its position); walrelay resume starts them again",
             n, n == 1 ? "" : "s");
    return 0;
}

int
sup_cmd_resume(sup_t *s, char *msg, size_t len, wr_err_t *err)
{
    if (s->stopping)
        return sup__refuse_stopping(err);
    if (!s->paused) {
        snprintf(msg, len, "not paused");
        return 0;
    }
    if (s->st->ops->set_flag(s->st, "paused", 0, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    s->paused = false;
    if (strncmp(s->message, "paused", 6) == 0)
        s->message[0] = '\0';
    /* a worker still stopping from the pause starts again when it has exited */
    if (!s->apply.p && s->apply.state == W_IDLE)
        sup__worker_spawn(&s->apply);
    sup__schedule(s);
    log_info("resumed");
    snprintf(msg, len, "resumed: workers started");
    return 0;
}

/* Appends ", text" (or "text" first) to buf. */
static void bufcat(char *buf, size_t len, const char *fmt, ...) WR_PRINTF(3, 4);

static void
bufcat(char *buf, size_t len, const char *fmt, ...)
{
    size_t used = strlen(buf);
    va_list ap;
    if (used + 3 >= len)
        return;
    if (used) {
        memcpy(buf + used, ", ", 3);
        used += 2;
    }
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

static bool
str_differs(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") != 0;
}

static const char *
level_name(int l)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    return l >= 0 && l < 4 ? names[l] : "?";
}

/* Stops the workers so that they start again and read the configuration: the apply
 * worker and the sync workers past the copy (a copy in progress is not thrown away: it
 * reads the configuration at its next start). */
static void
restart_workers_gracefully(sup_t *s)
{
    if (s->paused)
        return; /* resume starts them with the new configuration */
    if (s->apply.p) {
        s->apply.restart_after_stop = true;
        sup__stop_worker(&s->apply);
    }
    for (size_t i = 0; i < s->ntables; i++) {
        sup_worker_t *w = &s->tables[i]->sync;
        wr_phase_t ph = s->tables[i]->phase;
        if (w->p && ph != PH_INIT && ph != PH_DATASYNC) {
            w->restart_after_stop = true;
            sup__stop_worker(w);
        }
    }
}

static int cmd_reload(sup_t *s, char *msg, size_t len, wr_err_t *err);

/* The reload, between RELOADING=1 and READY=1 for the service manager (notify.c). */
int
sup_cmd_reload(sup_t *s, char *msg, size_t len, wr_err_t *err)
{
    int rc;

    if (s->stopping)
        return sup__refuse_stopping(err);
    sup__notify_reloading(s);
    rc = cmd_reload(s, msg, len, err);
    sup__notify_reloaded(s);
    return rc;
}

static int
cmd_reload(sup_t *s, char *msg, size_t len, wr_err_t *err)
{
    wr_config_t nc;
    char live[1024] = "", keep[1024] = "";
    bool workers = false, any = false, publish;
    char *text = NULL;
    size_t textlen = 0;
    int rc;

    if (s->stopping)
        return sup__refuse_stopping(err);
    rc = cfg_load_text(s->cfg.dir, &nc, &text, &textlen, err);
    if (rc == 0 &&
        ((rc = dest_config_check(&nc, err)) != 0 || (rc = state_config_check(&nc, err)) != 0)) {
        cfg_free(&nc);
        free(text);
    }
    if (rc != 0) {
        wr_err_prefix(err, "reload failed, the running configuration is kept: ");
        log_err(LOG_LVL_ERROR, "reload", err);
        return rc;
    }
    /* Keys that need a restart of walrelay run keep their running value: the new one is
     * swapped into s->cfg, which is freed below. The conninfo is never shown. */
#define SUP_KEEP(field, label, secret)                                                             \
    do {                                                                                           \
        if (str_differs(s->cfg.field, nc.field)) {                                                 \
            char *tmp_ = nc.field;                                                                 \
            if (secret)                                                                            \
                bufcat(keep, sizeof(keep), "%s", label);                                           \
            else                                                                                   \
                bufcat(keep, sizeof(keep), "%s \"%s\" -> \"%s\"", label,                           \
                       s->cfg.field ? s->cfg.field : "", nc.field ? nc.field : "");                \
            nc.field = s->cfg.field;                                                               \
            s->cfg.field = tmp_;                                                                   \
        }                                                                                          \
    } while (0)
    SUP_KEEP(pipeline_name, "[pipeline] name", false);
    SUP_KEEP(source_conninfo, "[source] conninfo", true);
    SUP_KEEP(publication, "[source] publication", false);
    SUP_KEEP(state_conninfo, "[state] conninfo", true);
    SUP_KEEP(state_schema, "[state] schema", false);
    SUP_KEEP(metrics_listen, "[metrics] listen", false);
#undef SUP_KEEP
    if (s->cfg.state_backend != nc.state_backend) {
        int tmp = nc.state_backend;

        bufcat(keep, sizeof(keep), "[state] backend");
        nc.state_backend = s->cfg.state_backend;
        s->cfg.state_backend = tmp;
    }
    /* a plugin store's library and keys need a restart too (values are not shown) */
    if (!cfg_state_items_equal(&s->cfg, &nc))
        bufcat(keep, sizeof(keep), "[state] library or keys");
    cfg_state_items_swap(&s->cfg, &nc);
    /* every [destination] key needs a restart; values are not shown (a plugin's key may
     * be a secret) */
    if (!cfg_dest_equal(&s->cfg, &nc)) {
        if (str_differs(s->cfg.dest_type, nc.dest_type))
            bufcat(keep, sizeof(keep), "[destination] type \"%s\" -> \"%s\"",
                   s->cfg.dest_type ? s->cfg.dest_type : "", nc.dest_type ? nc.dest_type : "");
        else
            bufcat(keep, sizeof(keep), "[destination] keys");
        cfg_dest_swap(&s->cfg, &nc);
    }
#define SUP_LIVE(field, label, restart)                                                            \
    do {                                                                                           \
        if (s->cfg.field != nc.field) {                                                            \
            bufcat(live, sizeof(live), "%s %lld -> %lld", label, (long long)s->cfg.field,          \
                   (long long)nc.field);                                                           \
            workers = workers || (restart);                                                        \
        }                                                                                          \
    } while (0)
    if (s->cfg.log_level != nc.log_level) {
        bufcat(live, sizeof(live), "[log] level %s -> %s", level_name(s->cfg.log_level),
               level_name(nc.log_level));
        workers = true;
    }
    if (s->cfg.log_format != nc.log_format) {
        bufcat(live, sizeof(live), "[log] format %s -> %s",
               s->cfg.log_format == LOG_FMT_JSON ? "json" : "text",
               nc.log_format == LOG_FMT_JSON ? "json" : "text");
        workers = true;
    }
    if (s->cfg.on_slot_lost != nc.on_slot_lost) {
        bufcat(live, sizeof(live), "[pipeline] on_slot_lost %s -> %s",
               s->cfg.on_slot_lost == CFG_SLOT_LOST_RECOPY ? "recopy" : "stop",
               nc.on_slot_lost == CFG_SLOT_LOST_RECOPY ? "recopy" : "stop");
        workers = true; /* the apply worker reads it */
    }
    SUP_LIVE(publication_refresh_ms, "[pipeline] publication_refresh_ms", false);
    SUP_LIVE(batch_max_fill_ms, "[batch] max_fill_ms", true);
    SUP_LIVE(batch_max_bytes, "[batch] max_bytes", true);
    SUP_LIVE(streaming, "[source] streaming", true); /* the apply worker reads it at start */
    SUP_LIVE(max_table_sync_workers, "[sync] max_table_sync_workers", false);
    SUP_LIVE(copy_batch_rows, "[sync] copy_batch_rows", true);
    SUP_LIVE(max_copy_connections_per_table, "[sync] max_copy_connections_per_table", true);
    SUP_LIVE(worker_max_failures, "[retry] worker_max_failures", false);
    SUP_LIVE(backoff_initial_ms, "[retry] backoff_initial_ms", false);
    SUP_LIVE(backoff_max_ms, "[retry] backoff_max_ms", false);
    SUP_LIVE(healthy_reset_ms, "[retry] healthy_reset_ms", false);
    SUP_LIVE(table_error_retry_delay_ms, "[retry] table_error_retry_delay_ms", false);
    SUP_LIVE(table_error_retry_max_attempts, "[retry] table_error_retry_max_attempts", false);
    SUP_LIVE(metrics_lag_interval_ms, "[metrics] lag_interval_ms", false);
#undef SUP_LIVE
    /* The workers read DIR/walrelay.conf.active. It must describe what runs: when a key
     * that needs a restart changed, the new text is not handed over (the workers would
     * read the new conninfo, publication or destination), so worker settings wait for
     * that restart too. */
    publish = keep[0] == '\0';
    if (publish && (rc = cfg_publish_active(nc.dir, text, textlen, err)) != 0) {
        free(text);
        cfg_free(&nc);
        wr_err_prefix(err, "reload failed, the running configuration is kept: ");
        log_err(LOG_LVL_ERROR, "reload", err);
        return rc;
    }
    free(text);
    if (!publish)
        workers = false;
    any = live[0] || keep[0];
    cfg_free(&s->cfg);
    s->cfg = nc;
    log_set_level(s->cfg.log_level);
    log_set_format(s->cfg.log_format);
    if (workers)
        restart_workers_gracefully(s);
    sup__schedule(s); /* more sync workers may be allowed now */
    sup__refresh_start(s);

    snprintf(msg, len, "reloaded %s", s->cfg.path ? s->cfg.path : "walrelay.conf");
    if (!any)
        bufcat(msg, len, "no changes");
    if (live[0])
        bufcat(msg, len, "applied: %s%s", live,
               workers && !s->paused ? " (the workers restart to read it)" : "");
    if (keep[0])
        bufcat(msg, len,
               "needs a restart of walrelay run (the running value stays in use until then, and "
               "the workers keep the running file, so their settings wait for that restart "
               "too): %s",
               keep);
    bufcat(msg, len, "the publication is read again");
    log_info("configuration reloaded applied=\"%s\" needs_restart=\"%s\"", live, keep);
    return 0;
}

/* ---- status ---- */

/* A worker whose destination waits (["dest_wait"], issue 9) makes the pipeline's message,
 * unless there is one already (paused, degraded, stopping say more): "waiting on the
 * destination for 25 s (apply worker): <what and the last error>". */
static void
sup_status_dest_wait(sup_t *s, __typeof__(((ipc_msg_t *)0)->u.status_reply) *r)
{
    if (r->message != NULL && r->message[0] != '\0')
        return;
    for (size_t i = 0; i <= s->ntables; i++) {
        sup_worker_t *w = i == 0 ? &s->apply : &s->tables[i - 1]->sync;
        sup_proc_t *p = w->p;

        if (p == NULL || p->exited || p->dest_wait[0] == '\0')
            continue;
        snprintf(s->status_msg, sizeof(s->status_msg),
                 "waiting on the destination for %lld s (%s worker): %s",
                 (long long)((wr_now_ms() - p->dest_wait_since) / 1000), w->name, p->dest_wait);
        r->message = s->status_msg;
        return;
    }
}

int
sup_status_build(sup_t *s, ipc_msg_t *out, wr_err_t *err)
{
    return sup_status_page(s, 0, out, err);
}

/* Wire bytes a status row takes, about (its strings and a margin for the numbers). */
static size_t
status_row_bytes(const ipc_table_info_t *ti)
{
    return strlen(ti->nsp) + strlen(ti->name) + strlen(ti->err_kind) + strlen(ti->err_msg) +
           strlen(ti->err_hint) + 64;
}

int
sup_status_page(sup_t *s, uint32_t after, ipc_msg_t *out, wr_err_t *err)
{
    size_t first = 0, bytes = 0;
    memset(out, 0, sizeof(*out));
    out->type = IPC_STATUS_REPLY;
    __typeof__(out->u.status_reply) *r = &out->u.status_reply;
    r->pipeline = s->cfg.pipeline_name;
    r->state = s->stopping      ? "stopping"
               : s->paused      ? "paused"
               : s->degraded    ? "degraded"
               : s->source_down ? "source_unavailable"
                                : "running";
    r->message = s->message;
    if (s->source_down && !s->stopping && !s->paused && !s->degraded) {
        /* filled on each status: the message says for how long */
        snprintf(s->status_msg, sizeof(s->status_msg),
                 "the source is unavailable for %.0f s; retrying every %.0f s (at most "
                 "%d s); last error: %s",
                 (double)(wr_now_ms() - s->source_down_since) / 1000.0,
                 (double)s->source_retry_ms / 1000.0, SUP_OUTAGE_MAX_MS / 1000, s->source_err);
        r->message = s->status_msg;
    } else if (!s->message[0] && !s->stopping && !s->paused && s->apply.failures > 0 &&
               s->apply.err_msg[0]) {
        /* restarting after an error (a full destination disk, a destination error): say
         * which, until it runs healthy again */
        snprintf(s->status_msg, sizeof(s->status_msg),
                 "the apply worker is restarted after %u failure%s in a row; last error: %s",
                 s->apply.failures, s->apply.failures == 1 ? "" : "s", s->apply.err_msg);
        r->message = s->status_msg;
    }
    r->pid = (int64_t)getpid();
    r->flush_lsn = s->flush_lsn;
    r->received_lsn = s->received_lsn;
    r->events = s->events;

    state_table_t *st = NULL;
    size_t nst = 0;
    if (s->st->ops->list_tables(s->st, &st, &nst, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    r->tables = calloc(nst ? nst : 1, sizeof(*r->tables));
    r->workers = calloc(s->ntables + 1, sizeof(*r->workers));
    if (!r->tables || !r->workers) {
        free(st);
        sup_status_free(out);
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    /* The table entries point into the stored rows: they live until the next status. */
    free(s->status_rows);
    s->status_rows = st;
    while (first < nst && st[first].relid <= after)
        first++; /* list_tables is in relid order */
    for (size_t i = first; i < nst; i++) {
        ipc_table_info_t *ti = &r->tables[r->ntables];
        const state_table_t *row = &st[i];
        if (r->ntables > 0 &&
            (bytes >= IPC_STATUS_PAGE_BYTES || r->ntables >= IPC_STATUS_PAGE_TABLES)) {
            r->more = true; /* the CLI asks again from the last relid sent */
            break;
        }
        r->ntables++;
        const sup_table_t *t = sup__find_table(s, row->relid);
        ti->relid = row->relid;
        ti->nsp = (char *)(t ? t->nsp : row->nsp);
        ti->name = (char *)(t ? t->name : row->name);
        ti->phase = row->phase;
        ti->lsn = row->lsn;
        ti->rows_copied = t ? t->rows_copied : 0;
        ti->attempts = row->attempts;
        if (row->phase == PH_ERRORED && strcmp(row->err_kind, "transient") == 0 &&
            (int)row->attempts >= s->cfg.table_error_retry_max_attempts) {
            /* st[i] is ours until the next status: say that nothing will happen by itself */
            size_t used = strlen(st[i].err_msg);
            snprintf(st[i].err_msg + used, sizeof(st[i].err_msg) - used,
                     " (automatic retries exhausted: %u of %d; fix the cause, then walrelay "
                     "retry)",
                     row->attempts, s->cfg.table_error_retry_max_attempts);
        }
        ti->err_kind = (char *)row->err_kind;
        ti->err_msg = (char *)row->err_msg;
        ti->err_hint = (char *)row->err_hint;
        bytes += status_row_bytes(ti);
    }

    uint32_t nw = 0;
    for (size_t i = 0; i <= s->ntables; i++) {
        sup_worker_t *w = i == 0 ? &s->apply : &s->tables[i - 1]->sync;
        if (!w->is_apply && w->state == W_IDLE && !w->p)
            continue;
        ipc_worker_info_t *wi = &r->workers[nw++];
        wi->role = w->is_apply ? "apply" : "sync";
        wi->relid = w->relid;
        wi->pid = w->p && !w->p->exited ? w->p->pid : 0;
        wi->restarts = w->restarts;
        wi->state = (char *)wstate_names[w->state];
    }
    r->nworkers = nw;
    sup_status_dest_wait(s, r);
    return 0;
}

void
sup_status_free(ipc_msg_t *m)
{
    free(m->u.status_reply.tables);
    free(m->u.status_reply.workers);
    m->u.status_reply.tables = NULL;
    m->u.status_reply.workers = NULL;
}
