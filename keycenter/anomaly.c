/* anomaly.c - sliding-window counters behind the Key Center's rate and
 * denial-burst alerts (anomaly.h). Two bounded hash tables, one keyed by
 * (principal, key) and one by principal, each with an LRU list so the
 * stalest entry is evicted when a table is full; one mutex guards both.
 */
#include "keycenter/anomaly.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"

#define NO_ALERT INT64_MIN

struct entry {
	struct entry *chain;	     /* next in the hash bucket */
	struct entry *newer, *older; /* LRU list */
	uint64_t hash;
	int64_t head;	    /* absolute index (now_ms / bucket_ms) of the newest bucket */
	int64_t last_alert; /* now_ms of the last report, NO_ALERT if none */
	uint64_t total;	    /* sum of counts[] */
	uint32_t counts[KC_ANOMALY_BUCKETS];
	size_t id_len;
	char id[]; /* principal '\0' key '\0' (key "" in the principal table) */
};

struct table {
	struct entry **slots;
	size_t mask; /* slots - 1, a power of two minus one */
	size_t n;
	struct entry *newest, *oldest;
};

struct kc_anomaly {
	pthread_mutex_t lock;
	uint32_t max_requests, max_denials;
	int64_t window_ms, bucket_ms;
	int nbuckets;
	size_t max_tracked;
	uint8_t hash_key[16];
	struct table pairs, principals;
	uint64_t evictions;
};

const char *kc_alert_kind_name(enum kc_alert_kind kind)
{
	switch (kind) {
	case KC_ALERT_RATE:
		return "rate";
	case KC_ALERT_DENIAL_BURST:
		return "denial_burst";
	default:
		return "unknown";
	}
}

/* ---- SipHash-2-4 (Aumasson and Bernstein), keyed per detector ---------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = ROTL(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = ROTL(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = ROTL(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = ROTL(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = ROTL(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = ROTL(v2, 32);                                                                 \
	} while (0)

static uint64_t load_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t siphash(const uint8_t key[16], const void *data, size_t len)
{
	const uint8_t *in = data;
	uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	uint64_t b = (uint64_t)len << 56;
	size_t i, full = len - len % 8;

	for (i = 0; i < full; i += 8) {
		uint64_t m = load_le64(in + i);
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; j < len % 8; j++)
		b |= (uint64_t)in[full + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- tables ------------------------------------------------------------ */

static int table_init(struct table *t, size_t max_entries)
{
	size_t slots = 1;

	while (slots < max_entries)
		slots <<= 1;
	t->slots = calloc(slots, sizeof(*t->slots));
	if (!t->slots)
		return MICA_ENOMEM;
	t->mask = slots - 1;
	return 0;
}

static void table_cleanup(struct table *t)
{
	struct entry *e = t->newest, *next;

	for (; e; e = next) {
		next = e->older;
		free(e);
	}
	free(t->slots);
	memset(t, 0, sizeof(*t));
}

static void lru_unlink(struct table *t, struct entry *e)
{
	if (e->newer)
		e->newer->older = e->older;
	else
		t->newest = e->older;
	if (e->older)
		e->older->newer = e->newer;
	else
		t->oldest = e->newer;
	e->newer = e->older = NULL;
}

static void lru_push_newest(struct table *t, struct entry *e)
{
	e->newer = NULL;
	e->older = t->newest;
	if (t->newest)
		t->newest->newer = e;
	t->newest = e;
	if (!t->oldest)
		t->oldest = e;
}

static void table_remove(struct table *t, struct entry *e)
{
	struct entry **pp = &t->slots[e->hash & t->mask];

	while (*pp != e)
		pp = &(*pp)->chain;
	*pp = e->chain;
	lru_unlink(t, e);
	t->n--;
}

/* Finds the entry for |id| or creates it (evicting the stalest entry when
 * the table is full), and marks it most recently used. NULL only when out of
 * memory. */
static struct entry *table_get(kc_anomaly *a, struct table *t, const char *id, size_t id_len,
			       int64_t bucket)
{
	uint64_t h = siphash(a->hash_key, id, id_len);
	struct entry *e;

	for (e = t->slots[h & t->mask]; e; e = e->chain) {
		if (e->hash == h && e->id_len == id_len && memcmp(e->id, id, id_len) == 0) {
			lru_unlink(t, e);
			lru_push_newest(t, e);
			return e;
		}
	}
	if (t->n >= a->max_tracked) {
		struct entry *stale = t->oldest;
		table_remove(t, stale);
		free(stale);
		a->evictions++;
	}
	e = calloc(1, sizeof(*e) + id_len);
	if (!e)
		return NULL;
	e->hash = h;
	e->head = bucket;
	e->last_alert = NO_ALERT;
	e->id_len = id_len;
	memcpy(e->id, id, id_len);
	e->chain = t->slots[h & t->mask];
	t->slots[h & t->mask] = e;
	lru_push_newest(t, e);
	t->n++;
	return e;
}

/* Moves |e|'s window forward to |bucket|, clearing the buckets that fell
 * out. A bucket older than the newest one (the clock went back) counts as
 * the newest. */
static void slide(const kc_anomaly *a, struct entry *e, int64_t bucket)
{
	if (bucket <= e->head)
		return;
	if (bucket - e->head >= a->nbuckets) {
		memset(e->counts, 0, sizeof(e->counts));
		e->total = 0;
	} else {
		for (int64_t b = e->head + 1; b <= bucket; b++) {
			uint32_t *c = &e->counts[b % a->nbuckets];
			e->total -= *c;
			*c = 0;
		}
	}
	e->head = bucket;
}

/* Counts one event on |e| and says whether it is the first time in a window
 * that the count exceeds |threshold| (0 = never). */
static bool count_and_check(const kc_anomaly *a, struct entry *e, int64_t bucket, int64_t now_ms,
			    uint32_t threshold)
{
	uint32_t *c;

	slide(a, e, bucket);
	c = &e->counts[e->head % a->nbuckets];
	if (*c < UINT32_MAX) {
		(*c)++;
		e->total++;
	}
	if (threshold == 0 || e->total <= threshold)
		return false;
	if (e->last_alert != NO_ALERT && now_ms - e->last_alert < a->window_ms)
		return false;
	e->last_alert = now_ms;
	return true;
}

static void fill_event(const kc_anomaly *a, kc_anomaly_event *ev, enum kc_alert_kind kind,
		       const struct entry *e, uint32_t threshold, int64_t now_ms)
{
	size_t plen = strlen(e->id);

	memset(ev, 0, sizeof(*ev));
	ev->kind = kind;
	memcpy(ev->principal, e->id, plen + 1);
	memcpy(ev->key, e->id + plen + 1, e->id_len - plen - 1);
	ev->count = e->total;
	ev->threshold = threshold;
	ev->window_ms = a->window_ms;
	ev->at_ms = now_ms;
}

/* ---- public API -------------------------------------------------------- */

int kc_anomaly_new(const kc_anomaly_options *opts, kc_anomaly **out)
{
	kc_anomaly *a;
	int64_t window;
	size_t cap;
	int rc;

	if (out)
		*out = NULL;
	if (!opts || !out)
		return MICA_EINVAL;
	window = opts->window_ms ? opts->window_ms : KC_ANOMALY_DEFAULT_WINDOW_MS;
	cap = opts->max_tracked ? opts->max_tracked : KC_ANOMALY_DEFAULT_MAX_TRACKED;
	if (window < 1 || window > KC_ANOMALY_MAX_WINDOW_MS || cap > KC_ANOMALY_MAX_TRACKED)
		return MICA_EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return MICA_ENOMEM;
	a->max_requests = opts->max_requests_per_window;
	a->max_denials = opts->max_denials_per_window;
	a->window_ms = window;
	a->bucket_ms = (window + KC_ANOMALY_BUCKETS - 1) / KC_ANOMALY_BUCKETS;
	a->nbuckets = (int)((window + a->bucket_ms - 1) / a->bucket_ms);
	a->max_tracked = cap;
	if ((rc = mica_random(a->hash_key, sizeof(a->hash_key))) != 0)
		goto fail;
	if ((rc = table_init(&a->pairs, cap)) != 0 || (rc = table_init(&a->principals, cap)) != 0)
		goto fail;
	if (pthread_mutex_init(&a->lock, NULL) != 0) {
		rc = MICA_ENOMEM;
		goto fail;
	}
	*out = a;
	return 0;
fail:
	table_cleanup(&a->principals);
	table_cleanup(&a->pairs);
	free(a);
	return rc;
}

void kc_anomaly_free(kc_anomaly *a)
{
	if (!a)
		return;
	table_cleanup(&a->pairs);
	table_cleanup(&a->principals);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

int kc_anomaly_record(kc_anomaly *a, const char *principal, const char *key, int denied,
		      int64_t now_ms, kc_anomaly_event ev[static KC_ANOMALY_MAX_EVENTS])
{
	char id[2 * (KC_ANOMALY_NAME_MAX + 1)];
	size_t plen, klen;
	int64_t bucket;
	struct entry *e;
	int n = 0;

	if (!a || !principal || !ev || now_ms < 0)
		return MICA_EINVAL;
	if (!key)
		key = "";
	plen = strnlen(principal, KC_ANOMALY_NAME_MAX + 1);
	klen = strnlen(key, KC_ANOMALY_NAME_MAX + 1);
	if (plen == 0 || plen > KC_ANOMALY_NAME_MAX || klen > KC_ANOMALY_NAME_MAX)
		return MICA_EINVAL;
	memcpy(id, principal, plen + 1);
	memcpy(id + plen + 1, key, klen + 1);
	bucket = now_ms / a->bucket_ms;

	pthread_mutex_lock(&a->lock);
	/* Out of memory loses one count, never the request: alerting is
	 * advisory, and the audit trail still has every request. */
	e = table_get(a, &a->pairs, id, plen + klen + 2, bucket);
	if (e && count_and_check(a, e, bucket, now_ms, a->max_requests))
		fill_event(a, &ev[n++], KC_ALERT_RATE, e, a->max_requests, now_ms);
	if (denied) {
		/* The principal table's ids carry an empty key: "name\0\0". */
		id[plen + 1] = '\0';
		e = table_get(a, &a->principals, id, plen + 2, bucket);
		if (e && count_and_check(a, e, bucket, now_ms, a->max_denials))
			fill_event(a, &ev[n++], KC_ALERT_DENIAL_BURST, e, a->max_denials, now_ms);
	}
	pthread_mutex_unlock(&a->lock);
	return n;
}

void kc_anomaly_stats(kc_anomaly *a, struct kc_anomaly_stats *out)
{
	if (!out)
		return;
	memset(out, 0, sizeof(*out));
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	out->pairs = a->pairs.n;
	out->principals = a->principals.n;
	out->evictions = a->evictions;
	pthread_mutex_unlock(&a->lock);
}
