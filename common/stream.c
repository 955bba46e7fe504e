/*
 * stream.c - the replication stream engine shared by both workers (see stream.h): the
 * connection, the receive step, feedback and the status keeper thread; decoding, the
 * transaction and the translation into destination events.
 *
 * NOTES: runs in walrelay-apply and walrelay-sync. The decoding half allocates nothing
 * besides the pgoutput decoder's scratch buffers; the I/O half allocates the keeper's
 * state once per stm_start. The mutex rules are in stream.h (THE STATUS KEEPER): every
 * transport call holds it, no handler call does.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/repl.h"
#include "common/stream.h"

/* The keeper thread's state; everything below mu is guarded by it, and so are the
 * stm_t's flush and fb while the thread runs. */
struct stm_keeper_s {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    stm_t *s;
    bool quit;   /* stm_disconnect asks the thread to end */
    bool failed; /* a send failed: no more sends; err is returned to the main thread */
    wr_err_t err;
    wr_lsn_t write; /* the main thread's received, as of its last lock */
    uint64_t sent;  /* status updates this thread sent */
};

void
stm_init(stm_t *s, const stm_handler_t *h, void *arg)
{
    memset(s, 0, sizeof(*s));
    pgo_decoder_init(&s->dec);
    s->h = h;
    s->arg = arg;
    s->timeout_ms = -1;
}

void
stm_close(stm_t *s)
{
    stm_disconnect(s);
    pgo_decoder_close(&s->dec);
}

void
stm_boundary(const stm_tx_t *tx, dest_ev_kind_t kind, wr_lsn_t end_lsn, dest_event_t *ev)
{
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->key.commit_lsn = tx->final_lsn;
    ev->key.ordinal = kind == DEST_EV_BEGIN ? 0 : tx->ordinal;
    ev->xid = tx->xid;
    ev->commit_ts = tx->commit_ts;
    ev->end_lsn = kind == DEST_EV_COMMIT ? end_lsn : 0;
}

/* Counts one change in the transaction's ordinals. */
static int
stm_count(stm_tx_t *tx, char type, wr_err_t *err)
{
    if (!tx->in_tx)
        return wr_err_set(err, WR_EPROTO, "change message '%c' outside a transaction", type);
    if (tx->ordinal == UINT32_MAX)
        return wr_err_set(err, WR_EUNSUPPORTED, "transaction " WR_LSN_FMT " has too many changes",
                          WR_LSN_ARGS(tx->final_lsn));
    tx->ordinal++;
    return 0;
}

static int
stm_emit(stm_t *s, stm_tx_t *tx, dest_event_t *ev, uint32_t relid, size_t msglen, wr_err_t *err)
{
    ev->key.commit_lsn = tx->final_lsn;
    ev->key.ordinal = tx->ordinal;
    ev->xid = tx->xid;
    ev->commit_ts = tx->commit_ts;
    ev->relid = relid;
    if (s->h == NULL || s->h->change == NULL)
        return 0;
    return s->h->change(s->arg, tx, ev, msglen, err);
}

static int
stm_on_change(stm_t *s, stm_tx_t *tx, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    dest_event_t ev;
    uint32_t relid;
    int rc;

    rc = stm_count(tx, (char)m->type, err);
    if (rc != 0)
        return rc;
    memset(&ev, 0, sizeof(ev));
    switch (m->type) {
    case PGO_INSERT:
        relid = m->u.insert.relid;
        ev.kind = DEST_EV_INSERT;
        ev.new_row = &m->u.insert.newtup;
        break;
    case PGO_UPDATE:
        relid = m->u.update.relid;
        ev.kind = DEST_EV_UPDATE;
        ev.old_kind = m->u.update.oldkind;
        ev.old_row = m->u.update.oldkind ? &m->u.update.oldtup : NULL;
        ev.new_row = &m->u.update.newtup;
        break;
    default: /* PGO_DELETE */
        relid = m->u.delete_.relid;
        ev.kind = DEST_EV_DELETE;
        ev.old_kind = m->u.delete_.oldkind;
        ev.old_row = &m->u.delete_.oldtup;
        break;
    }
    rc = stm_emit(s, tx, &ev, relid, msglen, err);
    return rc == STM_WRITTEN ? 0 : rc;
}

static int
stm_on_truncate(stm_t *s, stm_tx_t *tx, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    if (!tx->in_tx)
        return wr_err_set(err, WR_EPROTO, "truncate message outside a transaction");
    for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
        dest_event_t ev;
        int rc = stm_count(tx, 'T', err);

        if (rc != 0)
            return rc;
        memset(&ev, 0, sizeof(ev));
        ev.kind = DEST_EV_TRUNCATE;
        ev.truncate_flags = m->u.truncate.flags;
        rc = stm_emit(s, tx, &ev, pgo_truncate_relid(m, i), msglen, err);
        if (rc == STM_WRITTEN)
            msglen = 0; /* count the message's size once */
        else if (rc != 0)
            return rc;
    }
    return 0;
}

int
stm_dispatch_change(stm_t *s, stm_tx_t *tx, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    switch (m->type) {
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
        return stm_on_change(s, tx, m, msglen, err);
    case PGO_TRUNCATE:
        return stm_on_truncate(s, tx, m, msglen, err);
    default:
        return wr_err_set(err, WR_EINVAL, "pgoutput message '%c' is not a change", m->type);
    }
}

/* A message of a stream block ('S' .. 'E'), or one of the messages that end a streamed
 * transaction ('c', 'A'), both outside any Begin .. Commit. */
static int
stm_on_stream(stm_t *s, const pgo_msg_t *m, const uint8_t *raw, size_t len, wr_err_t *err)
{
    const stm_handler_t *h = s->h;

    switch (m->type) {
    case PGO_STREAM_START:
        if (s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO,
                              "stream start of transaction %u inside transaction " WR_LSN_FMT,
                              (unsigned)m->u.stream_start.xid, WR_LSN_ARGS(s->tx.final_lsn));
        if (m->u.stream_start.xid == 0)
            return wr_err_set(err, WR_EPROTO, "stream start with invalid transaction id 0");
        s->stream_xid = m->u.stream_start.xid;
        s->streamed_msgs++;
        if (h == NULL || h->stream_start == NULL)
            return 0;
        return h->stream_start(s->arg, m->u.stream_start.xid, m->u.stream_start.first_segment,
                               s->msg_lsn, err);
    case PGO_STREAM_STOP: {
        uint32_t xid = s->stream_xid;

        s->stream_xid = 0;
        if (h == NULL || h->stream_stop == NULL)
            return 0;
        return h->stream_stop(s->arg, xid, err);
    }
    case PGO_STREAM_COMMIT:
        if (s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO,
                              "stream commit of transaction %u inside transaction " WR_LSN_FMT,
                              (unsigned)m->u.stream_commit.xid, WR_LSN_ARGS(s->tx.final_lsn));
        if (m->u.stream_commit.ts > INT64_MAX - DEST_PG_EPOCH_OFFSET_US)
            return wr_err_set(err, WR_EPROTO,
                              "stream commit of transaction %u: commit time %lld is out of range",
                              (unsigned)m->u.stream_commit.xid, (long long)m->u.stream_commit.ts);
        if (s->received < m->u.stream_commit.end_lsn)
            s->received = m->u.stream_commit.end_lsn;
        if (h == NULL || h->stream_commit == NULL)
            return wr_err_set(err, WR_EPROTO,
                              "stream commit of transaction %u, but streaming was "
                              "not asked for",
                              (unsigned)m->u.stream_commit.xid);
        return h->stream_commit(s->arg, m, err);
    case PGO_STREAM_ABORT:
        if (s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO,
                              "stream abort of transaction %u inside transaction " WR_LSN_FMT,
                              (unsigned)m->u.stream_abort.xid, WR_LSN_ARGS(s->tx.final_lsn));
        if (h == NULL || h->stream_abort == NULL)
            return wr_err_set(err, WR_EPROTO,
                              "stream abort of transaction %u, but streaming was "
                              "not asked for",
                              (unsigned)m->u.stream_abort.xid);
        return h->stream_abort(s->arg, m->u.stream_abort.xid, m->u.stream_abort.subxid, err);
    case PGO_ORIGIN:
        log_debug("origin message in a stream block name=%s xid=%u", m->u.origin.name,
                  (unsigned)s->stream_xid);
        return 0;
    default:
        /* Relation, Type, a change or a Message of the open block's transaction */
        if (m->type == PGO_TYPE)
            log_debug("type message oid=%u name=%s.%s", (unsigned)m->u.type.oid, m->u.type.nsp,
                      m->u.type.name);
        if (h == NULL || h->stream_msg == NULL)
            return wr_err_set(err, WR_EPROTO,
                              "streamed message '%c' of transaction %u, but "
                              "streaming was not asked for",
                              m->type, (unsigned)s->stream_xid);
        return h->stream_msg(s->arg, s->stream_xid, m, raw, len, err);
    }
}

int
stm_on_message(stm_t *s, const pgo_msg_t *m, size_t msglen, wr_err_t *err)
{
    int rc;

    switch (m->type) {
    case PGO_BEGIN:
        if (s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO,
                              "begin of transaction " WR_LSN_FMT " inside transaction " WR_LSN_FMT,
                              WR_LSN_ARGS(m->u.begin.final_lsn), WR_LSN_ARGS(s->tx.final_lsn));
        if (m->u.begin.commit_ts > INT64_MAX - DEST_PG_EPOCH_OFFSET_US)
            return wr_err_set(err, WR_EPROTO,
                              "begin of transaction " WR_LSN_FMT
                              ": commit time %lld is out of range",
                              WR_LSN_ARGS(m->u.begin.final_lsn), (long long)m->u.begin.commit_ts);
        s->tx.in_tx = true;
        s->tx.final_lsn = m->u.begin.final_lsn;
        s->tx.ordinal = 0;
        s->tx.xid = m->u.begin.xid;
        s->tx.commit_ts = m->u.begin.commit_ts + DEST_PG_EPOCH_OFFSET_US;
        s->tx.begun = false;
        return 0;
    case PGO_COMMIT:
        if (!s->tx.in_tx)
            return wr_err_set(err, WR_EPROTO, "commit message outside a transaction");
        if (m->u.commit.commit_lsn != s->tx.final_lsn)
            return wr_err_set(err, WR_EPROTO,
                              "incorrect commit LSN " WR_LSN_FMT
                              " in commit message (expected " WR_LSN_FMT ")",
                              WR_LSN_ARGS(m->u.commit.commit_lsn), WR_LSN_ARGS(s->tx.final_lsn));
        if (s->received < m->u.commit.end_lsn)
            s->received = m->u.commit.end_lsn;
        s->tx.in_tx = false;
        rc = 0;
        if (s->h != NULL && s->h->commit != NULL)
            rc = s->h->commit(s->arg, &s->tx, m->u.commit.end_lsn, err);
        s->tx.begun = false;
        return rc;
    case PGO_RELATION:
        if (s->h == NULL || s->h->relation == NULL)
            return 0;
        return s->h->relation(s->arg, &s->tx, m, err);
    case PGO_INSERT:
    case PGO_UPDATE:
    case PGO_DELETE:
        return stm_on_change(s, &s->tx, m, msglen, err);
    case PGO_TRUNCATE:
        return stm_on_truncate(s, &s->tx, m, msglen, err);
    case PGO_TYPE:
        log_debug("type message oid=%u name=%s.%s", (unsigned)m->u.type.oid, m->u.type.nsp,
                  m->u.type.name);
        return 0;
    case PGO_ORIGIN:
        log_debug("origin message name=%s lsn=" WR_LSN_FMT, m->u.origin.name,
                  WR_LSN_ARGS(m->u.origin.lsn));
        return 0;
    case PGO_MESSAGE:
        log_debug("logical message prefix=%s len=%u", m->u.message.prefix,
                  (unsigned)m->u.message.len);
        return 0;
    default:
        return wr_err_set(err, WR_EPROTO, "unexpected pgoutput message '%c'", m->type);
    }
}

int
stm_on_copydata(stm_t *s, const uint8_t *buf, size_t len, wr_err_t *err)
{
    int rc;

    if (len < 1)
        return wr_err_set(err, WR_EPROTO, "empty message on the replication stream");
    if (buf[0] == 'k') {
        wr_lsn_t wal_end;
        bool reply;

        rc = repl_parse_keepalive(buf, len, &wal_end, &reply, err);
        if (rc != 0)
            return rc;
        if (s->received < wal_end)
            s->received = wal_end;
        rc = 0;
        if (s->h != NULL && s->h->keepalive != NULL)
            rc = s->h->keepalive(s->arg, wal_end, reply, err);
        if (rc == 0 && reply)
            s->reply_pending = true;
        return rc;
    }
    if (buf[0] == 'w') {
        wr_lsn_t start, wal_end;
        const uint8_t *payload;
        size_t plen;
        pgo_msg_t m;

        rc = repl_parse_xlogdata(buf, len, &start, &wal_end, &payload, &plen, err);
        if (rc != 0)
            return rc;
        if (s->received < start)
            s->received = start;
        if (s->received < wal_end)
            s->received = wal_end;
        s->msg_lsn = start;
        rc = pgo_decode(&s->dec, payload, plen, &m, err);
        if (rc != 0)
            return rc;
        if (s->dec.in_stream || m.type == PGO_STREAM_STOP || m.type == PGO_STREAM_COMMIT ||
            m.type == PGO_STREAM_ABORT)
            return stm_on_stream(s, &m, payload, plen, err);
        return stm_on_message(s, &m, plen, err);
    }
    return wr_err_set(err, WR_EPROTO, "unexpected replication message type 0x%02x",
                      (unsigned)buf[0]);
}

/* ---- replaying a spooled streamed transaction ------------------------------------------ */

int
stm_replay_begin(stm_t *s, uint32_t xid, wr_lsn_t commit_lsn, int64_t ts, wr_err_t *err)
{
    pgo_msg_t m;

    memset(&m, 0, sizeof(m));
    m.type = PGO_BEGIN;
    m.u.begin.final_lsn = commit_lsn;
    m.u.begin.commit_ts = ts;
    m.u.begin.xid = xid;
    return stm_on_message(s, &m, 0, err);
}

int
stm_replay_msg(stm_t *s, const uint8_t *raw, size_t len, wr_err_t *err)
{
    pgo_msg_t m;
    int rc = pgo_decode_streamed(&s->dec, raw, len, &m, err);

    if (rc != 0)
        return rc;
    return stm_on_message(s, &m, len, err);
}

int
stm_replay_commit(stm_t *s, wr_lsn_t commit_lsn, wr_lsn_t end_lsn, int64_t ts, wr_err_t *err)
{
    pgo_msg_t m;

    memset(&m, 0, sizeof(m));
    m.type = PGO_COMMIT;
    m.u.commit.commit_lsn = commit_lsn;
    m.u.commit.end_lsn = end_lsn;
    m.u.commit.ts = ts;
    return stm_on_message(s, &m, 0, err);
}

/* ---- status timing ---------------------------------------------------------------- */

int64_t
stm_status_interval(int64_t timeout_ms)
{
    int64_t iv;

    if (timeout_ms <= 0)
        return STM_STATUS_INTERVAL_MS;
    iv = timeout_ms / 3;
    if (iv > STM_STATUS_INTERVAL_MS)
        iv = STM_STATUS_INTERVAL_MS;
    if (iv < STM_STATUS_FLOOR_MS)
        iv = STM_STATUS_FLOOR_MS;
    return iv;
}

static int64_t
stm_fb_interval(const stm_fb_t *fb)
{
    return fb->interval_ms > 0 ? fb->interval_ms : STM_STATUS_INTERVAL_MS;
}

bool
stm_fb_due(const stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush)
{
    bool changed = flush != fb->sent_flush || write != fb->sent_write;

    if (now - fb->last_ms >= stm_fb_interval(fb))
        return true;
    return changed && now - fb->last_ms >= STM_STATUS_MIN_MS;
}

void
stm_fb_sent(stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush)
{
    fb->last_ms = now;
    fb->sent_write = write;
    fb->sent_flush = flush;
}

int64_t
stm_fb_wait_ms(const stm_fb_t *fb, int64_t now, wr_lsn_t write, wr_lsn_t flush)
{
    int64_t left = fb->last_ms + stm_fb_interval(fb) - now;

    /* a moved position is due STM_STATUS_MIN_MS after the last update */
    if (flush != fb->sent_flush || write != fb->sent_write) {
        int64_t moved = fb->last_ms + STM_STATUS_MIN_MS - now;

        if (moved < left)
            left = moved;
    }
    return left < 0 ? 0 : left;
}

/* ---- the lock ---------------------------------------------------------------------- */

/* Main thread: takes the lock (when a keeper runs) and publishes the write position. */
static void
stm_lock_main(stm_t *s)
{
    struct stm_keeper_s *k = s->keeper;

    if (k == NULL)
        return;
    pthread_mutex_lock(&k->mu);
    if (k->write < s->received)
        k->write = s->received;
}

static void
stm_unlock(stm_t *s)
{
    if (s->keeper != NULL)
        pthread_mutex_unlock(&s->keeper->mu);
}

/* Lock held: the error of a failed keeper send, or 0. */
static int
stm_keeper_error(const stm_t *s, wr_err_t *err)
{
    if (s->keeper == NULL || !s->keeper->failed)
        return 0;
    *err = s->keeper->err;
    return err->code < 0 ? err->code : WR_ECONN;
}

/* Lock held: sends a status update with the current flush; records it. */
static int
stm_send_locked(stm_t *s, int64_t now, wr_lsn_t write, wr_err_t *err)
{
    wr_lsn_t flush = s->flush;
    int rc;

    if (write < flush)
        write = flush;
    rc = s->io->send_status(s->io_ctx, write, flush, flush, err);
    if (rc != 0)
        return rc < 0 ? rc : WR_ECONN;
    stm_fb_sent(&s->fb, now, write, flush);
    s->status_sent++;
    return 0;
}

/* ---- the status keeper thread --------------------------------------------------------- */

static void
stm_deadline(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* The keeper: whenever a status update is due and the main thread has not sent it, sends
 * it with what the main thread published (stream.h, THE STATUS KEEPER). */
static void *
stm_keeper_main(void *arg)
{
    struct stm_keeper_s *k = arg;
    stm_t *s = k->s;

    pthread_mutex_lock(&k->mu);
    while (!k->quit) {
        int64_t now = wr_now_ms();
        wr_lsn_t write = k->write > s->flush ? k->write : s->flush;
        int64_t wait;
        struct timespec ts;

        if (!k->failed && stm_fb_due(&s->fb, now, write, s->flush)) {
            wr_err_t err;

            wr_err_clear(&err);
            if (stm_send_locked(s, now, write, &err) != 0) {
                k->failed = true;
                k->err = err;
            } else {
                k->sent++;
                log_debug("status sent by the keeper write=" WR_LSN_FMT " flush=" WR_LSN_FMT,
                          WR_LSN_ARGS(write), WR_LSN_ARGS(s->flush));
            }
        }
        if (k->failed) {
            wait = STM_STATUS_INTERVAL_MS;
        } else {
            wait = stm_fb_wait_ms(&s->fb, now, write, s->flush);
            if (wait < 1)
                wait = 1;
        }
        stm_deadline(&ts, wait);
        while (!k->quit && pthread_cond_timedwait(&k->cv, &k->mu, &ts) == EINTR)
            ;
    }
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

static int
stm_keeper_start(stm_t *s, wr_err_t *err)
{
    struct stm_keeper_s *k = calloc(1, sizeof(*k));
    pthread_condattr_t ca;
    sigset_t all, old;
    int rc;

    if (k == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory starting the status keeper");
    k->s = s;
    k->write = s->received;
    pthread_mutex_init(&k->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->keeper = k;
    /* signals go to the main thread only: its handlers set flags, its poll() sees EINTR */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&k->thread, NULL, stm_keeper_main, k);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        s->keeper = NULL;
        pthread_cond_destroy(&k->cv);
        pthread_mutex_destroy(&k->mu);
        free(k);
        wr_err_set(err, WR_EIO, "cannot start the status keeper thread: %s", strerror(rc));
        wr_err_hint(err, "the system is out of threads or memory; walrelay retries");
        return WR_EIO;
    }
    return 0;
}

static void
stm_keeper_stop(stm_t *s)
{
    struct stm_keeper_s *k = s->keeper;

    if (k == NULL)
        return;
    pthread_mutex_lock(&k->mu);
    k->quit = true;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    s->keeper = NULL;
    if (k->sent > 0)
        log_debug("status keeper stopped sent=%llu", (unsigned long long)k->sent);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

void
stm_counters(stm_t *s, uint64_t *bytes_received, uint64_t *status_sent)
{
    *bytes_received = s->bytes_received;
    if (s->keeper != NULL)
        pthread_mutex_lock(&s->keeper->mu);
    *status_sent = s->status_sent;
    if (s->keeper != NULL)
        pthread_mutex_unlock(&s->keeper->mu);
}

uint64_t
stm_keeper_sent(stm_t *s)
{
    uint64_t n;

    if (s->keeper == NULL)
        return 0;
    pthread_mutex_lock(&s->keeper->mu);
    n = s->keeper->sent;
    pthread_mutex_unlock(&s->keeper->mu);
    return n;
}

/* ---- the libpq transport -------------------------------------------------------------- */

static int
stm_pq_consume(void *ctx, wr_err_t *err)
{
    return repl_consume(ctx, err);
}

static int
stm_pq_recv(void *ctx, char **buf, wr_err_t *err)
{
    return repl_recv(ctx, buf, err);
}

static void
stm_pq_release(void *ctx, char *buf)
{
    (void)ctx; /* may be closed already (stm_disconnect in a handler) */
    PQfreemem(buf);
}

static int
stm_pq_send_status(void *ctx, wr_lsn_t write, wr_lsn_t flush, wr_lsn_t apply, wr_err_t *err)
{
    return repl_send_status(ctx, write, flush, apply, false, err);
}

static int
stm_pq_socket(void *ctx)
{
    return PQsocket(ctx);
}

static const stm_io_t stm_pq_io = {
    .consume = stm_pq_consume,
    .recv = stm_pq_recv,
    .release = stm_pq_release,
    .send_status = stm_pq_send_status,
    .socket = stm_pq_socket,
};

/* ---- the connection ------------------------------------------------------------------ */

int
stm_connect(stm_t *s, const char *conninfo, const char *appname, wr_err_t *err)
{
    int rc;

    stm_disconnect(s);
    rc = repl_connect(conninfo, true, appname, &s->conn, err);
    if (rc != 0)
        return rc;
    rc = repl_wal_sender_timeout(s->conn, &s->timeout_ms, err);
    if (rc != 0) {
        PQfinish(s->conn);
        s->conn = NULL;
        return rc;
    }
    return 0;
}

PGconn *
stm_conn(const stm_t *s)
{
    return s->io == NULL ? s->conn : NULL;
}

int
stm_attach(stm_t *s, const stm_io_t *io, void *ctx, int64_t timeout_ms, wr_lsn_t flush, bool keeper,
           wr_err_t *err)
{
    s->io = io;
    s->io_ctx = ctx;
    s->timeout_ms = timeout_ms;
    s->flush = flush;
    if (s->received < flush)
        s->received = flush;
    s->buffered = false;
    s->reply_pending = false;
    memset(&s->fb, 0, sizeof(s->fb));
    s->fb.interval_ms = stm_status_interval(timeout_ms);
    stm_fb_sent(&s->fb, wr_now_ms(), s->received, flush);
    if (keeper) {
        int rc = stm_keeper_start(s, err);

        if (rc != 0) {
            s->io = NULL;
            s->io_ctx = NULL;
            return rc;
        }
    }
    return 0;
}

int
stm_start(stm_t *s, const char *slot, wr_lsn_t start, const char *publication, wr_lsn_t flush,
          wr_err_t *err)
{
    int rc;

    if (s->conn == NULL || s->io != NULL)
        return wr_err_set(err, WR_EINVAL, "starting replication on slot \"%s\": %s", slot,
                          s->conn == NULL ? "not connected" : "already streaming");
    rc = repl_start_streaming(s->conn, slot, start, publication, s->streaming, err);
    if (rc != 0)
        return rc;
    rc = stm_attach(s, &stm_pq_io, s->conn, s->timeout_ms, flush, true, err);
    if (rc != 0)
        return rc;
    log_info("replication started slot=%s start=" WR_LSN_FMT " flush=" WR_LSN_FMT
             " wal_sender_timeout_ms=%lld status_interval_ms=%lld proto_version=%d",
             slot, WR_LSN_ARGS(start), WR_LSN_ARGS(flush), (long long)s->timeout_ms,
             (long long)s->fb.interval_ms, s->streaming ? 2 : 1);
    return 0;
}

void
stm_disconnect(stm_t *s)
{
    stm_keeper_stop(s);
    s->io = NULL;
    s->io_ctx = NULL;
    s->buffered = false;
    s->reply_pending = false;
    /* a new stream starts outside any transaction and any stream block */
    memset(&s->tx, 0, sizeof(s->tx));
    s->stream_xid = 0;
    s->dec.in_stream = false;
    if (s->conn != NULL) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
}

bool
stm_streaming(const stm_t *s)
{
    return s->io != NULL;
}

/* ---- the receive step and feedback ------------------------------------------------- */

/* The write position a status update reports: what was received, never behind the flush. */
static wr_lsn_t
stm_write_pos(const stm_t *s)
{
    return s->received > s->flush ? s->received : s->flush;
}

int
stm_feedback(stm_t *s, bool force, wr_err_t *err)
{
    int64_t now;
    wr_lsn_t write;
    bool sent = false;
    int rc;

    if (s->io == NULL)
        return 0;
    stm_lock_main(s);
    rc = stm_keeper_error(s, err);
    now = wr_now_ms();
    write = stm_write_pos(s);
    if (rc == 0 && (force || stm_fb_due(&s->fb, now, write, s->flush))) {
        rc = stm_send_locked(s, now, write, err);
        sent = rc == 0;
    }
    stm_unlock(s);
    if (rc != 0)
        wr_err_prefix(err, "sending standby status: ");
    else if (sent)
        log_debug("status sent write=" WR_LSN_FMT " flush=" WR_LSN_FMT "%s", WR_LSN_ARGS(write),
                  WR_LSN_ARGS(s->flush), force ? " forced=1" : "");
    return rc;
}

void
stm_set_flush(stm_t *s, wr_lsn_t lsn)
{
    if (lsn <= s->flush)
        return;
    stm_lock_main(s);
    s->flush = lsn;
    stm_unlock(s);
}

int64_t
stm_feedback_wait_ms(stm_t *s)
{
    int64_t ms;

    stm_lock_main(s);
    ms = stm_fb_wait_ms(&s->fb, wr_now_ms(), stm_write_pos(s), s->flush);
    stm_unlock(s);
    return ms;
}

int
stm_recv(stm_t *s, bool consume, int64_t budget_ms, size_t *n, wr_err_t *err)
{
    const stm_io_t *io = s->io;
    void *ctx = s->io_ctx;
    int64_t start = budget_ms >= 0 ? wr_now_ms() : 0;
    size_t count = 0;
    int rc;

    if (n != NULL)
        *n = 0;
    if (io == NULL)
        return wr_err_set(err, WR_ECONN, "the replication stream is not started");
    s->buffered = false;
    stm_lock_main(s);
    rc = stm_keeper_error(s, err);
    if (rc == 0 && consume)
        rc = io->consume(ctx, err);
    stm_unlock(s);
    if (rc != 0)
        return rc;
    for (;;) {
        char *buf = NULL;
        int len;

        if ((s->h != NULL && s->h->hold != NULL && s->h->hold(s->arg)) ||
            (budget_ms >= 0 && count > 0 && wr_now_ms() - start >= budget_ms)) {
            s->buffered = true;
            rc = STM_MORE;
            break;
        }
        stm_lock_main(s);
        len = io->recv(ctx, &buf, err);
        stm_unlock(s);
        if (len == 0) {
            rc = STM_IDLE;
            break;
        }
        if (len < 0) {
            rc = len;
            if (rc == WR_EEOF) /* the server ended the stream: a restart, unlike fd 3's EOF */
                rc = err->code = WR_ECONN;
            break;
        }
        count++;
        s->bytes_received += (uint64_t)len;
        rc = stm_on_copydata(s, (const uint8_t *)buf, (size_t)len, err);
        io->release(ctx, buf);
        if (s->io == NULL)
            break; /* a handler disconnected (it returned STM_STOP or an error) */
        if (rc == 0 && s->reply_pending) {
            s->reply_pending = false;
            rc = stm_feedback(s, true, err);
        }
        if (rc != 0) {
            if (rc == STM_STOP)
                s->buffered = true;
            break;
        }
    }
    if (n != NULL)
        *n = count;
    return rc;
}

int
stm_socket(stm_t *s)
{
    int sock;

    if (s->io == NULL)
        return -1;
    stm_lock_main(s);
    sock = s->io->socket(s->io_ctx);
    stm_unlock(s);
    return sock;
}

int
stm_wait(stm_t *s, int extra_fd, int timeout_ms, bool *readable, wr_err_t *err)
{
    struct pollfd p[2];
    int64_t fbw;
    int sock;

    *readable = false;
    s->extra_ready = true;
    if (s->io == NULL)
        return wr_err_set(err, WR_ECONN, "the replication stream is not started");
    if (s->buffered) {
        *readable = true;
        return 0;
    }
    /* under the lock: a failed send of the keeper may close the socket meanwhile (poll()
     * then reports it, and the next stm_recv the error) */
    stm_lock_main(s);
    /* until the next status update is due, also one for a moved position: a worker that
     * has just made its last change durable confirms it within STM_STATUS_MIN_MS (the
     * wait was the interval's, and the end of a drain was confirmed up to 1 s late) */
    fbw = stm_fb_wait_ms(&s->fb, wr_now_ms(), stm_write_pos(s), s->flush);
    sock = s->io->socket(s->io_ctx);
    stm_unlock(s);
    if (timeout_ms < 0 || timeout_ms > fbw)
        timeout_ms = (int)fbw;
    p[0].fd = sock;
    p[0].events = POLLIN;
    p[0].revents = 0;
    p[1].fd = extra_fd;
    p[1].events = POLLIN;
    p[1].revents = 0;
    if (poll(p, 2, timeout_ms) < 0) {
        if (errno == EINTR)
            return 0;
        return wr_err_set(err, WR_EIO, "poll: %s", strerror(errno));
    }
    *readable = sock >= 0 && p[0].revents != 0;
    s->extra_ready = extra_fd >= 0 && p[1].revents != 0;
    return 0;
}
