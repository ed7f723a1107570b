/*
 * The C test of the podcache reader ABI, through include/podcache.h only. Driven by
 * tests/c_abi.rs, which compiles it with the system C compiler, links libpodcache, runs the
 * writer side in Rust, and checks the exit status and output. Modes:
 *
 *   podcache_test vectors DIR          reads commands from stdin (made from
 *                                      tests/vectors/expected.json) and checks each read
 *   podcache_test live TABLE RING N    reads a table and a ring while a Rust writer writes
 *                                      them; every value and message checks itself
 *   podcache_test lapped RING          a subscriber lapped by the writer, told what it lost
 *   podcache_test blocking RING        receive with a timeout, and a receive that blocks
 *   podcache_test careless TABLE RING  what a careless caller does: NULLs, size queries,
 *                                      closing twice, bad enumeration values
 *
 * Prints "ok MODE" and exits 0 on success; prints "FAIL ..." and exits 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include "podcache.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *mode = "?";

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            char detail_[512];                                               \
            podcache_last_error(detail_, sizeof detail_);                    \
            printf("FAIL %s %s:%d: %s: ", mode, __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                             \
            printf(" (last error: %s)\n", detail_);                          \
            fflush(stdout);                                                  \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

#define CHECK_STATUS(got, want)                                                  \
    CHECK((got) == (want), "status %d (%s), expected %d (%s)", (int)(got),       \
          podcache_error_message(got), (int)(want), podcache_error_message(want))

/* ---------------------------------------------------------------- helpers */

static size_t unhex(const char *s, uint8_t *out, size_t cap) {
    size_t n = strlen(s) / 2;
    CHECK(n <= cap, "hex string too long");
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        CHECK(sscanf(s + 2 * i, "%2x", &v) == 1, "bad hex %s", s);
        out[i] = (uint8_t)v;
    }
    return n;
}

static int32_t status_named(const char *name) {
    static const struct { const char *name; int32_t code; } names[] = {
        {"ok", PODCACHE_OK},
        {"not_found", PODCACHE_NOT_FOUND},
        {"empty", PODCACHE_EMPTY},
        {"no_file", PODCACHE_ERR_NO_FILE},
        {"not_ready", PODCACHE_ERR_NOT_READY},
        {"version_mismatch", PODCACHE_ERR_VERSION_MISMATCH},
        {"wrong_kind", PODCACHE_ERR_WRONG_KIND},
        {"truncated", PODCACHE_ERR_TRUNCATED},
        {"foreign", PODCACHE_ERR_FOREIGN},
        {"corrupt", PODCACHE_ERR_CORRUPT},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].name, name) == 0) return names[i].code;
    CHECK(0, "unknown status name %s", name);
    return 0;
}

static char *read_line(FILE *f) {
    static char line[8192];
    if (!fgets(line, sizeof line, f)) return NULL;
    line[strcspn(line, "\r\n")] = 0;
    return line;
}

/* ---------------------------------------------------------------- vectors */

/*
 * Commands, one per line:
 *   table FILE STATUS          open FILE as a table, expect STATUS (a name, e.g. "ok")
 *   get KEYHEX =VALUEHEX|-     get from the open table: the value (hex after "=", maybe
 *                              empty), or "-" for absent
 *   getcorrupt KEYHEX          the get reports PODCACHE_ERR_CORRUPT
 *   ring FILE oldest|newest STATUS
 *   msg SEQ LOST =PAYLOADHEX   the next message received
 *   then STATUS                what the receive after the last message returns
 */
static int run_vectors(const char *dir) {
    podcache_table *t = NULL;
    podcache_subscriber *s = NULL;
    static uint8_t key[512], want[65536], buf[65536];
    char path[4096 + 4096 + 2];
    int checks = 0;
    char *line;
    while ((line = read_line(stdin)) != NULL) {
        char a[4096], b[4096], c[65536 * 2 + 1];
        if (sscanf(line, "table %4095s %4095s", a, b) == 2) {
            podcache_table_close(&t);
            snprintf(path, sizeof path, "%s/%s", dir, a);
            CHECK_STATUS(podcache_table_open(path, 0, &t), status_named(b));
            CHECK((t != NULL) == (strcmp(b, "ok") == 0), "handle set only on success (%s)", path);
        } else if (sscanf(line, "getcorrupt %4095s", a) == 1) {
            /* (Before "get": its pattern would also match this line.) */
            size_t klen = unhex(a, key, sizeof key), len;
            CHECK_STATUS(podcache_table_get(t, key, klen, buf, sizeof buf, &len), PODCACHE_ERR_CORRUPT);
        } else if (sscanf(line, "get %4095s %131072s", a, c) == 2) {
            size_t klen = unhex(a, key, sizeof key), len = 12345;
            podcache_status st = podcache_table_get(t, key, klen, buf, sizeof buf, &len);
            if (strcmp(c, "-") == 0) {
                CHECK_STATUS(st, PODCACHE_NOT_FOUND);
                CHECK_STATUS(podcache_table_contains(t, key, klen), PODCACHE_NOT_FOUND);
                CHECK(len == 0, "a miss reports length 0, not %zu", len);
            } else {
                CHECK(c[0] == '=', "value %s", c);
                size_t wlen = unhex(c + 1, want, sizeof want);
                CHECK_STATUS(st, PODCACHE_OK);
                CHECK(len == wlen && memcmp(buf, want, len) == 0, "key %s: value of %zu bytes", a, len);
                CHECK_STATUS(podcache_table_contains(t, key, klen), PODCACHE_OK);
                /* Ask the size first (NULL buffer, zero length), as a careful C caller does. */
                size_t need = 0;
                st = podcache_table_get(t, key, klen, NULL, 0, &need);
                CHECK_STATUS(st, wlen == 0 ? PODCACHE_OK : PODCACHE_ERR_BUFFER_TOO_SMALL);
                CHECK(need == wlen, "size query says %zu, value has %zu", need, wlen);
            }
        } else if (sscanf(line, "ring %4095s %4095s %4095s", a, b, c) == 3) {
            podcache_subscriber_close(&s);
            snprintf(path, sizeof path, "%s/%s", dir, a);
            uint32_t start = strcmp(b, "newest") == 0 ? PODCACHE_START_NEWEST : PODCACHE_START_OLDEST;
            CHECK_STATUS(podcache_subscriber_open(path, start, 0, &s), status_named(c));
        } else if (sscanf(line, "msg %4095s %4095s %131072s", a, b, c) == 3) {
            podcache_msg m;
            CHECK(c[0] == '=', "payload %s", c);
            size_t wlen = unhex(c + 1, want, sizeof want);
            CHECK_STATUS(podcache_subscriber_try_recv(s, buf, sizeof buf, &m), PODCACHE_OK);
            CHECK(m.seq == strtoull(a, NULL, 10) && m.lost == strtoull(b, NULL, 10),
                  "seq %" PRIu64 " lost %" PRIu64 ", expected %s %s", m.seq, m.lost, a, b);
            CHECK(m.len == wlen && memcmp(buf, want, wlen) == 0, "payload of seq %s", a);
        } else if (sscanf(line, "then %4095s", a) == 1) {
            podcache_msg m;
            CHECK_STATUS(podcache_subscriber_try_recv(s, buf, sizeof buf, &m), status_named(a));
        } else {
            CHECK(0, "unknown command: %s", line);
        }
        checks++;
    }
    podcache_table_close(&t);
    podcache_subscriber_close(&s);
    printf("vectors: %d checks\n", checks);
    return 0;
}

/* ---------------------------------------------------------------- live */

/*
 * The writer (tests/c_abi.rs) stores under key "k<i>" (i < 64) values of version v >= 1:
 *   bytes 0..4 i (u32 LE), 4..8 v (u32 LE), then 8 + (v * 7 + i) % 200 bytes, byte j being
 *   (i * 31 + v * 17 + j) mod 256.
 * and publishes messages whose payload is: bytes 0..8 the sequence number (u64 LE), then
 * seq % 40 bytes, byte j being (seq * 13 + j) mod 256.
 */
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

static void check_value(uint32_t i, const uint8_t *v, size_t len, uint32_t *last_version) {
    CHECK(len >= 8, "value of k%u has %zu bytes", i, len);
    uint32_t vi = le32(v), ver = le32(v + 4);
    CHECK(vi == i, "value of k%u names key %u", i, vi);
    CHECK(len == 8 + (size_t)((ver * 7u + i) % 200u), "k%u version %u: length %zu", i, ver, len);
    for (size_t j = 8; j < len; j++)
        CHECK(v[j] == (uint8_t)(i * 31u + ver * 17u + (uint32_t)(j - 8)), "k%u version %u: byte %zu torn", i,
              ver, j);
    CHECK(ver >= *last_version, "k%u went back from version %u to %u", i, *last_version, ver);
    *last_version = ver;
}

static void check_message(const uint8_t *p, const podcache_msg *m) {
    CHECK(m->len >= 8 && le64(p) == m->seq, "message %" PRIu64 " carries sequence %" PRIu64, m->seq,
          m->len >= 8 ? le64(p) : 0);
    CHECK(m->len == 8 + m->seq % 40, "message %" PRIu64 ": length %zu", m->seq, m->len);
    for (size_t j = 8; j < m->len; j++)
        CHECK(p[j] == (uint8_t)(m->seq * 13u + (j - 8)), "message %" PRIu64 ": byte %zu torn", m->seq, j);
}

static int run_live(const char *table_path, const char *ring_path, long want_msgs) {
    podcache_table *t = NULL;
    podcache_subscriber *s = NULL;
    CHECK_STATUS(podcache_table_open(table_path, 10000, &t), PODCACHE_OK);
    CHECK_STATUS(podcache_subscriber_open(ring_path, PODCACHE_START_OLDEST, 10000, &s), PODCACHE_OK);
    size_t max = podcache_subscriber_max_message(s);
    CHECK(max >= 48, "max message %zu", max);
    uint8_t *mbuf = malloc(max);
    uint8_t vbuf[256];
    uint32_t last_version[64] = {0};
    uint64_t last_seq = 0, lost = 0, msgs = 0, hits = 0, misses = 0, changes = 0;
    char key[16];
    for (uint64_t round = 0; msgs < (uint64_t)want_msgs || changes < 1000; round++) {
        uint32_t i = (uint32_t)(round % 64);
        int klen = snprintf(key, sizeof key, "k%u", i);
        size_t len = 0;
        uint32_t before = last_version[i];
        podcache_status st = podcache_table_get(t, (const uint8_t *)key, (size_t)klen, vbuf, sizeof vbuf, &len);
        if (st == PODCACHE_OK) {
            check_value(i, vbuf, len, &last_version[i]);
            hits++;
            changes += last_version[i] != before;
        } else {
            CHECK_STATUS(st, PODCACHE_NOT_FOUND); /* evicted: the writer will put it again */
            misses++;
        }
        podcache_msg m;
        st = podcache_subscriber_try_recv(s, mbuf, max, &m);
        if (st == PODCACHE_OK) {
            check_message(mbuf, &m);
            CHECK(m.seq == last_seq + 1 + m.lost || last_seq == 0, "sequence %" PRIu64 " after %" PRIu64
                  " with %" PRIu64 " lost", m.seq, last_seq, m.lost);
            last_seq = m.seq;
            lost += m.lost;
            msgs++;
        } else if (st == PODCACHE_ERR_OVERRUN) {
            /* Lapped on every retry: allowed (the writer is far faster); go on. */
        } else {
            CHECK_STATUS(st, PODCACHE_EMPTY);
        }
    }
    podcache_subscriber_stats ss;
    CHECK_STATUS(podcache_subscriber_get_stats(s, &ss), PODCACHE_OK);
    CHECK(ss.lost == lost, "stats say %" PRIu64 " lost, messages said %" PRIu64, ss.lost, lost);
    podcache_table_stats ts;
    CHECK_STATUS(podcache_table_get_stats(t, &ts), PODCACHE_OK);
    CHECK(ts.hits == hits && ts.misses == misses, "table counters %" PRIu64 "/%" PRIu64, ts.hits, ts.misses);
    printf("live: %" PRIu64 " messages (%" PRIu64 " lost), %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64
           " value changes, %" PRIu64 " retries\n",
           msgs, lost, hits, misses, changes, ts.retries);
    free(mbuf);
    podcache_table_close(&t);
    podcache_subscriber_close(&s);
    return 0;
}

/* ---------------------------------------------------------------- lapped */

static void say(const char *what) {
    printf("%s\n", what);
    fflush(stdout);
}

static int run_lapped(const char *ring_path) {
    podcache_subscriber *s = NULL;
    uint8_t buf[64];
    podcache_msg m;
    CHECK_STATUS(podcache_subscriber_open(ring_path, PODCACHE_START_OLDEST, 0, &s), PODCACHE_OK);
    CHECK_STATUS(podcache_subscriber_try_recv(s, buf, sizeof buf, &m), PODCACHE_OK);
    CHECK(m.seq == 1 && m.lost == 0, "first message %" PRIu64, m.seq);
    say("read 1");
    /* The writer now publishes messages 2..=N, laps over and over, and tells us N. */
    char *line = read_line(stdin);
    CHECK(line != NULL, "no go from the writer");
    uint64_t n = strtoull(line + 3, NULL, 10);
    CHECK_STATUS(podcache_subscriber_try_recv(s, buf, sizeof buf, &m), PODCACHE_OK);
    CHECK(m.lost > 0 && m.seq == 2 + m.lost, "after the lap: seq %" PRIu64 " lost %" PRIu64, m.seq, m.lost);
    uint64_t lost = m.lost, last = m.seq;
    while (podcache_subscriber_try_recv(s, buf, sizeof buf, &m) == PODCACHE_OK) {
        CHECK(m.seq == last + 1 && m.lost == 0, "in order after the lap: %" PRIu64 " after %" PRIu64, m.seq,
              last);
        last = m.seq;
    }
    CHECK(last == n, "read up to %" PRIu64 " of %" PRIu64, last, n);
    podcache_subscriber_stats ss;
    CHECK_STATUS(podcache_subscriber_get_stats(s, &ss), PODCACHE_OK);
    CHECK(ss.lost == lost && ss.laps >= 1, "stats: lost %" PRIu64 " laps %" PRIu64, ss.lost, ss.laps);
    CHECK(ss.next_seq == n + 1, "next seq %" PRIu64, ss.next_seq);
    printf("lapped: lost %" PRIu64 " of %" PRIu64 " in %" PRIu64 " laps\n", lost, n, ss.laps);
    podcache_subscriber_close(&s);
    return 0;
}

/* ---------------------------------------------------------------- blocking */

static int run_blocking(const char *ring_path) {
    podcache_subscriber *s = NULL;
    uint8_t buf[64];
    podcache_msg m;
    CHECK_STATUS(podcache_subscriber_open(ring_path, PODCACHE_START_NEWEST, 0, &s), PODCACHE_OK);
    /* Nothing is published: a finite wait times out, a zero wait polls. */
    CHECK_STATUS(podcache_subscriber_recv(s, buf, sizeof buf, 50, &m), PODCACHE_TIMEOUT);
    CHECK_STATUS(podcache_subscriber_recv(s, buf, sizeof buf, 0, &m), PODCACHE_TIMEOUT);
    /* Now wait without a limit; the writer publishes once it has read this line. */
    say("waiting");
    CHECK_STATUS(podcache_subscriber_recv(s, buf, sizeof buf, -1, &m), PODCACHE_OK);
    CHECK(m.len == 4 && memcmp(buf, "wake", 4) == 0, "woken by a message of %zu bytes", m.len);
    /* And a finite wait that a message ends. */
    say("waiting again");
    CHECK_STATUS(podcache_subscriber_recv(s, buf, sizeof buf, 60000, &m), PODCACHE_OK);
    CHECK(m.len == 5 && memcmp(buf, "again", 5) == 0, "second message of %zu bytes", m.len);
    podcache_subscriber_close(&s);
    return 0;
}

/* ---------------------------------------------------------------- careless */

struct many_ctx {
    size_t calls;
    podcache_status status[4];
    size_t len[4];
};

static void on_value(void *ctx, size_t index, podcache_status status, const uint8_t *value, size_t value_len) {
    struct many_ctx *c = ctx;
    CHECK(index == c->calls && index < 4, "callback index %zu", index);
    CHECK((status == PODCACHE_OK) == (value != NULL), "value pointer only with a value");
    c->status[index] = status;
    c->len[index] = value_len;
    c->calls++;
}

static int run_careless(const char *table_path, const char *ring_path) {
    podcache_table *t = NULL;
    podcache_subscriber *s = NULL;
    uint8_t buf[512];
    size_t len = 0;
    podcache_msg m;

    /* NULL everything. */
    CHECK_STATUS(podcache_table_open(NULL, 0, &t), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_table_open(table_path, 0, NULL), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_table_get(NULL, (const uint8_t *)"alpha", 5, buf, sizeof buf, &len),
                 PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_table_contains(NULL, (const uint8_t *)"alpha", 5), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_table_get_stats(NULL, NULL), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_subscriber_open(ring_path, PODCACHE_START_OLDEST, 0, NULL), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_subscriber_try_recv(NULL, buf, sizeof buf, &m), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_subscriber_recv(NULL, buf, sizeof buf, -1, &m), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_subscriber_get_stats(NULL, NULL), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_subscriber_skip_to_newest(NULL), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK(podcache_subscriber_max_message(NULL) == 0, "max message of NULL");
    podcache_table_close(NULL);
    podcache_subscriber_close(NULL);
    podcache_table_close(&t); /* t is NULL */

    /* The error detail: asked for its length, then truncated. */
    CHECK_STATUS(podcache_table_open("/nonexistent/podcache/file", 0, &t), PODCACHE_ERR_NO_FILE);
    CHECK(t == NULL, "no handle on failure");
    size_t need = podcache_last_error(NULL, 0);
    CHECK(need > 10, "detail length %zu", need);
    char small[8];
    CHECK(podcache_last_error(small, sizeof small) == need && strlen(small) == 7, "truncated detail");
    char *full = malloc(need + 1);
    podcache_last_error(full, need + 1);
    CHECK(strstr(full, "/nonexistent/podcache/file") != NULL, "detail names the file: %s", full);
    free(full);
    CHECK(strcmp(podcache_error_message(12345), "unknown status code") == 0, "unknown code");
    CHECK(strlen(podcache_error_message(PODCACHE_ERR_CORRUPT)) > 0, "message of a code");
    CHECK(podcache_layout_version() == 4, "layout version %u", podcache_layout_version());

    /* A real table: NULL key with a length, NULL buffer with a length, overlapping buffers. */
    CHECK_STATUS(podcache_table_open(table_path, 0, &t), PODCACHE_OK);
    CHECK_STATUS(podcache_table_get(t, NULL, 5, buf, sizeof buf, &len), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_table_get(t, (const uint8_t *)"alpha", 5, NULL, 10, &len), PODCACHE_ERR_INVALID_ARGUMENT);
    memcpy(buf, "alpha", 5);
    CHECK_STATUS(podcache_table_get(t, buf, 5, buf + 2, 100, &len), PODCACHE_ERR_INVALID_ARGUMENT);
    /* An empty key (NULL, 0) is a key like any other: absent here. */
    CHECK_STATUS(podcache_table_get(t, NULL, 0, buf, sizeof buf, &len), PODCACHE_NOT_FOUND);
    /* A too-small buffer reports the length needed, then the value fits. */
    CHECK_STATUS(podcache_table_get(t, (const uint8_t *)"gamma", 5, buf, 10, &len), PODCACHE_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 300, "needed %zu", len);
    CHECK_STATUS(podcache_table_get(t, (const uint8_t *)"gamma", 5, buf, len, &len), PODCACHE_OK);
    /* The length pointer is optional. */
    CHECK_STATUS(podcache_table_get(t, (const uint8_t *)"alpha", 5, buf, sizeof buf, NULL), PODCACHE_OK);

    /* get_many: arrays, a callback, per-key outcomes. */
    const uint8_t *keys[4] = {(const uint8_t *)"alpha", (const uint8_t *)"nobody", (const uint8_t *)"gamma",
                              (const uint8_t *)"empty"};
    size_t key_lens[4] = {5, 6, 5, 5};
    struct many_ctx ctx = {0};
    CHECK_STATUS(podcache_table_get_many(t, keys, key_lens, 4, buf, 100, on_value, &ctx), PODCACHE_OK);
    CHECK(ctx.calls == 4, "%zu callbacks", ctx.calls);
    CHECK(ctx.status[0] == PODCACHE_OK && ctx.len[0] == 3, "alpha");
    CHECK(ctx.status[1] == PODCACHE_NOT_FOUND, "nobody");
    CHECK(ctx.status[2] == PODCACHE_ERR_BUFFER_TOO_SMALL && ctx.len[2] == 300, "gamma needs 300");
    CHECK(ctx.status[3] == PODCACHE_OK && ctx.len[3] == 0, "empty");
    CHECK_STATUS(podcache_table_get_many(t, keys, key_lens, 4, buf, 100, NULL, &ctx), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(podcache_table_get_many(t, NULL, key_lens, 4, buf, 100, on_value, &ctx),
                 PODCACHE_ERR_INVALID_ARGUMENT);
    const uint8_t *null_key[1] = {NULL};
    size_t one[1] = {3};
    ctx.calls = 0;
    CHECK_STATUS(podcache_table_get_many(t, null_key, one, 1, buf, 100, on_value, &ctx), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK(ctx.calls == 0, "no callback before an invalid argument is found");
    CHECK_STATUS(podcache_table_get_many(t, NULL, NULL, 0, NULL, 0, on_value, &ctx), PODCACHE_OK);

    int replaced = -1;
    CHECK_STATUS(podcache_table_file_replaced(t, &replaced), PODCACHE_OK);
    CHECK(replaced == 0, "the vector is not replaced");

    /* Closing twice through the same variable is harmless: close clears it. */
    podcache_table_close(&t);
    CHECK(t == NULL, "close clears the handle variable");
    podcache_table_close(&t);
    CHECK_STATUS(podcache_table_get(t, (const uint8_t *)"alpha", 5, buf, sizeof buf, &len),
                 PODCACHE_ERR_INVALID_ARGUMENT);

    /* Subscribers: a bad start value, a size query, closing twice. */
    CHECK_STATUS(podcache_subscriber_open(ring_path, 7, 0, &s), PODCACHE_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL, "no handle on failure");
    CHECK_STATUS(podcache_subscriber_open(table_path, PODCACHE_START_OLDEST, 0, &s), PODCACHE_ERR_WRONG_KIND);
    CHECK_STATUS(podcache_subscriber_open(ring_path, PODCACHE_START_OLDEST, 0, &s), PODCACHE_OK);
    CHECK_STATUS(podcache_subscriber_try_recv(s, NULL, 0, &m), PODCACHE_ERR_BUFFER_TOO_SMALL);
    CHECK(m.len > 0, "size query of a message: %zu", m.len);
    CHECK_STATUS(podcache_subscriber_try_recv(s, buf, m.len, NULL), PODCACHE_OK);
    podcache_subscriber_close(&s);
    CHECK(s == NULL, "close clears the handle variable");
    podcache_subscriber_close(&s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s vectors|live|lapped|blocking|careless ARGS\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    int rc = 2;
    if (strcmp(mode, "vectors") == 0 && argc == 3) rc = run_vectors(argv[2]);
    else if (strcmp(mode, "live") == 0 && argc == 5) rc = run_live(argv[2], argv[3], atol(argv[4]));
    else if (strcmp(mode, "lapped") == 0 && argc == 3) rc = run_lapped(argv[2]);
    else if (strcmp(mode, "blocking") == 0 && argc == 3) rc = run_blocking(argv[2]);
    else if (strcmp(mode, "careless") == 0 && argc == 4) rc = run_careless(argv[2], argv[3]);
    else fprintf(stderr, "bad arguments for mode %s\n", mode);
    if (rc == 0) printf("ok %s\n", mode);
    return rc;
}
