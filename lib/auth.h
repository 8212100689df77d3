/* auth.h - bearer session-token validation for every mica service.
 *
 * The session contract, shared with the account service (which writes it):
 *
 * - A session token is 32 random bytes encoded as base64url without padding:
 *   exactly MICA_AUTH_TOKEN_LEN (43) characters of [A-Za-z0-9_-], the last
 *   one with its two unused low bits zero (one spelling per token). Clients
 *   send it as "Authorization: Bearer <token>".
 * - Only SHA-256 of the token is stored, where "the token" means its 43 ASCII
 *   characters as sent (not the decoded bytes); mica_auth_token_hash() is the
 *   one definition. PostgreSQL (account.session) is the truth; Redis caches
 *   it under "session:<64 lower-case hex digits of the hash>" with a TTL
 *   (no longer than the idle timeout for web sessions), holding the JSON
 *   object mica_auth_cache_value() builds:
 *     {"user_id": 42, "session_id": "<1-64 hex>", "device_id": "<1-128
 *      printable ASCII>", "kind": "app"|"web", "auth_at": <unix seconds of
 *      the last authentication>, "expires_at": <unix seconds>}
 *   (readers also accept "session_id" as a positive JSON integer, taken as
 *   its decimal digits), or a revocation tombstone {"revoked": true}, which
 *   the account service may write in place of deleting the key so that a
 *   cache fill racing the revocation (SET NX) cannot bring the session back.
 *   Only the account service's Redis user may write session:*; every other
 *   service's user may only read it (deploy/lib.sh).
 * - Revocation marks the PostgreSQL row and replaces the Redis key by a
 *   tombstone in one transaction, the tombstone before COMMIT; if Redis does
 *   not take it, nothing is revoked and the account service answers 503. So
 *   an acknowledged revocation is in Redis, and the next validation anywhere
 *   is refused: a tombstone denies at once, a miss asks the account service.
 *   (A freeze alone commits without its tombstones when Redis is down; the
 *   account service writes them when Redis answers again.)
 * - Redis may come back from an append-only file or snapshot older than its
 *   last tombstones, with live entries of revoked sessions. The account
 *   service checks every session:* entry against PostgreSQL and tombstones
 *   the revoked ones whenever it (re)connects to Redis; until then it reads
 *   no session from Redis itself, but a reader here may still accept such an
 *   entry (normally for under a second after Redis's return).
 *
 * Validation (mica_auth_validate) reads the cache through mica_kv_thread()
 * (the service configures lib/kv), or first its in-process copy when
 * mica_auth_options.cache is set, and, on a miss, an unreadable entry or any
 * Redis failure, asks the account service's introspection endpoint, shaped
 * after RFC 7662 but speaking JSON both ways:
 *   POST <introspect_url>  Content-Type: application/json
 *   {"token": "<token>"}
 *   -> 200 {"active": true, "sub": "<decimal user id>", "sid": "<hex>",
 *           "device_id": "...", "kind": "app"|"web", "auth_time": N, "exp": N}
 *   -> 200 {"active": false}
 * JSON rather than RFC 7662's form encoding because every mica endpoint
 * takes JSON bodies (lib/http's MICA_ROUTE_JSON) and the token alphabet needs
 * no escaping either way. The call uses mutual TLS with the calling
 * service's certificate; the account service allows only service principals.
 * lib/auth never writes the cache (its Redis user cannot): the account
 * service refills it when it answers an introspection.
 *
 * Fail closed: a token is accepted only when the cache or the account service
 * said it is active and unexpired. Negative answers are not cached, so a
 * revoked-then-reused token is always rechecked.
 */
#ifndef MICA_AUTH_H
#define MICA_AUTH_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "err.h"

/* Characters of a token (32 bytes as unpadded base64url). */
#define MICA_AUTH_TOKEN_LEN 43
/* Bytes of randomness in a token. */
#define MICA_AUTH_TOKEN_BYTES 32
/* Hex digits of a token hash (SHA-256). */
#define MICA_AUTH_HASH_HEX_LEN 64
/* Redis key prefix of cached sessions. */
#define MICA_AUTH_CACHE_PREFIX "session:"
/* Length of a cache key: prefix plus the hex hash. */
#define MICA_AUTH_CACHE_KEY_LEN (sizeof(MICA_AUTH_CACHE_PREFIX) - 1 + MICA_AUTH_HASH_HEX_LEN)
/* Longest session id (lower-case hex digits) and device id (printable ASCII
 * 0x21..0x7e) a session may carry. */
#define MICA_AUTH_SESSION_ID_MAX 64
#define MICA_AUTH_DEVICE_ID_MAX 128

typedef enum mica_auth_kind {
	MICA_AUTH_KIND_APP = 1, /* "app": long-lived, bound to an installed app */
	MICA_AUTH_KIND_WEB = 2, /* "web": idles out */
} mica_auth_kind;

/* Where a validation's answer came from. */
typedef enum mica_auth_source {
	MICA_AUTH_FROM_CACHE = 1,
	MICA_AUTH_FROM_INTROSPECTION = 2,
} mica_auth_source;

/* A validated session. Plain data; no cleanup needed. */
typedef struct mica_auth_session {
	int64_t user_id;			       /* > 0 */
	char session_id[MICA_AUTH_SESSION_ID_MAX + 1]; /* lower-case hex, NUL-terminated */
	char device_id[MICA_AUTH_DEVICE_ID_MAX + 1];   /* printable ASCII, NUL-terminated */
	mica_auth_kind kind;
	int64_t auth_at;    /* unix seconds of the last (step-up) authentication */
	int64_t expires_at; /* unix seconds; the session is invalid from then on */
	mica_auth_source source;
} mica_auth_session;

typedef struct mica_auth_options {
	const char *introspect_url; /* "https://host:port/v1/introspect" (required) */
	const char *ca_file;	    /* PEM CA the account service chains to (required) */
	const char *cert_file;	    /* PEM client certificate of the calling service (required) */
	const char *key_file;	    /* PEM key of cert_file (required) */
	long timeout_ms;	    /* whole introspection call; 0: 2000 */
	/* Optional in-process copy of session:* in front of Redis: a
	 * lib/kvcache started with prefix MICA_AUTH_CACHE_PREFIX by the service
	 * (borrowed; it must outlive the validator). Live sessions read from
	 * Redis are copied into it; Redis client tracking removes them when the
	 * account service revokes them, before its revocation is acknowledged.
	 * A copy is served only while Redis has answered the cache's heartbeat
	 * within its sync window (1 s by default), and everything held is
	 * dropped after a longer silence or a reconnection, so no copy outlives
	 * an outage it could not see (kvcache.h). NULL: every validation reads
	 * Redis, as before. */
	struct mica_kvcache *cache;
} mica_auth_options;

typedef struct mica_auth mica_auth;

/* Creates a validator; every string of |opt| is copied. *out is freed with
 * mica_auth_free(). Returns 0, MICA_EINVAL (a required option missing, a
 * URL that is not https://, or a negative timeout) or MICA_ENOMEM. */
MICA_WUR int mica_auth_new(mica_auth **out, const mica_auth_options *opt);

/* Frees |a| and its pooled HTTP handles; NULL is fine. No call on |a| may be
 * running. */
void mica_auth_free(mica_auth *a);

/* Validates the value of an Authorization header (|authorization_header|,
 * e.g. "Bearer 3q2-7w..."; the scheme name is matched case-insensitively as
 * RFC 7235 says, followed by exactly one space and the token, nothing else).
 * Safe to call from any number of threads at once on one |a|.
 *
 * On 0, *out describes the session (its |source| says who answered). On
 * failure *out is zeroed. Returns:
 *   0              the session is active and unexpired
 *   MICA_EINVAL    no header, not "Bearer <token>", or a token of the wrong
 *                  length or alphabet (no lookup was made)
 *   MICA_EDENIED   the session is unknown, revoked or expired (cache entry
 *                  past expires_at or a tombstone, or the account service
 *                  said inactive or expired)
 *   MICA_EPERM     the account service refused us (401/403): this service
 *                  is not allowed to introspect
 *   MICA_EBADHEADER the account service answered 200 with a reply that is
 *                  not the documented shape
 *   MICA_EHTTP, MICA_ETIMEOUT, MICA_ETLS
 *                  the cache could not answer and the account service was
 *                  unreachable, failed (any other status) or untrusted
 *   MICA_EWOULDBLOCK on an event thread (lib/thread.h) when the in-process
 *                  cache cannot answer: neither Redis nor the account
 *                  service was asked
 *   MICA_ENOMEM
 * Never returns 0 for a token it could not check. Tokens and hashes are never
 * logged. */
MICA_WUR int mica_auth_validate(mica_auth *a, const char *authorization_header,
				mica_auth_session *out);

/* true when the session's last authentication is at most |window_s| seconds
 * before |now| (a sensitive operation may proceed without a step-up). An
 * auth_at up to 5 seconds after |now| counts as recent (clock skew between
 * hosts); further in the future, or a negative window, is never recent. */
bool mica_auth_recent(const mica_auth_session *s, int window_s, time_t now);

/* ---- the contract's building blocks, for the account service and tests ---- */

/* Creates a new token: |token| gets MICA_AUTH_TOKEN_LEN characters and a NUL,
 * |hash_hex| (may be NULL) its mica_auth_token_hash(). Returns 0 or
 * MICA_ECRYPTO (the CSPRNG failed; both outputs are wiped). */
MICA_WUR int mica_auth_token_new(char token[MICA_AUTH_TOKEN_LEN + 1],
				 char hash_hex[MICA_AUTH_HASH_HEX_LEN + 1]);

/* Checks that |token| is a well-formed token (exactly MICA_AUTH_TOKEN_LEN
 * characters, strict base64url) and writes the lower-case hex SHA-256 of its
 * characters, NUL-terminated, to |hash_hex|. Returns 0, MICA_EINVAL
 * (malformed; |hash_hex| is set to "") or MICA_ECRYPTO. */
MICA_WUR int mica_auth_token_hash(const char *token, char hash_hex[MICA_AUTH_HASH_HEX_LEN + 1]);

/* Writes "session:<hash_hex>" to |key|. Returns 0 or MICA_EINVAL (|hash_hex|
 * is not 64 lower-case hex digits). */
MICA_WUR int mica_auth_cache_key(const char *hash_hex, char key[MICA_AUTH_CACHE_KEY_LEN + 1]);

/* Builds the cache value for |s| (its |source| is ignored). *json is a
 * malloc'd NUL-terminated string the caller frees. Returns 0, MICA_EINVAL
 * (a field outside the contract: user_id < 1, bad session or device id,
 * unknown kind) or MICA_ENOMEM. */
MICA_WUR int mica_auth_cache_value(const mica_auth_session *s, char **json);

/* "app" or "web" for |kind|, NULL for anything else. */
const char *mica_auth_kind_name(mica_auth_kind kind);

#endif
