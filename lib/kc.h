/* kc.h - the Key Center client every other mica service uses.
 *
 * Speaks the Key Center's HTTPS API (docs/api/keycenter.md) over mutual TLS
 * through mica_httpc: data keys for envelope encryption, encryption of small
 * secrets, HMACs for blind indexes. Unwrapped data keys and HMAC results are
 * kept in an in-memory cache bounded in entries (least recently used evicted
 * first) and in age (a TTL counted from insertion), so a service does not call
 * the Key Center for every record it reads or every login it looks up; every
 * value that leaves the cache, by eviction, expiry, flush or mica_kc_free(),
 * is wiped first. Entries are found by an HMAC of the call under a random
 * per-client key: ciphertexts, contexts and HMAC inputs are not kept.
 *
 * Fails closed: a transport error, a non-2xx status or a reply that is not
 * the documented shape is an error, never a fallback. Only idempotent calls
 * (decrypt, decrypt_datakey, hmac) are retried (by mica_httpc, on transport
 * errors and 502/503/504); datakey and encrypt are sent exactly once, since a
 * retry after a lost reply would mint a second key or ciphertext.
 *
 * Threads: one mica_kc is shared by all the threads of a service. mica_httpc
 * handles must never be used by two threads at once, so the client keeps a
 * pool of them: each call checks one out (LIFO, so the busiest threads reuse a
 * warm keep-alive connection), uses it alone and returns it. The pool grows
 * to the largest number of concurrent calls and is freed by mica_kc_free();
 * there are no thread-local handles whose destructors could outlive the
 * client. The cache is guarded by one mutex.
 *
 * Errors (every function): 0, or
 *   MICA_EINVAL      bad argument (checked before any request: key names are
 *                    1-64 of a-z 0-9 . _ - starting with a letter or digit;
 *                    contexts must be JSON objects), or the Key Center said
 *                    400 for any reason but a failed decryption
 *   MICA_EAUTH       400 decryption_failed / wrong_key: wrong context, wrong
 *                    key, or a tampered ciphertext
 *   MICA_EDENIED     401 or 403: no certificate accepted, unknown principal,
 *                    operation not granted, version below the minimum
 *   MICA_ENOTFOUND   404: unknown key or key version
 *   MICA_ESTATE      409
 *   MICA_ETOOBIG     413, a reply over 16 MiB, or an output buffer too small
 *   MICA_EAUDIT      503 audit_unavailable: the Key Center could not record
 *                    the request, so it answered nothing
 *   MICA_EHSM        503 hsm_unavailable
 *   MICA_EDBCONN     503 database_unavailable
 *   MICA_EHTTP       any other status (500, 502, 504, other 503s ...) or a
 *                    transport failure
 *   MICA_ETIMEOUT    no reply within timeout_ms
 *   MICA_ETLS        TLS handshake or certificate verification failed
 *   MICA_EBADHEADER  a 2xx reply that is not the documented JSON shape
 *   MICA_EWOULDBLOCK called on an event thread (lib/thread.h) when the
 *                    answer is not in the cache: nothing was sent; call
 *                    again from a thread that may block
 *   MICA_ENOMEM
 * Every output is cleared on failure (pointers NULL, lengths 0, buffers
 * wiped).
 */
#ifndef MICA_KC_H
#define MICA_KC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Largest data key in bytes (AES-256). */
#define MICA_KC_DATAKEY_MAX 32
#define MICA_KC_DEFAULT_CACHE_ENTRIES 1024
#define MICA_KC_DEFAULT_CACHE_TTL_MS 300000

typedef struct mica_kc_options {
	const char *base_url;  /* "https://host:port", no path (required) */
	const char *ca_file;   /* PEM CA the Key Center's certificate chains to (required) */
	const char *cert_file; /* PEM client certificate: the service's principal (required) */
	const char *key_file;  /* PEM key of cert_file (required) */
	long timeout_ms;       /* whole request; 0: 10000 */
	int retries;	       /* extra attempts for idempotent calls; 0: 2, negative: none */
	int cache_max_entries; /* cached data keys and HMACs; 0: MICA_KC_DEFAULT_CACHE_ENTRIES,
				  negative: no cache */
	long cache_ttl_ms;     /* age limit of a cached key; 0: MICA_KC_DEFAULT_CACHE_TTL_MS */
} mica_kc_options;

typedef struct mica_kc_stats {
	uint64_t hits;	      /* decrypt_datakey and hmac calls answered from the cache */
	uint64_t misses;      /* decrypt_datakey and hmac calls that asked the Key Center */
	uint64_t evictions;   /* entries dropped to make room (LRU) */
	uint64_t expirations; /* entries dropped because they outlived the TTL */
	uint64_t entries;     /* entries now cached */
	uint64_t requests;    /* HTTP requests made, counting each retry */
} mica_kc_stats;

typedef struct mica_kc mica_kc;

/* Creates a client. Every string of |opt| is copied; |opt| is not kept.
 * Checks the options (https URL, all three PEM files named) and builds one
 * HTTPS handle, but does not contact the Key Center. On success *out is the
 * client, released by mica_kc_free(). Returns 0, MICA_EINVAL, MICA_ENOMEM
 * or MICA_EHTTP (libcurl could not be set up). */
int mica_kc_new(mica_kc **out, const mica_kc_options *opt) MICA_WUR;

/* Wipes every cached key, closes every connection and frees |kc|. No other
 * thread may be inside a mica_kc_* call on |kc|. NULL is a no-op. */
void mica_kc_free(mica_kc *kc);

/* POST /v1/datakey/plaintext/{key_name}: a fresh random data key of |bits|
 * (128 or 256), wrapped by the named key and bound to |context| (a borrowed
 * JSON object of strings, the AEAD associated data; required to unwrap).
 * The plaintext key (bits / 8 bytes) is written to |plaintext_out| (|cap|
 * bytes, at least bits / 8); *ciphertext_out is the malloc'd wrapped key
 * "kc:v<N>:..." the caller stores next to its data and frees. Never retried.
 * The new key is not put in the cache. */
int mica_kc_datakey(mica_kc *kc, const char *key_name, int bits, const json_t *context,
		    uint8_t *plaintext_out, size_t cap, char **ciphertext_out) MICA_WUR;

/* Unwraps a data key made by mica_kc_datakey() (POST /v1/decrypt/{key_name}
 * unless cached). The cache is keyed by (key name, ciphertext, canonical
 * context: members sorted, compact JSON, as the Key Center canonicalises
 * it), so a different context is never answered from the cache. The key is
 * copied to |out| (|cap| bytes) and *len set to its length (16 or 32; any
 * other plaintext length is MICA_EBADHEADER: not a data key). |ciphertext|
 * and |context| are borrowed. Only successful unwraps are cached. */
int mica_kc_decrypt_datakey(mica_kc *kc, const char *key_name, const char *ciphertext,
			    const json_t *context, uint8_t *out, size_t cap, size_t *len) MICA_WUR;

/* The most items one batch request carries (the Key Center's default
 * keycenter.limits.max_batch_items). */
#define MICA_KC_BATCH_MAX 1000

/* mica_kc_decrypt_datakey() for |n| data keys at once: item i is
 * ciphertexts[i] under contexts[i] (both borrowed). Items the cache holds
 * are answered from it; the others are sent as batch requests
 * ("batch_input", at most MICA_KC_BATCH_MAX items each, retried like every
 * decrypt) and cached when they succeed. Item i's key is written to
 * out + i * |cap| (|cap| >= 16; the caller's buffer holds n * cap bytes and
 * wipes it), its length (16 or 32) to lens[i] and its result to errs[i]:
 * 0, or MICA_EAUTH (wrong context, tampered), MICA_ENOTFOUND (unknown key or
 * version), MICA_EDENIED, MICA_EINVAL or MICA_EBADHEADER (not a data key);
 * a failed item does not fail the others.
 * Returns 0 when every item has its result in errs[]; else the error of a
 * request that got no usable answer (the Key Center down: as the table at
 * the top of this file), which its items carry in errs[] too, or
 * MICA_EINVAL (bad arguments, nothing sent) or MICA_ENOMEM. */
int mica_kc_decrypt_datakeys(mica_kc *kc, const char *key_name, size_t n,
			     const char *const *ciphertexts, json_t *const *contexts, uint8_t *out,
			     size_t cap, size_t *lens, int *errs) MICA_WUR;

/* POST /v1/encrypt/{key_name}: encrypts the small secret |pt| (|pt_len|
 * bytes, may be 0) bound to |context| (borrowed). *ciphertext_out is the
 * malloc'd "kc:v<N>:..." text the caller frees. Never retried. */
int mica_kc_encrypt(mica_kc *kc, const char *key_name, const void *pt, size_t pt_len,
		    const json_t *context, char **ciphertext_out) MICA_WUR;

/* POST /v1/decrypt/{key_name}: decrypts |ciphertext| with |context| (both
 * borrowed), bypassing the data-key cache. *pt_out is malloc'd (never NULL
 * on success, even for an empty secret) with *pt_len bytes; the caller
 * mica_wipe()s and frees it. Retried (idempotent). */
int mica_kc_decrypt(mica_kc *kc, const char *key_name, const char *ciphertext,
		    const json_t *context, uint8_t **pt_out, size_t *pt_len) MICA_WUR;

/* POST /v1/hmac/{key_name}: the blind index of |input| (|input_len| bytes)
 * under the key's latest version. *hmac_out is the malloc'd "kc:v<N>:..."
 * string (the version makes indexes from different versions distinct) the
 * caller frees. Retried (idempotent). Successful results are cached, keyed by
 * (key name, input): after the key is rotated a client keeps answering with
 * the previous version for at most the cache TTL (mica_kc_cache_flush() ends
 * that at once). */
int mica_kc_hmac(mica_kc *kc, const char *key_name, const void *input, size_t input_len,
		 char **hmac_out) MICA_WUR;

/* Copies the cache and request counters into *st. */
void mica_kc_stats_get(mica_kc *kc, mica_kc_stats *st);

/* Wipes and drops every cached data key (e.g. after a key was rotated and
 * old versions retired). */
void mica_kc_cache_flush(mica_kc *kc);

#endif
