/*
 * fuzz_stream.c - libFuzzer target for the replication stream engine (stm_on_copydata:
 * keepalive and XLogData framing, pgoutput decoding, transaction state, ordinals and the
 * translation into destination events; stm_recv: the receive step with keepalive
 * replies, hold and time budget).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). An input is a
 * sequence of CopyData messages, each prefixed by a 2-byte big-endian length. It is run
 * twice: fed in order to stm_on_copydata, and queued in a fake transport that stm_recv
 * drains (the first byte picks a hold point and whether the time budget is 0 ms; no
 * keeper thread, so runs stay deterministic). A worker exits at the first error; here the
 * engine is started again. The handler checks the engine's invariants: a change's key is
 * (Begin's final LSN, the previous ordinal + 1) inside a transaction, BEGIN/COMMIT keys
 * follow stream.h, and received never goes back; through stm_recv also: one status
 * update per keepalive asking for a reply and no other (the interval is long), each with
 * write >= flush = apply = the flush the handler set (it moves it at every commit), never
 * going back, and STM_MORE only when hold() or the budget stopped the step.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/stream.h"

typedef struct fz_s {
    uint32_t last_ord;
    wr_lsn_t final;
    /* stm_recv mode */
    stm_t *s;         /* moves this engine's flush at every commit */
    wr_lsn_t flush;   /* the highest flush the handler set */
    uint64_t replies; /* keepalives that asked for a reply */
    uint64_t changes; /* changes seen, for hold() */
    uint64_t hold_at; /* hold() is true once changes reach this (0: never) */
    bool held;
} fz_t;

static int
fz_change(void *arg, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err)
{
    fz_t *f = arg;
    dest_event_t b;

    (void)msglen;
    (void)err;
    if (!tx->in_tx || ev->key.commit_lsn != tx->final_lsn || ev->key.ordinal != tx->ordinal)
        __builtin_trap();
    if (tx->begun && (f->final != tx->final_lsn || ev->key.ordinal <= f->last_ord))
        __builtin_trap();
    if (ev->kind < DEST_EV_INSERT || ev->kind > DEST_EV_TRUNCATE)
        __builtin_trap();
    if ((ev->kind == DEST_EV_INSERT || ev->kind == DEST_EV_UPDATE) && ev->new_row == NULL)
        __builtin_trap();
    if (ev->kind == DEST_EV_DELETE && ev->old_row == NULL)
        __builtin_trap();
    if (!tx->begun) {
        stm_boundary(tx, DEST_EV_BEGIN, 0, &b);
        if (b.key.ordinal != 0 || b.key.commit_lsn != tx->final_lsn)
            __builtin_trap();
        tx->begun = true;
        f->final = tx->final_lsn;
    }
    f->last_ord = ev->key.ordinal;
    /* write every other change, skip the rest, as the one-table filter does */
    return (ev->key.ordinal & 1) ? STM_WRITTEN : 0;
}

static int
fz_commit(void *arg, stm_tx_t *tx, wr_lsn_t end, wr_err_t *err)
{
    fz_t *f = arg;
    dest_event_t c;

    (void)err;
    if (tx->in_tx)
        __builtin_trap();
    stm_boundary(tx, DEST_EV_COMMIT, end, &c);
    if (c.end_lsn != end || c.key.ordinal != tx->ordinal)
        __builtin_trap();
    if (tx->begun && f->last_ord != tx->ordinal && tx->ordinal < f->last_ord)
        __builtin_trap();
    f->last_ord = 0;
    if (f->s != NULL) {
        stm_set_flush(f->s, end);
        if (end > f->flush)
            f->flush = end;
        if (f->s->flush != f->flush)
            __builtin_trap();
    }
    return 0;
}

static int
fz_keepalive(void *arg, wr_lsn_t wal_end, bool reply, wr_err_t *err)
{
    fz_t *f = arg;

    (void)wal_end;
    (void)err;
    if (reply)
        f->replies++;
    return 0;
}

static bool
fz_hold(void *arg)
{
    fz_t *f = arg;

    f->held = f->hold_at != 0 && f->changes >= f->hold_at;
    if (f->held)
        f->hold_at = 0; /* once */
    return f->held;
}

static int
fz_change_counted(void *arg, stm_tx_t *tx, dest_event_t *ev, size_t msglen, wr_err_t *err)
{
    ((fz_t *)arg)->changes++;
    return fz_change(arg, tx, ev, msglen, err);
}

static const stm_handler_t fz_handler = {NULL, fz_change, fz_commit, NULL, NULL};
static const stm_handler_t fz_recv_handler = {NULL, fz_change_counted, fz_commit, fz_keepalive,
                                              fz_hold};

/* The fake transport of the stm_recv run: the input's frames, and the status updates. */
typedef struct ft_s {
    const uint8_t *data;
    size_t size, off;
    uint64_t sent;
    wr_lsn_t last_write, last_flush;
    fz_t *f;
} ft_t;

static int
ft_consume(void *ctx, wr_err_t *err)
{
    (void)ctx;
    (void)err;
    return 0;
}

static int
ft_recv(void *ctx, char **buf, wr_err_t *err)
{
    ft_t *t = ctx;
    size_t n;

    (void)err;
    *buf = NULL;
    for (;;) { /* libpq never hands out an empty message (0 means none): skip those */
        if (t->off + 2 > t->size)
            return 0;
        n = ((size_t)t->data[t->off] << 8) | t->data[t->off + 1];
        t->off += 2;
        if (n > t->size - t->off)
            n = t->size - t->off;
        if (n > 0)
            break;
    }
    *buf = malloc(n); /* exactly sized: ASan sees reads past the end */
    memcpy(*buf, t->data + t->off, n);
    t->off += n;
    return (int)n;
}

static void
ft_release(void *ctx, char *buf)
{
    (void)ctx;
    free(buf);
}

static int
ft_send(void *ctx, wr_lsn_t write, wr_lsn_t flush, wr_lsn_t apply, wr_err_t *err)
{
    ft_t *t = ctx;

    (void)err;
    if (write < flush || apply != flush || flush != t->f->flush)
        __builtin_trap();
    if (t->sent > 0 && (write < t->last_write || flush < t->last_flush))
        __builtin_trap();
    t->sent++;
    t->last_write = write;
    t->last_flush = flush;
    return 0;
}

static int
ft_socket(void *ctx)
{
    (void)ctx;
    return -1;
}

static const stm_io_t ft_io = {ft_consume, ft_recv, ft_release, ft_send, ft_socket};

/* The stm_recv run. */
static void
fz_recv_run(const uint8_t *data, size_t size)
{
    static stm_t s;
    fz_t f;
    ft_t t;
    int64_t budget = size > 0 && (data[0] & 1) ? 0 : -1;
    uint64_t hold_at = size > 0 ? (uint64_t)(data[0] >> 1) % 8 : 0;

    memset(&t, 0, sizeof(t));
    t.data = data;
    t.size = size;
    t.f = &f;
    for (;;) {
        wr_err_t err;
        size_t n = 0;
        int rc;

        memset(&f, 0, sizeof(f));
        f.s = &s;
        f.hold_at = hold_at;
        stm_init(&s, &fz_recv_handler, &f);
        if (stm_attach(&s, &ft_io, &t, 60000, 0, false, &err) != 0)
            __builtin_trap();
        do {
            wr_lsn_t before = s.received;

            wr_err_clear(&err);
            f.held = false;
            rc = stm_recv(&s, true, budget, &n, &err);
            if (s.received < before)
                __builtin_trap();
            if (rc == STM_MORE && !f.held && budget != 0)
                __builtin_trap();
            if (rc == STM_IDLE && t.off + 2 <= t.size)
                __builtin_trap(); /* a frame left although the step said idle */
            if (rc < 0 && err.msg[0] == '\0')
                __builtin_trap();
        } while (rc == STM_MORE);
        if (t.sent != f.replies)
            __builtin_trap(); /* one reply per keepalive that asked, nothing else */
        stm_close(&s);
        if (rc >= 0)
            break;
        /* an error: a worker would restart; go on with the rest of the frames */
        t.sent = 0;
        if (t.off + 2 > t.size)
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static stm_t s;
    fz_t f;
    size_t off = 0;

    memset(&f, 0, sizeof(f));
    stm_init(&s, &fz_handler, &f);
    while (off + 2 <= size) {
        size_t n = ((size_t)data[off] << 8) | data[off + 1];
        uint8_t *msg;
        wr_lsn_t before = s.received;
        wr_err_t err;
        int rc;

        off += 2;
        if (n > size - off)
            n = size - off;
        msg = malloc(n ? n : 1); /* exactly sized: ASan sees reads past the end */
        memcpy(msg, data + off, n);
        off += n;
        wr_err_clear(&err);
        rc = stm_on_copydata(&s, msg, n, &err);
        free(msg);
        if (s.received < before)
            __builtin_trap();
        if (rc < 0) {
            if (err.msg[0] == '\0')
                __builtin_trap();
            stm_close(&s);
            memset(&f, 0, sizeof(f));
            stm_init(&s, &fz_handler, &f);
        }
    }
    stm_close(&s);
    fz_recv_run(data, size);
    return 0;
}
