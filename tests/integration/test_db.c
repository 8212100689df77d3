/* test_db.c - lib/db against the real PostgreSQL of tests/run: parameters are
 * data, reconnect after a server restart, transaction retry on serialization
 * failure and lost connections, SQLSTATE mapping, the statement cache,
 * LISTEN/NOTIFY and per-thread handles. Each test works in its own schema
 * named after its pid (Check forks one process per test).
 */
#include <check.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "err.h"
#include "log.h"
#include "tests/check_main.h"

static const char *env(const char *name)
{
	const char *v = getenv(name);
	if (!v || !*v)
		ck_abort_msg("environment variable %s is not set (run through tests/run)", name);
	return v;
}

static mica_db *open_db(void)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, env("MICA_PG_CONNINFO"));
	ck_assert_msg(rc == 0, "mica_db_open: %s: %s", mica_strerror(rc), mica_db_errmsg(NULL));
	return db;
}

static void exec_ok(mica_db *db, const char *sql)
{
	int rc = mica_db_exec(db, sql, 0, NULL, NULL);
	ck_assert_msg(rc == 0, "%s: %s (%s)", sql, mica_strerror(rc), mica_db_errmsg(db));
}

static void use_schema_path(mica_db *db);

/* The test's own schema, set as search_path. Identifiers cannot be
 * parameters; this name is built from our pid, never from input. */
static void use_schema(mica_db *db)
{
	char sql[128];
	snprintf(sql, sizeof(sql), "CREATE SCHEMA t_db_%d", (int)getpid());
	exec_ok(db, sql);
	use_schema_path(db);
}

static void use_schema_path(mica_db *db)
{
	char sql[128];
	snprintf(sql, sizeof(sql), "SET search_path TO t_db_%d", (int)getpid());
	exec_ok(db, sql);
}

static void drop_schema(mica_db *db)
{
	char sql[128];
	snprintf(sql, sizeof(sql), "DROP SCHEMA t_db_%d CASCADE", (int)getpid());
	exec_ok(db, sql);
}

static int64_t query_int(mica_db *db, const char *sql, int n, const char *const *params)
{
	PGresult *res = NULL;
	int rc = mica_db_exec(db, sql, n, params, &res);
	ck_assert_msg(rc == 0, "%s: %s (%s)", sql, mica_strerror(rc), mica_db_errmsg(db));
	int64_t v = 0;
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &v), 0);
	PQclear(res);
	return v;
}

static void run_restart(const char *var)
{
	int st = system(env(var));
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (status %d)",
		      var, st);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- parameters are data ------------------------------------------- */

/* A password with quotes and backslashes survives libpq's conninfo parsing:
 * the superuser's own password, re-quoted, still logs in. */
START_TEST(conninfo_with_password_quotes)
{
	char *c = mica_db_conninfo_with_password("dbname=x", "a'b\\c");
	ck_assert_str_eq(c, "dbname=x password='a\\'b\\\\c'");
	free(c);
	c = mica_db_conninfo_with_password("dbname=x", "");
	ck_assert_str_eq(c, "dbname=x");
	free(c);
	PQconninfoOption *opts = PQconninfoParse("dbname=x password='a\\'b\\\\c'", NULL);
	ck_assert_ptr_nonnull(opts);
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0)
			ck_assert_str_eq(o->val, "a'b\\c");
	PQconninfoFree(opts);
}
END_TEST

START_TEST(params_are_data)
{
	mica_db *db = open_db();
	use_schema(db);
	exec_ok(db, "CREATE TABLE x (id serial PRIMARY KEY, v text)");
	static const char *const evil[] = {
		"'); DROP TABLE x; --",
		"' OR '1'='1",
		"\\'; SELECT pg_sleep(10); --",
		"$1 $2 \"quoted\" /* comment */ E'\\x00'",
		"",
		"\xc3\xbc"
		"n"
		"\xc3\xaf"
		"c"
		"\xc3\xb6"
		"d"
		"\xc3\xa9 \xe2\x98\x83",
	};
	for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++) {
		const char *p[1] = {evil[i]};
		PGresult *res = NULL;
		int rc = mica_db_exec(db, "INSERT INTO x (v) VALUES ($1) RETURNING v", 1, p, &res);
		ck_assert_msg(rc == 0, "insert #%zu: %s", i, mica_db_errmsg(db));
		ck_assert_str_eq(mica_db_get(res, 0, 0), evil[i]);
		PQclear(res);
		rc = mica_db_exec(db, "SELECT v FROM x WHERE v = $1", 1, p, &res);
		ck_assert_int_eq(rc, 0);
		ck_assert_int_eq(PQntuples(res), 1);
		ck_assert_str_eq(mica_db_get(res, 0, 0), evil[i]);
		PQclear(res);
	}
	/* SQL NULL as a NULL element. */
	const char *pnull[1] = {NULL};
	PGresult *res = NULL;
	ck_assert_int_eq(
		mica_db_exec(db, "INSERT INTO x (v) VALUES ($1) RETURNING v", 1, pnull, &res), 0);
	ck_assert_ptr_null(mica_db_get(res, 0, 0));
	PQclear(res);
	/* The table survived and holds exactly what we put in. */
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM x", 0, NULL), 7);
	const char *tautology[1] = {"' OR '1'='1' --"};
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM x WHERE v = $1", 1, tautology), 0);
	drop_schema(db);
	mica_db_close(&db);
	mica_db_close(&db); /* safe twice */
	ck_assert_ptr_null(db);
}
END_TEST

/* ---- errors ---------------------------------------------------------- */

START_TEST(error_mapping)
{
	mica_db *db = open_db();
	use_schema(db);
	exec_ok(db, "CREATE TABLE u (k text PRIMARY KEY)");
	const char *p[1] = {"alice"};
	ck_assert_int_eq(mica_db_exec(db, "INSERT INTO u VALUES ($1)", 1, p, NULL), 0);
	ck_assert_int_eq(mica_db_exec(db, "INSERT INTO u VALUES ($1)", 1, p, NULL), MICA_EEXISTS);
	ck_assert_str_eq(mica_db_sqlstate(db), "23505");
	ck_assert_ptr_nonnull(strstr(mica_db_errmsg(db), "duplicate key"));

	const char *notint[1] = {"twelve"};
	PGresult *res = (PGresult *)1;
	ck_assert_int_eq(mica_db_exec(db, "SELECT $1::int", 1, notint, &res), MICA_EINVAL);
	ck_assert_ptr_null(res);
	ck_assert_str_eq(mica_db_sqlstate(db), "22P02");

	ck_assert_int_eq(mica_db_exec(db, "SELEKT 1", 0, NULL, NULL), MICA_EDB);
	ck_assert_str_eq(mica_db_sqlstate(db), "42601");

	/* Fewer values than placeholders: refused, and the connection lives. */
	ck_assert_int_eq(mica_db_exec(db, "SELECT $1::int + $2::int", 1, notint, NULL),
			 MICA_EINVAL);
	ck_assert_str_eq(mica_db_sqlstate(db), "08P01");

	/* A success clears the last error. */
	ck_assert_int_eq(mica_db_exec(db, "SELECT 1", 0, NULL, NULL), 0);
	ck_assert_str_eq(mica_db_sqlstate(db), "");

	ck_assert_int_eq(mica_db_exec(db, "SELECT $1::text", 1, NULL, NULL), MICA_EINVAL);
	ck_assert_int_eq(mica_db_exec(NULL, "SELECT 1", 0, NULL, NULL), MICA_EINVAL);
	drop_schema(db);
	mica_db_close(&db);
}
END_TEST

START_TEST(unreachable_server)
{
	mica_db *db = (mica_db *)1;
	ck_assert_int_eq(mica_db_open(&db, "host=127.0.0.1 port=1 dbname=x connect_timeout=2"),
			 MICA_EDBCONN);
	ck_assert_ptr_null(db);
	ck_assert_msg(mica_db_errmsg(NULL)[0] != '\0', "no reason given for the failed open");

	/* A thread handle is created without connecting; its calls fail. */
	ck_assert_int_eq(mica_db_global_init("host=127.0.0.1 port=1 connect_timeout=2"), 0);
	ck_assert_int_eq(mica_db_global_init("host=127.0.0.1 port=1"), MICA_ESTATE);
	mica_db *t = mica_db_thread();
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(mica_db_exec(t, "SELECT 1", 0, NULL, NULL), MICA_EDBCONN);
	mica_db_global_cleanup();
	mica_db_global_cleanup();
	ck_assert_ptr_null(mica_db_thread());
}
END_TEST

/* ---- reconnect ------------------------------------------------------- */

struct note {
	char channel[64];
	char payload[64];
	int n;
};

static void on_note(const char *channel, const char *payload, void *arg)
{
	struct note *n = arg;
	snprintf(n->channel, sizeof(n->channel), "%s", channel);
	snprintf(n->payload, sizeof(n->payload), "%s", payload);
	n->n++;
}

START_TEST(reconnect_after_restart)
{
	mica_db *db = open_db();
	ck_assert_int_eq(mica_db_global_init(env("MICA_PG_CONNINFO")), 0);
	mica_db *t = mica_db_thread();
	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_eq(mica_db_thread(), t);

	char channel[32];
	snprintf(channel, sizeof(channel), "t_db_%d", (int)getpid());
	ck_assert_int_eq(mica_db_listen(db, channel), 0);
	const char *one[1] = {"41"};
	ck_assert_int_eq(query_int(db, "SELECT $1::int + 1", 1, one), 42);
	int64_t pid_before = query_int(db, "SELECT pg_backend_pid()", 0, NULL);
	ck_assert_int_eq(query_int(t, "SELECT $1::int + 1", 1, one), 42);

	run_restart("MICA_PG_RESTART");

	/* Same handles, next call: reconnects, re-prepares, answers. */
	ck_assert_int_eq(query_int(db, "SELECT $1::int + 1", 1, one), 42);
	ck_assert_int_ne(query_int(db, "SELECT pg_backend_pid()", 0, NULL), pid_before);
	ck_assert_int_eq(query_int(t, "SELECT $1::int + 1", 1, one), 42);

	/* The LISTEN was re-issued: first a wake-up for the reconnect, then a
	 * real notification from another connection. */
	struct note n = {0};
	ck_assert_int_eq(mica_db_wait_notify(db, 0, on_note, &n), 0);
	ck_assert_int_eq(n.n, 0);
	mica_db *other = open_db();
	const char *p[2] = {channel, "after restart"};
	ck_assert_int_eq(mica_db_exec(other, "SELECT pg_notify($1, $2)", 2, p, NULL), 0);
	ck_assert_int_eq(mica_db_wait_notify(db, 10000, on_note, &n), 0);
	ck_assert_int_eq(n.n, 1);
	ck_assert_str_eq(n.payload, "after restart");
	mica_db_close(&other);
	mica_db_global_cleanup();
	mica_db_close(&db);
}
END_TEST

/* ---- transactions ---------------------------------------------------- */

/* Write skew between two SERIALIZABLE transactions: each reads who is on
 * call and takes a different doctor off call. The concurrent one (on
 * |other|) commits first during the first |conflicts| attempts, so ours must
 * fail with 40001 and be retried. */
struct skew {
	mica_db *other;
	int calls;
	int conflicts;
};

static int other_tx(mica_db *db, void *arg)
{
	(void)arg;
	PGresult *res = NULL;
	int rc = mica_db_exec(db, "SELECT count(*) FROM oncall WHERE on_call", 0, NULL, &res);
	PQclear(res);
	if (rc == 0)
		rc = mica_db_exec(db, "UPDATE oncall SET on_call = NOT on_call WHERE name = 'bob'",
				  0, NULL, NULL);
	return rc;
}

static int skew_tx(mica_db *db, void *arg)
{
	struct skew *s = arg;
	s->calls++;
	PGresult *res = NULL;
	int rc = mica_db_exec(db, "SELECT count(*) FROM oncall WHERE on_call", 0, NULL, &res);
	PQclear(res);
	if (rc)
		return rc;
	if (s->calls <= s->conflicts) {
		int orc = mica_db_tx(s->other, MICA_DB_SERIALIZABLE, other_tx, NULL);
		ck_assert_msg(orc == 0, "concurrent tx: %s", mica_strerror(orc));
	}
	return mica_db_exec(db, "UPDATE oncall SET on_call = false WHERE name = 'alice'", 0, NULL,
			    NULL);
}

static void skew_setup(mica_db *db, mica_db *other)
{
	use_schema(db);
	exec_ok(db, "CREATE TABLE oncall (name text PRIMARY KEY, on_call bool NOT NULL)");
	exec_ok(db, "INSERT INTO oncall VALUES ('alice', true), ('bob', true)");
	char sql[128];
	snprintf(sql, sizeof(sql), "SET search_path TO t_db_%d", (int)getpid());
	exec_ok(other, sql);
}

START_TEST(serialization_failure_is_retried)
{
	mica_db *db = open_db(), *other = open_db();
	skew_setup(db, other);
	struct skew s = {.other = other, .conflicts = 1};
	int rc = mica_db_tx(db, MICA_DB_SERIALIZABLE, skew_tx, &s);
	ck_assert_msg(rc == 0, "tx: %s (%s)", mica_strerror(rc), mica_db_errmsg(db));
	ck_assert_int_eq(s.calls, 2);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM oncall WHERE on_call", 0, NULL), 0);
	drop_schema(db);
	mica_db_close(&other);
	mica_db_close(&db);
}
END_TEST

START_TEST(serialization_retries_run_out)
{
	mica_db *db = open_db(), *other = open_db();
	skew_setup(db, other);
	struct skew s = {.other = other, .conflicts = INT_MAX};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_SERIALIZABLE, skew_tx, &s), MICA_ESERIALIZATION);
	ck_assert_int_eq(s.calls, MICA_DB_TX_MAX_ATTEMPTS);
	/* None of our attempts committed: alice is still on call. */
	ck_assert_int_eq(query_int(db,
				   "SELECT count(*) FROM oncall WHERE on_call AND name = 'alice'",
				   0, NULL),
			 1);
	ck_assert_int_eq(mica_db_in_transaction(db), 0);
	drop_schema(db);
	mica_db_close(&other);
	mica_db_close(&db);
}
END_TEST

struct ins {
	int calls;
	int fail_with;	 /* returned after the insert */
	int ignore_dup;	 /* insert a duplicate, ignore the error, return 0 */
	mica_db *killer; /* terminates our backend on the first attempt */
};

static int ins_tx(mica_db *db, void *arg)
{
	struct ins *c = arg;
	c->calls++;
	/* Session settings do not survive a reconnect; set the schema per
	 * transaction (and as a parameter, like any value). */
	char schema[32];
	snprintf(schema, sizeof(schema), "t_db_%d", (int)getpid());
	const char *sp[1] = {schema};
	int rc = mica_db_exec(db, "SELECT set_config('search_path', $1, true)", 1, sp, NULL);
	if (rc)
		return rc;
	const char *p[1] = {"row"};
	rc = mica_db_exec(db, "INSERT INTO t (k) VALUES ($1)", 1, p, NULL);
	if (rc)
		return rc;
	if (c->ignore_dup) {
		rc = mica_db_exec(db, "INSERT INTO t (k) VALUES ($1)", 1, p, NULL);
		ck_assert_int_eq(rc, MICA_EEXISTS);
		return 0;
	}
	if (c->killer && c->calls == 1) {
		char pid[24];
		snprintf(pid, sizeof(pid), "%lld",
			 (long long)query_int(db, "SELECT pg_backend_pid()", 0, NULL));
		const char *kp[1] = {pid};
		ck_assert_int_eq(
			query_int(c->killer,
				  "SELECT count(*) FROM pg_terminate_backend($1::int, 10000) AS ok"
				  " WHERE ok",
				  1, kp),
			1);
		/* pg_terminate_backend(pid, timeout) returned once our backend
		 * exited. Our connection is gone before COMMIT: this fails, and
		 * the whole transaction is retried on a new connection. */
		rc = mica_db_exec(db, "SELECT 1", 0, NULL, NULL);
		ck_assert_int_eq(rc, MICA_EDBCONN);
		return rc;
	}
	return c->fail_with;
}

START_TEST(tx_error_rolls_back)
{
	mica_db *db = open_db();
	use_schema(db);
	exec_ok(db, "CREATE TABLE t (k text PRIMARY KEY)");

	struct ins c = {.fail_with = MICA_EINVAL};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, ins_tx, &c), MICA_EINVAL);
	ck_assert_int_eq(c.calls, 1);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM t", 0, NULL), 0);

	/* A function that swallows a failed statement does not get a commit. */
	struct ins d = {.ignore_dup = 1};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, ins_tx, &d), MICA_EEXISTS);
	ck_assert_int_eq(d.calls, 1);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM t", 0, NULL), 0);

	/* Unique violations are not retried. */
	const char *p[1] = {"row"};
	ck_assert_int_eq(mica_db_exec(db, "INSERT INTO t (k) VALUES ($1)", 1, p, NULL), 0);
	struct ins e = {0};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_SERIALIZABLE, ins_tx, &e), MICA_EEXISTS);
	ck_assert_int_eq(e.calls, 1);

	ck_assert_int_eq(mica_db_tx(db, 7, ins_tx, &e), MICA_EINVAL);
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, NULL, NULL), MICA_EINVAL);
	drop_schema(db);
	mica_db_close(&db);
}
END_TEST

START_TEST(tx_lost_connection_is_retried)
{
	mica_db *db = open_db(), *killer = open_db();
	use_schema(db);
	exec_ok(db, "CREATE TABLE t (k text PRIMARY KEY)");
	struct ins c = {.killer = killer};
	int rc = mica_db_tx(db, MICA_DB_READ_COMMITTED, ins_tx, &c);
	ck_assert_msg(rc == 0, "tx: %s (%s)", mica_strerror(rc), mica_db_errmsg(db));
	ck_assert_int_eq(c.calls, 2);
	use_schema_path(db);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM t", 0, NULL), 1);
	drop_schema(db);
	mica_db_close(&killer);
	mica_db_close(&db);
}
END_TEST

static int nested_inner(mica_db *db, void *arg)
{
	(void)arg;
	ck_assert_int_eq(mica_db_in_transaction(db), 1);
	const char *p[1] = {"inner"};
	return mica_db_exec(db, "INSERT INTO t (k) VALUES ($1)", 1, p, NULL);
}

static int nested_outer(mica_db *db, void *arg)
{
	int *phase = arg;
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_SERIALIZABLE, nested_inner, NULL), MICA_ESTATE);
	int rc = mica_db_tx(db, MICA_DB_READ_COMMITTED, nested_inner, NULL);
	ck_assert_int_eq(rc, 0);
	return *phase == 0 ? MICA_ENOTFOUND : 0;
}

START_TEST(nested_tx_joins_outer)
{
	mica_db *db = open_db();
	use_schema(db);
	exec_ok(db, "CREATE TABLE t (k text PRIMARY KEY)");
	int phase = 0;
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, nested_outer, &phase),
			 MICA_ENOTFOUND);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM t", 0, NULL), 0);
	phase = 1;
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, nested_outer, &phase), 0);
	ck_assert_int_eq(query_int(db, "SELECT count(*) FROM t", 0, NULL), 1);
	ck_assert_int_eq(mica_db_in_transaction(db), 0);
	drop_schema(db);
	mica_db_close(&db);
}
END_TEST

/* ---- statement cache ------------------------------------------------- */

START_TEST(statements_are_prepared_once)
{
	mica_db *db = open_db();
	static const char sql[] = "SELECT $1::int * 2";
	const char *p[1] = {"21"};
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(query_int(db, sql, 1, p), 42);
	const char *q[1] = {sql};
	ck_assert_int_eq(query_int(db,
				   "SELECT count(*) FROM pg_prepared_statements"
				   " WHERE statement = $1",
				   1, q),
			 1);
	/* Statements dropped behind our back are prepared again. */
	exec_ok(db, "DEALLOCATE ALL");
	ck_assert_int_eq(query_int(db, sql, 1, p), 42);
	mica_db_close(&db);
}
END_TEST

static int select_star_tx(mica_db *db, void *arg)
{
	int *calls = arg;
	(*calls)++;
	PGresult *res = NULL;
	int rc = mica_db_exec(db, "SELECT * FROM sp", 0, NULL, &res);
	if (rc == 0)
		ck_assert_int_eq(PQnfields(res), 3);
	PQclear(res);
	return rc;
}

/* A migration that changes a table under a cached "SELECT *" does not break
 * the statement, outside or inside a transaction. */
START_TEST(cached_statement_survives_ddl)
{
	mica_db *db = open_db();
	use_schema(db);
	exec_ok(db, "CREATE TABLE sp (a int)");
	exec_ok(db, "INSERT INTO sp VALUES (1)");
	PGresult *res = NULL;
	ck_assert_int_eq(mica_db_exec(db, "SELECT * FROM sp", 0, NULL, &res), 0);
	ck_assert_int_eq(PQnfields(res), 1);
	PQclear(res);
	exec_ok(db, "ALTER TABLE sp ADD COLUMN b int DEFAULT 7");
	ck_assert_int_eq(mica_db_exec(db, "SELECT * FROM sp", 0, NULL, &res), 0);
	ck_assert_int_eq(PQnfields(res), 2);
	ck_assert_str_eq(mica_db_get(res, 0, 1), "7");
	PQclear(res);

	exec_ok(db, "ALTER TABLE sp ADD COLUMN c int");
	int calls = 0;
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, select_star_tx, &calls), 0);
	ck_assert_int_eq(calls, 2);
	drop_schema(db);
	mica_db_close(&db);
}
END_TEST

/* ---- LISTEN / NOTIFY -------------------------------------------------- */

START_TEST(listen_notify)
{
	mica_db *db = open_db(), *other = open_db();
	char channel[32];
	snprintf(channel, sizeof(channel), "t_db_%d", (int)getpid());
	ck_assert_int_eq(mica_db_listen(db, "bad-name; DROP"), MICA_EINVAL);
	ck_assert_int_eq(mica_db_listen(db, channel), 0);
	ck_assert_int_eq(mica_db_listen(db, channel), 0);
	ck_assert_int_ge(mica_db_socket(db), 0);

	struct note n = {0};
	int64_t t0 = now_ms();
	ck_assert_int_eq(mica_db_wait_notify(db, 150, on_note, &n), MICA_ETIMEOUT);
	ck_assert_int_ge(now_ms() - t0, 140);
	ck_assert_int_eq(n.n, 0);

	const char *p[2] = {channel, "it's 'quoted'"};
	ck_assert_int_eq(mica_db_exec(other, "SELECT pg_notify($1, $2)", 2, p, NULL), 0);
	ck_assert_int_eq(mica_db_wait_notify(db, 10000, on_note, &n), 0);
	ck_assert_int_eq(n.n, 1);
	ck_assert_str_eq(n.channel, channel);
	ck_assert_str_eq(n.payload, "it's 'quoted'");
	int count = -1;
	ck_assert_int_eq(mica_db_drain_notifications(db, on_note, &n, &count), 0);
	ck_assert_int_eq(count, 0);
	mica_db_close(&other);
	mica_db_close(&db);
}
END_TEST

/* ---- per-thread handles ---------------------------------------------- */

/* Thread handles borrow connections from one idle stack: a statement
 * outside a transaction gives its connection back, the next statement of
 * any thread takes the one used last, and a transaction keeps its own from
 * BEGIN to COMMIT. */
struct thread_result {
	int in_tx; /* hold a transaction open across the barrier */
	int64_t backend;
	int rc;
};

static pthread_barrier_t both_in_tx;

static int backend_of(mica_db *db, int64_t *pid)
{
	PGresult *res = NULL;
	int rc = mica_db_exec(db, "SELECT pg_backend_pid()", 0, NULL, &res);
	if (rc == 0)
		rc = mica_db_get_int64(res, 0, 0, pid);
	PQclear(res);
	return rc;
}

static int hold_tx(mica_db *db, void *arg)
{
	struct thread_result *r = arg;
	int rc = backend_of(db, &r->backend);
	/* Both transactions are open at once, so their backends must differ. */
	pthread_barrier_wait(&both_in_tx);
	return rc;
}

static void *thread_main(void *arg)
{
	struct thread_result *r = arg;
	mica_db *db = mica_db_thread();
	if (!db)
		r->rc = MICA_ENOMEM;
	else if (r->in_tx)
		r->rc = mica_db_tx(db, MICA_DB_READ_COMMITTED, hold_tx, r);
	else
		r->rc = backend_of(db, &r->backend);
	return NULL;
}

static void run_threads(struct thread_result *r, int n)
{
	pthread_t th[2];
	for (int i = 0; i < n; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, thread_main, &r[i]), 0);
	for (int i = 0; i < n; i++) {
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);
		ck_assert_msg(r[i].rc == 0, "thread %d: %s", i, mica_strerror(r[i].rc));
	}
}

START_TEST(thread_handles)
{
	ck_assert_int_eq(mica_db_global_init(env("MICA_PG_CONNINFO")), 0);
	ck_assert_int_eq(pthread_barrier_init(&both_in_tx, NULL, 2), 0);

	/* Two transactions at once: two connections. */
	struct thread_result tx[2] = {{.in_tx = 1}, {.in_tx = 1}};
	run_threads(tx, 2);
	ck_assert_int_ne(tx[0].backend, tx[1].backend);

	/* One statement after the other, on other threads: the connection that
	 * went idle last, so a quiet pool keeps using one warm backend. */
	struct thread_result seq[2] = {{0}};
	run_threads(&seq[0], 1);
	ck_assert(seq[0].backend == tx[0].backend || seq[0].backend == tx[1].backend);
	run_threads(&seq[1], 1);
	ck_assert_int_eq(seq[1].backend, seq[0].backend);
	unsigned open = 0, idle = 0;
	mica_db_thread_connections(&open, &idle);
	ck_assert_uint_eq(open, 2);
	ck_assert_uint_eq(idle, 2);

	/* A handle that LISTENs keeps its connection; the others never get it. */
	mica_db *listener = mica_db_thread();
	ck_assert_ptr_nonnull(listener);
	ck_assert_int_eq(mica_db_listen(listener, "t_db_pool"), 0);
	int64_t mine = 0, again = 0;
	ck_assert_int_eq(backend_of(listener, &mine), 0);
	struct thread_result other = {0};
	run_threads(&other, 1);
	ck_assert_int_ne(other.backend, mine);
	ck_assert_int_eq(backend_of(listener, &again), 0);
	ck_assert_int_eq(again, mine);
	mica_db_thread_connections(&open, &idle);
	ck_assert_uint_eq(open, 3);
	ck_assert_uint_eq(idle, 2);

	/* Cleanup closes the idle connections and this thread's own. */
	mica_db *db = open_db();
	char pids[96];
	snprintf(pids, sizeof(pids), "{%lld,%lld,%lld}", (long long)tx[0].backend,
		 (long long)tx[1].backend, (long long)mine);
	const char *p[1] = {pids};
	mica_db_global_cleanup();
	mica_db_thread_connections(&open, &idle);
	ck_assert_uint_eq(open, 0);
	ck_assert_uint_eq(idle, 0);
	int64_t left = -1;
	for (int64_t deadline = now_ms() + 10000; now_ms() < deadline;) {
		left = query_int(db,
				 "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
				 1, p);
		if (left == 0)
			break;
		usleep(20 * 1000);
	}
	ck_assert_int_eq(left, 0);
	mica_db_close(&db);
	pthread_barrier_destroy(&both_in_tx);
}
END_TEST

START_TEST(result_helpers)
{
	mica_db *db = open_db();
	PGresult *res = NULL;
	ck_assert_int_eq(
		mica_db_exec(db, "SELECT NULL::int, 'x', 9223372036854775807", 0, NULL, &res), 0);
	int64_t v = 0;
	ck_assert_ptr_null(mica_db_get(res, 0, 0));
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &v), MICA_ENOTFOUND);
	ck_assert_int_eq(mica_db_get_int64(res, 0, 1, &v), MICA_EINVAL);
	ck_assert_int_eq(mica_db_get_int64(res, 0, 2, &v), 0);
	ck_assert(v == INT64_MAX);
	ck_assert_ptr_null(mica_db_get(res, 1, 0));
	ck_assert_ptr_null(mica_db_get(res, 0, 3));
	ck_assert_int_eq(mica_db_get_int64(res, 5, 0, &v), MICA_ENOTFOUND);
	PQclear(res);
	mica_db_close(&db);
}
END_TEST

/* A text[] literal carries every string as one element, as written: the
 * word NULL, empty strings, quotes, backslashes, commas and braces. */
START_TEST(text_array_literal)
{
	mica_db *db = open_db();
	static const char *const items[] = {"NULL", "", "a\"b", "c\\d", "e,f", "{g}", " h "};
	const size_t n = sizeof(items) / sizeof(items[0]);
	char *lit = mica_db_text_array(items, n);
	ck_assert_ptr_nonnull(lit);
	const char *p[1] = {lit};
	PGresult *res = NULL;
	ck_assert_int_eq(mica_db_exec(db,
				      "SELECT x FROM unnest($1::text[]) WITH ORDINALITY AS t(x, i)"
				      " ORDER BY i",
				      1, p, &res),
			 0);
	ck_assert_int_eq(PQntuples(res), (int)n);
	for (size_t i = 0; i < n; i++)
		ck_assert_str_eq(mica_db_get(res, (int)i, 0), items[i]);
	PQclear(res);
	free(lit);
	lit = mica_db_text_array(NULL, 0);
	ck_assert_str_eq(lit, "{}");
	free(lit);
	mica_db_close(&db);
}
END_TEST

static Suite *db_suite(void)
{
	Suite *s = suite_create("db");
	TCase *tc = tcase_create("postgres");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, conninfo_with_password_quotes);
	tcase_add_test(tc, params_are_data);
	tcase_add_test(tc, error_mapping);
	tcase_add_test(tc, unreachable_server);
	tcase_add_test(tc, reconnect_after_restart);
	tcase_add_test(tc, serialization_failure_is_retried);
	tcase_add_test(tc, serialization_retries_run_out);
	tcase_add_test(tc, tx_error_rolls_back);
	tcase_add_test(tc, tx_lost_connection_is_retried);
	tcase_add_test(tc, nested_tx_joins_outer);
	tcase_add_test(tc, statements_are_prepared_once);
	tcase_add_test(tc, cached_statement_survives_ddl);
	tcase_add_test(tc, listen_notify);
	tcase_add_test(tc, thread_handles);
	tcase_add_test(tc, result_helpers);
	tcase_add_test(tc, text_array_literal);
	suite_add_tcase(s, tc);
	return s;
}

static const char *const needs[] = {"MICA_PG_CONNINFO", "MICA_PG_RESTART", NULL};

const struct mica_check mica_check = {
	.suite = db_suite, .needs = needs, .log = MICA_CHECK_LOG_ERRORS};
