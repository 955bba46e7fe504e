/*
 * plugin.h - loading a plugin library of one of walrelay's ABIs: dlopen, its entry
 * symbol, and the version check every ABI makes.
 *
 * NOTES: used by destinations/abi.c (walrelay/destination.h) and common/state_abi.c
 * (walrelay/store.h), in whichever process loads a plugin (the supervisor, the workers,
 * the CLI). Persists nothing. Every walrelay ABI's operations table begins with
 * `uint32_t abi_version; uint32_t struct_size;`, so the version and size are checked
 * here before anything else of the table is read. Messages name the library; the caller
 * prefixes where it was configured ("FILE:LINE: [destination] library: ").
 */
#ifndef WR_PLUGIN_H
#define WR_PLUGIN_H

#include "wr.h"

/* One ABI: what its messages call it and what a plugin of it must have. */
typedef struct wr_plugin_kind_s {
    const char *what;     /* "destination", "state store" */
    const char *header;   /* "walrelay/destination.h" */
    const char *symbol;   /* "walrelay_destination_v1" */
    const char *ops_type; /* "wr_dest_ops_t" */
    uint32_t abi_version; /* the version this walrelay implements */
    size_t ops_size;      /* sizeof the operations table */
    /* Calls the entry symbol with its own type (a call through another function type is
     * undefined) and returns the table. */
    const void *(*call_entry)(void *sym);
} wr_plugin_kind_t;

/* Loads path (absolute): dlopen(RTLD_NOW | RTLD_LOCAL), the entry symbol, calls it and
 * checks the version and size of the table it returns. On success *handle (for
 * wr_plugin_unload) and *ops. Every refusal is WR_ECONFIG naming the file, with a hint. */
int wr_plugin_load(const char *path, const wr_plugin_kind_t *kind, void **handle, const void **ops,
                   wr_err_t *err) WR_MUST_CHECK;
/* The version and size check (also for built-in tables): what names the table in the
 * message ("\"/x/lib.so\"", "the built-in null destination"). */
int wr_plugin_check_version(const wr_plugin_kind_t *kind, const char *what, uint32_t abi_version,
                            uint32_t struct_size, wr_err_t *err) WR_MUST_CHECK;
/* "rebuild the plugin against walrelay's installed HEADER (ABI version N)" */
void wr_plugin_rebuild_hint(const wr_plugin_kind_t *kind, wr_err_t *err);
void wr_plugin_unload(void *handle);

#endif
