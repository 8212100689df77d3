/* captcha.c - the login's captcha gate: after repeated failures per
 * account (or per identifier without an account) or per network, a login
 * must carry the solution of an ALTCHA proof of work whose cost doubles with
 * each further failure (altcha.c makes and checks them). */
#include <stdio.h>
#include <string.h>

#include "account/account.h"
#include "clock.h"
#include "crypto.h"

/* The scope of a login's challenges: a MAC of the names of the two failure
 * counters it is judged by (|kacct|, |knet|), so a challenge fetched for
 * another identifier or network, where the cost may be lower, is refused. */
static int captcha_scope(const struct acct_config *c, const char *kacct, const char *knet,
			 char out[33])
{
	uint8_t mac[MICA_SHA256_LEN];
	char in[400];
	int n = snprintf(in, sizeof(in), "mica-altcha-scope\n%s\n%s", kacct, knet);
	int err =
		n > 0 && (size_t)n < sizeof(in)
			? mica_hmac_sha256(c->altcha_key, strlen(c->altcha_key), in, (size_t)n, mac)
			: MICA_EINVAL;
	if (!err)
		err = mica_hex_encode(mac, 16, out, 33);
	mica_wipe(mac, sizeof(mac));
	return err;
}

/* 0 when no captcha is due or |payload| solves a fresh one issued for this
 * identifier and network at the cost now due; else |f| is 428 with a new
 * challenge of that cost. */
int acct_captcha_gate(acct_service *s, const struct acct_risk_captcha *due, const char *kacct,
		      const char *knet, const char *payload, mica_problem *f)
{
	const struct acct_config *c = s->cfg;
	const uint8_t *key = (const uint8_t *)c->altcha_key;
	char challenge[ACCT_ALTCHA_HEX_LEN + 1] = "", scope[33];
	struct acct_altcha_verdict v = {0};
	const char *reason = "missing";
	json_t *ch = NULL;

	if (!due->required)
		return 0;
	long long cost = due->cost;

	if (captcha_scope(c, kacct, knet, scope) != 0)
		return acct_problem_dependency(f, MICA_ECRYPTO, "the captcha");
	if (payload) {
		struct acct_altcha_want want = {scope, cost};
		int err = acct_altcha_verify(key, strlen(c->altcha_key), payload, mica_clock_now(),
					     &want, challenge, &v);
		reason = v.code ? v.code : "malformed";
		if (err == 0) {
			char k[200];
			int fresh = 0;
			snprintf(k, sizeof(k), "account:altcha:%s", challenge);
			/* Single use: a solved challenge cannot be replayed. */
			if ((err = acct_nonce_use(k, c->captcha_ttl_s + 60, &fresh, f)) != 0)
				return err;
			if (fresh)
				return 0;
			reason = "already_used";
		}
	}
	if (acct_altcha_create(key, strlen(c->altcha_key), cost, c->captcha_ttl_s, mica_clock_now(),
			       scope, &ch) != 0)
		return acct_problem_dependency(f, MICA_ECRYPTO, "the captcha");
	if (payload)
		mica_problemf(f, 428, "captcha_required",
			      "the captcha solution was rejected (%s); solve the new challenge",
			      reason);
	else
		mica_problemf(
			f, 428, "captcha_required",
			"too many failed logins: solve the challenge and send the solution as altcha");
	f->extra = json_pack("{s:o}", "challenge", ch);
	return MICA_EDENIED;
}
