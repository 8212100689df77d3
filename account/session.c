/* session.c - sessions: opaque 256-bit bearer tokens of which only the
 * SHA-256 is kept. PostgreSQL is the truth; Redis (session:<hash>) is the
 * cache that lib/auth reads in every service. Revocation marks the row,
 * then replaces the cache entry by a short-lived tombstone, and the cache is
 * only ever filled with SET NX, so a check racing a revocation cannot put a
 * revoked session back: the very next request fails.
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
		MICA_LOG(MICA_LOG_WARN, "account: session cache unavailable: %s", mica_kv_errmsg(kv));
	freeReplyObject(r);
	free(val);
}

static void cache_tombstone(acct_service *s, const char *hash)
{
	mica_kv *kv = mica_kv_thread();
	char key[80];
	static const char tomb[] = "{\"revoked\":true}";
	cache_key(hash, key, sizeof(key));
	if (!kv || mica_kv_set(kv, key, tomb, sizeof(tomb) - 1, TOMBSTONE_TTL) != 0)
		MICA_LOG(MICA_LOG_ERROR, "account: could not invalidate a cached session; it expires "
					 "with its cache TTL");
	/* Redis's invalidation would do it too; this one needs no round trip
	 * and holds even when the SET failed. */
	mica_kvcache_drop(s->session_cache, key);
}

static int cache_ttl(const struct acct_session *ss, time_t now)
{
	long left = (long)(ss->expires_at - now);
	return left > 0 ? (int)left : 0;
}

#define SESSION_COLS                                                                          \
	"id, user_id, device_hash, kind, extract(epoch from auth_at)::bigint,"               \
	" extract(epoch from expires_at)::bigint"

static int parse_row(PGresult *res, int row, struct acct_session *ss)
{
	int64_t a, e;
	memset(ss, 0, sizeof(*ss));
	if (mica_db_get_int64(res, row, 0, &ss->id) || mica_db_get_int64(res, row, 1, &ss->user_id) ||
	    mica_db_get_int64(res, row, 4, &a) || mica_db_get_int64(res, row, 5, &e))
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
static int session_insert(mica_db *db, const char *sql, int n, const char *const *p,
			  const char *t, char **token, struct acct_session *out, PGresult **res)
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
	PGresult *res = NULL;
	int err;

	*token = NULL;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	const char *p[5] = {hash, uid, device_hash, kind, life};
	if ((err = session_token(s, kind, t, hash, life)) == 0)
		err = session_insert(db,
				     "INSERT INTO account.session (token_hash, user_id, device_hash,"
				     " kind, expires_at) VALUES ($1, $2, $3, $4,"
				     " now() + make_interval(secs => $5::int)) RETURNING " SESSION_COLS,
				     5, p, t, token, out, &res);
	mica_wipe(t, sizeof(t));
	PQclear(res);
	return err;
}

int acct_session_open(acct_service *s, mica_db *db, int64_t user_id, const char *device_hash,
		      const char *device_name, const char *network_hash, int known,
		      const char *kind, char **token, struct acct_session *out, int *new_device)
{
	char t[MICA_AUTH_TOKEN_LEN + 1], hash[MICA_AUTH_HASH_HEX_LEN + 1], uid[24], life[24];
	char touch[16];
	PGresult *res = NULL;
	int err;

	*token = NULL;
	*new_device = 0;
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	snprintf(touch, sizeof(touch), "%d", TOUCH_INTERVAL_S);
	const char *p[7] = {uid, device_hash, device_name, network_hash, hash, kind, life};
	const char *pk[6] = {uid, device_hash, hash, kind, life, touch};
	if ((err = session_token(s, kind, t, hash, life)) != 0)
		goto out;
	/* One statement, so one round trip and atomic without BEGIN/COMMIT. */
	if (known)
		/* A trusted device on a known network: nothing to record but the
		 * session, and last_seen at most once a minute. So logins of one
		 * device do not queue on its row lock, each behind the last one's
		 * commit. */
		err = session_insert(db,
				     "WITH d AS (UPDATE account.device SET last_seen = now()"
				     " WHERE user_id = $1 AND device_hash = $2"
				     " AND last_seen < now() - make_interval(secs => $6::int))"
				     " INSERT INTO account.session (token_hash, user_id, device_hash,"
				     " kind, expires_at) VALUES ($3, $1, $2, $4,"
				     " now() + make_interval(secs => $5::int)) RETURNING " SESSION_COLS,
				     6, pk, t, token, out, &res);
	else
		err = session_insert(
		    db,
		    "WITH d AS (INSERT INTO account.device (user_id, device_hash, name, trusted)"
		    " VALUES ($1, $2, $3, true) ON CONFLICT (user_id, device_hash) DO UPDATE"
		    " SET last_seen = now(), trusted = true RETURNING (xmax = 0) AS created),"
		    " n AS (INSERT INTO account.network (user_id, network_hash) VALUES ($1, $4)"
		    " ON CONFLICT DO NOTHING),"
		    " s AS (INSERT INTO account.session (token_hash, user_id, device_hash, kind,"
		    " expires_at) VALUES ($5, $1, $2, $6, now() + make_interval(secs => $7::int))"
		    " RETURNING " SESSION_COLS ")"
		    " SELECT s.*, d.created FROM s, d",
		    7, p, t, token, out, &res);
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
	char *end;
	long long id;
	int rc = MICA_ENOTFOUND;
	if (json_is_integer(uid) && json_integer_value(uid) > 0 && json_is_integer(auth) &&
	    json_is_integer(exp) && json_integer_value(exp) > (json_int_t)now && sid && dev &&
	    strlen(dev) < sizeof(out->device_hash) && kind && strcmp(kind, "app") == 0) {
		errno = 0;
		id = strtoll(sid, &end, 10);
		if (errno == 0 && end != sid && *end == '\0' && id > 0) {
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
	char id[24];
	int err;
	if (!db)
		return MICA_EDBCONN;
	snprintf(id, sizeof(id), "%lld", (long long)session_id);
	const char *p[1] = {id};
	err = mica_db_exec(db,
			   "UPDATE account.session SET auth_at = now() WHERE id = $1 RETURNING token_hash",
			   1, p, &res);
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

/* Revokes the rows |sql| selects and tombstones their cache entries. */
static int revoke_where(acct_service *s, mica_db *db, const char *sql, int n,
			const char *const *p, int *count)
{
	PGresult *res = NULL;
	int err = mica_db_exec(db, sql, n, p, &res);
	if (err == 0) {
		for (int r = 0; r < PQntuples(res); r++)
			cache_tombstone(s, mica_db_get(res, r, 0));
		if (count)
			*count = PQntuples(res);
	}
	PQclear(res);
	return err;
}

int acct_session_revoke(acct_service *s, int64_t user_id, int64_t session_id)
{
	mica_db *db = mica_db_thread();
	char u[24], id[24];
	int count = 0, err;
	if (!db)
		return MICA_EDBCONN;
	snprintf(u, sizeof(u), "%lld", (long long)user_id);
	snprintf(id, sizeof(id), "%lld", (long long)session_id);
	const char *p[2] = {u, id};
	err = revoke_where(s, db,
			   "UPDATE account.session SET revoked_at = now() WHERE user_id = $1 AND id = $2"
			   " AND revoked_at IS NULL RETURNING token_hash",
			   2, p, &count);
	return err ? err : count ? 0 : MICA_ENOTFOUND;
}

int acct_session_revoke_all(acct_service *s, mica_db *db, int64_t user_id, int64_t keep)
{
	char u[24], k[24];
	snprintf(u, sizeof(u), "%lld", (long long)user_id);
	snprintf(k, sizeof(k), "%lld", (long long)keep);
	const char *p[2] = {u, k};
	/* Inside a caller's transaction the tombstones go out before COMMIT;
	 * they still win, since the cache is only ever filled with SET NX. */
	return revoke_where(s, db,
			    "UPDATE account.session SET revoked_at = now() WHERE user_id = $1"
			    " AND id <> $2 AND revoked_at IS NULL RETURNING token_hash",
			    2, p, NULL);
}

int acct_session_list(acct_service *s, int64_t user_id, int64_t current, json_t **out)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char u[24];
	json_t *list;
	int err;
	(void)s;
	*out = NULL;
	if (!db)
		return MICA_EDBCONN;
	snprintf(u, sizeof(u), "%lld", (long long)user_id);
	const char *p[1] = {u};
	err = mica_db_exec(db,
			   "SELECT s.id, s.kind, s.created_at::text, s.last_seen_at::text,"
			   " coalesce(d.name, ''), s.expires_at::text FROM account.session s"
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
		if (mica_db_get_int64(res, r, 0, &id) != 0)
			continue;
		json_array_append_new(list,
				      json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:b}", "id", (json_int_t)id,
						"kind", mica_db_get(res, r, 1), "created_at",
						mica_db_get(res, r, 2), "last_seen_at",
						mica_db_get(res, r, 3), "device_name",
						mica_db_get(res, r, 4), "expires_at",
						mica_db_get(res, r, 5), "current", id == current));
	}
	PQclear(res);
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
