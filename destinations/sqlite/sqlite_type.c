/*
 * sqlite_type.c - the storage class and declared SQLite type of each PostgreSQL type.
 *
 * NOTES: pure functions (moved here from common/pgtype.c: only the sqlite destination
 * maps types this way). Used by sqlite.c in every worker.
 */
#include "sqlite.h"

#include "../../common/pgtype.h"

sqt_class_t
sqt_class(uint32_t type_oid)
{
    switch (type_oid) {
    case PGT_INT2:
    case PGT_INT4:
    case PGT_INT8:
    case PGT_OID:
    case PGT_BOOL:
        return SQT_CLASS_INTEGER;
    case PGT_FLOAT4:
    case PGT_FLOAT8:
        return SQT_CLASS_REAL;
    case PGT_BYTEA:
        return SQT_CLASS_BLOB;
    default:
        /* numeric and money stay text: exact, and money's form depends on lc_monetary */
        return SQT_CLASS_TEXT;
    }
}

const char *
sqt_decl(uint32_t type_oid)
{
    switch (sqt_class(type_oid)) {
    case SQT_CLASS_INTEGER:
        return "INTEGER";
    case SQT_CLASS_REAL:
        return "REAL";
    case SQT_CLASS_BLOB:
        return "BLOB";
    case SQT_CLASS_TEXT:
    default:
        return "TEXT";
    }
}
