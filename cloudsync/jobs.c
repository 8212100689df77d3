/* jobs.c - what cloud sync does on its own: purge the recycle bin, strictly
 * bin_days after each deletion (by time only, never for space), and delete
 * everything of a user when the account service says the account was
 * deleted (the outbox event account.deleted, consumed as
 * cloudsync.accounts: exactly once, in the transaction that deletes). One
 * thread runs both: it wakes on the outbox's NOTIFY, and at least every
 * jobs_interval_s for the purge. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cloudsync/cloudsync.h"
#include "log.h"
#include "outbox.h"
#include "parse.h"

#define CONSUME_BATCH 100

struct purge_tx {
	const char *cutoff, *lim;
	long n;
};

static int purge_fn(mica_db *db, void *arg)
{
	struct purge_tx *t = arg;
	PGresult *res = NULL;
	const char *p[2] = {t->cutoff, t->lim};
	/* The oldest deletions first; SKIP LOCKED lets two instances share a
	 * backlog without waiting on each other (or on a restore in flight). */
	int err = mica_db_exec(
		db,
		"UPDATE cloudsync.record r SET state = 2, body = NULL, deleted_at = NULL"
		" FROM (SELECT user_id, module, id FROM cloudsync.record"
		"  WHERE state = 1 AND deleted_at <= to_timestamp($1::float8 / 1000)"
		"  ORDER BY deleted_at LIMIT $2 FOR UPDATE SKIP LOCKED) d"
		" WHERE r.user_id = d.user_id AND r.module = d.module AND r.id = d.id"
		" RETURNING 1",
		2, p, &res);
	t->n = err ? 0 : PQntuples(res);
	PQclear(res);
	return err;
}

int cs_purge_bin(mica_db *db, int64_t now_ms, int bin_days, int batch, long *n)
{
	char cutoff[24], lim[16];
	struct purge_tx t = {.cutoff = cutoff, .lim = lim};
	int err = 0;
	*n = 0;
	snprintf(cutoff, sizeof(cutoff), "%" PRId64, now_ms - (int64_t)bin_days * 86400000);
	snprintf(lim, sizeof(lim), "%d", batch);
	do {
		if ((err = mica_db_tx(db, MICA_DB_READ_COMMITTED, purge_fn, &t)) == 0)
			*n += t.n;
	} while (err == 0 && t.n == batch);
	return err;
}

int cs_delete_user(mica_db *db, int64_t user_id)
{
	char uid[24];
	snprintf(uid, sizeof(uid), "%" PRId64, user_id);
	const char *p[1] = {uid};
	int err = mica_db_exec(db, "DELETE FROM cloudsync.record WHERE user_id = $1", 1, p, NULL);
	if (err == 0)
		err = mica_db_exec(db, "DELETE FROM cloudsync.user_seq WHERE user_id = $1", 1, p,
				   NULL);
	if (err == 0)
		err = mica_db_exec(db, "DELETE FROM cloudsync.user_key WHERE user_id = $1", 1, p,
				   NULL);
	return err;
}

/* account.deleted carries {"user_id": N}. An event of another shape is
 * logged and skipped: retrying it would block every later deletion. */
static int account_deleted(mica_db *db, const struct mica_outbox_event *ev, void *arg)
{
	json_t *j = json_loads(ev->payload, 0, NULL);
	json_t *uid = json_object_get(j, "user_id");
	int err = 0;
	(void)arg;
	if (json_is_integer(uid) && json_integer_value(uid) > 0) {
		err = cs_delete_user(db, json_integer_value(uid));
		if (err == 0)
			MICA_LOG(MICA_LOG_INFO,
				 "cloudsync: deleted every record and key of user %" PRId64
				 " (event %" PRId64 ")",
				 (int64_t)json_integer_value(uid), ev->id);
	} else {
		MICA_LOG(MICA_LOG_ERROR,
			 "cloudsync: account.deleted event %" PRId64 " has no user_id; skipped",
			 ev->id);
	}
	json_decref(j);
	return err;
}

struct cs_jobs {
	cs_service *s;
	pthread_t thread;
	atomic_bool stop;
};

static const struct timespec pause_1s = {1, 0};

static void *jobs_main(void *arg)
{
	cs_jobs *j = arg;
	const struct cs_config *cfg = j->s->cfg;
	mica_db *db = mica_db_thread();
	int64_t next_purge = 0;
	int last_err = 0;
	MICA_LOG(MICA_LOG_INFO, "cloudsync: jobs started");
	while (!atomic_load(&j->stop)) {
		int handled = 0, err = db ? 0 : MICA_EDBCONN;
		long purged = 0;
		if (err == 0)
			err = mica_outbox_consume(db, CS_ACCOUNTS_CONSUMER, CONSUME_BATCH,
						  account_deleted, NULL, &handled);
		int64_t now = mica_clock_ms();
		if (err == 0 && now >= next_purge) {
			err = cs_purge_bin(db, mica_clock_now_ms(), cfg->bin_days, cfg->purge_batch,
					   &purged);
			if (err == 0) {
				next_purge = now + (int64_t)cfg->jobs_interval_s * 1000;
				if (purged)
					MICA_LOG(MICA_LOG_INFO,
						 "cloudsync: purged %ld records deleted %d days ago"
						 " or more",
						 purged, cfg->bin_days);
			}
		}
		if (err != last_err) {
			if (err)
				MICA_LOG(MICA_LOG_WARN, "cloudsync: jobs failed (%s); retrying",
					 mica_strerror(err));
			else
				MICA_LOG(MICA_LOG_INFO, "cloudsync: jobs run again");
			last_err = err;
		}
		if (err) {
			nanosleep(&pause_1s, NULL);
			continue;
		}
		if (handled > 0)
			continue;
		int64_t wait = next_purge - mica_clock_ms();
		wait = wait < 0 ? 0 : wait > 1000 ? 1000 : wait;
		err = mica_outbox_wait(db, CS_ACCOUNTS_CONSUMER, (int)wait);
		if (err && err != MICA_ETIMEOUT)
			nanosleep(&pause_1s, NULL);
	}
	MICA_LOG(MICA_LOG_INFO, "cloudsync: jobs stopped");
	return NULL;
}

int cs_jobs_start(cs_service *s)
{
	cs_jobs *j = calloc(1, sizeof(*j));
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

void cs_jobs_stop(cs_service *s)
{
	cs_jobs *j = s ? s->jobs : NULL;
	if (!j)
		return;
	atomic_store(&j->stop, true);
	pthread_join(j->thread, NULL);
	free(j);
	s->jobs = NULL;
}
