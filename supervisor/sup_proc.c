/*
 * sup_proc.c - the supervisor's process layer: spawns the workers, talks to them over
 * their channels, handles their exits and restarts, signals, the stop and the tick.
 *
 * NOTES: runs in the `walrelay run` process, on its libuv loop. Owns the worker table
 * (sup_worker_t, sup_proc_t: pid, channel, state, backoff), the channel protocol (hello,
 * welcome + tables, set_phase and schema requests, acks; a bad message is answered with an
 * error and the worker is killed, never trusted) and the restart policy described in
 * sup.c. It persists nothing itself: a worker's set_phase and schema requests are
 * persisted through the table layer (sup_table.c) before they are acked; progress
 * (confirmed_flush) is saved at most every SUP_PROGRESS_SAVE_MS and at the stop. The
 * workers' worker_metrics and streaming messages, their exits and restarts are handed to
 * metrics.c (metrics.h), which the tick also drives.
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

#include "../common/failpoint.h"
#include "../common/log.h"
#include "../common/repl.h"
#include "../common/state.h"
#include "sup_int.h"
#include "../destinations/destination.h"
#include "../destinations/registry.h"

static char sup_readbuf[65536];
/* ---- shared helpers (sup.h) ---- */

int
sup_path(const char *dir, const char *file, char *buf, size_t len, wr_err_t *err)
{
    int n = snprintf(buf, len, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= len)
        return wr_err_set(err, WR_EINVAL, "path \"%s/%s\" is too long", dir, file);
    return 0;
}

int
sup_sock_path(const char *dir, char *buf, size_t len, wr_err_t *err)
{
    char tmp[PATH_MAX];
    if (sup_path(dir, SUP_SOCK_FILE, tmp, sizeof(tmp), err) != 0)
        return WR_EINVAL;
    size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
    if (strlen(tmp) > max || strlen(tmp) >= len) {
        wr_err_set(err, WR_ECONFIG,
                   "control socket path \"%s\" is %zu bytes, unix sockets allow %zu", tmp,
                   strlen(tmp), max);
        wr_err_hint(err, "use a config directory with a shorter path");
        return WR_ECONFIG;
    }
    memcpy(buf, tmp, strlen(tmp) + 1);
    return 0;
}

typedef struct sup_wreq_s {
    uv_write_t req;
    char *data;
} sup_wreq_t;

static void
stream_write_cb(uv_write_t *req, int status)
{
    sup_wreq_t *wr = (sup_wreq_t *)req;
    if (status < 0 && status != UV_ECANCELED)
        log_debug("write failed error=%s", uv_strerror(status));
    free(wr->data);
    free(wr);
}

static int stream_write_sbuffer(uv_stream_t *stream, msgpack_sbuffer *sb);

int
sup_stream_send(uv_stream_t *stream, const ipc_msg_t *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = ipc_encode(m, &sb);
    if (rc != 0) {
        msgpack_sbuffer_destroy(&sb);
        return rc;
    }
    return stream_write_sbuffer(stream, &sb);
}

/* Queues the encoded bytes of sb on stream (sb is taken over, freed when written). */
static int
stream_write_sbuffer(uv_stream_t *stream, msgpack_sbuffer *sbp)
{
    msgpack_sbuffer sb = *sbp;
    int rc;
    sup_wreq_t *wr = malloc(sizeof(*wr));
    if (!wr) {
        msgpack_sbuffer_destroy(&sb);
        return WR_ENOMEM;
    }
    size_t len = sb.size;
    wr->data = msgpack_sbuffer_release(&sb);
    uv_buf_t buf = uv_buf_init(wr->data, (unsigned)len);
    rc = uv_write(&wr->req, stream, &buf, 1, stream_write_cb);
    if (rc != 0) {
        log_debug("write failed error=%s", uv_strerror(rc));
        free(wr->data);
        free(wr);
        return WR_EIO;
    }
    return 0;
}

uv_loop_t *
sup_loop(sup_t *s)
{
    return &s->loop;
}

/* ---- worker processes ---- */

static void
proc_free_if_closed(sup_proc_t *p)
{
    if (p->open_handles > 0)
        return;
    if (p->rd_ok)
        ipc_reader_close(&p->rd);
    free(p);
}

static void
proc_handle_closed_cb(uv_handle_t *h)
{
    sup_proc_t *p = h->data;
    p->open_handles--;
    proc_free_if_closed(p);
}

/* The exit is handled when the process is gone AND every message it sent was read. */
static void
proc_maybe_finished(sup_proc_t *p)
{
    if (!p->exited || !p->chan_done || !p->w)
        return;
    sup_worker_t *w = p->w;
    p->w = NULL;
    if (w->p == p)
        w->p = NULL;
    sup__worker_exited(w, p);
}

static void
proc_close_chan(sup_proc_t *p)
{
    if (p->chan_done)
        return;
    p->chan_done = true;
    uv_read_stop((uv_stream_t *)&p->chan);
    uv_close((uv_handle_t *)&p->chan, proc_handle_closed_cb);
}

void
sup__proc_kill(sup_proc_t *p, const char *why)
{
    if (!p->exited) {
        log_warn("killing worker worker=%s pid=%lld reason=\"%s\"", p->w ? p->w->name : "?",
                 (long long)p->pid, why);
        int rc = uv_process_kill(&p->proc, SIGKILL);
        if (rc != 0 && rc != UV_ESRCH)
            log_error("kill failed worker=%s pid=%lld error=%s", p->w ? p->w->name : "?",
                      (long long)p->pid, uv_strerror(rc));
    }
    proc_close_chan(p);
}

static void
exit_cb(uv_process_t *h, int64_t exit_status, int term_signal)
{
    sup_proc_t *p = h->data;
    p->exited = true;
    p->exit_status = exit_status;
    p->term_signal = term_signal;
    p->exited_at = wr_now_ms();
    uv_close((uv_handle_t *)&p->proc, proc_handle_closed_cb);
    proc_maybe_finished(p);
}

/* ---- messages from workers ---- */

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

/* The tables message(s) of the handshake: every table for the apply worker, its own for a
 * sync worker; a long list goes in IPC_TABLES_CHUNK-table messages (issue 12, defect 10:
 * one message had no bound, and past IPC_MAX_MSG the apply worker never started). */
static int
send_tables(sup_t *s, sup_proc_t *p, sup_worker_t *w)
{
    size_t n = w->is_apply ? s->ntables : 1;
    ipc_table_info_t *ti = calloc(n ? n : 1, sizeof(*ti));
    msgpack_sbuffer sb;
    int rc;

    if (!ti)
        return WR_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const sup_table_t *t = w->is_apply ? s->tables[i] : w->table;
        ti[i].relid = t->relid;
        ti[i].nsp = (char *)t->nsp;
        ti[i].name = (char *)t->name;
        ti[i].phase = t->phase;
        ti[i].lsn = t->lsn;
        ti[i].dest_name = (char *)t->dest_name;
    }
    msgpack_sbuffer_init(&sb);
    rc = ipc_encode_tables(ti, (uint32_t)n, &sb);
    free(ti);
    if (rc != 0) {
        msgpack_sbuffer_destroy(&sb);
        return rc;
    }
    if (p->chan_done) {
        msgpack_sbuffer_destroy(&sb);
        return 0;
    }
    if (stream_write_sbuffer((uv_stream_t *)&p->chan, &sb) != 0)
        log_warn("cannot send to worker worker=%s type=tables", w->name);
    return 0;
}

static void refuse_handshake(sup_proc_t *p, const char *fmt, ...) WR_PRINTF(2, 3);

static void
refuse_handshake(sup_proc_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->fatal_msg, sizeof(p->fatal_msg), fmt, ap);
    va_end(ap);
    log_error("worker refused worker=%s pid=%lld reason=\"%s\"", p->w->name, (long long)p->pid,
              p->fatal_msg);
    sup__proc_send_error(p, p->fatal_msg);
    p->fatal = true;
    sup__proc_kill(p, "handshake refused");
}

static void
on_hello(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    if (p->hello) {
        sup__proc_send_error(p, "duplicate \"hello\"");
        return;
    }
    const char *want_role = w->is_apply ? "apply" : "sync";
    if (m->u.hello.version != IPC_PROTO_VERSION) {
        refuse_handshake(p, "protocol version %u is not supported, the supervisor speaks %u",
                         m->u.hello.version, IPC_PROTO_VERSION);
        return;
    }
    if (!m->u.hello.role || strcmp(m->u.hello.role, want_role) != 0) {
        refuse_handshake(p, "role \"%s\" does not match \"%s\"",
                         m->u.hello.role ? m->u.hello.role : "", want_role);
        return;
    }
    if (!w->is_apply && m->u.hello.relid != w->relid) {
        refuse_handshake(p, "relid %u does not match %u", m->u.hello.relid, w->relid);
        return;
    }
    if (m->u.hello.pid != p->pid)
        log_warn("worker reports another pid worker=%s pid=%lld reported=%lld", w->name,
                 (long long)p->pid, (long long)m->u.hello.pid);
    p->hello = true;
    w->state = s->stopping || w->stop_sent ? W_STOPPING : W_RUNNING;
    if (w->is_apply) {
        /* it learns every table's phase from the tables message below: nothing it could
         * have written of an Init table is pending */
        s->apply_fenced = true;
        for (size_t i = 0; i < s->ntables; i++)
            s->tables[i]->init_unacked = false;
    }
    log_info("worker ready worker=%s pid=%lld", w->name, (long long)p->pid);

    ipc_msg_t wm;
    memset(&wm, 0, sizeof(wm));
    wm.type = IPC_WELCOME;
    wm.u.welcome.version = IPC_PROTO_VERSION;
    wm.u.welcome.pipeline = s->cfg.pipeline_name;
    sup__proc_send(p, &wm);
    if (send_tables(s, p, w) != 0) {
        sup__proc_kill(p, "out of memory sending tables");
        return;
    }
    if (s->stopping || w->stop_sent) {
        ipc_msg_t st;
        memset(&st, 0, sizeof(st));
        st.type = IPC_STOP;
        sup__proc_send(p, &st);
    }
    if (w->is_apply)
        sup__schedule(s); /* copies of Init tables waited for this hello */
}

static void
on_set_phase(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    uint32_t req = m->u.set_phase.req;
    uint32_t relid = m->u.set_phase.relid;
    wr_phase_t to = m->u.set_phase.phase;
    char msg[600];

    sup_table_t *t = sup__find_table(s, relid);
    if (!t) {
        snprintf(msg, sizeof(msg), "unknown table relid %u", relid);
        log_warn("set_phase refused worker=%s reason=\"%s\"", w->name, msg);
        send_ack(p, req, false, msg);
        return;
    }
    if (!w->is_apply && relid != w->relid) {
        snprintf(msg, sizeof(msg), "the sync worker of relid %u cannot change table \"%s.%s\"",
                 w->relid, t->nsp, t->name);
        log_warn("set_phase refused worker=%s reason=\"%s\"", w->name, msg);
        send_ack(p, req, false, msg);
        return;
    }
    if (!phase_transition_ok(t->phase, to)) {
        snprintf(msg, sizeof(msg), "illegal phase change for table \"%s.%s\": %s -> %s", t->nsp,
                 t->name, phase_name(t->phase), phase_name(to));
        log_warn("set_phase refused worker=%s reason=\"%s\"", w->name, msg);
        send_ack(p, req, false, msg);
        return;
    }
    bool errored = to == PH_ERRORED;
    const char *kind = errored ? m->u.set_phase.err_kind : NULL;
    const char *emsg = errored ? m->u.set_phase.err_msg : NULL;
    const char *hint = errored ? m->u.set_phase.err_hint : NULL;
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->set_phase(s->st, relid, to, m->u.set_phase.lsn, kind, emsg, hint, &err) != 0) {
        log_err(LOG_LVL_ERROR, "persisting a phase change", &err);
        snprintf(msg, sizeof(msg), "cannot persist the phase change: %.400s", err.msg);
        send_ack(p, req, false, msg);
        return;
    }
    {
        /* persisted, nothing acted on yet: kill -9 here is a crash between the two */
        char fp[64];
        snprintf(fp, sizeof(fp), "sup.phase_persisted.%s", phase_name(to));
        FAILPOINT(fp);
    }
    wr_phase_t from = t->phase;
    t->phase = to;
    t->lsn = m->u.set_phase.lsn;
    snprintf(t->err_kind, sizeof(t->err_kind), "%s", errored && kind ? kind : "");
    if (errored) {
        t->errored_at = wr_now_ms();
        t->exhausted_logged = false;
    }
    sup__metrics_phase(s, t, to, kind);
    if (errored)
        log_error("table errored table=%s.%s relid=%u worker=%s kind=%s message=\"%s\"", t->nsp,
                  t->name, relid, w->name, kind ? kind : "", emsg ? emsg : "");
    else
        log_info(
            "table phase changed table=%s.%s relid=%u from=%s to=%s lsn=" WR_LSN_FMT " worker=%s",
            t->nsp, t->name, relid, phase_name(from), phase_name(to), WR_LSN_ARGS(t->lsn), w->name);
    if ((to == PH_SYNCDONE || to == PH_READY) && t->sync.failures > 0) {
        t->sync.failures = 0;
        sup__persist_attempts(s, t);
    }
    /* a sync worker starting over (a schema change in its catch-up): the apply worker
     * acknowledges before the copy truncates; the apply worker's own request is its ack */
    if (to == PH_INIT)
        t->init_unacked = !w->is_apply && sup__proc_can_talk(s->apply.p);
    if (to == PH_INIT && t->sync.state == W_FAILED) {
        t->sync.state = W_IDLE;
        t->sync.failures = 0;
        sup__persist_attempts(s, t);
    }
    send_ack(p, req, true, "");
    sup__broadcast_table_state(s, t, p);
    sup__schedule(s);
}

static void
on_schema(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    uint32_t req = m->u.schema.req;
    uint32_t relid = m->u.schema.relid;
    char msg[600];
    sup_table_t *t = sup__find_table(s, relid);
    if (!t || !m->u.schema.schema) {
        snprintf(msg, sizeof(msg), "unknown table relid %u", relid);
        send_ack(p, req, false, msg);
        return;
    }
    if (!w->is_apply && relid != w->relid) {
        snprintf(msg, sizeof(msg),
                 "the sync worker of relid %u cannot store the schema of \"%s.%s\"", w->relid,
                 t->nsp, t->name);
        send_ack(p, req, false, msg);
        return;
    }
    wr_err_t err;
    wr_err_clear(&err);
    /* the newest version read back from the store, written through: a worker that sends
     * the same schema again (every apply worker start does) adds no row */
    if (t->schema && m->u.schema.lsn >= t->schema_lsn &&
        wr_schema_equal(t->schema, m->u.schema.schema)) {
        log_debug("schema unchanged table=%s.%s relid=%u lsn=" WR_LSN_FMT " stored=" WR_LSN_FMT,
                  t->nsp, t->name, relid, WR_LSN_ARGS(m->u.schema.lsn), WR_LSN_ARGS(t->schema_lsn));
        send_ack(p, req, true, "");
        return;
    }
    if (s->st->ops->put_schema(s->st, m->u.schema.schema, m->u.schema.lsn, &err) != 0) {
        log_err(LOG_LVL_ERROR, "persisting a schema", &err);
        snprintf(msg, sizeof(msg), "cannot persist the schema: %.400s", err.msg);
        send_ack(p, req, false, msg);
        return;
    }
    if (m->u.schema.lsn >= t->schema_lsn || !t->schema) {
        wr_schema_t *copy = wr_schema_copy(m->u.schema.schema);
        if (copy) {
            wr_schema_free(t->schema);
            t->schema = copy;
            t->schema_lsn = m->u.schema.lsn;
        }
    }
    log_info("schema stored table=%s.%s relid=%u lsn=" WR_LSN_FMT " columns=%u worker=%s", t->nsp,
             t->name, relid, WR_LSN_ARGS(m->u.schema.lsn), (unsigned)m->u.schema.schema->ncols,
             w->name);
    send_ack(p, req, true, "");
}

static void
on_message(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    char msg[200];
    if (!p->hello && m->type != IPC_HELLO) {
        snprintf(msg, sizeof(msg), "expected \"hello\" first, got \"%s\"", ipc_type_name(m->type));
        log_warn("protocol error worker=%s error=\"%s\"", w->name, msg);
        sup__proc_send_error(p, msg);
        sup__proc_kill(p, "no hello");
        return;
    }
    switch (m->type) {
    case IPC_HELLO:
        on_hello(s, p, m);
        return;
    case IPC_SET_PHASE:
        on_set_phase(s, p, m);
        return;
    case IPC_SCHEMA:
        on_schema(s, p, m);
        return;
    case IPC_PROGRESS:
        if (!w->is_apply)
            break;
        /* only the flush LSN is persisted: an unchanged one is not written again (an idle
         * pipeline would write its store every second) */
        if (m->u.progress.flush_lsn != s->flush_lsn)
            s->progress_dirty = true;
        s->flush_lsn = m->u.progress.flush_lsn;
        s->received_lsn = m->u.progress.received_lsn;
        s->events = m->u.progress.events;
        sup__source_ok(s, p); /* it streams, and is well: */
        w->err_kind[0] = w->err_msg[0] = w->err_hint[0] = '\0';
        return;
    case IPC_COPY_PROGRESS: {
        sup_table_t *t = sup__find_table(s, m->u.copy_progress.relid);
        if (w->is_apply || !t || t->relid != w->relid)
            break;
        t->rows_copied = m->u.copy_progress.rows;
        sup__source_ok(s, p); /* it copies, and is well: */
        w->err_kind[0] = w->err_msg[0] = w->err_hint[0] = '\0';
        sup__metrics_copy_progress(s, t, p->pid, m->u.copy_progress.rows);
        return;
    }
    case IPC_WORKER_METRICS:
        sup__metrics_worker_report(s, w, m);
        if (m->u.worker_metrics.bytes_received > 0)
            sup__source_ok(s, p); /* it receives from the source (a catch-up streams) */
        return;
    case IPC_STREAMING:
        if (!w->is_apply)
            break;
        sup__metrics_streaming(s, m->u.streaming.start_lsn);
        return;
    case IPC_DEST_WAIT: {
        const char *dm = m->u.dest_wait.message ? m->u.dest_wait.message : "";
        if (dm[0] != '\0' && p->dest_wait[0] == '\0')
            p->dest_wait_since = wr_now_ms();
        wr_copy_text(p->dest_wait, sizeof(p->dest_wait), dm);
        return;
    }
    case IPC_ERROR:
        log_warn("worker rejected a message worker=%s message=\"%s\"", w->name,
                 m->u.error.message ? m->u.error.message : "");
        return;
    case IPC_TABLE_ACK: {
        sup_table_t *t = sup__find_table(s, m->u.table_state.relid);
        if (!w->is_apply)
            break;
        if (t && t->init_unacked && t->phase == PH_INIT && m->u.table_state.phase == PH_INIT) {
            t->init_unacked = false;
            log_info("apply worker acknowledged init, the copy may start table=%s.%s relid=%u",
                     t->nsp, t->name, t->relid);
            sup__schedule(s);
        }
        return;
    }
    case IPC_WORKER_ERROR:
        /* the worker logged it already; kept for status and for its exit's handling */
        wr_copy_text(w->err_kind, sizeof(w->err_kind), m->u.worker_error.kind);
        wr_copy_text(w->err_msg, sizeof(w->err_msg), m->u.worker_error.message);
        wr_copy_text(w->err_hint, sizeof(w->err_hint), m->u.worker_error.hint);
        log_debug("worker reported its error worker=%s kind=%s", w->name, w->err_kind);
        return;
    default:
        if (sup__copy_on_message(s, p, m))
            return;
        break;
    }
    snprintf(msg, sizeof(msg), "unexpected message \"%s\" from the %s worker",
             ipc_type_name(m->type), w->is_apply ? "apply" : "sync");
    log_warn("protocol error worker=%s error=\"%s\"", w->name, msg);
    sup__metrics_error(s, "protocol");
    sup__proc_send_error(p, msg);
}

static void
chan_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    WR_UNUSED(h);
    WR_UNUSED(suggested);
    buf->base = sup_readbuf;
    buf->len = sizeof(sup_readbuf);
}

static void
chan_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    sup_proc_t *p = stream->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* ECONNRESET: the worker exited with our last messages unread; same as EOF */
        if (nread != UV_EOF && nread != UV_ECONNRESET)
            log_warn("worker channel read failed worker=%s error=%s", p->w ? p->w->name : "?",
                     uv_strerror((int)nread));
        proc_close_chan(p);
        proc_maybe_finished(p);
        return;
    }
    if (!p->w) /* exit already handled; ignore leftovers */
        return;
    sup_t *s = p->sup;
    wr_err_t err;
    wr_err_clear(&err);
    if (ipc_reader_feed(&p->rd, buf->base, (size_t)nread, &err) != 0) {
        log_error("broken worker channel worker=%s error=\"%s\"", p->w->name, err.msg);
        sup__proc_kill(p, "broken channel");
        return;
    }
    while (p->w && !p->chan_done) {
        ipc_msg_t m;
        int rc = ipc_reader_next(&p->rd, &m, &err);
        if (rc == 0)
            break;
        if (rc == 1) {
            on_message(s, p, &m);
            ipc_msg_clear(&m);
            continue;
        }
        if (rc == WR_EPROTO && !p->rd.broken) {
            log_warn("invalid message from worker worker=%s error=\"%s\"", p->w->name, err.msg);
            sup__metrics_error(s, "protocol");
            sup__proc_send_error(p, err.msg[0] ? err.msg : "invalid message");
            continue;
        }
        log_error("broken worker channel worker=%s error=\"%s\"", p->w->name,
                  err.msg[0] ? err.msg : "not msgpack");
        sup__proc_kill(p, "broken channel");
        break;
    }
}

/* ---- spawning, exits and restarts ---- */

static int64_t
backoff_ms(const sup_t *s, uint32_t failures)
{
    int64_t d = s->cfg.backoff_initial_ms > 0 ? s->cfg.backoff_initial_ms : 1000;
    for (uint32_t i = 1; i < failures && d < s->cfg.backoff_max_ms; i++)
        d *= 2;
    if (d > s->cfg.backoff_max_ms && s->cfg.backoff_max_ms > 0)
        d = s->cfg.backoff_max_ms;
    return d;
}

static void
backoff_timer_cb(uv_timer_t *h)
{
    sup_worker_t *w = h->data;
    sup_t *s = w->sup;
    if (w->state != W_BACKOFF)
        return;
    w->state = W_IDLE;
    if (s->stopping) {
        sup__check_stopped(s);
        return;
    }
    if (s->paused)
        return; /* resume starts it */
    if (!w->is_apply && !phase_needs_sync_worker(w->table->phase)) {
        sup__schedule(s);
        return;
    }
    sup__worker_spawn(w);
    if (!w->is_apply)
        sup__schedule(s);
}

static void
worker_restart_later(sup_worker_t *w, int64_t delay)
{
    w->state = W_BACKOFF;
    if (!w->timer_ok) {
        uv_timer_init(&w->sup->loop, &w->timer);
        w->timer.data = w;
        w->timer_ok = true;
    }
    log_info("worker restart scheduled worker=%s in_ms=%lld failures=%u", w->name, (long long)delay,
             w->failures);
    uv_timer_start(&w->timer, backoff_timer_cb, (uint64_t)delay, 0);
}

/* What the exit was, for logs and error messages. */
static void
describe_exit(const sup_proc_t *p, char *buf, size_t len)
{
    if (p->fatal)
        snprintf(buf, len, "refused at handshake: %s", p->fatal_msg);
    else if (p->term_signal)
        snprintf(buf, len, "killed by signal %d (%s)", p->term_signal, strsignal(p->term_signal));
    else
        snprintf(buf, len, "exit code %lld", (long long)p->exit_status);
}

/* A worker exited 4 (WR_EXIT_SOURCE_DOWN): the source is away. The worker is started
 * again after backoff_initial_ms doubling up to backoff_max_ms but at most
 * SUP_OUTAGE_MAX_MS, for as long as the outage lasts, and it is not counted as a failure
 * (issue 12, defect 1). The pipeline's state says so, with the last error, until a worker
 * streams or copies again (sup__source_ok). */
static void
worker_source_down(sup_t *s, sup_worker_t *w)
{
    int64_t cap =
        s->cfg.backoff_max_ms < SUP_OUTAGE_MAX_MS ? s->cfg.backoff_max_ms : SUP_OUTAGE_MAX_MS;
    int64_t d = s->cfg.backoff_initial_ms > 0 ? s->cfg.backoff_initial_ms : 1000;

    for (uint32_t i = 0; i < w->outages && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    w->outages++;
    if (w->err_msg[0])
        wr_copy_text(s->source_err, sizeof(s->source_err), w->err_msg);
    if (!s->source_down) {
        s->source_down = true;
        s->source_down_since = wr_now_ms();
        log_warn("the source is unavailable, the workers wait for it (retried every %lld ms at "
                 "most) worker=%s error=\"%s\"",
                 (long long)cap, w->name, s->source_err);
    }
    s->source_retry_ms = d;
    worker_restart_later(w, d);
}

/* A worker streams or copies: the outage is over, unless that process was started
 * before the outage began (what it reports may come from its old connection's buffer,
 * read after the source went away: a copy goes on for a while on the rows it holds). */
void
sup__source_ok(sup_t *s, const sup_proc_t *p)
{
    if (!s->source_down || p->spawned_at < s->source_down_since)
        return;
    log_info("the source is back after %.1f s",
             (double)(wr_now_ms() - s->source_down_since) / 1000.0);
    s->source_down = false;
    s->source_err[0] = '\0';
    s->apply.outages = 0;
    for (size_t i = 0; i < s->ntables; i++)
        s->tables[i]->sync.outages = 0;
}

/* The apply worker cannot go on by itself: nothing of the pipeline can progress any more,
 * so walrelay run stops and exits with code (2: a person must fix something, 1: let the
 * service manager start it again), the worker's last error in its message. */
static void
apply_gave_up(sup_t *s, sup_worker_t *w, int code, const char *what)
{
    w->state = W_FAILED;
    s->degraded = true;
    /* a long error is cut to fit (the log line below has the same cut message) */
    if (snprintf(s->message, sizeof(s->message), "%s%s%s", what, w->err_msg[0] ? ": " : "",
                 w->err_msg) >= (int)sizeof(s->message))
        log_debug("the apply worker's error was cut to fit the status message");
    if (w->err_hint[0])
        snprintf(s->fatal_hint, sizeof(s->fatal_hint), "%s", w->err_hint);
    log_error("the apply worker cannot go on, stopping the pipeline exit_code=%d reason=\"%s\"",
              code, s->message);
    s->exit_code = code;
    sup__stop_begin(s, "the apply worker cannot go on");
}

/* Counts a failure; returns true if the worker should be restarted. */
static bool
worker_count_failure(sup_worker_t *w)
{
    w->failures++;
    if (!w->is_apply)
        sup__persist_attempts(w->sup, w->table);
    return (int)w->failures < w->sup->cfg.worker_max_failures;
}

static void
apply_exited(sup_t *s, sup_worker_t *w, sup_proc_t *p, const char *how)
{
    bool fatal = p->fatal || (!p->term_signal && p->exit_status == WR_EXIT_CONFIG);
    bool stopped_by_us = w->stop_sent, reload = w->restart_after_stop;
    /* the process is gone with whatever it had not committed: no Init waits for it */
    for (size_t i = 0; i < s->ntables; i++)
        s->tables[i]->init_unacked = false;
    w->stop_sent = false;
    w->restart_after_stop = false;
    if (s->stopping) {
        w->state = W_IDLE;
        return;
    }
    if (!p->fatal && !p->term_signal && p->exit_status == WR_EXIT_SLOT_LOST) {
        sup__apply_slot_lost(s, w);
        return;
    }
    if (stopped_by_us && !fatal) {
        /* pause, reload, or a resume that came before it had stopped */
        w->state = W_IDLE;
        if (!s->paused) {
            log_info("starting the apply worker again%s",
                     reload ? " with the reloaded configuration" : "");
            sup__worker_spawn(w);
        }
        return;
    }
    if (fatal) {
        char what[1200];
        if (p->dest_wait[0] != '\0')
            /* the destination's last word (issue 9: a webhook that refused a batch) */
            snprintf(what, sizeof(what), "the apply worker failed (%s) and cannot go on: %s", how,
                     p->dest_wait);
        else
            snprintf(what, sizeof(what), "the apply worker failed (%s) and cannot go on", how);
        apply_gave_up(s, w, WR_EXIT_CONFIG, what);
        return;
    }
    if (!p->fatal && !p->term_signal && p->exit_status == WR_EXIT_SOURCE_DOWN) {
        worker_source_down(s, w);
        return;
    }
    if (!p->term_signal && p->exit_status == 0)
        log_warn("apply worker exited on its own, restarting worker=%s", w->name);
    if (!worker_count_failure(w)) {
        char what[600];
        snprintf(what, sizeof(what), "the apply worker failed %u times in a row (last: %s)",
                 w->failures, how);
        apply_gave_up(s, w, WR_EXIT_ERROR, what);
        return;
    }
    worker_restart_later(w, backoff_ms(s, w->failures));
}

static void
sync_exited(sup_t *s, sup_worker_t *w, sup_proc_t *p, const char *how)
{
    sup_table_t *t = w->table;
    bool clean = !p->fatal && !p->term_signal && p->exit_status == 0;
    bool fatal = p->fatal || (!p->term_signal && p->exit_status == WR_EXIT_CONFIG);
    bool stopped_by_us = w->stop_sent;
    w->stop_sent = false;
    w->restart_after_stop = false;
    if (t->resync_pending) {
        /* walrelay resync (or a re-copy after a lost slot) waited for this exit; Init is
         * persisted even if we are stopping, so the next start copies the table again */
        wr_err_t err;
        wr_err_clear(&err);
        w->state = W_IDLE;
        (void)sup__table_do_resync(s, t, &err);
        return;
    }
    /* in the handoff without its worker: the apply worker must not wait for a catch-up
     * that nobody serves (issue 12, defect 8); the next worker asks for SyncWait again */
    sup__table_handoff_paused(s, t);
    if (s->stopping) {
        w->state = W_IDLE;
        return;
    }
    if (!phase_needs_sync_worker(t->phase)) {
        /* done (SyncDone/Ready) or Errored: the slot is free whatever the exit code */
        w->state = W_IDLE;
        log_info("sync worker finished table=%s.%s phase=%s pid=%lld exit=\"%s\"", t->nsp, t->name,
                 phase_name(t->phase), (long long)p->pid, how);
        return;
    }
    if (fatal) {
        char msg[640];
        if (p->fatal)
            snprintf(msg, sizeof(msg), "sync worker %s", how);
        else if (p->dest_wait[0] != '\0')
            snprintf(msg, sizeof(msg), "sync worker exited with code %lld: %s",
                     (long long)p->exit_status, p->dest_wait);
        else
            snprintf(msg, sizeof(msg), "sync worker exited with code %lld",
                     (long long)p->exit_status);
        w->state = W_FAILED;
        sup__table_set_errored(s, t, "worker_failed", msg,
                               "see the log; fix the cause, then walrelay retry DIR TABLE");
        return;
    }
    if (stopped_by_us && !p->term_signal) {
        /* pause or reload: sup__schedule starts it again unless paused */
        w->state = W_IDLE;
        return;
    }
    if (!p->fatal && !p->term_signal && p->exit_status == WR_EXIT_SOURCE_DOWN) {
        worker_source_down(s, w);
        return;
    }
    if (clean) {
        /* stopped before its table was done: start it again, no failure counted */
        worker_restart_later(w, s->cfg.backoff_initial_ms < SUP_RESTART_FLOOR_MS
                                    ? s->cfg.backoff_initial_ms
                                    : SUP_RESTART_FLOOR_MS);
        return;
    }
    if (!worker_count_failure(w)) {
        char msg[512];
        snprintf(msg, sizeof(msg), "sync worker failed %u times in a row, last: %s", w->failures,
                 how);
        w->state = W_FAILED;
        sup__table_set_errored(s, t, "worker_crashed", msg,
                               "see the log; fix the cause, then walrelay retry DIR TABLE");
        return;
    }
    worker_restart_later(w, backoff_ms(s, w->failures));
}

void
sup__worker_exited(sup_worker_t *w, sup_proc_t *p)
{
    sup_t *s = w->sup;
    char how[400];
    describe_exit(p, how, sizeof(how));
    sup__metrics_worker_exit(s, w, p);
    if (p->term_signal)
        log_warn("WORKER KILLED BY SIGNAL worker=%s pid=%lld signal=%d signal_name=\"%s\" "
                 "restarts=%u",
                 w->name, (long long)p->pid, p->term_signal, strsignal(p->term_signal),
                 w->restarts);
    else if (p->exit_status == 0)
        log_info("worker exited worker=%s pid=%lld status=0", w->name, (long long)p->pid);
    else
        log_warn("worker exited worker=%s pid=%lld status=%lld", w->name, (long long)p->pid,
                 (long long)p->exit_status);
    if (!w->is_apply && w->table->removing && !s->stopping) {
        /* the table left the publication: its state goes now (frees w) */
        w->state = W_IDLE;
        w->stop_sent = false;
        sup__table_remove_now(s, w->table);
    } else if (w->is_apply) {
        apply_exited(s, w, p, how);
    } else {
        /* (issue 11) a sync worker that ended by itself ended its copy too (its slot is
         * dropped); one that was killed left its copy for the next to resume */
        if (!p->term_signal)
            sup__copy_release(w->table, "sync worker exited");
        sync_exited(s, w, p, how);
    }
    sup__schedule(s);
    sup__check_stopped(s);
}

void
sup__worker_spawn(sup_worker_t *w)
{
    sup_t *s = w->sup;
    sup_proc_t *p = calloc(1, sizeof(*p));
    if (!p || ipc_reader_init(&p->rd) != 0) {
        free(p);
        log_error("out of memory starting a worker worker=%s", w->name);
        if (worker_count_failure(w))
            worker_restart_later(w, backoff_ms(s, w->failures));
        else
            w->state = W_FAILED;
        return;
    }
    p->rd_ok = true;
    p->w = w;
    p->sup = s;
    p->spawned_at = wr_now_ms();

    char relid[16];
    snprintf(relid, sizeof(relid), "%u", w->relid);
    char *args[4];
    args[0] = w->is_apply ? s->apply_path : s->sync_path;
    args[1] = s->cfg.dir;
    args[2] = w->is_apply ? NULL : relid;
    args[3] = NULL;

    uv_pipe_init(&s->loop, &p->chan, 0);
    p->chan.data = p;
    p->proc.data = p;
    uv_stdio_container_t stdio[4];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 1;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
    stdio[3].data.stream = (uv_stream_t *)&p->chan;

    uv_process_options_t opt;
    memset(&opt, 0, sizeof(opt));
    opt.file = args[0];
    opt.args = args;
    opt.exit_cb = exit_cb;
    opt.stdio = stdio;
    opt.stdio_count = 4;
    /* Own session: a terminal's ^C reaches only the supervisor, which stops the workers
     * in order. Workers still exit on EOF of fd 3 if the supervisor dies. */
    opt.flags = UV_PROCESS_DETACHED;

    p->open_handles = 2;
    int rc = uv_spawn(&s->loop, &p->proc, &opt);
    if (w->ever_started) {
        w->restarts++;
        sup__metrics_restart(s, w);
    }
    w->ever_started = true;
    w->started_at = wr_now_ms();
    if (rc != 0) {
        log_error("cannot start worker worker=%s program=%s error=%s", w->name, args[0],
                  uv_strerror(rc));
        p->w = NULL;
        p->chan_done = true;
        uv_close((uv_handle_t *)&p->proc, proc_handle_closed_cb);
        uv_close((uv_handle_t *)&p->chan, proc_handle_closed_cb);
        if (!s->stopping && worker_count_failure(w)) {
            worker_restart_later(w, backoff_ms(s, w->failures));
        } else {
            w->state = W_FAILED;
            if (w->is_apply)
                apply_gave_up(s, w, WR_EXIT_ERROR, "cannot start the apply worker");
            else
                sup__table_set_errored(s, w->table, "worker_crashed",
                                       "cannot start the sync worker",
                                       "see the log; fix the cause, then walrelay retry DIR TABLE");
        }
        return;
    }
    p->pid = p->proc.pid;
    w->p = p;
    w->state = W_STARTING;
    w->stop_sent = false;
    w->restart_after_stop = false;
    log_info("worker started worker=%s pid=%lld restarts=%u", w->name, (long long)p->pid,
             w->restarts);
    rc = uv_read_start((uv_stream_t *)&p->chan, chan_alloc_cb, chan_read_cb);
    if (rc != 0) {
        log_error("cannot read the worker channel worker=%s error=%s", w->name, uv_strerror(rc));
        sup__proc_kill(p, "channel unreadable");
    }
}

/* Starts sync workers for tables in Init..Catchup, up to the limit: tables in the handoff
 * (FinishedCopy, SyncWait, Catchup) first, whose catch-up the apply worker serves, then
 * the copies, lowest relid first in each (issue 12, defect 8). A worker waiting in backoff
 * keeps its place. */
void
sup__schedule(sup_t *s)
{
    if (s->stopping || s->paused)
        return;
    int busy = 0;
    for (size_t i = 0; i < s->ntables; i++) {
        sup_worker_t *w = &s->tables[i]->sync;
        if (w->p || w->state == W_BACKOFF)
            busy++;
    }
    for (size_t k = 0; k < 2 * s->ntables && busy < s->cfg.max_table_sync_workers; k++) {
        sup_table_t *t = s->tables[k % s->ntables];
        bool handoff =
            t->phase == PH_FINISHEDCOPY || t->phase == PH_SYNCWAIT || t->phase == PH_CATCHUP;
        if (handoff != (k < s->ntables))
            continue; /* first pass: the handoffs; second: the copies */
        if (t->sync.state != W_IDLE || t->sync.p || !phase_needs_sync_worker(t->phase) ||
            t->removing || t->resync_pending)
            continue;
        /* a copy truncates the destination table: not before every apply worker that may
         * still write it has acknowledged Init (issue 12, defect 6) */
        if (t->phase == PH_INIT && (!s->apply_fenced || t->init_unacked))
            continue;
        sup__worker_spawn(&t->sync);
        busy++;
    }
}

/* ---- stop ---- */

static void
close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void
sup__save_progress(sup_t *s)
{
    state_progress_t pr;
    memset(&pr, 0, sizeof(pr));
    snprintf(pr.slot_name, sizeof(pr.slot_name), "%s", s->slot_name);
    pr.confirmed_flush = s->flush_lsn;
    wr_err_t err;
    wr_err_clear(&err);
    s->progress_saved_at = wr_now_ms();
    if (s->lease_lost)
        return; /* the store is fenced: nothing more is written */
    if (s->st->ops->set_progress(s->st, &pr, &err) != 0) {
        log_err(LOG_LVL_ERROR, "persisting progress", &err);
        return; /* still dirty: tried again SUP_PROGRESS_SAVE_MS later */
    }
    s->progress_dirty = false;
}

static bool
any_worker_alive(sup_t *s)
{
    if (s->apply.p)
        return true;
    for (size_t i = 0; i < s->ntables; i++)
        if (s->tables[i]->sync.p)
            return true;
    return false;
}

/* When stopping and every worker is gone: close all handles so the loop ends. */
void
sup__check_stopped(sup_t *s)
{
    if (!s->stopping || s->shut || any_worker_alive(s))
        return;
    s->shut = true;
    log_info("all workers stopped");
    if (s->progress_dirty)
        sup__save_progress(s);
    sup__http_close(s);
    sup__notify_close(s);
    if (s->ctl_ok)
        sup_control_close(&s->ctl);
    if (s->tick_ok)
        close_handle((uv_handle_t *)&s->tick);
    if (s->sig_ok) {
        close_handle((uv_handle_t *)&s->sig_term);
        close_handle((uv_handle_t *)&s->sig_int);
        close_handle((uv_handle_t *)&s->sig_hup);
    }
    if (s->apply.timer_ok)
        close_handle((uv_handle_t *)&s->apply.timer);
    for (size_t i = 0; i < s->ntables; i++)
        if (s->tables[i]->sync.timer_ok)
            close_handle((uv_handle_t *)&s->tables[i]->sync.timer);
}

void
sup__stop_worker(sup_worker_t *w)
{
    if (w->state == W_BACKOFF) {
        uv_timer_stop(&w->timer);
        w->state = W_IDLE;
    }
    if (!w->p)
        return;
    w->stop_sent = true;
    if (sup__proc_can_talk(w->p)) {
        ipc_msg_t m;
        memset(&m, 0, sizeof(m));
        m.type = IPC_STOP;
        sup__proc_send(w->p, &m);
        w->state = W_STOPPING;
    }
    /* a worker without hello gets ["stop"] right after its welcome (on_hello) */
}

void
sup__stop_begin(sup_t *s, const char *why)
{
    if (s->stopping) {
        log_info("already stopping reason=\"%s\"", why);
        return;
    }
    s->stopping = true;
    s->stop_deadline = wr_now_ms() + SUP_STOP_GRACE_MS;
    log_info("stopping reason=\"%s\"", why);
    sup__notify_stopping(s);
    sup__stop_worker(&s->apply);
    for (size_t i = 0; i < s->ntables; i++)
        sup__stop_worker(&s->tables[i]->sync);
    sup__check_stopped(s);
}

void
sup__signal_cb(uv_signal_t *h, int signum)
{
    sup_t *s = h->data;
    if (signum == SIGHUP) {
        char msg[2048];
        wr_err_t err;
        wr_err_clear(&err);
        log_info("received SIGHUP, reloading the configuration");
        if (sup_cmd_reload(s, msg, sizeof(msg), &err) != 0) /* logs the outcome itself */
            return;
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    sup__stop_begin(s, why);
}

/* ---- periodic work ---- */

static void
tick_worker(sup_t *s, sup_worker_t *w, int64_t now)
{
    sup_proc_t *p = w->p;
    if (p && !p->hello && !p->exited && now - w->started_at > SUP_HELLO_TIMEOUT_MS)
        sup__proc_kill(p, "no hello within 30 s");
    if (p && p->exited && !p->chan_done && now - p->exited_at > SUP_EOF_GRACE_MS) {
        /* a descendant kept fd 3 open: stop waiting for EOF */
        proc_close_chan(p);
        proc_maybe_finished(p);
        return;
    }
    if (w->state == W_RUNNING && w->failures > 0 &&
        now - w->started_at >= s->cfg.healthy_reset_ms) {
        log_info("worker healthy, failure count reset worker=%s failures=%u", w->name, w->failures);
        w->failures = 0;
        if (!w->is_apply)
            sup__persist_attempts(s, w->table);
    }
}

void
sup__tick_cb(uv_timer_t *h)
{
    sup_t *s = h->data;
    int64_t now = wr_now_ms();
    tick_worker(s, &s->apply, now);
    for (size_t i = 0; i < s->ntables; i++)
        tick_worker(s, &s->tables[i]->sync, now);
    sup__lease_tick(s, now);
    sup__copy_tick(s);
    if (s->progress_dirty && now - s->progress_saved_at >= SUP_PROGRESS_SAVE_MS)
        sup__save_progress(s);
    if (s->ctl_ok)
        sup_control_sweep(&s->ctl, now);
    sup__metrics_tick(s, now);
    if (!s->stopping) {
        for (size_t i = 0; i < s->ntables; i++)
            sup__tick_table_retry(s, s->tables[i], now);
        if (s->cfg.publication_refresh_ms > 0 &&
            now - s->last_refresh_ms >= s->cfg.publication_refresh_ms)
            sup__refresh_start(s);
    }
    if (s->stopping && !s->killed_all && now >= s->stop_deadline) {
        s->killed_all = true;
        log_warn("workers did not stop within %d s, killing them", SUP_STOP_GRACE_MS / 1000);
        if (s->apply.p)
            sup__proc_kill(s->apply.p, "stop timeout");
        for (size_t i = 0; i < s->ntables; i++)
            if (s->tables[i]->sync.p)
                sup__proc_kill(s->tables[i]->sync.p, "stop timeout");
    }
}
