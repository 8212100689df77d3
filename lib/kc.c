/* kc.c - the Key Center client (see kc.h): request building and strict
 * reply parsing for datakey, decrypt, encrypt and hmac, the status-to-error
 * mapping, a checkout pool of mica_httpc handles, and the cache of unwrapped
 * data keys and HMAC results (a hash table of entries on two lists: recency
 * for LRU eviction, insertion order for TTL expiry), whose values are wiped
 * whenever they leave it.
 */
#include "kc.h"
#include "clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "httpc.h"
#include "log.h"
#include "thread.h"

#define NAME_MAX_LEN 64
#define CACHE_DOMAIN "mica-kc-cache-v2"
/* Largest cached value: a data key, or an HMAC's "kc:v<N>:<base64>" text. */
#define VALUE_MAX 64

/* ---- cache ------------------------------------------------------------------ */

/* One unwrapped data key or HMAC result. |id| is an HMAC, under the
 * client's random cache key, of the length-prefixed fields of the call
 * ("datakey", key name, ciphertext, canonical context; or "hmac", key name,
 * input), so neither the ciphertexts, the contexts nor the inputs (often
 * personal data) need to be kept, and crafted ones cannot steer entries into
 * one bucket. */
struct entry {
	uint8_t id[MICA_SHA256_LEN];
	uint8_t val[VALUE_MAX];
	size_t val_len;
	int64_t born_ms;
	struct entry *chain;		   /* next in the bucket */
	struct entry *lru_prev, *lru_next; /* most recently used first */
	struct entry *age_prev, *age_next; /* oldest first */
};

struct pooled {
	mica_httpc *h;
	struct pooled *next;
};

struct mica_kc {
	char *base_url;
	char *ca, *cert, *key;
	mica_httpc_options hopt; /* points at the copies above */

	pthread_mutex_t pool_mu;
	struct pooled *idle; /* handles not in use, most recently returned first */

	pthread_mutex_t mu; /* everything below */
	int cache_on;
	size_t max_entries;
	int64_t ttl_ms;
	uint8_t cache_key[32];
	struct entry **buckets;
	size_t nbuckets; /* a power of two */
	struct entry *lru_head, *lru_tail;
	struct entry *age_head, *age_tail;
	mica_kc_stats st;
	_Atomic uint64_t requests;
};

static void be32(uint8_t out[4], size_t v)
{
	out[0] = (uint8_t)(v >> 24);
	out[1] = (uint8_t)(v >> 16);
	out[2] = (uint8_t)(v >> 8);
	out[3] = (uint8_t)v;
}

/* The cache id of the |n| fields |f| (|l| bytes each). */
static int cache_id(const mica_kc *kc, int n, const void *const *f, const size_t *l,
		    uint8_t id[MICA_SHA256_LEN])
{
	size_t total = sizeof(CACHE_DOMAIN) - 1, off;
	uint8_t *buf;
	int err;

	for (int i = 0; i < n; i++) {
		if (l[i] > 0xffffffffu || total + 4 + l[i] < total)
			return MICA_ETOOBIG;
		total += 4 + l[i];
	}
	if (!(buf = malloc(total)))
		return MICA_ENOMEM;
	memcpy(buf, CACHE_DOMAIN, sizeof(CACHE_DOMAIN) - 1);
	off = sizeof(CACHE_DOMAIN) - 1;
	for (int i = 0; i < n; i++) {
		be32(buf + off, l[i]);
		if (l[i])
			memcpy(buf + off + 4, f[i], l[i]);
		off += 4 + l[i];
	}
	err = mica_hmac_sha256(kc->cache_key, sizeof(kc->cache_key), buf, total, id);
	mica_wipe(buf, total);
	free(buf);
	return err;
}

static size_t bucket_of(const mica_kc *kc, const uint8_t id[MICA_SHA256_LEN])
{
	uint64_t h = 0;
	for (int i = 0; i < 8; i++)
		h = (h << 8) | id[i];
	return (size_t)h & (kc->nbuckets - 1);
}

static void lru_unlink(mica_kc *kc, struct entry *e)
{
	if (kc->lru_head == e)
		kc->lru_head = e->lru_next;
	else
		e->lru_prev->lru_next = e->lru_next;
	if (kc->lru_tail == e)
		kc->lru_tail = e->lru_prev;
	else
		e->lru_next->lru_prev = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(mica_kc *kc, struct entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = kc->lru_head;
	if (kc->lru_head)
		kc->lru_head->lru_prev = e;
	else
		kc->lru_tail = e;
	kc->lru_head = e;
}

/* Unlinks |e| from every structure, wipes it and frees it. Caller holds mu. */
static void entry_drop(mica_kc *kc, struct entry *e)
{
	struct entry **pp = &kc->buckets[bucket_of(kc, e->id)];
	while (*pp && *pp != e)
		pp = &(*pp)->chain;
	if (*pp)
		*pp = e->chain;
	lru_unlink(kc, e);
	if (kc->age_head == e)
		kc->age_head = e->age_next;
	else
		e->age_prev->age_next = e->age_next;
	if (kc->age_tail == e)
		kc->age_tail = e->age_prev;
	else
		e->age_next->age_prev = e->age_prev;
	kc->st.entries--;
	mica_wipe(e, sizeof(*e));
	free(e);
}

/* Drops every entry older than the TTL; the age list is in insertion
 * order, so they are all at its head. Caller holds mu. */
static void cache_expire(mica_kc *kc, int64_t now)
{
	while (kc->age_head && now - kc->age_head->born_ms >= kc->ttl_ms) {
		entry_drop(kc, kc->age_head);
		kc->st.expirations++;
	}
}

static struct entry *cache_find(mica_kc *kc, const uint8_t id[MICA_SHA256_LEN])
{
	for (struct entry *e = kc->buckets[bucket_of(kc, id)]; e; e = e->chain)
		if (mica_ct_equal(e->id, id, MICA_SHA256_LEN))
			return e;
	return NULL;
}

/* Copies the cached value for |id| into |out| and returns 1, or returns 0
 * on a miss. Counts the hit or miss. */
static int cache_get(mica_kc *kc, const uint8_t id[MICA_SHA256_LEN], uint8_t *out, size_t cap,
		     size_t *len)
{
	struct entry *e;
	int hit = 0;
	pthread_mutex_lock(&kc->mu);
	cache_expire(kc, mica_clock_ms());
	if ((e = cache_find(kc, id)) != NULL && e->val_len <= cap) {
		memcpy(out, e->val, e->val_len);
		*len = e->val_len;
		lru_unlink(kc, e);
		lru_push_front(kc, e);
		hit = 1;
	}
	if (hit)
		kc->st.hits++;
	else
		kc->st.misses++;
	pthread_mutex_unlock(&kc->mu);
	return hit;
}

/* Caches |val| under |id|, evicting the least recently used entry when
 * full. Failure to allocate (or a value over VALUE_MAX) only means it is not
 * cached. */
static void cache_put(mica_kc *kc, const uint8_t id[MICA_SHA256_LEN], const void *val,
		      size_t val_len)
{
	struct entry *e;
	int64_t now = mica_clock_ms();
	if (val_len > VALUE_MAX)
		return;
	pthread_mutex_lock(&kc->mu);
	cache_expire(kc, now);
	if (cache_find(kc, id)) {
		/* Another thread fetched the same value meanwhile; keep its entry. */
		pthread_mutex_unlock(&kc->mu);
		return;
	}
	while (kc->st.entries >= kc->max_entries && kc->lru_tail) {
		entry_drop(kc, kc->lru_tail);
		kc->st.evictions++;
	}
	if ((e = calloc(1, sizeof(*e))) != NULL) {
		size_t b = bucket_of(kc, id);
		memcpy(e->id, id, MICA_SHA256_LEN);
		memcpy(e->val, val, val_len);
		e->val_len = val_len;
		e->born_ms = now;
		e->chain = kc->buckets[b];
		kc->buckets[b] = e;
		lru_push_front(kc, e);
		e->age_prev = kc->age_tail;
		if (kc->age_tail)
			kc->age_tail->age_next = e;
		else
			kc->age_head = e;
		kc->age_tail = e;
		kc->st.entries++;
	}
	pthread_mutex_unlock(&kc->mu);
}

void mica_kc_cache_flush(mica_kc *kc)
{
	if (!kc)
		return;
	pthread_mutex_lock(&kc->mu);
	while (kc->age_head)
		entry_drop(kc, kc->age_head);
	pthread_mutex_unlock(&kc->mu);
}

void mica_kc_stats_get(mica_kc *kc, mica_kc_stats *st)
{
	pthread_mutex_lock(&kc->mu);
	*st = kc->st;
	pthread_mutex_unlock(&kc->mu);
	st->requests = atomic_load(&kc->requests);
}

/* ---- handle pool ------------------------------------------------------------ */

static struct pooled *pool_new(mica_kc *kc, int *err)
{
	struct pooled *p = calloc(1, sizeof(*p));
	if (!p) {
		*err = MICA_ENOMEM;
		return NULL;
	}
	if ((*err = mica_httpc_new(&p->h, &kc->hopt)) != 0) {
		free(p);
		return NULL;
	}
	return p;
}

/* A handle no other thread is using: the most recently returned idle one
 * (its connection is the likeliest to be alive), or a new one. */
static struct pooled *pool_take(mica_kc *kc, int *err)
{
	struct pooled *p;
	pthread_mutex_lock(&kc->pool_mu);
	if ((p = kc->idle) != NULL)
		kc->idle = p->next;
	pthread_mutex_unlock(&kc->pool_mu);
	*err = 0;
	return p ? p : pool_new(kc, err);
}

static void pool_give(mica_kc *kc, struct pooled *p)
{
	pthread_mutex_lock(&kc->pool_mu);
	p->next = kc->idle;
	kc->idle = p;
	pthread_mutex_unlock(&kc->pool_mu);
}

/* ---- lifecycle ------------------------------------------------------------- */

void mica_kc_free(mica_kc *kc)
{
	if (!kc)
		return;
	mica_kc_cache_flush(kc);
	while (kc->idle) {
		struct pooled *p = kc->idle;
		kc->idle = p->next;
		mica_httpc_free(p->h);
		free(p);
	}
	free(kc->buckets);
	mica_wipe(kc->cache_key, sizeof(kc->cache_key));
	pthread_mutex_destroy(&kc->mu);
	pthread_mutex_destroy(&kc->pool_mu);
	free(kc->base_url);
	free(kc->ca);
	free(kc->cert);
	free(kc->key);
	free(kc);
}

static int cache_setup(mica_kc *kc, const mica_kc_options *opt)
{
	size_t n = 16;
	kc->cache_on = opt->cache_max_entries >= 0;
	kc->max_entries = opt->cache_max_entries > 0 ? (size_t)opt->cache_max_entries
						     : MICA_KC_DEFAULT_CACHE_ENTRIES;
	kc->ttl_ms = opt->cache_ttl_ms > 0 ? opt->cache_ttl_ms : MICA_KC_DEFAULT_CACHE_TTL_MS;
	/* About two buckets per entry keeps chains short. */
	while (n < 2 * kc->max_entries && n < ((size_t)1 << 24))
		n <<= 1;
	kc->nbuckets = n;
	if (!(kc->buckets = calloc(n, sizeof(*kc->buckets))))
		return MICA_ENOMEM;
	return mica_random(kc->cache_key, sizeof(kc->cache_key));
}

int mica_kc_new(mica_kc **out, const mica_kc_options *opt)
{
	mica_kc *kc;
	struct pooled *first;
	size_t ul;
	int err;

	*out = NULL;
	if (!opt || !opt->base_url || strncmp(opt->base_url, "https://", 8) != 0 ||
	    strlen(opt->base_url) <= 8 || !opt->ca_file || !*opt->ca_file || !opt->cert_file ||
	    !*opt->cert_file || !opt->key_file || !*opt->key_file || opt->timeout_ms < 0 ||
	    opt->cache_ttl_ms < 0)
		return MICA_EINVAL;
	if (!(kc = calloc(1, sizeof(*kc))))
		return MICA_ENOMEM;
	pthread_mutex_init(&kc->mu, NULL);
	pthread_mutex_init(&kc->pool_mu, NULL);
	err = MICA_ENOMEM;
	if (!(kc->base_url = strdup(opt->base_url)) || !(kc->ca = strdup(opt->ca_file)) ||
	    !(kc->cert = strdup(opt->cert_file)) || !(kc->key = strdup(opt->key_file)))
		goto fail;
	ul = strlen(kc->base_url);
	while (ul > 8 && kc->base_url[ul - 1] == '/')
		kc->base_url[--ul] = '\0';
	kc->hopt.ca_file = kc->ca;
	kc->hopt.cert_file = kc->cert;
	kc->hopt.key_file = kc->key;
	kc->hopt.timeout_ms = opt->timeout_ms;
	kc->hopt.retries = opt->retries == 0 ? 2 : opt->retries < 0 ? 0 : opt->retries;
	if ((err = cache_setup(kc, opt)) != 0)
		goto fail;
	if (!(first = pool_new(kc, &err)))
		goto fail;
	kc->idle = first;
	*out = kc;
	return 0;
fail:
	mica_kc_free(kc);
	return err;
}

/* ---- requests -------------------------------------------------------------- */

/* Key names as the Key Center accepts them; checking them here also keeps
 * them from changing the URL ("..", "?", "%"). */
static int valid_name(const char *n)
{
	size_t l = n ? strlen(n) : 0;
	if (l < 1 || l > NAME_MAX_LEN ||
	    !((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= '0' && n[0] <= '9')))
		return 0;
	for (size_t i = 0; i < l; i++) {
		char c = n[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-'))
			return 0;
	}
	return 1;
}

/* Overwrites the string member |field| of |obj| in place: jansson frees
 * without wiping, and these strings hold key material. */
static void wipe_member(json_t *obj, const char *field)
{
	json_t *v = json_object_get(obj, field);
	if (json_is_string(v))
		mica_wipe((char *)json_string_value(v), json_string_length(v));
}

/* Maps a non-2xx reply to an error (kc.h lists the table). */
static int status_error(long status, const json_t *body)
{
	const char *code =
		json_string_value(json_object_get(json_object_get(body, "error"), "code"));
	if (!code)
		code = "";
	switch (status) {
	case 400:
		return strcmp(code, "decryption_failed") == 0 || strcmp(code, "wrong_key") == 0
			       ? MICA_EAUTH
			       : MICA_EINVAL;
	case 401:
	case 403:
		return MICA_EDENIED;
	case 404:
		return MICA_ENOTFOUND;
	case 409:
		return MICA_ESTATE;
	case 413:
		return MICA_ETOOBIG;
	case 503:
		if (strcmp(code, "audit_unavailable") == 0)
			return MICA_EAUDIT;
		if (strcmp(code, "hsm_unavailable") == 0)
			return MICA_EHSM;
		if (strcmp(code, "database_unavailable") == 0)
			return MICA_EDBCONN;
		return MICA_EHTTP;
	default:
		return MICA_EHTTP;
	}
}

/* POSTs |req| (borrowed; its secret strings are the caller's to wipe) to
 * base_url + |route| + |name| and returns the parsed 2xx reply object in
 * *reply (caller wipes secret members, then decrefs). Every copy of the
 * request and reply text made here is wiped. */
static int post(mica_kc *kc, const char *route, const char *name, const json_t *req, int idempotent,
		json_t **reply)
{
	char url[1024];
	char *body = NULL;
	mica_httpc_resp r = {0};
	struct pooled *p = NULL;
	json_t *j = NULL;
	int err;

	*reply = NULL;
	MICA_BLOCKING_ENTRY(); /* a cache hit never gets here */
	if (snprintf(url, sizeof(url), "%s%s%s", kc->base_url, route, name) >= (int)sizeof(url))
		return MICA_EINVAL;
	if (!(body = json_dumps(req, JSON_COMPACT)))
		return MICA_ENOMEM;
	if (!(p = pool_take(kc, &err)))
		goto out;
	err = mica_httpc_request(p->h, "POST", url, body, strlen(body), idempotent, &r);
	pool_give(kc, p);
	atomic_fetch_add(&kc->requests, (uint64_t)r.attempts);
	if (err)
		goto out;
	if (r.body_len)
		j = json_loadb(r.body, r.body_len, JSON_REJECT_DUPLICATES, NULL);
	if (r.status < 200 || r.status > 299) {
		err = status_error(r.status, j);
		MICA_LOG(r.status >= 500 ? MICA_LOG_WARN : MICA_LOG_DEBUG,
			 "kc: POST %s%s: status %ld (%s)", route, name, r.status,
			 mica_strerror(err));
		goto out;
	}
	if (!json_is_object(j)) {
		MICA_LOG(MICA_LOG_WARN, "kc: POST %s%s: the reply is not a JSON object", route,
			 name);
		err = MICA_EBADHEADER;
		goto out;
	}
	*reply = j;
	j = NULL;
out:
	if (j) {
		wipe_member(j, "plaintext");
		json_decref(j);
	}
	if (r.body)
		mica_wipe(r.body, r.body_len);
	mica_httpc_resp_cleanup(&r);
	mica_wipe(body, strlen(body));
	free(body);
	return err;
}

/* A "kc:v<N>:..." member of |reply| as a malloc'd copy. */
static int versioned_member(const json_t *reply, const char *field, char **out)
{
	const char *v = json_string_value(json_object_get(reply, field));
	*out = NULL;
	if (!v || strncmp(v, "kc:v", 4) != 0 || strlen(v) < 7)
		return MICA_EBADHEADER;
	return (*out = strdup(v)) ? 0 : MICA_ENOMEM;
}

/* Decodes the base64 member |field| of |reply| into |out| (|cap| bytes).
 * MICA_EBADHEADER if it is missing, not base64, or longer than |cap|. */
static int b64_member(const json_t *reply, const char *field, uint8_t *out, size_t cap, size_t *len)
{
	json_t *v = json_object_get(reply, field);
	*len = 0;
	if (!json_is_string(v) ||
	    mica_base64_decode(json_string_value(v), json_string_length(v), out, cap, len) != 0) {
		mica_wipe(out, cap);
		*len = 0;
		return MICA_EBADHEADER;
	}
	return 0;
}

int mica_kc_datakey(mica_kc *kc, const char *key_name, int bits, const json_t *context,
		    uint8_t *plaintext_out, size_t cap, char **ciphertext_out)
{
	json_t *req = NULL, *reply = NULL;
	uint8_t dk[MICA_KC_DATAKEY_MAX];
	size_t want = (size_t)bits / 8, got = 0;
	int err;

	if (ciphertext_out)
		*ciphertext_out = NULL;
	if (!kc || !valid_name(key_name) || (bits != 128 && bits != 256) ||
	    !json_is_object(context) || !plaintext_out || !ciphertext_out)
		return MICA_EINVAL;
	if (cap < want)
		return MICA_ETOOBIG;
	if (!(req = json_pack("{s:i,s:O}", "bits", bits, "context", context)))
		return MICA_ENOMEM;
	/* Not idempotent: a retry after a lost reply would mint a second key. */
	err = post(kc, "/v1/datakey/plaintext/", key_name, req, 0, &reply);
	if (!err)
		err = b64_member(reply, "plaintext", dk, sizeof(dk), &got);
	if (!err && got != want)
		err = MICA_EBADHEADER;
	if (!err)
		err = versioned_member(reply, "ciphertext", ciphertext_out);
	if (!err)
		memcpy(plaintext_out, dk, want);
	else
		mica_wipe(plaintext_out, cap);
	mica_wipe(dk, sizeof(dk));
	if (reply) {
		wipe_member(reply, "plaintext");
		json_decref(reply);
	}
	json_decref(req);
	return err;
}

/* The decrypt call shared by mica_kc_decrypt and mica_kc_decrypt_datakey:
 * the reply's plaintext as a malloc'd buffer (caller wipes and frees). */
static int decrypt_call(mica_kc *kc, const char *key_name, const char *ciphertext,
			const json_t *context, uint8_t **pt, size_t *pt_len)
{
	json_t *req, *reply = NULL, *v;
	int err;

	*pt = NULL;
	*pt_len = 0;
	if (!(req = json_pack("{s:s,s:O}", "ciphertext", ciphertext, "context", context)))
		return MICA_ENOMEM;
	err = post(kc, "/v1/decrypt/", key_name, req, 1, &reply);
	json_decref(req);
	if (err)
		return err;
	v = json_object_get(reply, "plaintext");
	if (!json_is_string(v) ||
	    mica_base64_decode_alloc(json_string_value(v), json_string_length(v), pt, pt_len) != 0)
		err = MICA_EBADHEADER;
	wipe_member(reply, "plaintext");
	json_decref(reply);
	return err;
}

int mica_kc_decrypt_datakey(mica_kc *kc, const char *key_name, const char *ciphertext,
			    const json_t *context, uint8_t *out, size_t cap, size_t *len)
{
	uint8_t id[MICA_SHA256_LEN], *pt = NULL;
	size_t pt_len = 0;
	char *canon = NULL;
	int err;

	if (len)
		*len = 0;
	if (!kc || !valid_name(key_name) || !ciphertext || !*ciphertext ||
	    !json_is_object(context) || !out || !len)
		return MICA_EINVAL;
	if (kc->cache_on) {
		/* The Key Center's canonical form, so member order never splits
		 * one context into two cache entries. */
		if (!(canon = json_dumps(context,
					 JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)))
			return MICA_ENOMEM;
		const void *f[4] = {"datakey", key_name, ciphertext, canon};
		size_t l[4] = {7, strlen(key_name), strlen(ciphertext), strlen(canon)};
		err = cache_id(kc, 4, f, l, id);
		free(canon);
		if (err)
			return err;
		if (cache_get(kc, id, out, cap, len))
			return 0;
	} else {
		pthread_mutex_lock(&kc->mu);
		kc->st.misses++;
		pthread_mutex_unlock(&kc->mu);
	}
	if ((err = decrypt_call(kc, key_name, ciphertext, context, &pt, &pt_len)) != 0)
		goto out;
	if (pt_len != 16 && pt_len != 32) {
		err = MICA_EBADHEADER; /* a secret, not a data key */
		goto out;
	}
	if (pt_len > cap) {
		err = MICA_ETOOBIG;
		goto out;
	}
	memcpy(out, pt, pt_len);
	*len = pt_len;
	if (kc->cache_on)
		cache_put(kc, id, pt, pt_len);
out:
	if (pt) {
		mica_wipe(pt, pt_len);
		free(pt);
	}
	mica_wipe(id, sizeof(id));
	if (err)
		mica_wipe(out, cap);
	return err;
}

/* The error of one failed batch item, from its {"error": {"code"}} (the
 * codes of docs/api/keycenter.md's decrypt table). */
static int item_error(const json_t *item)
{
	const char *code =
		json_string_value(json_object_get(json_object_get(item, "error"), "code"));
	if (!code)
		return MICA_EBADHEADER;
	if (strcmp(code, "decryption_failed") == 0 || strcmp(code, "wrong_key") == 0)
		return MICA_EAUTH;
	if (strcmp(code, "unknown_key") == 0 || strcmp(code, "unknown_version") == 0)
		return MICA_ENOTFOUND;
	if (strcmp(code, "version_below_minimum") == 0 || strcmp(code, "forbidden") == 0)
		return MICA_EDENIED;
	return MICA_EINVAL;
}

/* One batch request for the items idx[0..n) of a mica_kc_decrypt_datakeys
 * call; fills their outputs and caches what succeeded. Returns 0 when the
 * Key Center answered every item (each item's own result in errs[]), else
 * the request's error, also set on every item of the chunk. */
static int decrypt_chunk(mica_kc *kc, const char *key_name, const size_t *idx, size_t n,
			 const char *const *cts, json_t *const *ctxs,
			 uint8_t ids[][MICA_SHA256_LEN], uint8_t *out, size_t cap, size_t *lens,
			 int *errs)
{
	json_t *req = json_object(), *in = json_array(), *reply = NULL, *res;
	int err = 0;

	if (!req || !in || json_object_set(req, "batch_input", in) != 0)
		err = MICA_ENOMEM;
	for (size_t k = 0; !err && k < n; k++)
		if (json_array_append_new(in, json_pack("{s:s,s:O}", "ciphertext", cts[idx[k]],
							"context", ctxs[idx[k]])) != 0)
			err = MICA_ENOMEM;
	if (!err)
		err = post(kc, "/v1/decrypt/", key_name, req, 1, &reply);
	res = json_object_get(reply, "batch_results");
	if (!err && (!json_is_array(res) || json_array_size(res) != n))
		err = MICA_EBADHEADER;
	for (size_t k = 0; k < n; k++) {
		size_t i = idx[k], got = 0;
		uint8_t *o = out + i * cap;
		json_t *item = err ? NULL : json_array_get(res, k);
		int e = err;
		if (!e && json_object_get(item, "error"))
			e = item_error(item);
		else if (!e && (b64_member(item, "plaintext", o, cap, &got) != 0 ||
				(got != 16 && got != 32)))
			e = MICA_EBADHEADER;
		if (item)
			wipe_member(item, "plaintext");
		errs[i] = e;
		lens[i] = e ? 0 : got;
		if (e)
			mica_wipe(o, cap);
		else if (kc->cache_on)
			cache_put(kc, ids[i], o, got);
	}
	json_decref(reply);
	json_decref(in);
	json_decref(req);
	return err;
}

int mica_kc_decrypt_datakeys(mica_kc *kc, const char *key_name, size_t n,
			     const char *const *ciphertexts, json_t *const *contexts, uint8_t *out,
			     size_t cap, size_t *lens, int *errs)
{
	uint8_t(*ids)[MICA_SHA256_LEN] = NULL;
	size_t *miss = NULL, nmiss = 0;
	int err = 0;

	if (!kc || !valid_name(key_name) ||
	    (n && (!ciphertexts || !contexts || !out || !lens || !errs)) || cap < 16)
		return MICA_EINVAL;
	for (size_t i = 0; i < n; i++) {
		lens[i] = 0;
		errs[i] = MICA_EINVAL;
		if (!ciphertexts[i] || !*ciphertexts[i] || !json_is_object(contexts[i]))
			return MICA_EINVAL;
	}
	if (!n)
		return 0;
	if (!(ids = calloc(n, sizeof(*ids))) || !(miss = calloc(n, sizeof(*miss)))) {
		err = MICA_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (kc->cache_on) {
			char *canon = json_dumps(contexts[i],
						 JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
			if (!canon) {
				err = MICA_ENOMEM;
				goto out;
			}
			const void *f[4] = {"datakey", key_name, ciphertexts[i], canon};
			size_t l[4] = {7, strlen(key_name), strlen(ciphertexts[i]), strlen(canon)};
			err = cache_id(kc, 4, f, l, ids[i]);
			free(canon);
			if (err)
				goto out;
			if (cache_get(kc, ids[i], out + i * cap, cap, &lens[i])) {
				errs[i] = 0;
				continue;
			}
		}
		miss[nmiss++] = i;
	}
	for (size_t at = 0; at < nmiss; at += MICA_KC_BATCH_MAX) {
		size_t m = nmiss - at < MICA_KC_BATCH_MAX ? nmiss - at : MICA_KC_BATCH_MAX;
		int e = decrypt_chunk(kc, key_name, miss + at, m, ciphertexts, contexts, ids, out,
				      cap, lens, errs);
		if (e && !err)
			err = e;
	}
out:
	if (ids) {
		mica_wipe(ids, n * sizeof(*ids));
		free(ids);
	}
	free(miss);
	for (size_t i = 0; err == MICA_ENOMEM && i < n; i++)
		if (errs[i])
			errs[i] = err; /* items never asked */
	return err;
}

int mica_kc_encrypt(mica_kc *kc, const char *key_name, const void *pt, size_t pt_len,
		    const json_t *context, char **ciphertext_out)
{
	json_t *req = NULL, *reply = NULL;
	char *b64 = NULL;
	size_t bl = 0;
	int err;

	if (ciphertext_out)
		*ciphertext_out = NULL;
	if (!kc || !valid_name(key_name) || (!pt && pt_len) || !json_is_object(context) ||
	    !ciphertext_out)
		return MICA_EINVAL;
	if ((err = mica_base64_encode_alloc(pt_len ? pt : "", pt_len, &b64, &bl)) != 0)
		return err;
	if (!(req = json_pack("{s:s,s:O}", "plaintext", b64, "context", context))) {
		err = MICA_ENOMEM;
		goto out;
	}
	/* Not idempotent: each call makes a new ciphertext (fresh nonce). */
	err = post(kc, "/v1/encrypt/", key_name, req, 0, &reply);
	if (!err)
		err = versioned_member(reply, "ciphertext", ciphertext_out);
out:
	if (req) {
		wipe_member(req, "plaintext");
		json_decref(req);
	}
	json_decref(reply);
	mica_wipe(b64, bl);
	free(b64);
	return err;
}

int mica_kc_decrypt(mica_kc *kc, const char *key_name, const char *ciphertext,
		    const json_t *context, uint8_t **pt_out, size_t *pt_len)
{
	if (pt_out)
		*pt_out = NULL;
	if (pt_len)
		*pt_len = 0;
	if (!kc || !valid_name(key_name) || !ciphertext || !*ciphertext ||
	    !json_is_object(context) || !pt_out || !pt_len)
		return MICA_EINVAL;
	return decrypt_call(kc, key_name, ciphertext, context, pt_out, pt_len);
}

int mica_kc_hmac(mica_kc *kc, const char *key_name, const void *input, size_t input_len,
		 char **hmac_out)
{
	json_t *req = NULL, *reply = NULL;
	uint8_t id[MICA_SHA256_LEN];
	char cached[VALUE_MAX + 1];
	char *b64 = NULL;
	size_t bl = 0, cl = 0;
	int err;

	if (hmac_out)
		*hmac_out = NULL;
	if (!kc || !valid_name(key_name) || (!input && input_len) || !hmac_out)
		return MICA_EINVAL;
	if (kc->cache_on) {
		const void *f[3] = {"hmac", key_name, input};
		size_t l[3] = {4, strlen(key_name), input_len};
		if ((err = cache_id(kc, 3, f, l, id)) != 0)
			return err;
		if (cache_get(kc, id, (uint8_t *)cached, VALUE_MAX, &cl)) {
			cached[cl] = '\0';
			return (*hmac_out = strdup(cached)) ? 0 : MICA_ENOMEM;
		}
	} else {
		pthread_mutex_lock(&kc->mu);
		kc->st.misses++;
		pthread_mutex_unlock(&kc->mu);
	}
	if ((err = mica_base64_encode_alloc(input_len ? input : "", input_len, &b64, &bl)) != 0)
		return err;
	if (!(req = json_pack("{s:s}", "input", b64))) {
		err = MICA_ENOMEM;
		goto out;
	}
	err = post(kc, "/v1/hmac/", key_name, req, 1, &reply);
	if (!err)
		err = versioned_member(reply, "hmac", hmac_out);
	if (!err && kc->cache_on)
		cache_put(kc, id, *hmac_out, strlen(*hmac_out));
out:
	if (req) {
		/* The input is often personal data (a phone number, an email). */
		wipe_member(req, "input");
		json_decref(req);
	}
	json_decref(reply);
	mica_wipe(b64, bl);
	free(b64);
	return err;
}
