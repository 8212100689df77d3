/* test_kvcache.c - lib/kvcache against the real Redis of tests/run (Unix
 * socket, ACL user "test", keys "test:*", channel "__redis__:invalidate"):
 * hits, the barrier (a change by another connection is seen by the very next
 * lookup, no sleep), expiry, the fill ticket, untracked keys, the size bound,
 * a Redis restart, two caches on one Redis (two account instances), the
 * heartbeat (a paused Redis: the cache stops serving within its sync window
 * and drops what it held), the on_sync hook (after every reconnection, and
 * on request), the invalidation message parser, and the NULL (disabled)
 * cache.
 * Keys carry the test's pid so runs never collide.
 */
#include <check.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "err.h"
#include "kv.h"
#include "kvcache.h"
#include "log.h"
#include "tests/check_main.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v)
		ck_abort_msg("environment variable %s is not set (run through tests/run)", name);
	return v;
}

static char password[256];

static struct mica_kv_config config(void)
{
	if (!password[0]) {
		FILE *f = fopen(env("MICA_REDIS_PASSWORD_FILE"), "r");
		ck_assert_msg(f != NULL, "cannot open MICA_REDIS_PASSWORD_FILE");
		ck_assert_ptr_nonnull(fgets(password, sizeof(password), f));
		fclose(f);
		password[strcspn(password, "\r\n")] = '\0';
	}
	struct mica_kv_config c = {.socket_path = env("MICA_REDIS_SOCKET"),
				   .username = env("MICA_REDIS_USER"),
				   .password = password,
				   .timeout_ms = 5000};
	return c;
}

/* "test:<pid>:c:" is the cached prefix; "test:<pid>:<other>" is outside it. */
static const char *prefix(void)
{
	static char p[64];
	snprintf(p, sizeof(p), "test:%d:c:", (int)getpid());
	return p;
}

static const char *key(const char *suffix)
{
	static char buf[8][128];
	static int i;
	char *k = buf[i++ % 8];
	snprintf(k, sizeof(buf[0]), "%s%s", prefix(), suffix);
	return k;
}

static mica_kvcache *start(size_t max_entries)
{
	struct mica_kv_config c = config();
	mica_kvcache_options o = {.prefix = prefix(), .max_entries = max_entries};
	mica_kvcache *kc = NULL;
	int rc = mica_kvcache_start(&kc, &c, &o);
	ck_assert_msg(rc == 0, "mica_kvcache_start: %s", mica_strerror(rc));
	return kc;
}

static mica_kv *plain(void)
{
	struct mica_kv_config c = config();
	mica_kv *kv = NULL;
	ck_assert_int_eq(mica_kv_open(&kv, &c), 0);
	return kv;
}

/* Reads |k| from Redis with a ticket taken first and caches it, as callers
 * do. Returns mica_kvcache_put()'s result. */
static int fill(mica_kvcache *kc, mica_kv *kv, const char *k)
{
	uint64_t t = mica_kvcache_ticket(kc);
	char *v = NULL;
	size_t len = 0;
	ck_assert_int_eq(mica_kv_get(kv, k, &v, &len), 0);
	int rc = mica_kvcache_put(kc, k, v, len, t);
	free(v);
	return rc;
}

static void assert_hit(mica_kvcache *kc, const char *k, const char *want)
{
	char *v = NULL;
	size_t len = 0;
	int rc = mica_kvcache_get(kc, k, &v, &len);
	ck_assert_msg(rc == 0, "expected a hit: %s", mica_strerror(rc));
	ck_assert_uint_eq(len, strlen(want));
	ck_assert_str_eq(v, want);
	free(v);
}

static void assert_miss(mica_kvcache *kc, const char *k)
{
	char *v = (char *)1;
	ck_assert_int_eq(mica_kvcache_get(kc, k, &v, NULL), MICA_ENOTFOUND);
	ck_assert_ptr_null(v);
}

START_TEST(put_then_hit)
{
	mica_kvcache *kc = start(100);
	static const char bin[] = "a\0b";
	ck_assert_int_eq(mica_kvcache_put(kc, key("bin"), bin, 3, mica_kvcache_ticket(kc)), 0);
	char *v = NULL;
	size_t len = 0;
	ck_assert_int_eq(mica_kvcache_get(kc, key("bin"), &v, &len), 0);
	ck_assert_uint_eq(len, 3);
	ck_assert_int_eq(memcmp(v, bin, 3), 0);
	ck_assert_int_eq(v[3], '\0');
	free(v);
	assert_miss(kc, key("absent"));
	/* Replacing a value keeps one entry. */
	ck_assert_int_eq(mica_kvcache_put(kc, key("bin"), "new", 3, mica_kvcache_ticket(kc)), 0);
	assert_hit(kc, key("bin"), "new");
	struct mica_kvcache_stats st;
	mica_kvcache_stats(kc, &st);
	ck_assert_uint_eq(st.hits, 2);
	ck_assert_uint_eq(st.misses, 1);
	ck_assert_uint_eq(st.entries, 1);
	ck_assert_int_eq(st.connected, 1);
	ck_assert_int_eq(mica_kvcache_put(kc, "test:elsewhere", "x", 1, mica_kvcache_ticket(kc)),
			 MICA_EINVAL);
	ck_assert_int_eq(mica_kvcache_get(kc, NULL, &v, NULL), MICA_EINVAL);
	mica_kvcache_stop(&kc);
	mica_kvcache_stop(&kc);
	ck_assert_ptr_null(kc);
}
END_TEST

/* A SET and a DEL by another connection: the very next lookup misses, with
 * no sleep in between. Repeated to catch an unlucky interleaving. */
START_TEST(change_by_other_client_is_seen_at_once)
{
	mica_kvcache *kc = start(100);
	mica_kv *kv = plain();
	const char *k = key("s");
	for (int i = 0; i < 200; i++) {
		ck_assert_int_eq(mica_kv_set(kv, k, "v1", 2, 60), 0);
		ck_assert_int_eq(fill(kc, kv, k), 0);
		assert_hit(kc, k, "v1");
		ck_assert_int_eq(mica_kv_set(kv, k, "v2", 2, 60), 0);
		assert_miss(kc, k);
		ck_assert_int_eq(fill(kc, kv, k), 0);
		assert_hit(kc, k, "v2");
		ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
		assert_miss(kc, k);
	}
	struct mica_kvcache_stats st;
	mica_kvcache_stats(kc, &st);
	ck_assert_uint_ge(st.invalidations, 400);
	mica_kv_close(&kv);
	mica_kvcache_stop(&kc);
}
END_TEST

/* Expiry is a change too: once Redis has removed the key (here by the lazy
 * expiry of a GET after the TTL), the cached copy is gone. */
START_TEST(expiry_invalidates)
{
	mica_kvcache *kc = start(100);
	mica_kv *kv = plain();
	const char *k = key("ex");
	ck_assert_int_eq(mica_kv_set(kv, k, "v", 1, 1), 0);
	ck_assert_int_eq(fill(kc, kv, k), 0);
	assert_hit(kc, k, "v");
	/* The TTL lives in Redis, whose clock a test cannot move: it must pass. */
	nanosleep(&(struct timespec){1, 200000000}, NULL);
	char *v = NULL;
	ck_assert_int_eq(mica_kv_get(kv, k, &v, NULL), MICA_ENOTFOUND);
	assert_miss(kc, k);
	mica_kv_close(&kv);
	mica_kvcache_stop(&kc);
}
END_TEST

/* The ticket: a value read before a change whose invalidation was applied
 * before the put is never stored; a local drop moves the ticket too. */
START_TEST(ticket_refuses_stale_fill)
{
	mica_kvcache *kc = start(100);
	mica_kv *kv = plain();
	const char *k = key("t");
	ck_assert_int_eq(mica_kv_set(kv, k, "old", 3, 60), 0);
	uint64_t t = mica_kvcache_ticket(kc);
	char *v = NULL;
	ck_assert_int_eq(mica_kv_get(kv, k, &v, NULL), 0);
	ck_assert_str_eq(v, "old");
	ck_assert_int_eq(mica_kv_set(kv, k, "new", 3, 60), 0); /* the foreign write */
	ck_assert_int_eq(mica_kvcache_put(kc, k, v, 3, t), MICA_ESTATE);
	free(v);
	assert_miss(kc, k);

	t = mica_kvcache_ticket(kc);
	mica_kvcache_drop(kc, key("unrelated"));
	ck_assert_int_eq(mica_kvcache_put(kc, k, "new", 3, t), MICA_ESTATE);
	ck_assert_int_eq(fill(kc, kv, k), 0);
	assert_hit(kc, k, "new");
	mica_kvcache_drop(kc, k);
	assert_miss(kc, k);
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
	mica_kv_close(&kv);
	mica_kvcache_stop(&kc);
}
END_TEST

/* Keys outside the prefix are not tracked: writing them moves nothing. */
START_TEST(keys_outside_prefix_are_not_tracked)
{
	mica_kvcache *kc = start(100);
	mica_kv *kv = plain();
	char outside[64];
	snprintf(outside, sizeof(outside), "test:%d:other", (int)getpid());
	ck_assert_int_eq(mica_kv_set(kv, key("in"), "v", 1, 60), 0);
	ck_assert_int_eq(fill(kc, kv, key("in")), 0);
	struct mica_kvcache_stats before, after;
	mica_kvcache_stats(kc, &before);
	uint64_t t = mica_kvcache_ticket(kc);
	ck_assert_int_eq(mica_kv_set(kv, outside, "x", 1, 60), 0);
	ck_assert_int_eq(mica_kv_del(kv, outside, NULL), 0);
	assert_hit(kc, key("in"), "v");
	ck_assert_int_eq(mica_kvcache_put(kc, key("in2"), "w", 1, t), 0);
	mica_kvcache_stats(kc, &after);
	ck_assert_uint_eq(after.invalidations, before.invalidations);
	ck_assert_int_eq(mica_kv_del(kv, key("in"), NULL), 0);
	mica_kv_close(&kv);
	mica_kvcache_stop(&kc);
}
END_TEST

START_TEST(max_entries_bound)
{
	mica_kvcache *kc = start(8);
	char k[32];
	for (int i = 0; i < 100; i++) {
		snprintf(k, sizeof(k), "%d", i);
		ck_assert_int_eq(
			mica_kvcache_put(kc, key(k), k, strlen(k), mica_kvcache_ticket(kc)), 0);
		assert_hit(kc, key(k), k);
	}
	struct mica_kvcache_stats st;
	mica_kvcache_stats(kc, &st);
	ck_assert_uint_eq(st.entries, 8);
	ck_assert_uint_eq(st.evictions, 92);
	mica_kvcache_stop(&kc);
}
END_TEST

START_TEST(max_age)
{
	struct mica_kv_config c = config();
	mica_kvcache_options o = {.prefix = prefix(), .max_entries = 10, .max_age_ms = 100};
	mica_kvcache *kc = NULL;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), 0);
	ck_assert_int_eq(mica_kvcache_put(kc, key("a"), "v", 1, mica_kvcache_ticket(kc)), 0);
	assert_hit(kc, key("a"), "v");
	mica__clock_advance_ms(100); /* the age limit passes, without a sleep */
	assert_miss(kc, key("a"));
	mica_kvcache_stop(&kc);
}
END_TEST

static int wait_connected(mica_kvcache *kc, int64_t limit_ms)
{
	struct mica_kvcache_stats st;
	int64_t end = mica_clock_ms() + limit_ms;
	do {
		mica_kvcache_stats(kc, &st);
		if (st.connected)
			return 1;
		usleep(10 * 1000);
	} while (mica_clock_ms() < end);
	return 0;
}

/* Redis restarts: the table is flushed, and lookups miss until the thread
 * has reconnected; then caching and invalidation work again. */
START_TEST(redis_restart)
{
	mica_kvcache *kc = start(100);
	const char *k = key("r");
	ck_assert_int_eq(mica_kvcache_put(kc, k, "v", 1, mica_kvcache_ticket(kc)), 0);
	struct mica_kvcache_stats before, st;
	mica_kvcache_stats(kc, &before);

	int s = system(env("MICA_REDIS_RESTART"));
	ck_assert_msg(s != -1 && WIFEXITED(s) && WEXITSTATUS(s) == 0, "restart failed: %d", s);
	assert_miss(kc, k);
	ck_assert_msg(wait_connected(kc, 15000), "no reconnection within 15 s");
	mica_kvcache_stats(kc, &st);
	ck_assert_uint_gt(st.flushes, before.flushes);
	ck_assert_uint_eq(st.entries, 0);
	assert_miss(kc, k);

	mica_kv *kv = plain();
	ck_assert_int_eq(mica_kv_set(kv, k, "v2", 2, 60), 0);
	ck_assert_int_eq(fill(kc, kv, k), 0);
	assert_hit(kc, k, "v2");
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
	assert_miss(kc, k);
	mica_kv_close(&kv);
	mica_kvcache_stop(&kc);
}
END_TEST

/* Redis unreachable at start: the cache starts disabled (every get misses,
 * nothing is stored) instead of failing the service. */
START_TEST(down_at_start_is_off)
{
	struct mica_kv_config c = config();
	char path[512];
	snprintf(path, sizeof(path), "%s/no-such.sock", env("MICA_TEST_DIR"));
	c.socket_path = path;
	mica_kvcache_options o = {.prefix = prefix(), .max_entries = 10};
	mica_kvcache *kc = NULL;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), 0);
	ck_assert_int_eq(mica_kvcache_put(kc, key("a"), "v", 1, mica_kvcache_ticket(kc)),
			 MICA_ESTATE);
	assert_miss(kc, key("a"));
	struct mica_kvcache_stats st;
	mica_kvcache_stats(kc, &st);
	ck_assert_int_eq(st.connected, 0);
	ck_assert_uint_eq(st.entries, 0);
	mica_kvcache_stop(&kc);
}
END_TEST

START_TEST(start_errors)
{
	struct mica_kv_config c = config();
	mica_kvcache_options o = {.prefix = prefix(), .max_entries = 10};
	mica_kvcache *kc = (mica_kvcache *)1;
	c.password = "wrong";
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), MICA_ECONFIG);
	ck_assert_ptr_null(kc);
	c = config();
	o.max_entries = 0;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), MICA_EINVAL);
	o.max_entries = 10;
	o.prefix = "";
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), MICA_EINVAL);
	o.prefix = prefix();
	o.max_age_ms = -1;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), MICA_EINVAL);
	o.max_age_ms = 0;
	o.sync_window_ms = -1;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), MICA_EINVAL);
	o.sync_window_ms = MICA_KVCACHE_SYNC_WINDOW_MAX_MS + 1;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), MICA_EINVAL);
	ck_assert_int_eq(mica_kvcache_start(NULL, &c, &o), MICA_EINVAL);
}
END_TEST

/* Two account instances on one Redis, each with its cache: a session revoked
 * through A (tombstone written, A's copy dropped) fails on the very next
 * lookup through B. */
START_TEST(two_instances_revocation)
{
	mica_kvcache *a = start(100), *b = start(100);
	mica_kv *kv_a = plain(), *kv_b = plain();
	const char *k = key("session");
	ck_assert_int_eq(mica_kv_set(kv_a, k, "{\"live\":1}", 10, 60), 0);
	ck_assert_int_eq(fill(a, kv_a, k), 0);
	ck_assert_int_eq(fill(b, kv_b, k), 0);
	assert_hit(a, k, "{\"live\":1}");
	assert_hit(b, k, "{\"live\":1}");
	ck_assert_int_eq(mica_kv_set(kv_a, k, "{\"revoked\":true}", 16, 60), 0);
	mica_kvcache_drop(a, k);
	assert_miss(b, k);
	assert_miss(a, k);
	ck_assert_int_eq(mica_kv_del(kv_a, k, NULL), 0);
	mica_kv_close(&kv_a);
	mica_kv_close(&kv_b);
	mica_kvcache_stop(&a);
	mica_kvcache_stop(&b);
}
END_TEST

/* The pid of the harness Redis (deploy/lib.sh keeps it in redis/redis.pid). */
static pid_t redis_pid(void)
{
	char path[512];
	long pid = 0;
	snprintf(path, sizeof(path), "%s/redis/redis.pid", env("MICA_TEST_DIR"));
	FILE *f = fopen(path, "r");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	ck_assert_int_eq(fscanf(f, "%ld", &pid), 1);
	fclose(f);
	ck_assert_int_gt(pid, 1);
	return (pid_t)pid;
}

/* Redis stops answering (SIGSTOP: its sockets stay open, so no EOF ever
 * tells the cache) while an entry is cached. Past the sync window the entry
 * is no longer served, and it is not served again when Redis answers again
 * (the table was dropped at the lapse): an invalidation Redis would have
 * sent during the silence cannot have been missed. Without the heartbeat
 * the entry was served all along. */
START_TEST(paused_redis_stops_serving)
{
	struct mica_kv_config c = config();
	mica_kvcache_options o = {.prefix = prefix(), .max_entries = 10, .sync_window_ms = 1000};
	mica_kvcache *kc = NULL;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), 0);
	mica_kv *kv = plain();
	const char *k = key("paused");
	ck_assert_int_eq(mica_kv_set(kv, k, "live", 4, 60), 0);
	ck_assert_int_eq(fill(kc, kv, k), 0);
	assert_hit(kc, k, "live");

	pid_t pid = redis_pid();
	ck_assert_int_eq(kill(pid, SIGSTOP), 0);
	char *v1 = NULL, *v2 = NULL;
	int within = mica_kvcache_get(kc, k, &v1, NULL); /* inside the window: still exact */
	nanosleep(&(struct timespec){1, 600000000}, NULL);
	int after = mica_kvcache_get(kc, k, &v2, NULL);
	int put = mica_kvcache_put(kc, k, "x", 1, mica_kvcache_ticket(kc));
	/* Resume before asserting, so a failure never leaves Redis stopped. */
	ck_assert_int_eq(kill(pid, SIGCONT), 0);
	free(v1);
	free(v2);
	ck_assert_int_eq(within, 0);
	ck_assert_msg(after == MICA_ENOTFOUND, "a silent Redis: the entry was still served (%s)",
		      mica_strerror(after));
	ck_assert_int_eq(put, MICA_ESTATE);

	/* Redis answers again: the entry does not come back by itself. */
	struct mica_kvcache_stats st;
	int64_t end = mica_clock_ms() + 5000;
	do {
		usleep(20 * 1000);
		mica_kvcache_stats(kc, &st);
	} while (mica_clock_ms() < end &&
		 mica_kvcache_put(kc, key("probe"), "p", 1, mica_kvcache_ticket(kc)) != 0);
	assert_hit(kc, key("probe"), "p");
	assert_miss(kc, k);
	mica_kvcache_stats(kc, &st);
	ck_assert_uint_ge(st.lapses, 1);
	ck_assert_int_eq(st.connected, 1);
	ck_assert_int_eq(fill(kc, kv, k), 0);
	assert_hit(kc, k, "live");
	ck_assert_int_eq(mica_kv_del(kv, k, NULL), 0);
	mica_kv_close(&kv);
	mica_kvcache_stop(&kc);
}
END_TEST

struct sync_probe {
	atomic_int calls;
	atomic_int fail; /* return an error this many more times */
};

static int on_sync(void *arg)
{
	struct sync_probe *p = arg;
	atomic_fetch_add(&p->calls, 1);
	if (atomic_load(&p->fail) > 0) {
		atomic_fetch_sub(&p->fail, 1);
		return MICA_EKVCONN;
	}
	return 0;
}

static int wait_calls(struct sync_probe *p, int n, int64_t limit_ms)
{
	int64_t end = mica_clock_ms() + limit_ms;
	while (atomic_load(&p->calls) < n && mica_clock_ms() < end)
		usleep(10 * 1000);
	return atomic_load(&p->calls) >= n;
}

static int wait_synced(mica_kvcache *kc, int64_t limit_ms)
{
	int64_t end = mica_clock_ms() + limit_ms;
	while (!mica_kvcache_synced(kc) && mica_clock_ms() < end)
		usleep(10 * 1000);
	return mica_kvcache_synced(kc);
}

/* on_sync runs after the first connection and after every reconnection
 * (Redis may have come back from an older file: only the writer can put
 * its truth back), again on request, and again after a failure;
 * mica_kvcache_synced() is 0 until it has succeeded. */
START_TEST(on_sync_after_reconnect_and_request)
{
	struct mica_kv_config c = config();
	struct sync_probe p = {0};
	mica_kvcache_options o = {
		.prefix = prefix(), .max_entries = 10, .on_sync = on_sync, .on_sync_arg = &p};
	mica_kvcache *kc = NULL;
	ck_assert_int_eq(mica_kvcache_start(&kc, &c, &o), 0);
	ck_assert_msg(wait_calls(&p, 1, 5000), "on_sync did not run after the first connection");
	ck_assert(wait_synced(kc, 5000));

	int s = system(env("MICA_REDIS_RESTART"));
	ck_assert_msg(s != -1 && WIFEXITED(s) && WEXITSTATUS(s) == 0, "restart failed: %d", s);
	ck_assert_msg(wait_calls(&p, 2, 15000), "on_sync did not run after the reconnection");
	ck_assert(wait_synced(kc, 5000));

	atomic_store(&p.fail, 1);
	mica_kvcache_request_sync(kc);
	ck_assert_int_eq(mica_kvcache_synced(kc), 0);
	ck_assert(wait_calls(&p, 3, 5000));
	ck_assert_int_eq(mica_kvcache_synced(kc), 0); /* it failed: still pending */
	ck_assert_msg(wait_calls(&p, 4, 15000), "a failed on_sync was not tried again");
	ck_assert(wait_synced(kc, 5000));
	struct mica_kvcache_stats st;
	mica_kvcache_stats(kc, &st);
	ck_assert_uint_eq(st.resyncs, 3);
	mica_kvcache_stop(&kc);
	ck_assert_int_eq(mica_kvcache_synced(NULL), 1);
	mica_kvcache_request_sync(NULL);
}
END_TEST

START_TEST(null_cache_is_off)
{
	char *v = (char *)1;
	size_t len = 7;
	ck_assert_int_eq(mica_kvcache_get(NULL, "k", &v, &len), MICA_ENOTFOUND);
	ck_assert_ptr_null(v);
	ck_assert_uint_eq(len, 0);
	ck_assert_uint_eq(mica_kvcache_ticket(NULL), 0);
	ck_assert_int_eq(mica_kvcache_put(NULL, "k", "v", 1, 0), 0);
	mica_kvcache_drop(NULL, "k");
	struct mica_kvcache_stats st;
	memset(&st, 0xff, sizeof(st));
	mica_kvcache_stats(NULL, &st);
	ck_assert_uint_eq(st.hits, 0);
	ck_assert_int_eq(st.connected, 0);
	mica_kvcache_stop(NULL);
}
END_TEST

/* ---- the parser, on hand-written RESP --------------------------------------- */

static void count_key(void *arg, const char *k, size_t len)
{
	(void)k;
	*(size_t *)arg += len;
}

static enum mica__kvcache_msg parse_resp(const char *resp, size_t *key_bytes)
{
	redisReader *r = redisReaderCreate();
	void *reply = NULL;
	ck_assert_int_eq(redisReaderFeed(r, resp, strlen(resp)), REDIS_OK);
	ck_assert_int_eq(redisReaderGetReply(r, &reply), REDIS_OK);
	ck_assert_ptr_nonnull(reply);
	*key_bytes = 0;
	enum mica__kvcache_msg m = mica__kvcache_msg_parse(reply, count_key, key_bytes);
	freeReplyObject(reply);
	redisReaderFree(r);
	return m;
}

START_TEST(message_parser)
{
	size_t n;
	ck_assert_int_eq(parse_resp("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"
				    "*2\r\n$3\r\nabc\r\n$2\r\nde\r\n",
				    &n),
			 MICA__KVCACHE_KEYS);
	ck_assert_uint_eq(n, 5);
	ck_assert_int_eq(
		parse_resp("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*-1\r\n", &n),
		MICA__KVCACHE_FLUSH);
	ck_assert_int_eq(
		parse_resp("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n:1\r\n", &n),
		MICA__KVCACHE_FLUSH);
	ck_assert_int_eq(parse_resp("*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"
				    "*2\r\n$3\r\nabc\r\n:4\r\n",
				    &n),
			 MICA__KVCACHE_FLUSH);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(
		parse_resp("*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n", &n),
		MICA__KVCACHE_OTHER);
	ck_assert_int_eq(parse_resp("*3\r\n$7\r\nmessage\r\n$5\r\nother\r\n*1\r\n$1\r\na\r\n", &n),
			 MICA__KVCACHE_OTHER);
	ck_assert_int_eq(parse_resp("+PONG\r\n", &n), MICA__KVCACHE_OTHER);
	ck_assert_int_eq(mica__kvcache_msg_parse(NULL, NULL, NULL), MICA__KVCACHE_OTHER);
}
END_TEST

static Suite *kvcache_suite(void)
{
	Suite *s = suite_create("kvcache");
	TCase *tc = tcase_create("redis");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, put_then_hit);
	tcase_add_test(tc, change_by_other_client_is_seen_at_once);
	tcase_add_test(tc, expiry_invalidates);
	tcase_add_test(tc, ticket_refuses_stale_fill);
	tcase_add_test(tc, keys_outside_prefix_are_not_tracked);
	tcase_add_test(tc, max_entries_bound);
	tcase_add_test(tc, max_age);
	tcase_add_test(tc, redis_restart);
	tcase_add_test(tc, down_at_start_is_off);
	tcase_add_test(tc, start_errors);
	tcase_add_test(tc, two_instances_revocation);
	tcase_add_test(tc, paused_redis_stops_serving);
	tcase_add_test(tc, on_sync_after_reconnect_and_request);
	tcase_add_test(tc, null_cache_is_off);
	tcase_add_test(tc, message_parser);
	suite_add_tcase(s, tc);
	return s;
}

static const char *const needs[] = {
	"MICA_REDIS_SOCKET",  "MICA_REDIS_USER", "MICA_REDIS_PASSWORD_FILE",
	"MICA_REDIS_RESTART", "MICA_TEST_DIR",	 NULL};

const struct mica_check mica_check = {
	.suite = kvcache_suite, .needs = needs, .log = MICA_CHECK_LOG_ERRORS};
