/*
 * state_mem.c - the replication state store in memory, with the semantics of
 * state_sqlite.c, for unit tests.
 *
 * NOTES: not used by any daemon process; nothing persists. Tables are kept in an array
 * sorted by relid, each with its own phase history stack; schema versions and mappings
 * are flat arrays. Stored text is cut to the state_table_t field sizes exactly as the
 * SQLite store does, so the same tests pass on both.
 */
#include "state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct mem_hist_s {
    wr_phase_t phase;
    wr_lsn_t lsn;
    char err_kind[sizeof(((state_table_t *)0)->err_kind)];
    char err_msg[sizeof(((state_table_t *)0)->err_msg)];
    char err_hint[sizeof(((state_table_t *)0)->err_hint)];
} mem_hist_t;

typedef struct mem_table_s {
    state_table_t t;
    mem_hist_t *hist; /* oldest first */
    size_t nhist, hcap;
} mem_table_t;

typedef struct mem_schema_s {
    wr_lsn_t lsn;
    wr_schema_t *schema; /* owned */
} mem_schema_t;

typedef struct mem_mapping_s {
    uint32_t relid;
    char *dest_name; /* owned */
} mem_mapping_t;

typedef struct mem_plan_s {
    uint32_t relid;
    wr_lsn_t lsn;
    state_copy_range_t *ranges; /* owned */
    size_t n;
} mem_plan_t;

typedef struct mem_store_s {
    state_store_t base; /* first: the public handle */
    bool has_progress;
    state_progress_t progress;
    mem_table_t *tables; /* sorted by relid */
    size_t ntables, tcap;
    mem_schema_t *schemas;
    size_t nschemas, scap;
    mem_mapping_t *maps;
    size_t nmaps, mcap;
    mem_plan_t *plans; /* (issue 11) copy plans, one per table that has one */
    size_t nplans, pcap;
    struct {
        char name[64];
        int64_t value;
    } flags[16]; /* pipeline flags; more names than this is a bug in a test */
    size_t nflags;
} mem_store_t;

/* Makes room for one more element in *arr (capacity *cap); false on OOM. */
static bool
mem_grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    void *p;
    size_t ncap;
    if (n < *cap)
        return true;
    ncap = *cap ? *cap * 2 : 8;
    p = realloc(*arr, ncap * elem);
    if (!p)
        return false;
    *arr = p;
    *cap = ncap;
    return true;
}

/* Index of relid in the sorted table array, or where it would go (*found false). */
static size_t
mem_find(mem_store_t *s, uint32_t relid, bool *found)
{
    size_t lo = 0, hi = s->ntables;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->tables[mid].t.relid < relid)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < s->ntables && s->tables[lo].t.relid == relid;
    return lo;
}

static mem_table_t *
mem_table(mem_store_t *s, uint32_t relid)
{
    bool found;
    size_t i = mem_find(s, relid, &found);
    return found ? &s->tables[i] : NULL;
}

static int
mem_get_progress(state_store_t *base, state_progress_t *out, bool *found, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    WR_UNUSED(err);
    memset(out, 0, sizeof(*out));
    *found = s->has_progress;
    if (s->has_progress)
        *out = s->progress;
    return 0;
}

static int
mem_set_progress(state_store_t *base, const state_progress_t *p, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    int rc = state_check_progress(p, err);
    if (rc)
        return rc;
    s->progress = *p;
    s->has_progress = true;
    return 0;
}

static int
mem_add_table(state_store_t *base, uint32_t relid, const char *nsp, const char *name, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    mem_table_t *t;
    bool found;
    size_t i;
    int rc = state_check_table_names(relid, nsp, name, err);
    if (rc)
        return rc;
    i = mem_find(s, relid, &found);
    if (found)
        return 0;
    if (!mem_grow((void **)&s->tables, &s->tcap, s->ntables, sizeof(*s->tables)))
        return wr_err_set(err, WR_ENOMEM, "out of memory adding table %u", relid);
    memmove(&s->tables[i + 1], &s->tables[i], (s->ntables - i) * sizeof(*s->tables));
    s->ntables++;
    t = &s->tables[i];
    memset(t, 0, sizeof(*t));
    t->t.relid = relid;
    wr_copy_text(t->t.nsp, sizeof(t->t.nsp), nsp);
    wr_copy_text(t->t.name, sizeof(t->t.name), name);
    t->t.phase = PH_INIT;
    t->t.updated_at_ms = wr_wall_ms();
    return 0;
}

static int mem_put_mapping(state_store_t *base, uint32_t relid, const char *dest_name,
                           wr_err_t *err);

/* The checks first, then one call after another: an allocation failure half-way leaves the
 * first tables added (the memory store serves the unit tests, where none fails). */
static int
mem_add_tables(state_store_t *base, const state_new_table_t *t, size_t n, wr_err_t *err)
{
    int rc;
    for (size_t i = 0; i < n; i++) {
        if ((rc = state_check_table_names(t[i].relid, t[i].nsp, t[i].name, err)) ||
            (rc = state_check_mapping(t[i].relid, t[i].dest_name, err)))
            return rc;
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = mem_add_table(base, t[i].relid, t[i].nsp, t[i].name, err)) ||
            (rc = mem_put_mapping(base, t[i].relid, t[i].dest_name, err)))
            return rc;
    }
    return 0;
}

static int
mem_remove_table(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    bool found;
    size_t i = mem_find(s, relid, &found), j, k;
    WR_UNUSED(err);
    if (found) {
        free(s->tables[i].hist);
        memmove(&s->tables[i], &s->tables[i + 1], (s->ntables - i - 1) * sizeof(*s->tables));
        s->ntables--;
    }
    for (j = 0, k = 0; j < s->nschemas; j++) {
        if (s->schemas[j].schema->relid == relid)
            wr_schema_free(s->schemas[j].schema);
        else
            s->schemas[k++] = s->schemas[j];
    }
    s->nschemas = k;
    for (j = 0, k = 0; j < s->nmaps; j++) {
        if (s->maps[j].relid == relid)
            free(s->maps[j].dest_name);
        else
            s->maps[k++] = s->maps[j];
    }
    s->nmaps = k;
    for (j = 0, k = 0; j < s->nplans; j++) {
        if (s->plans[j].relid == relid)
            free(s->plans[j].ranges);
        else
            s->plans[k++] = s->plans[j];
    }
    s->nplans = k;
    return 0;
}

static int
mem_get_table(state_store_t *base, uint32_t relid, state_table_t *out, bool *found, wr_err_t *err)
{
    mem_table_t *t = mem_table((mem_store_t *)base, relid);
    WR_UNUSED(err);
    memset(out, 0, sizeof(*out));
    *found = t != NULL;
    if (t)
        *out = t->t;
    return 0;
}

static int
mem_list_tables(state_store_t *base, state_table_t **out, size_t *n, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    size_t i;
    *out = NULL;
    *n = 0;
    if (s->ntables == 0)
        return 0;
    *out = malloc(s->ntables * sizeof(**out));
    if (!*out)
        return wr_err_set(err, WR_ENOMEM, "out of memory listing tables");
    for (i = 0; i < s->ntables; i++)
        (*out)[i] = s->tables[i].t;
    *n = s->ntables;
    return 0;
}

static int
mem_set_phase(state_store_t *base, uint32_t relid, wr_phase_t phase, wr_lsn_t lsn,
              const char *err_kind, const char *err_msg, const char *err_hint, wr_err_t *err)
{
    mem_table_t *t = mem_table((mem_store_t *)base, relid);
    mem_hist_t *h;
    int rc = state_check_phase(relid, phase, err);
    if (rc)
        return rc;
    if (!t)
        return state_err_no_table(err, "setting phase", relid);
    if (!mem_grow((void **)&t->hist, &t->hcap, t->nhist, sizeof(*t->hist)))
        return wr_err_set(err, WR_ENOMEM, "out of memory setting phase of table %u", relid);
    h = &t->hist[t->nhist++];
    h->phase = t->t.phase;
    h->lsn = t->t.lsn;
    memcpy(h->err_kind, t->t.err_kind, sizeof(h->err_kind));
    memcpy(h->err_msg, t->t.err_msg, sizeof(h->err_msg));
    memcpy(h->err_hint, t->t.err_hint, sizeof(h->err_hint));
    t->t.phase = phase;
    t->t.lsn = lsn;
    state_cut_errors(&t->t, phase, err_kind, err_msg, err_hint);
    t->t.updated_at_ms = wr_wall_ms();
    return 0;
}

static int
mem_set_attempts(state_store_t *base, uint32_t relid, uint32_t attempts, wr_err_t *err)
{
    mem_table_t *t = mem_table((mem_store_t *)base, relid);
    if (!t)
        return state_err_no_table(err, "setting attempts", relid);
    t->t.attempts = attempts;
    t->t.updated_at_ms = wr_wall_ms();
    return 0;
}

static int
mem_rollback_phase(state_store_t *base, uint32_t relid, wr_err_t *err)
{
    mem_table_t *t = mem_table((mem_store_t *)base, relid);
    const mem_hist_t *h;
    if (!t || t->nhist == 0)
        return state_err_no_history(err, relid);
    h = &t->hist[--t->nhist];
    t->t.phase = h->phase;
    t->t.lsn = h->lsn;
    memcpy(t->t.err_kind, h->err_kind, sizeof(h->err_kind));
    memcpy(t->t.err_msg, h->err_msg, sizeof(h->err_msg));
    memcpy(t->t.err_hint, h->err_hint, sizeof(h->err_hint));
    t->t.updated_at_ms = wr_wall_ms();
    return 0;
}

static int
mem_prev_phase(state_store_t *base, uint32_t relid, wr_phase_t *phase, wr_lsn_t *lsn, bool *found,
               wr_err_t *err)
{
    mem_table_t *t = mem_table((mem_store_t *)base, relid);
    WR_UNUSED(err);
    *found = t && t->nhist > 0;
    *phase = *found ? t->hist[t->nhist - 1].phase : PH_INIT;
    *lsn = *found ? t->hist[t->nhist - 1].lsn : 0;
    return 0;
}

static int
mem_history_len(state_store_t *base, uint32_t relid, size_t *n, wr_err_t *err)
{
    mem_table_t *t = mem_table((mem_store_t *)base, relid);
    WR_UNUSED(err);
    *n = t ? t->nhist : 0;
    return 0;
}

static int
mem_put_schema(state_store_t *base, const wr_schema_t *schema, wr_lsn_t lsn, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    wr_schema_t *copy;
    size_t i;
    int rc = state_check_schema(schema, err);
    if (rc)
        return rc;
    copy = wr_schema_copy(schema);
    if (!copy)
        return wr_err_set(err, WR_ENOMEM, "out of memory saving the schema of table %u",
                          schema->relid);
    for (i = 0; i < s->nschemas; i++) {
        if (s->schemas[i].schema->relid == schema->relid && s->schemas[i].lsn == lsn) {
            wr_schema_free(s->schemas[i].schema);
            s->schemas[i].schema = copy;
            return 0;
        }
    }
    if (!mem_grow((void **)&s->schemas, &s->scap, s->nschemas, sizeof(*s->schemas))) {
        wr_schema_free(copy);
        return wr_err_set(err, WR_ENOMEM, "out of memory saving the schema of table %u",
                          schema->relid);
    }
    s->schemas[s->nschemas].lsn = lsn;
    s->schemas[s->nschemas].schema = copy;
    s->nschemas++;
    return 0;
}

static int
mem_get_schema(state_store_t *base, uint32_t relid, wr_lsn_t at, wr_schema_t **out,
               wr_lsn_t *version_lsn, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    const mem_schema_t *best = NULL;
    size_t i;
    *out = NULL;
    if (version_lsn)
        *version_lsn = 0;
    for (i = 0; i < s->nschemas; i++) {
        const mem_schema_t *v = &s->schemas[i];
        if (v->schema->relid == relid && v->lsn <= at && (!best || v->lsn > best->lsn))
            best = v;
    }
    if (!best)
        return 0;
    *out = wr_schema_copy(best->schema);
    if (!*out)
        return wr_err_set(err, WR_ENOMEM, "out of memory reading the schema of table %u", relid);
    if (version_lsn)
        *version_lsn = best->lsn;
    return 0;
}

static int
mem_put_mapping(state_store_t *base, uint32_t relid, const char *dest_name, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    char *copy;
    size_t i;
    int rc = state_check_mapping(relid, dest_name, err);
    if (rc)
        return rc;
    copy = wr_strdup(dest_name);
    if (!copy)
        return wr_err_set(err, WR_ENOMEM, "out of memory saving the mapping of table %u", relid);
    for (i = 0; i < s->nmaps; i++) {
        if (s->maps[i].relid == relid) {
            free(s->maps[i].dest_name);
            s->maps[i].dest_name = copy;
            return 0;
        }
    }
    if (!mem_grow((void **)&s->maps, &s->mcap, s->nmaps, sizeof(*s->maps))) {
        free(copy);
        return wr_err_set(err, WR_ENOMEM, "out of memory saving the mapping of table %u", relid);
    }
    s->maps[s->nmaps].relid = relid;
    s->maps[s->nmaps].dest_name = copy;
    s->nmaps++;
    return 0;
}

static int
mem_get_mapping(state_store_t *base, uint32_t relid, char *buf, size_t len, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    size_t i;
    int rc = state_check_mapping_buffer(relid, buf, len, err);
    if (rc)
        return rc;
    for (i = 0; i < s->nmaps; i++)
        if (s->maps[i].relid == relid)
            return state_copy_mapping(relid, s->maps[i].dest_name, buf, len, err);
    return 0;
}

static void
mem_close(state_store_t *base)
{
    mem_store_t *s = (mem_store_t *)base;
    size_t i;
    if (!s)
        return;
    for (i = 0; i < s->ntables; i++)
        free(s->tables[i].hist);
    free(s->tables);
    for (i = 0; i < s->nschemas; i++)
        wr_schema_free(s->schemas[i].schema);
    free(s->schemas);
    for (i = 0; i < s->nmaps; i++)
        free(s->maps[i].dest_name);
    free(s->maps);
    for (i = 0; i < s->nplans; i++)
        free(s->plans[i].ranges);
    free(s->plans);
    free(s);
}

static mem_plan_t *
mem_plan_find(mem_store_t *s, uint32_t relid)
{
    for (size_t i = 0; i < s->nplans; i++)
        if (s->plans[i].relid == relid)
            return &s->plans[i];
    return NULL;
}

static int
mem_put_copy_plan(state_store_t *base, uint32_t relid, wr_lsn_t lsn, const state_copy_range_t *r,
                  size_t n, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    mem_plan_t *p;
    state_copy_range_t *copy = NULL;
    int rc;
    if ((rc = state_check_copy_plan(relid, r, n, err)))
        return rc;
    if (n > 0) {
        if (!(copy = malloc(n * sizeof(*copy))))
            return wr_err_set(err, WR_ENOMEM, "out of memory saving a copy plan");
        memcpy(copy, r, n * sizeof(*copy));
    }
    if (!(p = mem_plan_find(s, relid))) {
        if (n == 0)
            return 0;
        if (!mem_grow((void **)&s->plans, &s->pcap, s->nplans, sizeof(*s->plans))) {
            free(copy);
            return wr_err_set(err, WR_ENOMEM, "out of memory saving a copy plan");
        }
        p = &s->plans[s->nplans++];
        p->relid = relid;
        p->ranges = NULL;
    }
    free(p->ranges);
    p->ranges = copy;
    p->n = n;
    p->lsn = lsn;
    if (n == 0)
        *p = s->plans[--s->nplans]; /* removed: the last one takes its place */
    return 0;
}

static int
mem_copy_range_done(state_store_t *base, uint32_t relid, uint32_t part, uint64_t rows,
                    wr_err_t *err)
{
    mem_plan_t *p = mem_plan_find((mem_store_t *)base, relid);
    if (!p || part >= p->n)
        return state_err_no_range(err, relid, part);
    p->ranges[part].done = true;
    p->ranges[part].rows = rows;
    return 0;
}

static int
mem_get_copy_plan(state_store_t *base, uint32_t relid, wr_lsn_t *lsn, state_copy_range_t **out,
                  size_t *n, wr_err_t *err)
{
    mem_plan_t *p = mem_plan_find((mem_store_t *)base, relid);
    *out = NULL;
    *n = 0;
    *lsn = 0;
    if (!p)
        return 0;
    if (!(*out = malloc(p->n * sizeof(**out))))
        return wr_err_set(err, WR_ENOMEM, "out of memory reading a copy plan");
    memcpy(*out, p->ranges, p->n * sizeof(**out));
    *n = p->n;
    *lsn = p->lsn;
    return 0;
}

static int
mem_get_flag(state_store_t *base, const char *name, int64_t *value, bool *found, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    int rc;
    *value = 0;
    *found = false;
    if ((rc = state_check_flag_name(name, err)))
        return rc;
    for (size_t i = 0; i < s->nflags; i++) {
        if (strcmp(s->flags[i].name, name) == 0) {
            *value = s->flags[i].value;
            *found = true;
            break;
        }
    }
    return 0;
}

static int
mem_set_flag(state_store_t *base, const char *name, int64_t value, wr_err_t *err)
{
    mem_store_t *s = (mem_store_t *)base;
    size_t i;
    int rc = state_check_flag_name(name, err);
    if (rc)
        return rc;
    for (i = 0; i < s->nflags; i++)
        if (strcmp(s->flags[i].name, name) == 0)
            break;
    if (i == s->nflags) {
        if (s->nflags == sizeof(s->flags) / sizeof(s->flags[0]))
            return wr_err_set(err, WR_ENOMEM, "too many pipeline flags");
        snprintf(s->flags[i].name, sizeof(s->flags[i].name), "%s", name);
        s->nflags++;
    }
    s->flags[i].value = value;
    return 0;
}

static const state_ops_t mem_ops = {
    .get_progress = mem_get_progress,
    .set_progress = mem_set_progress,
    .add_table = mem_add_table,
    .remove_table = mem_remove_table,
    .get_table = mem_get_table,
    .list_tables = mem_list_tables,
    .set_phase = mem_set_phase,
    .set_attempts = mem_set_attempts,
    .rollback_phase = mem_rollback_phase,
    .history_len = mem_history_len,
    .prev_phase = mem_prev_phase,
    .put_schema = mem_put_schema,
    .get_schema = mem_get_schema,
    .put_mapping = mem_put_mapping,
    .get_mapping = mem_get_mapping,
    .close = mem_close,
    .get_flag = mem_get_flag,
    .set_flag = mem_set_flag,
    .add_tables = mem_add_tables,
    .put_copy_plan = mem_put_copy_plan,
    .copy_range_done = mem_copy_range_done,
    .get_copy_plan = mem_get_copy_plan,
};

int
state_open_memory(state_store_t **out, wr_err_t *err)
{
    mem_store_t *s = calloc(1, sizeof(*s));
    *out = NULL;
    if (!s)
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the state store");
    s->base.ops = &mem_ops;
    *out = &s->base;
    return 0;
}
