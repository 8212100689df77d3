/* outbox.h - transactional outbox on PostgreSQL (schema/0001_outbox.sql).
 *
 * Producers emit an event inside the transaction that changes their state,
 * so the event exists if and only if that change committed. Each event is
 * fanned out (by a trigger) to every consumer subscribed to its topic at that
 * moment, and NOTIFY mica_outbox wakes them. A consumer claims its pending
 * events with FOR UPDATE SKIP LOCKED (so several instances share the work),
 * runs its handler on each inside the same transaction, and deletes the
 * pending rows in that transaction.
 *
 * Delivery semantics:
 * - Database effects are exactly once: a handler's writes through the |db| it
 *   is given commit atomically with the removal of the pending row; if the
 *   process dies or the handler fails, both roll back and the event is
 *   delivered again.
 * - External side effects (HTTP calls, e-mail) are at least once: the handler
 *   may run again for the same event after a crash or a retried transaction,
 *   so such effects must be idempotent (key them on the event id).
 * - Order is by event id, which is emission order for one producer; events
 *   from concurrent producers may commit, and so appear, out of id order.
 * - A subscription sees events emitted after it was created.
 * - A handler that always fails blocks its consumer at that event (the batch
 *   keeps rolling back); it is logged with the event id each time.
 *
 * Every call runs on lib/db, so on an event thread (lib/thread.h) each
 * returns MICA_EWOULDBLOCK before touching the database.
 */
#ifndef MICA_OUTBOX_H
#define MICA_OUTBOX_H

#include <stdint.h>

#include "db.h"
#include "err.h"

/* The NOTIFY channel; the payload is the consumer name. */
#define MICA_OUTBOX_CHANNEL "mica_outbox"

/* Longest consumer name accepted (bytes). */
#define MICA_OUTBOX_NAME_MAX 200

/* An event as the handler sees it. All strings are borrowed and valid only
 * during the handler call. */
struct mica_outbox_event {
	int64_t id;
	const char *topic;
	const char *payload;	/* JSON text (jsonb's normalised form) */
	const char *created_at; /* timestamptz text */
};

/* Consumer callback, run inside the consuming transaction on |db|. Return 0
 * to accept the event or a negative MICA_E* code to roll back the whole
 * batch (that code is then returned by mica_outbox_consume). Returning the
 * code of a failed mica_db_exec() lets conflicts be retried. */
typedef int (*mica_outbox_handler)(mica_db *db, const struct mica_outbox_event *ev, void *arg);

/* Records an event with |topic| and |payload_json| (a JSON text, validated
 * by PostgreSQL). Must be called inside the caller's transaction (usually
 * from a mica_db_tx() function) so that the event commits or rolls back with
 * the caller's state change. *id (may be NULL) receives the event id.
 * Returns 0, MICA_ESTATE (not inside a transaction), MICA_EINVAL (empty
 * topic, NULL payload, or payload not JSON), or as mica_db_exec(). */
MICA_WUR int mica_outbox_emit(mica_db *db, const char *topic, const char *payload_json,
			      int64_t *id);

/* Subscribes |consumer| to |topic| (idempotent). Returns 0, MICA_EINVAL, or
 * as mica_db_exec(). */
MICA_WUR int mica_outbox_subscribe(mica_db *db, const char *consumer, const char *topic);

/* Removes the subscription; events already pending stay pending. *removed
 * (may be NULL) is 1 if it existed. Returns 0, MICA_EINVAL, or as
 * mica_db_exec(). */
MICA_WUR int mica_outbox_unsubscribe(mica_db *db, const char *consumer, const char *topic,
				     int *removed);

/* Consumes up to |max_batch| (1..10000) pending events of |consumer| in one
 * READ COMMITTED transaction: claims them (FOR UPDATE SKIP LOCKED, by event
 * id), calls handler(db, event, arg) for each in order, deletes their pending
 * rows and commits. Conflicts and lost connections are retried as in
 * mica_db_tx() (the handler then sees the events again). *handled (may be
 * NULL) is the number of events committed, 0 on failure or when none were
 * pending. Outside a transaction it also LISTENs on MICA_OUTBOX_CHANNEL and
 * discards queued notifications before claiming, so a following
 * mica_outbox_wait() cannot miss an event emitted after the claim.
 * Returns 0, the handler's error (batch rolled back), MICA_EINVAL, or as
 * mica_db_tx(). */
MICA_WUR int mica_outbox_consume(mica_db *db, const char *consumer, int max_batch,
				 mica_outbox_handler handler, void *arg, int *handled);

/* Blocks up to |timeout_ms| for a notification that |consumer| (NULL: any
 * consumer) has new events, LISTENing first if needed. Notifications are
 * hints: the usual loop is consume until 0 handled, then wait. It also
 * returns 0 right after a reconnect, since notifications may have been
 * missed. Returns 0 (woken), MICA_ETIMEOUT, MICA_ESTATE (inside a
 * transaction), MICA_EINVAL, or MICA_EDBCONN. */
MICA_WUR int mica_outbox_wait(mica_db *db, const char *consumer, int timeout_ms);

/* Deletes events older than |min_age_seconds| that no consumer still has
 * pending. *deleted (may be NULL) receives the count. Returns 0, MICA_EINVAL,
 * or as mica_db_exec(). */
MICA_WUR int mica_outbox_prune(mica_db *db, int min_age_seconds, int64_t *deleted);

#endif
