/*
 * fuzz_pgoutput.c - libFuzzer target for the pgoutput decoder (pgo_decode).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is one
 * pgoutput message. The decoder is kept across inputs so its scratch arrays are reused
 * and grown as in a worker. On success every decoded value and string is read back, and
 * must lie inside the input, so that a wrong length shows up as an ASan report or a trap.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/pgoutput.h"

static pgo_decoder_t dec;
static int dec_ready;

static volatile unsigned sink;

static void
in_buf(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;

    if (n == 0)
        return;
    if (q < buf || q > buf + len || n > (size_t)(buf + len - q))
        __builtin_trap();
    for (size_t i = 0; i < n; i++)
        sink += q[i];
}

static void
in_str(const char *s, const uint8_t *buf, size_t len)
{
    /* strings point into the buffer ("pg_catalog" excepted) and end inside it */
    if (strcmp(s, "pg_catalog") == 0 &&
        ((const uint8_t *)s < buf || (const uint8_t *)s >= buf + len))
        return;
    in_buf(s, strlen(s) + 1, buf, len);
}

static void
check_row(const wr_row_t *row, const uint8_t *buf, size_t len)
{
    if (row->ncols > 1664)
        __builtin_trap();
    for (uint16_t i = 0; i < row->ncols; i++) {
        const wr_val_t *v = &row->vals[i];

        switch (v->kind) {
        case 'n':
        case 'u':
            if (v->data != NULL || v->len != 0)
                __builtin_trap();
            break;
        case 't':
        case 'b':
            in_buf(v->data, v->len, buf, len);
            break;
        default:
            __builtin_trap();
        }
    }
}

/* The invariants of a decoded message m of data. */
static void
check_msg(const pgo_msg_t *m_, const uint8_t *data, size_t size)
{
    const pgo_msg_t m = *m_;
    wr_schema_t *s;

    if (size == 0 || m.type != (char)data[0])
        __builtin_trap();
    switch (m.type) {
    case PGO_ORIGIN:
        in_str(m.u.origin.name, data, size);
        break;
    case PGO_RELATION:
        in_str(m.u.relation.nsp, data, size);
        in_str(m.u.relation.name, data, size);
        for (uint16_t i = 0; i < m.u.relation.natts; i++)
            in_str(m.u.relation.cols[i].name, data, size);
        s = pgo_relation_schema(&m);
        if (s == NULL)
            __builtin_trap();
        if (s->ncols != m.u.relation.natts || strcmp(s->name, m.u.relation.name) != 0)
            __builtin_trap();
        wr_schema_free(s);
        break;
    case PGO_TYPE:
        in_str(m.u.type.nsp, data, size);
        in_str(m.u.type.name, data, size);
        break;
    case PGO_INSERT:
        check_row(&m.u.insert.newtup, data, size);
        break;
    case PGO_UPDATE:
        if (m.u.update.oldkind != 0)
            check_row(&m.u.update.oldtup, data, size);
        check_row(&m.u.update.newtup, data, size);
        break;
    case PGO_DELETE:
        check_row(&m.u.delete_.oldtup, data, size);
        break;
    case PGO_TRUNCATE:
        in_buf(m.u.truncate.relids_raw, (size_t)m.u.truncate.nrels * 4, data, size);
        for (uint32_t i = 0; i < m.u.truncate.nrels; i++)
            sink += pgo_truncate_relid(&m, i);
        break;
    case PGO_MESSAGE:
        in_str(m.u.message.prefix, data, size);
        in_buf(m.u.message.content, m.u.message.len, data, size);
        break;
    case PGO_STREAM_START:
        if (m.u.stream_start.first_segment != 0 && m.u.stream_start.first_segment != 1)
            __builtin_trap();
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pgo_msg_t m;
    wr_err_t err;

    if (!dec_ready) {
        pgo_decoder_init(&dec);
        dec_ready = 1;
    }
    /* each input on its own: outside a stream block, then as a spooled block message */
    dec.in_stream = false;
    if (pgo_decode(&dec, data, size, &m, &err) != 0) {
        if (err.msg[0] == '\0' || m.type != 0)
            __builtin_trap();
    } else {
        check_msg(&m, data, size);
    }
    if (pgo_decode_streamed(&dec, data, size, &m, &err) != 0) {
        if (err.msg[0] == '\0' || m.type != 0)
            __builtin_trap();
    } else {
        check_msg(&m, data, size);
    }
    return 0;
}
