/* test_session_clock.c - "recent authentication" is decided by one clock.
 * Sessions are created in a migrated database of this run's own with the
 * process clock skewed through lib/clock (as a host whose clock is ten
 * minutes off from the database's), and acct_auth_recent() must answer as
 * the process clock says: a fresh login is recent, one eleven minutes old is
 * not, and a step-up makes it recent again. Time moves with
 * mica__clock_advance_ms(), never by sleeping.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "account/account.h"
#include "clock.h"
#include "db.h"
#include "err.h"
#include "log.h"
#include "tests/check_main.h"

#define SKEW_MS (10 * 60 * 1000)

static const char *admin; /* MICA_PG_CONNINFO */
static char dbname[64];
static char db_ci[2048];
static char account_ci[2300]; /* role mica_account on dbname */

static int admin_exec(const char *ci, const char *sql)
{
	mica_db *db = NULL;
	int rc = mica_db_open(&db, ci);
	if (rc == 0)
		rc = mica_db_exec(db, sql, 0, NULL, NULL);
	if (rc)
		fprintf(stderr, "test_session_clock: %s: %s\n", sql, mica_strerror(rc));
	mica_db_close(&db);
	return rc;
}

/* A user to hang sessions on; its id. */
static int64_t make_user(mica_db *db, const char *tag)
{
	PGresult *res = NULL;
	int64_t id = 0;
	const char *p[1] = {tag};
	ck_assert_int_eq(
		mica_db_exec(db,
			     "INSERT INTO account.user (account_no_enc, account_no_idx,"
			     " password_enc, password_policy) VALUES ('x', $1, 'x', 'miui')"
			     " RETURNING id",
			     1, p, &res),
		0);
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &id), 0);
	PQclear(res);
	return id;
}

static void check_skew(int64_t skew_ms, const char *tag)
{
	struct acct_config cfg = {.recent_auth_s = 300, .app_session_days = 30, .web_idle_s = 900};
	acct_service s = {.cfg = &cfg};
	struct acct_session sess;
	char *token = NULL;

	ck_assert_int_eq(mica_db_global_init(account_ci), 0);
	mica_db *db = mica_db_thread();
	ck_assert_ptr_nonnull(db);
	mica__clock_skew_wall_ms(skew_ms);
	int64_t uid = make_user(db, tag);
	ck_assert_int_eq(acct_session_create(&s, db, uid, "dev", "app", &token, &sess), 0);
	free(token);
	ck_assert_msg(acct_auth_recent(&s, &sess),
		      "%s: a login just made is not recent (auth_at %lld, process clock %lld)", tag,
		      (long long)sess.auth_at, (long long)mica_clock_now());

	mica__clock_advance_ms(11 * 60 * 1000);
	ck_assert_msg(!acct_auth_recent(&s, &sess),
		      "%s: a login eleven minutes old passes as recent (auth_at %lld, clock %lld)",
		      tag, (long long)sess.auth_at, (long long)mica_clock_now());

	/* A step-up renews auth_at, read back as the session check would. */
	ck_assert_int_eq(acct_session_touch_auth(&s, sess.id), 0);
	char id[24];
	snprintf(id, sizeof(id), "%lld", (long long)sess.id);
	const char *p[1] = {id};
	PGresult *res = NULL;
	int64_t auth_at = 0;
	ck_assert_int_eq(mica_db_exec(db,
				      "SELECT extract(epoch from auth_at)::bigint"
				      " FROM account.session WHERE id = $1",
				      1, p, &res),
			 0);
	ck_assert_int_eq(mica_db_get_int64(res, 0, 0, &auth_at), 0);
	PQclear(res);
	sess.auth_at = (time_t)auth_at;
	ck_assert_msg(acct_auth_recent(&s, &sess), "%s: a step-up does not make it recent", tag);
	mica_db_global_cleanup();
}

/* Each test runs in its own process (fork mode), so the skews do not add up. */
START_TEST(process_clock_ahead_of_database)
{
	check_skew(SKEW_MS, "ahead");
}
END_TEST

START_TEST(process_clock_behind_database)
{
	check_skew(-SKEW_MS, "behind");
}
END_TEST

/* An auth_at in the future (another instance's clock far ahead) never
 * passes as recent, however long it stays in the future. */
START_TEST(future_auth_is_not_recent)
{
	struct acct_config cfg = {.recent_auth_s = 300};
	acct_service s = {.cfg = &cfg};
	struct acct_session sess = {.auth_at = (time_t)(mica_clock_now() + 600)};
	ck_assert(!acct_auth_recent(&s, &sess));
	sess.auth_at = (time_t)(mica_clock_now() + ACCT_AUTH_FUTURE_S);
	ck_assert(acct_auth_recent(&s, &sess));
	sess.auth_at = (time_t)(mica_clock_now() - 300);
	ck_assert(acct_auth_recent(&s, &sess));
	sess.auth_at = (time_t)(mica_clock_now() - 301);
	ck_assert(!acct_auth_recent(&s, &sess));
}
END_TEST

static Suite *clock_suite(void)
{
	Suite *su = suite_create("session_clock");
	TCase *tc = tcase_create("skew");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, process_clock_ahead_of_database);
	tcase_add_test(tc, process_clock_behind_database);
	tcase_add_test(tc, future_auth_is_not_recent);
	suite_add_tcase(su, tc);
	return su;
}

static bool created; /* dbname exists: the teardown drops it */

/* Before the suite: this run's database, migrated by the real `mica migrate`. */
static int clock_setup(void)
{
	char sql[256], cmd[3000];
	admin = getenv("MICA_PG_CONNINFO");
	snprintf(dbname, sizeof(dbname), "mica_clock_%d", (int)getpid());
	snprintf(db_ci, sizeof(db_ci), "%s dbname=%s", admin, dbname);
	snprintf(account_ci, sizeof(account_ci), "%s options='-c role=mica_account'", db_ci);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
	if (admin_exec(admin, sql) != 0)
		return -1;
	created = true;
	snprintf(cmd, sizeof(cmd),
		 "'%s/bin/mica' migrate --db \"$MICA_CLOCK_TEST_CI\" --schema schema >/dev/null",
		 getenv("MICA_BUILD"));
	setenv("MICA_CLOCK_TEST_CI", db_ci, 1);
	int st = system(cmd);
	if (st != 0) {
		fprintf(stderr, "test_session_clock: migrate failed (status %d)\n", st);
		return -1;
	}
	return 0;
}

static int clock_teardown(void)
{
	char sql[256];
	if (!created)
		return 0;
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
	return admin_exec(admin, sql);
}

static const char *const needs[] = {"MICA_PG_CONNINFO", "MICA_BUILD", NULL};

const struct mica_check mica_check = {.suite = clock_suite,
				      .needs = needs,
				      .setup = clock_setup,
				      .teardown = clock_teardown,
				      .log = MICA_CHECK_LOG_OFF};
