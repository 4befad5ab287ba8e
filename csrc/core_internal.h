/* core_internal.h: what the binding files (core.c, core_bytes.c, core_cipher.c,
 * core_http.c, core_list.c)
 * share with each other and with no one else: the key userdata (core.c makes keys, core_cipher.c takes
 * them), the `nil, message` return, and the entry points one binding calls in another. */
#ifndef DIGIME_CORE_INTERNAL_H
#define DIGIME_CORE_INTERNAL_H

#include <openssl/evp.h>

#include "compat.h"
#include "cipher.h"

#define KEY_MT "digime.key"

/* A key and the contexts of its private operations, each set up at its first use and used
 * again for every file and every JWT (a Lua state is one thread at a time). */
typedef struct {
    EVP_PKEY *pkey;          /* NULL once freed */
    EVP_PKEY_CTX *signer;    /* PS512, salt 64 */
    EVP_PKEY_CTX *unwrap;    /* RSA-OAEP decryption */
} key_ud;

/* The key argument at arg (an argument error unless it is a live key). */
static inline key_ud *dm_check_key(lua_State *L, int arg)
{
    key_ud *k = (key_ud *)luaL_checkudata(L, arg, KEY_MT);
    if (k->pkey == NULL)
        luaL_argerror(L, arg, "key is freed");
    return k;
}

/* core.c: the key's unwrap context, set up now if need be; raises an argument error (arg)
 * unless the key is a private RSA key. */
EVP_PKEY_CTX *dm_key_unwrap_ctx(lua_State *L, key_ud *k, int arg);

/* An expected failure: pushes nil, err and returns their count. */
static inline int push_fail(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* core_cipher.c: adds file_decryptor, file_encryptor and inflater to the table on top. */
int dm_open_cipher(lua_State *L);

/* core_http.c: adds dm_http_engine to the table on top (not in a build without libcurl). */
int dm_open_http(lua_State *L);

/* core_bytes.c: a C buffer owned by a userdata ("digime.bytes"). dm_new_bytes pushes an empty
 * one (fill data, a malloc'd block, and len after: the userdata exists before the buffer is
 * handed to it); dm_take_bytes hands the buffer over and leaves it empty. */
struct dm_bytes {
    char *data;
    size_t len;
};
struct dm_bytes *dm_new_bytes(lua_State *L);
struct dm_bytes *dm_test_bytes(lua_State *L, int idx);   /* NULL when not a bytes object */
char *dm_take_bytes(struct dm_bytes *b, size_t *len);
int dm_open_bytes(lua_State *L);

/* core_list.c: adds file_list_index to the table on top. */
int dm_open_list(lua_State *L);

/* core_cipher.c, for core_http.c: the pipeline of a decryptor argument that has not been used
 * yet (raises otherwise). */
dm_pipeline *dm_check_file_decryptor(lua_State *L, int idx);

#endif
