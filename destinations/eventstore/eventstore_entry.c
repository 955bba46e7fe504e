/*
 * eventstore_entry.c - the eventstore destination's registry entry: its [destination]
 * keys (store, path, conninfo), the argument of `walrelay init --destination
 * eventstore:sqlite:PATH | eventstore:postgres:CONNINFO`, validation, and the preflight of
 * `walrelay check` / `walrelay run` (the store can be opened, and no other pipeline owns
 * this pipeline's slot name in it).
 *
 * NOTES: runs in the supervisor (init, check, run) and the workers (open). Persists
 * nothing: the preflight opens an existing store without creating anything. conninfo is
 * a secret: never shown (describe and errors name the database only).
 */
#include "eventstore.h"

#include "../registry.h"

#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const dest_keyspec_t es_keys[] = {
    {"store", "sqlite",
     "Where the events are kept: sqlite (a file, key path) or postgres (a database, key\n"
     "conninfo). The schema is the same (docs/eventstore.md).",
     false, false, false},
    {"path", NULL,
     "store = sqlite: the SQLite file, relative to this directory or absolute (default\n"
     "events.db).",
     false, false, true},
    {"conninfo", NULL,
     "store = postgres: libpq connection string of the database that holds the events\n"
     "(keep the password in ~/.pgpass or PGPASSFILE).",
     false, true, false},
};

static int
es_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg == NULL || strcmp(arg, "sqlite") == 0) {
        values[0] = "sqlite";
        values[1] = DEST_ES_DEFAULT_PATH;
        return 0;
    }
    if (strncmp(arg, "sqlite:", 7) == 0) {
        if (arg[7] == '\0') {
            wr_err_set(err, WR_ECONFIG,
                       "invalid destination \"eventstore:sqlite:\": the path "
                       "is empty");
            wr_err_hint(err, "--destination eventstore:sqlite:PATH");
            return WR_ECONFIG;
        }
        values[0] = "sqlite";
        values[1] = arg + 7;
        return 0;
    }
    if (strncmp(arg, "postgres:", 9) == 0) {
        if (arg[9] == '\0') {
            wr_err_set(err, WR_ECONFIG,
                       "invalid destination \"eventstore:postgres:\": the conninfo is empty");
            wr_err_hint(err, "--destination 'eventstore:postgres:host=... dbname=...'");
            return WR_ECONFIG;
        }
        values[0] = "postgres";
        values[2] = arg + 9;
        return 0;
    }
    wr_err_set(err, WR_ECONFIG,
               "invalid destination \"eventstore:...\": the store must be sqlite or postgres");
    wr_err_hint(err, "--destination eventstore:sqlite:PATH or --destination "
                     "'eventstore:postgres:CONNINFO'");
    return WR_ECONFIG;
}

static int
es_validate(const wr_config_t *cfg, wr_err_t *err)
{
    const char *store = dest_config_value(cfg, "store");

    if (strcmp(store, "sqlite") == 0) {
        if (cfg_dest_item(cfg, "conninfo") != NULL) {
            dest_config_error(cfg, "conninfo", WR_ECONFIG, err,
                              "only used with store = postgres (store is sqlite)");
            wr_err_hint(err, "remove conninfo, or set store = postgres");
            return WR_ECONFIG;
        }
        return 0;
    }
    if (strcmp(store, "postgres") == 0) {
        const wr_cfg_item_t *ci = cfg_dest_item(cfg, "conninfo");

        if (cfg_dest_item(cfg, "path") != NULL) {
            dest_config_error(cfg, "path", WR_ECONFIG, err,
                              "only used with store = sqlite (store is postgres)");
            wr_err_hint(err, "remove path, or set store = sqlite");
            return WR_ECONFIG;
        }
        if (ci == NULL || ci->value[0] == '\0') {
            dest_config_error(cfg, "conninfo", WR_ECONFIG, err,
                              "store = postgres needs a connection string");
            wr_err_hint(err, "add conninfo = host=... dbname=... below [destination]");
            return WR_ECONFIG;
        }
        return 0;
    }
    dest_config_error(cfg, "store", WR_ECONFIG, err, "invalid value \"%s\"", store);
    wr_err_hint(err, "store = sqlite (a file, key path) or store = postgres (key conninfo)");
    return WR_ECONFIG;
}

static void
es_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    const char *store = dest_config_value(cfg, "store");

    if (store && strcmp(store, "postgres") == 0) {
        const char *ci = dest_config_value(cfg, "conninfo");
        PQconninfoOption *opts = ci ? PQconninfoParse(ci, NULL) : NULL;
        const char *db = NULL, *host = NULL;

        for (PQconninfoOption *o = opts; o && o->keyword; o++) {
            if (strcmp(o->keyword, "dbname") == 0 && o->val)
                db = o->val;
            if (strcmp(o->keyword, "host") == 0 && o->val)
                host = o->val;
        }
        snprintf(buf, len, "eventstore postgres database \"%s\"%s%s%s", db ? db : "?",
                 host ? " on \"" : "", host ? host : "", host ? "\"" : "");
        PQconninfoFree(opts);
    } else {
        char *path = NULL;
        wr_err_t err;

        if (dest_es_path(cfg, &path, &err) == 0)
            snprintf(buf, len, "eventstore sqlite %s", path);
        else
            snprintf(buf, len, "eventstore sqlite");
        free(path);
    }
}

static int
es_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    const char *store = dest_config_value(cfg, "store");
    wr_es_store_t *st = NULL;
    wr_es_error_t e;
    char slot[80], owner[600];
    int code = 0, rc;

    if (strcmp(store, "sqlite") == 0) {
        char *path = NULL, dir[PATH_MAX], *slash;

        if ((rc = dest_es_path(cfg, &path, err)) < 0)
            return rc;
        snprintf(dir, sizeof(dir), "%s", path);
        slash = strrchr(dir, '/');
        if (slash && slash != dir)
            *slash = '\0';
        else if (slash)
            dir[1] = '\0';
        if (access(path, F_OK) != 0 && access(dir, W_OK | X_OK) != 0) {
            rc = wr_err_set(err, WR_ECONFIG, "cannot create the event store \"%s\" in \"%s\": %s",
                            path, dir, strerror(errno));
            wr_err_hint(err, "create the directory or fix its permissions, or change "
                             "[destination] path");
            free(path);
            return rc;
        }
        free(path);
    }
    rc = dest_es_store_open(cfg, 0, &st, &code, err);
    if (rc < 0 && code != WR_ES_ENOSTORE) {
        if (rc == WR_EDEST)
            err->code = WR_ECONFIG;
        return WR_ECONFIG;
    }
    dest_describe(cfg, summary, len);
    if (st == NULL)
        return 0; /* created at the first run */
    cfg_apply_slot_name(cfg, slot, sizeof(slot));
    dest_es_owner(cfg, owner, sizeof(owner));
    rc = es_pipeline_register(st, slot, owner, true, &e);
    wr_es_close(st);
    if (rc == WR_ES_CONFLICT)
        return dest_es_err(&e, WR_ECONFIG, err);
    if (rc < 0)
        return dest_es_err(&e, WR_ECONFIG, err);
    return 0;
}

static int
es_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    return dest_es_open(cfg, role, out, err);
}

const dest_type_t dest_type_eventstore = {
    .name = "eventstore",
    .summary = "every change an event (positions, streams, optimistic appends) in SQLite or "
               "PostgreSQL, exactly once",
    .init_usage = "eventstore:sqlite:PATH or eventstore:postgres:CONNINFO",
    .keys = es_keys,
    .nkeys = sizeof(es_keys) / sizeof(es_keys[0]),
    .init_arg = es_init_arg,
    .validate = es_validate,
    .preflight = es_preflight,
    .describe = es_describe,
    .open = es_open,
};
