/*
 * fuzz_stream.c - libFuzzer target for the replication stream engine (stm_on_copydata:
 * keepalive and XLogData framing, pgoutput decoding, transaction state, ordinals and the
 * translation into destination events).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). An input is a
 * sequence of CopyData messages, each prefixed by a 2-byte big-endian length, fed in order
 * to one engine (a worker exits at the first error; here the engine is started again).
 * The handler checks the engine's invariants: a change's key is (Begin's final LSN, the
 * previous ordinal + 1) inside a transaction, BEGIN/COMMIT keys follow stream.h, and
 * received never goes back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/stream.h"

typedef struct fz_s {
    uint32_t last_ord;
    wr_lsn_t final;
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
    return 0;
}

static const stm_handler_t fz_handler = {NULL, fz_change, fz_commit, NULL};

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
    return 0;
}
