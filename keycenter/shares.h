/* shares.h - the Key Center's unseal secret split into officers' shares
 * with Shamir's scheme over GF(2^8) (libgfshare), and the PINs derived from
 * it.
 *
 * `mica keycenter init --shares N --threshold K` draws a 32-byte secret,
 * sets the token's user and SO PINs to values derived from it
 * (kc_shares_pins()) and prints N shares, of which any K give the secret
 * back; fewer give nothing. The secret and the PINs are never written to
 * disk. A share is one line of text:
 *
 *   mks1-KKXX-SSSSSSSSSSSSSSSS-YYYY...(64 hex)...YYYY-CCCCCCCC
 *
 *   mks1       format and version
 *   KK, XX     threshold and share index (x coordinate, 1..255), hex
 *   S (16 hex) set id: the first 8 bytes of HMAC-SHA256(secret,
 *              "mica-keycenter-unseal-set-v1"); the same in every share of
 *              one ceremony, and checked against the combined secret
 *   Y (64 hex) the share's 32 bytes
 *   C (8 hex)  checksum: the first 4 bytes of SHA-256 of everything before
 *              the last '-', in lower case; a mistyped share fails it and
 *              is named instead of silently combining into a wrong secret
 *
 * Parsing ignores spaces, tabs and line ends, and hex case.
 * Thread safety: every function is reentrant.
 */
#ifndef KC_SHARES_H
#define KC_SHARES_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define KC_SHARE_SECRET_LEN 32
#define KC_SHARE_SET_ID_LEN 8
/* "mks1-" 4+1, "KKXX-" 4+1, set id 16+1, share 64+1, checksum 8. */
#define KC_SHARE_TEXT_LEN 100
#define KC_SHARES_MAX 16
/* user and SO PINs: 64 hex digits. */
#define KC_SHARE_PIN_LEN 64

struct kc_share {
	uint8_t threshold; /* K */
	uint8_t index;	   /* x coordinate, 1..255 */
	uint8_t set_id[KC_SHARE_SET_ID_LEN];
	uint8_t y[KC_SHARE_SECRET_LEN];
};

/* Split |secret| into |n| shares (2..KC_SHARES_MAX) with threshold |k|
 * (2..n), indices 1..n, written as NUL-terminated lines into |texts|.
 * Returns 0, MICA_EINVAL (bad n or k, NULL argument), MICA_ECRYPTO (no
 * randomness) or MICA_ENOMEM. The caller wipes |texts| after use. */
int kc_shares_split(const uint8_t secret[KC_SHARE_SECRET_LEN], unsigned n, unsigned k,
		    char (*texts)[KC_SHARE_TEXT_LEN + 1]) MICA_WUR;

/* Parse one share line |text| into |out|.
 * Returns 0, MICA_EINVAL (NULL argument), MICA_EBADVERSION (it does not
 * start with "mks1-"), MICA_EBADENCODING (not the format above: wrong
 * length, groups or digits, index 0, threshold below 2 or above the index
 * range) or MICA_ECHECKSUM (well formed, but the checksum does not match:
 * mistyped). |out| is wiped on failure. */
int kc_share_parse(const char *text, struct kc_share *out) MICA_WUR;

/* Combine |n| shares into |secret|. They must share threshold and set id,
 * have distinct indices, and number at least the threshold.
 * Returns 0, MICA_EINVAL (NULL, too few, mixed sets or thresholds, a
 * repeated index), MICA_EAUTH (the combined secret's set id differs from
 * the shares': a share's bytes are wrong although its checksum holds),
 * MICA_ECRYPTO or MICA_ENOMEM. |secret| is wiped on failure. */
int kc_shares_combine(const struct kc_share *shares, unsigned n,
		      uint8_t secret[KC_SHARE_SECRET_LEN]) MICA_WUR;

/* The set id of |secret| (see above). Returns 0 or MICA_ECRYPTO. */
int kc_shares_set_id(const uint8_t secret[KC_SHARE_SECRET_LEN],
		     uint8_t id[KC_SHARE_SET_ID_LEN]) MICA_WUR;

/* The token PINs opened by |secret|: HKDF-SHA256 (no salt) with info
 * "mica-keycenter-user-pin-v1" / "mica-keycenter-so-pin-v1", 32 bytes each,
 * as 64 lower-case hex digits and a NUL. The caller wipes them.
 * Returns 0 or MICA_ECRYPTO. */
int kc_shares_pins(const uint8_t secret[KC_SHARE_SECRET_LEN], char user_pin[KC_SHARE_PIN_LEN + 1],
		   char so_pin[KC_SHARE_PIN_LEN + 1]) MICA_WUR;

#endif
