/* altcha.h - proof-of-work challenges in ALTCHA's classic (v1) format, the
 * one the ALTCHA widget and altcha-lib's "altcha-lib/v1" speak, so any
 * off-the-shelf ALTCHA solver can answer the login's captcha_required.
 *
 * Challenge (JSON object the client gets):
 *   {"algorithm":"SHA-256", "challenge":C, "maxnumber":M, "salt":S, "signature":G}
 *   S = <32 random lower-case hex digits> "?expires=" <unix seconds>
 *       "&maxnumber=" M ["&scope=" <scope>] "&"
 *       (altcha-lib's layout: parameters after '?', and a trailing '&' so
 *       nobody can splice parameters onto the end of a signed salt; solvers
 *       treat the salt as opaque). The scope names what the challenge was
 *       issued for (the login uses a MAC of its failure counters' names),
 *       so a challenge fetched for one login cannot be spent on another.
 *   N = a secret uniform random integer in [0, M]
 *   C = lower-case hex SHA-256(S || decimal(N))
 *   G = lower-case hex HMAC-SHA256(hmac_key, C)
 * The client finds N by trying 0, 1, 2, ... so M is the cost: the expected
 * work is M/2 hashes. The service raises M with failures
 * (acct_altcha_maxnumber_for()).
 *
 * Payload (what the widget submits, the login request's "altcha" field):
 *   base64( {"algorithm", "challenge", "number", "salt", "signature", ...} )
 * standard base64 with padding (JavaScript's btoa), JSON with at least
 * those five members; others (the widget's "took", "test") are ignored.
 *
 * Verification checks, in this order, and reports the first failure:
 *   malformed             not base64, not a JSON object, a missing or
 *                         mistyped member, challenge or signature not 64
 *                         hex digits, number not an integer in
 *                         [0, ACCT_ALTCHA_MAXNUMBER_MAX], over-long input
 *   unsupported_algorithm algorithm is not "SHA-256" (e.g. "SHA-1")
 *   bad_signature         G is not the HMAC of C under our key (constant time)
 *   wrong_solution        SHA-256(S || number) is not C (constant time)
 *   expired               the salt's "expires" is in the past, or missing
 *                         or not a decimal: freshness cannot be shown
 * and, when the caller states what it wants (struct acct_altcha_want):
 *   wrong_scope           the salt's "scope" is missing, repeated or not the
 *                         one wanted: issued for another login
 *   too_cheap             the salt's "maxnumber" is missing, not a decimal
 *                         or below the cost now due
 * The salt is authenticated through C (a preimage of C under a signed C),
 * so its parameters are read only after the two hash checks.
 *
 * SINGLE USE IS THE CALLER'S JOB. A verified payload stays valid until it
 * expires; this module keeps no state. After acct_altcha_verify() returns 0
 * the caller must record the challenge with
 *     mica_kv_nonce(kv, "altcha:<challenge_out>", ttl)
 * where ttl covers the rest of the challenge's life (expires - now + 1
 * seconds, at least 1), and refuse the payload when that returns
 * MICA_EREPLAY (or any error: fail closed).
 */
#ifndef ACCT_ALTCHA_H
#define ACCT_ALTCHA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"

#define ACCT_ALTCHA_ALGORITHM "SHA-256"
#define ACCT_ALTCHA_HEX_LEN 64		      /* challenge and signature, hex digits */
#define ACCT_ALTCHA_SALT_BYTES 16	      /* random bytes in the salt (32 hex digits) */
#define ACCT_ALTCHA_MIN_KEY_LEN 16	      /* bytes of HMAC key; use 32 */
#define ACCT_ALTCHA_MAXNUMBER_MAX 100000000LL /* 1e8: about a minute in a browser */
#define ACCT_ALTCHA_PAYLOAD_MAX 4096	      /* base64 characters of a payload */
#define ACCT_ALTCHA_SALT_MAX 256	      /* bytes of a salt accepted in a payload */
#define ACCT_ALTCHA_SCOPE_MAX 64	      /* characters of a scope: [0-9a-z] */

enum acct_altcha_fault {
	ACCT_ALTCHA_OK = 0,
	ACCT_ALTCHA_MALFORMED,		   /* "malformed" */
	ACCT_ALTCHA_UNSUPPORTED_ALGORITHM, /* "unsupported_algorithm" */
	ACCT_ALTCHA_BAD_SIGNATURE,	   /* "bad_signature" */
	ACCT_ALTCHA_WRONG_SOLUTION,	   /* "wrong_solution" */
	ACCT_ALTCHA_EXPIRED,		   /* "expired" */
	ACCT_ALTCHA_WRONG_SCOPE,	   /* "wrong_scope" */
	ACCT_ALTCHA_TOO_CHEAP,		   /* "too_cheap" */
};

/* What a payload must show besides a solution (see the checks above). */
struct acct_altcha_want {
	const char *scope;  /* the scope it was issued with; NULL: any or none */
	long long min_cost; /* the least maxnumber accepted (the cost now due) */
};

/* The outcome of acct_altcha_verify(). |code| is a static string. */
struct acct_altcha_verdict {
	enum acct_altcha_fault fault;
	const char *code; /* stable snake_case, "ok" on success */
	int64_t expires;  /* on success: when the challenge expires (unix seconds) */
};

/* Stable snake_case code of |fault| ("ok", "malformed", ...). */
const char *acct_altcha_fault_code(enum acct_altcha_fault fault);

/* Create a challenge signed with |hmac_key| (|key_len| >= 16 bytes) of cost
 * |maxnumber| (1..ACCT_ALTCHA_MAXNUMBER_MAX) that expires |ttl_s| (>= 1)
 * seconds after |now| (unix seconds, >= 0), for |scope| (1 to
 * ACCT_ALTCHA_SCOPE_MAX characters of [0-9a-z], or NULL for none). On success
 * *challenge is a new JSON object {algorithm, challenge, maxnumber, salt,
 * signature} the caller owns (json_decref). The secret number is wiped
 * before returning. Returns 0, MICA_EINVAL (NULL argument or out-of-range
 * value), MICA_ENOMEM or MICA_ECRYPTO; on failure *challenge is NULL. */
int acct_altcha_create(const uint8_t *hmac_key, size_t key_len, long long maxnumber, int ttl_s,
		       int64_t now, const char *scope, json_t **challenge) MICA_WUR;

/* Verify the base64 payload |payload_b64| (NUL-terminated, untrusted) at
 * time |now| (unix seconds) against |hmac_key| (|key_len| >= 16 bytes) and,
 * unless |want| is NULL, against what the caller wants of it.
 * On success |challenge_out| (ACCT_ALTCHA_HEX_LEN + 1 bytes) gets the
 * challenge, for the single-use record described above, and v->expires its
 * expiry; on failure challenge_out is "". |v| always gets the fault and its
 * code.
 * Returns 0 (a valid solution: now mark it used), MICA_EAUTH (rejected;
 * v->fault says why), MICA_EINVAL (NULL argument or short key; v->code is
 * "malformed" when |v| is given), MICA_ENOMEM or MICA_ECRYPTO. */
int acct_altcha_verify(const uint8_t *hmac_key, size_t key_len, const char *payload_b64,
		       int64_t now, const struct acct_altcha_want *want,
		       char challenge_out[ACCT_ALTCHA_HEX_LEN + 1],
		       struct acct_altcha_verdict *v) MICA_WUR;

/* The cost to ask for after |failures| failures beyond the first challenge:
 * |base| doubled per failure, capped at |cap| (itself capped at
 * ACCT_ALTCHA_MAXNUMBER_MAX). base < 1 counts as 1. */
long long acct_altcha_maxnumber_for(long long base, unsigned failures, long long cap);

#endif
