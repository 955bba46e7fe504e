/*
 * destination.c - the naming helpers every destination shares (sync stream names,
 * destination table names).
 *
 * NOTES: linked into walrelay-apply and walrelay-sync; each process opens its own handle
 * with dest_open() (destinations/registry.c). Also the destination-independent half of schema
 * changes (dest_ddl_plan: compare a recorded schema version with the catalog by attribute number).
 * Nothing here persists anything.
 */
#include "destination.h"

#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
dest_sync_stream(uint32_t relid, char *buf, size_t len)
{
    snprintf(buf, len, "sync_%u", (unsigned)relid);
}

void
dest_table_name(const char *nsp, const char *name, char *buf, size_t len)
{
    if (nsp == NULL || nsp[0] == '\0' || strcmp(nsp, "public") == 0)
        snprintf(buf, len, "%s", name);
    else
        snprintf(buf, len, "%s__%s", nsp, name);
}

void
dest_schema_table_name(const wr_schema_t *s, char *buf, size_t len)
{
    if (s->dest_name != NULL && s->dest_name[0] != '\0')
        snprintf(buf, len, "%s", s->dest_name);
    else
        dest_table_name(s->nsp, s->name, buf, len);
}

/* ---- schema versions (issue 3) --------------------------------------------------------- */

void
dest_tmeta_clear(dest_tmeta_t *m)
{
    if (m == NULL)
        return;
    free(m->attstate);
    free(m->attxmin);
    memset(m, 0, sizeof(*m));
}

int
dest_tmeta_copy(dest_tmeta_t *dst, const dest_tmeta_t *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->version = src->version;
    dst->relfilenode = src->relfilenode;
    if (src->natts == 0 || src->attstate == NULL || src->attxmin == NULL)
        return 0;
    dst->attstate = malloc((size_t)src->natts + 1);
    dst->attxmin = malloc((size_t)src->natts * sizeof(uint32_t));
    if (dst->attstate == NULL || dst->attxmin == NULL) {
        dest_tmeta_clear(dst);
        return WR_ENOMEM;
    }
    memcpy(dst->attstate, src->attstate, src->natts);
    dst->attstate[src->natts] = '\0';
    memcpy(dst->attxmin, src->attxmin, (size_t)src->natts * sizeof(uint32_t));
    dst->natts = src->natts;
    return 0;
}

void
dest_catalog_clear(dest_catalog_t *c)
{
    if (c == NULL)
        return;
    if (c->missing != NULL && c->schema != NULL) {
        for (uint16_t i = 0; i < c->schema->ncols; i++)
            free(c->missing[i]);
    }
    free(c->missing);
    free(c->relflags);
    wr_schema_free(c->schema);
    dest_tmeta_clear(&c->meta);
    memset(c, 0, sizeof(*c));
}

bool
dest_ddl_relation_matches(const wr_schema_t *rel, const dest_catalog_t *cat, char *why, size_t len)
{
    const wr_schema_t *c = cat->schema;

    if (c == NULL) {
        snprintf(why, len, "the table is not in the catalog any more");
        return false;
    }
    if (strcmp(rel->nsp, c->nsp) != 0 || strcmp(rel->name, c->name) != 0) {
        snprintf(why, len, "the table is called \"%s.%s\" now, \"%s.%s\" in the stream", c->nsp,
                 c->name, rel->nsp, rel->name);
        return false;
    }
    if (rel->replident != c->replident) {
        snprintf(why, len, "replica identity is '%c' now, '%c' in the stream", c->replident,
                 rel->replident);
        return false;
    }
    if (rel->ncols != c->ncols) {
        snprintf(why, len, "the table has %u columns now, %u in the stream", (unsigned)c->ncols,
                 (unsigned)rel->ncols);
        return false;
    }
    for (uint16_t i = 0; i < c->ncols; i++) {
        const wr_column_t *x = &rel->cols[i], *y = &c->cols[i];

        if (strcmp(x->name, y->name) != 0) {
            snprintf(why, len, "column %u is \"%s\" now, \"%s\" in the stream", (unsigned)i + 1,
                     y->name, x->name);
            return false;
        }
        if (x->type_oid != y->type_oid || x->typmod != y->typmod) {
            snprintf(why, len,
                     "column \"%s\" has type %u (typmod %d) now, type %u (typmod %d) in the stream",
                     y->name, (unsigned)y->type_oid, (int)y->typmod, (unsigned)x->type_oid,
                     (int)x->typmod);
            return false;
        }
        if (cat->relflags != NULL && (x->is_key ? 1 : 0) != (cat->relflags[i] ? 1 : 0)) {
            snprintf(why, len, "the replica identity of column \"%s\" differs from the stream",
                     y->name);
            return false;
        }
    }
    return true;
}

void
dest_ddl_plan_free(dest_ddl_plan_t *plan)
{
    if (plan == NULL)
        return;
    free(plan->src);
    free(plan->fill);
    plan->src = NULL;
    plan->fill = NULL;
}

/* Appends to the plan's summary, separated by ", ". */
static void dest_ddl_say(dest_ddl_plan_t *p, const char *fmt, ...) WR_PRINTF(2, 3);

static void
dest_ddl_say(dest_ddl_plan_t *p, const char *fmt, ...)
{
    size_t off = strlen(p->summary);
    va_list ap;

    if (off + 3 >= sizeof(p->summary))
        return;
    if (off > 0) {
        memcpy(p->summary + off, ", ", 3);
        off += 2;
    }
    va_start(ap, fmt);
    vsnprintf(p->summary + off, sizeof(p->summary) - off, fmt, ap);
    va_end(ap);
}

/* Sets a RECOPY decision with its reason (replacing any summary). */
static int dest_ddl_recopy(dest_ddl_plan_t *p, const char *fmt, ...) WR_PRINTF(2, 3);

static int
dest_ddl_recopy(dest_ddl_plan_t *p, const char *fmt, ...)
{
    va_list ap;

    p->action = DEST_DDL_RECOPY;
    p->key_changed = false;
    va_start(ap, fmt);
    vsnprintf(p->summary, sizeof(p->summary), fmt, ap);
    va_end(ap);
    return 0;
}

/* Appends the key column names of s ("(a, b)" or "(none)"). */
static void
dest_ddl_keys(const wr_schema_t *s, char *buf, size_t len)
{
    size_t off = 0;
    int n = 0;

    buf[0] = '\0';
    for (uint16_t i = 0; i < s->ncols && off + 4 < len; i++) {
        int w;

        if (!s->cols[i].is_key)
            continue;
        w = snprintf(buf + off, len - off, "%s\"%s\"", n++ ? ", " : "(", s->cols[i].name);
        off += w > 0 ? (size_t)w : 0;
    }
    if (off + 2 < len)
        snprintf(buf + off, len - off, "%s", n ? ")" : "(none)");
}

/* index[a] (a = 1..natts) = position of attnum a among the replicated columns, or -1.
 * Returns the number of replicated columns. */
static int
dest_ddl_index(const dest_tmeta_t *m, int32_t *index)
{
    int n = 0;

    index[0] = -1;
    for (uint16_t a = 1; a <= m->natts; a++)
        index[a] = m->attstate[a - 1] == 'l' ? n++ : -1;
    return n;
}

int
dest_ddl_plan(const wr_schema_t *ds, const dest_tmeta_t *dm, const dest_catalog_t *cat,
              dest_ddl_plan_t *p, wr_err_t *err)
{
    return dest_ddl_plan_flags(ds, dm, cat, 0, p, err);
}

int
dest_ddl_plan_flags(const wr_schema_t *ds, const dest_tmeta_t *dm, const dest_catalog_t *cat,
                    unsigned flags, dest_ddl_plan_t *p, wr_err_t *err)
{
    const wr_schema_t *cs = cat->schema;
    const dest_tmeta_t *cm = &cat->meta;
    int32_t *didx = NULL, *cidx = NULL;
    char dropped[256] = "", added[256] = "", touched[128] = "";
    bool disappeared = false, meta_changed;
    int nadd = 0, nother = 0;
    int rc = 0;

    memset(p, 0, sizeof(*p));
    p->ncols = cs->ncols;
    p->src = calloc(cs->ncols ? cs->ncols : 1, sizeof(*p->src));
    p->fill = calloc(cs->ncols ? cs->ncols : 1, sizeof(*p->fill));
    if (p->src == NULL || p->fill == NULL)
        goto oom;
    for (uint16_t j = 0; j < cs->ncols; j++) {
        p->src[j] = -1;
        p->fill[j].kind = WR_VAL_NULL;
    }

    if (ds == NULL) {
        p->action = DEST_DDL_REFRESH;
        dest_ddl_say(p, "no schema version recorded yet: recording the source's");
        return 0;
    }
    if (strcmp(ds->nsp, cs->nsp) != 0 || strcmp(ds->name, cs->name) != 0)
        return dest_ddl_recopy(p, "the table \"%s.%s\" was renamed to \"%s.%s\"", ds->nsp, ds->name,
                               cs->nsp, cs->name);
    if (dm->natts == 0 || dm->attstate == NULL || dm->attxmin == NULL) {
        /* registered before versions existed: only an identical column list is safe */
        bool same = ds->ncols == cs->ncols;

        for (uint16_t j = 0; same && j < cs->ncols; j++)
            same = strcmp(ds->cols[j].name, cs->cols[j].name) == 0 &&
                   ds->cols[j].type_oid == cs->cols[j].type_oid &&
                   ds->cols[j].typmod == cs->cols[j].typmod;
        if (!same)
            return dest_ddl_recopy(p, "the destination's schema of the table has no attribute "
                                      "numbers to compare the changed columns with");
        p->action = DEST_DDL_REFRESH;
        dest_ddl_say(p, "first schema version with attribute numbers");
        return 0;
    }
    if (cm->natts < dm->natts || cm->attstate == NULL || cm->attxmin == NULL)
        return dest_ddl_recopy(p,
                               "the table has %u attributes in the catalog, %u when the "
                               "destination's schema was recorded",
                               (unsigned)cm->natts, (unsigned)dm->natts);
    didx = malloc(((size_t)dm->natts + 1) * sizeof(*didx));
    cidx = malloc(((size_t)cm->natts + 1) * sizeof(*cidx));
    if (didx == NULL || cidx == NULL)
        goto oom;
    if (dest_ddl_index(dm, didx) != ds->ncols || dest_ddl_index(cm, cidx) != cs->ncols) {
        dest_ddl_recopy(p, "the recorded attribute numbers do not match the columns");
        goto out;
    }

    /* attributes that existed at the destination's version */
    for (uint16_t a = 1; a <= dm->natts; a++) {
        char sd = dm->attstate[a - 1], sc = cm->attstate[a - 1];

        if (sd == 'l' && sc == 'l') {
            const wr_column_t *d = &ds->cols[didx[a]], *c = &cs->cols[cidx[a]];

            bool retyped = d->type_oid != c->type_oid || d->typmod != c->typmod;

            if (retyped && (!(flags & DEST_DDL_RETYPE) || cm->relfilenode != dm->relfilenode)) {
                dest_ddl_recopy(p,
                                "column \"%s\" changed type (type %u typmod %d to type %u typmod "
                                "%d): the stream does not carry the rewritten values",
                                c->name, (unsigned)d->type_oid, (int)d->typmod,
                                (unsigned)c->type_oid, (int)c->typmod);
                goto out;
            }
            p->src[cidx[a]] = didx[a];
            if (retyped) {
                /* not rewritten: PostgreSQL relabelled the column, every value is kept */
                dest_ddl_say(p, "change the type of column \"%s\" to %s", c->name,
                             c->type_name ? c->type_name : "?");
                nother++;
            }
            if (strcmp(d->name, c->name) != 0) {
                dest_ddl_say(p, "rename column \"%s\" to \"%s\"", d->name, c->name);
                nother++;
            } else if (!retyped && dm->attxmin[a - 1] != cm->attxmin[a - 1] && touched[0] == '\0') {
                snprintf(touched, sizeof(touched), "%s", c->name);
            }
        } else if (sd == 'l' && sc == 'd') {
            const char *name = ds->cols[didx[a]].name;

            dest_ddl_say(p, "drop column \"%s\"", name);
            snprintf(dropped + strlen(dropped), sizeof(dropped) - strlen(dropped), "%s\"%s\"",
                     dropped[0] ? ", " : "", name);
            disappeared = true;
            nother++;
        } else if (sd == 'g' && sc == 'd') {
            disappeared = true;
        } else if (sd == 'g' && sc == 'l') {
            dest_ddl_recopy(p,
                            "column \"%s\" is no longer generated: its values are not in the "
                            "stream",
                            cs->cols[cidx[a]].name);
            goto out;
        } else if (sd != sc) {
            dest_ddl_recopy(p, "attribute %u changed from '%c' to '%c' in the catalog", (unsigned)a,
                            sd, sc);
            goto out;
        }
    }
    /* attributes added since */
    for (uint16_t a = dm->natts + 1; a <= cm->natts; a++) {
        char sc = cm->attstate[a - 1];

        if (sc == 'l') {
            int j = cidx[a];
            const char *miss = cat->missing != NULL ? cat->missing[j] : NULL;

            if (miss != NULL) {
                p->fill[j].kind = WR_VAL_TEXT;
                p->fill[j].data = miss;
                p->fill[j].len = (uint32_t)strlen(miss);
                dest_ddl_say(p, "add column \"%s\" (rows before it: '%.60s')", cs->cols[j].name,
                             miss);
            } else {
                dest_ddl_say(p, "add column \"%s\" (rows before it: NULL)", cs->cols[j].name);
            }
            snprintf(added + strlen(added), sizeof(added) - strlen(added), "%s\"%s\"",
                     added[0] ? ", " : "", cs->cols[j].name);
            nadd++;
        } else if (sc == 'd') {
            disappeared = true; /* added and dropped again since */
        }
    }
    if (nadd > 0 && disappeared) {
        dest_ddl_recopy(p,
                        "columns were dropped (%s) and added (%s) at once: a rename followed by "
                        "more changes looks the same in the stream, so the table is copied again "
                        "rather than guessed",
                        dropped[0] ? dropped : "a generated or short-lived column", added);
        goto out;
    }
    if (cm->relfilenode != dm->relfilenode) {
        if (touched[0] != '\0') {
            dest_ddl_recopy(p,
                            "the table was rewritten and column \"%s\" was altered since the "
                            "destination's version (a type may have changed and back)",
                            touched);
            goto out;
        }
        for (uint16_t j = 0; j < cs->ncols; j++) {
            if (p->src[j] < 0 && p->fill[j].kind == WR_VAL_NULL) {
                dest_ddl_recopy(p,
                                "column \"%s\" was added while the table was rewritten (a "
                                "volatile default such as random() or a sequence): the values of "
                                "the existing rows are not in the stream",
                                cs->cols[j].name);
                goto out;
            }
        }
    }
    if (nadd > 0 && cat->relkind == 'p') {
        dest_ddl_recopy(p,
                        "columns (%s) were added to a partitioned table: the values of its "
                        "existing rows live in each partition",
                        added);
        goto out;
    }
    /* the key, by attribute number */
    for (uint16_t a = 1; a <= cm->natts && !p->key_changed; a++) {
        bool kd = a <= dm->natts && didx[a] >= 0 && ds->cols[didx[a]].is_key;
        bool kc = cidx[a] >= 0 && cs->cols[cidx[a]].is_key;

        p->key_changed = kd != kc;
    }
    if (p->key_changed && cs->replident != 'd') {
        /* Under REPLICA IDENTITY FULL or USING INDEX the Relation message's key flags do
         * not show the primary key, so nothing in the stream says at which change the key
         * took effect: the catalog read now may already hold a key that later DDL added,
         * while earlier changes (duplicates, say) are still to be applied. A copy is
         * exact whatever the timing. Under DEFAULT the flags change with the key, and the
         * caller only plans once the catalog describes the Relation message. */
        char kd[200], kc[200];

        dest_ddl_keys(ds, kd, sizeof(kd));
        dest_ddl_keys(cs, kc, sizeof(kc));
        dest_ddl_recopy(p,
                        "the primary key changed from %s to %s under REPLICA IDENTITY %s, "
                        "which the stream does not show at any particular change",
                        kd, kc, cs->replident == 'f' ? "FULL" : "USING INDEX");
        goto out;
    }
    if (p->key_changed) {
        char kd[200], kc[200];

        dest_ddl_keys(ds, kd, sizeof(kd));
        dest_ddl_keys(cs, kc, sizeof(kc));
        dest_ddl_say(p, "key %s to %s", kd, kc);
        nother++;
    }
    if (nadd + nother > 0) {
        p->action = DEST_DDL_FOLLOW;
        goto out;
    }
    meta_changed = cm->natts != dm->natts || cm->relfilenode != dm->relfilenode ||
                   memcmp(cm->attstate, dm->attstate, dm->natts) != 0 ||
                   memcmp(cm->attxmin, dm->attxmin, (size_t)dm->natts * sizeof(uint32_t)) != 0;
    if (meta_changed) {
        p->action = DEST_DDL_REFRESH;
        if (cm->relfilenode != dm->relfilenode)
            dest_ddl_say(p, "relfilenode %u to %u", (unsigned)dm->relfilenode,
                         (unsigned)cm->relfilenode);
        if (cm->natts != dm->natts)
            dest_ddl_say(p, "%u attributes to %u", (unsigned)dm->natts, (unsigned)cm->natts);
        if (touched[0] != '\0')
            dest_ddl_say(p, "column \"%s\" altered in place", touched);
        if (p->summary[0] == '\0')
            dest_ddl_say(p, "catalog rows changed");
    }
    goto out;
oom:
    rc = wr_err_set(err, WR_ENOMEM, "out of memory comparing the schema of \"%s.%s\"", cs->nsp,
                    cs->name);
    dest_ddl_plan_free(p);
out:
    free(didx);
    free(cidx);
    return rc;
}

/* ---- reading ahead while a destination waits --------------------------------------------- */

static int dest_ra_fd = -1;
static dest_readahead_fn dest_ra_fn;
static void *dest_ra_arg;

void
dest_set_readahead(int fd, dest_readahead_fn fn, void *arg)
{
    dest_ra_fd = fn != NULL ? fd : -1;
    dest_ra_fn = fn;
    dest_ra_arg = arg;
}

int
dest_readahead_fd(void)
{
    return dest_ra_fd;
}

bool
dest_readahead(void)
{
    return dest_ra_fn != NULL && dest_ra_fn(dest_ra_arg);
}

void
dest_readahead_poll(void)
{
    struct pollfd pf;

    if (dest_ra_fd < 0)
        return;
    pf.fd = dest_ra_fd;
    pf.events = POLLIN;
    pf.revents = 0;
    if (poll(&pf, 1, 0) > 0 && pf.revents != 0)
        (void)dest_readahead();
}
