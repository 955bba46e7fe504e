/*
 * null.c - the "null" destination: accepts every call and stores nothing. Used by the
 * benchmarks to measure walrelay without a destination's cost.
 *
 * NOTES: runs in walrelay-apply and walrelay-sync. Not transactional: last_key never
 * finds a key, so a restarted worker replays from the slot's confirmed position.
 */
#include "destination.h"

#include <stdlib.h>

typedef struct dest_null_s {
    dest_t base;
} dest_null_t;

static int
null_open(const wr_config_t *cfg, dest_t **out, wr_err_t *err)
{
    dest_null_t *d;

    WR_UNUSED(cfg);
    d = calloc(1, sizeof(*d));
    if (d == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory opening the null destination");
    d->base.ops = &dest_null_ops;
    *out = &d->base;
    return 0;
}

static int
null_ensure_table(dest_t *d, const wr_schema_t *schema, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(schema);
    WR_UNUSED(err);
    return 0;
}

static int
null_begin(dest_t *d, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(err);
    return 0;
}

static int
null_truncate_table(dest_t *d, uint32_t relid, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(relid);
    WR_UNUSED(err);
    return 0;
}

static int
null_write_rows(dest_t *d, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(relid);
    WR_UNUSED(rows);
    WR_UNUSED(n);
    WR_UNUSED(err);
    return 0;
}

static int
null_write_event(dest_t *d, const dest_event_t *ev, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(ev);
    WR_UNUSED(err);
    return 0;
}

static int
null_commit(dest_t *d, const char *stream, const dest_key_t *key, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(stream);
    WR_UNUSED(key);
    WR_UNUSED(err);
    return 0;
}

static int
null_rollback(dest_t *d, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(err);
    return 0;
}

static int
null_last_key(dest_t *d, const char *stream, dest_key_t *out, bool *found, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(stream);
    WR_UNUSED(err);
    out->commit_lsn = 0;
    out->ordinal = 0;
    *found = false;
    return 0;
}

static int
null_clear_key(dest_t *d, const char *stream, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(stream);
    WR_UNUSED(err);
    return 0;
}

static int64_t
null_count_rows(dest_t *d, uint32_t relid)
{
    WR_UNUSED(d);
    WR_UNUSED(relid);
    return -1;
}

/* Schema versions: nothing is stored, so there is nothing to alter. get_version stays
 * NULL in the ops: the apply worker then skips comparing Relation messages with the
 * catalog (there is no destination table that could be wrong). */
static int
null_put_version(dest_t *d, const wr_schema_t *schema, const dest_tmeta_t *meta, const char *change,
                 wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(schema);
    WR_UNUSED(meta);
    WR_UNUSED(change);
    WR_UNUSED(err);
    return 0;
}

static int
null_alter_table(dest_t *d, const wr_schema_t *old_schema, const wr_schema_t *new_schema,
                 const dest_alter_t *plan, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(old_schema);
    WR_UNUSED(new_schema);
    WR_UNUSED(plan);
    WR_UNUSED(err);
    return 0;
}

static int
null_reset_table(dest_t *d, const wr_schema_t *schema, const dest_tmeta_t *meta, wr_err_t *err)
{
    WR_UNUSED(d);
    WR_UNUSED(schema);
    WR_UNUSED(meta);
    WR_UNUSED(err);
    return 0;
}

static void
null_close(dest_t *d)
{
    free(d);
}

const dest_ops_t dest_null_ops = {
    .name = "null",
    .open = null_open,
    .ensure_table = null_ensure_table,
    .begin = null_begin,
    .truncate_table = null_truncate_table,
    .write_rows = null_write_rows,
    .write_event = null_write_event,
    .commit = null_commit,
    .rollback = null_rollback,
    .last_key = null_last_key,
    .clear_key = null_clear_key,
    .count_rows = null_count_rows,
    .close = null_close,
    .get_version = NULL,
    .put_version = null_put_version,
    .alter_table = null_alter_table,
    .reset_table = null_reset_table,
};
