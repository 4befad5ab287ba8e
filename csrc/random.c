/* random.c: CSPRNG bytes and uniform alphanumeric strings. */
#include "random.h"

#include <openssl/rand.h>
#include <limits.h>

static const char alnum[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

int dm_random_bytes(unsigned char *buf, size_t len)
{
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        if (RAND_bytes(buf, chunk) != 1)
            return -1;
        buf += chunk;
        len -= (size_t)chunk;
    }
    return 0;
}

int dm_random_alnum(char *out, size_t len)
{
    /* 248 = 4 * 62: bytes at or above it are rejected, so every character is equally likely. */
    unsigned char pool[64];
    size_t used = sizeof pool, filled = 0;

    while (filled < len) {
        if (used == sizeof pool) {
            if (dm_random_bytes(pool, sizeof pool) != 0)
                return -1;
            used = 0;
        }
        unsigned char b = pool[used++];
        if (b < 248)
            out[filled++] = alnum[b % 62];
    }
    return 0;
}
