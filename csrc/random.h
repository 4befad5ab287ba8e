/* random.h: CSPRNG bytes and uniform alphanumeric strings (Lua-free). */
#ifndef DIGIME_RANDOM_H
#define DIGIME_RANDOM_H

#include <stddef.h>

/* Fills buf with len bytes from the OpenSSL CSPRNG. Returns 0 on success, -1 on failure. */
int dm_random_bytes(unsigned char *buf, size_t len);

/* Fills out with len characters drawn uniformly from [a-zA-Z0-9]. Returns 0 or -1. */
int dm_random_alnum(char *out, size_t len);

#endif
