/*
 * catalog.h - catalog reads of one source table shared by walrelay-apply and walrelay-sync:
 * columns with keys, relkind, replica identity and the key flags pgoutput derives from it,
 * catalog facts by attribute number (relfilenode, dropped/generated, pg_attribute xmin),
 * attmissingval, and whether the publication gives the table a column list.
 *
 * NOTES: simple query protocol only (the relid is a number, the publication name a quoted
 * literal), so the reads work on a walsender connection inside the copy's snapshot as well
 * as on a normal SQL connection. A failing query is WR_ECONN (retried by the workers).
 */
#ifndef WR_CATALOG_H
#define WR_CATALOG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/wr.h"
#include "destinations/destination.h"

/* Reads the table's catalog now, in one query (one snapshot): the replicated columns
 * (attnum > 0, not dropped, not generated, in attnum order) with type, typmod, type name
 * (format_type), NOT NULL
 * and key (primary key, else the replica identity index, as the copy reads it), relkind,
 * replica identity, per column the key flag pgoutput puts in its Relation message and the
 * text of attmissingval, and meta (relfilenode, per attribute 'l' / 'd' / 'g' and xmin;
 * version left 0). *found=false (and 0) if the relation does not exist. Free with
 * dest_catalog_clear. Errors: WR_ECONN, WR_EPROTO (attribute numbers not 1..n, a type oid
 * or typmod that is not a number), WR_EUNSUPPORTED (more than 65535 attributes),
 * WR_ENOMEM. */
int cat_read(PGconn *c, uint32_t relid, dest_catalog_t *cat, bool *found,
             wr_err_t *err) WR_MUST_CHECK;

/* True if the publication gives the table a column list (PostgreSQL 15): its Relation
 * messages then never match the catalog. False also when the query fails. */
bool cat_column_list(PGconn *c, const char *publication, uint32_t relid);

#endif
