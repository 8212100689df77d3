/* purge.c - the push service's scheduled jobs (docs/push-internals.md,
 * issue 21 item 4): undelivered messages deleted at their TTL, devices
 * silent for push.retention.silent_days purged with their queue, expired
 * job keys, and message traces kept push.retention.trace_days after expiry.
 * Each job takes its clock from the caller, deletes in bounded batches with
 * FOR UPDATE SKIP LOCKED (several nodes may run it at once) and counts what
 * it deletes undelivered through push_stats_record() in the same
 * transaction. Also the thread that runs them and the receipts. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "httpc.h"
#include "log.h"
#include "mipush/push.h"
#include "parse.h"

enum counted_as { AS_EXPIRED, AS_DROPPED };

/* |res| has rows (app_id, msg_id or NULL for a marker, count): records each
 * message's count as |as| at |now_ms|; adds every row's count to *total. */
static int record_deleted(mica_db *db, const PGresult *res, int64_t now_ms, enum counted_as as,
			  long *total)
{
	push_stats_batch b = {0};
	int err = 0;
	for (int i = 0; !err && i < PQntuples(res); i++) {
		int64_t n = 0;
		if ((err = mica_db_get_int64(res, i, 2, &n)) != 0)
			break;
		*total += (long)n;
		const char *msg = mica_db_get(res, i, 1);
		if (!msg) /* a deleted_messages marker: counts nothing */
			continue;
		push_counts c = {0};
		if (as == AS_EXPIRED)
			c.expired = (long)n;
		else
			c.dropped = (long)n;
		err = push_stats_batch_add(&b, mica_db_get(res, i, 0), msg, &c);
	}
	int rerr = push_stats_batch_record(db, &b, now_ms);
	return err ? err : rerr;
}

static void ms_text(int64_t ms, char out[32])
{
	snprintf(out, 32, "%.3f", (double)ms / 1000.0);
}

/* ---- expiry ----------------------------------------------------------------- */

struct batch_tx {
	int64_t now_ms;
	int batch, days;
	long done;	 /* rows this transaction deleted */
	long counted;	 /* queue rows counted */
	const char *app; /* push_registrations_delete */
	json_t *regids, *unknown;
};

static int expired_tx(mica_db *db, void *arg)
{
	struct batch_tx *t = arg;
	char now[32], lim[16];
	PGresult *res = NULL;
	ms_text(t->now_ms, now);
	snprintf(lim, sizeof(lim), "%d", t->batch);
	t->done = 0;
	const char *params[] = {now, lim};
	int err = mica_db_exec(db,
			       "WITH gone AS (DELETE FROM push.queue WHERE seq IN (SELECT seq FROM"
			       " push.queue WHERE expires_at <= to_timestamp($1::float8) ORDER BY"
			       " expires_at LIMIT $2::int FOR UPDATE SKIP LOCKED) RETURNING app_id,"
			       " msg_id) SELECT app_id, msg_id, count(*) FROM gone GROUP BY app_id,"
			       " msg_id",
			       2, params, &res);
	if (!err)
		err = record_deleted(db, res, t->now_ms, AS_EXPIRED, &t->done);
	PQclear(res);
	return err;
}

/* Runs |fn| in transactions until one deletes less than a batch. */
static int in_batches(mica_db *db, mica_db_tx_fn fn, struct batch_tx *t, long *n)
{
	long total = 0;
	int err;
	if (n)
		*n = 0;
	if (!db || t->batch < 1)
		return MICA_EINVAL;
	do {
		if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, fn, t)) != 0)
			return err;
		total += t->done;
		if (n)
			*n = total;
	} while (t->done >= t->batch);
	return 0;
}

int push_purge_expired(mica_db *db, int64_t now_ms, int batch, long *n)
{
	struct batch_tx t = {.now_ms = now_ms, .batch = batch};
	return in_batches(db, expired_tx, &t, n);
}

/* ---- registrations: silent ones, and the developer's deletion --------------- */

/* The first column of |res| as a JSON array text (malloc'd), or NULL. */
static char *column_json(const PGresult *res)
{
	json_t *a = json_array();
	char *s = NULL;
	for (int i = 0; a && i < PQntuples(res); i++)
		if (json_array_append_new(a, json_string(mica_db_get(res, i, 0))) != 0)
			goto out;
	if (a)
		s = json_dumps(a, JSON_COMPACT);
out:
	json_decref(a);
	return s;
}

/* Deletes the queue rows of the locked registrations named by the first
 * column of |locked|, counting them dropped, then the registrations
 * (aliases, topics and job keys cascade). t->done is the registrations
 * deleted (none when |locked| has no row). */
static int delete_locked(mica_db *db, struct batch_tx *t, const PGresult *locked)
{
	PGresult *res = NULL;
	if (PQntuples(locked) == 0)
		return 0;
	char *list = column_json(locked);
	if (!list)
		return MICA_ENOMEM;
	const char *params[] = {list};
	int err = mica_db_exec(db,
			       "WITH gone AS (DELETE FROM push.queue WHERE regid IN (SELECT"
			       " json_array_elements_text($1::json)) RETURNING app_id, msg_id)"
			       " SELECT app_id, msg_id, count(*) FROM gone GROUP BY app_id, msg_id",
			       1, params, &res);
	if (!err)
		err = record_deleted(db, res, t->now_ms, AS_DROPPED, &t->counted);
	PQclear(res);
	res = NULL;
	if (!err)
		err = mica_db_exec(db,
				   "WITH gone AS (DELETE FROM push.registration WHERE regid IN"
				   " (SELECT json_array_elements_text($1::json)) RETURNING 1)"
				   " SELECT count(*) FROM gone",
				   1, params, &res);
	if (!err) {
		int64_t k = 0;
		err = mica_db_get_int64(res, 0, 0, &k);
		t->done = (long)k;
	}
	PQclear(res);
	free(list);
	return err;
}

static int silent_tx(mica_db *db, void *arg)
{
	struct batch_tx *t = arg;
	char now[32], lim[16], days[16];
	PGresult *res = NULL;
	ms_text(t->now_ms, now);
	snprintf(lim, sizeof(lim), "%d", t->batch);
	snprintf(days, sizeof(days), "%d", t->days);
	t->done = 0;
	t->counted = 0;
	/* Locking the registrations first makes a send that is inserting a
	 * queue row for one of them (its foreign key check holds FOR KEY
	 * SHARE) finish before, so the queue delete below sees its rows. */
	const char *params[] = {now, days, lim};
	int err = mica_db_exec(db,
			       "SELECT regid FROM push.registration WHERE last_seen <"
			       " to_timestamp($1::float8) - make_interval(days => $2::int) ORDER BY"
			       " last_seen LIMIT $3::int FOR UPDATE SKIP LOCKED",
			       3, params, &res);
	if (!err)
		err = delete_locked(db, t, res);
	PQclear(res);
	return err;
}

int push_purge_silent(mica_db *db, int64_t now_ms, int silent_days, int batch, long *n,
		      long *dropped)
{
	struct batch_tx t = {.now_ms = now_ms, .batch = batch, .days = silent_days};
	long total_dropped = 0;
	int err;
	if (n)
		*n = 0;
	if (dropped)
		*dropped = 0;
	if (!db || batch < 1 || silent_days < 1)
		return MICA_EINVAL;
	do {
		if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, silent_tx, &t)) != 0)
			return err;
		if (n)
			*n += t.done;
		total_dropped += t.counted;
		if (dropped)
			*dropped = total_dropped;
	} while (t.done >= batch);
	return 0;
}

static int regdel_tx(mica_db *db, void *arg)
{
	struct batch_tx *t = arg;
	PGresult *res = NULL;
	char *want = json_dumps(t->regids, JSON_COMPACT);
	int err;
	t->done = 0;
	t->counted = 0;
	json_decref(t->unknown);
	t->unknown = json_array();
	if (!want || !t->unknown) {
		err = MICA_ENOMEM;
		goto out;
	}
	const char *params[] = {t->app, want};
	err = mica_db_exec(db,
			   "SELECT regid FROM push.registration WHERE app_id = $1 AND regid IN"
			   " (SELECT json_array_elements_text($2::json)) FOR UPDATE",
			   2, params, &res);
	if (err)
		goto out;
	/* Unknown: asked for, not found among this app's (once each). */
	size_t i;
	json_t *v;
	json_array_foreach(t->regids, i, v)
	{
		const char *r = json_string_value(v);
		bool found = false, seen = false;
		for (int k = 0; r && !found && k < PQntuples(res); k++)
			found = strcmp(r, mica_db_get(res, k, 0)) == 0;
		for (size_t k = 0; r && !seen && k < json_array_size(t->unknown); k++)
			seen = strcmp(r, json_string_value(json_array_get(t->unknown, k))) == 0;
		if (r && !found && !seen &&
		    json_array_append_new(t->unknown, json_string(r)) != 0) {
			err = MICA_ENOMEM;
			goto out;
		}
	}
	err = delete_locked(db, t, res);
out:
	free(want);
	PQclear(res);
	return err;
}

int push_registrations_delete(mica_db *db, const char *app_id, json_t *regids, int64_t now_ms,
			      long *deleted, json_t **unknown)
{
	struct batch_tx t = {.now_ms = now_ms, .app = app_id, .regids = regids};
	*deleted = 0;
	*unknown = NULL;
	if (!db || !app_id || !json_is_array(regids))
		return MICA_EINVAL;
	int err = mica_db_tx(db, MICA_DB_READ_COMMITTED, regdel_tx, &t);
	if (err) {
		json_decref(t.unknown);
		return err;
	}
	*deleted = t.done;
	*unknown = t.unknown;
	return 0;
}

/* ---- job keys and traces ------------------------------------------------------ */

static int jobkeys_tx(mica_db *db, void *arg)
{
	struct batch_tx *t = arg;
	char now[32], lim[16];
	PGresult *res = NULL;
	ms_text(t->now_ms, now);
	snprintf(lim, sizeof(lim), "%d", t->batch);
	const char *params[] = {now, lim};
	int err = mica_db_exec(db,
			       "WITH gone AS (DELETE FROM push.jobkey WHERE ctid IN (SELECT ctid"
			       " FROM push.jobkey WHERE expires_at <= to_timestamp($1::float8)"
			       " LIMIT $2::int FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*)"
			       " FROM gone",
			       2, params, &res);
	int64_t k = 0;
	if (!err)
		err = mica_db_get_int64(res, 0, 0, &k);
	t->done = (long)k;
	PQclear(res);
	return err;
}

int push_purge_jobkeys(mica_db *db, int64_t now_ms, int batch, long *n)
{
	struct batch_tx t = {.now_ms = now_ms, .batch = batch};
	return in_batches(db, jobkeys_tx, &t, n);
}

static int messages_tx(mica_db *db, void *arg)
{
	struct batch_tx *t = arg;
	char now[32], lim[16], days[16];
	PGresult *res = NULL;
	ms_text(t->now_ms, now);
	snprintf(lim, sizeof(lim), "%d", t->batch);
	snprintf(days, sizeof(days), "%d", t->days);
	const char *params[] = {now, days, lim};
	int err = mica_db_exec(
		db,
		"WITH gone AS (DELETE FROM push.message WHERE msg_id IN (SELECT m.msg_id FROM"
		" push.message m WHERE m.expires_at <= to_timestamp($1::float8) -"
		" make_interval(days => $2::int) AND NOT EXISTS (SELECT 1 FROM push.queue q"
		" WHERE q.msg_id = m.msg_id) LIMIT $3::int FOR UPDATE SKIP LOCKED) RETURNING 1)"
		" SELECT count(*) FROM gone",
		3, params, &res);
	int64_t k = 0;
	if (!err)
		err = mica_db_get_int64(res, 0, 0, &k);
	t->done = (long)k;
	PQclear(res);
	return err;
}

int push_purge_messages(mica_db *db, int64_t now_ms, int trace_days, int batch, long *n)
{
	struct batch_tx t = {.now_ms = now_ms, .batch = batch, .days = trace_days};
	if (trace_days < 0) {
		if (n)
			*n = 0;
		return MICA_EINVAL;
	}
	return in_batches(db, messages_tx, &t, n);
}

int push_purge_run(mica_db *db, int64_t now_ms, const push_purge_options *o, push_purge_result *r)
{
	int err;
	memset(r, 0, sizeof(*r));
	if ((err = push_purge_expired(db, now_ms, o->batch, &r->expired)) != 0 ||
	    (err = push_purge_silent(db, now_ms, o->silent_days, o->batch, &r->registrations,
				     &r->dropped)) != 0 ||
	    (err = push_purge_jobkeys(db, now_ms, o->batch, &r->jobkeys)) != 0)
		return err;
	return push_purge_messages(db, now_ms, o->trace_days, o->batch, &r->messages);
}

/* ---- the jobs' thread ----------------------------------------------------------- */

struct push_jobs {
	push_service *s;
	pthread_t thread;
	atomic_bool stop;
};

static void run_once(push_service *s, mica_db *db, mica_httpc *hc)
{
	const struct push_config *cfg = s->cfg;
	push_purge_options o = {cfg->silent_days, cfg->trace_days, cfg->purge_batch};
	push_purge_result r;
	int64_t now = mica_clock_now_ms();
	int err = push_purge_run(db, now, &o, &r);
	if (err)
		MICA_LOG(MICA_LOG_WARN, "push: purge failed: %s", mica_strerror(err));
	if (r.expired || r.registrations || r.jobkeys || r.messages)
		MICA_LOG(MICA_LOG_INFO,
			 "push: purged %ld expired queue rows, %ld silent registrations (%ld"
			 " queued rows dropped), %ld job keys, %ld traces",
			 r.expired, r.registrations, r.dropped, r.jobkeys, r.messages);
	if (!hc)
		return;
	push_receipt_result rr;
	if ((err = push_receipts_run(db, hc, cfg, mica_clock_now_ms(), &rr)) != 0)
		MICA_LOG(MICA_LOG_WARN, "push: receipts failed: %s", mica_strerror(err));
}

static void *jobs_main(void *arg)
{
	push_jobs *j = arg;
	mica_db *db = mica_db_thread();
	mica_httpc *hc = NULL;
	mica_httpc_options ho = {
		.ca_file = j->s->cfg->receipts_ca_file,
		.connect_timeout_ms = 2000,
		.timeout_ms = j->s->cfg->receipts_timeout_ms,
		.retries = 0,
		.public_only = !j->s->cfg->receipts_private,
	};
	int err = mica_httpc_new(&hc, &ho);
	if (err)
		MICA_LOG(MICA_LOG_ERROR, "push: no HTTPS client for receipts: %s",
			 mica_strerror(err));
	MICA_LOG(MICA_LOG_INFO, "push: scheduled jobs every %d s", j->s->cfg->jobs_interval_s);
	const struct timespec slice = {0, 100 * 1000000L};
	while (!atomic_load(&j->stop)) {
		if (db)
			run_once(j->s, db, hc);
		else
			db = mica_db_thread();
		for (int i = 0; i < j->s->cfg->jobs_interval_s * 10 && !atomic_load(&j->stop); i++)
			nanosleep(&slice, NULL);
	}
	mica_httpc_free(hc);
	MICA_LOG(MICA_LOG_INFO, "push: scheduled jobs stopped");
	return NULL;
}

int push_jobs_start(push_service *s)
{
	push_jobs *j = calloc(1, sizeof(*j));
	if (!j)
		return MICA_ENOMEM;
	j->s = s;
	atomic_init(&j->stop, false);
	if (pthread_create(&j->thread, NULL, jobs_main, j) != 0) {
		free(j);
		return MICA_ENOMEM;
	}
	s->jobs = j;
	return 0;
}

void push_jobs_stop(push_service *s)
{
	push_jobs *j = s ? s->jobs : NULL;
	if (!j)
		return;
	atomic_store(&j->stop, true);
	pthread_join(j->thread, NULL);
	free(j);
	s->jobs = NULL;
}
