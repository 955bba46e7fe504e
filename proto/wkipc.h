/*
 * wkipc.h - a worker's end of its supervisor channel (fd 3), blocking with poll().
 *
 * NOTES: used by walrelay-apply and walrelay-sync. Sends hello first and waits for
 * welcome. A request (set_phase, schema) waits for its ack; other messages that arrive
 * meanwhile are handed to the callback. EOF on the channel means the supervisor is gone:
 * callers exit at once (WR_EEOF), so no orphan holds a slot.
 */
#ifndef WR_WKIPC_H
#define WR_WKIPC_H

#include "ipc.h"

/* Called for every message that is not the awaited ack (table_state, stop, tables...).
 * The message is cleared after the callback returns. */
typedef void (*wk_msg_cb)(const ipc_msg_t *m, void *arg);

typedef struct wk_chan_s {
    int fd;
    ipc_reader_t rd;
    uint32_t next_req;
    wk_msg_cb cb;
    void *cb_arg;
    bool stop_requested; /* set when ["stop"] arrived */
} wk_chan_t;

#define WK_CHAN_FD 3

int wk_chan_init(wk_chan_t *c, int fd, wr_err_t *err) WR_MUST_CHECK;
void wk_chan_close(wk_chan_t *c);
void wk_chan_set_callback(wk_chan_t *c, wk_msg_cb cb, void *arg);
/*
 * (issue 12, defect 0) Takes this worker's exclusive lock in DIR/workers.lock (a fcntl
 * byte-range lock: byte 0 for the apply worker, byte relid for a table's sync worker),
 * held until the process exits, and released by the kernel however it exits. A worker
 * of a supervisor that was killed may still be finishing a destination commit; a new
 * worker of the same role must not read the destination's resume key, stream the slot or
 * truncate the table before that process is gone. Waits up to timeout_ms for it,
 * watching chan_fd (before the handshake the supervisor sends nothing: readable means it
 * is gone, WR_EEOF). Returns 0 with *lock_fd set (keep it open), WR_ECONN naming the
 * holder's pid on timeout (exit 1: retried), WR_EIO if the file cannot be used. Call
 * before the handshake, so that the supervisor hears hello only from the one worker.
 */
int wk_lock_role(const char *dir, uint32_t relid, int chan_fd, int timeout_ms, int *lock_fd,
                 wr_err_t *err) WR_MUST_CHECK;
#define WK_LOCK_FILE    "workers.lock"
#define WK_LOCK_WAIT_MS 20000 /* below the supervisor's 30 s hello timeout */

/* hello -> welcome (checks version) -> tables. *tables is a decoded "tables" message the
 * caller clears. WR_ESTOP if ["stop"] arrives first (added by the apply helper). */
int wk_chan_handshake(wk_chan_t *c, const char *role, uint32_t relid, ipc_msg_t *tables,
                      wr_err_t *err) WR_MUST_CHECK;
/* Sends one message (blocking until written). */
int wk_chan_send(wk_chan_t *c, const ipc_msg_t *m, wr_err_t *err) WR_MUST_CHECK;
/* Reads what is available and dispatches whole messages to the callback, waiting at most
 * timeout_ms (0 = don't wait, -1 = forever) for the first byte. Returns 0, or WR_EEOF /
 * WR_EPROTO (a broken stream). Invalid but well-framed messages are logged and answered
 * with ["error", ...]. */
int wk_chan_poll(wk_chan_t *c, int timeout_ms, wr_err_t *err) WR_MUST_CHECK;
/* set_phase request; waits for the ack. ok=false in the ack -> WR_ESTATE with its message. */
int wk_chan_set_phase(wk_chan_t *c, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
                      const char *err_kind, const char *err_msg, const char *err_hint,
                      wr_err_t *err) WR_MUST_CHECK;
/* ["worker_error", kind, message, hint] to the supervisor just before exiting on err:
 * kind is wr_err_code_name(err->code) unless given. Best effort: nothing is returned,
 * nothing waited for (the supervisor may be gone). */
void wk_chan_report_error(wk_chan_t *c, const char *kind, const wr_err_t *err);
/* schema request; waits for the ack. */
int wk_chan_put_schema(wk_chan_t *c, const wr_schema_t *s, wr_lsn_t lsn,
                       wr_err_t *err) WR_MUST_CHECK;
/* (issue 11, sync only) copy_plan request; waits for the ack, whose message (the name of
 * the snapshot the supervisor holds, "" if none) goes to held. */
int wk_chan_copy_plan(wk_chan_t *c, uint32_t relid, wr_lsn_t lsn, const char *snapshot,
                      const ipc_copy_range_t *ranges, uint32_t n, char *held, size_t held_len,
                      wr_err_t *err) WR_MUST_CHECK;
/* copy_plan_get request; *plan is the supervisor's "copy_plan" answer (caller clears). */
int wk_chan_copy_plan_get(wk_chan_t *c, uint32_t relid, ipc_msg_t *plan,
                          wr_err_t *err) WR_MUST_CHECK;
/* copy_range_done request; waits for the ack. */
int wk_chan_copy_range_done(wk_chan_t *c, uint32_t relid, uint32_t part, uint64_t rows,
                            wr_err_t *err) WR_MUST_CHECK;

#endif
