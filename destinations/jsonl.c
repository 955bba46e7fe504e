/*
 * jsonl.c - the "jsonl" destination: one JSON object per line (docs/events.md) into a
 * file, exactly once, or onto walrelay's standard output (`jsonl:-`), at least once.
 *
 * NOTES: written on the public destination ABI (walrelay/destination.h), like a plugin,
 * and opened through the adapter (destinations/abi.c). Runs in walrelay-apply and in every
 * walrelay-sync at the same time: several processes append to the one file.
 *
 * FILES (PATH = [destination] path)
 *   PATH                  the events, one per line; only whole batches are appended
 *   PATH.walrelay         the state: the confirmed end of PATH (offset), the rotation
 *                         generation, the pipeline that owns the file, and the last key of
 *                         every stream ("apply", "sync_<relid>"); text, replaced atomically
 *   PATH.walrelay.lock    flock(2) target: whoever holds it exclusively may append
 *   PATH.NNNNNN           rotated files (rotate_bytes), oldest = lowest number
 *   PATH.copy-<relid>     a table's copy while it runs (below "copies")
 *
 * EXACTLY ONCE ACROSS PROCESSES AND CRASHES
 *   Each process buffers the events it is given in memory (write_events,
 *   write_table_rows) and writes nothing until flush(stream, key). flush then
 *     1. takes the exclusive lock (blocking: appends are short);
 *     2. reads the state; if PATH is longer than the confirmed offset, a process crashed
 *        between its append and its state update: those bytes were never confirmed, their
 *        writer delivers them again, so PATH is cut back to the offset (ftruncate);
 *     3. writes the whole batch at the offset and fsyncs PATH;
 *     4. writes the new state (offset + length, stream -> key) to PATH.walrelay.tmp,
 *        fsyncs it, renames it over PATH.walrelay and fsyncs the directory;
 *     5. rotates if asked (below), and unlocks.
 *   A crash before 4's rename leaves the old state: the batch is cut at the next lock and
 *   delivered again after the key the state holds. A crash after it leaves the batch and
 *   its key: walrelay resumes after the key (last_key reads the state). So no line is
 *   ever confirmed twice, and none is lost. Batches of different processes never
 *   interleave (3 happens under the lock). discard() drops the buffer: nothing was
 *   written. The same cut happens at open, so a reader that follows the file sees an
 *   unconfirmed tail disappear at most once per crash; a reader that must never see one
 *   reads PATH only up to the offset in PATH.walrelay.
 *   A copy goes to PATH only once complete (see "copies" below), so PATH holds each
 *   finished copy once; every copy opens with a "truncate" line of phase "copy"
 *   (consumers drop what an earlier copy of the table delivered: walrelay resync).
 *
 * ROTATION (rotate_bytes > 0): after a flush that takes PATH to rotate_bytes or more,
 *   PATH is renamed to PATH.<generation+1, 6 digits> and the state says generation + 1,
 *   offset 0 (a crash in between is finished by the next lock holder: PATH missing and
 *   the rotated file there). Batches never straddle two files.
 *
 * STANDARD OUTPUT (path = -): each flush writes its batch with the same lock (on
 *   DIR/jsonl-stdout.lock), so lines of the processes never interleave. No state: after a
 *   crash walrelay delivers again from the slot's confirmed position (at least once;
 *   the key of each line is the idempotency key).
 */
#include "abi.h"
#include "event_json.h"
#include "registry.h"

#include "../common/failpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define JL_STATE_MAGIC "walrelay jsonl state 1"
#define JL_MAX_STREAMS 4096
#define JL_STATE_MAX   (1024 * 1024) /* a state file is a few lines per stream */

typedef struct jl_stream_s {
    char name[64];
    wr_dest_key_t key;
} jl_stream_t;

/* A copy moved into PATH: the side file of this attempt is not appended again. */
typedef struct jl_copied_s {
    uint32_t relid;
    uint64_t attempt;
} jl_copied_t;

#define JL_MAX_COPIED 64

typedef struct jl_state_s {
    char pipeline[128];
    uint64_t generation;
    uint64_t offset;
    size_t n, cap;
    jl_stream_t *streams;
    size_t ncopied;
    jl_copied_t copied[JL_MAX_COPIED];
} jl_state_t;

typedef struct jl_s {
    const wr_dest_host_t *host;
    bool to_stdout;
    char *path;       /* PATH (absolute) */
    char *state_path; /* PATH.walrelay */
    char *tmp_path;   /* PATH.walrelay.tmp */
    char *lock_path;  /* PATH.walrelay.lock, or DIR/jsonl-stdout.lock */
    char *dir;        /* directory of PATH (fsync after renames) */
    char pipeline[128];
    uint64_t rotate_bytes; /* 0: never */
    int lock_fd;
    jw_buf_t buf; /* the batch since the last flush */
    size_t nlines;
    /* the copy in this instance (sync role) */
    uint32_t copy_relid;
    int64_t copy_attempt_us;
    uint64_t copy_n;
    bool stage_copy; /* a file, role sync: copies go to PATH.copy-<relid> first */
    bool side_fresh; /* a copy started: the side file is emptied at its next write */
    jw_buf_t side;   /* copied lines since the last flush */
    jl_state_t st;
} jl_t;

/* ---- configuration -------------------------------------------------------------------- */

static int
jl_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int
jl_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    const char *path = NULL;

    for (size_t i = 0; i < cfg->nitems; i++) {
        const wr_dest_kv_t *it = &cfg->items[i];
        uint64_t v;

        if (strcmp(it->key, "path") == 0) {
            path = it->value;
        } else if (strcmp(it->key, "rotate_bytes") == 0) {
            if (jl_parse_u64(it->value, &v) != 0) {
                wr_dest_error_set(err, WR_DEST_ECONFIG, it->key,
                                  "invalid value \"%s\": expected a number of bytes (0: never "
                                  "rotate)",
                                  it->value);
                wr_dest_error_hint(err, "e.g. rotate_bytes = 1073741824 (1 GiB)");
                return WR_DEST_ECONFIG;
            }
            if (v > 0 && v < 4096) {
                wr_dest_error_set(err, WR_DEST_ECONFIG, it->key,
                                  "rotate_bytes = %" PRIu64 " is too small (at least 4096)", v);
                wr_dest_error_hint(err, "0 never rotates; otherwise at least 4096 bytes");
                return WR_DEST_ECONFIG;
            }
        } else {
            wr_dest_error_set(err, WR_DEST_ECONFIG, it->key,
                              "unknown key \"%s\" for the jsonl destination", it->key);
            wr_dest_error_hint(err, "the jsonl destination takes path and rotate_bytes");
            return WR_DEST_ECONFIG;
        }
    }
    if (path == NULL || path[0] == '\0') {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "path",
                          "the jsonl destination needs a file (or - for standard output)");
        wr_dest_error_hint(err, "path = events.jsonl (relative to the pipeline directory), or "
                                "path = - for walrelay's standard output");
        return WR_DEST_ECONFIG;
    }
    if (strcmp(path, "-") == 0 && wr_dest_config_get(cfg, "rotate_bytes") != NULL &&
        strcmp(wr_dest_config_get(cfg, "rotate_bytes"), "0") != 0) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "rotate_bytes",
                          "rotate_bytes needs a file: standard output cannot be rotated");
        wr_dest_error_hint(err, "remove rotate_bytes, or set path to a file");
        return WR_DEST_ECONFIG;
    }
    return WR_DEST_OK;
}

/* ---- small helpers -------------------------------------------------------------------- */

static char *
jl_concat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = malloc(na + nb + 1);

    if (p != NULL) {
        memcpy(p, a, na);
        memcpy(p + na, b, nb + 1);
    }
    return p;
}

static int
jl_errno(wr_dest_error_t *err, int e, const char *what, const char *path)
{
    wr_dest_error_set(err, WR_DEST_EIO, NULL, "%s \"%s\": %s", what, path, strerror(e));
    if (e == ENOSPC || e == EDQUOT)
        wr_dest_error_hint(err, "free space on the file system (walrelay retries)");
    else if (e == EACCES || e == EPERM || e == EROFS)
        wr_dest_error_hint(err, "check the owner and mode of the file and its directory");
    return WR_DEST_EIO;
}

static int
jl_write_all(int fd, const char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = off >= 0 ? pwrite(fd, p, n, off) : write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        if (off >= 0)
            off += w;
    }
    return 0;
}

static int
jl_fsync_dir(jl_t *j, wr_dest_error_t *err)
{
    int fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0)
        return jl_errno(err, errno, "cannot open the directory", j->dir);
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return jl_errno(err, e, "cannot fsync the directory", j->dir);
    }
    close(fd);
    return 0;
}

static int
jl_lock(jl_t *j, int how, wr_dest_error_t *err)
{
    while (flock(j->lock_fd, how) != 0) {
        if (errno == EINTR)
            continue;
        return jl_errno(err, errno, "cannot lock", j->lock_path);
    }
    return 0;
}

static void
jl_unlock(jl_t *j)
{
    (void)flock(j->lock_fd, LOCK_UN);
}

static int64_t
jl_wall_us(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* ---- the state file ------------------------------------------------------------------- */

static void
jl_state_clear(jl_state_t *st)
{
    free(st->streams);
    memset(st, 0, sizeof(*st));
}

static jl_stream_t *
jl_state_find(jl_state_t *st, const char *name)
{
    for (size_t i = 0; i < st->n; i++)
        if (strcmp(st->streams[i].name, name) == 0)
            return &st->streams[i];
    return NULL;
}

static int
jl_state_put(jl_state_t *st, const char *name, const wr_dest_key_t *key)
{
    jl_stream_t *s = jl_state_find(st, name);

    if (s == NULL) {
        if (st->n == JL_MAX_STREAMS)
            return -1;
        if (st->n == st->cap) {
            size_t ncap = st->cap ? st->cap * 2 : 8;
            jl_stream_t *ns = realloc(st->streams, ncap * sizeof(*ns));
            if (ns == NULL)
                return -1;
            st->streams = ns;
            st->cap = ncap;
        }
        s = &st->streams[st->n++];
        memset(s, 0, sizeof(*s));
        snprintf(s->name, sizeof(s->name), "%s", name);
    }
    s->key = *key;
    return 0;
}

static void
jl_state_del(jl_state_t *st, const char *name)
{
    jl_stream_t *s = jl_state_find(st, name);

    if (s != NULL)
        *s = st->streams[--st->n];
}

static bool
jl_copied_has(const jl_state_t *st, uint32_t relid, uint64_t attempt)
{
    for (size_t i = 0; i < st->ncopied; i++)
        if (st->copied[i].relid == relid && st->copied[i].attempt == attempt)
            return true;
    return false;
}

static void
jl_copied_del(jl_state_t *st, uint32_t relid)
{
    for (size_t i = 0; i < st->ncopied;) {
        if (st->copied[i].relid == relid)
            st->copied[i] = st->copied[--st->ncopied];
        else
            i++;
    }
}

static void
jl_copied_set(jl_state_t *st, uint32_t relid, uint64_t attempt)
{
    jl_copied_del(st, relid);
    if (st->ncopied == JL_MAX_COPIED) /* the oldest entry: its side file is long gone */
        memmove(&st->copied[0], &st->copied[1], (JL_MAX_COPIED - 1) * sizeof(st->copied[0]));
    else
        st->ncopied++;
    st->copied[st->ncopied - 1].relid = relid;
    st->copied[st->ncopied - 1].attempt = attempt;
}

/* Stream names become one word of the state file. */
static bool
jl_stream_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= sizeof(((jl_stream_t *)0)->name))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

static int
jl_state_damaged(jl_t *j, int line, const char *what, wr_dest_error_t *err)
{
    wr_dest_error_set(err, WR_DEST_EIO, NULL, "the state file \"%s\" is damaged: line %d: %s",
                      j->state_path, line, what);
    wr_dest_error_hint(err, "it is written only by walrelay; restore it, or move the events file "
                            "and its .walrelay files away and resync every table");
    return WR_DEST_EIO;
}

/* Parses the text of a state file into *st (emptied first). 0, or -1 with *line and why
 * (a static string). Pure: the fuzzer calls it through dest_jsonl_state_parse. */
static int
jl_state_parse(const char *text, size_t len, jl_state_t *st, int *line, const char **why)
{
    size_t pos = 0;
    bool have_offset = false;
    int ln = 0;

    jl_state_clear(st);
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        char buf[512], word[32], arg1[128], arg2[64];
        size_t n;
        int got;

        *line = ++ln;
        if (nl == NULL || (size_t)(nl - (text + pos)) >= sizeof(buf)) {
            *why = "line too long or not terminated";
            return -1;
        }
        n = (size_t)(nl - (text + pos));
        memcpy(buf, text + pos, n);
        buf[n] = '\0';
        pos += n + 1;
        if (strlen(buf) != n) {
            *why = "a NUL byte in a line";
            return -1;
        }
        if (ln == 1) {
            if (strcmp(buf, JL_STATE_MAGIC) != 0) {
                *why = "not a walrelay jsonl state file";
                return -1;
            }
            continue;
        }
        got = sscanf(buf, "%31s %127s %63s", word, arg1, arg2);
        if (got == 2 && strcmp(word, "pipeline") == 0) {
            memcpy(st->pipeline, arg1, sizeof(st->pipeline));
        } else if (got == 2 && strcmp(word, "generation") == 0 &&
                   jl_parse_u64(arg1, &st->generation) == 0) {
        } else if (got == 2 && strcmp(word, "offset") == 0 &&
                   jl_parse_u64(arg1, &st->offset) == 0) {
            have_offset = true;
        } else if (got == 3 && strcmp(word, "copy") == 0) {
            uint64_t relid, attempt;

            if (jl_parse_u64(arg1, &relid) != 0 || relid == 0 || relid > UINT32_MAX ||
                jl_parse_u64(arg2, &attempt) != 0 || st->ncopied == JL_MAX_COPIED) {
                *why = "bad copy line";
                return -1;
            }
            st->copied[st->ncopied].relid = (uint32_t)relid;
            st->copied[st->ncopied].attempt = attempt;
            st->ncopied++;
        } else if (got == 3 && strcmp(word, "stream") == 0 && jl_stream_name_ok(arg1)) {
            wr_dest_key_t k;

            if (evj_key_parse(arg2, strlen(arg2), &k) != 0) {
                *why = "bad key";
                return -1;
            }
            if (jl_state_put(st, arg1, &k) != 0) {
                *why = "out of memory, or too many streams";
                return -1;
            }
        } else {
            *why = "unexpected line";
            return -1;
        }
    }
    if (!have_offset) {
        *line = ln;
        *why = "no offset line";
        return -1;
    }
    return 0;
}

int
dest_jsonl_state_parse(const char *text, size_t len, char *why, size_t whylen)
{
    jl_state_t st;
    const char *w = "";
    int line = 0, rc;

    memset(&st, 0, sizeof(st));
    rc = jl_state_parse(text, len, &st, &line, &w);
    if (rc != 0)
        snprintf(why, whylen, "line %d: %s", line, w);
    else
        snprintf(why, whylen, "pipeline %s offset %llu streams %zu", st.pipeline,
                 (unsigned long long)st.offset, st.n);
    jl_state_clear(&st);
    return rc;
}

/* Reads PATH.walrelay into *st. *found = false (st empty) if there is none. */
static int
jl_state_read(jl_t *j, jl_state_t *st, bool *found, wr_dest_error_t *err)
{
    FILE *f = fopen(j->state_path, "re");
    char *text;
    size_t len;
    const char *why = "";
    int line = 0, rc;

    jl_state_clear(st);
    *found = false;
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        return jl_errno(err, errno, "cannot read the state file", j->state_path);
    }
    text = malloc(JL_STATE_MAX + 1);
    if (text == NULL) {
        fclose(f);
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    }
    len = fread(text, 1, JL_STATE_MAX + 1, f);
    if (ferror(f)) {
        int e = errno;
        fclose(f);
        free(text);
        return jl_errno(err, e, "cannot read the state file", j->state_path);
    }
    fclose(f);
    if (len > JL_STATE_MAX) {
        free(text);
        return jl_state_damaged(j, 0, "larger than any state walrelay writes", err);
    }
    rc = jl_state_parse(text, len, st, &line, &why);
    free(text);
    if (rc != 0)
        return jl_state_damaged(j, line, why, err);
    *found = true;
    return 0;
}

/* Replaces PATH.walrelay with *st: tmp file, fsync, rename, fsync of the directory. */
static int
jl_state_write(jl_t *j, const jl_state_t *st, wr_dest_error_t *err)
{
    jw_buf_t b;
    char key[EVJ_KEY_LEN], num[64];
    int fd, rc = 0;

    jw_init(&b);
    jw_lit(&b, JL_STATE_MAGIC "\npipeline ");
    jw_lit(&b, st->pipeline[0] ? st->pipeline : "-");
    snprintf(num, sizeof(num), "\ngeneration %" PRIu64 "\noffset %" PRIu64 "\n", st->generation,
             st->offset);
    jw_lit(&b, num);
    for (size_t i = 0; i < st->n; i++) {
        jw_lit(&b, "stream ");
        jw_lit(&b, st->streams[i].name);
        jw_lit(&b, " ");
        jw_lit(&b, evj_key(&st->streams[i].key, key));
        jw_lit(&b, "\n");
    }
    for (size_t i = 0; i < st->ncopied; i++) {
        snprintf(num, sizeof(num), "copy %" PRIu32 " %" PRIu64 "\n", st->copied[i].relid,
                 st->copied[i].attempt);
        jw_lit(&b, num);
    }
    if (jw_failed(&b)) {
        jw_free(&b);
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory writing the state");
    }
    fd = open(j->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = jl_errno(err, errno, "cannot write the state file", j->tmp_path);
        goto out;
    }
    if (jl_write_all(fd, b.data, b.len, -1) != 0 || fsync(fd) != 0) {
        rc = jl_errno(err, errno, "cannot write the state file", j->tmp_path);
        close(fd);
        goto out;
    }
    close(fd);
    if (rename(j->tmp_path, j->state_path) != 0) {
        rc = jl_errno(err, errno, "cannot replace the state file", j->state_path);
        goto out;
    }
    rc = jl_fsync_dir(j, err);
out:
    jw_free(&b);
    return rc;
}

/* Under the exclusive lock: reads the state (creating it for a file walrelay never
 * wrote: what is in it stays, walrelay appends after it), finishes an interrupted
 * rotation and cuts PATH back to the confirmed offset. Returns PATH's descriptor, open
 * for writing, in *fd. */
static int
jl_recover(jl_t *j, int *fd, wr_dest_error_t *err)
{
    struct stat sb;
    bool found;
    int rc;

    *fd = -1;
    if ((rc = jl_state_read(j, &j->st, &found, err)) < 0)
        return rc;
    if (found && strcmp(j->st.pipeline, j->pipeline) != 0) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "path",
                          "\"%s\" is written by pipeline \"%s\", not \"%s\" (see \"%s\")", j->path,
                          j->st.pipeline, j->pipeline, j->state_path);
        wr_dest_error_hint(err, "give each pipeline its own file");
        return WR_DEST_ECONFIG;
    }
    if (found && stat(j->path, &sb) != 0 && errno == ENOENT) {
        char rotated[PATH_MAX];
        struct stat rb;

        /* renamed away by a rotation whose state update did not happen */
        snprintf(rotated, sizeof(rotated), "%s.%06" PRIu64, j->path, j->st.generation + 1);
        if (j->st.offset > 0 && stat(rotated, &rb) == 0 && (uint64_t)rb.st_size >= j->st.offset) {
            wr_dest_log(j->host, WR_DEST_LOG_INFO,
                        "finishing a rotation a crash interrupted file=\"%s\"", rotated);
            j->st.generation++;
            j->st.offset = 0;
            if ((rc = jl_state_write(j, &j->st, err)) < 0)
                return rc;
        } else if (j->st.offset > 0) {
            wr_dest_error_set(err, WR_DEST_EIO, NULL,
                              "\"%s\" is missing, but its state \"%s\" says %" PRIu64
                              " bytes are confirmed in it",
                              j->path, j->state_path, j->st.offset);
            wr_dest_error_hint(err, "the file was moved or deleted outside walrelay: put it back, "
                                    "or remove the .walrelay file to start a new one");
            return WR_DEST_EIO;
        }
    }
    *fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0)
        return jl_errno(err, errno, "cannot open", j->path);
    if (fstat(*fd, &sb) != 0) {
        rc = jl_errno(err, errno, "cannot stat", j->path);
        goto fail;
    }
    if (!found) {
        /* a new file, or one walrelay never wrote: confirmed as it is */
        snprintf(j->st.pipeline, sizeof(j->st.pipeline), "%s", j->pipeline);
        j->st.offset = (uint64_t)sb.st_size;
        if ((rc = jl_fsync_dir(j, err)) < 0 || (rc = jl_state_write(j, &j->st, err)) < 0)
            goto fail;
        return 0;
    }
    if ((uint64_t)sb.st_size < j->st.offset) {
        wr_dest_error_set(err, WR_DEST_EIO, NULL,
                          "\"%s\" has %lld bytes, but %" PRIu64
                          " are confirmed in it (state \"%s\")",
                          j->path, (long long)sb.st_size, j->st.offset, j->state_path);
        wr_dest_error_hint(err, "the file was cut or replaced outside walrelay; move it and its "
                                ".walrelay files away and resync every table");
        rc = WR_DEST_EIO;
        goto fail;
    }
    if ((uint64_t)sb.st_size > j->st.offset) {
        wr_dest_log(j->host, WR_DEST_LOG_INFO,
                    "cutting an unconfirmed tail a crash left file=\"%s\" confirmed=%" PRIu64
                    " size=%lld",
                    j->path, j->st.offset, (long long)sb.st_size);
        if (ftruncate(*fd, (off_t)j->st.offset) != 0 || fsync(*fd) != 0) {
            rc = jl_errno(err, errno, "cannot cut back", j->path);
            goto fail;
        }
    }
    return 0;
fail:
    close(*fd);
    *fd = -1;
    return rc;
}

/* Under the exclusive lock, after a flush: PATH -> PATH.<generation+1>, state updated. */
static int
jl_rotate(jl_t *j, wr_dest_error_t *err)
{
    char rotated[PATH_MAX];
    int rc;

    snprintf(rotated, sizeof(rotated), "%s.%06" PRIu64, j->path, j->st.generation + 1);
    if (rename(j->path, rotated) != 0)
        return jl_errno(err, errno, "cannot rotate", j->path);
    FAILPOINT("jsonl.mid_rotate");
    j->st.generation++;
    j->st.offset = 0;
    if ((rc = jl_state_write(j, &j->st, err)) < 0)
        return rc;
    /* the new file exists at once (readers following PATH see it; a crash before this is
     * finished by jl_recover, which creates it) */
    {
        int fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

        if (fd < 0)
            return jl_errno(err, errno, "cannot create", j->path);
        close(fd);
        if ((rc = jl_fsync_dir(j, err)) < 0)
            return rc;
    }
    wr_dest_log(j->host, WR_DEST_LOG_INFO, "rotated file=\"%s\" to=\"%s\"", j->path, rotated);
    return 0;
}

/* ---- copies: staged in a side file, moved into PATH once complete ------------------------
 *
 * A sync worker's copy (its opening "truncate" and its rows) is appended, batch by batch,
 * to PATH.copy-<relid> (fsynced at each flush, like PATH) instead of PATH. A copy that a
 * crash interrupts starts over with that file emptied, so PATH never holds a partial copy.
 * The copy is complete once its worker is in catch-up (walrelay persisted FinishedCopy
 * before): at its last_key("sync_<relid>") the whole side file is appended to PATH under
 * the lock, the state records the offset and "copy <relid> <attempt>" in one replacement,
 * then the side file is removed. A crash after the state but before the removal leaves a
 * side file whose attempt the state lists: it is removed, never appended again. So each
 * completed copy is in PATH exactly once, before the table's changes. */

static void
jl_side_path(const jl_t *j, uint32_t relid, char *buf, size_t len)
{
    snprintf(buf, len, "%s.copy-%" PRIu32, j->path, relid);
}

/* Appends the buffered copied lines to the side file (emptied first at a copy's start). */
static int
jl_side_flush(jl_t *j, wr_dest_error_t *err)
{
    char path[PATH_MAX];
    int fd;

    if (j->side.len == 0)
        return WR_DEST_OK;
    jl_side_path(j, j->copy_relid, path, sizeof(path));
    fd =
        open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (j->side_fresh ? O_TRUNC : 0), 0644);
    if (fd < 0)
        return jl_errno(err, errno, "cannot write the copy file", path);
    if (jl_write_all(fd, j->side.data, j->side.len, -1) != 0 || fdatasync(fd) != 0) {
        int e = errno;
        close(fd);
        return jl_errno(err, e, "cannot write the copy file", path);
    }
    close(fd);
    if (j->side_fresh && jl_fsync_dir(j, err) < 0)
        return WR_DEST_EIO;
    j->side_fresh = false;
    jw_reset(&j->side);
    return WR_DEST_OK;
}

/* The attempt of a side file: from its first line's key "copy:<relid>:<attempt>:...". */
static int
jl_side_attempt(int fd, uint32_t relid, uint64_t *attempt)
{
    char head[128], want[32];
    ssize_t n = pread(fd, head, sizeof(head) - 1, 0);
    const char *p;
    int wl;

    if (n <= 0)
        return -1;
    head[n] = '\0';
    wl = snprintf(want, sizeof(want), "{\"key\":\"copy:%" PRIu32 ":", relid);
    if (strncmp(head, want, (size_t)wl) != 0)
        return -1;
    p = head + wl;
    *attempt = 0;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++)
        *attempt = *attempt * 10 + (uint64_t)(*p - '0');
    return *p == ':' ? 0 : -1;
}

/* Copies len bytes of in (from 0) to out at off. */
static int
jl_copy_range(int in, int out, off_t off, uint64_t len)
{
    off_t ioff = 0;

    while (len > 0) {
        ssize_t n = copy_file_range(in, &ioff, out, &off, len > (1u << 30) ? (1u << 30) : len, 0);

        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL)) {
            char buf[1 << 16];
            ssize_t r = pread(in, buf, sizeof(buf), ioff);

            if (r <= 0)
                return -1;
            if (jl_write_all(out, buf, (size_t)r, off) != 0)
                return -1;
            n = r;
            ioff += r;
            off += r;
        } else if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return -1;
        }
        len -= (uint64_t)n;
    }
    return 0;
}

static int jl_rotate(jl_t *j, wr_dest_error_t *err);

/* Moves a complete copy of relid from its side file into PATH (see above). */
static int
jl_move_copy(jl_t *j, uint32_t relid, wr_dest_error_t *err)
{
    char path[PATH_MAX];
    struct stat sb;
    uint64_t attempt;
    int fd = -1, side, rc;

    jl_side_path(j, relid, path, sizeof(path));
    side = open(path, O_RDONLY | O_CLOEXEC);
    if (side < 0)
        return errno == ENOENT ? WR_DEST_OK : jl_errno(err, errno, "cannot read", path);
    if ((rc = jl_lock(j, LOCK_EX, err)) < 0) {
        close(side);
        return rc;
    }
    if ((rc = jl_recover(j, &fd, err)) < 0)
        goto out;
    if (fstat(side, &sb) != 0 || jl_side_attempt(side, relid, &attempt) != 0) {
        rc = wr_dest_error_set(err, WR_DEST_EIO, NULL,
                               "the copy file \"%s\" of a finished copy does not start with its "
                               "copy's first line",
                               path);
        wr_dest_error_hint(err, "it was changed outside walrelay: remove it and resync the table");
        goto out;
    }
    if (!jl_copied_has(&j->st, relid, attempt)) {
        if (jl_copy_range(side, fd, (off_t)j->st.offset, (uint64_t)sb.st_size) != 0 ||
            fdatasync(fd) != 0) {
            rc = jl_errno(err, errno, "cannot append the copy to", j->path);
            goto out;
        }
        FAILPOINT("jsonl.copy_appended");
        j->st.offset += (uint64_t)sb.st_size;
        jl_copied_set(&j->st, relid, attempt);
        if ((rc = jl_state_write(j, &j->st, err)) < 0)
            goto out;
        FAILPOINT("jsonl.copy_moved");
        wr_dest_log(j->host, WR_DEST_LOG_INFO,
                    "copy appended file=\"%s\" relid=%" PRIu32 " bytes=%lld", j->path, relid,
                    (long long)sb.st_size);
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        rc = jl_errno(err, errno, "cannot remove", path);
        goto out;
    }
    if ((rc = jl_fsync_dir(j, err)) < 0)
        goto out;
    if (j->rotate_bytes > 0 && j->st.offset >= j->rotate_bytes)
        rc = jl_rotate(j, err);
out:
    if (fd >= 0)
        close(fd);
    close(side);
    jl_unlock(j);
    return rc;
}

/* "sync_<relid>" -> relid, 0 if stream is not that. */
static uint32_t
jl_sync_relid(const char *stream)
{
    uint64_t v;

    if (strncmp(stream, "sync_", 5) != 0 || jl_parse_u64(stream + 5, &v) != 0 || v == 0 ||
        v > UINT32_MAX)
        return 0;
    return (uint32_t)v;
}

/* ---- open / close --------------------------------------------------------------------- */

static void
jl_free(jl_t *j)
{
    if (j == NULL)
        return;
    if (j->lock_fd >= 0)
        close(j->lock_fd);
    free(j->path);
    free(j->state_path);
    free(j->tmp_path);
    free(j->lock_path);
    free(j->dir);
    jw_free(&j->buf);
    jw_free(&j->side);
    jl_state_clear(&j->st);
    free(j);
}

static int
jl_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state, wr_dest_error_t *err)
{
    const char *path = wr_dest_config_get(cfg, "path");
    const char *rot = wr_dest_config_get(cfg, "rotate_bytes");
    jl_t *j = calloc(1, sizeof(*j));
    char *slash;
    int fd, rc;

    if (j == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    j->host = host;
    j->lock_fd = -1;
    jw_init(&j->buf);
    jw_init(&j->side);
    snprintf(j->pipeline, sizeof(j->pipeline), "%s", cfg->pipeline[0] ? cfg->pipeline : "-");
    for (char *p = j->pipeline; *p; p++)
        if (*p == ' ' || *p == '\t' || *p == '\n')
            *p = '_';
    if (rot != NULL && jl_parse_u64(rot, &j->rotate_bytes) != 0)
        j->rotate_bytes = 0;
    j->stage_copy = strcmp(path, "-") != 0 && host != NULL && host->role != NULL &&
                    strcmp(host->role, "sync") == 0;
    if (strcmp(path, "-") == 0) {
        j->to_stdout = true;
        j->lock_path = jl_concat(cfg->dir, "/jsonl-stdout.lock");
        if (j->lock_path == NULL)
            goto oom;
    } else {
        if (path[0] == '/') {
            j->path = jl_concat(path, "");
        } else {
            char *d = jl_concat(cfg->dir, "/");
            j->path = d ? jl_concat(d, path) : NULL;
            free(d);
        }
        if (j->path == NULL)
            goto oom;
        j->state_path = jl_concat(j->path, ".walrelay");
        j->tmp_path = jl_concat(j->path, ".walrelay.tmp");
        j->lock_path = jl_concat(j->path, ".walrelay.lock");
        j->dir = jl_concat(j->path, "");
        if (!j->state_path || !j->tmp_path || !j->lock_path || !j->dir)
            goto oom;
        slash = strrchr(j->dir, '/');
        if (slash == j->dir)
            slash[1] = '\0';
        else
            *slash = '\0';
    }
    j->lock_fd = open(j->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (j->lock_fd < 0) {
        rc = jl_errno(err, errno, "cannot open the lock file", j->lock_path);
        if (errno == ENOENT)
            wr_dest_error_hint(err, "create the directory of [destination] path");
        jl_free(j);
        return rc;
    }
    if (!j->to_stdout) {
        if ((rc = jl_lock(j, LOCK_EX, err)) < 0) {
            jl_free(j);
            return rc;
        }
        rc = jl_recover(j, &fd, err);
        if (fd >= 0)
            close(fd);
        jl_unlock(j);
        if (rc < 0) {
            jl_free(j);
            return rc;
        }
    }
    *state = j;
    return WR_DEST_OK;
oom:
    jl_free(j);
    return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
}

static void
jl_close(void *state)
{
    jl_free(state);
}

static int
jl_check(void *state, wr_dest_error_t *err)
{
    jl_t *j = state;

    if (j->to_stdout)
        return WR_DEST_OK;
    if (access(j->path, W_OK) != 0)
        return jl_errno(err, errno, "cannot write", j->path);
    return WR_DEST_OK;
}

/* ---- writing -------------------------------------------------------------------------- */

static int
jl_buffered(jl_t *j, wr_dest_error_t *err)
{
    if (jw_failed(&j->buf) || jw_failed(&j->side)) {
        jw_reset(&j->buf);
        jw_reset(&j->side);
        j->nlines = 0;
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL,
                                 "out of memory buffering events for \"%s\"",
                                 j->to_stdout ? "-" : j->path);
    }
    return WR_DEST_OK;
}

static int
jl_write_events(void *state, const wr_dest_event_t *events, size_t nevents, wr_dest_error_t *err)
{
    jl_t *j = state;

    for (size_t i = 0; i < nevents; i++) {
        if (!evj_is_change(&events[i]))
            continue;
        evj_event(&j->buf, &events[i]);
        jw_raw(&j->buf, "\n", 1);
        j->nlines++;
    }
    return jl_buffered(j, err);
}

static void
jl_copy_start(jl_t *j, uint32_t relid)
{
    j->copy_relid = relid;
    j->copy_attempt_us = jl_wall_us();
    j->copy_n = 0;
    j->side_fresh = true;
    jw_reset(&j->side);
}

/* Where copied lines go: the side file's buffer when copies are staged. */
static jw_buf_t *
jl_copy_buf(jl_t *j)
{
    return j->stage_copy ? &j->side : &j->buf;
}

static int
jl_truncate_table(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    jl_t *j = state;
    char key[EVJ_KEY_LEN];

    /* walrelay truncates a table only to copy it (again) */
    jl_copy_start(j, rel->relid);
    evj_copy_truncate(jl_copy_buf(j), rel, evj_copy_key(rel->relid, j->copy_attempt_us, 0, key));
    jw_raw(jl_copy_buf(j), "\n", 1);
    j->nlines++;
    return jl_buffered(j, err);
}

static int
jl_write_table_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                    size_t nrows, wr_dest_error_t *err)
{
    jl_t *j = state;
    char key[EVJ_KEY_LEN];

    if (j->copy_relid != rel->relid)
        jl_copy_start(j, rel->relid);
    for (size_t i = 0; i < nrows; i++) {
        evj_copy_row(jl_copy_buf(j), rel, &rows[i],
                     evj_copy_key(rel->relid, j->copy_attempt_us, ++j->copy_n, key));
        jw_raw(jl_copy_buf(j), "\n", 1);
        j->nlines++;
    }
    return jl_buffered(j, err);
}

static int
jl_flush_stdout(jl_t *j, wr_dest_error_t *err)
{
    int rc;

    if (j->buf.len == 0)
        return WR_DEST_OK;
    if ((rc = jl_lock(j, LOCK_EX, err)) < 0)
        return rc;
    if (jl_write_all(STDOUT_FILENO, j->buf.data, j->buf.len, -1) != 0) {
        int e = errno;
        jl_unlock(j);
        return jl_errno(err, e, "cannot write to standard output", "-");
    }
    jl_unlock(j);
    jw_reset(&j->buf);
    j->nlines = 0;
    return WR_DEST_OK;
}

static int
jl_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    jl_t *j = state;
    jl_stream_t *cur;
    int fd = -1, rc;

    if (j->to_stdout)
        return jl_flush_stdout(j, err);
    if (!jl_stream_name_ok(stream))
        return wr_dest_error_set(err, WR_DEST_EIO, NULL, "invalid stream name \"%s\"", stream);
    if ((rc = jl_side_flush(j, err)) < 0)
        return rc;
    if (j->buf.len == 0 && key == NULL)
        return WR_DEST_OK;
    if ((rc = jl_lock(j, LOCK_EX, err)) < 0)
        return rc;
    if ((rc = jl_recover(j, &fd, err)) < 0)
        goto out;
    cur = jl_state_find(&j->st, stream);
    if (key != NULL && cur != NULL && wr_dest_key_cmp(key, &cur->key) < 0) {
        char a[EVJ_KEY_LEN], b[EVJ_KEY_LEN];

        rc = wr_dest_error_set(err, WR_DEST_EIO, NULL,
                               "stream \"%s\" would go back from key %s to %s in \"%s\"", stream,
                               evj_key(&cur->key, a), evj_key(key, b), j->state_path);
        wr_dest_error_hint(err, "two pipelines or two runs write the same file: give each "
                                "pipeline its own file");
        goto out;
    }
    if (j->buf.len > 0) {
        if (jl_write_all(fd, j->buf.data, j->buf.len, (off_t)j->st.offset) != 0 ||
            fdatasync(fd) != 0) {
            rc = jl_errno(err, errno, "cannot append to", j->path);
            goto out;
        }
        FAILPOINT("jsonl.after_append");
        j->st.offset += j->buf.len;
    }
    if (key != NULL && jl_state_put(&j->st, stream, key) != 0) {
        rc = wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory (or more than %d streams)",
                               JL_MAX_STREAMS);
        goto out;
    }
    if ((rc = jl_state_write(j, &j->st, err)) < 0)
        goto out;
    FAILPOINT("jsonl.after_state");
    jw_reset(&j->buf);
    j->nlines = 0;
    if (j->rotate_bytes > 0 && j->st.offset >= j->rotate_bytes)
        rc = jl_rotate(j, err);
out:
    if (fd >= 0)
        close(fd);
    jl_unlock(j);
    return rc;
}

static int
jl_last_key(void *state, const char *stream, wr_dest_key_t *key, bool *found, wr_dest_error_t *err)
{
    jl_t *j = state;
    jl_state_t st;
    jl_stream_t *s;
    int rc;

    *found = false;
    if (j->to_stdout)
        return WR_DEST_OK; /* no state: at least once */
    /* a sync worker asks in catch-up: its copy is complete */
    if (j->stage_copy && jl_sync_relid(stream) != 0 &&
        (rc = jl_move_copy(j, jl_sync_relid(stream), err)) < 0)
        return rc;
    memset(&st, 0, sizeof(st));
    if ((rc = jl_lock(j, LOCK_SH, err)) < 0)
        return rc;
    rc = jl_state_read(j, &st, found, err);
    jl_unlock(j);
    if (rc < 0)
        return rc;
    s = jl_state_find(&st, stream);
    *found = s != NULL;
    if (s != NULL)
        *key = s->key;
    jl_state_clear(&st);
    return WR_DEST_OK;
}

static int
jl_forget_stream(void *state, const char *stream, wr_dest_error_t *err)
{
    jl_t *j = state;
    int fd = -1, rc;

    if (j->to_stdout)
        return WR_DEST_OK;
    if ((rc = jl_lock(j, LOCK_EX, err)) < 0)
        return rc;
    if ((rc = jl_recover(j, &fd, err)) == 0) {
        uint32_t relid = jl_sync_relid(stream);
        bool changed = jl_state_find(&j->st, stream) != NULL;

        jl_state_del(&j->st, stream);
        if (relid != 0) {
            char path[PATH_MAX];
            uint64_t attempt;
            int side;

            /* a moved copy's side file left by a crash goes now */
            jl_side_path(j, relid, path, sizeof(path));
            side = open(path, O_RDONLY | O_CLOEXEC);
            if (side >= 0) {
                if (jl_side_attempt(side, relid, &attempt) == 0 &&
                    jl_copied_has(&j->st, relid, attempt))
                    (void)unlink(path);
                close(side);
            }
            for (size_t i = 0; i < j->st.ncopied; i++)
                changed = changed || j->st.copied[i].relid == relid;
            jl_copied_del(&j->st, relid);
        }
        if (changed)
            rc = jl_state_write(j, &j->st, err);
    }
    if (fd >= 0)
        close(fd);
    jl_unlock(j);
    return rc;
}

static int
jl_discard(void *state, wr_dest_error_t *err)
{
    jl_t *j = state;

    (void)err;
    jw_reset(&j->buf);
    jw_reset(&j->side);
    j->nlines = 0;
    return WR_DEST_OK;
}

static const wr_dest_ops_t jl_ops = {
    .abi_version = WR_DEST_ABI_VERSION,
    .struct_size = sizeof(wr_dest_ops_t),
    .name = "jsonl",
    /* flush stores the key with the lines (exactly once into a file); the schema is in
     * every line, so column changes need nothing */
    .capabilities = WR_DEST_CAP_TRANSACTIONAL | WR_DEST_CAP_SCHEMA_CHANGES | WR_DEST_CAP_DISCARD,
    .validate = jl_validate,
    .open = jl_open,
    .check = jl_check,
    .truncate_table = jl_truncate_table,
    .write_table_rows = jl_write_table_rows,
    .write_events = jl_write_events,
    .flush = jl_flush,
    .last_key = jl_last_key,
    .forget_stream = jl_forget_stream,
    .discard = jl_discard,
    .close = jl_close,
};

const wr_dest_ops_t *
dest_jsonl_abi(void)
{
    return &jl_ops;
}

/* ---- registry entry ------------------------------------------------------------------- */

static const dest_keyspec_t jl_keys[] = {
    {"path", NULL,
     "File the events are appended to, one JSON object per line (docs/events.md),\n"
     "relative to this directory or absolute; - for walrelay's standard output.\n"
     "A file is written exactly once (state in PATH.walrelay); stdout at least once.",
     true, false, false},
    {"rotate_bytes", "0",
     "Start a new file once this one reaches this many bytes (the full one becomes\n"
     "PATH.000001, PATH.000002, ...). 0: never.",
     false, false, false},
};

static int
jl_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg == NULL || arg[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "--destination jsonl needs a file or -: jsonl:PATH");
        wr_err_hint(err, "--destination jsonl:events.jsonl, or --destination jsonl:- (stdout)");
        return WR_ECONFIG;
    }
    values[0] = arg;
    return 0;
}

static int
jl_type_validate(const wr_config_t *cfg, wr_err_t *err)
{
    return dest_abi_validate(&jl_ops, cfg, err);
}

static int
jl_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    const char *path = dest_config_value(cfg, "path");
    char inner[256];
    int rc = dest_abi_preflight(&jl_ops, cfg, inner, sizeof(inner), err);

    if (rc == 0)
        snprintf(summary, len, "jsonl %s: %s", path ? path : "?", inner);
    return rc;
}

static void
jl_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    const char *path = dest_config_value(cfg, "path");
    char *abs = NULL;
    wr_err_t err;

    if (path != NULL && strcmp(path, "-") == 0)
        snprintf(buf, len, "jsonl standard output");
    else if (dest_config_path(cfg, "path", &abs, &err) == 0)
        snprintf(buf, len, "jsonl %s", abs);
    else
        snprintf(buf, len, "jsonl");
    free(abs);
}

static int
jl_type_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    return dest_abi_open(&jl_ops, NULL, cfg, role, out, err);
}

const dest_type_t dest_type_jsonl = {
    .name = "jsonl",
    .summary = "JSON lines into a file (exactly once) or onto standard output (at least once)",
    .init_usage = "jsonl:PATH (or jsonl:- for standard output)",
    .keys = jl_keys,
    .nkeys = sizeof(jl_keys) / sizeof(jl_keys[0]),
    .init_arg = jl_init_arg,
    .validate = jl_type_validate,
    .preflight = jl_preflight,
    .describe = jl_describe,
    .open = jl_type_open,
};
