/*
 * pgoutput.c - decoder of pgoutput logical replication messages, protocol versions 1 and 2
 * (streamed in-progress transactions: pgoutput.h, STREAMING).
 *
 * NOTES: runs in walrelay-apply and walrelay-sync on the payload of each 'w' CopyData
 * message (outside bytes). Owns nothing but the decoder's scratch arrays (tuple values
 * and relation columns), which grow with realloc and are reused by every call, so the
 * per-row path allocates only when a wider row than ever before arrives. Strings and
 * values point into the caller's buffer (zero-copy). Persists nothing. On the per-row
 * path nothing is formatted unless there is an error (field names for messages are
 * built only then).
 *
 * Layout (PostgreSQL src/backend/replication/logical/proto.c): big-endian integers,
 * NUL-terminated strings, one message per buffer, first byte = message type. Every read
 * is bounds-checked; every error names the message, the field and its byte offset.
 */
#include "pgoutput.h"
#include "pgtype.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MaxTupleAttributeNumber in PostgreSQL's htup_details.h */
#define PGO_MAX_COLS 1664
/* MaxAllocSize: no datum is larger than 1 GB - 1 */
#define PGO_MAX_DATUM 0x3fffffffu

typedef struct pgo_reader_s {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    const char *msg; /* message name for errors */
    wr_err_t *err;
} pgo_reader_t;

static const char *
pgo_msg_name(uint8_t type)
{
    switch (type) {
    case PGO_BEGIN:
        return "begin";
    case PGO_COMMIT:
        return "commit";
    case PGO_ORIGIN:
        return "origin";
    case PGO_RELATION:
        return "relation";
    case PGO_TYPE:
        return "type";
    case PGO_INSERT:
        return "insert";
    case PGO_UPDATE:
        return "update";
    case PGO_DELETE:
        return "delete";
    case PGO_TRUNCATE:
        return "truncate";
    case PGO_MESSAGE:
        return "message";
    case PGO_STREAM_START:
        return "stream start";
    case PGO_STREAM_STOP:
        return "stream stop";
    case PGO_STREAM_COMMIT:
        return "stream commit";
    case PGO_STREAM_ABORT:
        return "stream abort";
    default:
        return NULL;
    }
}

static int
rd_need(pgo_reader_t *r, size_t n, const char *field)
{
    size_t left = r->len - r->pos;

    if (n > left)
        return wr_err_set(r->err, WR_ETRUNC,
                          "\"%s\" message truncated: field \"%s\" at offset %zu needs %zu bytes, "
                          "%zu left",
                          r->msg, field, r->pos, n, left);
    return 0;
}

static int
rd_u8(pgo_reader_t *r, const char *field, uint8_t *out)
{
    int rc = rd_need(r, 1, field);

    if (rc < 0)
        return rc;
    *out = r->buf[r->pos++];
    return 0;
}

static int
rd_u16(pgo_reader_t *r, const char *field, uint16_t *out)
{
    int rc = rd_need(r, 2, field);

    if (rc < 0)
        return rc;
    *out = (uint16_t)((unsigned)r->buf[r->pos] << 8 | r->buf[r->pos + 1]);
    r->pos += 2;
    return 0;
}

static int
rd_u32(pgo_reader_t *r, const char *field, uint32_t *out)
{
    int rc = rd_need(r, 4, field);
    const uint8_t *p = r->buf + r->pos;

    if (rc < 0)
        return rc;
    *out = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
    r->pos += 4;
    return 0;
}

static int
rd_u64(pgo_reader_t *r, const char *field, uint64_t *out)
{
    uint32_t hi = 0, lo = 0; /* set by rd_u32 once rd_need passed (-O3 cannot tell) */
    int rc = rd_need(r, 8, field);

    if (rc < 0)
        return rc;
    (void)rd_u32(r, field, &hi);
    (void)rd_u32(r, field, &lo);
    *out = (uint64_t)hi << 32 | lo;
    return 0;
}

/* A NUL-terminated string that must end inside the buffer; points into it. */
static int
rd_str(pgo_reader_t *r, const char *field, const char **out)
{
    size_t left = r->len - r->pos;
    const uint8_t *p = r->buf + r->pos;
    const uint8_t *nul = left > 0 ? memchr(p, '\0', left) : NULL;

    if (nul == NULL)
        return wr_err_set(r->err, WR_ETRUNC,
                          "\"%s\" message truncated: string field \"%s\" at offset %zu has no "
                          "terminating NUL in the %zu bytes left",
                          r->msg, field, r->pos, left);
    *out = (const char *)p;
    r->pos += (size_t)(nul - p) + 1;
    return 0;
}

/* Makes room for n values in scratch array `which` (0 old, 1 new). */
static int
pgo_vals_reserve(pgo_decoder_t *d, int which, size_t n, pgo_reader_t *r)
{
    wr_val_t *nv;
    size_t ncap;

    if (n <= d->cap[which])
        return 0;
    ncap = d->cap[which] ? d->cap[which] : 16;
    while (ncap < n)
        ncap *= 2;
    nv = realloc(d->vals[which], ncap * sizeof(*nv));
    if (nv == NULL)
        return wr_err_set(r->err, WR_ENOMEM, "out of memory decoding \"%s\" message (%zu columns)",
                          r->msg, n);
    d->vals[which] = nv;
    d->cap[which] = ncap;
    return 0;
}

/*
 * TupleData: Int16 ncols, then per column a kind byte: 'n' null, 'u' unchanged TOAST,
 * 't' / 'b' Int32 length + bytes. `what` is "old tuple" or "new tuple" for errors.
 */
static int
rd_tuple(pgo_decoder_t *d, pgo_reader_t *r, int which, const char *what, wr_row_t *row)
{
    uint16_t ncols;
    size_t start = r->pos;
    char field[64];
    int rc;

    if (r->len - r->pos < 2) {
        snprintf(field, sizeof(field), "%s column count", what);
        return rd_need(r, 2, field);
    }
    ncols = (uint16_t)((unsigned)r->buf[r->pos] << 8 | r->buf[r->pos + 1]);
    r->pos += 2;
    if (ncols > PGO_MAX_COLS)
        return wr_err_set(r->err, WR_EPROTO,
                          "\"%s\" message: %s at offset %zu has %u columns, more than the "
                          "maximum %d",
                          r->msg, what, start, (unsigned)ncols, PGO_MAX_COLS);
    /* each column needs at least its kind byte: reject before allocating */
    if (ncols > r->len - r->pos)
        return wr_err_set(r->err, WR_ETRUNC,
                          "\"%s\" message truncated: %s at offset %zu has %u columns but only "
                          "%zu bytes follow",
                          r->msg, what, start, (unsigned)ncols, r->len - r->pos);
    if ((rc = pgo_vals_reserve(d, which, ncols, r)) < 0)
        return rc;

    for (uint16_t i = 0; i < ncols; i++) {
        wr_val_t *v = &d->vals[which][i];
        size_t at = r->pos;
        uint8_t kind;
        uint32_t len;

        if (r->pos >= r->len) {
            snprintf(field, sizeof(field), "%s column %u kind", what, (unsigned)i + 1);
            return rd_need(r, 1, field);
        }
        kind = r->buf[r->pos++];
        switch (kind) {
        case WR_VAL_NULL:
        case WR_VAL_UNCHANGED:
            v->kind = (char)kind;
            v->len = 0;
            v->data = NULL;
            break;
        case WR_VAL_TEXT:
        case WR_VAL_BINARY:
            if (r->len - r->pos < 4) {
                snprintf(field, sizeof(field), "%s column %u length", what, (unsigned)i + 1);
                return rd_need(r, 4, field);
            }
            at = r->pos;
            {
                const uint8_t *p = r->buf + r->pos;

                len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
                      (uint32_t)p[3];
                r->pos += 4;
            }
            if (len > PGO_MAX_DATUM)
                return wr_err_set(r->err, WR_EPROTO,
                                  "\"%s\" message: %s column %u at offset %zu has invalid length "
                                  "%d",
                                  r->msg, what, (unsigned)i + 1, at, (int32_t)len);
            if (len > r->len - r->pos)
                return wr_err_set(r->err, WR_ETRUNC,
                                  "\"%s\" message truncated: %s column %u at offset %zu has "
                                  "length %u but only %zu bytes follow",
                                  r->msg, what, (unsigned)i + 1, at, len, r->len - r->pos);
            v->kind = (char)kind;
            v->len = len;
            v->data = (const char *)r->buf + r->pos;
            r->pos += len;
            break;
        default:
            return wr_err_set(r->err, WR_EPROTO,
                              "\"%s\" message: %s column %u at offset %zu has unknown kind byte "
                              "0x%02x (expected 'n', 'u', 't' or 'b')",
                              r->msg, what, (unsigned)i + 1, at, kind);
        }
    }
    row->ncols = ncols;
    row->vals = d->vals[which];
    return 0;
}

/* Namespace string; "" on the wire means pg_catalog. */
static int
rd_nsp(pgo_reader_t *r, const char **out)
{
    int rc = rd_str(r, "namespace", out);

    if (rc == 0 && (*out)[0] == '\0')
        *out = "pg_catalog";
    return rc;
}

static int
pgo_read_relation(pgo_decoder_t *d, pgo_reader_t *r, pgo_msg_t *m)
{
    uint8_t ri;
    uint16_t natts;
    size_t at;
    char field[48];
    int rc;

    if ((rc = rd_u32(r, "relid", &m->u.relation.relid)) < 0 ||
        (rc = rd_nsp(r, &m->u.relation.nsp)) < 0 ||
        (rc = rd_str(r, "relname", &m->u.relation.name)) < 0)
        return rc;
    at = r->pos;
    if ((rc = rd_u8(r, "replident", &ri)) < 0)
        return rc;
    if (ri != 'd' && ri != 'n' && ri != 'f' && ri != 'i')
        return wr_err_set(r->err, WR_EPROTO,
                          "\"relation\" message: field \"replident\" at offset %zu has unknown "
                          "value 0x%02x (expected 'd', 'n', 'f' or 'i')",
                          at, ri);
    m->u.relation.replident = (char)ri;
    at = r->pos;
    if ((rc = rd_u16(r, "natts", &natts)) < 0)
        return rc;
    if (natts > PGO_MAX_COLS)
        return wr_err_set(r->err, WR_EPROTO,
                          "\"relation\" message: field \"natts\" at offset %zu is %u, more than "
                          "the maximum %d",
                          at, (unsigned)natts, PGO_MAX_COLS);
    /* a column takes at least 10 bytes (flags, "" name, oid, typmod) */
    if ((size_t)natts * 10 > r->len - r->pos)
        return wr_err_set(r->err, WR_ETRUNC,
                          "\"relation\" message truncated: field \"natts\" at offset %zu is %u "
                          "but only %zu bytes follow",
                          at, (unsigned)natts, r->len - r->pos);
    if (natts > d->ncap) {
        size_t ncap = d->ncap ? d->ncap : 16;
        pgo_relcol_t *nc;

        while (ncap < natts)
            ncap *= 2;
        nc = realloc(d->cols, ncap * sizeof(*nc));
        if (nc == NULL)
            return wr_err_set(r->err, WR_ENOMEM,
                              "out of memory decoding \"relation\" message (%u columns)",
                              (unsigned)natts);
        d->cols = nc;
        d->ncap = ncap;
    }
    for (uint16_t i = 0; i < natts; i++) {
        pgo_relcol_t *c = &d->cols[i];
        uint32_t typmod;

        /* field names only matter on error; built once per column is cheap enough for
         * relation messages, which are rare */
        snprintf(field, sizeof(field), "column %u flags", (unsigned)i + 1);
        if ((rc = rd_u8(r, field, &c->flags)) < 0)
            return rc;
        snprintf(field, sizeof(field), "column %u name", (unsigned)i + 1);
        if ((rc = rd_str(r, field, &c->name)) < 0)
            return rc;
        snprintf(field, sizeof(field), "column %u type oid", (unsigned)i + 1);
        if ((rc = rd_u32(r, field, &c->type_oid)) < 0)
            return rc;
        snprintf(field, sizeof(field), "column %u typmod", (unsigned)i + 1);
        if ((rc = rd_u32(r, field, &typmod)) < 0)
            return rc;
        c->typmod = (int32_t)typmod;
    }
    m->u.relation.natts = natts;
    m->u.relation.cols = d->cols;
    return 0;
}

/* Reads the submessage marker byte of an update/delete. */
static int
rd_marker(pgo_reader_t *r, uint8_t *out)
{
    return rd_u8(r, "tuple marker", out);
}

static int
pgo_bad_marker(pgo_reader_t *r, uint8_t marker, const char *expected)
{
    return wr_err_set(
        r->err, WR_EPROTO,
        "\"%s\" message: field \"tuple marker\" at offset %zu is 0x%02x (expected %s)", r->msg,
        r->pos - 1, marker, expected);
}

static int
pgo_read_update(pgo_decoder_t *d, pgo_reader_t *r, pgo_msg_t *m)
{
    uint8_t marker;
    int rc;

    if ((rc = rd_u32(r, "relid", &m->u.update.relid)) < 0 || (rc = rd_marker(r, &marker)) < 0)
        return rc;
    if (marker == 'K' || marker == 'O') {
        m->u.update.oldkind = (char)marker;
        if ((rc = rd_tuple(d, r, 0, "old tuple", &m->u.update.oldtup)) < 0 ||
            (rc = rd_marker(r, &marker)) < 0)
            return rc;
        if (marker != 'N')
            return pgo_bad_marker(r, marker, "'N'");
    } else if (marker != 'N') {
        return pgo_bad_marker(r, marker, "'K', 'O' or 'N'");
    }
    return rd_tuple(d, r, 1, "new tuple", &m->u.update.newtup);
}

static int
pgo_read_message(pgo_reader_t *r, pgo_msg_t *m)
{
    uint32_t len;
    size_t at;
    int rc;

    if ((rc = rd_u8(r, "flags", &m->u.message.flags)) < 0 ||
        (rc = rd_u64(r, "lsn", &m->u.message.lsn)) < 0 ||
        (rc = rd_str(r, "prefix", &m->u.message.prefix)) < 0)
        return rc;
    at = r->pos;
    if ((rc = rd_u32(r, "content length", &len)) < 0)
        return rc;
    if (len > PGO_MAX_DATUM)
        return wr_err_set(r->err, WR_EPROTO,
                          "\"message\" message: field \"content length\" at offset %zu has "
                          "invalid value %d",
                          at, (int32_t)len);
    if (len > r->len - r->pos)
        return wr_err_set(r->err, WR_ETRUNC,
                          "\"message\" message truncated: field \"content\" at offset %zu needs "
                          "%u bytes, %zu left",
                          r->pos, len, r->len - r->pos);
    m->u.message.len = len;
    m->u.message.content = (const char *)r->buf + r->pos;
    r->pos += len;
    return 0;
}

void
pgo_decoder_init(pgo_decoder_t *d)
{
    memset(d, 0, sizeof(*d));
}

void
pgo_decoder_close(pgo_decoder_t *d)
{
    free(d->vals[0]);
    free(d->vals[1]);
    free(d->cols);
    for (size_t i = 0; i < d->ntypes; i++)
        free(d->types[i].name);
    free(d->types);
    memset(d, 0, sizeof(*d));
}

/* Appends one byte if it fits (buf always stays NUL-terminated; *off never passes len-1). */
static void
pgo_put(char *buf, size_t len, size_t *off, char c)
{
    if (*off + 1 < len) {
        buf[(*off)++] = c;
        buf[*off] = '\0';
    }
}

/* Appends s as quote_identifier() would: bare if lowercase letters, digits and _ (not
 * starting with a digit), else in double quotes with " doubled. (Keywords would be
 * quoted too; a type named like a keyword is rare and keeps its bare form here.) Cut
 * short if buf is too small. */
static void
pgo_quote_ident(char *buf, size_t len, size_t *off, const char *s)
{
    bool bare = s[0] != '\0' && !(s[0] >= '0' && s[0] <= '9');

    for (const char *p = s; *p && bare; p++)
        bare = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
    if (!bare)
        pgo_put(buf, len, off, '"');
    for (const char *p = s; *p; p++) {
        if (!bare && *p == '"')
            pgo_put(buf, len, off, '"');
        pgo_put(buf, len, off, *p);
    }
    if (!bare)
        pgo_put(buf, len, off, '"');
}

/* Remembers a Type message's type (replacing what an earlier one said). */
static int
pgo_type_remember(pgo_decoder_t *d, uint32_t oid, const char *nsp, const char *name)
{
    char buf[300];
    size_t off = 0;
    char *copy;

    buf[0] = '\0';
    /* format_type qualifies a type that is not visible in the search_path; walrelay's
     * sessions use the default one ("$user", public) */
    if (strcmp(nsp, "public") != 0 && strcmp(nsp, "pg_catalog") != 0) {
        pgo_quote_ident(buf, sizeof(buf), &off, nsp);
        pgo_put(buf, sizeof(buf), &off, '.');
    }
    pgo_quote_ident(buf, sizeof(buf), &off, name);
    if ((copy = wr_strdup(buf)) == NULL)
        return WR_ENOMEM;
    for (size_t i = 0; i < d->ntypes; i++) {
        if (d->types[i].oid == oid) {
            free(d->types[i].name);
            d->types[i].name = copy;
            return 0;
        }
    }
    if (d->ntypes == d->tcap) {
        size_t ncap = d->tcap ? d->tcap * 2 : 8;
        struct pgo_type_s *nt = realloc(d->types, ncap * sizeof(*nt));
        if (nt == NULL) {
            free(copy);
            return WR_ENOMEM;
        }
        d->types = nt;
        d->tcap = ncap;
    }
    d->types[d->ntypes].oid = oid;
    d->types[d->ntypes].name = copy;
    d->ntypes++;
    return 0;
}

const char *
pgo_type_name(const pgo_decoder_t *d, uint32_t oid)
{
    for (size_t i = 0; i < d->ntypes; i++)
        if (d->types[i].oid == oid)
            return d->types[i].name;
    return NULL;
}

int
pgo_schema_type_names(const pgo_decoder_t *d, wr_schema_t *s)
{
    char buf[128];

    for (uint16_t i = 0; i < s->ncols; i++) {
        wr_column_t *c = &s->cols[i];
        const char *name = pgo_type_name(d, c->type_oid);

        if (name == NULL && pgt_format_type(c->type_oid, c->typmod, buf, sizeof(buf)))
            name = buf;
        if (name == NULL)
            continue;
        free(c->type_name);
        if ((c->type_name = wr_strdup(name)) == NULL)
            return WR_ENOMEM;
    }
    return 0;
}

/* True for the message types a stream block may hold (they carry an xid there). */
static bool
pgo_in_block_type(uint8_t type)
{
    return type == PGO_RELATION || type == PGO_TYPE || type == PGO_INSERT || type == PGO_UPDATE ||
           type == PGO_DELETE || type == PGO_TRUNCATE || type == PGO_MESSAGE;
}

/* One message; streamed: inside a stream block (an xid follows the type byte of the types
 * pgo_in_block_type accepts). */
static int
pgo_decode_one(pgo_decoder_t *d, const uint8_t *buf, size_t len, bool streamed, pgo_msg_t *out,
               wr_err_t *err)
{
    pgo_reader_t r = {.buf = buf, .len = len, .pos = 0, .msg = NULL, .err = err};
    uint8_t type;
    uint8_t marker;
    uint64_t u64;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    if (buf == NULL || len == 0)
        return wr_err_set(err, WR_ETRUNC, "empty pgoutput message");
    type = buf[0];
    r.msg = pgo_msg_name(type);
    if (r.msg == NULL) {
        if (type >= 0x20 && type < 0x7f)
            rc = wr_err_set(err, WR_EUNSUPPORTED,
                            "unsupported pgoutput message type '%c' (0x%02x) at offset 0", type,
                            type);
        else
            rc = wr_err_set(err, WR_EUNSUPPORTED,
                            "unsupported pgoutput message type 0x%02x at offset 0", type);
        wr_err_hint(err, "walrelay speaks pgoutput protocol versions 1 and 2; two-phase and "
                         "parallel streaming messages need later versions and must not be "
                         "enabled");
        return rc;
    }
    out->type = (char)type;
    r.pos = 1;
    if (streamed && pgo_in_block_type(type) && (rc = rd_u32(&r, "xid", &out->xid)) < 0) {
        out->type = 0;
        return rc;
    }

    switch (type) {
    case PGO_BEGIN:
        if ((rc = rd_u64(&r, "final_lsn", &out->u.begin.final_lsn)) < 0 ||
            (rc = rd_u64(&r, "commit_ts", &u64)) < 0)
            break;
        out->u.begin.commit_ts = (int64_t)u64;
        rc = rd_u32(&r, "xid", &out->u.begin.xid);
        break;
    case PGO_COMMIT:
        if ((rc = rd_u8(&r, "flags", &out->u.commit.flags)) < 0)
            break;
        if (out->u.commit.flags != 0) {
            rc = wr_err_set(err, WR_EPROTO,
                            "\"commit\" message: field \"flags\" at offset 1 is %u (expected 0)",
                            (unsigned)out->u.commit.flags);
            break;
        }
        if ((rc = rd_u64(&r, "commit_lsn", &out->u.commit.commit_lsn)) < 0 ||
            (rc = rd_u64(&r, "end_lsn", &out->u.commit.end_lsn)) < 0 ||
            (rc = rd_u64(&r, "ts", &u64)) < 0)
            break;
        out->u.commit.ts = (int64_t)u64;
        break;
    case PGO_ORIGIN:
        if ((rc = rd_u64(&r, "origin_lsn", &out->u.origin.lsn)) < 0)
            break;
        rc = rd_str(&r, "name", &out->u.origin.name);
        break;
    case PGO_RELATION:
        rc = pgo_read_relation(d, &r, out);
        break;
    case PGO_TYPE:
        if ((rc = rd_u32(&r, "oid", &out->u.type.oid)) < 0 ||
            (rc = rd_nsp(&r, &out->u.type.nsp)) < 0)
            break;
        if ((rc = rd_str(&r, "typname", &out->u.type.name)) < 0)
            break;
        if (pgo_type_remember(d, out->u.type.oid, out->u.type.nsp, out->u.type.name) < 0)
            rc = wr_err_set(err, WR_ENOMEM, "out of memory remembering a type");
        break;
    case PGO_INSERT:
        if ((rc = rd_u32(&r, "relid", &out->u.insert.relid)) < 0 ||
            (rc = rd_marker(&r, &marker)) < 0)
            break;
        if (marker != 'N') {
            rc = pgo_bad_marker(&r, marker, "'N'");
            break;
        }
        rc = rd_tuple(d, &r, 1, "new tuple", &out->u.insert.newtup);
        break;
    case PGO_UPDATE:
        rc = pgo_read_update(d, &r, out);
        break;
    case PGO_DELETE:
        if ((rc = rd_u32(&r, "relid", &out->u.delete_.relid)) < 0 ||
            (rc = rd_marker(&r, &marker)) < 0)
            break;
        if (marker != 'K' && marker != 'O') {
            rc = pgo_bad_marker(&r, marker, "'K' or 'O'");
            break;
        }
        out->u.delete_.oldkind = (char)marker;
        rc = rd_tuple(d, &r, 0, "old tuple", &out->u.delete_.oldtup);
        break;
    case PGO_TRUNCATE: {
        uint32_t n;
        size_t at = r.pos;

        if ((rc = rd_u32(&r, "nrels", &n)) < 0 ||
            (rc = rd_u8(&r, "flags", &out->u.truncate.flags)) < 0)
            break;
        if (n > PGO_MAX_DATUM / 4) {
            rc = wr_err_set(err, WR_EPROTO,
                            "\"truncate\" message: field \"nrels\" at offset %zu has invalid "
                            "value %d",
                            at, (int32_t)n);
            break;
        }
        if (n > (r.len - r.pos) / 4) {
            rc = wr_err_set(err, WR_ETRUNC,
                            "\"truncate\" message truncated: field \"nrels\" at offset %zu is %u "
                            "but only %zu bytes of relids follow",
                            at, n, r.len - r.pos);
            break;
        }
        out->u.truncate.nrels = n;
        /* unaligned: read only through pgo_truncate_relid */
        out->u.truncate.relids_raw = (const uint32_t *)(const void *)(buf + r.pos);
        r.pos += (size_t)n * 4;
        break;
    }
    case PGO_MESSAGE:
        rc = pgo_read_message(&r, out);
        break;
    case PGO_STREAM_START:
        if ((rc = rd_u32(&r, "xid", &out->u.stream_start.xid)) < 0 ||
            (rc = rd_u8(&r, "first_segment", &marker)) < 0)
            break;
        if (marker > 1) {
            rc = wr_err_set(err, WR_EPROTO,
                            "\"stream start\" message: field \"first_segment\" at offset 5 is %u "
                            "(expected 0 or 1)",
                            (unsigned)marker);
            break;
        }
        out->u.stream_start.first_segment = marker == 1;
        break;
    case PGO_STREAM_STOP:
        break;
    case PGO_STREAM_COMMIT:
        if ((rc = rd_u32(&r, "xid", &out->u.stream_commit.xid)) < 0 ||
            (rc = rd_u8(&r, "flags", &out->u.stream_commit.flags)) < 0)
            break;
        if (out->u.stream_commit.flags != 0) {
            rc = wr_err_set(err, WR_EPROTO,
                            "\"stream commit\" message: field \"flags\" at offset 5 is %u "
                            "(expected 0)",
                            (unsigned)out->u.stream_commit.flags);
            break;
        }
        if ((rc = rd_u64(&r, "commit_lsn", &out->u.stream_commit.commit_lsn)) < 0 ||
            (rc = rd_u64(&r, "end_lsn", &out->u.stream_commit.end_lsn)) < 0 ||
            (rc = rd_u64(&r, "ts", &u64)) < 0)
            break;
        out->u.stream_commit.ts = (int64_t)u64;
        break;
    case PGO_STREAM_ABORT:
        /* with streaming = on (not parallel) there is no abort LSN or time after these */
        if ((rc = rd_u32(&r, "xid", &out->u.stream_abort.xid)) < 0)
            break;
        rc = rd_u32(&r, "subxid", &out->u.stream_abort.subxid);
        break;
    }
    if (rc == 0 && r.pos != r.len)
        rc = wr_err_set(err, WR_EPROTO, "%zu trailing bytes after \"%s\" message at offset %zu",
                        r.len - r.pos, r.msg, r.pos);
    if (rc < 0)
        out->type = 0;
    return rc;
}

int
pgo_decode(pgo_decoder_t *d, const uint8_t *buf, size_t len, pgo_msg_t *out, wr_err_t *err)
{
    uint8_t type = buf != NULL && len > 0 ? buf[0] : 0;
    bool block = type == PGO_STREAM_START || type == PGO_STREAM_STOP || type == PGO_STREAM_COMMIT ||
                 type == PGO_STREAM_ABORT || type == PGO_BEGIN || type == PGO_COMMIT;
    int rc;

    /* the stream block structure: Start opens, Stop closes, and a block holds only the
     * messages of one transaction (an Origin may follow a first Stream Start) */
    if (d->in_stream && block && type != PGO_STREAM_STOP) {
        memset(out, 0, sizeof(*out));
        return wr_err_set(err, WR_EPROTO,
                          "pgoutput message '%c' (%s) inside a stream block (expected a Stream "
                          "Stop first)",
                          type, pgo_msg_name(type));
    }
    if (!d->in_stream && type == PGO_STREAM_STOP) {
        memset(out, 0, sizeof(*out));
        return wr_err_set(err, WR_EPROTO, "\"stream stop\" message outside a stream block");
    }
    rc = pgo_decode_one(d, buf, len, d->in_stream, out, err);
    if (rc != 0)
        return rc;
    if (type == PGO_STREAM_START)
        d->in_stream = true;
    else if (type == PGO_STREAM_STOP)
        d->in_stream = false;
    return 0;
}

int
pgo_decode_streamed(pgo_decoder_t *d, const uint8_t *buf, size_t len, pgo_msg_t *out, wr_err_t *err)
{
    if (buf == NULL || len == 0 || !pgo_in_block_type(buf[0])) {
        memset(out, 0, sizeof(*out));
        return wr_err_set(err, WR_EPROTO,
                          "spooled pgoutput message of type 0x%02x cannot be part of a stream "
                          "block",
                          (unsigned)(buf != NULL && len > 0 ? buf[0] : 0));
    }
    return pgo_decode_one(d, buf, len, true, out, err);
}

uint32_t
pgo_truncate_relid(const pgo_msg_t *m, uint32_t i)
{
    const uint8_t *p;

    if (m->type != PGO_TRUNCATE || i >= m->u.truncate.nrels)
        return 0;
    p = (const uint8_t *)(const void *)m->u.truncate.relids_raw + (size_t)i * 4;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

wr_schema_t *
pgo_relation_schema(const pgo_msg_t *m)
{
    wr_schema_t *s;

    if (m->type != PGO_RELATION)
        return NULL;
    s = wr_schema_new(m->u.relation.relid, m->u.relation.nsp, m->u.relation.name,
                      m->u.relation.natts);
    if (s == NULL)
        return NULL;
    s->replident = m->u.relation.replident;
    for (uint16_t i = 0; i < m->u.relation.natts; i++) {
        const pgo_relcol_t *c = &m->u.relation.cols[i];

        s->cols[i].name = wr_strdup(c->name);
        if (s->cols[i].name == NULL) {
            wr_schema_free(s);
            return NULL;
        }
        s->cols[i].type_oid = c->type_oid;
        s->cols[i].typmod = c->typmod;
        s->cols[i].is_key = (c->flags & 1) != 0;
        s->cols[i].not_null = false;
    }
    return s;
}
