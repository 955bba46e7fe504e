/*
 * pgoutput.h - decoder of the pgoutput logical replication protocol, versions 1 and 2
 * (version 2 adds the streaming of large in-progress transactions).
 *
 * NOTES: runs in walrelay-apply and walrelay-sync on bytes from the server (outside
 * bytes: every length is checked, every string must be NUL-terminated inside the
 * buffer). Decoding is zero-copy: strings and values point into the caller's buffer,
 * which must outlive the decoded message. Tuple and column arrays live in the decoder
 * and are reused by the next call.
 *
 * STREAMING (protocol version 2, streaming = on): Stream Start ('S') opens a block of
 * one in-progress transaction's messages, Stream Stop ('E') closes it; inside a block
 * Relation, Type, Insert, Update, Delete, Truncate and Message carry the Int32 xid of the
 * (sub)transaction that made them (msg.xid) after the type byte. The decoder tracks
 * whether it is inside a block (d->in_stream) from the messages it decodes, and rejects
 * a Start inside a block, a Stop outside one, and Begin/Commit/Stream Commit/Stream
 * Abort inside one. pgo_decode_streamed decodes a message of a block out of band (a
 * spooled one, replayed later).
 */
#ifndef WR_PGOUTPUT_H
#define WR_PGOUTPUT_H

#include "schema.h"

typedef enum {
    PGO_BEGIN = 'B',
    PGO_COMMIT = 'C',
    PGO_ORIGIN = 'O',
    PGO_RELATION = 'R',
    PGO_TYPE = 'Y',
    PGO_INSERT = 'I',
    PGO_UPDATE = 'U',
    PGO_DELETE = 'D',
    PGO_TRUNCATE = 'T',
    PGO_MESSAGE = 'M',
    /* protocol version 2 */
    PGO_STREAM_START = 'S',
    PGO_STREAM_STOP = 'E',
    PGO_STREAM_COMMIT = 'c',
    PGO_STREAM_ABORT = 'A',
} pgo_type_t;

typedef struct pgo_relcol_s {
    uint8_t flags; /* 1 = part of the key */
    const char *name;
    uint32_t type_oid;
    int32_t typmod;
} pgo_relcol_t;

typedef struct pgo_msg_s {
    char type;
    uint32_t xid; /* inside a stream block: the (sub)transaction of the message; else 0 */
    union {
        struct {
            wr_lsn_t final_lsn;
            int64_t commit_ts;
            uint32_t xid;
        } begin;
        struct {
            uint8_t flags;
            wr_lsn_t commit_lsn;
            wr_lsn_t end_lsn;
            int64_t ts;
        } commit;
        struct {
            wr_lsn_t lsn;
            const char *name;
        } origin;
        struct {
            uint32_t relid;
            const char *nsp; /* "" in the wire format is returned as "pg_catalog" */
            const char *name;
            char replident;
            uint16_t natts;
            pgo_relcol_t *cols;
        } relation;
        struct {
            uint32_t oid;
            const char *nsp;
            const char *name;
        } type;
        struct {
            uint32_t relid;
            wr_row_t newtup;
        } insert;
        struct {
            uint32_t relid;
            char oldkind; /* 0, 'K' (key changed) or 'O' (old row, REPLICA IDENTITY FULL) */
            wr_row_t oldtup;
            wr_row_t newtup;
        } update;
        struct {
            uint32_t relid;
            char oldkind; /* 'K' or 'O' */
            wr_row_t oldtup;
        } delete_;
        struct {
            uint32_t nrels;
            uint8_t flags; /* 1 CASCADE, 2 RESTART IDENTITY */
            const uint32_t *relids_raw;
        } truncate;
        struct {
            uint8_t flags; /* 1 = transactional */
            wr_lsn_t lsn;
            const char *prefix;
            uint32_t len;
            const char *content;
        } message;
        struct {
            uint32_t xid;
            bool first_segment;
        } stream_start;
        struct {
            uint32_t xid;
            uint8_t flags;
            wr_lsn_t commit_lsn;
            wr_lsn_t end_lsn;
            int64_t ts;
        } stream_commit;
        struct {
            uint32_t xid;    /* the top-level transaction */
            uint32_t subxid; /* == xid: the whole transaction aborted; else a subtransaction */
        } stream_abort;
    } u;
} pgo_msg_t;

typedef struct pgo_decoder_s {
    /* scratch, reused between calls */
    wr_val_t *vals[2];
    size_t cap[2];
    pgo_relcol_t *cols;
    size_t ncap;
    /* user-defined types seen in Type ('Y') messages: oid -> name as format_type writes
     * it under the default search_path (nsp.name, bare in public); owned */
    struct pgo_type_s {
        uint32_t oid;
        char *name;
    } * types;
    size_t ntypes, tcap;
    bool in_stream; /* between a Stream Start and its Stream Stop */
} pgo_decoder_t;

void pgo_decoder_init(pgo_decoder_t *d);
void pgo_decoder_close(pgo_decoder_t *d);
/* Decodes one pgoutput message (the payload after the 'w' header). Returns 0, or
 * WR_ETRUNC / WR_EPROTO / WR_EUNSUPPORTED with a message naming the message type, the
 * field and the offset. */
int pgo_decode(pgo_decoder_t *d, const uint8_t *buf, size_t len, pgo_msg_t *out,
               wr_err_t *err) WR_MUST_CHECK;
/* Decodes one message of a stream block (xid after the type byte) regardless of
 * d->in_stream, which it does not change: a spooled message replayed later. Only the
 * message types a block may hold are accepted. */
int pgo_decode_streamed(pgo_decoder_t *d, const uint8_t *buf, size_t len, pgo_msg_t *out,
                        wr_err_t *err) WR_MUST_CHECK;
/* i-th relid of a decoded TRUNCATE (big-endian on the wire). */
uint32_t pgo_truncate_relid(const pgo_msg_t *m, uint32_t i);
/* Builds an owned schema from a decoded RELATION message; NULL on OOM. */
wr_schema_t *pgo_relation_schema(const pgo_msg_t *m);
/* Fills each column's type_name: built-in types with pgt_format_type, user-defined ones
 * from the Type messages this decoder has seen; a type known to neither keeps NULL.
 * Returns 0 or WR_ENOMEM. */
int pgo_schema_type_names(const pgo_decoder_t *d, wr_schema_t *s) WR_MUST_CHECK;
/* The name of a user-defined type from a Type message, or NULL. */
const char *pgo_type_name(const pgo_decoder_t *d, uint32_t oid);

#endif
