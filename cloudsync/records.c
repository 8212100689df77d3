/* records.c - record sync (docs/api/cloudsync.md): every writing
 * transaction of a user first locks the user's change sequence
 * (cloudsync.user_seq), so the user's writers run one after the other,
 * sequence order is commit order and a sync token never skips a change;
 * writes are judged against
 * the version the device last saw, and a losing put is kept as a conflict
 * record that every device pulls. Deletions go to the recycle bin; a
 * restore is a new version. Bodies are sealed per user and place (seal.c),
 * and resealed whenever the version they are bound to changes. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cloudsync/cloudsync.h"
#include "crypto.h"
#include "log.h"

enum { LIVE = 0, BINNED = 1, PURGED = 2 };

/* Columns every read of a record selects, in this order. */
#define RECORD_COLS                                                                                \
	"id, version, seq, state, body, conflict_of,"                                              \
	" (extract(epoch FROM modified_at) * 1000)::bigint,"                                       \
	" (extract(epoch FROM deleted_at) * 1000)::bigint"
enum { C_ID, C_VERSION, C_SEQ, C_STATE, C_BODY, C_CONFLICT_OF, C_MODIFIED, C_DELETED };

struct row {
	const char *id, *conflict_of;
	int64_t version, seq, state, modified_ms, deleted_ms;
};

static int row_read(const PGresult *res, int i, struct row *r)
{
	int err;
	*r = (struct row){.id = mica_db_get(res, i, C_ID),
			  .conflict_of = mica_db_get(res, i, C_CONFLICT_OF)};
	if ((err = mica_db_get_int64(res, i, C_VERSION, &r->version)) != 0 ||
	    (err = mica_db_get_int64(res, i, C_SEQ, &r->seq)) != 0 ||
	    (err = mica_db_get_int64(res, i, C_STATE, &r->state)) != 0 ||
	    (err = mica_db_get_int64(res, i, C_MODIFIED, &r->modified_ms)) != 0)
		return err;
	if (mica_db_get(res, i, C_DELETED))
		err = mica_db_get_int64(res, i, C_DELETED, &r->deleted_ms);
	return err;
}

static void i64(char out[24], int64_t v)
{
	snprintf(out, 24, "%" PRId64, v);
}

/* A record as the API shows it: the data when |key| is given and the record
 * is live, or binned and |binned| (the bin's own listing; a change shows a
 * deletion without its data). A body that does not open is named in the log
 * and fails the request (MICA_EAUTH): it was moved or tampered with at
 * rest. */
static int record_json(const uint8_t *key, bool binned, int64_t uid, const char *module,
		       const PGresult *res, int i, json_t **out)
{
	struct row r;
	json_t *o = NULL, *data = NULL;
	uint8_t *body = NULL;
	size_t len = 0;
	int err = row_read(res, i, &r);
	*out = NULL;
	if (err == 0 && key && (r.state == LIVE || (binned && r.state == BINNED))) {
		err = mica_db_get_bytea(res, i, C_BODY, &body, &len);
		if (err == 0)
			err = cs_open(key, uid, module, r.id, r.version, body, len, &data);
		if (err)
			MICA_LOG(MICA_LOG_ERROR,
				 "cloudsync: the body of record %s/%s of user %" PRId64
				 " does not open (%s): moved or altered at rest",
				 module, r.id, uid, mica_strerror(err));
		free(body);
	}
	char seq[24];
	i64(seq, r.seq);
	if (err == 0 && !(o = json_pack("{s:s,s:I,s:s,s:I,s:b}", "id", r.id, "version",
					(json_int_t)r.version, "token", seq, "modified_at",
					(json_int_t)r.modified_ms, "deleted", r.state != LIVE)))
		err = MICA_ENOMEM;
	if (err == 0) {
		if (data)
			json_object_set(o, "data", data);
		if (r.conflict_of)
			json_object_set_new(o, "conflict_of", json_string(r.conflict_of));
		if (r.state == BINNED)
			json_object_set_new(o, "deleted_at", json_integer(r.deleted_ms));
		*out = o;
		o = NULL;
	}
	json_decref(data);
	json_decref(o);
	return err;
}

struct batch_tx {
	int64_t uid;
	char uid_s[24];
	const char *module;
	cs_write *w;
	size_t n;
	bool confirm;
	int mass_pct, mass_min;
	const uint8_t *key;
	int64_t seq0, seq; /* the user's change number when locked, the last handed out */
	cs_result *res;
	mica_problem *p;
};

/* Locks the user's change sequence for the rest of the transaction: the
 * first statement of every writing transaction. Writers of one user then run
 * one after the other, each reading what the previous one committed (READ
 * COMMITTED takes a new snapshot per statement), so two devices creating the
 * same record cannot both find it absent, and change numbers are handed out
 * in commit order. The numbers are counted in t->seq and written back once,
 * by save_seq(): one version of the user's row per transaction, not one per
 * record. */
static int lock_user(mica_db *db, struct batch_tx *t)
{
	PGresult *res = NULL;
	const char *p[1] = {t->uid_s};
	int err = mica_db_exec(db,
			       "INSERT INTO cloudsync.user_seq (user_id, seq) VALUES ($1, 0)"
			       " ON CONFLICT (user_id) DO UPDATE SET seq = cloudsync.user_seq.seq"
			       " RETURNING seq",
			       1, p, &res);
	if (err == 0)
		err = mica_db_get_int64(res, 0, 0, &t->seq0);
	t->seq = t->seq0;
	PQclear(res);
	return err;
}

/* The user's next change number (the user is locked: lock_user()). */
static void next_seq(struct batch_tx *t, char seq[24], int64_t *n)
{
	*n = ++t->seq;
	i64(seq, *n);
}

/* Writes the last change number handed out back to the user's row. */
static int save_seq(mica_db *db, const struct batch_tx *t)
{
	char seq[24];
	const char *p[2] = {t->uid_s, seq};
	if (t->seq == t->seq0)
		return 0;
	i64(seq, t->seq);
	return mica_db_exec(db, "UPDATE cloudsync.user_seq SET seq = $2 WHERE user_id = $1", 2, p,
			    NULL);
}

/* The problem of a records operation that failed with |err|: a body that
 * does not open where it lies (MICA_EAUTH from cs_open) is 500
 * record_corrupt, anything else a dependency (cs_problem_dependency). */
static int records_problem(mica_problem *p, int err, const char *module, const char *what)
{
	if (err == MICA_EAUTH)
		return mica_problemf(p, 500, "record_corrupt",
				     "a stored record of %s does not open: it was altered at rest",
				     module);
	return cs_problem_dependency(p, err, what);
}

/* ---- writes ----------------------------------------------------------------------- */

void cs_results_cleanup(cs_result *res, size_t n)
{
	for (size_t i = 0; res && i < n; i++) {
		json_decref(res[i].server);
		res[i] = (cs_result){0};
	}
}

void cs_writes_cleanup(cs_write *w, size_t n)
{
	for (size_t i = 0; w && i < n; i++) {
		if (w[i].json) {
			mica_wipe(w[i].json, w[i].json_len);
			free(w[i].json);
		}
		w[i] = (cs_write){0};
	}
}

/* Stores |body| (|len| bytes) as the record's new state. */
static int store(mica_db *db, const struct batch_tx *t, const char *id, int64_t version,
		 const char *seq, int state, const uint8_t *body, size_t len,
		 const char *conflict_of)
{
	char v[24], st[2] = {(char)('0' + state), 0};
	char *hex = body ? mica_db_bytea_encode(body, len) : NULL;
	if (body && !hex)
		return MICA_ENOMEM;
	i64(v, version);
	const char *p[8] = {t->uid_s, t->module, id, v, seq, st, hex, conflict_of};
	int err = mica_db_exec(
		db,
		"INSERT INTO cloudsync.record (user_id, module, id, version, seq, state, body,"
		" conflict_of, deleted_at, modified_at)"
		" VALUES ($1, $2, $3, $4, $5, $6::smallint, $7, $8, CASE WHEN $6::smallint = 1 THEN now() END,"
		" now())"
		" ON CONFLICT (user_id, module, id) DO UPDATE SET version = EXCLUDED.version,"
		" seq = EXCLUDED.seq, state = EXCLUDED.state, body = EXCLUDED.body,"
		" conflict_of = EXCLUDED.conflict_of, deleted_at = EXCLUDED.deleted_at,"
		" modified_at = EXCLUDED.modified_at",
		8, p, NULL);
	free(hex);
	return err;
}

/* Seals |json| for (id, version) and stores it as a new change. */
static int put_sealed(mica_db *db, struct batch_tx *t, const char *id, int64_t version, int state,
		      const char *json, size_t len, const char *conflict_of, int64_t *seq_out)
{
	uint8_t *body = NULL;
	size_t blen = 0;
	char seq[24];
	next_seq(t, seq, seq_out);
	int err = cs_seal(t->key, t->uid, t->module, id, version, json, len, &body, &blen);
	if (err == 0)
		err = store(db, t, id, version, seq, state, body, blen, conflict_of);
	free(body);
	return err;
}

/* The JSON text of the body of |r| (row 0 of |res|), to seal again for the
 * record's next version: a body is bound to its version. */
static int body_json(const struct batch_tx *t, const PGresult *res, const struct row *r,
		     char **json, size_t *len)
{
	json_t *data = NULL;
	uint8_t *body = NULL;
	size_t blen = 0;
	int err = mica_db_get_bytea(res, 0, C_BODY, &body, &blen);
	*json = NULL;
	if (err == 0)
		err = cs_open(t->key, t->uid, t->module, r->id, r->version, body, blen, &data);
	if (err == 0 && !(*json = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY)))
		err = MICA_ENOMEM;
	if (err == 0)
		*len = strlen(*json);
	json_decref(data);
	free(body);
	return err;
}

static void free_json(char *json, size_t len)
{
	if (json) {
		mica_wipe(json, len);
		free(json);
	}
}

/* A losing put: its copy becomes a new record that points at the one it
 * lost to, so every device pulls it and its user can merge. */
static int keep_conflict(mica_db *db, struct batch_tx *t, const cs_write *w, cs_result *r)
{
	uint8_t rnd[12];
	int64_t seq;
	int err = mica_random(rnd, sizeof(rnd));
	memcpy(r->conflict_id, "conflict-", 9);
	if (err == 0)
		err = mica_hex_encode(rnd, sizeof(rnd), r->conflict_id + 9,
				      sizeof(r->conflict_id) - 9);
	if (err == 0)
		err = put_sealed(db, t, r->conflict_id, 1, LIVE, w->json, w->json_len, w->id, &seq);
	return err;
}

static int apply_one(mica_db *db, struct batch_tx *t, const cs_write *w, cs_result *r)
{
	PGresult *res = NULL;
	const char *p[3] = {t->uid_s, t->module, w->id};
	struct row cur = {0};
	int err = mica_db_exec(db,
			       "SELECT " RECORD_COLS " FROM cloudsync.record"
			       " WHERE user_id = $1 AND module = $2 AND id = $3 FOR UPDATE",
			       3, p, &res);
	bool exists = err == 0 && PQntuples(res) == 1;
	if (exists)
		err = row_read(res, 0, &cur);
	if (err)
		goto out;
	bool live = exists && cur.state == LIVE;
	/* An unconditional write is one based on whatever is live now. */
	bool has_if = w->unconditional ? live : w->has_if_match;
	int64_t if_match = w->unconditional ? cur.version : w->if_match;
	if (w->deleted) {
		char *json = NULL;
		size_t len = 0;
		if (!w->unconditional && !w->has_if_match) {
			r->status = CS_PRECONDITION;
		} else if (!live) {
			r->status = CS_NOT_FOUND;
		} else if (cur.version != if_match) {
			r->status = CS_CONFLICT;
			err = record_json(t->key, false, t->uid, t->module, res, 0, &r->server);
		} else if ((err = body_json(t, res, &cur, &json, &len)) == 0) {
			r->status = CS_OK;
			r->version = cur.version + 1;
			err = put_sealed(db, t, w->id, r->version, BINNED, json, len,
					 cur.conflict_of, &r->seq);
		}
		free_json(json, len);
		goto out;
	}
	bool conflict = has_if ? !live || cur.version != if_match : live;
	if (conflict) {
		r->status = CS_CONFLICT;
		if (exists)
			err = record_json(t->key, false, t->uid, t->module, res, 0, &r->server);
		else if (!(r->server = json_pack("{s:s,s:b}", "id", w->id, "deleted", 1)))
			err = MICA_ENOMEM;
		if (err == 0 && !w->no_copy)
			err = keep_conflict(db, t, w, r);
		goto out;
	}
	r->status = CS_OK;
	r->created = !live;
	r->version = exists ? cur.version + 1 : 1;
	err = put_sealed(db, t, w->id, r->version, LIVE, w->json, w->json_len, NULL, &r->seq);
out:
	PQclear(res);
	return err;
}

/* The mass-deletion guard: a batch that would delete more than mass_pct %
 * of the live collection (and at least mass_min records) needs |confirm|. */
static int guard(mica_db *db, const struct batch_tx *t)
{
	size_t deleting = 0;
	int64_t live = 0;
	PGresult *res = NULL;
	for (size_t i = 0; i < t->n; i++)
		deleting += t->w[i].deleted;
	if (t->confirm || deleting < (size_t)t->mass_min)
		return 0;
	const char *p[2] = {t->uid_s, t->module};
	int err = mica_db_exec(db,
			       "SELECT count(*) FROM cloudsync.record"
			       " WHERE user_id = $1 AND module = $2 AND state = 0",
			       2, p, &res);
	if (err == 0)
		err = mica_db_get_int64(res, 0, 0, &live);
	PQclear(res);
	if (err || (int64_t)deleting * 100 <= live * t->mass_pct)
		return err;
	mica_problemf(t->p, 409, "mass_deletion_unconfirmed",
		      "this sync deletes %zu of the %" PRId64 " records of %s (more than %d %%):"
		      " send it again with confirm_mass_delete true if the user meant it",
		      deleting, live, t->module, t->mass_pct);
	mica_problem_set_extra(t->p, "deleting", json_integer((json_int_t)deleting));
	mica_problem_set_extra(t->p, "records", json_integer(live));
	return MICA_EINVAL;
}

static int batch_fn(mica_db *db, void *arg)
{
	struct batch_tx *t = arg;
	int err;
	cs_results_cleanup(t->res, t->n); /* a retried transaction starts over */
	if ((err = lock_user(db, t)) != 0 || (err = guard(db, t)) != 0)
		return err;
	for (size_t i = 0; err == 0 && i < t->n; i++)
		err = apply_one(db, t, &t->w[i], &t->res[i]);
	return err ? err : save_seq(db, t);
}

int cs_write_batch(cs_service *s, int64_t user_id, const char *module, cs_write *w, size_t n,
		   bool confirm, cs_result *res, mica_problem *p)
{
	uint8_t key[CS_KEY_LEN];
	mica_db *db = mica_db_thread();
	struct batch_tx t = {.uid = user_id,
			     .module = module,
			     .w = w,
			     .n = n,
			     .confirm = confirm,
			     .mass_pct = s->cfg->mass_delete_pct,
			     .mass_min = s->cfg->mass_delete_min,
			     .key = key,
			     .res = res,
			     .p = p};
	int err = db ? cs_user_key(s, db, user_id, key) : MICA_EDBCONN;
	i64(t.uid_s, user_id);
	memset(res, 0, n * sizeof(*res));
	if (err)
		return cs_problem_dependency(p, err, "loading the user's key");
	err = mica_db_tx(db, MICA_DB_READ_COMMITTED, batch_fn, &t);
	mica_wipe(key, sizeof(key));
	if (err && p->status == 409)
		return err;
	if (err) {
		cs_results_cleanup(res, n);
		return records_problem(p, err, module, "writing records");
	}
	return 0;
}

/* ---- reads ------------------------------------------------------------------------ */

/* Which bodies a read opens: none (ids and versions only), the live
 * records', or the binned records' too (the bin's listing). */
enum bodies { NO_BODIES, LIVE_BODIES, BIN_BODIES };

/* Runs a read of whole records and turns each row into its JSON, opening
 * the bodies |open| says with the user's key (loaded only when a row needs
 * it). */
static int read_records(cs_service *s, int64_t uid, const char *module, enum bodies open,
			const char *sql, int nparams, const char *const *params, json_t *list,
			int max, bool *more, mica_problem *p)
{
	bool binned = open == BIN_BODIES;
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	uint8_t key[CS_KEY_LEN];
	bool have_key = false;
	int err = db ? mica_db_exec(db, sql, nparams, params, &res) : MICA_EDBCONN;
	int rows = err ? 0 : PQntuples(res);
	if (more)
		*more = rows > max;
	for (int i = 0; err == 0 && i < rows && i < max; i++) {
		json_t *o = NULL;
		if (!have_key && open != NO_BODIES && mica_db_get(res, i, C_BODY) &&
		    (binned || strcmp(mica_db_get(res, i, C_STATE), "0") == 0)) {
			if ((err = cs_user_key(s, db, uid, key)) != 0)
				break;
			have_key = true;
		}
		if ((err = record_json(have_key ? key : NULL, binned, uid, module, res, i, &o)) ==
			    0 &&
		    json_array_append_new(list, o) != 0)
			err = MICA_ENOMEM;
	}
	if (have_key)
		mica_wipe(key, sizeof(key));
	PQclear(res);
	return err ? records_problem(p, err, module, "reading records") : 0;
}

int cs_changes(cs_service *s, int64_t user_id, const char *module, int64_t since, int limit,
	       json_t **out, mica_problem *p)
{
	char uid[24], from[24], lim[24];
	json_t *list = json_array();
	bool more = false;
	int err;
	*out = NULL;
	if (!list)
		return mica_problemf(p, 500, "internal_error", "out of memory");
	i64(uid, user_id);
	i64(from, since);
	i64(lim, (int64_t)limit + 1);
	const char *params[4] = {uid, module, from, lim};
	err = read_records(s, user_id, module, LIVE_BODIES,
			   "SELECT " RECORD_COLS " FROM cloudsync.record WHERE user_id = $1"
			   " AND module = $2 AND seq > $3 ORDER BY seq LIMIT $4",
			   4, params, list, limit, &more, p);
	if (err) {
		json_decref(list);
		return err;
	}
	size_t n = json_array_size(list);
	const char *last =
		n ? json_string_value(json_object_get(json_array_get(list, n - 1), "token")) : from;
	*out = json_pack("{s:o,s:s,s:b}", "changes", list, "token", last, "more", more);
	return *out ? 0 : mica_problemf(p, 500, "internal_error", "out of memory");
}

int cs_record_get(cs_service *s, int64_t user_id, const char *module, const char *id, json_t **out,
		  mica_problem *p)
{
	char uid[24];
	json_t *list = json_array();
	int err;
	*out = NULL;
	if (!list)
		return mica_problemf(p, 500, "internal_error", "out of memory");
	i64(uid, user_id);
	const char *params[3] = {uid, module, id};
	err = read_records(s, user_id, module, LIVE_BODIES,
			   "SELECT " RECORD_COLS " FROM cloudsync.record WHERE user_id = $1"
			   " AND module = $2 AND id = $3 AND state = 0",
			   3, params, list, 1, NULL, p);
	if (err == 0 && json_array_size(list) == 0)
		err = mica_problemf(p, 404, "record_not_found", "%s has no record %s", module, id);
	if (err == 0)
		*out = json_incref(json_array_get(list, 0));
	json_decref(list);
	return err;
}

int cs_module_token(cs_service *s, int64_t user_id, const char *module, int64_t *token,
		    mica_problem *p)
{
	char uid[24];
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	(void)s;
	*token = 0;
	i64(uid, user_id);
	const char *params[2] = {uid, module};
	int err = db ? mica_db_exec(db,
				    "SELECT coalesce(max(seq), 0) FROM cloudsync.record"
				    " WHERE user_id = $1 AND module = $2",
				    2, params, &res)
		     : MICA_EDBCONN;
	if (err == 0)
		err = mica_db_get_int64(res, 0, 0, token);
	PQclear(res);
	return err ? cs_problem_dependency(p, err, "reading the collection's last change") : 0;
}

int cs_records_live(cs_service *s, int64_t user_id, const char *module, const char *const *ids,
		    size_t n, bool with_data, json_t **out, int64_t *token, mica_problem *p)
{
	char uid[24], *arr = ids ? mica_db_text_array(ids, n) : NULL;
	json_t *list = json_array();
	int err = list && (!ids || arr) ? 0 : MICA_ENOMEM;
	*out = NULL;
	*token = 0;
	i64(uid, user_id);
	const char *params[3] = {uid, module, arr};
	if (err == 0)
		err = read_records(s, user_id, module, with_data ? LIVE_BODIES : NO_BODIES,
				   "SELECT " RECORD_COLS " FROM cloudsync.record WHERE user_id = $1"
				   " AND module = $2 AND state = 0"
				   " AND ($3::text[] IS NULL OR id = ANY ($3::text[])) ORDER BY id",
				   3, params, list, INT32_MAX, NULL, p);
	else
		mica_problemf(p, 500, "internal_error", "out of memory");
	if (err == 0)
		err = cs_module_token(s, user_id, module, token, p);
	free(arr);
	if (err) {
		json_decref(list);
		return err;
	}
	*out = list;
	return 0;
}

/* ---- the recycle bin ------------------------------------------------------------------ */

int cs_bin_list(cs_service *s, int64_t user_id, const char *module, json_t **out, mica_problem *p)
{
	char uid[24];
	json_t *list = json_array();
	int err;
	*out = NULL;
	if (!list)
		return mica_problemf(p, 500, "internal_error", "out of memory");
	i64(uid, user_id);
	const char *params[2] = {uid, module};
	err = read_records(s, user_id, module, BIN_BODIES,
			   "SELECT " RECORD_COLS " FROM cloudsync.record WHERE user_id = $1"
			   " AND module = $2 AND state = 1 ORDER BY deleted_at DESC, id",
			   2, params, list, INT32_MAX, NULL, p);
	int64_t keep_ms = (int64_t)s->cfg->bin_days * 86400000;
	for (size_t i = 0; err == 0 && i < json_array_size(list); i++) {
		json_t *o = json_array_get(list, i);
		json_int_t at = json_integer_value(json_object_get(o, "deleted_at"));
		json_object_set_new(o, "purge_at", json_integer(at + keep_ms));
	}
	if (err == 0 &&
	    !(*out = json_pack("{s:o,s:i}", "records", list, "keep_days", s->cfg->bin_days)))
		err = mica_problemf(p, 500, "internal_error", "out of memory");
	if (err && !*out)
		json_decref(list);
	return err;
}

struct restore_tx {
	struct batch_tx t;
	const char *id;
	bool found;
	int64_t version, seq;
};

static int restore_fn(mica_db *db, void *arg)
{
	struct restore_tx *r = arg;
	PGresult *res = NULL;
	struct row cur;
	char *json = NULL;
	size_t len = 0;
	const char *p[3] = {r->t.uid_s, r->t.module, r->id};
	int err = lock_user(db, &r->t);
	if (err == 0)
		err = mica_db_exec(db,
				   "SELECT " RECORD_COLS " FROM cloudsync.record WHERE user_id = $1"
				   " AND module = $2 AND id = $3 AND state = 1 FOR UPDATE",
				   3, p, &res);
	r->found = err == 0 && PQntuples(res) == 1;
	if (err == 0 && r->found && (err = row_read(res, 0, &cur)) == 0 &&
	    (err = body_json(&r->t, res, &cur, &json, &len)) == 0) {
		r->version = cur.version + 1;
		err = put_sealed(db, &r->t, r->id, r->version, LIVE, json, len, cur.conflict_of,
				 &r->seq);
	}
	if (err == 0)
		err = save_seq(db, &r->t);
	free_json(json, len);
	PQclear(res);
	return err;
}

int cs_bin_restore(cs_service *s, int64_t user_id, const char *module, const char *id, json_t **out,
		   mica_problem *p)
{
	uint8_t key[CS_KEY_LEN];
	mica_db *db = mica_db_thread();
	struct restore_tx r = {.t = {.uid = user_id, .module = module, .key = key}, .id = id};
	int err = db ? cs_user_key(s, db, user_id, key) : MICA_EDBCONN;
	*out = NULL;
	i64(r.t.uid_s, user_id);
	if (err == 0)
		err = mica_db_tx(db, MICA_DB_READ_COMMITTED, restore_fn, &r);
	mica_wipe(key, sizeof(key));
	if (err)
		return records_problem(p, err, module, "restoring a record");
	if (!r.found)
		return mica_problemf(p, 404, "record_not_found",
				     "the recycle bin of %s has no record %s", module, id);
	char seq[24];
	i64(seq, r.seq);
	*out = json_pack("{s:s,s:I,s:s}", "id", id, "version", (json_int_t)r.version, "token", seq);
	return *out ? 0 : mica_problemf(p, 500, "internal_error", "out of memory");
}

int cs_bin_purge(cs_service *s, int64_t user_id, const char *module, const char *id, long *n,
		 mica_problem *p)
{
	mica_db *db = mica_db_thread();
	PGresult *res = NULL;
	char uid[24];
	(void)s;
	*n = 0;
	i64(uid, user_id);
	const char *params[3] = {uid, module, id};
	int err = db ? mica_db_exec(db,
				    "UPDATE cloudsync.record SET state = 2, body = NULL,"
				    " deleted_at = NULL WHERE user_id = $1 AND module = $2"
				    " AND state = 1 AND ($3::text IS NULL OR id = $3) RETURNING 1",
				    3, params, &res)
		     : MICA_EDBCONN;
	if (err == 0)
		*n = PQntuples(res);
	PQclear(res);
	if (err)
		return cs_problem_dependency(p, err, "emptying the recycle bin");
	if (id && *n == 0)
		return mica_problemf(p, 404, "record_not_found",
				     "the recycle bin of %s has no record %s", module, id);
	return 0;
}
