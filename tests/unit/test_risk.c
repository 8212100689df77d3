/* test_risk.c - the login risk engine's decisions (account/risk.c), every
 * branch and boundary, without services: the captcha threshold per account
 * and per network (one below, at, one past), the cost doubling to its cap,
 * the step-up reasons (new device, new network, login rate) with their
 * switches off, the freeze of a frozen account, and the step-up failures
 * that freeze. */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "account/account.h"
#include "tests/check_main.h"

/* account.risk's shipped defaults (account/service.c). */
static struct acct_config defaults(void)
{
	struct acct_config c = {0};
	c.captcha_account_failures = 3;
	c.captcha_network_failures = 20;
	c.captcha_base_cost = 50000;
	c.captcha_max_cost = 5000000;
	c.stepup_new_device = 1;
	c.stepup_new_network = 1;
	c.freeze_after_stepup_failures = 3;
	return c;
}

static struct acct_risk_captcha captcha(const struct acct_config *c, long acct, long net)
{
	struct acct_risk_captcha d;
	memset(&d, 0xa5, sizeof(d)); /* every member must be written */
	acct_risk_captcha(c, acct, net, &d);
	return d;
}

static void assert_no_captcha(struct acct_risk_captcha d, long excess)
{
	ck_assert(!d.required);
	ck_assert_int_eq(d.excess, excess);
	ck_assert_int_eq(d.cost, 0);
}

static void assert_captcha(struct acct_risk_captcha d, long excess, long long cost)
{
	ck_assert(d.required);
	ck_assert_int_eq(d.excess, excess);
	ck_assert_int_eq(d.cost, cost);
}

START_TEST(captcha_none_without_failures)
{
	struct acct_config c = defaults();
	assert_no_captcha(captcha(&c, 0, 0), -3);
}
END_TEST

START_TEST(captcha_account_threshold)
{
	struct acct_config c = defaults();
	assert_no_captcha(captcha(&c, 2, 0), -1);     /* one below */
	assert_captcha(captcha(&c, 3, 0), 0, 50000);  /* at: the base cost */
	assert_captcha(captcha(&c, 4, 0), 1, 100000); /* one past: doubled */
	assert_captcha(captcha(&c, 5, 0), 2, 200000);
}
END_TEST

START_TEST(captcha_network_threshold)
{
	struct acct_config c = defaults();
	assert_no_captcha(captcha(&c, 0, 19), -1);
	assert_captcha(captcha(&c, 0, 20), 0, 50000);
	assert_captcha(captcha(&c, 0, 21), 1, 100000);
	/* Under both thresholds: the nearer one is reported. */
	assert_no_captcha(captcha(&c, 1, 19), -1);
	assert_no_captcha(captcha(&c, 2, 10), -1);
}
END_TEST

START_TEST(captcha_larger_excess_wins)
{
	struct acct_config c = defaults();
	/* Account 2 past, network 1 past: priced by the account. */
	assert_captcha(captcha(&c, 5, 21), 2, 200000);
	/* Account at its threshold, network 3 past: priced by the network. */
	assert_captcha(captcha(&c, 3, 23), 3, 400000);
	/* Account under, network at: required all the same. */
	assert_captcha(captcha(&c, 1, 20), 0, 50000);
}
END_TEST

START_TEST(captcha_cost_capped)
{
	struct acct_config c = defaults();
	assert_captcha(captcha(&c, 3 + 6, 0), 6, 3200000); /* under the cap */
	assert_captcha(captcha(&c, 3 + 7, 0), 7, 5000000); /* 6.4e6: capped */
	assert_captcha(captcha(&c, 3 + 1000, 0), 1000, 5000000);
	assert_captcha(captcha(&c, 0, 20 + 100000), 100000, 5000000);
	/* A cap above the ALTCHA limit is held to it. */
	c.captcha_max_cost = 1000000000;
	assert_captcha(captcha(&c, 3 + 40, 0), 40, ACCT_ALTCHA_MAXNUMBER_MAX);
}
END_TEST

START_TEST(captcha_smallest_thresholds)
{
	struct acct_config c = defaults();
	c.captcha_account_failures = 1;
	c.captcha_network_failures = 1;
	assert_no_captcha(captcha(&c, 0, 0), -1);
	assert_captcha(captcha(&c, 1, 0), 0, 50000);
	assert_captcha(captcha(&c, 0, 1), 0, 50000);
}
END_TEST

static struct acct_risk_decision decide(const struct acct_config *c, bool frozen, bool trusted,
					bool known, bool rate_ok)
{
	struct acct_risk_signals sig = {.frozen = frozen,
					.device_trusted = trusted,
					.network_known = known,
					.rate_allowed = rate_ok};
	struct acct_risk_decision d;
	memset(&d, 0xa5, sizeof(d));
	acct_risk_decide(c, &sig, &d);
	return d;
}

/* The decision's verdict, reasons, and the reasons' JSON as the 403 names them. */
static void assert_decision(struct acct_risk_decision d, enum acct_risk_verdict verdict,
			    unsigned reasons, const char *json)
{
	ck_assert_int_eq(d.verdict, verdict);
	ck_assert_uint_eq(d.reasons, reasons);
	json_t *a = acct_risk_reasons_json(d.reasons);
	ck_assert_ptr_nonnull(a);
	char *s = json_dumps(a, JSON_COMPACT);
	ck_assert_str_eq(s, json);
	free(s);
	json_decref(a);
}

START_TEST(decide_known_device_and_network)
{
	struct acct_config c = defaults();
	assert_decision(decide(&c, false, true, true, true), ACCT_RISK_ALLOW, 0, "[]");
}
END_TEST

START_TEST(decide_new_device)
{
	struct acct_config c = defaults();
	assert_decision(decide(&c, false, false, true, true), ACCT_RISK_STEPUP,
			ACCT_RISK_NEW_DEVICE, "[\"new_device\"]");
}
END_TEST

START_TEST(decide_new_network)
{
	struct acct_config c = defaults();
	assert_decision(decide(&c, false, true, false, true), ACCT_RISK_STEPUP,
			ACCT_RISK_NEW_NETWORK, "[\"new_network\"]");
}
END_TEST

START_TEST(decide_new_device_and_network)
{
	struct acct_config c = defaults();
	assert_decision(decide(&c, false, false, false, true), ACCT_RISK_STEPUP,
			ACCT_RISK_NEW_DEVICE | ACCT_RISK_NEW_NETWORK,
			"[\"new_device\",\"new_network\"]");
}
END_TEST

START_TEST(decide_rate_limited)
{
	struct acct_config c = defaults();
	assert_decision(decide(&c, false, true, true, false), ACCT_RISK_STEPUP,
			ACCT_RISK_UNUSUAL_RATE, "[\"unusual_rate\"]");
	assert_decision(decide(&c, false, false, false, false), ACCT_RISK_STEPUP,
			ACCT_RISK_NEW_DEVICE | ACCT_RISK_NEW_NETWORK | ACCT_RISK_UNUSUAL_RATE,
			"[\"new_device\",\"new_network\",\"unusual_rate\"]");
}
END_TEST

START_TEST(decide_switches_off)
{
	struct acct_config c = defaults();
	c.stepup_new_device = 0;
	assert_decision(decide(&c, false, false, true, true), ACCT_RISK_ALLOW, 0, "[]");
	assert_decision(decide(&c, false, false, false, true), ACCT_RISK_STEPUP,
			ACCT_RISK_NEW_NETWORK, "[\"new_network\"]");
	c = defaults();
	c.stepup_new_network = 0;
	assert_decision(decide(&c, false, true, false, true), ACCT_RISK_ALLOW, 0, "[]");
	assert_decision(decide(&c, false, false, false, true), ACCT_RISK_STEPUP,
			ACCT_RISK_NEW_DEVICE, "[\"new_device\"]");
	/* Both off: a new device on a new network passes; the login rate has
	 * no switch. */
	c.stepup_new_device = 0;
	assert_decision(decide(&c, false, false, false, true), ACCT_RISK_ALLOW, 0, "[]");
	assert_decision(decide(&c, false, false, false, false), ACCT_RISK_STEPUP,
			ACCT_RISK_UNUSUAL_RATE, "[\"unusual_rate\"]");
}
END_TEST

START_TEST(decide_frozen)
{
	struct acct_config c = defaults();
	/* Frozen whatever else is known: no step-up can unfreeze. */
	for (int i = 0; i < 8; i++)
		assert_decision(decide(&c, true, i & 1, i & 2, i & 4), ACCT_RISK_FROZEN, 0, "[]");
	c.stepup_new_device = c.stepup_new_network = 0;
	assert_decision(decide(&c, true, true, true, true), ACCT_RISK_FROZEN, 0, "[]");
}
END_TEST

START_TEST(freeze_threshold)
{
	struct acct_config c = defaults();
	ck_assert(!acct_risk_freeze_due(&c, 0));
	ck_assert(!acct_risk_freeze_due(&c, 2)); /* one below */
	ck_assert(acct_risk_freeze_due(&c, 3));	 /* at */
	ck_assert(acct_risk_freeze_due(&c, 4));	 /* one past */
	c.freeze_after_stepup_failures = 1;
	ck_assert(!acct_risk_freeze_due(&c, 0));
	ck_assert(acct_risk_freeze_due(&c, 1));
}
END_TEST

static Suite *risk_suite(void)
{
	Suite *s = suite_create("risk");
	TCase *tc = tcase_create("captcha");
	tcase_add_test(tc, captcha_none_without_failures);
	tcase_add_test(tc, captcha_account_threshold);
	tcase_add_test(tc, captcha_network_threshold);
	tcase_add_test(tc, captcha_larger_excess_wins);
	tcase_add_test(tc, captcha_cost_capped);
	tcase_add_test(tc, captcha_smallest_thresholds);
	suite_add_tcase(s, tc);
	tc = tcase_create("decide");
	tcase_add_test(tc, decide_known_device_and_network);
	tcase_add_test(tc, decide_new_device);
	tcase_add_test(tc, decide_new_network);
	tcase_add_test(tc, decide_new_device_and_network);
	tcase_add_test(tc, decide_rate_limited);
	tcase_add_test(tc, decide_switches_off);
	tcase_add_test(tc, decide_frozen);
	suite_add_tcase(s, tc);
	tc = tcase_create("freeze");
	tcase_add_test(tc, freeze_threshold);
	suite_add_tcase(s, tc);
	return s;
}

const struct mica_check mica_check = {.suite = risk_suite};
