/*
 * sup.h - internal interface between the files of the `walrelay` command (CLI, supervisor
 * loop, control server, preflight).
 *
 * NOTES: only the `walrelay` executable includes this. The supervisor (sup.c) owns the
 * libuv loop, the worker table and DIR/state.db; control.c serves DIR/control.sock on that
 * loop and calls back into sup.c for status and stop; preflight.c runs blocking libpq
 * checks before the loop starts (and for `walrelay check`); cli.c implements the commands
 * that main.c dispatches.
 */
#ifndef WR_SUP_H
#define WR_SUP_H

#include <libpq-fe.h>
#include <uv.h>

#include "../common/config.h"
#include "../common/state.h"
#include "../common/wr.h"
#include "../proto/ipc.h"

#define WR_VERSION "0.1.0"

/* Files inside the config directory. */
#define SUP_PID_FILE   "walrelay.pid"
#define SUP_SOCK_FILE  "control.sock"
#define SUP_STATE_FILE "state.db"

/* ---- main.c / cli.c: commands ---- */

/* A command handler gets argv starting at the command word; returns the exit code. */
typedef int (*cli_handler_fn)(int argc, char **argv);

int cli_init(int argc, char **argv);
int cli_check(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_status(int argc, char **argv);
int cli_stop(int argc, char **argv);
int cli_retry(int argc, char **argv);
int cli_resync(int argc, char **argv);
int cli_pause(int argc, char **argv);
int cli_resume(int argc, char **argv);
int cli_reload(int argc, char **argv);
int cli_drop(int argc, char **argv);
int cli_metrics(int argc, char **argv);
/* events_cmd.c: walrelay events DIR load | version | tail | append */
int cli_events(int argc, char **argv);

/* Prints the usage of one command (main.c owns the table). */
void cli_print_usage(const char *word, FILE *f);

/* ---- preflight.c ---- */

enum { SUP_CHECK_OK = 0, SUP_CHECK_WARN = 1, SUP_CHECK_FAIL = 2 };

/* Called once per check result; hint may be NULL. */
typedef void (*sup_check_report_fn)(void *arg, int level, const char *check, const char *msg,
                                    const char *hint);

typedef struct sup_pub_table_s {
    uint32_t relid;
    char nsp[128];
    char name[128];
    /* Added for per-table refusal (helper "identity"): set by the preflight when the
     * publication publishes the table's updates/deletes but its replica identity cannot
     * carry them; the supervisor sets such a table ERRORED "unsupported" with this
     * message and hint instead of copying it. */
    bool refused;
    char refused_msg[512];
    char refused_hint[512];
    /* (issue 12) The publication's membership record of the table: the oid of its
     * pg_publication_rel row (its own or an ancestor's), else of the pg_publication_namespace
     * row of its schema, else 0 (FOR ALL TABLES). ALTER PUBLICATION ... DROP TABLE and ADD
     * TABLE make a new record: a table whose record changed left the publication for a
     * while, and its changes of that time were never published. */
    int64_t member;
} sup_pub_table_t;

/*
 * Checks the source for cfg (reachable, wal_level, publication, REPLICATION privilege,
 * free slots and walsenders, replica identity of each published table) and the
 * destination. Every result goes to report. Returns 0 when nothing failed (warnings are
 * fine, and so are per-table refusals: reported as SUP_CHECK_FAIL "replica_identity" and
 * flagged in *tables, they do not stop `walrelay run`), else the first failure's code (WR_ECONN
 * unreachable, WR_ESOURCE misconfigured, WR_ECONFIG destination) with err set to it, hint included.
 * On success and when tables is not NULL, *tables (malloc'd, caller frees, ordered by
 * relid) and *ntables hold the publication's tables. When keep is not NULL and the result
 * is 0, *keep is the open SQL connection (caller PQfinish'es it), else NULL. With tables
 * and without keep (the publication refresh) the destination is not checked.
 */
int sup_preflight(const wr_config_t *cfg, sup_check_report_fn report, void *arg,
                  sup_pub_table_t **tables, size_t *ntables, PGconn **keep,
                  wr_err_t *err) WR_MUST_CHECK;

/* ---- sup.c: the supervisor ---- */

typedef struct sup_s sup_t;

/* `walrelay run DIR`: runs the supervisor in the foreground; returns the exit code. */
int sup_run(const char *dir);

/* Opens the state store cfg names ([state] backend: DIR/state.db, or the PostgreSQL
 * store with the pipeline's lease). */
int sup_state_open(const wr_config_t *cfg, state_store_t **out, wr_err_t *err) WR_MUST_CHECK;

/* Fills a status_reply (strings point into the supervisor's memory; arrays malloc'd).
 * Free with sup_status_free, not ipc_msg_clear. */
int sup_status_build(sup_t *s, ipc_msg_t *out, wr_err_t *err) WR_MUST_CHECK;
/* (issue 11) The same for the tables with relid > after, about IPC_STATUS_PAGE_BYTES or
 * IPC_STATUS_PAGE_TABLES of them (at least one): out->u.status_reply.more says whether more follow.
 * sup_status_build is the first page. */
int sup_status_page(sup_t *s, uint32_t after, ipc_msg_t *out, wr_err_t *err) WR_MUST_CHECK;
void sup_status_free(ipc_msg_t *m);

/* The stop command: begins the graceful stop (idempotent; why is logged). */
void sup_cmd_stop(sup_t *s, const char *why);

/*
 * Control commands (control.c serves them to the CLI; SIGHUP runs the reload). Each
 * returns 0 with what it did, for the operator, in msg; or a negative code with err set
 * (message and hint), in which case nothing changed. Semantics: docs/lifecycle.md.
 *   retry   an Errored table: rolled back one phase (or to Init when the rollback would
 *           lose changes), attempts reset, its sync worker started
 *   resync  any table: its sync worker stopped, Init, copied again from scratch
 *   pause   every worker stopped gracefully, none started until resume (persisted)
 *   resume  the workers started again
 *   reload  walrelay.conf read again: live keys applied, the others reported as needing a
 *           restart; the publication read again. A broken file changes nothing.
 * table: "nsp.name", or "name" for a table in public.
 */
int sup_cmd_retry(sup_t *s, const char *table, char *msg, size_t len, wr_err_t *err) WR_MUST_CHECK;
int sup_cmd_resync(sup_t *s, const char *table, char *msg, size_t len, wr_err_t *err) WR_MUST_CHECK;
int sup_cmd_pause(sup_t *s, char *msg, size_t len, wr_err_t *err) WR_MUST_CHECK;
int sup_cmd_resume(sup_t *s, char *msg, size_t len, wr_err_t *err) WR_MUST_CHECK;
int sup_cmd_reload(sup_t *s, char *msg, size_t len, wr_err_t *err) WR_MUST_CHECK;

uv_loop_t *sup_loop(sup_t *s);

/* `walrelay metrics DIR`: the Prometheus text exposition /metrics serves (malloc'd into
 * *text, caller frees). metrics.c */
int sup_metrics_text(sup_t *s, char **text, size_t *len, wr_err_t *err) WR_MUST_CHECK;

/* Encodes m and queues it on stream (the buffer is freed when written). Returns 0 or a
 * negative code (WR_ENOMEM, WR_EIO). */
int sup_stream_send(uv_stream_t *stream, const ipc_msg_t *m) WR_MUST_CHECK;

/* "DIR/file" into buf; WR_EINVAL with a message if it does not fit in len. */
int sup_path(const char *dir, const char *file, char *buf, size_t len, wr_err_t *err) WR_MUST_CHECK;

/* Socket path (checked against sizeof(sun_path), which libuv 1.44 silently truncates). */
int sup_sock_path(const char *dir, char *buf, size_t len, wr_err_t *err) WR_MUST_CHECK;

/* ---- control.c: DIR/control.sock ---- */

typedef struct sup_control_s {
    sup_t *sup;
    uv_pipe_t server;
    bool listening;
    bool closed;
    char path[256];
    struct sup_client_s *clients; /* linked list of open connections */
    int nclients;                 /* in the list; at most SUP_CONTROL_MAX_CLIENTS */
} sup_control_t;

/* (issue 12) A flood of control clients must not take the supervisor's file descriptors
 * (it spawns workers with them): more are refused at once with an error, and a client that
 * has not finished a request for SUP_CONTROL_IDLE_MS is closed (sup_control_sweep). */
#define SUP_CONTROL_MAX_CLIENTS 64
#define SUP_CONTROL_IDLE_MS     30000

/* Binds DIR/control.sock (mode 0600), listens. A stale socket (nobody answers) is removed;
 * a live one is an error. */
int sup_control_start(sup_control_t *c, sup_t *s, const char *path, wr_err_t *err) WR_MUST_CHECK;
/* Closes the server and every client; the socket file is removed. Idempotent. */
void sup_control_close(sup_control_t *c);
/* Closes clients idle for SUP_CONTROL_IDLE_MS (called from the supervisor's tick). */
void sup_control_sweep(sup_control_t *c, int64_t now_ms);

#endif
