/*
 * schema.c - owned table schemas (wr_schema_t): allocation, copy, comparison.
 *
 * NOTES: schemas come from pgoutput RELATION messages (apply, sync), from the catalog
 * (sync, at copy time) and from the state store; whoever gets one from a _new/_copy
 * frees it with wr_schema_free.
 */
#include "schema.h"

#include <stdlib.h>
#include <string.h>

wr_schema_t *
wr_schema_new(uint32_t relid, const char *nsp, const char *name, uint16_t ncols)
{
    wr_schema_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->relid = relid;
    s->replident = 'd';
    s->nsp = wr_strdup(nsp ? nsp : "");
    s->name = wr_strdup(name ? name : "");
    s->ncols = ncols;
    s->cols = ncols ? calloc(ncols, sizeof(wr_column_t)) : NULL;
    if (!s->nsp || !s->name || (ncols && !s->cols)) {
        wr_schema_free(s);
        return NULL;
    }
    return s;
}

wr_schema_t *
wr_schema_copy(const wr_schema_t *src)
{
    wr_schema_t *s;
    uint16_t i;
    if (!src)
        return NULL;
    s = wr_schema_new(src->relid, src->nsp, src->name, src->ncols);
    if (!s)
        return NULL;
    s->replident = src->replident;
    if (src->dest_name && !(s->dest_name = wr_strdup(src->dest_name))) {
        wr_schema_free(s);
        return NULL;
    }
    for (i = 0; i < src->ncols; i++) {
        s->cols[i] = src->cols[i];
        s->cols[i].name = wr_strdup(src->cols[i].name ? src->cols[i].name : "");
        s->cols[i].type_name = src->cols[i].type_name ? wr_strdup(src->cols[i].type_name) : NULL;
        if (!s->cols[i].name || (src->cols[i].type_name && !s->cols[i].type_name)) {
            wr_schema_free(s);
            return NULL;
        }
    }
    return s;
}

void
wr_schema_free(wr_schema_t *s)
{
    uint16_t i;
    if (!s)
        return;
    if (s->cols)
        for (i = 0; i < s->ncols; i++) {
            free(s->cols[i].name);
            free(s->cols[i].type_name);
        }
    free(s->cols);
    free(s->nsp);
    free(s->name);
    free(s->dest_name);
    free(s);
}

static bool
str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

bool
wr_schema_equal(const wr_schema_t *a, const wr_schema_t *b)
{
    uint16_t i;
    if (!a || !b)
        return a == b;
    if (a->relid != b->relid || a->ncols != b->ncols || a->replident != b->replident ||
        !str_eq(a->nsp, b->nsp) || !str_eq(a->name, b->name))
        return false;
    for (i = 0; i < a->ncols; i++) {
        const wr_column_t *x = &a->cols[i], *y = &b->cols[i];
        if (!str_eq(x->name, y->name) || x->type_oid != y->type_oid || x->typmod != y->typmod ||
            x->is_key != y->is_key)
            return false;
    }
    return true;
}

int
wr_schema_set_dest_name(wr_schema_t *s, const char *dest_name)
{
    char *copy = NULL;

    if (dest_name && dest_name[0] && !(copy = wr_strdup(dest_name)))
        return WR_ENOMEM;
    free(s->dest_name);
    s->dest_name = copy;
    return 0;
}

int
wr_schema_nkeys(const wr_schema_t *s)
{
    int n = 0;
    uint16_t i;
    for (i = 0; s && i < s->ncols; i++)
        n += s->cols[i].is_key ? 1 : 0;
    return n;
}
