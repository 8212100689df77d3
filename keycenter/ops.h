/* ops.h - cryptographic operations on named keys and the wire formats they
 * use: ciphertexts "kc:v<version>:<base64 envelope>" (the envelope is
 * libmica's AEAD envelope, naming the key and version, bound to the
 * canonical encryption context) and HMACs "kc:v<version>:<base64 mac>".
 *
 * Failures: each operation returns a MICA_E* error and, for the failures a
 * client can act on, fills |why| (lib/problem.h) with the status of that
 * error (MICA_ERRNO_MAP) and a specific code (unknown_key, wrong_key,
 * decryption_failed, ...); a |why| left unset is described from the error
 * alone by the caller (mica_problem_from_err()). */
#ifndef KC_OPS_H
#define KC_OPS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "problem.h"

struct kc_service;

/* Canonical bytes of a context object: its members sorted by name, compact
 * JSON. Every value must be a string and the object non-empty. On success
 * *out (malloc'd, caller frees) holds *len bytes. MICA_EINVAL with |why|
 * (bad_context) otherwise. */
int kc_context_canonical(const json_t *ctx, char **out, size_t *len, mica_problem *why) MICA_WUR;

/* Splits "kc:v<version>:<base64>" into its version (1..2^31-1) and decoded
 * bytes (*blob malloc'd). MICA_EBADHEADER for a bad prefix or version,
 * MICA_EBADENCODING for bad base64. Parses untrusted input: fuzzed. */
int kc_ciphertext_parse(const char *text, size_t len, uint32_t *version, uint8_t **blob,
			size_t *blob_len) MICA_WUR;

/* Encrypts |pt| under key |name| (version |version|, 0 = latest) bound to
 * |ctx|. *ciphertext is malloc'd "kc:vN:..." text. */
int kc_op_encrypt(struct kc_service *s, const char *name, uint32_t version, const uint8_t *pt,
		  size_t pt_len, const char *ctx, size_t ctx_len, char **ciphertext,
		  uint32_t *used_version, mica_problem *why) MICA_WUR;

/* Decrypts |ciphertext| of key |name| with |ctx|. *pt is malloc'd (wipe and
 * free). A version below the key's min_decryption_version gives
 * MICA_EDENIED with why->code "version_below_minimum". */
int kc_op_decrypt(struct kc_service *s, const char *name, const char *ciphertext, const char *ctx,
		  size_t ctx_len, uint8_t **pt, size_t *pt_len, uint32_t *version,
		  mica_problem *why) MICA_WUR;

/* HMAC-SHA256 of |input| under a key derived (HKDF) from version |version|
 * (0 = latest) of |name|; *mac is malloc'd "kc:vN:<base64>". */
int kc_op_hmac(struct kc_service *s, const char *name, uint32_t version, const uint8_t *input,
	       size_t input_len, char **mac, uint32_t *used_version, mica_problem *why) MICA_WUR;

#endif
