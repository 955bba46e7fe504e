/*
 * registry.c - the table of destination types and what is generic about them: finding a
 * type, checking the [destination] keys against its key list, the section `walrelay init`
 * writes, preflight and open.
 *
 * NOTES: runs in the supervisor (init, check, run, reload) and both workers. Persists
 * nothing. A value of a key marked secret never appears in a message. The entries live
 * with their destinations (sqlite/sqlite_entry.c, postgres/pg_entry.c, null.c, abi.c for plugin).
 */
#include "registry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* one line per destination type */
/* clang-format off */
static const dest_type_t *const dest_types[] = {
    &dest_type_sqlite,
    &dest_type_postgres,
    &dest_type_null,
    &dest_type_http,
    &dest_type_jsonl,
    &dest_type_nats,
    &dest_type_eventstore,
    &dest_type_plugin,
};
/* clang-format on */
#define DEST_NTYPES (sizeof(dest_types) / sizeof(dest_types[0]))

const dest_type_t *
dest_type_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < DEST_NTYPES; i++)
        if (strcmp(dest_types[i]->name, name) == 0)
            return dest_types[i];
    return NULL;
}

size_t
dest_type_count(void)
{
    return DEST_NTYPES;
}

const dest_type_t *
dest_type_at(size_t n)
{
    return n < DEST_NTYPES ? dest_types[n] : NULL;
}

void
dest_type_list(char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < DEST_NTYPES && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", dest_types[i]->name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static const dest_keyspec_t *
dest_keyspec(const dest_type_t *t, const char *key)
{
    for (size_t i = 0; i < t->nkeys; i++)
        if (strcmp(t->keys[i].key, key) == 0)
            return &t->keys[i];
    return NULL;
}

static void
dest_key_list(const dest_type_t *t, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    used = (size_t)snprintf(buf, len, "type");
    for (size_t i = 0; i < t->nkeys && used < len; i++) {
        int n = snprintf(buf + used, len - used, ", %s", t->keys[i].key);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

int
dest_config_error(const wr_config_t *cfg, const char *key, int code, wr_err_t *err, const char *fmt,
                  ...)
{
    const wr_cfg_item_t *it = key ? cfg_dest_item(cfg, key) : NULL;
    int line = it ? it->line : strcmp(key ? key : "", "type") == 0 ? cfg->dest_type_line : 0;
    char msg[768];
    va_list ap;

    if (line == 0)
        line = cfg->dest_line;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        wr_err_set(err, code, "%s:%d: [destination] %s%s%s",
                   cfg->path ? cfg->path : "walrelay.conf", line, key ? key : "", key ? ": " : "",
                   msg);
    else
        wr_err_set(err, code, "%s: [destination] %s%s%s", cfg->path ? cfg->path : "walrelay.conf",
                   key ? key : "", key ? ": " : "", msg);
    return code;
}

static int dest_validate(const wr_config_t *cfg, bool init, wr_err_t *err);

int
dest_config_check(wr_config_t *cfg, wr_err_t *err)
{
    if (cfg->dest_type == NULL && (cfg->dest_type = wr_strdup(DEST_DEFAULT_TYPE)) == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    return dest_validate(cfg, false, err);
}

int
dest_init_check(wr_config_t *cfg, wr_err_t *err)
{
    if (cfg->dest_type == NULL && (cfg->dest_type = wr_strdup(DEST_DEFAULT_TYPE)) == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    return dest_validate(cfg, true, err);
}

int
dest_config_validate(const wr_config_t *cfg, wr_err_t *err)
{
    return dest_validate(cfg, false, err);
}

static int
dest_validate(const wr_config_t *cfg, bool init, wr_err_t *err)
{
    const dest_type_t *t;
    const char *path = cfg->path ? cfg->path : "walrelay.conf";
    const char *type = cfg->dest_type ? cfg->dest_type : DEST_DEFAULT_TYPE;
    char list[256];

    t = dest_type_find(type);
    if (t == NULL) {
        dest_type_list(list, sizeof(list));
        if (cfg->dest_type_line > 0)
            wr_err_set(err, WR_ECONFIG,
                       "%s:%d: invalid value \"%s\" for [destination] type: no such destination "
                       "type",
                       path, cfg->dest_type_line, type);
        else
            wr_err_set(err, WR_ECONFIG, "%s: unknown destination type \"%s\"", path, type);
        wr_err_hint(err,
                    "registered destination types: %s (a plugin: type = plugin and library = "
                    "/path/to/lib.so)",
                    list);
        return WR_ECONFIG;
    }
    for (size_t i = 0; i < cfg->dest_nitems; i++) {
        const wr_cfg_item_t *it = &cfg->dest_items[i];
        const dest_keyspec_t *k = dest_keyspec(t, it->key);

        if (k == NULL && !t->extra_keys) {
            wr_err_set(err, WR_ECONFIG,
                       "%s:%d: unknown key \"%s\" in section [destination] (type = %s)", path,
                       it->line, it->key, t->name);
            dest_key_list(t, list, sizeof(list));
            wr_err_hint(err, "valid keys in [destination] for type %s: %s", t->name, list);
            return WR_ECONFIG;
        }
        if (k != NULL && (k->path || k->required) && it->value[0] == '\0') {
            wr_err_set(err, WR_ECONFIG, "%s:%d: empty value for [destination] %s", path, it->line,
                       it->key);
            if (k->defval)
                wr_err_hint(err, "remove the line to use %s, or name a file", k->defval);
            else
                wr_err_hint(err, "set %s (%s)", it->key, k->help ? k->help : "see the docs");
            return WR_ECONFIG;
        }
    }
    for (size_t i = 0; i < t->nkeys; i++) {
        const dest_keyspec_t *k = &t->keys[i];

        if (!k->required || cfg_dest_item(cfg, k->key) != NULL)
            continue;
        if (cfg->dest_line > 0)
            wr_err_set(err, WR_ECONFIG,
                       "%s:%d: missing required key \"%s\" in section [destination] (type = %s)",
                       path, cfg->dest_line, k->key, t->name);
        else
            wr_err_set(err, WR_ECONFIG,
                       "%s: missing required key \"%s\" in section [destination] (type = %s)", path,
                       k->key, t->name);
        wr_err_hint(err, "add \"%s = ...\" below [destination]: %s", k->key,
                    k->help ? k->help : "");
        return WR_ECONFIG;
    }
    if (init && t->init_check)
        return t->init_check(cfg, err);
    return t->validate ? t->validate(cfg, err) : 0;
}

const char *
dest_config_value(const wr_config_t *cfg, const char *key)
{
    const wr_cfg_item_t *it = cfg_dest_item(cfg, key);
    const dest_type_t *t;
    const dest_keyspec_t *k;

    if (it != NULL)
        return it->value;
    t = dest_type_find(cfg->dest_type ? cfg->dest_type : DEST_DEFAULT_TYPE);
    k = t ? dest_keyspec(t, key) : NULL;
    return k ? k->defval : NULL;
}

int
dest_config_path(const wr_config_t *cfg, const char *key, char **out, wr_err_t *err)
{
    const char *v = dest_config_value(cfg, key);
    const char *dir = cfg->dir ? cfg->dir : ".";
    size_t dl = strlen(dir);
    char *p;

    *out = NULL;
    if (v == NULL || v[0] == '\0') {
        dest_config_error(cfg, key, WR_ECONFIG, err, "no file name given");
        wr_err_hint(err, "set %s = FILE in the [destination] section", key);
        return WR_ECONFIG;
    }
    if (v[0] == '/') {
        p = wr_strdup(v);
    } else {
        p = malloc(dl + strlen(v) + 2);
        if (p != NULL)
            snprintf(p, dl + strlen(v) + 2, "%s%s%s", dir, dl > 0 && dir[dl - 1] == '/' ? "" : "/",
                     v);
    }
    if (p == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    *out = p;
    return 0;
}

/* Can value be written as "key = value" and read back unchanged? */
static int
dest_init_writable(const char *key, const char *value, bool secret, wr_err_t *err)
{
    size_t n = strlen(value);

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c == ';' || c == '#' || c < 0x20 || c == 0x7f) {
            if (secret)
                wr_err_set(err, WR_ECONFIG,
                           "the value of [destination] %s contains a character walrelay.conf "
                           "cannot hold (';', '#' or a control character)",
                           key);
            else
                wr_err_set(err, WR_ECONFIG,
                           "the value \"%s\" of [destination] %s contains a character "
                           "walrelay.conf cannot hold (';', '#' or a control character)",
                           value, key);
            return WR_ECONFIG;
        }
    }
    if (n > 0 &&
        (value[0] == ' ' || value[0] == '\t' || value[n - 1] == ' ' || value[n - 1] == '\t'))
        return wr_err_set(err, WR_ECONFIG,
                          "the value of [destination] %s has leading or trailing whitespace", key);
    if (n > 150)
        return wr_err_set(err, WR_ECONFIG,
                          "the value of [destination] %s is too long for walrelay.conf (%zu "
                          "bytes, at most 150)",
                          key, n);
    return 0;
}

static void
dest_emit_comment(FILE *f, const char *h)
{
    while (h && *h) {
        const char *nl = strchr(h, '\n');
        size_t n = nl ? (size_t)(nl - h) : strlen(h);
        fprintf(f, "# %.*s\n", (int)n, h);
        h += n + (nl ? 1 : 0);
    }
}

int
dest_init_section(const char *spec, char **text, wr_err_t *err)
{
    const dest_type_t *t;
    const char *colon, *arg = NULL;
    const char *values[32] = {0};
    char name[64], list[256];
    size_t len = 0;
    FILE *f;
    int rc;

    *text = NULL;
    if (spec == NULL)
        spec = DEST_DEFAULT_TYPE;
    colon = strchr(spec, ':');
    snprintf(name, sizeof(name), "%.*s", (int)(colon ? (size_t)(colon - spec) : strlen(spec)),
             spec);
    if (colon)
        arg = colon + 1;
    t = dest_type_find(name);
    if (t == NULL) {
        dest_type_list(list, sizeof(list));
        wr_err_set(err, WR_ECONFIG, "unknown destination type \"%s\" in --destination %s", name,
                   spec);
        wr_err_hint(err,
                    "registered destination types: %s (e.g. --destination sqlite:PATH, "
                    "--destination plugin:/path/to/lib.so)",
                    list);
        return WR_ECONFIG;
    }
    if (t->nkeys > sizeof(values) / sizeof(values[0]))
        return wr_err_set(err, WR_EINVAL, "destination type %s has too many keys", t->name);
    if ((rc = t->init_arg(arg, values, err)) < 0) {
        if (err->hint[0] == '\0')
            wr_err_hint(err, "--destination %s", t->init_usage);
        return rc;
    }
    for (size_t i = 0; i < t->nkeys; i++) {
        if (values[i] &&
            (rc = dest_init_writable(t->keys[i].key, values[i], t->keys[i].secret, err)) < 0)
            return rc;
        if (t->keys[i].required && values[i] == NULL) {
            wr_err_set(err, WR_ECONFIG, "destination type %s needs %s", t->name, t->keys[i].key);
            wr_err_hint(err, "--destination %s", t->init_usage);
            return WR_ECONFIG;
        }
    }
    f = open_memstream(text, &len);
    if (f == NULL)
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    /* one comment line per fact: libinih reads lines of at most 198 bytes, and the
     * summary and the list of types grow with every destination */
    fprintf(f, "# Destination type: %s (%s).\n# Registered types: ", t->name, t->summary);
    for (size_t i = 0; i < DEST_NTYPES; i++)
        fprintf(f, "%s%s", i ? ", " : "", dest_types[i]->name);
    fprintf(f, ".\n# The other keys depend on the type (docs/destinations.md).\ntype = %s\n",
            t->name);
    for (size_t i = 0; i < t->nkeys; i++) {
        const dest_keyspec_t *k = &t->keys[i];

        fputc('\n', f);
        dest_emit_comment(f, k->help);
        if (k->defval && !values[i])
            fprintf(f, "# default: %s\n", k->defval);
        if (values[i] || k->defval)
            fprintf(f, "%s = %s\n", k->key, values[i] ? values[i] : k->defval);
    }
    if (fclose(f) != 0) {
        free(*text);
        *text = NULL;
        return wr_err_set(err, WR_ENOMEM, "out of memory");
    }
    return 0;
}

void
dest_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    const dest_type_t *t = dest_type_find(cfg->dest_type ? cfg->dest_type : DEST_DEFAULT_TYPE);

    if (t != NULL && t->describe != NULL)
        t->describe(cfg, buf, len);
    else
        snprintf(buf, len, "type %s", t ? t->name : (cfg->dest_type ? cfg->dest_type : "?"));
}

int
dest_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    const dest_type_t *t = dest_type_find(cfg->dest_type ? cfg->dest_type : DEST_DEFAULT_TYPE);

    int rc;

    snprintf(summary, len, "%s", t ? t->name : "?");
    if ((rc = dest_config_validate(cfg, err)) < 0)
        return rc;
    return t->preflight ? t->preflight(cfg, summary, len, err) : 0;
}

int
dest_open(wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    const dest_type_t *t;
    int rc;

    *out = NULL;
    if ((rc = dest_config_check(cfg, err)) < 0)
        return rc;
    t = dest_type_find(cfg->dest_type);
    return t->open(cfg, role, out, err);
}
