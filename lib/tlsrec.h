/* tlsrec.h - TLS 1.3 record protection (RFC 8446 sections 5.2-5.3 and 7.3)
 * for one direction of a connection whose handshake OpenSSL already did:
 * traffic keys derived from a traffic secret, KeyUpdate's next secret, and
 * sealing and opening of application-phase records. lib/uvtls uses it to
 * carry an idle TLS 1.3 connection after freeing the OpenSSL SSL object
 * (docs/decisions.md, "Idle TLS 1.3 connections without an SSL object").
 *
 * Only the three TLS 1.3 suites of MICA_TLS13_CIPHERS (lib/httpc.h):
 * TLS_AES_128_GCM_SHA256 (0x1301), TLS_AES_256_GCM_SHA384 (0x1302) and
 * TLS_CHACHA20_POLY1305_SHA256 (0x1303). Every cipher is OpenSSL's (EVP);
 * this module only lays out nonces, labels and records.
 *
 * Record layout (TLSCiphertext): type 23, legacy version 0x0303, a 16-bit
 * length, then AEAD(key, iv XOR seq, aad = the 5 header bytes) of the
 * TLSInnerPlaintext: content || content type || zero padding. A record
 * opened here must carry a ciphertext of 17 .. 2^14 + 256 bytes, and its
 * content at most 2^14 bytes.
 *
 * Threads: a mica_tlsrec_dir belongs to its caller; the EVP_CIPHER_CTX
 * passed in is scratch (any state it held is replaced), one per thread.
 */
#ifndef MICA_TLSREC_H
#define MICA_TLSREC_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "err.h"

#define MICA_TLSREC_AES_128_GCM_SHA256 0x1301
#define MICA_TLSREC_AES_256_GCM_SHA384 0x1302
#define MICA_TLSREC_CHACHA20_POLY1305_SHA256 0x1303

#define MICA_TLSREC_HEADER_LEN 5
#define MICA_TLSREC_TAG_LEN 16
#define MICA_TLSREC_IV_LEN 12
#define MICA_TLSREC_SECRET_MAX 48 /* SHA-384 */
#define MICA_TLSREC_KEY_MAX 32
#define MICA_TLSREC_CONTENT_MAX 16384 /* 2^14: TLSPlaintext.length */
#define MICA_TLSREC_CIPHERTEXT_MAX (16384 + 256)
/* The longest TLSInnerPlaintext an opened record may hold. */
#define MICA_TLSREC_INNER_MAX (MICA_TLSREC_CIPHERTEXT_MAX - MICA_TLSREC_TAG_LEN)

/* Content types (RFC 8446 section 5.1). */
#define MICA_TLSREC_ALERT 21
#define MICA_TLSREC_HANDSHAKE 22
#define MICA_TLSREC_APPLICATION_DATA 23

/* One direction: its traffic secret, the key and IV derived from it, and the
 * sequence number of the next record. Holds key material: mica_tlsrec_wipe
 * it before freeing. */
typedef struct mica_tlsrec_dir {
	uint64_t seq;
	uint16_t suite;
	uint8_t secret_len;
	uint8_t secret[MICA_TLSREC_SECRET_MAX];
	uint8_t key[MICA_TLSREC_KEY_MAX];
	uint8_t iv[MICA_TLSREC_IV_LEN];
} mica_tlsrec_dir;

/* Whether |suite| (the IANA value) is one of the three above. */
int mica_tlsrec_suite_ok(uint16_t suite);

/* The traffic secret length of |suite| (32 or 48), 0 if unknown. */
size_t mica_tlsrec_secret_len(uint16_t suite);

/* HKDF-Expand-Label(secret, label, "", out_len) with the hash of |suite|
 * (RFC 8446 section 7.1; "tls13 " is prepended here). Returns 0,
 * MICA_EINVAL (unknown suite, bad lengths) or MICA_ECRYPTO. */
int mica_tlsrec_expand_label(uint16_t suite, const uint8_t *secret, size_t secret_len,
			     const char *label, uint8_t *out, size_t out_len) MICA_WUR;

/* Sets |d| to the traffic secret |secret| (|len| bytes, the suite's hash
 * length) and its key and IV (section 7.3), with sequence number |seq|
 * (records already protected under this secret). Returns 0, MICA_EINVAL or
 * MICA_ECRYPTO; on failure |d| is wiped. */
int mica_tlsrec_init(mica_tlsrec_dir *d, uint16_t suite, const uint8_t *secret, size_t len,
		     uint64_t seq) MICA_WUR;

/* KeyUpdate (section 7.2): the next traffic secret
 * (HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)), its key and
 * IV, sequence number 0. Returns 0 or MICA_ECRYPTO (|d| is then wiped and
 * unusable). */
int mica_tlsrec_update(mica_tlsrec_dir *d) MICA_WUR;

/* Bytes of the record sealing |len| content bytes: header, content, type
 * byte, tag. */
static inline size_t mica_tlsrec_sealed_len(size_t len)
{
	return MICA_TLSREC_HEADER_LEN + len + 1 + MICA_TLSREC_TAG_LEN;
}

/* Seals |len| (at most MICA_TLSREC_CONTENT_MAX) bytes of |content| of type
 * |type| into one record at |out| (mica_tlsrec_sealed_len(len) bytes, may
 * not overlap |content|), without padding, and advances the sequence
 * number. Returns 0, MICA_EINVAL, MICA_RANGE (the sequence number is
 * exhausted) or MICA_ECRYPTO. */
int mica_tlsrec_seal(mica_tlsrec_dir *d, EVP_CIPHER_CTX *ctx, uint8_t type, const uint8_t *content,
		     size_t len, uint8_t *out) MICA_WUR;

/* Checks a record header (5 bytes at |hdr|) and gives the whole record's
 * length (header included) in *total. Returns 0, or MICA_BADHEADER: outer
 * type not application_data, legacy version not 0x0303, or a ciphertext
 * length outside 17 .. 2^14 + 256. */
int mica_tlsrec_header(const uint8_t *hdr, size_t *total) MICA_WUR;

/* Opens the record |rec| (|len| bytes: a header that mica_tlsrec_header
 * accepts and exactly the length it names) into |out| (at least
 * MICA_TLSREC_INNER_MAX bytes; may not overlap |rec|): the content in
 * out[0 .. *content_len), its type in *type; advances the sequence number.
 * Returns 0, MICA_BADHEADER (header or length wrong), MICA_AUTH (the tag
 * does not verify: wrong key, wrong sequence number or altered bytes; the
 * sequence number is not advanced), MICA_TRUNCATED (the inner plaintext is
 * all padding: no content type), MICA_TOOBIG (more than 2^14 content bytes),
 * MICA_RANGE or MICA_ECRYPTO. On failure nothing but *out may have
 * changed, and *out must be treated as garbage. */
int mica_tlsrec_open(mica_tlsrec_dir *d, EVP_CIPHER_CTX *ctx, const uint8_t *rec, size_t len,
		     uint8_t *out, size_t *content_len, uint8_t *type) MICA_WUR;

/* Record framing of an incoming byte stream that arrives in arbitrary
 * pieces. A whole record found in the input is handed out in place; one
 * that arrives in pieces is gathered in a buffer of exactly its size,
 * allocated when its header is complete and freed at the next call, so a
 * reader between records holds no buffer. Zero-initialise it. */
typedef struct mica_tlsrec_reader {
	uint8_t *part; /* the record being gathered, or the one last handed out */
	uint32_t part_len, part_need;
	uint8_t hdr[MICA_TLSREC_HEADER_LEN];
	uint8_t hdr_len;
	uint8_t part_done; /* |part| was handed out: free it at the next call */
} mica_tlsrec_reader;

/* Takes bytes from *in (advancing *in and *in_len) until a record is whole.
 * Returns 1 with *rec and *rec_len set to it (header included; it points
 * into the input or into the reader, valid until the next call), 0 when the
 * input ran out first (the bytes are kept), MICA_EBADHEADER (a header that
 * mica_tlsrec_header refuses; the stream is unusable) or MICA_ENOMEM. */
int mica_tlsrec_next(mica_tlsrec_reader *r, const uint8_t **in, size_t *in_len, const uint8_t **rec,
		     size_t *rec_len) MICA_WUR;

/* Frees what the reader holds and zeroes it. NULL is a no-op. */
void mica_tlsrec_reader_free(mica_tlsrec_reader *r);

/* Wipes |d| (key material and all). NULL is a no-op. */
void mica_tlsrec_wipe(mica_tlsrec_dir *d);

#endif
