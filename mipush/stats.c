/* stats.c - the one place push counters change (docs/push-internals.md):
 * a message's trace counters and its app's daily counters move together,
 * in the caller's transaction, so they never disagree. Counters are by app,
 * by UTC day and by message only: nothing here names a device. A day's
 * counters are 16 rows (shards, schema/0015): a session adds to its own, so
 * concurrent senders and brokers do not queue on one row lock. Any number
 * of messages is one statement: an acknowledgement round or a purge batch
 * names many, and every statement is a round trip in the caller's
 * transaction. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "mipush/push.h"

/* The rows (JSON, $1) summed per message, added to the messages' traces,
 * and summed per app into the day's shard of this session; apps in order,
 * so two writers of several apps lock their rows in the same order. */
static const char record_sql[] =
	"WITH u AS (SELECT app_id, msg_id, sum(sent) AS sent, sum(delivered) AS delivered,"
	" sum(expired) AS expired, sum(dropped) AS dropped, sum(invalid) AS invalid FROM"
	" json_to_recordset($1::json) AS r(app_id text, msg_id text, sent bigint, delivered"
	" bigint, expired bigint, dropped bigint, invalid bigint) GROUP BY app_id, msg_id),"
	" m AS (UPDATE push.message t SET queued = t.queued + u.sent, delivered = t.delivered"
	" + u.delivered, expired = t.expired + u.expired, dropped = t.dropped + u.dropped,"
	" invalid = t.invalid + u.invalid FROM u WHERE t.msg_id = u.msg_id RETURNING 1)"
	" INSERT INTO push.stat_daily AS s (app_id, day, shard, sent, delivered, expired,"
	" dropped, invalid) SELECT app_id, (to_timestamp($2::float8) AT TIME ZONE 'UTC')::date,"
	" pg_backend_pid() % 16, sum(sent), sum(delivered), sum(expired), sum(dropped),"
	" sum(invalid) FROM u GROUP BY app_id ORDER BY app_id ON CONFLICT (app_id, day, shard)"
	" DO UPDATE SET sent = s.sent + excluded.sent, delivered = s.delivered +"
	" excluded.delivered, expired = s.expired + excluded.expired, dropped = s.dropped +"
	" excluded.dropped, invalid = s.invalid + excluded.invalid";

int push_stats_batch_add(push_stats_batch *b, const char *app_id, const char *msg_id,
			 const push_counts *c)
{
	if (!b || !app_id || !c)
		return MICA_EINVAL;
	if (!c->sent && !c->delivered && !c->expired && !c->dropped && !c->invalid)
		return 0;
	if (!b->rows && !(b->rows = json_array()))
		return MICA_ENOMEM;
	json_t *row =
		json_pack("{s:s,s:s?,s:I,s:I,s:I,s:I,s:I}", "app_id", app_id, "msg_id", msg_id,
			  "sent", (json_int_t)c->sent, "delivered", (json_int_t)c->delivered,
			  "expired", (json_int_t)c->expired, "dropped", (json_int_t)c->dropped,
			  "invalid", (json_int_t)c->invalid);
	return row && json_array_append_new(b->rows, row) == 0 ? 0 : MICA_ENOMEM;
}

int push_stats_batch_record(mica_db *db, push_stats_batch *b, int64_t at_ms)
{
	char at[32], *rows = NULL;
	int err = 0;
	if (!db || !b)
		return MICA_EINVAL;
	if (json_array_size(b->rows) > 0) {
		snprintf(at, sizeof(at), "%.3f", (double)at_ms / 1000.0);
		if (!(rows = json_dumps(b->rows, JSON_COMPACT)))
			err = MICA_ENOMEM;
		else
			err = mica_db_exec(db, record_sql, 2, (const char *[]){rows, at}, NULL);
	}
	free(rows);
	json_decref(b->rows);
	b->rows = NULL;
	return err;
}

int push_stats_record(mica_db *db, const char *app_id, const char *msg_id, int64_t at_ms,
		      const push_counts *c)
{
	push_stats_batch b = {0};
	int err = push_stats_batch_add(&b, app_id, msg_id, c);
	if (err) {
		json_decref(b.rows);
		return err;
	}
	return push_stats_batch_record(db, &b, at_ms);
}
