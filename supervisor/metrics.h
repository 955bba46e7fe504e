/*
 * metrics.h - the supervisor's operating surface: metrics (metrics.c), the HTTP listener
 * for /metrics, /healthz and /readyz (http.c) and the service manager's notifications
 * (notify.c).
 *
 * NOTES: included through sup_int.h by the supervisor's layers, which call the sup__*
 * hooks below at the events they own (a worker's message, a phase change, an exit, a
 * spawn, the tick, the stop, a reload). Everything runs on the supervisor's libuv loop
 * except the lag query, which runs in libuv's thread pool on its own connection. Nothing
 * here is persisted: counters start from zero when `walrelay run` starts (Prometheus
 * handles that as a counter reset) and never go backwards while it runs, across any
 * number of worker restarts (workers report deltas, see proto/wkmetrics.h).
 */
#ifndef WR_SUP_METRICS_H
#define WR_SUP_METRICS_H

#include "../proto/ipc.h"
#include "sup.h"

typedef struct sup_metrics_s sup_metrics_t;
typedef struct sup_http_s sup_http_t;
typedef struct sup_notify_s sup_notify_t;

struct sup_worker_s;
struct sup_proc_s;
struct sup_table_s;

/* ---- metrics.c ---- */

/* Allocates s->metrics (before the loop runs; nothing is started). */
int sup__metrics_init(sup_t *s, wr_err_t *err) WR_MUST_CHECK;
/* Frees it, with the lag connection (after the loop ended). */
void sup__metrics_free(sup_t *s);
/* A worker's ["worker_metrics", ...]: its deltas are added up by role. */
void sup__metrics_worker_report(sup_t *s, const struct sup_worker_s *w, const ipc_msg_t *m);
/* The apply worker's ["streaming", lsn]: it streams (readiness; READY=1 the first time). */
void sup__metrics_streaming(sup_t *s, wr_lsn_t start_lsn);
/* A sync worker's ["copy_progress", relid, rows] (rows of its current copy so far). */
void sup__metrics_copy_progress(sup_t *s, struct sup_table_s *t, int64_t pid, uint64_t rows);
/* A table's persisted phase changed to `to` (err_kind when Errored, else NULL). */
void sup__metrics_phase(sup_t *s, struct sup_table_s *t, wr_phase_t to, const char *err_kind);
/* A worker process ended (before its exit is handled, so stop_sent still says whether we
 * asked for it). */
void sup__metrics_worker_exit(sup_t *s, const struct sup_worker_s *w, const struct sup_proc_s *p);
/* A worker is started again (not its first start). */
void sup__metrics_restart(sup_t *s, const struct sup_worker_s *w);
/* errors_total{kind}: one more. */
void sup__metrics_error(sup_t *s, const char *kind);
/* From the supervisor's tick: starts the lag query when due, updates STATUS=. */
void sup__metrics_tick(sup_t *s, int64_t now);
/* Is the pipeline ready (the apply worker streams, not paused, degraded or stopping, every
 * table ready)? When not, why (lines for /readyz) goes to why. */
bool sup__ready(sup_t *s, char *why, size_t len);
/* A one-line summary of the phases for STATUS= and the log. */
void sup__metrics_summary(sup_t *s, char *buf, size_t len);
/* The Prometheus text exposition (format 0.0.4) into *text (malloc'd, caller frees). */
int sup__metrics_render(sup_t *s, char **text, size_t *len) WR_MUST_CHECK;

/* ---- http.c ---- */

/* Resolves and binds [metrics] listen (before the preflight: a port in use stops the start
 * with nothing written). No-op when listen is unset. WR_ECONFIG with a hint on failure. */
int sup__http_bind(sup_t *s, wr_err_t *err) WR_MUST_CHECK;
/* Serves the bound listener on the loop (after uv_loop_init). */
int sup__http_attach(sup_t *s, wr_err_t *err) WR_MUST_CHECK;
/* Stops serving and closes the listener; idempotent. Safe before the loop exists. */
void sup__http_close(sup_t *s);
/* Frees it (after the loop ended). */
void sup__http_free(sup_t *s);

/* ---- notify.c ---- */

/* Reads NOTIFY_SOCKET and WATCHDOG_USEC (systemd's Type=notify protocol) and starts the
 * watchdog timer on the loop. Without NOTIFY_SOCKET every notification is a no-op. */
void sup__notify_init(sup_t *s);
/* READY=1 (once; again after a reload); STATUS=; STOPPING=1; RELOADING=1. */
void sup__notify_ready(sup_t *s);
void sup__notify_status(sup_t *s, const char *status);
void sup__notify_stopping(sup_t *s);
void sup__notify_reloading(sup_t *s);
void sup__notify_reloaded(sup_t *s);
/* Stops the watchdog timer (at the stop, once every worker is gone); frees in _free. */
void sup__notify_close(sup_t *s);
void sup__notify_free(sup_t *s);

#endif
