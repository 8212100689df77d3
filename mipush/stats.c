/* stats.c - the one place push counters change (docs/push-internals.md):
 * a message's trace counters and its app's daily counters move together,
 * in the caller's transaction, so they never disagree. Counters are by app,
 * by UTC day and by message only: nothing here names a device. A day's
 * counters are 16 rows (shards, schema/0015): a session adds to its own, so
 * concurrent senders and brokers do not queue on one row lock. */
#include <stdio.h>

#include "mipush/push.h"

int push_stats_record(mica_db *db, const char *app_id, const char *msg_id, int64_t at_ms,
		      const push_counts *c)
{
	char v[5][24], at[32];
	int err;

	if (!db || !app_id || !c)
		return MICA_EINVAL;
	const long n[5] = {c->sent, c->delivered, c->expired, c->dropped, c->invalid};
	if (!n[0] && !n[1] && !n[2] && !n[3] && !n[4])
		return 0;
	for (int i = 0; i < 5; i++)
		snprintf(v[i], sizeof(v[i]), "%ld", n[i]);
	snprintf(at, sizeof(at), "%.3f", (double)at_ms / 1000.0);
	const char *daily[] = {app_id, at, v[0], v[1], v[2], v[3], v[4]};
	err = mica_db_exec(db,
			   "INSERT INTO push.stat_daily AS s (app_id, day, shard, sent, delivered,"
			   " expired, dropped, invalid) VALUES ($1,"
			   " (to_timestamp($2::float8) AT TIME ZONE 'UTC')::date, pg_backend_pid()"
			   " % 16, $3, $4, $5, $6, $7) ON CONFLICT (app_id, day, shard) DO UPDATE"
			   " SET sent = s.sent +"
			   " excluded.sent, delivered = s.delivered + excluded.delivered, expired"
			   " = s.expired + excluded.expired, dropped = s.dropped +"
			   " excluded.dropped, invalid = s.invalid + excluded.invalid",
			   7, daily, NULL);
	if (err || !msg_id)
		return err;
	const char *trace[] = {msg_id, v[0], v[1], v[2], v[3], v[4]};
	return mica_db_exec(db,
			    "UPDATE push.message SET queued = queued + $2, delivered = delivered"
			    " + $3, expired = expired + $4, dropped = dropped + $5, invalid ="
			    " invalid + $6 WHERE msg_id = $1",
			    6, trace, NULL);
}
