/* core_key.h: the key userdata that the binding files share (core.c makes keys,
 * core_cipher.c takes them). */
#ifndef DIGIME_CORE_KEY_H
#define DIGIME_CORE_KEY_H

#include <openssl/evp.h>

#define KEY_MT "digime.key"

typedef struct {
    EVP_PKEY *pkey;   /* NULL once freed */
} key_ud;

#endif
