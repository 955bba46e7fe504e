/*
 * fuzz_esfilter.c - libFuzzer target for the event store's text forms: the filter parser
 * of `walrelay events` (es_filter_parse) and the JSON minifier (es_json_minify).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is one
 * command-line argument (cut at its first NUL). Checks: a parsed filter has a non-empty
 * event kind, no empty value and a non-negative after; the minified text is never longer
 * than the input, and when the input is JSON the minified text is the same JSON value.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "destinations/eventstore/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *out = malloc(size + 1);
    wr_es_filter_t f;
    wr_es_error_t e;
    size_t n;

    if (text == NULL || out == NULL) {
        free(text);
        free(out);
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';

    n = es_json_minify(text, out);
    if (n > strlen(text) || strlen(out) != n)
        __builtin_trap();
    {
        json_t *a = json_loads(text, JSON_DECODE_ANY, NULL), *b;

        if (a != NULL) {
            b = json_loads(out, JSON_DECODE_ANY, NULL);
            if (b == NULL || !json_equal(a, b))
                __builtin_trap();
            json_decref(b);
            json_decref(a);
        }
    }

    if (es_filter_parse(text, &f, &e) == 0) {
        if (f.event_kind == NULL || f.event_kind[0] == '\0')
            __builtin_trap();
        if ((f.aggregate_kind && f.aggregate_kind[0] == '\0') ||
            (f.aggregate_id && f.aggregate_id[0] == '\0'))
            __builtin_trap();
        if (f.has_after && f.after < 0)
            __builtin_trap();
    } else if (e.message[0] == '\0') {
        __builtin_trap();
    }
    free(text);
    free(out);
    return 0;
}
