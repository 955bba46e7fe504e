/*
 * state_abi.h - state stores of the public ABI (walrelay/store.h, wr_store_ops_t) as the
 * in-tree interface (state.h, state_ops_t), and the loading of [state] backend = plugin.
 *
 * NOTES: used by the supervisor and the CLI through state.h (state_open_plugin,
 * state_config_check, state_check_plugin, state_init_check); this header adds what the
 * tests need to drive the adapter with a table of their own (tests/unit/test_state.c,
 * the conformance suite). See docs/custom-store.md.
 */
#ifndef WR_STATE_ABI_H
#define WR_STATE_ABI_H

#include <walrelay/store.h>

#include "state.h"

/* A loaded plugin library. */
typedef struct state_plugin_s {
    void *handle; /* dlopen handle */
    const wr_store_ops_t *ops;
    char *path; /* absolute */
} state_plugin_t;

/* Loads cfg's [state] library (a relative path resolves against cfg->dir): dlopen, the
 * entry symbol, the version, size and required functions. Every refusal is WR_ECONFIG
 * "FILE:LINE: [state] library: ..." naming the library and what to fix. */
int state_plugin_load(const wr_config_t *cfg, state_plugin_t *pl, wr_err_t *err) WR_MUST_CHECK;
void state_plugin_unload(state_plugin_t *pl);

/* Checks an operations table: ABI version, struct size, name, the required functions.
 * what names it in messages (the library). */
int state_abi_check_ops(const wr_store_ops_t *ops, const char *what, wr_err_t *err) WR_MUST_CHECK;
/* validate() with cfg's [state] keys except backend and library. */
int state_abi_validate(const wr_store_ops_t *ops, const wr_config_t *cfg,
                       wr_err_t *err) WR_MUST_CHECK;
/* Opens an instance of ops for role ("supervisor", "drop", "check") as a state store.
 * plugin (may be NULL) is moved into the store and unloaded when it closes (also when
 * the open fails). */
int state_abi_open(const wr_store_ops_t *ops, state_plugin_t *plugin, const wr_config_t *cfg,
                   const char *role, state_store_t **out, wr_err_t *err) WR_MUST_CHECK;

#endif
