/* policy.c - parsing, validation and decisions for the Key Center's
 * separation-of-duties policy (policy.h; the format is in
 * docs/keycenter-policy.md). Parsing turns the JSON document into a sorted,
 * immutable table of principals so that kc_policy_allows() is a binary search
 * and a bit test, safe from any thread without locks.
 */
#include "keycenter/policy.h"

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OP_BIT(op) (1u << (unsigned)(op))

/* What each fixed role may do; a service's rights come from its grants. */
#define KEY_ADMIN_OPS                                                                              \
	(OP_BIT(KC_OP_KEY_CREATE) | OP_BIT(KC_OP_KEY_READ) | OP_BIT(KC_OP_KEY_ROTATE) |            \
	 OP_BIT(KC_OP_KEY_CONFIG) | OP_BIT(KC_OP_KEY_DELETE_REQUEST))
#define AUDITOR_OPS (OP_BIT(KC_OP_AUDIT_READ) | OP_BIT(KC_OP_ALERT_READ))
#define OFFICER_OPS                                                                                \
	(OP_BIT(KC_OP_APPROVE) | OP_BIT(KC_OP_POLICY_REQUEST) | OP_BIT(KC_OP_POLICY_READ) |        \
	 OP_BIT(KC_OP_ALERT_READ))
/* The only operations a grant can list. */
#define SERVICE_OPS                                                                                \
	(OP_BIT(KC_OP_ENCRYPT) | OP_BIT(KC_OP_DECRYPT) | OP_BIT(KC_OP_REWRAP) |                    \
	 OP_BIT(KC_OP_DATAKEY) | OP_BIT(KC_OP_HMAC) | OP_BIT(KC_OP_KEY_READ))

struct grant {
	char pattern[KC_POLICY_KEY_NAME_MAX + 1]; /* without the trailing '*' */
	size_t len;
	bool prefix;  /* pattern ended in '*': match every name starting with it */
	unsigned ops; /* OP_BIT set */
};

struct principal {
	char name[KC_POLICY_NAME_MAX + 1];
	enum kc_role role;
	size_t ngrants;
	struct grant *grants;
};

struct kc_policy {
	atomic_uint refs;
	int version;
	size_t n;
	struct principal *principals; /* sorted by name for bsearch */
};

/* ---- names ------------------------------------------------------------ */

/* clang-format off */
static const char *const op_names[] = {
#define OP_NAME(name, str) str,
	KC_OP_MAP(OP_NAME)
#undef OP_NAME
};

static const char *const fault_names[] = {
#define FAULT_NAME(name, str) str,
	KC_POLICY_FAULT_MAP(FAULT_NAME)
#undef FAULT_NAME
};

static const struct {
	const char *name;
	enum kc_role role;
} roles[] = {
	{"key-admin", KC_ROLE_KEY_ADMIN},
	{"service", KC_ROLE_SERVICE},
	{"auditor", KC_ROLE_AUDITOR},
	{"security-officer", KC_ROLE_SECURITY_OFFICER},
};

/* Operation names as written in a grant. */
static const struct {
	const char *name;
	enum kc_op op;
} grant_ops[] = {
	{"encrypt", KC_OP_ENCRYPT}, {"decrypt", KC_OP_DECRYPT}, {"rewrap", KC_OP_REWRAP},
	{"datakey", KC_OP_DATAKEY}, {"hmac", KC_OP_HMAC},       {"read", KC_OP_KEY_READ},
};
/* clang-format on */

const char *kc_op_name(enum kc_op op)
{
	if ((unsigned)op >= KC_OP__COUNT)
		return "unknown";
	return op_names[op];
}

const char *kc_role_name(enum kc_role role)
{
	if (role == KC_ROLE_NONE)
		return "none";
	for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
		if (roles[i].role == role)
			return roles[i].name;
	return "unknown";
}

const char *kc_policy_fault_name(enum kc_policy_fault fault)
{
	if ((unsigned)fault >= KC_POLICY__FAULT_COUNT)
		return "unknown";
	return fault_names[fault];
}

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* |n| bytes of |s| form ^[a-z0-9][a-z0-9<extra>]{0,max-1}$. */
static bool name_ok(const char *s, size_t n, size_t max, const char *extra)
{
	if (n == 0 || n > max || !is_lower_alnum(s[0]))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!is_lower_alnum(s[i]) && (s[i] == '\0' || !strchr(extra, s[i])))
			return false;
	return true;
}

bool kc_policy_principal_name_valid(const char *name)
{
	return name &&
	       name_ok(name, strnlen(name, KC_POLICY_NAME_MAX + 1), KC_POLICY_NAME_MAX, "_-");
}

bool kc_policy_key_name_valid(const char *name)
{
	return name && name_ok(name, strnlen(name, KC_POLICY_KEY_NAME_MAX + 1),
			       KC_POLICY_KEY_NAME_MAX, "_.-");
}

/* ---- parse context and error reporting ------------------------------- */

struct parse {
	char *err;
	size_t errlen;
	enum kc_policy_fault fault;
};

static int fault_code(enum kc_policy_fault fault)
{
	switch (fault) {
	case KC_POLICY_OK:
		return 0;
	case KC_POLICY_BAD_ARGUMENT:
		return MICA_EINVAL;
	case KC_POLICY_TOO_LARGE:
		return MICA_ETOOBIG;
	case KC_POLICY_NO_MEMORY:
		return MICA_ENOMEM;
	case KC_POLICY_BAD_VERSION:
		return MICA_EBADVERSION;
	default:
		return MICA_ECONFIG;
	}
}

static int fail(struct parse *ps, enum kc_policy_fault fault, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Records the first failure and its sentence; returns its error code. */
static int fail(struct parse *ps, enum kc_policy_fault fault, const char *fmt, ...)
{
	if (ps->fault == KC_POLICY_OK) {
		ps->fault = fault;
		if (ps->err && ps->errlen > 0) {
			va_list ap;
			va_start(ap, fmt);
			vsnprintf(ps->err, ps->errlen, fmt, ap);
			va_end(ap);
		}
	}
	return fault_code(ps->fault);
}

/* Copies at most |max| of the |n| untrusted bytes at |s| into |out| (room
 * for max + 6 bytes), replacing non-printable and non-ASCII bytes with '?' and
 * marking a cut with "...", so that hostile text cannot forge log lines or
 * bloat an error. In |quoted| mode the copy is wrapped in double quotes and
 * quotes and backslashes inside it become '?' too. */
static const char *printable(char *out, const char *s, size_t n, size_t max, bool quoted)
{
	size_t o = 0, shown = n > max ? max : n;

	if (quoted)
		out[o++] = '"';
	for (size_t i = 0; i < shown; i++) {
		unsigned char c = (unsigned char)s[i];
		bool bad = c < 0x20 || c > 0x7e || (quoted && (c == '"' || c == '\\'));
		out[o++] = bad ? '?' : (char)c;
	}
	if (shown < n) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	if (quoted)
		out[o++] = '"';
	out[o] = '\0';
	return out;
}

#define QUOTED_MAX 64
/* A quoted, printable copy of an untrusted name for an error message. */
static const char *quote(char out[QUOTED_MAX + 6], const char *s, size_t n)
{
	return printable(out, s, n, QUOTED_MAX, true);
}

/* ---- duplicates ------------------------------------------------------ */

/* jansson stops at the second copy of a key with json_error_duplicate_key
 * and |pos| just past it. Scanning the (valid) prefix tells how deep the key
 * sits and where its text starts: depth 2 is the "principals" object, so a
 * duplicate there is a principal listed twice. */
static int report_duplicate(struct parse *ps, const char *json, size_t len, size_t pos,
			    const char *jtext)
{
	char q[QUOTED_MAX + 6];
	size_t depth = 0, str_start = 0, str_end = 0;
	bool in_str = false, have_str = false;

	if (pos > len)
		return fail(ps, KC_POLICY_DUPLICATE_FIELD, "policy is not valid: %s", jtext);
	for (size_t i = 0; i < pos; i++) {
		char c = json[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"') {
				in_str = false;
				str_end = i;
				have_str = true;
			}
		} else if (c == '"') {
			in_str = true;
			str_start = i + 1;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if ((c == '}' || c == ']') && depth > 0) {
			depth--;
		}
	}
	if (in_str || !have_str)
		return fail(ps, KC_POLICY_DUPLICATE_FIELD, "policy is not valid: %s", jtext);
	const char *key = json + str_start;
	size_t klen = str_end - str_start;
	if (depth == 2) {
		if (name_ok(key, klen, KC_POLICY_NAME_MAX, "_-"))
			return fail(ps, KC_POLICY_DUPLICATE_PRINCIPAL,
				    "principal %.*s: listed more than once (a principal has "
				    "exactly one role)",
				    (int)klen, key);
		return fail(ps, KC_POLICY_DUPLICATE_PRINCIPAL,
			    "principal %s: listed more than once (a principal has exactly one "
			    "role)",
			    quote(q, key, klen));
	}
	return fail(ps, KC_POLICY_DUPLICATE_FIELD, "field %s appears more than once",
		    quote(q, key, klen));
}

/* ---- document structure ---------------------------------------------- */

static int parse_ops(struct parse *ps, const char *who, const char *pat, json_t *list,
		     unsigned *ops)
{
	char q[QUOTED_MAX + 6];
	size_t i;
	json_t *v;

	if (!json_is_array(list) || json_array_size(list) == 0)
		return fail(ps, KC_POLICY_BAD_OPERATIONS,
			    "principal %s: key pattern \"%s\": operations must be a non-empty "
			    "array of strings",
			    who, pat);
	*ops = 0;
	json_array_foreach(list, i, v)
	{
		if (!json_is_string(v))
			return fail(ps, KC_POLICY_BAD_OPERATIONS,
				    "principal %s: key pattern \"%s\": operation %zu is not a "
				    "string",
				    who, pat, i);
		const char *s = json_string_value(v);
		size_t k, nops = sizeof(grant_ops) / sizeof(grant_ops[0]);
		for (k = 0; k < nops; k++)
			if (strcmp(s, grant_ops[k].name) == 0)
				break;
		if (k == nops)
			return fail(ps, KC_POLICY_UNKNOWN_OPERATION,
				    "principal %s: key pattern \"%s\": unknown operation %s (want "
				    "encrypt, decrypt, rewrap, datakey, hmac or read)",
				    who, pat, quote(q, s, json_string_length(v)));
		*ops |= OP_BIT(grant_ops[k].op);
	}
	return 0;
}

/* A pattern is an exact key name, or a non-empty key-name prefix followed
 * by one '*'. A lone "*" is refused: a service would get every key,
 * including other services' keys. */
static int parse_pattern(struct parse *ps, const char *who, const char *pat, struct grant *g)
{
	char q[QUOTED_MAX + 6];
	size_t n = strlen(pat);

	g->prefix = n > 0 && pat[n - 1] == '*';
	g->len = g->prefix ? n - 1 : n;
	if (g->prefix && g->len == 0)
		return fail(ps, KC_POLICY_BAD_KEY_PATTERN,
			    "principal %s: key pattern \"*\" would grant every key; name a prefix "
			    "such as \"%s-*\"",
			    who, who);
	if (!name_ok(pat, g->len, KC_POLICY_KEY_NAME_MAX, "_.-"))
		return fail(ps, KC_POLICY_BAD_KEY_PATTERN,
			    "principal %s: key pattern %s is invalid (want a key name "
			    "^[a-z0-9][a-z0-9_.-]{0,63}$, optionally ending in one '*')",
			    who, quote(q, pat, n));
	memcpy(g->pattern, pat, g->len);
	g->pattern[g->len] = '\0';
	return 0;
}

static int parse_grants(struct parse *ps, struct principal *pr, json_t *keys)
{
	const char *pat;
	json_t *ops;
	size_t i = 0;

	if (!json_is_object(keys))
		return fail(ps, KC_POLICY_BAD_PRINCIPAL,
			    "principal %s: field \"keys\" must be an object of key pattern -> "
			    "operations",
			    pr->name);
	if (json_object_size(keys) == 0)
		return fail(ps, KC_POLICY_SERVICE_WITHOUT_KEYS,
			    "principal %s: a service needs at least one key grant in \"keys\"",
			    pr->name);
	if (json_object_size(keys) > KC_POLICY_MAX_GRANTS)
		return fail(ps, KC_POLICY_TOO_LARGE, "principal %s: more than %d key patterns",
			    pr->name, KC_POLICY_MAX_GRANTS);
	pr->grants = calloc(json_object_size(keys), sizeof(*pr->grants));
	if (!pr->grants)
		return fail(ps, KC_POLICY_NO_MEMORY, "out of memory");
	json_object_foreach(keys, pat, ops)
	{
		struct grant *g = &pr->grants[i];
		int rc;
		if ((rc = parse_pattern(ps, pr->name, pat, g)) != 0)
			return rc;
		if ((rc = parse_ops(ps, pr->name, pat, ops, &g->ops)) != 0)
			return rc;
		pr->ngrants = ++i;
	}
	return 0;
}

static int parse_role(struct parse *ps, const char *who, json_t *entry, enum kc_role *role)
{
	char q[QUOTED_MAX + 6];
	json_t *r = json_object_get(entry, "role");

	if (!r)
		return fail(ps, KC_POLICY_BAD_PRINCIPAL, "principal %s: field \"role\" is missing",
			    who);
	if (!json_is_string(r))
		return fail(ps, KC_POLICY_BAD_PRINCIPAL,
			    "principal %s: field \"role\" must be a string", who);
	for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
		if (strcmp(json_string_value(r), roles[i].name) == 0) {
			*role = roles[i].role;
			return 0;
		}
	}
	return fail(ps, KC_POLICY_UNKNOWN_ROLE,
		    "principal %s: unknown role %s (want key-admin, service, auditor or "
		    "security-officer)",
		    who, quote(q, json_string_value(r), json_string_length(r)));
}

static int parse_principal(struct parse *ps, const char *name, json_t *entry, struct principal *pr)
{
	char q[QUOTED_MAX + 6];
	const char *field;
	json_t *v;
	int rc;

	if (!kc_policy_principal_name_valid(name))
		return fail(ps, KC_POLICY_BAD_PRINCIPAL_NAME,
			    "principal %s: invalid name (want ^[a-z0-9][a-z0-9_-]{0,63}$, the "
			    "client certificate's CN)",
			    quote(q, name, strlen(name)));
	memcpy(pr->name, name, strlen(name) + 1);
	if (!json_is_object(entry))
		return fail(ps, KC_POLICY_BAD_PRINCIPAL, "principal %s: must be an object", name);
	json_object_foreach(entry, field, v)
	{
		if (strcmp(field, "role") != 0 && strcmp(field, "keys") != 0 &&
		    strcmp(field, "description") != 0)
			return fail(ps, KC_POLICY_UNKNOWN_FIELD,
				    "principal %s: unknown field %s (want role, keys, description)",
				    name, quote(q, field, strlen(field)));
		if (strcmp(field, "description") == 0 && !json_is_string(v))
			return fail(ps, KC_POLICY_BAD_DESCRIPTION,
				    "principal %s: field \"description\" must be a string", name);
	}
	if ((rc = parse_role(ps, name, entry, &pr->role)) != 0)
		return rc;
	json_t *keys = json_object_get(entry, "keys");
	/* One role per principal is what keeps duties apart: any role but
	 * service holding a key grant would mix administration or oversight
	 * with use of the keys. */
	if (pr->role != KC_ROLE_SERVICE) {
		if (keys)
			return fail(ps, KC_POLICY_ROLE_WITH_KEY_USE,
				    "principal %s: %s cannot also be granted key use", name,
				    kc_role_name(pr->role));
		return 0;
	}
	if (!keys)
		return fail(ps, KC_POLICY_SERVICE_WITHOUT_KEYS,
			    "principal %s: a service needs at least one key grant in \"keys\"",
			    name);
	return parse_grants(ps, pr, keys);
}

static int parse_version(struct parse *ps, json_t *root, int *version)
{
	json_t *v = json_object_get(root, "version");

	if (!v)
		return fail(ps, KC_POLICY_BAD_VERSION, "field \"version\" is missing");
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > INT_MAX)
		return fail(ps, KC_POLICY_BAD_VERSION,
			    "field \"version\" must be an integer from 1 to %d", INT_MAX);
	*version = (int)json_integer_value(v);
	return 0;
}

static int cmp_principal(const void *a, const void *b)
{
	return strcmp(((const struct principal *)a)->name, ((const struct principal *)b)->name);
}

static void policy_destroy(kc_policy *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++)
		free(p->principals[i].grants);
	free(p->principals);
	free(p);
}

static int parse_document(struct parse *ps, json_t *root, kc_policy *p)
{
	char q[QUOTED_MAX + 6];
	const char *name;
	json_t *v, *principals;
	size_t officers = 0;
	int rc;

	if (!json_is_object(root))
		return fail(ps, KC_POLICY_NOT_OBJECT, "policy must be a JSON object");
	json_object_foreach(root, name, v)
	{
		if (strcmp(name, "version") != 0 && strcmp(name, "principals") != 0 &&
		    strcmp(name, "description") != 0)
			return fail(ps, KC_POLICY_UNKNOWN_FIELD,
				    "unknown field %s (want version, principals, description)",
				    quote(q, name, strlen(name)));
	}
	if ((rc = parse_version(ps, root, &p->version)) != 0)
		return rc;
	v = json_object_get(root, "description");
	if (v && !json_is_string(v))
		return fail(ps, KC_POLICY_BAD_DESCRIPTION,
			    "field \"description\" must be a string");
	principals = json_object_get(root, "principals");
	if (!json_is_object(principals))
		return fail(ps, KC_POLICY_BAD_PRINCIPALS,
			    "field \"principals\" must be an object of principal -> entry");
	if (json_object_size(principals) > KC_POLICY_MAX_PRINCIPALS)
		return fail(ps, KC_POLICY_TOO_LARGE, "more than %d principals",
			    KC_POLICY_MAX_PRINCIPALS);
	if (json_object_size(principals) > 0) {
		p->principals = calloc(json_object_size(principals), sizeof(*p->principals));
		if (!p->principals)
			return fail(ps, KC_POLICY_NO_MEMORY, "out of memory");
	}
	json_object_foreach(principals, name, v)
	{
		/* Count first so that a half-parsed entry is still freed. */
		struct principal *pr = &p->principals[p->n++];
		if ((rc = parse_principal(ps, name, v, pr)) != 0)
			return rc;
		if (pr->role == KC_ROLE_SECURITY_OFFICER)
			officers++;
	}
	if (officers < KC_POLICY_MIN_OFFICERS)
		return fail(ps, KC_POLICY_TOO_FEW_OFFICERS,
			    "policy needs at least %d security officers for dual control, found "
			    "%zu",
			    KC_POLICY_MIN_OFFICERS, officers);
	if (p->n > 1)
		qsort(p->principals, p->n, sizeof(*p->principals), cmp_principal);
	return 0;
}

int kc_policy_parse_fault(const char *json, size_t len, kc_policy **out, char *err, size_t errlen,
			  enum kc_policy_fault *fault)
{
	struct parse ps = {.err = err, .errlen = errlen, .fault = KC_POLICY_OK};
	json_error_t jerr;
	json_t *root = NULL;
	kc_policy *p = NULL;
	char jtext[sizeof(jerr.text) + 6];
	int rc;

	if (err && errlen > 0)
		err[0] = '\0';
	if (out)
		*out = NULL;
	if (!json || !out) {
		rc = fail(&ps, KC_POLICY_BAD_ARGUMENT, "no policy document given");
		goto out;
	}
	if (len > KC_POLICY_MAX_BYTES) {
		rc = fail(&ps, KC_POLICY_TOO_LARGE, "policy is larger than %d bytes",
			  KC_POLICY_MAX_BYTES);
		goto out;
	}
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		/* jansson's text can quote the input; keep it printable. */
		const char *t =
			printable(jtext, jerr.text, strlen(jerr.text), sizeof(jerr.text), false);
		if (json_error_code(&jerr) == json_error_duplicate_key)
			rc = report_duplicate(&ps, json, len, (size_t)jerr.position, t);
		else if (json_error_code(&jerr) == json_error_out_of_memory)
			rc = fail(&ps, KC_POLICY_NO_MEMORY, "out of memory");
		else
			rc = fail(&ps, KC_POLICY_BAD_JSON,
				  "policy is not valid JSON at line %d, column %d: %s", jerr.line,
				  jerr.column, t);
		goto out;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		rc = fail(&ps, KC_POLICY_NO_MEMORY, "out of memory");
		goto out;
	}
	atomic_init(&p->refs, 1);
	rc = parse_document(&ps, root, p);
	if (rc == 0) {
		*out = p;
		p = NULL;
	}
out:
	policy_destroy(p);
	json_decref(root);
	if (fault)
		*fault = ps.fault;
	return rc;
}

int kc_policy_parse(const char *json, size_t len, kc_policy **out, char *err, size_t errlen)
{
	return kc_policy_parse_fault(json, len, out, err, errlen, NULL);
}

/* ---- lifetime ---------------------------------------------------------- */

kc_policy *kc_policy_ref(kc_policy *p)
{
	if (p)
		atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
	return p;
}

void kc_policy_unref(kc_policy *p)
{
	if (!p)
		return;
	/* Release our writes before the count drops; whoever frees acquires
	 * them, the usual pattern for shared immutable objects. */
	if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_release) == 1) {
		atomic_thread_fence(memory_order_acquire);
		policy_destroy(p);
	}
}

void kc_policy_free(kc_policy *p)
{
	kc_policy_unref(p);
}

/* ---- queries ----------------------------------------------------------- */

int kc_policy_version(const kc_policy *p)
{
	return p ? p->version : 0;
}

size_t kc_policy_principal_count(const kc_policy *p)
{
	return p ? p->n : 0;
}

static const struct principal *find(const kc_policy *p, const char *name)
{
	struct principal key;
	size_t n;

	if (!p || !name || p->n == 0)
		return NULL;
	n = strnlen(name, KC_POLICY_NAME_MAX + 1);
	if (n > KC_POLICY_NAME_MAX)
		return NULL;
	memcpy(key.name, name, n + 1);
	return bsearch(&key, p->principals, p->n, sizeof(*p->principals), cmp_principal);
}

enum kc_role kc_policy_role(const kc_policy *p, const char *principal)
{
	const struct principal *pr = find(p, principal);
	return pr ? pr->role : KC_ROLE_NONE;
}

static bool grant_matches(const struct grant *g, const char *key_name)
{
	if (g->prefix)
		return strncmp(key_name, g->pattern, g->len) == 0;
	return strcmp(key_name, g->pattern) == 0;
}

int kc_policy_allows(const kc_policy *p, const char *principal, enum kc_op op, const char *key_name)
{
	const struct principal *pr;

	if ((unsigned)op >= KC_OP__COUNT || !(pr = find(p, principal)))
		return MICA_EDENIED;
	switch (pr->role) {
	case KC_ROLE_KEY_ADMIN:
		return (KEY_ADMIN_OPS & OP_BIT(op)) ? 0 : MICA_EDENIED;
	case KC_ROLE_AUDITOR:
		return (AUDITOR_OPS & OP_BIT(op)) ? 0 : MICA_EDENIED;
	case KC_ROLE_SECURITY_OFFICER:
		return (OFFICER_OPS & OP_BIT(op)) ? 0 : MICA_EDENIED;
	case KC_ROLE_SERVICE:
		/* A name no pattern could spell never matches a prefix by
		 * accident ("account-../x"). */
		if (!(SERVICE_OPS & OP_BIT(op)) || !kc_policy_key_name_valid(key_name))
			return MICA_EDENIED;
		for (size_t i = 0; i < pr->ngrants; i++)
			if ((pr->grants[i].ops & OP_BIT(op)) &&
			    grant_matches(&pr->grants[i], key_name))
				return 0;
		return MICA_EDENIED;
	default:
		return MICA_EDENIED;
	}
}
