/* risk.c - the login risk engine's decisions, as pure functions of the
 * signals a login gathers (failure counters from Redis, whether the device
 * is trusted and the network known from PostgreSQL, the login rate): no
 * I/O, so every branch is tested without services (tests/unit/test_risk.c).
 * acct_login() and acct_stepup_verify() gather the signals and act on the
 * verdicts. docs/api/account.md has the policy. */
#include <jansson.h>

#include "account/account.h"

void acct_risk_captcha(const struct acct_config *c, long account_failures, long network_failures,
		       struct acct_risk_captcha *out)
{
	long excess = account_failures - c->captcha_account_failures;
	long net_excess = network_failures - c->captcha_network_failures;
	if (net_excess > excess)
		excess = net_excess;
	out->excess = excess;
	out->required = excess >= 0;
	/* The first challenge at the threshold costs the base; each further
	 * failure doubles it, up to the cap. */
	out->cost = out->required ? acct_altcha_maxnumber_for(c->captcha_base_cost,
							      (unsigned)excess, c->captcha_max_cost)
				  : 0;
}

void acct_risk_decide(const struct acct_config *c, const struct acct_risk_signals *sig,
		      struct acct_risk_decision *out)
{
	out->reasons = 0;
	if (sig->frozen) {
		/* Only a password reset unfreezes: no step-up can. */
		out->verdict = ACCT_RISK_FROZEN;
		return;
	}
	if (c->stepup_new_device && !sig->device_trusted)
		out->reasons |= ACCT_RISK_NEW_DEVICE;
	if (c->stepup_new_network && !sig->network_known)
		out->reasons |= ACCT_RISK_NEW_NETWORK;
	if (!sig->rate_allowed)
		out->reasons |= ACCT_RISK_UNUSUAL_RATE;
	out->verdict = out->reasons ? ACCT_RISK_STEPUP : ACCT_RISK_ALLOW;
}

json_t *acct_risk_reasons_json(unsigned reasons)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {
		{ACCT_RISK_NEW_DEVICE, "new_device"},
		{ACCT_RISK_NEW_NETWORK, "new_network"},
		{ACCT_RISK_UNUSUAL_RATE, "unusual_rate"},
	};
	json_t *a = json_array();
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (reasons & names[i].bit)
			json_array_append_new(a, json_string(names[i].name));
	return a;
}

bool acct_risk_freeze_due(const struct acct_config *c, int stepup_failures)
{
	return stepup_failures >= c->freeze_after_stepup_failures;
}
