/* err.h - the one error enum of libmica.
 *
 * Every fallible libmica function returns 0 on success or a negative MICA_E*
 * value naming the failure kind. mica_strerror() gives a stable snake_case
 * code (used in JSON errors and logs) and mica_errmsg() a human sentence; both
 * come from the single X-macro table below, so they never drift apart.
 */
#ifndef MICA_ERR_H
#define MICA_ERR_H
/* The table is laid out by hand, one error per line (clang-format would re-flow it). */
/* clang-format off */

#define MICA_ERRNO_MAP(X)                                                      \
	X(NOMEM, "out_of_memory", "out of memory")                             \
	X(INVAL, "invalid_argument", "invalid argument")                       \
	X(IO, "io_error", "input/output error")                                \
	X(NOTFOUND, "not_found", "not found")                                  \
	X(EXISTS, "already_exists", "already exists")                          \
	X(TOOBIG, "too_large", "input too large")                              \
	X(TRUNCATED, "truncated", "input truncated")                           \
	X(BADENCODING, "bad_encoding", "bad base64 or hex encoding")           \
	X(BADVERSION, "unsupported_version", "unsupported format version")     \
	X(BADHEADER, "bad_header", "malformed header")                         \
	X(AUTH, "authentication_failed", "authentication tag mismatch")        \
	X(CRYPTO, "crypto_error", "cryptographic library failure")             \
	X(CONFIG, "config_error", "configuration error")                       \
	X(DB, "database_error", "database error")                              \
	X(DBCONN, "database_unavailable", "database unavailable")              \
	X(SERIALIZATION, "serialization_failure", "transaction conflict")      \
	X(KV, "kv_error", "key-value store error")                             \
	X(KVCONN, "kv_unavailable", "key-value store unavailable")             \
	X(REPLAY, "replay", "nonce already used")                              \
	X(LIMITED, "rate_limited", "rate limit exceeded")                      \
	X(TIMEOUT, "timeout", "operation timed out")                           \
	X(HTTP, "http_error", "HTTP transport error")                          \
	X(TLS, "tls_error", "TLS error")                                       \
	X(CHECKSUM, "checksum_mismatch", "checksum mismatch")                  \
	X(STATE, "bad_state", "operation not valid in this state")              \
	X(HSM, "hsm_unavailable", "HSM unavailable or failed")                 \
	X(PIN, "hsm_login_failed", "HSM login failed")                         \
	X(DENIED, "access_denied", "access denied")                            \
	X(AUDIT, "audit_unavailable", "audit record could not be written")             \
	X(PERM, "permission_denied", "permission denied")                      \
	X(WOULDBLOCK, "would_block", "the operation would block this thread")  \
	X(RANGE, "out_of_range", "value out of range")                         \
	X(SEALED, "sealed", "sealed until officers submit their unseal shares")

/* clang-format on */
typedef enum mica_err {
	MICA_OK = 0,
	MICA__ERR_BASE = -1000,
#define MICA__ERR_ENUM(name, code, msg) MICA_E##name,
	MICA_ERRNO_MAP(MICA__ERR_ENUM)
#undef MICA__ERR_ENUM
	MICA__ERR_END
} mica_err;

/* Stable snake_case code for |err| ("ok" for 0, "unknown_error" otherwise). */
const char *mica_strerror(int err);
/* Human-readable sentence for |err|. */
const char *mica_errmsg(int err);

#define MICA_WUR __attribute__((warn_unused_result))

#endif
