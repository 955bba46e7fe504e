/*
 * sup.c - the supervisor (`walrelay run DIR`): one libuv loop that spawns, watches and
 * restarts the workers and relays their coordination.
 *
 * NOTES: runs in the `walrelay run` process. Owns DIR/walrelay.pid (flock held for the
 * life of the process), DIR/state.db (the only writer) and DIR/control.sock (control.c).
 *
 * Start: config -> pid lock -> preflight (nothing written yet) -> state.db -> reconcile the
 * tables with the publication -> control socket -> apply worker -> sync workers for tables
 * in Init..Catchup (at most [sync] max_table_sync_workers, lowest relid first) -> loop.
 *
 * Workers (walrelay-apply DIR, walrelay-sync DIR RELID) talk msgpack on their fd 3 (a
 * socketpair). The first message must be hello; we answer welcome + tables. A set_phase is
 * validated (phase_transition_ok), persisted, acked, and only then relayed as table_state
 * to the apply worker and the table's sync worker (except the requester), so what is on
 * disk is never behind what a worker believes.
 *
 * A worker's exit is handled once both its process has exited and its channel reached EOF
 * (so every message it sent before exiting has been processed). Exit 0 = done or stopped;
 * 2 = fatal (no restart: the table goes to Errored, or for apply the pipeline is
 * degraded); anything else, a signal, or apply exiting 0 on its own = a failure, restarted
 * after backoff_initial_ms doubling up to backoff_max_ms; worker_max_failures in a row
 * stop the restarts; healthy_reset_ms of running resets the count. Sync failures in a row
 * are persisted as the table's attempts.
 *
 * SIGTERM/SIGINT: stop starting workers, send ["stop"] to each, wait for all to exit
 * (SIGKILL after 30 s), then close everything and exit 0 (2 after a lost slot).
 *
 * Lifecycle (docs/lifecycle.md): the control commands retry, resync, pause, resume and
 * reload (SIGHUP too) are sup_cmd_*; a worker we asked to stop (stop_sent) exits 0 without
 * counting as a failure. Tables are allocated one by one (their timers are libuv handles)
 * and kept in an array of pointers sorted by relid, so the publication can gain and lose
 * tables while running: it is read again every publication_refresh_ms and on reload with
 * the preflight in libuv's thread pool (libpq blocks), results applied on the loop; a
 * removed table's sync slot is dropped in the thread pool too. An Errored table of kind
 * "transient" is retried from the tick after table_error_retry_delay_ms. Exit 3 of the
 * apply worker (its slot lost WAL) stops the pipeline, or re-copies every table once
 * (on_slot_lost = recopy). Pipeline flags in state.db: "paused", "slot_lost_recopied",
 * "slot_lost".
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
#include "sup.h"
#include "../destinations/destination.h"
#include "../destinations/registry.h"

static int sup_store_mapping(sup_t *s, uint32_t relid, const char *nsp, const char *name,
                             wr_err_t *err);

#define SUP_TICK_MS          1000
#define SUP_STOP_GRACE_MS    30000
#define SUP_HELLO_TIMEOUT_MS 30000
#define SUP_EOF_GRACE_MS     2000
#define SUP_PROGRESS_SAVE_MS 1000
#define SUP_RESTART_FLOOR_MS 1000

typedef enum {
    W_IDLE = 0, /* no process, nothing pending */
    W_STARTING, /* spawned, no hello yet */
    W_RUNNING,
    W_BACKOFF,  /* waiting to restart */
    W_STOPPING, /* sent ["stop"] */
    W_FAILED,   /* not restarted (fatal exit or too many failures) */
} sup_wstate_t;

static const char *const wstate_names[] = {"idle",    "starting", "running",
                                           "backoff", "stopping", "failed"};

struct sup_worker_s;

/* One spawned process and its channel; freed when both handles are closed. */
typedef struct sup_proc_s {
    struct sup_worker_s *w; /* NULL once its exit has been handled */
    sup_t *sup;
    uv_process_t proc;
    uv_pipe_t chan;
    ipc_reader_t rd;
    bool rd_ok;
    int open_handles;
    int64_t pid;
    bool hello;
    bool exited;
    int64_t exit_status;
    int term_signal;
    int64_t exited_at;
    bool chan_done; /* EOF, read error, or closed by us */
    bool fatal;     /* handshake refused: handle its exit like exit code 2 */
    char fatal_msg[256];
} sup_proc_t;

typedef struct sup_table_s sup_table_t;

typedef struct sup_worker_s {
    sup_t *sup;
    bool is_apply;
    uint32_t relid;
    sup_table_t *table; /* NULL for apply */
    char name[32];      /* "apply" | "sync-<relid>" */
    sup_wstate_t state;
    sup_proc_t *p;     /* current process, NULL if none */
    uint32_t restarts; /* spawns after the first */
    uint32_t failures; /* failures in a row */
    bool ever_started;
    int64_t started_at;
    uv_timer_t timer; /* backoff */
    bool timer_ok;
    bool stop_sent;          /* we asked it to stop (pause, resync, reload): exit 0 expected */
    bool restart_after_stop; /* reload: start it again once it has exited */
} sup_worker_t;

struct sup_table_s {
    uint32_t relid;
    char nsp[128];
    char name[128];
    wr_phase_t phase;
    wr_lsn_t lsn;
    uint64_t rows_copied;
    sup_worker_t sync;
    char err_kind[32];     /* when Errored: its kind ("transient" is retried automatically) */
    int64_t errored_at;    /* when it became Errored (monotonic ms) */
    bool exhausted_logged; /* "automatic retries exhausted" was logged */
    bool removing;         /* left the publication: removed once its sync worker is gone */
    bool resync_pending;   /* walrelay resync (or a re-copy): Init once its worker is gone */
    /* read back from the state store at start, written through (on_schema, mappings) */
    char dest_name[300]; /* the table's destination name (table_mappings) */
    wr_schema_t *schema; /* newest schema version stored, NULL if none; owned */
    wr_lsn_t schema_lsn; /* its version LSN */
};

struct sup_s {
    wr_config_t cfg;
    uv_loop_t loop;
    bool loop_ok;
    state_store_t *st;
    sup_control_t ctl;
    bool ctl_ok;
    uv_signal_t sig_term, sig_int, sig_hup;
    bool sig_ok;
    uv_timer_t tick;
    bool tick_ok;
    sup_worker_t apply;
    sup_table_t **tables; /* sorted by relid; each allocated (its handles must not move) */
    size_t ntables;
    bool stopping;
    bool shut; /* handles are closing */
    bool killed_all;
    int64_t stop_deadline;
    bool degraded;
    char apply_path[PATH_MAX];
    char sync_path[PATH_MAX];
    char slot_name[64];
    wr_lsn_t flush_lsn;
    wr_lsn_t received_lsn;
    uint64_t events;
    bool progress_dirty;
    int64_t progress_saved_at;
    state_table_t *status_rows; /* rows behind the last status reply */
    int lock_fd;
    char pid_path[PATH_MAX];
    /* lifecycle (issue 3) */
    bool paused;             /* walrelay pause: no worker runs until resume (persisted) */
    int exit_code;           /* of `walrelay run` once stopped: 0, or 2 (slot lost) */
    char message[1024];      /* for status: why paused / degraded / stopping, or "" */
    char fatal_hint[512];    /* printed with message when exit_code is set */
    int64_t last_refresh_ms; /* last read of the publication ([pipeline] publication_refresh_ms) */
    bool refresh_busy;       /* a publication read runs in the thread pool */
    bool refresh_again;      /* another was asked for meanwhile */
};

static char sup_readbuf[65536];

static void worker_spawn(sup_worker_t *w);
static void sup_schedule(sup_t *s);
static void sup_check_stopped(sup_t *s);
static void apply_slot_lost(sup_t *s, sup_worker_t *w);
static int table_do_resync(sup_t *s, sup_table_t *t, wr_err_t *err);
static void table_remove_now(sup_t *s, sup_table_t *t);
static void tick_table_retry(sup_t *s, sup_table_t *t, int64_t now);
static void refresh_start(sup_t *s);

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

/* ---- tables ---- */

static sup_table_t *
find_table(sup_t *s, uint32_t relid)
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

static void
table_free(sup_table_t *t)
{
    if (t) {
        wr_schema_free(t->schema);
        free(t);
    }
}

static void
table_timer_closed_cb(uv_handle_t *h)
{
    sup_worker_t *w = h->data;
    table_free(w->table);
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
    table_free(t);
}

static bool
proc_can_talk(const sup_proc_t *p)
{
    return p && p->hello && !p->chan_done;
}

static void proc_kill(sup_proc_t *p, const char *why);

static void
proc_send(sup_proc_t *p, const ipc_msg_t *m)
{
    if (!p || p->chan_done)
        return;
    if (sup_stream_send((uv_stream_t *)&p->chan, m) != 0)
        log_warn("cannot send to worker worker=%s type=%s", p->w ? p->w->name : "?",
                 ipc_type_name(m->type));
}

static void
proc_send_error(sup_proc_t *p, const char *msg)
{
    ipc_msg_t e;
    memset(&e, 0, sizeof(e));
    e.type = IPC_ERROR;
    e.u.error.message = (char *)msg;
    proc_send(p, &e);
}

/* table_state to the apply worker and the table's sync worker, except `except`. */
static void
broadcast_table_state(sup_t *s, const sup_table_t *t, const sup_proc_t *except)
{
    ipc_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = IPC_TABLE_STATE;
    m.u.table_state.relid = t->relid;
    m.u.table_state.phase = t->phase;
    m.u.table_state.lsn = t->lsn;
    if (proc_can_talk(s->apply.p) && s->apply.p != except)
        proc_send(s->apply.p, &m);
    if (proc_can_talk(t->sync.p) && t->sync.p != except)
        proc_send(t->sync.p, &m);
}

static void
persist_attempts(sup_t *s, sup_table_t *t)
{
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->set_attempts(s->st, t->relid, t->sync.failures, &err) != 0)
        log_err(LOG_LVL_ERROR, "persisting the failure count", &err);
}

/* Persists Errored for t (if not already), then tells the workers. */
static void
table_set_errored(sup_t *s, sup_table_t *t, const char *kind, const char *msg, const char *hint)
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
    broadcast_table_state(s, t, NULL);
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

static void worker_exited(sup_worker_t *w, sup_proc_t *p);

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
    worker_exited(w, p);
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

static void
proc_kill(sup_proc_t *p, const char *why)
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
    proc_send(p, &a);
}

static int
send_tables(sup_t *s, sup_proc_t *p, sup_worker_t *w)
{
    size_t n = w->is_apply ? s->ntables : 1;
    ipc_table_info_t *ti = calloc(n ? n : 1, sizeof(*ti));
    if (!ti)
        return WR_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const sup_table_t *t = w->is_apply ? s->tables[i] : w->table;
        ti[i].relid = t->relid;
        ti[i].nsp = (char *)t->nsp;
        ti[i].name = (char *)t->name;
        ti[i].phase = t->phase;
        ti[i].lsn = t->lsn;
    }
    ipc_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = IPC_TABLES;
    m.u.tables.n = (uint32_t)n;
    m.u.tables.tables = ti;
    proc_send(p, &m);
    free(ti);
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
    proc_send_error(p, p->fatal_msg);
    p->fatal = true;
    proc_kill(p, "handshake refused");
}

static void
on_hello(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    if (p->hello) {
        proc_send_error(p, "duplicate \"hello\"");
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
    log_info("worker ready worker=%s pid=%lld", w->name, (long long)p->pid);

    ipc_msg_t wm;
    memset(&wm, 0, sizeof(wm));
    wm.type = IPC_WELCOME;
    wm.u.welcome.version = IPC_PROTO_VERSION;
    wm.u.welcome.pipeline = s->cfg.pipeline_name;
    proc_send(p, &wm);
    if (send_tables(s, p, w) != 0) {
        proc_kill(p, "out of memory sending tables");
        return;
    }
    if (s->stopping || w->stop_sent) {
        ipc_msg_t st;
        memset(&st, 0, sizeof(st));
        st.type = IPC_STOP;
        proc_send(p, &st);
    }
}

static void
on_set_phase(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    uint32_t req = m->u.set_phase.req;
    uint32_t relid = m->u.set_phase.relid;
    wr_phase_t to = m->u.set_phase.phase;
    char msg[600];

    sup_table_t *t = find_table(s, relid);
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
    wr_phase_t from = t->phase;
    t->phase = to;
    t->lsn = m->u.set_phase.lsn;
    snprintf(t->err_kind, sizeof(t->err_kind), "%s", errored && kind ? kind : "");
    if (errored) {
        t->errored_at = wr_now_ms();
        t->exhausted_logged = false;
    }
    if (errored)
        log_error("table errored table=%s.%s relid=%u worker=%s kind=%s message=\"%s\"", t->nsp,
                  t->name, relid, w->name, kind ? kind : "", emsg ? emsg : "");
    else
        log_info(
            "table phase changed table=%s.%s relid=%u from=%s to=%s lsn=" WR_LSN_FMT " worker=%s",
            t->nsp, t->name, relid, phase_name(from), phase_name(to), WR_LSN_ARGS(t->lsn), w->name);
    if ((to == PH_SYNCDONE || to == PH_READY) && t->sync.failures > 0) {
        t->sync.failures = 0;
        persist_attempts(s, t);
    }
    if (to == PH_INIT && t->sync.state == W_FAILED) {
        t->sync.state = W_IDLE;
        t->sync.failures = 0;
        persist_attempts(s, t);
    }
    send_ack(p, req, true, "");
    broadcast_table_state(s, t, p);
    sup_schedule(s);
}

static void
on_schema(sup_t *s, sup_proc_t *p, const ipc_msg_t *m)
{
    sup_worker_t *w = p->w;
    uint32_t req = m->u.schema.req;
    uint32_t relid = m->u.schema.relid;
    char msg[600];
    sup_table_t *t = find_table(s, relid);
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
        proc_send_error(p, msg);
        proc_kill(p, "no hello");
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
        s->flush_lsn = m->u.progress.flush_lsn;
        s->received_lsn = m->u.progress.received_lsn;
        s->events = m->u.progress.events;
        s->progress_dirty = true;
        return;
    case IPC_COPY_PROGRESS: {
        sup_table_t *t = find_table(s, m->u.copy_progress.relid);
        if (w->is_apply || !t || t->relid != w->relid)
            break;
        t->rows_copied = m->u.copy_progress.rows;
        return;
    }
    case IPC_ERROR:
        log_warn("worker rejected a message worker=%s message=\"%s\"", w->name,
                 m->u.error.message ? m->u.error.message : "");
        return;
    default:
        break;
    }
    snprintf(msg, sizeof(msg), "unexpected message \"%s\" from the %s worker",
             ipc_type_name(m->type), w->is_apply ? "apply" : "sync");
    log_warn("protocol error worker=%s error=\"%s\"", w->name, msg);
    proc_send_error(p, msg);
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
        proc_kill(p, "broken channel");
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
            proc_send_error(p, err.msg[0] ? err.msg : "invalid message");
            continue;
        }
        log_error("broken worker channel worker=%s error=\"%s\"", p->w->name,
                  err.msg[0] ? err.msg : "not msgpack");
        proc_kill(p, "broken channel");
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
        sup_check_stopped(s);
        return;
    }
    if (s->paused)
        return; /* resume starts it */
    if (!w->is_apply && !phase_needs_sync_worker(w->table->phase)) {
        sup_schedule(s);
        return;
    }
    worker_spawn(w);
    if (!w->is_apply)
        sup_schedule(s);
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

/* Counts a failure; returns true if the worker should be restarted. */
static bool
worker_count_failure(sup_worker_t *w)
{
    w->failures++;
    if (!w->is_apply)
        persist_attempts(w->sup, w->table);
    return (int)w->failures < w->sup->cfg.worker_max_failures;
}

static void
apply_exited(sup_t *s, sup_worker_t *w, sup_proc_t *p, const char *how)
{
    bool fatal = p->fatal || (!p->term_signal && p->exit_status == WR_EXIT_CONFIG);
    bool stopped_by_us = w->stop_sent, reload = w->restart_after_stop;
    w->stop_sent = false;
    w->restart_after_stop = false;
    if (s->stopping) {
        w->state = W_IDLE;
        return;
    }
    if (!p->fatal && !p->term_signal && p->exit_status == WR_EXIT_SLOT_LOST) {
        apply_slot_lost(s, w);
        return;
    }
    if (stopped_by_us && !fatal) {
        /* pause, reload, or a resume that came before it had stopped */
        w->state = W_IDLE;
        if (!s->paused) {
            log_info("starting the apply worker again%s",
                     reload ? " with the reloaded configuration" : "");
            worker_spawn(w);
        }
        return;
    }
    if (fatal) {
        w->state = W_FAILED;
        s->degraded = true;
        snprintf(s->message, sizeof(s->message),
                 "the apply worker failed (%s) and is not restarted; see the log", how);
        log_error("apply worker failed, not restarting; the pipeline is degraded worker=%s "
                  "exit=\"%s\"",
                  w->name, how);
        return;
    }
    if (!p->term_signal && p->exit_status == 0)
        log_warn("apply worker exited on its own, restarting worker=%s", w->name);
    if (!worker_count_failure(w)) {
        w->state = W_FAILED;
        s->degraded = true;
        snprintf(s->message, sizeof(s->message),
                 "the apply worker failed %u times in a row (last: %s) and is not restarted; "
                 "see the log",
                 w->failures, how);
        log_error("apply worker failed %u times in a row, not restarting; the pipeline is "
                  "degraded worker=%s last_exit=\"%s\"",
                  w->failures, w->name, how);
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
        (void)table_do_resync(s, t, &err);
        return;
    }
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
        char msg[512];
        if (p->fatal)
            snprintf(msg, sizeof(msg), "sync worker %s", how);
        else
            snprintf(msg, sizeof(msg), "sync worker exited with code %lld",
                     (long long)p->exit_status);
        w->state = W_FAILED;
        table_set_errored(s, t, "worker_failed", msg,
                          "see the log; fix the cause, then walrelay retry DIR TABLE");
        return;
    }
    if (stopped_by_us && !p->term_signal) {
        /* pause or reload: sup_schedule starts it again unless paused */
        w->state = W_IDLE;
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
        table_set_errored(s, t, "worker_crashed", msg,
                          "see the log; fix the cause, then walrelay retry DIR TABLE");
        return;
    }
    worker_restart_later(w, backoff_ms(s, w->failures));
}

static void
worker_exited(sup_worker_t *w, sup_proc_t *p)
{
    sup_t *s = w->sup;
    char how[400];
    describe_exit(p, how, sizeof(how));
    if (p->term_signal)
        log_warn("WORKER KILLED BY SIGNAL worker=%s pid=%lld signal=%d (%s) restarts=%u", w->name,
                 (long long)p->pid, p->term_signal, strsignal(p->term_signal), w->restarts);
    else if (p->exit_status == 0)
        log_info("worker exited worker=%s pid=%lld status=0", w->name, (long long)p->pid);
    else
        log_warn("worker exited worker=%s pid=%lld status=%lld", w->name, (long long)p->pid,
                 (long long)p->exit_status);
    if (!w->is_apply && w->table->removing && !s->stopping) {
        /* the table left the publication: its state goes now (frees w) */
        w->state = W_IDLE;
        w->stop_sent = false;
        table_remove_now(s, w->table);
    } else if (w->is_apply) {
        apply_exited(s, w, p, how);
    } else {
        sync_exited(s, w, p, how);
    }
    sup_schedule(s);
    sup_check_stopped(s);
}

static void
worker_spawn(sup_worker_t *w)
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
    if (w->ever_started)
        w->restarts++;
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
                s->degraded = true;
            else
                table_set_errored(s, w->table, "worker_crashed", "cannot start the sync worker",
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
        proc_kill(p, "channel unreadable");
    }
}

/* Starts sync workers for tables in Init..Catchup, lowest relid first, up to the limit.
 * A worker waiting in backoff keeps its place. */
static void
sup_schedule(sup_t *s)
{
    if (s->stopping || s->paused)
        return;
    int busy = 0;
    for (size_t i = 0; i < s->ntables; i++) {
        sup_worker_t *w = &s->tables[i]->sync;
        if (w->p || w->state == W_BACKOFF)
            busy++;
    }
    for (size_t i = 0; i < s->ntables && busy < s->cfg.max_table_sync_workers; i++) {
        sup_table_t *t = s->tables[i];
        if (t->sync.state != W_IDLE || t->sync.p || !phase_needs_sync_worker(t->phase) ||
            t->removing || t->resync_pending)
            continue;
        worker_spawn(&t->sync);
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

static void
save_progress(sup_t *s)
{
    state_progress_t pr;
    memset(&pr, 0, sizeof(pr));
    snprintf(pr.slot_name, sizeof(pr.slot_name), "%s", s->slot_name);
    pr.confirmed_flush = s->flush_lsn;
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->set_progress(s->st, &pr, &err) != 0)
        log_err(LOG_LVL_ERROR, "persisting progress", &err);
    s->progress_dirty = false;
    s->progress_saved_at = wr_now_ms();
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
static void
sup_check_stopped(sup_t *s)
{
    if (!s->stopping || s->shut || any_worker_alive(s))
        return;
    s->shut = true;
    log_info("all workers stopped");
    if (s->progress_dirty)
        save_progress(s);
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

static void
stop_worker(sup_worker_t *w)
{
    if (w->state == W_BACKOFF) {
        uv_timer_stop(&w->timer);
        w->state = W_IDLE;
    }
    if (!w->p)
        return;
    w->stop_sent = true;
    if (proc_can_talk(w->p)) {
        ipc_msg_t m;
        memset(&m, 0, sizeof(m));
        m.type = IPC_STOP;
        proc_send(w->p, &m);
        w->state = W_STOPPING;
    }
    /* a worker without hello gets ["stop"] right after its welcome (on_hello) */
}

void
sup_stop_begin(sup_t *s, const char *why)
{
    if (s->stopping) {
        log_info("already stopping reason=\"%s\"", why);
        return;
    }
    s->stopping = true;
    s->stop_deadline = wr_now_ms() + SUP_STOP_GRACE_MS;
    log_info("stopping reason=\"%s\"", why);
    stop_worker(&s->apply);
    for (size_t i = 0; i < s->ntables; i++)
        stop_worker(&s->tables[i]->sync);
    sup_check_stopped(s);
}

static void
signal_cb(uv_signal_t *h, int signum)
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
    sup_stop_begin(s, why);
}

/* ---- periodic work ---- */

static void
tick_worker(sup_t *s, sup_worker_t *w, int64_t now)
{
    sup_proc_t *p = w->p;
    if (p && !p->hello && !p->exited && now - w->started_at > SUP_HELLO_TIMEOUT_MS)
        proc_kill(p, "no hello within 30 s");
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
            persist_attempts(s, w->table);
    }
}

static void
tick_cb(uv_timer_t *h)
{
    sup_t *s = h->data;
    int64_t now = wr_now_ms();
    tick_worker(s, &s->apply, now);
    for (size_t i = 0; i < s->ntables; i++)
        tick_worker(s, &s->tables[i]->sync, now);
    if (s->progress_dirty && now - s->progress_saved_at >= SUP_PROGRESS_SAVE_MS)
        save_progress(s);
    if (!s->stopping) {
        for (size_t i = 0; i < s->ntables; i++)
            tick_table_retry(s, s->tables[i], now);
        if (s->cfg.publication_refresh_ms > 0 &&
            now - s->last_refresh_ms >= s->cfg.publication_refresh_ms)
            refresh_start(s);
    }
    if (s->stopping && !s->killed_all && now >= s->stop_deadline) {
        s->killed_all = true;
        log_warn("workers did not stop within %d s, killing them", SUP_STOP_GRACE_MS / 1000);
        if (s->apply.p)
            proc_kill(s->apply.p, "stop timeout");
        for (size_t i = 0; i < s->ntables; i++)
            if (s->tables[i]->sync.p)
                proc_kill(s->tables[i]->sync.p, "stop timeout");
    }
}

/* ---- lifecycle: retry, resync, pause, reload, publication changes, a lost slot ---- */

static const char *
table_label(const sup_table_t *t, char *buf, size_t len)
{
    snprintf(buf, len, "%s.%s", t->nsp, t->name);
    return buf;
}

static int
refuse_stopping(wr_err_t *err)
{
    return wr_err_set(err, WR_EINVAL, "the pipeline is stopping");
}

/* The table named spec: "nsp.name", or "name" for a table in public. NULL with err set
 * (listing the pipeline's tables) when there is none. */
static sup_table_t *
table_lookup(sup_t *s, const char *spec, wr_err_t *err)
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
        if (!t->removing && strcmp(table_label(t, full, sizeof(full)), spec) == 0)
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
    broadcast_table_state(s, t, NULL);
    return 0;
}

static void
table_reset_failures(sup_t *s, sup_table_t *t)
{
    if (t->sync.state == W_FAILED)
        t->sync.state = W_IDLE;
    if (t->sync.failures > 0) {
        t->sync.failures = 0;
        persist_attempts(s, t);
    }
    t->exhausted_logged = false;
}

/* Init for t, whose sync worker is gone: copied again from scratch (the copy empties the
 * destination table first). */
static int
table_do_resync(sup_t *s, sup_table_t *t, wr_err_t *err)
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
    sup_schedule(s);
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
static int
table_retry(sup_t *s, sup_table_t *t, bool automatic, char *msg, size_t len, wr_err_t *err)
{
    char name[300];
    wr_phase_t back = PH_ERRORED;
    const char *why = NULL;
    state_table_t row;
    bool found = false;
    int rc;

    table_label(t, name, sizeof(name));
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
        broadcast_table_state(s, t, NULL);
        snprintf(msg, len, "table \"%s\" rolled back to phase %s: its copy starts again", name,
                 phase_name(back));
    }
    if (automatic) {
        t->sync.failures++;
        persist_attempts(s, t);
        if (t->sync.state == W_FAILED)
            t->sync.state = W_IDLE;
    } else {
        table_reset_failures(s, t);
    }
    sup_schedule(s);
    return 0;
}

/* An Errored table of kind "transient" is retried after table_error_retry_delay_ms, up to
 * table_error_retry_max_attempts times (the attempts are persisted). */
static void
tick_table_retry(sup_t *s, sup_table_t *t, int64_t now)
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
    if (table_retry(s, t, true, msg, sizeof(msg), &err) != 0) {
        log_err(LOG_LVL_ERROR, "retrying a table after a transient error", &err);
        t->errored_at = now; /* try again after another delay */
        return;
    }
    log_info("retrying after a transient error table=%s.%s relid=%u attempt=%u max=%d: %s", t->nsp,
             t->name, t->relid, t->sync.failures, s->cfg.table_error_retry_max_attempts, msg);
}

int
sup_cmd_retry(sup_t *s, const char *spec, char *msg, size_t len, wr_err_t *err)
{
    char name[300];
    sup_table_t *t;
    int rc;

    if (s->stopping)
        return refuse_stopping(err);
    if (!(t = table_lookup(s, spec, err)))
        return WR_EINVAL;
    table_label(t, name, sizeof(name));
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
    stop_worker(&t->sync); /* a pending backoff */
    rc = table_retry(s, t, false, msg, len, err);
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
        return refuse_stopping(err);
    if (!(t = table_lookup(s, spec, err)))
        return WR_EINVAL;
    table_label(t, name, sizeof(name));
    if (t->sync.p) {
        t->resync_pending = true;
        stop_worker(&t->sync);
        log_info("resync requested, stopping the sync worker first table=%s relid=%u", name,
                 t->relid);
        snprintf(msg, len,
                 "table \"%s\": stopping its sync worker, then copying it again from scratch "
                 "(the copy empties the destination table first)",
                 name);
        return 0;
    }
    stop_worker(&t->sync); /* a pending backoff */
    was = t->phase;
    if (table_do_resync(s, t, err) != 0)
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
        return refuse_stopping(err);
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
    stop_worker(&s->apply);
    for (size_t i = 0; i < s->ntables; i++) {
        if (s->tables[i]->sync.p)
            n++;
        stop_worker(&s->tables[i]->sync);
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
        return refuse_stopping(err);
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
        worker_spawn(&s->apply);
    sup_schedule(s);
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
        stop_worker(&s->apply);
    }
    for (size_t i = 0; i < s->ntables; i++) {
        sup_worker_t *w = &s->tables[i]->sync;
        wr_phase_t ph = s->tables[i]->phase;
        if (w->p && ph != PH_INIT && ph != PH_DATASYNC) {
            w->restart_after_stop = true;
            stop_worker(w);
        }
    }
}

int
sup_cmd_reload(sup_t *s, char *msg, size_t len, wr_err_t *err)
{
    wr_config_t nc;
    char live[1024] = "", keep[1024] = "";
    bool workers = false, any = false, publish;
    char *text = NULL;
    size_t textlen = 0;
    int rc;

    if (s->stopping)
        return refuse_stopping(err);
    rc = cfg_load_text(s->cfg.dir, &nc, &text, &textlen, err);
    if (rc == 0 && (rc = dest_config_check(&nc, err)) != 0) {
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
#undef SUP_KEEP
    if (s->cfg.state_backend != nc.state_backend) {
        int tmp = nc.state_backend;

        bufcat(keep, sizeof(keep), "[state] backend");
        nc.state_backend = s->cfg.state_backend;
        s->cfg.state_backend = tmp;
    }
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
    if (s->cfg.on_slot_lost != nc.on_slot_lost) {
        bufcat(live, sizeof(live), "[pipeline] on_slot_lost %s -> %s",
               s->cfg.on_slot_lost == CFG_SLOT_LOST_RECOPY ? "recopy" : "stop",
               nc.on_slot_lost == CFG_SLOT_LOST_RECOPY ? "recopy" : "stop");
        workers = true; /* the apply worker reads it */
    }
    SUP_LIVE(publication_refresh_ms, "[pipeline] publication_refresh_ms", false);
    SUP_LIVE(batch_max_fill_ms, "[batch] max_fill_ms", true);
    SUP_LIVE(batch_max_bytes, "[batch] max_bytes", true);
    SUP_LIVE(max_table_sync_workers, "[sync] max_table_sync_workers", false);
    SUP_LIVE(copy_batch_rows, "[sync] copy_batch_rows", true);
    SUP_LIVE(worker_max_failures, "[retry] worker_max_failures", false);
    SUP_LIVE(backoff_initial_ms, "[retry] backoff_initial_ms", false);
    SUP_LIVE(backoff_max_ms, "[retry] backoff_max_ms", false);
    SUP_LIVE(healthy_reset_ms, "[retry] healthy_reset_ms", false);
    SUP_LIVE(table_error_retry_delay_ms, "[retry] table_error_retry_delay_ms", false);
    SUP_LIVE(table_error_retry_max_attempts, "[retry] table_error_retry_max_attempts", false);
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
    if (workers)
        restart_workers_gracefully(s);
    sup_schedule(s); /* more sync workers may be allowed now */
    refresh_start(s);

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
static void
table_remove_now(sup_t *s, sup_table_t *t)
{
    wr_err_t err;
    uint32_t relid = t->relid;
    wr_err_clear(&err);
    if (s->st->ops->remove_table(s->st, relid, &err) != 0)
        log_err(LOG_LVL_ERROR, "removing the state of a table no longer published", &err);
    if (proc_can_talk(s->apply.p)) {
        ipc_msg_t m;
        memset(&m, 0, sizeof(m));
        m.type = IPC_TABLE_REMOVED;
        m.u.table_removed.relid = relid;
        proc_send(s->apply.p, &m);
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
        stop_worker(&t->sync);
        return; /* worker_exited removes it */
    }
    stop_worker(&t->sync); /* a pending backoff */
    table_remove_now(s, t);
}

static void
table_add_published(sup_t *s, const sup_pub_table_t *pt)
{
    state_table_t row;
    bool found = false;
    sup_table_t *t;
    wr_err_t err;
    wr_err_clear(&err);
    if (s->st->ops->add_table(s->st, pt->relid, pt->nsp, pt->name, &err) != 0 ||
        sup_store_mapping(s, pt->relid, pt->nsp, pt->name, &err) != 0 ||
        s->st->ops->get_table(s->st, pt->relid, &row, &found, &err) != 0 || !found) {
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
    broadcast_table_state(s, t, NULL);
}

static bool
pub_has(const sup_pub_table_t *pub, size_t npub, uint32_t relid)
{
    for (size_t i = 0; i < npub; i++)
        if (pub[i].relid == relid)
            return true;
    return false;
}

/* Applies a fresh read of the publication: new tables are added (Init: copied), tables no
 * longer published are removed once their sync worker stopped, renames are noted. */
static void
pub_apply(sup_t *s, const sup_pub_table_t *pub, size_t npub)
{
    uint32_t *gone = NULL;
    size_t ngone = 0;

    for (size_t i = 0; i < npub; i++) {
        sup_table_t *t = find_table(s, pub[i].relid);
        if (!t) {
            table_add_published(s, &pub[i]);
            t = find_table(s, pub[i].relid);
            /* as at start: a table whose replica identity cannot carry its published
             * updates/deletes is not copied (the preflight flagged it) */
            if (t && pub[i].refused)
                table_set_errored(s, t, "unsupported", pub[i].refused_msg, pub[i].refused_hint);
            continue;
        }
        if (pub[i].refused)
            table_set_errored(s, t, "unsupported", pub[i].refused_msg, pub[i].refused_hint);
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
        sup_table_t *t = find_table(s, gone[k]);
        if (t)
            table_begin_remove(s, t);
    }
    free(gone);
    sup_schedule(s);
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
        refresh_start(s);
    }
}

/* Reads the publication's tables again, off the loop. */
static void
refresh_start(sup_t *s)
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
    sup_stop_begin(s, "the replication slot lost required WAL");
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
    save_progress(s);
    for (size_t i = 0; i < s->ntables; i++) {
        sup_table_t *t = s->tables[i];
        wr_err_t err;
        if (t->removing)
            continue;
        if (t->sync.p) {
            t->resync_pending = true;
            stop_worker(&t->sync);
            continue;
        }
        stop_worker(&t->sync);
        wr_err_clear(&err);
        (void)table_do_resync(s, t, &err);
    }
    w->failures = 0;
    w->state = W_IDLE;
    if (!s->paused)
        worker_spawn(w); /* creates a new slot and forgets its destination key */
    sup_schedule(s);
}

static void
apply_slot_lost(sup_t *s, sup_worker_t *w)
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

/* ---- status ---- */

int
sup_status_build(sup_t *s, ipc_msg_t *out, wr_err_t *err)
{
    memset(out, 0, sizeof(*out));
    out->type = IPC_STATUS_REPLY;
    __typeof__(out->u.status_reply) *r = &out->u.status_reply;
    r->pipeline = s->cfg.pipeline_name;
    r->state = s->stopping   ? "stopping"
               : s->paused   ? "paused"
               : s->degraded ? "degraded"
                             : "running";
    r->message = s->message;
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
    r->ntables = (uint32_t)nst;
    for (size_t i = 0; i < nst; i++) {
        ipc_table_info_t *ti = &r->tables[i];
        const state_table_t *row = &st[i];
        const sup_table_t *t = find_table(s, row->relid);
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

/* ---- start ---- */

/*
 * Takes DIR/walrelay.pid: open, flock(LOCK_EX|LOCK_NB), make sure the file we locked is
 * still the one at the path (a stopping supervisor unlinks it), write our pid.
 */
static int
lock_pidfile(sup_t *s, wr_err_t *err)
{
    if (sup_path(s->cfg.dir, SUP_PID_FILE, s->pid_path, sizeof(s->pid_path), err) != 0)
        return WR_ECONFIG;
    for (int attempt = 0; attempt < 5; attempt++) {
        int fd = open(s->pid_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return wr_err_set(err, WR_ECONFIG, "cannot open \"%s\": %s", s->pid_path,
                              strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            char buf[32] = "";
            ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
            buf[n > 0 ? n : 0] = '\0';
            close(fd);
            if (e == EWOULDBLOCK) {
                long pid = strtol(buf, NULL, 10);
                wr_err_set(err, WR_ECONFIG, "pipeline in %s is already running (pid %ld)",
                           s->cfg.dir, pid);
                wr_err_hint(err, "use `walrelay status %s`, or `walrelay stop %s` first",
                            s->cfg.dir, s->cfg.dir);
                return WR_ECONFIG;
            }
            return wr_err_set(err, WR_ECONFIG, "cannot lock \"%s\": %s", s->pid_path, strerror(e));
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(s->pid_path, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev) {
            char buf[32];
            int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
            if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
                int e = errno;
                close(fd);
                return wr_err_set(err, WR_ECONFIG, "cannot write \"%s\": %s", s->pid_path,
                                  strerror(e));
            }
            s->lock_fd = fd;
            return 0;
        }
        close(fd); /* unlinked under us by an exiting supervisor: try again */
    }
    return wr_err_set(err, WR_ECONFIG, "cannot take the lock \"%s\"", s->pid_path);
}

static void
unlock_pidfile(sup_t *s)
{
    if (s->lock_fd < 0)
        return;
    unlink(s->pid_path); /* while still holding the lock */
    close(s->lock_fd);
    s->lock_fd = -1;
}

static int
find_program(const char *dir, const char *name, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len)
        return -1;
    return access(out, X_OK) == 0 ? 0 : -1;
}

/* Worker programs: $WALRELAY_LIBEXEC_DIR, else next to our executable, else (installed
 * layout) ../libexec/walrelay relative to it. */
static int
find_workers(sup_t *s, wr_err_t *err)
{
    char dir[PATH_MAX];
    const char *env = getenv("WALRELAY_LIBEXEC_DIR");
    if (env && env[0]) {
        snprintf(dir, sizeof(dir), "%s", env);
    } else {
        ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
        if (n <= 0)
            return wr_err_set(err, WR_ECONFIG, "cannot read /proc/self/exe: %s", strerror(errno));
        dir[n] = '\0';
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
    }
    if (find_program(dir, "walrelay-apply", s->apply_path, sizeof(s->apply_path)) == 0 &&
        find_program(dir, "walrelay-sync", s->sync_path, sizeof(s->sync_path)) == 0)
        return 0;
    if (!(env && env[0])) {
        char alt[PATH_MAX];
        int n = snprintf(alt, sizeof(alt), "%s/../libexec/walrelay", dir);
        if (n > 0 && (size_t)n < sizeof(alt) &&
            find_program(alt, "walrelay-apply", s->apply_path, sizeof(s->apply_path)) == 0 &&
            find_program(alt, "walrelay-sync", s->sync_path, sizeof(s->sync_path)) == 0)
            return 0;
    }
    wr_err_set(err, WR_ECONFIG,
               "cannot find the worker programs walrelay-apply and walrelay-sync in \"%s\"", dir);
    wr_err_hint(err, "set WALRELAY_LIBEXEC_DIR to the directory that holds them");
    return WR_ECONFIG;
}

static void
preflight_log(void *arg, int level, const char *check, const char *msg, const char *hint)
{
    WR_UNUSED(arg);
    int lvl = level == SUP_CHECK_OK     ? LOG_LVL_INFO
              : level == SUP_CHECK_WARN ? LOG_LVL_WARN
                                        : LOG_LVL_ERROR;
    const char *what = level == SUP_CHECK_OK     ? "ok"
                       : level == SUP_CHECK_WARN ? "warning"
                                                 : "failed";
    if (hint && hint[0])
        log_msg(lvl, "preflight %s: %s check=%s hint=\"%s\"", what, msg, check, hint);
    else
        log_msg(lvl, "preflight %s: %s check=%s", what, msg, check);
}

/* Adds published tables that are new, removes tables that are no longer published (their
 * state, schemas and sync slot; destination data stays), then loads the table list. */
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
    rc = sup_path(cfg->dir, SUP_STATE_FILE, path, sizeof(path), err);
    if (rc == 0)
        rc = state_open_sqlite(path, out, err);
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

static int
reconcile_tables(sup_t *s, const sup_pub_table_t *pub, size_t npub, PGconn *conn, wr_err_t *err)
{
    state_table_t *st = NULL;
    size_t nst = 0;
    if (s->st->ops->list_tables(s->st, &st, &nst, err) != 0)
        return err->code ? err->code : WR_ESTATE;
    size_t i = 0, j = 0;
    int rc = 0;
    while (rc == 0 && (i < npub || j < nst)) {
        if (j >= nst || (i < npub && pub[i].relid < st[j].relid)) {
            rc = s->st->ops->add_table(s->st, pub[i].relid, pub[i].nsp, pub[i].name, err);
            if (rc == 0)
                rc = sup_store_mapping(s, pub[i].relid, pub[i].nsp, pub[i].name, err);
            if (rc == 0)
                log_info("table added table=%s.%s relid=%u", pub[i].nsp, pub[i].name, pub[i].relid);
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
static void
refuse_tables(sup_t *s, const sup_pub_table_t *pub, size_t npub)
{
    for (size_t i = 0; i < npub; i++) {
        sup_table_t *t = pub[i].refused ? find_table(s, pub[i].relid) : NULL;
        if (t)
            table_set_errored(s, t, "unsupported", pub[i].refused_msg, pub[i].refused_hint);
    }
}

static int
init_progress(sup_t *s, wr_err_t *err)
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
static int
load_flags(sup_t *s, wr_err_t *err)
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

static void
print_fatal(const wr_err_t *err)
{
    fprintf(stderr, "walrelay: %s\n", err->msg[0] ? err->msg : wr_err_code_name(err->code));
    if (err->hint[0])
        fprintf(stderr, "hint: %s\n", err->hint);
}

static void
walk_close_cb(uv_handle_t *h, void *arg)
{
    WR_UNUSED(arg);
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void
sup_free(sup_t *s)
{
    if (s->loop_ok) {
        /* every handle is closed by now; be defensive anyway */
        uv_walk(&s->loop, walk_close_cb, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&s->loop) != 0)
            log_warn("event loop closed with handles still open");
    }
    state_close(s->st);
    s->st = NULL;
    free(s->status_rows);
    for (size_t i = 0; i < s->ntables; i++)
        table_free(s->tables[i]);
    free(s->tables);
    unlock_pidfile(s);
    cfg_free(&s->cfg);
}

int
sup_run(const char *dir)
{
    static sup_t sup; /* one per process; its handles must outlive any callback */
    sup_t *s = &sup;
    memset(s, 0, sizeof(*s));
    s->lock_fd = -1;
    wr_err_t err;
    wr_err_clear(&err);
    int code = WR_EXIT_CONFIG;

    cfg_defaults(&s->cfg);
    {
        char *text = NULL;
        size_t len = 0;
        if (cfg_load_text(dir, &s->cfg, &text, &len, &err) != 0 ||
            dest_config_check(&s->cfg, &err) != 0) {
            print_fatal(&err);
            free(text);
            cfg_free(&s->cfg);
            return WR_EXIT_CONFIG;
        }
        /* the workers read this copy, never the file an operator may be editing */
        if (cfg_publish_active(s->cfg.dir, text, len, &err) != 0) {
            free(text);
            print_fatal(&err);
            cfg_free(&s->cfg);
            return WR_EXIT_CONFIG;
        }
        free(text);
    }
    log_init(s->cfg.pipeline_name, "supervisor");
    log_set_level(s->cfg.log_level);

    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (lock_pidfile(s, &err) != 0 || sup_sock_path(s->cfg.dir, sock, sizeof(sock), &err) != 0 ||
        find_workers(s, &err) != 0) {
        print_fatal(&err);
        goto out;
    }
    log_info("starting version=%s pid=%ld dir=%s", WR_VERSION, (long)getpid(), s->cfg.dir);

    sup_pub_table_t *pub = NULL;
    size_t npub = 0;
    PGconn *conn = NULL;
    if (sup_preflight(&s->cfg, preflight_log, NULL, &pub, &npub, &conn, &err) != 0) {
        print_fatal(&err);
        log_error("cannot start: preflight failed (nothing was written)");
        goto out;
    }

    int rc = sup_state_open(&s->cfg, &s->st, &err);
    if (rc == 0)
        rc = reconcile_tables(s, pub, npub, conn, &err);
    if (rc == 0)
        refuse_tables(s, pub, npub);
    if (rc == 0)
        rc = init_progress(s, &err);
    if (rc == 0)
        rc = load_flags(s, &err);
    free(pub);
    PQfinish(conn);
    if (rc != 0) {
        print_fatal(&err);
        code =
            wr_err_exit_code(err.code) == WR_EXIT_OK ? WR_EXIT_ERROR : wr_err_exit_code(err.code);
        goto out;
    }
    s->last_refresh_ms = wr_now_ms();

    rc = uv_loop_init(&s->loop);
    if (rc != 0) {
        fprintf(stderr, "walrelay: uv_loop_init: %s\n", uv_strerror(rc));
        code = WR_EXIT_ERROR;
        goto out;
    }
    s->loop_ok = true;
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    uv_signal_start(&s->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&s->sig_int, signal_cb, SIGINT);
    uv_signal_start(&s->sig_hup, signal_cb, SIGHUP);
    s->sig_ok = true;
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, tick_cb, SUP_TICK_MS, SUP_TICK_MS);
    s->tick_ok = true;

    if (sup_control_start(&s->ctl, s, sock, &err) != 0) {
        print_fatal(&err);
        code = WR_EXIT_CONFIG;
        s->stopping = true;
        sup_check_stopped(s);
        goto out;
    }
    s->ctl_ok = true;

    s->apply.sup = s;
    s->apply.is_apply = true;
    snprintf(s->apply.name, sizeof(s->apply.name), "apply");
    log_info("running tables=%zu max_table_sync_workers=%d control=%s", s->ntables,
             s->cfg.max_table_sync_workers, sock);
    if (s->paused) {
        snprintf(s->message, sizeof(s->message),
                 "paused by walrelay pause; walrelay resume starts the workers again");
        log_info("the pipeline is paused: no worker starts until walrelay resume %s", s->cfg.dir);
    } else {
        worker_spawn(&s->apply);
        sup_schedule(s);
    }

    uv_run(&s->loop, UV_RUN_DEFAULT);
    log_info("stopped%s", s->degraded ? " (the pipeline was degraded)" : "");
    code = s->exit_code;
    if (code != WR_EXIT_OK) {
        fprintf(stderr, "walrelay: %s\n", s->message);
        if (s->fatal_hint[0])
            fprintf(stderr, "hint: %s\n", s->fatal_hint);
    }
out:
    sup_free(s);
    return code;
}
