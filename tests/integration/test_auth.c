/* test_auth.c - lib/auth against the real Redis of tests/run and a real
 * introspection endpoint: a mica_http server inside the test, requiring
 * mutual TLS, answering POST /v1/introspect from a table the tests fill.
 * Sessions are seeded as the account service writes them (Redis user
 * "account"); the validator reads as another service ("keycenter"), whose
 * ACL allows only reading session:*. Every token is fresh and random.
 */
#include <check.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "crypto.h"
#include "err.h"
#include "http.h"
#include "kv.h"
#include "kvcache.h"
#include "log.h"
#include "tests/check_main.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	ck_assert_msg(v && *v, "environment variable %s is not set (run through tests/run)", name);
	return v;
}

/* ---- Redis ------------------------------------------------------------------ */

/* The password of Redis user |user| ("account", "keycenter", "test"). */
static void redis_password(const char *user, char *buf, size_t cap)
{
	char var[64];
	if (strcmp(user, "test") == 0)
		snprintf(var, sizeof(var), "MICA_REDIS_PASSWORD_FILE");
	else
		snprintf(var, sizeof(var), "MICA_REDIS_PASSWORD_FILE_%s",
			 strcmp(user, "account") == 0 ? "ACCOUNT" : "KEYCENTER");
	FILE *f = fopen(env(var), "r");
	ck_assert_msg(f != NULL, "cannot open %s", var);
	ck_assert_ptr_nonnull(fgets(buf, (int)cap, f));
	fclose(f);
	buf[strcspn(buf, "\r\n")] = '\0';
}

static mica_kv *kv_open_as(const char *user)
{
	char pw[256];
	redis_password(user, pw, sizeof(pw));
	struct mica_kv_config c = {env("MICA_REDIS_SOCKET"), user, pw, 5000};
	mica_kv *kv = NULL;
	int rc = mica_kv_open(&kv, &c);
	ck_assert_msg(rc == 0, "mica_kv_open as %s: %s", user, mica_strerror(rc));
	return kv;
}

/* The process-wide kv settings lib/auth uses: a non-account service's user,
 * or a socket where no Redis listens. */
static void kv_global_as(const char *user, const char *socket_path)
{
	char pw[256];
	redis_password(user, pw, sizeof(pw));
	struct mica_kv_config c = {socket_path ? socket_path : env("MICA_REDIS_SOCKET"), user, pw,
				   2000};
	ck_assert_int_eq(mica_kv_global_init(&c), 0);
}

static void cache_key_of(const char *token, char key[MICA_AUTH_CACHE_KEY_LEN + 1])
{
	char hex[MICA_AUTH_HASH_HEX_LEN + 1];
	ck_assert_int_eq(mica_auth_token_hash(token, hex), 0);
	ck_assert_int_eq(mica_auth_cache_key(hex, key), 0);
}

/* Writes |value| at the token's cache key as the account service does. */
static void seed_raw(const char *token, const char *value, int ttl)
{
	char key[MICA_AUTH_CACHE_KEY_LEN + 1];
	cache_key_of(token, key);
	mica_kv *kv = kv_open_as("account");
	ck_assert_int_eq(mica_kv_set(kv, key, value, strlen(value), ttl), 0);
	mica_kv_close(&kv);
}

static void seed(const char *token, const mica_auth_session *s)
{
	char *json = NULL;
	ck_assert_int_eq(mica_auth_cache_value(s, &json), 0);
	seed_raw(token, json, 60);
	free(json);
}

static void unseed(const char *token)
{
	char key[MICA_AUTH_CACHE_KEY_LEN + 1];
	cache_key_of(token, key);
	mica_kv *kv = kv_open_as("account");
	ck_assert_int_eq(mica_kv_del(kv, key, NULL), 0);
	mica_kv_close(&kv);
}

/* ---- the introspection endpoint ------------------------------------------------ */

enum reply {
	R_ACTIVE = 0, /* the documented active shape */
	R_INACTIVE,   /* {"active": false} */
	R_EXPIRED,    /* active, but exp in the past */
	R_MISSING,    /* {"active": true} without the session fields */
	R_BADSUB,     /* "sub" not a decimal string */
	R_500,	      /* internal error */
};

struct row {
	char hash[MICA_AUTH_HASH_HEX_LEN + 1];
	enum reply reply;
	mica_auth_session s;
};

static struct {
	pthread_mutex_t mu;
	struct row rows[16];
	int nrows;
	atomic_int calls;
	char last_peer[64];
} table = {.mu = PTHREAD_MUTEX_INITIALIZER};

static mica_http_server *srv;
static char introspect_url[128];

/* Registers (or changes) the answer for |token|. */
static void answer(const char *token, enum reply reply, const mica_auth_session *s)
{
	char hex[MICA_AUTH_HASH_HEX_LEN + 1];
	ck_assert_int_eq(mica_auth_token_hash(token, hex), 0);
	pthread_mutex_lock(&table.mu);
	int i = 0;
	while (i < table.nrows && strcmp(table.rows[i].hash, hex) != 0)
		i++;
	ck_assert_int_lt(i, 16);
	if (i == table.nrows)
		table.nrows++;
	memcpy(table.rows[i].hash, hex, sizeof(hex));
	table.rows[i].reply = reply;
	if (s)
		table.rows[i].s = *s;
	pthread_mutex_unlock(&table.mu);
}

static void introspect(const mica_http_req *req, mica_http_resp *resp, void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&table.calls, 1);
	pthread_mutex_lock(&table.mu);
	snprintf(table.last_peer, sizeof(table.last_peer), "%s", req->peer ? req->peer : "");
	pthread_mutex_unlock(&table.mu);
	/* Only service principals may introspect. */
	if (!req->peer || (strcmp(req->peer, "keycenter") != 0 && strcmp(req->peer, "account"))) {
		mica_http_reply_error(resp, 403, "forbidden", "not a service principal");
		return;
	}
	const char *token = json_string_value(json_object_get(req->json, "token"));
	char hex[MICA_AUTH_HASH_HEX_LEN + 1];
	if (json_object_size(req->json) != 1 || !token || mica_auth_token_hash(token, hex) != 0) {
		mica_http_reply_error(resp, 400, "invalid_request", "bad token");
		return;
	}
	pthread_mutex_lock(&table.mu);
	struct row r = {.reply = R_INACTIVE};
	for (int i = 0; i < table.nrows; i++)
		if (strcmp(table.rows[i].hash, hex) == 0)
			r = table.rows[i];
	pthread_mutex_unlock(&table.mu);
	char sub[24];
	snprintf(sub, sizeof(sub), "%lld", (long long)r.s.user_id);
	json_int_t exp = r.reply == R_EXPIRED ? (json_int_t)time(NULL) - 10 : r.s.expires_at;
	switch (r.reply) {
	case R_ACTIVE:
	case R_EXPIRED:
	case R_BADSUB:
		mica_http_reply_json(resp, 200,
				     json_pack("{s:b,s:s,s:s,s:s,s:s,s:I,s:I}", "active", 1, "sub",
					       r.reply == R_BADSUB ? "12abc" : sub, "sid",
					       r.s.session_id, "device_id", r.s.device_id, "kind",
					       mica_auth_kind_name(r.s.kind), "auth_time",
					       (json_int_t)r.s.auth_at, "exp", exp));
		break;
	case R_INACTIVE:
		mica_http_reply_json(resp, 200, json_pack("{s:b}", "active", 0));
		break;
	case R_MISSING:
		mica_http_reply_json(resp, 200, json_pack("{s:b}", "active", 1));
		break;
	case R_500:
		mica_http_reply_error(resp, 500, "internal_error", "boom");
		break;
	}
}

static const mica_http_route routes[] = {
	{"POST", "/v1/introspect", introspect, MICA_ROUTE_JSON | MICA_ROUTE_PEER},
};

static void setup(void)
{
	mica_http_options o;
	mica_http_options_default(&o);
	o.service = "account-test";
	o.cert_file = env("MICA_CERT_SERVER");
	o.key_file = env("MICA_KEY_SERVER");
	o.client_ca_file = env("MICA_CA");
	o.require_client_cert = 1;
	o.threads = 4;
	o.access_log = 0;
	ck_assert_int_eq(mica_http_start(&srv, &o, routes, 1, NULL), 0);
	snprintf(introspect_url, sizeof(introspect_url), "https://localhost:%d/v1/introspect",
		 mica_http_port(srv));
	atomic_store(&table.calls, 0);
	table.nrows = 0;
}

static void teardown(void)
{
	mica_http_stop(srv);
	srv = NULL;
	mica_kv_global_cleanup();
}

/* A validator presenting principal |who| ("KEYCENTER", "ADMIN", "ROGUE"). */
static mica_auth *validator_as(const char *who, const char *url)
{
	char cert[64], key[64];
	snprintf(cert, sizeof(cert), "MICA_CERT_%s", who);
	snprintf(key, sizeof(key), "MICA_KEY_%s", who);
	mica_auth_options o = {
		.introspect_url = url ? url : introspect_url,
		.ca_file = env("MICA_CA"),
		.cert_file = env(cert),
		.key_file = env(key),
		.timeout_ms = 3000,
	};
	mica_auth *a = NULL;
	ck_assert_int_eq(mica_auth_new(&a, &o), 0);
	return a;
}

static mica_auth *validator(void)
{
	return validator_as("KEYCENTER", NULL);
}

/* A fresh token and a session for it. */
static void new_session(char token[MICA_AUTH_TOKEN_LEN + 1], mica_auth_session *s, int64_t uid,
			mica_auth_kind kind)
{
	ck_assert_int_eq(mica_auth_token_new(token, NULL), 0);
	memset(s, 0, sizeof(*s));
	s->user_id = uid;
	snprintf(s->session_id, sizeof(s->session_id), "%016llx%08x", (unsigned long long)uid,
		 (unsigned)getpid());
	snprintf(s->device_id, sizeof(s->device_id), "dev-%lld", (long long)uid);
	s->kind = kind;
	s->auth_at = (int64_t)time(NULL) - 100;
	s->expires_at = (int64_t)time(NULL) + 3600;
}

static void bearer(char *buf, size_t cap, const char *token)
{
	snprintf(buf, cap, "Bearer %s", token);
}

static void assert_same(const mica_auth_session *got, const mica_auth_session *want)
{
	ck_assert_int_eq(got->user_id, want->user_id);
	ck_assert_str_eq(got->session_id, want->session_id);
	ck_assert_str_eq(got->device_id, want->device_id);
	ck_assert_int_eq(got->kind, want->kind);
	ck_assert_int_eq(got->auth_at, want->auth_at);
	ck_assert_int_eq(got->expires_at, want->expires_at);
}

/* ---- tests ------------------------------------------------------------------------- */

START_TEST(cache_hit_is_accepted)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	new_session(token, &s, 1001, MICA_AUTH_KIND_APP);
	seed(token, &s);
	mica_auth *a = validator();
	bearer(hdr, sizeof(hdr), token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	assert_same(&got, &s);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_CACHE);
	ck_assert_int_eq(atomic_load(&table.calls), 0);

	/* The scheme name is case-insensitive (RFC 7235). */
	snprintf(hdr, sizeof(hdr), "bEARER %s", token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	ck_assert_int_eq(got.user_id, 1001);
	ck_assert_int_eq(atomic_load(&table.calls), 0);
	unseed(token);
	mica_auth_free(a);
}
END_TEST

START_TEST(expired_cache_entry_is_denied)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	new_session(token, &s, 1002, MICA_AUTH_KIND_WEB);
	s.expires_at = (int64_t)time(NULL) - 1;
	seed(token, &s);
	/* Even if the account service would say yes, the cached expiry rules. */
	answer(token, R_ACTIVE, &s);
	mica_auth *a = validator();
	bearer(hdr, sizeof(hdr), token);
	got.user_id = 77;
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(got.user_id, 0);
	ck_assert_int_eq(atomic_load(&table.calls), 0);
	unseed(token);
	mica_auth_free(a);
}
END_TEST

START_TEST(cache_miss_asks_introspection)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	mica_auth *a = validator();

	new_session(token, &s, 1003, MICA_AUTH_KIND_WEB);
	answer(token, R_ACTIVE, &s);
	bearer(hdr, sizeof(hdr), token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	assert_same(&got, &s);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_INTROSPECTION);
	ck_assert_int_eq(atomic_load(&table.calls), 1);
	ck_assert_str_eq(table.last_peer, "keycenter");

	/* lib/auth does not fill the cache (it may not write session:*). */
	char key[MICA_AUTH_CACHE_KEY_LEN + 1], *v = NULL;
	cache_key_of(token, key);
	mica_kv *kv = kv_open_as("account");
	ck_assert_int_eq(mica_kv_get(kv, key, &v, NULL), MICA_ENOTFOUND);
	mica_kv_close(&kv);

	/* Inactive, unknown and expired answers are all denials. */
	answer(token, R_INACTIVE, NULL);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	answer(token, R_EXPIRED, &s);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	char other[MICA_AUTH_TOKEN_LEN + 1];
	ck_assert_int_eq(mica_auth_token_new(other, NULL), 0);
	bearer(hdr, sizeof(hdr), other);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(atomic_load(&table.calls), 4);
	mica_auth_free(a);
}
END_TEST

START_TEST(revocation_fails_the_next_request)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	new_session(token, &s, 1004, MICA_AUTH_KIND_APP);
	seed(token, &s);
	answer(token, R_ACTIVE, &s);
	mica_auth *a = validator();
	bearer(hdr, sizeof(hdr), token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_CACHE);
	/* Revocation by tombstone: refused at once, without asking (the
	 * account service would still say active here). */
	seed_raw(token, "{\"revoked\":true}", 60);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(got.user_id, 0);
	ck_assert_int_eq(atomic_load(&table.calls), 0);
	/* Revocation by deleting the cache entry and marking the account
	 * service's row: the very next validation is refused. */
	unseed(token);
	answer(token, R_INACTIVE, NULL);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(atomic_load(&table.calls), 1);
	mica_auth_free(a);
}
END_TEST

/* With an in-process copy (lib/kvcache, as a non-account service would run
 * it): a live session is served from the copy on its second validation, and
 * a tombstone or a deleted entry written by the account service's user is
 * seen by the very next validation. */
START_TEST(in_process_copy_follows_revocation)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64], pw[256];
	mica_auth_session s, got;
	struct mica_kvcache_stats st;
	kv_global_as("keycenter", NULL);
	redis_password("keycenter", pw, sizeof(pw));
	struct mica_kv_config kc_cfg = {env("MICA_REDIS_SOCKET"), "keycenter", pw, 2000};
	mica_kvcache_options co = {.prefix = MICA_AUTH_CACHE_PREFIX, .max_entries = 100};
	mica_kvcache *cache = NULL;
	ck_assert_int_eq(mica_kvcache_start(&cache, &kc_cfg, &co), 0);
	mica_auth_options o = {.introspect_url = introspect_url,
			       .ca_file = env("MICA_CA"),
			       .cert_file = env("MICA_CERT_KEYCENTER"),
			       .key_file = env("MICA_KEY_KEYCENTER"),
			       .timeout_ms = 3000,
			       .cache = cache};
	mica_auth *a = NULL;
	ck_assert_int_eq(mica_auth_new(&a, &o), 0);
	new_session(token, &s, 1005, MICA_AUTH_KIND_APP);
	seed(token, &s);
	answer(token, R_ACTIVE, &s);
	bearer(hdr, sizeof(hdr), token);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
		assert_same(&got, &s);
		ck_assert_int_eq(got.source, MICA_AUTH_FROM_CACHE);
	}
	mica_kvcache_stats(cache, &st);
	ck_assert_uint_eq(st.hits, 1);
	ck_assert_uint_eq(st.entries, 1);

	seed_raw(token, "{\"revoked\":true}", 60);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(atomic_load(&table.calls), 0);

	seed(token, &s);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	mica_kvcache_stats(cache, &st);
	ck_assert_uint_eq(st.hits, 2);
	unseed(token);
	answer(token, R_INACTIVE, NULL);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(atomic_load(&table.calls), 1);
	mica_auth_free(a);
	mica_kvcache_stop(&cache);
}
END_TEST

START_TEST(malformed_headers_are_invalid)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[128];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	new_session(token, &s, 1005, MICA_AUTH_KIND_APP);
	seed(token, &s);
	answer(token, R_ACTIVE, &s);
	mica_auth *a = validator();

	ck_assert_int_eq(mica_auth_validate(a, NULL, &got), MICA_EINVAL);
	const char *fixed[] = {"", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc"};
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		ck_assert_msg(mica_auth_validate(a, fixed[i], &got) == MICA_EINVAL, "'%s'",
			      fixed[i]);
	const char *shapes[] = {
		"%s",		       /* no scheme */
		"Bearer  %s",	       /* two spaces */
		"Bearer\t%s",	       /* a tab */
		"Bearer %s ",	       /* trailing space */
		"Bearer %s=",	       /* padding */
		"Bearer %sA",	       /* 44 characters */
		"Bearer %.42s",	       /* 42 characters */
		"Bearer %s, Bearer x", /* two credentials */
		"Bearer: %s",
	};
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		snprintf(hdr, sizeof(hdr), shapes[i], token);
		ck_assert_msg(mica_auth_validate(a, hdr, &got) == MICA_EINVAL, "'%s'", hdr);
	}
	/* Right length, wrong alphabet: the standard alphabet's '+' and '/',
	 * a space, a non-ASCII byte, and a last character with non-zero unused
	 * bits (43 characters carry 258 bits for 256). */
	const char bad_chars[] = {'+', '/', ' ', '.', (char)0xc3};
	for (size_t i = 0; i < sizeof(bad_chars); i++) {
		char t[MICA_AUTH_TOKEN_LEN + 1];
		memcpy(t, token, sizeof(t));
		t[10] = bad_chars[i];
		bearer(hdr, sizeof(hdr), t);
		ck_assert_msg(mica_auth_validate(a, hdr, &got) == MICA_EINVAL, "char %02x",
			      (unsigned char)bad_chars[i]);
	}
	char t[MICA_AUTH_TOKEN_LEN + 1];
	memcpy(t, token, sizeof(t));
	t[MICA_AUTH_TOKEN_LEN - 1] = 'B'; /* value 1: a low bit set */
	bearer(hdr, sizeof(hdr), t);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EINVAL);
	ck_assert_int_eq(mica_auth_validate(NULL, hdr, &got), MICA_EINVAL);
	ck_assert_int_eq(mica_auth_validate(a, hdr, NULL), MICA_EINVAL);

	/* Nothing malformed reached the account service; the good token works. */
	ck_assert_int_eq(atomic_load(&table.calls), 0);
	bearer(hdr, sizeof(hdr), token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	unseed(token);
	mica_auth_free(a);
}
END_TEST

START_TEST(redis_down_falls_back_to_introspection)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64], sock[600];
	mica_auth_session s, got;
	snprintf(sock, sizeof(sock), "%s/no-redis-here.sock", env("MICA_TEST_DIR"));
	kv_global_as("keycenter", sock);
	new_session(token, &s, 1006, MICA_AUTH_KIND_APP);
	answer(token, R_ACTIVE, &s);
	mica_auth *a = validator();
	bearer(hdr, sizeof(hdr), token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	assert_same(&got, &s);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_INTROSPECTION);
	answer(token, R_INACTIVE, NULL);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EDENIED);
	ck_assert_int_eq(atomic_load(&table.calls), 2);
	mica_auth_free(a);
}
END_TEST

START_TEST(no_kv_configured_falls_back)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64];
	mica_auth_session s, got;
	new_session(token, &s, 1007, MICA_AUTH_KIND_WEB);
	answer(token, R_ACTIVE, &s);
	mica_auth *a = validator();
	bearer(hdr, sizeof(hdr), token);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_INTROSPECTION);
	mica_auth_free(a);
}
END_TEST

START_TEST(unreadable_cache_entry_falls_back)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	new_session(token, &s, 1008, MICA_AUTH_KIND_APP);
	answer(token, R_ACTIVE, &s);
	mica_auth *a = validator();
	bearer(hdr, sizeof(hdr), token);
	const char *bad[] = {
		"not json",
		"{\"user_id\":1008}",
		"{\"user_id\":\"1008\",\"session_id\":\"ab\",\"device_id\":\"d\",\"kind\":\"app\","
		"\"auth_at\":1,\"expires_at\":9999999999}",
		"{\"user_id\":1008,\"session_id\":\"AB\",\"device_id\":\"d\",\"kind\":\"app\","
		"\"auth_at\":1,\"expires_at\":9999999999}",
		"{\"user_id\":1008,\"session_id\":\"ab\",\"device_id\":\"d\",\"kind\":\"tv\","
		"\"auth_at\":1,\"expires_at\":9999999999}",
		"{\"user_id\":1008,\"session_id\":-3,\"device_id\":\"d\",\"kind\":\"app\","
		"\"auth_at\":1,\"expires_at\":9999999999}",
		"{\"revoked\":false}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		seed_raw(token, bad[i], 60);
		ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
		ck_assert_int_eq(got.source, MICA_AUTH_FROM_INTROSPECTION);
		assert_same(&got, &s);
	}
	ck_assert_int_eq(atomic_load(&table.calls), (int)(sizeof(bad) / sizeof(bad[0])));
	/* Extra members are ignored: the account service may add fields. */
	seed_raw(token,
		 "{\"user_id\":1008,\"session_id\":\"ab\",\"device_id\":\"d\",\"kind\":\"app\","
		 "\"auth_at\":1,\"expires_at\":9999999999,\"scope\":\"later\"}",
		 60);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_CACHE);
	ck_assert_str_eq(got.session_id, "ab");
	/* A session id given as a positive integer reads as its digits. */
	seed_raw(token,
		 "{\"user_id\":1008,\"session_id\":4711,\"device_id\":\"d\",\"kind\":\"web\","
		 "\"auth_at\":1,\"expires_at\":9999999999}",
		 60);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);
	ck_assert_int_eq(got.source, MICA_AUTH_FROM_CACHE);
	ck_assert_str_eq(got.session_id, "4711");
	ck_assert_int_eq(got.kind, MICA_AUTH_KIND_WEB);
	unseed(token);
	mica_auth_free(a);
}
END_TEST

START_TEST(fails_closed)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hdr[64], dead_url[128], sock[600];
	mica_auth_session s, got;
	kv_global_as("keycenter", NULL);
	new_session(token, &s, 1009, MICA_AUTH_KIND_APP);
	bearer(hdr, sizeof(hdr), token);

	/* A port where nothing listens any more. */
	mica_http_options o;
	mica_http_server *gone = NULL;
	mica_http_options_default(&o);
	o.cert_file = env("MICA_CERT_SERVER");
	o.key_file = env("MICA_KEY_SERVER");
	o.access_log = 0;
	ck_assert_int_eq(mica_http_start(&gone, &o, routes, 1, NULL), 0);
	snprintf(dead_url, sizeof(dead_url), "https://localhost:%d/v1/introspect",
		 mica_http_port(gone));
	mica_http_stop(gone);

	/* Redis misses, the account service is unreachable: an error, never 0. */
	mica_auth *dead = validator_as("KEYCENTER", dead_url);
	ck_assert_int_eq(mica_auth_validate(dead, hdr, &got), MICA_EHTTP);
	ck_assert_int_eq(got.user_id, 0);

	/* The account service fails or answers outside the contract. */
	mica_auth *a = validator();
	answer(token, R_500, &s);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EHTTP);
	answer(token, R_MISSING, &s);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EBADHEADER);
	answer(token, R_BADSUB, &s);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), MICA_EBADHEADER);
	ck_assert_int_eq(got.user_id, 0);

	/* Principals the account service does not accept. */
	answer(token, R_ACTIVE, &s);
	mica_auth *admin = validator_as("ADMIN", NULL);
	ck_assert_int_eq(mica_auth_validate(admin, hdr, &got), MICA_EPERM);
	mica_auth *rogue = validator_as("ROGUE", NULL);
	ck_assert_int_eq(mica_auth_validate(rogue, hdr, &got), MICA_EPERM);
	ck_assert_int_eq(mica_auth_validate(a, hdr, &got), 0);

	/* A server we do not trust is never asked. */
	mica_auth_options uo = {.introspect_url = introspect_url,
				.ca_file = env("MICA_CA_ROGUE"),
				.cert_file = env("MICA_CERT_KEYCENTER"),
				.key_file = env("MICA_KEY_KEYCENTER")};
	mica_auth *untrusting = NULL;
	ck_assert_int_eq(mica_auth_new(&untrusting, &uo), 0);
	ck_assert_int_eq(mica_auth_validate(untrusting, hdr, &got), MICA_ETLS);
	mica_auth_free(untrusting);
	mica_auth_free(rogue);
	mica_auth_free(admin);
	mica_auth_free(a);
	mica_auth_free(dead);
	mica_kv_global_cleanup();

	/* Redis down as well. */
	snprintf(sock, sizeof(sock), "%s/no-redis-here.sock", env("MICA_TEST_DIR"));
	kv_global_as("keycenter", sock);
	dead = validator_as("KEYCENTER", dead_url);
	ck_assert_int_eq(mica_auth_validate(dead, hdr, &got), MICA_EHTTP);
	mica_auth_free(dead);
}
END_TEST

START_TEST(only_account_writes_sessions)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], key[MICA_AUTH_CACHE_KEY_LEN + 1];
	mica_auth_session s;
	new_session(token, &s, 1010, MICA_AUTH_KIND_APP);
	cache_key_of(token, key);
	seed(token, &s);

	mica_kv *other = kv_open_as("keycenter");
	char *v = NULL;
	ck_assert_int_eq(mica_kv_get(other, key, &v, NULL), 0);
	ck_assert_ptr_nonnull(strstr(v, "\"user_id\":1010"));
	free(v);
	ck_assert_int_eq(mica_kv_set(other, key, "{}", 2, 60), MICA_EPERM);
	ck_assert_ptr_nonnull(strstr(mica_kv_errmsg(other), "NOPERM"));
	ck_assert_int_eq(mica_kv_del(other, key, NULL), MICA_EPERM);
	const char *expire[3] = {"EXPIRE", key, "1000000"};
	ck_assert_int_eq(mica_kv_command(other, NULL, 3, expire, NULL), MICA_EPERM);
	ck_assert_int_eq(mica_kv_set(other, "session:forged", "{}", 2, 60), MICA_EPERM);
	/* Its own prefix still works; another service's does not. */
	ck_assert_int_eq(mica_kv_set(other, "keycenter:auth-test", "1", 1, 10), 0);
	ck_assert_int_eq(mica_kv_get(other, "account:x", &v, NULL), MICA_EPERM);
	mica_kv_close(&other);

	/* The entry is intact; the test user may seed sessions (documented). */
	mica_kv *t = kv_open_as("test");
	ck_assert_int_eq(mica_kv_get(t, key, &v, NULL), 0);
	ck_assert_ptr_nonnull(strstr(v, "\"user_id\":1010"));
	free(v);
	ck_assert_int_eq(mica_kv_del(t, key, NULL), 0);
	mica_kv_close(&t);
}
END_TEST

struct worker {
	mica_auth *a;
	const char *hdr[2];
	int64_t uid[2];
	int failures;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; i < 200; i++) {
		mica_auth_session got;
		int k = i % 2;
		if (mica_auth_validate(w->a, w->hdr[k], &got) != 0 || got.user_id != w->uid[k])
			w->failures++;
	}
	return NULL;
}

/* One validator, many threads, cache hits and introspections mixed. */
START_TEST(concurrent_validation)
{
	char cached[MICA_AUTH_TOKEN_LEN + 1], remote[MICA_AUTH_TOKEN_LEN + 1];
	char h0[64], h1[64];
	mica_auth_session s0, s1;
	kv_global_as("keycenter", NULL);
	new_session(cached, &s0, 2001, MICA_AUTH_KIND_APP);
	new_session(remote, &s1, 2002, MICA_AUTH_KIND_WEB);
	seed(cached, &s0);
	answer(remote, R_ACTIVE, &s1);
	bearer(h0, sizeof(h0), cached);
	bearer(h1, sizeof(h1), remote);
	mica_auth *a = validator();
	pthread_t th[8];
	struct worker w[8];
	for (int i = 0; i < 8; i++) {
		w[i] = (struct worker){a, {h0, h1}, {2001, 2002}, 0};
		ck_assert_int_eq(pthread_create(&th[i], NULL, work, &w[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(w[i].failures, 0);
	}
	ck_assert_int_eq(atomic_load(&table.calls), 8 * 100);
	unseed(cached);
	mica_auth_free(a);
}
END_TEST

START_TEST(recent_authentication)
{
	mica_auth_session s = {.auth_at = 1000000};
	ck_assert(mica_auth_recent(&s, 300, 1000000));
	ck_assert(mica_auth_recent(&s, 300, 1000300));
	ck_assert(!mica_auth_recent(&s, 300, 1000301));
	ck_assert(mica_auth_recent(&s, 0, 1000000));
	ck_assert(!mica_auth_recent(&s, 0, 1000001));
	ck_assert(mica_auth_recent(&s, 300, 1000000 - 5));  /* clock skew */
	ck_assert(!mica_auth_recent(&s, 300, 1000000 - 6)); /* from the future */
	ck_assert(!mica_auth_recent(&s, -1, 1000000));
	ck_assert(!mica_auth_recent(NULL, 300, 1000000));
}
END_TEST

START_TEST(contract_helpers)
{
	char token[MICA_AUTH_TOKEN_LEN + 1], hex[MICA_AUTH_HASH_HEX_LEN + 1];
	char hex2[MICA_AUTH_HASH_HEX_LEN + 1], key[MICA_AUTH_CACHE_KEY_LEN + 1];
	ck_assert_int_eq(mica_auth_token_new(token, hex), 0);
	ck_assert_uint_eq(strlen(token), MICA_AUTH_TOKEN_LEN);
	ck_assert_uint_eq(strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
					"0123456789-_"),
			  MICA_AUTH_TOKEN_LEN);
	/* The hash is SHA-256 over the token's 43 characters, in lower-case hex. */
	unsigned char md[32];
	unsigned int mdlen = 0;
	ck_assert(EVP_Digest(token, MICA_AUTH_TOKEN_LEN, md, &mdlen, EVP_sha256(), NULL));
	ck_assert_int_eq(mica_hex_encode(md, 32, hex2, sizeof(hex2)), 0);
	ck_assert_str_eq(hex, hex2);
	ck_assert_int_eq(mica_auth_token_hash(token, hex2), 0);
	ck_assert_str_eq(hex, hex2);
	ck_assert_int_eq(mica_auth_cache_key(hex, key), 0);
	ck_assert_int_eq(strncmp(key, "session:", 8), 0);
	ck_assert_str_eq(key + 8, hex);
	ck_assert_int_eq(mica_auth_cache_key("ABC", key), MICA_EINVAL);
	hex2[0] = 'A';
	ck_assert_int_eq(mica_auth_cache_key(hex2, key), MICA_EINVAL);
	ck_assert_int_eq(mica_auth_token_hash("short", hex2), MICA_EINVAL);
	ck_assert_str_eq(hex2, "");
	/* Two tokens differ (32 random bytes). */
	char other[MICA_AUTH_TOKEN_LEN + 1];
	ck_assert_int_eq(mica_auth_token_new(other, NULL), 0);
	ck_assert_str_ne(token, other);

	mica_auth_session s = {.user_id = 5,
			       .session_id = "0a1b",
			       .device_id = "phone-1",
			       .kind = MICA_AUTH_KIND_WEB,
			       .auth_at = 10,
			       .expires_at = 20};
	char *json = NULL;
	ck_assert_int_eq(mica_auth_cache_value(&s, &json), 0);
	ck_assert_str_eq(json, "{\"user_id\":5,\"session_id\":\"0a1b\",\"device_id\":\"phone-1\","
			       "\"kind\":\"web\",\"auth_at\":10,\"expires_at\":20}");
	free(json);
	mica_auth_session bad = s;
	bad.user_id = 0;
	ck_assert_int_eq(mica_auth_cache_value(&bad, &json), MICA_EINVAL);
	ck_assert_ptr_null(json);
	bad = s;
	strcpy(bad.device_id, "has space");
	ck_assert_int_eq(mica_auth_cache_value(&bad, &json), MICA_EINVAL);
	bad = s;
	bad.kind = 9;
	ck_assert_int_eq(mica_auth_cache_value(&bad, &json), MICA_EINVAL);
	ck_assert_ptr_null(mica_auth_kind_name(9));

	/* Options. */
	mica_auth *a = (mica_auth *)1;
	mica_auth_options o = {.introspect_url = "https://localhost:1/v1/introspect",
			       .ca_file = "ca",
			       .cert_file = "c",
			       .key_file = "k"};
	ck_assert_int_eq(mica_auth_new(&a, NULL), MICA_EINVAL);
	ck_assert_ptr_null(a);
	mica_auth_options h = o;
	h.introspect_url = "http://localhost:1/v1/introspect";
	ck_assert_int_eq(mica_auth_new(&a, &h), MICA_EINVAL);
	h = o;
	h.cert_file = NULL;
	ck_assert_int_eq(mica_auth_new(&a, &h), MICA_EINVAL);
	h = o;
	h.timeout_ms = -1;
	ck_assert_int_eq(mica_auth_new(&a, &h), MICA_EINVAL);
	ck_assert_int_eq(mica_auth_new(&a, &o), 0);
	mica_auth_free(a);
	mica_auth_free(NULL);
}
END_TEST

static Suite *auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *tc = tcase_create("auth");
	tcase_set_timeout(tc, 60);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, cache_hit_is_accepted);
	tcase_add_test(tc, expired_cache_entry_is_denied);
	tcase_add_test(tc, cache_miss_asks_introspection);
	tcase_add_test(tc, revocation_fails_the_next_request);
	tcase_add_test(tc, in_process_copy_follows_revocation);
	tcase_add_test(tc, malformed_headers_are_invalid);
	tcase_add_test(tc, redis_down_falls_back_to_introspection);
	tcase_add_test(tc, no_kv_configured_falls_back);
	tcase_add_test(tc, unreadable_cache_entry_falls_back);
	tcase_add_test(tc, fails_closed);
	tcase_add_test(tc, only_account_writes_sessions);
	tcase_add_test(tc, concurrent_validation);
	tcase_add_test(tc, recent_authentication);
	tcase_add_test(tc, contract_helpers);
	suite_add_tcase(s, tc);
	return s;
}

static const char *const needs[] = {"MICA_REDIS_SOCKET",
				    "MICA_REDIS_PASSWORD_FILE",
				    "MICA_REDIS_PASSWORD_FILE_ACCOUNT",
				    "MICA_REDIS_PASSWORD_FILE_KEYCENTER",
				    "MICA_CA",
				    "MICA_CERT_SERVER",
				    "MICA_CERT_KEYCENTER",
				    "MICA_CERT_ADMIN",
				    "MICA_CERT_ROGUE",
				    "MICA_TEST_DIR",
				    NULL};

const struct mica_check mica_check = {
	.suite = auth_suite, .needs = needs, .log = MICA_CHECK_LOG_OFF};
