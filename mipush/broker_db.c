/* broker_db.c - the broker's database thread: everything the loop must not
 * wait for (token checks through the Key Center, registration and queue
 * reads, acknowledgement deletes with their statistics, last_seen, attempted
 * marks, the kicks it publishes on Redis), taken from the loop in batches:
 * one round runs every job queued since the last one, one statement per
 * kind, and hands the answers back through a uv_async_t.
 *
 * Token checks are cached per process: a slot per hash of the regid holds
 * HMAC-SHA256(random process key, regid || token || token_idx), so a device
 * reconnecting with the token it used before costs a registration read and
 * one local HMAC, no Key Center call; a re-registration changes token_idx
 * and so misses. Only successes are cached, and every failure pays the Key
 * Center HMAC, so an unknown regid and a wrong token cost the same. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "crypto.h"
#include "db.h"
#include "log.h"
#include "mipush/broker.h"
#include "mipush/push.h"

#define ACKS_MAX 1000000 /* acknowledgements kept for retry while the database is down */

struct pb_db {
	struct push_service *svc;
	char node[40];
	int load_limit;
	uv_async_t *async;
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pb_job *todo, **todo_tail;
	struct pb_job *done, **done_tail;
	bool stop;
	/* the thread's own */
	uint8_t (*cache)[MICA_SHA256_LEN];
	size_t slots;
	uint8_t cache_key[32];
	int64_t *acks; /* acknowledged rows not yet deleted (a failed round) */
	size_t nacks, acks_cap;
};

void push__broker_rows_free(struct pb_row *r)
{
	while (r) {
		struct pb_row *n = r->next;
		free(r->body);
		free(r);
		r = n;
	}
}

void push__broker_job_free(struct pb_job *j)
{
	if (!j)
		return;
	if (j->token) {
		mica_wipe(j->token, j->token_len);
		free(j->token);
	}
	push__broker_rows_free(j->rows);
	free(j);
}

/* A PostgreSQL array literal of |n| strings (regids: [A-Za-z0-9_-] only,
 * checked by the loop) or integers. malloc'd. */
static char *text_array(struct pb_job **jobs, size_t n)
{
	size_t cap = 3 + n * (PB_REGID_MAX + 3), len = 0;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	s[len++] = '{';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(s + len, cap - len, "%s\"%s\"", i ? "," : "",
					jobs[i]->regid);
	snprintf(s + len, cap - len, "}");
	return s;
}

static char *int_array(const int64_t *v, size_t n)
{
	size_t cap = 3 + n * 22, len = 0;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	s[len++] = '{';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(s + len, cap - len, "%s%lld", i ? "," : "",
					(long long)v[i]);
	snprintf(s + len, cap - len, "}");
	return s;
}

/* ---- acknowledgements ------------------------------------------------------ */

struct ack_tx {
	const char *seqs;
	long deleted;
};

/* Deletes the acknowledged rows and counts each message's delivery, in one
 * transaction: a row deleted is a delivery counted, never one without the
 * other. A marker row (kind 1) counts nothing. */
static int ack_write(mica_db *db, void *arg)
{
	struct ack_tx *t = arg;
	PGresult *res = NULL;
	const char *params[] = {t->seqs};
	int err = mica_db_exec(db,
			       "WITH d AS (DELETE FROM push.queue WHERE seq = ANY($1::bigint[])"
			       " RETURNING app_id, msg_id, kind) SELECT app_id, msg_id, count(*)"
			       " FROM d WHERE kind = 0 GROUP BY app_id, msg_id",
			       1, params, &res);
	push_stats_batch b = {0};
	t->deleted = 0;
	for (int i = 0; err == 0 && i < PQntuples(res); i++) {
		push_counts c = {.delivered = atol(mica_db_get(res, i, 2))};
		t->deleted += c.delivered;
		err = push_stats_batch_add(&b, mica_db_get(res, i, 0), mica_db_get(res, i, 1), &c);
	}
	PQclear(res);
	/* every message of the round in one statement */
	int rerr = push_stats_batch_record(db, &b, mica_clock_now_ms());
	return err ? err : rerr;
}

static void acks_flush(struct pb_db *d)
{
	if (d->nacks == 0)
		return;
	struct ack_tx t = {.seqs = int_array(d->acks, d->nacks)};
	int err = t.seqs ? mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, ack_write, &t)
			 : MICA_ENOMEM;
	free((char *)t.seqs);
	if (err) {
		MICA_LOG(MICA_LOG_WARN, "push broker: %zu acknowledgements wait: %s", d->nacks,
			 mica_strerror(err));
		return; /* kept: retried next round */
	}
	d->nacks = 0;
}

static void acks_add(struct pb_db *d, int64_t seq)
{
	if (d->nacks == d->acks_cap) {
		size_t cap = d->acks_cap ? d->acks_cap * 2 : 256;
		int64_t *n = cap <= ACKS_MAX ? realloc(d->acks, cap * sizeof(*n)) : NULL;
		if (!n) {
			/* Dropped: the row stays queued and is sent again (at least once). */
			MICA_LOG(MICA_LOG_WARN, "push broker: acknowledgement dropped");
			return;
		}
		d->acks = n;
		d->acks_cap = cap;
	}
	d->acks[d->nacks++] = seq;
}

static void mark_attempted(struct pb_job **jobs, size_t n)
{
	int64_t *v = malloc(n * sizeof(*v));
	char *arr = NULL;
	int err = MICA_ENOMEM;
	if (v) {
		for (size_t i = 0; i < n; i++)
			v[i] = jobs[i]->seq;
		if ((arr = int_array(v, n)) != NULL) {
			const char *params[] = {arr};
			err = mica_db_exec(mica_db_thread(),
					   "UPDATE push.queue SET attempted = true WHERE seq ="
					   " ANY($1::bigint[]) AND NOT attempted",
					   1, params, NULL);
		}
	}
	if (err)
		MICA_LOG(MICA_LOG_WARN, "push broker: marking %zu rows attempted: %s", n,
			 mica_strerror(err));
	free(arr);
	free(v);
}

/* ---- authentication -------------------------------------------------------- */

static size_t slot_of(const struct pb_db *d, const char *regid)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	for (const char *p = regid; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	return (size_t)(h % d->slots);
}

/* HMAC(process key, regid \0 token \0 token_idx): what a cache slot holds. */
static int cache_mac(const struct pb_db *d, const struct pb_job *j, const char *token_idx,
		     uint8_t out[MICA_SHA256_LEN])
{
	size_t rl = strlen(j->regid), il = strlen(token_idx), n = rl + 1 + j->token_len + 1 + il;
	uint8_t *m = malloc(n);
	int err;
	if (!m)
		return MICA_ENOMEM;
	memcpy(m, j->regid, rl + 1);
	memcpy(m + rl + 1, j->token, j->token_len);
	m[rl + 1 + j->token_len] = 0;
	memcpy(m + rl + 2 + j->token_len, token_idx, il);
	err = mica_hmac_sha256(d->cache_key, sizeof(d->cache_key), m, n, out);
	mica_wipe(m, n);
	free(m);
	return err;
}

/* Checks one job's token against its registration row (|token_idx| NULL:
 * no such regid). */
static void auth_one(struct pb_db *d, struct pb_job *j, const char *app_id, const char *token_idx)
{
	uint8_t mac[MICA_SHA256_LEN];
	char *idx = NULL, *tok = NULL;
	size_t slot = slot_of(d, j->regid);

	if (token_idx && cache_mac(d, j, token_idx, mac) == 0 &&
	    mica_ct_equal(mac, d->cache[slot], sizeof(mac))) {
		j->result = 0;
		j->cache_hit = true;
		snprintf(j->app_id, sizeof(j->app_id), "%s", app_id ? app_id : "");
		goto out;
	}
	/* The same Key Center HMAC whether or not the regid exists. */
	if (!(tok = malloc(j->token_len + 1))) {
		j->result = MICA_ENOMEM;
		goto out;
	}
	memcpy(tok, j->token, j->token_len);
	tok[j->token_len] = '\0';
	j->result = push_index(d->svc, "token", tok, &idx);
	if (j->result)
		goto out;
	size_t il = strlen(idx);
	bool match = token_idx && strlen(token_idx) == il && mica_ct_equal(idx, token_idx, il);
	if (!match) {
		j->result = MICA_EAUTH;
		goto out;
	}
	j->result = 0;
	snprintf(j->app_id, sizeof(j->app_id), "%s", app_id ? app_id : "");
	if (cache_mac(d, j, token_idx, mac) == 0)
		memcpy(d->cache[slot], mac, sizeof(mac));
out:
	mica_wipe(mac, sizeof(mac));
	if (tok) {
		mica_wipe(tok, j->token_len);
		free(tok);
	}
	free(idx);
	mica_wipe(j->token, j->token_len);
	free(j->token);
	j->token = NULL;
	j->token_len = 0;
}

static void auth_batch(struct pb_db *d, struct pb_job **jobs, size_t n)
{
	PGresult *res = NULL;
	char *arr = text_array(jobs, n);
	int err = MICA_ENOMEM;
	if (arr) {
		const char *params[] = {arr};
		err = mica_db_exec(mica_db_thread(),
				   "SELECT regid, app_id, token_idx FROM push.registration WHERE"
				   " regid = ANY($1::text[])",
				   1, params, &res);
	}
	for (size_t i = 0; i < n; i++) {
		if (err) {
			jobs[i]->result = err;
			continue;
		}
		const char *app_id = NULL, *token_idx = NULL;
		for (int r = 0; r < PQntuples(res); r++)
			if (strcmp(mica_db_get(res, r, 0), jobs[i]->regid) == 0) {
				app_id = mica_db_get(res, r, 1);
				token_idx = mica_db_get(res, r, 2);
			}
		auth_one(d, jobs[i], app_id, token_idx);
	}
	PQclear(res);
	free(arr);
	if (err)
		MICA_LOG(MICA_LOG_WARN, "push broker: reading %zu registrations: %s", n,
			 mica_strerror(err));
}

/* last_seen of every device that just connected, in one statement. */
static void touch_batch(struct pb_job **jobs, size_t n)
{
	char *arr = text_array(jobs, n);
	int err = MICA_ENOMEM;
	if (arr) {
		const char *params[] = {arr};
		err = mica_db_exec(mica_db_thread(),
				   "UPDATE push.registration SET last_seen = now() WHERE regid ="
				   " ANY($1::text[])",
				   1, params, NULL);
	}
	if (err)
		MICA_LOG(MICA_LOG_WARN, "push broker: last_seen of %zu devices: %s", n,
			 mica_strerror(err));
	free(arr);
}

/* ---- queue reads ----------------------------------------------------------- */

/* Reads, for every job, at most load_limit rows after its seq, oldest
 * first, in one statement. */
static void load_batch(struct pb_db *d, struct pb_job **jobs, size_t n)
{
	PGresult *res = NULL;
	int64_t *after = malloc(n * sizeof(*after));
	char *regids = text_array(jobs, n), *afters = NULL, limit[16];
	int err = MICA_ENOMEM;
	snprintf(limit, sizeof(limit), "%d", d->load_limit);
	if (after && regids) {
		for (size_t i = 0; i < n; i++)
			after[i] = jobs[i]->seq;
		afters = int_array(after, n);
	}
	if (afters) {
		const char *params[] = {regids, afters, limit};
		err = mica_db_exec(
			mica_db_thread(),
			"SELECT t.i, q.seq, q.attempted, q.body FROM unnest($1::text[], $2::bigint[])"
			" WITH ORDINALITY AS t(regid, after, i) CROSS JOIN LATERAL (SELECT seq,"
			" attempted, body FROM push.queue WHERE regid = t.regid AND seq > t.after"
			" AND expires_at > now() ORDER BY seq LIMIT $3::int) q ORDER BY t.i, q.seq",
			3, params, &res);
	}
	struct pb_row **tail[n ? n : 1];
	int count[n ? n : 1];
	for (size_t i = 0; i < n; i++) {
		tail[i] = &jobs[i]->rows;
		count[i] = 0;
		jobs[i]->result = err;
	}
	for (int r = 0; err == 0 && r < PQntuples(res); r++) {
		long i = atol(mica_db_get(res, r, 0)) - 1;
		struct pb_row *row = calloc(1, sizeof(*row));
		if (i < 0 || (size_t)i >= n || !row ||
		    mica_db_get_int64(res, r, 1, &row->seq) != 0 ||
		    mica_db_get_bytea(res, r, 3, &row->body, &row->len) != 0) {
			if (row)
				push__broker_rows_free(row);
			continue;
		}
		row->attempted = mica_db_get(res, r, 2)[0] == 't';
		*tail[i] = row;
		tail[i] = &row->next;
		count[i]++;
	}
	for (size_t i = 0; i < n; i++)
		jobs[i]->more = count[i] == d->load_limit;
	if (err)
		MICA_LOG(MICA_LOG_WARN, "push broker: reading the queues of %zu devices: %s", n,
			 mica_strerror(err));
	PQclear(res);
	free(after);
	free(regids);
	free(afters);
}

/* ---- kicks ----------------------------------------------------------------- */

/* One PUBLISH of every K line of the round. */
static void kick_batch(struct pb_db *d, struct pb_job **jobs, size_t n)
{
	size_t cap = n * (PB_REGID_MAX + sizeof(d->node) + 4) + 1, len = 0;
	char *msg = malloc(cap);
	int err = MICA_ENOMEM;
	if (msg) {
		for (size_t i = 0; i < n; i++)
			len += (size_t)snprintf(msg + len, cap - len, "%sK %s %s", i ? "\n" : "",
						jobs[i]->regid, d->node);
		const char *argv[] = {"PUBLISH", "push:wake", msg};
		mica_kv *kv = mica_kv_thread();
		err = kv ? mica_kv_command(kv, NULL, 3, argv, NULL) : MICA_EKVCONN;
	}
	if (err)
		MICA_LOG(MICA_LOG_WARN, "push broker: publishing %zu kicks: %s", n,
			 mica_strerror(err));
	free(msg);
}

/* ---- the thread ------------------------------------------------------------ */

static void answer(struct pb_db *d, struct pb_job *j)
{
	pthread_mutex_lock(&d->mu);
	j->next = NULL;
	*d->done_tail = j;
	d->done_tail = &j->next;
	pthread_mutex_unlock(&d->mu);
}

static void run_round(struct pb_db *d, struct pb_job *list)
{
	size_t n = 0;
	for (struct pb_job *j = list; j; j = j->next)
		n++;
	struct pb_job **auth = calloc(n ? n : 1, sizeof(*auth) * 5);
	if (!auth) {
		/* Nothing of this round runs: answers say so, the rest is dropped
		 * (rows not deleted are sent again). */
		while (list) {
			struct pb_job *next = list->next;
			if (list->kind == PBJ_AUTH || list->kind == PBJ_LOAD) {
				list->result = MICA_ENOMEM;
				answer(d, list);
			} else {
				push__broker_job_free(list);
			}
			list = next;
		}
		return;
	}
	struct pb_job **load = auth + n, **att = load + n, **kick = att + n, **order = kick + n;
	size_t na = 0, nl = 0, nt = 0, nk = 0, no = 0;
	for (struct pb_job *j = list, *next; j; j = next) {
		next = j->next;
		j->next = NULL;
		switch (j->kind) {
		case PBJ_ACK:
			acks_add(d, j->seq);
			push__broker_job_free(j);
			break;
		case PBJ_AUTH:
			auth[na++] = j;
			order[no++] = j;
			break;
		case PBJ_LOAD:
			load[nl++] = j;
			order[no++] = j;
			break;
		case PBJ_ATTEMPTED:
			att[nt++] = j;
			break;
		case PBJ_KICK:
			kick[nk++] = j;
			break;
		}
	}
	/* Acknowledgements first: a row acknowledged before a read was asked
	 * for is gone when the read runs. */
	acks_flush(d);
	if (nt)
		mark_attempted(att, nt);
	if (na) {
		auth_batch(d, auth, na);
		size_t ok = 0;
		for (size_t i = 0; i < na; i++)
			if (auth[i]->result == 0)
				auth[ok++] = auth[i];
		/* auth[] now holds the successes; the failures are answered below. */
		if (ok) {
			touch_batch(auth, ok);
			for (size_t i = 0; i < ok; i++)
				load[nl++] = auth[i];
		}
	}
	if (nl)
		load_batch(d, load, nl);
	if (nk)
		kick_batch(d, kick, nk);
	for (size_t i = 0; i < nt; i++)
		push__broker_job_free(att[i]);
	for (size_t i = 0; i < nk; i++)
		push__broker_job_free(kick[i]);
	/* Answers in the order the jobs came. */
	for (size_t i = 0; i < no; i++)
		answer(d, order[i]);
	free(auth);
	if (no)
		uv_async_send(d->async);
}

static void *db_main(void *arg)
{
	struct pb_db *d = arg;
	for (;;) {
		pthread_mutex_lock(&d->mu);
		while (!d->todo && !d->stop && d->nacks == 0)
			pthread_cond_wait(&d->cv, &d->mu);
		if (!d->todo && !d->stop && d->nacks) {
			/* Acknowledgements waiting for the database: retry each second. */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&d->cv, &d->mu, &ts);
		}
		struct pb_job *list = d->todo;
		d->todo = NULL;
		d->todo_tail = &d->todo;
		bool stop = d->stop;
		pthread_mutex_unlock(&d->mu);
		if (list || d->nacks)
			run_round(d, list);
		if (!list && stop)
			break;
	}
	return NULL;
}

int push__broker_db_start(struct pb_db **out, struct push_service *svc, const char *node,
			  int load_limit, int cache_slots, uv_async_t *done)
{
	struct pb_db *d = calloc(1, sizeof(*d));
	*out = NULL;
	if (!d)
		return MICA_ENOMEM;
	d->svc = svc;
	snprintf(d->node, sizeof(d->node), "%s", node);
	d->load_limit = load_limit > 0 ? load_limit : 1;
	d->async = done;
	d->todo_tail = &d->todo;
	d->done_tail = &d->done;
	d->slots = cache_slots > 0 ? (size_t)cache_slots : 1;
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cv, NULL);
	if (!(d->cache = calloc(d->slots, sizeof(*d->cache))) ||
	    mica_random(d->cache_key, sizeof(d->cache_key)) != 0 ||
	    pthread_create(&d->thread, NULL, db_main, d) != 0) {
		push__broker_db_stop(d);
		return MICA_ENOMEM;
	}
	d->started = true;
	*out = d;
	return 0;
}

void push__broker_db_submit(struct pb_db *d, struct pb_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&d->mu);
	*d->todo_tail = j;
	d->todo_tail = &j->next;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

struct pb_job *push__broker_db_take(struct pb_db *d)
{
	pthread_mutex_lock(&d->mu);
	struct pb_job *l = d->done;
	d->done = NULL;
	d->done_tail = &d->done;
	pthread_mutex_unlock(&d->mu);
	return l;
}

void push__broker_db_join(struct pb_db *d)
{
	if (!d || !d->started)
		return;
	pthread_mutex_lock(&d->mu);
	d->stop = true;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
	pthread_join(d->thread, NULL);
	d->started = false;
}

void push__broker_db_stop(struct pb_db *d)
{
	if (!d)
		return;
	push__broker_db_join(d);
	for (struct pb_job *l = push__broker_db_take(d), *n; l; l = n) {
		n = l->next;
		push__broker_job_free(l);
	}
	for (struct pb_job *l = d->todo, *n; l; l = n) {
		n = l->next;
		push__broker_job_free(l);
	}
	pthread_mutex_destroy(&d->mu);
	pthread_cond_destroy(&d->cv);
	mica_wipe(d->cache_key, sizeof(d->cache_key));
	free(d->cache);
	free(d->acks);
	free(d);
}
