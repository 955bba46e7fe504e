/*
 * sqlite.h - the sqlite destination's parts shared by its files: the storage classes and
 * declared column types it maps PostgreSQL types to, and its registry entry.
 *
 * NOTES: used in walrelay-apply, walrelay-sync (sqlite.c) and the supervisor (the
 * registry entry: keys, init argument, preflight). Pure functions; no state.
 */
#ifndef WR_DEST_SQLITE_H
#define WR_DEST_SQLITE_H

#include "../destination.h"

/* How a PostgreSQL type is held in SQLite's storage classes. */
typedef enum {
    SQT_CLASS_INTEGER, /* int2, int4, int8, oid, bool (0/1) */
    SQT_CLASS_REAL,    /* float4, float8 (NaN/Infinity kept as text) */
    SQT_CLASS_TEXT,    /* everything else, in PostgreSQL's text form (numeric too: exact) */
    SQT_CLASS_BLOB,    /* bytea */
} sqt_class_t;

sqt_class_t sqt_class(uint32_t type_oid);
/* Declared SQLite column type for a PostgreSQL type ("INTEGER", "REAL", "TEXT", "BLOB"). */
const char *sqt_decl(uint32_t type_oid);

/* The apply worker's handle (role "apply"): commits with synchronous=NORMAL, made durable
 * by an fsync of the WAL when the worker asks (dest_ops_t.durable). See sqlite.c. */
void dest_sqlite_set_async(dest_t *d);
/* A sync worker's handle (role "sync"): checkpoints the WAL only past SQ_COPY_CKPT_PAGES
 * (64 MB) instead of SQLite's 1,000 pages, so that a copy's range commits do not each copy
 * their pages into the database file and fsync it on the writer's critical path. See
 * sqlite.c. */
int dest_sqlite_set_copy_writer(dest_t *d, wr_err_t *err) WR_MUST_CHECK;

#endif
