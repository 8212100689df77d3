/* policy.h - the Key Center's separation-of-duties policy: a versioned JSON
 * document that gives each principal (mTLS client-certificate CN) exactly one
 * role, and the decision function every route asks before it acts.
 *
 * A policy is parsed and validated once, then never changes: it may be read
 * from any number of threads without locks. Its lifetime is a reference count
 * (kc_policy_ref / kc_policy_unref), so the daemon can swap the active policy
 * with a pointer exchange while requests still hold the old one.
 * docs/keycenter-policy.md describes the format for operators.
 */
#ifndef KC_POLICY_H
#define KC_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

/* Limits enforced by kc_policy_parse (violations give KC_POLICY_TOO_LARGE,
 * or KC_POLICY_BAD_PRINCIPAL_NAME / KC_POLICY_BAD_KEY_PATTERN for names). */
#define KC_POLICY_MAX_BYTES (1024 * 1024)
#define KC_POLICY_MAX_PRINCIPALS 4096
#define KC_POLICY_MAX_GRANTS 256  /* key patterns per service principal */
#define KC_POLICY_NAME_MAX 64	  /* principal names, ^[a-z0-9][a-z0-9_-]{0,63}$ */
#define KC_POLICY_KEY_NAME_MAX 64 /* key names, ^[a-z0-9][a-z0-9_.-]{0,63}$ */
#define KC_POLICY_MIN_OFFICERS 2  /* dual control needs two distinct officers */

enum kc_role {
	KC_ROLE_NONE = 0, /* not in the policy: every operation is denied */
	KC_ROLE_KEY_ADMIN,
	KC_ROLE_SERVICE,
	KC_ROLE_AUDITOR,
	KC_ROLE_SECURITY_OFFICER,
};

/* Every operation the Key Center authorises. The first ten act on one named
 * key; the rest are not about a key and ignore |key_name|. */
/* clang-format off */
#define KC_OP_MAP(X)                                                                               \
	X(KEY_CREATE, "key_create")                                                                \
	X(KEY_READ, "key_read")                                                                    \
	X(KEY_ROTATE, "key_rotate")                                                                \
	X(KEY_CONFIG, "key_config")                                                                \
	X(KEY_DELETE_REQUEST, "key_delete_request")                                                \
	X(ENCRYPT, "encrypt")                                                                      \
	X(DECRYPT, "decrypt")                                                                      \
	X(REWRAP, "rewrap")                                                                        \
	X(DATAKEY, "datakey")                                                                      \
	X(HMAC, "hmac")                                                                            \
	X(AUDIT_READ, "audit_read")                                                                \
	X(ALERT_READ, "alert_read")                                                                \
	X(APPROVE, "approve")                                                                      \
	X(POLICY_READ, "policy_read")                                                              \
	X(POLICY_REQUEST, "policy_request")

enum kc_op {
#define KC__OP_ENUM(name, str) KC_OP_##name,
	KC_OP_MAP(KC__OP_ENUM)
#undef KC__OP_ENUM
	KC_OP__COUNT
};
/* clang-format on */

/* Why a document was rejected, finer than the returned error code so that
 * tests and API errors can tell every rule apart. kc_policy_fault_name()
 * gives the stable snake_case name. */
/* clang-format off */
#define KC_POLICY_FAULT_MAP(X)                                                                     \
	X(OK, "ok")                                                                                \
	X(BAD_ARGUMENT, "bad_argument")                 /* MICA_EINVAL */                          \
	X(TOO_LARGE, "too_large")                       /* MICA_ETOOBIG */                         \
	X(NO_MEMORY, "out_of_memory")                   /* MICA_ENOMEM */                          \
	X(BAD_JSON, "bad_json")                         /* MICA_ECONFIG from here on */            \
	X(NOT_OBJECT, "not_an_object")                                                             \
	X(DUPLICATE_PRINCIPAL, "duplicate_principal")                                              \
	X(DUPLICATE_FIELD, "duplicate_field")                                                      \
	X(BAD_VERSION, "bad_version")                   /* MICA_EBADVERSION */                     \
	X(UNKNOWN_FIELD, "unknown_field")                                                          \
	X(BAD_DESCRIPTION, "bad_description")                                                      \
	X(BAD_PRINCIPALS, "bad_principals")                                                        \
	X(BAD_PRINCIPAL_NAME, "bad_principal_name")                                                \
	X(BAD_PRINCIPAL, "bad_principal")                                                          \
	X(UNKNOWN_ROLE, "unknown_role")                                                            \
	X(ROLE_WITH_KEY_USE, "role_with_key_use")                                                  \
	X(SERVICE_WITHOUT_KEYS, "service_without_keys")                                            \
	X(BAD_KEY_PATTERN, "bad_key_pattern")                                                      \
	X(BAD_OPERATIONS, "bad_operations")                                                        \
	X(UNKNOWN_OPERATION, "unknown_operation")                                                  \
	X(TOO_FEW_OFFICERS, "too_few_officers")

enum kc_policy_fault {
#define KC__FAULT_ENUM(name, str) KC_POLICY_##name,
	KC_POLICY_FAULT_MAP(KC__FAULT_ENUM)
#undef KC__FAULT_ENUM
	KC_POLICY__FAULT_COUNT
};
/* clang-format on */

typedef struct kc_policy kc_policy;

/* Parses and validates the policy document |json| (|len| bytes, need not be
 * NUL-terminated). On success returns 0 and sets *out to a new policy with
 * one reference, which the caller owns (kc_policy_unref). On failure returns
 * MICA_EINVAL (NULL json/out), MICA_ETOOBIG (over a limit above),
 * MICA_ENOMEM, MICA_EBADVERSION (version missing or not an integer >= 1) or
 * MICA_ECONFIG (every other rule), leaves *out NULL and, if |err| is not
 * NULL, writes a NUL-terminated sentence naming the principal or field
 * ("principal admin: key-admin cannot also be granted key use") into |err|
 * (capacity |errlen|, truncated to fit). Untrusted names are quoted with
 * non-printable bytes replaced, so the message is safe to log and return. */
int kc_policy_parse(const char *json, size_t len, kc_policy **out, char *err,
		    size_t errlen) MICA_WUR;

/* kc_policy_parse, also reporting which rule failed in *fault (may be NULL;
 * KC_POLICY_OK on success). */
int kc_policy_parse_fault(const char *json, size_t len, kc_policy **out, char *err, size_t errlen,
			  enum kc_policy_fault *fault) MICA_WUR;

/* Takes another reference to |p| (atomic; any thread) and returns |p|.
 * NULL is passed through. */
kc_policy *kc_policy_ref(kc_policy *p);
/* Drops one reference (atomic); the last one frees the policy. NULL is a
 * no-op. After the call the caller must not touch |p|. */
void kc_policy_unref(kc_policy *p);
/* Same as kc_policy_unref: for callers that never share the policy. */
void kc_policy_free(kc_policy *p);

/* The document's "version" (>= 1). */
int kc_policy_version(const kc_policy *p);
/* Number of principals in the policy. */
size_t kc_policy_principal_count(const kc_policy *p);
/* The role of |principal|, KC_ROLE_NONE if it is not in the policy (or
 * either argument is NULL). */
enum kc_role kc_policy_role(const kc_policy *p, const char *principal);

/* The decision function. Returns 0 if |principal| may perform |op| on
 * |key_name|, MICA_EDENIED otherwise (unknown principal, NULL policy, op out
 * of range, or a key the grant does not cover). |key_name| is only read for
 * a service's key operations; there it must be a valid key name
 * (kc_policy_key_name_valid) matched by one of the principal's patterns that
 * lists |op|. Key admins manage every key and never use one; see
 * docs/keycenter-policy.md for the full role x operation table. */
int kc_policy_allows(const kc_policy *p, const char *principal, enum kc_op op,
		     const char *key_name) MICA_WUR;

/* True if |name| is a valid key name: ^[a-z0-9][a-z0-9_.-]{0,63}$. */
bool kc_policy_key_name_valid(const char *name);
/* True if |name| is a valid principal name: ^[a-z0-9][a-z0-9_-]{0,63}$. */
bool kc_policy_principal_name_valid(const char *name);

/* Stable names: "key_create"... for ops, "key-admin", "service", "auditor",
 * "security-officer", "none" for roles, the map above for faults; "unknown"
 * for out-of-range values. Static strings. */
const char *kc_op_name(enum kc_op op);
const char *kc_role_name(enum kc_role role);
const char *kc_policy_fault_name(enum kc_policy_fault fault);

#endif
