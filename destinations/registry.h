/*
 * registry.h - the one table of destination types: built-ins and plugins are found,
 * described, configured, checked and opened through it.
 *
 * NOTES: linked into walrelay (init, check, run, reload) and both workers. An entry
 * carries everything that is particular to a destination type: its name and one-line
 * summary, the argument of `walrelay init --destination NAME[:ARG]`, the [destination]
 * keys it knows (default, help comment for the file init writes, secret or not, a path
 * relative to DIR or not), validation of those keys (errors "FILE:LINE: ..." naming the
 * key, with a hint), the preflight of `walrelay check`, and open. config.c keeps every
 * [destination] key but type as an item and knows no type; dest_config_check is called
 * wherever a loaded configuration is used. Entries: sqlite and postgres (in-tree dest_ops_t),
 * null (built on the public ABI, walrelay/destination.h, through the same adapter as a
 * plugin: destinations/abi.c), plugin (a library loaded with dlopen) and eventstore
 * (in-tree, destinations/eventstore/). Adding a built-in destination = one folder plus
 * one line in registry.c.
 */
#ifndef WR_DEST_REGISTRY_H
#define WR_DEST_REGISTRY_H

#include "destination.h"

#define DEST_DEFAULT_TYPE "sqlite"

/* One [destination] key a type knows (besides type). */
typedef struct dest_keyspec_s {
    const char *key;
    const char *defval; /* used when absent, and written by init; NULL: none */
    const char *help;   /* comment init writes above the key; lines separated by "\n" */
    bool required;      /* must be set (init needs it from the argument) */
    bool secret;        /* its value is never echoed (errors, status, logs) */
    bool path;          /* a file name, relative to DIR or absolute */
} dest_keyspec_t;

typedef struct dest_type_s {
    const char *name;
    const char *summary;    /* one line, for --help, errors and docs */
    const char *init_usage; /* the --destination form: "sqlite[:PATH]" */
    const dest_keyspec_t *keys;
    size_t nkeys;
    bool extra_keys; /* keys beyond `keys` are accepted (handed to the plugin) */
    /* `walrelay init --destination NAME:ARG`: ARG (NULL if there is no ":") to values of
     * keys (values[i] for keys[i], NULL = the default; pointers into arg are fine). */
    int (*init_arg)(const char *arg, const char **values, wr_err_t *err);
    /* After the generic checks of the keys (unknown, missing, empty paths); NULL if none. */
    int (*validate)(const wr_config_t *cfg, wr_err_t *err);
    /* What `walrelay init` checks instead of validate, if set (a plugin: that the library
     * loads; its own keys are added to the file afterwards). */
    int (*init_check)(const wr_config_t *cfg, wr_err_t *err);
    /* `walrelay check` and `walrelay run`: can the destination be written? Fills a one-line
     * summary for the report. */
    int (*preflight)(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err);
    /* Where the destination keeps its data, for people ("sqlite /srv/x/dest.db"); NULL:
     * the type's name. Never a secret. */
    void (*describe)(const wr_config_t *cfg, char *buf, size_t len);
    /* Opens an instance; role is "apply", "sync" or "check". */
    int (*open)(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err);
} dest_type_t;

/* The entry named name, or NULL. */
const dest_type_t *dest_type_find(const char *name);
/* "sqlite, null, plugin, eventstore" */
void dest_type_list(char *buf, size_t len);
/* The n-th entry (n < dest_type_count()). */
size_t dest_type_count(void);
const dest_type_t *dest_type_at(size_t n);

/* Validates cfg's [destination]: fills the default type if none is set, refuses an unknown
 * type (listing the registered ones), unknown keys, missing required keys and empty
 * paths, then runs the type's own validation. Errors are WR_ECONFIG "FILE:LINE: ..." with
 * a hint. Called by init, check, run, every reload and both workers. */
int dest_config_check(wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* What `walrelay init` checks in the file it writes: dest_config_check, with the type's
 * init_check instead of its validate when it has one. */
int dest_init_check(wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* The same checks without filling the default (cfg unchanged). */
int dest_config_validate(const wr_config_t *cfg, wr_err_t *err) WR_MUST_CHECK;
/* The value of a [destination] key, or its type's default; NULL if neither. */
const char *dest_config_value(const wr_config_t *cfg, const char *key);
/* The absolute path a path key names (relative ones resolve against cfg->dir). WR_ECONFIG if
 * it is not set and has no default; *out is malloc'd. */
int dest_config_path(const wr_config_t *cfg, const char *key, char **out,
                     wr_err_t *err) WR_MUST_CHECK;
/* Sets err to "FILE:LINE: [destination] KEY: message" (the key's line, else the section's). */
int dest_config_error(const wr_config_t *cfg, const char *key, int code, wr_err_t *err,
                      const char *fmt, ...) WR_PRINTF(5, 6);

/* dest_type_t.describe of cfg's type (the type's name if it has none). */
void dest_describe(const wr_config_t *cfg, char *buf, size_t len);
/* `walrelay init --destination SPEC` (NAME or NAME:ARG; NULL: the default type): the body
 * of the [destination] section to write (comments and "key = value" lines; *text is
 * malloc'd). Unknown NAME: WR_ECONFIG listing the registered types. */
int dest_init_section(const char *spec, char **text, wr_err_t *err) WR_MUST_CHECK;
/* dest_config_validate, then the type's preflight (`walrelay check`, `walrelay run`). */
int dest_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err) WR_MUST_CHECK;

extern const dest_type_t dest_type_sqlite;
extern const dest_type_t dest_type_postgres;
extern const dest_type_t dest_type_null;
extern const dest_type_t dest_type_http;
extern const dest_type_t dest_type_jsonl;
extern const dest_type_t dest_type_nats;
extern const dest_type_t dest_type_plugin;
extern const dest_type_t dest_type_eventstore;

#endif
