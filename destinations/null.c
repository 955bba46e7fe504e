/*
 * null.c - the "null" destination: accepts every call and stores nothing. Used by the
 * benchmarks to measure walrelay without a destination's cost.
 *
 * NOTES: written on the public destination ABI (walrelay/destination.h), like a plugin,
 * and opened through the same adapter (destinations/abi.c): the proof that a built-in
 * takes the same path as a shared object. Runs in walrelay-apply and walrelay-sync. Not
 * transactional: no last key, so a restarted worker replays from the slot's confirmed
 * position. Takes no [destination] keys.
 */
#include "abi.h"
#include "registry.h"

#include <stdlib.h>

typedef struct null_state_s {
    uint64_t events; /* counted, for the log at close */
    uint64_t rows;
    const wr_dest_host_t *host;
} null_state_t;

static int
null_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    if (cfg->nitems > 0)
        return wr_dest_error_set(err, WR_DEST_ECONFIG, cfg->items[0].key,
                                 "unknown key \"%s\": the null destination takes no keys",
                                 cfg->items[0].key);
    return WR_DEST_OK;
}

static int
null_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state,
          wr_dest_error_t *err)
{
    null_state_t *s;

    (void)cfg;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    s->host = host;
    *state = s;
    return WR_DEST_OK;
}

static int
null_truncate_table(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    (void)state;
    (void)rel;
    (void)err;
    return WR_DEST_OK;
}

static int
null_write_table_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                      size_t nrows, wr_dest_error_t *err)
{
    null_state_t *s = state;

    (void)rel;
    (void)rows;
    (void)err;
    s->rows += nrows;
    return WR_DEST_OK;
}

static int
null_write_events(void *state, const wr_dest_event_t *events, size_t nevents, wr_dest_error_t *err)
{
    null_state_t *s = state;

    (void)events;
    (void)err;
    s->events += nevents;
    return WR_DEST_OK;
}

static int
null_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    (void)state;
    (void)stream;
    (void)key;
    (void)err;
    return WR_DEST_OK;
}

static void
null_close(void *state)
{
    null_state_t *s = state;

    if (s == NULL)
        return;
    wr_dest_log(s->host, WR_DEST_LOG_DEBUG, "closed rows=%llu events=%llu",
                (unsigned long long)s->rows, (unsigned long long)s->events);
    free(s);
}

static const wr_dest_ops_t null_ops = {
    .abi_version = WR_DEST_ABI_VERSION,
    .struct_size = sizeof(wr_dest_ops_t),
    .name = "null",
    .capabilities = WR_DEST_CAP_SCHEMA_CHANGES,
    .validate = null_validate,
    .open = null_open,
    .check = NULL,
    .truncate_table = null_truncate_table,
    .write_table_rows = null_write_table_rows,
    .write_events = null_write_events,
    .flush = null_flush,
    .last_key = NULL,
    .forget_stream = NULL,
    .discard = NULL,
    .close = null_close,
};

const wr_dest_ops_t *
dest_null_abi(void)
{
    return &null_ops;
}

/* ---- registry entry ------------------------------------------------------------------- */

static int
null_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    (void)values;
    if (arg != NULL) {
        wr_err_set(err, WR_ECONFIG, "the null destination takes no argument (--destination null)");
        return WR_ECONFIG;
    }
    return 0;
}

static int
null_type_validate(const wr_config_t *cfg, wr_err_t *err)
{
    return dest_abi_validate(&null_ops, cfg, err);
}

static int
null_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    return dest_abi_preflight(&null_ops, cfg, summary, len, err);
}

static int
null_type_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    return dest_abi_open(&null_ops, NULL, cfg, role, out, err);
}

const dest_type_t dest_type_null = {
    .name = "null",
    .summary = "discards everything (benchmarks, tests); built on the public ABI",
    .init_usage = "null",
    .keys = NULL,
    .nkeys = 0,
    .init_arg = null_init_arg,
    .validate = null_type_validate,
    .preflight = null_preflight,
    .open = null_type_open,
};
