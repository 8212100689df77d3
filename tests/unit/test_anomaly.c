/* test_anomaly.c - the Key Center's anomaly detector (keycenter/anomaly.c):
 * thresholds exactly at and one over the limit, one report per window, the
 * sliding window's edges, denial bursts, both alerts from one request, LRU
 * eviction under the memory cap, and a four-thread smoke test. Time is passed
 * in, so nothing sleeps. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "keycenter/anomaly.h"
#include "keycenter/keycenter.h"
#include "tests/check_main.h"

static kc_anomaly *make(uint32_t max_requests, uint32_t max_denials, int64_t window_ms,
			size_t max_tracked)
{
	kc_anomaly_options o = {
		.max_requests_per_window = max_requests,
		.max_denials_per_window = max_denials,
		.window_ms = window_ms,
		.max_tracked = max_tracked,
	};
	kc_anomaly *a = NULL;

	ck_assert_int_eq(kc_anomaly_new(&o, &a), 0);
	ck_assert_ptr_nonnull(a);
	return a;
}

/* Records |n| requests and returns how many events they produced. */
static int record_n(kc_anomaly *a, const char *principal, const char *key, int denied,
		    int64_t now_ms, int n)
{
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];
	int events = 0;

	for (int i = 0; i < n; i++) {
		int rc = kc_anomaly_record(a, principal, key, denied, now_ms, ev);
		ck_assert_int_ge(rc, 0);
		events += rc;
	}
	return events;
}

/* Records one request every |step_us| microseconds from |from_ms| for
 * |n| requests; returns the events and sets *first_at_ms to the time of the
 * first (-1 if none). */
static int record_paced(kc_anomaly *a, const char *key, int64_t from_ms, int64_t step_us, long n,
			int64_t *first_at_ms)
{
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];
	int events = 0;

	*first_at_ms = -1;
	for (long i = 0; i < n; i++) {
		int64_t now = from_ms + i * step_us / 1000;
		int rc = kc_anomaly_record(a, "account", key, 0, now, ev);
		ck_assert_int_ge(rc, 0);
		if (rc > 0 && *first_at_ms < 0) {
			*first_at_ms = now;
			ck_assert_int_eq(ev[0].kind, KC_ALERT_RATE);
			ck_assert_uint_eq(ev[0].count, (uint64_t)ev[0].threshold + 1);
		}
		events += rc;
	}
	return events;
}

/* The default the Key Center runs with (its configuration table). */
static uint32_t configured_rate_max(void)
{
	for (size_t i = 0; i < kc_config_table_len; i++)
		if (strcmp(kc_config_table[i].section, "keycenter.alerts") == 0 &&
		    strcmp(kc_config_table[i].key, "rate_max") == 0)
			return (uint32_t)strtoul(kc_config_table[i].def, NULL, 10);
	ck_abort_msg("keycenter.alerts.rate_max is not in kc_config_table");
	return 0;
}

/* Issue 18 item 5: with the shipped default, a bulk decryption is reported
 * while a saturated account service is not. */
START_TEST(default_rate_max_catches_bulk_decryption)
{
	uint32_t max = configured_rate_max();
	int64_t at = 0;

	ck_assert_uint_eq(max, KC_ANOMALY_DEFAULT_RATE_MAX);
	/* The review's bulk decryption, 3,000 requests/s: reported within
	 * the first minute (after max / 3000 s, 15 s). */
	kc_anomaly *a = make(max, 0, 0, 0);
	ck_assert_int_eq(record_paced(a, "account-pii", 0, 1000000 / 3000, 3000L * 60, &at), 1);
	ck_assert_int_ge(at, 0);
	ck_assert_int_le(at, 16000);
	kc_anomaly_free(a);
	/* A few thousand requests per minute over the threshold: the
	 * threshold plus 3,000 spread over one minute is reported once. */
	a = make(max, 0, 0, 0);
	long n = (long)max + 3000;
	ck_assert_int_eq(record_paced(a, "account-pii", 0, 60000000 / n, n, &at), 1);
	ck_assert_int_lt(at, 60000);
	kc_anomaly_free(a);
	/* The ceiling of one saturated account-service instance on one key
	 * (4 calls per Argon2id hash, 92 hashes/s: 368/s) for three minutes,
	 * and the measured registration peak far below it, stay quiet. */
	a = make(max, 0, 0, 0);
	ck_assert_int_eq(record_paced(a, "account-pii", 0, 1000000 / 368, 368L * 180, &at), 0);
	ck_assert_int_eq(record_paced(a, "account-index", 0, 1000000 / 27, 27L * 180, &at), 0);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(options_are_validated)
{
	kc_anomaly_options o = {.max_requests_per_window = 5};
	kc_anomaly *a = (kc_anomaly *)&a;

	ck_assert_int_eq(kc_anomaly_new(NULL, &a), MICA_EINVAL);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(kc_anomaly_new(&o, NULL), MICA_EINVAL);
	o.window_ms = -1;
	ck_assert_int_eq(kc_anomaly_new(&o, &a), MICA_EINVAL);
	o.window_ms = KC_ANOMALY_MAX_WINDOW_MS + 1;
	ck_assert_int_eq(kc_anomaly_new(&o, &a), MICA_EINVAL);
	o.window_ms = 0;
	o.max_tracked = KC_ANOMALY_MAX_TRACKED + 1;
	ck_assert_int_eq(kc_anomaly_new(&o, &a), MICA_EINVAL);
	o.max_tracked = 0; /* defaults: 60 s, 10000 */
	ck_assert_int_eq(kc_anomaly_new(&o, &a), 0);
	kc_anomaly_free(a);
	kc_anomaly_free(NULL);
	ck_assert_str_eq(kc_alert_kind_name(KC_ALERT_RATE), "rate");
	ck_assert_str_eq(kc_alert_kind_name(KC_ALERT_DENIAL_BURST), "denial_burst");
	ck_assert_str_eq(kc_alert_kind_name((enum kc_alert_kind)0), "unknown");
}
END_TEST

START_TEST(record_arguments_are_validated)
{
	kc_anomaly *a = make(1, 1, 0, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];
	char long_name[KC_ANOMALY_NAME_MAX + 2];

	memset(long_name, 'x', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	ck_assert_int_eq(kc_anomaly_record(a, NULL, "k", 0, 0, ev), MICA_EINVAL);
	ck_assert_int_eq(kc_anomaly_record(a, "", "k", 0, 0, ev), MICA_EINVAL);
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, -1, ev), MICA_EINVAL);
	ck_assert_int_eq(kc_anomaly_record(a, long_name, "k", 0, 0, ev), MICA_EINVAL);
	ck_assert_int_eq(kc_anomaly_record(a, "p", long_name, 0, 0, ev), MICA_EINVAL);
	ck_assert_int_eq(kc_anomaly_record(NULL, "p", "k", 0, 0, ev), MICA_EINVAL);
	/* The longest names are fine, and nothing above was counted. */
	long_name[KC_ANOMALY_NAME_MAX] = '\0';
	ck_assert_int_eq(kc_anomaly_record(a, long_name, long_name, 0, 0, ev), 0);
	ck_assert_int_eq(kc_anomaly_record(a, long_name, long_name, 0, 0, ev), 1);
	ck_assert_str_eq(ev[0].principal, long_name);
	ck_assert_str_eq(ev[0].key, long_name);
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, 0, ev), 0);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(threshold_exactly_is_quiet_one_over_reports)
{
	kc_anomaly *a = make(3, 0, 60000, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(record_n(a, "account", "account-1", 0, 1000, 3), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "account", "account-1", 0, 1500, ev), 1);
	ck_assert_int_eq(ev[0].kind, KC_ALERT_RATE);
	ck_assert_str_eq(ev[0].principal, "account");
	ck_assert_str_eq(ev[0].key, "account-1");
	ck_assert_uint_eq(ev[0].count, 4);
	ck_assert_uint_eq(ev[0].threshold, 3);
	ck_assert_int_eq(ev[0].window_ms, 60000);
	ck_assert_int_eq(ev[0].at_ms, 1500);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(one_report_per_window_then_again)
{
	kc_anomaly *a = make(3, 0, 60000, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(record_n(a, "p", "k", 0, 0, 4), 1);
	/* Still far over the limit, but reported already in this window. */
	ck_assert_int_eq(record_n(a, "p", "k", 0, 10, 500), 0);
	ck_assert_int_eq(record_n(a, "p", "k", 0, 59999, 10), 0);
	/* A window after the report, the abuse goes on: one more report,
	 * counting only what is still in the window (the 10 at 59999). */
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, 60000, ev), 1);
	ck_assert_uint_eq(ev[0].count, 11);
	ck_assert_int_eq(record_n(a, "p", "k", 0, 60001, 100), 0);
	kc_anomaly_free(a);
}
END_TEST

/* With the default window a request in [0, 1000) counts up to 59999. */
START_TEST(window_slides_by_whole_buckets)
{
	kc_anomaly *a = make(3, 0, 60000, 0), *b = make(3, 0, 60000, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(record_n(a, "p", "k", 0, 0, 3), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, 59999, ev), 1);
	ck_assert_uint_eq(ev[0].count, 4);

	ck_assert_int_eq(record_n(b, "p", "k", 0, 999, 3), 0);
	ck_assert_int_eq(kc_anomaly_record(b, "p", "k", 0, 60000, ev), 0); /* the 3 are gone */
	ck_assert_int_eq(record_n(b, "p", "k", 0, 60500, 2), 0);	   /* 3 in window */
	ck_assert_int_eq(kc_anomaly_record(b, "p", "k", 0, 61000, ev), 1); /* 4 */
	/* Long idle: everything expires at once. */
	ck_assert_int_eq(record_n(b, "p", "k", 0, 10000000, 3), 0);
	kc_anomaly_free(a);
	kc_anomaly_free(b);
}
END_TEST

/* 1000 ms is not a multiple of 60: buckets of 17 ms, 59 of them, so a
 * request at 0 counts up to 1002. */
START_TEST(odd_window_rounds_up_by_less_than_a_bucket)
{
	kc_anomaly *a = make(1, 0, 1000, 0), *b = make(1, 0, 1000, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, 0, ev), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, 1002, ev), 1);
	ck_assert_int_eq(ev[0].window_ms, 1000);
	ck_assert_int_eq(kc_anomaly_record(b, "p", "k", 0, 0, ev), 0);
	ck_assert_int_eq(kc_anomaly_record(b, "p", "k", 0, 1003, ev), 0);
	kc_anomaly_free(a);
	kc_anomaly_free(b);
}
END_TEST

START_TEST(pairs_are_counted_separately)
{
	kc_anomaly *a = make(2, 0, 0, 0);

	ck_assert_int_eq(record_n(a, "p1", "k1", 0, 0, 2), 0);
	ck_assert_int_eq(record_n(a, "p1", "k2", 0, 0, 2), 0);
	ck_assert_int_eq(record_n(a, "p2", "k1", 0, 0, 2), 0);
	ck_assert_int_eq(record_n(a, "p1", NULL, 0, 0, 2), 0);
	ck_assert_int_eq(record_n(a, "p1", "", 0, 0, 1), 1); /* NULL and "" are the same */
	/* Names that concatenate alike are still different pairs. */
	ck_assert_int_eq(record_n(a, "ab", "c", 0, 0, 2), 0);
	ck_assert_int_eq(record_n(a, "a", "bc", 0, 0, 2), 0);
	ck_assert_int_eq(record_n(a, "p1", "k1", 0, 0, 1), 1);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(denial_bursts_per_principal)
{
	kc_anomaly *a = make(0, 2, 0, 0); /* rate detection off */
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(record_n(a, "mallory", "k1", 0, 0, 50), 0); /* allowed: not counted */
	ck_assert_int_eq(kc_anomaly_record(a, "mallory", "k1", 1, 100, ev), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "mallory", "k2", 1, 200, ev), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "eve", "k3", 1, 250, ev), 0);
	/* The third denial over any keys crosses 2. */
	ck_assert_int_eq(kc_anomaly_record(a, "mallory", "k3", 1, 300, ev), 1);
	ck_assert_int_eq(ev[0].kind, KC_ALERT_DENIAL_BURST);
	ck_assert_str_eq(ev[0].principal, "mallory");
	ck_assert_str_eq(ev[0].key, "");
	ck_assert_uint_eq(ev[0].count, 3);
	ck_assert_uint_eq(ev[0].threshold, 2);
	ck_assert_int_eq(ev[0].at_ms, 300);
	ck_assert_int_eq(record_n(a, "mallory", "k4", 1, 30000, 20), 0); /* reported already */
	/* A window after the report the 20 are still in it: report again. */
	ck_assert_int_eq(kc_anomaly_record(a, "mallory", "k4", 1, 60300, ev), 1);
	ck_assert_uint_eq(ev[0].count, 21);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(one_request_can_cross_both)
{
	kc_anomaly *a = make(1, 1, 0, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 1, 0, ev), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 1, 1, ev), 2);
	ck_assert_int_eq(ev[0].kind, KC_ALERT_RATE);
	ck_assert_str_eq(ev[0].key, "k");
	ck_assert_uint_eq(ev[0].count, 2);
	ck_assert_int_eq(ev[1].kind, KC_ALERT_DENIAL_BURST);
	ck_assert_str_eq(ev[1].principal, "p");
	ck_assert_str_eq(ev[1].key, "");
	ck_assert_uint_eq(ev[1].count, 2);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(the_stalest_pair_is_evicted_at_the_cap)
{
	kc_anomaly *a = make(2, 2, 0, 3);
	struct kc_anomaly_stats st;

	ck_assert_int_eq(record_n(a, "p", "a", 0, 0, 2), 0); /* a at the threshold */
	ck_assert_int_eq(record_n(a, "p", "b", 0, 1, 1), 0);
	ck_assert_int_eq(record_n(a, "p", "c", 0, 2, 1), 0);
	kc_anomaly_stats(a, &st);
	ck_assert_uint_eq(st.pairs, 3);
	ck_assert_uint_eq(st.evictions, 0);
	ck_assert_int_eq(record_n(a, "p", "d", 0, 3, 1), 0); /* evicts a, the stalest */
	kc_anomaly_stats(a, &st);
	ck_assert_uint_eq(st.pairs, 3);
	ck_assert_uint_eq(st.evictions, 1);
	/* a starts again from zero (it would report were it still tracked),
	 * and evicts b. */
	ck_assert_int_eq(record_n(a, "p", "a", 0, 4, 1), 0);
	/* Touching c makes d the stalest, so e evicts d and c keeps its count. */
	ck_assert_int_eq(record_n(a, "p", "c", 0, 5, 1), 0); /* c: 2 */
	ck_assert_int_eq(record_n(a, "p", "e", 0, 6, 1), 0);
	kc_anomaly_stats(a, &st);
	ck_assert_uint_eq(st.pairs, 3);
	ck_assert_uint_eq(st.evictions, 3);
	ck_assert_int_eq(record_n(a, "p", "c", 0, 7, 1), 1); /* c kept its count: 3 */

	/* The denial table has its own cap. */
	for (int i = 0; i < 10; i++) {
		char who[16];
		snprintf(who, sizeof(who), "u%d", i);
		ck_assert_int_eq(record_n(a, who, "z", 1, 8, 1), 0);
	}
	kc_anomaly_stats(a, &st);
	ck_assert_uint_eq(st.principals, 3);
	ck_assert_uint_eq(st.pairs, 3);
	kc_anomaly_free(a);
}
END_TEST

START_TEST(a_clock_going_back_counts_in_the_newest_bucket)
{
	kc_anomaly *a = make(3, 0, 60000, 0);
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];

	ck_assert_int_eq(record_n(a, "p", "k", 0, 120000, 2), 0);
	ck_assert_int_eq(record_n(a, "p", "k", 0, 1000, 1), 0);
	ck_assert_int_eq(kc_anomaly_record(a, "p", "k", 0, 500, ev), 1);
	ck_assert_uint_eq(ev[0].count, 4);
	/* The report time went back too; no second report until a window
	 * after it. */
	ck_assert_int_eq(record_n(a, "p", "k", 0, 60499, 1), 0);
	ck_assert_int_eq(record_n(a, "p", "k", 0, 120000, 1), 1);
	kc_anomaly_free(a);
}
END_TEST

#define THREADS 4
#define PER_THREAD 5000

struct worker {
	kc_anomaly *a;
	int id;
	int shared_events, churn_events;
	uint64_t max_count;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	kc_anomaly_event ev[KC_ANOMALY_MAX_EVENTS];
	char key[32];

	for (int i = 0; i < PER_THREAD; i++) {
		int rc = kc_anomaly_record(w->a, "svc", "shared", 0, 1000, ev);
		if (rc < 0)
			return (void *)1;
		for (int e = 0; e < rc; e++) {
			w->shared_events++;
			if (ev[e].count > w->max_count)
				w->max_count = ev[e].count;
		}
		/* Churn through more pairs than the cap, denied, so both
		 * tables evict while other threads read and write. */
		snprintf(key, sizeof(key), "t%d-k%d", w->id, i % 300);
		rc = kc_anomaly_record(w->a, key, key, 1, 1000 + i, ev);
		if (rc < 0)
			return (void *)1;
		w->churn_events += rc;
	}
	return NULL;
}

START_TEST(four_threads_share_one_detector)
{
	kc_anomaly *a = make(THREADS * PER_THREAD - 1, 1000, 0, 64);
	struct worker w[THREADS];
	pthread_t t[THREADS];
	struct kc_anomaly_stats st;
	int shared = 0, churn = 0;
	uint64_t max_count = 0;

	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){.a = a, .id = i};
		ck_assert_int_eq(pthread_create(&t[i], NULL, work, &w[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		void *res;
		ck_assert_int_eq(pthread_join(t[i], &res), 0);
		ck_assert_ptr_null(res);
		shared += w[i].shared_events;
		churn += w[i].churn_events;
		if (w[i].max_count > max_count)
			max_count = w[i].max_count;
	}
	/* Every shared request was counted exactly once: the last one, and
	 * only it, went over the threshold. */
	ck_assert_int_eq(shared, 1);
	ck_assert_uint_eq(max_count, THREADS * PER_THREAD);
	/* Churned pairs never reach the threshold of 1000 denials. */
	ck_assert_int_eq(churn, 0);
	kc_anomaly_stats(a, &st);
	ck_assert_uint_le(st.pairs, 64);
	ck_assert_uint_le(st.principals, 64);
	ck_assert_uint_gt(st.evictions, 0);
	kc_anomaly_free(a);
}
END_TEST

static Suite *anomaly_suite(void)
{
	Suite *s = suite_create("anomaly");
	TCase *tc = tcase_create("anomaly");

	tcase_add_test(tc, options_are_validated);
	tcase_add_test(tc, record_arguments_are_validated);
	tcase_add_test(tc, threshold_exactly_is_quiet_one_over_reports);
	tcase_add_test(tc, one_report_per_window_then_again);
	tcase_add_test(tc, window_slides_by_whole_buckets);
	tcase_add_test(tc, odd_window_rounds_up_by_less_than_a_bucket);
	tcase_add_test(tc, pairs_are_counted_separately);
	tcase_add_test(tc, denial_bursts_per_principal);
	tcase_add_test(tc, one_request_can_cross_both);
	tcase_add_test(tc, the_stalest_pair_is_evicted_at_the_cap);
	tcase_add_test(tc, a_clock_going_back_counts_in_the_newest_bucket);
	tcase_add_test(tc, four_threads_share_one_detector);
	tcase_add_test(tc, default_rate_max_catches_bulk_decryption);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = anomaly_suite};
