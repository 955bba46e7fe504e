/*
 * nats.c - the "nats" destination: every change as one message of a NATS JetStream stream
 * (the JSON of docs/events.md), exactly once into the stream, with libnats.
 *
 * NOTES: written on the public destination ABI (walrelay/destination.h), like a plugin,
 * and opened through the adapter (destinations/abi.c). Runs in walrelay-apply and in every
 * walrelay-sync, each with its own connection; libnats runs its own threads (reader,
 * flusher, delivery), which only call nt_on_reply below.
 *
 * MESSAGES. Subject <subject_prefix>.<schema>.<table>.<op> (schema and table escaped: a
 *   byte outside [A-Za-z0-9_-] becomes %XX, so a name is always one subject token);
 *   headers Nats-Msg-Id = the event's key (JetStream's deduplication) and Walrelay-Stream =
 *   the walrelay stream that published it ("apply", "sync_<relid>"). Every publish expects
 *   the configured stream (a subject caught by another stream is refused, not misfiled),
 *   and most expect their predecessor (Nats-Expected-Last-Msg-Id, below).
 *
 * STREAM. Created at the first open when missing (create_stream = true): subjects
 *   "<subject_prefix>.>", file storage, `replicas` copies. A KV bucket "<stream>_walrelay"
 *   (created next to it) holds one checkpoint per walrelay stream: "<stream sequence of its
 *   last acknowledged message> <its last key or ->", written after every flush.
 *
 * EXACTLY ONCE. Events are published as they arrive (asynchronously, on one connection,
 *   so the server stores them in order). A message that JetStream answers carries the
 *   reply subject <inbox>.<gen>.<index> (one subscription; no per-message bookkeeping in
 *   libnats). Not every message asks for an answer: an answer costs nats-server about as
 *   much as storing the message (measured: half of its CPU and of ours in a drain).
 * CHAINED ACKNOWLEDGEMENTS. The first message of a batch asks for an answer; each later
 *   one carries Nats-Expected-Last-Msg-Id = the previous message's key, and every
 *   NT_CHAIN_ACK_EVERY-th and the batch's last one (held back until flush) ask for an
 *   answer too. JetStream stores a message with that header only if the message stored
 *   just before it in the stream has that id (it checks this after its duplicate check,
 *   when it stores in order). So a positive, non-duplicate answer to a chained message
 *   proves that every message of the chain before it is stored: if one had been lost or
 *   refused, or another writer's message had come in between, the next one would have
 *   been refused, and so on to the end of the chain. Any other outcome (an error answer,
 *   a "duplicate" answer to a chained message, an answer missing) is recovered as below,
 *   and the instance then asks for an answer to every message for NT_CHAIN_PAUSE_US (a
 *   stream written by others, e.g. several workers copying at once, breaks chains).
 * flush(stream, key) returns only once the server acknowledged every one, then writes the
 * checkpoint (also when nothing was published: walrelay moves a stream's key on its own before a
 * table becomes Ready). walrelay confirms the slot only past flushed events. last_key(stream) reads
 * the checkpoint (S, K) and then every message stored after S (an ordered consumer, headers only):
 *   the last key this stream published is K or the last one found there. A process
 *   killed between publish and acknowledgement, or after the acknowledgement and before
 *   the checkpoint, resumes after what the stream really holds: nothing twice, nothing
 *   lost.
 *   Within a process, a failure (connection lost, the server restarted, an ack missing
 *   after timeout_ms, a negative ack) is recovered here, for as long as it takes: the
 *   connection is dropped (libnats' own reconnection is off, so nothing published after
 *   a loss can overtake what was lost), a new one is made with backoff and jitter (the
 *   host's waiting() shows the last error in walrelay status; interrupted() ends the wait
 *   on a stop), the messages stored after the checkpoint are read back, and only the
 *   events of the batch the stream does not hold are published again. A message that
 *   was stored but not acknowledged is recognised by reading back, not by the
 *   duplicate window; the window (Nats-Msg-Id) covers a worker that rolls back a batch
 *   and sends it again in the same process.
 *
 * Copied rows are messages too (phase "copy", subject ....insert), each copy opened by a
 *   "truncate" of phase "copy". A copy that a crash interrupts starts over under new keys.
 */
#include "abi.h"
#include "event_json.h"
#include "registry.h"

#include "../common/failpoint.h"
#include "../common/wr.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NT_DEFAULT_TIMEOUT_MS   "10000"
#define NT_DEFAULT_MAX_RETRY_MS "30000"
#define NT_BACKOFF_FIRST_MS     200
#define NT_SLICE_MS             100
#define NT_STREAM_HDR           "Walrelay-Stream"
#define NT_CHAIN_ACK_EVERY      1024
#define NT_CHAIN_PAUSE_US       (30 * 1000000LL)

/* States of a batch message */
enum { NT_NEW = 0, NT_SENT, NT_ACKED, NT_FAILED };
/* How it was sent (on the current connection) */
enum { NT_F_REPLY = 1, NT_F_CHAINED = 2 };

typedef struct nt_msg_s {
    char key[EVJ_KEY_LEN];
    size_t subj_off, data_off, data_len;
    uint8_t state;
    uint8_t flags; /* NT_SENT: NT_F_* */
    uint64_t seq;  /* NT_ACKED: its stream sequence (0 when proven by a later answer) */
} nt_msg_t;

typedef struct nt_s {
    const wr_dest_host_t *host;
    char role[16];
    /* configuration */
    char *url, *stream, *prefix, *bucket;
    char *user, *password, *token, *creds, *tls_ca, *tls_cert, *tls_key;
    bool tls, create_stream;
    long replicas, timeout_ms, max_retry_ms;
    char pipeline[128];
    /* connection */
    natsConnection *nc;
    jsCtx *js;
    kvStore *kv;
    natsSubscription *acksub; /* <inbox>.* : JetStream's answers to our publishes */
    char inbox[128];
    uint32_t gen;        /* answers name <inbox>.<gen>.<index>: a reset batch ignores older ones */
    pthread_cond_t cond; /* signalled by nt_on_reply */
    bool stream_ok;      /* the stream was found or created by this instance */
    /* the batch since the last flush; msgs[].state and seq are written by libnats' thread
     * (nt_on_reply) under mu */
    pthread_mutex_t mu;
    nt_msg_t *msgs;
    size_t n, cap;
    size_t published; /* msgs[0 .. published) were handed to libnats on this connection */
    bool broken;      /* a publish failed: recover at flush */
    /* chained acknowledgements: msgs[chain_next - 1] was the last message sent on this
     * connection in a chain (0: none); no chain before chain_off_until (wall clock, us) */
    size_t chain_next;
    int64_t chain_off_until;
    bool chain_broken; /* the server refused a chained message: another writer came in */
    char last_err[1536];
    char fatal[512]; /* a message the server can never take (over max_payload): not retried */
    jw_buf_t arena;  /* subjects and JSON of the batch */
    /* the walrelay stream this instance writes ("apply" or "sync_<relid>") */
    char wstream[64];
    /* every message this instance has not yet flushed has a higher sequence: the last
     * sequence of the stream at the first connection, then the last acknowledged one */
    uint64_t scan_from;
    bool scan_from_set;
    /* the checkpoint's key (loaded from the bucket before the first write) */
    bool ck_loaded, ck_has_key;
    wr_dest_key_t ck_key;
    unsigned int rng;
    /* the copy in this instance */
    uint32_t copy_relid;
    int64_t copy_attempt_us;
    uint64_t copy_n;
    uint64_t sent; /* messages acknowledged, for the log */
} nt_t;

/* ---- configuration -------------------------------------------------------------------- */

static const char *const nt_keys_known[] = {
    "url",        "stream",       "subject_prefix", "create_stream", "replicas",
    "timeout_ms", "max_retry_ms", "user",           "password",      "token",
    "creds",      "tls",          "tls_ca",         "tls_cert",      "tls_key",
};

static int
nt_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    long long v;

    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (long)v;
    return 0;
}

static int
nt_parse_bool(const char *s, bool *out)
{
    if (s == NULL)
        return -1;
    if (strcmp(s, "true") == 0 || strcmp(s, "on") == 0 || strcmp(s, "1") == 0 ||
        strcmp(s, "yes") == 0)
        *out = true;
    else if (strcmp(s, "false") == 0 || strcmp(s, "off") == 0 || strcmp(s, "0") == 0 ||
             strcmp(s, "no") == 0)
        *out = false;
    else
        return -1;
    return 0;
}

/* A stream (and bucket) name: letters, digits, _ and -. */
static bool
nt_name_ok(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 200)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

/* A subject prefix: dot-separated non-empty tokens without wildcards or spaces. */
static bool
nt_prefix_ok(const char *s)
{
    bool tok_empty = true;

    if (s == NULL || s[0] == '\0' || strlen(s) > 200)
        return false;
    for (; *s; s++) {
        if (*s == '.') {
            if (tok_empty)
                return false;
            tok_empty = true;
            continue;
        }
        if (*s == '*' || *s == '>' || (unsigned char)*s <= ' ' || *s == 0x7f)
            return false;
        tok_empty = false;
    }
    return !tok_empty;
}

static int
nt_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    const char *v;
    long n;
    bool b;

    for (size_t i = 0; i < cfg->nitems; i++) {
        bool known = false;

        for (size_t k = 0; k < sizeof(nt_keys_known) / sizeof(nt_keys_known[0]); k++)
            known = known || strcmp(cfg->items[i].key, nt_keys_known[k]) == 0;
        if (!known) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, cfg->items[i].key,
                              "unknown key \"%s\" for the nats destination", cfg->items[i].key);
            wr_dest_error_hint(err, "the nats destination takes url, stream, subject_prefix, "
                                    "create_stream, replicas, timeout_ms, max_retry_ms, user, "
                                    "password, token, creds, tls, tls_ca, tls_cert, tls_key");
            return WR_DEST_ECONFIG;
        }
    }
    v = wr_dest_config_get(cfg, "url");
    if (v == NULL || v[0] == '\0') {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "the nats destination needs a url");
        wr_dest_error_hint(err, "url = nats://host:4222 (several servers: separated by commas)");
        return WR_DEST_ECONFIG;
    }
    if (strstr(v, "://") == NULL) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "\"%s\" is not a NATS URL", v);
        wr_dest_error_hint(err, "url = nats://host:4222, or tls://host:4222");
        return WR_DEST_ECONFIG;
    }
    if ((v = wr_dest_config_get(cfg, "stream")) != NULL && !nt_name_ok(v)) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "stream",
                          "invalid stream name \"%s\": letters, digits, _ and - only", v);
        wr_dest_error_hint(err, "e.g. stream = walrelay_orders");
        return WR_DEST_ECONFIG;
    }
    if ((v = wr_dest_config_get(cfg, "subject_prefix")) != NULL && !nt_prefix_ok(v)) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "subject_prefix",
                          "invalid subject prefix \"%s\": dot-separated tokens, no * > or spaces",
                          v);
        wr_dest_error_hint(err, "e.g. subject_prefix = cdc.orders");
        return WR_DEST_ECONFIG;
    }
    if ((v = wr_dest_config_get(cfg, "create_stream")) != NULL && nt_parse_bool(v, &b) != 0) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "create_stream",
                          "invalid value \"%s\": expected true or false", v);
        wr_dest_error_hint(err, "create_stream = true creates the stream when it is missing");
        return WR_DEST_ECONFIG;
    }
    if ((v = wr_dest_config_get(cfg, "tls")) != NULL && nt_parse_bool(v, &b) != 0) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "tls",
                          "invalid value \"%s\": expected true or false", v);
        wr_dest_error_hint(err, "tls = true requires TLS to the server");
        return WR_DEST_ECONFIG;
    }
    static const struct {
        const char *key;
        long lo, hi;
        const char *what;
    } nums[] = {
        {"replicas", 1, 5, "1 to 5 copies"},
        {"timeout_ms", 100, 3600000, "milliseconds, 100 to 3600000"},
        {"max_retry_ms", 100, 3600000, "milliseconds, 100 to 3600000"},
    };
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        v = wr_dest_config_get(cfg, nums[i].key);
        if (v != NULL && nt_parse_long(v, nums[i].lo, nums[i].hi, &n) != 0) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, nums[i].key,
                              "invalid value \"%s\": expected %s", v, nums[i].what);
            wr_dest_error_hint(err, "see docs/configuration.md, [destination] type = nats");
            return WR_DEST_ECONFIG;
        }
    }
    if ((wr_dest_config_get(cfg, "tls_cert") == NULL) !=
        (wr_dest_config_get(cfg, "tls_key") == NULL)) {
        wr_dest_error_set(err, WR_DEST_ECONFIG,
                          wr_dest_config_get(cfg, "tls_cert") ? "tls_key" : "tls_cert",
                          "tls_cert and tls_key go together (a client certificate and its key)");
        wr_dest_error_hint(err, "set both, or neither");
        return WR_DEST_ECONFIG;
    }
    if (wr_dest_config_get(cfg, "password") != NULL && wr_dest_config_get(cfg, "user") == NULL) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "password", "password needs user");
        wr_dest_error_hint(err, "set user = NAME too, or use token or creds");
        return WR_DEST_ECONFIG;
    }
    return WR_DEST_OK;
}

/* ---- small helpers -------------------------------------------------------------------- */

static char *
nt_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void
nt_free_secret(char *s)
{
    if (s != NULL) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

static const char *
nt_status_text(natsStatus s, jsErrCode jerr)
{
    static __thread char buf[512];
    const char *last = nats_GetLastError(NULL);

    /* libnats prefixes its messages with "(file.c:123): " */
    if (last != NULL && last[0] == '(') {
        const char *e = strstr(last, "): ");
        if (e != NULL && e - last < 40)
            last = e + 3;
    }

    if (jerr != 0)
        snprintf(buf, sizeof(buf), "%s (JetStream error %d)",
                 last && *last ? last : natsStatus_GetText(s), (int)jerr);
    else
        snprintf(buf, sizeof(buf), "%s", last && *last ? last : natsStatus_GetText(s));
    return buf;
}

/* One subject token: bytes outside [A-Za-z0-9_-] become %XX. */
static void
nt_token(jw_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '_' || c == '-') {
            jw_raw(b, s, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            jw_raw(b, e, 3);
        }
    }
}

static int64_t
nt_wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool
nt_sleep(nt_t *t, long ms)
{
    while (ms > 0) {
        long s = ms < NT_SLICE_MS ? ms : NT_SLICE_MS;
        struct timespec ts = {s / 1000, (s % 1000) * 1000000L};

        if (wr_dest_interrupted(t->host))
            return true;
        nanosleep(&ts, NULL);
        ms -= s;
    }
    return wr_dest_interrupted(t->host);
}

/* ---- the connection ------------------------------------------------------------------- */

static void
nt_disconnect(nt_t *t)
{
    if (t->acksub) {
        natsSubscription_Destroy(t->acksub);
        t->acksub = NULL;
    }
    if (t->kv) {
        kvStore_Destroy(t->kv);
        t->kv = NULL;
    }
    if (t->js) {
        jsCtx_Destroy(t->js);
        t->js = NULL;
    }
    if (t->nc) {
        natsConnection_Destroy(t->nc);
        t->nc = NULL;
    }
    pthread_mutex_lock(&t->mu);
    /* what was in flight on that connection is unknown now (read back on recovery) */
    for (size_t i = 0; i < t->published; i++)
        if (t->msgs[i].state == NT_SENT)
            t->msgs[i].state = NT_NEW;
    t->published = 0;
    t->chain_next = 0;
    t->gen++;
    pthread_mutex_unlock(&t->mu);
}

/* Parses the decimal number after `field` ("seq":) in a JetStream answer; 0 if none. */
static uint64_t
nt_json_u64(const char *data, int len, const char *field)
{
    size_t fl = strlen(field);
    uint64_t v = 0;

    for (int i = 0; i + (int)fl < len; i++) {
        if (memcmp(data + i, field, fl) != 0)
            continue;
        for (i += (int)fl; i < len && (data[i] == ' ' || data[i] == ':'); i++)
            ;
        for (; i < len && data[i] >= '0' && data[i] <= '9'; i++)
            v = v * 10 + (uint64_t)(data[i] - '0');
        return v;
    }
    return 0;
}

/* libnats' delivery thread: JetStream's answer to the publish of msgs[idx] of generation
 * gen, on <inbox>.<gen>.<idx> ({"stream": ..., "seq": N} or {"error": {...}}, or a
 * "no responders" status when no stream listens). */
static void
nt_on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    nt_t *t = closure;
    const char *subj = natsMsg_GetSubject(msg), *p;
    const char *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);
    uint64_t gen = 0, idx = 0;

    (void)nc;
    (void)sub;
    p = subj ? strrchr(subj, '.') : NULL;
    if (p != NULL && p > subj) {
        const char *q = p - 1;

        while (q > subj && *q != '.')
            q--;
        for (const char *c = q + 1; c < p && *c >= '0' && *c <= '9'; c++)
            gen = gen * 10 + (uint64_t)(*c - '0');
        for (const char *c = p + 1; *c >= '0' && *c <= '9'; c++)
            idx = idx * 10 + (uint64_t)(*c - '0');
        pthread_mutex_lock(&t->mu);
        if (gen == t->gen && idx < t->published && t->msgs[idx].state == NT_SENT) {
            nt_msg_t *x = &t->msgs[idx];
            const char *e = data && len > 0 ? memmem(data, (size_t)len, "\"error\"", 7) : NULL;

            if (natsMsg_IsNoResponders(msg)) {
                x->state = NT_FAILED;
                snprintf(t->last_err, sizeof(t->last_err),
                         "no JetStream stream answered for message %s (no responders)", x->key);
            } else if (e != NULL || data == NULL || len <= 0) {
                x->state = NT_FAILED;
                /* 10070: wrong last msg ID (the chain is broken) */
                if ((x->flags & NT_F_CHAINED) && e != NULL &&
                    nt_json_u64(data, len, "\"err_code\"") == 10070) {
                    t->chain_broken = true;
                    snprintf(t->last_err, sizeof(t->last_err),
                             "another writer's message came in between walrelay's messages "
                             "before %s",
                             x->key);
                } else {
                    snprintf(t->last_err, sizeof(t->last_err),
                             "the server refused message %s: %.*s", x->key, len > 300 ? 300 : len,
                             data ? data : "");
                }
            } else {
                x->state = NT_ACKED;
                x->seq = nt_json_u64(data, len, "\"seq\"");
                /* stored after its predecessor in the chain, so the messages sent without
                 * asking for an answer before it are stored too; not so for a duplicate
                 * (JetStream checks duplicates first: the expectation was not checked) */
                if ((x->flags & NT_F_CHAINED) &&
                    memmem(data, (size_t)len, "\"duplicate\"", 11) == NULL) {
                    for (size_t j = idx; j-- > 0;) {
                        nt_msg_t *y = &t->msgs[j];

                        if (y->state != NT_SENT || (y->flags & NT_F_REPLY))
                            break;
                        y->state = NT_ACKED;
                        y->seq = 0;
                    }
                }
            }
            pthread_cond_signal(&t->cond);
        }
        pthread_mutex_unlock(&t->mu);
    }
    natsMsg_Destroy(msg);
}

/* Finds or creates the stream and the checkpoint bucket. */
static int
nt_ensure_stream(nt_t *t, wr_dest_error_t *err)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    char subj[256];

    snprintf(subj, sizeof(subj), "%s.>", t->prefix);
    s = js_GetStreamInfo(&si, t->js, t->stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig sc;
        const char *subjects[1] = {subj};

        if (!t->create_stream) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, "stream",
                              "the JetStream stream \"%s\" does not exist", t->stream);
            wr_dest_error_hint(err, "create it (subjects \"<subject_prefix>.>\"), or set "
                                    "create_stream = true");
            return WR_DEST_ECONFIG;
        }
        jsStreamConfig_Init(&sc);
        sc.Name = t->stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        sc.Replicas = t->replicas;
        jerr = 0;
        s = js_AddStream(&si, t->js, &sc, NULL, &jerr);
        if (s != NATS_OK && jerr == JSStreamNameExistErr) {
            jerr = 0;
            s = js_GetStreamInfo(&si, t->js, t->stream, NULL, &jerr);
        } else if (s == NATS_OK) {
            wr_dest_log(t->host, WR_DEST_LOG_INFO, "created JetStream stream=%s subjects=%s",
                        t->stream, subj);
        }
    }
    if (s != NATS_OK) {
        if (jerr == 0 && s == NATS_NO_RESPONDERS) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "the NATS server at %s has no JetStream",
                              t->url);
            wr_dest_error_hint(err, "start nats-server with -js (JetStream enabled)");
            return WR_DEST_ECONFIG;
        }
        wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "JetStream stream \"%s\": %s", t->stream,
                          nt_status_text(s, jerr));
        return WR_DEST_ETRANSIENT;
    }
    jsStreamInfo_Destroy(si);
    if (t->kv == NULL) {
        s = js_KeyValue(&t->kv, t->js, t->bucket);
        if (s == NATS_NOT_FOUND) {
            kvConfig kc;

            kvConfig_Init(&kc);
            kc.Bucket = t->bucket;
            kc.History = 1;
            kc.StorageType = js_FileStorage;
            kc.Replicas = (int)t->replicas;
            s = js_CreateKeyValue(&t->kv, t->js, &kc);
        }
        if (s != NATS_OK) {
            wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                              "JetStream key-value bucket \"%s\" (walrelay's checkpoints): %s",
                              t->bucket, nt_status_text(s, 0));
            return WR_DEST_ETRANSIENT;
        }
    }
    t->stream_ok = true;
    return WR_DEST_OK;
}

/* One connection attempt. */
static int
nt_connect_once(nt_t *t, wr_dest_error_t *err)
{
    natsOptions *o = NULL;
    jsOptions jo;
    natsStatus s;
    char name[256];
    int rc;

    nt_disconnect(t);
    s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, t->url);
    if (s == NATS_OK)
        s = natsOptions_SetAllowReconnect(o, false); /* see the header: no overtaking */
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, t->timeout_ms);
    snprintf(name, sizeof(name), "walrelay %s %s", t->pipeline, t->role);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, name);
    if (s == NATS_OK && t->tls)
        s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK && t->tls_ca)
        s = natsOptions_LoadCATrustedCertificates(o, t->tls_ca);
    if (s == NATS_OK && t->tls_cert)
        s = natsOptions_LoadCertificatesChain(o, t->tls_cert, t->tls_key);
    if (s == NATS_OK && t->user)
        s = natsOptions_SetUserInfo(o, t->user, t->password);
    if (s == NATS_OK && t->token)
        s = natsOptions_SetToken(o, t->token);
    if (s == NATS_OK && t->creds)
        s = natsOptions_SetUserCredentialsFromFiles(o, t->creds, NULL);
    if (s != NATS_OK) {
        rc = wr_dest_error_set(err, WR_DEST_ECONFIG, NULL, "NATS client options: %s",
                               nt_status_text(s, 0));
        wr_dest_error_hint(err, "check url and the tls_*, creds files of [destination]");
        natsOptions_Destroy(o);
        return rc;
    }
    s = natsConnection_Connect(&t->nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) {
        t->nc = NULL;
        return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "cannot connect to %s: %s", t->url,
                                 nt_status_text(s, 0));
    }
    jsOptions_Init(&jo);
    jo.Wait = t->timeout_ms;
    s = natsConnection_JetStream(&t->js, t->nc, &jo);
    if (s != NATS_OK) {
        nt_disconnect(t);
        return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "JetStream context: %s",
                                 nt_status_text(s, 0));
    }
    /* publishes carry a reply subject <inbox>.<gen>.<index> (JetStream answers each one
     * there): one subscription, the index says which message */
    {
        natsInbox *inbox = NULL;
        char subj[160];

        s = natsInbox_Create(&inbox);
        if (s == NATS_OK) {
            snprintf(t->inbox, sizeof(t->inbox), "%s", (const char *)inbox);
            natsInbox_Destroy(inbox);
            snprintf(subj, sizeof(subj), "%s.*.*", t->inbox);
            s = natsConnection_Subscribe(&t->acksub, t->nc, subj, nt_on_reply, t);
        }
        if (s == NATS_OK)
            s = natsSubscription_SetPendingLimits(t->acksub, -1, -1);
        if (s != NATS_OK) {
            nt_disconnect(t);
            return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                     "subscribing to JetStream's answers: %s",
                                     nt_status_text(s, 0));
        }
    }
    if ((rc = nt_ensure_stream(t, err)) != WR_DEST_OK) {
        nt_disconnect(t);
        return rc;
    }
    if (!t->scan_from_set) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;

        s = js_GetStreamInfo(&si, t->js, t->stream, NULL, &jerr);
        if (s != NATS_OK) {
            nt_disconnect(t);
            return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "JetStream stream \"%s\": %s",
                                     t->stream, nt_status_text(s, jerr));
        }
        t->scan_from = si->State.LastSeq;
        t->scan_from_set = true;
        jsStreamInfo_Destroy(si);
    }
    return WR_DEST_OK;
}

/* ---- checkpoints and reading back ----------------------------------------------------- */

int
dest_nats_checkpoint_parse(const char *text, size_t len, uint64_t *seq, bool *has_key,
                           wr_dest_key_t *key)
{
    const char *sp = memchr(text, ' ', len);
    uint64_t v = 0;

    *seq = 0;
    *has_key = false;
    if (sp == NULL || sp == text || sp - text > 20)
        return -1;
    for (const char *p = text; p < sp; p++) {
        uint64_t dgt = (uint64_t)(*p - '0');

        if (*p < '0' || *p > '9' || v > (UINT64_MAX - dgt) / 10)
            return -1;
        v = v * 10 + dgt;
    }
    sp++;
    len -= (size_t)(sp - text);
    if (len == 1 && sp[0] == '-') {
        *seq = v;
        return 0;
    }
    if (evj_key_parse(sp, len, key) != 0)
        return -1;
    *seq = v;
    *has_key = true;
    return 0;
}

static int
nt_ck_read(nt_t *t, const char *wstream, uint64_t *seq, bool *has_key, wr_dest_key_t *key,
           wr_dest_error_t *err)
{
    kvEntry *e = NULL;
    natsStatus s = kvStore_Get(&e, t->kv, wstream);
    int rc;

    *seq = 0;
    *has_key = false;
    if (s == NATS_NOT_FOUND)
        return WR_DEST_OK;
    if (s != NATS_OK)
        return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                 "reading walrelay's checkpoint \"%s\" of bucket \"%s\": %s",
                                 wstream, t->bucket, nt_status_text(s, 0));
    rc = dest_nats_checkpoint_parse((const char *)kvEntry_Value(e), kvEntry_ValueLen(e), seq,
                                    has_key, key);
    if (rc != 0)
        wr_dest_error_set(err, WR_DEST_EIO, NULL,
                          "walrelay's checkpoint \"%s\" in bucket \"%s\" is damaged: \"%.*s\"",
                          wstream, t->bucket, kvEntry_ValueLen(e) > 100 ? 100 : kvEntry_ValueLen(e),
                          (const char *)kvEntry_Value(e));
    kvEntry_Destroy(e);
    return rc == 0 ? WR_DEST_OK : WR_DEST_EIO;
}

static int
nt_ck_write(nt_t *t, const char *wstream, uint64_t seq, bool has_key, const wr_dest_key_t *key,
            wr_dest_error_t *err)
{
    char buf[128], ks[EVJ_KEY_LEN];
    natsStatus s;
    int n = snprintf(buf, sizeof(buf), "%" PRIu64 " %s", seq, has_key ? evj_key(key, ks) : "-");

    s = kvStore_Put(NULL, t->kv, wstream, buf, n);
    if (s != NATS_OK)
        return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                 "writing walrelay's checkpoint \"%s\" to bucket \"%s\": %s",
                                 wstream, t->bucket, nt_status_text(s, 0));
    return WR_DEST_OK;
}

static int
nt_last_seq(nt_t *t, uint64_t *first, uint64_t *last, wr_dest_error_t *err)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, t->js, t->stream, NULL, &jerr);

    if (s != NATS_OK)
        return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL, "JetStream stream \"%s\": %s",
                                 t->stream, nt_status_text(s, jerr));
    *first = si->State.FirstSeq;
    *last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return WR_DEST_OK;
}

/* Reads the headers of the stream's messages after `after` (to its last one now) and
 * reports, for messages of walrelay stream wstream: the last one's Msg-Id (last_id, ""
 * if none), the greatest change key (*has_key, *key) and the last one's sequence. */
static int
nt_read_back(nt_t *t, const char *wstream, uint64_t after, char last_id[EVJ_KEY_LEN], bool *has_key,
             wr_dest_key_t *key, uint64_t *last_seq, wr_dest_error_t *err)
{
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsStatus s;
    uint64_t first = 0, last = 0, seen = 0, nread = 0;
    char filter[256];
    int rc;

    last_id[0] = '\0';
    *has_key = false;
    *last_seq = 0;
    if ((rc = nt_last_seq(t, &first, &last, err)) != WR_DEST_OK)
        return rc;
    if (last <= after || last == 0)
        return WR_DEST_OK;
    jsSubOptions_Init(&so);
    so.Stream = t->stream;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = after + 1 > first ? after + 1 : first;
    so.Config.HeadersOnly = true;
    snprintf(filter, sizeof(filter), "%s.>", t->prefix);
    s = js_SubscribeSync(&sub, t->js, filter, NULL, &so, &jerr);
    if (s != NATS_OK)
        return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                 "reading back stream \"%s\" after sequence %" PRIu64 ": %s",
                                 t->stream, after, nt_status_text(s, jerr));
    while (seen < last) {
        natsMsg *m = NULL;
        jsMsgMetaData *md = NULL;
        const char *ws = NULL, *id = NULL;

        s = natsSubscription_NextMsg(&m, sub, t->timeout_ms);
        if (s != NATS_OK) {
            rc = wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                   "reading back stream \"%s\" (at sequence %" PRIu64 " of %" PRIu64
                                   "): %s",
                                   t->stream, seen, last, nt_status_text(s, 0));
            natsSubscription_Destroy(sub);
            return rc;
        }
        if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
            seen = md->Sequence.Stream;
            jsMsgMetaData_Destroy(md);
        }
        nread++;
        if (seen <= last && natsMsgHeader_Get(m, NT_STREAM_HDR, &ws) == NATS_OK && ws != NULL &&
            strcmp(ws, wstream) == 0 && natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK &&
            id != NULL) {
            wr_dest_key_t k;

            snprintf(last_id, EVJ_KEY_LEN, "%s", id);
            *last_seq = seen;
            if (evj_key_parse(id, strlen(id), &k) == 0 &&
                (!*has_key || wr_dest_key_cmp(&k, key) > 0)) {
                *key = k;
                *has_key = true;
            }
        }
        natsMsg_Destroy(m);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    wr_dest_log(t->host, WR_DEST_LOG_DEBUG,
                "read back stream=%s walrelay_stream=%s after=%" PRIu64 " last=%" PRIu64
                " messages=%" PRIu64 " found=\"%s\"",
                t->stream, wstream, after, last, nread, last_id);
    return WR_DEST_OK;
}

/* ---- publishing ----------------------------------------------------------------------- */

#ifdef WR_HAVE_NATSMSG_FREE
/* exported by libnats (3.4) but not declared in nats.h (meson.build checks for it) */
extern void natsMsg_free(void *object);
#endif

/* Frees a message that was only published (libnats copied it into its buffers).
 * natsMsg_Destroy would hand it to libnats' garbage-collector thread: a publisher then
 * spends most of its time contending with that thread for malloc's lock, and the garbage
 * waiting for it grows (bench/RESULTS.md: 7-8 us and 120 MB for 1M messages against
 * 0.7 us and 6 MB). */
static void
nt_msg_free(natsMsg *m)
{
#ifdef WR_HAVE_NATSMSG_FREE
    natsMsg_free(m);
#else
    natsMsg_Destroy(m);
#endif
}

/* Hands msgs[published..n) that are not stored to libnats (in a chain, all but the
 * newest unless `final`: the batch's last message asks for an answer). A failure marks the
 * batch broken (recovered at flush). */
static void
nt_publish_pending(nt_t *t, bool final)
{
    bool chain = nt_wall_us() >= t->chain_off_until;

    while (!t->broken && t->nc != NULL) {
        natsMsg *m = NULL;
        nt_msg_t *x;
        natsStatus s;
        size_t i;
        uint32_t gen;
        bool chained, reply;

        pthread_mutex_lock(&t->mu);
        i = t->published;
        gen = t->gen;
        if (i >= t->n || (chain && !final && i + 1 >= t->n)) {
            pthread_mutex_unlock(&t->mu);
            return;
        }
        x = &t->msgs[i];
        if (x->state == NT_ACKED) {
            t->published++;
            pthread_mutex_unlock(&t->mu);
            continue;
        }
        if ((int64_t)x->data_len + 1024 > natsConnection_GetMaxPayload(t->nc)) {
            pthread_mutex_unlock(&t->mu);
            snprintf(t->fatal, sizeof(t->fatal),
                     "the change %s on \"%s\" is %zu bytes, more than the %lld bytes the NATS "
                     "server takes in a message (max_payload)",
                     x->key, t->arena.data + x->subj_off, x->data_len,
                     (long long)natsConnection_GetMaxPayload(t->nc));
            t->broken = true;
            return;
        }
        chained = chain && i > 0 && t->chain_next == i;
        reply = !chained || i + 1 == t->n || (i + 1) % NT_CHAIN_ACK_EVERY == 0;
        x->state = NT_SENT;
        x->flags = (uint8_t)((reply ? NT_F_REPLY : 0) | (chained ? NT_F_CHAINED : 0));
        if (chain)
            t->chain_next = i + 1;
        t->published++;
        pthread_mutex_unlock(&t->mu);
        {
            char rsubj[200], num[24], *q = num + sizeof(num);
            size_t il = strlen(t->inbox);
            uint64_t v;

            /* <inbox>.<gen>.<index>, without snprintf (once per message) */
            *--q = '\0';
            v = i;
            do {
                *--q = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            *--q = '.';
            v = gen;
            do {
                *--q = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            memcpy(rsubj, t->inbox, il);
            rsubj[il] = '.';
            memcpy(rsubj + il + 1, q, (size_t)(num + sizeof(num) - q));
            s = natsMsg_Create(&m, t->arena.data + x->subj_off, reply ? rsubj : NULL,
                               t->arena.data + x->data_off, (int)x->data_len);
        }
        if (s == NATS_OK)
            s = natsMsgHeader_Set(m, "Nats-Msg-Id", x->key);
        /* msgs[i - 1] is not moved: only this thread appends (and reallocates) */
        if (s == NATS_OK && chained)
            s = natsMsgHeader_Set(m, "Nats-Expected-Last-Msg-Id", t->msgs[i - 1].key);
        if (s == NATS_OK)
            s = natsMsgHeader_Set(m, "Nats-Expected-Stream", t->stream);
        if (s == NATS_OK)
            s = natsMsgHeader_Set(m, NT_STREAM_HDR, t->wstream);
        if (s == NATS_OK)
            s = natsConnection_PublishMsg(t->nc, m);
        nt_msg_free(m);
        if (s != NATS_OK) {
            pthread_mutex_lock(&t->mu);
            x->state = NT_NEW;
            snprintf(t->last_err, sizeof(t->last_err), "publishing to %s: %s", t->url,
                     nt_status_text(s, 0));
            pthread_mutex_unlock(&t->mu);
            t->broken = true;
        }
    }
}

/* Waits until every published message is acknowledged: 0, or -1 (t->last_err says why:
 * a negative ack, the connection closed, timeout_ms without progress). */
static int
nt_wait_acks(nt_t *t)
{
    int64_t idle_ms = 0;
    size_t acked_before = SIZE_MAX;

    for (;;) {
        size_t acked = 0, failed = 0, pending = 0, unproven = 0;

        pthread_mutex_lock(&t->mu);
        for (size_t i = 0; i < t->published; i++) {
            if (t->msgs[i].state == NT_ACKED)
                acked++;
            else if (t->msgs[i].state == NT_FAILED)
                failed++;
            else if (t->msgs[i].state == NT_SENT && !(t->msgs[i].flags & NT_F_REPLY))
                unproven++;
            else
                pending++;
        }
        pthread_mutex_unlock(&t->mu);
        if (failed > 0 || t->broken)
            return -1;
        if (pending == 0 && unproven > 0) {
            /* every answer is in, and none proved these (a chain ended in a duplicate, or
             * its last message is not sent yet): read back what the stream holds */
            snprintf(t->last_err, sizeof(t->last_err),
                     "%zu messages sent without asking for an answer are not confirmed by a "
                     "later one",
                     unproven);
            return -1;
        }
        if (pending == 0)
            return 0;
        if (t->nc == NULL || natsConnection_IsClosed(t->nc)) {
            snprintf(t->last_err, sizeof(t->last_err), "the connection to %s was lost", t->url);
            return -1;
        }
        if (acked != acked_before) {
            acked_before = acked;
            idle_ms = 0;
        } else if (idle_ms >= t->timeout_ms) {
            snprintf(t->last_err, sizeof(t->last_err),
                     "no acknowledgement from %s for %ld ms (%zu messages waiting)", t->url,
                     t->timeout_ms, pending);
            return -1;
        }
        {
            struct timespec ts;

            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&t->mu);
            (void)pthread_cond_timedwait(&t->cond, &t->mu, &ts);
            pthread_mutex_unlock(&t->mu);
        }
        idle_ms += 50;
    }
}

/* After a failure: reconnect (retrying for as long as it takes), find out which of the
 * batch's messages the stream holds, publish the others again, wait for their acks. */
static int
nt_recover(nt_t *t, wr_dest_error_t *err)
{
    long backoff = NT_BACKOFF_FIRST_MS;
    unsigned attempt = 0;
    int rc;

    for (;;) {
        char last_id[EVJ_KEY_LEN], why[512];
        bool hk;
        wr_dest_key_t k;
        uint64_t ls;
        long delay;
        bool chain_broken;

        if (t->fatal[0] != '\0') {
            rc = wr_dest_error_set(err, WR_DEST_ECONFIG, NULL, "%s", t->fatal);
            wr_dest_error_hint(err, "raise max_payload in nats-server's configuration (up to 64 "
                                    "MB), then start walrelay run again");
            wr_dest_waiting(t->host, "stopped: %s", t->fatal);
            return rc;
        }

        wr_copy_text(why, sizeof(why), t->last_err[0] ? t->last_err : "connection failed");
        attempt++;
        /* whatever the failure of a batch, answers are asked for every message for a
         * while (not for a first connection) */
        if (t->n > 0)
            t->chain_off_until = nt_wall_us() + NT_CHAIN_PAUSE_US;
        pthread_mutex_lock(&t->mu);
        chain_broken = t->chain_broken;
        t->chain_broken = false;
        pthread_mutex_unlock(&t->mu);
        if (attempt == 1 && t->nc != NULL && chain_broken)
            wr_dest_log(t->host, WR_DEST_LOG_INFO,
                        "NATS stream %s has another writer: reading back what it holds, then "
                        "asking JetStream to acknowledge every message for %lld s "
                        "reason=\"%s\"",
                        t->stream, NT_CHAIN_PAUSE_US / 1000000LL, why);
        else if (attempt == 1 && t->nc != NULL)
            wr_dest_log(t->host, WR_DEST_LOG_WARN,
                        "NATS delivery failed, reconnecting url=%s "
                        "error=\"%s\"",
                        t->url, why);
        delay = backoff / 2 + (long)(rand_r(&t->rng) % (unsigned)(backoff / 2 + 1));
        if (backoff < t->max_retry_ms)
            backoff = backoff * 2 > t->max_retry_ms ? t->max_retry_ms : backoff * 2;
        if (attempt == 1)
            delay = 0;
        else
            wr_dest_waiting(t->host, "NATS %s: %s; attempt %u, next in %.1f s", t->url, why,
                            attempt, (double)delay / 1000.0);
        nt_disconnect(t);
        t->broken = false;
        if (nt_sleep(t, delay)) {
            wr_dest_waiting(t->host, NULL);
            return wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                     "stopped while retrying NATS %s (%u attempts, last: %s)",
                                     t->url, attempt, why);
        }
        rc = nt_connect_once(t, err);
        if (rc == WR_DEST_ECONFIG)
            return rc;
        if (rc != WR_DEST_OK) {
            wr_copy_text(t->last_err, sizeof(t->last_err), err->message);
            continue;
        }
        if (t->wstream[0] != '\0' && t->n > 0) {
            rc = nt_read_back(t, t->wstream, t->scan_from, last_id, &hk, &k, &ls, err);
            if (rc != WR_DEST_OK) {
                wr_copy_text(t->last_err, sizeof(t->last_err), err->message);
                continue;
            }
            /* the stream holds the batch up to last_id (in order, one connection), except
             * messages the server refused */
            if (last_id[0] != '\0') {
                pthread_mutex_lock(&t->mu);
                for (size_t i = 0; i < t->n; i++) {
                    if (strcmp(t->msgs[i].key, last_id) == 0) {
                        for (size_t j = 0; j <= i; j++)
                            if (t->msgs[j].state != NT_FAILED && t->msgs[j].state != NT_ACKED) {
                                t->msgs[j].state = NT_ACKED;
                                t->msgs[j].seq = 0;
                            }
                        break;
                    }
                }
                pthread_mutex_unlock(&t->mu);
            }
            pthread_mutex_lock(&t->mu);
            for (size_t i = 0; i < t->n; i++)
                if (t->msgs[i].state == NT_FAILED)
                    t->msgs[i].state = NT_NEW;
            pthread_mutex_unlock(&t->mu);
        }
        t->last_err[0] = '\0';
        nt_publish_pending(t, true);
        if (nt_wait_acks(t) != 0)
            continue;
        if (attempt > 1) {
            wr_dest_waiting(t->host, NULL);
            wr_dest_log(t->host, WR_DEST_LOG_INFO, "NATS delivery resumed url=%s attempts=%u",
                        t->url, attempt);
        }
        return WR_DEST_OK;
    }
}

/* Connects when there is no connection (open, or after a failure), for as long as it
 * takes. */
static int
nt_need_connection(nt_t *t, wr_dest_error_t *err)
{
    if (t->nc != NULL && !natsConnection_IsClosed(t->nc))
        return WR_DEST_OK;
    snprintf(t->last_err, sizeof(t->last_err), "not connected");
    return nt_recover(t, err);
}

/* ---- open / close --------------------------------------------------------------------- */

static void
nt_free(nt_t *t)
{
    if (t == NULL)
        return;
    nt_disconnect(t);
    free(t->url);
    free(t->stream);
    free(t->prefix);
    free(t->bucket);
    free(t->user);
    nt_free_secret(t->password);
    nt_free_secret(t->token);
    free(t->creds);
    free(t->tls_ca);
    free(t->tls_cert);
    free(t->tls_key);
    free(t->msgs);
    jw_free(&t->arena);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    free(t);
}

static char *
nt_path(const wr_dest_config_t *cfg, const char *key)
{
    const char *v = wr_dest_config_get(cfg, key);
    char *p;

    if (v == NULL || v[0] == '/')
        return nt_dup(v);
    p = malloc(strlen(cfg->dir) + strlen(v) + 2);
    if (p != NULL)
        sprintf(p, "%s/%s", cfg->dir, v);
    return p;
}

static int
nt_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state, wr_dest_error_t *err)
{
    const char *v;
    nt_t *t = calloc(1, sizeof(*t));
    char buf[256];

    if (t == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cond, NULL);
    jw_init(&t->arena);
    t->host = host;
    snprintf(t->role, sizeof(t->role), "%s", host && host->role ? host->role : "apply");
    snprintf(t->pipeline, sizeof(t->pipeline), "%s", cfg->pipeline);
    t->url = nt_dup(wr_dest_config_get(cfg, "url"));
    v = wr_dest_config_get(cfg, "stream");
    snprintf(buf, sizeof(buf), "walrelay_%s", cfg->pipeline);
    t->stream = nt_dup(v ? v : buf);
    v = wr_dest_config_get(cfg, "subject_prefix");
    snprintf(buf, sizeof(buf), "walrelay.%s", cfg->pipeline);
    t->prefix = nt_dup(v ? v : buf);
    if (t->stream != NULL) {
        snprintf(buf, sizeof(buf), "%s_walrelay", t->stream);
        t->bucket = nt_dup(buf);
    }
    t->user = nt_dup(wr_dest_config_get(cfg, "user"));
    t->password = nt_dup(wr_dest_config_get(cfg, "password"));
    t->token = nt_dup(wr_dest_config_get(cfg, "token"));
    t->creds = nt_path(cfg, "creds");
    t->tls_ca = nt_path(cfg, "tls_ca");
    t->tls_cert = nt_path(cfg, "tls_cert");
    t->tls_key = nt_path(cfg, "tls_key");
    t->create_stream = true;
    (void)nt_parse_bool(wr_dest_config_get(cfg, "create_stream"), &t->create_stream);
    (void)nt_parse_bool(wr_dest_config_get(cfg, "tls"), &t->tls);
    t->replicas = 1;
    (void)nt_parse_long(wr_dest_config_get(cfg, "replicas"), 1, 5, &t->replicas);
    v = wr_dest_config_get(cfg, "timeout_ms");
    (void)nt_parse_long(v ? v : NT_DEFAULT_TIMEOUT_MS, 100, 3600000, &t->timeout_ms);
    v = wr_dest_config_get(cfg, "max_retry_ms");
    (void)nt_parse_long(v ? v : NT_DEFAULT_MAX_RETRY_MS, 100, 3600000, &t->max_retry_ms);
    t->rng = (unsigned int)getpid() ^ (unsigned int)time(NULL);
    if (t->url == NULL || t->stream == NULL || t->prefix == NULL || t->bucket == NULL) {
        nt_free(t);
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    }
    if (strcmp(t->role, "apply") == 0)
        snprintf(t->wstream, sizeof(t->wstream), "apply");
    *state = t;
    return WR_DEST_OK;
}

static void
nt_close(void *state)
{
    nt_t *t = state;

    if (t != NULL)
        wr_dest_log(t->host, WR_DEST_LOG_DEBUG, "closed messages=%" PRIu64, t->sent);
    nt_free(t);
}

/* `walrelay check`: the server answers, JetStream works, the stream exists or can be
 * created, the checkpoint bucket too. */
static int
nt_check(void *state, wr_dest_error_t *err)
{
    nt_t *t = state;

    return nt_connect_once(t, err);
}

/* ---- the ABI calls -------------------------------------------------------------------- */

/* The walrelay stream of a sync instance is its table's. */
static void
nt_sync_stream(nt_t *t, uint32_t relid)
{
    if (t->wstream[0] == '\0')
        snprintf(t->wstream, sizeof(t->wstream), "sync_%u", (unsigned)relid);
}

/* Appends a message (subject, then the JSON the caller writes with write(arena)). */
static nt_msg_t *
nt_add(nt_t *t, const wr_dest_relation_t *rel, const char *op, const char *key)
{
    nt_msg_t *x;

    if (t->n == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 1024;
        nt_msg_t *nm;

        pthread_mutex_lock(&t->mu);
        nm = realloc(t->msgs, ncap * sizeof(*nm));
        if (nm != NULL) {
            t->msgs = nm;
            t->cap = ncap;
        }
        pthread_mutex_unlock(&t->mu);
        if (nm == NULL)
            return NULL;
    }
    x = &t->msgs[t->n];
    memset(x, 0, sizeof(*x));
    snprintf(x->key, sizeof(x->key), "%s", key);
    x->subj_off = t->arena.len;
    jw_lit(&t->arena, t->prefix);
    jw_raw(&t->arena, ".", 1);
    nt_token(&t->arena, rel->schema);
    jw_raw(&t->arena, ".", 1);
    nt_token(&t->arena, rel->name);
    jw_raw(&t->arena, ".", 1);
    jw_lit(&t->arena, op);
    jw_raw(&t->arena, "", 1); /* NUL */
    x->data_off = t->arena.len;
    return x;
}

static int
nt_added(nt_t *t, nt_msg_t *x, wr_dest_error_t *err)
{
    if (x == NULL || jw_failed(&t->arena))
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory buffering messages");
    x->data_len = t->arena.len - x->data_off;
    pthread_mutex_lock(&t->mu);
    t->n++;
    pthread_mutex_unlock(&t->mu);
    return WR_DEST_OK;
}

static int
nt_write_events(void *state, const wr_dest_event_t *events, size_t nevents, wr_dest_error_t *err)
{
    nt_t *t = state;
    char key[EVJ_KEY_LEN];
    int rc;

    for (size_t i = 0; i < nevents; i++) {
        const wr_dest_event_t *ev = &events[i];
        nt_msg_t *x;

        if (!evj_is_change(ev))
            continue;
        nt_sync_stream(t, ev->relation->relid);
        x = nt_add(t, ev->relation, evj_op(ev), evj_key(&ev->key, key));
        if (x != NULL)
            evj_event(&t->arena, ev);
        if ((rc = nt_added(t, x, err)) != WR_DEST_OK)
            return rc;
    }
    /* publish as they come: the acknowledgements overlap with the next events */
    nt_publish_pending(t, false);
    return WR_DEST_OK;
}

static void
nt_copy_start(nt_t *t, uint32_t relid)
{
    t->copy_relid = relid;
    t->copy_attempt_us = nt_wall_us();
    t->copy_n = 0;
}

static int
nt_truncate_table(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    nt_t *t = state;
    char key[EVJ_KEY_LEN];
    nt_msg_t *x;
    int rc;

    /* walrelay truncates a table only to copy it (again) */
    nt_sync_stream(t, rel->relid);
    nt_copy_start(t, rel->relid);
    evj_copy_key(rel->relid, t->copy_attempt_us, 0, key);
    x = nt_add(t, rel, "truncate", key);
    if (x != NULL)
        evj_copy_truncate(&t->arena, rel, key);
    if ((rc = nt_added(t, x, err)) != WR_DEST_OK)
        return rc;
    nt_publish_pending(t, false);
    return WR_DEST_OK;
}

static int
nt_write_table_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                    size_t nrows, wr_dest_error_t *err)
{
    nt_t *t = state;
    char key[EVJ_KEY_LEN];
    int rc;

    nt_sync_stream(t, rel->relid);
    if (t->copy_relid != rel->relid)
        nt_copy_start(t, rel->relid);
    for (size_t i = 0; i < nrows; i++) {
        nt_msg_t *x;

        evj_copy_key(rel->relid, t->copy_attempt_us, ++t->copy_n, key);
        x = nt_add(t, rel, "insert", key);
        if (x != NULL)
            evj_copy_row(&t->arena, rel, &rows[i], key);
        if ((rc = nt_added(t, x, err)) != WR_DEST_OK)
            return rc;
    }
    nt_publish_pending(t, false);
    return WR_DEST_OK;
}

static void
nt_batch_reset(nt_t *t)
{
    pthread_mutex_lock(&t->mu);
    t->n = 0;
    t->published = 0;
    t->chain_next = 0;
    t->gen++;
    pthread_mutex_unlock(&t->mu);
    jw_reset(&t->arena);
}

/* Loads the checkpoint's key once (before this instance first writes it). */
static int
nt_ck_load(nt_t *t, wr_dest_error_t *err)
{
    uint64_t seq;
    int rc;

    if (t->ck_loaded)
        return WR_DEST_OK;
    rc = nt_ck_read(t, t->wstream, &seq, &t->ck_has_key, &t->ck_key, err);
    if (rc == WR_DEST_OK)
        t->ck_loaded = true;
    return rc;
}

static int
nt_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    nt_t *t = state;
    uint64_t seq;
    int rc;

    if (t->wstream[0] == '\0')
        snprintf(t->wstream, sizeof(t->wstream), "%s", stream);
    if (strcmp(t->wstream, stream) != 0)
        return wr_dest_error_set(err, WR_DEST_EIO, NULL,
                                 "this instance publishes for walrelay stream \"%s\", not \"%s\"",
                                 t->wstream, stream);
    if (t->n == 0 && key == NULL)
        return WR_DEST_OK;
    if ((rc = nt_need_connection(t, err)) != WR_DEST_OK)
        return rc;
    nt_publish_pending(t, true);
    FAILPOINT("nats.after_publish");
    if (nt_wait_acks(t) != 0 && (rc = nt_recover(t, err)) != WR_DEST_OK)
        return rc;
    FAILPOINT("nats.after_ack");
    seq = t->scan_from;
    for (size_t i = 0; i < t->n; i++)
        if (t->msgs[i].seq > seq)
            seq = t->msgs[i].seq;
    /* the checkpoint: retried like the messages (a connection lost here) */
    for (;;) {
        rc = nt_ck_load(t, err);
        if (rc == WR_DEST_OK) {
            if (key != NULL) {
                t->ck_has_key = true;
                t->ck_key = *key;
            }
            rc = nt_ck_write(t, t->wstream, seq, t->ck_has_key, &t->ck_key, err);
        }
        if (rc == WR_DEST_OK)
            break;
        if (rc != WR_DEST_ETRANSIENT)
            return rc;
        wr_copy_text(t->last_err, sizeof(t->last_err), err->message);
        if ((rc = nt_recover(t, err)) != WR_DEST_OK)
            return rc;
    }
    t->scan_from = seq;
    t->sent += t->n;
    nt_batch_reset(t);
    return WR_DEST_OK;
}

static int
nt_last_key(void *state, const char *stream, wr_dest_key_t *key, bool *found, wr_dest_error_t *err)
{
    nt_t *t = state;
    char last_id[EVJ_KEY_LEN];
    uint64_t seq = 0, ls = 0;
    bool hk = false, ck_has = false;
    wr_dest_key_t k, ck_key;
    int rc;

    *found = false;
    for (;;) {
        if ((rc = nt_need_connection(t, err)) != WR_DEST_OK)
            return rc;
        rc = nt_ck_read(t, stream, &seq, &ck_has, &ck_key, err);
        if (rc == WR_DEST_OK)
            rc = nt_read_back(t, stream, seq, last_id, &hk, &k, &ls, err);
        if (rc == WR_DEST_OK)
            break;
        if (rc != WR_DEST_ETRANSIENT)
            return rc;
        wr_copy_text(t->last_err, sizeof(t->last_err), err->message);
        nt_disconnect(t);
    }
    if (strcmp(t->wstream, stream) == 0 || t->wstream[0] == '\0') {
        snprintf(t->wstream, sizeof(t->wstream), "%s", stream);
        t->ck_loaded = true;
        t->ck_has_key = ck_has || hk;
        t->ck_key = ck_has ? ck_key : k;
        if (hk && (!ck_has || wr_dest_key_cmp(&k, &ck_key) > 0))
            t->ck_key = k;
    }
    if (ck_has) {
        *key = ck_key;
        *found = true;
    }
    if (hk && (!*found || wr_dest_key_cmp(&k, key) > 0)) {
        *key = k;
        *found = true;
    }
    if (hk)
        wr_dest_log(t->host, WR_DEST_LOG_INFO,
                    "found messages after the checkpoint stream=%s walrelay_stream=%s "
                    "checkpoint_seq=%" PRIu64 " last_seq=%" PRIu64,
                    t->stream, stream, seq, ls);
    return WR_DEST_OK;
}

static int
nt_forget_stream(void *state, const char *stream, wr_dest_error_t *err)
{
    nt_t *t = state;
    uint64_t first = 0, last = 0;
    wr_dest_key_t none = {0, 0};
    int rc;

    for (;;) {
        if ((rc = nt_need_connection(t, err)) != WR_DEST_OK)
            return rc;
        rc = nt_last_seq(t, &first, &last, err);
        if (rc == WR_DEST_OK)
            rc = nt_ck_write(t, stream, last, false, &none, err);
        if (rc == WR_DEST_OK)
            break;
        wr_copy_text(t->last_err, sizeof(t->last_err), err->message);
        nt_disconnect(t);
    }
    if (strcmp(t->wstream, stream) == 0) {
        t->ck_loaded = true;
        t->ck_has_key = false;
    }
    return WR_DEST_OK;
}

static int
nt_discard(void *state, wr_dest_error_t *err)
{
    nt_t *t = state;

    (void)err;
    /* what was published stays (the stream holds it; last_key reads it back, and a batch
     * sent again in this process is deduplicated by its Nats-Msg-Id); the rest is
     * dropped. Wait for the acknowledgements so that nothing of this batch arrives late. */
    if (t->nc != NULL && t->published > 0 && nt_wait_acks(t) != 0)
        nt_disconnect(t);
    nt_batch_reset(t);
    return WR_DEST_OK;
}

static const wr_dest_ops_t nt_ops = {
    .abi_version = WR_DEST_ABI_VERSION,
    .struct_size = sizeof(wr_dest_ops_t),
    .name = "nats",
    .capabilities = WR_DEST_CAP_TRANSACTIONAL | WR_DEST_CAP_SCHEMA_CHANGES | WR_DEST_CAP_DISCARD,
    .validate = nt_validate,
    .open = nt_open,
    .check = nt_check,
    .truncate_table = nt_truncate_table,
    .write_table_rows = nt_write_table_rows,
    .write_events = nt_write_events,
    .flush = nt_flush,
    .last_key = nt_last_key,
    .forget_stream = nt_forget_stream,
    .discard = nt_discard,
    .close = nt_close,
};

const wr_dest_ops_t *
dest_nats_abi(void)
{
    return &nt_ops;
}

/* ---- registry entry ------------------------------------------------------------------- */

static const dest_keyspec_t nt_keys[] = {
    {"url", NULL,
     "NATS server(s) with JetStream: nats://host:4222 (a cluster: several URLs\n"
     "separated by commas).",
     true, false, false},
    {"stream", NULL,
     "JetStream stream the changes go to (default walrelay_<pipeline>).\n"
     "stream = walrelay_orders",
     false, false, false},
    {"subject_prefix", NULL,
     "Subjects are <subject_prefix>.<schema>.<table>.<op> (default walrelay.<pipeline>).\n"
     "subject_prefix = cdc.orders",
     false, false, false},
    {"create_stream", "true", "Create the stream (subjects <subject_prefix>.>) when it is missing.",
     false, false, false},
    {"replicas", "1", "Copies of a stream walrelay creates (a JetStream cluster: 3).", false, false,
     false},
    {"timeout_ms", NT_DEFAULT_TIMEOUT_MS,
     "Connecting, and waiting for the server's acknowledgements, at most this long\n"
     "before walrelay reconnects and publishes what is missing.",
     false, false, false},
    {"max_retry_ms", NT_DEFAULT_MAX_RETRY_MS,
     "Longest wait between two reconnection attempts (backoff with jitter).", false, false, false},
    {"user", NULL, "User name (with password).\nuser = walrelay", false, false, false},
    {"password", NULL, "Password of user. Never printed.\npassword = ...", false, true, false},
    {"token", NULL, "Authentication token. Never printed.\ntoken = ...", false, true, false},
    {"creds", NULL,
     "User credentials file (JWT and NKey seed), relative to this directory.\n"
     "creds = walrelay.creds",
     false, false, true},
    {"tls", "false", "Require TLS.", false, false, false},
    {"tls_ca", NULL, "CA certificates to trust (PEM file).\ntls_ca = ca.pem", false, false, true},
    {"tls_cert", NULL, "Client certificate (PEM file), with tls_key.\ntls_cert = client.pem", false,
     false, true},
    {"tls_key", NULL, "Client certificate's key (PEM file).\ntls_key = client-key.pem", false,
     false, true},
};

static int
nt_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg == NULL || arg[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "--destination nats needs the server: nats:nats://HOST:PORT");
        wr_err_hint(err, "--destination nats:nats://127.0.0.1:4222");
        return WR_ECONFIG;
    }
    values[0] = arg;
    return 0;
}

static int
nt_type_validate(const wr_config_t *cfg, wr_err_t *err)
{
    return dest_abi_validate(&nt_ops, cfg, err);
}

static int
nt_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    char inner[256];
    int rc = dest_abi_preflight(&nt_ops, cfg, inner, sizeof(inner), err);
    const char *stream = dest_config_value(cfg, "stream");

    if (rc == 0)
        snprintf(summary, len, "nats %s stream %s%s: %s", dest_config_value(cfg, "url"),
                 stream ? stream : "walrelay_", stream ? "" : cfg->pipeline_name, inner);
    return rc;
}

static void
nt_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    const char *url = dest_config_value(cfg, "url");

    snprintf(buf, len, "nats %s", url ? url : "");
}

static int
nt_type_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    return dest_abi_open(&nt_ops, NULL, cfg, role, out, err);
}

const dest_type_t dest_type_nats = {
    .name = "nats",
    .summary = "a NATS JetStream stream, one message per change (exactly once)",
    .init_usage = "nats:nats://HOST:PORT",
    .keys = nt_keys,
    .nkeys = sizeof(nt_keys) / sizeof(nt_keys[0]),
    .init_arg = nt_init_arg,
    .validate = nt_type_validate,
    .preflight = nt_preflight,
    .describe = nt_describe,
    .open = nt_type_open,
};
