/* kvcache.c - the in-process cache of Redis values kept exact by client
 * tracking (see kvcache.h): a bounded chained hash table, the dedicated
 * connection (CLIENT ID, CLIENT TRACKING ... REDIRECT <self> BCAST PREFIX,
 * SUBSCRIBE __redis__:invalidate), the parser of its invalidation messages,
 * and the background thread that applies them and reconnects with backoff.
 */
#define _GNU_SOURCE /* pipe2 */
#include "kvcache.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "crypto.h"
#include "log.h"

#define CHANNEL "__redis__:invalidate"
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000
/* A PING in RESP2, which Redis answers with ["pong", ""] on a subscribed
 * connection, behind every invalidation it queued before. */
static const char PING[] = "*1\r\n$4\r\nPING\r\n";

struct entry {
	struct entry *next;
	uint64_t hash;
	int64_t at_ms;
	size_t klen, vlen;
	char data[]; /* key, NUL, value, NUL */
};

struct mica_kvcache {
	pthread_mutex_t mu;
	char *socket_path, *username, *password; /* password wiped on free */
	int timeout_ms;
	char *prefix;
	size_t prefix_len, max_entries;
	int64_t max_age_ms;
	int64_t sync_window_ms, heartbeat_ms;
	int (*on_sync)(void *arg);
	void *on_sync_arg;

	/* Everything below is guarded by |mu|. */
	struct entry **slots;
	size_t nslots, count, hand;
	uint64_t seed;
	uint64_t epoch; /* the ticket counter */
	mica_kv *conn;	/* tracking connection; opened and closed only by the thread */
	redisContext *ctx;
	int up;		  /* connection subscribed and the table valid */
	int broken;	  /* a reader saw EOF or an error; the thread replaces conn */
	int outage_noted; /* the current outage has been logged */
	/* The heartbeat: one PING at a time on the tracking connection. Its
	 * PONG proves that every invalidation Redis queued before the PING was
	 * sent has been applied, so |synced_ms| (when that PING was sent) is
	 * the last time the table is known to have been exact. */
	int64_t synced_ms, ping_sent_ms;
	int ping_outstanding;
	int lapsed;	  /* the table was dropped for want of a heartbeat */
	int sync_pending; /* on_sync has not yet succeeded on this connection */
	struct mica_kvcache_stats st;

	int wake[2]; /* self-pipe: stop, or a broken connection seen by a reader */
	atomic_int stopping;
	pthread_t thread;
	int thread_started;
};

/* ---- the table --------------------------------------------------------------- */

/* FNV-1a over a random seed: keys are not chosen freely by clients (session
 * keys are hashes of tokens), the seed only spreads unlucky sets. */
static uint64_t key_hash(uint64_t seed, const char *key, size_t len)
{
	uint64_t h = 1469598103934665603ULL ^ seed;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)key[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static struct entry **find_link(mica_kvcache *c, const char *key, size_t klen, uint64_t h)
{
	struct entry **link = &c->slots[h & (c->nslots - 1)];
	for (; *link; link = &(*link)->next)
		if ((*link)->hash == h && (*link)->klen == klen &&
		    memcmp((*link)->data, key, klen) == 0)
			return link;
	return link;
}

static void unlink_entry(mica_kvcache *c, struct entry **link)
{
	struct entry *e = *link;
	*link = e->next;
	free(e);
	c->count--;
}

static int remove_key(mica_kvcache *c, const char *key, size_t klen)
{
	struct entry **link = find_link(c, key, klen, key_hash(c->seed, key, klen));
	if (!*link)
		return 0;
	unlink_entry(c, link);
	return 1;
}

static void table_flush(mica_kvcache *c)
{
	for (size_t i = 0; i < c->nslots; i++)
		while (c->slots[i])
			unlink_entry(c, &c->slots[i]);
	c->epoch++;
	c->st.flushes++;
}

/* Makes room for one entry going to slot |slot|: the head of that slot if
 * any, else the first entry after a rotating hand. */
static void evict_one(mica_kvcache *c, size_t slot)
{
	if (!c->slots[slot]) {
		for (size_t n = 0; n < c->nslots && !c->slots[c->hand]; n++)
			c->hand = (c->hand + 1) & (c->nslots - 1);
		slot = c->hand;
		c->hand = (c->hand + 1) & (c->nslots - 1);
	}
	if (c->slots[slot]) {
		unlink_entry(c, &c->slots[slot]);
		c->st.evictions++;
	}
}

/* ---- invalidation messages ------------------------------------------------------ */

static int is_str(const redisReply *r, const char *s)
{
	size_t n = strlen(s);
	return r && r->type == REDIS_REPLY_STRING && r->len == n && memcmp(r->str, s, n) == 0;
}

enum mica__kvcache_msg
mica__kvcache_msg_parse(const redisReply *r, void (*on_key)(void *arg, const char *key, size_t len),
			void *arg)
{
	if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
	    !is_str(r->element[0], "message") || !is_str(r->element[1], CHANNEL))
		return MICA__KVCACHE_OTHER;
	const redisReply *p = r->element[2];
	if (!p || p->type != REDIS_REPLY_ARRAY)
		return MICA__KVCACHE_FLUSH; /* nil: flush; anything else: unsure */
	for (size_t i = 0; i < p->elements; i++)
		if (!p->element[i] || p->element[i]->type != REDIS_REPLY_STRING)
			return MICA__KVCACHE_FLUSH;
	for (size_t i = 0; i < p->elements; i++)
		if (on_key)
			on_key(arg, p->element[i]->str, p->element[i]->len);
	return MICA__KVCACHE_KEYS;
}

int mica__kvcache_is_pong(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	       is_str(r->element[0], "pong");
}

static void invalidate_key(void *arg, const char *key, size_t len)
{
	mica_kvcache *c = arg;
	remove_key(c, key, len);
	c->st.invalidations++;
}

/* Marks the connection lost: the table is emptied and stays unused until
 * the thread has reconnected. Called with |mu| held. */
static void lose(mica_kvcache *c, const char *why)
{
	if (!c->up)
		return;
	c->up = 0;
	c->broken = 1;
	table_flush(c);
	if (!c->outage_noted)
		MICA_LOG(MICA_LOG_WARN,
			 "kvcache: invalidation connection lost (%s); cache off until "
			 "reconnected",
			 why);
	c->outage_noted = 1;
	ssize_t w = write(c->wake[1], "b", 1);
	(void)w; /* a full pipe already wakes the thread */
}

static int in_sync(mica_kvcache *c, int64_t now);

/* Applies every complete reply in the reader. Called with |mu| held. */
static void apply_replies(mica_kvcache *c)
{
	void *reply = NULL;
	while (c->up) {
		if (redisReaderGetReply(c->ctx->reader, &reply) != REDIS_OK) {
			lose(c, "protocol error");
			return;
		}
		if (!reply)
			return;
		enum mica__kvcache_msg m = mica__kvcache_msg_parse(reply, invalidate_key, c);
		if (m == MICA__KVCACHE_KEYS)
			c->epoch++;
		else if (m == MICA__KVCACHE_FLUSH)
			table_flush(c);
		else if (mica__kvcache_is_pong(reply) && c->ping_outstanding) {
			/* A silence nobody looked up during still drops the table. */
			in_sync(c, mica_clock_ms());
			if (c->lapsed && c->outage_noted) {
				MICA_LOG(MICA_LOG_INFO,
					 "kvcache: Redis answers the heartbeat again");
				c->outage_noted = 0;
			}
			c->ping_outstanding = 0;
			c->synced_ms = c->ping_sent_ms;
			c->lapsed = 0;
		}
		freeReplyObject(reply);
	}
}

/* Sends the next PING when none is outstanding and the last one is
 * |heartbeat_ms| old. Called with |mu| held, by the thread. */
static void heartbeat(mica_kvcache *c, int64_t now)
{
	if (!c->up || c->ping_outstanding || now - c->ping_sent_ms < c->heartbeat_ms)
		return;
	ssize_t n = send(c->ctx->fd, PING, sizeof(PING) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n != (ssize_t)sizeof(PING) - 1) {
		/* A 14-byte send fails only on a dead or jammed connection. */
		lose(c, n < 0 ? strerror(errno) : "short write");
		return;
	}
	c->ping_sent_ms = now;
	c->ping_outstanding = 1;
}

/* true while the table may be trusted: the last answered heartbeat is at
 * most |sync_window_ms| old. When it is older, everything held is dropped
 * (and the ticket counter moves), once per lapse, so no entry kept through
 * a silence (Redis paused, a connection dead without a FIN) is served after
 * it. Called with |mu| held. */
static int in_sync(mica_kvcache *c, int64_t now)
{
	if (!c->up)
		return 0;
	if (now - c->synced_ms <= c->sync_window_ms)
		return 1;
	if (!c->lapsed) {
		c->lapsed = 1;
		table_flush(c);
		c->st.lapses++;
		if (!c->outage_noted)
			MICA_LOG(MICA_LOG_WARN,
				 "kvcache: Redis has not answered a heartbeat for %lld "
				 "ms; cache off until it does",
				 (long long)(now - c->synced_ms));
		c->outage_noted = 1;
	}
	return 0;
}

/* The barrier: reads, without blocking, everything Redis has written to the
 * tracking connection and applies it. Called with |mu| held. */
static void drain(mica_kvcache *c)
{
	char buf[16384];
	apply_replies(c);
	while (c->up) {
		ssize_t n = recv(c->ctx->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n > 0) {
			if (redisReaderFeed(c->ctx->reader, buf, (size_t)n) != REDIS_OK) {
				lose(c, "out of memory");
				return;
			}
			apply_replies(c);
		} else if (n == 0) {
			lose(c, "closed by Redis");
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return;
		} else if (errno != EINTR) {
			lose(c, strerror(errno));
		}
	}
}

/* ---- the connection ---------------------------------------------------------- */

static void config_of(const mica_kvcache *c, struct mica_kv_config *cfg)
{
	*cfg = (struct mica_kv_config){.socket_path = c->socket_path,
				       .username = c->username,
				       .password = c->password,
				       .timeout_ms = c->timeout_ms};
}

/* Opens a connection that tracks the prefix and is subscribed to its own
 * invalidations. No lock held (it blocks). */
static int tracking_open(mica_kvcache *c, mica_kv **out)
{
	struct mica_kv_config cfg;
	mica_kv *kv = NULL;
	redisReply *r = NULL;
	char id[24];
	int rc;

	*out = NULL;
	config_of(c, &cfg);
	if ((rc = mica__kv_open_quiet(&kv, &cfg)) != 0)
		return rc;
	const char *id_argv[2] = {"CLIENT", "ID"};
	if ((rc = mica_kv_command(kv, &r, 2, id_argv, NULL)) != 0)
		goto out;
	if (r->type != REDIS_REPLY_INTEGER) {
		rc = MICA_EKV;
		goto out;
	}
	snprintf(id, sizeof(id), "%lld", r->integer);
	freeReplyObject(r);
	r = NULL;
	const char *tr_argv[8] = {"CLIENT", "TRACKING", "on",	  "REDIRECT",
				  id,	    "BCAST",	"PREFIX", c->prefix};
	if ((rc = mica_kv_command(kv, NULL, 8, tr_argv, NULL)) != 0)
		goto out;
	/* From here Redis may push messages: nothing else is sent on |kv|. */
	const char *sub_argv[2] = {"SUBSCRIBE", CHANNEL};
	if ((rc = mica_kv_command(kv, &r, 2, sub_argv, NULL)) != 0)
		goto out;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !is_str(r->element[0], "subscribe"))
		rc = MICA_EKV;
out:
	freeReplyObject(r);
	if (rc == 0 && !mica__kv_context(kv))
		rc = MICA_EKVCONN;
	if (rc)
		mica_kv_close(&kv);
	*out = kv;
	return rc;
}

/* Makes |kv| the tracking connection: from now on the table is valid, and
 * starts empty. */
static void install(mica_kvcache *c, mica_kv *kv)
{
	pthread_mutex_lock(&c->mu);
	c->conn = kv;
	c->ctx = mica__kv_context(kv);
	c->broken = 0;
	c->up = 1;
	table_flush(c);
	/* The SUBSCRIBE reply has just come back: exact as of now. */
	c->synced_ms = c->ping_sent_ms = mica_clock_ms();
	c->ping_outstanding = 0;
	c->lapsed = 0;
	c->sync_pending = c->on_sync != NULL;
	if (c->outage_noted)
		MICA_LOG(MICA_LOG_INFO, "kvcache: invalidation connection restored");
	c->outage_noted = 0;
	drain(c); /* messages read along with the SUBSCRIBE reply */
	pthread_mutex_unlock(&c->mu);
}

/* Takes a broken connection away from the readers; the caller closes it. */
static mica_kv *uninstall(mica_kvcache *c)
{
	pthread_mutex_lock(&c->mu);
	mica_kv *kv = c->conn;
	lose(c, "closed");
	c->conn = NULL;
	c->ctx = NULL;
	c->broken = 0;
	pthread_mutex_unlock(&c->mu);
	return kv;
}

static void wake_drain(mica_kvcache *c)
{
	char buf[64];
	while (read(c->wake[0], buf, sizeof(buf)) > 0)
		;
}

/* Waits up to |ms| for a wake-up; returns 1 when stopping. */
static int nap(mica_kvcache *c, int ms)
{
	struct pollfd p = {.fd = c->wake[0], .events = POLLIN};
	if (poll(&p, 1, ms) > 0)
		wake_drain(c);
	return atomic_load(&c->stopping);
}

static void note_connect_failure(mica_kvcache *c, int rc)
{
	pthread_mutex_lock(&c->mu);
	if (!c->outage_noted)
		MICA_LOG(MICA_LOG_WARN,
			 "kvcache: cannot open the invalidation connection (%s); "
			 "cache off, retrying",
			 mica_strerror(rc));
	c->outage_noted = 1;
	pthread_mutex_unlock(&c->mu);
}

/* Runs on_sync once the connection is up, until it succeeds; *next_ms is
 * when a failed one may be tried again. No lock held while it runs. */
static void run_on_sync(mica_kvcache *c, int64_t *next_ms)
{
	pthread_mutex_lock(&c->mu);
	int64_t now = mica_clock_ms();
	int due = c->sync_pending && in_sync(c, now) && now >= *next_ms;
	pthread_mutex_unlock(&c->mu);
	if (!due)
		return;
	int rc = c->on_sync(c->on_sync_arg);
	pthread_mutex_lock(&c->mu);
	if (rc == 0) {
		c->sync_pending = 0;
		c->st.resyncs++;
	} else {
		*next_ms = mica_clock_ms() + BACKOFF_MAX_MS;
	}
	pthread_mutex_unlock(&c->mu);
}

/* The background thread: keeps the connection up, sends the heartbeat,
 * runs on_sync when due, and applies invalidations as they arrive, so the
 * socket never fills. */
static void *tracker(void *arg)
{
	mica_kvcache *c = arg;
	int backoff = BACKOFF_MIN_MS;
	int64_t sync_retry_ms = 0;
	while (!atomic_load(&c->stopping)) {
		if (c->on_sync)
			run_on_sync(c, &sync_retry_ms);
		pthread_mutex_lock(&c->mu);
		heartbeat(c, mica_clock_ms());
		int fd = c->conn ? c->ctx->fd : -1, broken = c->broken;
		pthread_mutex_unlock(&c->mu);
		if (fd >= 0 && broken) {
			mica_kv *old = uninstall(c);
			mica_kv_close(&old);
			continue;
		}
		if (fd < 0) {
			mica_kv *kv = NULL;
			int rc = tracking_open(c, &kv);
			if (rc == 0) {
				install(c, kv);
				backoff = BACKOFF_MIN_MS;
				continue;
			}
			note_connect_failure(c, rc);
			if (nap(c, backoff))
				break;
			backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
			continue;
		}
		struct pollfd p[2] = {{.fd = c->wake[0], .events = POLLIN},
				      {.fd = fd, .events = POLLIN}};
		if (poll(p, 2, (int)c->heartbeat_ms) < 0)
			continue;
		if (p[0].revents)
			wake_drain(c);
		if (p[1].revents) {
			pthread_mutex_lock(&c->mu);
			drain(c);
			if (!c->up)
				c->broken = 1;
			pthread_mutex_unlock(&c->mu);
		}
	}
	return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void cache_free(mica_kvcache *c)
{
	if (c->slots) {
		for (size_t i = 0; i < c->nslots; i++)
			while (c->slots[i])
				unlink_entry(c, &c->slots[i]);
		free(c->slots);
	}
	mica_kv_close(&c->conn);
	if (c->wake[0] >= 0)
		close(c->wake[0]);
	if (c->wake[1] >= 0)
		close(c->wake[1]);
	free(c->socket_path);
	free(c->username);
	mica_free_wipe(c->password);
	free(c->prefix);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

static int copy_settings(mica_kvcache *c, const struct mica_kv_config *kv,
			 const mica_kvcache_options *opt)
{
	c->socket_path = strdup(kv->socket_path);
	c->username = kv->username ? strdup(kv->username) : NULL;
	c->password = kv->password ? strdup(kv->password) : NULL;
	c->prefix = strdup(opt->prefix);
	if (!c->socket_path || (kv->username && !c->username) || (kv->password && !c->password) ||
	    !c->prefix)
		return MICA_ENOMEM;
	c->timeout_ms = kv->timeout_ms;
	c->prefix_len = strlen(opt->prefix);
	c->max_entries = opt->max_entries;
	c->max_age_ms = opt->max_age_ms;
	c->sync_window_ms = opt->sync_window_ms ? opt->sync_window_ms : MICA_KVCACHE_SYNC_WINDOW_MS;
	/* Four heartbeats a window: one late PONG does not turn the cache off. */
	c->heartbeat_ms = c->sync_window_ms / 4 > 0 ? c->sync_window_ms / 4 : 1;
	c->on_sync = opt->on_sync;
	c->on_sync_arg = opt->on_sync_arg;
	c->nslots = 16;
	while (c->nslots < opt->max_entries && c->nslots < ((size_t)1 << 30))
		c->nslots <<= 1;
	if (!(c->slots = calloc(c->nslots, sizeof(*c->slots))))
		return MICA_ENOMEM;
	if (mica_random(&c->seed, sizeof(c->seed)) != 0)
		c->seed = (uint64_t)mica_clock_ms();
	if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) != 0)
		return MICA_ENOMEM;
	return 0;
}

int mica_kvcache_start(mica_kvcache **out, const struct mica_kv_config *kv,
		       const mica_kvcache_options *opt)
{
	mica_kvcache *c;
	mica_kv *conn = NULL;
	int rc;

	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	if (!kv || !kv->socket_path || !*kv->socket_path || kv->timeout_ms < 0 || !opt ||
	    !opt->prefix || !*opt->prefix || opt->max_entries < 1 || opt->max_age_ms < 0 ||
	    opt->sync_window_ms < 0 || opt->sync_window_ms > MICA_KVCACHE_SYNC_WINDOW_MAX_MS)
		return MICA_EINVAL;
	if (!(c = calloc(1, sizeof(*c))))
		return MICA_ENOMEM;
	c->wake[0] = c->wake[1] = -1;
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		free(c);
		return MICA_ENOMEM;
	}
	if ((rc = copy_settings(c, kv, opt)) != 0)
		goto fail;
	/* Unreachable Redis: start off and let the thread retry. A refusal is a
	 * deployment error (ACL, password) the operator must see now. */
	rc = tracking_open(c, &conn);
	if (rc == 0)
		install(c, conn);
	else if (rc == MICA_EKVCONN || rc == MICA_ETIMEOUT)
		note_connect_failure(c, rc);
	else
		goto fail;
	if (pthread_create(&c->thread, NULL, tracker, c) != 0) {
		rc = MICA_ENOMEM;
		goto fail;
	}
	c->thread_started = 1;
	*out = c;
	return 0;
fail:
	cache_free(c);
	return rc;
}

void mica_kvcache_stop(mica_kvcache **cp)
{
	if (!cp || !*cp)
		return;
	mica_kvcache *c = *cp;
	*cp = NULL;
	if (c->thread_started) {
		atomic_store(&c->stopping, 1);
		ssize_t w = write(c->wake[1], "s", 1);
		(void)w;
		pthread_join(c->thread, NULL);
	}
	cache_free(c);
}

/* ---- use ------------------------------------------------------------------------- */

uint64_t mica_kvcache_ticket(mica_kvcache *c)
{
	if (!c)
		return 0;
	/* Applying what has arrived first spares a needless refusal at put
	 * time for changes made before the caller's read. */
	pthread_mutex_lock(&c->mu);
	drain(c);
	in_sync(c, mica_clock_ms()); /* a lapse moves the counter now, not at put */
	uint64_t t = c->epoch;
	pthread_mutex_unlock(&c->mu);
	return t;
}

static int lookup(mica_kvcache *c, const char *key, size_t klen, char **val, size_t *len)
{
	drain(c);
	int64_t now = mica_clock_ms();
	if (!in_sync(c, now))
		return MICA_ENOTFOUND;
	struct entry **link = find_link(c, key, klen, key_hash(c->seed, key, klen));
	struct entry *e = *link;
	if (!e)
		return MICA_ENOTFOUND;
	if (c->max_age_ms && now - e->at_ms >= c->max_age_ms) {
		unlink_entry(c, link);
		return MICA_ENOTFOUND;
	}
	char *copy = malloc(e->vlen + 1);
	if (!copy)
		return MICA_ENOMEM;
	memcpy(copy, e->data + e->klen + 1, e->vlen + 1);
	*val = copy;
	if (len)
		*len = e->vlen;
	return 0;
}

int mica_kvcache_get(mica_kvcache *c, const char *key, char **val, size_t *len)
{
	if (val)
		*val = NULL;
	if (len)
		*len = 0;
	if (!key || !val)
		return MICA_EINVAL;
	if (!c)
		return MICA_ENOTFOUND;
	pthread_mutex_lock(&c->mu);
	int rc = lookup(c, key, strlen(key), val, len);
	if (rc == 0)
		c->st.hits++;
	else
		c->st.misses++;
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int mica_kvcache_put(mica_kvcache *c, const char *key, const void *val, size_t len, uint64_t ticket)
{
	if (!c)
		return 0;
	if (!key || (!val && len) || strncmp(key, c->prefix, c->prefix_len) != 0)
		return MICA_EINVAL;
	size_t klen = strlen(key);
	if (len > SIZE_MAX - klen - sizeof(struct entry) - 2)
		return MICA_ENOMEM;
	struct entry *e = malloc(sizeof(*e) + klen + len + 2);
	if (!e)
		return MICA_ENOMEM;
	e->klen = klen;
	e->vlen = len;
	memcpy(e->data, key, klen + 1);
	if (len)
		memcpy(e->data + klen + 1, val, len);
	e->data[klen + 1 + len] = '\0';

	int rc = MICA_ESTATE;
	pthread_mutex_lock(&c->mu);
	drain(c);
	int64_t now = mica_clock_ms();
	if (in_sync(c, now) && ticket == c->epoch) {
		e->hash = key_hash(c->seed, key, klen);
		e->at_ms = now;
		struct entry **link = find_link(c, key, klen, e->hash);
		if (*link) {
			unlink_entry(c, link);
		} else if (c->count >= c->max_entries) {
			evict_one(c, e->hash & (c->nslots - 1));
		}
		size_t slot = e->hash & (c->nslots - 1);
		e->next = c->slots[slot];
		c->slots[slot] = e;
		c->count++;
		e = NULL;
		rc = 0;
	}
	pthread_mutex_unlock(&c->mu);
	free(e);
	return rc;
}

void mica_kvcache_drop(mica_kvcache *c, const char *key)
{
	if (!c || !key)
		return;
	pthread_mutex_lock(&c->mu);
	if (remove_key(c, key, strlen(key)))
		c->st.invalidations++;
	c->epoch++;
	pthread_mutex_unlock(&c->mu);
}

void mica_kvcache_request_sync(mica_kvcache *c)
{
	if (!c || !c->on_sync)
		return;
	pthread_mutex_lock(&c->mu);
	c->sync_pending = 1;
	pthread_mutex_unlock(&c->mu);
	ssize_t w = write(c->wake[1], "r", 1);
	(void)w; /* a full pipe already wakes the thread */
}

int mica_kvcache_synced(mica_kvcache *c)
{
	if (!c)
		return 1;
	pthread_mutex_lock(&c->mu);
	drain(c); /* a connection lost a moment ago counts as lost */
	int synced = c->up && !c->sync_pending;
	pthread_mutex_unlock(&c->mu);
	return synced;
}

void mica_kvcache_stats(mica_kvcache *c, struct mica_kvcache_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	*st = c->st;
	st->entries = c->count;
	st->connected = c->up;
	pthread_mutex_unlock(&c->mu);
}
