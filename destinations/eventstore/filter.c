/*
 * filter.c - the text forms of the event store's read API: a filter
 * 'event_kind=K[,aggregate_kind=T][,aggregate_id=ID][,after=P]' (store.h es_filter_parse)
 * and JSON without the whitespace between tokens (es_json_minify).
 *
 * NOTES: pure code on outside bytes (the command line of `walrelay events`); fuzzed by
 * tests/fuzz/fuzz_esfilter.c. No allocation: the filter's strings point into the text,
 * which is cut in place.
 */
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The end of a JSON array value starting at p ('['), or NULL if it is not closed. */
static char *
es_json_array_end(char *p)
{
    int depth = 0;
    bool in_str = false;

    for (; *p; p++) {
        if (in_str) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '"')
                in_str = false;
            continue;
        }
        if (*p == '"')
            in_str = true;
        else if (*p == '[')
            depth++;
        else if (*p == ']' && --depth == 0)
            return p + 1;
    }
    return NULL;
}

static bool
es_parse_i64(const char *s, int64_t *out)
{
    char *end = NULL;
    long long v;

    if (s[0] == '\0' || s[0] == ' ' || s[0] == '+')
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

int
es_filter_parse(char *text, wr_es_filter_t *f, wr_es_error_t *err)
{
    char *p = text;

    memset(f, 0, sizeof(*f));
    while (*p) {
        char *key = p, *eq = strchr(p, '='), *val, *end;
        const char **slot = NULL;

        if (eq == NULL)
            return es_err(err, WR_ES_EINVAL, "\"%.100s\" is not KEY=VALUE", key);
        *eq = '\0';
        val = eq + 1;
        if (strcmp(key, "aggregate_id") == 0 && val[0] == '[') {
            end = es_json_array_end(val);
            if (end == NULL || (*end != '\0' && *end != ','))
                return es_err(err, WR_ES_EINVAL, "aggregate_id %.100s is not a closed JSON array",
                              val);
        } else {
            end = strchr(val, ',');
            if (end == NULL)
                end = val + strlen(val);
        }
        p = *end ? end + 1 : end;
        *end = '\0';
        if (val[0] == '\0')
            return es_err(err, WR_ES_EINVAL, "%.40s has an empty value", key);
        if (strcmp(key, "event_kind") == 0) {
            slot = &f->event_kind;
        } else if (strcmp(key, "aggregate_kind") == 0) {
            slot = &f->aggregate_kind;
        } else if (strcmp(key, "aggregate_id") == 0) {
            slot = &f->aggregate_id;
        } else if (strcmp(key, "after") == 0) {
            if (f->has_after)
                return es_err(err, WR_ES_EINVAL, "after is given twice");
            if (!es_parse_i64(val, &f->after))
                return es_err(err, WR_ES_EINVAL, "after=%.40s is not a position", val);
            if (f->after < 0)
                return es_err(err, WR_ES_EINVAL,
                              "after=%.40s is negative (positions start at 1; after=0 means "
                              "from the start)",
                              val);
            f->has_after = true;
            continue;
        } else {
            return es_err(err, WR_ES_EINVAL,
                          "unknown key \"%.40s\" (event_kind, aggregate_kind, aggregate_id, "
                          "after)",
                          key);
        }
        if (*slot != NULL)
            return es_err(err, WR_ES_EINVAL, "%s is given twice", key);
        *slot = val;
    }
    if (f->event_kind == NULL)
        return es_err(err, WR_ES_EINVAL, "event_kind is required");
    return 0;
}

size_t
es_json_minify(const char *in, char *out)
{
    size_t o = 0;
    bool in_str = false;

    for (size_t i = 0; in[i]; i++) {
        char c = in[i];

        if (in_str) {
            out[o++] = c;
            if (c == '\\' && in[i + 1])
                out[o++] = in[++i];
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        if (c == '"')
            in_str = true;
        out[o++] = c;
    }
    out[o] = '\0';
    return o;
}
