/*
 * fuzz_sinkstate.c - libFuzzer target for what the streaming sinks read back from outside
 * (issue 9): a jsonl state file (PATH.walrelay, dest_jsonl_state_parse), a NATS checkpoint
 * value (dest_nats_checkpoint_parse) and an event key (evj_key_parse).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is given
 * to every parser as an exactly-sized buffer that is not NUL-terminated (as a KV value or a
 * file read into memory is). A parsed checkpoint's key is formatted again and must parse
 * to the same key.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "destinations/abi.h"
#include "destinations/event_json.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    char why[256], buf[EVJ_KEY_LEN];
    uint64_t seq;
    bool has;
    wr_dest_key_t k, again;

    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    if (dest_jsonl_state_parse(copy, size, why, sizeof(why)) == 0)
        sink += strlen(why);
    if (dest_nats_checkpoint_parse(copy, size, &seq, &has, &k) == 0 && has) {
        evj_key(&k, buf);
        if (evj_key_parse(buf, strlen(buf), &again) != 0 || again.commit_lsn != k.commit_lsn ||
            again.ordinal != k.ordinal)
            __builtin_trap();
        sink += seq;
    }
    if (evj_key_parse(copy, size, &k) == 0)
        sink += k.ordinal;
    free(copy);
    return 0;
}
