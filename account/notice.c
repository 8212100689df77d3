/* notice.c - security notices to an account's contacts (password changed
 * or reset, frozen, new sign-in, security contact added or removed, account
 * deleted, phone number recycled), carried by the transactional outbox so
 * that none is lost when the Key Center, the notifier or the process fails:
 * acct_notice_emit() records the notice in the operation's transaction, and
 * the notice worker copies it into account.notice and delivers it, opening
 * the contacts only then, with retries and backoff while a dependency is
 * down (schema/0011_account_notice.sql, docs/decisions.md). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "account/account.h"
#include "crypto.h"
#include "log.h"
#include "outbox.h"

#define NOTICE_TOPIC "account.notice"
#define NOTICE_CONSUMER "account.notices"
#define CONSUME_BATCH 100
#define DELIVER_PER_ROUND 100
#define WAIT_MS 1000
/* nanosleep(), since usleep() may refuse a second or more (POSIX). */
static const struct timespec wait_pause = {WAIT_MS / 1000, WAIT_MS % 1000 * 1000000L};
#define BACKOFF_MAX_S 60
/* A notice that still cannot go out after this long is given up (logged
 * as an error): telling of a password change days later helps nobody. */
#define GIVE_UP_S (3 * 86400)

/* Contact slots: the four columns of account.user, then the same four
 * carried with the notice (bit + 4). */
static const char *const contact_col[4] = {"phone", "email", "security_phone", "security_email"};

static const struct {
	const char *name, *subject, *body;
} kinds[] = {
	[ACCT_NOTICE_PASSWORD_CHANGED] = {"password_changed", "Your mica password was changed",
					  "Your password was changed and your other sessions were"
					  " signed out. If this was not you, reset your password at"
					  " once."},
	[ACCT_NOTICE_PASSWORD_RESET] =
		{"password_reset", "Your mica password was reset",
		 "Your password was reset and every session was signed out. If"
		 " this was not you, contact support at once."},
	[ACCT_NOTICE_FROZEN] = {"frozen", "Your mica account was frozen",
				"We froze your account after a suspicious login: every session was"
				" signed out and the current password can no longer be used. Reset"
				" your password to recover the account."},
	[ACCT_NOTICE_NEW_SIGN_IN] =
		{"new_sign_in", "New sign-in to your mica account",
		 "Your mica account was signed in on a new device (%s). If this"
		 " was not you, reset your password and sign out all sessions."},
	[ACCT_NOTICE_CONTACT_ADDED] = {"contact_added", "Security contact added",
				       "A security %s was bound to your mica account."},
	[ACCT_NOTICE_CONTACT_REMOVED] = {"contact_removed", "Security contact removed",
					 "The security %s was removed from your mica account."},
	[ACCT_NOTICE_DELETED] = {"deleted", "Your mica account was deleted",
				 "Your mica account and its data were deleted."},
	[ACCT_NOTICE_PHONE_RECYCLED] =
		{"phone_recycled", "Your phone number was removed",
		 "The phone number bound to your mica account was recycled by"
		 " the carrier and verified by a new owner. It can no longer be"
		 " used to log in or recover your account."},
	[ACCT_NOTICE_SECURITY_PHONE_RECYCLED] =
		{"security_phone_recycled", "Your security phone number was removed",
		 "The security phone number of your mica account was recycled by the carrier and"
		 " verified by a new owner. It was removed; bind a new one in your security settings."},
	[ACCT_NOTICE_RESET_REFUSED] =
		{"reset_refused", "Password reset refused",
		 "Someone asked to reset your mica password with a phone number"
		 " the carrier has recycled. The number was removed from your"
		 " account; use your email or security contacts instead."},
};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))

static int kind_of(const char *name)
{
	for (size_t i = 0; i < NKINDS; i++)
		if (kinds[i].name && name && strcmp(kinds[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* ---- emitting ------------------------------------------------------------------- */

int acct_notice_emit(mica_db *db, int64_t user_id, enum acct_notice_kind kind, const char *arg,
		     unsigned carry)
{
	json_t *payload = NULL;
	char *text = NULL, *detail = NULL, uid[24], ev[24], mask[8];
	int64_t id = 0;
	int err;

	if (!db || (size_t)kind >= NKINDS || !kinds[kind].name || user_id <= 0 || carry > 15)
		return MICA_EINVAL;
	payload = json_pack("{s:I,s:s}", "user_id", (json_int_t)user_id, "kind", kinds[kind].name);
	if (payload && arg)
		json_object_set_new(payload, kind == ACCT_NOTICE_NEW_SIGN_IN ? "device" : "contact",
				    json_string(arg));
	if (!payload || !(text = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS))) {
		err = MICA_ENOMEM;
		goto out;
	}
	if ((err = mica_outbox_emit(db, NOTICE_TOPIC, text, &id)) != 0 || !carry)
		goto out;
	/* The contacts this notice must still reach once their columns are
	 * cleared: their ciphertexts, copied now in the same transaction. */
	json_object_del(payload, "user_id");
	json_object_del(payload, "kind");
	if (!(detail = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS))) {
		err = MICA_ENOMEM;
		goto out;
	}
	snprintf(uid, sizeof(uid), "%lld", (long long)user_id);
	snprintf(ev, sizeof(ev), "%lld", (long long)id);
	snprintf(mask, sizeof(mask), "%u", carry);
	const char *p[5] = {ev, uid, kinds[kind].name, detail, mask};
	err = mica_db_exec(
		db,
		"INSERT INTO account.notice (event_id, user_id, kind, detail, carried)"
		" SELECT $1::bigint, id, $3, $4::jsonb, jsonb_strip_nulls(jsonb_build_object("
		" 'phone', CASE WHEN $5::int & 1 <> 0 THEN phone_enc END,"
		" 'email', CASE WHEN $5::int & 2 <> 0 THEN email_enc END,"
		" 'security_phone', CASE WHEN $5::int & 4 <> 0 THEN security_phone_enc END,"
		" 'security_email', CASE WHEN $5::int & 8 <> 0 THEN security_email_enc END))"
		" FROM account.user WHERE id = $2::bigint",
		5, p, NULL);
out:
	free(text);
	free(detail);
	json_decref(payload);
	return err;
}

/* ---- the worker: copy -------------------------------------------------------------- */

/* Consumer of account.notice events: a row of account.notice per event,
 * committed with the event's removal from the pending list (exactly once).
 * A payload that is not a notice is logged and dropped: retrying it would
 * block every notice behind it. */
static int copy_event(mica_db *db, const struct mica_outbox_event *e, void *arg)
{
	json_error_t jerr;
	json_t *o = json_loads(e->payload, 0, &jerr), *detail = NULL;
	json_int_t uid = json_integer_value(json_object_get(o, "user_id"));
	const char *kind = json_string_value(json_object_get(o, "kind"));
	char *dtext = NULL, ev[24], u[24];
	int err = 0;
	(void)arg;
	if (!o || uid <= 0 || kind_of(kind) < 0) {
		MICA_LOG(MICA_LOG_ERROR, "notice: event %lld is not a notice; dropped",
			 (long long)e->id);
		goto out;
	}
	detail = json_deep_copy(o);
	json_object_del(detail, "user_id");
	json_object_del(detail, "kind");
	if (!detail || !(dtext = json_dumps(detail, JSON_COMPACT))) {
		err = MICA_ENOMEM;
		goto out;
	}
	snprintf(ev, sizeof(ev), "%lld", (long long)e->id);
	snprintf(u, sizeof(u), "%lld", (long long)uid);
	const char *p[4] = {ev, u, kind, dtext};
	err = mica_db_exec(
		db,
		"INSERT INTO account.notice (event_id, user_id, kind, detail)"
		" VALUES ($1::bigint, $2::bigint, $3, $4::jsonb) ON CONFLICT (event_id) DO NOTHING",
		4, p, NULL);
out:
	free(dtext);
	json_decref(detail);
	json_decref(o);
	return err;
}

/* ---- the worker: delivery ------------------------------------------------------------ */

/* A failure worth another attempt later: a dependency down or refusing for
 * now. Anything else (a malformed address, a ciphertext that does not open)
 * will fail the same way every time. */
static bool transient(int err)
{
	return err != MICA_EINVAL && err != MICA_EAUTH && err != MICA_EBADHEADER &&
	       err != MICA_ENOTFOUND;
}

struct delivery {
	acct_service *s;
	bool found;
	int64_t event_id;
	int attempts, sent;
	int err;	  /* the transient failure that stopped this attempt, or 0 */
	const char *what; /* its dependency, for the log */
	char kind[32];
	char created_us[24]; /* created_at in microseconds since 1970 */
};

/* The text of notice |kind| with its detail into |body|: 0, or the
 * transient error that kept it from being made now (the device row could not
 * be read or its name did not open; *what names the dependency). A name
 * that can never open is left out ("unnamed"). */
static int notice_text(acct_service *s, mica_db *db, int kind, int64_t uid, json_t *detail,
		       char *body, size_t cap, const char **what)
{
	const char *arg = NULL;
	char *name = NULL;
	if (kind == ACCT_NOTICE_NEW_SIGN_IN) {
		int err;
		const char *dev = json_string_value(json_object_get(detail, "device"));
		PGresult *res = NULL;
		char u[24];
		snprintf(u, sizeof(u), "%lld", (long long)uid);
		const char *p[2] = {u, dev ? dev : ""};
		if ((err = mica_db_exec(db,
					"SELECT name FROM account.device WHERE user_id = $1::bigint"
					" AND device_hash = $2",
					2, p, &res)) != 0) {
			*what = "the database";
			return err;
		}
		if (PQntuples(res) == 1 &&
		    (err = acct_device_name_open(s, uid, dev, mica_db_get(res, 0, 0), &name)) !=
			    0) {
			PQclear(res);
			if (transient(err)) {
				*what = "the Key Center";
				return err;
			}
			/* A name that will never open: the notice goes without it. */
			MICA_LOG(MICA_LOG_WARN, "notice: a device name does not open (%s)",
				 mica_strerror(err));
			name = NULL;
			res = NULL;
		}
		PQclear(res);
		arg = name && *name ? name : "unnamed";
		snprintf(body, cap, kinds[kind].body, arg);
	} else if (kind == ACCT_NOTICE_CONTACT_ADDED || kind == ACCT_NOTICE_CONTACT_REMOVED) {
		const char *c = json_string_value(json_object_get(detail, "contact"));
		snprintf(body, cap, kinds[kind].body,
			 c && strcmp(c, "phone") == 0 ? "phone number" : "email address");
	} else {
		snprintf(body, cap, "%s", kinds[kind].body);
	}
	if (name) {
		mica_wipe(name, strlen(name));
		free(name);
	}
	return 0;
}

/* Sends the notice to every contact slot not yet done; stops at the first
 * transient failure (d->err, d->what). */
static int send_all(struct delivery *d, mica_db *db, int kind, int64_t uid, PGresult *row,
		    json_t *carried, const char *body)
{
	acct_service *s = d->s;
	char u[24];
	snprintf(u, sizeof(u), "%lld", (long long)uid);
	for (int slot = 0; slot < 8; slot++) {
		const char *col = contact_col[slot % 4];
		const char *sealed = slot < 4 ? (row ? mica_db_get(row, 0, slot) : NULL)
					      : json_string_value(json_object_get(carried, col));
		char *to = NULL;
		int err;
		if (!sealed || !*sealed || (d->sent & (1 << slot)))
			continue;
		if ((err = acct_pii_open(s, "user", col, u, sealed, &to)) != 0) {
			if (transient(err)) {
				d->err = err;
				d->what = "the Key Center";
				return 0;
			}
			MICA_LOG(MICA_LOG_ERROR,
				 "notice: event %lld: the %s of the account does not open (%s);"
				 " skipped",
				 (long long)d->event_id, col, mica_strerror(err));
			d->sent |= 1 << slot;
			continue;
		}
		/* The same for every attempt at this message, and unique even
		 * across a database restored with its event ids. */
		char key[ACCT_NOTIFY_KEY_MAX + 1];
		snprintf(key, sizeof(key), "notice-%lld-%d-%s", (long long)d->event_id, slot,
			 d->created_us);
		err = acct_notify_send_keyed(s->notify, db,
					     slot % 2 == 0 ? ACCT_CHANNEL_SMS : ACCT_CHANNEL_EMAIL,
					     to, kinds[kind].subject, body, key);
		mica_wipe(to, strlen(to));
		free(to);
		if (err && transient(err)) {
			d->err = err;
			d->what = "the notifier";
			return 0;
		}
		d->sent |= 1 << slot; /* sent, or refused for good (logged by the notifier) */
	}
	return 0;
}

static int deliver_tx(mica_db *db, void *arg)
{
	struct delivery *d = arg;
	PGresult *res = NULL, *row = NULL;
	json_t *detail = NULL, *carried = NULL;
	char body[400], u[24], ev[24], sent[16], lim[16], give_up[16];
	int64_t uid = 0, sent_n = 0, attempts_n = 0;
	int err, kind;

	d->found = false;
	d->err = 0;
	d->what = NULL;
	snprintf(give_up, sizeof(give_up), "%d", GIVE_UP_S);
	const char *pg[1] = {give_up};
	err = mica_db_exec(
		db,
		"SELECT event_id, user_id, kind, detail::text, carried::text, sent, attempts,"
		" created_at < now() - make_interval(secs => $1::int),"
		" (extract(epoch FROM created_at) * 1000000)::bigint"
		" FROM account.notice WHERE next_at <= now()"
		" ORDER BY next_at LIMIT 1 FOR UPDATE SKIP LOCKED",
		1, pg, &res);
	if (err || PQntuples(res) != 1)
		goto out;
	d->found = true;
	if ((err = mica_db_get_int64(res, 0, 0, &d->event_id)) != 0 ||
	    (err = mica_db_get_int64(res, 0, 1, &uid)) != 0 ||
	    (err = mica_db_get_int64(res, 0, 5, &sent_n)) != 0 ||
	    (err = mica_db_get_int64(res, 0, 6, &attempts_n)) != 0)
		goto out;
	snprintf(d->kind, sizeof(d->kind), "%s", mica_db_get(res, 0, 2));
	d->sent = (int)sent_n;
	d->attempts = (int)attempts_n;
	bool expired = strcmp(mica_db_get(res, 0, 7), "t") == 0;
	snprintf(d->created_us, sizeof(d->created_us), "%.20s", mica_db_get(res, 0, 8));
	kind = kind_of(d->kind);
	detail = json_loads(mica_db_get(res, 0, 3), 0, NULL);
	carried = mica_db_get(res, 0, 4) ? json_loads(mica_db_get(res, 0, 4), 0, NULL) : NULL;
	snprintf(u, sizeof(u), "%lld", (long long)uid);
	snprintf(ev, sizeof(ev), "%lld", (long long)d->event_id);
	if (kind >= 0) {
		const char *p[1] = {u};
		if ((err = mica_db_exec(
			     db,
			     "SELECT phone_enc, email_enc, security_phone_enc,"
			     " security_email_enc FROM account.user WHERE id = $1::bigint",
			     1, p, &row)) != 0)
			goto out;
		if (PQntuples(row) != 1) {
			PQclear(row);
			row = NULL; /* the account is gone: only carried contacts remain */
		}
		if ((err = notice_text(d->s, db, kind, uid, detail, body, sizeof(body),
				       &d->what)) != 0)
			d->err = err; /* transient: tried again later */
		else if ((err = send_all(d, db, kind, uid, row, carried, body)) != 0) {
			goto out;
		}
	} else {
		MICA_LOG(MICA_LOG_ERROR, "notice: event %lld has an unknown kind; dropped",
			 (long long)d->event_id);
	}
	snprintf(sent, sizeof(sent), "%d", d->sent);
	if (d->err && !expired) {
		int delay = d->attempts < 6 ? 1 << d->attempts : BACKOFF_MAX_S;
		if (delay > BACKOFF_MAX_S)
			delay = BACKOFF_MAX_S;
		snprintf(lim, sizeof(lim), "%d", delay);
		const char *p[4] = {ev, sent, lim, mica_strerror(d->err)};
		err = mica_db_exec(
			db,
			"UPDATE account.notice SET sent = $2::int, attempts = attempts + 1,"
			" next_at = now() + make_interval(secs => $3::int), last_error = $4"
			" WHERE event_id = $1::bigint",
			4, p, NULL);
		if (!err)
			MICA_LOG(MICA_LOG_WARN,
				 "notice: event %lld (%s) delayed: %s is unavailable (%s);"
				 " attempt %d, next in %d s",
				 (long long)d->event_id, d->kind,
				 d->what ? d->what : "a dependency", mica_strerror(d->err),
				 d->attempts + 1, delay);
	} else {
		if (d->err)
			MICA_LOG(MICA_LOG_ERROR,
				 "notice: event %lld (%s) given up after %d attempts: %s is"
				 " unavailable (%s)",
				 (long long)d->event_id, d->kind, d->attempts + 1,
				 d->what ? d->what : "a dependency", mica_strerror(d->err));
		else if (d->attempts > 0)
			MICA_LOG(MICA_LOG_INFO,
				 "notice: event %lld (%s) delivered after %d attempts",
				 (long long)d->event_id, d->kind, d->attempts + 1);
		/* Done (or given up): the row goes, and with it the carried
		 * ciphertexts; a deleted account leaves nothing behind. */
		const char *p[1] = {ev};
		err = mica_db_exec(db, "DELETE FROM account.notice WHERE event_id = $1::bigint", 1,
				   p, NULL);
	}
out:
	json_decref(detail);
	json_decref(carried);
	PQclear(row);
	PQclear(res);
	return err;
}

/* Delivers up to DELIVER_PER_ROUND due notices; 0 or the database error. */
static int deliver_due(acct_service *s, mica_db *db, atomic_bool *stop)
{
	for (int i = 0; i < DELIVER_PER_ROUND && !atomic_load(stop); i++) {
		struct delivery d = {.s = s};
		int err = mica_db_tx(db, MICA_DB_READ_COMMITTED, deliver_tx, &d);
		if (err)
			return err;
		/* Nothing due, or a dependency is down: the next notices would
		 * only fail the same way now; they are tried on the next round. */
		if (!d.found || d.err)
			break;
	}
	return 0;
}

struct acct_notice_worker {
	acct_service *s;
	pthread_t thread;
	atomic_bool stop;
};

static void *worker_main(void *arg)
{
	acct_notice_worker *w = arg;
	mica_db *db = mica_db_thread();
	int last_err = 0;
	MICA_LOG(MICA_LOG_INFO, "notice: worker started");
	while (!atomic_load(&w->stop)) {
		int handled = 0, err;
		err = db ? mica_outbox_consume(db, NOTICE_CONSUMER, CONSUME_BATCH, copy_event, NULL,
					       &handled)
			 : MICA_EDBCONN;
		if (!err)
			err = deliver_due(w->s, db, &w->stop);
		if (err != last_err) {
			if (err)
				MICA_LOG(MICA_LOG_WARN,
					 "notice: the worker cannot reach the database (%s);"
					 " notices wait in it",
					 mica_strerror(err));
			else
				MICA_LOG(MICA_LOG_INFO,
					 "notice: the worker reaches the database again");
			last_err = err;
		}
		if (err) {
			nanosleep(&wait_pause, NULL);
			continue;
		}
		if (handled > 0)
			continue;
		/* Woken by a new event, or after WAIT_MS to retry what is due. */
		err = mica_outbox_wait(db, NOTICE_CONSUMER, WAIT_MS);
		if (err && err != MICA_ETIMEOUT)
			nanosleep(&wait_pause, NULL);
	}
	MICA_LOG(MICA_LOG_INFO, "notice: worker stopped");
	return NULL;
}

int acct_notice_start(acct_service *s, acct_notice_worker **out)
{
	acct_notice_worker *w = calloc(1, sizeof(*w));
	*out = NULL;
	if (!w)
		return MICA_ENOMEM;
	w->s = s;
	atomic_init(&w->stop, false);
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
		free(w);
		return MICA_ENOMEM;
	}
	*out = w;
	return 0;
}

void acct_notice_stop(acct_notice_worker **wp)
{
	acct_notice_worker *w = wp ? *wp : NULL;
	if (!w)
		return;
	atomic_store(&w->stop, true);
	pthread_join(w->thread, NULL);
	free(w);
	*wp = NULL;
}
