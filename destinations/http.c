/*
 * http.c - the "http" destination (webhook): POSTs {"events": [...]} batches of the JSON
 * events of docs/events.md to a URL with libcurl, in commit order, at least once.
 *
 * NOTES: written on the public destination ABI (walrelay/destination.h), like a plugin,
 * and opened through the adapter (destinations/abi.c). Runs in walrelay-apply and in each
 * walrelay-sync (the copy's rows are events too): one batch in flight per process, so the
 * order of each table's changes is kept. Persists nothing: it is not transactional, the
 * slot is confirmed only past batches the receiver acknowledged (flush returns after the
 * 2xx), and after a crash walrelay sends again from the slot's confirmed position with the
 * same keys (at least once; the receiver deduplicates by key).
 *
 * BATCHES. write_events / write_table_rows append events to the body of the next request;
 * it is sent when it holds max_batch_events events or HTTP_MAX_BODY bytes, and at every
 * flush. discard() drops what has not been sent.
 *
 * ANSWERS (one request at a time, the same body until it is acknowledged):
 *   2xx                       acknowledged
 *   408, 429, 5xx, and every  retried for as long as it takes, never dropped: exponential
 *   transport error (refused, backoff from HTTP_BACKOFF_FIRST_MS doubling to max_retry_ms,
 *   reset, timeout_ms passed)  with full jitter (a random delay in [d/2, d]); a Retry-After
 *                             of a 429 or 503 (seconds or a date) is honoured instead.
 *                             Meanwhile the host's waiting() says "POST URL: <last error>;
 *                             attempt N, next in S s" (walrelay status shows it), and
 *                             interrupted() is asked every HTTP_SLICE_MS: a stop gives up
 *                             with WR_DEST_ETRANSIENT (the batch is sent again next run)
 *   anything else (4xx, 3xx)  the pipeline stops (WR_DEST_ECONFIG: exit code 2, the
 *                             pipeline degraded) with the status and the start of the
 *                             response body in the error and in status; the batch is never
 *                             skipped: the next run sends it again
 *
 * SIGNATURE. With secret, each request carries X-Walrelay-Timestamp (Unix seconds) and
 *   X-Walrelay-Signature: sha256=<hex HMAC-SHA256 of the body, key = secret> (OpenSSL's
 *   HMAC). docs/destinations.md shows how a receiver checks it.
 *
 * The URL's user:password and query string never appear in messages or logs (a token may
 * be there); nor do secret and the header values.
 */
#include "abi.h"
#include "event_json.h"
#include "registry.h"

#include "../common/failpoint.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HTTP_DEFAULT_TIMEOUT_MS   "10000"
#define HTTP_DEFAULT_BATCH_EVENTS "500"
#define HTTP_DEFAULT_MAX_RETRY_MS "30000"
#define HTTP_MAX_BODY             (4u * 1024 * 1024) /* a batch is sent past this size */
#define HTTP_BACKOFF_FIRST_MS     200
#define HTTP_SLICE_MS             100 /* how often a wait asks interrupted() */
#define HTTP_ANSWER_KEEP          512 /* bytes of a response body kept for messages */

typedef struct http_s {
    const wr_dest_host_t *host;
    CURL *curl;
    struct curl_slist *headers; /* Content-Type and the configured ones */
    char *url;
    char shown[256]; /* the URL without user:password and query, for messages */
    char *secret;    /* NULL: no signature */
    long timeout_ms;
    long max_batch_events;
    long max_retry_ms;
    jw_buf_t body;  /* {"events":[ ... */
    size_t nevents; /* in body */
    char first_key[EVJ_KEY_LEN], last_key[EVJ_KEY_LEN];
    char answer[HTTP_ANSWER_KEEP + 1]; /* start of the last response body */
    size_t answer_len;
    unsigned int rng;
    uint64_t sent_batches, sent_events;
    /* the copy in this instance (sync role) */
    uint32_t copy_relid;
    int64_t copy_attempt_us;
    uint64_t copy_n;
} http_t;

/* ---- configuration -------------------------------------------------------------------- */

static const char *const http_key_names[] = {
    "url", "secret", "timeout_ms", "max_batch_events", "max_retry_ms", "headers"};

/* Headers walrelay sets itself: refused in headers. */
static const char *const http_reserved[] = {
    "content-type",         "content-length",    "host",  "x-walrelay-signature",
    "x-walrelay-timestamp", "transfer-encoding", "expect"};

static int
http_parse_long(const char *s, long lo, long hi, long *out)
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

/* A header name is a token (RFC 9110); a value has no control characters. */
static bool
http_header_ok(const char *name, const char *value)
{
    if (name[0] == '\0')
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *p) != NULL))
            return false;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

static int http_add_header(const char *name, const char *val, struct curl_slist **list,
                           wr_dest_error_t *err);

/* headers = Name: value, Name2: value2 (a value without commas). */
static int
http_parse_header_list(const char *text, struct curl_slist **list, wr_dest_error_t *err)
{
    char *copy = strdup(text), *save = NULL;
    int rc = WR_DEST_OK, nth = 0;

    if (copy == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    for (char *part = strtok_r(copy, ",", &save); part != NULL && rc == WR_DEST_OK;
         part = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(part, ':'), *name = part, *val, *end;

        nth++;
        if (colon == NULL) {
            /* the value is secret (a token may be there): say which entry, not what */
            rc = wr_dest_error_set(err, WR_DEST_ECONFIG, "headers",
                                   "entry %d (separated by commas) is not Name: value", nth);
            wr_dest_error_hint(err, "headers = X-Tenant: 7, Authorization: Bearer <token> (or a "
                                    "JSON object when a value holds a comma)");
            break;
        }
        *colon = '\0';
        val = colon + 1;
        while (*name == ' ' || *name == '\t')
            name++;
        for (end = name + strlen(name); end > name && (end[-1] == ' ' || end[-1] == '\t');)
            *--end = '\0';
        while (*val == ' ' || *val == '\t')
            val++;
        for (end = val + strlen(val); end > val && (end[-1] == ' ' || end[-1] == '\t');)
            *--end = '\0';
        rc = http_add_header(name, val, list, err);
    }
    free(copy);
    return rc;
}

/* headers = {"Name": "value", ...} or Name: value, ... Fills *list (may be NULL) when not
 * NULL. */
static int
http_parse_headers(const char *text, struct curl_slist **list, wr_dest_error_t *err)
{
    json_error_t je;
    json_t *obj;
    const char *name;
    json_t *v;
    const char *p = text;

    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '{')
        return http_parse_header_list(text, list, err);
    obj = json_loads(text, JSON_REJECT_DUPLICATES, &je);

    if (obj == NULL || !json_is_object(obj)) {
        json_decref(obj);
        /* jansson's text quotes the input near the error: only its position (a secret) */
        if (obj == NULL)
            wr_dest_error_set(err, WR_DEST_ECONFIG, "headers",
                              "not valid JSON at character %d (a JSON object of header names "
                              "and values)",
                              je.position);
        else
            wr_dest_error_set(err, WR_DEST_ECONFIG, "headers",
                              "expected a JSON object of header names and values");
        wr_dest_error_hint(err, "e.g. headers = {\"Authorization\": \"Bearer <token>\", "
                                "\"X-Tenant\": \"7\"}");
        return WR_DEST_ECONFIG;
    }
    json_object_foreach(obj, name, v)
    {
        const char *val = json_string_value(v);
        int rc;

        if (val == NULL) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, "headers", "header \"%s\" needs a string value",
                              name);
            wr_dest_error_hint(err, "e.g. headers = {\"X-Tenant\": \"7\"}");
            json_decref(obj);
            return WR_DEST_ECONFIG;
        }
        if ((rc = http_add_header(name, val, list, err)) != WR_DEST_OK) {
            json_decref(obj);
            return rc;
        }
    }
    json_decref(obj);
    return WR_DEST_OK;
}

static int
http_add_header(const char *name, const char *val, struct curl_slist **list, wr_dest_error_t *err)
{
    char line[2048];

    if (!http_header_ok(name, val)) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "headers",
                          "header \"%s\" needs a name of letters, digits and - and a value "
                          "without control characters",
                          name);
        wr_dest_error_hint(err, "e.g. headers = X-Tenant: 7");
        return WR_DEST_ECONFIG;
    }
    for (size_t i = 0; i < sizeof(http_reserved) / sizeof(http_reserved[0]); i++) {
        if (strcasecmp(name, http_reserved[i]) == 0) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, "headers",
                              "header \"%s\" is set by walrelay and cannot be configured", name);
            wr_dest_error_hint(err, "remove it from headers");
            return WR_DEST_ECONFIG;
        }
    }
    if (list != NULL) {
        struct curl_slist *nl;

        snprintf(line, sizeof(line), "%s: %s", name, val);
        nl = curl_slist_append(*list, line);
        if (nl == NULL)
            return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
        *list = nl;
    }
    return WR_DEST_OK;
}

static int
http_check_url(const char *url, wr_dest_error_t *err)
{
    CURLU *u = curl_url();
    char *scheme = NULL;
    CURLUcode uc;
    int rc = WR_DEST_OK;

    if (u == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc == CURLUE_OK)
        uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    if (uc != CURLUE_OK) {
        rc = wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "not a URL: %s", curl_url_strerror(uc));
        wr_dest_error_hint(err, "url = http://host:port/path or https://...");
    } else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
        rc = wr_dest_error_set(err, WR_DEST_ECONFIG, "url",
                               "the scheme \"%s\" is not http or https", scheme);
        wr_dest_error_hint(err, "url = http://host:port/path or https://...");
    }
    curl_free(scheme);
    curl_url_cleanup(u);
    return rc;
}

static int
http_validate(const wr_dest_config_t *cfg, wr_dest_error_t *err)
{
    long v;
    int rc;

    for (size_t i = 0; i < cfg->nitems; i++) {
        const wr_dest_kv_t *it = &cfg->items[i];
        bool known = false;

        for (size_t k = 0; k < sizeof(http_key_names) / sizeof(http_key_names[0]); k++)
            known = known || strcmp(it->key, http_key_names[k]) == 0;
        if (!known) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, it->key,
                              "unknown key \"%s\" for the http destination", it->key);
            wr_dest_error_hint(err, "the http destination takes url, secret, timeout_ms, "
                                    "max_batch_events, max_retry_ms and headers");
            return WR_DEST_ECONFIG;
        }
    }
    if (wr_dest_config_get(cfg, "url") == NULL) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "the http destination needs a url");
        wr_dest_error_hint(err, "url = https://example.com/walrelay");
        return WR_DEST_ECONFIG;
    }
    if ((rc = http_check_url(wr_dest_config_get(cfg, "url"), err)) != WR_DEST_OK)
        return rc;
    if (wr_dest_config_get(cfg, "secret") != NULL && wr_dest_config_get(cfg, "secret")[0] == 0) {
        wr_dest_error_set(err, WR_DEST_ECONFIG, "secret", "empty secret");
        wr_dest_error_hint(err, "remove the line for unsigned requests, or set a secret");
        return WR_DEST_ECONFIG;
    }
    static const struct {
        const char *key;
        long lo, hi;
        const char *what;
    } nums[] = {
        {"timeout_ms", 100, 3600000, "milliseconds, 100 to 3600000"},
        {"max_batch_events", 1, 100000, "events, 1 to 100000"},
        {"max_retry_ms", 100, 3600000, "milliseconds, 100 to 3600000"},
    };
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        const char *s = wr_dest_config_get(cfg, nums[i].key);

        if (s != NULL && http_parse_long(s, nums[i].lo, nums[i].hi, &v) != 0) {
            wr_dest_error_set(err, WR_DEST_ECONFIG, nums[i].key,
                              "invalid value \"%s\": expected %s", s, nums[i].what);
            wr_dest_error_hint(err, "see docs/configuration.md, [destination] type = http");
            return WR_DEST_ECONFIG;
        }
    }
    if (wr_dest_config_get(cfg, "headers") != NULL)
        return http_parse_headers(wr_dest_config_get(cfg, "headers"), NULL, err);
    return WR_DEST_OK;
}

/* scheme://host[:port]/path of url: no user:password, no query (a token may be there). */
static void
http_shown_url(const char *url, char *buf, size_t len)
{
    CURLU *u = curl_url();
    char *s = NULL;

    snprintf(buf, len, "(the url)");
    if (u == NULL)
        return;
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK) {
        curl_url_set(u, CURLUPART_USER, NULL, 0);
        curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
        curl_url_set(u, CURLUPART_QUERY, NULL, 0);
        curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
        if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK)
            snprintf(buf, len, "%s", s);
        curl_free(s);
    }
    curl_url_cleanup(u);
}

/* ---- open / close --------------------------------------------------------------------- */

static size_t
http_on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    http_t *h = arg;
    size_t n = size * nmemb;
    size_t room = HTTP_ANSWER_KEEP - h->answer_len;

    if (room > 0) {
        size_t take = n < room ? n : room;
        memcpy(h->answer + h->answer_len, ptr, take);
        h->answer_len += take;
        h->answer[h->answer_len] = '\0';
    }
    return n;
}

static void
http_free(http_t *h)
{
    if (h == NULL)
        return;
    if (h->curl)
        curl_easy_cleanup(h->curl);
    curl_slist_free_all(h->headers);
    free(h->url);
    if (h->secret) {
        memset(h->secret, 0, strlen(h->secret));
        free(h->secret);
    }
    jw_free(&h->body);
    free(h);
}

static void
http_body_start(http_t *h)
{
    jw_reset(&h->body);
    jw_lit(&h->body, "{\"events\":[");
    h->nevents = 0;
}

static int
http_open(const wr_dest_config_t *cfg, const wr_dest_host_t *host, void **state,
          wr_dest_error_t *err)
{
    const char *v;
    http_t *h;
    int rc;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return wr_dest_error_set(err, WR_DEST_EIO, NULL, "cannot initialise libcurl");
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
    h->host = host;
    jw_init(&h->body);
    h->url = strdup(wr_dest_config_get(cfg, "url"));
    v = wr_dest_config_get(cfg, "secret");
    h->secret = v ? strdup(v) : NULL;
    if (h->url == NULL || (v && h->secret == NULL))
        goto oom;
    http_shown_url(h->url, h->shown, sizeof(h->shown));
    v = wr_dest_config_get(cfg, "timeout_ms");
    (void)http_parse_long(v ? v : HTTP_DEFAULT_TIMEOUT_MS, 100, 3600000, &h->timeout_ms);
    v = wr_dest_config_get(cfg, "max_batch_events");
    (void)http_parse_long(v ? v : HTTP_DEFAULT_BATCH_EVENTS, 1, 100000, &h->max_batch_events);
    v = wr_dest_config_get(cfg, "max_retry_ms");
    (void)http_parse_long(v ? v : HTTP_DEFAULT_MAX_RETRY_MS, 100, 3600000, &h->max_retry_ms);
    h->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (h->headers == NULL)
        goto oom;
    /* no "Expect: 100-continue" round trip before large bodies */
    {
        struct curl_slist *nl = curl_slist_append(h->headers, "Expect:");
        if (nl == NULL)
            goto oom;
        h->headers = nl;
    }
    v = wr_dest_config_get(cfg, "headers");
    if (v != NULL && (rc = http_parse_headers(v, &h->headers, err)) != WR_DEST_OK) {
        http_free(h);
        return rc;
    }
    h->curl = curl_easy_init();
    if (h->curl == NULL)
        goto oom;
    curl_easy_setopt(h->curl, CURLOPT_URL, h->url);
    curl_easy_setopt(h->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, h->timeout_ms);
    curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, h->timeout_ms);
    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, http_on_body);
    curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(h->curl, CURLOPT_USERAGENT, "walrelay");
    curl_easy_setopt(h->curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    h->rng = (unsigned int)getpid() ^ (unsigned int)time(NULL);
    http_body_start(h);
    if (jw_failed(&h->body))
        goto oom;
    *state = h;
    return WR_DEST_OK;
oom:
    http_free(h);
    return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
}

static void
http_close(void *state)
{
    http_t *h = state;

    if (h != NULL)
        wr_dest_log(h->host, WR_DEST_LOG_DEBUG, "closed batches=%" PRIu64 " events=%" PRIu64,
                    h->sent_batches, h->sent_events);
    http_free(h);
}

/* ---- sending -------------------------------------------------------------------------- */

static void
http_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* The start of the last response body, one line, printable. */
static const char *
http_answer_text(http_t *h)
{
    for (size_t i = 0; i < h->answer_len; i++) {
        unsigned char c = (unsigned char)h->answer[i];
        if (c < 0x20 || c == 0x7f)
            h->answer[i] = ' ';
    }
    return h->answer_len ? h->answer : "(empty body)";
}

/* Sleeps ms in slices, asking interrupted(). true if interrupted. */
static bool
http_sleep(http_t *h, long ms)
{
    while (ms > 0) {
        long s = ms < HTTP_SLICE_MS ? ms : HTTP_SLICE_MS;
        struct timespec ts = {s / 1000, (s % 1000) * 1000000L};

        if (wr_dest_interrupted(h->host))
            return true;
        nanosleep(&ts, NULL);
        ms -= s;
    }
    return wr_dest_interrupted(h->host);
}

/* One request. Returns the HTTP status (> 0), or 0 with errbuf filled for a transport
 * error, or -1 for one that retrying cannot fix (errbuf filled). */
static long
http_once(http_t *h, struct curl_slist *req_headers, long *retry_after_ms, char *errbuf)
{
    CURLcode cc;
    long status = 0;
    curl_off_t ra = -1;

    *retry_after_ms = -1;
    h->answer_len = 0;
    h->answer[0] = '\0';
    errbuf[0] = '\0';
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, req_headers);
    curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, h->body.data);
    curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)h->body.len);
    curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, errbuf);
    cc = curl_easy_perform(h->curl);
    curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, NULL);
    if (cc != CURLE_OK) {
        if (errbuf[0] == '\0')
            snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(cc));
        if (cc == CURLE_UNSUPPORTED_PROTOCOL || cc == CURLE_URL_MALFORMAT ||
            cc == CURLE_NOT_BUILT_IN || cc == CURLE_OUT_OF_MEMORY)
            return -1;
        return 0;
    }
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    if (curl_easy_getinfo(h->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra >= 0)
        *retry_after_ms = ra > 86400 ? 86400000L : (long)ra * 1000L;
    return status;
}

/* Sends the body until the receiver acknowledges it (see the header for the rules). */
static int
http_post(http_t *h, wr_dest_error_t *err)
{
    char errbuf[CURL_ERROR_SIZE + 1];
    char tsh[64], sigh[64 + 2 * EVP_MAX_MD_SIZE], what[768];
    struct curl_slist *req = NULL, *tail;
    long backoff = HTTP_BACKOFF_FIRST_MS;
    unsigned attempt = 0;
    int rc = WR_DEST_OK;

    if (h->nevents == 0)
        return WR_DEST_OK;
    jw_lit(&h->body, "]}");
    if (jw_failed(&h->body)) {
        http_body_start(h);
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory building a batch");
    }
    /* the configured headers, then the signature (the same for every attempt: the body
     * does not change, and the timestamp is when the batch was first sent) */
    for (struct curl_slist *s = h->headers; s != NULL; s = s->next) {
        if ((tail = curl_slist_append(req, s->data)) == NULL)
            goto oom;
        req = tail;
    }
    if (h->secret != NULL) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        char hex[2 * EVP_MAX_MD_SIZE + 1];

        if (HMAC(EVP_sha256(), h->secret, (int)strlen(h->secret),
                 (const unsigned char *)h->body.data, h->body.len, mac, &maclen) == NULL) {
            curl_slist_free_all(req);
            http_body_start(h);
            return wr_dest_error_set(err, WR_DEST_EIO, NULL, "cannot compute the HMAC-SHA256");
        }
        http_hex(mac, maclen, hex);
        snprintf(tsh, sizeof(tsh), "X-Walrelay-Timestamp: %lld", (long long)time(NULL));
        snprintf(sigh, sizeof(sigh), "X-Walrelay-Signature: sha256=%s", hex);
        if ((tail = curl_slist_append(req, tsh)) == NULL)
            goto oom;
        req = tail;
        if ((tail = curl_slist_append(req, sigh)) == NULL)
            goto oom;
        req = tail;
    }
    for (;;) {
        long retry_after = -1, delay;
        long status = http_once(h, req, &retry_after, errbuf);

        attempt++;
        if (status >= 200 && status < 300) {
            FAILPOINT("http.after_post");
            if (attempt > 1) {
                wr_dest_waiting(h->host, NULL);
                wr_dest_log(h->host, WR_DEST_LOG_INFO,
                            "batch delivered after %u attempts url=%s events=%zu", attempt,
                            h->shown, h->nevents);
            }
            h->sent_batches++;
            h->sent_events += h->nevents;
            break;
        }
        if (status < 0) {
            rc = wr_dest_error_set(err, WR_DEST_ECONFIG, "url", "cannot POST to %s: %s", h->shown,
                                   errbuf);
            wr_dest_error_hint(err, "check [destination] url");
            break;
        }
        if (status > 0 && status != 408 && status != 429 && status < 500) {
            /* refused for good: stop the pipeline, never skip the batch */
            rc = wr_dest_error_set(err, WR_DEST_ECONFIG, NULL,
                                   "the receiver refused a batch of %zu events (keys %s to %s): "
                                   "POST %s answered HTTP %ld: %s",
                                   h->nevents, h->first_key, h->last_key, h->shown, status,
                                   http_answer_text(h));
            wr_dest_error_hint(err, "fix the receiver (or what it objects to), then start "
                                    "walrelay run again: the same batch is sent again, it is "
                                    "never skipped");
            wr_dest_waiting(h->host, "stopped: POST %s answered HTTP %ld: %s", h->shown, status,
                            http_answer_text(h));
            break;
        }
        if (status > 0)
            snprintf(what, sizeof(what), "HTTP %ld: %s", status, http_answer_text(h));
        else
            snprintf(what, sizeof(what), "%s", errbuf);
        /* full jitter in [d/2, d], doubling up to max_retry_ms */
        delay = backoff / 2 + (long)(rand_r(&h->rng) % (unsigned)(backoff / 2 + 1));
        if (backoff < h->max_retry_ms)
            backoff = backoff * 2 > h->max_retry_ms ? h->max_retry_ms : backoff * 2;
        if (retry_after >= 0 && (status == 429 || status == 503))
            delay = retry_after;
        wr_dest_waiting(h->host, "POST %s: %s; attempt %u, next in %.1f s", h->shown, what, attempt,
                        (double)delay / 1000.0);
        if (http_sleep(h, delay)) {
            rc = wr_dest_error_set(err, WR_DEST_ETRANSIENT, NULL,
                                   "stopped while retrying POST %s (%u attempts, last: %s)",
                                   h->shown, attempt, what);
            wr_dest_waiting(h->host, NULL);
            break;
        }
    }
    curl_slist_free_all(req);
    /* sent, or failed: then the call fails and walrelay delivers the events again */
    http_body_start(h);
    return rc;
oom:
    curl_slist_free_all(req);
    http_body_start(h);
    return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory");
}

/* ---- the ABI calls -------------------------------------------------------------------- */

static void
http_event_sep(http_t *h, const char *key)
{
    if (h->nevents > 0)
        jw_raw(&h->body, ",", 1);
    else
        snprintf(h->first_key, sizeof(h->first_key), "%s", key);
    snprintf(h->last_key, sizeof(h->last_key), "%s", key);
    h->nevents++;
}

static int
http_after_append(http_t *h, wr_dest_error_t *err)
{
    if (jw_failed(&h->body)) {
        http_body_start(h);
        return wr_dest_error_set(err, WR_DEST_ENOMEM, NULL, "out of memory building a batch");
    }
    if ((long)h->nevents >= h->max_batch_events || h->body.len >= HTTP_MAX_BODY)
        return http_post(h, err);
    return WR_DEST_OK;
}

static int
http_write_events(void *state, const wr_dest_event_t *events, size_t nevents, wr_dest_error_t *err)
{
    http_t *h = state;
    char key[EVJ_KEY_LEN];
    int rc;

    for (size_t i = 0; i < nevents; i++) {
        if (!evj_is_change(&events[i]))
            continue;
        http_event_sep(h, evj_key(&events[i].key, key));
        evj_event(&h->body, &events[i]);
        if ((rc = http_after_append(h, err)) != WR_DEST_OK)
            return rc;
    }
    return WR_DEST_OK;
}

static int
http_truncate_table(void *state, const wr_dest_relation_t *rel, wr_dest_error_t *err)
{
    http_t *h = state;
    char key[EVJ_KEY_LEN];
    struct timespec ts;

    /* walrelay truncates a table only to copy it (again) */
    clock_gettime(CLOCK_REALTIME, &ts);
    h->copy_relid = rel->relid;
    h->copy_attempt_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    h->copy_n = 0;
    evj_copy_key(rel->relid, h->copy_attempt_us, 0, key);
    http_event_sep(h, key);
    evj_copy_truncate(&h->body, rel, key);
    return http_after_append(h, err);
}

static int
http_write_table_rows(void *state, const wr_dest_relation_t *rel, const wr_dest_row_t *rows,
                      size_t nrows, wr_dest_error_t *err)
{
    http_t *h = state;
    char key[EVJ_KEY_LEN];
    int rc;

    if (h->copy_relid != rel->relid) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        h->copy_relid = rel->relid;
        h->copy_attempt_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
        h->copy_n = 0;
    }
    for (size_t i = 0; i < nrows; i++) {
        evj_copy_key(rel->relid, h->copy_attempt_us, ++h->copy_n, key);
        http_event_sep(h, key);
        evj_copy_row(&h->body, rel, &rows[i], key);
        if ((rc = http_after_append(h, err)) != WR_DEST_OK)
            return rc;
    }
    return WR_DEST_OK;
}

static int
http_flush(void *state, const char *stream, const wr_dest_key_t *key, wr_dest_error_t *err)
{
    (void)stream;
    (void)key;
    return http_post(state, err);
}

static int
http_discard(void *state, wr_dest_error_t *err)
{
    (void)err;
    http_body_start(state);
    return WR_DEST_OK;
}

static const wr_dest_ops_t http_ops = {
    .abi_version = WR_DEST_ABI_VERSION,
    .struct_size = sizeof(wr_dest_ops_t),
    .name = "http",
    /* at least once (no last_key); every event names its columns */
    .capabilities = WR_DEST_CAP_SCHEMA_CHANGES | WR_DEST_CAP_DISCARD,
    .validate = http_validate,
    .open = http_open,
    .check = NULL,
    .truncate_table = http_truncate_table,
    .write_table_rows = http_write_table_rows,
    .write_events = http_write_events,
    .flush = http_flush,
    .last_key = NULL,
    .forget_stream = NULL,
    .discard = http_discard,
    .close = http_close,
};

const wr_dest_ops_t *
dest_http_abi(void)
{
    return &http_ops;
}

/* ---- registry entry ------------------------------------------------------------------- */

static const dest_keyspec_t http_keys[] = {
    {"url", NULL,
     "The webhook: batches are POSTed here as {\"events\": [...]} (docs/events.md),\n"
     "in commit order; a 2xx acknowledges, 408/429/5xx and connection errors are\n"
     "retried for as long as it takes, any other answer stops the pipeline.",
     true, false, false},
    {"secret", NULL,
     "With a secret, every request carries X-Walrelay-Timestamp and\n"
     "X-Walrelay-Signature: sha256=<hex HMAC-SHA256 of the body> (docs/destinations.md).\n"
     "secret = ...",
     false, true, false},
    {"timeout_ms", HTTP_DEFAULT_TIMEOUT_MS,
     "A request that takes longer (connecting included) is abandoned and retried.", false, false,
     false},
    {"max_batch_events", HTTP_DEFAULT_BATCH_EVENTS,
     "Events per request at most (a batch is also sent at every commit walrelay makes).", false,
     false, false},
    {"max_retry_ms", HTTP_DEFAULT_MAX_RETRY_MS,
     "Longest wait between two attempts (the backoff doubles up to it, with jitter).", false, false,
     false},
    {"headers", NULL,
     "More request headers: Name: value, Name2: value2 (or a JSON object,\n"
     "{\"Authorization\": \"Bearer ...\"}, when a value holds a comma).\n"
     "Never printed (it may hold a token).\n"
     "headers = Authorization: Bearer ..., X-Tenant: 7",
     false, true, false},
};

static int
http_init_arg(const char *arg, const char **values, wr_err_t *err)
{
    if (arg == NULL || arg[0] == '\0') {
        wr_err_set(err, WR_ECONFIG, "--destination http needs the URL: http:URL");
        wr_err_hint(err, "--destination http:https://example.com/hook");
        return WR_ECONFIG;
    }
    values[0] = arg;
    return 0;
}

static int
http_type_validate(const wr_config_t *cfg, wr_err_t *err)
{
    return dest_abi_validate(&http_ops, cfg, err);
}

static int
http_preflight(const wr_config_t *cfg, char *summary, size_t len, wr_err_t *err)
{
    char inner[256], shown[256];
    int rc = dest_abi_preflight(&http_ops, cfg, inner, sizeof(inner), err);

    if (rc == 0) {
        http_shown_url(dest_config_value(cfg, "url"), shown, sizeof(shown));
        snprintf(summary, len, "http %s%s: %s", shown,
                 dest_config_value(cfg, "secret") ? " (signed)" : "", inner);
    }
    return rc;
}

static void
http_describe(const wr_config_t *cfg, char *buf, size_t len)
{
    char shown[256];
    const char *url = dest_config_value(cfg, "url");

    if (url == NULL) {
        snprintf(buf, len, "http");
        return;
    }
    http_shown_url(url, shown, sizeof(shown));
    snprintf(buf, len, "http %s", shown);
}

static int
http_type_open(const wr_config_t *cfg, const char *role, dest_t **out, wr_err_t *err)
{
    return dest_abi_open(&http_ops, NULL, cfg, role, out, err);
}

const dest_type_t dest_type_http = {
    .name = "http",
    .summary = "a webhook: JSON batches POSTed to a URL (at least once)",
    .init_usage = "http:URL",
    .keys = http_keys,
    .nkeys = sizeof(http_keys) / sizeof(http_keys[0]),
    .init_arg = http_init_arg,
    .validate = http_type_validate,
    .preflight = http_preflight,
    .describe = http_describe,
    .open = http_type_open,
};
