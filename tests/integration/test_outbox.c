/* test_outbox.c - lib/outbox against the real PostgreSQL of tests/run, in a
 * fresh database created for this run (schema/0001_outbox.sql applied) and
 * dropped at the end: emit only inside transactions and only on commit,
 * fan-out per subscriber, batches that roll back on handler failure,
 * NOTIFY wake-ups, pruning, and the kill test: a worker SIGKILLed in the
 * middle of a batch, restarted until done, leaves every event with exactly
 * one effect.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "err.h"
#include "log.h"
#include "outbox.h"
#include "tests/check_main.h"

static char conninfo[2048]; /* of the fresh database */

static mica_db *open_db(void)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, conninfo);
	ck_assert_msg(rc == 0, "mica_db_open: %s: %s", mica_strerror(rc), mica_db_errmsg(NULL));
	return db;
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

static int64_t pending_of(mica_db *db, const char *consumer)
{
	const char *p[1] = {consumer};
	return query_int(db, "SELECT count(*) FROM outbox.pending WHERE consumer = $1", 1, p);
}

static int64_t events_of(mica_db *db, const char *topic)
{
	const char *p[1] = {topic};
	return query_int(db, "SELECT count(*) FROM outbox.event WHERE topic = $1", 1, p);
}

static int64_t effects_of(mica_db *db, const char *consumer)
{
	const char *p[1] = {consumer};
	return query_int(db, "SELECT count(*) FROM effects WHERE consumer = $1", 1, p);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Names unique to this test process. */
static const char *name(const char *what)
{
	static char buf[64][64];
	static int i;
	char *s = buf[i++ % 64];
	snprintf(s, sizeof(buf[0]), "%s_%d", what, (int)getpid());
	return s;
}

struct emit_ctx {
	const char *topic;
	const char *payload;
	int count;
	int fail_with;
	int64_t last_id;
};

static int emit_tx(mica_db *db, void *arg)
{
	struct emit_ctx *e = arg;
	for (int i = 0; i < e->count; i++) {
		char payload[64];
		snprintf(payload, sizeof(payload), "{\"n\":%d}", i);
		int rc = mica_outbox_emit(db, e->topic, e->payload ? e->payload : payload,
					  &e->last_id);
		if (rc)
			return rc;
	}
	return e->fail_with;
}

static void emit(mica_db *db, const char *topic, int count)
{
	struct emit_ctx e = {.topic = topic, .count = count};
	int rc = mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_tx, &e);
	ck_assert_msg(rc == 0, "emit: %s (%s)", mica_strerror(rc), mica_db_errmsg(db));
}

/* ---- emit ------------------------------------------------------------ */

START_TEST(emit_outside_transaction_is_refused)
{
	mica_db *db = open_db();
	const char *topic = name("t.outside");
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c"), topic), 0);
	int64_t id = -1;
	ck_assert_int_eq(mica_outbox_emit(db, topic, "{}", &id), MICA_ESTATE);
	ck_assert_int_eq(id, 0);
	ck_assert_int_eq(events_of(db, topic), 0);
	ck_assert_int_eq(pending_of(db, name("c")), 0);
	mica_db_close(&db);
}
END_TEST

START_TEST(emit_in_rolled_back_transaction_leaves_nothing)
{
	mica_db *db = open_db();
	const char *topic = name("t.rollback");
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c"), topic), 0);
	struct emit_ctx e = {.topic = topic, .count = 3, .fail_with = MICA_ENOTFOUND};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_tx, &e), MICA_ENOTFOUND);
	ck_assert_int_gt(e.last_id, 0); /* it was emitted, then rolled back */
	ck_assert_int_eq(events_of(db, topic), 0);
	ck_assert_int_eq(pending_of(db, name("c")), 0);

	/* Bad JSON is refused and takes the transaction with it. */
	struct emit_ctx bad = {.topic = topic, .count = 1, .payload = "{not json"};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_tx, &bad), MICA_EINVAL);
	ck_assert_int_eq(events_of(db, topic), 0);
	mica_db_close(&db);
}
END_TEST

START_TEST(emit_in_committed_transaction_fans_out)
{
	mica_db *db = open_db();
	const char *topic = name("t.fanout"), *other = name("t.other");
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c1"), topic), 0);
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c1"), topic), 0); /* idempotent */
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c2"), topic), 0);
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c3"), other), 0);
	struct emit_ctx e = {.topic = topic, .count = 1, .payload = "{\"user\": \"a'; DROP --\"}"};
	ck_assert_int_eq(mica_db_tx(db, MICA_DB_READ_COMMITTED, emit_tx, &e), 0);
	ck_assert_int_eq(events_of(db, topic), 1);
	ck_assert_int_eq(pending_of(db, name("c1")), 1);
	ck_assert_int_eq(pending_of(db, name("c2")), 1);
	ck_assert_int_eq(pending_of(db, name("c3")), 0);
	char id[24];
	snprintf(id, sizeof(id), "%lld", (long long)e.last_id);
	const char *p[1] = {id};
	ck_assert_int_eq(
		query_int(db, "SELECT count(*) FROM outbox.pending WHERE event_id = $1::bigint", 1,
			  p),
		2);

	int removed = -1;
	ck_assert_int_eq(mica_outbox_unsubscribe(db, name("c2"), topic, &removed), 0);
	ck_assert_int_eq(removed, 1);
	emit(db, topic, 1);
	ck_assert_int_eq(pending_of(db, name("c1")), 2);
	ck_assert_int_eq(pending_of(db, name("c2")), 1);

	ck_assert_int_eq(mica_outbox_subscribe(db, "", topic), MICA_EINVAL);
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c"), NULL), MICA_EINVAL);
	mica_db_close(&db);
}
END_TEST

/* ---- consume --------------------------------------------------------- */

struct seen {
	int64_t ids[64];
	char payload[64][64];
	int n;
	int fail_at; /* 1-based handler call that fails; 0: never */
	int calls;
};

static int record(mica_db *db, const struct mica_outbox_event *ev, void *arg)
{
	struct seen *s = arg;
	ck_assert_int_eq(mica_db_in_transaction(db), 1);
	s->calls++;
	char id[24];
	snprintf(id, sizeof(id), "%lld", (long long)ev->id);
	const char *p[2] = {name("c"), id};
	int rc = mica_db_exec(
		db, "INSERT INTO effects (consumer, event_id, n) VALUES ($1, $2::bigint, 1)", 2, p,
		NULL);
	if (rc)
		return rc;
	if (s->fail_at && s->calls == s->fail_at)
		return MICA_EIO;
	ck_assert_int_lt(s->n, 64);
	s->ids[s->n] = ev->id;
	snprintf(s->payload[s->n], sizeof(s->payload[0]), "%s", ev->payload);
	s->n++;
	return 0;
}

START_TEST(consume_in_batches_in_order)
{
	mica_db *db = open_db();
	const char *topic = name("t.consume"), *c = name("c");
	ck_assert_int_eq(mica_outbox_subscribe(db, c, topic), 0);
	emit(db, topic, 7);
	struct seen s = {0};
	int handled = -1;
	int want[] = {3, 3, 1, 0};
	for (int round = 0; round < 4; round++) {
		ck_assert_int_eq(mica_outbox_consume(db, c, 3, record, &s, &handled), 0);
		ck_assert_int_eq(handled, want[round]);
	}
	ck_assert_int_eq(s.n, 7);
	for (int i = 1; i < s.n; i++)
		ck_assert_int_gt(s.ids[i], s.ids[i - 1]);
	ck_assert_str_eq(s.payload[0], "{\"n\": 0}");
	ck_assert_str_eq(s.payload[6], "{\"n\": 6}");
	ck_assert_int_eq(pending_of(db, c), 0);
	ck_assert_int_eq(effects_of(db, c), 7);

	ck_assert_int_eq(mica_outbox_consume(db, c, 0, record, &s, &handled), MICA_EINVAL);
	ck_assert_int_eq(mica_outbox_consume(db, c, 3, NULL, &s, &handled), MICA_EINVAL);
	mica_db_close(&db);
}
END_TEST

START_TEST(handler_failure_rolls_back_batch)
{
	mica_db *db = open_db();
	const char *topic = name("t.fail"), *c = name("c");
	ck_assert_int_eq(mica_outbox_subscribe(db, c, topic), 0);
	emit(db, topic, 5);
	struct seen s = {.fail_at = 3};
	int handled = -1;
	ck_assert_int_eq(mica_outbox_consume(db, c, 10, record, &s, &handled), MICA_EIO);
	ck_assert_int_eq(handled, 0);
	ck_assert_int_eq(s.calls, 3);
	/* The two effects written before the failure were rolled back, and
	 * every event is still pending. */
	ck_assert_int_eq(effects_of(db, c), 0);
	ck_assert_int_eq(pending_of(db, c), 5);

	struct seen ok = {0};
	ck_assert_int_eq(mica_outbox_consume(db, c, 10, record, &ok, &handled), 0);
	ck_assert_int_eq(handled, 5);
	ck_assert_int_eq(effects_of(db, c), 5);
	ck_assert_int_eq(pending_of(db, c), 0);
	mica_db_close(&db);
}
END_TEST

/* ---- wait ------------------------------------------------------------ */

START_TEST(wait_wakes_on_commit)
{
	mica_db *db = open_db(), *producer = open_db();
	const char *topic = name("t.wait"), *other_topic = name("t.wait2");
	const char *c = name("c"), *other = name("other");
	ck_assert_int_eq(mica_outbox_subscribe(db, c, topic), 0);
	ck_assert_int_eq(mica_outbox_subscribe(db, other, other_topic), 0);

	int64_t t0 = now_ms();
	ck_assert_int_eq(mica_outbox_wait(db, c, 150), MICA_ETIMEOUT);
	ck_assert_int_ge(now_ms() - t0, 140);

	/* Another consumer's event does not wake us. */
	emit(producer, other_topic, 1);
	ck_assert_int_eq(mica_outbox_wait(db, c, 200), MICA_ETIMEOUT);

	emit(producer, topic, 2);
	ck_assert_int_eq(mica_outbox_wait(db, c, 10000), 0);

	/* consume drains stale wake-ups, so the next wait sleeps again. */
	struct seen s = {0};
	int handled = 0;
	ck_assert_int_eq(mica_outbox_consume(db, c, 10, record, &s, &handled), 0);
	ck_assert_int_eq(handled, 2);
	ck_assert_int_eq(mica_outbox_wait(db, c, 100), MICA_ETIMEOUT);
	mica_db_close(&producer);
	mica_db_close(&db);
}
END_TEST

START_TEST(prune_keeps_pending_events)
{
	mica_db *db = open_db();
	const char *topic = name("t.prune"), *lonely = name("t.nobody");
	ck_assert_int_eq(mica_outbox_subscribe(db, name("c"), topic), 0);
	emit(db, topic, 2);
	emit(db, lonely, 3); /* no subscriber: nothing pending */
	int64_t deleted = -1;
	ck_assert_int_eq(mica_outbox_prune(db, 3600, &deleted), 0);
	ck_assert_int_eq(events_of(db, lonely), 3);
	ck_assert_int_eq(mica_outbox_prune(db, 0, &deleted), 0);
	ck_assert_int_ge(deleted, 3);
	ck_assert_int_eq(events_of(db, lonely), 0);
	ck_assert_int_eq(events_of(db, topic), 2);
	ck_assert_int_eq(mica_outbox_prune(db, -1, &deleted), MICA_EINVAL);
	mica_db_close(&db);
}
END_TEST

/* ---- the kill test --------------------------------------------------- */

struct worker {
	pid_t pid;
	int out; /* read end of its stdout */
	char buf[8192];
	size_t len;
};

static void worker_start(struct worker *w, const char *consumer, const char *pause_at)
{
	const char *build = getenv("MICA_BUILD");
	ck_assert_msg(build && *build, "MICA_BUILD is not set");
	char path[1024];
	snprintf(path, sizeof(path), "%s/tests/peers/outbox_worker", build);
	ck_assert_msg(access(path, X_OK) == 0, "%s is missing (make all)", path);
	int fds[2];
	ck_assert_int_eq(pipe(fds), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(path, path, "--db", conninfo, "--consumer", consumer, "--batch", "50",
		      "--sleep-ms", "3", "--idle-ms", "300", "--pause-at", pause_at, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	w->pid = pid;
	w->out = fds[0];
	w->len = 0;
}

/* Next line of the worker's output into |line|; 0 on EOF. Fails the test
 * if nothing comes within the deadline. */
static int worker_line(struct worker *w, char *line, size_t cap, int64_t deadline)
{
	for (;;) {
		char *nl = memchr(w->buf, '\n', w->len);
		if (nl) {
			size_t n = (size_t)(nl - w->buf);
			snprintf(line, cap, "%.*s", (int)n, w->buf);
			memmove(w->buf, nl + 1, w->len - n - 1);
			w->len -= n + 1;
			return 1;
		}
		int64_t left = deadline - now_ms();
		ck_assert_msg(left > 0, "worker said nothing in time");
		struct pollfd p = {.fd = w->out, .events = POLLIN};
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		ck_assert_int_ge(r, 0);
		if (r == 0)
			continue;
		ck_assert_msg(w->len < sizeof(w->buf), "worker line too long");
		ssize_t got = read(w->out, w->buf + w->len, sizeof(w->buf) - w->len);
		if (got == 0)
			return 0;
		ck_assert_int_gt(got, 0);
		w->len += (size_t)got;
	}
}

static void worker_kill(struct worker *w)
{
	ck_assert_int_eq(kill(w->pid, SIGKILL), 0);
	int st = 0;
	ck_assert_int_eq(waitpid(w->pid, &st, 0), w->pid);
	ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	close(w->out);
}

/* Reads to EOF and reaps; the worker must exit 0 (idle, all done). */
static void worker_finish(struct worker *w, int64_t deadline)
{
	char line[256];
	while (worker_line(w, line, sizeof(line), deadline))
		;
	int st = 0;
	ck_assert_int_eq(waitpid(w->pid, &st, 0), w->pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker status %d", st);
	close(w->out);
}

START_TEST(killed_worker_loses_and_duplicates_nothing)
{
	enum { EVENTS = 500 };
	mica_db *db = open_db();
	const char *topic = name("t.kill"), *c = name("killc");
	ck_assert_int_eq(mica_outbox_subscribe(db, c, topic), 0);
	emit(db, topic, EVENTS);
	ck_assert_int_eq(pending_of(db, c), EVENTS);
	int64_t deadline = now_ms() + 100000;
	char line[256];

	/* 1. Deterministic: the worker commits batch 1 (50), then stops inside
	 * batch 2 after 25 handler calls, holding its transaction open. */
	struct worker w;
	worker_start(&w, c, "75");
	int commits = 0;
	while (worker_line(&w, line, sizeof(line), deadline) && strcmp(line, "paused") != 0)
		commits += line[0] == 'c';
	ck_assert_str_eq(line, "paused");
	ck_assert_int_eq(commits, 1);
	ck_assert_int_eq(effects_of(db, c), 50); /* batch 2's 25 are invisible */
	ck_assert_int_eq(pending_of(db, c), EVENTS - 50);
	worker_kill(&w);

	/* 2. Less tidy: kill at the first handler call after a commit. */
	worker_start(&w, c, "0");
	int seen_commit = 0;
	while (worker_line(&w, line, sizeof(line), deadline)) {
		if (line[0] == 'c')
			seen_commit = 1;
		else if (seen_commit && line[0] == 'e')
			break;
	}
	ck_assert_msg(seen_commit && line[0] == 'e', "worker ended early: %s", line);
	worker_kill(&w);
	ck_assert_int_ge(effects_of(db, c), 100);

	/* 3. Restart (two at a time, sharing via SKIP LOCKED) until done. */
	for (int round = 0; round < 10 && pending_of(db, c) > 0; round++) {
		struct worker a, b;
		worker_start(&a, c, "0");
		worker_start(&b, c, "0");
		worker_finish(&a, deadline);
		worker_finish(&b, deadline);
	}

	ck_assert_int_eq(pending_of(db, c), 0);
	const char *p[2] = {c, topic};
	ck_assert_int_eq(effects_of(db, c), EVENTS);
	ck_assert_int_eq(
		query_int(db, "SELECT count(*) FROM effects WHERE consumer = $1 AND n <> 1", 1, p),
		0);
	ck_assert_int_eq(
		query_int(db,
			  "SELECT count(*) FROM outbox.event e WHERE e.topic = $2 AND NOT EXISTS"
			  " (SELECT 1 FROM effects f WHERE f.consumer = $1 AND f.event_id = e.id)",
			  2, p),
		0);
	mica_db_close(&db);
}
END_TEST

static Suite *outbox_suite(void)
{
	Suite *s = suite_create("outbox");
	TCase *tc = tcase_create("postgres");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, emit_outside_transaction_is_refused);
	tcase_add_test(tc, emit_in_rolled_back_transaction_leaves_nothing);
	tcase_add_test(tc, emit_in_committed_transaction_fans_out);
	tcase_add_test(tc, consume_in_batches_in_order);
	tcase_add_test(tc, handler_failure_rolls_back_batch);
	tcase_add_test(tc, wait_wakes_on_commit);
	tcase_add_test(tc, prune_keeps_pending_events);
	tcase_add_test(tc, killed_worker_loses_and_duplicates_nothing);
	suite_add_tcase(s, tc);
	return s;
}

/* ---- the fresh database ---------------------------------------------- */

static int read_text(const char *path, char **out)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	size_t cap = 1 << 20;
	char *buf = malloc(cap + 1);
	size_t n = buf ? fread(buf, 1, cap, f) : 0;
	fclose(f);
	if (!buf || n == cap) {
		free(buf);
		return -1;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

static int admin_exec(const char *admin_conninfo, const char *sql)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, admin_conninfo);
	if (rc == 0)
		rc = mica_db_exec(db, sql, 0, NULL, NULL);
	if (rc)
		fprintf(stderr, "test_outbox: %s: %s: %s\n", sql, mica_strerror(rc),
			db ? mica_db_errmsg(db) : mica_db_errmsg(NULL));
	mica_db_close(&db);
	return rc;
}

/* Creates mica_outbox_test_<pid> with the outbox schema and the effects
 * table. Database names cannot be parameters; this one comes from our pid. */
static int setup_database(const char *admin, const char *dbname)
{
	char sql[256];
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
	if (admin_exec(admin, sql))
		return -1;
	snprintf(conninfo, sizeof(conninfo), "%s dbname=%s", admin, dbname);

	const char *dir = getenv("MICA_SCHEMA_DIR");
	char path[1024];
	snprintf(path, sizeof(path), "%s/0001_outbox.sql", dir && *dir ? dir : "schema");
	char *script = NULL;
	if (read_text(path, &script)) {
		fprintf(stderr, "test_outbox: cannot read %s (run from the repository root)\n",
			path);
		return -1;
	}
	mica_db *db = NULL;
	int rc = mica_db_open(&db, conninfo);
	if (rc == 0)
		rc = mica_db_exec_trusted_script(db, script);
	if (rc == 0)
		rc = mica_db_exec(db,
				  "CREATE TABLE effects (consumer text, event_id bigint,"
				  " n int NOT NULL, PRIMARY KEY (consumer, event_id))",
				  0, NULL, NULL);
	if (rc)
		fprintf(stderr, "test_outbox: schema setup: %s: %s\n", mica_strerror(rc),
			db ? mica_db_errmsg(db) : mica_db_errmsg(NULL));
	mica_db_close(&db);
	free(script);
	return rc ? -1 : 0;
}

static char dbname[64]; /* this run's database */

static int outbox_setup(void)
{
	const char *admin = getenv("MICA_PG_CONNINFO");
	if (strncmp(admin, "postgres", 8) == 0) {
		fprintf(stderr, "test_outbox: MICA_PG_CONNINFO must be key=value, not a URI\n");
		return -1;
	}
	snprintf(dbname, sizeof(dbname), "mica_outbox_test_%d", (int)getpid());
	return setup_database(admin, dbname);
}

static int outbox_teardown(void)
{
	char sql[128];
	if (!dbname[0])
		return 0;
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
	return admin_exec(getenv("MICA_PG_CONNINFO"), sql);
}

static const char *const needs[] = {"MICA_PG_CONNINFO", "MICA_BUILD", NULL};

const struct mica_check mica_check = {.suite = outbox_suite,
				      .needs = needs,
				      .setup = outbox_setup,
				      .teardown = outbox_teardown,
				      .log = MICA_CHECK_LOG_ERRORS};
