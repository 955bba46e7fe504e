/*
 * fuzz_config.c - libFuzzer target for the INI configuration parser (cfg_parse_string).
 *
 * NOTES: built only with -Dfuzz=true (see README.md, scripts/fuzz.sh). Each input is the
 * text of a walrelay.conf (NUL-terminated copy; inputs with a NUL byte are cut there, as
 * a C string would be). On success the slot-name helpers run on the result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"

static volatile size_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    wr_config_t cfg;
    wr_err_t err;
    char slot[64];

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (cfg_parse_string(text, "/fuzz/walrelay.conf", "/fuzz", &cfg, &err) == 0) {
        if (cfg.pipeline_name == NULL || !cfg_pipeline_name_ok(cfg.pipeline_name))
            __builtin_trap();
        cfg_apply_slot_name(&cfg, slot, sizeof(slot));
        sink += strlen(slot);
        cfg_sync_slot_name(&cfg, 4294967295u, slot, sizeof(slot));
        if (strlen(slot) > 63)
            __builtin_trap();
        sink += strlen(slot);
        /* [state]: what cfg_state_finish promises for each backend */
        if (cfg.state_backend == CFG_STATE_PLUGIN &&
            (cfg.state_library == NULL || cfg_state_item(&cfg, "library") == NULL))
            __builtin_trap();
        if (cfg.state_backend == CFG_STATE_POSTGRES && cfg.state_conninfo == NULL)
            __builtin_trap();
        if (cfg.state_backend != CFG_STATE_PLUGIN && cfg.state_library != NULL)
            __builtin_trap();
    } else if (err.msg[0] == '\0') {
        __builtin_trap();
    }
    cfg_free(&cfg);
    free(text);
    return 0;
}
