/*
 * pg_write.c - how the postgres destination applies changes: held back per table, folded
 * per key into their net effect, and written set-based in one round trip per table.
 *
 * NOTES: runs in walrelay-apply and in walrelay-sync's catch-up. Persists nothing itself:
 * it writes into the caller's open destination transaction (pg_dest.c commits it with the
 * resume key). Memory: a table's held-back changes (their values copied into one arena per
 * table, reused after every flush) are written once they pass d->flush_bytes, and at the
 * latest at the next flush()/commit().
 *
 * FOLDING (tables whose match key is the target's primary key: REPLICA IDENTITY DEFAULT
 * with a primary key, FULL with one). Each key the changes touch has one entry: what the
 * changes assume about the target's row of that key before them (pre: EXISTS, because an
 * UPDATE or DELETE found it, or ABSENT, because an INSERT or a key change created it), and
 * the row the key has after them (or none). Changes in order:
 *
 *   INSERT k        new entry (ABSENT, row) | entry without row: gets the row | entry
 *                   with a row: refused, a duplicate key (as applying it would be)
 *   UPDATE ko->kn   base = ko's row (entry), or the target's row (new entry EXISTS);
 *                   merged = the new values, an unchanged TOAST column keeps the base's
 *                   value (or, from the target's row, stays "unchanged").
 *                   kn = ko: ko's row = merged. kn != ko: ko loses its row, kn gets merged
 *                   (as INSERT kn; a duplicate is refused). A key change whose merged row
 *                   still needs the target's row of ko (unchanged TOAST) cannot be folded:
 *                   the table's earlier changes are written, then this UPDATE on its own.
 *                   ko without a row: refused (matched no row).
 *   DELETE k        new entry (EXISTS, no row) | entry with a row: loses it | entry
 *                   without a row: refused (matched no row)
 *
 * Written in one round trip under a savepoint, each set in one statement:
 *   EXISTS, no row      DELETE ... USING unnest(keys)                 (count checked)
 *   EXISTS, row         UPDATE ... SET <columns not unchanged> FROM unnest(keys, values),
 *                       one statement per pattern of unchanged columns (count checked)
 *   ABSENT, row         COPY ... FROM STDIN (many) or INSERT ... SELECT FROM unnest
 *   ABSENT, no row      SELECT count(*) ... must be 0: the INSERT that created the key
 *                       would have failed on a row the target already had
 * The keys of the four sets are disjoint and the UPDATEs never change a key, so the order
 * of the statements cannot matter, and the target ends exactly as applying every change
 * in order would leave it: same rows, same refusals (a count that does not match rolls
 * the savepoint back and names a key). Values are text: array literals of text cast to
 * each target column's type (the input function, as COPY uses), COPY text for inserts.
 *
 * IN ORDER (tables without a primary key on the target, REPLICA IDENTITY FULL: every
 * column; a match key other than the primary key): changes are held back in order and
 * written in one round trip too, consecutive INSERTs as one statement, each UPDATE and
 * DELETE as a statement of its own that touches exactly one row:
 *   ... WHERE ctid = (SELECT ctid FROM t WHERE <match> LIMIT 1)
 * where <match> compares each column's text form with the old value's, NULL-safely
 * (num_nulls(c) = 1 for NULL, format('%s', c) = 'v' otherwise: exact, and defined for
 * types without an equality operator), or the key columns by equality.
 *
 * HISTORY MODE ([destination] mode = history, issue 9): every change is appended as a row,
 * in order; see the section at the end of this file.
 */
#include "pg.h"

#include "../../common/json.h"
#include "../../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PGD_COPY_MIN 32 /* inserts written with COPY from this many on */

/* ---- the arena and values ------------------------------------------------------------------- */

void
pgd_pend_free(pgd_pend_t *p)
{
    free(p->arena);
    free(p->vals);
    free(p->ents);
    free(p->slots);
    free(p->ops);
    memset(p, 0, sizeof(*p));
}

void
pgd_pend_clear(dest_pg_t *d, pgd_table_t *t)
{
    pgd_pend_t *p = &t->pend;

    WR_UNUSED(d);
    p->alen = 0;
    p->nvals = 0;
    p->nents = 0;
    p->nops = 0;
    p->changes = 0;
    if (p->slots != NULL)
        memset(p->slots, 0, p->nslots * sizeof(*p->slots));
    /* a big arena from one large flush is not kept for ever */
    if (p->acap > 4 * d->flush_bytes && d->flush_bytes > 0) {
        free(p->arena);
        p->arena = NULL;
        p->acap = 0;
    }
}

static int
pgd_oom(const pgd_table_t *t, wr_err_t *err)
{
    return wr_err_set(err, WR_ENOMEM, "out of memory holding back changes of \"%s.%s\"", t->nsp,
                      t->name);
}

/* Appends n values (zeroed); returns the index of the first, PGD_NONE on OOM. */
static uint32_t
pgd_vals_add(pgd_pend_t *p, size_t n)
{
    uint32_t first;

    if (p->nvals + n > p->vcap) {
        size_t cap = p->vcap ? p->vcap : 256;
        pgd_val_t *v;

        while (p->nvals + n > cap)
            cap *= 2;
        if (cap >= PGD_NONE)
            return PGD_NONE;
        v = realloc(p->vals, cap * sizeof(*v));
        if (v == NULL)
            return PGD_NONE;
        p->vals = v;
        p->vcap = cap;
    }
    first = (uint32_t)p->nvals;
    memset(&p->vals[first], 0, n * sizeof(*p->vals));
    p->nvals += n;
    return first;
}

/* Copies a value's bytes into the arena and fills dst. */
static bool
pgd_val_copy(pgd_pend_t *p, pgd_val_t *dst, const wr_val_t *v)
{
    dst->kind = v->kind;
    dst->len = 0;
    dst->off = 0;
    if (v->kind != WR_VAL_TEXT)
        return true;
    if (p->alen + v->len > p->acap) {
        size_t cap = p->acap ? p->acap : 64 * 1024;
        char *a;

        while (p->alen + v->len > cap)
            cap *= 2;
        a = realloc(p->arena, cap);
        if (a == NULL)
            return false;
        p->arena = a;
        p->acap = cap;
    }
    if (v->len > 0)
        memcpy(p->arena + p->alen, v->data, v->len);
    dst->len = v->len;
    dst->off = p->alen;
    p->alen += v->len;
    return true;
}

static const char *
pgd_vdata(const pgd_pend_t *p, const pgd_val_t *v)
{
    return v->kind == WR_VAL_TEXT && p->arena != NULL ? p->arena + v->off : "";
}

/* ---- keys ----------------------------------------------------------------------------------- */

/* The values a change is matched by (key columns, or every column by row), taken from
 * `from`; key columns of the new row that are unchanged TOAST come from `old` instead. */
static int
pgd_match_vals(const pgd_table_t *t, const wr_row_t *from, const wr_row_t *old,
               const wr_val_t **out, const char *what, wr_err_t *err)
{
    int n = t->by_row ? t->ncols : t->nkeys;

    for (int j = 0; j < n; j++) {
        int c = t->by_row ? j : t->keys[j];
        const wr_val_t *v = &from->vals[c];

        if (v->kind == WR_VAL_UNCHANGED && old != NULL)
            v = &old->vals[c];
        if (v->kind == WR_VAL_BINARY)
            return wr_err_set(err, WR_EINVAL,
                              "%s of \"%s.%s\": column \"%s\" arrived in binary form, which the "
                              "postgres destination does not read",
                              what, t->nsp, t->name, t->schema->cols[c].name);
        if (t->by_row && v->kind == WR_VAL_UNCHANGED) {
            wr_err_set(err, WR_EDATA,
                       "%s of \"%s.%s\": the old row has no value for column \"%s\" (unchanged "
                       "toast), so the row cannot be found without a key",
                       what, t->nsp, t->name, t->schema->cols[c].name);
            wr_err_hint(err, "give the source table a primary key, then resync it");
            return WR_EDATA;
        }
        if (!t->by_row && (v->kind == WR_VAL_NULL || v->kind == WR_VAL_UNCHANGED))
            return wr_err_set(err, WR_EINVAL,
                              "%s of \"%s.%s\": key column \"%s\" has no value (%s)", what, t->nsp,
                              t->name, t->schema->cols[c].name,
                              v->kind == WR_VAL_NULL ? "null" : "unchanged toast");
        out[j] = v;
    }
    return 0;
}

static uint32_t
pgd_hash_vals(const wr_val_t *const *kv, int n)
{
    uint32_t h = 2166136261u;

    for (int j = 0; j < n; j++) {
        const unsigned char *s = (const unsigned char *)kv[j]->data;

        h ^= kv[j]->len;
        h *= 16777619u;
        for (uint32_t i = 0; i < kv[j]->len; i++) {
            h ^= s[i];
            h *= 16777619u;
        }
    }
    return h ? h : 1;
}

static bool
pgd_key_eq(const pgd_pend_t *p, const pgd_ent_t *e, const wr_val_t *const *kv, int n)
{
    for (int j = 0; j < n; j++) {
        const pgd_val_t *v = &p->vals[e->key + j];

        if (v->len != kv[j]->len || memcmp(pgd_vdata(p, v), kv[j]->data, v->len) != 0)
            return false;
    }
    return true;
}

static bool
pgd_same_key(const wr_val_t *const *a, const wr_val_t *const *b, int n)
{
    for (int j = 0; j < n; j++)
        if (a[j]->len != b[j]->len || memcmp(a[j]->data, b[j]->data, a[j]->len) != 0)
            return false;
    return true;
}

static pgd_ent_t *
pgd_lookup(pgd_pend_t *p, int nkeys, const wr_val_t *const *kv, uint32_t hash)
{
    if (p->nslots == 0)
        return NULL;
    for (size_t i = hash & (p->nslots - 1);; i = (i + 1) & (p->nslots - 1)) {
        uint32_t s = p->slots[i];

        if (s == 0)
            return NULL;
        if (p->ents[s - 1].hash == hash && pgd_key_eq(p, &p->ents[s - 1], kv, nkeys))
            return &p->ents[s - 1];
    }
}

static bool
pgd_rehash(pgd_pend_t *p, size_t nslots)
{
    uint32_t *s = calloc(nslots, sizeof(*s));

    if (s == NULL)
        return false;
    free(p->slots);
    p->slots = s;
    p->nslots = nslots;
    for (size_t e = 0; e < p->nents; e++) {
        size_t i = p->ents[e].hash & (nslots - 1);

        while (s[i] != 0)
            i = (i + 1) & (nslots - 1);
        s[i] = (uint32_t)e + 1;
    }
    return true;
}

/* A new entry for a key (copied), without a row. NULL on OOM. */
static pgd_ent_t *
pgd_ent_new(pgd_pend_t *p, int nkeys, const wr_val_t *const *kv, uint32_t hash, uint8_t pre)
{
    pgd_ent_t *e;
    uint32_t key;
    size_t i;

    if ((p->nents + 1) * 2 > p->nslots && !pgd_rehash(p, p->nslots ? p->nslots * 2 : 1024))
        return NULL;
    if (p->nents == p->ecap) {
        size_t cap = p->ecap ? p->ecap * 2 : 256;
        pgd_ent_t *n = realloc(p->ents, cap * sizeof(*n));

        if (n == NULL)
            return NULL;
        p->ents = n;
        p->ecap = cap;
    }
    if ((key = pgd_vals_add(p, (size_t)nkeys)) == PGD_NONE)
        return NULL;
    for (int j = 0; j < nkeys; j++)
        if (!pgd_val_copy(p, &p->vals[key + j], kv[j]))
            return NULL;
    e = &p->ents[p->nents];
    e->hash = hash;
    e->key = key;
    e->row = PGD_NONE;
    e->pre = pre;
    for (i = hash & (p->nslots - 1); p->slots[i] != 0; i = (i + 1) & (p->nslots - 1))
        ;
    p->slots[i] = (uint32_t)p->nents + 1;
    p->nents++;
    return e;
}

/* Formats "(k1, k2)=(v1, v2)" of match values for a message. */
static void
pgd_show_match(const pgd_table_t *t, const wr_val_t *const *kv, char *buf, size_t len)
{
    int n = t->by_row ? (t->ncols < 6 ? t->ncols : 6) : t->nkeys;
    char vb[PGD_SHOW_MAX + 8];
    size_t off = 0;

#define PGD_PUT(...)                                                                               \
    do {                                                                                           \
        if (off < len) {                                                                           \
            int w_ = snprintf(buf + off, len - off, __VA_ARGS__);                                  \
            off += w_ > 0 ? (size_t)w_ : 0;                                                        \
        }                                                                                          \
    } while (0)
    buf[0] = '\0';
    PGD_PUT("(");
    for (int j = 0; j < n; j++)
        PGD_PUT("%s%s", j ? ", " : "", t->schema->cols[t->by_row ? j : t->keys[j]].name);
    PGD_PUT("%s)=(", n < t->ncols && t->by_row ? ", ..." : "");
    for (int j = 0; j < n; j++)
        PGD_PUT("%s%s", j ? ", " : "",
                pgd_show(kv[j]->kind, kv[j]->data, kv[j]->len, vb, sizeof(vb)));
    PGD_PUT("%s)", n < t->ncols && t->by_row ? ", ..." : "");
#undef PGD_PUT
}

/* The same for held-back key values. */
static void
pgd_show_ent(const pgd_table_t *t, uint32_t key, char *buf, size_t len)
{
    const wr_val_t *kv[64];
    wr_val_t tmp[64];
    int n = t->by_row ? (t->ncols < 6 ? t->ncols : 6) : t->nkeys;

    if (n > 64)
        n = 64;
    for (int j = 0; j < n; j++) {
        const pgd_val_t *v = &t->pend.vals[key + j];

        tmp[j].kind = v->kind;
        tmp[j].len = v->len;
        tmp[j].data = pgd_vdata(&t->pend, v);
        kv[j] = &tmp[j];
    }
    pgd_show_match(t, kv, buf, len);
}

static int
pgd_refuse(const pgd_table_t *t, const char *what, const char *why, const wr_val_t *const *kv,
           wr_err_t *err)
{
    char kb[512];

    pgd_show_match(t, kv, kb, sizeof(kb));
    wr_err_set(err, WR_EDATA, "%s of table \"%s.%s\" %s for key %s", what, t->nsp, t->name, why,
               kb);
    wr_err_hint(err, "the destination no longer matches the source; run \"walrelay resync\" for "
                     "the table");
    return WR_EDATA;
}

/* ---- folding -------------------------------------------------------------------------------- */

/* Copies a whole new row into the arena; *row = index of its first value. */
static int
pgd_row_copy(pgd_table_t *t, const wr_row_t *row, uint32_t *out, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    uint32_t r = pgd_vals_add(p, t->ncols);

    if (r == PGD_NONE)
        return pgd_oom(t, err);
    for (uint16_t c = 0; c < t->ncols; c++) {
        if (row->vals[c].kind == WR_VAL_BINARY)
            return wr_err_set(err, WR_EINVAL,
                              "column \"%s\" of \"%s.%s\" arrived in binary form, which the "
                              "postgres destination does not read",
                              t->schema->cols[c].name, t->nsp, t->name);
        if (!pgd_val_copy(p, &p->vals[r + c], &row->vals[c]))
            return pgd_oom(t, err);
    }
    *out = r;
    return 0;
}

static int
pgd_check_row(const pgd_table_t *t, const wr_row_t *row, const char *what, wr_err_t *err)
{
    if (row == NULL)
        return wr_err_set(err, WR_EINVAL, "%s of table \"%s.%s\" without a row", what, t->nsp,
                          t->name);
    if (row->ncols != t->ncols)
        return wr_err_set(err, WR_EINVAL, "%s of table \"%s.%s\" has %u columns, the table has %u",
                          what, t->nsp, t->name, (unsigned)row->ncols, (unsigned)t->ncols);
    return 0;
}

static int
pgd_fold_insert(pgd_table_t *t, const wr_row_t *row, wr_err_t *err)
{
    const wr_val_t *kv[64];
    pgd_ent_t *e;
    uint32_t h;
    int rc;

    if ((rc = pgd_match_vals(t, row, NULL, kv, "insert", err)) < 0)
        return rc;
    h = pgd_hash_vals(kv, t->nkeys);
    e = pgd_lookup(&t->pend, t->nkeys, kv, h);
    if (e != NULL && e->row != PGD_NONE)
        return pgd_refuse(t, "insert", "failed: the key exists already", kv, err);
    if (e == NULL && (e = pgd_ent_new(&t->pend, t->nkeys, kv, h, PGD_PRE_ABSENT)) == NULL)
        return pgd_oom(t, err);
    return pgd_row_copy(t, row, &e->row, err);
}

static int
pgd_fold_delete(pgd_table_t *t, const wr_row_t *old, wr_err_t *err)
{
    const wr_val_t *kv[64];
    pgd_ent_t *e;
    uint32_t h;
    int rc;

    if ((rc = pgd_match_vals(t, old, NULL, kv, "delete", err)) < 0)
        return rc;
    h = pgd_hash_vals(kv, t->nkeys);
    e = pgd_lookup(&t->pend, t->nkeys, kv, h);
    if (e != NULL && e->row == PGD_NONE)
        return pgd_refuse(t, "delete", "matched no row", kv, err);
    if (e == NULL && (e = pgd_ent_new(&t->pend, t->nkeys, kv, h, PGD_PRE_EXISTS)) == NULL)
        return pgd_oom(t, err);
    e->row = PGD_NONE;
    return 0;
}

static int pgd_direct_update(dest_pg_t *d, pgd_table_t *t, const wr_row_t *nrow,
                             const wr_val_t *const *okv, wr_err_t *err);

static int
pgd_fold_update(dest_pg_t *d, pgd_table_t *t, const dest_event_t *ev, wr_err_t *err)
{
    const wr_row_t *nrow = ev->new_row;
    const wr_row_t *orow = (ev->old_kind == 'K' || ev->old_kind == 'O') ? ev->old_row : NULL;
    const wr_val_t *okv[64], *nkv[64];
    pgd_pend_t *p = &t->pend;
    pgd_ent_t *e, *e2;
    uint32_t ho, hn, merged, base;
    bool same, refs = false;
    int rc;

    if (orow != NULL && (rc = pgd_check_row(t, orow, "old key of update", err)) < 0)
        return rc;
    if ((rc = pgd_match_vals(t, orow ? orow : nrow, NULL, okv, "update", err)) < 0 ||
        (rc = pgd_match_vals(t, nrow, orow, nkv, "update", err)) < 0)
        return rc;
    same = pgd_same_key(okv, nkv, t->nkeys);
    ho = pgd_hash_vals(okv, t->nkeys);
    e = pgd_lookup(p, t->nkeys, okv, ho);
    if (e != NULL && e->row == PGD_NONE)
        return pgd_refuse(t, "update", "matched no row", okv, err);
    base = e != NULL ? e->row : PGD_NONE;
    for (uint16_t c = 0; c < t->ncols && !refs; c++)
        refs = nrow->vals[c].kind == WR_VAL_UNCHANGED &&
               (base == PGD_NONE || p->vals[base + c].kind == WR_VAL_UNCHANGED);
    if (!same && refs) {
        /* the new key's row needs values only the target's row of the old key has:
         * write what is held back, then this UPDATE as it is */
        if ((rc = pgd_flush_table(d, t, err)) < 0)
            return rc;
        return pgd_direct_update(d, t, nrow, okv, err);
    }
    /* merged row: the new values, unchanged ones from the base (or still unchanged) */
    if ((merged = pgd_vals_add(p, t->ncols)) == PGD_NONE)
        return pgd_oom(t, err);
    for (uint16_t c = 0; c < t->ncols; c++) {
        const wr_val_t *v = &nrow->vals[c];

        if (v->kind == WR_VAL_BINARY)
            return wr_err_set(err, WR_EINVAL,
                              "column \"%s\" of \"%s.%s\" arrived in binary form, which the "
                              "postgres destination does not read",
                              t->schema->cols[c].name, t->nsp, t->name);
        if (v->kind == WR_VAL_UNCHANGED && base != PGD_NONE)
            p->vals[merged + c] = p->vals[base + c]; /* the bytes stay where they are */
        else if (!pgd_val_copy(p, &p->vals[merged + c], v))
            return pgd_oom(t, err);
    }
    if (same) {
        if (e == NULL && (e = pgd_ent_new(p, t->nkeys, okv, ho, PGD_PRE_EXISTS)) == NULL)
            return pgd_oom(t, err);
        e->row = merged;
        return 0;
    }
    hn = pgd_hash_vals(nkv, t->nkeys);
    e2 = pgd_lookup(p, t->nkeys, nkv, hn);
    if (e2 != NULL && e2->row != PGD_NONE)
        return pgd_refuse(t, "update", "failed: the new key exists already", nkv, err);
    if (e == NULL && pgd_ent_new(p, t->nkeys, okv, ho, PGD_PRE_EXISTS) == NULL)
        return pgd_oom(t, err);
    /* entries may have moved: look both up again */
    e = pgd_lookup(p, t->nkeys, okv, ho);
    e->row = PGD_NONE;
    if (e2 == NULL && pgd_ent_new(p, t->nkeys, nkv, hn, PGD_PRE_ABSENT) == NULL)
        return pgd_oom(t, err);
    e2 = pgd_lookup(p, t->nkeys, nkv, hn);
    e2->row = merged;
    return 0;
}

/* ---- in order ---------------------------------------------------------------------------------
 */

static int
pgd_op_add(pgd_table_t *t, char kind, const wr_row_t *oldrow, const wr_row_t *nrow,
           const wr_row_t *keysrc_old, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    const wr_val_t *kv[1600];
    pgd_op_t *op;
    int n = t->by_row ? t->ncols : t->nkeys;
    int rc;

    if (p->nops == p->ocap) {
        size_t cap = p->ocap ? p->ocap * 2 : 64;
        pgd_op_t *o = realloc(p->ops, cap * sizeof(*o));

        if (o == NULL)
            return pgd_oom(t, err);
        p->ops = o;
        p->ocap = cap;
    }
    op = &p->ops[p->nops];
    op->kind = kind;
    op->old = op->row = PGD_NONE;
    if (oldrow != NULL) {
        if (n > (int)(sizeof(kv) / sizeof(kv[0])))
            return wr_err_set(err, WR_EUNSUPPORTED, "table \"%s.%s\" has too many columns", t->nsp,
                              t->name);
        if ((rc = pgd_match_vals(t, oldrow, keysrc_old, kv, kind == 'U' ? "update" : "delete",
                                 err)) < 0)
            return rc;
        if ((op->old = pgd_vals_add(p, (size_t)n)) == PGD_NONE)
            return pgd_oom(t, err);
        for (int j = 0; j < n; j++)
            if (!pgd_val_copy(p, &p->vals[op->old + j], kv[j]))
                return pgd_oom(t, err);
    }
    if (nrow != NULL && (rc = pgd_row_copy(t, nrow, &op->row, err)) < 0)
        return rc;
    p->nops++;
    return 0;
}

static int
pgd_need_old_row(const pgd_table_t *t, const char *what, char old_kind, wr_err_t *err)
{
    if (!t->by_row || old_kind == 'O')
        return 0;
    wr_err_set(err, WR_EUNSUPPORTED,
               "cannot apply %s to table \"%s.%s\": it has no key and the change carries no old "
               "row (old row kind '%c')",
               what, t->nsp, t->name, old_kind ? old_kind : '-');
    wr_err_hint(err, "ALTER TABLE ... REPLICA IDENTITY FULL on the source, then resync the table");
    return WR_EUNSUPPORTED;
}

static int pgd_pend_added(dest_pg_t *d, pgd_table_t *t, wr_err_t *err);
static int pgd_flush_history(dest_pg_t *d, pgd_table_t *t, wr_err_t *err);
static void pgd_hist_values_sql(pgd_buf_t *b, const pgd_table_t *t, size_t from, size_t to);

int
pgd_write_change(dest_pg_t *d, pgd_table_t *t, const dest_event_t *ev, wr_err_t *err)
{
    const char *what = ev->kind == DEST_EV_INSERT   ? "insert"
                       : ev->kind == DEST_EV_UPDATE ? "update"
                                                    : "delete";
    int rc;

    if (t->nkeys == 0 && !t->by_row && ev->kind != DEST_EV_INSERT) {
        wr_err_set(err, WR_EUNSUPPORTED, "cannot apply %s to table \"%s.%s\": it has no key", what,
                   t->nsp, t->name);
        wr_err_hint(err, "give the source table a primary key or REPLICA IDENTITY FULL, then "
                         "resync the table");
        return WR_EUNSUPPORTED;
    }
    if (t->nkeys > 64 && t->fold)
        return wr_err_set(err, WR_EUNSUPPORTED, "table \"%s.%s\" has a key of more than 64 columns",
                          t->nsp, t->name);
    switch (ev->kind) {
    case DEST_EV_INSERT:
        if ((rc = pgd_check_row(t, ev->new_row, what, err)) < 0)
            return rc;
        rc = t->fold ? pgd_fold_insert(t, ev->new_row, err)
                     : pgd_op_add(t, 'I', NULL, ev->new_row, NULL, err);
        break;
    case DEST_EV_UPDATE:
        if ((rc = pgd_check_row(t, ev->new_row, what, err)) < 0 ||
            (rc = pgd_need_old_row(t, what, ev->old_kind, err)) < 0)
            return rc;
        if (t->fold) {
            rc = pgd_fold_update(d, t, ev, err);
        } else {
            const wr_row_t *o =
                (ev->old_kind == 'K' || ev->old_kind == 'O') ? ev->old_row : ev->new_row;
            if (o != ev->new_row && (rc = pgd_check_row(t, o, "old key of update", err)) < 0)
                return rc;
            rc = pgd_op_add(t, 'U', o, ev->new_row, NULL, err);
        }
        break;
    case DEST_EV_DELETE:
        if ((rc = pgd_check_row(t, ev->old_row, what, err)) < 0 ||
            (rc = pgd_need_old_row(t, what, ev->old_kind, err)) < 0)
            return rc;
        rc = t->fold ? pgd_fold_delete(t, ev->old_row, err)
                     : pgd_op_add(t, 'D', ev->old_row, NULL, NULL, err);
        break;
    default:
        return wr_err_set(err, WR_EINVAL, "event of kind %d is not a row change", (int)ev->kind);
    }
    if (rc < 0) {
        pgd_pend_clear(d, t);
        return rc;
    }
    return pgd_pend_added(d, t, err);
}

/* After a change was held back: t is on the list of tables with held-back changes, which
 * are written once they pass d->flush_bytes. */
static int
pgd_pend_added(dest_pg_t *d, pgd_table_t *t, wr_err_t *err)
{
    t->pend.changes++;
    if (!t->dirty) {
        t->dirty = true;
        t->dirty_next = NULL;
        if (d->dirty_tail != NULL)
            d->dirty_tail->dirty_next = t;
        else
            d->dirty_head = t;
        d->dirty_tail = t;
    }
    if (t->pend.alen + t->pend.nvals * sizeof(pgd_val_t) >= d->flush_bytes)
        return pgd_flush_table(d, t, err);
    return 0;
}

/* ---- SQL pieces ----------------------------------------------------------------------------- */

/* '{"v1","v2",NULL}'::text[] of column j of a set of rows (value index base + j of each). */
static void
pgd_sql_array(pgd_buf_t *b, const pgd_pend_t *p, const uint32_t *bases, size_t n, int j)
{
    pgd_buf_add(b, "'{");
    for (size_t i = 0; i < n; i++) {
        const pgd_val_t *v = &p->vals[bases[i] + (uint32_t)j];

        if (i)
            pgd_buf_addn(b, ",", 1);
        pgd_buf_arrelem(b, v->kind, pgd_vdata(p, v), v->len);
    }
    pgd_buf_add(b, "}'::text[]");
}

/* s.<alias>::<type of column c> */
static void
pgd_sql_cast(pgd_buf_t *b, const pgd_table_t *t, const char *alias, int c)
{
    pgd_buf_add(b, alias);
    pgd_buf_add(b, "::");
    pgd_buf_add(b, t->ctype[c]);
}

/* t.k1 = s.k0::type AND ... (the match key by equality) */
static void
pgd_sql_keyjoin(pgd_buf_t *b, const pgd_table_t *t)
{
    for (int j = 0; j < t->nkeys; j++) {
        char alias[16];

        snprintf(alias, sizeof(alias), "s.k%d", j);
        pgd_buf_add(b, j ? " AND t." : "t.");
        pgd_buf_ident(b, t->schema->cols[t->keys[j]].name);
        pgd_buf_add(b, " = ");
        pgd_sql_cast(b, t, alias, t->keys[j]);
    }
}

/* unnest(<key arrays>[, <value arrays of cols>]) [WITH ORDINALITY] AS s(k0, .., v<c>, ..[, i]) */
static void
pgd_sql_unnest_x(pgd_buf_t *b, const pgd_table_t *t, const uint32_t *keys, const uint32_t *rows,
                 size_t n, const uint8_t *cols, bool ord)
{
    bool first = true;

    pgd_buf_add(b, "unnest(");
    for (int j = 0; j < t->nkeys && keys != NULL; j++) {
        if (!first)
            pgd_buf_add(b, ", ");
        first = false;
        pgd_sql_array(b, &t->pend, keys, n, j);
    }
    for (int c = 0; c < t->ncols && rows != NULL; c++) {
        if (!cols[c])
            continue;
        if (!first)
            pgd_buf_add(b, ", ");
        first = false;
        pgd_sql_array(b, &t->pend, rows, n, c);
    }
    pgd_buf_add(b, ord ? ") WITH ORDINALITY AS s(" : ") AS s(");
    first = true;
    for (int j = 0; j < t->nkeys && keys != NULL; j++) {
        pgd_buf_addf(b, "%sk%d", first ? "" : ", ", j);
        first = false;
    }
    for (int c = 0; c < t->ncols && rows != NULL; c++) {
        if (!cols[c])
            continue;
        pgd_buf_addf(b, "%sv%d", first ? "" : ", ", c);
        first = false;
    }
    if (ord)
        pgd_buf_add(b, first ? "i" : ", i");
    pgd_buf_add(b, ")");
}

static void
pgd_sql_unnest(pgd_buf_t *b, const pgd_table_t *t, const uint32_t *keys, const uint32_t *rows,
               size_t n, const uint8_t *cols)
{
    pgd_sql_unnest_x(b, t, keys, rows, n, cols, false);
}

/* ("c1", "c2", ...) */
static void
pgd_sql_collist(pgd_buf_t *b, const pgd_table_t *t)
{
    pgd_buf_add(b, "(");
    for (int c = 0; c < t->ncols; c++) {
        if (c)
            pgd_buf_add(b, ", ");
        pgd_buf_ident(b, t->schema->cols[c].name);
    }
    pgd_buf_add(b, ")");
}

/* INSERT INTO t (cols) SELECT s.v0::type, ... FROM unnest(...) AS s(v0, ...) */
static void
pgd_sql_insert(pgd_buf_t *b, const pgd_table_t *t, const uint32_t *rows, size_t n,
               const uint8_t *all)
{
    pgd_buf_add(b, "INSERT INTO ");
    pgd_buf_add(b, t->label);
    pgd_buf_add(b, " ");
    pgd_sql_collist(b, t);
    pgd_buf_add(b, " SELECT ");
    for (int c = 0; c < t->ncols; c++) {
        char alias[16];

        snprintf(alias, sizeof(alias), "s.v%d", c);
        if (c)
            pgd_buf_add(b, ", ");
        pgd_sql_cast(b, t, alias, c);
    }
    pgd_buf_add(b, " FROM ");
    pgd_sql_unnest(b, t, NULL, rows, n, all);
    pgd_buf_add(b, "; ");
}

/* One row in COPY text format. */
static void
pgd_copy_row(pgd_buf_t *b, const pgd_pend_t *p, uint32_t row, int ncols)
{
    for (int c = 0; c < ncols; c++) {
        const pgd_val_t *v = &p->vals[row + (uint32_t)c];

        if (c)
            pgd_buf_addn(b, "\t", 1);
        pgd_buf_copyval(b, v->kind, pgd_vdata(p, v), v->len);
    }
    pgd_buf_addn(b, "\n", 1);
}

/* A statement of a flush and the row count it must report (-1: any; a SELECT count(*)
 * reports its value). */
typedef struct pgd_stmt_s {
    char what; /* 'I' insert, 'C' copy, 'D' delete, 'U' update, 'X' must be absent,
                * 'E' must exist (update with nothing to set) */
    long expect;
    size_t first; /* index into the flush's entry list (sets), or op index (in order) */
    size_t n;
} pgd_stmt_t;

/* The row count a statement reported. */
static long
pgd_count(const PGresult *r)
{
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 1)
        return atol(PQgetvalue(r, 0, 0));
    return atol(PQcmdTuples((PGresult *)r));
}

/* ---- writing a folded table ----------------------------------------------------------------- */

typedef struct pgd_group_s {
    char what;     /* 'D', 'U', 'X', 'I' */
    uint8_t *mask; /* 'U': the columns to set (ncols); owned */
    uint32_t *keys, *rows;
    size_t n, cap;
} pgd_group_t;

static void
pgd_groups_free(pgd_group_t *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(g[i].mask);
        free(g[i].keys);
        free(g[i].rows);
    }
    free(g);
}

static bool
pgd_group_push(pgd_group_t *g, uint32_t key, uint32_t row)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        uint32_t *k = realloc(g->keys, cap * sizeof(*k));
        uint32_t *r = k ? realloc(g->rows, cap * sizeof(*r)) : NULL;

        if (k)
            g->keys = k;
        if (r == NULL)
            return false;
        g->rows = r;
        g->cap = cap;
    }
    g->keys[g->n] = key;
    g->rows[g->n] = row;
    g->n++;
    return true;
}

/* Finds a key of group g that the target lacks ('D', 'U', 'E') or has ('X'), for the
 * message of a count that did not match (after the savepoint was rolled back). */
static void
pgd_find_culprit(dest_pg_t *d, const pgd_table_t *t, const pgd_group_t *g, char *buf, size_t len)
{
    pgd_buf_t *b = &d->aux;
    pgd_res_t res = {0};
    wr_err_t err;

    snprintf(buf, len, "(one of %zu keys)", g->n);
    pgd_sql_start(d, b);
    pgd_buf_add(b, "SELECT s.i FROM ");
    pgd_sql_unnest_x(b, t, g->keys, NULL, g->n, NULL, true);
    pgd_buf_add(b, g->what == 'X' ? " WHERE EXISTS" : " WHERE NOT EXISTS");
    pgd_buf_add(b, " (SELECT 1 FROM ");
    pgd_buf_add(b, t->label);
    pgd_buf_add(b, " AS t WHERE ");
    pgd_sql_keyjoin(b, t);
    pgd_buf_add(b, ") LIMIT 1");
    if (pgd_run(d, b, NULL, 0, &res, "finding the key", &err) == 0 && res.n > 0 &&
        PQntuples(res.r[res.n - 1]) == 1) {
        long i = atol(PQgetvalue(res.r[res.n - 1], 0, 0));

        if (i >= 1 && (size_t)i <= g->n)
            pgd_show_ent(t, g->keys[i - 1], buf, len);
    }
    pgd_res_clear(&res);
}

static int
pgd_flush_fold(dest_pg_t *d, pgd_table_t *t, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    pgd_group_t *gs = NULL;
    size_t ng = 0;
    pgd_buf_t *b = &d->sql;
    pgd_res_t res = {0};
    uint8_t *all = NULL;
    bool copy = false;
    char what[128];
    int rc = 0;

    int64_t t0 = wr_now_ms();

    snprintf(what, sizeof(what), "writing changes of \"%s.%s\"", t->nsp, t->name);
    all = malloc(t->ncols ? t->ncols : 1);
    gs = calloc(4 + p->nents, sizeof(*gs)); /* at most one group per entry, plus D/X/I */
    if (all == NULL || gs == NULL) {
        rc = pgd_oom(t, err);
        goto out;
    }
    memset(all, 1, t->ncols);
    gs[0].what = 'I';
    gs[1].what = 'D';
    gs[2].what = 'X';
    ng = 3;
    for (size_t i = 0; i < p->nents; i++) {
        const pgd_ent_t *e = &p->ents[i];
        pgd_group_t *g;

        if (e->pre == PGD_PRE_ABSENT)
            g = &gs[e->row != PGD_NONE ? 0 : 2];
        else if (e->row == PGD_NONE)
            g = &gs[1];
        else {
            size_t k;

            /* the columns to set: those not unchanged; key columns are matched, not set */
            for (int c = 0; c < t->ncols; c++)
                all[c] = p->vals[e->row + (uint32_t)c].kind != WR_VAL_UNCHANGED;
            for (int j = 0; j < t->nkeys; j++)
                all[t->keys[j]] = 0;
            for (k = 3; k < ng; k++)
                if (memcmp(gs[k].mask, all, t->ncols) == 0)
                    break;
            if (k == ng) {
                gs[ng].what = 'U';
                if ((gs[ng].mask = malloc(t->ncols ? t->ncols : 1)) == NULL) {
                    rc = pgd_oom(t, err);
                    goto out;
                }
                memcpy(gs[ng].mask, all, t->ncols);
                ng++;
            }
            g = &gs[k];
        }
        if (!pgd_group_push(g, e->key, e->row)) {
            rc = pgd_oom(t, err);
            goto out;
        }
    }
    /* the statements, in the order of gs: inserts, deletes, the absence check, updates */
    memset(all, 1, t->ncols);
    pgd_sql_start(d, b);
    if (d->in_txn && (gs[1].n > 0 || gs[2].n > 0 || ng > 3)) {
        /* rows found by key, one index probe each: a hash join would read the whole table
         * for a batch that touches a small part of it (and measured slower at 100,000 of
         * 1,000,000 rows too) */
        pgd_buf_add(b, "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; ");
        b->nlead += 2;
    }
    pgd_buf_reset(&d->data);
    if (gs[0].n >= PGD_COPY_MIN) {
        copy = true;
        pgd_buf_add(b, "COPY ");
        pgd_buf_add(b, t->label);
        pgd_buf_add(b, " ");
        pgd_sql_collist(b, t);
        pgd_buf_add(b, " FROM STDIN; ");
        for (size_t i = 0; i < gs[0].n; i++)
            pgd_copy_row(&d->data, p, gs[0].rows[i], t->ncols);
    } else if (gs[0].n > 0) {
        pgd_sql_insert(b, t, gs[0].rows, gs[0].n, all);
    }
    if (gs[1].n > 0) {
        pgd_buf_add(b, "DELETE FROM ");
        pgd_buf_add(b, t->label);
        pgd_buf_add(b, " AS t USING ");
        pgd_sql_unnest(b, t, gs[1].keys, NULL, gs[1].n, NULL);
        pgd_buf_add(b, " WHERE ");
        pgd_sql_keyjoin(b, t);
        pgd_buf_add(b, "; ");
    }
    if (gs[2].n > 0) {
        pgd_buf_add(b, "SELECT count(*) FROM ");
        pgd_buf_add(b, t->label);
        pgd_buf_add(b, " AS t, ");
        pgd_sql_unnest(b, t, gs[2].keys, NULL, gs[2].n, NULL);
        pgd_buf_add(b, " WHERE ");
        pgd_sql_keyjoin(b, t);
        pgd_buf_add(b, "; ");
    }
    for (size_t k = 3; k < ng; k++) {
        bool any = false;

        for (int c = 0; c < t->ncols && !any; c++)
            any = gs[k].mask[c];
        if (!any) {
            /* nothing to set (every other column unchanged): the rows must exist */
            gs[k].what = 'E';
            pgd_buf_add(b, "SELECT count(*) FROM ");
            pgd_buf_add(b, t->label);
            pgd_buf_add(b, " AS t, ");
            pgd_sql_unnest(b, t, gs[k].keys, NULL, gs[k].n, NULL);
            pgd_buf_add(b, " WHERE ");
            pgd_sql_keyjoin(b, t);
            pgd_buf_add(b, "; ");
            continue;
        }
        pgd_buf_add(b, "UPDATE ");
        pgd_buf_add(b, t->label);
        pgd_buf_add(b, " AS t SET ");
        any = false;
        for (int c = 0; c < t->ncols; c++) {
            char alias[16];

            if (!gs[k].mask[c])
                continue;
            if (any)
                pgd_buf_add(b, ", ");
            any = true;
            pgd_buf_ident(b, t->schema->cols[c].name);
            pgd_buf_add(b, " = ");
            snprintf(alias, sizeof(alias), "s.v%d", c);
            pgd_sql_cast(b, t, alias, c);
        }
        pgd_buf_add(b, " FROM ");
        pgd_sql_unnest(b, t, gs[k].keys, gs[k].rows, gs[k].n, gs[k].mask);
        pgd_buf_add(b, " WHERE ");
        pgd_sql_keyjoin(b, t);
        pgd_buf_add(b, "; ");
    }
    if (d->data.oom) {
        rc = pgd_oom(t, err);
        goto out;
    }
    if ((rc = pgd_run(d, b, d->data.p, d->data.len, &res, what, err)) < 0)
        goto out;
    /* the counts, in the order of the statements */
    {
        int r = 0;

        for (size_t k = 0; k < ng; k++) {
            pgd_group_t *g = &gs[k];
            long got, want = g->what == 'X' ? 0 : (long)g->n;
            char kb[512];

            if (g->n == 0)
                continue;
            if (r >= res.n) {
                rc = wr_err_set(err, WR_EDEST, "%s: %d results, expected more", what, res.n);
                goto out;
            }
            got = pgd_count(res.r[r++]);
            if (got == want)
                continue;
            if ((rc = pgd_sp_rollback(d, err)) < 0)
                goto out;
            if (g->what == 'I') {
                rc = wr_err_set(err, WR_EDATA, "insert into table \"%s.%s\" wrote %ld of %zu rows",
                                t->nsp, t->name, got, g->n);
                goto out;
            }
            pgd_find_culprit(d, t, g, kb, sizeof(kb));
            if (g->what == 'X')
                rc = wr_err_set(err, WR_EDATA,
                                "insert into table \"%s.%s\" failed: the key exists already for "
                                "key %s",
                                t->nsp, t->name, kb);
            else
                rc = wr_err_set(err, WR_EDATA, "%s of table \"%s.%s\" matched no row for key %s",
                                g->what == 'D' ? "delete" : "update", t->nsp, t->name, kb);
            wr_err_hint(err, "the destination no longer matches the source; run \"walrelay "
                             "resync\" for the table");
            goto out;
        }
    }
    log_debug("changes written table=%s.%s changes=%llu inserted=%zu deleted=%zu update_sets=%zu "
              "copy=%d sql_bytes=%zu ms=%lld",
              t->nsp, t->name, (unsigned long long)p->changes, gs[0].n, gs[1].n, ng - 3, copy,
              b->len + d->data.len, (long long)(wr_now_ms() - t0));
out:
    pgd_res_clear(&res);
    if (gs != NULL)
        pgd_groups_free(gs, ng > 3 ? ng : 3);
    free(all);
    return rc;
}

/* An UPDATE of one row by its old key, on its own (a key change folding cannot express). */
static int
pgd_direct_update(dest_pg_t *d, pgd_table_t *t, const wr_row_t *nrow, const wr_val_t *const *okv,
                  wr_err_t *err)
{
    pgd_buf_t *b = &d->sql;
    pgd_res_t res = {0};
    bool any = false;
    int rc;

    pgd_sql_start(d, b);
    pgd_buf_add(b, "UPDATE ");
    pgd_buf_add(b, t->label);
    pgd_buf_add(b, " SET ");
    for (int c = 0; c < t->ncols; c++) {
        const wr_val_t *v = &nrow->vals[c];

        if (v->kind == WR_VAL_UNCHANGED)
            continue;
        if (any)
            pgd_buf_add(b, ", ");
        any = true;
        pgd_buf_ident(b, t->schema->cols[c].name);
        if (v->kind == WR_VAL_NULL) {
            pgd_buf_add(b, " = NULL");
            continue;
        }
        pgd_buf_add(b, " = ");
        pgd_buf_lit(b, v->data, v->len);
        pgd_buf_add(b, "::");
        pgd_buf_add(b, t->ctype[c]);
    }
    pgd_buf_add(b, " WHERE ");
    for (int j = 0; j < t->nkeys; j++) {
        if (j)
            pgd_buf_add(b, " AND ");
        pgd_buf_ident(b, t->schema->cols[t->keys[j]].name);
        pgd_buf_add(b, " = ");
        pgd_buf_lit(b, okv[j]->data, okv[j]->len);
        pgd_buf_add(b, "::");
        pgd_buf_add(b, t->ctype[t->keys[j]]);
    }
    if ((rc = pgd_run(d, b, NULL, 0, &res, "updating a key", err)) < 0) {
        pgd_res_clear(&res);
        return rc;
    }
    if (res.n < 1 || pgd_count(res.r[0]) != 1) {
        pgd_res_clear(&res);
        if ((rc = pgd_sp_rollback(d, err)) < 0)
            return rc;
        return pgd_refuse(t, "update", "matched no row", okv, err);
    }
    pgd_res_clear(&res);
    return 0;
}

/* ---- writing a table in order --------------------------------------------------------------- */

/* WHERE ctid = (SELECT ctid FROM t WHERE <match of op's old values> LIMIT 1) */
static void
pgd_sql_match_one(pgd_buf_t *b, const pgd_table_t *t, uint32_t old)
{
    const pgd_pend_t *p = &t->pend;
    int n = t->by_row ? t->ncols : t->nkeys;

    pgd_buf_add(b, " WHERE ctid = (SELECT ctid FROM ");
    pgd_buf_add(b, t->label);
    pgd_buf_add(b, " WHERE ");
    for (int j = 0; j < n; j++) {
        int c = t->by_row ? j : t->keys[j];
        const pgd_val_t *v = &p->vals[old + (uint32_t)j];

        if (j)
            pgd_buf_add(b, " AND ");
        if (!t->by_row) {
            pgd_buf_ident(b, t->schema->cols[c].name);
            pgd_buf_add(b, " = ");
            pgd_buf_lit(b, pgd_vdata(p, v), v->len);
            pgd_buf_add(b, "::");
            pgd_buf_add(b, t->ctype[c]);
            continue;
        }
        pgd_buf_add(b, "num_nulls(");
        pgd_buf_ident(b, t->schema->cols[c].name);
        if (v->kind == WR_VAL_NULL) {
            pgd_buf_add(b, ") = 1");
            continue;
        }
        pgd_buf_add(b, ") = 0 AND format('%s', ");
        pgd_buf_ident(b, t->schema->cols[c].name);
        pgd_buf_add(b, ") = ");
        pgd_buf_lit(b, pgd_vdata(p, v), v->len);
    }
    pgd_buf_add(b, " LIMIT 1)");
}

static int
pgd_flush_ordered(dest_pg_t *d, pgd_table_t *t, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    pgd_buf_t *b = &d->sql;
    pgd_res_t res = {0};
    pgd_stmt_t *st = NULL;
    uint32_t *rows = NULL;
    uint8_t *all = NULL;
    size_t nst = 0;
    char what[128];
    int rc = 0;

    snprintf(what, sizeof(what), "writing changes of \"%s.%s\"", t->nsp, t->name);
    st = calloc(p->nops ? p->nops : 1, sizeof(*st));
    rows = calloc(p->nops ? p->nops : 1, sizeof(*rows));
    all = malloc(t->ncols ? t->ncols : 1);
    if (st == NULL || rows == NULL || all == NULL) {
        rc = pgd_oom(t, err);
        goto out;
    }
    memset(all, 1, t->ncols);
    pgd_sql_start(d, b);
    pgd_buf_reset(&d->data);
    for (size_t i = 0; i < p->nops;) {
        const pgd_op_t *op = &p->ops[i];

        if (op->kind == 'I') {
            size_t j = i;

            while (j < p->nops && p->ops[j].kind == 'I') {
                rows[j - i] = p->ops[j].row;
                j++;
            }
            st[nst].what = 'I';
            st[nst].first = i;
            st[nst].n = j - i;
            st[nst].expect = (long)(j - i);
            if (i == 0 && j == p->nops && j - i >= PGD_COPY_MIN) {
                st[nst].what = 'C';
                pgd_buf_add(b, "COPY ");
                pgd_buf_add(b, t->label);
                pgd_buf_add(b, " ");
                pgd_sql_collist(b, t);
                pgd_buf_add(b, " FROM STDIN; ");
                for (size_t k = 0; k < j - i; k++)
                    pgd_copy_row(&d->data, p, rows[k], t->ncols);
            } else {
                pgd_sql_insert(b, t, rows, j - i, all);
            }
            nst++;
            i = j;
            continue;
        }
        st[nst].what = op->kind;
        st[nst].first = i;
        st[nst].n = 1;
        st[nst].expect = 1;
        nst++;
        if (op->kind == 'D') {
            pgd_buf_add(b, "DELETE FROM ");
            pgd_buf_add(b, t->label);
        } else {
            bool any = false;

            pgd_buf_add(b, "UPDATE ");
            pgd_buf_add(b, t->label);
            pgd_buf_add(b, " SET ");
            for (int c = 0; c < t->ncols; c++) {
                const pgd_val_t *v = &p->vals[op->row + (uint32_t)c];

                if (v->kind == WR_VAL_UNCHANGED)
                    continue;
                if (any)
                    pgd_buf_add(b, ", ");
                any = true;
                pgd_buf_ident(b, t->schema->cols[c].name);
                if (v->kind == WR_VAL_NULL) {
                    pgd_buf_add(b, " = NULL");
                    continue;
                }
                pgd_buf_add(b, " = ");
                pgd_buf_lit(b, pgd_vdata(p, v), v->len);
                pgd_buf_add(b, "::");
                pgd_buf_add(b, t->ctype[c]);
            }
            if (!any) { /* every column unchanged: still find the row */
                pgd_buf_ident(b, t->schema->cols[0].name);
                pgd_buf_add(b, " = ");
                pgd_buf_ident(b, t->schema->cols[0].name);
            }
        }
        pgd_sql_match_one(b, t, op->old);
        pgd_buf_add(b, "; ");
        i++;
    }
    if (d->data.oom) {
        rc = pgd_oom(t, err);
        goto out;
    }
    if ((rc = pgd_run(d, b, d->data.p, d->data.len, &res, what, err)) < 0)
        goto out;
    for (size_t k = 0; k < nst; k++) {
        long got;

        if ((int)k >= res.n) {
            rc = wr_err_set(err, WR_EDEST, "%s: %d results for %zu statements", what, res.n, nst);
            goto out;
        }
        got = pgd_count(res.r[k]);
        if (got != st[k].expect) {
            char kb[512];

            if ((rc = pgd_sp_rollback(d, err)) < 0)
                goto out;
            if (st[k].what == 'I' || st[k].what == 'C') {
                rc = wr_err_set(err, WR_EDATA, "insert into table \"%s.%s\" wrote %ld of %ld rows",
                                t->nsp, t->name, got, st[k].expect);
                goto out;
            }
            pgd_show_ent(t, p->ops[st[k].first].old, kb, sizeof(kb));
            rc = wr_err_set(err, WR_EDATA, "%s of table \"%s.%s\" matched no row for %s",
                            st[k].what == 'U' ? "update" : "delete", t->nsp, t->name, kb);
            wr_err_hint(err, "the destination no longer matches the source; run \"walrelay "
                             "resync\" for the table");
            goto out;
        }
    }
    log_debug("changes written in order table=%s.%s changes=%llu statements=%zu", t->nsp, t->name,
              (unsigned long long)p->changes, nst);
out:
    pgd_res_clear(&res);
    free(st);
    free(rows);
    free(all);
    return rc;
}

/* ---- inserts written with the commit ------------------------------------------------------- */

long
pgd_append_inserts(pgd_table_t *t, pgd_buf_t *b)
{
    pgd_pend_t *p = &t->pend;
    uint32_t rows[PGD_COPY_MIN];
    uint8_t all[1600];
    size_t n = 0;

    if (t->ncols > sizeof(all))
        return 0;
    if (t->history) {
        /* a few appended rows, none looked up: one INSERT ... VALUES */
        if (p->nops == 0 || p->nops >= PGD_COPY_MIN)
            return 0;
        for (size_t i = 0; i < p->nops; i++)
            if (p->ops[i].lookup != PGD_HL_NONE)
                return 0;
        pgd_hist_values_sql(b, t, 0, p->nops);
        return (long)p->nops;
    }
    if (t->fold) {
        if (p->nops > 0 || p->nents == 0 || p->nents >= PGD_COPY_MIN)
            return 0;
        for (size_t i = 0; i < p->nents; i++) {
            if (p->ents[i].pre != PGD_PRE_ABSENT || p->ents[i].row == PGD_NONE)
                return 0;
            rows[n++] = p->ents[i].row;
        }
    } else {
        if (p->nents > 0 || p->nops == 0 || p->nops >= PGD_COPY_MIN)
            return 0;
        for (size_t i = 0; i < p->nops; i++) {
            if (p->ops[i].kind != 'I')
                return 0;
            rows[n++] = p->ops[i].row;
        }
    }
    memset(all, 1, t->ncols);
    pgd_sql_insert(b, t, rows, n, all);
    return (long)n;
}

/* ---- flushing ------------------------------------------------------------------------------- */

/* Takes t off the list of tables with held-back changes. */
static void
pgd_undirty(dest_pg_t *d, pgd_table_t *t)
{
    pgd_table_t **pp = &d->dirty_head, *prev = NULL;

    if (!t->dirty)
        return;
    while (*pp != NULL && *pp != t) {
        prev = *pp;
        pp = &(*pp)->dirty_next;
    }
    if (*pp == t) {
        *pp = t->dirty_next;
        if (d->dirty_tail == t)
            d->dirty_tail = prev;
    }
    t->dirty = false;
    t->dirty_next = NULL;
}

int
pgd_flush_table(dest_pg_t *d, pgd_table_t *t, wr_err_t *err)
{
    int rc = 0;

    if (t->pend.nents > 0 || t->pend.nops > 0)
        rc = t->history ? pgd_flush_history(d, t, err)
             : t->fold  ? pgd_flush_fold(d, t, err)
                        : pgd_flush_ordered(d, t, err);
    pgd_pend_clear(d, t);
    pgd_undirty(d, t);
    return rc;
}

/* ---- history mode (issue 9) ------------------------------------------------------------------
 *
 * [destination] mode = history: every change of a table is appended as a row of its own
 * (docs/destinations.md "History mode"), held back in order like the IN ORDER tables
 * (pgd_op_t with the history fields) and written in one round trip per table at the
 * batch's commit: one COPY when no row needs an earlier row's values, else multi-row
 * INSERT ... VALUES for runs of rows and, for a row that does,
 *   INSERT INTO t (...) SELECT <values, or h.c for the columns the change did not carry>
 *   FROM (SELECT 1) AS x [LEFT] JOIN LATERAL (SELECT ... FROM t WHERE <key> = ... AND
 *     _change_type <> 'truncate' ORDER BY _commit_lsn DESC NULLS LAST,
 *     (_change_type <> 'copy') DESC, _seq DESC LIMIT 1) AS h ON true
 * which sees the rows appended before it in the same round trip (each statement sees the
 * earlier ones' rows). An update's unchanged TOAST value needs that row (inner join: no
 * row, no insert, and the table errors naming the column); a delete's non-key columns
 * under REPLICA IDENTITY DEFAULT / USING INDEX take it if there is one (else NULL). Under
 * FULL the old row has every value: an update's unchanged columns are merged from it, and
 * nothing is looked up. The rows go into the caller's transaction, with the stream's
 * resume key: exactly once.
 */

static const char *
pgd_hist_type(char kind)
{
    return kind == 'I' ? "insert" : kind == 'U' ? "update" : kind == 'D' ? "delete" : "truncate";
}

/* RFC 3339 in UTC with microseconds (timestamptz input reads it exactly). */
static void
pgd_hist_time(int64_t us, char *buf, size_t len)
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    struct tm tm;
    time_t tt;

    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    tt = (time_t)secs;
    if (gmtime_r(&tt, &tm) == NULL) {
        snprintf(buf, len, "1970-01-01T00:00:00Z");
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
}

void
pgd_hist_collist(pgd_buf_t *b, const pgd_table_t *t)
{
    pgd_buf_add(b, " (");
    for (int c = 0; c < t->ncols; c++) {
        pgd_buf_ident(b, t->schema->cols[c].name);
        pgd_buf_add(b, ", ");
    }
    pgd_buf_add(b, PGD_HIST_COLS ")");
}

bool
pgd_hist_index_name(const wr_schema_t *s, const char *table, char *buf, size_t len)
{
    uint32_t h = 2166136261u;
    int nk = 0;

    if (s->replident == 'f')
        return false;
    for (int i = 0; i < s->ncols; i++) {
        if (!s->cols[i].is_key)
            continue;
        nk++;
        for (const char *p = s->cols[i].name; *p; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
        h = (h ^ 0xffu) * 16777619u; /* a separator: (ab, c) is not (a, bc) */
    }
    if (nk == 0)
        return false;
    /* "_walrelay_hk_" + up to 40 bytes of the name (whole UTF-8 characters) + "_" + 8 */
    {
        size_t n = strlen(table);

        if (n > 40) {
            n = 40;
            while (n > 0 && ((uint8_t)table[n] & 0xc0) == 0x80)
                n--;
        }
        snprintf(buf, len, "_walrelay_hk_%.*s_%08x", (int)n, table, (unsigned)h);
    }
    return true;
}

void
pgd_hist_copy_lines(pgd_table_t *t, pgd_buf_t *b, const char *data, size_t len)
{
    char lsn[32];

    if (t->copy_lsn != 0)
        wr_lsn_format(t->copy_lsn, lsn, sizeof(lsn));
    else
        snprintf(lsn, sizeof(lsn), "\\N");
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl != NULL ? (size_t)(nl - data) : len;

        pgd_buf_addn(b, data, n);
        pgd_buf_addf(b, "\tcopy\t%s\t%llu\t\\N\t\\N\n", lsn, (unsigned long long)++t->copy_seq);
        n += nl != NULL;
        data += n;
        len -= n;
    }
}

/* A new history op (zeroed, nothing referenced), appended to t's list. */
static int
pgd_hist_op_new(pgd_table_t *t, const dest_event_t *ev, char kind, pgd_op_t **out, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    pgd_op_t *op;

    if (p->nops == p->ocap) {
        size_t cap = p->ocap ? p->ocap * 2 : 64;
        pgd_op_t *o = realloc(p->ops, cap * sizeof(*o));

        if (o == NULL)
            return pgd_oom(t, err);
        p->ops = o;
        p->ocap = cap;
    }
    op = &p->ops[p->nops++];
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    op->old = op->row = op->okey = PGD_NONE;
    op->lookup = PGD_HL_NONE;
    op->lsn = ev->key.commit_lsn;
    op->seq = ev->key.ordinal;
    op->ts = ev->commit_ts;
    *out = op;
    return 0;
}

/* The key values of row (t's key columns) into the arena for a lookup: *out = their first
 * index, or PGD_NONE when the row cannot be looked up (no key, a key value NULL or not
 * sent). */
static int
pgd_hist_key(pgd_table_t *t, const wr_row_t *row, uint32_t *out, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    uint32_t k;

    *out = PGD_NONE;
    if (t->nkeys == 0 || row == NULL)
        return 0;
    for (int j = 0; j < t->nkeys; j++)
        if (row->vals[t->keys[j]].kind != WR_VAL_TEXT)
            return 0;
    if ((k = pgd_vals_add(p, (size_t)t->nkeys)) == PGD_NONE)
        return pgd_oom(t, err);
    for (int j = 0; j < t->nkeys; j++)
        if (!pgd_val_copy(p, &p->vals[k + (uint32_t)j], &row->vals[t->keys[j]]))
            return pgd_oom(t, err);
    *out = k;
    return 0;
}

/* {"key column": value, ...} of an old key row (the JSON of docs/events.md) as one text
 * value in the arena. */
static int
pgd_hist_okey(pgd_table_t *t, const wr_row_t *old, uint32_t *out, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    jw_buf_t j;
    wr_val_t v;
    bool first = true;
    uint32_t k;

    jw_init(&j);
    jw_raw(&j, "{", 1);
    for (int i = 0; i < t->ncols; i++) {
        const wr_column_t *c = &t->schema->cols[i];
        const wr_val_t *ov = &old->vals[i];

        if (!c->is_key)
            continue;
        if (!first)
            jw_raw(&j, ",", 1);
        first = false;
        jw_cstr(&j, c->name);
        jw_raw(&j, ":", 1);
        jw_value(&j, c->type_oid, ov->kind == WR_VAL_TEXT ? 't' : 'n', ov->data, ov->len);
    }
    jw_raw(&j, "}", 1);
    if (jw_failed(&j) || (k = pgd_vals_add(p, 1)) == PGD_NONE) {
        jw_free(&j);
        return pgd_oom(t, err);
    }
    v.kind = WR_VAL_TEXT;
    v.data = j.data;
    v.len = (uint32_t)j.len;
    if (!pgd_val_copy(p, &p->vals[k], &v)) {
        jw_free(&j);
        return pgd_oom(t, err);
    }
    jw_free(&j);
    *out = k;
    return 0;
}

/* The error of an update whose unchanged TOAST value has no earlier row to come from. */
static int
pgd_hist_no_earlier(const pgd_table_t *t, const wr_row_t *row, wr_err_t *err)
{
    const char *col = "?";

    for (int i = 0; row != NULL && i < t->ncols; i++)
        if (row->vals[i].kind == WR_VAL_UNCHANGED) {
            col = t->schema->cols[i].name;
            break;
        }
    wr_err_set(err, WR_EDATA,
               "the history of table \"%s.%s\" has no earlier row to take the unchanged value "
               "of column \"%s\" from",
               t->nsp, t->name, col);
    wr_err_hint(err, "resync the table: its copy starts the history again");
    return WR_EDATA;
}

int
pgd_hist_change(dest_pg_t *d, pgd_table_t *t, const dest_event_t *ev, wr_err_t *err)
{
    wr_val_t *tmp = NULL;
    pgd_op_t *op;
    int rc = 0;

    switch (ev->kind) {
    case DEST_EV_INSERT:
        if ((rc = pgd_check_row(t, ev->new_row, "insert", err)) < 0 ||
            (rc = pgd_hist_op_new(t, ev, 'I', &op, err)) < 0)
            break;
        rc = pgd_row_copy(t, ev->new_row, &op->row, err);
        break;
    case DEST_EV_UPDATE: {
        bool unchanged = false;

        if ((rc = pgd_check_row(t, ev->new_row, "update", err)) < 0)
            break;
        if (ev->old_row != NULL && (ev->old_kind == 'K' || ev->old_kind == 'O') &&
            (rc = pgd_check_row(t, ev->old_row, "old row of update", err)) < 0)
            break;
        for (int i = 0; i < t->ncols; i++)
            unchanged = unchanged || ev->new_row->vals[i].kind == WR_VAL_UNCHANGED;
        if ((rc = pgd_hist_op_new(t, ev, 'U', &op, err)) < 0)
            break;
        if (unchanged && ev->old_kind == 'O' && ev->old_row != NULL) {
            /* FULL: the old row has every value; append it merged with the new one */
            wr_row_t merged;

            if ((tmp = malloc(sizeof(*tmp) * t->ncols)) == NULL) {
                rc = pgd_oom(t, err);
                break;
            }
            for (int i = 0; i < t->ncols; i++)
                tmp[i] = ev->new_row->vals[i].kind == WR_VAL_UNCHANGED ? ev->old_row->vals[i]
                                                                       : ev->new_row->vals[i];
            merged.ncols = t->ncols;
            merged.vals = tmp;
            rc = pgd_row_copy(t, &merged, &op->row, err);
            unchanged = false;
            for (int i = 0; rc == 0 && i < t->ncols; i++)
                unchanged = unchanged || tmp[i].kind == WR_VAL_UNCHANGED;
            if (rc == 0 && unchanged)
                rc = pgd_hist_no_earlier(t, &merged, err);
            break;
        }
        if (unchanged) {
            const wr_row_t *keyrow =
                ev->old_kind == 'K' && ev->old_row != NULL ? ev->old_row : ev->new_row;

            if ((rc = pgd_hist_key(t, keyrow, &op->old, err)) < 0)
                break;
            if (op->old == PGD_NONE) {
                rc = pgd_hist_no_earlier(t, ev->new_row, err);
                break;
            }
            op->lookup = PGD_HL_NEED;
        }
        if (ev->old_kind == 'K' && ev->old_row != NULL &&
            (rc = pgd_hist_okey(t, ev->old_row, &op->okey, err)) < 0)
            break;
        rc = pgd_row_copy(t, ev->new_row, &op->row, err);
        break;
    }
    case DEST_EV_DELETE:
        if ((rc = pgd_check_row(t, ev->old_row, "delete", err)) < 0 ||
            (rc = pgd_hist_op_new(t, ev, 'D', &op, err)) < 0)
            break;
        if (ev->old_kind != 'O') {
            /* the key only: the other old values from the key's latest row, if any */
            wr_row_t keys;

            if ((tmp = malloc(sizeof(*tmp) * t->ncols)) == NULL) {
                rc = pgd_oom(t, err);
                break;
            }
            for (int i = 0; i < t->ncols; i++) {
                tmp[i] = ev->old_row->vals[i];
                if (!t->schema->cols[i].is_key)
                    tmp[i].kind = WR_VAL_UNCHANGED;
            }
            keys.ncols = t->ncols;
            keys.vals = tmp;
            if ((rc = pgd_hist_key(t, ev->old_row, &op->old, err)) < 0)
                break;
            if (op->old != PGD_NONE)
                op->lookup = PGD_HL_OPT;
            else /* nothing to find it by: NULL */
                for (int i = 0; i < t->ncols; i++)
                    if (tmp[i].kind == WR_VAL_UNCHANGED)
                        tmp[i].kind = WR_VAL_NULL;
            rc = pgd_row_copy(t, &keys, &op->row, err);
            break;
        }
        rc = pgd_row_copy(t, ev->old_row, &op->row, err);
        for (int i = 0; rc == 0 && i < t->ncols; i++)
            if (t->pend.vals[op->row + (uint32_t)i].kind == WR_VAL_UNCHANGED)
                t->pend.vals[op->row + (uint32_t)i].kind = WR_VAL_NULL;
        break;
    case DEST_EV_TRUNCATE:
        rc = pgd_hist_op_new(t, ev, 'T', &op, err);
        break;
    default:
        rc = wr_err_set(err, WR_EINVAL, "event of kind %d is not a row change", (int)ev->kind);
    }
    free(tmp);
    if (rc < 0) {
        pgd_pend_clear(d, t);
        return rc;
    }
    return pgd_pend_added(d, t, err);
}

/* The meta columns of op as literals: 'update', 'X/Y', seq, 'time', NULL | 'json'. cast
 * adds the types (a SELECT list is not coerced to the columns like VALUES). */
static void
pgd_hist_meta_sql(pgd_buf_t *b, const pgd_table_t *t, const pgd_op_t *op, bool cast)
{
    char lsn[32], when[48];

    wr_lsn_format(op->lsn, lsn, sizeof(lsn));
    pgd_hist_time(op->ts, when, sizeof(when));
    pgd_buf_addf(b, "'%s', '%s'%s, %u, '%s'%s, ", pgd_hist_type(op->kind), lsn,
                 cast ? "::pg_lsn" : "", (unsigned)op->seq, when, cast ? "::timestamptz" : "");
    if (op->okey == PGD_NONE) {
        pgd_buf_add(b, "NULL");
    } else {
        const pgd_val_t *v = &t->pend.vals[op->okey];

        pgd_buf_lit(b, pgd_vdata(&t->pend, v), v->len);
        if (cast)
            pgd_buf_add(b, "::jsonb");
    }
}

/* The row of a non-lookup op as COPY text, meta columns included. */
static void
pgd_hist_copy_row(pgd_buf_t *b, const pgd_table_t *t, const pgd_op_t *op)
{
    const pgd_pend_t *p = &t->pend;
    char lsn[32], when[48];

    for (int c = 0; c < t->ncols; c++) {
        const pgd_val_t *v = op->row != PGD_NONE ? &p->vals[op->row + (uint32_t)c] : NULL;

        if (v == NULL || v->kind != WR_VAL_TEXT)
            pgd_buf_addn(b, "\\N", 2);
        else
            pgd_buf_copyval(b, WR_VAL_TEXT, pgd_vdata(p, v), v->len);
        pgd_buf_addn(b, "\t", 1);
    }
    wr_lsn_format(op->lsn, lsn, sizeof(lsn));
    pgd_hist_time(op->ts, when, sizeof(when));
    pgd_buf_addf(b, "%s\t%s\t%u\t%s\t", pgd_hist_type(op->kind), lsn, (unsigned)op->seq, when);
    if (op->okey == PGD_NONE) {
        pgd_buf_addn(b, "\\N", 2);
    } else {
        const pgd_val_t *v = &p->vals[op->okey];

        pgd_buf_copyval(b, WR_VAL_TEXT, pgd_vdata(p, v), v->len);
    }
    pgd_buf_addn(b, "\n", 1);
}

/* INSERT INTO t (...) VALUES (...), ... for ops [from, to) (none looks up). */
static void
pgd_hist_values_sql(pgd_buf_t *b, const pgd_table_t *t, size_t from, size_t to)
{
    const pgd_pend_t *p = &t->pend;

    pgd_buf_add(b, "INSERT INTO ");
    pgd_buf_add(b, t->label);
    pgd_hist_collist(b, t);
    pgd_buf_add(b, " VALUES ");
    for (size_t i = from; i < to; i++) {
        const pgd_op_t *op = &p->ops[i];

        pgd_buf_add(b, i > from ? ", (" : "(");
        for (int c = 0; c < t->ncols; c++) {
            const pgd_val_t *v = op->row != PGD_NONE ? &p->vals[op->row + (uint32_t)c] : NULL;

            if (v == NULL || v->kind != WR_VAL_TEXT)
                pgd_buf_add(b, "NULL");
            else
                pgd_buf_lit(b, pgd_vdata(p, v), v->len);
            pgd_buf_add(b, ", ");
        }
        pgd_hist_meta_sql(b, t, op, false);
        pgd_buf_add(b, ")");
    }
    pgd_buf_add(b, "; ");
}

/* INSERT ... SELECT of one op that takes values from the key's latest row. */
static void
pgd_hist_lookup_sql(pgd_buf_t *b, const pgd_table_t *t, const pgd_op_t *op)
{
    const pgd_pend_t *p = &t->pend;

    pgd_buf_add(b, "INSERT INTO ");
    pgd_buf_add(b, t->label);
    pgd_hist_collist(b, t);
    pgd_buf_add(b, " SELECT ");
    for (int c = 0; c < t->ncols; c++) {
        const pgd_val_t *v = &p->vals[op->row + (uint32_t)c];

        if (v->kind == WR_VAL_UNCHANGED) {
            pgd_buf_add(b, "h.");
            pgd_buf_ident(b, t->schema->cols[c].name);
        } else if (v->kind != WR_VAL_TEXT) {
            pgd_buf_add(b, "NULL::");
            pgd_buf_add(b, t->ctype[c]);
        } else {
            pgd_buf_lit(b, pgd_vdata(p, v), v->len);
            pgd_buf_add(b, "::");
            pgd_buf_add(b, t->ctype[c]);
        }
        pgd_buf_add(b, ", ");
    }
    pgd_hist_meta_sql(b, t, op, true);
    pgd_buf_add(b, op->lookup == PGD_HL_NEED ? " FROM (SELECT 1) AS x JOIN LATERAL (SELECT "
                                             : " FROM (SELECT 1) AS x LEFT JOIN LATERAL (SELECT ");
    for (int c = 0; c < t->ncols; c++) {
        if (c)
            pgd_buf_add(b, ", ");
        pgd_buf_ident(b, t->schema->cols[c].name);
    }
    pgd_buf_add(b, " FROM ");
    pgd_buf_add(b, t->label);
    pgd_buf_add(b, " WHERE ");
    for (int j = 0; j < t->nkeys; j++) {
        const pgd_val_t *v = &p->vals[op->old + (uint32_t)j];
        int c = t->keys[j];

        pgd_buf_ident(b, t->schema->cols[c].name);
        pgd_buf_add(b, " = ");
        pgd_buf_lit(b, pgd_vdata(p, v), v->len);
        pgd_buf_add(b, "::");
        pgd_buf_add(b, t->ctype[c]);
        pgd_buf_add(b, " AND ");
    }
    pgd_buf_add(b, "_change_type <> 'truncate' ORDER BY _commit_lsn DESC NULLS LAST, "
                   "(_change_type <> 'copy') DESC, _seq DESC LIMIT 1) AS h ON true; ");
}

static int
pgd_flush_history(dest_pg_t *d, pgd_table_t *t, wr_err_t *err)
{
    pgd_pend_t *p = &t->pend;
    pgd_buf_t *b = &d->sql;
    pgd_res_t res = {0};
    pgd_stmt_t *st = NULL;
    size_t nst = 0;
    bool lookups = false;
    char what[128];
    int rc = 0;

    snprintf(what, sizeof(what), "appending to the history of \"%s.%s\"", t->nsp, t->name);
    for (size_t i = 0; i < p->nops && !lookups; i++)
        lookups = p->ops[i].lookup != PGD_HL_NONE;
    if ((st = calloc(p->nops ? p->nops : 1, sizeof(*st))) == NULL)
        return pgd_oom(t, err);
    pgd_sql_start(d, b);
    pgd_buf_reset(&d->data);
    if (!lookups && p->nops >= PGD_COPY_MIN) {
        pgd_buf_add(b, "COPY ");
        pgd_buf_add(b, t->label);
        pgd_hist_collist(b, t);
        pgd_buf_add(b, " FROM STDIN; ");
        for (size_t i = 0; i < p->nops; i++)
            pgd_hist_copy_row(&d->data, t, &p->ops[i]);
        st[nst].what = 'C';
        st[nst].first = 0;
        st[nst].n = p->nops;
        st[nst++].expect = (long)p->nops;
    } else {
        for (size_t i = 0; i < p->nops;) {
            size_t j = i;

            while (j < p->nops && p->ops[j].lookup == PGD_HL_NONE)
                j++;
            if (j > i) {
                pgd_hist_values_sql(b, t, i, j);
                st[nst].what = 'I';
                st[nst].first = i;
                st[nst].n = j - i;
                st[nst++].expect = (long)(j - i);
                i = j;
                continue;
            }
            pgd_hist_lookup_sql(b, t, &p->ops[i]);
            st[nst].what = 'L';
            st[nst].first = i;
            st[nst].n = 1;
            st[nst++].expect = 1;
            i++;
        }
    }
    if (d->data.oom || b->oom) {
        rc = pgd_oom(t, err);
        goto out;
    }
    if ((rc = pgd_run(d, b, d->data.p, d->data.len, &res, what, err)) < 0)
        goto out;
    for (size_t k = 0; k < nst; k++) {
        long got;

        if ((int)k >= res.n) {
            rc = wr_err_set(err, WR_EDEST, "%s: %d results for %zu statements", what, res.n, nst);
            goto out;
        }
        got = pgd_count(res.r[k]);
        if (got == st[k].expect)
            continue;
        if ((rc = pgd_sp_rollback(d, err)) < 0)
            goto out;
        if (st[k].what == 'L') {
            const pgd_op_t *op = &p->ops[st[k].first];
            char kb[512];
            const char *col = "?";

            for (int c = 0; c < t->ncols; c++)
                if (p->vals[op->row + (uint32_t)c].kind == WR_VAL_UNCHANGED) {
                    col = t->schema->cols[c].name;
                    break;
                }
            pgd_show_ent(t, op->old, kb, sizeof(kb));
            rc = wr_err_set(err, WR_EDATA,
                            "the history of table \"%s.%s\" has no earlier row of %s to take the "
                            "unchanged value of column \"%s\" from",
                            t->nsp, t->name, kb, col);
            wr_err_hint(err, "resync the table: its copy starts the history again");
            goto out;
        }
        rc = wr_err_set(err, WR_EDATA, "%s wrote %ld of %ld rows", what, got, st[k].expect);
        goto out;
    }
    log_debug("history appended table=%s.%s changes=%llu statements=%zu", t->nsp, t->name,
              (unsigned long long)p->changes, nst);
out:
    pgd_res_clear(&res);
    free(st);
    return rc;
}
