/* err.h - the one error enum of libmica.
 *
 * Every fallible libmica function returns 0 on success or a negative MICA_E*
 * value naming the failure kind. mica_strerror() gives a stable snake_case
 * code (used in JSON errors and logs), mica_errmsg() a human sentence and
 * mica_http_status() the HTTP status a server answers when a request ends
 * with that error; all three come from the single X-macro table below, so
 * they never drift apart and every service maps an error to the same status.
 *
 * Columns: X(NAME, HTTP status, code, message). The status column says whose
 * fault it is and whether to retry: 4xx the request's (400 malformed, 403
 * refused, 404 absent, 409 conflicts with the state, 413 too large, 429 over
 * a rate limit: retry later), 503 a dependency that is down or refusing for
 * now (database, Redis, HSM, audit trail, an HTTPS upstream, a timeout,
 * sealed: retry), 500 a failure the client cannot fix (out of memory, a
 * library or server-side integrity failure, a bug). lib/problem.h turns an
 * error into the JSON reply with this status.
 */
#ifndef MICA_ERR_H
#define MICA_ERR_H
/* The table is laid out by hand, one error per line (clang-format would re-flow it). */
/* clang-format off */

#define MICA_ERRNO_MAP(X)                                                                          \
	X(NOMEM, 500, "out_of_memory", "out of memory")                                            \
	X(INVAL, 400, "invalid_argument", "invalid argument")                                      \
	X(IO, 500, "io_error", "input/output error")                                               \
	X(NOTFOUND, 404, "not_found", "not found")                                                 \
	X(EXISTS, 409, "already_exists", "already exists")                                         \
	X(TOOBIG, 413, "too_large", "input too large")                                             \
	X(TRUNCATED, 400, "truncated", "input truncated")                                          \
	X(BADENCODING, 400, "bad_encoding", "bad base64 or hex encoding")                          \
	X(BADVERSION, 400, "unsupported_version", "unsupported format version")                    \
	X(BADHEADER, 400, "bad_header", "malformed header")                                        \
	X(AUTH, 400, "authentication_failed", "authentication tag mismatch")                       \
	X(CRYPTO, 500, "crypto_error", "cryptographic library failure")                            \
	X(CONFIG, 500, "config_error", "configuration error")                                      \
	X(DB, 500, "database_error", "database error")                                             \
	X(DBCONN, 503, "database_unavailable", "database unavailable")                             \
	X(SERIALIZATION, 503, "serialization_failure", "transaction conflict")                     \
	X(KV, 500, "kv_error", "key-value store error")                                            \
	X(KVCONN, 503, "kv_unavailable", "key-value store unavailable")                            \
	X(REPLAY, 409, "replay", "nonce already used")                                             \
	X(LIMITED, 429, "rate_limited", "rate limit exceeded")                                     \
	X(TIMEOUT, 503, "timeout", "operation timed out")                                          \
	X(HTTP, 503, "http_error", "HTTP transport error")                                         \
	X(TLS, 503, "tls_error", "TLS error")                                                      \
	X(CHECKSUM, 500, "checksum_mismatch", "checksum mismatch")                                 \
	X(STATE, 409, "bad_state", "operation not valid in this state")                            \
	X(HSM, 503, "hsm_unavailable", "HSM unavailable or failed")                                \
	X(PIN, 503, "hsm_login_failed", "HSM login failed")                                        \
	X(DENIED, 403, "access_denied", "access denied")                                           \
	X(AUDIT, 503, "audit_unavailable", "audit record could not be written")                    \
	X(PERM, 500, "permission_denied", "permission denied")                                     \
	X(WOULDBLOCK, 500, "would_block", "the operation would block this thread")                 \
	X(RANGE, 400, "out_of_range", "value out of range")                                        \
	X(SEALED, 503, "sealed", "sealed until officers submit their unseal shares")

/* clang-format on */
typedef enum mica_err {
	MICA_OK = 0,
	MICA__ERR_BASE = -1000,
#define MICA__ERR_ENUM(name, status, code, msg) MICA_E##name,
	MICA_ERRNO_MAP(MICA__ERR_ENUM)
#undef MICA__ERR_ENUM
		MICA__ERR_END
} mica_err;

/* Stable snake_case code for |err| ("ok" for 0, "unknown_error" otherwise). */
const char *mica_strerror(int err);
/* Human-readable sentence for |err|. */
const char *mica_errmsg(int err);
/* The HTTP status for a request that ends with |err|: the table's column;
 * 200 for 0 and 500 for a value outside the enum. */
int mica_http_status(int err);

#define MICA_WUR __attribute__((warn_unused_result))

#endif
