/* outbox.c - transactional outbox (see outbox.h): emit inside the caller's
 * transaction, subscribe, consume claimed batches with SKIP LOCKED so that
 * handler effects and pending-row deletion commit together, and wait for
 * NOTIFY wake-ups.
 */
#include "outbox.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "parse.h"

#define MAX_BATCH 10000

static int name_ok(const char *s)
{
	return s && *s && strlen(s) <= MICA_OUTBOX_NAME_MAX;
}

int mica_outbox_emit(mica_db *db, const char *topic, const char *payload_json, int64_t *id)
{
	if (id)
		*id = 0;
	if (!db || !topic || !*topic || !payload_json)
		return MICA_EINVAL;
	if (!mica_db_in_transaction(db)) {
		MICA_LOG(MICA_LOG_ERROR, "outbox: emit outside a transaction (topic %.64s)", topic);
		return MICA_ESTATE;
	}
	const char *params[2] = {topic, payload_json};
	PGresult *res = NULL;
	int rc = mica_db_exec(db,
			      "INSERT INTO outbox.event (topic, payload) VALUES ($1, $2::jsonb) "
			      "RETURNING id",
			      2, params, &res);
	if (rc)
		return rc;
	int64_t v = 0;
	rc = mica_db_get_int64(res, 0, 0, &v);
	PQclear(res);
	if (rc)
		return MICA_EDB;
	if (id)
		*id = v;
	return 0;
}

int mica_outbox_subscribe(mica_db *db, const char *consumer, const char *topic)
{
	if (!db || !name_ok(consumer) || !topic || !*topic)
		return MICA_EINVAL;
	const char *params[2] = {consumer, topic};
	return mica_db_exec(db,
			    "INSERT INTO outbox.subscription (consumer, topic) VALUES ($1, $2) "
			    "ON CONFLICT DO NOTHING",
			    2, params, NULL);
}

int mica_outbox_unsubscribe(mica_db *db, const char *consumer, const char *topic, int *removed)
{
	if (removed)
		*removed = 0;
	if (!db || !name_ok(consumer) || !topic || !*topic)
		return MICA_EINVAL;
	const char *params[2] = {consumer, topic};
	PGresult *res = NULL;
	int rc = mica_db_exec(db,
			      "DELETE FROM outbox.subscription WHERE consumer = $1 AND topic = $2",
			      2, params, &res);
	if (rc)
		return rc;
	if (removed)
		*removed = strcmp(PQcmdTuples(res), "0") != 0;
	PQclear(res);
	return 0;
}

struct consume_ctx {
	const char *consumer;
	int max_batch;
	mica_outbox_handler handler;
	void *arg;
	int handled;
};

/* Claim and delete in one statement; the row locks and the deletion stay
 * uncommitted until the handlers are done, so a crash or a handler error
 * puts every claimed row back. */
static const char claim_sql[] =
	"WITH claimed AS ("
	" DELETE FROM outbox.pending p"
	" WHERE p.consumer = $1 AND p.event_id IN ("
	"  SELECT q.event_id FROM outbox.pending q WHERE q.consumer = $1"
	"  ORDER BY q.event_id LIMIT $2 FOR UPDATE SKIP LOCKED)"
	" RETURNING p.event_id)"
	" SELECT e.id, e.topic, e.payload::text, e.created_at"
	" FROM claimed c JOIN outbox.event e ON e.id = c.event_id ORDER BY e.id";

static int consume_tx(mica_db *db, void *arg)
{
	struct consume_ctx *c = arg;
	char limit[16];
	snprintf(limit, sizeof(limit), "%d", c->max_batch);
	const char *params[2] = {c->consumer, limit};
	PGresult *res = NULL;
	c->handled = 0;
	int rc = mica_db_exec(db, claim_sql, 2, params, &res);
	if (rc)
		return rc;
	int n = PQntuples(res);
	for (int i = 0; i < n; i++) {
		struct mica_outbox_event ev = {
			.topic = mica_db_get(res, i, 1),
			.payload = mica_db_get(res, i, 2),
			.created_at = mica_db_get(res, i, 3),
		};
		if (mica_db_get_int64(res, i, 0, &ev.id) != 0 || !ev.topic || !ev.payload) {
			rc = MICA_EDB;
			break;
		}
		rc = c->handler(db, &ev, c->arg);
		if (rc) {
			MICA_LOG(
				MICA_LOG_WARN,
				"outbox: consumer %.64s failed on event %lld: %s; batch rolled back",
				c->consumer, (long long)ev.id, mica_strerror(rc));
			break;
		}
	}
	PQclear(res);
	if (rc == 0)
		c->handled = n;
	return rc;
}

int mica_outbox_consume(mica_db *db, const char *consumer, int max_batch,
			mica_outbox_handler handler, void *arg, int *handled)
{
	if (handled)
		*handled = 0;
	if (!db || !name_ok(consumer) || !handler || max_batch < 1 || max_batch > MAX_BATCH)
		return MICA_EINVAL;
	if (!mica_db_in_transaction(db)) {
		/* Anything notified so far is about to be seen by the claim. */
		int rc = mica_db_listen(db, MICA_OUTBOX_CHANNEL);
		if (rc == 0)
			rc = mica_db_drain_notifications(db, NULL, NULL, NULL);
		if (rc)
			return rc;
	}
	struct consume_ctx c = {consumer, max_batch, handler, arg, 0};
	int rc = mica_db_tx(db, MICA_DB_READ_COMMITTED, consume_tx, &c);
	if (rc == 0 && handled)
		*handled = c.handled;
	return rc;
}

struct wait_ctx {
	const char *consumer;
	int seen;
	int matched;
};

static void on_notify(const char *channel, const char *payload, void *arg)
{
	struct wait_ctx *w = arg;
	w->seen++;
	if (strcmp(channel, MICA_OUTBOX_CHANNEL) == 0 &&
	    (!w->consumer || strcmp(payload, w->consumer) == 0))
		w->matched = 1;
}

int mica_outbox_wait(mica_db *db, const char *consumer, int timeout_ms)
{
	if (!db || timeout_ms < 0 || (consumer && !name_ok(consumer)))
		return MICA_EINVAL;
	if (mica_db_in_transaction(db))
		return MICA_ESTATE;
	int rc = mica_db_listen(db, MICA_OUTBOX_CHANNEL);
	if (rc)
		return rc;
	int64_t deadline = mica_clock_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - mica_clock_ms();
		struct wait_ctx w = {consumer, 0, 0};
		rc = mica_db_wait_notify(db, left > 0 ? (int)left : 0, on_notify, &w);
		if (rc)
			return rc;
		if (w.matched || w.seen == 0)
			return 0; /* ours, or a post-reconnect wake-up */
				  /* Only other consumers' notifications: keep waiting. */
	}
}

int mica_outbox_prune(mica_db *db, int min_age_seconds, int64_t *deleted)
{
	if (deleted)
		*deleted = 0;
	if (!db || min_age_seconds < 0)
		return MICA_EINVAL;
	char age[16];
	snprintf(age, sizeof(age), "%d", min_age_seconds);
	const char *params[1] = {age};
	PGresult *res = NULL;
	int rc = mica_db_exec(
		db,
		"DELETE FROM outbox.event e"
		" WHERE e.created_at < now() - make_interval(secs => $1::int)"
		" AND NOT EXISTS (SELECT 1 FROM outbox.pending p WHERE p.event_id = e.id)",
		1, params, &res);
	if (rc)
		return rc;
	/* The command tag's row count ("DELETE n"): digits from the server. */
	if (deleted && mica_parse_int64(PQcmdTuples(res), 0, INT64_MAX, deleted) != 0)
		*deleted = 0;
	PQclear(res);
	return 0;
}
