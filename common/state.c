/*
 * state.c - what every state store implementation shares: the argument checks made before
 * a store touches anything, the error texts of the outcomes every store reports the same
 * way, and the cutting of error text to the stored field sizes.
 *
 * NOTES: used by state_sqlite.c, state_pg.c, state_mem.c and state_abi.c (the adapter of
 * plugin stores), in whichever process opens a store (the supervisor, `walrelay drop`,
 * `walrelay check`, the unit tests). Persists nothing. One place for these texts keeps
 * the stores interchangeable: tests/unit/test_state.c checks the same messages on each.
 */
#include "state.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int
state_check_progress(const state_progress_t *p, wr_err_t *err)
{
    if (!p)
        return wr_err_set(err, WR_EINVAL, "saving the pipeline progress: no progress given");
    if (strnlen(p->slot_name, sizeof(p->slot_name)) >= sizeof(p->slot_name))
        return wr_err_set(err, WR_EINVAL, "slot name is not terminated within %zu bytes",
                          sizeof(p->slot_name));
    return 0;
}

int
state_check_table_names(uint32_t relid, const char *nsp, const char *name, wr_err_t *err)
{
    if (!nsp || !name || strlen(nsp) >= sizeof(((state_table_t *)0)->nsp) ||
        strlen(name) >= sizeof(((state_table_t *)0)->name))
        return wr_err_set(err, WR_EINVAL, "adding table %u: missing or too long name", relid);
    return 0;
}

int
state_check_phase(uint32_t relid, wr_phase_t phase, wr_err_t *err)
{
    if ((int)phase < 0 || (int)phase >= PH_COUNT)
        return wr_err_set(err, WR_EINVAL, "setting phase of table %u: invalid phase %d", relid,
                          (int)phase);
    return 0;
}

int
state_check_schema(const wr_schema_t *schema, wr_err_t *err)
{
    if (!schema || (schema->ncols && !schema->cols))
        return wr_err_set(err, WR_EINVAL, "saving a schema: no schema");
    return 0;
}

int
state_check_mapping(uint32_t relid, const char *dest_name, wr_err_t *err)
{
    if (!dest_name)
        return wr_err_set(err, WR_EINVAL, "saving the mapping of table %u: no name", relid);
    return 0;
}

int
state_check_mapping_buffer(uint32_t relid, char *buf, size_t len, wr_err_t *err)
{
    if (!buf || len == 0)
        return wr_err_set(err, WR_EINVAL, "reading the mapping of table %u: no buffer", relid);
    buf[0] = '\0';
    return 0;
}

int
state_copy_mapping(uint32_t relid, const char *dest_name, char *buf, size_t len, wr_err_t *err)
{
    size_t n = dest_name ? strlen(dest_name) : 0;

    if (n >= len)
        return wr_err_set(err, WR_EINVAL,
                          "destination name of table %u needs %zu bytes, buffer has %zu", relid,
                          n + 1, len);
    memcpy(buf, dest_name ? dest_name : "", n + 1);
    return 0;
}

int
state_check_flag_name(const char *name, wr_err_t *err)
{
    if (!name || !name[0] || strlen(name) > STATE_FLAG_NAME_MAX)
        return wr_err_set(err, WR_EINVAL, "invalid flag name \"%.80s\": 1 to %d bytes expected",
                          name ? name : "", STATE_FLAG_NAME_MAX);
    return 0;
}

int
state_err_no_table(wr_err_t *err, const char *what, uint32_t relid)
{
    return wr_err_set(err, WR_EINVAL, "%s of table %u: table is not in the state store", what,
                      relid);
}

int
state_err_no_history(wr_err_t *err, uint32_t relid)
{
    return wr_err_set(err, WR_EINVAL,
                      "rolling back the phase of table %u: no earlier phase recorded", relid);
}

int
state_err_detail(wr_err_t *err, int code, const char *what, const char *detail)
{
    char d[640];
    size_t n;

    wr_copy_text(d, sizeof(d), detail && *detail ? detail : "no detail");
    for (char *p = d; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    n = strlen(d);
    while (n > 0 && d[n - 1] == ' ')
        d[--n] = '\0';
    return wr_err_set(err, code, "%s: %s", what, d);
}

void
state_cut_errors(state_table_t *t, wr_phase_t phase, const char *err_kind, const char *err_msg,
                 const char *err_hint)
{
    bool keep = phase == PH_ERRORED;

    wr_copy_text(t->err_kind, sizeof(t->err_kind), keep ? err_kind : NULL);
    wr_copy_text(t->err_msg, sizeof(t->err_msg), keep ? err_msg : NULL);
    wr_copy_text(t->err_hint, sizeof(t->err_hint), keep ? err_hint : NULL);
}

int
state_check_copy_plan(uint32_t relid, const state_copy_range_t *ranges, size_t n, wr_err_t *err)
{
    if (n > 0 && !ranges)
        return wr_err_set(err, WR_EINVAL, "saving the copy plan of table %u: no ranges", relid);
    if (n > STATE_MAX_COPY_RANGES)
        return wr_err_set(err, WR_EINVAL,
                          "saving the copy plan of table %u: %zu ranges, at most %d", relid, n,
                          STATE_MAX_COPY_RANGES);
    return 0;
}

int
state_err_no_range(wr_err_t *err, uint32_t relid, uint32_t part)
{
    return wr_err_set(err, WR_EINVAL,
                      "marking range %u of table %u done: the table's copy plan has no such range",
                      part, relid);
}
