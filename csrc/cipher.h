/* cipher.h: the digi.me file format (Lua-free).
 *
 *   RSA-OAEP(SHA-1) wrapped 32-byte AES key (as long as the key's modulus)
 *   || 16-byte IV || AES-256-CBC ciphertext with PKCS#7 padding
 *
 * A streaming decryptor and encryptor, and the reading pipeline decryptor -> inflater
 * (inflate.h) whose output a consumer drains. All three take input in pieces of any size,
 * keep memory bounded by the piece size (and, for the pipeline, by a soft output limit),
 * and wipe keys and buffers when freed. Error messages never contain key material or data.
 *
 * A file is valid only if final succeeds: output given before that is partial, and the
 * caller must not present it as complete when final fails. */
#ifndef DIGIME_CIPHER_H
#define DIGIME_CIPHER_H

#include <stddef.h>
#include <openssl/evp.h>

#include "inflate.h"

/* RSA-OAEP with SHA-1 and MGF1-SHA-1, empty label. out must hold EVP_PKEY_get_size(key) bytes.
 * Return 0, or -1 with *err set to a static message. */
int dm_oaep_encrypt(EVP_PKEY *key, const unsigned char *in, size_t n,
                    unsigned char *out, size_t *outlen, const char **err);

/* A context set up for RSA-OAEP decryption with key (NULL with *err set unless key is a
 * private RSA key). Setting one up costs about 1 % of the RSA operation itself, and asking
 * the key whether it is private as much again: a key object makes its context once and
 * reuses it. A context is used by one thread at a time. Free with EVP_PKEY_CTX_free. */
EVP_PKEY_CTX *dm_unwrap_ctx_new(EVP_PKEY *key, const char **err);
/* Decrypts with a context from dm_unwrap_ctx_new; n must be the key's size. */
int dm_oaep_unwrap(EVP_PKEY_CTX *unwrap, const unsigned char *in, size_t n,
                   unsigned char *out, size_t *outlen, const char **err);

/* The one message for a wrong key, a corrupt key segment and bad padding alike: telling
 * them apart would hand out an oracle on the key wrap and on the CBC padding. */
#define DM_DECRYPT_FAILED "file decryption failed (wrong key or corrupt data)"

/* The size rule (doc/protocol.md "The file format", for any key size): total >= keysize + 16 + 16 and
 * (total - keysize - 16) % 16 == 0. */
int dm_file_size_valid(unsigned long long total, size_t keysize);

/* ---- decryptor ---- */

typedef struct dm_decryptor dm_decryptor;

/* key: an RSA private key (the decryptor keeps its own reference until the key segment is
 * unwrapped). NULL with *err set when key is not a private RSA key or memory ran out. */
dm_decryptor *dm_decryptor_new(EVP_PKEY *key, const char **err);
/* The same from a context of dm_unwrap_ctx_new, which the decryptor copies (the caller's
 * stays the caller's): the way to make many decryptors for one key. */
dm_decryptor *dm_decryptor_from(const EVP_PKEY_CTX *unwrap, const char **err);
/* The file's total size is known in advance (a content-length): check the size rule now,
 * before any decryption, and later that exactly that many bytes come. */
int dm_decryptor_expect_size(dm_decryptor *d, unsigned long long total);
/* Appends the plaintext that n more bytes of file produce to out. 0, or -1. */
int dm_decryptor_update(dm_decryptor *d, const unsigned char *in, size_t n, struct dm_buf *out);
/* The file ended: the size rule, then the padding. 0, or -1. */
int dm_decryptor_final(dm_decryptor *d, struct dm_buf *out);
const char *dm_decryptor_error(const dm_decryptor *d);  /* "" unless failed */
void dm_decryptor_free(dm_decryptor *d);

/* ---- encryptor ---- */

typedef struct dm_encryptor dm_encryptor;

/* key: RSA, public or private (only its public part is used). A fresh random AES key and
 * IV (CSPRNG) are made and the key wrapped now; the header goes out with the first output,
 * so even an empty input gives a whole file of keysize + 32 bytes. */
dm_encryptor *dm_encryptor_new(EVP_PKEY *key, const char **err);
int dm_encryptor_update(dm_encryptor *e, const unsigned char *in, size_t n, struct dm_buf *out,
                        const char **err);
int dm_encryptor_final(dm_encryptor *e, struct dm_buf *out, const char **err);
void dm_encryptor_free(dm_encryptor *e);

/* ---- pipeline: decryptor -> inflater -> output buffer ---- */

typedef struct dm_pipeline dm_pipeline;

/* Reference counted: new gives one reference; dm_pipeline_release frees at the last.
 * deferred = 1 leaves the compression open (c is ignored): a file's compression is named in
 * the response's headers, which come after the request is made. Decrypted bytes are then
 * held back (the calls below return 1) until dm_pipeline_set_compression. */
dm_pipeline *dm_pipeline_new(const EVP_PKEY_CTX *unwrap, enum dm_compression c, int deferred,
                             size_t max_output, const char **err);
/* Chooses the compression of a deferred pipeline: 0, or -1 if it was chosen already. */
int dm_pipeline_set_compression(dm_pipeline *p, enum dm_compression c);
int dm_pipeline_compression_set(const dm_pipeline *p);
void dm_pipeline_retain(dm_pipeline *p);
void dm_pipeline_release(dm_pipeline *p);

/* Marks the pipeline as owned by one producer (an HTTP request). -1 if it was claimed
 * before or has already taken input. */
int dm_pipeline_claim(dm_pipeline *p);
int dm_pipeline_claimed(const dm_pipeline *p);

/* The calls below return 0 when everything is through, 1 when work is held back because
 * the output reached `limit` bytes (drain it, then dm_pipeline_pump or, after the end,
 * dm_pipeline_finish again), and -1 when the file is invalid (dm_pipeline_error). */
int dm_pipeline_expect_size(dm_pipeline *p, unsigned long long total);   /* 0 or -1 */
int dm_pipeline_write(dm_pipeline *p, const unsigned char *in, size_t n, size_t limit);
int dm_pipeline_pump(dm_pipeline *p, size_t limit);
int dm_pipeline_finish(dm_pipeline *p, size_t limit);

/* The output not yet drained. */
const unsigned char *dm_pipeline_output(const dm_pipeline *p, size_t *len);
void dm_pipeline_drain(dm_pipeline *p);   /* forgets the output (the consumer copied it) */
size_t dm_pipeline_buffered(const dm_pipeline *p);

enum dm_pipeline_state {
    DM_PIPE_FRESH,     /* no input yet */
    DM_PIPE_RUNNING,
    DM_PIPE_ENDING,    /* input ended, output still held back */
    DM_PIPE_DONE,      /* complete and valid: the output is the whole plaintext */
    DM_PIPE_FAILED
};
enum dm_pipeline_state dm_pipeline_state(const dm_pipeline *p);
const char *dm_pipeline_error(const dm_pipeline *p);     /* "" unless failed */

#endif
