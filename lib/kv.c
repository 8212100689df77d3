/* kv.c - Redis access for libmica (see kv.h): lazy per-thread hiredis
 * connections on a Unix socket with ACL AUTH, reconnect after a Redis
 * restart, binary-safe argv commands, and the rate-limit, nonce and
 * get/set/del helpers built on them.
 */
#include "kv.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "crypto.h"
#include "log.h"
#include "thread.h"

struct mica_kv {
	redisContext *ctx;
	char *socket_path;
	char *username;
	char *password; /* wiped on free, never logged */
	int timeout_ms;
	int thread_owned;
	/* lib/kvcache's dedicated connection: failures are logged by the caller,
	 * and the handle stays bound to the connection it opened with (its
	 * state, tracking and subscription, would not carry over). */
	int quiet;
	char errmsg[256];
};

/* ---- settings -------------------------------------------------------- */

static void free_secret(char *s)
{
	mica_free_wipe(s);
}

static void kv_free(mica_kv *kv)
{
	if (!kv)
		return;
	if (kv->ctx)
		redisFree(kv->ctx);
	free(kv->socket_path);
	free(kv->username);
	free_secret(kv->password);
	free(kv);
}

static int dup_opt(char **dst, const char *src)
{
	*dst = NULL;
	if (!src)
		return 1;
	*dst = strdup(src);
	return *dst != NULL;
}

/* Copies |cfg| into a new unconnected handle. *rc tells why on NULL. */
static mica_kv *kv_new(const struct mica_kv_config *cfg, int *rc)
{
	*rc = MICA_EINVAL;
	if (!cfg || !cfg->socket_path || !*cfg->socket_path || cfg->timeout_ms < 0)
		return NULL;
	*rc = MICA_ENOMEM;
	mica_kv *kv = calloc(1, sizeof(*kv));
	if (!kv)
		return NULL;
	kv->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 2000;
	if (!dup_opt(&kv->socket_path, cfg->socket_path) ||
	    !dup_opt(&kv->username, cfg->username) || !dup_opt(&kv->password, cfg->password)) {
		kv_free(kv);
		return NULL;
	}
	*rc = 0;
	return kv;
}

static void set_err(mica_kv *kv, const char *msg, size_t len)
{
	if (len >= sizeof(kv->errmsg))
		len = sizeof(kv->errmsg) - 1;
	memcpy(kv->errmsg, msg, len);
	kv->errmsg[len] = '\0';
	for (char *p = kv->errmsg; *p; p++)
		if (*p == '\r' || *p == '\n')
			*p = ' ';
}

static void set_errs(mica_kv *kv, const char *msg)
{
	set_err(kv, msg, strlen(msg));
}

/* ---- connection ------------------------------------------------------ */

static void drop_conn(mica_kv *kv)
{
	if (kv->ctx)
		redisFree(kv->ctx);
	kv->ctx = NULL;
}

static int error_reply_code(const redisReply *r)
{
	if (r->len >= 6 && strncmp(r->str, "NOPERM", 6) == 0)
		return MICA_EPERM;
	return MICA_EKV;
}

static int kv_connect(mica_kv *kv)
{
	struct timeval tv = {.tv_sec = kv->timeout_ms / 1000,
			     .tv_usec = (kv->timeout_ms % 1000) * 1000};
	drop_conn(kv);
	redisContext *c = redisConnectUnixWithTimeout(kv->socket_path, tv);
	if (!c) {
		set_errs(kv, "out of memory");
		return MICA_ENOMEM;
	}
	if (c->err) {
		set_errs(kv, c->errstr);
		if (!kv->quiet)
			MICA_LOG(MICA_LOG_WARN, "kv: connect failed: %s", kv->errmsg);
		redisFree(c);
		return MICA_EKVCONN;
	}
	if (redisSetTimeout(c, tv) != REDIS_OK) {
		set_errs(kv, "cannot set socket timeout");
		redisFree(c);
		return MICA_EKVCONN;
	}
	if (kv->password) {
		const char *argv[3] = {"AUTH", kv->username, kv->password};
		const char **a = kv->username ? argv : (const char *[]){"AUTH", kv->password};
		int n = kv->username ? 3 : 2;
		redisReply *r = redisCommandArgv(c, n, a, NULL);
		if (!r) {
			set_errs(kv, c->errstr);
			if (!kv->quiet)
				MICA_LOG(MICA_LOG_WARN, "kv: AUTH failed: %s", kv->errmsg);
			redisFree(c);
			return MICA_EKVCONN;
		}
		if (r->type == REDIS_REPLY_ERROR) {
			set_err(kv, r->str, r->len);
			MICA_LOG(MICA_LOG_ERROR, "kv: Redis refused user \"%s\": %s",
				 kv->username ? kv->username : "default", kv->errmsg);
			freeReplyObject(r);
			redisFree(c);
			return MICA_ECONFIG;
		}
		freeReplyObject(r);
	}
	kv->ctx = c;
	return 0;
}

/* True if the connection looks alive. Redis sends nothing unsolicited to a
 * client in request/reply mode, so a readable socket means it closed (was
 * restarted): detected here, before a command is sent. */
static int conn_usable(mica_kv *kv)
{
	if (!kv->ctx || kv->ctx->err)
		return 0;
	struct pollfd p = {.fd = kv->ctx->fd, .events = POLLIN};
	int r = poll(&p, 1, 0);
	return r <= 0; /* 0: quiet; <0 (EINTR): let the command find out */
}

/* ---- SIGPIPE ---------------------------------------------------------- */

/* hiredis writes with write(2), so writing to a Redis that just went away
 * raises SIGPIPE, which would kill the host process. As libpq does, block it
 * in this thread around our I/O and swallow one we caused, without touching
 * the process-wide disposition. */
struct sigpipe_guard {
	sigset_t old;
	int was_pending;
};

static void sigpipe_block(struct sigpipe_guard *g)
{
	sigset_t pipe_set, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigemptyset(&pending);
	sigpending(&pending);
	g->was_pending = sigismember(&pending, SIGPIPE) == 1;
	pthread_sigmask(SIG_BLOCK, &pipe_set, &g->old);
}

static void sigpipe_restore(struct sigpipe_guard *g)
{
	sigset_t pipe_set, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigemptyset(&pending);
	sigpending(&pending);
	if (!g->was_pending && sigismember(&pending, SIGPIPE) == 1) {
		struct timespec zero = {0, 0};
		int saved = errno;
		sigtimedwait(&pipe_set, NULL, &zero);
		errno = saved;
	}
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* ---- commands -------------------------------------------------------- */

/* One try. *unsent is set when the command was not (fully) written, so
 * Redis cannot have run it. */
static int send_once(mica_kv *kv, int argc, const char **argv, const size_t *argvlen,
		     redisReply **reply, int *unsent)
{
	redisContext *c = kv->ctx;
	*unsent = 0;
	if (redisAppendCommandArgv(c, argc, argv, argvlen) != REDIS_OK) {
		set_errs(kv, c->errstr[0] ? c->errstr : "out of memory");
		drop_conn(kv);
		return MICA_ENOMEM;
	}
	int done = 0;
	do {
		if (redisBufferWrite(c, &done) != REDIS_OK) {
			set_errs(kv, c->errstr);
			drop_conn(kv);
			*unsent = 1;
			return MICA_EKVCONN;
		}
	} while (!done);
	void *r = NULL;
	if (redisGetReply(c, &r) != REDIS_OK || !r) {
		int rc = c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)
				 ? MICA_ETIMEOUT
				 : MICA_EKVCONN;
		set_errs(kv, c->errstr[0] ? c->errstr : "connection lost");
		drop_conn(kv);
		return rc;
	}
	*reply = r;
	return 0;
}

int mica_kv_command(mica_kv *kv, redisReply **out, int argc, const char *const *argv,
		    const size_t *argvlen)
{
	if (out)
		*out = NULL;
	MICA_BLOCKING_ENTRY();
	if (!kv || argc < 1 || !argv)
		return MICA_EINVAL;
	for (int i = 0; i < argc; i++)
		if (!argv[i])
			return MICA_EINVAL;
	kv->errmsg[0] = '\0';

	/* hiredis takes char ** but does not modify the arguments. */
	const char **args = (const char **)argv;
	redisReply *r = NULL;
	int rc = 0;
	struct sigpipe_guard guard;
	sigpipe_block(&guard);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!conn_usable(kv)) {
			if (kv->quiet) {
				if (kv->ctx)
					drop_conn(kv);
				set_errs(kv, "connection lost");
				rc = MICA_EKVCONN;
				break;
			}
			if (kv->ctx)
				MICA_LOG(MICA_LOG_INFO,
					 "kv: connection closed by Redis; reconnecting");
			rc = kv_connect(kv);
			if (rc)
				break;
		}
		int unsent = 0;
		rc = send_once(kv, argc, args, argvlen, &r, &unsent);
		if (rc == 0 || !unsent || kv->quiet)
			break;
		MICA_LOG(MICA_LOG_INFO, "kv: write failed (%s); retrying once", kv->errmsg);
	}
	sigpipe_restore(&guard);
	if (rc) {
		MICA_LOG(MICA_LOG_WARN, "kv: %.32s failed: %s: %s", argv[0], mica_strerror(rc),
			 kv->errmsg);
		return rc;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		rc = error_reply_code(r);
		set_err(kv, r->str, r->len);
		MICA_LOG(MICA_LOG_WARN, "kv: %.32s refused: %s", argv[0], kv->errmsg);
		freeReplyObject(r);
		return rc;
	}
	if (out)
		*out = r;
	else
		freeReplyObject(r);
	return 0;
}

const char *mica_kv_errmsg(const mica_kv *kv)
{
	return kv ? kv->errmsg : "";
}

/* ---- helpers --------------------------------------------------------- */

static int key_ok(const char *key)
{
	return key && *key;
}

int mica_kv_set(mica_kv *kv, const char *key, const void *val, size_t len, int ttl_seconds)
{
	if (!key_ok(key) || (!val && len) || ttl_seconds < 0)
		return MICA_EINVAL;
	char ttl[16];
	snprintf(ttl, sizeof(ttl), "%d", ttl_seconds);
	const char *argv[5] = {"SET", key, val ? val : "", "EX", ttl};
	size_t lens[5] = {3, strlen(key), len, 2, strlen(ttl)};
	return mica_kv_command(kv, NULL, ttl_seconds ? 5 : 3, argv, lens);
}

int mica_kv_get(mica_kv *kv, const char *key, char **val, size_t *len)
{
	if (val)
		*val = NULL;
	if (len)
		*len = 0;
	if (!key_ok(key) || !val)
		return MICA_EINVAL;
	const char *argv[2] = {"GET", key};
	redisReply *r = NULL;
	int rc = mica_kv_command(kv, &r, 2, argv, NULL);
	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_NIL) {
		freeReplyObject(r);
		return MICA_ENOTFOUND;
	}
	if (r->type != REDIS_REPLY_STRING) {
		freeReplyObject(r);
		set_errs(kv, "unexpected reply type to GET");
		return MICA_EKV;
	}
	char *copy = malloc(r->len + 1);
	if (!copy) {
		freeReplyObject(r);
		return MICA_ENOMEM;
	}
	memcpy(copy, r->str, r->len);
	copy[r->len] = '\0';
	*val = copy;
	if (len)
		*len = r->len;
	freeReplyObject(r);
	return 0;
}

int mica_kv_del(mica_kv *kv, const char *key, int *deleted)
{
	if (deleted)
		*deleted = 0;
	if (!key_ok(key))
		return MICA_EINVAL;
	const char *argv[2] = {"DEL", key};
	redisReply *r = NULL;
	int rc = mica_kv_command(kv, &r, 2, argv, NULL);
	if (rc)
		return rc;
	if (deleted)
		*deleted = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
	freeReplyObject(r);
	return 0;
}

/* INCR, and start the window on the first hit (or repair a key that somehow
 * lost its TTL), atomically. Returns {count, ttl_ms}. */
static const char rate_limit_lua[] = "local n = redis.call('INCR', KEYS[1])\n"
				     "local ttl = redis.call('PTTL', KEYS[1])\n"
				     "if ttl < 0 then\n"
				     "  redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
				     "  ttl = tonumber(ARGV[1])\n"
				     "end\n"
				     "return {n, ttl}\n";

int mica_kv_rate_limit(mica_kv *kv, const char *key, long limit, int window_seconds, int *allowed,
		       long *remaining)
{
	if (allowed)
		*allowed = 0;
	if (remaining)
		*remaining = 0;
	if (!key_ok(key) || limit < 1 || window_seconds < 1 || window_seconds > INT_MAX / 1000 ||
	    !allowed)
		return MICA_EINVAL;
	char window_ms[24];
	snprintf(window_ms, sizeof(window_ms), "%ld", (long)window_seconds * 1000);
	const char *argv[5] = {"EVAL", rate_limit_lua, "1", key, window_ms};
	redisReply *r = NULL;
	int rc = mica_kv_command(kv, &r, 5, argv, NULL);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_INTEGER) {
		freeReplyObject(r);
		set_errs(kv, "unexpected reply to rate-limit script");
		return MICA_EKV;
	}
	long long count = r->element[0]->integer;
	freeReplyObject(r);
	*allowed = count <= limit;
	if (remaining)
		*remaining = count < limit ? (long)(limit - count) : 0;
	return 0;
}

int mica_kv_nonce(mica_kv *kv, const char *key, int ttl_seconds)
{
	if (!key_ok(key) || ttl_seconds < 1)
		return MICA_EINVAL;
	char ttl[16];
	snprintf(ttl, sizeof(ttl), "%d", ttl_seconds);
	const char *argv[6] = {"SET", key, "1", "NX", "EX", ttl};
	redisReply *r = NULL;
	int rc = mica_kv_command(kv, &r, 6, argv, NULL);
	if (rc)
		return rc;
	int fresh = r->type == REDIS_REPLY_STATUS;
	freeReplyObject(r);
	return fresh ? 0 : MICA_EREPLAY;
}

/* ---- handles --------------------------------------------------------- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static mica_kv *g_template; /* settings only, never connected */
static pthread_key_t g_key;
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static int g_key_ok;

static void thread_handle_destroy(void *p)
{
	kv_free(p);
}

static void key_create(void)
{
	g_key_ok = pthread_key_create(&g_key, thread_handle_destroy) == 0;
}

int mica_kv_global_init(const struct mica_kv_config *cfg)
{
	pthread_once(&g_key_once, key_create);
	if (!g_key_ok)
		return MICA_ENOMEM;
	int rc;
	mica_kv *t = kv_new(cfg, &rc);
	if (!t)
		return rc;
	pthread_mutex_lock(&g_mu);
	if (g_template) {
		rc = MICA_ESTATE;
	} else {
		g_template = t;
		t = NULL;
	}
	pthread_mutex_unlock(&g_mu);
	kv_free(t);
	return rc;
}

void mica_kv_global_cleanup(void)
{
	pthread_mutex_lock(&g_mu);
	kv_free(g_template);
	g_template = NULL;
	pthread_mutex_unlock(&g_mu);
	if (g_key_ok) {
		mica_kv *kv = pthread_getspecific(g_key);
		if (kv) {
			pthread_setspecific(g_key, NULL);
			kv_free(kv);
		}
	}
}

mica_kv *mica_kv_thread(void)
{
	pthread_once(&g_key_once, key_create);
	if (!g_key_ok)
		return NULL;
	mica_kv *kv = pthread_getspecific(g_key);
	if (kv)
		return kv;
	int rc = MICA_ESTATE;
	pthread_mutex_lock(&g_mu);
	if (g_template) {
		struct mica_kv_config cfg = {g_template->socket_path, g_template->username,
					     g_template->password, g_template->timeout_ms};
		kv = kv_new(&cfg, &rc);
	}
	pthread_mutex_unlock(&g_mu);
	if (!kv || pthread_setspecific(g_key, kv) != 0) {
		MICA_LOG(MICA_LOG_ERROR, "kv: cannot create thread handle: %s",
			 rc == MICA_ESTATE ? "mica_kv_global_init() not called" : "out of memory");
		kv_free(kv);
		return NULL;
	}
	kv->thread_owned = 1;
	return kv;
}

static int kv_open(mica_kv **out, const struct mica_kv_config *cfg, int quiet)
{
	if (!out)
		return MICA_EINVAL;
	*out = NULL;
	MICA_BLOCKING_ENTRY();
	int rc;
	mica_kv *kv = kv_new(cfg, &rc);
	if (!kv)
		return rc;
	kv->quiet = quiet;
	struct sigpipe_guard guard;
	sigpipe_block(&guard);
	rc = kv_connect(kv);
	sigpipe_restore(&guard);
	if (rc) {
		kv_free(kv);
		return rc;
	}
	*out = kv;
	return 0;
}

void mica_kv_close(mica_kv **kvp)
{
	if (!kvp || !*kvp)
		return;
	if (!(*kvp)->thread_owned)
		kv_free(*kvp);
	*kvp = NULL;
}

int mica_kv_open(mica_kv **out, const struct mica_kv_config *cfg)
{
	return kv_open(out, cfg, 0);
}

int mica__kv_open_quiet(mica_kv **out, const struct mica_kv_config *cfg)
{
	return kv_open(out, cfg, 1);
}

redisContext *mica__kv_context(mica_kv *kv)
{
	return kv ? kv->ctx : NULL;
}
