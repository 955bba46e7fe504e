/*
 * sqlite_entry.c - the sqlite destination's registry entry: its [destination] keys, the
 * argument of `walrelay init --destination sqlite[:PATH]`, and its preflight (the file,
 * or the directory it will be created in, is writable).
 *
 * NOTES: runs in the supervisor (init, check, run) and the workers (open). Persists
 * nothing; preflight only calls access(2).
 */
#include "sqlite.h"

#include "../registry.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const dest_keyspec_t sqlite_keys[] = {
    {"path", "dest.db", "SQLite database file, relative to this directory or absolute.", false,
     false, true},
};

static int
sqlite_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg != NULL && arg[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "invalid destination \"sqlite:\": the path is empty");
        wr_err_hint(err, "--destination sqlite (DIR/dest.db) or --destination sqlite:PATH");
        return WR_ECONFIG;
    }
    values[0] = arg;
    return 0;
}

static int
sqlite_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    char *path = NULL, dir[PATH_MAX];
    char *slash;
    int rc;

    if ((rc = dest_config_path(cfg, "path", &path, err)) < 0)
        return rc;
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash && slash != dir)
        *slash = '\0';
    else if (slash)
        dir[1] = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    if (access(path, F_OK) == 0) {
        if (access(path, R_OK | W_OK) != 0) {
            rc = wr_err_set(err, WR_ECONFIG, "cannot write the destination \"%s\": %s", path,
                            strerror(errno));
            wr_err_hint(err, "check the file's owner and mode");
            goto out;
        }
    } else if (access(dir, W_OK | X_OK) != 0) {
        rc = wr_err_set(err, WR_ECONFIG, "cannot create the destination \"%s\" in \"%s\": %s", path,
                        dir, strerror(errno));
        wr_err_hint(err,
                    "create the directory or fix its permissions, or change [destination] path");
        goto out;
    }
    snprintf(summary, len, "sqlite %s", path);
out:
    free(path);
    return rc;
}

static void
sqlite_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    char *path = NULL;
    wr_err_t err;

    if (dest_config_path(cfg, "path", &path, &err) == 0)
        snprintf(buf, len, "sqlite %s", path);
    else
        snprintf(buf, len, "sqlite");
    free(path);
}

static int
sqlite_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    WR_UNUSED(role);
    return dest_sqlite_ops.open(cfg, out, err);
}

const dest_type_t dest_type_sqlite = {
    .name = "sqlite",
    .summary = "a SQLite database file, written exactly once (transactional)",
    .init_usage = "sqlite[:PATH]",
    .keys = sqlite_keys,
    .nkeys = sizeof(sqlite_keys) / sizeof(sqlite_keys[0]),
    .init_arg = sqlite_init_arg,
    .preflight = sqlite_preflight,
    .describe = sqlite_describe,
    .open = sqlite_open,
};
