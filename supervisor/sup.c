/*
 * sup.c - the supervisor (`walrelay run DIR`): one libuv loop that spawns, watches and
 * restarts the workers and relays their coordination.
 *
 * NOTES: runs in the `walrelay run` process. Owns DIR/walrelay.pid (flock held for the
 * life of the process), the state store (the only writer: DIR/state.db or the PostgreSQL
 * store) and DIR/control.sock (control.c). This file holds the start and the teardown;
 * the rest is split by layer, sharing the types of sup_int.h:
 *   sup_proc.c   processes: spawn, channels and their messages, exits, restarts, the
 *                stop, signals, the tick
 *   sup_table.c  tables: phases and their persistence, retry/resync mechanics, the
 *                publication refresh, slot drops, a lost slot, reading the state back
 *   sup_cmd.c    commands (retry, resync, pause, resume, reload) and the status reply:
 *                the API control.c calls (sup.h), never the loop's internals
 *   metrics.c, http.c, notify.c   the operating surface (metrics.h): counters from the
 *                workers' reports, the lag query, /metrics, /healthz, /readyz on
 *                [metrics] listen, sd_notify; the layers above call its sup__* hooks
 * The rules below hold across the three.
 *
 * Start: config -> pid lock -> preflight (nothing written yet) -> state.db -> reconcile the
 * tables with the publication -> control socket -> apply worker -> sync workers for tables
 * in Init..Catchup (at most [sync] max_table_sync_workers, lowest relid first) -> loop.
 *
 * Workers (walrelay-apply DIR, walrelay-sync DIR RELID) talk msgpack on their fd 3 (a
 * socketpair). The first message must be hello; we answer welcome + tables. A set_phase is
 * validated (phase_transition_ok), persisted, acked, and only then relayed as table_state
 * to the apply worker and the table's sync worker (except the requester), so what is on
 * disk is never behind what a worker believes. A table set to Init (resync, retry, a
 * re-copy) is copied only once the apply worker acknowledged it (["table_ack"]: what it
 * wrote of the table is durable and it writes no more) or has exited, and only after an
 * apply worker of this supervisor said hello (an apply process left by a killed
 * supervisor holds DIR/apply.lock until it is gone): the copy's truncate must come after
 * every write of the apply worker.
 *
 * A worker's exit is handled once both its process has exited and its channel reached EOF
 * (so every message it sent before exiting has been processed). Exit 0 = done or stopped;
 * 2 = fatal (no restart: the table goes to Errored; for apply nothing can progress any
 * more, so the pipeline stops and walrelay run exits 2 with the worker's error); 4 = the
 * source is unavailable (the worker probed it): started again after a backoff capped at
 * SUP_OUTAGE_MAX_MS for as long as the outage lasts, not a failure, state
 * "source_unavailable" with the last error until a worker streams or copies again;
 * anything else, a signal, or apply exiting 0 on its own = a failure, restarted after
 * backoff_initial_ms doubling up to backoff_max_ms; worker_max_failures in a row stop the
 * restarts (a sync worker's table goes to Errored; for apply walrelay run exits 1, for the
 * service manager); healthy_reset_ms of running resets the count. Sync failures in a row
 * are persisted as the table's attempts. Each worker's last error (["worker_error"]) is
 * kept for status and for these decisions.
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
 * "slot_lost". A state store with a lease (postgres, a plugin) is verified from the tick
 * (sup__lease_tick, every 5 s): a lease lost to another supervisor stops the pipeline,
 * exit code 2.
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

static void
print_fatal(const wr_err_t *err)
{
    if (log_get_format() == LOG_FMT_JSON) {
        /* [log] format = json: every line on stderr is JSON */
        if (err->hint[0])
            log_error("%s hint=\"%s\"", err->msg[0] ? err->msg : wr_err_code_name(err->code),
                      err->hint);
        else
            log_error("%s", err->msg[0] ? err->msg : wr_err_code_name(err->code));
        return;
    }
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
    sup__http_free(s);
    sup__notify_free(s);
    sup__metrics_free(s);
    free(s->status_rows);
    for (size_t i = 0; i < s->ntables; i++)
        sup__table_free(s->tables[i]);
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
            dest_config_check(&s->cfg, &err) != 0 || state_config_check(&s->cfg, &err) != 0) {
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
    log_set_format(s->cfg.log_format);

    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (lock_pidfile(s, &err) != 0 || sup_sock_path(s->cfg.dir, sock, sizeof(sock), &err) != 0 ||
        find_workers(s, &err) != 0) {
        print_fatal(&err);
        goto out;
    }
    log_info("starting version=%s pid=%ld dir=%s", WR_VERSION, (long)getpid(), s->cfg.dir);
    /* the metrics listener is bound before anything is written: a port in use stops here */
    if (sup__metrics_init(s, &err) != 0 || sup__http_bind(s, &err) != 0) {
        print_fatal(&err);
        goto out;
    }

    sup_pub_table_t *pub = NULL;
    size_t npub = 0;
    PGconn *conn = NULL;
    if (sup_preflight(&s->cfg, preflight_log, NULL, &pub, &npub, &conn, &err) != 0) {
        print_fatal(&err);
        log_error("cannot start: preflight failed (nothing was written)");
        goto out;
    }

    /* a missing state.db must not be taken for a first start (issue 12) */
    char state_path[PATH_MAX];
    bool state_new =
        s->cfg.state_backend != CFG_STATE_POSTGRES &&
        sup_path(s->cfg.dir, SUP_STATE_FILE, state_path, sizeof(state_path), &err) == 0 &&
        access(state_path, F_OK) != 0;
    int rc = sup_state_open(&s->cfg, &s->st, &err);
    if (rc == 0)
        rc = sup__state_lost_check(s, conn, state_new ? state_path : NULL, &err);
    if (rc == 0)
        rc = sup__reconcile_tables(s, pub, npub, conn, &err);
    if (rc == 0)
        sup__refuse_tables(s, pub, npub);
    if (rc == 0)
        rc = sup__init_progress(s, &err);
    if (rc == 0)
        rc = sup__load_flags(s, &err);
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
    uv_signal_start(&s->sig_term, sup__signal_cb, SIGTERM);
    uv_signal_start(&s->sig_int, sup__signal_cb, SIGINT);
    uv_signal_start(&s->sig_hup, sup__signal_cb, SIGHUP);
    s->sig_ok = true;
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, sup__tick_cb, SUP_TICK_MS, SUP_TICK_MS);
    s->tick_ok = true;
    sup__notify_init(s);
    if (sup__http_attach(s, &err) != 0) {
        print_fatal(&err);
        code = WR_EXIT_ERROR;
        s->stopping = true;
        sup__check_stopped(s);
        goto out;
    }

    if (sup_control_start(&s->ctl, s, sock, &err) != 0) {
        print_fatal(&err);
        code = WR_EXIT_CONFIG;
        s->stopping = true;
        sup__check_stopped(s);
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
        /* started as asked: a paused pipeline is ready for the service manager */
        sup__notify_status(s, "paused; walrelay resume starts the workers");
        sup__notify_ready(s);
    } else {
        sup__worker_spawn(&s->apply);
        sup__schedule(s);
    }

    uv_run(&s->loop, UV_RUN_DEFAULT);
    log_info("stopped%s", s->degraded ? " (the pipeline was degraded)" : "");
    code = s->exit_code;
    if (code != WR_EXIT_OK) {
        wr_err_t fe;
        wr_err_clear(&fe);
        wr_copy_text(fe.msg, sizeof(fe.msg), s->message);
        wr_copy_text(fe.hint, sizeof(fe.hint), s->fatal_hint);
        print_fatal(&fe);
    }
out:
    sup_free(s);
    return code;
}
