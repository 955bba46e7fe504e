/*
 * plugin.c - loading a plugin library of one of walrelay's ABIs (see plugin.h).
 *
 * NOTES: runs in whichever process loads a plugin; persists nothing. The library is
 * loaded with RTLD_NOW (an undefined symbol is found here, not in the middle of a
 * pipeline) and RTLD_LOCAL (two plugins never see each other's symbols).
 */
#include "plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

void
wr_plugin_rebuild_hint(const wr_plugin_kind_t *kind, wr_err_t *err)
{
    wr_err_hint(err, "rebuild the plugin against walrelay's installed %s (ABI version %u)",
                kind->header, (unsigned)kind->abi_version);
}

int
wr_plugin_check_version(const wr_plugin_kind_t *kind, const char *what, uint32_t abi_version,
                        uint32_t struct_size, wr_err_t *err)
{
    if (abi_version != kind->abi_version) {
        wr_err_set(err, WR_ECONFIG,
                   "%s was built for %s ABI version %u, this walrelay implements version %u", what,
                   kind->what, (unsigned)abi_version, (unsigned)kind->abi_version);
        wr_plugin_rebuild_hint(kind, err);
        return WR_ECONFIG;
    }
    if (struct_size != kind->ops_size) {
        wr_err_set(err, WR_ECONFIG,
                   "%s has an operations table (%s) of %u bytes, walrelay's ABI version %u has "
                   "%zu",
                   what, kind->ops_type, (unsigned)struct_size, (unsigned)kind->abi_version,
                   kind->ops_size);
        wr_plugin_rebuild_hint(kind, err);
        return WR_ECONFIG;
    }
    return 0;
}

int
wr_plugin_load(const char *path, const wr_plugin_kind_t *kind, void **handle, const void **ops,
               wr_err_t *err)
{
    uint32_t head[2];
    struct stat st;
    char what[600];
    void *h, *sym;

    *handle = NULL;
    *ops = NULL;
    if (stat(path, &st) != 0) {
        int e = errno;
        wr_err_set(err, WR_ECONFIG, "cannot load \"%s\": %s", path, strerror(e));
        wr_err_hint(err, "set library to the path of the plugin's shared object (a relative "
                         "path is relative to the pipeline directory)");
        return WR_ECONFIG;
    }
    dlerror();
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *why = dlerror();
        wr_err_set(err, WR_ECONFIG, "cannot load \"%s\": %s", path, why ? why : "dlopen failed");
        wr_err_hint(err,
                    "the library or a library it needs does not load (undefined symbol, "
                    "wrong architecture, missing dependency: see ldd); build it with cc "
                    "-shared -fPIC against %s",
                    kind->header);
        return WR_ECONFIG;
    }
    dlerror();
    sym = dlsym(h, kind->symbol);
    if (sym == NULL) {
        wr_err_set(err, WR_ECONFIG, "\"%s\" does not export %s", path, kind->symbol);
        wr_err_hint(err,
                    "the library must export %s (a non-static C function; extern \"C\" in "
                    "C++; default visibility)",
                    kind->symbol);
        dlclose(h);
        return WR_ECONFIG;
    }
    *ops = kind->call_entry(sym);
    if (*ops == NULL) {
        wr_err_set(err, WR_ECONFIG, "%s() of \"%s\" returned NULL", kind->symbol, path);
        wr_err_hint(err, "%s must return a pointer to a static %s", kind->symbol, kind->ops_type);
        dlclose(h);
        return WR_ECONFIG;
    }
    /* every ABI's table begins with abi_version, struct_size */
    memcpy(head, *ops, sizeof(head));
    snprintf(what, sizeof(what), "\"%s\"", path);
    if (wr_plugin_check_version(kind, what, head[0], head[1], err) != 0) {
        *ops = NULL;
        dlclose(h);
        return WR_ECONFIG;
    }
    *handle = h;
    return 0;
}

void
wr_plugin_unload(void *handle)
{
    if (handle != NULL)
        dlclose(handle);
}
