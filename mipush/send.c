/* send.c - a developer's send (docs/api/push.md, docs/push-internals.md):
 * the targets resolved to registrations, each device's content key opened
 * (lib/kc's cache, misses in batches), the message sealed per device, then
 * one transaction that stores the message, its queue rows, the jobkey gate,
 * notify_id replacement, the pending cap with its deleted_messages markers
 * and the counters; only after COMMIT the id is answered and the new rows
 * are published on push:wake. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "crypto.h"
#include "log.h"
#include "mipush/push.h"

#define AAD_PREFIX "mica-push v1"
#define WAKE_CHANNEL "push:wake"
#define WAKE_BYTES_MAX (512 * 1024) /* one PUBLISH */

/* One device of a send. */
struct dev {
	char *regid, *enc;
	uint8_t key[PUSH_CONTENT_KEY_LEN];
	int key_ok;
	uint8_t *body; /* sealed message */
	size_t body_len;
	int64_t seq; /* queue row committed (0: none) */
	/* the deleted_messages marker, when the cap dropped rows */
	long dropped;
	uint8_t *marker;
	size_t marker_len;
	int64_t marker_seq;
};

struct send {
	push_service *s;
	const push_app *app;
	const push_send_req *r;
	char msg_id[PUSH_MSG_ID_LEN + 1];
	int64_t now_ms;
	struct dev *d;
	size_t n;
	long invalid;
	/* results of the transaction (reset by each attempt) */
	long queued, skipped;
};

static void devs_free(struct send *x)
{
	for (size_t i = 0; i < x->n; i++) {
		struct dev *d = &x->d[i];
		mica_wipe(d->key, sizeof(d->key));
		free(d->regid);
		free(d->enc);
		free(d->body);
		free(d->marker);
	}
	free(x->d);
	x->d = NULL;
	x->n = 0;
}

/* ---- targets ------------------------------------------------------------------ */

static int dev_cmp(const void *a, const void *b)
{
	return strcmp(((const struct dev *)a)->regid, ((const struct dev *)b)->regid);
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The number of distinct strings in the JSON array |a|, or -1. */
static long distinct_strings(const json_t *a)
{
	size_t n = json_array_size(a);
	const char **v = malloc((n ? n : 1) * sizeof(*v));
	long d = 0;
	if (!v)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (!(v[i] = json_string_value(json_array_get(a, i)))) {
			free(v);
			return -1;
		}
	qsort(v, n, sizeof(*v), str_cmp);
	for (size_t i = 0; i < n; i++)
		d += i == 0 || strcmp(v[i - 1], v[i]) != 0;
	free(v);
	return d;
}

/* The registrations a send names, into x->d; targets naming none counted in
 * x->invalid. Every query is by app, so nothing of another app is found. */
static int resolve(struct send *x, mica_problem *p)
{
	const push_send_req *r = x->r;
	char *list = NULL, nbuf[16];
	PGresult *res = NULL;
	int err = 0;
	const char *sql = NULL;
	size_t ntargets = r->targets ? json_array_size(r->targets) : 0;

	if (r->targets && !(list = json_dumps(r->targets, JSON_COMPACT)))
		return mica_problemf(p, 500, "internal_error", "resolving the targets failed");
	snprintf(nbuf, sizeof(nbuf), "%zu", ntargets);
	const char *params[] = {x->app->app_id, list ? list : "[]", nbuf};
	int np = 2;
	switch (r->target) {
	case PUSH_TARGET_REGID:
		sql = "SELECT regid, content_key_enc FROM push.registration WHERE app_id = $1 AND"
		      " regid IN (SELECT json_array_elements_text($2::json)) ORDER BY regid";
		break;
	case PUSH_TARGET_ALIAS:
		sql = "SELECT DISTINCT r.regid, r.content_key_enc FROM push.alias a JOIN"
		      " push.registration r ON r.regid = a.regid AND r.app_id = a.app_id WHERE"
		      " a.app_id = $1 AND a.alias IN (SELECT json_array_elements_text($2::json))"
		      " ORDER BY r.regid";
		break;
	case PUSH_TARGET_TOPIC:
		sql = "SELECT DISTINCT r.regid, r.content_key_enc FROM push.topic_subscription t"
		      " JOIN push.registration r ON r.regid = t.regid AND r.app_id = t.app_id"
		      " WHERE t.app_id = $1 AND t.topic IN (SELECT"
		      " json_array_elements_text($2::json)) ORDER BY r.regid";
		break;
	case PUSH_TARGET_MULTI_TOPIC:
		np = 3;
		if (r->topic_op == PUSH_TOPIC_UNION)
			sql = "SELECT DISTINCT r.regid, r.content_key_enc FROM"
			      " push.topic_subscription t JOIN push.registration r ON r.regid ="
			      " t.regid AND r.app_id = t.app_id WHERE t.app_id = $1 AND t.topic IN"
			      " (SELECT json_array_elements_text($2::json)) AND $3::int > 0"
			      " ORDER BY r.regid";
		else if (r->topic_op == PUSH_TOPIC_INTERSECTION)
			sql = "SELECT r.regid, r.content_key_enc FROM push.topic_subscription t"
			      " JOIN push.registration r ON r.regid = t.regid AND r.app_id ="
			      " t.app_id WHERE t.app_id = $1 AND t.topic IN (SELECT DISTINCT"
			      " json_array_elements_text($2::json)) GROUP BY r.regid,"
			      " r.content_key_enc HAVING count(DISTINCT t.topic) = (SELECT"
			      " count(DISTINCT x) FROM json_array_elements_text($2::json) x) AND"
			      " $3::int > 0 ORDER BY r.regid";
		else /* the first topic's devices that have none of the others */
			sql = "SELECT r.regid, r.content_key_enc FROM push.topic_subscription t"
			      " JOIN push.registration r ON r.regid = t.regid AND r.app_id ="
			      " t.app_id WHERE t.app_id = $1 AND t.topic = ($2::json->>0) AND NOT"
			      " EXISTS (SELECT 1 FROM push.topic_subscription o WHERE o.app_id ="
			      " $1 AND o.regid = t.regid AND o.topic IN (SELECT x FROM"
			      " json_array_elements_text($2::json) WITH ORDINALITY AS e(x, i) WHERE"
			      " i > 1)) AND $3::int > 0 ORDER BY r.regid";
		break;
	case PUSH_TARGET_ALL:
		sql = "SELECT regid, content_key_enc FROM push.registration WHERE app_id = $1 AND"
		      " $2::json IS NOT NULL ORDER BY regid";
		break;
	}
	if ((err = mica_db_exec(mica_db_thread(), sql, np, params, &res)) != 0) {
		err = push_problem_dependency(p, err, "resolving the targets");
		goto out;
	}
	size_t rows = (size_t)PQntuples(res);
	if (rows && !(x->d = calloc(rows, sizeof(*x->d)))) {
		err = mica_problemf(p, 500, "internal_error", "resolving the targets failed");
		goto out;
	}
	for (size_t i = 0; i < rows; i++) {
		x->d[i].regid = strdup(mica_db_get(res, (int)i, 0));
		x->d[i].enc = strdup(mica_db_get(res, (int)i, 1));
		x->n++;
		if (!x->d[i].regid || !x->d[i].enc) {
			err = mica_problemf(p, 500, "internal_error",
					    "resolving the targets failed");
			goto out;
		}
	}
	PQclear(res);
	res = NULL;
	/* find_dev() searches by strcmp order, which the database's collation
	 * need not follow. */
	if (x->n > 1)
		qsort(x->d, x->n, sizeof(*x->d), dev_cmp);
	/* Invalid targets: regids of no registration of the app, aliases of no
	 * device (MiPush counts both); a topic nobody follows is not invalid.
	 * Distinct: a target named twice is one target. A regid found is one
	 * row above, so the regids not found are counted here; an alias may
	 * name several devices, so the database counts those. */
	if (r->target == PUSH_TARGET_REGID) {
		long distinct = distinct_strings(r->targets);
		if (distinct < 0) {
			err = mica_problemf(p, 500, "internal_error",
					    "resolving the targets failed");
			goto out;
		}
		x->invalid = distinct - (long)x->n;
	} else if (r->target == PUSH_TARGET_ALIAS) {
		err = mica_db_exec(
			mica_db_thread(),
			"SELECT count(DISTINCT x) FROM json_array_elements_text($2::json) x"
			" WHERE NOT EXISTS (SELECT 1 FROM push.alias a WHERE a.app_id = $1"
			" AND a.alias = x)",
			2, params, &res);
		int64_t v = 0;
		if (err || (err = mica_db_get_int64(res, 0, 0, &v)) != 0) {
			err = push_problem_dependency(p, err, "resolving the targets");
			goto out;
		}
		x->invalid = (long)v;
	}
out:
	PQclear(res);
	free(list);
	return err;
}

/* ---- keys and sealing ---------------------------------------------------------- */

static json_t *key_context(const char *regid)
{
	return json_pack("{s:s,s:s,s:s,s:s}", "service", "push", "table", "registration", "column",
			 "content_key", "row", regid);
}

/* Opens every device's content key: one lib/kc call for all, answered from
 * its cache or in batch requests. A device whose key does not open (its
 * stored ciphertext damaged) is skipped and counted invalid; the Key Center
 * unreachable fails the send. */
static int open_keys(struct send *x, mica_problem *p)
{
	const char **cts = NULL;
	json_t **ctxs = NULL;
	uint8_t *keys = NULL;
	size_t *lens = NULL;
	int *errs = NULL, err = 0;

	if (!x->n)
		return 0;
	if (!(cts = calloc(x->n, sizeof(*cts))) || !(ctxs = calloc(x->n, sizeof(*ctxs))) ||
	    !(keys = calloc(x->n, MICA_KC_DATAKEY_MAX)) || !(lens = calloc(x->n, sizeof(*lens))) ||
	    !(errs = calloc(x->n, sizeof(*errs)))) {
		err = mica_problemf(p, 500, "internal_error", "opening the content keys failed");
		goto out;
	}
	for (size_t i = 0; i < x->n; i++) {
		cts[i] = x->d[i].enc;
		if (!(ctxs[i] = key_context(x->d[i].regid))) {
			err = mica_problemf(p, 500, "internal_error",
					    "opening the content keys failed");
			goto out;
		}
	}
	err = mica_kc_decrypt_datakeys(x->s->kc, x->s->cfg->content_key, x->n, cts, ctxs, keys,
				       MICA_KC_DATAKEY_MAX, lens, errs);
	if (err) {
		err = push_problem_dependency(p, err, "opening the content keys");
		goto out;
	}
	for (size_t i = 0; i < x->n; i++) {
		if (errs[i] || lens[i] != PUSH_CONTENT_KEY_LEN) {
			MICA_LOG(MICA_LOG_ERROR, "push: a content key does not open: %s",
				 mica_strerror(errs[i] ? errs[i] : MICA_EBADHEADER));
			continue;
		}
		memcpy(x->d[i].key, keys + i * MICA_KC_DATAKEY_MAX, PUSH_CONTENT_KEY_LEN);
		x->d[i].key_ok = 1;
	}
out:
	if (keys) {
		mica_wipe(keys, x->n * MICA_KC_DATAKEY_MAX);
		free(keys);
	}
	for (size_t i = 0; ctxs && i < x->n; i++)
		json_decref(ctxs[i]);
	free(ctxs);
	free(cts);
	free(lens);
	free(errs);
	return err;
}

static void view_init(const struct send *x, push_message_view *v)
{
	const push_send_req *r = x->r;
	memset(v, 0, sizeof(*v));
	v->msg_id = x->msg_id;
	v->type = r->pass_through ? "pass_through" : "notification";
	v->app_id = x->app->app_id;
	v->package = x->app->package;
	v->title = r->pass_through ? NULL : r->title;
	v->description = r->pass_through ? NULL : r->description;
	v->payload = r->payload;
	v->notify_id = r->notify_id;
	v->notify_type = r->notify_type;
	v->extra = r->extra;
	v->sent_at_ms = x->now_ms;
	v->count = 0;
}

static int seal_all(struct send *x, mica_problem *p)
{
	push_message_view v;
	view_init(x, &v);
	for (size_t i = 0; i < x->n; i++) {
		if (!x->d[i].key_ok)
			continue;
		int err = push_seal_message(x->d[i].key, x->d[i].regid, &v, &x->d[i].body,
					    &x->d[i].body_len);
		if (err)
			return push_problem_dependency(p, err, "sealing the message");
	}
	return 0;
}

/* The count a device's current marker (|body|, sealed for |regid|) says. */
static long marker_count(const struct dev *d, const uint8_t *body, size_t len)
{
	size_t rl = strlen(d->regid), al = sizeof(AAD_PREFIX) + rl, pl = 0;
	char *aad = malloc(al);
	uint8_t *pt = NULL;
	long count = 0;
	if (!aad)
		return 0;
	memcpy(aad, AAD_PREFIX, sizeof(AAD_PREFIX));
	memcpy(aad + sizeof(AAD_PREFIX), d->regid, rl);
	if (mica_envelope_open(d->key, PUSH_CONTENT_KEY_LEN, aad, al, body, len, &pt, &pl) == 0) {
		json_t *j = json_loadb((const char *)pt, pl, 0, NULL);
		json_int_t c = json_integer_value(json_object_get(j, "count"));
		count = c > 0 && c < 1000000000 ? (long)c : 0;
		json_decref(j);
		mica_wipe(pt, pl);
		free(pt);
	}
	free(aad);
	return count;
}

/* ---- the transaction ------------------------------------------------------------ */

static char *hex_of(const uint8_t *b, size_t len)
{
	char *h = malloc(2 * len + 1);
	if (h && mica_hex_encode(b, len, h, 2 * len + 1) != 0) {
		free(h);
		h = NULL;
	}
	return h;
}

/* Arrays of the devices idx[0..m): regids, and when |what| is not 0 their
 * content key ciphertexts (1) or sealed bodies in hex (2). */
static char *dev_array(const struct send *x, const size_t *idx, size_t m, int what)
{
	char **items = calloc(m ? m : 1, sizeof(*items)), *out = NULL;
	size_t made = 0;
	if (!items)
		return NULL;
	for (; made < m; made++) {
		const struct dev *d = &x->d[idx[made]];
		items[made] = what == 0	  ? strdup(d->regid)
			      : what == 1 ? strdup(d->enc)
			      : what == 2 ? hex_of(d->body, d->body_len)
					  : hex_of(d->marker, d->marker_len);
		if (!items[made])
			goto out;
	}
	out = mica_db_text_array((const char *const *)items, m);
out:
	for (size_t i = 0; i < made; i++)
		free(items[i]);
	free(items);
	return out;
}

static void ms_text(char buf[32], int64_t ms)
{
	snprintf(buf, 32, "%.3f", (double)ms / 1000.0);
}

struct tx {
	struct send *x;
	size_t *idx; /* devices with a sealed body */
	size_t m;
};

/* Adds the per-message drop counts of |res| (msg_id, count) to the stats. */
static int count_drops(mica_db *db, struct send *x, PGresult *res, int msg_col, int count_col)
{
	push_stats_batch b = {0};
	int err = 0;
	for (int i = 0; !err && i < PQntuples(res); i++) {
		int64_t k = 0;
		const char *mid = mica_db_get(res, i, msg_col);
		if (!mid || mica_db_get_int64(res, i, count_col, &k) != 0)
			continue;
		push_counts c = {.dropped = (long)k};
		err = push_stats_batch_add(&b, x->app->app_id, mid, &c);
	}
	int rerr = push_stats_batch_record(db, &b, x->now_ms);
	return err ? err : rerr;
}

/* The index of device |regid| among idx[0..m) (in strcmp order: resolve
 * sorts them), or -1. */
static long find_dev(const struct tx *t, const char *regid)
{
	size_t lo = 0, hi = t->m;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(t->x->d[t->idx[mid]].regid, regid);
		if (c == 0)
			return (long)t->idx[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* The pending cap: drops each device's oldest rows beyond the cap, then
 * replaces its marker with one counting every drop since it last got one. */
static int enforce_cap(mica_db *db, struct tx *t, const char *regids)
{
	struct send *x = t->x;
	PGresult *res = NULL;
	char cap[16], exp[32];
	int err;
	snprintf(cap, sizeof(cap), "%d", x->s->cfg->max_pending);
	/* Each device's rows newest first, by index: the rows deleted at
	 * PUBACK since the last look are met once, and the scan kills their
	 * index entries, so the next look steps over them. The planner, which
	 * costs a bloated queue by its size, would rather take a bitmap scan,
	 * which kills nothing and so visits every dead row again each time. */
	if ((err = mica_db_exec(db, "SET LOCAL enable_bitmapscan = off", 0, NULL, NULL)) != 0)
		return err;
	const char *p1[] = {regids, cap};
	err = mica_db_exec(db,
			   "WITH o AS (SELECT q.seq FROM unnest($1::text[]) AS t(regid) CROSS JOIN"
			   " LATERAL (SELECT seq FROM push.queue WHERE regid = t.regid AND kind = 0"
			   " ORDER BY seq DESC OFFSET $2::int) q), d AS (DELETE FROM push.queue q"
			   " USING o WHERE q.seq = o.seq RETURNING q.regid, q.msg_id) SELECT regid,"
			   " msg_id, count(*) FROM d GROUP BY regid, msg_id",
			   2, p1, &res);
	if (err)
		return err;
	if ((err = count_drops(db, x, res, 1, 2)) != 0)
		goto out;
	size_t nm = 0;
	size_t *mk = calloc(t->m ? t->m : 1, sizeof(*mk));
	if (!mk) {
		err = MICA_ENOMEM;
		goto out;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		long di = find_dev(t, mica_db_get(res, i, 0));
		int64_t k = 0;
		if (di < 0 || mica_db_get_int64(res, i, 2, &k) != 0)
			continue;
		if (!x->d[di].dropped)
			mk[nm++] = (size_t)di;
		x->d[di].dropped += (long)k;
	}
	PQclear(res);
	res = NULL;
	if (!nm) {
		free(mk);
		return 0;
	}
	/* The old markers of these devices: their counts carry over. */
	char *mregids = dev_array(x, mk, nm, 0), *mbodies = NULL;
	if (!mregids) {
		err = MICA_ENOMEM;
		goto out_mk;
	}
	const char *p2[] = {mregids};
	if ((err = mica_db_exec(db,
				"DELETE FROM push.queue WHERE kind = 1 AND regid = ANY($1::text[])"
				" RETURNING regid, body",
				1, p2, &res)) != 0)
		goto out_mk;
	long *prev = calloc(nm, sizeof(*prev));
	if (!prev) {
		err = MICA_ENOMEM;
		goto out_mk;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		long di = find_dev(t, mica_db_get(res, i, 0));
		uint8_t *b = NULL;
		size_t bl = 0;
		if (di < 0 || mica_db_get_bytea(res, i, 1, &b, &bl) != 0)
			continue;
		for (size_t k = 0; k < nm; k++)
			if (mk[k] == (size_t)di)
				prev[k] = marker_count(&x->d[di], b, bl);
		free(b);
	}
	PQclear(res);
	res = NULL;
	/* Sealing inside the transaction draws a nonce; a retried attempt
	 * draws another, which is harmless (nothing leaves the database). */
	for (size_t k = 0; k < nm && !err; k++) {
		struct dev *d = &x->d[mk[k]];
		char mid[PUSH_RANDOM_B64_LEN + 16];
		push_message_view v = {0};
		snprintf(mid, sizeof(mid), "deleted:%s", d->regid);
		v.msg_id = mid;
		v.type = "deleted_messages";
		v.app_id = x->app->app_id;
		v.package = x->app->package;
		v.notify_id = -1;
		v.sent_at_ms = x->now_ms;
		v.count = prev[k] + d->dropped;
		free(d->marker);
		d->marker = NULL;
		err = push_seal_message(d->key, d->regid, &v, &d->marker, &d->marker_len);
	}
	free(prev);
	if (err || !(mbodies = dev_array(x, mk, nm, 3))) {
		err = err ? err : MICA_ENOMEM;
		goto out_mk;
	}
	ms_text(exp, x->now_ms + PUSH_TTL_MAX_MS);
	const char *p3[] = {mregids, mbodies, x->app->app_id, exp};
	err = mica_db_exec(
		db,
		"INSERT INTO push.queue (regid, app_id, kind, expires_at, body) SELECT r,"
		" $3, 1, to_timestamp($4::float8), decode(h, 'hex') FROM"
		" unnest($1::text[], $2::text[]) AS t(r, h) RETURNING seq, regid",
		4, p3, &res);
	if (err == MICA_EEXISTS)
		err = MICA_ESERIALIZATION; /* a concurrent send made a marker: retry */
	for (int i = 0; !err && i < PQntuples(res); i++) {
		long di = find_dev(t, mica_db_get(res, i, 1));
		int64_t seq = 0;
		if (di >= 0 && mica_db_get_int64(res, i, 0, &seq) == 0)
			x->d[di].marker_seq = seq;
	}
out_mk:
	free(mregids);
	free(mbodies);
	free(mk);
out:
	PQclear(res);
	return err;
}

static int send_tx(mica_db *db, void *arg)
{
	struct tx *t = arg;
	struct send *x = t->x;
	const push_send_req *r = x->r;
	PGresult *res = NULL;
	char now[32], exp[32], jexp[32], cbt[16], nid[16];
	char *regids = NULL, *encs = NULL, *bodies = NULL;
	size_t *pass = NULL, np = 0;
	int err;

	x->queued = x->skipped = 0;
	for (size_t i = 0; i < x->n; i++) {
		x->d[i].seq = x->d[i].marker_seq = 0;
		x->d[i].dropped = 0;
	}
	ms_text(now, x->now_ms);
	ms_text(exp, x->now_ms + r->ttl_ms);
	ms_text(jexp, x->now_ms + PUSH_TTL_MAX_MS);
	snprintf(cbt, sizeof(cbt), "%d", r->callback_type);
	snprintf(nid, sizeof(nid), "%ld", r->notify_id);
	static const char *const target_name[] = {"regid", "alias", "topic", "multi_topic", "all"};
	const char *pm[] = {x->msg_id,
			    x->app->app_id,
			    r->jobkey,
			    target_name[r->target],
			    now,
			    exp,
			    r->callback_url,
			    r->callback_param,
			    r->callback_type >= 0 ? cbt : NULL};
	if ((err = mica_db_exec(
		     db,
		     "INSERT INTO push.message (msg_id, app_id, jobkey, target, created_at,"
		     " expires_at, callback_url, callback_param, callback_type) VALUES ($1,"
		     " $2, $3, $4, to_timestamp($5::float8), to_timestamp($6::float8), $7,"
		     " $8, $9::int)",
		     9, pm, NULL)) != 0)
		goto out;
	if (!(pass = calloc(t->m ? t->m : 1, sizeof(*pass)))) {
		err = MICA_ENOMEM;
		goto out;
	}
	if (!(regids = dev_array(x, t->idx, t->m, 0))) {
		err = MICA_ENOMEM;
		goto out;
	}
	/* The jobkey gate: a device that had this jobkey (unexpired) gets
	 * nothing. */
	if (r->jobkey && t->m) {
		const char *pj[] = {regids, x->app->app_id, r->jobkey, jexp, now};
		if ((err = mica_db_exec(
			     db,
			     "WITH j AS (INSERT INTO push.jobkey AS k (regid, app_id, jobkey,"
			     " expires_at) SELECT r, $2, $3, to_timestamp($4::float8) FROM"
			     " unnest($1::text[]) AS r ON CONFLICT (regid, app_id, jobkey)"
			     " DO UPDATE SET expires_at = excluded.expires_at WHERE"
			     " k.expires_at <= to_timestamp($5::float8) RETURNING regid)"
			     " SELECT regid FROM j",
			     5, pj, &res)) != 0)
			goto out;
		for (int i = 0; i < PQntuples(res); i++) {
			long di = find_dev(t, mica_db_get(res, i, 0));
			if (di >= 0)
				x->d[di].seq = -1; /* passes the gate */
		}
		PQclear(res);
		res = NULL;
		for (size_t k = 0; k < t->m; k++) {
			if (x->d[t->idx[k]].seq == -1) {
				x->d[t->idx[k]].seq = 0;
				pass[np++] = t->idx[k];
			} else {
				x->skipped++;
			}
		}
		free(regids);
		if (!(regids = dev_array(x, pass, np, 0))) {
			err = MICA_ENOMEM;
			goto out;
		}
	} else {
		memcpy(pass, t->idx, t->m * sizeof(*pass));
		np = t->m;
	}
	if (!np)
		goto stats;
	/* notify_id: the newer message replaces a queued, never-sent one. */
	if (r->notify_id >= 0) {
		const char *pn[] = {regids, x->app->app_id, nid};
		if ((err = mica_db_exec(
			     db,
			     "WITH d AS (DELETE FROM push.queue WHERE regid ="
			     " ANY($1::text[]) AND app_id = $2 AND notify_id = $3::int AND"
			     " kind = 0 AND NOT attempted RETURNING msg_id) SELECT msg_id,"
			     " count(*) FROM d GROUP BY msg_id",
			     3, pn, &res)) != 0 ||
		    (err = count_drops(db, x, res, 0, 1)) != 0)
			goto out;
		PQclear(res);
		res = NULL;
	}
	/* The queue rows, one statement; a device that re-registered since
	 * (another content key) or was deleted is skipped. */
	if (!(encs = dev_array(x, pass, np, 1)) || !(bodies = dev_array(x, pass, np, 2))) {
		err = MICA_ENOMEM;
		goto out;
	}
	const char *pq[] = {regids,    encs,	       bodies,
			    x->msg_id, x->app->app_id, r->notify_id >= 0 ? nid : NULL,
			    exp};
	if ((err = mica_db_exec(
		     db,
		     "INSERT INTO push.queue (regid, msg_id, app_id, notify_id, expires_at,"
		     " body) SELECT t.r, $4, $5, $6::int, to_timestamp($7::float8),"
		     " decode(t.h, 'hex') FROM unnest($1::text[], $2::text[], $3::text[])"
		     " WITH ORDINALITY AS t(r, e, h, i) JOIN push.registration g ON g.regid"
		     " = t.r AND g.content_key_enc = t.e ORDER BY t.i RETURNING seq, regid",
		     7, pq, &res)) != 0)
		goto out;
	for (int i = 0; i < PQntuples(res); i++) {
		long di = find_dev(t, mica_db_get(res, i, 1));
		int64_t seq = 0;
		if (di >= 0 && mica_db_get_int64(res, i, 0, &seq) == 0) {
			x->d[di].seq = seq;
			x->queued++;
		}
	}
	PQclear(res);
	res = NULL;
	if ((err = enforce_cap(db, t, regids)) != 0)
		goto out;
stats:;
	push_counts c = {.sent = x->queued, .invalid = x->invalid};
	err = push_stats_record(db, x->app->app_id, x->msg_id, x->now_ms, &c);
out:
	PQclear(res);
	free(pass);
	free(regids);
	free(encs);
	free(bodies);
	return err;
}

/* ---- wakes ------------------------------------------------------------------------ */

static int publish(mica_kv *kv, const char *buf, size_t len)
{
	const char *argv[] = {"PUBLISH", WAKE_CHANNEL, buf};
	const size_t lens[] = {7, sizeof(WAKE_CHANNEL) - 1, len};
	redisReply *rep = NULL;
	int err = mica_kv_command(kv, &rep, 3, argv, lens);
	if (rep)
		freeReplyObject(rep);
	return err;
}

/* Appends "W <regid> <seq> 0 <base64 body>" to |buf|. */
static int wake_line(char **buf, size_t *len, size_t *cap, const char *regid, int64_t seq,
		     const uint8_t *body, size_t body_len)
{
	char *b64 = NULL;
	size_t bl = 0;
	int err = mica_base64_encode_alloc(body, body_len, &b64, &bl);
	if (err)
		return err;
	size_t need = *len + strlen(regid) + bl + 48;
	if (need > *cap) {
		char *nb = realloc(*buf, need * 2);
		if (!nb) {
			free(b64);
			return MICA_ENOMEM;
		}
		*buf = nb;
		*cap = need * 2;
	}
	*len += (size_t)snprintf(*buf + *len, *cap - *len, "%sW %s %lld 0 %s", *len ? "\n" : "",
				 regid, (long long)seq, b64);
	free(b64);
	return 0;
}

/* Publishes the rows just committed, at most cfg->wake_batch lines (and
 * WAKE_BYTES_MAX bytes) per PUBLISH. A failure is logged, not returned: the
 * rows are durable and a broker re-reads queues when it (re)subscribes. */
static void wake(struct send *x)
{
	mica_kv *kv = mica_kv_thread();
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int lines = 0, err = 0, failed = 0;
	for (size_t i = 0; i < x->n && !err; i++) {
		struct dev *d = &x->d[i];
		for (int m = 0; m < 2 && !err; m++) {
			int64_t seq = m ? d->marker_seq : d->seq;
			if (seq <= 0)
				continue;
			err = m ? wake_line(&buf, &len, &cap, d->regid, seq, d->marker,
					    d->marker_len)
				: wake_line(&buf, &len, &cap, d->regid, seq, d->body, d->body_len);
			if (!err && (++lines >= x->s->cfg->wake_batch || len >= WAKE_BYTES_MAX)) {
				if (!kv || publish(kv, buf, len) != 0)
					failed++;
				len = 0;
				lines = 0;
			}
		}
	}
	if (!err && len && (!kv || publish(kv, buf, len) != 0))
		failed++;
	if (err || failed)
		MICA_LOG(MICA_LOG_WARN,
			 "push: waking the brokers for message %s failed (%s); they will find"
			 " the rows when they re-read the queues",
			 x->msg_id, err ? mica_strerror(err) : "PUBLISH failed");
	free(buf);
}

/* ---- the send ---------------------------------------------------------------------- */

static int new_msg_id(char out[PUSH_MSG_ID_LEN + 1])
{
	uint8_t raw[18];
	size_t len = 0;
	int err = mica_random(raw, sizeof(raw));
	if (!err)
		err = mica_base64url_encode(raw, sizeof(raw), out, PUSH_MSG_ID_LEN + 1, &len);
	if (!err && len != PUSH_MSG_ID_LEN)
		err = MICA_ECRYPTO;
	return err;
}

int push_send(push_service *s, const push_app *app, const push_send_req *r, push_send_result *out,
	      mica_problem *p)
{
	struct send x = {.s = s, .app = app, .r = r};
	struct tx t = {&x, NULL, 0};
	int err;

	memset(out, 0, sizeof(*out));
	x.now_ms = mica_clock_now_ms();
	if ((err = new_msg_id(x.msg_id)) != 0) {
		err = mica_problemf(p, 500, "internal_error", "making the message id failed");
		goto out;
	}
	if ((err = resolve(&x, p)) != 0 || (err = open_keys(&x, p)) != 0 ||
	    (err = seal_all(&x, p)) != 0)
		goto out;
	if (!(t.idx = calloc(x.n ? x.n : 1, sizeof(*t.idx)))) {
		err = mica_problemf(p, 500, "internal_error", "storing the message failed");
		goto out;
	}
	for (size_t i = 0; i < x.n; i++) {
		if (x.d[i].body)
			t.idx[t.m++] = i;
		else
			x.invalid++; /* its content key did not open */
	}
	if ((err = mica_db_tx(mica_db_thread(), MICA_DB_READ_COMMITTED, send_tx, &t)) != 0) {
		err = push_problem_dependency(p, err, "storing the message");
		goto out;
	}
	memcpy(out->msg_id, x.msg_id, sizeof(out->msg_id));
	out->queued = x.queued;
	out->invalid = x.invalid;
	out->skipped = x.skipped;
	wake(&x);
out:
	free(t.idx);
	devs_free(&x);
	return err;
}
