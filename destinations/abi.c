/*
 * abi.c - the in-tree destination interface (dest_ops_t) over any destination of the
 * public ABI (wr_dest_ops_t, walrelay/destination.h), the loader of plugin libraries and
 * the registry entry of type = plugin.
 *
 * NOTES: runs in the supervisor (init, check, run, reload: load + validate, check:
 * open("check") + check()) and in both workers (open: one instance per process).
 * Persists nothing itself. Conversions:
 *   - schemas -> relations (dest_name from dest_schema_table_name, type names from the schema or
 *     pgt_format_type), one RELATION event before the first change of each table in this
 *     instance and after every change of its schema; without WR_DEST_CAP_SCHEMA_CHANGES a
 *     changed column list is WR_EUNSUPPORTED for that table (the apply worker errors it);
 *   - events are deep-copied into a reused arena and handed to write_events in batches
 *     (DEST_ABI_BATCH_EVENTS events or DEST_ABI_BATCH_BYTES bytes, and at every commit);
 *     copied rows go to write_table_rows without a copy (wr_val_t and wr_dest_value_t have
 *     the same layout, asserted below);
 *   - commit -> the pending events, then flush(stream, key); rollback -> discard() (or, if
 *     the destination cannot, a warning: what it was given stays, at least once);
 *   - WR_DEST_E* -> WR_E*. A table-specific code (DATA, UNSUPPORTED) of a batch that holds
 *     changes of other tables than the one being written cannot be pinned on one table:
 *     it becomes WR_EDEST (the worker restarts and delivers again).
 * The host's log callback goes to walrelay's logger, one line, conninfo-style passwords
 * redacted.
 */
#include "abi.h"

#include "../common/log.h"
#include "../common/pgtype.h"
#include "../common/plugin.h"
#include "registry.h"

#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows pass to write_table_rows without a copy: the layouts must be the same. */
_Static_assert(sizeof(wr_val_t) == sizeof(wr_dest_value_t), "wr_val_t layout");
_Static_assert(offsetof(wr_val_t, kind) == offsetof(wr_dest_value_t, kind), "wr_val_t.kind");
_Static_assert(offsetof(wr_val_t, len) == offsetof(wr_dest_value_t, len), "wr_val_t.len");
_Static_assert(offsetof(wr_val_t, data) == offsetof(wr_dest_value_t, data), "wr_val_t.data");
_Static_assert(sizeof(wr_row_t) == sizeof(wr_dest_row_t), "wr_row_t layout");
_Static_assert(offsetof(wr_row_t, ncols) == offsetof(wr_dest_row_t, ncols), "wr_row_t.ncols");
_Static_assert(offsetof(wr_row_t, vals) == offsetof(wr_dest_row_t, values), "wr_row_t.vals");
_Static_assert((int)WR_VAL_NULL == (int)WR_DEST_VAL_NULL &&
                   (int)WR_VAL_TEXT == (int)WR_DEST_VAL_TEXT &&
                   (int)WR_VAL_UNCHANGED == (int)WR_DEST_VAL_UNCHANGED,
               "value kinds");

/* ---- errors --------------------------------------------------------------------------- */

int
dest_abi_code(int code)
{
    switch (code) {
    case WR_DEST_OK:
        return 0;
    case WR_DEST_ECONFIG:
        return WR_ECONFIG;
    case WR_DEST_ETRANSIENT:
        return WR_ECONN;
    case WR_DEST_EIO:
        return WR_EDEST;
    case WR_DEST_EDATA:
        return WR_EDATA;
    case WR_DEST_EUNSUPPORTED:
        return WR_EUNSUPPORTED;
    case WR_DEST_ENOMEM:
        return WR_ENOMEM;
    default:
        return WR_EDEST;
    }
}

int
dest_abi_error(const wr_config_t *cfg, const char *name, const wr_dest_error_t *de, int code,
               wr_err_t *err)
{
    int wc = dest_abi_code(code < 0 ? code : WR_DEST_EIO);
    char msg[1024];

    wr_copy_text(msg, sizeof(msg), de->message[0] ? de->message : "failed (no message)");
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    if (cfg != NULL && wc == WR_ECONFIG && de->key[0] != '\0')
        dest_config_error(cfg, de->key, WR_ECONFIG, err, "%s", msg);
    else if (cfg != NULL && wc == WR_ECONFIG)
        dest_config_error(cfg, NULL, WR_ECONFIG, err, "destination %s: %s", name, msg);
    else
        wr_err_set(err, wc, "destination %s: %s", name, msg);
    if (de->hint[0] != '\0')
        wr_err_hint(err, "%s", de->hint);
    return wc;
}

/* ---- loading -------------------------------------------------------------------------- */

static const void *
abi_call_entry(void *sym)
{
    wr_dest_entry_fn entry;

    memcpy(&entry, &sym, sizeof(entry));
    return entry();
}

static const wr_plugin_kind_t abi_kind = {
    .what = "destination",
    .header = "walrelay/destination.h",
    .symbol = WR_DEST_ENTRY_SYMBOL,
    .ops_type = "wr_dest_ops_t",
    .abi_version = WR_DEST_ABI_VERSION,
    .ops_size = sizeof(wr_dest_ops_t),
    .call_entry = abi_call_entry,
};

int
dest_abi_check_ops(const wr_dest_ops_t *ops, const char *what, wr_err_t *err)
{
    const char *missing = NULL;

    if (wr_plugin_check_version(&abi_kind, what, ops->abi_version, ops->struct_size, err) != 0)
        return WR_ECONFIG;
    if (ops->validate == NULL)
        missing = "validate";
    else if (ops->open == NULL)
        missing = "open";
    else if (ops->truncate_table == NULL)
        missing = "truncate_table";
    else if (ops->write_table_rows == NULL)
        missing = "write_table_rows";
    else if (ops->write_events == NULL)
        missing = "write_events";
    else if (ops->flush == NULL)
        missing = "flush";
    else if (ops->close == NULL)
        missing = "close";
    else if ((ops->capabilities & WR_DEST_CAP_TRANSACTIONAL) && ops->last_key == NULL)
        missing = "last_key (required with WR_DEST_CAP_TRANSACTIONAL)";
    else if ((ops->capabilities & WR_DEST_CAP_DISCARD) && ops->discard == NULL)
        missing = "discard (required with WR_DEST_CAP_DISCARD)";
    if (missing != NULL) {
        wr_err_set(err, WR_ECONFIG, "%s: its operations table has no %s function", what, missing);
        wr_err_hint(err, "set it in the wr_dest_ops_t that walrelay_destination_v1() returns");
        return WR_ECONFIG;
    }
    if (ops->name == NULL || ops->name[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "%s: its operations table has no name", what);
        wr_err_hint(err, "set .name in the wr_dest_ops_t (a short name for logs)");
        return WR_ECONFIG;
    }
    return 0;
}

int
dest_plugin_load(const wr_config_t *cfg, dest_plugin_t *pl, wr_err_t *err)
{
    const void *ops;
    char what[600];
    wr_err_t e2;
    int rc;

    memset(pl, 0, sizeof(*pl));
    if ((rc = dest_config_path(cfg, "library", &pl->path, err)) < 0)
        return rc;
    wr_err_clear(&e2);
    /* loaded, entry found, version and size right: then the functions it must have */
    if (wr_plugin_load(pl->path, &abi_kind, &pl->handle, &ops, &e2) == 0) {
        pl->ops = ops;
        snprintf(what, sizeof(what), "\"%s\"", pl->path);
        if (dest_abi_check_ops(pl->ops, what, &e2) == 0)
            return 0;
    }
    dest_config_error(cfg, "library", WR_ECONFIG, err, "%s", e2.msg);
    wr_err_hint(err, "%s", e2.hint);
    dest_plugin_unload(pl);
    return WR_ECONFIG;
}

void
dest_plugin_unload(dest_plugin_t *pl)
{
    wr_plugin_unload(pl->handle);
    free(pl->path);
    memset(pl, 0, sizeof(*pl));
}

/* ---- configuration -------------------------------------------------------------------- */

/* The ABI's view of cfg: every [destination] item but library. *kv is malloc'd. */
static int
abi_config(const wr_config_t *cfg, wr_dest_config_t *out, wr_dest_kv_t **kv, wr_err_t *err)
{
    size_t n = 0;

    *kv = calloc(cfg->dest_nitems ? cfg->dest_nitems : 1, sizeof(**kv));
    if (*kv == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    for (size_t i = 0; i < cfg->dest_nitems; i++) {
        if (strcmp(cfg->dest_items[i].key, "library") == 0)
            continue;
        (*kv)[n].key = cfg->dest_items[i].key;
        (*kv)[n].value = cfg->dest_items[i].value;
        (*kv)[n].line = cfg->dest_items[i].line;
        n++;
    }
    out->path = cfg->path ? cfg->path : "walrelay.conf";
    out->dir = cfg->dir ? cfg->dir : ".";
    out->pipeline = cfg->pipeline_name ? cfg->pipeline_name : "";
    out->nitems = n;
    out->items = *kv;
    return 0;
}

int
dest_abi_validate(const wr_dest_ops_t *ops, const wr_config_t *cfg, wr_err_t *err)
{
    wr_dest_config_t dc;
    wr_dest_kv_t *kv;
    wr_dest_error_t de;
    int rc;

    if ((rc = abi_config(cfg, &dc, &kv, err)) < 0)
        return rc;
    memset(&de, 0, sizeof(de));
    rc = ops->validate(&dc, &de);
    free(kv);
    if (rc != WR_DEST_OK)
        return dest_abi_error(cfg, ops->name, &de, rc, err);
    return 0;
}

/* ---- the host ------------------------------------------------------------------------- */

static void
abi_host_log(void *ctx, int level, const char *message)
{
    const char *name = ctx;
    char line[1024], red[1024];
    int lvl = level <= WR_DEST_LOG_DEBUG  ? LOG_LVL_DEBUG
              : level == WR_DEST_LOG_INFO ? LOG_LVL_INFO
              : level == WR_DEST_LOG_WARN ? LOG_LVL_WARN
                                          : LOG_LVL_ERROR;

    wr_copy_text(line, sizeof(line), message);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    log_redact_conninfo(line, red, sizeof(red));
    log_msg(lvl, "%s destination=%s", red, name ? name : "?");
}

/* The worker's hooks (dest_set_host_hooks) behind the host's waiting and interrupted, and
 * behind dest_host_waiting / dest_host_interrupted for an in-tree destination. */
static dest_host_hooks_t abi_hooks;
static char abi_wait_logged[512]; /* the last wait message logged (one line per change) */

void
dest_set_host_hooks(const dest_host_hooks_t *hooks)
{
    if (hooks != NULL)
        abi_hooks = *hooks;
    else
        memset(&abi_hooks, 0, sizeof(abi_hooks));
}

void
dest_host_waiting(const char *name, const char *message)
{
    char line[512], red[512];

    if (message == NULL || message[0] == '\0') {
        if (abi_wait_logged[0] != '\0')
            log_info("destination no longer waiting destination=%s", name ? name : "?");
        abi_wait_logged[0] = '\0';
        if (abi_hooks.waiting)
            abi_hooks.waiting(abi_hooks.arg, NULL);
        return;
    }
    wr_copy_text(line, sizeof(line), message);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    log_redact_conninfo(line, red, sizeof(red));
    if (strcmp(red, abi_wait_logged) != 0) {
        log_warn("destination waiting destination=%s message=\"%s\"", name ? name : "?", red);
        snprintf(abi_wait_logged, sizeof(abi_wait_logged), "%s", red);
    }
    if (abi_hooks.waiting)
        abi_hooks.waiting(abi_hooks.arg, red);
}

bool
dest_host_interrupted(void)
{
    return abi_hooks.interrupted != NULL && abi_hooks.interrupted(abi_hooks.arg);
}

bool
dest_host_hooked(void)
{
    return abi_hooks.interrupted != NULL;
}

static void
abi_host_waiting(void *ctx, const char *message)
{
    dest_host_waiting(ctx, message);
}

static bool
abi_host_interrupted(void *ctx)
{
    WR_UNUSED(ctx);
    return dest_host_interrupted();
}

/* ---- the adapter ---------------------------------------------------------------------- */

typedef struct abi_rel_s {
    uint32_t relid;
    wr_schema_t *schema;
    char dest_name[256];
    wr_dest_column_t *cols;
    char (*names)[128];
    wr_dest_relation_t rel;
    bool announced; /* RELATION event given in this instance for this schema */
} abi_rel_t;

typedef struct abi_block_s {
    struct abi_block_s *next;
    size_t used, cap;
    alignas(max_align_t) char data[];
} abi_block_t;

typedef struct dest_abi_s {
    dest_t base;
    dest_ops_t ops; /* dest_abi_ops with this destination's name */
    const wr_dest_ops_t *w;
    void *state;
    bool opened;
    dest_plugin_t plugin;
    wr_dest_host_t host;
    char name[64];
    char role[16];
    abi_rel_t **rels;
    size_t nrels, relcap;
    wr_dest_event_t *evs;
    size_t nev, evcap;
    abi_block_t *arena; /* first block is kept between batches */
    size_t arena_bytes;
    uint32_t batch_relid; /* the one table whose changes are in the buffer, 0 = none */
    bool batch_multi;     /* changes of several tables are in the buffer */
} dest_abi_t;

static void
abi_arena_reset(dest_abi_t *d)
{
    abi_block_t *b = d->arena;

    if (b != NULL) {
        abi_block_t *n = b->next;
        while (n != NULL) {
            abi_block_t *x = n->next;
            free(n);
            n = x;
        }
        b->next = NULL;
        b->used = 0;
    }
    d->arena_bytes = 0;
    d->nev = 0;
    d->batch_relid = 0;
    d->batch_multi = false;
}

static void *
abi_alloc(dest_abi_t *d, size_t n)
{
    abi_block_t *b = d->arena;
    size_t need = (n + 15) & ~(size_t)15;

    /* the newest block is at the head */
    if (b == NULL || b->cap - b->used < need) {
        size_t cap = need > 256 * 1024 ? need : 256 * 1024;
        abi_block_t *nb = malloc(sizeof(*nb) + cap);
        if (nb == NULL)
            return NULL;
        nb->used = 0;
        nb->cap = cap;
        nb->next = b;
        d->arena = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += need;
    d->arena_bytes += need;
    return p;
}

static abi_rel_t *
abi_rel_find(dest_abi_t *d, uint32_t relid)
{
    for (size_t i = 0; i < d->nrels; i++)
        if (d->rels[i]->relid == relid)
            return d->rels[i];
    return NULL;
}

static void
abi_rel_clear(abi_rel_t *r)
{
    wr_schema_free(r->schema);
    free(r->cols);
    free(r->names);
    r->schema = NULL;
    r->cols = NULL;
    r->names = NULL;
}

void
dest_abi_relation(const wr_schema_t *s, const char *dest_name, wr_dest_column_t *cols,
                  char (*names)[128], wr_dest_relation_t *rel)
{
    bool any_key = wr_schema_nkeys(s) > 0;

    for (uint16_t i = 0; i < s->ncols; i++) {
        const wr_column_t *c = &s->cols[i];

        cols[i].name = c->name ? c->name : "";
        cols[i].type_oid = c->type_oid;
        cols[i].typmod = c->typmod;
        cols[i].not_null = c->not_null;
        /* REPLICA IDENTITY FULL without a key: rows are matched by every column */
        cols[i].key = any_key ? c->is_key : s->replident == 'f';
        if (c->type_name != NULL) {
            cols[i].type_name = c->type_name;
        } else {
            if (!pgt_format_type(c->type_oid, c->typmod, names[i], sizeof(names[i])))
                snprintf(names[i], sizeof(names[i]), "%u", (unsigned)c->type_oid);
            cols[i].type_name = names[i];
        }
    }
    rel->relid = s->relid;
    rel->schema = s->nsp ? s->nsp : "";
    rel->name = s->name ? s->name : "";
    rel->dest_name = dest_name;
    rel->replica_identity = s->replident ? s->replident : 'd';
    rel->ncolumns = s->ncols;
    rel->columns = cols;
}

/* (Re)fills r from schema s. */
static int
abi_rel_set(abi_rel_t *r, const wr_schema_t *s, wr_err_t *err)
{
    wr_schema_t *copy = wr_schema_copy(s);
    size_t n = s->ncols ? s->ncols : 1;
    wr_dest_column_t *cols = calloc(n, sizeof(*cols));
    char(*names)[128] = calloc(n, sizeof(*names));

    if (copy == NULL || cols == NULL || names == NULL) {
        wr_schema_free(copy);
        free(cols);
        free(names);
        return wr_err_set(err, WR_ENOMEM, "out of memory registering table \"%s\"", s->name);
    }
    abi_rel_clear(r);
    r->relid = s->relid;
    r->schema = copy;
    r->cols = cols;
    r->names = names;
    dest_schema_table_name(copy, r->dest_name, sizeof(r->dest_name));
    dest_abi_relation(copy, r->dest_name, cols, names, &r->rel);
    r->announced = false;
    return 0;
}

/* True if the column lists differ (names, types, typmods, number). */
static bool
abi_columns_differ(const wr_schema_t *a, const wr_schema_t *b)
{
    if (a->ncols != b->ncols)
        return true;
    for (uint16_t i = 0; i < a->ncols; i++)
        if (strcmp(a->cols[i].name, b->cols[i].name) != 0 ||
            a->cols[i].type_oid != b->cols[i].type_oid || a->cols[i].typmod != b->cols[i].typmod)
            return true;
    return false;
}

/* Hands the buffered events to write_events. cur_relid: the table being written when the
 * buffer filled up (0 at a commit, a copy or a schema change). */
static int
abi_write_pending(dest_abi_t *d, uint32_t cur_relid, wr_err_t *err)
{
    wr_dest_error_t de;
    size_t n = d->nev;
    uint32_t only = d->batch_multi ? 0 : d->batch_relid;
    wr_dest_event_t open_begin;
    bool reopen = false;
    int rc, wc;

    if (n == 0)
        return 0;
    memset(&de, 0, sizeof(de));
    rc = d->w->write_events(d->state, d->evs, n, &de);
    if (rc != WR_DEST_OK) {
        /* the BEGIN of a transaction still open at the end of the failed batch */
        for (size_t i = n; i-- > 0;) {
            if (d->evs[i].kind == WR_DEST_EV_COMMIT)
                break;
            if (d->evs[i].kind == WR_DEST_EV_BEGIN) {
                open_begin = d->evs[i];
                reopen = true;
                break;
            }
        }
    }
    abi_arena_reset(d);
    if (rc == WR_DEST_OK)
        return 0;
    wc = dest_abi_error(NULL, d->name, &de, rc, err);
    if ((wc == WR_EDATA || wc == WR_EUNSUPPORTED) && (cur_relid == 0 || only != cur_relid)) {
        /* the batch held other tables' changes too: it cannot be pinned on one table */
        wr_err_prefix(err,
                      "writing a batch of %zu events (several tables, so walrelay "
                      "delivers them again): ",
                      n);
        err->code = WR_EDEST;
        return WR_EDEST;
    }
    {
        /* its RELATION event may have been in the lost batch */
        abi_rel_t *r = abi_rel_find(d, cur_relid);
        if (r != NULL)
            r->announced = false;
    }
    if (reopen) {
        /* the worker errors the one table and goes on with the transaction: the other
         * tables' changes that follow still need its BEGIN (the buffer was just emptied) */
        d->evs[0] = open_begin;
        d->nev = 1;
    }
    return wc;
}

static wr_dest_event_t *
abi_event_slot(dest_abi_t *d, wr_err_t *err)
{
    if (d->nev == d->evcap) {
        size_t ncap = d->evcap ? d->evcap * 2 : 256;
        wr_dest_event_t *ne = realloc(d->evs, ncap * sizeof(*ne));
        if (ne == NULL) {
            wr_err_set(err, WR_ENOMEM, "out of memory buffering destination events");
            return NULL;
        }
        d->evs = ne;
        d->evcap = ncap;
    }
    memset(&d->evs[d->nev], 0, sizeof(d->evs[0]));
    return &d->evs[d->nev++];
}

/* A value kind the ABI does not carry. */
static int
abi_binary(const abi_rel_t *r, uint16_t col, wr_err_t *err)
{
    wr_err_set(err, WR_EPROTO,
               "column \"%s\" of \"%s.%s\" arrived in binary form, which the destination ABI "
               "does not carry",
               r->schema->cols[col].name, r->schema->nsp, r->schema->name);
    wr_err_hint(err, "walrelay uses pgoutput's text mode; report this as a bug");
    return WR_EPROTO;
}

/* Deep copy of a row into the arena. */
static int
abi_copy_row(dest_abi_t *d, const abi_rel_t *r, const wr_row_t *row, const wr_dest_row_t **out,
             wr_err_t *err)
{
    wr_dest_row_t *dr;
    wr_dest_value_t *vals;
    size_t bytes = 0;
    char *data;

    if (row->ncols != r->rel.ncolumns)
        return wr_err_set(err, WR_EPROTO, "a row of \"%s.%s\" has %u columns, its schema %u",
                          r->schema->nsp, r->schema->name, (unsigned)row->ncols,
                          (unsigned)r->rel.ncolumns);
    for (uint16_t i = 0; i < row->ncols; i++) {
        if (row->vals[i].kind == WR_VAL_BINARY)
            return abi_binary(r, i, err);
        if (row->vals[i].kind == WR_VAL_TEXT)
            bytes += row->vals[i].len;
    }
    dr = abi_alloc(d, sizeof(*dr) + (size_t)row->ncols * sizeof(*vals) + bytes);
    if (dr == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory buffering destination events");
    vals = (wr_dest_value_t *)(dr + 1);
    data = (char *)(vals + row->ncols);
    for (uint16_t i = 0; i < row->ncols; i++) {
        const wr_val_t *v = &row->vals[i];

        vals[i].kind = v->kind;
        vals[i].len = 0;
        vals[i].data = NULL;
        if (v->kind == WR_VAL_TEXT) {
            if (v->len > 0)
                memcpy(data, v->data, v->len);
            vals[i].data = data;
            vals[i].len = v->len;
            data += v->len;
        }
    }
    dr->ncols = row->ncols;
    dr->values = vals;
    *out = dr;
    return 0;
}

static int
abi_ensure_table(dest_t *base, const wr_schema_t *s, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    abi_rel_t *r = abi_rel_find(d, s->relid);
    char dn[256];
    int rc;

    if (s->name == NULL)
        return wr_err_set(err, WR_EINVAL, "ensure_table without a schema");
    dest_schema_table_name(s, dn, sizeof(dn));
    if (r != NULL && strcmp(r->dest_name, dn) == 0 && wr_schema_equal(r->schema, s))
        return 0;
    if (r != NULL && !(d->w->capabilities & WR_DEST_CAP_SCHEMA_CHANGES) &&
        (abi_columns_differ(r->schema, s) || strcmp(r->dest_name, dn) != 0)) {
        wr_err_set(err, WR_EUNSUPPORTED,
                   "destination %s does not follow schema changes, and the columns of table "
                   "\"%s.%s\" changed",
                   d->name, s->nsp, s->name);
        wr_err_hint(err,
                    "run walrelay resync DIR %s.%s to copy the table again with its new "
                    "columns",
                    s->nsp, s->name);
        /* forgotten (the buffered events that point at it are written first): the copy
         * after a resync registers the new schema */
        {
            wr_err_t werr;

            wr_err_clear(&werr);
            if ((rc = abi_write_pending(d, 0, &werr)) < 0) {
                *err = werr;
                return rc;
            }
        }
        for (size_t i = 0; i < d->nrels; i++) {
            if (d->rels[i] == r) {
                abi_rel_clear(r);
                free(r);
                d->rels[i] = d->rels[--d->nrels];
                break;
            }
        }
        return WR_EUNSUPPORTED;
    }
    /* the buffered events point at the old relation */
    if (r != NULL && (rc = abi_write_pending(d, 0, err)) < 0)
        return rc;
    if (r == NULL) {
        if (d->nrels == d->relcap) {
            size_t ncap = d->relcap ? d->relcap * 2 : 16;
            abi_rel_t **nr = realloc(d->rels, ncap * sizeof(*nr));
            if (nr == NULL)
                return wr_err_set(err, WR_ENOMEM, "out of memory registering a table");
            d->rels = nr;
            d->relcap = ncap;
        }
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return wr_err_set(err, WR_ENOMEM, "out of memory registering a table");
        d->rels[d->nrels++] = r;
    }
    return abi_rel_set(r, s, err);
}

static int
abi_begin(dest_t *base, wr_err_t *err)
{
    WR_UNUSED(base);
    WR_UNUSED(err);
    return 0;
}

static abi_rel_t *
abi_rel_need(dest_abi_t *d, uint32_t relid, wr_err_t *err)
{
    abi_rel_t *r = abi_rel_find(d, relid);

    if (r == NULL)
        wr_err_set(err, WR_EINVAL, "table with relid %u is not registered (ensure_table first)",
                   (unsigned)relid);
    return r;
}

static int
abi_truncate_table(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    abi_rel_t *r = abi_rel_need(d, relid, err);
    wr_dest_error_t de;
    int rc;

    if (r == NULL)
        return WR_EINVAL;
    if ((rc = abi_write_pending(d, 0, err)) < 0)
        return rc;
    memset(&de, 0, sizeof(de));
    rc = d->w->truncate_table(d->state, &r->rel, &de);
    return rc == WR_DEST_OK ? 0 : dest_abi_error(NULL, d->name, &de, rc, err);
}

static int
abi_write_rows(dest_t *base, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    abi_rel_t *r = abi_rel_need(d, relid, err);
    wr_dest_error_t de;
    int rc;

    if (r == NULL)
        return WR_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (rows[i].ncols != r->rel.ncolumns)
            return wr_err_set(err, WR_EPROTO,
                              "a copied row of \"%s.%s\" has %u columns, its "
                              "schema %u",
                              r->schema->nsp, r->schema->name, (unsigned)rows[i].ncols,
                              (unsigned)r->rel.ncolumns);
        for (uint16_t c = 0; c < rows[i].ncols; c++)
            if (rows[i].vals[c].kind == WR_VAL_BINARY)
                return abi_binary(r, c, err);
    }
    if ((rc = abi_write_pending(d, 0, err)) < 0)
        return rc;
    memset(&de, 0, sizeof(de));
    /* same layout (asserted above): no copy */
    rc = d->w->write_table_rows(d->state, &r->rel, (const wr_dest_row_t *)(const void *)rows, n,
                                &de);
    return rc == WR_DEST_OK ? 0 : dest_abi_error(NULL, d->name, &de, rc, err);
}

static int
abi_write_event(dest_t *base, const dest_event_t *ev, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    wr_dest_event_t *e;
    abi_rel_t *r = NULL;
    int rc;

    if (ev->kind != DEST_EV_BEGIN && ev->kind != DEST_EV_COMMIT) {
        if ((r = abi_rel_need(d, ev->relid, err)) == NULL)
            return WR_EINVAL;
        if (!r->announced) {
            if ((e = abi_event_slot(d, err)) == NULL)
                return WR_ENOMEM;
            e->kind = WR_DEST_EV_RELATION;
            e->key.commit_lsn = ev->key.commit_lsn;
            e->key.ordinal = ev->key.ordinal;
            e->xid = ev->xid;
            e->commit_time_us = ev->commit_ts;
            e->relation = &r->rel;
            r->announced = true;
        }
    }
    if ((e = abi_event_slot(d, err)) == NULL)
        return WR_ENOMEM;
    e->key.commit_lsn = ev->key.commit_lsn;
    e->key.ordinal = ev->key.ordinal;
    e->xid = ev->xid;
    e->commit_time_us = ev->commit_ts;
    rc = 0;
    switch (ev->kind) {
    case DEST_EV_BEGIN:
        e->kind = WR_DEST_EV_BEGIN;
        break;
    case DEST_EV_COMMIT:
        e->kind = WR_DEST_EV_COMMIT;
        e->end_lsn = ev->end_lsn;
        break;
    case DEST_EV_INSERT:
        e->kind = WR_DEST_EV_INSERT;
        e->relation = &r->rel;
        rc = ev->new_row ? abi_copy_row(d, r, ev->new_row, &e->new_row, err)
                         : wr_err_set(err, WR_EINVAL, "insert without a row");
        break;
    case DEST_EV_UPDATE:
        e->kind = WR_DEST_EV_UPDATE;
        e->relation = &r->rel;
        e->old_kind = ev->old_row ? ev->old_kind : 0;
        rc = ev->new_row ? abi_copy_row(d, r, ev->new_row, &e->new_row, err)
                         : wr_err_set(err, WR_EINVAL, "update without a new row");
        if (rc == 0 && ev->old_row)
            rc = abi_copy_row(d, r, ev->old_row, &e->old_row, err);
        break;
    case DEST_EV_DELETE:
        e->kind = WR_DEST_EV_DELETE;
        e->relation = &r->rel;
        e->old_kind = ev->old_kind;
        rc = ev->old_row ? abi_copy_row(d, r, ev->old_row, &e->old_row, err)
                         : wr_err_set(err, WR_EINVAL, "delete without an old row");
        break;
    case DEST_EV_TRUNCATE:
        e->kind = WR_DEST_EV_TRUNCATE;
        e->relation = &r->rel;
        e->truncate_flags = ev->truncate_flags;
        break;
    default:
        rc = wr_err_set(err, WR_EINVAL, "unknown event kind %d", (int)ev->kind);
    }
    if (rc < 0) {
        d->nev--; /* the slot is not handed over */
        return rc;
    }
    if (r != NULL) {
        if (d->batch_relid == 0)
            d->batch_relid = r->relid;
        else if (d->batch_relid != r->relid)
            d->batch_multi = true;
    }
    if (d->nev >= DEST_ABI_BATCH_EVENTS || d->arena_bytes >= DEST_ABI_BATCH_BYTES)
        return abi_write_pending(d, r ? r->relid : 0, err);
    return 0;
}

static int
abi_commit(dest_t *base, const char *stream, const dest_key_t *key, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    wr_dest_error_t de;
    wr_dest_key_t k;
    int rc;

    if ((rc = abi_write_pending(d, 0, err)) < 0)
        return rc;
    if (key != NULL) {
        k.commit_lsn = key->commit_lsn;
        k.ordinal = key->ordinal;
    }
    memset(&de, 0, sizeof(de));
    rc = d->w->flush(d->state, stream, key ? &k : NULL, &de);
    return rc == WR_DEST_OK ? 0 : dest_abi_error(NULL, d->name, &de, rc, err);
}

static int
abi_rollback(dest_t *base, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    wr_dest_error_t de;
    size_t dropped = d->nev;
    int rc;

    abi_arena_reset(d);
    /* what a transactional destination rolls back may include its RELATION events */
    for (size_t i = 0; i < d->nrels; i++)
        d->rels[i]->announced = false;
    if (d->w->capabilities & WR_DEST_CAP_DISCARD) {
        memset(&de, 0, sizeof(de));
        rc = d->w->discard(d->state, &de);
        return rc == WR_DEST_OK ? 0 : dest_abi_error(NULL, d->name, &de, rc, err);
    }
    log_warn("destination cannot roll back: what it was given since its last flush stays, "
             "walrelay delivers it again (at least once) destination=%s dropped_events=%zu",
             d->name, dropped);
    return 0;
}

static int
abi_last_key(dest_t *base, const char *stream, dest_key_t *out, bool *found, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    wr_dest_error_t de;
    wr_dest_key_t k = {0, 0};
    int rc;

    out->commit_lsn = 0;
    out->ordinal = 0;
    *found = false;
    if (!(d->w->capabilities & WR_DEST_CAP_TRANSACTIONAL))
        return 0;
    memset(&de, 0, sizeof(de));
    rc = d->w->last_key(d->state, stream, &k, found, &de);
    if (rc != WR_DEST_OK) {
        *found = false;
        return dest_abi_error(NULL, d->name, &de, rc, err);
    }
    if (*found) {
        out->commit_lsn = k.commit_lsn;
        out->ordinal = k.ordinal;
    }
    return 0;
}

static int
abi_clear_key(dest_t *base, const char *stream, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    wr_dest_error_t de;
    int rc;

    if (d->w->forget_stream == NULL)
        return 0;
    memset(&de, 0, sizeof(de));
    rc = d->w->forget_stream(d->state, stream, &de);
    return rc == WR_DEST_OK ? 0 : dest_abi_error(NULL, d->name, &de, rc, err);
}

static int64_t
abi_count_rows(dest_t *base, uint32_t relid)
{
    WR_UNUSED(base);
    WR_UNUSED(relid);
    return -1;
}

static void
abi_close(dest_t *base)
{
    dest_abi_t *d = (dest_abi_t *)base;

    if (d == NULL)
        return;
    if (d->opened)
        d->w->close(d->state);
    abi_arena_reset(d);
    free(d->arena);
    free(d->evs);
    for (size_t i = 0; i < d->nrels; i++) {
        abi_rel_clear(d->rels[i]);
        free(d->rels[i]);
    }
    free(d->rels);
    dest_plugin_unload(&d->plugin);
    free(d);
}

/* Drops the table's relation: the next change announces a RELATION again (the table
 * was copied again elsewhere, maybe with another key). Buffered events that point at it
 * are written first. */
static int
abi_forget_table(dest_t *base, uint32_t relid, wr_err_t *err)
{
    dest_abi_t *d = (dest_abi_t *)base;
    abi_rel_t *r = abi_rel_find(d, relid);
    int rc;

    if (r == NULL)
        return 0;
    if ((rc = abi_write_pending(d, 0, err)) < 0)
        return rc;
    for (size_t i = 0; i < d->nrels; i++) {
        if (d->rels[i] == r) {
            abi_rel_clear(r);
            free(r);
            d->rels[i] = d->rels[--d->nrels];
            break;
        }
    }
    return 0;
}

static const dest_ops_t dest_abi_ops = {
    .name = "abi",
    .open = NULL, /* opened through the registry (dest_abi_open) */
    .ensure_table = abi_ensure_table,
    .begin = abi_begin,
    .truncate_table = abi_truncate_table,
    .write_rows = abi_write_rows,
    .write_event = abi_write_event,
    .commit = abi_commit,
    .rollback = abi_rollback,
    .last_key = abi_last_key,
    .clear_key = abi_clear_key,
    .count_rows = abi_count_rows,
    .close = abi_close,
    /* no schema versions: the workers skip what is NULL */
    .get_version = NULL,
    .put_version = NULL,
    .alter_table = NULL,
    .reset_table = NULL,
    .forget_table = abi_forget_table,
};

int
dest_abi_open(const wr_dest_ops_t *ops, dest_plugin_t *plugin, const wr_config_t *cfg,
              const char *role, dest_t **out, wr_err_t *err)
{
    dest_abi_t *d;
    wr_dest_config_t dc;
    wr_dest_kv_t *kv = NULL;
    wr_dest_error_t de;
    int rc;

    *out = NULL;
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        if (plugin)
            dest_plugin_unload(plugin);
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the destination");
    }
    if (plugin) {
        d->plugin = *plugin;
        memset(plugin, 0, sizeof(*plugin));
    }
    d->w = ops;
    d->ops = dest_abi_ops;
    wr_copy_text(d->name, sizeof(d->name), ops->name);
    d->ops.name = d->name;
    d->base.ops = &d->ops;
    snprintf(d->role, sizeof(d->role), "%s", role ? role : "apply");
    d->host.abi_version = WR_DEST_ABI_VERSION;
    d->host.struct_size = sizeof(wr_dest_host_t);
    d->host.role = d->role;
    d->host.log = abi_host_log;
    d->host.ctx = d->name;
    d->host.waiting = abi_host_waiting;
    d->host.interrupted = abi_host_interrupted;
    if ((rc = abi_config(cfg, &dc, &kv, err)) < 0)
        goto fail;
    memset(&de, 0, sizeof(de));
    rc = ops->validate(&dc, &de);
    if (rc == WR_DEST_OK) {
        memset(&de, 0, sizeof(de));
        rc = ops->open(&dc, &d->host, &d->state, &de);
        d->opened = rc == WR_DEST_OK;
    }
    free(kv);
    if (rc != WR_DEST_OK) {
        rc = dest_abi_error(cfg, d->name, &de, rc, err);
        /* close is called once, also after a failed call: not after a failed open */
        goto fail;
    }
    *out = &d->base;
    return 0;
fail:
    abi_close(&d->base);
    return rc;
}

int
dest_abi_preflight(const wr_dest_ops_t *ops, const wr_config_t *cfg, char *summary, size_t len,
                   wr_err_t *err)
{
    dest_t *dt = NULL;
    dest_abi_t *d;
    wr_dest_error_t de;
    int rc;

    if ((rc = dest_abi_open(ops, NULL, cfg, "check", &dt, err)) < 0)
        return rc;
    d = (dest_abi_t *)dt;
    if (ops->check != NULL) {
        memset(&de, 0, sizeof(de));
        rc = ops->check(d->state, &de);
        if (rc != WR_DEST_OK) {
            rc = dest_abi_error(cfg, d->name, &de, rc, err);
            abi_close(dt);
            return rc;
        }
    }
    snprintf(summary, len, "%s (ABI version %d%s%s%s%s)", ops->name, WR_DEST_ABI_VERSION,
             ops->capabilities & WR_DEST_CAP_TRANSACTIONAL ? ", transactional" : ", at least once",
             ops->capabilities & WR_DEST_CAP_SCHEMA_CHANGES ? ", follows schema changes" : "",
             ops->capabilities & WR_DEST_CAP_DISCARD ? ", discard" : "",
             ops->check ? ", checked" : "");
    abi_close(dt);
    return 0;
}

/* ---- type = plugin -------------------------------------------------------------------- */

static const dest_keyspec_t plugin_keys[] = {
    {"library", NULL,
     "Shared object implementing the destination ABI (walrelay/destination.h), relative\n"
     "to this directory or absolute. Every other key of this section is handed to it.",
     true, false, true},
};

static int
plugin_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg == NULL || arg[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "--destination plugin needs the library: plugin:PATH");
        wr_err_hint(err, "--destination plugin:/path/to/libdest.so");
        return WR_ECONFIG;
    }
    values[0] = arg;
    return 0;
}

static int
plugin_validate(const wr_config_t *cfg, wr_err_t *err)
{
    dest_plugin_t pl;
    int rc;

    if ((rc = dest_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    rc = dest_abi_validate(pl.ops, cfg, err);
    dest_plugin_unload(&pl);
    return rc;
}

static int
plugin_init_check(const wr_config_t *cfg, wr_err_t *err)
{
    dest_plugin_t pl;
    int rc;

    if ((rc = dest_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    dest_plugin_unload(&pl);
    return 0;
}

static int
plugin_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    dest_plugin_t pl;
    char inner[256];
    int rc;

    if ((rc = dest_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    rc = dest_abi_preflight(pl.ops, cfg, inner, sizeof(inner), err);
    if (rc == 0)
        snprintf(summary, len, "plugin %s: %s", pl.path, inner);
    dest_plugin_unload(&pl);
    return rc;
}

static int
plugin_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    dest_plugin_t pl;
    int rc;

    *out = NULL;
    if ((rc = dest_plugin_load(cfg, &pl, err)) < 0)
        return rc;
    return dest_abi_open(pl.ops, &pl, cfg, role, out, err);
}

const dest_type_t dest_type_plugin = {
    .name = "plugin",
    .summary = "a shared object implementing walrelay/destination.h, loaded with dlopen",
    .init_usage = "plugin:/path/to/libdest.so",
    .keys = plugin_keys,
    .nkeys = sizeof(plugin_keys) / sizeof(plugin_keys[0]),
    .extra_keys = true,
    .init_arg = plugin_init_arg,
    .validate = plugin_validate,
    .init_check = plugin_init_check,
    .preflight = plugin_preflight,
    .open = plugin_open,
};
