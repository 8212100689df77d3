/* session.c - sessions: opaque 256-bit bearer tokens of which only the
 * SHA-256 is kept. PostgreSQL is the truth; Redis (session:<hash>) is the
 * cache that lib/auth reads in every service. Revocation marks the row and,
 * in the same transaction before COMMIT, replaces the cache entry by a
 * short-lived tombstone; if Redis does not take the tombstone the
 * transaction rolls back and the caller answers 503, so an acknowledged
 * revocation is in both stores (docs/decisions.md, "Revocation while Redis
 * is down"). The cache is only ever filled with SET NX, so a check racing a
 * revocation cannot put a revoked session back: the very next request fails.
 * Only a freeze, which must not fail, commits without its tombstones and
 * leaves them to the resync below.
 *
 * Resync: after every (re)connection of the session cache to Redis (which
 * may have come back from an append-only file or snapshot older than its
 * last tombstones) and after a deferred tombstone, every live entry in
 * Redis is checked against PostgreSQL and the revoked ones are tombstoned
 * again (acct_session_resync); until that has succeeded this process reads
 * no session from Redis or its in-process copy.
 *
 * Checks of app sessions read the cache first, as lib/auth does, and go to
 * PostgreSQL only on a miss, an unreadable entry, a tombstone, a Redis
 * failure, or when this process has not written the session's last_seen_at
 * for TOUCH_INTERVAL_S: so a busy device costs one UPDATE a minute, not one
 * per request, and last_seen_at is at most that stale. Revocation stays
 * immediate: the tombstone is never read as a live session (it sends the
 * check to PostgreSQL, which says revoked). Web sessions still go to
 * PostgreSQL on every check, since each request extends their idle window.
 *
 * In front of Redis sits this process's copy of live app sessions
 * (lib/kvcache, s->session_cache): Redis client tracking removes an entry
 * before the revoking request's tombstone write is even acknowledged, so a
 * revocation through any instance fails on the very next check here too. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "account/account.h"
#include "auth.h"
#include "clock.h"
#include "crypto.h"
#include "kv.h"
#include "kvcache.h"
#include "log.h"
#include "parse.h"

#define TOMBSTONE_TTL 120
/* Longest time a checked app session goes without a PostgreSQL round trip
 * (last_seen_at update and a fresh look at the truth). */
#define TOUCH_INTERVAL_S 60
#define TOUCH_SLOTS 4096

/* The token of "Bearer <token>" (scheme case-insensitive); NULL if absent.
 * The token's own form is checked by mica_auth_token_hash(). */
static const char *bearer(const char *authorization)
{
	if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
		return NULL;
	return authorization + 7;
}

static void cache_key(const char *hash, char *key, size_t cap)
{
	snprintf(key, cap, MICA_AUTH_CACHE_PREFIX "%s", hash);
}

/* Fills the cache for an active session unless an entry (or tombstone) is
 * there; the value is lib/auth's contract (mica_auth_cache_value). */
static void cache_put(const char *hash, const struct acct_session *ss, int ttl)
{
	mica_kv *kv = mica_kv_thread();
	mica_auth_session as = {.user_id = ss->user_id,
				.kind = strcmp(ss->kind, "web") == 0 ? MICA_AUTH_KIND_WEB
								     : MICA_AUTH_KIND_APP,
				.auth_at = ss->auth_at,
				.expires_at = ss->expires_at};
	char key[MICA_AUTH_CACHE_KEY_LEN + 1], ttl_s[16], *val = NULL;
	redisReply *r = NULL;
	if (!kv || ttl <= 0)
		return;
	snprintf(as.session_id, sizeof(as.session_id), "%lld", (long long)ss->id);
	snprintf(as.device_id, sizeof(as.device_id), "%s", ss->device_hash);
	if (mica_auth_cache_value(&as, &val) != 0)
		return;
	cache_key(hash, key, sizeof(key));
	snprintf(ttl_s, sizeof(ttl_s), "%d", ttl);
	const char *argv[6] = {"SET", key, val, "EX", ttl_s, "NX"};
	if (mica_kv_command(kv, &r, 6, argv, NULL) != 0)
		MICA_LOG(MICA_LOG_WARN, "account: session cache unavailable: %s",
			 mica_kv_errmsg(kv));
	freeReplyObject(r);
	free(val);
}

static const char TOMBSTONE[] = "{\"revoked\":true}";

/* Replaces the cache entry of |hash| by a tombstone. Once Redis has answered
 * the SET, every lib/kvcache tracking session:* has been sent the
 * invalidation (kvcache.h, the barrier). Returns 0 or MICA_EKVCONN (not
 * written: Redis unreachable, or any error reply). */
static int cache_tombstone(acct_service *s, const char *hash)
{
	mica_kv *kv = mica_kv_thread();
	char key[80];
	int err = MICA_EKVCONN;
	cache_key(hash, key, sizeof(key));
	if (kv &&
	    (err = mica_kv_set(kv, key, TOMBSTONE, sizeof(TOMBSTONE) - 1, TOMBSTONE_TTL)) != 0)
		MICA_LOG(MICA_LOG_ERROR,
			 "account: a revoked session's tombstone was not written: %s",
			 mica_kv_errmsg(kv));
	/* Redis's invalidation would do it too; this one needs no round trip
	 * and holds even when the SET failed. */
	mica_kvcache_drop(s->session_cache, key);
	return err ? MICA_EKVCONN : 0;
}

static int cache_ttl(const struct acct_session *ss, time_t now)
{
	long left = (long)(ss->expires_at - now);
	return left > 0 ? (int)left : 0;
}

/* auth_at is written from the clock acct_auth_recent() reads, never from
 * the database's now(): two clocks would let their skew decide whether an
 * authentication is recent (10 minutes ahead, every sensitive operation
 * asks for a step-up; behind, an old login passes as recent). */
static void auth_now(char *buf, size_t len)
{
	snprintf(buf, len, "%lld", (long long)mica_clock_now());
}

bool acct_auth_recent(const acct_service *s, const struct acct_session *sess)
{
	int64_t age = mica_clock_now() - (int64_t)sess->auth_at;
	return age >= -ACCT_AUTH_FUTURE_S && age <= s->cfg->recent_auth_s;
}

#define SESSION_COLS                                                                               \
	"id, user_id, device_hash, kind, extract(epoch from auth_at)::bigint,"                     \
	" extract(epoch from expires_at)::bigint"

static int parse_row(PGresult *res, int row, struct acct_session *ss)
{
	int64_t a, e;
	memset(ss, 0, sizeof(*ss));
	if (mica_db_get_int64(res, row, 0, &ss->id) ||
	    mica_db_get_int64(res, row, 1, &ss->user_id) || mica_db_get_int64(res, row, 4, &a) ||
	    mica_db_get_int64(res, row, 5, &e))
		return MICA_EDB;
	snprintf(ss->device_hash, sizeof(ss->device_hash), "%s", mica_db_get(res, row, 2));
	snprintf(ss->kind, sizeof(ss->kind), "%s", mica_db_get(res, row, 3));
	ss->auth_at = (time_t)a;
	ss->expires_at = (time_t)e;
	return 0;
}

/* A fresh token |t| with its hash |hash|, and the lifetime in seconds of a
 * |kind| session as text in |life|. */
static int session_token(acct_service *s, const char *kind, char t[MICA_AUTH_TOKEN_LEN + 1],
			 char hash[MICA_AUTH_HASH_HEX_LEN + 1], char life[24])
{
	snprintf(life, 24, "%ld",
		 strcmp(kind, "web") == 0 ? (long)s->cfg->web_idle_s
					  : (long)s->cfg->app_session_days * 86400L);
	return mica_auth_token_new(t, hash);
}

/* Runs |sql|, whose row starts with SESSION_COLS, into *out and hands the
 * token |t| out in *token; *res (the caller clears it) keeps the row. */
static int session_insert(mica_db *db, const char *sql, int n, const char *const *p, const char *t,
			  char **token, struct acct_session *out, PGresult **res)
{
	int err = mica_db_exec(db, sql, n, p, res);
	if (err || (err = parse_row(*res, 0, out)) != 0)
		return err;
	/* Not cached here: the caller may still roll back; the first check fills it. */
	return (*token = strdup(t)) ? 0 : MICA_ENOMEM;
}

int acct_session_create(acct_service *s, mica_db *db, int64_t user_id, const char *device_hash,
			const char *kind, char **token, struct acct_session *out)
{
	char t[MICA_AUTH_TOKEN_LEN + 1], hash[MICA_AUTH_HASH_HEX_LEN + 1], uid[24], life[24];
	char now[24];
	PGresult *res = NULL;
	int err;

	*token = NULL;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	auth_now(now, sizeof(now));
	const char *p[6] = {hash, uid, device_hash, kind, life, now};
	if ((err = session_token(s, kind, t, hash, life)) == 0)
		err = session_insert(
			db,
			"INSERT INTO account.session (token_hash, user_id, device_hash,"
			" kind, auth_at, expires_at) VALUES ($1, $2, $3, $4, to_timestamp($6::bigint),"
			" now() + make_interval(secs => $5::int)) RETURNING " SESSION_COLS,
			6, p, t, token, out, &res);
	mica_wipe(t, sizeof(t));
	PQclear(res);
	return err;
}

int acct_session_open(acct_service *s, mica_db *db, int64_t user_id, const char *device_hash,
		      const char *device_name, const char *network_hash, int known,
		      const char *kind, char **token, struct acct_session *out, int *new_device)
{
	char t[MICA_AUTH_TOKEN_LEN + 1], hash[MICA_AUTH_HASH_HEX_LEN + 1], uid[24], life[24];
	char touch[16], now[24];
	PGresult *res = NULL;
	int err;

	*token = NULL;
	*new_device = 0;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	snprintf(touch, sizeof(touch), "%d", TOUCH_INTERVAL_S);
	auth_now(now, sizeof(now));
	const char *p[8] = {uid, device_hash, device_name, network_hash, hash, kind, life, now};
	const char *pk[7] = {uid, device_hash, hash, kind, life, touch, now};
	if ((err = session_token(s, kind, t, hash, life)) != 0)
		goto out;
	/* One statement, so one round trip and atomic without BEGIN/COMMIT. */
	if (known)
		/* A trusted device on a known network: nothing to record but the
		 * session, and last_seen at most once a minute. So logins of one
		 * device do not queue on its row lock, each behind the last one's
		 * commit. */
		err = session_insert(
			db,
			"WITH d AS (UPDATE account.device SET last_seen = now()"
			" WHERE user_id = $1 AND device_hash = $2"
			" AND last_seen < now() - make_interval(secs => $6::int))"
			" INSERT INTO account.session (token_hash, user_id, device_hash,"
			" kind, auth_at, expires_at) VALUES ($3, $1, $2, $4, to_timestamp($7::bigint),"
			" now() + make_interval(secs => $5::int)) RETURNING " SESSION_COLS,
			7, pk, t, token, out, &res);
	else
		err = session_insert(
			db,
			"WITH d AS (INSERT INTO account.device (user_id, device_hash, name, trusted)"
			" VALUES ($1, $2, $3, true) ON CONFLICT (user_id, device_hash) DO UPDATE"
			" SET last_seen = now(), trusted = true RETURNING (xmax = 0) AS created),"
			" n AS (INSERT INTO account.network (user_id, network_hash) VALUES ($1, $4)"
			" ON CONFLICT DO NOTHING),"
			" s AS (INSERT INTO account.session (token_hash, user_id, device_hash, kind,"
			" auth_at, expires_at) VALUES ($5, $1, $2, $6, to_timestamp($8::bigint),"
			" now() + make_interval(secs => $7::int))"
			" RETURNING " SESSION_COLS ")"
			" SELECT s.*, d.created FROM s, d",
			8, p, t, token, out, &res);
	if (err == 0 && !known)
		*new_device = strcmp(mica_db_get(res, 0, 6), "t") == 0;
out:
	mica_wipe(t, sizeof(t));
	PQclear(res);
	return err;
}

/* Looks the token up in PostgreSQL, extends a web session's idle window
 * and fills the cache. */
static int lookup_hash(acct_service *s, const char *hash, struct acct_session *out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char idle[16];
	int err;

	if (!db)
		return MICA_EDBCONN;
	snprintf(idle, sizeof(idle), "%d", s->cfg->web_idle_s);
	const char *p[2] = {hash, idle};
	err = mica_db_exec(db,
			   "UPDATE account.session SET last_seen_at = now(),"
			   " expires_at = CASE WHEN kind = 'web'"
			   " THEN now() + make_interval(secs => $2::int) ELSE expires_at END"
			   " WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()"
			   " RETURNING " SESSION_COLS,
			   2, p, &res);
	if (err == 0 && PQntuples(res) != 1)
		err = MICA_EDENIED;
	if (err == 0)
		err = parse_row(res, 0, out);
	PQclear(res);
	/* Web sessions are not cached: every use must extend their idle window,
	 * so other services ask the introspection endpoint, which does. */
	if (err == 0 && strcmp(out->kind, "web") != 0)
		cache_put(hash, out, cache_ttl(out, (time_t)mica_clock_now()));
	return err;
}

static int lookup(acct_service *s, const char *token, struct acct_session *out)
{
	char hash[MICA_AUTH_HASH_HEX_LEN + 1];
	int err = mica_auth_token_hash(token, hash);
	return err ? err : lookup_hash(s, hash, out);
}

/* When this process last sent each app session to PostgreSQL: a small
 * table indexed by session id; a collision only costs an extra UPDATE. */
static struct {
	int64_t session_id;
	time_t at;
} touched[TOUCH_SLOTS];
static pthread_mutex_t touched_mu = PTHREAD_MUTEX_INITIALIZER;

static int touched_recently(int64_t session_id, time_t now)
{
	size_t i = (size_t)((uint64_t)session_id % TOUCH_SLOTS);
	int recent;
	pthread_mutex_lock(&touched_mu);
	recent = touched[i].session_id == session_id && now - touched[i].at < TOUCH_INTERVAL_S &&
		 now >= touched[i].at;
	pthread_mutex_unlock(&touched_mu);
	return recent;
}

static void note_touch(int64_t session_id, time_t now)
{
	size_t i = (size_t)((uint64_t)session_id % TOUCH_SLOTS);
	pthread_mutex_lock(&touched_mu);
	touched[i].session_id = session_id;
	touched[i].at = now;
	pthread_mutex_unlock(&touched_mu);
}

/* Parses a Redis cache entry (lib/auth's JSON). 0 and *out for a live,
 * unexpired app session; MICA_ENOTFOUND for anything else. */
static int parse_entry(const char *val, size_t len, time_t now, struct acct_session *out)
{
	json_t *o = json_loadb(val, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *uid = json_object_get(o, "user_id"), *auth = json_object_get(o, "auth_at"),
	       *exp = json_object_get(o, "expires_at");
	const char *sid = json_string_value(json_object_get(o, "session_id"));
	const char *dev = json_string_value(json_object_get(o, "device_id"));
	const char *kind = json_string_value(json_object_get(o, "kind"));
	int64_t id;
	int rc = MICA_ENOTFOUND;
	if (json_is_integer(uid) && json_integer_value(uid) > 0 && json_is_integer(auth) &&
	    json_is_integer(exp) && json_integer_value(exp) > (json_int_t)now && sid && dev &&
	    strlen(dev) < sizeof(out->device_hash) && kind && strcmp(kind, "app") == 0) {
		if (mica_parse_int64(sid, 1, INT64_MAX, &id) == 0) {
			memset(out, 0, sizeof(*out));
			out->id = id;
			out->user_id = (int64_t)json_integer_value(uid);
			snprintf(out->device_hash, sizeof(out->device_hash), "%s", dev);
			snprintf(out->kind, sizeof(out->kind), "app");
			out->auth_at = (time_t)json_integer_value(auth);
			out->expires_at = (time_t)json_integer_value(exp);
			rc = 0;
		}
	}
	json_decref(o);
	return rc;
}

/* Reads a live app session: from the in-process copy (s->session_cache),
 * which holds the parsed struct acct_session, else from Redis (lib/auth's
 * JSON), copying a live app session into the in-process cache. 0 (found,
 * unexpired, *out set) or MICA_ENOTFOUND for anything else (miss,
 * tombstone, web session, unreadable entry, Redis failure): the caller then
 * asks PostgreSQL. */
static int cache_get(acct_service *s, const char *hash, time_t now, struct acct_session *out)
{
	char key[MICA_AUTH_CACHE_KEY_LEN + 1], *val = NULL;
	size_t len = 0;
	uint64_t ticket;
	mica_kv *kv;
	int rc = MICA_ENOTFOUND;

	cache_key(hash, key, sizeof(key));
	if (mica_kvcache_get(s->session_cache, key, &val, &len) == 0) {
		if (len == sizeof(*out)) {
			memcpy(out, val, sizeof(*out));
			rc = out->expires_at > now ? 0 : MICA_ENOTFOUND;
		}
		free(val);
		return rc;
	}
	ticket = mica_kvcache_ticket(s->session_cache);
	if (!(kv = mica_kv_thread()) || mica_kv_get(kv, key, &val, &len) != 0)
		return rc;
	/* Redis may hold entries PostgreSQL has revoked since (it came back from
	 * an older file, or a freeze's tombstones are still to be written):
	 * until the resync has fixed them, only PostgreSQL answers. Asked after
	 * the read, so a Redis that restarted before it (the tracking connection
	 * then has its EOF waiting) is caught too; and a reconnection after the
	 * ticket makes the put below a no-op. The in-process copy needs no such
	 * check: it is emptied on reconnection and filled only from here. */
	if (!mica_kvcache_synced(s->session_cache)) {
		free(val);
		return rc;
	}
	rc = parse_entry(val, len, now, out);
	free(val);
	/* A refused put (an invalidation came in since the ticket) is fine:
	 * the next check reads Redis again. */
	if (rc == 0 && mica_kvcache_put(s->session_cache, key, (const char *)out, sizeof(*out),
					ticket) == MICA_ENOMEM)
		MICA_LOG(MICA_LOG_WARN, "account: out of memory caching a session");
	return rc;
}

int acct_session_check(acct_service *s, const char *authorization, struct acct_session *out)
{
	const char *t = bearer(authorization);
	char hash[MICA_AUTH_HASH_HEX_LEN + 1];
	time_t now = (time_t)mica_clock_now();
	int err;
	if (!t)
		return MICA_EINVAL;
	if ((err = mica_auth_token_hash(t, hash)) != 0)
		return err;
	if (cache_get(s, hash, now, out) == 0) {
		if (touched_recently(out->id, now))
			return 0;
		/* Due for its PostgreSQL round trip: last_seen_at, and the truth.
		 * A session PostgreSQL no longer knows as active (its tombstone
		 * was lost) must not keep validating from the cache. */
		err = lookup_hash(s, hash, out);
		if (err == MICA_EDENIED)
			cache_tombstone(s, hash);
		if (err == 0)
			note_touch(out->id, now);
		return err;
	}
	err = lookup_hash(s, hash, out);
	if (err == 0 && strcmp(out->kind, "app") == 0)
		note_touch(out->id, now);
	return err;
}

int acct_session_touch_auth(acct_service *s, int64_t session_id)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char id[24], now[24];
	int err;
	if (!db)
		return MICA_EDBCONN;
	snprintf(id, sizeof(id), "%lld", (long long)session_id);
	auth_now(now, sizeof(now));
	const char *p[2] = {id, now};
	err = mica_db_exec(db,
			   "UPDATE account.session SET auth_at = to_timestamp($2::bigint)"
			   " WHERE id = $1 RETURNING token_hash",
			   2, p, &res);
	/* The cached copy carries auth_at: drop it so the next check refills it. */
	if (err == 0 && PQntuples(res) == 1) {
		mica_kv *kv = mica_kv_thread();
		char key[80];
		cache_key(mica_db_get(res, 0, 0), key, sizeof(key));
		if (kv && mica_kv_del(kv, key, NULL) != 0)
			MICA_LOG(MICA_LOG_WARN, "account: a cached session could not be dropped");
		mica_kvcache_drop(s->session_cache, key);
	}
	PQclear(res);
	return err;
}

/* Set when this thread committed (or is about to commit) revocations without
 * their tombstones; acct_session_deferred_flush() asks for the resync once
 * the transaction is over, so the resync cannot read PostgreSQL before the
 * revocation is committed. */
static __thread int deferred;

struct revoke_ctx {
	acct_service *s;
	const char *sql;
	const char *const *p;
	int n;
	int defer; /* tombstones Redis refuses are left to the resync */
	int count;
};

/* In the transaction: marks the rows |sql| selects revoked and tombstones
 * their cache entries before COMMIT (a tombstone of a transaction that then
 * rolls back only sends that session to PostgreSQL for TOMBSTONE_TTL: fail
 * closed). A tombstone Redis does not take rolls everything back with
 * MICA_EKVCONN, unless |defer|. */
static int revoke_tx(mica_db *db, void *arg)
{
	struct revoke_ctx *r = arg;
	PGresult *res = NULL;
	int err = mica_db_exec(db, r->sql, r->n, r->p, &res), lost = 0;
	if (err == 0) {
		r->count = PQntuples(res);
		/* One failure is enough to know: a Redis that is down makes each
		 * further SET wait for its own timeout. */
		for (int i = 0; i < r->count && !lost; i++)
			if (cache_tombstone(r->s, mica_db_get(res, i, 0)) != 0)
				lost = 1;
	}
	PQclear(res);
	if (err == 0 && lost && !r->defer)
		err = MICA_EKVCONN;
	if (err == 0 && lost) {
		MICA_LOG(MICA_LOG_WARN, "account: %d revoked session(s) left to the cache resync",
			 r->count);
		deferred = 1;
	}
	return err;
}

/* Runs revoke_tx in its own transaction, or in the caller's (mica_db_tx
 * nests). */
static int revoke_where(acct_service *s, mica_db *db, const char *sql, int n, const char *const *p,
			int defer, int *count)
{
	/* Deferring needs the resync, which runs on the session cache's thread:
	 * without the cache (account.session.cache_entries = 0) a freeze is
	 * refused like any other revocation. */
	struct revoke_ctx r = {s, sql, p, n, defer && s->session_cache, 0};
	int err = db ? mica_db_tx(db, MICA_DB_READ_COMMITTED, revoke_tx, &r) : MICA_EDBCONN;
	if (count)
		*count = err ? 0 : r.count;
	return err;
}

int acct_session_revoke(acct_service *s, int64_t user_id, int64_t session_id)
{
	char u[24], id[24];
	int count = 0, err;
	snprintf(u, sizeof(u), "%lld", (long long)user_id);
	snprintf(id, sizeof(id), "%lld", (long long)session_id);
	const char *p[2] = {u, id};
	err = revoke_where(
		s, mica_db_thread(),
		"UPDATE account.session SET revoked_at = now() WHERE user_id = $1 AND id = $2"
		" AND revoked_at IS NULL RETURNING token_hash",
		2, p, 0, &count);
	return err ? err : count ? 0 : MICA_ENOTFOUND;
}

#define REVOKE_ALL_SQL                                                                             \
	"UPDATE account.session SET revoked_at = now() WHERE user_id = $1"                         \
	" AND id <> $2 AND revoked_at IS NULL RETURNING token_hash"

static int revoke_all(acct_service *s, mica_db *db, int64_t user_id, int64_t keep, int defer)
{
	char u[24], k[24];
	snprintf(u, sizeof(u), "%lld", (long long)user_id);
	snprintf(k, sizeof(k), "%lld", (long long)keep);
	const char *p[2] = {u, k};
	return revoke_where(s, db, REVOKE_ALL_SQL, 2, p, defer, NULL);
}

int acct_session_revoke_all(acct_service *s, mica_db *db, int64_t user_id, int64_t keep)
{
	return revoke_all(s, db, user_id, keep, 0);
}

int acct_session_revoke_all_deferred(acct_service *s, mica_db *db, int64_t user_id)
{
	return revoke_all(s, db, user_id, 0, 1);
}

void acct_session_deferred_flush(acct_service *s)
{
	if (!deferred)
		return;
	deferred = 0;
	mica_kvcache_request_sync(s->session_cache);
}

/* ---- resync -------------------------------------------------------------------- */

#define RESYNC_BATCH 500

/* Checks one batch of cache keys (|n| of them, "session:<hash>") against
 * PostgreSQL and tombstones those whose entry is a live session PostgreSQL
 * no longer holds as active. *fixed counts them. */
static int resync_batch(acct_service *s, mica_kv *kv, mica_db *db, char **keys, size_t n,
			int *fixed)
{
	const char **argv = calloc(n + 1, sizeof(*argv));
	redisReply *r = NULL;
	PGresult *res = NULL;
	char *arr = NULL;
	int err = MICA_ENOMEM;
	if (!argv || !(arr = malloc(n * (MICA_AUTH_HASH_HEX_LEN + 1) + 3)))
		goto out;
	argv[0] = "MGET";
	for (size_t i = 0; i < n; i++)
		argv[i + 1] = keys[i];
	if ((err = mica_kv_command(kv, &r, (int)n + 1, argv, NULL)) != 0)
		goto out;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != n) {
		err = MICA_EKV;
		goto out;
	}
	/* A text[] literal of the live entries' hashes (64 hex digits each,
	 * checked by the caller), passed as one parameter. */
	size_t len = 0, live = 0;
	arr[len++] = '{';
	for (size_t i = 0; i < n; i++) {
		redisReply *v = r->element[i];
		if (!v || v->type != REDIS_REPLY_STRING || strstr(v->str, "\"revoked\""))
			continue;
		if (live++)
			arr[len++] = ',';
		memcpy(arr + len, keys[i] + sizeof(MICA_AUTH_CACHE_PREFIX) - 1,
		       MICA_AUTH_HASH_HEX_LEN);
		len += MICA_AUTH_HASH_HEX_LEN;
	}
	arr[len++] = '}';
	arr[len] = '\0';
	if (!live)
		goto out;
	const char *p[1] = {arr};
	/* The live entries PostgreSQL does not know as active: revoked, expired,
	 * or gone with a deleted account. */
	if ((err = mica_db_exec(db,
				"SELECT h FROM unnest($1::text[]) AS h WHERE NOT EXISTS (SELECT 1"
				" FROM account.session WHERE token_hash = h AND revoked_at IS NULL"
				" AND expires_at > now())",
				1, p, &res)) != 0)
		goto out;
	for (int i = 0; i < PQntuples(res) && err == 0; i++)
		if ((err = cache_tombstone(s, mica_db_get(res, i, 0))) == 0)
			(*fixed)++;
out:
	PQclear(res);
	freeReplyObject(r);
	free(arr);
	free(argv);
	return err;
}

static int is_session_key(const redisReply *k)
{
	const size_t pl = sizeof(MICA_AUTH_CACHE_PREFIX) - 1;
	if (!k || k->type != REDIS_REPLY_STRING || k->len != pl + MICA_AUTH_HASH_HEX_LEN ||
	    memcmp(k->str, MICA_AUTH_CACHE_PREFIX, pl) != 0)
		return 0;
	for (size_t i = pl; i < k->len; i++)
		if (!((k->str[i] >= '0' && k->str[i] <= '9') ||
		      (k->str[i] >= 'a' && k->str[i] <= 'f')))
			return 0;
	return 1;
}

int acct_session_resync(void *arg)
{
	acct_service *s = arg;
	mica_kv *kv = mica_kv_thread();
	mica_db *db = mica_db_thread();
	char cursor[32] = "0", *keys[RESYNC_BATCH];
	int err = 0, fixed = 0, seen = 0;
	if (!kv || !db)
		return MICA_ESTATE;
	do {
		redisReply *r = NULL;
		const char *argv[6] = {"SCAN",	cursor, "MATCH", MICA_AUTH_CACHE_PREFIX "*",
				       "COUNT", "500"};
		size_t n = 0;
		if ((err = mica_kv_command(kv, &r, 6, argv, NULL)) != 0)
			break;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		    r->element[0]->type != REDIS_REPLY_STRING ||
		    r->element[0]->len >= sizeof(cursor) ||
		    r->element[1]->type != REDIS_REPLY_ARRAY) {
			freeReplyObject(r);
			err = MICA_EKV;
			break;
		}
		memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
		for (size_t i = 0; i < r->element[1]->elements && err == 0; i++) {
			if (!is_session_key(r->element[1]->element[i]))
				continue;
			keys[n++] = r->element[1]->element[i]->str;
			seen++;
			if (n == RESYNC_BATCH) {
				err = resync_batch(s, kv, db, keys, n, &fixed);
				n = 0;
			}
		}
		if (err == 0 && n)
			err = resync_batch(s, kv, db, keys, n, &fixed);
		freeReplyObject(r);
	} while (err == 0 && strcmp(cursor, "0") != 0);
	if (err) {
		MICA_LOG(MICA_LOG_WARN, "account: session cache resync failed (%s); retrying",
			 mica_strerror(err));
		return err;
	}
	if (fixed)
		MICA_LOG(MICA_LOG_WARN,
			 "account: session cache resync: %d of %d entries were revoked "
			 "sessions; tombstoned again",
			 fixed, seen);
	return 0;
}

int acct_session_list(acct_service *s, int64_t user_id, int64_t current, json_t **out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char u[24];
	json_t *list;
	int err;
	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	snprintf(u, sizeof(u), "%lld", (long long)user_id);
	const char *p[1] = {u};
	err = mica_db_exec(db,
			   "SELECT s.id, s.kind, s.created_at::text, s.last_seen_at::text,"
			   " coalesce(d.name, ''), s.expires_at::text, s.device_hash"
			   " FROM account.session s"
			   " LEFT JOIN account.device d ON d.user_id = s.user_id"
			   " AND d.device_hash = s.device_hash"
			   " WHERE s.user_id = $1 AND s.revoked_at IS NULL AND s.expires_at > now()"
			   " ORDER BY s.id",
			   1, p, &res);
	if (err)
		return err;
	list = json_array();
	for (int r = 0; r < PQntuples(res); r++) {
		int64_t id = 0;
		char *name = NULL;
		if (mica_db_get_int64(res, r, 0, &id) != 0)
			continue;
		/* Names are stored sealed (pii.c). */
		if ((err = acct_device_name_open(s, user_id, mica_db_get(res, r, 6),
						 mica_db_get(res, r, 4), &name)) != 0)
			break;
		json_array_append_new(
			list,
			json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:b}", "id", (json_int_t)id, "kind",
				  mica_db_get(res, r, 1), "created_at", mica_db_get(res, r, 2),
				  "last_seen_at", mica_db_get(res, r, 3), "device_name", name,
				  "expires_at", mica_db_get(res, r, 5), "current", id == current));
		free(name);
	}
	PQclear(res);
	if (err) {
		json_decref(list);
		return err;
	}
	*out = json_pack("{s:o}", "sessions", list);
	return 0;
}

int acct_session_introspect(acct_service *s, const char *token, json_t **out)
{
	struct acct_session ss;
	char sid[24];
	int err;
	*out = NULL;
	err = lookup(s, token, &ss);
	if (err == MICA_EDENIED || err == MICA_EINVAL) {
		*out = json_pack("{s:b}", "active", 0);
		return 0;
	}
	if (err)
		return err;
	snprintf(sid, sizeof(sid), "%lld", (long long)ss.id);
	char sub[24];
	snprintf(sub, sizeof(sub), "%lld", (long long)ss.user_id);
	*out = json_pack("{s:b,s:s,s:s,s:s,s:s,s:I,s:I,s:s}", "active", 1, "sub", sub, "sid", sid,
			 "device_id", ss.device_hash, "kind", ss.kind, "auth_time",
			 (json_int_t)ss.auth_at, "exp", (json_int_t)ss.expires_at, "token_type",
			 "Bearer");
	return 0;
}
