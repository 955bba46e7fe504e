/*
 * srcprobe.h - after a connection error, tells a source outage (wait for it) from a
 * refusal a person must fix (stop) and from a source that answers (retry as usual).
 *
 * NOTES: used by walrelay-apply and walrelay-sync when they are about to exit on a
 * connection error (issue 12, defect 1), and when their slot is still held by a
 * walsender whose client is gone (src_take_slot). The outcome decides their exit code: an outage
 * is WR_EXIT_SOURCE_DOWN, which the supervisor restarts for as long as it lasts (capped
 * backoff, not counted as a failure); a refusal is WR_EXIT_CONFIG. Persists nothing;
 * never prints the conninfo.
 */
#ifndef WR_SRCPROBE_H
#define WR_SRCPROBE_H

#include <libpq-fe.h>

#include "config.h"
#include "wr.h"

typedef enum {
    SRC_UP = 0,  /* the source answers: the error was something else */
    SRC_DOWN,    /* not reachable, starting up, shutting down, in recovery, no slots free */
    SRC_REFUSED, /* it answers but refuses us: authentication, role or database missing,
                  * pg_hba.conf: a person must act */
} src_state_t;

/* Connects once (no replication, application_name walrelay_<pipeline>_probe) and closes
 * at once. SRC_REFUSED fills err with the server's message and a hint; SRC_DOWN fills err
 * with the connection error. */
src_state_t src_probe(const wr_config_t *cfg, wr_err_t *err);

/* The classification of one connection error message (libpq's), for src_probe and tests. */
src_state_t src_classify(const char *msg);

/* True if msg says the server itself was busy with its own state when we connected or
 * were cut off: starting up, shutting down, in recovery, out of connection slots. A worker
 * whose error says so treats it as an outage even when the probe right after finds the
 * source up again (it was away a moment ago: a restart, not a fault to count). */
bool src_was_away(const char *msg);

/* Frees the replication slot `slot` that a walsender still holds although its client is
 * gone (a worker killed, or a connection cut without a FIN that the server has not
 * noticed yet: it waits for wal_sender_timeout). The caller holds its role's lock
 * (wk_lock_role), so no live worker of this pipeline uses the slot: the walsender is
 * terminated (pg_terminate_backend) and the slot waited for, up to 10 s. sql: a plain
 * connection. Returns 0 when the slot is free (or gone), WR_ECONN otherwise. */
int src_take_slot(PGconn *sql, const char *slot, wr_err_t *err) WR_MUST_CHECK;

#endif
