/*
 * eventstore.h - the eventstore destination's parts shared by its files: opening the store
 * a [destination] section names, and the destination itself.
 *
 * NOTES: used in walrelay-apply and walrelay-sync (eventstore.c, the dest_ops_t), in the
 * supervisor (eventstore_entry.c: keys, init argument, preflight) and in `walrelay
 * events` (supervisor/events_cmd.c opens the store of a pipeline's directory).
 */
#ifndef WR_DEST_EVENTSTORE_H
#define WR_DEST_EVENTSTORE_H

#include "../destination.h"
#include "store.h"

/* Opens the event store cfg's [destination] names (store = sqlite: path; postgres:
 * conninfo). flags: WR_ES_OPEN_CREATE. Errors are wr_err_t (WR_ECONFIG for the keys,
 * WR_EDEST for the store; a missing store is WR_EDEST with es_code WR_ES_ENOSTORE). */
int dest_es_store_open(const wr_config_t *cfg, int flags, wr_es_store_t **out, int *es_code,
                       wr_err_t *err) WR_MUST_CHECK;
#define DEST_ES_DEFAULT_PATH "events.db"

/* The SQLite file of store = sqlite: [destination] path, default DIR/events.db (*out
 * malloc'd). */
int dest_es_path(const wr_config_t *cfg, char **out, wr_err_t *err) WR_MUST_CHECK;
/* "host:DIR": who owns a pipeline's slot names in a store. */
void dest_es_owner(const wr_config_t *cfg, char *buf, size_t len);
/* Converts a store error into a walrelay error with code. */
int dest_es_err(const wr_es_error_t *e, int code, wr_err_t *err);

/* The destination (role "apply", "sync" or "check"). */
int dest_es_open(const wr_config_t *cfg, const char *role, dest_t **out,
                 wr_err_t *err) WR_MUST_CHECK;

extern const dest_ops_t dest_eventstore_ops;

#endif
