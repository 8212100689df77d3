/* auth.c - bearer-token validation (see auth.h): strict parsing of the
 * Authorization header, the token hash and cache key, the lookup of
 * session:<hash> (in the optional in-process lib/kvcache copy, else Redis),
 * the mTLS introspection call to the account service with
 * strict reply checking, and a checkout pool of mica_httpc handles so one
 * validator serves every thread of a service.
 */
#include "auth.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "crypto.h"
#include "httpc.h"
#include "kv.h"
#include "kvcache.h"
#include "log.h"

#define DEFAULT_TIMEOUT_MS 2000
#define CLOCK_SKEW_S 5
/* At most one "cache unavailable" warning per this many seconds. */
#define WARN_INTERVAL_S 10

struct pooled {
	mica_httpc *h;
	struct pooled *next;
};

struct mica_auth {
	char *url, *ca, *cert, *key;
	mica_httpc_options hopt; /* points at the copies above */
	mica_kvcache *cache;	 /* borrowed; NULL: off */
	pthread_mutex_t pool_mu;
	struct pooled *idle; /* handles not in use, most recently returned first */
	_Atomic int64_t last_warn;
};

/* ---- the contract's building blocks ---------------------------------------- */

const char *mica_auth_kind_name(mica_auth_kind kind)
{
	switch (kind) {
	case MICA_AUTH_KIND_APP:
		return "app";
	case MICA_AUTH_KIND_WEB:
		return "web";
	}
	return NULL;
}

static int kind_parse(const char *s, mica_auth_kind *kind)
{
	if (s && strcmp(s, "app") == 0)
		*kind = MICA_AUTH_KIND_APP;
	else if (s && strcmp(s, "web") == 0)
		*kind = MICA_AUTH_KIND_WEB;
	else
		return MICA_EINVAL;
	return 0;
}

static bool is_lower_hex(const char *s, size_t min, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n < min || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static bool is_device_id(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n < 1 || n > MICA_AUTH_DEVICE_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

int mica_auth_token_hash(const char *token, char hash_hex[MICA_AUTH_HASH_HEX_LEN + 1])
{
	uint8_t raw[MICA_AUTH_TOKEN_BYTES], md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	size_t n = 0;
	int rc;

	hash_hex[0] = '\0';
	if (!token || strnlen(token, MICA_AUTH_TOKEN_LEN + 1) != MICA_AUTH_TOKEN_LEN)
		return MICA_EINVAL;
	/* The strict decoder rejects every character outside the alphabet and
	 * non-zero unused bits, so each token has exactly one spelling. */
	rc = mica_base64url_decode(token, MICA_AUTH_TOKEN_LEN, raw, sizeof(raw), &n);
	mica_wipe(raw, sizeof(raw));
	if (rc || n != MICA_AUTH_TOKEN_BYTES)
		return MICA_EINVAL;
	if (!EVP_Digest(token, MICA_AUTH_TOKEN_LEN, md, &mdlen, mica_md_sha256(), NULL) ||
	    mdlen != MICA_SHA256_LEN)
		return MICA_ECRYPTO;
	rc = mica_hex_encode(md, mdlen, hash_hex, MICA_AUTH_HASH_HEX_LEN + 1);
	mica_wipe(md, sizeof(md));
	return rc ? MICA_ECRYPTO : 0;
}

int mica_auth_token_new(char token[MICA_AUTH_TOKEN_LEN + 1],
			char hash_hex[MICA_AUTH_HASH_HEX_LEN + 1])
{
	uint8_t raw[MICA_AUTH_TOKEN_BYTES];
	int rc = mica_random(raw, sizeof(raw));
	if (!rc)
		rc = mica_base64url_encode(raw, sizeof(raw), token, MICA_AUTH_TOKEN_LEN + 1, NULL);
	if (!rc && hash_hex)
		rc = mica_auth_token_hash(token, hash_hex);
	mica_wipe(raw, sizeof(raw));
	if (rc) {
		mica_wipe(token, MICA_AUTH_TOKEN_LEN + 1);
		if (hash_hex)
			hash_hex[0] = '\0';
		return MICA_ECRYPTO;
	}
	return 0;
}

int mica_auth_cache_key(const char *hash_hex, char key[MICA_AUTH_CACHE_KEY_LEN + 1])
{
	key[0] = '\0';
	if (!is_lower_hex(hash_hex, MICA_AUTH_HASH_HEX_LEN, MICA_AUTH_HASH_HEX_LEN))
		return MICA_EINVAL;
	snprintf(key, MICA_AUTH_CACHE_KEY_LEN + 1, "%s%s", MICA_AUTH_CACHE_PREFIX, hash_hex);
	return 0;
}

/* Checks the fields every session must satisfy, wherever it came from. */
static int session_check(const mica_auth_session *s)
{
	if (s->user_id < 1 || !mica_auth_kind_name(s->kind) ||
	    !is_lower_hex(s->session_id, 1, MICA_AUTH_SESSION_ID_MAX) ||
	    !is_device_id(s->device_id) || s->auth_at < 0 || s->expires_at < 1)
		return MICA_EINVAL;
	return 0;
}

int mica_auth_cache_value(const mica_auth_session *s, char **json)
{
	*json = NULL;
	if (!s || session_check(s))
		return MICA_EINVAL;
	json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:I,s:I}", "user_id", (json_int_t)s->user_id,
			      "session_id", s->session_id, "device_id", s->device_id, "kind",
			      mica_auth_kind_name(s->kind), "auth_at", (json_int_t)s->auth_at,
			      "expires_at", (json_int_t)s->expires_at);
	if (o)
		*json = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return *json ? 0 : MICA_ENOMEM;
}

bool mica_auth_recent(const mica_auth_session *s, int window_s, time_t now)
{
	if (!s || window_s < 0)
		return false;
	int64_t age = (int64_t)now - s->auth_at;
	return age >= -CLOCK_SKEW_S && age <= window_s;
}

/* ---- parsing ---------------------------------------------------------------- */

/* "Bearer <token>": the scheme case-insensitively, one space, a token that
 * ends the header. *token points into |hdr|. */
static int parse_bearer(const char *hdr, const char **token)
{
	static const char scheme[] = "Bearer ";
	*token = NULL;
	if (!hdr || strncasecmp(hdr, scheme, sizeof(scheme) - 1) != 0)
		return MICA_EINVAL;
	*token = hdr + sizeof(scheme) - 1;
	return 0;
}

/* Copies a JSON string member into |dst| (|cap| bytes); false if missing,
 * not a string, or too long. */
static bool copy_str(json_t *obj, const char *name, char *dst, size_t cap)
{
	json_t *v = json_object_get(obj, name);
	const char *s = json_string_value(v);
	if (!s || json_string_length(v) >= cap || strlen(s) != json_string_length(v))
		return false;
	memcpy(dst, s, json_string_length(v) + 1);
	return true;
}

static bool get_int(json_t *obj, const char *name, int64_t *out)
{
	json_t *v = json_object_get(obj, name);
	if (!json_is_integer(v))
		return false;
	*out = (int64_t)json_integer_value(v);
	return true;
}

/* Decimal digits only, no sign, no leading zero, > 0, fits int64. */
static bool parse_user_id(const char *s, int64_t *out)
{
	int64_t v = 0;
	if (!s || !*s || *s == '0' || strlen(s) > 19)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		if (v > (INT64_MAX - (*s - '0')) / 10)
			return false;
		v = v * 10 + (*s - '0');
	}
	*out = v;
	return true;
}

/* The session id: a string, or a positive integer written in decimal. */
static bool get_session_id(json_t *obj, char *dst, size_t cap)
{
	json_t *v = json_object_get(obj, "session_id");
	if (json_is_integer(v) && json_integer_value(v) > 0) {
		snprintf(dst, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return true;
	}
	return copy_str(obj, "session_id", dst, cap);
}

/* The cache value (auth.h): a session, or a revocation tombstone. Returns 0,
 * MICA_EDENIED (tombstone) or MICA_EBADHEADER. Unknown members are ignored
 * so the account service can add fields without breaking older readers. */
static int parse_cache_value(const char *text, size_t len, mica_auth_session *s)
{
	json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
	char kind[8];
	int rc = MICA_EBADHEADER;
	if (json_is_object(o) && json_is_true(json_object_get(o, "revoked")))
		rc = MICA_EDENIED;
	else if (json_is_object(o) && get_int(o, "user_id", &s->user_id) &&
		 get_session_id(o, s->session_id, sizeof(s->session_id)) &&
		 copy_str(o, "device_id", s->device_id, sizeof(s->device_id)) &&
		 copy_str(o, "kind", kind, sizeof(kind)) && kind_parse(kind, &s->kind) == 0 &&
		 get_int(o, "auth_at", &s->auth_at) && get_int(o, "expires_at", &s->expires_at) &&
		 session_check(s) == 0)
		rc = 0;
	json_decref(o);
	return rc;
}

/* The introspection reply: {"active": false} or the active shape. Returns 0
 * (active, *s filled), MICA_EDENIED (inactive) or MICA_EBADHEADER. */
static int parse_introspection(json_t *o, mica_auth_session *s)
{
	json_t *active = json_object_get(o, "active");
	char sub[24], kind[8];
	if (!json_is_object(o) || !json_is_boolean(active))
		return MICA_EBADHEADER;
	if (json_is_false(active))
		return MICA_EDENIED;
	if (copy_str(o, "sub", sub, sizeof(sub)) && parse_user_id(sub, &s->user_id) &&
	    copy_str(o, "sid", s->session_id, sizeof(s->session_id)) &&
	    copy_str(o, "device_id", s->device_id, sizeof(s->device_id)) &&
	    copy_str(o, "kind", kind, sizeof(kind)) && kind_parse(kind, &s->kind) == 0 &&
	    get_int(o, "auth_time", &s->auth_at) && get_int(o, "exp", &s->expires_at) &&
	    session_check(s) == 0)
		return 0;
	return MICA_EBADHEADER;
}

/* ---- cache -------------------------------------------------------------------- */

/* Logs a cache failure at most once per WARN_INTERVAL_S, so an outage does
 * not write one line per request. */
static void warn_cache(mica_auth *a, int rc, time_t now)
{
	int64_t last = atomic_load(&a->last_warn);
	if ((int64_t)now - last < WARN_INTERVAL_S ||
	    !atomic_compare_exchange_strong(&a->last_warn, &last, (int64_t)now))
		return;
	MICA_LOG(MICA_LOG_WARN, "auth: session cache unavailable (%s); asking the account service",
		 mica_strerror(rc));
}

/* Returns 0 (hit, active), MICA_EDENIED (hit, expired or revoked),
 * MICA_ENOTFOUND (miss) or another error (the cache could not answer). */
static int cache_lookup(mica_auth *a, const char *hash_hex, time_t now, mica_auth_session *s)
{
	char key[MICA_AUTH_CACHE_KEY_LEN + 1];
	char *val = NULL;
	size_t len = 0;
	int rc = mica_auth_cache_key(hash_hex, key);
	if (rc)
		return rc;
	int from_redis = 0;
	uint64_t ticket = 0;
	if (mica_kvcache_get(a->cache, key, &val, &len) != 0) {
		mica_kv *kv = mica_kv_thread();
		if (!kv) {
			warn_cache(a, MICA_ESTATE, now);
			return MICA_ESTATE;
		}
		/* The ticket before the read: a change applied in between
		 * makes the put below a no-op (kvcache.h). */
		ticket = mica_kvcache_ticket(a->cache);
		rc = mica_kv_get(kv, key, &val, &len);
		if (rc == MICA_ENOTFOUND || rc == MICA_EWOULDBLOCK) /* not a cache failure */
			return rc;
		if (rc) {
			warn_cache(a, rc, now);
			return rc;
		}
		from_redis = 1;
	}
	rc = parse_cache_value(val, len, s);
	/* Only live sessions are copied; tombstones and expired entries are
	 * read from Redis each time (they are rare and short-lived). */
	if (rc == 0 && from_redis && s->expires_at > (int64_t)now &&
	    mica_kvcache_put(a->cache, key, val, len, ticket) == MICA_ENOMEM)
		MICA_LOG(MICA_LOG_WARN, "auth: out of memory caching a session");
	free(val);
	if (rc == MICA_EDENIED) {
		memset(s, 0, sizeof(*s));
		return rc;
	}
	if (rc) {
		MICA_LOG(MICA_LOG_WARN, "auth: unreadable session cache entry; asking the account "
					"service");
		memset(s, 0, sizeof(*s));
		return rc;
	}
	s->source = MICA_AUTH_FROM_CACHE;
	return s->expires_at > (int64_t)now ? 0 : MICA_EDENIED;
}

/* ---- introspection -------------------------------------------------------------- */

static mica_httpc *pool_take(mica_auth *a, int *err)
{
	struct pooled *p;
	mica_httpc *h = NULL;
	pthread_mutex_lock(&a->pool_mu);
	if ((p = a->idle) != NULL)
		a->idle = p->next;
	pthread_mutex_unlock(&a->pool_mu);
	*err = 0;
	if (p) {
		h = p->h;
		free(p);
		return h;
	}
	*err = mica_httpc_new(&h, &a->hopt);
	return h;
}

/* Returns |h| to the pool; frees it if the pool entry cannot be allocated. */
static void pool_give(mica_auth *a, mica_httpc *h)
{
	struct pooled *p = malloc(sizeof(*p));
	if (!p) {
		mica_httpc_free(h);
		return;
	}
	p->h = h;
	pthread_mutex_lock(&a->pool_mu);
	p->next = a->idle;
	a->idle = p;
	pthread_mutex_unlock(&a->pool_mu);
}

static int status_error(long status)
{
	if (status == 401 || status == 403)
		return MICA_EPERM;
	return MICA_EHTTP;
}

static int introspect(mica_auth *a, const char *token, time_t now, mica_auth_session *s)
{
	/* The token needs no JSON escaping: its alphabet is [A-Za-z0-9_-]. */
	char body[sizeof("{\"token\":\"\"}") + MICA_AUTH_TOKEN_LEN];
	mica_httpc_resp r = {0};
	json_t *o = NULL;
	int rc;
	mica_httpc *h = pool_take(a, &rc);
	if (!h)
		return rc;
	int n = snprintf(body, sizeof(body), "{\"token\":\"%s\"}", token);
	rc = mica_httpc_request(h, "POST", a->url, body, (size_t)n, 1, &r);
	mica_wipe(body, sizeof(body));
	pool_give(a, h);
	if (rc)
		goto out;
	if (r.status != 200) {
		MICA_LOG(MICA_LOG_WARN, "auth: introspection answered HTTP %ld", r.status);
		rc = status_error(r.status);
		goto out;
	}
	o = json_loadb(r.body, r.body_len, JSON_REJECT_DUPLICATES, NULL);
	rc = parse_introspection(o, s);
	if (rc == MICA_EBADHEADER)
		MICA_LOG(MICA_LOG_WARN, "auth: introspection reply is not the documented shape");
	if (rc == 0) {
		s->source = MICA_AUTH_FROM_INTROSPECTION;
		if (s->expires_at <= (int64_t)now)
			rc = MICA_EDENIED;
	}
out:
	json_decref(o);
	mica_httpc_resp_cleanup(&r);
	return rc;
}

/* ---- lifecycle and validation -------------------------------------------------- */

void mica_auth_free(mica_auth *a)
{
	if (!a)
		return;
	while (a->idle) {
		struct pooled *p = a->idle;
		a->idle = p->next;
		mica_httpc_free(p->h);
		free(p);
	}
	pthread_mutex_destroy(&a->pool_mu);
	free(a->url);
	free(a->ca);
	free(a->cert);
	free(a->key);
	free(a);
}

static bool nonempty(const char *s)
{
	return s && *s;
}

int mica_auth_new(mica_auth **out, const mica_auth_options *opt)
{
	mica_auth *a;
	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!opt || !nonempty(opt->introspect_url) || !nonempty(opt->ca_file) ||
	    !nonempty(opt->cert_file) || !nonempty(opt->key_file) || opt->timeout_ms < 0 ||
	    strncmp(opt->introspect_url, "https://", 8) != 0)
		return MICA_EINVAL;
	if (!(a = calloc(1, sizeof(*a))))
		return MICA_ENOMEM;
	if (pthread_mutex_init(&a->pool_mu, NULL) != 0) {
		free(a);
		return MICA_ENOMEM;
	}
	a->url = strdup(opt->introspect_url);
	a->ca = strdup(opt->ca_file);
	a->cert = strdup(opt->cert_file);
	a->key = strdup(opt->key_file);
	if (!a->url || !a->ca || !a->cert || !a->key) {
		mica_auth_free(a);
		return MICA_ENOMEM;
	}
	a->cache = opt->cache;
	long timeout = opt->timeout_ms ? opt->timeout_ms : DEFAULT_TIMEOUT_MS;
	a->hopt = (mica_httpc_options){
		.ca_file = a->ca,
		.cert_file = a->cert,
		.key_file = a->key,
		.connect_timeout_ms = timeout < 1000 ? timeout : 1000,
		.timeout_ms = timeout,
		.retries = 1,
		.backoff_ms = 20,
	};
	*out = a;
	return 0;
}

int mica_auth_validate(mica_auth *a, const char *authorization_header, mica_auth_session *out)
{
	char hash_hex[MICA_AUTH_HASH_HEX_LEN + 1];
	const char *token;
	int rc;

	if (!out)
		return MICA_EINVAL;
	memset(out, 0, sizeof(*out));
	if (!a)
		return MICA_EINVAL;
	/* mica_auth_token_hash() accepts exactly MICA_AUTH_TOKEN_LEN characters,
	 * so anything after the token (a second token, a space) is malformed. */
	if ((rc = parse_bearer(authorization_header, &token)) != 0 ||
	    (rc = mica_auth_token_hash(token, hash_hex)) != 0)
		return rc;
	time_t now = (time_t)mica_clock_now();
	rc = cache_lookup(a, hash_hex, now, out);
	if (rc != 0 && rc != MICA_EDENIED) {
		memset(out, 0, sizeof(*out));
		rc = introspect(a, token, now, out);
	}
	if (rc)
		memset(out, 0, sizeof(*out));
	return rc;
}
