/* crypto.h - the cryptographic primitives every mica service uses: a CSPRNG,
 * the AES-GCM envelope that binds ciphertexts to their context, HKDF-SHA256,
 * HMAC-SHA256, strict base64/base64url/hex codecs, constant-time comparison
 * and zeroization. Everything is built on OpenSSL 3 EVP; no home-made
 * primitives.
 */
#ifndef MICA_CRYPTO_H
#define MICA_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "err.h"

/* ---- Random, comparison, zeroization ------------------------------------ */

/* Fill |buf| with |n| bytes from OpenSSL's CSPRNG (RAND_bytes).
 * Returns 0, MICA_EINVAL (buf NULL with n > 0) or MICA_ECRYPTO. On failure
 * |buf| is wiped so a caller that ignores the contract never uses a
 * half-filled key. */
int mica_random(void *buf, size_t n) MICA_WUR;

/* Compare |n| bytes of |a| and |b| in time that depends only on |n|
 * (CRYPTO_memcmp). Returns true when they are equal; n == 0 is equal. Use it
 * for every MAC, tag, token-hash or magic comparison of untrusted bytes. */
bool mica_ct_equal(const void *a, const void *b, size_t n);

/* Overwrite |n| bytes at |p| with zeros in a way the compiler may not elide
 * (OPENSSL_cleanse). NULL |p| is a no-op. This is libmica's one wipe
 * function (with mica_free_wipe below for whole blocks): lib/ and the
 * services erase secrets with these, never with explicit_bzero or memset. */
void mica_wipe(void *p, size_t n);

/* ---- Memory that may hold secrets ----------------------------------------- */

/* Buffers that carry request and response bodies (passwords, session
 * tokens, plaintext data keys) are released through these, so their bytes
 * are gone before the allocator reuses the block. Both work on any block
 * from malloc/calloc/realloc (glibc's malloc_usable_size gives the size to
 * wipe: the whole block, slack included), so a buffer can be handed to
 * code that frees it with plain free() and back.
 *
 * jansson: at load time (a constructor in this file, before main() and any
 * thread) libmica installs malloc and mica_free_wipe() as jansson's
 * allocator (json_set_alloc_funcs, process-wide), so every json_t a
 * json_decref() frees, and every string json_dumps() made, is wiped when
 * released. Its blocks stay plain malloc blocks: free() on a json_dumps()
 * result remains correct (it only skips the wipe). A program must not
 * install other jansson allocators. */

/* Wipes the whole block |p| (malloc'd, or NULL: a no-op) and frees it. */
void mica_free_wipe(void *p);

/* realloc() that leaves no copy behind: when the block |p| already holds
 * |n| bytes it is returned as it is; otherwise a new block of |n| bytes gets
 * the old block's contents and the old block is wiped and freed. NULL |p| is
 * malloc(|n|). Returns NULL (and leaves |p| untouched and owned by the
 * caller) when out of memory or |n| is 0. */
void *mica_realloc_wipe(void *p, size_t n);

/* Test hook: |fn| (NULL: none) is called by mica_free_wipe() twice for
 * each block, with its size: with |wiped| 0 just before the wipe (the test
 * recognises a block it knows by its contents) and with |wiped| 1 just
 * before free() (the test checks it is all zeros). Tests only;
 * process-wide; set it before the threads it observes start. */
typedef void (*mica__free_hook_fn)(const void *p, size_t n, int wiped);
void mica__free_hook_set(mica__free_hook_fn fn);

/* ---- AEAD envelope ------------------------------------------------------- */

/* Envelope format, version 1. All integers big-endian; offsets in bytes,
 * n = key-name length, c = ciphertext length:
 *
 *   off      size  field
 *   0        3     magic "MCE" (0x4d 0x43 0x45)
 *   3        1     format version, 1
 *   4        1     n, key-name length, 1..255
 *   5        n     key name, printable ASCII 0x21..0x7e (no NUL, no space)
 *   5+n      4     key version, u32
 *   9+n      4     c, ciphertext length, u32 (equals the plaintext length)
 *   13+n     12    nonce, random per envelope
 *   25+n     c     ciphertext (may be empty)
 *   25+n+c   16    GCM tag; the envelope ends here, trailing bytes are an error
 *
 * The header is bytes [0, 25+n). The cipher is AES-GCM with a 96-bit nonce;
 * the key length (16 or 32 bytes) selects AES-128 or AES-256 and is not
 * recorded, because the key name and version already identify the key. The
 * GCM associated data is header || context: the header is self-delimiting,
 * so the concatenation is unambiguous, and any change to the key name, key
 * version, length or nonce fails authentication exactly like a change to
 * the ciphertext or to the caller's context bytes. The explicit length lets
 * a parser tell a truncated envelope (MICA_ETRUNCATED) from a tampered one
 * (MICA_EAUTH) at every cut point. Random 96-bit nonces are safe for up to
 * 2^32 envelopes per key; rotate keys (new version) well before.
 */
#define MICA_ENVELOPE_MAGIC "MCE"
#define MICA_ENVELOPE_MAGIC_LEN 3
#define MICA_ENVELOPE_VERSION 1
#define MICA_ENVELOPE_NAME_MAX 255
#define MICA_ENVELOPE_NONCE_LEN 12
#define MICA_ENVELOPE_TAG_LEN 16
/* Largest plaintext one envelope carries (the u32 length field). */
#define MICA_ENVELOPE_MAX_PLAINTEXT ((size_t)UINT32_MAX)
/* Bytes an envelope adds to its plaintext besides the key name. */
#define MICA_ENVELOPE_OVERHEAD                                                                     \
	(MICA_ENVELOPE_MAGIC_LEN + 1 + 1 + 4 + 4 + MICA_ENVELOPE_NONCE_LEN + MICA_ENVELOPE_TAG_LEN)

/* A decoded envelope. Every pointer is borrowed: it points into the buffer
 * given to mica_envelope_parse() and is valid only while that buffer is.
 * |key_name| is NOT NUL-terminated; use |key_name_len| (print it with
 * "%.*s", (int)key_name_len, key_name). */
struct mica_envelope {
	uint8_t version;	   /* MICA_ENVELOPE_VERSION */
	const char *key_name;	   /* borrowed, key_name_len bytes, no NUL */
	size_t key_name_len;	   /* 1..MICA_ENVELOPE_NAME_MAX */
	uint32_t key_version;	   /* decoded to host order */
	const uint8_t *nonce;	   /* borrowed, MICA_ENVELOPE_NONCE_LEN bytes */
	size_t header_len;	   /* bytes of header, 25 + key_name_len */
	const uint8_t *ciphertext; /* borrowed, ciphertext_len bytes */
	size_t ciphertext_len;	   /* equals the plaintext length */
	const uint8_t *tag;	   /* borrowed, MICA_ENVELOPE_TAG_LEN bytes */
};

/* Total size of an envelope for a key name of |name_len| bytes and |pt_len|
 * plaintext bytes, or 0 if name_len is not 1..MICA_ENVELOPE_NAME_MAX, pt_len
 * exceeds MICA_ENVELOPE_MAX_PLAINTEXT or the total overflows size_t. */
size_t mica_envelope_size(size_t name_len, size_t pt_len);

/* Encrypt |pt| (|pt_len| bytes, may be 0) under |key| (|key_len| 16 or 32
 * bytes) into a new envelope naming |key_name| (NUL-terminated, 1..255
 * printable ASCII bytes) and |key_version|, bound to the context |aad|
 * (|aad_len| bytes; NULL allowed when aad_len is 0).
 * On success *out is a malloc'd envelope of *out_len bytes that the caller
 * frees. On failure *out is NULL and *out_len 0.
 * Returns 0, MICA_EINVAL (bad key length, key name or NULL argument),
 * MICA_ETOOBIG (pt_len over MICA_ENVELOPE_MAX_PLAINTEXT), MICA_ENOMEM or
 * MICA_ECRYPTO. */
int mica_envelope_seal(const uint8_t *key, size_t key_len, const char *key_name,
		       uint32_t key_version, const void *aad, size_t aad_len, const void *pt,
		       size_t pt_len, uint8_t **out, size_t *out_len) MICA_WUR;

/* Decode the header of the envelope |in| (|in_len| bytes) into |env| without
 * decrypting, so a service can look up the key it names. Nothing is
 * authenticated yet: treat the fields as hints until mica_envelope_open()
 * succeeds. |env| borrows from |in| (see struct mica_envelope).
 * Returns 0, MICA_EINVAL (NULL argument), MICA_ETRUNCATED (input ends before
 * the end of the tag, including a proper prefix of the magic),
 * MICA_EBADHEADER (wrong magic, zero-length or non-printable key name, or
 * bytes after the tag) or MICA_EBADVERSION (unknown format version), checked
 * in the order of the fields. On failure |env| is zeroed. */
int mica_envelope_parse(const uint8_t *in, size_t in_len, struct mica_envelope *env) MICA_WUR;

/* Authenticate and decrypt the envelope |in| (|in_len| bytes) with |key|
 * (|key_len| 16 or 32 bytes) and the context |aad| (|aad_len| bytes; NULL
 * allowed when aad_len is 0). The key name and version in the header are
 * authenticated but not compared with anything: choosing the key is the
 * caller's job (mica_envelope_parse()).
 * On success *pt is a malloc'd buffer of *pt_len bytes (never NULL, even for
 * an empty plaintext) that the caller should mica_wipe() and free. On failure
 * *pt is NULL and *pt_len 0; no unauthenticated plaintext is ever released.
 * Returns 0, MICA_EINVAL (bad key length or NULL argument), any error of
 * mica_envelope_parse(), MICA_EAUTH (wrong key, wrong context, or tampered
 * header, ciphertext or tag), MICA_ENOMEM or MICA_ECRYPTO. */
int mica_envelope_open(const uint8_t *key, size_t key_len, const void *aad, size_t aad_len,
		       const uint8_t *in, size_t in_len, uint8_t **pt, size_t *pt_len) MICA_WUR;

/* ---- Key derivation and MACs -------------------------------------------- */

#define MICA_SHA256_LEN 32
/* Largest HKDF-SHA256 output (255 hash blocks, RFC 5869 section 2.3). */
#define MICA_HKDF_SHA256_MAX ((size_t)255 * MICA_SHA256_LEN)

/* HKDF-SHA256 (RFC 5869, extract then expand) of input keying material
 * |ikm| with optional |salt| and |info| (each NULL allowed when its length
 * is 0; an empty salt means HashLen zero bytes, as the RFC says) into |out|
 * (|out_len| 1..MICA_HKDF_SHA256_MAX bytes).
 * Returns 0, MICA_EINVAL (NULL argument or bad out_len) or MICA_ECRYPTO; on
 * failure |out| is wiped. */
int mica_hkdf_sha256(const void *salt, size_t salt_len, const void *ikm, size_t ikm_len,
		     const void *info, size_t info_len, void *out, size_t out_len) MICA_WUR;

/* HMAC-SHA256 (RFC 2104) of |msg| under |key| into |out| (32 bytes). Either
 * input may be empty (NULL allowed when its length is 0).
 * Returns 0, MICA_EINVAL (NULL argument) or MICA_ECRYPTO; on failure |out|
 * is wiped. Compare MACs with mica_ct_equal(). */
int mica_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
		     uint8_t out[MICA_SHA256_LEN]) MICA_WUR;

/* A reusable HMAC-SHA256 context without a key, for callers that MAC many
 * messages (under one key or many) and want to skip the per-call context
 * set-up of mica_hmac_sha256(). Returns NULL when out of memory or OpenSSL
 * lacks HMAC-SHA256. The caller frees it with EVP_MAC_CTX_free(), which
 * cleanses the key it holds. Not for concurrent use by several threads. */
EVP_MAC_CTX *mica_hmac_sha256_new(void);

/* HMAC-SHA256 of |msg| with |ctx| from mica_hmac_sha256_new(). |key| (may be
 * empty) replaces the context's key; key NULL with key_len 0 reuses the key
 * of the previous call, which must have set one. Returns 0, MICA_EINVAL
 * (NULL argument) or MICA_ECRYPTO (also: no key set yet); on failure |out|
 * is wiped. */
int mica_hmac_sha256_keyed(EVP_MAC_CTX *ctx, const void *key, size_t key_len, const void *msg,
			   size_t msg_len, uint8_t out[MICA_SHA256_LEN]) MICA_WUR;

/* ---- Fetched algorithms --------------------------------------------------- */

/* SHA-256, fetched from the default provider once per process (thread-safe).
 * Hand it to EVP_DigestInit_ex() or EVP_Digest() instead of EVP_sha256(),
 * which OpenSSL 3 looks up again in the provider store on every init.
 * Borrowed: never free it. NULL only if OpenSSL cannot provide SHA-256 (the
 * EVP call it is given to then fails). */
const EVP_MD *mica_md_sha256(void);

/* ---- Encodings ----------------------------------------------------------- */

/* Two base64 alphabets (RFC 4648): "base64" is the standard alphabet
 * (+ and /) with '=' padding to a multiple of four characters; "base64url"
 * is the URL-safe alphabet (- and _) without padding. Decoders are strict
 * and accept exactly one spelling of each byte string: any character outside
 * the alphabet (whitespace, NUL, the other alphabet's characters, '=' in
 * base64url or anywhere but the end in base64), bad padding, a length that
 * no encoder produces, or non-zero unused bits in the last character fail
 * with MICA_EBADENCODING. Character classification is branch-free, so
 * decoding a key from a config file does not leak it through timing.
 *
 * Encoders write NUL-terminated text. Buffer-taking functions fail with
 * MICA_ETOOBIG when |out_cap| is too small (encoders need encoded_len + 1
 * for the NUL; decoders need the exact decoded length) and write nothing
 * they do not wipe on failure. *_alloc variants return a malloc'd buffer the
 * caller frees (never NULL on success, even for empty output). Every
 * function returns 0, MICA_EINVAL (NULL argument), MICA_ETOOBIG,
 * MICA_EBADENCODING (decoders) or MICA_ENOMEM (*_alloc); *out_len may be
 * NULL for encoders. */

/* Encoded length without the NUL, or SIZE_MAX if it overflows size_t. */
size_t mica_base64_encoded_len(size_t n);
size_t mica_base64url_encoded_len(size_t n);
/* Upper bound of the decoded length of |in_len| encoded characters (exact
 * for base64url; base64 padding may make the real length 1 or 2 less). */
size_t mica_base64_decoded_max(size_t in_len);
size_t mica_base64url_decoded_max(size_t in_len);

int mica_base64_encode(const void *in, size_t in_len, char *out, size_t out_cap,
		       size_t *out_len) MICA_WUR;
int mica_base64_encode_alloc(const void *in, size_t in_len, char **out, size_t *out_len) MICA_WUR;
int mica_base64_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap,
		       size_t *out_len) MICA_WUR;
int mica_base64_decode_alloc(const char *in, size_t in_len, uint8_t **out,
			     size_t *out_len) MICA_WUR;

int mica_base64url_encode(const void *in, size_t in_len, char *out, size_t out_cap,
			  size_t *out_len) MICA_WUR;
int mica_base64url_encode_alloc(const void *in, size_t in_len, char **out,
				size_t *out_len) MICA_WUR;
int mica_base64url_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap,
			  size_t *out_len) MICA_WUR;
int mica_base64url_decode_alloc(const char *in, size_t in_len, uint8_t **out,
				size_t *out_len) MICA_WUR;

/* Lower-case hex of |in| (|in_len| bytes) into |out|, NUL-terminated;
 * |out_cap| must be at least 2 * in_len + 1. Returns 0, MICA_EINVAL or
 * MICA_ETOOBIG. */
int mica_hex_encode(const void *in, size_t in_len, char *out, size_t out_cap) MICA_WUR;

/* Decode |in_len| hex digits (either case, even count, nothing else) into
 * |out| (|out_cap| at least in_len / 2); *out_len gets the byte count.
 * Returns 0, MICA_EINVAL, MICA_ETOOBIG or MICA_EBADENCODING; on failure
 * |out| is wiped. */
int mica_hex_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap,
		    size_t *out_len) MICA_WUR;

#endif
