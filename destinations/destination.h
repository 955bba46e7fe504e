/*
 * destination.h - the one interface every destination implements (the seeds'
 * Destination trait, made C): open, make a table from a schema, truncate, write copied
 * rows, write change events, commit with the resume key, report the last applied key.
 *
 * NOTES: each worker process opens its own destination handle; rows never cross a
 * socket. A transactional destination stores the resume key of the last applied change
 * per stream ("apply", or "sync_<relid>" for a sync worker's catch-up) in the same
 * transaction as the data, so a replay after a crash can skip what is already there:
 * exactly once. All writes happen between begin() and commit()/rollback().
 */
#ifndef WR_DESTINATION_H
#define WR_DESTINATION_H

#include "../common/config.h"
#include "../common/schema.h"

/* Resume key: (commit LSN, ordinal of the change in its transaction). Compare with
 * dest_key_cmp. The ordinal counts from 1; (lsn, 0) means "before any change of lsn". */
typedef struct dest_key_s {
    wr_lsn_t commit_lsn;
    uint32_t ordinal;
} dest_key_t;

static inline int
dest_key_cmp(const dest_key_t *a, const dest_key_t *b)
{
    if (a->commit_lsn != b->commit_lsn)
        return a->commit_lsn < b->commit_lsn ? -1 : 1;
    if (a->ordinal != b->ordinal)
        return a->ordinal < b->ordinal ? -1 : 1;
    return 0;
}

typedef enum {
    DEST_EV_INSERT = 1,
    DEST_EV_UPDATE,
    DEST_EV_DELETE,
    DEST_EV_TRUNCATE,
} dest_ev_kind_t;

typedef struct dest_event_s {
    dest_ev_kind_t kind;
    dest_key_t key;
    uint32_t xid;
    uint32_t relid;
    char old_kind;          /* update/delete: 0, 'K' (key columns only) or 'O' (old row) */
    const wr_row_t *old_row; /* update with 'K'/'O', delete; else NULL */
    const wr_row_t *new_row; /* insert, update; else NULL */
    uint8_t truncate_flags;  /* truncate: 1 CASCADE, 2 RESTART IDENTITY */
} dest_event_t;

typedef struct dest_s dest_t;

typedef struct dest_ops_s {
    const char *name;
    /* Opens the destination described by cfg. */
    int (*open)(const wr_config_t *cfg, dest_t **out, wr_err_t *err);
    /* Registers the table's schema; creates the destination table if it does not exist.
     * Called again with a new schema when the source's changes (issue 3 handles
     * alteration; a differing column set here is an error naming both). Outside or
     * inside a transaction. */
    int (*ensure_table)(dest_t *d, const wr_schema_t *schema, wr_err_t *err);
    int (*begin)(dest_t *d, wr_err_t *err);
    /* Deletes every row of the table (re-copy, TRUNCATE). Inside a transaction. */
    int (*truncate_table)(dest_t *d, uint32_t relid, wr_err_t *err);
    /* Copied rows, column order of the registered schema. Inside a transaction. */
    int (*write_rows)(dest_t *d, uint32_t relid, const wr_row_t *rows, size_t n, wr_err_t *err);
    /* One change. Inside a transaction. */
    int (*write_event)(dest_t *d, const dest_event_t *ev, wr_err_t *err);
    /* Commits; if key is not NULL, stores it as stream's last applied key in the same
     * transaction. Returns only once the data is durable. */
    int (*commit)(dest_t *d, const char *stream, const dest_key_t *key, wr_err_t *err);
    int (*rollback)(dest_t *d, wr_err_t *err);
    /* Last key committed for stream; *found=false if none (or not transactional). */
    int (*last_key)(dest_t *d, const char *stream, dest_key_t *out, bool *found, wr_err_t *err);
    /* Forgets a stream's key (a sync worker's, once the table is Ready; or on re-copy). */
    int (*clear_key)(dest_t *d, const char *stream, wr_err_t *err);
    /* Row count of a table, for status and tests; -1 if unknown. */
    int64_t (*count_rows)(dest_t *d, uint32_t relid);
    void (*close)(dest_t *d);
} dest_ops_t;

struct dest_s {
    const dest_ops_t *ops;
};

/* Built-in destinations by name ("sqlite", "null"); NULL if unknown. */
const dest_ops_t *dest_lookup(const char *type);
/* Opens cfg->dest_type. WR_ECONFIG naming the type and the choices if unknown. */
int dest_open(const wr_config_t *cfg, dest_t **out, wr_err_t *err) WR_MUST_CHECK;
/* Stream name for a sync worker's catch-up: "sync_<relid>". */
void dest_sync_stream(uint32_t relid, char *buf, size_t len);
/* Destination table name for a source table: "name" for schema public, else
 * "nsp__name". */
void dest_table_name(const char *nsp, const char *name, char *buf, size_t len);

extern const dest_ops_t dest_sqlite_ops;
extern const dest_ops_t dest_null_ops;

#endif
