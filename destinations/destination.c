/*
 * destination.c - the registry of built-in destinations and the naming helpers every
 * destination shares (sync stream names, destination table names).
 *
 * NOTES: linked into walrelay-apply and walrelay-sync; each process opens its own handle
 * with dest_open(). Nothing here allocates or persists anything.
 */
#include "destination.h"

#include <stdio.h>
#include <string.h>

static const dest_ops_t *const dest_builtins[] = {
    &dest_sqlite_ops,
    &dest_null_ops,
};

const dest_ops_t *
dest_lookup(const char *type)
{
    if (type == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(dest_builtins) / sizeof(dest_builtins[0]); i++) {
        if (strcmp(dest_builtins[i]->name, type) == 0)
            return dest_builtins[i];
    }
    return NULL;
}

int
dest_open(const wr_config_t *cfg, dest_t **out, wr_err_t *err)
{
    const dest_ops_t *ops = dest_lookup(cfg->dest_type);

    *out = NULL;
    if (ops == NULL) {
        wr_err_set(err, WR_ECONFIG, "unknown destination type \"%s\" (choose sqlite or null)",
                   cfg->dest_type ? cfg->dest_type : "");
        wr_err_hint(err, "set type = sqlite or type = null in the [destination] section");
        return WR_ECONFIG;
    }
    return ops->open(cfg, out, err);
}

void
dest_sync_stream(uint32_t relid, char *buf, size_t len)
{
    snprintf(buf, len, "sync_%u", (unsigned)relid);
}

void
dest_table_name(const char *nsp, const char *name, char *buf, size_t len)
{
    if (nsp == NULL || nsp[0] == '\0' || strcmp(nsp, "public") == 0)
        snprintf(buf, len, "%s", name);
    else
        snprintf(buf, len, "%s__%s", nsp, name);
}
