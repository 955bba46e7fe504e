/*
 * abi.h - the adapter from the public destination ABI (walrelay/destination.h,
 * wr_dest_ops_t) to the in-tree interface the workers drive (dest_ops_t), and the loader
 * of plugin libraries.
 *
 * NOTES: used by the built-in null destination and by type = plugin alike, in the
 * supervisor (validate, check) and both workers (open). The adapter buffers events and
 * hands them to write_events in batches (DEST_ABI_BATCH_EVENTS / DEST_ABI_BATCH_BYTES),
 * converts schemas to relations and emits a RELATION event before the first change of
 * each table in each instance and after every change of its schema. See
 * docs/destinations.md "Destination ABI".
 */
#ifndef WR_DEST_ABI_H
#define WR_DEST_ABI_H

#include <walrelay/destination.h>

#include "destination.h"

#define DEST_ABI_BATCH_EVENTS 1000
#define DEST_ABI_BATCH_BYTES  (1024 * 1024)

/* A loaded plugin library. */
typedef struct dest_plugin_s {
    void *handle; /* dlopen handle */
    const wr_dest_ops_t *ops;
    char *path; /* absolute */
} dest_plugin_t;

/* Loads cfg's [destination] library (relative paths resolve against cfg->dir): dlopen with
 * RTLD_NOW | RTLD_LOCAL, the entry symbol and the version check (common/plugin.c, shared
 * with the state store ABI), and dest_abi_check_ops. Every refusal is WR_ECONFIG naming
 * the library and what to fix. */
int dest_plugin_load(const wr_config_t *cfg, dest_plugin_t *pl, wr_err_t *err) WR_MUST_CHECK;
void dest_plugin_unload(dest_plugin_t *pl);

/* Checks an operations table: ABI version, struct size, the required functions (last_key
 * with TRANSACTIONAL, discard with DISCARD). what names it in messages (the library). */
int dest_abi_check_ops(const wr_dest_ops_t *ops, const char *what, wr_err_t *err) WR_MUST_CHECK;

/* WR_DEST_E* -> WR_E* (common/wr.h). */
int dest_abi_code(int code);
/* A destination's error as walrelay's: configuration errors with a key become "FILE:LINE:
 * [destination] KEY: message"; others "NAME: message". Returns the WR_E* code. */
int dest_abi_error(const wr_config_t *cfg, const char *name, const wr_dest_error_t *de, int code,
                   wr_err_t *err);

/* validate() with cfg's [destination] keys except type and library. */
int dest_abi_validate(const wr_dest_ops_t *ops, const wr_config_t *cfg,
                      wr_err_t *err) WR_MUST_CHECK;
/* `walrelay check`: open(role "check"), check() if set, close. Fills a summary. */
int dest_abi_preflight(const wr_dest_ops_t *ops, const wr_config_t *cfg, char *summary, size_t len,
                       wr_err_t *err) WR_MUST_CHECK;
/* Opens an instance as an in-tree destination. plugin (may be NULL) is moved into the
 * handle and unloaded by close. */
int dest_abi_open(const wr_dest_ops_t *ops, dest_plugin_t *plugin, const wr_config_t *cfg,
                  const char *role, dest_t **out, wr_err_t *err) WR_MUST_CHECK;

/* Converts a schema to a relation: cols must hold s->ncols entries, names[i] a buffer of 128
 * bytes per column for type names walrelay formats itself. dest_name is the caller's. */
void dest_abi_relation(const wr_schema_t *s, const char *dest_name, wr_dest_column_t *cols,
                       char (*names)[128], wr_dest_relation_t *rel);

/* The built-in null destination's operations (destinations/null.c). */
const wr_dest_ops_t *dest_null_abi(void);
/* The streaming sinks on the ABI (issue 9): jsonl.c, http.c, nats.c. */
const wr_dest_ops_t *dest_jsonl_abi(void);
const wr_dest_ops_t *dest_http_abi(void);
const wr_dest_ops_t *dest_nats_abi(void);
/* Parsers of the sinks' own stored text (tests/fuzz/fuzz_sinkstate.c): a jsonl state file
 * (PATH.walrelay) and a NATS checkpoint value. 0, or -1 with why (one line). */
int dest_jsonl_state_parse(const char *text, size_t len, char *why, size_t whylen);
int dest_nats_checkpoint_parse(const char *text, size_t len, uint64_t *seq, bool *has_key,
                               wr_dest_key_t *key);

#endif
