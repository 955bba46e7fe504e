/*
 * sup_int.h - the supervisor's internal types and the functions its layers share.
 *
 * NOTES: included by sup.c (start, teardown), sup_proc.c (processes and channels),
 * sup_table.c (tables, phases, the state store, the publication) and sup_cmd.c (commands
 * and status) only. Cross-file functions are named sup__x (libuv's uv__x); everything
 * else is static in its file. control.c does not include it: it calls the command API of
 * sup.h.
 */
#ifndef WR_SUP_INT_H
#define WR_SUP_INT_H

#include "../proto/ipc.h"
#include "metrics.h"
#include "sup.h"

#define SUP_TICK_MS          1000
#define SUP_STOP_GRACE_MS    30000
#define SUP_HELLO_TIMEOUT_MS 30000
#define SUP_EOF_GRACE_MS     2000
#define SUP_PROGRESS_SAVE_MS 1000
#define SUP_RESTART_FLOOR_MS 1000
#define SUP_OUTAGE_MAX_MS    10000 /* longest wait between tries while the source is away */
/* How often the state store's lease is verified while running (stores with a lease:
 * state.h check_lease); WALRELAY_LEASE_CHECK_MS overrides it (tests). */
#define SUP_LEASE_CHECK_MS 5000

typedef enum {
    W_IDLE = 0, /* no process, nothing pending */
    W_STARTING, /* spawned, no hello yet */
    W_RUNNING,
    W_BACKOFF,  /* waiting to restart */
    W_STOPPING, /* sent ["stop"] */
    W_FAILED,   /* not restarted (fatal exit or too many failures) */
} sup_wstate_t;

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
    /* ["dest_wait", message] (issue 9): what its destination waits for, "" if nothing;
     * shown by status as the pipeline's message */
    char dest_wait[512];
    int64_t dest_wait_since; /* wr_now_ms() of the first message of this wait */
    int64_t spawned_at;      /* wr_now_ms() at spawn: its connections are at least as new */
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
    uint32_t outages;  /* exits in a row because the source is away (not failures) */
    bool ever_started;
    int64_t started_at;
    uv_timer_t timer; /* backoff */
    bool timer_ok;
    bool stop_sent;          /* we asked it to stop (pause, resync, reload): exit 0 expected */
    bool restart_after_stop; /* reload: start it again once it has exited */
    /* ["worker_error", ...]: what its last failed process exited on; cleared once a process
     * streams or copies again ("" none) */
    char err_kind[32];
    char err_msg[600];
    char err_hint[400];
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
    /* its publication membership record changed (sup_pub_table_t.member): recorded once
     * the re-copy's Init is persisted (0: nothing pending) */
    int64_t member_pending;
    bool init_unacked;     /* Init sent to a live apply worker that has not acknowledged it
                            * (["table_ack"]): its copy must not start yet (issue 12, d. 6) */
    /* read back from the state store at start, written through (on_schema, mappings) */
    char dest_name[300]; /* the table's destination name (table_mappings) */
    wr_schema_t *schema; /* newest schema version stored, NULL if none; owned */
    wr_lsn_t schema_lsn; /* its version LSN */
    /* (issue 11) the copy's snapshot held for a restarted sync worker (sup_copy.c) */
    PGconn *hold;     /* the holding connection, NULL if none */
    char held[64];    /* the snapshot's name there */
    bool plan_stored; /* a copy plan was stored by this supervisor, not cleared yet */
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
    bool degraded; /* the apply worker gave up: the pipeline stops (exit_code) */
    /* the source is unavailable (a worker exited 4) until a worker streams or copies */
    bool source_down;
    int64_t source_down_since; /* monotonic ms */
    int64_t source_retry_ms;   /* the current delay between tries */
    char source_err[600];      /* the last error a worker reported */
    /* an apply worker of this supervisor said hello: no apply process of an earlier run
     * can still write (it holds DIR/apply.lock until it is gone, see walrelay-apply);
     * copies of Init tables wait for it */
    bool apply_fenced;
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
    char status_msg[1024];   /* status: a message built for one reply (outage, waits) */
    char fatal_hint[512];    /* printed with message when exit_code is set */
    int64_t last_refresh_ms; /* last read of the publication ([pipeline] publication_refresh_ms) */
    bool refresh_busy;       /* a publication read runs in the thread pool */
    bool refresh_again;      /* another was asked for meanwhile */
    /* the state store's lease (sup__lease_tick) */
    bool lease_ready;         /* lease_check_ms read */
    int64_t lease_check_ms;   /* probe interval, 0 = never probe */
    int64_t lease_checked_at; /* last probe (monotonic ms) */
    bool lease_unverified;    /* the last probe could not reach the store */
    bool lease_lost;          /* lost: stopping, exit code 2 */
    /* the operating surface (issue 10, metrics.h): counters and lag, the HTTP listener,
     * the service manager's notifications */
    sup_metrics_t *metrics;
    sup_http_t *http;
    sup_notify_t *notify;
};

/* ---- shared between the layers ---- */

/* Begins the graceful stop (idempotent). why is logged. sup_proc.c */
void sup__stop_begin(sup_t *s, const char *why);

void sup__apply_slot_lost(sup_t *s, sup_worker_t *w);
void sup__broadcast_table_state(sup_t *s, const sup_table_t *t, const sup_proc_t *except);
sup_table_t *sup__find_table(sup_t *s, uint32_t relid);
int sup__init_progress(sup_t *s, wr_err_t *err);
int sup__load_flags(sup_t *s, wr_err_t *err);
void sup__persist_attempts(sup_t *s, sup_table_t *t);
bool sup__proc_can_talk(const sup_proc_t *p);
void sup__proc_kill(sup_proc_t *p, const char *why);
void sup__proc_send(sup_proc_t *p, const ipc_msg_t *m);
void sup__proc_send_error(sup_proc_t *p, const char *msg);
int sup__reconcile_tables(sup_t *s, const sup_pub_table_t *pub, size_t npub, PGconn *conn,
                          wr_err_t *err);
void sup__refresh_start(sup_t *s);
int sup__state_lost_check(sup_t *s, PGconn *conn, const char *created, wr_err_t *err);
int sup__refuse_stopping(wr_err_t *err);
void sup__refuse_tables(sup_t *s, const sup_pub_table_t *pub, size_t npub);
void sup__save_progress(sup_t *s);
void sup__source_ok(sup_t *s, const sup_proc_t *p);
void sup__signal_cb(uv_signal_t *h, int signum);
void sup__stop_worker(sup_worker_t *w);
void sup__check_stopped(sup_t *s);
void sup__schedule(sup_t *s);
int sup__table_do_resync(sup_t *s, sup_table_t *t, wr_err_t *err);
void sup__table_member_check(sup_t *s, sup_table_t *t, int64_t member, bool running);
void sup__table_free(sup_table_t *t);
const char *sup__table_label(const sup_table_t *t, char *buf, size_t len);
sup_table_t *sup__table_lookup(sup_t *s, const char *spec, wr_err_t *err);
void sup__table_remove_now(sup_t *s, sup_table_t *t);
int sup__table_retry(sup_t *s, sup_table_t *t, bool automatic, char *msg, size_t len,
                     wr_err_t *err);
void sup__table_set_errored(sup_t *s, sup_table_t *t, const char *kind, const char *msg,
                            const char *hint);
void sup__table_handoff_paused(sup_t *s, sup_table_t *t);
void sup__tick_cb(uv_timer_t *h);
void sup__lease_tick(sup_t *s, int64_t now);
void sup__tick_table_retry(sup_t *s, sup_table_t *t, int64_t now);
void sup__worker_exited(sup_worker_t *w, sup_proc_t *p);
void sup__worker_spawn(sup_worker_t *w);
/* (issue 11) sup_copy.c: the copy plan requests of a sync worker (true if m was one), the
 * held snapshots' tick, and letting one go. */
bool sup__copy_on_message(sup_t *s, sup_proc_t *p, const ipc_msg_t *m);
void sup__copy_tick(sup_t *s);
void sup__copy_release(sup_table_t *t, const char *why);

#endif
