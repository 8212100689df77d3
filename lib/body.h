/* body.h - the members of a JSON request body, as a route declares them.
 *
 * One rule for every mica route: a body carries only the members its route
 * declares. A member the route does not know is refused with 400
 * unknown_field naming it, never ignored, so that a misspelt option (a
 * security setting such as "keep_curent") fails loudly instead of silently
 * taking its default (docs/decisions.md, "One problem type, one status
 * table"). Declared members are checked for presence and type in the same
 * pass, naming the first member at fault, before the route does any I/O.
 *
 * A member whose value is null counts as absent. Nested objects (a login's
 * "device", a batch's items) are checked by calling mica_body_fields() on
 * them with their own spec.
 *
 * Threads: no shared state. Parses untrusted input: fuzzed
 * (tests/fuzz/fuzz_account_bodies.c, fuzz_kc_request.c).
 */
#ifndef MICA_BODY_H
#define MICA_BODY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "err.h"
#include "problem.h"

enum mica_body_type {
	MICA_BODY_STRING, /* a string of at most max_len bytes without NUL; not
			   * empty when required */
	MICA_BODY_BOOL,	  /* true or false */
	MICA_BODY_OBJECT, /* an object (its members are the route's to check) */
	MICA_BODY_ARRAY,  /* an array (its items are the route's to check) */
	MICA_BODY_ANY,	  /* any value: the route checks it, with its own codes */
};

/* One member a route accepts. */
typedef struct mica_body_field {
	const char *name;
	enum mica_body_type type;
	bool required;
	size_t max_len; /* MICA_BODY_STRING only */
} mica_body_field;

/* What mica_body_fields() found for one member. */
typedef union mica_body_value {
	const char *s; /* STRING: borrowed from the body; NULL when absent */
	int b;	       /* BOOL: 0 when absent */
	json_t *j;     /* OBJECT, ARRAY, ANY: borrowed; NULL when absent */
} mica_body_value;

/* Checks |body| against spec[0..n) and fills out[i] for spec[i]. |body| NULL
 * is an empty body (for routes whose body is optional); |out| may be NULL
 * when the caller reads the members itself (a whitelist only). Returns 0, or
 * MICA_EINVAL with |p| set to 400 and
 *   body_not_object  |body| is not an object
 *   unknown_field    a member that no spec entry names (the first one)
 *   missing_field    a required member absent, null or an empty string
 *   bad_field        mistyped, a string too long or holding a NUL
 * naming the member at fault. |body| and |spec| are borrowed. */
int mica_body_fields(json_t *body, const mica_body_field *spec, size_t n, mica_body_value *out,
		     mica_problem *p) MICA_WUR;

#define MICA_BODY_FIELDS(spec) (spec), (sizeof(spec) / sizeof((spec)[0]))

#endif
