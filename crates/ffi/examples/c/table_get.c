/*
 * Print the value of a key of a podcache table.
 *
 *   cc -I crates/ffi/include table_get.c -L target/release -lpodcache -o table_get
 *   LD_LIBRARY_PATH=target/release ./table_get /shared/features.table user:42
 *
 * Exit status: 0 found, 1 not found, 2 error.
 */
#include "podcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s TABLE_FILE KEY\n", argv[0]);
        return 2;
    }
    podcache_table *table = NULL;
    /* Wait up to a second for the writer to create the file. */
    podcache_status status = podcache_table_open(argv[1], 1000, &table);
    if (status != PODCACHE_OK) {
        char detail[512];
        podcache_last_error(detail, sizeof detail);
        fprintf(stderr, "open: %s: %s\n", podcache_error_message(status), detail);
        return 2;
    }
    const uint8_t *key = (const uint8_t *)argv[2];
    size_t key_len = strlen(argv[2]);

    /* Most values fit a small buffer; a larger one is told its size and read again. */
    uint8_t small[256];
    uint8_t *buf = small;
    size_t len = 0;
    status = podcache_table_get(table, key, key_len, buf, sizeof small, &len);
    if (status == PODCACHE_ERR_BUFFER_TOO_SMALL) {
        buf = malloc(len);
        if (buf == NULL) return 2;
        /* The value may have changed (grown) meanwhile: a real program loops. */
        status = podcache_table_get(table, key, key_len, buf, len, &len);
    }
    int rc;
    if (status == PODCACHE_OK) {
        fwrite(buf, 1, len, stdout);
        fputc('\n', stdout);
        rc = 0;
    } else if (status == PODCACHE_NOT_FOUND) {
        fprintf(stderr, "%s: not found\n", argv[2]);
        rc = 1;
    } else {
        char detail[512];
        podcache_last_error(detail, sizeof detail);
        fprintf(stderr, "get: %s: %s\n", podcache_error_message(status), detail);
        rc = 2;
    }
    if (buf != small) free(buf);
    podcache_table_close(&table); /* table is NULL now */
    return rc;
}
