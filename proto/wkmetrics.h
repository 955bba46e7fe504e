/*
 * wkmetrics.h - a worker's counters and timings for the supervisor's metrics: counted as
 * the worker goes, sent as deltas in ["worker_metrics", ...] (proto/ipc.h).
 *
 * NOTES: used by walrelay-apply and walrelay-sync, one wkm_t per process, no I/O except
 * wkm_send. What a destination batch wrote (its changes per table and operation, its
 * source transactions) is counted as pending and becomes reportable only when the batch
 * commits: a batch that is rolled back (a stop in the middle of a source transaction) or
 * lost with the process (kill -9) is replayed later and counted then, so the supervisor's
 * walrelay_events_total matches the changes applied. A new batch (wkm_batch_begin) drops
 * whatever was pending, so a rollback path that does not call wkm_batch_rollback still
 * counts nothing twice. Counts committed but not yet sent die with a process killed by a
 * signal (at most WKM_SEND_MS worth). Memory: one entry per table that ever had a
 * change, kept for the life of the process; an allocation failure drops that count and
 * sets oom (logged once), never fails the worker.
 */
#ifndef WR_WKMETRICS_H
#define WR_WKMETRICS_H

#include "wkipc.h"

#define WKM_SEND_MS 1000 /* a report at most this often (unless forced) */

typedef struct wkm_table_s {
    uint32_t relid;
    bool used;
    uint64_t pending[IPC_NOPS]; /* written in the open batch */
    uint64_t unsent[IPC_NOPS];  /* committed, not reported yet */
} wkm_table_t;

typedef struct wkm_s {
    /* committed and not reported yet */
    uint64_t transactions, batches, bytes_received, status_updates;
    uint64_t stm_bytes_seen, stm_status_seen; /* wkm_stream_totals: the totals last seen */
    ipc_hist_t batch, commit;
    /* the open batch */
    bool batch_open;
    int64_t batch_start_us;
    uint64_t pending_tx;
    /* per table: open addressing on relid */
    wkm_table_t *tabs;
    size_t cap, used;
    /* position, reported as it is */
    int64_t last_commit_ts;
    bool caught_up;
    int64_t sent_commit_ts;
    bool sent_caught_up;
    bool dirty;      /* something to report */
    int64_t sent_ms; /* last report (wr_now_ms) */
    bool oom;        /* a count was dropped for lack of memory */
    bool oom_logged;
} wkm_t;

void wkm_init(wkm_t *m);
void wkm_free(wkm_t *m);

/* Monotonic microseconds, for the caller's timing of a destination commit. */
int64_t wkm_clock_us(void);

/* A destination transaction (batch) begins: whatever was pending is dropped. */
void wkm_batch_begin(wkm_t *m);
/* A change of table relid written into the open batch; kind is a dest_ev_kind_t
 * (INSERT, UPDATE, DELETE, TRUNCATE; other kinds are not counted). */
void wkm_event(wkm_t *m, uint32_t relid, int kind);
/* A source transaction whose changes are in the open batch (counted at its Commit). */
void wkm_transaction(wkm_t *m);
/* The destination committed the batch; commit_start_us (wkm_clock_us) is when its
 * commit call began. Pending counts become reportable; batch_seconds (batch begin to now)
 * and destination_commit_seconds (commit_start_us to now) are observed. */
void wkm_batch_commit(wkm_t *m, int64_t commit_start_us);
/* The open batch was rolled back: its pending counts are dropped. */
void wkm_batch_rollback(wkm_t *m);
/* n bytes of replication stream or COPY data received from the source. */
void wkm_bytes(wkm_t *m, size_t n);
/* One standby status update sent to the source. */
void wkm_status_update(wkm_t *m);
/* The stream engine's totals (stm_counters, common/stream.h): counts what they grew by
 * since the last call as bytes received and status updates. */
void wkm_stream_totals(wkm_t *m, uint64_t bytes_received, uint64_t status_sent);
/* The apply worker's position: commit time (us since the Unix epoch, 0 = none) of the
 * last source transaction processed, and whether everything received is durable. */
void wkm_position(wkm_t *m, int64_t last_commit_ts, bool caught_up);

/* Sends what changed since the last report as one worker_metrics message: when something
 * changed and WKM_SEND_MS passed since the last report, or at once with force. Returns 0
 * or the channel's error (WR_EEOF: the supervisor is gone). */
int wkm_send(wkm_t *m, wk_chan_t *c, bool force, wr_err_t *err) WR_MUST_CHECK;

/* Fills out (a zeroed message the caller encodes) from m without clearing anything;
 * out->u.worker_metrics.events is malloc'd (caller frees), NULL when no table changed.
 * Returns 0 or WR_ENOMEM. Exposed for the unit tests; wkm_send uses it. */
int wkm_build(const wkm_t *m, ipc_msg_t *out) WR_MUST_CHECK;
/* Forgets what wkm_build reported (after it was sent). */
void wkm_sent(wkm_t *m);

#endif
