/* kvcache.h - an in-process cache of Redis values under one key prefix that
 * stays exact when another client changes them: Redis client tracking in
 * broadcast mode pushes an invalidation for every change of a key under the
 * prefix (SET, DEL, expiry, eviction, FLUSHALL) to a dedicated connection,
 * and every lookup first applies the invalidations already on that socket.
 *
 * Why a hit is never stale (see docs/decisions.md):
 * - Barrier: Redis writes the invalidation to our connection before it
 *   writes the reply to the client that made the change, so once that
 *   client has its reply (and anything it then sends us has arrived), the
 *   invalidation is readable on our socket, and mica_kvcache_get() applies it
 *   before looking up. On one host this is exact; across hosts it relies on
 *   the network not reordering two sends of the same Redis event loop.
 * - Fill race: take a ticket with mica_kvcache_ticket() BEFORE reading the
 *   value from Redis; mica_kvcache_put() stores only if no invalidation,
 *   flush or reconnect was applied since, so a value read before a change
 *   whose invalidation was already applied is never stored (a later
 *   invalidation removes a stored value as usual).
 * - Fail safe: while the tracking connection is down (or not up yet) every
 *   lookup misses and nothing is stored; on every (re)connection the table
 *   is emptied. A background thread applies invalidations as they arrive
 *   (so Redis's pub/sub output limit never disconnects us) and reconnects
 *   with backoff, logging once per outage.
 * - Bounded by the last time it was in sync: the thread sends a PING on the
 *   tracking connection every quarter of the sync window. Redis answers it
 *   behind every invalidation it queued before, so an answered PING proves
 *   the table was exact when that PING was sent. A lookup or put whose last
 *   proof is older than the window (Redis paused or stuck, a connection
 *   dead without a FIN, so invalidations may be missing) misses, and the
 *   whole table is dropped once per such lapse: no entry kept through a
 *   silence is served after it, even once Redis answers again.
 * - Changes Redis itself lost (it restarted from an append-only file or
 *   snapshot older than the last write, so a deleted or replaced key is back
 *   with its old value) produce no invalidation at all. The cache cannot
 *   see them; the writer can: on_sync (below) runs after every
 *   (re)connection so the service that owns the keys can re-apply its
 *   truth (lib/auth's session cache: account/session.c re-applies
 *   revocations from PostgreSQL).
 *
 * The Redis user needs the channel "__redis__:invalidate" (&__redis__:invalidate)
 * and the commands CLIENT ID, CLIENT TRACKING and SUBSCRIBE (deploy/lib.sh).
 * Key names and values are never logged.
 *
 * Every function is thread-safe, and a NULL cache is a disabled one: get
 * misses, put and drop do nothing, so callers need no special case.
 */
#ifndef MICA_KVCACHE_H
#define MICA_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "kv.h"

typedef struct mica_kvcache mica_kvcache;

/* Default and largest sync window (see mica_kvcache_options). */
#define MICA_KVCACHE_SYNC_WINDOW_MS 1000
#define MICA_KVCACHE_SYNC_WINDOW_MAX_MS 60000

typedef struct mica_kvcache_options {
	const char *prefix; /* keys tracked and cached, e.g. "session:" (required, copied) */
	size_t max_entries; /* bound of the table (required, >= 1) */
	int64_t max_age_ms; /* an entry older than this misses; 0: no age limit */
	/* A hit needs a heartbeat answered by Redis within this many ms;
	 * 0: MICA_KVCACHE_SYNC_WINDOW_MS; at most MICA_KVCACHE_SYNC_WINDOW_MAX_MS.
	 * Longer windows send fewer PINGs and serve longer through a silence. */
	int64_t sync_window_ms;
	/* Optional: called on the cache's thread, with no lock held, after each
	 * (re)connection (also the first), while the table is still empty; it
	 * may block and use Redis and PostgreSQL through their per-thread
	 * handles. Non-zero: called again about every 5 s while connected
	 * until it returns 0. Lookups and puts work while it runs. */
	int (*on_sync)(void *arg);
	void *on_sync_arg;
} mica_kvcache_options;

struct mica_kvcache_stats {
	uint64_t hits, misses;
	uint64_t invalidations; /* keys invalidated by Redis or mica_kvcache_drop() */
	uint64_t flushes;	/* whole-table flushes: FLUSHALL/FLUSHDB, (re)connections */
	uint64_t evictions;	/* entries dropped to make room */
	uint64_t lapses;	/* tables dropped: no heartbeat answered within the window */
	uint64_t resyncs;	/* on_sync calls that returned 0 */
	size_t entries;		/* entries held now */
	int connected;		/* 1 while the tracking connection is up */
};

/* Creates a cache with its own Redis connection (|kv| settings are copied;
 * the password copy is wiped when freed) and its background thread. If
 * Redis cannot be reached the cache starts disabled and the thread keeps
 * trying. *out is freed by mica_kvcache_stop(). Returns 0, MICA_EINVAL (no
 * prefix, max_entries 0, negative age, bad |kv|), MICA_ENOMEM, MICA_ECONFIG
 * (Redis refused the username or password), MICA_EPERM (the ACL refuses
 * CLIENT TRACKING or the invalidation channel) or MICA_EKV (another refusal,
 * e.g. a Redis without client tracking). */
MICA_WUR int mica_kvcache_start(mica_kvcache **out, const struct mica_kv_config *kv,
				const mica_kvcache_options *opt);

/* Stops the thread, closes the connection and frees everything; sets *cp to
 * NULL. Safe on NULL and twice. No other call on the cache may be running. */
void mica_kvcache_stop(mica_kvcache **cp);

/* The fill ticket: take it before reading |key| from Redis, and pass it to
 * mica_kvcache_put() with what was read. 0 for a NULL cache. */
uint64_t mica_kvcache_ticket(mica_kvcache *c);

/* Applies the invalidations already received, then looks |key| up. On 0,
 * *val is a malloc'd copy of the value, NUL-terminated for convenience,
 * freed by the caller; *len (may be NULL) its length. Returns 0,
 * MICA_ENOTFOUND (not cached, too old, cache disabled or down, no heartbeat
 * answered within the sync window, NULL cache), MICA_EINVAL or MICA_ENOMEM. */
MICA_WUR int mica_kvcache_get(mica_kvcache *c, const char *key, char **val, size_t *len);

/* Stores a copy of |len| bytes of |val| for |key| (which must start with
 * the prefix), unless an invalidation, flush or reconnection was applied
 * since |ticket| was taken or the connection is down or out of sync (then MICA_ESTATE,
 * nothing stored: harmless, the next reader fills it). A full table evicts
 * one entry. Returns 0, MICA_ESTATE, MICA_EINVAL (key outside the prefix),
 * MICA_ENOMEM; 0 for a NULL cache. */
MICA_WUR int mica_kvcache_put(mica_kvcache *c, const char *key, const void *val, size_t len,
			      uint64_t ticket);

/* Forgets |key| at once (for this process's own writes, before Redis's
 * invalidation arrives) and moves the ticket counter. NULL cache: no-op. */
void mica_kvcache_drop(mica_kvcache *c, const char *key);

/* Asks for on_sync to run again (for a writer whose change could not
 * reach Redis and must be re-applied from its own truth once Redis answers);
 * it runs on the cache's thread as soon as the connection is up and in sync.
 * No-op for a NULL cache or one without on_sync. */
void mica_kvcache_request_sync(mica_kvcache *c);

/* Applies what has arrived (so a connection Redis has closed counts as
 * down), then: 1 when the connection is up and no on_sync is pending (the
 * writer has re-applied its truth since the last reconnection or request),
 * else 0; 1 for a NULL cache. A writer may distrust Redis values while it
 * is 0; asked after reading a value from Redis, a 1 means that value was
 * read from a Redis whose restart, if any, has been resynced. */
int mica_kvcache_synced(mica_kvcache *c);

/* Counters since start; all zero for a NULL cache. */
void mica_kvcache_stats(mica_kvcache *c, struct mica_kvcache_stats *st);

/* ---- internal: the invalidation message parser, for the fuzz target ------- */

/* What one reply read from the tracking connection means. */
enum mica__kvcache_msg {
	MICA__KVCACHE_KEYS = 1,	 /* invalidate the keys given to |on_key| */
	MICA__KVCACHE_FLUSH = 2, /* invalidate everything (nil payload) */
	MICA__KVCACHE_OTHER = 3, /* a well-formed reply that is not an invalidation */
};

/* Classifies |r| (a pub/sub "message" on "__redis__:invalidate" carries an
 * array of key names or nil) and calls |on_key| for each key name of a
 * MICA__KVCACHE_KEYS message (|key| borrowed from |r|, |len| bytes, not
 * NUL-terminated). Anything unexpected in an invalidation message (a
 * non-string key, an unknown payload type) is MICA__KVCACHE_FLUSH: when in
 * doubt, forget everything. */
enum mica__kvcache_msg
mica__kvcache_msg_parse(const redisReply *r, void (*on_key)(void *arg, const char *key, size_t len),
			void *arg);

/* true for the reply to a PING on a subscribed connection (["pong", ""]). */
int mica__kvcache_is_pong(const redisReply *r);

#endif
