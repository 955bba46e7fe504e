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
#include <sqlite3.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const dest_keyspec_t sqlite_keys[] = {
    {"path", "dest.db", "SQLite database file, relative to this directory or absolute.", false,
     false, true},
    {"mode", "mirror",
     "mirror: each table holds the source's rows. history: every change is a new row\n"
     "with _change_type, _commit_lsn, _seq, _commit_time (docs/destinations.md).",
     false, false, false},
};

static int
sqlite_validate(const wr_config_t *cfg, wr_err_t *err)
{
    const char *mode = dest_config_value(cfg, "mode");

    if (mode != NULL && strcmp(mode, "mirror") != 0 && strcmp(mode, "history") != 0) {
        dest_config_error(cfg, "mode", WR_ECONFIG, err,
                          "invalid value \"%s\": expected mirror or history", mode);
        wr_err_hint(err, "mode = mirror keeps the source's rows; mode = history appends every "
                         "change as a row");
        return WR_ECONFIG;
    }
    return 0;
}

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

/* An existing file keeps the mode it was made with (sqlite.c sq_mode_check, which also
 * refuses it at open): the mode it records, or mirror if it holds tables from before
 * modes were recorded. */
static int
sqlite_mode_preflight(const wr_config_t *cfg, const char *path, wr_err_t *err)
{
    const char *want = dest_config_value(cfg, "mode") ? dest_config_value(cfg, "mode") : "mirror";
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char have[32] = "";

    if (access(path, F_OK) != 0)
        return 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return 0; /* the workers report what is wrong with the file */
    }
    sqlite3_busy_timeout(db, 10000);
    if (sqlite3_prepare_v2(db, "SELECT value FROM _walrelay_meta WHERE key = 'mode'", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
        snprintf(have, sizeof(have), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    if (have[0] == '\0' &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM _walrelay_tables", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0)
        snprintf(have, sizeof(have), "mirror");
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (have[0] != '\0' && strcmp(have, want) != 0) {
        dest_config_error(cfg, "mode", WR_ECONFIG, err,
                          "the destination \"%s\" holds %s tables, not %s ones", path, have, want);
        wr_err_hint(err, "a file keeps the mode it was made with: set mode back, or give path a "
                         "new file (and resync every table)");
        return WR_ECONFIG;
    }
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
    if ((rc = sqlite_mode_preflight(cfg, path, err)) < 0)
        goto out;
    snprintf(summary, len, "sqlite %s%s", path,
             dest_config_value(cfg, "mode") &&
                     strcmp(dest_config_value(cfg, "mode"), "history") == 0
                 ? " (history mode)"
                 : "");
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
    int rc = dest_sqlite_ops.open(cfg, out, err);

    if (rc == 0 && role != NULL && strcmp(role, "apply") == 0)
        dest_sqlite_set_async(*out);
    if (rc == 0 && role != NULL && strcmp(role, "sync") == 0 &&
        (rc = dest_sqlite_set_copy_writer(*out, err)) < 0) {
        (*out)->ops->close(*out);
        *out = NULL;
    }
    return rc;
}

const dest_type_t dest_type_sqlite = {
    .name = "sqlite",
    .summary = "a SQLite database file, written exactly once (transactional)",
    .init_usage = "sqlite[:PATH]",
    .keys = sqlite_keys,
    .nkeys = sizeof(sqlite_keys) / sizeof(sqlite_keys[0]),
    .init_arg = sqlite_init_arg,
    .validate = sqlite_validate,
    .preflight = sqlite_preflight,
    .describe = sqlite_describe,
    .open = sqlite_open,
};
