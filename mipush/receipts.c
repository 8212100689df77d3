/* receipts.c - MiPush receipts (callback.url): a scheduled job that reports
 * each message's delivered and invalid-target totals, read from its trace
 * counters, to the developer's HTTPS URL, one POST per URL batching its due
 * messages, retried with exponential backoff and given up after
 * push.receipts.max_attempts failures. Nothing per device leaves: a receipt
 * carries counts, never a registration id (docs/api/push.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "httpc.h"
#include "log.h"
#include "mipush/push.h"

#define CLAIM_MAX 200	 /* messages claimed by one transaction */
#define CLAIMS_PER_RUN 5 /* claims one run makes at most */
#define POST_MAX 100	 /* messages in one POST */
#define TYPE_DELIVERED 1
#define TYPE_INVALID 16

bool push_receipt_url_ok(const char *url)
{
	static const char scheme[] = "https://";
	if (!url || strncasecmp(url, scheme, sizeof(scheme) - 1) != 0)
		return false;
	const char *host = url + sizeof(scheme) - 1;
	return *host && *host != '/' && *host != '?' && *host != '#' && *host != '@' &&
	       !strpbrk(url, " \t\r\n");
}

json_t *push_receipt_body(const json_t *rows, int64_t now_ms)
{
	json_t *body = json_object();
	size_t i;
	json_t *row;
	if (!body)
		return NULL;
	json_array_foreach(rows, i, row)
	{
		const char *id = json_string_value(json_object_get(row, "msg_id"));
		json_int_t type = json_integer_value(json_object_get(row, "type"));
		json_t *e = json_object();
		if (!id || !e) {
			json_decref(e);
			goto fail;
		}
		type &= TYPE_DELIVERED | TYPE_INVALID;
		json_t *param = json_object_get(row, "param");
		json_t *jobkey = json_object_get(row, "jobkey");
		int bad = json_object_set_new(e, "param",
					      json_is_string(param) ? json_copy(param)
								    : json_string("")) |
			  json_object_set_new(e, "type", json_integer(type)) |
			  json_object_set_new(e, "timestamp", json_integer(now_ms));
		if (type & TYPE_DELIVERED)
			bad |= json_object_set(e, "delivered", json_object_get(row, "delivered"));
		if (type & TYPE_INVALID)
			bad |= json_object_set(e, "invalid", json_object_get(row, "invalid"));
		if (json_is_string(jobkey))
			bad |= json_object_set(e, "jobkey", jobkey);
		if (bad) {
			json_decref(e);
			goto fail;
		}
		if (json_object_set_new(body, id, e) != 0) /* takes |e| even when it fails */
			goto fail;
	}
	return body;
fail:
	json_decref(body);
	return NULL;
}

/* A claimed message. */
struct claimed {
	char *msg_id, *url;
	json_t *row; /* {msg_id, param, type, jobkey, delivered, invalid} */
	bool done;
};

static void claimed_free(struct claimed *c, int n)
{
	for (int i = 0; i < n; i++) {
		free(c[i].msg_id);
		free(c[i].url);
		json_decref(c[i].row);
	}
	free(c);
}

struct claim_tx {
	int64_t now_ms;
	const struct push_config *cfg;
	PGresult *res;
};

/* Claims due messages: their receipt_next_at moves past the time a POST can
 * take, so another node skips them until this one has answered. */
static int claim_tx(mica_db *db, void *arg)
{
	struct claim_tx *t = arg;
	char now[32], lim[16], lease[32];
	snprintf(now, sizeof(now), "%.3f", (double)t->now_ms / 1000.0);
	snprintf(lim, sizeof(lim), "%d", CLAIM_MAX);
	snprintf(lease, sizeof(lease), "%.3f", (2.0 * t->cfg->receipts_timeout_ms + 5000) / 1000.0);
	PQclear(t->res);
	t->res = NULL;
	const char *params[] = {now, lim, lease};
	return mica_db_exec(
		db,
		"UPDATE push.message m SET receipt_next_at = to_timestamp($1::float8) +"
		" make_interval(secs => $3::float8) FROM (SELECT msg_id FROM push.message WHERE"
		" callback_url IS NOT NULL AND NOT receipt_given_up AND (receipt_next_at IS NULL OR"
		" receipt_next_at <= to_timestamp($1::float8)) AND (((coalesce(callback_type, 1) &"
		" 1) <> 0 AND delivered > receipted_delivered) OR ((coalesce(callback_type, 1) & 16)"
		" <> 0 AND invalid > receipted_invalid)) ORDER BY created_at LIMIT $2::int FOR"
		" UPDATE SKIP LOCKED) d WHERE m.msg_id = d.msg_id RETURNING m.msg_id,"
		" m.callback_url, m.callback_param, coalesce(m.callback_type, 1), m.jobkey,"
		" m.delivered, m.invalid",
		3, params, &t->res);
}

static int load_claims(const PGresult *res, struct claimed **out, int *n)
{
	int rows = PQntuples(res);
	struct claimed *c = calloc(rows ? (size_t)rows : 1, sizeof(*c));
	*out = NULL;
	*n = 0;
	if (!c)
		return MICA_ENOMEM;
	for (int i = 0; i < rows; i++) {
		int64_t type = 0, delivered = 0, invalid = 0;
		const char *jobkey = mica_db_get(res, i, 4), *param = mica_db_get(res, i, 2);
		c[i].msg_id = strdup(mica_db_get(res, i, 0));
		c[i].url = strdup(mica_db_get(res, i, 1));
		if (mica_db_get_int64(res, i, 3, &type) ||
		    mica_db_get_int64(res, i, 5, &delivered) ||
		    mica_db_get_int64(res, i, 6, &invalid))
			type = 0;
		c[i].row =
			json_pack("{s:s,s:s,s:I,s:o,s:I,s:I}", "msg_id", mica_db_get(res, i, 0),
				  "param", param ? param : "", "type", (json_int_t)type, "jobkey",
				  jobkey ? json_string(jobkey) : json_null(), "delivered",
				  (json_int_t)delivered, "invalid", (json_int_t)invalid);
		if (!c[i].msg_id || !c[i].url || !c[i].row) {
			claimed_free(c, i + 1);
			return MICA_ENOMEM;
		}
	}
	*out = c;
	*n = rows;
	return 0;
}

/* Records the outcome for |rows| (JSON array of claimed rows). */
static int record(mica_db *db, const struct push_config *cfg, int64_t now_ms, json_t *rows, bool ok,
		  bool give_up, long *given_up)
{
	char *list = json_dumps(rows, JSON_COMPACT);
	char now[32], max[16], backoff[24];
	PGresult *res = NULL;
	int err;
	if (!list)
		return MICA_ENOMEM;
	snprintf(now, sizeof(now), "%.3f", (double)now_ms / 1000.0);
	snprintf(max, sizeof(max), "%d", give_up ? 0 : cfg->receipts_max_attempts);
	snprintf(backoff, sizeof(backoff), "%d", cfg->receipts_backoff_ms);
	if (ok) {
		const char *params[] = {list};
		err = mica_db_exec(db,
				   "UPDATE push.message m SET receipted_delivered ="
				   " greatest(m.receipted_delivered, (x->>'delivered')::int),"
				   " receipted_invalid = greatest(m.receipted_invalid,"
				   " (x->>'invalid')::int), receipt_attempts = 0, receipt_next_at ="
				   " NULL FROM json_array_elements($1::json) x WHERE m.msg_id ="
				   " x->>'msg_id'",
				   1, params, NULL);
	} else {
		/* The delay doubles with each failure (capped at an hour). */
		const char *params[] = {list, now, max, backoff};
		err = mica_db_exec(
			db,
			"UPDATE push.message m SET receipt_attempts = m.receipt_attempts +"
			" 1, receipt_given_up = m.receipt_attempts + 1 >= $3::int,"
			" receipt_next_at = to_timestamp($2::float8) + make_interval(secs"
			" => least($4::float8 * power(2, m.receipt_attempts), 3600000) /"
			" 1000) FROM json_array_elements($1::json) x WHERE m.msg_id ="
			" x->>'msg_id' RETURNING m.receipt_given_up",
			4, params, &res);
		for (int i = 0; !err && i < PQntuples(res); i++)
			if (strcmp(mica_db_get(res, i, 0), "t") == 0)
				(*given_up)++;
	}
	PQclear(res);
	free(list);
	return err;
}

/* POSTs the receipts of claimed messages c[from..] that share c[from]'s URL
 * (at most POST_MAX), marking them done, and records the outcome. */
static int post_group(mica_db *db, mica_httpc *hc, const struct push_config *cfg, int64_t now_ms,
		      struct claimed *c, int n, int from, push_receipt_result *r)
{
	json_t *rows = json_array(), *body = NULL;
	char *text = NULL;
	mica_httpc_resp resp = {0};
	int err = 0;
	if (!rows)
		return MICA_ENOMEM;
	for (int i = from; i < n && json_array_size(rows) < POST_MAX; i++)
		if (!c[i].done && strcmp(c[i].url, c[from].url) == 0) {
			c[i].done = true;
			json_array_append(rows, c[i].row);
		}
	size_t count = json_array_size(rows);
	/* Given up at once, named by the first message (the operator finds the
	 * URL in push.message): a URL that is not https, or a host that is not
	 * a public address (push.receipts.private_addresses off). No retry can
	 * change either. */
	const char *why = push_receipt_url_ok(c[from].url) ? NULL : "the callback URL is not https";
	int herr = 0;
	if (!why) {
		if (!(body = push_receipt_body(rows, now_ms)) ||
		    !(text = json_dumps(body, JSON_COMPACT))) {
			err = MICA_ENOMEM;
			goto out;
		}
		herr = mica_httpc_request(hc, "POST", c[from].url, text, strlen(text), 0, &resp);
		if (herr == MICA_EDENIED)
			why = "the callback host is not a public address";
	}
	if (why) {
		MICA_LOG(MICA_LOG_WARN, "push: receipts of %zu message(s) (first %s) given up: %s",
			 count, c[from].msg_id, why);
		err = record(db, cfg, now_ms, rows, false, true, &r->given_up);
		goto out;
	}
	bool ok = herr == 0 && resp.status >= 200 && resp.status < 300;
	if (ok) {
		r->posted++;
		r->messages += (long)count;
	} else {
		r->failed++;
		MICA_LOG(MICA_LOG_INFO,
			 "push: a receipt POST of %zu message(s) (first %s) failed: %s", count,
			 c[from].msg_id,
			 herr ? mica_strerror(herr) : "the receiver did not answer 2xx");
	}
	long before = r->given_up;
	err = record(db, cfg, now_ms, rows, ok, false, &r->given_up);
	if (!err && r->given_up > before)
		MICA_LOG(MICA_LOG_WARN,
			 "push: receipts of %ld message(s) given up after %d failed attempts",
			 r->given_up - before, cfg->receipts_max_attempts);
out:
	mica_httpc_resp_cleanup(&resp);
	free(text);
	json_decref(body);
	json_decref(rows);
	return err;
}

int push_receipts_run(mica_db *db, mica_httpc *hc, const struct push_config *cfg, int64_t now_ms,
		      push_receipt_result *r)
{
	memset(r, 0, sizeof(*r));
	if (!db || !hc || !cfg)
		return MICA_EINVAL;
	for (int round = 0; round < CLAIMS_PER_RUN; round++) {
		struct claim_tx t = {.now_ms = now_ms, .cfg = cfg};
		struct claimed *c = NULL;
		int n = 0;
		int err = mica_db_tx(db, MICA_DB_READ_COMMITTED, claim_tx, &t);
		if (!err)
			err = load_claims(t.res, &c, &n);
		PQclear(t.res);
		if (err)
			return err;
		for (int i = 0; !err && i < n; i++)
			if (!c[i].done)
				err = post_group(db, hc, cfg, now_ms, c, n, i, r);
		claimed_free(c, n);
		if (err)
			return err;
		if (n < CLAIM_MAX)
			break;
	}
	return 0;
}
