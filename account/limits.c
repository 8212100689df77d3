/* limits.c - the account service's security limits in Redis: login failure
 * counters (captcha), the login-rate step-up, single-use captcha solutions
 * and the quotas of one-time codes. They fail closed: a limit that cannot be
 * counted refuses the request with 503 unavailable rather than let it
 * through uncounted, and the service remembers whether Redis answered at the
 * last attempt (acct_limits_ready), for readiness probes. */
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "kv.h"
#include "log.h"
#include "parse.h"

/* The error of the last Redis operation that could not reach Redis (0: the
 * last one did). */
static _Atomic int last_kv_error;

/* Records how a Redis operation went: reachable unless the connection (or
 * the login on reconnect) failed. An error reply (ACL, script) means Redis
 * answered. */
static void note(int err)
{
	int down = err == MICA_EKVCONN || err == MICA_ECONFIG || err == MICA_ENOMEM;
	int was = atomic_exchange(&last_kv_error, down ? err : 0);
	/* Logged once per change, not per request. */
	if (down && !was)
		MICA_LOG(MICA_LOG_ERROR,
			 "account: Redis is unreachable (%s): captcha, login-rate and code limits"
			 " refuse their requests with 503 until it is back",
			 mica_strerror(err));
	else if (!down && was)
		MICA_LOG(MICA_LOG_INFO, "account: Redis is reachable again: security limits count");
}

bool acct_limits_ready(const char **why)
{
	int err = atomic_load(&last_kv_error);
	if (why)
		*why = err ? "Redis is unreachable: captcha, login-rate and code limits cannot be "
			     "counted, so the requests they guard are refused with 503"
			   : NULL;
	return err == 0;
}

bool acct_limits_probe(const char **why)
{
	mica_kv *kv = mica_kv_thread();
	redisReply *r = NULL;
	const char *argv[1] = {"PING"};
	int err = kv ? mica_kv_command(kv, &r, 1, argv, NULL) : MICA_EKVCONN;
	if (r)
		freeReplyObject(r);
	note(err);
	return acct_limits_ready(why);
}

int acct_limits_fail(mica_problem *f, int err)
{
	MICA_LOG(MICA_LOG_ERROR,
		 "account: a security limit cannot be counted (Redis: %s);"
		 " the request is refused",
		 mica_strerror(err));
	json_decref(f->extra);
	f->extra = NULL;
	mica_problem_unavailable(f, "redis");
	snprintf(f->msg, sizeof(f->msg),
		 "the rate limiter (Redis) is unavailable, so this request cannot be counted;"
		 " try again later");
	return err ? err : MICA_EKVCONN;
}

/* This thread's Redis handle, or MICA_EKVCONN (noted) when there is none. */
static mica_kv *kv_or_fail(int *err)
{
	mica_kv *kv = mica_kv_thread();
	*err = kv ? 0 : MICA_EKVCONN;
	if (!kv)
		note(MICA_EKVCONN);
	return kv;
}

int acct_limit_hit(const char *key, long limit, int window_s, int *allowed, mica_problem *f)
{
	int err;
	mica_kv *kv = kv_or_fail(&err);
	*allowed = 0;
	if (kv) {
		err = mica_kv_rate_limit(kv, key, limit, window_s, allowed, NULL);
		note(err);
	}
	return err ? acct_limits_fail(f, err) : 0;
}

int acct_counters_get(const char *k1, const char *k2, long *v1, long *v2, mica_problem *f)
{
	redisReply *r = NULL;
	const char *argv[3] = {"MGET", k1, k2};
	int err;
	mica_kv *kv = kv_or_fail(&err);
	*v1 = *v2 = 0;
	if (kv) {
		err = mica_kv_command(kv, &r, 3, argv, NULL);
		note(err);
	}
	if (err)
		return acct_limits_fail(f, err);
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
		/* INCR keeps them integers; anything else is counted as
		 * over every limit rather than as zero (fail closed). */
		int64_t n;
		if (r->element[0]->type == REDIS_REPLY_STRING)
			*v1 = mica_parse_int64(r->element[0]->str, 0, LONG_MAX, &n) == 0 ? (long)n
											 : LONG_MAX;
		if (r->element[1]->type == REDIS_REPLY_STRING)
			*v2 = mica_parse_int64(r->element[1]->str, 0, LONG_MAX, &n) == 0 ? (long)n
											 : LONG_MAX;
	}
	freeReplyObject(r);
	return 0;
}

int acct_counter_bump(const char *key, int window_s, mica_problem *f)
{
	char ttl[16];
	redisReply *r = NULL;
	int err;
	mica_kv *kv = kv_or_fail(&err);
	if (!kv)
		return acct_limits_fail(f, err);
	snprintf(ttl, sizeof(ttl), "%d", window_s);
	const char *incr[2] = {"INCR", key};
	const char *exp[4] = {"EXPIRE", key, ttl, "NX"};
	if ((err = mica_kv_command(kv, &r, 2, incr, NULL)) == 0) {
		freeReplyObject(r);
		r = NULL;
		if ((err = mica_kv_command(kv, &r, 4, exp, NULL)) == 0)
			freeReplyObject(r);
	}
	note(err);
	return err ? acct_limits_fail(f, err) : 0;
}

void acct_counter_clear(const char *key)
{
	mica_kv *kv = mica_kv_thread();
	int err = kv ? mica_kv_del(kv, key, NULL) : MICA_EKVCONN;
	note(err);
	/* Not a limit: a counter left standing only asks for a captcha sooner. */
	if (err)
		MICA_LOG(MICA_LOG_WARN, "account: a failure counter could not be cleared");
}

int acct_nonce_use(const char *key, int ttl_s, int *fresh, mica_problem *f)
{
	int err;
	mica_kv *kv = kv_or_fail(&err);
	*fresh = 0;
	if (kv) {
		err = mica_kv_nonce(kv, key, ttl_s);
		note(err == MICA_EREPLAY ? 0 : err);
	}
	if (err == MICA_EREPLAY)
		return 0;
	if (err)
		return acct_limits_fail(f, err);
	*fresh = 1;
	return 0;
}

int acct_code_quota(acct_service *s, enum acct_code_class cls, const char *target_idx,
		    const char *requester, mica_problem *f)
{
	const char *c = cls == ACCT_CODES_OWNER ? "owner" : "open";
	char pair[400], addr[240];
	int allowed = 0, err;
	snprintf(pair, sizeof(pair), "account:codes:%s:%.150s:%.150s", c, target_idx, requester);
	snprintf(addr, sizeof(addr), "account:codes:%s:%.150s", c, target_idx);
	/* The requester's own bucket first: what it refuses does not reach the
	 * address's ceiling, so one requester alone can never fill that. */
	if ((err = acct_limit_hit(pair, s->cfg->codes_per_hour, 3600, &allowed, f)) != 0)
		return err;
	if (allowed &&
	    (err = acct_limit_hit(addr, s->cfg->codes_per_address_hour, 3600, &allowed, f)) != 0)
		return err;
	if (!allowed)
		return mica_problemf(f, 429, "too_many_codes",
				     "too many codes were asked for this address; try again later");
	return 0;
}
