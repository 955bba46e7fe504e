/*
 * unit.h - a minimal unit test harness: each test is a function, each assertion prints
 * both values on failure, main() runs them all and prints "N passed, N failed".
 *
 * Usage:
 *   static void test_x(void) { CHECK_INT_EQ(1 + 1, 2); }
 *   int main(void) { RUN(test_x); return unit_done(); }
 */
#ifndef WR_UNIT_H
#define WR_UNIT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unit_failed_checks __attribute__((unused));
static int unit_passed;
static int unit_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);             \
            unit_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                                         \
    do {                                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                                        \
        if (_a != _b) {                                                                            \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a,    \
                    #b, _a, _b);                                                                   \
            unit_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

#define CHECK_U64_EQ(a, b)                                                                         \
    do {                                                                                           \
        unsigned long long _a = (unsigned long long)(a), _b = (unsigned long long)(b);             \
        if (_a != _b) {                                                                            \
            fprintf(stderr, "  %s:%d: %s == %s failed: %llu != %llu\n", __FILE__, __LINE__, #a,    \
                    #b, _a, _b);                                                                   \
            unit_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *_a = (a), *_b = (b);                                                           \
        if (_a == NULL || _b == NULL || strcmp(_a, _b) != 0) {                                     \
            fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__,    \
                    #a, #b, _a ? _a : "(null)", _b ? _b : "(null)");                               \
            unit_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

/* a string that must contain b */
#define CHECK_CONTAINS(a, b)                                                                       \
    do {                                                                                           \
        const char *_a = (a), *_b = (b);                                                           \
        if (_a == NULL || strstr(_a, _b) == NULL) {                                                \
            fprintf(stderr, "  %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,       \
                    _a ? _a : "(null)", _b);                                                       \
            unit_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        int _before = unit_failed_checks;                                                          \
        fn();                                                                                      \
        if (unit_failed_checks == _before) {                                                       \
            unit_passed++;                                                                         \
            printf("ok - %s\n", #fn);                                                              \
        } else {                                                                                   \
            unit_failed++;                                                                         \
            printf("not ok - %s\n", #fn);                                                          \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

static inline int
unit_done(void)
{
    printf("%d passed, %d failed\n", unit_passed, unit_failed);
    return unit_failed == 0 ? 0 : 1;
}

#endif
