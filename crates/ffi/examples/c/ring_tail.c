/*
 * Print the messages of a podcache ring as they are published (one line each: sequence
 * number, length, and the payload if it is printable), like `tail -f`.
 *
 *   cc -I crates/ffi/include ring_tail.c -L target/release -lpodcache -o ring_tail
 *   LD_LIBRARY_PATH=target/release ./ring_tail /shared/events.ring [oldest|newest] [IDLE_MS]
 *
 * Starts at the oldest message still in the ring (default) or at the next one published;
 * with IDLE_MS, exits once no message came for that long (default: wait forever).
 */
#include "podcache.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s RING_FILE [oldest|newest] [IDLE_MS]\n", argv[0]);
        return 2;
    }
    uint32_t start = argc > 2 && strcmp(argv[2], "newest") == 0 ? PODCACHE_START_NEWEST : PODCACHE_START_OLDEST;
    int64_t idle_ms = argc > 3 ? atoll(argv[3]) : -1; /* negative: wait forever */

    podcache_subscriber *sub = NULL;
    podcache_status status = podcache_subscriber_open(argv[1], start, 1000, &sub);
    if (status != PODCACHE_OK) {
        char detail[512];
        podcache_last_error(detail, sizeof detail);
        fprintf(stderr, "open: %s: %s\n", podcache_error_message(status), detail);
        return 2;
    }
    /* A buffer of the ring's largest message never is too small. */
    size_t cap = podcache_subscriber_max_message(sub);
    uint8_t *buf = malloc(cap);
    if (buf == NULL) return 2;
    int rc = 0;
    for (;;) {
        podcache_msg msg;
        /* Spins briefly, then sleeps on a futex until the writer publishes. */
        status = podcache_subscriber_recv(sub, buf, cap, idle_ms, &msg);
        if (status == PODCACHE_TIMEOUT) break;
        if (status == PODCACHE_ERR_OVERRUN) continue; /* lapped on every retry: try again */
        if (status != PODCACHE_OK) {
            char detail[512];
            podcache_last_error(detail, sizeof detail);
            fprintf(stderr, "recv: %s: %s\n", podcache_error_message(status), detail);
            rc = 2;
            break;
        }
        if (msg.lost > 0) printf("(lapped: %" PRIu64 " messages lost)\n", msg.lost);
        int printable = 1;
        for (size_t i = 0; i < msg.len; i++) printable &= isprint(buf[i]) != 0;
        printf("%" PRIu64 " %zu %s%.*s\n", msg.seq, msg.len, printable ? "" : "(binary)", printable ? (int)msg.len : 0,
               (const char *)buf);
        fflush(stdout);
    }
    free(buf);
    podcache_subscriber_close(&sub);
    return rc;
}
