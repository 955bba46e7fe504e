/*
 * stream.h - the replication stream engine shared by walrelay-apply and walrelay-sync:
 * the replication connection and its I/O (connect, START_REPLICATION with the pgoutput
 * options, the non-blocking wait/receive step, keepalive replies, standby status
 * feedback and the status keeper thread), CopyData dispatch (keepalive 'k', XLogData 'w'
 * decoded through pgoutput.c), the source transaction being received (Begin/Commit,
 * commit-LSN check, ordinals), and the translation of pgoutput changes into destination
 * events with their resume key.
 *
 * NOTES: linked into both workers; one engine per replication stream (the apply worker's
 * slot, or a sync worker's slot during catch-up). The decoding half (stm_on_copydata,
 * stm_on_message) performs no I/O and calls the worker's handler back; the I/O half
 * (stm_connect .. stm_disconnect) drives it. The I/O goes through a small transport
 * table (stm_io_t): libpq in the workers, captured bytes in tests/unit/test_stream.c and
 * tests/fuzz/fuzz_stream.c, so the receive loop, the keepalive replies and the keeper
 * are tested without a server. Persists nothing.
 *
 * THE LOOP (both workers)
 *
 *   stm_connect()                  replication=database, repl_connect's session settings;
 *                                  reads the server's wal_sender_timeout (SHOW: it may be
 *                                  set per connection) and derives the status interval
 *   [commands on stm_conn()]       e.g. CREATE_REPLICATION_SLOT (apply, a new slot)
 *   stm_start(slot, start, pub, flush)
 *                                  START_REPLICATION ... (proto_version '1', or '2' with
 *                                  streaming 'on' when stm_t.streaming is set;
 *                                  publication_names), starts the status keeper
 *   loop:
 *     stm_recv(consume, budget)    hands every CopyData libpq holds to the engine; returns
 *                                  STM_IDLE when libpq holds nothing more (the point where
 *                                  "nothing more is buffered right now" is true), STM_MORE
 *                                  when it stopped early (time budget, or the handler's
 *                                  hold()), STM_STOP when a handler asked to stop
 *     stm_set_flush(lsn)           after the destination made lsn durable (monotonic)
 *     stm_feedback(false)          a status update when due
 *     stm_wait(extra_fd, timeout)  poll() on the socket and the worker's channel, never
 *                                  past the next status due; 0 when libpq holds messages
 *   stm_disconnect()               stops the keeper, closes the connection
 *
 * FEEDBACK
 *
 *   Standby status 'r': write = max(received, flush), flush = apply = the position the
 *   worker set with stm_set_flush (never ahead of what the destination holds). A
 *   keepalive that asks for a reply is answered by stm_recv at once, after the worker's
 *   keepalive handler (which may move the flush). Otherwise a status goes out when the
 *   flush or write moved (at most once per STM_STATUS_MIN_MS: the slot's confirmed_flush
 *   follows the destination within 0.1 s, as the native subscription's, which reports
 *   every move; it was 1 s, and a drain's end was confirmed up to 1 s after the
 *   destination held it) and at least every status
 *   interval: min(STM_STATUS_INTERVAL_MS, wal_sender_timeout / 3), never below
 *   STM_STATUS_FLOOR_MS; STM_STATUS_INTERVAL_MS when the timeout is 0 (off). The
 *   walsender ends a connection from which it has received nothing for
 *   wal_sender_timeout (any message counts) and asks for a reply at half of it; a third
 *   leaves room for a late wake-up.
 *
 * THE STATUS KEEPER (issue 12, defect 9)
 *
 *   A worker's main thread can be away from the loop for any time: inside a destination
 *   call (a commit, a rebuilding ALTER, a destination that blocks), waiting for a table's
 *   catch-up (apply), waiting for the supervisor's ack, paused. So stm_start starts one
 *   small thread per stream that sends the same status update whenever one is due and
 *   the main thread has not sent it. The connection is used under one mutex, never by
 *   two threads at once: the main thread takes it around every libpq call on the stream
 *   (consume, receive, send; never around a handler call), the keeper around its send.
 *   The keeper reports only what the main thread published under the same mutex: the
 *   flush given to stm_set_flush (so it is never ahead of what is durable) and the write
 *   position as of the main thread's last receive. It never reads from the connection:
 *   a keepalive waiting in the socket is answered when the main thread comes back, and
 *   the walsender does not need it answered, because our status updates arrive more
 *   often than its timeout. A failed send stops the keeper's sends; the main thread gets
 *   that error from its next stm_recv / stm_feedback. The keeper blocks every signal
 *   (handlers only set flags, and the main thread's poll() must see EINTR) and logs
 *   nothing but debug lines.
 *
 * STREAMING (issue 11, protocol version 2): with stm_t.streaming set before stm_start,
 * START_REPLICATION asks for proto_version '2' and streaming 'on'. The walsender then
 * sends a transaction whose decoded size passes the server's logical_decoding_work_mem
 * while it is still in progress, in blocks: Stream Start (xid) .. Relation / Type /
 * changes / Message, each with the xid of the (sub)transaction that made it .. Stream
 * Stop; complete transactions (Begin .. Commit) that commit meanwhile come between the
 * blocks; the end is Stream Commit (commit LSN, end LSN, time) or Stream Abort (xid, and
 * subxid: a subtransaction rolled back, or the xid itself: the whole transaction). The
 * engine checks the structure (pgoutput.c: no Begin/Commit inside a block, no Stop
 * outside one) and hands every message of a block to the worker's stream_msg (with the
 * raw pgoutput bytes, for a spool), the boundaries to stream_start / stream_stop /
 * stream_commit / stream_abort. It keeps no per-xid state: what a worker does with a
 * streamed transaction (write it at once into an open destination transaction, or spool
 * it and apply it at its Stream Commit) is the worker's (worker_apply/apply.c,
 * STREAMED TRANSACTIONS). Two helpers serve the worker: stm_dispatch_change translates a
 * change into events counted in a transaction context of the worker's own (an open
 * streamed transaction), and stm_replay_* feed a spooled transaction back through the
 * normal path (Begin with the commit LSN, the messages, Commit) so that it is counted,
 * keyed and handled exactly like one that was not streamed. stm_msg_lsn is the XLogData
 * start of the message being handled (for a streamed change: the change's own LSN).
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

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pgoutput.h"
#include "common/wr.h"
#include "destinations/destination.h"

/* Handler return values besides 0 (nothing written / go on) and < 0 (error, err set). */
#define STM_WRITTEN 1 /* change: the event was written to the destination */
#define STM_STOP    2 /* stop dispatching this message; stm_on_* returns STM_STOP */

/* stm_recv results besides STM_STOP and < 0. */
#define STM_IDLE 0 /* libpq holds no complete message: nothing more to process right now */
#define STM_MORE 3 /* stopped early (time budget, hold()): messages may still be buffered */

#define STM_STATUS_INTERVAL_MS 10000 /* a status update at least this often, at most */
#define STM_STATUS_MIN_MS      100   /* a moved position is reported at most this often */
#define STM_STATUS_FLOOR_MS    10    /* the interval never goes below this */

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
    /* a keepalive; received is already moved to wal_end. A requested reply is sent by
     * stm_recv after this returns 0 (so a flush moved here is in the reply). */
    int (*keepalive)(void *arg, wr_lsn_t wal_end, bool reply_requested, wr_err_t *err);
    /* asked by stm_recv before each message: true leaves the rest buffered (STM_MORE) */
    bool (*hold)(void *arg);

    /* ---- protocol version 2 (stm_t.streaming): STREAMING above. Without these, a
     * streamed message is WR_EPROTO. ---- */
    /* Stream Start of top-level transaction xid; first: its first block. lsn: the
     * message's XLogData start */
    int (*stream_start)(void *arg, uint32_t xid, bool first, wr_lsn_t lsn, wr_err_t *err);
    int (*stream_stop)(void *arg, uint32_t xid, wr_err_t *err);
    /* a message of the open block of transaction xid: Relation, Type, Insert, Update,
     * Delete, Truncate or Message, decoded (m->xid: the subtransaction that made it) and
     * raw (the pgoutput bytes, for pgo_decode_streamed later) */
    int (*stream_msg)(void *arg, uint32_t xid, const pgo_msg_t *m, const uint8_t *raw, size_t len,
                      wr_err_t *err);
    /* Stream Commit (m->u.stream_commit; received is already moved to its end LSN) */
    int (*stream_commit)(void *arg, const pgo_msg_t *m, wr_err_t *err);
    /* Stream Abort: subxid == xid the whole transaction, else that subtransaction */
    int (*stream_abort)(void *arg, uint32_t xid, uint32_t subxid, wr_err_t *err);
} stm_handler_t;

/* The transport under the engine: libpq in the workers (stm_start), captured bytes in
 * tests (stm_attach). Each function is called with the engine's lock held. */
typedef struct stm_io_s {
    /* reads what the socket has, without blocking; 0 or < 0 (WR_ECONN) */
    int (*consume)(void *ctx, wr_err_t *err);
    /* one complete CopyData message, without blocking: > 0 its length with *buf set
     * (given back through release), 0 none buffered, WR_EEOF the server ended the
     * stream, < 0 error (repl_recv's contract) */
    int (*recv)(void *ctx, char **buf, wr_err_t *err);
    void (*release)(void *ctx, char *buf);
    /* one standby status update */
    int (*send_status)(void *ctx, wr_lsn_t write, wr_lsn_t flush, wr_lsn_t apply, wr_err_t *err);
    /* the descriptor to poll for input, or -1 */
    int (*socket)(void *ctx);
} stm_io_t;

/* Standby status timing: what was sent last and when, and the interval. */
typedef struct stm_fb_s {
    int64_t last_ms;
    wr_lsn_t sent_write, sent_flush;
    int64_t interval_ms; /* 0 means STM_STATUS_INTERVAL_MS */
} stm_fb_t;

struct stm_keeper_s;

typedef struct stm_s {
    pgo_decoder_t dec;
    stm_tx_t tx;
    bool streaming;      /* ask for protocol version 2 with streaming 'on' (set before stm_start) */
    uint32_t stream_xid; /* the open stream block's transaction, 0 outside a block */
    wr_lsn_t msg_lsn;    /* XLogData start of the message being handled */
    uint64_t streamed_msgs; /* stream blocks received (Stream Start messages) */
    wr_lsn_t received;      /* highest WAL position seen (XLogData start/end, keepalive end) */
    const stm_handler_t *h;
    void *arg;

    /* feedback (written by the main thread; under the lock while the keeper runs) */
    wr_lsn_t flush;     /* durable position set by the worker (stm_set_flush) */
    stm_fb_t fb;        /* status timing */
    int64_t timeout_ms; /* the server's wal_sender_timeout, 0 = off, -1 = not read */
    bool reply_pending; /* a keepalive asked for a reply (sent by stm_recv) */

    /* I/O */
    PGconn *conn;       /* stm_connect's connection (NULL with stm_attach) */
    const stm_io_t *io; /* set while streaming */
    void *io_ctx;
    bool buffered;               /* the last stm_recv left messages in the transport */
    bool extra_ready;            /* stm_wait: extra_fd was readable, or not looked at (buffered) */
    uint64_t bytes_received;     /* CopyData bytes received (main thread only) */
    uint64_t status_sent;        /* status updates sent, by either thread (under the lock) */
    struct stm_keeper_s *keeper; /* NULL when no keeper thread runs */
} stm_t;

void stm_init(stm_t *s, const stm_handler_t *h, void *arg);
/* Stops the keeper and closes the connection (stm_disconnect), frees the decoder. */
void stm_close(stm_t *s);

/* ---- the connection ------------------------------------------------------------------ */

/* Connects for replication (replication=database and repl_connect's session settings,
 * application_name appname) and reads wal_sender_timeout, which sets the status
 * interval. Errors: repl_connect's; the SHOW failing is WR_ECONN. */
int stm_connect(stm_t *s, const char *conninfo, const char *appname, wr_err_t *err) WR_MUST_CHECK;
/* The connection, for replication commands before stm_start (CREATE_REPLICATION_SLOT);
 * never to be used after it. NULL when not connected. */
PGconn *stm_conn(const stm_t *s);
/* START_REPLICATION SLOT slot LOGICAL start (proto_version '1', publication_names);
 * received and the reported flush start at flush (the slot's confirmed position), and
 * the status keeper starts. Errors: repl_start's; WR_EIO if the thread cannot start. */
int stm_start(stm_t *s, const char *slot, wr_lsn_t start, const char *publication, wr_lsn_t flush,
              wr_err_t *err) WR_MUST_CHECK;
/* Streams over a caller's transport (tests): like stm_start after START_REPLICATION, with
 * timeout_ms as the server's wal_sender_timeout; keeper starts the keeper thread. */
int stm_attach(stm_t *s, const stm_io_t *io, void *ctx, int64_t timeout_ms, wr_lsn_t flush,
               bool keeper, wr_err_t *err) WR_MUST_CHECK;
/* Stops the keeper (joins it) and closes the connection. Safe to call from a handler
 * inside stm_recv (which then returns at once) and when not connected. */
void stm_disconnect(stm_t *s);
/* True between stm_start/stm_attach and stm_disconnect. */
bool stm_streaming(const stm_t *s);

/* ---- the receive step and feedback ------------------------------------------------- */

/* With consume, reads the socket first. Then hands every complete CopyData message the
 * transport holds to stm_on_copydata, answering a reply-requested keepalive at once,
 * until none is left (STM_IDLE), a handler returns STM_STOP (STM_STOP; the rest stays
 * buffered), or before the next message hold() returns true or budget_ms (< 0: none)
 * has passed (STM_MORE). *n (may be NULL) counts the messages handled. Errors: WR_ECONN
 * for a lost connection or the server ending the stream, the decoder's and handler's. */
int stm_recv(stm_t *s, bool consume, int64_t budget_ms, size_t *n, wr_err_t *err) WR_MUST_CHECK;

/* Moves the reported flush to lsn if it is ahead (never back). Call only once the
 * destination holds everything up to lsn. */
void stm_set_flush(stm_t *s, wr_lsn_t lsn);

/* Sends a status update if one is due (stm_fb_due), or at once with force. Returns 0,
 * or WR_ECONN (also a send failure the keeper met). */
int stm_feedback(stm_t *s, bool force, wr_err_t *err) WR_MUST_CHECK;

/* Milliseconds until a status update is due at the latest (>= 0). */
int64_t stm_feedback_wait_ms(stm_t *s);

/* Waits until the replication socket or extra_fd (-1: none) is readable, at most
 * timeout_ms and never past stm_feedback_wait_ms(); not at all when the transport holds
 * messages already (buffered). *readable: the replication socket is readable (or
 * buffered). extra_ready: extra_fd was readable, or stm_wait did not poll (buffered, EINTR,
 * an error) - only false when poll() said it has nothing. 0 (also on EINTR), or WR_EIO. */
int stm_wait(stm_t *s, int extra_fd, int timeout_ms, bool *readable, wr_err_t *err) WR_MUST_CHECK;

/* The descriptor to poll for the stream's input, -1 when not streaming: for a worker that
 * waits on it somewhere else (walrelay-apply while its destination waits for an answer,
 * destinations/destination.h dest_set_readahead). Read what it signals only with
 * stm_recv. */
int stm_socket(stm_t *s);

/* Totals since stm_init, for the worker's metrics: CopyData bytes received and status
 * updates sent (by the main thread and the keeper). */
void stm_counters(stm_t *s, uint64_t *bytes_received, uint64_t *status_sent);

/* Status updates the keeper thread sent since stm_start (tests, logs). */
uint64_t stm_keeper_sent(stm_t *s);

/* The status interval for a wal_sender_timeout of timeout_ms (0: off). */
int64_t stm_status_interval(int64_t timeout_ms);

/* ---- decoding (no I/O) ---------------------------------------------------------------- */

/* One CopyData message of the replication stream ('k' or 'w'). Returns 0, STM_STOP, or
 * < 0 (WR_EPROTO for malformed or unexpected input, or the handler's error). A
 * keepalive asking for a reply sets reply_pending (when its handler returned 0). */
int stm_on_copydata(stm_t *s, const uint8_t *buf, size_t len, wr_err_t *err) WR_MUST_CHECK;

/* One decoded pgoutput message of msglen bytes (the transaction logic and translation). */
int stm_on_message(stm_t *s, const pgo_msg_t *m, size_t msglen, wr_err_t *err) WR_MUST_CHECK;

/* Translates a change message (Insert, Update, Delete, Truncate) into events counted in
 * tx (ordinal += 1, or one per relid of a Truncate) and hands each to the change
 * callback with tx: a worker's own transaction context (an open streamed transaction
 * whose commit LSN is not known yet). Returns 0, STM_STOP or < 0. */
int stm_dispatch_change(stm_t *s, stm_tx_t *tx, const pgo_msg_t *m, size_t msglen,
                        wr_err_t *err) WR_MUST_CHECK;

/* Replays a spooled streamed transaction through the normal path: a Begin with
 * final_lsn = commit_lsn (ts as on the wire: us since 2000-01-01), each message (the raw
 * bytes stream_msg got; decoded with pgo_decode_streamed and handled like a message of a
 * Begin .. Commit), then the Commit. Return what stm_on_message returns. */
int stm_replay_begin(stm_t *s, uint32_t xid, wr_lsn_t commit_lsn, int64_t ts,
                     wr_err_t *err) WR_MUST_CHECK;
int stm_replay_msg(stm_t *s, const uint8_t *raw, size_t len, wr_err_t *err) WR_MUST_CHECK;
int stm_replay_commit(stm_t *s, wr_lsn_t commit_lsn, wr_lsn_t end_lsn, int64_t ts,
                      wr_err_t *err) WR_MUST_CHECK;

/* Fills a BEGIN (key (final_lsn, 0)) or COMMIT (key (final_lsn, ordinal), end_lsn) event
 * of the transaction tx. */
void stm_boundary(const stm_tx_t *tx, dest_ev_kind_t kind, wr_lsn_t end_lsn, dest_event_t *ev);

/* ---- status timing (pure) ------------------------------------------------------------- */

/* True if a status update is due at now: the interval since the last one, or a position
 * moved and STM_STATUS_MIN_MS passed. (A requested reply is sent at once regardless.) */
bool stm_fb_due(const stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush);
/* Records a status update sent at now. */
void stm_fb_sent(stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush);
/* Milliseconds from now until the next update is due (>= 0): at the interval, or
 * STM_STATUS_MIN_MS after the last one when write or flush moved since. */
int64_t stm_fb_wait_ms(const stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush);

#endif
