/* hsm.h - the Key Center's hardware security module, reached through PKCS#11
 * (SoftHSM2 locally; the module is dlopen'ed, its path is configuration).
 *
 * The token holds two key pairs generated inside it: the RSA-4096 root key
 * ("mica-root", private half usable only to unwrap) and the EC P-256 audit
 * checkpoint signing key ("mica-audit-signing", private half usable only to
 * sign). Per-service key-encryption keys (KEKs) are AES-256 keys that exist
 * outside the token only as blobs wrapped by the root public key (RSA-OAEP);
 * kc_hsm_kek_load() unwraps one into the token as a sensitive, non-extractable
 * session object, and kc_hsm_seal() / kc_hsm_open_sealed() run AES-256-GCM
 * with it inside the token. No key material is ever in this process's memory.
 *
 * Thread safety: one kc_hsm is shared by all threads. Every function except
 * kc_hsm_open() and kc_hsm_close() may be called concurrently; each call
 * borrows a PKCS#11 session from a pool (all sessions share the one login).
 * kc_hsm_close() must not race with any other call on the same handle.
 * One kc_hsm per module per process: PKCS#11 initialises a module once.
 */
#ifndef MICA_KC_HSM_H
#define MICA_KC_HSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define KC_HSM_ROOT_LABEL "mica-root"
#define KC_HSM_AUDIT_LABEL "mica-audit-signing"
/* RSA modulus of the root key, and so the length of every wrapped KEK. */
#define KC_HSM_ROOT_BITS 4096
#define KC_HSM_KEK_BLOB_LEN (KC_HSM_ROOT_BITS / 8)
/* Sealed format: nonce(12) || ciphertext (as long as the plaintext) || tag(16). */
#define KC_HSM_NONCE_LEN 12
#define KC_HSM_TAG_LEN 16
#define KC_HSM_SEAL_OVERHEAD (KC_HSM_NONCE_LEN + KC_HSM_TAG_LEN)
/* kc_hsm_sign() signs a SHA-256 digest. */
#define KC_HSM_DIGEST_LEN 32

typedef struct kc_hsm kc_hsm;
/* A KEK unwrapped into the token (a session object); see kc_hsm_kek_load(). */
typedef struct kc_hsm_key kc_hsm_key;

/* Attributes of a key pair as the token reports them (kc_hsm_key_info()), so
 * `mica keycenter init` and the tests can check the least-privilege flags. */
struct kc_hsm_key_info {
	unsigned bits; /* RSA modulus bits, or 256 for EC P-256 */
	bool is_rsa;   /* false: EC */
	struct {
		bool token, is_private, modifiable;
		bool sensitive, always_sensitive, extractable, never_extractable, local;
		bool decrypt, sign, sign_recover, unwrap, derive;
	} priv;
	struct {
		bool token, modifiable;
		bool encrypt, verify, verify_recover, wrap, derive;
	} pub;
};

/* Load the PKCS#11 module |module_path| (dlopen), initialise it for
 * multi-threaded use (CKF_OS_LOCKING_OK), find the token whose label is
 * |token_label| (1..32 bytes, compared without the token's space padding;
 * slot numbers are never used), open a read/write session and log in as the
 * user with the PIN read from |pin_file| (its content, trailing CR/LF
 * stripped; the PIN buffer is wiped afterwards).
 * On success *out is a handle the caller releases with kc_hsm_close().
 * Returns 0, MICA_EINVAL (NULL argument), MICA_ECONFIG (|pin_file|
 * unreadable, empty or over 255 bytes; |token_label| empty or over 32 bytes),
 * MICA_EHSM (module cannot be loaded or initialised, no token or two tokens
 * with that label, session cannot be opened; the log says which), MICA_EPIN
 * (the token refused the PIN: incorrect, wrong length or locked),
 * MICA_ESTATE (the module is already initialised in this process) or
 * MICA_ENOMEM. On failure *out is NULL. */
int kc_hsm_open(kc_hsm **out, const char *module_path, const char *token_label,
		const char *pin_file) MICA_WUR;

/* As kc_hsm_open(), with the PIN given in memory (|pin_len| 1..255 bytes;
 * borrowed, not kept) instead of a file: the Key Center unsealed from
 * officers' shares uses this. Same return codes, MICA_ECONFIG for a PIN
 * length out of range. */
int kc_hsm_open_pin(kc_hsm **out, const char *module_path, const char *token_label, const char *pin,
		    size_t pin_len) MICA_WUR;

/* Change the token's user PIN from |old_user| to |new_user| and, when
 * |old_so| is not NULL, its security officer PIN from |old_so| to |new_so|
 * (the user logs out, the SO logs in and out, the user logs back in with the
 * new PIN, so |h| stays usable). Used by `mica keycenter init --shares` so
 * that nothing on disk opens the token afterwards. Must not race with other
 * calls on |h|. *user_changed (may be NULL) says whether the user PIN was
 * changed, also on failure: if the SO PIN could not be changed afterwards,
 * the error is returned and the user PIN stays changed. Returns 0,
 * MICA_EINVAL, MICA_EPIN (the token refused an old PIN or a new one's
 * length) or MICA_EHSM. */
int kc_hsm_change_pins(kc_hsm *h, const char *old_user, size_t old_user_len, const char *new_user,
		       size_t new_user_len, const char *old_so, size_t old_so_len,
		       const char *new_so, size_t new_so_len, bool *user_changed) MICA_WUR;

/* Prove on the token that the root key refuses what issue 18 found: it
 * wraps a fresh key with the root public key and asks the token to unwrap it
 * with the root private key once as readable (CKA_SENSITIVE false,
 * CKA_EXTRACTABLE true) and once with those attributes left out. Returns 0
 * if the token refuses both, MICA_ESTATE if it allows either (a root key
 * made before unwrap templates; the log names `mica keycenter migrate-root`),
 * MICA_ENOTFOUND (no root key), MICA_EHSM or MICA_ENOMEM. mica-keycenter
 * refuses to serve unless this returns 0. */
int kc_hsm_root_check(kc_hsm *h) MICA_WUR;

/* Stores the |n| re-wrapped KEK blobs (same order as given to
 * kc_hsm_root_migrate(), KC_HSM_KEK_BLOB_LEN bytes each, borrowed) in one
 * transaction. Returns 0 or an error, which aborts the migration. */
typedef int (*kc_hsm_commit_fn)(const uint8_t *const *blobs, size_t n, void *arg);

/* Move the |n| stored KEK blobs (|blobs|, each KC_HSM_KEK_BLOB_LEN bytes)
 * from a root key made before unwrap templates to a new root key that has
 * one: each KEK is unwrapped by the old root into a sensitive session object,
 * a new root pair (same label) is generated, each KEK is wrapped by it,
 * |commit| stores the new blobs, and only then is the old pair destroyed.
 * A run interrupted after generating the new pair leaves two root pairs
 * (mica-keycenter refuses the token: ambiguous label); running this again
 * finishes the job: if blobs[0] unwraps under the new pair the commit
 * happened and the old pair goes, otherwise the new pair goes and the
 * migration starts over. Returns 0, MICA_EEXISTS (the root key already has
 * an enforced template: nothing to do), MICA_ENOTFOUND (no root key),
 * MICA_EAUTH (a blob does not unwrap under the old root; nothing changed),
 * MICA_EINVAL, MICA_EHSM, MICA_ENOMEM or |commit|'s error (the new pair is
 * destroyed again and nothing changed). */
int kc_hsm_root_migrate(kc_hsm *h, const uint8_t *const *blobs, size_t n, kc_hsm_commit_fn commit,
			void *arg) MICA_WUR;

/* Log out, close every session (session objects, i.e. loaded KEKs, die with
 * them), finalise and unload the module, free |h|. Free the kc_hsm_key
 * handles first. Safe with NULL. */
void kc_hsm_close(kc_hsm *h);

/* Generate inside the token, as token objects, the root key pair (RSA-4096,
 * label KC_HSM_ROOT_LABEL; private: sensitive, never extractable, not
 * copyable, unwrap only, with the KEK unwrap template; public: wrap only) and the audit signing key
 * pair (EC P-256, label KC_HSM_AUDIT_LABEL; private: sensitive, never extractable, sign only;
 * public: verify only). Each pair gets a random 16-byte CKA_ID and is not
 * modifiable. If an object with either label exists, fails with
 * MICA_EEXISTS unless |force|, in which case every object with those labels
 * is destroyed first. If the second pair cannot be generated the first is
 * destroyed again, so the token is never half initialised by this call.
 * Returns 0, MICA_EINVAL, MICA_EEXISTS, MICA_EHSM or MICA_ENOMEM. */
int kc_hsm_init_keys(kc_hsm *h, int force) MICA_WUR;

/* The public key of the pair labelled |label| (KC_HSM_ROOT_LABEL or
 * KC_HSM_AUDIT_LABEL; RSA or EC P-256) as a PEM SubjectPublicKeyInfo
 * ("-----BEGIN PUBLIC KEY-----"), built with OpenSSL from the token's public
 * attributes. *pem is a malloc'd NUL-terminated string the caller frees.
 * Returns 0, MICA_EINVAL (NULL argument, or a key type other than RSA or EC
 * P-256), MICA_ENOTFOUND (no such public key: token not initialised),
 * MICA_EHSM, MICA_ECRYPTO or MICA_ENOMEM. On failure *pem is NULL. */
int kc_hsm_public_pem(kc_hsm *h, const char *label, char **pem) MICA_WUR;

/* Read back the attributes of the key pair labelled |label| into |info|.
 * Returns 0, MICA_EINVAL, MICA_ENOTFOUND (either half missing) or MICA_EHSM. */
int kc_hsm_key_info(kc_hsm *h, const char *label, struct kc_hsm_key_info *info) MICA_WUR;

/* Generate a fresh AES-256 KEK inside the token (a sensitive session
 * object, extractable only because C_WrapKey requires it), wrap it with the
 * root public key (RSA-OAEP, SHA-1/MGF1-SHA-1: the only OAEP hash SoftHSM
 * 2.6.1 implements), destroy the session object, and return the wrapped blob
 * (KC_HSM_KEK_BLOB_LEN bytes). *wrapped is malloc'd; the caller frees it (it
 * is not secret without the root private key).
 * Returns 0, MICA_EINVAL, MICA_ENOTFOUND (no root key), MICA_EHSM or
 * MICA_ENOMEM. On failure *wrapped is NULL and *wrapped_len 0. */
int kc_hsm_kek_create(kc_hsm *h, uint8_t **wrapped, size_t *wrapped_len) MICA_WUR;

/* Unwrap the KEK blob |wrapped| (|len| bytes, from kc_hsm_kek_create()) with
 * the root private key into the token as a session object that is sensitive,
 * non-extractable and usable only to encrypt and decrypt. It lives until
 * kc_hsm_key_free() or kc_hsm_close(). *kek is released with
 * kc_hsm_key_free().
 * Returns 0, MICA_EINVAL, MICA_ETRUNCATED (blob shorter than
 * KC_HSM_KEK_BLOB_LEN), MICA_ETOOBIG (longer), MICA_EAUTH (the blob does not
 * decrypt under the root key, or, where the module reports key lengths, holds
 * something other than a 32-byte key; SoftHSM 2.6.1 does not report them),
 * MICA_ENOTFOUND (no root key), MICA_EHSM or MICA_ENOMEM. On failure *kek is
 * NULL. */
int kc_hsm_kek_load(kc_hsm *h, const uint8_t *wrapped, size_t len, kc_hsm_key **kek) MICA_WUR;

/* Destroy the session object behind |kek| and free it. |h| must be the
 * handle that loaded it and still be open. Safe with NULL |kek|. */
void kc_hsm_key_free(kc_hsm *h, kc_hsm_key *kek);

/* AES-256-GCM inside the token: encrypt |pt| (|pt_len| bytes, may be 0; NULL
 * allowed then) under |kek| with associated data |aad| (|aad_len| bytes; NULL
 * allowed when 0) and a fresh random 96-bit nonce. *out is a malloc'd
 * nonce(12) || ciphertext || tag(16) of *out_len = pt_len +
 * KC_HSM_SEAL_OVERHEAD bytes; the caller frees it.
 * Returns 0, MICA_EINVAL, MICA_ETOOBIG, MICA_ECRYPTO (no random nonce),
 * MICA_EHSM or MICA_ENOMEM. On failure *out is NULL and *out_len 0. */
int kc_hsm_seal(kc_hsm *h, const kc_hsm_key *kek, const void *aad, size_t aad_len, const void *pt,
		size_t pt_len, uint8_t **out, size_t *out_len) MICA_WUR;

/* Authenticate and decrypt |in| (|in_len| bytes, from kc_hsm_seal()) under
 * |kek| with associated data |aad|. *pt is malloc'd (never NULL on success,
 * even when empty) with *pt_len bytes; the caller mica_wipe()s and frees it.
 * Returns 0, MICA_EINVAL, MICA_ETRUNCATED (shorter than
 * KC_HSM_SEAL_OVERHEAD), MICA_EAUTH (wrong KEK, wrong associated data or
 * tampered bytes; nothing is released), MICA_EHSM or MICA_ENOMEM. On failure
 * *pt is NULL and *pt_len 0. */
int kc_hsm_open_sealed(kc_hsm *h, const kc_hsm_key *kek, const void *aad, size_t aad_len,
		       const uint8_t *in, size_t in_len, uint8_t **pt, size_t *pt_len) MICA_WUR;

/* ECDSA P-256 signature by the audit signing key over the SHA-256 |digest|,
 * DER-encoded (ECDSA-Sig-Value), so `openssl dgst -sha256 -verify` and
 * EVP_DigestVerify check it with kc_hsm_public_pem(KC_HSM_AUDIT_LABEL).
 * *sig is malloc'd (*sig_len bytes, at most 72); the caller frees it.
 * Returns 0, MICA_EINVAL, MICA_ENOTFOUND (no audit key), MICA_EHSM,
 * MICA_ECRYPTO or MICA_ENOMEM. On failure *sig is NULL and *sig_len 0. */
int kc_hsm_sign(kc_hsm *h, const uint8_t digest[KC_HSM_DIGEST_LEN], uint8_t **sig,
		size_t *sig_len) MICA_WUR;

#endif
