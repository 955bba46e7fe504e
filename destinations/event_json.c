/*
 * event_json.c - the JSON object of a change or a copied row (event_json.h,
 * docs/events.md).
 *
 * NOTES: pure code; see event_json.h for the fields and their order.
 */
#include "event_json.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

const char *
evj_key(const wr_dest_key_t *k, char buf[EVJ_KEY_LEN])
{
    static const char hex[] = "0123456789ABCDEF";
    uint64_t lsn = k->commit_lsn;
    uint32_t ord = k->ordinal;

    /* once per event: no snprintf */
    for (int i = 15; i >= 0; i--) {
        buf[i] = hex[lsn & 15];
        lsn >>= 4;
    }
    buf[16] = ':';
    for (int i = 26; i >= 17; i--) {
        buf[i] = (char)('0' + ord % 10);
        ord /= 10;
    }
    buf[27] = '\0';
    return buf;
}

const char *
evj_copy_key(uint32_t relid, int64_t attempt_us, uint64_t n, char buf[EVJ_KEY_LEN])
{
    snprintf(buf, EVJ_KEY_LEN, "copy:%" PRIu32 ":%016" PRId64 ":%010" PRIu64, relid, attempt_us, n);
    return buf;
}

int
evj_key_parse(const char *s, size_t len, wr_dest_key_t *out)
{
    uint64_t lsn = 0;
    uint64_t ord = 0;

    if (len != 27 || s[16] != ':')
        return -1;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0)
            return -1;
        lsn = (lsn << 4) | (uint64_t)v;
    }
    for (int i = 17; i < 27; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        ord = ord * 10 + (uint64_t)(s[i] - '0');
    }
    if (ord > UINT32_MAX)
        return -1;
    out->commit_lsn = lsn;
    out->ordinal = (uint32_t)ord;
    return 0;
}

bool
evj_is_change(const wr_dest_event_t *ev)
{
    return evj_op(ev) != NULL && ev->relation != NULL;
}

const char *
evj_op(const wr_dest_event_t *ev)
{
    switch (ev->kind) {
    case WR_DEST_EV_INSERT:
        return "insert";
    case WR_DEST_EV_UPDATE:
        return "update";
    case WR_DEST_EV_DELETE:
        return "delete";
    case WR_DEST_EV_TRUNCATE:
        return "truncate";
    default:
        return NULL;
    }
}

static void
evj_table(jw_buf_t *b, const wr_dest_relation_t *rel)
{
    size_t ns = strlen(rel->schema), nn = strlen(rel->name);
    char tmp[512];

    if (ns + nn + 2 <= sizeof(tmp)) {
        memcpy(tmp, rel->schema, ns);
        tmp[ns] = '.';
        memcpy(tmp + ns + 1, rel->name, nn);
        jw_str(b, tmp, ns + 1 + nn);
    } else {
        /* PostgreSQL names are at most 63 bytes: only a broken relation gets here */
        jw_str(b, rel->schema, ns);
    }
}

/* {"col": value, ...} of a row. only_keys: the key columns only (an old key, whose other
 * columns the source sends as NULL). Unchanged TOAST values are left out. */
static void
evj_row(jw_buf_t *b, const wr_dest_relation_t *rel, const wr_dest_row_t *row, bool only_keys)
{
    bool first = true;
    uint16_t n = row->ncols < rel->ncolumns ? row->ncols : rel->ncolumns;

    jw_raw(b, "{", 1);
    for (uint16_t i = 0; i < n; i++) {
        const wr_dest_column_t *c = &rel->columns[i];
        const wr_dest_value_t *v = &row->values[i];

        if (v->kind == WR_DEST_VAL_UNCHANGED || (only_keys && !c->key))
            continue;
        if (!first)
            jw_raw(b, ",", 1);
        first = false;
        jw_cstr(b, c->name);
        jw_raw(b, ":", 1);
        jw_value(b, c->type_oid, v->kind, v->data, v->len);
    }
    jw_raw(b, "}", 1);
}

/* ["col", ...] of new's unchanged TOAST columns. */
static void
evj_unchanged(jw_buf_t *b, const wr_dest_relation_t *rel, const wr_dest_row_t *row)
{
    bool first = true;
    uint16_t n = row && row->ncols < rel->ncolumns ? row->ncols : rel->ncolumns;

    jw_raw(b, "[", 1);
    for (uint16_t i = 0; row && i < n; i++) {
        if (row->values[i].kind != WR_DEST_VAL_UNCHANGED)
            continue;
        if (!first)
            jw_raw(b, ",", 1);
        first = false;
        jw_cstr(b, rel->columns[i].name);
    }
    jw_raw(b, "]", 1);
}

void
evj_event(jw_buf_t *b, const wr_dest_event_t *ev)
{
    char key[EVJ_KEY_LEN];
    const wr_dest_relation_t *rel = ev->relation;
    bool has_old =
        ev->old_row != NULL && (ev->kind == WR_DEST_EV_UPDATE || ev->kind == WR_DEST_EV_DELETE);
    bool has_new =
        ev->new_row != NULL && (ev->kind == WR_DEST_EV_INSERT || ev->kind == WR_DEST_EV_UPDATE);

    jw_lit(b, "{\"key\":");
    jw_cstr(b, evj_key(&ev->key, key));
    jw_lit(b, ",\"op\":\"");
    jw_lit(b, evj_op(ev));
    jw_lit(b, "\",\"phase\":\"stream\",\"table\":");
    evj_table(b, rel);
    jw_lit(b, ",\"commit_lsn\":");
    jw_lsn(b, ev->key.commit_lsn);
    jw_lit(b, ",\"xid\":");
    jw_u64(b, ev->xid);
    jw_lit(b, ",\"commit_time\":");
    jw_time(b, ev->commit_time_us);
    jw_lit(b, ",\"new\":");
    if (has_new)
        evj_row(b, rel, ev->new_row, false);
    else
        jw_lit(b, "null");
    jw_lit(b, ",\"old\":");
    if (has_old)
        evj_row(b, rel, ev->old_row, ev->old_kind == 'K');
    else
        jw_lit(b, "null");
    jw_lit(b, ",\"unchanged_toast\":");
    evj_unchanged(b, rel, has_new ? ev->new_row : NULL);
    if (ev->kind == WR_DEST_EV_TRUNCATE) {
        jw_lit(b, ev->truncate_flags & WR_DEST_TRUNCATE_CASCADE ? ",\"cascade\":true"
                                                                : ",\"cascade\":false");
        jw_lit(b, ev->truncate_flags & WR_DEST_TRUNCATE_RESTART_IDENTITY
                      ? ",\"restart_identity\":true"
                      : ",\"restart_identity\":false");
    }
    jw_raw(b, "}", 1);
}

static void
evj_copy_head(jw_buf_t *b, const wr_dest_relation_t *rel, const char *key, const char *op)
{
    jw_lit(b, "{\"key\":");
    jw_cstr(b, key);
    jw_lit(b, ",\"op\":\"");
    jw_lit(b, op);
    jw_lit(b, "\",\"phase\":\"copy\",\"table\":");
    evj_table(b, rel);
    jw_lit(b, ",\"commit_lsn\":null,\"xid\":null,\"commit_time\":null,\"new\":");
}

void
evj_copy_row(jw_buf_t *b, const wr_dest_relation_t *rel, const wr_dest_row_t *row, const char *key)
{
    evj_copy_head(b, rel, key, "insert");
    evj_row(b, rel, row, false);
    jw_lit(b, ",\"old\":null,\"unchanged_toast\":[]}");
}

void
evj_copy_truncate(jw_buf_t *b, const wr_dest_relation_t *rel, const char *key)
{
    evj_copy_head(b, rel, key, "truncate");
    jw_lit(b, "null,\"old\":null,\"unchanged_toast\":[],\"cascade\":false,"
              "\"restart_identity\":false}");
}
