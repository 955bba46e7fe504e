/*
 * fuzz_ipc.c - libFuzzer target for the msgpack message reader (ipc_reader_t, ipc_decode).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). The first input
 * byte picks a chunk size; the rest is fed to a fresh reader in chunks of that size, as a
 * socket would deliver it, taking all complete messages after each chunk, until the
 * stream breaks. Each decoded message is re-encoded with ipc_encode and must decode again.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/ipc.h"

static void
roundtrip(const ipc_msg_t *m)
{
    msgpack_sbuffer sb;
    msgpack_unpacked up;
    ipc_msg_t again;
    wr_err_t err;

    msgpack_sbuffer_init(&sb);
    if (ipc_encode(m, &sb) == 0) {
        msgpack_unpacked_init(&up);
        if (msgpack_unpack_next(&up, sb.data, sb.size, NULL) != MSGPACK_UNPACK_SUCCESS)
            __builtin_trap();
        if (ipc_decode(&up.data, &again, &err) != 0)
            __builtin_trap(); /* we cannot read what we wrote */
        if (again.type != m->type)
            __builtin_trap();
        if (m->type == IPC_WORKER_METRICS) {
            /* counts survive the round trip exactly (the supervisor adds them up) */
            const __typeof__(m->u.worker_metrics) *x = &m->u.worker_metrics;
            const __typeof__(again.u.worker_metrics) *y = &again.u.worker_metrics;
            if (x->nevents != y->nevents || x->transactions != y->transactions ||
                x->batch.sum_us != y->batch.sum_us || x->last_commit_ts != y->last_commit_ts)
                __builtin_trap();
            for (uint32_t i = 0; i < x->nevents; i++)
                if (memcmp(&x->events[i], &y->events[i], sizeof(x->events[i])) != 0)
                    __builtin_trap();
            if (memcmp(x->commit.counts, y->commit.counts, sizeof(x->commit.counts)) != 0)
                __builtin_trap();
        }
        if (m->type == IPC_METRICS_TEXT &&
            strcmp(m->u.metrics_text.text, again.u.metrics_text.text) != 0)
            __builtin_trap();
        ipc_msg_clear(&again);
        msgpack_unpacked_destroy(&up);
    }
    msgpack_sbuffer_destroy(&sb);
}

/* Takes every complete message; returns -1 once the stream is broken. */
static int
drain(ipc_reader_t *r)
{
    for (;;) {
        ipc_msg_t m;
        wr_err_t err;
        int rc = ipc_reader_next(r, &m, &err);

        if (rc == 1) {
            roundtrip(&m);
            ipc_msg_clear(&m);
            continue;
        }
        if (rc == 0)
            return 0;
        if (err.msg[0] == '\0')
            __builtin_trap();
        if (rc == WR_EPROTO && !r->broken)
            continue; /* a bad message is skipped, the stream goes on */
        return -1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ipc_reader_t r;
    wr_err_t err;
    size_t chunk;

    if (size < 1)
        return 0;
    chunk = data[0] == 0 ? size : data[0];
    data++;
    size--;
    if (ipc_reader_init(&r) != 0)
        return 0;
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;

        if (ipc_reader_feed(&r, (const char *)data + off, n, &err) != 0)
            break;
        if (drain(&r) < 0)
            break;
    }
    ipc_reader_close(&r);
    return 0;
}
