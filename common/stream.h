/*
 * stream.h - the replication stream engine shared by walrelay-apply and walrelay-sync:
 * CopyData dispatch (keepalive 'k', XLogData 'w' decoded through pgoutput.c), the source
 * transaction being received (Begin/Commit, commit-LSN check, ordinals), the translation
 * of pgoutput changes into destination events with their resume key, and the timing of
 * standby status feedback.
 *
 * NOTES: the engine holds no connection and performs no I/O: the worker reads CopyData
 * with repl_recv() and hands each message to stm_on_copydata(); the engine calls the
 * worker's handler back. This keeps it testable on captured bytes (tests/unit/
 * test_stream.c) and fuzzable (tests/fuzz/fuzz_stream.c).
 *
 * ORDINALS: every change counts, also those of tables the worker skips, so that the
 * resume key (final_lsn, ordinal) of a change is the same in every replay; TRUNCATE
 * counts one per listed relid. A transaction of more than UINT32_MAX changes is an error
 * (WR_EUNSUPPORTED). Type, Origin and Message are not counted.
 *
 * BOUNDARIES: the engine does not write BEGIN/COMMIT itself (only the worker knows what it
 * wrote); stm_boundary() builds them and stm_tx_t.begun records that a BEGIN was written:
 * BEGIN before the transaction's first change written to the destination, COMMIT at its
 * Commit when a BEGIN was written, BEGIN again after the worker rolled back (clear begun).
 */
#ifndef WR_STREAM_H
#define WR_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pgoutput.h"
#include "common/wr.h"
#include "destinations/destination.h"

/* Handler return values besides 0 (nothing written / go on) and < 0 (error, err set). */
#define STM_WRITTEN 1 /* change: the event was written to the destination */
#define STM_STOP    2 /* stop dispatching this message; stm_on_* returns STM_STOP */

#define STM_STATUS_INTERVAL_MS 10000 /* a status update at least this often */
#define STM_STATUS_MIN_MS      1000  /* a moved position is reported at most this often */

typedef struct stm_tx_s {
    bool in_tx;
    wr_lsn_t final_lsn; /* Begin's final LSN = the commit LSN */
    uint32_t ordinal;   /* changes counted so far; the key of the last one */
    uint32_t xid;
    int64_t commit_ts; /* us since the Unix epoch */
    bool begun;        /* the worker wrote this transaction's BEGIN event */
} stm_tx_t;

/* Callbacks; any may be NULL. tx is the engine's state (read-only except begun). */
typedef struct stm_handler_s {
    /* a Relation message (in or outside a transaction) */
    int (*relation)(void *arg, stm_tx_t *tx, const pgo_msg_t *m, wr_err_t *err);
    /* a change, already counted: ev->key = (final_lsn, ordinal), xid, commit_ts, relid
     * and the row pointers (into the decoded message) are set. msglen is the pgoutput
     * message's size, 0 for the later relids of a TRUNCATE after one was written.
     * Returns STM_WRITTEN when written, 0 when skipped, STM_STOP, or < 0. */
    int (*change)(void *arg, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err);
    /* a Commit whose LSN matched; in_tx is already false, the rest of tx still describes
     * the transaction (begun is cleared after the call) */
    int (*commit)(void *arg, stm_tx_t *tx, wr_lsn_t end_lsn, wr_err_t *err);
    /* a keepalive; received is already moved to wal_end */
    int (*keepalive)(void *arg, wr_lsn_t wal_end, bool reply_requested, wr_err_t *err);
} stm_handler_t;

typedef struct stm_s {
    pgo_decoder_t dec;
    stm_tx_t tx;
    wr_lsn_t received; /* highest WAL position seen (XLogData start/end, keepalive end) */
    const stm_handler_t *h;
    void *arg;
} stm_t;

void stm_init(stm_t *s, const stm_handler_t *h, void *arg);
void stm_close(stm_t *s);

/* One CopyData message of the replication stream ('k' or 'w'). Returns 0, STM_STOP, or
 * < 0 (WR_EPROTO for malformed or unexpected input, or the handler's error). */
int stm_on_copydata(stm_t *s, const uint8_t *buf, size_t len, wr_err_t *err) WR_MUST_CHECK;

/* One decoded pgoutput message of msglen bytes (the transaction logic and translation). */
int stm_on_message(stm_t *s, const pgo_msg_t *m, size_t msglen, wr_err_t *err) WR_MUST_CHECK;

/* Fills a BEGIN (key (final_lsn, 0)) or COMMIT (key (final_lsn, ordinal), end_lsn) event
 * of the transaction tx. */
void stm_boundary(const stm_tx_t *tx, dest_ev_kind_t kind, wr_lsn_t end_lsn, dest_event_t *ev);

/* Standby status timing: what was sent last and when. */
typedef struct stm_fb_s {
    int64_t last_ms;
    wr_lsn_t sent_write, sent_flush;
} stm_fb_t;

/* True if a status update is due at now: STM_STATUS_INTERVAL_MS since the last one, or
 * a position moved and STM_STATUS_MIN_MS passed. (A requested reply is sent at once by
 * the caller regardless.) */
bool stm_fb_due(const stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush);
/* Records a status update sent at now. */
void stm_fb_sent(stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush);
/* Milliseconds from now until the next update is due at the latest (>= 0). */
int64_t stm_fb_wait_ms(const stm_fb_t *fb, int64_t now);

#endif
